//! Settings and recent files, kept as JSON in the platform config folder and written
//! atomically (write to a temporary file, then rename), so a crash never leaves half a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::imageio::{Recipe, ResizePolicy, write_atomic};
use crate::engine::methods::mirror::{MirrorPreset, MirrorSettings};
use crate::engine::session::{DirectionChoice, TranslateRequest};

const FILE_NAME: &str = "settings.json";
const MAX_RECENT: usize = 8;

/// The knobs of a run (the "Advanced" section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSettings {
    pub steps: usize,
    pub guidance: f64,
    pub strength: f64,
    pub redescription_iterations: usize,
    pub preset: MirrorPreset,
    pub seed: u64,
    /// Also run plain DDIM for comparison (costs about as much again).
    pub compare_ddim: bool,
    /// Full VAE decode of the previews every k steps (0: cheap latent previews only).
    pub decode_every: usize,
    /// Custom sentence lists for the edit direction, one sentence a line (empty: templates).
    pub source_sentences: String,
    pub target_sentences: String,
}

impl Default for RunSettings {
    fn default() -> Self {
        let m = MirrorSettings::default();
        Self {
            steps: 50,
            guidance: m.guidance_scale,
            strength: 1.0,
            redescription_iterations: m.redescribe.iterations,
            preset: m.preset,
            seed: 0,
            compare_ddim: true,
            decode_every: 5,
            source_sentences: String::new(),
            target_sentences: String::new(),
        }
    }
}

impl RunSettings {
    pub fn request(&self, image: image::RgbImage, source: &str, target: &str) -> TranslateRequest {
        let mut req = TranslateRequest::new(image, source, target);
        req.steps = self.steps.max(1);
        req.mirror = MirrorSettings::with_preset(self.preset);
        req.mirror.guidance_scale = self.guidance;
        req.mirror.redescribe.iterations = self.redescription_iterations;
        req.edit_strength = self.strength;
        req.seed = self.seed;
        req.compare_ddim = self.compare_ddim;
        req.attention_maps = true;
        req.decode_every = (self.decode_every > 0).then_some(self.decode_every);
        let lines = |s: &str| -> Vec<String> {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        };
        let (src, tgt) = (lines(&self.source_sentences), lines(&self.target_sentences));
        if !src.is_empty() && !tgt.is_empty() {
            req.direction = DirectionChoice::Sentences {
                source: src,
                target: tgt,
            };
        }
        req
    }

    /// Takes over what a recipe recorded.
    pub fn apply_recipe(&mut self, r: &Recipe) {
        if r.steps > 0 {
            self.steps = r.steps;
        }
        self.seed = r.seed;
        self.strength = r.edit_strength;
        if r.guidance_scale > 0.0 {
            self.guidance = r.guidance_scale;
        }
        self.redescription_iterations = r.redescription_iterations;
        if let Ok(p) = r.preset.parse() {
            self.preset = p;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub recent_models: Vec<PathBuf>,
    pub recent_images: Vec<PathBuf>,
    pub run: RunSettings,
    pub resize: ResizePolicy,
    pub export_dir: Option<PathBuf>,
    pub source_prompt: String,
    pub target_prompt: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            recent_models: Vec::new(),
            recent_images: Vec::new(),
            run: RunSettings::default(),
            resize: ResizePolicy::Crop,
            export_dir: None,
            source_prompt: "a photo of a cat".into(),
            target_prompt: "a photo of a dog".into(),
        }
    }
}

fn remember(list: &mut Vec<PathBuf>, path: &Path) {
    list.retain(|p| p != path);
    list.insert(0, path.to_path_buf());
    list.truncate(MAX_RECENT);
}

impl Settings {
    /// The platform config folder (`~/.config/mirror` on Linux).
    pub fn default_dir() -> Option<PathBuf> {
        directories::ProjectDirs::from("io.github", "mirror_diffusion", "Mirror")
            .map(|d| d.config_dir().to_path_buf())
    }

    /// Reads the settings; a missing file gives the defaults, an unreadable one gives the
    /// defaults and a message naming it. An unreadable file is first copied aside (to
    /// `settings.json.unreadable`), so that saving the defaults later loses nothing.
    pub fn load(dir: &Path) -> (Self, Option<String>) {
        let path = dir.join(FILE_NAME);
        let problem = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Self::default(), None),
            Err(e) => e.to_string(),
            Ok(bytes) => match std::str::from_utf8(&bytes) {
                Err(_) => "it is not UTF-8 text".to_string(),
                Ok(text) => match serde_json::from_str(text) {
                    Ok(s) => return (s, None),
                    Err(e) => e.to_string(),
                },
            },
        };
        let aside = dir.join(format!("{FILE_NAME}.unreadable"));
        let kept = match std::fs::copy(&path, &aside) {
            Ok(_) => format!(" (kept as {})", aside.display()),
            Err(_) => String::new(),
        };
        (
            Self::default(),
            Some(format!(
                "Settings file {} was unreadable ({problem}); using defaults{kept}.",
                path.display()
            )),
        )
    }

    pub fn save(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        write_atomic(&dir.join(FILE_NAME), text.as_bytes()).map_err(|e| e.to_string())
    }

    pub fn remember_model(&mut self, path: &Path) {
        remember(&mut self.recent_models, path);
    }

    pub fn remember_image(&mut self, path: &Path) {
        remember(&mut self.recent_images, path);
    }
}
