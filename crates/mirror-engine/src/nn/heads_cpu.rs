//! Multi-head attention over packed `[B, S, heads·d]` f32 CPU tensors as one graph node.
//!
//! Split into heads with tensor ops, every attention layer adds about seventeen nodes to the
//! autograd graph (a reshape, a transpose, a copy and a reshape for each of q, k, v and the
//! output, and q's scaling), and candle's backward gives each a fresh zeroed buffer and a sum
//! of the size of the activations. Here the op itself copies the heads apart (q scaled on
//! the way), runs the fused kernel of [`super::attention_cpu`] and copies the output's heads
//! back together; its backward splits what it reads and merges the three gradients the same
//! way. Values are those of the tensor-op form bit for bit.

use std::borrow::Cow;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention_cpu::{self, Dims};
use super::fused_cpu::run_serially;
use super::matmul_cpu::cpu_values as values;

/// The sizes of one packed tensor: `[batch, seq, heads·width]`.
#[derive(Debug, Clone, Copy)]
struct Packed {
    batch: usize,
    seq: usize,
    heads: usize,
    width: usize,
}

impl Packed {
    fn of(dims: &[usize], heads: usize) -> Result<Self> {
        let [batch, seq, features] = *dims else {
            candle_core::bail!("multi-head attention: {dims:?} is not [batch, seq, features]");
        };
        if heads == 0 || !features.is_multiple_of(heads) {
            candle_core::bail!("multi-head attention: {features} features, {heads} heads");
        }
        Ok(Self {
            batch,
            seq,
            heads,
            width: features / heads,
        })
    }
}

/// `[B, S, heads·w]` → `[B·heads, S, w]`, every value times `scale`.
fn split(x: &[f32], p: Packed, scale: f32) -> Vec<f32> {
    let Packed {
        seq, heads, width, ..
    } = p;
    let mut out = vec![0f32; x.len()];
    let head = |(row, out): (usize, &mut [f32])| {
        let (b, h) = (row / heads, row % heads);
        for (i, out) in out.chunks_exact_mut(width).enumerate() {
            let src = &x[((b * seq + i) * heads + h) * width..][..width];
            for (o, &v) in out.iter_mut().zip(src) {
                *o = v * scale;
            }
        }
    };
    if run_serially(x.len()) {
        out.chunks_mut(seq * width).enumerate().for_each(head);
    } else {
        out.par_chunks_mut(seq * width).enumerate().for_each(head);
    }
    out
}

/// `[B·heads, S, w]` → `[B, S, heads·w]`, every value times `scale`.
fn merge(x: &[f32], p: Packed, scale: f32) -> Vec<f32> {
    let Packed {
        seq, heads, width, ..
    } = p;
    let mut out = vec![0f32; x.len()];
    let token = |(index, out): (usize, &mut [f32])| {
        let (b, i) = (index / seq, index % seq);
        for (h, out) in out.chunks_exact_mut(width).enumerate() {
            let src = &x[((b * heads + h) * seq + i) * width..][..width];
            for (o, &v) in out.iter_mut().zip(src) {
                *o = v * scale;
            }
        }
    };
    if run_serially(x.len()) {
        out.chunks_mut(heads * width).enumerate().for_each(token);
    } else {
        out.par_chunks_mut(heads * width)
            .enumerate()
            .for_each(token);
    }
    out
}

/// Whether [`attention`] takes these inputs: f32 CPU tensors `[B, S, heads·d]`,
/// `[B, L, heads·d]`, `[B, L, heads·dv]`, none of them empty.
pub(super) fn applies(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> bool {
    let (Ok(qd), Ok(kd), Ok(vd)) = (q.dims3(), k.dims3(), v.dims3()) else {
        return false;
    };
    let splits = |features: usize| heads > 0 && features.is_multiple_of(heads);
    [q, k, v].into_iter().all(super::matmul_cpu::f32_on_cpu)
        && qd.0 == kd.0
        && kd.0 == vd.0
        && qd.2 == kd.2
        && kd.1 == vd.1
        && splits(qd.2)
        && splits(vd.2)
        && [qd.0, qd.1, qd.2, kd.1, vd.2].iter().all(|&n| n > 0)
}

/// `softmax((q·scale) kᵀ) v` per head, for inputs that [`applies`] accepts: `[B, S, heads·dv]`,
/// one graph node when any input tracks a gradient.
pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let op = PackedAttention {
        heads,
        scale: scale as f32,
        lse: Mutex::new(None),
    };
    if q.track_op() || k.track_op() || v.track_op() {
        q.apply_op3(&k, &v, op)
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)
    }
}

struct PackedAttention {
    heads: usize,
    scale: f32,
    /// `[B·heads, S]`, set by the forward.
    lse: Mutex<Option<Vec<f32>>>,
}

impl PackedAttention {
    /// The packed sizes of q, k and v, and the kernel's sizes over the split heads.
    fn sizes(&self, q: &[usize], k: &[usize], v: &[usize]) -> Result<([Packed; 3], Dims)> {
        let of = |dims| Packed::of(dims, self.heads);
        let (pq, pk, pv) = (of(q)?, of(k)?, of(v)?);
        let dims = Dims::of(
            &[pq.batch * self.heads, pq.seq, pq.width],
            &[pk.batch * self.heads, pk.seq, pk.width],
            &[pv.batch * self.heads, pv.seq, pv.width],
        )?;
        if pq.batch != pk.batch || pk.batch != pv.batch {
            candle_core::bail!("multi-head attention: batches {q:?}, {k:?}, {v:?} differ");
        }
        Ok(([pq, pk, pv], dims))
    }
}

impl CustomOp3 for PackedAttention {
    fn name(&self) -> &'static str {
        "multi-head-attention"
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
        let ([pq, pk, pv], dims) = self.sizes(q_layout.dims(), k_layout.dims(), v_layout.dims())?;
        let _stage = super::profile::stage(|| format!("attention forward {}", dims.describe()));
        let q = split(values(q, q_layout)?, pq, self.scale);
        let k = split(values(k, k_layout)?, pk, 1.0);
        let v = split(values(v, v_layout)?, pv, 1.0);
        let (out, lse) = attention_cpu::forward(dims, &q, &k, &v);
        if let Ok(mut saved) = self.lse.lock() {
            *saved = Some(lse);
        }
        let out_packed = Packed {
            width: dims.dv,
            ..pq
        };
        Ok((
            CpuStorage::F32(merge(&out, out_packed, 1.0)),
            Shape::from((pq.batch, pq.seq, self.heads * dims.dv)),
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
        let ([pq, pk, pv], dims) = self.sizes(q.dims(), k.dims(), v.dims())?;
        let _stage = super::profile::stage(|| format!("attention backward {}", dims.describe()));
        if grad_out.dims() != out.dims() {
            candle_core::bail!("multi-head attention: gradient {:?}", grad_out.dims());
        }
        let pout = Packed {
            width: dims.dv,
            ..pq
        };
        // q enters the kernel scaled; the output and its gradient have the output's widths.
        let layouts = [
            (pq, self.scale),
            (pk, 1.0),
            (pv, 1.0),
            (pout, 1.0),
            (pout, 1.0),
        ];
        let (grad_q, grad_k, grad_v) = attention_cpu::backward_of_tensors(
            dims,
            &self.lse,
            [q, k, v, out, grad_out],
            |index, values| {
                let (packed, scale) = layouts[index];
                Cow::Owned(split(values, packed, scale))
            },
        )?;
        // q entered the kernel scaled: its gradient carries the scale once more.
        let tensor = |values: Option<Vec<f32>>, packed: Packed, scale: f32, like: &Tensor| {
            values
                .map(|values| {
                    Tensor::from_vec(merge(&values, packed, scale), like.shape(), like.device())
                })
                .transpose()
        };
        Ok((
            tensor(grad_q, pq, self.scale, q)?,
            tensor(grad_k, pk, 1.0, k)?,
            tensor(grad_v, pv, 1.0, v)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::attention::{chunked_attention, merge_heads, split_heads};
    use super::super::attention_cpu::tests::on_both_pools;
    use super::super::finite_differences::central_differences;
    use super::*;
    use candle_core::{DType, Device, Var};

    /// `(batch, queries, keys, heads, d, dv)`: self- and cross-attention, odd widths, one key.
    const SHAPES: [(usize, usize, usize, usize, usize, usize); 4] = [
        (2, 37, 23, 3, 8, 5),
        (1, 64, 64, 8, 5, 5),
        (2, 30, 77, 2, 40, 40),
        (1, 9, 1, 4, 4, 6),
    ];

    /// q `[B, S, heads·d]`, k, v and a weight for the loss `Σ out ∘ weight`.
    fn inputs(
        (batch, queries, keys, heads, d, dv): (usize, usize, usize, usize, usize, usize),
        dtype: DType,
    ) -> Result<[Tensor; 4]> {
        let dev = Device::Cpu;
        let t = |n: usize, w: usize| {
            Tensor::randn(0f32, 1., (batch, n, heads * w), &dev)?.to_dtype(dtype)
        };
        Ok([t(queries, d)?, t(keys, d)?, t(keys, dv)?, t(queries, dv)?])
    }

    /// The tensor-op form the UNet used before: heads split with tensor ops, q scaled, the
    /// fused attention, heads merged.
    fn tensor_ops(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
        let out = chunked_attention(
            &(split_heads(q, heads)? * scale)?,
            &split_heads(k, heads)?,
            &split_heads(v, heads)?,
        )?;
        merge_heads(&out, q.dim(0)?, heads)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        let diff = (a - b)?.abs()?.flatten_all()?.max(0)?;
        diff.to_dtype(DType::F64)?.to_scalar::<f64>()
    }

    /// Output and all three gradients, on the default pool and on three threads, equal the
    /// tensor-op form's bit for bit.
    #[test]
    fn equals_the_tensor_op_form_forward_and_backward() -> Result<()> {
        let check = || -> Result<()> {
            for shape in SHAPES {
                let (heads, d) = (shape.3, shape.4);
                let scale = 1.0 / (d as f64).sqrt();
                let [q, k, v, weight] = inputs(shape, DType::F32)?;
                let vars = [&q, &k, &v].map(|t| Var::from_tensor(t).expect("var"));
                let [q, k, v] = [&vars[0], &vars[1], &vars[2]].map(|v| v.as_tensor());
                assert!(applies(q, k, v, heads));
                let got = attention(q, k, v, heads, scale)?;
                let want = tensor_ops(q, k, v, heads, scale)?;
                assert_eq!(max_diff(&got, &want)?, 0.0, "{shape:?}: forward");
                let got_grads = (got * &weight)?.sum_all()?.backward()?;
                let want_grads = (want * &weight)?.sum_all()?.backward()?;
                for (name, input) in ["q", "k", "v"].iter().zip([q, k, v]) {
                    let got = got_grads.get(input).expect("gradient");
                    let want = want_grads.get(input).expect("gradient");
                    assert_eq!(max_diff(got, want)?, 0.0, "{shape:?}: ∂/∂{name}");
                }
            }
            Ok(())
        };
        on_both_pools(check)
    }

    /// The f64 form (tensor ops) against central finite differences, and the f32 node
    /// against the f64 form.
    #[test]
    fn gradients_agree_with_finite_differences() -> Result<()> {
        let shape = (2, 3, 4, 2, 3, 2);
        let (heads, scale) = (shape.3, 0.6);
        let [q, k, v, weight] = inputs(shape, DType::F64)?;
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
            (crate::nn::multi_head_attention(q, k, v, heads, scale)? * &weight)?.sum_all()
        };
        let vars = [&q, &k, &v].map(|t| Var::from_tensor(t).expect("var"));
        let [qv, kv, vv] = [&vars[0], &vars[1], &vars[2]].map(|v| v.as_tensor());
        let grads64 = loss(qv, kv, vv)?.backward()?;
        let to32 = |t: &Tensor| t.to_dtype(DType::F32);
        let vars32 = [&q, &k, &v].map(|t| Var::from_tensor(&to32(t).expect("f32")).expect("var"));
        let [q32, k32, v32] = [&vars32[0], &vars32[1], &vars32[2]].map(|v| v.as_tensor());
        let out32 = (attention(q32, k32, v32, heads, scale)? * to32(&weight)?)?.sum_all()?;
        let grads32 = out32.backward()?;
        for (input, (input32, which)) in [qv, kv, vv].iter().zip([(q32, 0), (k32, 1), (v32, 2)]) {
            let analytic = grads64.get(input).expect("gradient");
            let numeric = central_differences(input, 1e-6, |moved| {
                let mut args = [q.clone(), k.clone(), v.clone()];
                args[which] = moved.clone();
                loss(&args[0], &args[1], &args[2])?.to_scalar::<f64>()
            })?;
            let analytic_values = analytic.flatten_all()?.to_vec1::<f64>()?;
            for (i, (a, fd)) in analytic_values.iter().zip(numeric).enumerate() {
                assert!(
                    (fd - a).abs() < 1e-6 * (1.0 + a.abs()),
                    "[{which}][{i}] {fd} vs {a}"
                );
            }
            let node = grads32
                .get(input32)
                .expect("gradient")
                .to_dtype(DType::F64)?;
            assert!(max_diff(&node, analytic)? < 1e-5, "input {which}: f32 node");
        }
        Ok(())
    }

    /// Cross-attention as the UNet runs it on a gradient pass: only q tracks, and only q gets
    /// a gradient.
    #[test]
    fn only_tracked_inputs_get_gradients() -> Result<()> {
        let [q, k, v, weight] = inputs((2, 6, 5, 2, 4, 4), DType::F32)?;
        let q = Var::from_tensor(&q)?;
        let out = attention(q.as_tensor(), &k, &v, 2, 0.5)?;
        let grads = (out * weight)?.sum_all()?.backward()?;
        assert!(grads.get(q.as_tensor()).is_some());
        assert!(grads.get(&k).is_none() && grads.get(&v).is_none());
        Ok(())
    }

    #[test]
    fn only_f32_cpu_inputs_whose_features_split_into_the_heads_are_taken() -> Result<()> {
        let [q, k, v, _] = inputs((1, 4, 3, 2, 4, 6), DType::F32)?;
        assert!(applies(&q, &k, &v, 2));
        assert!(!applies(&q, &k, &v, 3));
        assert!(!applies(&q, &k, &v, 0));
        assert!(!applies(&q.to_dtype(DType::F64)?, &k, &v, 2));
        assert!(!applies(&q, &k.narrow(1, 0, 2)?, &v, 2));
        Ok(())
    }
}
