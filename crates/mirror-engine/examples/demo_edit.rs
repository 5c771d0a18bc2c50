//! One MirrorDiffusion edit of the demo model at its recommended settings, for profiling and
//! timing the whole edit: `cargo run --release --example demo_edit -- [--edits N] [--variant recommended|redescribed|paper|exact-fast] [--warm] [--ddim] [--app]`.
//! The variants are the quality benchmark's: `redescribed` adds Mirror's default redescription
//! (exact mirror kept), `paper` is redescription without the exact mirror.
//! The source is the first shape edit case (seed 2026). `--warm` runs one edit first (inversion
//! and edit direction are then cached) and times only the later ones. `--ddim` also runs plain
//! DDIM beside it, as the app does by default; `--app` asks for everything the app asks for
//! (plain DDIM, every step's attention maps, a preview decode every 5 steps) and counts the
//! events. Threads: `RAYON_NUM_THREADS`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // example code: a panic is the report

use std::time::Instant;

use candle_core::Device;
use mirror_engine::demo;
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::CancelToken;
use mirror_engine::session::{Session, TranslateRequest};
use mirror_engine::shapes::evaluate::{EditKind, edit_cases};
use mirror_engine::shapes::render;

/// The app's allocator, so that the times are the app's.
#[global_allocator]
static ALLOCATOR: mirror_engine::memory::LargePageAllocator =
    mirror_engine::memory::LargePageAllocator;

fn main() {
    let mut edits = 1usize;
    let mut variant = String::from("recommended");
    let mut warm = false;
    let mut ddim = false;
    let mut app = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--edits" => edits = args.next().expect("--edits N").parse().expect("a count"),
            "--variant" => variant = args.next().expect("--variant NAME"),
            "--warm" => warm = true,
            "--ddim" => ddim = true,
            "--app" => app = true,
            other => panic!("unknown argument {other}"),
        }
    }
    mirror_engine::threads::adopt_current_thread();
    let sd = StableDiffusion::load(&demo::model_dir().expect("demo model"), &Device::Cpu)
        .expect("load the demo model");
    let case = edit_cases(EditKind::Shape, 1, 2026)[0];
    let image = render(&case.source, demo::IMAGE_SIDE);
    let mut req = TranslateRequest::new(image, &case.source_prompt(), &case.target_prompt());
    req.use_cache = true;
    req.compare_ddim = ddim || app;
    if app {
        req.attention_maps = true;
        req.decode_every = Some(5);
    }
    req.apply_recommended(sd.recommended());
    let iterations = mirror_engine::methods::mirror::MirrorSettings::default()
        .redescribe
        .iterations;
    match variant.as_str() {
        "recommended" => {}
        "redescribed" => {
            req.mirror.exact_mirror = true;
            req.mirror.redescribe.iterations = iterations;
        }
        "paper" => {
            req.mirror.exact_mirror = false;
            req.mirror.redescribe.iterations = iterations;
        }
        "exact-fast" => {
            req.mirror.exact_mirror = true;
            req.mirror.redescribe.iterations = 0;
        }
        other => panic!("unknown variant {other}"),
    }
    let mut session = Session::new(sd, None);
    if warm {
        session
            .translate(&req, &CancelToken::new(), &mut |_| {})
            .expect("warm-up edit");
    }
    let started = Instant::now();
    let mut checksum = 0u64;
    let mut events = 0usize;
    for _ in 0..edits {
        let out = session
            .translate(&req, &CancelToken::new(), &mut |_| events += 1)
            .expect("edit");
        for (_, latent) in &out.latents {
            let values = latent.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            checksum = values.iter().fold(checksum, |h, v| {
                h.wrapping_mul(0x0000_0100_0000_01b3) ^ u64::from(v.to_bits())
            });
        }
    }
    println!(
        "{edits} edit(s) ({variant}, {} -> {}): {:.3} s per edit, {events} events, latents' checksum {checksum:016x}",
        case.source_prompt(),
        case.target_prompt(),
        started.elapsed().as_secs_f64() / edits as f64
    );
}
