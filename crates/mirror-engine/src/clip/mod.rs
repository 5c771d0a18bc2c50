//! The CLIP text encoder of Stable Diffusion (transformers' `CLIPTextModel`): token and
//! position embeddings, pre-LayerNorm transformer layers with causal self-attention, a final
//! LayerNorm. Its `last_hidden_state` is the UNet's cross-attention context.
//! Ports: https://github.com/huggingface/transformers/blob/v4.44.0/src/transformers/models/clip/modeling_clip.py (pinned).

mod config;
mod transformer;

pub use config::{ClipActivation, ClipTextConfig};
pub use transformer::ClipTextTransformer;
