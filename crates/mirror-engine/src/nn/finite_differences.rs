//! Central finite differences for the tests of the layers' own backward passes.

use candle_core::{Result, Tensor};

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
