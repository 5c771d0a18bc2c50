//! Single-file SD 1.x checkpoints in the original LDM/CompVis layout (as usually downloaded),
//! read through the name maps of [`super::ldm_names`], plus the reverse conversion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::{JsonConfig, UnetLayout, VaeLayout};
use super::ldm_names::{self, CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
use super::names::NameMap;
use super::source::DiffusersFolder;
use super::weights::WeightFiles;
use crate::{EngineError, Result};

/// The configs and tokenizer a single-file checkpoint is built with (it carries only weights).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfigs {
    /// The UNet's `config.json`.
    pub unet_config: PathBuf,
    /// The VAE's `config.json`.
    pub vae_config: PathBuf,
    /// The CLIP text encoder's `config.json`.
    pub text_encoder_config: PathBuf,
    /// The scheduler's `scheduler_config.json`.
    pub scheduler_config: PathBuf,
    /// The tokenizer folder (`vocab.json` and `merges.txt`, or `tokenizer.json`).
    pub tokenizer_dir: PathBuf,
}

impl CheckpointConfigs {
    /// The bundled SD 1.x configs and CLIP tokenizer (`assets/sd-v1/`); the assets folder is
    /// `$MIRROR_ASSETS` when set, else the source tree's `assets/`.
    pub fn bundled_sd_v1() -> Self {
        let assets = std::env::var_os("MIRROR_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"));
        Self::from_diffusers_folder(&assets.join("sd-v1"))
    }

    /// The configs of a diffusers folder (its weights are ignored).
    pub fn from_diffusers_folder(dir: &Path) -> Self {
        Self {
            unet_config: dir.join("unet").join("config.json"),
            vae_config: dir.join("vae").join("config.json"),
            text_encoder_config: dir.join("text_encoder").join("config.json"),
            scheduler_config: dir.join("scheduler").join("scheduler_config.json"),
            tokenizer_dir: dir.join("tokenizer"),
        }
    }
}

/// The three name maps (diffusers name -> original name) for a given set of configs.
#[derive(Debug, Clone)]
pub struct LdmNameMaps {
    /// UNet names, derived from the UNet config's block layout.
    pub unet: Arc<NameMap>,
    /// VAE names, derived from the VAE config's block layout.
    pub vae: Arc<NameMap>,
    /// CLIP text encoder names (fixed for SD 1.x).
    pub text_encoder: Arc<NameMap>,
}

impl LdmNameMaps {
    /// Derives the UNet and VAE maps from their `config.json` files.
    pub fn from_configs(unet_config: &Path, vae_config: &Path) -> Result<Self> {
        let unet = UnetLayout::from_config(&JsonConfig::read(unet_config)?)?;
        let vae = VaeLayout::from_config(&JsonConfig::read(vae_config)?)?;
        Ok(Self {
            unet: Arc::new(ldm_names::unet_map(&unet)),
            vae: Arc::new(ldm_names::vae_map(&vae)),
            text_encoder: Arc::new(ldm_names::text_encoder_map()),
        })
    }
}

/// An original-layout `.safetensors` checkpoint holding UNet, VAE and CLIP text encoder.
#[derive(Clone)]
pub struct SingleFileCheckpoint {
    path: PathBuf,
    configs: CheckpointConfigs,
    weights: WeightFiles,
    maps: LdmNameMaps,
}

/// Why a file is not an SD 1.x original-layout checkpoint, if it is not.
fn layout_problem(weights: &WeightFiles) -> Option<String> {
    let names = weights.tensor_names();
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    if has("cond_stage_model.model.") {
        return Some("its text encoder is OpenCLIP (`cond_stage_model.model.*`, SD 2.x); only SD 1.x CLIP checkpoints are supported as single files, use a diffusers folder".into());
    }
    if has("conditioner.embedders.") {
        return Some(
            "it is an SDXL checkpoint (`conditioner.embedders.*`), which is not supported".into(),
        );
    }
    if [
        "down_blocks.",
        "encoder.down_blocks.",
        "text_model.",
        "mid_block.",
    ]
    .iter()
    .any(|p| has(p))
    {
        return Some("it holds a single diffusers component (diffusers tensor names); open the whole model folder instead".into());
    }
    let missing: Vec<String> = [UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX]
        .iter()
        .filter(|p| !has(&format!("{p}.")))
        .map(|p| format!("`{p}.*`"))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "no {} tensors (expected an SD 1.x checkpoint in the original layout with UNet, VAE and text encoder)",
            missing.join(", ")
        )
    })
}

impl SingleFileCheckpoint {
    /// Maps the checkpoint, validates its header and layout (`NotAModel` when the expected
    /// prefixes are missing) and derives the name maps from `configs`.
    pub fn open(path: &Path, configs: CheckpointConfigs) -> Result<Self> {
        let weights = WeightFiles::open(&[path.to_path_buf()])?;
        if let Some(reason) = layout_problem(&weights) {
            return Err(EngineError::NotAModel {
                path: path.to_path_buf(),
                reason,
            });
        }
        JsonConfig::read(&configs.text_encoder_config)?;
        JsonConfig::read(&configs.scheduler_config)?;
        let maps = LdmNameMaps::from_configs(&configs.unet_config, &configs.vae_config)?;
        Ok(Self {
            path: path.to_path_buf(),
            configs,
            weights,
            maps,
        })
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configs the checkpoint is built with.
    pub fn configs(&self) -> &CheckpointConfigs {
        &self.configs
    }

    /// The checkpoint's tensors, under their original names.
    pub fn weights(&self) -> &WeightFiles {
        &self.weights
    }

    /// The name maps from diffusers to original names.
    pub fn name_maps(&self) -> &LdmNameMaps {
        &self.maps
    }

    /// UNet weights under diffusers names.
    pub fn unet_vb(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        self.weights
            .var_builder_mapped(self.maps.unet.clone(), dtype, device)
    }

    /// VAE weights under diffusers names (attention 1x1 convolutions served as linear weights).
    pub fn vae_vb(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        self.weights
            .var_builder_mapped(self.maps.vae.clone(), dtype, device)
    }

    /// CLIP text-encoder weights under transformers names (`text_model.*`).
    pub fn text_encoder_vb(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        self.weights
            .var_builder_mapped(self.maps.text_encoder.clone(), dtype, device)
    }
}

/// Renames one component's tensors into the original layout, adding unit dimensions where the
/// original stores 1x1 convolutions (VAE attention).
fn convert_component(
    weights: &WeightFiles,
    map: &NameMap,
    out: &mut HashMap<String, Tensor>,
) -> Result<()> {
    for name in weights.tensor_names() {
        let resolved = map.resolve(&name);
        let Some(stored) = resolved.candidates.first() else {
            continue;
        };
        let mut tensor = weights.load_stored(&name, &Device::Cpu)?;
        if resolved.unit_reshape && tensor.rank() == 2 && name.ends_with(".weight") {
            let (o, i) = tensor.dims2()?;
            tensor = tensor.reshape((o, i, 1, 1))?;
        }
        if out.insert(stored.clone(), tensor).is_some() {
            return Err(EngineError::InvalidInput(format!(
                "{}: two tensors map to `{stored}`",
                weights.label().display()
            )));
        }
    }
    Ok(())
}

/// Writes a single-file original-layout checkpoint from a diffusers folder (stored dtypes kept).
pub fn write_single_file(folder: &DiffusersFolder, out: &Path) -> Result<()> {
    let maps = LdmNameMaps::from_configs(&folder.unet.config, &folder.vae.config)?;
    let mut tensors = HashMap::new();
    convert_component(&folder.unet.open_weights()?, &maps.unet, &mut tensors)?;
    convert_component(&folder.vae.open_weights()?, &maps.vae, &mut tensors)?;
    // Normalise text encoder names to `text_model.*` first (some files lack the prefix).
    let text = folder.text_encoder.open_weights()?;
    let mut text_map = NameMap::identity();
    let with_prefix = format!("{CLIP_PREFIX}.text_model");
    if !text
        .tensor_names()
        .iter()
        .any(|n| n.starts_with("text_model."))
    {
        text_map.rename("", &[&with_prefix]);
    } else {
        text_map.rename("text_model", &[&with_prefix]);
        text_map.rename("", &[CLIP_PREFIX]);
    }
    convert_component(&text, &text_map, &mut tensors)?;
    candle_core::safetensors::save(&tensors, out).map_err(|e| {
        EngineError::Candle(e.context(format!("{}: writing checkpoint", out.display())))
    })
}
