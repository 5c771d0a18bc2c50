//! Edit masks: where a translation may change the picture, and the local blend that confines
//! every step to it (prompt-to-prompt's `LocalBlend`: outside the mask the translation latent
//! becomes the reconstruction's, which mirrors the photo).
//!
//! A mask is given (painted or a file: white = may change, any size, soft edges kept) or found
//! from the edit itself with DiffEdit (Couairon et al., 2022, <https://arxiv.org/abs/2210.11427>):
//! the photo's latent is noised to half strength a few times, the UNet predicts the noise under
//! the source and the target description, and where the two predictions differ is where the
//! edit acts. Ported from diffusers' `StableDiffusionDiffEditPipeline.generate_mask`
//! (<https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/pipelines/stable_diffusion_diffedit/pipeline_stable_diffusion_diffedit.py>, pinned).

use candle_core::{D, DType, Device, Tensor};
use image::GrayImage;
use serde::{Deserialize, Serialize};

use super::attention_mask::AttentionMaskSettings;
use super::mask_upsample::{EdgeAwareSettings, upsample_along_edges};
use crate::pipeline::StageContext;
use crate::vae::gaussian::standard_normal;
use crate::{EngineError, Result};

/// Where an edit may change the picture.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum EditMask {
    /// Everywhere (no mask).
    #[default]
    Whole,
    /// Found from the edit.
    Found(MaskFinder),
    /// Given by the user at any size; white = may change, grey = partly.
    Given(GrayImage),
}

/// How an edit mask is found and applied; recipes store it with the mask.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskSettings {
    /// How the mask is found from the words' attention.
    pub attention: AttentionMaskSettings,
    /// The share of the steps (from the first) on which the translation latent outside the
    /// mask is put back on the reconstruction's (prompt-to-prompt's local blend; the layout
    /// forms in the first steps). The decoded translation shows the photo outside the mask
    /// whatever this is.
    pub latent_blend_until: f64,
}

impl Default for MaskSettings {
    fn default() -> Self {
        Self {
            attention: AttentionMaskSettings::default(),
            latent_blend_until: 1.0,
        }
    }
}

impl MaskSettings {
    /// Whether step i of n blends the translation latent back outside the mask.
    pub fn blends_latents_at(&self, i: usize, n: usize) -> bool {
        (i as f64) < self.latent_blend_until * n as f64
    }
}

/// How a mask is found from the edit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskFinder {
    /// Where the words the edit changes attend ([`super::attention_mask`]).
    #[default]
    Attention,
    /// Where the noise predictions under the two descriptions differ (DiffEdit).
    DiffEdit,
}

impl std::str::FromStr for MaskFinder {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "attention" => Ok(MaskFinder::Attention),
            "diffedit" => Ok(MaskFinder::DiffEdit),
            other => Err(format!(
                "unknown mask finder `{other}` (expected attention or diffedit)"
            )),
        }
    }
}

impl EditMask {
    /// Whether the mask confines anything.
    pub fn is_whole(&self) -> bool {
        matches!(self, EditMask::Whole)
    }
}

/// DiffEdit's mask estimation (diffusers' defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffEditSettings {
    /// Noise draws averaged per mask (`num_maps_per_mask`).
    pub draws: usize,
    /// How far the photo is noised, 0–1 of the training schedule (`mask_encode_strength`).
    pub strength: f64,
    /// The difference map is clipped at this multiple of its mean before halving
    /// (`mask_thresholding_ratio`).
    pub threshold_ratio: f64,
}

impl Default for DiffEditSettings {
    fn default() -> Self {
        Self {
            draws: 10,
            strength: 0.5,
            threshold_ratio: 3.0,
        }
    }
}

/// A user's mask on the latent grid `[1, 1, h, w]` in 0–1: each latent cell is the mean of the
/// mask pixels it covers (the mask is first stretched to `image_size`, the photo's processing
/// size, so a mask of any size lines up with the photo as resized).
pub fn latent_mask(
    mask: &GrayImage,
    image_size: (u32, u32),
    latent_hw: (usize, usize),
    device: &Device,
) -> Result<Tensor> {
    let (w, h) = image_size;
    if mask.width() == 0 || mask.height() == 0 {
        return Err(EngineError::InvalidInput("the edit mask is empty".into()));
    }
    let resized = image::imageops::resize(mask, w, h, image::imageops::FilterType::Triangle);
    let (lh, lw) = latent_hw;
    let (cell_h, cell_w) = (h as usize / lh, w as usize / lw);
    if cell_h == 0 || cell_w == 0 {
        return Err(EngineError::InvalidInput(format!(
            "the image ({w}×{h}) is smaller than the latent grid ({lw}×{lh})"
        )));
    }
    let mut cells = vec![0f32; lh * lw];
    for (y, row) in cells.chunks_mut(lw).enumerate() {
        for (x, cell) in row.iter_mut().enumerate() {
            let mut sum = 0u32;
            for py in y * cell_h..(y + 1) * cell_h {
                for px in x * cell_w..(x + 1) * cell_w {
                    sum += u32::from(resized.get_pixel(px as u32, py as u32)[0]);
                }
            }
            *cell = sum as f32 / (255.0 * (cell_h * cell_w) as f32);
        }
    }
    Ok(Tensor::from_vec(cells, (1, 1, lh, lw), device)?)
}

/// DiffEdit's mask of the edit from `source` to `target` (text embeddings `[1, L, D]`) on the
/// photo's clean latent `z0` `[1, C, h, w]`: `[1, 1, h, w]` of 0 and 1. Seeded: the same seed
/// gives the same mask.
pub fn diffedit_mask(
    ctx: &StageContext,
    z0: &Tensor,
    source: &Tensor,
    target: &Tensor,
    settings: &DiffEditSettings,
    seed: u64,
) -> Result<Tensor> {
    let sd = ctx.sd;
    let alphas = sd.scheduler.alphas_cumprod_f64();
    let train = alphas.len();
    let t = ((settings.strength.clamp(0.0, 1.0) * train as f64) as usize).min(train - 1);
    let (a, s) = (alphas[t].sqrt(), (1.0 - alphas[t]).sqrt());
    let unet = sd.forward_unet();
    let z0 = z0.to_dtype(DType::F32)?;
    let contexts = Tensor::cat(&[source, target], 0)?;
    let mut sum = z0.zeros_like()?.sum_keepdim(1)?;
    for k in 0..settings.draws.max(1) {
        ctx.cancel.check()?;
        let noise = standard_normal(seed.wrapping_add(k as u64), z0.elem_count());
        let noise = Tensor::from_vec(noise, z0.shape(), z0.device())?;
        let zt = ((&z0 * a)? + (noise * s)?)?;
        let pred = unet.forward(&Tensor::cat(&[&zt, &zt], 0)?, t as f64, &contexts)?;
        ctx.unet_call_done();
        let pred = pred.to_dtype(DType::F32)?;
        let difference = (pred.narrow(0, 1, 1)? - pred.narrow(0, 0, 1)?)?.abs()?;
        sum = (sum + difference.mean_keepdim(1)?)?;
    }
    let map = (sum / settings.draws.max(1) as f64)?;
    let clamp = map.mean_all()?.to_scalar::<f32>()? as f64 * settings.threshold_ratio;
    if clamp <= 0.0 || !clamp.is_finite() {
        // Both descriptions predict the same noise: nothing to confine the edit to.
        return Ok(map.ones_like()?);
    }
    let scaled = (map.clamp(0.0, clamp)? / clamp)?;
    Ok(scaled.gt(0.5)?.to_dtype(DType::F32)?)
}

/// The local blend: `mask · edit + (1 − mask) · rec`, the mask `[1, 1, h, w]` broadcast over
/// the channels.
pub fn local_blend(edit: &Tensor, rec: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(edit.dtype())?;
    let difference = (edit - rec)?;
    Ok((rec + difference.broadcast_mul(&mask)?)?)
}

/// The mask at the photo's processing size `[1, 1, height, width]` in 0–1, for putting the
/// decoded translation over the photo: a given mask resized with its soft edges, a found one
/// (`latent`, on the latent grid) brought to the pixels along the photo's own edges.
pub fn pixel_mask(mask: &EditMask, latent: &Tensor, photo: &image::RgbImage) -> Result<Tensor> {
    let device = latent.device();
    let (width, height) = photo.dimensions();
    let values: Vec<f32> = match mask {
        EditMask::Given(image) => {
            let resized = image::imageops::resize(
                image,
                width,
                height,
                image::imageops::FilterType::Triangle,
            );
            resized.pixels().map(|p| f32::from(p[0]) / 255.0).collect()
        }
        _ => {
            let (h, w) = (latent.dim(D::Minus2)?, latent.dim(D::Minus1)?);
            let cells = latent
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let settings = EdgeAwareSettings::default();
            upsample_along_edges(&cells, (h, w), photo, &settings)
        }
    };
    Ok(Tensor::from_vec(
        values,
        (1, 1, height as usize, width as usize),
        device,
    )?)
}

/// A latent-grid mask `[1, 1, h, w]` as a grey image of `width`×`height` (each cell a block),
/// for showing it and for measuring it against pixels.
pub fn mask_image(mask: &Tensor, width: u32, height: u32) -> Result<GrayImage> {
    let (h, w) = (mask.dim(D::Minus2)?, mask.dim(D::Minus1)?);
    let cells = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(GrayImage::from_fn(width, height, |x, y| {
        let cx = (x as usize * w / width as usize).min(w - 1);
        let cy = (y as usize * h / height as usize).min(h - 1);
        image::Luma([(cells[cy * w + cx].clamp(0.0, 1.0) * 255.0).round() as u8])
    }))
}

/// Intersection over union of two masks thresholded at half (1 when both are empty).
pub fn mask_iou(a: &GrayImage, b: &GrayImage) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (p, q) in a.pixels().zip(b.pixels()) {
        let (x, y) = (p[0] >= 128, q[0] >= 128);
        inter += u64::from(x && y);
        union += u64::from(x || y);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_mask_is_averaged_onto_the_latent_grid() {
        // Left half white on a 64×32 mask, photo 32×16, latent 4×2: the left two cells are 1.
        let mask = GrayImage::from_fn(64, 32, |x, _| image::Luma([if x < 32 { 255 } else { 0 }]));
        let t = latent_mask(&mask, (32, 16), (2, 4), &Device::Cpu).unwrap();
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(t.dims(), [1, 1, 2, 4]);
        for (i, x) in v.iter().enumerate() {
            let want = if i % 4 < 2 { 1.0 } else { 0.0 };
            assert!((x - want).abs() < 0.02, "cell {i}: {x}");
        }
        let img = mask_image(&t, 32, 16).unwrap();
        assert_eq!(img.get_pixel(3, 3)[0], 255);
        assert_eq!(img.get_pixel(30, 3)[0], 0);
        assert!((mask_iou(&img, &img) - 1.0).abs() < 1e-12);
        let empty = GrayImage::new(32, 16);
        assert_eq!(mask_iou(&img, &empty), 0.0);
        assert!(latent_mask(&GrayImage::new(0, 0), (32, 16), (2, 4), &Device::Cpu).is_err());
    }

    #[test]
    fn the_blend_keeps_the_reconstruction_outside_the_mask() {
        let dev = Device::Cpu;
        let edit = Tensor::ones((1, 2, 1, 2), DType::F32, &dev).unwrap();
        let rec = Tensor::zeros((1, 2, 1, 2), DType::F32, &dev).unwrap();
        let mask = Tensor::new(&[[[[1f32, 0.25]]]], &dev).unwrap();
        let out: Vec<f32> = local_blend(&edit, &rec, &mask)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(out, [1.0, 0.25, 1.0, 0.25]);
    }
}
