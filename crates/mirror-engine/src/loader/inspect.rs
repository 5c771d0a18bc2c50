//! `inspect`: what a model path holds, checked at the header and config level.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::DType;

use super::checkpoint::{CheckpointConfigs, SingleFileCheckpoint};
use super::config::{JsonConfig, UnetLayout, VaeLayout};
use super::ldm_names::{CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
use super::source::{ModelSource, open_model_source};
use super::weights::WeightFiles;
use crate::{EngineError, Result};

/// What [`inspect`] found at a model path; its `Display` is the `inspect` command's text.
#[derive(Debug, Clone)]
pub struct ModelReport {
    /// The model path as given.
    pub path: PathBuf,
    /// "diffusers folder" or "single-file checkpoint (original SD 1.x layout, bundled configs)".
    pub source_kind: String,
    /// The UNet, VAE and text encoder, in that order.
    pub components: Vec<ComponentReport>,
    /// The tokenizer folder.
    pub tokenizer_dir: PathBuf,
    /// The scheduler config's key fields.
    pub scheduler: ConfigSummary,
    /// Bytes of all weight files.
    pub total_bytes: u64,
}

/// The class and key fields of one component's config file.
#[derive(Debug, Clone)]
pub struct ConfigSummary {
    /// The config file.
    pub file: PathBuf,
    /// `_class_name` (diffusers) or the first `architectures` entry (transformers).
    pub class: Option<String>,
    /// Key fields, as `name = value` text, in a fixed order.
    pub fields: Vec<(String, String)>,
}

/// One model component: its config summary, weight files and tensor counts.
#[derive(Debug, Clone)]
pub struct ComponentReport {
    /// Component name as its diffusers subfolder (`unet`, `vae`, `text_encoder`).
    pub name: String,
    /// The component's config summary.
    pub config: ConfigSummary,
    /// The files its weights are read from (the one checkpoint for a single file).
    pub weight_files: Vec<PathBuf>,
    /// Number of tensors.
    pub tensors: usize,
    /// Number of parameters (elements over all tensors).
    pub parameters: usize,
    /// Stored dtypes with their parameter counts, most first.
    pub dtypes: Vec<(DType, usize)>,
}

const UNET_FIELDS: &[&str] = &[
    "sample_size",
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "attention_head_dim",
    "cross_attention_dim",
    "norm_num_groups",
    "use_linear_projection",
];
const VAE_FIELDS: &[&str] = &[
    "sample_size",
    "in_channels",
    "latent_channels",
    "block_out_channels",
    "layers_per_block",
    "norm_num_groups",
    "scaling_factor",
];
const TEXT_FIELDS: &[&str] = &[
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "vocab_size",
];
const SCHEDULER_FIELDS: &[&str] = &[
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "prediction_type",
    "steps_offset",
    "set_alpha_to_one",
    "clip_sample",
];

fn summarize(cfg: &JsonConfig, fields: &[&str]) -> ConfigSummary {
    ConfigSummary {
        file: cfg.file.clone(),
        class: cfg.class_name(),
        fields: fields
            .iter()
            .filter_map(|f| cfg.get(f).map(|v| (f.to_string(), v.to_string())))
            .collect(),
    }
}

/// Checks the types of the key fields the engine reads (typed `Config` errors).
fn check_text_config(cfg: &JsonConfig) -> Result<()> {
    for f in [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "vocab_size",
    ] {
        cfg.opt_usize(f)?;
    }
    cfg.opt_str("hidden_act")?;
    Ok(())
}

fn check_scheduler_config(cfg: &JsonConfig) -> Result<()> {
    cfg.opt_usize("num_train_timesteps")?;
    cfg.opt_f64("beta_start")?;
    cfg.opt_f64("beta_end")?;
    cfg.opt_str("beta_schedule")?;
    Ok(())
}

/// Reads and checks the configs: UNet/VAE layouts, text encoder and scheduler key field types.
fn read_configs(unet: &Path, vae: &Path, text: &Path, scheduler: &Path) -> Result<[JsonConfig; 4]> {
    let unet = JsonConfig::read(unet)?;
    UnetLayout::from_config(&unet)?;
    let vae = JsonConfig::read(vae)?;
    VaeLayout::from_config(&vae)?;
    vae.opt_f64("scaling_factor")?;
    let text = JsonConfig::read(text)?;
    check_text_config(&text)?;
    let scheduler = JsonConfig::read(scheduler)?;
    check_scheduler_config(&scheduler)?;
    Ok([unet, vae, text, scheduler])
}

fn dtype_counts(shapes: &[(String, Vec<usize>, DType)]) -> Vec<(DType, usize)> {
    let mut counts: Vec<(DType, usize)> = Vec::new();
    for (_, shape, dtype) in shapes {
        let n: usize = shape.iter().product();
        match counts.iter_mut().find(|(d, _)| d == dtype) {
            Some((_, c)) => *c += n,
            None => counts.push((*dtype, n)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
}

fn component(
    name: &str,
    config: ConfigSummary,
    files: Vec<PathBuf>,
    shapes: &[(String, Vec<usize>, DType)],
) -> ComponentReport {
    ComponentReport {
        name: name.to_string(),
        config,
        weight_files: files,
        tensors: shapes.len(),
        parameters: shapes
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum(),
        dtypes: dtype_counts(shapes),
    }
}

fn file_bytes(files: &[PathBuf]) -> Result<u64> {
    files.iter().try_fold(0, |sum, f| {
        let meta = std::fs::metadata(f).map_err(|source| EngineError::Io {
            path: f.clone(),
            source,
        })?;
        Ok(sum + meta.len())
    })
}

/// Describes the model at `path` (diffusers folder or single-file checkpoint with the bundled
/// SD 1.x configs), failing with the typed error when a header or config is broken.
pub fn inspect(path: &Path) -> Result<ModelReport> {
    match open_model_source(path)? {
        ModelSource::Diffusers(folder) => {
            let [unet, vae, text, scheduler] = read_configs(
                &folder.unet.config,
                &folder.vae.config,
                &folder.text_encoder.config,
                &folder.scheduler_config,
            )?;
            let mut components = Vec::new();
            let mut total_bytes = 0;
            for (name, comp, cfg, fields) in [
                ("unet", &folder.unet, &unet, UNET_FIELDS),
                ("vae", &folder.vae, &vae, VAE_FIELDS),
                ("text_encoder", &folder.text_encoder, &text, TEXT_FIELDS),
            ] {
                let weights = WeightFiles::open(&comp.weights)?;
                total_bytes += file_bytes(&comp.weights)?;
                let shapes = weights.shapes_and_dtypes();
                components.push(component(
                    name,
                    summarize(cfg, fields),
                    comp.weights.clone(),
                    &shapes,
                ));
            }
            Ok(ModelReport {
                path: path.to_path_buf(),
                source_kind: "diffusers folder".into(),
                components,
                tokenizer_dir: folder.tokenizer_dir,
                scheduler: summarize(&scheduler, SCHEDULER_FIELDS),
                total_bytes,
            })
        }
        ModelSource::SingleFile(file) => {
            let configs = CheckpointConfigs::bundled_sd_v1();
            let [unet, vae, text, scheduler] = read_configs(
                &configs.unet_config,
                &configs.vae_config,
                &configs.text_encoder_config,
                &configs.scheduler_config,
            )?;
            let checkpoint = SingleFileCheckpoint::open(&file, configs.clone())?;
            let all = checkpoint.weights().shapes_and_dtypes();
            let part = |prefix: &str| -> Vec<(String, Vec<usize>, DType)> {
                let prefix = format!("{prefix}.");
                all.iter()
                    .filter(|(n, _, _)| n.starts_with(&prefix))
                    .cloned()
                    .collect()
            };
            let files = vec![file.clone()];
            let components = vec![
                component(
                    "unet",
                    summarize(&unet, UNET_FIELDS),
                    files.clone(),
                    &part(UNET_PREFIX),
                ),
                component(
                    "vae",
                    summarize(&vae, VAE_FIELDS),
                    files.clone(),
                    &part(VAE_PREFIX),
                ),
                component(
                    "text_encoder",
                    summarize(&text, TEXT_FIELDS),
                    files.clone(),
                    &part(CLIP_PREFIX),
                ),
            ];
            Ok(ModelReport {
                path: path.to_path_buf(),
                source_kind: "single-file checkpoint (original SD 1.x layout, bundled configs)"
                    .into(),
                components,
                tokenizer_dir: configs.tokenizer_dir,
                scheduler: summarize(&scheduler, SCHEDULER_FIELDS),
                total_bytes: file_bytes(&files)?,
            })
        }
    }
}

fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

impl fmt::Display for ConfigSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "    config: {} ({})",
            self.file.display(),
            self.class.as_deref().unwrap_or("no class name")
        )?;
        for (k, v) in &self.fields {
            writeln!(f, "      {k} = {v}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ModelReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.path.display(), self.source_kind)?;
        let mut total_params = 0;
        for c in &self.components {
            total_params += c.parameters;
            writeln!(f, "  {}:", c.name)?;
            write!(f, "{}", c.config)?;
            for w in &c.weight_files {
                writeln!(f, "    weights: {}", w.display())?;
            }
            let dtypes: Vec<String> = c
                .dtypes
                .iter()
                .map(|(d, n)| format!("{d:?} ({})", human_count(*n)))
                .collect();
            writeln!(
                f,
                "    {} tensors, {} parameters, stored as {}",
                c.tensors,
                human_count(c.parameters),
                dtypes.join(", ")
            )?;
        }
        writeln!(f, "  tokenizer: {}", self.tokenizer_dir.display())?;
        writeln!(f, "  scheduler:")?;
        write!(f, "{}", self.scheduler)?;
        write!(
            f,
            "  total: {} parameters, {} of weight files",
            human_count(total_params),
            human_bytes(self.total_bytes)
        )
    }
}
