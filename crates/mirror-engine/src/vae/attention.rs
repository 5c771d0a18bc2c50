//! The VAE mid block: resnet → single-head self-attention → resnet.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/attention_processor.py (pinned).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::blocks::{BlockSettings, VAE_NORM_EPS};
use crate::nn::ResnetBlock2D;
use crate::nn::{GroupNorm, chunked_attention};

/// Loads a C→C projection stored under today's diffusers name (`to_q`, Linear [C, C]) or the
/// original one (`query`, possibly a 1×1 conv [C, C, 1, 1]).
fn projection(vb: &VarBuilder, names: [&str; 2], channels: usize) -> Result<Linear> {
    let found = names
        .iter()
        .find(|name| vb.contains_tensor(&format!("{name}.weight")));
    let Some(name) = found else {
        // Neither is stored: the shape-checked getter reports the missing tensor (or, for a
        // VarMap, creates it).
        let vb = vb.pp(names[0]);
        return Ok(Linear::new(
            vb.get((channels, channels), "weight")?,
            Some(vb.get(channels, "bias")?),
        ));
    };
    let vb = vb.pp(name);
    let weight = vb.get_unchecked("weight")?;
    let weight = match weight.dims() {
        [o, i] if *o == channels && *i == channels => weight,
        [o, i, 1, 1] if *o == channels && *i == channels => weight.reshape((channels, channels))?,
        other => candle_core::bail!(
            "VAE attention `{name}.weight` has shape {other:?}, expected [{channels}, {channels}] or [{channels}, {channels}, 1, 1]"
        ),
    };
    Ok(Linear::new(weight, Some(vb.get(channels, "bias")?)))
}

/// diffusers `Attention` as built by `UNetMidBlock2D` for the VAE: `attention_head_dim` equals
/// the channel count, so there is one head; group norm first, residual added, rescale 1.
#[derive(Debug, Clone)]
pub struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    scale: f64,
}

impl VaeAttention {
    /// Loads the layer under `vb` (`to_q`/`to_k`/`to_v`/`to_out.0`, or the older
    /// `query`/`key`/`value`/`proj_attn` names).
    pub fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::load(groups, channels, VAE_NORM_EPS, vb.pp("group_norm"))?,
            to_q: projection(&vb, ["to_q", "query"], channels)?,
            to_k: projection(&vb, ["to_k", "key"], channels)?,
            to_v: projection(&vb, ["to_v", "value"], channels)?,
            to_out: projection(&vb, ["to_out.0", "proj_attn"], channels)?,
            scale: 1.0 / (channels as f64).sqrt(),
        })
    }
}

impl Module for VaeAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        // diffusers upcasts the softmax of this block; do the whole product in f32.
        let dtype = q.dtype();
        let (q, k, v) = match dtype {
            DType::F16 | DType::BF16 => (
                q.to_dtype(DType::F32)?,
                k.to_dtype(DType::F32)?,
                v.to_dtype(DType::F32)?,
            ),
            _ => (q, k, v),
        };
        // One head over every position: at 512 px a [4096, 4096] score block per image, which
        // the chunked (on the CPU fused) attention never holds whole.
        let attended = chunked_attention(&(q * self.scale)?, &k, &v)?.to_dtype(dtype)?;
        let out = self
            .to_out
            .forward(&attended)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + x
    }
}

/// `UNetMidBlock2D` without time embedding: resnet, (attention), resnet.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnet_in: ResnetBlock2D,
    attention: Option<VaeAttention>,
    resnet_out: ResnetBlock2D,
}

impl MidBlock {
    /// Resnet, self-attention when `add_attention`, resnet, all at `channels` channels.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        add_attention: bool,
        s: BlockSettings,
    ) -> Result<Self> {
        let attention = if add_attention {
            Some(VaeAttention::new(
                vb.pp("attentions").pp(0),
                channels,
                s.groups,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnet_in: ResnetBlock2D::new(vb.pp("resnets").pp(0), &s.resnet(channels, channels))?,
            attention,
            resnet_out: ResnetBlock2D::new(vb.pp("resnets").pp(1), &s.resnet(channels, channels))?,
        })
    }
}

impl Module for MidBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.resnet_in.forward(x, None)?;
        if let Some(attention) = &self.attention {
            h = attention.forward(&h)?;
        }
        self.resnet_out.forward(&h, None)
    }
}
