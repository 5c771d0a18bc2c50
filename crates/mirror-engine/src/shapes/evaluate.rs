//! Judging edits of the shapes world by what the images show: edit cases (one word of the
//! caption changed) and the classifier's verdict on a translation. Shared by the demo
//! model's meaning tests and its quality benchmark.

use image::RgbImage;

use super::{Colour, Scene, Shape, classify};
use crate::rng::SplitMix64;

/// Which word of the caption an edit changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EditKind {
    /// The object's shape word changes (circle → star).
    Shape,
    /// The shape's colour.
    Colour,
    /// The background's colour word changes.
    Background,
}

impl EditKind {
    /// Every kind, in table order.
    pub const ALL: [EditKind; 3] = [EditKind::Shape, EditKind::Colour, EditKind::Background];

    /// The kind as tables name it.
    pub fn label(self) -> &'static str {
        match self {
            EditKind::Shape => "shape",
            EditKind::Colour => "shape colour",
            EditKind::Background => "background",
        }
    }
}

/// A source scene and the scene its edited caption describes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EditCase {
    /// What the edit changes.
    pub kind: EditKind,
    /// The rendered source scene.
    pub source: Scene,
    /// The scene the target caption describes (same place and size).
    pub target: Scene,
}

impl EditCase {
    /// The source scene's caption.
    pub fn source_prompt(&self) -> String {
        self.source.caption()
    }

    /// The target scene's caption.
    pub fn target_prompt(&self) -> String {
        self.target.caption()
    }
}

/// `count` edits of one kind from `seed`: the shapes cycle through all four, the colours
/// rotate through all eight, positions and sizes are random; the new word differs from the
/// old one and never makes the shape the background's colour.
pub fn edit_cases(kind: EditKind, count: usize, seed: u64) -> Vec<EditCase> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|i| {
            let shape = Shape::ALL[i % Shape::ALL.len()];
            let colour = Colour::ALL[(i * 3 + kind as usize) % Colour::ALL.len()];
            let background = other_colour(&[colour], &mut rng);
            let source = Scene::random_placement(shape, colour, background, &mut rng);
            let target = match kind {
                EditKind::Shape => Scene {
                    shape: Shape::ALL[(i + 1 + rng.below(3)) % Shape::ALL.len()],
                    ..source
                },
                EditKind::Colour => Scene {
                    colour: other_colour(&[colour, background], &mut rng),
                    ..source
                },
                EditKind::Background => Scene {
                    background: other_colour(&[colour, background], &mut rng),
                    ..source
                },
            };
            EditCase {
                kind,
                source,
                target,
            }
        })
        .collect()
}

fn other_colour(avoid: &[Colour], rng: &mut SplitMix64) -> Colour {
    let choices: Vec<Colour> = Colour::ALL
        .into_iter()
        .filter(|c| !avoid.contains(c))
        .collect();
    choices[rng.below(choices.len())]
}

/// What the classifier saw in a translation of `case`.
#[derive(Debug, Clone, PartialEq)]
pub struct EditVerdict {
    /// The edited attribute shows its new value.
    pub target_hit: bool,
    /// Both attributes the edit did not name kept their values.
    pub others_kept: bool,
    /// How far the object's centroid moved from the source's, as a fraction of the width
    /// (`None` when no object was found in the translation).
    pub centroid_shift: Option<f64>,
    /// What the classifier read, as a caption ("nothing" when it found no object).
    pub seen: String,
}

/// Classifies `translated` against what `case` asked for. The source's centroid is the
/// classifier's reading of the rendered source, so both sides are measured the same way.
pub fn judge_edit(case: &EditCase, source: &RgbImage, translated: &RgbImage) -> EditVerdict {
    let before = classify(source);
    let after = classify(translated);
    let Some(object) = &after.object else {
        return EditVerdict {
            target_hit: case.kind == EditKind::Background
                && after.background == case.target.background,
            others_kept: false,
            centroid_shift: None,
            seen: format!("nothing on a {} background", after.background.word()),
        };
    };
    let seen = Scene {
        shape: object.shape,
        colour: object.colour,
        background: after.background,
        ..case.target
    };
    let same = |kind: EditKind| match kind {
        EditKind::Shape => seen.shape == case.target.shape,
        EditKind::Colour => seen.colour == case.target.colour,
        EditKind::Background => seen.background == case.target.background,
    };
    let centroid_shift = before.object.as_ref().map(|o| {
        let (dx, dy) = (
            object.centroid.0 - o.centroid.0,
            object.centroid.1 - o.centroid.1,
        );
        (dx * dx + dy * dy).sqrt() / translated.width() as f64
    });
    EditVerdict {
        target_hit: same(case.kind),
        others_kept: EditKind::ALL
            .into_iter()
            .filter(|k| *k != case.kind)
            .all(same),
        centroid_shift,
        seen: seen.caption(),
    }
}

/// The share of a heat map's mass that lies inside `mask`, and the mask's share of the image
/// (a map that ignores the object puts about as much mass inside as the area share).
pub fn mass_inside(map: &[f32], mask: &[bool]) -> (f64, f64) {
    let total: f64 = map.iter().map(|&v| v.max(0.0) as f64).sum();
    let inside: f64 = map
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(&v, _)| v.max(0.0) as f64)
        .sum();
    let area = mask.iter().filter(|m| **m).count() as f64 / mask.len().max(1) as f64;
    (if total > 0.0 { inside / total } else { 0.0 }, area)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::render;

    #[test]
    fn edit_cases_change_exactly_one_word_and_cover_every_shape() {
        for kind in EditKind::ALL {
            let cases = edit_cases(kind, 8, 7);
            for s in Shape::ALL {
                assert!(
                    cases.iter().any(|c| c.source.shape == s),
                    "{kind:?} lacks {s:?}"
                );
            }
            for c in &cases {
                let differing = [
                    c.source.shape != c.target.shape,
                    c.source.colour != c.target.colour,
                    c.source.background != c.target.background,
                ];
                assert_eq!(differing.iter().filter(|d| **d).count(), 1, "{c:?}");
                assert_ne!(c.target.colour, c.target.background, "{c:?}");
                assert_eq!((c.source.cx, c.source.cy), (c.target.cx, c.target.cy));
            }
        }
    }

    #[test]
    fn a_rendered_target_is_judged_a_hit_and_the_source_a_miss() {
        for kind in EditKind::ALL {
            for case in edit_cases(kind, 8, 3) {
                let source = render(&case.source, 64);
                let target = render(&case.target, 64);
                let hit = judge_edit(&case, &source, &target);
                assert!(hit.target_hit && hit.others_kept, "{case:?}: {hit:?}");
                assert!(hit.centroid_shift.is_some_and(|d| d < 0.03), "{hit:?}");
                let miss = judge_edit(&case, &source, &source);
                assert!(!miss.target_hit, "{case:?}: {miss:?}");
            }
        }
    }

    #[test]
    fn mass_inside_compares_a_map_with_its_mask() {
        let mask = [true, false, false, false];
        assert_eq!(mass_inside(&[1.0, 0.0, 0.0, 0.0], &mask), (1.0, 0.25));
        assert_eq!(mass_inside(&[1.0, 1.0, 1.0, 1.0], &mask), (0.25, 0.25));
    }
}

/// One edit run through a session, as the meaning tests and the quality benchmark judge it.
#[derive(Debug, Clone)]
pub struct EditRun {
    /// The edit that ran.
    pub case: EditCase,
    /// What the classifier saw in the translation.
    pub verdict: EditVerdict,
    /// Mean squared pixel error of MirrorDiffusion's and plain DDIM's reconstructions against
    /// the source (the mirror effect: the first should be lower).
    pub mirror_reconstruction_error: f64,
    /// The same for plain DDIM's reconstruction.
    pub ddim_reconstruction_error: f64,
    /// The shape word's cross-attention on the reconstruction branch, averaged over steps
    /// (the app's view): mass inside the source's object mask, and the mask's area share.
    pub attention_inside: f64,
    /// Share of the image the source object covers.
    pub mask_area: f64,
    /// Seconds of the whole run.
    pub seconds: f64,
}

impl std::fmt::Display for EditRun {
    /// One line: the edit, what the classifier saw, both reconstruction errors and the
    /// attention inside the object against the object's area share.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<12} {} -> {}: saw {}; reconstruction error {:.1} vs plain DDIM {:.1}; \
             attention inside {:.2} (area {:.2})",
            self.case.kind.label(),
            self.case.source_prompt(),
            self.case.target_prompt(),
            self.verdict.seen,
            self.mirror_reconstruction_error,
            self.ddim_reconstruction_error,
            self.attention_inside,
            self.mask_area
        )
    }
}

/// Translates the rendered source of `case` with `request` (whose image and prompts are
/// replaced; plain DDIM runs alongside for the comparison), then judges the result.
pub fn run_edit(
    session: &mut crate::session::Session,
    case: &EditCase,
    request: &crate::session::TranslateRequest,
    side: u32,
) -> crate::Result<EditRun> {
    use crate::branch::Method;
    use crate::imageio::tensor_to_image;
    use crate::pipeline::CancelToken;
    let source = super::render(&case.source, side);
    let mut req = request.clone();
    req.image = source.clone();
    req.source_prompt = case.source_prompt();
    req.target_prompt = case.target_prompt();
    req.compare_ddim = true;
    req.attention_maps = true;
    let out = session.translate(&req, &CancelToken::new(), &mut |_| {})?;
    let image = |t: &Option<candle_core::Tensor>| -> crate::Result<RgbImage> {
        let t = t
            .as_ref()
            .ok_or_else(|| crate::EngineError::InvalidInput("a branch was not decoded".into()))?;
        Ok(tensor_to_image(t)?)
    };
    let translated = image(&out.images.translation)?;
    let pixel_error = |other: &RgbImage| -> f64 {
        let sum: f64 = source
            .as_raw()
            .iter()
            .zip(other.as_raw())
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        sum / source.as_raw().len() as f64
    };
    let shape_token = session
        .model()
        .tokenizer
        .token_words(&req.source_prompt)?
        .into_iter()
        .find(|t| t.text == case.source.shape.word())
        .map(|t| t.index);
    let maps: Vec<&crate::pipeline::TokenHeatmaps> = out
        .reports
        .iter()
        .flat_map(|r| &r.branches)
        .filter(|b| b.branch == Method::Mirror.reconstruction())
        .filter_map(|b| b.attention.as_ref())
        .collect();
    let mask = classify(&source).object.map(|o| o.mask).unwrap_or_default();
    let (attention_inside, mask_area) =
        match (crate::pipeline::TokenHeatmaps::average(&maps), shape_token) {
            (Some(avg), Some(token)) if !mask.is_empty() => mass_inside(
                &avg.token_map(token, None, side as usize, side as usize),
                &mask,
            ),
            _ => (0.0, 1.0),
        };
    Ok(EditRun {
        case: *case,
        verdict: judge_edit(case, &source, &translated),
        mirror_reconstruction_error: pixel_error(&image(&out.images.reconstruction)?),
        ddim_reconstruction_error: pixel_error(&image(&out.images.ddim_reconstruction)?),
        attention_inside,
        mask_area,
        seconds: out.seconds,
    })
}
