//! `--dump RUN.safetensors`: every per-step tensor of a run, stacked along a new first axis
//! (one entry per step), written atomically.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;

use mirror_engine::imageio::write_atomic;

/// What `--dump` writes (shown in `translate --help`).
pub const DUMP_HELP: &str = "\
Dump (--dump RUN.safetensors), N = --steps; tensors present for the branches that ran:
  inversion.latents         [N+1, 1, 4, h, w]  inversion trajectory z_0 .. z_N
  caption_embedding         [1, 77, D]         text embedding of --source
  edit_direction            [1, 77, D]         strength * edit direction (not for plain DDIM)
  mirror.embeddings         [N, 1, 77, D]      redescribed caption C*_i per step
  mirror.rec_latents        [N, 1, 4, h, w]    reconstruction branch after each step
  mirror.edit_latents       [N, 1, 4, h, w]    translation branch after each step
  mirror.edit_guided        [N, 2, 4, h, w]    translation latent pair (uncond, cond) after attention guidance
  mirror.inner_losses       [N, K]             redescription loss per Adam iteration (NaN after early stop)
  mirror.guidance_loss      [N]                attention-guidance loss
  ddim.rec_latents          [N, 1, 4, h, w]    plain DDIM reconstruction
  ddim.edit_latents         [N, 1, 4, h, w]    plain DDIM translation
  pix2pix_zero.rec_latents  [N, 1, 4, h, w]    pix2pix-zero reference pass
  pix2pix_zero.edit_latents [N, 1, 4, h, w]    pix2pix-zero edit pass
The file's metadata holds method, preset and steps.";

pub fn write_dump(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    let bytes = safetensors::tensor::serialize(
        contiguous.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
    )
    .with_context(|| format!("{}: cannot serialise the dump", path.display()))?;
    write_atomic(path, &bytes)?;
    Ok(())
}
