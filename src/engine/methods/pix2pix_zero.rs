//! pix2pix-zero (Parmar et al. 2023): a reference pass with the caption records the
//! cross-attention maps; the edit pass (caption + Δc) takes one gradient step per timestep on
//! its latent pair towards those maps. The two passes are independent, so they run
//! interleaved step by step and no map is stored beyond its step.

use candle_core::Tensor;

use crate::engine::Result;
use crate::engine::model::StableDiffusion;
use crate::engine::pipeline::stages::{check_finite, classifier_free_guidance, guidance_gradient};
use crate::engine::unet::{AttentionMaps, CaptureRequest, repeat_batch};

/// Settings of the released code (CFG 5, guidance step 0.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pix2PixZeroSettings {
    pub guidance_scale: f64,
    pub xa_guidance: f64,
}

impl Default for Pix2PixZeroSettings {
    fn default() -> Self {
        Self {
            guidance_scale: 5.0,
            xa_guidance: 0.1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pix2PixZeroStep {
    pub rec_latent: Tensor,
    pub rec_pred_x0: Tensor,
    pub rec_maps: AttentionMaps,
    pub edit_latent: Tensor,
    pub edit_pred_x0: Tensor,
    pub edit_guided: Tensor,
    /// Map loss before the guidance step.
    pub loss: f64,
    pub edit_maps: Option<AttentionMaps>,
}

/// Step `i` of both passes. `caption` is E(caption) [1, 77, D]; `direction` is α·Δc.
#[allow(clippy::too_many_arguments)]
pub fn step(
    sd: &StableDiffusion,
    settings: &Pix2PixZeroSettings,
    n: usize,
    i: usize,
    caption: &Tensor,
    direction: &Tensor,
    rec_latent: &Tensor,
    edit_latent: &Tensor,
    want_edit_maps: bool,
) -> Result<Pix2PixZeroStep> {
    let t = sd.scheduler.timesteps(n)[i];
    // Reference pass: CFG with [c, c] is the conditional prediction itself, so batch 1.
    let request = CaptureRequest {
        probs: true,
        keys_values: false,
    };
    let (rec_eps, rec_maps) = sd
        .unet
        .forward_with_capture(rec_latent, t as f64, caption, request)?;
    let rec_maps = rec_maps.detach();
    let rec = sd.scheduler.step(&rec_eps, t, rec_latent, n)?;
    check_finite(&rec.prev_sample, "the pix2pix-zero reference latent")?;

    // Edit pass: one guidance step on [z, z] with contexts [c, c + Δc].
    let context = Tensor::cat(&[caption, &(caption + direction)?], 0)?;
    let reference = repeat_batch(&rec_maps, 2)?;
    let x = Tensor::cat(&[edit_latent, edit_latent], 0)?;
    let (g, loss) = guidance_gradient(sd, &x, t, &context, &reference, 1.0)?;
    let x = (&x - (g * settings.xa_guidance)?)?;
    let request = CaptureRequest {
        probs: want_edit_maps,
        keys_values: false,
    };
    let (e, edit_maps) = sd
        .unet
        .forward_with_capture(&x, t as f64, &context, request)?;
    let eps = classifier_free_guidance(&e, settings.guidance_scale)?;
    let edit = sd.scheduler.step(&eps, t, &x.narrow(0, 0, 1)?, n)?;
    check_finite(&edit.prev_sample, "the pix2pix-zero edit latent")?;
    Ok(Pix2PixZeroStep {
        rec_latent: rec.prev_sample,
        rec_pred_x0: rec.pred_original_sample,
        rec_maps,
        edit_latent: edit.prev_sample,
        edit_pred_x0: edit.pred_original_sample,
        edit_guided: x,
        loss,
        edit_maps: want_edit_maps.then(|| edit_maps.detach()),
    })
}
