//! VAE and DDIM scheduler against the PyTorch fixtures, plus the algebraic and gradient checks
//! of docs/algorithm.md §14 (inverse/forward consistency, KL closed form, backprop through a step).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mirror_engine::EngineError;
use mirror_engine::scheduler::{
    DdimConfig, DdimScheduler, kl_divergence, kl_gradient, kl_regularize,
};
use mirror_engine::vae::{AutoencoderKL, VaeConfig};

fn cpu() -> Device {
    common::test_device()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_dtype(DType::F64))
        .and_then(|d| d.to_scalar::<f64>())
        .expect("max abs diff")
}

/// Deterministic pseudo-random tensor (not the VAE's sampler: an independent generator).
fn noise(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f64> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Sum of 4 uniforms, centred and scaled: roughly N(0, 1).
            let mut s = 0.0;
            for k in 0..4 {
                s += ((state >> (16 * k)) & 0xffff) as f64 / 65535.0;
            }
            (s - 2.0) * (3.0f64).sqrt()
        })
        .collect();
    Tensor::from_vec(values, shape, &cpu())
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

// ------------------------------------------------------------------------------------ DDIM

fn scheduler(fx: &common::Fixtures) -> DdimScheduler {
    let path = fx.model_dir().join("scheduler/scheduler_config.json");
    DdimScheduler::from_file(&path).expect("scheduler config loads")
}

/// (N, timesteps fixture) for every `timesteps_<N>` tensor of the `ddim` fixture, ascending N.
fn ddim_grids(fx: &common::Fixtures) -> Vec<usize> {
    let mut ns: Vec<usize> = fx.fixture("ddim")["tensors"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|k| k.strip_prefix("timesteps_").and_then(|n| n.parse().ok()))
        .collect();
    ns.sort();
    ns
}

/// Timesteps `t` of every `<prefix><t>` tensor (at least one).
fn fixture_timesteps(fx: &common::Fixtures, prefix: &str) -> Vec<usize> {
    let ts: Vec<usize> = fx.fixture("ddim")["tensors"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|k| k.strip_prefix(prefix).and_then(|t| t.parse().ok()))
        .collect();
    assert!(!ts.is_empty(), "ddim: no {prefix}<t> tensor");
    ts
}

#[test]
fn ddim_config_matches_fixture_settings() {
    let fx = common::Fixtures::load();
    let sched = scheduler(&fx);
    let settings = &fx.settings("ddim")["scheduler_config"];
    let cfg = sched.config();
    assert_eq!(
        cfg.num_train_timesteps as u64,
        settings["num_train_timesteps"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.beta_schedule,
        settings["beta_schedule"].as_str().unwrap()
    );
    assert_eq!(
        cfg.steps_offset as u64,
        settings["steps_offset"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.set_alpha_to_one,
        settings["set_alpha_to_one"].as_bool().unwrap()
    );
    assert_eq!(
        cfg.timestep_spacing,
        settings["timestep_spacing"].as_str().unwrap()
    );
    assert_eq!(
        cfg.prediction_type,
        settings["prediction_type"].as_str().unwrap()
    );
    // The fixture settings themselves (all keys spelled out) parse to the same schedule.
    let from_settings: DdimConfig = serde_json::from_value(settings.clone()).unwrap();
    let other = DdimScheduler::new(from_settings).unwrap();
    assert_eq!(other.alphas_cumprod(), sched.alphas_cumprod());
}

#[test]
fn ddim_alphas_cumprod_match_fixture() {
    let fx = common::Fixtures::load();
    let sched = scheduler(&fx);
    let ours = Tensor::new(sched.alphas_cumprod(), &cpu()).unwrap();
    fx.assert_close("ddim", "alphas_cumprod", &ours);
    let expected: Vec<f32> = fx.tensor("ddim", "alphas_cumprod").to_vec1().unwrap();
    let bit_diffs = expected
        .iter()
        .zip(sched.alphas_cumprod())
        .filter(|(a, b)| a != b)
        .count();
    eprintln!(
        "alphas_cumprod: {bit_diffs} of {} values differ from torch in any bit",
        expected.len()
    );
    let f64_as_f32: Vec<f32> = sched
        .alphas_cumprod_f64()
        .iter()
        .map(|&a| a as f32)
        .collect();
    fx.assert_close(
        "ddim",
        "alphas_cumprod_float64",
        &Tensor::new(f64_as_f32, &cpu()).unwrap(),
    );
}

#[test]
fn ddim_timesteps_and_alphas_match_fixture() {
    let fx = common::Fixtures::load();
    let sched = scheduler(&fx);
    let grids = ddim_grids(&fx);
    assert!(!grids.is_empty());
    for n in grids {
        let ts = sched.timesteps(n);
        let as_i64: Vec<i64> = ts.iter().map(|&t| t as i64).collect();
        fx.assert_close(
            "ddim",
            &format!("timesteps_{n}"),
            &Tensor::new(as_i64, &cpu()).unwrap(),
        );
        let ratio = sched.step_ratio(n) as isize;
        let alpha = |t: isize| {
            if t < 0 {
                sched.final_alpha_cumprod()
            } else {
                sched.alphas_cumprod()[t as usize]
            }
        };
        let a_t: Vec<f32> = ts.iter().map(|&t| alpha(t as isize)).collect();
        let a_prev: Vec<f32> = ts.iter().map(|&t| alpha(t as isize - ratio)).collect();
        fx.assert_close(
            "ddim",
            &format!("alpha_prod_t_{n}"),
            &Tensor::new(a_t, &cpu()).unwrap(),
        );
        fx.assert_close(
            "ddim",
            &format!("alpha_prod_t_prev_{n}"),
            &Tensor::new(a_prev, &cpu()).unwrap(),
        );
    }
}

/// The single-step fixtures use the smallest grid of the fixture (N = 10, ratio 100).
fn step_grid(fx: &common::Fixtures) -> usize {
    ddim_grids(fx)[0]
}

#[test]
fn ddim_steps_match_fixture() {
    let fx = common::Fixtures::load();
    let sched = scheduler(&fx);
    let n = step_grid(&fx);
    let x = fx.tensor("ddim", "x");
    let eps = fx.tensor("ddim", "eps");
    for t in fixture_timesteps(&fx, "step_prev_t") {
        let out = sched.step(&eps, t, &x, n).unwrap();
        fx.assert_close("ddim", &format!("step_prev_t{t}"), &out.prev_sample);
        fx.assert_close("ddim", &format!("step_x0_t{t}"), &out.pred_original_sample);
    }
    for t in fixture_timesteps(&fx, "inverse_step_t") {
        let ours = sched.inverse_step(&eps, t, &x, n).unwrap();
        fx.assert_close("ddim", &format!("inverse_step_t{t}"), &ours);
    }
    for t in fixture_timesteps(&fx, "authors_inverse_step_t") {
        let ours = sched.authors_inverse_step(&eps, t, &x, n).unwrap();
        fx.assert_close("ddim", &format!("authors_inverse_step_t{t}"), &ours);
    }
}

#[test]
fn kl_regulariser_matches_fixture() {
    let fx = common::Fixtures::load();
    let settings = fx.settings("inversion");
    let lambda = settings["lambda_kl"].as_f64().unwrap();
    let steps = settings["num_reg_steps"].as_u64().unwrap() as usize;
    let out = kl_regularize(&fx.tensor("ddim", "kl_in"), lambda, steps).unwrap();
    fx.assert_close("ddim", "kl_out", &out);
}

#[test]
fn authors_inversion_timesteps_are_the_inner_grid() {
    let fx = common::Fixtures::load();
    let sched = scheduler(&fx);
    for name in &fx.names_with_prefix("authors_inversion") {
        let name = name.as_str();
        let n = fx.settings(name)["num_inference_steps"].as_u64().unwrap() as usize;
        let ts: Vec<i64> = sched
            .authors_inversion_timesteps(n)
            .iter()
            .map(|&t| t as i64)
            .collect();
        assert_eq!(ts.len(), n - 2);
        fx.assert_close(name, "timesteps", &Tensor::new(ts, &cpu()).unwrap());
    }
    // docs/algorithm.md §14.1: N = 60 → 945 … 1 by 16; the authors' list is 17 … 929 (58 entries).
    let ts60 = sched.timesteps(60);
    assert_eq!((ts60[0], ts60[59], ts60.len()), (945, 1, 60));
    let inv60 = sched.authors_inversion_timesteps(60);
    assert_eq!((inv60[0], inv60[57], inv60.len()), (17, 929, 58));
}

/// docs/algorithm.md §14.2: with a fixed ε, DDIMfwd(DDIMinv(z)) = z at every step of the grid.
#[test]
fn inverse_step_is_exact_inverse_of_step() {
    let fx = common::Fixtures::load();
    let sched = scheduler(&fx);
    let n = 10;
    let eps = noise(&[1, 4, 8, 8], 1, DType::F32);
    let z = noise(&[1, 4, 8, 8], 2, DType::F32);
    let mut worst = 0f64;
    for t in sched.timesteps(n) {
        let up = sched.inverse_step(&eps, t, &z, n).unwrap();
        let back = sched.step(&eps, t, &up, n).unwrap().prev_sample;
        worst = worst.max(max_abs_diff(&back, &z));
    }
    eprintln!("step(inverse_step(z)) max abs error over the 10-step grid: {worst:.3e}");
    assert!(worst < 1e-5, "{worst}");

    // The same for v-prediction (SD 2.x 768 models).
    let mut cfg = sched.config().clone();
    cfg.prediction_type = "v_prediction".into();
    let v_sched = DdimScheduler::new(cfg).unwrap();
    let mut worst_v = 0f64;
    for t in v_sched.timesteps(n) {
        let up = v_sched.inverse_step(&eps, t, &z, n).unwrap();
        let back = v_sched.step(&eps, t, &up, n).unwrap().prev_sample;
        worst_v = worst_v.max(max_abs_diff(&back, &z));
    }
    eprintln!("v-prediction: max abs error {worst_v:.3e}");
    assert!(worst_v < 1e-5, "{worst_v}");
}

/// docs/algorithm.md §14.3: closed-form KL gradient against candle autograd of L_KL.
#[test]
fn kl_closed_form_gradient_matches_autograd() {
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-5)] {
        let e = noise(&[1, 4, 16, 16], 3, dtype);
        let e = ((e * 1.3).unwrap() + 0.2).unwrap();
        let var = Var::from_tensor(&e).unwrap();
        let loss = kl_divergence(var.as_tensor()).unwrap();
        let auto = loss
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .clone();
        let closed = kl_gradient(&e).unwrap();
        let err = max_abs_diff(&auto, &closed);
        let scale = auto
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        eprintln!(
            "KL gradient {dtype:?}: max abs error {err:.3e}, relative {:.3e}",
            err / scale
        );
        assert!(
            scale > 0.0 && err / scale < tol,
            "{dtype:?}: {err} vs scale {scale}"
        );
    }
}

/// Gradient flows through `step` / `inverse_step` to both the sample and ε (central differences).
#[test]
fn step_gradients_match_finite_differences() {
    let fx = common::Fixtures::load();
    let sched = scheduler(&fx);
    let n = 10;
    let shape = [1, 2, 3, 3];
    let w = noise(&shape, 9, DType::F32);
    let sample0 = noise(&shape, 10, DType::F32);
    let eps0 = noise(&shape, 11, DType::F32);
    type StepFn<'a> = Box<dyn Fn(&Tensor, &Tensor) -> Tensor + 'a>;
    let cases: Vec<(&str, StepFn)> = vec![
        (
            "step.prev",
            Box::new(|e, x| sched.step(e, 501, x, n).unwrap().prev_sample),
        ),
        (
            "step.x0",
            Box::new(|e, x| sched.step(e, 1, x, n).unwrap().pred_original_sample),
        ),
        (
            "inverse_step",
            Box::new(|e, x| sched.inverse_step(e, 501, x, n).unwrap()),
        ),
    ];
    for (label, f) in cases {
        let eps = Var::from_tensor(&eps0).unwrap();
        let sample = Var::from_tensor(&sample0).unwrap();
        let loss = f(eps.as_tensor(), sample.as_tensor())
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let loss_at = |e: &Tensor, x: &Tensor| -> f64 {
            f(e, x)
                .mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        for (which, var) in [("eps", &eps), ("sample", &sample)] {
            let g: Vec<f32> = grads
                .get(var.as_tensor())
                .expect("gradient")
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let h = 1e-2f32;
            let mut nonzero = 0;
            for j in [0usize, 4, 7, 12, 17] {
                let mut plus = base.clone();
                let mut minus = base.clone();
                plus[j] += h;
                minus[j] -= h;
                let plus = Tensor::from_vec(plus, &shape, &cpu()).unwrap();
                let minus = Tensor::from_vec(minus, &shape, &cpu()).unwrap();
                let fd = if which == "eps" {
                    (loss_at(&plus, &sample0) - loss_at(&minus, &sample0)) / (2.0 * h as f64)
                } else {
                    (loss_at(&eps0, &plus) - loss_at(&eps0, &minus)) / (2.0 * h as f64)
                };
                let an = g[j] as f64;
                let rel = (fd - an).abs() / an.abs().max(1e-3);
                assert!(
                    rel < 1e-2,
                    "{label} d/d{which}[{j}]: autograd {an} vs finite difference {fd}"
                );
                nonzero += (an.abs() > 1e-4) as usize;
            }
            assert!(nonzero >= 3, "{label}: gradient w.r.t. {which} vanished");
        }
    }
}

// ------------------------------------------------------------------------------------- VAE

fn vae_paths(fx: &common::Fixtures) -> (PathBuf, PathBuf) {
    (fx.config_path("vae"), fx.weights_path("vae"))
}

fn load_vae(fx: &common::Fixtures) -> AutoencoderKL {
    let (config, weights) = vae_paths(fx);
    let cfg = VaeConfig::from_file(&config).expect("vae config");
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &cpu()) }.unwrap();
    AutoencoderKL::new(vb, &cfg).expect("vae builds")
}

#[test]
fn vae_matches_fixture() {
    let fx = common::Fixtures::load();
    let vae = load_vae(&fx);
    let settings = fx.settings("vae");
    let scaling = settings["scaling_factor"]
        .as_f64()
        .expect("vae settings: scaling_factor");
    assert_eq!(vae.config().scaling_factor(), scaling);
    assert_eq!(vae.config().downsample_factor(), fx.vae_scale_factor());
    let image = fx.tensor("vae", "image");
    let (h, w) = fx.image_hw();
    assert_eq!(image.dims(), &[1, 3, h, w]);
    let posterior = vae.encode(&image).unwrap();
    fx.assert_close("vae", "posterior_mean", &posterior.mean);
    fx.assert_close("vae", "posterior_logvar", &posterior.logvar);
    fx.assert_close("vae", "latent", &vae.image_to_latent(&image).unwrap());
    let decoded = vae.latent_to_image(&fx.tensor("vae", "latent")).unwrap();
    fx.assert_close("vae", "decoded", &decoded);

    // Seeded posterior samples: repeatable, different per seed, close to the mean.
    let a = posterior.sample(5).unwrap();
    assert_eq!(max_abs_diff(&a, &posterior.sample(5).unwrap()), 0.0);
    assert!(max_abs_diff(&a, &posterior.sample(6).unwrap()) > 0.0);
    let spread = max_abs_diff(&a, &posterior.mean);
    let max_std = posterior
        .std()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!(
        spread > 0.0 && spread <= 6.0 * max_std,
        "{spread} vs std {max_std}"
    );
}

/// The original checkpoint names (`query/key/value/proj_attn`, 1×1 conv shapes) load to the
/// same model.
#[test]
fn vae_accepts_original_attention_names() {
    let fx = common::Fixtures::load();
    let (config, weights) = vae_paths(&fx);
    let cfg = VaeConfig::from_file(&config).unwrap();
    let tensors = candle_core::safetensors::load(&weights, &cpu()).unwrap();
    let renames = [
        ("to_q", "query"),
        ("to_k", "key"),
        ("to_v", "value"),
        ("to_out.0", "proj_attn"),
    ];
    let mut renamed: HashMap<String, Tensor> = HashMap::new();
    let mut count = 0;
    for (name, t) in &tensors {
        let mut new_name = name.clone();
        let mut new_t = t.clone();
        for (today, original) in renames {
            let marker = format!(".attentions.0.{today}.");
            if name.contains(&marker) {
                new_name = name.replace(&marker, &format!(".attentions.0.{original}."));
                if name.ends_with(".weight") {
                    let (o, i) = t.dims2().unwrap();
                    new_t = t.reshape((o, i, 1, 1)).unwrap();
                }
                count += 1;
            }
        }
        renamed.insert(new_name, new_t);
    }
    assert_eq!(
        count, 16,
        "encoder + decoder: 4 projections × (weight, bias)"
    );
    let vb = VarBuilder::from_tensors(renamed, DType::F32, &cpu());
    let original = AutoencoderKL::new(vb, &cfg).unwrap();
    let today = load_vae(&fx);
    let image = fx.tensor("vae", "image");
    let latent = fx.tensor("vae", "latent");
    assert_eq!(
        max_abs_diff(
            &original.image_to_latent(&image).unwrap(),
            &today.image_to_latent(&image).unwrap()
        ),
        0.0
    );
    assert_eq!(
        max_abs_diff(
            &original.latent_to_image(&latent).unwrap(),
            &today.latent_to_image(&latent).unwrap()
        ),
        0.0
    );
}

#[test]
fn vae_handles_non_square_images() {
    let fx = common::Fixtures::load();
    let vae = load_vae(&fx);
    let f = vae.config().downsample_factor();
    let (h, w) = (16 * f, 24 * f);
    let image = noise(&[1, 3, h, w], 4, DType::F32)
        .clamp(-1f32, 1f32)
        .unwrap();
    let latent = vae.image_to_latent(&image).unwrap();
    assert_eq!(
        latent.dims(),
        &[1, vae.config().latent_channels, h / f, w / f]
    );
    let decoded = vae.latent_to_image(&latent).unwrap();
    assert_eq!(decoded.dims(), &[1, 3, h, w]);
    let finite = decoded
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite());
    assert!(finite);
}

/// Any number of blocks: a 4-block VAE (×8) with random weights, no attention names given.
#[test]
fn vae_builds_with_four_blocks() {
    let cfg: VaeConfig = serde_json::from_str(
        r#"{"block_out_channels": [8, 16, 16, 16], "down_block_types": ["DownEncoderBlock2D",
            "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types":
            ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "layers_per_block": 1, "norm_num_groups": 4, "scaling_factor": 0.13025}"#,
    )
    .unwrap();
    assert_eq!(cfg.downsample_factor(), 8);
    assert_eq!(cfg.scaling_factor(), 0.13025);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &cpu());
    let vae = AutoencoderKL::new(vb, &cfg).unwrap();
    let image = noise(&[2, 3, 32, 48], 5, DType::F32);
    let latent = vae.image_to_latent(&image).unwrap();
    assert_eq!(latent.dims(), &[2, 4, 4, 6]);
    assert_eq!(
        vae.latent_to_image(&latent).unwrap().dims(),
        &[2, 3, 32, 48]
    );
    // The stride-2 conv with padding (0, 1, 0, 1) also takes odd sizes (as diffusers).
    let odd = vae.encode(&noise(&[1, 3, 17, 17], 6, DType::F32)).unwrap();
    assert_eq!(odd.mean.dims(), &[1, 4, 2, 2]); // 17 → 8 → 4 → 2
}

// ------------------------------------------------------------------------------ config errors

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-vae-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn config_field(err: &EngineError, path: &Path) -> String {
    match err {
        EngineError::Config { file, field, .. } => {
            assert_eq!(file, path);
            field.clone()
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn config_errors_name_file_and_field() {
    let p = temp_file(
        "vae_bad_type.json",
        r#"{"block_out_channels": [32], "layers_per_block": "two"}"#,
    );
    let err = VaeConfig::from_file(&p).unwrap_err();
    assert_eq!(config_field(&err, &p), "layers_per_block");
    assert!(err.to_string().contains("layers_per_block"), "{err}");

    let p = temp_file(
        "vae_unknown_block.json",
        r#"{"block_out_channels": [32, 32], "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "norm_num_groups": 8}"#,
    );
    match VaeConfig::from_file(&p).unwrap_err() {
        EngineError::UnknownBlockType { file, block, .. } => {
            assert_eq!(file, p);
            assert_eq!(block, "AttnDownEncoderBlock2D");
        }
        other => panic!("expected UnknownBlockType, got {other:?}"),
    }

    let p = temp_file(
        "vae_groups.json",
        r#"{"block_out_channels": [30], "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"]}"#,
    );
    assert_eq!(
        config_field(&VaeConfig::from_file(&p).unwrap_err(), &p),
        "block_out_channels"
    );

    let missing = Path::new("/nonexistent/vae/config.json");
    assert!(matches!(
        VaeConfig::from_file(missing),
        Err(EngineError::Io { .. })
    ));

    let p = temp_file("sched_schedule.json", r#"{"beta_schedule": "exponential"}"#);
    assert_eq!(
        config_field(&DdimScheduler::from_file(&p).unwrap_err(), &p),
        "beta_schedule"
    );
    let p = temp_file("sched_prediction.json", r#"{"prediction_type": "sample"}"#);
    assert_eq!(
        config_field(&DdimScheduler::from_file(&p).unwrap_err(), &p),
        "prediction_type"
    );
    let p = temp_file("sched_type.json", r#"{"num_train_timesteps": -5}"#);
    assert_eq!(
        config_field(&DdimScheduler::from_file(&p).unwrap_err(), &p),
        "num_train_timesteps"
    );
    let p = temp_file("sched_json.json", r#"{"num_train_timesteps": "#);
    assert!(matches!(
        DdimScheduler::from_file(&p),
        Err(EngineError::Config { .. })
    ));
}

#[test]
fn timestep_spacings_follow_diffusers() {
    let base = r#""beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "set_alpha_to_one": false"#;
    let make = |extra: &str| {
        let cfg: DdimConfig = serde_json::from_str(&format!("{{{base}, {extra}}}")).unwrap();
        DdimScheduler::new(cfg).unwrap()
    };
    // Values from diffusers 0.3x `DDIMScheduler.set_timesteps`.
    let leading = make(r#""steps_offset": 1, "timestep_spacing": "leading""#);
    assert_eq!(
        leading.timesteps(10),
        vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    );
    let trailing = make(r#""timestep_spacing": "trailing""#);
    assert_eq!(
        trailing.timesteps(10),
        vec![999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    );
    assert_eq!(trailing.timesteps(3), vec![999, 666, 332]);
    let linspace = make(r#""timestep_spacing": "linspace""#);
    assert_eq!(
        linspace.timesteps(10),
        vec![999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    );
    assert_eq!(linspace.timesteps(4), vec![999, 666, 333, 0]);
    assert!(leading.timesteps(0).is_empty());
    assert!(leading.check_num_inference_steps(1001).is_err());
    assert!(
        leading
            .step(
                &Tensor::zeros(1, DType::F32, &cpu()).unwrap(),
                1,
                &Tensor::zeros(1, DType::F32, &cpu()).unwrap(),
                0
            )
            .is_err()
    );
}
