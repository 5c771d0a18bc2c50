//! Before / after: the source on the left of the split, the translation on the right.

use egui::{Rect, RichText, Ui, pos2, vec2};

use crate::app::export::translation;
use crate::app::state::AppState;
use crate::app::textures::Textures;

pub fn compare_view(ui: &mut Ui, state: &mut AppState, tex: &mut Textures) {
    let after = translation(state);
    let before = state.result.as_ref().and_then(|r| r.images.source.clone());
    let (Some(before), Some(after)) = (before, after) else {
        ui.label(RichText::new("Run a translation to compare it with the source.").weak());
        return;
    };
    ui.horizontal(|ui| {
        ui.spacing_mut().slider_width = 300.0;
        ui.add(
            egui::Slider::new(&mut state.compare_split, 0.0..=1.0)
                .text("Split")
                .show_value(false),
        );
        ui.label(RichText::new("left: source · right: translation (drag on the image too)").weak());
    });
    let key = format!("final/compare/{}", state.frames.len());
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
    painter.vline(
        x,
        rect.y_range(),
        egui::Stroke::new(2.0, egui::Color32::WHITE),
    );
}
