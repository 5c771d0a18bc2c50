//! Carrying out what the user asked for: starting and cancelling runs, recipes. Files (open,
//! paste, export, dialogs) are in `files`. Anything that can fail reports a readable error
//! and leaves the app as it was.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{GrayImage, RgbImage};

use crate::folder_run::PhotoEdit;
use crate::worker::{Command, FolderJob, MaskJob, RunJob, RunPart};
use mirror_engine::direction::find_edit_phrase;
use mirror_engine::imageio::{
    MAX_ASPECT, ResizePolicy, beyond_aspect_limit, processing_size, resize, resize_mask,
};
use mirror_engine::methods::mask::EditMask;
use mirror_engine::recipe::{Recipe, RecipeLora, RecipeOrigin};
use mirror_engine::session::Method;

use super::MirrorApp;
use super::action::{Action, MaskAction};
use super::jobs::{JobKind, JobOutput, Pick};
use super::mask::Brush;
use super::run_settings::EditRegion;
use super::state::{Progress, RunKind, RunShape, method_label};
use mirror_engine::imageio::mask_on_photo;

impl MirrorApp {
    pub(crate) fn perform(&mut self, action: Action) {
        match action {
            Action::OpenImageDialog => self.pick(Pick::Image),
            Action::LoadImage(path) => self.load_image(path),
            Action::OpenPath(path) => {
                let is_model = path.is_dir()
                    || path
                        .extension()
                        .is_some_and(|e| e == "safetensors" || e == "ckpt");
                if !path.exists() {
                    self.state
                        .error(format!("There is no file or folder at {}.", path.display()));
                } else if is_model {
                    self.state.dialog_hint = false;
                    self.perform(Action::LoadModel(path));
                } else {
                    self.state.dialog_hint = false;
                    self.load_image(path);
                }
            }
            Action::LoadImageBytes { bytes, name } => self.load_image_bytes(bytes, name),
            Action::PasteImage => self.paste_image(),
            Action::OpenModelDialog { folder } => self.pick(if folder {
                Pick::ModelFolder
            } else {
                Pick::ModelFile
            }),
            Action::LoadModel(path) => {
                if self.state.progress.running {
                    self.state
                        .error("Cancel the run before loading another model.");
                } else {
                    let compute = self.state.settings.compute();
                    self.worker.send(Command::LoadModel(path, compute));
                }
            }
            Action::LoadDemoModel => {
                if self.state.progress.running {
                    self.state
                        .error("Cancel the run before loading another model.");
                } else {
                    self.load_demo_model();
                }
            }
            Action::NewDemoImage => self.new_demo_image(),
            Action::Download(repo) => {
                super::ui::welcome::start_download(&self.worker, &mut self.state, repo)
            }
            Action::Run(kind) => self.prepare_run(kind),
            Action::Cancel => {
                if self.state.progress.running {
                    self.worker.cancel();
                    self.state.progress.cancel_requested = true;
                    self.state.emit("cancel_requested");
                }
                if let Some(run) = self.state.folder.as_mut().filter(|f| f.running) {
                    self.worker.cancel();
                    run.cancel_requested = true;
                    self.state.emit("folder_cancel_requested");
                }
            }
            Action::CancelJob(id) => self.jobs.cancel(id),
            Action::Export => self.export_all(),
            Action::ApplyToFolderDialog => {
                self.state.show_folder_row = true;
                self.pick(Pick::PhotoFolder);
            }
            Action::ApplyToFolder(dir) => {
                self.state.show_folder_row = true;
                self.apply_to_folder(dir);
            }
            Action::SaveTranslationAs => self.pick(Pick::SaveTranslation),
            Action::ChooseExportDir => self.pick(Pick::ExportFolder),
            Action::Tokenize => self.worker.send(Command::Tokenize {
                source: self.state.settings.source_prompt.clone(),
                target: self.state.settings.target_prompt.clone(),
            }),
            Action::AddLoraDialog => self.pick(Pick::Lora),
            Action::AddLora(path) => self.add_lora(path),
            Action::RemoveLora(i) => self.remove_lora(i),
            Action::ApplyLoras => self.apply_loras(),
            Action::ApplyPreset(i) => {
                if let Some(p) = self.state.edits().get(i) {
                    self.state.settings.source_prompt.clone_from(&p.source);
                    self.state.settings.target_prompt.clone_from(&p.target);
                    self.perform(Action::Tokenize);
                }
            }
            Action::Mask(m) => self.mask_action(m),
        }
    }

    /// Paints, undoes, inverts, clears or fills the photo's mask. Painting chooses the painted
    /// edit region (that is what the strokes are for).
    fn mask_action(&mut self, action: MaskAction) {
        let tools = self.state.paint.clone();
        let found = self.state.found_mask().cloned();
        let policy =
            (self.state.result_recipe.as_ref()).map_or(self.state.settings.resize, |r| r.resize);
        let Some(mask) = self.state.mask_mut() else {
            return;
        };
        let (w, h) = mask.size();
        let brush = Brush {
            radius: (tools.size_percent / 100.0 * w.max(h) as f32).max(0.5),
            softness: tools.softness,
            erase: tools.erase,
        };
        let mut painted = true;
        let event = match action {
            MaskAction::StrokeStart(at) => {
                mask.begin_stroke(brush, at);
                "mask_stroke_started"
            }
            MaskAction::StrokeTo(at) => {
                mask.extend_stroke(at);
                return;
            }
            MaskAction::StrokeEnd => {
                mask.end_stroke();
                "mask_stroke_ended"
            }
            MaskAction::Undo => {
                painted = false;
                if mask.undo() {
                    "mask_undo"
                } else {
                    "mask_nothing_to_undo"
                }
            }
            MaskAction::Invert => {
                mask.invert();
                "mask_inverted"
            }
            MaskAction::Clear => {
                mask.clear();
                "mask_cleared"
            }
            MaskAction::FillFromEdit => {
                let Some(found) = found else {
                    return self.find_mask();
                };
                mask.fill(mask_on_photo(&found, (w, h), policy));
                "mask_filled"
            }
        };
        let coverage = mask.coverage();
        if painted && self.state.settings.run.edit_region != EditRegion::Painted {
            self.state.settings.run.edit_region = EditRegion::Painted;
            self.state
                .note("Edit region: painted. Runs now change only where the mask is painted.");
        }
        self.state.emit(&format!("{event} coverage={coverage:.3}"));
    }

    /// The edit as set up now, for any photo (checked prompts; the photo is put in per photo
    /// at the processing size the resize choice gives).
    fn photo_edit(&self) -> Result<PhotoEdit, String> {
        let (source, targets) = self.check_prompts(RunKind::Single)?;
        let blank = image::RgbImage::new(1, 1);
        Ok(PhotoEdit {
            request: self.state.settings.run.request(blank, &source, &targets[0]),
            resize: self.state.settings.resize,
            size: None,
        })
    }

    /// Asks the worker for the mask of the edit as set up now (the last run's is not the one,
    /// or there was none): the answer fills the painted mask.
    fn find_mask(&mut self) {
        if self.state.progress.running || self.state.folder_running() || self.state.finding_mask {
            return self
                .state
                .note("Wait for the run in progress to finish (or stop it).");
        }
        let Some(img) = self.state.image.as_ref() else {
            return;
        };
        let photo = img.loaded.clone();
        let edit = match self.photo_edit() {
            Ok(e) => e,
            Err(e) => return self.state.error(e),
        };
        self.state.finding_mask = true;
        self.state.emit("mask_find_requested");
        self.worker
            .send(Command::FindMask(Box::new(MaskJob { edit, photo })));
    }

    /// Restores a recipe's settings; a painted mask it carries becomes the mask of the photo
    /// just opened (call after the photo is set).
    pub(crate) fn restore_recipe(&mut self, r: &Recipe, name: &str) {
        let painted = match self.state.settings.run.apply_recipe(r) {
            Ok(painted) => painted,
            Err(e) => {
                return self.state.error(format!(
                    "{name} carries a Mirror recipe that this version cannot restore: {e}. \
                     The image is opened; your settings are unchanged."
                ));
            }
        };
        if let (Some(mask), Some(img)) = (painted, &self.state.image) {
            let size = img.loaded.rgb.dimensions();
            // A Mirror PNG is a translation: at the processed picture's shape (then the mask
            // fits as it is), or back at the photo's.
            let same_shape = (mask.width() as u64 * size.1 as u64)
                .abs_diff(mask.height() as u64 * size.0 as u64)
                <= (mask.height() as u64 * size.0 as u64) / 100;
            let on_photo = if same_shape {
                mask_on_photo(&mask, size, ResizePolicy::Stretch)
            } else {
                mask_on_photo(&mask, size, r.resize)
            };
            self.state.mask = Some(super::mask::PaintedMask::from_image(size, on_photo));
            self.state.emit("mask_restored");
        }
        self.state.settings.source_prompt = r.source_prompt.clone();
        self.state.settings.target_prompt = r.target_prompt.clone();
        self.state.settings.resize = r.resize;
        self.state.note(format!(
            "{name} was made by Mirror: its recipe is restored ({}, \"{}\" to \"{}\", {} steps, seed {}).",
            method_label(self.state.settings.run.method),
            r.source_prompt,
            r.target_prompt,
            r.steps,
            r.seed
        ));
        let missing = self.restore_loras(&r.loras);
        if !missing.is_empty() {
            self.state.note(format!(
                "{name} was made with LoRAs that are not in your list ({}): add them in the LoRAs list under \
                 Advanced to replay it exactly.",
                missing.join(", ")
            ));
        }
        self.state.emit("recipe_restored");
        self.worker.send(Command::Tokenize {
            source: r.source_prompt.clone(),
            target: r.target_prompt.clone(),
        });
    }

    /// Checks that a run can start, then brings the image to its processing size on a job
    /// thread (a Lanczos resize of a large photo takes a while); the run starts when it is done.
    fn prepare_run(&mut self, kind: RunKind) {
        if self.state.progress.running || self.jobs.is_running(JobKind::PreparingRun) {
            return;
        }
        if self.state.folder_running() {
            return self
                .state
                .note("A folder run is going on: wait for it, or stop it.");
        }
        let model = match self.state.model_ready() {
            Some(m) => m.clone(),
            None => return self.state.error("Load a model first."),
        };
        let Some(img) = self.state.image.as_ref() else {
            return self
                .state
                .error("Open an image first (Ctrl+O, drop it on the window, or paste it).");
        };
        let size = match processing_size(
            img.loaded.original_size,
            None,
            self.state.settings.resize,
            model.default_side,
            model.size_multiple,
        ) {
            Ok(size) => size,
            Err(e) => return self.state.error(e.to_string()),
        };
        if let Err(e) = self.check_prompts(kind) {
            return self.state.error(e);
        }
        // The mask as it is now: strokes made while the run prepares do not count.
        let painted = match self.state.settings.run.edit_region {
            EditRegion::Painted => match self.state.mask.as_ref().filter(|m| !m.is_empty()) {
                Some(m) => Some(m.pixels().clone()),
                None => {
                    return self.state.error(
                        "Paint where the edit may change the picture first (the Mask tab), or \
                         choose another edit region.",
                    );
                }
            },
            _ => None,
        };
        let (source, policy) = (img.loaded.rgb.clone(), self.state.settings.resize);
        if policy == ResizePolicy::Keep && beyond_aspect_limit(img.loaded.original_size) {
            self.state.note(format!(
                "The photo is longer than 1:{MAX_ASPECT}: it is processed in a 1:{MAX_ASPECT} \
                 frame with grey borders ({}×{}).",
                size.0, size.1
            ));
        }
        self.state.emit("run_preparing");
        self.jobs.spawn(JobKind::PreparingRun, move |_| {
            let photo = source.dimensions();
            Ok(JobOutput::RunImage {
                kind,
                image: resize(&source, size, policy),
                mask: painted.map(|m| resize_mask(&m, photo, size, policy)),
            })
        });
    }

    /// The source and target prompts of a run of `kind`, checked.
    pub(crate) fn check_prompts(&self, kind: RunKind) -> Result<(String, Vec<String>), String> {
        let source = self.state.settings.source_prompt.trim().to_string();
        let mut targets = vec![self.state.settings.target_prompt.trim().to_string()];
        if kind == RunKind::Targets {
            targets.extend(
                self.state
                    .more_targets
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        if source.is_empty() || targets[0].is_empty() {
            return Err(
                "Type what the image shows (source) and what it should become (target).".into(),
            );
        }
        if let Some(message) = self.state.unknown_words_message() {
            return Err(message);
        }
        for target in &targets {
            if let Err(e) = find_edit_phrase(&source, target) {
                return Err(format!("The prompts give no edit (\"{target}\"): {e}"));
            }
        }
        Ok((source, targets))
    }

    /// Starts a run of `kind`: the chosen method, the three methods side by side
    /// (`Compare`), or the target prompt and every extra target (`Targets`), one after
    /// another on the same inversion.
    pub(crate) fn run(&mut self, kind: RunKind, image: RgbImage, mask: Option<GrayImage>) {
        if self.state.progress.running {
            return;
        }
        let (source, targets) = match self.check_prompts(kind) {
            Ok(p) => p,
            Err(e) => return self.state.error(e),
        };
        let settings = &self.state.settings.run;
        let mask = mask.as_ref();
        let parts: Vec<RunPart> = match kind {
            RunKind::Single => vec![RunPart {
                label: method_label(settings.method).into(),
                request: settings.request_with_mask(image, &source, &targets[0], mask),
            }],
            // One inversion, three methods: Mirror with its plain DDIM comparison, then
            // pix2pix-zero on the cached inversion.
            RunKind::Compare => [Method::Mirror, Method::Pix2PixZero]
                .into_iter()
                .map(|method| {
                    let mut req =
                        settings.request_with_mask(image.clone(), &source, &targets[0], mask);
                    req.method = method;
                    req.compare_ddim = method == Method::Mirror;
                    RunPart {
                        label: method_label(method).into(),
                        request: req,
                    }
                })
                .collect(),
            RunKind::Targets => targets
                .iter()
                .map(|target| RunPart {
                    label: format!("\"{target}\""),
                    request: settings.request_with_mask(image.clone(), &source, target, mask),
                })
                .collect(),
        };
        let first = &parts[0].request;
        self.state.result_recipe = Some(self.recipe(first));
        self.state.shape = Some(RunShape {
            kind,
            method: first.method,
            compare_ddim: first.compare_ddim,
        });
        self.state.frames.clear();
        self.state.target_results.clear();
        self.state.timeline = None;
        self.state.frame_stats = Default::default();
        self.textures.forget("");
        self.state.progress = Progress {
            running: true,
            started: Some(Instant::now()),
            parts: parts.len(),
            ..Default::default()
        };
        self.state.emit(&format!(
            "run_requested steps={} method={} parts={}",
            first.steps,
            first.method,
            parts.len()
        ));
        self.worker.send(Command::Run(Box::new(RunJob { parts })));
    }

    pub(crate) fn recipe(&self, req: &mirror_engine::session::TranslateRequest) -> Recipe {
        let model = self.state.model_ready();
        let origin = RecipeOrigin {
            resize: self.state.settings.resize,
            model: model.map(|m| m.name.clone()).unwrap_or_default(),
            model_hash: model.map(|m| m.fingerprint.clone()).unwrap_or_default(),
            image_hash: (self.state.image.as_ref())
                .map(|i| i.loaded.content_hash.clone())
                .unwrap_or_default(),
            // Known once the run finishes (`AppState::finish`).
            vae_tiles_used: None,
            loras: (self.state.applied_loras.iter())
                .map(RecipeLora::from)
                .collect(),
        };
        Recipe::from_request(req, &origin)
    }
}

impl MirrorApp {
    /// Starts the edit on every photo of `dir`: checks what a single run checks (a model, the
    /// prompts), then hands the job to the worker.
    pub(crate) fn apply_to_folder(&mut self, dir: PathBuf) {
        if self.state.progress.running || self.state.folder_running() {
            return self
                .state
                .note("Wait for the run in progress to finish (or stop it).");
        }
        if self.state.model_ready().is_none() {
            return self.state.error("Load a model first.");
        }
        if !dir.is_dir() {
            return self
                .state
                .error(format!("{}: not a folder of photos.", dir.display()));
        }
        let mut edit = match self.photo_edit() {
            Ok(e) => e,
            Err(e) => return self.state.error(e),
        };
        if self.state.settings.run.edit_region == EditRegion::Painted {
            // A painted mask belongs to the photo it was painted on.
            edit.request.mask = EditMask::Whole;
            self.state.note(
                "The painted mask belongs to the open photo: each photo of the folder is edited \
                 as a whole.",
            );
        }
        let out_dir =
            super::folder::results_folder(Path::new(self.state.settings.export_dir.trim()), &dir);
        self.state
            .emit(&format!("folder_run_requested {}", dir.display()));
        self.state.folder = Some(super::folder::FolderRun {
            dir: dir.clone(),
            out_dir: out_dir.clone(),
            running: true,
            ..Default::default()
        });
        self.worker.send(Command::RunFolder(Box::new(FolderJob {
            edit,
            dir,
            out_dir,
        })));
    }
}
