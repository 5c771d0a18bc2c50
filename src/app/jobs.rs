//! Slow work off the UI thread: decoding images, the resize before a run, clipboard
//! conversion, exports, settings writes and file dialogs each run on their own thread. The
//! frame only starts a job and later picks up its result; while a job runs the UI shows it as
//! busy (with Cancel where stopping halfway makes sense). Jobs are told apart by their
//! [`JobKind`], never by the words the UI shows for them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{Receiver, Sender, unbounded};
use image::RgbImage;

use mirror_engine::imageio::LoadedImage;
use mirror_engine::recipe::Recipe;

/// What a run does (also how jobs name a run): one method, the three methods side by side, or several targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunKind {
    #[default]
    Single,
    Compare,
    Targets,
}

/// Which job it is: what the UI shows while it runs, and whether it can stop halfway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    OpeningImage,
    PastingImage,
    /// The resize to the processing size before a run.
    PreparingRun,
    Dialog,
    Exporting,
    SavingTranslation,
    SavingSettings,
    UnpackingDemo,
    /// The loaded model's notes and tokenizer.
    ReadingWords,
}

impl JobKind {
    /// What the UI shows while the job runs.
    pub fn label(self) -> &'static str {
        match self {
            JobKind::OpeningImage => "Opening the image",
            JobKind::PastingImage => "Pasting the image",
            JobKind::PreparingRun => "Preparing the image",
            JobKind::Dialog => "Waiting for the file dialog",
            JobKind::Exporting => "Exporting",
            JobKind::SavingTranslation => "Saving the translation",
            JobKind::SavingSettings => "Saving settings",
            JobKind::UnpackingDemo => "Unpacking the demo model",
            JobKind::ReadingWords => "Reading the model's words",
        }
    }

    /// An export writes many files: it may stop between two. Other jobs run to the end.
    pub fn cancellable(self) -> bool {
        self == JobKind::Exporting
    }
}

/// What a finished job hands back to the UI thread.
#[derive(Debug)]
pub enum JobOutput {
    /// An image was decoded (with the recipe a Mirror PNG carries).
    ImageLoaded {
        loaded: Box<LoadedImage>,
        name: String,
        path: Option<PathBuf>,
        recipe: Option<Box<Recipe>>,
    },
    /// The clipboard held no image (a note, not an error).
    ClipboardEmpty,
    /// The image at its processing size: the run can start.
    RunImage {
        kind: RunKind,
        image: RgbImage,
        /// The painted mask at the same size, when the edit region is painted.
        mask: Option<image::GrayImage>,
    },
    /// Files written by an export.
    Exported {
        files: Vec<PathBuf>,
        dir: PathBuf,
    },
    /// One file saved ("Save translation as…").
    Saved(PathBuf),
    SettingsSaved,
    /// A file dialog closed: the chosen path, or None (cancelled, or no dialog could appear).
    Picked {
        purpose: Pick,
        path: Option<PathBuf>,
    },
    /// The demo model is unpacked in this folder, ready to load.
    DemoModelUnpacked(PathBuf),
    /// The notes and tokenizer of the model at `path` (prompt checks, recommendations).
    ModelWords {
        path: PathBuf,
        words: Box<mirror_engine::model::ModelWords>,
    },
    /// The job was cancelled before it finished; nothing was changed.
    Cancelled,
}

/// What a file dialog was opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Image,
    Lora,
    ModelFolder,
    ModelFile,
    ExportFolder,
    /// A folder of photos to apply the edit to.
    PhotoFolder,
    SaveTranslation,
}

/// A job's result: its id, its kind and what it produced (or a readable error).
pub struct JobDone {
    pub id: u64,
    pub kind: JobKind,
    pub result: Result<JobOutput, String>,
}

/// A job in flight, as the UI shows it.
#[derive(Debug, Clone)]
pub struct BusyJob {
    pub id: u64,
    pub kind: JobKind,
    pub cancel: Arc<AtomicBool>,
}

/// Lets a test (or a script) hold every new job at its start, to watch the UI while work is
/// pending; released jobs run normally.
#[derive(Default)]
struct Gate {
    held: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        while *held {
            match self.opened.wait(held) {
                Ok(h) => held = h,
                Err(_) => return,
            }
        }
    }

    fn set(&self, hold: bool) {
        if let Ok(mut held) = self.held.lock() {
            *held = hold;
        }
        self.opened.notify_all();
    }
}

/// Starts jobs on their own threads and collects their results.
pub struct Jobs {
    sender: Sender<JobDone>,
    results: Receiver<JobDone>,
    wake: Arc<dyn Fn() + Send + Sync>,
    gate: Arc<Gate>,
    next_id: u64,
    pub busy: Vec<BusyJob>,
}

impl Jobs {
    /// `wake` is called when a job finishes (the UI asks for a repaint there).
    pub fn new(wake: Arc<dyn Fn() + Send + Sync>) -> Self {
        let (sender, results) = unbounded();
        Self {
            sender,
            results,
            wake,
            gate: Arc::new(Gate::default()),
            next_id: 0,
            busy: Vec::new(),
        }
    }

    /// Runs `work` on a new thread. It gets a cancel flag to check between pieces of work
    /// (when its kind is cancellable); its result comes back through [`Jobs::finished`].
    pub fn spawn(
        &mut self,
        kind: JobKind,
        work: impl FnOnce(&AtomicBool) -> Result<JobOutput, String> + Send + 'static,
    ) {
        self.next_id += 1;
        let id = self.next_id;
        let cancel = Arc::new(AtomicBool::new(false));
        self.busy.push(BusyJob {
            id,
            kind,
            cancel: cancel.clone(),
        });
        let (sender, wake, gate) = (self.sender.clone(), self.wake.clone(), self.gate.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("mirror-job-{id}"))
            .spawn(move || {
                gate.wait();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if cancel.load(Ordering::Relaxed) {
                        return Ok(JobOutput::Cancelled);
                    }
                    work(&cancel)
                }))
                .unwrap_or_else(|_| Err(format!("{} stopped unexpectedly.", kind.label())));
                let _ = sender.send(JobDone { id, kind, result });
                wake();
            });
        if let Err(e) = spawned {
            let _ = self.sender.send(JobDone {
                id,
                kind,
                result: Err(format!("Could not start {}: {e}", kind.label())),
            });
        }
    }

    /// Results of the jobs that finished since the last call; never blocks.
    pub fn finished(&mut self) -> Vec<JobDone> {
        let done: Vec<JobDone> = self.results.try_iter().collect();
        self.busy.retain(|b| !done.iter().any(|d| d.id == b.id));
        done
    }

    /// Asks the job `id` to stop.
    pub fn cancel(&self, id: u64) {
        if let Some(b) = self.busy.iter().find(|b| b.id == id) {
            b.cancel.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_busy(&self) -> bool {
        !self.busy.is_empty()
    }

    /// True while a job of `kind` is in flight.
    pub fn is_running(&self, kind: JobKind) -> bool {
        self.busy.iter().any(|b| b.kind == kind)
    }

    /// Holds every job at its start (true) or lets them run (false).
    pub fn hold(&self, hold: bool) {
        self.gate.set(hold);
    }
}

/// Runs a future to completion on this thread (the file dialogs' futures; no runtime needed).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}
