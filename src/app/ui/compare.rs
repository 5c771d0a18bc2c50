//! Before / after: the source (or the method's reconstruction) on the left of the split, the
//! translation on the right; or the difference between them, where the pixels changed.

use egui::{Rect, RichText, Ui, pos2, vec2};

use crate::app::export::translation;
use crate::app::state::{AppState, CompareWith};
use crate::app::textures::{Textures, difference, mask_tint};

/// How much the difference view amplifies the per-pixel change.
const AMPLIFY: f32 = 4.0;
/// The accessible name of the difference picture.
pub const DIFFERENCE_LABEL: &str = "Where the pixels changed";

pub fn compare_view(ui: &mut Ui, state: &mut AppState, tex: &mut Textures) {
    let after = translation(state);
    let reconstruction = state.main_method().reconstruction();
    let before = match state.compare.with {
        CompareWith::Source => state.result.as_ref().and_then(|r| r.images.source.clone()),
        CompareWith::Reconstruction => state.final_image(reconstruction).cloned(),
    };
    let (Some(before), Some(after)) = (before, after) else {
        ui.label(RichText::new("Run a translation to compare it with the source.").weak());
        return;
    };
    let has_mask = state.result.as_ref().is_some_and(|r| r.mask.is_some());
    let with_label = |w: CompareWith| match w {
        CompareWith::Source => "source",
        CompareWith::Reconstruction => "reconstruction",
    };
    ui.horizontal_wrapped(|ui| {
        egui::ComboBox::from_label("Before")
            .selected_text(with_label(state.compare.with))
            .show_ui(ui, |ui| {
                for w in [CompareWith::Source, CompareWith::Reconstruction] {
                    ui.selectable_value(&mut state.compare.with, w, with_label(w));
                }
            })
            .response
            .on_hover_text(
                "What the translation is compared with: the photo, or the method's \
                 reconstruction of it (the picture the edit started from)",
            );
        if has_mask {
            ui.checkbox(&mut state.compare.show_mask, "Show the edit mask")
                .on_hover_text("Tint where the run's edit mask let the picture change");
        }
        ui.checkbox(&mut state.compare.difference, "Show the difference")
            .on_hover_text(format!(
                "Where the translation differs from the picture before it: black is \
                 unchanged, brighter is more changed ({AMPLIFY}× amplified)"
            ));
    });
    let key = format!(
        "final/compare/{}/{}",
        state.frames.len(),
        with_label(state.compare.with)
    );
    if state.compare.difference {
        return difference_view(ui, tex, &key, &before, &after);
    }
    ui.horizontal(|ui| {
        ui.spacing_mut().slider_width = 300.0;
        ui.add(
            egui::Slider::new(&mut state.compare_split, 0.0..=1.0)
                .text("Split")
                .show_value(false),
        );
        ui.label(
            RichText::new(format!(
                "left: {} · right: translation (drag on the image too)",
                with_label(state.compare.with)
            ))
            .weak(),
        );
    });
    let (Some(tb), Some(ta)) = (
        tex.rgb(ui.ctx(), &format!("{key}/before"), Some(&before)),
        tex.rgb(ui.ctx(), &format!("{key}/after"), Some(&after)),
    ) else {
        return;
    };
    let avail = ui.available_size() - vec2(0.0, 8.0);
    let size = ta.size_vec2();
    let scale = (avail.x / size.x).min(avail.y / size.y).max(0.1);
    let (rect, response) = ui.allocate_exact_size(size * scale, egui::Sense::click_and_drag());
    if let Some(p) = response.interact_pointer_pos() {
        state.compare_split = ((p.x - rect.left()) / rect.width()).clamp(0.0, 1.0);
    }
    let s = state.compare_split;
    let x = rect.left() + rect.width() * s;
    let painter = ui.painter_at(rect);
    let left = Rect::from_min_max(rect.min, pos2(x, rect.bottom()));
    let right = Rect::from_min_max(pos2(x, rect.top()), rect.max);
    let uv = |a: f32, b: f32| Rect::from_min_max(pos2(a, 0.0), pos2(b, 1.0));
    painter.image(tb.id(), left, uv(0.0, s), egui::Color32::WHITE);
    painter.image(ta.id(), right, uv(s, 1.0), egui::Color32::WHITE);
    let mask = state.result.as_ref().and_then(|r| r.mask.as_ref());
    if let Some(mask) = mask.filter(|_| state.compare.show_mask) {
        let t = tex.get(ui.ctx(), "final/compare/mask", || {
            Some(mask_tint(mask, [255, 64, 160], 0.3))
        });
        if let Some(t) = t {
            painter.image(t.id(), rect, uv(0.0, 1.0), egui::Color32::WHITE);
        }
    }
    painter.vline(
        x,
        rect.y_range(),
        egui::Stroke::new(2.0, egui::Color32::WHITE),
    );
}

/// Where the translation differs from the picture before it, amplified, as heat.
fn difference_view(
    ui: &mut Ui,
    tex: &mut Textures,
    key: &str,
    before: &image::RgbImage,
    after: &image::RgbImage,
) {
    let Some(t) = tex.get(ui.ctx(), &format!("{key}/difference"), || {
        Some(crate::app::textures::color_image(&difference(
            before, after, AMPLIFY,
        )))
    }) else {
        return;
    };
    ui.label(
        RichText::new(format!(
            "{DIFFERENCE_LABEL}: black is unchanged, brighter is more changed"
        ))
        .weak(),
    );
    let avail = ui.available_size() - vec2(0.0, 8.0);
    let size = t.size_vec2();
    let scale = (avail.x / size.x).min(avail.y / size.y).max(0.1);
    ui.add(
        egui::Image::new(&t)
            .fit_to_exact_size(size * scale)
            .alt_text(DIFFERENCE_LABEL),
    );
}
