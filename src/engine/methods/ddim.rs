//! Plain DDIM sampling with fixed contexts: the reconstruction (B1) and translation (B2)
//! baselines that drift away from the inversion trajectory — the displacement effect.

use candle_core::Tensor;

use crate::engine::Result;
use crate::engine::model::StableDiffusion;
use crate::engine::pipeline::stages::{check_finite, classifier_free_guidance};
use crate::engine::unet::{AttentionMaps, CaptureRequest};

/// The contexts of one DDIM branch: `cond` alone (guidance 1) or CFG on `[uncond, cond]`.
#[derive(Debug, Clone)]
pub struct DdimContexts {
    pub cond: Tensor,
    pub uncond: Option<(Tensor, f64)>,
}

#[derive(Debug, Clone)]
pub struct DdimStep {
    pub latent: Tensor,
    pub pred_x0: Tensor,
    pub eps: Tensor,
    /// The pass's attention maps (the conditional half last), when asked for.
    pub maps: Option<AttentionMaps>,
}

/// One DDIM step at timestep `t` of an `n`-step schedule.
pub fn step(
    sd: &StableDiffusion,
    z: &Tensor,
    t: usize,
    n: usize,
    contexts: &DdimContexts,
    want_maps: bool,
) -> Result<DdimStep> {
    let request = CaptureRequest {
        probs: want_maps,
        keys_values: false,
    };
    let (eps, maps) = match &contexts.uncond {
        None => sd
            .unet
            .forward_with_capture(z, t as f64, &contexts.cond, request)?,
        Some((u, w)) => {
            let (e, maps) = sd.unet.forward_with_capture(
                &Tensor::cat(&[z, z], 0)?,
                t as f64,
                &Tensor::cat(&[u, &contexts.cond], 0)?,
                request,
            )?;
            (classifier_free_guidance(&e, *w)?, maps)
        }
    };
    let out = sd.scheduler.step(&eps, t, z, n)?;
    check_finite(&out.prev_sample, "the DDIM latent")?;
    Ok(DdimStep {
        latent: out.prev_sample,
        pred_x0: out.pred_original_sample,
        eps,
        maps: want_maps.then(|| maps.detach()),
    })
}

/// Plain DDIM sampling from `z_t` over the whole schedule; returns `[z_N … z_0]`.
pub fn sample(
    sd: &StableDiffusion,
    z_t: &Tensor,
    n: usize,
    contexts: &DdimContexts,
) -> Result<Vec<Tensor>> {
    let mut latents = vec![z_t.clone()];
    for t in sd.scheduler.timesteps(n) {
        let s = step(
            sd,
            latents.last().expect("start latent"),
            t,
            n,
            contexts,
            false,
        )?;
        latents.push(s.latent);
    }
    Ok(latents)
}
