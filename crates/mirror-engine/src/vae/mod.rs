//! diffusers `AutoencoderKL` (the Stable Diffusion VAE), built from `vae/config.json`.
//!
//! Weight names follow the diffusers checkpoint (`encoder.down_blocks.0.resnets.0.conv1`, …).
//! The mid-block attention accepts today's names (`to_q/to_k/to_v/to_out.0`) and the original
//! ones (`query/key/value/proj_attn`, also as 1×1 conv weights). Images larger than the
//! model's native size can go through in tiles ([`tiled`]; off by default, as diffusers).
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/autoencoders/autoencoder_kl.py (pinned).

pub mod attention;
pub mod blocks;
pub mod coder;
pub mod config;
pub mod gaussian;
pub mod tiled;

use std::path::Path;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{Conv2d, conv2d};

pub use coder::{Decoder, Encoder};
pub use config::VaeConfig;
pub use gaussian::DiagonalGaussian;
pub use tiled::{TilingSettings, VaeTiles};

/// The KL autoencoder (diffusers `AutoencoderKL`): images to latent posteriors and latents back to
/// images.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: VaeConfig,
    tiling: TilingSettings,
}

impl AutoencoderKL {
    /// Loads the encoder, decoder and quant convs under `vb`, after validating `cfg`.
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        // A config made in code has not been through `from_file`; check it the same way.
        cfg.validate(Path::new("vae config"))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let moments = 2 * cfg.latent_channels;
        let quant_conv = if cfg.use_quant_conv {
            Some(conv2d(moments, moments, 1, 0, 1, vb.pp("quant_conv"))?)
        } else {
            None
        };
        let post_quant_conv = if cfg.use_post_quant_conv {
            let c = cfg.latent_channels;
            Some(conv2d(c, c, 1, 0, 1, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), cfg)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg)?,
            quant_conv,
            post_quant_conv,
            config: cfg.clone(),
            tiling: TilingSettings::from_config(cfg),
        })
    }

    /// The config it was built from.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// How images larger than the native size are split (from the config unless set; off
    /// unless set, as diffusers before `enable_tiling()`).
    pub fn tiling(&self) -> &TilingSettings {
        &self.tiling
    }

    /// Replaces the tiling settings of later passes.
    pub fn set_tiling(&mut self, tiling: TilingSettings) {
        self.tiling = tiling;
    }

    /// Image [B, C, H, W] in [−1, 1] → posterior over the latent [B, latent, H/f, W/f]; in
    /// tiles when tiling is on and the latent is larger than the native size.
    pub fn encode(&self, image: &Tensor) -> Result<DiagonalGaussian> {
        self.encode_with(image, &self.tiling)
    }

    /// The raw decoder on z (not divided by the scaling factor); in tiles when tiling is on
    /// and z is larger than the native size.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_with(z, &self.tiling)
    }

    /// Encoder moments [B, 2·latent, H/f, W/f] of the whole image at once.
    fn encode_moments(&self, image: &Tensor) -> Result<Tensor> {
        let moments = self.encoder.forward(image)?;
        match &self.quant_conv {
            Some(conv) => conv.forward(&moments),
            None => Ok(moments),
        }
    }

    /// The decoder on the whole of z at once.
    fn decode_whole(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z)?,
            None => z.clone(),
        };
        self.decoder.forward(&z)
    }

    fn check_channels(&self, x: &Tensor, expected: usize, what: &str) -> Result<()> {
        let (_, c, _, _) = x.dims4()?;
        if c != expected {
            candle_core::bail!("VAE expects {expected} {what} channels, got {c}");
        }
        Ok(())
    }

    /// Deterministic latent: posterior mean × scaling factor (minus shift, where configured).
    pub fn image_to_latent(&self, image: &Tensor) -> Result<Tensor> {
        let mean = self.encode(image)?.mean;
        let mean = match self.config.shift_factor {
            Some(shift) => (mean - shift)?,
            None => mean,
        };
        mean * self.config.scaling_factor()
    }

    /// decode(latent / scaling factor (+ shift)), unclamped (about [−1, 1]).
    pub fn latent_to_image(&self, latent: &Tensor) -> Result<Tensor> {
        self.latent_to_image_with(latent, &self.tiling)
    }

    /// [`Self::latent_to_image`] with explicit tiling settings.
    pub fn latent_to_image_with(&self, latent: &Tensor, tiling: &TilingSettings) -> Result<Tensor> {
        // A true division in the latent's dtype, as torch does (candle's `/ f64` would multiply
        // by the reciprocal).
        let scale = Tensor::new(self.config.scaling_factor() as f32, latent.device())?
            .to_dtype(latent.dtype())?;
        let z = latent.broadcast_div(&scale)?;
        let z = match self.config.shift_factor {
            Some(shift) => (z + shift)?,
            None => z,
        };
        self.decode_with(&z, tiling)
    }
}
