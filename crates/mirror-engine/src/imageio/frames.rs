//! The per-step frames of a run as an animated GIF.

use std::path::Path;

use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, DynamicImage, Frame, RgbImage};

use super::atomic::write_atomic;
use crate::{EngineError, Result};

/// NeuQuant speed (1 best … 30 fastest): 10 keeps a 50-frame 512² animation quick.
const GIF_SPEED: i32 = 10;

/// Encodes `frames` (all the same size) as a looping GIF, `delay_ms` per frame
/// (GIF stores delays in 10 ms units).
pub fn encode_gif(frames: &[RgbImage], delay_ms: u32) -> Result<Vec<u8>> {
    let first = frames
        .first()
        .ok_or_else(|| EngineError::InvalidInput("animation has no frames".into()))?;
    if let Some((i, odd)) = frames
        .iter()
        .enumerate()
        .find(|(_, f)| f.dimensions() != first.dimensions())
    {
        return Err(EngineError::InvalidInput(format!(
            "animation frame {i} is {}×{}, frame 0 is {}×{}",
            odd.width(),
            odd.height(),
            first.width(),
            first.height()
        )));
    }
    let encode_error =
        |e: image::ImageError| EngineError::InvalidInput(format!("cannot encode GIF: {e}"));
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, GIF_SPEED);
        encoder.set_repeat(Repeat::Infinite).map_err(encode_error)?;
        let delay = Delay::from_numer_denom_ms(delay_ms, 1);
        for frame in frames {
            let rgba = DynamicImage::ImageRgb8(frame.clone()).into_rgba8();
            encoder
                .encode_frame(Frame::from_parts(rgba, 0, 0, delay))
                .map_err(encode_error)?;
        }
    }
    Ok(bytes)
}

/// Saves `frames` as an animated GIF at `path`, atomically. Errors name `path`.
pub fn save_animation(frames: &[RgbImage], delay_ms: u32, path: &Path) -> Result<()> {
    let bytes = encode_gif(frames, delay_ms).map_err(|e| match e {
        EngineError::InvalidInput(reason) => {
            EngineError::InvalidInput(format!("{}: {reason}", path.display()))
        }
        other => other,
    })?;
    write_atomic(path, &bytes)
}
