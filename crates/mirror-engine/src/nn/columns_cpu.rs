//! Convolution through explicit columns (im2col) on the CPU, for small images, where a
//! layer's kernel (tens of MB at SD's lowest levels) outweighs its input: the forward of a
//! large kernel, and the input gradient folded back from `Kᵀ·G`. All samples go through one
//! product, so that the kernel is streamed from memory once per call.

use candle_core::{DType, Layout, Result, Storage, Tensor, WithDType};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::col2im::{FoldGeometry, fold_position_major, fold_rows};
use super::matmul_cpu::{Gemm, View, parallelism, product};

/// On a small image, kernels of at most this many values (2 MB in f32, cache-sized) are
/// kept channel-last and multiplied tap by tap with the GEMM's vectors along the output
/// channels, not along the few positions; larger ones are streamed from memory once, as
/// row-major taps against explicit columns (im2col), which reads them fastest.
pub(crate) const SMALL_KERNEL: usize = 1 << 19;

/// The values of a contiguous CPU tensor, borrowed from its storage.
pub(crate) fn cpu_slice<'a, T: WithDType>(
    storage: &'a Storage,
    layout: &Layout,
) -> Result<&'a [T]> {
    let Storage::Cpu(cpu) = storage else {
        candle_core::bail!("conv2d: CPU path called with a GPU tensor");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("conv2d: tensor not contiguous");
    };
    Ok(&cpu.as_slice::<T>()?[start..end])
}

/// Multiply-adds below which a product stays on the calling thread.
const SERIAL_BELOW: usize = 1 << 23;

/// Below this many output positions per sample, [`input_gradient_f32`] folds explicit
/// columns.
const FOLDED_BELOW: usize = 256;

/// The input gradient `[B, C_in, H, W]` of a convolution with kernel matrix `matrix`
/// `[C_out, kh·kw·C_in]` (the convolution's tap matrices, flattened), for the output gradient
/// `grad` `[B, C_out, Ho, Wo]` of a small output: the columns `Kᵀ·G` of all samples in one product
/// (the GEMM runs along the kernel rows, thousands, and streams the kernel matrix, tens of
/// MB at the lowest levels, once), each sample's folded back onto its input grid. CPU, f32.
/// Returns `None` for a large output (the caller's other paths).
pub(crate) fn input_gradient_f32(
    grad: &Tensor,
    matrix: &Tensor,
    geometry: &FoldGeometry,
) -> Result<Option<Tensor>> {
    let (b, c_out, ho, wo) = grad.dims4()?;
    let positions = ho * wo;
    if positions >= FOLDED_BELOW || matrix.dtype() != DType::F32 {
        return Ok(None);
    }
    let rows = matrix.dim(1)?;
    if matrix.dim(0)? != c_out || geometry.output != (ho, wo) {
        candle_core::bail!(
            "conv input gradient: gradient {:?} does not fit",
            grad.dims()
        );
    }
    let grad = grad.contiguous()?;
    let matrix = matrix.contiguous()?;
    let (g_storage, g_layout) = grad.storage_and_layout();
    let g = cpu_slice::<f32>(&g_storage, g_layout)?;
    let (m_storage, m_layout) = matrix.storage_and_layout();
    let k = cpu_slice::<f32>(&m_storage, m_layout)?;
    let (h, w) = geometry.input;
    let image_len = geometry.channels * h * w;
    // All samples in one product, so that the kernel matrix (tens of MB at the lowest
    // levels, where this path runs) is streamed once per call, not once per sample: the
    // gradient regrouped as [c_out, b·positions] (small at these sizes).
    let grouped = if b == 1 {
        std::borrow::Cow::Borrowed(g)
    } else {
        let mut grouped = vec![0f32; c_out * b * positions];
        for (sample, planes) in g.chunks(c_out * positions).enumerate() {
            for (channel, plane) in planes.chunks(positions).enumerate() {
                grouped[(channel * b + sample) * positions..][..positions].copy_from_slice(plane);
            }
        }
        std::borrow::Cow::Owned(grouped)
    };
    let n = b * positions;
    let mut columns = vec![0f32; rows * n];
    // A small kernel's columns are computed position-major, [b·positions, rows], so that the
    // GEMM's vectors run along the kernel rows, not along the few positions; a large one's
    // row-major, [rows, b·positions], the layout in which the kernel streams fastest.
    let position_major = c_out * rows <= SMALL_KERNEL;
    let (column_stride, row_stride) = if position_major { (rows, 1) } else { (1, n) };
    let columns_view = View {
        rows,
        cols: n,
        row_stride,
        col_stride: column_stride,
        offset: 0,
    };
    // The kernel matrix [c_out, rows] row-major, read as its transpose.
    let kernel_t = View::column_major(rows, c_out);
    product(
        &mut columns,
        columns_view,
        (k, kernel_t),
        (&grouped, View::row_major(c_out, n)),
        Gemm::scaled(1.0, parallelism()),
    )?;
    let mut out = vec![0f32; b * image_len];
    for (sample, image) in out.chunks_mut(image_len).enumerate() {
        if position_major {
            let columns = &columns[sample * positions * rows..][..positions * rows];
            fold_position_major(columns, image, geometry);
        } else {
            fold_rows(&columns[sample * positions..], n, image, geometry);
        }
    }
    Tensor::from_vec(out, (b, geometry.channels, h, w), grad.device()).map(Some)
}

/// The product `[C_out, B·Ho·Wo]` (row-major) of the kernel `taps` `[C_out, kh·kw·C_in]`
/// with the columns of `padded` `[C_in, B, Hp, Wp]`: plain row-major operands, the layout
/// in which the GEMM streams a large kernel fastest.
pub(crate) fn im2col_product<T: WithDType>(
    padded: &[T],
    (c_in, batch, hp): (usize, usize, usize),
    (kh, kw): (usize, usize),
    taps: &[T],
    parallelism: Parallelism,
) -> Vec<T> {
    let columns = im2col(padded, (c_in, batch, hp), (kh, kw));
    let depth = kh * kw * c_in;
    let positions = columns.len() / depth.max(1);
    let c_out = taps.len() / depth.max(1);
    let mut acc = vec![T::zero(); c_out * positions];
    // A product of a few million multiply-adds takes tens of microseconds: handing half of
    // it to the pool costs about as much as it saves.
    let parallelism = if c_out * positions * depth < SERIAL_BELOW {
        Parallelism::None
    } else {
        parallelism
    };
    // SAFETY: acc is [c_out, positions], taps [c_out, depth] and columns [depth, positions],
    // each row-major and exactly that long.
    unsafe {
        gemm(
            c_out,
            positions,
            depth,
            acc.as_mut_ptr(),
            1,
            positions as isize,
            false,
            taps.as_ptr(),
            1,
            depth as isize,
            columns.as_ptr(),
            1,
            positions as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
    acc
}

/// The columns of a stride-1 convolution, `[kh·kw·C_in, B·Ho·Wo]` row-major: row
/// `(ky·kw + kx)·C_in + c` holds, for every sample and output position (y, x), the padded
/// input of channel c at (y + ky, x + kx). `padded` is `[C_in, B, Hp, Wp]`.
fn im2col<T: WithDType>(
    padded: &[T],
    (c_in, batch, hp): (usize, usize, usize),
    (kh, kw): (usize, usize),
) -> Vec<T> {
    let wp = padded.len() / (c_in * batch * hp).max(1);
    let (ho, wo) = (hp + 1 - kh, wp + 1 - kw);
    let positions = batch * ho * wo;
    let mut columns = vec![T::zero(); kh * kw * c_in * positions];
    let fill = |(row, dst): (usize, &mut [T])| {
        let (tap, channel) = (row / c_in, row % c_in);
        let (ky, kx) = (tap / kw, tap % kw);
        for s in 0..batch {
            let plane = &padded[(channel * batch + s) * hp * wp..][..hp * wp];
            for y in 0..ho {
                let src = &plane[(y + ky) * wp + kx..][..wo];
                dst[(s * ho + y) * wo..][..wo].copy_from_slice(src);
            }
        }
    };
    if super::fused_cpu::run_serially(columns.len()) {
        columns.chunks_mut(positions).enumerate().for_each(fill);
    } else {
        columns.par_chunks_mut(positions).enumerate().for_each(fill);
    }
    columns
}
