//! How well the built-in demo model does its job, judged by the shapes classifier and by
//! pixels: text-to-image quality (shape, shape colour and background of every caption of a
//! fixed sample, two seeds, DDIM 25 steps at the model's recommended guidance), and edits of
//! each kind (shape, shape colour, background) by every method Mirror offers, each method
//! from one inversion per source (the session's cache): target word hit, other words kept,
//! centroid kept, mean absolute pixel error against the ideal edit (the target caption
//! rendered at the source's place and size) and where the edit should change nothing, the
//! reconstruction's error next to the VAE round trip's, seconds per edit. Writes a markdown
//! table (also printed), a CSV per run, a summary CSV and an image grid into `--out`.
//!
//! `cargo bench --bench quality [-- --only model|edits --captions N --guidance G --edits N
//! --seed S --methods a,b,… --out DIR --grid N --model DIR --set key=value …]`; methods:
//! recommended, redescribed, paper, exact-fast, masked, diffedit-masked, ddim, pix2pix-zero,
//! authors (default all); `--model` another model of the shapes world (default:
//! the built-in demo model; a candidate before it is built in); `--edits` per kind (default
//! 20), seed 77, `--grid` cases per kind in the grid (default 2), `--out` default
//! `$CARGO_TARGET_DIR/quality` (else the workspace's `target/quality`). `--set` keys (applied to
//! every method before what makes the method): steps, guidance_scale, xa_guidance,
//! xa_guidance_until (share of the steps with attention guidance), ddim_guidance (plain DDIM
//! only, default 2),
//! edit_scale, ramp_total, edit_strength, exact_mirror (0 | 1), redescribe_iterations,
//! direction (prompt | templates), mask_threshold, mask_strength, mask_draws (the attention
//! mask of the masked variants). Without `--set`, the model's recommended settings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod measure;
mod report;
mod variants;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use mirror_engine::demo;
use mirror_engine::methods::generate::{GenerateSettings, generate, to_rgb_images};
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::CancelToken;
use mirror_engine::rng::SplitMix64;
use mirror_engine::session::Session;
use mirror_engine::shapes::evaluate::{EditKind, edit_cases};
use mirror_engine::shapes::{Colour, Shape, caption, classify};

use measure::Source;
use report::SourceRuns;
use variants::Variant;

/// The app's allocator, so that the timings are the app's.
#[global_allocator]
static ALLOCATOR: mirror_engine::memory::LargePageAllocator =
    mirror_engine::memory::LargePageAllocator;

struct Options {
    only: Option<String>,
    captions: usize,
    guidance: Option<f64>,
    edits: usize,
    seed: u64,
    methods: Vec<Variant>,
    out: PathBuf,
    grid: usize,
    model: Option<PathBuf>,
    sets: Vec<(String, String)>,
}

fn default_out() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")))
        .join("quality")
}

fn options() -> Options {
    let mut o = Options {
        only: None,
        captions: 64,
        guidance: None,
        edits: 20,
        seed: 77,
        methods: Variant::ALL.to_vec(),
        out: default_out(),
        grid: 2,
        model: None,
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
            "--methods" => o.methods = Variant::parse_list(&value),
            "--out" => o.out = PathBuf::from(value),
            "--grid" => o.grid = value.parse().expect("--grid N"),
            "--model" => o.model = Some(PathBuf::from(value)),
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

fn main() {
    mirror_engine::threads::adopt_current_thread();
    let o = options();
    let dir = o
        .model
        .clone()
        .unwrap_or_else(|| demo::model_dir().expect("demo model"));
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

/// Every method on `--edits` sources of each kind, one inversion per source.
fn edit_quality(sd: StableDiffusion, o: &Options) {
    let templates: Vec<_> = o.methods.iter().map(|v| v.request(&sd, &o.sets)).collect();
    let first = templates.first().expect("at least one method");
    let heading = format!(
        "demo model edits: {} per kind, seed {}, {} steps, guidance {}, attention guidance {}, \
         edit scale {} (+{} ramp), strength {}, direction {:?}; methods {}",
        o.edits,
        o.seed,
        first.steps,
        first.mirror.guidance_scale,
        first.mirror.xa_guidance,
        first.mirror.edit_scale,
        first.mirror.ramp_total,
        first.edit_strength,
        first.direction,
        o.methods
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{heading}");
    // One session for everything: its cache keeps each source's inversion for every method.
    let mut session = Session::new(sd, None);
    let started = Instant::now();
    let mut all = Vec::new();
    for kind in EditKind::ALL {
        for case in edit_cases(kind, o.edits, o.seed) {
            let source = Source::new(session.model(), case, demo::IMAGE_SIDE);
            println!(
                "{:<12} {} -> {} (VAE round trip error {:.1})",
                kind.label(),
                case.source_prompt(),
                case.target_prompt(),
                source.vae_error
            );
            let mut runs = Vec::new();
            for (variant, template) in o.methods.iter().zip(&templates) {
                let m = measure::run(&mut session, *variant, template, &source);
                match (&m.verdict, &m.error) {
                    (Some(v), _) => println!(
                        "  {:<13} saw {}; error vs ideal {:.1}, unchanged {:.1}, \
                         reconstruction {:.1}; {:.2} s{}",
                        variant.name(),
                        v.seen,
                        m.ideal_error,
                        m.unchanged_error,
                        m.reconstruction_error,
                        m.seconds,
                        m.inversion_seconds
                            .map_or(String::new(), |t| format!(" + inversion {t:.2} s"))
                    ),
                    (None, e) => println!(
                        "  {:<13} FAILED: {}",
                        variant.name(),
                        e.as_deref().unwrap_or("?")
                    ),
                }
                runs.push(m);
            }
            all.push(SourceRuns { source, runs });
        }
    }
    let table = report::markdown(&all, &o.methods);
    println!("\n{table}");
    report::write_all(&o.out, &heading, &all, &o.methods, o.grid);
    println!(
        "{} sources x {} methods in {:.0} s; written to {}",
        all.len(),
        o.methods.len(),
        started.elapsed().as_secs_f64(),
        o.out.display()
    );
}
