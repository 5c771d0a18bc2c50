//! The edit direction of a run: α·Δc from a saved file, or built from templates (the model's
//! own captions when its `mirror.json` has them), sentences or the prompt difference, and
//! cached per model and sentences.

use candle_core::Tensor;

use super::cache::{CacheKey, InversionCache};
use super::request::{DirectionChoice, TranslateRequest};
use crate::Result;
use crate::direction::{self, DirectionSource, find_edit_phrase, model_template_pairs};
use crate::model::StableDiffusion;
use crate::pipeline::{CancelToken, Event};

/// α·Δc and the phrase pair it was built around. Template and sentence directions are
/// cached (memory and disk) per model and sentences: encoding ~1000 sentences is the slowest
/// part of a short run at full size.
pub(super) fn edit_direction(
    sd: &StableDiffusion,
    cache: &mut InversionCache,
    req: &TranslateRequest,
    cancel: &CancelToken,
    events: &mut dyn FnMut(Event),
) -> Result<(Tensor, Option<(String, String)>)> {
    let how = match &req.direction {
        DirectionChoice::File(path) => {
            let built = direction::load_direction(path, sd.text_encoder.hidden_size())?;
            let phrase = Some((built.source_phrase.clone(), built.target_phrase.clone()));
            return Ok((
                built.scaled(req.edit_strength)?.to_device(&sd.device)?,
                phrase,
            ));
        }
        // A model with its own captions gets its edit directions from them.
        DirectionChoice::Templates { pairs } => match sd.notes.templates() {
            Some(templates) => {
                model_template_note(req, templates, events)?;
                DirectionSource::ModelTemplates {
                    templates: templates.to_vec(),
                }
            }
            None => DirectionSource::Templates { pairs: *pairs },
        },
        DirectionChoice::Sentences { source, target } => DirectionSource::Sentences {
            source: source.clone(),
            target: target.clone(),
        },
        DirectionChoice::PromptDifference => DirectionSource::PromptDifference,
    };
    let key = direction_key(sd, req, &how);
    let cached = if req.use_cache {
        cache.get_direction(&key, sd.text_encoder.hidden_size())
    } else {
        None
    };
    let built = match cached {
        Some(d) => {
            events(Event::Note("re-using the cached edit direction".into()));
            d
        }
        None => {
            let total = match &how {
                DirectionSource::Templates { pairs } => 2 * pairs,
                DirectionSource::Sentences { source, target } => source.len() + target.len(),
                DirectionSource::PromptDifference => 2,
                DirectionSource::ModelTemplates { templates } => {
                    let phrase = find_edit_phrase(&req.source_prompt, &req.target_prompt)?;
                    (2 * model_template_pairs(&phrase, templates).len()).max(2)
                }
            };
            const BATCH: usize = 32;
            // The builder asks "cancelled?" before each batch: that is also its progress.
            let batches = std::cell::Cell::new(0usize);
            let events = std::cell::RefCell::new(&mut *events);
            let cancelled = || {
                let done = (batches.get() * BATCH).min(total);
                batches.set(batches.get() + 1);
                (events.borrow_mut())(Event::Direction { done, total });
                cancel.is_cancelled()
            };
            let d = direction::build_direction(
                &sd.tokenizer,
                &sd.text_encoder,
                &sd.device,
                (req.source_prompt.as_str(), req.target_prompt.as_str()),
                &how,
                BATCH,
                &cancelled,
            )?;
            if req.use_cache
                && let Err(e) = cache.put_direction(&key, &d)
            {
                (events.borrow_mut())(Event::Note(format!(
                    "could not write the direction cache: {e}"
                )));
            }
            d
        }
    };
    let phrase = Some((built.source_phrase.clone(), built.target_phrase.clone()));
    Ok((
        built.scaled(req.edit_strength)?.to_device(&sd.device)?,
        phrase,
    ))
}

/// Says where a direction from the model's own captions comes from: how many pairs, or that
/// none holds the edited words there and the prompt difference is used instead.
fn model_template_note(
    req: &TranslateRequest,
    templates: &[String],
    events: &mut dyn FnMut(Event),
) -> Result<()> {
    let phrase = find_edit_phrase(&req.source_prompt, &req.target_prompt)?;
    let pairs = model_template_pairs(&phrase, templates).len();
    events(Event::Note(if pairs == 0 {
        format!(
            "none of the model's sentences has \"{}\" where the source prompt has it: the \
             edit direction comes from the two prompts",
            phrase.source
        )
    } else {
        format!("edit direction from {pairs} pairs of the model's own sentences")
    }));
    Ok(())
}

fn direction_key(sd: &StableDiffusion, req: &TranslateRequest, how: &DirectionSource) -> String {
    let what = match how {
        DirectionSource::Templates { pairs } => {
            format!(
                "templates {pairs}|{}|{}",
                req.source_prompt, req.target_prompt
            )
        }
        DirectionSource::Sentences { source, target } => {
            format!("sentences|{}|{}", source.join("\n"), target.join("\n"))
        }
        DirectionSource::PromptDifference => {
            format!("prompts|{}|{}", req.source_prompt, req.target_prompt)
        }
        DirectionSource::ModelTemplates { templates } => format!(
            "model templates|{}|{}|{}",
            templates.join("\n"),
            req.source_prompt,
            req.target_prompt
        ),
    };
    CacheKey {
        model: sd.info.fingerprint.clone(),
        image: String::new(),
        caption: what,
        steps: 0,
        variant: "direction".into(),
    }
    .key()
}
