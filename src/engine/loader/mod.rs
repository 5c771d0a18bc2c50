//! Model loading: finding a model on disk (diffusers folder, single-file checkpoint, Hugging
//! Face cache), memory-mapped weights as `VarBuilder`s with renaming and typed errors, the
//! original-checkpoint name maps, and `inspect`.

pub mod config;
pub mod ldm_names;
pub mod names;
pub mod source;
pub mod weights;

pub use names::NameMap;
pub use source::{Component, DiffusersFolder, ModelSource, open_model_source};
pub use weights::{WeightFiles, WeightIssue, weight_error};
