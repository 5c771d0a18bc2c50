//! One edit over every photo of a folder, shared by `translate --image DIR --out OUT_DIR` and
//! the app's "Apply to a folder…". One session serves every photo (the edit direction is
//! computed once; each photo's inversion is cached as usual). Each result is written as soon
//! as it is done, with its recipe; a file that cannot be read is reported and the rest goes
//! on; a cancel keeps what is done; a contact sheet of sources and results closes the run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use image::RgbImage;

use mirror_engine::imageio::{
    ImageLimits, LoadedImage, ResizePolicy, comparison_sheet, load_image, processing_size, resize,
    resize_mask, restore_size,
};
use mirror_engine::methods::mask::EditMask;
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::{CancelToken, Event};
use mirror_engine::recipe::{Recipe, RecipeLora, RecipeOrigin, save_png_with_recipe};
use mirror_engine::session::{Session, TranslateOutcome, TranslateRequest};

/// File endings read as photos; anything else in the folder is named and skipped.
pub const PHOTO_ENDINGS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "gif"];
/// Height of each photo in the contact sheet.
const SHEET_ROW_HEIGHT: u32 = 128;
/// The contact sheet's name in the output folder.
pub const CONTACT_SHEET: &str = "contact-sheet.png";

/// The edit every photo gets: the request (its image is replaced per photo), the processing
/// size (None: the model's own side, shaped by `resize`) and how the photo is fitted to it.
#[derive(Debug, Clone)]
pub struct PhotoEdit {
    pub request: TranslateRequest,
    pub resize: ResizePolicy,
    pub size: Option<(u32, u32)>,
}

impl PhotoEdit {
    /// The request for one photo: the photo at its processing size (a given mask with it).
    pub fn request_for(
        &self,
        sd: &StableDiffusion,
        loaded: &LoadedImage,
    ) -> Result<TranslateRequest> {
        let size = processing_size(
            loaded.original_size,
            self.size,
            self.resize,
            sd.default_image_side() as u32,
            sd.size_multiple() as u32,
        )?;
        let mut req = self.request.clone();
        req.image = resize(&loaded.rgb, size, self.resize);
        if let EditMask::Given(mask) = &req.mask {
            req.mask = EditMask::Given(resize_mask(mask, loaded.original_size, size, self.resize));
        }
        Ok(req)
    }

    /// The recipe of a finished run of `req` on `loaded`.
    pub fn recipe(
        &self,
        sd: &StableDiffusion,
        req: &TranslateRequest,
        loaded: &LoadedImage,
        outcome: &TranslateOutcome,
    ) -> Recipe {
        let origin = RecipeOrigin {
            resize: self.resize,
            model: sd.info.name.clone(),
            model_hash: sd.info.fingerprint.clone(),
            image_hash: loaded.content_hash.clone(),
            vae_tiles_used: Some(outcome.vae_tiles.used),
            loras: sd.loras.iter().map(RecipeLora::from).collect(),
        };
        Recipe::from_request(req, &origin)
    }
}

/// What a folder run reports while it goes: its own progress, and the engine's inside each
/// photo's run.
#[derive(Debug)]
pub enum FolderEvent {
    Photo(PhotoEvent),
    Engine(Event),
}

/// The folder run's own progress, photo by photo.
#[derive(Debug, Clone)]
pub enum PhotoEvent {
    /// A file that is not a photo (by its ending) was left alone.
    Skipped(String),
    /// Photo `index` (from 1) of `photos` starts.
    Started {
        index: usize,
        photos: usize,
        name: String,
    },
    /// A result was written.
    Wrote(PathBuf),
    /// A photo could not be read (`unreadable`) or translated; the run goes on.
    Failed {
        name: String,
        message: String,
        unreadable: bool,
    },
    /// After each photo: how many are finished (done or failed), seconds per photo so far and
    /// the estimate of the time left.
    Progress {
        finished: usize,
        photos: usize,
        seconds_per_photo: f64,
        seconds_left: f64,
    },
}

/// How a folder run ended.
#[derive(Debug, Clone, Default)]
pub struct FolderReport {
    /// Photos of the folder (by ending).
    pub photos: usize,
    /// The results written, by photo name.
    pub written: Vec<(String, PathBuf)>,
    /// Photos that could not be read or translated, with why.
    pub failed: Vec<(String, String)>,
    /// Files left alone (not photos).
    pub skipped: Vec<String>,
    /// The run was stopped; what was done is kept.
    pub cancelled: bool,
    /// The contact sheet, when any photo came out.
    pub sheet: Option<PathBuf>,
    pub seconds: f64,
}

impl FolderReport {
    /// One line: how many came out, which failed, what was skipped.
    pub fn summary(&self) -> String {
        let failed = match self.failed.len() {
            0 => String::new(),
            n => {
                let names: Vec<&str> = self.failed.iter().map(|(n, _)| n.as_str()).collect();
                format!(", {n} failed ({})", names.join(", "))
            }
        };
        let skipped = match self.skipped.len() {
            0 => String::new(),
            1 => ", 1 other file skipped".to_string(),
            n => format!(", {n} other files skipped"),
        };
        let stopped = if self.cancelled { " (stopped)" } else { "" };
        format!(
            "{} of {} photos translated{failed}{skipped}{stopped}",
            self.written.len(),
            self.photos
        )
    }
}

/// The folder's files (not its subfolders), sorted by name; an error naming the folder when
/// it cannot be read or holds no photo.
pub fn folder_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| dir.display().to_string())?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| dir.display().to_string())?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if !files.iter().any(|p| is_photo(p)) {
        anyhow::bail!(
            "{}: no photos in the folder (PNG, JPEG, WebP)",
            dir.display()
        );
    }
    Ok(files)
}

/// Translates every photo of `files` into `out_dir` (created when missing).
pub fn run_folder(
    session: &mut Session,
    edit: &PhotoEdit,
    files: &[PathBuf],
    out_dir: &Path,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(FolderEvent),
) -> Result<FolderReport> {
    std::fs::create_dir_all(out_dir).with_context(|| out_dir.display().to_string())?;
    let started = Instant::now();
    let photos = files.iter().filter(|p| is_photo(p)).count();
    let mut report = FolderReport {
        photos,
        ..Default::default()
    };
    let mut thumbs: Vec<(String, RgbImage, RgbImage)> = Vec::new();
    for file in files {
        let name = file_name(file);
        if !is_photo(file) {
            say(on_event, PhotoEvent::Skipped(name.clone()));
            report.skipped.push(name);
            continue;
        }
        if cancel.is_cancelled() {
            report.cancelled = true;
            break;
        }
        let index = report.written.len() + report.failed.len() + 1;
        say(
            on_event,
            PhotoEvent::Started {
                index,
                photos,
                name: name.clone(),
            },
        );
        let out = output_path(out_dir, file, &report.written);
        let outcome = match load_image(file, &ImageLimits::default()) {
            Ok(loaded) => translate_photo(session, edit, loaded, &out, cancel, on_event),
            Err(e) => {
                let message = e.to_string();
                say(
                    on_event,
                    PhotoEvent::Failed {
                        name: name.clone(),
                        message: message.clone(),
                        unreadable: true,
                    },
                );
                report.failed.push((name, message));
                continue;
            }
        };
        match outcome {
            Ok(Some((source, result))) => {
                say(on_event, PhotoEvent::Wrote(out.clone()));
                report.written.push((name.clone(), out));
                thumbs.push((name, source, result));
            }
            Ok(None) => {
                report.cancelled = true;
                break;
            }
            Err(e) => {
                let message = format!("{e:#}");
                say(
                    on_event,
                    PhotoEvent::Failed {
                        name: name.clone(),
                        message: message.clone(),
                        unreadable: false,
                    },
                );
                report.failed.push((name, message));
            }
        }
        let finished = report.written.len() + report.failed.len();
        let seconds_per_photo = started.elapsed().as_secs_f64() / finished as f64;
        say(
            on_event,
            PhotoEvent::Progress {
                finished,
                photos,
                seconds_per_photo,
                seconds_left: seconds_per_photo * (photos - finished) as f64,
            },
        );
    }
    if !thumbs.is_empty() {
        let path = out_dir.join(CONTACT_SHEET);
        save_png_with_recipe(&contact_sheet(&thumbs), None, &path)?;
        report.sheet = Some(path);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn say(on_event: &mut dyn FnMut(FolderEvent), event: PhotoEvent) {
    on_event(FolderEvent::Photo(event));
}

/// One photo: translate, write at the photo's size with its recipe. `Ok(None)`: the run
/// was stopped before this photo was done (nothing written for it).
fn translate_photo(
    session: &mut Session,
    edit: &PhotoEdit,
    loaded: LoadedImage,
    out: &Path,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(FolderEvent),
) -> Result<Option<(RgbImage, RgbImage)>> {
    let req = edit.request_for(session.model(), &loaded)?;
    let outcome = session.translate(&req, cancel, &mut |e| on_event(FolderEvent::Engine(e)))?;
    if outcome.cancelled {
        return Ok(None);
    }
    let recipe = edit.recipe(session.model(), &req, &loaded, &outcome);
    let translation = (outcome.images.translation.as_ref())
        .ok_or_else(|| anyhow!("the run produced no translation"))?;
    let result = restore_size(
        &mirror_engine::imageio::tensor_to_image(translation)?,
        loaded.original_size,
        edit.resize,
    );
    save_png_with_recipe(&result, Some(&recipe), out)?;
    Ok(Some((loaded.rgb, result)))
}

pub fn is_photo(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PHOTO_ENDINGS.contains(&e.to_ascii_lowercase().as_str()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `OUT_DIR/<stem>.png`, or `<stem>-<ending>.png` when another photo of the run took it
/// (`cat.png` and `cat.jpg`).
fn output_path(out_dir: &Path, photo: &Path, written: &[(String, PathBuf)]) -> PathBuf {
    let stem = photo
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "photo".into());
    let path = out_dir.join(format!("{stem}.png"));
    if !written.iter().any(|(_, p)| *p == path) {
        return path;
    }
    let ending = photo
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    out_dir.join(format!("{stem}-{ending}.png"))
}

/// One row per photo: its name over the source, then the result, each scaled to the row
/// height.
fn contact_sheet(done: &[(String, RgbImage, RgbImage)]) -> RgbImage {
    let thumb = |img: &RgbImage| {
        let w = (img.width() * SHEET_ROW_HEIGHT / img.height().max(1)).max(1);
        image::imageops::resize(
            img,
            w,
            SHEET_ROW_HEIGHT,
            image::imageops::FilterType::Triangle,
        )
    };
    let rows: Vec<RgbImage> = done
        .iter()
        .map(|(name, source, result)| {
            comparison_sheet(&[
                (name.clone(), thumb(source)),
                ("result".into(), thumb(result)),
            ])
        })
        .collect();
    let width = rows.iter().map(RgbImage::width).max().unwrap_or(1);
    let height: u32 = rows.iter().map(RgbImage::height).sum();
    let mut sheet = RgbImage::from_pixel(width, height.max(1), image::Rgb([255, 255, 255]));
    let mut y = 0;
    for row in &rows {
        image::imageops::replace(&mut sheet, row, 0, i64::from(y));
        y += row.height();
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_photo_with_the_same_stem_keeps_its_ending() {
        let out = Path::new("/out");
        let first = output_path(out, Path::new("/in/cat.png"), &[]);
        assert_eq!(first, Path::new("/out/cat.png"));
        let written = vec![("cat.png".to_string(), first)];
        let second = output_path(out, Path::new("/in/cat.jpg"), &written);
        assert_eq!(second, Path::new("/out/cat-jpg.png"));
    }

    #[test]
    fn photos_are_known_by_their_ending_in_any_case() {
        assert!(is_photo(Path::new("a.JPG")));
        assert!(is_photo(Path::new("a.webp")));
        assert!(!is_photo(Path::new("notes.txt")));
        assert!(!is_photo(Path::new("noending")));
    }
}
