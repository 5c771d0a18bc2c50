//! Differentiable building blocks shared by the models.
//!
//! candle's fused softmax and layer-norm kernels have no backward pass: a gradient that
//! reaches them silently becomes zero. Everything here is either written with elementary
//! (differentiable) ops, or uses a fused kernel (candle's, or `fused_cpu`'s) only when no
//! gradient can flow.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

pub mod attention;
mod attention_cpu;
mod attention_probs;
pub mod blocks;
mod channel_linear;
mod col2im;
mod columns_cpu;
pub mod conv_cpu;
mod distance;
pub(crate) mod fast_exp;
#[cfg(test)]
mod finite_differences;
pub mod frozen;
pub(crate) mod fused_cpu;
pub mod geglu;
mod heads_cpu;
pub(crate) mod matmul_cpu;
pub mod norm_backward;
mod norm_backward_cpu;
mod precomputed;
pub mod profile;
pub(crate) mod simd;
mod unfilled;
pub use attention::{chunked_attention, multi_head_attention};
pub use attention_probs::attention_probabilities;
pub use blocks::{
    Activation, Downsample2D, DownsampleConfig, ResnetBlock2D, ResnetConfig, Upsample2D,
};
pub use channel_linear::ChannelLinear;
pub use distance::squared_distance_rows;
pub use frozen::{Conv2d, Linear, conv2d, linear, linear_no_bias};
use matmul_cpu::f32_on_cpu;
use norm_backward::{NormAxes, NormForward, NormGradient, NormKernel};
use profile::stage as profile_stage;

/// Whether every value of `t` is finite (NaN and ±∞ make the sum of |t| non-finite): one
/// reduction instead of reading the tensor back.
pub fn is_finite(t: &Tensor) -> Result<bool> {
    let s = t
        .abs()?
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(s.is_finite())
}

/// Softmax over the last dimension. The fused kernel is used only when the input is not
/// part of an autograd graph; otherwise the composable form, which has a backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        if f32_on_cpu(x) {
            return x
                .contiguous()?
                .apply_op1_no_bwd(&fused_cpu::SoftmaxLastDimOp);
        }
        return candle_nn::ops::softmax_last_dim(x);
    }
    attention_probs::softmax_of_scores(x)
}

/// Softmax over the last dimension of a tensor only the caller holds (a fresh product of
/// queries and keys): on the CPU in f32 it is written over the scores, saving a buffer of
/// their size; elsewhere, and on a gradient pass, it is [`softmax_last_dim`].
pub(crate) fn softmax_last_dim_of_owned(scores: Tensor) -> Result<Tensor> {
    let in_place = !scores.track_op()
        && scores.device().is_cpu()
        && scores.dtype() == DType::F32
        && scores.is_contiguous();
    if !in_place {
        return softmax_last_dim(&scores);
    }
    scores.inplace_op1(&fused_cpu::SoftmaxLastDimOp)?;
    Ok(scores)
}

/// `dims` with its last size replaced by `last`: a layer's output shape from its input's,
/// when only the features change.
pub(crate) fn with_last_dim(dims: &[usize], last: usize) -> Vec<usize> {
    let mut dims = dims.to_vec();
    if let Some(end) = dims.last_mut() {
        *end = last;
    }
    dims
}

/// Whether the fused CPU kernels may run on `x`: no gradient can flow, and a dtype they
/// read.
fn fused_kernel_applies(x: &Tensor) -> bool {
    !x.track_op()
        && x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// The values of a per-channel parameter as the fused kernels take them.
fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// CLIP's quick GELU, `x · σ(1.702 x)`: a fused kernel when no gradient can flow, else
/// elementary ops.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if fused_kernel_applies(x) {
        return x.contiguous()?.apply_op1_no_bwd(&fused_cpu::QuickGeluOp);
    }
    let sigmoid = ((x * -1.702)?.exp()? + 1.0)?.recip()?;
    x * sigmoid
}

/// LayerNorm over the last dimension, two-pass (mean, then variance of the centred values)
/// like PyTorch: a fused kernel when no gradient can flow, else elementary ops.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` (`[size]` each) under `vb`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }
}

impl LayerNorm {
    /// The fused CPU kernel of this layer (its weights as f32), for callers that normalise
    /// their own buffers.
    pub(crate) fn fused_op(&self) -> Result<fused_cpu::LayerNormOp> {
        Ok(fused_cpu::LayerNormOp {
            eps: self.eps,
            weight: f32_values(&self.weight)?,
            bias: f32_values(&self.bias)?,
        })
    }

    /// The differentiable form.
    fn elementary(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = match dtype {
            DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
            _ => x.clone(),
        };
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _stage = profile_stage(|| "layer norm forward".into());
        if x.track_op() {
            // One graph node instead of the elementary ops' intermediates.
            let gradient = NormGradient {
                axes: NormAxes::LastDim,
                weight: self.weight.clone(),
                eps: self.eps,
                silu_bias: None,
            };
            if f32_on_cpu(x) {
                let forward = NormForward::LastDim(self.fused_op()?);
                return precomputed::apply_cpu_kernel(x, &NormKernel { gradient, forward });
            }
            return gradient.attach(x, self.forward(&x.detach())?);
        }
        if !fused_kernel_applies(x) {
            return self.elementary(x);
        }
        x.contiguous()?.apply_op1_no_bwd(&self.fused_op()?)
    }
}

/// GroupNorm over `[B, C, …]`, two-pass like PyTorch, optionally followed by an activation:
/// a fused kernel (with SiLU folded in) when no gradient can flow, else elementary ops (the
/// form of candle-nn's GroupNorm).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// A layer loaded from `weight` / `bias`.
    pub fn load(num_groups: usize, num_channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Self::new(
            vb.get(num_channels, "weight")?,
            vb.get(num_channels, "bias")?,
            num_groups,
            eps,
        )
    }

    /// A GroupNorm with `weight` and `bias` `[C]`; `num_groups` must divide C.
    pub fn new(weight: Tensor, bias: Tensor, num_groups: usize, eps: f64) -> Result<Self> {
        let channels = weight.dim(0)?;
        if num_groups == 0 || !channels.is_multiple_of(num_groups) {
            candle_core::bail!(
                "GroupNorm: {channels} channels do not split into {num_groups} groups"
            );
        }
        Ok(Self {
            weight,
            bias,
            num_groups,
            eps,
        })
    }

    /// Normalises `x`, then applies `act` (if any).
    pub fn forward_then(&self, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        let _stage = profile_stage(|| "group norm forward".into());
        if x.track_op() {
            // One graph node for the normalisation (and a SiLU after it) instead of their
            // elementary intermediates.
            let silu = act == Some(Activation::Silu);
            let gradient = NormGradient {
                axes: NormAxes::Groups(self.num_groups),
                weight: self.weight.clone(),
                eps: self.eps,
                silu_bias: silu.then(|| self.bias.clone()),
            };
            let y = if f32_on_cpu(x) {
                let forward = NormForward::Groups(self.fused_op(x, silu)?);
                precomputed::apply_cpu_kernel(x, &NormKernel { gradient, forward })?
            } else {
                let folded = if silu { act } else { None };
                gradient.attach(x, self.forward_then(&x.detach(), folded)?)?
            };
            return match act {
                Some(act) if !silu => act.apply(&y),
                _ => Ok(y),
            };
        }
        if !fused_kernel_applies(x) {
            let y = self.elementary(x)?;
            return match act {
                Some(act) => act.apply(&y),
                None => Ok(y),
            };
        }
        let silu = act == Some(Activation::Silu);
        let y = x.contiguous()?.apply_op1_no_bwd(&self.fused_op(x, silu)?)?;
        match act {
            Some(act) if !silu => act.apply(&y),
            _ => Ok(y),
        }
    }

    /// The fused CPU kernel of this layer for `x`, with a SiLU after it if `silu`.
    fn fused_op(&self, x: &Tensor, silu: bool) -> Result<fused_cpu::GroupNormOp> {
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        Ok(fused_cpu::GroupNormOp {
            num_groups: self.num_groups,
            eps: self.eps,
            weight: f32_values(&self.weight)?,
            bias: f32_values(&self.bias)?,
            silu,
            channel_len: x.elem_count() / (b * c).max(1),
        })
    }

    /// The differentiable form (candle-nn's GroupNorm).
    fn elementary(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 3 {
            candle_core::bail!("GroupNorm: input rank must be at least 3, got {dims:?}");
        }
        let (b, c) = (dims[0], dims[1]);
        if c != self.weight.dim(0)? {
            candle_core::bail!(
                "GroupNorm: {c} channels, the layer has {}",
                self.weight.dim(0)?
            );
        }
        let group_len = x.elem_count() / (b * self.num_groups);
        let dtype = x.dtype();
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let xg = x
            .reshape((b, self.num_groups, group_len))?
            .to_dtype(internal)?;
        let mean = (xg.sum_keepdim(2)? / group_len as f64)?;
        let centred = xg.broadcast_sub(&mean)?;
        let var = (centred.sqr()?.sum_keepdim(2)? / group_len as f64)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let mut param_dims = vec![1; dims.len()];
        param_dims[1] = c;
        normed
            .to_dtype(dtype)?
            .reshape(dims)?
            .broadcast_mul(&self.weight.reshape(param_dims.as_slice())?)?
            .broadcast_add(&self.bias.reshape(param_dims.as_slice())?)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn softmax_has_gradient_when_tracked() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![0.1f32, -0.4, 2.0, 0.3, 0.0, -1.0], (2, 3), &dev)?;
        let w = Tensor::new(&[[1f32, 2., 3.], [-1., 0.5, 2.]], &dev)?;
        let loss = softmax_last_dim(x.as_tensor())?.mul(&w)?.sum_all()?;
        let grads = loss.backward()?;
        let g = grads
            .get(x.as_tensor())
            .expect("gradient")
            .to_vec2::<f32>()?;
        // Finite differences on every element.
        let base = x.as_tensor().to_vec2::<f32>()?;
        let f = |v: &Vec<Vec<f32>>| -> Result<f32> {
            let t = Tensor::new(v.clone(), &dev)?;
            softmax_last_dim(&t)?.mul(&w)?.sum_all()?.to_scalar::<f32>()
        };
        for r in 0..2 {
            for c in 0..3 {
                let (mut p, mut m) = (base.clone(), base.clone());
                p[r][c] += 1e-2;
                m[r][c] -= 1e-2;
                let fd = (f(&p)? - f(&m)?) / 2e-2;
                assert!(
                    (fd - g[r][c]).abs() < 1e-3,
                    "({r},{c}) fd {fd} vs {}",
                    g[r][c]
                );
            }
        }
        Ok(())
    }

    /// Largest error of `got` against the f64 softmax of `x`, relative to each row's largest
    /// probability.
    fn softmax_error(x: &Tensor, got: &Tensor) -> Result<f64> {
        let x = x.to_dtype(DType::F64)?;
        let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
        let exact = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let diff = (got.to_dtype(DType::F64)? - &exact)?.abs()?;
        diff.broadcast_div(&exact.max_keepdim(D::Minus1)?)?
            .max_all()?
            .to_scalar::<f64>()
    }

    /// The CPU softmax kernel is as accurate as candle-nn's (against the f64 softmax, on small
    /// tensors run on the calling thread, large ones on the pool, strided inputs and rows of
    /// one value); written over a fresh tensor it gives the same values.
    #[test]
    fn cpu_softmax_is_as_accurate_as_candle_nn() -> Result<()> {
        let dev = Device::Cpu;
        for shape in [
            (3, 5, 7),
            (4, 64, 77),
            (8, 256, 129),
            (2, 3, 1),
            (2, 64, 4096),
        ] {
            let x = (Tensor::randn(0f32, 3., shape, &dev)? - 1.0)?;
            for (x, case) in [
                (x.clone(), "contiguous"),
                (x.transpose(1, 2)?, "transposed"),
            ] {
                let got = softmax_last_dim(&x)?;
                let candle = candle_nn::ops::softmax_last_dim(&x.contiguous()?)?;
                let (ours, theirs) = (softmax_error(&x, &got)?, softmax_error(&x, &candle)?);
                assert!(
                    ours <= theirs.max(1e-7) * 2.0,
                    "{shape:?} {case}: error {ours:e}, candle-nn's {theirs:e}"
                );
                assert!(ours < 1e-6, "{shape:?} {case}: error {ours:e}");
                let owned = softmax_last_dim_of_owned(x.contiguous()?.copy()?)?;
                let same = (&owned - &got)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert_eq!(same, 0.0, "{shape:?} {case}: in place differs");
            }
        }
        Ok(())
    }

    #[test]
    fn layer_norm_has_gradient_and_matches_definition() -> Result<()> {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_tensors(
            [
                (
                    "weight".to_string(),
                    Tensor::new(&[1.5f32, 0.5, -1.0, 2.0], &dev)?,
                ),
                (
                    "bias".to_string(),
                    Tensor::new(&[0.1f32, 0.0, -0.2, 0.3], &dev)?,
                ),
            ]
            .into_iter()
            .collect(),
            DType::F32,
            &dev,
        );
        let ln = LayerNorm::new(4, 1e-5, vb)?;
        let x = Var::from_vec(vec![1f32, 2., 4., -1., 0.5, 0.25, -3., 8.], (2, 4), &dev)?;
        let w = Tensor::new(&[[0.3f32, -1., 2., 0.7], [1., 1., -0.5, 0.2]], &dev)?;
        let out = ln.forward(x.as_tensor())?;
        let loss = out.mul(&w)?.sum_all()?;
        let g = loss
            .backward()?
            .get(x.as_tensor())
            .expect("gradient")
            .to_vec2::<f32>()?;
        let base = x.as_tensor().to_vec2::<f32>()?;
        let f = |v: &Vec<Vec<f32>>| -> Result<f32> {
            ln.forward(&Tensor::new(v.clone(), &dev)?)?
                .mul(&w)?
                .sum_all()?
                .to_scalar::<f32>()
        };
        let mut nonzero = 0;
        for r in 0..2 {
            for c in 0..4 {
                let (mut p, mut m) = (base.clone(), base.clone());
                p[r][c] += 1e-2;
                m[r][c] -= 1e-2;
                let fd = (f(&p)? - f(&m)?) / 2e-2;
                assert!(
                    (fd - g[r][c]).abs() < 2e-3,
                    "({r},{c}) fd {fd} vs {}",
                    g[r][c]
                );
                nonzero += (g[r][c].abs() > 1e-4) as usize;
            }
        }
        assert!(nonzero >= 6, "gradient vanished");
        // Row 0 normalised by hand.
        let row: Vec<f32> = out.to_vec2::<f32>()?[0].clone();
        let (mean, var) = (1.5f32, ((0.25 + 0.25 + 6.25 + 6.25) / 4.0f32));
        let expect0 = (1.0 - mean) / (var + 1e-5).sqrt() * 1.5 + 0.1;
        assert!((row[0] - expect0).abs() < 1e-5);
        Ok(())
    }
    /// Random per-channel weights and a GroupNorm layer.
    fn random_group_norm(channels: usize, groups: usize, eps: f64) -> Result<GroupNorm> {
        let dev = Device::Cpu;
        GroupNorm::new(
            Tensor::randn(1f32, 0.5, channels, &dev)?,
            Tensor::randn(0f32, 0.5, channels, &dev)?,
            groups,
            eps,
        )
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()
    }

    /// The fused kernel (with and without SiLU) against the elementary form followed by
    /// candle's activations, in f32, f16 and bf16, for several shapes (ranks 3–5, one channel
    /// per group, one group, batch 1 and 3, an offset, shifted input).
    #[test]
    fn fused_group_norm_matches_elementary_form() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, groups) in [
            (vec![1, 8, 5, 7], 4),
            (vec![3, 6, 4, 4], 6),
            (vec![2, 12, 9], 1),
            (vec![1, 32, 3, 3, 2], 8),
            (vec![2, 64, 16, 16], 32),
        ] {
            let channels = shape[1];
            let gn = random_group_norm(channels, groups, 1e-6)?;
            // An offset and scale that a one-pass variance would lose precision on.
            let x = ((Tensor::randn(0f32, 2., shape.as_slice(), &dev)? + 3.0)?).contiguous()?;
            for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 4e-3), (DType::BF16, 3e-2)] {
                let x = x.to_dtype(dtype)?;
                // The weights in the model's dtype, as loaded.
                let gn = GroupNorm::new(
                    gn.weight.to_dtype(dtype)?,
                    gn.bias.to_dtype(dtype)?,
                    groups,
                    gn.eps,
                )?;
                let want = gn.elementary(&x)?;
                for act in [None, Some(Activation::Silu), Some(Activation::Gelu)] {
                    let got = gn.forward_then(&x, act)?;
                    assert_eq!(got.dtype(), dtype);
                    let want = match act {
                        Some(act) => act.apply(&want)?,
                        None => want.clone(),
                    };
                    // Relative to the output's size: the elementary form rounds to the
                    // storage type after each of its steps, the kernel once.
                    let scale = want
                        .to_dtype(DType::F32)?
                        .abs()?
                        .max_all()?
                        .to_scalar::<f32>()?;
                    let err = max_abs_diff(&got, &want)?;
                    assert!(
                        err <= tol * scale.max(1.0),
                        "{shape:?}/{groups} {dtype:?} {act:?}: error {err}"
                    );
                }
            }
        }
        // A transposed (strided) input is normalised as its contiguous copy.
        let gn = random_group_norm(4, 2, 1e-5)?;
        let x = Tensor::randn(0f32, 1., (1, 4, 5, 3), &dev)?;
        let strided = x.transpose(2, 3)?;
        let err = max_abs_diff(
            &gn.forward(&strided)?,
            &gn.elementary(&strided.contiguous()?)?,
        )?;
        assert!(err < 2e-5, "strided: {err}");
        Ok(())
    }

    /// The fused kernel would drop the gradient: a tracked input takes the elementary path,
    /// whose gradient matches finite differences.
    #[test]
    fn group_norm_has_gradient_when_tracked() -> Result<()> {
        let dev = Device::Cpu;
        let gn = random_group_norm(4, 2, 1e-5)?;
        let shape = (1, 4, 2, 3);
        let x0 = Tensor::randn(0f32, 1., shape, &dev)?;
        let w = Tensor::randn(0f32, 1., shape, &dev)?;
        for act in [None, Some(Activation::Silu)] {
            let loss = |x: &Tensor| gn.forward_then(x, act)?.mul(&w)?.sum_all();
            let var = Var::from_tensor(&x0)?;
            let g = loss(var.as_tensor())?
                .backward()?
                .get(var.as_tensor())
                .expect("gradient")
                .flatten_all()?
                .to_vec1::<f32>()?;
            let base = x0.flatten_all()?.to_vec1::<f32>()?;
            let mut nonzero = 0;
            for i in 0..base.len() {
                let bump = |d: f32| -> Result<f32> {
                    let mut v = base.clone();
                    v[i] += d;
                    loss(&Tensor::from_vec(v, shape, &dev)?)?.to_scalar::<f32>()
                };
                let fd = (bump(1e-2)? - bump(-1e-2)?) / 2e-2;
                assert!(
                    (fd - g[i]).abs() < 5e-3 * (1.0 + fd.abs()),
                    "{act:?} [{i}]: fd {fd} vs {}",
                    g[i]
                );
                nonzero += (g[i].abs() > 1e-3) as usize;
            }
            assert!(nonzero >= base.len() / 2, "{act:?}: gradient vanished");
        }
        Ok(())
    }

    /// The fused LayerNorm against the elementary form (f32, f16, bf16; rank 2 and 3).
    #[test]
    fn fused_layer_norm_matches_elementary_form() -> Result<()> {
        let dev = Device::Cpu;
        // Seeded inputs: the same numbers every run (unseeded ones made the bf16 case flaky).
        let normal = |seed: u64, shape: &[usize], mean: f64, std: f64| -> Result<Tensor> {
            let n = shape.iter().product();
            let values = crate::vae::gaussian::standard_normal(seed, n);
            (Tensor::from_vec(values, shape, &dev)? * std)? + mean
        };
        for (k, (shape, d)) in [
            (vec![3, 8], 8),
            (vec![2, 77, 48], 48),
            (vec![1, 5, 768], 768),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 100 * k as u64;
            let ln = LayerNorm {
                weight: normal(seed + 1, &[d], 1.0, 0.5)?,
                bias: normal(seed + 2, &[d], 0.0, 0.5)?,
                eps: 1e-5,
            };
            let x = normal(seed + 3, &shape, -2.0, 3.0)?;
            for (dtype, tol) in [(DType::F32, 2e-5), (DType::F16, 1e-2), (DType::BF16, 6e-2)] {
                let x = x.to_dtype(dtype)?;
                let ln = LayerNorm {
                    weight: ln.weight.to_dtype(dtype)?,
                    bias: ln.bias.to_dtype(dtype)?,
                    eps: ln.eps,
                };
                let err = max_abs_diff(&ln.forward(&x)?, &ln.elementary(&x)?)?;
                assert!(err <= tol, "{shape:?} {dtype:?}: error {err}");
            }
        }
        Ok(())
    }

    /// The fused quick GELU against the elementary form (which a tracked input takes).
    #[test]
    fn fused_quick_gelu_matches_elementary_form() -> Result<()> {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3., (2, 77, 40), &dev)? - 0.5)?;
        let want = quick_gelu(Var::from_tensor(&x)?.as_tensor())?.detach();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 1e-2), (DType::BF16, 6e-2)] {
            let err = max_abs_diff(&quick_gelu(&x.to_dtype(dtype)?)?, &want)?;
            assert!(err <= tol, "{dtype:?}: error {err}");
        }
        Ok(())
    }
}
