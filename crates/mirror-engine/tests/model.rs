//! The assembled model: a diffusers folder and the same weights as a single-file checkpoint
//! give identical outputs; broken inputs give typed errors naming the file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use std::path::PathBuf;

use candle_core::Tensor;
use common::Fixtures;
use mirror_engine::EngineError;
use mirror_engine::loader::{CheckpointConfigs, ModelSource, open_model_source, write_single_file};
use mirror_engine::model::StableDiffusion;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirror-model-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn outputs(sd: &StableDiffusion, fx: &Fixtures) -> Vec<Tensor> {
    let emb = sd.encode_prompt(&fx.source_prompt()).unwrap();
    let z = fx.tensor("unet", "latents");
    let t = fx.settings("unet_attn2")["timestep"]
        .as_f64()
        .expect("unet_attn2 timestep");
    let eps = sd.unet.forward(&z, t, &emb).unwrap();
    let image = fx.tensor("vae", "image");
    let mean = sd.vae.encode(&image).unwrap().mean;
    let decoded = sd.vae.latent_to_image(&z).unwrap();
    vec![emb, eps, mean, decoded]
}

#[test]
fn single_file_checkpoint_gives_identical_outputs() {
    let fx = Fixtures::load();
    let dir = temp_dir("single");
    let file = dir.join("tiny.safetensors");
    let ModelSource::Diffusers(folder) = open_model_source(&fx.model_dir()).unwrap() else {
        panic!("fixture model is a diffusers folder")
    };
    write_single_file(&folder, &file).unwrap();
    let a = StableDiffusion::load(&fx.model_dir(), &common::test_device()).unwrap();
    let b = StableDiffusion::load_with_configs(
        &file,
        &common::test_device(),
        CheckpointConfigs::from_diffusers_folder(&fx.model_dir()),
    )
    .unwrap();
    assert_eq!(b.info.kind, "single-file checkpoint");
    for (x, y) in outputs(&a, &fx).iter().zip(outputs(&b, &fx)) {
        let diff = common::max_diff(x, &y);
        assert_eq!(diff, 0.0, "single-file and folder outputs differ");
    }
    // With the bundled SD 1.x configs the tiny weights do not fit: a typed shape error.
    let err = StableDiffusion::load(&file, &common::test_device())
        .err()
        .expect("SD 1.x configs cannot load tiny weights");
    assert!(
        matches!(
            err,
            EngineError::ShapeMismatch { .. } | EngineError::MissingTensor { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("tiny.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn broken_models_give_typed_errors_naming_the_file() {
    let fx = Fixtures::load();
    let dir = temp_dir("broken");
    common::copy_tree(&fx.model_dir(), &dir);
    // Wrong type in the UNet config.
    let cfg_path = dir.join("unet/config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    common::edit_json(&cfg_path, |v| v["layers_per_block"] = "two".into());
    let err = StableDiffusion::load(&dir, &common::test_device())
        .err()
        .expect("bad config");
    assert!(matches!(err, EngineError::Config { .. }), "{err}");
    assert!(
        err.to_string().contains("config.json") && err.to_string().contains("layers_per_block"),
        "{err}"
    );
    std::fs::write(&cfg_path, &text).unwrap();
    common::edit_json(&cfg_path, |v| {
        let last = v["down_block_types"]
            .as_array()
            .expect("down_block_types")
            .len()
            - 1;
        v["down_block_types"][last] = "FancyBlock2D".into();
    });
    let err = StableDiffusion::load(&dir, &common::test_device())
        .err()
        .expect("unknown block");
    assert!(matches!(err, EngineError::UnknownBlockType { .. }), "{err}");
    std::fs::write(&cfg_path, &text).unwrap();
    // Truncated VAE weights.
    let vae = common::weight_file(&dir.join("vae"));
    let vae_name = vae.file_name().unwrap().to_string_lossy().into_owned();
    let bytes = std::fs::read(&vae).unwrap();
    std::fs::write(&vae, &bytes[..bytes.len() / 2]).unwrap();
    let err = StableDiffusion::load(&dir, &common::test_device())
        .err()
        .expect("truncated weights");
    assert!(
        matches!(err, EngineError::CorruptSafetensors { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&vae_name), "{err}");
    // Missing text encoder.
    std::fs::write(&vae, &bytes).unwrap();
    std::fs::remove_dir_all(dir.join("text_encoder")).unwrap();
    let err = StableDiffusion::load(&dir, &common::test_device())
        .err()
        .expect("missing component");
    assert!(matches!(err, EngineError::MissingComponent { .. }), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn image_sizes_the_model_cannot_take_are_refused() {
    let fx = Fixtures::load();
    let sd = StableDiffusion::load(&fx.model_dir(), &common::test_device()).unwrap();
    let m = sd.size_multiple();
    assert!(
        sd.check_image_size(4 * m, 6 * m).is_ok(),
        "non-square multiples work"
    );
    let err = sd
        .check_image_size(4 * m + 1, 4 * m)
        .expect_err("not a multiple");
    assert!(matches!(err, EngineError::InvalidInput(_)), "{err}");
    let err = sd.unet.check_latent_size(3, 5).expect_err("odd latent");
    assert!(matches!(err, EngineError::LatentSize { .. }), "{err}");
    // Trained side = UNet sample_size × VAE factor, from the configs (not the test image,
    // which may be non-square).
    let sample_size = fx.model_config("unet")["sample_size"]
        .as_u64()
        .expect("unet sample_size") as usize;
    assert_eq!(sd.default_image_side(), sample_size * fx.vae_scale_factor());
    assert_eq!(
        m,
        fx.vae_scale_factor() * sd.unet.config().downsample_factor()
    );
}
