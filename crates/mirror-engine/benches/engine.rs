//! Speed and peak memory of the engine's parts, the same cases as
//! `../shared/tools/oracle/bench_torch.py` (SD 1.5-size UNet / VAE / CLIP with random weights
//! made here, the tiny fixture UNet), plus whole translation runs and one MirrorDiffusion
//! step at 512² (`mirror_step:64`, its peak memory against `benches/torch_translate.py step 64`).
//!
//!     cargo bench --bench engine -- [--quick] [--only unet_full,unet_tiny,vae_full,clip_full,translate,translate_full,mirror_step,peak_gemm] [--skip CASE,..] [--out FILE]
//!
//! Each case runs in its own process (`--case NAME`) so that its peak RSS is its own. Threads:
//! `RAYON_NUM_THREADS` if set, else 2 (as the PyTorch side's `torch.set_num_threads(2)`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use mirror_engine::clip::{ClipTextConfig, ClipTextTransformer};
use mirror_engine::device::device_from_env;
use mirror_engine::imageio::{ImageLimits, ResizePolicy, load_image, resize};
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::CancelToken;
use mirror_engine::session::{DirectionChoice, Session, TranslateRequest};
use mirror_engine::unet::{UNet2DConditionModel, UNetConfig};
use mirror_engine::vae::{AutoencoderKL, VaeConfig};

/// The app's allocator (large blocks on huge pages), so that the cases time what users run.
#[global_allocator]
static ALLOCATOR: mirror_engine::memory::LargePageAllocator =
    mirror_engine::memory::LargePageAllocator;

/// The device the cases run on: `MIRROR_DEVICE` (cpu, cuda, metal, auto; default cpu), opened
/// once (tensors of two openings of one GPU cannot be mixed).
fn bench_device() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| device_from_env("MIRROR_DEVICE").unwrap_or_else(|e| panic!("{e}")))
        .clone()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny_model() -> PathBuf {
    root().join("../../../shared/fixtures/tiny-sd")
}

fn sd_config(component: &str) -> PathBuf {
    let file = if component == "scheduler" {
        "scheduler_config.json"
    } else {
        "config.json"
    };
    root().join("assets/sd-v1").join(component).join(file)
}

/// Weights drawn from N(0, 0.02²) (PyTorch's initialisers' scale) as the model asks for
/// them: nothing downloaded, and nothing kept besides what the model holds.
struct RandomWeights;

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: candle_core::Shape,
        _name: &str,
        _hints: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights have no tensor {name} of unknown shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

fn random_vb(seed: u64) -> VarBuilder<'static> {
    bench_device().set_seed(seed).ok();
    VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, bench_device())
}

/// A memory figure of this process from /proc/self/status (`VmHWM`: peak, `VmRSS`: now), MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| (kb / 102.4).round() / 10.0)
        .unwrap_or(f64::NAN)
}

/// 1 warm-up, then `repeats` timed calls (fewer when one call is slow), as bench_torch.py.
fn time_it(repeats: usize, mut f: impl FnMut()) -> Vec<f64> {
    // A GPU queues work: each call is timed until the device has finished it.
    let mut f = move || {
        f();
        bench_device().synchronize().expect("device synchronises");
    };
    let t0 = Instant::now();
    f();
    let first = t0.elapsed().as_secs_f64();
    let repeats = if first > 180.0 {
        return vec![first];
    } else if first > 60.0 {
        repeats.min(1)
    } else if first > 20.0 {
        repeats.min(2)
    } else {
        repeats
    };
    mirror_engine::nn::profile::take(); // the warm-up's stages
    let times = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    print_profile(repeats);
    times
}

/// With `MIRROR_PROFILE` set: the seconds per call of each stage timed since the warm-up.
fn print_profile(calls: usize) {
    let stages = mirror_engine::nn::profile::take();
    for (name, seconds, count) in stages.iter().take(400) {
        let per_call = seconds / calls.max(1) as f64;
        eprintln!("{per_call:9.4} s {:6} × {name}", count / calls.max(1));
    }
}

/// The median as Python's `statistics.median` takes it (the PyTorch side's): of an even
/// count, the mean of the two middle values, not the upper one.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

fn run_case(case: &str, quick: bool) -> serde_json::Value {
    let reps = if quick { 2 } else { 3 };
    let (kind, rest) = case.split_once(':').expect("kind:args");
    let mut extra = serde_json::Map::new();
    let mut times = match kind {
        "unet_full" | "unet_tiny" => {
            let parts: Vec<&str> = rest.split(',').collect();
            let (mode, hw, bs) = (
                parts[0],
                parts[1].parse::<usize>().unwrap(),
                parts[2].parse::<usize>().unwrap(),
            );
            let unet = if kind == "unet_full" {
                let cfg = UNetConfig::from_file(&sd_config("unet")).unwrap();
                UNet2DConditionModel::new(random_vb(0), &cfg).unwrap()
            } else {
                let cfg = UNetConfig::from_file(&tiny_model().join("unet/config.json")).unwrap();
                let vb = unsafe {
                    VarBuilder::from_mmaped_safetensors(
                        &[tiny_model().join("unet/diffusion_pytorch_model.safetensors")],
                        DType::F32,
                        &bench_device(),
                    )
                    .unwrap()
                };
                UNet2DConditionModel::new(vb, &cfg).unwrap()
            };
            let d = match &unet.config().cross_attention_dim {
                mirror_engine::unet::PerBlock::One(d) => *d,
                mirror_engine::unet::PerBlock::Each(v) => v[0],
            };
            let x = Tensor::randn(0f32, 1., (bs, 4, hw, hw), &bench_device()).unwrap();
            let emb = Tensor::randn(0f32, 1., (bs, 77, d), &bench_device()).unwrap();
            if mode == "fwd" {
                time_it(reps, || {
                    unet.forward(&x, 501.0, &emb).unwrap();
                })
            } else {
                time_it(reps, || {
                    let v = Var::from_tensor(&emb).unwrap();
                    let forward = mirror_engine::nn::profile::stage(|| {
                        "(forward outside the other stages)".into()
                    });
                    let out = unet.forward(&x, 501.0, v.as_tensor()).unwrap();
                    let loss = out.sqr().unwrap().sum_all().unwrap();
                    drop(forward);
                    let _backward = mirror_engine::nn::profile::stage(|| {
                        "(backward outside the other stages)".into()
                    });
                    let grads = loss.backward().unwrap();
                    grads.get(v.as_tensor()).expect("gradient");
                })
            }
        }
        "vae_full" => {
            let px: usize = rest.parse().unwrap();
            let cfg = VaeConfig::from_file(&sd_config("vae")).unwrap();
            let vae = AutoencoderKL::new(random_vb(1), &cfg).unwrap();
            let z = Tensor::randn(0f32, 1., (1, 4, px / 8, px / 8), &bench_device()).unwrap();
            time_it(reps, || {
                vae.decode(&z).unwrap();
            })
        }
        "clip_full" => {
            let bs: usize = rest.parse().unwrap();
            let cfg = ClipTextConfig::from_file(&sd_config("text_encoder")).unwrap();
            let te = ClipTextTransformer::new(random_vb(2), &cfg).unwrap();
            let ids: Vec<u32> = (0..bs * 77).map(|k| (k as u32 * 7919) % 49408).collect();
            let ids = Tensor::from_vec(ids, (bs, 77), &bench_device()).unwrap();
            time_it(5, || {
                te.forward(&ids).unwrap();
            })
        }
        "translate" => {
            // Whole run on the tiny model: recommended preset, N steps, with the DDIM baseline
            // off (the PyTorch reference loop has none); then a re-edit with a new target.
            let steps: usize = rest.parse().unwrap();
            let sd = StableDiffusion::load(&tiny_model(), &bench_device()).unwrap();
            let mut session = Session::new(sd, None);
            let image = load_image(
                &root().join("../../../shared/fixtures/tiny-sd-ref/test_image.png"),
                &ImageLimits::default(),
            )
            .unwrap();
            let mut req = TranslateRequest::new(image.rgb, "a photo of a cat", "a photo of a dog");
            req.steps = steps;
            req.compare_ddim = false;
            req.direction = DirectionChoice::Templates { pairs: 8 };
            let cancel = CancelToken::new();
            let mut fresh = req.clone();
            fresh.use_cache = false;
            let t = time_it(reps.min(2), || {
                session.translate(&fresh, &cancel, &mut |_| {}).unwrap();
            });
            session.translate(&req, &cancel, &mut |_| {}).unwrap();
            let mut re_edit = req.clone();
            re_edit.target_prompt = "a photo of a tiger".into();
            let mut r = time_it(reps.min(2), || {
                let out = session.translate(&re_edit, &cancel, &mut |_| {}).unwrap();
                assert!(out.reused_reconstruction);
            });
            extra.insert("re_edit_median_s".into(), median(&mut r).into());
            t
        }
        "translate_full" => {
            // SD 1.5-size UNet/VAE/CLIP with random weights, 256×256, recommended preset;
            // `rest` = "N,K": time the first K of N steps (random weights never early-stop,
            // so every step costs the same: the run is K-step time × N / K plus inversion).
            let (n, k) = rest.split_once(',').unwrap();
            let (n, k): (usize, usize) = (n.parse().unwrap(), k.parse().unwrap());
            let t = translate_full(n, k, &mut extra);
            vec![t]
        }
        "mirror_step" => {
            let hw: usize = rest.parse().unwrap();
            vec![mirror_step(hw, &mut extra)]
        }
        "peak_gemm" => {
            // The machine's f32 matrix-product rate on these threads: the yardstick of the
            // UNet cases' share of the peak (`benches/torch_flops.py` times PyTorch's).
            let n: usize = rest.parse().unwrap();
            let dev = bench_device();
            let a = Tensor::randn(0f32, 1., (n, n), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., (n, n), &dev).unwrap();
            let times = time_it(reps, || {
                a.matmul(&b).unwrap();
            });
            let best = times.iter().copied().fold(f64::INFINITY, f64::min);
            let gflops = 2.0 * (n as f64).powi(3) / best / 1e9;
            extra.insert("gflops".into(), ((gflops * 10.0).round() / 10.0).into());
            times
        }
        "attention" => {
            // The fused attention `softmax(q kᵀ) v` alone, `[rows, queries, d]` against
            // `[rows, keys, d]`: SD's self-attention at 64² is `16,4096,4096,40` at batch 2.
            let dims: Vec<usize> = rest.split(',').map(|d| d.parse().unwrap()).collect();
            let [rows, queries, keys, d] = dims[..] else {
                panic!("attention:ROWS,QUERIES,KEYS,D")
            };
            let dev = bench_device();
            let q = Tensor::randn(0f32, 0.2, (rows, queries, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1., (rows, keys, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1., (rows, keys, d), &dev).unwrap();
            time_it(reps, || {
                mirror_engine::nn::chunked_attention(&q, &k, &v).unwrap();
            })
        }
        "linear" => {
            // One frozen linear layer `[M, K] · [N, K]ᵀ + b`: the UNet's products one shape
            // at a time (GFLOP/s beside the peak's).
            let dims: Vec<usize> = rest.split(',').map(|d| d.parse().unwrap()).collect();
            let [m, k, n] = dims[..] else {
                panic!("linear:M,K,N")
            };
            let dev = bench_device();
            let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., n, &dev).unwrap();
            let layer = mirror_engine::nn::frozen::Linear::new(w, Some(b));
            // Enough products per timed repeat for about 20 GFLOP (a small one alone is
            // timer noise); the times are per product.
            let flop = 2.0 * (m * k * n) as f64;
            let calls = (2e10 / flop).ceil() as usize;
            let times: Vec<f64> = time_it(reps, || {
                for _ in 0..calls {
                    candle_core::Module::forward(&layer, &x).unwrap();
                }
            })
            .into_iter()
            .map(|t| t / calls as f64)
            .collect();
            let best = times.iter().copied().fold(f64::INFINITY, f64::min);
            let gflops = flop / best / 1e9;
            extra.insert("gflops".into(), ((gflops * 10.0).round() / 10.0).into());
            times
        }
        other => panic!("unknown case {other}"),
    };
    let m = median(&mut times);
    let mut out = serde_json::json!({
        "case": case,
        "threads": candle_core::utils::get_num_threads(),
        "times_s": times.iter().map(|t| (t * 1e4).round() / 1e4).collect::<Vec<_>>(),
        "median_s": (m * 1e4).round() / 1e4,
        "peak_rss_mib": status_mib("VmHWM:"),
    });
    out.as_object_mut().unwrap().extend(extra);
    out
}

/// SD 1.5-size UNet, VAE and CLIP with random weights, the SD 1.x tokenizer and scheduler.
fn random_sd15() -> StableDiffusion {
    use mirror_engine::scheduler::DdimScheduler;
    use mirror_engine::tokenizer::ClipTokenizer;
    let unet_cfg = UNetConfig::from_file(&sd_config("unet")).unwrap();
    let unet = UNet2DConditionModel::new(random_vb(0), &unet_cfg).unwrap();
    let vae_cfg = VaeConfig::from_file(&sd_config("vae")).unwrap();
    let vae = AutoencoderKL::new(random_vb(1), &vae_cfg).unwrap();
    let text_cfg = ClipTextConfig::from_file(&sd_config("text_encoder")).unwrap();
    let text_encoder = ClipTextTransformer::new(random_vb(2), &text_cfg).unwrap();
    StableDiffusion {
        tokenizer: ClipTokenizer::from_dir(&root().join("assets/sd-v1/tokenizer")).unwrap(),
        text_encoder,
        unet,
        vae,
        scheduler: DdimScheduler::from_file(&sd_config("scheduler")).unwrap(),
        device: bench_device(),
        info: mirror_engine::model::ModelInfo {
            name: "random SD 1.5".into(),
            path: PathBuf::new(),
            kind: "random",
            fingerprint: "random".into(),
        },
        notes: Default::default(),
        half: None,
        vae_tiles: Default::default(),
        loras: Vec::new(),
        checkpoint_configs: None,
    }
}

/// Times inversion + K Mirror steps of an N-step run at SD 1.5 size (random weights).
fn translate_full(
    n: usize,
    k: usize,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> f64 {
    use mirror_engine::methods::mirror::{self, MirrorInputs, MirrorSettings, MirrorState};
    use mirror_engine::pipeline::StageContext;
    use mirror_engine::pipeline::stages::{self, InversionGrid, KlRegularizer};
    let sd = random_sd15();
    let image = load_image(
        &root().join("../../../shared/fixtures/tiny-sd-ref/test_image.png"),
        &ImageLimits::default(),
    )
    .unwrap();
    let image = resize(&image.rgb, (256, 256), ResizePolicy::Stretch);
    let t0 = Instant::now();
    let x = mirror_engine::imageio::image_to_tensor(&image, &bench_device()).unwrap();
    let z0 = stages::encode_image(&sd, &x, stages::Posterior::Mean).unwrap();
    let caption = sd.encode_prompt("a photo of a cat").unwrap();
    let dir = (sd.encode_prompt("a photo of a dog").unwrap() - &caption).unwrap();
    let cancel = CancelToken::new();
    let ctx = StageContext::new(&sd, &cancel);
    let plan = stages::InversionSettings {
        steps: n,
        grid: InversionGrid::Consistent,
        kl: Some(KlRegularizer::default()),
    };
    let traj = stages::invert(&ctx, &z0, &caption, &plan, &mut |_| {}).unwrap();
    let inversion_s = t0.elapsed().as_secs_f64();
    let settings = MirrorSettings::default();
    let mut state = MirrorState::start(&traj, &caption);
    let inputs = MirrorInputs {
        settings: &settings,
        trajectory: &traj,
        direction: &dir,
        want_edit_maps: false,
        empty_prompt: None,
    };
    let t1 = Instant::now();
    for i in 0..k {
        let (next, _) = mirror::step(&ctx, &inputs, &state, i, None).unwrap();
        state = next;
    }
    let per_step = t1.elapsed().as_secs_f64() / k as f64;
    let t2 = Instant::now();
    stages::decode(&sd, &state.edit_latent).unwrap();
    let decode_s = t2.elapsed().as_secs_f64();
    extra.insert("inversion_s".into(), inversion_s.into());
    extra.insert("mirror_step_s".into(), per_step.into());
    extra.insert("decode_s".into(), decode_s.into());
    extra.insert("steps_timed".into(), k.into());
    inversion_s + per_step * n as f64 + decode_s
}

/// One MirrorDiffusion step (the first of 50) at SD 1.5 size on an `hw`² latent: the
/// redescription's UNet forward + backward w.r.t. the embedding, the translation branch's
/// forward + backward w.r.t. the latent through the recorded maps, the guided step. The
/// trajectory is random latents (the step's cost does not depend on their values).
fn mirror_step(hw: usize, extra: &mut serde_json::Map<String, serde_json::Value>) -> f64 {
    use mirror_engine::methods::mirror::{self, MirrorInputs, MirrorSettings, MirrorState};
    use mirror_engine::pipeline::StageContext;
    use mirror_engine::pipeline::stages::{InversionGrid, Trajectory};
    let steps = 50;
    let sd = random_sd15();
    let caption = sd.encode_prompt("a photo of a cat").unwrap();
    let dir = (sd.encode_prompt("a photo of a dog").unwrap() - &caption).unwrap();
    let trajectory = Trajectory {
        latents: (0..=steps)
            .map(|_| Tensor::randn(0f32, 1., (1, 4, hw, hw), &bench_device()).unwrap())
            .collect(),
        timesteps: sd.scheduler.timesteps(steps).into_iter().rev().collect(),
        grid: InversionGrid::Consistent,
        steps,
    };
    let cancel = CancelToken::new();
    let ctx = StageContext::new(&sd, &cancel);
    let settings = MirrorSettings::default();
    let inputs = MirrorInputs {
        settings: &settings,
        trajectory: &trajectory,
        direction: &dir,
        want_edit_maps: false,
        empty_prompt: None,
    };
    let state = MirrorState::start(&trajectory, &caption);
    extra.insert("rss_before_step_mib".into(), status_mib("VmRSS:").into());
    let t = Instant::now();
    mirror::step(&ctx, &inputs, &state, 0, None).unwrap();
    t.elapsed().as_secs_f64()
}

fn all_cases(only: &Option<Vec<String>>) -> Vec<String> {
    let mut cases = Vec::new();
    for hw in [32, 64] {
        for bs in [1, 2] {
            cases.push(format!("unet_full:fwd,{hw},{bs}"));
            cases.push(format!("unet_full:bwd,{hw},{bs}"));
        }
    }
    for bs in [1, 2] {
        cases.push(format!("unet_tiny:fwd,16,{bs}"));
        cases.push(format!("unet_tiny:bwd,16,{bs}"));
    }
    cases.extend(
        [
            "vae_full:256",
            "vae_full:512",
            "clip_full:1",
            "clip_full:2",
            "translate:20",
            "translate_full:20,1",
            "mirror_step:64",
            "peak_gemm:4096",
        ]
        .map(String::from),
    );
    match only {
        Some(kinds) => cases
            .into_iter()
            .filter(|c| kinds.iter().any(|k| c.split(':').next() == Some(k)))
            .collect(),
        None => cases,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: set before any thread pool exists (single-threaded start of main).
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "2") };
    }
    mirror_engine::threads::adopt_current_thread();
    if let Some(case) = flag("--case") {
        println!("{}", run_case(&case, quick));
        return;
    }
    let only = flag("--only").map(|s| s.split(',').map(String::from).collect());
    let skip: Vec<String> = flag("--skip")
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or_default();
    let out = flag("--out").unwrap_or_else(|| "target/mirror-bench.json".into());
    let exe = std::env::current_exe().unwrap();
    let mut results = Vec::new();
    for case in all_cases(&only).into_iter().filter(|c| !skip.contains(c)) {
        let t0 = Instant::now();
        let mut cmd = Command::new(&exe);
        cmd.args(["--case", &case]);
        if quick {
            cmd.arg("--quick");
        }
        let output = cmd.output().expect("bench subprocess starts");
        let mut result: serde_json::Value = if output.status.success() {
            let text = String::from_utf8_lossy(&output.stdout);
            serde_json::from_str(text.lines().last().unwrap_or("{}"))
                .unwrap_or(serde_json::json!({"case": case}))
        } else {
            let err = String::from_utf8_lossy(&output.stderr);
            serde_json::json!({"case": case, "error": err.lines().last().unwrap_or("failed")})
        };
        result["wall_s_incl_setup"] = ((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0).into();
        eprintln!("{result}");
        results.push(result);
    }
    let report = serde_json::json!({"settings": {"dtype": "float32", "weights": "random, built from config", "timestep": 501,
        "backward": "grad of sum(eps^2) w.r.t. the prompt embedding, weights frozen", "repeats": "1 warm-up + 3 (2 with --quick); median"},
        "results": results});
    if let Some(dir) = Path::new(&out).parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap() + "\n").unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
