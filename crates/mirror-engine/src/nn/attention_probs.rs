//! Attention probabilities `softmax(q kᵀ)` as one autograd node, for the layers whose maps
//! are recorded and differentiated (MirrorDiffusion's guidance).
//!
//! Written with tensor ops, candle's graph keeps the scores, the centred scores, their
//! exponentials and the probabilities of every such layer until the backward pass; this node
//! keeps only `q`, `k` and the probabilities, and its backward is PyTorch's softmax and
//! matmul backward: `dS = P ⊙ (dP − Σⱼ dP ⊙ P)`, `dq = dS k`, `dk = dSᵀ q`. The forward is
//! the same ops as [`super::softmax_last_dim`]'s gradient form, so the values are unchanged.

use candle_core::{D, Result, Tensor};

use super::precomputed::{PairGradient, attach_pair};

/// `softmax(q kᵀ)` over the keys for `q` `[rows, queries, d]` (already scaled) and `k`
/// `[rows, keys, d]`: `[rows, queries, keys]`, differentiable in both.
pub fn attention_probabilities(q: &Tensor, k: &Tensor) -> Result<Tensor> {
    let probs = softmax_of_scores(&q.detach().matmul(&k.detach().t()?)?)?;
    if !(q.track_op() || k.track_op()) {
        return Ok(probs);
    }
    attach_pair(q, k, probs, ProbabilitiesGradient)
}

/// Softmax over the last dimension with tensor ops, differentiable where `scores` tracks a
/// gradient ([`super::softmax_last_dim`]'s gradient form). Subtracting the (detached) row
/// max changes nothing mathematically; it keeps exp finite.
pub(super) fn softmax_of_scores(scores: &Tensor) -> Result<Tensor> {
    let max = scores.max_keepdim(D::Minus1)?.detach();
    let e = scores.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// softmax's and the product's backward.
struct ProbabilitiesGradient;

impl PairGradient for ProbabilitiesGradient {
    const NAME: &'static str = "attention probabilities";

    fn gradients(
        &self,
        q: &Tensor,
        k: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _stage = super::profile::stage(|| {
            format!("attention probabilities backward {:?}", probs.dims())
        });
        let (p, dp) = (probs.detach(), grad.detach());
        let row_dot = (&dp * &p)?.sum_keepdim(D::Minus1)?;
        let ds = (dp.broadcast_sub(&row_dot)? * &p)?;
        // Only for inputs that track one (the guidance's keys come from the prompt).
        let dq = q.track_op().then(|| ds.matmul(&k.detach())).transpose()?;
        let dk = k
            .track_op()
            .then(|| ds.t()?.matmul(&q.detach()))
            .transpose()?;
        Ok((dq, dk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::finite_differences::assert_pair_gradients;
    use candle_core::{DType, Device, Var};

    /// A scalar of the probabilities that weighs every entry differently.
    fn weighted_sum(p: &Tensor) -> Result<Tensor> {
        let weights = Tensor::arange(0f64, p.elem_count() as f64, p.device())?
            .reshape(p.shape())?
            .sin()?;
        (p * weights)?.sum_all()
    }

    fn inputs(device: &Device) -> Result<(Var, Var)> {
        let values = |n: usize, seed: f64| -> Vec<f64> {
            (0..n)
                .map(|i| (i as f64 * 0.7 + seed).sin() * 1.3)
                .collect()
        };
        let q = Var::from_vec(values(2 * 5 * 3, 0.1), (2, 5, 3), device)?;
        let k = Var::from_vec(values(2 * 4 * 3, 2.0), (2, 4, 3), device)?;
        Ok((q, k))
    }

    #[test]
    fn forward_is_the_gradient_forms_softmax_bit_for_bit() -> Result<()> {
        let device = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (3, 7, 5), &device)?;
        let k = Tensor::randn(0f32, 1.0, (3, 6, 5), &device)?;
        let (qv, kv) = (Var::from_tensor(&q)?, Var::from_tensor(&k)?);
        let node = attention_probabilities(qv.as_tensor(), kv.as_tensor())?;
        let tensor_ops =
            super::super::softmax_last_dim(&qv.as_tensor().matmul(&kv.as_tensor().t()?)?)?;
        let (a, b) = (
            node.flatten_all()?.to_vec1::<f32>()?,
            tensor_ops.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(a, b);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let (q, k) = inputs(&Device::Cpu)?;
        assert_pair_gradients((&q, &k), ["q", "k"], 1e-6, 1e-7, |q, k| {
            weighted_sum(&attention_probabilities(q, k)?)
        })
    }

    #[test]
    fn only_tracked_inputs_get_gradients() -> Result<()> {
        let device = Device::Cpu;
        let (q, k) = inputs(&device)?;
        let k = k.as_tensor().detach();
        let grads = weighted_sum(&attention_probabilities(q.as_tensor(), &k)?)?.backward()?;
        assert!(grads.get(q.as_tensor()).is_some());
        assert!(grads.get(&k).is_none());
        assert_eq!(q.dtype(), DType::F64);
        Ok(())
    }
}
