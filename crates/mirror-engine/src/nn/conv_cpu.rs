//! Convolution on the CPU as k² accumulated matrix products, without im2col.
//!
//! Tap (ky, kx) of a k×k kernel multiplies its `[C_out, C_in]` slice with the zero-padded
//! input shifted by ky rows and kx columns. Stored row after row with the padded width Wp,
//! that shifted input is the flat padded buffer read from `ky·Wp + kx` on: one GEMM on a
//! view of one buffer per tap, accumulated in place. Outputs are computed at the padded
//! width (the last k − 1 columns of each row are thrown away) and compacted at the end,
//! where the bias is added. im2col instead copies the input k² times (over 1 GB at 512 px),
//! and the page faults of those fresh buffers cost as much as the copies.
//!
//! At a stride s above 1 the padded input is stored as its s² phases (every s-th row and
//! column, from each of the s² offsets), each of the output's width: tap (ky, kx) then reads
//! phase (ky mod s, kx mod s) shifted by (ky div s, kx div s), again one view of one buffer.

use candle_core::{DType, Result, Tensor, WithDType};
use gemm::gemm;
use rayon::prelude::*;
use std::sync::OnceLock;

use super::columns_cpu::{SMALL_KERNEL, cpu_slice};
use super::unfilled::{filled, unfilled};

/// The kernel as [`conv2d_stride1`] wants it: `[C_out, kh, kw, C_in]`, contiguous. Tap
/// (ky, kx) is the `[C_out, C_in]` block at column `(ky·kw + kx)·C_in` of the
/// `[C_out, kh·kw·C_in]` matrix, which is also im2col's kernel matrix.
pub fn tap_matrices(weight: &Tensor) -> Result<Tensor> {
    weight.permute((0, 2, 3, 1))?.contiguous()
}

/// Below this many output positions (at the padded width) per sample, [`conv2d_stride1`]
/// runs one product over explicit columns of all samples.
const SMALL_BELOW: usize = 256;

/// Whether [`conv2d_stride1`] handles tensors of this dtype (the GEMM's types).
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::F64)
}

/// How the input is read: zero padding on every side, and optionally a nearest-neighbour ×2
/// upsampling first (diffusers' `Upsample2D`), done while filling the padded buffer instead
/// of in a tensor four times the input.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputPrep {
    /// Zeros added on each side of both spatial axes.
    pub padding: usize,
    /// Whether the input is upsampled ×2 (nearest neighbour) before padding.
    pub upsample_x2: bool,
}

/// `x` `[B, C_in, H, W]` (prepared as `prep` says) convolved with `taps` (from
/// [`tap_matrices`]), stride 1, plus `bias` `[C_out]`. CPU tensors of one [`supports`]ed
/// dtype. The result is a new tensor outside any autograd graph.
pub fn conv2d_stride1(
    x: &Tensor,
    taps: &Tensor,
    bias: Option<&Tensor>,
    prep: InputPrep,
) -> Result<Tensor> {
    conv2d_stride1_cached(x, taps, None, bias, prep)
}

/// [`conv2d_stride1`], keeping in `channel_last` the kernel as `[kh, kw, C_in, C_out]` once
/// a small kernel met a tiny image (see [`SMALL_KERNEL`]), so that later calls do not
/// transpose it again. A layer holds one such cache beside its taps.
pub fn conv2d_stride1_cached(
    x: &Tensor,
    taps: &Tensor,
    channel_last: Option<&OnceLock<Tensor>>,
    bias: Option<&Tensor>,
    prep: InputPrep,
) -> Result<Tensor> {
    let kernel = Kernel {
        taps,
        channel_last,
        flipped_transposed: false,
        stride: 1,
    };
    match run_at_dtype(x, kernel, bias, prep) {
        Some(result) => result,
        None => candle_core::bail!("conv2d: no CPU matrix-product path for {:?}", x.dtype()),
    }
}

/// [`run`] at `x`'s dtype, or `None` for a dtype that [`supports`] does not take.
fn run_at_dtype(
    x: &Tensor,
    kernel: Kernel<'_>,
    bias: Option<&Tensor>,
    prep: InputPrep,
) -> Option<Result<Tensor>> {
    Some(match x.dtype() {
        DType::F32 => run::<f32>(x, kernel, bias, prep),
        DType::F16 => run::<half::f16>(x, kernel, bias, prep),
        DType::F64 => run::<f64>(x, kernel, bias, prep),
        _ => return None,
    })
}

/// `x` `[B, C_in, H, W]` convolved with `taps` (from [`tap_matrices`]) at `stride` (above 1)
/// after zero `padding`, plus `bias` `[C_out]`, through the input's phases (see the module
/// notes). `None` where the output has fewer than [`SMALL_BELOW`] positions per sample (at
/// the phases' width), which one product over explicit columns serves better, or for a dtype
/// that [`supports`] does not take.
pub fn conv2d_strided(
    x: &Tensor,
    taps: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Option<Tensor>> {
    let (_, _, h, w) = x.dims4()?;
    let (_, kh, kw, _) = taps.dims4()?;
    let Some(grid) = Grid::new((h + 2 * padding, w + 2 * padding), (kh, kw), stride) else {
        return Ok(None);
    };
    if grid.columns < SMALL_BELOW {
        return Ok(None);
    }
    let kernel = Kernel {
        taps,
        channel_last: None,
        flipped_transposed: false,
        stride,
    };
    let prep = InputPrep {
        padding,
        upsample_x2: false,
    };
    run_at_dtype(x, kernel, bias, prep).transpose()
}

/// Where a convolution's products run: the output grid at the phases' width.
#[derive(Debug, Clone, Copy)]
struct Grid {
    /// Output height and width.
    out: (usize, usize),
    /// Height and width of one phase of the padded input (the padded input itself at
    /// stride 1); outputs are computed at the phase width.
    phase: (usize, usize),
    /// Output columns each product computes: every row at the phase width but the last,
    /// which stops at the output width (its later columns would read past the buffer).
    columns: usize,
}

impl Grid {
    /// The grid of a `kernel` over a `padded` input at `stride`, or `None` when the kernel
    /// does not fit or the stride is 0.
    fn new(padded: (usize, usize), kernel: (usize, usize), stride: usize) -> Option<Self> {
        let ((hp, wp), (kh, kw)) = (padded, kernel);
        if stride == 0 || hp < kh || wp < kw {
            return None;
        }
        let out = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
        let phase = (hp.div_ceil(stride), wp.div_ceil(stride));
        Some(Self {
            out,
            phase,
            columns: (out.0 - 1) * phase.1 + out.1,
        })
    }
}

/// The input gradient `[B, C_in, H, W]` of a stride-1 convolution with `taps` (from
/// [`tap_matrices`], `[C_out, k, k, C_in]`), for the output gradient `grad`
/// `[B, C_out, Ho, Wo]`: the convolution of `grad`, padded by k − 1 − padding, with the
/// spatially flipped, channel-transposed kernel, whose taps the products read in place from
/// `taps` (no flipped copy of the kernel, no k²-fold column buffer). CPU, f32. Returns `None`
/// where that does not apply: a stride above 1, a non-square kernel, padding of k or more.
pub(crate) fn input_gradient_stride1_f32(
    grad: &Tensor,
    taps: &Tensor,
    geometry: &super::col2im::FoldGeometry,
) -> Result<Option<Tensor>> {
    let (kh, kw) = geometry.kernel;
    if geometry.stride != 1 || kh != kw || geometry.padding >= kh {
        return Ok(None);
    }
    let kernel = Kernel {
        taps,
        channel_last: None,
        flipped_transposed: true,
        stride: 1,
    };
    let prep = InputPrep {
        padding: kh - 1 - geometry.padding,
        upsample_x2: false,
    };
    run::<f32>(grad, kernel, None, prep).map(Some)
}

/// How [`run`] reads its kernel.
#[derive(Clone, Copy)]
struct Kernel<'a> {
    /// `[C_out, kh, kw, C_in]` of the forward convolution.
    taps: &'a Tensor,
    /// Where a small kernel's channel-last copy is kept for tiny images.
    channel_last: Option<&'a OnceLock<Tensor>>,
    /// Convolve with the spatially flipped kernel, its channels transposed (the forward's
    /// input gradient): tap (ky, kx) is the forward's tap (kh − 1 − ky, kw − 1 − kx) read as
    /// `[C_in, C_out]`.
    flipped_transposed: bool,
    /// The same on both axes.
    stride: usize,
}

#[expect(
    clippy::too_many_lines,
    reason = "one im2col + GEMM kernel, kept together so its SAFETY notes sit beside the pointers they cover"
)]
fn run<T: WithDType>(
    x: &Tensor,
    kernel: Kernel<'_>,
    bias: Option<&Tensor>,
    prep: InputPrep,
) -> Result<Tensor> {
    let Kernel {
        taps,
        channel_last,
        flipped_transposed,
        stride,
    } = kernel;
    let (b, c_in, h_in, w_in) = x.dims4()?;
    let factor = if prep.upsample_x2 { 2 } else { 1 };
    let (h, w, padding) = (h_in * factor, w_in * factor, prep.padding);
    let (taps_out, kh, kw, taps_in) = taps.dims4()?;
    // Row stride of the taps as the `[taps_out, kh·kw·taps_in]` matrix.
    let row_stride = kh * kw * taps_in;
    let (c_out, tap_in) = if flipped_transposed {
        (taps_in, taps_out)
    } else {
        (taps_out, taps_in)
    };
    if tap_in != c_in {
        candle_core::bail!("conv2d: input has {c_in} channels, kernel expects {tap_in}");
    }
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    let Some(grid) = Grid::new((hp, wp), (kh, kw), stride) else {
        candle_core::bail!("conv2d: input {h}x{w} smaller than kernel {kh}x{kw}");
    };
    let ((ho, wo), (hq, wq)) = (grid.out, grid.phase);
    let x = x.contiguous()?;
    // A cached channel-last kernel is of the layer's dtype: only used when it is this one.
    let channel_last = channel_last.filter(|_| taps.dtype() == T::DTYPE);
    let taps = taps.to_dtype(T::DTYPE)?.contiguous()?;
    let bias = bias
        .map(|b| b.to_dtype(T::DTYPE)?.contiguous())
        .transpose()?;
    let (x_storage, x_layout) = x.storage_and_layout();
    let input = cpu_slice::<T>(&x_storage, x_layout)?;
    let (taps_storage, taps_layout) = taps.storage_and_layout();
    let taps_v = cpu_slice::<T>(&taps_storage, taps_layout)?;
    let bias_v: Option<Vec<T>> = match &bias {
        Some(b) => Some(b.to_vec1::<T>()?),
        None => None,
    };
    if bias_v.as_ref().is_some_and(|v| v.len() != c_out) {
        candle_core::bail!("conv2d: bias does not have {c_out} values");
    }

    // One channel of the padded input: its stride² phases, one after the other.
    let phase_len = hq * wq;
    let plane = stride * stride * phase_len;
    let n = grid.columns;
    let parallelism = super::matmul_cpu::parallelism();
    let padded_geometry = PaddedInput {
        input: (h_in, w_in),
        factor,
        padding,
        stride,
        phase: (hq, wq),
    };
    // A small image's samples go through the products together, so that the kernel (tens of
    // MB at SD's lowest levels) is streamed once per call, not once per sample: a large
    // kernel as one product with explicit columns (`columns_cpu`), a small one tap by tap,
    // channel-last (see SMALL_KERNEL). A large image's products are accumulated per sample
    // and tap as [C_out, n] straight in the output buffer, compacted in place at the end.
    let small = n < SMALL_BELOW && !flipped_transposed && stride == 1;
    // The k² accumulated products of one padded buffer: `src` holds c_in rows of stride
    // `src_rows`, and output column j reads column j + (ky div s)·wq + kx div s of phase
    // (ky mod s, kx mod s) of each (at stride 1: column j + ky·wp + kx).
    let products = |src: &[T],
                    src_rows: usize,
                    columns: usize,
                    (dst, dst_cs, dst_rs),
                    channel_last: Option<&[T]>| {
        for ky in 0..kh {
            for kx in 0..kw {
                let (tap_index, tap_cs, tap_rs) = if flipped_transposed {
                    ((kh - 1 - ky) * kw + (kw - 1 - kx), row_stride, 1)
                } else {
                    (ky * kw + kx, 1, row_stride)
                };
                let tap = &taps_v[tap_index * taps_in..][..(taps_out - 1) * row_stride + taps_in];
                let (tap, tap_cs, tap_rs) = match channel_last {
                    Some(v) => (
                        &v[(ky * kw + kx) * c_in * c_out..][..c_in * c_out],
                        c_out,
                        1,
                    ),
                    None => (tap, tap_cs, tap_rs),
                };
                let phase = (ky % stride) * stride + kx % stride;
                let shifted = &src[phase * phase_len + (ky / stride) * wq + kx / stride..];
                if (c_in - 1) * src_rows + columns > shifted.len() {
                    candle_core::bail!("conv2d: {columns} columns do not fit the padded input");
                }
                // SAFETY: dst (the caller's) holds c_out × columns values at strides
                // (dst_cs, dst_rs); tap is [c_out, c_in] with row stride kh·kw·c_in, or with
                // column stride c_out (channel-last), or with column stride kh·kw·c_out
                // (flipped-transposed: the forward's [taps_out, taps_in] tap read
                // transposed), inside its slice; `shifted` holds c_in rows of stride
                // `src_rows`, and the largest index read, (c_in − 1)·src_rows + columns − 1
                // + the shift above, is inside `src` by the callers' choice of `columns`.
                unsafe {
                    gemm(
                        c_out,
                        columns,
                        c_in,
                        dst,
                        dst_cs,
                        dst_rs,
                        ky + kx > 0,
                        tap.as_ptr(),
                        tap_cs as isize,
                        tap_rs as isize,
                        shifted.as_ptr(),
                        1,
                        src_rows as isize,
                        T::one(),
                        T::one(),
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
            }
        }
        Ok(())
    };
    let copy_input = padding > 0 || prep.upsample_x2 || stride > 1;
    let sample_len = c_in * h_in * w_in;
    if small {
        // All samples side by side in each channel's row, [C_in, B, Hp, Wp].
        let padded = padded_geometry.batch(input, sample_len, c_in, b);
        let plane_out = ho * wo;
        let (acc, strides): (Vec<T>, [usize; 4]) =
            match channel_last.filter(|_| c_out * row_stride <= SMALL_KERNEL) {
                Some(lock) => {
                    // k² products over the stacked samples: output column s·plane + y·wp + x
                    // is sample s's (y, x); the columns between two samples' valid
                    // positions are thrown away like those past each row's end.
                    if lock.get().is_none() {
                        let _ = lock.set(taps.permute((1, 2, 3, 0))?.contiguous()?);
                    }
                    let Some(kernel) = lock.get() else {
                        candle_core::bail!("conv2d: channel-last kernel missing");
                    };
                    let (storage, layout) = kernel.storage_and_layout();
                    let kernel = cpu_slice::<T>(&storage, layout)?;
                    let columns = (b - 1) * plane + n;
                    let mut acc = vec![T::zero(); columns * c_out];
                    let dst = (acc.as_mut_ptr(), c_out as isize, 1);
                    products(&padded, b * plane, columns, dst, Some(kernel))?;
                    (acc, [plane * c_out, 1, wp * c_out, c_out])
                }
                None => {
                    let acc = super::columns_cpu::im2col_product(
                        &padded,
                        (c_in, b, hp),
                        (kh, kw),
                        taps_v,
                        parallelism,
                    );
                    let positions = b * plane_out;
                    (acc, [plane_out, positions, wo, 1])
                }
            };
        // Element (sample, channel, y, x) of the product is at the dot product of those
        // indices with `strides`. → [B, C_out, Ho·Wo], adding the bias.
        let at = |s: usize, o: usize, p: usize| {
            s * strides[0] + o * strides[1] + (p / wo) * strides[2] + (p % wo) * strides[3]
        };
        let mut out = Vec::with_capacity(b * c_out * plane_out);
        for s in 0..b {
            for o in 0..c_out {
                let value = bias_v.as_ref().map_or(T::zero(), |bias| bias[o]);
                out.extend((0..plane_out).map(|p| acc[at(s, o, p)] + value));
            }
        }
        return Tensor::from_vec(out, (b, c_out, ho, wo), x.device());
    }
    let sample_out = c_out * ho * wq;
    // Every value the compaction below reads is written by the first tap's product, which
    // does not accumulate: no zeroing first.
    let mut out = unfilled::<T>(b * sample_out);
    let mut padded = if copy_input {
        vec![T::zero(); c_in * plane]
    } else {
        Vec::new()
    };
    for (s, sample) in input.chunks(sample_len).enumerate() {
        let src: &[T] = if copy_input {
            padded_geometry.fill(&mut padded, plane, 0, sample);
            &padded
        } else {
            sample
        };
        let dst = &mut out[s * sample_out..(s + 1) * sample_out];
        products(
            src,
            plane,
            n,
            (dst.as_mut_ptr().cast::<T>(), 1, (ho * wq) as isize),
            None,
        )?;
    }
    // Compact [B·C_out, Ho, Wq] → [B·C_out, Ho, Wo] in place (each row moves towards the
    // front), adding the bias on the way. Row y of a channel starts at column y·wq, and its
    // wo values end at most at column n: all written by the products.
    let mut write = 0;
    for row_index in 0..b * c_out * ho {
        let read = row_index * wq;
        out.copy_within(read..read + wo, write);
        if let Some(bias) = &bias_v {
            let value = bias[(row_index / ho) % c_out];
            for v in &mut out[write..write + wo] {
                // SAFETY: copied just above from values the products wrote.
                let sum = unsafe { v.assume_init() } + value;
                v.write(sum);
            }
        }
        write += wo;
    }
    out.truncate(write);
    // SAFETY: each of the `write` values left was copied from a written one (see above).
    let out = unsafe { filled(out) };
    Tensor::from_vec(out, (b, c_out, ho, wo), x.device())
}

/// Where a sample's channels go in a zero-padded buffer, optionally upsampled ×2 (nearest
/// neighbour) on the way: at stride 1 row after row of the padded width, at a larger stride
/// as the padded input's stride² phases (see the module notes).
struct PaddedInput {
    /// The sample's (height, width).
    input: (usize, usize),
    /// 2 when upsampling, else 1.
    factor: usize,
    padding: usize,
    stride: usize,
    /// (height, width) of one phase: the padded size at stride 1.
    phase: (usize, usize),
}

impl PaddedInput {
    /// All `batch` samples of `input` padded, side by side in each channel's row:
    /// `[C_in, B, Hp, Wp]`.
    fn batch<T: WithDType>(
        &self,
        input: &[T],
        sample_len: usize,
        c_in: usize,
        batch: usize,
    ) -> Vec<T> {
        let plane = self.stride * self.stride * self.phase.0 * self.phase.1;
        let mut buffer = vec![T::zero(); c_in * batch * plane];
        for (s, sample) in input.chunks(sample_len).enumerate() {
            self.fill(&mut buffer, batch * plane, s * plane, sample);
        }
        buffer
    }

    /// Writes the interior of channel c of `sample` ([C, H, W]) at `c·channel_stride +
    /// offset` of `buffer`, row after row of the padded width (or into the phases). Only the
    /// interior is written: the zero border stays from the allocation.
    fn fill<T: WithDType>(
        &self,
        buffer: &mut [T],
        channel_stride: usize,
        offset: usize,
        sample: &[T],
    ) {
        let (h_in, w_in) = self.input;
        let (factor, padding, stride) = (self.factor, self.padding, self.stride);
        let (hq, wq) = self.phase;
        let (h, w) = (h_in * factor, w_in * factor);
        let fill = |(rows, channel): (&mut [T], &[T])| {
            for y in 0..h {
                let row = &channel[(y / factor) * w_in..][..w_in];
                if stride > 1 {
                    // Padded (y, x) goes to phase (y mod s, x mod s) at (y div s, x div s).
                    let (py, ry) = ((y + padding) % stride, (y + padding) / stride);
                    for x in 0..w {
                        let (px, rx) = ((x + padding) % stride, (x + padding) / stride);
                        rows[offset + ((py * stride + px) * hq + ry) * wq + rx] = row[x / factor];
                    }
                    continue;
                }
                let at = offset + (y + padding) * wq + padding;
                let dst = &mut rows[at..at + w];
                if factor == 1 {
                    dst.copy_from_slice(row);
                } else {
                    for (pair, v) in dst.chunks_exact_mut(2).zip(row) {
                        pair.fill(*v);
                    }
                }
            }
        };
        if super::fused_cpu::run_serially(buffer.len()) {
            buffer
                .chunks_mut(channel_stride)
                .zip(sample.chunks(h_in * w_in))
                .for_each(fill);
        } else {
            buffer
                .par_chunks_mut(channel_stride)
                .zip(sample.par_chunks(h_in * w_in))
                .for_each(fill);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The largest difference of `got` from the f64 `want` (of the same shape), and the
    /// scale it is judged against: `want`'s largest magnitude, at least 1.
    fn error_and_scale(got: &Tensor, want: &Tensor) -> Result<(f64, f64)> {
        assert_eq!(got.dims(), want.dims());
        let err = (got.to_dtype(DType::F64)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        let scale = want.abs()?.max_all()?.to_scalar::<f64>()?.max(1.0);
        Ok((err, scale))
    }

    /// Same values as candle's own convolution, for several kernel sizes, paddings, batch
    /// sizes and dtypes.
    #[test]
    fn matches_candle_convolution() -> Result<()> {
        let dev = Device::Cpu;
        for (b, c_in, c_out, k, pad, h, w) in [
            (1, 3, 5, 3, 1, 7, 6),
            (2, 4, 3, 3, 1, 5, 9),
            (1, 6, 4, 1, 0, 4, 5),
            (2, 2, 3, 3, 0, 6, 6),
            (1, 5, 2, 5, 2, 8, 3),
            // At least SMALL_BELOW positions: accumulated per tap in the output buffer.
            (2, 3, 4, 3, 1, 20, 18),
            // A kernel above SMALL_KERNEL values (explicit columns either way here).
            (2, 256, 240, 3, 1, 4, 3),
        ] {
            let x = Tensor::randn(0f32, 1., (b, c_in, h, w), &dev)?;
            let weight = Tensor::randn(0f32, 0.5, (c_out, c_in, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 0.5, c_out, &dev)?;
            let want = x
                .to_dtype(DType::F64)?
                .conv2d(&weight.to_dtype(DType::F64)?, pad, 1, 1, 1)?
                .broadcast_add(&bias.to_dtype(DType::F64)?.reshape((1, c_out, 1, 1))?)?;
            for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 2e-2), (DType::F64, 1e-12)] {
                let prep = InputPrep {
                    padding: pad,
                    upsample_x2: false,
                };
                let got = conv2d_stride1(
                    &x.to_dtype(dtype)?,
                    &tap_matrices(&weight.to_dtype(dtype)?)?,
                    Some(&bias.to_dtype(dtype)?),
                    prep,
                )?;
                let (err, scale) = error_and_scale(&got, &want)?;
                assert!(
                    err <= tol * scale,
                    "{dtype:?} b{b} {c_in}->{c_out} k{k} p{pad} {h}x{w}: error {err}"
                );
            }
        }
        Ok(())
    }

    /// Strides 2 and 3 through the input's phases: candle's strided convolution's values, for
    /// odd and even sizes, several paddings and kernel sizes, batch 1 and 2, every dtype;
    /// outputs below SMALL_BELOW positions are left to the columns path.
    #[test]
    fn strided_matches_candle_convolution() -> Result<()> {
        let dev = Device::Cpu;
        for (b, c_in, c_out, k, pad, stride, h, w) in [
            (1, 3, 5, 3, 1, 2, 40, 38),
            (2, 4, 3, 3, 1, 2, 37, 41),
            (1, 2, 4, 3, 0, 2, 36, 36),
            (1, 3, 2, 4, 2, 2, 39, 34),
            (2, 2, 3, 1, 0, 2, 35, 40),
            (1, 3, 4, 3, 1, 3, 52, 55),
        ] {
            let x = Tensor::randn(0f32, 1., (b, c_in, h, w), &dev)?;
            let weight = Tensor::randn(0f32, 0.5, (c_out, c_in, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 0.5, c_out, &dev)?;
            let want = x
                .to_dtype(DType::F64)?
                .conv2d(&weight.to_dtype(DType::F64)?, pad, stride, 1, 1)?
                .broadcast_add(&bias.to_dtype(DType::F64)?.reshape((1, c_out, 1, 1))?)?;
            for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 2e-2), (DType::F64, 1e-12)] {
                let got = conv2d_strided(
                    &x.to_dtype(dtype)?,
                    &tap_matrices(&weight.to_dtype(dtype)?)?,
                    Some(&bias.to_dtype(dtype)?),
                    pad,
                    stride,
                )?
                .expect("enough output positions for the phases");
                let (err, scale) = error_and_scale(&got, &want)?;
                let case = format!("b{b} {c_in}->{c_out} k{k} p{pad} s{stride} {h}x{w}");
                assert!(err <= tol * scale, "{dtype:?} {case}: error {err}");
            }
        }
        let x = Tensor::randn(0f32, 1., (1, 3, 8, 8), &dev)?;
        let taps = tap_matrices(&Tensor::randn(0f32, 1., (2, 3, 3, 3), &dev)?)?;
        assert!(conv2d_strided(&x, &taps, None, 1, 2)?.is_none());
        Ok(())
    }

    /// A strided (transposed) input view gives the same result as its contiguous copy.
    #[test]
    fn accepts_strided_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 3, 6, 5), &dev)?.transpose(2, 3)?;
        let taps = tap_matrices(&Tensor::randn(0f32, 1., (2, 3, 3, 3), &dev)?)?;
        let prep = InputPrep {
            padding: 1,
            upsample_x2: false,
        };
        let a = conv2d_stride1(&x, &taps, None, prep)?;
        let b = conv2d_stride1(&x.contiguous()?, &taps, None, prep)?;
        assert_eq!((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    /// Upsampling while filling the buffer equals candle's nearest upsampling, then the
    /// convolution (with and without padding, batch 1 and 2).
    #[test]
    fn upsampled_input_matches_upsample_then_convolution() -> Result<()> {
        let dev = Device::Cpu;
        for (b, padding, h, w) in [(1, 1, 4, 5), (2, 0, 3, 3), (1, 1, 1, 2)] {
            let x = Tensor::randn(0f32, 1., (b, 3, h, w), &dev)?;
            let taps = tap_matrices(&Tensor::randn(0f32, 1., (4, 3, 3, 3), &dev)?)?;
            let bias = Tensor::randn(0f32, 1., 4, &dev)?;
            let fused = conv2d_stride1(
                &x,
                &taps,
                Some(&bias),
                InputPrep {
                    padding,
                    upsample_x2: true,
                },
            )?;
            let plain = conv2d_stride1(
                &x.upsample_nearest2d(2 * h, 2 * w)?,
                &taps,
                Some(&bias),
                InputPrep {
                    padding,
                    upsample_x2: false,
                },
            )?;
            assert_eq!(fused.dims(), plain.dims());
            assert_eq!((fused - plain)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        }
        Ok(())
    }
}
