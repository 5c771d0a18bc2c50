//! candle's backward with the vendored accumulation patch (vendor/candle-core/MIRROR-PATCH.md):
//! a node's first gradient is stored as it is and later ones are summed. The graphs here make
//! gradients share storage (x + x), come back as views (narrow, transpose, cat) and meet the
//! steps that need a contiguous sum (index_select's index_add); autograd must still agree with
//! central finite differences.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

use candle_core::{DType, Device, Result, Tensor, Var};

/// A scalar of `x` `[3, 4]` whose gradient takes every awkward path at once.
fn loss(x: &Tensor) -> Result<Tensor> {
    let device = x.device();
    let doubled = (x + x)?;
    let head = x.narrow(0, 0, 2)?;
    let tail = x.narrow(0, 2, 1)?;
    let rotated = Tensor::cat(&[&tail, &head], 0)?;
    let picked = rotated.index_select(&Tensor::new(&[2u32, 0, 0], device)?, 0)?;
    let weights = Tensor::arange(0f64, 12.0, device)?.reshape((3, 4))?;
    let transposed = x.t()?.exp()?;
    let shared = x.sin()?;
    let terms = [
        doubled.sqr()?.sum_all()?,
        (picked * &weights)?.sum_all()?,
        (transposed.t()? * &shared)?.sum_all()?,
        (&shared * &shared)?.sum_all()?,
    ];
    terms
        .iter()
        .try_fold(Tensor::zeros((), DType::F64, device)?, |acc, t| acc + t)
}

#[test]
fn accumulated_gradients_match_finite_differences() -> Result<()> {
    let device = Device::Cpu;
    let start: Vec<f64> = (0..12).map(|i| ((i * 7 % 12) as f64 - 5.5) / 6.0).collect();
    let x = Var::from_vec(start.clone(), (3, 4), &device)?;
    let grads = loss(x.as_tensor())?.backward()?;
    let autograd: Vec<f64> = grads
        .get(x.as_tensor())
        .expect("x has a gradient")
        .flatten_all()?
        .to_vec1()?;

    let step = 1e-5;
    for i in 0..start.len() {
        let at = |delta: f64| -> Result<f64> {
            let mut values = start.clone();
            values[i] += delta;
            loss(&Tensor::from_vec(values, (3, 4), &device)?)?.to_scalar::<f64>()
        };
        let numeric = (at(step)? - at(-step)?) / (2.0 * step);
        let error = (numeric - autograd[i]).abs();
        assert!(
            error < 1e-6 * (1.0 + numeric.abs()),
            "element {i}: autograd {} against finite differences {numeric}",
            autograd[i]
        );
    }
    Ok(())
}

#[test]
fn a_tensor_added_to_itself_gets_twice_the_gradient() -> Result<()> {
    let x = Var::from_vec(vec![1f32, -2.0, 3.0], 3, &Device::Cpu)?;
    let y = (x.as_tensor() + x.as_tensor())?;
    // Both sides of the sum share one gradient tensor; the second one must add, not alias.
    let grads = (y * 3.0)?.sum_all()?.backward()?;
    let g: Vec<f32> = grads
        .get(x.as_tensor())
        .expect("x has a gradient")
        .to_vec1()?;
    assert_eq!(g, vec![6.0, 6.0, 6.0]);
    Ok(())
}
