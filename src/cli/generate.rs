//! `generate`: images from a prompt (DDIM with classifier-free guidance), e.g. sources to
//! translate.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::device::checkpoint_configs;
use super::outputs::check_writable;
use super::translate::{Size, parse_size};
use super::{Cancelled, default_model_path, interrupt};
use mirror_engine::EngineError;
use mirror_engine::device;
use mirror_engine::methods::generate::{GenerateSettings, generate, to_rgb_images};
use mirror_engine::model::{StableDiffusion, VAE_TILES_FALLBACK_NOTE};
use mirror_engine::pipeline::CancelToken;
use mirror_engine::recipe::save_png_with_recipe;
use mirror_engine::vae::VaeTiles;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Diffusers model folder or single-file .safetensors checkpoint.
    #[arg(long, value_name = "DIR_OR_FILE")]
    pub model: Option<PathBuf>,
    /// Diffusers folder whose configs and tokenizer describe a single-file checkpoint
    /// (default: the bundled SD 1.x configs).
    #[arg(long, value_name = "DIR")]
    pub configs: Option<PathBuf>,
    /// What the image should show, e.g. "a red circle on a blue background".
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// DDIM steps [default: the model's recommended, else 50].
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// How strongly the prompt is followed (1: no guidance) [default: the model's
    /// recommended, else 7.5].
    #[arg(long, value_name = "G")]
    pub guidance: Option<f64>,
    /// Seed of the first image; image k uses seed + k.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Number of images.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub count: usize,
    /// A PNG file, or a folder (created if missing) for `seed-<S>.png` files. With several
    /// images and a file name, the seed is added to it: `out-<S>.png`.
    #[arg(long, short, value_name = "FILE.png|DIR")]
    pub out: PathBuf,
    /// Image size [default: the model's native size].
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub size: Option<Size>,
    /// VAE decode in tiles: auto (only when the image does not fit in memory), on (diffusers'
    /// tiling above the model's size), off.
    #[arg(long, value_name = "auto|on|off", default_value_t = VaeTiles::Auto)]
    pub vae_tiles: VaeTiles,
}

/// Where image `k` (seed `seed`) goes.
fn output_path(out: &Path, count: usize, seed: u64) -> PathBuf {
    let is_png = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return out.join(format!("seed-{seed}.png"));
    }
    if count == 1 {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}-{seed}.png"))
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let is_png = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("{}: cannot create the folder", args.out.display()))?;
    }
    let seeds: Vec<u64> = (0..args.count as u64)
        .map(|k| args.seed.wrapping_add(k))
        .collect();
    let paths: Vec<PathBuf> = seeds
        .iter()
        .map(|&s| output_path(&args.out, args.count, s))
        .collect();
    for path in &paths {
        check_writable(path)?;
    }
    let model_path = match &args.model {
        Some(path) => path.clone(),
        None => default_model_path()?,
    };
    let device = device::best_device();
    let sd = StableDiffusion::load_with_configs(
        &model_path,
        &device,
        checkpoint_configs(args.configs.as_deref()),
    )?;
    eprintln!(
        "model: {} ({}, {})",
        sd.info.name,
        sd.info.kind,
        device::describe(&device)
    );
    sd.check_known_words(&[&args.prompt])?;
    let mut settings = GenerateSettings::for_model(&sd, &args.prompt);
    settings.seed = args.seed;
    settings.count = args.count;
    if let Some(n) = args.steps {
        settings.steps = n;
    }
    if let Some(g) = args.guidance {
        settings.guidance_scale = g;
    }
    if let Some(Size(w, h)) = args.size {
        settings.width = w as usize;
        settings.height = h as usize;
    }
    settings.vae_tiles = args.vae_tiles;
    eprintln!(
        "{} image(s) of {}×{}, {} steps, guidance {}",
        settings.count, settings.width, settings.height, settings.steps, settings.guidance_scale
    );
    let cancel = CancelToken::new();
    interrupt::install(&cancel);
    let started = std::time::Instant::now();
    let images = match generate(&sd, &settings, &cancel, &mut |k, i| {
        if i + 1 == settings.steps {
            eprintln!("image {}/{} done", k + 1, settings.count);
        }
    }) {
        Err(EngineError::Cancelled) => return Err(Cancelled.into()),
        other => other?,
    };
    if sd.vae_tiles_report().fell_back {
        eprintln!("{VAE_TILES_FALLBACK_NOTE}");
    }
    for (image, path) in to_rgb_images(&images)?.iter().zip(&paths) {
        save_png_with_recipe(image, None, path)?;
        println!("wrote {}", path.display());
    }
    eprintln!("{:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        let p = |out: &str, count, seed| output_path(Path::new(out), count, seed);
        assert_eq!(p("a.png", 1, 7), PathBuf::from("a.png"));
        assert_eq!(p("x/a.png", 3, 8), PathBuf::from("x/a-8.png"));
        assert_eq!(p("dir", 1, 2), PathBuf::from("dir/seed-2.png"));
    }
}
