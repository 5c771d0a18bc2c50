//! Typed engine errors: every one names the file (or input) and the problem.

use std::path::PathBuf;

use crate::branch::Branch;

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
    /// A denoising step produced NaN or infinity (`step` counts from 1).
    #[error(
        "{} became NaN or infinite at step {step} of {steps}. Try a lower guidance, a \
         smaller edit strength, or full precision (f32).",
        capitalised(.branch.user_words())
    )]
    StepNotFinite {
        step: usize,
        steps: usize,
        branch: Branch,
    },
    /// The device could not allocate memory (`detail`: the device's own message).
    #[error("{device} ran out of memory. Try a smaller image size or half precision. ({detail})")]
    OutOfMemory { device: String, detail: String },
}

impl EngineError {
    /// Turns a device allocation failure (CUDA, cuBLAS, Metal) hidden in a tensor error into
    /// [`EngineError::OutOfMemory`]; every other error is returned unchanged.
    pub fn classified(self, device: &candle_core::Device) -> Self {
        match self {
            EngineError::Candle(e) if is_out_of_memory(&e.to_string()) => {
                EngineError::OutOfMemory {
                    device: crate::device::describe(device),
                    detail: e.to_string(),
                }
            }
            other => other,
        }
    }
}

/// Whether an error text is an allocation failure, as candle 0.11's backends word it:
/// CUDA driver (`DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")`), cuBLAS
/// (`CUBLAS_STATUS_ALLOC_FAILED`), the runtime (`cudaErrorMemoryAllocation`), Metal
/// (`Failed to create metal resource: Buffer`) and the CPU allocator ("memory allocation of
/// N bytes failed").
pub fn is_out_of_memory(text: &str) -> bool {
    let text = text.to_lowercase();
    [
        "out_of_memory",
        "out of memory",
        "alloc_failed",
        "errormemoryallocation",
        "failed to create metal resource",
        "memory allocation of",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

fn capitalised(words: &str) -> String {
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The allocation failures as candle 0.11's backends put them into `candle_core::Error`
    /// (cudarc's `DriverError` debug form, cuBLAS and runtime status names, candle-metal's
    /// resource error), also under context wrappers; other errors pass through unchanged.
    #[test]
    fn device_allocation_failures_become_out_of_memory() {
        let oom = [
            r#"DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")"#,
            "CublasError(CUBLAS_STATUS_ALLOC_FAILED)",
            "cudaErrorMemoryAllocation",
            "Metal error Failed to create metal resource: Buffer",
        ];
        for text in oom {
            let err = candle_core::Error::Msg(text.to_string()).context("conv2d");
            let classified = EngineError::Candle(err).classified(&Device::Cpu);
            let EngineError::OutOfMemory { detail, .. } = &classified else {
                panic!("{text}: not classified as out of memory: {classified:?}");
            };
            assert!(detail.contains(text.split_whitespace().last().unwrap_or(text)));
            let message = classified.to_string();
            assert!(message.contains("smaller image size"), "{message}");
            assert!(message.contains("half precision"), "{message}");
        }
        let other = candle_core::Error::Msg("shape mismatch in matmul".into());
        assert!(matches!(
            EngineError::Candle(other).classified(&Device::Cpu),
            EngineError::Candle(_)
        ));
        assert!(matches!(
            EngineError::Cancelled.classified(&Device::Cpu),
            EngineError::Cancelled
        ));
    }

    #[test]
    fn non_finite_step_names_step_and_branch_in_user_words() {
        let e = EngineError::StepNotFinite {
            step: 7,
            steps: 30,
            branch: crate::branch::Method::Mirror.translation(),
        };
        let text = e.to_string();
        assert!(text.starts_with("The translation"), "{text}");
        assert!(text.contains("step 7 of 30"), "{text}");
        assert!(text.contains("guidance") && text.contains("f32"), "{text}");
    }
}
