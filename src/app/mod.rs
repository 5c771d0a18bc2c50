//! Mirror's desktop app (eframe). `state` is plain data, `ui/*` draws it, `actions` carries out
//! what the user asked for, and the [`Worker`](crate::worker::Worker) runs the engine. Worker
//! events are drained once per frame; the frame never waits for the engine. The UI edits the
//! persisted [`Settings`] in place; the app writes them when they differ from the last write.

pub mod action;
pub mod actions;
pub mod download;
pub mod export;
pub mod files;
pub mod folder;
pub mod jobs;
pub mod loras;
pub mod mask;
pub mod options;
pub mod presets;
pub mod run_settings;
pub mod settings;
pub mod state;
pub mod textures;
pub mod ui;
pub mod words;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use action::{Action, MaskAction};
pub use jobs::RunKind;
pub use options::AppOptions;

use crate::worker::{Worker, WorkerEvent};
use jobs::JobKind;
use settings::Settings;
use state::AppState;
use textures::Textures;

/// The application id: the `.desktop` file, AppStream metainfo and the window's app id.
pub const APP_ID: &str = "io.github.mirror_diffusion.Mirror";

pub struct MirrorApp {
    pub state: AppState,
    pub(crate) worker: Worker,
    /// Slow work off the UI thread (decoding, resizing, exports, dialogs, settings writes).
    pub jobs: jobs::Jobs,
    pub(crate) textures: Textures,
    settings_dir: Option<PathBuf>,
    /// The settings as last written (or read): a difference means they need writing.
    saved: Settings,
    last_save: Instant,
    /// Start a run as soon as model and image are ready (scripts).
    autorun: bool,
    /// Steps given at start (scripts, tests): a model's recommended steps do not replace them.
    steps_override: Option<usize>,
    pending: Vec<Action>,
}

impl MirrorApp {
    /// The app as `cargo run` starts it: options from the environment.
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        Self::new_with(cc, AppOptions::from_env())
    }

    pub fn new_with(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        egui_extras::install_image_loaders(&cc.egui_ctx);
        ui::style::apply(&cc.egui_ctx);
        let ctx = cc.egui_ctx.clone();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || ctx.request_repaint());
        let worker = Worker::spawn(
            wake.clone(),
            options.inversion_cache_dir(),
            options.engine_joins_pool,
        );
        let jobs = jobs::Jobs::new(wake);
        jobs.hold(options.hold_jobs);
        let settings_dir = options.settings_dir.clone().or_else(Settings::default_dir);
        let mut state = AppState {
            print_events: options.print_events,
            ..Default::default()
        };
        if let Some(dir) = &settings_dir {
            let (settings, problem) = Settings::load(dir);
            state.settings = settings;
            if let Some(p) = problem {
                state.note(p);
            }
        }
        let saved = state.settings.clone();
        state.settings.fill_export_dir();
        options.apply(&mut state.settings);
        state.compare_split = 0.5;
        let mut app = Self {
            saved,
            state,
            worker,
            jobs,
            textures: Textures::default(),
            settings_dir,
            last_save: Instant::now(),
            autorun: options.autorun,
            steps_override: options.steps,
            pending: Vec::new(),
        };
        let first_start = app.state.settings.recent_models.is_empty();
        match options.model {
            Some(model) => app.pending.push(Action::LoadModel(model)),
            None if options.demo_at_start && first_start => {
                app.pending.push(Action::LoadDemoModel);
                if options.image.is_none() {
                    app.pending.push(Action::NewDemoImage);
                }
            }
            None => {}
        }
        if let Some(image) = options.image {
            app.pending.push(Action::LoadImage(image));
        }
        app
    }

    /// Queues an action as if the user had asked for it (carried out on the next frame).
    pub fn request(&mut self, action: Action) {
        self.pending.push(action);
    }

    /// Writes the settings when they changed (at most every two seconds, on a job thread; on
    /// exit right away).
    fn persist(&mut self, force: bool) {
        let unchanged = self.state.settings == self.saved;
        if unchanged || (!force && self.last_save.elapsed() < Duration::from_secs(2)) {
            return;
        }
        if self.jobs.is_running(JobKind::SavingSettings) && !force {
            return; // the next frame after it finishes writes the newer settings
        }
        self.last_save = Instant::now();
        // A failed write is said once; the in-memory settings stay.
        self.saved = self.state.settings.clone();
        if let Some(dir) = self.settings_dir.clone() {
            if force {
                if let Err(e) = self.state.settings.save(&dir) {
                    self.state.note(format!("Could not save settings: {e}"));
                }
            } else {
                self.save_settings(self.state.settings.clone(), dir);
            }
        }
    }

    fn drain_worker(&mut self, ctx: &egui::Context) {
        let events = self.worker.drain();
        if events.is_empty() {
            return;
        }
        for event in events {
            match &event {
                WorkerEvent::ModelLoaded(m) => {
                    self.read_model_words(m.path.clone());
                    self.state.frames.clear();
                    self.state.result = None;
                    self.textures.forget("");
                    self.pending.push(Action::Tokenize);
                    if !self.state.settings.loras.is_empty() {
                        self.pending.push(Action::ApplyLoras);
                    }
                }
                WorkerEvent::Finished(_) => self.textures.forget("final/"),
                WorkerEvent::DownloadFinished(path) => {
                    self.pending.push(Action::LoadModel(path.clone()))
                }
                _ => {}
            }
            self.state.apply_event(event);
        }
        ctx.request_repaint();
    }

    fn keyboard(&mut self, ctx: &egui::Context) {
        use egui::{Key, KeyboardShortcut, Modifiers};
        let shortcut = |m, k| KeyboardShortcut::new(m, k);
        // Ctrl+Z takes back a stroke on the mask tab, unless a text field (with its own undo)
        // has focus.
        let typing = ctx
            .memory(|m| m.focused())
            .is_some_and(|id| egui::TextEdit::load_state(ctx, id).is_some())
            || self.state.view != state::View::Mask;
        let (undo, open, run, save, esc, dropped, paste) = ctx.input_mut(|i| {
            (
                !typing && i.consume_shortcut(&shortcut(Modifiers::COMMAND, Key::Z)),
                i.consume_shortcut(&shortcut(Modifiers::COMMAND, Key::O)),
                i.consume_shortcut(&shortcut(Modifiers::COMMAND, Key::Enter)),
                i.consume_shortcut(&shortcut(Modifiers::COMMAND, Key::S)),
                i.key_pressed(Key::Escape),
                std::mem::take(&mut i.raw.dropped_files),
                i.events.iter().find_map(|e| match e {
                    egui::Event::Paste(t) => Some(t.clone()),
                    _ => None,
                }),
            )
        });
        if undo {
            self.pending.push(Action::Mask(MaskAction::Undo));
        }
        if open {
            self.pending.push(Action::OpenImageDialog);
        }
        if run {
            self.pending.push(Action::Run(RunKind::Single));
        }
        if save {
            self.pending.push(Action::Export);
        }
        if esc && (self.state.progress.running || self.state.folder_running()) {
            self.pending.push(Action::Cancel);
        }
        for file in dropped {
            let path = file.path();
            if path.is_file() {
                self.pending.push(Action::LoadImage(path.to_path_buf()));
            } else {
                let name = path
                    .file_name()
                    .map_or("dropped image".into(), |n| n.to_string_lossy().into_owned());
                match file.bytes() {
                    Ok(bytes) => self.pending.push(Action::LoadImageBytes { bytes, name }),
                    Err(e) => self
                        .state
                        .error(format!("Could not read the dropped file {name}: {e}")),
                }
            }
        }
        // A paste outside a text field: a file path, or an image on the clipboard.
        if let Some(text) = paste
            && ctx.memory(|m| m.focused().is_none())
        {
            let path = PathBuf::from(text.trim());
            if !text.trim().is_empty() && path.is_file() {
                self.pending.push(Action::LoadImage(path));
            } else {
                self.pending.push(Action::PasteImage);
            }
        }
    }
}

impl eframe::App for MirrorApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let started = Instant::now();
        let ctx = ui.ctx().clone();
        self.state.frames_drawn += 1;
        self.finish_jobs();
        self.drain_worker(&ctx);
        self.keyboard(&ctx);
        let mut actions = std::mem::take(&mut self.pending);
        let busy = &self.jobs.busy;
        ui::draw(ui, &mut self.state, busy, &mut self.textures, &mut actions);
        for action in actions {
            self.perform(action);
        }
        // A script's run waits for the model's notes too: they carry its recommended settings.
        let words_pending = self.jobs.is_running(JobKind::ReadingWords);
        if self.autorun
            && self.state.model_ready().is_some()
            && self.state.image.is_some()
            && !words_pending
        {
            self.autorun = false;
            self.perform(Action::Run(RunKind::Single));
        }
        self.persist(false);
        if self.state.progress.running || self.state.download.is_some() {
            // The ETA (and download progress, which comes without a wake-up) ticks between events.
            ctx.request_repaint_after(Duration::from_secs(1));
        }
        self.state
            .frame_stats
            .record(started.elapsed(), self.state.progress.running);
    }

    fn on_exit(&mut self) {
        self.worker.cancel();
        self.persist(true);
    }
}

/// Opens the main window (`cargo run --release`).
pub fn run_native() -> eframe::Result {
    let viewport = egui::ViewportBuilder::default()
        .with_title("Mirror")
        .with_app_id(APP_ID)
        .with_inner_size([1280.0, 800.0])
        .with_min_inner_size([800.0, 560.0])
        .with_position([0.0, 0.0])
        .with_drag_and_drop(true)
        .with_icon(ui::style::window_icon());
    let options = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    eframe::run_native(
        "Mirror",
        options,
        Box::new(|cc| Ok(Box::new(MirrorApp::new(cc)))),
    )
}
