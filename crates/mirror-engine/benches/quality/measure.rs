//! One edit through the session, and what is measured of it: the classifier's verdict, pixel
//! errors against the ideal edit (the target caption rendered at the source's place and
//! size), the reconstruction against the source, and the time.

use std::time::Instant;

use image::RgbImage;
use mirror_engine::imageio::{image_to_tensor, tensor_to_image};
use mirror_engine::methods::mask::{mask_image, mask_iou};
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::stages::{Posterior, decode, encode_image};
use mirror_engine::pipeline::{CancelToken, Event, Phase};
use mirror_engine::session::{Session, TranslateRequest};
use mirror_engine::shapes::evaluate::{EditCase, EditVerdict, judge_edit};
use mirror_engine::shapes::render;

use super::variants::Variant;

/// A source, its ideal edit and the VAE round trip of the source (the reconstruction floor).
pub struct Source {
    pub case: EditCase,
    pub image: RgbImage,
    pub ideal: RgbImage,
    /// Pixels where the source and the ideal edit are equal: where the edit should change
    /// nothing.
    pub unchanged: Vec<bool>,
    pub vae_error: f64,
}

impl Source {
    pub fn new(sd: &StableDiffusion, case: EditCase, side: u32) -> Source {
        let image = render(&case.source, side);
        let ideal = render(&case.target, side);
        let unchanged = image
            .pixels()
            .zip(ideal.pixels())
            .map(|(a, b)| a == b)
            .collect();
        let tensor = image_to_tensor(&image, &sd.device).expect("source as a tensor");
        let latent = encode_image(sd, &tensor, Posterior::Mean).expect("VAE encode");
        let round_trip = tensor_to_image(&decode(sd, &latent).expect("VAE decode")).expect("image");
        let vae_error = mean_abs_error(&image, &round_trip, None);
        Source {
            case,
            image,
            ideal,
            unchanged,
            vae_error,
        }
    }
}

/// What one (method, source, edit) run gave.
pub struct Measured {
    pub variant: Variant,
    pub verdict: Option<EditVerdict>,
    /// Mean absolute pixel error (0–255) of the translation against the ideal edit.
    pub ideal_error: f64,
    /// The same over the pixels where the edit should change nothing.
    pub unchanged_error: f64,
    /// Mean absolute pixel error of the method's reconstruction against the source.
    pub reconstruction_error: f64,
    /// Intersection over union of the run's mask with the pixels the ideal edit changes,
    /// when the run used a mask.
    pub mask_iou: Option<f64>,
    /// Seconds of the run without the inversion (when this run inverted).
    pub seconds: f64,
    /// Seconds the inversion took, when this run computed it (`None`: it reused the cache).
    pub inversion_seconds: Option<f64>,
    pub translation: Option<RgbImage>,
    /// Why the run failed, when it did.
    pub error: Option<String>,
}

impl Measured {
    pub fn centroid_kept(&self) -> bool {
        self.verdict
            .as_ref()
            .and_then(|v| v.centroid_shift)
            .is_some_and(|d| d <= CENTROID_KEPT)
    }
}

/// The largest centroid shift (fraction of the width) that counts as kept.
pub const CENTROID_KEPT: f64 = 0.06;

/// Mean absolute difference (0–255) over all channels of the pixels `mask` selects (all
/// when `None`); NaN when it selects none.
pub fn mean_abs_error(a: &RgbImage, b: &RgbImage, mask: Option<&[bool]>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (i, (pa, pb)) in a.pixels().zip(b.pixels()).enumerate() {
        if mask.is_some_and(|m| !m[i]) {
            continue;
        }
        for k in 0..3 {
            sum += (f64::from(pa[k]) - f64::from(pb[k])).abs();
        }
        n += 3;
    }
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// Runs `variant` on `source` through `session` (whose cache holds the source's inversion
/// after the first run) and measures it. A failed run is reported, not fatal.
pub fn run(
    session: &mut Session,
    variant: Variant,
    template: &TranslateRequest,
    source: &Source,
) -> Measured {
    let mut req = template.clone();
    req.image = source.image.clone();
    req.source_prompt = source.case.source_prompt();
    req.target_prompt = source.case.target_prompt();
    // When each phase began: the inversion's time is from its start to the next phase.
    let mut phases: Vec<(Phase, Instant)> = Vec::new();
    let outcome = session.translate(&req, &CancelToken::new(), &mut |e| {
        if let Event::Phase { phase, .. } = e {
            phases.push((phase, Instant::now()));
        }
    });
    let inversion_seconds = phases
        .iter()
        .position(|(p, _)| *p == Phase::Invert)
        .map(|i| match phases.get(i + 1) {
            Some((_, end)) => end.duration_since(phases[i].1).as_secs_f64(),
            None => 0.0,
        });
    let failed = |error: String| Measured {
        variant,
        verdict: None,
        ideal_error: f64::NAN,
        unchanged_error: f64::NAN,
        reconstruction_error: f64::NAN,
        mask_iou: None,
        seconds: f64::NAN,
        inversion_seconds,
        translation: None,
        error: Some(error),
    };
    let out = match outcome {
        Ok(out) if out.cancelled => return failed("cancelled".into()),
        Ok(out) => out,
        Err(e) => return failed(e.to_string()),
    };
    let image = |t: &Option<candle_core::Tensor>| {
        t.as_ref()
            .map(|t| tensor_to_image(t).expect("decoded image"))
    };
    let (Some(translation), Some(reconstruction)) = (
        image(&out.images.translation),
        image(&out.images.reconstruction),
    ) else {
        return failed("a branch was not decoded".into());
    };
    Measured {
        variant,
        verdict: Some(judge_edit(&source.case, &source.image, &translation)),
        ideal_error: mean_abs_error(&translation, &source.ideal, None),
        unchanged_error: mean_abs_error(&translation, &source.ideal, Some(&source.unchanged)),
        reconstruction_error: mean_abs_error(&reconstruction, &source.image, None),
        mask_iou: out.mask.as_ref().map(|m| {
            let (w, h) = source.image.dimensions();
            let found = mask_image(m, w, h).expect("the mask as an image");
            let changed = image::GrayImage::from_fn(w, h, |x, y| {
                let i = (y * w + x) as usize;
                image::Luma([if source.unchanged[i] { 0 } else { 255 }])
            });
            mask_iou(&found, &changed)
        }),
        seconds: out.seconds - inversion_seconds.unwrap_or(0.0),
        inversion_seconds,
        translation: Some(translation),
        error: None,
    }
}
