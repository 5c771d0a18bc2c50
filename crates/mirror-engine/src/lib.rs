//! Mirror's engine: Stable Diffusion models written on candle, the DDIM scheduler, model
//! loading, the editing methods and sessions, image I/O, and the demo world (the shape
//! renderer and the built-in demo model). No UI code lives here: the app and the CLI build on
//! this crate, never the other way round.

#![warn(missing_docs)]

pub mod branch;
pub mod clip;
pub mod config;
pub mod demo;
pub mod device;
pub mod direction;
pub mod error;
pub mod forward;
pub mod imageio;
pub mod loader;
pub mod memory;
pub mod methods;
pub mod model;
pub mod nn;
pub mod pipeline;
pub mod recipe;
pub mod rng;
pub mod scheduler;
pub mod session;
pub mod shapes;
pub mod threads;
pub mod tokenizer;
pub mod unet;
pub mod vae;

pub use error::{EngineError, Result};
