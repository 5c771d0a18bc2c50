//! Half precision (f16, bf16) for the forward-only passes, on the test device
//! (`MIRROR_DEVICE`; `MIRROR_PRECISION` picks one half type): each pass against the PyTorch
//! fixtures with the manifest's f32 tolerance carried over by the ratio of unit roundoffs, a
//! whole MirrorDiffusion run against the same run in f32 (deviations printed for
//! docs/gpu-ops.md), and an overflow in a half pass reported as an error naming the step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use candle_core::{DType, Tensor};
use common::{Fixtures, half_atol, test_device, test_half_precisions};
use mirror_engine::EngineError;
use mirror_engine::device::{Precision, forward_dtype};
use mirror_engine::imageio::{ImageLimits, load_image};
use mirror_engine::loader::CheckpointConfigs;
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::stages::{self, InversionGrid, InversionSettings};
use mirror_engine::pipeline::{Branch, CancelToken, StageContext};
use mirror_engine::session::{
    DirectionChoice, Method, Session, TranslateOutcome, TranslateRequest,
};

fn load(model: &std::path::Path, precision: Precision) -> StableDiffusion {
    StableDiffusion::load_with_precision(
        model,
        &test_device(),
        CheckpointConfigs::bundled_sd_v1(),
        precision,
    )
    .expect("fixture model loads")
}

fn steps(fx: &Fixtures, name: &str) -> usize {
    fx.settings(name)["num_inference_steps"]
        .as_u64()
        .expect("num_inference_steps") as usize
}

#[test]
fn half_forward_passes_match_the_fixtures_within_carried_over_tolerances() {
    let fx = Fixtures::load();
    for precision in test_half_precisions() {
        let sd = load(&fx.model_dir(), precision);
        let half = sd.forward_dtype();
        assert_eq!(half, forward_dtype(&test_device(), precision));
        assert_ne!(half, DType::F32, "{precision} loads a half copy");

        // Text encoder.
        let nets = sd.half.as_ref().expect("half networks");
        let ids = fx.tensor("text_encoder", "input_ids");
        let hidden = nets.text_encoder.forward(&ids).unwrap();
        assert_eq!(hidden.dtype(), half, "the encoder computes in {half:?}");
        let hidden = hidden.to_dtype(DType::F32).unwrap();
        fx.assert_close_half("text_encoder", "last_hidden_state", &hidden, half);

        // UNet noise prediction at every fixture timestep.
        let latents = fx.tensor("unet", "latents");
        let context = fx.tensor("unet", "encoder_hidden_states");
        for t in fx.timesteps("unet") {
            let eps = sd.forward_unet().forward(&latents, t, &context).unwrap();
            assert_eq!(eps.dtype(), DType::F32, "results come back in f32");
            fx.assert_close_half("unet", &format!("eps_t{t}"), &eps, half);
        }

        // DDIM inversion (no regulariser): the whole trajectory.
        let name = "inversion";
        let cancel = CancelToken::new();
        let ctx = StageContext::new(&sd, &cancel);
        let plan = InversionSettings {
            steps: steps(&fx, name),
            grid: InversionGrid::Consistent,
            kl: None,
        };
        let z0 = fx.tensor(name, "z0");
        let emb = fx.tensor(name, "encoder_hidden_states");
        let trajectory = stages::invert(&ctx, &z0, &emb, &plan, &mut |_| {}).unwrap();
        let stacked = Tensor::stack(&trajectory.latents, 0).unwrap();
        fx.assert_close_half(name, "latents_noreg", &stacked, half);

        // VAE decode.
        let decoded = stages::decode(&sd, &fx.tensor("vae", "latent")).unwrap();
        fx.assert_close_half("vae", "decoded", &decoded, half);
    }
}

fn caption(fx: &Fixtures) -> String {
    fx.settings("inversion")["prompt"]
        .as_str()
        .expect("inversion prompt")
        .to_string()
}

fn target(fx: &Fixtures) -> String {
    let edit = fx.settings("edit_direction");
    let source = edit["source"].as_str().expect("edit source word");
    let word = edit["target"].as_str().expect("edit target word");
    caption(fx).replace(source, word)
}

fn mirror_request(fx: &Fixtures, steps: usize) -> TranslateRequest {
    let image = load_image(&fx.test_image(), &ImageLimits::default()).unwrap();
    let mut req = TranslateRequest::new(image.rgb, &caption(fx), &target(fx));
    req.method = Method::Mirror;
    req.steps = steps;
    req.use_cache = false;
    req.direction = DirectionChoice::Templates { pairs: 64 };
    req
}

fn run(model: &std::path::Path, precision: Precision, req: &TranslateRequest) -> TranslateOutcome {
    let mut session = Session::new(load(model, precision), None);
    session
        .translate(req, &CancelToken::new(), &mut |_| {})
        .unwrap_or_else(|e| panic!("{precision}: {e}"))
}

fn latent(outcome: &TranslateOutcome, branch: Branch) -> Tensor {
    outcome
        .latents
        .iter()
        .find(|(b, _)| *b == branch)
        .map(|(_, t)| t.to_dtype(DType::F32).unwrap())
        .unwrap_or_else(|| panic!("no {branch:?} latent"))
}

fn mirror_errors(outcome: &TranslateOutcome) -> Vec<f64> {
    outcome
        .reports
        .iter()
        .filter_map(|r| {
            r.branches
                .iter()
                .find(|b| b.branch == Method::Mirror.reconstruction())?
                .mirror_error
        })
        .collect()
}

/// A whole MirrorDiffusion run (the fixtures' Preset R length) with half forward passes
/// against the same run in f32: the final latents of both branches and the mirror error of
/// every step stay within the fixtures' tolerances carried over to the half type. Prints the
/// deviations (the figures in docs/gpu-ops.md).
#[test]
fn a_whole_mirror_run_in_half_precision_tracks_the_f32_run() {
    let fx = Fixtures::load();
    let name = "mirror_r_10";
    let req = mirror_request(&fx, steps(&fx, name));
    let reference = run(&fx.model_dir(), Precision::F32, &req);
    let errors_f32 = mirror_errors(&reference);
    assert_eq!(errors_f32.len(), req.steps);
    for precision in test_half_precisions() {
        let outcome = run(&fx.model_dir(), precision, &req);
        let half = forward_dtype(&test_device(), precision);
        let mut line = format!("{precision} vs f32, {} steps:", req.steps);
        for (branch, tensor) in [
            (Method::Mirror.translation(), "edit_latents"),
            (Method::Mirror.reconstruction(), "rec_latents"),
        ] {
            let d = f64::from(common::max_diff(
                &latent(&outcome, branch),
                &latent(&reference, branch),
            ));
            let tol = half_atol(fx.atol(name, tensor), half);
            line.push_str(&format!(
                " {branch:?} latent max |Δ| {d:.3e} (tol {tol:.2e});"
            ));
            assert!(d <= tol, "{precision}: {branch:?} latent deviates by {d}");
        }
        let errors = mirror_errors(&outcome);
        assert_eq!(errors.len(), errors_f32.len());
        let worst = errors
            .iter()
            .zip(&errors_f32)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let relative = errors
            .iter()
            .zip(&errors_f32)
            .map(|(a, b)| (a - b).abs() / b.abs().max(f64::MIN_POSITIVE))
            .fold(0.0, f64::max);
        let tol = half_atol(fx.atol(name, "rec_target_mismatch_l2"), half);
        line.push_str(&format!(
            " mirror error max |Δ| {worst:.3e} (relative {relative:.2e}, tol {tol:.2e})"
        ));
        eprintln!("{line}");
        assert!(
            worst <= tol,
            "{precision}: mirror error deviates by {worst}"
        );
    }
}

/// A copy of the fixture model whose UNet output layer is scaled so that its prediction
/// overflows f16 (largest finite value 65504) while f32 holds it.
fn overflowing_model(fx: &Fixtures) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-precision-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_tree(&fx.model_dir(), &dir);
    let weights = common::weight_file(&dir.join("unet"));
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    for key in ["conv_out.weight", "conv_out.bias"] {
        let t = tensors.get(key).unwrap_or_else(|| panic!("no {key}"));
        let scaled = (t.to_dtype(DType::F32).unwrap() * 1e6).unwrap();
        tensors.insert(key.to_string(), scaled.to_dtype(t.dtype()).unwrap());
    }
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    dir
}

#[test]
fn an_overflow_in_a_half_pass_is_an_error_naming_the_step() {
    let fx = Fixtures::load();
    let model = overflowing_model(&fx);
    let mut req = mirror_request(&fx, 3);
    req.method = Method::Ddim;
    // f32 holds the large prediction: the run completes.
    let f32_run = run(&model, Precision::F32, &req);
    assert!(!f32_run.cancelled);
    let mut session = Session::new(load(&model, Precision::F16), None);
    let err = session
        .translate(&req, &CancelToken::new(), &mut |_| {})
        .expect_err("an f16 pass overflows");
    let text = err.to_string();
    match &err {
        EngineError::NonFinite { what } => {
            assert!(what.contains("step 1 of"), "{text}");
            assert!(what.contains("f16") && what.contains("f32"), "{text}");
        }
        EngineError::StepNotFinite { step, .. } => assert_eq!(*step, 1, "{text}"),
        other => panic!("expected a non-finite error naming the step, got {other}"),
    }
    let _ = std::fs::remove_dir_all(&model);
}

/// bf16 where the device cannot convolve in it (the CPU) loads no half copy: everything runs
/// in f32, and the reason is given (`resolve_precision`).
#[test]
fn bf16_where_the_device_lacks_it_runs_in_f32() {
    let (dtype, why) = mirror_engine::device::resolve_precision(&test_device(), Precision::Bf16);
    if why.is_none() {
        assert_eq!(dtype, DType::BF16);
        return; // this device computes in bf16: the other tests cover it
    }
    let fx = Fixtures::load();
    let sd = load(&fx.model_dir(), Precision::Bf16);
    assert!(sd.half.is_none());
    assert_eq!(sd.forward_dtype(), DType::F32);
}
