//! "Apply to a folder…" (File menu, then the Photo folder row under Export), as data: the
//! edit as set up for the open photo runs (`actions.rs`) over every photo of a
//! folder on the worker (`crate::folder_run`, the loop the CLI's folder runs use). Results go
//! into a new folder under the export folder; the progress, the failures and the closing
//! summary are kept here for the UI.

use std::path::{Path, PathBuf};

use crate::folder_run::{FolderReport, PhotoEvent};

/// A folder run in progress or finished.
#[derive(Debug, Clone, Default)]
pub struct FolderRun {
    pub dir: PathBuf,
    pub out_dir: PathBuf,
    pub running: bool,
    pub cancel_requested: bool,
    pub photos: usize,
    /// Photos finished (written or failed).
    pub finished: usize,
    /// The photo being translated and its step.
    pub current: Option<String>,
    pub step: Option<(usize, usize)>,
    pub seconds_left: Option<f64>,
    /// Each photo that could not be read or translated, with why.
    pub failed: Vec<(String, String)>,
    /// The failed ones that could not be read at all (not photos after all, or damaged).
    pub unreadable: Vec<String>,
    pub skipped: Vec<String>,
    /// How it ended (None while it runs).
    pub report: Option<FolderReport>,
}

impl FolderRun {
    /// 0..=1 over the folder, with the current photo's steps counted in.
    pub fn fraction(&self) -> f32 {
        if self.photos == 0 {
            return 0.0;
        }
        let within = self
            .step
            .map_or(0.0, |(s, n)| (s + 1) as f32 / n.max(1) as f32);
        ((self.finished as f32 + within) / self.photos as f32).min(1.0)
    }

    /// Takes one of the worker's folder events.
    pub fn apply(&mut self, event: PhotoEvent) {
        match event {
            PhotoEvent::Skipped(name) => self.skipped.push(name),
            PhotoEvent::Started { photos, name, .. } => {
                self.photos = photos;
                self.current = Some(name);
                self.step = None;
            }
            PhotoEvent::Wrote(_) => {}
            PhotoEvent::Failed {
                name,
                message,
                unreadable,
            } => {
                if unreadable {
                    self.unreadable.push(name.clone());
                }
                self.failed.push((name, message));
            }
            PhotoEvent::Progress {
                finished,
                photos,
                seconds_left,
                ..
            } => {
                self.finished = finished;
                self.photos = photos;
                self.seconds_left = Some(seconds_left);
                self.step = None;
            }
        }
    }

    pub fn finish(&mut self, report: FolderReport) {
        self.running = false;
        self.current = None;
        self.step = None;
        self.finished = report.written.len() + report.failed.len();
        self.failed.clone_from(&report.failed);
        self.skipped.clone_from(&report.skipped);
        self.report = Some(report);
    }
}

/// `<export folder>/<photo folder's name> edited`, numbered when that exists already (an
/// earlier run's results are never overwritten).
pub fn results_folder(export_dir: &Path, photos: &Path) -> PathBuf {
    let name = photos
        .file_name()
        .map_or_else(|| "photos".into(), |n| n.to_string_lossy().into_owned());
    let base = if export_dir.as_os_str().is_empty() {
        photos.parent().unwrap_or(photos).to_path_buf()
    } else {
        export_dir.to_path_buf()
    };
    let first = base.join(format!("{name} edited"));
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|k| base.join(format!("{name} edited {k}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_gets_a_folder_of_its_own() {
        let export = std::env::temp_dir().join(format!("mirror-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&export);
        let photos = Path::new("/photos/holiday");
        let first = results_folder(&export, photos);
        assert_eq!(first, export.join("holiday edited"));
        std::fs::create_dir_all(&first).unwrap();
        assert_eq!(
            results_folder(&export, photos),
            export.join("holiday edited 2")
        );
        std::fs::remove_dir_all(&export).unwrap();
    }

    #[test]
    fn progress_counts_the_photo_in_hand() {
        let mut run = FolderRun {
            running: true,
            ..Default::default()
        };
        run.apply(PhotoEvent::Started {
            index: 1,
            photos: 4,
            name: "a.png".into(),
        });
        run.step = Some((9, 20));
        assert!((run.fraction() - 0.125).abs() < 1e-6);
        run.apply(PhotoEvent::Progress {
            finished: 1,
            photos: 4,
            seconds_per_photo: 2.0,
            seconds_left: 6.0,
        });
        assert!((run.fraction() - 0.25).abs() < 1e-6);
        run.apply(PhotoEvent::Failed {
            name: "b.png".into(),
            message: "not a PNG".into(),
            unreadable: true,
        });
        assert_eq!(run.failed.len(), 1);
        assert_eq!(run.unreadable, vec!["b.png".to_string()]);
    }
}
