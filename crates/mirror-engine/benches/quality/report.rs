//! What the benchmark writes: the markdown table (also printed), a CSV with one row per
//! (method, source, edit), a summary CSV and one image grid.

use std::fmt::Write as _;
use std::path::Path;

use image::{Rgb, RgbImage, imageops};
use mirror_engine::imageio::{comparison_sheet, draw_text};
use mirror_engine::recipe::save_png_with_recipe;
use mirror_engine::shapes::evaluate::EditKind;

use super::measure::{CENTROID_KEPT, Measured, Source};
use super::variants::Variant;

/// Every run of one source: the source and each method's result on it.
pub struct SourceRuns {
    pub source: Source,
    pub runs: Vec<Measured>,
}

/// The averages of one (method, kind) cell; `kind` None is every kind.
struct Summary {
    variant: Variant,
    kind: Option<EditKind>,
    runs: usize,
    failed: usize,
    target_hit: f64,
    others_kept: f64,
    centroid_kept: f64,
    ideal_error: f64,
    unchanged_error: f64,
    reconstruction_error: f64,
    vae_error: f64,
    /// Mean mask IoU of the runs that used a mask (NaN: none did).
    mask_iou: f64,
    seconds: f64,
    /// Mean seconds of the inversions this method computed (`None`: it always reused one).
    inversion_seconds: Option<f64>,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

fn summarise(all: &[SourceRuns], variant: Variant, kind: Option<EditKind>) -> Summary {
    let cells: Vec<(&Source, &Measured)> = all
        .iter()
        .filter(|s| kind.is_none_or(|k| s.source.case.kind == k))
        .flat_map(|s| {
            s.runs
                .iter()
                .filter(|m| m.variant == variant)
                .map(move |m| (&s.source, m))
        })
        .collect();
    let n = cells.len();
    let percent = |pass: &dyn Fn(&Measured) -> bool| {
        100.0 * cells.iter().filter(|(_, m)| pass(m)).count() as f64 / n.max(1) as f64
    };
    let inversions: Vec<f64> = cells
        .iter()
        .filter_map(|(_, m)| m.inversion_seconds)
        .collect();
    Summary {
        variant,
        kind,
        runs: n,
        failed: cells.iter().filter(|(_, m)| m.error.is_some()).count(),
        target_hit: percent(&|m| m.verdict.as_ref().is_some_and(|v| v.target_hit)),
        others_kept: percent(&|m| m.verdict.as_ref().is_some_and(|v| v.others_kept)),
        centroid_kept: percent(&|m| m.centroid_kept()),
        ideal_error: mean(cells.iter().map(|(_, m)| m.ideal_error)),
        unchanged_error: mean(cells.iter().map(|(_, m)| m.unchanged_error)),
        reconstruction_error: mean(cells.iter().map(|(_, m)| m.reconstruction_error)),
        vae_error: mean(cells.iter().map(|(s, _)| s.vae_error)),
        mask_iou: mean(cells.iter().filter_map(|(_, m)| m.mask_iou)),
        seconds: mean(cells.iter().map(|(_, m)| m.seconds)),
        inversion_seconds: (!inversions.is_empty()).then(|| mean(inversions.into_iter())),
    }
}

fn summaries(all: &[SourceRuns], variants: &[Variant]) -> Vec<Summary> {
    let kinds: Vec<Option<EditKind>> = EditKind::ALL
        .into_iter()
        .map(Some)
        .chain(std::iter::once(None))
        .collect();
    variants
        .iter()
        .flat_map(|v| kinds.iter().map(|k| summarise(all, *v, *k)))
        .collect()
}

fn kind_label(kind: Option<EditKind>) -> &'static str {
    kind.map_or("all", EditKind::label)
}

/// The markdown table: one row per method and kind (and all kinds).
pub fn markdown(all: &[SourceRuns], variants: &[Variant]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| method | kind | runs | target hit | other words kept | centroid kept (≤ {:.0} %) \
         | error vs ideal edit | error where nothing should change | reconstruction error \
         (VAE round trip) | mask IoU | s per edit | s per inversion |",
        CENTROID_KEPT * 100.0
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for m in summaries(all, variants) {
        let runs = if m.failed > 0 {
            format!("{} ({} failed)", m.runs, m.failed)
        } else {
            m.runs.to_string()
        };
        let kind = if m.kind.is_none() {
            "**all**"
        } else {
            kind_label(m.kind)
        };
        let _ = writeln!(
            s,
            "| {} | {kind} | {runs} | {:.0} % | {:.0} % | {:.0} % | {:.1} | {:.1} | {:.1} ({:.1}) \
             | {} | {:.2} | {} |",
            m.variant.title(),
            m.target_hit,
            m.others_kept,
            m.centroid_kept,
            m.ideal_error,
            m.unchanged_error,
            m.reconstruction_error,
            m.vae_error,
            if m.mask_iou.is_finite() {
                format!("{:.2}", m.mask_iou)
            } else {
                "—".into()
            },
            m.seconds,
            m.inversion_seconds
                .map_or("shared".to_string(), |t| format!("{t:.2}")),
        );
    }
    s
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        String::new()
    }
}

/// One row per (method, source, edit).
pub fn runs_csv(all: &[SourceRuns]) -> String {
    let mut s = String::from(
        "method,kind,source,target,seen,target_hit,others_kept,centroid_shift,ideal_error,\
         unchanged_error,reconstruction_error,vae_error,mask_iou,seconds,inversion_seconds,error\n",
    );
    for source in all {
        let case = &source.source.case;
        for m in &source.runs {
            let v = m.verdict.as_ref();
            let flag = |b: Option<bool>| b.map_or(String::new(), |b| u8::from(b).to_string());
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                m.variant.name(),
                csv_field(case.kind.label()),
                csv_field(&case.source_prompt()),
                csv_field(&case.target_prompt()),
                csv_field(v.map_or("", |v| v.seen.as_str())),
                flag(v.map(|v| v.target_hit)),
                flag(v.map(|v| v.others_kept)),
                v.and_then(|v| v.centroid_shift)
                    .map_or(String::new(), number),
                number(m.ideal_error),
                number(m.unchanged_error),
                number(m.reconstruction_error),
                number(source.source.vae_error),
                m.mask_iou.map_or(String::new(), number),
                number(m.seconds),
                m.inversion_seconds.map_or(String::new(), number),
                csv_field(m.error.as_deref().unwrap_or("")),
            );
        }
    }
    s
}

/// One row per method and kind (kind "all" for every kind).
pub fn summary_csv(all: &[SourceRuns], variants: &[Variant]) -> String {
    let mut s = String::from(
        "method,kind,runs,failed,target_hit_pct,others_kept_pct,centroid_kept_pct,ideal_error,\
         unchanged_error,reconstruction_error,vae_error,mask_iou,seconds_per_edit,\
         seconds_per_inversion\n",
    );
    for m in summaries(all, variants) {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.1},{:.1},{:.1},{},{},{},{},{},{},{}",
            m.variant.name(),
            csv_field(kind_label(m.kind)),
            m.runs,
            m.failed,
            m.target_hit,
            m.others_kept,
            m.centroid_kept,
            number(m.ideal_error),
            number(m.unchanged_error),
            number(m.reconstruction_error),
            number(m.vae_error),
            number(m.mask_iou),
            number(m.seconds),
            m.inversion_seconds.map_or(String::new(), number),
        );
    }
    s
}

/// Tiles are drawn at this integer scale (the demo model's images are 64 pixels).
const GRID_SCALE: u32 = 2;
const CAPTION_HEIGHT: u32 = 12;
const ROW_GAP: u32 = 6;

/// One image: `per_kind` cases of each kind as rows, columns source, ideal edit and each
/// method's translation; each row is captioned with its edit.
pub fn grid(all: &[SourceRuns], variants: &[Variant], per_kind: usize) -> RgbImage {
    let big = |img: &RgbImage| {
        imageops::resize(
            img,
            img.width() * GRID_SCALE,
            img.height() * GRID_SCALE,
            imageops::FilterType::Nearest,
        )
    };
    let mut rows: Vec<(String, RgbImage)> = Vec::new();
    for kind in EditKind::ALL {
        for s in all
            .iter()
            .filter(|s| s.source.case.kind == kind)
            .take(per_kind)
        {
            let blank = RgbImage::from_pixel(
                s.source.image.width(),
                s.source.image.height(),
                Rgb([128, 128, 128]),
            );
            let mut tiles = vec![
                ("source".to_string(), big(&s.source.image)),
                ("ideal".to_string(), big(&s.source.ideal)),
            ];
            for v in variants {
                let result = s
                    .runs
                    .iter()
                    .find(|m| m.variant == *v)
                    .and_then(|m| m.translation.as_ref())
                    .unwrap_or(&blank);
                tiles.push((v.name().to_string(), big(result)));
            }
            let caption = format!(
                "{}: {} -> {}",
                kind.label(),
                s.source.case.source_prompt(),
                s.source.case.target_prompt()
            );
            rows.push((caption, comparison_sheet(&tiles)));
        }
    }
    let width = rows.iter().map(|(_, r)| r.width()).max().unwrap_or(0);
    let height = rows
        .iter()
        .map(|(_, r)| CAPTION_HEIGHT + r.height() + ROW_GAP)
        .sum();
    let mut out = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut y = 0;
    for (caption, row) in &rows {
        draw_text(&mut out, caption, (2, y + 2), 1, Rgb([0, 0, 160]));
        y += CAPTION_HEIGHT;
        imageops::replace(&mut out, row, 0, i64::from(y));
        y += row.height() + ROW_GAP;
    }
    out
}

/// Writes the table, both CSVs and the grid into `dir`.
pub fn write_all(
    dir: &Path,
    heading: &str,
    all: &[SourceRuns],
    variants: &[Variant],
    grid_per_kind: usize,
) {
    std::fs::create_dir_all(dir).expect("output folder");
    let table = markdown(all, variants);
    std::fs::write(dir.join("quality.md"), format!("{heading}\n\n{table}")).expect("quality.md");
    std::fs::write(dir.join("quality-runs.csv"), runs_csv(all)).expect("runs csv");
    std::fs::write(dir.join("quality-summary.csv"), summary_csv(all, variants))
        .expect("summary csv");
    save_png_with_recipe(
        &grid(all, variants, grid_per_kind),
        None,
        &dir.join("quality-grid.png"),
    )
    .expect("grid png");
}
