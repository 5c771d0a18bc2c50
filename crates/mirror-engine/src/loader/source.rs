//! Finding a model on disk: a diffusers folder (one sub-folder per component) or a single
//! original-layout `.safetensors` checkpoint.

use std::path::{Path, PathBuf};

use candle_core::DType;

use super::weights::WeightFiles;
use crate::{EngineError, Result};

/// What a model path turned out to be.
// Made once per load: the size difference costs nothing, boxing would cost every caller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A diffusers folder, components located.
    Diffusers(DiffusersFolder),
    /// A single original-layout `.safetensors` checkpoint.
    SingleFile(PathBuf),
}

/// A diffusers pipeline folder with every component SD needs located.
#[derive(Debug, Clone)]
pub struct DiffusersFolder {
    /// The folder itself.
    pub root: PathBuf,
    /// The `unet` component.
    pub unet: Component,
    /// The `vae` component.
    pub vae: Component,
    /// The `text_encoder` component.
    pub text_encoder: Component,
    /// The `tokenizer` sub-folder.
    pub tokenizer_dir: PathBuf,
    /// `scheduler/scheduler_config.json`.
    pub scheduler_config: PathBuf,
}

/// One weight-bearing component: its `config.json` and safetensors file(s).
#[derive(Debug, Clone)]
pub struct Component {
    /// The component's `config.json`.
    pub config: PathBuf,
    /// One file, or the shards of a sharded checkpoint.
    pub weights: Vec<PathBuf>,
    /// The dtype (most of) the weights are stored in.
    pub dtype: DType,
}

impl Component {
    /// Maps the weight files (validating their headers).
    pub fn open_weights(&self) -> Result<WeightFiles> {
        WeightFiles::open(&self.weights)
    }
}

const SUBFOLDERS: [&str; 5] = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"];
/// Weight file stems, preferred first (diffusers models, then transformers models).
const STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];

/// Opens `path` as a model: a folder with `model_index.json` or the component sub-folders, or a
/// `.safetensors` single-file checkpoint.
pub fn open_model_source(path: &Path) -> Result<ModelSource> {
    let not_a_model = |reason: &str| EngineError::NotAModel {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        return match ext.as_str() {
            "safetensors" => Ok(ModelSource::SingleFile(path.to_path_buf())),
            "ckpt" | "pt" | "pth" | "bin" => Err(not_a_model(
                "PyTorch pickle checkpoints are not supported (they can run arbitrary code); \
                 convert the file to .safetensors first",
            )),
            _ => Err(not_a_model(
                "expected a diffusers model folder or a .safetensors checkpoint file",
            )),
        };
    }
    let has_index = path.join("model_index.json").is_file();
    let present = SUBFOLDERS.iter().filter(|s| path.join(s).is_dir()).count();
    if !has_index && present == 0 {
        return Err(not_a_model(
            "the folder has no model_index.json and none of the sub-folders unet, vae, text_encoder, tokenizer, scheduler",
        ));
    }
    Ok(ModelSource::Diffusers(open_diffusers_folder(path)?))
}

/// Locates every component of a diffusers folder.
pub fn open_diffusers_folder(root: &Path) -> Result<DiffusersFolder> {
    Ok(DiffusersFolder {
        root: root.to_path_buf(),
        unet: find_component(root, "unet")?,
        vae: find_component(root, "vae")?,
        text_encoder: find_component(root, "text_encoder")?,
        tokenizer_dir: find_tokenizer(root)?,
        scheduler_config: find_file(root, "scheduler", &["scheduler_config.json"])?,
    })
}

fn missing(root: &Path, component: &str, reason: String) -> EngineError {
    EngineError::MissingComponent {
        path: root.join(component),
        component: component.to_string(),
        reason,
    }
}

fn component_dir(root: &Path, component: &str) -> Result<PathBuf> {
    let dir = root.join(component);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(missing(
            root,
            component,
            format!("folder {} not found", dir.display()),
        ))
    }
}

fn find_file(root: &Path, component: &str, names: &[&str]) -> Result<PathBuf> {
    let dir = component_dir(root, component)?;
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            missing(
                root,
                component,
                format!("no {} in {}", names.join(" or "), dir.display()),
            )
        })
}

fn find_tokenizer(root: &Path) -> Result<PathBuf> {
    let dir = component_dir(root, "tokenizer")?;
    let has = |n: &str| dir.join(n).is_file();
    if has("tokenizer.json") || (has("vocab.json") && has("merges.txt")) {
        Ok(dir)
    } else {
        Err(missing(
            root,
            "tokenizer",
            format!(
                "no vocab.json + merges.txt (or tokenizer.json) in {}",
                dir.display()
            ),
        ))
    }
}

/// Finds `config.json` and the safetensors weights of one component.
pub fn find_component(root: &Path, component: &str) -> Result<Component> {
    let config = find_file(root, component, &["config.json"])?;
    let dir = config.parent().unwrap_or(root).to_path_buf();
    let weights = find_weights(&dir).map_err(|reason| missing(root, component, reason))?;
    let dtype = WeightFiles::open(&weights)?.stored_dtype();
    Ok(Component {
        config,
        weights,
        dtype,
    })
}

/// The safetensors file(s) in a component folder, full precision preferred over `fp16` variants.
fn find_weights(dir: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    for variant in ["", ".fp16"] {
        for stem in STEMS {
            let single = dir.join(format!("{stem}{variant}.safetensors"));
            if single.is_file() {
                return Ok(vec![single]);
            }
            let index = dir.join(format!("{stem}{variant}.safetensors.index.json"));
            if index.is_file() {
                return shards_from_index(&index);
            }
        }
    }
    let pickles: Vec<String> = STEMS
        .iter()
        .flat_map(|s| {
            [
                format!("{s}.bin"),
                format!("{s}.fp16.bin"),
                format!("{s}.bin.index.json"),
            ]
        })
        .filter(|n| dir.join(n).is_file())
        .collect();
    let looked_for = STEMS
        .iter()
        .map(|s| format!("{s}[.fp16].safetensors"))
        .collect::<Vec<_>>()
        .join(" or ");
    if pickles.is_empty() {
        Err(format!(
            "no weights in {} (looked for {looked_for})",
            dir.display()
        ))
    } else {
        Err(format!(
            "only PyTorch pickle weights ({}) in {}: pickles are not supported (they can run \
             arbitrary code); convert them to safetensors (looked for {looked_for})",
            pickles.join(", "),
            dir.display()
        ))
    }
}

/// The shard files named by a `*.safetensors.index.json` (`weight_map` values), sorted.
fn shards_from_index(index: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| format!("{}: no `weight_map` object", index.display()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for value in map.values() {
        let name = value.as_str().ok_or_else(|| {
            format!(
                "{}: `weight_map` values must be file names",
                index.display()
            )
        })?;
        let file = dir.join(name);
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: empty `weight_map`", index.display()));
    }
    if let Some(absent) = files.iter().find(|f| !f.is_file()) {
        return Err(format!(
            "{}: shard {} not found",
            index.display(),
            absent.display()
        ));
    }
    Ok(files)
}
