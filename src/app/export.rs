//! Writing results: the translation PNG with its recipe (at the photo's own size when its
//! shape was kept), a comparison sheet, a sheet of every target, the per-step frames as an
//! animated GIF, and attention maps. The data is gathered on the UI thread and written on a
//! job thread. Every write is atomic (the engine's
//! `write_atomic`): a failed export never leaves a half-written file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use image::RgbImage;

use mirror_engine::imageio::{
    ResizePolicy, comparison_sheet, resize, restore_size, save_animation,
};
use mirror_engine::pipeline::Branch;
use mirror_engine::recipe::{Recipe, save_png_with_recipe};

use super::state::AppState;
use super::textures::overlay;

/// A file-name stem from the image and the edit, e.g. `cat-to-a-photo-of-a-dog`.
pub fn stem(state: &AppState) -> String {
    let image = state
        .image
        .as_ref()
        .map(|i| {
            Path::new(&i.name)
                .file_stem()
                .map_or("image".into(), |s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "image".into());
    let target: String = state
        .settings
        .target_prompt
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let target = target
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let target: String = target.chars().take(40).collect();
    format!("{image}-to-{target}")
}

/// The main method's translation as the last step or the finished run has it.
pub fn translation(state: &AppState) -> Option<RgbImage> {
    let branch = state.main_method().translation();
    state
        .final_image(branch)
        .cloned()
        .or_else(|| last_preview(state, branch))
}

fn last_preview(state: &AppState, branch: Branch) -> Option<RgbImage> {
    state.frames.iter().rev().find_map(|f| {
        f.branches
            .iter()
            .find(|b| b.branch == branch)
            .map(|b| b.preview.clone())
    })
}

/// Everything an export writes, copied out of the app state so that the encoding and
/// writing can happen on a job thread while the window keeps drawing.
pub struct ExportData {
    pub stem: String,
    /// The main translation at processing size, the photo's size and the resize choice that
    /// says at which size it is delivered.
    pub translation: Option<RgbImage>,
    pub original: (u32, u32),
    pub policy: ResizePolicy,
    pub recipe: Option<Recipe>,
    /// Labelled tiles of the comparison sheet.
    pub tiles: Vec<(String, RgbImage)>,
    /// Several targets: one tile per target, on a sheet of its own.
    pub target_tiles: Vec<(String, RgbImage)>,
    /// The main translation at every step (the animation).
    pub frames: Vec<RgbImage>,
    /// Attention maps, by file-name suffix.
    pub attention: Vec<(String, RgbImage)>,
}

impl ExportData {
    pub fn gather(state: &AppState) -> Self {
        let source = state.result.as_ref().and_then(|r| r.images.source.clone());
        let mut tiles: Vec<(String, RgbImage)> = source
            .iter()
            .map(|s| ("source".to_string(), s.clone()))
            .collect();
        for branch in state.preview_branches() {
            if let Some(img) = state
                .final_image(branch)
                .cloned()
                .or_else(|| last_preview(state, branch))
            {
                tiles.push((branch.label().to_lowercase(), img));
            }
        }
        let mut target_tiles: Vec<(String, RgbImage)> = source
            .iter()
            .filter(|_| !state.target_results.is_empty())
            .map(|s| ("source".to_string(), s.clone()))
            .collect();
        target_tiles.extend(
            state
                .target_results
                .iter()
                .map(|t| (t.target.clone(), t.image.clone())),
        );
        let main = state.main_method().translation();
        let frames = state
            .frames
            .iter()
            .filter_map(|f| f.branches.iter().find(|b| b.branch == main))
            .map(|b| b.preview.clone())
            .collect();
        let word = state
            .attention
            .token
            .as_ref()
            .map_or("word".into(), |t| t.1.clone());
        let attention = attention_images(state)
            .into_iter()
            .map(|(branch, img)| {
                let kind = if branch.is_reconstruction() {
                    "reconstruction"
                } else {
                    "translation"
                };
                (format!("attention-{word}-{kind}"), img)
            })
            .collect();
        Self {
            stem: stem(state),
            translation: translation(state),
            original: state
                .image
                .as_ref()
                .map_or((0, 0), |i| i.loaded.original_size),
            policy: state
                .result_recipe
                .as_ref()
                .map_or(state.settings.resize, |r| r.resize),
            recipe: state.result_recipe.clone(),
            tiles,
            target_tiles,
            frames,
            attention,
        }
    }

    /// The translation at the size the resize choice delivers: the photo's own size when
    /// its shape was kept.
    pub fn delivered_translation(&self) -> Option<RgbImage> {
        let img = self.translation.as_ref()?;
        if self.original.0 == 0 || self.original.1 == 0 {
            return Some(img.clone());
        }
        Some(restore_size(img, self.original, self.policy))
    }

    pub fn save_translation(&self, path: &Path) -> Result<(), String> {
        let img = self
            .delivered_translation()
            .ok_or("There is no translation yet.")?;
        save_png_with_recipe(&img, self.recipe.as_ref(), path).map_err(|e| e.to_string())
    }

    /// Everything at once into `dir`; returns the files written. Checks `cancel` between
    /// files (files already written stay; each is complete).
    pub fn write_all(&self, dir: &Path, cancel: &AtomicBool) -> Result<Vec<PathBuf>, String> {
        let stopped = || cancel.load(Ordering::Relaxed);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let stem = &self.stem;
        let mut written = Vec::new();
        let path = dir.join(format!("{stem}-translation.png"));
        self.save_translation(&path)?;
        written.push(path);

        let sheets = [("sheet", &self.tiles), ("targets", &self.target_tiles)];
        for (name, tiles) in sheets {
            if tiles.is_empty() || stopped() {
                continue;
            }
            let path = dir.join(format!("{stem}-{name}.png"));
            save_png_with_recipe(&comparison_sheet(tiles), self.recipe.as_ref(), &path)
                .map_err(|e| e.to_string())?;
            written.push(path);
        }

        if let Some(first) = self.frames.first()
            && !stopped()
        {
            let size = first.dimensions();
            let same: Vec<RgbImage> = self
                .frames
                .iter()
                .map(|f| resize(f, size, ResizePolicy::Stretch))
                .collect();
            let path = dir.join(format!("{stem}-steps.gif"));
            save_animation(&same, 200, &path).map_err(|e| e.to_string())?;
            written.push(path);
        }

        for (suffix, img) in &self.attention {
            if stopped() {
                break;
            }
            let path = dir.join(format!("{stem}-{suffix}.png"));
            save_png_with_recipe(img, None, &path).map_err(|e| e.to_string())?;
            written.push(path);
        }
        Ok(written)
    }
}

/// The selected word's heat maps over the reconstruction and translation previews, as the
/// attention view shows them.
pub fn attention_images(state: &AppState) -> Vec<(Branch, RgbImage)> {
    let Some((token, _)) = state.attention.token.clone() else {
        return Vec::new();
    };
    let Some(step) = state.shown_step() else {
        return Vec::new();
    };
    let method = state.main_method();
    [method.reconstruction(), method.translation()]
        .into_iter()
        .filter_map(|branch| {
            let frame = state.frames.get(step)?;
            let base = &frame.branches.iter().find(|b| b.branch == branch)?.preview;
            let heat = state.heat(branch, token, base.width(), base.height())?;
            Some((branch, overlay(base, &heat, state.attention.opacity)))
        })
        .collect()
}
