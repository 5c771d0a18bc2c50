//! Fused attention for f32 CPU tensors, forward and backward: no `[rows, queries, keys]` block.
//!
//! The work is split into tiles of up to 128 queries of one row (a batch element's head). A
//! tile's scores against all keys go into a per-thread buffer that is reused from call to call
//! (at most about 1 MiB, so that it stays in the core's L2 cache and its pages are faulted in
//! once), stored key-major (`[keys, tile]`) so that the softmax runs along the tile's queries
//! in vector registers and every product runs along the tile in the GEMM's widest kernels. The
//! softmax uses [`super::fast_exp`]; the product with V goes through a small tile-sized
//! buffer into the output. The forward keeps each query's log-sum-exp of its scores
//! (`rows × queries` values) for the backward, which recomputes a tile's probabilities from it
//! as FlashAttention-2 does: `P = exp(q kᵀ − lse)`, `dV += Pᵀ dO`, `dP = dO Vᵀ`,
//! `dS = P ∘ (dP − rowsum(dO ∘ O))`, `dQ = dS K`, `dK += dSᵀ Q`. dK and dV are summed over a
//! row's tiles in place: in the gradient itself when one thread runs all of a row's tiles, in
//! one partial sum per share of the row otherwise (added up once at the end). Only the inputs
//! that track a gradient get one.
//!
//! The products are the `gemm` crate's, on the calling thread (the tiles are what runs in
//! parallel); the elementwise loops are compiled for AVX-512 and AVX2 besides the baseline and
//! run at the widest width the CPU has (the results are the same bit for bit).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::fast_exp;
use super::fused_cpu::run_serially;
use super::matmul_cpu::{self, Gemm, View, cpu_values as values};

/// Scores one tile may hold (the backward holds two such buffers): 1 MiB of f32, so that a
/// thread's buffers stay in its core's L2 cache.
const TILE_SCORES: usize = 1 << 18;
/// Queries per tile, at least and at most (multiples of 16, a 512-bit vector of f32): fewer
/// make the products inefficient, more were slower at SD's sizes.
const MIN_TILE: usize = 16;
const MAX_TILE: usize = 128;

/// Queries per tile for `keys` keys.
fn tile_len(queries: usize, keys: usize) -> usize {
    let tile = (TILE_SCORES / keys.max(1)).clamp(MIN_TILE, MAX_TILE);
    (tile / MIN_TILE * MIN_TILE).min(queries.max(1))
}

/// Whether [`attention`] takes these inputs: f32 CPU tensors `[rows, queries, d]`,
/// `[rows, keys, d]`, `[rows, keys, dv]`, none of them empty.
pub(super) fn applies(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let (Ok(qd), Ok(kd), Ok(vd)) = (q.dims3(), k.dims3(), v.dims3()) else {
        return false;
    };
    [q, k, v].into_iter().all(super::matmul_cpu::f32_on_cpu)
        && qd.0 == kd.0
        && kd.0 == vd.0
        && qd.2 == kd.2
        && kd.1 == vd.1
        && [qd.0, qd.1, qd.2, kd.1, vd.2].iter().all(|&n| n > 0)
}

/// `softmax(q kᵀ) v` for inputs that [`applies`] accepts, as one graph node when any of them
/// tracks a gradient.
pub(super) fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let op = FusedAttention {
        lse: Mutex::new(None),
    };
    if q.track_op() || k.track_op() || v.track_op() {
        q.apply_op3(&k, &v, op)
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)
    }
}

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dims {
    pub rows: usize,
    pub queries: usize,
    pub keys: usize,
    /// Query and key width.
    pub d: usize,
    /// Value width.
    pub dv: usize,
}

impl Dims {
    /// `rows × queries × keys × width`, for a profile's stage names.
    pub(super) fn describe(&self) -> String {
        let Self {
            rows,
            queries,
            keys,
            d,
            ..
        } = self;
        format!("{rows}x{queries}x{keys}x{d}")
    }

    pub(super) fn of(q: &[usize], k: &[usize], v: &[usize]) -> Result<Self> {
        let [rows, queries, d] = *q else {
            candle_core::bail!("fused attention: q is {q:?}, not [rows, queries, d]");
        };
        if k.len() != 3 || v.len() != 3 || k[0] != rows || v[0] != rows || k[2] != d || v[1] != k[1]
        {
            candle_core::bail!("fused attention: q {q:?}, k {k:?} and v {v:?} do not match");
        }
        Ok(Self {
            rows,
            queries,
            keys: k[1],
            d,
            dv: v[2],
        })
    }
}

/// A matrix in a slice: element (i, j) at `i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// The slice and its view, as [`matmul_cpu::product`] takes them.
    fn operand(self) -> (&'a [f32], View) {
        let view = View {
            rows: self.rows,
            cols: self.cols,
            row_stride: self.rs,
            col_stride: self.cs,
            offset: 0,
        };
        (self.data, view)
    }
}

/// `dst` (`rows × cols`, row-major in the slice) `= lhs · rhs`, or `+=` when `accumulate`, on
/// the calling thread (the tiles are what runs in parallel).
fn product(dst: &mut [f32], lhs: Mat, rhs: Mat, accumulate: bool) {
    let how = Gemm {
        scale: 1.0,
        accumulate,
        parallelism: Parallelism::None,
    };
    let d = View::row_major(lhs.rows, rhs.cols);
    let done = matmul_cpu::product(dst, d, lhs.operand(), rhs.operand(), how);
    // The tile sizes are computed from the inputs' checked dimensions: a mismatch here is a
    // bug in this file, not bad input.
    assert!(done.is_ok(), "fused attention: {done:?}");
}

thread_local! {
    /// Each thread's tile buffer, kept between calls so that its pages are faulted in once.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `f` on a buffer of `len` values (of no particular content): the thread's own one, or a
/// fresh one if that is in use further up this thread's stack.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
            f(&mut buffer[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// `work` for each item, serially or on rayon's pool.
fn run_all<T: Send>(items: Vec<T>, serial: bool, work: impl Fn(T) + Sync + Send) {
    if serial || items.len() < 2 {
        items.into_iter().for_each(work);
    } else {
        items.into_par_iter().for_each(work);
    }
}

/// Whether the work of `dims` stays on the calling thread (the softmax kernel's rule, on the
/// number of scores).
fn serial(dims: Dims) -> bool {
    run_serially(dims.rows * dims.queries * dims.keys)
}

/// The elementwise loops over a tile's scores, stored key-major (`[keys, len]`: a key's
/// scores against the tile's queries are contiguous), so that each loop runs along the
/// queries in vector registers. Compiled for the baseline and for wider vectors.
mod elementwise {
    use super::super::simd::dispatch;
    use super::{MAX_TILE, fast_exp};

    /// Keys whose exponentials are summed apart before they are added to the totals: the
    /// sum's rounding error grows with the block length, not with the number of keys.
    const SUM_BLOCK: usize = 64;

    /// Each column i of `scores` (`len` wide) replaced by `e^(s − max_i)`; `max[i]` and
    /// `sum[i]` receive the column's max and the sum of its exponentials.
    #[inline(always)]
    fn exp_columns_impl(scores: &mut [f32], len: usize, max: &mut [f32], sum: &mut [f32]) {
        max.copy_from_slice(&scores[..len]);
        for row in scores.chunks_exact(len).skip(1) {
            for (m, &x) in max.iter_mut().zip(row) {
                *m = if x > *m { x } else { *m };
            }
        }
        sum.fill(0.0);
        let mut partial = [0f32; MAX_TILE];
        let partial = &mut partial[..len];
        for block in scores.chunks_mut(SUM_BLOCK * len) {
            partial.fill(0.0);
            for row in block.chunks_exact_mut(len) {
                for ((x, &m), p) in row.iter_mut().zip(&*max).zip(partial.iter_mut()) {
                    *x = fast_exp::exp(*x - m);
                    *p += *x;
                }
            }
            for (s, p) in sum.iter_mut().zip(&*partial) {
                *s += p;
            }
        }
    }

    /// Each column i of `scores` replaced by `e^(s − lse[i])`.
    #[inline(always)]
    fn probabilities_impl(scores: &mut [f32], lse: &[f32]) {
        for row in scores.chunks_exact_mut(lse.len()) {
            for (x, &shift) in row.iter_mut().zip(lse) {
                *x = fast_exp::exp(*x - shift);
            }
        }
    }

    /// `ds[j, i] = p[j, i] · (ds[j, i] − delta[i])`.
    #[inline(always)]
    fn score_gradient_impl(ds: &mut [f32], p: &[f32], delta: &[f32]) {
        let len = delta.len();
        for (ds, p) in ds.chunks_exact_mut(len).zip(p.chunks_exact(len)) {
            for ((g, &p), &delta) in ds.iter_mut().zip(p).zip(delta) {
                *g = p * (*g - delta);
            }
        }
    }

    dispatch!(exp_columns, exp_columns_impl, (scores: &mut [f32], len: usize, max: &mut [f32], sum: &mut [f32]));
    dispatch!(probabilities, probabilities_impl, (scores: &mut [f32], lse: &[f32]));
    dispatch!(score_gradient, score_gradient_impl, (ds: &mut [f32], p: &[f32], delta: &[f32]));
}

/// The forward over contiguous values: the output `[rows, queries, dv]` and each query's
/// log-sum-exp of its scores `[rows, queries]`.
pub(super) fn forward(dims: Dims, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let Dims {
        rows,
        queries,
        keys,
        d,
        dv,
    } = dims;
    let mut out = vec![0f32; rows * queries * dv];
    let mut lse = vec![0f32; rows * queries];
    let tile = tile_len(queries, keys);
    let units: Vec<_> = out
        .chunks_mut(queries * dv)
        .zip(lse.chunks_mut(queries))
        .enumerate()
        .flat_map(|(row, (out, lse))| {
            out.chunks_mut(tile * dv)
                .zip(lse.chunks_mut(tile))
                .enumerate()
                .map(move |(t, (out, lse))| (row, t * tile, out, lse))
        })
        .collect();
    run_all(units, serial(dims), |(row, start, out, lse)| {
        let len = lse.len();
        let q = Mat::row_major(&q[(row * queries + start) * d..][..len * d], len, d);
        let k = Mat::row_major(&k[row * keys * d..][..keys * d], keys, d);
        let v = Mat::row_major(&v[row * keys * dv..][..keys * dv], keys, dv);
        with_scratch(keys * len + dv * len, |buffer| {
            let (scores, out_t) = buffer.split_at_mut(keys * len);
            product(scores, k, q.t(), false);
            let (mut max, mut sum) = ([0f32; MAX_TILE], [0f32; MAX_TILE]);
            let (max, sum) = (&mut max[..len], &mut sum[..len]);
            elementwise::exp_columns(scores, len, max, sum);
            product(out_t, v.t(), Mat::row_major(scores, keys, len), false);
            for (i, (out, lse)) in out.chunks_exact_mut(dv).zip(lse).enumerate() {
                let inv = 1.0 / sum[i];
                for (c, o) in out.iter_mut().enumerate() {
                    *o = out_t[c * len + i] * inv;
                }
                *lse = max[i] + sum[i].ln();
            }
        });
    });
    (out, lse)
}

/// What the backward reads: the inputs, the output, its gradient and the log-sum-exps, all
/// contiguous.
pub(super) struct Saved<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub out: &'a [f32],
    pub grad_out: &'a [f32],
    pub lse: &'a [f32],
}

/// The gradients w.r.t. q, k and v, each only where `wanted`.
pub(super) type Gradients = (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>);

/// One share of the backward: queries `start..end` of `row`, with their slice of dQ and the
/// row's dK and dV (or this share's partial sums of them).
struct Share<'a> {
    row: usize,
    start: usize,
    end: usize,
    dq: Option<&'a mut [f32]>,
    dk: Option<&'a mut [f32]>,
    dv: Option<&'a mut [f32]>,
}

/// `buffer` in pieces of `size` values, or `count` `None`s without one.
fn pieces(buffer: Option<&mut Vec<f32>>, size: usize, count: usize) -> Vec<Option<&mut [f32]>> {
    match buffer {
        Some(buffer) => buffer.chunks_mut(size).map(Some).collect(),
        None => (0..count).map(|_| None).collect(),
    }
}

/// The backward over contiguous values.
pub(super) fn backward(dims: Dims, saved: &Saved, wanted: [bool; 3]) -> Gradients {
    let Dims {
        rows,
        queries,
        keys,
        d,
        dv,
    } = dims;
    let tile = tile_len(queries, keys);
    let serial = serial(dims);
    // A row's tiles are run by one thread, in order, so that its dK and dV are summed in
    // place; rows are split into shares only when there are too few of them to keep every
    // thread busy, and each share then sums its own partial dK and dV.
    let tiles = queries.div_ceil(tile);
    let splits = if serial {
        1
    } else {
        (2 * rayon::current_num_threads())
            .div_ceil(rows)
            .clamp(1, tiles)
    };
    let per_share = tiles.div_ceil(splits) * tile;
    let shares = queries.div_ceil(per_share);
    let zeros = |len: usize| vec![0f32; len];
    let mut grad_q = wanted[0].then(|| zeros(rows * queries * d));
    let mut grad_k = wanted[1].then(|| zeros(rows * shares * keys * d));
    let mut grad_v = wanted[2].then(|| zeros(rows * shares * keys * dv));
    let dq_pieces: Vec<Option<&mut [f32]>> = match grad_q.as_mut() {
        Some(grad_q) => grad_q
            .chunks_mut(queries * d)
            .flat_map(|row| row.chunks_mut(per_share * d).map(Some))
            .collect(),
        None => (0..rows * shares).map(|_| None).collect(),
    };
    let units: Vec<Share> = dq_pieces
        .into_iter()
        .zip(pieces(grad_k.as_mut(), keys * d, rows * shares))
        .zip(pieces(grad_v.as_mut(), keys * dv, rows * shares))
        .enumerate()
        .map(|(index, ((dq, dk), dv))| {
            let (row, share) = (index / shares, index % shares);
            let start = share * per_share;
            Share {
                row,
                start,
                end: (start + per_share).min(queries),
                dq,
                dk,
                dv,
            }
        })
        .collect();
    run_all(units, serial, |share| {
        backward_share(dims, tile, saved, share)
    });
    let sum_shares = |partial: Vec<f32>, width: usize| {
        if shares == 1 {
            return partial;
        }
        let mut total = zeros(rows * keys * width);
        for (total, partial) in total
            .chunks_mut(keys * width)
            .zip(partial.chunks(shares * keys * width))
        {
            for piece in partial.chunks(keys * width) {
                for (t, p) in total.iter_mut().zip(piece) {
                    *t += p;
                }
            }
        }
        total
    };
    (
        grad_q,
        grad_k.map(|g| sum_shares(g, d)),
        grad_v.map(|g| sum_shares(g, dv)),
    )
}

/// The gradients of one share's queries, a tile at a time.
fn backward_share(dims: Dims, tile: usize, saved: &Saved, share: Share) {
    let Dims {
        queries,
        keys,
        d,
        dv: width_v,
        ..
    } = dims;
    let Share {
        row,
        start,
        end,
        mut dq,
        mut dk,
        mut dv,
    } = share;
    let k = Mat::row_major(&saved.k[row * keys * d..][..keys * d], keys, d);
    let v = Mat::row_major(
        &saved.v[row * keys * width_v..][..keys * width_v],
        keys,
        width_v,
    );
    let scores_needed = dq.is_some() || dk.is_some();
    with_scratch(2 * keys * tile + d * tile, |buffer| {
        let (p_buffer, rest) = buffer.split_at_mut(keys * tile);
        let (ds_buffer, dq_buffer) = rest.split_at_mut(keys * tile);
        for (index, first) in (start..end).step_by(tile).enumerate() {
            let len = tile.min(end - first);
            let at = row * queries + first;
            let q_t = Mat::row_major(&saved.q[at * d..][..len * d], len, d);
            let grad_t = Mat::row_major(
                &saved.grad_out[at * width_v..][..len * width_v],
                len,
                width_v,
            );
            let p = &mut p_buffer[..keys * len];
            product(p, k, q_t.t(), false);
            elementwise::probabilities(p, &saved.lse[at..][..len]);
            let p = &*p;
            let accumulate = index > 0;
            if let Some(dv) = dv.as_deref_mut() {
                product(dv, Mat::row_major(p, keys, len), grad_t, accumulate);
            }
            if !scores_needed {
                continue;
            }
            let ds = &mut ds_buffer[..keys * len];
            product(ds, v, grad_t.t(), false);
            let mut delta = [0f32; MAX_TILE];
            let out_t = &saved.out[at * width_v..][..len * width_v];
            for ((delta, g), o) in delta
                .iter_mut()
                .zip(grad_t.data.chunks_exact(width_v))
                .zip(out_t.chunks_exact(width_v))
            {
                *delta = g.iter().zip(o).map(|(g, o)| g * o).sum();
            }
            elementwise::score_gradient(ds, p, &delta[..len]);
            let ds = Mat::row_major(ds, keys, len);
            if let Some(dq) = dq.as_deref_mut() {
                let dq_t = &mut dq_buffer[..d * len];
                product(dq_t, k.t(), ds, false);
                let dq = &mut dq[(first - start) * d..][..len * d];
                for (i, dq) in dq.chunks_exact_mut(d).enumerate() {
                    for (c, g) in dq.iter_mut().enumerate() {
                        *g = dq_t[c * len + i];
                    }
                }
            }
            if let Some(dk) = dk.as_deref_mut() {
                product(dk, ds, q_t, accumulate);
            }
        }
    });
}

/// [`backward`] from the tensors a graph node's `bwd` receives (q, k, v, the output and its
/// gradient), each read through `prepare(index, values)` (as it is, or with its heads
/// split), and the log-sum-exps the forward left in `lse`. Only the inputs that track a
/// gradient get one.
pub(super) fn backward_of_tensors(
    dims: Dims,
    lse: &Mutex<Option<Vec<f32>>>,
    [q, k, v, out, grad_out]: [&Tensor; 5],
    prepare: impl for<'a> Fn(usize, &'a [f32]) -> Cow<'a, [f32]>,
) -> Result<Gradients> {
    let lse = lse.lock();
    let Some(lse) = lse.as_ref().ok().and_then(|lse| lse.as_ref()) else {
        candle_core::bail!("fused attention: backward before forward");
    };
    let grad_out = grad_out.to_dtype(DType::F32)?.contiguous()?;
    let tensors = [q, k, v, out, &grad_out];
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut inputs = Vec::with_capacity(tensors.len());
    for (index, (storage, layout)) in guards.iter().enumerate() {
        let Storage::Cpu(storage) = &**storage else {
            candle_core::bail!("fused attention: backward of a tensor not on the CPU");
        };
        inputs.push(prepare(index, values(storage, layout)?));
    }
    let saved = Saved {
        q: &inputs[0],
        k: &inputs[1],
        v: &inputs[2],
        out: &inputs[3],
        grad_out: &inputs[4],
        lse,
    };
    let wanted = [q.track_op(), k.track_op(), v.track_op()];
    Ok(backward(dims, &saved, wanted))
}

/// The graph node (or, without gradient, just the kernel): its forward runs [`forward`] and
/// keeps the log-sum-exps for its backward.
struct FusedAttention {
    /// `[rows, queries]`, set by the forward.
    lse: Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Dims::of(q_layout.dims(), k_layout.dims(), v_layout.dims())?;
        let (q, k, v) = (
            values(q, q_layout)?,
            values(k, k_layout)?,
            values(v, v_layout)?,
        );
        let _stage = super::profile::stage(|| format!("attention forward {}", dims.describe()));
        let (out, lse) = forward(dims, q, k, v);
        if let Ok(mut saved) = self.lse.lock() {
            *saved = Some(lse);
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((dims.rows, dims.queries, dims.dv)),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = Dims::of(q.dims(), k.dims(), v.dims())?;
        if out.dims() != [dims.rows, dims.queries, dims.dv] || grad_out.dims() != out.dims() {
            candle_core::bail!("fused attention: gradient {:?}", grad_out.dims());
        }
        let _stage = super::profile::stage(|| format!("attention backward {}", dims.describe()));
        let tensors = [q, k, v, out, grad_out];
        let (grad_q, grad_k, grad_v) =
            backward_of_tensors(dims, &self.lse, tensors, |_, values| Cow::Borrowed(values))?;
        let tensor = |values: Option<Vec<f32>>, like: &Tensor| {
            values
                .map(|values| Tensor::from_vec(values, like.shape(), like.device()))
                .transpose()
        };
        Ok((tensor(grad_q, q)?, tensor(grad_k, k)?, tensor(grad_v, v)?))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::attention::{chunk_for, chunked_attention, forward_chunks};
    use super::super::softmax_last_dim;
    use super::*;
    use candle_core::{Device, Var};

    /// `(rows, queries, keys, d, dv)`: several tiles with a short last one, one key, CLIP's 77
    /// tokens, the head widths of SD 1.5 and tests, rows split into shares.
    const SHAPES: [(usize, usize, usize, usize, usize); 7] = [
        (3, 100, 70, 8, 6),
        (2, 37, 1, 8, 8),
        (2, 300, 77, 40, 40),
        (1, 130, 1100, 64, 64),
        (4, 64, 64, 160, 160),
        (2, 200, 5000, 40, 40),
        (1, 5, 3, 8, 4),
    ];

    fn naive(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        softmax_last_dim(&q.matmul(&k.t()?)?)?.matmul(v)
    }

    /// Largest difference between `got` and `want`, relative to the largest value of `want`
    /// (absolute where `want` is all zero: q and k get none from a single key).
    fn relative_diff(got: &Tensor, want: &Tensor) -> Result<f32> {
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(if scale > 0.0 { diff / scale } else { diff })
    }

    /// Inputs of `shape` (q already scaled by 1/√d as the UNet scales it), and a weight for
    /// the loss `Σ out ∘ weight`.
    fn inputs(
        (rows, queries, keys, d, dv): (usize, usize, usize, usize, usize),
    ) -> Result<[Tensor; 4]> {
        let dev = Device::Cpu;
        let q = (Tensor::randn(0f32, 1.5, (rows, queries, d), &dev)? / (d as f64).sqrt())?;
        Ok([
            q,
            Tensor::randn(0f32, 1., (rows, keys, d), &dev)?,
            Tensor::randn(0f32, 1., (rows, keys, dv), &dev)?,
            Tensor::randn(0f32, 1., (rows, queries, dv), &dev)?,
        ])
    }

    /// `f` on the global pool and on a private pool of 3 threads, so that the tiles and the
    /// backward's shares run in parallel whatever `RAYON_NUM_THREADS` says.
    pub(in crate::nn) fn on_both_pools(f: impl Fn() -> Result<()> + Send + Sync) -> Result<()> {
        f()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .map_err(candle_core::Error::wrap)?;
        pool.install(f)
    }

    #[test]
    fn tiles_stay_small_and_keep_their_bounds() {
        assert_eq!(tile_len(4096, 4096), 64);
        assert_eq!(tile_len(4096, 77), MAX_TILE);
        assert_eq!(tile_len(10, 77), 10);
        assert_eq!(tile_len(1 << 20, 1 << 20), MIN_TILE);
        assert_eq!(tile_len(4096, 5000), 48);
    }

    #[test]
    fn only_f32_cpu_inputs_of_matching_shapes_are_taken() -> Result<()> {
        let [q, k, v, _] = inputs((2, 5, 3, 8, 4))?;
        assert!(applies(&q, &k, &v));
        let f64s = [&q, &k, &v].map(|t| t.to_dtype(DType::F64));
        let [q64, k64, v64] = [&f64s[0], &f64s[1], &f64s[2]].map(|t| t.as_ref().expect("f64"));
        assert!(!applies(q64, k64, v64));
        assert!(!applies(&q.to_dtype(DType::F16)?, &k, &v));
        assert!(!applies(&q, &k.narrow(2, 0, 4)?, &v));
        assert!(!applies(&q, &k, &v.narrow(1, 0, 2)?));
        assert!(!applies(&q.narrow(1, 0, 0)?, &k, &v));
        Ok(())
    }

    #[test]
    fn forward_matches_the_naive_and_the_chunked_attention() -> Result<()> {
        on_both_pools(|| {
            for shape in SHAPES {
                let [q, k, v, _] = inputs(shape)?;
                let fused = chunked_attention(&q, &k, &v)?;
                let want = naive(&q, &k, &v)?;
                let chunked = forward_chunks(&q, &k, &v, chunk_for(&q, &k)?)?;
                let (to_naive, to_chunked) = (
                    relative_diff(&fused, &want)?,
                    relative_diff(&fused, &chunked)?,
                );
                assert!(to_naive <= 1e-5, "{shape:?}: {to_naive:e} from the naive");
                assert!(
                    to_chunked <= 1e-5,
                    "{shape:?}: {to_chunked:e} from the chunked"
                );
                // Through the graph node: the same values.
                let tracked = chunked_attention(Var::from_tensor(&q)?.as_tensor(), &k, &v)?;
                assert_eq!(relative_diff(&tracked, &fused)?, 0.0, "{shape:?}: node");
            }
            Ok(())
        })
    }

    #[test]
    fn strided_inputs_are_made_contiguous() -> Result<()> {
        let [q, k, v, _] = inputs((2, 40, 30, 8, 8))?;
        let kt = k.transpose(1, 2)?.contiguous()?.transpose(1, 2)?;
        assert!(!kt.is_contiguous());
        let diff = relative_diff(&chunked_attention(&q, &kt, &v)?, &naive(&q, &k, &v)?)?;
        assert!(diff <= 1e-5, "{diff:e}");
        Ok(())
    }

    #[test]
    fn backward_matches_autograd_of_the_naive_attention() -> Result<()> {
        on_both_pools(|| {
            for shape in SHAPES {
                let [q, k, v, weight] = inputs(shape)?;
                let vars = [&q, &k, &v].map(|t| Var::from_tensor(t).expect("var"));
                let [q, k, v] = [&vars[0], &vars[1], &vars[2]].map(Var::as_tensor);
                let want = naive(q, k, v)?.mul(&weight)?.sum_all()?.backward()?;
                let got = chunked_attention(q, k, v)?
                    .mul(&weight)?
                    .sum_all()?
                    .backward()?;
                for (name, x) in [("q", q), ("k", k), ("v", v)] {
                    let diff = relative_diff(
                        got.get(x).expect("fused gradient"),
                        want.get(x).expect("naive gradient"),
                    )?;
                    assert!(diff <= 1e-5, "{shape:?} d{name}: {diff:e}");
                }
            }
            Ok(())
        })
    }

    /// The f64 tensor-op path's gradients agree with finite differences (`attention.rs`); the
    /// fused kernel's f32 gradients agree with them to f32 precision.
    #[test]
    fn gradients_agree_with_the_f64_tensor_op_path() -> Result<()> {
        on_both_pools(|| {
            for shape in [(2, 100, 70, 8, 6), (1, 130, 1100, 64, 64)] {
                let [q, k, v, weight] = inputs(shape)?;
                let grads = |dtype: DType| -> Result<Vec<Tensor>> {
                    let vars =
                        [&q, &k, &v].map(|t| t.to_dtype(dtype).and_then(|t| Var::from_tensor(&t)));
                    let mut tensors = Vec::new();
                    for var in vars {
                        tensors.push(var?.as_tensor().clone());
                    }
                    let out = chunked_attention(&tensors[0], &tensors[1], &tensors[2])?;
                    let grads = out.mul(&weight.to_dtype(dtype)?)?.sum_all()?.backward()?;
                    tensors
                        .iter()
                        .map(|t| grads.get(t).expect("gradient").to_dtype(DType::F32))
                        .collect()
                };
                let (fused, exact) = (grads(DType::F32)?, grads(DType::F64)?);
                for (name, (got, want)) in ["q", "k", "v"].iter().zip(fused.iter().zip(&exact)) {
                    let diff = relative_diff(got, want)?;
                    assert!(diff <= 1e-5, "{shape:?} d{name}: {diff:e}");
                }
            }
            Ok(())
        })
    }

    #[test]
    fn only_tracked_inputs_get_gradients() -> Result<()> {
        on_both_pools(|| {
            let [q, k, v, weight] = inputs((1, 70, 50, 8, 6))?;
            let all = |tracked: [bool; 3]| -> Result<Vec<Option<Tensor>>> {
                let args = [&q, &k, &v].map(|t| t.copy().expect("copy"));
                let vars =
                    [&args[0], &args[1], &args[2]].map(|t| Var::from_tensor(t).expect("var"));
                let args: Vec<Tensor> = (0..3)
                    .map(|i| {
                        if tracked[i] {
                            vars[i].as_tensor().clone()
                        } else {
                            args[i].clone()
                        }
                    })
                    .collect();
                let grads = chunked_attention(&args[0], &args[1], &args[2])?
                    .mul(&weight)?
                    .sum_all()?
                    .backward()?;
                Ok(args.iter().map(|t| grads.get(t).cloned()).collect())
            };
            let reference = all([true; 3])?;
            for mask in 1..7 {
                let tracked = [mask & 1 != 0, mask & 2 != 0, mask & 4 != 0];
                let grads = all(tracked)?;
                for i in 0..3 {
                    match (&grads[i], tracked[i]) {
                        (Some(g), true) => {
                            let want = reference[i].as_ref().expect("reference gradient");
                            assert_eq!(relative_diff(g, want)?, 0.0, "{tracked:?} [{i}]");
                        }
                        (None, false) => {}
                        (g, _) => panic!("{tracked:?} [{i}]: gradient {:?}", g.is_some()),
                    }
                }
            }
            Ok(())
        })
    }

    /// Tiles and shares run in any order on any thread: the values never depend on it.
    #[test]
    fn results_do_not_depend_on_the_threads() -> Result<()> {
        let [q, k, v, weight] = inputs((1, 300, 500, 40, 40))?;
        let run = || -> Result<(Tensor, Tensor, Tensor)> {
            let q = Var::from_tensor(&q)?;
            let out = chunked_attention(q.as_tensor(), &k, &v)?;
            let grads = out.mul(&weight)?.sum_all()?.backward()?;
            Ok((
                out,
                grads.get(q.as_tensor()).expect("dq").clone(),
                q.as_tensor().clone(),
            ))
        };
        let (out, dq, _) = run()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .map_err(candle_core::Error::wrap)?;
        let (out3, dq3, _) = pool.install(run)?;
        assert_eq!(relative_diff(&out3, &out)?, 0.0);
        assert_eq!(relative_diff(&dq3, &dq)?, 0.0);
        Ok(())
    }
}
