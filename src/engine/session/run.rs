//! One translation run: encode, invert (or reuse), then all branches step by step, decode.

use std::time::Instant;

use candle_core::Tensor;

use super::cache::{CacheKey, CachedInversion, CachedReconstruction, InversionCache};
use super::request::{
    BranchImages, DdimTranslation, DirectionChoice, Method, TranslateOutcome, TranslateRequest,
};
use crate::engine::direction::{self, DirectionSource};
use crate::engine::imageio::{image_to_tensor, pixel_hash};
use crate::engine::methods::ddim::{self, DdimContexts};
use crate::engine::methods::mirror::{self, MirrorPreset};
use crate::engine::methods::pix2pix_zero::{self, Pix2PixZeroSettings};
use crate::engine::model::StableDiffusion;
use crate::engine::pipeline::stages::{
    self, InversionGrid, KlRegularizer, Posterior, Trajectory, decode, encode_image, mse,
};
use crate::engine::pipeline::{
    Branch, BranchStep, CancelToken, Event, GuidanceReport, Phase, RedescriptionReport, StepReport,
    TokenHeatmaps,
};
use crate::engine::unet::AttentionMaps;
use crate::engine::{EngineError, Result};

/// The inversion a request needs: grid, regulariser and posterior follow the method/preset.
struct InversionPlan {
    grid: InversionGrid,
    kl: Option<KlRegularizer>,
    posterior: Posterior,
}

fn inversion_plan(req: &TranslateRequest) -> InversionPlan {
    let authors = req.preset() == MirrorPreset::Authors;
    InversionPlan {
        grid: if authors {
            InversionGrid::Authors
        } else {
            InversionGrid::Consistent
        },
        // Plain DDIM inverts without regulariser (algorithm.md §10.1).
        kl: (req.method != Method::Ddim).then(KlRegularizer::default),
        posterior: if authors {
            Posterior::Sample(req.seed)
        } else {
            Posterior::Mean
        },
    }
}

pub(super) fn inversion_key(sd: &StableDiffusion, req: &TranslateRequest) -> CacheKey {
    let plan = inversion_plan(req);
    let r = &req.mirror.redescribe;
    CacheKey {
        model: sd.info.fingerprint.clone(),
        image: pixel_hash(&req.image),
        caption: req.source_prompt.clone(),
        steps: req.steps,
        variant: format!(
            "{:?}|{:?}|{:?}|{}|redescribe {} {} {} {}",
            plan.grid,
            plan.kl,
            plan.posterior,
            req.method,
            r.iterations,
            r.lr,
            r.early_stop_base,
            r.early_stop_slope
        ),
    }
}

/// Everything the step loop accumulates.
#[derive(Default)]
struct Progress {
    reports: Vec<StepReport>,
    dump: Vec<(String, Vec<Tensor>)>,
    rec_cache: Option<CachedReconstruction>,
    latents: Vec<(Branch, Tensor)>,
    steps_done: usize,
}

impl Progress {
    fn record(&mut self, enabled: bool, name: &str, t: &Tensor) {
        if !enabled {
            return;
        }
        match self.dump.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(t.clone()),
            None => self.dump.push((name.to_string(), vec![t.clone()])),
        }
    }

    fn set_latent(&mut self, branch: Branch, t: &Tensor) {
        match self.latents.iter_mut().find(|(b, _)| *b == branch) {
            Some((_, l)) => *l = t.clone(),
            None => self.latents.push((branch, t.clone())),
        }
    }
}

pub(super) fn translate(
    sd: &StableDiffusion,
    cache: &mut InversionCache,
    req: &TranslateRequest,
    cancel: &CancelToken,
    events: &mut dyn FnMut(Event),
) -> Result<TranslateOutcome> {
    let started = Instant::now();
    let n = req.steps;
    sd.scheduler.check_num_inference_steps(n)?;
    if req.preset() == MirrorPreset::Authors && n < 3 {
        return Err(EngineError::InvalidInput(
            "the authors' preset needs at least 3 steps".into(),
        ));
    }
    if req.source_prompt.trim().is_empty() {
        return Err(EngineError::InvalidInput(
            "the source prompt (what the image shows) is empty".into(),
        ));
    }
    sd.check_image_size(req.image.width() as usize, req.image.height() as usize)?;

    events(Event::Phase {
        phase: Phase::Encode,
        steps: 0,
    });
    let source = image_to_tensor(&req.image, &sd.device)?;
    let caption = sd.encode_prompt(&req.source_prompt)?;
    let needs_direction = req.method != Method::Ddim
        || matches!(req.ddim_translation, DdimTranslation::Direction { .. });
    let (direction, edit_phrase) = if needs_direction {
        let (d, phrase) = edit_direction(sd, cache, req, cancel, events)?;
        (Some(d), phrase)
    } else {
        (
            None,
            direction::find_edit_phrase(&req.source_prompt, &req.target_prompt)
                .ok()
                .map(|p| (p.source, p.target)),
        )
    };

    // Invert once, edit many.
    let plan = inversion_plan(req);
    let key = inversion_key(sd, req).key();
    let cached = if req.use_cache {
        cache.get(&key, &sd.device)
    } else {
        None
    };
    let reused_inversion = cached.is_some();
    let (trajectory, cached_rec) = match cached {
        Some(c) => {
            events(Event::Note("re-using the cached inversion".into()));
            (c.trajectory, c.reconstruction)
        }
        None => {
            let z0 = encode_image(sd, &source, plan.posterior)?;
            let t = stages::invert(sd, &z0, &caption, n, plan.grid, plan.kl, cancel, events)?;
            if req.use_cache {
                let entry = CachedInversion {
                    trajectory: t.clone(),
                    caption: caption.clone(),
                    reconstruction: None,
                };
                if let Err(e) = cache.put(&key, entry) {
                    events(Event::Note(format!(
                        "could not write the inversion cache: {e}"
                    )));
                }
            }
            (t, None)
        }
    };
    let reused_reconstruction = cached_rec.as_ref().is_some_and(|r| r.embeddings.len() == n);
    if reused_reconstruction {
        events(Event::Note(
            "re-using the cached reconstruction (redescription skipped)".into(),
        ));
    }

    let mut progress = Progress::default();
    let outcome = step_loop(
        sd,
        req,
        &trajectory,
        &caption,
        direction.as_ref(),
        cached_rec.as_ref(),
        cancel,
        events,
        &mut progress,
    );
    let cancelled = match outcome {
        Ok(()) => false,
        Err(EngineError::Cancelled) => true,
        Err(e) => return Err(e),
    };
    if !cancelled && req.use_cache && !reused_reconstruction {
        if let Some(rec) = progress.rec_cache.take() {
            let entry = CachedInversion {
                trajectory: trajectory.clone(),
                caption: caption.clone(),
                reconstruction: Some(rec),
            };
            if let Err(e) = cache.put(&key, entry) {
                events(Event::Note(format!(
                    "could not write the inversion cache: {e}"
                )));
            }
        }
    }

    let mut images = BranchImages::default();
    if !cancelled {
        events(Event::Phase {
            phase: Phase::Decode,
            steps: progress.latents.len(),
        });
        for (branch, latent) in &progress.latents {
            let img = Some(decode(sd, latent)?);
            match branch {
                Branch::MirrorTranslation | Branch::Pix2PixZeroTranslation => {
                    images.translation = img
                }
                Branch::MirrorReconstruction | Branch::Pix2PixZeroReconstruction => {
                    images.reconstruction = img
                }
                Branch::DdimReconstruction => images.ddim_reconstruction = img,
                Branch::DdimTranslation => {
                    if req.method == Method::Ddim {
                        images.translation = img.clone();
                    }
                    images.ddim_translation = img
                }
            }
        }
        if req.method == Method::Ddim {
            images.reconstruction = images.ddim_reconstruction.clone();
        }
    }
    let mut dump = Vec::new();
    if req.record_dump {
        dump.push((
            "inversion.latents".to_string(),
            Tensor::stack(&trajectory.latents, 0)?,
        ));
        dump.push(("caption_embedding".to_string(), caption.clone()));
        if let Some(d) = &direction {
            dump.push(("edit_direction".to_string(), d.clone()));
        }
        for (name, tensors) in progress.dump {
            dump.push((name, Tensor::stack(&tensors, 0)?));
        }
    }
    Ok(TranslateOutcome {
        source,
        images,
        latents: progress.latents,
        cancelled,
        steps_done: progress.steps_done,
        reused_inversion,
        reused_reconstruction,
        edit_phrase,
        reports: progress.reports,
        dump,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// α·Δc and the phrase pair it was built around. Template and sentence directions are
/// cached (memory and disk) per model and sentences: encoding ~1000 sentences is the slowest
/// part of a short run at full size.
fn edit_direction(
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
        DirectionChoice::Templates { pairs } => DirectionSource::Templates { pairs: *pairs },
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
                &req.source_prompt,
                &req.target_prompt,
                &how,
                BATCH,
                &cancelled,
            )?;
            if req.use_cache {
                if let Err(e) = cache.put_direction(&key, &d) {
                    (events.borrow_mut())(Event::Note(format!(
                        "could not write the direction cache: {e}"
                    )));
                }
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

fn heatmaps(
    enabled: bool,
    maps: Option<&AttentionMaps>,
    tokens: usize,
) -> Result<Option<TokenHeatmaps>> {
    match (enabled, maps) {
        (true, Some(m)) => Ok(Some(TokenHeatmaps::from_attention(m, tokens)?)),
        _ => Ok(None),
    }
}

#[allow(clippy::too_many_arguments)]
fn step_loop(
    sd: &StableDiffusion,
    req: &TranslateRequest,
    trajectory: &Trajectory,
    caption: &Tensor,
    direction: Option<&Tensor>,
    cached_rec: Option<&CachedReconstruction>,
    cancel: &CancelToken,
    events: &mut dyn FnMut(Event),
    progress: &mut Progress,
) -> Result<()> {
    let n = req.steps;
    let timesteps = sd.scheduler.timesteps(n);
    let zero_direction;
    let direction = match direction {
        Some(d) => d,
        None => {
            zero_direction = caption.zeros_like()?;
            &zero_direction
        }
    };
    let tokens = sd
        .tokenizer
        .encode_unpadded(&req.source_prompt)?
        .len()
        .max(sd.tokenizer.encode_unpadded(&req.target_prompt)?.len())
        .min(sd.tokenizer.max_length());
    let run_ddim = req.method == Method::Ddim || req.compare_ddim;
    let ddim_rec_ctx = DdimContexts {
        cond: caption.clone(),
        uncond: None,
    };
    let ddim_edit_ctx = match req.ddim_translation {
        DdimTranslation::WordSwap { guidance } => DdimContexts {
            cond: sd.encode_prompt(&req.target_prompt)?,
            uncond: Some((sd.encode_prompt("")?, guidance)),
        },
        DdimTranslation::Direction { guidance } => DdimContexts {
            cond: (caption + direction)?,
            uncond: Some((caption.clone(), guidance)),
        },
    };
    let start = trajectory.start().clone();
    let mut mirror_state = mirror::MirrorState::start(trajectory, caption);
    let (mut ddim_rec, mut ddim_edit) = (start.clone(), start.clone());
    let (mut p2p_rec, mut p2p_edit) = (start.clone(), start.clone());
    let dump = req.record_dump;
    let phase = match req.method {
        Method::Mirror if cached_rec.is_none() => Phase::Redescribe,
        _ => Phase::Translate,
    };
    events(Event::Phase { phase, steps: n });
    let mut fresh_rec = CachedReconstruction {
        embeddings: Vec::new(),
        latents: vec![start.clone()],
        losses: Vec::new(),
        embedding_changes: Vec::new(),
    };
    for set in [Branch::MirrorReconstruction, Branch::MirrorTranslation] {
        if req.method == Method::Mirror {
            progress.set_latent(set, &start);
        }
    }
    for (i, &t) in timesteps.iter().enumerate() {
        cancel.check()?;
        let target = trajectory.target(i);
        let decode_now = req
            .decode_every
            .is_some_and(|k| k > 0 && ((i + 1) % k == 0 || i + 1 == n));
        let mut branches = Vec::new();
        let mut push = |branch: Branch,
                        latent: &Tensor,
                        pred_x0: &Tensor,
                        maps: Option<&AttentionMaps>|
         -> Result<()> {
            branches.push(BranchStep {
                branch,
                latent: latent.clone(),
                predicted_x0: pred_x0.clone(),
                mirror_error: Some(mse(latent, target)?),
                attention: heatmaps(req.attention_maps, maps, tokens)?,
                decoded: if decode_now {
                    Some(decode(sd, pred_x0)?)
                } else {
                    None
                },
            });
            Ok(())
        };
        let (mut redescription, mut guidance, mut edit_scale) = (None, None, None);
        match req.method {
            Method::Mirror => {
                let settings = &req.mirror;
                let rec = match cached_rec.filter(|c| c.embeddings.len() == n) {
                    Some(c) => {
                        let emb = &c.embeddings[i];
                        let (eps, maps) =
                            mirror::reconstruction_pass(sd, settings, &c.latents[i], emb, t)?;
                        let out = sd.scheduler.step(&eps, t, &c.latents[i], n)?;
                        mirror::ReconstructionStep {
                            timestep: t,
                            target_index: trajectory.target_index(i),
                            embedding: emb.clone(),
                            inner_losses: c.losses[i].clone(),
                            embedding_change: c.embedding_changes[i],
                            rec_eps: eps,
                            rec_pred_x0: out.pred_original_sample,
                            rec_latent: out.prev_sample,
                            rec_maps: maps,
                        }
                    }
                    None => mirror::reconstruct(
                        sd,
                        settings,
                        trajectory,
                        &mirror_state.rec_latent,
                        &mirror_state.embedding,
                        i,
                        cancel,
                    )?,
                };
                let edit = mirror::translate(
                    sd,
                    settings,
                    n,
                    i,
                    &rec.embedding,
                    &rec.rec_maps,
                    direction,
                    &mirror_state.edit_latent,
                    mirror_state.extra_done,
                    req.attention_maps,
                    cancel,
                )?;
                push(
                    Branch::MirrorReconstruction,
                    &rec.rec_latent,
                    &rec.rec_pred_x0,
                    Some(&rec.rec_maps),
                )?;
                push(
                    Branch::MirrorTranslation,
                    &edit.edit_latent,
                    &edit.edit_pred_x0,
                    edit.edit_maps.as_ref(),
                )?;
                redescription = Some(RedescriptionReport {
                    losses: rec.inner_losses.clone(),
                    target_index: rec.target_index,
                    embedding_change: rec.embedding_change,
                });
                guidance = Some(GuidanceReport {
                    loss: edit.loss_probs,
                    extra_loss: edit.extra_loss,
                    key_value_loss: edit.loss_keys.map(|k| k + edit.loss_values.unwrap_or(0.0)),
                    gradient_norm: edit.gradient_norm,
                });
                edit_scale = Some(edit.edit_scale);
                progress.record(dump, "mirror.embeddings", &rec.embedding);
                progress.record(dump, "mirror.rec_latents", &rec.rec_latent);
                progress.record(dump, "mirror.edit_latents", &edit.edit_latent);
                progress.record(dump, "mirror.edit_guided", &edit.edit_guided);
                let losses: Vec<f64> = (0..req.mirror.redescribe.iterations.max(1))
                    .map(|k| rec.inner_losses.get(k).copied().unwrap_or(f64::NAN))
                    .collect();
                progress.record(
                    dump,
                    "mirror.inner_losses",
                    &Tensor::new(losses, &sd.device)?,
                );
                progress.record(
                    dump,
                    "mirror.guidance_loss",
                    &Tensor::new(edit.loss_total, &sd.device)?,
                );
                fresh_rec.embeddings.push(rec.embedding.clone());
                fresh_rec.latents.push(rec.rec_latent.clone());
                fresh_rec.losses.push(rec.inner_losses.clone());
                fresh_rec.embedding_changes.push(rec.embedding_change);
                progress.set_latent(Branch::MirrorReconstruction, &rec.rec_latent);
                progress.set_latent(Branch::MirrorTranslation, &edit.edit_latent);
                mirror_state = mirror::MirrorState {
                    rec_latent: rec.rec_latent,
                    edit_latent: edit.edit_latent,
                    embedding: rec.embedding,
                    extra_done: edit.extra_done,
                };
            }
            Method::Pix2PixZero => {
                let settings = Pix2PixZeroSettings {
                    guidance_scale: req.mirror.guidance_scale,
                    xa_guidance: req.mirror.xa_guidance,
                };
                let s = pix2pix_zero::step(
                    sd,
                    &settings,
                    n,
                    i,
                    caption,
                    direction,
                    &p2p_rec,
                    &p2p_edit,
                    req.attention_maps,
                )?;
                push(
                    Branch::Pix2PixZeroReconstruction,
                    &s.rec_latent,
                    &s.rec_pred_x0,
                    Some(&s.rec_maps),
                )?;
                push(
                    Branch::Pix2PixZeroTranslation,
                    &s.edit_latent,
                    &s.edit_pred_x0,
                    s.edit_maps.as_ref(),
                )?;
                guidance = Some(GuidanceReport {
                    loss: s.loss,
                    ..Default::default()
                });
                progress.record(dump, "pix2pix_zero.rec_latents", &s.rec_latent);
                progress.record(dump, "pix2pix_zero.edit_latents", &s.edit_latent);
                progress.set_latent(Branch::Pix2PixZeroReconstruction, &s.rec_latent);
                progress.set_latent(Branch::Pix2PixZeroTranslation, &s.edit_latent);
                (p2p_rec, p2p_edit) = (s.rec_latent, s.edit_latent);
            }
            Method::Ddim => {}
        }
        if run_ddim {
            cancel.check()?;
            let r = ddim::step(sd, &ddim_rec, t, n, &ddim_rec_ctx, req.attention_maps)?;
            cancel.check()?;
            let e = ddim::step(sd, &ddim_edit, t, n, &ddim_edit_ctx, req.attention_maps)?;
            push(
                Branch::DdimReconstruction,
                &r.latent,
                &r.pred_x0,
                r.maps.as_ref(),
            )?;
            push(
                Branch::DdimTranslation,
                &e.latent,
                &e.pred_x0,
                e.maps.as_ref(),
            )?;
            progress.record(dump, "ddim.rec_latents", &r.latent);
            progress.record(dump, "ddim.edit_latents", &e.latent);
            progress.set_latent(Branch::DdimReconstruction, &r.latent);
            progress.set_latent(Branch::DdimTranslation, &e.latent);
            (ddim_rec, ddim_edit) = (r.latent, e.latent);
        }
        let report = StepReport {
            method: req.method.name(),
            step: i,
            total: n,
            timestep: t,
            branches,
            redescription,
            guidance,
            edit_scale,
        };
        progress.reports.push(report.clone());
        progress.steps_done = i + 1;
        events(Event::Step(Box::new(report)));
    }
    if req.method == Method::Mirror && cached_rec.is_none() {
        progress.rec_cache = Some(fresh_rec);
    }
    Ok(())
}
