//! The loaded model's words and recommendations in the app. Read on a job thread once the
//! model is loaded (its `mirror.json` and tokenizer); a prompt with a word the model does not
//! know gets a message under the prompt fields and cannot run; the model's recommended
//! settings fill the recommended MirrorDiffusion variant.

use std::path::PathBuf;
use std::sync::Arc;

use super::MirrorApp;
use super::jobs::{JobKind, JobOutput};
use super::presets::{Edit, edits_for};
use super::state::AppState;
use mirror_engine::loader::Recommended;
use mirror_engine::methods::mirror::MirrorPreset;
use mirror_engine::model::ModelWords;

impl AppState {
    /// The prompts as a run would use them: source, target and the extra targets.
    fn prompts(&self) -> Vec<&str> {
        let s = &self.settings;
        let mut prompts = vec![s.source_prompt.as_str(), s.target_prompt.as_str()];
        prompts.extend(self.more_targets.lines());
        prompts
    }

    /// What to tell the user when a prompt holds words the loaded model does not know
    /// (naming them, and listing the words the model knows when it lists them).
    pub fn unknown_words_message(&self) -> Option<String> {
        let words = self.model_words.as_ref()?;
        let mut unknown: Vec<String> = Vec::new();
        for prompt in self.prompts() {
            for word in words.unknown_words(prompt).unwrap_or_default() {
                if !unknown.contains(&word) {
                    unknown.push(word);
                }
            }
        }
        if unknown.is_empty() {
            return None;
        }
        let message = words.message(&unknown);
        let mut chars = message.chars();
        let first = chars.next()?.to_uppercase();
        Some(format!("{first}{}.", chars.as_str()))
    }

    /// What to tell the user when a prompt is longer than the model reads.
    pub fn truncation_message(&self) -> Option<String> {
        let words = self.model_words.as_ref()?;
        let s = &self.settings;
        [("source", &s.source_prompt), ("target", &s.target_prompt)]
            .into_iter()
            .find_map(|(which, prompt)| {
                let cut = words.truncation(prompt).ok().flatten()?;
                Some(format!(
                    "The {which} prompt is longer than the model reads: it stops at {cut}."
                ))
            })
    }

    /// Ready-made edits for the loaded model (its own captions when it lists them).
    pub fn edits(&self) -> Vec<Edit> {
        let words = self.model_words.as_deref();
        edits_for(
            &self.settings.source_prompt,
            words.and_then(ModelWords::captions),
            |prompt| words.is_none_or(|w| w.unknown_words(prompt).is_ok_and(|u| u.is_empty())),
        )
    }

    /// Example lines for "More targets": other targets the loaded model can read.
    pub fn target_hints(&self) -> String {
        let target = &self.settings.target_prompt;
        let hints: Vec<String> = (self.edits().into_iter())
            .map(|e| e.target)
            .filter(|t| t != target)
            .take(2)
            .collect();
        if hints.is_empty() {
            "a photo of a fox\na photo of a tiger".into()
        } else {
            hints.join("\n")
        }
    }

    /// The loaded model's recommended settings, when it has any.
    pub fn model_recommends(&self) -> Option<&Recommended> {
        self.model_words
            .as_ref()
            .map(|w| &w.notes.recommended)
            .filter(|r| !r.is_empty())
    }
}

impl MirrorApp {
    /// Reads the notes and tokenizer of the model just loaded, on a job thread.
    pub(crate) fn read_model_words(&mut self, path: PathBuf) {
        self.state.model_words = None;
        self.jobs.spawn(JobKind::ReadingWords, move |_| {
            let words = ModelWords::for_model(&path)
                .map_err(|e| format!("Could not read the model's words:\n{e}"))?;
            Ok(JobOutput::ModelWords {
                path,
                words: Box::new(words),
            })
        });
    }

    /// Takes the words of the model still loaded; with the recommended variant chosen, its
    /// recommended settings too (steps given at start, e.g. by a script, still win).
    pub(crate) fn apply_model_words(&mut self, path: PathBuf, words: ModelWords) {
        if self.state.model_ready().is_none_or(|m| m.path != path) {
            return; // another model was loaded meanwhile
        }
        let words = Arc::new(words);
        self.state.model_words = Some(words.clone());
        let recommended = &words.notes.recommended;
        if !recommended.is_empty()
            && self.state.settings.run.mirror.preset == MirrorPreset::Recommended
        {
            self.state.settings.run.apply_recommended(recommended);
            if let Some(n) = self.steps_override {
                self.state.settings.run.steps = n;
            }
            self.state.note(format!(
                "This model recommends {}; the recommended variant uses them.",
                recommended.describe()
            ));
        }
        self.state.emit("model_words_ready");
    }
}
