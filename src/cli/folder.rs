//! `translate --image DIR --out OUT_DIR`: one edit over every photo of a folder. The model
//! loads once and one session serves all photos (the edit direction is computed once; each
//! photo's inversion is cached as usual). Each result is written as soon as it is done, with
//! its recipe; a file that cannot be read gets a line and the rest goes on; Ctrl-C keeps what
//! is done; a contact sheet of sources and results closes the run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use image::RgbImage;

use super::Cancelled;
use super::interrupt;
use super::outputs::{save_tensor_png, to_image};
use super::translate::{
    RequestPlan, TranslateArgs, open_session, prepare_request, recipe_of, translate_one,
};
use mirror_engine::imageio::{ImageLimits, comparison_sheet, load_image, restore_size};
use mirror_engine::loader::ModelNotes;
use mirror_engine::pipeline::CancelToken;
use mirror_engine::recipe::save_png_with_recipe;

/// File endings read as photos; anything else in the folder is named and skipped.
const PHOTO_ENDINGS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "gif"];
/// Height of each photo in the contact sheet.
const SHEET_ROW_HEIGHT: u32 = 128;
/// The contact sheet's name in the output folder.
pub const CONTACT_SHEET: &str = "contact-sheet.png";

/// What happened to each file of the folder.
#[derive(Default)]
struct Tally {
    done: Vec<(String, RgbImage, RgbImage)>,
    failed: Vec<String>,
    skipped: usize,
}

pub fn run(
    args: &TranslateArgs,
    model_path: &Path,
    notes: &ModelNotes,
    plan: &RequestPlan,
) -> Result<()> {
    refuse_single_outputs(args)?;
    let out_dir = &args.out;
    if out_dir.is_file() {
        bail!(
            "{}: with a folder of photos, --out is the folder the results go to",
            out_dir.display()
        );
    }
    std::fs::create_dir_all(out_dir).with_context(|| out_dir.display().to_string())?;
    let files = folder_files(&args.image)?;
    let photos = files.iter().filter(|p| is_photo(p)).count();
    if photos == 0 {
        bail!(
            "{}: no photos in the folder (PNG, JPEG, WebP)",
            args.image.display()
        );
    }
    let mut session = open_session(args, model_path, notes, plan)?;
    let cancel = CancelToken::new();
    interrupt::install(&cancel);
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut taken: Vec<PathBuf> = Vec::new();
    let mut cancelled = false;
    for file in &files {
        let name = file_name(file);
        if !is_photo(file) {
            eprintln!("skipped {name}: not a photo (PNG, JPEG, WebP)");
            tally.skipped += 1;
            continue;
        }
        let k = tally.done.len() + tally.failed.len() + 1;
        eprintln!("[{k}/{photos}] {name}");
        let loaded = match load_image(file, &ImageLimits::default()) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("could not read {name}: {e}");
                tally.failed.push(name);
                continue;
            }
        };
        let result = prepare_request(plan, session.model(), &loaded).and_then(|req| {
            let outcome = translate_one(&mut session, &req, &cancel)?;
            let recipe = recipe_of(plan, session.model(), &req, &loaded, &outcome);
            let translation = outcome
                .images
                .translation
                .as_ref()
                .ok_or_else(|| anyhow!("the run produced no translation"))?;
            let out = output_path(out_dir, file, &mut taken);
            save_tensor_png(
                translation,
                &recipe,
                (plan.resize, loaded.original_size),
                &out,
            )?;
            let result = restore_size(&to_image(translation)?, loaded.original_size, plan.resize);
            println!("wrote {}", out.display());
            Ok(result)
        });
        match result {
            Ok(image) => tally.done.push((name, loaded.rgb, image)),
            Err(e) if e.downcast_ref::<Cancelled>().is_some() => {
                cancelled = true;
                break;
            }
            Err(e) => {
                eprintln!("could not translate {name}: {e:#}");
                tally.failed.push(name);
            }
        }
        let finished = tally.done.len() + tally.failed.len();
        let per_photo = started.elapsed().as_secs_f64() / finished as f64;
        let left = per_photo * (photos - finished) as f64;
        eprintln!("{finished}/{photos} done, {per_photo:.1} s a photo, about {left:.0} s left");
    }
    finish(out_dir, &tally, photos, cancelled)
}

/// The contact sheet and the closing lines; an error when any photo failed or the run was
/// stopped (after everything done is written).
fn finish(out_dir: &Path, tally: &Tally, photos: usize, cancelled: bool) -> Result<()> {
    if !tally.done.is_empty() {
        let sheet = contact_sheet(&tally.done);
        let path = out_dir.join(CONTACT_SHEET);
        save_png_with_recipe(&sheet, None, &path)?;
        println!("wrote {}", path.display());
    }
    eprintln!(
        "{} of {photos} photos translated{}{}",
        tally.done.len(),
        match tally.failed.len() {
            0 => String::new(),
            n => format!(", {n} failed ({})", tally.failed.join(", ")),
        },
        match tally.skipped {
            0 => String::new(),
            n => format!(", {n} other files skipped"),
        }
    );
    if cancelled {
        return Err(Cancelled.into());
    }
    if !tally.failed.is_empty() {
        bail!(
            "{} of {photos} photos could not be translated: {}",
            tally.failed.len(),
            tally.failed.join(", ")
        );
    }
    Ok(())
}

/// The outputs that only make sense for one photo.
fn refuse_single_outputs(args: &TranslateArgs) -> Result<()> {
    let single = [
        ("--reconstruction", args.reconstruction.is_some()),
        ("--comparison", args.comparison.is_some()),
        ("--ddim-out", args.ddim_out.is_some()),
        ("--ddim-reconstruction", args.ddim_reconstruction.is_some()),
        ("--ddim-translation", args.ddim_translation.is_some()),
        ("--dump", args.dump.is_some()),
    ];
    match single.iter().find(|(_, given)| *given) {
        Some((flag, _)) => {
            bail!("{flag} names one file; with a folder of photos only --out (a folder) is written")
        }
        None => Ok(()),
    }
}

/// The folder's files (not its subfolders), sorted by name.
fn folder_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| dir.display().to_string())?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| dir.display().to_string())?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn is_photo(path: &Path) -> bool {
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
fn output_path(out_dir: &Path, photo: &Path, taken: &mut Vec<PathBuf>) -> PathBuf {
    let stem = photo
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "photo".into());
    let mut path = out_dir.join(format!("{stem}.png"));
    if taken.contains(&path) {
        let ending = photo
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        path = out_dir.join(format!("{stem}-{ending}.png"));
    }
    taken.push(path.clone());
    path
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
