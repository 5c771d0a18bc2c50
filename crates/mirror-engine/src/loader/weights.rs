//! Memory-mapped safetensors weights exposed as a candle `VarBuilder`, with optional renaming
//! (see [`NameMap`]), unit-dimension reshapes, dtype conversion and typed errors.
//!
//! Missing tensors and shape mismatches are returned inside the `candle_core::Error` as a
//! [`WeightIssue`] (in `Error::WrappedContext`, whose payload is a `dyn std::error::Error` and
//! can therefore be downcast; `Error::Wrapped` only holds a `dyn Display`). [`weight_error`]
//! turns any candle error from model construction back into a typed [`EngineError`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use super::names::{NameMap, same_up_to_unit_dims};
use crate::{EngineError, Result};

/// A problem with one requested tensor, carried inside a `candle_core::Error`.
#[derive(Clone, PartialEq, Eq)]
pub enum WeightIssue {
    /// No stored tensor has the requested name (or any of its renamings).
    Missing {
        /// The weights file (or the shards' folder).
        file: PathBuf,
        /// The name the model asked for.
        name: String,
        /// The stored names that were looked up (differ from `name` when renamed).
        looked_up: Vec<String>,
    },
    /// A stored tensor has another shape than the model expects.
    Shape {
        /// The weights file holding the tensor.
        file: PathBuf,
        /// The name the model asked for.
        name: String,
        /// The name the tensor is stored under.
        stored_name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The stored shape.
        found: Vec<usize>,
    },
}

impl WeightIssue {
    fn described_name(name: &str, stored: &[String]) -> String {
        match stored {
            [only] if only == name => name.to_string(),
            _ => format!("{name} (stored as {})", stored.join(" or ")),
        }
    }

    /// The typed engine error for this issue.
    pub fn to_engine_error(&self) -> EngineError {
        match self {
            WeightIssue::Missing {
                file,
                name,
                looked_up,
            } => EngineError::MissingTensor {
                file: file.clone(),
                name: Self::described_name(name, looked_up),
            },
            WeightIssue::Shape {
                file,
                name,
                stored_name,
                expected,
                found,
            } => EngineError::ShapeMismatch {
                file: file.clone(),
                name: Self::described_name(name, std::slice::from_ref(stored_name)),
                expected: expected.clone(),
                found: found.clone(),
            },
        }
    }
}

impl fmt::Display for WeightIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_engine_error())
    }
}

// Debug = Display: `Error::WrappedContext` prints its payload with `{:?}`.
impl fmt::Debug for WeightIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for WeightIssue {}

impl WeightIssue {
    fn into_candle(self) -> candle_core::Error {
        candle_core::Error::WrappedContext {
            wrapped: Box::new(self),
            context: "loading model weights".to_string(),
        }
    }
}

/// Finds the [`WeightIssue`] (or candle's own missing-tensor / shape errors) inside `err`.
pub fn find_weight_issue(err: &candle_core::Error) -> Option<WeightIssue> {
    use candle_core::Error as E;
    match err {
        E::WrappedContext { wrapped, .. } => {
            if let Some(issue) = wrapped.downcast_ref::<WeightIssue>() {
                Some(issue.clone())
            } else {
                wrapped.downcast_ref::<E>().and_then(find_weight_issue)
            }
        }
        E::Context { inner, .. } | E::WithPath { inner, .. } | E::WithBacktrace { inner, .. } => {
            find_weight_issue(inner)
        }
        E::CannotFindTensor { path } => Some(WeightIssue::Missing {
            file: PathBuf::new(),
            name: path.clone(),
            looked_up: vec![path.clone()],
        }),
        E::UnexpectedShape { msg, expected, got } => {
            let name = msg.strip_prefix("shape mismatch for ")?.to_string();
            Some(WeightIssue::Shape {
                file: PathBuf::new(),
                stored_name: name.clone(),
                name,
                expected: expected.dims().to_vec(),
                found: got.dims().to_vec(),
            })
        }
        _ => None,
    }
}

/// Turns a candle error from building a model on weights of `file` into a typed error:
/// `MissingTensor` / `ShapeMismatch` when the error is one, else a `Candle` error whose message
/// names the file.
pub fn weight_error(file: &Path, err: candle_core::Error) -> EngineError {
    match find_weight_issue(&err) {
        Some(mut issue) => {
            // Prefer the exact file the backend knew (a shard); fill in candle's own errors.
            match &mut issue {
                WeightIssue::Missing { file: f, .. } | WeightIssue::Shape { file: f, .. } => {
                    if f.as_os_str().is_empty() {
                        *f = file.to_path_buf();
                    }
                }
            }
            issue.to_engine_error()
        }
        None => EngineError::Candle(err.context(format!("{}: loading weights", file.display()))),
    }
}

struct Inner {
    files: Vec<PathBuf>,
    /// One memory map per file (so errors name the exact file).
    maps: Vec<MmapedSafetensors>,
    /// Tensor name -> index into `files`/`maps`.
    routing: HashMap<String, usize>,
}

impl Inner {
    /// The file named in errors about tensors that are not found.
    fn label(&self) -> &Path {
        match self.files.as_slice() {
            [one] => one,
            many => many[0].parent().unwrap_or(&many[0]),
        }
    }

    fn find(&self, candidates: &[String]) -> Option<(usize, String)> {
        candidates
            .iter()
            .find_map(|c| self.routing.get(c).map(|&i| (i, c.clone())))
    }
}

/// One or more safetensors files (shards), memory-mapped, headers validated at open time.
#[derive(Clone)]
pub struct WeightFiles {
    inner: Arc<Inner>,
}

fn corrupt(file: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::CorruptSafetensors {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// The innermost message of a candle error (without path / backtrace decorations).
fn root_message(err: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match err {
        E::WithPath { inner, .. } | E::WithBacktrace { inner, .. } => root_message(inner),
        other => other.to_string(),
    }
}

fn open_one(file: &Path) -> Result<MmapedSafetensors> {
    let io = |source| EngineError::Io {
        path: file.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(file).map_err(io)?;
    if !meta.is_file() {
        return Err(corrupt(file, "not a regular file"));
    }
    if meta.len() < 8 {
        return Err(corrupt(
            file,
            format!("{} bytes, shorter than the 8-byte header size", meta.len()),
        ));
    }
    std::fs::File::open(file).map_err(io)?;
    // SAFETY: the file is mapped read-only; like every mmap-based loader we rely on it not being
    // modified while the model is loaded. The header is parsed and checked against the file size here.
    let map =
        unsafe { MmapedSafetensors::new(file) }.map_err(|e| corrupt(file, root_message(&e)))?;
    // Every tensor's dtype must be one candle can load.
    for (name, view) in map.tensors() {
        DType::try_from(view.dtype()).map_err(|_| {
            corrupt(
                file,
                format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
            )
        })?;
    }
    Ok(map)
}

impl WeightFiles {
    /// Maps the files and validates their headers (`CorruptSafetensors` / `Io` errors name the file).
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        if files.is_empty() {
            return Err(EngineError::InvalidInput("no weight files given".into()));
        }
        let mut maps = Vec::with_capacity(files.len());
        let mut routing = HashMap::new();
        for (index, file) in files.iter().enumerate() {
            let map = open_one(file)?;
            for (name, _) in map.tensors() {
                routing.insert(name, index);
            }
            maps.push(map);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                files: files.to_vec(),
                maps,
                routing,
            }),
        })
    }

    /// The weight files, in the order they were opened.
    pub fn files(&self) -> &[PathBuf] {
        &self.inner.files
    }

    /// The path errors about these weights name: the file, or the shards' folder.
    pub fn label(&self) -> &Path {
        self.inner.label()
    }

    /// A `VarBuilder` reading tensors under their stored names.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        self.var_builder_mapped(Arc::new(NameMap::identity()), dtype, device)
    }

    /// A `VarBuilder` whose requested names are renamed through `map`.
    pub fn var_builder_mapped(
        &self,
        map: Arc<NameMap>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend = MappedBackend {
            inner: self.inner.clone(),
            map,
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// All stored tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.routing.keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether a tensor is stored under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.routing.contains_key(name)
    }

    /// Name, shape and stored dtype of every tensor, sorted by name.
    pub fn shapes_and_dtypes(&self) -> Vec<(String, Vec<usize>, DType)> {
        let mut out: Vec<_> = self
            .inner
            .routing
            .iter()
            .filter_map(|(name, &i)| {
                let view = self.inner.maps[i].get(name).ok()?;
                let dtype = DType::try_from(view.dtype()).ok()?;
                Some((name.clone(), view.shape().to_vec(), dtype))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Total number of stored elements.
    pub fn parameter_count(&self) -> usize {
        self.shapes_and_dtypes()
            .iter()
            .map(|(_, shape, _)| shape.iter().product::<usize>())
            .sum()
    }

    /// The dtype most of the floating-point parameters are stored in (F32 when there are none).
    pub fn stored_dtype(&self) -> DType {
        let mut counts: HashMap<DType, usize> = HashMap::new();
        for (_, shape, dtype) in self.shapes_and_dtypes() {
            if dtype.is_float() {
                *counts.entry(dtype).or_default() += shape.iter().product::<usize>();
            }
        }
        counts
            .into_iter()
            .max_by_key(|&(dtype, n)| (n, dtype.size_in_bytes()))
            .map(|(dtype, _)| dtype)
            .unwrap_or(DType::F32)
    }

    /// Loads one stored tensor as stored (name, dtype and shape unchanged).
    pub fn load_stored(&self, name: &str, device: &Device) -> Result<Tensor> {
        let label = self.label().to_path_buf();
        let &index = self
            .inner
            .routing
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor {
                file: label,
                name: name.to_string(),
            })?;
        let file = &self.inner.files[index];
        let view = self.inner.maps[index]
            .get(name)
            .map_err(|e| weight_error(file, e))?;
        view.load(device).map_err(|e| weight_error(file, e))
    }
}

/// The `SimpleBackend` behind [`WeightFiles::var_builder_mapped`].
struct MappedBackend {
    inner: Arc<Inner>,
    map: Arc<NameMap>,
}

impl MappedBackend {
    fn load(
        &self,
        expected: Option<&Shape>,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let resolved = self.map.resolve(name);
        let Some((index, stored)) = self.inner.find(&resolved.candidates) else {
            return Err(WeightIssue::Missing {
                file: self.inner.label().to_path_buf(),
                name: name.to_string(),
                looked_up: resolved.candidates,
            }
            .into_candle());
        };
        let file = &self.inner.files[index];
        let view = self.inner.maps[index].get(&stored)?;
        let found = view.shape().to_vec();
        let mut reshape_to = None;
        if let Some(expected) = expected {
            let expected = expected.dims();
            if expected != found.as_slice() {
                if resolved.unit_reshape && same_up_to_unit_dims(expected, &found) {
                    reshape_to = Some(expected.to_vec());
                } else {
                    return Err(WeightIssue::Shape {
                        file: file.clone(),
                        name: name.to_string(),
                        stored_name: stored,
                        expected: expected.to_vec(),
                        found,
                    }
                    .into_candle());
                }
            }
        }
        let mut tensor = view.load(dev)?;
        if let Some(shape) = reshape_to {
            tensor = tensor.reshape(shape)?;
        }
        tensor.to_dtype(dtype)
    }
}

impl SimpleBackend for MappedBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(Some(&s), name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(None, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner
            .find(&self.map.resolve(name).candidates)
            .is_some()
    }
}
