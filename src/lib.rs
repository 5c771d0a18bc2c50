//! Mirror: zero-shot image translation with Stable Diffusion (MirrorDiffusion).
pub mod app;
pub mod cli;
pub mod demo;
pub mod engine;
pub mod shapes;
pub mod worker;
