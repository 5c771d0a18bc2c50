//! The knobs of a run as the app keeps them: the engine's own settings (`MirrorSettings`
//! whole, the edit direction as an engine `DirectionChoice` underneath the text fields the user
//! edits). Recipes and the model's recommended values go through `TranslateRequest`, the one
//! description of a run, in both directions ([`RunSettings::request`] and
//! [`RunSettings::take_request`]), so the app cannot read or write them differently from the CLI.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use mirror_engine::loader::Recommended;
use mirror_engine::methods::mask::{EditMask, MaskFinder, MaskSettings};
use mirror_engine::methods::mirror::{MirrorPreset, MirrorSettings};
use mirror_engine::recipe::Recipe;
use mirror_engine::session::{DirectionChoice, Method, TranslateRequest};
use mirror_engine::vae::VaeTiles;

/// The knobs of a run (the "Advanced" section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredRunSettings")]
pub struct RunSettings {
    /// The editing method of the translation.
    pub method: Method,
    pub steps: usize,
    pub edit_strength: f64,
    /// Every MirrorDiffusion setting (guidance, structure guidance, redescription, preset and
    /// the schedule values the sliders do not show).
    pub mirror: MirrorSettings,
    pub seed: u64,
    /// Also run plain DDIM for comparison (costs about as much again).
    pub compare_ddim: bool,
    /// Full VAE decode of the previews every k steps (0: cheap latent previews only).
    pub decode_every: usize,
    /// Custom sentence lists for the edit direction, one sentence a line (empty: templates).
    pub source_sentences: String,
    pub target_sentences: String,
    /// The edit direction from the two prompts alone (no sentences).
    pub direction_from_prompts: bool,
    /// A saved edit direction (.safetensors); empty: none.
    pub direction_file: String,
    /// When the VAE works in tiles.
    pub vae_tiles: VaeTiles,
    /// Where the edit may change the picture.
    pub edit_region: EditRegion,
    /// How a mask is found and applied (from recipes and the model's recommendations).
    pub mask_settings: MaskSettings,
}

/// Where the edit may change the picture: the choice the app keeps. The painted mask itself
/// is the photo's (`AppState::mask`), not a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EditRegion {
    #[default]
    Whole,
    /// Found from the edit by the engine (where the changed words attend).
    Found,
    /// Painted on the photo.
    Painted,
}

impl EditRegion {
    pub const ALL: [EditRegion; 3] = [EditRegion::Whole, EditRegion::Found, EditRegion::Painted];

    /// The words the app shows.
    pub fn label(self) -> &'static str {
        match self {
            EditRegion::Whole => "whole picture",
            EditRegion::Found => "found from the edit",
            EditRegion::Painted => "painted",
        }
    }

    pub fn hint(self) -> &'static str {
        match self {
            EditRegion::Whole => "The edit may change every part of the picture.",
            EditRegion::Found => {
                "Before the edit, the model looks where in the photo it reads the words that \
                 change (the old ones and the new ones); only there may the picture change."
            }
            EditRegion::Painted => {
                "Only where you paint on the photo (Mask tab) may change; the rest stays as \
                 it is."
            }
        }
    }

    /// The choice a request's mask stands for.
    pub fn of(mask: &EditMask) -> Self {
        match mask {
            EditMask::Whole => EditRegion::Whole,
            EditMask::Found(_) => EditRegion::Found,
            EditMask::Given(_) => EditRegion::Painted,
        }
    }
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            method: Method::Mirror,
            steps: 50,
            edit_strength: 1.0,
            mirror: MirrorSettings::default(),
            seed: 0,
            compare_ddim: true,
            decode_every: 5,
            source_sentences: String::new(),
            target_sentences: String::new(),
            direction_from_prompts: false,
            direction_file: String::new(),
            vae_tiles: VaeTiles::default(),
            edit_region: EditRegion::default(),
            mask_settings: MaskSettings::default(),
        }
    }
}

impl RunSettings {
    /// The request these settings describe, for `image` (at processing size) and the prompts.
    /// A painted region needs the painted mask: [`RunSettings::request_with_mask`]; here it is
    /// the whole picture.
    pub fn request(&self, image: image::RgbImage, source: &str, target: &str) -> TranslateRequest {
        self.request_with_mask(image, source, target, None)
    }

    /// The request with the painted mask (at processing size) when the region is painted.
    pub fn request_with_mask(
        &self,
        image: image::RgbImage,
        source: &str,
        target: &str,
        painted: Option<&image::GrayImage>,
    ) -> TranslateRequest {
        let mut req = TranslateRequest::new(image, source, target);
        req.method = self.method;
        req.steps = self.steps.max(1);
        req.mirror = self.mirror.clone();
        req.edit_strength = self.edit_strength;
        req.seed = self.seed;
        req.compare_ddim = self.compare_ddim;
        req.attention_maps = true;
        req.decode_every = (self.decode_every > 0).then_some(self.decode_every);
        req.direction = self.direction();
        req.vae_tiles = self.vae_tiles;
        req.mask = match (self.edit_region, painted) {
            (EditRegion::Found, _) => EditMask::Found(MaskFinder::default()),
            (EditRegion::Painted, Some(mask)) => EditMask::Given(mask.clone()),
            _ => EditMask::Whole,
        };
        req.mask_settings = self.mask_settings;
        req
    }

    /// Takes over every run setting of `req` (the inverse of [`RunSettings::request`]; the
    /// preview cadence stays, it is not part of a run's result).
    pub fn take_request(&mut self, req: &TranslateRequest) {
        self.method = req.method;
        self.steps = req.steps;
        self.mirror = req.mirror.clone();
        self.edit_strength = req.edit_strength;
        self.seed = req.seed;
        self.compare_ddim = req.compare_ddim;
        self.set_direction(&req.direction);
        self.vae_tiles = req.vae_tiles;
        self.edit_region = EditRegion::of(&req.mask);
        self.mask_settings = req.mask_settings;
    }

    /// The edit direction the text fields describe: a file wins, then "from the prompts",
    /// then both sentence lists, else the templates.
    pub fn direction(&self) -> DirectionChoice {
        let lines = |s: &str| -> Vec<String> {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        };
        let (source, target) = (lines(&self.source_sentences), lines(&self.target_sentences));
        if !self.direction_file.trim().is_empty() {
            DirectionChoice::File(PathBuf::from(self.direction_file.trim()))
        } else if self.direction_from_prompts {
            DirectionChoice::PromptDifference
        } else if !source.is_empty() && !target.is_empty() {
            DirectionChoice::Sentences { source, target }
        } else {
            DirectionChoice::default()
        }
    }

    /// Sets the text fields so that [`RunSettings::direction`] gives `direction`.
    pub fn set_direction(&mut self, direction: &DirectionChoice) {
        self.source_sentences.clear();
        self.target_sentences.clear();
        self.direction_from_prompts = false;
        self.direction_file.clear();
        match direction {
            DirectionChoice::Templates { .. } => {}
            DirectionChoice::PromptDifference => self.direction_from_prompts = true,
            DirectionChoice::File(p) => self.direction_file = p.display().to_string(),
            DirectionChoice::Sentences { source, target } => {
                self.source_sentences = source.join("\n");
                self.target_sentences = target.join("\n");
            }
        }
    }

    /// Takes over everything a recipe recorded (`Recipe::apply_to`), and gives back the mask
    /// it painted (at the processing size of its run), which belongs to the photo, not to the
    /// settings. A value the recipe cannot give back is an error naming it; nothing changes then.
    pub fn apply_recipe(&mut self, recipe: &Recipe) -> Result<Option<image::GrayImage>, String> {
        let mut req = self.request(image::RgbImage::new(0, 0), "", "");
        recipe.apply_to(&mut req).map_err(|e| e.to_string())?;
        self.take_request(&req);
        Ok(match req.mask {
            EditMask::Given(mask) => Some(mask),
            _ => None,
        })
    }

    /// Puts the model's recommended values in (`TranslateRequest::apply_recommended`: the
    /// MirrorDiffusion values only with the recommended variant).
    pub fn apply_recommended(&mut self, recommended: &Recommended) {
        let region = self.edit_region; // a painted region's mask is not in the request
        let mut req = self.request(image::RgbImage::new(0, 0), "", "");
        req.apply_recommended(recommended);
        self.take_request(&req);
        self.edit_region = region;
    }

    /// Switches the MirrorDiffusion variant: the visible knobs stay, the values behind them
    /// become the variant's own, and the recommended variant takes the model's values.
    pub fn choose_preset(&mut self, preset: MirrorPreset, recommended: Option<&Recommended>) {
        self.mirror = self
            .mirror
            .keep_knobs_on(MirrorSettings::with_preset(preset));
        if let Some(r) = recommended.filter(|_| preset == MirrorPreset::Recommended) {
            self.apply_recommended(r);
        }
    }
}

/// What a settings file may hold: today's fields, and the separate knobs older versions wrote
/// (`guidance`, `strength`, `redescription_*`, `xa_guidance`, `preset`), which still load.
#[derive(Deserialize)]
#[serde(default)]
struct StoredRunSettings {
    method: Method,
    steps: usize,
    #[serde(alias = "strength")]
    edit_strength: f64,
    mirror: Option<MirrorSettings>,
    seed: u64,
    compare_ddim: bool,
    decode_every: usize,
    source_sentences: String,
    target_sentences: String,
    direction_from_prompts: bool,
    direction_file: String,
    vae_tiles: VaeTiles,
    edit_region: EditRegion,
    mask_settings: MaskSettings,
    guidance: Option<f64>,
    xa_guidance: Option<f64>,
    redescription_iterations: Option<usize>,
    redescription_lr: Option<f64>,
    preset: Option<MirrorPreset>,
}

impl Default for StoredRunSettings {
    fn default() -> Self {
        let d = RunSettings::default();
        Self {
            method: d.method,
            steps: d.steps,
            edit_strength: d.edit_strength,
            mirror: None,
            seed: d.seed,
            compare_ddim: d.compare_ddim,
            decode_every: d.decode_every,
            source_sentences: d.source_sentences,
            target_sentences: d.target_sentences,
            direction_from_prompts: d.direction_from_prompts,
            direction_file: d.direction_file,
            vae_tiles: d.vae_tiles,
            edit_region: d.edit_region,
            mask_settings: d.mask_settings,
            guidance: None,
            xa_guidance: None,
            redescription_iterations: None,
            redescription_lr: None,
            preset: None,
        }
    }
}

impl From<StoredRunSettings> for RunSettings {
    fn from(s: StoredRunSettings) -> Self {
        let mut mirror = s.mirror.unwrap_or_else(|| {
            MirrorSettings::with_preset(s.preset.unwrap_or(MirrorPreset::Recommended))
        });
        if let Some(v) = s.guidance {
            mirror.guidance_scale = v;
        }
        if let Some(v) = s.xa_guidance {
            mirror.xa_guidance = v;
        }
        if let Some(v) = s.redescription_iterations {
            mirror.redescribe.iterations = v;
        }
        if let Some(v) = s.redescription_lr {
            mirror.redescribe.lr = v;
        }
        Self {
            method: s.method,
            steps: s.steps,
            edit_strength: s.edit_strength,
            mirror,
            seed: s.seed,
            compare_ddim: s.compare_ddim,
            decode_every: s.decode_every,
            source_sentences: s.source_sentences,
            target_sentences: s.target_sentences,
            direction_from_prompts: s.direction_from_prompts,
            direction_file: s.direction_file,
            vae_tiles: s.vae_tiles,
            edit_region: s.edit_region,
            mask_settings: s.mask_settings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `run` section as the versions before this one wrote it keeps every value.
    #[test]
    fn older_run_settings_load() {
        let old: RunSettings = serde_json::from_str(
            r#"{"method": "ddim", "steps": 12, "guidance": 3.5, "strength": 0.8,
                "redescription_iterations": 4, "redescription_lr": 0.002,
                "xa_guidance": 0.2, "preset": "authors", "seed": 5}"#,
        )
        .expect("an older run section");
        assert_eq!((old.method, old.steps, old.seed), (Method::Ddim, 12, 5));
        assert_eq!(old.edit_strength, 0.8);
        assert_eq!(old.mirror.preset, MirrorPreset::Authors);
        assert_eq!(old.mirror.guidance_scale, 3.5);
        assert_eq!(old.mirror.xa_guidance, 0.2);
        assert_eq!(old.mirror.redescribe.iterations, 4);
        assert_eq!(old.mirror.redescribe.lr, 0.002);
        assert_eq!(
            old.edit_region,
            EditRegion::Whole,
            "no region: the whole picture"
        );

        let back: RunSettings =
            serde_json::from_str(&serde_json::to_string(&old).expect("written")).expect("read");
        assert_eq!(back, old, "today's layout reads back as written");
    }

    /// Every direction the text fields can describe comes back from the request.
    #[test]
    fn directions_round_trip_through_the_request() {
        let choices = [
            DirectionChoice::default(),
            DirectionChoice::PromptDifference,
            DirectionChoice::File(PathBuf::from("/dirs/cat-dog.safetensors")),
            DirectionChoice::Sentences {
                source: vec!["a cat".into(), "a cat on grass".into()],
                target: vec!["a dog".into()],
            },
        ];
        for choice in choices {
            let mut run = RunSettings::default();
            run.set_direction(&choice);
            assert_eq!(run.direction(), choice);
            let mut back = RunSettings::default();
            back.take_request(&run.request(image::RgbImage::new(8, 8), "a", "b"));
            assert_eq!(back, run);
        }
    }

    /// Each edit region goes into the request as its mask and comes back.
    #[test]
    fn edit_regions_round_trip_through_the_request() {
        let painted = image::GrayImage::from_pixel(8, 8, image::Luma([255]));
        for region in EditRegion::ALL {
            let run = RunSettings {
                edit_region: region,
                ..RunSettings::default()
            };
            let req = run.request_with_mask(image::RgbImage::new(8, 8), "a", "b", Some(&painted));
            assert_eq!(EditRegion::of(&req.mask), region);
            let mut back = RunSettings::default();
            back.take_request(&req);
            assert_eq!(back, run);
            let text = serde_json::to_string(&run).expect("written");
            assert_eq!(
                serde_json::from_str::<RunSettings>(&text).expect("read"),
                run
            );
        }
    }
}
