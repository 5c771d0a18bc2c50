//! The built-in demo model checked for meaning: what its images show, judged by the shapes
//! classifier (no learning). Random-weight fixtures check numbers; this file checks that a
//! red circle edited into a square becomes a red square at the same place.

use candle_core::{Device, Tensor};
use image::RgbImage;
use mirror_diffusion::demo;
use mirror_diffusion::engine::imageio::{image_to_tensor, tensor_to_image};
use mirror_diffusion::engine::model::StableDiffusion;
use mirror_diffusion::engine::pipeline::{Branch, CancelToken, TokenHeatmaps};
use mirror_diffusion::engine::rng::SplitMix64;
use mirror_diffusion::engine::session::{Method, Session, TranslateOutcome, TranslateRequest};
use mirror_diffusion::shapes::evaluate::{EditCase, EditKind, edit_cases, judge_edit, mass_inside};
use mirror_diffusion::shapes::{Colour, Scene, Shape, classify, render};

fn demo_model() -> StableDiffusion {
    let dir = demo::model_dir().expect("the demo model unpacks");
    StableDiffusion::load(&dir, &Device::Cpu).expect("the demo model loads")
}

/// Every colour on every shape, on two backgrounds each, at random places and sizes.
fn every_pair(seed: u64) -> Vec<Scene> {
    let mut rng = SplitMix64::new(seed);
    let mut scenes = Vec::new();
    for colour in Colour::ALL {
        for shape in Shape::ALL {
            for k in 0..2 {
                let others: Vec<Colour> =
                    Colour::ALL.into_iter().filter(|c| *c != colour).collect();
                let background = others[(rng.below(others.len()) + k * 3) % others.len()];
                scenes.push(Scene::random_placement(shape, colour, background, &mut rng));
            }
        }
    }
    scenes
}

fn reads_as(scene: &Scene, image: &RgbImage) -> bool {
    let seen = classify(image);
    seen.background == scene.background
        && seen
            .object
            .is_some_and(|o| o.shape == scene.shape && o.colour == scene.colour)
}

#[test]
fn the_classifier_reads_shapes_after_the_demo_autoencoder() {
    let sd = demo_model();
    let scenes = every_pair(11);
    let (mut fresh, mut round_trip) = (0, 0);
    let mut misses = Vec::new();
    for scene in &scenes {
        let image = render(scene, demo::IMAGE_SIDE);
        fresh += reads_as(scene, &image) as usize;
        let x = image_to_tensor(&image, &sd.device).unwrap();
        let z = sd.vae.image_to_latent(&x).unwrap();
        let back = tensor_to_image(&sd.vae.latent_to_image(&z).unwrap()).unwrap();
        if reads_as(scene, &back) {
            round_trip += 1;
        } else {
            misses.push(scene.caption());
        }
    }
    let n = scenes.len() as f64;
    eprintln!(
        "classifier on {} renders: fresh {:.1} %, after the autoencoder {:.1} % (missed: {misses:?})",
        scenes.len(),
        100.0 * fresh as f64 / n,
        100.0 * round_trip as f64 / n
    );
    assert!(fresh as f64 >= 0.99 * n, "fresh renders: {fresh} of {n}");
    assert!(
        round_trip as f64 >= 0.95 * n,
        "after the autoencoder: {round_trip} of {n}"
    );
}
