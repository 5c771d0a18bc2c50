//! The app as a new user first sees it: no settings, no model given. It opens the built-in
//! demo model with a rendered demo image and a one-word edit, and one click on Run shows the
//! mirror effect. Drives the real app and engine by accessibility labels (egui_kittest).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod app_support;

use app_support::{App, Wait, harness, ready, step_until};
use egui_kittest::kittest::Queryable;
use mirror_diffusion::app::AppOptions;
use mirror_diffusion::app::jobs::JobKind;
use mirror_diffusion::app::state::ModelStatus;
use mirror_engine::pipeline::Branch;
use mirror_engine::session::Method;
use mirror_engine::shapes::parse_caption;

const RUN: Wait = Wait::secs(600);

fn first_start(name: &str) -> (App, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("mirror-app-demo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let h = harness(AppOptions {
        settings_dir: Some(dir.join("config")),
        memory_only_cache: true,
        steps: Some(4),
        demo_at_start: true,
        ..Default::default()
    });
    (h, dir)
}

fn prompts(h: &App) -> (String, String) {
    let s = &h.state().state;
    (
        s.settings.source_prompt.clone(),
        s.settings.target_prompt.clone(),
    )
}

#[test]
fn a_first_start_opens_the_demo_model_with_a_demo_image() {
    let (mut h, dir) = first_start("open");
    ready(&mut h);
    let ModelStatus::Ready(model) = &h.state().state.model else {
        unreachable!("ready waits for the model")
    };
    assert_eq!(model.name, mirror_engine::demo::NAME);
    let (source, target) = prompts(&h);
    let (colour, shape, background) = parse_caption(&source).expect("the caption of the image");
    let (colour2, shape2, background2) = parse_caption(&target).expect("a caption too");
    assert_eq!((colour, background), (colour2, background2));
    assert_ne!(shape, shape2, "the target changes the shape word");
    let image = h.state().state.image.as_ref().expect("a demo image");
    let seen = mirror_engine::shapes::classify(&image.loaded.rgb);
    assert_eq!(
        seen.object.map(|o| o.shape),
        Some(shape),
        "the image shows its caption"
    );

    // "New demo image" draws another scene with its own caption.
    h.get_by_label("New demo image").click();
    step_until(&mut h, "a new demo image", Wait::secs(30), |a| {
        a.state.settings.source_prompt != source
    });
    let (next, _) = prompts(&h);
    assert!(parse_caption(&next).is_some(), "{next}");

    // The demo model is always offered; it is not added to the recent models.
    assert!(h.state().state.settings.recent_models.is_empty());
    drop(h);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn one_click_on_run_shows_the_mirror_effect() {
    let (mut h, dir) = first_start("run");
    ready(&mut h);
    h.get_by_label("Run").click();
    step_until(&mut h, "the run to start", RUN, |a| {
        a.state.progress.running
    });
    step_until(&mut h, "the run to finish", RUN, |a| {
        !a.state.progress.running
    });
    let state = &h.state().state;
    let last = state.frames.last().expect("step frames");
    let error = |branch: Branch| {
        last.branches
            .iter()
            .find(|b| b.branch == branch)
            .and_then(|b| b.mirror_error)
            .unwrap_or_else(|| panic!("no {} error", branch.label()))
    };
    let mirror = error(Method::Mirror.reconstruction());
    let ddim = error(Method::Ddim.reconstruction());
    assert!(
        mirror < ddim,
        "mirror error {mirror} not below plain DDIM's {ddim}"
    );
    assert!(state.result.is_some(), "the result is shown");
    drop(h);
    let _ = std::fs::remove_dir_all(dir);
}

/// A script's run (`MIRROR_AUTORUN`) on the demo model waits for the model's notes, so that
/// it runs with the model's recommended settings as a click on Run does. The jobs are held
/// while the model loads and the photo arrives, so the notes are still being read when
/// everything else is ready.
#[test]
fn a_scripted_run_waits_for_the_models_recommended_settings() {
    let dir = std::env::temp_dir().join(format!("mirror-app-demo-autorun-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut h = harness(AppOptions {
        model: Some(mirror_engine::demo::model_dir().expect("the demo model")),
        settings_dir: Some(dir.join("config")),
        memory_only_cache: true,
        autorun: true,
        hold_jobs: true,
        ..Default::default()
    });
    step_until(&mut h, "the demo model to load", RUN, |a| {
        a.state.model_ready().is_some()
    });
    h.get_by_label("New demo image").click();
    for _ in 0..5 {
        h.step();
    }
    let jobs = &h.state().jobs;
    assert!(
        jobs.is_running(JobKind::ReadingWords),
        "the notes are still being read"
    );
    assert!(
        !jobs.is_running(JobKind::PreparingRun),
        "the run started before the model's notes were read"
    );
    h.state().jobs.hold(false);
    step_until(&mut h, "the scripted run to finish", RUN, |a| {
        a.state.result_recipe.is_some() && !a.state.progress.running
    });
    let state = &h.state().state;
    let words = state.model_words.as_ref().expect("the demo model's notes");
    let recommended = &words.notes.recommended;
    let recipe = state.result_recipe.as_ref().unwrap();
    assert_eq!(Some(recipe.steps), recommended.steps, "steps");
    assert_eq!(
        Some(recipe.guidance_scale),
        recommended.guidance_scale,
        "guidance"
    );
    assert_eq!(
        Some(recipe.xa_guidance),
        recommended.xa_guidance,
        "structure guidance"
    );
    drop(h);
    let _ = std::fs::remove_dir_all(dir);
}
