//! Carrying out what the user asked for: opening files, starting and cancelling runs,
//! exports. Anything that can fail reports a readable error and leaves the app as it was.

use std::path::Path;
use std::time::Instant;

use crate::engine::direction::find_edit_phrase;
use crate::engine::imageio::{
    ImageLimits, LoadedImage, Recipe, load_image, load_image_from_memory, plan_size, read_recipe,
    resize,
};
use crate::worker::Command;

use super::state::{Progress, SourceImage};
use super::{Action, MirrorApp, export};

impl MirrorApp {
    pub(crate) fn perform(&mut self, action: Action, ctx: &egui::Context) {
        match action {
            Action::OpenImageDialog => {
                let picked = rfd::FileDialog::new()
                    .set_title("Open an image")
                    .add_filter("Images", &["png", "jpg", "jpeg", "webp", "gif"])
                    .pick_file();
                if let Some(path) = picked {
                    self.load_image(&path);
                }
            }
            Action::LoadImage(path) => self.load_image(&path),
            Action::LoadImageBytes { bytes, name } => {
                match load_image_from_memory(&bytes, &name, &ImageLimits::default()) {
                    Ok(img) => self.set_image(img, name),
                    Err(e) => self.state.error(format!("Could not open the image:\n{e}")),
                }
            }
            Action::PasteImage => self.paste_image(),
            Action::OpenModelDialog { folder } => {
                let dialog = rfd::FileDialog::new().set_title("Open a Stable Diffusion model");
                let picked = if folder {
                    dialog.pick_folder()
                } else {
                    dialog
                        .add_filter("Checkpoints", &["safetensors", "ckpt"])
                        .pick_file()
                };
                if let Some(path) = picked {
                    self.worker.send(Command::LoadModel(path));
                }
            }
            Action::LoadModel(path) => {
                if self.state.progress.running {
                    self.state
                        .error("Cancel the run before loading another model.");
                } else {
                    self.worker.send(Command::LoadModel(path));
                }
            }
            Action::Download(repo) => {
                super::ui::welcome::start_download(&self.worker, &mut self.state, repo)
            }
            Action::Run => self.run(),
            Action::Cancel => {
                if self.state.progress.running {
                    self.worker.cancel();
                    self.state.progress.cancel_requested = true;
                    self.state.emit("cancel_requested");
                }
            }
            Action::Export => self.export_all(),
            Action::SaveTranslationAs => self.save_translation_as(),
            Action::ChooseExportDir => {
                if let Some(dir) = rfd::FileDialog::new()
                    .set_title("Export folder")
                    .pick_folder()
                {
                    self.state.export_dir = dir.display().to_string();
                }
            }
            Action::Tokenize => self.worker.send(Command::Tokenize {
                source: self.state.source_prompt.clone(),
                target: self.state.target_prompt.clone(),
            }),
            Action::ApplyPreset(i) => {
                if let Some(p) = super::presets::PRESETS.get(i) {
                    self.state.source_prompt = p.source.into();
                    self.state.target_prompt = p.target.into();
                    self.perform(Action::Tokenize, ctx);
                }
            }
        }
    }

    fn load_image(&mut self, path: &Path) {
        match load_image(path, &ImageLimits::default()) {
            Ok(img) => {
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into(),
                );
                self.state.settings.remember_image(path);
                // A Mirror PNG carries the recipe that made it.
                if let Ok(Some(recipe)) = read_recipe(path) {
                    self.restore_recipe(&recipe, &name);
                }
                self.set_image(img, name);
            }
            Err(e) => self.state.error(format!("Could not open the image:\n{e}")),
        }
    }

    fn restore_recipe(&mut self, r: &Recipe, name: &str) {
        self.state.source_prompt = r.source_prompt.clone();
        self.state.target_prompt = r.target_prompt.clone();
        self.state.run.apply_recipe(r);
        self.state.resize = r.resize;
        self.state.note(format!(
            "{name} was made by Mirror: its recipe is restored (\"{}\" to \"{}\", {} steps, seed {}).",
            r.source_prompt, r.target_prompt, r.steps, r.seed
        ));
        self.state.emit("recipe_restored");
        self.worker.send(Command::Tokenize {
            source: r.source_prompt.clone(),
            target: r.target_prompt.clone(),
        });
    }

    fn set_image(&mut self, loaded: LoadedImage, name: String) {
        self.state.emit(&format!(
            "image_loaded {}x{}",
            loaded.rgb.width(),
            loaded.rgb.height()
        ));
        self.textures.forget("source");
        self.state.image = Some(SourceImage { loaded, name });
    }

    fn paste_image(&mut self) {
        let got = arboard::Clipboard::new().and_then(|mut c| c.get_image());
        match got {
            Ok(img) => {
                let rgba = image::RgbaImage::from_raw(
                    img.width as u32,
                    img.height as u32,
                    img.bytes.into_owned(),
                );
                match rgba {
                    Some(rgba) => {
                        let mut png = Vec::new();
                        let encoded = image::DynamicImage::ImageRgba8(rgba)
                            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png);
                        match encoded {
                            Ok(()) => self.perform_bytes(png),
                            Err(e) => self
                                .state
                                .error(format!("The pasted image could not be read: {e}")),
                        }
                    }
                    None => self.state.error("The pasted image has an unexpected size."),
                }
            }
            Err(_) => self
                .state
                .note("The clipboard holds no image (copy an image or a file path first)."),
        }
    }

    fn perform_bytes(&mut self, png: Vec<u8>) {
        match load_image_from_memory(&png, "pasted image", &ImageLimits::default()) {
            Ok(img) => self.set_image(img, "pasted image".into()),
            Err(e) => self
                .state
                .error(format!("Could not open the pasted image:\n{e}")),
        }
    }

    /// The image at the size the model runs at, as the resize policy makes it.
    pub(crate) fn processing_image(&self) -> Result<image::RgbImage, String> {
        let model = self.state.model_ready().ok_or("Load a model first.")?;
        let img = self
            .state
            .image
            .as_ref()
            .ok_or("Open an image first (Ctrl+O, drop or paste).")?;
        let size = plan_size(
            img.loaded.original_size,
            None,
            model.default_side,
            model.size_multiple,
        )
        .map_err(|e| e.to_string())?;
        Ok(resize(&img.loaded.rgb, size, self.state.resize))
    }

    fn run(&mut self) {
        if self.state.progress.running {
            return;
        }
        let image = match self.processing_image() {
            Ok(i) => i,
            Err(e) => return self.state.error(e),
        };
        let (source, target) = (
            self.state.source_prompt.trim().to_string(),
            self.state.target_prompt.trim().to_string(),
        );
        if source.is_empty() || target.is_empty() {
            return self
                .state
                .error("Type what the image shows (source) and what it should become (target).");
        }
        if let Err(e) = find_edit_phrase(&source, &target) {
            return self.state.error(format!("The prompts give no edit: {e}"));
        }
        let req = self.state.run.request(image, &source, &target);
        self.state.result_recipe = Some(self.recipe(&req));
        self.state.frames.clear();
        self.state.timeline = None;
        self.state.frame_stats = Default::default();
        self.textures.forget("");
        self.state.progress = Progress {
            running: true,
            started: Some(Instant::now()),
            ..Default::default()
        };
        self.state
            .emit(&format!("run_requested steps={}", req.steps));
        self.worker.send(Command::Run(Box::new(req)));
    }

    fn recipe(&self, req: &crate::engine::session::TranslateRequest) -> Recipe {
        let model = self.state.model_ready();
        Recipe {
            version: crate::engine::imageio::RECIPE_VERSION,
            method: req.method.name().into(),
            preset: req.mirror.preset.to_string(),
            source_prompt: req.source_prompt.clone(),
            target_prompt: req.target_prompt.clone(),
            steps: req.steps,
            seed: req.seed,
            edit_strength: req.edit_strength,
            guidance_scale: req.mirror.guidance_scale,
            xa_guidance: req.mirror.xa_guidance,
            redescription_iterations: req.mirror.redescribe.iterations,
            redescription_lr: req.mirror.redescribe.lr,
            resize: self.state.resize,
            width: req.image.width(),
            height: req.image.height(),
            model: model.map(|m| m.name.clone()).unwrap_or_default(),
            model_hash: model.map(|m| m.fingerprint.clone()).unwrap_or_default(),
            image_hash: crate::engine::imageio::pixel_hash(&req.image),
            extra: Default::default(),
        }
    }

    fn export_all(&mut self) {
        if self.state.result.is_none() && self.state.frames.is_empty() {
            return self
                .state
                .error("Nothing to export yet: run a translation first.");
        }
        let dir = std::path::PathBuf::from(self.state.export_dir.trim());
        match export::export_all(&self.state, &dir) {
            Ok(files) => {
                self.state.emit(&format!("exported {}", files.len()));
                self.state.note(format!(
                    "Exported {} files to {}",
                    files.len(),
                    dir.display()
                ));
            }
            Err(e) => self
                .state
                .error(format!("Export failed (your result is still here):\n{e}")),
        }
    }

    fn save_translation_as(&mut self) {
        let Some(path) = rfd::FileDialog::new()
            .set_title("Save the translation")
            .add_filter("PNG", &["png"])
            .set_file_name(export::stem(&self.state) + "-translation.png")
            .save_file()
        else {
            return;
        };
        match export::save_translation(&self.state, &path) {
            Ok(()) => self.state.note(format!("Saved {}", path.display())),
            Err(e) => self
                .state
                .error(format!("Could not save (your result is still here):\n{e}")),
        }
    }
}
