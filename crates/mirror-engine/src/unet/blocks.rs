//! Down, mid and up blocks: resnets, optionally each followed by a Transformer2D.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/unets/unet_2d_blocks.py (pinned).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::capture::CaptureSink;
use super::transformer::{Transformer2DConfig, Transformer2DModel};
use crate::nn::{
    Activation, Downsample2D, DownsampleConfig, ResnetBlock2D, ResnetConfig, Upsample2D,
};

/// What the blocks share: time-embedding width, norms, attention settings.
#[derive(Debug, Clone, Copy)]
pub struct BlockCommon {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub use_linear_projection: bool,
}

/// Attention settings of one block (absent for `DownBlock2D` / `UpBlock2D`).
#[derive(Debug, Clone, Copy)]
pub struct BlockAttention {
    pub heads: usize,
    pub transformer_layers: usize,
    pub context_dim: usize,
}

fn resnet(
    vb: VarBuilder,
    c: &BlockCommon,
    i: usize,
    o: usize,
    scale: f64,
) -> Result<ResnetBlock2D> {
    let cfg = ResnetConfig {
        in_channels: i,
        out_channels: o,
        temb_channels: Some(c.temb_channels),
        groups: c.groups,
        eps: c.eps,
        // The config validation accepts `silu` only.
        act: Activation::Silu,
        output_scale_factor: scale,
    };
    ResnetBlock2D::new(vb, &cfg)
}

fn transformers(
    vb: VarBuilder,
    c: &BlockCommon,
    attn: Option<BlockAttention>,
    channels: usize,
    count: usize,
) -> Result<Vec<Transformer2DModel>> {
    let Some(a) = attn else { return Ok(vec![]) };
    let cfg = Transformer2DConfig {
        channels,
        heads: a.heads,
        num_layers: a.transformer_layers,
        context_dim: a.context_dim,
        groups: c.groups,
        use_linear_projection: c.use_linear_projection,
    };
    (0..count)
        .map(|i| Transformer2DModel::new(vb.pp("attentions").pp(i), &cfg))
        .collect()
}

/// `CrossAttnDownBlock2D` (with attentions) or `DownBlock2D`.
#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

/// Sizes of one down block (diffusers' names).
#[derive(Debug, Clone, Copy)]
pub struct DownLayout {
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    /// The downsampler's conv padding; `None` in the last block (no downsampler).
    pub downsample_padding: Option<usize>,
}

impl DownBlock {
    pub fn new(
        vb: VarBuilder,
        common: &BlockCommon,
        attn: Option<BlockAttention>,
        layout: &DownLayout,
    ) -> Result<Self> {
        let out_channels = layout.out_channels;
        let resnets = (0..layout.num_layers)
            .map(|j| {
                let i = if j == 0 {
                    layout.in_channels
                } else {
                    out_channels
                };
                resnet(vb.pp("resnets").pp(j), common, i, out_channels, 1.0)
            })
            .collect::<Result<Vec<_>>>()?;
        let downsampler = layout
            .downsample_padding
            .map(|padding| {
                let cfg = DownsampleConfig {
                    channels: out_channels,
                    padding,
                };
                Downsample2D::new(vb.pp("downsamplers").pp(0), &cfg)
            })
            .transpose()?;
        Ok(Self {
            resnets,
            attentions: transformers(vb, common, attn, out_channels, layout.num_layers)?,
            downsampler,
        })
    }

    /// Returns the output and appends every skip connection to `skips`.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
        mut sink: Option<&mut CaptureSink<'_>>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, Some(temb))?;
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(&h, context, sink.as_deref_mut())?;
            }
            skips.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h)?;
            skips.push(h.clone());
        }
        Ok(h)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    pub fn new(
        vb: VarBuilder,
        common: &BlockCommon,
        attn: BlockAttention,
        channels: usize,
        output_scale_factor: f64,
    ) -> Result<Self> {
        // diffusers' default of one (transformer, resnet) pair.
        let num_layers = 1;
        let resnets = (0..=num_layers)
            .map(|j| {
                resnet(
                    vb.pp("resnets").pp(j),
                    common,
                    channels,
                    channels,
                    output_scale_factor,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            resnets,
            attentions: transformers(vb, common, Some(attn), channels, num_layers)?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        mut sink: Option<&mut CaptureSink<'_>>,
    ) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, Some(temb))?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            h = attn.forward(&h, context, sink.as_deref_mut())?;
            h = resnet.forward(&h, Some(temb))?;
        }
        Ok(h)
    }
}

/// `CrossAttnUpBlock2D` (with attentions) or `UpBlock2D`.
#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

/// Channel sizes of one up block (diffusers' names).
#[derive(Debug, Clone, Copy)]
pub struct UpChannels {
    /// Channels of the matching down block's input (the last skip).
    pub in_channels: usize,
    pub prev_output_channels: usize,
    pub out_channels: usize,
}

impl UpBlock {
    pub fn new(
        vb: VarBuilder,
        common: &BlockCommon,
        attn: Option<BlockAttention>,
        ch: UpChannels,
        num_layers: usize,
        add_upsample: bool,
    ) -> Result<Self> {
        let resnets = (0..num_layers)
            .map(|j| {
                let skip = if j + 1 == num_layers {
                    ch.in_channels
                } else {
                    ch.out_channels
                };
                let input = if j == 0 {
                    ch.prev_output_channels
                } else {
                    ch.out_channels
                };
                resnet(
                    vb.pp("resnets").pp(j),
                    common,
                    input + skip,
                    ch.out_channels,
                    1.0,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let upsampler = add_upsample
            .then(|| Upsample2D::new(vb.pp("upsamplers").pp(0), ch.out_channels))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions: transformers(vb, common, attn, ch.out_channels, num_layers)?,
            upsampler,
        })
    }

    /// Consumes skip connections from the end of `skips`.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
        mut sink: Option<&mut CaptureSink<'_>>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().ok_or_else(|| {
                candle_core::Error::Msg("up block ran out of skip connections".into())
            })?;
            h = resnet.forward(&Tensor::cat(&[&h, &skip], 1)?, Some(temb))?;
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(&h, context, sink.as_deref_mut())?;
            }
        }
        if let Some(up) = &self.upsampler {
            h = up.forward(&h)?;
        }
        Ok(h)
    }
}
