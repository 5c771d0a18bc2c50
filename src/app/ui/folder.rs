//! The "Apply to a folder" rows under Export: the photo folder, the button, the progress of
//! a folder run with the time left, and how it ended (each photo that failed, with why).

use egui::{RichText, Ui};

use super::format::fmt_secs;
use crate::app::action::Action;
use crate::app::state::AppState;

pub fn folder_section(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
    // Shown once a folder run is asked for (File → Apply to a folder…), so that the panel
    // keeps its room for Run until then.
    if !state.show_folder_row {
        return;
    }
    let running = state.folder_running();
    let can_start = !running && !state.progress.running && state.model_ready().is_some();
    ui.horizontal_wrapped(|ui| {
        let l = ui.label("Photo folder");
        ui.add(egui::TextEdit::singleline(&mut state.folder_field).desired_width(120.0))
            .labelled_by(l.id)
            .on_hover_text("Every photo of this folder (PNG, JPEG, WebP) gets the same edit");
        let typed = state.folder_field.trim().to_string();
        // Empty field: the button opens a folder dialog; a typed folder is used as it is.
        let label = if typed.is_empty() {
            "Apply to a folder…"
        } else {
            "Apply to the folder"
        };
        if ui
            .add_enabled(can_start, egui::Button::new(label))
            .on_hover_text(
                "The edit as set up here, on every photo of the folder: one result each with its \
                 recipe, and a contact sheet, in a new folder under the export folder",
            )
            .clicked()
        {
            actions.push(if typed.is_empty() {
                Action::ApplyToFolderDialog
            } else {
                Action::ApplyToFolder(typed.into())
            });
        }
        if running && ui.button("Stop folder run").clicked() {
            actions.push(Action::Cancel);
        }
    });
    let Some(run) = &state.folder else {
        return;
    };
    if run.running {
        let photo = run.current.as_deref().unwrap_or("starting");
        let step = run
            .step
            .map_or(String::new(), |(s, n)| format!(" · step {}/{n}", s + 1));
        let left = run
            .seconds_left
            .map_or(String::new(), |s| format!(" · about {} left", fmt_secs(s)));
        let stopping = if run.cancel_requested {
            " · stopping after this step"
        } else {
            ""
        };
        ui.add(egui::ProgressBar::new(run.fraction()).text(format!(
            "{}/{} photos · {photo}{step}{left}{stopping}",
            run.finished, run.photos
        )));
    } else if let Some(report) = &run.report {
        ui.label(format!(
            "{} into {}",
            report.summary(),
            run.out_dir.display()
        ));
    }
    for (name, why) in &run.failed {
        // The short reason in the panel, the reader's own words on hover.
        let short = if run.unreadable.contains(name) {
            "not a readable photo"
        } else {
            "could not be translated"
        };
        ui.label(
            RichText::new(format!("{name}: {short}"))
                .small()
                .color(super::style::ERROR),
        )
        .on_hover_text(why.as_str());
    }
}
