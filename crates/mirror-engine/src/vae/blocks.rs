//! The VAE's encoder and decoder blocks (diffusers' `DownEncoderBlock2D`, `UpDecoderBlock2D`),
//! built from the shared ResNet block and samplers of `engine::nn` (no time embedding).
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/unets/unet_2d_blocks.py (pinned).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use crate::nn::Activation;
use crate::nn::{Downsample2D, DownsampleConfig, ResnetBlock2D, ResnetConfig, Upsample2D};

/// Every GroupNorm in diffusers' `Encoder`/`Decoder` uses this eps (not the 1e-5 default).
pub const VAE_NORM_EPS: f64 = 1e-6;

/// Settings shared by every block of one VAE.
#[derive(Debug, Clone, Copy)]
pub struct BlockSettings {
    /// GroupNorm groups (`norm_num_groups`).
    pub groups: usize,
    /// The activation (`act_fn`).
    pub act: Activation,
}

impl BlockSettings {
    /// A VAE resnet: no time embedding, the VAE's norm eps, unscaled output.
    pub fn resnet(&self, in_channels: usize, out_channels: usize) -> ResnetConfig {
        ResnetConfig {
            in_channels,
            out_channels,
            temb_channels: None,
            groups: self.groups,
            eps: VAE_NORM_EPS,
            act: self.act,
            output_scale_factor: 1.0,
        }
    }
}

/// `DownEncoderBlock2D`: `num_layers` resnets, then (except in the last block) a downsampler.
#[derive(Debug, Clone)]
pub struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

/// `num_layers` resnets under `resnets.{j}`, the first taking `in_c` channels.
fn resnet_stack(
    vb: &VarBuilder,
    in_c: usize,
    out_c: usize,
    num_layers: usize,
    s: BlockSettings,
) -> Result<Vec<ResnetBlock2D>> {
    (0..num_layers)
        .map(|j| {
            let in_j = if j == 0 { in_c } else { out_c };
            ResnetBlock2D::new(vb.pp("resnets").pp(j), &s.resnet(in_j, out_c))
        })
        .collect()
}

impl DownEncoderBlock2D {
    /// `num_layers` resnets from `in_c` to `out_c` channels, then a ×2 downsampler when
    /// `add_downsample`.
    pub fn new(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        num_layers: usize,
        add_downsample: bool,
        s: BlockSettings,
    ) -> Result<Self> {
        let resnets = resnet_stack(&vb, in_c, out_c, num_layers, s)?;
        let downsampler = if add_downsample {
            // diffusers pads (0, 1, 0, 1) (right and bottom only) before a padding-0 conv.
            let cfg = DownsampleConfig {
                channels: out_c,
                padding: 0,
            };
            Some(Downsample2D::new(vb.pp("downsamplers").pp(0), &cfg)?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            downsampler,
        })
    }
}

impl Module for DownEncoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, None)?;
        }
        match &self.downsampler {
            Some(down) => down.forward(&h),
            None => Ok(h),
        }
    }
}

/// `UpDecoderBlock2D`: `num_layers` resnets, then (except in the last block) an upsampler.
#[derive(Debug, Clone)]
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    /// `num_layers` resnets from `in_c` to `out_c` channels, then a ×2 upsampler when
    /// `add_upsample`.
    pub fn new(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        num_layers: usize,
        add_upsample: bool,
        s: BlockSettings,
    ) -> Result<Self> {
        let resnets = resnet_stack(&vb, in_c, out_c, num_layers, s)?;
        let upsampler = if add_upsample {
            Some(Upsample2D::new(vb.pp("upsamplers").pp(0), out_c)?)
        } else {
            None
        };
        Ok(Self { resnets, upsampler })
    }
}

impl Module for UpDecoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, None)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&h),
            None => Ok(h),
        }
    }
}
