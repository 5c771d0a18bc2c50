//! Reads the PyTorch reference fixtures (`MIRROR_FIXTURES`, default
//! `../shared/fixtures/tiny-sd-ref`) and compares tensors with the manifest's tolerances.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

pub struct Fixtures {
    pub root: PathBuf,
    pub manifest: Value,
}

impl Fixtures {
    pub fn load() -> Fixtures {
        let root = std::env::var_os("MIRROR_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/tiny-sd-ref")
            });
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

    pub fn fixture(&self, name: &str) -> &Value {
        let f = &self.manifest["fixtures"][name];
        assert!(!f.is_null(), "fixture `{name}` is not in the manifest");
        f
    }

    pub fn settings(&self, name: &str) -> &Value {
        &self.fixture(name)["settings"]
    }

    /// Every tensor of one fixture file, loaded on the CPU.
    pub fn tensors(&self, name: &str) -> HashMap<String, Tensor> {
        let file = self.fixture(name)["file"].as_str().expect("file");
        candle_core::safetensors::load(self.root.join(file), &Device::Cpu)
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
    let flat = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
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
