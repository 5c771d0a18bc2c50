//! The real app with the real engine on the tiny fixture model, driven through its accessible
//! labels with egui_kittest (rendered on lavapipe / llvmpipe; no display needed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod app_support;
#[path = "../crates/mirror-engine/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use app_support::{App, PathFile, Wait, harness, jobs_done, ready, step_until, step_until_error};
use egui::{Key, Modifiers};
use egui_kittest::kittest::Queryable;
use mirror_diffusion::app::RunKind;
use mirror_diffusion::app::state::{ModelStatus, View};
use mirror_diffusion::app::{AppOptions, MirrorApp};
use mirror_engine::session::Method;

/// The fixture model folder and test image, from the fixture manifest.
fn fixture_model_and_image() -> (PathBuf, PathBuf) {
    let fx = common::Fixtures::load();
    (fx.model_dir(), fx.test_image())
}

/// Snapshots are pictures of one fixture set's model, so they are compared only on the fixture
/// set they were recorded with (its identity is in `tests/snapshots/fixture-set.txt`); on any
/// other set the window is still rendered in full, but not compared. Recording with
/// `UPDATE_SNAPSHOTS=1` also records the identity.
fn snapshot(h: &mut App, name: &str) {
    let recorded = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/fixture-set.txt");
    let current = fixture_set_identity();
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&recorded, format!("{current}\n")).expect("write the fixture identity");
    }
    let same = std::fs::read_to_string(&recorded).is_ok_and(|r| r.trim() == current);
    if same {
        h.snapshot(name);
    } else {
        let image = h.render().expect("the window renders");
        assert!(image.width() > 0 && image.height() > 0);
        eprintln!("snapshot `{name}` not compared: the snapshots were made on another fixture set");
    }
}

/// What the snapshots depend on: the model's configs and the test image, hashed.
fn fixture_set_identity() -> String {
    use sha2::{Digest, Sha256};
    let fx = common::Fixtures::load();
    let mut hash = Sha256::new();
    for component in ["unet", "vae", "text_encoder"] {
        hash.update(std::fs::read(fx.config_path(component)).expect("config"));
    }
    hash.update(std::fs::read(fx.test_image()).expect("test image"));
    format!("{:x}", hash.finalize())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-app-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn options(name: &str, steps: usize) -> AppOptions {
    let dir = temp_dir(name);
    let (model, image) = fixture_model_and_image();
    AppOptions {
        model: Some(model),
        image: Some(image),
        settings_dir: Some(dir.join("config")),
        memory_only_cache: true,
        source_prompt: Some(String::new()),
        target_prompt: Some(String::new()),
        steps: Some(steps),
        decode_every: Some(1),
        compare_ddim: Some(true),
        export_dir: Some(dir.join("exports")),
        autorun: false,
        print_events: false,
        ..Default::default()
    }
}

/// The status bar without timings (frame time, run seconds), so that snapshots show the
/// whole window and stay the same from run to run.
fn steady_status(h: &mut App) {
    let s = &mut h.state_mut().state;
    s.hide_frame_time = true;
    s.note("Finished.");
}

fn type_prompts(h: &mut App, source: &str, target: &str) {
    h.get_by_label("Source prompt").click();
    h.step();
    h.get_by_label("Source prompt").type_text(source);
    h.step();
    h.get_by_label("Target prompt").click();
    h.step();
    h.get_by_label("Target prompt").type_text(target);
    h.step();
    h.key_press(Key::Tab); // leave the field: the word picker is refreshed
    h.step();
}

fn run_to_end(h: &mut App) {
    h.get_by_label("Run").click();
    step_until(h, "the run to start", Wait::secs(10), |a| {
        a.state.progress.running
    });
    step_until(h, "the run to finish", Wait::secs(300), |a| {
        !a.state.progress.running
    });
}

#[test]
fn run_scrub_attention_export_and_reedit() {
    let opts = options("run", 4);
    let exports = opts.export_dir.clone().expect("export dir");
    let mut h = harness(opts);
    ready(&mut h);
    assert!(
        h.query_by_label("Run").is_some(),
        "the editor shows once a model is loaded"
    );
    type_prompts(&mut h, "a photo of a cat", "a photo of a dog");
    assert_eq!(h.state().state.settings.target_prompt, "a photo of a dog");
    run_to_end(&mut h);

    let s = &h.state().state;
    let result = s.result.as_ref().expect("a result");
    assert!(!result.cancelled);
    assert_eq!(s.frames.len(), 4, "one frame per step");
    assert!(
        result.images.get(Method::Mirror.translation()).is_some()
            && result.images.get(Method::Ddim.translation()).is_some()
    );
    assert!(
        s.frames.iter().all(|f| f.branches.len() == 4),
        "mirror and DDIM branches in every step"
    );
    println!(
        "frame time during the run: mean {:.2} ms, max {:.2} ms over {} frames",
        s.frame_stats.run_mean_ms(),
        s.frame_stats.run_max.as_secs_f64() * 1000.0,
        s.frame_stats.run_frames
    );

    // Snapshots must not show the temporary folder's name.
    let export_dir = std::mem::replace(
        &mut h.state_mut().state.settings.export_dir,
        "~/Pictures/Mirror".into(),
    );

    // Timeline scrubber: back to the first step.
    h.get_by_role_and_label(egui::Role::Slider, "Timeline step")
        .set_value_accesskit(0.0);
    h.step();
    h.step();
    assert_eq!(
        h.state().state.timeline,
        Some(0),
        "the timeline moved to step 1"
    );

    // Pick a word: its heat map appears over both branches.
    h.get_by_label("Attention").click();
    h.step();
    h.get_by_label("source word cat").click();
    h.run_steps(3);
    let s = &h.state().state;
    assert_eq!(s.view, View::Attention);
    let (token, word) = s.attention.token.clone().expect("a word is selected");
    assert_eq!(
        (token, word.as_str()),
        (5, "cat"),
        "token 5 of <bos> a photo of a cat"
    );
    let maps = mirror_diffusion::app::export::attention_images(s);
    assert_eq!(maps.len(), 2, "reconstruction and translation maps");
    assert!(h.query_by_label("Mirror translation").is_some());
    steady_status(&mut h);
    h.run_steps(2);
    snapshot(&mut h, "attention_view");

    // Snapshot of the main window after a run (Steps view, last step).
    h.get_by_label("Steps").click();
    h.step();
    h.state_mut().state.timeline = None;
    steady_status(&mut h);
    h.run_steps(4);
    snapshot(&mut h, "main_window_after_run");
    h.state_mut().state.settings.export_dir = export_dir;

    // Ctrl+S exports everything (on a job thread); the PNG carries its recipe.
    h.key_press_modifiers(Modifiers::COMMAND, Key::S);
    h.step();
    jobs_done(&mut h);
    assert!(
        h.state().state.errors.is_empty(),
        "{:?}",
        h.state().state.errors
    );
    let files: Vec<String> = std::fs::read_dir(&exports)
        .expect("exports")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    for suffix in [
        "-translation.png",
        "-sheet.png",
        "-steps.gif",
        "-attention-cat-translation.png",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(suffix)),
            "{suffix} missing from {files:?}"
        );
    }
    let png = exports.join("test_image-to-a-photo-of-a-dog-translation.png");
    let recipe = mirror_engine::recipe::read_recipe(&png)
        .expect("readable")
        .expect("a recipe");
    assert_eq!(recipe.target_prompt, "a photo of a dog");
    assert_eq!(recipe.steps, 4);

    // An unwritable export folder is an error dialog; the result stays.
    h.state_mut().state.settings.export_dir = "/proc/mirror-cannot-write-here".into();
    h.key_press_modifiers(Modifiers::COMMAND, Key::S);
    h.step();
    jobs_done(&mut h);
    assert_eq!(h.state().state.errors.len(), 1, "one error dialog");
    assert!(h.query_by_label("Something went wrong").is_some());
    h.get_by_label("OK").click();
    h.run_steps(2);
    assert!(h.state().state.errors.is_empty());
    assert!(
        h.state().state.result.is_some(),
        "the result is still on screen"
    );

    // Re-edit with a new target: the cached inversion is reused, and the app says so.
    h.get_by_label("Target prompt").click();
    h.step();
    h.key_press_modifiers(Modifiers::COMMAND, Key::A);
    h.get_by_label("Target prompt")
        .type_text("a photo of a fox");
    h.key_press(Key::Tab);
    h.step();
    run_to_end(&mut h);
    let s = &h.state().state;
    assert!(s.progress.reuses_inversion, "re-edit reuses the inversion");
    assert!(
        s.result
            .as_ref()
            .is_some_and(|r| r.reused_inversion && !r.cancelled)
    );
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("reusing the cached inversion"))
    );

    // Opening a Mirror PNG (here by drop) restores its recipe.
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(PathFile(png)));
    h.step();
    jobs_done(&mut h);
    let s = &h.state().state;
    assert_eq!(
        s.settings.target_prompt, "a photo of a dog",
        "recipe restored"
    );
    assert!(s.notes.iter().any(|n| n.contains("recipe is restored")));
}

#[test]
fn cancel_midway_keeps_the_steps_done() {
    let mut h = harness(options("cancel", 30));
    ready(&mut h);
    type_prompts(&mut h, "a photo of a cat", "a photo of a dog");
    h.get_by_label("Run").click();
    step_until(&mut h, "the first steps", Wait::secs(120), |a| {
        a.state.frames.len() >= 2
    });
    h.key_press(Key::Escape);
    step_until(&mut h, "the run to stop", Wait::secs(60), |a| {
        !a.state.progress.running
    });
    let s = &h.state().state;
    let result = s.result.as_ref().expect("a cancelled run still reports");
    assert!(result.cancelled, "the run was cancelled");
    assert!(
        s.frames.len() < 30,
        "stopped early ({} steps)",
        s.frames.len()
    );
    assert!(s.errors.is_empty(), "cancelling is not an error");
    // The app stays usable: the Run button is enabled again.
    assert!(h.query_by_label("Run").is_some());
}

#[test]
fn welcome_screen_without_a_model_and_readable_errors() {
    let mut opts = options("welcome", 4);
    opts.model = None;
    let bad = temp_dir("bad-image").join("not-an-image.png");
    std::fs::write(&bad, b"this is not a PNG").expect("write");
    opts.image = Some(bad);
    let mut h = harness(opts);
    h.run_steps(3);
    jobs_done(&mut h);
    assert!(
        h.query_by_label("Open model folder…").is_some(),
        "the first screen says how to get a model"
    );
    assert!(h.query_by_label("Download Stable Diffusion 1.5").is_some());
    let s = &h.state().state;
    assert_eq!(s.errors.len(), 1, "a bad image is a readable error");
    assert!(s.errors[0].contains("not-an-image.png"), "{}", s.errors[0]);
    h.get_by_label("OK").click();
    h.run_steps(2);
    assert!(h.state().state.errors.is_empty());

    // A broken model is an error too, and the app keeps running.
    let broken = temp_dir("broken-model");
    std::fs::write(broken.join("model_index.json"), "{}").expect("write");
    h.state_mut()
        .request(mirror_diffusion::app::Action::LoadModel(broken));
    h.step();
    step_until_error(&mut h);
    assert!(matches!(h.state().state.model, ModelStatus::Failed { .. }));
}

#[test]
fn settings_survive_a_restart_and_a_corrupt_file() {
    use mirror_diffusion::app::settings::Settings;
    let dir = temp_dir("settings");
    let mut s = Settings {
        source_prompt: "a photo of a horse".into(),
        ..Settings::default()
    };
    s.remember_model(Path::new("/models/sd15"));
    s.save(&dir).expect("save");
    let (back, problem) = Settings::load(&dir);
    assert!(problem.is_none());
    assert_eq!(back, s);
    assert!(
        std::fs::read_dir(&dir).expect("dir").count() == 1,
        "no temporary files left behind"
    );
    std::fs::write(dir.join("settings.json"), "{ half a fi").expect("write");
    let (fallback, problem) = Settings::load(&dir);
    assert_eq!(fallback, Settings::default());
    assert!(problem.is_some(), "a corrupt file is reported, not fatal");
}

#[test]
fn the_layout_fits_from_800x600_to_4k() {
    let mut opts = options("layout", 2);
    opts.source_prompt = Some("a photo of a cat".into());
    opts.target_prompt = Some("a photo of a dog".into());
    let mut h = egui_kittest::Harness::builder()
        .with_size(egui::vec2(800.0, 600.0))
        .with_max_steps(100_000)
        .build_eframe(move |cc| MirrorApp::new_with(cc, opts));
    ready(&mut h);
    // At 800×600 the button may be scrolled out of the controls panel: ask directly.
    h.state_mut()
        .request(mirror_diffusion::app::Action::Run(RunKind::Compare));
    step_until(&mut h, "the run to start", Wait::secs(10), |a| {
        a.state.progress.running
    });
    step_until(&mut h, "the run to finish", Wait::secs(300), |a| {
        !a.state.progress.running
    });
    h.state_mut().state.settings.export_dir = "~/Pictures/Mirror".into();
    for (size, name) in [
        (egui::vec2(800.0, 600.0), "window_800x600_compare"),
        (egui::vec2(3840.0, 2160.0), "window_4k_compare"),
    ] {
        h.set_size(size);
        steady_status(&mut h);
        h.run_steps(4);
        // Every preview caption lies inside the window.
        for branch in [
            Method::Mirror.translation(),
            Method::Pix2PixZero.translation(),
            Method::Ddim.translation(),
        ] {
            let node = h.get_by_label_contains(branch.label());
            let right = node.rect().max.x;
            assert!(
                right <= size.x,
                "{} ends at {right}, outside the {}-wide window",
                branch.label(),
                size.x
            );
        }
        snapshot(&mut h, name);
    }
}

/// A stroke dragged across the photo on the mask tab, from `from` to `to` (shares of the
/// picture's width and height).
fn stroke(h: &mut App, from: (f32, f32), to: (f32, f32)) {
    let rect = h
        .get_by_label(mirror_diffusion::app::ui::mask::CANVAS_LABEL)
        .rect();
    let at = |(x, y): (f32, f32)| {
        egui::pos2(
            rect.left() + rect.width() * x,
            rect.top() + rect.height() * y,
        )
    };
    h.hover_at(at(from));
    h.step();
    h.drag_at(at(from));
    h.step();
    for i in 1..=4 {
        let t = i as f32 / 4.0;
        h.hover_at(at((
            from.0 + (to.0 - from.0) * t,
            from.1 + (to.1 - from.1) * t,
        )));
        h.step();
    }
    h.drop_at(at(to));
    h.step();
    h.step();
}

/// The mask's value (0–255) at a share of the photo's width and height.
fn mask_at(h: &App, (x, y): (f32, f32)) -> u8 {
    let m = h.state().state.mask.as_ref().expect("a painted mask");
    let (w, ht) = m.size();
    m.pixels()
        .get_pixel((x * w as f32) as u32, (y * ht as f32) as u32)[0]
}

fn choose(h: &mut App, combo: &str, option: &str) {
    h.get_by_label(combo).click();
    h.run_steps(2);
    h.get_by_label(option).click();
    h.run_steps(2);
}

#[test]
fn a_painted_mask_runs_undoes_and_comes_back_with_the_png() {
    use mirror_diffusion::app::run_settings::EditRegion;
    use mirror_engine::recipe::RecipeMask;
    let mut opts = options("mask", 2);
    opts.source_prompt = Some("a photo of a cat".into());
    opts.target_prompt = Some("a photo of a dog".into());
    let exports = opts.export_dir.clone().expect("export dir");
    let mut h = harness(opts);
    ready(&mut h);

    // Choosing a painted region opens the mask tab.
    choose(&mut h, "Edit region", "painted");
    assert_eq!(
        h.state().state.settings.run.edit_region,
        EditRegion::Painted
    );
    assert_eq!(h.state().state.view, View::Mask);

    // A stroke across the middle paints it, in the mask and in its overlay.
    stroke(&mut h, (0.2, 0.5), (0.8, 0.5));
    let m = h.state().state.mask.as_ref().expect("a mask once painted");
    assert_eq!(m.undo_steps(), 1, "one stroke");
    assert!(m.coverage() > 0.02, "coverage {}", m.coverage());
    let version = m.version;
    let overlay = m.overlay();
    let (ow, oh) = overlay.dimensions();
    assert_eq!(
        overlay.get_pixel(ow / 2, oh / 2)[0],
        255,
        "the overlay shows it"
    );
    assert_eq!(mask_at(&h, (0.5, 0.5)), 255);
    assert_eq!(mask_at(&h, (0.5, 0.05)), 0, "the top stays unpainted");
    let first = m.pixels().clone();

    // A second stroke; Ctrl+Z takes it back.
    stroke(&mut h, (0.5, 0.1), (0.5, 0.3));
    assert_eq!(mask_at(&h, (0.5, 0.2)), 255);
    assert!(h.state().state.mask.as_ref().unwrap().version > version);
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.run_steps(2);
    let m = h.state().state.mask.as_ref().unwrap();
    assert_eq!(m.undo_steps(), 1);
    assert_eq!(m.pixels(), &first, "undo took the last stroke back");

    // Invert and Clear, and undo brings each back.
    h.get_by_label("Invert").click();
    h.run_steps(2);
    assert_eq!(mask_at(&h, (0.5, 0.5)), 0);
    assert_eq!(mask_at(&h, (0.5, 0.05)), 255, "inverted");
    h.get_by_label("Clear").click();
    h.run_steps(2);
    assert!(h.state().state.mask.as_ref().unwrap().is_empty(), "cleared");
    h.get_by_label("Undo").click();
    h.run_steps(2);
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.run_steps(2);
    assert_eq!(h.state().state.mask.as_ref().unwrap().pixels(), &first);

    // A run with the painted mask: the engine used it, the results show it, the PNG keeps it.
    run_to_end(&mut h);
    let s = &h.state().state;
    assert!(
        s.result.as_ref().and_then(|r| r.mask.as_ref()).is_some(),
        "the run reports the mask it used"
    );
    h.get_by_label("Steps").click();
    h.run_steps(3);
    assert!(
        h.query_by_label("Edit mask (painted)").is_some(),
        "the mask tile"
    );
    h.key_press_modifiers(Modifiers::COMMAND, Key::S);
    h.step();
    jobs_done(&mut h);
    let png = exports.join("test_image-to-a-photo-of-a-dog-translation.png");
    let recipe = mirror_engine::recipe::read_recipe(&png)
        .expect("readable")
        .expect("a recipe");
    assert!(
        matches!(recipe.mask, Some(RecipeMask::Png(_))),
        "the recipe keeps the painted mask"
    );

    // Before/after: the split with its slider, then the difference.
    h.get_by_label("Compare").click();
    h.run_steps(3);
    assert!(
        h.query_by_role_and_label(egui::Role::Slider, "Split")
            .is_some(),
        "the split slider"
    );
    choose(&mut h, "Before", "reconstruction");
    h.get_by_label("Show the difference").click();
    h.run_steps(3);
    assert!(
        h.query_by_label(mirror_diffusion::app::ui::compare::DIFFERENCE_LABEL)
            .is_some(),
        "the difference view renders"
    );
    let image = h.render().expect("the window renders");
    assert!(image.width() > 0);

    // Dropping the PNG back: the mask returns as the photo's painted mask.
    choose(&mut h, "Edit region", "whole picture");
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(PathFile(png)));
    h.step();
    jobs_done(&mut h);
    h.run_steps(2);
    let s = &h.state().state;
    assert_eq!(
        s.settings.run.edit_region,
        EditRegion::Painted,
        "region restored"
    );
    let m = s.mask.as_ref().expect("the mask restored");
    assert_eq!(m.undo_steps(), 0, "a restored mask starts the undo list");
    assert!(mask_at(&h, (0.5, 0.5)) > 200 && mask_at(&h, (0.5, 0.05)) < 50);

    // Found from the edit: the run's mask is its own tile and can fill the painted one.
    choose(&mut h, "Edit region", "found from the edit");
    run_to_end(&mut h);
    h.get_by_label("Steps").click();
    h.run_steps(3);
    assert!(
        h.query_by_label("Edit mask (found from the edit)")
            .is_some()
    );
    let found = h.state().state.found_mask().cloned().expect("a found mask");
    h.get_by_label("Mask").click();
    h.run_steps(2);
    h.get_by_label("Fill from the edit").click();
    h.run_steps(2);
    let s = &h.state().state;
    assert_eq!(s.settings.run.edit_region, EditRegion::Painted);
    let m = s.mask.as_ref().expect("filled");
    let on_photo = mirror_engine::imageio::mask_on_photo(&found, m.size(), s.settings.resize);
    assert_eq!(
        m.pixels(),
        &on_photo,
        "the found mask fills the painted one"
    );

    // Without that run's mask at hand the engine finds it again, without a run: the same
    // mask (same prompts, same seed).
    h.get_by_label("Clear").click();
    h.run_steps(2);
    h.state_mut().state.result_recipe = None;
    h.run_steps(2);
    h.get_by_label("Fill from the edit").click_accesskit();
    h.run_steps(2);
    assert!(h.state().state.finding_mask, "{:?}", h.state().state.notes);
    step_until(&mut h, "the mask to be found", Wait::secs(120), |a| {
        !a.state.finding_mask
    });
    h.run_steps(2);
    let s = &h.state().state;
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("found from the edit covers")),
        "{:?}",
        s.notes
    );
    assert_eq!(
        s.mask.as_ref().expect("filled").pixels(),
        &on_photo,
        "the engine finds the run's mask"
    );
}
