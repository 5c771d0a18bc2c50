//! Matrix products of plain f32 buffers through `gemm`, each operand described by its
//! strides, so that a caller can choose the layout in which the GEMM packs nothing large.
//!
//! For `dst = a·b` with `dst` column-major (unit row stride), `gemm` packs `a` into panels
//! (it copies it unless `a` is column-major with a multiple of 16 rows and few columns),
//! and it reads `b` in place when `b` is column-major too and `a` has no more than a few
//! thousand rows. With `dst` row-major the two roles swap. So `y = x·Wᵀ` for a few rows x
//! and a large weight W `[out, in]` is cheapest with y stored column-major (that is, `yᵀ`
//! row-major): only x is packed, and the weight, as `Wᵀ` column-major, is read as loaded.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::fused_cpu::run_serially;

/// Where a matrix lies in a slice: element (i, j) at `offset + i·row_stride + j·col_stride`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
    pub(crate) col_stride: usize,
    pub(crate) offset: usize,
}

impl View {
    /// A contiguous row-major matrix at the start of its slice.
    pub(crate) fn row_major(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
            offset: 0,
        }
    }

    /// A contiguous column-major matrix at the start of its slice (a row-major `[cols, rows]`
    /// read as its transpose).
    pub(crate) fn column_major(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            row_stride: 1,
            col_stride: rows,
            offset: 0,
        }
    }

    /// One past the largest index the matrix reaches (its offset when it is empty).
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return self.offset;
        }
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
    }
}

/// How a product runs: `dst = scale · a·b`, or `dst += scale · a·b` when `accumulate`, on
/// `parallelism`'s threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gemm {
    pub(crate) scale: f32,
    pub(crate) accumulate: bool,
    pub(crate) parallelism: Parallelism,
}

impl Gemm {
    /// `dst = scale · a·b`.
    pub(crate) fn scaled(scale: f32, parallelism: Parallelism) -> Self {
        Self {
            scale,
            accumulate: false,
            parallelism,
        }
    }
}

/// The product `how` says for matrices laid out in slices as their views say.
pub(crate) fn product(
    dst: &mut [f32],
    d: View,
    (a, av): (&[f32], View),
    (b, bv): (&[f32], View),
    how: Gemm,
) -> Result<()> {
    // SAFETY: `dst` is borrowed mutably for the call, so nothing else reads or writes it.
    unsafe { product_into(dst.as_mut_ptr(), dst.len(), d, (a, av), (b, bv), how) }
}

/// [`product`] into `dst_len` values at `dst`, after checking that the shapes agree and that
/// every view lies inside its slice.
///
/// # Safety
///
/// `dst` must point to `dst_len` values that are valid for writes, and nothing else may read
/// or write the elements that `d` covers during the call.
pub(crate) unsafe fn product_into(
    dst: *mut f32,
    dst_len: usize,
    d: View,
    (a, av): (&[f32], View),
    (b, bv): (&[f32], View),
    how: Gemm,
) -> Result<()> {
    if d.rows != av.rows || d.cols != bv.cols || av.cols != bv.rows {
        candle_core::bail!("strided product: shapes {d:?} = {av:?} · {bv:?} do not agree");
    }
    if d.end() > dst_len || av.end() > a.len() || bv.end() > b.len() {
        candle_core::bail!("strided product: a view lies outside its buffer");
    }
    // SAFETY: every element each view reaches, offset + i·row_stride + j·col_stride for
    // i < rows and j < cols, is below its end(), which is within its buffer (checked above);
    // the caller guarantees that the elements of dst are ours to write.
    unsafe {
        gemm(
            d.rows,
            d.cols,
            av.cols,
            dst.add(d.offset),
            d.col_stride as isize,
            d.row_stride as isize,
            how.accumulate,
            a.as_ptr().add(av.offset),
            av.col_stride as isize,
            av.row_stride as isize,
            b.as_ptr().add(bv.offset),
            bv.col_stride as isize,
            bv.row_stride as isize,
            // dst = alpha·dst + beta·a·b, dst read only when accumulating.
            1.0,
            how.scale,
            false,
            false,
            false,
            how.parallelism,
        );
    }
    Ok(())
}

/// The GEMM's threads: all of candle's.
pub(crate) fn parallelism() -> Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => Parallelism::None,
        threads => Parallelism::Rayon(threads),
    }
}

/// The values of a contiguous f32 CPU storage, as a custom op's kernel receives it.
pub(crate) fn cpu_values<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("CPU kernel: input not contiguous"),
    }
}

/// Whether `x` is f32 on the CPU, where the hand-written CPU kernels run.
pub(crate) fn f32_on_cpu(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// The values of a contiguous CPU f32 tensor's storage, or `None`.
pub(crate) fn f32_values<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    let (start, end) = layout.contiguous_offsets()?;
    match storage {
        Storage::Cpu(CpuStorage::F32(values)) => values.get(start..end),
        _ => None,
    }
}

/// `y[m, n] = yᵀ[n, m] + bias[n]` for `y_t` `[N, rows]`: y `[rows, N]`.
pub(crate) fn transpose_adding(y_t: &[f32], rows: usize, bias: Option<&[f32]>) -> Result<Vec<f32>> {
    let mut y = vec![0f32; y_t.len()];
    transposed_into(&mut y, y_t, rows, bias, |out, v| *out = v)?;
    Ok(y)
}

/// `x[m, n] += yᵀ[n, m] + bias[n]` for `x` `[rows, N]` and `y_t` `[N, rows]` (a layer's
/// output computed transposed, added to a residual stream).
pub(crate) fn add_transposed(
    x: &mut [f32],
    y_t: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
) -> Result<()> {
    transposed_into(x, y_t, rows, bias, |out, v| *out += v)
}

/// `store(x[m, n], yᵀ[n, m] + bias[n])` for every element, 16 rows of x at a time so that
/// each read of yᵀ is one cache line of 16 consecutive rows, on the pool unless
/// [`run_serially`] says otherwise.
fn transposed_into(
    x: &mut [f32],
    y_t: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    store: impl Fn(&mut f32, f32) + Sync + Send,
) -> Result<()> {
    const BLOCK: usize = 16;
    let n = y_t.len() / rows.max(1);
    if x.len() != y_t.len() || n * rows != y_t.len() || bias.is_some_and(|bias| bias.len() != n) {
        candle_core::bail!(
            "transposed sum: {} values into {}, {rows} rows, bias of {:?}",
            y_t.len(),
            x.len(),
            bias.map(<[f32]>::len)
        );
    }
    if n == 0 {
        return Ok(());
    }
    let write = |(index, block): (usize, &mut [f32])| {
        let first = index * BLOCK;
        let count = block.len() / n;
        for j in 0..n {
            let b = bias.map_or(0.0, |bias| bias[j]);
            let column = &y_t[j * rows + first..][..count];
            for (i, v) in column.iter().enumerate() {
                store(&mut block[i * n + j], v + b);
            }
        }
    };
    if run_serially(x.len()) {
        x.chunks_mut(BLOCK * n).enumerate().for_each(write);
    } else {
        x.par_chunks_mut(BLOCK * n).enumerate().for_each(write);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + seed * 11) % 101) as f32) / 50.0 - 1.0)
            .collect()
    }

    /// Element (i, j) of a view, read naively.
    fn at(data: &[f32], v: View, i: usize, j: usize) -> f32 {
        data[v.offset + i * v.row_stride + j * v.col_stride]
    }

    /// Products with every combination of row- and column-major operands, offsets and a
    /// scale, against the naive sum; a view outside its buffer is an error, not a read.
    #[test]
    fn strided_products_match_the_naive_sum() -> Result<()> {
        let (m, k, n) = (13, 7, 9);
        let a = values(m * k + 5, 1);
        let b = values(k * n + 3, 2);
        for a_rows_major in [true, false] {
            for b_rows_major in [true, false] {
                for d_rows_major in [true, false] {
                    let view = |rows: usize, cols: usize, row_major: bool, offset: usize| View {
                        rows,
                        cols,
                        row_stride: if row_major { cols } else { 1 },
                        col_stride: if row_major { 1 } else { rows },
                        offset,
                    };
                    let (av, bv) = (view(m, k, a_rows_major, 5), view(k, n, b_rows_major, 3));
                    let dv = view(m, n, d_rows_major, 0);
                    let mut d = vec![f32::NAN; m * n];
                    product(
                        &mut d,
                        dv,
                        (&a, av),
                        (&b, bv),
                        Gemm::scaled(0.5, Parallelism::None),
                    )?;
                    for i in 0..m {
                        for j in 0..n {
                            let want: f32 = 0.5
                                * (0..k)
                                    .map(|p| at(&a, av, i, p) * at(&b, bv, p, j))
                                    .sum::<f32>();
                            assert!((at(&d, dv, i, j) - want).abs() < 1e-5);
                        }
                    }
                }
            }
        }
        let mut d = vec![0f32; m * n];
        let a_short = View::row_major(m, k + 1);
        let b_view = View::row_major(k + 1, n);
        let b_long = values((k + 1) * n, 3);
        let err = product(
            &mut d,
            View::row_major(m, n),
            (&a, a_short),
            (&b_long, b_view),
            Gemm::scaled(1.0, Parallelism::None),
        );
        assert!(
            err.is_err(),
            "a view past the end of its buffer was accepted"
        );
        Ok(())
    }

    /// The transposed sums against the naive loops, for row counts on and off the 16-row
    /// blocks, on the calling thread and on the pool; a bias of the wrong length is an error.
    #[test]
    fn transposed_sums_match_the_naive_loops() -> Result<()> {
        for (rows, n) in [(1, 5), (16, 3), (77, 24), (300, 130)] {
            let y_t = values(rows * n, 4);
            let bias = values(n, 5);
            let x0 = values(rows * n, 6);
            let y = transpose_adding(&y_t, rows, Some(&bias))?;
            let mut x = x0.clone();
            add_transposed(&mut x, &y_t, rows, Some(&bias))?;
            let plain = transpose_adding(&y_t, rows, None)?;
            for m in 0..rows {
                for j in 0..n {
                    let v = y_t[j * rows + m];
                    assert_eq!(y[m * n + j], v + bias[j]);
                    assert_eq!(x[m * n + j], x0[m * n + j] + (v + bias[j]));
                    assert_eq!(plain[m * n + j], v + 0.0);
                }
            }
            assert!(transpose_adding(&y_t, rows, Some(&bias[1..])).is_err());
        }
        Ok(())
    }
}
