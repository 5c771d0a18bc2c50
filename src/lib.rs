//! Mirror: zero-shot image translation with Stable Diffusion (MirrorDiffusion).
pub mod engine;
pub mod cli;
