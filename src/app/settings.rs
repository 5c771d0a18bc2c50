//! Settings and recent files, kept as JSON in the platform config folder and written
//! atomically (write to a temporary file, then rename), so a crash never leaves half a file.
//! [`Settings`] is the one truth of everything the user sets: the UI edits it directly, and
//! whatever an older version saved still loads (a missing field takes its default).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::cli::DirectionRecipe;
use crate::worker::Compute;
use mirror_engine::device::{DeviceChoice, Precision};
use mirror_engine::imageio::{Recipe, ResizePolicy, write_atomic};
use mirror_engine::methods::mirror::{MirrorPreset, MirrorSettings};
use mirror_engine::session::{Method, TranslateRequest};
use mirror_engine::vae::VaeTiles;

const FILE_NAME: &str = "settings.json";
const MAX_RECENT: usize = 8;

/// The knobs of a run (the "Advanced" section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSettings {
    /// The editing method of the translation.
    pub method: Method,
    pub steps: usize,
    pub guidance: f64,
    pub strength: f64,
    pub redescription_iterations: usize,
    pub redescription_lr: f64,
    /// Step size of the cross-attention guidance (MirrorDiffusion and pix2pix-zero).
    pub xa_guidance: f64,
    pub preset: MirrorPreset,
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
}

impl Default for RunSettings {
    fn default() -> Self {
        let m = MirrorSettings::default();
        Self {
            method: Method::Mirror,
            steps: 50,
            guidance: m.guidance_scale,
            strength: 1.0,
            redescription_iterations: m.redescribe.iterations,
            redescription_lr: m.redescribe.lr,
            xa_guidance: m.xa_guidance,
            preset: m.preset,
            seed: 0,
            compare_ddim: true,
            decode_every: 5,
            source_sentences: String::new(),
            target_sentences: String::new(),
            direction_from_prompts: false,
            direction_file: String::new(),
            vae_tiles: VaeTiles::default(),
        }
    }
}

impl RunSettings {
    pub fn request(&self, image: image::RgbImage, source: &str, target: &str) -> TranslateRequest {
        let mut req = TranslateRequest::new(image, source, target);
        req.method = self.method;
        req.steps = self.steps.max(1);
        req.mirror = MirrorSettings::with_preset(self.preset);
        req.mirror.guidance_scale = self.guidance;
        req.mirror.xa_guidance = self.xa_guidance;
        req.mirror.redescribe.iterations = self.redescription_iterations;
        req.mirror.redescribe.lr = self.redescription_lr;
        req.edit_strength = self.strength;
        req.seed = self.seed;
        req.compare_ddim = self.compare_ddim;
        req.attention_maps = true;
        req.decode_every = (self.decode_every > 0).then_some(self.decode_every);
        req.direction = self.direction().choice();
        req.vae_tiles = self.vae_tiles;
        req
    }

    /// The edit direction as recipes record it.
    pub fn direction(&self) -> DirectionRecipe {
        let lines = |s: &str| -> Vec<String> {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        };
        let (src, tgt) = (lines(&self.source_sentences), lines(&self.target_sentences));
        if !self.direction_file.trim().is_empty() {
            DirectionRecipe::File(PathBuf::from(self.direction_file.trim()))
        } else if self.direction_from_prompts {
            DirectionRecipe::Prompt
        } else if !src.is_empty() && !tgt.is_empty() {
            DirectionRecipe::Sentences {
                source: src,
                target: tgt,
            }
        } else {
            DirectionRecipe::Templates {
                pairs: DirectionRecipe::default_pairs(),
            }
        }
    }

    /// Takes over everything a recipe recorded: method, preset, steps, seed, strengths,
    /// guidance, redescription, the DDIM comparison and the edit direction. A value the
    /// recipe cannot give back is an error naming it; nothing changes then.
    pub fn apply_recipe(&mut self, r: &Recipe) -> Result<(), String> {
        let mut next = self.clone();
        if !r.method.is_empty() {
            next.method = r.method.parse()?;
        }
        if !r.preset.is_empty() {
            next.preset = r.preset.parse()?;
        }
        if r.steps > 0 {
            next.steps = r.steps;
        }
        next.seed = r.seed;
        next.strength = r.edit_strength;
        next.guidance = r.guidance_scale;
        next.xa_guidance = r.xa_guidance;
        next.redescription_iterations = r.redescription_iterations;
        next.redescription_lr = r.redescription_lr;
        next.vae_tiles = r.vae_tiles();
        next.compare_ddim = r
            .extra
            .get("compare_ddim")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        if let Some(v) = r.extra.get("direction") {
            let direction: DirectionRecipe = serde_json::from_value(v.clone())
                .map_err(|e| format!("its edit direction is unreadable ({e})"))?;
            next.source_sentences.clear();
            next.target_sentences.clear();
            next.direction_from_prompts = false;
            next.direction_file.clear();
            match direction {
                DirectionRecipe::Templates { .. } => {}
                DirectionRecipe::Prompt => next.direction_from_prompts = true,
                DirectionRecipe::File(p) => next.direction_file = p.display().to_string(),
                DirectionRecipe::Sentences { source, target } => {
                    next.source_sentences = source.join("\n");
                    next.target_sentences = target.join("\n");
                }
            }
        }
        *self = next;
        Ok(())
    }
}

/// Everything the user sets that outlives the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub recent_models: Vec<PathBuf>,
    pub recent_images: Vec<PathBuf>,
    pub run: RunSettings,
    pub resize: ResizePolicy,
    /// Where Ctrl+S writes, as typed (empty until the app fills in the pictures folder).
    #[serde(deserialize_with = "text_or_null")]
    pub export_dir: String,
    pub source_prompt: String,
    pub target_prompt: String,
    /// Where models compute (applied when a model loads; the CPU when it cannot be used).
    pub device: DeviceChoice,
    /// Number format of the passes without gradients (applied when a model loads).
    pub precision: Precision,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            recent_models: Vec::new(),
            recent_images: Vec::new(),
            run: RunSettings::default(),
            resize: ResizePolicy::default(),
            export_dir: String::new(),
            source_prompt: "a photo of a cat".into(),
            target_prompt: "a photo of a dog".into(),
            device: DeviceChoice::default(),
            precision: Precision::default(),
        }
    }
}

/// Reads a text that older versions wrote as `null` when unset.
fn text_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
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

    /// Fills an unset export folder with `Mirror` in the user's pictures folder (or
    /// `mirror-exports` here when there is none).
    pub fn fill_export_dir(&mut self) {
        if !self.export_dir.is_empty() {
            return;
        }
        let dir = directories::UserDirs::new()
            .and_then(|u| u.picture_dir().map(|p| p.join("Mirror")))
            .unwrap_or_else(|| PathBuf::from("mirror-exports"));
        self.export_dir = dir.display().to_string();
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

    /// The device and precision a model loads with.
    pub fn compute(&self) -> Compute {
        Compute {
            device: self.device,
            precision: self.precision,
        }
    }

    pub fn remember_model(&mut self, path: &Path) {
        remember(&mut self.recent_models, path);
    }

    pub fn remember_image(&mut self, path: &Path) {
        remember(&mut self.recent_images, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings files as earlier versions wrote them (the export folder unset, or set, and a
    /// file from before most fields existed) still load, keeping what they say.
    #[test]
    fn older_settings_files_load() {
        let unset: Settings = serde_json::from_str(
            r#"{"recent_models": ["/models/sd15"], "export_dir": null,
                "source_prompt": "a photo of a horse", "run": {"steps": 20}}"#,
        )
        .expect("an unset export folder");
        assert_eq!(unset.export_dir, "");
        assert_eq!(unset.source_prompt, "a photo of a horse");
        assert_eq!(unset.run.steps, 20);
        assert_eq!(unset.recent_models, [PathBuf::from("/models/sd15")]);
        assert_eq!(unset.target_prompt, Settings::default().target_prompt);

        let set: Settings = serde_json::from_str(r#"{"export_dir": "/home/me/Pictures/Mirror"}"#)
            .expect("a set export folder");
        assert_eq!(set.export_dir, "/home/me/Pictures/Mirror");

        let mut filled = Settings::default();
        filled.fill_export_dir();
        assert!(
            !filled.export_dir.is_empty(),
            "an unset folder is filled in"
        );
        let back: Settings =
            serde_json::from_str(&serde_json::to_string(&filled).expect("written"))
                .expect("read back");
        assert_eq!(back, filled);
    }
}
