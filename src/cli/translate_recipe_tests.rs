//! A recipe written by the app replays identically in the CLI and the other way round: every
//! recorded field goes through both readers (`translate --recipe` and the app's drop), and the
//! old flag spellings mean what the new ones do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

use std::path::PathBuf;

use clap::Parser;
use image::RgbImage;

use super::{TranslateArgs, plan};
use crate::app::settings::RunSettings;
use mirror_engine::loader::{GuidanceBase, Recommended, RecommendedDirection};
use mirror_engine::methods::mirror::MirrorPreset;
use mirror_engine::recipe::{Recipe, RecipeOrigin};
use mirror_engine::session::{DirectionChoice, Method, TranslateRequest};
use mirror_engine::vae::VaeTiles;

#[derive(Parser)]
struct Translate {
    #[command(flatten)]
    args: TranslateArgs,
}

fn args(extra: &[&str]) -> TranslateArgs {
    let mut argv = vec!["translate", "--image", "in.png", "--out", "out.png"];
    argv.extend_from_slice(extra);
    Translate::try_parse_from(argv).unwrap().args
}

fn origin() -> RecipeOrigin {
    RecipeOrigin {
        resize: mirror_engine::imageio::ResizePolicy::Pad,
        model: "tiny-sd".into(),
        model_hash: "abc".into(),
        image_hash: "def".into(),
        vae_tiles_used: Some(false),
        loras: Vec::new(),
    }
}

/// What a model's `mirror.json` may recommend (all of it, so that a recipe must win over it).
fn recommends_everything() -> Recommended {
    Recommended {
        steps: Some(31),
        guidance_scale: Some(11.0),
        xa_guidance: Some(0.01),
        xa_guidance_until: Some(0.4),
        exact_mirror: Some(true),
        edit_strength: Some(1.9),
        edit_scale: Some(0.2),
        ramp_total: Some(0.1),
        direction: Some(RecommendedDirection::Prompt),
        redescribe_iterations: Some(1),
        redescribe_lr: Some(0.5),
        guidance_base: Some(GuidanceBase::EmptyPrompt),
        inject_until: Some(0.7),
        latent_blend_until: Some(0.2),
    }
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-recipe-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("recipe.json");
    std::fs::write(&path, text).unwrap();
    path
}

fn with_image(mut req: TranslateRequest, w: u32, h: u32) -> TranslateRequest {
    req.image = RgbImage::new(w, h);
    req
}

/// App settings that differ from the defaults everywhere, one set per method.
fn app_settings() -> Vec<RunSettings> {
    let mut all = Vec::new();
    for (i, method) in [Method::Mirror, Method::Ddim, Method::Pix2PixZero]
        .into_iter()
        .enumerate()
    {
        let mut run = RunSettings {
            method,
            steps: 9 + i,
            edit_strength: 0.6,
            seed: 42 + i as u64,
            compare_ddim: i != 1,
            vae_tiles: VaeTiles::Off,
            ..RunSettings::default()
        };
        run.choose_preset(
            [MirrorPreset::Authors, MirrorPreset::Recommended][i % 2],
            None,
        );
        run.mirror.guidance_scale = 3.5;
        run.mirror.xa_guidance = 0.25;
        run.mirror.redescribe.iterations = 2 + i;
        run.mirror.redescribe.lr = 0.003;
        run.mirror.edit_scale = 0.8;
        run.mirror.exact_mirror = i == 0;
        run.set_direction(&match i {
            0 => DirectionChoice::Sentences {
                source: vec!["a cat".into(), "a cat, outdoors".into()],
                target: vec!["a dog".into()],
            },
            1 => DirectionChoice::PromptDifference,
            _ => DirectionChoice::File(PathBuf::from("/dirs/cat-dog.safetensors")),
        });
        all.push(run);
    }
    all
}

#[test]
fn an_app_recipe_replays_the_same_in_the_cli() {
    for (i, run) in app_settings().into_iter().enumerate() {
        let req = run.request(
            RgbImage::new(96, 64),
            "a photo of a cat",
            "a photo of a dog",
        );
        let recipe = Recipe::from_request(&req, &origin());
        let path = temp_file(&format!("app-{i}"), &recipe.to_json());
        for recommended in [Recommended::default(), recommends_everything()] {
            let p = plan(&args(&["--recipe", path.to_str().unwrap()]), &recommended).unwrap();
            assert_eq!(p.size, Some((96, 64)));
            assert_eq!(p.resize, recipe.resize);
            assert_eq!(p.request.vae_tiles, VaeTiles::Off);
            let replayed = with_image(p.request, 96, 64);
            assert_eq!(
                Recipe::from_request(&replayed, &origin()),
                recipe,
                "{}: the CLI replays every field of the app's recipe",
                run.method
            );
        }
    }
}

#[test]
fn a_cli_recipe_restores_the_same_in_the_app() {
    let sentences = temp_file("sentences", "a cat\n# a comment\na cat on a sofa\n");
    let s = sentences.to_str().unwrap();
    let runs: [&[&str]; 3] = [
        &[
            "--method",
            "pix2pix-zero",
            "--preset",
            "authors",
            "--steps",
            "9",
            "--guidance-scale",
            "4",
            "--edit-strength",
            "0.6",
            "--direction",
            "prompt",
            "--no-ddim",
            "--seed",
            "8",
            "--xa-guidance",
            "0.3",
        ],
        &[
            "--redescribe-iterations",
            "2",
            "--redescribe-lr",
            "0.02",
            "--exact-mirror",
            "--sentences",
            s,
            s,
            "--vae-tiles",
            "on",
        ],
        &[
            "--method",
            "ddim",
            "--direction",
            "/dirs/d.safetensors",
            "--steps",
            "3",
        ],
    ];
    for flags in runs {
        for recommended in [Recommended::default(), recommends_everything()] {
            let mut all = vec![
                "--source",
                "a photo of a cat",
                "--target",
                "a photo of a dog",
            ];
            all.extend_from_slice(flags);
            let mut p = plan(&args(&all), &recommended).unwrap();
            p.request.image = RgbImage::new(64, 64);
            let recipe = Recipe::from_request(&p.request, &origin());
            let mut app = RunSettings::default();
            app.apply_recipe(&Recipe::from_json(&recipe.to_json(), "cli.png").unwrap())
                .unwrap();
            let restored = app.request(RgbImage::new(64, 64), "", "");
            let mut restored = Recipe::from_request(&restored, &origin());
            restored.source_prompt.clone_from(&recipe.source_prompt);
            restored.target_prompt.clone_from(&recipe.target_prompt);
            assert_eq!(restored, recipe, "{flags:?}: the app restores every field");
        }
    }
}

#[test]
fn old_flag_spellings_mean_the_new_ones() {
    let pairs: [(&[&str], &[&str]); 3] = [
        (&["--guidance", "4.5"], &["--guidance-scale", "4.5"]),
        (&["--strength", "0.3"], &["--edit-strength", "0.3"]),
        (
            &["--redescribe-iters", "3"],
            &["--redescribe-iterations", "3"],
        ),
    ];
    let prompts = ["--source", "a cat", "--target", "a dog"];
    for (old, new) in pairs {
        let plan_of = |flags: &[&str]| {
            let mut all = prompts.to_vec();
            all.extend_from_slice(flags);
            let mut p = plan(&args(&all), &Recommended::default()).unwrap();
            p.request.image = RgbImage::new(8, 8);
            Recipe::from_request(&p.request, &origin())
        };
        assert_eq!(plan_of(old), plan_of(new), "{old:?}");
        assert_ne!(plan_of(old), plan_of(&[]), "{old:?} changes something");
    }
}

#[test]
fn flags_win_over_the_recipe_and_the_recipe_over_the_model() {
    let run = &app_settings()[1];
    let req = run.request(
        RgbImage::new(64, 64),
        "a photo of a cat",
        "a photo of a dog",
    );
    let path = temp_file("flags", &Recipe::from_request(&req, &origin()).to_json());
    let path = path.to_str().unwrap();
    let p = plan(
        &args(&[
            "--recipe",
            path,
            "--steps",
            "4",
            "--target",
            "a photo of a fox",
        ]),
        &recommends_everything(),
    )
    .unwrap();
    assert_eq!(p.request.steps, 4);
    assert_eq!(p.request.target_prompt, "a photo of a fox");
    assert_eq!(p.request.source_prompt, "a photo of a cat");
    assert_eq!(p.request.seed, run.seed);
    assert_eq!(
        p.request.mirror.guidance_scale, 3.5,
        "the recipe's, not the model's 11"
    );

    // Without a recipe the model's recommendation fills what no flag gives.
    let p = plan(
        &args(&["--source", "a", "--target", "b"]),
        &recommends_everything(),
    )
    .unwrap();
    assert_eq!(p.request.steps, 31);
    assert_eq!(p.request.mirror.guidance_scale, 11.0);
    assert_eq!(p.request.mirror.edit_scale, 0.2);
    assert_eq!(p.request.direction, DirectionChoice::PromptDifference);
    let p = plan(
        &args(&["--source", "a", "--target", "b", "--preset", "authors"]),
        &recommends_everything(),
    )
    .unwrap();
    assert_eq!(
        p.request.steps, 31,
        "steps are recommended for every preset"
    );
    assert_ne!(
        p.request.mirror.guidance_scale, 11.0,
        "the authors' preset keeps its own"
    );
}
