//! Writing results: the translation PNG with its recipe, a comparison sheet, the per-step
//! frames as an animated GIF, and attention maps. Every write is atomic (the engine's
//! `write_atomic`): a failed export never leaves a half-written file.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::engine::imageio::{
    ResizePolicy, comparison_sheet, resize, save_animation, save_png_with_recipe,
};
use crate::engine::pipeline::Branch;

use super::state::{AppState, PREVIEW_BRANCHES};
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

/// The translation as the last step or the finished run has it.
pub fn translation(state: &AppState) -> Option<RgbImage> {
    state
        .final_image(Branch::MirrorTranslation)
        .cloned()
        .or_else(|| last_preview(state, Branch::MirrorTranslation))
}

fn last_preview(state: &AppState, branch: Branch) -> Option<RgbImage> {
    state.frames.iter().rev().find_map(|f| {
        f.branches
            .iter()
            .find(|b| b.branch == branch)
            .map(|b| b.preview.clone())
    })
}

pub fn save_translation(state: &AppState, path: &Path) -> Result<(), String> {
    let img = translation(state).ok_or("There is no translation yet.")?;
    save_png_with_recipe(&img, state.result_recipe.as_ref(), path).map_err(|e| e.to_string())
}

/// Everything at once into `dir`; returns the files written.
pub fn export_all(state: &AppState, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stem = stem(state);
    let mut written = Vec::new();
    let path = dir.join(format!("{stem}-translation.png"));
    save_translation(state, &path)?;
    written.push(path);

    let source = state.result.as_ref().and_then(|r| r.images.source.clone());
    let mut tiles: Vec<(String, RgbImage)> = source
        .iter()
        .map(|s| ("source".to_string(), s.clone()))
        .collect();
    for branch in PREVIEW_BRANCHES {
        if let Some(img) = state
            .final_image(branch)
            .cloned()
            .or_else(|| last_preview(state, branch))
        {
            tiles.push((branch.label().to_lowercase(), img));
        }
    }
    if !tiles.is_empty() {
        let path = dir.join(format!("{stem}-sheet.png"));
        save_png_with_recipe(
            &comparison_sheet(&tiles),
            state.result_recipe.as_ref(),
            &path,
        )
        .map_err(|e| e.to_string())?;
        written.push(path);
    }

    let frames: Vec<RgbImage> = state
        .frames
        .iter()
        .filter_map(|f| {
            f.branches
                .iter()
                .find(|b| b.branch == Branch::MirrorTranslation)
        })
        .map(|b| b.preview.clone())
        .collect();
    if let Some(first) = frames.first() {
        let size = first.dimensions();
        let same: Vec<RgbImage> = frames
            .iter()
            .map(|f| resize(f, size, ResizePolicy::Stretch))
            .collect();
        let path = dir.join(format!("{stem}-steps.gif"));
        save_animation(&same, 200, &path).map_err(|e| e.to_string())?;
        written.push(path);
    }

    for (branch, img) in attention_images(state) {
        let word = state
            .attention
            .token
            .as_ref()
            .map_or("word".into(), |t| t.1.clone());
        let kind = if branch.is_reconstruction() {
            "reconstruction"
        } else {
            "translation"
        };
        let path = dir.join(format!("{stem}-attention-{word}-{kind}.png"));
        save_png_with_recipe(&img, None, &path).map_err(|e| e.to_string())?;
        written.push(path);
    }
    Ok(written)
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
    [Branch::MirrorReconstruction, Branch::MirrorTranslation]
        .into_iter()
        .filter_map(|branch| {
            let frame = state.frames.get(step)?;
            let base = &frame.branches.iter().find(|b| b.branch == branch)?.preview;
            let heat =
                super::ui::attention::heat(state, branch, token, base.width(), base.height())?;
            Some((branch, overlay(base, &heat, state.attention.opacity)))
        })
        .collect()
}
