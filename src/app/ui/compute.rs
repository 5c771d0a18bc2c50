//! Where the engine computes and in which number format (in the Advanced section), and the
//! status-bar words for the device in use.

use egui::{RichText, Ui};

use crate::app::action::Action;
use crate::app::state::AppState;
use mirror_engine::device::{DeviceChoice, Precision, compiled_in};

/// Device and precision choices; a change reloads the model on the new choice.
pub fn compute_settings(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
    let before = state.settings.compute();
    let s = &mut state.settings;
    egui::ComboBox::from_label("Compute device")
        .selected_text(s.device.label())
        .show_ui(ui, |ui| {
            for choice in DeviceChoice::ALL {
                let hint = if compiled_in(choice) {
                    "Used when the model loads; the CPU takes over if it cannot be used."
                } else {
                    "Not in this build of Mirror: choosing it computes on the CPU."
                };
                ui.selectable_value(&mut s.device, choice, choice.label())
                    .on_hover_text(hint);
            }
        })
        .response
        .on_hover_text("Where the model computes. A GPU is many times faster.");
    egui::ComboBox::from_label("Precision")
        .selected_text(s.precision.label())
        .show_ui(ui, |ui| {
            for p in Precision::ALL {
                ui.selectable_value(&mut s.precision, p, p.label());
            }
        })
        .response
        .on_hover_text(
            "Number format of the steps that need no gradients (reading the prompts, \
             analysing the photo, plain DDIM, decoding). Half formats are faster on a GPU and \
             use less memory; the mirror refinement always uses full precision.",
        );
    if state.settings.compute() != before
        && let Some(path) = state.model_ready().map(|m| m.path.clone())
    {
        if state.progress.running {
            state.note("The new device applies to the next model load (a run is in progress).");
        } else {
            actions.push(Action::LoadModel(path));
        }
    }
}

/// "Computing on CPU (2 threads), f32"; the fallback reason, when there was one, in hover text
/// and colour.
pub fn device_label(ui: &mut Ui, state: &AppState) {
    let Some(m) = state.model_ready() else {
        return;
    };
    let text = format!("Computing on {}, {}", m.device, m.precision);
    match &m.fallback {
        None => {
            ui.label(RichText::new(text).small().weak());
        }
        Some(why) => {
            ui.label(
                RichText::new(format!("{text} (fallback)"))
                    .small()
                    .color(ui.visuals().warn_fg_color),
            )
            .on_hover_text(why);
        }
    }
}
