//! `translate --image DIR --out OUT_DIR`: one edit over every photo of a folder (the loop is
//! `crate::folder_run`, shared with the app). Progress and failures go to stderr, each file
//! written to stdout; Ctrl-C keeps what is done.

use anyhow::{Context, Result, bail};

use super::Cancelled;
use super::interrupt;
use super::progress::Progress;
use super::translate::{TranslateArgs, open_session, prepare};
use crate::folder_run::{FolderEvent, FolderReport, PhotoEvent, folder_files, run_folder};
use mirror_engine::pipeline::CancelToken;

pub fn run(args: &TranslateArgs) -> Result<()> {
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
    let (model_path, notes, plan) = prepare(args)?;
    let mut session = open_session(args, &model_path, &notes, &plan)?;
    let cancel = CancelToken::new();
    interrupt::install(&cancel);
    let mut progress: Option<Progress> = None;
    let report = run_folder(
        &mut session,
        &plan.edit,
        &files,
        out_dir,
        &cancel,
        &mut |event| say(event, &mut progress),
    )?;
    finish(&report)
}

/// One line per event; the engine's steps drive the usual progress line.
fn say(event: FolderEvent, progress: &mut Option<Progress>) {
    let photo = match event {
        FolderEvent::Engine(e) => {
            if let Some(p) = progress.as_mut() {
                p.handle(e);
            }
            return;
        }
        FolderEvent::Photo(photo) => photo,
    };
    if matches!(photo, PhotoEvent::Wrote(_) | PhotoEvent::Failed { .. })
        && let Some(mut p) = progress.take()
    {
        p.finish();
    }
    match photo {
        PhotoEvent::Skipped(name) => eprintln!("skipped {name}: not a photo (PNG, JPEG, WebP)"),
        PhotoEvent::Started {
            index,
            photos,
            name,
        } => {
            eprintln!("[{index}/{photos}] {name}");
            *progress = Some(Progress::new());
        }
        PhotoEvent::Wrote(path) => println!("wrote {}", path.display()),
        PhotoEvent::Failed {
            name,
            message,
            unreadable,
        } => {
            let what = if unreadable { "read" } else { "translate" };
            eprintln!("could not {what} {name}: {message}");
        }
        PhotoEvent::Progress {
            finished,
            photos,
            seconds_per_photo,
            seconds_left,
        } => eprintln!(
            "{finished}/{photos} done, {seconds_per_photo:.1} s a photo, about {seconds_left:.0} s left"
        ),
    }
}

/// The closing lines; an error when any photo failed or the run was stopped (after
/// everything done is written).
fn finish(report: &FolderReport) -> Result<()> {
    if let Some(sheet) = &report.sheet {
        println!("wrote {}", sheet.display());
    }
    eprintln!("{}", report.summary());
    if report.cancelled {
        return Err(Cancelled.into());
    }
    if !report.failed.is_empty() {
        let names: Vec<&str> = report.failed.iter().map(|(n, _)| n.as_str()).collect();
        bail!(
            "{} of {} photos could not be translated: {}",
            report.failed.len(),
            report.photos,
            names.join(", ")
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
