//! Mirror: zero-shot image translation with Stable Diffusion (MirrorDiffusion).
pub mod engine;
pub mod app;
pub mod worker;
pub mod cli;
