//! Forward-only passes in the model's forward type (f32, or f16/bf16 on request): the half
//! copies of the networks, and the UNet view that casts inputs in and results back to f32.
//! Gradient passes never come here: they use the f32 networks of
//! [`StableDiffusion`](crate::model::StableDiffusion).

use candle_core::{DType, Result, Tensor};

use crate::clip::ClipTextTransformer;
use crate::unet::{
    AttentionMaps, CaptureRequest, CapturedAttention, Injection, UNet2DConditionModel,
};
use crate::vae::AutoencoderKL;

/// The networks of forward-only passes, in a half type.
#[derive(Debug, Clone)]
pub struct ForwardNets {
    /// The half type the copies hold (f16 or bf16).
    pub dtype: DType,
    /// The CLIP text encoder in `dtype`.
    pub text_encoder: ClipTextTransformer,
    /// The UNet in `dtype`.
    pub unet: UNet2DConditionModel,
    /// The VAE in `dtype`.
    pub vae: AutoencoderKL,
}

/// A UNet for forward-only passes: latents and contexts are cast to its type on the way in,
/// predictions and attention records back to f32 on the way out (latents, schedulers and
/// losses stay f32). With f32 weights every cast is a no-op.
#[derive(Clone, Copy)]
pub struct ForwardUnet<'a> {
    unet: &'a UNet2DConditionModel,
    dtype: DType,
}

impl<'a> ForwardUnet<'a> {
    /// A view of `unet` that computes in `dtype` (the type of its weights).
    pub fn new(unet: &'a UNet2DConditionModel, dtype: DType) -> Self {
        Self { unet, dtype }
    }

    /// The type the network computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// eps prediction in f32 (see [`UNet2DConditionModel::forward`]).
    pub fn forward(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.unet
            .forward(
                &sample.to_dtype(self.dtype)?,
                timestep,
                &context.to_dtype(self.dtype)?,
            )?
            .to_dtype(DType::F32)
    }

    /// As [`UNet2DConditionModel::forward_with_capture`], everything returned in f32.
    pub fn forward_with_capture(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        request: CaptureRequest,
    ) -> Result<(Tensor, AttentionMaps)> {
        self.forward_injecting(sample, timestep, context, request, None)
    }

    /// As [`UNet2DConditionModel::forward_injecting`], everything returned in f32.
    pub fn forward_injecting(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        request: CaptureRequest,
        inject: Option<&Injection>,
    ) -> Result<(Tensor, AttentionMaps)> {
        let (eps, maps) = self.unet.forward_injecting(
            &sample.to_dtype(self.dtype)?,
            timestep,
            &context.to_dtype(self.dtype)?,
            request,
            inject,
        )?;
        Ok((eps.to_dtype(DType::F32)?, maps_in_f32(maps)?))
    }
}

/// Attention records as f32 (they serve as references for f32 gradient passes and heat maps).
fn maps_in_f32(maps: AttentionMaps) -> Result<AttentionMaps> {
    let f32 = |t: Option<Tensor>| t.map(|t| t.to_dtype(DType::F32)).transpose();
    let layers = maps
        .layers
        .into_iter()
        .map(|l| {
            Ok(CapturedAttention {
                probs: f32(l.probs)?,
                keys: f32(l.keys)?,
                values: f32(l.values)?,
                ..l
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(AttentionMaps { layers })
}
