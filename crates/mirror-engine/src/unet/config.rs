//! `unet/config.json` of a diffusers `UNet2DConditionModel`, with diffusers' defaults for
//! every missing key, and the per-block plan (channels, heads, layers) derived from it.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/unets/unet_2d_condition.py (pinned).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::config::{from_json_object, parse_json_object, read_text};
use crate::loader::config::{MAX_BLOCKS, MAX_LAYERS};
use crate::{EngineError, Result};

/// An integer given once for all blocks or as one value per block (diffusers accepts both).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same value for every block.
    One(usize),
    /// One value per block, in down-block order.
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value per block, checked against the number of blocks.
    fn expand(&self, blocks: usize) -> std::result::Result<Vec<usize>, String> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; blocks]),
            PerBlock::Each(v) if v.len() == blocks => Ok(v.clone()),
            PerBlock::Each(v) => Err(format!("{} values given for {blocks} blocks", v.len())),
        }
    }
}

/// A flag given once or per block (`only_cross_attention`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FlagPerBlock {
    /// The same flag for every block.
    One(bool),
    /// One flag per block, in down-block order.
    Each(Vec<bool>),
}

impl FlagPerBlock {
    fn any(&self) -> bool {
        match self {
            FlagPerBlock::One(b) => *b,
            FlagPerBlock::Each(v) => v.iter().any(|b| *b),
        }
    }
}

/// `unet/config.json` (diffusers' `UNet2DConditionModel`); each field reads its namesake key.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    /// Latent side the model was trained at (64 for SD 1.x at 512 px).
    pub sample_size: usize,
    /// Channels of the input latent (4 for Stable Diffusion).
    pub in_channels: usize,
    /// Channels of the predicted noise (4 for Stable Diffusion).
    pub out_channels: usize,
    /// Whether the input is mapped from `[0, 1]` to `[-1, 1]` (`2x - 1`) before `conv_in`.
    pub center_input_sample: bool,
    /// Whether the timestep embedding puts cosines before sines.
    pub flip_sin_to_cos: bool,
    /// Shift subtracted from the half dimension in the timestep frequencies.
    pub freq_shift: f64,
    /// Down block types, one per block (`CrossAttnDownBlock2D` or `DownBlock2D`).
    pub down_block_types: Vec<String>,
    /// Mid block type; only `UNetMidBlock2DCrossAttn` is supported.
    pub mid_block_type: Option<String>,
    /// Up block types, one per block (`CrossAttnUpBlock2D` or `UpBlock2D`).
    pub up_block_types: Vec<String>,
    /// Self-attention replaced by cross-attention; only `false` is supported.
    pub only_cross_attention: FlagPerBlock,
    /// Output channels of each down block (up blocks use them reversed).
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per down block (up blocks have one more).
    pub layers_per_block: PerBlock,
    /// Padding of the downsampling convs; 0 pads one pixel bottom/right instead.
    pub downsample_padding: usize,
    /// The mid block's output is divided by it.
    pub mid_block_scale_factor: f64,
    /// Activation function; only `silu` is supported.
    pub act_fn: String,
    /// Groups of every group norm; must divide every `block_out_channels`.
    pub norm_num_groups: usize,
    /// Epsilon of the group norms.
    pub norm_eps: f64,
    /// Width of the text embeddings the cross-attention reads (768 for SD 1.x, 1024 for SD 2.x).
    pub cross_attention_dim: PerBlock,
    /// Transformer blocks in each cross-attention block.
    pub transformer_layers_per_block: PerBlock,
    /// SD 1.x naming quirk: the number of heads, unless `num_attention_heads` is given.
    pub attention_head_dim: PerBlock,
    /// Attention heads per block; overrides `attention_head_dim` when given.
    pub num_attention_heads: Option<PerBlock>,
    /// Two cross-attention streams; only `false` is supported.
    pub dual_cross_attention: bool,
    /// Linear instead of 1x1 conv projections around the transformers (SD 2.x).
    pub use_linear_projection: bool,
    /// Only changes the rounding of half-precision scores; f32 needs nothing.
    pub upcast_attention: bool,
    /// How the timestep embedding enters the ResNets; only `default` is supported.
    pub resnet_time_scale_shift: String,
    /// Timestep embedding kind; only `positional` is supported.
    pub time_embedding_type: String,
    /// Kernel size of `conv_in`; must be odd.
    pub conv_in_kernel: usize,
    /// Kernel size of `conv_out`; must be odd.
    pub conv_out_kernel: usize,
    // Conditioning extras of other model families: accepted only when absent or null.
    /// Class embedding kind; must be absent or null.
    pub class_embed_type: Option<Value>,
    /// Additional embedding kind (SDXL); must be absent or null.
    pub addition_embed_type: Option<Value>,
    /// Number of class embeddings; must be absent or null.
    pub num_class_embeds: Option<Value>,
    /// Timestep condition projection width (LCM); must be absent or null.
    pub time_cond_proj_dim: Option<Value>,
    /// Encoder hidden state projection width; must be absent or null.
    pub encoder_hid_dim: Option<Value>,
    /// Timestep embedding width; must be absent or null (then `4 * block_out_channels[0]`).
    pub time_embedding_dim: Option<Value>,
    /// Activation after the timestep embedding; must be absent or null.
    pub timestep_post_act: Option<Value>,
    /// Attention kind; only absent or `default` is supported.
    pub attention_type: Option<String>,
}

impl Default for UNetConfig {
    /// diffusers' `UNet2DConditionModel.__init__` defaults (SD 1.x sizes).
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|t| t.to_string()).collect();
        Self {
            sample_size: 64,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".to_string()),
            up_block_types: s(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            only_cross_attention: FlagPerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".to_string(),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            upcast_attention: false,
            resnet_time_scale_shift: "default".to_string(),
            time_embedding_type: "positional".to_string(),
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            class_embed_type: None,
            addition_embed_type: None,
            num_class_embeds: None,
            time_cond_proj_dim: None,
            encoder_hid_dim: None,
            time_embedding_dim: None,
            timestep_post_act: None,
            attention_type: None,
        }
    }
}

/// Block kinds this UNet implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownKind {
    CrossAttn,
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpKind {
    CrossAttn,
    Plain,
}

/// Largest latent side accepted as `sample_size` (SD 1.x: 64; 16384-pixel images at factor 8).
const MAX_SAMPLE_SIZE: usize = 2048;

const DOWN_TYPES: &str = "CrossAttnDownBlock2D, DownBlock2D";
const UP_TYPES: &str = "CrossAttnUpBlock2D, UpBlock2D";
const MID_TYPES: &str = "UNetMidBlock2DCrossAttn";

/// Per-block sizes, resolved from the config (index = down block; up blocks use them reversed).
#[derive(Debug, Clone)]
pub(crate) struct BlockPlan {
    pub down: Vec<DownKind>,
    pub up: Vec<UpKind>,
    pub channels: Vec<usize>,
    pub layers: Vec<usize>,
    pub heads: Vec<usize>,
    pub transformer_layers: Vec<usize>,
    pub cross_attention_dim: Vec<usize>,
}

impl UNetConfig {
    /// Reads and validates `unet/config.json`. Every error names the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg = Self::from_json_str(&read_text(path)?, path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Parses without validating; `file` only labels the errors.
    fn from_json_str(text: &str, file: &Path) -> Result<Self> {
        from_json_object(parse_json_object(text, file)?, file)
    }

    /// Checks what this implementation supports and that the sizes fit together.
    pub fn validate(&self, file: &Path) -> Result<()> {
        self.plan_for(file).map(|_| ())
    }

    /// 2^(number of downsamplers): latent height and width must be multiples of it.
    pub fn downsample_factor(&self) -> usize {
        1 << self.down_block_types.len().saturating_sub(1)
    }

    pub(crate) fn plan(&self) -> candle_core::Result<BlockPlan> {
        self.plan_for(Path::new("unet/config.json"))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    #[expect(
        clippy::too_many_lines,
        reason = "every per-block config key is checked here against the block count, one after another"
    )]
    fn plan_for(&self, file: &Path) -> Result<BlockPlan> {
        let file: PathBuf = file.to_path_buf();
        let err = |field: &str, reason: String| EngineError::Config {
            file: file.clone(),
            field: field.to_string(),
            reason,
        };
        let unknown = |block: &str, supported: &str| EngineError::UnknownBlockType {
            file: file.clone(),
            block: block.to_string(),
            supported: supported.to_string(),
        };
        let down = self
            .down_block_types
            .iter()
            .map(|t| match t.as_str() {
                "CrossAttnDownBlock2D" => Ok(DownKind::CrossAttn),
                "DownBlock2D" => Ok(DownKind::Plain),
                other => Err(unknown(other, DOWN_TYPES)),
            })
            .collect::<Result<Vec<_>>>()?;
        let up = self
            .up_block_types
            .iter()
            .map(|t| match t.as_str() {
                "CrossAttnUpBlock2D" => Ok(UpKind::CrossAttn),
                "UpBlock2D" => Ok(UpKind::Plain),
                other => Err(unknown(other, UP_TYPES)),
            })
            .collect::<Result<Vec<_>>>()?;
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            Some(other) => return Err(unknown(other, MID_TYPES)),
            None => return Err(unknown("null (no mid block)", MID_TYPES)),
        }

        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(err("block_out_channels", "must not be empty".into()));
        }
        // 2^(blocks − 1) is the downsampling factor: more blocks than this is no UNet.
        if n > MAX_BLOCKS {
            return Err(err(
                "block_out_channels",
                format!("{n} blocks is not a plausible UNet (at most {MAX_BLOCKS})"),
            ));
        }
        if !(1..=MAX_SAMPLE_SIZE).contains(&self.sample_size) {
            return Err(err(
                "sample_size",
                format!(
                    "{} is not a plausible latent side (1 to {MAX_SAMPLE_SIZE})",
                    self.sample_size
                ),
            ));
        }
        if down.len() != n {
            return Err(err(
                "down_block_types",
                format!("{} types for {n} block_out_channels", down.len()),
            ));
        }
        if up.len() != n {
            return Err(err(
                "up_block_types",
                format!("{} types for {n} block_out_channels", up.len()),
            ));
        }
        let expand = |field: &str, v: &PerBlock| {
            let values = v.expand(n).map_err(|r| err(field, r))?;
            if values.contains(&0) {
                return Err(err(field, "values must be positive".into()));
            }
            Ok(values)
        };
        let layer_counts = |field: &str, v: &PerBlock| {
            let values = expand(field, v)?;
            if let Some(l) = values.iter().find(|&&l| l > MAX_LAYERS) {
                return Err(err(
                    field,
                    format!("{l} layers is not a plausible UNet (at most {MAX_LAYERS})"),
                ));
            }
            Ok(values)
        };
        let layers = layer_counts("layers_per_block", &self.layers_per_block)?;
        let transformer_layers = layer_counts(
            "transformer_layers_per_block",
            &self.transformer_layers_per_block,
        )?;
        let cross_attention_dim = expand("cross_attention_dim", &self.cross_attention_dim)?;
        let heads = match &self.num_attention_heads {
            Some(h) => expand("num_attention_heads", h)?,
            None => expand("attention_head_dim", &self.attention_head_dim)?,
        };
        let heads_field = if self.num_attention_heads.is_some() {
            "num_attention_heads"
        } else {
            "attention_head_dim"
        };
        let groups = self.norm_num_groups;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if groups == 0 || c == 0 || c % groups != 0 {
                return Err(err(
                    "norm_num_groups",
                    format!("{groups} groups do not divide block_out_channels[{i}] = {c}"),
                ));
            }
            if c % heads[i] != 0 {
                return Err(err(
                    heads_field,
                    format!(
                        "{} heads do not divide block_out_channels[{i}] = {c}",
                        heads[i]
                    ),
                ));
            }
        }
        let checks: [(&str, bool, &str); 12] = [
            (
                "act_fn",
                self.act_fn == "silu",
                "only \"silu\" is supported",
            ),
            (
                "only_cross_attention",
                !self.only_cross_attention.any(),
                "must be false",
            ),
            (
                "dual_cross_attention",
                !self.dual_cross_attention,
                "must be false",
            ),
            (
                "resnet_time_scale_shift",
                self.resnet_time_scale_shift == "default",
                "only \"default\" is supported",
            ),
            (
                "time_embedding_type",
                self.time_embedding_type == "positional",
                "only \"positional\" is supported",
            ),
            (
                "conv_in_kernel",
                self.conv_in_kernel % 2 == 1,
                "must be odd",
            ),
            (
                "conv_out_kernel",
                self.conv_out_kernel % 2 == 1,
                "must be odd",
            ),
            ("in_channels", self.in_channels > 0, "must be positive"),
            ("out_channels", self.out_channels > 0, "must be positive"),
            ("norm_eps", self.norm_eps > 0.0, "must be positive"),
            (
                "attention_type",
                matches!(self.attention_type.as_deref(), None | Some("default")),
                "only \"default\" is supported",
            ),
            (
                "mid_block_scale_factor",
                self.mid_block_scale_factor != 0.0,
                "must not be 0",
            ),
        ];
        for (field, ok, reason) in checks {
            if !ok {
                return Err(err(field, reason.to_string()));
            }
        }
        let extras = [
            ("class_embed_type", &self.class_embed_type),
            ("addition_embed_type", &self.addition_embed_type),
            ("num_class_embeds", &self.num_class_embeds),
            ("time_cond_proj_dim", &self.time_cond_proj_dim),
            ("encoder_hid_dim", &self.encoder_hid_dim),
            ("time_embedding_dim", &self.time_embedding_dim),
            ("timestep_post_act", &self.timestep_post_act),
        ];
        for (field, v) in extras {
            if v.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(err(field, "not supported (must be absent or null)".into()));
            }
        }
        Ok(BlockPlan {
            down,
            up,
            channels: self.block_out_channels.clone(),
            layers,
            heads,
            transformer_layers,
            cross_attention_dim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<UNetConfig> {
        let cfg = UNetConfig::from_json_str(text, Path::new("cfg.json"))?;
        cfg.validate(Path::new("cfg.json"))?;
        Ok(cfg)
    }

    #[test]
    fn defaults_are_sd15() {
        let cfg = parse("{}").unwrap();
        let plan = cfg.plan().unwrap();
        assert_eq!(plan.heads, vec![8; 4]);
        assert_eq!(cfg.downsample_factor(), 8);
        assert_eq!(plan.cross_attention_dim, vec![1280; 4]);
    }

    #[test]
    fn wrong_type_names_the_field() {
        match parse(r#"{"norm_eps": 1e-5, "layers_per_block": "two"}"#) {
            Err(EngineError::Config { field, file, .. }) => {
                assert_eq!(field, "layers_per_block");
                assert_eq!(file, Path::new("cfg.json"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn per_block_lists_and_heads() {
        let cfg = parse(
            r#"{"attention_head_dim": [5, 10, 20, 20], "use_linear_projection": true,
                "cross_attention_dim": 1024}"#,
        )
        .unwrap();
        assert_eq!(cfg.plan().unwrap().heads, vec![5, 10, 20, 20]);
        let cfg = parse(r#"{"attention_head_dim": 64, "num_attention_heads": [5, 10, 20, 20]}"#);
        assert_eq!(cfg.unwrap().plan().unwrap().heads, vec![5, 10, 20, 20]);
        assert!(matches!(
            parse(r#"{"attention_head_dim": [5, 10]}"#),
            Err(EngineError::Config { field, .. }) if field == "attention_head_dim"
        ));
    }

    #[test]
    fn unknown_block_type() {
        assert!(matches!(
            parse(r#"{"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}"#),
            Err(EngineError::UnknownBlockType { block, .. }) if block == "AttnUpBlock2D"
        ));
    }
}
