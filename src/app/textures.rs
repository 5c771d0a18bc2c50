//! Images on the GPU: a cache of egui textures by key, so each preview is uploaded once.

use std::collections::HashMap;

use egui::{ColorImage, TextureHandle, TextureOptions};
use image::RgbImage;

pub fn color_image(img: &RgbImage) -> ColorImage {
    ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw())
}

#[derive(Default)]
pub struct Textures {
    map: HashMap<String, TextureHandle>,
    /// Textures that change in place (the mask overlay), with the version they show.
    versions: HashMap<String, u64>,
}

impl Textures {
    /// The texture for `key`, uploading `make()` the first time.
    pub fn get(
        &mut self,
        ctx: &egui::Context,
        key: &str,
        make: impl FnOnce() -> Option<ColorImage>,
    ) -> Option<TextureHandle> {
        if let Some(t) = self.map.get(key) {
            return Some(t.clone());
        }
        let image = make()?;
        let t = ctx.load_texture(key, image, TextureOptions::LINEAR);
        self.map.insert(key.to_string(), t.clone());
        Some(t)
    }

    pub fn rgb(
        &mut self,
        ctx: &egui::Context,
        key: &str,
        img: Option<&RgbImage>,
    ) -> Option<TextureHandle> {
        self.get(ctx, key, || img.map(color_image))
    }

    /// The texture for `key` showing `version`: uploaded again (in place) when the version
    /// changed since the last call.
    pub fn versioned(
        &mut self,
        ctx: &egui::Context,
        key: &str,
        version: u64,
        make: impl FnOnce() -> ColorImage,
    ) -> TextureHandle {
        match self.map.get_mut(key) {
            Some(t) if self.versions.get(key) == Some(&version) => t.clone(),
            Some(t) => {
                t.set(make(), TextureOptions::LINEAR);
                self.versions.insert(key.to_string(), version);
                t.clone()
            }
            None => {
                let t = ctx.load_texture(key, make(), TextureOptions::LINEAR);
                self.map.insert(key.to_string(), t.clone());
                self.versions.insert(key.to_string(), version);
                t
            }
        }
    }

    /// Drops the textures whose key starts with `prefix`.
    pub fn forget(&mut self, prefix: &str) {
        self.map.retain(|k, _| !k.starts_with(prefix));
        self.versions.retain(|k, _| !k.starts_with(prefix));
    }
}

/// A mask (white = may change) as a tint: `colour` where it may change, clear elsewhere.
pub fn mask_tint(mask: &image::GrayImage, colour: [u8; 3], opacity: f32) -> ColorImage {
    let size = [mask.width() as usize, mask.height() as usize];
    let pixels = mask
        .as_raw()
        .iter()
        .map(|&v| {
            let a = (v as f32 * opacity).round() as u8;
            egui::Color32::from_rgba_unmultiplied(colour[0], colour[1], colour[2], a)
        })
        .collect();
    ColorImage::new(size, pixels)
}

/// A grey image (a mask) as a colour image.
pub fn gray_image(img: &image::GrayImage) -> ColorImage {
    ColorImage::from_gray([img.width() as usize, img.height() as usize], img.as_raw())
}

/// Where two pictures of the same size differ: the per-pixel colour distance, times
/// `amplify`, as "inferno" heat (black: unchanged).
pub fn difference(before: &RgbImage, after: &RgbImage, amplify: f32) -> RgbImage {
    let (w, h) = after.dimensions();
    let before = if before.dimensions() == (w, h) {
        before.clone()
    } else {
        image::imageops::resize(before, w, h, image::imageops::FilterType::Triangle)
    };
    RgbImage::from_fn(w, h, |x, y| {
        let (p, q) = (before.get_pixel(x, y).0, after.get_pixel(x, y).0);
        let d: f32 = (0..3)
            .map(|c| (p[c] as f32 - q[c] as f32).abs())
            .sum::<f32>()
            / (3.0 * 255.0);
        image::Rgb(inferno(d * amplify))
    })
}

/// A heat map (any range) as colours over `base`, blended with `opacity`.
pub fn overlay(base: &RgbImage, heat: &[f32], opacity: f32) -> RgbImage {
    let max = heat.iter().cloned().fold(f32::MIN, f32::max);
    let min = heat.iter().cloned().fold(f32::MAX, f32::min);
    let span = (max - min).max(1e-12);
    let mut out = base.clone();
    for (i, px) in out.pixels_mut().enumerate() {
        let v = heat.get(i).map_or(0.0, |h| (h - min) / span);
        let c = inferno(v);
        for (channel, heat) in px.0.iter_mut().zip(c) {
            *channel = (*channel as f32 * (1.0 - opacity) + heat as f32 * opacity).round() as u8;
        }
    }
    out
}

/// A compact approximation of the "inferno" colour map (dark purple → orange → pale yellow).
pub fn inferno(v: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [0.0, 0.0, 4.0],
        [87.0, 16.0, 110.0],
        [188.0, 55.0, 84.0],
        [249.0, 142.0, 9.0],
        [252.0, 255.0, 164.0],
    ];
    let x = v.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let t = x - i as f32;
    let mut c = [0u8; 3];
    for k in 0..3 {
        c[k] = (STOPS[i][k] * (1.0 - t) + STOPS[i + 1][k] * t).round() as u8;
    }
    c
}
