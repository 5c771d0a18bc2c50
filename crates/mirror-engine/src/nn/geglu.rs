//! GEGLU, `value · GELU(gate)` of the two halves of the feed-forward projection, as one graph
//! node on a gradient pass. candle's elementary form costs its backward about two dozen
//! tensor-sized buffers per layer (each half's `narrow` pads its gradient with zeros, GELU's
//! derivative is eight more operations); this node writes the input gradient in one pass.
//! On f32 CPU tensors the forward is one pass too, with GELU through the vectorised `erf` of
//! [`super::fast_exp`] (PyTorch's own CPU approximation); elsewhere it is the elementary form.

use std::f32::consts::FRAC_1_SQRT_2;

use candle_core::{D, DType, Result, Tensor};
use rayon::prelude::*;

use super::fast_exp;
use super::fused_cpu::run_serially;
use super::matmul_cpu::{f32_on_cpu, f32_values};
use super::precomputed::{CpuKernel, InputGradient, apply_cpu_kernel, attach};

/// 1/√(2π), the standard normal density at 0.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `h[…, :n] · GELU_erf(h[…, n:])` for an `h` whose last dimension is `2n` (diffusers'
/// `GEGLU`: `hidden, gate = proj(x).chunk(2, -1)`).
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    let _stage = super::profile::stage(|| "geglu forward".into());
    let inner = h.dim(D::Minus1)? / 2;
    let gradient = GegluGradient { inner };
    if f32_on_cpu(h) && inner > 0 {
        return apply_cpu_kernel(h, &gradient);
    }
    if !h.track_op() {
        return elementary(h, inner);
    }
    attach(h, elementary(&h.detach(), inner)?, gradient)
}

/// One row's loops, at the CPU's widest vector width.
mod rows {
    use super::super::simd::dispatch;
    use super::{FRAC_1_SQRT_2, INV_SQRT_2PI, fast_exp};

    /// `out = value · x·Φ(x)` with x the gate, Φ through the vectorised `erf`.
    #[inline(always)]
    fn forward_impl(out: &mut [f32], value: &[f32], gate: &[f32]) {
        for ((o, &v), &x) in out.iter_mut().zip(value).zip(gate) {
            *o = v * (0.5 * x * (1.0 + fast_exp::erf(x * FRAC_1_SQRT_2)));
        }
    }

    /// `d_value = g · x·Φ(x)`, `d_gate = g · value · (Φ(x) + x·φ(x))`.
    #[inline(always)]
    fn gradient_impl(
        d_value: &mut [f32],
        d_gate: &mut [f32],
        g: &[f32],
        value: &[f32],
        gate: &[f32],
    ) {
        let outputs = d_value.iter_mut().zip(d_gate.iter_mut());
        let inputs = g.iter().zip(value).zip(gate);
        for ((d_value, d_gate), ((&g, &value), &x)) in outputs.zip(inputs) {
            let cdf = (fast_exp::erf(x * FRAC_1_SQRT_2) + 1.0) * 0.5;
            let pdf = fast_exp::exp(-0.5 * x * x) * INV_SQRT_2PI as f32;
            *d_value = g * (x * cdf);
            *d_gate = g * value * (cdf + x * pdf);
        }
    }

    dispatch!(forward, forward_impl, (out: &mut [f32], value: &[f32], gate: &[f32]));
    dispatch!(gradient, gradient_impl, (d_value: &mut [f32], d_gate: &mut [f32], g: &[f32], value: &[f32], gate: &[f32]));
}

/// The forward of f32 CPU values in one pass, row by row (as a graph node, straight into
/// its output).
impl CpuKernel for GegluGradient {
    fn cpu_kernel(&self, hs: &[f32], dims: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let inner = self.inner;
        if inner == 0 || dims.last() != Some(&(2 * inner)) {
            candle_core::bail!("geglu: input {dims:?} for halves of {inner}");
        }
        let mut out = vec![0f32; hs.len() / 2];
        let row = |(out, h): (&mut [f32], &[f32])| {
            let (value, gate) = h.split_at(inner);
            rows::forward(out, value, gate);
        };
        if run_serially(hs.len()) {
            out.chunks_mut(inner)
                .zip(hs.chunks(2 * inner))
                .for_each(row);
        } else {
            out.par_chunks_mut(inner)
                .zip(hs.par_chunks(2 * inner))
                .for_each(row);
        }
        Ok((out, super::with_last_dim(dims, inner)))
    }
}

fn elementary(h: &Tensor, inner: usize) -> Result<Tensor> {
    let value = h.narrow(D::Minus1, 0, inner)?;
    let gate = h.narrow(D::Minus1, inner, inner)?;
    value * gate.gelu_erf()?
}

/// ∂/∂h of GEGLU: `[g · GELU(gate), g · value · GELU′(gate)]` with
/// `GELU′(x) = Φ(x) + x · φ(x)`.
#[derive(Clone)]
struct GegluGradient {
    inner: usize,
}

impl InputGradient for GegluGradient {
    const NAME: &'static str = "geglu";

    fn input_gradient(&self, h: &Tensor, grad: &Tensor) -> Result<Tensor> {
        if f32_on_cpu(h) && grad.dtype() == DType::F32 {
            cpu_gradient(h, grad, self.inner)
        } else {
            tensor_gradient(h, grad, self.inner)
        }
    }
}

/// The gradient with tensor operations (every device and type).
fn tensor_gradient(h: &Tensor, grad: &Tensor, inner: usize) -> Result<Tensor> {
    let value = h.narrow(D::Minus1, 0, inner)?;
    let gate = h.narrow(D::Minus1, inner, inner)?;
    let cdf = (((&gate * f64::from(FRAC_1_SQRT_2))?.erf()? + 1.0)? * 0.5)?;
    let pdf = ((gate.sqr()? * -0.5)?.exp()? * INV_SQRT_2PI)?;
    let gelu = (&gate * &cdf)?;
    let slope = (cdf + (&gate * pdf)?)?;
    let d_value = (grad * gelu)?;
    let d_gate = ((grad * value)? * slope)?;
    Tensor::cat(&[d_value, d_gate], D::Minus1)
}

/// The gradient of an f32 CPU tensor in one pass, row by row.
fn cpu_gradient(h: &Tensor, grad: &Tensor, inner: usize) -> Result<Tensor> {
    let (h, grad) = (h.contiguous()?, grad.contiguous()?);
    let (h_storage, h_layout) = h.storage_and_layout();
    let (g_storage, g_layout) = grad.storage_and_layout();
    let (Some(hs), Some(gs)) = (
        f32_values(&h_storage, h_layout),
        f32_values(&g_storage, g_layout),
    ) else {
        candle_core::bail!("geglu: CPU gradient called with a tensor not f32 on the CPU");
    };
    if inner == 0 || hs.len() != 2 * gs.len() {
        candle_core::bail!("geglu: gradient {:?} for input {:?}", grad.dims(), h.dims());
    }
    let mut out = vec![0f32; hs.len()];
    let row = |(out, (h, g)): (&mut [f32], (&[f32], &[f32]))| {
        let (d_value, d_gate) = out.split_at_mut(inner);
        let (value, gate) = h.split_at(inner);
        rows::gradient(d_value, d_gate, g, value, gate);
    };
    let rows = out
        .chunks_mut(2 * inner)
        .zip(hs.chunks(2 * inner).zip(gs.chunks(inner)));
    if run_serially(hs.len()) {
        rows.for_each(row);
    } else {
        out.par_chunks_mut(2 * inner)
            .zip(hs.par_chunks(2 * inner).zip(gs.par_chunks(inner)))
            .for_each(row);
    }
    Tensor::from_vec(out, h.shape(), h.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (rows, inner) = (3, 4);
        let h0 = Tensor::randn(0f64, 1.5, (rows, 2 * inner), &dev)?;
        let upstream = Tensor::randn(0f64, 1., (rows, inner), &dev)?;
        let grad = GegluGradient { inner }
            .input_gradient(&h0, &upstream)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let loss = |h: &Tensor| -> Result<f64> {
            elementary(h, inner)?
                .mul(&upstream)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let base = h0.flatten_all()?.to_vec1::<f64>()?;
        for (i, g) in grad.iter().enumerate() {
            let bumped = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += d;
                loss(&Tensor::from_vec(v, (rows, 2 * inner), &dev)?)
            };
            let fd = (bumped(1e-6)? - bumped(-1e-6)?) / 2e-6;
            assert!(
                (fd - g).abs() < 1e-6 * (1.0 + g.abs()),
                "[{i}] fd {fd} vs {g}"
            );
        }
        Ok(())
    }

    /// The f32 CPU passes, serial and parallel, agree with candle's autograd of the
    /// elementary form (exact erf). The forward differs from it by the vectorised erf's
    /// error only: |v| · |x|/2 · 5·10⁻⁷ per element, plus rounding.
    #[test]
    fn cpu_passes_agree_with_autograd() -> Result<()> {
        let dev = Device::Cpu;
        for (rows, inner) in [(5, 3), (64, 1024)] {
            let h = Var::from_tensor(&Tensor::randn(0f32, 1.5, (1, rows, 2 * inner), &dev)?)?;
            let upstream = Tensor::randn(0f32, 1., (1, rows, inner), &dev)?;
            let reference = elementary(h.as_tensor(), inner)?;
            let want = reference.mul(&upstream)?.sum_all()?.backward()?;
            let fused = geglu(h.as_tensor())?;
            let (value, gate) = (
                h.narrow(D::Minus1, 0, inner)?,
                h.narrow(D::Minus1, inner, inner)?,
            );
            let bound = (value * gate)?.abs()?.max_all()?.to_scalar::<f32>()? * 3e-7;
            let diff = (&fused - &reference)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff <= bound, "forward differs by {diff} (bound {bound})");
            let got = fused.mul(&upstream)?.sum_all()?.backward()?;
            let (want, got) = (
                want.get(h.as_tensor()).expect("autograd"),
                got.get(h.as_tensor()).expect("node"),
            );
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff <= 2e-6 * scale, "{rows}×{inner}: {diff} of {scale}");
        }
        Ok(())
    }
}
