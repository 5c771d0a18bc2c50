//! LoRAs applied to a loaded model: the text encoder and UNet are rebuilt from the model's
//! weight files with each patched weight replaced by `W + Σ deltas` (new tensors, so gradients
//! flow through them like through any weight); removing them rebuilds from the files alone,
//! which gives back the original weights bit for bit (nothing is subtracted).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use super::{StableDiffusion, build_text_and_unet};
use crate::clip::{ClipTextConfig, ClipTextTransformer};
use crate::loader::lora::{LoraDelta, LoraInfo, LoraSpec, LoraTarget, TargetWeights, read_lora};
use crate::loader::{ModelSource, SingleFileCheckpoint, ldm_names, open_model_source};
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::{EngineError, Result};

/// A backend that serves `base`'s tensors, with `deltas` (by requested name) added in f32.
struct PatchedBackend {
    base: VarBuilder<'static>,
    deltas: Arc<HashMap<String, Vec<Tensor>>>,
}

impl SimpleBackend for PatchedBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.deltas.get(name) {
            None => self.base.get_with_hints_dtype(s, name, init, dtype),
            Some(deltas) => {
                let mut w = self.base.get_with_hints_dtype(s, name, init, DType::F32)?;
                for d in deltas {
                    w = (w + d)?;
                }
                w.to_dtype(dtype)
            }
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.base.get_unchecked_dtype(name, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.base.contains_tensor(name)
    }
}

fn patched(
    base: VarBuilder<'static>,
    deltas: &Arc<HashMap<String, Vec<Tensor>>>,
) -> VarBuilder<'static> {
    let dtype = base.dtype();
    let device = base.device().clone();
    let backend = PatchedBackend {
        base,
        deltas: deltas.clone(),
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device)
}

fn names_and_shapes(files: &crate::loader::WeightFiles) -> Vec<(String, Vec<usize>)> {
    files
        .shapes_and_dtypes()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect()
}

/// Where the text encoder and UNet of the loaded model are rebuilt from: var builders under
/// the names the networks ask for, their configs, and those names with their shapes (what a
/// LoRA key may patch).
struct RebuildSource {
    text_encoder: Box<dyn Fn(DType) -> VarBuilder<'static>>,
    unet: Box<dyn Fn(DType) -> VarBuilder<'static>>,
    text_cfg: ClipTextConfig,
    unet_cfg: UNetConfig,
    text_targets: TargetWeights,
    unet_targets: TargetWeights,
}

impl RebuildSource {
    fn of(sd: &StableDiffusion) -> Result<Self> {
        let device = sd.device.clone();
        match open_model_source(&sd.info.path)? {
            ModelSource::Diffusers(folder) => {
                let text_files = folder.text_encoder.open_weights()?;
                let unet_files = folder.unet.open_weights()?;
                let text_targets = TargetWeights::new(names_and_shapes(&text_files));
                let unet_targets = TargetWeights::new(names_and_shapes(&unet_files));
                let text_map = Arc::new(ldm_names::diffusers_text_encoder_map());
                let dev = device.clone();
                Ok(Self {
                    text_encoder: Box::new(move |dtype| {
                        text_files.var_builder_mapped(text_map.clone(), dtype, &dev)
                    }),
                    unet: Box::new(move |dtype| unet_files.var_builder(dtype, &device)),
                    text_cfg: ClipTextConfig::from_file(&folder.text_encoder.config)?,
                    unet_cfg: UNetConfig::from_file(&folder.unet.config)?,
                    text_targets,
                    unet_targets,
                })
            }
            ModelSource::SingleFile(file) => {
                let configs = sd.checkpoint_configs.clone().ok_or_else(|| {
                    EngineError::InvalidInput(format!(
                        "{}: the configs the checkpoint was loaded with are not known",
                        file.display()
                    ))
                })?;
                let ckpt = SingleFileCheckpoint::open(&file, configs)?;
                // The checkpoint stores original names; LoRA keys name diffusers modules.
                let stored = ckpt.weights().shapes_and_dtypes();
                let maps = ckpt.name_maps().clone();
                let requested = |map: &crate::loader::NameMap| {
                    (stored.iter())
                        .filter_map(|(n, s, _)| Some((map.requested_name(n)?, s.clone())))
                        .collect::<Vec<_>>()
                };
                let text_targets = TargetWeights::new(requested(&maps.text_encoder));
                let unet_targets = TargetWeights::new(requested(&maps.unet));
                let text_cfg = ClipTextConfig::from_file(&ckpt.configs().text_encoder_config)?;
                let unet_cfg = UNetConfig::from_file(&ckpt.configs().unet_config)?;
                let (text_ckpt, dev) = (ckpt.clone(), device.clone());
                Ok(Self {
                    text_encoder: Box::new(move |dtype| text_ckpt.text_encoder_vb(dtype, &dev)),
                    unet: Box::new(move |dtype| ckpt.unet_vb(dtype, &device)),
                    text_cfg,
                    unet_cfg,
                    text_targets,
                    unet_targets,
                })
            }
        }
    }
}

impl StableDiffusion {
    /// Applies `loras` (replacing any applied before; empty = the original model) to a
    /// diffusers folder or a single-file checkpoint. Returns what each file is and how many
    /// weights it changed.
    pub fn set_loras(&mut self, loras: &[LoraSpec]) -> Result<Vec<LoraInfo>> {
        let source = RebuildSource::of(self)?;
        let mut infos = Vec::with_capacity(loras.len());
        let mut by_target: HashMap<LoraTarget, HashMap<String, Vec<Tensor>>> = HashMap::new();
        for spec in loras {
            let file = read_lora(spec, &self.device)?;
            let deltas: Vec<LoraDelta> = file.deltas(&source.unet_targets, &source.text_targets)?;
            infos.push(file.info(deltas.len()));
            for d in deltas {
                let name = match d.target {
                    // The text encoder always asks with `text_model.` (see ClipTextTransformer::new).
                    LoraTarget::TextEncoder => format!(
                        "text_model.{}",
                        d.name.strip_prefix("text_model.").unwrap_or(&d.name)
                    ),
                    LoraTarget::Unet => d.name.clone(),
                };
                by_target
                    .entry(d.target)
                    .or_default()
                    .entry(name)
                    .or_default()
                    .push(d.delta);
            }
        }
        let text_deltas = Arc::new(
            by_target
                .remove(&LoraTarget::TextEncoder)
                .unwrap_or_default(),
        );
        let unet_deltas = Arc::new(by_target.remove(&LoraTarget::Unet).unwrap_or_default());
        let label = self.info.path.clone();
        let build = |dtype: DType| -> Result<(ClipTextTransformer, UNet2DConditionModel)> {
            let text_vb = patched((source.text_encoder)(dtype), &text_deltas);
            let unet_vb = patched((source.unet)(dtype), &unet_deltas);
            build_text_and_unet(
                ((text_vb, label.as_path()), &source.text_cfg),
                ((unet_vb, label.as_path()), &source.unet_cfg),
            )
        };
        let (text, unet) = build(DType::F32)?;
        let half = match &self.half {
            Some(h) => Some(build(h.dtype)?),
            None => None,
        };
        self.text_encoder = text;
        self.unet = unet;
        if let (Some(h), Some((text, unet))) = (self.half.as_mut(), half) {
            h.text_encoder = text;
            h.unet = unet;
        }
        self.loras.clone_from(&infos);
        Ok(infos)
    }
}
