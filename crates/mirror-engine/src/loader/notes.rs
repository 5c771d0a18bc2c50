//! `mirror.json`: what a model folder says about itself, next to `model_index.json`: a display
//! name, the settings it recommends, the words it knows and captions of its own grammar for
//! edit directions. Optional; every model is read the same way. Plain data: the session
//! puts the recommendations into a request (`TranslateRequest::apply_recommended`).
//!
//! ```json
//! { "name": "Mirror demo model",
//!   "recommended": { "steps": 25, "guidance_scale": 3.0, "direction": "templates" },
//!   "vocabulary": ["a", "on", "background", "red", "circle"],
//!   "sentence_templates": ["a red circle on a blue background"] }
//! ```

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{config_error, parse_json_object, read_text};
use crate::{EngineError, Result};

/// The file's name in a model folder.
pub const FILE_NAME: &str = "mirror.json";

/// Everything `mirror.json` may say; all of it optional. Read it with [`ModelNotes::parse`]
/// (which checks the values and names the field of an error), not with serde alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelNotes {
    /// A display name.
    pub name: Option<String>,
    /// The settings the model works best with.
    pub recommended: Recommended,
    /// The words the model knows (lowercase); `None`: whatever its tokenizer encodes.
    pub vocabulary: Option<Vec<String>>,
    /// Captions of the model's own grammar; edit directions are built from them.
    pub sentence_templates: Option<Vec<String>>,
}

/// How the recommended edit direction is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecommendedDirection {
    /// Template sentences (the model's own when it has them).
    Templates,
    /// The difference of the two prompts.
    Prompt,
}

/// What MirrorDiffusion's classifier-free guidance pushes the translation away from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuidanceBase {
    /// The photo's redescribed description C*ᵢ, as the paper and the released code: only what
    /// the edit changes is amplified.
    #[default]
    Description,
    /// The empty prompt, as text-to-image sampling and plain DDIM do: every word of the
    /// target is amplified, the unchanged ones too, which holds them on a model that binds
    /// each word to its region.
    EmptyPrompt,
}

impl std::str::FromStr for GuidanceBase {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "description" => Ok(GuidanceBase::Description),
            "empty" | "empty-prompt" => Ok(GuidanceBase::EmptyPrompt),
            other => Err(format!(
                "unknown guidance base `{other}` (expected description or empty)"
            )),
        }
    }
}

/// The model's recommended settings; a missing field keeps Mirror's own default. The names
/// are the request's settings as recipes and the CLI spell them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recommended {
    /// DDIM steps, shared by inversion and sampling.
    pub steps: Option<usize>,
    /// Classifier-free guidance of the translation branch.
    pub guidance_scale: Option<f64>,
    /// Learning rate of the cross-attention guidance on the latents.
    pub xa_guidance: Option<f64>,
    /// Share of the steps (from the first) with cross-attention guidance.
    pub xa_guidance_until: Option<f64>,
    /// Put the reconstruction on the inversion trajectory after every step (Direct Inversion).
    pub exact_mirror: Option<bool>,
    /// Multiplier α of the edit direction.
    pub edit_strength: Option<f64>,
    /// Base scale of the edit direction (MirrorDiffusion).
    pub edit_scale: Option<f64>,
    /// Total ramp added to the edit scale over the first two thirds of the steps (Preset R).
    pub ramp_total: Option<f64>,
    /// How the edit direction is built.
    pub direction: Option<RecommendedDirection>,
    /// Most redescription (Adam) iterations per step.
    pub redescribe_iterations: Option<usize>,
    /// Base learning rate of the redescription.
    pub redescribe_lr: Option<f64>,
    /// What MirrorDiffusion's guidance pushes away from.
    pub guidance_base: Option<GuidanceBase>,
    /// Share of the steps on which the translation reads the reconstruction's attention maps.
    pub inject_until: Option<f64>,
    /// With an edit mask: share of the steps on which the latents are blended back outside it.
    pub latent_blend_until: Option<f64>,
}

const TOP_FIELDS: &str = "name, recommended, vocabulary, sentence_templates";
const RECOMMENDED_FIELDS: &str = "steps, guidance_scale, xa_guidance, xa_guidance_until, \
     exact_mirror, edit_strength, edit_scale, ramp_total, direction, redescribe_iterations, \
     redescribe_lr, guidance_base, inject_until, latent_blend_until";

impl ModelNotes {
    /// Reads `mirror.json` of a model folder; a checkpoint file or a folder without one gives
    /// the empty notes. A broken file is an error naming it and the field.
    pub fn for_model(model_path: &Path) -> Result<Self> {
        let file = model_path.join(FILE_NAME);
        if !model_path.is_dir() || !file.exists() {
            return Ok(Self::default());
        }
        Self::parse(&read_text(&file)?, &file)
    }

    /// Parses the text of a `mirror.json` (`file` names it in errors).
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let mut notes = Self::default();
        for (key, value) in parse_json_object(text, file)? {
            match key.as_str() {
                "name" => notes.name = Some(field(file, &key, value)?),
                "recommended" => notes.recommended = Recommended::parse(file, value)?,
                "vocabulary" => {
                    let words: Vec<String> = field(file, &key, value)?;
                    notes.vocabulary = Some(check_words(file, &key, words)?);
                }
                "sentence_templates" => {
                    let sentences: Vec<String> = field(file, &key, value)?;
                    if sentences.iter().any(|s| s.trim().is_empty()) || sentences.is_empty() {
                        return Err(config_error(
                            file,
                            &key,
                            "expected a non-empty list of non-empty sentences",
                        ));
                    }
                    notes.sentence_templates = Some(sentences);
                }
                other => return Err(unknown_field(file, other, TOP_FIELDS)),
            }
        }
        Ok(notes)
    }

    /// The model's templates, if it has any.
    pub fn templates(&self) -> Option<&[String]> {
        self.sentence_templates.as_deref()
    }
}

impl Recommended {
    fn parse(file: &Path, value: Value) -> Result<Self> {
        let mut r = Self::default();
        for (key, value) in object(file, "recommended", value)? {
            let name = format!("recommended.{key}");
            match key.as_str() {
                "steps" => r.steps = Some(positive(file, &name, field(file, &name, value)?)?),
                "guidance_scale" => r.guidance_scale = Some(finite(file, &name, value)?),
                "xa_guidance" => r.xa_guidance = Some(finite(file, &name, value)?),
                "xa_guidance_until" => r.xa_guidance_until = Some(finite(file, &name, value)?),
                "exact_mirror" => r.exact_mirror = Some(field(file, &name, value)?),
                "edit_strength" => r.edit_strength = Some(finite(file, &name, value)?),
                "edit_scale" => r.edit_scale = Some(finite(file, &name, value)?),
                "ramp_total" => r.ramp_total = Some(finite(file, &name, value)?),
                "direction" => r.direction = Some(field(file, &name, value)?),
                "redescribe_iterations" => {
                    r.redescribe_iterations = Some(field(file, &name, value)?)
                }
                "redescribe_lr" => r.redescribe_lr = Some(finite(file, &name, value)?),
                "guidance_base" => r.guidance_base = Some(field(file, &name, value)?),
                "inject_until" => r.inject_until = Some(finite(file, &name, value)?),
                "latent_blend_until" => r.latent_blend_until = Some(finite(file, &name, value)?),
                other => {
                    return Err(unknown_field(
                        file,
                        &format!("recommended.{other}"),
                        RECOMMENDED_FIELDS,
                    ));
                }
            }
        }
        Ok(r)
    }

    /// Whether the model recommends anything at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The values in words, e.g. "25 steps, guidance 3, structure guidance 0.1".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.steps {
            parts.push(format!("{n} steps"));
        }
        let named = [
            ("guidance", self.guidance_scale),
            ("structure guidance", self.xa_guidance),
            ("structure guidance until", self.xa_guidance_until),
            ("strength", self.edit_strength),
            ("edit scale", self.edit_scale),
            ("edit ramp", self.ramp_total),
            ("redescription step size", self.redescribe_lr),
            ("layout held over", self.inject_until),
            ("latent blend over", self.latent_blend_until),
        ];
        for (name, value) in named {
            if let Some(v) = value {
                parts.push(format!("{name} {v}"));
            }
        }
        if self.exact_mirror == Some(true) {
            parts.push("exact mirror".into());
        }
        if let Some(k) = self.redescribe_iterations {
            parts.push(format!("{k} redescription iterations"));
        }
        if self.guidance_base == Some(GuidanceBase::EmptyPrompt) {
            parts.push("guidance against the empty prompt".into());
        }
        match self.direction {
            Some(RecommendedDirection::Templates) => parts.push("template directions".into()),
            Some(RecommendedDirection::Prompt) => parts.push("prompt-difference direction".into()),
            None => {}
        }
        parts.join(", ")
    }
}

fn unknown_field(file: &Path, field: &str, expected: &str) -> EngineError {
    config_error(
        file,
        field,
        format!("unknown field (expected one of: {expected})"),
    )
}

fn object(file: &Path, name: &str, value: Value) -> Result<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(config_error(
            file,
            name,
            format!("expected a JSON object, found {other}"),
        )),
    }
}

fn field<T: DeserializeOwned>(file: &Path, name: &str, value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| config_error(file, name, e.to_string()))
}

fn finite(file: &Path, name: &str, value: Value) -> Result<f64> {
    let v: f64 = field(file, name, value)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(config_error(file, name, format!("{v} is not a number")))
    }
}

fn positive(file: &Path, name: &str, n: usize) -> Result<usize> {
    if n == 0 {
        return Err(config_error(file, name, "must be at least 1"));
    }
    Ok(n)
}

/// Lowercase words, each a single word.
fn check_words(file: &Path, name: &str, words: Vec<String>) -> Result<Vec<String>> {
    if words.is_empty() {
        return Err(config_error(file, name, "the list is empty"));
    }
    words
        .into_iter()
        .map(|w| {
            let w = w.trim().to_lowercase();
            if w.is_empty() || w.contains(char::is_whitespace) {
                Err(config_error(
                    file,
                    name,
                    format!("{w:?} is not a single word"),
                ))
            } else {
                Ok(w)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelNotes> {
        ModelNotes::parse(text, Path::new("model/mirror.json"))
    }

    #[test]
    fn reads_every_field() {
        let notes = parse(
            r#"{"name": "demo", "recommended": {"steps": 25, "guidance_scale": 3.0,
               "direction": "prompt", "redescribe_iterations": 4},
               "vocabulary": ["A", "circle"], "sentence_templates": ["a circle"]}"#,
        )
        .unwrap();
        assert_eq!(notes.name.as_deref(), Some("demo"));
        assert_eq!(notes.recommended.steps, Some(25));
        assert_eq!(
            notes.recommended.direction,
            Some(RecommendedDirection::Prompt)
        );
        assert_eq!(notes.vocabulary, Some(vec!["a".into(), "circle".into()]));
        assert_eq!(notes.recommended.guidance_scale, Some(3.0));
        assert_eq!(notes.recommended.redescribe_iterations, Some(4));
        assert!(parse("{}").unwrap().recommended.is_empty());
    }

    #[test]
    fn describes_the_values_in_words() {
        let r = parse(r#"{"recommended": {"steps": 9, "edit_scale": 0.5, "direction": "prompt"}}"#)
            .unwrap()
            .recommended;
        assert_eq!(
            r.describe(),
            "9 steps, edit scale 0.5, prompt-difference direction"
        );
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let cases = [
            (r#"{"nmae": "x"}"#, "`nmae`"),
            (r#"{"recommended": {"stepz": 3}}"#, "`recommended.stepz`"),
            (
                r#"{"recommended": {"steps": "many"}}"#,
                "`recommended.steps`",
            ),
            (r#"{"recommended": {"steps": 0}}"#, "`recommended.steps`"),
            (
                r#"{"recommended": {"direction": "up"}}"#,
                "`recommended.direction`",
            ),
            (r#"{"vocabulary": ["two words"]}"#, "`vocabulary`"),
            (r#"{"sentence_templates": []}"#, "`sentence_templates`"),
            ("[1]", "whole file"),
            ("{", "whole file"),
        ];
        for (text, field) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains("model/mirror.json") && e.contains(field),
                "{text}: {e}"
            );
        }
    }
}
