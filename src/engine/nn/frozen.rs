//! Linear and 2-D convolution layers with frozen weights.
//!
//! candle's backward pass computes a gradient for every argument of a matmul or convolution,
//! weights included, even when nothing asks for it, and it takes a convolution's input
//! gradient through `conv_transpose2d`, whose CPU kernel is a naive loop. Mirror never trains
//! weights, so on gradient passes these layers run as custom ops whose backward computes the
//! input gradient only, with a regular (fast) convolution. Without a gradient they are the
//! plain candle ops.

#[cfg(any(feature = "cuda", feature = "metal"))]
use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Storage, Tensor};
use candle_nn::VarBuilder;

use super::conv_cpu;

/// Runs `f` on a tensor made from an op's input storage and returns the result's storage.
fn run_on_storage(
    storage: Storage,
    layout: &Layout,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<(Storage, Shape)> {
    if !layout.is_contiguous() || layout.start_offset() != 0 {
        candle_core::bail!("frozen layer: input must be contiguous from offset 0");
    }
    let x = Tensor::from_storage(storage, layout.shape().clone(), BackpropOp::none(), false);
    let y = f(&x)?.contiguous()?;
    let (s, l) = y.storage_and_layout();
    let out = if l.start_offset() == 0 {
        s.try_clone(l)?
    } else {
        drop(s);
        let y = y.copy()?;
        let (s, l) = y.storage_and_layout();
        s.try_clone(l)?
    };
    Ok((out, y.shape().clone()))
}

/// Inputs of the custom ops must start at offset 0 of a contiguous buffer.
fn prepared(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() && x.layout().start_offset() == 0 {
        Ok(x.clone())
    } else {
        x.copy()
    }
}

macro_rules! storage_forwards {
    () => {
        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            match run_on_storage(Storage::Cpu(s.clone()), l, |x| self.apply(x))? {
                (Storage::Cpu(s), shape) => Ok((s, shape)),
                _ => candle_core::bail!("frozen layer: device changed"),
            }
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            s: &candle_core::CudaStorage,
            l: &Layout,
        ) -> Result<(candle_core::CudaStorage, Shape)> {
            match run_on_storage(Storage::Cuda(s.try_clone(l)?), l, |x| self.apply(x))? {
                (Storage::Cuda(s), shape) => Ok((s, shape)),
                _ => candle_core::bail!("frozen layer: device changed"),
            }
        }

        #[cfg(feature = "metal")]
        fn metal_fwd(
            &self,
            s: &candle_core::MetalStorage,
            l: &Layout,
        ) -> Result<(candle_core::MetalStorage, Shape)> {
            match run_on_storage(Storage::Metal(s.try_clone(l)?), l, |x| self.apply(x))? {
                (Storage::Metal(s), shape) => Ok((s, shape)),
                _ => candle_core::bail!("frozen layer: device changed"),
            }
        }
    };
}

/// `y = x Wᵀ + b` with W, b constant.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.t()?;
        let y = match x.rank() {
            2 => x.matmul(&w)?,
            _ => x.broadcast_matmul(&w)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

impl CustomOp1 for Linear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    storage_forwards!();

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = match grad.rank() {
            2 => grad.matmul(&self.weight)?,
            _ => grad.broadcast_matmul(&self.weight)?,
        };
        Ok(Some(g))
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() {
            prepared(x)?.apply_op1(self.clone())
        } else {
            self.apply(x)
        }
    }
}

pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}

pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    Ok(Linear::new(weight, None))
}

/// 2-D convolution (groups 1, dilation 1) with a constant kernel and optional bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    /// The kernel as the im2col product wants it (CPU, kernels larger than 1×1).
    matrix: Option<Tensor>,
    /// The kernel as the shifted-product convolution wants it (CPU, stride 1).
    taps: Option<Tensor>,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, padding: usize, stride: usize) -> Self {
        let (_, _, kh, kw) = weight.dims4().unwrap_or((0, 0, 1, 1));
        let on_cpu = weight.device().is_cpu();
        let matrix = if on_cpu && kh * kw > 1 && stride > 1 {
            kernel_matrix(&weight).ok()
        } else {
            None
        };
        let taps = if on_cpu && stride == 1 && conv_cpu::supports(weight.dtype()) {
            conv_cpu::tap_matrices(&weight).ok()
        } else {
            None
        };
        Self {
            weight,
            matrix,
            taps,
            bias,
            padding,
            stride,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(taps) = &self.taps
            && x.device().is_cpu()
            && conv_cpu::supports(x.dtype())
        {
            let prep = conv_cpu::InputPrep {
                padding: self.padding,
                upsample_x2: false,
            };
            return conv_cpu::conv2d_stride1(x, taps, self.bias.as_ref(), prep);
        }
        let y = match &self.matrix {
            Some(m) if x.device().is_cpu() => {
                let (_, _, kh, kw) = self.weight.dims4()?;
                conv2d_im2col(x, m, (kh, kw), self.padding, self.stride)?
            }
            _ => conv2d_gemm(x, &self.weight, self.padding, self.stride)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }

    /// The convolution of `x` upsampled ×2 (nearest), without the upsampled tensor, when no
    /// gradient can flow and the CPU path applies; `None` otherwise.
    pub fn forward_upsampled_x2(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(taps) = &self.taps else {
            return Ok(None);
        };
        if x.track_op() || !x.device().is_cpu() || !conv_cpu::supports(x.dtype()) {
            return Ok(None);
        }
        let prep = conv_cpu::InputPrep {
            padding: self.padding,
            upsample_x2: true,
        };
        conv_cpu::conv2d_stride1(x, taps, self.bias.as_ref(), prep).map(Some)
    }

    /// ∂L/∂x from ∂L/∂y: a stride-1 convolution of the zero-dilated gradient with the
    /// spatially flipped, channel-transposed kernel.
    fn input_gradient(&self, grad: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        let (_, _, kh, kw) = self.weight.dims4()?;
        let (b, c, gh, gw) = grad.dims4()?;
        let s = self.stride;
        let grad = if s > 1 {
            // Insert s − 1 zeros between gradient entries.
            grad.reshape((b, c, gh, 1, gw, 1))?
                .pad_with_zeros(3, 0, s - 1)?
                .pad_with_zeros(5, 0, s - 1)?
                .reshape((b, c, gh * s, gw * s))?
                .narrow(2, 0, (gh - 1) * s + 1)?
                .narrow(3, 0, (gw - 1) * s + 1)?
        } else {
            grad.clone()
        };
        let flipped = self.weight.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
        let (ih, iw) = input_hw;
        let (dh, dw) = (grad.dim(2)?, grad.dim(3)?);
        let (ph, pw) = (kh - 1 - self.padding, kw - 1 - self.padding);
        // Rows/columns of the input no output position reached (stride remainder).
        let extra_h = ih + kh - 1 - dh - 2 * ph;
        let extra_w = iw + kw - 1 - dw - 2 * pw;
        let grad = grad
            .pad_with_zeros(2, ph, ph + extra_h)?
            .pad_with_zeros(3, pw, pw + extra_w)?;
        conv2d_gemm(&grad, &flipped, 0, 1)
    }
}

impl CustomOp1 for Conv2d {
    fn name(&self) -> &'static str {
        "frozen-conv2d"
    }

    storage_forwards!();

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        Ok(Some(self.input_gradient(grad, (h, w))?))
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() {
            prepared(x)?.apply_op1(self.clone())
        } else {
            self.apply(x)
        }
    }
}

/// Convolution on the CPU through the optimised GEMM, which beats candle's tiled kernel
/// several times over: stride 1 as k² shifted products (`conv_cpu`), larger strides as
/// explicit im2col (k² shifted views of the padded input, stacked along a new leading axis:
/// a plain memory copy) and one matrix product with the kernel reordered to
/// `[C_out, (ky, kx, C_in)]`. Elsewhere candle's own convolution is used.
pub fn conv2d_gemm(x: &Tensor, weight: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (_, _, kh, kw) = weight.dims4()?;
    if !x.device().is_cpu() {
        return x.conv2d(weight, padding, stride, 1, 1);
    }
    if stride == 1 && conv_cpu::supports(x.dtype()) && x.dtype() == weight.dtype() {
        let prep = conv_cpu::InputPrep {
            padding,
            upsample_x2: false,
        };
        return conv_cpu::conv2d_stride1(x, &conv_cpu::tap_matrices(weight)?, None, prep);
    }
    if kh == 1 && kw == 1 && stride == 1 && padding == 0 {
        return x.conv2d(weight, padding, stride, 1, 1);
    }
    conv2d_im2col(x, &kernel_matrix(weight)?, (kh, kw), padding, stride)
}

/// `[C_out, C_in, kh, kw]` → `[C_out, kh·kw·C_in]`, the column order of [`conv2d_im2col`].
fn kernel_matrix(weight: &Tensor) -> Result<Tensor> {
    let (c_out, c_in, kh, kw) = weight.dims4()?;
    weight
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((c_out, kh * kw * c_in))
}

fn conv2d_im2col(
    x: &Tensor,
    matrix: &Tensor,
    (kh, kw): (usize, usize),
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let c_out = matrix.dim(0)?;
    if matrix.dim(1)? != kh * kw * c {
        candle_core::bail!(
            "conv2d: input has {c} channels, kernel expects {}",
            matrix.dim(1)? / (kh * kw)
        );
    }
    let x = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
    } else {
        x.clone()
    };
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if hp < kh || wp < kw {
        candle_core::bail!("conv2d: input {h}x{w} smaller than kernel {kh}x{kw}");
    }
    let (ho, wo) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
    let mut outputs = Vec::with_capacity(b);
    for n in 0..b {
        let sample = x.narrow(0, n, 1)?.squeeze(0)?;
        let mut columns = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            for kx in 0..kw {
                let view = sample.narrow(1, ky, (ho - 1) * stride + 1)?.narrow(
                    2,
                    kx,
                    (wo - 1) * stride + 1,
                )?;
                let view = if stride > 1 {
                    // Every stride-th row and column: pad to a multiple, fold, keep index 0.
                    let (vh, vw) = (view.dim(1)?, view.dim(2)?);
                    view.pad_with_zeros(1, 0, ho * stride - vh)?
                        .pad_with_zeros(2, 0, wo * stride - vw)?
                        .reshape((c, ho, stride, wo, stride))?
                        .narrow(2, 0, 1)?
                        .narrow(4, 0, 1)?
                        .reshape((c, ho, wo))?
                } else {
                    view
                };
                columns.push(view);
            }
        }
        // [k², C, Ho, Wo] is contiguous after the stack: [k²·C, Ho·Wo] for free.
        let cols = Tensor::stack(&columns, 0)?.reshape((kh * kw * c, ho * wo))?;
        outputs.push(matrix.matmul(&cols)?.reshape((1, c_out, ho, wo))?);
    }
    Tensor::cat(&outputs, 0)
}

/// A `kernel`×`kernel` convolution loaded from `weight` / `bias`.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    padding: usize,
    stride: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
    let bias = vb.get(out_channels, "bias")?;
    Ok(Conv2d::new(weight, Some(bias), padding, stride))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn finite_difference_check(
        layer: &dyn Module,
        shape: (usize, usize, usize, usize),
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1., shape, &dev)?;
        let weights = Tensor::randn(0f32, 1., layer.forward(&x0)?.shape(), &dev)?;
        let loss = |x: &Tensor| -> Result<Tensor> { layer.forward(x)?.mul(&weights)?.sum_all() };
        let var = Var::from_tensor(&x0)?;
        let g = loss(var.as_tensor())?
            .backward()?
            .get(var.as_tensor())
            .expect("grad")
            .clone();
        // Same gradient as candle's own ops give (weights not tracked either way).
        let flat = x0.flatten_all()?.to_vec1::<f32>()?;
        let gflat = g.flatten_all()?.to_vec1::<f32>()?;
        let mut nonzero = 0;
        for idx in (0..flat.len()).step_by(7) {
            let bump = |d: f32| -> Result<f32> {
                let mut v = flat.clone();
                v[idx] += d;
                loss(
                    &Tensor::from_vec(v, shape, &dev)?
                        .to_dtype(DType::F64)?
                        .to_dtype(DType::F32)?,
                )?
                .to_scalar::<f32>()
            };
            let fd = (bump(1e-2)? - bump(-1e-2)?) / 2e-2;
            assert!(
                (fd - gflat[idx]).abs() <= 2e-2 * (1.0 + fd.abs()),
                "index {idx}: finite difference {fd}, autograd {}",
                gflat[idx]
            );
            nonzero += (gflat[idx].abs() > 1e-3) as usize;
        }
        assert!(nonzero > 0, "gradient vanished");
        Ok(())
    }

    #[test]
    fn conv_input_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (k, pad, stride, h, w) in [
            (3, 1, 1, 6, 5),
            (3, 1, 2, 6, 6),
            (3, 0, 2, 7, 6),
            (1, 0, 1, 4, 4),
            (3, 1, 2, 5, 7),
        ] {
            let weight = Tensor::randn(0f32, 0.5, (3, 2, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 0.5, 3, &dev)?;
            let conv = Conv2d::new(weight, Some(bias), pad, stride);
            finite_difference_check(&conv, (2, 2, h, w))?;
        }
        Ok(())
    }

    #[test]
    fn linear_input_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let layer = Linear::new(
            Tensor::randn(0f32, 0.5, (5, 4), &dev)?,
            Some(Tensor::randn(0f32, 0.5, 5, &dev)?),
        );
        finite_difference_check(&layer, (1, 2, 3, 4))
    }

    #[test]
    fn forward_matches_candle_with_and_without_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.5, (3, 2, 3, 3), &dev)?;
        let bias = Tensor::randn(0f32, 0.5, 3, &dev)?;
        let conv = Conv2d::new(weight.clone(), Some(bias.clone()), 1, 2);
        let reference = candle_nn::Conv2d::new(
            weight,
            Some(bias),
            candle_nn::Conv2dConfig {
                padding: 1,
                stride: 2,
                ..Default::default()
            },
        );
        let x = Tensor::randn(0f32, 1., (2, 2, 8, 6), &dev)?;
        let want = reference.forward(&x)?;
        let tracked = Var::from_tensor(&x)?;
        for got in [conv.forward(&x)?, conv.forward(tracked.as_tensor())?] {
            let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-6, "{err}");
        }
        Ok(())
    }
}
