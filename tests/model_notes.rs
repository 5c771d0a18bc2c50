//! A model folder's `mirror.json` on a copy of the fixture model: loaded with the model,
//! broken files named, unknown words found (by vocabulary and by the tokenizer), and edit
//! directions built from the model's own sentences, or from the prompts when none matches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

#[path = "../crates/mirror-engine/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{Fixtures, max_diff};
use mirror_engine::direction::{
    DirectionSource, build_direction, find_edit_phrase, model_template_pairs,
};
use mirror_engine::imageio::{ImageLimits, load_image};
use mirror_engine::loader::RecommendedDirection;
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::{CancelToken, Event};
use mirror_engine::session::{DirectionChoice, Method, Session, TranslateRequest};
use mirror_engine::tokenizer::ClipTokenizer;
use serde_json::json;

/// A writable copy of the fixture model in a fresh temp folder.
struct ModelCopy {
    root: PathBuf,
    model: PathBuf,
}

impl ModelCopy {
    fn new(fx: &Fixtures, name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("mirror-notes-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let model = root.join("model");
        common::copy_tree(&fx.model_dir(), &model);
        ModelCopy { root, model }
    }

    fn write_notes(&self, notes: &serde_json::Value) {
        std::fs::write(self.model.join("mirror.json"), notes.to_string()).unwrap();
    }

    fn load(&self) -> StableDiffusion {
        StableDiffusion::load(&self.model, &Device::Cpu).unwrap()
    }
}

impl Drop for ModelCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The fixtures' caption and edit: ("a photo of a cat", "cat", "dog") or whatever they are.
fn edit(fx: &Fixtures) -> (String, String, String) {
    let caption = fx.settings("inversion")["prompt"]
        .as_str()
        .expect("inversion prompt")
        .to_string();
    let e = fx.settings("edit_direction");
    let source = e["source"].as_str().expect("edit source").to_string();
    let target = e["target"].as_str().expect("edit target").to_string();
    assert!(caption.contains(&source), "{caption:?} lacks {source:?}");
    (caption, source, target)
}

fn words(prompt: &str) -> Vec<String> {
    prompt.split_whitespace().map(str::to_lowercase).collect()
}

#[test]
fn notes_load_with_the_model_and_broken_files_are_named() {
    let fx = Fixtures::load();
    let copy = ModelCopy::new(&fx, "load");
    assert!(
        copy.load().model_notes().recommended.is_empty(),
        "no file, no notes"
    );
    copy.write_notes(&json!({
        "name": "Test model",
        "recommended": {"steps": 7, "guidance_scale": 2.5, "direction": "prompt",
                        "redescribe_iterations": 3},
        "vocabulary": ["A", "photo"],
    }));
    let sd = copy.load();
    assert_eq!(sd.model_notes().name.as_deref(), Some("Test model"));
    assert_eq!(sd.recommended().steps, Some(7));
    assert_eq!(
        sd.recommended().direction,
        Some(RecommendedDirection::Prompt)
    );
    assert_eq!(
        sd.model_notes().vocabulary.as_deref(),
        Some(&["a".to_string(), "photo".to_string()][..])
    );
    for (notes, field) in [
        (
            json!({"recommended": {"guidance": 3}}),
            "recommended.guidance",
        ),
        (json!({"vocabulary": "a photo"}), "vocabulary"),
        (json!({"colour": 1}), "colour"),
    ] {
        copy.write_notes(&notes);
        let e = StableDiffusion::load(&copy.model, &Device::Cpu)
            .err()
            .expect("a broken mirror.json is an error")
            .to_string();
        assert!(
            e.contains("mirror.json") && e.contains(&format!("`{field}`")),
            "{notes}: {e}"
        );
    }
}

#[test]
fn unknown_words_by_vocabulary() {
    let fx = Fixtures::load();
    let (caption, source, target) = edit(&fx);
    let copy = ModelCopy::new(&fx, "vocabulary");
    copy.write_notes(&json!({ "vocabulary": words(&caption) }));
    let sd = copy.load();
    // Case and punctuation do not make a word unknown.
    let shouted = format!("{}!", caption.to_uppercase().replace(' ', " , "));
    assert_eq!(sd.unknown_words(&shouted).unwrap(), Vec::<String>::new());
    let edited = caption.replace(&source, &target);
    assert_eq!(sd.unknown_words(&edited).unwrap(), vec![target.clone()]);
    let e = sd
        .check_known_words(&[&caption, &edited])
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("\"{target}\"")), "{e}");
    assert!(
        e.contains(&words(&caption).join(", ")),
        "lists the known words: {e}"
    );
    // Without a vocabulary the full CLIP tokenizer of the fixture knows any word.
    let plain = StableDiffusion::load(&fx.model_dir(), &Device::Cpu).unwrap();
    assert!(plain.unknown_words("a xyzzyquux 123").unwrap().is_empty());
}

/// A tokenizer that knows "cat" as one token and the letters c, a, t (t only at a word's end).
fn small_tokenizer(dir: &Path) -> ClipTokenizer {
    std::fs::create_dir_all(dir).unwrap();
    let vocab = json!({"c": 0, "a": 1, "t</w>": 2, "ca": 3, "cat</w>": 4, "a</w>": 7,
                       "<|startoftext|>": 5, "<|endoftext|>": 6});
    std::fs::write(dir.join("vocab.json"), vocab.to_string()).unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\nc a\nca t</w>\n").unwrap();
    ClipTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt")).unwrap()
}

#[test]
fn unknown_words_by_tokenizer_pieces() {
    let dir = std::env::temp_dir().join(format!("mirror-notes-bpe-{}", std::process::id()));
    let tok = small_tokenizer(&dir);
    // "act" is a, c, t</w>: every piece is known, so the word is too.
    assert!(tok.unknown_words("Cat ACT", None).unwrap().is_empty());
    assert_eq!(
        tok.unknown_words("a cat, a dog, a dog", None).unwrap(),
        vec![",".to_string(), "dog".to_string()],
        "each unknown piece once, marks the tokenizer cannot encode included"
    );
    // With a vocabulary, words outside it are unknown even when the tokenizer has them.
    let vocabulary = vec!["cat".to_string()];
    assert_eq!(
        tok.unknown_words("CAT act", Some(&vocabulary)).unwrap(),
        vec!["act".to_string()]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Templates around the fixtures' caption: two that hold the source word where the caption
/// does (their edited versions are templates too), one with the word elsewhere, one without
/// it, and one with the target word.
fn templates(caption: &str, source: &str, target: &str) -> (Vec<String>, Vec<(String, String)>) {
    let swapped = |s: &str| s.replace(source, target);
    let longer = format!("{caption} on a table");
    let templates = vec![
        caption.to_string(),
        longer.clone(),
        format!("the {source} and {caption}"),
        caption.replace(source, "bird"),
        swapped(caption),
        swapped(&longer),
    ];
    let expected = vec![
        (caption.to_string(), swapped(caption)),
        (longer.clone(), swapped(&longer)),
    ];
    (templates, expected)
}

/// A short Mirror run on the copy; its dumped edit direction and its notes.
fn run_direction(sd: StableDiffusion, fx: &Fixtures, target: &str) -> (Tensor, Vec<String>) {
    let (caption, _, _) = edit(fx);
    let image = load_image(&fx.test_image(), &ImageLimits::default()).unwrap();
    let mut req = TranslateRequest::new(image.rgb, &caption, target);
    req.method = Method::Pix2PixZero;
    req.steps = 2;
    req.compare_ddim = false;
    req.record_dump = true;
    req.use_cache = false;
    req.direction = DirectionChoice::Templates { pairs: 64 };
    let mut session = Session::new(sd, None);
    let mut notes = Vec::new();
    let outcome = session
        .translate(&req, &CancelToken::new(), &mut |e| {
            if let Event::Note(n) = e {
                notes.push(n)
            }
        })
        .unwrap();
    let direction = outcome
        .dump
        .iter()
        .find(|(name, _)| name == "edit_direction")
        .expect("the dump holds the edit direction")
        .1
        .clone();
    (direction, notes)
}

#[test]
fn directions_come_from_the_model_templates() {
    let fx = Fixtures::load();
    let (caption, source, target) = edit(&fx);
    let (templates, expected) = templates(&caption, &source, &target);
    let target_prompt = caption.replace(&source, &target);
    let phrase = find_edit_phrase(&caption, &target_prompt).unwrap();
    assert_eq!(model_template_pairs(&phrase, &templates), expected);

    let copy = ModelCopy::new(&fx, "templates");
    copy.write_notes(&json!({ "sentence_templates": templates }));
    let sd = copy.load();
    let build = |how: &DirectionSource| {
        build_direction(
            &sd.tokenizer,
            &sd.text_encoder,
            &sd.device,
            (&caption, &target_prompt),
            how,
            32,
            &|| false,
        )
        .unwrap()
    };
    let own = build(&DirectionSource::ModelTemplates {
        templates: templates.clone(),
    });
    assert_eq!(own.method, "model_templates");
    assert_eq!(own.sentences, 2 * expected.len());
    let english = build(&DirectionSource::Templates { pairs: 64 });
    let english_size = max_diff(&english.delta, &english.delta.zeros_like().unwrap());
    assert!(
        max_diff(&own.delta, &english.delta) > 1e-3 * english_size,
        "the model's sentences give another direction than the English bank"
    );

    let (used, notes) = run_direction(sd, &fx, &target_prompt);
    assert!(
        max_diff(&used, &own.delta) <= 1e-6,
        "the run used the model-template direction"
    );
    assert!(
        notes.iter().any(|n| n.contains(&format!(
            "{} pairs of the model's own sentences",
            expected.len()
        ))),
        "{notes:?}"
    );
}

#[test]
fn no_matching_template_falls_back_to_the_prompts() {
    let fx = Fixtures::load();
    let (caption, source, target) = edit(&fx);
    let copy = ModelCopy::new(&fx, "fallback");
    // Sentences about other words only.
    let others = vec![caption.replace(&source, "bird"), "a red square".to_string()];
    copy.write_notes(&json!({ "sentence_templates": others }));
    let sd = copy.load();
    let target_prompt = caption.replace(&source, &target);
    let difference = build_direction(
        &sd.tokenizer,
        &sd.text_encoder,
        &sd.device,
        (&caption, &target_prompt),
        &DirectionSource::PromptDifference,
        32,
        &|| false,
    )
    .unwrap();
    let (used, notes) = run_direction(sd, &fx, &target_prompt);
    assert!(max_diff(&used, &difference.delta) <= 1e-6);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("edit direction comes from the two prompts")),
        "{notes:?}"
    );
}

/// `translate` without flags takes the model's recommended steps, guidance and strength (the
/// recipe in the output says so); flags still win.
#[test]
fn translate_takes_the_model_recommendations_and_flags_win() {
    let fx = Fixtures::load();
    let (caption, source, target) = edit(&fx);
    let copy = ModelCopy::new(&fx, "translate");
    copy.write_notes(&json!({
        "recommended": {"steps": 2, "guidance_scale": 2.5, "edit_strength": 0.75}
    }));
    let translate = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "translate".to_string(),
            "--model".into(),
            copy.model.display().to_string(),
            "--image".into(),
            fx.test_image().display().to_string(),
            "--source".into(),
            caption.clone(),
            "--target".into(),
            caption.replace(&source, &target),
            "--no-ddim".into(),
            "--no-cache".into(),
            "--direction".into(),
            "prompt".into(),
            "--out".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mirror-diffusion"))
            .args(&args)
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        let recipe = mirror_engine::recipe::read_recipe(out)
            .unwrap()
            .expect("a recipe in the output");
        (recipe, stderr)
    };
    let (recipe, stderr) = translate(&copy.root.join("a.png"), &[]);
    assert_eq!(
        (recipe.steps, recipe.guidance_scale, recipe.edit_strength),
        (2, 2.5, 0.75)
    );
    assert!(stderr.contains("the model recommends 2 steps"), "{stderr}");
    let (recipe, _) = translate(
        &copy.root.join("b.png"),
        &["--steps", "3", "--guidance", "4"],
    );
    assert_eq!(
        (recipe.steps, recipe.guidance_scale, recipe.edit_strength),
        (3, 4.0, 0.75)
    );
}
