//! The stages every method is built from: `encode_image`, `invert`, `predict_noise`,
//! `redescribe`, `guidance_gradient`, `decode`.

use candle_core::{Tensor, Var};

use super::context::StageContext;
use super::events::{Event, EventSink, Phase};
use super::optim::Adam;
use crate::branch::Method;
use crate::model::StableDiffusion;
use crate::nn::is_finite;
use crate::scheduler::{DdimStepOutput, kl_regularize};
use crate::unet::{AttentionMaps, CaptureRequest, Injection, attention_map_loss};
use crate::{EngineError, Result};

/// How the VAE posterior becomes the clean latent z0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posterior {
    /// The posterior mean (deterministic; Preset R and the fixtures).
    Mean,
    /// A seeded sample mean + σ·noise (the released code samples).
    Sample(u64),
}

/// Image `[1, 3, H, W]` in [−1, 1] → latent `[1, 4, H/f, W/f]` (× scaling factor).
pub fn encode_image(sd: &StableDiffusion, image: &Tensor, posterior: Posterior) -> Result<Tensor> {
    let dist = sd.encode_posterior(image)?;
    let z = match posterior {
        Posterior::Mean => dist.mean,
        Posterior::Sample(seed) => dist.sample(seed)?,
    };
    Ok((z * sd.vae.config().scaling_factor())?)
}

/// Latent → image `[1, 3, H, W]` in [−1, 1] (unclamped).
pub fn decode(sd: &StableDiffusion, latent: &Tensor) -> Result<Tensor> {
    sd.decode_latent(latent)
}

/// Which inverse DDIM grid the inversion walks (docs/algorithm.md §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum InversionGrid {
    /// The exact inverse of the sampler's grid: N steps, N + 1 latents (Preset R).
    Consistent,
    /// The released code's grid (`ā[t−1] → ā[t−1+r]`, first and last step skipped): N − 2
    /// steps, N − 1 latents (Preset F).
    Authors,
}

/// pix2pix-zero's KL noise regulariser (λ, gradient steps).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KlRegularizer {
    /// Weight λ of the KL term.
    pub lambda: f64,
    /// Gradient steps on the noise per inversion step.
    pub steps: usize,
}

impl Default for KlRegularizer {
    fn default() -> Self {
        Self {
            lambda: 20.0,
            steps: 5,
        }
    }
}

/// The stored inversion trajectory `[z0, …]` of one image under one caption.
#[derive(Debug, Clone)]
pub struct Trajectory {
    /// Inversion latents z0 … zN, cleanest first `[1, 4, h, w]` each.
    pub latents: Vec<Tensor>,
    /// UNet timesteps used, in inversion order.
    pub timesteps: Vec<usize>,
    /// The timestep grid it walked.
    pub grid: InversionGrid,
    /// Sampling steps N the trajectory was made for.
    pub steps: usize,
}

impl Trajectory {
    /// The noisy latent sampling starts from.
    #[expect(clippy::expect_used, reason = "invert() always stores z0")]
    pub fn start(&self) -> &Tensor {
        self.latents.last().expect("a trajectory has z0 at least")
    }

    /// Index of the latent sampling step `i` should land on: `N − 1 − i` on the consistent
    /// grid (ending at z0); the released code's `len − i − 2` with Python wrap-around on the
    /// authors' grid (its last two steps target the noisiest latents: kept for parity).
    pub fn target_index(&self, i: usize) -> usize {
        let len = self.latents.len() as isize;
        match self.grid {
            InversionGrid::Consistent => (len - 2 - i as isize).max(0) as usize,
            InversionGrid::Authors => (len - i as isize - 2).rem_euclid(len) as usize,
        }
    }

    /// The latent sampling step `i` should land on (see [`Trajectory::target_index`]).
    pub fn target(&self, i: usize) -> &Tensor {
        &self.latents[self.target_index(i)]
    }
}

/// What an inversion walks: N, the grid and the optional noise regulariser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InversionSettings {
    /// Sampling steps N (the inversion walks the same schedule backwards).
    pub steps: usize,
    /// Which timesteps it visits (consistent, or the authors' grid).
    pub grid: InversionGrid,
    /// pix2pix-zero's noise regulariser, when the method asks for it.
    pub kl: Option<KlRegularizer>,
}

/// DDIM inversion with guidance 1 under the caption embedding `emb` (batch 1), keeping the
/// whole trajectory. Emits `Phase::Invert` and one `Event::Inversion` per step.
pub fn invert(
    ctx: &StageContext,
    z0: &Tensor,
    emb: &Tensor,
    settings: &InversionSettings,
    events: EventSink,
) -> Result<Trajectory> {
    let (sd, steps, grid) = (ctx.sd, settings.steps, settings.grid);
    sd.scheduler.check_num_inference_steps(steps)?;
    let timesteps: Vec<usize> = match grid {
        InversionGrid::Consistent => sd.scheduler.timesteps(steps).into_iter().rev().collect(),
        InversionGrid::Authors => sd.scheduler.authors_inversion_timesteps(steps),
    };
    events(Event::Phase {
        phase: Phase::Invert,
        steps: timesteps.len(),
    });
    let mut latents = vec![z0.clone()];
    let mut z = z0.clone();
    for (k, &t) in timesteps.iter().enumerate() {
        ctx.cancel.check()?;
        let mut eps = sd.forward_unet().forward(&z, t as f64, emb)?;
        if let Some(kl) = settings.kl {
            eps = kl_regularize(&eps, kl.lambda, kl.steps)?;
        }
        z = match grid {
            InversionGrid::Consistent => sd.scheduler.inverse_step(&eps, t, &z, steps)?,
            InversionGrid::Authors => sd.scheduler.authors_inverse_step(&eps, t, &z, steps)?,
        };
        check_finite(
            &z,
            &format!(
                "the inversion at step {} of {}{}",
                k + 1,
                timesteps.len(),
                sd.half_precision_hint()
            ),
        )?;
        latents.push(z.clone());
        events(Event::Inversion {
            step: k + 1,
            total: timesteps.len(),
            timestep: t,
        });
    }
    Ok(Trajectory {
        latents,
        timesteps,
        grid,
        steps,
    })
}

/// Noise prediction at `t` for a batch-1 latent; with `uncond = Some((U, w))`,
/// classifier-free guidance `e_u + w (e_c − e_u)` on the pair `[U, cond]`.
pub fn predict_noise(
    sd: &StableDiffusion,
    z: &Tensor,
    t: usize,
    cond: &Tensor,
    uncond: Option<(&Tensor, f64)>,
) -> Result<Tensor> {
    match uncond {
        None => Ok(sd.forward_unet().forward(z, t as f64, cond)?),
        Some((u, w)) => {
            let e = sd.forward_unet().forward(
                &Tensor::cat(&[z, z], 0)?,
                t as f64,
                &Tensor::cat(&[u, cond], 0)?,
            )?;
            Ok(classifier_free_guidance(&e, w)?)
        }
    }
}

/// How the noise of a latent pair is predicted: contexts `[uncond, cond]`, the guidance
/// scale, whether the maps are kept, and maps injected into the conditional sample.
#[derive(Clone, Copy)]
pub struct PairPass<'a> {
    /// `[uncond, cond]` text contexts.
    pub context: &'a Tensor,
    /// Classifier-free guidance scale.
    pub guidance_scale: f64,
    /// Return the pass's detached attention maps.
    pub want_maps: bool,
    /// Cross-attention maps the conditional sample reads its text with instead of its own.
    pub inject: Option<&'a Injection>,
}

/// The denoising step of an attention-guided latent pair `[z, z]` under contexts
/// `[uncond, cond]`: classifier-free guidance, then the DDIM step applied to the unconditional
/// copy `X[0]` (as the released MirrorDiffusion and pix2pix-zero code do). Returns the step
/// and, when `want_maps`, the pass's detached attention maps.
pub fn guided_pair_step(
    ctx: &StageContext,
    x: &Tensor,
    t: usize,
    n: usize,
    pass: &PairPass,
) -> Result<(DdimStepOutput, Option<AttentionMaps>)> {
    let request = CaptureRequest {
        probs: pass.want_maps,
        keys_values: false,
    };
    let (e, maps) =
        ctx.sd
            .forward_unet()
            .forward_injecting(x, t as f64, pass.context, request, pass.inject)?;
    ctx.unet_call_done();
    let eps = classifier_free_guidance(&e, pass.guidance_scale)?;
    let step = ctx.sd.scheduler.step(&eps, t, &x.narrow(0, 0, 1)?, n)?;
    Ok((step, pass.want_maps.then(|| maps.detach())))
}

/// `e_u + w (e_c − e_u)` for a batch-2 prediction `[e_u, e_c]`.
pub fn classifier_free_guidance(e: &Tensor, w: f64) -> candle_core::Result<Tensor> {
    let (eu, ec) = (e.narrow(0, 0, 1)?, e.narrow(0, 1, 1)?);
    &eu + ((&ec - &eu)? * w)?
}

/// Mean squared difference of two tensors, reduced on their device and read as f32: Metal
/// has no f64, and widening the f32 scalar on the CPU gives the same value.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<f64> {
    let mean = (a - b)?
        .sqr()?
        .mean_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_scalar::<f32>()?;
    Ok(f64::from(mean))
}

/// Prompt redescription settings (docs/algorithm.md §6; the released code's values by default).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RedescribeSettings {
    /// Adam iterations per step, at most.
    pub iterations: usize,
    /// Base learning rate; step i uses `lr · (1 − i/100)`.
    pub lr: f64,
    /// Early stop once the loss is below `base + slope · i`.
    pub early_stop_base: f64,
    /// Slope of that threshold per step.
    pub early_stop_slope: f64,
}

impl Default for RedescribeSettings {
    fn default() -> Self {
        Self {
            iterations: 10,
            lr: 0.01,
            early_stop_base: 1e-5,
            early_stop_slope: 2e-5,
        }
    }
}

/// The outcome of one redescription: the embedding C* and its losses.
pub struct Redescription {
    /// The optimised caption embedding C*_i `[1, L, D]`.
    pub embedding: Tensor,
    /// The loss before each update.
    pub losses: Vec<f64>,
}

/// One redescription problem: from `latent` at timestep `t` (step `step_index` of `steps`),
/// one DDIM step should land on `target`; the embedding starts at `init`.
#[derive(Debug, Clone, Copy)]
pub struct RedescribeTarget<'a> {
    /// The reconstruction latent the step starts from `[1, 4, h, w]`.
    pub latent: &'a Tensor,
    /// The UNet timestep of the step.
    pub t: usize,
    /// Sampling steps N of the schedule.
    pub steps: usize,
    /// Index i of the step (0 = noisiest).
    pub step_index: usize,
    /// The inversion latent one step should land on.
    pub target: &'a Tensor,
    /// The embedding Adam starts from (the previous step's C*, or the caption).
    pub init: &'a Tensor,
}

/// Optimises the caption embedding (warm-started from `init`) with Adam so that one DDIM step
/// from `latent` at timestep `t` lands on `target`: MSE(step(unet(z, t, C)), target).
pub fn redescribe(
    ctx: &StageContext,
    task: &RedescribeTarget,
    settings: &RedescribeSettings,
) -> Result<Redescription> {
    let (sd, i) = (ctx.sd, task.step_index);
    let mut emb = task.init.detach();
    let mut adam = Adam::new(settings.lr * (1.0 - i as f64 / 100.0));
    let threshold = settings.early_stop_base + i as f64 * settings.early_stop_slope;
    let mut losses = Vec::with_capacity(settings.iterations);
    for k in 0..settings.iterations {
        ctx.cancel.check()?;
        let var = Var::from_tensor(&emb)?;
        let eps = sd
            .unet
            .forward(task.latent, task.t as f64, var.as_tensor())?;
        let prev = sd
            .scheduler
            .step(&eps, task.t, task.latent, task.steps)?
            .prev_sample;
        let loss = (prev - task.target)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        ctx.redescription_iteration_done(k + 1, settings.iterations);
        let grad = grads.get(var.as_tensor()).ok_or_else(|| {
            EngineError::InvalidInput("redescription: no gradient reached the embedding".into())
        })?;
        let loss = loss.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            return Err(EngineError::StepNotFinite {
                step: i + 1,
                steps: task.steps,
                branch: Method::Mirror.reconstruction(),
            });
        }
        emb = adam.update(&emb, grad)?;
        losses.push(loss);
        if loss < threshold {
            break;
        }
    }
    Ok(Redescription {
        embedding: emb,
        losses,
    })
}

/// ∂/∂X of `weight · attention_map_loss(P(X, context), reference)` for a latent batch `X`
/// (the maps of sample b depend only on X[b]). Returns the gradient and the loss value.
pub fn guidance_gradient(
    ctx: &StageContext,
    x: &Tensor,
    t: usize,
    context: &Tensor,
    reference: &AttentionMaps,
    weight: f64,
) -> Result<(Tensor, f64)> {
    let var = Var::from_tensor(&x.detach())?;
    let request = CaptureRequest {
        probs: true,
        keys_values: false,
    };
    let (_, maps) =
        ctx.sd
            .unet
            .forward_with_capture(var.as_tensor(), t as f64, context, request)?;
    let mut loss = attention_map_loss(&maps, reference)?;
    if weight != 1.0 {
        loss = (loss * weight)?;
    }
    let grads = loss.backward()?;
    ctx.unet_call_done();
    let grad = grads
        .get(var.as_tensor())
        .ok_or_else(|| {
            EngineError::InvalidInput("guidance: no gradient reached the latent".into())
        })?
        .clone();
    Ok((grad, loss.to_scalar::<f32>()? as f64))
}

/// `Err(NonFinite)` when a tensor holds NaN or infinity.
pub fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    if is_finite(t)? {
        Ok(())
    } else {
        Err(EngineError::NonFinite {
            what: what.to_string(),
        })
    }
}
