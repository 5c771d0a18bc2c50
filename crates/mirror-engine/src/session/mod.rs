//! A loaded model plus its caches, running translation requests step by step with events.
//! This is the engine's front door for the worker thread and the CLI.

mod cache;
mod direction;
mod keys;
mod preview;
mod progress;
mod request;
mod run;
mod stepper;

use crate::loader::lora::{LoraInfo, LoraSpec};
use std::path::{Path, PathBuf};

use candle_core::Device;

pub use crate::branch::Method;
pub use cache::{CacheKey, CachedInversion, CachedReconstruction, InversionCache};
pub use request::{
    BranchImages, DdimTranslation, DirectionChoice, InversionChoice, TranslateOutcome,
    TranslateRequest,
};

use crate::imageio::image_to_tensor;
use crate::methods::mask::{EditMask, MaskFinder, mask_image};
use crate::model::StableDiffusion;
use crate::pipeline::StageContext;
use crate::pipeline::stages::encode_image;
use crate::pipeline::{CancelToken, Event};
use crate::{EngineError, Result};
use image::GrayImage;

/// A loaded model with its inversion cache: runs translation requests one at a time.
pub struct Session {
    sd: StableDiffusion,
    cache: InversionCache,
}

impl Session {
    /// Loads a model; inversions are cached in memory and in the user cache folder.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Ok(Self::new(
            StableDiffusion::load(path, device)?,
            InversionCache::default_dir(),
        ))
    }

    /// A session around a loaded model; `cache_dir` None keeps the cache in memory only.
    pub fn new(sd: StableDiffusion, cache_dir: Option<PathBuf>) -> Self {
        Self {
            sd,
            cache: InversionCache::new(cache_dir),
        }
    }

    /// The loaded model.
    pub fn model(&self) -> &StableDiffusion {
        &self.sd
    }

    /// Merges `loras` into the model (replacing earlier ones; empty: none). Cached inversions
    /// and reconstructions are kept apart by the LoRAs' fingerprints and strengths, so a run
    /// never reuses one made without them.
    pub fn set_loras(&mut self, loras: &[LoraSpec]) -> Result<Vec<LoraInfo>> {
        self.sd.set_loras(loras)
    }

    /// Whether `req` would reuse a cached inversion (a re-edit).
    pub fn has_cached_inversion(&self, req: &TranslateRequest) -> bool {
        req.use_cache
            && self
                .cache
                .contains(&keys::inversion_key(keys::ModelIdentity::of(&self.sd), req).key())
    }

    /// Runs `req`, streaming events; a cancelled run returns `Ok` with `cancelled` set and
    /// whatever it had. A step that turns NaN fails with [`EngineError::StepNotFinite`], a
    /// device out of memory with [`EngineError::OutOfMemory`]; the session stays usable.
    pub fn translate(
        &mut self,
        req: &TranslateRequest,
        cancel: &CancelToken,
        events: &mut dyn FnMut(Event),
    ) -> Result<TranslateOutcome> {
        run::translate(&self.sd, &mut self.cache, req, cancel, events)
            .map_err(|e| e.classified(&self.sd.device))
    }

    /// The mask a run of `req` with a found mask would find (on the photo's latent, source
    /// caption against target prompt, `req`'s seed; `req`'s finder when it names one, else
    /// the default), without the run: at `req.image`'s size, white = may change. The app's
    /// "Fill from the edit".
    pub fn find_edit_mask(
        &self,
        req: &TranslateRequest,
        cancel: &CancelToken,
    ) -> Result<GrayImage> {
        let sd = &self.sd;
        let source = image_to_tensor(&req.image, &sd.device)?;
        let (_, posterior) = keys::inversion_plan(req);
        let z0 = encode_image(sd, &source, posterior)?;
        let caption = sd.encode_prompt(&req.source_prompt)?;
        let automatic = TranslateRequest {
            mask: match req.mask {
                EditMask::Found(finder) => EditMask::Found(finder),
                _ => EditMask::Found(MaskFinder::default()),
            },
            ..req.clone()
        };
        let ctx = StageContext::new(sd, cancel);
        let mask = stepper::edit_mask(&ctx, &automatic, &z0, &caption)?
            .ok_or_else(|| EngineError::InvalidInput("no mask was found".into()))?;
        let (w, h) = req.image.dimensions();
        mask_image(&mask, w, h)
    }
}
