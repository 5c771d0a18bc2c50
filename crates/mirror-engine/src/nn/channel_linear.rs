//! A linear map across an image's channels that also moves between the image layout
//! `[B, C, H, W]` and the token layout `[B, H·W, C]`: the transformer's `proj_in` (a 1×1
//! convolution or a linear layer, then image → tokens) and `proj_out` (tokens → image, then
//! the projection), each one matrix product that reads its input transposed in place.
//!
//! Written as a projection followed by a transposition, both directions copied every token
//! once more per layer with candle's strided copy, and the backward copied its gradient back
//! the same way. CPU, f32; other devices and dtypes keep the separate ops.

use candle_core::{Result, Tensor};

use super::fused_cpu::fill_rows;
use super::matmul_cpu::{self, Gemm, View, f32_on_cpu};
use super::precomputed::{CpuKernel, InputGradient, apply_cpu_kernel, apply_cpu_kernel_adding};

/// Which way the layer moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// `[B, C_in, H, W]` → `[B, H·W, C_out]`.
    ToTokens,
    /// `[B, H·W, C_in]` → `[B, C_out, H, W]`.
    ToImage { height: usize, width: usize },
}

/// `y = W·x + b` along the channels, applied with either layout change.
#[derive(Debug, Clone)]
pub struct ChannelLinear {
    /// `[C_out, C_in]`, contiguous f32 on the CPU.
    weight: Tensor,
    /// `[C_out]`, contiguous f32 on the CPU.
    bias: Option<Tensor>,
}

impl ChannelLinear {
    /// The projection `weight` (`[C_out, C_in]`, or a 1×1 kernel `[C_out, C_in, 1, 1]`) and
    /// `bias`, or `None` where this path does not apply (not f32 on the CPU, or a larger
    /// kernel).
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Option<Self>> {
        let (c_out, c_in) = match weight.dims() {
            &[o, i] | &[o, i, 1, 1] => (o, i),
            _ => return Ok(None),
        };
        if !f32_on_cpu(weight) || bias.is_some_and(|b| !f32_on_cpu(b) || b.dims() != [c_out]) {
            return Ok(None);
        }
        Ok(Some(Self {
            weight: weight.reshape((c_out, c_in))?.contiguous()?,
            bias: bias.map(Tensor::contiguous).transpose()?,
        }))
    }

    /// `x` `[B, C_in, H, W]` projected to tokens `[B, H·W, C_out]`, as a graph node when `x`
    /// tracks a gradient.
    pub fn to_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let op = self.op(Direction::ToTokens);
        let _stage = super::profile::stage(|| op.stage_name("forward", x));
        apply_cpu_kernel(x, &op)
    }

    /// Tokens `x` `[B, H·W, C_in]` projected to an image `[B, C_out, H, W]` of `spatial`
    /// `(H, W)`, plus `residual` of that shape, added in the output buffer.
    pub fn to_image_adding(
        &self,
        x: &Tensor,
        (height, width): (usize, usize),
        residual: &Tensor,
    ) -> Result<Tensor> {
        let op = self.op(Direction::ToImage { height, width });
        let _stage = super::profile::stage(|| op.stage_name("forward", x));
        apply_cpu_kernel_adding(x, residual, &op)
    }

    fn op(&self, direction: Direction) -> Projection {
        Projection {
            layer: self.clone(),
            direction,
        }
    }
}

/// One application of a [`ChannelLinear`], as a graph node's kernel and backward.
#[derive(Debug, Clone)]
struct Projection {
    layer: ChannelLinear,
    direction: Direction,
}

impl Projection {
    fn stage_name(&self, stage: &str, x: &Tensor) -> String {
        let way = match self.direction {
            Direction::ToTokens => "image → tokens",
            Direction::ToImage { .. } => "tokens → image",
        };
        let weight = self.layer.weight.dims();
        format!("projection {stage} {way} {weight:?} at {:?}", x.dims())
    }

    /// `(batch, positions)` of an input of `dims`, checked against the layer.
    fn batch_and_positions(&self, dims: &[usize]) -> Result<(usize, usize)> {
        let (_, c_in) = self.layer.weight.dims2()?;
        match (self.direction, dims) {
            (Direction::ToTokens, &[b, c, h, w]) if c == c_in => Ok((b, h * w)),
            (Direction::ToImage { height, width }, &[b, p, c])
                if c == c_in && p == height * width =>
            {
                Ok((b, p))
            }
            _ => candle_core::bail!(
                "channel projection: input {dims:?} for a weight {:?} ({:?})",
                self.layer.weight.dims(),
                self.direction
            ),
        }
    }
}

/// `f(values)` for the contiguous f32 values of `t`.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Some(values) = matmul_cpu::f32_values(&storage, layout) else {
        candle_core::bail!("channel projection: a tensor is not contiguous f32 on the CPU");
    };
    f(values)
}

/// One product per sample between a sample's input and the weight, each read through its view.
struct PerSample {
    out: View,
    input: View,
    weight: View,
    /// `out = input · weight`, else `out = weight · input`.
    input_first: bool,
}

impl PerSample {
    /// The products of every sample of `inputs` into its piece of `out`.
    fn run(&self, inputs: &[f32], out: &mut [f32], weight: &[f32], how: Gemm) -> Result<()> {
        let (in_len, out_len) = (
            self.input.rows * self.input.cols,
            self.out.rows * self.out.cols,
        );
        for (input, out) in inputs
            .chunks_exact(in_len)
            .zip(out.chunks_exact_mut(out_len))
        {
            let (input, weight) = ((input, self.input), (weight, self.weight));
            let (a, b) = if self.input_first {
                (input, weight)
            } else {
                (weight, input)
            };
            matmul_cpu::product(out, self.out, a, b, how)?;
        }
        Ok(())
    }
}

impl CpuKernel for Projection {
    fn cpu_kernel(&self, x: &[f32], dims: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let (batch, positions) = self.batch_and_positions(dims)?;
        let (c_out, c_in) = self.layer.weight.dims2()?;
        let mut out = vec![0f32; batch * positions * c_out];
        let bias = match &self.layer.bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        // The bias first, the product added to it: `b + W·x`, as the linear layers do.
        if let Some(bias) = &bias {
            match self.direction {
                Direction::ToTokens => {
                    fill_rows(&mut out, c_out, |_, row| row.copy_from_slice(bias))
                }
                Direction::ToImage { .. } => {
                    fill_rows(&mut out, positions, |row, values| {
                        values.fill(bias[row % c_out])
                    });
                }
            }
        }
        let how = Gemm {
            scale: 1.0,
            accumulate: bias.is_some(),
            parallelism: matmul_cpu::parallelism(),
        };
        let products = match self.direction {
            // tokens [P, C_out] = xᵀ [P, C_in] · Wᵀ [C_in, C_out], x read as [C_in, P].
            Direction::ToTokens => PerSample {
                out: View::row_major(positions, c_out),
                input: View::column_major(positions, c_in),
                weight: View::column_major(c_in, c_out),
                input_first: true,
            },
            // image [C_out, P] = W [C_out, C_in] · xᵀ [C_in, P], x read as [P, C_in].
            Direction::ToImage { .. } => PerSample {
                out: View::row_major(c_out, positions),
                input: View::column_major(c_in, positions),
                weight: View::row_major(c_out, c_in),
                input_first: false,
            },
        };
        with_values(&self.layer.weight, |w| products.run(x, &mut out, w, how))?;
        let out_dims = match self.direction {
            Direction::ToTokens => vec![batch, positions, c_out],
            Direction::ToImage { height, width } => vec![batch, c_out, height, width],
        };
        Ok((out, out_dims))
    }
}

impl InputGradient for Projection {
    const NAME: &'static str = "channel-projection";

    fn profile_name(&self, x: &Tensor) -> String {
        self.stage_name("backward", x)
    }

    /// `Wᵀ·g` along the channels, in the input's layout: one product per sample that reads
    /// the gradient transposed in place.
    fn input_gradient(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (batch, positions) = self.batch_and_positions(x.dims())?;
        let (c_out, c_in) = self.layer.weight.dims2()?;
        let grad = grad.contiguous()?;
        let mut dx = vec![0f32; batch * positions * c_in];
        let how = Gemm::scaled(1.0, matmul_cpu::parallelism());
        let products = match self.direction {
            // dx [C_in, P] = Wᵀ [C_in, C_out] · gᵀ [C_out, P], g read as [P, C_out].
            Direction::ToTokens => PerSample {
                out: View::row_major(c_in, positions),
                input: View::column_major(c_out, positions),
                weight: View::column_major(c_in, c_out),
                input_first: false,
            },
            // dx [P, C_in] = gᵀ [P, C_out] · W [C_out, C_in], g read as [C_out, P].
            Direction::ToImage { .. } => PerSample {
                out: View::row_major(positions, c_in),
                input: View::column_major(positions, c_out),
                weight: View::row_major(c_out, c_in),
                input_first: true,
            },
        };
        with_values(&self.layer.weight, |w| {
            with_values(&grad, |g| products.run(g, &mut dx, w, how))
        })?;
        Tensor::from_vec(dx, x.shape(), x.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    const SPATIAL: (usize, usize) = (3, 5);

    /// The layer written as candle ops: the projection as a matrix product on the tokens,
    /// with the transpositions around it.
    fn reference(op: &Projection, x: &Tensor) -> Result<Tensor> {
        let w = op.layer.weight.t()?;
        let project = |tokens: &Tensor| -> Result<Tensor> {
            let y = tokens.broadcast_matmul(&w)?;
            match &op.layer.bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        };
        match op.direction {
            Direction::ToTokens => {
                let (b, c, h, w) = x.dims4()?;
                project(&x.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?)
            }
            Direction::ToImage { height, width } => {
                let y = project(x)?;
                let (b, _, c) = y.dims3()?;
                y.transpose(1, 2)?
                    .contiguous()?
                    .reshape((b, c, height, width))
            }
        }
    }

    /// The layer itself: `to_tokens`, or `to_image_adding` with a zero residual that tracks
    /// no gradient.
    fn apply(op: &Projection, x: &Tensor) -> Result<Tensor> {
        match op.direction {
            Direction::ToTokens => op.layer.to_tokens(x),
            Direction::ToImage { height, width } => {
                let zero = reference(op, &x.detach())?.zeros_like()?;
                op.layer.to_image_adding(x, (height, width), &zero)
            }
        }
    }

    fn assert_close(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 1e-6 * scale, "{what}: {diff} (scale {scale})");
        Ok(())
    }

    /// Both directions, with and without a bias, from a matrix and from a 1×1 kernel, each
    /// with an input of its layout.
    fn cases(dev: &Device) -> Result<Vec<(Projection, Tensor)>> {
        let (c_in, c_out, (h, w)) = (12, 20, SPATIAL);
        let weight = Tensor::randn(0f32, 0.3, (c_out, c_in), dev)?;
        let kernel = weight.reshape((c_out, c_in, 1, 1))?;
        let bias = Tensor::randn(0f32, 0.3, c_out, dev)?;
        let image = Tensor::randn(0f32, 1., (2, c_in, h, w), dev)?;
        let tokens = Tensor::randn(0f32, 1., (2, h * w, c_in), dev)?;
        let layer = |weight: &Tensor, bias: Option<&Tensor>| -> Result<ChannelLinear> {
            Ok(ChannelLinear::new(weight, bias)?.expect("the CPU path"))
        };
        let to_image = Direction::ToImage {
            height: h,
            width: w,
        };
        Ok(vec![
            (
                layer(&kernel, Some(&bias))?.op(Direction::ToTokens),
                image.clone(),
            ),
            (layer(&weight, None)?.op(Direction::ToTokens), image),
            (layer(&weight, Some(&bias))?.op(to_image), tokens.clone()),
            (layer(&kernel, None)?.op(to_image), tokens),
        ])
    }

    #[test]
    fn forward_matches_the_projection_and_transposition() -> Result<()> {
        for (op, x) in cases(&Device::Cpu)? {
            assert_close(
                &apply(&op, &x)?,
                &reference(&op, &x)?,
                &format!("{:?}", op.direction),
            )?;
        }
        Ok(())
    }

    /// The input gradient against candle's autograd of the reference; with a residual that
    /// tracks one, the residual's gradient is the output's.
    #[test]
    fn gradients_match_candle_autograd() -> Result<()> {
        let dev = Device::Cpu;
        for (op, x0) in cases(&dev)? {
            let w = Tensor::randn(0f32, 1., reference(&op, &x0)?.shape(), &dev)?;
            let input_gradient = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Tensor> {
                let x = Var::from_tensor(&x0)?;
                let grads = f(x.as_tensor())?.mul(&w)?.sum_all()?.backward()?;
                Ok(grads.get(x.as_tensor()).expect("an input gradient").clone())
            };
            let expected = input_gradient(&|x| reference(&op, x))?;
            let what = format!("{:?}", op.direction);
            assert_close(&input_gradient(&|x| apply(&op, x))?, &expected, &what)?;
            if let Direction::ToImage { height, width } = op.direction {
                let (x, r) = (Var::from_tensor(&x0)?, Var::from_tensor(&w.zeros_like()?)?);
                let out = op
                    .layer
                    .to_image_adding(x.as_tensor(), (height, width), &r)?;
                let grads = out.mul(&w)?.sum_all()?.backward()?;
                let dx = grads.get(x.as_tensor()).expect("an input gradient");
                assert_close(dx, &expected, "to_image_adding")?;
                let dr = grads.get(r.as_tensor()).expect("a residual gradient");
                assert_eq!(
                    dr.flatten_all()?.to_vec1::<f32>()?,
                    w.flatten_all()?.to_vec1::<f32>()?
                );
            }
        }
        Ok(())
    }

    /// The input gradient against central differences of `Σ w·y`.
    #[test]
    fn input_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (op, x) in cases(&dev)? {
            let w = Tensor::randn(0f32, 1., reference(&op, &x)?.shape(), &dev)?;
            let loss = |x: &Tensor| -> Result<f64> {
                let y = apply(&op, &x.to_dtype(DType::F32)?)?;
                Ok(f64::from(y.mul(&w)?.sum_all()?.to_scalar::<f32>()?))
            };
            let numeric = super::super::finite_differences::central_differences(
                &x.to_dtype(DType::F64)?,
                1e-2,
                loss,
            )?;
            let xv = Var::from_tensor(&x)?;
            let grads = apply(&op, xv.as_tensor())?.mul(&w)?.sum_all()?.backward()?;
            let analytic = grads.get(xv.as_tensor()).expect("a gradient");
            for (i, (a, n)) in analytic
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .zip(&numeric)
                .enumerate()
            {
                let what = &op.direction;
                assert!(
                    (f64::from(*a) - n).abs() < 2e-3 * (1.0 + n.abs()),
                    "{what:?} at {i}: {a} vs {n}"
                );
            }
        }
        Ok(())
    }

    /// Wrong inputs are refused with their shape named; other kernels and dtypes take no
    /// fast path.
    #[test]
    fn refuses_what_it_cannot_project() -> Result<()> {
        let dev = Device::Cpu;
        let weight = Tensor::zeros((4, 3), DType::F32, &dev)?;
        let layer = ChannelLinear::new(&weight, None)?.expect("the CPU path");
        let err = layer.to_tokens(&Tensor::zeros((1, 5, 2, 2), DType::F32, &dev)?);
        assert!(err.is_err_and(|e| e.to_string().contains("[1, 5, 2, 2]")));
        let tokens = Tensor::zeros((1, 5, 3), DType::F32, &dev)?;
        let residual = Tensor::zeros((1, 4, 2, 2), DType::F32, &dev)?;
        assert!(layer.to_image_adding(&tokens, (2, 2), &residual).is_err());
        let kernel = Tensor::zeros((4, 3, 3, 3), DType::F32, &dev)?;
        assert!(ChannelLinear::new(&kernel, None)?.is_none());
        assert!(ChannelLinear::new(&weight.to_dtype(DType::F16)?, None)?.is_none());
        Ok(())
    }
}
