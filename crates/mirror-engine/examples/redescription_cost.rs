//! What one prompt-redescription iteration of the demo model costs (a UNet forward and
//! backward at batch 1 on the demo photo's latent, then the Adam update): heap allocations
//! and bytes, nodes of the backward graph, and seconds. The figures are the difference
//! between `--iterations` + 1 iterations and one, divided by `--iterations`, so that the
//! set-up of a redescription is not counted.
//! `cargo run --release --example redescription_cost -- [--iterations N]`; threads: `RAYON_NUM_THREADS`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // example code: a panic is the report

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use mirror_engine::demo;
use mirror_engine::imageio::image_to_tensor;
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::CancelToken;
use mirror_engine::pipeline::StageContext;
use mirror_engine::pipeline::stages::{
    Posterior, RedescribeSettings, RedescribeTarget, encode_image, redescribe,
};
use mirror_engine::shapes::evaluate::{EditKind, edit_cases};
use mirror_engine::shapes::render;

/// The system allocator, counting what it hands out.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocations under 64 bytes: candle's per-operation bookkeeping (shapes, strides), not data.
static SMALL: AtomicU64 = AtomicU64::new(0);

fn count(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if size < 64 {
        SMALL.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call goes straight to the system allocator; the counters only add.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What `iterations` redescription iterations (no early stop) took.
struct Cost {
    allocations: u64,
    small: u64,
    bytes: u64,
    seconds: f64,
}

fn counters() -> [u64; 3] {
    [&ALLOCATIONS, &SMALL, &BYTES].map(|c| c.load(Ordering::Relaxed))
}

fn measure(ctx: &StageContext, task: &RedescribeTarget, iterations: usize) -> Cost {
    let settings = RedescribeSettings {
        iterations,
        early_stop_base: f64::NEG_INFINITY,
        early_stop_slope: 0.0,
        ..RedescribeSettings::default()
    };
    let before = counters();
    let started = Instant::now();
    redescribe(ctx, task, &settings).expect("redescription");
    let seconds = started.elapsed().as_secs_f64();
    let after = counters();
    Cost {
        allocations: after[0] - before[0],
        small: after[1] - before[1],
        bytes: after[2] - before[2],
        seconds,
    }
}

fn main() {
    let mut iterations = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" => {
                iterations = args
                    .next()
                    .expect("--iterations N")
                    .parse()
                    .expect("a count");
            }
            other => panic!("unknown argument {other}"),
        }
    }
    mirror_engine::threads::adopt_current_thread();
    let sd = StableDiffusion::load(&demo::model_dir().expect("demo model"), &Device::Cpu)
        .expect("load the demo model");
    let case = edit_cases(EditKind::Shape, 1, 2026)[0];
    let image = image_to_tensor(&render(&case.source, demo::IMAGE_SIDE), &Device::Cpu).unwrap();
    let z0 = encode_image(&sd, &image, Posterior::Mean).unwrap();
    let caption = sd.encode_prompt(&case.source_prompt()).unwrap();
    let steps = 20;
    let t = sd.scheduler.timesteps(steps)[steps / 2];
    let noise = z0.randn_like(0.0, 1.0).unwrap();
    let latent = (&z0 + (&noise * 0.5).unwrap()).unwrap();
    let task = RedescribeTarget {
        latent: &latent,
        t,
        steps,
        step_index: steps / 2,
        target: &z0,
        init: &caption,
    };
    let cancel = CancelToken::new();
    let ctx = StageContext::new(&sd, &cancel);
    measure(&ctx, &task, 1); // warm: per-layer caches filled once
    let (one, more) = (
        measure(&ctx, &task, 1),
        measure(&ctx, &task, iterations + 1),
    );
    let per = |x: u64, y: u64| (x - y) as f64 / iterations as f64;
    let nodes = graph_nodes(&sd, &task);
    println!(
        "one redescription iteration ({:?} latent): {:.0} allocations ({:.0} under 64 bytes), \
         {:.2} MiB allocated, {nodes} backward-graph nodes, {:.2} ms",
        latent.dims(),
        per(more.allocations, one.allocations),
        per(more.small, one.small),
        per(more.bytes, one.bytes) / (1024.0 * 1024.0),
        (more.seconds - one.seconds) / iterations as f64 * 1e3
    );
}

/// Nodes of the graph the backward pass of one iteration walks.
fn graph_nodes(sd: &StableDiffusion, task: &RedescribeTarget) -> usize {
    let var = Var::from_tensor(task.init).unwrap();
    let eps = sd
        .unet
        .forward(task.latent, task.t as f64, var.as_tensor())
        .unwrap();
    let prev = sd
        .scheduler
        .step(&eps, task.t, task.latent, task.steps)
        .unwrap()
        .prev_sample;
    let loss: Tensor = (prev - task.target)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    loss.sorted_nodes().len()
}
