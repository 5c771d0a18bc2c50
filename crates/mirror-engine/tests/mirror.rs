//! MirrorDiffusion parity with the PyTorch reference loop (`mirror_*`: the released code,
//! `mirror_r_*`: Preset R), end to end and step by step (teacher forcing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use candle_core::{D, DType, IndexOp, Tensor};
use common::{Fixtures, assert_tensor_close};
use mirror_engine::methods::mirror::{
    self, MirrorInputs, MirrorPreset, MirrorSettings, MirrorState,
};
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::stages::{InversionGrid, Trajectory};
use mirror_engine::pipeline::{CancelToken, MethodStep, StageContext};

fn mirror_fixtures(fx: &Fixtures) -> Vec<String> {
    fx.names_with_prefix("mirror_")
}

struct Case {
    settings: MirrorSettings,
    trajectory: Trajectory,
    emb_source: Tensor,
    direction: Tensor,
    t: std::collections::HashMap<String, Tensor>,
}

fn case(fx: &Fixtures, sd: &StableDiffusion, name: &str) -> Case {
    let s = fx.settings(name);
    let preset = if s["preset"] == "R" {
        MirrorPreset::Recommended
    } else {
        MirrorPreset::Authors
    };
    let mut settings = MirrorSettings::with_preset(preset);
    settings.guidance_scale = s["guidance_scale"].as_f64().unwrap();
    settings.xa_guidance = s["xa_guidance"].as_f64().unwrap();
    settings.redescribe.iterations = s["num_inner_steps"].as_u64().unwrap() as usize;
    settings.redescribe.lr = s["adam_lr"].as_f64().unwrap();
    settings.redescribe.early_stop_base = s["early_stop_base"].as_f64().unwrap();
    settings.redescribe.early_stop_slope = s["early_stop_slope"].as_f64().unwrap();
    let n = s["num_inference_steps"].as_u64().unwrap() as usize;
    if preset == MirrorPreset::Recommended {
        let want: Vec<usize> = s["extra_steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(settings.extra_steps(n), want, "{name}: extra steps");
        for (i, v) in s["edit_scale"].as_array().unwrap().iter().enumerate() {
            assert!(
                (settings.edit_scale_at(i, n) - v.as_f64().unwrap()).abs() < 1e-12,
                "{name}: edit scale {i}"
            );
        }
    } else {
        let want: Vec<usize> = s["cycle_steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(settings.extra_steps(n), want);
        settings.kv_until = s["kv_until"].as_u64().unwrap() as usize;
        settings.kv_weight = s["kv_weight"].as_f64().unwrap();
    }
    let t = fx.tensors(name);
    let inv = &t["inversion_latents"];
    let latents: Vec<Tensor> = (0..inv.dim(0).unwrap())
        .map(|k| inv.i(k).unwrap())
        .collect();
    let grid = if preset == MirrorPreset::Recommended {
        InversionGrid::Consistent
    } else {
        InversionGrid::Authors
    };
    let trajectory = Trajectory {
        latents,
        timesteps: Vec::new(),
        grid,
        steps: n,
    };
    assert_eq!(sd.scheduler.timesteps(n).len(), n);
    Case {
        settings,
        trajectory,
        emb_source: t["emb_source"].clone(),
        direction: t["edit_dir"].clone(),
        t,
    }
}

impl Case {
    fn inputs(&self) -> MirrorInputs<'_> {
        MirrorInputs {
            settings: &self.settings,
            trajectory: &self.trajectory,
            direction: &self.direction,
            want_edit_maps: false,
            empty_prompt: None,
        }
    }
}

fn scalar_series(t: &Tensor, i: usize) -> f64 {
    t.i(i)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn check_scalar(label: &str, expected: f64, got: Option<f64>, atol: f64) {
    match got {
        None => assert!(expected.is_nan(), "{label}: expected {expected}, got none"),
        Some(g) => assert!(
            (g - expected).abs() <= atol,
            "{label}: expected {expected}, got {g} (atol {atol:e})"
        ),
    }
}

fn load() -> (Fixtures, StableDiffusion) {
    let fx = Fixtures::load();
    let sd = StableDiffusion::load(&fx.model_dir(), &common::test_device())
        .expect("fixture model loads");
    (fx, sd)
}

/// Every step from the recorded float32 state: the tight check.
#[test]
fn mirror_steps_match_reference_with_teacher_forcing() {
    let (fx, sd) = load();
    for name in mirror_fixtures(&fx) {
        let c = case(&fx, &sd, &name);
        let one = &fx.fixture(&name)["one_step_suggested_atol"];
        let (atol_rec, atol_edit, atol_emb) = (
            one["rec_latents"].as_f64().unwrap(),
            one["edit_latents"].as_f64().unwrap(),
            one["emb"].as_f64().unwrap(),
        );
        let n = c.trajectory.steps;
        let extra = c.settings.extra_steps(n);
        for i in 0..n {
            let state = MirrorState {
                rec_latent: c.t["rec_latents"].i(i).unwrap(),
                edit_latent: c.t["edit_latents"].i(i).unwrap(),
                embedding: if i == 0 {
                    c.emb_source.clone()
                } else {
                    c.t["emb_opt"].i(i - 1).unwrap()
                },
                extra_done: extra.iter().filter(|&&k| k < i).count(),
            };
            let cancel = CancelToken::new();
            let (next, out) = mirror::step(
                &StageContext::new(&sd, &cancel),
                &c.inputs(),
                &state,
                i,
                None,
            )
            .unwrap();
            let rec = out.redescription.unwrap();
            let label = format!("{name} step {i}");
            assert_eq!(
                rec.target_index as i64,
                c.t["target_index"]
                    .i(i)
                    .unwrap()
                    .to_scalar::<i64>()
                    .unwrap(),
                "{label}"
            );
            assert_tensor_close(
                &format!("{label} emb"),
                &c.t["emb_opt"].i(i).unwrap(),
                &next.embedding,
                atol_emb,
            );
            assert_tensor_close(
                &format!("{label} rec"),
                &c.t["rec_latents"].i(i + 1).unwrap(),
                &next.rec_latent,
                atol_rec,
            );
            assert_tensor_close(
                &format!("{label} edit"),
                &c.t["edit_latents"].i(i + 1).unwrap(),
                &next.edit_latent,
                atol_edit,
            );
            let inner = c.t["inner_losses"]
                .i(i)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let steps = c.t["inner_steps"].i(i).unwrap().to_scalar::<i64>().unwrap() as usize;
            assert_eq!(rec.losses.len(), steps, "{label}: inner iterations");
            for (k, l) in rec.losses.iter().enumerate() {
                assert!(
                    (l - inner[k]).abs() <= 1e-5 * inner[k].abs().max(1e-3),
                    "{label}: inner loss {k}: {l} vs {}",
                    inner[k]
                );
            }
        }
    }
}

/// The whole loop from z_N, compared with the manifest's atol on every output tensor.
#[test]
fn mirror_end_to_end_matches_reference() {
    let (fx, sd) = load();
    for name in mirror_fixtures(&fx) {
        let c = case(&fx, &sd, &name);
        let n = c.trajectory.steps;
        let mut state = MirrorState::start(&c.trajectory, &c.emb_source);
        let (mut rec_l, mut edit_l, mut embs) = (
            vec![state.rec_latent.clone()],
            vec![state.edit_latent.clone()],
            vec![],
        );
        let mut records = Vec::new();
        let cancel = CancelToken::new();
        let ctx = StageContext::new(&sd, &cancel);
        for i in 0..n {
            let (next, out) = mirror::step(&ctx, &c.inputs(), &state, i, None).unwrap();
            rec_l.push(next.rec_latent.clone());
            edit_l.push(next.edit_latent.clone());
            embs.push(next.embedding.clone());
            records.push(out);
            state = next;
        }
        fx.assert_close(&name, "rec_latents", &Tensor::stack(&rec_l, 0).unwrap());
        fx.assert_close(&name, "edit_latents", &Tensor::stack(&edit_l, 0).unwrap());
        fx.assert_close(&name, "emb_opt", &Tensor::stack(&embs, 0).unwrap());
        let guidance = |r: &MethodStep| r.guidance.clone().unwrap();
        let redescription = |r: &MethodStep| r.redescription.clone().unwrap();
        let series = |f: &dyn Fn(&MethodStep) -> Option<f64>| -> Tensor {
            let v: Vec<f32> = records
                .iter()
                .map(|r| f(r).map(|x| x as f32).unwrap_or(f32::NAN))
                .collect();
            Tensor::new(v, &common::test_device()).unwrap()
        };
        fx.assert_close(&name, "loss_probs", &series(&|r| Some(guidance(r).loss)));
        fx.assert_close(
            &name,
            "loss_total",
            &series(&|r| Some(guidance(r).total_loss)),
        );
        fx.assert_close(&name, "cycle_loss", &series(&|r| guidance(r).extra_loss));
        fx.assert_close(
            &name,
            "xa_grad_norm",
            &series(&|r| Some(guidance(r).gradient_norm)),
        );
        fx.assert_close(
            &name,
            "emb_change_norm",
            &series(&|r| Some(redescription(r).embedding_change)),
        );
        if c.settings.preset == MirrorPreset::Authors {
            fx.assert_close(&name, "loss_keys", &series(&|r| guidance(r).key_loss));
            fx.assert_close(&name, "loss_values", &series(&|r| guidance(r).value_loss));
        }
        let inner_w = fx.tensor(&name, "inner_losses").dim(D::Minus1).unwrap();
        let inner: Vec<f32> = records
            .iter()
            .flat_map(|r| {
                (0..inner_w).map(|k| {
                    redescription(r)
                        .losses
                        .get(k)
                        .map(|&x| x as f32)
                        .unwrap_or(f32::NAN)
                })
            })
            .collect();
        fx.assert_close(
            &name,
            "inner_losses",
            &Tensor::from_vec(inner, (n, inner_w), &common::test_device()).unwrap(),
        );
        let steps: Vec<i64> = records
            .iter()
            .map(|r| redescription(r).losses.len() as i64)
            .collect();
        fx.assert_close(
            &name,
            "inner_steps",
            &Tensor::new(steps, &common::test_device()).unwrap(),
        );
        let targets: Vec<i64> = records
            .iter()
            .map(|r| redescription(r).target_index as i64)
            .collect();
        fx.assert_close(
            &name,
            "target_index",
            &Tensor::new(targets, &common::test_device()).unwrap(),
        );
        let ts: Vec<i64> = records.iter().map(|r| r.timestep as i64).collect();
        fx.assert_close(
            &name,
            "timesteps",
            &Tensor::new(ts, &common::test_device()).unwrap(),
        );
        fx.assert_close(
            &name,
            "rec_decoded",
            &sd.vae.latent_to_image(&state.rec_latent).unwrap(),
        );
        fx.assert_close(
            &name,
            "edit_decoded",
            &sd.vae.latent_to_image(&state.edit_latent).unwrap(),
        );
        for (k, r) in records.iter().enumerate() {
            check_scalar(
                &format!("{name} loss_probs {k}"),
                scalar_series(&c.t["loss_probs"], k),
                Some(guidance(r).loss),
                fx.atol(&name, "loss_probs"),
            );
        }
    }
}
