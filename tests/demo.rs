//! The built-in demo model checked for meaning: what its images show, judged by the shapes
//! classifier (no learning). Random-weight fixtures check numbers; this file checks that a
//! red circle edited into a square becomes a red square at the same place.

use candle_core::Device;
use image::RgbImage;
use mirror_diffusion::demo;
use mirror_diffusion::engine::imageio::{image_to_tensor, tensor_to_image};
use mirror_diffusion::engine::model::StableDiffusion;
use mirror_diffusion::engine::rng::SplitMix64;
use mirror_diffusion::engine::session::{Session, TranslateRequest};
use mirror_diffusion::shapes::evaluate::{EditKind, EditRun, edit_cases, run_edit};
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

/// Sources per edit kind: every shape twice, colours rotating (`edit_cases`).
const SOURCES_PER_KIND: usize = 8;
/// The seed of the rendered sources (positions, sizes, colours).
const SOURCE_SEED: u64 = 2026;

/// What MirrorDiffusion with the model's recommended settings did on the sources of one kind.
fn edit_runs(kind: EditKind) -> Vec<EditRun> {
    let sd = demo_model();
    let blank = RgbImage::new(demo::IMAGE_SIDE, demo::IMAGE_SIDE);
    let mut request = TranslateRequest::new(blank, "", "");
    request.use_cache = false;
    sd.recommended().apply(&mut request);
    assert!(
        !sd.recommended().is_empty(),
        "the demo model's folder recommends its settings"
    );
    let mut session = Session::new(sd, None);
    edit_cases(kind, SOURCES_PER_KIND, SOURCE_SEED)
        .iter()
        .map(|case| {
            let run = run_edit(&mut session, case, &request, demo::IMAGE_SIDE).expect("edit runs");
            eprintln!(
                "{:<12} {} -> {}: saw {}; reconstruction error {:.1} vs plain DDIM {:.1}; \
                 attention inside {:.2} (area {:.2})",
                kind.label(),
                case.source_prompt(),
                case.target_prompt(),
                run.verdict.seen,
                run.mirror_reconstruction_error,
                run.ddim_reconstruction_error,
                run.attention_inside,
                run.mask_area
            );
            run
        })
        .collect()
}

/// The share of `runs` that pass.
fn share(runs: &[EditRun], pass: impl Fn(&EditRun) -> bool) -> f64 {
    runs.iter().filter(|r| pass(r)).count() as f64 / runs.len() as f64
}

/// The levels one kind must reach. The bars are 75 % (target), 90 % (kept,
/// centroid), 90 % (reconstruction, attention); where MirrorDiffusion on this model measured
/// lower, the level asserted is the measured one less one run (see the model card).
struct Levels {
    target: f64,
    kept: f64,
    centroid: f64,
}

fn check_edits(kind: EditKind, levels: Levels) {
    let runs = edit_runs(kind);
    let target = share(&runs, |r| r.verdict.target_hit);
    let kept = share(&runs, |r| r.verdict.others_kept);
    let centroid = share(&runs, |r| {
        r.verdict.centroid_shift.is_some_and(|d| d <= 0.06)
    });
    let mirror = share(&runs, |r| {
        r.mirror_reconstruction_error < r.ddim_reconstruction_error
    });
    let attention = share(&runs, |r| r.attention_inside > r.mask_area);
    eprintln!(
        "{}: target {:.0} %, kept {:.0} %, centroid {:.0} %, reconstruction closer than DDIM's \
         {:.0} %, attention inside the object {:.0} %",
        kind.label(),
        100.0 * target,
        100.0 * kept,
        100.0 * centroid,
        100.0 * mirror,
        100.0 * attention
    );
    assert!(
        target >= levels.target,
        "{}: target word hit in {target:.2} of runs",
        kind.label()
    );
    assert!(
        kept >= levels.kept,
        "{}: other words kept in {kept:.2}",
        kind.label()
    );
    assert!(
        centroid >= levels.centroid,
        "{}: centroid kept in {centroid:.2}",
        kind.label()
    );
    assert!(
        mirror >= 0.9,
        "{}: reconstruction closer than DDIM's in {mirror:.2}",
        kind.label()
    );
    assert!(
        attention >= ATTENTION_LEVEL,
        "{}: shape-word attention inside the object in {attention:.2}",
        kind.label()
    );
}

/// The shape-word attention bar of the issue (90 % of runs).
const ATTENTION_LEVEL: f64 = 0.9;

#[test]
fn mirror_diffusion_changes_the_shape_word() {
    check_edits(
        EditKind::Shape,
        Levels {
            target: 0.75,
            kept: 0.9,
            centroid: 0.9,
        },
    );
}

#[test]
fn mirror_diffusion_changes_the_shape_colour() {
    check_edits(
        EditKind::Colour,
        Levels {
            target: 0.75,
            kept: 0.9,
            centroid: 0.9,
        },
    );
}

#[test]
fn mirror_diffusion_changes_the_background() {
    check_edits(
        EditKind::Background,
        Levels {
            target: 0.75,
            kept: 0.9,
            centroid: 0.9,
        },
    );
}
