//! Tiled VAE encode and decode for images above the model's native size (diffusers'
//! `AutoencoderKL.enable_tiling`): overlapping native-size tiles, each through the network on
//! its own, the overlaps faded linearly into each other, so memory stays that of one tile.
//! Off unless asked for, as in diffusers ([`VaeTiles`] says when a run asks).
//!
//! The grid is laid out in latent pixels and shared by both directions: tile `k` of an axis
//! starts at `k · stride` and is `tile` long (shorter at the far edge); a tile keeps its first
//! `stride` rows and columns, of which the first `tile − stride` are faded in from the
//! neighbour above or to the left. With the diffusers defaults (tile = `sample_size / f`,
//! overlap 0.25) this is diffusers' `tiled_decode` / `_tiled_encode` exactly.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/autoencoders/autoencoder_kl.py (pinned).

use std::fmt;
use std::str::FromStr;

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use super::AutoencoderKL;
use super::config::VaeConfig;
use super::gaussian::DiagonalGaussian;

/// diffusers' `tile_overlap_factor`.
pub const DEFAULT_TILE_OVERLAP: f64 = 0.25;

/// When and how the VAE works in tiles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TilingSettings {
    /// Off: every image goes through the VAE whole, whatever its size.
    pub enabled: bool,
    /// Image side of one tile in pixels (the VAE's native `sample_size`); rounded down to
    /// whole latent pixels.
    pub tile_sample_size: usize,
    /// Fraction of a tile shared with each neighbour and faded across.
    pub overlap: f64,
}

impl TilingSettings {
    /// Tiles of the VAE's native size with diffusers' overlap, off: diffusers tiles only after
    /// `enable_tiling()`, and the default path must be diffusers' default path.
    pub fn from_config(cfg: &VaeConfig) -> Self {
        Self {
            enabled: false,
            tile_sample_size: cfg.sample_size,
            overlap: DEFAULT_TILE_OVERLAP,
        }
    }

    /// The same grid, on or off.
    pub fn with_enabled(self, enabled: bool) -> Self {
        Self { enabled, ..self }
    }

    /// The tile grid for a VAE with `factor` image pixels per latent pixel.
    pub fn layout(&self, factor: usize) -> Result<TileLayout> {
        let tile = self.tile_sample_size / factor.max(1);
        if tile == 0 {
            candle_core::bail!(
                "a VAE tile of {} px is smaller than one latent pixel ({factor} px)",
                self.tile_sample_size
            );
        }
        if !(0.0..1.0).contains(&self.overlap) {
            candle_core::bail!(
                "VAE tile overlap {} must be at least 0 and below 1",
                self.overlap
            );
        }
        // Rounded down as diffusers' `int(tile * (1 - overlap))`; at least one pixel of progress.
        let stride = ((tile as f64 * (1.0 - self.overlap)) as usize).max(1);
        Ok(TileLayout { tile, stride })
    }

    /// Whether a latent of `latent_hw` goes through in tiles: tiling is on and the latent is
    /// larger than one tile in either direction (at or below it, the whole-image path runs).
    pub fn applies(&self, latent_hw: (usize, usize), factor: usize) -> bool {
        let Ok(layout) = self.layout(factor) else {
            return self.enabled;
        };
        self.enabled && (latent_hw.0 > layout.tile || latent_hw.1 > layout.tile)
    }
}

/// When a run's VAE passes go through in tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaeTiles {
    /// Whole unless the whole pass would not fit in the device's free memory, or ran out of it
    /// (then the pass is redone in tiles and the run says so).
    #[default]
    Auto,
    /// Always in tiles when the image is above the VAE's native size (diffusers'
    /// `enable_tiling()`).
    On,
    /// Never in tiles.
    Off,
}

impl VaeTiles {
    /// Every mode, in the order the settings list them.
    pub const ALL: [VaeTiles; 3] = [Self::Auto, Self::On, Self::Off];

    /// The word the CLI and the recipe use.
    pub fn word(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }

    /// What the app's Settings show.
    pub fn label(self) -> &'static str {
        match self {
            Self::Auto => "auto (tiles only when the image does not fit in memory)",
            Self::On => "on (always in tiles above the model's size)",
            Self::Off => "off (never in tiles)",
        }
    }

    /// The mode that replays a run: tiles if it used them, whole if it did not.
    pub fn replaying(used: bool) -> Self {
        if used { Self::On } else { Self::Off }
    }
}

impl fmt::Display for VaeTiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl FromStr for VaeTiles {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.word().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("`{s}` is not a VAE tiles mode: use auto, on or off"))
    }
}

/// Bytes per value of the tensors in a pass of `dtype`.
fn value_bytes(dtype: candle_core::DType) -> u64 {
    dtype.size_in_bytes() as u64
}

/// A conservative estimate of the peak memory of one whole (untiled) VAE pass on a latent of
/// `latent_hw` (encode or decode: the networks mirror each other), in bytes of `dtype`.
///
/// Two terms, the larger wins:
/// * convolutions: at every resolution level `l` (side / 2^l) the widest channel count that
///   meets it (its own and the next level's, which an upsampler hands down), times 6 live
///   tensors (input, GroupNorm, SiLU, conv output, residual, upsample);
/// * the mid-block self-attention over the latent's `n = h·w` positions: 3 `n × n` matrices
///   (scores, softmax, a copy) plus 4 `n × C` ones (q, k, v, output) of the widest channels.
///
/// Weights are not counted: they are loaded already, and the free memory excludes them.
pub fn untiled_peak_bytes(
    cfg: &VaeConfig,
    latent_hw: (usize, usize),
    dtype: candle_core::DType,
) -> u64 {
    const LIVE_TENSORS: u64 = 6;
    let factor = cfg.downsample_factor() as u64;
    let (h, w) = (latent_hw.0 as u64, latent_hw.1 as u64);
    let channels = &cfg.block_out_channels;
    let widest = channels.iter().copied().max().unwrap_or(1) as u64;
    let conv = (0..channels.len())
        .map(|level| {
            let c = channels[level].max(*channels.get(level + 1).unwrap_or(&0)) as u64;
            let side = factor >> level.min(63);
            (h * side) * (w * side) * c * LIVE_TENSORS
        })
        .max()
        .unwrap_or(0);
    let n = h * w;
    let attention = if cfg.mid_block_add_attention {
        3 * n.saturating_mul(n) + 4 * n * widest
    } else {
        0
    };
    conv.max(attention).saturating_mul(value_bytes(dtype))
}

/// Memory free on `device` for a new pass, in bytes: on the CPU `/proc/meminfo`'s
/// MemAvailable; elsewhere unknown (candle has no free-memory query), so `auto` goes whole
/// and relies on the retry after an out-of-memory error.
pub fn free_memory_bytes(device: &candle_core::Device) -> Option<u64> {
    if !device.is_cpu() {
        return None;
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_available(&text)
}

/// MemAvailable of a `/proc/meminfo` text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether a pass of `peak` bytes goes whole with `free` bytes free: it must leave a quarter
/// of the free memory for everything else (the other branch latents, the allocator's slack).
pub fn fits_whole(peak: u64, free: Option<u64>) -> bool {
    free.is_none_or(|free| peak <= free / 4 * 3)
}

/// The tile grid of one axis, in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileLayout {
    /// Side of one tile.
    pub tile: usize,
    /// Distance between the starts of neighbouring tiles; `tile − stride` is the overlap.
    pub stride: usize,
}

/// One tile along one axis: `[start, start + len)` in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileSpan {
    /// First latent pixel of the tile.
    pub start: usize,
    /// Length of the tile in latent pixels (shorter at the far edge).
    pub len: usize,
}

impl TileLayout {
    /// Length of the faded overlap between neighbours.
    pub fn blend(&self) -> usize {
        self.tile - self.stride
    }

    /// The tiles covering `[0, latent_len)`: diffusers' `range(0, len, stride)`.
    pub fn spans(&self, latent_len: usize) -> Vec<TileSpan> {
        (0..latent_len)
            .step_by(self.stride)
            .map(|start| TileSpan {
                start,
                len: self.tile.min(latent_len - start),
            })
            .collect()
    }
}

/// A network run tile by tile over the grid: decode (latent in, image out) or encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TiledMap {
    /// The tile grid (the same on both axes).
    pub layout: TileLayout,
    /// Input pixels per latent pixel (decode 1, encode the VAE factor).
    pub input_scale: usize,
    /// Output pixels per latent pixel (decode the VAE factor, encode 1).
    pub output_scale: usize,
}

impl TiledMap {
    /// Runs `net` on every tile of `input` [B, C, H, W] and assembles the outputs: each tile
    /// fades in from the (already faded) tile above, then from the one to its left, and keeps
    /// its first `stride` rows and columns. The result is exactly `latent · output_scale` on
    /// each side, the size `net` would give for the whole input. Only two rows of tiles are
    /// held at a time.
    pub fn apply(
        &self,
        input: &Tensor,
        mut net: impl FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let (_, _, in_h, in_w) = input.dims4()?;
        let (latent_h, latent_w) = (in_h / self.input_scale, in_w / self.input_scale);
        if latent_h == 0 || latent_w == 0 {
            candle_core::bail!(
                "a {in_h}×{in_w} input is smaller than one latent pixel ({} px)",
                self.input_scale
            );
        }
        let (rows, cols) = (self.layout.spans(latent_h), self.layout.spans(latent_w));
        let blend = self.layout.blend() * self.output_scale;
        let keep = self.layout.stride * self.output_scale;
        let mut above: Vec<Tensor> = Vec::new();
        let mut strips = Vec::with_capacity(rows.len());
        for row in &rows {
            let (y0, y_len) = self.input_range(*row, latent_h, in_h);
            let band = input.narrow(2, y0, y_len)?;
            let mut current: Vec<Tensor> = Vec::with_capacity(cols.len());
            let mut pieces = Vec::with_capacity(cols.len());
            for (j, col) in cols.iter().enumerate() {
                let (x0, x_len) = self.input_range(*col, latent_w, in_w);
                let tile = band.narrow(3, x0, x_len)?.contiguous()?;
                let mut out = net(&tile)?;
                let expected = (row.len * self.output_scale, col.len * self.output_scale);
                let (_, _, out_h, out_w) = out.dims4()?;
                if (out_h, out_w) != expected {
                    candle_core::bail!(
                        "a VAE tile gave {out_h}×{out_w}, expected {}×{}",
                        expected.0,
                        expected.1
                    );
                }
                if let Some(up) = above.get(j) {
                    out = blend_into(up, &out, 2, blend)?;
                }
                if let Some(left) = current.last() {
                    out = blend_into(left, &out, 3, blend)?;
                }
                pieces.push(
                    out.narrow(2, 0, keep.min(out_h))?
                        .narrow(3, 0, keep.min(out_w))?,
                );
                current.push(out);
            }
            // The strip is a copy: the pieces no longer pin the whole tiles in memory.
            strips.push(Tensor::cat(&pieces, 3)?);
            above = current;
        }
        let out = Tensor::cat(&strips, 2)?;
        let (_, _, out_h, out_w) = out.dims4()?;
        // The pieces add up to the exact size; cropping guards a layout where they would not.
        out.narrow(2, 0, out_h.min(latent_h * self.output_scale))?
            .narrow(3, 0, out_w.min(latent_w * self.output_scale))
    }

    /// The input rows (or columns) of a tile: its latent span scaled; the last tile also takes
    /// the pixels past the last whole latent pixel, as the whole-image encoder sees them.
    fn input_range(&self, span: TileSpan, latent_len: usize, input_len: usize) -> (usize, usize) {
        let start = span.start * self.input_scale;
        let end = if span.start + span.len == latent_len {
            input_len
        } else {
            (span.start + span.len) * self.input_scale
        };
        (start, end - start)
    }
}

/// Weight of the later tile at `offset` into a fade of `extent` (diffusers: `y / extent`, in
/// double precision and then rounded to the tensor's type); the earlier tile gets 1 − that.
pub fn fade_weights(offset: usize, extent: usize) -> (f32, f32) {
    let later = offset as f64 / extent as f64;
    ((1.0 - later) as f32, later as f32)
}

/// diffusers' `blend_v` (dim 2) / `blend_h` (dim 3): the first `extent` rows or columns of
/// `next` fade linearly from the last ones of `previous` into its own. The extent shrinks to
/// what both tiles have (edge tiles).
pub fn blend_into(previous: &Tensor, next: &Tensor, dim: usize, extent: usize) -> Result<Tensor> {
    let (prev_len, next_len) = (previous.dim(dim)?, next.dim(dim)?);
    let extent = extent.min(prev_len).min(next_len);
    if extent == 0 {
        return Ok(next.clone());
    }
    let (to_prev, to_next): (Vec<f32>, Vec<f32>) =
        (0..extent).map(|y| fade_weights(y, extent)).unzip();
    let mut shape = [1usize; 4];
    shape[dim] = extent;
    // Built on the host in f32 and cast to the tiles' type: no f64 on the device.
    let weights =
        |w: Vec<f32>| Tensor::from_vec(w, &shape[..], next.device())?.to_dtype(next.dtype());
    let faded = (previous
        .narrow(dim, prev_len - extent, extent)?
        .broadcast_mul(&weights(to_prev)?)?
        + next
            .narrow(dim, 0, extent)?
            .broadcast_mul(&weights(to_next)?)?)?;
    if extent == next_len {
        return Ok(faded);
    }
    Tensor::cat(
        &[&faded, &next.narrow(dim, extent, next_len - extent)?],
        dim,
    )
}

impl AutoencoderKL {
    /// [`AutoencoderKL::encode`] with explicit tiling settings: in tiles when the latent
    /// would be larger than one tile, else whole.
    pub fn encode_with(&self, image: &Tensor, tiling: &TilingSettings) -> Result<DiagonalGaussian> {
        self.check_channels(image, self.config.in_channels, "image")?;
        let (_, _, h, w) = image.dims4()?;
        let factor = self.config.downsample_factor();
        let moments = if tiling.applies((h / factor, w / factor), factor) {
            let map = TiledMap {
                layout: tiling.layout(factor)?,
                input_scale: factor,
                output_scale: 1,
            };
            map.apply(image, |tile| self.encode_moments(tile))?
        } else {
            self.encode_moments(image)?
        };
        DiagonalGaussian::from_moments(&moments)
    }

    /// [`AutoencoderKL::decode`] with explicit tiling settings: in tiles when the latent is
    /// larger than one tile, else whole.
    pub fn decode_with(&self, z: &Tensor, tiling: &TilingSettings) -> Result<Tensor> {
        self.check_channels(z, self.config.latent_channels, "latent")?;
        let (_, _, h, w) = z.dims4()?;
        let factor = self.config.downsample_factor();
        if !tiling.applies((h, w), factor) {
            return self.decode_whole(z);
        }
        let map = TiledMap {
            layout: tiling.layout(factor)?,
            input_scale: 1,
            output_scale: factor,
        };
        map.apply(z, |tile| self.decode_whole(tile))
    }
}
