//! What every stage and method step needs besides its tensors: the model, the cancel token,
//! and where the "one more UNet call done" ticks go (the live progress inside a step).

use super::cancel::CancelToken;
use crate::model::StableDiffusion;

/// One UNet call (a forward, or a forward + backward) finished inside a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnetCall {
    /// `(iterations done, max iterations)` when the call was a redescription iteration.
    pub redescription: Option<(usize, usize)>,
}

fn ignore(_: UnetCall) {}

/// The model, cancellation and progress of one run, passed to every stage.
#[derive(Clone, Copy)]
pub struct StageContext<'a> {
    /// The model the stages run.
    pub sd: &'a StableDiffusion,
    /// The run's cancel flag, checked between UNet calls.
    pub cancel: &'a CancelToken,
    on_unet_call: &'a dyn Fn(UnetCall),
}

impl<'a> StageContext<'a> {
    /// A context whose UNet calls go unreported (tests, benches, one-off stages).
    pub fn new(sd: &'a StableDiffusion, cancel: &'a CancelToken) -> Self {
        Self {
            sd,
            cancel,
            on_unet_call: &ignore,
        }
    }

    /// A context that tells `on_unet_call` after every UNet call.
    pub fn with_progress(
        sd: &'a StableDiffusion,
        cancel: &'a CancelToken,
        on_unet_call: &'a dyn Fn(UnetCall),
    ) -> Self {
        Self {
            sd,
            cancel,
            on_unet_call,
        }
    }

    /// Called by the stages right after each UNet call.
    pub fn unet_call_done(&self) {
        (self.on_unet_call)(UnetCall {
            redescription: None,
        });
    }

    /// Called by redescription after iteration `done` (its UNet call) of at most `max`.
    pub fn redescription_iteration_done(&self, done: usize, max: usize) {
        (self.on_unet_call)(UnetCall {
            redescription: Some((done, max)),
        });
    }
}
