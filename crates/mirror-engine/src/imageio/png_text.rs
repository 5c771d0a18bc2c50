//! PNGs that carry text: an A1111-style `parameters` chunk (read by common image tools) and a
//! keyed iTXt chunk with Mirror's JSON recipe. What the text says is `crate::recipe`'s
//! business; this file only writes and finds it, under a size cap.

use std::io::Cursor;
use std::path::Path;

use image::RgbImage;

use super::atomic::write_atomic;
use crate::{EngineError, Result};

/// Keyword of the A1111-style text chunk.
const PARAMETERS_KEYWORD: &str = "parameters";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The two texts a Mirror output carries.
#[derive(Debug, Clone, Copy)]
pub struct PngText<'a> {
    /// Human-readable `parameters` (A1111 layout).
    pub parameters: &'a str,
    /// Keyword of the machine-readable chunk.
    pub keyword: &'a str,
    /// Its content.
    pub text: &'a str,
}

/// Encodes `img` as PNG, with the text chunks when given.
pub fn encode_png_with_text(
    img: &RgbImage,
    text: Option<PngText<'_>>,
) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, img.width(), img.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        if let Some(t) = text {
            // tEXt is Latin-1 only; fall back to iTXt (as PIL does) for other characters.
            if t.parameters.chars().all(|c| (c as u32) < 256) {
                encoder.add_text_chunk(PARAMETERS_KEYWORD.into(), t.parameters.into())?;
            } else {
                encoder.add_itxt_chunk(PARAMETERS_KEYWORD.into(), t.parameters.into())?;
            }
            encoder.add_itxt_chunk(t.keyword.into(), t.text.into())?;
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(img.as_raw())?;
        writer.finish()?;
    }
    Ok(bytes)
}

/// Saves `img` as PNG carrying `text`, atomically. Errors name `path`.
pub fn save_png_with_text(img: &RgbImage, text: Option<PngText<'_>>, path: &Path) -> Result<()> {
    let bytes = encode_png_with_text(img, text).map_err(|e| {
        EngineError::InvalidInput(format!("{}: cannot encode PNG: {e}", path.display()))
    })?;
    write_atomic(path, &bytes)
}

/// Whether `bytes` start like a PNG file.
pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(PNG_SIGNATURE)
}

/// The text of the `keyword` chunk of the PNG in `bytes` (None when it has none), inflated
/// under `max_bytes`; `label` names the file in errors.
pub fn read_png_text(
    bytes: &[u8],
    keyword: &str,
    max_bytes: usize,
    label: &str,
) -> Result<Option<String>> {
    let corrupt =
        |e: png::DecodingError| EngineError::InvalidInput(format!("{label}: cannot read PNG: {e}"));
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_limits(png::Limits { bytes: usize::MAX });
    let mut reader = decoder.read_info().map_err(corrupt)?;
    // Text before the image data is in the header; other writers may put it after.
    let mut text = chunk_text(reader.info(), keyword, max_bytes, label)?;
    if text.is_none() {
        reader.finish().map_err(corrupt)?;
        text = chunk_text(reader.info(), keyword, max_bytes, label)?;
    }
    Ok(text)
}

fn chunk_text(
    info: &png::Info,
    keyword: &str,
    max_bytes: usize,
    label: &str,
) -> Result<Option<String>> {
    if let Some(chunk) = info.utf8_text.iter().find(|c| c.keyword == keyword) {
        // A compressed chunk is inflated under a cap (`get_text` alone has none: a small file
        // could inflate to gigabytes).
        let mut chunk = chunk.clone();
        return chunk
            .decompress_text_with_limit(max_bytes)
            .and_then(|()| chunk.get_text())
            .map(Some)
            .map_err(|e| {
                EngineError::InvalidInput(format!(
                    "{label}: unreadable `{keyword}` chunk (a recipe is at most {} KiB): {e}",
                    max_bytes / 1024
                ))
            });
    }
    let latin1 = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == keyword)
        .map(|c| c.text.clone());
    Ok(latin1)
}
