//! LoRA files (kohya/A1111 `lora_unet_…`/`lora_te_…`, diffusers/PEFT `…lora_A/lora_B`, and
//! the older diffusers names `….processor.to_q_lora…`, `….lora.down…`,
//! `….lora_linear_layer.down…`, `.safetensors`): parsing, matching their keys to the model's weight names, and the weight
//! deltas `strength · alpha/rank · up·down` that are merged into the model.
//!
//! Key conventions follow diffusers v0.30.0
//! <https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/loaders/lora_conversion_utils.py>
//! and the merge follows PEFT's `LoraLayer.get_delta_weight` (alpha defaults to the rank).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::names::same_up_to_unit_dims;
use crate::{EngineError, Result};

/// One LoRA file to apply, with its strength (1.0 = as trained).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The LoRA file (`.safetensors`).
    pub path: PathBuf,
    /// Multiplier of the file's deltas (1: as trained; 0 changes nothing).
    pub strength: f64,
}

/// What an applied LoRA is, for recipes and the UI.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraInfo {
    /// The file's name without its folder, as recipes record it.
    pub file_name: String,
    /// First 16 hex digits of the SHA-256 of the file bytes.
    pub fingerprint: String,
    /// The strength it was merged at.
    pub strength: f64,
    /// Number of model weights the file changes.
    pub matched_layers: usize,
}

/// The network a LoRA layer patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraTarget {
    /// The denoising UNet (`lora_unet_…`, `unet.…`).
    Unet,
    /// The CLIP text encoder (`lora_te_…`, `text_encoder.…`).
    TextEncoder,
}

/// One low-rank pair of a file: `down` [r, in(, kh, kw)], `up` [out, r(, 1, 1)].
#[derive(Debug, Clone)]
pub struct LoraLayer {
    /// The stored key prefix (named in errors).
    pub key: String,
    /// Which network the layer patches.
    pub target: LoraTarget,
    /// The module path as the file spells it (dotted, or kohya's underscores).
    pub module: String,
    /// The down projection `[rank, in]` (`[rank, in, kh, kw]` for a convolution).
    pub down: Tensor,
    /// The up projection `[out, rank]` (`[out, rank, 1, 1]` for a convolution).
    pub up: Tensor,
    /// The layer's scale is `alpha / rank` (None: alpha = rank). From the file's `.alpha`
    /// tensor or its PEFT header; with rsLoRA (alpha/√rank) this is alpha·√rank.
    pub alpha: Option<f64>,
}

/// A parsed LoRA file.
#[derive(Debug, Clone)]
pub struct LoraFile {
    /// Where the file came from and the strength it is merged at.
    pub spec: LoraSpec,
    /// First 16 hex digits of the SHA-256 of the file bytes.
    pub fingerprint: String,
    /// Every low-rank pair of the file, in key order.
    pub layers: Vec<LoraLayer>,
}

/// A model's weights a LoRA may patch: weight name → shape, looked up by module path
/// (dotted or with kohya's `_`) or by an alias (e.g. the original LDM module names).
#[derive(Debug, Clone, Default)]
pub struct TargetWeights {
    by_module: HashMap<String, (String, Vec<usize>)>,
}

impl TargetWeights {
    /// From weight names as the model asks for them (`….weight`); the text encoder's
    /// `text_model.` prefix is optional in LoRA keys.
    pub fn new(weights: impl IntoIterator<Item = (String, Vec<usize>)>) -> Self {
        let mut out = Self::default();
        for (name, shape) in weights {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let module = module.to_string();
            out.insert(&module, &name, &shape);
            if let Some(short) = module.strip_prefix("text_model.") {
                out.insert(short, &name, &shape);
            }
        }
        out
    }

    fn insert(&mut self, module: &str, name: &str, shape: &[usize]) {
        let entry = (name.to_string(), shape.to_vec());
        self.by_module
            .insert(module.replace('.', "_"), entry.clone());
        self.by_module.insert(module.to_string(), entry);
    }

    /// Makes `alias` (a module path, dotted) find the weight of `module`.
    pub fn alias(&mut self, alias: &str, module: &str) {
        if let Some((name, shape)) = self.by_module.get(module).cloned() {
            self.insert(alias, &name, &shape);
        }
    }

    fn find(&self, module: &str) -> Option<&(String, Vec<usize>)> {
        self.by_module
            .get(module)
            .or_else(|| self.by_module.get(&module.replace('.', "_")))
    }
}

/// A delta for one model weight.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    /// The network the weight belongs to.
    pub target: LoraTarget,
    /// The model's weight name.
    pub name: String,
    /// f32, the weight's shape.
    pub delta: Tensor,
}

#[derive(Default)]
struct Parts {
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f64>,
}

/// Splits a stored key into (target, module path, part) where part is "down", "up" or "alpha".
fn split_key(key: &str) -> Option<(LoraTarget, String, &'static str)> {
    const SUFFIXES: [(&str, &str); 11] = [
        (".lora_down.weight", "down"),
        (".lora_up.weight", "up"),
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora_A.default.weight", "down"),
        (".lora_B.default.weight", "up"),
        (".lora.down.weight", "down"),
        (".lora.up.weight", "up"),
        // Old diffusers text-encoder layers (`LoRALinearLayer`).
        (".lora_linear_layer.down.weight", "down"),
        (".lora_linear_layer.up.weight", "up"),
        (".alpha", "alpha"),
    ];
    let (stem, part) = SUFFIXES
        .iter()
        .find_map(|(s, p)| key.strip_suffix(s).map(|stem| (stem, *p)))
        .or_else(|| {
            // Old attention-processor naming: `…attn1.processor.to_q_lora.down.weight`.
            let (stem, part) = key
                .strip_suffix("_lora.down.weight")
                .map(|s| (s, "down"))
                .or_else(|| key.strip_suffix("_lora.up.weight").map(|s| (s, "up")))?;
            Some((stem, part))
        })?;
    // Attention processors name the output projection `to_out` (`….processor.to_out_lora…`);
    // the module is `to_out.0`. Only a stem that ends there is one: kohya's `…_to_out_0` and
    // PEFT's `….to_out.0` already name the module.
    let mut stem = stem.replace(".processor.", ".");
    if stem.ends_with("to_out") {
        stem.push_str(".0");
    }
    for (prefix, target) in [
        ("lora_unet_", LoraTarget::Unet),
        ("lora_te1_", LoraTarget::TextEncoder),
        ("lora_te_", LoraTarget::TextEncoder),
        ("unet.", LoraTarget::Unet),
        ("text_encoder.", LoraTarget::TextEncoder),
    ] {
        if let Some(module) = stem.strip_prefix(prefix) {
            let module = match target {
                LoraTarget::TextEncoder => clip_attention_name(module),
                LoraTarget::Unet => module.to_string(),
            };
            return Some((target, module, part));
        }
    }
    // The oldest diffusers files hold UNet attention processors without a prefix.
    Some((LoraTarget::Unet, stem, part))
}

/// Old diffusers files patch the text encoder's attention through processors named like the
/// UNet's (`self_attn.to_q_lora…`, `to_out_lora`); CLIP's modules are `q_proj` … `out_proj`.
fn clip_attention_name(module: &str) -> String {
    for (old, new) in [
        ("self_attn.to_q", "self_attn.q_proj"),
        ("self_attn.to_k", "self_attn.k_proj"),
        ("self_attn.to_v", "self_attn.v_proj"),
        ("self_attn.to_out.0", "self_attn.out_proj"),
    ] {
        if let Some(head) = module.strip_suffix(old) {
            return format!("{head}{new}");
        }
    }
    module.to_string()
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn bad_key(file: &Path, key: &str, why: &str) -> EngineError {
    EngineError::MissingTensor {
        file: file.to_path_buf(),
        name: format!("{key} ({why})"),
    }
}

/// First 16 hex digits of the SHA-256 of the file's bytes.
pub fn lora_fingerprint(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(fingerprint_of(&bytes))
}

fn fingerprint_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The safetensors header entry diffusers' `save_lora_weights` writes PEFT's `LoraConfig` of
/// each network to (JSON, keys `unet.<field>` / `text_encoder.<field>`; unprefixed when one
/// model saved its adapter alone).
const ADAPTER_METADATA_KEY: &str = "lora_adapter_metadata";

/// What a PEFT `LoraConfig` says about the scale of the layers of one network, for layers
/// the file gives no `.alpha` tensor: `alpha_pattern` (module name → alpha), else `lora_alpha`
/// (PEFT's default 8); with `use_rslora` the scale is alpha/√rank instead of alpha/rank.
#[derive(Debug, Clone)]
struct AdapterConfig {
    lora_alpha: f64,
    alpha_pattern: Vec<(String, f64)>,
    use_rslora: bool,
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::CorruptSafetensors {
        file: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The adapter configs of the file's header, per network (none: alpha = rank, diffusers'
/// convention for files without alphas).
fn adapter_configs(bytes: &[u8], path: &Path) -> Result<HashMap<LoraTarget, AdapterConfig>> {
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| corrupt(path, e))?;
    let Some(raw) = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(ADAPTER_METADATA_KEY))
    else {
        return Ok(HashMap::new());
    };
    let bad = |why: String| corrupt(path, format!("{ADAPTER_METADATA_KEY}: {why}"));
    let json: serde_json::Value = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
    let fields = json
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let mut out = HashMap::new();
    for (target, prefix) in [
        (LoraTarget::Unet, "unet."),
        (LoraTarget::TextEncoder, "text_encoder."),
    ] {
        let field = |name: &str| {
            fields
                .get(&format!("{prefix}{name}"))
                .or_else(|| fields.get(name))
                .filter(|v| !v.is_null())
        };
        if field("r").is_none() && field("lora_alpha").is_none() {
            continue;
        }
        if field("use_dora").and_then(serde_json::Value::as_bool) == Some(true) {
            return Err(EngineError::InvalidInput(format!(
                "{}: a DoRA adapter ({prefix}use_dora), which Mirror cannot apply",
                path.display()
            )));
        }
        let lora_alpha = match field("lora_alpha") {
            None => 8.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(format!("{prefix}lora_alpha is not a number")))?,
        };
        let mut alpha_pattern = Vec::new();
        if let Some(patterns) = field("alpha_pattern") {
            let patterns = patterns
                .as_object()
                .ok_or_else(|| bad(format!("{prefix}alpha_pattern is not an object")))?;
            for (pattern, alpha) in patterns {
                let alpha = alpha.as_f64().ok_or_else(|| {
                    bad(format!("{prefix}alpha_pattern.{pattern} is not a number"))
                })?;
                alpha_pattern.push((pattern.clone(), alpha));
            }
        }
        let use_rslora = field("use_rslora").and_then(serde_json::Value::as_bool) == Some(true);
        out.insert(
            target,
            AdapterConfig {
                lora_alpha,
                alpha_pattern,
                use_rslora,
            },
        );
    }
    Ok(out)
}

/// Whether a PEFT pattern key names `module`, as PEFT's `get_pattern_key` matches it
/// (`re.match(rf"(.*\.)?({pattern})$", module)`) for the plain module names diffusers writes:
/// the module itself or a dotted suffix of it, `^name` the whole path only. `None`: the pattern
/// uses other regular-expression syntax.
fn pattern_matches(pattern: &str, module: &str) -> Option<bool> {
    let (anchored, body) = match pattern.strip_prefix('^') {
        Some(body) => (true, body),
        None => (false, pattern),
    };
    if body.chars().any(|c| "*+?[](){}|^$\\".contains(c)) {
        return None;
    }
    let suffix = module
        .strip_suffix(body)
        .is_some_and(|head| head.ends_with('.'));
    Some(module == body || (!anchored && suffix))
}

impl AdapterConfig {
    /// The alpha to scale `layer` by, as `alpha / rank` (rsLoRA's alpha/√rank folded in).
    fn alpha(&self, layer: &LoraLayer, path: &Path) -> Result<f64> {
        // Files of transformers 4 models say `text_model.encoder…`, of transformers 5 `encoder…`.
        let short = layer.module.strip_prefix("text_model.");
        let mut found: Option<(&str, f64)> = None;
        for (pattern, alpha) in &self.alpha_pattern {
            let mut hit = false;
            for module in std::iter::once(layer.module.as_str()).chain(short) {
                hit |= pattern_matches(pattern, module).ok_or_else(|| {
                    bad_key(
                        path,
                        &layer.key,
                        &format!("alpha_pattern `{pattern}` is not a plain module name"),
                    )
                })?;
            }
            if !hit {
                continue;
            }
            if let Some((first, a)) = found
                && a != *alpha
            {
                return Err(bad_key(
                    path,
                    &layer.key,
                    &format!("alpha_pattern `{first}` and `{pattern}` both name it"),
                ));
            }
            found = Some((pattern, *alpha));
        }
        let alpha = found.map_or(self.lora_alpha, |(_, a)| a);
        let rank = layer.down.dims()[0] as f64;
        Ok(if self.use_rslora {
            alpha * rank.sqrt()
        } else {
            alpha
        })
    }
}

/// Reads a LoRA file (f32 tensors on `device`); every key must be a LoRA key. Layers without
/// an `.alpha` tensor take their alpha from the header's `lora_adapter_metadata` (PEFT
/// config, as diffusers saves it) when there is one, else alpha = rank.
pub fn read_lora(spec: &LoraSpec, device: &Device) -> Result<LoraFile> {
    let path = &spec.path;
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.clone(),
        source,
    })?;
    let fingerprint = fingerprint_of(&bytes);
    let configs = adapter_configs(&bytes, path)?;
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| corrupt(path, e))?;
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let mut groups: HashMap<(LoraTarget, String), (String, Parts)> = HashMap::new();
    for key in keys {
        let Some((target, module, part)) = split_key(key) else {
            return Err(bad_key(path, key, "not a LoRA key"));
        };
        let tensor = tensors[key].to_dtype(DType::F32)?;
        let entry = groups
            .entry((target, module))
            .or_insert_with(|| (key.clone(), Parts::default()));
        match part {
            "down" => entry.1.down = Some(tensor),
            "up" => entry.1.up = Some(tensor),
            _ => entry.1.alpha = Some(f64::from(tensor.flatten_all()?.get(0)?.to_scalar::<f32>()?)),
        }
    }
    // In key order, so that a refusal names the first bad key.
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| a.1.0.cmp(&b.1.0));
    let mut layers = Vec::with_capacity(groups.len());
    for ((target, module), (key, parts)) in groups {
        let (Some(down), Some(up)) = (parts.down, parts.up) else {
            return Err(bad_key(path, &key, "without its up/down pair"));
        };
        let mut layer = LoraLayer {
            key,
            target,
            module,
            down,
            up,
            alpha: parts.alpha,
        };
        if layer.alpha.is_none()
            && let Some(config) = configs.get(&target)
        {
            layer.alpha = Some(config.alpha(&layer, path)?);
        }
        layers.push(layer);
    }
    layers.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(LoraFile {
        spec: spec.clone(),
        fingerprint,
        layers,
    })
}

/// `up·down` as a weight of `shape`: [out, r]·[r, in·kh·kw] (a 1×1 `up` after a k×k `down`
/// is that product too, as PEFT's conv merge computes).
fn product(layer: &LoraLayer, shape: &[usize]) -> Option<candle_core::Result<Tensor>> {
    let (down, up) = (layer.down.dims(), layer.up.dims());
    let rank = *down.first()?;
    let up_ok = up.len() >= 2 && up[1] == rank && up[2..].iter().all(|&d| d == 1);
    let out = *up.first()?;
    let fan_in: usize = down[1..].iter().product();
    let target_in: usize = shape.iter().skip(1).product();
    if !up_ok || shape.first() != Some(&out) || fan_in != target_in {
        return None;
    }
    let full: Vec<usize> = [out].into_iter().chain(down[1..].iter().copied()).collect();
    if full != shape && !same_up_to_unit_dims(&full, shape) {
        return None;
    }
    Some((|| {
        let up = layer.up.reshape((out, rank))?;
        let down = layer.down.reshape((rank, fan_in))?;
        up.matmul(&down)?.reshape(shape)
    })())
}

impl LoraFile {
    /// The deltas of every layer at the file's strength, matched against the model's weights;
    /// refuses the file at the first key that matches nothing or does not fit.
    pub fn deltas(&self, unet: &TargetWeights, text: &TargetWeights) -> Result<Vec<LoraDelta>> {
        let path = &self.spec.path;
        if self.layers.is_empty() {
            return Err(EngineError::InvalidInput(format!(
                "{}: holds no LoRA layers",
                path.display()
            )));
        }
        let mut out = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let targets = match layer.target {
                LoraTarget::Unet => unet,
                LoraTarget::TextEncoder => text,
            };
            let Some((name, shape)) = targets.find(&layer.module) else {
                return Err(bad_key(path, &layer.key, "matches no layer of the model"));
            };
            let Some(delta) = product(layer, shape) else {
                let mut found = layer.up.dims().to_vec();
                found.extend_from_slice(&layer.down.dims()[1..]);
                return Err(EngineError::ShapeMismatch {
                    file: path.clone(),
                    name: format!("{} (up·down for {name})", layer.key),
                    expected: shape.clone(),
                    found,
                });
            };
            let rank = layer.down.dims()[0] as f64;
            // diffusers: alpha absent = rank, so the scale is the strength alone.
            let scale = self.spec.strength * layer.alpha.unwrap_or(rank) / rank;
            out.push(LoraDelta {
                target: layer.target,
                name: name.clone(),
                delta: delta?.affine(scale, 0.0)?,
            });
        }
        Ok(out)
    }

    /// What this file is, once `matched_layers` weights were patched.
    pub fn info(&self, matched_layers: usize) -> LoraInfo {
        LoraInfo {
            file_name: file_label(&self.spec.path),
            fingerprint: self.fingerprint.clone(),
            strength: self.spec.strength,
            matched_layers,
        }
    }
}

/// `base + d₁ + d₂ + …` in f32, added in order (as fusing LoRAs one after the other does),
/// returned in the base's type. The base tensor itself is never changed.
pub fn merge_deltas(base: &Tensor, deltas: &[&Tensor]) -> Result<Tensor> {
    let mut merged = base.to_dtype(DType::F32)?;
    for delta in deltas {
        merged = (merged + delta.to_device(base.device())?)?;
    }
    Ok(merged.to_dtype(base.dtype())?)
}
