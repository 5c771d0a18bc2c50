//! Fuzzing the app's own files and the tokenizer: settings, the inversion cache, edit-direction
//! files (saved and cached), and tokenizer folders (vocab, merges, special tokens). No case may
//! panic, hang or allocate more than its input justifies; a broken cache file is a miss, every
//! other error names the file and the problem.
//!
//! Long run on a developer machine (any number of cases; add PROPTEST_RNG_SEED=<n> for
//! other cases than CI's):
//!     PROPTEST_CASES=100000 cargo test --release --test fuzz_files
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

#[path = "../crates/mirror-engine/tests/common/mod.rs"]
mod common;
#[path = "../crates/mirror-engine/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use mirror_diffusion::app::settings::Settings;
use mirror_engine::direction::{EditDirection, load_direction, save_direction};
use mirror_engine::pipeline::stages::{InversionGrid, Trajectory};
use mirror_engine::session::{CachedInversion, CachedReconstruction, InversionCache};
use mirror_engine::tokenizer::ClipTokenizer;
use proptest::prelude::*;
use serde_json::{Value, json};

use fuzz_support::*;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Bytes per input byte a tensor file may cost: the file read whole, its tensors, one f32/f64
/// conversion of them.
const TENSOR_BYTES_PER_BYTE: usize = 24;

// ---------------------------------------------------------------------------------------------
// Settings

fn settings_seed() -> Value {
    let mut s = Settings::default();
    s.remember_model(Path::new("/models/sd15"));
    s.remember_image(Path::new("/pictures/cat.png"));
    serde_json::to_value(&s).expect("settings serialise")
}

const SETTINGS_KEYS: &[&str] = &["run", "resize", "recent_models", "export_dir", "steps"];

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn fuzz_settings_file(
        bytes in mutated_json(settings_seed(), SETTINGS_KEYS),
        nested in proptest::collection::vec(json_edit(&["steps", "guidance", "seed", "preset", "decode_every"]), 0..4),
    ) {
        // Edit inside `run` too, where most of the values are.
        let mut bytes = bytes;
        if let Ok(mut v) = serde_json::from_slice::<Value>(&bytes)
            && let Some(run) = v.get_mut("run")
        {
            apply_json_edits(run, &nested);
            bytes = serde_json::to_vec(&v).unwrap();
        }
        let tmp = TempDir::new("settings");
        let file = tmp.write("settings.json", &bytes);
        let ((settings, message), peak) = measure("settings", || Settings::load(tmp.path()));
        assert_bounded("settings", peak, bytes.len(), 64);
        match message {
            Some(m) => {
                assert_names_file(&m, &file);
                assert_eq!(settings, Settings::default(), "unreadable settings give the defaults");
                // Loses nothing: the unreadable file is still there for the user.
                let kept: Vec<Vec<u8>> = std::fs::read_dir(tmp.path()).unwrap().flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok()).collect();
                assert!(kept.contains(&bytes), "the unreadable settings file was lost");
            }
            None => {
                // What was read saves and reads back the same.
                settings.save(tmp.path()).expect("settings save");
                let (again, m) = Settings::load(tmp.path());
                assert!(m.is_none(), "{m:?}");
                assert_eq!(again, settings);
            }
        }
    }
}

#[test]
fn settings_that_are_not_text_are_reported_and_kept() {
    let tmp = TempDir::new("settings-binary");
    let bytes = [0xff, 0xfe, 0x00, b'{'];
    let file = tmp.write("settings.json", &bytes);
    let (settings, message) = Settings::load(tmp.path());
    assert_eq!(settings, Settings::default());
    let message = message.expect("a message for a settings file that is not text");
    assert_names_file(&message, &file);
}

// ---------------------------------------------------------------------------------------------
// Inversion cache

fn tensor(shape: &[usize], offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| offset + i as f32 * 0.25).collect();
    Tensor::from_vec(v, shape, &common::test_device()).unwrap()
}

/// A valid cache entry of `steps` steps on `grid`, with or without the reconstruction branch.
fn cache_entry(steps: usize, grid: InversionGrid, with_rec: bool) -> CachedInversion {
    let inverted = match grid {
        InversionGrid::Consistent => steps,
        InversionGrid::Authors => steps.saturating_sub(2),
    };
    let latent = |k: usize| tensor(&[1, 4, 2, 2], k as f32);
    CachedInversion {
        trajectory: Trajectory {
            latents: (0..=inverted).map(latent).collect(),
            timesteps: (0..inverted).map(|k| 1 + 20 * k).collect(),
            grid,
            steps,
        },
        caption: tensor(&[1, 77, 8], 0.5),
        reconstruction: with_rec.then(|| CachedReconstruction {
            embeddings: (0..steps).map(|k| tensor(&[1, 77, 8], k as f32)).collect(),
            latents: (0..=steps).map(latent).collect(),
            losses: (0..steps).map(|k| vec![0.5; k % 3 + 1]).collect(),
            embedding_changes: vec![0.1; steps],
        }),
    }
}

const KEY: &str = "0123456789abcdef0123456789abcdef";

/// Writes `bytes` as the cache file of `KEY` and reads it back in a fresh cache: a miss or an
/// entry the session can use without panicking.
fn exercise_cache_file(bytes: &[u8]) {
    let tmp = TempDir::new("cache");
    tmp.write(&format!("{KEY}.safetensors"), bytes);
    let mut cache = InversionCache::new(Some(tmp.path().to_path_buf()));
    let (entry, peak) = measure("cache file", || cache.get(KEY, &common::test_device()));
    assert_bounded("cache file", peak, bytes.len(), TENSOR_BYTES_PER_BYTE);
    if let Some(entry) = entry {
        use_entry_like_the_session(&entry);
    }
}

/// What the session does with a cached entry (`Trajectory::start`/`target`, the
/// reconstruction's per-step lists): any inconsistency would panic here.
fn use_entry_like_the_session(entry: &CachedInversion) {
    let t = &entry.trajectory;
    let _ = t.start();
    for i in 0..t.steps.min(1000) {
        let _ = t.target(i);
    }
    if let Some(r) = &entry.reconstruction {
        for i in 0..r.embeddings.len() {
            let _ = (
                &r.embeddings[i],
                &r.latents[i],
                &r.losses[i],
                r.embedding_changes[i],
            );
        }
        let _ = &r.latents[r.embeddings.len()];
    }
}

fn cache_seed(steps: usize, grid: InversionGrid, with_rec: bool) -> Vec<u8> {
    let tmp = TempDir::new("cache-seed");
    let mut cache = InversionCache::new(Some(tmp.path().to_path_buf()));
    cache
        .put(KEY, cache_entry(steps, grid, with_rec))
        .expect("cache write");
    std::fs::read(tmp.path().join(format!("{KEY}.safetensors"))).expect("cache file")
}

/// A cache file with the right tensor names but arbitrary lengths, dtypes and values.
#[derive(Debug, Clone)]
struct CacheSpec {
    meta: Vec<i64>,
    timesteps: Vec<i64>,
    latents: usize,
    caption_rank: usize,
    rec: Option<(usize, usize, usize, usize)>,
    meta_as_f32: bool,
}

fn interesting_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..60,
        1 => Just(-1i64),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => Just(1i64 << 40),
        1 => any::<i64>(),
    ]
}

fn cache_spec() -> impl Strategy<Value = CacheSpec> {
    (
        proptest::collection::vec(interesting_i64(), 0..4),
        proptest::collection::vec(interesting_i64(), 0..6),
        0usize..7,
        0usize..4,
        proptest::option::of((0usize..6, 0usize..7, 0usize..6, 0usize..6)),
        prop_oneof![5 => Just(false), 1 => Just(true)],
    )
        .prop_map(
            |(meta, timesteps, latents, caption_rank, rec, meta_as_f32)| CacheSpec {
                meta,
                timesteps,
                latents,
                caption_rank,
                rec,
                meta_as_f32,
            },
        )
}

fn build_cache_file(spec: &CacheSpec) -> Vec<u8> {
    let dev = common::test_device();
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let meta = Tensor::new(spec.meta.as_slice(), &dev).unwrap();
    let meta = if spec.meta_as_f32 {
        meta.to_dtype(DType::F32).unwrap()
    } else {
        meta
    };
    t.insert("meta".into(), meta);
    t.insert(
        "timesteps".into(),
        Tensor::new(spec.timesteps.as_slice(), &dev).unwrap(),
    );
    t.insert("latents".into(), tensor(&[spec.latents, 1, 4, 2, 2], 0.0));
    let caption_shape: Vec<usize> = [1, 77, 8][..spec.caption_rank].to_vec();
    t.insert("caption".into(), tensor(&caption_shape, 0.0));
    if let Some((emb, lat, losses, changes)) = spec.rec {
        t.insert("rec.embeddings".into(), tensor(&[emb, 1, 77, 8], 0.0));
        t.insert("rec.latents".into(), tensor(&[lat, 1, 4, 2, 2], 0.0));
        t.insert(
            "rec.losses".into(),
            tensor(&[losses, 2], 0.0).to_dtype(DType::F64).unwrap(),
        );
        t.insert(
            "rec.changes".into(),
            tensor(&[changes], 0.0).to_dtype(DType::F64).unwrap(),
        );
    }
    let tmp = TempDir::new("cache-build");
    let file = tmp.path().join("c.safetensors");
    candle_core::safetensors::save(&t, &file).unwrap();
    std::fs::read(file).unwrap()
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn fuzz_cache_file_mutated(
        steps in 1usize..6,
        authors in any::<bool>(),
        with_rec in any::<bool>(),
        edits in proptest::collection::vec(byte_edit(), 1..5),
        in_header in any::<bool>(),
    ) {
        let grid = if authors { InversionGrid::Authors } else { InversionGrid::Consistent };
        let mut bytes = cache_seed(steps, grid, with_rec);
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        apply_edits(&mut bytes, &edits, in_header.then_some(header_end));
        exercise_cache_file(&bytes);
    }

    #[test]
    fn fuzz_cache_file_structured(spec in cache_spec()) {
        exercise_cache_file(&build_cache_file(&spec));
    }
}

/// The case found by reading: a cache file that parses but whose `meta` is short.
#[test]
fn cache_file_with_short_meta_is_a_miss() {
    for meta in [vec![], vec![1i64]] {
        let spec = CacheSpec {
            meta,
            timesteps: vec![1, 21],
            latents: 3,
            caption_rank: 3,
            rec: None,
            meta_as_f32: false,
        };
        let tmp = TempDir::new("cache-meta");
        tmp.write(&format!("{KEY}.safetensors"), &build_cache_file(&spec));
        let mut cache = InversionCache::new(Some(tmp.path().to_path_buf()));
        assert!(cache.get(KEY, &common::test_device()).is_none());
    }
}

/// Valid entries of every shape survive the round trip (the checks reject only broken files).
#[test]
fn valid_cache_entries_read_back() {
    for steps in 1..6 {
        for grid in [InversionGrid::Consistent, InversionGrid::Authors] {
            for with_rec in [false, true] {
                let tmp = TempDir::new("cache-valid");
                let mut cache = InversionCache::new(Some(tmp.path().to_path_buf()));
                let entry = cache_entry(steps, grid, with_rec);
                cache.put(KEY, entry.clone()).unwrap();
                let mut fresh = InversionCache::new(Some(tmp.path().to_path_buf()));
                let got = fresh.get(KEY, &common::test_device()).unwrap_or_else(|| {
                    panic!("valid entry ({steps} steps, {grid:?}, rec {with_rec}) was a miss")
                });
                assert_eq!(got.trajectory.timesteps, entry.trajectory.timesteps);
                assert_eq!(got.trajectory.latents.len(), entry.trajectory.latents.len());
                assert_eq!(got.reconstruction.is_some(), with_rec);
                use_entry_like_the_session(&got);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Direction files (saved by the user, and cached)

const HIDDEN: usize = 8;

fn direction_seed(with_means: bool) -> Vec<u8> {
    let d = EditDirection {
        delta: tensor(&[1, 77, HIDDEN], -1.0),
        source_phrase: "cat".into(),
        target_phrase: "dog".into(),
        sentences: 10,
        method: "templates".into(),
        mean_source: with_means.then(|| tensor(&[1, 77, HIDDEN], 0.0)),
        mean_target: with_means.then(|| tensor(&[1, 77, HIDDEN], 1.0)),
        metadata: BTreeMap::new(),
    };
    let tmp = TempDir::new("dir-seed");
    let file = tmp.path().join("d.safetensors");
    save_direction(&d, &[("text_encoder".into(), "abc".into())], &file).expect("direction saves");
    std::fs::read(file).unwrap()
}

const DIRECTION_NAMES: &[&str] = &["edit_dir", "mean_source", "mean_target"];
const DIRECTION_DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "U8", "I64", "BOOL", "F8_E4M3", "U32", "XX",
];

/// Safetensors with direction tensor names and arbitrary dtypes, shapes and metadata.
fn direction_structured() -> impl Strategy<Value = Vec<u8>> {
    let tensor = (
        proptest::sample::select(DIRECTION_NAMES),
        proptest::sample::select(DIRECTION_DTYPES),
        proptest::collection::vec(
            prop_oneof![3 => Just(1u64), 3 => Just(77u64), 3 => Just(HIDDEN as u64), 2 => 0u64..4, 1 => Just(1u64 << 62)],
            0..5,
        ),
        prop_oneof![5 => Just(0u8), 1 => any::<u8>()],
    );
    let metadata = proptest::collection::btree_map(
        prop_oneof![
            Just("sentences".to_string()),
            Just("method".to_string()),
            "[a-z]{1,6}"
        ],
        nasty_json(),
        0..3,
    );
    (proptest::collection::vec(tensor, 0..4), metadata).prop_map(|(tensors, metadata)| {
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            Value::Object(metadata.into_iter().collect()),
        );
        let mut data = Vec::new();
        for (name, dtype, shape, fill) in tensors {
            let bits: u64 = match dtype {
                "F64" | "I64" => 64,
                "F32" | "U32" => 32,
                "F16" | "BF16" => 16,
                _ => 8,
            };
            let elements = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .unwrap_or(0);
            let size = elements.saturating_mul(bits / 8).min(1 << 16) as usize;
            let begin = data.len();
            data.extend(std::iter::repeat_n(fill, size));
            header.insert(
                name.into(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let json = serde_json::to_vec(&Value::Object(header)).unwrap();
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend(json);
        bytes.extend(data);
        bytes
    })
}

fn exercise_direction_file(bytes: &[u8]) {
    let tmp = TempDir::new("direction");
    let file = tmp.write("cat-to-dog.safetensors", bytes);
    let (outcome, peak) = measure("direction", || load_direction(&file, HIDDEN));
    assert_bounded("direction file", peak, bytes.len(), TENSOR_BYTES_PER_BYTE);
    match outcome {
        Ok(d) => assert_eq!(d.delta.dims()[2], HIDDEN),
        Err(e) => assert_names_file(&e.to_string(), &file),
    }
    // The same bytes as a cached direction: a miss or a usable direction, never a panic.
    let cache_dir = TempDir::new("direction-cache");
    cache_dir.write(&format!("direction-{KEY}.safetensors"), bytes);
    let mut cache = InversionCache::new(Some(cache_dir.path().to_path_buf()));
    if let Some(d) = cache.get_direction(KEY, HIDDEN) {
        assert_eq!(d.delta.dims()[2], HIDDEN);
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn fuzz_direction_file_mutated(
        with_means in any::<bool>(),
        edits in proptest::collection::vec(byte_edit(), 1..5),
        in_header in any::<bool>(),
    ) {
        let mut bytes = direction_seed(with_means);
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        apply_edits(&mut bytes, &edits, in_header.then_some(header_end));
        exercise_direction_file(&bytes);
    }

    #[test]
    fn fuzz_direction_file_structured(bytes in direction_structured()) {
        exercise_direction_file(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer folders

/// A small but real CLIP tokenizer: the fixture's byte tokens, its first merges and the tokens
/// they make (CLIP numbers merge k's token 512 + k), and the special tokens.
struct TokenizerSeed {
    vocab: Value,
    merges: String,
    special_tokens_map: Value,
    tokenizer_config: Value,
}

fn tokenizer_seed() -> &'static TokenizerSeed {
    static SEED: OnceLock<TokenizerSeed> = OnceLock::new();
    SEED.get_or_init(|| {
        let dir = common::Fixtures::load().model_dir().join("tokenizer");
        const MERGES: usize = 300;
        let full = fixture_json(&dir.join("vocab.json"));
        let vocab: serde_json::Map<String, Value> = full
            .as_object()
            .expect("vocab object")
            .iter()
            .filter(|(token, id)| {
                id.as_u64().is_some_and(|i| i < 512 + MERGES as u64) || token.starts_with("<|")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let text = std::fs::read_to_string(dir.join("merges.txt")).expect("merges");
        let merges: Vec<&str> = text.lines().take(MERGES + 1).collect();
        TokenizerSeed {
            vocab: Value::Object(vocab),
            merges: merges.join("\n") + "\n",
            special_tokens_map: fixture_json(&dir.join("special_tokens_map.json")),
            tokenizer_config: fixture_json(&dir.join("tokenizer_config.json")),
        }
    })
}

const TOKENIZER_KEYS: &[&str] = &[
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "model_max_length",
    "<|endoftext|>",
    "in",
    "a",
];

#[derive(Debug, Clone)]
enum TokenizerMutation {
    Vocab(Vec<JsonEdit>),
    Merges(Vec<ByteEdit>),
    SpecialTokens(Vec<JsonEdit>),
    Config(Vec<JsonEdit>),
    VocabBytes(Vec<ByteEdit>),
}

fn tokenizer_mutation() -> impl Strategy<Value = TokenizerMutation> {
    let json_edits = || proptest::collection::vec(json_edit(TOKENIZER_KEYS), 1..5);
    let byte_edits = || proptest::collection::vec(byte_edit(), 1..5);
    prop_oneof![
        json_edits().prop_map(TokenizerMutation::Vocab),
        byte_edits().prop_map(TokenizerMutation::Merges),
        json_edits().prop_map(TokenizerMutation::SpecialTokens),
        json_edits().prop_map(TokenizerMutation::Config),
        byte_edits().prop_map(TokenizerMutation::VocabBytes),
    ]
}

fn write_tokenizer(tmp: &TempDir, mutation: &TokenizerMutation) -> (PathBuf, PathBuf) {
    let seed = tokenizer_seed();
    let mut vocab = serde_json::to_vec(&seed.vocab).unwrap();
    let mut merges = seed.merges.clone().into_bytes();
    let mut special = seed.special_tokens_map.clone();
    let mut config = seed.tokenizer_config.clone();
    let changed = match mutation {
        TokenizerMutation::Vocab(edits) => {
            let mut v = seed.vocab.clone();
            apply_json_edits(&mut v, edits);
            vocab = serde_json::to_vec(&v).unwrap();
            "vocab.json"
        }
        TokenizerMutation::VocabBytes(edits) => {
            apply_edits(&mut vocab, edits, None);
            "vocab.json"
        }
        TokenizerMutation::Merges(edits) => {
            apply_edits(&mut merges, edits, None);
            "merges.txt"
        }
        TokenizerMutation::SpecialTokens(edits) => {
            apply_json_edits(&mut special, edits);
            "special_tokens_map.json"
        }
        TokenizerMutation::Config(edits) => {
            apply_json_edits(&mut config, edits);
            "tokenizer_config.json"
        }
    };
    tmp.write("tokenizer/vocab.json", &vocab);
    tmp.write("tokenizer/merges.txt", &merges);
    tmp.write(
        "tokenizer/special_tokens_map.json",
        &serde_json::to_vec(&special).unwrap(),
    );
    tmp.write(
        "tokenizer/tokenizer_config.json",
        &serde_json::to_vec(&config).unwrap(),
    );
    let dir = tmp.path().join("tokenizer");
    (dir.clone(), dir.join(changed))
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn fuzz_tokenizer_folder(mutation in tokenizer_mutation(), prompt in "\\PC{0,40}") {
        let tmp = TempDir::new("tokenizer");
        let (dir, changed) = write_tokenizer(&tmp, &mutation);
        let input: usize = std::fs::read_dir(&dir).unwrap().flatten()
            .map(|e| e.metadata().map(|m| m.len() as usize).unwrap_or(0)).sum();
        let (outcome, peak) = measure("tokenizer", || {
            let tok = ClipTokenizer::from_dir(&dir)?;
            for text in [prompt.as_str(), "a photo of a cat", ""] {
                let ids = tok.encode(text)?;
                assert_eq!(ids.len(), tok.max_length());
                tok.token_words(text)?;
            }
            Ok::<_, mirror_engine::EngineError>(())
        });
        if let Err(e) = outcome {
            assert_names_file(&e.to_string(), &changed);
        }
        // Vocabulary tables cost a few hundred bytes per input byte (hash maps, regexes).
        assert_bounded("tokenizer", peak, input, 256);
    }
}

/// Found by `fuzz_direction_file_structured`: a tensor candle cannot read (here BOOL) gave
/// "tensor computation failed: unsupported safetensor dtype BOOL", naming no file.
#[test]
fn unreadable_direction_tensor_names_the_file() {
    let header = json!({"edit_dir": {"dtype": "BOOL", "shape": [1, 2, HIDDEN], "data_offsets": [0, 2 * HIDDEN]}});
    let json = serde_json::to_vec(&header).unwrap();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json);
    bytes.extend(vec![1u8; 2 * HIDDEN]);
    let tmp = TempDir::new("direction-bool");
    let file = tmp.write("cat-to-dog.safetensors", &bytes);
    let err = load_direction(&file, HIDDEN).expect_err("BOOL edit_dir is refused");
    assert_names_file(&err.to_string(), &file);
}

/// Found by `fuzz_tokenizer_folder`: a special token named by special_tokens_map.json but
/// missing from the vocabulary was reported against vocab.json only.
#[test]
fn missing_special_token_names_the_file_that_named_it() {
    let tmp = TempDir::new("tokenizer-special");
    let edits = vec![JsonEdit::Add("bos_token".into(), json!("<|nowhere|>"))];
    let (dir, changed) = write_tokenizer(&tmp, &TokenizerMutation::SpecialTokens(edits));
    let Err(err) = ClipTokenizer::from_dir(&dir) else {
        panic!("an unknown special token is refused")
    };
    assert_names_file(&err.to_string(), &changed);
}
