//! Which device the engine computes on.

use candle_core::{DType, Device};

/// The best device this build can use: CUDA or Metal when compiled in and present, else CPU.
pub fn best_device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(device) = Device::new_cuda(0) {
        return device;
    }
    #[cfg(feature = "metal")]
    if let Ok(device) = Device::new_metal(0) {
        return device;
    }
    Device::Cpu
}

/// A short human-readable name ("CPU", "CUDA:0", "Metal").
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("CPU ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => "CUDA:0".to_string(),
        Device::Metal(_) => "Metal".to_string(),
    }
}

/// Gradient passes always run in f32 (algorithm.md §0.3); forward-only passes may use a
/// half type on accelerators.
pub fn forward_dtype(device: &Device, allow_half: bool) -> DType {
    match device {
        Device::Cuda(_) if allow_half => DType::F16,
        Device::Metal(_) if allow_half => DType::F16,
        _ => DType::F32,
    }
}
