//! What a run tells and keeps as it goes: [`RunEvents`], the one event sink every stage
//! shares (with the live UNet-call count of the current step), and [`Progress`], what the
//! step loop accumulates for the outcome and the cache.

use std::cell::{Cell, RefCell};

use candle_core::Tensor;

use super::cache::CachedReconstruction;
use crate::Result;
use crate::branch::Branch;
use crate::pipeline::{Event, MethodStep, StepReport, StepWork, UnetCall};

/// The caller's event callback, shareable: the stages tick [`RunEvents::unet_call_done`]
/// through a `&dyn Fn` while the step loop sends its own events, so the callback sits in a
/// `RefCell` and the step's count in a `Cell`.
pub(super) struct RunEvents<'a> {
    sink: RefCell<&'a mut dyn FnMut(Event)>,
    work: Cell<StepWork>,
}

impl<'a> RunEvents<'a> {
    pub fn new(sink: &'a mut dyn FnMut(Event)) -> Self {
        Self {
            sink: RefCell::new(sink),
            work: Cell::new(StepWork {
                step: 0,
                steps: 0,
                unet_calls: 0,
                unet_calls_expected: 0,
                redescription: None,
            }),
        }
    }

    pub fn emit(&self, event: Event) {
        (self.sink.borrow_mut())(event)
    }

    /// Step `step` of `steps` begins and will take at most `expected` UNet calls.
    pub fn begin_step(&self, step: usize, steps: usize, expected: usize) {
        self.work.set(StepWork {
            step,
            steps,
            unet_calls: 0,
            unet_calls_expected: expected,
            redescription: None,
        });
    }

    /// One more UNet call of the current step: a [`StepWork`] event.
    pub fn unet_call_done(&self, call: UnetCall) {
        let mut work = self.work.get();
        work.unet_calls += 1;
        work.redescription = call.redescription;
        self.work.set(work);
        self.emit(Event::StepWork(work));
    }
}

/// Everything the step loop accumulates.
#[derive(Default)]
pub(super) struct Progress {
    pub reports: Vec<StepReport>,
    pub dump: Vec<(String, Vec<Tensor>)>,
    /// The reconstruction a redescribing method built, for the cache.
    pub reconstruction: Option<CachedReconstruction>,
    pub latents: Vec<(Branch, Tensor)>,
    pub steps_done: usize,
    /// The edit mask on the latent grid, when the request has one.
    pub mask: Option<Tensor>,
}

impl Progress {
    pub fn set_latent(&mut self, branch: Branch, t: &Tensor) {
        match self.latents.iter_mut().find(|(b, _)| *b == branch) {
            Some((_, l)) => *l = t.clone(),
            None => self.latents.push((branch, t.clone())),
        }
    }

    /// Final latents, dump tensors and the reconstruction for the cache, from any method's
    /// step.
    pub fn record_step(&mut self, step: &MethodStep, dump: bool, start: &Tensor) {
        for b in &step.branches {
            self.set_latent(b.branch, &b.latent);
        }
        if dump {
            for (name, t) in &step.dump {
                self.record(name, t);
            }
        }
        self.remember_reconstruction(step, start);
    }

    /// The run's inputs and every per-step tensor under its documented `--dump` name,
    /// stacked over the steps.
    pub fn dump_tensors(
        &mut self,
        inversion_latents: &[Tensor],
        caption: &Tensor,
        direction: Option<&Tensor>,
    ) -> Result<Vec<(String, Tensor)>> {
        let mut dump = vec![
            (
                "inversion.latents".to_string(),
                Tensor::stack(inversion_latents, 0)?,
            ),
            ("caption_embedding".to_string(), caption.clone()),
        ];
        if let Some(d) = direction {
            dump.push(("edit_direction".to_string(), d.clone()));
        }
        for (name, tensors) in std::mem::take(&mut self.dump) {
            dump.push((name, Tensor::stack(&tensors, 0)?));
        }
        Ok(dump)
    }

    fn record(&mut self, name: &str, t: &Tensor) {
        match self.dump.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(t.clone()),
            None => self.dump.push((name.to_string(), vec![t.clone()])),
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
