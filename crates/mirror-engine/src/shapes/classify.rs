//! Reads a scene back from pixels alone, with no learning: the background colour from the
//! border, the object as the largest region that differs from it, the object's colour from
//! its core, and its shape as the outline template (sized by area, centred on the centroid)
//! that overlaps it best.

use image::RgbImage;

use super::geometry::Outline;
use super::{Colour, Shape};

/// Width of the border frame that defines the background, in pixels.
const BORDER: u32 = 2;
/// Smallest colour distance from the background that can be an object at all.
const MIN_CONTRAST: f64 = 40.0;
/// Smallest object, as a fraction of the image area.
const MIN_AREA: f64 = 0.002;

/// What the classifier read from one image.
#[derive(Debug, Clone)]
pub struct Classification {
    /// The background colour, read from the image's border frame.
    pub background: Colour,
    /// The shape, or `None` when nothing stands out from the background.
    pub object: Option<Object>,
}

/// The one object of a scene.
#[derive(Debug, Clone)]
pub struct Object {
    pub colour: Colour,
    pub shape: Shape,
    /// Centroid in pixels (x, y), pixel centres at +0.5.
    pub centroid: (f64, f64),
    /// Area in pixels.
    pub area: f64,
    /// Row-major foreground mask of the image.
    pub mask: Vec<bool>,
    /// Overlap (intersection over union) of the mask with the chosen shape's template.
    pub fit: f64,
}

/// Reads background, object mask, object colour, shape, centroid and area from `image`.
pub fn classify(image: &RgbImage) -> Classification {
    let background_rgb = border_median(image);
    let background = Colour::nearest(background_rgb);
    let distance: Vec<f64> = image
        .pixels()
        .map(|p| colour_distance([p[0] as f64, p[1] as f64, p[2] as f64], background_rgb))
        .collect();
    let object = find_object(image, &distance).map(|mask| describe(image, &distance, mask));
    Classification { background, object }
}

/// Per-channel median of the border frame.
fn border_median(image: &RgbImage) -> [f64; 3] {
    let (w, h) = image.dimensions();
    let border = BORDER.min(w / 2).min(h / 2).max(1);
    let mut channels: [Vec<u8>; 3] = Default::default();
    for (x, y, p) in image.enumerate_pixels() {
        if x < border || y < border || x + border >= w || y + border >= h {
            for k in 0..3 {
                channels[k].push(p[k]);
            }
        }
    }
    channels.map(|mut c| {
        c.sort_unstable();
        c.get(c.len() / 2).copied().unwrap_or(0) as f64
    })
}

fn colour_distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f64>().sqrt()
}

/// The largest 4-connected region of pixels at least half-way (in colour) from the
/// background to the object; half-way keeps the anti-aliased edge at its true place.
fn find_object(image: &RgbImage, distance: &[f64]) -> Option<Vec<bool>> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let strong = strongest_contrast(distance);
    if strong < MIN_CONTRAST {
        return None;
    }
    let candidate: Vec<bool> = distance.iter().map(|d| *d >= 0.5 * strong).collect();
    let mask = largest_component(&candidate, w, h);
    let area = mask.iter().filter(|m| **m).count();
    (area as f64 >= MIN_AREA * (w * h) as f64).then_some(mask)
}

/// The mean of the top 1 % of distances: the object's contrast, robust to a few odd pixels.
fn strongest_contrast(distance: &[f64]) -> f64 {
    let mut sorted = distance.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let top = (sorted.len() / 100).max(1);
    sorted[..top].iter().sum::<f64>() / top as f64
}

fn largest_component(candidate: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut label = vec![0u32; candidate.len()];
    let (mut best, mut best_size, mut next) = (0u32, 0usize, 0u32);
    let mut stack = Vec::new();
    for start in 0..candidate.len() {
        if !candidate[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % w, i / w);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for j in neighbours.into_iter().flatten() {
                if candidate[j] && label[j] == 0 {
                    label[j] = next;
                    stack.push(j);
                }
            }
        }
        if size > best_size {
            (best, best_size) = (next, size);
        }
    }
    label.iter().map(|l| best != 0 && *l == best).collect()
}

fn describe(image: &RgbImage, distance: &[f64], mask: Vec<bool>) -> Object {
    let w = image.width() as usize;
    let strong = strongest_contrast(distance);
    let (mut sum, mut count, mut core, mut core_count) = ([0.0; 2], 0usize, [0.0; 3], 0usize);
    for (i, p) in image.pixels().enumerate() {
        if !mask[i] {
            continue;
        }
        sum[0] += (i % w) as f64 + 0.5;
        sum[1] += (i / w) as f64 + 0.5;
        count += 1;
        // The core (well past the edge) carries the object's own colour.
        if distance[i] >= 0.8 * strong {
            for k in 0..3 {
                core[k] += p[k] as f64;
            }
            core_count += 1;
        }
    }
    let area = count as f64;
    let centroid = (sum[0] / area, sum[1] / area);
    let colour = Colour::nearest(core.map(|c| c / core_count.max(1) as f64));
    let (shape, fit) = Shape::ALL
        .into_iter()
        .map(|s| (s, template_overlap(s, centroid, area, &mask, w)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((Shape::Circle, 0.0));
    Object {
        colour,
        shape,
        centroid,
        area,
        mask,
        fit,
    }
}

/// Intersection over union of the mask with `shape`'s outline of the same area and centroid.
fn template_overlap(shape: Shape, centroid: (f64, f64), area: f64, mask: &[bool], w: usize) -> f64 {
    let outline = Outline::with_area(shape, centroid.0, centroid.1, area);
    let (mut intersection, mut union) = (0usize, 0usize);
    for (i, &m) in mask.iter().enumerate() {
        let t = outline.contains((i % w) as f64 + 0.5, (i / w) as f64 + 0.5);
        intersection += (m && t) as usize;
        union += (m || t) as usize;
    }
    intersection as f64 / union.max(1) as f64
}
