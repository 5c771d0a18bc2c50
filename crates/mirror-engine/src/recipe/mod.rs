//! The recipe of an output image: everything that replays the run, stored inside the PNG
//! (`imageio::PngText`: an A1111-style `parameters` text and a JSON `mirror-recipe` chunk).
//! One description for the app and the CLI alike: [`Recipe::from_request`] writes it,
//! [`Recipe::apply_to`] reads it back into a request (`request.rs`).

mod request;

use std::path::Path;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::imageio::{
    PngText, ResizePolicy, encode_png_with_text, is_png, read_png_text, save_png_with_text,
};
use crate::loader::lora::LoraInfo;
use crate::methods::mask::MaskSettings;
use crate::methods::mirror::MirrorSettings;
use crate::session::DirectionChoice;
use crate::vae::VaeTiles;
use crate::{EngineError, Result};

pub use request::RecipeOrigin;

/// Version of the JSON recipe layout written by this build (2: the edit direction, the DDIM
/// comparison and the whole MirrorDiffusion settings are fields of their own).
pub const RECIPE_VERSION: u32 = 2;
/// Keyword of the iTXt chunk holding the JSON recipe.
pub const RECIPE_CHUNK_KEYWORD: &str = "mirror-recipe";
/// Largest recipe text read from a compressed chunk (real recipes are a few KiB).
const MAX_RECIPE_BYTES: usize = 1 << 20;

/// Everything needed to replay a translation. Settings are spelt as in `TranslateRequest`
/// and the CLI flags; older spellings still load (`alias`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Recipe {
    /// Layout version of this recipe ([`RECIPE_VERSION`] when written by this build).
    pub version: u32,
    /// The editing method's name (`mirror`, `ddim`, `pix2pix-zero`).
    pub method: String,
    /// MirrorDiffusion preset (`recommended` or `authors`).
    pub preset: String,
    /// What the photo shows.
    pub source_prompt: String,
    /// What it was edited into.
    pub target_prompt: String,
    /// DDIM steps N.
    pub steps: usize,
    /// Seed of the run's random choices.
    pub seed: u64,
    /// Multiplier α of the edit direction.
    pub edit_strength: f64,
    /// Classifier-free guidance scale of the translation.
    pub guidance_scale: f64,
    /// Step size of the cross-attention (structure) guidance.
    pub xa_guidance: f64,
    #[serde(alias = "redescription_iterations")]
    /// Redescription Adam iterations per step.
    pub redescribe_iterations: usize,
    #[serde(alias = "redescription_lr")]
    /// Redescription learning rate.
    pub redescribe_lr: f64,
    /// How the photo was brought to the processing size.
    pub resize: ResizePolicy,
    /// Processing width in pixels.
    pub width: u32,
    /// Processing height in pixels.
    pub height: u32,
    /// The model's display name.
    pub model: String,
    /// The model's fingerprint (SHA-256 prefix of its weight files).
    pub model_hash: String,
    /// Fingerprint of the photo's pixels as loaded (before resizing).
    pub image_hash: String,
    /// Whether the VAE worked in tiles (so a replay does the same; older recipes have no
    /// such field: their replay decides afresh, `auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae_tiles_used: Option<bool>,
    /// The edit direction (version 1 kept it in `extra.direction`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<DirectionChoice>,
    /// Whether plain DDIM ran beside the method (version 1: `extra.compare_ddim`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare_ddim: Option<bool>,
    /// Every MirrorDiffusion setting, also those the fields above do not show (the preset's
    /// schedule and the model's recommended edit scale). The fields above win over it, so a
    /// hand-edited `guidance_scale` counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSettings>,
    /// The LoRAs merged into the model, in order (absent: none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<RecipeLora>,
    /// Where the edit may change the picture (absent: everywhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<RecipeMask>,
    /// How the mask was found and applied (absent: the defaults, as before they were kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_settings: Option<MaskSettings>,
    /// Keys this version does not know, kept as they were.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A LoRA a run used: its file name (where a replay looks for it), the fingerprint that
/// tells whether a file is the same one, and its strength.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct RecipeLora {
    /// The LoRA file's name (without its folder).
    pub file_name: String,
    /// First 16 hex digits of the SHA-256 of the file.
    pub fingerprint: String,
    /// The strength it was merged at.
    pub strength: f64,
}

impl From<&LoraInfo> for RecipeLora {
    fn from(info: &LoraInfo) -> Self {
        Self {
            file_name: info.file_name.clone(),
            fingerprint: info.fingerprint.clone(),
            strength: info.strength,
        }
    }
}

/// An edit mask as a recipe stores it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum RecipeMask {
    /// Found from the edit with DiffEdit when the recipe is replayed (the same seed finds the
    /// same mask). Recipes written before the finder could be chosen say this too.
    Automatic,
    /// Found from the cross-attention of the words the edit changes, when replayed.
    Attention,
    /// The mask itself: a greyscale PNG (white = may change), base64.
    Png(String),
}

impl Recipe {
    /// The tiles mode that replays this recipe's pixels: `on` if it used tiles, `off` if not,
    /// `auto` when it does not say.
    pub fn vae_tiles(&self) -> VaeTiles {
        self.vae_tiles_used
            .map_or(VaeTiles::Auto, VaeTiles::replaying)
    }

    /// The A1111 "parameters" text: prompt line, negative prompt line, then `Key: value` pairs.
    /// The source prompt is shown as the negative prompt (what the edit moves away from).
    pub fn a1111_parameters(&self) -> String {
        let mut text = format!("{}\n", self.target_prompt);
        if !self.source_prompt.is_empty() {
            text.push_str(&format!("Negative prompt: {}\n", self.source_prompt));
        }
        let short_hash: String = self.model_hash.chars().take(10).collect();
        let tiled = if self.vae_tiles_used == Some(true) {
            "True"
        } else {
            ""
        };
        let pairs: [(&str, String); 17] = [
            ("Steps", self.steps.to_string()),
            ("Sampler", "DDIM".into()),
            ("CFG scale", self.guidance_scale.to_string()),
            ("Seed", self.seed.to_string()),
            ("Size", format!("{}x{}", self.width, self.height)),
            ("Model hash", short_hash),
            ("Model", self.model.clone()),
            ("Mirror method", self.method.clone()),
            ("Mirror preset", self.preset.clone()),
            ("Edit strength", self.edit_strength.to_string()),
            ("Cross-attention guidance", self.xa_guidance.to_string()),
            (
                "Redescription iterations",
                self.redescribe_iterations.to_string(),
            ),
            ("Redescription lr", self.redescribe_lr.to_string()),
            ("Resize", self.resize.to_string()),
            ("Tiled VAE", tiled.into()),
            ("Mirror version", env!("CARGO_PKG_VERSION").into()),
            ("Mirror recipe", self.version.to_string()),
        ];
        let fields: Vec<String> = pairs
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}: {}", quote_a1111(&v)))
            .collect();
        text.push_str(&fields.join(", "));
        text
    }

    #[expect(
        clippy::expect_used,
        reason = "plain fields with string keys: serde_json cannot fail"
    )]
    /// The recipe as compact JSON (the `mirror-recipe` chunk's text).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Recipe always serialises")
    }

    /// Parses a JSON recipe of any version up to this one; `label` names its origin in errors.
    pub fn from_json(text: &str, label: &str) -> Result<Recipe> {
        let invalid = |e: &dyn std::fmt::Display| {
            EngineError::InvalidInput(format!("{label}: invalid recipe: {e}"))
        };
        let mut recipe: Recipe = serde_json::from_str(text).map_err(|e| invalid(&e))?;
        if recipe.version > RECIPE_VERSION {
            return Err(EngineError::InvalidInput(format!(
                "{label}: recipe version {} was written by a newer Mirror (this one reads up to {})",
                recipe.version, RECIPE_VERSION
            )));
        }
        // Version 1 kept these two under `extra`.
        if let Some(v) = recipe.extra.remove("direction") {
            let direction = serde_json::from_value(v)
                .map_err(|e| invalid(&format!("field `extra.direction`: {e}")))?;
            recipe.direction.get_or_insert(direction);
        }
        if let Some(v) = recipe.extra.remove("compare_ddim") {
            let compare = v
                .as_bool()
                .ok_or_else(|| invalid(&"field `extra.compare_ddim` is not true or false"))?;
            recipe.compare_ddim.get_or_insert(compare);
        }
        Ok(recipe)
    }
}

/// A1111 quotes a value (JSON-style) when it would break the `k: v, k: v` list.
#[expect(clippy::expect_used, reason = "serialising a string cannot fail")]
fn quote_a1111(value: &str) -> String {
    if value.contains([',', ':', '"', '\n']) {
        serde_json::to_string(value).expect("strings serialise")
    } else {
        value.to_string()
    }
}

/// Encodes `img` as PNG, with the recipe chunks when a recipe is given.
pub fn encode_png_with_recipe(
    img: &RgbImage,
    recipe: Option<&Recipe>,
) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let texts = recipe.map(|r| (r.a1111_parameters(), r.to_json()));
    encode_png_with_text(img, png_text(texts.as_ref()))
}

/// Saves `img` as PNG carrying `recipe`, atomically. Errors name `path`.
pub fn save_png_with_recipe(img: &RgbImage, recipe: Option<&Recipe>, path: &Path) -> Result<()> {
    let texts = recipe.map(|r| (r.a1111_parameters(), r.to_json()));
    save_png_with_text(img, png_text(texts.as_ref()), path)
}

fn png_text(texts: Option<&(String, String)>) -> Option<PngText<'_>> {
    texts.map(|(parameters, json)| PngText {
        parameters,
        keyword: RECIPE_CHUNK_KEYWORD,
        text: json,
    })
}

/// Reads the recipe from a PNG written by `save_png_with_recipe` (None when it has none).
/// A plain JSON recipe file is accepted too.
pub fn read_recipe(path: &Path) -> Result<Option<Recipe>> {
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_recipe_from_memory(&bytes, &path.display().to_string())
}

/// `read_recipe` on bytes already in memory; `label` names them in errors.
pub fn read_recipe_from_memory(bytes: &[u8], label: &str) -> Result<Option<Recipe>> {
    if bytes.trim_ascii_start().starts_with(b"{") {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| EngineError::InvalidInput(format!("{label}: recipe is not UTF-8: {e}")))?;
        return Recipe::from_json(text, label).map(Some);
    }
    if !is_png(bytes) {
        return Err(EngineError::InvalidInput(format!(
            "{label}: not a PNG (recipes are stored in Mirror's PNG outputs) or JSON recipe"
        )));
    }
    read_png_text(bytes, RECIPE_CHUNK_KEYWORD, MAX_RECIPE_BYTES, label)?
        .map(|t| Recipe::from_json(&t, label))
        .transpose()
}
