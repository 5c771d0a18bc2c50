//! A recipe from a request and back: the one place where a run's settings are written to and
//! read from their persisted form, for the app and the CLI alike.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::{GrayImage, ImageEncoder};

use super::{RECIPE_VERSION, Recipe, RecipeLora, RecipeMask};
use crate::imageio::ResizePolicy;
use crate::methods::mask::{EditMask, MaskFinder};
use crate::methods::mirror::{MirrorPreset, MirrorSettings};
use crate::session::{Method, TranslateRequest};
use crate::{EngineError, Result};

/// What a recipe records beyond the request: how the photo was brought to its size, which
/// model ran and which photo it was.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecipeOrigin {
    /// How the photo was brought to the processing size.
    pub resize: ResizePolicy,
    /// `StableDiffusion::info.name` and `.fingerprint`.
    pub model: String,
    /// The model's fingerprint.
    pub model_hash: String,
    /// `LoadedImage::content_hash` of the photo as loaded (before resizing).
    pub image_hash: String,
    /// Whether the VAE worked in tiles (None until the run has said).
    pub vae_tiles_used: Option<bool>,
    /// The LoRAs merged into the model (`StableDiffusion::loras`).
    pub loras: Vec<RecipeLora>,
}

impl Recipe {
    /// The recipe of `req` (its image at processing size gives the recorded size).
    pub fn from_request(req: &TranslateRequest, origin: &RecipeOrigin) -> Recipe {
        Recipe {
            version: RECIPE_VERSION,
            method: req.method.name().into(),
            preset: req.mirror.preset.to_string(),
            source_prompt: req.source_prompt.clone(),
            target_prompt: req.target_prompt.clone(),
            steps: req.steps,
            seed: req.seed,
            edit_strength: req.edit_strength,
            guidance_scale: req.mirror.guidance_scale,
            xa_guidance: req.mirror.xa_guidance,
            redescribe_iterations: req.mirror.redescribe.iterations,
            redescribe_lr: req.mirror.redescribe.lr,
            resize: origin.resize,
            width: req.image.width(),
            height: req.image.height(),
            model: origin.model.clone(),
            model_hash: origin.model_hash.clone(),
            image_hash: origin.image_hash.clone(),
            vae_tiles_used: origin.vae_tiles_used,
            direction: Some(req.direction.clone()),
            compare_ddim: Some(req.compare_ddim),
            mirror: Some(req.mirror.clone()),
            loras: origin.loras.clone(),
            mask: match &req.mask {
                EditMask::Whole => None,
                EditMask::Found(MaskFinder::DiffEdit) => Some(RecipeMask::Automatic),
                EditMask::Found(MaskFinder::Attention) => Some(RecipeMask::Attention),
                EditMask::Given(image) => Some(RecipeMask::Png(encode_mask(image))),
            },
            mask_settings: (!req.mask.is_whole()).then_some(req.mask_settings),
            extra: serde_json::Map::new(),
        }
    }

    /// Puts every run setting this recipe records into `req`: prompts (when given), method,
    /// preset, steps, seed, edit strength, MirrorDiffusion settings, edit direction, the DDIM
    /// comparison and the VAE tiles. Size and resize are the caller's (they act before the
    /// request exists). A value that cannot be read back is an error naming it; `req` is
    /// unchanged then.
    pub fn apply_to(&self, req: &mut TranslateRequest) -> Result<()> {
        let bad = |e: String| EngineError::InvalidInput(format!("recipe: {e}"));
        let method = match self.method.as_str() {
            "" => req.method,
            m => m.parse::<Method>().map_err(bad)?,
        };
        let preset = match self.preset.as_str() {
            "" => req.mirror.preset,
            p => p.parse::<MirrorPreset>().map_err(bad)?,
        };
        let mut mirror = match &self.mirror {
            Some(m) => m.clone(),
            None if preset == req.mirror.preset => req.mirror.clone(),
            None => MirrorSettings::with_preset(preset),
        };
        mirror.preset = preset;
        mirror.guidance_scale = self.guidance_scale;
        mirror.xa_guidance = self.xa_guidance;
        mirror.redescribe.iterations = self.redescribe_iterations;
        mirror.redescribe.lr = self.redescribe_lr;
        let mask = match &self.mask {
            None => EditMask::Whole,
            Some(RecipeMask::Automatic) => EditMask::Found(MaskFinder::DiffEdit),
            Some(RecipeMask::Attention) => EditMask::Found(MaskFinder::Attention),
            Some(RecipeMask::Png(text)) => EditMask::Given(decode_mask(text).map_err(bad)?),
        };

        if !self.source_prompt.is_empty() {
            req.source_prompt.clone_from(&self.source_prompt);
        }
        if !self.target_prompt.is_empty() {
            req.target_prompt.clone_from(&self.target_prompt);
        }
        req.method = method;
        req.mirror = mirror;
        if self.steps > 0 {
            req.steps = self.steps;
        }
        req.seed = self.seed;
        req.edit_strength = self.edit_strength;
        if let Some(direction) = &self.direction {
            req.direction.clone_from(direction);
        }
        // Before version 1 recorded it, the comparison always ran.
        req.compare_ddim = self.compare_ddim.unwrap_or(true);
        req.vae_tiles = self.vae_tiles();
        req.mask = mask;
        req.mask_settings = self.mask_settings.unwrap_or_default();
        Ok(())
    }
}

/// A mask as base64 PNG text.
fn encode_mask(mask: &GrayImage) -> String {
    let mut png = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut png);
    // Writing a well-formed greyscale buffer into memory cannot fail.
    if encoder
        .write_image(
            mask,
            mask.width(),
            mask.height(),
            image::ExtendedColorType::L8,
        )
        .is_err()
    {
        return String::new();
    }
    BASE64.encode(png)
}

fn decode_mask(text: &str) -> std::result::Result<GrayImage, String> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| format!("field `mask` is not base64 ({e})"))?;
    let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .map_err(|e| format!("field `mask` is not a PNG ({e})"))?;
    Ok(image.to_luma8())
}
