//! Loading a model for a subcommand: `--device` and `--precision`, and the configs a
//! single-file checkpoint is read with.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use mirror_engine::device::{self, DeviceChoice, Precision};
use mirror_engine::loader::CheckpointConfigs;
use mirror_engine::model::StableDiffusion;

#[derive(Args, Debug, Clone, Copy, Default)]
pub struct DeviceArgs {
    /// Where to compute [default: auto: an NVIDIA GPU, then an Apple GPU, else the CPU]. A
    /// GPU that cannot be used falls back to the CPU with a message.
    #[arg(long, value_name = "DEVICE", value_parser = device_parser())]
    pub device: Option<DeviceChoice>,
    /// Number format of the passes that need no gradient (text, analysis, plain DDIM,
    /// decoding) [default: auto: f16 on a GPU, f32 on the CPU]. Gradient passes stay f32.
    #[arg(long, value_name = "FORMAT", value_parser = precision_parser())]
    pub precision: Option<Precision>,
}

impl DeviceArgs {
    /// Opens the device (saying so on stderr when it fell back to the CPU) and loads the
    /// model there in the chosen precision.
    pub fn load_model(&self, model: &Path, configs: Option<&Path>) -> Result<StableDiffusion> {
        let selected = device::select_device(self.device.unwrap_or_default());
        if let Some(message) = &selected.fallback {
            eprintln!("note: {message}");
        }
        let precision = self.precision.unwrap_or_default();
        if let (_, Some(message)) = device::resolve_precision(&selected.device, precision) {
            eprintln!("note: {message}");
        }
        Ok(StableDiffusion::load_with_precision(
            model,
            &selected.device,
            checkpoint_configs(configs),
            precision,
        )?)
    }
}

/// The configs a single-file checkpoint is read with: those of a diffusers folder, or the
/// bundled SD 1.x ones.
pub fn checkpoint_configs(dir: Option<&Path>) -> CheckpointConfigs {
    match dir {
        Some(dir) => CheckpointConfigs::from_diffusers_folder(dir),
        None => CheckpointConfigs::bundled_sd_v1(),
    }
}

/// `cpu (f32)`, `CUDA:0 (forward passes f16)`: where and how a loaded model computes.
pub fn describe(sd: &StableDiffusion) -> String {
    match sd.forward_dtype() {
        candle_core::DType::F32 => format!("{}, f32", device::describe(&sd.device)),
        half => format!(
            "{}, forward passes {}, gradients f32",
            device::describe(&sd.device),
            device::dtype_word(half)
        ),
    }
}

/// Parses `--device`: the engine's words, each listed with its label in `--help`.
fn device_parser() -> impl TypedValueParser<Value = DeviceChoice> {
    PossibleValuesParser::new(
        DeviceChoice::ALL.map(|choice| PossibleValue::new(choice.word()).help(choice.label())),
    )
    .try_map(|word| word.parse::<DeviceChoice>())
}

/// Parses `--precision` the same way.
fn precision_parser() -> impl TypedValueParser<Value = Precision> {
    PossibleValuesParser::new(
        Precision::ALL.map(|format| PossibleValue::new(format.word()).help(format.label())),
    )
    .try_map(|word| word.parse::<Precision>())
}
