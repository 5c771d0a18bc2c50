//! LoRA files: key formats (kohya with alpha, PEFT, conv LoRA), deltas, refusals naming the
//! file and key, and a strength-0 merge that leaves the weight bit for bit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::{Fixtures, max_diff};
use mirror_engine::EngineError;
use mirror_engine::loader::lora::LoraDelta;
use mirror_engine::loader::{LoraSpec, TargetWeights, WeightFiles, merge_deltas, read_lora};

fn targets(component: &str) -> (TargetWeights, Vec<(String, Vec<usize>)>) {
    let fx = Fixtures::load();
    let files = WeightFiles::open(&[fx.weights_path(component)]).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = files
        .shapes_and_dtypes()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    (TargetWeights::new(shapes.clone()), shapes)
}

fn first<'a>(shapes: &'a [(String, Vec<usize>)], suffix: &str) -> &'a (String, Vec<usize>) {
    shapes
        .iter()
        .find(|(n, _)| n.ends_with(suffix))
        .unwrap_or_else(|| panic!("no weight named *{suffix}"))
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|k| ((((k as u64 * 2654435761 + seed * 97) % 1000) as f32) / 1000.0 - 0.5) * 0.2)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn write(name: &str, tensors: HashMap<String, Tensor>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

/// A rank-2 PEFT LoRA on the UNet's first `attn1.to_q`, its down weight `extra_inputs` columns
/// wider than the layer (0: fits). Returns the module path and the tensors.
fn peft_q_lora(extra_inputs: usize) -> (String, HashMap<String, Tensor>) {
    let (_, unet) = targets("unet");
    let (q_name, q_shape) = first(&unet, "attn1.to_q.weight");
    let module = q_name.trim_end_matches(".weight").to_string();
    let mut t = HashMap::new();
    t.insert(
        format!("unet.{module}.lora_A.weight"),
        randn(&[2, q_shape[1] + extra_inputs], 1),
    );
    t.insert(
        format!("unet.{module}.lora_B.weight"),
        randn(&[q_shape[0], 2], 2),
    );
    (module, t)
}

fn deltas(path: PathBuf, strength: f64) -> mirror_engine::Result<Vec<LoraDelta>> {
    let (unet, _) = targets("unet");
    let (text, _) = targets("text_encoder");
    let file = read_lora(&LoraSpec { path, strength }, &Device::Cpu)?;
    file.deltas(&unet, &text)
}

#[test]
fn kohya_linear_with_alpha_and_text_encoder() {
    let (_, unet) = targets("unet");
    let (_, text) = targets("text_encoder");
    let (q_name, q_shape) = first(&unet, "attn1.to_q.weight");
    let (te_name, te_shape) = first(&text, "self_attn.q_proj.weight");
    let r = 2;
    let kohya = |n: &str| {
        format!(
            "lora_unet_{}",
            n.trim_end_matches(".weight").replace('.', "_")
        )
    };
    let te_key = format!(
        "lora_te_{}",
        te_name.trim_end_matches(".weight").replace('.', "_")
    );
    let (down, up) = (randn(&[r, q_shape[1]], 1), randn(&[q_shape[0], r], 2));
    let mut t = HashMap::new();
    t.insert(format!("{}.lora_down.weight", kohya(q_name)), down.clone());
    t.insert(format!("{}.lora_up.weight", kohya(q_name)), up.clone());
    t.insert(
        format!("{}.alpha", kohya(q_name)),
        Tensor::new(1f32, &Device::Cpu).unwrap(),
    );
    t.insert(
        format!("{te_key}.lora_down.weight"),
        randn(&[r, te_shape[1]], 3),
    );
    t.insert(
        format!("{te_key}.lora_up.weight"),
        randn(&[te_shape[0], r], 4),
    );
    let d = deltas(write("kohya.safetensors", t), 0.8).unwrap();
    assert_eq!(d.len(), 2);
    let q = d.iter().find(|d| &d.name == q_name).unwrap();
    let expected = (up.matmul(&down).unwrap() * (0.8 * 1.0 / r as f64)).unwrap();
    assert!(max_diff(&q.delta, &expected) < 1e-7);
    assert!(d.iter().any(|d| &d.name == te_name));
}

#[test]
fn peft_conv_lora() {
    let (_, unet) = targets("unet");
    let (name, shape) = unet
        .iter()
        .find(|(_, s)| s.len() == 4 && s[2] == 3)
        .unwrap();
    let module = name.trim_end_matches(".weight");
    let r = 3;
    let mut t = HashMap::new();
    t.insert(
        format!("unet.{module}.lora_A.weight"),
        randn(&[r, shape[1], 3, 3], 5),
    );
    t.insert(
        format!("unet.{module}.lora_B.weight"),
        randn(&[shape[0], r, 1, 1], 6),
    );
    let d = deltas(write("peft.safetensors", t), 1.0).unwrap();
    assert_eq!(d[0].delta.dims(), shape.as_slice());
}

#[test]
fn bad_key_and_bad_shape_are_refused_naming_file_and_key() {
    let mut t = HashMap::new();
    t.insert(
        "lora_unet_nowhere.lora_down.weight".into(),
        randn(&[2, 4], 1),
    );
    t.insert("lora_unet_nowhere.lora_up.weight".into(), randn(&[4, 2], 2));
    let err = deltas(write("badkey.safetensors", t), 1.0).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("badkey.safetensors") && msg.contains("lora_unet_nowhere"),
        "{msg}"
    );

    let (module, t) = peft_q_lora(1);
    let err = deltas(write("badshape.safetensors", t), 1.0).unwrap_err();
    assert!(matches!(err, EngineError::ShapeMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("badshape.safetensors") && msg.contains(&module),
        "{msg}"
    );
}

#[test]
fn strength_zero_leaves_the_weight_bit_for_bit() {
    let (_, t) = peft_q_lora(0);
    let d = deltas(write("zero.safetensors", t), 0.0).unwrap();
    // A delta has the shape of the weight it patches (`attn1.to_q`'s).
    let base = randn(d[0].delta.dims(), 9);
    let merged = merge_deltas(&base, &[&d[0].delta]).unwrap();
    let a: Vec<f32> = base.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = merged.flatten_all().unwrap().to_vec1().unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

/// A kohya file patching the first attn1.to_q of the UNet and the first q_proj of the text encoder.
fn small_lora(name: &str) -> PathBuf {
    let (_, unet) = targets("unet");
    let (_, text) = targets("text_encoder");
    let mut t = HashMap::new();
    for (i, (n, s)) in [
        first(&unet, "attn1.to_q.weight"),
        first(&unet, "attn2.to_v.weight"),
        first(&text, "self_attn.q_proj.weight"),
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = if i < 2 { "lora_unet" } else { "lora_te" };
        let key = format!(
            "{prefix}_{}",
            n.trim_start_matches("text_model.")
                .trim_end_matches(".weight")
                .replace('.', "_")
        );
        let key = if i < 2 {
            key
        } else {
            format!("lora_te_text_model_{}", &key[8..])
        };
        t.insert(
            format!("{key}.lora_down.weight"),
            randn(&[2, s[1]], 10 + i as u64),
        );
        t.insert(
            format!("{key}.lora_up.weight"),
            (randn(&[s[0], 2], 20 + i as u64) * 20.0).unwrap(),
        );
    }
    write(name, t)
}

#[test]
fn applied_to_the_model_changes_outputs_and_removal_restores_them_bit_for_bit() {
    let fx = Fixtures::load();
    let dev = common::test_device();
    let mut model = mirror_engine::model::StableDiffusion::load(&fx.model_dir(), &dev).unwrap();
    let prompt = fx.source_prompt();
    let unet_cfg = fx.model_config("unet");
    let in_ch = unet_cfg["in_channels"].as_u64().unwrap_or(4) as usize;
    let (h, w) = fx.latent_hw();
    let latent = randn(&[1, in_ch, h, w], 3).to_device(&dev).unwrap();
    let run = |m: &mirror_engine::model::StableDiffusion| {
        let emb = m.encode_prompt(&prompt).unwrap();
        let eps = m.unet.forward(&latent, 501.0, &emb).unwrap();
        (emb, eps)
    };
    let (emb0, eps0) = run(&model);
    let path = small_lora("apply.safetensors");
    let infos = model
        .set_loras(&[LoraSpec {
            path: path.clone(),
            strength: 1.0,
        }])
        .unwrap();
    assert_eq!(infos[0].matched_layers, 3);
    assert_eq!(infos[0].fingerprint.len(), 16);
    let (emb1, eps1) = run(&model);
    assert!(
        max_diff(&emb0, &emb1) > 1e-4,
        "the text encoder did not change"
    );
    assert!(max_diff(&eps0, &eps1) > 1e-4, "the UNet did not change");

    // Gradient through the merged weights: directional finite difference on the latent.
    let x = candle_core::Var::from_tensor(&latent).unwrap();
    let wts = randn(eps1.dims(), 7).to_device(&dev).unwrap();
    let loss = |z: &Tensor| {
        (model.unet.forward(z, 501.0, &emb1).unwrap() * &wts)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss(x.as_tensor()).backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap();
    let v = randn(latent.dims(), 11).to_device(&dev).unwrap();
    let analytic = (g * &v)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let eps = 1e-2;
    let plus = loss(&(&latent + (&v * eps).unwrap()).unwrap())
        .to_scalar::<f32>()
        .unwrap() as f64;
    let minus = loss(&(&latent - (&v * eps).unwrap()).unwrap())
        .to_scalar::<f32>()
        .unwrap() as f64;
    let fd = (plus - minus) / (2.0 * eps);
    eprintln!("gradient through LoRA-merged UNet: analytic {analytic:.6e}, FD {fd:.6e}");
    assert!(
        (analytic - fd).abs() <= 1e-2 * analytic.abs().max(1.0),
        "{analytic} vs {fd}"
    );

    model.set_loras(&[]).unwrap();
    let (emb2, eps2) = run(&model);
    assert_eq!(bits(&emb0), bits(&emb2));
    assert_eq!(bits(&eps0), bits(&eps2));
}

/// A file with `tensors` and a diffusers `lora_adapter_metadata` header entry.
fn write_with_metadata(
    name: &str,
    tensors: &HashMap<String, Tensor>,
    metadata: &serde_json::Value,
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let header = HashMap::from([("lora_adapter_metadata".to_string(), metadata.to_string())]);
    safetensors::serialize_to_file(tensors.iter(), Some(header), &path).unwrap();
    path
}

/// Rank-4 PEFT layers on the UNet's first attn1 to_q, to_k and to_v: (module paths, tensors).
fn peft_qkv() -> (Vec<String>, HashMap<String, Tensor>) {
    let (_, unet) = targets("unet");
    let mut modules = Vec::new();
    let mut t = HashMap::new();
    for (i, suffix) in [
        "attn1.to_q.weight",
        "attn1.to_k.weight",
        "attn1.to_v.weight",
    ]
    .into_iter()
    .enumerate()
    {
        let (name, shape) = first(&unet, suffix);
        let module = name.trim_end_matches(".weight").to_string();
        let seed = 30 + 2 * i as u64;
        t.insert(
            format!("unet.{module}.lora_A.weight"),
            randn(&[4, shape[1]], seed),
        );
        t.insert(
            format!("unet.{module}.lora_B.weight"),
            randn(&[shape[0], 4], seed + 1),
        );
        modules.push(module);
    }
    (modules, t)
}

#[test]
fn peft_adapter_metadata_gives_the_alphas_as_peft_reads_them() {
    let (modules, t) = peft_qkv();
    let [q, k, v] = [&modules[0], &modules[1], &modules[2]];
    // to_q by a dotted suffix of its path, to_k by its whole path (`^`), to_v by no pattern:
    // `^attn1.to_v` is anchored and not its whole path, so lora_alpha applies.
    let tail = |m: &str| {
        m.split('.')
            .skip(m.split('.').count() - 4)
            .collect::<Vec<_>>()
            .join(".")
    };
    let metadata = |rslora: bool| {
        serde_json::json!({
            "unet.r": 4,
            "unet.lora_alpha": 2.0,
            "unet.alpha_pattern": {
                tail(q): 8.0,
                format!("^{k}"): 1.0,
                "^attn1.to_v": 16.0,
            },
            "unet.use_rslora": rslora,
            "unet.use_dora": false,
        })
    };
    let strength = 0.5;
    for (rslora, divisor) in [(false, 4.0), (true, 2.0)] {
        let path = write_with_metadata("meta.safetensors", &t, &metadata(rslora));
        let d = deltas(path, strength).unwrap();
        assert_eq!(d.len(), 3);
        for (module, alpha) in [(q, 8.0), (k, 1.0), (v, 2.0)] {
            let delta = d
                .iter()
                .find(|d| d.name == format!("{module}.weight"))
                .unwrap();
            let up = &t[&format!("unet.{module}.lora_B.weight")];
            let down = &t[&format!("unet.{module}.lora_A.weight")];
            let expected = (up.matmul(down).unwrap() * (strength * alpha / divisor)).unwrap();
            let err = max_diff(&delta.delta, &expected);
            assert!(err < 1e-6, "{module} (rslora {rslora}): {err}");
        }
    }
}

#[test]
fn adapter_metadata_mirror_cannot_read_as_peft_does_is_refused() {
    let (modules, t) = peft_qkv();
    // The layer each refusal names: the first in key order the header makes unreadable (a
    // regex pattern is refused at the first layer it is tried on; only to_q is ambiguous).
    let first = modules.iter().min().unwrap();
    let to_q = &modules[0];
    let cases = [
        (
            "regex.safetensors",
            serde_json::json!({"unet.r": 4, "unet.lora_alpha": 4, "unet.alpha_pattern": {"attn1\\.to_.*": 2}}),
            "alpha_pattern",
            Some(first),
        ),
        (
            "ambiguous.safetensors",
            serde_json::json!({"unet.r": 4, "unet.lora_alpha": 4, "unet.alpha_pattern": {"to_q": 2, "attn1.to_q": 3}}),
            "both name it",
            Some(to_q),
        ),
        (
            "dora.safetensors",
            serde_json::json!({"unet.r": 4, "unet.lora_alpha": 4, "unet.use_dora": true}),
            "DoRA",
            None,
        ),
    ];
    for (name, metadata, why, module) in cases {
        let err = deltas(write_with_metadata(name, &t, &metadata), 1.0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains(why), "{msg}");
        if let Some(module) = module {
            assert!(msg.contains(&format!("unet.{module}.lora_A")), "{msg}");
        }
    }
}

/// A session never reuses an inversion made without the LoRAs now merged (nor one made with
/// other strengths), and finds the original again once they are removed.
#[test]
fn cached_inversions_are_kept_apart_by_the_loras() {
    use mirror_engine::pipeline::CancelToken;
    use mirror_engine::session::{Session, TranslateRequest};
    let fx = Fixtures::load();
    let dev = common::test_device();
    let model = mirror_engine::model::StableDiffusion::load(&fx.model_dir(), &dev).unwrap();
    let mut session = Session::new(model, None);
    let loaded = mirror_engine::imageio::load_image(
        &fx.test_image(),
        &mirror_engine::imageio::ImageLimits::default(),
    )
    .unwrap();
    let (h, w) = fx.image_hw();
    let image = mirror_engine::imageio::resize(
        &loaded.rgb,
        (w as u32, h as u32),
        mirror_engine::imageio::ResizePolicy::Stretch,
    );
    let mut req = TranslateRequest::new(image, &fx.source_prompt(), "a photo of a dog");
    req.steps = 2;
    req.compare_ddim = false;
    let run = |session: &mut Session| {
        let out = session.translate(&req, &CancelToken::new(), &mut |_| {});
        out.unwrap().reused_inversion
    };
    assert!(!run(&mut session), "the first run inverts");
    assert!(run(&mut session), "the second reuses it");
    let lora = small_lora("cache-keys.safetensors");
    let spec = |strength| LoraSpec {
        path: lora.clone(),
        strength,
    };
    let infos = session.set_loras(&[spec(1.0)]).unwrap();
    assert_eq!(session.model().loras, infos);
    assert!(
        !run(&mut session),
        "with a LoRA merged the inversion is made again"
    );
    assert!(run(&mut session), "and then reused");
    session.set_loras(&[]).unwrap();
    assert!(session.model().loras.is_empty());
    assert!(
        run(&mut session),
        "without LoRAs the first inversion is found again"
    );
    session.set_loras(&[spec(0.5)]).unwrap();
    assert!(!run(&mut session), "another strength is another model");
}

/// The same LoRA on the fixture model as a single-file checkpoint (written from the folder):
/// the same layers matched, text-encoder and UNet outputs bit for bit those of the folder with
/// it, and removing it gives the checkpoint's own outputs back.
#[test]
fn a_lora_on_a_single_file_checkpoint_matches_it_on_the_folder() {
    use mirror_engine::loader::{CheckpointConfigs, ModelSource, open_model_source};
    use mirror_engine::model::StableDiffusion;
    let fx = Fixtures::load();
    let dev = common::test_device();
    let ModelSource::Diffusers(folder) = open_model_source(&fx.model_dir()).unwrap() else {
        panic!("the fixture model is a diffusers folder");
    };
    let dir = std::env::temp_dir().join(format!("mirror-lora-single-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tiny.safetensors");
    mirror_engine::loader::write_single_file(&folder, &file).unwrap();
    let configs = CheckpointConfigs::from_diffusers_folder(&fx.model_dir());
    let mut single = StableDiffusion::load_with_configs(&file, &dev, configs).unwrap();
    let mut whole = StableDiffusion::load(&fx.model_dir(), &dev).unwrap();

    let prompt = fx.source_prompt();
    let in_ch = fx.model_config("unet")["in_channels"].as_u64().unwrap_or(4) as usize;
    let (h, w) = fx.latent_hw();
    let latent = randn(&[1, in_ch, h, w], 3).to_device(&dev).unwrap();
    let run = |m: &StableDiffusion| {
        let emb = m.encode_prompt(&prompt).unwrap();
        let eps = m.unet.forward(&latent, 501.0, &emb).unwrap();
        (bits(&emb), bits(&eps))
    };
    let plain = run(&single);
    let spec = [LoraSpec {
        path: small_lora("single.safetensors"),
        strength: 0.7,
    }];
    let on_single = single.set_loras(&spec).unwrap();
    let on_whole = whole.set_loras(&spec).unwrap();
    assert_eq!(on_single[0].matched_layers, 3);
    assert_eq!(on_single[0].matched_layers, on_whole[0].matched_layers);
    let merged = run(&single);
    assert_ne!(merged, plain, "the LoRA changed nothing");
    assert_eq!(merged, run(&whole), "the checkpoint and the folder differ");
    single.set_loras(&[]).unwrap();
    assert_eq!(run(&single), plain);
    let _ = std::fs::remove_dir_all(&dir);
}
