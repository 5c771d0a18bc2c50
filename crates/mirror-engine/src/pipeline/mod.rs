//! Stages shared by the methods (diffusers names: `encode_prompt`, `invert`, `redescribe`,
//! `guide`, `decode`), plus cancellation, progress events and heat maps.

pub mod cancel;
pub mod context;
pub mod events;
pub mod heatmap;
pub mod optim;
pub mod stages;
pub mod step;

pub use crate::branch::{Branch, Role};
pub use cancel::CancelToken;
pub use context::{StageContext, UnetCall};
pub use events::{
    BranchStep, Event, EventSink, GuidanceReport, Phase, RedescriptionReport, StepReport, StepWork,
};
pub use heatmap::TokenHeatmaps;
pub use step::{BranchState, LatentPair, MethodStep};
