//! The `mirror-diffusion` binary on the tiny fixture model: translate (outputs, recipe,
//! comparison sheet, dump), recipe replay, inspect, convert, and clear failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

#[path = "../crates/mirror-engine/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mirror_engine::imageio::{ResizePolicy, SHEET_GAP, SHEET_LABEL_HEIGHT, processing_size};
use mirror_engine::recipe::read_recipe;

const STEPS: usize = 4;

struct Env {
    fx: common::Fixtures,
    dir: PathBuf,
}

impl Env {
    /// A fresh temp folder per test; the inversion cache lives inside it.
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("mirror-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            fx: common::Fixtures::load(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn model(&self) -> PathBuf {
        self.fx.model_dir()
    }

    fn image(&self) -> PathBuf {
        self.fx.test_image()
    }

    fn source_prompt(&self) -> String {
        self.fx.source_prompt()
    }

    /// Processing size without `--size` (shape kept): the model's native area (UNet
    /// sample_size × VAE factor, squared) at the test image's aspect ratio, in multiples of
    /// the model's size step (VAE factor × UNet downsampling).
    fn processing_size(&self) -> (u32, u32) {
        let unet = self.fx.model_config("unet");
        let sample_size = unet["sample_size"].as_u64().expect("unet sample_size") as u32;
        let levels = unet["block_out_channels"]
            .as_array()
            .expect("unet block_out_channels")
            .len() as u32;
        let factor = self.fx.vae_scale_factor() as u32;
        let step = factor << (levels - 1);
        let original = self.image_size().1;
        processing_size(
            original,
            None,
            ResizePolicy::Keep,
            sample_size * factor,
            step,
        )
        .expect("a processing size")
    }

    /// The test image's own (width, height), as a `--size` argument and as a pair.
    fn image_size(&self) -> (String, (u32, u32)) {
        let (h, w) = self.fx.image_hw();
        (format!("{w}x{h}"), (w as u32, h as u32))
    }

    /// Redescription iterations per step of the recommended preset (the `mirror_r_*` runs).
    fn inner_iterations(&self) -> usize {
        let name = &self.fx.names_with_prefix("mirror_r_")[0];
        self.fx.settings(name)["num_inner_steps"]
            .as_u64()
            .expect("num_inner_steps") as usize
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mirror-diffusion"))
            .args(args)
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("the binary runs")
    }

    /// `translate` on the fixture model and image with `--steps 4`, plus `extra`.
    fn translate(&self, out: &Path, extra: &[&str]) -> Output {
        let (model, image, source) = (self.model(), self.image(), self.source_prompt());
        let mut args = vec![
            "translate",
            "--model",
            model.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--source",
            &source,
            "--target",
            "a photo of a dog",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "4",
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `translate` on the fixture model and image from `recipe` alone, plus `extra`.
    fn replay(&self, recipe: &Path, out: &Path, extra: &[&str]) -> Output {
        let (model, image) = (self.model(), self.image());
        let mut args = vec![
            "translate",
            "--model",
            model.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "failed: {}\n{}", o.status, stderr(o));
}

/// Fails with exactly one `error: ` line that mentions `needle`.
fn assert_fails_naming(o: &Output, needle: &str) {
    assert!(!o.status.success(), "should have failed:\n{}", stderr(o));
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{err}");
    assert!(lines[0].contains(needle), "`{needle}` not in: {}", lines[0]);
}

fn pixels(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// Tile size on the comparison sheet: small images are enlarged by an integer factor so that
/// labels fit in 128 pixels.
fn sheet_tile((w, h): (u32, u32)) -> (u32, u32) {
    let k = if w < 128 { 128u32.div_ceil(w) } else { 1 };
    (w * k, h * k)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn translate_writes_outputs_with_recipe_and_replays_identically() {
    let env = Env::new("translate");
    let (out, rec, sheet, dump) = (
        env.path("out.png"),
        env.path("rec.png"),
        env.path("sheet.png"),
        env.path("run.safetensors"),
    );
    let (ddim_rec, ddim_edit) = (env.path("ddim_rec.png"), env.path("ddim_edit.png"));
    let o = env.translate(
        &out,
        &[
            "--reconstruction",
            s(&rec),
            "--comparison",
            s(&sheet),
            "--dump",
            s(&dump),
            "--ddim-out",
            s(&ddim_rec),
            s(&ddim_edit),
        ],
    );
    assert_ok(&o);

    // Without `--size` the image keeps its shape: processed at the model's area, delivered
    // at its own size.
    let size = env.processing_size();
    let delivered = env.image_size().1;
    for p in [&out, &rec, &ddim_rec, &ddim_edit] {
        assert_eq!(pixels(p).dimensions(), delivered, "{}", p.display());
    }

    let recipe = read_recipe(&out)
        .unwrap()
        .expect("the output carries its recipe");
    assert_eq!(recipe.method, "mirror");
    assert_eq!(recipe.preset, "recommended");
    assert_eq!(recipe.steps, STEPS);
    assert_eq!(recipe.source_prompt, env.source_prompt());
    assert_eq!(recipe.target_prompt, "a photo of a dog");
    assert_eq!((recipe.width, recipe.height), size);
    assert!(!recipe.model_hash.is_empty() && !recipe.image_hash.is_empty());

    // source | Mirror rec | Mirror edit | DDIM rec | DDIM edit, labelled.
    let (w, h) = sheet_tile(size);
    assert_eq!(
        pixels(&sheet).dimensions(),
        (5 * w + 4 * SHEET_GAP, h + SHEET_LABEL_HEIGHT)
    );

    let tensors = candle_core::safetensors::load(&dump, &common::test_device()).unwrap();
    let first_dim = |name: &str| {
        tensors
            .get(name)
            .unwrap_or_else(|| panic!("dump lacks `{name}`"))
            .dims()[0]
    };
    assert_eq!(first_dim("inversion.latents"), STEPS + 1);
    let f = env.fx.vae_scale_factor();
    let latent_hw = [size.1 as usize / f, size.0 as usize / f];
    assert!(tensors["inversion.latents"].dims().ends_with(&latent_hw));
    let caption = tensors.get("caption_embedding").expect("caption_embedding");
    assert_eq!(caption.dims().last(), Some(&env.fx.text_hidden_size()));
    for name in [
        "mirror.embeddings",
        "mirror.rec_latents",
        "mirror.edit_latents",
        "mirror.edit_guided",
        "mirror.inner_losses",
        "mirror.guidance_loss",
        "ddim.rec_latents",
        "ddim.edit_latents",
    ] {
        assert_eq!(first_dim(name), STEPS, "{name}");
    }
    assert!(tensors.contains_key("caption_embedding") && tensors.contains_key("edit_direction"));
    assert_eq!(
        tensors["mirror.inner_losses"].dims()[1],
        env.inner_iterations()
    );

    // Replay from the PNG alone (prompts, steps, ... come from the recipe): same bytes.
    let replay = env.path("replay.png");
    let o = env.replay(&out, &replay, &["--no-cache"]);
    assert_ok(&o);
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&replay).unwrap(),
        "replay differs"
    );
}

#[test]
fn ddim_method_sheet_has_only_its_tiles() {
    let env = Env::new("ddim");
    let (out, sheet) = (env.path("out.png"), env.path("sheet.png"));
    // At the test image's own size (non-square on some fixture sets).
    let (size_arg, size) = env.image_size();
    let o = env.translate(
        &out,
        &[
            "--method",
            "ddim",
            "--comparison",
            s(&sheet),
            "--size",
            &size_arg,
            "--no-cache",
        ],
    );
    assert_ok(&o);
    assert_eq!(pixels(&out).dimensions(), size);
    let (w, h) = sheet_tile(size);
    assert_eq!(
        pixels(&sheet).dimensions(),
        (3 * w + 2 * SHEET_GAP, h + SHEET_LABEL_HEIGHT)
    );
    assert_eq!(read_recipe(&out).unwrap().unwrap().method, "ddim");
}

#[test]
fn inspect_prints_components_and_loads() {
    let env = Env::new("inspect");
    let o = env.run(&["inspect", s(&env.model())]);
    assert_ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "parameters",
        "loads: OK",
    ] {
        assert!(text.contains(needle), "`{needle}` missing:\n{text}");
    }
}

#[test]
fn inspect_broken_model_fails_naming_the_file() {
    let env = Env::new("broken");
    let model = env.path("model");
    common::copy_tree(&env.model(), &model);
    let weights = common::weight_file(&model.join("unet"));

    // Truncated weights: the error names the file.
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let o = env.run(&["inspect", s(&model)]);
    assert_fails_naming(&o, &weights.file_name().unwrap().to_string_lossy());

    // No weights at all: the error names the UNet folder.
    std::fs::remove_file(&weights).unwrap();
    let o = env.run(&["inspect", s(&model)]);
    assert_fails_naming(&o, "unet");
}

#[test]
fn unwritable_output_fails_before_loading() {
    let env = Env::new("unwritable");
    // A "folder" that is a file: nothing can be created under it.
    let blocker = env.path("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let out = blocker.join("out.png");
    let o = env.translate(&out, &["--no-cache"]);
    assert_fails_naming(&o, s(&out));
    assert!(
        !stderr(&o).contains("model:"),
        "the model was loaded first:\n{}",
        stderr(&o)
    );

    // Same for a secondary output.
    let o = env.translate(
        &env.path("ok.png"),
        &["--dump", s(&env.path("missing/run.safetensors"))],
    );
    assert_fails_naming(&o, "missing");
    assert!(!env.path("ok.png").exists());
}

#[test]
fn missing_image_fails_clearly() {
    let env = Env::new("missing");
    let (model, image, out) = (env.model(), env.path("nope.png"), env.path("out.png"));
    let o = env.run(&[
        "translate",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--source",
        "a cat",
        "--target",
        "a dog",
        "--out",
        s(&out),
    ]);
    assert_fails_naming(&o, s(&image));
    assert!(!out.exists());
}

#[test]
fn convert_then_translate_single_file_matches_folder() {
    let env = Env::new("convert");
    let ckpt = env.path("model.safetensors");
    let model = env.model();
    assert_ok(&env.run(&["convert", s(&model), s(&ckpt)]));
    assert!(ckpt.is_file());

    let o = env.run(&["inspect", s(&ckpt), "--configs", s(&model)]);
    assert_ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("loads: OK"));

    let (from_folder, from_file) = (env.path("folder.png"), env.path("file.png"));
    assert_ok(&env.translate(&from_folder, &["--no-cache", "--no-ddim"]));
    let (image, source) = (env.image(), env.source_prompt());
    let o = env.run(&[
        "translate",
        "--model",
        s(&ckpt),
        "--configs",
        s(&model),
        "--image",
        s(&image),
        "--source",
        &source,
        "--target",
        "a photo of a dog",
        "--out",
        s(&from_file),
        "--steps",
        "4",
        "--no-cache",
        "--no-ddim",
    ]);
    assert_ok(&o);
    assert_eq!(
        pixels(&from_folder),
        pixels(&from_file),
        "single file and folder differ"
    );
}

#[test]
fn usage_errors_exit_non_zero() {
    let env = Env::new("usage");
    let o = env.run(&["translate", "--model", "x"]);
    assert!(!o.status.success());
    let o = env.run(&["--version"]);
    assert_ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// Ctrl-C during the step loop: exit code 130, nothing written (not even a temp file).
#[cfg(unix)]
#[test]
fn interrupt_cancels_and_writes_nothing() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let env = Env::new("interrupt");
    let (model, image, source) = (env.model(), env.image(), env.source_prompt());
    let (out, dump) = (env.path("out.png"), env.path("run.safetensors"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_mirror-diffusion"))
        .args([
            "translate",
            "--model",
            s(&model),
            "--image",
            s(&image),
            "--source",
            &source,
            "--target",
            "a photo of a dog",
            "--out",
            s(&out),
            "--dump",
            s(&dump),
            "--steps",
            "40",
            "--no-cache",
        ])
        .env("RAYON_NUM_THREADS", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Without a terminal, each phase prints one line; interrupt once the step loop starts.
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let started = line.starts_with("redescribe");
        seen.push(line);
        if started {
            break;
        }
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    seen.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "stderr:\n{}", seen.join("\n"));
    assert!(
        seen.iter().any(|l| l.contains("cancelled")),
        "{}",
        seen.join("\n")
    );
    let left: Vec<_> = std::fs::read_dir(&env.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files written: {left:?}");
}

/// `--mask`: a painted mask file (any size) or `auto`; the recipe keeps it (the mask itself,
/// at the processing size) and a replay gives the same pixels; a bad mask file is refused
/// naming it.
#[test]
fn translate_with_a_mask_records_it_and_replays() {
    use mirror_engine::recipe::RecipeMask;
    let env = Env::new("mask");
    let (w, h) = env.image_size().1;
    let mask = env.path("mask.png");
    image::GrayImage::from_fn(w / 2, h / 2, |x, _| {
        image::Luma([if x < w / 4 { 255 } else { 0 }])
    })
    .save(&mask)
    .unwrap();
    let (out, again) = (env.path("out.png"), env.path("again.png"));
    assert_ok(&env.translate(&out, &["--mask", s(&mask), "--no-ddim"]));
    let recipe = read_recipe(&out).unwrap().expect("a recipe");
    let Some(RecipeMask::Png(_)) = &recipe.mask else {
        panic!("the mask is recorded: {:?}", recipe.mask)
    };
    let o = env.replay(&out, &again, &["--threads", "1"]);
    assert_ok(&o);
    assert!(
        pixels(&out) == pixels(&again),
        "the replay gives the same pixels"
    );
    assert_eq!(read_recipe(&again).unwrap().unwrap().mask, recipe.mask);

    assert_ok(&env.translate(&out, &["--mask", "auto", "--no-ddim"]));
    let recipe = read_recipe(&out).unwrap().unwrap();
    assert_eq!(recipe.mask, Some(RecipeMask::Attention));
    assert_ok(&env.translate(&out, &["--mask", "diffedit", "--no-ddim"]));
    let recipe = read_recipe(&out).unwrap().unwrap();
    assert_eq!(
        recipe.mask,
        Some(RecipeMask::Automatic),
        "DiffEdit, as recipes named it before"
    );

    let not_an_image = env.path("mask.txt");
    std::fs::write(&not_an_image, "white = may change").unwrap();
    assert_fails_naming(
        &env.translate(&out, &["--mask", s(&not_an_image)]),
        "mask.txt",
    );
    assert_fails_naming(
        &env.translate(&out, &["--mask", s(&env.path("missing.png"))]),
        "missing.png",
    );
}

/// `translate --image DIR --out OUT_DIR`: every photo of the folder comes out with its recipe,
/// a contact sheet closes the run, a broken photo and a file that is no photo are named and
/// the rest goes on; the run ends in an error naming the broken one.
#[test]
fn translate_a_folder_goes_on_past_bad_files() {
    let env = Env::new("folder");
    let photos = env.path("photos");
    let image = pixels(&env.image());
    common::write_photo_folder(&photos, &image);
    let out = env.path("results");
    let o = env.run(&[
        "translate",
        "--model",
        s(&env.model()),
        "--image",
        s(&photos),
        "--source",
        &env.source_prompt(),
        "--target",
        "a photo of a dog",
        "--out",
        s(&out),
        "--steps",
        "2",
        "--no-ddim",
        "--threads",
        "1",
    ]);
    let err = stderr(&o);
    assert_fails_naming(&o, "c-broken.png");
    assert!(err.contains("could not read c-broken.png"), "{err}");
    assert!(err.contains("skipped notes.txt"), "{err}");
    assert!(err.contains("2 of 3 photos translated"), "{err}");
    for name in ["a-cat.png", "b-cat.png"] {
        let path = out.join(name);
        assert_eq!(pixels(&path).dimensions(), image.dimensions(), "{name}");
        let recipe = read_recipe(&path)
            .unwrap()
            .expect("each result has its recipe");
        assert_eq!(recipe.target_prompt, "a photo of a dog");
    }
    let sheet = pixels(&out.join("contact-sheet.png"));
    assert!(
        sheet.height() >= 2 * 128,
        "two rows: {:?}",
        sheet.dimensions()
    );

    // One-file outputs make no sense for a folder.
    let o = env.run(&[
        "translate",
        "--model",
        s(&env.model()),
        "--image",
        s(&photos),
        "--source",
        "a",
        "--target",
        "b",
        "--out",
        s(&out),
        "--comparison",
        s(&env.path("sheet.png")),
    ]);
    assert_fails_naming(&o, "--comparison");
}

/// A prompt longer than the model reads is cut off, and the command says where.
#[test]
fn a_prompt_too_long_is_reported() {
    let env = Env::new("long-prompt");
    let long = ["a photo of a dog"; 40].join(" and ");
    let o = env.run(&[
        "translate",
        "--model",
        s(&env.model()),
        "--image",
        s(&env.image()),
        "--source",
        &env.source_prompt(),
        "--target",
        &long,
        "--out",
        s(&env.path("out.png")),
        "--steps",
        "2",
        "--no-ddim",
        "--threads",
        "1",
    ]);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("the target prompt is longer than the model reads"),
        "{err}"
    );
    assert!(!err.contains("the source prompt is longer"), "{err}");
}

/// `--lora FILE[:STRENGTH]` merges a LoRA (the fixture made with diffusers), changes the
/// result, and the recipe names it; a replay without it says so; a file that is no LoRA is
/// refused naming it.
#[test]
fn translate_with_a_lora_records_it() {
    let env = Env::new("lora");
    let lora = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/mirror-engine/tests/fixtures/lora/lora_kohya.safetensors");
    let (plain, with) = (env.path("plain.png"), env.path("with.png"));
    assert_ok(&env.translate(&plain, &["--no-ddim"]));
    let spec = format!("{}:0.7", lora.display());
    let o = env.translate(&with, &["--no-ddim", "--lora", &spec]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("lora: lora_kohya.safetensors at strength 0.7"),
        "{}",
        stderr(&o)
    );
    assert!(
        pixels(&plain) != pixels(&with),
        "the LoRA changes the result"
    );
    let recipe = read_recipe(&with).unwrap().unwrap();
    assert_eq!(recipe.loras.len(), 1);
    assert_eq!(recipe.loras[0].file_name, "lora_kohya.safetensors");
    assert_eq!(recipe.loras[0].strength, 0.7);
    assert_eq!(recipe.loras[0].fingerprint.len(), 16);

    let o = env.replay(&with, &env.path("again.png"), &["--threads", "1"]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("give the same with --lora"),
        "{}",
        stderr(&o)
    );

    let not_a_lora = env.path("notes.safetensors");
    std::fs::write(&not_a_lora, b"not a tensor file").unwrap();
    assert_fails_naming(
        &env.translate(&with, &["--lora", s(&not_a_lora)]),
        "notes.safetensors",
    );
}
