//! The encoder's layers on the CPU in f32 when no gradient can flow: the products call
//! `gemm` directly, in layouts where it never re-packs a weight, and the attention applies
//! the causal mask by leaving the hidden keys out.
//!
//! Every linear layer computes its output transposed, `yᵀ = W·xᵀ` (`[out, rows]`). With the
//! rows on the GEMM's packed side, the weight `[out, in]` is read in place as it was loaded:
//! no copy of it is made, and only the activations (rows × in) are packed. Candle's `x·Wᵀ`
//! re-packs the whole weight on every call instead, which cost as much as the product
//! itself at 77 rows. The transposed outputs are used where they are: q, k and v by the
//! attention's products (which take any strides), the MLP's hidden layer by the activation
//! (the bias added in the same pass) and by the second product, and the outputs of the
//! attention and of the MLP by the residual sum, which transposes them back as it adds them
//! (with their bias). The residual stream stays `[rows, width]`.
//!
//! The attention computes each (sample, head) pair as a task on the thread pool: scores,
//! a causal softmax over the keys at or before each query (the others get exactly 0), and
//! the product with the values written straight into the heads' columns of the output.
//! The tensor path's additive `f32::MIN` mask left the hidden weights subnormal (the
//! smallest normal exponential divided by the row's sum), and products with subnormal
//! operands ran a hundred times slower.

use candle_core::cpu::kernels::VecOps;
use candle_core::{CpuStorage, DType, Device, Result, Storage, StorageRef, Tensor};
use candle_nn::Linear;
use gemm::Parallelism;
use rayon::prelude::*;

use super::{ClipEncoderLayer, ClipTextTransformer};
use crate::clip::ClipActivation;
use crate::nn::fast_exp;
use crate::nn::fused_cpu::{LayerNormOp, run_serially};
use crate::nn::matmul_cpu::{
    Gemm, View, add_transposed, f32_values, parallelism, product, product_into,
};

/// The encoder's layers and final LayerNorm on `embeddings` `[B, T, D]`, or `None` where
/// this path does not apply (a gradient can flow, another device or dtype, weights of an
/// unexpected shape or layout): the caller then takes the tensor path.
pub(super) fn forward(model: &ClipTextTransformer, embeddings: &Tensor) -> Result<Option<Tensor>> {
    if embeddings.track_op() || !embeddings.device().is_cpu() || embeddings.dtype() != DType::F32 {
        return Ok(None);
    }
    let (batch, tokens, width) = embeddings.dims3()?;
    let config = model.config();
    let heads = config.num_attention_heads;
    if batch == 0
        || tokens == 0
        || width != config.hidden_size
        || heads == 0
        || !width.is_multiple_of(heads)
    {
        return Ok(None);
    }
    let dims = Dims {
        batch,
        tokens,
        width,
        heads,
        head_dim: width / heads,
        hidden: config.intermediate_size,
    };
    let mut layers = Vec::with_capacity(model.layers.len());
    for layer in &model.layers {
        let Some(weights) = LayerWeights::of(layer, &dims)? else {
            return Ok(None);
        };
        layers.push(weights);
    }
    let final_norm = model.final_layer_norm.fused_op()?;
    let mut x = embeddings.flatten_all()?.to_vec1::<f32>()?;
    let mut buffers = Buffers::new(&dims);
    for weights in &layers {
        encoder_layer(weights, &dims, &mut x, &mut buffers)?;
    }
    final_norm.run_into(&x, &mut buffers.normed);
    let out = std::mem::take(&mut buffers.normed);
    Tensor::from_vec(out, (batch, tokens, width), embeddings.device()).map(Some)
}

/// The sizes of one forward pass.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    tokens: usize,
    width: usize,
    heads: usize,
    head_dim: usize,
    /// The MLP's hidden width.
    hidden: usize,
}

impl Dims {
    /// Rows of the residual stream, B·T.
    fn rows(&self) -> usize {
        self.batch * self.tokens
    }
}

/// The working buffers of a forward pass, reused by every layer.
struct Buffers {
    /// A LayerNorm's output, `[rows, D]`.
    normed: Vec<f32>,
    /// The projections, each `[D, rows]`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// One `[T, T]` block of scores per (sample, head).
    scores: Vec<f32>,
    /// The heads' outputs side by side, `[rows, D]`.
    attention: Vec<f32>,
    /// The output of the attention's or the MLP's last product, `[D, rows]`.
    projected: Vec<f32>,
    /// The MLP's hidden layer, `[hidden, rows]`.
    hidden: Vec<f32>,
}

impl Buffers {
    fn new(dims: &Dims) -> Self {
        let activations = dims.rows() * dims.width;
        let scores = dims.batch * dims.heads * dims.tokens * dims.tokens;
        Self {
            normed: vec![0.0; activations],
            q: vec![0.0; activations],
            k: vec![0.0; activations],
            v: vec![0.0; activations],
            scores: vec![0.0; scores],
            attention: vec![0.0; activations],
            projected: vec![0.0; activations],
            hidden: vec![0.0; dims.rows() * dims.hidden],
        }
    }
}

/// One pre-LayerNorm layer on the residual stream `x` `[rows, D]`, in place.
fn encoder_layer(w: &LayerWeights, dims: &Dims, x: &mut [f32], buf: &mut Buffers) -> Result<()> {
    let rows = dims.rows();
    let parallelism = parallelism();
    let stream = View::row_major(rows, dims.width);
    w.norm1.run_into(x, &mut buf.normed);
    w.q.forward_transposed(&buf.normed, stream, &mut buf.q, parallelism)?;
    w.k.forward_transposed(&buf.normed, stream, &mut buf.k, parallelism)?;
    w.v.forward_transposed(&buf.normed, stream, &mut buf.v, parallelism)?;
    w.q.add_bias(&mut buf.q, rows);
    w.k.add_bias(&mut buf.k, rows);
    w.v.add_bias(&mut buf.v, rows);
    let projections = Projections {
        q: &buf.q,
        k: &buf.k,
        v: &buf.v,
    };
    attention(
        dims,
        w.scale,
        projections,
        &mut buf.scores,
        &mut buf.attention,
    )?;
    w.out
        .forward_transposed(&buf.attention, stream, &mut buf.projected, parallelism)?;
    add_transposed(x, &buf.projected, rows, Some(w.out.bias.get()))?;
    w.norm2.run_into(x, &mut buf.normed);
    w.fc1
        .forward_transposed(&buf.normed, stream, &mut buf.hidden, parallelism)?;
    activate(w.activation, &mut buf.hidden, w.fc1.bias.get(), rows)?;
    // The hidden layer is stored [hidden, rows]: as [rows, hidden] its strides are (1, rows).
    let hidden = View {
        rows,
        cols: dims.hidden,
        row_stride: 1,
        col_stride: rows,
        offset: 0,
    };
    w.fc2
        .forward_transposed(&buf.hidden, hidden, &mut buf.projected, parallelism)?;
    add_transposed(x, &buf.projected, rows, Some(w.fc2.bias.get()))?;
    Ok(())
}

/// One layer's weights, borrowed from their tensors.
struct LayerWeights<'a> {
    norm1: LayerNormOp,
    q: Dense<'a>,
    k: Dense<'a>,
    v: Dense<'a>,
    out: Dense<'a>,
    norm2: LayerNormOp,
    fc1: Dense<'a>,
    fc2: Dense<'a>,
    activation: ClipActivation,
    /// The attention's 1/√head_dim.
    scale: f32,
}

impl<'a> LayerWeights<'a> {
    /// `None` when a weight is not a contiguous CPU f32 tensor of the expected shape.
    fn of(layer: &'a ClipEncoderLayer, dims: &Dims) -> Result<Option<Self>> {
        let attn = &layer.self_attn;
        let (d, f) = (dims.width, dims.hidden);
        if attn.num_heads != dims.heads || attn.head_dim != dims.head_dim {
            return Ok(None);
        }
        let (Some(q), Some(k), Some(v), Some(out), Some(fc1), Some(fc2)) = (
            Dense::of(&attn.q_proj, d, d),
            Dense::of(&attn.k_proj, d, d),
            Dense::of(&attn.v_proj, d, d),
            Dense::of(&attn.out_proj, d, d),
            Dense::of(&layer.mlp.fc1, d, f),
            Dense::of(&layer.mlp.fc2, f, d),
        ) else {
            return Ok(None);
        };
        Ok(Some(Self {
            norm1: layer.layer_norm1.fused_op()?,
            q,
            k,
            v,
            out,
            norm2: layer.layer_norm2.fused_op()?,
            fc1,
            fc2,
            activation: layer.mlp.activation,
            scale: attn.scale as f32,
        }))
    }
}

/// The values of a contiguous CPU f32 tensor, borrowed from its storage while this lives.
struct Values<'a> {
    storage: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> Values<'a> {
    /// `None` unless `t` is a contiguous f32 tensor on the CPU of shape `dims`.
    fn of(t: &'a Tensor, dims: &[usize]) -> Option<Self> {
        if t.dtype() != DType::F32 || t.dims() != dims {
            return None;
        }
        let (storage, layout) = t.storage_and_layout();
        f32_values(&storage, layout)?;
        let (start, end) = layout.contiguous_offsets()?;
        Some(Self {
            storage,
            start,
            end,
        })
    }

    fn get(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(values)) => &values[self.start..self.end],
            // `of` admits CPU f32 storage only.
            _ => &[],
        }
    }
}

/// A linear layer's weight `[outputs, inputs]` and bias `[outputs]`.
struct Dense<'a> {
    weight: Values<'a>,
    bias: Values<'a>,
    inputs: usize,
    outputs: usize,
}

impl<'a> Dense<'a> {
    fn of(layer: &'a Linear, inputs: usize, outputs: usize) -> Option<Self> {
        Some(Self {
            weight: Values::of(layer.weight(), &[outputs, inputs])?,
            bias: Values::of(layer.bias()?, &[outputs])?,
            inputs,
            outputs,
        })
    }

    /// `yᵀ = W·xᵀ` without the bias, for `x` `[rows, inputs]` laid out as `xv` in `x`:
    /// `yt` is `[outputs, rows]`, row-major. The GEMM packs x and reads W in place.
    fn forward_transposed(
        &self,
        x: &[f32],
        xv: View,
        yt: &mut [f32],
        parallelism: Parallelism,
    ) -> Result<()> {
        let rows = xv.rows;
        // y `[rows, outputs]` with y[m, n] at n·rows + m.
        let y = View {
            rows,
            cols: self.outputs,
            row_stride: 1,
            col_stride: rows,
            offset: 0,
        };
        // Wᵀ `[inputs, outputs]` with Wᵀ[i, n] = W[n, i] at n·inputs + i.
        let w_t = View {
            rows: self.inputs,
            cols: self.outputs,
            row_stride: 1,
            col_stride: self.inputs,
            offset: 0,
        };
        product(
            yt,
            y,
            (x, xv),
            (self.weight.get(), w_t),
            Gemm::scaled(1.0, parallelism),
        )
    }

    /// Adds the bias to `yt` `[outputs, rows]` from [`Self::forward_transposed`].
    fn add_bias(&self, yt: &mut [f32], rows: usize) {
        let bias = self.bias.get();
        for_row_blocks(yt, rows, |first, block| {
            for (row, b) in block.chunks_exact_mut(rows).zip(&bias[first..]) {
                row.iter_mut().for_each(|v| *v += b);
            }
        });
    }
}

/// The attention's projections, each `[D, rows]`.
#[derive(Clone, Copy)]
struct Projections<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

/// The attention's output pointer, shared by tasks that write disjoint parts of it.
struct SharedOutput(*mut f32);

// SAFETY: the tasks that hold it write disjoint elements through it (see `attention`).
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The pointer (a method, so that closures capture the whole wrapper).
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Causal multi-head attention of the projections into `out` `[rows, D]`, each head's
/// output in its own columns; `scores` holds one `[T, T]` block per (sample, head).
fn attention(
    dims: &Dims,
    scale: f32,
    p: Projections,
    scores: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    let (t, head_dim, rows, width) = (dims.tokens, dims.head_dim, dims.rows(), dims.width);
    let out_len = out.len();
    let shared = SharedOutput(out.as_mut_ptr());
    let block = View::row_major(t, t);
    let task = |(index, s): (usize, &mut [f32])| -> Result<()> {
        let (sample, head) = (index / dims.heads, index % dims.heads);
        // Head `head` of sample `sample` is the [head_dim, T] block of a projection at row
        // head·head_dim, column sample·T; as [T, head_dim] its strides are (1, rows).
        let at = head * head_dim * rows + sample * t;
        let tokens = View {
            rows: t,
            cols: head_dim,
            row_stride: 1,
            col_stride: rows,
            offset: at,
        };
        let keys_t = View {
            rows: head_dim,
            cols: t,
            row_stride: rows,
            col_stride: 1,
            offset: at,
        };
        product(
            s,
            block,
            (p.q, tokens),
            (p.k, keys_t),
            Gemm::scaled(scale, Parallelism::None),
        )?;
        causal_softmax(s, t);
        let dst = View {
            rows: t,
            cols: head_dim,
            row_stride: width,
            col_stride: 1,
            offset: sample * t * width + head * head_dim,
        };
        // SAFETY: `out` is borrowed mutably by this function and only written through
        // `shared`; each task writes rows sample·T… and columns head·head_dim… of it, a
        // block no other task writes or reads.
        unsafe {
            product_into(
                shared.get(),
                out_len,
                dst,
                (s, block),
                (p.v, tokens),
                Gemm::scaled(1.0, Parallelism::None),
            )
        }
    };
    if run_serially(scores.len()) {
        scores.chunks_mut(t * t).enumerate().try_for_each(task)
    } else {
        scores.par_chunks_mut(t * t).enumerate().try_for_each(task)
    }
}

/// The softmax of each row i of the `[T, T]` scores over its first i + 1 values (the keys
/// at or before query i), the others set to exactly 0. Weights that would be subnormal are
/// 0 as well: they are below 10⁻³⁸ of the row's largest, and subnormal operands slow the
/// next product down a hundredfold.
fn causal_softmax(scores: &mut [f32], t: usize) {
    for (i, row) in scores.chunks_exact_mut(t).enumerate() {
        let (visible, hidden) = row.split_at_mut(i + 1);
        let mut max = f32::NEG_INFINITY;
        // SAFETY: `visible` holds i + 1 values.
        unsafe { f32::vec_reduce_max(visible.as_ptr(), &mut max, visible.len()) };
        fast_exp::exp_shifted_in_place(visible, max);
        let mut sum = 0f32;
        // SAFETY: as above.
        unsafe { f32::vec_reduce_sum(visible.as_ptr(), &mut sum, visible.len()) };
        for v in visible.iter_mut() {
            let p = *v / sum;
            *v = if p < f32::MIN_POSITIVE { 0.0 } else { p };
        }
        hidden.fill(0.0);
    }
}

/// The MLP's hidden layer `[hidden, rows]` in place: its bias added, then the activation.
fn activate(
    activation: ClipActivation,
    hidden: &mut Vec<f32>,
    bias: &[f32],
    rows: usize,
) -> Result<()> {
    if !matches!(activation, ClipActivation::QuickGelu) {
        for_row_blocks(hidden, rows, |first, block| {
            for (row, b) in block.chunks_exact_mut(rows).zip(&bias[first..]) {
                row.iter_mut().for_each(|v| *v += b);
            }
        });
        let t = Tensor::from_vec(std::mem::take(hidden), (bias.len(), rows), &Device::Cpu)?;
        *hidden = activation.apply(&t)?.flatten_all()?.to_vec1::<f32>()?;
        return Ok(());
    }
    for_row_blocks(hidden, rows, |first, block| {
        for (row, b) in block.chunks_exact_mut(rows).zip(&bias[first..]) {
            quick_gelu_with_bias(row, *b);
        }
    });
    Ok(())
}

/// `v ← x·σ(1.702 x)` with `x = v + bias`, for every value of `row`, in vector registers.
#[inline(always)]
fn quick_gelu_with_bias_impl(row: &mut [f32], bias: f32) {
    for v in row.iter_mut() {
        let x = *v + bias;
        *v = x / (1.0 + fast_exp::exp(-1.702 * x));
    }
}

crate::nn::simd::dispatch!(quick_gelu_with_bias, quick_gelu_with_bias_impl, (row: &mut [f32], bias: f32));

/// `f(first row, rows)` over blocks of whole rows (of `row_len` values) of `data`, on the
/// pool unless [`run_serially`] says otherwise. The rows are independent, so both ways give
/// the same values.
fn for_row_blocks(data: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let per_block = (4096 / row_len.max(1)).max(1);
    let chunk = per_block * row_len.max(1);
    if run_serially(data.len()) {
        data.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, block)| f(i * per_block, block));
    } else {
        data.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, block)| f(i * per_block, block));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ClipTextConfig;
    use candle_nn::VarBuilder;

    fn config(act: ClipActivation, width: usize, heads: usize, hidden: usize) -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: 50,
            hidden_size: width,
            intermediate_size: hidden,
            num_hidden_layers: 2,
            num_attention_heads: heads,
            max_position_embeddings: 77,
            hidden_act: act,
            layer_norm_eps: 1e-5,
        }
    }

    /// A model with N(0, 0.2²) weights (N(1, 0.2²) for the LayerNorms' scales).
    fn random_model(cfg: &ClipTextConfig, seed: u64) -> Result<ClipTextTransformer> {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        ClipTextTransformer::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev), cfg)?;
        let mut tensors = std::collections::HashMap::new();
        for (i, (name, var)) in varmap.data().lock().unwrap().iter().enumerate() {
            let n = var.elem_count();
            let values = crate::vae::gaussian::standard_normal(seed + i as u64, n);
            let t = (Tensor::from_vec(values, var.shape(), &dev)? * 0.2)?;
            let t = if name.contains("layer_norm") && name.ends_with("weight") {
                (t + 1.0)?
            } else {
                t
            };
            tensors.insert(name.clone(), t);
        }
        ClipTextTransformer::new(VarBuilder::from_tensors(tensors, DType::F32, &dev), cfg)
    }

    /// The direct path against the tensor path, on batches of one and three, sequences of
    /// one to 77 tokens, each activation, one to four heads: within 2·10⁻⁵ of the output's
    /// largest value (the products sum in another order).
    #[test]
    fn direct_path_matches_the_tensor_path() -> Result<()> {
        let dev = Device::Cpu;
        let cases = [
            (ClipActivation::QuickGelu, 32, 2, 64, 3, 77),
            (ClipActivation::QuickGelu, 48, 4, 96, 1, 77),
            (ClipActivation::QuickGelu, 40, 1, 24, 2, 1),
            (ClipActivation::Gelu, 32, 2, 48, 2, 9),
            (ClipActivation::GeluTanh, 24, 3, 40, 1, 20),
        ];
        for (k, (act, width, heads, hidden, batch, tokens)) in cases.into_iter().enumerate() {
            let cfg = config(act, width, heads, hidden);
            let model = random_model(&cfg, 1000 * k as u64)?;
            let values =
                crate::vae::gaussian::standard_normal(7 + k as u64, batch * tokens * width);
            let emb = Tensor::from_vec(values, (batch, tokens, width), &dev)?;
            let direct = forward(&model, &emb)?.expect("the direct path applies");
            let reference = model.forward_embeddings_with_tensor_ops(&emb)?;
            let scale = reference.abs()?.max_all()?.to_scalar::<f32>()?;
            let err = (direct - &reference)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            eprintln!(
                "{act:?} {width}/{heads}/{hidden}, {batch}×{tokens}: max error {err:.2e}, largest value {scale:.2}"
            );
            assert!(
                err <= 2e-5 * scale.max(1.0),
                "{act:?} {width}/{heads}/{hidden}, {batch}×{tokens}: error {err} (scale {scale})"
            );
        }
        Ok(())
    }

    /// A tracked input, or one in another dtype, takes the tensor path.
    #[test]
    fn gradients_and_other_dtypes_take_the_tensor_path() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = config(ClipActivation::QuickGelu, 16, 2, 32);
        let model = random_model(&cfg, 5)?;
        let emb = Tensor::randn(0f32, 1., (1, 4, 16), &dev)?;
        let tracked = candle_core::Var::from_tensor(&emb)?;
        assert!(forward(&model, tracked.as_tensor())?.is_none());
        assert!(forward(&model, &emb.to_dtype(DType::F64)?)?.is_none());
        assert!(forward(&model, &emb)?.is_some());
        Ok(())
    }

    /// The widest build of the activation gives the baseline one's values bit for bit.
    #[test]
    fn quick_gelu_is_the_same_in_every_build() {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let mut fast = values.clone();
        quick_gelu_with_bias(&mut fast, 0.25);
        let mut portable = values;
        quick_gelu_with_bias_impl(&mut portable, 0.25);
        assert!(
            fast.iter()
                .zip(&portable)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }

    /// Hidden keys get exactly zero weight, and the visible ones sum to one.
    #[test]
    fn causal_softmax_zeroes_the_future() {
        let t = 5;
        let mut scores: Vec<f32> = (0..t * t).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let original = scores.clone();
        causal_softmax(&mut scores, t);
        for i in 0..t {
            let row = &scores[i * t..(i + 1) * t];
            assert!(row[i + 1..].iter().all(|p| *p == 0.0), "row {i}: {row:?}");
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6, "row {i} sums to {sum}");
            let max = original[i * t..=i * t + i]
                .iter()
                .fold(f32::MIN, |a, b| a.max(*b));
            let e: Vec<f64> = original[i * t..=i * t + i]
                .iter()
                .map(|s| ((s - max) as f64).exp())
                .collect();
            let total: f64 = e.iter().sum();
            for (p, e) in row.iter().zip(&e) {
                assert!((*p as f64 - e / total).abs() < 1e-6);
            }
        }
        // A key far below the others gets 0, not a subnormal weight.
        let mut far = vec![0.0, 9.0, 9.0, 0.0, 0.0, 9.0, 0.0, 0.0, -200.0];
        causal_softmax(&mut far, 3);
        assert_eq!(far, vec![1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.5, 0.5, 0.0]);
    }
}
