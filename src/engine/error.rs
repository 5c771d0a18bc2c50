//! Typed engine errors: every one names the file (or input) and the problem.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a Stable Diffusion model folder or checkpoint: {reason}")]
    NotAModel { path: PathBuf, reason: String },
    #[error("{path}: missing component `{component}`: {reason}")]
    MissingComponent {
        path: PathBuf,
        component: String,
        reason: String,
    },
    #[error("{file}: missing tensor `{name}`")]
    MissingTensor { file: PathBuf, name: String },
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: corrupt safetensors file: {reason}")]
    CorruptSafetensors { file: PathBuf, reason: String },
    #[error("{file}: config field `{field}`: {reason}")]
    Config {
        file: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{file}: unknown block type `{block}` (supported: {supported})")]
    UnknownBlockType {
        file: PathBuf,
        block: String,
        supported: String,
    },
    #[error("latent size {height}x{width} cannot be taken by this UNet: {reason}")]
    LatentSize {
        height: usize,
        width: usize,
        reason: String,
    },
    #[error("tokenizer ({path}): {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("non-finite values (NaN or infinity) in {what}")]
    NonFinite { what: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("cancelled")]
    Cancelled,
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, EngineError>;
