//! Drawing, one module per panel. Nothing here talks to the worker: buttons push
//! [`Action`](super::action::Action)s that the app carries out after the frame is drawn.

pub mod attention;
pub mod compare;
pub mod compute;
pub mod controls;
pub mod folder;
pub mod format;
pub mod loras;
pub mod mask;
pub mod status;
pub mod steps;
pub mod style;
pub mod welcome;

use egui::{Color32, RichText, TextureHandle, Ui, Vec2};

use super::action::Action;
use super::jobs::{BusyJob, JobKind};
use super::state::{AppState, ModelStatus, View};
use super::textures::Textures;

/// Draws the whole window; `busy` are the background jobs in flight.
pub fn draw(
    ui: &mut Ui,
    state: &mut AppState,
    busy: &[BusyJob],
    tex: &mut Textures,
    actions: &mut Vec<Action>,
) {
    egui::Panel::top("menu").show(ui, |ui| menu_bar(ui, state, busy, actions));
    egui::Panel::bottom("status").show(ui, |ui| status::status_bar(ui, state));
    let has_model = matches!(state.model, ModelStatus::Ready(_));
    if has_model {
        // A third of a small window, at most 420 px on a large one.
        let width = ui.ctx().content_rect().width();
        egui::Panel::left("controls")
            .default_size((width * 0.3).clamp(280.0, 420.0))
            .size_range(260.0..=480.0)
            .show(ui, |ui| {
                // Run stays in view however long the settings above it grow.
                egui::Panel::bottom("run_and_export")
                    .show(ui, |ui| controls::run_and_export(ui, state, actions));
                egui::ScrollArea::vertical()
                    .show(ui, |ui| controls::controls(ui, state, tex, actions));
            });
        egui::CentralPanel::default().show(ui, |ui| {
            ui.horizontal(|ui| {
                for (view, name) in [
                    (View::Steps, "Steps"),
                    (View::Attention, "Attention"),
                    (View::Compare, "Compare"),
                    (View::Mask, "Mask"),
                ] {
                    if ui.selectable_label(state.view == view, name).clicked() {
                        state.view = view;
                    }
                }
            });
            ui.separator();
            match state.view {
                // The steps view scrolls when a small window cannot hold tiles and plots.
                View::Steps => {
                    egui::ScrollArea::vertical()
                        .auto_shrink([false, false])
                        .show(ui, |ui| steps::steps_view(ui, state, tex));
                }
                View::Attention => attention::attention_view(ui, state, tex),
                View::Compare => compare::compare_view(ui, state, tex),
                View::Mask => mask::mask_view(ui, state, tex, actions),
            }
        });
    } else {
        egui::CentralPanel::default().show(ui, |ui| welcome::welcome(ui, state, actions));
    }
    error_modal(ui.ctx(), state);
}

fn menu_bar(ui: &mut Ui, state: &AppState, busy: &[BusyJob], actions: &mut Vec<Action>) {
    egui::MenuBar::new().ui(ui, |ui| {
        ui.menu_button("File", |ui| {
            if ui.button("Open image…  (Ctrl+O)").clicked() {
                actions.push(Action::OpenImageDialog);
            }
            if ui.button("Paste image").clicked() {
                actions.push(Action::PasteImage);
            }
            ui.separator();
            if ui.button("Open model folder…").clicked() {
                actions.push(Action::OpenModelDialog { folder: true });
            }
            if ui.button("Open checkpoint file…").clicked() {
                actions.push(Action::OpenModelDialog { folder: false });
            }
            if ui
                .button(mirror_engine::demo::NAME)
                .on_hover_text("Mirror's own small model of coloured shapes, built in")
                .clicked()
            {
                actions.push(Action::LoadDemoModel);
            }
            ui.separator();
            if ui.button("Export all  (Ctrl+S)").clicked() {
                actions.push(Action::Export);
            }
            if ui.button("Save translation as…").clicked() {
                actions.push(Action::SaveTranslationAs);
            }
            ui.separator();
            if ui.button("Apply to a folder…").clicked() {
                actions.push(Action::ApplyToFolderDialog);
            }
        });
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            busy_line(ui, busy, actions);
            match &state.model {
                ModelStatus::Ready(m) => {
                    ui.label(RichText::new(format!("Model: {} · {}", m.name, m.kind)).weak());
                }
                ModelStatus::Loading(p) => {
                    ui.spinner();
                    ui.label(format!("Loading {}…", p.display()));
                }
                _ => {
                    ui.label(RichText::new("No model loaded").weak());
                }
            }
        });
    });
}

fn error_modal(ctx: &egui::Context, state: &mut AppState) {
    let Some(message) = state.errors.first().cloned() else {
        return;
    };
    let mut close = false;
    egui::Modal::new(egui::Id::unique("mirror-error-dialog")).show(ctx, |ui| {
        ui.set_max_width(460.0);
        ui.heading(RichText::new("Something went wrong").color(style::ERROR));
        ui.add_space(6.0);
        ui.label(&message);
        ui.add_space(10.0);
        ui.label(RichText::new("Nothing you made was lost; the app keeps running.").weak());
        ui.add_space(6.0);
        if ui.button("OK").clicked() || ui.input(|i| i.key_pressed(egui::Key::Enter)) {
            close = true;
        }
    });
    if close {
        state.errors.remove(0);
    }
}

/// An image scaled to fit `max` (keeping its aspect) with a caption under it.
pub fn tile(ui: &mut Ui, tex: Option<&TextureHandle>, caption: &str, max: Vec2) {
    ui.vertical(|ui| {
        ui.set_width(max.x);
        match tex {
            Some(t) => {
                let size = t.size_vec2();
                let scale = (max.x / size.x).min(max.y / size.y);
                ui.add(
                    egui::Image::new(t)
                        .fit_to_exact_size(size * scale)
                        .corner_radius(4.0),
                );
            }
            None => {
                let (rect, _) =
                    ui.allocate_exact_size(Vec2::splat(max.x.min(max.y)), egui::Sense::hover());
                ui.painter().rect_filled(rect, 4.0, style::EMPTY_TILE);
                ui.painter().text(
                    rect.center(),
                    egui::Align2::CENTER_CENTER,
                    "—",
                    egui::FontId::proportional(18.0),
                    Color32::GRAY,
                );
            }
        }
        ui.label(RichText::new(caption).small());
    });
}

/// The way in without a file dialog: a path typed or pasted, opened as a model (a folder, a
/// .safetensors or .ckpt file) or an image. After a dialog closed without a choice the hint
/// says so prominently.
pub fn path_entry(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>, hint: &str) {
    if state.dialog_hint {
        ui.label(RichText::new(crate::app::state::NO_DIALOG_HINT).color(style::ACCENT));
    }
    ui.horizontal(|ui| {
        let l = ui.label("Path");
        let field = ui
            .add(
                egui::TextEdit::singleline(&mut state.path_field)
                    .hint_text(hint)
                    .desired_width(ui.available_width() - 60.0),
            )
            .labelled_by(l.id);
        let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        let open = ui
            .add_enabled(
                !state.path_field.trim().is_empty(),
                egui::Button::new("Open"),
            )
            .on_hover_text("Open the model or image at this path")
            .clicked();
        if (open || enter) && !state.path_field.trim().is_empty() {
            actions.push(Action::OpenPath(state.path_field.trim().into()));
        }
    });
}

/// Background jobs in flight, with a spinner and Cancel where it makes sense.
fn busy_line(ui: &mut Ui, busy: &[BusyJob], actions: &mut Vec<Action>) {
    // Settings writes are quick and routine: not worth a spinner.
    let shown = busy.iter().filter(|j| j.kind != JobKind::SavingSettings);
    for job in shown {
        let label = job.kind.label();
        if job.kind.cancellable()
            && ui
                .small_button("Cancel")
                .on_hover_text(format!("Stop: {label}"))
                .clicked()
        {
            actions.push(Action::CancelJob(job.id));
        }
        ui.label(format!("{label}…"));
        ui.spinner();
    }
}

/// A labelled single-line text field (the label is its accessible name).
pub fn text_field(ui: &mut Ui, label: &str, value: &mut String, hint: &str) -> egui::Response {
    let l = ui.label(label);
    ui.add(
        egui::TextEdit::singleline(value)
            .hint_text(hint)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(l.id)
}
