//! `Transformer2DModel` (continuous input) and its `BasicTransformerBlock`s.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/transformers/transformer_2d.py (pinned).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{ChannelLinear, Conv2d, Linear, conv2d, linear};

use super::attention::{Attention, FeedForward};
use super::capture::CaptureSink;
use crate::nn::{GroupNorm, LayerNorm};

/// diffusers' fixed epsilons inside the transformer (not in the config).
const TRANSFORMER_GROUP_NORM_EPS: f64 = 1e-6;
const LAYER_NORM_EPS: f64 = 1e-5;

/// Pre-norm self-attention, cross-attention and GEGLU feed-forward, each with a residual.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        head_dim: usize,
        context_dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(dim, LAYER_NORM_EPS, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, None, heads, head_dim)?,
            norm2: LayerNorm::new(dim, LAYER_NORM_EPS, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, Some(context_dim), heads, head_dim)?,
            norm3: LayerNorm::new(dim, LAYER_NORM_EPS, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim, 4)?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        spatial: (usize, usize),
        sink: Option<&mut CaptureSink<'_>>,
    ) -> Result<Tensor> {
        // Each residual is added inside the sublayer's last linear layer (see
        // `Linear::forward_adding`).
        let x = self
            .attn1
            .forward_adding(&self.norm1.forward(x)?, None, spatial, None, x)?;
        let x = self.attn2.forward_adding(
            &self.norm2.forward(&x)?,
            Some(context),
            spatial,
            sink,
            &x,
        )?;
        self.ff.forward_adding(&self.norm3.forward(&x)?, &x)
    }
}

/// 1x1 conv (SD 1.x) or linear (`use_linear_projection`, SD 2.x) projections around the blocks.
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    /// The projection as one product with its layout change, on the CPU in f32.
    fn channel_linear(&self) -> Result<Option<ChannelLinear>> {
        match self {
            Projection::Conv(conv) => ChannelLinear::new(conv.weight(), conv.bias()),
            Projection::Linear(lin) => ChannelLinear::new(lin.weight(), lin.bias()),
        }
    }
}

/// Sizes of one `Transformer2DModel`.
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DConfig {
    pub channels: usize,
    pub heads: usize,
    pub num_layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
}

#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
    /// Both projections with their layout changes in one product each, where the weights
    /// are f32 on the CPU.
    in_out: Option<(ChannelLinear, ChannelLinear)>,
}

impl Transformer2DModel {
    pub fn new(vb: VarBuilder, cfg: &Transformer2DConfig) -> Result<Self> {
        let c = cfg.channels;
        let head_dim = c / cfg.heads;
        let inner = cfg.heads * head_dim;
        let projection = |i: usize, o: usize, vb: VarBuilder| -> Result<Projection> {
            Ok(if cfg.use_linear_projection {
                Projection::Linear(linear(i, o, vb)?)
            } else {
                Projection::Conv(conv2d(i, o, 1, 0, 1, vb)?)
            })
        };
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let vb = vb.pp("transformer_blocks").pp(i);
                BasicTransformerBlock::new(vb, inner, cfg.heads, head_dim, cfg.context_dim)
            })
            .collect::<Result<Vec<_>>>()?;
        let proj_in = projection(c, inner, vb.pp("proj_in"))?;
        let proj_out = projection(inner, c, vb.pp("proj_out"))?;
        let in_out = match (proj_in.channel_linear()?, proj_out.channel_linear()?) {
            (Some(proj_in), Some(proj_out)) => Some((proj_in, proj_out)),
            _ => None,
        };
        Ok(Self {
            norm: GroupNorm::load(cfg.groups, c, TRANSFORMER_GROUP_NORM_EPS, vb.pp("norm"))?,
            proj_in,
            blocks,
            proj_out,
            in_out,
        })
    }

    /// `x` `[B, C, H, W]`, `context` `[B, L, D]`.
    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        mut sink: Option<&mut CaptureSink<'_>>,
    ) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        if let Some((proj_in, proj_out)) = &self.in_out
            && normed.dtype() == DType::F32
        {
            let mut tokens = proj_in.to_tokens(&normed)?;
            for block in &self.blocks {
                tokens = block.forward(&tokens, context, (h, w), sink.as_deref_mut())?;
            }
            return proj_out.to_image_adding(&tokens, (h, w), x);
        }
        // [B, C, H, W] → tokens [B, H·W, C].
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(1)?;
            t.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context, (h, w), sink.as_deref_mut())?;
        }
        let to_image = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(2)?;
            t.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
        };
        match &self.proj_out {
            Projection::Conv(conv) => conv.forward_adding(&to_image(&tokens)?, x),
            Projection::Linear(lin) => to_image(&lin.forward(&tokens)?)? + x,
        }
    }
}
