//! Per-token cross-attention heat maps (DAAM-style): the conditional sample's `attn2`
//! probabilities, averaged over heads and over the layers of each resolution.

use candle_core::{D, DType, Result, Tensor};

use crate::unet::AttentionMaps;

/// All layers of one query resolution, averaged: `data` is `[tokens, height, width]`.
#[derive(Debug, Clone)]
pub struct ResolutionMap {
    /// Height of the query grid (the latent height over the layer's downsampling).
    pub height: usize,
    /// Width of the query grid (the latent width over the layer's downsampling).
    pub width: usize,
    /// Number of `attn2` layers averaged.
    pub layers: usize,
    /// The maps, row-major `[tokens, height, width]`.
    pub data: Vec<f32>,
}

/// Maps of the first `tokens` token positions (BOS, the words, the first EOS), per resolution,
/// finest first.
#[derive(Debug, Clone)]
pub struct TokenHeatmaps {
    /// Number of token positions kept.
    pub tokens: usize,
    /// One averaged map per query resolution, finest first.
    pub resolutions: Vec<ResolutionMap>,
}

impl TokenHeatmaps {
    /// From one UNet call's captured probabilities (`[batch*heads, q, 77]` per layer); uses the
    /// last sample of the batch (the conditional half of a CFG pair) and keeps `tokens` tokens.
    pub fn from_attention(maps: &AttentionMaps, tokens: usize) -> Result<Self> {
        let mut resolutions: Vec<(usize, usize, usize, Tensor)> = Vec::new();
        for layer in &maps.layers {
            let Some(probs) = &layer.probs else { continue };
            let (rows, q, keys) = probs.dims3()?;
            let heads = layer.heads;
            let (h, w) = layer.spatial;
            if rows % heads != 0 || q != h * w {
                candle_core::bail!("attention map of `{}` has an unexpected shape", layer.name);
            }
            let tokens = tokens.min(keys);
            let last = probs.detach().narrow(0, rows - heads, heads)?;
            // [heads, q, keys] -> mean over heads -> [tokens, q]
            let map = last
                .mean(0)?
                .narrow(D::Minus1, 0, tokens)?
                .t()?
                .to_dtype(DType::F32)?;
            match resolutions.iter_mut().find(|r| r.0 == h && r.1 == w) {
                Some(r) => {
                    r.2 += 1;
                    r.3 = (&r.3 + map)?;
                }
                None => resolutions.push((h, w, 1, map)),
            }
        }
        resolutions.sort_by_key(|r| std::cmp::Reverse(r.0 * r.1));
        let tokens = resolutions
            .first()
            .map(|r| r.3.dim(0))
            .transpose()?
            .unwrap_or(0);
        let resolutions = resolutions
            .into_iter()
            .map(|(height, width, layers, sum)| {
                let data = (sum / layers as f64)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(ResolutionMap {
                    height,
                    width,
                    layers,
                    data,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tokens,
            resolutions,
        })
    }

    /// One token's map at `out_h`×`out_w`: one resolution (index into `resolutions`) or, with
    /// `None`, the average of all resolutions, each upsampled bilinearly first.
    pub fn token_map(
        &self,
        token: usize,
        resolution: Option<usize>,
        out_h: usize,
        out_w: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; out_h * out_w];
        if token >= self.tokens {
            return out;
        }
        let chosen: Vec<&ResolutionMap> = match resolution {
            Some(i) => self.resolutions.get(i).into_iter().collect(),
            None => self.resolutions.iter().collect(),
        };
        for r in &chosen {
            let plane = &r.data[token * r.height * r.width..(token + 1) * r.height * r.width];
            let up = bilinear(plane, r.height, r.width, out_h, out_w);
            for (o, u) in out.iter_mut().zip(up) {
                *o += u / chosen.len() as f32;
            }
        }
        out
    }

    /// The mean of several steps' maps (same model and prompt).
    pub fn average(maps: &[&TokenHeatmaps]) -> Option<TokenHeatmaps> {
        let first = maps.first()?;
        let mut avg = (*first).clone();
        for m in &maps[1..] {
            for (a, b) in avg.resolutions.iter_mut().zip(&m.resolutions) {
                for (x, y) in a.data.iter_mut().zip(&b.data) {
                    *x += y;
                }
            }
        }
        let n = maps.len() as f32;
        for r in &mut avg.resolutions {
            r.data.iter_mut().for_each(|x| *x /= n);
        }
        Some(avg)
    }
}

/// Bilinear resampling with align_corners = false (as torch's interpolate).
pub fn bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(out_h * out_w);
    let coord = |o: usize, n_in: usize, n_out: usize| -> (usize, usize, f32) {
        let x = ((o as f32 + 0.5) * n_in as f32 / n_out as f32 - 0.5).max(0.0);
        let i0 = (x.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, x - i0 as f32)
    };
    for oy in 0..out_h {
        let (y0, y1, fy) = coord(oy, h, out_h);
        for ox in 0..out_w {
            let (x0, x1, fx) = coord(ox, w, out_w);
            let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
            let bottom = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_keeps_constants_and_corners() {
        let flat = bilinear(&[2.0; 4], 2, 2, 5, 3);
        assert!(flat.iter().all(|v| (v - 2.0).abs() < 1e-6));
        let ramp = bilinear(&[0.0, 1.0], 1, 2, 1, 4);
        assert_eq!(ramp, vec![0.0, 0.25, 0.75, 1.0]);
    }
}
