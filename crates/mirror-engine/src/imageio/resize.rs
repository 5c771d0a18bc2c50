//! Bringing an image to the size the model runs at: its own shape at the model's native area
//! (the default), centre-crop, stretch, or letterbox; and the results back to the source's size.
//! A shape beyond 1:4 is letterboxed to 1:4 (as SD tools bucket their sizes): the native area
//! at any aspect ratio keeps every run as cheap as a square one.

use std::fmt;
use std::str::FromStr;

use image::imageops::{self, FilterType};
use image::{GrayImage, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

/// The letterbox colour for `ResizePolicy::Pad`: mid-grey, i.e. ~0 in the model's [-1, 1] range.
pub const PAD_GREY: Rgb<u8> = Rgb([128, 128, 128]);

/// The most elongated shape "keep the shape" processes, long side : short side. SD models are
/// trained on buckets up to about this (SDXL's go to 1:4); a photo beyond it is fitted into
/// a 1:4 frame with grey borders rather than cropped, so nothing of it is lost.
pub const MAX_ASPECT: f64 = 4.0;

/// Whether an image of `original` (w, h) is more elongated than [`MAX_ASPECT`].
pub fn beyond_aspect_limit(original: (u32, u32)) -> bool {
    let (w, h) = (f64::from(original.0.max(1)), f64::from(original.1.max(1)));
    w.max(h) / w.min(h) > MAX_ASPECT
}

/// How an image whose aspect ratio differs from the target is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizePolicy {
    /// Keep the aspect ratio: the model's native area at the source's shape, each side rounded
    /// to the model's size multiple; results come back at the source's size.
    #[default]
    Keep,
    /// Centre-crop to the target aspect ratio, then resize (Lanczos3).
    Crop,
    /// Resize directly, distorting the aspect ratio.
    Stretch,
    /// Resize to fit inside the target, then fill the borders with mid-grey.
    Pad,
}

impl ResizePolicy {
    /// Every policy, in the order the settings list them.
    pub const ALL: [ResizePolicy; 4] = [
        ResizePolicy::Keep,
        ResizePolicy::Crop,
        ResizePolicy::Stretch,
        ResizePolicy::Pad,
    ];

    /// The policy's name on the command line and in recipes (`keep`, `crop`, `stretch`, `pad`).
    pub fn name(self) -> &'static str {
        match self {
            ResizePolicy::Keep => "keep",
            ResizePolicy::Crop => "crop",
            ResizePolicy::Stretch => "stretch",
            ResizePolicy::Pad => "pad",
        }
    }

    /// What the policy does, in a user's words (menus, tooltips).
    pub fn describe(self) -> &'static str {
        match self {
            ResizePolicy::Keep => "keep the shape (recommended): the result has the photo's size",
            ResizePolicy::Crop => "crop to the model's square (centre)",
            ResizePolicy::Stretch => "stretch to the model's square (distorts)",
            ResizePolicy::Pad => "fit inside the model's square, grey borders",
        }
    }

    /// The size results are delivered at: the source's own for `Keep`, else the processing size
    /// (also for `Keep` beyond [`MAX_ASPECT`]: the result is the letterboxed frame).
    pub fn output_size(self, original: (u32, u32), processing: (u32, u32)) -> (u32, u32) {
        match self {
            ResizePolicy::Keep if !beyond_aspect_limit(original) => original,
            _ => processing,
        }
    }
}

impl fmt::Display for ResizePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ResizePolicy {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase();
        ResizePolicy::ALL
            .into_iter()
            .find(|p| p.name() == wanted)
            .ok_or_else(|| {
                EngineError::InvalidInput(format!(
                    "unknown resize policy `{s}` (expected keep, crop, stretch or pad)"
                ))
            })
    }
}

/// The size an image will be processed at: `target` (w, h) if given (each side must be a
/// positive multiple of `factor`), else the model's default square `default_side`.
pub fn plan_size(
    original: (u32, u32),
    target: Option<(u32, u32)>,
    default_side: u32,
    factor: u32,
) -> Result<(u32, u32)> {
    if factor == 0 {
        return Err(EngineError::InvalidInput(
            "size factor must be positive".into(),
        ));
    }
    if original.0 == 0 || original.1 == 0 {
        return Err(EngineError::InvalidInput(format!(
            "image has no pixels ({}×{})",
            original.0, original.1
        )));
    }
    let (width, height) = target.unwrap_or((default_side, default_side));
    let fits = |side: u32| side > 0 && side.is_multiple_of(factor);
    if !fits(width) || !fits(height) {
        let what = if target.is_some() {
            "requested size"
        } else {
            "model default size"
        };
        return Err(EngineError::InvalidInput(format!(
            "{what} {width}×{height}: width and height must be positive multiples of {factor} \
             (the model's latent downsampling factor); nearest: {}×{}",
            round_to_multiple(width, factor),
            round_to_multiple(height, factor)
        )));
    }
    Ok((width, height))
}

/// The size an image is processed at under `policy`. An explicit `target` wins (checked by
/// [`plan_size`]); otherwise `Keep` gives the model's native area (`default_side`²) at the
/// source's aspect ratio (at most [`MAX_ASPECT`]), each side rounded to a multiple of
/// `factor`, and the other policies the model's square. So without an explicit size no image,
/// however elongated, is processed at more than about the native area.
pub fn processing_size(
    original: (u32, u32),
    target: Option<(u32, u32)>,
    policy: ResizePolicy,
    default_side: u32,
    factor: u32,
) -> Result<(u32, u32)> {
    if target.is_some() || policy != ResizePolicy::Keep {
        return plan_size(original, target, default_side, factor);
    }
    // Validates the factor, the source and the model's default side.
    plan_size(original, None, default_side, factor)?;
    let area = f64::from(default_side) * f64::from(default_side);
    let aspect =
        (f64::from(original.0) / f64::from(original.1)).clamp(1.0 / MAX_ASPECT, MAX_ASPECT);
    let width = (area * aspect).sqrt();
    let height = (area / aspect).sqrt();
    let round = |side: f64| ((side / f64::from(factor)).round().max(1.0) as u32) * factor;
    Ok((round(width), round(height)))
}

fn round_to_multiple(side: u32, factor: u32) -> u32 {
    (((side as f64) / factor as f64).round() as u32).max(1) * factor
}

/// Human-readable description of what `resize` will do, e.g.
/// "1024×768 → crop 768×768 centre → 512×512".
pub fn describe_resize(original: (u32, u32), target: (u32, u32), policy: ResizePolicy) -> String {
    let (w, h) = original;
    let (tw, th) = target;
    if original == target {
        return format!("{w}×{h} (no resize)");
    }
    match policy {
        ResizePolicy::Keep if beyond_aspect_limit(original) => {
            let (fw, fh) = fit_size(original, target);
            format!(
                "{w}×{h} is longer than 1:{MAX_ASPECT}: fit {fw}×{fh}, pad grey → {tw}×{th} \
                 (a 1:{MAX_ASPECT} frame) → result {tw}×{th}"
            )
        }
        ResizePolicy::Keep => format!("{w}×{h} → {tw}×{th} (shape kept) → result {w}×{h}"),
        ResizePolicy::Stretch => format!("{w}×{h} → stretch → {tw}×{th}"),
        ResizePolicy::Crop => {
            let (cw, ch) = crop_size(original, target);
            if (cw, ch) == original {
                format!("{w}×{h} → resize → {tw}×{th}")
            } else if (cw, ch) == target {
                format!("{w}×{h} → crop {cw}×{ch} centre")
            } else {
                format!("{w}×{h} → crop {cw}×{ch} centre → {tw}×{th}")
            }
        }
        ResizePolicy::Pad => {
            let (fw, fh) = fit_size(original, target);
            if (fw, fh) == target {
                format!("{w}×{h} → resize → {tw}×{th}")
            } else {
                format!("{w}×{h} → fit {fw}×{fh}, pad grey → {tw}×{th}")
            }
        }
    }
}

/// Resizes `img` to exactly `target` (w, h) following `policy`.
pub fn resize(img: &RgbImage, target: (u32, u32), policy: ResizePolicy) -> RgbImage {
    let (tw, th) = (target.0.max(1), target.1.max(1));
    if img.dimensions() == (tw, th) || img.width() == 0 || img.height() == 0 {
        return if img.width() == 0 || img.height() == 0 {
            RgbImage::from_pixel(tw, th, PAD_GREY)
        } else {
            img.clone()
        };
    }
    match policy {
        // Beyond the aspect limit the planned size is a 1:4 frame: letterboxed as `Pad`.
        ResizePolicy::Keep if beyond_aspect_limit(img.dimensions()) => {
            resize(img, (tw, th), ResizePolicy::Pad)
        }
        // The planned size has the source's shape up to rounding: a plain resize.
        ResizePolicy::Keep | ResizePolicy::Stretch => lanczos(img, (tw, th)),
        ResizePolicy::Crop => {
            let (cw, ch) = crop_size(img.dimensions(), (tw, th));
            let x = (img.width() - cw) / 2;
            let y = (img.height() - ch) / 2;
            let cropped = imageops::crop_imm(img, x, y, cw, ch).to_image();
            lanczos(&cropped, (tw, th))
        }
        ResizePolicy::Pad => {
            let (fw, fh) = fit_size(img.dimensions(), (tw, th));
            let fitted = lanczos(img, (fw, fh));
            let mut canvas = RgbImage::from_pixel(tw, th, PAD_GREY);
            let x = (tw - fw) / 2;
            let y = (th - fh) / 2;
            imageops::replace(&mut canvas, &fitted, i64::from(x), i64::from(y));
            canvas
        }
    }
}

/// An edit mask made on the photo (at the photo's own size; another size is first stretched to
/// it) brought to the processing size the way [`resize`] brings the photo, so that it covers
/// the same pixels. A mask already at `target` is taken as it is. Padding may not change.
pub fn resize_mask(
    mask: &GrayImage,
    photo: (u32, u32),
    target: (u32, u32),
    policy: ResizePolicy,
) -> GrayImage {
    let (tw, th) = (target.0.max(1), target.1.max(1));
    if mask.dimensions() == (tw, th) {
        return mask.clone();
    }
    let smooth = |img: &GrayImage, (w, h): (u32, u32)| {
        if img.dimensions() == (w, h) || img.width() == 0 || img.height() == 0 {
            img.clone()
        } else {
            imageops::resize(img, w.max(1), h.max(1), FilterType::Triangle)
        }
    };
    let on_photo = smooth(mask, photo);
    let policy = match policy {
        ResizePolicy::Keep if beyond_aspect_limit(photo) => ResizePolicy::Pad,
        p => p,
    };
    match policy {
        ResizePolicy::Keep | ResizePolicy::Stretch => smooth(&on_photo, (tw, th)),
        ResizePolicy::Crop => {
            let (cw, ch) = crop_size(photo, (tw, th));
            let (x, y) = ((photo.0 - cw) / 2, (photo.1 - ch) / 2);
            smooth(
                &imageops::crop_imm(&on_photo, x, y, cw, ch).to_image(),
                (tw, th),
            )
        }
        ResizePolicy::Pad => {
            let (fw, fh) = fit_size(photo, (tw, th));
            let mut canvas = GrayImage::new(tw, th);
            let fitted = smooth(&on_photo, (fw, fh));
            imageops::replace(
                &mut canvas,
                &fitted,
                i64::from((tw - fw) / 2),
                i64::from((th - fh) / 2),
            );
            canvas
        }
    }
}

/// Brings a result made at the processing size back to the size `policy` delivers it at
/// (the source's own for `Keep`).
pub fn restore_size(img: &RgbImage, original: (u32, u32), policy: ResizePolicy) -> RgbImage {
    lanczos(img, policy.output_size(original, img.dimensions()))
}

fn lanczos(img: &RgbImage, (w, h): (u32, u32)) -> RgbImage {
    if img.dimensions() == (w, h) {
        img.clone()
    } else {
        imageops::resize(img, w, h, FilterType::Lanczos3)
    }
}

/// A mask at processing size (the engine's, shown on the processed picture) brought back onto
/// a photo of `photo` size: the inverse of [`resize_mask`]. What cropping left out may not
/// change; padding is dropped.
pub fn mask_on_photo(mask: &GrayImage, photo: (u32, u32), policy: ResizePolicy) -> GrayImage {
    let (pw, ph) = (photo.0.max(1), photo.1.max(1));
    let processed = (mask.width().max(1), mask.height().max(1));
    let stretch = |img: &GrayImage, (w, h): (u32, u32)| {
        if img.width() == 0 || img.height() == 0 {
            GrayImage::new(w, h)
        } else if img.dimensions() == (w, h) {
            img.clone()
        } else {
            imageops::resize(img, w, h, FilterType::Triangle)
        }
    };
    let policy = match policy {
        ResizePolicy::Keep if beyond_aspect_limit((pw, ph)) => ResizePolicy::Pad,
        p => p,
    };
    match policy {
        ResizePolicy::Keep | ResizePolicy::Stretch => stretch(mask, (pw, ph)),
        ResizePolicy::Crop => {
            // The part of the photo the processed picture shows.
            let (cw, ch) = crop_size((pw, ph), processed);
            let mut out = GrayImage::new(pw, ph);
            let inside = stretch(mask, (cw, ch));
            imageops::replace(
                &mut out,
                &inside,
                i64::from((pw - cw) / 2),
                i64::from((ph - ch) / 2),
            );
            out
        }
        ResizePolicy::Pad => {
            // Where the photo sits inside the processed picture.
            let (fw, fh) = fit_size((pw, ph), processed);
            let (x, y) = ((processed.0 - fw) / 2, (processed.1 - fh) / 2);
            let inside = imageops::crop_imm(mask, x, y, fw, fh).to_image();
            stretch(&inside, (pw, ph))
        }
    }
}

/// The largest centred region of `original` with the aspect ratio of `target`.
fn crop_size(original: (u32, u32), target: (u32, u32)) -> (u32, u32) {
    let (w, h) = (original.0 as u64, original.1 as u64);
    let (tw, th) = (target.0.max(1) as u64, target.1.max(1) as u64);
    if w * th > h * tw {
        // Wider than the target: keep the full height.
        let cw = ((h * tw) as f64 / th as f64).round() as u64;
        (cw.clamp(1, w) as u32, h as u32)
    } else {
        let ch = ((w * th) as f64 / tw as f64).round() as u64;
        (w as u32, ch.clamp(1, h) as u32)
    }
}

/// The largest size with the aspect ratio of `original` that fits inside `target`.
fn fit_size(original: (u32, u32), target: (u32, u32)) -> (u32, u32) {
    let (w, h) = (original.0.max(1) as u64, original.1.max(1) as u64);
    let (tw, th) = (target.0.max(1) as u64, target.1.max(1) as u64);
    if w * th > h * tw {
        let fh = ((h * tw) as f64 / w as f64).round() as u64;
        (tw as u32, fh.clamp(1, th) as u32)
    } else {
        let fw = ((w * th) as f64 / h as f64).round() as u64;
        (fw.clamp(1, tw) as u32, th as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_comes_back_onto_the_photo_through_each_policy() {
        let photo = (120, 60);
        let painted =
            GrayImage::from_fn(120, 60, |x, _| image::Luma([if x < 60 { 255 } else { 0 }]));
        for policy in ResizePolicy::ALL {
            let processed = resize_mask(&painted, photo, (64, 64), policy);
            let back = mask_on_photo(&processed, photo, policy);
            assert_eq!(back.dimensions(), photo);
            assert!(back.get_pixel(40, 30)[0] > 200, "{policy:?}");
            assert!(back.get_pixel(100, 30)[0] < 50, "{policy:?}");
        }
    }

    #[test]
    fn crop_and_fit_sizes() {
        assert_eq!(crop_size((1024, 768), (512, 512)), (768, 768));
        assert_eq!(crop_size((768, 1024), (96, 64)), (768, 512));
        assert_eq!(fit_size((1024, 768), (512, 512)), (512, 384));
        assert_eq!(fit_size((100, 400), (64, 64)), (16, 64));
    }

    #[test]
    fn descriptions() {
        assert_eq!(
            describe_resize((1024, 768), (512, 512), ResizePolicy::Crop),
            "1024×768 → crop 768×768 centre → 512×512"
        );
        assert_eq!(
            describe_resize((1024, 768), (512, 512), ResizePolicy::Pad),
            "1024×768 → fit 512×384, pad grey → 512×512"
        );
        assert_eq!(
            describe_resize((64, 64), (64, 64), ResizePolicy::Pad),
            "64×64 (no resize)"
        );
    }

    #[test]
    fn keep_uses_the_native_area_at_the_source_shape() {
        // 3:2 at SD's 512² area, multiples of 8.
        assert_eq!(
            processing_size((3000, 2000), None, ResizePolicy::Keep, 512, 8).unwrap(),
            (624, 416)
        );
        assert_eq!(
            processing_size((2000, 3000), None, ResizePolicy::Keep, 512, 8).unwrap(),
            (416, 624)
        );
        assert_eq!(
            processing_size((96, 64), None, ResizePolicy::Keep, 64, 4).unwrap(),
            (80, 52)
        );
        // Squares and the other policies: the model's square; an explicit size wins.
        assert_eq!(
            processing_size((700, 700), None, ResizePolicy::Keep, 512, 8).unwrap(),
            (512, 512)
        );
        assert_eq!(
            processing_size((3000, 2000), None, ResizePolicy::Crop, 512, 8).unwrap(),
            (512, 512)
        );
        assert_eq!(
            processing_size((3000, 2000), Some((96, 64)), ResizePolicy::Keep, 512, 8).unwrap(),
            (96, 64)
        );
        // Shapes beyond 1:4 are processed at 1:4 (the native area).
        assert_eq!(
            processing_size((10000, 10), None, ResizePolicy::Keep, 64, 8).unwrap(),
            (128, 32)
        );
        assert_eq!(
            processing_size((4000, 1000), None, ResizePolicy::Keep, 64, 8).unwrap(),
            (128, 32)
        );
        assert_eq!(ResizePolicy::default(), ResizePolicy::Keep);
        assert_eq!(ResizePolicy::Keep.output_size((96, 64), (80, 52)), (96, 64));
        assert_eq!(ResizePolicy::Crop.output_size((96, 64), (64, 64)), (64, 64));
    }

    /// A 1×20000 strip (once processed as 32×9056, a run that stalled for minutes) is
    /// letterboxed into a 1:4 frame of the native area, at once, and says so.
    #[test]
    fn extreme_shapes_are_letterboxed_to_one_to_four_quickly() {
        let started = std::time::Instant::now();
        for original in [(1, 20_000), (20_000, 1), (3, 17_001)] {
            let img = RgbImage::from_pixel(original.0, original.1, Rgb([200, 10, 10]));
            let size = processing_size(original, None, ResizePolicy::Keep, 64, 8).unwrap();
            let (long, short) = (size.0.max(size.1), size.0.min(size.1));
            assert_eq!((long, short), (128, 32), "{original:?} → {size:?}");
            assert!(size.0 * size.1 <= 64 * 64, "no more than the native area");
            let out = resize(&img, size, ResizePolicy::Keep);
            assert_eq!(out.dimensions(), size);
            // The strip in the middle, grey borders around it.
            assert_eq!(*out.get_pixel(0, 0), PAD_GREY);
            assert_eq!(ResizePolicy::Keep.output_size(original, size), size);
            assert_eq!(
                restore_size(&out, original, ResizePolicy::Keep).dimensions(),
                size
            );
            let message = describe_resize(original, size, ResizePolicy::Keep);
            assert!(
                message.contains("longer than 1:4") && message.contains("pad grey"),
                "{message}"
            );
        }
        assert!(
            started.elapsed().as_secs_f64() < 5.0,
            "{:?}",
            started.elapsed()
        );
        // At the limit the shape is still kept.
        assert!(!beyond_aspect_limit((4000, 1000)));
        assert_eq!(
            ResizePolicy::Keep.output_size((4000, 1000), (128, 32)),
            (4000, 1000)
        );
    }

    #[test]
    fn policy_parses_and_prints() {
        for p in ResizePolicy::ALL {
            assert_eq!(p.to_string().parse::<ResizePolicy>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert_eq!(" PAD ".parse::<ResizePolicy>().unwrap(), ResizePolicy::Pad);
        assert!("zoom".parse::<ResizePolicy>().is_err());
    }
}
