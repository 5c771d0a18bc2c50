//! Reads the PyTorch reference fixtures (`MIRROR_FIXTURES`, default
//! `../shared/fixtures/tiny-sd-ref`) and compares tensors with the manifest's tolerances.
//!
//! Tests must run on any fixture set the shared generator makes (another architecture,
//! a non-square image; `scripts/make-fixture-set.sh` makes one): take the model folder, the
//! image, sizes and widths from here (`model_dir`, `test_image`, `image_hw`, `latent_hw`,
//! `text_hidden_size`, `model_config`, `weights_path`), edit configs with `edit_json`, and
//! loop over fixtures with `names_with_prefix` (it fails when there are none).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use mirror_engine::device::{Precision, device_from_env, resolve_precision};
use serde_json::Value;

/// The device tests compute on: `MIRROR_DEVICE` (cpu, cuda, metal or auto; default cpu), so
/// the same suite runs on a GPU unchanged. Opened once: tensors made on two openings of the
/// same GPU cannot be mixed. A device that cannot be opened fails the test run (a silent
/// fallback to the CPU would pass for a GPU run).
/// The repository root (the folder with `Cargo.lock`), whichever crate's tests include this
/// module; `../shared` lies beside it.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .expect("the tests run inside the repository")
        .to_path_buf()
}

pub fn test_device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| device_from_env("MIRROR_DEVICE").unwrap_or_else(|e| panic!("{e}")))
        .clone()
}

/// The half precisions the half-precision tests run: `MIRROR_PRECISION` (f16 or bf16) picks
/// one; unset, both where the test device computes in them (the CPU has no bf16 conv2d: its
/// fallback to f32 is tested on its own). Asking for one the device lacks fails.
pub fn test_half_precisions() -> Vec<Precision> {
    let supported = |p: &Precision| resolve_precision(&test_device(), *p).1.is_none();
    match std::env::var("MIRROR_PRECISION").as_deref() {
        Err(_) => [Precision::F16, Precision::Bf16]
            .into_iter()
            .filter(supported)
            .collect(),
        Ok(word) => {
            let p: Precision = word
                .parse()
                .unwrap_or_else(|e| panic!("MIRROR_PRECISION: {e}"));
            assert!(supported(&p), "MIRROR_PRECISION={word}: not on this device");
            vec![p]
        }
    }
}

/// A manifest tolerance (set for f32 against the reference) carried over to a half type: the
/// f32 atol scaled by the ratio of the unit roundoffs (f16: 2⁻¹⁰/2⁻²³ = 8192; bf16: 65536),
/// the first-order growth of the same rounding errors with a coarser format.
pub fn half_atol(f32_atol: f64, half: DType) -> f64 {
    let eps = |d: DType| match d {
        DType::F16 => f64::from(half::f16::EPSILON.to_f32()),
        DType::BF16 => f64::from(half::bf16::EPSILON.to_f32()),
        _ => f64::from(f32::EPSILON),
    };
    f32_atol * eps(half) / eps(DType::F32)
}

pub struct Fixtures {
    pub root: PathBuf,
    pub manifest: Value,
}

impl Fixtures {
    pub fn load() -> Fixtures {
        let root = std::env::var_os("MIRROR_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("../shared/fixtures/tiny-sd-ref"));
        let text = std::fs::read_to_string(root.join("manifest.json"))
            .unwrap_or_else(|e| panic!("{}: {e} (set MIRROR_FIXTURES)", root.display()));
        let manifest = serde_json::from_str(&text).expect("manifest.json parses");
        Fixtures { root, manifest }
    }

    /// The model folder the fixtures were made from.
    pub fn model_dir(&self) -> PathBuf {
        self.root
            .join(self.manifest["model_dir"].as_str().expect("model_dir"))
    }

    /// Test image size `(height, width)` in pixels (manifest `image_hw`).
    pub fn image_hw(&self) -> (usize, usize) {
        self.pair("image_hw")
    }

    /// Latent size `(height, width)` of the test image (manifest `latent_hw`).
    pub fn latent_hw(&self) -> (usize, usize) {
        self.pair("latent_hw")
    }

    /// Pixels per latent cell (manifest `vae_scale_factor`, 2^(VAE blocks − 1)).
    pub fn vae_scale_factor(&self) -> usize {
        self.usize_field("vae_scale_factor")
    }

    /// Width of the text embedding (manifest `text_hidden_size`, = UNet cross_attention_dim).
    pub fn text_hidden_size(&self) -> usize {
        self.usize_field("text_hidden_size")
    }

    /// The fixture test image (PNG named by the `vae` fixture).
    pub fn test_image(&self) -> PathBuf {
        let name = self.fixture("vae")["png"]["test_image"]
            .as_str()
            .expect("manifest: vae.png.test_image");
        self.root.join(name)
    }

    /// The source prompt the reference tensors were computed with (`unet` settings).
    pub fn source_prompt(&self) -> String {
        self.settings("unet")["prompt"]
            .as_str()
            .expect("manifest: unet.settings.prompt")
            .to_string()
    }

    /// `config.json` of a model component ("unet", "vae", "text_encoder").
    pub fn config_path(&self, component: &str) -> PathBuf {
        self.model_dir().join(component).join("config.json")
    }

    /// A model component's `config.json`, parsed.
    pub fn model_config(&self, component: &str) -> Value {
        read_json(&self.config_path(component))
    }

    /// The single safetensors weight file of a model component (as the generator writes them).
    pub fn weights_path(&self, component: &str) -> PathBuf {
        weight_file(&self.model_dir().join(component))
    }

    /// Names of the manifest's fixtures that start with `prefix`, sorted; panics when there
    /// are none, so that a loop over them cannot pass vacuously.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = self.manifest["fixtures"]
            .as_object()
            .expect("manifest: fixtures")
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        names.sort();
        assert!(
            !names.is_empty(),
            "no fixture named {prefix}* in the manifest"
        );
        names
    }

    fn usize_field(&self, key: &str) -> usize {
        self.manifest[key]
            .as_u64()
            .unwrap_or_else(|| panic!("manifest: `{key}` missing")) as usize
    }

    fn pair(&self, key: &str) -> (usize, usize) {
        let v = &self.manifest[key];
        match (v[0].as_u64(), v[1].as_u64()) {
            (Some(h), Some(w)) => (h as usize, w as usize),
            _ => panic!("manifest: `{key}` is not [height, width]"),
        }
    }

    pub fn fixture(&self, name: &str) -> &Value {
        let f = &self.manifest["fixtures"][name];
        assert!(!f.is_null(), "fixture `{name}` is not in the manifest");
        f
    }

    pub fn settings(&self, name: &str) -> &Value {
        &self.fixture(name)["settings"]
    }

    /// The timesteps a fixture was made at (`settings.timesteps`), at least one.
    pub fn timesteps(&self, name: &str) -> Vec<f64> {
        let timesteps: Vec<f64> = self.settings(name)["timesteps"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no timesteps in the manifest"))
            .iter()
            .map(|t| t.as_f64().expect("numeric timestep"))
            .collect();
        assert!(
            !timesteps.is_empty(),
            "{name}: no timesteps in the manifest"
        );
        timesteps
    }

    /// Every tensor of one fixture file, loaded on the test device.
    pub fn tensors(&self, name: &str) -> HashMap<String, Tensor> {
        let file = self.fixture(name)["file"].as_str().expect("file");
        candle_core::safetensors::load(self.root.join(file), &test_device())
            .unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    pub fn tensor(&self, name: &str, tensor: &str) -> Tensor {
        self.tensors(name)
            .remove(tensor)
            .unwrap_or_else(|| panic!("{name}: no tensor `{tensor}`"))
    }

    /// Names of the fixture's tensors with the given role ("input", "output", "intermediate").
    pub fn names_with_role(&self, name: &str, role: &str) -> Vec<String> {
        let mut names: Vec<String> = self.fixture(name)["tensors"]
            .as_object()
            .expect("tensors")
            .iter()
            .filter(|(_, v)| v["role"] == role)
            .map(|(k, _)| k.clone())
            .collect();
        names.sort();
        names
    }

    pub fn atol(&self, name: &str, tensor: &str) -> f64 {
        self.fixture(name)["tensors"][tensor]["atol"]
            .as_f64()
            .unwrap_or(0.0)
    }

    /// As [`Self::assert_close`] for a tensor computed in the half type `half`: the manifest's
    /// f32 atol carried over with [`half_atol`].
    pub fn assert_close_half(&self, name: &str, tensor: &str, actual: &Tensor, half: DType) -> f64 {
        let expected = self.tensor(name, tensor);
        let atol = half_atol(self.atol(name, tensor), half);
        let label = format!("{name}.{tensor} in {half:?}");
        assert_tensor_close(&label, &expected, actual, atol)
    }

    /// Checks `actual` against the fixture tensor: integers exactly, floats elementwise within
    /// the manifest's `atol` (NaN positions must match). Returns the max abs error.
    pub fn assert_close(&self, name: &str, tensor: &str, actual: &Tensor) -> f64 {
        let expected = self.tensor(name, tensor);
        let atol = self.atol(name, tensor);
        assert_tensor_close(&format!("{name}.{tensor}"), &expected, actual, atol)
    }
}

/// Elementwise |actual − expected| ≤ atol, NaN positions equal. Returns the max abs error.
pub fn assert_tensor_close(label: &str, expected: &Tensor, actual: &Tensor, atol: f64) -> f64 {
    assert_eq!(
        expected.dims(),
        actual.dims(),
        "{label}: shape {:?} expected, got {:?}",
        expected.dims(),
        actual.dims()
    );
    let integer = matches!(expected.dtype(), DType::I64 | DType::U32 | DType::U8);
    // Compared on the CPU (Metal has no f64).
    let flat = |t: &Tensor| -> Vec<f64> {
        t.to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .expect("tensor converts to f64")
    };
    let (e, a) = (flat(expected), flat(actual));
    let mut max_err = 0f64;
    let mut worst = 0usize;
    for (i, (x, y)) in e.iter().zip(&a).enumerate() {
        if x.is_nan() || y.is_nan() {
            assert!(
                x.is_nan() && y.is_nan(),
                "{label}[{i}]: NaN position differs ({x} vs {y})"
            );
            continue;
        }
        let err = (x - y).abs();
        if err > max_err || err.is_nan() {
            max_err = err;
            worst = i;
        }
    }
    let limit = if integer { 0.0 } else { atol };
    assert!(
        max_err <= limit,
        "{label}: max abs error {max_err:.3e} at flat index {worst} (expected {}, got {}) exceeds atol {limit:.3e}",
        e[worst],
        a[worst]
    );
    eprintln!("{label}: max abs error {max_err:.3e} (atol {limit:.3e})");
    max_err
}

/// The single `*.safetensors` file in a component folder (panics on none or several).
pub fn weight_file(component_dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(component_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", component_dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert_eq!(
        files.len(),
        1,
        "{}: one safetensors file expected, found {files:?}",
        component_dir.display()
    );
    files.into_iter().next().unwrap()
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Edits a JSON file as JSON (never by text replacement): read, apply `edit`, write back.
pub fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut value = read_json(path);
    edit(&mut value);
    let text = serde_json::to_string_pretty(&value).expect("JSON serialises");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Copies a folder tree, making the copies writable (the fixtures are read-only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            let mut perms = std::fs::metadata(&target).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&target, perms).unwrap();
        }
    }
}

/// The largest absolute difference between two f32 tensors of one shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A folder for the folder-run tests: `image` as `a-cat.png`, mirrored as `b-cat.jpg`, a
/// damaged PNG (`c-broken.png`) and a text file (`notes.txt`).
pub fn write_photo_folder(dir: &Path, image: &image::RgbImage) {
    std::fs::create_dir_all(dir).expect("the photo folder");
    image.save(dir.join("a-cat.png")).expect("a-cat.png");
    image::imageops::flip_horizontal(image)
        .save(dir.join("b-cat.jpg"))
        .expect("b-cat.jpg");
    std::fs::write(dir.join("c-broken.png"), b"\x89PNG\r\n\x1a\nnot really").expect("c-broken");
    std::fs::write(dir.join("notes.txt"), "shot on a sunny day").expect("notes.txt");
}
