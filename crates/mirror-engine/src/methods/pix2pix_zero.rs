//! pix2pix-zero (Parmar et al. 2023): a reference pass with the caption records the
//! cross-attention maps; the edit pass (caption + Δc) takes one gradient step per timestep on
//! its latent pair towards those maps. The two passes are independent, so they run
//! interleaved step by step and no map is stored beyond its step.
//! Ports: https://github.com/pix2pixzero/pix2pix-zero/blob/a8f7269a5318353b6fc5263223f68d96a419bd49/src/utils/edit_pipeline.py (pinned).

use candle_core::Tensor;

use crate::Result;
use crate::branch::Method;
use crate::pipeline::stages::{PairPass, guidance_gradient, guided_pair_step};
use crate::pipeline::{BranchState, GuidanceReport, LatentPair, MethodStep, StageContext};
use crate::unet::{CaptureRequest, repeat_batch};

/// Settings of the released code (CFG 5, guidance step 0.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pix2PixZeroSettings {
    /// Classifier-free guidance of the edit pass.
    pub guidance_scale: f64,
    /// Step size of the cross-attention guidance on the edit latent (the latent moves by
    /// `−xa_guidance · ∇`).
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

/// UNet calls of one step: reference pass, guidance (forward + backward), edit pass.
pub const UNET_CALLS_PER_STEP: usize = 3;

/// What stays fixed over a pix2pix-zero run.
#[derive(Debug, Clone, Copy)]
pub struct Pix2PixZeroInputs<'a> {
    /// The pix2pix-zero settings.
    pub settings: &'a Pix2PixZeroSettings,
    /// Number of DDIM steps.
    pub steps: usize,
    /// E(caption) [1, 77, D].
    pub caption: &'a Tensor,
    /// α·Δc.
    pub direction: &'a Tensor,
    /// Record the edit pass's attention maps.
    pub want_edit_maps: bool,
}

/// Step `i` of both passes from `state`.
pub fn step(
    ctx: &StageContext,
    inputs: &Pix2PixZeroInputs,
    state: &LatentPair,
    i: usize,
) -> Result<(LatentPair, MethodStep)> {
    let (sd, n, caption) = (ctx.sd, inputs.steps, inputs.caption);
    let t = sd.scheduler.timesteps(n)[i];
    // Reference pass: CFG with [c, c] is the conditional prediction itself, so batch 1.
    ctx.cancel.check()?;
    let request = CaptureRequest {
        probs: true,
        keys_values: false,
    };
    let (rec_eps, rec_maps) = sd.forward_unet().forward_with_capture(
        &state.reconstruction,
        t as f64,
        caption,
        request,
    )?;
    ctx.unet_call_done();
    let rec_maps = rec_maps.detach();
    let rec = sd.scheduler.step(&rec_eps, t, &state.reconstruction, n)?;

    // Edit pass: one guidance step on [z, z] with contexts [c, c + Δc].
    ctx.cancel.check()?;
    let context = Tensor::cat(&[caption, &(caption + inputs.direction)?], 0)?;
    let reference = repeat_batch(&rec_maps, 2)?;
    let x = Tensor::cat(&[&state.translation, &state.translation], 0)?;
    let (g, loss) = guidance_gradient(ctx, &x, t, &context, &reference, 1.0)?;
    let x = (&x - (g * inputs.settings.xa_guidance)?)?;
    ctx.cancel.check()?;
    let pass = PairPass {
        context: &context,
        guidance_scale: inputs.settings.guidance_scale,
        want_maps: inputs.want_edit_maps,
        inject: None,
    };
    let (edit, edit_maps) = guided_pair_step(ctx, &x, t, n, &pass)?;
    let mut out = MethodStep::new(
        t,
        vec![
            BranchState {
                branch: Method::Pix2PixZero.reconstruction(),
                latent: rec.prev_sample.clone(),
                predicted_x0: rec.pred_original_sample,
                maps: Some(rec_maps),
            },
            BranchState {
                branch: Method::Pix2PixZero.translation(),
                latent: edit.prev_sample.clone(),
                predicted_x0: edit.pred_original_sample,
                maps: edit_maps,
            },
        ],
    );
    out.guidance = Some(GuidanceReport {
        loss,
        total_loss: loss,
        ..Default::default()
    });
    out.dump = vec![
        ("pix2pix_zero.rec_latents", rec.prev_sample.clone()),
        ("pix2pix_zero.edit_latents", edit.prev_sample.clone()),
        ("pix2pix_zero.edit_guided", x),
    ];
    out.ensure_finite(i, n)?;
    let next = LatentPair {
        reconstruction: rec.prev_sample,
        translation: edit.prev_sample,
    };
    Ok((next, out))
}
