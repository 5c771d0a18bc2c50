//! diffusers `Encoder` and `Decoder` (norm_type "group", no time embedding).
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/autoencoders/vae.py (pinned).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{Conv2d, GroupNorm, conv2d};

use super::attention::MidBlock;
use super::blocks::{
    Activation, BlockSettings, DownEncoderBlock2D, UpDecoderBlock2D, VAE_NORM_EPS,
};
use super::config::VaeConfig;

fn conv3x3(vb: VarBuilder, in_c: usize, out_c: usize) -> Result<Conv2d> {
    conv2d(in_c, out_c, 3, 1, 1, vb)
}

fn settings(cfg: &VaeConfig) -> Result<BlockSettings> {
    Ok(BlockSettings {
        groups: cfg.norm_num_groups,
        act: Activation::from_name(&cfg.act_fn)?,
    })
}

/// Image [B, in, H, W] → moments [B, 2·latent, H/f, W/f].
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

impl Encoder {
    /// Builds the encoder for `cfg` from the weights under `vb`.
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let s = settings(cfg)?;
        let channels = &cfg.block_out_channels;
        let last = *channels
            .last()
            .ok_or_else(|| candle_core::Error::Msg("VAE has no blocks".into()))?;
        let mut down_blocks = Vec::with_capacity(channels.len());
        let mut in_c = channels[0];
        for (i, &out_c) in channels.iter().enumerate() {
            let is_final = i + 1 == channels.len();
            let vb_i = vb.pp("down_blocks").pp(i);
            down_blocks.push(DownEncoderBlock2D::new(
                vb_i,
                in_c,
                out_c,
                cfg.layers_per_block,
                !is_final,
                s,
            )?);
            in_c = out_c;
        }
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), cfg.in_channels, channels[0])?,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, cfg.mid_block_add_attention, s)?,
            conv_norm_out: GroupNorm::load(s.groups, last, VAE_NORM_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), last, 2 * cfg.latent_channels)?,
            act: s.act,
        })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            h = block.forward(&h)?;
        }
        let h = self.mid_block.forward(&h)?;
        let h = self.conv_norm_out.forward_then(&h, Some(self.act))?;
        self.conv_out.forward(&h)
    }
}

/// Latent [B, latent, h, w] → image [B, out, h·f, w·f]; blocks run in reversed channel order.
#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

impl Decoder {
    /// Builds the decoder for `cfg` from the weights under `vb`.
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let s = settings(cfg)?;
        let reversed: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let first = *reversed
            .first()
            .ok_or_else(|| candle_core::Error::Msg("VAE has no blocks".into()))?;
        let mut up_blocks = Vec::with_capacity(reversed.len());
        let mut in_c = first;
        for (i, &out_c) in reversed.iter().enumerate() {
            let is_final = i + 1 == reversed.len();
            let vb_i = vb.pp("up_blocks").pp(i);
            up_blocks.push(UpDecoderBlock2D::new(
                vb_i,
                in_c,
                out_c,
                cfg.layers_per_block + 1,
                !is_final,
                s,
            )?);
            in_c = out_c;
        }
        let out_c0 = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), cfg.latent_channels, first)?,
            mid_block: MidBlock::new(vb.pp("mid_block"), first, cfg.mid_block_add_attention, s)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(s.groups, out_c0, VAE_NORM_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), out_c0, cfg.out_channels)?,
            act: s.act,
        })
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z)?)?;
        for block in &self.up_blocks {
            h = block.forward(&h)?;
        }
        let h = self.conv_norm_out.forward_then(&h, Some(self.act))?;
        self.conv_out.forward(&h)
    }
}
