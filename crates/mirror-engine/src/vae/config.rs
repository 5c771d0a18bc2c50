//! `vae/config.json` (diffusers `AutoencoderKL`), with diffusers' defaults for absent keys.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/autoencoders/autoencoder_kl.py (pinned).

use std::path::Path;

use serde::Deserialize;

use crate::config::read_json_config;
use crate::loader::config::{MAX_BLOCKS, MAX_LAYERS};
use crate::{EngineError, Result};

/// SD 1.x value, used when the config has no `scaling_factor` (the SD 1.5 files have none).
pub const DEFAULT_SCALING_FACTOR: f64 = 0.18215;

const DOWN_BLOCK_TYPES: &[&str] = &["DownEncoderBlock2D"];
const UP_BLOCK_TYPES: &[&str] = &["UpDecoderBlock2D"];
/// Largest image side accepted as `sample_size` (SD 1.x: 512).
const MAX_SAMPLE_SIZE: usize = 16384;
const ACTIVATIONS: &[&str] = &["silu", "swish", "gelu", "relu"];

fn default_in_channels() -> usize {
    3
}
fn default_out_channels() -> usize {
    3
}
fn default_down_block_types() -> Vec<String> {
    vec!["DownEncoderBlock2D".to_string()]
}
fn default_up_block_types() -> Vec<String> {
    vec!["UpDecoderBlock2D".to_string()]
}
fn default_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn default_layers_per_block() -> usize {
    1
}
fn default_act_fn() -> String {
    "silu".to_string()
}
fn default_latent_channels() -> usize {
    4
}
fn default_norm_num_groups() -> usize {
    32
}
fn default_sample_size() -> usize {
    32
}
fn default_true() -> bool {
    true
}

/// The `AutoencoderKL` hyper-parameters. Every field has diffusers' default, so a config that
/// omits a key behaves as diffusers would load it.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Channels of the input image (3 for RGB).
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Channels of the decoded image (3 for RGB).
    #[serde(default = "default_out_channels")]
    pub out_channels: usize,
    /// Encoder block types, one per block; only `DownEncoderBlock2D` is supported.
    #[serde(default = "default_down_block_types")]
    pub down_block_types: Vec<String>,
    /// Decoder block types, one per block; only `UpDecoderBlock2D` is supported.
    #[serde(default = "default_up_block_types")]
    pub up_block_types: Vec<String>,
    /// Output channels of each encoder block (the decoder uses them reversed).
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per encoder block (decoder blocks have one more).
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: usize,
    /// Activation function (`silu`, `swish`, `gelu` or `relu`).
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    /// Channels of the latent (4 for Stable Diffusion).
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    /// Groups of every group norm.
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: usize,
    /// Image side the model was trained at, in pixels (512 for SD 1.x).
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
    /// Absent in SD 1.x configs: [`DEFAULT_SCALING_FACTOR`] then.
    #[serde(default)]
    pub scaling_factor: Option<f64>,
    /// SD3/Flux-style latent shift (latent = (mean − shift) · scale); absent for SD 1.x/2.x.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Whether a 1x1 conv maps the encoder's moments before sampling.
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    /// Whether a 1x1 conv maps the latent before the decoder.
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// Whether the encoder's and decoder's mid blocks have self-attention.
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    /// Reads and validates `vae/config.json`.
    pub fn from_file(path: &Path) -> Result<VaeConfig> {
        let cfg: VaeConfig = read_json_config(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Spatial factor between image and latent: 2^(number of blocks − 1).
    pub fn downsample_factor(&self) -> usize {
        1usize << self.block_out_channels.len().saturating_sub(1)
    }

    /// The latent scale: `scaling_factor`, else [`DEFAULT_SCALING_FACTOR`].
    pub fn scaling_factor(&self) -> f64 {
        self.scaling_factor.unwrap_or(DEFAULT_SCALING_FACTOR)
    }

    /// The latent shift: `shift_factor`, else 0.
    pub fn shift_factor(&self) -> f64 {
        self.shift_factor.unwrap_or(0.0)
    }

    /// Checks what the model code relies on; errors name `file` and the field.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let err = |field: &str, reason: String| EngineError::Config {
            file: file.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(err("block_out_channels", "must not be empty".into()));
        }
        if n > MAX_BLOCKS {
            return Err(err(
                "block_out_channels",
                format!("{n} blocks is not a plausible VAE (at most {MAX_BLOCKS})"),
            ));
        }
        if self.layers_per_block > MAX_LAYERS {
            return Err(err(
                "layers_per_block",
                format!(
                    "{} layers is not a plausible VAE (at most {MAX_LAYERS})",
                    self.layers_per_block
                ),
            ));
        }
        if !(1..=MAX_SAMPLE_SIZE).contains(&self.sample_size) {
            return Err(err(
                "sample_size",
                format!(
                    "{} is not a plausible image side (1 to {MAX_SAMPLE_SIZE})",
                    self.sample_size
                ),
            ));
        }
        for (field, types, supported) in [
            ("down_block_types", &self.down_block_types, DOWN_BLOCK_TYPES),
            ("up_block_types", &self.up_block_types, UP_BLOCK_TYPES),
        ] {
            if types.len() != n {
                return Err(err(
                    field,
                    format!("{} entries, but block_out_channels has {n}", types.len()),
                ));
            }
            if let Some(block) = types.iter().find(|b| !supported.contains(&b.as_str())) {
                return Err(EngineError::UnknownBlockType {
                    file: file.to_path_buf(),
                    block: block.clone(),
                    supported: supported.join(", "),
                });
            }
        }
        if self.norm_num_groups == 0 {
            return Err(err("norm_num_groups", "must be positive".into()));
        }
        if let Some(&c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % self.norm_num_groups != 0)
        {
            return Err(err(
                "block_out_channels",
                format!(
                    "{c} channels is not a positive multiple of norm_num_groups {}",
                    self.norm_num_groups
                ),
            ));
        }
        for (field, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
        ] {
            if value == 0 {
                return Err(err(field, "must be positive".into()));
            }
        }
        if !ACTIVATIONS.contains(&self.act_fn.as_str()) {
            return Err(err(
                "act_fn",
                format!(
                    "`{}` is not supported (supported: {})",
                    self.act_fn,
                    ACTIVATIONS.join(", ")
                ),
            ));
        }
        match self.scaling_factor {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return Err(err(
                    "scaling_factor",
                    format!("{s} is not a positive number"),
                ));
            }
            _ => {}
        }
        if let Some(s) = self.shift_factor.filter(|s| !s.is_finite()) {
            return Err(err("shift_factor", format!("{s} is not finite")));
        }
        Ok(())
    }
}
