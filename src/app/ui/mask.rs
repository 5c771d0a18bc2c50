//! The mask view: the photo with its edit mask as a tint, a brush and an eraser to paint where
//! the edit may change the picture, and undo, invert, clear and "fill from the edit". Strokes
//! go out as actions (carried out after the frame); the overlay texture is the mask's small
//! display copy, uploaded again only when it changed.

use egui::{Color32, Rect, RichText, Sense, Ui, pos2, vec2};

use crate::app::action::{Action, MaskAction};
use crate::app::mask::OVERLAY_SIDE;
use crate::app::run_settings::EditRegion;
use crate::app::state::AppState;
use crate::app::textures::{Textures, mask_tint};
use mirror_engine::imageio::mask_on_photo;

/// The painted mask's tint, and the found mask's.
const PAINT_TINT: [u8; 3] = [255, 64, 160];
const FOUND_TINT: [u8; 3] = [64, 200, 255];
/// The accessible name of the picture that takes the strokes.
pub const CANVAS_LABEL: &str = "Photo to paint the edit region on";

pub fn mask_view(ui: &mut Ui, state: &mut AppState, tex: &mut Textures, actions: &mut Vec<Action>) {
    if state.image.is_none() {
        ui.label(RichText::new("Open a photo to paint where the edit may change it.").weak());
        return;
    }
    tools(ui, state, actions);
    region_line(ui, state);
    canvas(ui, state, tex, actions);
}

fn tools(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
    let p = &mut state.paint;
    ui.horizontal_wrapped(|ui| {
        if ui
            .selectable_label(!p.erase, "Brush")
            .on_hover_text("Paint where the edit may change the picture")
            .clicked()
        {
            p.erase = false;
        }
        if ui
            .selectable_label(p.erase, "Eraser")
            .on_hover_text("Paint where the picture must stay as it is")
            .clicked()
        {
            p.erase = true;
        }
        ui.add(
            egui::Slider::new(&mut p.size_percent, 0.5..=30.0)
                .text("Brush size")
                .suffix(" %")
                .fixed_decimals(1),
        )
        .on_hover_text("The brush's radius, as a share of the photo's longer side");
        ui.add(egui::Slider::new(&mut p.softness, 0.0..=1.0).text("Softness"))
            .on_hover_text("0: a hard edge; 1: fades from the centre out");
        ui.checkbox(&mut p.show_overlay, "Show mask")
            .on_hover_text("Show the mask as a tint over the photo");
    });
    let undo_steps = state.mask.as_ref().map_or(0, |m| m.undo_steps());
    // The engine finds the mask when the last run's is not the one; it needs a free worker.
    let can_fill = state.found_mask().is_some()
        || (!state.progress.running && !state.folder_running() && !state.finding_mask);
    ui.horizontal_wrapped(|ui| {
        let buttons = [
            (
                "Undo",
                undo_steps > 0,
                MaskAction::Undo,
                "Take back the last stroke (Ctrl+Z)",
            ),
            (
                "Invert",
                true,
                MaskAction::Invert,
                "What may change stays, and the rest may change",
            ),
            (
                "Clear",
                true,
                MaskAction::Clear,
                "Nothing may change (undo brings it back)",
            ),
            (
                "Fill from the edit",
                can_fill,
                MaskAction::FillFromEdit,
                "Start from where the edit changes the picture, as the engine finds it from the \
                 two prompts; then paint or erase to adjust",
            ),
        ];
        for (label, enabled, action, hint) in buttons {
            if ui
                .add_enabled(enabled, egui::Button::new(label))
                .on_hover_text(hint)
                .on_disabled_hover_text(hint)
                .clicked()
            {
                actions.push(Action::Mask(action));
            }
        }
    });
}

fn region_line(ui: &mut Ui, state: &AppState) {
    let region = state.settings.run.edit_region;
    let coverage = state.mask.as_ref().map_or(0.0, |m| m.coverage());
    let text = match region {
        EditRegion::Painted => format!(
            "Edit region: painted · {:.0} % of the picture may change. Ctrl+Z takes back a stroke.",
            coverage * 100.0
        ),
        EditRegion::Found if state.found_mask().is_some() => {
            "Edit region: found from the edit · shown is the mask the last run found. Painting \
             switches to a painted region."
                .into()
        }
        other => format!(
            "Edit region: {} · painting switches to a painted region.",
            other.label()
        ),
    };
    ui.label(RichText::new(text).small().weak());
}

fn canvas(ui: &mut Ui, state: &mut AppState, tex: &mut Textures, actions: &mut Vec<Action>) {
    let Some(img) = &state.image else {
        return;
    };
    let photo = img.loaded.rgb.dimensions();
    let Some(t) = tex.rgb(ui.ctx(), "source/full", Some(&img.loaded.rgb)) else {
        return;
    };
    let avail = ui.available_size() - vec2(0.0, 4.0);
    let size = vec2(photo.0 as f32, photo.1 as f32);
    let scale = (avail.x / size.x).min(avail.y / size.y).max(0.01);
    let (rect, response) = ui.allocate_exact_size(size * scale, Sense::drag());
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Canvas, true, CANVAS_LABEL));
    let uv = Rect::from_min_max(pos2(0.0, 0.0), pos2(1.0, 1.0));
    let painter = ui.painter_at(rect);
    painter.image(t.id(), rect, uv, Color32::WHITE);
    let to_photo = |p: egui::Pos2| {
        [
            (p.x - rect.left()) / rect.width() * photo.0 as f32,
            (p.y - rect.top()) / rect.height() * photo.1 as f32,
        ]
    };
    if let Some(p) = response.interact_pointer_pos() {
        if response.drag_started() {
            actions.push(Action::Mask(MaskAction::StrokeStart(to_photo(p))));
        } else if response.dragged() {
            actions.push(Action::Mask(MaskAction::StrokeTo(to_photo(p))));
        }
    }
    if response.drag_stopped() {
        actions.push(Action::Mask(MaskAction::StrokeEnd));
    }
    if state.paint.show_overlay {
        overlay(ui, state, tex, &painter, rect, uv);
    }
    if let Some(p) = response.hover_pos() {
        let radius = state.paint.size_percent / 100.0 * rect.width().max(rect.height());
        let colour = if state.paint.erase {
            Color32::WHITE
        } else {
            Color32::from_rgb(PAINT_TINT[0], PAINT_TINT[1], PAINT_TINT[2])
        };
        painter.circle_stroke(p, radius, egui::Stroke::new(1.5, colour));
    }
}

/// The painted mask as a tint; with the region found from the edit and no painting yet, the
/// mask the last run found.
fn overlay(
    ui: &Ui,
    state: &AppState,
    tex: &mut Textures,
    painter: &egui::Painter,
    rect: Rect,
    uv: Rect,
) {
    let region = state.settings.run.edit_region;
    let found = state.found_mask().filter(|_| region == EditRegion::Found);
    if let (Some(found), Some(img)) = (found, &state.image) {
        let (w, h) = img.loaded.rgb.dimensions();
        let s = (OVERLAY_SIDE as f32 / w.max(h) as f32).min(1.0);
        let small = (
            ((w as f32 * s) as u32).max(1),
            ((h as f32 * s) as u32).max(1),
        );
        let policy = state
            .result_recipe
            .as_ref()
            .map_or(state.settings.resize, |r| r.resize);
        let t = tex.get(ui.ctx(), "final/found-mask", || {
            Some(mask_tint(
                &mask_on_photo(found, small, policy),
                FOUND_TINT,
                0.5,
            ))
        });
        if let Some(t) = t {
            painter.image(t.id(), rect, uv, Color32::WHITE);
        }
        return;
    }
    if let Some(mask) = &state.mask {
        let t = tex.versioned(ui.ctx(), "source/mask", mask.version, || {
            mask_tint(mask.overlay(), PAINT_TINT, 0.55)
        });
        painter.image(t.id(), rect, uv, Color32::WHITE);
    }
}
