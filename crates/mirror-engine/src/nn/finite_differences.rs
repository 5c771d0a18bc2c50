//! Central finite differences for the tests of the layers' own backward passes.

use candle_core::{Result, Tensor, Var};

/// `∂f/∂xᵢ` at the f64 tensor `x` for every element i, by central differences:
/// `(f(x + step·eᵢ) − f(x − step·eᵢ)) / 2·step`, each argument of `x`'s shape and device.
pub(crate) fn central_differences(
    x: &Tensor,
    step: f64,
    f: impl Fn(&Tensor) -> Result<f64>,
) -> Result<Vec<f64>> {
    let start = x.flatten_all()?.to_vec1::<f64>()?;
    (0..start.len())
        .map(|i| {
            let at = |delta: f64| -> Result<f64> {
                let mut moved = start.clone();
                moved[i] += delta;
                f(&Tensor::from_vec(moved, x.shape(), x.device())?)
            };
            Ok((at(step)? - at(-step)?) / (2.0 * step))
        })
        .collect()
}

/// Asserts that the gradients of both inputs of the f64 scalar `f(a, b)` agree with central
/// differences (`step`) within `tolerance · (1 + |numeric|)` per element; `names` label the
/// inputs in a failure.
pub(crate) fn assert_pair_gradients(
    (a, b): (&Var, &Var),
    names: [&str; 2],
    step: f64,
    tolerance: f64,
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<()> {
    let grads = f(a.as_tensor(), b.as_tensor())?.backward()?;
    for (index, (var, name)) in [(a, names[0]), (b, names[1])].into_iter().enumerate() {
        let analytic: Vec<f64> = grads
            .get(var.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1()?;
        let numeric = central_differences(var.as_tensor(), step, |moved| {
            let (x, y) = if index == 0 {
                (moved.clone(), b.as_tensor().detach())
            } else {
                (a.as_tensor().detach(), moved.clone())
            };
            f(&x, &y)?.to_scalar::<f64>()
        })?;
        for (i, (numeric, analytic)) in numeric.into_iter().zip(analytic).enumerate() {
            assert!(
                (numeric - analytic).abs() < tolerance * (1.0 + numeric.abs()),
                "{name} element {i}: {analytic} against finite differences {numeric}"
            );
        }
    }
    Ok(())
}
