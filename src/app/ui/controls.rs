//! The left panel: image, prompts and presets, advanced settings, Run / Cancel and export.

use egui::{RichText, Ui, Vec2};

use crate::app::Action;
use crate::app::presets::PRESETS;
use crate::app::state::AppState;
use crate::app::textures::Textures;
use crate::engine::direction::find_edit_phrase;
use crate::engine::imageio::{ResizePolicy, describe_resize, plan_size};
use crate::engine::methods::mirror::MirrorPreset;

pub fn controls(ui: &mut Ui, state: &mut AppState, tex: &mut Textures, actions: &mut Vec<Action>) {
    image_section(ui, state, tex, actions);
    ui.separator();
    prompt_section(ui, state, actions);
    ui.separator();
    advanced_section(ui, state);
    ui.separator();
    run_section(ui, state, actions);
    ui.separator();
    export_section(ui, state, actions);
}

fn image_section(ui: &mut Ui, state: &mut AppState, tex: &mut Textures, actions: &mut Vec<Action>) {
    ui.label(RichText::new("Image").strong());
    ui.horizontal(|ui| {
        if ui.button("Open image…").clicked() {
            actions.push(Action::OpenImageDialog);
        }
        if ui
            .button("Paste")
            .on_hover_text("Paste an image or a file path (Ctrl+V)")
            .clicked()
        {
            actions.push(Action::PasteImage);
        }
    });
    let Some(img) = &state.image else {
        ui.label(
            RichText::new("Drop an image on the window, open one (Ctrl+O) or paste it.").weak(),
        );
        return;
    };
    let t = tex.rgb(ui.ctx(), "source/thumb", Some(&img.loaded.rgb));
    super::tile(
        ui,
        t.as_ref(),
        &img.name,
        Vec2::new(ui.available_width().min(300.0), 200.0),
    );
    let (w, h) = img.loaded.original_size;
    ui.label(format!("{w}×{h} pixels"));
    egui::ComboBox::from_label("Resize")
        .selected_text(state.resize.name())
        .show_ui(ui, |ui| {
            for p in ResizePolicy::ALL {
                ui.selectable_value(&mut state.resize, p, p.name());
            }
        });
    if let Some(m) = state.model_ready() {
        match plan_size((w, h), None, m.default_side, m.size_multiple) {
            Ok(target) => {
                ui.label(
                    RichText::new(
                        describe_resize((w, h), target, state.resize).replace(" → ", " -> "),
                    )
                    .weak(),
                );
            }
            Err(e) => {
                ui.label(RichText::new(e.to_string()).color(super::style::ERROR));
            }
        }
    }
}

fn prompt_section(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
    ui.label(RichText::new("Edit").strong());
    egui::ComboBox::from_label("Preset")
        .selected_text("choose…")
        .show_ui(ui, |ui| {
            for (i, p) in PRESETS.iter().enumerate() {
                if ui.selectable_label(false, p.name).clicked() {
                    actions.push(Action::ApplyPreset(i));
                }
            }
        });
    let a = super::text_field(
        ui,
        "Source prompt",
        &mut state.source_prompt,
        "what the image shows",
    );
    let b = super::text_field(
        ui,
        "Target prompt",
        &mut state.target_prompt,
        "what it should become",
    );
    if a.lost_focus() || b.lost_focus() {
        actions.push(Action::Tokenize);
    }
    match find_edit_phrase(&state.source_prompt, &state.target_prompt) {
        Ok(p) if p.source.is_empty() && p.target.is_empty() => {
            ui.label(
                RichText::new("The prompts are the same: nothing to edit.")
                    .color(super::style::ERROR),
            );
        }
        Ok(p) => {
            let show = |s: &str| {
                if s.is_empty() {
                    "(nothing)".to_string()
                } else {
                    format!("“{s}”")
                }
            };
            ui.label(
                RichText::new(format!(
                    "Edit: {} into {}",
                    show(&p.source),
                    show(&p.target)
                ))
                .color(super::style::ACCENT),
            );
        }
        Err(_) => {
            ui.label(RichText::new("Type both prompts to see the edit.").weak());
        }
    }
}

fn advanced_section(ui: &mut Ui, state: &mut AppState) {
    let r = &mut state.run;
    egui::CollapsingHeader::new("Advanced")
        .open(state.show_advanced.then_some(true))
        .show(ui, |ui| {
            ui.add(egui::Slider::new(&mut r.steps, 1..=100).text("Steps"));
            ui.add(egui::Slider::new(&mut r.strength, 0.0..=2.0).text("Strength"));
            ui.add(egui::Slider::new(&mut r.guidance, 1.0..=15.0).text("Guidance"));
            ui.add(
                egui::Slider::new(&mut r.redescription_iterations, 0..=30)
                    .text("Redescription iterations"),
            );
            ui.add(egui::Slider::new(&mut r.decode_every, 0..=20).text("Decode previews every"))
                .on_hover_text(
                    "Full VAE decode of the previews every k steps (0: fast latent previews only)",
                );
            let mut seed = r.seed as f64;
            if ui
                .add(
                    egui::Slider::new(&mut seed, 0.0..=99999.0)
                        .step_by(1.0)
                        .text("Seed"),
                )
                .changed()
            {
                r.seed = seed as u64;
            }
            egui::ComboBox::from_label("Method preset")
                .selected_text(r.preset.to_string())
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut r.preset, MirrorPreset::Recommended, "recommended");
                    ui.selectable_value(&mut r.preset, MirrorPreset::Authors, "authors");
                });
            ui.checkbox(&mut r.compare_ddim, "Also run plain DDIM (for comparison)");
            ui.label(
                RichText::new("Custom sentences (one a line; both lists, or none for templates)")
                    .small(),
            );
            let l = ui.label("Source sentences");
            ui.add(
                egui::TextEdit::multiline(&mut r.source_sentences)
                    .desired_rows(2)
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(l.id);
            let l = ui.label("Target sentences");
            ui.add(
                egui::TextEdit::multiline(&mut r.target_sentences)
                    .desired_rows(2)
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(l.id);
        });
}

fn run_section(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
    let running = state.progress.running;
    ui.horizontal(|ui| {
        let can_run = !running && state.image.is_some();
        let run = egui::Button::new(RichText::new("Run").strong()).min_size(Vec2::new(90.0, 28.0));
        if ui
            .add_enabled(can_run, run)
            .on_hover_text("Ctrl+Enter")
            .clicked()
        {
            actions.push(Action::Run);
        }
        if ui
            .add_enabled(
                running,
                egui::Button::new("Cancel").min_size(Vec2::new(70.0, 28.0)),
            )
            .on_hover_text("Esc")
            .clicked()
        {
            actions.push(Action::Cancel);
        }
    });
    if running {
        let p = &state.progress;
        let phase = p.phase.map_or("starting", |ph| ph.label());
        let eta = state.eta().map_or(String::new(), |s| {
            format!(" · {} left", super::status::fmt_secs(s))
        });
        ui.add(egui::ProgressBar::new(p.fraction).text(format!("{phase}{eta}")));
    }
    if state.progress.reuses_inversion {
        ui.label(
            RichText::new("Re-edit: the cached inversion of this image is reused.")
                .color(super::style::COOL),
        );
    }
}

fn export_section(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
    ui.label(RichText::new("Export").strong());
    ui.horizontal(|ui| {
        let l = ui.label("Export folder");
        ui.add(egui::TextEdit::singleline(&mut state.export_dir).desired_width(170.0))
            .labelled_by(l.id);
        if ui
            .button("…")
            .on_hover_text("Choose the export folder")
            .clicked()
        {
            actions.push(Action::ChooseExportDir);
        }
    });
    let ready = state.result.is_some() || !state.frames.is_empty();
    ui.horizontal(|ui| {
        if ui.add_enabled(ready, egui::Button::new("Export all")).on_hover_text("Ctrl+S: translation PNG with its recipe, comparison sheet, step animation, attention maps").clicked() {
            actions.push(Action::Export);
        }
        if ui.add_enabled(ready, egui::Button::new("Save translation as…")).clicked() {
            actions.push(Action::SaveTranslationAs);
        }
    });
}
