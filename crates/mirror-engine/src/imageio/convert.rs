//! Conversions between 8-bit RGB images and the model's [-1, 1] tensors, and the cheap
//! latent → RGB preview shown while a run is in progress.

use candle_core::{DType, Device, Tensor};
use image::{Rgb, RgbImage};

/// `[1, 3, H, W]` f32 in [-1, 1]. Matches the reference pipeline bit for bit: `u8 / 255` in
/// f64, cast to f32, then `(x - 0.5) * 2` in f32.
pub fn image_to_tensor(img: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let lut: [f32; 256] = std::array::from_fn(|u| {
        let x = (u as f64 / 255.0) as f32;
        (x - 0.5) * 2.0
    });
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut planar = vec![0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            planar[c * h * w + i] = lut[px.0[c] as usize];
        }
    }
    Tensor::from_vec(planar, (1, 3, h, w), device)
}

/// `[1, 3, H, W]` or `[3, H, W]` in [-1, 1] → RGB8, as diffusers post-processing:
/// `clamp(x / 2 + 0.5, 0, 1) * 255`, rounded half to even (numpy's rule).
pub fn tensor_to_image(t: &Tensor) -> candle_core::Result<RgbImage> {
    let chw = match t.dims() {
        [1, 3, _, _] => t.squeeze(0)?,
        [3, _, _] => t.clone(),
        dims => {
            candle_core::bail!("tensor_to_image: expected [1, 3, H, W] or [3, H, W], got {dims:?}")
        }
    };
    let (_, h, w) = chw.dims3()?;
    let values = chw
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let to_u8 = |v: f64| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        Rgb([
            to_u8(values[i]),
            to_u8(values[h * w + i]),
            to_u8(values[2 * h * w + i]),
        ])
    }))
}

/// A linear map from latent channels to RGB in [-1, 1]: `rgb = Σ_c latent[c] · factors[c] + bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentRgbMap {
    /// RGB contribution of each latent channel, one `[r, g, b]` per channel.
    pub factors: Vec<[f32; 3]>,
    /// RGB offset added after the channel sum.
    pub bias: [f32; 3],
}

impl LatentRgbMap {
    /// The widely used SD 1.x approximation (for scaled latents, i.e. as the UNet sees them).
    pub fn sd1x() -> LatentRgbMap {
        LatentRgbMap {
            factors: vec![
                [0.298, 0.207, 0.208],
                [0.187, 0.286, 0.173],
                [-0.158, 0.189, 0.264],
                [-0.184, -0.271, -0.473],
            ],
            bias: [0.0; 3],
        }
    }
}

/// Cheap preview of a `[1, 4, h, w]` (or `[4, h, w]`) latent with the SD 1.x map, upscaled
/// nearest-neighbour by `scale` (use the VAE factor to match the output size).
pub fn latent_preview(latent: &Tensor, scale: u32) -> candle_core::Result<RgbImage> {
    latent_preview_with(latent, &LatentRgbMap::sd1x(), scale)
}

/// `latent_preview` with a given channel → RGB map (other latent layouts).
pub fn latent_preview_with(
    latent: &Tensor,
    map: &LatentRgbMap,
    scale: u32,
) -> candle_core::Result<RgbImage> {
    let chw = match latent.dims() {
        [1, _, _, _] => latent.squeeze(0)?,
        [_, _, _] => latent.clone(),
        dims => {
            candle_core::bail!("latent_preview: expected [1, C, h, w] or [C, h, w], got {dims:?}")
        }
    };
    let (channels, h, w) = chw.dims3()?;
    if channels != map.factors.len() {
        candle_core::bail!(
            "latent_preview: latent has {channels} channels, the RGB map expects {}",
            map.factors.len()
        );
    }
    let values = chw
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let scale = scale.max(1);
    let to_u8 = |v: f32| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8;
    Ok(RgbImage::from_fn(
        w as u32 * scale,
        h as u32 * scale,
        |x, y| {
            let i = (y / scale) as usize * w + (x / scale) as usize;
            let mut rgb = map.bias;
            for (c, factor) in map.factors.iter().enumerate() {
                let v = values[c * h * w + i];
                for k in 0..3 {
                    rgb[k] += v * factor[k];
                }
            }
            Rgb(rgb.map(to_u8))
        },
    ))
}
