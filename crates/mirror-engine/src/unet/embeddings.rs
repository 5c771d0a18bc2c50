//! Timestep embedding: diffusers' sinusoid (`Timesteps`) and its MLP (`TimestepEmbedding`).
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/embeddings.py (pinned).

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{Linear, linear};

/// diffusers' `get_timestep_embedding` for one timestep, repeated over the batch: `[batch, dim]`.
///
/// Computed in f32 step by step as torch does (exponent, division, exp, product with t), because
/// at t ≈ 1000 a one-ulp difference in a frequency moves the angle by ~1e-4.
pub fn timestep_sinusoid(
    timestep: f64,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    batch: usize,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let log_max_period = -(10000f64.ln()) as f32;
    let divisor = (half as f64 - freq_shift) as f32;
    let t = timestep as f32;
    let angles: Vec<f32> = (0..half)
        .map(|k| t * ((log_max_period * k as f32) / divisor).exp())
        .collect();
    let (sin, cos): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.sin(), a.cos())).unzip();
    let mut row = if flip_sin_to_cos {
        [cos, sin].concat()
    } else {
        [sin, cos].concat()
    };
    // Odd sizes get a zero column at the end, as diffusers pads.
    row.resize(dim, 0.0);
    Tensor::from_vec(row, (1, dim), device)?.repeat((batch, 1))
}

/// `time_embedding`: linear_1 → SiLU → linear_2.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}
