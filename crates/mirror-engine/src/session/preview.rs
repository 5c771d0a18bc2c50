//! How a step's branches become what the user sees: the distance to the inversion (the
//! mirror error), per-token heat maps, decoded previews every k steps, and the final images.

use candle_core::Tensor;

use super::progress::RunEvents;
use super::request::{BranchImages, TranslateRequest};
use crate::Result;
use crate::branch::{Branch, Method, Role};
use crate::model::StableDiffusion;
use crate::pipeline::stages::{decode, mse};
use crate::pipeline::{BranchStep, Event, MethodStep, Phase, TokenHeatmaps};
use crate::unet::AttentionMaps;

pub(super) struct Preview<'a> {
    sd: &'a StableDiffusion,
    req: &'a TranslateRequest,
    /// Tokens the heat maps cover (the longer prompt).
    tokens: usize,
}

impl<'a> Preview<'a> {
    pub fn new(sd: &'a StableDiffusion, req: &'a TranslateRequest) -> Result<Self> {
        let tokens = sd
            .tokenizer
            .encode_unpadded(&req.source_prompt)?
            .len()
            .max(sd.tokenizer.encode_unpadded(&req.target_prompt)?.len())
            .min(sd.tokenizer.max_length());
        Ok(Self { sd, req, tokens })
    }

    /// The branches of step `i` as reported; `target` is the inversion latent they mirror.
    pub fn branches(
        &self,
        step: &MethodStep,
        target: &Tensor,
        i: usize,
    ) -> Result<Vec<BranchStep>> {
        let n = self.req.steps;
        let decode_now = self
            .req
            .decode_every
            .is_some_and(|k| k > 0 && ((i + 1).is_multiple_of(k) || i + 1 == n));
        step.branches
            .iter()
            .map(|b| {
                Ok(BranchStep {
                    branch: b.branch,
                    latent: b.latent.clone(),
                    predicted_x0: b.predicted_x0.clone(),
                    mirror_error: Some(mse(&b.latent, target)?),
                    attention: heatmaps(self.req.attention_maps, b.maps.as_ref(), self.tokens)?,
                    decoded: if decode_now {
                        Some(decode(self.sd, &b.predicted_x0)?)
                    } else {
                        None
                    },
                })
            })
            .collect()
    }
}

fn heatmaps(
    enabled: bool,
    maps: Option<&AttentionMaps>,
    tokens: usize,
) -> Result<Option<TokenHeatmaps>> {
    match (enabled, maps) {
        (true, Some(m)) => Ok(Some(TokenHeatmaps::from_attention(m, tokens)?)),
        _ => Ok(None),
    }
}

/// The final latent of every branch as an image. The method's own branches fill
/// `translation`/`reconstruction`; plain DDIM's fill its own slots (and the method's when
/// DDIM is the method).
pub(super) fn decode_branches(
    sd: &StableDiffusion,
    req: &TranslateRequest,
    latents: &[(Branch, Tensor)],
    events: &RunEvents,
) -> Result<BranchImages> {
    events.emit(Event::Phase {
        phase: Phase::Decode,
        steps: latents.len(),
    });
    let mut images = BranchImages::default();
    for (branch, latent) in latents {
        let slot = match (branch.method, branch.role) {
            (Method::Ddim, Role::Reconstruction) => &mut images.ddim_reconstruction,
            (Method::Ddim, Role::Translation) => &mut images.ddim_translation,
            (_, Role::Reconstruction) => &mut images.reconstruction,
            (_, Role::Translation) => &mut images.translation,
        };
        *slot = Some(decode(sd, latent)?);
    }
    if req.method == Method::Ddim {
        images.translation = images.ddim_translation.clone();
        images.reconstruction = images.ddim_reconstruction.clone();
    }
    Ok(images)
}
