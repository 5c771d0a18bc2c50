//! The engine: Stable Diffusion models written on candle, the DDIM scheduler, model loading
//! and the editing methods. No UI code lives here.

pub mod clip;
pub mod device;
pub mod direction;
pub mod error;
pub mod forward;
pub mod imageio;
pub mod loader;
pub mod methods;
pub mod model;
pub mod model_notes;
pub mod nn;
pub mod pipeline;
pub mod rng;
pub mod scheduler;
pub mod session;
pub mod tokenizer;
pub mod unet;
pub mod vae;

pub use error::{EngineError, Result};
