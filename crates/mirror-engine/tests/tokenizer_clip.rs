//! Parity of the CLIP tokenizer and text encoder with the `tokenizer` / `text_encoder` fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use mirror_engine::EngineError;
use mirror_engine::clip::{ClipTextConfig, ClipTextTransformer};
use mirror_engine::tokenizer::ClipTokenizer;

fn tokenizer(fx: &common::Fixtures) -> ClipTokenizer {
    ClipTokenizer::from_dir(&fx.model_dir().join("tokenizer")).expect("tokenizer loads")
}

/// The fixture's prompts (never empty, so loops over them check something).
fn prompts(fx: &common::Fixtures, fixture: &str) -> Vec<String> {
    let prompts: Vec<String> = fx.fixture(fixture)["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| p.as_str().expect("prompt").to_string())
        .collect();
    assert!(!prompts.is_empty(), "{fixture}: no prompts");
    prompts
}

fn text_encoder_paths(fx: &common::Fixtures) -> (PathBuf, PathBuf) {
    (
        fx.config_path("text_encoder"),
        fx.weights_path("text_encoder"),
    )
}

#[test]
fn tokenizer_matches_fixture_ids() {
    let fx = common::Fixtures::load();
    let tok = tokenizer(&fx);
    let settings = fx.settings("tokenizer");
    assert_eq!(
        tok.max_length() as u64,
        settings["max_length"].as_u64().unwrap()
    );
    assert_eq!(tok.bos_id() as u64, settings["bos"].as_u64().unwrap());
    assert_eq!(
        tok.eos_id() as u64,
        settings["eos_and_pad"].as_u64().unwrap()
    );
    assert_eq!(
        tok.pad_id() as u64,
        settings["eos_and_pad"].as_u64().unwrap()
    );

    let prompts = prompts(&fx, "tokenizer");
    let padded: Vec<u32> = prompts
        .iter()
        .flat_map(|p| tok.encode(p).expect("encodes"))
        .collect();
    let padded = Tensor::from_vec(
        padded,
        (prompts.len(), tok.max_length()),
        &common::test_device(),
    )
    .unwrap();
    fx.assert_close("tokenizer", "input_ids", &padded);

    let unpadded: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode_unpadded(p).expect("encodes"))
        .collect();
    let counts: Vec<i64> = unpadded.iter().map(|ids| ids.len() as i64).collect();
    let counts = Tensor::new(counts.as_slice(), &common::test_device()).unwrap();
    fx.assert_close("tokenizer", "num_tokens_untruncated", &counts);

    let expected = fx.fixture("tokenizer")["ids_unpadded_untruncated"]
        .as_array()
        .expect("ids_unpadded_untruncated");
    assert_eq!(expected.len(), prompts.len());
    for ((prompt, ids), want) in prompts.iter().zip(&unpadded).zip(expected) {
        let want: Vec<u32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, &want, "prompt {prompt:?}");
    }
}

#[test]
fn tokenizer_from_files_matches_from_dir() {
    let fx = common::Fixtures::load();
    let dir = fx.model_dir().join("tokenizer");
    let a = tokenizer(&fx);
    let b = ClipTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt")).unwrap();
    for p in prompts(&fx, "tokenizer") {
        assert_eq!(a.encode(&p).unwrap(), b.encode(&p).unwrap(), "{p:?}");
    }
}

#[test]
fn token_words_follow_the_padded_positions() {
    let fx = common::Fixtures::load();
    let tok = tokenizer(&fx);
    for prompt in prompts(&fx, "tokenizer") {
        let ids = tok.encode_unpadded(&prompt).unwrap();
        let words = tok.token_words(&prompt).unwrap();
        let fitting = (ids.len() - 2).min(tok.max_length() - 2);
        assert_eq!(words.len(), fitting, "{prompt:?}");
        for (k, w) in words.iter().enumerate() {
            assert_eq!(w.index, k + 1);
            assert!(!w.text.contains("</w>"), "{w:?}");
        }
        // Whole words come back readable; lowercased as the tokenizer normalises.
        let joined: String = words.iter().map(|w| w.text.as_str()).collect();
        if prompt.is_ascii() && ids.len() <= tok.max_length() {
            let expected: String = prompt.to_lowercase().split_whitespace().collect();
            assert_eq!(joined, expected, "{prompt:?}");
        }
    }
    let words = tok.token_words("café crème").unwrap();
    let joined: String = words.iter().map(|w| w.text.as_str()).collect();
    assert_eq!(joined, "cafécrème", "{words:?}");
}

#[test]
fn tokenizer_errors_name_the_file() {
    let missing = std::env::temp_dir().join("mirror-no-such-tokenizer");
    match ClipTokenizer::from_dir(&missing) {
        Err(EngineError::Io { path, .. }) => assert!(path.ends_with("vocab.json"), "{path:?}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("loaded a missing tokenizer"),
    }
    let dir = std::env::temp_dir().join(format!("mirror-bad-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vocab.json"), "[1, 2]").unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    match ClipTokenizer::from_dir(&dir) {
        Err(EngineError::Tokenizer { path, .. }) => assert!(path.ends_with("vocab.json")),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("loaded a bad vocabulary"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn load_text_encoder(fx: &common::Fixtures) -> ClipTextTransformer {
    let (config, weights) = text_encoder_paths(fx);
    let cfg = ClipTextConfig::from_file(&config).expect("config parses");
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &common::test_device())
    }
    .expect("weights map");
    ClipTextTransformer::new(vb, &cfg).expect("text encoder loads")
}

#[test]
fn text_encoder_matches_fixture() {
    let fx = common::Fixtures::load();
    let model = load_text_encoder(&fx);
    let ids = fx.tensor("text_encoder", "input_ids");
    assert_eq!(
        model.hidden_size() as u64,
        fx.manifest["text_hidden_size"].as_u64().unwrap()
    );

    let hidden = model.forward(&ids).unwrap();
    fx.assert_close("text_encoder", "last_hidden_state", &hidden);
    let embeddings = model.embed(&ids).unwrap();
    fx.assert_close("text_encoder", "hidden_states_0", &embeddings);

    // u32 ids give the same result as the stored i64 ids.
    let hidden_u32 = model.forward(&ids.to_dtype(DType::U32).unwrap()).unwrap();
    common::assert_tensor_close("u32 ids", &hidden, &hidden_u32, 0.0);
}

#[test]
fn tokenizer_and_text_encoder_reproduce_fixture_from_prompts() {
    let fx = common::Fixtures::load();
    let tok = tokenizer(&fx);
    let model = load_text_encoder(&fx);
    let prompts = prompts(&fx, "text_encoder");
    let ids: Vec<u32> = prompts
        .iter()
        .flat_map(|p| tok.encode(p).unwrap())
        .collect();
    let ids = Tensor::from_vec(
        ids,
        (prompts.len(), tok.max_length()),
        &common::test_device(),
    )
    .unwrap();
    fx.assert_close("text_encoder", "input_ids", &ids);
    let hidden = model.forward(&ids).unwrap();
    fx.assert_close("text_encoder", "last_hidden_state", &hidden);
}

#[test]
fn text_encoder_accepts_weights_without_text_model_prefix() {
    let fx = common::Fixtures::load();
    let (config, weights) = text_encoder_paths(&fx);
    let cfg = ClipTextConfig::from_file(&config).unwrap();
    let tensors = candle_core::safetensors::load(&weights, &common::test_device()).unwrap();
    assert!(
        tensors.keys().any(|k| k.starts_with("text_model.")),
        "fixture has the prefix"
    );
    let stripped: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| {
            (
                k.strip_prefix("text_model.").unwrap_or(k).to_string(),
                v.clone(),
            )
        })
        .collect();
    let prefixed = ClipTextTransformer::new(
        VarBuilder::from_tensors(tensors, DType::F32, &common::test_device()),
        &cfg,
    )
    .unwrap();
    let plain = ClipTextTransformer::new(
        VarBuilder::from_tensors(stripped, DType::F32, &common::test_device()),
        &cfg,
    )
    .unwrap();
    let ids = fx.tensor("text_encoder", "input_ids");
    let a = prefixed.forward(&ids).unwrap();
    let b = plain.forward(&ids).unwrap();
    common::assert_tensor_close("stripped prefix", &a, &b, 0.0);
}

#[test]
fn text_encoder_config_reads_fixture_values() {
    let fx = common::Fixtures::load();
    let (config, _) = text_encoder_paths(&fx);
    let cfg = ClipTextConfig::from_file(&config).unwrap();
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(cfg.hidden_size as u64, raw["hidden_size"].as_u64().unwrap());
    assert_eq!(
        cfg.num_hidden_layers as u64,
        raw["num_hidden_layers"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.max_position_embeddings as u64,
        raw["max_position_embeddings"].as_u64().unwrap()
    );
    // The tokenizer's padded length is the encoder's context length.
    assert_eq!(tokenizer(&fx).max_length(), cfg.max_position_embeddings);
}
