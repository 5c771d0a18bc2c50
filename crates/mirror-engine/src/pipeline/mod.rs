//! Stages shared by the methods (diffusers names: `encode_prompt`, `invert`, `redescribe`,
//! `guide`, `decode`), plus cancellation, progress events and heat maps, and text-to-image
//! sampling (`generate`).

pub mod cancel;
pub mod context;
pub mod events;
pub mod generate;
pub mod heatmap;
pub mod optim;
pub mod stages;
pub mod step;

pub use cancel::CancelToken;
pub use context::{StageContext, UnetCall};
pub use events::{
    Branch, BranchStep, Event, EventSink, GuidanceReport, Phase, RedescriptionReport, StepReport,
    StepWork,
};
pub use heatmap::TokenHeatmaps;
pub use step::{BranchState, LatentPair, MethodStep};
