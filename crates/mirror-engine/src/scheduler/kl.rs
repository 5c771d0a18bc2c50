//! The KL noise regulariser of pix2pix-zero / MirrorDiffusion (docs/algorithm.md §4.1):
//! L_KL(e) = v + μ² − 1 − ln(v + 1e-7) with μ = mean(e), v = unbiased variance, and a few
//! plain gradient steps e ← e − λ ∇L_KL with the closed-form gradient.
//! Ports: https://github.com/pix2pixzero/pix2pix-zero/blob/a8f7269a5318353b6fc5263223f68d96a419bd49/src/utils/edit_pipeline.py (pinned).

use candle_core::{DType, Device, Result, Tensor};

const VAR_EPS: f64 = 1e-7;

/// L_KL as a (differentiable) 0-d tensor, over all elements of `eps`.
pub fn kl_divergence(eps: &Tensor) -> Result<Tensor> {
    let n = eps.elem_count();
    if n < 2 {
        candle_core::bail!("KL regulariser needs at least 2 elements, got {n}");
    }
    let mu = eps.mean_all()?;
    let centred = eps.broadcast_sub(&mu)?;
    let var = (centred.sqr()?.sum_all()? / (n - 1) as f64)?;
    let log_term = (&var + VAR_EPS)?.log()?;
    ((var + mu.sqr()?)? - 1.0)? - log_term
}

fn scalar(x: &Tensor, v: f32) -> Result<Tensor> {
    Tensor::new(v, x.device())?.to_dtype(x.dtype())
}

/// ∇L_KL in closed form, with torch's operation order:
/// g_j = [f32(2/(n−1)) · (1 − 1/(v + 1e-7))] · (e_j − μ) + (2μ)/n.
/// μ and v are reduced on the host (v in f64 around the f32 mean, as torch's `var`).
pub fn kl_gradient(eps: &Tensor) -> Result<Tensor> {
    let n = eps.elem_count();
    if n < 2 {
        candle_core::bail!("KL regulariser needs at least 2 elements, got {n}");
    }
    // Reduced on the CPU: some devices (Metal) have no f64.
    let values: Vec<f64> = eps
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .to_vec1()?;
    let (mu, var) = if eps.dtype() == DType::F64 {
        let mu = values.iter().sum::<f64>() / n as f64;
        let var = values.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1) as f64;
        (mu, var)
    } else {
        // torch: mean in the tensor's precision, variance accumulated in f64, stored as f32.
        let mu = (values.iter().sum::<f64>() as f32 / n as f32) as f64;
        let var = values.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1) as f64;
        (mu, var as f32 as f64)
    };
    let (var_coef, mean_term) = if eps.dtype() == DType::F64 {
        (
            2.0 / (n - 1) as f64 * (1.0 - 1.0 / (var + VAR_EPS)),
            2.0 * mu / n as f64,
        )
    } else {
        let (mu, var) = (mu as f32, var as f32);
        let d_var = 1f32 - 1f32 / (var + VAR_EPS as f32);
        (
            (((2.0 / (n - 1) as f64) as f32) * d_var) as f64,
            ((2f32 * mu) / n as f32) as f64,
        )
    };
    let centred = eps.broadcast_sub(&typed_scalar(eps, mu)?)?;
    let var_part = centred.broadcast_mul(&typed_scalar(eps, var_coef)?)?;
    var_part.broadcast_add(&typed_scalar(eps, mean_term)?)
}

/// A 0-d tensor of `x`'s dtype holding `v` (exactly, for f64 tensors).
fn typed_scalar(x: &Tensor, v: f64) -> Result<Tensor> {
    if x.dtype() == DType::F64 {
        Tensor::new(v, x.device())
    } else {
        scalar(x, v as f32)
    }
}

/// `steps` updates e ← e − λ ∇L_KL(e) (no gradient flows through this).
pub fn kl_regularize(eps: &Tensor, lambda: f64, steps: usize) -> Result<Tensor> {
    let mut e = eps.detach();
    for _ in 0..steps {
        let step = kl_gradient(&e)?.broadcast_mul(&typed_scalar(&e, lambda)?)?;
        e = (e - step)?;
    }
    Ok(e)
}
