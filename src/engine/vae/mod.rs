//! diffusers `AutoencoderKL` (the Stable Diffusion VAE), built from `vae/config.json`.
//!
//! Weight names follow the diffusers checkpoint (`encoder.down_blocks.0.resnets.0.conv1`, …).
//! The mid-block attention accepts today's names (`to_q/to_k/to_v/to_out.0`) and the original
//! ones (`query/key/value/proj_attn`, also as 1×1 conv weights).

pub mod attention;
pub mod blocks;
pub mod coder;
pub mod config;
pub mod gaussian;

use std::path::Path;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::engine::nn::{Conv2d, conv2d};

pub use coder::{Decoder, Encoder};
pub use config::VaeConfig;
pub use gaussian::DiagonalGaussian;

#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: VaeConfig,
}

impl AutoencoderKL {
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
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Image [B, C, H, W] in [−1, 1] → posterior over the latent [B, latent, H/f, W/f].
    pub fn encode(&self, image: &Tensor) -> Result<DiagonalGaussian> {
        let (_, c, _, _) = image.dims4()?;
        if c != self.config.in_channels {
            candle_core::bail!(
                "VAE expects {} image channels, got {c}",
                self.config.in_channels
            );
        }
        let moments = self.encoder.forward(image)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&moments)?,
            None => moments,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    /// The raw decoder on z (not divided by the scaling factor).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        if c != self.config.latent_channels {
            candle_core::bail!(
                "VAE expects {} latent channels, got {c}",
                self.config.latent_channels
            );
        }
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z)?,
            None => z.clone(),
        };
        self.decoder.forward(&z)
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
        // A true division in the latent's dtype, as torch does (candle's `/ f64` would multiply
        // by the reciprocal).
        let scale = Tensor::new(self.config.scaling_factor() as f32, latent.device())?
            .to_dtype(latent.dtype())?;
        let z = latent.broadcast_div(&scale)?;
        let z = match self.config.shift_factor {
            Some(shift) => (z + shift)?,
            None => z,
        };
        self.decode(&z)
    }
}
