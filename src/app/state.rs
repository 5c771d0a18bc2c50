//! The app's state as plain data: no drawing here. The UI modules read and change it; the
//! worker's events update it in `apply_event`. What the user sets lives once, in
//! [`Settings`] (persisted); everything else here lasts for the session only.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::worker::{ModelSummary, RunSummary, StepFrame, WorkerEvent};
use mirror_engine::imageio::LoadedImage;
use std::sync::Arc;

use mirror_engine::pipeline::{Branch, Phase, StepWork, TokenHeatmaps};
use mirror_engine::recipe::Recipe;
use mirror_engine::session::Method;
use mirror_engine::tokenizer::TokenWord;

pub use super::jobs::RunKind;
use super::settings::Settings;

#[derive(Debug, Clone, Default)]
pub enum ModelStatus {
    #[default]
    None,
    Loading(PathBuf),
    Ready(ModelSummary),
    Failed {
        path: PathBuf,
        message: String,
    },
}

/// The image being edited.
#[derive(Debug, Clone)]
pub struct SourceImage {
    pub loaded: LoadedImage,
    /// A short name for the UI ("cat.png", "pasted image").
    pub name: String,
}

/// What the run in progress (or the last one) is doing.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub running: bool,
    /// The part of the job running (a comparison or several targets have several), from 0.
    pub part: usize,
    pub parts: usize,
    pub part_label: String,
    /// Progress of the running part alone, 0..=1.
    pub part_fraction: f32,
    /// Work inside the current step (UNet calls, redescription iteration), when the engine
    /// reports it.
    pub step_work: Option<StepWork>,
    pub phase: Option<Phase>,
    pub phase_step: usize,
    pub phase_steps: usize,
    /// 0..=1 over the whole run.
    pub fraction: f32,
    pub started: Option<Instant>,
    pub cancel_requested: bool,
    pub reuses_inversion: bool,
}

/// The shape of the running (or last) run: which branches it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct RunShape {
    pub kind: RunKind,
    pub method: Method,
    pub compare_ddim: bool,
}

/// The branches of the three methods, in display order.
pub const ALL_BRANCHES: [Branch; 6] = Branch::ALL;

/// One finished translation of a many-targets run.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub target: String,
    pub image: RgbImage,
}

/// The attention-map view's choices.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionView {
    /// Token index (position in the source prompt's token sequence) and its word.
    pub token: Option<(usize, String)>,
    pub opacity: f32,
    /// Average over all steps instead of the timeline's step.
    pub averaged: bool,
    /// `None` = all resolutions averaged.
    pub resolution: Option<usize>,
}

impl Default for AttentionView {
    fn default() -> Self {
        Self {
            token: None,
            opacity: 0.6,
            averaged: false,
            resolution: None,
        }
    }
}

/// Frame-time bookkeeping (time spent inside `App::ui`).
#[derive(Debug, Clone, Default)]
pub struct FrameStats {
    pub last: Duration,
    pub run_frames: u32,
    pub run_total: Duration,
    pub run_max: Duration,
}

impl FrameStats {
    pub fn record(&mut self, d: Duration, running: bool) {
        self.last = d;
        if running {
            self.run_frames += 1;
            self.run_total += d;
            self.run_max = self.run_max.max(d);
        }
    }

    pub fn run_mean_ms(&self) -> f64 {
        if self.run_frames == 0 {
            0.0
        } else {
            self.run_total.as_secs_f64() * 1000.0 / self.run_frames as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    #[default]
    Steps,
    Compare,
    Attention,
    /// The photo with the painted edit mask.
    Mask,
}

/// The paint tools of the mask view.
#[derive(Debug, Clone, PartialEq)]
pub struct PaintTools {
    /// Brush radius as a share of the photo's longer side, in percent.
    pub size_percent: f32,
    /// 0: hard edge; 1: soft from the centre out.
    pub softness: f32,
    pub erase: bool,
    /// Show the mask as a tint over the photo.
    pub show_overlay: bool,
}

impl Default for PaintTools {
    fn default() -> Self {
        Self {
            size_percent: 6.0,
            softness: 0.5,
            erase: false,
            show_overlay: true,
        }
    }
}

/// What the before/after view puts side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompareWith {
    /// The source on the left, the translation on the right.
    #[default]
    Source,
    /// The method's reconstruction on the left (what the edit started from, as the model
    /// sees the photo).
    Reconstruction,
}

/// The before/after view's choices.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompareView {
    pub with: CompareWith,
    /// Show where the pixels changed instead of the split.
    pub difference: bool,
    /// Tint the run's edit mask over the split.
    pub show_mask: bool,
}

#[derive(Default)]
pub struct AppState {
    /// What the user sets (prompts, run knobs, resize, export folder, device): saved when
    /// it changes.
    pub settings: Settings,
    pub model: ModelStatus,
    pub image: Option<SourceImage>,
    pub progress: Progress,
    /// Every step of the running or last run, by step index.
    pub frames: Vec<StepFrame>,
    /// The step the timeline shows; `None` follows the newest.
    pub timeline: Option<usize>,
    pub result: Option<RunSummary>,
    /// The shape of the running or last run (None before the first).
    pub shape: Option<RunShape>,
    /// Several targets: one finished translation per target, in order.
    pub target_results: Vec<TargetResult>,
    /// More target prompts, one a line: each runs on the same inversion.
    pub more_targets: String,
    /// Which request the result came from (for recipes and re-edit).
    pub result_recipe: Option<Recipe>,
    pub source_tokens: Vec<TokenWord>,
    pub target_tokens: Vec<TokenWord>,
    pub attention: AttentionView,
    pub view: View,
    pub compare_split: f32,
    pub compare: CompareView,
    /// The painted edit mask of this photo (a new photo starts without one).
    pub mask: Option<super::mask::PaintedMask>,
    pub paint: PaintTools,
    /// Messages shown in the status line (newest last).
    pub notes: Vec<String>,
    /// Errors waiting for the user to read them (a modal shows the first).
    pub errors: Vec<String>,
    pub frame_stats: FrameStats,
    pub download: Option<(u64, u64, String)>,
    /// Print machine-checkable `EVENT …` lines on stdout (scripts, tests).
    pub print_events: bool,
    pub show_advanced: bool,
    /// Frames drawn since start (tests check the window keeps drawing while jobs run).
    pub frames_drawn: u64,
    /// A file dialog closed without a choice: show the other ways in prominently.
    pub dialog_hint: bool,
    /// Leave the frame time out of the status bar (steady snapshots).
    pub hide_frame_time: bool,
    /// The path field: an image or model path typed or pasted by the user.
    pub path_field: String,
    /// The seed of the demo image shown last ("New demo image" takes the next one).
    pub demo_seed: u64,
    /// The loaded model's notes and tokenizer, once read (prompt checks, recommendations).
    pub model_words: Option<std::sync::Arc<mirror_engine::model::ModelWords>>,
    /// The LoRA path being typed under Advanced → LoRAs.
    pub lora_field: String,
    /// The photo folder typed (or last chosen) for "Apply to a folder".
    pub folder_field: String,
    /// Show the photo-folder row under Export (a folder run was asked for).
    pub show_folder_row: bool,
    /// "Fill from the edit" is waiting for the worker's mask.
    pub finding_mask: bool,
    /// The folder run in progress, or the last one.
    pub folder: Option<super::folder::FolderRun>,
    /// The LoRAs merged into the loaded model (as the worker last reported).
    pub applied_loras: Vec<mirror_engine::loader::lora::LoraInfo>,
}

impl AppState {
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.emit(&format!("note {text}"));
        self.notes.push(text);
        if self.notes.len() > 50 {
            self.notes.remove(0);
        }
    }

    pub fn error(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.emit(&format!("error {text}"));
        self.errors.push(text);
    }

    /// The mask found from the edit fills the painted one (one undo step), and runs then use
    /// it.
    fn fill_found_mask(&mut self, found: Result<image::GrayImage, String>) {
        self.finding_mask = false;
        let found = match found {
            Ok(m) => m,
            Err(message) => {
                self.emit("mask_find_failed");
                return self.error(format!(
                    "The mask could not be found from the edit:\n{message}"
                ));
            }
        };
        let Some(mask) = self.mask_mut() else {
            return;
        };
        if mask.size() != found.dimensions() {
            // Another photo was opened meanwhile: the mask belongs to the old one.
            return;
        }
        mask.fill(found);
        let coverage = mask.coverage();
        self.settings.run.edit_region = super::run_settings::EditRegion::Painted;
        self.note(format!(
            "The mask found from the edit covers {:.0} % of the photo; paint or erase to adjust it.",
            coverage * 100.0
        ));
        self.emit(&format!("mask_filled coverage={coverage:.3}"));
    }

    /// A folder run ended: its summary in the status line (and the failures under the button).
    fn finish_folder(&mut self, result: Result<Box<crate::folder_run::FolderReport>, String>) {
        let Some(mut run) = self.folder.take() else {
            return;
        };
        match result {
            Ok(report) => {
                self.emit(&format!(
                    "folder_run_finished written={} failed={} skipped={} cancelled={}",
                    report.written.len(),
                    report.failed.len(),
                    report.skipped.len(),
                    report.cancelled
                ));
                self.note(format!(
                    "{} into {}",
                    report.summary(),
                    run.out_dir.display()
                ));
                run.finish(*report);
            }
            Err(message) => {
                run.running = false;
                self.emit("folder_run_failed");
                self.error(format!("The folder run could not go on:\n{message}"));
            }
        }
        self.folder = Some(run);
    }

    pub fn emit(&self, line: &str) {
        if self.print_events {
            println!("EVENT {line}");
        }
    }

    /// True when the loaded model is Mirror's own demo model.
    pub fn demo_model_loaded(&self) -> bool {
        self.model_ready()
            .is_some_and(|m| mirror_engine::demo::is_demo_path(&m.path))
    }

    /// A folder run is going on (the worker is busy with it).
    pub fn folder_running(&self) -> bool {
        self.folder.as_ref().is_some_and(|f| f.running)
    }

    pub fn model_ready(&self) -> Option<&ModelSummary> {
        match &self.model {
            ModelStatus::Ready(m) => Some(m),
            _ => None,
        }
    }

    /// The step index the previews show.
    pub fn shown_step(&self) -> Option<usize> {
        let last = self.frames.len().checked_sub(1)?;
        Some(self.timeline.map_or(last, |s| s.min(last)))
    }

    /// Seconds left, from the pace so far.
    pub fn eta(&self) -> Option<f64> {
        let started = self.progress.started?;
        let f = self.progress.fraction as f64;
        if !self.progress.running || f < 0.02 {
            return None;
        }
        let spent = started.elapsed().as_secs_f64();
        Some(spent * (1.0 - f) / f)
    }

    pub fn final_image(&self, branch: Branch) -> Option<&RgbImage> {
        self.result.as_ref()?.images.get(branch)
    }

    /// The painted mask of this photo, made (empty) the first time it is asked for.
    pub fn mask_mut(&mut self) -> Option<&mut super::mask::PaintedMask> {
        let size = self.image.as_ref()?.loaded.rgb.dimensions();
        if self.mask.as_ref().is_none_or(|m| m.size() != size) {
            self.mask = Some(super::mask::PaintedMask::new(size));
        }
        self.mask.as_mut()
    }

    /// The last run's mask when it was found from the edit the prompts still describe (it can
    /// fill the painted one without asking the engine again).
    pub fn found_mask(&self) -> Option<&image::GrayImage> {
        let found = self.result_recipe.as_ref().is_some_and(|r| {
            use mirror_engine::recipe::RecipeMask;
            matches!(r.mask, Some(RecipeMask::Automatic | RecipeMask::Attention))
                && r.source_prompt == self.settings.source_prompt.trim()
                && r.target_prompt == self.settings.target_prompt.trim()
        });
        self.result.as_ref()?.mask.as_ref().filter(|_| found)
    }

    /// The method whose translation is "the" result (the one Ctrl+S saves).
    pub fn main_method(&self) -> Method {
        self.shape
            .as_ref()
            .map_or(self.settings.run.method, |s| match s.kind {
                RunKind::Compare => Method::Mirror,
                _ => s.method,
            })
    }

    /// The branches the previews show, in display order: the method's reconstruction and
    /// translation (then plain DDIM's when compared), or all three methods in a comparison.
    pub fn preview_branches(&self) -> Vec<Branch> {
        let shape = self.shape.clone().unwrap_or(RunShape {
            kind: RunKind::Single,
            method: self.settings.run.method,
            compare_ddim: self.settings.run.compare_ddim,
        });
        if shape.kind == RunKind::Compare {
            return ALL_BRANCHES.to_vec();
        }
        let mut branches = vec![shape.method.reconstruction(), shape.method.translation()];
        if shape.compare_ddim && shape.method != Method::Ddim {
            branches.extend([Method::Ddim.reconstruction(), Method::Ddim.translation()]);
        }
        branches
    }

    /// Applies one worker event. Returns true when the model changed (textures to drop).
    #[expect(
        clippy::too_many_lines,
        reason = "one arm per worker event; splitting it is part of the app-state work of issue 18"
    )]
    pub fn apply_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::ModelLoading(path) => {
                self.emit(&format!("model_loading {}", path.display()));
                self.model = ModelStatus::Loading(path);
                self.model_words = None;
            }
            WorkerEvent::ModelLoaded(mut m) => {
                if mirror_engine::demo::is_demo_path(&m.path) {
                    m.name = mirror_engine::demo::NAME.into();
                }
                self.applied_loras.clear(); // a model loads without them
                self.emit(&format!("model_loaded {} {:.2}s", m.name, m.seconds));
                // The demo model is always offered; only models the user chose are recent.
                if !mirror_engine::demo::is_demo_path(&m.path) {
                    self.settings.remember_model(&m.path);
                }
                self.note(format!(
                    "Loaded {} ({}) in {:.1} s on {}",
                    m.name, m.kind, m.seconds, m.device
                ));
                if let Some(note) = &m.precision_note {
                    self.note(note.clone());
                }
                if let Some(fallback) = &m.fallback {
                    self.emit(&format!("device_fallback {fallback}"));
                    self.note(fallback.clone());
                }
                self.model = ModelStatus::Ready(m);
            }
            WorkerEvent::ModelFailed { path, message } => {
                self.error(format!(
                    "Could not load the model {}:\n{message}",
                    path.display()
                ));
                self.model = ModelStatus::Failed { path, message };
            }
            WorkerEvent::LorasApplied(Ok(infos)) => {
                let names: Vec<String> = (infos.iter())
                    .map(|i| format!("{} at {}", i.file_name, i.strength))
                    .collect();
                if !names.is_empty() {
                    self.note(format!(
                        "LoRAs merged into the model: {}.",
                        names.join(", ")
                    ));
                }
                self.applied_loras = infos;
                self.emit("loras_applied");
            }
            WorkerEvent::LorasApplied(Err(message)) => {
                self.error(format!(
                    "Could not merge the LoRAs (the model is as before):\n{message}"
                ));
            }
            WorkerEvent::Tokens { source, target } => {
                self.source_tokens = source;
                self.target_tokens = target;
                // The Attention tab opens on the word the edit changes.
                if self.attention.token.is_none() {
                    self.attention.token = self.edited_word();
                }
            }
            WorkerEvent::RunStarted {
                part,
                parts,
                label,
                reuses_inversion,
            } => {
                if part > 0
                    && self
                        .shape
                        .as_ref()
                        .is_some_and(|s| s.kind == RunKind::Targets)
                {
                    // Each target has its own steps; the grid keeps the finished ones.
                    self.frames.clear();
                    self.timeline = None;
                }
                self.progress.part = part;
                self.progress.parts = parts;
                self.progress.part_label = label;
                self.progress.part_fraction = 0.0;
                self.progress.phase = None;
                self.progress.reuses_inversion = reuses_inversion;
                if reuses_inversion {
                    self.note(
                        "Re-edit: reusing the cached inversion of this image (skips inversion).",
                    );
                }
                self.emit(&format!("run_started reuses_inversion={reuses_inversion}"));
            }
            WorkerEvent::Phase { phase, steps } => {
                self.progress.phase = Some(phase);
                self.progress.phase_step = 0;
                self.progress.phase_steps = steps;
                self.emit(&format!("phase {}", phase.label()));
                self.update_fraction();
            }
            WorkerEvent::Inversion { step, total } => {
                self.progress.phase_step = step + 1;
                self.progress.phase_steps = total;
                self.update_fraction();
            }
            WorkerEvent::Direction { done, total } => {
                self.progress.phase_step = done;
                self.progress.phase_steps = total;
            }
            WorkerEvent::Step(frame) => self.add_frame(*frame),
            WorkerEvent::StepWork(work) => {
                self.progress.step_work = Some(work);
                self.update_fraction();
            }
            WorkerEvent::Note(n) => self.note(n),
            WorkerEvent::Finished(summary) => self.finish(*summary),
            WorkerEvent::RunFailed(message) => {
                self.progress.running = false;
                self.emit("run_failed");
                self.error(format!("The run failed:\n{message}"));
            }
            WorkerEvent::Folder(e) => {
                if let Some(run) = self.folder.as_mut() {
                    run.apply(e);
                }
            }
            WorkerEvent::FolderStep { step, total } => {
                if let Some(run) = self.folder.as_mut() {
                    run.step = Some((step, total));
                }
            }
            WorkerEvent::FolderFinished(result) => self.finish_folder(result),
            WorkerEvent::MaskFound(found) => self.fill_found_mask(found),
            WorkerEvent::Download { done, total, file } => {
                self.download = Some((done, total, file))
            }
            WorkerEvent::DownloadFinished(path) => {
                self.download = None;
                self.note(format!("Downloaded to {}", path.display()));
            }
            WorkerEvent::DownloadFailed(message) => {
                self.download = None;
                self.error(message);
            }
        }
    }

    fn add_frame(&mut self, frame: StepFrame) {
        self.emit(&format!("step {}/{}", frame.step + 1, frame.total));
        // Several methods (Mirror, the DDIM comparison) report the same step: merge them.
        match self.frames.iter_mut().find(|f| f.step == frame.step) {
            Some(existing) => {
                for b in frame.branches {
                    existing.branches.retain(|e| e.branch != b.branch);
                    existing.branches.push(b);
                }
                existing.redescription.extend(frame.redescription);
                existing.guidance_loss = existing.guidance_loss.or(frame.guidance_loss);
            }
            None => {
                self.frames.push(frame);
                self.frames.sort_by_key(|f| f.step);
            }
        }
        if let Some(f) = self.frames.last() {
            self.progress.phase_step = f.step + 1;
            self.progress.phase_steps = f.total;
        }
        self.update_fraction();
    }

    fn finish(&mut self, summary: RunSummary) {
        self.progress.running = false;
        self.progress.fraction = if summary.cancelled {
            self.progress.fraction
        } else {
            1.0
        };
        self.progress.step_work = None;
        if self
            .shape
            .as_ref()
            .is_some_and(|s| s.kind == RunKind::Targets)
        {
            self.target_results = summary
                .parts
                .iter()
                .filter_map(|p| {
                    Some(TargetResult {
                        target: p.target_prompt.clone(),
                        image: p.images.get(p.translation_branch)?.clone(),
                    })
                })
                .collect();
        }
        self.emit(&format!(
            "finished cancelled={} steps={} reused_inversion={} seconds={:.2} frames={} frame_ms_mean={:.2} frame_ms_max={:.2}",
            summary.cancelled,
            summary.steps_done,
            summary.reused_inversion,
            summary.seconds,
            self.frame_stats.run_frames,
            self.frame_stats.run_mean_ms(),
            self.frame_stats.run_max.as_secs_f64() * 1000.0
        ));
        if summary.cancelled {
            self.note(format!(
                "Cancelled after {} steps; the steps done so far stay viewable.",
                summary.steps_done
            ));
        } else if summary.vae_tiles.fell_back {
            self.note(format!(
                "Finished in {:.1} s. The image did not fit in memory in one piece, so the VAE \
                 worked on it in tiles.",
                summary.seconds
            ));
        } else {
            self.note(format!("Finished in {:.1} s.", summary.seconds));
        }
        // The recipe replays the tiles the run actually used.
        if let Some(recipe) = &mut self.result_recipe {
            recipe.vae_tiles_used = Some(summary.vae_tiles.used);
        }
        self.result = Some(summary);
    }

    /// Overall progress: within a part, encode+invert take the first third and sampling the
    /// rest (a step's UNet calls count as they happen); parts share the bar equally.
    fn update_fraction(&mut self) {
        let p = &mut self.progress;
        let inside_step = match p.step_work {
            Some(w)
                if w.unet_calls_expected > 0
                    && p.phase_steps > 0
                    && w.step == p.phase_step
                    && matches!(p.phase, Some(Phase::Redescribe) | Some(Phase::Translate)) =>
            {
                (w.unet_calls.min(w.unet_calls_expected) as f32) / w.unet_calls_expected as f32
            }
            _ => 0.0,
        };
        let within = if p.phase_steps == 0 {
            0.0
        } else {
            (p.phase_step as f32 + inside_step) / p.phase_steps as f32
        };
        let (start, span) = match p.phase {
            Some(Phase::Encode) | None => (0.0, 0.02),
            Some(Phase::Invert) => {
                if p.reuses_inversion {
                    (0.02, 0.0)
                } else {
                    (0.02, 0.3)
                }
            }
            Some(Phase::Redescribe) | Some(Phase::Translate) => (0.32, 0.66),
            Some(Phase::Decode) => (0.98, 0.02),
        };
        p.part_fraction = p.part_fraction.max((start + span * within).min(1.0));
        let parts = p.parts.max(1) as f32;
        p.fraction = p
            .fraction
            .max(((p.part as f32 + p.part_fraction) / parts).min(1.0));
    }
}

impl AppState {
    /// The attention maps recorded for `branch`, one per step that has them.
    pub fn attention_maps(&self, branch: Branch) -> Vec<Arc<TokenHeatmaps>> {
        self.frames
            .iter()
            .filter_map(|f| {
                f.branches
                    .iter()
                    .find(|b| b.branch == branch)?
                    .attention
                    .clone()
            })
            .collect()
    }

    /// The heat map of `token` for `branch` at the shown step (or averaged), at `w`×`h`.
    pub fn heat(&self, branch: Branch, token: usize, w: u32, h: u32) -> Option<Vec<f32>> {
        let res = self.attention.resolution;
        if self.attention.averaged {
            let maps = self.attention_maps(branch);
            let refs: Vec<&TokenHeatmaps> = maps.iter().map(|m| m.as_ref()).collect();
            let avg = TokenHeatmaps::average(&refs)?;
            return Some(avg.token_map(token, res, h as usize, w as usize));
        }
        let step = self.shown_step()?;
        let map = self
            .frames
            .get(step)?
            .branches
            .iter()
            .find(|b| b.branch == branch)?
            .attention
            .clone()?;
        (token < map.tokens).then(|| map.token_map(token, res, h as usize, w as usize))
    }
}

impl AppState {
    /// The source prompt's token of the first word the edit changes (its index and text).
    fn edited_word(&self) -> Option<(usize, String)> {
        let s = &self.settings;
        let phrase =
            mirror_engine::direction::find_edit_phrase(&s.source_prompt, &s.target_prompt).ok()?;
        let first = phrase.source.split_whitespace().next()?.to_lowercase();
        self.source_tokens
            .iter()
            .find(|t| t.text.to_lowercase() == first)
            .map(|t| (t.index, t.text.clone()))
    }
}

/// What to tell the user when a dialog closed without a choice: it may have been cancelled,
/// or no dialog could appear (no desktop portal): name the other ways in.
pub const NO_DIALOG_HINT: &str = "No file was chosen. If no file dialog appeared, type or paste \
     the path into the path field, or drop the file on the window (Ctrl+V pastes an image or a \
     path).";

/// A method's name as the app shows it.
pub fn method_label(method: Method) -> &'static str {
    match method {
        Method::Mirror => "MirrorDiffusion",
        Method::Pix2PixZero => "pix2pix-zero",
        Method::Ddim => "plain DDIM",
    }
}
