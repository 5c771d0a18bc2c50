//! `inspect PATH [--configs DIR]`: the model's components, configs, parameter counts and
//! dtypes, then a full load.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::DType;
use clap::Args;

use super::device::{DeviceArgs, describe as describe_compute};
use mirror_engine::loader::ldm_names::{CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
use mirror_engine::loader::{
    CheckpointConfigs, ModelSource, WeightFiles, inspect, open_model_source,
};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Diffusers model folder or single-file .safetensors checkpoint.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Diffusers folder whose configs and tokenizer describe a single-file checkpoint
    /// (default: the bundled SD 1.x configs).
    #[arg(long, value_name = "DIR")]
    pub configs: Option<PathBuf>,
    #[command(flatten)]
    pub compute: DeviceArgs,
}

pub fn run(args: &InspectArgs) -> Result<()> {
    match (open_model_source(&args.path)?, &args.configs) {
        (ModelSource::SingleFile(file), Some(dir)) => print_single_file(&file, dir)?,
        _ => println!("{}", inspect(&args.path)?),
    }
    let sd = args
        .compute
        .load_model(&args.path, args.configs.as_deref())?;
    let side = sd.default_image_side();
    println!(
        "loads: OK ({}, {} on {}; default image {side}×{side}, sides in multiples of {}; fingerprint {})",
        sd.info.name,
        sd.info.kind,
        describe_compute(&sd),
        sd.size_multiple(),
        short(&sd.info.fingerprint)
    );
    Ok(())
}

fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// `loader::inspect` reads single files with the bundled configs only; with `--configs` the
/// report lists the tensors per component here, and the load below checks them.
fn print_single_file(file: &Path, configs_dir: &Path) -> Result<()> {
    let configs = CheckpointConfigs::from_diffusers_folder(configs_dir);
    let weights = WeightFiles::open(&[file.to_path_buf()])?;
    let all = weights.shapes_and_dtypes();
    println!(
        "{}: single-file checkpoint (original layout, configs from {})",
        file.display(),
        configs_dir.display()
    );
    let mut total = 0;
    for (name, prefix, config) in [
        ("unet", UNET_PREFIX, &configs.unet_config),
        ("vae", VAE_PREFIX, &configs.vae_config),
        ("text_encoder", CLIP_PREFIX, &configs.text_encoder_config),
    ] {
        let prefix = format!("{prefix}.");
        let part: Vec<_> = all
            .iter()
            .filter(|(n, _, _)| n.starts_with(&prefix))
            .collect();
        let parameters: usize = part
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum();
        total += parameters;
        let mut dtypes: Vec<(DType, usize)> = Vec::new();
        for (_, shape, dtype) in &part {
            let count = shape.iter().product::<usize>();
            match dtypes.iter_mut().find(|(d, _)| d == dtype) {
                Some((_, n)) => *n += count,
                None => dtypes.push((*dtype, count)),
            }
        }
        dtypes.sort_by_key(|d| std::cmp::Reverse(d.1));
        let dtypes: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d:?} ({n})")).collect();
        println!("  {name}:");
        println!("    config: {}", config.display());
        println!(
            "    {} tensors, {parameters} parameters, stored as {}",
            part.len(),
            if dtypes.is_empty() {
                "-".to_string()
            } else {
                dtypes.join(", ")
            }
        );
    }
    println!("  tokenizer: {}", configs.tokenizer_dir.display());
    println!("  scheduler config: {}", configs.scheduler_config.display());
    println!(
        "  total: {} tensors, {total} parameters in the three components",
        all.len()
    );
    Ok(())
}
