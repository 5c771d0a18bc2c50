//! The device in the app, with the real engine: the status bar names the device the model
//! computes on, and choosing a device this build lacks (in Advanced → Compute device) reloads
//! the model on the CPU with the fallback message shown, instead of crashing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod app_support;
#[path = "../crates/mirror-engine/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use app_support::{App, Wait, harness, step_until};
use egui_kittest::kittest::Queryable;
use mirror_diffusion::app::AppOptions;
use mirror_diffusion::app::settings::Settings;
use mirror_diffusion::app::state::ModelStatus;
use mirror_engine::device::{self, DeviceChoice, compiled_in};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-app-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The test device as the settings name it (`MIRROR_DEVICE`, default cpu).
fn test_device_choice() -> DeviceChoice {
    std::env::var("MIRROR_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("MIRROR_DEVICE names a device")
}

/// The model summary once a model is loaded.
fn loaded_device(h: &App) -> Option<(String, Option<String>)> {
    match &h.state().state.model {
        ModelStatus::Ready(m) => Some((m.device.clone(), m.fallback.clone())),
        _ => None,
    }
}

/// Steps a few frames until `shown` (an opening section animates over several frames).
fn step_frames_until(h: &mut App, what: &str, shown: impl Fn(&App) -> bool) {
    for _ in 0..100 {
        if shown(h) {
            return;
        }
        h.step();
    }
    panic!("{what} did not appear");
}

#[test]
fn the_status_bar_names_the_device_and_a_missing_one_falls_back_to_the_cpu() {
    let fx = common::Fixtures::load();
    let dir = temp_dir("device");
    let config = dir.join("config");
    let settings = Settings {
        device: test_device_choice(),
        ..Settings::default()
    };
    settings.save(&config).expect("settings saved");
    let mut h = harness(AppOptions {
        model: Some(fx.model_dir()),
        image: Some(fx.test_image()),
        settings_dir: Some(config),
        memory_only_cache: true,
        ..AppOptions::default()
    });
    step_until(&mut h, "the model", Wait::secs(120), |a| {
        matches!(a.state.model, ModelStatus::Ready(_))
    });
    let (name, fallback) = loaded_device(&h).expect("loaded");
    assert_eq!(name, device::describe(&common::test_device()));
    assert_eq!(fallback, None);
    assert!(
        h.query_by_label_contains(&format!("Computing on {name}"))
            .is_some(),
        "the status bar names {name}"
    );

    let Some(missing) = [DeviceChoice::Cuda, DeviceChoice::Metal]
        .into_iter()
        .find(|c| !compiled_in(*c))
    else {
        eprintln!("this build has both CUDA and Metal: no missing device to choose");
        return;
    };
    h.get_by_label("Advanced").click_accesskit();
    step_frames_until(&mut h, "the Advanced section", |h| {
        h.query_by_label("Compute device").is_some()
    });
    h.get_by_label("Compute device").click_accesskit();
    step_frames_until(&mut h, "the device list", |h| {
        h.query_by_label(missing.label()).is_some()
    });
    h.get_by_label(missing.label()).click();
    h.step();
    step_until(
        &mut h,
        "the reload on the CPU",
        Wait::secs(120),
        |a| matches!(&a.state.model, ModelStatus::Ready(m) if m.fallback.is_some()),
    );
    assert_eq!(
        h.state().state.settings.device,
        missing,
        "the choice is kept"
    );
    let (name, fallback) = loaded_device(&h).expect("reloaded");
    assert!(name.starts_with("CPU"), "{name}");
    let message = fallback.expect("a fallback message");
    assert!(
        message.contains("no ") && message.contains("CPU"),
        "{message}"
    );
    assert!(
        h.query_by_label(&message).is_some(),
        "the status bar shows the fallback message"
    );
    assert!(
        h.query_by_label(&format!("Computing on {name}, f32 (fallback)"))
            .is_some(),
        "the device is marked as a fallback"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
