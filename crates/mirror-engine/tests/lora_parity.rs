//! LoRA parity with diffusers: the tiny model with a kohya, a PEFT, an old-diffusers and a
//! diffusers-saved PEFT (alphas in the header's `lora_adapter_metadata`) LoRA file applied
//! (`StableDiffusion::set_loras` at the recorded strength) gives the UNet noise prediction
//! and text-encoder hidden states that `pipe.load_lora_weights(file)` +
//! `pipe.fuse_lora(lora_scale=strength)` give, within the shared manifest's tolerances.
//!
//! The fixtures are in `tests/fixtures/lora/` (made by `make_lora_fixtures.py` there, see its
//! docstring and `manifest.json`): all files hold the same deltas on every Linear and Conv2d
//! of the UNet and of the text encoder's layers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{Fixtures, assert_tensor_close, max_diff, read_json, test_device, workspace_root};
use mirror_engine::EngineError;
use mirror_engine::loader::LoraSpec;
use mirror_engine::model::StableDiffusion;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The LoRA fixture folder, its manifest and tensors.
struct LoraFixtures {
    dir: PathBuf,
    manifest: Value,
    tensors: HashMap<String, Tensor>,
}

impl LoraFixtures {
    fn load() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora");
        let manifest = read_json(&dir.join("manifest.json"));
        let file = manifest["tensors_file"].as_str().expect("tensors_file");
        let tensors = candle_core::safetensors::load(dir.join(file), &test_device())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        Self {
            dir,
            manifest,
            tensors,
        }
    }

    /// The model the references were made from, checked to be the same weights.
    fn model_dir(&self) -> PathBuf {
        let dir = workspace_root().join(self.manifest["model_dir"].as_str().expect("model_dir"));
        for (component, want) in self.manifest["model_sha256"]
            .as_object()
            .expect("model_sha256")
        {
            let path = common::weight_file(&dir.join(component));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let got: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                got,
                want.as_str().unwrap(),
                "{}: not the weights the LoRA references were made from; regenerate them with `{}`",
                path.display(),
                self.manifest["command"]
            );
        }
        dir
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("lora_parity: no tensor `{name}`"))
    }

    /// The tolerance of a reference tensor, never looser than the shared manifest's entry it
    /// was copied from (when the shared fixtures are of the same model).
    fn atol(&self, name: &str) -> f64 {
        let atol = self.manifest["tensors"][name]["atol"]
            .as_f64()
            .unwrap_or_else(|| panic!("manifest: no atol for `{name}`"));
        let shared = Fixtures::load();
        let same_model =
            shared.model_dir().canonicalize().ok() == self.model_dir().canonicalize().ok();
        if same_model {
            let (fixture, tensor) = if name.starts_with("unet") {
                let t = self.manifest["timestep"].as_u64().expect("timestep");
                ("unet", format!("eps_t{t}"))
            } else {
                ("text_encoder", "last_hidden_state".to_string())
            };
            let shared_atol = shared.atol(fixture, &tensor);
            assert!(
                atol <= shared_atol,
                "{name}: atol {atol:e} looser than the shared {fixture}.{tensor} ({shared_atol:e})"
            );
        }
        atol
    }

    fn spec(&self, format: &str, strength: f64) -> LoraSpec {
        let file = self.manifest["files"][format].as_str().expect("files");
        LoraSpec {
            path: self.dir.join(file),
            strength,
        }
    }

    /// The LoRA file formats, kohya first.
    fn formats(&self) -> Vec<String> {
        let mut formats: Vec<String> = self.manifest["files"]
            .as_object()
            .expect("files")
            .keys()
            .cloned()
            .collect();
        formats.sort_by_key(|f| (f != "kohya", f.clone()));
        formats
    }

    fn strength(&self) -> f64 {
        self.manifest["strength"].as_f64().expect("strength")
    }

    fn layers(&self) -> usize {
        self.manifest["layers"].as_u64().expect("layers") as usize
    }
}

/// (UNet noise prediction, text-encoder last hidden state) for the fixture inputs.
fn outputs(model: &StableDiffusion, fx: &LoraFixtures) -> (Tensor, Tensor) {
    let t = fx.manifest["timestep"].as_f64().expect("timestep");
    let eps = model
        .unet
        .forward(fx.tensor("latents"), t, fx.tensor("encoder_hidden_states"))
        .unwrap();
    let hidden = model.text_encoder.forward(fx.tensor("input_ids")).unwrap();
    (eps, hidden)
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

/// Checks `(eps, hidden)` against the references `unet_eps_<tag>` / `text_hidden_<tag>`;
/// returns the max abs errors.
fn check(fx: &LoraFixtures, tag: &str, (eps, hidden): &(Tensor, Tensor)) -> (f64, f64) {
    let e = format!("unet_eps_{tag}");
    let h = format!("text_hidden_{tag}");
    (
        assert_tensor_close(&e, fx.tensor(&e), eps, fx.atol(&e)),
        assert_tensor_close(&h, fx.tensor(&h), hidden, fx.atol(&h)),
    )
}

#[test]
fn every_lora_file_format_matches_diffusers_fuse_lora() {
    let fx = LoraFixtures::load();
    let mut model = StableDiffusion::load(&fx.model_dir(), &test_device()).unwrap();
    let base = outputs(&model, &fx);
    check(&fx, "base", &base);

    let mut applied = Vec::new();
    let formats = fx.formats();
    assert!(formats.len() >= 2, "{formats:?}");
    for format in &formats {
        let infos = model.set_loras(&[fx.spec(format, fx.strength())]).unwrap();
        assert_eq!(
            infos[0].matched_layers,
            fx.layers(),
            "{format}: layers patched"
        );
        let out = outputs(&model, &fx);
        // The LoRA must matter far beyond the tolerance, or the comparison proves nothing.
        for (name, got, before) in [("unet", &out.0, &base.0), ("text", &out.1, &base.1)] {
            let change = f64::from(max_diff(got, before));
            assert!(change > 0.05, "{format}: {name} changed by {change:e} only");
        }
        let (e, h) = check(&fx, format, &out);
        eprintln!("{format}: max abs error unet {e:.3e}, text encoder {h:.3e}");
        applied.push(out);
    }
    // Same deltas (the other files' lora_B/up is the kohya lora_up times alpha/rank, a power
    // of two): the same numbers, bit for bit.
    for (format, out) in formats.iter().zip(&applied).skip(1) {
        assert_eq!(
            bits(&applied[0].0),
            bits(&out.0),
            "UNet {} vs {format}",
            formats[0]
        );
        assert_eq!(
            bits(&applied[0].1),
            bits(&out.1),
            "text {} vs {format}",
            formats[0]
        );
    }

    model.set_loras(&[]).unwrap();
    let restored = outputs(&model, &fx);
    assert_eq!(bits(&base.0), bits(&restored.0), "UNet restored");
    assert_eq!(bits(&base.1), bits(&restored.1), "text encoder restored");
}

#[test]
fn two_files_at_half_strength_add_up_to_one_at_full_strength() {
    let fx = LoraFixtures::load();
    let mut model = StableDiffusion::load(&fx.model_dir(), &test_device()).unwrap();
    let half = fx.strength() / 2.0;
    let infos = model
        .set_loras(&[fx.spec("kohya", half), fx.spec("peft", half)])
        .unwrap();
    assert_eq!(infos.len(), 2);
    assert!(infos.iter().all(|i| i.matched_layers == fx.layers()));
    // W + d/2 + d/2 against diffusers' W + d: rounding of the weights only.
    check(&fx, "kohya", &outputs(&model, &fx));
}

/// The kohya fixture file with `edit` applied to its tensors, written to a temporary file.
fn edited_kohya(
    fx: &LoraFixtures,
    name: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> PathBuf {
    let mut t = candle_core::safetensors::load(fx.spec("kohya", 1.0).path, &Device::Cpu).unwrap();
    edit(&mut t);
    let dir = std::env::temp_dir().join(format!("mirror-lora-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    candle_core::safetensors::save(&t, &path).unwrap();
    path
}

#[test]
fn files_with_unknown_keys_or_misfit_shapes_are_refused_and_change_nothing() {
    let fx = LoraFixtures::load();
    let mut model = StableDiffusion::load(&fx.model_dir(), &test_device()).unwrap();
    let applied = model.set_loras(&[fx.spec("kohya", fx.strength())]).unwrap();
    assert_eq!(applied[0].matched_layers, fx.layers());
    let before = outputs(&model, &fx);

    // Two layers no model has, among the good ones: the first (in key order) is named.
    let path = edited_kohya(&fx, "unknown_keys.safetensors", |t| {
        for stem in ["lora_unet_nowhere_b_proj", "lora_unet_nowhere_a_proj"] {
            t.insert(
                format!("{stem}.lora_down.weight"),
                Tensor::ones((2, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
            t.insert(
                format!("{stem}.lora_up.weight"),
                Tensor::ones((8, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
        }
    });
    let err = model
        .set_loras(&[LoraSpec {
            path,
            strength: 1.0,
        }])
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("unknown_keys.safetensors") && msg.contains("lora_unet_nowhere_a_proj"),
        "{msg}"
    );
    assert!(
        !msg.contains("nowhere_b"),
        "names the first bad key only: {msg}"
    );

    // One layer whose down weight is one input too wide for its module.
    let mut bad_stem = String::new();
    let path = edited_kohya(&fx, "misfit.safetensors", |t| {
        let key = t
            .keys()
            .filter(|k| k.starts_with("lora_te_") && k.ends_with(".lora_down.weight"))
            .min()
            .unwrap()
            .clone();
        let down = &t[&key];
        let (r, fan_in) = down.dims2().unwrap();
        let wider = Tensor::ones((r, fan_in + 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        bad_stem = key.trim_end_matches(".lora_down.weight").to_string();
        t.insert(key, wider);
    });
    let err = model
        .set_loras(&[
            fx.spec("peft", fx.strength()),
            LoraSpec {
                path,
                strength: 1.0,
            },
        ])
        .unwrap_err();
    assert!(matches!(err, EngineError::ShapeMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("misfit.safetensors") && msg.contains(&bad_stem),
        "{msg}"
    );

    // Both refusals left the model as it was (the kohya LoRA applied).
    let after = outputs(&model, &fx);
    assert_eq!(bits(&before.0), bits(&after.0));
    assert_eq!(bits(&before.1), bits(&after.1));
}
