//! One translation run, as named stages: check inputs, direction, invert or reuse, steps,
//! decode, dump. Every method's step returns its branches in one shape ([`MethodStep`]), so
//! the step loop records, previews and caches them all the same way.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use candle_core::Tensor;

use super::cache::{CacheKey, CachedInversion, CachedReconstruction, InversionCache};
use super::direction::edit_direction;
use super::request::{
    BranchImages, DdimTranslation, InversionChoice, Method, TranslateOutcome, TranslateRequest,
};
use crate::direction;
use crate::imageio::{image_to_tensor, pixel_hash};
use crate::methods::ddim::{self, DdimContexts, DdimInputs};
use crate::methods::mirror::{self, MirrorInputs, MirrorPreset, MirrorState};
use crate::methods::pix2pix_zero::{self, Pix2PixZeroInputs, Pix2PixZeroSettings};
use crate::model::{StableDiffusion, VAE_TILES_FALLBACK_NOTE};
use crate::pipeline::stages::{
    self, InversionGrid, InversionSettings, KlRegularizer, Posterior, Trajectory, decode,
    encode_image, mse,
};
use crate::pipeline::{
    Branch, BranchStep, CancelToken, Event, LatentPair, MethodStep, Phase, StageContext,
    StepReport, StepWork, TokenHeatmaps, UnetCall,
};
use crate::unet::AttentionMaps;
use crate::vae::VaeTiles;
use crate::{EngineError, Result};

/// The inversion a request needs: grid, regulariser and posterior follow the preset (and,
/// for plain DDIM, the inversion choice).
fn inversion_plan(req: &TranslateRequest) -> (InversionSettings, Posterior) {
    let authors = req.preset() == MirrorPreset::Authors;
    // Plain DDIM inverts without regulariser (algorithm.md §10.1) unless asked to share.
    let regularised = req.method != Method::Ddim || req.inversion == InversionChoice::Regularized;
    let settings = InversionSettings {
        steps: req.steps,
        grid: if authors {
            InversionGrid::Authors
        } else {
            InversionGrid::Consistent
        },
        kl: regularised.then(KlRegularizer::default),
    };
    let posterior = if authors {
        Posterior::Sample(req.seed)
    } else {
        Posterior::Mean
    };
    (settings, posterior)
}

/// The inversion's key: image, caption, steps, grid, regulariser, posterior and model only
/// (not the method), so that every method on one image shares it.
pub(super) fn inversion_key(sd: &StableDiffusion, req: &TranslateRequest) -> CacheKey {
    let (plan, posterior) = inversion_plan(req);
    CacheKey {
        model: sd.info.fingerprint.clone(),
        image: pixel_hash(&req.image),
        caption: req.source_prompt.clone(),
        steps: req.steps,
        variant: format!("{:?}|{:?}|{:?}", plan.grid, plan.kl, posterior)
            // A half-precision inversion is another trajectory (f32 keys stay as they were).
            + &forward_type_key(sd)
            // So is one from a tiled encode (whole-image keys stay as they were).
            + if req.vae_tiles == VaeTiles::On { "|vae tiles" } else { "" },
    }
}

/// `|forward f16` (or bf16) when forward passes run in a half type, else nothing.
fn forward_type_key(sd: &StableDiffusion) -> String {
    match sd.forward_dtype() {
        candle_core::DType::F32 => String::new(),
        dtype => format!("|forward {}", crate::device::dtype_word(dtype)),
    }
}

/// The Mirror reconstruction's key: the inversion's plus what redescription depends on.
fn reconstruction_key(sd: &StableDiffusion, req: &TranslateRequest) -> String {
    let mut key = inversion_key(sd, req);
    let r = &req.mirror.redescribe;
    key.variant.push_str(&format!(
        "|reconstruction {}|redescribe {} {} {} {}",
        req.preset(),
        r.iterations,
        r.lr,
        r.early_stop_base,
        r.early_stop_slope
    ));
    // The authors' reconstruction pass runs a (no-op) CFG with the guidance scale.
    if req.preset() == MirrorPreset::Authors {
        key.variant
            .push_str(&format!("|guidance {}", req.mirror.guidance_scale));
    }
    key.key()
}

/// The run's inputs as tensors.
struct Prepared {
    source: Tensor,
    caption: Tensor,
    /// α·Δc; `None` when no branch uses it (word-swap DDIM).
    direction: Option<Tensor>,
    edit_phrase: Option<(String, String)>,
}

/// The inversion a run starts from, and the reconstruction it may replay.
struct Inversion {
    trajectory: Trajectory,
    recorded: Option<CachedReconstruction>,
    reused: bool,
}

impl Inversion {
    fn replays_reconstruction(&self) -> bool {
        self.recorded
            .as_ref()
            .is_some_and(|r| r.embeddings.len() == self.trajectory.steps)
    }
}

/// Everything the step loop accumulates.
#[derive(Default)]
struct Progress {
    reports: Vec<StepReport>,
    dump: Vec<(String, Vec<Tensor>)>,
    /// The reconstruction a redescribing method built, for the cache.
    reconstruction: Option<CachedReconstruction>,
    latents: Vec<(Branch, Tensor)>,
    steps_done: usize,
}

impl Progress {
    fn record(&mut self, name: &str, t: &Tensor) {
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

    /// Keeps the redescribed embedding and reconstruction latent of a step.
    fn remember_reconstruction(&mut self, step: &MethodStep, start: &Tensor) {
        let (Some(embedding), Some(report), Some(rec)) = (
            &step.embedding,
            &step.redescription,
            step.branches.iter().find(|b| b.branch.is_reconstruction()),
        ) else {
            return;
        };
        let r = self
            .reconstruction
            .get_or_insert_with(|| CachedReconstruction {
                embeddings: Vec::new(),
                latents: vec![start.clone()],
                losses: Vec::new(),
                embedding_changes: Vec::new(),
            });
        r.embeddings.push(embedding.clone());
        r.latents.push(rec.latent.clone());
        r.losses.push(report.losses.clone());
        r.embedding_changes.push(report.embedding_change);
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
    check_inputs(sd, req)?;
    sd.set_vae_tiles(req.vae_tiles);
    let prepared = prepare(sd, cache, req, cancel, events)?;
    let inversion = invert_or_reuse(sd, cache, req, &prepared, cancel, events)?;
    let told_tiles = note_tiles_fallback(sd, false, events);
    let mut progress = Progress::default();
    let cancelled = match run_steps(
        sd,
        req,
        &prepared,
        &inversion,
        cancel,
        events,
        &mut progress,
    ) {
        Ok(()) => false,
        Err(EngineError::Cancelled) => true,
        Err(e) => return Err(e),
    };
    if !cancelled {
        store_reconstruction(sd, cache, req, &inversion, &prepared, &mut progress, events);
    }
    let images = if cancelled {
        BranchImages::default()
    } else {
        decode_branches(sd, req, &progress, events)?
    };
    note_tiles_fallback(sd, told_tiles, events);
    let dump = if req.record_dump {
        dump_tensors(&prepared, &inversion, std::mem::take(&mut progress.dump))?
    } else {
        Vec::new()
    };
    Ok(TranslateOutcome {
        source: prepared.source,
        images,
        latents: progress.latents,
        cancelled,
        steps_done: progress.steps_done,
        reused_inversion: inversion.reused,
        reused_reconstruction: inversion.replays_reconstruction(),
        edit_phrase: prepared.edit_phrase,
        reports: progress.reports,
        dump,
        seconds: started.elapsed().as_secs_f64(),
        vae_tiles: sd.vae_tiles_report(),
    })
}

/// Says once per run that `auto` had to work the VAE in tiles; returns whether it has said so.
fn note_tiles_fallback(sd: &StableDiffusion, told: bool, events: &mut dyn FnMut(Event)) -> bool {
    if told || !sd.vae_tiles_report().fell_back {
        return told;
    }
    events(Event::Note(VAE_TILES_FALLBACK_NOTE.into()));
    true
}

/// Stage 1: what a run cannot start without.
fn check_inputs(sd: &StableDiffusion, req: &TranslateRequest) -> Result<()> {
    sd.scheduler.check_num_inference_steps(req.steps)?;
    if req.preset() == MirrorPreset::Authors && req.steps < 3 {
        return Err(EngineError::InvalidInput(
            "the authors' preset needs at least 3 steps".into(),
        ));
    }
    if req.source_prompt.trim().is_empty() {
        return Err(EngineError::InvalidInput(
            "the source prompt (what the image shows) is empty".into(),
        ));
    }
    if !req.edit_strength.is_finite() {
        return Err(EngineError::InvalidInput(format!(
            "the edit strength must be a number, not {}",
            req.edit_strength
        )));
    }
    sd.check_image_size(req.image.width() as usize, req.image.height() as usize)
}

/// Stage 2: the image and caption as tensors, and the edit direction.
fn prepare(
    sd: &StableDiffusion,
    cache: &mut InversionCache,
    req: &TranslateRequest,
    cancel: &CancelToken,
    events: &mut dyn FnMut(Event),
) -> Result<Prepared> {
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
        let phrase = direction::find_edit_phrase(&req.source_prompt, &req.target_prompt)
            .ok()
            .map(|p| (p.source, p.target));
        (None, phrase)
    };
    Ok(Prepared {
        source,
        caption,
        direction,
        edit_phrase,
    })
}

/// Stage 3: invert once, edit many. A Mirror run also looks for the reconstruction an
/// earlier run recorded with the same redescription settings.
fn invert_or_reuse(
    sd: &StableDiffusion,
    cache: &mut InversionCache,
    req: &TranslateRequest,
    prepared: &Prepared,
    cancel: &CancelToken,
    events: &mut dyn FnMut(Event),
) -> Result<Inversion> {
    let cached = if !req.use_cache {
        None
    } else if let Some(entry) = (req.method == Method::Mirror)
        .then(|| cache.get(&reconstruction_key(sd, req), &sd.device))
        .flatten()
    {
        Some(entry)
    } else {
        cache.get(&inversion_key(sd, req).key(), &sd.device)
    };
    let inversion = match cached {
        Some(c) => {
            events(Event::Note("re-using the cached inversion".into()));
            Inversion {
                trajectory: c.trajectory,
                recorded: c.reconstruction,
                reused: true,
            }
        }
        None => {
            let (plan, posterior) = inversion_plan(req);
            let z0 = encode_image(sd, &prepared.source, posterior)?;
            let ctx = StageContext::new(sd, cancel);
            let trajectory = stages::invert(&ctx, &z0, &prepared.caption, &plan, events)?;
            if req.use_cache {
                let entry = CachedInversion {
                    trajectory: trajectory.clone(),
                    caption: prepared.caption.clone(),
                    reconstruction: None,
                };
                note_cache_error(cache.put(&inversion_key(sd, req).key(), entry), events);
            }
            Inversion {
                trajectory,
                recorded: None,
                reused: false,
            }
        }
    };
    if inversion.replays_reconstruction() {
        events(Event::Note(
            "re-using the cached reconstruction (redescription skipped)".into(),
        ));
    }
    Ok(inversion)
}

fn note_cache_error(result: Result<()>, events: &mut dyn FnMut(Event)) {
    if let Err(e) = result {
        events(Event::Note(format!(
            "could not write the inversion cache: {e}"
        )));
    }
}

/// One method's run through the schedule: what stays fixed, and the state it carries.
enum Stepper<'a> {
    Mirror {
        inputs: MirrorInputs<'a>,
        state: MirrorState,
        recorded: Option<&'a CachedReconstruction>,
    },
    Pix2PixZero {
        inputs: Pix2PixZeroInputs<'a>,
        state: LatentPair,
    },
    Ddim {
        inputs: DdimInputs<'a>,
        state: LatentPair,
    },
}

impl Stepper<'_> {
    fn step(&mut self, ctx: &StageContext, i: usize) -> Result<MethodStep> {
        let out = match self {
            Stepper::Mirror {
                inputs,
                state,
                recorded,
            } => {
                let replay = recorded.map(|r| mirror::RecordedReconstruction {
                    latent: &r.latents[i],
                    embedding: &r.embeddings[i],
                    losses: &r.losses[i],
                    embedding_change: r.embedding_changes[i],
                });
                let (next, out) = mirror::step(ctx, inputs, state, i, replay)?;
                *state = next;
                out
            }
            Stepper::Pix2PixZero { inputs, state } => {
                let (next, out) = pix2pix_zero::step(ctx, inputs, state, i)?;
                *state = next;
                out
            }
            Stepper::Ddim { inputs, state } => {
                let (next, out) = ddim::step(ctx, inputs, state, i)?;
                *state = next;
                out
            }
        };
        Ok(out)
    }

    /// The most UNet calls step `i` takes.
    fn unet_calls(&self, i: usize) -> usize {
        match self {
            Stepper::Mirror {
                inputs, recorded, ..
            } => mirror::unet_calls(
                inputs.settings,
                inputs.trajectory.steps,
                i,
                recorded.is_some(),
            ),
            Stepper::Pix2PixZero { .. } => pix2pix_zero::UNET_CALLS_PER_STEP,
            Stepper::Ddim { .. } => ddim::UNET_CALLS_PER_STEP,
        }
    }

    fn branches(&self) -> [Branch; 2] {
        match self {
            Stepper::Mirror { .. } => [Branch::MirrorReconstruction, Branch::MirrorTranslation],
            Stepper::Pix2PixZero { .. } => [
                Branch::Pix2PixZeroReconstruction,
                Branch::Pix2PixZeroTranslation,
            ],
            Stepper::Ddim { .. } => [Branch::DdimReconstruction, Branch::DdimTranslation],
        }
    }
}

/// The plain DDIM contexts: the caption for the reconstruction; the target prompt (word
/// swap) or caption + α·Δc for the translation.
fn ddim_contexts(
    sd: &StableDiffusion,
    req: &TranslateRequest,
    caption: &Tensor,
    direction: &Tensor,
) -> Result<(DdimContexts, DdimContexts)> {
    let reconstruction = DdimContexts {
        cond: caption.clone(),
        uncond: None,
    };
    let translation = match req.ddim_translation {
        DdimTranslation::WordSwap { guidance } => DdimContexts {
            cond: sd.encode_prompt(&req.target_prompt)?,
            uncond: Some((sd.encode_prompt("")?, guidance)),
        },
        DdimTranslation::Direction { guidance } => DdimContexts {
            cond: (caption + direction)?,
            uncond: Some((caption.clone(), guidance)),
        },
    };
    Ok((reconstruction, translation))
}

/// Stage 4: every method the request runs, step by step, with a report per step and a
/// [`StepWork`] event after every UNet call.
fn run_steps(
    sd: &StableDiffusion,
    req: &TranslateRequest,
    prepared: &Prepared,
    inversion: &Inversion,
    cancel: &CancelToken,
    events: &mut dyn FnMut(Event),
    progress: &mut Progress,
) -> Result<()> {
    let n = req.steps;
    let (caption, trajectory) = (&prepared.caption, &inversion.trajectory);
    let direction = match &prepared.direction {
        Some(d) => d.clone(),
        None => caption.zeros_like()?,
    };
    let (ddim_rec, ddim_edit) = ddim_contexts(sd, req, caption, &direction)?;
    let p2p_settings = Pix2PixZeroSettings {
        guidance_scale: req.mirror.guidance_scale,
        xa_guidance: req.mirror.xa_guidance,
    };
    let start = trajectory.start();
    let recorded = inversion
        .replays_reconstruction()
        .then_some(inversion.recorded.as_ref())
        .flatten();
    let mut steppers = Vec::new();
    match req.method {
        Method::Mirror => steppers.push(Stepper::Mirror {
            inputs: MirrorInputs {
                settings: &req.mirror,
                trajectory,
                direction: &direction,
                want_edit_maps: req.attention_maps,
            },
            state: MirrorState::start(trajectory, caption),
            recorded,
        }),
        Method::Pix2PixZero => steppers.push(Stepper::Pix2PixZero {
            inputs: Pix2PixZeroInputs {
                settings: &p2p_settings,
                steps: n,
                caption,
                direction: &direction,
                want_edit_maps: req.attention_maps,
            },
            state: LatentPair::start(start),
        }),
        Method::Ddim => {}
    }
    if req.method == Method::Ddim || req.compare_ddim {
        steppers.push(Stepper::Ddim {
            inputs: DdimInputs {
                steps: n,
                reconstruction: &ddim_rec,
                translation: &ddim_edit,
                want_maps: req.attention_maps,
            },
            state: LatentPair::start(start),
        });
    }
    for branch in steppers.iter().flat_map(Stepper::branches) {
        progress.set_latent(branch, start);
    }
    let phase = match req.method {
        Method::Mirror if recorded.is_none() => Phase::Redescribe,
        _ => Phase::Translate,
    };
    events(Event::Phase { phase, steps: n });

    // StepWork after every UNet call: the stages tick `on_unet_call`, which needs the event
    // sink while the loop holds it too.
    let events = RefCell::new(events);
    let (current_step, expected, calls) = (Cell::new(0), Cell::new(0), Cell::new(0));
    let on_unet_call = |call: UnetCall| {
        calls.set(calls.get() + 1);
        (events.borrow_mut())(Event::StepWork(StepWork {
            step: current_step.get(),
            steps: n,
            unet_calls: calls.get(),
            unet_calls_expected: expected.get(),
            redescription: call.redescription,
        }));
    };
    let ctx = StageContext::with_progress(sd, cancel, &on_unet_call);
    let preview = Preview::new(sd, req)?;
    for i in 0..n {
        cancel.check()?;
        current_step.set(i);
        calls.set(0);
        expected.set(steppers.iter().map(|s| s.unet_calls(i)).sum());
        let mut report = StepReport {
            method: req.method.name(),
            step: i,
            total: n,
            timestep: sd.scheduler.timesteps(n)[i],
            branches: Vec::new(),
            redescription: None,
            guidance: None,
            edit_scale: None,
        };
        for stepper in &mut steppers {
            let step = stepper.step(&ctx, i)?;
            record_step(&step, req.record_dump, start, progress);
            report
                .branches
                .extend(preview.branches(&step, trajectory.target(i), i)?);
            report.redescription = report.redescription.or(step.redescription);
            report.guidance = report.guidance.or(step.guidance);
            report.edit_scale = report.edit_scale.or(step.edit_scale);
        }
        progress.reports.push(report.clone());
        progress.steps_done = i + 1;
        (events.borrow_mut())(Event::Step(Box::new(report)));
    }
    Ok(())
}

/// Final latents, dump tensors and the reconstruction for the cache, from any method's step.
fn record_step(step: &MethodStep, dump: bool, start: &Tensor, progress: &mut Progress) {
    for b in &step.branches {
        progress.set_latent(b.branch, &b.latent);
    }
    if dump {
        for (name, t) in &step.dump {
            progress.record(name, t);
        }
    }
    progress.remember_reconstruction(step, start);
}

/// How a step's branches become what the user sees: distance to the inversion, heat maps,
/// decoded previews.
struct Preview<'a> {
    sd: &'a StableDiffusion,
    req: &'a TranslateRequest,
    /// Tokens the heat maps cover (the longer prompt).
    tokens: usize,
}

impl<'a> Preview<'a> {
    fn new(sd: &'a StableDiffusion, req: &'a TranslateRequest) -> Result<Self> {
        let tokens = sd
            .tokenizer
            .encode_unpadded(&req.source_prompt)?
            .len()
            .max(sd.tokenizer.encode_unpadded(&req.target_prompt)?.len())
            .min(sd.tokenizer.max_length());
        Ok(Self { sd, req, tokens })
    }

    fn branches(&self, step: &MethodStep, target: &Tensor, i: usize) -> Result<Vec<BranchStep>> {
        let n = self.req.steps;
        let decode_now = self
            .req
            .decode_every
            .is_some_and(|k| k > 0 && ((i + 1).is_multiple_of(k) || i + 1 == n));
        step.branches
            .iter()
            .map(|b| {
                Ok(BranchStep {
                    branch: b.branch,
                    latent: b.latent.clone(),
                    predicted_x0: b.predicted_x0.clone(),
                    mirror_error: Some(mse(&b.latent, target)?),
                    attention: heatmaps(self.req.attention_maps, b.maps.as_ref(), self.tokens)?,
                    decoded: if decode_now {
                        Some(decode(self.sd, &b.predicted_x0)?)
                    } else {
                        None
                    },
                })
            })
            .collect()
    }
}

/// Stores the reconstruction a complete run redescribed, for re-edits.
fn store_reconstruction(
    sd: &StableDiffusion,
    cache: &mut InversionCache,
    req: &TranslateRequest,
    inversion: &Inversion,
    prepared: &Prepared,
    progress: &mut Progress,
    events: &mut dyn FnMut(Event),
) {
    if !req.use_cache || inversion.replays_reconstruction() {
        return;
    }
    if let Some(reconstruction) = progress.reconstruction.take() {
        let entry = CachedInversion {
            trajectory: inversion.trajectory.clone(),
            caption: prepared.caption.clone(),
            reconstruction: Some(reconstruction),
        };
        note_cache_error(cache.put(&reconstruction_key(sd, req), entry), events);
    }
}

/// Stage 5: the final latent of every branch as an image.
fn decode_branches(
    sd: &StableDiffusion,
    req: &TranslateRequest,
    progress: &Progress,
    events: &mut dyn FnMut(Event),
) -> Result<BranchImages> {
    events(Event::Phase {
        phase: Phase::Decode,
        steps: progress.latents.len(),
    });
    let mut images = BranchImages::default();
    for (branch, latent) in &progress.latents {
        let img = Some(decode(sd, latent)?);
        match branch {
            Branch::MirrorTranslation | Branch::Pix2PixZeroTranslation => images.translation = img,
            Branch::MirrorReconstruction | Branch::Pix2PixZeroReconstruction => {
                images.reconstruction = img
            }
            Branch::DdimReconstruction => images.ddim_reconstruction = img,
            Branch::DdimTranslation => images.ddim_translation = img,
        }
    }
    if req.method == Method::Ddim {
        images.translation = images.ddim_translation.clone();
        images.reconstruction = images.ddim_reconstruction.clone();
    }
    Ok(images)
}

/// Stage 6: every per-step tensor under its documented name, stacked over the steps.
fn dump_tensors(
    prepared: &Prepared,
    inversion: &Inversion,
    per_step: Vec<(String, Vec<Tensor>)>,
) -> Result<Vec<(String, Tensor)>> {
    let mut dump = vec![
        (
            "inversion.latents".to_string(),
            Tensor::stack(&inversion.trajectory.latents, 0)?,
        ),
        ("caption_embedding".to_string(), prepared.caption.clone()),
    ];
    if let Some(d) = &prepared.direction {
        dump.push(("edit_direction".to_string(), d.clone()));
    }
    for (name, tensors) in per_step {
        dump.push((name, Tensor::stack(&tensors, 0)?));
    }
    Ok(dump)
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
