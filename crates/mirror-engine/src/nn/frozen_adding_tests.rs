//! `Linear::forward_adding` and `Conv2d::forward_adding` against the layer's forward followed
//! by candle's own (broadcast) add: the same values bit for bit, and the same gradients for
//! the input and the residual, each only where it tracks one.

use candle_core::{Device, Module, Result, Tensor, Var};

use super::{Conv2d, Linear};

/// `Σ out · w` for fixed random weights `w` of the output's shape.
fn weighted(out: &Tensor, w: &Tensor) -> Result<Tensor> {
    out.mul(w)?.sum_all()
}

fn same_values(a: &Tensor, b: &Tensor) -> Result<()> {
    let (a, b) = (
        a.flatten_all()?.to_vec1::<f32>()?,
        b.flatten_all()?.to_vec1::<f32>()?,
    );
    assert_eq!(a, b);
    Ok(())
}

fn close(a: &Tensor, b: &Tensor) -> Result<()> {
    let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(
        diff <= 1e-6 * scale,
        "gradients differ by {diff} (scale {scale})"
    );
    Ok(())
}

/// `fused(x, r)` against `reference(x, r)`: values without gradients, then both gradients with
/// x and r tracked, then with only r tracked.
fn check_against(
    x0: &Tensor,
    r0: &Tensor,
    fused: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    reference: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<()> {
    same_values(&fused(x0, r0)?, &reference(x0, r0)?)?;
    let w = Tensor::randn(0f32, 1., reference(x0, r0)?.shape(), x0.device())?;
    let gradients = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| -> Result<(Tensor, Tensor)> {
        let (x, r) = (Var::from_tensor(x0)?, Var::from_tensor(r0)?);
        let out = f(x.as_tensor(), r.as_tensor())?;
        let grads = weighted(&out, &w)?.backward()?;
        let get = |v: &Var| grads.get(v.as_tensor()).expect("a gradient").clone();
        Ok((get(&x), get(&r)))
    };
    let (fused_x, fused_r) = gradients(fused)?;
    let (reference_x, reference_r) = gradients(reference)?;
    close(&fused_x, &reference_x)?;
    close(&fused_r, &reference_r)?;

    let r = Var::from_tensor(r0)?;
    let grads = weighted(&fused(x0, r.as_tensor())?, &w)?.backward()?;
    assert!(grads.get(x0).is_none(), "an untracked input got a gradient");
    close(grads.get(r.as_tensor()).expect("a gradient"), &reference_r)?;
    Ok(())
}

#[test]
fn linear_adding_matches_forward_then_add() -> Result<()> {
    let dev = Device::Cpu;
    let layer = Linear::new(
        Tensor::randn(0f32, 0.3, (24, 16), &dev)?,
        Some(Tensor::randn(0f32, 0.3, 24, &dev)?),
    );
    // 260 rows take the layer's own kernel, 6 rows the other paths.
    for rows in [130, 3] {
        let x = Tensor::randn(0f32, 1., (2, rows, 16), &dev)?;
        let r = Tensor::randn(0f32, 1., (2, rows, 24), &dev)?;
        check_against(&x, &r, &|x, r| layer.forward_adding(x, r), &|x, r| {
            layer.forward(x)? + r
        })?;
    }
    Ok(())
}

#[test]
fn conv_adding_matches_forward_then_broadcast_add() -> Result<()> {
    let dev = Device::Cpu;
    let conv = Conv2d::new(
        Tensor::randn(0f32, 0.3, (5, 3, 3, 3), &dev)?,
        Some(Tensor::randn(0f32, 0.3, 5, &dev)?),
        1,
        1,
    );
    let x = Tensor::randn(0f32, 1., (2, 3, 9, 8), &dev)?;
    // A skip of the output's shape, and a per-channel time embedding.
    for residual_shape in [(2, 5, 9, 8), (2, 5, 1, 1)] {
        let r = Tensor::randn(0f32, 1., residual_shape, &dev)?;
        check_against(&x, &r, &|x, r| conv.forward_adding(x, r), &|x, r| {
            conv.forward(x)?.broadcast_add(r)
        })?;
    }
    Ok(())
}
