//! The input gradient of a GroupNorm or LayerNorm, optionally followed by a SiLU, for f32
//! CPU tensors in one kernel.
//!
//! The tensor-op form is about fifteen passes over the tensor, each into a fresh buffer. Here
//! each normalised group (a row: a group of channels × positions, or one token's features) is
//! read three times while it sits in cache: its statistics (two-pass, as the forward), then
//! `ĝ = γ · ∂L/∂y · SiLU′(y)` with the sums of `ĝ` and `ĝ · x̂`, then
//! `∂L/∂x = (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂)) / σ`. Rows run in parallel on rayon's pool.

use rayon::prelude::*;

use super::fast_exp;
use super::fused_cpu::{moments, run_serially};

/// How γ and β map onto a row's elements.
#[derive(Debug, Clone, Copy)]
pub(super) enum RowAffine {
    /// GroupNorm: a row is `channels_per_group` channels of `channel_len` positions each;
    /// row r starts at channel `(r % groups) · channels_per_group`.
    PerChannel {
        groups: usize,
        channels_per_group: usize,
        channel_len: usize,
    },
    /// LayerNorm: γ and β per element of the row.
    PerElement,
}

/// A normalisation's frozen parameters as the kernel reads them.
pub(super) struct NormParams<'a> {
    pub affine: RowAffine,
    /// γ `[C]` or `[D]`.
    pub weight: &'a [f32],
    /// β, only when a SiLU follows the affine (its derivative needs the pre-activation).
    pub silu_bias: Option<&'a [f32]>,
    pub eps: f64,
}

/// A task's rows: the output, x and the gradient.
type RowsTask<'a> = (&'a mut [f32], (&'a [f32], &'a [f32]));

/// ∂L/∂x for `x` and `grad` (same length, `rows` rows).
pub(super) fn input_gradient(x: &[f32], grad: &[f32], rows: usize, p: &NormParams) -> Vec<f32> {
    let row_len = x.len() / rows.max(1);
    let mut out = vec![0f32; x.len()];
    // Rows of a layer norm are short: hand the pool a few dozen at a time.
    let rows_per_task = (4096 / row_len.max(1)).max(1);
    let chunk = rows_per_task * row_len;
    let task = |(index, (out, (x, g))): (usize, RowsTask)| {
        let rows = out
            .chunks_mut(row_len)
            .zip(x.chunks(row_len).zip(g.chunks(row_len)));
        for (r, (out, (x, g))) in rows.enumerate() {
            wide::row_gradient(index * rows_per_task + r, x, g, out, p);
        }
    };
    if run_serially(x.len()) {
        out.chunks_mut(chunk)
            .zip(x.chunks(chunk).zip(grad.chunks(chunk)))
            .enumerate()
            .for_each(task);
    } else {
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(grad.par_chunks(chunk)))
            .enumerate()
            .for_each(task);
    }
    out
}

/// One row's gradient, written to `out`.
#[inline(always)]
fn row_gradient_impl(row: usize, x: &[f32], g: &[f32], out: &mut [f32], p: &NormParams) {
    let (mean, rstd) = moments(x, p.eps);
    let mut sums = Sums::default();
    match p.affine {
        RowAffine::PerChannel {
            groups,
            channels_per_group,
            channel_len,
        } => {
            let first = (row % groups) * channels_per_group;
            let channels = out
                .chunks_mut(channel_len)
                .zip(x.chunks(channel_len).zip(g.chunks(channel_len)));
            for (c, (out, (x, g))) in (first..).zip(channels) {
                let gamma = p.weight[c];
                let beta = p.silu_bias.map(|b| b[c]);
                scaled_gradient(x, g, out, (mean, rstd), |_| (gamma, beta), &mut sums);
            }
        }
        RowAffine::PerElement => {
            let at = |i: usize| (p.weight[i], p.silu_bias.map(|b| b[i]));
            scaled_gradient(x, g, out, (mean, rstd), at, &mut sums);
        }
    }
    let n = x.len() as f64;
    let (g_mean, proj) = ((sums.g / n) as f32, (sums.gx / n) as f32);
    for (o, &x) in out.iter_mut().zip(x) {
        let normed = (x - mean) * rstd;
        *o = (*o - g_mean - normed * proj) * rstd;
    }
}

/// Σĝ and Σĝ·x̂ of a row, in f64 across blocks (f32 within a block, as the forward's sums).
#[derive(Default)]
struct Sums {
    g: f64,
    gx: f64,
}

/// `out[i] = ĝ_i = γ_i · g_i · SiLU′(γ_i x̂_i + β_i)` (no SiLU factor without β), adding
/// `ĝ` and `ĝ · x̂` to `sums`. `at(i)` gives (γ, β) of element i of this slice.
#[inline(always)]
fn scaled_gradient(
    x: &[f32],
    g: &[f32],
    out: &mut [f32],
    (mean, rstd): (f32, f32),
    at: impl Fn(usize) -> (f32, Option<f32>),
    sums: &mut Sums,
) {
    // Independent lanes, so that the sums vectorise; blocks short enough for f32.
    const LANES: usize = 16;
    const BLOCK: usize = 64 * LANES;
    let element = |i: usize, x: f32, g: f32| {
        let (gamma, beta) = at(i);
        let normed = (x - mean) * rstd;
        let slope = beta.map_or(1.0, |beta| silu_slope(gamma * normed + beta));
        (gamma * g * slope, normed)
    };
    for (block, ((out, x), g)) in out
        .chunks_mut(BLOCK)
        .zip(x.chunks(BLOCK))
        .zip(g.chunks(BLOCK))
        .enumerate()
    {
        let (mut lanes_g, mut lanes_gx) = ([0f32; LANES], [0f32; LANES]);
        let start = block * BLOCK;
        let whole = out.len() / LANES * LANES;
        let (out_whole, out_rest) = out.split_at_mut(whole);
        for (k, ((o, x), g)) in out_whole
            .chunks_exact_mut(LANES)
            .zip(x.chunks_exact(LANES))
            .zip(g.chunks_exact(LANES))
            .enumerate()
        {
            for l in 0..LANES {
                let (scaled, normed) = element(start + k * LANES + l, x[l], g[l]);
                o[l] = scaled;
                lanes_g[l] += scaled;
                lanes_gx[l] += scaled * normed;
            }
        }
        let mut rest = (0f32, 0f32);
        for (i, o) in out_rest.iter_mut().enumerate() {
            let (scaled, normed) = element(start + whole + i, x[whole + i], g[whole + i]);
            *o = scaled;
            rest.0 += scaled;
            rest.1 += scaled * normed;
        }
        sums.g += f64::from(lanes_g.iter().sum::<f32>() + rest.0);
        sums.gx += f64::from(lanes_gx.iter().sum::<f32>() + rest.1);
    }
}

/// d/dy of `y · σ(y)`: `σ(y) · (1 + y · (1 − σ(y)))`.
#[inline(always)]
fn silu_slope(y: f32) -> f32 {
    let sigmoid = 1.0 / (1.0 + fast_exp::exp(-y));
    sigmoid * (1.0 + y * (1.0 - sigmoid))
}

/// [`row_gradient_impl`] at the CPU's widest vectors: the same loops (sums in fixed lanes; the
/// exponential's fused multiply-adds are exact in every build), so the same values at every
/// width.
mod wide {
    use super::super::simd::dispatch;
    use super::{NormParams, row_gradient_impl};

    dispatch!(row_gradient, row_gradient_impl, (row: usize, x: &[f32], g: &[f32], out: &mut [f32], p: &NormParams));
}
