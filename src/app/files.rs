//! Files in and out, all on job threads: opening and decoding images (with their recipe),
//! pasting, file dialogs, exports and settings writes. The frame starts a job and picks up its
//! result in [`MirrorApp::finish_jobs`]; errors name the file and change nothing.

use std::path::{Path, PathBuf};

use mirror_engine::imageio::{ImageLimits, LoadedImage, load_image, load_image_from_memory};
use mirror_engine::recipe::{read_recipe, read_recipe_from_memory};

use super::export::ExportData;
use super::jobs::{JobDone, JobKind, JobOutput, Pick, block_on};
use super::state::SourceImage;
use super::{MirrorApp, settings::Settings};

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

impl MirrorApp {
    /// Opens an image file on a job thread (decoding a large photo takes a while).
    pub(crate) fn load_image(&mut self, path: PathBuf) {
        self.state
            .emit(&format!("image_opening {}", path.display()));
        self.jobs.spawn(JobKind::OpeningImage, move |_| {
            let loaded = load_image(&path, &ImageLimits::default())
                .map_err(|e| format!("Could not open the image:\n{e}"))?;
            // A Mirror PNG carries the recipe that made it.
            let recipe = read_recipe(&path).ok().flatten().map(Box::new);
            Ok(JobOutput::ImageLoaded {
                loaded: Box::new(loaded),
                name: file_name(&path),
                path: Some(path),
                recipe,
            })
        });
    }

    /// Decodes image bytes (a drop without a path) on a job thread.
    pub(crate) fn load_image_bytes(&mut self, bytes: Vec<u8>, name: String) {
        self.jobs.spawn(JobKind::OpeningImage, move |_| {
            let loaded = load_image_from_memory(&bytes, &name, &ImageLimits::default())
                .map_err(|e| format!("Could not open the image:\n{e}"))?;
            let recipe = read_recipe_from_memory(&bytes, &name)
                .ok()
                .flatten()
                .map(Box::new);
            Ok(JobOutput::ImageLoaded {
                loaded: Box::new(loaded),
                name,
                path: None,
                recipe,
            })
        });
    }

    /// Reads the clipboard's image and converts it on a job thread.
    pub(crate) fn paste_image(&mut self) {
        self.jobs.spawn(JobKind::PastingImage, |_| {
            let Ok(img) = arboard::Clipboard::new().and_then(|mut c| c.get_image()) else {
                return Ok(JobOutput::ClipboardEmpty);
            };
            let rgba =
                image::RgbaImage::from_raw(img.width as u32, img.height as u32, img.bytes.into())
                    .ok_or("The pasted image has an unexpected size.")?;
            let rgb = image::DynamicImage::ImageRgba8(rgba).to_rgb8();
            let loaded = LoadedImage {
                original_size: rgb.dimensions(),
                source: PathBuf::from("pasted image"),
                content_hash: mirror_engine::imageio::pixel_hash(&rgb),
                rgb,
            };
            Ok(JobOutput::ImageLoaded {
                loaded: Box::new(loaded),
                name: "pasted image".into(),
                path: None,
                recipe: None,
            })
        });
    }

    /// Opens a file dialog on a job thread (rfd's async dialog); the frame keeps drawing.
    pub(crate) fn pick(&mut self, purpose: Pick) {
        if self.jobs.is_running(JobKind::Dialog) {
            return; // one dialog at a time
        }
        let save_name = super::export::stem(&self.state) + "-translation.png";
        self.state.emit("dialog_opened");
        self.jobs.spawn(JobKind::Dialog, move |_| {
            let dialog = rfd::AsyncFileDialog::new();
            let picked = block_on(async move {
                match purpose {
                    Pick::Image => {
                        dialog
                            .set_title("Open an image")
                            .add_filter("Images", &["png", "jpg", "jpeg", "webp", "gif"])
                            .pick_file()
                            .await
                    }
                    Pick::Lora => {
                        dialog
                            .set_title("Add a LoRA")
                            .add_filter("LoRA", &["safetensors"])
                            .pick_file()
                            .await
                    }
                    Pick::ModelFolder => {
                        dialog
                            .set_title("Open a Stable Diffusion model folder")
                            .pick_folder()
                            .await
                    }
                    Pick::ModelFile => {
                        dialog
                            .set_title("Open a Stable Diffusion checkpoint")
                            .add_filter("Checkpoints", &["safetensors", "ckpt"])
                            .pick_file()
                            .await
                    }
                    Pick::ExportFolder => dialog.set_title("Export folder").pick_folder().await,
                    Pick::PhotoFolder => {
                        dialog
                            .set_title("Apply the edit to a folder of photos")
                            .pick_folder()
                            .await
                    }
                    Pick::SaveTranslation => {
                        dialog
                            .set_title("Save the translation")
                            .add_filter("PNG", &["png"])
                            .set_file_name(save_name)
                            .save_file()
                            .await
                    }
                }
            });
            Ok(JobOutput::Picked {
                purpose,
                path: picked.map(|h| h.path().to_path_buf()),
            })
        });
    }

    /// Ctrl+S: everything into the export folder, written on a job thread (cancellable
    /// between files).
    pub(crate) fn export_all(&mut self) {
        if self.state.result.is_none() && self.state.frames.is_empty() {
            return self
                .state
                .error("Nothing to export yet: run a translation first.");
        }
        let dir = PathBuf::from(self.state.settings.export_dir.trim());
        let data = ExportData::gather(&self.state);
        self.jobs.spawn(JobKind::Exporting, move |cancel| {
            let files = data
                .write_all(&dir, cancel)
                .map_err(|e| format!("Export failed (your result is still here):\n{e}"))?;
            Ok(JobOutput::Exported { files, dir })
        });
    }

    fn save_translation(&mut self, path: PathBuf) {
        let data = ExportData::gather(&self.state);
        self.jobs.spawn(JobKind::SavingTranslation, move |_| {
            data.save_translation(&path)
                .map_err(|e| format!("Could not save (your result is still here):\n{e}"))?;
            Ok(JobOutput::Saved(path))
        });
    }

    /// Writes the settings on a job thread (one write at a time; a newer one follows).
    pub(crate) fn save_settings(&mut self, settings: Settings, dir: PathBuf) {
        self.jobs.spawn(JobKind::SavingSettings, move |_| {
            settings
                .save(&dir)
                .map_err(|e| format!("Could not save settings: {e}"))?;
            Ok(JobOutput::SettingsSaved)
        });
    }

    /// Picks up finished jobs and applies their results.
    pub(crate) fn finish_jobs(&mut self) {
        for JobDone { kind, result, .. } in self.jobs.finished() {
            match result {
                Ok(output) => self.apply_job(output),
                // A failed settings write is a note (the app works on); others are errors.
                Err(e) if kind == JobKind::SavingSettings => self.state.note(e),
                Err(e) => self.state.error(e),
            }
        }
    }

    fn apply_job(&mut self, output: JobOutput) {
        match output {
            JobOutput::ImageLoaded {
                loaded,
                name,
                path,
                recipe,
            } => {
                if let Some(path) = &path {
                    self.state.settings.remember_image(path);
                }
                self.set_image(*loaded, name.clone());
                if let Some(recipe) = recipe {
                    self.restore_recipe(&recipe, &name);
                }
            }
            JobOutput::ClipboardEmpty => self
                .state
                .note("The clipboard holds no image (copy an image or a file path first)."),
            JobOutput::RunImage { kind, image, mask } => self.run(kind, image, mask),
            JobOutput::Exported { files, dir } => {
                self.state.emit(&format!("exported {}", files.len()));
                self.state.note(format!(
                    "Exported {} files to {}",
                    files.len(),
                    dir.display()
                ));
            }
            JobOutput::Saved(path) => self.state.note(format!("Saved {}", path.display())),
            JobOutput::SettingsSaved => {}
            JobOutput::Picked { purpose, path } => {
                let Some(path) = path else {
                    self.state.emit("dialog_closed_without_choice");
                    if purpose == Pick::PhotoFolder {
                        return self.state.note(
                            "No folder was chosen. If no dialog appeared, type or paste the \
                             folder's path into the Photo folder field under Export, then \
                             press Apply to the folder.",
                        );
                    }
                    self.state.dialog_hint = true;
                    return self.state.note(super::state::NO_DIALOG_HINT);
                };
                self.state.dialog_hint = false;
                match purpose {
                    Pick::Image => self.load_image(path),
                    Pick::Lora => self.perform(super::action::Action::AddLora(path)),
                    Pick::ModelFolder | Pick::ModelFile => {
                        self.perform(super::action::Action::LoadModel(path))
                    }
                    Pick::ExportFolder => {
                        self.state.settings.export_dir = path.display().to_string()
                    }
                    Pick::PhotoFolder => {
                        self.state.folder_field = path.display().to_string();
                        self.perform(super::action::Action::ApplyToFolder(path));
                    }
                    Pick::SaveTranslation => self.save_translation(path),
                }
            }
            JobOutput::DemoModelUnpacked(dir) => {
                self.perform(super::action::Action::LoadModel(dir))
            }
            JobOutput::ModelWords { path, words } => self.apply_model_words(path, *words),
            JobOutput::Cancelled => self.state.note("Stopped; nothing was changed."),
        }
    }

    /// Unpacks the built-in demo model on a job thread (the first time it writes ~20 MB).
    pub(crate) fn load_demo_model(&mut self) {
        self.jobs.spawn(JobKind::UnpackingDemo, |_| {
            mirror_engine::demo::model_dir().map(JobOutput::DemoModelUnpacked)
        });
    }

    /// Shows the next demo image (rendered here: 64×64 pixels take well under a millisecond)
    /// with its caption as the source prompt and a one-word edit as the target.
    pub(crate) fn new_demo_image(&mut self) {
        let seed = self.state.demo_seed;
        self.state.demo_seed += 1;
        let example = mirror_engine::demo::example(seed);
        self.state.settings.source_prompt = example.source_prompt;
        self.state.settings.target_prompt = example.target_prompt;
        let name = format!("demo image {}", seed + 1);
        let loaded = LoadedImage {
            content_hash: mirror_engine::imageio::pixel_hash(&example.image),
            original_size: example.image.dimensions(),
            source: PathBuf::from(&name),
            rgb: example.image,
        };
        self.set_image(loaded, name);
        self.perform(super::action::Action::Tokenize);
    }

    fn set_image(&mut self, loaded: LoadedImage, name: String) {
        self.state.emit(&format!(
            "image_loaded {}x{}",
            loaded.rgb.width(),
            loaded.rgb.height()
        ));
        self.textures.forget("source");
        // The painted mask belongs to the photo it was painted on.
        self.state.mask = None;
        // An image is in: the no-dialog hint has done its work.
        self.state.dialog_hint = false;
        self.state.image = Some(SourceImage { loaded, name });
    }
}
