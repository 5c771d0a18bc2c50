//! Typed progress events every method emits as it runs.

use candle_core::Tensor;

use super::heatmap::TokenHeatmaps;
use crate::branch::Branch;

/// Stages of a run, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Encoding the image and prompts and computing the edit direction.
    Encode,
    /// DDIM inversion of the image latent.
    Invert,
    /// Translating with redescription (Mirror, no cached reconstruction to replay).
    Redescribe,
    /// The translation steps.
    Translate,
    /// VAE decode of the final latents.
    Decode,
}

impl Phase {
    /// The phase's name in lower case (`encode`, `invert`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Phase::Encode => "encode",
            Phase::Invert => "invert",
            Phase::Redescribe => "redescribe",
            Phase::Translate => "translate",
            Phase::Decode => "decode",
        }
    }
}

/// One branch after one denoising step.
#[derive(Debug, Clone)]
pub struct BranchStep {
    /// The branch this step belongs to.
    pub branch: Branch,
    /// The branch latent after the step, [1, 4, h, w].
    pub latent: Tensor,
    /// The DDIM prediction of the clean latent at this step, [1, 4, h, w].
    pub predicted_x0: Tensor,
    /// Mean squared difference between `latent` and the inversion trajectory latent it should
    /// mirror (reconstruction branches; the translation branch relative to the same target).
    pub mirror_error: Option<f64>,
    /// Per-token cross-attention maps of this step's UNet pass, when asked for.
    pub attention: Option<TokenHeatmaps>,
    /// Full VAE decode of `predicted_x0`, [1, 3, H, W] in [-1, 1], every k steps when asked.
    pub decoded: Option<Tensor>,
}

/// Prompt redescription at one step.
#[derive(Debug, Clone)]
pub struct RedescriptionReport {
    /// Loss before each Adam update.
    pub losses: Vec<f64>,
    /// Which inversion latent was the target.
    pub target_index: usize,
    /// ‖C*_i − C*_{i−1}‖₂.
    pub embedding_change: f64,
}

/// Attention guidance at one step.
#[derive(Debug, Clone, Default)]
pub struct GuidanceReport {
    /// The main attention-map loss.
    pub loss: f64,
    /// The extra ("cycle") step's loss, on steps that have one.
    pub extra_loss: Option<f64>,
    /// Key/value terms (Preset F logs them; they do not move the latent).
    pub key_value_loss: Option<f64>,
    /// Norm of the accumulated latent gradient.
    pub gradient_norm: f64,
    /// Key term of the key/value loss (Preset F).
    pub key_loss: Option<f64>,
    /// Value term of the key/value loss (Preset F).
    pub value_loss: Option<f64>,
    /// Main loss plus key/value terms.
    pub total_loss: f64,
}

/// One denoising step of one method.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Name of the method that took the step (`Method::name`).
    pub method: &'static str,
    /// 0-based step index, 0 = noisiest.
    pub step: usize,
    /// Number of steps in the run.
    pub total: usize,
    /// The scheduler timestep of this step (below `num_train_timesteps`).
    pub timestep: usize,
    /// Every branch the method steps, after this step.
    pub branches: Vec<BranchStep>,
    /// The prompt redescription done at this step, if any.
    pub redescription: Option<RedescriptionReport>,
    /// The attention guidance done at this step, if any.
    pub guidance: Option<GuidanceReport>,
    /// Edit-direction scale used at this step.
    pub edit_scale: Option<f64>,
}

impl StepReport {
    /// The report of step `step` of `total` at `timestep`, before any method has filled it.
    pub fn new(method: &'static str, step: usize, total: usize, timestep: usize) -> Self {
        Self {
            method,
            step,
            total,
            timestep,
            branches: Vec::new(),
            redescription: None,
            guidance: None,
            edit_scale: None,
        }
    }
}

/// How far the current step is, in UNet calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepWork {
    /// 0-based step index, as `StepReport::step`.
    pub step: usize,
    /// Number of steps in the run.
    pub steps: usize,
    /// UNet calls (a forward, or a forward + backward) done so far in this step, across
    /// every method the run steps (the compared plain DDIM branches included).
    pub unet_calls: usize,
    /// The most this step will take, given method, preset, settings, an extra guidance step
    /// and a cached reconstruction; redescription may stop early, so fewer is normal.
    pub unet_calls_expected: usize,
    /// `(iterations done, max iterations)` while the prompt is being redescribed.
    pub redescription: Option<(usize, usize)>,
}

/// A progress event sent by a running method to its [`EventSink`].
#[derive(Debug, Clone)]
pub enum Event {
    /// A phase begins; `steps` is its number of steps (0 when it has none).
    Phase {
        /// The phase that begins.
        phase: Phase,
        /// Number of steps in the phase.
        steps: usize,
    },
    /// Inversion steps done so far (`step` counts from 1, unlike `StepReport::step`).
    Inversion {
        /// Inversion steps done, from 1.
        step: usize,
        /// Number of inversion steps.
        total: usize,
        /// The DDIM timestep just reached.
        timestep: usize,
    },
    /// Edit-direction sentences encoded so far.
    Direction {
        /// Sentences encoded so far.
        done: usize,
        /// Number of sentences to encode.
        total: usize,
    },
    /// One denoising step done.
    Step(Box<StepReport>),
    /// Progress inside the current step, sent after every UNet call and redescription
    /// iteration (steps take many UNet calls: a live sign that the run is moving).
    StepWork(StepWork),
    /// A message worth showing (e.g. "re-using the cached inversion").
    Note(String),
}

/// Where methods send their events.
pub type EventSink<'a> = &'a mut dyn FnMut(Event);
