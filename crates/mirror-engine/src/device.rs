//! Which device and number format the engine computes with: the user's choice
//! (`auto|cpu|cuda|metal`, `auto|f32|f16|bf16`), the device actually opened (an accelerator
//! that fails to start falls back to the CPU with a message, never a crash), and the type
//! forward-only passes run in.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

/// The device the user asked for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The best device this build has: CUDA, then Metal, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (needs a build with the `cuda` feature).
    Cuda,
    /// The Apple GPU (needs a build with the `metal` feature).
    Metal,
}

impl DeviceChoice {
    /// Every choice, in the order the settings list them.
    pub const ALL: [DeviceChoice; 4] = [Self::Auto, Self::Cpu, Self::Cuda, Self::Metal];

    /// The word used on the command line and in `MIRROR_DEVICE`.
    pub fn word(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Metal => "metal",
        }
    }

    /// How the settings show it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Auto => "Automatic (best available)",
            Self::Cpu => "CPU",
            Self::Cuda => "NVIDIA GPU (CUDA)",
            Self::Metal => "Apple GPU (Metal)",
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let word = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|c| c.word() == word)
            .ok_or_else(|| format!("`{s}` is not a device: use auto, cpu, cuda or metal"))
    }
}

/// The number format of forward-only passes (gradient passes always run in f32).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f16 on a GPU, f32 on the CPU.
    #[default]
    Auto,
    /// Full precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16 (on the CPU, f32 is used instead).
    Bf16,
}

impl Precision {
    /// Every precision, in the order the settings list them.
    pub const ALL: [Precision; 4] = [Self::Auto, Self::F32, Self::F16, Self::Bf16];

    /// The word used on the command line (`auto`, `f32`, `f16`, `bf16`).
    pub fn word(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    /// How the settings show it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Auto => "Automatic (half on a GPU)",
            Self::F32 => "Full (f32)",
            Self::F16 => "Half (f16)",
            Self::Bf16 => "Half (bf16)",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let word = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|p| p.word() == word)
            .ok_or_else(|| format!("`{s}` is not a precision: use auto, f32, f16 or bf16"))
    }
}

/// The device a choice opened, and why it is not the one asked for (if it is not).
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    /// The device that was opened.
    pub device: Device,
    /// Set when the chosen accelerator could not be used and the CPU computes instead.
    pub fallback: Option<String>,
}

/// The device an environment variable names (cpu, cuda, metal, auto; unset: cpu), for tests
/// and benchmarks, which must run where they are told or fail: no fallback to the CPU.
pub fn device_from_env(var: &str) -> std::result::Result<Device, String> {
    let choice: DeviceChoice = std::env::var(var)
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .map_err(|e| format!("{var}: {e}"))?;
    let selected = select_device(choice);
    match selected.fallback {
        Some(why) => Err(format!("{var}={choice}: {why}")),
        None => Ok(selected.device),
    }
}

/// Opens the device `choice` names. `Auto` tries CUDA, then Metal, then takes the CPU; a
/// device missing from this build or failing to start falls back to the CPU with a message.
pub fn select_device(choice: DeviceChoice) -> SelectedDevice {
    let cpu = |fallback: Option<String>| SelectedDevice {
        device: Device::Cpu,
        fallback,
    };
    match choice {
        DeviceChoice::Cpu => cpu(None),
        DeviceChoice::Cuda | DeviceChoice::Metal => match open(choice) {
            Ok(device) => SelectedDevice {
                device,
                fallback: None,
            },
            Err(why) => cpu(Some(format!("{why}; computing on the CPU instead."))),
        },
        DeviceChoice::Auto => {
            let mut failures = Vec::new();
            for accelerator in [DeviceChoice::Cuda, DeviceChoice::Metal] {
                if !compiled_in(accelerator) {
                    continue;
                }
                match open(accelerator) {
                    Ok(device) => {
                        return SelectedDevice {
                            device,
                            fallback: None,
                        };
                    }
                    Err(why) => failures.push(why),
                }
            }
            // A GPU build on a machine without a usable GPU says why it is on the CPU.
            cpu((!failures.is_empty())
                .then(|| format!("{}; computing on the CPU.", failures.join("; "))))
        }
    }
}

/// The best device this build can use: CUDA or Metal when compiled in and present, else CPU.
pub fn best_device() -> Device {
    select_device(DeviceChoice::Auto).device
}

/// Whether this build can compute on `choice` at all (the CPU and `Auto` always).
pub fn compiled_in(choice: DeviceChoice) -> bool {
    match choice {
        DeviceChoice::Auto | DeviceChoice::Cpu => true,
        DeviceChoice::Cuda => cfg!(feature = "cuda"),
        DeviceChoice::Metal => cfg!(feature = "metal"),
    }
}

/// Opens GPU 0 of `accelerator`, turning an error or a panic (a driver library that cannot
/// be loaded) into a sentence.
fn open(accelerator: DeviceChoice) -> Result<Device, String> {
    let name = match accelerator {
        DeviceChoice::Metal => "Metal",
        _ => "CUDA",
    };
    if !compiled_in(accelerator) {
        return Err(format!("This build of Mirror has no {name} support"));
    }
    let opened = std::panic::catch_unwind(|| match accelerator {
        DeviceChoice::Metal => Device::new_metal(0),
        _ => Device::new_cuda(0),
    });
    match opened {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(format!(
            "No usable {name} GPU ({})",
            first_line(&e.to_string())
        )),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "its driver could not be loaded".into());
            Err(format!("No usable {name} GPU ({})", first_line(&what)))
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text).trim()
}

/// A short human-readable name ("CPU (2 threads)", "CUDA:0", "Metal").
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => match candle_core::utils::get_num_threads() {
            1 => "CPU (1 thread)".to_string(),
            n => format!("CPU ({n} threads)"),
        },
        Device::Cuda(_) => "CUDA:0".to_string(),
        Device::Metal(_) => "Metal".to_string(),
    }
}

/// The type forward-only passes (text encoder, inversion, plain DDIM, reference passes,
/// decode) run in on `device`; gradient passes always run in f32 (docs/algorithm.md §0.3).
/// `Auto` takes f16 on an accelerator (SD 1.x is published and commonly run in f16) and
/// f32 on the CPU, where half types save memory but not time.
pub fn forward_dtype(device: &Device, precision: Precision) -> DType {
    resolve_precision(device, precision).0
}

/// As [`forward_dtype`], with the reason when the device cannot compute in the type asked for
/// and f32 is used instead: candle 0.11's CPU convolution calls its matrix product directly,
/// which has no bf16 (f16, f32, f64 only; a plain bf16 matmul goes through f32 there).
pub fn resolve_precision(device: &Device, precision: Precision) -> (DType, Option<String>) {
    match (precision, device) {
        (Precision::F32, _) => (DType::F32, None),
        (Precision::F16, _) => (DType::F16, None),
        (Precision::Bf16, Device::Cpu) => (
            DType::F32,
            Some("The CPU cannot compute convolutions in bf16; computing in f32 instead.".into()),
        ),
        (Precision::Bf16, _) => (DType::BF16, None),
        (Precision::Auto, Device::Cpu) => (DType::F32, None),
        (Precision::Auto, Device::Cuda(_) | Device::Metal(_)) => (DType::F16, None),
    }
}

/// Name of a forward type as the user knows it.
pub fn dtype_word(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "f32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_back_and_bad_words_are_named() {
        for c in DeviceChoice::ALL {
            assert_eq!(c.word().parse::<DeviceChoice>(), Ok(c));
        }
        for p in Precision::ALL {
            assert_eq!(p.to_string().to_uppercase().parse::<Precision>(), Ok(p));
        }
        let err = "gpu".parse::<DeviceChoice>().unwrap_err();
        assert!(err.contains("`gpu`") && err.contains("cuda"), "{err}");
        assert!("f8".parse::<Precision>().unwrap_err().contains("bf16"));
    }

    #[test]
    fn cpu_is_always_there_and_a_missing_accelerator_falls_back_with_a_message() {
        let cpu = select_device(DeviceChoice::Cpu);
        assert!(cpu.device.is_cpu() && cpu.fallback.is_none());
        for accelerator in [DeviceChoice::Cuda, DeviceChoice::Metal] {
            let got = select_device(accelerator);
            if !compiled_in(accelerator) {
                assert!(got.device.is_cpu());
                let message = got.fallback.unwrap_or_default();
                assert!(
                    message.contains("no ") && message.contains("CPU"),
                    "{message}"
                );
            } else if got.device.is_cpu() {
                // Compiled in but no GPU here: still a CPU and a reason.
                assert!(got.fallback.is_some());
            }
        }
    }

    #[test]
    fn automatic_precision_is_half_only_on_accelerators() {
        assert_eq!(forward_dtype(&Device::Cpu, Precision::Auto), DType::F32);
        assert_eq!(forward_dtype(&Device::Cpu, Precision::F16), DType::F16);
        assert_eq!(resolve_precision(&Device::Cpu, Precision::F16).1, None);
    }

    #[test]
    fn bf16_on_the_cpu_falls_back_to_f32_with_a_reason() {
        let (dtype, why) = resolve_precision(&Device::Cpu, Precision::Bf16);
        assert_eq!(dtype, DType::F32);
        let why = why.unwrap_or_default();
        assert!(why.contains("bf16") && why.contains("f32"), "{why}");
        // The reason is real: candle's CPU convolution refuses bf16.
        let x = candle_core::Tensor::ones((1, 2, 3, 3), DType::BF16, &Device::Cpu).unwrap();
        let k = candle_core::Tensor::ones((2, 2, 1, 1), DType::BF16, &Device::Cpu).unwrap();
        assert!(
            x.conv2d(&k, 0, 1, 1, 1).is_err(),
            "bf16 conv2d works on the CPU now: drop the fallback"
        );
    }
}
