//! Settings and recent files, kept as JSON in the platform config folder and written
//! atomically (write to a temporary file, then rename), so a crash never leaves half a file.
//! [`Settings`] is the one truth of everything the user sets: the UI edits it directly, and
//! whatever an older version saved still loads (a missing field takes its default).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::worker::Compute;
use mirror_engine::device::{DeviceChoice, Precision};
use mirror_engine::imageio::{ResizePolicy, write_atomic};

pub use super::loras::LoraSetting;
pub use super::run_settings::RunSettings;

const FILE_NAME: &str = "settings.json";
const MAX_RECENT: usize = 8;

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
    /// LoRAs merged into every model loaded (file and strength).
    pub loras: Vec<LoraSetting>,
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
            loras: Vec::new(),
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
