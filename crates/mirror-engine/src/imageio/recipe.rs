//! The recipe that made an output image, stored inside the PNG: an A1111-style `parameters`
//! text chunk (read by common image tools) and a JSON `mirror-recipe` chunk that
//! `translate --recipe` replays exactly.

use std::io::Cursor;
use std::path::Path;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;
use super::resize::ResizePolicy;
use crate::vae::VaeTiles;
use crate::{EngineError, Result};

/// Version of the JSON recipe layout written by this build.
pub const RECIPE_VERSION: u32 = 1;
/// Keyword of the iTXt chunk holding the JSON recipe.
pub const RECIPE_CHUNK_KEYWORD: &str = "mirror-recipe";
/// Largest recipe text read from a compressed chunk (real recipes are a few KiB).
const MAX_RECIPE_BYTES: usize = 1 << 20;
/// Keyword of the A1111-style text chunk.
const PARAMETERS_KEYWORD: &str = "parameters";

/// Everything needed to replay a translation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Recipe {
    pub version: u32,
    pub method: String,
    pub preset: String,
    pub source_prompt: String,
    pub target_prompt: String,
    pub steps: usize,
    pub seed: u64,
    pub edit_strength: f64,
    pub guidance_scale: f64,
    pub xa_guidance: f64,
    pub redescription_iterations: usize,
    pub redescription_lr: f64,
    pub resize: ResizePolicy,
    pub width: u32,
    pub height: u32,
    pub model: String,
    pub model_hash: String,
    pub image_hash: String,
    /// Whether the VAE worked in tiles (so a replay does the same; older recipes have no
    /// such field: their replay decides afresh, `auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae_tiles_used: Option<bool>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
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
        let pairs: Vec<(&str, String)> = vec![
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
                self.redescription_iterations.to_string(),
            ),
            ("Redescription lr", self.redescription_lr.to_string()),
            ("Resize", self.resize.to_string()),
            (
                "Tiled VAE",
                if self.vae_tiles_used == Some(true) {
                    "True"
                } else {
                    ""
                }
                .into(),
            ),
            ("Mirror version", env!("CARGO_PKG_VERSION").into()),
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
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Recipe always serialises")
    }

    /// Parses a JSON recipe; `label` names its origin in errors.
    pub fn from_json(text: &str, label: &str) -> Result<Recipe> {
        let recipe: Recipe = serde_json::from_str(text)
            .map_err(|e| EngineError::InvalidInput(format!("{label}: invalid recipe: {e}")))?;
        if recipe.version > RECIPE_VERSION {
            return Err(EngineError::InvalidInput(format!(
                "{label}: recipe version {} was written by a newer Mirror (this one reads up to {})",
                recipe.version, RECIPE_VERSION
            )));
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
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, img.width(), img.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        if let Some(recipe) = recipe {
            let parameters = recipe.a1111_parameters();
            // tEXt is Latin-1 only; fall back to iTXt (as PIL does) for other characters.
            if parameters.chars().all(|c| (c as u32) < 256) {
                encoder.add_text_chunk(PARAMETERS_KEYWORD.into(), parameters)?;
            } else {
                encoder.add_itxt_chunk(PARAMETERS_KEYWORD.into(), parameters)?;
            }
            encoder.add_itxt_chunk(RECIPE_CHUNK_KEYWORD.into(), recipe.to_json())?;
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(img.as_raw())?;
        writer.finish()?;
    }
    Ok(bytes)
}

/// Saves `img` as PNG carrying `recipe`, atomically. Errors name `path`.
pub fn save_png_with_recipe(img: &RgbImage, recipe: Option<&Recipe>, path: &Path) -> Result<()> {
    let bytes = encode_png_with_recipe(img, recipe).map_err(|e| {
        EngineError::InvalidInput(format!("{}: cannot encode PNG: {e}", path.display()))
    })?;
    write_atomic(path, &bytes)
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
    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.trim_ascii_start().starts_with(b"{") {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| EngineError::InvalidInput(format!("{label}: recipe is not UTF-8: {e}")))?;
        return Recipe::from_json(text, label).map(Some);
    }
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Err(EngineError::InvalidInput(format!(
            "{label}: not a PNG (recipes are stored in Mirror's PNG outputs) or JSON recipe"
        )));
    }
    let corrupt =
        |e: png::DecodingError| EngineError::InvalidInput(format!("{label}: cannot read PNG: {e}"));
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_limits(png::Limits { bytes: usize::MAX });
    let mut reader = decoder.read_info().map_err(corrupt)?;
    // Text before the image data is in the header; other writers may put it after.
    let mut text = recipe_text(reader.info(), label)?;
    if text.is_none() {
        reader.finish().map_err(corrupt)?;
        text = recipe_text(reader.info(), label)?;
    }
    text.map(|t| Recipe::from_json(&t, label)).transpose()
}

fn recipe_text(info: &png::Info, label: &str) -> Result<Option<String>> {
    if let Some(chunk) = info
        .utf8_text
        .iter()
        .find(|c| c.keyword == RECIPE_CHUNK_KEYWORD)
    {
        // A compressed chunk is inflated under a cap (`get_text` alone has none: a small file
        // could inflate to gigabytes).
        let mut chunk = chunk.clone();
        return chunk
            .decompress_text_with_limit(MAX_RECIPE_BYTES)
            .and_then(|()| chunk.get_text())
            .map(Some)
            .map_err(|e| {
                EngineError::InvalidInput(format!(
                    "{label}: unreadable `{RECIPE_CHUNK_KEYWORD}` chunk (a recipe is at most {} KiB): {e}",
                    MAX_RECIPE_BYTES / 1024
                ))
            });
    }
    let latin1 = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == RECIPE_CHUNK_KEYWORD)
        .map(|c| c.text.clone());
    Ok(latin1)
}
