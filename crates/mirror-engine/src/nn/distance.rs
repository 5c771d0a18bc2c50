//! Squared distances `Σ (a − b)²` per leading row as one autograd node, for the attention-map
//! losses: written with tensor ops, candle's graph keeps the difference and its square (two
//! tensors of the maps' size per layer) until the backward pass; this node keeps only its
//! inputs, which the graph holds anyway, and recomputes the difference in the backward.

use candle_core::{Result, Tensor};

use super::precomputed::{PairGradient, attach_pair};

/// `Σ (a − b)²` over every dimension but the first: `[rows]` for `a`, `b` `[rows, …]` of one
/// shape, differentiable in both.
pub fn squared_distance_rows(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() || a.rank() < 2 {
        candle_core::bail!(
            "squared distance: shapes {:?} and {:?} must match, with rows first",
            a.dims(),
            b.dims()
        );
    }
    let inner: Vec<usize> = (1..a.rank()).collect();
    let distances = a.detach().sub(&b.detach())?.sqr()?.sum(inner)?;
    if !(a.track_op() || b.track_op()) {
        return Ok(distances);
    }
    attach_pair(a, b, distances, SquaredDistance)
}

/// `∂/∂a = 2 (a − b) · g` per row, `∂/∂b` its negative.
struct SquaredDistance;

impl PairGradient for SquaredDistance {
    const NAME: &'static str = "squared distance";

    fn gradients(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut per_row = grad.detach().dims().to_vec();
        per_row.resize(a.rank(), 1);
        let scale = (grad.detach().reshape(per_row)? * 2.0)?;
        let da = a.detach().sub(&b.detach())?.broadcast_mul(&scale)?;
        let db = b.track_op().then(|| da.neg()).transpose()?;
        Ok((a.track_op().then_some(da), db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::finite_differences::assert_pair_gradients;
    use candle_core::{Device, Var};

    fn values(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| (i as f64 * 0.37 + seed).sin()).collect()
    }

    /// A scalar that weighs the rows differently.
    fn weighted(d: &Tensor) -> Result<Tensor> {
        let w = Tensor::new(&[0.5f64, -1.25, 2.0], d.device())?;
        (d * w)?.sum_all()
    }

    #[test]
    fn values_are_the_tensor_ops_bit_for_bit() -> Result<()> {
        let device = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (3, 4, 5), &device)?;
        let b = Tensor::randn(0f32, 1.0, (3, 4, 5), &device)?;
        let tracked = Var::from_tensor(&a)?;
        let node = squared_distance_rows(tracked.as_tensor(), &b)?.to_vec1::<f32>()?;
        let ops = a.sub(&b)?.sqr()?.sum((1, 2))?.to_vec1::<f32>()?;
        assert_eq!(node, ops);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let device = Device::Cpu;
        let a = Var::from_vec(values(24, 0.3), (3, 2, 4), &device)?;
        let b = Var::from_vec(values(24, 1.9), (3, 2, 4), &device)?;
        assert_pair_gradients((&a, &b), ["a", "b"], 1e-6, 1e-7, |a, b| {
            weighted(&squared_distance_rows(a, b)?)
        })
    }

    #[test]
    fn mismatched_shapes_are_an_error() -> Result<()> {
        let device = Device::Cpu;
        let a = Tensor::zeros((2, 3), candle_core::DType::F32, &device)?;
        let b = Tensor::zeros((3, 2), candle_core::DType::F32, &device)?;
        assert!(squared_distance_rows(&a, &b).is_err());
        Ok(())
    }
}
