//! The left panel: image, prompts and presets, advanced settings, Run / Cancel and export.

use egui::{RichText, Ui, Vec2};

use super::format::{fmt_secs, phase_words};
use crate::app::action::Action;
use crate::app::jobs::RunKind;
use crate::app::run_settings::EditRegion;
use crate::app::state::method_label;
use crate::app::state::{AppState, View};
use crate::app::textures::Textures;
use mirror_engine::direction::find_edit_phrase;
use mirror_engine::imageio::{ResizePolicy, describe_resize, processing_size};
use mirror_engine::methods::mirror::{GuidanceBase, MirrorPreset, MirrorSettings};
use mirror_engine::session::Method;
use mirror_engine::vae::VaeTiles;

/// The methods the app offers, with what each does.
const METHODS: [(Method, &str); 3] = [
    (
        Method::Mirror,
        "Recommended: keeps everything but the edited object in place by making the \
         reconstruction mirror the photo at every step.",
    ),
    (
        Method::Pix2PixZero,
        "Edits along a direction learned from example sentences, guided to keep the photo's \
         layout.",
    ),
    (
        Method::Ddim,
        "The plain baseline: analyse the photo, then regenerate it with the new prompt. \
         The background often changes too.",
    ),
];

/// The MirrorDiffusion variants, with what each does.
const PRESETS_SHOWN: [(MirrorPreset, &str); 2] = [
    (
        MirrorPreset::Recommended,
        "Recommended: consistent settings that scale to any number of steps.",
    ),
    (
        MirrorPreset::Authors,
        "As in the authors' released code, step for step.",
    ),
];

/// How closely MirrorDiffusion's reconstruction follows the photo, with its measured cost
/// (demo model, 20 steps, 2 CPU threads, `docs/quality.md`).
#[derive(Clone, Copy, PartialEq)]
enum MirrorMode {
    Described,
    Exact,
    ExactFast,
}

const MIRROR_MODES: [(MirrorMode, &str, &str); 3] = [
    (
        MirrorMode::Described,
        "as described",
        "The reconstruction is steered to the photo by refining its description at every \
         step (the paper's method). Demo edit: about 1.3 s on one CPU thread.",
    ),
    (
        MirrorMode::Exact,
        "exact mirror",
        "The reconstruction is put back on the photo's own path after every step, so it is \
         the photo itself; the edit keeps the same correction. Demo edit: about 1 s.",
    ),
    (
        MirrorMode::ExactFast,
        "exact mirror, fast",
        "The exact mirror without refining the description: the same reconstruction, \
         edits as good or better on the demo model, fastest. Demo edit: about 0.7 s.",
    ),
];

fn mirror_mode(ui: &mut Ui, state: &mut AppState) {
    let recommended_iterations = state
        .model_recommends()
        .and_then(|r| r.redescribe_iterations)
        .unwrap_or(MirrorSettings::default().redescribe.iterations);
    let mirror = &mut state.settings.run.mirror;
    let now = match (mirror.exact_mirror, mirror.redescribe.iterations) {
        (false, _) => MirrorMode::Described,
        (true, 0) => MirrorMode::ExactFast,
        (true, _) => MirrorMode::Exact,
    };
    let mut chosen = now;
    let shown = |m: MirrorMode| MIRROR_MODES.iter().find(|(k, ..)| *k == m);
    egui::ComboBox::from_label("Reconstruction")
        .selected_text(shown(now).map_or("", |(_, label, _)| *label))
        .show_ui(ui, |ui| {
            for (mode, label, hint) in MIRROR_MODES {
                ui.selectable_value(&mut chosen, mode, label)
                    .on_hover_text(hint);
            }
        })
        .response
        .on_hover_text(shown(now).map_or("", |(.., hint)| *hint));
    if chosen != now {
        mirror.exact_mirror = chosen != MirrorMode::Described;
        mirror.redescribe.iterations = match chosen {
            MirrorMode::ExactFast => 0,
            _ if mirror.redescribe.iterations == 0 => recommended_iterations,
            _ => mirror.redescribe.iterations,
        };
    }
}

fn edit_region(ui: &mut Ui, state: &mut AppState) {
    let region = &mut state.settings.run.edit_region;
    let before = *region;
    egui::ComboBox::from_label("Edit region")
        .selected_text(region.label())
        .show_ui(ui, |ui| {
            for r in EditRegion::ALL {
                ui.selectable_value(region, r, r.label())
                    .on_hover_text(r.hint());
            }
        })
        .response
        .on_hover_text(region.hint());
    // Painting happens on the photo, in its own tab.
    if *region == EditRegion::Painted && before != EditRegion::Painted {
        state.view = View::Mask;
    }
}

fn preset_label(p: MirrorPreset) -> &'static str {
    match p {
        MirrorPreset::Recommended => "recommended",
        MirrorPreset::Authors => "as the authors' code",
    }
}

/// A resize choice in a few words (the menu says more).
fn short_resize(p: ResizePolicy) -> &'static str {
    match p {
        ResizePolicy::Keep => "keep the shape",
        ResizePolicy::Crop => "crop to square",
        ResizePolicy::Stretch => "stretch to square",
        ResizePolicy::Pad => "pad to square",
    }
}

/// The part of the panel that scrolls: image, prompts, advanced settings.
pub fn controls(ui: &mut Ui, state: &mut AppState, tex: &mut Textures, actions: &mut Vec<Action>) {
    image_section(ui, state, tex, actions);
    ui.separator();
    prompt_section(ui, state, actions);
    ui.separator();
    advanced_section(ui, state, actions);
}

/// The part pinned to the panel's bottom, always in view: Run and export.
pub fn run_and_export(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
    ui.add_space(4.0);
    run_section(ui, state, actions);
    ui.separator();
    export_section(ui, state, actions);
    super::folder::folder_section(ui, state, actions);
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
        if state.demo_model_loaded()
            && ui
                .button("New demo image")
                .on_hover_text("Draw another shape, with its caption and a one-word edit")
                .clicked()
        {
            actions.push(Action::NewDemoImage);
        }
    });
    if state.image.is_none() || state.dialog_hint {
        super::path_entry(ui, state, actions, "or type the image's path");
    }
    let Some(img) = &state.image else {
        ui.label(
            RichText::new("Drop an image on the window, open one (Ctrl+O) or paste it (Ctrl+V).")
                .weak(),
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
    let resize = &mut state.settings.resize;
    egui::ComboBox::from_label("Resize")
        .selected_text(short_resize(*resize))
        .show_ui(ui, |ui| {
            for p in ResizePolicy::ALL {
                ui.selectable_value(resize, p, p.describe());
            }
        })
        .response
        .on_hover_text(resize.describe());
    let resize = *resize;
    if let Some(m) = state.model_ready() {
        match processing_size((w, h), None, resize, m.default_side, m.size_multiple) {
            Ok(target) => {
                ui.label(
                    RichText::new(describe_resize((w, h), target, resize).replace(" → ", " -> "))
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
    let method = &mut state.settings.run.method;
    egui::ComboBox::from_label("Method")
        .selected_text(method_label(*method))
        .show_ui(ui, |ui| {
            for (m, hint) in METHODS {
                ui.selectable_value(method, m, method_label(m))
                    .on_hover_text(hint);
            }
        })
        .response
        .on_hover_text(
            METHODS
                .iter()
                .find(|(m, _)| m == method)
                .map_or("", |(_, hint)| *hint),
        );
    if *method == Method::Mirror {
        mirror_mode(ui, state);
    }
    edit_region(ui, state);
    egui::ComboBox::from_label("Preset")
        .selected_text("choose…")
        .show_ui(ui, |ui| {
            for (i, p) in state.edits().iter().enumerate() {
                if ui.selectable_label(false, &p.name).clicked() {
                    actions.push(Action::ApplyPreset(i));
                }
            }
        });
    let a = super::text_field(
        ui,
        "Source prompt",
        &mut state.settings.source_prompt,
        "what the image shows",
    );
    let b = super::text_field(
        ui,
        "Target prompt",
        &mut state.settings.target_prompt,
        "what it should become",
    );
    if a.lost_focus() || b.lost_focus() {
        actions.push(Action::Tokenize);
    }
    // Before Run: a word the model does not know would silently become its unknown token.
    if let Some(message) = state.unknown_words_message() {
        ui.label(RichText::new(message).color(super::style::ERROR));
    }
    if let Some(message) = state.truncation_message() {
        ui.label(RichText::new(message).color(super::style::ACCENT));
    }
    let l = ui.label("More targets (one a line)");
    let hints = state.target_hints();
    ui.add(
        egui::TextEdit::multiline(&mut state.more_targets)
            .hint_text(hints)
            .desired_rows(2)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(l.id)
    .on_hover_text(
        "Each line is another target for the same photo: the photo is analysed once, \
         then every target runs on it (\"Run all targets\").",
    );
    let prompts = &state.settings;
    match find_edit_phrase(&prompts.source_prompt, &prompts.target_prompt) {
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

#[expect(
    clippy::too_many_lines,
    reason = "one widget after another; to be split with the app-state work of issue 18"
)]
fn advanced_section(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
    let open = state.show_advanced.then_some(true);
    let recommends = state.model_recommends().cloned();
    egui::CollapsingHeader::new("Advanced")
        .open(open)
        .show(ui, |ui| {
            super::compute::compute_settings(ui, state, actions);
            super::loras::lora_section(ui, state, actions);
            let r = &mut state.settings.run;
            ui.add(egui::Slider::new(&mut r.steps, 1..=100).text("Steps"))
                .on_hover_text("More steps: finer results, longer runs.");
            ui.add(egui::Slider::new(&mut r.edit_strength, 0.0..=2.0).text("Strength"))
                .on_hover_text("How far the edit goes: 0 keeps the photo, 1 is the full edit.");
            ui.add(egui::Slider::new(&mut r.mirror.guidance_scale, 1.0..=15.0).text("Guidance"))
                .on_hover_text("How strongly the target prompt is followed.");
            ui.add(
                egui::Slider::new(&mut r.mirror.xa_guidance, 0.0..=2.0)
                    .text("Structure guidance")
                    .step_by(0.01),
            )
            .on_hover_text(
                "How strongly the layout of the photo is held in place while editing \
                 (MirrorDiffusion and pix2pix-zero).",
            );
            ui.add(
                egui::Slider::new(&mut r.mirror.xa_guidance_until, 0.0..=1.0)
                    .text("Structure held over")
                    .custom_formatter(|v, _| format!("{:.0} % of the steps", v * 100.0))
                    .step_by(0.05),
            )
            .on_hover_text(
                "MirrorDiffusion: the first steps lay out the picture; structure guidance after \
                 them mostly holds the new content back.",
            );
            ui.add(
                egui::Slider::new(&mut r.mirror.inject_until, 0.0..=1.0)
                    .text("Layout kept over")
                    .custom_formatter(|v, _| format!("{:.0} % of the steps", v * 100.0))
                    .step_by(0.05),
            )
            .on_hover_text(
                "MirrorDiffusion: on these first steps the edit reads its words where the photo's \
                 own words are, so the picture keeps its layout while it forms.",
            );
            let mut against_nothing = r.mirror.guidance_base == GuidanceBase::EmptyPrompt;
            if ui
                .checkbox(&mut against_nothing, "Guide every word")
                .on_hover_text(
                    "MirrorDiffusion: guidance follows every word of the target, the unchanged \
                     ones too (as plain DDIM does), instead of only what the edit changes.",
                )
                .changed()
            {
                r.mirror.guidance_base = if against_nothing {
                    GuidanceBase::EmptyPrompt
                } else {
                    GuidanceBase::Description
                };
            }
            ui.add(
                egui::Slider::new(&mut r.mirror.redescribe.iterations, 0..=30)
                    .text("Redescription iterations"),
            )
            .on_hover_text(
                "MirrorDiffusion refines the description of the photo at every step so that \
                 the reconstruction mirrors it; more iterations: closer, slower.",
            );
            ui.add(egui::Slider::new(&mut r.decode_every, 0..=20).text("Decode previews every"))
                .on_hover_text(
                    "Full VAE decode of the previews every k steps (0: fast latent previews only)",
                );
            egui::ComboBox::from_label("VAE tiles")
                .selected_text(r.vae_tiles.word())
                .show_ui(ui, |ui| {
                    for mode in VaeTiles::ALL {
                        ui.selectable_value(&mut r.vae_tiles, mode, mode.label());
                    }
                })
                .response
                .on_hover_text(
                    "Large images can go through the image encoder and decoder in overlapping \
                     tiles: less memory, slightly different pixels. auto uses tiles only when \
                     the image would not fit in memory.",
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
            let label = |p: MirrorPreset| match (p, &recommends) {
                (MirrorPreset::Recommended, Some(_)) => "recommended by the model",
                _ => preset_label(p),
            };
            let mut preset = r.mirror.preset;
            egui::ComboBox::from_label("MirrorDiffusion variant")
                .selected_text(label(preset))
                .show_ui(ui, |ui| {
                    for (p, hint) in PRESETS_SHOWN {
                        ui.selectable_value(&mut preset, p, label(p))
                            .on_hover_text(hint);
                    }
                });
            if preset != r.mirror.preset {
                r.choose_preset(preset, recommends.as_ref());
            }
            if let Some(rec) = &recommends {
                ui.label(
                    RichText::new(format!(
                        "This model recommends {}; the recommended variant uses them.",
                        rec.describe()
                    ))
                    .small()
                    .weak(),
                );
            }
            ui.checkbox(&mut r.compare_ddim, "Also run plain DDIM (for comparison)")
                .on_hover_text("Shows what plain DDIM makes of the same photo, step by step.");
            ui.checkbox(
                &mut r.direction_from_prompts,
                "Edit direction from the two prompts only",
            )
            .on_hover_text(
                "Off: the direction comes from many example sentences around the changed words \
                 (more robust).",
            );
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
    let can_run = !running
        && !state.folder_running()
        && state.image.is_some()
        && state.unknown_words_message().is_none();
    ui.horizontal_wrapped(|ui| {
        let run = egui::Button::new(RichText::new("Run").strong()).min_size(Vec2::new(90.0, 28.0));
        if ui
            .add_enabled(can_run, run)
            .on_hover_text("Translate with the chosen method (Ctrl+Enter)")
            .clicked()
        {
            actions.push(Action::Run(RunKind::Single));
        }
        if ui
            .add_enabled(can_run, egui::Button::new("Compare methods"))
            .on_hover_text(
                "MirrorDiffusion, pix2pix-zero and plain DDIM on the same photo, side by side \
                 (the photo is analysed once).",
            )
            .clicked()
        {
            actions.push(Action::Run(RunKind::Compare));
        }
        let has_more = state.more_targets.lines().any(|l| !l.trim().is_empty());
        if ui
            .add_enabled(can_run && has_more, egui::Button::new("Run all targets"))
            .on_hover_text("The target prompt and every extra target, one after another.")
            .clicked()
        {
            actions.push(Action::Run(RunKind::Targets));
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
        let phase = p.phase.map_or("starting", |ph| phase_words(ph));
        let part = if p.parts > 1 {
            format!("{} ({}/{}) · ", p.part_label, p.part + 1, p.parts)
        } else {
            String::new()
        };
        let work = p.step_work.map_or(String::new(), |w| {
            let redescribe = w
                .redescription
                .map_or(String::new(), |(i, n)| format!(" · redescription {i}/{n}"));
            format!(
                " · step {}/{}{redescribe} · {} of {} network passes",
                w.step + 1,
                w.steps,
                w.unet_calls,
                w.unet_calls_expected
            )
        });
        let eta = state
            .eta()
            .map_or(String::new(), |s| format!(" · {} left", fmt_secs(s)));
        ui.add(egui::ProgressBar::new(p.fraction).text(format!("{part}{phase}{eta}")));
        if !work.is_empty() {
            ui.label(RichText::new(work.trim_start_matches(" · ")).small().weak());
        }
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
        ui.add(egui::TextEdit::singleline(&mut state.settings.export_dir).desired_width(170.0))
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
