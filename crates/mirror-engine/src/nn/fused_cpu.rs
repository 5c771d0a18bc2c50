//! Fused CPU kernels for passes without gradient: GroupNorm (optionally followed by SiLU),
//! LayerNorm, quick GELU.
//!
//! The elementary forms are five to ten passes over the tensor, each into a fresh buffer
//! (and on the CPU each a hand-off to candle's thread pool). The norm kernels read the input
//! twice (mean, then the variance of the centred values, as PyTorch does) and write the
//! output once, in f32 whatever the storage type. They have no backward: callers use them
//! only when no gradient can flow.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

/// Storage types the kernels read and write, computed in f32.
pub(crate) trait Element: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;

    /// `out` and `xs` as f32 slices when the type is f32 (for the wide-vector kernels).
    fn as_f32<'o, 'x>(_out: &'o mut [Self], _xs: &'x [Self]) -> Option<(&'o mut [f32], &'x [f32])> {
        None
    }
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn as_f32<'o, 'x>(out: &'o mut [f32], xs: &'x [f32]) -> Option<(&'o mut [f32], &'x [f32])> {
        Some((out, xs))
    }
}

impl Element for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

impl Element for half::bf16 {
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}

/// Σ f(x): f32 lanes over short blocks (vectorised), the blocks summed in f64, so that a
/// million-element group loses no more precision than a short row.
#[inline(always)]
fn sum_of<E: Element>(xs: &[E], f: impl Fn(f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut total = 0f64;
    for block in xs.chunks(64 * LANES) {
        let mut lanes = [0f32; LANES];
        let mut full = block.chunks_exact(LANES);
        for chunk in &mut full {
            for (lane, v) in lanes.iter_mut().zip(chunk) {
                *lane += f(v.to_f32());
            }
        }
        let rest: f32 = full.remainder().iter().map(|v| f(v.to_f32())).sum();
        total += (lanes.iter().sum::<f32>() + rest) as f64;
    }
    total
}

/// (mean, 1/√(var + eps)) of a slice, two-pass.
#[inline(always)]
pub(crate) fn moments<E: Element>(xs: &[E], eps: f64) -> (f32, f32) {
    let n = xs.len() as f64;
    let mean = (sum_of(xs, |v| v) / n) as f32;
    let var = sum_of(xs, |v| (v - mean) * (v - mean)) / n;
    (mean, (1.0 / (var + eps).sqrt()) as f32)
}

/// Below this many elements a kernel runs on the calling thread: handing a few thousand
/// values to rayon's pool costs more than computing them. With one rayon thread the hand-off
/// never helps (the caller only waits for the pool's one worker), whatever the size.
const SERIAL_BELOW: usize = 1 << 15;

/// Whether a kernel over `len` elements should stay on the calling thread.
pub(crate) fn run_serially(len: usize) -> bool {
    len < SERIAL_BELOW || rayon::current_num_threads() == 1
}

/// `f(index, out chunk, input chunk)` for the matching `chunk`-sized pieces of `out` and
/// `xs`, serially or on rayon's pool as [`run_serially`] says. The pieces are independent, so
/// both ways give the same values.
pub(crate) fn for_each_chunk<A: Send, B: Sync>(
    out: &mut [A],
    xs: &[B],
    chunk: usize,
    f: impl Fn(usize, &mut [A], &[B]) + Sync + Send,
) {
    if run_serially(xs.len()) {
        for (index, (out, xs)) in out.chunks_mut(chunk).zip(xs.chunks(chunk)).enumerate() {
            f(index, out, xs);
        }
    } else {
        out.par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk))
            .enumerate()
            .for_each(|(index, (out, xs))| f(index, out, xs));
    }
}

/// Values per piece of work when an output is filled or summed on rayon's pool.
pub(crate) const PIECE_VALUES: usize = 1 << 16;

/// Every `row_len`-long row of `out` set by `fill(row index, row)`, serially or on rayon's
/// pool as [`run_serially`] says (on one thread, the first write to a large output, with its
/// page faults, took a third of a large linear layer's time).
pub(crate) fn fill_rows<E: Send>(
    out: &mut [E],
    row_len: usize,
    fill: impl Fn(usize, &mut [E]) + Sync,
) {
    let rows_per_piece = PIECE_VALUES.div_ceil(row_len).max(1);
    let piece = |(index, rows): (usize, &mut [E])| {
        for (i, row) in rows.chunks_exact_mut(row_len).enumerate() {
            fill(index * rows_per_piece + i, row);
        }
    };
    if run_serially(out.len()) {
        out.chunks_mut(row_len * rows_per_piece)
            .enumerate()
            .for_each(piece);
    } else {
        out.par_chunks_mut(row_len * rows_per_piece)
            .enumerate()
            .for_each(piece);
    }
}

/// `y · σ(y)`, with the vectorised exponential so that the normalisation loop stays in
/// vector registers.
#[inline(always)]
fn silu(y: f32) -> f32 {
    y / (1.0 + super::fast_exp::exp(-y))
}

/// The contiguous values of a kernel's input.
fn contiguous<'a, E: candle_core::WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [E]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<E>()?[start..end]),
        None => candle_core::bail!("norm kernel: input must be contiguous"),
    }
}

/// Dispatches `$f::<T>(values, layout)` on the storage type.
macro_rules! by_dtype {
    ($self:ident, $storage:ident, $layout:ident, $f:ident) => {
        match $storage {
            CpuStorage::F32(_) => Ok((
                CpuStorage::F32($self.$f(contiguous::<f32>($storage, $layout)?)),
                $layout.shape().clone(),
            )),
            CpuStorage::F16(_) => Ok((
                CpuStorage::F16($self.$f(contiguous::<half::f16>($storage, $layout)?)),
                $layout.shape().clone(),
            )),
            CpuStorage::BF16(_) => Ok((
                CpuStorage::BF16($self.$f(contiguous::<half::bf16>($storage, $layout)?)),
                $layout.shape().clone(),
            )),
            other => candle_core::bail!("norm kernel: unsupported dtype {:?}", other.dtype()),
        }
    };
}

/// GroupNorm over `[B, C, …]` with per-channel affine weights, then SiLU if `silu`.
#[derive(Debug, Clone)]
pub struct GroupNormOp {
    pub num_groups: usize,
    pub eps: f64,
    /// `[C]`, f32.
    pub weight: Vec<f32>,
    /// `[C]`, f32.
    pub bias: Vec<f32>,
    pub silu: bool,
    /// Elements per channel (the product of the dims after C).
    pub channel_len: usize,
}

impl GroupNormOp {
    /// The output of contiguous f32 values of shape `dims`.
    pub(crate) fn forward_f32(&self, xs: &[f32], dims: &[usize]) -> Result<Vec<f32>> {
        self.check(dims)?;
        Ok(self.run(xs))
    }

    fn check(&self, dims: &[usize]) -> Result<()> {
        if dims.len() < 2
            || dims[1] != self.weight.len()
            || !self.weight.len().is_multiple_of(self.num_groups)
            || dims.iter().product::<usize>() != dims[0] * dims[1] * self.channel_len
        {
            candle_core::bail!("fused group norm: input {dims:?} does not match the layer");
        }
        Ok(())
    }

    fn run<E: Element>(&self, xs: &[E]) -> Vec<E> {
        let channels = self.weight.len();
        let per_group = channels / self.num_groups;
        let group_len = per_group * self.channel_len;
        let mut out = vec![E::from_f32(0.0); xs.len()];
        for_each_chunk(&mut out, xs, group_len, |index, out, xs| {
            let first_channel = (index % self.num_groups) * per_group;
            match E::as_f32(out, xs) {
                Some((out, xs)) => wide::group(self, first_channel, out, xs),
                None => self.normalise_group(first_channel, out, xs),
            }
        });
        out
    }

    /// One group (`xs`, its channels from `first_channel` on) normalised into `out`.
    #[inline(always)]
    fn normalise_group<E: Element>(&self, first_channel: usize, out: &mut [E], xs: &[E]) {
        let (mean, rstd) = moments(xs, self.eps);
        let rows = out
            .chunks_mut(self.channel_len)
            .zip(xs.chunks(self.channel_len));
        for (c, (out, xs)) in (first_channel..).zip(rows) {
            let scale = self.weight[c] * rstd;
            let shift = self.bias[c] - mean * scale;
            for (o, x) in out.iter_mut().zip(xs) {
                let y = x.to_f32() * scale + shift;
                *o = E::from_f32(if self.silu { silu(y) } else { y });
            }
        }
    }
}

impl CustomOp1 for GroupNormOp {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.check(layout.dims())?;
        by_dtype!(self, storage, layout, run)
    }
}

/// LayerNorm over the last dimension with affine weights.
#[derive(Debug, Clone)]
pub struct LayerNormOp {
    pub eps: f64,
    /// `[D]`, f32.
    pub weight: Vec<f32>,
    /// `[D]`, f32.
    pub bias: Vec<f32>,
}

impl LayerNormOp {
    /// The output of contiguous f32 values of shape `dims`.
    pub(crate) fn forward_f32(&self, xs: &[f32], dims: &[usize]) -> Result<Vec<f32>> {
        self.check(dims)?;
        Ok(self.run(xs))
    }

    fn check(&self, dims: &[usize]) -> Result<()> {
        if dims.last() != Some(&self.weight.len()) {
            candle_core::bail!(
                "fused layer norm: input {dims:?} does not end in {}",
                self.weight.len()
            );
        }
        Ok(())
    }

    fn run<E: Element>(&self, xs: &[E]) -> Vec<E> {
        let mut out = vec![E::from_f32(0.0); xs.len()];
        self.run_into(xs, &mut out);
        out
    }

    /// The normalised rows of `xs` (rows of the weights' length) written to `out`, of the
    /// same length.
    pub(crate) fn run_into<E: Element>(&self, xs: &[E], out: &mut [E]) {
        let d = self.weight.len();
        // Rows are short: hand rayon a few dozen at a time.
        for_each_chunk(out, xs, d * 16, |_, out, xs| match E::as_f32(out, xs) {
            Some((out, xs)) => wide::rows(self, out, xs),
            None => self.normalise_rows(out, xs),
        });
    }

    /// Whole rows of `xs` normalised into `out`.
    #[inline(always)]
    fn normalise_rows<E: Element>(&self, out: &mut [E], xs: &[E]) {
        let d = self.weight.len();
        for (out, xs) in out.chunks_mut(d).zip(xs.chunks(d)) {
            let (mean, rstd) = moments(xs, self.eps);
            for ((o, x), (w, b)) in out
                .iter_mut()
                .zip(xs)
                .zip(self.weight.iter().zip(&self.bias))
            {
                *o = E::from_f32((x.to_f32() - mean) * rstd * w + b);
            }
        }
    }
}

/// The f32 norm kernels at the CPU's widest vectors: the same loops, so the same values at
/// every width (the sums run in 16 fixed lanes).
mod wide {
    use super::super::simd::dispatch;
    use super::{GroupNormOp, LayerNormOp};

    // Inlined into each width's copy: called through the dispatch, it would run at the
    // baseline width whatever the CPU has.
    #[inline(always)]
    fn group_impl(op: &GroupNormOp, first_channel: usize, out: &mut [f32], xs: &[f32]) {
        op.normalise_group(first_channel, out, xs);
    }

    #[inline(always)]
    fn rows_impl(op: &LayerNormOp, out: &mut [f32], xs: &[f32]) {
        op.normalise_rows(out, xs);
    }

    dispatch!(group, group_impl, (op: &GroupNormOp, first_channel: usize, out: &mut [f32], xs: &[f32]));
    dispatch!(rows, rows_impl, (op: &LayerNormOp, out: &mut [f32], xs: &[f32]));
}

impl CustomOp1 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.check(layout.dims())?;
        by_dtype!(self, storage, layout, run)
    }
}

/// `x · σ(1.702 x)` (CLIP's quick GELU), elementwise.
#[derive(Debug, Clone, Copy)]
pub struct QuickGeluOp;

impl QuickGeluOp {
    fn run<E: Element>(&self, xs: &[E]) -> Vec<E> {
        let mut out = vec![E::from_f32(0.0); xs.len()];
        for_each_chunk(&mut out, xs, 1 << 14, |_, out, xs| {
            for (o, x) in out.iter_mut().zip(xs) {
                let x = x.to_f32();
                *o = E::from_f32(x / (1.0 + (-1.702 * x).exp()));
            }
        });
        out
    }
}

impl CustomOp1 for QuickGeluOp {
    fn name(&self) -> &'static str {
        "fused-quick-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(self, storage, layout, run)
    }
}

/// Softmax over the last dimension of an f32 tensor: candle-nn's CPU kernel, row by row, with
/// a vectorised exponential ([`super::fast_exp`], within 2 ulp) in place of libm's scalar
/// one, kept on the calling thread when [`run_serially`] says so.
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxLastDimOp;

impl CustomOp1 for SoftmaxLastDimOp {
    fn name(&self) -> &'static str {
        "fused-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(_) = storage else {
            candle_core::bail!("softmax kernel: f32 only, got {:?}", storage.dtype());
        };
        let mut out = contiguous::<f32>(storage, layout)?.to_vec();
        softmax_rows_in_place(&mut out, layout);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// The same softmax written over its input (a fresh score block nobody else holds), so that
/// no second buffer of the block's size is zeroed and faulted in.
impl candle_core::InplaceOp1 for SoftmaxLastDimOp {
    fn name(&self) -> &'static str {
        "fused-softmax-last-dim-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("softmax kernel: f32 only, got {:?}", storage.dtype());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("in-place softmax: the scores are not contiguous");
        };
        softmax_rows_in_place(&mut values[start..end], layout);
        Ok(())
    }
}

/// The softmax of every row (the last dimension of `layout`) of `xs`, written over it: the
/// row's max, the shifted exponentials, their sum, the division. Row blocks of about 4096
/// values go to the pool unless [`run_serially`] says otherwise.
fn softmax_rows_in_place(xs: &mut [f32], layout: &Layout) {
    use candle_core::cpu::kernels::VecOps;
    let row = layout.dims().last().copied().unwrap_or(1).max(1);
    let softmax_rows = |rows: &mut [f32]| {
        for xs in rows.chunks_mut(row) {
            let mut max = f32::NEG_INFINITY;
            // SAFETY: `xs` holds `row` values.
            unsafe { f32::vec_reduce_max(xs.as_ptr(), &mut max, row) };
            super::fast_exp::exp_shifted_in_place(xs, max);
            let mut sum = 0f32;
            // SAFETY: `xs` holds `row` values.
            unsafe { f32::vec_reduce_sum(xs.as_ptr(), &mut sum, row) };
            for x in xs.iter_mut() {
                *x /= sum;
            }
        }
    };
    let chunk = (4096 / row).max(1) * row;
    if run_serially(xs.len()) {
        xs.chunks_mut(chunk).for_each(softmax_rows);
    } else {
        xs.par_chunks_mut(chunk).for_each(softmax_rows);
    }
}
