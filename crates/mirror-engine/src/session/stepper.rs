//! The methods a request runs, each as a [`Stepper`]: what stays fixed over the schedule
//! and the state it carries from step to step, behind one `step(i)`.

use candle_core::Tensor;

use super::cache::CachedReconstruction;
use super::request::{DdimTranslation, TranslateRequest};
use crate::Result;
use crate::branch::{Branch, Method};
use crate::methods::attention_mask::{ChangedTokens, attention_mask};
use crate::methods::ddim::{self, DdimContexts, DdimInputs};
use crate::methods::mask::{
    DiffEditSettings, EditMask, MaskFinder, diffedit_mask, latent_mask, local_blend,
};
use crate::methods::mirror::{
    self, GuidanceBase, MirrorInputs, MirrorState, ReconstructionStart, ReconstructionStep,
    RecordedReconstruction,
};
use crate::methods::pix2pix_zero::{self, Pix2PixZeroInputs, Pix2PixZeroSettings};
use crate::model::StableDiffusion;
use crate::pipeline::stages::Trajectory;
use crate::pipeline::{CancelToken, LatentPair, MethodStep, StageContext, UnetCall};

/// What the steppers of one run borrow, built once.
pub(super) struct StepInputs {
    /// α·Δc (zeros when no branch uses it: word-swap DDIM).
    direction: Tensor,
    ddim_reconstruction: DdimContexts,
    ddim_translation: DdimContexts,
    pix2pix_zero: Pix2PixZeroSettings,
    /// E(""), when MirrorDiffusion's guidance is against the empty prompt.
    empty_prompt: Option<Tensor>,
}

impl StepInputs {
    pub fn new(
        sd: &StableDiffusion,
        req: &TranslateRequest,
        caption: &Tensor,
        direction: Option<&Tensor>,
    ) -> Result<Self> {
        let direction = match direction {
            Some(d) => d.clone(),
            None => caption.zeros_like()?,
        };
        let (ddim_reconstruction, ddim_translation) = ddim_contexts(sd, req, caption, &direction)?;
        let empty_prompt = (req.method == Method::Mirror
            && req.mirror.guidance_base == GuidanceBase::EmptyPrompt)
            .then(|| sd.encode_prompt(""))
            .transpose()?;
        Ok(Self {
            direction,
            ddim_reconstruction,
            ddim_translation,
            pix2pix_zero: Pix2PixZeroSettings {
                guidance_scale: req.mirror.guidance_scale,
                xa_guidance: req.mirror.xa_guidance,
            },
            empty_prompt,
        })
    }

    /// The request's method, then plain DDIM when it is compared (or is the method).
    /// `recorded`: a cached reconstruction for Mirror to replay instead of redescribing.
    pub fn steppers<'a>(
        &'a self,
        req: &'a TranslateRequest,
        trajectory: &'a Trajectory,
        caption: &'a Tensor,
        recorded: Option<&'a CachedReconstruction>,
    ) -> Vec<Stepper<'a>> {
        let start = trajectory.start();
        let mut steppers = Vec::new();
        match req.method {
            Method::Mirror => steppers.push(Stepper::Mirror {
                inputs: MirrorInputs {
                    settings: &req.mirror,
                    trajectory,
                    direction: &self.direction,
                    want_edit_maps: req.attention_maps,
                    empty_prompt: self.empty_prompt.as_ref(),
                },
                state: MirrorState::start(trajectory, caption),
                recorded,
                ahead: None,
            }),
            Method::Pix2PixZero => steppers.push(Stepper::Pix2PixZero {
                inputs: Pix2PixZeroInputs {
                    settings: &self.pix2pix_zero,
                    steps: req.steps,
                    caption,
                    direction: &self.direction,
                    want_edit_maps: req.attention_maps,
                },
                state: LatentPair::start(start),
            }),
            Method::Ddim => {}
        }
        if req.method == Method::Ddim || req.compare_ddim {
            steppers.push(Stepper::Ddim {
                inputs: DdimInputs {
                    steps: req.steps,
                    reconstruction: &self.ddim_reconstruction,
                    translation: &self.ddim_translation,
                    want_maps: req.attention_maps,
                },
                state: LatentPair::start(start),
            });
        }
        steppers
    }
}

/// One method's run through the schedule: what stays fixed, and the state it carries.
pub(super) enum Stepper<'a> {
    Mirror {
        inputs: MirrorInputs<'a>,
        state: MirrorState,
        recorded: Option<&'a CachedReconstruction>,
        /// The reconstruction of the coming step, when it was computed ahead.
        ahead: Option<Result<ReconstructionStep>>,
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

impl<'a> Stepper<'a> {
    /// Step `i`; with a `mask`, the translation outside it is put back on the reconstruction.
    pub fn step(
        &mut self,
        ctx: &StageContext,
        i: usize,
        mask: Option<&Tensor>,
    ) -> Result<MethodStep> {
        let mut out = match self {
            Stepper::Mirror {
                inputs,
                state,
                recorded,
                ahead,
            } => {
                let (next, out) = match ahead.take() {
                    Some(rec) => mirror::finish_step(ctx, inputs, state, i, rec?)?,
                    None => mirror::step(ctx, inputs, state, i, recorded_at(*recorded, i))?,
                };
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
        if let Some(mask) = mask {
            self.blend(mask, &mut out)?;
        }
        Ok(out)
    }

    /// The reconstruction of step `i + 1`, to compute while step `i` runs (Mirror only; its
    /// reconstruction never depends on the translation). Makes sure step `i`'s own
    /// reconstruction is known first (computed here at step 0). Hand the job's result back
    /// with [`Stepper::receive_ahead`] after step `i`.
    pub fn job_ahead(&mut self, ctx: &StageContext, i: usize) -> Option<ReconstructionJob<'a>> {
        let Stepper::Mirror {
            inputs,
            state,
            recorded,
            ahead,
        } = self
        else {
            return None;
        };
        if i + 1 >= inputs.trajectory.steps {
            return None;
        }
        let rec = ahead.get_or_insert_with(|| {
            let start = ReconstructionStart::of(state);
            mirror::reconstruction(ctx, inputs, &start, i, recorded_at(*recorded, i))
        });
        let start = ReconstructionStart::after(rec.as_ref().ok()?, inputs);
        Some(ReconstructionJob {
            inputs: *inputs,
            start,
            step: i + 1,
            recorded: recorded_at(*recorded, i + 1),
        })
    }

    /// Takes the result of the job [`Stepper::job_ahead`] gave, for the next step.
    pub fn receive_ahead(&mut self, rec: Result<ReconstructionStep>) {
        if let Stepper::Mirror { ahead, .. } = self {
            *ahead = Some(rec);
        }
    }

    /// The local blend of this step's translation (its carried latent and what the step
    /// reports), onto the reconstruction outside `mask`.
    fn blend(&mut self, mask: &Tensor, out: &mut MethodStep) -> Result<()> {
        let [rec_branch, edit_branch] = self.branches();
        let (rec, edit) = match self {
            Stepper::Mirror { state, .. } => (&state.rec_latent, &mut state.edit_latent),
            Stepper::Pix2PixZero { state, .. } | Stepper::Ddim { state, .. } => {
                (&state.reconstruction, &mut state.translation)
            }
        };
        *edit = local_blend(edit, rec, mask)?;
        let rec_x0 = out.branches.iter().find(|b| b.branch == rec_branch);
        let rec_x0 = rec_x0.map(|b| b.predicted_x0.clone());
        if let Some(b) = out.branches.iter_mut().find(|b| b.branch == edit_branch) {
            b.latent = edit.clone();
            if let Some(rec_x0) = rec_x0 {
                b.predicted_x0 = local_blend(&b.predicted_x0, &rec_x0, mask)?;
            }
        }
        Ok(())
    }

    /// The most UNet calls step `i` takes.
    pub fn unet_calls(&self, i: usize) -> usize {
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

    fn method(&self) -> Method {
        match self {
            Stepper::Mirror { .. } => Method::Mirror,
            Stepper::Pix2PixZero { .. } => Method::Pix2PixZero,
            Stepper::Ddim { .. } => Method::Ddim,
        }
    }

    pub fn branches(&self) -> [Branch; 2] {
        self.method().branches()
    }
}

/// Step `i` of a recorded reconstruction.
fn recorded_at(
    recorded: Option<&CachedReconstruction>,
    i: usize,
) -> Option<RecordedReconstruction<'_>> {
    recorded.map(|r| RecordedReconstruction {
        latent: &r.latents[i],
        embedding: &r.embeddings[i],
        losses: &r.losses[i],
        embedding_change: r.embedding_changes[i],
    })
}

/// A Mirror reconstruction computed ahead of its step, on another thread: what it needs,
/// owned or shared, so that it can run beside the current step.
pub(super) struct ReconstructionJob<'a> {
    inputs: MirrorInputs<'a>,
    start: ReconstructionStart,
    step: usize,
    recorded: Option<RecordedReconstruction<'a>>,
}

impl ReconstructionJob<'_> {
    /// Runs the reconstruction; also returns its UNet calls, for the progress of its step.
    pub fn run(
        self,
        sd: &StableDiffusion,
        cancel: &CancelToken,
    ) -> (Result<ReconstructionStep>, Vec<UnetCall>) {
        let calls = std::cell::RefCell::new(Vec::new());
        let record = |call| calls.borrow_mut().push(call);
        let ctx = StageContext::with_progress(sd, cancel, &record);
        let rec = mirror::reconstruction(&ctx, &self.inputs, &self.start, self.step, self.recorded);
        (rec, calls.into_inner())
    }
}

/// The request's edit mask on the latent grid, found (on the photo's latent, source caption
/// against the target prompt) or given; `None` for the whole picture.
pub(super) fn edit_mask(
    ctx: &StageContext,
    req: &TranslateRequest,
    z0: &Tensor,
    caption: &Tensor,
) -> Result<Option<Tensor>> {
    let (_, _, h, w) = z0.dims4()?;
    let mask = match &req.mask {
        EditMask::Whole => return Ok(None),
        EditMask::Found(MaskFinder::Attention) => {
            let target = ctx.sd.encode_prompt(&req.target_prompt)?;
            let ids = ctx.sd.tokenize(&[&req.source_prompt, &req.target_prompt])?;
            let ids = ids.to_vec2::<u32>()?;
            let changed = ChangedTokens::between(&ids[0], &ids[1], ctx.sd.tokenizer.eos_id());
            let settings = &req.mask_settings.attention;
            attention_mask(ctx, z0, (caption, &target), &changed, settings, req.seed)?
        }
        EditMask::Found(MaskFinder::DiffEdit) => {
            let target = ctx.sd.encode_prompt(&req.target_prompt)?;
            let settings = DiffEditSettings::default();
            diffedit_mask(ctx, z0, caption, &target, &settings, req.seed)?
        }
        EditMask::Given(image) => {
            let size = (req.image.width(), req.image.height());
            latent_mask(image, size, (h, w), z0.device())?
        }
    };
    Ok(Some(mask))
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
