//! The one description of a run: a request written as a recipe (`Recipe::from_request`),
//! stored as JSON and read back into a request (`Recipe::apply_to`) gives every setting back;
//! recipes in the older layout (version 1, `redescription_*` keys, `extra.direction`) still
//! load; a recipe that cannot be read back names the field and leaves the request as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

use std::path::PathBuf;

use image::{GrayImage, RgbImage};
use mirror_engine::imageio::ResizePolicy;
use mirror_engine::methods::mask::{EditMask, MaskFinder};
use mirror_engine::methods::mirror::{MirrorPreset, MirrorSettings};
use mirror_engine::recipe::{RECIPE_VERSION, Recipe, RecipeOrigin};
use mirror_engine::session::{DirectionChoice, Method, TranslateRequest};
use mirror_engine::vae::VaeTiles;

fn origin(tiles: Option<bool>) -> RecipeOrigin {
    RecipeOrigin {
        resize: ResizePolicy::Pad,
        model: "tiny-sd".into(),
        model_hash: "0123456789abcdef".into(),
        image_hash: "feedface".into(),
        vae_tiles_used: tiles,
        loras: vec![mirror_engine::recipe::RecipeLora {
            file_name: "ink.safetensors".into(),
            fingerprint: "0123abcd".into(),
            strength: 0.7,
        }],
    }
}

/// Requests that differ from the defaults in every recorded setting, one per method,
/// preset and kind of direction.
fn requests() -> Vec<TranslateRequest> {
    let directions = [
        DirectionChoice::Templates { pairs: 64 },
        DirectionChoice::PromptDifference,
        DirectionChoice::File(PathBuf::from("/dirs/cat to dog.safetensors")),
        DirectionChoice::Sentences {
            source: vec!["a cat".into(), "a cat, indoors".into()],
            target: vec!["a dog".into()],
        },
    ];
    let methods = [Method::Mirror, Method::Ddim, Method::Pix2PixZero];
    let presets = [MirrorPreset::Authors, MirrorPreset::Recommended];
    let mut out = Vec::new();
    for (i, direction) in directions.into_iter().enumerate() {
        for (j, method) in methods.into_iter().enumerate() {
            let preset = presets[(i + j) % 2];
            let mut req =
                TranslateRequest::new(RgbImage::new(96, 64), "a photo of a cat", "a dog → 猫");
            req.method = method;
            req.steps = 7 + i;
            req.seed = 1000 + j as u64;
            req.edit_strength = 0.75;
            req.direction = direction.clone();
            req.compare_ddim = (i + j) % 2 == 0;
            req.mirror = MirrorSettings {
                guidance_scale: 3.25,
                xa_guidance: 0.4,
                edit_scale: 0.9,
                ramp_total: 0.5,
                extra_weight: 0.3,
                exact_mirror: j == 1,
                ..MirrorSettings::with_preset(preset)
            };
            req.mask = match (i + j) % 4 {
                0 => EditMask::Whole,
                1 => EditMask::Found(MaskFinder::DiffEdit),
                2 => EditMask::Found(MaskFinder::Attention),
                _ => EditMask::Given(GrayImage::from_fn(40, 30, |x, y| {
                    image::Luma([((x * 6 + y * 2) % 256) as u8])
                })),
            };
            req.mirror.redescribe.iterations = 3;
            req.mirror.redescribe.lr = 0.004;
            out.push(req);
        }
    }
    out
}

#[test]
fn every_recorded_setting_round_trips_through_a_recipe() {
    for req in requests() {
        for tiles in [Some(true), Some(false), None] {
            let recipe = Recipe::from_request(&req, &origin(tiles));
            assert_eq!(recipe.version, RECIPE_VERSION);
            assert_eq!((recipe.width, recipe.height), (96, 64));
            let stored = Recipe::from_json(&recipe.to_json(), "test").unwrap();
            assert_eq!(stored, recipe, "JSON keeps every field");

            // Replayed onto a request that differs everywhere.
            let mut back = TranslateRequest::new(RgbImage::new(96, 64), "", "");
            back.steps = 99;
            back.seed = 5;
            back.compare_ddim = !req.compare_ddim;
            stored.apply_to(&mut back).unwrap();
            assert_eq!(
                Recipe::from_request(&back, &origin(tiles)),
                recipe,
                "{}: the replayed request writes the same recipe",
                req.method
            );
            assert_eq!(back.mirror, req.mirror);
            assert_eq!(back.direction, req.direction);
            assert_eq!(back.compare_ddim, req.compare_ddim);
            assert_eq!(back.mask, req.mask, "the mask, pixel for pixel");
            let replay = match tiles {
                Some(true) => VaeTiles::On,
                Some(false) => VaeTiles::Off,
                None => VaeTiles::Auto,
            };
            assert_eq!(back.vae_tiles, replay);
        }
    }
}

/// A hand-edited `guidance_scale` wins over the whole settings stored beside it.
#[test]
fn the_shown_fields_win_over_the_stored_settings() {
    let req = &requests()[0];
    let mut recipe = Recipe::from_request(req, &origin(None));
    recipe.guidance_scale = 9.0;
    recipe.redescribe_iterations = 0;
    let mut back = TranslateRequest::new(RgbImage::new(8, 8), "", "");
    recipe.apply_to(&mut back).unwrap();
    assert_eq!(back.mirror.guidance_scale, 9.0);
    assert_eq!(back.mirror.redescribe.iterations, 0);
    assert_eq!(back.mirror.edit_scale, req.mirror.edit_scale);
}

/// A recipe as version 1 wrote it: the iteration count and learning rate under their old
/// names, the direction and the comparison under `extra`.
#[test]
fn version_one_recipes_still_load() {
    let text = r#"{"version": 1, "method": "pix2pix-zero", "preset": "authors",
        "source_prompt": "a photo of a cat", "target_prompt": "a photo of a dog",
        "steps": 12, "seed": 3, "edit_strength": 0.5, "guidance_scale": 6.0,
        "xa_guidance": 0.2, "redescription_iterations": 4, "redescription_lr": 0.002,
        "resize": "crop", "width": 64, "height": 64, "model": "m", "model_hash": "h",
        "image_hash": "i",
        "extra": {"direction": {"sentences": {"source": ["a cat"], "target": ["a dog"]}},
                  "compare_ddim": false, "note": "kept"}}"#;
    let recipe = Recipe::from_json(text, "old.png").unwrap();
    assert_eq!(recipe.redescribe_iterations, 4);
    assert_eq!(recipe.redescribe_lr, 0.002);
    assert_eq!(recipe.compare_ddim, Some(false));
    assert_eq!(
        recipe.extra.len(),
        1,
        "unknown keys are kept: {:?}",
        recipe.extra
    );

    let mut req = TranslateRequest::new(RgbImage::new(64, 64), "", "");
    recipe.apply_to(&mut req).unwrap();
    assert_eq!(req.method, Method::Pix2PixZero);
    assert_eq!((req.steps, req.seed, req.edit_strength), (12, 3, 0.5));
    assert_eq!(req.source_prompt, "a photo of a cat");
    assert_eq!(req.mirror.preset, MirrorPreset::Authors);
    assert_eq!(req.mirror.guidance_scale, 6.0);
    assert_eq!(req.mirror.xa_guidance, 0.2);
    assert_eq!(req.mirror.redescribe.iterations, 4);
    assert_eq!(
        req.mirror.edit_ramp,
        MirrorSettings::with_preset(MirrorPreset::Authors).edit_ramp,
        "settings the old recipe did not record are the preset's"
    );
    assert!(!req.compare_ddim);
    assert_eq!(
        req.direction,
        DirectionChoice::Sentences {
            source: vec!["a cat".into()],
            target: vec!["a dog".into()]
        }
    );
    assert_eq!(req.vae_tiles, VaeTiles::Auto);

    // Before the field existed the comparison always ran.
    let older = Recipe::from_json(r#"{"version": 1, "method": "mirror"}"#, "older").unwrap();
    let mut req = TranslateRequest::new(RgbImage::new(8, 8), "a", "b");
    req.compare_ddim = false;
    older.apply_to(&mut req).unwrap();
    assert!(req.compare_ddim);
}

#[test]
fn unreadable_recipes_name_the_problem_and_change_nothing() {
    let recipe = Recipe::from_request(&requests()[0], &origin(None));
    for (field, value) in [("method", "telepathy"), ("preset", "balanced")] {
        let mut bad = recipe.clone();
        match field {
            "method" => bad.method = value.into(),
            _ => bad.preset = value.into(),
        }
        let mut req = TranslateRequest::new(RgbImage::new(8, 8), "a", "b");
        let before = Recipe::from_request(&req, &origin(None));
        let err = bad.apply_to(&mut req).unwrap_err().to_string();
        assert!(err.contains(value), "{field}: {err}");
        assert_eq!(Recipe::from_request(&req, &origin(None)), before, "{field}");
    }
    let mut bad = recipe.clone();
    bad.mask = Some(mirror_engine::recipe::RecipeMask::Png("not a png!".into()));
    let mut req = TranslateRequest::new(RgbImage::new(8, 8), "a", "b");
    let err = bad.apply_to(&mut req).unwrap_err().to_string();
    assert!(err.contains("mask"), "{err}");
    assert_eq!(req.mask, EditMask::Whole, "nothing changed");
    let err = Recipe::from_json(r#"{"version": 1, "extra": {"direction": 5}}"#, "x.png")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x.png") && err.contains("extra.direction"),
        "{err}"
    );
    let err = Recipe::from_json(r#"{"version": 99}"#, "new.png")
        .unwrap_err()
        .to_string();
    assert!(err.contains("newer"), "{err}");
}
