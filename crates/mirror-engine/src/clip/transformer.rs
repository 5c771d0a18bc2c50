//! `CLIPTextTransformer`, weight names as in transformers' `CLIPTextModel`
//! (`text_model.embeddings…`, `text_model.encoder.layers.{i}…`, `text_model.final_layer_norm`).
//! Ports: https://github.com/huggingface/transformers/blob/v4.44.0/src/transformers/models/clip/modeling_clip.py (pinned).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::config::{ClipActivation, ClipTextConfig};
use crate::nn::{LayerNorm, softmax_last_dim};

mod cpu;

/// Token embedding + learned absolute position embedding.
#[derive(Debug, Clone)]
struct ClipTextEmbeddings {
    token_embedding: Embedding,
    position_embedding: Tensor,
}

impl ClipTextEmbeddings {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let token_embedding =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("token_embedding"))?;
        let position_embedding = vb
            .pp("position_embedding")
            .get((cfg.max_position_embeddings, cfg.hidden_size), "weight")?;
        Ok(Self {
            token_embedding,
            position_embedding,
        })
    }

    fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_batch, seq_len) = input_ids.dims2()?;
        let max_len = self.position_embedding.dim(0)?;
        if seq_len > max_len {
            candle_core::bail!(
                "CLIP text encoder: {seq_len} tokens exceed max_position_embeddings {max_len}"
            );
        }
        let positions = self.position_embedding.narrow(0, 0, seq_len)?;
        self.token_embedding
            .forward(input_ids)?
            .broadcast_add(&positions.unsqueeze(0)?)
    }
}

#[derive(Debug, Clone)]
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl ClipAttention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let head_dim = cfg.head_dim();
        Ok(Self {
            q_proj: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `[B, T, D]` → `[B, H, T, head_dim]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.num_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `mask` is additive, `[T, T]` f32 (0 where visible, f32::MIN where hidden).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let q = self.split_heads(&(self.q_proj.forward(x)? * self.scale)?)?;
        let k = self.split_heads(&self.k_proj.forward(x)?)?;
        let v = self.split_heads(&self.v_proj.forward(x)?)?;
        // Softmax in f32 whatever the model dtype, as transformers does.
        let logits = q
            .matmul(&k.t()?)?
            .to_dtype(DType::F32)?
            .broadcast_add(mask)?;
        let probs = softmax_last_dim(&logits)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    activation: ClipActivation,
}

impl ClipMlp {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("fc1"))?,
            fc2: candle_nn::linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("fc2"))?,
            activation: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward(&self.activation.apply(&self.fc1.forward(x)?)?)
    }
}

/// Pre-LayerNorm transformer layer.
#[derive(Debug, Clone)]
struct ClipEncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    mlp: ClipMlp,
}

impl ClipEncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::new(d, eps, vb.pp("layer_norm1"))?,
            self_attn: ClipAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::new(d, eps, vb.pp("layer_norm2"))?,
            mlp: ClipMlp::new(vb.pp("mlp"), cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let x = (x + self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?)?;
        &x + self.mlp.forward(&self.layer_norm2.forward(&x)?)?
    }
}

/// The CLIP text encoder (transformers' `CLIPTextModel`): token ids to the embeddings the UNet's
/// cross-attention reads.
#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    embeddings: ClipTextEmbeddings,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: LayerNorm,
    config: ClipTextConfig,
}

impl ClipTextTransformer {
    /// Accepts weights named `text_model.…` (SD 1.x/2.x files) or without that prefix
    /// (transformers ≥ 5 writes them so).
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let embeddings = ClipTextEmbeddings::new(vb.pp("embeddings"), cfg)?;
        let layers_vb = vb.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(layers_vb.pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::new(
            cfg.hidden_size,
            cfg.layer_norm_eps,
            vb.pp("final_layer_norm"),
        )?;
        Ok(Self {
            embeddings,
            layers,
            final_layer_norm,
            config: cfg.clone(),
        })
    }

    /// `[B, T]` token ids (u32 or i64) → `last_hidden_state` `[B, T, D]` (after the final
    /// LayerNorm), with a causal mask and no padding mask, as SD uses it.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.forward_embeddings(&self.embed(input_ids)?)
    }

    /// Token + position embeddings (transformers' `hidden_states[0]`), `[B, T, D]`.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.embeddings.forward(input_ids)
    }

    /// The transformer layers and final LayerNorm applied to embeddings `[B, T, D]`.
    pub fn forward_embeddings(&self, embeddings: &Tensor) -> Result<Tensor> {
        // On the CPU in f32 without a gradient: the direct kernels of `cpu`.
        if let Some(out) = cpu::forward(self, embeddings)? {
            return Ok(out);
        }
        self.forward_embeddings_with_tensor_ops(embeddings)
    }

    /// [`Self::forward_embeddings`] with candle's tensor operations (any device and dtype,
    /// differentiable).
    fn forward_embeddings_with_tensor_ops(&self, embeddings: &Tensor) -> Result<Tensor> {
        let (_, seq_len, _) = embeddings.dims3()?;
        let mask = causal_mask(seq_len, embeddings.device())?;
        let mut x = embeddings.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &mask)?;
        }
        self.final_layer_norm.forward(&x)
    }

    /// Width D of the output embeddings.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The config it was built from.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }
}

/// Additive causal mask `[T, T]`, f32: 0 on and below the diagonal, f32::MIN above
/// (transformers uses `finfo.min`, which softmax turns into exactly 0).
fn causal_mask(seq_len: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq_len)
        .flat_map(|i| (0..seq_len).map(move |j| if j > i { f32::MIN } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq_len, seq_len), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Var};
    use std::collections::HashMap;

    fn tiny_config(act: ClipActivation) -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: 11,
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            max_position_embeddings: 6,
            hidden_act: act,
            layer_norm_eps: 1e-5,
        }
    }

    /// Deterministic pseudo-random weights for every tensor the model asks for.
    fn random_vb(cfg: &ClipTextConfig, prefix: &str) -> Result<VarBuilder<'static>> {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let vb = if prefix.is_empty() { vb } else { vb.pp(prefix) };
        ClipTextTransformer::new(vb, cfg)?;
        let tensors: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, (name, var))| {
                let n = var.elem_count();
                let values: Vec<f32> = (0..n)
                    .map(|k| (((k * 37 + i * 101) % 97) as f32 / 97.0 - 0.5) * 0.8)
                    .collect();
                let t = Tensor::from_vec(values, var.shape(), &dev).unwrap();
                (name.clone(), t)
            })
            .collect();
        Ok(VarBuilder::from_tensors(tensors, DType::F32, &dev))
    }

    #[test]
    fn causal_mask_hides_the_future_only() -> Result<()> {
        let cfg = tiny_config(ClipActivation::QuickGelu);
        let model = ClipTextTransformer::new(random_vb(&cfg, "")?, &cfg)?;
        let ids = Tensor::new(&[[3u32, 1, 4, 1, 5, 9]], &Device::Cpu)?;
        let changed = Tensor::new(&[[3u32, 1, 4, 7, 2, 6]], &Device::Cpu)?;
        let a = model.forward(&ids)?.squeeze(0)?;
        let b = model.forward(&changed)?.squeeze(0)?;
        let diff = (a - b)?
            .abs()?
            .max_keepdim(D::Minus1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(diff[..3].iter().all(|d| *d == 0.0), "{diff:?}");
        assert!(diff[3..].iter().all(|d| *d > 1e-4), "{diff:?}");
        Ok(())
    }

    #[test]
    fn activation_variant_changes_the_output() -> Result<()> {
        let ids = Tensor::new(&[[3u32, 1, 4]], &Device::Cpu)?;
        let run = |act| -> Result<Tensor> {
            let cfg = tiny_config(act);
            ClipTextTransformer::new(random_vb(&cfg, "text_model")?, &cfg)?.forward(&ids)
        };
        let quick = run(ClipActivation::QuickGelu)?;
        let gelu = run(ClipActivation::Gelu)?;
        let d = (quick - gelu)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d > 1e-4, "quick_gelu and gelu gave the same output");
        Ok(())
    }

    /// The encoder on embeddings is differentiable (LayerNorm, softmax, activation).
    #[test]
    fn gradient_wrt_embeddings_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for act in [ClipActivation::QuickGelu, ClipActivation::Gelu] {
            let cfg = tiny_config(act);
            let model = ClipTextTransformer::new(random_vb(&cfg, "")?, &cfg)?;
            let emb0 = model.embed(&Tensor::new(&[[2u32, 5, 7, 1]], &dev)?)?;
            let weight = Tensor::from_vec(
                (0..32)
                    .map(|k| ((k * 13 % 17) as f32 / 17.0) - 0.4)
                    .collect::<Vec<_>>(),
                (1, 4, 8),
                &dev,
            )?;
            let loss = |e: &Tensor| model.forward_embeddings(e)?.mul(&weight)?.sum_all();
            let var = Var::from_tensor(&emb0)?;
            let grads = loss(var.as_tensor())?.backward()?;
            let g = grads
                .get(var.as_tensor())
                .expect("gradient")
                .flatten_all()?
                .to_vec1::<f32>()?;
            let base = emb0.flatten_all()?.to_vec1::<f32>()?;
            let h = 5e-3f32;
            let mut max_g = 0f32;
            for i in 0..base.len() {
                let shifted = |delta: f32| -> Result<f32> {
                    let mut v = base.clone();
                    v[i] += delta;
                    loss(&Tensor::from_vec(v, (1, 4, 8), &dev)?)?.to_scalar::<f32>()
                };
                let fd = (shifted(h)? - shifted(-h)?) / (2.0 * h);
                let tol = 2e-2 * fd.abs().max(g[i].abs()) + 2e-3;
                assert!(
                    (fd - g[i]).abs() <= tol,
                    "{act:?} [{i}]: fd {fd} vs grad {}",
                    g[i]
                );
                max_g = max_g.max(g[i].abs());
            }
            assert!(max_g > 1e-2, "{act:?}: gradient vanished");
        }
        Ok(())
    }
}
