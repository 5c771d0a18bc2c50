//! The painted edit mask: where the edit may change the picture (white) and where it may not
//! (black), kept at the photo's own resolution. What made it is kept as a list of edits
//! (strokes, invert, clear, fill), not as copies of the picture, so that undo replays the list.
//! A copy of the mask every [`CHECKPOINT_EVERY`] edits, the last [`CHECKPOINTS`] of them only,
//! bounds what an undo replays: a 4000×3000 photo costs at most five 12 MB masks, however
//! many strokes it has. A copy at display
//! resolution (at most [`OVERLAY_SIDE`] pixels a side) follows every dab, so the overlay
//! texture stays small while a stroke is drawn. The engine scales the mask to its latent grid.

use image::{GrayImage, Luma, imageops};

/// The overlay's longest side, in pixels.
pub const OVERLAY_SIDE: u32 = 1024;
/// A copy of the mask is kept after every this many edits…
pub const CHECKPOINT_EVERY: usize = 4;
/// …the newest this many.
pub const CHECKPOINTS: usize = 4;

/// How a stroke paints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Brush {
    /// Radius in photo pixels.
    pub radius: f32,
    /// 0: a hard edge; 1: soft from the centre out.
    pub softness: f32,
    /// Paints "may not change" instead.
    pub erase: bool,
}

/// One change to the mask, as the undo list keeps it.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskEdit {
    /// The brush along these points (photo pixels).
    Stroke {
        brush: Brush,
        points: Vec<[f32; 2]>,
    },
    Invert,
    Clear,
    /// Replaced by a mask at any size (stretched to the photo's): the edit's own mask.
    Fill(GrayImage),
}

/// The mask of one photo with its undo list.
#[derive(Debug, Clone)]
pub struct PaintedMask {
    /// What the edits start from (a mask restored from a recipe), at any size; None: black.
    base: Option<GrayImage>,
    edits: Vec<MaskEdit>,
    /// The mask after the first `n` edits, for a few `n` (undo replays from the last one).
    checkpoints: Vec<(usize, GrayImage)>,
    pixels: GrayImage,
    overlay: GrayImage,
    /// A stroke is being drawn (the last edit is its stroke).
    drawing: bool,
    /// Goes up on every change: the overlay texture is uploaded again.
    pub version: u64,
}

impl PaintedMask {
    /// An empty (all "may not change") mask for a photo of `size`.
    pub fn new(size: (u32, u32)) -> Self {
        let (w, h) = (size.0.max(1), size.1.max(1));
        let scale = (OVERLAY_SIDE as f32 / w.max(h) as f32).min(1.0);
        let (ow, oh) = (
            ((w as f32 * scale).round() as u32).max(1),
            ((h as f32 * scale).round() as u32).max(1),
        );
        Self {
            base: None,
            edits: Vec::new(),
            checkpoints: Vec::new(),
            pixels: GrayImage::new(w, h),
            overlay: GrayImage::new(ow, oh),
            drawing: false,
            version: 0,
        }
    }

    /// A mask for a photo of `size` that starts as `base` (stretched to it); undo stops there.
    pub fn from_image(size: (u32, u32), base: GrayImage) -> Self {
        let mut mask = Self::new(size);
        mask.base = Some(base);
        mask.replay();
        mask
    }

    /// The mask at the photo's resolution (white = may change).
    pub fn pixels(&self) -> &GrayImage {
        &self.pixels
    }

    /// The mask at display resolution.
    pub fn overlay(&self) -> &GrayImage {
        &self.overlay
    }

    pub fn size(&self) -> (u32, u32) {
        self.pixels.dimensions()
    }

    /// The share of the picture the edit may change, 0–1 (measured on the overlay).
    pub fn coverage(&self) -> f32 {
        let n = self.overlay.len().max(1) as f64;
        let sum: u64 = self.overlay.as_raw().iter().map(|&v| u64::from(v)).sum();
        (sum as f64 / (255.0 * n)) as f32
    }

    /// True when nothing may change.
    pub fn is_empty(&self) -> bool {
        self.pixels.as_raw().iter().all(|&v| v == 0)
    }

    /// Edits that undo can take back.
    pub fn undo_steps(&self) -> usize {
        self.edits.len()
    }

    /// Starts a stroke at `at` (photo pixels).
    pub fn begin_stroke(&mut self, brush: Brush, at: [f32; 2]) {
        self.end_stroke();
        self.edits.push(MaskEdit::Stroke {
            brush,
            points: vec![at],
        });
        self.drawing = true;
        self.dab(brush, at);
        self.version += 1;
    }

    /// Continues the stroke to `at`, dabbing along the way (a stroke must have begun).
    pub fn extend_stroke(&mut self, at: [f32; 2]) {
        if !self.drawing {
            return;
        }
        let Some(MaskEdit::Stroke { brush, points }) = self.edits.last_mut() else {
            return;
        };
        let (brush, from) = (*brush, points.last().copied().unwrap_or(at));
        points.push(at);
        self.line(brush, from, at);
        self.version += 1;
    }

    pub fn end_stroke(&mut self) {
        if self.drawing {
            self.drawing = false;
            self.checkpoint();
        }
    }

    /// Keeps a copy of the mask after every few edits (the oldest copies go).
    fn checkpoint(&mut self) {
        let n = self.edits.len();
        if n.is_multiple_of(CHECKPOINT_EVERY)
            && self.checkpoints.last().is_none_or(|(k, _)| *k != n)
        {
            self.checkpoints.push((n, self.pixels.clone()));
            if self.checkpoints.len() > CHECKPOINTS {
                self.checkpoints.remove(0);
            }
        }
    }

    pub fn invert(&mut self) {
        self.end_stroke();
        self.edits.push(MaskEdit::Invert);
        self.apply_last();
    }

    pub fn clear(&mut self) {
        self.end_stroke();
        self.edits.push(MaskEdit::Clear);
        self.apply_last();
    }

    /// Replaces the mask by `mask` (any size: stretched to the photo).
    pub fn fill(&mut self, mask: GrayImage) {
        self.end_stroke();
        self.edits.push(MaskEdit::Fill(mask));
        self.apply_last();
    }

    /// Takes back the last edit; false when there is none.
    pub fn undo(&mut self) -> bool {
        self.end_stroke();
        if self.edits.pop().is_none() {
            return false;
        }
        let n = self.edits.len();
        self.checkpoints.retain(|(k, _)| *k <= n);
        self.replay();
        true
    }

    fn apply_last(&mut self) {
        if let Some(edit) = self.edits.last().cloned() {
            self.apply(&edit);
            self.refresh_overlay();
        }
        self.checkpoint();
        self.version += 1;
    }

    /// Rebuilds the mask from the last checkpoint (or its base) and the edits after it.
    fn replay(&mut self) {
        let (w, h) = self.pixels.dimensions();
        let from = match self.checkpoints.last() {
            Some((n, pixels)) => {
                self.pixels = pixels.clone();
                *n
            }
            None => {
                self.pixels = match &self.base {
                    Some(base) => stretch(base, (w, h)),
                    None => GrayImage::new(w, h),
                };
                0
            }
        };
        let edits = std::mem::take(&mut self.edits);
        for edit in &edits[from.min(edits.len())..] {
            self.apply(edit);
        }
        self.edits = edits;
        self.refresh_overlay();
        self.version += 1;
    }

    fn apply(&mut self, edit: &MaskEdit) {
        match edit {
            MaskEdit::Stroke { brush, points } => {
                if let Some(first) = points.first() {
                    self.dab_pixels(*brush, *first);
                }
                for pair in points.windows(2) {
                    self.line_pixels(*brush, pair[0], pair[1]);
                }
            }
            MaskEdit::Invert => self.pixels.iter_mut().for_each(|v| *v = 255 - *v),
            MaskEdit::Clear => self.pixels.iter_mut().for_each(|v| *v = 0),
            MaskEdit::Fill(mask) => self.pixels = stretch(mask, self.pixels.dimensions()),
        }
    }

    /// Dabs from `from` to `to`, a quarter of the radius apart (the first is already down).
    fn line(&mut self, brush: Brush, from: [f32; 2], to: [f32; 2]) {
        for at in line_dabs(brush, from, to) {
            self.dab(brush, at);
        }
    }

    fn line_pixels(&mut self, brush: Brush, from: [f32; 2], to: [f32; 2]) {
        for at in line_dabs(brush, from, to) {
            self.dab_pixels(brush, at);
        }
    }

    /// One dab into the mask and the overlay pixels it covers.
    fn dab(&mut self, brush: Brush, at: [f32; 2]) {
        if let Some(area) = self.dab_pixels(brush, at) {
            self.refresh_overlay_area(area);
        }
    }

    /// One dab into the mask; the photo-pixel rectangle it touched `[x0, y0, x1, y1)`.
    fn dab_pixels(&mut self, brush: Brush, at: [f32; 2]) -> Option<[u32; 4]> {
        let (w, h) = self.pixels.dimensions();
        let r = brush.radius.max(0.5);
        let inner = r * (1.0 - brush.softness.clamp(0.0, 1.0));
        let clampx = |v: f32| (v.max(0.0) as u32).min(w);
        let clampy = |v: f32| (v.max(0.0) as u32).min(h);
        let (x0, x1) = (
            clampx((at[0] - r).floor()),
            clampx((at[0] + r).ceil() + 1.0),
        );
        let (y0, y1) = (
            clampy((at[1] - r).floor()),
            clampy((at[1] + r).ceil() + 1.0),
        );
        if x0 >= x1 || y0 >= y1 {
            return None;
        }
        let (r2, inner2) = (r * r, inner * inner);
        let width = w as usize;
        let raw: &mut [u8] = &mut self.pixels;
        for y in y0..y1 {
            let dy = y as f32 + 0.5 - at[1];
            // Only the span of this row inside the circle.
            let half = (r2 - dy * dy).max(0.0).sqrt();
            let xs = clampx((at[0] - 0.5 - half).floor()).max(x0);
            let xe = clampx((at[0] - 0.5 + half).ceil() + 1.0).min(x1);
            let row = &mut raw[y as usize * width..(y as usize + 1) * width];
            for (x, px) in row
                .iter_mut()
                .enumerate()
                .take(xe as usize)
                .skip(xs as usize)
            {
                let dx = x as f32 + 0.5 - at[0];
                let d2 = dx * dx + dy * dy;
                let v = if d2 <= inner2 {
                    255
                } else if d2 >= r2 {
                    continue;
                } else {
                    let t = 1.0 - (d2.sqrt() - inner) / (r - inner);
                    (t * t * (3.0 - 2.0 * t) * 255.0).round() as u8
                };
                *px = if brush.erase {
                    (*px).min(255 - v)
                } else {
                    (*px).max(v)
                };
            }
        }
        Some([x0, y0, x1, y1])
    }

    fn refresh_overlay(&mut self) {
        let (w, h) = self.pixels.dimensions();
        self.refresh_overlay_area([0, 0, w, h]);
    }

    /// The overlay pixels over the photo rectangle `area` sampled again from the mask.
    fn refresh_overlay_area(&mut self, area: [u32; 4]) {
        let (w, h) = self.pixels.dimensions();
        let (ow, oh) = self.overlay.dimensions();
        let (sx, sy) = (w as f32 / ow as f32, h as f32 / oh as f32);
        let ox0 = ((area[0] as f32 / sx).floor() as u32).min(ow);
        let oy0 = ((area[1] as f32 / sy).floor() as u32).min(oh);
        let ox1 = ((area[2] as f32 / sx).ceil() as u32).min(ow);
        let oy1 = ((area[3] as f32 / sy).ceil() as u32).min(oh);
        for oy in oy0..oy1 {
            let y = (((oy as f32 + 0.5) * sy) as u32).min(h - 1);
            for ox in ox0..ox1 {
                let x = (((ox as f32 + 0.5) * sx) as u32).min(w - 1);
                let v = self.pixels.get_pixel(x, y).0[0];
                self.overlay.put_pixel(ox, oy, Luma([v]));
            }
        }
    }
}

fn line_dabs(brush: Brush, from: [f32; 2], to: [f32; 2]) -> impl Iterator<Item = [f32; 2]> {
    let (dx, dy) = (to[0] - from[0], to[1] - from[1]);
    let length = (dx * dx + dy * dy).sqrt();
    let spacing = (brush.radius * 0.25).max(0.5);
    let n = (length / spacing).ceil().max(1.0) as usize;
    (1..=n).map(move |i| {
        let t = i as f32 / n as f32;
        [from[0] + dx * t, from[1] + dy * t]
    })
}

fn stretch(mask: &GrayImage, (w, h): (u32, u32)) -> GrayImage {
    if mask.dimensions() == (w, h) || mask.width() == 0 || mask.height() == 0 {
        if mask.width() == 0 || mask.height() == 0 {
            return GrayImage::new(w, h);
        }
        return mask.clone();
    }
    imageops::resize(mask, w, h, imageops::FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRUSH: Brush = Brush {
        radius: 10.0,
        softness: 0.0,
        erase: false,
    };

    #[test]
    fn strokes_paint_undo_replays_and_invert_clear_work() {
        let mut m = PaintedMask::new((4000, 3000));
        assert_eq!(m.overlay().dimensions(), (1024, 768));
        assert!(m.is_empty());
        m.begin_stroke(BRUSH, [100.0, 100.0]);
        m.extend_stroke([300.0, 100.0]);
        m.end_stroke();
        assert_eq!(m.pixels().get_pixel(200, 100)[0], 255);
        assert_eq!(m.pixels().get_pixel(200, 130)[0], 0);
        let (ox, oy) = (200 * 1024 / 4000, 100 * 768 / 3000);
        assert_eq!(m.overlay().get_pixel(ox, oy)[0], 255, "the overlay follows");
        let painted = m.pixels().clone();
        m.begin_stroke(
            Brush {
                erase: true,
                ..BRUSH
            },
            [200.0, 100.0],
        );
        m.end_stroke();
        assert_eq!(m.pixels().get_pixel(200, 100)[0], 0, "erased");
        assert!(m.undo());
        assert_eq!(m.pixels(), &painted, "undo takes the last stroke back");
        m.invert();
        assert_eq!(m.pixels().get_pixel(200, 100)[0], 0);
        assert_eq!(m.pixels().get_pixel(2000, 2000)[0], 255);
        m.clear();
        assert!(m.is_empty());
        assert!(m.undo() && m.undo());
        assert_eq!(m.pixels(), &painted);
        assert!(m.undo() && !m.undo(), "back to the empty mask");
        assert!(m.is_empty());
    }

    #[test]
    fn a_soft_brush_paints_soft_edges() {
        let soft = Brush {
            softness: 1.0,
            ..BRUSH
        };
        let mut m = PaintedMask::new((64, 64));
        m.begin_stroke(soft, [32.0, 32.0]);
        let edge = m.pixels().get_pixel(38, 32)[0];
        assert!(edge > 0 && edge < 255, "a soft edge: {edge}");
    }

    /// A 4000×3000 photo: a stroke's dabs stay quick, and undo after many strokes replays
    /// them in well under a second (timings printed; the bound is loose for slow machines).
    #[test]
    fn a_large_photo_paints_and_undoes_quickly() {
        let mut m = PaintedMask::new((4000, 3000));
        let brush = Brush {
            radius: 240.0,
            softness: 0.5,
            erase: false,
        };
        let started = std::time::Instant::now();
        let mut moves = 0;
        for s in 0..20 {
            let y = 100.0 + 140.0 * s as f32;
            m.begin_stroke(brush, [100.0, y]);
            for x in (1..40).map(|i| 100.0 * i as f32) {
                m.extend_stroke([x, y]);
                moves += 1;
            }
            m.end_stroke();
        }
        let per_move = started.elapsed() / moves;
        let reference = {
            let mut r = m.clone();
            r.checkpoints.clear();
            r.undo();
            r.undo();
            r.pixels().clone()
        };
        let started = std::time::Instant::now();
        assert!(m.undo() && m.undo());
        let undo = started.elapsed() / 2;
        println!("4000×3000: {per_move:?} a pointer move (100 px), an undo of 20 strokes {undo:?}");
        assert_eq!(
            m.pixels(),
            &reference,
            "replay from a checkpoint = from the start"
        );
        assert!(m.checkpoints.len() <= CHECKPOINTS);
        assert!(per_move.as_millis() < 50 && undo.as_secs_f64() < 2.0);
    }
}
