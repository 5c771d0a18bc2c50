//! Inversion, reconstruction and pix2pix-zero parity with the PyTorch reference loops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use candle_core::{DType, IndexOp, Tensor};
use common::Fixtures;
use mirror_engine::methods::ddim::{self, DdimContexts, DdimInputs};
use mirror_engine::methods::pix2pix_zero::{self, Pix2PixZeroInputs, Pix2PixZeroSettings};
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::stages::{self, InversionGrid, KlRegularizer};
use mirror_engine::pipeline::{CancelToken, LatentPair, StageContext};

fn load() -> (Fixtures, StableDiffusion) {
    let fx = Fixtures::load();
    let sd = StableDiffusion::load(&fx.model_dir(), &common::test_device())
        .expect("fixture model loads");
    (fx, sd)
}

fn steps(fx: &Fixtures, name: &str) -> usize {
    fx.settings(name)["num_inference_steps"]
        .as_u64()
        .expect("num_inference_steps") as usize
}

fn kl(fx: &Fixtures, name: &str) -> KlRegularizer {
    let s = fx.settings(name);
    KlRegularizer {
        lambda: s["lambda_kl"].as_f64().expect("lambda_kl"),
        steps: s["num_reg_steps"].as_u64().expect("num_reg_steps") as usize,
    }
}

fn i64s(v: &[usize]) -> Tensor {
    Tensor::new(
        v.iter().map(|&x| x as i64).collect::<Vec<_>>(),
        &common::test_device(),
    )
    .unwrap()
}

#[test]
fn ddim_inversion_matches_reference() {
    let (fx, sd) = load();
    let name = "inversion";
    let n = steps(&fx, name);
    let z0 = fx.tensor(name, "z0");
    let emb = fx.tensor(name, "encoder_hidden_states");
    for (out, reg) in [("latents_noreg", None), ("latents_kl", Some(kl(&fx, name)))] {
        let cancel = CancelToken::new();
        let plan = stages::InversionSettings {
            steps: n,
            grid: InversionGrid::Consistent,
            kl: reg,
        };
        let ctx = StageContext::new(&sd, &cancel);
        let t = stages::invert(&ctx, &z0, &emb, &plan, &mut |_| {}).unwrap();
        assert_eq!(t.latents.len(), n + 1);
        fx.assert_close(name, out, &Tensor::stack(&t.latents, 0).unwrap());
        fx.assert_close(name, "timesteps", &i64s(&t.timesteps));
    }
}

#[test]
fn authors_inversion_matches_reference() {
    let (fx, sd) = load();
    for name in fx.names_with_prefix("authors_inversion_") {
        let n = steps(&fx, &name);
        let cancel = CancelToken::new();
        let plan = stages::InversionSettings {
            steps: n,
            grid: InversionGrid::Authors,
            kl: Some(kl(&fx, &name)),
        };
        let t = stages::invert(
            &StageContext::new(&sd, &cancel),
            &fx.tensor(&name, "z0"),
            &fx.tensor(&name, "encoder_hidden_states"),
            &plan,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(t.latents.len(), n - 1, "{name}: N - 1 latents");
        fx.assert_close(&name, "latents", &Tensor::stack(&t.latents, 0).unwrap());
        fx.assert_close(&name, "timesteps", &i64s(&t.timesteps));
    }
}

#[test]
fn ddim_reconstruction_matches_reference() {
    let (fx, sd) = load();
    let name = "reconstruction";
    let n = steps(&fx, name);
    // The reconstruction uses the caption embedding the inversion used.
    let emb = fx.tensor("inversion", "encoder_hidden_states");
    let contexts = DdimContexts {
        cond: emb,
        uncond: None,
    };
    // The production two-branch step, both branches on the caption: they must agree.
    let inputs = DdimInputs {
        steps: n,
        reconstruction: &contexts,
        translation: &contexts,
        want_maps: false,
    };
    let cancel = CancelToken::new();
    let ctx = StageContext::new(&sd, &cancel);
    for variant in ["noreg", "kl"] {
        let mut state = LatentPair::start(&fx.tensor(name, &format!("zT_{variant}")));
        let mut latents = vec![state.reconstruction.clone()];
        for i in 0..n {
            state = ddim::step(&ctx, &inputs, &state, i).unwrap().0;
            let same = common::max_diff(&state.reconstruction, &state.translation);
            assert_eq!(same, 0.0, "both branches of step {i} agree");
            latents.push(state.reconstruction.clone());
        }
        fx.assert_close(
            name,
            &format!("latents_{variant}"),
            &Tensor::stack(&latents, 0).unwrap(),
        );
        // Mismatch of sampling step i against the inversion latent it should land on.
        let inversion = fx.tensor(name, &format!("inversion_{variant}"));
        let (mut mse, mut maxabs) = (Vec::new(), Vec::new());
        for i in 0..n {
            let d = (&latents[i + 1] - inversion.i(n - 1 - i).unwrap()).unwrap();
            mse.push(
                d.sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            );
            maxabs.push(
                d.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            );
        }
        fx.assert_close(
            name,
            &format!("mismatch_mse_{variant}"),
            &Tensor::new(mse, &common::test_device()).unwrap(),
        );
        fx.assert_close(
            name,
            &format!("mismatch_maxabs_{variant}"),
            &Tensor::new(maxabs, &common::test_device()).unwrap(),
        );
        let decoded = stages::decode(&sd, &latents[n]).unwrap();
        fx.assert_close(name, &format!("decoded_{variant}"), &decoded);
    }
}

#[test]
fn pix2pix_zero_matches_reference() {
    let (fx, sd) = load();
    let name = "pix2pix_zero_10";
    let n = steps(&fx, name);
    let s = fx.settings(name);
    let settings = Pix2PixZeroSettings {
        guidance_scale: s["guidance_scale"].as_f64().unwrap(),
        xa_guidance: s["xa_guidance"].as_f64().unwrap(),
    };
    let caption = fx.tensor(name, "emb_source");
    let direction = (fx.tensor(name, "edit_dir") * s["edit_scale"].as_f64().unwrap()).unwrap();
    let start = fx.tensor(name, "xT");
    let (mut rec, mut edit) = (vec![start.clone()], vec![start.clone()]);
    let (mut losses, mut guided) = (Vec::new(), Vec::new());
    let inputs = Pix2PixZeroInputs {
        settings: &settings,
        steps: n,
        caption: &caption,
        direction: &direction,
        want_edit_maps: false,
    };
    let cancel = CancelToken::new();
    let ctx = StageContext::new(&sd, &cancel);
    for i in 0..n {
        let state = LatentPair {
            reconstruction: rec[i].clone(),
            translation: edit[i].clone(),
        };
        let (next, out) = pix2pix_zero::step(&ctx, &inputs, &state, i).unwrap();
        rec.push(next.reconstruction);
        edit.push(next.translation);
        losses.push(out.guidance.as_ref().unwrap().loss as f32);
        guided.push(out.dumped("pix2pix_zero.edit_guided").unwrap().clone());
    }
    fx.assert_close(name, "rec_latents", &Tensor::stack(&rec, 0).unwrap());
    fx.assert_close(name, "edit_latents", &Tensor::stack(&edit, 0).unwrap());
    fx.assert_close(
        name,
        "edit_x_in_guided",
        &Tensor::stack(&guided, 0).unwrap(),
    );
    fx.assert_close(
        name,
        "xa_loss",
        &Tensor::new(losses, &common::test_device())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
    );
    fx.assert_close(name, "rec_decoded", &stages::decode(&sd, &rec[n]).unwrap());
    fx.assert_close(
        name,
        "edit_decoded",
        &stages::decode(&sd, &edit[n]).unwrap(),
    );
}

#[test]
fn vae_encode_stage_gives_the_fixture_latent() {
    let (fx, sd) = load();
    let latent =
        stages::encode_image(&sd, &fx.tensor("vae", "image"), stages::Posterior::Mean).unwrap();
    fx.assert_close("vae", "latent", &latent);
}
