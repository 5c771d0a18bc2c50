//! The kittest harness around the real app, shared by the GUI test files: build it, and step
//! it until something is true (the worker and the jobs run on their own threads), failing
//! after a bound instead of hanging CI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use mirror_diffusion::app::state::ModelStatus;
use mirror_diffusion::app::{AppOptions, MirrorApp};

pub type App = Harness<'static, MirrorApp>;

/// A file dropped on the window (as winit delivers it).
#[derive(Debug)]
pub struct PathFile(pub PathBuf);

impl egui::DroppedFile for PathFile {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

/// The whole app in a 1280×800 window.
pub fn harness(opts: AppOptions) -> App {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .with_max_steps(100_000)
        .build_eframe(move |cc| MirrorApp::new_with(cc, opts))
}

/// How long to wait, and whether an error shown meanwhile fails the test.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub secs: u64,
    pub allow_errors: bool,
}

impl Wait {
    pub const fn secs(secs: u64) -> Wait {
        Wait {
            secs,
            allow_errors: false,
        }
    }

    pub const fn allowing_errors(secs: u64) -> Wait {
        Wait {
            secs,
            allow_errors: true,
        }
    }
}

/// Steps the app until `done`, then once more so the result is drawn.
pub fn step_until(h: &mut App, what: &str, wait: Wait, done: impl Fn(&MirrorApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(wait.secs),
            "timed out waiting for {what}"
        );
        if !wait.allow_errors {
            assert!(
                h.state().state.errors.is_empty(),
                "error while waiting for {what}: {:?}",
                h.state().state.errors
            );
        }
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
}

/// Until the model and the image are loaded.
pub fn ready(h: &mut App) {
    step_until(h, "the model and image", Wait::secs(120), |a| {
        matches!(a.state.model, ModelStatus::Ready(_)) && a.state.image.is_some()
    });
}

/// Until every background job (decode, export, dialog) has finished.
pub fn jobs_done(h: &mut App) {
    step_until(h, "background jobs", Wait::allowing_errors(120), |a| {
        !a.jobs.is_busy()
    });
}

/// Until an error is shown.
pub fn step_until_error(h: &mut App) {
    step_until(h, "an error", Wait::allowing_errors(60), |a| {
        !a.state.errors.is_empty()
    });
}
