//! Stages shared by the methods (diffusers names: `encode_prompt`, `invert`, `redescribe`,
//! `guide`, `decode`), plus cancellation, progress events and heat maps.

pub mod cancel;
pub mod events;
pub mod heatmap;
pub mod optim;
pub mod stages;

pub use cancel::CancelToken;
pub use events::{
    Branch, BranchStep, Event, EventSink, GuidanceReport, Phase, RedescriptionReport, StepReport,
};
pub use heatmap::TokenHeatmaps;
