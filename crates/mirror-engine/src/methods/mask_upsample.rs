//! A mask found on the latent grid, brought to the photo's pixels along the photo's own edges
//! (joint bilateral upsampling, Kopf et al., SIGGRAPH 2007): each pixel takes the mask of the
//! nearby latent cells, weighted by distance and by how alike the pixel's colour is to the
//! cell's mean colour. A cell is 8 pixels wide on SD, so plain bilinear stretching would
//! smear the mask's edge across a whole cell; here it follows the object's outline where the
//! photo has one, and stays smooth where it has none.

use image::RgbImage;

/// How far and how sharply the mask follows the photo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeAwareSettings {
    /// Spatial spread, in latent cells.
    pub sigma_cells: f32,
    /// Colour spread, in 0–1 sRGB units (Euclidean over the three channels).
    pub sigma_colour: f32,
    /// Cells looked at on each side of a pixel's own cell.
    pub radius_cells: usize,
}

impl Default for EdgeAwareSettings {
    fn default() -> Self {
        Self {
            sigma_cells: 0.75,
            sigma_colour: 0.1,
            radius_cells: 2,
        }
    }
}

/// `cells` (row-major `grid_h`×`grid_w`, 0–1) at `photo`'s size, row-major, 0–1.
pub fn upsample_along_edges(
    cells: &[f32],
    (grid_h, grid_w): (usize, usize),
    photo: &RgbImage,
    settings: &EdgeAwareSettings,
) -> Vec<f32> {
    let (width, height) = (photo.width() as usize, photo.height() as usize);
    if grid_h == 0 || grid_w == 0 || width == 0 || height == 0 {
        return vec![0.0; width * height];
    }
    let colour = |x: usize, y: usize| -> [f32; 3] {
        let p = photo.get_pixel(x as u32, y as u32).0;
        [p[0], p[1], p[2]].map(|c| f32::from(c) / 255.0)
    };
    let means = cell_means(photo, (grid_h, grid_w), &colour);
    let (cell_w, cell_h) = (width as f32 / grid_w as f32, height as f32 / grid_h as f32);
    let spatial = 1.0 / (2.0 * settings.sigma_cells * settings.sigma_cells);
    let range = 1.0 / (2.0 * settings.sigma_colour * settings.sigma_colour);
    let r = settings.radius_cells as isize;
    let mut out = Vec::with_capacity(width * height);
    for y in 0..height {
        // The pixel's centre in cell units.
        let gy = (y as f32 + 0.5) / cell_h - 0.5;
        for x in 0..width {
            let gx = (x as f32 + 0.5) / cell_w - 0.5;
            let here = colour(x, y);
            let (mut sum, mut weights) = (0f32, 0f32);
            let (cy, cx) = (gy.round() as isize, gx.round() as isize);
            for j in (cy - r).max(0)..=(cy + r).min(grid_h as isize - 1) {
                for i in (cx - r).max(0)..=(cx + r).min(grid_w as isize - 1) {
                    let cell = j as usize * grid_w + i as usize;
                    let d2 = (gy - j as f32).powi(2) + (gx - i as f32).powi(2);
                    let c2: f32 = (0..3).map(|k| (here[k] - means[cell][k]).powi(2)).sum();
                    let w = (-d2 * spatial - c2 * range).exp();
                    sum += w * cells[cell];
                    weights += w;
                }
            }
            out.push(if weights > 0.0 { sum / weights } else { 0.0 });
        }
    }
    out
}

/// The mean colour of the pixels each cell covers.
fn cell_means(
    photo: &RgbImage,
    (grid_h, grid_w): (usize, usize),
    colour: &dyn Fn(usize, usize) -> [f32; 3],
) -> Vec<[f32; 3]> {
    let (width, height) = (photo.width() as usize, photo.height() as usize);
    let mut sums = vec![[0f32; 4]; grid_h * grid_w];
    for y in 0..height {
        let j = (y * grid_h / height).min(grid_h - 1);
        for x in 0..width {
            let i = (x * grid_w / width).min(grid_w - 1);
            let c = colour(x, y);
            let s = &mut sums[j * grid_w + i];
            for k in 0..3 {
                s[k] += c[k];
            }
            s[3] += 1.0;
        }
    }
    sums.iter()
        .map(|s| {
            let n = s[3].max(1.0);
            [s[0] / n, s[1] / n, s[2] / n]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 32×32 photo: a red disc of radius 9 at (13, 15) on white; the mask on a 4×4 grid
    /// marks the cells the disc touches most.
    fn disc() -> (RgbImage, Vec<bool>) {
        let inside = |x: u32, y: u32| (x as f32 - 13.0).powi(2) + (y as f32 - 15.0).powi(2) < 81.0;
        let photo = RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb(if inside(x, y) {
                [220, 30, 30]
            } else {
                [245, 245, 245]
            })
        });
        let truth = (0..32 * 32).map(|k| inside(k % 32, k / 32)).collect();
        (photo, truth)
    }

    #[test]
    fn the_mask_follows_the_object_outline_closer_than_a_stretch() {
        let (photo, truth) = disc();
        // Each cell: 1 where the disc covers at least half of it.
        let cells: Vec<f32> = (0..16)
            .map(|c| {
                let (i, j) = (c % 4, c / 4);
                let covered = (0..64)
                    .filter(|k| truth[(j * 8 + k / 8) * 32 + i * 8 + k % 8])
                    .count();
                f32::from(covered >= 32)
            })
            .collect();
        let sharp = upsample_along_edges(&cells, (4, 4), &photo, &EdgeAwareSettings::default());
        let stretched = crate::pipeline::heatmap::bilinear(&cells, 4, 4, 32, 32);
        let wrong = |m: &[f32]| {
            m.iter()
                .zip(&truth)
                .filter(|(v, t)| (**v >= 0.5) != **t)
                .count()
        };
        assert!(
            wrong(&sharp) * 3 < wrong(&stretched),
            "edge-aware {} wrong pixels, bilinear {}",
            wrong(&sharp),
            wrong(&stretched)
        );
    }

    #[test]
    fn a_flat_photo_gives_a_smooth_stretch_and_constant_masks_stay_constant() {
        let photo = RgbImage::from_pixel(16, 8, image::Rgb([90, 90, 90]));
        let ones = upsample_along_edges(&[1.0; 8], (2, 4), &photo, &EdgeAwareSettings::default());
        assert_eq!(ones.len(), 128);
        assert!(ones.iter().all(|v| (v - 1.0).abs() < 1e-6));
        let half = upsample_along_edges(
            &[1., 1., 0., 0., 1., 1., 0., 0.],
            (2, 4),
            &photo,
            &EdgeAwareSettings::default(),
        );
        // Left half 1, right half 0, a smooth step between.
        assert!(half[0] > 0.95 && half[15] < 0.05 && (half[7] - 0.5).abs() < 0.2);
    }
}
