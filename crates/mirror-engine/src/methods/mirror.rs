//! MirrorDiffusion (arXiv 2401.03221): prompt redescription keeps the reconstruction branch a
//! mirror of the inversion trajectory; the translation branch follows it through
//! cross-attention guidance. Two presets: `Authors` (the released code, quirks included) and
//! `Recommended` (docs/algorithm.md Preset R). One `step` per timestep so that tests can
//! teacher-force it and the UI can stream it.
//! Ports: https://github.com/MirrorDiffusion/MirrorDiffusion/tree/db1babc (pinned).

use candle_core::Tensor;

use crate::branch::Method;
pub use crate::loader::GuidanceBase;
use crate::loader::Recommended;
use crate::model::StableDiffusion;
use crate::pipeline::stages::{
    PairPass, RedescribeSettings, RedescribeTarget, Trajectory, classifier_free_guidance,
    guidance_gradient, guided_pair_step, redescribe,
};
use crate::pipeline::{BranchState, GuidanceReport, MethodStep, RedescriptionReport, StageContext};
use crate::unet::{
    AttentionMaps, CaptureRequest, Injection, attention_map_loss, key_value_losses, repeat_batch,
};
use crate::{EngineError, Result};

/// Which reading of the method to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorPreset {
    /// The released code exactly (Preset F): its inversion grid, wrapped targets, batch-2
    /// reconstruction, key/value loss terms, extra steps at i ∈ {10, 15, 20, 25}.
    Authors,
    /// docs/algorithm.md Preset R: consistent grid, targets ending at z0, batch-1 reconstruction,
    /// probability loss only, schedules scaled to any N.
    Recommended,
}

impl std::fmt::Display for MirrorPreset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MirrorPreset::Authors => "authors",
            MirrorPreset::Recommended => "recommended",
        })
    }
}

impl std::str::FromStr for MirrorPreset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "authors" | "F" | "f" => Ok(MirrorPreset::Authors),
            "recommended" | "R" | "r" => Ok(MirrorPreset::Recommended),
            other => Err(format!(
                "unknown preset `{other}` (expected recommended or authors)"
            )),
        }
    }
}

/// Hyperparameters (defaults: the released code's values).
/// Recipes store them whole; a field added later takes its default when an older one loads.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MirrorSettings {
    /// Which reading of the method runs.
    pub preset: MirrorPreset,
    /// Classifier-free guidance of the translation branch.
    pub guidance_scale: f64,
    /// SGD learning rate of the attention guidance on the latent pair.
    pub xa_guidance: f64,
    /// Share of the steps (from the first) that get attention guidance: the layout forms in
    /// the early, noisy steps, and later guidance only holds the new content back. 1 guides
    /// every step, as the paper does.
    pub xa_guidance_until: f64,
    /// Prompt redescription: Adam iterations, learning rate, early stop.
    pub redescribe: RedescribeSettings,
    /// Base scale of the edit direction.
    pub edit_scale: f64,
    /// Preset F ramp: + `edit_ramp · i` while `i < ramp_until`.
    pub edit_ramp: f64,
    /// Step where the Preset F ramp stops.
    pub ramp_until: usize,
    /// Preset R ramp: + `ramp_total · i / N` while `3i < 2N`.
    pub ramp_total: f64,
    /// Extra-step weight `extra_weight · extra_decay^k`.
    pub extra_weight: f64,
    /// Decay of the extra-step weight per extra step taken.
    pub extra_decay: f64,
    /// Preset F: key/value loss terms (log only) while `i < kv_until`, weight `kv_weight`.
    pub kv_until: usize,
    /// Weight of the Preset F key/value loss terms.
    pub kv_weight: f64,
    /// The released code applies the extra step's gradient again in the main step; `true`
    /// applies it once (a GUI toggle; not the default).
    pub apply_extra_once: bool,
    /// Direct Inversion (Ju et al., ICLR 2024): after each step the reconstruction is put on
    /// the inversion latent it aimed at and the translation gets the same correction, so the
    /// reconstruction mirrors the source exactly even where redescription cannot close the
    /// gap (low noise). Redescription still keeps the corrections small.
    #[serde(default)]
    pub exact_mirror: bool,
    /// What the translation's classifier-free guidance pushes away from (the paper: the
    /// redescribed description).
    pub guidance_base: GuidanceBase,
    /// Share of the steps (from the first) on which the translation reads its text with the
    /// reconstruction's cross-attention maps instead of its own (prompt-to-prompt's attention
    /// replacement): the layout of the photo is kept exactly while it forms. 0: never (the
    /// paper).
    pub inject_until: f64,
}

impl Default for MirrorSettings {
    fn default() -> Self {
        Self {
            preset: MirrorPreset::Recommended,
            guidance_scale: 5.0,
            xa_guidance: 0.1,
            xa_guidance_until: 1.0,
            redescribe: RedescribeSettings::default(),
            edit_scale: 0.65,
            edit_ramp: 0.02,
            ramp_until: 40,
            ramp_total: 1.2,
            extra_weight: 0.9,
            extra_decay: 0.8,
            kv_until: 80,
            kv_weight: 0.5,
            apply_extra_once: false,
            exact_mirror: false,
            guidance_base: GuidanceBase::Description,
            inject_until: 0.0,
        }
    }
}

impl MirrorSettings {
    /// Mirror's defaults under `preset` (the values the preset itself fixes stay the preset's).
    pub fn with_preset(preset: MirrorPreset) -> Self {
        Self {
            preset,
            ..Self::default()
        }
    }

    /// The recommended preset with the model's recommended values in place of Mirror's own.
    pub fn recommended_by(r: &Recommended) -> Self {
        let mut m = Self::with_preset(MirrorPreset::Recommended);
        m.apply_recommended(r);
        m
    }

    /// Puts the model's values into these settings (the fields it names; the others stay).
    /// The caller decides whether the preset takes them (the authors' preset does not).
    pub fn apply_recommended(&mut self, r: &Recommended) {
        if let Some(v) = r.guidance_scale {
            self.guidance_scale = v;
        }
        if let Some(v) = r.xa_guidance {
            self.xa_guidance = v;
        }
        if let Some(v) = r.xa_guidance_until {
            self.xa_guidance_until = v;
        }
        if let Some(v) = r.exact_mirror {
            self.exact_mirror = v;
        }
        if let Some(v) = r.edit_scale {
            self.edit_scale = v;
        }
        if let Some(v) = r.ramp_total {
            self.ramp_total = v;
        }
        if let Some(v) = r.redescribe_iterations {
            self.redescribe.iterations = v;
        }
        if let Some(v) = r.redescribe_lr {
            self.redescribe.lr = v;
        }
        if let Some(v) = r.guidance_base {
            self.guidance_base = v;
        }
        if let Some(v) = r.inject_until {
            self.inject_until = v;
        }
    }

    /// These settings moved onto `base` (another preset's values): the knobs a user sets
    /// (guidance, structure guidance, redescription, the exact mirror) stay, the schedule
    /// behind them becomes `base`'s.
    pub fn keep_knobs_on(&self, base: MirrorSettings) -> MirrorSettings {
        MirrorSettings {
            guidance_scale: self.guidance_scale,
            xa_guidance: self.xa_guidance,
            redescribe: self.redescribe,
            exact_mirror: self.exact_mirror,
            guidance_base: self.guidance_base,
            inject_until: self.inject_until,
            ..base
        }
    }

    /// Whether step i of n gets attention guidance.
    pub fn guides_attention_at(&self, i: usize, n: usize) -> bool {
        self.xa_guidance != 0.0 && (i as f64) < self.xa_guidance_until * n as f64
    }

    /// Whether step i of n reads the translation's text with the reconstruction's maps.
    pub fn injects_at(&self, i: usize, n: usize) -> bool {
        (i as f64) < self.inject_until * n as f64
    }

    /// Steps that get an extra ("cycle") guidance step.
    pub fn extra_steps(&self, n: usize) -> Vec<usize> {
        match self.preset {
            MirrorPreset::Authors => vec![10, 15, 20, 25],
            MirrorPreset::Recommended => {
                let mut s: Vec<usize> = [
                    n as f64 / 6.0,
                    n as f64 / 4.0,
                    n as f64 / 3.0,
                    5.0 * n as f64 / 12.0,
                ]
                .iter()
                .map(|x| x.round() as usize)
                .filter(|&k| k < n)
                .collect();
                s.sort_unstable();
                s.dedup();
                s
            }
        }
    }

    /// Scale of the direction in the conditional context at step i of n.
    pub fn edit_scale_at(&self, i: usize, n: usize) -> f64 {
        match self.preset {
            MirrorPreset::Authors if i < self.ramp_until => {
                self.edit_scale + self.edit_ramp * i as f64
            }
            MirrorPreset::Recommended if 3 * i < 2 * n => {
                self.edit_scale + self.ramp_total * i as f64 / n as f64
            }
            _ => self.edit_scale,
        }
    }
}

/// What carries over from one step to the next.
#[derive(Debug, Clone)]
pub struct MirrorState {
    /// Reconstruction branch latent [1, 4, h, w].
    pub rec_latent: Tensor,
    /// Translation branch latent [1, 4, h, w].
    pub edit_latent: Tensor,
    /// The redescribed caption embedding C*, warm start of the next step [1, 77, D].
    pub embedding: Tensor,
    /// Extra guidance steps already taken.
    pub extra_done: usize,
}

impl MirrorState {
    /// The state before step 0: both branches at the inversion's noisiest latent, the caption as the embedding.
    pub fn start(trajectory: &Trajectory, caption: &Tensor) -> Self {
        Self {
            rec_latent: trajectory.start().clone(),
            edit_latent: trajectory.start().clone(),
            embedding: caption.clone(),
            extra_done: 0,
        }
    }
}

/// What stays fixed over a Mirror run.
#[derive(Debug, Clone, Copy)]
pub struct MirrorInputs<'a> {
    /// The run's hyperparameters.
    pub settings: &'a MirrorSettings,
    /// The stored inversion the reconstruction is steered to.
    pub trajectory: &'a Trajectory,
    /// The edit direction already multiplied by the user's strength.
    pub direction: &'a Tensor,
    /// Whether the translation branch records its attention maps for the UI.
    pub want_edit_maps: bool,
    /// E(""), the unconditional context when the guidance is against the empty prompt
    /// (encoded on each step when not given).
    pub empty_prompt: Option<&'a Tensor>,
}

/// Step i of a reconstruction recorded by an earlier run on the same inversion with the same
/// redescription settings. Replaying it skips redescription (a re-edit) and gives the same
/// numbers as redescribing again.
#[derive(Debug, Clone, Copy)]
pub struct RecordedReconstruction<'a> {
    /// The reconstruction latent before step i.
    pub latent: &'a Tensor,
    /// C*_i.
    pub embedding: &'a Tensor,
    /// Its redescription losses, one per Adam iteration.
    pub losses: &'a [f64],
    /// Its `‖C*_i − C*_{i−1}‖` (how much the embedding moved).
    pub embedding_change: f64,
}

/// UNet calls step i takes at most: redescription iterations (unless replayed), the
/// reconstruction pass, the extra guidance step on its steps, the main guidance and the
/// translation pass.
pub fn unet_calls(settings: &MirrorSettings, n: usize, i: usize, replayed: bool) -> usize {
    let redescription = if replayed {
        0
    } else {
        settings.redescribe.iterations
    };
    let guidance = if settings.guides_attention_at(i, n) {
        1 + usize::from(settings.extra_steps(n).contains(&i))
    } else {
        0
    };
    redescription + 1 + guidance + 1
}

/// The reconstruction half of step i: redescription, then the reconstruction pass whose
/// attention maps become the guidance reference. It depends on the reconstruction of step
/// i − 1 only, never on the translation, so it can be computed ahead ([`reconstruction`]).
#[derive(Debug, Clone)]
pub struct ReconstructionStep {
    timestep: usize,
    target_index: usize,
    /// C*_i.
    embedding: Tensor,
    inner_losses: Vec<f64>,
    embedding_change: f64,
    rec_pred_x0: Tensor,
    rec_latent: Tensor,
    /// Detached maps of the reconstruction pass (Preset F: batch 2 with keys/values).
    rec_maps: AttentionMaps,
}

/// The translation half of step i.
#[derive(Debug, Clone)]
struct TranslationStep {
    edit_pred_x0: Tensor,
    edit_latent: Tensor,
    edit_guided: Tensor,
    edit_scale: f64,
    /// None on steps without attention guidance.
    guidance: Option<GuidanceReport>,
    extra_done: usize,
    edit_maps: Option<AttentionMaps>,
}

fn timestep(sd: &StableDiffusion, n: usize, i: usize) -> Result<usize> {
    sd.scheduler.timesteps(n).get(i).copied().ok_or_else(|| {
        EngineError::InvalidInput(format!("step {i} is outside the {n}-step schedule"))
    })
}

/// One whole MirrorDiffusion step i (0 = noisiest) from `state`; with `recorded`, the
/// reconstruction half is replayed instead of redescribed.
pub fn step(
    ctx: &StageContext,
    inputs: &MirrorInputs,
    state: &MirrorState,
    i: usize,
    recorded: Option<RecordedReconstruction>,
) -> Result<(MirrorState, MethodStep)> {
    let start = ReconstructionStart::of(state);
    let rec = reconstruction(ctx, inputs, &start, i, recorded)?;
    finish_step(ctx, inputs, state, i, rec)
}

/// Where the reconstruction of a step starts: the reconstruction latent and C* of the step
/// before (the caption before step 0).
#[derive(Debug, Clone)]
pub struct ReconstructionStart {
    /// The reconstruction latent before the step [1, 4, h, w].
    pub latent: Tensor,
    /// The embedding redescription starts from [1, 77, D].
    pub embedding: Tensor,
}

impl ReconstructionStart {
    /// The start a state carries.
    pub fn of(state: &MirrorState) -> Self {
        Self {
            latent: state.rec_latent.clone(),
            embedding: state.embedding.clone(),
        }
    }

    /// The start of the step after `rec` (the exact mirror puts the reconstruction on the
    /// inversion latent it aimed at), the same as the state [`step`] returns carries.
    pub fn after(rec: &ReconstructionStep, inputs: &MirrorInputs) -> Self {
        let latent = if inputs.settings.exact_mirror {
            inputs.trajectory.latents[rec.target_index].clone()
        } else {
            rec.rec_latent.clone()
        };
        Self {
            latent,
            embedding: rec.embedding.clone(),
        }
    }
}

/// The reconstruction half of step i from `start`: redescribed, or replayed from `recorded`.
pub fn reconstruction(
    ctx: &StageContext,
    inputs: &MirrorInputs,
    start: &ReconstructionStart,
    i: usize,
    recorded: Option<RecordedReconstruction>,
) -> Result<ReconstructionStep> {
    match recorded {
        Some(r) => replay(ctx, inputs, &r, i),
        None => reconstruct(ctx, inputs, start, i),
    }
}

/// The rest of step i once its reconstruction half `rec` is known: the translation, the
/// exact mirror's correction, and the step's report.
pub fn finish_step(
    ctx: &StageContext,
    inputs: &MirrorInputs,
    state: &MirrorState,
    i: usize,
    rec: ReconstructionStep,
) -> Result<(MirrorState, MethodStep)> {
    let mut edit = translate(ctx, inputs, &rec, state, i)?;
    let rec = if inputs.settings.exact_mirror {
        mirror_exactly(inputs.trajectory, rec, &mut edit)?
    } else {
        rec
    };
    let n = inputs.trajectory.steps;
    let mut out = MethodStep::new(
        rec.timestep,
        vec![
            BranchState {
                branch: Method::Mirror.reconstruction(),
                latent: rec.rec_latent.clone(),
                predicted_x0: rec.rec_pred_x0,
                maps: Some(rec.rec_maps),
            },
            BranchState {
                branch: Method::Mirror.translation(),
                latent: edit.edit_latent.clone(),
                predicted_x0: edit.edit_pred_x0,
                maps: edit.edit_maps,
            },
        ],
    );
    // Padded to the iteration budget so that the dump stacks into one tensor.
    let padded: Vec<f64> = (0..inputs.settings.redescribe.iterations.max(1))
        .map(|k| rec.inner_losses.get(k).copied().unwrap_or(f64::NAN))
        .collect();
    let device = rec.rec_latent.device();
    out.dump = vec![
        ("mirror.embeddings", rec.embedding.clone()),
        ("mirror.rec_latents", rec.rec_latent.clone()),
        ("mirror.edit_latents", edit.edit_latent.clone()),
        ("mirror.edit_guided", edit.edit_guided),
        ("mirror.inner_losses", Tensor::new(padded, device)?),
        (
            "mirror.guidance_loss",
            Tensor::new(edit.guidance.as_ref().map_or(0.0, |g| g.total_loss), device)?,
        ),
    ];
    out.redescription = Some(RedescriptionReport {
        losses: rec.inner_losses,
        target_index: rec.target_index,
        embedding_change: rec.embedding_change,
    });
    out.embedding = Some(rec.embedding.clone());
    out.guidance = edit.guidance;
    out.edit_scale = Some(edit.edit_scale);
    out.ensure_finite(i, n)?;
    let next = MirrorState {
        rec_latent: rec.rec_latent,
        edit_latent: edit.edit_latent,
        embedding: rec.embedding,
        extra_done: edit.extra_done,
    };
    Ok((next, out))
}

/// Direct Inversion: the reconstruction lands on its target latent, and the translation is
/// moved by the same difference (target − reconstruction), as PnP Inversion does.
fn mirror_exactly(
    trajectory: &Trajectory,
    mut rec: ReconstructionStep,
    edit: &mut TranslationStep,
) -> Result<ReconstructionStep> {
    let target = &trajectory.latents[rec.target_index];
    let difference = (target - &rec.rec_latent)?;
    edit.edit_latent = (&edit.edit_latent + &difference)?;
    rec.rec_latent = target.clone();
    Ok(rec)
}

/// Redescription at step i (from the start's reconstruction latent and embedding), then the
/// reconstruction pass.
fn reconstruct(
    ctx: &StageContext,
    inputs: &MirrorInputs,
    start: &ReconstructionStart,
    i: usize,
) -> Result<ReconstructionStep> {
    let (sd, trajectory) = (ctx.sd, inputs.trajectory);
    let n = trajectory.steps;
    let t = timestep(sd, n, i)?;
    // One DDIM step from the reconstruction latent should land on the stored inversion latent.
    let target_index = trajectory.target_index(i);
    let task = RedescribeTarget {
        latent: &start.latent,
        t,
        steps: n,
        step_index: i,
        target: &trajectory.latents[target_index],
        init: &start.embedding,
    };
    let redescription = redescribe(ctx, &task, &inputs.settings.redescribe)?;
    let emb = redescription.embedding;
    let embedding_change = (&emb - &start.embedding)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()?
        .sqrt() as f64;
    reconstruction_pass(ctx, inputs, &start.latent, &emb, i).map(|(pred_x0, latent, maps)| {
        ReconstructionStep {
            timestep: t,
            target_index,
            embedding: emb,
            inner_losses: redescription.losses,
            embedding_change,
            rec_pred_x0: pred_x0,
            rec_latent: latent,
            rec_maps: maps,
        }
    })
}

/// The recorded step i: the reconstruction pass at its latent and embedding, which gives the
/// guidance reference maps back.
fn replay(
    ctx: &StageContext,
    inputs: &MirrorInputs,
    recorded: &RecordedReconstruction,
    i: usize,
) -> Result<ReconstructionStep> {
    let n = inputs.trajectory.steps;
    let (pred_x0, latent, maps) =
        reconstruction_pass(ctx, inputs, recorded.latent, recorded.embedding, i)?;
    Ok(ReconstructionStep {
        timestep: timestep(ctx.sd, n, i)?,
        target_index: inputs.trajectory.target_index(i),
        embedding: recorded.embedding.clone(),
        inner_losses: recorded.losses.to_vec(),
        embedding_change: recorded.embedding_change,
        rec_pred_x0: pred_x0,
        rec_latent: latent,
        rec_maps: maps,
    })
}

/// The reconstruction branch's DDIM step at (`rec_latent`, C*_i): predicted x0, next latent
/// and the pass's detached attention maps.
fn reconstruction_pass(
    ctx: &StageContext,
    inputs: &MirrorInputs,
    rec_latent: &Tensor,
    emb: &Tensor,
    i: usize,
) -> Result<(Tensor, Tensor, AttentionMaps)> {
    let (sd, settings) = (ctx.sd, inputs.settings);
    let n = inputs.trajectory.steps;
    let t = timestep(sd, n, i)?;
    ctx.cancel.check()?;
    let (eps, maps) = if settings.preset == MirrorPreset::Authors {
        // Released code: CFG with [C*, C*] at batch 2 (a no-op CFG), keys/values recorded.
        let request = CaptureRequest {
            probs: true,
            keys_values: true,
        };
        let pair = Tensor::cat(&[emb, emb], 0)?;
        let x = Tensor::cat(&[rec_latent, rec_latent], 0)?;
        let (e, maps) = sd
            .forward_unet()
            .forward_with_capture(&x, t as f64, &pair, request)?;
        (classifier_free_guidance(&e, settings.guidance_scale)?, maps)
    } else {
        let request = CaptureRequest {
            probs: true,
            keys_values: false,
        };
        sd.forward_unet()
            .forward_with_capture(rec_latent, t as f64, emb, request)?
    };
    ctx.unet_call_done();
    let out = sd.scheduler.step(&eps, t, rec_latent, n)?;
    Ok((out.pred_original_sample, out.prev_sample, maps.detach()))
}

/// Attention guidance, CFG and the DDIM step of the translation branch at step i.
fn translate(
    ctx: &StageContext,
    inputs: &MirrorInputs,
    rec: &ReconstructionStep,
    state: &MirrorState,
    i: usize,
) -> Result<TranslationStep> {
    let (sd, settings, direction) = (ctx.sd, inputs.settings, inputs.direction);
    let n = inputs.trajectory.steps;
    let emb = &rec.embedding;
    let t = timestep(sd, n, i)?;
    let authors = settings.preset == MirrorPreset::Authors;
    // Contexts [C*, C* + s_i Δc].
    let edit_scale = settings.edit_scale_at(i, n);
    let cond = if authors {
        // Two in-place adds in the released code.
        let mut c = (emb + (direction * settings.edit_scale)?)?;
        if i < settings.ramp_until {
            c = (c + (direction * (settings.edit_ramp * i as f64))?)?;
        }
        c
    } else {
        (emb + (direction * edit_scale)?)?
    };
    let mut context = Tensor::cat(&[emb, &cond], 0)?;
    let mut x = Tensor::cat(&[&state.edit_latent, &state.edit_latent], 0)?;
    let mut extra_done = state.extra_done;
    let guidance = if settings.guides_attention_at(i, n) {
        let guided = guide(ctx, inputs, rec, &x, &cond, i, extra_done)?;
        x = guided.latent;
        extra_done = guided.extra_done;
        if let Some(c) = guided.context {
            context = c;
        }
        Some(guided.report)
    } else {
        None
    };

    // Noise at the guided pair, CFG, DDIM step on the unconditional copy X[0].
    ctx.cancel.check()?;
    if settings.guidance_base == GuidanceBase::EmptyPrompt {
        let empty = match inputs.empty_prompt {
            Some(e) => e.clone(),
            None => sd.encode_prompt("")?,
        };
        context = Tensor::cat(&[&empty, &context.narrow(0, 1, 1)?], 0)?;
    }
    let injection = settings.injects_at(i, n).then(|| Injection {
        maps: rec.rec_maps.clone(),
        sample: 1,
    });
    let pass = PairPass {
        context: &context,
        guidance_scale: settings.guidance_scale,
        want_maps: inputs.want_edit_maps,
        inject: injection.as_ref(),
    };
    let (edit_step, edit_maps) = guided_pair_step(ctx, &x, t, n, &pass)?;
    Ok(TranslationStep {
        edit_pred_x0: edit_step.pred_original_sample,
        edit_latent: edit_step.prev_sample,
        edit_guided: x,
        edit_scale,
        guidance,
        extra_done,
        edit_maps,
    })
}

/// What the attention guidance of one step did to the latent pair.
struct Guided {
    latent: Tensor,
    extra_done: usize,
    /// The context the translation pass uses instead (Preset F's round trip through K − Δc).
    context: Option<Tensor>,
    report: GuidanceReport,
}

/// Attention guidance at step i: the extra (cycle) step where scheduled, then the main step,
/// each a gradient step on the latent pair towards the reconstruction's attention maps.
fn guide(
    ctx: &StageContext,
    inputs: &MirrorInputs,
    rec: &ReconstructionStep,
    x: &Tensor,
    cond: &Tensor,
    i: usize,
    extra_done: usize,
) -> Result<Guided> {
    let (settings, direction) = (inputs.settings, inputs.direction);
    let n = inputs.trajectory.steps;
    let t = timestep(ctx.sd, n, i)?;
    let emb = &rec.embedding;
    let authors = settings.preset == MirrorPreset::Authors;
    let reference = if authors {
        rec.rec_maps.clone()
    } else {
        repeat_batch(&rec.rec_maps, 2)?
    };
    let mut x = x.clone();
    let mut context = Tensor::cat(&[emb, cond], 0)?;
    let mut replaced_context = None;
    let mut extra_gradient: Option<Tensor> = None;
    let mut extra_loss = None;
    let mut extra_done = extra_done;
    if settings.extra_steps(n).contains(&i) {
        ctx.cancel.check()?;
        let weight = settings.extra_weight * settings.extra_decay.powi(extra_done as i32);
        let cycle_cond = (cond - direction)?;
        let cycle_context = Tensor::cat(&[emb, &cycle_cond], 0)?;
        let (g, loss) = guidance_gradient(ctx, &x, t, &cycle_context, &reference, weight)?;
        x = (&x - (&g * settings.xa_guidance)?)?;
        if authors {
            // (K − Δc) + Δc, as released.
            context = Tensor::cat(&[emb, &(cycle_cond + direction)?], 0)?;
            replaced_context = Some(context.clone());
        }
        extra_gradient = Some(g);
        extra_loss = Some(loss);
        extra_done += 1;
    }
    ctx.cancel.check()?;
    let (g_main, loss_probs, loss_keys, loss_values) = if authors && i < settings.kv_until {
        main_guidance_with_kv(ctx, &x, t, &context, &reference, settings.kv_weight)?
    } else {
        let (g, l) = guidance_gradient(ctx, &x, t, &context, &reference, 1.0)?;
        (g, l, None, None)
    };
    let total_gradient = match (&extra_gradient, settings.apply_extra_once) {
        (Some(g), false) => (&g_main + g)?,
        _ => g_main,
    };
    x = (&x - (&total_gradient * settings.xa_guidance)?)?;
    let gradient_norm = total_gradient.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64;
    let report = GuidanceReport {
        loss: loss_probs,
        extra_loss,
        key_value_loss: loss_keys.map(|k| k + loss_values.unwrap_or(0.0)),
        gradient_norm,
        key_loss: loss_keys,
        value_loss: loss_values,
        total_loss: loss_probs + loss_keys.unwrap_or(0.0) + loss_values.unwrap_or(0.0),
    };
    Ok(Guided {
        latent: x,
        extra_done,
        context: replaced_context,
        report,
    })
}

/// Preset F's main guidance: probability loss plus the (latent-inert) key/value terms.
fn main_guidance_with_kv(
    ctx: &StageContext,
    x: &Tensor,
    t: usize,
    context: &Tensor,
    reference: &AttentionMaps,
    kv_weight: f64,
) -> Result<(Tensor, f64, Option<f64>, Option<f64>)> {
    let var = candle_core::Var::from_tensor(&x.detach())?;
    let request = CaptureRequest {
        probs: true,
        keys_values: true,
    };
    let (_, maps) =
        ctx.sd
            .unet
            .forward_with_capture(var.as_tensor(), t as f64, context, request)?;
    let probs = attention_map_loss(&maps, reference)?;
    let (keys, values) = key_value_losses(&maps, reference, kv_weight)?;
    let total = ((&probs + &values)? + &keys)?;
    let grads = total.backward()?;
    ctx.unet_call_done();
    let grad = grads
        .get(var.as_tensor())
        .ok_or_else(|| {
            EngineError::InvalidInput("guidance: no gradient reached the latent".into())
        })?
        .clone();
    let scalar = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
    Ok((
        grad,
        scalar(&probs)?,
        Some(scalar(&keys)?),
        Some(scalar(&values)?),
    ))
}
