//! Model loading: diffusers folders, single-file checkpoints, HF cache, inspect, and the typed
//! errors for broken inputs (each names the offending file).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use mirror_engine::EngineError;
use mirror_engine::loader::{
    CheckpointConfigs, DiffusersFolder, ModelSource, SingleFileCheckpoint, WeightFiles,
    find_cached_models_in, inspect, ldm_names, open_model_source, weight_error, write_single_file,
};

/// A fresh, unique temp folder (removed when dropped).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "mirror-loader-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture_copy(tag: &str) -> (TempDir, PathBuf) {
    let fx = common::Fixtures::load();
    let tmp = TempDir::new(tag);
    let model = tmp.0.join("model");
    common::copy_tree(&fx.model_dir(), &model);
    (tmp, model)
}

/// Channels of the VAE's mid block (its attention's width): the last `block_out_channels`.
fn vae_mid_channels(fx: &common::Fixtures) -> usize {
    let cfg = fx.model_config("vae");
    cfg["block_out_channels"]
        .as_array()
        .and_then(|v| v.last())
        .and_then(|v| v.as_u64())
        .expect("vae block_out_channels") as usize
}

fn diffusers(path: &Path) -> DiffusersFolder {
    match open_model_source(path).unwrap() {
        ModelSource::Diffusers(folder) => folder,
        other => panic!("expected a diffusers folder, got {other:?}"),
    }
}

fn load_all(file: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(file, &common::test_device()).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn assert_names_file(err: &EngineError, file: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&file.display().to_string()),
        "error does not name {}: {msg}",
        file.display()
    );
}

#[test]
fn opens_fixture_diffusers_folder() {
    let fx = common::Fixtures::load();
    let folder = diffusers(&fx.model_dir());
    for comp in [&folder.unet, &folder.vae, &folder.text_encoder] {
        assert_eq!(comp.weights.len(), 1);
        assert!(comp.config.ends_with("config.json"));
        assert_eq!(comp.dtype, DType::F32);
    }
    assert!(folder.unet.weights[0].ends_with("unet/diffusion_pytorch_model.safetensors"));
    assert!(folder.text_encoder.weights[0].ends_with("text_encoder/model.safetensors"));
    assert!(folder.tokenizer_dir.join("vocab.json").is_file());
    assert!(folder.scheduler_config.is_file());

    // Straight VarBuilder: every stored tensor reads back with its shape.
    let weights = folder.unet.open_weights().unwrap();
    let vb = weights.var_builder(DType::F32, &common::test_device());
    for (name, shape, _) in weights.shapes_and_dtypes() {
        let t = vb.get(shape.clone(), &name).unwrap();
        assert_eq!(t.dims(), shape.as_slice());
    }
    assert_eq!(
        weights.parameter_count(),
        weights
            .shapes_and_dtypes()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum::<usize>()
    );
}

#[test]
fn single_file_checkpoint_round_trip_is_bit_identical() {
    let fx = common::Fixtures::load();
    let folder = diffusers(&fx.model_dir());
    let tmp = TempDir::new("single");
    let file = tmp.0.join("tiny.safetensors");
    write_single_file(&folder, &file).unwrap();

    // The written file uses the original layout.
    let stored = WeightFiles::open(std::slice::from_ref(&file)).unwrap();
    let names = stored.tensor_names();
    for prefix in [
        "model.diffusion_model.",
        "first_stage_model.",
        "cond_stage_model.transformer.text_model.",
    ] {
        assert!(names.iter().any(|n| n.starts_with(prefix)), "no {prefix}*");
    }
    assert!(
        names
            .iter()
            .all(|n| !n.contains("down_blocks") && !n.contains("resnets")),
        "diffusers names left"
    );
    let q = stored
        .shapes_and_dtypes()
        .into_iter()
        .find(|(n, _, _)| n == "first_stage_model.encoder.mid.attn_1.q.weight")
        .unwrap();
    assert_eq!(q.1.len(), 4, "VAE attention stored as 1x1 conv");
    assert_eq!(
        stored.parameter_count(),
        [&folder.unet, &folder.vae, &folder.text_encoder]
            .iter()
            .map(|c| c.open_weights().unwrap().parameter_count())
            .sum::<usize>()
    );

    let ckpt = SingleFileCheckpoint::open(
        &file,
        CheckpointConfigs::from_diffusers_folder(&fx.model_dir()),
    )
    .unwrap();
    let dev = common::test_device();
    let mut checked = 0;
    for (comp, vb) in [
        (&folder.unet, ckpt.unet_vb(DType::F32, &dev)),
        (&folder.vae, ckpt.vae_vb(DType::F32, &dev)),
        (&folder.text_encoder, ckpt.text_encoder_vb(DType::F32, &dev)),
    ] {
        for (name, original) in load_all(&comp.weights[0]) {
            assert!(vb.contains_tensor(&name), "{name} does not resolve");
            let got = vb
                .get(original.dims(), &name)
                .map_err(|e| weight_error(ckpt.path(), e))
                .unwrap();
            assert_eq!(bits(&got), bits(&original), "{name} differs");
            checked += 1;
        }
    }
    assert_eq!(checked, stored.tensor_names().len());

    // Old diffusers VAE attention names and text-encoder names without `text_model.` resolve too.
    let vae = ckpt.vae_vb(DType::F32, &dev);
    let c = vae_mid_channels(&fx);
    let a = vae
        .get((c, c), "encoder.mid_block.attentions.0.query.weight")
        .unwrap();
    let b = vae
        .get((c, c), "encoder.mid_block.attentions.0.to_q.weight")
        .unwrap();
    assert_eq!(bits(&a), bits(&b));
    let clip = ckpt.text_encoder_vb(DType::F32, &dev);
    assert!(clip.contains_tensor("final_layer_norm.weight"));
    assert!(
        clip.pp("text_model")
            .contains_tensor("final_layer_norm.weight")
    );
}

#[test]
fn sd15_original_names_from_bundled_configs() {
    let configs = CheckpointConfigs::bundled_sd_v1();
    for p in [
        &configs.unet_config,
        &configs.vae_config,
        &configs.text_encoder_config,
        &configs.scheduler_config,
    ] {
        assert!(p.is_file(), "{}", p.display());
    }
    assert!(configs.tokenizer_dir.join("merges.txt").is_file());
    let maps =
        mirror_engine::loader::LdmNameMaps::from_configs(&configs.unet_config, &configs.vae_config)
            .unwrap();
    let unet = |n: &str| maps.unet.resolve(n).candidates[0].clone();
    let u = "model.diffusion_model.";
    for (diffusers, original) in [
        ("conv_in.weight", "input_blocks.0.0.weight"),
        ("time_embedding.linear_2.bias", "time_embed.2.bias"),
        (
            "down_blocks.0.resnets.1.norm1.weight",
            "input_blocks.2.0.in_layers.0.weight",
        ),
        (
            "down_blocks.0.downsamplers.0.conv.weight",
            "input_blocks.3.0.op.weight",
        ),
        (
            "down_blocks.1.attentions.0.proj_in.weight",
            "input_blocks.4.1.proj_in.weight",
        ),
        (
            "down_blocks.1.resnets.0.conv_shortcut.weight",
            "input_blocks.4.0.skip_connection.weight",
        ),
        (
            "down_blocks.2.downsamplers.0.conv.bias",
            "input_blocks.9.0.op.bias",
        ),
        (
            "down_blocks.3.resnets.1.time_emb_proj.weight",
            "input_blocks.11.0.emb_layers.1.weight",
        ),
        (
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        ),
        (
            "mid_block.resnets.1.conv2.weight",
            "middle_block.2.out_layers.3.weight",
        ),
        (
            "up_blocks.0.resnets.2.conv1.weight",
            "output_blocks.2.0.in_layers.2.weight",
        ),
        (
            "up_blocks.0.upsamplers.0.conv.weight",
            "output_blocks.2.1.conv.weight",
        ),
        (
            "up_blocks.1.attentions.2.norm.weight",
            "output_blocks.5.1.norm.weight",
        ),
        (
            "up_blocks.1.upsamplers.0.conv.weight",
            "output_blocks.5.2.conv.weight",
        ),
        (
            "up_blocks.3.attentions.2.proj_out.weight",
            "output_blocks.11.1.proj_out.weight",
        ),
        ("conv_norm_out.weight", "out.0.weight"),
        ("conv_out.bias", "out.2.bias"),
    ] {
        assert_eq!(unet(diffusers), format!("{u}{original}"), "{diffusers}");
    }
    let vae = |n: &str| maps.vae.resolve(n).candidates[0].clone();
    for (diffusers, original) in [
        (
            "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            "encoder.down.1.block.0.nin_shortcut.weight",
        ),
        (
            "encoder.down_blocks.2.downsamplers.0.conv.weight",
            "encoder.down.2.downsample.conv.weight",
        ),
        ("encoder.conv_norm_out.bias", "encoder.norm_out.bias"),
        (
            "decoder.up_blocks.0.resnets.2.norm2.weight",
            "decoder.up.3.block.2.norm2.weight",
        ),
        (
            "decoder.up_blocks.2.upsamplers.0.conv.weight",
            "decoder.up.1.upsample.conv.weight",
        ),
        (
            "decoder.mid_block.attentions.0.to_out.0.weight",
            "decoder.mid.attn_1.proj_out.weight",
        ),
        (
            "decoder.mid_block.resnets.0.conv1.weight",
            "decoder.mid.block_1.conv1.weight",
        ),
        ("post_quant_conv.weight", "post_quant_conv.weight"),
    ] {
        assert_eq!(
            vae(diffusers),
            format!("first_stage_model.{original}"),
            "{diffusers}"
        );
    }
    assert!(
        maps.vae
            .resolve("decoder.mid_block.attentions.0.to_q.weight")
            .unit_reshape
    );
    assert_eq!(
        maps.text_encoder
            .resolve("text_model.encoder.layers.3.mlp.fc1.weight")
            .candidates,
        [
            "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight",
            "cond_stage_model.transformer.encoder.layers.3.mlp.fc1.weight"
        ]
    );
}

#[test]
fn text_encoder_without_text_model_prefix() {
    let fx = common::Fixtures::load();
    let folder = diffusers(&fx.model_dir());
    let tmp = TempDir::new("clipprefix");
    let file = tmp.0.join("model.safetensors");
    let original = load_all(&folder.text_encoder.weights[0]);
    let stripped: HashMap<String, Tensor> = original
        .iter()
        .map(|(k, v)| (k.trim_start_matches("text_model.").to_string(), v.clone()))
        .collect();
    candle_core::safetensors::save(&stripped, &file).unwrap();
    let weights = WeightFiles::open(&[file]).unwrap();
    let vb = weights.var_builder_mapped(
        std::sync::Arc::new(ldm_names::diffusers_text_encoder_map()),
        DType::F32,
        &common::test_device(),
    );
    for (name, t) in &original {
        assert_eq!(bits(&vb.get(t.dims(), name).unwrap()), bits(t), "{name}");
    }
}

#[test]
fn fp16_variant_and_shards_are_found() {
    let (_tmp, model) = fixture_copy("variants");
    // VAE: only an fp16 variant, read back as f32.
    let vae_file = common::weight_file(&model.join("vae"));
    let vae = load_all(&vae_file);
    let half: HashMap<String, Tensor> = vae
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap()))
        .collect();
    std::fs::remove_file(&vae_file).unwrap();
    candle_core::safetensors::save(
        &half,
        model.join("vae/diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    // UNet: two shards and an index.
    let unet_file = common::weight_file(&model.join("unet"));
    let unet = load_all(&unet_file);
    std::fs::remove_file(&unet_file).unwrap();
    let (mut a, mut b, mut index) = (HashMap::new(), HashMap::new(), serde_json::Map::new());
    for (i, (k, v)) in unet.iter().enumerate() {
        let shard = if i % 2 == 0 { &mut a } else { &mut b };
        shard.insert(k.clone(), v.clone());
        let file = if i % 2 == 0 {
            "diffusion_pytorch_model-00001-of-00002.safetensors"
        } else {
            "diffusion_pytorch_model-00002-of-00002.safetensors"
        };
        index.insert(k.clone(), serde_json::Value::String(file.into()));
    }
    candle_core::safetensors::save(
        &a,
        model.join("unet/diffusion_pytorch_model-00001-of-00002.safetensors"),
    )
    .unwrap();
    candle_core::safetensors::save(
        &b,
        model.join("unet/diffusion_pytorch_model-00002-of-00002.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": index });
    std::fs::write(
        model.join("unet/diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let folder = diffusers(&model);
    assert_eq!(folder.vae.dtype, DType::F16);
    assert!(folder.vae.weights[0].ends_with("diffusion_pytorch_model.fp16.safetensors"));
    let vb = folder
        .vae
        .open_weights()
        .unwrap()
        .var_builder(DType::F32, &common::test_device());
    for (name, t) in &vae {
        let got = vb.get(t.dims(), name).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let expected = t
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(bits(&got), bits(&expected), "{name}");
    }
    assert_eq!(folder.unet.weights.len(), 2);
    let vb = folder
        .unet
        .open_weights()
        .unwrap()
        .var_builder(DType::F32, &common::test_device());
    for (name, t) in &unet {
        assert_eq!(bits(&vb.get(t.dims(), name).unwrap()), bits(t), "{name}");
    }
}

#[test]
fn missing_component_folder_is_reported() {
    let (_tmp, model) = fixture_copy("nocomp");
    std::fs::remove_dir_all(model.join("vae")).unwrap();
    let err = open_model_source(&model).unwrap_err();
    assert!(
        matches!(&err, EngineError::MissingComponent { component, .. } if component == "vae"),
        "{err}"
    );
    assert_names_file(&err, &model.join("vae"));

    // A component folder without weights names what was looked for.
    let (_tmp2, model) = fixture_copy("noweights");
    std::fs::remove_file(common::weight_file(&model.join("text_encoder"))).unwrap();
    let err = open_model_source(&model).unwrap_err();
    assert!(
        matches!(&err, EngineError::MissingComponent { component, .. } if component == "text_encoder"),
        "{err}"
    );
    assert!(
        err.to_string().contains("model[.fp16].safetensors"),
        "{err}"
    );
}

#[test]
fn pickle_only_component_is_rejected() {
    let (_tmp, model) = fixture_copy("pickle");
    std::fs::remove_file(common::weight_file(&model.join("unet"))).unwrap();
    std::fs::write(
        model.join("unet/diffusion_pytorch_model.bin"),
        b"PK\x03\x04 not really a pickle",
    )
    .unwrap();
    let err = open_model_source(&model).unwrap_err();
    assert!(
        matches!(&err, EngineError::MissingComponent { component, .. } if component == "unet"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("pickle")
            && msg.contains("safetensors")
            && msg.contains("diffusion_pytorch_model.bin"),
        "{msg}"
    );
    assert_names_file(&err, &model.join("unet"));
}

#[test]
fn missing_tensor_is_typed() {
    let fx = common::Fixtures::load();
    let folder = diffusers(&fx.model_dir());
    let tmp = TempDir::new("missing");
    let file = tmp.0.join("unet.safetensors");
    let mut tensors = load_all(&folder.unet.weights[0]);
    let removed = "mid_block.resnets.0.conv1.weight";
    let shape = tensors.remove(removed).unwrap().dims().to_vec();
    candle_core::safetensors::save(&tensors, &file).unwrap();

    let weights = WeightFiles::open(std::slice::from_ref(&file)).unwrap();
    let vb = weights.var_builder(DType::F32, &common::test_device());
    assert!(!vb.contains_tensor(removed));
    // As a model would ask for it: through prefixes.
    let e = vb
        .pp("mid_block")
        .pp("resnets")
        .pp(0)
        .pp("conv1")
        .get(shape, "weight")
        .unwrap_err();
    let err = weight_error(&file, e);
    assert!(
        matches!(&err, EngineError::MissingTensor { name, .. } if name == removed),
        "{err}"
    );
    assert_names_file(&err, &file);

    // Errors wrapped by model code (context, candle's own VarBuilder) are still recognised.
    let e = vb.get(3, "nope").unwrap_err().context("building the UNet");
    assert!(matches!(
        weight_error(&file, e),
        EngineError::MissingTensor { .. }
    ));
    let plain = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[&file], DType::F32, &common::test_device())
    }
    .unwrap();
    let err = weight_error(
        &file,
        plain
            .get(shape_of(&tensors, "conv_in.weight"), removed)
            .unwrap_err(),
    );
    assert!(
        matches!(&err, EngineError::MissingTensor { file: f, .. } if f == &file),
        "{err}"
    );

    // Renamed lookups name both the requested and the stored name.
    let ckpt_map = std::sync::Arc::new(ldm_names::text_encoder_map());
    let e = weights
        .var_builder_mapped(ckpt_map, DType::F32, &common::test_device())
        .get(3, "text_model.x")
        .unwrap_err();
    let msg = weight_error(&file, e).to_string();
    assert!(
        msg.contains("text_model.x") && msg.contains("cond_stage_model.transformer.text_model.x"),
        "{msg}"
    );
}

fn shape_of(tensors: &HashMap<String, Tensor>, name: &str) -> Vec<usize> {
    tensors[name].dims().to_vec()
}

#[test]
fn mis_shaped_tensor_is_typed() {
    let fx = common::Fixtures::load();
    let folder = diffusers(&fx.model_dir());
    let tmp = TempDir::new("shape");
    let file = tmp.0.join("vae.safetensors");
    let mut tensors = load_all(&folder.vae.weights[0]);
    let name = "decoder.conv_in.weight";
    let good = tensors[name].dims().to_vec();
    let bad = tensors[name].narrow(0, 0, good[0] - 1).unwrap();
    let found = bad.dims().to_vec();
    tensors.insert(name.to_string(), bad);
    candle_core::safetensors::save(&tensors, &file).unwrap();

    let vb = WeightFiles::open(std::slice::from_ref(&file))
        .unwrap()
        .var_builder(DType::F32, &common::test_device());
    let err = weight_error(&file, vb.get(good.clone(), name).unwrap_err());
    match &err {
        EngineError::ShapeMismatch {
            name: n,
            expected,
            found: f,
            ..
        } => {
            assert_eq!(n, name);
            assert_eq!(expected, &good);
            assert_eq!(f, &found);
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
    assert_names_file(&err, &file);
    // A straight VarBuilder does not reshape [C, C] into [C, C, 1, 1].
    let c = vae_mid_channels(&fx);
    let e = vb
        .get((c, c, 1, 1), "decoder.mid_block.attentions.0.to_q.weight")
        .unwrap_err();
    assert!(matches!(
        weight_error(&file, e),
        EngineError::ShapeMismatch { .. }
    ));
}

#[test]
fn corrupt_safetensors_header_is_typed() {
    let (_tmp, model) = fixture_copy("corrupt");
    let unet = common::weight_file(&model.join("unet"));
    let bytes = std::fs::read(&unet).unwrap();

    // Truncated: the header promises more data than the file holds.
    std::fs::write(&unet, &bytes[..bytes.len() / 2]).unwrap();
    let err = WeightFiles::open(std::slice::from_ref(&unet))
        .err()
        .unwrap();
    assert!(
        matches!(err, EngineError::CorruptSafetensors { .. }),
        "{err}"
    );
    assert_names_file(&err, &unet);
    let err = open_model_source(&model).unwrap_err();
    assert!(
        matches!(err, EngineError::CorruptSafetensors { .. }),
        "{err}"
    );
    assert_names_file(&err, &unet);

    // Garbage bytes, a bad JSON header, and a file shorter than the length prefix.
    let mut bad_json = 16u64.to_le_bytes().to_vec();
    bad_json.extend_from_slice(b"{\"a\": [1, 2, 3 ");
    for content in [
        b"this is not a safetensors file at all".to_vec(),
        bad_json,
        vec![1, 2, 3],
    ] {
        std::fs::write(&unet, &content).unwrap();
        let err = WeightFiles::open(std::slice::from_ref(&unet))
            .err()
            .unwrap();
        assert!(
            matches!(err, EngineError::CorruptSafetensors { .. }),
            "{err}"
        );
        assert_names_file(&err, &unet);
    }
    let err = inspect(&model).unwrap_err();
    assert!(
        matches!(err, EngineError::CorruptSafetensors { .. }),
        "{err}"
    );
}

#[test]
fn non_models_are_rejected() {
    let tmp = TempDir::new("notmodel");
    let empty = tmp.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let text = tmp.0.join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let ckpt = tmp.0.join("model.ckpt");
    std::fs::write(&ckpt, "pickle").unwrap();
    for path in [&empty, &text, &ckpt] {
        let err = open_model_source(path).unwrap_err();
        assert!(matches!(err, EngineError::NotAModel { .. }), "{err}");
        assert_names_file(&err, path);
    }
    let err = open_model_source(&tmp.0.join("does-not-exist")).unwrap_err();
    assert!(matches!(err, EngineError::Io { .. }), "{err}");

    // A diffusers component file is a valid safetensors but not an original-layout checkpoint.
    let fx = common::Fixtures::load();
    let unet = diffusers(&fx.model_dir()).unet.weights[0].clone();
    let err = SingleFileCheckpoint::open(
        &unet,
        CheckpointConfigs::from_diffusers_folder(&fx.model_dir()),
    )
    .err()
    .unwrap();
    assert!(matches!(err, EngineError::NotAModel { .. }), "{err}");
    assert_names_file(&err, &unet);
    // Missing one of the three parts.
    let partial = tmp.0.join("partial.safetensors");
    let t = Tensor::zeros(2, DType::F32, &common::test_device()).unwrap();
    candle_core::safetensors::save(
        &HashMap::from([("model.diffusion_model.out.2.bias".to_string(), t)]),
        &partial,
    )
    .unwrap();
    let err = SingleFileCheckpoint::open(&partial, CheckpointConfigs::bundled_sd_v1())
        .err()
        .unwrap();
    assert!(
        matches!(err, EngineError::NotAModel { .. })
            && err.to_string().contains("first_stage_model"),
        "{err}"
    );
}

#[test]
fn hf_cache_scan() {
    let tmp = TempDir::new("hub");
    let hub = &tmp.0;
    let mk = |p: &str, file: &str| {
        let dir = hub.join(p);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), "{}").unwrap();
    };
    mk(
        "models--runwayml--stable-diffusion-v1-5/snapshots/abc123",
        "model_index.json",
    );
    mk(
        "models--someone--unet-only/snapshots/def456/unet",
        "config.json",
    );
    mk(
        "models--openai--clip-vit-large-patch14/snapshots/0f0f",
        "config.json",
    );
    mk("datasets--x--y/snapshots/1", "model_index.json");
    std::fs::create_dir_all(hub.join("models--empty--repo")).unwrap();
    let found = find_cached_models_in(hub);
    let ids: Vec<(&str, &str)> = found
        .iter()
        .map(|m| (m.repo_id.as_str(), m.revision.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("runwayml/stable-diffusion-v1-5", "abc123"),
            ("someone/unet-only", "def456")
        ]
    );
    assert_eq!(
        found[0].snapshot,
        hub.join("models--runwayml--stable-diffusion-v1-5/snapshots/abc123")
    );
    assert!(find_cached_models_in(&hub.join("nowhere")).is_empty());
}

#[test]
fn inspect_reports_components() {
    let fx = common::Fixtures::load();
    let report = inspect(&fx.model_dir()).unwrap();
    let text = report.to_string();
    assert_eq!(report.components.len(), 3);
    for (c, class) in
        report
            .components
            .iter()
            .zip(["UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel"])
    {
        assert_eq!(c.config.class.as_deref(), Some(class));
        assert!(c.parameters > 0 && c.tensors > 0);
        assert_eq!(c.dtypes[0].0, DType::F32);
        let expected: usize = WeightFiles::open(&c.weight_files)
            .unwrap()
            .parameter_count();
        assert_eq!(c.parameters, expected);
    }
    for needle in [
        "diffusers folder",
        "unet",
        "block_out_channels",
        "CLIPTextModel",
        "DDIMScheduler",
        "total",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
    // A wrongly typed config field is a typed Config error naming the file and field.
    let (_tmp, model) = fixture_copy("badcfg");
    let cfg = model.join("vae/config.json");
    common::edit_json(&cfg, |v| v["layers_per_block"] = "two".into());
    let err = inspect(&model).unwrap_err();
    assert!(
        matches!(&err, EngineError::Config { field, .. } if field == "layers_per_block"),
        "{err}"
    );
    assert_names_file(&err, &cfg);

    // Single-file checkpoints are inspected too.
    let folder = diffusers(&fx.model_dir());
    let tmp = TempDir::new("inspect1");
    let file = tmp.0.join("tiny.safetensors");
    write_single_file(&folder, &file).unwrap();
    let report = inspect(&file).unwrap();
    assert!(report.to_string().contains("single-file"));
    let total: usize = report.components.iter().map(|c| c.parameters).sum();
    assert_eq!(total, WeightFiles::open(&[file]).unwrap().parameter_count());
}
