//! The app with the real engine on a copy of the fixture model that carries a `mirror.json`
//! (kittest, no display): a word outside the model's vocabulary gets a message under the
//! prompt fields that names it and the words the model knows, and Run waits until it is gone;
//! the model's recommended settings fill the recommended variant, and the app says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod app_support;
#[path = "../crates/mirror-engine/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use app_support::{App, Wait, harness, ready, step_until};
use egui::{Key, Modifiers};
use egui_kittest::kittest::{NodeT, Queryable};
use mirror_diffusion::app::AppOptions;
use serde_json::json;

struct Setup {
    dir: PathBuf,
    caption: String,
    vocabulary: Vec<String>,
    edit: (String, String),
}

impl Setup {
    /// The fixture model copied with a `mirror.json`: the caption's words as vocabulary,
    /// recommended steps and guidance.
    fn new(name: &str) -> Self {
        let fx = common::Fixtures::load();
        let dir =
            std::env::temp_dir().join(format!("mirror-app-words-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        common::copy_tree(&fx.model_dir(), &dir.join("model"));
        let caption = fx.source_prompt();
        let vocabulary: Vec<String> = caption.split_whitespace().map(String::from).collect();
        let notes = json!({
            "recommended": {"steps": 3, "guidance_scale": 2.5},
            "vocabulary": vocabulary,
        });
        std::fs::write(dir.join("model/mirror.json"), notes.to_string()).unwrap();
        let e = fx.settings("edit_direction");
        let edit = (
            e["source"].as_str().expect("edit source").to_string(),
            e["target"].as_str().expect("edit target").to_string(),
        );
        assert!(caption.contains(&edit.0));
        let image = fx.test_image();
        std::fs::copy(&image, dir.join("image.png")).unwrap();
        Setup {
            dir,
            caption,
            vocabulary,
            edit,
        }
    }

    fn options(&self) -> AppOptions {
        AppOptions {
            model: Some(self.dir.join("model")),
            image: Some(self.dir.join("image.png")),
            settings_dir: Some(self.dir.join("config")),
            memory_only_cache: true,
            source_prompt: Some(String::new()),
            target_prompt: Some(String::new()),
            export_dir: Some(self.dir.join("exports")),
            ..Default::default()
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set_field(h: &mut App, label: &str, text: &str) {
    h.get_by_label(label).click();
    h.step();
    h.key_press_modifiers(Modifiers::COMMAND, Key::A);
    h.get_by_label(label).type_text(text);
    h.step();
    h.key_press(Key::Tab);
    h.step();
    h.step();
}

fn run_disabled(h: &App) -> bool {
    h.get_by_label("Run").accesskit_node().is_disabled()
}

#[test]
fn unknown_word_message_and_recommended_settings() {
    let setup = Setup::new("unknown");
    let mut h = harness(setup.options());
    ready(&mut h);
    step_until(&mut h, "the model's words", Wait::secs(60), |a| {
        a.state.model_words.is_some()
    });
    let run = &h.state().state.settings.run;
    assert_eq!(
        (run.steps, run.mirror.guidance_scale),
        (3, 2.5),
        "the model's values"
    );

    // A target with a word the model does not know: message before Run, Run disabled.
    let (source_word, _) = &setup.edit;
    let unknown = "zebra";
    let target = setup.caption.replace(source_word.as_str(), unknown);
    set_field(&mut h, "Source prompt", &setup.caption);
    set_field(&mut h, "Target prompt", &target);
    let message = format!("does not know the word \"{unknown}\"");
    let listed = format!(
        "{message}; the words it knows: {}.",
        setup.vocabulary.join(", ")
    );
    assert!(
        h.query_by_label_contains(&listed).is_some(),
        "a message naming the word and the words the model knows: {listed}"
    );
    assert!(run_disabled(&h), "Run waits while the word is there");
    // Ctrl+Enter refuses too, with the same message, and starts nothing.
    h.key_press_modifiers(Modifiers::COMMAND, Key::Enter);
    h.step();
    h.step();
    let s = &h.state().state;
    assert!(!s.progress.running);
    assert!(
        s.errors.iter().any(|e| e.contains(&message)),
        "{:?}",
        s.errors
    );
    h.state_mut().state.errors.clear();

    // Known words only: the message goes, Run is back.
    set_field(&mut h, "Target prompt", &setup.caption);
    assert!(h.query_by_label_contains(&message).is_none());
    assert!(!run_disabled(&h));

    // The status line and the advanced section say what the model recommends.
    let says = "This model recommends 3 steps, guidance 2.5";
    let count = |h: &App| h.query_all_by_label_contains(says).count();
    assert_eq!(count(&h), 1, "the status line");
    h.get_by_label("Advanced").click_accesskit();
    h.step();
    h.step();
    assert_eq!(count(&h), 2, "and the advanced section");
    let variant = h.get_by_label("MirrorDiffusion variant");
    assert_eq!(
        variant.accesskit_node().value().as_deref(),
        Some("recommended by the model"),
        "{variant:?}"
    );
}

/// A model that lists its own captions: the ready-made edits and the "More targets" hints
/// come from them; a prompt longer than the model reads is said under the prompts; the
/// Attention tab opens on the word the edit changes.
#[test]
fn edits_and_hints_from_the_models_captions_and_long_prompts() {
    let setup = Setup::new("captions");
    let (from, to) = &setup.edit;
    let other = setup.caption.replacen(from.as_str(), to.as_str(), 1);
    let notes = json!({
        "vocabulary": setup.vocabulary.iter().chain([to]).collect::<Vec<_>>(),
        "sentence_templates": [setup.caption.clone(), other.clone()],
    });
    std::fs::write(setup.dir.join("model/mirror.json"), notes.to_string()).unwrap();
    let mut h = harness(setup.options());
    ready(&mut h);
    step_until(&mut h, "the model's words", Wait::secs(60), |a| {
        a.state.model_words.is_some()
    });
    set_field(&mut h, "Source prompt", &setup.caption);
    set_field(&mut h, "Target prompt", &other);
    let edits = h.state().state.edits();
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert_eq!(edits[0].name, format!("{from} to {to}"));
    assert_eq!(
        (edits[0].source.as_str(), edits[0].target.as_str()),
        (setup.caption.as_str(), other.as_str())
    );

    // The words come back from the worker for each prompt change; the one for both prompts
    // names the edited word.
    step_until(&mut h, "the edited word", Wait::secs(30), |a| {
        a.state.attention.token.is_some()
    });
    let token = h.state().state.attention.token.clone();
    assert_eq!(token.map(|(_, w)| w), Some(from.clone()), "the edited word");

    let long = vec![setup.caption.as_str(); 40].join(" ");
    set_field(&mut h, "Target prompt", &long);
    assert!(
        h.query_by_label_contains("The target prompt is longer than the model reads")
            .is_some(),
        "a note under the prompts"
    );
    set_field(&mut h, "Target prompt", &other);
    assert!(
        h.query_by_label_contains("longer than the model reads")
            .is_none()
    );
}
