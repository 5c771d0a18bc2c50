//! Mirror: zero-shot image translation with Stable Diffusion (MirrorDiffusion). This crate is
//! the desktop app, the background worker and the headless commands; the engine they drive is
//! the `mirror-engine` crate.
pub mod app;
pub mod cli;
pub mod folder_run;
pub mod worker;
