//! Text-to-image sampling on the fixture model: the DDIM loop against PyTorch's plain DDIM
//! sampling (the `reconstruction` fixture: guidance 1 from given noise), seeds that
//! reproduce and differ, guidance 1 = the prompt alone, CFG = the DDIM baseline's step, the
//! model's recommended defaults, unknown words refused, and the `generate` command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

#[path = "../crates/mirror-engine/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

use candle_core::{Device, Tensor};
use common::{Fixtures, max_diff};
use mirror_engine::methods::ddim::{self, DdimContexts};
use mirror_engine::methods::generate::{
    DEFAULT_GUIDANCE, DEFAULT_STEPS, GenerateSettings, denoise, encode_prompt, generate,
    initial_noise,
};
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::stages::{decode, predict_noise};
use mirror_engine::pipeline::{CancelToken, StageContext};
use serde_json::json;

fn model(fx: &Fixtures) -> StableDiffusion {
    StableDiffusion::load(&fx.model_dir(), &Device::Cpu).unwrap()
}

fn prompt(fx: &Fixtures) -> String {
    fx.settings("reconstruction")["prompt"]
        .as_str()
        .expect("reconstruction prompt")
        .to_string()
}

fn settings(sd: &StableDiffusion, fx: &Fixtures, steps: usize, guidance: f64) -> GenerateSettings {
    let mut s = GenerateSettings::for_model(sd, &prompt(fx));
    s.steps = steps;
    s.guidance_scale = guidance;
    s
}

fn run(sd: &StableDiffusion, s: &GenerateSettings) -> Tensor {
    generate(sd, s, &CancelToken::new(), &mut |_, _| {}).unwrap()
}

/// The loop from the fixture's z_T with guidance 1 is PyTorch's plain DDIM sampling: every
/// latent and the decoded image within the manifest's tolerances.
#[test]
fn denoise_loop_matches_pytorch_ddim_sampling() {
    let fx = Fixtures::load();
    let sd = model(&fx);
    let set = fx.settings("reconstruction");
    let steps = set["num_inference_steps"].as_u64().expect("steps") as usize;
    let guidance = set["guidance_scale"].as_f64().expect("guidance");
    let contexts = encode_prompt(&sd, &prompt(&fx), guidance).unwrap();
    assert!(
        contexts.uncond.is_none(),
        "guidance 1 samples the prompt alone"
    );
    let cancel = CancelToken::new();
    let ctx = StageContext::new(&sd, &cancel);
    let z_t = fx.tensor("reconstruction", "zT_noreg");
    let expected = fx.tensor("reconstruction", "latents_noreg");
    let mut latents = Vec::new();
    let last = denoise(&ctx, &z_t, &contexts, steps, &mut |_, z| {
        latents.push(z.clone())
    })
    .unwrap();
    assert_eq!(latents.len(), steps);
    let atol = fx.atol("reconstruction", "latents_noreg");
    for (i, z) in latents.iter().enumerate() {
        let want = expected.get(i + 1).unwrap();
        common::assert_tensor_close(&format!("latent after step {i}"), &want, z, atol);
    }
    fx.assert_close(
        "reconstruction",
        "decoded_noreg",
        &decode(&sd, &last).unwrap(),
    );
}

#[test]
fn seeds_reproduce_and_differ() {
    let fx = Fixtures::load();
    let sd = model(&fx);
    let mut s = settings(&sd, &fx, 3, 4.0);
    s.seed = 11;
    s.count = 2;
    let two = run(&sd, &s);
    let side = sd.default_image_side();
    assert_eq!(two.dims(), &[2, 3, side, side]);
    assert_eq!(max_diff(&two, &run(&sd, &s)), 0.0, "same seed, same images");
    let mut second = s.clone();
    second.seed = 12;
    second.count = 1;
    let alone = run(&sd, &second);
    assert_eq!(
        max_diff(&two.narrow(0, 1, 1).unwrap(), &alone),
        0.0,
        "image k of a batch uses seed + k"
    );
    assert!(
        max_diff(&two.narrow(0, 0, 1).unwrap(), &alone) > 1e-3,
        "different seeds, different images"
    );
}

/// Guidance 1 is the conditional-only sampler (UNet on the prompt, DDIM step), the same
/// result the CFG formula gives at w = 1; guidance w > 1 takes exactly the DDIM baseline's
/// CFG step against the empty prompt.
#[test]
fn guidance_one_is_the_prompt_alone_and_cfg_is_the_ddim_step() {
    let fx = Fixtures::load();
    let sd = model(&fx);
    let steps = 3;
    let s = settings(&sd, &fx, steps, 1.0);
    let generated = run(&sd, &s);
    let cond = sd.encode_prompt(&s.prompt).unwrap();
    let uncond = sd.encode_prompt("").unwrap();
    let mut plain = initial_noise(&sd, s.seed, s.width, s.height).unwrap();
    let mut cfg_one = plain.clone();
    for t in sd.scheduler.timesteps(steps) {
        let eps = predict_noise(&sd, &plain, t, &cond, None).unwrap();
        plain = sd
            .scheduler
            .step(&eps, t, &plain, steps)
            .unwrap()
            .prev_sample;
        let eps = predict_noise(&sd, &cfg_one, t, &cond, Some((&uncond, 1.0))).unwrap();
        cfg_one = sd
            .scheduler
            .step(&eps, t, &cfg_one, steps)
            .unwrap()
            .prev_sample;
    }
    assert_eq!(max_diff(&generated, &decode(&sd, &plain).unwrap()), 0.0);
    let formula = max_diff(&generated, &decode(&sd, &cfg_one).unwrap());
    assert!(formula < 1e-4, "CFG at w = 1 differs by {formula}");

    // w = 3: one step of the loop is the DDIM baseline's step with [uncond, cond].
    let contexts = encode_prompt(&sd, &s.prompt, 3.0).unwrap();
    let (u, w) = contexts
        .uncond
        .clone()
        .expect("w > 1 guides against the empty prompt");
    assert_eq!((max_diff(&u, &uncond), w), (0.0, 3.0));
    let cancel = CancelToken::new();
    let ctx = StageContext::new(&sd, &cancel);
    let start = initial_noise(&sd, 5, s.width, s.height).unwrap();
    let one = denoise(&ctx, &start, &contexts, 1, &mut |_, _| {}).unwrap();
    let t = sd.scheduler.timesteps(1)[0];
    let baseline = ddim::denoise(
        &ctx,
        &start,
        t,
        1,
        &DdimContexts {
            cond: cond.clone(),
            uncond: Some((uncond.clone(), 3.0)),
        },
        false,
    )
    .unwrap();
    assert_eq!(max_diff(&one, &baseline.latent), 0.0);
}

/// A model copy with a `mirror.json`: its recommended steps and guidance become the
/// defaults, and a word outside its vocabulary is refused, by the engine and the command.
#[test]
fn model_defaults_unknown_words_and_the_command() {
    let fx = Fixtures::load();
    let root = std::env::temp_dir().join(format!("mirror-generate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let model_dir = root.join("model");
    common::copy_tree(&fx.model_dir(), &model_dir);
    let caption = prompt(&fx);
    let vocabulary: Vec<String> = caption.split_whitespace().map(String::from).collect();
    std::fs::write(
        model_dir.join("mirror.json"),
        json!({"recommended": {"steps": 2, "guidance_scale": 2.5}, "vocabulary": vocabulary})
            .to_string(),
    )
    .unwrap();
    let plain = model(&fx);
    let defaults = GenerateSettings::for_model(&plain, &caption);
    assert_eq!(
        (defaults.steps, defaults.guidance_scale),
        (DEFAULT_STEPS, DEFAULT_GUIDANCE)
    );
    let sd = StableDiffusion::load(&model_dir, &Device::Cpu).unwrap();
    let s = GenerateSettings::for_model(&sd, &caption);
    assert_eq!((s.steps, s.guidance_scale), (2, 2.5));
    let unknown = format!("{caption} zebra");
    let e = generate(
        &sd,
        &GenerateSettings::for_model(&sd, &unknown),
        &CancelToken::new(),
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"zebra\""), "{e}");

    let bin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mirror-diffusion"))
            .args(args)
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("the binary runs")
    };
    let out = root.join("images");
    let model_arg = model_dir.to_str().unwrap();
    let o = bin(&[
        "generate",
        "--model",
        model_arg,
        "--prompt",
        &caption,
        "--count",
        "2",
        "--seed",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("2 steps, guidance 2.5"), "{stderr}");
    let side = sd.default_image_side() as u32;
    for seed in [4, 5] {
        let path: PathBuf = out.join(format!("seed-{seed}.png"));
        let img = image::open(&path).expect("image written").to_rgb8();
        assert_eq!(img.dimensions(), (side, side));
    }
    let o = bin(&[
        "generate",
        "--model",
        model_arg,
        "--prompt",
        &unknown,
        "--out",
        root.join("x.png").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("\"zebra\"") && stderr.contains(&vocabulary.join(", ")),
        "names the word and the known words: {stderr}"
    );
    assert!(!root.join("x.png").exists());
    let o = bin(&[
        "translate",
        "--model",
        model_arg,
        "--image",
        fx.test_image().to_str().unwrap(),
        "--source",
        &caption,
        "--target",
        &unknown,
        "--out",
        root.join("t.png").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("\"zebra\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
