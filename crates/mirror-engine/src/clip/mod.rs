//! The CLIP text encoder of Stable Diffusion (transformers' `CLIPTextModel`): token and
//! position embeddings, pre-LayerNorm transformer layers with causal self-attention, a final
//! LayerNorm. Its `last_hidden_state` is the UNet's cross-attention context.

mod config;
mod transformer;

pub use config::{ClipActivation, ClipTextConfig};
pub use transformer::ClipTextTransformer;
