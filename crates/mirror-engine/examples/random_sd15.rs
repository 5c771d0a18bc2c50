//! Writes a Stable Diffusion 1.5-size diffusers folder with random weights (the bundled SD 1.x
//! configs and tokenizer), for speed and memory checks at real size without downloading
//! anything: `cargo run --release --example random_sd15 -- OUT_DIR [f32|f16]`.
//! Matrices and kernels are normal with variance 1/fan-in, norm scales 1, biases 0: the outputs
//! are noise but stay finite and the redescription never stops early, so the cost of every
//! pass is the real one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use mirror_engine::clip::{ClipTextConfig, ClipTextTransformer};
use mirror_engine::unet::{UNet2DConditionModel, UNetConfig};
use mirror_engine::vae::{AutoencoderKL, VaeConfig};

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sd-v1")
}

/// A random value for a variable of this name and shape (see the file comment).
fn random(name: &str, shape: &candle_core::Shape) -> Result<candle_core::Tensor> {
    let dims = shape.dims();
    Ok(match dims {
        [_] if name.ends_with("weight") => {
            candle_core::Tensor::ones(shape, DType::F32, &Device::Cpu)?
        }
        [_] => candle_core::Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
        _ => {
            let fan_in: usize = dims[1..].iter().product();
            let std = 1.0 / (fan_in.max(1) as f32).sqrt();
            candle_core::Tensor::randn(0f32, std, shape, &Device::Cpu)?
        }
    })
}

/// Saves the variables of `map` (named as the model asked for them), randomised, in `dtype`.
fn save(map: &VarMap, dtype: DType, file: &Path) -> Result<()> {
    let data = map.data().lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let tensors = data
        .iter()
        .map(|(name, var)| {
            let value = random(name, var.as_tensor().shape())?;
            Ok((name.clone(), value.to_dtype(dtype)?))
        })
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    candle_core::safetensors::save(&tensors, file)?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        bail!("usage: random_sd15 OUT_DIR [f32|f16]");
    };
    let dtype = match args.get(1).map(String::as_str) {
        None | Some("f16") => DType::F16,
        Some("f32") => DType::F32,
        Some(other) => bail!("`{other}`: the weight type is f32 or f16"),
    };
    let device = Device::Cpu;
    device.set_seed(0)?;
    for component in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        copy_dir(&assets().join(component), &out.join(component))
            .with_context(|| format!("copying the bundled {component} files"))?;
    }
    std::fs::write(
        out.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline", "_note": "random weights (random_sd15)"}"#,
    )?;

    let map = VarMap::new();
    let cfg = UNetConfig::from_file(&assets().join("unet/config.json"))?;
    UNet2DConditionModel::new(VarBuilder::from_varmap(&map, DType::F32, &device), &cfg)?;
    save(
        &map,
        dtype,
        &out.join("unet/diffusion_pytorch_model.safetensors"),
    )?;

    let map = VarMap::new();
    let cfg = VaeConfig::from_file(&assets().join("vae/config.json"))?;
    AutoencoderKL::new(VarBuilder::from_varmap(&map, DType::F32, &device), &cfg)?;
    save(
        &map,
        dtype,
        &out.join("vae/diffusion_pytorch_model.safetensors"),
    )?;

    let map = VarMap::new();
    let cfg = ClipTextConfig::from_file(&assets().join("text_encoder/config.json"))?;
    ClipTextTransformer::new(VarBuilder::from_varmap(&map, DType::F32, &device), &cfg)?;
    save(&map, dtype, &out.join("text_encoder/model.safetensors"))?;
    println!("wrote {} (random SD 1.5-size weights)", out.display());
    Ok(())
}
