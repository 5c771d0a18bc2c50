//! The edit direction Δc: parity with the `edit_direction` fixture, phrase detection,
//! the paired template bank, sentence files, save/load and cancellation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use std::cell::Cell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use mirror_engine::EngineError;
use mirror_engine::clip::{ClipTextConfig, ClipTextTransformer};
use mirror_engine::direction::{
    DirectionSource, EditPhrase, build_direction, compute_direction, compute_means,
    find_edit_phrase, load_direction, read_sentence_file, save_direction, template_bank,
};
use mirror_engine::loader;
use mirror_engine::tokenizer::ClipTokenizer;

struct TextModel {
    tokenizer: ClipTokenizer,
    encoder: ClipTextTransformer,
}

fn text_model(fx: &common::Fixtures) -> TextModel {
    let folder = loader::source::open_diffusers_folder(&fx.model_dir()).expect("model folder");
    let tokenizer = ClipTokenizer::from_dir(&folder.tokenizer_dir).expect("tokenizer");
    let cfg = ClipTextConfig::from_file(&folder.text_encoder.config).expect("config");
    assert_eq!(cfg.hidden_size, fx.text_hidden_size());
    let vb = folder
        .text_encoder
        .open_weights()
        .expect("text encoder weights")
        .var_builder_mapped(
            Arc::new(loader::ldm_names::diffusers_text_encoder_map()),
            DType::F32,
            &common::test_device(),
        );
    let encoder = ClipTextTransformer::new(vb, &cfg).expect("text encoder");
    TextModel { tokenizer, encoder }
}

fn never() -> bool {
    false
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-direction-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.squeeze(0).unwrap().to_vec2::<f32>().unwrap()
}

#[test]
fn fixture_templates_match_reference() {
    let fx = common::Fixtures::load();
    let m = text_model(&fx);
    let fixture = fx.fixture("edit_direction");
    let settings = fx.settings("edit_direction");
    let (source, target) = (
        settings["source"].as_str().unwrap(),
        settings["target"].as_str().unwrap(),
    );
    let templates: Vec<&str> = fixture["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(!templates.is_empty(), "edit_direction: no templates");
    let fill =
        |word: &str| -> Vec<String> { templates.iter().map(|t| t.replace("{}", word)).collect() };
    let (src, tgt) = (fill(source), fill(target));
    // Batches of 3 so that the last batch is partial.
    let means = compute_means(
        &m.tokenizer,
        &m.encoder,
        &common::test_device(),
        &src,
        &tgt,
        3,
        &never,
    )
    .unwrap();
    let e_dir = fx.assert_close("edit_direction", "edit_dir", &means.delta);
    let e_src = fx.assert_close("edit_direction", "mean_source", &means.mean_source);
    let e_tgt = fx.assert_close("edit_direction", "mean_target", &means.mean_target);
    eprintln!("max errors: edit_dir {e_dir:.3e}, mean_source {e_src:.3e}, mean_target {e_tgt:.3e}");

    // The batch size does not change the result beyond rounding; row 0 is exactly zero.
    let one_batch = compute_direction(
        &m.tokenizer,
        &m.encoder,
        &common::test_device(),
        &src,
        &tgt,
        32,
        &never,
    )
    .unwrap();
    let diff = (&one_batch - &means.delta)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    assert!(rows(&one_batch)[0].iter().all(|v| v.to_bits() == 0));
}

#[test]
fn phrase_detection_table() {
    // (source prompt, target prompt, source phrase, target phrase, prefix, suffix)
    let cases = [
        (
            "a cat sitting on a sofa",
            "a dog sitting on a sofa",
            "cat",
            "dog",
            "a",
            "sitting on a sofa",
        ),
        (
            "a photo of a man",
            "a photo of an old woman",
            "man",
            "old woman",
            "a photo of",
            "",
        ),
        ("a man", "an old woman", "man", "old woman", "", ""),
        (
            "a cat",
            "a cat wearing glasses",
            "",
            "wearing glasses",
            "a cat",
            "",
        ),
        (
            "a cat wearing glasses",
            "a cat",
            "wearing glasses",
            "",
            "a cat",
            "",
        ),
        (
            "a photo of a cat",
            "an oil painting of a cat",
            "photo",
            "oil painting",
            "",
            "of a cat",
        ),
        (
            "A Photo of a Cat.",
            "a photo of a dog.",
            "Cat",
            "dog",
            "A Photo of a",
            ".",
        ),
        (
            "a horse in a field",
            "a zebra in a field",
            "horse",
            "zebra",
            "a",
            "in a field",
        ),
        ("a cat", "a black cat", "", "black", "a", "cat"),
        ("two cats", "two dogs", "cats", "dogs", "two", ""),
        (
            "a cat, digital art",
            "a cat, oil painting",
            "digital art",
            "oil painting",
            "a cat ,",
            "",
        ),
    ];
    for (source, target, sp, tp, prefix, suffix) in cases {
        let p = find_edit_phrase(source, target).unwrap();
        assert_eq!(
            (
                p.source.as_str(),
                p.target.as_str(),
                p.prefix.as_str(),
                p.suffix.as_str()
            ),
            (sp, tp, prefix.replace(" ,", ",").as_str(), suffix),
            "{source:?} -> {target:?}"
        );
    }
    for (source, target) in [
        ("a cat", "a cat"),
        ("a cat", "A  cat"),
        ("", "a cat"),
        ("an apple", "a apple"),
    ] {
        assert!(
            matches!(
                find_edit_phrase(source, target),
                Err(EngineError::InvalidInput(_))
            ),
            "{source:?} -> {target:?} must be rejected"
        );
    }
}

/// The words of each pair differ exactly by the phrase: the pair's own diff gives it back.
fn assert_pairs_differ_by(pairs: &[(String, String)], source: &str, target: &str) {
    for (s, t) in pairs {
        let p = find_edit_phrase(s, t).unwrap();
        assert_eq!(
            (p.source.as_str(), p.target.as_str()),
            (source, target),
            "{s:?} / {t:?}"
        );
    }
}

fn phrase(source: &str, target: &str) -> EditPhrase {
    find_edit_phrase(source, target).unwrap()
}

#[test]
fn template_bank_is_large_unique_deterministic_and_paired() {
    let p = phrase("a cat sitting on a sofa", "a dog sitting on a sofa");
    let bank = template_bank(&p, 500);
    assert!(bank.len() >= 500, "{} pairs", bank.len());
    let unique: HashSet<_> = bank.iter().collect();
    assert_eq!(unique.len(), bank.len());
    let unique_sources: HashSet<_> = bank.iter().map(|(s, _)| s).collect();
    assert_eq!(unique_sources.len(), bank.len());
    assert_eq!(bank, template_bank(&p, 500));
    assert_eq!(
        bank[0],
        (
            "a cat sitting on a sofa".into(),
            "a dog sitting on a sofa".into()
        )
    );
    assert_pairs_differ_by(&bank, "cat", "dog");
    assert!(template_bank(&p, 2000).len() >= 2000);
    // A smaller bank is the start of a larger one.
    assert_eq!(template_bank(&p, 100)[..], bank[..100]);
}

#[test]
fn template_bank_articles() {
    let bank = template_bank(&phrase("a photo of a cat", "a photo of a dog"), 1000);
    let all: Vec<&String> = bank.iter().flat_map(|(s, t)| [s, t]).collect();
    assert!(all.iter().any(|s| s.contains("an old dog")));
    assert!(all.iter().any(|s| s.contains("a small cat")));
    for bad in [
        "a old",
        "an small",
        "a adorable",
        "an cat",
        "an dog",
        "a a ",
        "an a ",
    ] {
        assert!(!all.iter().any(|s| s.contains(bad)), "{bad:?} in the bank");
    }

    // Each side gets its own article.
    let bank = template_bank(&phrase("a man", "an old woman"), usize::MAX);
    assert_pairs_differ_by(&bank, "man", "old woman");
    assert!(
        bank.iter()
            .any(|(s, t)| s.ends_with("of a man") && t.ends_with("of an old woman"))
    );
    for bad in ["old old", "a old", "young old"] {
        assert!(
            !bank.iter().any(|(_, t)| t.contains(bad)),
            "{bad:?} in the bank"
        );
    }

    // Plurals and phrases with a determiner get no article.
    let bank = template_bank(&phrase("two cats", "two dogs"), usize::MAX);
    assert!(
        bank.iter()
            .all(|(s, _)| !s.contains("a two") && !s.contains("a cats"))
    );
    assert!(bank.iter().any(|(s, _)| s.contains("two small cats")));
    let bank = template_bank(&phrase("a photo of cats", "a photo of horses"), usize::MAX);
    assert!(
        bank.iter()
            .all(|(s, t)| !s.contains("a cats") && !t.contains("a horses"))
    );
    assert!(bank.iter().any(|(s, _)| s.contains("of small cats")));
}

#[test]
fn template_bank_additions_and_styles() {
    // Pure addition: the subject comes along on both sides.
    let bank = template_bank(&phrase("a cat", "a cat wearing glasses"), 500);
    assert!(bank.len() >= 500);
    let everything = template_bank(&phrase("a cat", "a cat wearing glasses"), usize::MAX);
    assert!(everything.len() > 2000);
    assert!(everything.contains(&(
        "a photo of a cat".into(),
        "a photo of a cat wearing glasses".into()
    )));
    assert_pairs_differ_by(&bank, "", "wearing glasses");

    // Medium change: "a {medium} of {subject}".
    let bank = template_bank(
        &phrase("a photo of a cat", "an oil painting of a cat"),
        usize::MAX,
    );
    assert!(bank.len() >= 500);
    assert!(
        bank.iter()
            .any(|(s, t)| s == "a photo of a woman" && t == "an oil painting of a woman")
    );
    assert!(
        bank.iter()
            .any(|(s, t)| s == "an old photo of a cat" && t == "an old oil painting of a cat")
    );
    for (s, t) in &bank {
        let p = find_edit_phrase(s, t).unwrap();
        assert_eq!(
            (p.source.as_str(), p.target.as_str()),
            ("photo", "oil painting"),
            "{s:?} / {t:?}"
        );
    }

    // Trailing phrase: accessory and a style tag.
    let bank = template_bank(
        &phrase("a man with a hat", "a man with an umbrella"),
        usize::MAX,
    );
    assert!(bank.len() >= 500);
    assert_pairs_differ_by(&bank, "hat", "umbrella");
    assert!(bank.iter().any(
        |(s, t)| s == "a photo of a man with a hat" && t == "a photo of a man with an umbrella"
    ));
    let bank = template_bank(&phrase("a cat", "a cat, digital art"), 500);
    assert!(bank.len() >= 500);
    assert!(bank.iter().all(|(s, t)| t == &format!("{s}, digital art")));

    // Modifier of the noun: grows to the noun phrase.
    let bank = template_bank(&phrase("a black cat", "a white cat"), usize::MAX);
    assert!(
        bank.iter().any(
            |(s, t)| s == "a photo of a small black cat" && t == "a photo of a small white cat"
        )
    );
    assert_pairs_differ_by(&bank, "black", "white");
    for (source, target) in [
        ("a cat sitting", "a cat sleeping"),
        ("a photo", "a sketch"),
        ("a", "a cat"),
    ] {
        assert!(
            template_bank(&phrase(source, target), 500).len() >= 500,
            "{source} -> {target}"
        );
    }
}

#[test]
fn templates_direction_row_zero_and_prompt_difference() {
    let fx = common::Fixtures::load();
    let m = text_model(&fx);
    let dir = build_direction(
        &m.tokenizer,
        &m.encoder,
        &common::test_device(),
        ("a cat sitting on a sofa", "a dog sitting on a sofa"),
        &DirectionSource::Templates { pairs: 500 },
        32,
        &never,
    )
    .unwrap();
    assert_eq!(
        dir.delta.dims(),
        &[1, m.tokenizer.max_length(), m.encoder.hidden_size()]
    );
    assert_eq!(
        (dir.source_phrase.as_str(), dir.target_phrase.as_str()),
        ("cat", "dog")
    );
    assert_eq!(dir.method, "templates");
    assert!(dir.sentences >= 1000);
    let r = rows(&dir.delta);
    assert!(
        r[0].iter().all(|v| v.to_bits() == 0),
        "row 0 must be exactly zero"
    );
    assert!(r[1..].iter().flatten().any(|v| *v != 0.0));
    let scaled = rows(&dir.scaled(2.0).unwrap());
    assert_eq!(scaled[5][3], 2.0 * r[5][3]);
    assert!(dir.scaled(f64::NAN).is_err());

    // Prompt difference: rows before the first differing token are exactly zero too.
    let diff = build_direction(
        &m.tokenizer,
        &m.encoder,
        &common::test_device(),
        ("a photo of a cat", "a photo of a dog"),
        &DirectionSource::PromptDifference,
        8,
        &never,
    )
    .unwrap();
    let r = rows(&diff.delta);
    // BOS and "a photo of a" (the unpadded encoding also holds EOS).
    let shared = m.tokenizer.encode_unpadded("a photo of a").unwrap().len() - 1;
    assert!(r[..shared].iter().flatten().all(|v| v.to_bits() == 0));
    assert!(r[shared].iter().any(|v| *v != 0.0));
    assert_eq!(
        (diff.method.as_str(), diff.sentences),
        ("prompt_difference", 2)
    );
}

#[test]
fn sentence_files_unpaired() {
    let fx = common::Fixtures::load();
    let m = text_model(&fx);
    let source_file = temp_path("source.txt");
    let target_file = temp_path("target.txt");
    std::fs::write(
        &source_file,
        "# cats\n\na cat on a sofa\n  a small cat  \n\n# end\na cat in the snow\n",
    )
    .unwrap();
    std::fs::write(
        &target_file,
        "\u{feff}a dog on a sofa\r\n#x\r\na small dog\r\n",
    )
    .unwrap();
    let source = read_sentence_file(&source_file).unwrap();
    let target = read_sentence_file(&target_file).unwrap();
    assert_eq!(
        source,
        ["a cat on a sofa", "a small cat", "a cat in the snow"]
    );
    assert_eq!(target, ["a dog on a sofa", "a small dog"]);

    let how = DirectionSource::Sentences { source, target };
    let dir = build_direction(
        &m.tokenizer,
        &m.encoder,
        &common::test_device(),
        ("a cat", "a dog"),
        &how,
        2,
        &never,
    )
    .unwrap();
    assert_eq!((dir.method.as_str(), dir.sentences), ("sentences", 5));
    assert!(rows(&dir.delta)[0].iter().all(|v| v.to_bits() == 0));

    let empty = temp_path("empty.txt");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    let err = read_sentence_file(&empty).unwrap_err();
    assert!(err.to_string().contains("empty.txt"), "{err}");
    let err = read_sentence_file(&temp_path("missing.txt")).unwrap_err();
    assert!(
        matches!(err, EngineError::Io { .. }) && err.to_string().contains("missing.txt"),
        "{err}"
    );
}

#[test]
fn cancellation() {
    let fx = common::Fixtures::load();
    let m = text_model(&fx);
    let p = phrase("a cat", "a dog");
    let (src, tgt): (Vec<String>, Vec<String>) = template_bank(&p, 100).into_iter().unzip();
    // Cancelled before anything ran, and after two batches.
    let err = compute_direction(
        &m.tokenizer,
        &m.encoder,
        &common::test_device(),
        &src,
        &tgt,
        16,
        &|| true,
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err}");
    let calls = Cell::new(0);
    let after_two = || {
        calls.set(calls.get() + 1);
        calls.get() > 2
    };
    let err = compute_direction(
        &m.tokenizer,
        &m.encoder,
        &common::test_device(),
        &src,
        &tgt,
        16,
        &after_two,
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err}");
    assert_eq!(calls.get(), 3);
}

#[test]
fn save_load_round_trip_and_errors() {
    let fx = common::Fixtures::load();
    let m = text_model(&fx);
    let dir = build_direction(
        &m.tokenizer,
        &m.encoder,
        &common::test_device(),
        ("a man", "an old woman"),
        &DirectionSource::Templates { pairs: 64 },
        32,
        &never,
    )
    .unwrap();
    let path = temp_path("man-to-woman.safetensors");
    let extra = vec![("text_encoder_sha256".to_string(), "abc123".to_string())];
    save_direction(&dir, &extra, &path).unwrap();
    let loaded = load_direction(&path, m.encoder.hidden_size()).unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(bits(&loaded.delta), bits(&dir.delta));
    assert_eq!(
        bits(loaded.mean_source.as_ref().unwrap()),
        bits(dir.mean_source.as_ref().unwrap())
    );
    assert_eq!(
        bits(loaded.mean_target.as_ref().unwrap()),
        bits(dir.mean_target.as_ref().unwrap())
    );
    assert_eq!(loaded.delta.dims(), dir.delta.dims());
    assert_eq!(
        (
            loaded.source_phrase.as_str(),
            loaded.target_phrase.as_str(),
            loaded.method.as_str(),
            loaded.sentences
        ),
        ("man", "old woman", "templates", dir.sentences)
    );
    assert_eq!(
        loaded
            .metadata
            .get("text_encoder_sha256")
            .map(String::as_str),
        Some("abc123")
    );
    // No temporary file left behind.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // Wrong hidden size: a typed error naming the file.
    let err = load_direction(&path, m.encoder.hidden_size() + 1).unwrap_err();
    assert!(matches!(err, EngineError::ShapeMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("man-to-woman.safetensors"),
        "{err}"
    );

    // Not a safetensors file, no edit_dir tensor, missing file.
    let hidden = m.encoder.hidden_size();
    let junk = temp_path("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let err = load_direction(&junk, hidden).unwrap_err();
    assert!(
        matches!(err, EngineError::CorruptSafetensors { .. }) && err.to_string().contains("junk"),
        "{err}"
    );
    let other = temp_path("other.safetensors");
    let t = Tensor::zeros(
        (1, m.tokenizer.max_length(), hidden),
        DType::F32,
        &common::test_device(),
    )
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("x".to_string(), t)]),
        &other,
    )
    .unwrap();
    let err = load_direction(&other, hidden).unwrap_err();
    assert!(
        matches!(err, EngineError::MissingTensor { .. }) && err.to_string().contains("other"),
        "{err}"
    );
    let err = load_direction(&temp_path("absent.safetensors"), hidden).unwrap_err();
    assert!(
        matches!(err, EngineError::Io { .. }) && err.to_string().contains("absent"),
        "{err}"
    );
}

/// Prints a few pairs of each layout (`cargo test --test direction -- --nocapture samples`).
#[test]
fn samples() {
    for (s, t) in [
        ("a cat sitting on a sofa", "a dog sitting on a sofa"),
        ("a man", "an old woman"),
        ("a cat", "a cat wearing glasses"),
        ("a photo of a cat", "an oil painting of a cat"),
        ("a man with a hat", "a man with an umbrella"),
        (
            "a cat in the style of van gogh",
            "a cat in the style of monet",
        ),
    ] {
        for (a, b) in template_bank(&phrase(s, t), 5) {
            eprintln!("{a:60} | {b}");
        }
    }
}
