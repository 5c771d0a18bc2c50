//! One translation run, as named stages: check inputs, direction, invert or reuse, steps,
//! decode, dump. Every method's step returns its branches in one shape ([`MethodStep`]), so
//! the step loop records, previews and caches them all the same way.
//!
//! [`MethodStep`]: crate::pipeline::MethodStep

use std::time::Instant;

use candle_core::Tensor;

use super::cache::{CachedInversion, CachedReconstruction, InversionCache};
use super::direction::edit_direction;
use super::keys::{ModelIdentity, inversion_key, inversion_plan, reconstruction_key};
use super::preview::{Preview, decode_branches};
use super::progress::{Progress, RunEvents};
use super::request::{BranchImages, DdimTranslation, TranslateOutcome, TranslateRequest};
use super::stepper::{StepInputs, edit_mask};
use crate::branch::Method;
use crate::direction;
use crate::imageio::image_to_tensor;
use crate::methods::mask::{local_blend, pixel_mask};
use crate::model::{StableDiffusion, VAE_TILES_FALLBACK_NOTE};
use crate::pipeline::stages::{self, Trajectory, encode_image};
use crate::pipeline::{CancelToken, Event, Phase, StageContext, StepReport};
use crate::threads;
use crate::{EngineError, Result};

/// What every stage of one run reads: the model, the request, cancellation and the events.
struct Run<'a> {
    sd: &'a StableDiffusion,
    req: &'a TranslateRequest,
    cancel: &'a CancelToken,
    events: RunEvents<'a>,
}

impl Run<'_> {
    fn model(&self) -> ModelIdentity {
        ModelIdentity::of(self.sd)
    }

    fn note(&self, message: impl Into<String>) {
        self.events.emit(Event::Note(message.into()));
    }

    /// Says once per run that `auto` had to work the VAE in tiles; returns whether it has.
    fn note_tiles_fallback(&self, told: bool) -> bool {
        if told || !self.sd.vae_tiles_report().fell_back {
            return told;
        }
        self.note(VAE_TILES_FALLBACK_NOTE);
        true
    }

    /// A failed cache write costs a later re-edit its speed, never this run its result.
    fn note_cache_error(&self, result: Result<()>) {
        if let Err(e) = result {
            self.note(format!("could not write the inversion cache: {e}"));
        }
    }
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
    /// The recorded reconstruction, when it covers every step of this trajectory.
    fn replayable(&self) -> Option<&CachedReconstruction> {
        self.recorded
            .as_ref()
            .filter(|r| r.embeddings.len() == self.trajectory.steps)
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
    let run = Run {
        sd,
        req,
        cancel,
        events: RunEvents::new(events),
    };
    req.check_inputs(sd)?;
    sd.set_vae_tiles(req.vae_tiles);
    let prepared = prepare(&run, cache)?;
    let inversion = invert_or_reuse(&run, cache, &prepared)?;
    let told_tiles = run.note_tiles_fallback(false);
    let mut progress = Progress::default();
    let cancelled = match run_steps(&run, &prepared, &inversion, &mut progress) {
        Ok(()) => false,
        Err(EngineError::Cancelled) => true,
        Err(e) => return Err(e),
    };
    let images = if cancelled {
        BranchImages::default()
    } else {
        store_reconstruction(&run, cache, &inversion, &prepared, &mut progress);
        // Stage 5: the final latent of every branch as an image.
        let images = decode_branches(sd, req, &progress.latents, &run.events)?;
        keep_photo_outside_mask(req, &prepared.source, progress.mask.as_ref(), images)?
    };
    run.note_tiles_fallback(told_tiles);
    let dump = if req.record_dump {
        // Stage 6: every per-step tensor under its documented name.
        progress.dump_tensors(
            &inversion.trajectory.latents,
            &prepared.caption,
            prepared.direction.as_ref(),
        )?
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
        reused_reconstruction: inversion.replayable().is_some(),
        edit_phrase: prepared.edit_phrase,
        reports: progress.reports,
        dump,
        seconds: started.elapsed().as_secs_f64(),
        vae_tiles: sd.vae_tiles_report(),
        mask: progress.mask,
    })
}

/// Stage 5b: with an edit mask, every translation shows the photo itself outside the mask
/// (soft edges), so nothing outside changes by a single level, whatever the VAE's latents
/// carry across cells.
fn keep_photo_outside_mask(
    req: &TranslateRequest,
    source: &Tensor,
    mask: Option<&Tensor>,
    mut images: BranchImages,
) -> Result<BranchImages> {
    let Some(mask) = mask else {
        return Ok(images);
    };
    let pixels = pixel_mask(&req.mask, mask, &req.image)?;
    let over_photo = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
        t.as_ref()
            .map(|t| local_blend(t, source, &pixels))
            .transpose()
    };
    images.ddim_translation = over_photo(&images.ddim_translation)?;
    images.translation = if req.method == Method::Ddim {
        images.ddim_translation.clone()
    } else {
        over_photo(&images.translation)?
    };
    Ok(images)
}

/// Stage 2: the image and caption as tensors, and the edit direction.
fn prepare(run: &Run, cache: &mut InversionCache) -> Result<Prepared> {
    let (sd, req) = (run.sd, run.req);
    run.events.emit(Event::Phase {
        phase: Phase::Encode,
        steps: 0,
    });
    let source = image_to_tensor(&req.image, &sd.device)?;
    let caption = sd.encode_prompt(&req.source_prompt)?;
    let needs_direction = req.method != Method::Ddim
        || matches!(req.ddim_translation, DdimTranslation::Direction { .. });
    let (direction, edit_phrase) = if needs_direction {
        let (d, phrase) = edit_direction(sd, cache, req, run.cancel, &mut |e| run.events.emit(e))?;
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
    run: &Run,
    cache: &mut InversionCache,
    prepared: &Prepared,
) -> Result<Inversion> {
    let (sd, req) = (run.sd, run.req);
    let cached = if !req.use_cache {
        None
    } else if let Some(entry) = (req.method == Method::Mirror)
        .then(|| cache.get(&reconstruction_key(run.model(), req), &sd.device))
        .flatten()
    {
        Some(entry)
    } else {
        cache.get(&inversion_key(run.model(), req).key(), &sd.device)
    };
    let inversion = match cached {
        Some(c) => {
            run.note("re-using the cached inversion");
            Inversion {
                trajectory: c.trajectory,
                recorded: c.reconstruction,
                reused: true,
            }
        }
        None => {
            let (plan, posterior) = inversion_plan(req);
            let z0 = encode_image(sd, &prepared.source, posterior)?;
            let ctx = StageContext::new(sd, run.cancel);
            let trajectory = stages::invert(&ctx, &z0, &prepared.caption, &plan, &mut |e| {
                run.events.emit(e)
            })?;
            if req.use_cache {
                let entry = CachedInversion {
                    trajectory: trajectory.clone(),
                    caption: prepared.caption.clone(),
                    reconstruction: None,
                };
                run.note_cache_error(cache.put(&inversion_key(run.model(), req).key(), entry));
            }
            Inversion {
                trajectory,
                recorded: None,
                reused: false,
            }
        }
    };
    if inversion.replayable().is_some() {
        run.note("re-using the cached reconstruction (redescription skipped)");
    }
    Ok(inversion)
}

/// Stage 4: every method the request runs, step by step, with a report per step and a
/// [`StepWork`](crate::pipeline::StepWork) event after every UNet call.
fn run_steps(
    run: &Run,
    prepared: &Prepared,
    inversion: &Inversion,
    progress: &mut Progress,
) -> Result<()> {
    let (sd, req, n) = (run.sd, run.req, run.req.steps);
    let (caption, trajectory) = (&prepared.caption, &inversion.trajectory);
    let inputs = StepInputs::new(sd, req, caption, prepared.direction.as_ref())?;
    let recorded = inversion.replayable();
    let mut steppers = inputs.steppers(req, trajectory, caption, recorded);
    let z0 = &trajectory.latents[0];
    progress.mask = edit_mask(&StageContext::new(sd, run.cancel), req, z0, caption)?;
    let start = trajectory.start();
    for branch in steppers.iter().flat_map(|s| s.branches()) {
        progress.set_latent(branch, start);
    }
    let phase = match req.method {
        Method::Mirror if recorded.is_none() => Phase::Redescribe,
        _ => Phase::Translate,
    };
    run.events.emit(Event::Phase { phase, steps: n });

    let on_unet_call = |call| run.events.unet_call_done(call);
    let ctx = StageContext::with_progress(sd, run.cancel, &on_unet_call);
    let preview = Preview::new(sd, req)?;
    let (_, _, h, w) = z0.dims4()?;
    let overlap = threads::overlap_branches(h, w);
    // UNet calls of the reconstruction computed ahead, reported with the step they belong to.
    let mut calls_ahead = Vec::new();
    for i in 0..n {
        run.cancel.check()?;
        let expected = steppers.iter().map(|s| s.unet_calls(i)).sum();
        run.events.begin_step(i, n, expected);
        for call in calls_ahead.drain(..) {
            on_unet_call(call);
        }
        let timestep = sd.scheduler.timesteps(n)[i];
        let mut report = StepReport::new(req.method.name(), i, n, timestep);
        let job = match steppers.first_mut() {
            Some(first) if overlap => first.job_ahead(&ctx, i),
            _ => None,
        };
        let mut ahead = None;
        let steps = rayon::in_place_scope(|scope| {
            if let Some(job) = job {
                let (ahead, cancel) = (&mut ahead, run.cancel);
                scope.spawn(move |_| *ahead = Some(job.run(sd, cancel)));
            }
            let blends = req.mask_settings.blends_latents_at(i, n);
            let mask = progress.mask.as_ref().filter(|_| blends);
            steppers
                .iter_mut()
                .map(|stepper| stepper.step(&ctx, i, mask))
                .collect::<Result<Vec<_>>>()
        })?;
        if let (Some((rec, calls)), Some(first)) = (ahead, steppers.first_mut()) {
            first.receive_ahead(rec);
            calls_ahead = calls;
        }
        for step in steps {
            progress.record_step(&step, req.record_dump, start);
            report
                .branches
                .extend(preview.branches(&step, trajectory.target(i), i)?);
            report.redescription = report.redescription.or(step.redescription);
            report.guidance = report.guidance.or(step.guidance);
            report.edit_scale = report.edit_scale.or(step.edit_scale);
        }
        progress.reports.push(report.clone());
        progress.steps_done = i + 1;
        run.events.emit(Event::Step(Box::new(report)));
    }
    Ok(())
}

/// Stores the reconstruction a complete run redescribed, for re-edits.
fn store_reconstruction(
    run: &Run,
    cache: &mut InversionCache,
    inversion: &Inversion,
    prepared: &Prepared,
    progress: &mut Progress,
) {
    if !run.req.use_cache || inversion.replayable().is_some() {
        return;
    }
    if let Some(reconstruction) = progress.reconstruction.take() {
        let entry = CachedInversion {
            trajectory: inversion.trajectory.clone(),
            caption: prepared.caption.clone(),
            reconstruction: Some(reconstruction),
        };
        run.note_cache_error(cache.put(&reconstruction_key(run.model(), run.req), entry));
    }
}
