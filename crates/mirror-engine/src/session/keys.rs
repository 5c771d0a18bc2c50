//! Cache identity: which stored inversion or reconstruction a request may reuse. A key holds
//! every input its result depends on, and nothing else, so that a re-edit (a new target
//! prompt, strength or method) finds the inversion of the first run.

use candle_core::DType;

use super::cache::CacheKey;
use super::request::TranslateRequest;
use crate::branch::Method;
use crate::imageio::pixel_hash;
use crate::methods::mirror::MirrorPreset;
use crate::model::StableDiffusion;
use crate::pipeline::stages::{InversionGrid, InversionSettings, KlRegularizer, Posterior};
use crate::vae::VaeTiles;

use super::request::InversionChoice;

/// What of the model a key depends on: its weights, and the type forward passes run in.
#[derive(Debug, Clone)]
pub(super) struct ModelIdentity {
    /// The model's fingerprint, followed by each merged LoRA's fingerprint and strength (a
    /// model without LoRAs keeps the keys it always had).
    pub fingerprint: String,
    pub forward_dtype: DType,
}

impl ModelIdentity {
    pub fn of(sd: &StableDiffusion) -> Self {
        let mut fingerprint = sd.info.fingerprint.clone();
        for lora in &sd.loras {
            fingerprint += &format!("|lora {}×{}", lora.fingerprint, lora.strength);
        }
        Self {
            fingerprint,
            forward_dtype: sd.forward_dtype(),
        }
    }
}

/// The inversion a request needs: grid, regulariser and posterior follow the preset (and,
/// for plain DDIM, the inversion choice).
pub(super) fn inversion_plan(req: &TranslateRequest) -> (InversionSettings, Posterior) {
    let authors = req.preset() == MirrorPreset::Authors;
    // Plain DDIM inverts without regulariser (docs/algorithm.md §10.1) unless asked to share.
    let regularised = req.method != Method::Ddim || req.inversion == InversionChoice::Regularized;
    let settings = InversionSettings {
        steps: req.steps,
        grid: if authors {
            InversionGrid::Authors
        } else {
            InversionGrid::Consistent
        },
        kl: regularised.then(KlRegularizer::default),
    };
    let posterior = if authors {
        Posterior::Sample(req.seed)
    } else {
        Posterior::Mean
    };
    (settings, posterior)
}

/// The inversion's key: image, caption, steps, grid, regulariser, posterior and model only
/// (not the method), so that every method on one image shares it.
pub(super) fn inversion_key(model: ModelIdentity, req: &TranslateRequest) -> CacheKey {
    let (plan, posterior) = inversion_plan(req);
    CacheKey {
        model: model.fingerprint.to_string(),
        image: pixel_hash(&req.image),
        caption: req.source_prompt.clone(),
        steps: req.steps,
        variant: format!("{:?}|{:?}|{:?}", plan.grid, plan.kl, posterior)
            // A half-precision inversion is another trajectory (f32 keys stay as they were).
            + &forward_type_key(model.forward_dtype)
            // So is one from a tiled encode (whole-image keys stay as they were).
            + if req.vae_tiles == VaeTiles::On { "|vae tiles" } else { "" },
    }
}

/// `|forward f16` (or bf16) when forward passes run in a half type, else nothing.
fn forward_type_key(dtype: DType) -> String {
    match dtype {
        DType::F32 => String::new(),
        dtype => format!("|forward {}", crate::device::dtype_word(dtype)),
    }
}

/// The Mirror reconstruction's key: the inversion's plus what redescription depends on.
pub(super) fn reconstruction_key(model: ModelIdentity, req: &TranslateRequest) -> String {
    let mut key = inversion_key(model, req);
    let r = &req.mirror.redescribe;
    key.variant.push_str(&format!(
        "|reconstruction {}|redescribe {} {} {} {}",
        req.preset(),
        r.iterations,
        r.lr,
        r.early_stop_base,
        r.early_stop_slope
    ));
    // Direct Inversion changes the recorded latents (old keys stay as they were).
    if req.mirror.exact_mirror {
        key.variant.push_str("|exact mirror");
    }
    // The authors' reconstruction pass runs a (no-op) CFG with the guidance scale.
    if req.preset() == MirrorPreset::Authors {
        key.variant
            .push_str(&format!("|guidance {}", req.mirror.guidance_scale));
    }
    key.key()
}

#[cfg(test)]
mod tests {
    use image::{Rgb, RgbImage};

    use super::*;
    use crate::methods::mirror::MirrorSettings;
    use crate::session::{DdimTranslation, DirectionChoice};

    fn model_a() -> ModelIdentity {
        ModelIdentity {
            fingerprint: "model-a".into(),
            forward_dtype: DType::F32,
        }
    }

    /// A named change to a request.
    type Edit = (&'static str, fn(&mut TranslateRequest));

    fn request() -> TranslateRequest {
        TranslateRequest::new(RgbImage::new(8, 8), "a red circle", "a blue circle")
    }

    fn keys(model: ModelIdentity, req: &TranslateRequest) -> (String, String) {
        (
            inversion_key(model.clone(), req).key(),
            reconstruction_key(model, req),
        )
    }

    /// Edits that change neither key: what only the translation branch reads.
    #[test]
    fn a_re_edit_keeps_both_keys() {
        let base = keys(model_a(), &request());
        let edits: [Edit; 10] = [
            ("target prompt", |r| {
                r.target_prompt = "a green square".into()
            }),
            ("edit strength", |r| r.edit_strength = 0.5),
            ("direction", |r| {
                r.direction = DirectionChoice::PromptDifference
            }),
            ("guidance", |r| r.mirror.guidance_scale = 9.0),
            ("attention guidance", |r| r.mirror.xa_guidance = 0.3),
            ("edit scale", |r| r.mirror.edit_scale = 0.2),
            ("compare", |r| r.compare_ddim = false),
            ("ddim translation", |r| {
                r.ddim_translation = DdimTranslation::Direction { guidance: 3.0 }
            }),
            ("previews", |r| {
                r.attention_maps = true;
                r.decode_every = Some(2);
                r.record_dump = true;
            }),
            // The recommended preset uses the posterior mean: the seed draws nothing.
            ("seed (recommended preset)", |r| r.seed = 7),
        ];
        for (what, edit) in edits {
            let mut req = request();
            edit(&mut req);
            assert_eq!(keys(model_a(), &req), base, "{what} changed a key");
        }
        // Every method shares the inversion of the method-default regularised grid.
        let mut req = request();
        req.method = Method::Pix2PixZero;
        assert_eq!(inversion_key(model_a(), &req).key(), base.0);
    }

    /// Inputs of the inversion: each changes both keys.
    #[test]
    fn the_inversion_inputs_change_both_keys() {
        let base = keys(model_a(), &request());
        let edits: [Edit; 6] = [
            ("source prompt", |r| r.source_prompt = "a red square".into()),
            ("a tiled encode", |r| r.vae_tiles = VaeTiles::On),
            ("steps", |r| r.steps = 20),
            ("image", |r| r.image.put_pixel(3, 4, Rgb([1, 2, 3]))),
            ("preset", |r| {
                r.mirror = MirrorSettings::with_preset(MirrorPreset::Authors)
            }),
            ("plain DDIM's unregularised inversion", |r| {
                r.method = Method::Ddim
            }),
        ];
        for (what, edit) in edits {
            let mut req = request();
            edit(&mut req);
            let changed = keys(model_a(), &req);
            assert_ne!(changed.0, base.0, "{what} kept the inversion key");
            assert_ne!(changed.1, base.1, "{what} kept the reconstruction key");
        }
        let other_model = ModelIdentity {
            fingerprint: "model-b".into(),
            ..model_a()
        };
        let half = ModelIdentity {
            forward_dtype: DType::F16,
            ..model_a()
        };
        for model in [other_model, half] {
            let what = format!("{model:?}");
            assert_ne!(keys(model, &request()).0, base.0, "{what}");
        }
    }

    #[test]
    fn the_seed_matters_where_the_posterior_is_sampled() {
        let mut req = request();
        req.mirror = MirrorSettings::with_preset(MirrorPreset::Authors);
        let base = keys(model_a(), &req);
        req.seed = 7;
        assert_ne!(keys(model_a(), &req).0, base.0);
        // The authors' reconstruction also runs its (no-op) guidance.
        let mut req = request();
        req.mirror = MirrorSettings::with_preset(MirrorPreset::Authors);
        req.mirror.guidance_scale = 2.0;
        let changed = keys(model_a(), &req);
        assert_eq!(changed.0, base.0);
        assert_ne!(changed.1, base.1);
    }

    #[test]
    fn redescription_changes_only_the_reconstruction_key() {
        let base = keys(model_a(), &request());
        let edits: [Edit; 5] = [
            ("iterations", |r| r.mirror.redescribe.iterations += 1),
            ("exact mirror", |r| r.mirror.exact_mirror = true),
            ("learning rate", |r| r.mirror.redescribe.lr *= 2.0),
            ("early stop base", |r| {
                r.mirror.redescribe.early_stop_base += 1.0
            }),
            ("early stop slope", |r| {
                r.mirror.redescribe.early_stop_slope += 1.0
            }),
        ];
        for (what, edit) in edits {
            let mut req = request();
            edit(&mut req);
            let changed = keys(model_a(), &req);
            assert_eq!(changed.0, base.0, "{what} changed the inversion key");
            assert_ne!(changed.1, base.1, "{what} kept the reconstruction key");
        }
    }
}
