//! What a translation run is asked to do, and what it returns.

use std::path::PathBuf;

use candle_core::Tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::branch::{Branch, Method};
use crate::loader::{Recommended, RecommendedDirection};
use crate::methods::mask::{EditMask, MaskSettings};
use crate::methods::mirror::{MirrorPreset, MirrorSettings};
use crate::model::{StableDiffusion, VaeTilesReport};
use crate::pipeline::StepReport;
use crate::vae::VaeTiles;
use crate::{EngineError, Result};

/// How plain DDIM translates (docs/algorithm.md §10.2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DdimTranslation {
    /// Conditional context = the target prompt, unconditional = "", CFG `guidance`.
    WordSwap {
        /// Classifier-free guidance scale.
        guidance: f64,
    },
    /// Conditional = caption + strength·Δc, unconditional = caption, CFG `guidance`
    /// (pix2pix-zero without attention guidance).
    Direction {
        /// Classifier-free guidance scale.
        guidance: f64,
    },
}

impl Default for DdimTranslation {
    fn default() -> Self {
        DdimTranslation::WordSwap { guidance: 7.5 }
    }
}

/// Which inversion a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InversionChoice {
    /// What the method is defined with: Mirror and pix2pix-zero invert with the noise
    /// regulariser, plain DDIM without.
    #[default]
    MethodDefault,
    /// Always the regularised inversion, so that a plain DDIM run can share the inversion of
    /// a Mirror or pix2pix-zero run on the same image (a side-by-side comparison).
    Regularized,
}

/// Where the edit direction Δc comes from. Recipes store it as written here
/// (`{"templates": {"pairs": 512}}`, `"prompt"`, `{"file": "…"}`, `{"sentences": …}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionChoice {
    /// Paired template sentences around the phrase that differs between the prompts.
    Templates {
        /// Sentence pairs.
        pairs: usize,
    },
    /// The user's own sentence lists (need not be paired).
    Sentences {
        /// Sentences describing the source.
        source: Vec<String>,
        /// Sentences describing the target.
        target: Vec<String>,
    },
    /// E(target prompt) − E(source prompt).
    #[serde(rename = "prompt", alias = "prompt-difference")]
    PromptDifference,
    /// A direction saved earlier (safetensors).
    File(PathBuf),
}

impl DirectionChoice {
    /// Template sentence pairs of the default direction.
    pub const DEFAULT_PAIRS: usize = 512;
}

impl Default for DirectionChoice {
    fn default() -> Self {
        DirectionChoice::Templates {
            pairs: Self::DEFAULT_PAIRS,
        }
    }
}

/// One translation job. The image must already be at its processing size (a multiple of
/// `StableDiffusion::size_multiple`); `imageio::resize` does that.
#[derive(Debug, Clone)]
pub struct TranslateRequest {
    /// The photo at its processing size.
    pub image: RgbImage,
    /// What the image shows (the caption the inversion uses).
    pub source_prompt: String,
    /// What it should become.
    pub target_prompt: String,
    /// The editing method.
    pub method: Method,
    /// DDIM steps N, shared by inversion and sampling.
    pub steps: usize,
    /// MirrorDiffusion settings (preset, guidance, redescription); pix2pix-zero uses its
    /// `guidance_scale` and `xa_guidance` too.
    pub mirror: MirrorSettings,
    /// Multiplier α of the edit direction.
    pub edit_strength: f64,
    /// Where the edit direction Δc comes from.
    pub direction: DirectionChoice,
    /// Also run plain DDIM reconstruction and translation for comparison.
    pub compare_ddim: bool,
    /// How plain DDIM's translation is conditioned.
    pub ddim_translation: DdimTranslation,
    /// Which inversion to use (plain DDIM may share the regularised one).
    pub inversion: InversionChoice,
    /// Seed of the VAE posterior sample (authors preset; the recommended one uses the mean).
    pub seed: u64,
    /// Per-token attention heat maps in the step events.
    pub attention_maps: bool,
    /// A full VAE decode of each branch's predicted x0 every k steps.
    pub decode_every: Option<usize>,
    /// Reuse (and store) cached inversions and reconstructions.
    pub use_cache: bool,
    /// Keep every per-step tensor for `--dump`.
    pub record_dump: bool,
    /// Whether the VAE encode and decodes go through in tiles.
    pub vae_tiles: VaeTiles,
    /// Where the edit may change the picture (every method's translation is blended back to
    /// its reconstruction outside it).
    pub mask: EditMask,
    /// How the mask is found and applied.
    pub mask_settings: MaskSettings,
}

impl TranslateRequest {
    /// A request with Mirror's defaults for `image` (already at processing size) and the prompts.
    pub fn new(image: RgbImage, source_prompt: &str, target_prompt: &str) -> Self {
        Self {
            image,
            source_prompt: source_prompt.to_string(),
            target_prompt: target_prompt.to_string(),
            method: Method::Mirror,
            steps: 50,
            mirror: MirrorSettings::default(),
            edit_strength: 1.0,
            direction: DirectionChoice::default(),
            compare_ddim: true,
            ddim_translation: DdimTranslation::default(),
            inversion: InversionChoice::default(),
            seed: 0,
            attention_maps: false,
            decode_every: None,
            use_cache: true,
            record_dump: false,
            vae_tiles: VaeTiles::default(),
            mask: EditMask::Whole,
            mask_settings: MaskSettings::default(),
        }
    }

    /// The MirrorDiffusion preset the request runs.
    pub fn preset(&self) -> MirrorPreset {
        self.mirror.preset
    }

    /// Puts a model's recommended settings into this request (built from defaults): steps,
    /// edit strength and direction always; the MirrorDiffusion values only for the
    /// recommended preset (the authors' preset keeps the authors' values).
    pub fn apply_recommended(&mut self, r: &Recommended) {
        if let Some(n) = r.steps {
            self.steps = n;
        }
        if let Some(s) = r.edit_strength {
            self.edit_strength = s;
        }
        if let Some(v) = r.latent_blend_until {
            self.mask_settings.latent_blend_until = v;
        }
        match r.direction {
            Some(RecommendedDirection::Prompt) => {
                self.direction = DirectionChoice::PromptDifference
            }
            Some(RecommendedDirection::Templates) => self.direction = DirectionChoice::default(),
            None => {}
        }
        if self.mirror.preset == MirrorPreset::Recommended {
            self.mirror.apply_recommended(r);
        }
    }

    /// What a run cannot start without (stage 1 of a run).
    pub(super) fn check_inputs(&self, sd: &StableDiffusion) -> Result<()> {
        sd.scheduler.check_num_inference_steps(self.steps)?;
        if self.preset() == MirrorPreset::Authors && self.steps < 3 {
            return Err(EngineError::InvalidInput(
                "the authors' preset needs at least 3 steps".into(),
            ));
        }
        if self.source_prompt.trim().is_empty() {
            return Err(EngineError::InvalidInput(
                "the source prompt (what the image shows) is empty".into(),
            ));
        }
        if !self.edit_strength.is_finite() {
            return Err(EngineError::InvalidInput(format!(
                "the edit strength must be a number, not {}",
                self.edit_strength
            )));
        }
        sd.check_image_size(self.image.width() as usize, self.image.height() as usize)
    }
}

/// Final images of a run, each `[1, 3, H, W]` in [−1, 1].
#[derive(Debug, Clone, Default)]
pub struct BranchImages {
    /// The method's translation `[1, 3, H, W]` in [-1, 1].
    pub translation: Option<Tensor>,
    /// The method's reconstruction of the photo.
    pub reconstruction: Option<Tensor>,
    /// Plain DDIM's reconstruction, when it ran.
    pub ddim_reconstruction: Option<Tensor>,
    /// Plain DDIM's translation, when it ran.
    pub ddim_translation: Option<Tensor>,
}

/// What a run produced. A cancelled run returns what it had (latents and the steps done).
#[derive(Debug, Clone)]
pub struct TranslateOutcome {
    /// The photo as the engine read it `[1, 3, H, W]` in [-1, 1].
    pub source: Tensor,
    /// The decoded final image of every branch that ran.
    pub images: BranchImages,
    /// Final (or last) latents of each branch that ran.
    pub latents: Vec<(Branch, Tensor)>,
    /// Whether the run was stopped before its last step.
    pub cancelled: bool,
    /// Steps finished.
    pub steps_done: usize,
    /// Whether the inversion came from the cache.
    pub reused_inversion: bool,
    /// Whether the reconstruction was replayed from the cache (redescription skipped).
    pub reused_reconstruction: bool,
    /// The phrase pair the edit direction was built around.
    pub edit_phrase: Option<(String, String)>,
    /// Per-step reports (the same as the events).
    pub reports: Vec<StepReport>,
    /// Every per-step tensor under documented names, when `record_dump` was set.
    pub dump: Vec<(String, Tensor)>,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    /// What the VAE passes did about tiles (a recipe replays `used` as on, else off).
    pub vae_tiles: VaeTilesReport,
    /// The edit mask the run used, on the latent grid `[1, 1, h, w]` (0–1), when it had one;
    /// `methods::mask::mask_image` shows it.
    pub mask: Option<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recommended(json: &str) -> Recommended {
        let text = format!(r#"{{"recommended": {json}}}"#);
        crate::loader::ModelNotes::parse(&text, std::path::Path::new("mirror.json"))
            .unwrap()
            .recommended
    }

    #[test]
    fn a_request_from_defaults_takes_the_recommendations() {
        let r = recommended(r#"{"steps": 9, "edit_scale": 0.5, "direction": "prompt"}"#);
        let image = RgbImage::new(8, 8);
        let mut req = TranslateRequest::new(image.clone(), "a", "b");
        req.apply_recommended(&r);
        assert_eq!((req.steps, req.mirror.edit_scale), (9, 0.5));
        assert_eq!(req.direction, DirectionChoice::PromptDifference);
        // The authors' variant keeps the authors' values.
        let mut req = TranslateRequest::new(image, "a", "b");
        req.mirror = MirrorSettings::with_preset(MirrorPreset::Authors);
        req.apply_recommended(&r);
        assert_eq!(req.mirror.edit_scale, MirrorSettings::default().edit_scale);
    }

    #[test]
    fn the_recommended_preset_takes_the_models_values() {
        let r = recommended(r#"{"guidance_scale": 3.0, "redescribe_iterations": 4}"#);
        let m = MirrorSettings::recommended_by(&r);
        assert_eq!((m.guidance_scale, m.redescribe.iterations), (3.0, 4));
        assert_eq!(m.xa_guidance, MirrorSettings::default().xa_guidance);
    }

    #[test]
    fn a_direction_choice_serialises_as_recipes_store_it() {
        let cases = [
            (DirectionChoice::default(), r#"{"templates":{"pairs":512}}"#),
            (DirectionChoice::PromptDifference, r#""prompt""#),
            (
                DirectionChoice::File("d.safetensors".into()),
                r#"{"file":"d.safetensors"}"#,
            ),
            (
                DirectionChoice::Sentences {
                    source: vec!["a".into()],
                    target: vec!["b".into()],
                },
                r#"{"sentences":{"source":["a"],"target":["b"]}}"#,
            ),
        ];
        for (choice, json) in cases {
            assert_eq!(serde_json::to_string(&choice).unwrap(), json);
            assert_eq!(
                serde_json::from_str::<DirectionChoice>(json).unwrap(),
                choice
            );
        }
    }
}
