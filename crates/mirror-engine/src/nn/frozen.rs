//! Linear and 2-D convolution layers with frozen weights.
//!
//! candle's backward pass computes a gradient for every argument of a matmul or convolution,
//! weights included, even when nothing asks for it, and it takes a convolution's input
//! gradient through `conv_transpose2d`, whose CPU kernel is a naive loop. Mirror never trains
//! weights, so on gradient passes these layers run as custom ops whose backward computes the
//! input gradient only, with a regular (fast) convolution. Without a gradient they are the
//! plain candle ops.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::col2im::{FoldGeometry, col2im};
use super::conv_cpu;
use super::fused_cpu::fill_rows;
use super::matmul_cpu::{self, f32_on_cpu};
use super::precomputed::{
    CpuKernel, InputGradient, apply_cpu_kernel, apply_cpu_kernel_adding, attach, attach_adding,
};
use super::profile;
use super::unfilled::{filled, unfilled};
use super::with_last_dim;

/// A layer whose weights never get a gradient: its backward maps ∂L/∂y to ∂L/∂x only.
trait FrozenLayer: InputGradient + Clone {
    fn apply(&self, x: &Tensor) -> Result<Tensor>;

    /// `apply` attached to the autograd graph of `x`. The output is computed with plain ops
    /// first; the graph node only hands it over (no copy of the input).
    fn tracked(&self, x: &Tensor) -> Result<Tensor> {
        attach(x, self.apply(&x.detach())?, self.clone())
    }
}

/// `y = x Wᵀ + b` with W, b constant.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// `Wᵀ` contiguous, made on the first forward that uses it (shared by clones).
    transposed: Arc<OnceLock<Tensor>>,
}

/// A CPU forward on fewer rows than this multiplies by a contiguous `Wᵀ` (see
/// [`Linear::transposed_for`]).
const TRANSPOSED_BELOW_ROWS: usize = 256;
/// ... when the weight has at most this many values (the copy doubles its memory).
const TRANSPOSED_MAX_WEIGHT: usize = 1 << 19;

impl Linear {
    /// A layer with weight `[out, in]` and optional bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            transposed: Arc::default(),
        }
    }

    /// The right operand of the forward product for `x`: on a CPU input of few rows and a
    /// small weight, `Wᵀ` kept contiguous, which the GEMM reads in place; with the view
    /// `W.t()` it would re-pack the weight on every call, which costs as much as a product
    /// over a few dozen rows.
    fn transposed_for(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1);
        if !x.device().is_cpu()
            || x.dtype() != self.weight.dtype()
            || rows >= TRANSPOSED_BELOW_ROWS
            || self.weight.elem_count() > TRANSPOSED_MAX_WEIGHT
        {
            return self.weight.t();
        }
        if let Some(t) = self.transposed.get() {
            return Ok(t.clone());
        }
        let t = self.weight.t()?.contiguous()?;
        let _ = self.transposed.set(t.clone());
        Ok(t)
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[out]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Linear {
    /// The forward on the CPU in f32 for few rows (under 256, and fewer than the layer's
    /// inputs) and a weight too large for [`Self::transposed_for`]'s copy, or `None`:
    /// `yᵀ = W·xᵀ` through `gemm`, which then packs only x and reads the weight as loaded,
    /// and yᵀ transposed back with the bias added. The transposition moves rows × out
    /// values; re-packing the weight, as the product with the view `W.t()` does on every
    /// call, moves out × in. From 256 rows on, the view's product was as fast or faster
    /// (SD 1.5's UNet shapes, 1 and 2 threads): the packing is spread over more rows there.
    fn apply_weight_in_place(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (outputs, inputs) = self.weight.dims2()?;
        let rows = x.elem_count() / inputs.max(1);
        let applies = x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && x.dim(candle_core::D::Minus1)? == inputs
            && rows > 0
            && rows < inputs.min(TRANSPOSED_BELOW_ROWS)
            && self.weight.elem_count() > TRANSPOSED_MAX_WEIGHT;
        if !applies {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let bias = match &self.bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let (x_storage, x_layout) = x.storage_and_layout();
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let (Some(x_values), Some(w_values)) = (
            matmul_cpu::f32_values(&x_storage, x_layout),
            matmul_cpu::f32_values(&w_storage, w_layout),
        ) else {
            return Ok(None);
        };
        let mut y_t = vec![0f32; outputs * rows];
        // y `[rows, out]` stored column-major; Wᵀ `[in, out]` column-major is W as loaded.
        let y_view = matmul_cpu::View::column_major(rows, outputs);
        let w_t = matmul_cpu::View::column_major(inputs, outputs);
        matmul_cpu::product(
            &mut y_t,
            y_view,
            (x_values, matmul_cpu::View::row_major(rows, inputs)),
            (w_values, w_t),
            matmul_cpu::Gemm::scaled(1.0, matmul_cpu::parallelism()),
        )?;
        let y = matmul_cpu::transpose_adding(&y_t, rows, bias.as_deref())?;
        let dims = with_last_dim(x.dims(), outputs);
        Tensor::from_vec(y, dims, x.device()).map(Some)
    }
}

impl Linear {
    /// Whether the forward of `x` is [`Linear`]'s own CPU kernel: f32 on the CPU with at
    /// least [`TRANSPOSED_BELOW_ROWS`] rows (fewer take the paths above).
    fn many_rows_kernel_applies(&self, x: &Tensor) -> bool {
        let inputs = self.weight.dims2().map_or(0, |d| d.1);
        f32_on_cpu(x)
            && f32_on_cpu(&self.weight)
            && self.bias.as_ref().is_none_or(f32_on_cpu)
            && inputs > 0
            && x.dim(candle_core::D::Minus1).is_ok_and(|d| d == inputs)
            && x.elem_count() / inputs >= TRANSPOSED_BELOW_ROWS
    }
}

/// `y = x Wᵀ + b` for many rows: one product, `W` read as loaded (a column-major `Wᵀ`), into
/// an output that holds the bias already, so that adding it costs no pass of its own.
impl CpuKernel for Linear {
    fn cpu_kernel(&self, x: &[f32], dims: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let (outputs, inputs) = self.weight.dims2()?;
        if dims.last() != Some(&inputs) || !x.len().is_multiple_of(inputs) {
            candle_core::bail!("linear: input {dims:?} for a weight [{outputs}, {inputs}]");
        }
        let rows = x.len() / inputs;
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let Some(w) = matmul_cpu::f32_values(&w_storage, w_layout) else {
            candle_core::bail!("linear: the weight is not contiguous f32 on the CPU");
        };
        let mut y = unfilled::<f32>(rows * outputs);
        let accumulate = match &self.bias {
            Some(bias) => {
                let (b_storage, b_layout) = bias.storage_and_layout();
                let Some(b) = matmul_cpu::f32_values(&b_storage, b_layout) else {
                    candle_core::bail!("linear: the bias is not contiguous f32 on the CPU");
                };
                if b.len() != outputs {
                    candle_core::bail!("linear: {} bias values for {outputs} outputs", b.len());
                }
                fill_rows(&mut y, outputs, |_, row| {
                    row.write_copy_of_slice(b);
                });
                true
            }
            None => false,
        };
        let w_t = matmul_cpu::View::column_major(inputs, outputs);
        let how = matmul_cpu::Gemm {
            scale: 1.0,
            accumulate,
            parallelism: matmul_cpu::parallelism(),
        };
        let x_view = matmul_cpu::View::row_major(rows, inputs);
        let y_view = matmul_cpu::View::row_major(rows, outputs);
        // SAFETY: `y` holds rows × outputs values, the extent of `y_view`, and is ours alone.
        unsafe {
            matmul_cpu::product_into(
                y.as_mut_ptr().cast(),
                y.len(),
                y_view,
                (x, x_view),
                (w, w_t),
                how,
            )?;
        }
        // SAFETY: the product wrote every value of `y` (the bias rows first where it adds
        // to them: then every row was filled above).
        let y = unsafe { filled(y) };
        let dims = with_last_dim(dims, outputs);
        Ok((y, dims))
    }
}

impl FrozenLayer for Linear {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.apply_weight_in_place(x)? {
            return Ok(y);
        }
        let w = self.transposed_for(x)?;
        let y = match x.rank() {
            2 => x.matmul(&w)?,
            _ => x.contiguous()?.broadcast_matmul(&w)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

impl InputGradient for Linear {
    const NAME: &'static str = "frozen-linear";

    fn profile_name(&self, _x: &Tensor) -> String {
        format!("linear backward {:?}", self.weight.dims())
    }

    fn input_gradient(&self, _x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        if let Some(dx) = self.input_gradient_cpu(grad)? {
            return Ok(dx);
        }
        match grad.rank() {
            2 => grad.matmul(&self.weight),
            // Contiguous, the batch folds into one product; otherwise candle would copy the
            // weight once per batch row.
            _ => grad.contiguous()?.broadcast_matmul(&self.weight),
        }
    }
}

impl Linear {
    /// `grad · W` for many f32 rows on the CPU, as one product into an output that is not
    /// zeroed first (candle's product zeroes it on one thread): `None` elsewhere.
    fn input_gradient_cpu(&self, grad: &Tensor) -> Result<Option<Tensor>> {
        let (outputs, inputs) = self.weight.dims2()?;
        let rows = grad.elem_count() / outputs.max(1);
        if !f32_on_cpu(grad)
            || grad.dim(candle_core::D::Minus1)? != outputs
            || rows < TRANSPOSED_BELOW_ROWS
        {
            return Ok(None);
        }
        let grad = grad.contiguous()?;
        let (g_storage, g_layout) = grad.storage_and_layout();
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let (Some(g), Some(w)) = (
            matmul_cpu::f32_values(&g_storage, g_layout),
            matmul_cpu::f32_values(&w_storage, w_layout),
        ) else {
            return Ok(None);
        };
        let mut dx = unfilled::<f32>(rows * inputs);
        let how = matmul_cpu::Gemm::scaled(1.0, matmul_cpu::parallelism());
        // SAFETY: `dx` holds rows × inputs values, the extent of its view, and is ours alone.
        unsafe {
            matmul_cpu::product_into(
                dx.as_mut_ptr().cast(),
                dx.len(),
                matmul_cpu::View::row_major(rows, inputs),
                (g, matmul_cpu::View::row_major(rows, outputs)),
                (w, matmul_cpu::View::row_major(outputs, inputs)),
                how,
            )?;
        }
        // SAFETY: a product that does not accumulate writes every value of its output.
        let dx = unsafe { filled(dx) };
        let dims = with_last_dim(grad.dims(), inputs);
        Tensor::from_vec(dx, dims, grad.device()).map(Some)
    }

    /// `forward(x) + residual`, the residual of the output's shape. Where the layer's own CPU
    /// kernel runs, the residual is added in its output buffer, and on a gradient pass the
    /// graph holds no separate tensor for the layer's output.
    pub fn forward_adding(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let _stage = profile::stage(|| format!("linear forward {:?}", self.weight.dims()));
        if self.many_rows_kernel_applies(x) && f32_on_cpu(residual) {
            return apply_cpu_kernel_adding(x, residual, self);
        }
        drop(_stage);
        Module::forward(self, x)? + residual
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _stage = profile::stage(|| format!("linear forward {:?}", self.weight.dims()));
        if self.many_rows_kernel_applies(x) {
            return apply_cpu_kernel(x, self);
        }
        if x.track_op() {
            self.tracked(x)
        } else {
            self.apply(x)
        }
    }
}

/// Loads `weight` `[out_dim, in_dim]` and `bias` `[out_dim]` under `vb`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = vb.get(out_dim, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}

/// Loads `weight` `[out_dim, in_dim]` under `vb`; no bias.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    Ok(Linear::new(weight, None))
}

/// 2-D convolution (groups 1, dilation 1) with a constant kernel and optional bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `[C_out, C_in, kh, kw]`; where `matrix` exists, a view of it (the kernel is held once).
    weight: Tensor,
    /// The kernel as `[C_out, kh, kw, C_in]`, contiguous (CPU, the GEMM's dtypes): the
    /// stride-1 shifted products read one `[C_out, C_in]` tap of it, im2col and the input
    /// gradient use it as `[C_out, kh·kw·C_in]`.
    matrix: Option<Tensor>,
    /// A small kernel as `[kh, kw, C_in, C_out]`, made on the first CPU forward of a tiny
    /// image (shared by the clones the autograd nodes hold).
    channel_last: Arc<OnceLock<Tensor>>,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    /// A convolution with kernel `[C_out, C_in, kh, kw]`, optional bias `[C_out]`, and the same
    /// padding and stride on both axes.
    pub fn new(weight: Tensor, bias: Option<Tensor>, padding: usize, stride: usize) -> Self {
        let matrix = if weight.device().is_cpu() && conv_cpu::supports(weight.dtype()) {
            conv_cpu::tap_matrices(&weight).ok()
        } else {
            None
        };
        let weight = match &matrix {
            Some(m) => m.permute((0, 3, 1, 2)).unwrap_or(weight),
            None => weight,
        };
        Self {
            weight,
            matrix,
            channel_last: Arc::default(),
            bias,
            padding,
            stride,
        }
    }

    /// The kernel, `[C_out, C_in, kh, kw]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[C_out]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// A profile's name for `stage` of this layer on input `x` (see [`profile`]).
    fn stage_name(&self, stage: &str, x: &Tensor) -> String {
        let (c_out, c_in, kh, kw) = self.weight.dims4().unwrap_or_default();
        let (b, h, w) = x.dims4().map(|d| (d.0, d.2, d.3)).unwrap_or_default();
        let stride = self.stride;
        format!("conv {stage} {kh}x{kw}/{stride} {c_in}->{c_out} at {b}x{h}x{w}")
    }

    /// The kernel matrix, when the CPU GEMM paths apply to `x`.
    fn cpu_matrix(&self, x: &Tensor) -> Option<&Tensor> {
        self.matrix
            .as_ref()
            .filter(|_| x.device().is_cpu() && conv_cpu::supports(x.dtype()))
    }

    /// The convolution of `x` upsampled ×2 (nearest), without the upsampled tensor, when no
    /// gradient can flow and the CPU path applies; `None` otherwise.
    pub fn forward_upsampled_x2(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(matrix) = self.cpu_matrix(x).filter(|_| self.stride == 1) else {
            return Ok(None);
        };
        if x.track_op() {
            return Ok(None);
        }
        let _stage = profile::stage(|| self.stage_name("forward upsampled ×2", x));
        let prep = conv_cpu::InputPrep {
            padding: self.padding,
            upsample_x2: true,
        };
        let channel_last = Some(&*self.channel_last);
        conv_cpu::conv2d_stride1_cached(x, matrix, channel_last, self.bias.as_ref(), prep).map(Some)
    }

    /// ∂L/∂x from ∂L/∂y: a stride-1 convolution of the zero-dilated gradient with the
    /// spatially flipped, channel-transposed kernel (devices without the folded path).
    fn transposed_convolution(&self, grad: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
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
        // `flip` needs a contiguous kernel (the weight may be a view of the kernel matrix).
        let flipped = self
            .weight
            .contiguous()?
            .flip(&[2, 3])?
            .transpose(0, 1)?
            .contiguous()?;
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

impl FrozenLayer for Conv2d {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let Some(matrix) = self.cpu_matrix(x) else {
            let y = conv2d_gemm(x, &self.weight, self.padding, self.stride)?;
            return match &self.bias {
                Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
                None => Ok(y),
            };
        };
        if self.stride == 1 {
            let prep = conv_cpu::InputPrep {
                padding: self.padding,
                upsample_x2: false,
            };
            let channel_last = Some(&*self.channel_last);
            return conv_cpu::conv2d_stride1_cached(
                x,
                matrix,
                channel_last,
                self.bias.as_ref(),
                prep,
            );
        }
        let strided =
            conv_cpu::conv2d_strided(x, matrix, self.bias.as_ref(), self.padding, self.stride)?;
        if let Some(y) = strided {
            return Ok(y);
        }
        let (c_out, kh, kw, c_in) = matrix.dims4()?;
        let flat = matrix.reshape((c_out, kh * kw * c_in))?;
        let y = conv2d_im2col(x, &flat, (kh, kw), self.padding, self.stride)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, c_out, 1, 1))?),
            None => Ok(y),
        }
    }
}

impl InputGradient for Conv2d {
    const NAME: &'static str = "frozen-conv2d";

    /// On the CPU in f32: for a small output `Kᵀ · G` against the kernel matrix, folded back
    /// onto the input grid; for a larger one at stride 1 the convolution of `G` with the
    /// flipped kernel, read in place (as fast as the forward); at larger strides the folded
    /// columns again. Elsewhere a transposed convolution.
    fn profile_name(&self, x: &Tensor) -> String {
        self.stage_name("backward", x)
    }

    fn input_gradient(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (_, c_in, h, w) = x.dims4()?;
        let (b, c_out, ho, wo) = grad.dims4()?;
        let Some(matrix) = self.cpu_matrix(grad).filter(|_| grad.dtype() == DType::F32) else {
            return self.transposed_convolution(grad, (h, w));
        };
        let (_, kh, kw, _) = matrix.dims4()?;
        let flat = matrix.reshape((c_out, kh * kw * c_in))?;
        let geometry = FoldGeometry {
            channels: c_in,
            kernel: (kh, kw),
            padding: self.padding,
            stride: self.stride,
            input: (h, w),
            output: (ho, wo),
        };
        if let Some(folded) = super::columns_cpu::input_gradient_f32(grad, &flat, &geometry)? {
            return Ok(folded);
        }
        if let Some(gradient) = conv_cpu::input_gradient_stride1_f32(grad, matrix, &geometry)? {
            return Ok(gradient);
        }
        // One 2-D product per sample: a batched product would copy the kernel matrix once
        // per sample (candle concretises a broadcast left operand).
        let samples = (0..b)
            .map(|n| {
                let g = grad.get(n)?.reshape((c_out, ho * wo))?;
                col2im(&flat.t()?.matmul(&g)?.unsqueeze(0)?, geometry)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&samples, 0)
    }
}

impl Conv2d {
    /// `forward(x) + residual`, the residual broadcast to the output (a skip connection, or a
    /// per-channel time embedding `[B, C, 1, 1]`). On a gradient pass one graph node holds
    /// `x` and the residual, and no separate tensor for the convolution's output.
    pub fn forward_adding(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let _stage = profile::stage(|| self.stage_name("forward", x));
        if !(x.track_op() || residual.track_op()) {
            return self.apply(x)?.broadcast_add(residual);
        }
        let output = self.apply(&x.detach())?.broadcast_add(&residual.detach())?;
        attach_adding(x, residual, output, self.clone())
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _stage = profile::stage(|| self.stage_name("forward", x));
        if x.track_op() {
            self.tracked(x)
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
    let (c_out, c_in, kh, kw) = weight.dims4()?;
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
    let matrix = conv_cpu::tap_matrices(weight)?.reshape((c_out, kh * kw * c_in))?;
    conv2d_im2col(x, &matrix, (kh, kw), padding, stride)
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
        finite_difference_check_with_step(layer, shape, 1e-2)
    }

    /// Central differences with step `step` (exact for a linear layer up to rounding, so a
    /// large layer takes a larger step to keep the rounding of its sum small beside it).
    fn finite_difference_check_with_step(
        layer: &dyn Module,
        shape: (usize, usize, usize, usize),
        step: f32,
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
            let fd = (bump(step)? - bump(-step)?) / (2.0 * step);
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

    /// candle's own `x·Wᵀ (+ b)`, what the layer's paths must give.
    fn candle_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = x.broadcast_matmul(&weight.t()?)?;
        match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
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
            // At least 256 output positions (the flipped kernel read in place).
            (3, 1, 1, 17, 16),
        ] {
            let weight = Tensor::randn(0f32, 0.5, (3, 2, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 0.5, 3, &dev)?;
            let conv = Conv2d::new(weight, Some(bias), pad, stride);
            finite_difference_check(&conv, (2, 2, h, w))?;
        }
        // A kernel above columns_cpu::SMALL_KERNEL values on a small image: the columns of both
        // samples in one product, row-major, folded from their rows.
        let weight = Tensor::randn(0f32, 0.02, (240, 256, 3, 3), &dev)?;
        let conv = Conv2d::new(weight, None, 1, 1);
        finite_difference_check_with_step(&conv, (2, 256, 4, 3), 0.5)?;
        Ok(())
    }

    #[test]
    fn folded_input_gradient_equals_the_transposed_convolution() -> Result<()> {
        let dev = Device::Cpu;
        for ((c_out, c_in), k, pad, stride, h, w) in [
            ((6, 4), 3, 1, 1, 9, 7),
            ((6, 4), 3, 1, 2, 9, 8),
            ((6, 4), 3, 0, 2, 6, 9),
            ((6, 4), 5, 2, 3, 11, 10),
            // At least 256 output positions: the flipped kernel read in place at stride 1,
            // columns through candle's matmul and col2im at stride 2.
            ((6, 4), 3, 1, 1, 20, 18),
            ((6, 4), 1, 0, 1, 17, 16),
            ((6, 4), 3, 0, 1, 19, 18),
            ((6, 4), 3, 1, 2, 36, 34),
            // Kernels above columns_cpu::SMALL_KERNEL values on small images: row-major
            // columns, folded from their rows.
            ((240, 256), 3, 1, 1, 4, 3),
            ((160, 320), 3, 1, 2, 7, 8),
        ] {
            let weight = Tensor::randn(0f32, 0.5, (c_out, c_in, k, k), &dev)?;
            let conv = Conv2d::new(weight, None, pad, stride);
            let x = Tensor::randn(0f32, 1., (2, c_in, h, w), &dev)?;
            let grad = Tensor::randn(0f32, 1., conv.forward(&x)?.shape(), &dev)?;
            let folded = conv.input_gradient(&x, &grad)?;
            let reference = conv.transposed_convolution(&grad, (h, w))?;
            let scale = reference.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
            let err = (folded - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                err < 1e-5 * scale,
                "{c_in}->{c_out} k {k} pad {pad} stride {stride} {h}x{w}: {err}"
            );
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

    /// Where the weight is read in place (under 256 rows, fewer than the inputs, and more
    /// than 2¹⁹ weights), the forward equals candle's `x·Wᵀ + b`, with and without a bias,
    /// for 2-D and 3-D inputs.
    #[test]
    fn linear_with_the_weight_in_place_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (x_shape, outputs, with_bias) in [
            (vec![200, 1000], 600, true),
            (vec![2, 70, 1000], 600, false),
            (vec![10, 800], 700, true),
            (vec![1, 3, 800], 700, false),
        ] {
            let inputs = *x_shape.last().expect("a last dim");
            let weight = Tensor::randn(0f32, 0.5, (outputs, inputs), &dev)?;
            let bias = Tensor::randn(0f32, 0.5, outputs, &dev)?;
            let layer = Linear::new(weight.clone(), with_bias.then(|| bias.clone()));
            let x = Tensor::randn(0f32, 1., x_shape.as_slice(), &dev)?;
            assert!(layer.apply_weight_in_place(&x)?.is_some(), "{x_shape:?}");
            let want = candle_linear(&x, &weight, with_bias.then_some(&bias))?;
            let got = layer.forward(&x)?;
            assert_eq!(got.dims(), want.dims());
            let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-4, "{x_shape:?} → {outputs}: {err}");
        }
        // 256 rows or more (the many-rows kernel), or as many rows as inputs: not in place.
        let layer = Linear::new(Tensor::randn(0f32, 0.5, (700, 1000), &dev)?, None);
        for rows in [256, 300] {
            let x = Tensor::randn(0f32, 1., (rows, 1000), &dev)?;
            assert!(layer.apply_weight_in_place(&x)?.is_none());
        }
        let layer = Linear::new(Tensor::randn(0f32, 0.5, (3000, 200), &dev)?, None);
        let x = Tensor::randn(0f32, 1., (200, 200), &dev)?;
        assert!(layer.apply_weight_in_place(&x)?.is_none());
        Ok(())
    }

    /// From 256 rows on, the CPU kernel (bias written first, one product added to it) equals
    /// candle's `x·Wᵀ + b`, with and without a bias, 2-D to 4-D, through the graph node too;
    /// its input gradient agrees with finite differences.
    #[test]
    fn linear_over_many_rows_matches_candle_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (x_shape, outputs, with_bias) in [
            (vec![300, 70], 50, true),
            (vec![2, 150, 33], 17, false),
            (vec![1, 2, 130, 640], 1280, true),
        ] {
            let inputs = *x_shape.last().expect("a last dim");
            let weight = Tensor::randn(0f32, 0.5, (outputs, inputs), &dev)?;
            let bias = Tensor::randn(0f32, 0.5, outputs, &dev)?;
            let layer = Linear::new(weight.clone(), with_bias.then(|| bias.clone()));
            let x = Tensor::randn(0f32, 1., x_shape.as_slice(), &dev)?;
            assert!(layer.many_rows_kernel_applies(&x), "{x_shape:?}");
            let want = candle_linear(&x, &weight, with_bias.then_some(&bias))?;
            let got = layer.forward(&x)?;
            assert_eq!(got.dims(), want.dims());
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                err <= 1e-6 * scale,
                "{x_shape:?} → {outputs}: {err} of {scale}"
            );
            let tracked = layer.forward(Var::from_tensor(&x)?.as_tensor())?;
            let same = (tracked - &got)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(same, 0.0, "{x_shape:?}: through the graph node");
        }
        let layer = Linear::new(
            Tensor::randn(0f32, 0.5, (5, 12), &dev)?,
            Some(Tensor::randn(0f32, 0.5, 5, &dev)?),
        );
        assert!(layer.many_rows_kernel_applies(&Tensor::zeros((1, 2, 150, 12), DType::F32, &dev)?));
        finite_difference_check(&layer, (1, 2, 150, 12))
    }

    /// From 256 rows on, the input gradient is the layer's own product into an output not
    /// zeroed first: it equals candle's `grad · W` for folded batches, a strided gradient and
    /// every output column (a column left unwritten would hold stale values).
    #[test]
    fn linear_input_gradient_over_many_rows_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (grad_shape, inputs, transposed) in [
            (vec![300, 50], 70, false),
            (vec![2, 150, 17], 33, false),
            (vec![1, 2, 130, 1280], 640, false),
            (vec![40, 300], 24, true),
        ] {
            let outputs = *grad_shape.last().expect("a last dim");
            let weight = Tensor::randn(0f32, 0.5, (outputs, inputs), &dev)?;
            let layer = Linear::new(weight.clone(), None);
            let grad = if transposed {
                // A [300, 40] gradient stored as its transpose: not contiguous.
                Tensor::randn(0f32, 1., (outputs, grad_shape[1]), &dev)?.t()?
            } else {
                Tensor::randn(0f32, 1., grad_shape.as_slice(), &dev)?
            };
            let x = Tensor::zeros(grad.dims()[..grad.rank() - 1].to_vec(), DType::F32, &dev)?;
            let got = layer.input_gradient(&x, &grad)?;
            let rows = grad.elem_count() / outputs;
            let want = grad
                .contiguous()?
                .reshape((rows, outputs))?
                .matmul(&weight)?;
            let mut dims = grad.dims().to_vec();
            *dims.last_mut().expect("a last dim") = inputs;
            assert_eq!(got.dims(), dims.as_slice());
            let want = want.reshape(dims.as_slice())?;
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err <= 1e-6 * scale, "{grad_shape:?}: {err} of {scale}");
        }
        Ok(())
    }

    /// The input gradient through a layer whose forward reads the weight in place.
    #[test]
    fn linear_with_the_weight_in_place_has_its_input_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let layer = Linear::new(
            Tensor::randn(0f32, 0.05, (700, 800), &dev)?,
            Some(Tensor::randn(0f32, 0.5, 700, &dev)?),
        );
        assert!(
            layer
                .apply_weight_in_place(&Tensor::zeros((1, 1, 2, 800), DType::F32, &dev)?)?
                .is_some()
        );
        finite_difference_check(&layer, (1, 1, 2, 800))
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

    /// Stride-1 layers on small images, batch 2, against candle's convolution: a small
    /// kernel read channel-last tap by tap over the stacked samples (first call, then from
    /// the cache), and one above columns_cpu::SMALL_KERNEL values through explicit columns.
    #[test]
    fn small_images_match_candle_in_both_kernel_layouts() -> Result<()> {
        let dev = Device::Cpu;
        for ((c_out, c_in), k, pad, (h, w)) in [
            ((5, 3), 3, 1, (4, 6)),
            ((8, 6), 1, 0, (3, 3)),
            ((240, 256), 3, 1, (4, 3)),
            ((256, 240), 1, 0, (5, 5)),
        ] {
            let weight = Tensor::randn(0f32, 0.1, (c_out, c_in, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 0.5, c_out, &dev)?;
            let conv = Conv2d::new(weight.clone(), Some(bias.clone()), pad, 1);
            let x = Tensor::randn(0f32, 1., (2, c_in, h, w), &dev)?;
            let want = x
                .to_dtype(DType::F64)?
                .conv2d(&weight.to_dtype(DType::F64)?, pad, 1, 1, 1)?
                .broadcast_add(&bias.to_dtype(DType::F64)?.reshape((1, c_out, 1, 1))?)?;
            // f32 rounding relative to the largest output, as in conv_cpu's comparison.
            let scale = want.abs()?.max_all()?.to_scalar::<f64>()?.max(1.0);
            for call in ["first", "cached"] {
                let got = conv.forward(&x)?.to_dtype(DType::F64)?;
                let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(
                    err < 1e-5 * scale,
                    "{c_in}->{c_out} k{k} {h}x{w} ({call} call): {err} (largest {scale})"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "frozen_adding_tests.rs"]
mod adding_tests;
