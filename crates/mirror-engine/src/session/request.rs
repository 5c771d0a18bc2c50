//! What a translation run is asked to do, and what it returns.

use std::path::PathBuf;

use candle_core::Tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::methods::mirror::{MirrorPreset, MirrorSettings};
use crate::model::VaeTilesReport;
use crate::pipeline::StepReport;
use crate::vae::VaeTiles;

/// The editing method of the main (translation) branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// MirrorDiffusion: redescribed reconstruction + attention-guided translation.
    Mirror,
    /// Plain DDIM inversion and sampling (reconstruction and translation).
    Ddim,
    /// pix2pix-zero: reference pass, then attention-guided edit pass.
    Pix2PixZero,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Mirror, Method::Ddim, Method::Pix2PixZero];

    pub fn name(self) -> &'static str {
        match self {
            Method::Mirror => "mirror",
            Method::Ddim => "ddim",
            Method::Pix2PixZero => "pix2pix-zero",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown method `{s}` (expected mirror, ddim or pix2pix-zero)"))
    }
}

/// How plain DDIM translates (algorithm.md §10.2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DdimTranslation {
    /// Conditional context = the target prompt, unconditional = "", CFG `guidance`.
    WordSwap { guidance: f64 },
    /// Conditional = caption + strength·Δc, unconditional = caption, CFG `guidance`
    /// (pix2pix-zero without attention guidance).
    Direction { guidance: f64 },
}

impl Default for DdimTranslation {
    fn default() -> Self {
        DdimTranslation::WordSwap { guidance: 7.5 }
    }
}

/// Which inversion a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InversionChoice {
    /// What the method is defined with: Mirror and pix2pix-zero invert with the noise
    /// regulariser, plain DDIM without.
    #[default]
    MethodDefault,
    /// Always the regularised inversion, so that a plain DDIM run can share the inversion of
    /// a Mirror or pix2pix-zero run on the same image (a side-by-side comparison).
    Regularized,
}

/// Where the edit direction Δc comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectionChoice {
    /// Paired template sentences around the phrase that differs between the prompts.
    Templates { pairs: usize },
    /// The user's own sentence lists (need not be paired).
    Sentences {
        source: Vec<String>,
        target: Vec<String>,
    },
    /// E(target prompt) − E(source prompt).
    PromptDifference,
    /// A direction saved earlier (safetensors).
    File(PathBuf),
}

impl Default for DirectionChoice {
    fn default() -> Self {
        DirectionChoice::Templates { pairs: 512 }
    }
}

/// One translation job. The image must already be at its processing size (a multiple of
/// `StableDiffusion::size_multiple`); `imageio::resize` does that.
#[derive(Debug, Clone)]
pub struct TranslateRequest {
    pub image: RgbImage,
    /// What the image shows (the caption the inversion uses).
    pub source_prompt: String,
    /// What it should become.
    pub target_prompt: String,
    pub method: Method,
    /// DDIM steps N, shared by inversion and sampling.
    pub steps: usize,
    /// MirrorDiffusion settings (preset, guidance, redescription); pix2pix-zero uses its
    /// `guidance_scale` and `xa_guidance` too.
    pub mirror: MirrorSettings,
    /// Multiplier α of the edit direction.
    pub edit_strength: f64,
    pub direction: DirectionChoice,
    /// Also run plain DDIM reconstruction and translation for comparison.
    pub compare_ddim: bool,
    pub ddim_translation: DdimTranslation,
    /// Which inversion to use (plain DDIM may share the regularised one).
    pub inversion: InversionChoice,
    /// Seed of the VAE posterior sample (authors preset; the recommended one uses the mean).
    pub seed: u64,
    /// Per-token attention heat maps in the step events.
    pub attention_maps: bool,
    /// A full VAE decode of each branch's predicted x0 every k steps.
    pub decode_every: Option<usize>,
    /// Reuse (and store) cached inversions and reconstructions.
    pub use_cache: bool,
    /// Keep every per-step tensor for `--dump`.
    pub record_dump: bool,
    /// Whether the VAE encode and decodes go through in tiles.
    pub vae_tiles: VaeTiles,
}

impl TranslateRequest {
    pub fn new(image: RgbImage, source_prompt: &str, target_prompt: &str) -> Self {
        Self {
            image,
            source_prompt: source_prompt.to_string(),
            target_prompt: target_prompt.to_string(),
            method: Method::Mirror,
            steps: 50,
            mirror: MirrorSettings::default(),
            edit_strength: 1.0,
            direction: DirectionChoice::default(),
            compare_ddim: true,
            ddim_translation: DdimTranslation::default(),
            inversion: InversionChoice::default(),
            seed: 0,
            attention_maps: false,
            decode_every: None,
            use_cache: true,
            record_dump: false,
            vae_tiles: VaeTiles::default(),
        }
    }

    pub fn preset(&self) -> MirrorPreset {
        self.mirror.preset
    }
}

/// Final images of a run, each `[1, 3, H, W]` in [−1, 1].
#[derive(Debug, Clone, Default)]
pub struct BranchImages {
    pub translation: Option<Tensor>,
    pub reconstruction: Option<Tensor>,
    pub ddim_reconstruction: Option<Tensor>,
    pub ddim_translation: Option<Tensor>,
}

/// What a run produced. A cancelled run returns what it had (latents and the steps done).
#[derive(Debug, Clone)]
pub struct TranslateOutcome {
    pub source: Tensor,
    pub images: BranchImages,
    /// Final (or last) latents of each branch that ran.
    pub latents: Vec<(crate::pipeline::Branch, Tensor)>,
    pub cancelled: bool,
    pub steps_done: usize,
    pub reused_inversion: bool,
    pub reused_reconstruction: bool,
    /// The phrase pair the edit direction was built around.
    pub edit_phrase: Option<(String, String)>,
    /// Per-step reports (the same as the events).
    pub reports: Vec<StepReport>,
    /// Every per-step tensor under documented names, when `record_dump` was set.
    pub dump: Vec<(String, Tensor)>,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    /// What the VAE passes did about tiles (a recipe replays `used` as on, else off).
    pub vae_tiles: VaeTilesReport,
}
