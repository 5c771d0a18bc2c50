//! The input gradient of GroupNorm and LayerNorm as one autograd node.
//!
//! Written with elementary ops, a normalisation keeps about six full-size intermediates in the
//! autograd graph (centred values, squares, variance, quotient, scaled, shifted) until the
//! backward pass; across a UNet at 512² that is gigabytes. This node keeps only its input and
//! recomputes the statistics in the backward, as PyTorch's kernels do:
//! `∂L/∂x = (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂)) / σ` per normalised group, with `ĝ = γ · ∂L/∂y`.
//! A SiLU right after the normalisation can be part of the same node (`ĝ` then carries its
//! derivative), so that the activation adds no node of its own. f32 CPU tensors take the
//! one-kernel form of [`super::norm_backward_cpu`], everything else the tensor ops below.

use candle_core::{D, DType, Result, Shape, Tensor};

use super::fused_cpu::{GroupNormOp, LayerNormOp};
use super::matmul_cpu::{self, f32_on_cpu};
use super::norm_backward_cpu::{self, NormParams, RowAffine};
use super::precomputed::{CpuKernel, InputGradient, attach};

/// Which elements are normalised together.
#[derive(Debug, Clone, Copy)]
pub enum NormAxes {
    /// GroupNorm over `[B, C, …]`: `groups` groups of channels, all positions.
    Groups(usize),
    /// LayerNorm over the last dimension.
    LastDim,
}

/// A normalisation's frozen parameters, enough for its input gradient.
#[derive(Debug, Clone)]
pub struct NormGradient {
    /// Which axes are normalised.
    pub axes: NormAxes,
    /// γ: per channel (groups) or per last-dim element (layer norm).
    pub weight: Tensor,
    /// The epsilon added to the variance.
    pub eps: f64,
    /// β when a SiLU follows the normalisation in this node (`y = SiLU(γ x̂ + β)`).
    pub silu_bias: Option<Tensor>,
}

impl NormGradient {
    /// `output` (computed from `x` without a graph) attached to `x`'s autograd graph.
    pub fn attach(&self, x: &Tensor, output: Tensor) -> Result<Tensor> {
        attach(x, output, self.clone())
    }

    /// `[rows, n]`: one row per normalised group.
    fn rows(&self, shape: &Shape) -> Result<(usize, usize)> {
        let count = shape.elem_count();
        let rows = match self.axes {
            NormAxes::Groups(groups) => shape.dims().first().copied().unwrap_or(1) * groups,
            NormAxes::LastDim => count / shape.dims().last().copied().unwrap_or(1).max(1),
        };
        if rows == 0 || !count.is_multiple_of(rows) {
            candle_core::bail!("normalisation: shape {shape:?} does not split into groups");
        }
        Ok((rows, count / rows))
    }

    /// A per-channel (groups) or per-element (layer norm) parameter shaped to broadcast
    /// against the input.
    fn broadcastable(&self, param: &Tensor, x: &Tensor) -> Result<Tensor> {
        match self.axes {
            NormAxes::Groups(_) => {
                let mut dims = vec![1; x.rank()];
                dims[1] = x.dim(1)?;
                param.reshape(dims)
            }
            NormAxes::LastDim => Ok(param.clone()),
        }
    }

    /// ∂L/∂y scaled by SiLU′ at the pre-activation `γ x̂ + β`, or `grad` without a SiLU.
    fn through_silu(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let Some(bias) = &self.silu_bias else {
            return Ok(grad.clone());
        };
        let rows = self.rows(x.shape())?;
        let xf = x.to_dtype(DType::F32)?.reshape(rows)?;
        let centred = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let to_f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let y = normed
            .reshape(x.shape())?
            .broadcast_mul(&to_f32(&self.broadcastable(&self.weight, x)?)?)?
            .broadcast_add(&to_f32(&self.broadcastable(bias, x)?)?)?;
        let sigmoid = candle_nn::ops::sigmoid(&y)?;
        let slope = ((y * (1.0 - &sigmoid)?)? + 1.0)?;
        (to_f32(grad)? * (sigmoid * slope)?)?.to_dtype(grad.dtype())
    }

    /// The one-kernel gradient of f32 CPU tensors; `None` elsewhere.
    fn cpu_gradient(&self, x: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !f32_on_cpu(x) || !f32_on_cpu(grad) || x.shape() != grad.shape() {
            return Ok(None);
        }
        let (rows, row_len) = self.rows(x.shape())?;
        let affine = match self.axes {
            NormAxes::Groups(groups) => {
                let channels = x.dim(1)?;
                let channels_per_group = channels / groups;
                RowAffine::PerChannel {
                    groups,
                    channels_per_group,
                    channel_len: row_len / channels_per_group.max(1),
                }
            }
            NormAxes::LastDim => RowAffine::PerElement,
        };
        let weight = self.weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bias = match &self.silu_bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let gradient = {
            let (x_storage, x_layout) = x.storage_and_layout();
            let (g_storage, g_layout) = grad.storage_and_layout();
            let (Some(xs), Some(gs)) = (
                matmul_cpu::f32_values(&x_storage, x_layout),
                matmul_cpu::f32_values(&g_storage, g_layout),
            ) else {
                return Ok(None);
            };
            let params = NormParams {
                affine,
                weight: &weight,
                silu_bias: bias.as_deref(),
                eps: self.eps,
            };
            norm_backward_cpu::input_gradient(xs, gs, rows, &params)
        };
        Tensor::from_vec(gradient, x.shape(), x.device()).map(Some)
    }
}

impl InputGradient for NormGradient {
    const NAME: &'static str = "normalisation";

    fn input_gradient(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        match self.cpu_gradient(x, grad)? {
            Some(gradient) => Ok(gradient),
            None => self.tensor_gradient(x, grad),
        }
    }
}

/// A normalisation's CPU forward kernel with its gradient: as a graph node it computes
/// straight into its own output, so nothing is handed over by a copy.
#[derive(Debug, Clone)]
pub(crate) struct NormKernel {
    pub gradient: NormGradient,
    pub forward: NormForward,
}

/// The forward kernel of a [`NormKernel`].
#[derive(Debug, Clone)]
pub(crate) enum NormForward {
    Groups(GroupNormOp),
    LastDim(LayerNormOp),
}

impl InputGradient for NormKernel {
    const NAME: &'static str = NormGradient::NAME;

    fn input_gradient(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        self.gradient.input_gradient(x, grad)
    }
}

impl CpuKernel for NormKernel {
    fn cpu_kernel(&self, x: &[f32], dims: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let out = match &self.forward {
            NormForward::Groups(op) => op.forward_f32(x, dims)?,
            NormForward::LastDim(op) => op.forward_f32(x, dims)?,
        };
        Ok((out, dims.to_vec()))
    }
}

impl NormGradient {
    /// The gradient with tensor ops (every device and type).
    fn tensor_gradient(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let to_f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let rows = self.rows(x.shape())?;
        let grad = self.through_silu(x, grad)?;
        let scaled_grad = grad.broadcast_mul(&self.broadcastable(&self.weight, x)?)?;
        let g = to_f32(&scaled_grad)?.reshape(rows)?;
        let x = to_f32(x)?.reshape(rows)?;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let inv_std = (centred.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let normed = centred.broadcast_mul(&inv_std)?;
        let g_mean = g.mean_keepdim(D::Minus1)?;
        let proj = (&g * &normed)?.mean_keepdim(D::Minus1)?;
        let dx = g
            .broadcast_sub(&g_mean)?
            .sub(&normed.broadcast_mul(&proj)?)?
            .broadcast_mul(&inv_std)?;
        dx.reshape(grad.shape())?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::finite_differences::central_differences;
    use candle_core::{Device, Module, Var};

    /// The elementary-op forms, differentiated by candle's autograd.
    fn elementary_group_norm(x: &Tensor, groups: usize, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        candle_nn::GroupNorm::new(w.clone(), b.clone(), x.dim(1)?, groups, 1e-5)?.forward(x)
    }

    fn elementary_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(w)?
            .broadcast_add(b)
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        let scale = a.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(diff / scale.max(1e-12))
    }

    #[test]
    fn group_norm_gradient_matches_autograd_of_the_elementary_form() -> Result<()> {
        let dev = Device::Cpu;
        let (c, groups) = (6, 3);
        let w = Tensor::randn(1f32, 0.3, c, &dev)?;
        let b = Tensor::randn(0f32, 0.3, c, &dev)?;
        let x = Var::from_tensor(&(Tensor::randn(0.5f32, 2.0, (2, c, 5, 4), &dev)?))?;
        let upstream = Tensor::randn(0f32, 1., (2, c, 5, 4), &dev)?;
        let reference = elementary_group_norm(x.as_tensor(), groups, &w, &b)?;
        let want = reference.mul(&upstream)?.sum_all()?.backward()?;
        let spec = NormGradient {
            axes: NormAxes::Groups(groups),
            weight: w.clone(),
            eps: 1e-5,
            silu_bias: None,
        };
        let tracked = spec.attach(x.as_tensor(), reference.detach())?;
        let got = tracked.mul(&upstream)?.sum_all()?.backward()?;
        let (want, got) = (want.get(x.as_tensor()), got.get(x.as_tensor()));
        let err = max_rel_diff(want.expect("autograd"), got.expect("node"))?;
        assert!(err < 1e-5, "relative error {err}");
        Ok(())
    }

    #[test]
    fn layer_norm_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::new(&[1.5f64, 0.5, -1.0, 2.0, 0.7], &dev)?;
        let b = Tensor::new(&[0.1f64, 0.0, -0.2, 0.3, 0.0], &dev)?;
        let x0 = Tensor::randn(0f64, 1.5, (3, 5), &dev)?;
        let upstream = Tensor::randn(0f64, 1., (3, 5), &dev)?;
        let spec = NormGradient {
            axes: NormAxes::LastDim,
            weight: w.clone(),
            eps: 1e-5,
            silu_bias: None,
        };
        let grad = spec
            .input_gradient(&x0, &upstream)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let loss = |x: &Tensor| -> Result<f64> {
            elementary_layer_norm(x, &w, &b)?
                .mul(&upstream)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let numeric = central_differences(&x0, 1e-6, loss)?;
        for (i, (g, fd)) in grad.iter().zip(numeric).enumerate() {
            assert!(
                (fd - g).abs() < 1e-6 * (1.0 + g.abs()),
                "[{i}] fd {fd} vs {g}"
            );
        }
        Ok(())
    }

    /// The one-kernel CPU gradient equals the tensor-op form: group norms whose channels
    /// span several of the kernel's blocks and end in a partial lane group, layer norms of
    /// odd width, each with and without a SiLU folded in, at batch 2.
    #[test]
    fn cpu_kernel_agrees_with_the_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        let cases = [
            (NormAxes::Groups(3), vec![2, 6, 41, 29], 6),
            (NormAxes::Groups(2), vec![2, 4, 3, 5], 4),
            (NormAxes::LastDim, vec![2, 7, 37], 37),
        ];
        for (axes, dims, params) in cases {
            for silu in [false, true] {
                let spec = NormGradient {
                    axes,
                    weight: Tensor::randn(1f32, 0.5, params, &dev)?,
                    eps: 1e-5,
                    silu_bias: silu
                        .then(|| Tensor::randn(0f32, 0.5, params, &dev))
                        .transpose()?,
                };
                let x = Tensor::randn(0.3f32, 1.7, dims.as_slice(), &dev)?;
                let grad = Tensor::randn(0f32, 1., dims.as_slice(), &dev)?;
                let kernel = spec
                    .cpu_gradient(&x, &grad)?
                    .expect("the CPU kernel applies");
                let tensor_ops = spec.tensor_gradient(&x, &grad)?;
                let err = max_rel_diff(&tensor_ops, &kernel)?;
                assert!(
                    err < 2e-6,
                    "{axes:?} {dims:?} silu {silu}: relative error {err}"
                );
            }
        }
        Ok(())
    }

    /// A GroupNorm with its SiLU in the same node: the gradient against finite differences
    /// of the elementary group norm followed by SiLU (f64, the tensor-op form).
    #[test]
    fn group_norm_with_silu_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (c, groups, dims) = (4, 2, (1, 4, 3, 2));
        let w = Tensor::new(&[1.5f64, 0.5, -1.0, 2.0], &dev)?;
        let b = Tensor::new(&[0.1f64, -0.4, 0.2, 0.3], &dev)?;
        let x0 = Tensor::randn(0f64, 1.5, dims, &dev)?;
        let upstream = Tensor::randn(0f64, 1., dims, &dev)?;
        let spec = NormGradient {
            axes: NormAxes::Groups(groups),
            weight: w.clone(),
            eps: 1e-5,
            silu_bias: Some(b.clone()),
        };
        let grad = spec
            .input_gradient(&x0, &upstream)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let loss = |x: &Tensor| -> Result<f64> {
            let gn = candle_nn::GroupNorm::new(w.clone(), b.clone(), c, groups, 1e-5)?;
            gn.forward(x)?
                .silu()?
                .mul(&upstream)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let numeric = central_differences(&x0, 1e-6, loss)?;
        for (i, (g, fd)) in grad.iter().zip(numeric).enumerate() {
            assert!(
                (fd - g).abs() < 1e-5 * (1.0 + g.abs()),
                "[{i}] fd {fd} vs {g}"
            );
        }
        Ok(())
    }

    /// The layer end to end on a tracked f32 CPU input: `GroupNorm::forward_then` with SiLU
    /// (the fused forward and the kernel's backward) against candle's autograd of the
    /// elementary group norm and SiLU.
    #[test]
    fn tracked_group_norm_with_silu_matches_autograd() -> Result<()> {
        let dev = Device::Cpu;
        let (c, groups) = (8, 4);
        let w = Tensor::randn(1f32, 0.3, c, &dev)?;
        let b = Tensor::randn(0f32, 0.3, c, &dev)?;
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (2, c, 6, 5), &dev)?)?;
        let upstream = Tensor::randn(0f32, 1., (2, c, 6, 5), &dev)?;
        let layer = super::super::GroupNorm::new(w.clone(), b.clone(), groups, 1e-5)?;
        let silu = Some(super::super::blocks::Activation::Silu);
        let got = layer.forward_then(x.as_tensor(), silu)?;
        let want = elementary_group_norm(x.as_tensor(), groups, &w, &b)?.silu()?;
        assert!(max_rel_diff(&want, &got)? < 1e-5);
        let got = got.mul(&upstream)?.sum_all()?.backward()?;
        let want = want.mul(&upstream)?.sum_all()?.backward()?;
        let (want, got) = (want.get(x.as_tensor()), got.get(x.as_tensor()));
        let err = max_rel_diff(want.expect("autograd"), got.expect("node"))?;
        assert!(err < 1e-5, "relative error {err}");
        Ok(())
    }
}
