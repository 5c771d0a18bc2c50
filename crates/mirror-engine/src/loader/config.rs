//! Minimal typed reads of the diffusers / transformers `config.json` fields the loader needs
//! (block layout for the checkpoint name maps, key fields for `inspect`). Model construction
//! parses the full configs elsewhere.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::{config_error, read_json_object};
use crate::{EngineError, Result};

/// Most blocks a UNet or VAE config may declare (SD has 4): the downsampling factor is
/// 2^(blocks − 1), and code loops over them.
pub const MAX_BLOCKS: usize = 16;
/// Most layers per block (SD: 2 resnets; SDXL's deepest transformer stack: 10). More is no real
/// model, and loops over the layers (name maps, construction) would run unbounded.
pub const MAX_LAYERS: usize = 64;

/// A parsed JSON config object that reports typed errors naming its file and field.
#[derive(Debug, Clone)]
pub struct JsonConfig {
    /// The file the object was read from; labels every error.
    pub file: PathBuf,
    /// The top-level JSON object.
    pub json: Map<String, Value>,
}

impl JsonConfig {
    /// Reads `file` as a JSON object.
    pub fn read(file: &Path) -> Result<Self> {
        Ok(Self {
            file: file.to_path_buf(),
            json: read_json_object(file)?,
        })
    }

    /// A [`EngineError::Config`] naming this file and `field`.
    pub fn error(&self, field: &str, reason: impl Into<String>) -> EngineError {
        config_error(&self.file, field, reason)
    }

    /// The value of `field`; `null` counts as absent.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.json.get(field).filter(|v| !v.is_null())
    }

    /// The model class: diffusers' `_class_name`, else the first of transformers' `architectures`.
    pub fn class_name(&self) -> Option<String> {
        self.get("_class_name")
            .or_else(|| self.get("architectures").and_then(|a| a.get(0)))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// `field` as a non-negative integer, `None` when absent or null.
    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.error(field, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    /// `field` as a non-negative integer, `default` when absent or null.
    pub fn usize_or(&self, field: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(field)?.unwrap_or(default))
    }

    /// `field` as a number, `None` when absent or null.
    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.error(field, format!("expected a number, found {v}"))),
        }
    }

    /// `field` as a string, `None` when absent or null.
    pub fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.error(field, format!("expected a string, found {v}"))),
        }
    }

    /// `field` as a list of non-negative integers; an error when absent.
    pub fn usize_list(&self, field: &str) -> Result<Vec<usize>> {
        let v = self
            .get(field)
            .ok_or_else(|| self.error(field, "missing"))?;
        let err = || {
            self.error(
                field,
                format!("expected a list of non-negative integers, found {v}"),
            )
        };
        v.as_array()
            .ok_or_else(err)?
            .iter()
            .map(|x| x.as_u64().map(|n| n as usize).ok_or_else(err))
            .collect()
    }

    /// `field` as a list of strings; an error when absent.
    pub fn str_list(&self, field: &str) -> Result<Vec<String>> {
        let v = self
            .get(field)
            .ok_or_else(|| self.error(field, "missing"))?;
        let err = || self.error(field, format!("expected a list of strings, found {v}"));
        v.as_array()
            .ok_or_else(err)?
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(err))
            .collect()
    }

    /// An integer, or a list with one integer per block (diffusers accepts both).
    pub fn per_block(&self, field: &str, blocks: usize, default: usize) -> Result<Vec<usize>> {
        match self.get(field) {
            None => Ok(vec![default; blocks]),
            Some(Value::Array(_)) => {
                let list = self.usize_list(field)?;
                if list.len() != blocks {
                    return Err(
                        self.error(field, format!("{} entries for {blocks} blocks", list.len()))
                    );
                }
                Ok(list)
            }
            Some(_) => Ok(vec![self.usize_or(field, default)?; blocks]),
        }
    }
}

fn check_blocks(cfg: &JsonConfig, n: usize) -> Result<()> {
    match n {
        0 => Err(cfg.error("block_out_channels", "must not be empty")),
        n if n > MAX_BLOCKS => Err(cfg.error(
            "block_out_channels",
            format!("{n} blocks is not a plausible model (at most {MAX_BLOCKS})"),
        )),
        _ => Ok(()),
    }
}

fn check_layers(cfg: &JsonConfig, field: &str, layers: &[usize]) -> Result<()> {
    match layers.iter().find(|&&l| l > MAX_LAYERS) {
        Some(l) => Err(cfg.error(
            field,
            format!("{l} layers per block is not a plausible model (at most {MAX_LAYERS})"),
        )),
        None => Ok(()),
    }
}

/// The UNet block layout the original-checkpoint numbering is derived from.
#[derive(Debug, Clone)]
pub struct UnetLayout {
    /// Output channels of each down block (`block_out_channels`).
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more, in reverse block order).
    pub layers_per_block: Vec<usize>,
    /// Whether each down block has attention (its `down_block_types` entry contains `Attn`).
    pub down_has_attention: Vec<bool>,
    /// Whether each up block has attention (its `up_block_types` entry contains `Attn`).
    pub up_has_attention: Vec<bool>,
    /// Whether the mid block has attention (`mid_block_type`, default `UNetMidBlock2DCrossAttn`).
    pub mid_has_attention: bool,
}

impl UnetLayout {
    /// Reads the layout from `unet/config.json`, checking the block and layer counts.
    pub fn from_config(cfg: &JsonConfig) -> Result<Self> {
        let block_out_channels = cfg.usize_list("block_out_channels")?;
        let n = block_out_channels.len();
        check_blocks(cfg, n)?;
        let down = cfg.str_list("down_block_types")?;
        let up = cfg.str_list("up_block_types")?;
        for (field, list) in [("down_block_types", &down), ("up_block_types", &up)] {
            if list.len() != n {
                return Err(cfg.error(
                    field,
                    format!("{} entries for {n} block_out_channels", list.len()),
                ));
            }
        }
        let mid = cfg
            .opt_str("mid_block_type")?
            .unwrap_or_else(|| "UNetMidBlock2DCrossAttn".into());
        let layers_per_block = cfg.per_block("layers_per_block", n, 2)?;
        check_layers(cfg, "layers_per_block", &layers_per_block)?;
        Ok(Self {
            layers_per_block,
            down_has_attention: down.iter().map(|t| t.contains("Attn")).collect(),
            up_has_attention: up.iter().map(|t| t.contains("Attn")).collect(),
            mid_has_attention: mid.contains("Attn"),
            block_out_channels,
        })
    }
}

/// The VAE block layout.
#[derive(Debug, Clone)]
pub struct VaeLayout {
    /// Number of blocks (the length of `block_out_channels`).
    pub blocks: usize,
    /// Resnets per block (`layers_per_block`, default 1).
    pub layers_per_block: usize,
}

impl VaeLayout {
    /// Reads the layout from `vae/config.json`, checking the block and layer counts.
    pub fn from_config(cfg: &JsonConfig) -> Result<Self> {
        let blocks = cfg.usize_list("block_out_channels")?.len();
        check_blocks(cfg, blocks)?;
        let layers_per_block = cfg.usize_or("layers_per_block", 1)?;
        check_layers(cfg, "layers_per_block", &[layers_per_block])?;
        Ok(Self {
            blocks,
            layers_per_block,
        })
    }
}
