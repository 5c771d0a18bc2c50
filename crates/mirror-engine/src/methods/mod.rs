//! The editing methods, one module each, built from `pipeline::stages`, and text-to-image
//! sampling (`generate`), which runs plain DDIM's denoising step from noise.

pub mod attention_mask;
pub mod ddim;
pub mod generate;
pub mod mask;
mod mask_upsample;
pub mod mirror;
pub mod pix2pix_zero;
