//! MirrorDiffusion (arXiv 2401.03221): prompt redescription keeps the reconstruction branch a
//! mirror of the inversion trajectory; the translation branch follows it through
//! cross-attention guidance. Two presets: `Authors` (the released code, quirks included) and
//! `Recommended` (algorithm.md Preset R). One `step` per timestep so that tests can
//! teacher-force it and the UI can stream it.

use candle_core::Tensor;

use crate::engine::model::StableDiffusion;
use crate::engine::pipeline::CancelToken;
use crate::engine::pipeline::stages::{
    RedescribeSettings, Trajectory, check_finite, classifier_free_guidance, guidance_gradient,
    redescribe,
};
use crate::engine::unet::{
    AttentionMaps, CaptureRequest, attention_map_loss, key_value_losses, repeat_batch,
};
use crate::engine::{EngineError, Result};

/// Which reading of the method to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorPreset {
    /// The released code exactly (Preset F): its inversion grid, wrapped targets, batch-2
    /// reconstruction, key/value loss terms, extra steps at i ∈ {10, 15, 20, 25}.
    Authors,
    /// algorithm.md Preset R: consistent grid, targets ending at z0, batch-1 reconstruction,
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MirrorSettings {
    pub preset: MirrorPreset,
    /// Classifier-free guidance of the translation branch.
    pub guidance_scale: f64,
    /// SGD learning rate of the attention guidance on the latent pair.
    pub xa_guidance: f64,
    pub redescribe: RedescribeSettings,
    /// Base scale of the edit direction.
    pub edit_scale: f64,
    /// Preset F ramp: + `edit_ramp · i` while `i < ramp_until`.
    pub edit_ramp: f64,
    pub ramp_until: usize,
    /// Preset R ramp: + `ramp_total · i / N` while `3i < 2N`.
    pub ramp_total: f64,
    /// Extra-step weight `extra_weight · extra_decay^k`.
    pub extra_weight: f64,
    pub extra_decay: f64,
    /// Preset F: key/value loss terms (log only) while `i < kv_until`, weight `kv_weight`.
    pub kv_until: usize,
    pub kv_weight: f64,
    /// The released code applies the extra step's gradient again in the main step; `true`
    /// applies it once (a GUI toggle; not the default).
    pub apply_extra_once: bool,
}

impl Default for MirrorSettings {
    fn default() -> Self {
        Self {
            preset: MirrorPreset::Recommended,
            guidance_scale: 5.0,
            xa_guidance: 0.1,
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
        }
    }
}

impl MirrorSettings {
    pub fn with_preset(preset: MirrorPreset) -> Self {
        Self {
            preset,
            ..Self::default()
        }
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
    pub fn start(trajectory: &Trajectory, caption: &Tensor) -> Self {
        Self {
            rec_latent: trajectory.start().clone(),
            edit_latent: trajectory.start().clone(),
            embedding: caption.clone(),
            extra_done: 0,
        }
    }
}

/// The reconstruction half of step i: redescription, then the reconstruction pass whose
/// attention maps become the guidance reference.
#[derive(Debug, Clone)]
pub struct ReconstructionStep {
    pub timestep: usize,
    pub target_index: usize,
    /// C*_i.
    pub embedding: Tensor,
    pub inner_losses: Vec<f64>,
    pub embedding_change: f64,
    pub rec_eps: Tensor,
    pub rec_pred_x0: Tensor,
    pub rec_latent: Tensor,
    /// Detached maps of the reconstruction pass (Preset F: batch 2 with keys/values).
    pub rec_maps: AttentionMaps,
}

/// The translation half of step i.
#[derive(Debug, Clone)]
pub struct TranslationStep {
    pub edit_eps: Tensor,
    pub edit_pred_x0: Tensor,
    pub edit_latent: Tensor,
    pub edit_guided: Tensor,
    pub edit_scale: f64,
    pub extra_weight: Option<f64>,
    pub extra_loss: Option<f64>,
    pub loss_probs: f64,
    pub loss_keys: Option<f64>,
    pub loss_values: Option<f64>,
    pub loss_total: f64,
    pub gradient_norm: f64,
    pub extra_done: usize,
    pub edit_maps: Option<AttentionMaps>,
}

fn timestep(sd: &StableDiffusion, n: usize, i: usize) -> Result<usize> {
    sd.scheduler.timesteps(n).get(i).copied().ok_or_else(|| {
        EngineError::InvalidInput(format!("step {i} is outside the {n}-step schedule"))
    })
}

/// Redescription at step i (from `rec_latent` and the previous embedding), then the
/// reconstruction pass.
pub fn reconstruct(
    sd: &StableDiffusion,
    settings: &MirrorSettings,
    trajectory: &Trajectory,
    rec_latent: &Tensor,
    previous_embedding: &Tensor,
    i: usize,
    cancel: &CancelToken,
) -> Result<ReconstructionStep> {
    let n = trajectory.steps;
    let t = timestep(sd, n, i)?;
    // One DDIM step from the reconstruction latent should land on the stored inversion latent.
    let target_index = trajectory.target_index(i);
    let redescription = redescribe(
        sd,
        rec_latent,
        t,
        n,
        &trajectory.latents[target_index],
        previous_embedding,
        i,
        &settings.redescribe,
        cancel,
    )?;
    let emb = redescription.embedding;
    let embedding_change = (&emb - previous_embedding)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()?
        .sqrt() as f64;
    cancel.check()?;
    let (rec_eps, rec_maps) = reconstruction_pass(sd, settings, rec_latent, &emb, t)?;
    let rec_step = sd.scheduler.step(&rec_eps, t, rec_latent, n)?;
    check_finite(&rec_step.prev_sample, "the reconstruction latent")?;
    Ok(ReconstructionStep {
        timestep: t,
        target_index,
        embedding: emb,
        inner_losses: redescription.losses,
        embedding_change,
        rec_eps,
        rec_pred_x0: rec_step.pred_original_sample,
        rec_latent: rec_step.prev_sample,
        rec_maps,
    })
}

/// The reconstruction branch's noise prediction at (`rec_latent`, C*_i) and its detached
/// attention maps. Also how a cached reconstruction gets its reference maps back.
pub fn reconstruction_pass(
    sd: &StableDiffusion,
    settings: &MirrorSettings,
    rec_latent: &Tensor,
    emb: &Tensor,
    t: usize,
) -> Result<(Tensor, AttentionMaps)> {
    if settings.preset == MirrorPreset::Authors {
        // Released code: CFG with [C*, C*] at batch 2 (a no-op CFG), keys/values recorded.
        let request = CaptureRequest {
            probs: true,
            keys_values: true,
        };
        let pair = Tensor::cat(&[emb, emb], 0)?;
        let x = Tensor::cat(&[rec_latent, rec_latent], 0)?;
        let (e, maps) = sd.unet.forward_with_capture(&x, t as f64, &pair, request)?;
        Ok((
            classifier_free_guidance(&e, settings.guidance_scale)?,
            maps.detach(),
        ))
    } else {
        let request = CaptureRequest {
            probs: true,
            keys_values: false,
        };
        let (e, maps) = sd
            .unet
            .forward_with_capture(rec_latent, t as f64, emb, request)?;
        Ok((e, maps.detach()))
    }
}

/// Attention guidance, CFG and the DDIM step of the translation branch at step i.
/// `direction` is the edit direction already multiplied by the user's strength.
#[allow(clippy::too_many_arguments)]
pub fn translate(
    sd: &StableDiffusion,
    settings: &MirrorSettings,
    n: usize,
    i: usize,
    emb: &Tensor,
    rec_maps: &AttentionMaps,
    direction: &Tensor,
    edit_latent: &Tensor,
    extra_done: usize,
    want_edit_maps: bool,
    cancel: &CancelToken,
) -> Result<TranslationStep> {
    let t = timestep(sd, n, i)?;
    let authors = settings.preset == MirrorPreset::Authors;
    let reference = if authors {
        rec_maps.clone()
    } else {
        repeat_batch(rec_maps, 2)?
    };
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
    let mut x = Tensor::cat(&[edit_latent, edit_latent], 0)?;
    let mut extra_gradient: Option<Tensor> = None;
    let (mut extra_weight, mut extra_loss) = (None, None);
    let mut extra_done = extra_done;
    if settings.extra_steps(n).contains(&i) {
        cancel.check()?;
        let weight = settings.extra_weight * settings.extra_decay.powi(extra_done as i32);
        let cycle_cond = (&cond - direction)?;
        let cycle_context = Tensor::cat(&[emb, &cycle_cond], 0)?;
        let (g, loss) = guidance_gradient(sd, &x, t, &cycle_context, &reference, weight)?;
        x = (&x - (&g * settings.xa_guidance)?)?;
        if authors {
            // (K − Δc) + Δc, as released.
            context = Tensor::cat(&[emb, &(cycle_cond + direction)?], 0)?;
        }
        extra_gradient = Some(g);
        extra_weight = Some(weight);
        extra_loss = Some(loss);
        extra_done += 1;
    }
    cancel.check()?;
    let (g_main, loss_probs, loss_keys, loss_values) = if authors && i < settings.kv_until {
        main_guidance_with_kv(sd, &x, t, &context, &reference, settings.kv_weight)?
    } else {
        let (g, l) = guidance_gradient(sd, &x, t, &context, &reference, 1.0)?;
        (g, l, None, None)
    };
    let total_gradient = match (&extra_gradient, settings.apply_extra_once) {
        (Some(g), false) => (&g_main + g)?,
        _ => g_main,
    };
    x = (&x - (&total_gradient * settings.xa_guidance)?)?;
    let gradient_norm = total_gradient.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64;

    // Noise at the guided pair, CFG, DDIM step on the unconditional copy X[0].
    cancel.check()?;
    let request = CaptureRequest {
        probs: want_edit_maps,
        keys_values: false,
    };
    let (e, edit_maps) = sd
        .unet
        .forward_with_capture(&x, t as f64, &context, request)?;
    let edit_eps = classifier_free_guidance(&e, settings.guidance_scale)?;
    let edit_step = sd.scheduler.step(&edit_eps, t, &x.narrow(0, 0, 1)?, n)?;
    check_finite(&edit_step.prev_sample, "the translation latent")?;
    Ok(TranslationStep {
        edit_eps,
        edit_pred_x0: edit_step.pred_original_sample,
        edit_latent: edit_step.prev_sample,
        edit_guided: x,
        edit_scale,
        extra_weight,
        extra_loss,
        loss_probs,
        loss_keys,
        loss_values,
        loss_total: loss_probs + loss_keys.unwrap_or(0.0) + loss_values.unwrap_or(0.0),
        gradient_norm,
        extra_done,
        edit_maps: want_edit_maps.then_some(edit_maps),
    })
}

/// One whole MirrorDiffusion step i (0 = noisiest) from `state`.
#[allow(clippy::too_many_arguments)]
pub fn step(
    sd: &StableDiffusion,
    settings: &MirrorSettings,
    trajectory: &Trajectory,
    direction: &Tensor,
    state: &MirrorState,
    i: usize,
    want_edit_maps: bool,
    cancel: &CancelToken,
) -> Result<(MirrorState, ReconstructionStep, TranslationStep)> {
    let rec = reconstruct(
        sd,
        settings,
        trajectory,
        &state.rec_latent,
        &state.embedding,
        i,
        cancel,
    )?;
    let edit = translate(
        sd,
        settings,
        trajectory.steps,
        i,
        &rec.embedding,
        &rec.rec_maps,
        direction,
        &state.edit_latent,
        state.extra_done,
        want_edit_maps,
        cancel,
    )?;
    let next = MirrorState {
        rec_latent: rec.rec_latent.clone(),
        edit_latent: edit.edit_latent.clone(),
        embedding: rec.embedding.clone(),
        extra_done: edit.extra_done,
    };
    Ok((next, rec, edit))
}

/// Preset F's main guidance: probability loss plus the (latent-inert) key/value terms.
fn main_guidance_with_kv(
    sd: &StableDiffusion,
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
    let (_, maps) = sd
        .unet
        .forward_with_capture(var.as_tensor(), t as f64, context, request)?;
    let probs = attention_map_loss(&maps, reference)?;
    let (keys, values) = key_value_losses(&maps, reference, kv_weight)?;
    let total = ((&probs + &values)? + &keys)?;
    let grads = total.backward()?;
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
