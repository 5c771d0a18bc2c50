//! The app with the real engine on the fixture model (kittest, no display): the three
//! methods, a comparison from one inversion, several targets on one inversion, recipes of
//! every method restored, a non-square photo kept in its shape, background jobs that never
//! stop the window drawing, and an engine error that loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod app_support;
#[path = "../crates/mirror-engine/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use app_support::{App, PathFile, Wait, harness, jobs_done, ready, step_until, step_until_error};
use egui::{Key, Modifiers};
use egui_kittest::kittest::{NodeT, Queryable};
use mirror_diffusion::app::AppOptions;
use mirror_diffusion::app::settings::RunSettings;
use mirror_engine::imageio::{ResizePolicy, processing_size};
use mirror_engine::recipe::read_recipe;
use mirror_engine::session::Method;

const STEPS: usize = 2;
/// A whole run on the tiny model, with room for a slow machine.
const RUN: Wait = Wait::secs(300);

struct Fixture {
    model: PathBuf,
    image: PathBuf,
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let fx = common::Fixtures::load();
        let image = fx.test_image();
        let dir =
            std::env::temp_dir().join(format!("mirror-app-engine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Fixture {
            model: fx.model_dir(),
            image,
            dir,
        }
    }

    fn options(&self, image: &Path) -> AppOptions {
        AppOptions {
            model: Some(self.model.clone()),
            image: Some(image.to_path_buf()),
            settings_dir: Some(self.dir.join("config")),
            memory_only_cache: true,
            source_prompt: Some("a photo of a cat".into()),
            target_prompt: Some("a photo of a dog".into()),
            steps: Some(STEPS),
            decode_every: Some(1),
            compare_ddim: Some(true),
            export_dir: Some(self.dir.join("exports")),
            autorun: false,
            print_events: false,
            ..Default::default()
        }
    }

    /// The fixture image resized to `w`×`h`, saved as PNG.
    fn image_sized(&self, name: &str, w: u32, h: u32) -> PathBuf {
        let square = image::open(&self.image).expect("fixture image").to_rgb8();
        let img = image::imageops::resize(&square, w, h, image::imageops::FilterType::Triangle);
        let path = self.dir.join(name);
        img.save(&path).expect("write image");
        path
    }

    /// The exported files ending in `suffix` (attention maps only when `suffix` names them:
    /// the Attention tab opens on the edited word, so every export has them).
    fn exported(&self, suffix: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("exports"))
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with(suffix))
                    .filter(|p| {
                        suffix.contains("attention") || !p.to_string_lossy().contains("-attention-")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn click_and_finish(h: &mut App, button: &str) {
    // The button may be scrolled out of the controls panel (a pointer click would miss it),
    // and settings the test changed move it: press it through its accessibility action.
    h.run_steps(2);
    h.get_by_label(button).click_accesskit();
    step_until(h, "the run to start", RUN, |a| a.state.progress.running);
    step_until(h, "the run to finish", RUN, |a| !a.state.progress.running);
}

fn export(h: &mut App) {
    h.key_press_modifiers(Modifiers::COMMAND, Key::S);
    h.step();
    jobs_done(h);
    assert!(
        h.state().state.errors.is_empty(),
        "{:?}",
        h.state().state.errors
    );
}

/// The fields a recipe must give back.
fn recipe_fields(r: &RunSettings) -> (Method, String, usize, u64, String, String, String) {
    (
        r.method,
        r.mirror.preset.to_string(),
        r.steps,
        r.seed,
        format!(
            "{:.4} {:.4} {:.4}",
            r.edit_strength, r.mirror.guidance_scale, r.mirror.xa_guidance
        ),
        format!(
            "{} {:.5}",
            r.mirror.redescribe.iterations, r.mirror.redescribe.lr
        ),
        format!("{} {}", r.compare_ddim, r.direction_from_prompts),
    )
}

#[test]
fn every_method_runs_and_its_recipe_restores() {
    let fx = Fixture::new("methods");
    let mut h = harness(fx.options(&fx.image));
    ready(&mut h);
    for (i, method) in [Method::Pix2PixZero, Method::Ddim, Method::Mirror]
        .into_iter()
        .enumerate()
    {
        let _ = std::fs::remove_dir_all(fx.dir.join("exports"));
        {
            let r = &mut h.state_mut().state.settings.run;
            r.method = method;
            r.seed = 7 + i as u64;
            r.mirror.xa_guidance = 0.05 * (i + 1) as f64;
            r.mirror.guidance_scale = 4.0 + i as f64;
            r.compare_ddim = i != 0;
            r.direction_from_prompts = i == 2;
        }
        let made_with = recipe_fields(&h.state().state.settings.run);
        click_and_finish(&mut h, "Run");
        let s = &h.state().state;
        let result = s.result.as_ref().expect("a result");
        let main = match method {
            Method::Mirror => Method::Mirror.translation(),
            Method::Pix2PixZero => Method::Pix2PixZero.translation(),
            Method::Ddim => Method::Ddim.translation(),
        };
        assert!(
            result.images.get(main).is_some(),
            "{method}: its translation"
        );
        assert_eq!(s.frames.len(), STEPS);
        assert!(
            s.frames
                .iter()
                .all(|f| f.branches.iter().any(|b| b.branch == main)),
            "{method}: a preview of its translation at every step"
        );
        export(&mut h);
        let png = fx.exported("-translation.png").pop().expect("exported PNG");
        let recipe = read_recipe(&png).expect("readable").expect("a recipe");
        assert_eq!(recipe.method, method.name());

        // Change everything, then drop the PNG: the recipe gives it all back.
        {
            let r = &mut h.state_mut().state.settings.run;
            *r = RunSettings::default();
            r.method = if method == Method::Mirror {
                Method::Ddim
            } else {
                Method::Mirror
            };
            r.seed = 999;
            r.mirror.xa_guidance = 0.33;
            r.compare_ddim = !r.compare_ddim;
        }
        h.state_mut().state.settings.target_prompt = "a photo of a horse".into();
        h.input_mut().dropped_files.push(Arc::new(PathFile(png)));
        h.step();
        jobs_done(&mut h);
        let s = &h.state().state;
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(
            recipe_fields(&s.settings.run),
            made_with,
            "{method}: recipe restored"
        );
        assert_eq!(s.settings.target_prompt, "a photo of a dog");
    }
}

#[test]
fn compare_and_many_targets_share_one_inversion() {
    let fx = Fixture::new("compare");
    let mut h = harness(fx.options(&fx.image));
    ready(&mut h);

    click_and_finish(&mut h, "Compare methods");
    let s = &h.state().state;
    let result = s.result.as_ref().expect("a result");
    let all = [
        Method::Mirror.reconstruction(),
        Method::Mirror.translation(),
        Method::Pix2PixZero.reconstruction(),
        Method::Pix2PixZero.translation(),
        Method::Ddim.reconstruction(),
        Method::Ddim.translation(),
    ];
    for b in all {
        assert!(result.images.get(b).is_some(), "final image of {b:?}");
        assert!(
            s.frames
                .iter()
                .all(|f| f.branches.iter().any(|x| x.branch == b)),
            "a preview of {b:?} at every step"
        );
    }
    // Each method's reconstruction error, step by step (one plot).
    for b in all.into_iter().filter(|b| b.is_reconstruction()) {
        assert!(
            s.frames.iter().all(|f| f
                .branches
                .iter()
                .any(|x| x.branch == b && x.mirror_error.is_some())),
            "mirror error of {b:?}"
        );
    }
    assert_eq!(s.preview_branches().len(), 6, "shown side by side");
    assert!(
        s.progress.reuses_inversion,
        "pix2pix-zero reused Mirror's inversion"
    );
    for b in all {
        assert!(
            h.query_all_by_label_contains(b.label()).next().is_some(),
            "{b:?} on screen"
        );
    }

    // Several targets, one inversion: a grid and one exported sheet.
    let targets = ["a photo of a fox", "a photo of a tiger"];
    h.state_mut().state.more_targets = targets.join("\n");
    h.step();
    click_and_finish(&mut h, "Run all targets");
    let s = &h.state().state;
    let got: Vec<&str> = s.target_results.iter().map(|t| t.target.as_str()).collect();
    assert_eq!(got, ["a photo of a dog", targets[0], targets[1]]);
    assert!(
        s.progress.reuses_inversion,
        "later targets reuse the inversion"
    );
    let tile = s.target_results[0].image.dimensions();
    export(&mut h);
    let sheet = fx.exported("-targets.png").pop().expect("a targets sheet");
    let (w, _) = image::image_dimensions(&sheet).expect("sheet");
    assert!(
        w >= 4 * tile.0,
        "source + three targets side by side ({w} px)"
    );
}

#[test]
fn a_landscape_photo_comes_back_in_its_own_shape() {
    let fx = Fixture::new("landscape");
    let square = image::image_dimensions(&fx.image).expect("fixture");
    let size = (square.0 * 3 / 2, square.1);
    let photo = fx.image_sized("landscape.png", size.0, size.1);
    let mut h = harness(fx.options(&photo));
    ready(&mut h);
    assert_eq!(
        h.state().state.settings.resize,
        ResizePolicy::Keep,
        "keep is the default"
    );
    click_and_finish(&mut h, "Run");
    let m = h.state().state.model_ready().cloned().expect("model");
    let expected = processing_size(
        size,
        None,
        ResizePolicy::Keep,
        m.default_side,
        m.size_multiple,
    )
    .unwrap();
    let s = &h.state().state;
    let translation = s
        .result
        .as_ref()
        .and_then(|r| r.images.get(Method::Mirror.translation()))
        .expect("translation");
    assert_eq!(
        translation.dimensions(),
        expected,
        "processed at its own shape"
    );
    export(&mut h);
    let png = fx.exported("-translation.png").pop().expect("exported");
    assert_eq!(
        image::image_dimensions(&png).unwrap(),
        size,
        "delivered at its size"
    );
    let recipe = read_recipe(&png).unwrap().expect("recipe");
    assert_eq!((recipe.width, recipe.height), expected);
}

#[test]
fn the_window_keeps_drawing_while_jobs_are_held() {
    let fx = Fixture::new("jobs");
    let mut h = harness(fx.options(&fx.image));
    ready(&mut h);
    // A large photo: the decode is held on its job thread while the window draws frames.
    let big = fx.image_sized("big.png", 4000, 3000);
    h.state().jobs.hold(true);
    h.input_mut().dropped_files.push(Arc::new(PathFile(big)));
    let before = h.state().state.frames_drawn;
    for _ in 0..10 {
        h.step();
    }
    let s = &h.state().state;
    assert_eq!(
        s.frames_drawn,
        before + 10,
        "ten frames drawn while decoding"
    );
    assert!(h.state().jobs.is_busy(), "the decode is still pending");
    assert_ne!(
        s.image.as_ref().map(|i| i.loaded.original_size),
        Some((4000, 3000))
    );
    assert!(
        h.query_by_label_contains("Opening the image").is_some(),
        "busy is shown"
    );
    h.state().jobs.hold(false);
    jobs_done(&mut h);
    assert_eq!(
        h.state()
            .state
            .image
            .as_ref()
            .map(|i| i.loaded.original_size),
        Some((4000, 3000))
    );

    // An export held the same way: frames keep coming, nothing is written until released.
    h.state_mut().state.image = None;
    h.state_mut()
        .request(mirror_diffusion::app::Action::LoadImage(fx.image.clone()));
    h.step();
    jobs_done(&mut h);
    click_and_finish(&mut h, "Run");
    h.state().jobs.hold(true);
    h.key_press_modifiers(Modifiers::COMMAND, Key::S);
    let before = h.state().state.frames_drawn;
    for _ in 0..10 {
        h.step();
    }
    assert!(
        h.state().state.frames_drawn >= before + 10,
        "frames drawn while exporting"
    );
    assert!(
        h.query_by_label_contains("Exporting").is_some(),
        "busy is shown"
    );
    assert!(fx.exported(".png").is_empty(), "nothing written while held");
    h.state().jobs.hold(false);
    jobs_done(&mut h);
    assert!(!fx.exported("-translation.png").is_empty());
}

#[test]
fn an_engine_error_keeps_the_photo_prompts_and_settings() {
    let fx = Fixture::new("nan");
    // A copy of the fixture model whose UNet has one NaN weight.
    let broken = fx.dir.join("nan-model");
    common::copy_tree(&fx.model, &broken);
    let unet = std::fs::read_dir(broken.join("unet"))
        .expect("unet folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .expect("unet weights");
    let mut tensors = candle_core::safetensors::load(&unet, &common::test_device()).unwrap();
    let name = tensors
        .keys()
        .find(|k| k.contains("conv_in.weight"))
        .cloned()
        .expect("conv_in weight");
    let w = &tensors[&name];
    let mut values: Vec<f32> = w
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    values[0] = f32::NAN;
    let nan = candle_core::Tensor::from_vec(values, w.dims(), &common::test_device())
        .unwrap()
        .to_dtype(w.dtype())
        .unwrap();
    tensors.insert(name, nan);
    candle_core::safetensors::save(&tensors, &unet).unwrap();

    let mut opts = fx.options(&fx.image);
    opts.model = Some(broken);
    let mut h = harness(opts);
    ready(&mut h);
    h.state_mut().state.settings.run.seed = 42;
    h.get_by_label("Run").click();
    step_until_error(&mut h);
    step_until(&mut h, "the run to stop", Wait::allowing_errors(300), |a| {
        !a.state.progress.running
    });
    let s = &h.state().state;
    assert!(
        s.errors[0].contains("step"),
        "the error names the step: {}",
        s.errors[0]
    );
    assert!(s.image.is_some(), "the photo is kept");
    assert_eq!(s.settings.source_prompt, "a photo of a cat");
    assert_eq!(s.settings.target_prompt, "a photo of a dog");
    assert_eq!(s.settings.run.seed, 42);
    assert!(h.query_by_label("Something went wrong").is_some());
}

#[test]
fn progress_inside_a_step_is_shown_while_it_runs() {
    let fx = Fixture::new("step-work");
    let mut h = harness(fx.options(&fx.image));
    ready(&mut h);
    h.get_by_label("Run").click();
    step_until(&mut h, "the run to start", RUN, |a| {
        a.state.progress.running
    });
    // Watch every frame of the run: the redescription iteration and the network passes of
    // the current step must show up while the step is still going.
    let (mut redescribing, mut passes_on_screen, mut fraction_inside_step) = (false, false, false);
    let mut last: Option<(usize, usize, f32)> = None;
    let start = Instant::now();
    while h.state().state.progress.running {
        assert!(start.elapsed() < Duration::from_secs(300), "timed out");
        let p = &h.state().state.progress;
        if let Some(w) = p.step_work {
            assert!(w.unet_calls <= w.unet_calls_expected, "{w:?}");
            redescribing |= w.redescription.is_some_and(|(i, n)| i >= 1 && i <= n);
            // Within one step, more network passes move the bar.
            if let Some((step, calls, fraction)) = last
                && step == w.step
                && w.unet_calls > calls
            {
                fraction_inside_step |= p.fraction > fraction;
            }
            last = Some((w.step, w.unet_calls, p.fraction));
            passes_on_screen |= h
                .query_all_by_label_contains("network passes")
                .next()
                .is_some();
        }
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(redescribing, "the redescription iteration was shown");
    assert!(
        passes_on_screen,
        "the network passes of the step were on screen"
    );
    assert!(
        fraction_inside_step,
        "the progress bar moved inside a step, not only between steps"
    );
    assert!(
        h.state().state.progress.step_work.is_none(),
        "cleared at the end"
    );
}

/// A mask painted on a landscape photo goes through the same crop as the photo: a stroke in
/// the left of the centre square lands in the left of the processed mask, and one outside the
/// crop changes nothing. The mask is the one painted when Run was pressed.
#[test]
fn a_painted_mask_follows_the_photo_through_the_crop() {
    use mirror_diffusion::app::run_settings::EditRegion;
    use mirror_diffusion::app::{Action, MaskAction};
    let fx = Fixture::new("mask-crop");
    let square = image::image_dimensions(&fx.image).expect("fixture");
    let size = (square.0 * 2, square.1);
    let photo = fx.image_sized("wide.png", size.0, size.1);
    let mut h = harness(fx.options(&photo));
    ready(&mut h);
    h.state_mut().state.settings.resize = ResizePolicy::Crop;
    h.state_mut().state.paint.size_percent = 4.0;
    h.state_mut().state.paint.softness = 0.0;
    // Through the actions the mask tab sends: one stroke down the left of the centre square
    // (x = 5/16 of the width), one in the left margin that the crop leaves out.
    let (w, ht) = (size.0 as f32, size.1 as f32);
    for x in [w * 5.0 / 16.0, w * 0.05] {
        for action in [
            MaskAction::StrokeStart([x, 0.0]),
            MaskAction::StrokeTo([x, ht]),
            MaskAction::StrokeEnd,
        ] {
            h.state_mut().request(Action::Mask(action));
        }
    }
    h.run_steps(2);
    assert_eq!(
        h.state().state.settings.run.edit_region,
        EditRegion::Painted
    );
    click_and_finish(&mut h, "Run");
    let s = &h.state().state;
    let mask = s
        .result
        .as_ref()
        .and_then(|r| r.mask.clone())
        .expect("the run's mask");
    let translation = s
        .result
        .as_ref()
        .and_then(|r| r.images.get(Method::Mirror.translation()))
        .expect("translation");
    assert_eq!(
        mask.dimensions(),
        translation.dimensions(),
        "at processing size"
    );
    let (mw, mh) = mask.dimensions();
    let column = |x: u32| {
        (0..mh)
            .map(|y| u32::from(mask.get_pixel(x, y)[0]))
            .sum::<u32>()
            / mh
    };
    assert!(column(mw / 8) > 0, "the stroke inside the crop counts");
    assert_eq!(
        column(mw * 3 / 4),
        0,
        "nothing right of it, nor from the margin stroke"
    );
}

/// A LoRA added beside the model is merged on the worker, recorded in the exported recipe,
/// re-merged at another strength when its slider changes, and put back at the recipe's
/// strength when the PNG is dropped; a recipe naming a LoRA the list lacks says so.
#[test]
fn a_lora_is_merged_recorded_and_restored_from_the_png() {
    use mirror_diffusion::app::action::Action;
    let fx = Fixture::new("lora");
    let mut h = harness(fx.options(&fx.image));
    ready(&mut h);
    let lora = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/mirror-engine/tests/fixtures/lora/lora_kohya.safetensors");
    h.state_mut().request(Action::AddLora(lora.clone()));
    let merged = |a: &mirror_diffusion::app::MirrorApp, strength: f64| {
        a.state.applied_loras.len() == 1 && a.state.applied_loras[0].strength == strength
    };
    step_until(&mut h, "the LoRA to merge", Wait::secs(60), |a| {
        merged(a, 1.0)
    });
    let info = h.state().state.applied_loras[0].clone();
    assert_eq!(info.file_name, "lora_kohya.safetensors");
    assert!(info.matched_layers > 0);
    assert_eq!(
        h.state().state.settings.loras.len(),
        1,
        "kept in the settings"
    );

    click_and_finish(&mut h, "Run");
    export(&mut h);
    let png = fx.exported("-translation.png").pop().expect("exported PNG");
    let recipe = read_recipe(&png).unwrap().unwrap_or_else(|| {
        panic!(
            "a recipe in {png:?} ({:?}; errors {:?})",
            fx.exported(".png"),
            h.state().state.errors
        )
    });
    assert_eq!(recipe.loras.len(), 1);
    assert_eq!(recipe.loras[0].file_name, "lora_kohya.safetensors");
    assert_eq!(recipe.loras[0].fingerprint, info.fingerprint);
    assert_eq!(recipe.loras[0].strength, 1.0);

    // Another strength: merged again.
    h.state_mut().state.settings.loras[0].strength = 0.5;
    h.state_mut().request(Action::ApplyLoras);
    step_until(&mut h, "the new strength", Wait::secs(60), |a| {
        merged(a, 0.5)
    });

    // Dropping the PNG puts the recipe's strength back.
    h.input_mut()
        .dropped_files
        .push(Arc::new(PathFile(png.clone())));
    h.step();
    jobs_done(&mut h);
    step_until(&mut h, "the recipe's strength", Wait::secs(60), |a| {
        merged(a, 1.0)
    });
    assert_eq!(h.state().state.settings.loras[0].strength, 1.0);

    // Without the file in the list, the drop says which LoRA is missing.
    h.state_mut().request(Action::RemoveLora(0));
    step_until(&mut h, "the LoRA removed", Wait::secs(60), |a| {
        a.state.applied_loras.is_empty()
    });
    h.input_mut().dropped_files.push(Arc::new(PathFile(png)));
    h.step();
    jobs_done(&mut h);
    h.step();
    let notes = format!("{:?}", h.state().state.notes);
    assert!(notes.contains("lora_kohya.safetensors"), "{notes}");
}

/// "Apply to a folder": the folder typed under Export, every photo comes out with its recipe
/// in a new folder under the export folder, the broken photo is named with why, the text file
/// is skipped, a contact sheet closes the run; a second run gets a folder of its own and a
/// stop keeps what is done.
#[test]
fn a_folder_run_goes_on_past_bad_files_and_stops_on_request() {
    let fx = Fixture::new("folder");
    let photos = fx.dir.join("holiday");
    let image = image::open(&fx.image).unwrap().to_rgb8();
    common::write_photo_folder(&photos, &image);
    let mut h = harness(fx.options(&fx.image));
    ready(&mut h);

    // File → Apply to a folder… shows the Photo folder row and opens a folder dialog; the
    // dialog is the desktop's (scripts/gui-folder.sh goes through it in a real window), so
    // here the row is shown as the menu shows it and the folder typed into it.
    assert!(
        h.query_by_label("Photo folder").is_none(),
        "no row before it is asked for"
    );
    h.state_mut().state.show_folder_row = true;
    h.run_steps(2);
    h.get_by_label("Photo folder").focus();
    h.run_steps(1);
    h.get_by_label("Photo folder")
        .type_text(&photos.display().to_string());
    h.run_steps(2);
    assert_eq!(h.state().state.folder_field, photos.display().to_string());
    h.get_by_label("Apply to the folder").click_accesskit();
    step_until(&mut h, "the folder run to start", RUN, |a| {
        a.state.folder_running()
    });
    assert!(
        h.get_by_label("Run").accesskit_node().is_disabled(),
        "one job at a time: Run waits for the folder"
    );
    step_until(&mut h, "the folder run to finish", RUN, |a| {
        !a.state.folder_running()
    });
    let run = h.state().state.folder.clone().expect("the folder run");
    let report = run.report.clone().expect("its report");
    let out = fx.dir.join("exports").join("holiday edited");
    assert_eq!(run.out_dir, out);
    assert_eq!((report.photos, report.written.len()), (3, 2), "{report:?}");
    assert!(!report.cancelled);
    assert_eq!(report.skipped, vec!["notes.txt".to_string()]);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, "c-broken.png");
    assert!(!report.failed[0].1.is_empty(), "the failure says why");
    for name in ["a-cat.png", "b-cat.png"] {
        let path = out.join(name);
        let written = image::open(&path).unwrap().to_rgb8();
        assert_eq!(written.dimensions(), image.dimensions(), "{name}");
        let recipe = read_recipe(&path)
            .unwrap()
            .expect("each result has its recipe");
        assert_eq!(recipe.target_prompt, "a photo of a dog");
        assert_eq!(recipe.steps, STEPS);
    }
    assert!(out.join("contact-sheet.png").is_file());
    let notes = format!("{:?}", h.state().state.notes);
    assert!(notes.contains("2 of 3 photos translated"), "{notes}");
    assert!(notes.contains("c-broken.png"), "{notes}");
    // The failure is listed under the button too.
    assert!(
        h.query_by_label_contains("c-broken.png:").is_some(),
        "the broken photo is named in the window"
    );

    // Again: a new folder; Stop right away keeps what is done and nothing half-written.
    h.get_by_label("Apply to the folder").click_accesskit();
    step_until(&mut h, "the second folder run to start", RUN, |a| {
        a.state.folder_running()
    });
    h.get_by_label("Stop folder run").click_accesskit();
    step_until(&mut h, "the second folder run to stop", RUN, |a| {
        !a.state.folder_running()
    });
    let second = h.state().state.folder.clone().unwrap();
    let report = second.report.expect("its report");
    assert_eq!(
        second.out_dir,
        fx.dir.join("exports").join("holiday edited 2")
    );
    assert!(report.cancelled, "{report:?}");
    assert!(report.written.len() < 2, "{report:?}");
    for (_, path) in &report.written {
        assert!(read_recipe(path).unwrap().is_some(), "{path:?} is whole");
    }
    assert!(
        h.state().state.errors.is_empty(),
        "{:?}",
        h.state().state.errors
    );
}
