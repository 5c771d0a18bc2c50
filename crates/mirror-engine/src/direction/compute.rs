//! Δc = mean E(target sentences) − mean E(source sentences), over all 77 rows.
//! Ports: https://github.com/MirrorDiffusion/MirrorDiffusion/tree/db1babc (pinned).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use super::bank::template_bank;
use super::model_templates::model_template_pairs;
use super::phrase::find_edit_phrase;
use crate::clip::ClipTextTransformer;
use crate::tokenizer::ClipTokenizer;
use crate::{EngineError, Result};

/// Where the sentences for the two means come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectionSource {
    /// Paired template captions built from the phrase that differs between the prompts
    /// (at least `pairs` pairs, see [`template_bank`]).
    Templates {
        /// The least number of (source, target) pairs to encode; at least 1.
        pairs: usize,
    },
    /// The user's own sentences (e.g. from [`super::read_sentence_file`]); need not be paired.
    Sentences {
        /// Sentences describing the source concept.
        source: Vec<String>,
        /// Sentences describing the target concept.
        target: Vec<String>,
    },
    /// E(target prompt) − E(source prompt): no sentence set at all.
    PromptDifference,
    /// The model's own captions (its `mirror.json` `sentence_templates`), paired by
    /// [`model_template_pairs`]; the prompt difference when none holds the source phrase.
    ModelTemplates {
        /// The model's caption templates.
        templates: Vec<String>,
    },
}

/// A computed (or loaded) edit direction.
#[derive(Debug, Clone)]
pub struct EditDirection {
    /// Δc, `[1, 77, D]` f32.
    pub delta: Tensor,
    /// The phrase of the source prompt that the edit replaces (empty when unknown).
    pub source_phrase: String,
    /// The phrase that replaces it in the target prompt (empty when unknown).
    pub target_phrase: String,
    /// Sentences encoded, both sides together.
    pub sentences: usize,
    /// "templates", "model_templates", "sentences" or "prompt_difference" (also when model
    /// templates were asked for and none matched).
    pub method: String,
    /// μ_src and μ_tgt, `[1, 77, D]`, when known: Δ(a→b) = μ_b − μ_a mixes any two concepts.
    pub mean_source: Option<Tensor>,
    /// μ_tgt, see `mean_source`.
    pub mean_target: Option<Tensor>,
    /// Further file metadata (e.g. the text-encoder weights hash), as read back by
    /// [`super::load_direction`].
    pub metadata: BTreeMap<String, String>,
}

impl EditDirection {
    /// α · Δc: the edit-strength multiplier (1.0 = as computed; the pix2pix-zero demo offers 0–2).
    pub fn scaled(&self, strength: f64) -> Result<Tensor> {
        if !strength.is_finite() {
            return Err(EngineError::InvalidInput(format!(
                "edit strength must be a finite number, got {strength}"
            )));
        }
        Ok((&self.delta * strength)?)
    }

    /// Width D of the text embeddings (the last dimension of `delta`).
    pub fn hidden_size(&self) -> usize {
        self.delta.dims().last().copied().unwrap_or(0)
    }
}

/// The two means and their difference, each `[1, L, D]` f32 on `device`.
#[derive(Debug, Clone)]
pub struct DirectionMeans {
    /// Mean text embedding of the source sentences.
    pub mean_source: Tensor,
    /// Mean text embedding of the target sentences.
    pub mean_target: Tensor,
    /// `mean_target − mean_source`.
    pub delta: Tensor,
}

/// Δc for two sentence lists (see [`compute_means`]).
pub fn compute_direction(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextTransformer,
    device: &Device,
    source_sentences: &[String],
    target_sentences: &[String],
    batch: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<Tensor> {
    Ok(compute_means(
        tokenizer,
        encoder,
        device,
        source_sentences,
        target_sentences,
        batch,
        cancelled,
    )?
    .delta)
}

/// Encodes the sentences `batch` at a time (checking `cancelled` before each batch) and
/// averages the padded `[L, D]` hidden states of each side. Sums are kept in f64 on the CPU, so
/// rows that are the same for every sentence (BOS, and any shared leading tokens) average to
/// the same value on both sides; those rows of Δc are then set to exactly 0, which they are
/// mathematically (the encoder is causal), even where kernels vary by batch shape.
pub fn compute_means(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextTransformer,
    device: &Device,
    source_sentences: &[String],
    target_sentences: &[String],
    batch: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<DirectionMeans> {
    if source_sentences.is_empty() || target_sentences.is_empty() {
        return Err(EngineError::InvalidInput(format!(
            "edit direction needs sentences on both sides ({} source, {} target)",
            source_sentences.len(),
            target_sentences.len()
        )));
    }
    if batch == 0 {
        return Err(EngineError::InvalidInput(
            "edit direction batch size must be at least 1".into(),
        ));
    }
    let source_ids = token_ids(tokenizer, source_sentences)?;
    let target_ids = token_ids(tokenizer, target_sentences)?;
    let seq_len = tokenizer.max_length();

    let (source_sum, hidden) =
        encoded_sum(encoder, device, &source_ids, seq_len, batch, cancelled)?;
    let (target_sum, _) = encoded_sum(encoder, device, &target_ids, seq_len, batch, cancelled)?;

    let mean = |sum: &[f64], n: usize| -> Vec<f64> { sum.iter().map(|s| s / n as f64).collect() };
    let mean_source = mean(&source_sum, source_ids.len());
    let mean_target = mean(&target_sum, target_ids.len());
    let mut delta: Vec<f64> = mean_target
        .iter()
        .zip(&mean_source)
        .map(|(t, s)| t - s)
        .collect();
    let shared_rows = shared_token_prefix(source_ids.iter().chain(&target_ids));
    delta[..shared_rows * hidden].fill(0.0);
    if delta.iter().any(|v| !v.is_finite()) {
        return Err(EngineError::NonFinite {
            what: "edit direction (text encoder output)".into(),
        });
    }

    let to_tensor = |values: Vec<f64>| -> Result<Tensor> {
        let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
        Ok(Tensor::from_vec(values, (1, seq_len, hidden), device)?)
    };
    Ok(DirectionMeans {
        mean_source: to_tensor(mean_source)?,
        mean_target: to_tensor(mean_target)?,
        delta: to_tensor(delta)?,
    })
}

fn token_ids(tokenizer: &ClipTokenizer, sentences: &[String]) -> Result<Vec<Vec<u32>>> {
    sentences.iter().map(|s| tokenizer.encode(s)).collect()
}

/// Sum over sentences of the encoder output, flattened `[L · D]` f64, and D.
fn encoded_sum(
    encoder: &ClipTextTransformer,
    device: &Device,
    ids: &[Vec<u32>],
    seq_len: usize,
    batch: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<(Vec<f64>, usize)> {
    let hidden = encoder.hidden_size();
    let mut sum = vec![0f64; seq_len * hidden];
    for chunk in ids.chunks(batch) {
        if cancelled() {
            return Err(EngineError::Cancelled);
        }
        let flat: Vec<u32> = chunk.concat();
        let input = Tensor::from_vec(flat, (chunk.len(), seq_len), device)?;
        let output = encoder.forward(&input)?;
        let batch_sum = output
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .sum(0)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        if batch_sum.len() != sum.len() {
            return Err(EngineError::InvalidInput(format!(
                "text encoder returned {} values per sentence, expected {seq_len} × {hidden}",
                batch_sum.len()
            )));
        }
        for (acc, v) in sum.iter_mut().zip(batch_sum) {
            *acc += v;
        }
    }
    Ok((sum, hidden))
}

/// Number of leading token positions on which every sequence agrees (at least BOS).
fn shared_token_prefix<'a>(mut ids: impl Iterator<Item = &'a Vec<u32>>) -> usize {
    let Some(first) = ids.next() else { return 0 };
    ids.fold(first.len(), |shared, seq| {
        first
            .iter()
            .zip(seq)
            .take(shared)
            .take_while(|(a, b)| a == b)
            .count()
    })
}

type Sides = (Vec<String>, Vec<String>, (String, String), &'static str);

fn prompt_difference(source_prompt: &str, target_prompt: &str) -> Result<Sides> {
    let phrase = find_edit_phrase(source_prompt, target_prompt)?;
    Ok((
        vec![source_prompt.to_string()],
        vec![target_prompt.to_string()],
        (phrase.source, phrase.target),
        "prompt_difference",
    ))
}

/// Builds the direction for the two prompts the user typed, `(source, target)`, by `how`.
pub fn build_direction(
    tokenizer: &ClipTokenizer,
    encoder: &ClipTextTransformer,
    device: &Device,
    (source_prompt, target_prompt): (&str, &str),
    how: &DirectionSource,
    batch: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<EditDirection> {
    let (source, target, phrases, method) = match how {
        DirectionSource::Templates { pairs } => {
            if *pairs == 0 {
                return Err(EngineError::InvalidInput(
                    "template edit direction needs at least one sentence pair".into(),
                ));
            }
            let phrase = find_edit_phrase(source_prompt, target_prompt)?;
            let (source, target) = template_bank(&phrase, *pairs).into_iter().unzip();
            (source, target, (phrase.source, phrase.target), "templates")
        }
        DirectionSource::Sentences { source, target } => {
            // The prompts only label the direction here; they may be left empty or equal.
            let phrases = find_edit_phrase(source_prompt, target_prompt)
                .map(|p| (p.source, p.target))
                .unwrap_or_default();
            (source.clone(), target.clone(), phrases, "sentences")
        }
        DirectionSource::PromptDifference => prompt_difference(source_prompt, target_prompt)?,
        DirectionSource::ModelTemplates { templates } => {
            let phrase = find_edit_phrase(source_prompt, target_prompt)?;
            let pairs = model_template_pairs(&phrase, templates);
            if pairs.is_empty() {
                prompt_difference(source_prompt, target_prompt)?
            } else {
                let (source, target) = pairs.into_iter().unzip();
                (
                    source,
                    target,
                    (phrase.source, phrase.target),
                    "model_templates",
                )
            }
        }
    };
    let means = compute_means(
        tokenizer, encoder, device, &source, &target, batch, cancelled,
    )?;
    Ok(EditDirection {
        delta: means.delta,
        source_phrase: phrases.0,
        target_phrase: phrases.1,
        sentences: source.len() + target.len(),
        method: method.to_string(),
        mean_source: Some(means.mean_source),
        mean_target: Some(means.mean_target),
        metadata: BTreeMap::new(),
    })
}
