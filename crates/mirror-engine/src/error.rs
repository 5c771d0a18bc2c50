//! Typed engine errors: every one names the file (or input) and the problem.

use std::path::PathBuf;

use crate::branch::Branch;

/// Everything the engine can fail with; [`Result`] carries it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder that was being read or written.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The path is neither a diffusers model folder nor a single-file checkpoint.
    #[error("{path}: not a Stable Diffusion model folder or checkpoint: {reason}")]
    NotAModel {
        /// The path that was given as a model.
        path: PathBuf,
        /// Why it was not recognised.
        reason: String,
    },
    /// A model lacks one of its parts (UNet, VAE, text encoder, tokenizer, scheduler).
    #[error("{path}: missing component `{component}`: {reason}")]
    MissingComponent {
        /// The model folder or checkpoint.
        path: PathBuf,
        /// The component's name, as its diffusers subfolder (`unet`, `vae`, ...).
        component: String,
        /// What was looked for and not found.
        reason: String,
    },
    /// A weights file lacks a tensor the model needs.
    #[error("{file}: missing tensor `{name}`")]
    MissingTensor {
        /// The weights file.
        file: PathBuf,
        /// The tensor's name, as the model asks for it.
        name: String,
    },
    /// A tensor in a weights file does not have the shape the model expects.
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The weights file.
        file: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// A safetensors file's header or data could not be read.
    #[error("{file}: corrupt safetensors file: {reason}")]
    CorruptSafetensors {
        /// The safetensors file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A config file field is missing, has the wrong type or an unsupported value.
    #[error("{file}: config field `{field}`: {reason}")]
    Config {
        /// The config file (such as a component's `config.json`).
        file: PathBuf,
        /// The field's key, as written in the file.
        field: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// A config names a UNet or VAE block type that the engine does not implement.
    #[error("{file}: unknown block type `{block}` (supported: {supported})")]
    UnknownBlockType {
        /// The config file.
        file: PathBuf,
        /// The block type as written in the config (such as `CrossAttnDownBlock2D`).
        block: String,
        /// The supported block types, comma-separated.
        supported: String,
    },
    /// A latent size the UNet cannot take (not a positive multiple of its downsampling factor).
    #[error("latent size {height}x{width} cannot be taken by this UNet: {reason}")]
    LatentSize {
        /// Latent height in latent pixels.
        height: usize,
        /// Latent width in latent pixels.
        width: usize,
        /// Why the size does not fit.
        reason: String,
    },
    /// The tokenizer files could not be read or a prompt could not be tokenized.
    #[error("tokenizer ({path}): {reason}")]
    Tokenizer {
        /// The tokenizer file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A computed tensor held NaN or infinity.
    #[error("non-finite values (NaN or infinity) in {what}")]
    NonFinite {
        /// What was being computed.
        what: String,
    },
    /// A request or argument is out of range or inconsistent; the text says which.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The run was cancelled through its cancel token.
    #[error("cancelled")]
    Cancelled,
    /// A candle tensor operation failed.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A denoising step produced NaN or infinity (`step` counts from 1).
    #[error(
        "{} became NaN or infinite at step {step} of {steps}. Try a lower guidance, a \
         smaller edit strength, or full precision (f32).",
        capitalised(.branch.user_words())
    )]
    StepNotFinite {
        /// The step that went non-finite, counting from 1.
        step: usize,
        /// The number of steps in the run.
        steps: usize,
        /// The branch (translation, reconstruction, ...) whose latent went non-finite.
        branch: Branch,
    },
    /// The device could not allocate memory (`detail`: the device's own message).
    #[error("{device} ran out of memory. Try a smaller image size or half precision. ({detail})")]
    OutOfMemory {
        /// The device, as [`crate::device::describe`] words it.
        device: String,
        /// The device's own error message.
        detail: String,
    },
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

/// The engine's result type.
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
