//! Stride-1 convolution on the CPU as k² accumulated matrix products, without im2col.
//!
//! Tap (ky, kx) of a k×k kernel multiplies its `[C_out, C_in]` slice with the zero-padded
//! input shifted by ky rows and kx columns. Stored row after row with the padded width Wp,
//! that shifted input is the flat padded buffer read from `ky·Wp + kx` on: one GEMM on a
//! view of one buffer per tap, accumulated in place. Outputs are computed at the padded
//! width (the last k − 1 columns of each row are thrown away) and compacted at the end,
//! where the bias is added. im2col instead copies the input k² times (over 1 GB at 512 px),
//! and the page faults of those fresh buffers cost as much as the copies.

use candle_core::{DType, Layout, Result, Storage, Tensor, WithDType};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// The kernel as [`conv2d_stride1`] wants it: `[C_out, kh, kw, C_in]`, contiguous. Tap
/// (ky, kx) is the `[C_out, C_in]` block at column `(ky·kw + kx)·C_in` of the
/// `[C_out, kh·kw·C_in]` matrix, which is also im2col's kernel matrix.
pub fn tap_matrices(weight: &Tensor) -> Result<Tensor> {
    weight.permute((0, 2, 3, 1))?.contiguous()
}

/// Whether [`conv2d_stride1`] handles tensors of this dtype (the GEMM's types).
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::F64)
}

/// How the input is read: zero padding on every side, and optionally a nearest-neighbour ×2
/// upsampling first (diffusers' `Upsample2D`), done while filling the padded buffer instead
/// of in a tensor four times the input.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputPrep {
    pub padding: usize,
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
    match x.dtype() {
        DType::F32 => run::<f32>(x, taps, bias, prep),
        DType::F16 => run::<half::f16>(x, taps, bias, prep),
        DType::F64 => run::<f64>(x, taps, bias, prep),
        other => candle_core::bail!("conv2d: no CPU matrix-product path for {other:?}"),
    }
}

/// The values of a contiguous CPU tensor, borrowed from its storage.
fn cpu_slice<'a, T: WithDType>(storage: &'a Storage, layout: &Layout) -> Result<&'a [T]> {
    let Storage::Cpu(cpu) = storage else {
        candle_core::bail!("conv2d: CPU path called with a GPU tensor");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("conv2d: tensor not contiguous");
    };
    Ok(&cpu.as_slice::<T>()?[start..end])
}

#[expect(
    clippy::too_many_lines,
    reason = "one im2col + GEMM kernel, kept together so its SAFETY notes sit beside the pointers they cover"
)]
fn run<T: WithDType>(
    x: &Tensor,
    taps: &Tensor,
    bias: Option<&Tensor>,
    prep: InputPrep,
) -> Result<Tensor> {
    let (b, c_in, h_in, w_in) = x.dims4()?;
    let factor = if prep.upsample_x2 { 2 } else { 1 };
    let (h, w, padding) = (h_in * factor, w_in * factor, prep.padding);
    let (c_out, kh, kw, tap_in) = taps.dims4()?;
    if tap_in != c_in {
        candle_core::bail!("conv2d: input has {c_in} channels, kernel expects {tap_in}");
    }
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if hp < kh || wp < kw {
        candle_core::bail!("conv2d: input {h}x{w} smaller than kernel {kh}x{kw}");
    }
    let (ho, wo) = (hp - kh + 1, wp - kw + 1);
    let x = x.contiguous()?;
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

    let plane = hp * wp;
    // The last kw − 1 positions of the last row would read past the padded buffer; they are
    // among the thrown-away columns anyway.
    let n = ho * wp - (kw - 1);
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let copy_input = padding > 0 || prep.upsample_x2;
    let mut padded = if copy_input {
        vec![T::zero(); c_in * plane]
    } else {
        Vec::new()
    };
    let sample_out = c_out * ho * wp;
    let mut out = vec![T::zero(); b * sample_out];
    let sample_len = c_in * h_in * w_in;
    for s in 0..b {
        let sample = &input[s * sample_len..(s + 1) * sample_len];
        let src: &[T] = if copy_input {
            // Only the interior is written: the zero border stays from the allocation.
            let fill = |(plane, channel): (&mut [T], &[T])| {
                for y in 0..h {
                    let row = &channel[(y / factor) * w_in..][..w_in];
                    let at = (y + padding) * wp + padding;
                    let dst = &mut plane[at..at + w];
                    if factor == 1 {
                        dst.copy_from_slice(row);
                    } else {
                        for (pair, v) in dst.chunks_exact_mut(2).zip(row) {
                            pair.fill(*v);
                        }
                    }
                }
            };
            if super::fused_cpu::run_serially(padded.len()) {
                padded
                    .chunks_mut(plane)
                    .zip(sample.chunks(h_in * w_in))
                    .for_each(fill);
            } else {
                padded
                    .par_chunks_mut(plane)
                    .zip(sample.par_chunks(h_in * w_in))
                    .for_each(fill);
            }
            &padded
        } else {
            sample
        };
        let dst = &mut out[s * sample_out..(s + 1) * sample_out];
        for ky in 0..kh {
            for kx in 0..kw {
                let row_stride = kh * kw * c_in;
                let tap = &taps_v[(ky * kw + kx) * c_in..][..(c_out - 1) * row_stride + c_in];
                let shifted = &src[ky * wp + kx..];
                // SAFETY: dst is [c_out, ho·wp] (row stride ho·wp ≥ n); tap is [c_out, c_in]
                // with row stride kh·kw·c_in, inside its slice; `shifted` holds c_in rows of stride `plane`, and the largest
                // index read, (c_in − 1)·plane + n − 1 + ky·wp + kx, is below c_in·plane
                // by the choice of n.
                unsafe {
                    gemm(
                        c_out,
                        n,
                        c_in,
                        dst.as_mut_ptr(),
                        1,
                        (ho * wp) as isize,
                        ky + kx > 0,
                        tap.as_ptr(),
                        1,
                        row_stride as isize,
                        shifted.as_ptr(),
                        1,
                        plane as isize,
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
    }
    // Compact [B·C_out, Ho, Wp] → [B·C_out, Ho, Wo] in place (each row moves towards the
    // front), adding the bias on the way.
    let mut write = 0;
    for row_index in 0..b * c_out * ho {
        let read = row_index * wp;
        out.copy_within(read..read + wo, write);
        if let Some(bias) = &bias_v {
            let value = bias[(row_index / ho) % c_out];
            out[write..write + wo].iter_mut().for_each(|v| *v += value);
        }
        write += wo;
    }
    out.truncate(write);
    Tensor::from_vec(out, (b, c_out, ho, wo), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
                assert_eq!(got.dims(), want.dims());
                let err = (got.to_dtype(DType::F64)? - &want)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f64>()?;
                let scale = want.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(
                    err <= tol * scale.max(1.0),
                    "{dtype:?} b{b} {c_in}->{c_out} k{k} p{pad} {h}x{w}: error {err}"
                );
            }
        }
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
