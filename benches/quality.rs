//! How well the built-in demo model does its job, judged by the shapes classifier:
//! MirrorDiffusion edits of each kind (target word hit, other words kept, centroid kept,
//! reconstruction against plain DDIM, attention inside the object).
//!
//! `cargo bench --bench quality [-- --edits N --seed S --set key=value …]`; keys: steps,
//! guidance_scale, xa_guidance, edit_scale, ramp_total, edit_strength, direction
//! (prompt | pairs). Without `--set`, the model's recommended settings.

use std::time::Instant;

use candle_core::Device;
use mirror_diffusion::demo;
use mirror_diffusion::engine::model::StableDiffusion;
use mirror_diffusion::engine::session::{DirectionChoice, Session, TranslateRequest};
use mirror_diffusion::shapes::evaluate::{EditCase, EditKind, EditRun, edit_cases, run_edit};
use mirror_diffusion::shapes::{Colour, Shape, caption, parse_caption};

struct Options {
    edits: usize,
    seed: u64,
    sets: Vec<(String, String)>,
}

fn options() -> Options {
    let mut o = Options {
        edits: 8,
        seed: 1,
        sets: Vec::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--edits" => o.edits = value.parse().expect("--edits N"),
            "--seed" => o.seed = value.parse().expect("--seed S"),
            "--set" => {
                let (k, v) = value.split_once('=').expect("--set key=value");
                o.sets.push((k.to_string(), v.to_string()));
            }
            _ => {
                i += 1;
                continue; // cargo bench passes its own flags (--bench)
            }
        }
        i += 2;
    }
    o
}

/// Every caption of the grammar with the edited word in the same place, paired with its
/// edited form (the demo model's own sentences).
fn paired_captions(case: &EditCase) -> DirectionChoice {
    let (mut source, mut target) = (Vec::new(), Vec::new());
    for colour in Colour::ALL {
        for shape in Shape::ALL {
            for background in Colour::ALL {
                if background == colour {
                    continue;
                }
                let s = caption(colour, shape, background);
                let t = match case.kind {
                    EditKind::Shape if shape == case.source.shape => {
                        caption(colour, case.target.shape, background)
                    }
                    EditKind::Colour
                        if colour == case.source.colour && background != case.target.colour =>
                    {
                        caption(case.target.colour, shape, background)
                    }
                    EditKind::Background
                        if background == case.source.background
                            && colour != case.target.background =>
                    {
                        caption(colour, shape, case.target.background)
                    }
                    _ => continue,
                };
                debug_assert!(parse_caption(&t).is_some());
                source.push(s);
                target.push(t);
            }
        }
    }
    DirectionChoice::Sentences { source, target }
}

fn request(sd: &StableDiffusion, sets: &[(String, String)]) -> (TranslateRequest, bool) {
    let blank = image::RgbImage::new(demo::IMAGE_SIDE, demo::IMAGE_SIDE);
    let mut req = TranslateRequest::new(blank, "", "");
    req.use_cache = false;
    let _ = sd;
    let mut pairs = false;
    for (k, v) in sets {
        let f = || {
            v.parse::<f64>()
                .unwrap_or_else(|_| panic!("{k}={v}: not a number"))
        };
        match k.as_str() {
            "steps" => req.steps = f() as usize,
            "guidance_scale" => req.mirror.guidance_scale = f(),
            "xa_guidance" => req.mirror.xa_guidance = f(),
            "edit_scale" => req.mirror.edit_scale = f(),
            "ramp_total" => req.mirror.ramp_total = f(),
            "edit_strength" => req.edit_strength = f(),
            "direction" if v == "prompt" => req.direction = DirectionChoice::PromptDifference,
            "direction" if v == "pairs" => pairs = true,
            other => panic!("unknown setting {other}"),
        }
    }
    (req, pairs)
}

fn percent(runs: &[&EditRun], pass: impl Fn(&EditRun) -> bool) -> f64 {
    100.0 * runs.iter().filter(|r| pass(r)).count() as f64 / runs.len().max(1) as f64
}

fn main() {
    let o = options();
    let dir = demo::model_dir().expect("demo model");
    let sd = StableDiffusion::load(&dir, &Device::Cpu).expect("demo model loads");
    let (template, pairs) = request(&sd, &o.sets);
    println!(
        "demo model edits: {} per kind, seed {}, {} steps, guidance {}, attention guidance {}, \
         edit scale {} (+{} ramp), strength {}, direction {}",
        o.edits,
        o.seed,
        template.steps,
        template.mirror.guidance_scale,
        template.mirror.xa_guidance,
        template.mirror.edit_scale,
        template.mirror.ramp_total,
        template.edit_strength,
        if pairs {
            "paired captions".to_string()
        } else {
            format!("{:?}", template.direction)
        }
    );
    let mut session = Session::new(sd, None);
    let started = Instant::now();
    let mut runs = Vec::new();
    for kind in EditKind::ALL {
        for case in edit_cases(kind, o.edits, o.seed) {
            let mut req = template.clone();
            if pairs {
                req.direction = paired_captions(&case);
            }
            let run = run_edit(&mut session, &case, &req, demo::IMAGE_SIDE).expect("edit runs");
            println!(
                "  {:<12} {:<42} -> {:<42} saw {:<42} rec {:>7.1} vs ddim {:>7.1}  attn {:.2}/{:.2}",
                kind.label(),
                case.source_prompt(),
                case.target_prompt(),
                run.verdict.seen,
                run.mirror_reconstruction_error,
                run.ddim_reconstruction_error,
                run.attention_inside,
                run.mask_area
            );
            runs.push(run);
        }
    }
    println!(
        "{:<14}{:>8}{:>8}{:>10}{:>10}{:>10}",
        "kind", "target", "kept", "centroid", "rec<ddim", "attention"
    );
    let all: Vec<&EditRun> = runs.iter().collect();
    for kind in EditKind::ALL {
        let of_kind: Vec<&EditRun> = runs.iter().filter(|r| r.case.kind == kind).collect();
        row(kind.label(), &of_kind);
    }
    row("all", &all);
    println!(
        "{} runs in {:.0} s ({:.1} s each)",
        runs.len(),
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() / runs.len().max(1) as f64
    );
}

fn row(label: &str, runs: &[&EditRun]) {
    println!(
        "{:<14}{:>7.0}%{:>7.0}%{:>9.0}%{:>9.0}%{:>9.0}%",
        label,
        percent(runs, |r| r.verdict.target_hit),
        percent(runs, |r| r.verdict.others_kept),
        percent(runs, |r| r
            .verdict
            .centroid_shift
            .is_some_and(|d| d <= 0.06)),
        percent(runs, |r| r.mirror_reconstruction_error
            < r.ddim_reconstruction_error),
        percent(runs, |r| r.attention_inside > r.mask_area),
    );
}
