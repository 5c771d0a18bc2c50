//! Differentiable building blocks shared by the models.
//!
//! candle's fused softmax and layer-norm kernels have no backward pass: a gradient that
//! reaches them silently becomes zero. Everything here is either written with elementary
//! (differentiable) ops, or uses a fused kernel only when no gradient can flow.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

pub mod attention;
pub mod blocks;
mod col2im;
pub mod frozen;
pub mod norm_backward;
mod precomputed;
pub use attention::chunked_attention;
pub use blocks::{
    Activation, Downsample2D, DownsampleConfig, ResnetBlock2D, ResnetConfig, Upsample2D,
};
pub use frozen::{Conv2d, Linear, conv2d, linear, linear_no_bias};

/// Softmax over the last dimension. The fused kernel is used only when the input is not
/// part of an autograd graph; otherwise the composable form, which has a backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::ops::softmax_last_dim(x);
    }
    // Subtracting the (detached) row max changes nothing mathematically; it keeps exp finite.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// LayerNorm over the last dimension, two-pass (mean, then variance of the centred values)
/// like PyTorch, written with elementary ops so that it always has a backward.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.track_op() {
            return self.normalise(x);
        }
        // One graph node instead of the elementary ops' intermediates.
        let gradient = norm_backward::NormGradient {
            axes: norm_backward::NormAxes::LastDim,
            weight: self.weight.clone(),
            eps: self.eps,
        };
        gradient.attach(x, self.normalise(&x.detach())?)
    }
}

impl LayerNorm {
    fn normalise(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = match dtype {
            DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
            _ => x.clone(),
        };
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// GroupNorm (candle-nn's is written with elementary, two-pass ops: differentiable).
pub fn group_norm(
    num_groups: usize,
    num_channels: usize,
    eps: f64,
    vb: VarBuilder,
) -> Result<candle_nn::GroupNorm> {
    candle_nn::group_norm(num_groups, num_channels, eps, vb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn softmax_has_gradient_when_tracked() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![0.1f32, -0.4, 2.0, 0.3, 0.0, -1.0], (2, 3), &dev)?;
        let w = Tensor::new(&[[1f32, 2., 3.], [-1., 0.5, 2.]], &dev)?;
        let loss = softmax_last_dim(x.as_tensor())?.mul(&w)?.sum_all()?;
        let grads = loss.backward()?;
        let g = grads
            .get(x.as_tensor())
            .expect("gradient")
            .to_vec2::<f32>()?;
        // Finite differences on every element.
        let base = x.as_tensor().to_vec2::<f32>()?;
        let f = |v: &Vec<Vec<f32>>| -> Result<f32> {
            let t = Tensor::new(v.clone(), &dev)?;
            softmax_last_dim(&t)?.mul(&w)?.sum_all()?.to_scalar::<f32>()
        };
        for r in 0..2 {
            for c in 0..3 {
                let (mut p, mut m) = (base.clone(), base.clone());
                p[r][c] += 1e-2;
                m[r][c] -= 1e-2;
                let fd = (f(&p)? - f(&m)?) / 2e-2;
                assert!(
                    (fd - g[r][c]).abs() < 1e-3,
                    "({r},{c}) fd {fd} vs {}",
                    g[r][c]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn layer_norm_has_gradient_and_matches_definition() -> Result<()> {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_tensors(
            [
                (
                    "weight".to_string(),
                    Tensor::new(&[1.5f32, 0.5, -1.0, 2.0], &dev)?,
                ),
                (
                    "bias".to_string(),
                    Tensor::new(&[0.1f32, 0.0, -0.2, 0.3], &dev)?,
                ),
            ]
            .into_iter()
            .collect(),
            DType::F32,
            &dev,
        );
        let ln = LayerNorm::new(4, 1e-5, vb)?;
        let x = Var::from_vec(vec![1f32, 2., 4., -1., 0.5, 0.25, -3., 8.], (2, 4), &dev)?;
        let w = Tensor::new(&[[0.3f32, -1., 2., 0.7], [1., 1., -0.5, 0.2]], &dev)?;
        let out = ln.forward(x.as_tensor())?;
        let loss = out.mul(&w)?.sum_all()?;
        let g = loss
            .backward()?
            .get(x.as_tensor())
            .expect("gradient")
            .to_vec2::<f32>()?;
        let base = x.as_tensor().to_vec2::<f32>()?;
        let f = |v: &Vec<Vec<f32>>| -> Result<f32> {
            ln.forward(&Tensor::new(v.clone(), &dev)?)?
                .mul(&w)?
                .sum_all()?
                .to_scalar::<f32>()
        };
        let mut nonzero = 0;
        for r in 0..2 {
            for c in 0..4 {
                let (mut p, mut m) = (base.clone(), base.clone());
                p[r][c] += 1e-2;
                m[r][c] -= 1e-2;
                let fd = (f(&p)? - f(&m)?) / 2e-2;
                assert!(
                    (fd - g[r][c]).abs() < 2e-3,
                    "({r},{c}) fd {fd} vs {}",
                    g[r][c]
                );
                nonzero += (g[r][c].abs() > 1e-4) as usize;
            }
        }
        assert!(nonzero >= 6, "gradient vanished");
        // Row 0 normalised by hand.
        let row: Vec<f32> = out.to_vec2::<f32>()?[0].clone();
        let (mean, var) = (1.5f32, ((0.25 + 0.25 + 6.25 + 6.25) / 4.0f32));
        let expect0 = (1.0 - mean) / (var + 1e-5).sqrt() * 1.5 + 0.1;
        assert!((row[0] - expect0).abs() < 1e-5);
        Ok(())
    }
}
