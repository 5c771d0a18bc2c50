//! Text-to-image sampling (the `generate` command): DDIM (η = 0) with classifier-free
//! guidance against the empty prompt, from seeded noise. Stages: [`encode_prompt`],
//! [`initial_noise`], [`denoise`] (the DDIM baselines' step), then the VAE decode.
//!
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py (pinned).

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::ddim::{self, DdimContexts};
use crate::imageio::tensor_to_image;
use crate::model::StableDiffusion;
use crate::pipeline::stages::{self, decode};
use crate::pipeline::{CancelToken, StageContext};
use crate::vae::VaeTiles;
use crate::vae::gaussian::standard_normal;
use crate::{EngineError, Result};

/// Steps when neither the caller nor the model says (diffusers' default).
pub const DEFAULT_STEPS: usize = 50;
/// Guidance when neither the caller nor the model says (diffusers' default).
pub const DEFAULT_GUIDANCE: f64 = 7.5;

/// What to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSettings {
    /// The text to sample.
    pub prompt: String,
    /// Number of DDIM steps.
    pub steps: usize,
    /// Classifier-free guidance w; as in diffusers, w ≤ 1 samples the prompt alone.
    pub guidance_scale: f64,
    /// Image k of `count` starts from the noise of seed `seed + k`.
    pub seed: u64,
    /// Number of images.
    pub count: usize,
    /// Image width in pixels (a multiple of [`StableDiffusion::size_multiple`]).
    pub width: usize,
    /// Image height in pixels (a multiple of [`StableDiffusion::size_multiple`]).
    pub height: usize,
    /// Whether the VAE decode goes through in tiles.
    pub vae_tiles: VaeTiles,
}

impl GenerateSettings {
    /// One image of `prompt` at the model's native size, with the steps and guidance the
    /// model recommends (else [`DEFAULT_STEPS`], [`DEFAULT_GUIDANCE`]), seed 0.
    pub fn for_model(sd: &StableDiffusion, prompt: &str) -> Self {
        let side = sd.default_image_side();
        let recommended = sd.recommended();
        Self {
            prompt: prompt.to_string(),
            steps: recommended.steps.unwrap_or(DEFAULT_STEPS),
            guidance_scale: recommended.guidance_scale.unwrap_or(DEFAULT_GUIDANCE),
            seed: 0,
            count: 1,
            width: side,
            height: side,
            vae_tiles: VaeTiles::default(),
        }
    }
}

/// The conditional context of `prompt` and, when `guidance_scale > 1`, the empty prompt's
/// as the unconditional one.
pub fn encode_prompt(
    sd: &StableDiffusion,
    prompt: &str,
    guidance_scale: f64,
) -> Result<DdimContexts> {
    let cond = sd.encode_prompt(prompt)?;
    let uncond = if guidance_scale > 1.0 {
        Some((sd.encode_prompt("")?, guidance_scale))
    } else {
        None
    };
    Ok(DdimContexts { cond, uncond })
}

/// Standard normal latent `[1, C, H/f, W/f]` from `seed`, drawn on the host (the same on
/// every device) and moved to the model's device.
pub fn initial_noise(
    sd: &StableDiffusion,
    seed: u64,
    width: usize,
    height: usize,
) -> Result<Tensor> {
    let factor = sd.latent_factor();
    let shape = (
        1,
        sd.unet.config().in_channels,
        height / factor,
        width / factor,
    );
    let count = shape.1 * shape.2 * shape.3;
    let noise = Tensor::from_vec(standard_normal(seed, count), shape, &Device::Cpu)?;
    Ok(noise.to_device(&sd.device)?)
}

/// DDIM from `start` over the model's `steps`-step schedule (noisiest first), one
/// [`ddim::denoise`] a step; `on_step(i, latent)` sees the latent after step i.
pub fn denoise(
    ctx: &StageContext,
    start: &Tensor,
    contexts: &DdimContexts,
    steps: usize,
    on_step: &mut dyn FnMut(usize, &Tensor),
) -> Result<Tensor> {
    let mut z = start.clone();
    for (i, t) in ctx.sd.scheduler.timesteps(steps).into_iter().enumerate() {
        ctx.cancel.check()?;
        z = ddim::denoise(ctx, &z, t, steps, contexts, false)?.latent;
        stages::check_finite(&z, "the generated latent")?;
        on_step(i, &z);
    }
    Ok(z)
}

/// `settings.count` images of the prompt, `[N, 3, H, W]` in [−1, 1] (unclamped).
/// `on_step(image, step)` is told after each step. Words the model does not know are an error.
/// Whether the decode went through in tiles is in `sd.vae_tiles_report()` afterwards.
pub fn generate(
    sd: &StableDiffusion,
    settings: &GenerateSettings,
    cancel: &CancelToken,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    if settings.count == 0 || settings.steps == 0 {
        return Err(EngineError::InvalidInput(format!(
            "generate needs at least one image and one step (asked for {} images, {} steps)",
            settings.count, settings.steps
        )));
    }
    if !settings.guidance_scale.is_finite() {
        return Err(EngineError::InvalidInput(format!(
            "guidance must be a finite number, got {}",
            settings.guidance_scale
        )));
    }
    sd.check_known_words(&[&settings.prompt])?;
    sd.check_image_size(settings.width, settings.height)?;
    sd.scheduler.check_num_inference_steps(settings.steps)?;
    let contexts = encode_prompt(sd, &settings.prompt, settings.guidance_scale)?;
    sd.set_vae_tiles(settings.vae_tiles);
    let ctx = StageContext::new(sd, cancel);
    let mut images = Vec::with_capacity(settings.count);
    for k in 0..settings.count {
        let seed = settings.seed.wrapping_add(k as u64);
        let start = initial_noise(sd, seed, settings.width, settings.height)?;
        let latent = denoise(&ctx, &start, &contexts, settings.steps, &mut |i, _| {
            on_step(k, i)
        })?;
        images.push(decode(sd, &latent)?);
    }
    Ok(Tensor::cat(&images, 0)?)
}

/// The images of [`generate`] as 8-bit RGB.
pub fn to_rgb_images(images: &Tensor) -> Result<Vec<RgbImage>> {
    (0..images.dim(0)?)
        .map(|k| Ok(tensor_to_image(&images.narrow(0, k, 1)?)?))
        .collect()
}
