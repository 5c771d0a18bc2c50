//! Procedural shapes: the demo model's world. A scene is one anti-aliased shape on a plain
//! background with the caption `a {colour} {shape} on a {background} background`; `render`
//! draws it, `classify` reads a scene back from pixels alone (no learning), and `dataset`
//! writes a seeded training set.

mod classify;
mod dataset;
pub mod evaluate;
mod geometry;
mod render;

pub use classify::{Classification, classify};
pub use dataset::{DatasetSettings, write_dataset};
pub use render::render;

/// The seeded generator of scenes and data sets.
pub use crate::rng::SplitMix64;

/// The colours of shapes and backgrounds, with the sRGB value the renderer paints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    /// Red, sRGB (220, 30, 30).
    Red,
    /// Orange, sRGB (245, 140, 20).
    Orange,
    /// Yellow, sRGB (245, 220, 30).
    Yellow,
    /// Green, sRGB (30, 160, 50).
    Green,
    /// Blue, sRGB (30, 80, 220).
    Blue,
    /// Purple, sRGB (140, 40, 180).
    Purple,
    /// White, sRGB (245, 245, 245).
    White,
    /// Black, sRGB (15, 15, 15).
    Black,
}

impl Colour {
    /// Every colour, in the order the scene generator draws from.
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Blue,
        Colour::Purple,
        Colour::White,
        Colour::Black,
    ];

    /// The colour's word in captions (`red`, `orange`, ...).
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    /// The sRGB value the renderer paints.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Orange => [245, 140, 20],
            Colour::Yellow => [245, 220, 30],
            Colour::Green => [30, 160, 50],
            Colour::Blue => [30, 80, 220],
            Colour::Purple => [140, 40, 180],
            Colour::White => [245, 245, 245],
            Colour::Black => [15, 15, 15],
        }
    }

    /// The palette colour closest to `rgb` (Euclidean distance in sRGB: the palette is far
    /// apart, so nothing finer is needed).
    pub fn nearest(rgb: [f64; 3]) -> Colour {
        let distance = |c: Colour| {
            let p = c.rgb();
            (0..3).map(|k| (rgb[k] - p[k] as f64).powi(2)).sum::<f64>()
        };
        Colour::ALL
            .into_iter()
            .min_by(|a, b| distance(*a).total_cmp(&distance(*b)))
            .unwrap_or(Colour::Black)
    }

    /// The colour whose caption word is `word`, if any.
    pub fn from_word(word: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|c| c.word() == word)
    }
}

/// The shapes the demo knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An upward-pointing triangle.
    Triangle,
    /// A five-pointed star.
    Star,
}

impl Shape {
    /// Every shape, in the order the scene generator draws from.
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star];

    /// The shape's word in captions (`circle`, `square`, ...).
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
        }
    }

    /// The shape whose caption word is `word`, if any.
    pub fn from_word(word: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.word() == word)
    }
}

/// One picture: a shape of `colour` centred at (`cx`, `cy`) with circumradius `radius`
/// (fractions of the image side), on `background`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scene {
    /// What is drawn.
    pub shape: Shape,
    /// Colour of the shape.
    pub colour: Colour,
    /// Colour of the plain background.
    pub background: Colour,
    /// Horizontal centre, as a fraction of the image width (0 = left edge).
    pub cx: f64,
    /// Vertical centre, as a fraction of the image height (0 = top edge).
    pub cy: f64,
    /// Circumradius, as a fraction of the image side (within [`RADIUS_RANGE`]).
    pub radius: f64,
}

/// The range of circumradii, as fractions of the image side: large enough to classify after
/// the autoencoder's ×8 reduction, small enough to leave room to move.
pub const RADIUS_RANGE: (f64, f64) = (0.18, 0.32);
/// Free space kept between the shape and the image border, as a fraction of the side.
const BORDER_MARGIN: f64 = 0.04;

impl Scene {
    /// The scene's caption, `a {colour} {shape} on a {background} background`.
    pub fn caption(&self) -> String {
        caption(self.colour, self.shape, self.background)
    }

    /// A random scene: shape, colours (background differs from the shape's), size and a
    /// position that keeps the whole shape inside the image.
    pub fn random(rng: &mut SplitMix64) -> Scene {
        let shape = Shape::ALL[rng.below(Shape::ALL.len())];
        let colour = Colour::ALL[rng.below(Colour::ALL.len())];
        let others: Vec<Colour> = Colour::ALL.into_iter().filter(|c| *c != colour).collect();
        let background = others[rng.below(others.len())];
        Scene::random_placement(shape, colour, background, rng)
    }

    /// The given shape and colours at a random size and position.
    pub fn random_placement(
        shape: Shape,
        colour: Colour,
        background: Colour,
        rng: &mut SplitMix64,
    ) -> Scene {
        let radius = RADIUS_RANGE.0 + (RADIUS_RANGE.1 - RADIUS_RANGE.0) * rng.unit();
        let low = radius + BORDER_MARGIN;
        let span = (1.0 - 2.0 * low).max(0.0);
        Scene {
            shape,
            colour,
            background,
            cx: low + span * rng.unit(),
            cy: low + span * rng.unit(),
            radius,
        }
    }
}

/// The caption grammar, exactly: `a {colour} {shape} on a {background} background`.
pub fn caption(colour: Colour, shape: Shape, background: Colour) -> String {
    format!(
        "a {} {} on a {} background",
        colour.word(),
        shape.word(),
        background.word()
    )
}

/// Reads a caption of the grammar back into (colour, shape, background).
pub fn parse_caption(text: &str) -> Option<(Colour, Shape, Colour)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["a", colour, shape, "on", "a", background, "background"] => Some((
            Colour::from_word(colour)?,
            Shape::from_word(shape)?,
            Colour::from_word(background)?,
        )),
        _ => None,
    }
}

/// Every word of the caption grammar (the demo model's vocabulary).
pub fn vocabulary() -> Vec<&'static str> {
    let mut words = vec!["a", "on", "background"];
    words.extend(Colour::ALL.iter().map(|c| c.word()));
    words.extend(Shape::ALL.iter().map(|s| s.word()));
    words
}
