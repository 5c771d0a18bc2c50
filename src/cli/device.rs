//! `--device` and `--precision`, shared by the subcommands that load a model.

use std::path::Path;

use anyhow::Result;
use clap::builder::PossibleValue;
use clap::{Args, ValueEnum};

use super::inspect::checkpoint_configs;
use crate::engine::device::{self, DeviceChoice, Precision};
use crate::engine::model::StableDiffusion;

#[derive(Args, Debug, Clone, Copy, Default)]
pub struct DeviceArgs {
    /// Where to compute [default: auto: an NVIDIA GPU, then an Apple GPU, else the CPU]. A
    /// GPU that cannot be used falls back to the CPU with a message.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceChoice>,
    /// Number format of the passes that need no gradient (text, analysis, plain DDIM,
    /// decoding) [default: auto: f16 on a GPU, f32 on the CPU]. Gradient passes stay f32.
    #[arg(long, value_name = "FORMAT")]
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

impl ValueEnum for DeviceChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &DeviceChoice::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.word()).help(self.label()))
    }
}

impl ValueEnum for Precision {
    fn value_variants<'a>() -> &'a [Self] {
        &Precision::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.word()).help(self.label()))
    }
}
