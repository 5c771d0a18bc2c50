//! The outline of each shape around a centre, shared by the renderer and by the
//! classifier's templates, so that "what a star is" is written once.

use super::Shape;

/// Inner radius of the star's concave vertices, relative to its outer radius.
const STAR_INNER: f64 = 0.45;
/// Half the side of a square relative to its circumradius (`1/√2`: the corners touch it).
const SQUARE_HALF_SIDE: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// A shape placed at (`cx`, `cy`) with circumradius `radius`, in pixel units (y down).
/// Triangles and stars point up; all outlines are centred on their centroid.
#[derive(Debug, Clone)]
pub struct Outline {
    shape: Shape,
    cx: f64,
    cy: f64,
    radius: f64,
    polygon: Vec<(f64, f64)>,
}

impl Outline {
    pub fn new(shape: Shape, cx: f64, cy: f64, radius: f64) -> Self {
        let polygon = match shape {
            Shape::Circle => Vec::new(),
            Shape::Square => {
                let h = radius * SQUARE_HALF_SIDE;
                vec![
                    (cx - h, cy - h),
                    (cx + h, cy - h),
                    (cx + h, cy + h),
                    (cx - h, cy + h),
                ]
            }
            Shape::Triangle => regular_points(cx, cy, &[radius], 3),
            Shape::Star => regular_points(cx, cy, &[radius, radius * STAR_INNER], 10),
        };
        Outline {
            shape,
            cx,
            cy,
            radius,
            polygon,
        }
    }

    /// The outline of `shape` whose area is `area` square pixels.
    pub fn with_area(shape: Shape, cx: f64, cy: f64, area: f64) -> Self {
        Outline::new(shape, cx, cy, (area.max(0.0) / area_factor(shape)).sqrt())
    }

    pub fn contains(&self, x: f64, y: f64) -> bool {
        match self.shape {
            Shape::Circle => (x - self.cx).powi(2) + (y - self.cy).powi(2) <= self.radius.powi(2),
            _ => inside_polygon(&self.polygon, x, y),
        }
    }

    /// The axis-aligned box that holds the shape: (x0, y0, x1, y1).
    pub fn bounds(&self) -> (f64, f64, f64, f64) {
        let r = self.radius;
        (self.cx - r, self.cy - r, self.cx + r, self.cy + r)
    }
}

/// Area of the shape with circumradius 1.
fn area_factor(shape: Shape) -> f64 {
    use std::f64::consts::PI;
    match shape {
        Shape::Circle => PI,
        Shape::Square => (2.0 * SQUARE_HALF_SIDE).powi(2),
        Shape::Triangle => 3.0 * 3f64.sqrt() / 4.0,
        // Ten triangles from the centre, sides 1 and STAR_INNER, 36° apart.
        Shape::Star => 5.0 * STAR_INNER * (PI / 5.0).sin(),
    }
}

/// `count` vertices around (cx, cy) starting straight up, cycling through `radii`.
fn regular_points(cx: f64, cy: f64, radii: &[f64], count: usize) -> Vec<(f64, f64)> {
    (0..count)
        .map(|k| {
            let angle =
                -std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * k as f64 / count as f64;
            let r = radii[k % radii.len()];
            (cx + r * angle.cos(), cy + r * angle.sin())
        })
        .collect()
}

/// Even-odd rule: works for the star's concave outline too.
fn inside_polygon(polygon: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = polygon.len().wrapping_sub(1);
    for (i, &(xi, yi)) in polygon.iter().enumerate() {
        let (xj, yj) = polygon[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed-form areas agree with a fine pixel count, so templates sized by area
    /// match what the renderer draws.
    #[test]
    fn areas_match_pixel_counts() {
        for shape in Shape::ALL {
            let outline = Outline::new(shape, 200.0, 200.0, 150.0);
            let mut count = 0usize;
            for y in 0..400 {
                for x in 0..400 {
                    count += outline.contains(x as f64 + 0.5, y as f64 + 0.5) as usize;
                }
            }
            let expected = area_factor(shape) * 150.0 * 150.0;
            let relative = (count as f64 - expected).abs() / expected;
            assert!(
                relative < 0.01,
                "{shape:?}: {count} pixels vs {expected:.0}"
            );
        }
    }
}
