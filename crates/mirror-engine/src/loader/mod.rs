//! Model loading: finding a model on disk (diffusers folder, single-file checkpoint, Hugging
//! Face cache), LoRA files, memory-mapped weights as `VarBuilder`s with renaming and typed errors, the
//! original-checkpoint name maps, `inspect`, and what a model folder says about itself
//! (`mirror.json`, [`notes`]).

pub mod checkpoint;
pub mod config;
pub mod hf_cache;
pub mod inspect;
pub mod ldm_names;
pub mod lora;
pub mod names;
pub mod notes;
pub mod source;
pub mod weights;

pub use checkpoint::{CheckpointConfigs, LdmNameMaps, SingleFileCheckpoint, write_single_file};
pub use hf_cache::{CachedModel, find_cached_models, find_cached_models_in};
pub use inspect::{ModelReport, inspect};
pub use lora::{LoraFile, LoraInfo, LoraSpec, LoraTarget, TargetWeights, merge_deltas, read_lora};
pub use names::NameMap;
pub use notes::{GuidanceBase, ModelNotes, Recommended, RecommendedDirection};
pub use source::{Component, DiffusersFolder, ModelSource, open_model_source};
pub use weights::{WeightFiles, WeightIssue, weight_error};
