//! Output files: checked for writability before the long run, written atomically after it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use image::{RgbImage, imageops};

use mirror_engine::imageio::{ResizePolicy, comparison_sheet, restore_size, tensor_to_image};
use mirror_engine::recipe::{Recipe, save_png_with_recipe};
use mirror_engine::session::{Method, TranslateOutcome};

/// Fails with a clear message unless a file can be created at `path` (its folder exists and
/// is writable, and `path` is not a folder). Leaves nothing behind.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{}: is a folder, not a file name", path.display());
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !folder.is_dir() {
        bail!(
            "{}: output folder {} does not exist",
            path.display(),
            folder.display()
        );
    }
    let probe = temp_path_for(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| format!("{}: cannot write to {}", path.display(), folder.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// A hidden temporary name next to `path`, for write-then-rename.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

pub fn to_image(t: &Tensor) -> Result<RgbImage> {
    Ok(tensor_to_image(t)?)
}

/// Saves `t` ([1, 3, H, W] in [-1, 1]) as PNG carrying `recipe`, at the size the resize
/// policy delivers (`delivered`: the policy and the source's size).
pub fn save_tensor_png(
    t: &Tensor,
    recipe: &Recipe,
    delivered: (ResizePolicy, (u32, u32)),
    path: &Path,
) -> Result<()> {
    let (policy, original) = delivered;
    let image = restore_size(&to_image(t)?, original, policy);
    save_png_with_recipe(&image, Some(recipe), path)?;
    Ok(())
}

/// The labelled tiles of the comparison sheet: the source, then every branch image that exists
/// (reconstruction and translation of the method, then plain DDIM's).
pub fn comparison_tiles(
    source: &RgbImage,
    method: Method,
    outcome: &TranslateOutcome,
) -> Result<Vec<(String, RgbImage)>> {
    let images = &outcome.images;
    let [rec, edit] = method.branches();
    let mut tiles = vec![("source".to_string(), source.clone())];
    let mut candidates = vec![
        (rec, images.reconstruction.as_ref()),
        (edit, images.translation.as_ref()),
    ];
    // Plain DDIM's own images are the method's when the method is DDIM.
    if method != Method::Ddim {
        candidates.push((
            Method::Ddim.reconstruction(),
            images.ddim_reconstruction.as_ref(),
        ));
        candidates.push((Method::Ddim.translation(), images.ddim_translation.as_ref()));
    }
    for (branch, image) in candidates {
        if let Some(t) = image {
            tiles.push((branch.label().to_string(), to_image(t)?));
        }
    }
    Ok(tiles)
}

/// Tiles narrower than this are enlarged (nearest neighbour, integer factor) so that the
/// labels stay legible on small models' images.
pub const MIN_TILE_WIDTH: u32 = 128;

/// The integer enlargement applied to tiles of width `width`.
pub fn tile_scale(width: u32) -> u32 {
    if width == 0 || width >= MIN_TILE_WIDTH {
        1
    } else {
        MIN_TILE_WIDTH.div_ceil(width)
    }
}

pub fn save_comparison(tiles: &[(String, RgbImage)], recipe: &Recipe, path: &Path) -> Result<()> {
    let narrowest = tiles.iter().map(|(_, t)| t.width()).min().unwrap_or(0);
    let k = tile_scale(narrowest);
    let tiles: Vec<(String, RgbImage)> = tiles
        .iter()
        .map(|(label, t)| {
            let t = if k == 1 {
                t.clone()
            } else {
                imageops::resize(
                    t,
                    t.width() * k,
                    t.height() * k,
                    imageops::FilterType::Nearest,
                )
            };
            (label.clone(), t)
        })
        .collect();
    save_png_with_recipe(&comparison_sheet(&tiles), Some(recipe), path)?;
    Ok(())
}
