//! Multi-head attention (`attn1` self, `attn2` cross) and the GEGLU feed-forward.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/attention_processor.py (pinned).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{Linear, linear, linear_no_bias};

use super::capture::{CaptureSink, CapturedAttention};
use crate::nn::attention::{merge_heads, split_heads};
use crate::nn::geglu::geglu;
use crate::nn::{attention_probabilities, multi_head_attention};

/// diffusers `Attention` with the classic softmax((q·scale) kᵀ) v path.
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
    /// Module path, for cross-attention layers that may be recorded.
    capture_name: Option<String>,
}

impl Attention {
    /// `context_dim`: `None` for self-attention. Cross-attention layers are recordable.
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let kv_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(kv_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(kv_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
            capture_name: context_dim.map(|_| vb.prefix()),
        })
    }

    /// `probs` `[batch·heads, q, keys]` with sample `sample`'s rows replaced by `maps`
    /// `[heads, q, keys]`.
    fn with_sample_replaced(&self, probs: &Tensor, sample: usize, maps: &Tensor) -> Result<Tensor> {
        let rows = probs.dim(0)?;
        let start = sample * self.heads;
        if start + self.heads > rows || maps.dims()[1..] != probs.dims()[1..] {
            candle_core::bail!(
                "injected maps {:?} do not fit sample {sample} of {:?}",
                maps.dims(),
                probs.dims()
            );
        }
        let maps = maps.to_dtype(probs.dtype())?;
        let mut parts = Vec::with_capacity(3);
        if start > 0 {
            parts.push(probs.narrow(0, 0, start)?);
        }
        parts.push(maps);
        if start + self.heads < rows {
            parts.push(probs.narrow(0, start + self.heads, rows - start - self.heads)?);
        }
        Tensor::cat(&parts, 0)
    }

    /// The attention of `x` `[B, S, C]` plus `residual` `[B, S, C]` (the block's skip), added
    /// inside the output projection. `context` `[B, L, D]` for cross-attention
    /// (self-attention when `None`); `spatial` is the query grid, only used to label captures.
    pub fn forward_adding(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        spatial: (usize, usize),
        sink: Option<&mut CaptureSink<'_>>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let attended = self.attend(x, context, spatial, sink)?;
        self.to_out.forward_adding(&attended, residual)
    }

    /// The heads' attention, merged, before the output projection.
    fn attend(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        spatial: (usize, usize),
        sink: Option<&mut CaptureSink<'_>>,
    ) -> Result<Tensor> {
        let batch = x.dim(0)?;
        let context = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        let heads = self.heads;
        let request = match (&sink, &self.capture_name) {
            (Some(sink), Some(_)) => sink.request,
            _ => Default::default(),
        };
        let injected = match (&sink, &self.capture_name) {
            (
                Some(CaptureSink {
                    inject: Some(i), ..
                }),
                Some(name),
            ) => i.for_layer(name, self.heads)?.map(|maps| (i.sample, maps)),
            _ => None,
        };
        // Recorded probabilities must stay in the autograd graph (the map losses differentiate
        // them); they are `[rows, queries, tokens]`, small next to self-attention's matrix.
        let (out, probs) = if request.probs || injected.is_some() {
            let q = (split_heads(&q, heads)? * self.scale)?;
            let (k, v) = (split_heads(&k, heads)?, split_heads(&v, heads)?);
            let mut probs = attention_probabilities(&q, &k)?;
            if let Some((sample, maps)) = injected {
                probs = self.with_sample_replaced(&probs, sample, &maps)?;
            }
            let out = merge_heads(&probs.matmul(&v)?, batch, heads)?;
            (out, request.probs.then_some(probs))
        } else {
            (multi_head_attention(&q, &k, &v, heads, self.scale)?, None)
        };
        if let (Some(sink), Some(name)) = (sink, &self.capture_name)
            && request.any()
        {
            sink.layers.push(CapturedAttention {
                name: name.clone(),
                heads: self.heads,
                spatial,
                probs,
                keys: request
                    .keys_values
                    .then(|| split_heads(&k, heads))
                    .transpose()?,
                values: request
                    .keys_values
                    .then(|| split_heads(&v, heads))
                    .transpose()?,
            });
        }
        Ok(out)
    }
}

/// `FeedForward` with GEGLU: proj to 2·inner, value · GELU_erf(gate), back to `dim`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn new(vb: VarBuilder, dim: usize, mult: usize) -> Result<Self> {
        let inner = dim * mult;
        Ok(Self {
            proj: linear(dim, inner * 2, vb.pp("net").pp("0").pp("proj"))?,
            out: linear(inner, dim, vb.pp("net").pp("2"))?,
        })
    }
}

impl FeedForward {
    /// `forward(x) + residual`, the residual added inside the output layer.
    pub fn forward_adding(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        self.out.forward_adding(&geglu(&h)?, residual)
    }
}
