//! The first screen, before a model is loaded: what Mirror does and how to get a model.

use std::path::PathBuf;
use std::sync::OnceLock;

use egui::{RichText, Ui};

use crate::app::action::Action;
use crate::app::state::{AppState, ModelStatus};
use crate::worker::{Worker, WorkerEvent};
use mirror_engine::loader::{CachedModel, find_cached_models};

/// The Hub repositories offered for download.
pub const DOWNLOADS: [(&str, &str); 2] = [
    (
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "Stable Diffusion 1.5",
    ),
    ("CompVis/stable-diffusion-v1-4", "Stable Diffusion 1.4"),
];

fn cached_models() -> &'static [CachedModel] {
    static CACHE: OnceLock<Vec<CachedModel>> = OnceLock::new();
    CACHE.get_or_init(find_cached_models)
}

pub fn welcome(ui: &mut Ui, state: &mut AppState, actions: &mut Vec<Action>) {
    ui.vertical_centered(|ui| {
        ui.set_max_width(620.0);
        ui.add_space(40.0);
        ui.heading(RichText::new("Mirror").size(32.0));
        ui.label(
            "Zero-shot image translation with Stable Diffusion: turn a cat into a dog, a photo into \
             a watercolour, while everything else in the picture stays put (MirrorDiffusion).",
        );
        ui.add_space(18.0);
        match &state.model {
            ModelStatus::Loading(p) => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(format!("Loading {} …", p.display()));
                });
                return;
            }
            ModelStatus::Failed { path, .. } => {
                ui.label(
                    RichText::new(format!("{} could not be loaded; pick another model.", path.display()))
                        .color(super::style::ERROR),
                );
                ui.add_space(8.0);
            }
            _ => {}
        }
        ui.label(RichText::new("Step 1 — choose a Stable Diffusion 1.x model").strong());
        ui.label(RichText::new("A diffusers folder (with model_index.json) or a single .safetensors checkpoint.").weak());
        ui.horizontal(|ui| {
            if ui.button("Open model folder…").clicked() {
                actions.push(Action::OpenModelDialog { folder: true });
            }
            if ui.button("Open checkpoint file…").clicked() {
                actions.push(Action::OpenModelDialog { folder: false });
            }
        });
        super::path_entry(ui, state, actions, "or type the model's folder or file path");
        ui.add_space(6.0);
        ui.horizontal(|ui| {
            if ui.button(mirror_engine::demo::NAME).clicked() {
                actions.push(Action::LoadDemoModel);
            }
            ui.label(
                RichText::new("built in: coloured shapes, to see what Mirror does in a minute")
                    .weak(),
            );
        });
        ui.add_space(10.0);
        let cached = cached_models();
        if !cached.is_empty() {
            ui.label(RichText::new("Found in the Hugging Face cache").strong());
            for m in cached {
                if ui.button(format!("Load {}", m.repo_id)).clicked() {
                    actions.push(Action::LoadModel(m.snapshot.clone()));
                }
            }
            ui.add_space(10.0);
        }
        let recent: Vec<PathBuf> = state.settings.recent_models.clone();
        if !recent.is_empty() {
            ui.label(RichText::new("Recent models").strong());
            for p in recent {
                let name = p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into());
                if ui.button(format!("Load {name}")).on_hover_text(p.display().to_string()).clicked() {
                    actions.push(Action::LoadModel(p));
                }
            }
            ui.add_space(10.0);
        }
        ui.label(RichText::new("Or download one from the Hugging Face Hub (about 4 GB)").strong());
        if let Some((done, total, file)) = &state.download {
            let f = if *total > 0 { *done as f32 / *total as f32 } else { 0.0 };
            ui.add(egui::ProgressBar::new(f).text(format!("{file}: {} / {} MB", done >> 20, total >> 20)));
        } else {
            ui.horizontal(|ui| {
                for (repo, name) in DOWNLOADS {
                    if ui.button(format!("Download {name}")).on_hover_text(repo).clicked() {
                        actions.push(Action::Download(repo));
                    }
                }
            });
        }
        ui.add_space(18.0);
        ui.label(
            RichText::new("Step 2 — open an image (Ctrl+O, drop a file on the window, or paste), type what it shows and what it should become, and press Run (Ctrl+Enter).")
                .weak(),
        );
    });
}

/// Starts a Hub download on its own thread; progress comes back as worker events.
pub fn start_download(worker: &Worker, state: &mut AppState, repo: &'static str) {
    if state.download.is_some() {
        return;
    }
    if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v != "0") {
        state.error("Downloads are off: HF_HUB_OFFLINE is set. Open a model folder instead.");
        return;
    }
    state.download = Some((0, 0, "connecting…".into()));
    let tx = worker.event_sender();
    std::thread::spawn(move || {
        let event = match crate::app::download::download(repo, &tx) {
            Ok(path) => WorkerEvent::DownloadFinished(path),
            Err(e) => WorkerEvent::DownloadFailed(e),
        };
        let _ = tx.send(event);
    });
}
