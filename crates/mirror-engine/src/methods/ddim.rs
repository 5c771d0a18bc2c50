//! Plain DDIM sampling with fixed contexts: the reconstruction (B1) and translation (B2)
//! baselines that drift away from the inversion trajectory — the displacement effect.
//!
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py (the denoising loop with
//! classifier-free guidance; pinned).

use candle_core::Tensor;

use crate::Result;
use crate::branch::Method;
use crate::pipeline::stages::classifier_free_guidance;
use crate::pipeline::{BranchState, LatentPair, MethodStep, StageContext};
use crate::unet::{AttentionMaps, CaptureRequest};

/// UNet calls of one step: one per branch.
pub const UNET_CALLS_PER_STEP: usize = 2;

/// The contexts of one DDIM branch: `cond` alone (guidance 1) or CFG on `[uncond, cond]`.
#[derive(Debug, Clone)]
pub struct DdimContexts {
    /// The conditional text embedding, `[1, L, D]`.
    pub cond: Tensor,
    /// The unconditional embedding and the guidance scale, for classifier-free guidance.
    pub uncond: Option<(Tensor, f64)>,
}

/// What stays fixed over a two-branch DDIM run.
#[derive(Debug, Clone, Copy)]
pub struct DdimInputs<'a> {
    /// Number of DDIM steps.
    pub steps: usize,
    /// Contexts of the reconstruction branch (B1).
    pub reconstruction: &'a DdimContexts,
    /// Contexts of the translation branch (B2).
    pub translation: &'a DdimContexts,
    /// Record each pass's attention maps.
    pub want_maps: bool,
}

/// One branch after one DDIM step.
#[derive(Debug, Clone)]
pub struct DdimStep {
    /// The latent after the step, `[1, 4, h, w]`.
    pub latent: Tensor,
    /// The step's prediction of the clean latent, `[1, 4, h, w]`.
    pub pred_x0: Tensor,
    /// The UNet's noise prediction (after guidance), `[1, 4, h, w]`.
    pub eps: Tensor,
    /// The pass's attention maps (the conditional half last), when asked for.
    pub maps: Option<AttentionMaps>,
}

/// One DDIM step of one branch from `z` at timestep `t` of an `n`-step schedule.
pub fn denoise(
    ctx: &StageContext,
    z: &Tensor,
    t: usize,
    n: usize,
    contexts: &DdimContexts,
    want_maps: bool,
) -> Result<DdimStep> {
    let unet = ctx.sd.forward_unet();
    let request = CaptureRequest {
        probs: want_maps,
        keys_values: false,
    };
    let (eps, maps) = match &contexts.uncond {
        None => unet.forward_with_capture(z, t as f64, &contexts.cond, request)?,
        Some((u, w)) => {
            let (e, maps) = unet.forward_with_capture(
                &Tensor::cat(&[z, z], 0)?,
                t as f64,
                &Tensor::cat(&[u, &contexts.cond], 0)?,
                request,
            )?;
            (classifier_free_guidance(&e, *w)?, maps)
        }
    };
    ctx.unet_call_done();
    let out = ctx.sd.scheduler.step(&eps, t, z, n)?;
    Ok(DdimStep {
        latent: out.prev_sample,
        pred_x0: out.pred_original_sample,
        eps,
        maps: want_maps.then(|| maps.detach()),
    })
}

/// Step `i` (0 = noisiest) of both DDIM branches.
pub fn step(
    ctx: &StageContext,
    inputs: &DdimInputs,
    state: &LatentPair,
    i: usize,
) -> Result<(LatentPair, MethodStep)> {
    let n = inputs.steps;
    let t = ctx.sd.scheduler.timesteps(n)[i];
    ctx.cancel.check()?;
    let rec = denoise(
        ctx,
        &state.reconstruction,
        t,
        n,
        inputs.reconstruction,
        inputs.want_maps,
    )?;
    ctx.cancel.check()?;
    let edit = denoise(
        ctx,
        &state.translation,
        t,
        n,
        inputs.translation,
        inputs.want_maps,
    )?;
    let mut out = MethodStep::new(
        t,
        vec![
            BranchState {
                branch: Method::Ddim.reconstruction(),
                latent: rec.latent.clone(),
                predicted_x0: rec.pred_x0,
                maps: rec.maps,
            },
            BranchState {
                branch: Method::Ddim.translation(),
                latent: edit.latent.clone(),
                predicted_x0: edit.pred_x0,
                maps: edit.maps,
            },
        ],
    );
    out.dump = vec![
        ("ddim.rec_latents", rec.latent.clone()),
        ("ddim.edit_latents", edit.latent.clone()),
    ];
    out.ensure_finite(i, n)?;
    let next = LatentPair {
        reconstruction: rec.latent,
        translation: edit.latent,
    };
    Ok((next, out))
}
