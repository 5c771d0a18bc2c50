//! Scaled-dot-product attention computed in query chunks, forward and backward.
//!
//! The naive form `softmax(q kᵀ) v` materialises the whole `[rows, queries, keys]`
//! probability matrix, and candle's autograd keeps several copies of it (scores, exponentials,
//! probabilities) until the backward pass: at SD 1.5's 64² latent that is gigabytes per layer.
//! Here the forward runs one block of queries at a time, and the backward recomputes each
//! block's probabilities from `q` and `k` (as FlashAttention does), so memory stays at one
//! block's `[rows, chunk, keys]` matrix whatever the image size. Only tensor ops are used, so
//! it runs on every device and dtype the engine supports. f32 CPU tensors take the fused
//! kernel of [`super::attention_cpu`] instead, which holds no block at all.

use candle_core::Tensor;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, D, Layout, MetalStorage, Result, Shape};

use super::precomputed::PrecomputedOutput;
use super::softmax_last_dim_of_owned;

/// Bytes one block's probability matrix may take (all rows of the batch together).
const CHUNK_BYTES: usize = 64 << 20;

/// Query rows per block for `rows` × `keys` probabilities of `elem_size` bytes.
fn chunk_len(rows: usize, queries: usize, keys: usize, elem_size: usize) -> usize {
    let per_query = (rows * keys * elem_size).max(1);
    (CHUNK_BYTES / per_query).clamp(1, queries.max(1))
}

/// `softmax(q kᵀ) v` for `q` `[rows, queries, d]` (already scaled), `k` `[rows, keys, d]`,
/// `v` `[rows, keys, dv]`. Differentiable in all three when they track gradients. On the CPU
/// in f32 it is the fused kernel, elsewhere query blocks of tensor ops.
pub fn chunked_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if super::attention_cpu::applies(q, k, v) {
        return super::attention_cpu::attention(q, k, v);
    }
    let chunk = chunk_for(q, k)?;
    let out = forward_chunks(&q.detach(), &k.detach(), &v.detach(), chunk)?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(out);
    }
    let output = PrecomputedOutput::new(out, "chunked attention");
    q.apply_op3(k, v, ChunkedAttention { output })
}

/// `softmax((q·scale) kᵀ) v` per head, for `q` `[B, S, heads·d]`, `k` `[B, L, heads·d]` and
/// `v` `[B, L, heads·dv]` in diffusers' layout (head h is features `h·d..(h+1)·d`); the
/// result is `[B, S, heads·dv]`, heads merged back the same way. On the CPU in f32 the heads
/// are split and merged inside one graph node ([`super::heads_cpu`]); elsewhere with tensor
/// ops around [`chunked_attention`].
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    if super::heads_cpu::applies(q, k, v, heads) {
        return super::heads_cpu::attention(q, k, v, heads, scale);
    }
    let batch = q.dim(0)?;
    let out = chunked_attention(
        &(split_heads(q, heads)? * scale)?,
        &split_heads(k, heads)?,
        &split_heads(v, heads)?,
    )?;
    merge_heads(&out, batch, heads)
}

/// `[B, S, heads·d]` → `[B·heads, S, d]` (row b·heads + h), contiguous for the products.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, features) = x.dims3()?;
    let d = features / heads.max(1);
    x.reshape((b, s, heads, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * heads, s, d))
}

/// `[B·heads, S, d]` → `[B, S, heads·d]`, the inverse of [`split_heads`].
pub fn merge_heads(x: &Tensor, batch: usize, heads: usize) -> Result<Tensor> {
    let (_, s, d) = x.dims3()?;
    x.reshape((batch, heads, s, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((batch, s, heads * d))
}

pub(super) fn chunk_for(q: &Tensor, k: &Tensor) -> Result<usize> {
    let (rows, queries, _) = q.dims3()?;
    Ok(chunk_len(
        rows,
        queries,
        k.dim(1)?,
        q.dtype().size_in_bytes(),
    ))
}

/// The forward pass, `chunk` queries at a time (no autograd graph).
pub(super) fn forward_chunks(q: &Tensor, k: &Tensor, v: &Tensor, chunk: usize) -> Result<Tensor> {
    let queries = q.dim(1)?;
    let kt = k.t()?;
    let mut blocks = Vec::with_capacity(queries.div_ceil(chunk));
    for start in (0..queries).step_by(chunk) {
        let len = chunk.min(queries - start);
        let probs = softmax_last_dim_of_owned(q.narrow(1, start, len)?.matmul(&kt)?)?;
        blocks.push(probs.matmul(v)?);
    }
    Tensor::cat(&blocks, 1)?.contiguous()
}

/// The attention's inputs, output and the output's gradient (all detached).
struct Saved<'a> {
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    out: &'a Tensor,
    grad_out: &'a Tensor,
}

/// Gradients of `softmax(q kᵀ) v` w.r.t. q, k and v, recomputing the probabilities of
/// `chunk` queries at a time.
fn backward_chunks(saved: &Saved, chunk: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let Saved {
        q,
        k,
        v,
        out,
        grad_out,
    } = *saved;
    let queries = q.dim(1)?;
    let (kt, vt) = (k.t()?, v.t()?);
    // Σ_j P_ij dP_ij = Σ_c dO_ic O_ic: the softmax Jacobian's row term, without P.
    let row_term = grad_out.mul(out)?.sum_keepdim(D::Minus1)?;
    let mut grad_q = Vec::with_capacity(queries.div_ceil(chunk));
    let mut grad_k = k.zeros_like()?;
    let mut grad_v = v.zeros_like()?;
    for start in (0..queries).step_by(chunk) {
        let len = chunk.min(queries - start);
        let q_block = q.narrow(1, start, len)?;
        let grad_block = grad_out.narrow(1, start, len)?;
        let probs = softmax_last_dim_of_owned(q_block.matmul(&kt)?)?;
        grad_v = (grad_v + probs.t()?.matmul(&grad_block)?)?;
        let grad_probs = grad_block.matmul(&vt)?;
        let grad_scores =
            probs.mul(&grad_probs.broadcast_sub(&row_term.narrow(1, start, len)?)?)?;
        grad_q.push(grad_scores.matmul(k)?);
        grad_k = (grad_k + grad_scores.t()?.matmul(&q_block)?)?;
    }
    Ok((Tensor::cat(&grad_q, 1)?, grad_k, grad_v))
}

/// The autograd node: its forward hands over the output already computed block by block,
/// its backward is [`backward_chunks`].
struct ChunkedAttention {
    output: PrecomputedOutput,
}

impl CustomOp3 for ChunkedAttention {
    fn name(&self) -> &'static str {
        "chunked-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.output.cuda()
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.output.metal()
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = Saved {
            q: &q.detach(),
            k: &k.detach(),
            v: &v.detach(),
            out: &out.detach(),
            grad_out: &grad_out.detach(),
        };
        let (grad_q, grad_k, grad_v) = backward_chunks(&saved, chunk_for(q, k)?)?;
        Ok((
            q.track_op().then_some(grad_q),
            k.track_op().then_some(grad_k),
            v.track_op().then_some(grad_v),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::softmax_last_dim;
    use super::*;
    use candle_core::{DType, Device, Var};

    fn naive(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        softmax_last_dim(&q.matmul(&k.t()?)?)?.matmul(v)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.flatten_all());
        d.and_then(|d| d.max(0))
            .and_then(|m| m.to_scalar::<f32>())
            .expect("difference")
    }

    /// Several chunks even at test sizes: rows·keys·4 bytes per query, a few queries per chunk.
    fn inputs(rows: usize, queries: usize, keys: usize) -> Result<(Var, Var, Var, Tensor)> {
        let dev = Device::Cpu;
        let q = Var::from_tensor(&(Tensor::randn(0f32, 1., (rows, queries, 8), &dev)? * 0.5)?)?;
        let k = Var::from_tensor(&Tensor::randn(0f32, 1., (rows, keys, 8), &dev)?)?;
        let v = Var::from_tensor(&Tensor::randn(0f32, 1., (rows, keys, 6), &dev)?)?;
        let weight = Tensor::randn(0f32, 1., (rows, queries, 6), &dev)?;
        Ok((q, k, v, weight))
    }

    #[test]
    fn chunk_len_splits_large_matrices_and_keeps_small_ones_whole() {
        assert_eq!(chunk_len(2, 10, 77, 4), 10);
        // SD 1.5 self-attention at 64², batch 2 with 8 heads: 4096 keys.
        let chunk = chunk_len(16, 4096, 4096, 4);
        assert!(chunk < 4096 && 16 * chunk * 4096 * 4 <= CHUNK_BYTES);
        assert_eq!(chunk_len(1 << 20, 5, 1 << 20, 4), 1);
    }

    #[test]
    fn forward_matches_the_naive_attention() -> Result<()> {
        let (q, k, v, _) = inputs(3, 100, 70)?;
        let whole = naive(q.as_tensor(), k.as_tensor(), v.as_tensor())?;
        for chunk in [1, 7, 33, 100] {
            let chunked = forward_chunks(q.as_tensor(), k.as_tensor(), v.as_tensor(), chunk)?;
            assert!(max_diff(&whole, &chunked) < 1e-5, "chunk {chunk}");
        }
        let tracked = chunked_attention(q.as_tensor(), k.as_tensor(), v.as_tensor())?;
        assert!(max_diff(&whole, &tracked) < 1e-5);
        // f64 inputs take the tensor-op path (f32 CPU ones the fused kernel), through the
        // graph node as well.
        let to64 = |t: &Var| t.as_tensor().to_dtype(DType::F64);
        let (q64, k64, v64) = (to64(&q)?, to64(&k)?, to64(&v)?);
        let var = Var::from_tensor(&q64)?;
        for q64 in [&q64, var.as_tensor()] {
            let out = chunked_attention(q64, &k64, &v64)?.to_dtype(DType::F32)?;
            assert!(max_diff(&whole, &out) < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn backward_matches_autograd_of_the_naive_attention_across_chunks() -> Result<()> {
        let (q, k, v, weight) = inputs(4, 50, 30)?;
        let out = naive(q.as_tensor(), k.as_tensor(), v.as_tensor())?;
        let naive_grads = out.mul(&weight)?.sum_all()?.backward()?;
        let detached = |t: &Tensor| t.detach();
        let (out, weight) = (out.detach(), weight.detach());
        let saved = Saved {
            q: &detached(q.as_tensor()),
            k: &detached(k.as_tensor()),
            v: &detached(v.as_tensor()),
            out: &out,
            grad_out: &weight,
        };
        for chunk in [1, 16, 50] {
            let grads = backward_chunks(&saved, chunk)?;
            for (name, var, got) in [
                ("q", &q, &grads.0),
                ("k", &k, &grads.1),
                ("v", &v, &grads.2),
            ] {
                let want = naive_grads.get(var.as_tensor()).expect("naive gradient");
                let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
                let diff = max_diff(want, got);
                assert!(
                    scale > 0.0 && diff <= 1e-5 * scale,
                    "{name}, chunk {chunk}: {diff} of {scale}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_agree_with_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let to64 = |t: &Tensor| t.to_dtype(DType::F64);
        let (q, k, v, weight) = inputs(2, 5, 7)?;
        let (q, k, v, weight) = (
            Var::from_tensor(&to64(q.as_tensor())?)?,
            Var::from_tensor(&to64(k.as_tensor())?)?,
            Var::from_tensor(&to64(v.as_tensor())?)?,
            to64(&weight)?,
        );
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<f64> {
            chunked_attention(q, k, v)?
                .mul(&weight)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let out = chunked_attention(q.as_tensor(), k.as_tensor(), v.as_tensor())?;
        let grads = out.mul(&weight)?.sum_all()?.backward()?;
        let eps = 1e-6;
        for which in 0..3 {
            let var = [&q, &k, &v][which];
            let grad = grads
                .get(var.as_tensor())
                .expect("gradient")
                .flatten_all()?;
            let grad = grad.to_vec1::<f64>()?;
            let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            for (i, g) in grad.iter().enumerate() {
                let shifted = |delta: f64| -> Result<f64> {
                    let mut x = base.clone();
                    x[i] += delta;
                    let x = Tensor::from_vec(x, var.as_tensor().shape(), &dev)?;
                    let mut args = [
                        q.as_tensor().clone(),
                        k.as_tensor().clone(),
                        v.as_tensor().clone(),
                    ];
                    args[which] = x;
                    loss(&args[0], &args[1], &args[2])
                };
                let fd = (shifted(eps)? - shifted(-eps)?) / (2.0 * eps);
                assert!(
                    (fd - g).abs() < 1e-6 * (1.0 + g.abs()),
                    "arg {which}[{i}]: fd {fd} vs {g}"
                );
            }
        }
        Ok(())
    }

    /// On the tensor-op path (f64) and on the fused kernel (f32).
    #[test]
    fn only_tracked_inputs_get_gradients() -> Result<()> {
        let (q, k, v, weight) = inputs(2, 6, 5)?;
        for dtype in [DType::F64, DType::F32] {
            let fixed_q = q.as_tensor().to_dtype(dtype)?.detach();
            let (k, v) = (
                Var::from_tensor(&k.as_tensor().to_dtype(dtype)?)?,
                Var::from_tensor(&v.as_tensor().to_dtype(dtype)?)?,
            );
            let grads = chunked_attention(&fixed_q, k.as_tensor(), v.as_tensor())?
                .mul(&weight.to_dtype(dtype)?)?
                .sum_all()?
                .backward()?;
            assert!(grads.get(&fixed_q).is_none(), "{dtype:?}");
            assert!(grads.get(k.as_tensor()).is_some() && grads.get(v.as_tensor()).is_some());
        }
        Ok(())
    }
}
