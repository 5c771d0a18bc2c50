//! The input gradient of GroupNorm and LayerNorm as one autograd node.
//!
//! Written with elementary ops, a normalisation keeps about six full-size intermediates in the
//! autograd graph (centred values, squares, variance, quotient, scaled, shifted) until the
//! backward pass; across a UNet at 512² that is gigabytes. This node keeps only its input and
//! recomputes the statistics in the backward, as PyTorch's kernels do:
//! `∂L/∂x = (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂)) / σ` per normalised group, with `ĝ = γ · ∂L/∂y`.

use candle_core::{D, DType, Result, Shape, Tensor};

use super::precomputed::{InputGradient, attach};

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

    /// γ shaped to broadcast against the input.
    fn weight_for(&self, x: &Tensor) -> Result<Tensor> {
        match self.axes {
            NormAxes::Groups(_) => {
                let mut dims = vec![1; x.rank()];
                dims[1] = x.dim(1)?;
                self.weight.reshape(dims)
            }
            NormAxes::LastDim => Ok(self.weight.clone()),
        }
    }
}

impl InputGradient for NormGradient {
    const NAME: &'static str = "normalisation";

    fn input_gradient(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let to_f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let rows = self.rows(x.shape())?;
        let scaled_grad = grad.broadcast_mul(&self.weight_for(x)?)?;
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
        let base = x0.flatten_all()?.to_vec1::<f64>()?;
        for (i, g) in grad.iter().enumerate() {
            let bumped = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += d;
                loss(&Tensor::from_vec(v, (3, 5), &dev)?)
            };
            let fd = (bumped(1e-6)? - bumped(-1e-6)?) / 2e-6;
            assert!(
                (fd - g).abs() < 1e-6 * (1.0 + g.abs()),
                "[{i}] fd {fd} vs {g}"
            );
        }
        Ok(())
    }
}
