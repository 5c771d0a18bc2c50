//! How the app is started: paths and overrides from the caller (tests) or the environment
//! (scripts: `MIRROR_MODEL`, `MIRROR_IMAGE`, `MIRROR_SOURCE`, `MIRROR_TARGET`, `MIRROR_STEPS`,
//! `MIRROR_DECODE_EVERY`, `MIRROR_AUTORUN=1`, `MIRROR_EVENTS=1`, `MIRROR_CONFIG_DIR`,
//! `MIRROR_EXPORT_DIR`).

use std::path::PathBuf;

use super::settings::Settings;

#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// A model to load at start.
    pub model: Option<PathBuf>,
    /// An image to open at start.
    pub image: Option<PathBuf>,
    /// Where settings live (None: the platform config folder). Tests pass a temporary folder.
    pub settings_dir: Option<PathBuf>,
    /// Keep cached inversions in memory only (tests); otherwise in the user cache folder.
    pub memory_only_cache: bool,
    pub source_prompt: Option<String>,
    pub target_prompt: Option<String>,
    pub steps: Option<usize>,
    pub decode_every: Option<usize>,
    pub compare_ddim: Option<bool>,
    pub export_dir: Option<PathBuf>,
    /// Start a run once model and image are loaded.
    pub autorun: bool,
    /// Print `EVENT …` lines on stdout.
    pub print_events: bool,
    /// With no model given and none used before, open the demo model with a demo image
    /// (how `cargo run` starts; tests opt in).
    pub demo_at_start: bool,
    /// The engine thread becomes the first thread of the process's compute pool (the app
    /// process: one engine thread for its whole life). Tests leave it off: their apps come
    /// and go within one process, and the pool must not lose a thread with them.
    pub engine_joins_pool: bool,
    /// Jobs wait at their start until `jobs.hold(false)` (tests that need a certain order).
    pub hold_jobs: bool,
}

impl AppOptions {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let flag = |k: &str| var(k).is_some_and(|v| v != "0");
        Self {
            model: var("MIRROR_MODEL").map(PathBuf::from),
            image: var("MIRROR_IMAGE").map(PathBuf::from),
            settings_dir: var("MIRROR_CONFIG_DIR").map(PathBuf::from),
            memory_only_cache: flag("MIRROR_MEMORY_CACHE"),
            source_prompt: var("MIRROR_SOURCE"),
            target_prompt: var("MIRROR_TARGET"),
            steps: var("MIRROR_STEPS").and_then(|s| s.parse().ok()),
            decode_every: var("MIRROR_DECODE_EVERY").and_then(|s| s.parse().ok()),
            compare_ddim: var("MIRROR_COMPARE_DDIM").map(|v| v != "0"),
            export_dir: var("MIRROR_EXPORT_DIR").map(PathBuf::from),
            autorun: flag("MIRROR_AUTORUN"),
            print_events: flag("MIRROR_EVENTS"),
            demo_at_start: true,
            engine_joins_pool: true,
            hold_jobs: false,
        }
    }

    pub fn inversion_cache_dir(&self) -> Option<PathBuf> {
        if self.memory_only_cache {
            None
        } else {
            mirror_engine::session::InversionCache::default_dir()
        }
    }

    /// Overrides what the settings file said.
    pub fn apply(&self, settings: &mut Settings) {
        if let Some(s) = &self.source_prompt {
            settings.source_prompt = s.clone();
        }
        if let Some(t) = &self.target_prompt {
            settings.target_prompt = t.clone();
        }
        if let Some(n) = self.steps {
            settings.run.steps = n;
        }
        if let Some(k) = self.decode_every {
            settings.run.decode_every = k;
        }
        if let Some(c) = self.compare_ddim {
            settings.run.compare_ddim = c;
        }
        if let Some(d) = &self.export_dir {
            settings.export_dir = d.display().to_string();
        }
    }
}
