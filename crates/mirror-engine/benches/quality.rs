//! How well the built-in demo model does its job, judged by the shapes classifier:
//! text-to-image quality (shape, shape colour and background of every caption of a fixed
//! sample, two seeds, DDIM 25 steps at the model's recommended guidance) and MirrorDiffusion
//! edits of each kind (target word hit, other words kept, centroid kept, reconstruction
//! against plain DDIM, attention inside the object).
//!
//! `cargo bench --bench quality [-- --only model|edits --captions N --guidance G --edits N
//! --seed S --set key=value …]`; keys: steps, guidance_scale, xa_guidance, edit_scale,
//! ramp_total, edit_strength, exact_mirror (0 | 1), redescribe_iterations, direction (prompt | templates). Without `--set`, the model's
//! recommended settings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

use std::time::Instant;

use candle_core::Device;
use mirror_engine::demo;
use mirror_engine::methods::generate::{GenerateSettings, generate, to_rgb_images};
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::CancelToken;
use mirror_engine::rng::SplitMix64;
use mirror_engine::session::{DirectionChoice, Session, TranslateRequest};
use mirror_engine::shapes::evaluate::{EditKind, EditRun, edit_cases, run_edit};
use mirror_engine::shapes::{Colour, Shape, caption, classify};

struct Options {
    only: Option<String>,
    captions: usize,
    guidance: Option<f64>,
    edits: usize,
    seed: u64,
    sets: Vec<(String, String)>,
}

fn options() -> Options {
    let mut o = Options {
        only: None,
        captions: 64,
        guidance: None,
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
            "--only" => o.only = Some(value),
            "--captions" => o.captions = value.parse().expect("--captions N"),
            "--guidance" => o.guidance = Some(value.parse().expect("--guidance G")),
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

fn request(sd: &StableDiffusion, sets: &[(String, String)]) -> TranslateRequest {
    let blank = image::RgbImage::new(demo::IMAGE_SIDE, demo::IMAGE_SIDE);
    let mut req = TranslateRequest::new(blank, "", "");
    req.use_cache = false;
    req.apply_recommended(sd.recommended());
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
            "exact_mirror" => req.mirror.exact_mirror = f() != 0.0,
            "redescribe_iterations" => req.mirror.redescribe.iterations = f() as usize,
            "direction" if v == "prompt" => req.direction = DirectionChoice::PromptDifference,
            // The model's own captions (its `sentence_templates`) when it has them.
            "direction" if v == "templates" => req.direction = DirectionChoice::default(),
            other => panic!("unknown setting {other}"),
        }
    }
    req
}

fn percent(runs: &[&EditRun], pass: impl Fn(&EditRun) -> bool) -> f64 {
    100.0 * runs.iter().filter(|r| pass(r)).count() as f64 / runs.len().max(1) as f64
}

fn main() {
    let o = options();
    let dir = demo::model_dir().expect("demo model");
    let sd = StableDiffusion::load(&dir, &Device::Cpu).expect("demo model loads");
    if o.only.as_deref() != Some("edits") {
        model_quality(&sd, &o);
    }
    if o.only.as_deref() != Some("model") {
        edit_quality(sd, &o);
    }
}

/// Text-to-image: every caption of a fixed sample, seeds 0 and 1.
fn model_quality(sd: &StableDiffusion, o: &Options) {
    let mut every = Vec::new();
    for colour in Colour::ALL {
        for shape in Shape::ALL {
            for background in Colour::ALL.into_iter().filter(|b| *b != colour) {
                every.push((colour, shape, background));
            }
        }
    }
    // A fixed shuffle (Fisher–Yates on SplitMix64), then the first N.
    let mut rng = SplitMix64::new(2026);
    for i in (1..every.len()).rev() {
        every.swap(i, rng.below(i + 1));
    }
    every.truncate(o.captions);
    let started = Instant::now();
    let (mut shape_ok, mut colour_ok, mut background_ok, mut n) = (0, 0, 0, 0);
    let mut guidance = 0.0;
    for (colour, shape, background) in &every {
        let mut settings = GenerateSettings::for_model(sd, &caption(*colour, *shape, *background));
        settings.steps = 25;
        if let Some(g) = o.guidance {
            settings.guidance_scale = g;
        }
        settings.count = 2;
        guidance = settings.guidance_scale;
        let images =
            generate(sd, &settings, &CancelToken::new(), &mut |_, _| {}).expect("generate");
        for image in to_rgb_images(&images).expect("images") {
            let seen = classify(&image);
            n += 1;
            background_ok += (seen.background == *background) as usize;
            if let Some(object) = seen.object {
                shape_ok += (object.shape == *shape) as usize;
                colour_ok += (object.colour == *colour) as usize;
            }
        }
    }
    let pct = |k: usize| 100.0 * k as f64 / n.max(1) as f64;
    println!(
        "demo model text-to-image: {} captions x 2 seeds, DDIM 25 steps, guidance {guidance}: \
         shape {:.1} %, shape colour {:.1} %, background {:.1} % ({:.0} s)",
        every.len(),
        pct(shape_ok),
        pct(colour_ok),
        pct(background_ok),
        started.elapsed().as_secs_f64()
    );
}

/// MirrorDiffusion edits of each kind.
fn edit_quality(sd: StableDiffusion, o: &Options) {
    let template = request(&sd, &o.sets);
    println!(
        "demo model edits: {} per kind, seed {}, {} steps, guidance {}, attention guidance {}, \
         edit scale {} (+{} ramp), strength {}, direction {:?}",
        o.edits,
        o.seed,
        template.steps,
        template.mirror.guidance_scale,
        template.mirror.xa_guidance,
        template.mirror.edit_scale,
        template.mirror.ramp_total,
        template.edit_strength,
        template.direction
    );
    let mut session = Session::new(sd, None);
    let started = Instant::now();
    let mut runs = Vec::new();
    for kind in EditKind::ALL {
        for case in edit_cases(kind, o.edits, o.seed) {
            let run =
                run_edit(&mut session, &case, &template, demo::IMAGE_SIDE).expect("edit runs");
            println!("  {run}");
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
