//! Fuzzing the model parsers: safetensors headers and offsets, single-file checkpoints, every
//! config JSON, and whole model folders with one broken file. No case may panic, hang or
//! allocate more than its input justifies, and every error names the file and the problem.
//!
//! Long run on a developer machine (any number of cases; add PROPTEST_RNG_SEED=<n> for
//! other cases than CI's):
//!     PROPTEST_CASES=100000 cargo test --release --test fuzz_models
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;
mod fuzz_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::DType;
use mirror_engine::EngineError;
use mirror_engine::clip::{ClipTextConfig, ClipTextTransformer};
use mirror_engine::loader::config::{JsonConfig, UnetLayout, VaeLayout};
use mirror_engine::loader::{
    CheckpointConfigs, SingleFileCheckpoint, WeightFiles, inspect, ldm_names, weight_error,
};
use mirror_engine::model::StableDiffusion;
use mirror_engine::scheduler::DdimScheduler;
use mirror_engine::unet::{UNet2DConditionModel, UNetConfig};
use mirror_engine::vae::{AutoencoderKL, VaeConfig};
use proptest::prelude::*;
use serde_json::{Value, json};

use fuzz_support::*;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Peak bytes per input byte a weight parse may allocate: the stored bytes, converted to f32
/// (up to 4× for u8/f8), plus one copy while converting.
const WEIGHT_BYTES_PER_BYTE: usize = 16;

fn model_dir() -> PathBuf {
    common::Fixtures::load().model_dir()
}

// ---------------------------------------------------------------------------------------------
// Safetensors files

const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F4", "F6_E2M3", "E8M0", "f32", "XYZ", "",
];

fn dtype_size_bits(dtype: &str) -> u64 {
    match dtype {
        "F64" | "I64" | "U64" => 64,
        "F32" | "I32" | "U32" => 32,
        "F16" | "BF16" | "I16" | "U16" => 16,
        "F4" => 4,
        "F6_E2M3" => 6,
        _ => 8,
    }
}

#[derive(Debug, Clone)]
enum Offsets {
    /// Back to back, sized from shape × dtype (a valid layout).
    Consistent,
    /// Arbitrary begin/end (overlapping, reversed, past the end).
    Given(u64, u64),
    /// Same start as the previous tensor (overlap).
    SameAsPrevious,
    /// Consistent size, shifted past the end of the data.
    PastEnd(u64),
}

#[derive(Debug, Clone)]
struct TensorSpec {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    offsets: Offsets,
}

#[derive(Debug, Clone)]
struct SafetensorsSpec {
    tensors: Vec<TensorSpec>,
    metadata: Option<Value>,
    /// Extra (or missing, when negative) data bytes after the consistent size.
    data_slack: i64,
    /// Replaces the 8-byte header length.
    header_len: Option<u64>,
    /// Spaces after the JSON (the format allows padding).
    padding: usize,
    edits: Vec<ByteEdit>,
}

fn dim() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 0u64..8,
        2 => Just(77u64),
        1 => Just(1u64 << 31),
        1 => Just(1u64 << 32),
        1 => Just(1u64 << 40),
        1 => Just(u64::MAX / 2),
        1 => Just(u64::MAX),
    ]
}

fn tensor_spec(names: &'static [&'static str]) -> impl Strategy<Value = TensorSpec> {
    let name = prop_oneof![
        3 => proptest::sample::select(names).prop_map(str::to_string),
        1 => "[a-z_.0-9]{0,20}",
    ];
    let offsets = prop_oneof![
        6 => Just(Offsets::Consistent),
        1 => (0u64..300, 0u64..300).prop_map(|(a, b)| Offsets::Given(a, b)),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Offsets::Given(a, b)),
        1 => Just(Offsets::SameAsPrevious),
        1 => (1u64..1000).prop_map(Offsets::PastEnd),
    ];
    (
        name,
        proptest::sample::select(DTYPES),
        proptest::collection::vec(dim(), 0..5),
        offsets,
    )
        .prop_map(|(name, dtype, shape, offsets)| TensorSpec {
            name,
            dtype: dtype.to_string(),
            shape,
            offsets,
        })
}

fn safetensors_spec(names: &'static [&'static str]) -> impl Strategy<Value = SafetensorsSpec> {
    let metadata = prop_oneof![
        3 => Just(None),
        1 => Just(Some(json!({"format": "pt"}))),
        1 => nasty_json().prop_map(Some),
    ];
    let header_len = prop_oneof![
        6 => Just(None),
        1 => Just(Some(0u64)),
        1 => Just(Some(u64::MAX)),
        1 => Just(Some(100_000_001u64)),
        1 => any::<u64>().prop_map(Some),
        1 => (0u64..4096).prop_map(Some),
    ];
    (
        proptest::collection::vec(tensor_spec(names), 0..6),
        metadata,
        prop_oneof![4 => Just(0i64), 1 => -64i64..64],
        header_len,
        prop_oneof![3 => Just(0usize), 1 => 0usize..16],
        proptest::collection::vec(byte_edit(), 0..2),
    )
        .prop_map(
            |(tensors, metadata, data_slack, header_len, padding, edits)| SafetensorsSpec {
                tensors,
                metadata,
                data_slack,
                header_len,
                padding,
                edits,
            },
        )
}

/// Consistent byte size of a tensor, capped so the generated files stay small.
fn consistent_size(t: &TensorSpec) -> u64 {
    let elements = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    elements
        .and_then(|n| n.checked_mul(dtype_size_bits(&t.dtype)))
        .map(|bits| bits.div_ceil(8))
        .unwrap_or(0)
        .min(1 << 16)
}

/// The bytes of a safetensors file following `spec`.
fn build_safetensors(spec: &SafetensorsSpec) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if let Some(m) = &spec.metadata {
        header.insert("__metadata__".into(), m.clone());
    }
    let mut cursor = 0u64;
    let mut previous = 0u64;
    for t in &spec.tensors {
        let size = consistent_size(t);
        let (begin, end) = match t.offsets {
            Offsets::Consistent => (cursor, cursor + size),
            Offsets::Given(a, b) => (a, b),
            Offsets::SameAsPrevious => (previous, previous + size),
            Offsets::PastEnd(k) => (cursor + k, cursor + k + size),
        };
        previous = begin;
        cursor = cursor.max(end.min(1 << 20));
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [begin, end]}),
        );
    }
    let mut json = serde_json::to_vec(&Value::Object(header)).expect("header serialises");
    json.extend(std::iter::repeat_n(b' ', spec.padding));
    let data_len = (cursor as i64 + spec.data_slack).clamp(0, 1 << 20) as usize;
    let header_len = spec.header_len.unwrap_or(json.len() as u64);
    let mut bytes = header_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.extend((0..data_len).map(|i| (i * 37 % 251) as u8));
    let window = 8 + json.len();
    apply_edits(&mut bytes, &spec.edits, Some(window));
    bytes
}

/// Opens one safetensors file as weights and reads every tensor in every way the loader
/// offers; asserts errors name the file and the work stays within the input's size.
fn exercise_weight_file(file: &Path) {
    let input = std::fs::metadata(file)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let device = common::test_device();
    let (outcome, peak) = measure(&file.display().to_string(), || {
        let weights = WeightFiles::open(&[file.to_path_buf()])?;
        let mut errors = Vec::new();
        let _ = (weights.parameter_count(), weights.stored_dtype());
        for (name, shape, _) in weights.shapes_and_dtypes().into_iter().take(16) {
            if let Err(e) = weights.load_stored(&name, &device) {
                errors.push(e);
            }
            let vb = weights.var_builder(DType::F32, &device);
            if let Err(e) = vb.get(shape.clone(), &name) {
                errors.push(weight_error(file, e));
            }
            let mut wrong = shape.clone();
            wrong.push(3);
            if let Err(e) = vb.get(wrong, &name) {
                errors.push(weight_error(file, e));
            }
        }
        Ok::<_, EngineError>(errors)
    });
    match outcome {
        Ok(errors) => {
            for e in errors {
                assert_names_file(&e.to_string(), file);
            }
        }
        Err(e) => assert_names_file(&e.to_string(), file),
    }
    assert_bounded("safetensors file", peak, input, WEIGHT_BYTES_PER_BYTE);
}

const PLAIN_NAMES: &[&str] = &[
    "conv_in.weight",
    "conv_in.bias",
    "time_embedding.linear_1.weight",
    "text_model.embeddings.position_ids",
    "__metadata__",
    "",
];

/// A valid small safetensors file in the fixture UNet's layout: its first tensors (names,
/// dtypes, shapes and bytes), re-packed.
fn real_layout_seed() -> &'static Vec<u8> {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let file = model_dir().join("unet/diffusion_pytorch_model.safetensors");
        let bytes = std::fs::read(&file).expect("fixture UNet weights");
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: BTreeMap<String, Value> =
            serde_json::from_slice(&bytes[8..8 + n]).expect("fixture header");
        let mut out = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
            let [begin, end] = [0, 1].map(|i| info["data_offsets"][i].as_u64().unwrap() as usize);
            if end - begin > 4096 {
                continue;
            }
            let start = data.len();
            data.extend_from_slice(&bytes[8 + n + begin..8 + n + end]);
            let mut info = info.clone();
            info["data_offsets"] = json!([start, data.len()]);
            out.insert(name.clone(), info);
            if out.len() == 12 {
                break;
            }
        }
        let json = serde_json::to_vec(&Value::Object(out)).unwrap();
        let mut seed = (json.len() as u64).to_le_bytes().to_vec();
        seed.extend_from_slice(&json);
        seed.extend_from_slice(&data);
        seed
    })
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn fuzz_safetensors_structured(spec in safetensors_spec(PLAIN_NAMES)) {
        let tmp = TempDir::new("st");
        let file = tmp.write("weights.safetensors", &build_safetensors(&spec));
        exercise_weight_file(&file);
    }

    #[test]
    fn fuzz_safetensors_real_layout(
        edits in proptest::collection::vec(byte_edit(), 1..6),
        in_header in any::<bool>(),
    ) {
        let mut bytes = real_layout_seed().clone();
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        apply_edits(&mut bytes, &edits, in_header.then_some(header_end));
        let tmp = TempDir::new("st-real");
        let file = tmp.write("diffusion_pytorch_model.safetensors", &bytes);
        exercise_weight_file(&file);
    }
}

// ---------------------------------------------------------------------------------------------
// Config files

const UNET_KEYS: &[&str] = &[
    "sample_size",
    "block_out_channels",
    "layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "norm_num_groups",
    "cross_attention_dim",
    "down_block_types",
    "up_block_types",
    "mid_block_type",
    "transformer_layers_per_block",
    "conv_in_kernel",
    "only_cross_attention",
];
const VAE_KEYS: &[&str] = &[
    "sample_size",
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "scaling_factor",
    "shift_factor",
    "down_block_types",
];
const CLIP_KEYS: &[&str] = &[
    "hidden_size",
    "num_attention_heads",
    "max_position_embeddings",
    "vocab_size",
    "intermediate_size",
    "num_hidden_layers",
    "hidden_act",
    "text_config",
    "layer_norm_eps",
];
const SCHEDULER_KEYS: &[&str] = &[
    "num_train_timesteps",
    "trained_betas",
    "beta_schedule",
    "beta_start",
    "steps_offset",
    "timestep_spacing",
    "prediction_type",
    "clip_sample_range",
];

/// Parses one config file with `parse`; asserts typed, named errors and bounded allocation.
fn exercise_config<T>(
    name: &str,
    bytes: &[u8],
    parse: impl FnOnce(&Path) -> Result<T, EngineError>,
) {
    let tmp = TempDir::new("cfg");
    let file = tmp.write(name, bytes);
    let (outcome, peak) = measure(name, || parse(&file).map(|_| ()));
    if let Err(e) = outcome {
        assert_names_file(&e.to_string(), &file);
    }
    // JSON values take a few dozen bytes per input byte at most.
    assert_bounded(name, peak, bytes.len(), 64);
}

fn seed(component: &str, file: &str) -> Value {
    fixture_json(&model_dir().join(component).join(file))
}

fn parse_unet(file: &Path) -> Result<(), EngineError> {
    let cfg = UNetConfig::from_file(file)?;
    let _ = cfg.downsample_factor();
    let layout = UnetLayout::from_config(&JsonConfig::read(file)?)?;
    let _ = ldm_names::unet_map(&layout);
    Ok(())
}

fn parse_vae(file: &Path) -> Result<(), EngineError> {
    let cfg = VaeConfig::from_file(file)?;
    let _ = (cfg.downsample_factor(), cfg.scaling_factor());
    let layout = VaeLayout::from_config(&JsonConfig::read(file)?)?;
    let _ = ldm_names::vae_map(&layout);
    Ok(())
}

fn parse_scheduler(file: &Path) -> Result<(), EngineError> {
    let scheduler = DdimScheduler::from_file(file)?;
    for steps in [1, 2, 50, 1000, 100_000] {
        if scheduler.check_num_inference_steps(steps).is_ok() {
            let _ = scheduler.timesteps(steps);
            let _ = scheduler.authors_inversion_timesteps(steps);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn fuzz_unet_config(bytes in mutated_json(seed("unet", "config.json"), UNET_KEYS)) {
        exercise_config("config.json", &bytes, parse_unet);
    }

    #[test]
    fn fuzz_vae_config(bytes in mutated_json(seed("vae", "config.json"), VAE_KEYS)) {
        exercise_config("config.json", &bytes, parse_vae);
    }

    #[test]
    fn fuzz_clip_config(bytes in mutated_json(seed("text_encoder", "config.json"), CLIP_KEYS)) {
        exercise_config("config.json", &bytes, |f| ClipTextConfig::from_file(f).map(|_| ()));
    }

    #[test]
    fn fuzz_scheduler_config(
        bytes in mutated_json(seed("scheduler", "scheduler_config.json"), SCHEDULER_KEYS)
    ) {
        exercise_config("scheduler_config.json", &bytes, parse_scheduler);
    }
}

/// Found by `fuzz_unet_config`: `layers_per_block` 10^12 made the original-checkpoint name map
/// loop over 10^12 layers (memory ran away until the process aborted).
#[test]
fn absurd_layer_and_block_counts_are_config_errors() {
    let huge = json!(1_000_000_000_000u64);
    let cases = [
        ("unet", "config.json", "layers_per_block", huge.clone()),
        ("unet", "config.json", "layers_per_block", json!(u64::MAX)),
        (
            "unet",
            "config.json",
            "transformer_layers_per_block",
            huge.clone(),
        ),
        ("unet", "config.json", "sample_size", huge.clone()),
        (
            "unet",
            "config.json",
            "block_out_channels",
            json!(vec![32; 70]),
        ),
        ("vae", "config.json", "layers_per_block", huge.clone()),
        ("vae", "config.json", "sample_size", json!(0)),
    ];
    for (component, name, field, value) in cases {
        let mut config = seed(component, name);
        config[field] = value;
        let bytes = serde_json::to_vec(&config).unwrap();
        let parse = if component == "unet" {
            parse_unet
        } else {
            parse_vae
        };
        let tmp = TempDir::new("absurd");
        let file = tmp.write(name, &bytes);
        let (outcome, peak) = measure(field, || parse(&file));
        let Err(err) = outcome else {
            panic!("{component} {field}: absurd value accepted")
        };
        let message = err.to_string();
        assert_names_file(&message, &file);
        assert!(message.contains(field), "{message}");
        assert_bounded(field, peak, bytes.len(), 64);
    }
}

// ---------------------------------------------------------------------------------------------
// Configs against the real weights: absurd sizes must fail on the weights' shapes, not allocate.

struct FixtureWeights {
    unet: WeightFiles,
    vae: WeightFiles,
    text: WeightFiles,
    bytes: usize,
}

fn fixture_weights() -> &'static FixtureWeights {
    static W: OnceLock<FixtureWeights> = OnceLock::new();
    W.get_or_init(|| {
        let dir = model_dir();
        let open = |p: &str| WeightFiles::open(&[dir.join(p)]).expect("fixture weights");
        let unet = open("unet/diffusion_pytorch_model.safetensors");
        let vae = open("vae/diffusion_pytorch_model.safetensors");
        let text = open("text_encoder/model.safetensors");
        let bytes = [&unet, &vae, &text]
            .iter()
            .flat_map(|w| w.files())
            .map(|f| std::fs::metadata(f).map(|m| m.len() as usize).unwrap_or(0))
            .sum();
        FixtureWeights {
            unet,
            vae,
            text,
            bytes,
        }
    })
}

#[derive(Debug, Clone, Copy)]
enum Component {
    Unet,
    Vae,
    Text,
}

/// Builds one component from a mutated config and the fixture's real weights.
fn build_component(component: Component, bytes: &[u8]) {
    let w = fixture_weights();
    let tmp = TempDir::new("build");
    let file = tmp.write("config.json", bytes);
    let device = common::test_device();
    let (outcome, peak) = measure("component config", || -> Result<(), EngineError> {
        match component {
            Component::Unet => {
                let cfg = UNetConfig::from_file(&file)?;
                let vb = w.unet.var_builder(DType::F32, &device);
                UNet2DConditionModel::new(vb, &cfg).map_err(|e| weight_error(w.unet.label(), e))?;
            }
            Component::Vae => {
                let cfg = VaeConfig::from_file(&file)?;
                let vb = w.vae.var_builder(DType::F32, &device);
                AutoencoderKL::new(vb, &cfg).map_err(|e| weight_error(w.vae.label(), e))?;
            }
            Component::Text => {
                let cfg = ClipTextConfig::from_file(&file)?;
                let map = Arc::new(ldm_names::diffusers_text_encoder_map());
                let vb = w.text.var_builder_mapped(map, DType::F32, &device);
                ClipTextTransformer::new(vb, &cfg).map_err(|e| weight_error(w.text.label(), e))?;
            }
        }
        Ok(())
    });
    if let Err(e) = outcome {
        let named = match component {
            Component::Unet => w.unet.label(),
            Component::Vae => w.vae.label(),
            Component::Text => w.text.label(),
        };
        let message = e.to_string();
        // A config problem names the config; a weight problem names the weight file.
        if !message.contains("config.json") {
            assert_names_file(&message, named);
        } else {
            assert_names_file(&message, &file);
        }
    }
    assert_bounded("component from config", peak, w.bytes + bytes.len(), 4);
}

proptest! {
    #![proptest_config(config(150))]

    #[test]
    fn fuzz_unet_config_on_real_weights(
        bytes in mutated_json(seed("unet", "config.json"), UNET_KEYS)
    ) {
        build_component(Component::Unet, &bytes);
    }

    #[test]
    fn fuzz_vae_config_on_real_weights(
        bytes in mutated_json(seed("vae", "config.json"), VAE_KEYS)
    ) {
        build_component(Component::Vae, &bytes);
    }

    #[test]
    fn fuzz_clip_config_on_real_weights(
        bytes in mutated_json(seed("text_encoder", "config.json"), CLIP_KEYS)
    ) {
        build_component(Component::Text, &bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Single-file checkpoints and whole folders

const LDM_NAMES: &[&str] = &[
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.0.0.bias",
    "first_stage_model.encoder.conv_in.weight",
    "first_stage_model.decoder.conv_out.bias",
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.model.token_embedding.weight",
    "conditioner.embedders.0.x",
];

/// A folder laid out like the fixture model, every file a link to the fixture's except the
/// one at `replaced`, which holds `bytes`.
fn model_with_file(tmp: &TempDir, replaced: &str, bytes: &[u8]) -> PathBuf {
    let src = model_dir();
    let root = tmp.path().join("model");
    for component in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        for entry in std::fs::read_dir(src.join(component))
            .expect("fixture folder")
            .flatten()
        {
            let rel = format!("{component}/{}", entry.file_name().to_string_lossy());
            let target = root.join(&rel);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            if rel != replaced {
                link_or_copy(&entry.path(), &target);
            }
        }
    }
    link_or_copy(
        &src.join("model_index.json"),
        &root.join("model_index.json"),
    );
    tmp.write(&format!("model/{replaced}"), bytes);
    root
}

fn link_or_copy(from: &Path, to: &Path) {
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(from, to).is_ok();
    #[cfg(not(unix))]
    let linked = false;
    if !linked {
        std::fs::copy(from, to).expect("copy fixture file");
    }
}

const MODEL_FILES: &[&str] = &[
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
];

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn fuzz_single_file_checkpoint(spec in safetensors_spec(LDM_NAMES)) {
        let tmp = TempDir::new("ckpt");
        let file = tmp.write("checkpoint.safetensors", &build_safetensors(&spec));
        let input = std::fs::metadata(&file).map(|m| m.len() as usize).unwrap_or(0);
        let configs = CheckpointConfigs::from_diffusers_folder(&model_dir());
        let (outcome, peak) = measure("checkpoint", || {
            SingleFileCheckpoint::open(&file, configs.clone())?;
            inspect(&file)?;
            StableDiffusion::load_with_configs(&file, &common::test_device(), configs.clone()).map(|_| ())
        });
        if let Err(e) = outcome {
            assert_names_file(&e.to_string(), &file);
        }
        assert_bounded("checkpoint", peak, input, WEIGHT_BYTES_PER_BYTE);
    }
}

proptest! {
    #![proptest_config(config(60))]

    /// The whole fixture model with one of its small files broken: `inspect` and a full load.
    #[test]
    fn fuzz_model_folder_with_broken_file(
        which in proptest::sample::select(MODEL_FILES),
        edits in proptest::collection::vec(byte_edit(), 1..6),
    ) {
        let mut bytes = std::fs::read(model_dir().join(which)).expect("fixture file");
        apply_edits(&mut bytes, &edits, None);
        let tmp = TempDir::new("folder");
        let root = model_with_file(&tmp, which, &bytes);
        let (outcome, peak) = measure(which, || {
            inspect(&root)?;
            StableDiffusion::load(&root, &common::test_device()).map(|_| ())
        });
        if let Err(e) = outcome {
            let message = e.to_string();
            let file_name = Path::new(which).file_name().unwrap().to_string_lossy().into_owned();
            // Tokenizer problems may name the tokenizer folder.
            let named = if message.contains(&file_name) { root.join(which) } else { root.join(Path::new(which).parent().unwrap()) };
            assert_names_file(&message, &named);
        }
        assert_bounded("model folder", peak, fixture_weights().bytes, 4);
    }
}
