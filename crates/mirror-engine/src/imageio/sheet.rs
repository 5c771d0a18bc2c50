//! Comparison sheets: images side by side, each with its label drawn above it
//! (e.g. source | Mirror reconstruction | Mirror translation | DDIM reconstruction | DDIM translation).

use image::{Rgb, RgbImage, imageops};

use super::font::{GLYPH_HEIGHT, GLYPH_WIDTH, glyph_pixel};

/// Labels are drawn at this integer scale of the 5×7 font.
const LABEL_SCALE: u32 = 2;
const LABEL_PADDING: u32 = 4;
/// Height of the label band above the tiles.
pub const SHEET_LABEL_HEIGHT: u32 = GLYPH_HEIGHT * LABEL_SCALE + 2 * LABEL_PADDING;
/// Blank columns between neighbouring tiles.
pub const SHEET_GAP: u32 = 4;
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([0, 0, 0]);

/// Size of the sheet `comparison_sheet` makes for tiles of these sizes.
pub fn sheet_size(tile_sizes: &[(u32, u32)]) -> (u32, u32) {
    if tile_sizes.is_empty() {
        return (0, 0);
    }
    let width =
        tile_sizes.iter().map(|s| s.0).sum::<u32>() + SHEET_GAP * (tile_sizes.len() as u32 - 1);
    let height = SHEET_LABEL_HEIGHT + tile_sizes.iter().map(|s| s.1).max().unwrap_or(0);
    (width, height)
}

/// Tiles side by side on white, each with its label above it (centred, clipped to the tile
/// width). Tiles of different heights are top-aligned. No tiles gives a 0×0 image.
pub fn comparison_sheet(tiles: &[(String, RgbImage)]) -> RgbImage {
    let sizes: Vec<(u32, u32)> = tiles.iter().map(|(_, img)| img.dimensions()).collect();
    let (width, height) = sheet_size(&sizes);
    let mut sheet = RgbImage::from_pixel(width, height, BACKGROUND);
    let mut x = 0;
    for (label, tile) in tiles {
        let (text, scale) = fit_label(label, tile.width());
        let text_width = text_width(&text, scale);
        let text_x = x + tile.width().saturating_sub(text_width) / 2;
        // Smaller text sits vertically centred in the band.
        let text_y = (SHEET_LABEL_HEIGHT - GLYPH_HEIGHT * scale) / 2;
        let limit = x + tile.width();
        draw_text_clipped(&mut sheet, &text, (text_x, text_y), scale, INK, limit);
        imageops::replace(
            &mut sheet,
            tile,
            i64::from(x),
            i64::from(SHEET_LABEL_HEIGHT),
        );
        x += tile.width() + SHEET_GAP;
    }
    sheet
}

/// The label as drawn in `width` pixels: at full scale if it fits, else at scale 1, else
/// cut to whole glyphs ending in "..".
fn fit_label(label: &str, width: u32) -> (String, u32) {
    if text_width(label, LABEL_SCALE) <= width {
        return (label.to_string(), LABEL_SCALE);
    }
    if text_width(label, 1) <= width {
        return (label.to_string(), 1);
    }
    let fitting = ((width + 1) / (GLYPH_WIDTH + 1)) as usize;
    let kept: String = label.chars().take(fitting.saturating_sub(2)).collect();
    (format!("{kept}.."), 1)
}

/// Width in pixels of `text` drawn at `scale` (one blank column between glyphs).
fn text_width(text: &str, scale: u32) -> u32 {
    let chars = text.chars().count() as u32;
    (chars * (GLYPH_WIDTH + 1)).saturating_sub(1) * scale
}

/// Draws `text` with the built-in 5×7 font, top-left at `origin`, each font pixel a
/// `scale`×`scale` block; clipped to the image.
pub fn draw_text(img: &mut RgbImage, text: &str, origin: (u32, u32), scale: u32, colour: Rgb<u8>) {
    let limit = img.width();
    draw_text_clipped(img, text, origin, scale, colour, limit);
}

fn draw_text_clipped(
    img: &mut RgbImage,
    text: &str,
    (x0, y0): (u32, u32),
    scale: u32,
    colour: Rgb<u8>,
    x_limit: u32,
) {
    let scale = scale.max(1);
    let x_limit = x_limit.min(img.width());
    for (i, c) in text.chars().enumerate() {
        let glyph_x = x0 + i as u32 * (GLYPH_WIDTH + 1) * scale;
        if glyph_x >= x_limit {
            break;
        }
        for gy in 0..GLYPH_HEIGHT {
            for gx in 0..GLYPH_WIDTH {
                if !glyph_pixel(c, gx, gy) {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (glyph_x + gx * scale + dx, y0 + gy * scale + dy);
                        if px < x_limit && py < img.height() {
                            img.put_pixel(px, py, colour);
                        }
                    }
                }
            }
        }
    }
}
