//! The edit mask found from the cross-attention maps of the words the edit changes
//! (prompt-to-prompt's `LocalBlend` words, Hertz et al., 2022): the photo's latent is noised
//! a few times, the UNet reads it under the source and under the target description, and the
//! mask is where the source's changed words and the target's new words attend. A background
//! word's edit thus masks the background, a shape word's edit the shape (old and new).
//! Ports the word-map part of
//! <https://github.com/google/prompt-to-prompt/blob/8186230/prompt-to-prompt_stable.ipynb> (pinned).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::pipeline::StageContext;
use crate::pipeline::heatmap::TokenHeatmaps;
use crate::unet::CaptureRequest;
use crate::vae::gaussian::standard_normal;

/// How the attention mask is found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttentionMaskSettings {
    /// Noise draws averaged.
    pub draws: usize,
    /// How far the photo is noised, 0–1 of the training schedule.
    pub strength: f64,
    /// A cell belongs to the mask where the changed words' map, stretched to 0–1 between its
    /// lowest and highest cell, reaches this.
    pub threshold: f64,
}

impl Default for AttentionMaskSettings {
    fn default() -> Self {
        Self {
            draws: 4,
            strength: 0.5,
            threshold: 0.5,
        }
    }
}

/// Token positions (in the padded id sequences, 1 = the first word) that an edit changes:
/// the source's tokens the target drops or replaces, and the target's new ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangedTokens {
    /// Positions in the source prompt.
    pub source: Vec<usize>,
    /// Positions in the target prompt.
    pub target: Vec<usize>,
}

impl ChangedTokens {
    /// The tokens outside the longest common subsequence of the two prompts' words (ids
    /// between BOS and the first EOS of each padded sequence).
    pub fn between(source_ids: &[u32], target_ids: &[u32], eos: u32) -> Self {
        let words = |ids: &[u32]| -> Vec<u32> {
            ids.iter()
                .skip(1)
                .take_while(|&&id| id != eos)
                .copied()
                .collect()
        };
        let (a, b) = (words(source_ids), words(target_ids));
        let common = longest_common_subsequence(&a, &b);
        let unmatched = |len: usize, matched: &dyn Fn(usize) -> bool| -> Vec<usize> {
            (0..len).filter(|&i| !matched(i)).map(|i| i + 1).collect()
        };
        Self {
            source: unmatched(a.len(), &|i| common.iter().any(|&(s, _)| s == i)),
            target: unmatched(b.len(), &|j| common.iter().any(|&(_, t)| t == j)),
        }
    }

    /// Whether the prompts differ in any word.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty() && self.target.is_empty()
    }
}

/// Index pairs of a longest common subsequence of `a` and `b`, in order.
fn longest_common_subsequence(a: &[u32], b: &[u32]) -> Vec<(usize, usize)> {
    let (n, m) = (a.len(), b.len());
    // lengths[i][j]: LCS length of a[i..] and b[j..].
    let mut lengths = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lengths[i][j] = if a[i] == b[j] {
                lengths[i + 1][j + 1] + 1
            } else {
                lengths[i + 1][j].max(lengths[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut pairs) = (0, 0, Vec::new());
    while i < n && j < m {
        if a[i] == b[j] {
            pairs.push((i, j));
            i += 1;
            j += 1;
        } else if lengths[i + 1][j] >= lengths[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    pairs
}

/// The attention mask of the edit from `source` to `target` (text embeddings `[1, L, D]`) on
/// the photo's clean latent `z0` `[1, C, h, w]`: `[1, 1, h, w]` of 0 and 1. Seeded: the same
/// seed gives the same mask. Prompts that differ in no word, and words read everywhere alike,
/// give the whole picture.
pub fn attention_mask(
    ctx: &StageContext,
    z0: &Tensor,
    (source, target): (&Tensor, &Tensor),
    changed: &ChangedTokens,
    settings: &AttentionMaskSettings,
    seed: u64,
) -> Result<Tensor> {
    let (_, _, h, w) = z0.dims4()?;
    let whole = || Ok(Tensor::ones((1, 1, h, w), DType::F32, z0.device())?);
    if changed.is_empty() {
        return whole();
    }
    let sd = ctx.sd;
    let alphas = sd.scheduler.alphas_cumprod_f64();
    let train = alphas.len();
    let t = ((settings.strength.clamp(0.0, 1.0) * train as f64) as usize).min(train - 1);
    let (a, s) = (alphas[t].sqrt(), (1.0 - alphas[t]).sqrt());
    let z0 = z0.to_dtype(DType::F32)?;
    let unet = sd.forward_unet();
    let request = CaptureRequest {
        probs: true,
        keys_values: false,
    };
    let (mut source_map, mut target_map) = (vec![0f32; h * w], vec![0f32; h * w]);
    for k in 0..settings.draws.max(1) {
        ctx.cancel.check()?;
        let noise = standard_normal(seed.wrapping_add(k as u64), z0.elem_count());
        let noise = Tensor::from_vec(noise, z0.shape(), z0.device())?;
        let zt = ((&z0 * a)? + (noise * s)?)?;
        for (context, tokens, sum) in [
            (source, &changed.source, &mut source_map),
            (target, &changed.target, &mut target_map),
        ] {
            if tokens.is_empty() {
                continue;
            }
            let (_, maps) = unet.forward_with_capture(&zt, t as f64, context, request)?;
            ctx.unet_call_done();
            let last = tokens.iter().max().copied().unwrap_or(0);
            let heatmaps = TokenHeatmaps::from_attention(&maps, last + 1)?;
            let fine = fine_resolutions(&heatmaps, h);
            for &token in tokens {
                for &r in &fine {
                    for (acc, v) in sum.iter_mut().zip(heatmaps.token_map(token, Some(r), h, w)) {
                        *acc += v;
                    }
                }
            }
        }
    }
    let mask: Vec<f32> = normalised(&source_map)
        .zip(normalised(&target_map))
        .map(|(x, y)| f32::from(x.max(y) >= settings.threshold as f32))
        .collect();
    if mask.iter().all(|&m| m == 0.0) {
        // Both maps are flat: the words are read everywhere alike.
        return whole();
    }
    Ok(Tensor::from_vec(mask, (1, 1, h, w), z0.device())?)
}

/// The resolutions whose grid is at least a quarter of the latent's height (prompt-to-prompt
/// reads SD's 16² maps of a 64² latent): the coarsest layers' maps cover the picture in a few
/// cells and would spread the mask over all of it.
fn fine_resolutions(heatmaps: &TokenHeatmaps, latent_height: usize) -> Vec<usize> {
    let fine: Vec<usize> = (0..heatmaps.resolutions.len())
        .filter(|&i| 4 * heatmaps.resolutions[i].height >= latent_height)
        .collect();
    if fine.is_empty() {
        // Only coarse layers: the finest of them.
        return (0..heatmaps.resolutions.len().min(1)).collect();
    }
    fine
}

/// The map stretched to 0–1 between its minimum and maximum (a flat map becomes zeros):
/// a word's attention never falls to zero anywhere, so a share of the maximum alone would
/// keep every cell when the map's contrast is low.
fn normalised(map: &[f32]) -> impl Iterator<Item = f32> + '_ {
    let max = map.iter().copied().fold(f32::MIN, f32::max);
    let min = map.iter().copied().fold(f32::MAX, f32::min);
    let range = max - min;
    map.iter()
        .map(move |&v| if range > 0.0 { (v - min) / range } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOS: u32 = 99;

    fn ids(words: &[u32]) -> Vec<u32> {
        let mut v = vec![98];
        v.extend_from_slice(words);
        v.resize(12, EOS);
        v
    }

    #[test]
    fn a_swapped_word_changes_its_position_in_both_prompts() {
        // "a red circle on a white background" → "a red circle on a green background".
        let changed = ChangedTokens::between(
            &ids(&[1, 2, 3, 4, 1, 5, 6]),
            &ids(&[1, 2, 3, 4, 1, 7, 6]),
            EOS,
        );
        assert_eq!(changed.source, [6]);
        assert_eq!(changed.target, [6]);
    }

    #[test]
    fn inserted_and_dropped_words_change_one_side_only() {
        // "a cat" → "a fluffy cat": only the target's new word.
        let changed = ChangedTokens::between(&ids(&[1, 2]), &ids(&[1, 3, 2]), EOS);
        assert_eq!(
            (changed.source.as_slice(), changed.target.as_slice()),
            (&[][..], &[2][..])
        );
        let changed = ChangedTokens::between(&ids(&[1, 3, 2]), &ids(&[1, 2]), EOS);
        assert_eq!(
            (changed.source.as_slice(), changed.target.as_slice()),
            (&[2][..], &[][..])
        );
        assert!(ChangedTokens::between(&ids(&[1, 2]), &ids(&[1, 2]), EOS).is_empty());
    }
}
