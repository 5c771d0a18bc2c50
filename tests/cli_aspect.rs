//! A non-square photo keeps its shape through `translate`: processed at the model's native
//! area at its aspect ratio, delivered at its own size; crop stays available and recipes
//! replay the same processing size.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

#[path = "../crates/mirror-engine/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::imageops::{self, FilterType};
use mirror_engine::imageio::{ResizePolicy, processing_size};
use mirror_engine::model::StableDiffusion;
use mirror_engine::recipe::read_recipe;

struct Env {
    fx: common::Fixtures,
    dir: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("mirror-aspect-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            fx: common::Fixtures::load(),
            dir,
        }
    }

    /// The fixture image stretched to 3:2 (a landscape photo), saved as PNG.
    fn landscape(&self) -> (PathBuf, (u32, u32)) {
        let name = self.fx.fixture("vae")["png"]["test_image"]
            .as_str()
            .unwrap_or("test_image.png");
        let square = image::open(self.fx.root.join(name)).unwrap().to_rgb8();
        let (w, h) = (square.width() * 3 / 2, square.height());
        let wide = imageops::resize(&square, w, h, FilterType::Triangle);
        let path = self.dir.join("landscape.png");
        wide.save(&path).unwrap();
        (path, (w, h))
    }

    fn translate(&self, image: &Path, out: &Path, extra: &[&str]) -> Output {
        let model = self.fx.model_dir();
        let mut args = vec![
            "translate",
            "--model",
            model.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--source",
            "a photo of a cat",
            "--target",
            "a photo of a dog",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
            "--threads",
            "1",
            "--no-cache",
        ];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_mirror-diffusion"))
            .args(&args)
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("the binary runs")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

fn dims(path: &Path) -> (u32, u32) {
    image::image_dimensions(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_landscape_photo_comes_back_in_its_own_shape() {
    let env = Env::new("keep");
    let (photo, size) = env.landscape();
    let sd =
        StableDiffusion::load(&env.fx.model_dir(), &common::test_device()).expect("fixture model");
    let (side, multiple) = (sd.default_image_side() as u32, sd.size_multiple() as u32);
    let expected = processing_size(size, None, ResizePolicy::Keep, side, multiple).unwrap();
    assert_ne!(
        expected.0, expected.1,
        "a 3:2 photo is not processed square"
    );
    assert!(expected.0 > expected.1);

    let out = env.dir.join("dog.png");
    let rec = env.dir.join("rec.png");
    let o = env.translate(&photo, &out, &["--reconstruction", rec.to_str().unwrap()]);
    assert_ok(&o);
    assert_eq!(dims(&out), size, "the translation has the photo's size");
    assert_eq!(dims(&rec), size, "so does the reconstruction");
    let recipe = read_recipe(&out).unwrap().expect("a recipe");
    assert_eq!(recipe.resize, ResizePolicy::Keep, "keep is the default");
    assert_eq!((recipe.width, recipe.height), expected);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("shape kept"),
        "the resize is described"
    );

    // The recipe replays at the same processing size and delivers the same shape.
    let again = env.dir.join("again.png");
    let o = env.translate(&photo, &again, &["--recipe", out.to_str().unwrap()]);
    assert_ok(&o);
    assert_eq!(dims(&again), size);
    let replayed = read_recipe(&again).unwrap().expect("a recipe");
    assert_eq!((replayed.width, replayed.height), expected);
    assert_eq!(
        image::open(&again).unwrap().to_rgb8(),
        image::open(&out).unwrap().to_rgb8(),
        "the replay is the same picture"
    );

    // Crop stays a choice: the model's square, as before.
    let cropped = env.dir.join("cropped.png");
    assert_ok(&env.translate(&photo, &cropped, &["--resize", "crop"]));
    assert_eq!(dims(&cropped), (side, side));
}

/// A 1×20000 strip (once processed as 32×9056: minutes for 4 steps) is letterboxed to 1:4 at
/// the native area, says so, and finishes like any other photo; delivered at the 1:4 frame.
#[test]
fn an_extreme_strip_is_letterboxed_to_one_to_four_and_finishes_quickly() {
    let env = Env::new("strip");
    let strip = image::RgbImage::from_pixel(1, 20_000, image::Rgb([200, 30, 30]));
    let photo = env.dir.join("strip.png");
    strip.save(&photo).unwrap();
    let sd =
        StableDiffusion::load(&env.fx.model_dir(), &common::test_device()).expect("fixture model");
    let (side, multiple) = (sd.default_image_side() as u32, sd.size_multiple() as u32);
    let expected = processing_size((1, 20_000), None, ResizePolicy::Keep, side, multiple).unwrap();
    assert!(expected.0 * expected.1 <= side * side, "{expected:?}");
    assert!(expected.1 <= 4 * expected.0 + multiple, "{expected:?}");

    let out = env.dir.join("strip-dog.png");
    let started = std::time::Instant::now();
    let o = env.translate(&photo, &out, &[]);
    assert_ok(&o);
    let seconds = started.elapsed().as_secs_f64();
    assert!(seconds < 120.0, "took {seconds:.0} s");
    assert_eq!(dims(&out), expected, "delivered at the 1:4 frame");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("longer than 1:4"), "{stderr}");
}

/// `--vae-tiles on` runs the VAE in tiles above its native size and the recipe says so; its
/// replay runs in tiles again (the same pixels), and `off` is recorded as not tiled.
#[test]
fn vae_tiles_are_recorded_and_replayed() {
    let env = Env::new("tiles");
    let (photo, _) = env.landscape();
    let sd =
        StableDiffusion::load(&env.fx.model_dir(), &common::test_device()).expect("fixture model");
    let (side, multiple) = (sd.default_image_side() as u32, sd.size_multiple() as u32);
    let size = processing_size(dims(&photo), None, ResizePolicy::Keep, side, multiple).unwrap();
    let above_native = size.0.max(size.1) as usize > sd.vae.config().sample_size;
    let tiled = env.dir.join("tiled.png");
    assert_ok(&env.translate(&photo, &tiled, &["--vae-tiles", "on"]));
    let recipe = read_recipe(&tiled).unwrap().expect("a recipe");
    assert_eq!(recipe.vae_tiles_used, Some(above_native));
    let again = env.dir.join("again.png");
    assert_ok(&env.translate(&photo, &again, &["--recipe", tiled.to_str().unwrap()]));
    assert_eq!(
        read_recipe(&again).unwrap().unwrap().vae_tiles_used,
        Some(above_native)
    );
    assert_eq!(
        image::open(&again).unwrap().to_rgb8(),
        image::open(&tiled).unwrap().to_rgb8(),
        "the replay is the same picture"
    );
    let whole = env.dir.join("whole.png");
    assert_ok(&env.translate(&photo, &whole, &["--vae-tiles", "off"]));
    assert_eq!(
        read_recipe(&whole).unwrap().unwrap().vae_tiles_used,
        Some(false)
    );
    if above_native {
        assert_ne!(
            image::open(&whole).unwrap().to_rgb8(),
            image::open(&tiled).unwrap().to_rgb8(),
            "tiles change the pixels"
        );
    }
    let bad = env.translate(&photo, &whole, &["--vae-tiles", "sometimes"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("auto, on or off"));
}
