//! The background worker: one thread owns the engine [`Session`]. Commands go in, events come
//! out over crossbeam channels; the UI never waits on it. Tensors stay on this thread: step
//! events are turned into preview images and plain numbers before they are sent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::Tensor;
use crossbeam_channel::{Receiver, Sender, unbounded};
use image::{GrayImage, RgbImage};

use crate::folder_run::{
    FolderEvent, FolderReport, PhotoEdit, PhotoEvent, folder_files, run_folder,
};
use mirror_engine::EngineError;
use mirror_engine::device::{self, DeviceChoice, Precision};
use mirror_engine::imageio::{LoadedImage, latent_preview, mask_on_photo, tensor_to_image};
use mirror_engine::loader::lora::{LoraInfo, LoraSpec};
use mirror_engine::methods::mask::mask_image;
use mirror_engine::model::VaeTilesReport;
use mirror_engine::pipeline::{
    Branch, CancelToken, Event, Phase, StepReport, StepWork, TokenHeatmaps,
};
use mirror_engine::session::{BranchImages, Method, Session, TranslateRequest};
use mirror_engine::tokenizer::TokenWord;

/// One translation of a job, with the name the UI shows for it.
#[derive(Debug, Clone)]
pub struct RunPart {
    /// "MirrorDiffusion", "pix2pix-zero", or the target prompt of a many-targets run.
    pub label: String,
    pub request: TranslateRequest,
}

/// Translations run one after another on the same image: one method, a comparison of the
/// methods, or several targets. The inversion cache makes every part after the first cheap.
#[derive(Debug, Clone)]
pub struct RunJob {
    pub parts: Vec<RunPart>,
}

impl RunJob {
    pub fn single(label: &str, request: TranslateRequest) -> Self {
        Self {
            parts: vec![RunPart {
                label: label.to_string(),
                request,
            }],
        }
    }
}

/// One edit over every photo of a folder (`crate::folder_run`), results into `out_dir`.
#[derive(Debug, Clone)]
pub struct FolderJob {
    pub edit: PhotoEdit,
    pub dir: PathBuf,
    pub out_dir: PathBuf,
}

/// "Fill from the edit": the mask a run of `edit` on `photo` would find, without the run.
#[derive(Debug, Clone)]
pub struct MaskJob {
    pub edit: PhotoEdit,
    pub photo: LoadedImage,
}

/// Where and in which number format a model computes (the user's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compute {
    pub device: DeviceChoice,
    pub precision: Precision,
}

/// What the UI asks the worker to do.
pub enum Command {
    /// Load a model on the chosen device (the CPU when that device cannot be used).
    LoadModel(PathBuf, Compute),
    Run(Box<RunJob>),
    /// Translate every photo of a folder (answered with `WorkerEvent::Folder` as it goes and
    /// `WorkerEvent::FolderFinished`).
    RunFolder(Box<FolderJob>),
    /// Find the edit's mask on the photo (answered with `WorkerEvent::MaskFound`).
    FindMask(Box<MaskJob>),
    /// Merge these LoRAs into the loaded model, replacing earlier ones (answered with
    /// `WorkerEvent::LorasApplied`).
    SetLoras(Vec<LoraSpec>),
    /// Prompt tokens for the attention-word picker (answered with `WorkerEvent::Tokens`).
    Tokenize {
        source: String,
        target: String,
    },
    Shutdown,
}

/// What a loaded model is, for the UI.
#[derive(Debug, Clone)]
pub struct ModelSummary {
    pub name: String,
    pub path: PathBuf,
    pub kind: String,
    pub fingerprint: String,
    pub size_multiple: u32,
    pub default_side: u32,
    pub seconds: f64,
    /// The device actually computing, e.g. "CPU (2 threads)" or "CUDA:0".
    pub device: String,
    /// "f32", or the half type of forward passes ("f16").
    pub precision: String,
    /// Why the chosen device is not the one in use (it could not be used).
    pub fallback: Option<String>,
    /// Why the chosen precision is not the one in use (the device cannot compute in it).
    pub precision_note: Option<String>,
}

/// One branch of one step, ready to show.
#[derive(Debug, Clone)]
pub struct BranchFrame {
    pub branch: Branch,
    pub preview: RgbImage,
    /// `true` when `preview` is a full VAE decode, `false` for the cheap latent preview.
    pub decoded: bool,
    pub mirror_error: Option<f64>,
    pub attention: Option<Arc<TokenHeatmaps>>,
}

/// One denoising step, ready to show.
#[derive(Debug, Clone)]
pub struct StepFrame {
    pub step: usize,
    pub total: usize,
    pub timestep: usize,
    pub branches: Vec<BranchFrame>,
    /// Redescription losses before each Adam update.
    pub redescription: Vec<f64>,
    pub guidance_loss: Option<f64>,
}

/// The final images of a run, by branch.
#[derive(Debug, Clone, Default)]
pub struct RunImages {
    pub source: Option<RgbImage>,
    pub branches: Vec<(Branch, RgbImage)>,
}

impl RunImages {
    pub fn get(&self, branch: Branch) -> Option<&RgbImage> {
        self.branches
            .iter()
            .find(|(b, _)| *b == branch)
            .map(|(_, img)| img)
    }

    /// Adds `other`'s images (a later part of the same job replaces a branch it repeats).
    fn merge(&mut self, other: RunImages) {
        if self.source.is_none() {
            self.source = other.source;
        }
        for (branch, img) in other.branches {
            self.branches.retain(|(b, _)| *b != branch);
            self.branches.push((branch, img));
        }
    }
}

/// One part of a finished job: its label, target and translation.
#[derive(Debug, Clone)]
pub struct PartResult {
    pub label: String,
    pub target_prompt: String,
    pub translation_branch: Branch,
    pub images: RunImages,
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Every part's images merged by branch (a comparison shows them side by side).
    pub images: RunImages,
    /// Each part on its own (several targets: one translation each).
    pub parts: Vec<PartResult>,
    pub cancelled: bool,
    pub steps_done: usize,
    pub reused_inversion: bool,
    pub edit_phrase: Option<(String, String)>,
    pub seconds: f64,
    /// What the VAE passes of every part did about tiles (any part counts).
    pub vae_tiles: VaeTilesReport,
    /// The edit mask the run used (the first part's), on the latent grid shown at the
    /// processing size (white = may change); None when the whole picture could change.
    pub mask: Option<GrayImage>,
}

/// What the worker tells the UI.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// What `SetLoras` merged (each file and how many weights it changed), or why not (the
    /// model is then as before).
    LorasApplied(Result<Vec<LoraInfo>, String>),
    ModelLoading(PathBuf),
    ModelLoaded(ModelSummary),
    ModelFailed {
        path: PathBuf,
        message: String,
    },
    Tokens {
        source: Vec<TokenWord>,
        target: Vec<TokenWord>,
    },
    /// A part of the job starts (`part` of `parts`, counted from 0).
    RunStarted {
        part: usize,
        parts: usize,
        label: String,
        reuses_inversion: bool,
    },
    /// Work inside a step: UNet calls so far and the redescription iteration, for a live
    /// sign of progress within long steps.
    StepWork(StepWork),
    Phase {
        phase: Phase,
        steps: usize,
    },
    Inversion {
        step: usize,
        total: usize,
    },
    Direction {
        done: usize,
        total: usize,
    },
    Step(Box<StepFrame>),
    Note(String),
    Finished(Box<RunSummary>),
    RunFailed(String),
    /// A folder run's progress, photo by photo.
    Folder(PhotoEvent),
    /// A step inside the photo a folder run is on.
    FolderStep {
        step: usize,
        total: usize,
    },
    /// The mask found from the edit, at the photo's size (white = may change), or why not.
    MaskFound(Result<GrayImage, String>),
    /// How a folder run ended (written, failed, skipped), or why it could not start.
    FolderFinished(Result<Box<FolderReport>, String>),
    /// Hub download progress (bytes so far, total bytes, file name).
    Download {
        done: u64,
        total: u64,
        file: String,
    },
    DownloadFinished(PathBuf),
    DownloadFailed(String),
}

/// The UI's handle on the worker thread.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<WorkerEvent>,
    event_sender: Sender<WorkerEvent>,
    cancel: Arc<Mutex<CancelToken>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread. `wake` is called after each event is sent (the UI asks for a
    /// repaint there). `cache_dir`: where inversions are cached (None: memory only).
    /// `join_pool`: the thread joins the compute pool (once per process, see
    /// [`mirror_engine::threads::adopt_current_thread`]).
    pub fn spawn(
        wake: Arc<dyn Fn() + Send + Sync>,
        cache_dir: Option<PathBuf>,
        join_pool: bool,
    ) -> Self {
        let (commands, command_rx) = unbounded::<Command>();
        let (event_sender, events) = unbounded::<WorkerEvent>();
        let cancel = Arc::new(Mutex::new(CancelToken::new()));
        let thread_cancel = cancel.clone();
        let tx = event_sender.clone();
        let thread = std::thread::Builder::new()
            .name("mirror-engine".into())
            .spawn(move || {
                if join_pool {
                    mirror_engine::threads::adopt_current_thread();
                }
                let send = |e: WorkerEvent| {
                    let _ = tx.send(e);
                    wake();
                };
                worker_loop(&command_rx, &send, &thread_cancel, cache_dir);
            })
            .ok();
        Self {
            commands,
            events,
            event_sender,
            cancel,
            thread,
        }
    }

    pub fn send(&self, command: Command) {
        if let Command::Run(_) | Command::RunFolder(_) | Command::FindMask(_) = command {
            // A fresh token per run: an Esc from the last run must not cancel this one.
            if let Ok(mut c) = self.cancel.lock() {
                *c = CancelToken::new();
            }
        }
        let _ = self.commands.send(command);
    }

    /// Cancels the run in progress (if any).
    pub fn cancel(&self) {
        if let Ok(c) = self.cancel.lock() {
            c.cancel();
        }
    }

    /// Every event that arrived since the last call; never blocks.
    pub fn drain(&self) -> Vec<WorkerEvent> {
        self.events.try_iter().collect()
    }

    /// A sender for helper threads (downloads) that report through the same channel.
    pub fn event_sender(&self) -> Sender<WorkerEvent> {
        self.event_sender.clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel();
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn worker_loop(
    commands: &Receiver<Command>,
    send: &dyn Fn(WorkerEvent),
    cancel: &Arc<Mutex<CancelToken>>,
    cache_dir: Option<PathBuf>,
) {
    let mut session: Option<Session> = None;
    while let Ok(command) = commands.recv() {
        match command {
            Command::Shutdown => break,
            Command::LoadModel(path, compute) => {
                send(WorkerEvent::ModelLoading(path.clone()));
                session = None; // free the old model's memory first
                let started = Instant::now();
                let selected = device::select_device(compute.device);
                let loaded = catch(|| {
                    mirror_engine::model::StableDiffusion::load_with_precision(
                        &path,
                        &selected.device,
                        mirror_engine::loader::CheckpointConfigs::bundled_sd_v1(),
                        compute.precision,
                    )
                    .map(|sd| Session::new(sd, cache_dir.clone()))
                });
                match loaded {
                    Ok(s) => {
                        let sd = s.model();
                        send(WorkerEvent::ModelLoaded(ModelSummary {
                            name: sd.info.name.clone(),
                            path: sd.info.path.clone(),
                            kind: sd.info.kind.to_string(),
                            fingerprint: sd.info.fingerprint.clone(),
                            size_multiple: sd.size_multiple() as u32,
                            default_side: sd.default_image_side() as u32,
                            seconds: started.elapsed().as_secs_f64(),
                            device: device::describe(&sd.device),
                            precision: device::dtype_word(sd.forward_dtype()).to_string(),
                            fallback: selected.fallback.clone(),
                            precision_note: device::resolve_precision(
                                &sd.device,
                                compute.precision,
                            )
                            .1,
                        }));
                        session = Some(s);
                    }
                    Err(message) => send(WorkerEvent::ModelFailed { path, message }),
                }
            }
            Command::SetLoras(loras) => {
                let applied = match session.as_mut() {
                    None => Err("Load a model first: LoRAs are merged into it.".into()),
                    Some(s) => catch(|| s.set_loras(&loras)),
                };
                send(WorkerEvent::LorasApplied(applied));
            }
            Command::Tokenize { source, target } => {
                if let Some(s) = &session {
                    let tok = &s.model().tokenizer;
                    send(WorkerEvent::Tokens {
                        source: tok.token_words(&source).unwrap_or_default(),
                        target: tok.token_words(&target).unwrap_or_default(),
                    });
                }
            }
            Command::Run(job) => {
                let Some(s) = session.as_mut() else {
                    send(WorkerEvent::RunFailed("No model is loaded yet.".into()));
                    continue;
                };
                let token = cancel.lock().map(|c| c.clone()).unwrap_or_default();
                run(s, &job, &token, send);
            }
            Command::FindMask(job) => {
                let found = match session.as_ref() {
                    None => Err("Load a model first.".into()),
                    Some(s) => find_mask(s, &job, &cancel_token(cancel)),
                };
                send(WorkerEvent::MaskFound(found));
            }
            Command::RunFolder(job) => {
                let Some(s) = session.as_mut() else {
                    send(WorkerEvent::FolderFinished(Err(
                        "No model is loaded yet.".into()
                    )));
                    continue;
                };
                let token = cancel.lock().map(|c| c.clone()).unwrap_or_default();
                send(WorkerEvent::FolderFinished(run_folder_job(
                    s, &job, &token, send,
                )));
            }
        }
    }
}

fn run(session: &mut Session, job: &RunJob, cancel: &CancelToken, send: &dyn Fn(WorkerEvent)) {
    let started = Instant::now();
    let mut total = RunSummary {
        images: RunImages::default(),
        parts: Vec::new(),
        cancelled: false,
        steps_done: 0,
        reused_inversion: false,
        edit_phrase: None,
        seconds: 0.0,
        vae_tiles: VaeTilesReport::default(),
        mask: None,
    };
    for (index, part) in job.parts.iter().enumerate() {
        let req = &part.request;
        let tok = &session.model().tokenizer;
        send(WorkerEvent::Tokens {
            source: tok.token_words(&req.source_prompt).unwrap_or_default(),
            target: tok.token_words(&req.target_prompt).unwrap_or_default(),
        });
        let reuses_inversion = session.has_cached_inversion(req);
        send(WorkerEvent::RunStarted {
            part: index,
            parts: job.parts.len(),
            label: part.label.clone(),
            reuses_inversion,
        });
        let mut on_event = |e: Event| forward(e, send);
        let outcome = match catch(|| session.translate(req, cancel, &mut on_event)) {
            Ok(o) => o,
            Err(message) => return send(WorkerEvent::RunFailed(message)),
        };
        let images = RunImages {
            source: tensor_to_image(&outcome.source).ok(),
            branches: final_images(req.method, &outcome.images),
        };
        total.parts.push(PartResult {
            label: part.label.clone(),
            target_prompt: req.target_prompt.clone(),
            translation_branch: req.method.translation(),
            images: images.clone(),
        });
        total.images.merge(images);
        total.steps_done = outcome.steps_done;
        total.reused_inversion = if index == 0 {
            outcome.reused_inversion
        } else {
            total.reused_inversion
        };
        total.vae_tiles.used |= outcome.vae_tiles.used;
        total.vae_tiles.fell_back |= outcome.vae_tiles.fell_back;
        if total.edit_phrase.is_none() {
            total.edit_phrase = outcome.edit_phrase.clone();
        }
        if total.mask.is_none() {
            let (w, h) = req.image.dimensions();
            total.mask = (outcome.mask.as_ref()).and_then(|m| mask_image(m, w, h).ok());
        }
        if outcome.cancelled {
            total.cancelled = true;
            break;
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    send(WorkerEvent::Finished(Box::new(total)));
}

/// The edit's mask on the photo: found at the processing size, then brought back onto the
/// photo the way the photo was fitted.
fn find_mask(session: &Session, job: &MaskJob, cancel: &CancelToken) -> Result<GrayImage, String> {
    let request = job
        .edit
        .request_for(session.model(), &job.photo)
        .map_err(|e| format!("{e:#}"))?;
    let mask = catch(|| session.find_edit_mask(&request, cancel))?;
    Ok(mask_on_photo(
        &mask,
        job.photo.rgb.dimensions(),
        job.edit.resize,
    ))
}

fn cancel_token(cancel: &Arc<Mutex<CancelToken>>) -> CancelToken {
    cancel.lock().map(|c| c.clone()).unwrap_or_default()
}

/// A folder run on the worker: the shared loop, its events passed on (engine steps as step
/// counts), panics and errors in words.
fn run_folder_job(
    session: &mut Session,
    job: &FolderJob,
    cancel: &CancelToken,
    send: &dyn Fn(WorkerEvent),
) -> Result<Box<FolderReport>, String> {
    let files = folder_files(&job.dir).map_err(|e| format!("{e:#}"))?;
    let mut on_event = |e: FolderEvent| match e {
        FolderEvent::Photo(p) => send(WorkerEvent::Folder(p)),
        FolderEvent::Engine(Event::Step(r)) => send(WorkerEvent::FolderStep {
            step: r.step,
            total: r.total,
        }),
        FolderEvent::Engine(_) => {}
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_folder(
            session,
            &job.edit,
            &files,
            &job.out_dir,
            cancel,
            &mut on_event,
        )
    }));
    match outcome {
        Ok(Ok(report)) => Ok(Box::new(report)),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(format!(
            "The engine stopped unexpectedly: {}",
            panic_text(panic.as_ref())
        )),
    }
}

fn final_images(method: Method, images: &BranchImages) -> Vec<(Branch, RgbImage)> {
    let img = |t: &Option<Tensor>| t.as_ref().and_then(|t| tensor_to_image(t).ok());
    [
        (method.translation(), img(&images.translation)),
        (method.reconstruction(), img(&images.reconstruction)),
        (
            Method::Ddim.reconstruction(),
            img(&images.ddim_reconstruction),
        ),
        (Method::Ddim.translation(), img(&images.ddim_translation)),
    ]
    .into_iter()
    .filter_map(|(branch, img)| Some((branch, img?)))
    .fold(Vec::new(), |mut all, (branch, img)| {
        if !all.iter().any(|(b, _)| *b == branch) {
            all.push((branch, img));
        }
        all
    })
}

/// Runs engine code, turning errors and panics into readable messages.
fn catch<T>(f: impl FnOnce() -> mirror_engine::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe_error(&e)),
        Err(panic) => Err(format!(
            "The engine stopped unexpectedly: {}",
            panic_text(panic.as_ref())
        )),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Engine errors in words an artist can act on. The engine's own messages already name the
/// step and branch of a NaN and suggest what to try when memory runs out.
pub fn describe_error(e: &EngineError) -> String {
    match e {
        EngineError::NonFinite { .. } => {
            format!("{e}. Try a lower guidance, a smaller strength or another seed.")
        }
        _ => e.to_string(),
    }
}

fn forward(e: Event, send: &dyn Fn(WorkerEvent)) {
    match e {
        Event::Phase { phase, steps } => send(WorkerEvent::Phase { phase, steps }),
        Event::Inversion { step, total, .. } => send(WorkerEvent::Inversion { step, total }),
        Event::Direction { done, total } => send(WorkerEvent::Direction { done, total }),
        Event::Note(n) => send(WorkerEvent::Note(n)),
        Event::Step(report) => send(WorkerEvent::Step(Box::new(step_frame(&report)))),
        Event::StepWork(work) => send(WorkerEvent::StepWork(work)),
    }
}

fn step_frame(r: &StepReport) -> StepFrame {
    let branches = r
        .branches
        .iter()
        .filter_map(|b| {
            let decoded = b.decoded.as_ref().and_then(|t| tensor_to_image(t).ok());
            let (preview, is_decoded) = match decoded {
                Some(img) => (img, true),
                None => (latent_preview(&b.predicted_x0, 4).ok()?, false),
            };
            Some(BranchFrame {
                branch: b.branch,
                preview,
                decoded: is_decoded,
                mirror_error: b.mirror_error,
                attention: b.attention.clone().map(Arc::new),
            })
        })
        .collect();
    StepFrame {
        step: r.step,
        total: r.total,
        timestep: r.timestep,
        branches,
        redescription: r
            .redescription
            .as_ref()
            .map(|d| d.losses.clone())
            .unwrap_or_default(),
        guidance_loss: r.guidance.as_ref().map(|g| g.loss),
    }
}
