//! diffusers' `UNet2DConditionModel` (SD 1.x / 2.x layouts), config-driven, differentiable
//! end to end (latent and text context), with optional recording of every cross-attention
//! layer's probabilities, keys and values for attention-guided editing.
//!
//! Latent sizes: height and width must be multiples of [`UNetConfig::downsample_factor`].
//! `forward*` check it and fail with a candle error carrying the
//! [`EngineError::LatentSize`] message; call [`UNet2DConditionModel::check_latent_size`]
//! first to get the typed error.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/unets/unet_2d_condition.py (pinned).

mod attention;
mod blocks;
mod capture;
mod config;
mod embeddings;
mod transformer;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{Conv2d, conv2d};

use crate::EngineError;
use crate::nn::GroupNorm;
use blocks::{BlockAttention, BlockCommon, DownBlock, DownLayout, MidBlock, UpBlock, UpChannels};
use capture::{CaptureSink, module_order_rank};
use config::{DownKind, UpKind};
use embeddings::{TimestepEmbedding, timestep_sinusoid};

pub use capture::{
    AttentionMaps, CaptureRequest, CapturedAttention, Injection, attention_map_loss,
    key_value_losses, map_loss, repeat_batch,
};
pub use config::{FlagPerBlock, PerBlock, UNetConfig};

/// The conditional UNet of Stable Diffusion (diffusers `UNet2DConditionModel`): predicts the noise
/// of a latent given a timestep and text embeddings.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNetConfig,
    /// `vb.prefix()` at the root, stripped from recorded layer names.
    root_prefix: String,
    attn2_names: Vec<String>,
    device: Device,
    dtype: DType,
}

impl UNet2DConditionModel {
    /// Builds the UNet for `cfg` from the weights under `vb`.
    #[expect(
        clippy::too_many_lines,
        reason = "mirrors diffusers' UNet2DConditionModel.__init__ block by block"
    )]
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let plan = cfg.plan()?;
        let n = plan.channels.len();
        let ch0 = plan.channels[0];
        let temb_channels = ch0 * 4;
        let common = BlockCommon {
            temb_channels,
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            use_linear_projection: cfg.use_linear_projection,
        };
        let attention = |i: usize| BlockAttention {
            heads: plan.heads[i],
            transformer_layers: plan.transformer_layers[i],
            context_dim: plan.cross_attention_dim[i],
        };
        let conv = |i: usize, o: usize, k: usize, vb: VarBuilder| conv2d(i, o, k, k / 2, 1, vb);

        let mut attn2_names = Vec::new();
        let mut name_layers = |block: String, count: usize, transformer_layers: usize| {
            for j in 0..count {
                for t in 0..transformer_layers {
                    attn2_names.push(format!(
                        "{block}.attentions.{j}.transformer_blocks.{t}.attn2"
                    ));
                }
            }
        };

        let mut down_blocks = Vec::with_capacity(n);
        for (i, kind) in plan.down.iter().enumerate() {
            let in_c = if i == 0 { ch0 } else { plan.channels[i - 1] };
            let is_final = i + 1 == n;
            let attn = (*kind == DownKind::CrossAttn).then(|| attention(i));
            if attn.is_some() {
                name_layers(
                    format!("down_blocks.{i}"),
                    plan.layers[i],
                    plan.transformer_layers[i],
                );
            }
            let layout = DownLayout {
                in_channels: in_c,
                out_channels: plan.channels[i],
                num_layers: plan.layers[i],
                downsample_padding: (!is_final).then_some(cfg.downsample_padding),
            };
            down_blocks.push(DownBlock::new(
                vb.pp("down_blocks").pp(i),
                &common,
                attn,
                &layout,
            )?);
        }

        let mut up_blocks = Vec::with_capacity(n);
        for (i, kind) in plan.up.iter().enumerate() {
            // Up block i mirrors down block n-1-i.
            let r = n - 1 - i;
            let ch = UpChannels {
                in_channels: plan.channels[r.saturating_sub(1)],
                prev_output_channels: plan.channels[(r + 1).min(n - 1)],
                out_channels: plan.channels[r],
            };
            let attn = (*kind == UpKind::CrossAttn).then(|| attention(r));
            if attn.is_some() {
                name_layers(
                    format!("up_blocks.{i}"),
                    plan.layers[r] + 1,
                    plan.transformer_layers[r],
                );
            }
            up_blocks.push(UpBlock::new(
                vb.pp("up_blocks").pp(i),
                &common,
                attn,
                ch,
                plan.layers[r] + 1,
                i + 1 < n,
            )?);
        }
        name_layers("mid_block".to_string(), 1, plan.transformer_layers[n - 1]);
        let mid_block = MidBlock::new(
            vb.pp("mid_block"),
            &common,
            attention(n - 1),
            plan.channels[n - 1],
            cfg.mid_block_scale_factor,
        )?;

        let conv_in = conv(cfg.in_channels, ch0, cfg.conv_in_kernel, vb.pp("conv_in"))?;
        Ok(Self {
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), ch0, temb_channels)?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                cfg.norm_num_groups,
                ch0,
                cfg.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv(
                ch0,
                cfg.out_channels,
                cfg.conv_out_kernel,
                vb.pp("conv_out"),
            )?,
            device: conv_in.weight().device().clone(),
            dtype: conv_in.weight().dtype(),
            conv_in,
            config: cfg.clone(),
            root_prefix: vb.prefix(),
            attn2_names,
        })
    }

    /// The config it was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Height and width must be positive multiples of the downsampling factor.
    pub fn check_latent_size(&self, h: usize, w: usize) -> crate::Result<()> {
        let f = self.config.downsample_factor();
        if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(EngineError::LatentSize {
                height: h,
                width: w,
                reason: format!("height and width must be positive multiples of {f}"),
            });
        }
        Ok(())
    }

    /// Every cross-attention layer, in `named_modules()` order (down, up, mid).
    pub fn attn2_layer_names(&self) -> Vec<String> {
        self.attn2_names.clone()
    }

    /// eps prediction; sample `[B,C,H,W]`, one timestep for the whole batch,
    /// encoder_hidden_states `[B,77,D]`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        self.run(sample, timestep, encoder_hidden_states, None)
    }

    /// As [`Self::forward`], also returning what `request` asks of every `attn2` layer (still
    /// attached to the autograd graph). Nothing is kept when the request is empty.
    pub fn forward_with_capture(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        request: CaptureRequest,
    ) -> Result<(Tensor, AttentionMaps)> {
        self.forward_injecting(sample, timestep, encoder_hidden_states, request, None)
    }

    /// As [`Self::forward_with_capture`], one sample of the batch reading its text with the
    /// `inject`ed cross-attention maps instead of its own.
    pub fn forward_injecting(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        request: CaptureRequest,
        inject: Option<&Injection>,
    ) -> Result<(Tensor, AttentionMaps)> {
        if !request.any() && inject.is_none() {
            let eps = self.run(sample, timestep, encoder_hidden_states, None)?;
            return Ok((eps, AttentionMaps::default()));
        }
        let mut layers = Vec::with_capacity(self.attn2_names.len());
        let mut sink = CaptureSink {
            request,
            layers: &mut layers,
            inject,
        };
        let eps = self.run(sample, timestep, encoder_hidden_states, Some(&mut sink))?;
        if !self.root_prefix.is_empty() {
            let root = format!("{}.", self.root_prefix);
            for layer in &mut layers {
                if let Some(rest) = layer.name.strip_prefix(&root) {
                    layer.name = rest.to_string();
                }
            }
        }
        // Executed down, mid, up; reported in module order down, up, mid.
        layers.sort_by_key(|l| module_order_rank(&l.name));
        Ok((eps, AttentionMaps { layers }))
    }

    /// Sinusoidal timestep embedding `[batch, block_out_channels[0]]` (diffusers `time_proj`).
    pub fn time_proj(&self, timestep: f64, batch: usize) -> Result<Tensor> {
        let cfg = &self.config;
        let dim = cfg.block_out_channels[0];
        timestep_sinusoid(
            timestep,
            dim,
            cfg.flip_sin_to_cos,
            cfg.freq_shift,
            batch,
            &self.device,
        )?
        .to_dtype(self.dtype)
    }

    /// `time_embedding(time_proj(t))`: `[batch, 4·block_out_channels[0]]`.
    pub fn time_embedding(&self, timestep: f64, batch: usize) -> Result<Tensor> {
        self.time_embedding
            .forward(&self.time_proj(timestep, batch)?)
    }

    fn run(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        mut sink: Option<&mut CaptureSink<'_>>,
    ) -> Result<Tensor> {
        let (batch, _, h, w) = sample.dims4()?;
        self.check_latent_size(h, w)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (context_batch, _, _) = context.dims3()?;
        if context_batch != batch {
            candle_core::bail!(
                "encoder_hidden_states batch {context_batch} differs from the sample batch {batch}"
            );
        }
        let x = if self.config.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };
        let temb = self.time_embedding(timestep, batch)?;

        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            h = block.forward(&h, &temb, context, &mut skips, sink.as_deref_mut())?;
        }
        h = self
            .mid_block
            .forward(&h, &temb, context, sink.as_deref_mut())?;
        for block in &self.up_blocks {
            h = block.forward(&h, &temb, context, &mut skips, sink.as_deref_mut())?;
        }
        let h = self.conv_norm_out.forward(&h)?.silu()?;
        self.conv_out.forward(&h)
    }
}
