//! Draws a scene: the background, then the shape blended by its coverage of each pixel
//! (4×4 samples per pixel), so edges are anti-aliased as a photo's would be.

use image::{Rgb, RgbImage};

use super::Scene;
use super::geometry::Outline;

/// Samples per pixel side.
const SUPERSAMPLING: usize = 4;

/// The scene at `side`×`side` pixels.
pub fn render(scene: &Scene, side: u32) -> RgbImage {
    let s = side as f64;
    let outline = Outline::new(scene.shape, scene.cx * s, scene.cy * s, scene.radius * s);
    let (fg, bg) = (scene.colour.rgb(), scene.background.rgb());
    let (x0, y0, x1, y1) = outline.bounds();
    RgbImage::from_fn(side, side, |x, y| {
        let (xf, yf) = (x as f64, y as f64);
        // Pixels away from the shape's box are plain background: skip the sampling.
        if xf + 1.0 < x0 || xf > x1 || yf + 1.0 < y0 || yf > y1 {
            return Rgb(bg);
        }
        let coverage = coverage(&outline, xf, yf);
        Rgb(std::array::from_fn(|k| {
            (fg[k] as f64 * coverage + bg[k] as f64 * (1.0 - coverage)).round() as u8
        }))
    })
}

/// Fraction of the pixel with top-left corner (x, y) inside the outline.
fn coverage(outline: &Outline, x: f64, y: f64) -> f64 {
    let n = SUPERSAMPLING;
    let inside = (0..n * n)
        .filter(|k| {
            let sx = x + ((k % n) as f64 + 0.5) / n as f64;
            let sy = y + ((k / n) as f64 + 0.5) / n as f64;
            outline.contains(sx, sy)
        })
        .count();
    inside as f64 / (n * n) as f64
}
