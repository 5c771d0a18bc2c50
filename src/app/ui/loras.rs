//! The LoRA list under Advanced: each file with its strength, remove, add (dialog or path).

use egui::{RichText, Ui};

use crate::app::action::Action;
use crate::app::state::AppState;

pub fn lora_section(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
    egui::CollapsingHeader::new("LoRAs")
        .default_open(!state.settings.loras.is_empty())
        .show(ui, |ui| {
            if state.settings.loras.is_empty() {
                ui.label(
                    RichText::new(
                        "Styles and characters trained for your model (.safetensors LoRA \
                         files), merged into it at the strength you set.",
                    )
                    .small()
                    .weak(),
                );
            }
            let applied = state.applied_loras.clone();
            let mut remove = None;
            for (i, lora) in state.settings.loras.iter_mut().enumerate() {
                let name = lora.file_name();
                ui.horizontal(|ui| {
                    let merged = applied
                        .iter()
                        .find(|a| a.file_name == name && a.strength == lora.strength);
                    let slider = ui
                        .add(egui::Slider::new(&mut lora.strength, 0.0..=2.0).text(&name))
                        .on_hover_text(match merged {
                            Some(m) => format!("merged: {} weights changed", m.matched_layers),
                            None => "not merged yet".into(),
                        });
                    // Merging rebuilds the networks: once the slider is let go, not per drag.
                    if slider.drag_stopped() || (slider.changed() && !slider.dragged()) {
                        actions.push(Action::ApplyLoras);
                    }
                    if ui.small_button(format!("Remove {name}")).clicked() {
                        remove = Some(i);
                    }
                });
            }
            if let Some(i) = remove {
                actions.push(Action::RemoveLora(i));
            }
            ui.horizontal(|ui| {
                if ui.button("Add LoRA…").clicked() {
                    actions.push(Action::AddLoraDialog);
                }
                let l = ui.label("LoRA file");
                let field = ui
                    .add(
                        egui::TextEdit::singleline(&mut state.lora_field)
                            .hint_text("path to a .safetensors LoRA")
                            .desired_width(160.0),
                    )
                    .labelled_by(l.id);
                let entered = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                if (ui.button("Add").clicked() || entered) && !state.lora_field.trim().is_empty() {
                    let path = std::path::PathBuf::from(state.lora_field.trim());
                    state.lora_field.clear();
                    actions.push(Action::AddLora(path));
                }
            });
        });
}
