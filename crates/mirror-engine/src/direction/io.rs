//! Sentence files and direction files.
//!
//! A direction file is a safetensors file with `edit_dir` `[1, 77, D]` f32 (plus `mean_source`
//! and `mean_target` when known) and string metadata: `source_phrase`, `target_phrase`,
//! `method`, `sentences`, and whatever the caller adds (e.g. the text-encoder weights hash).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use super::compute::EditDirection;
use crate::{EngineError, Result};

const DELTA: &str = "edit_dir";
const MEAN_SOURCE: &str = "mean_source";
const MEAN_TARGET: &str = "mean_target";
const FORMAT: &str = "mirror-edit-direction";

/// One sentence per line; blank lines and lines starting with `#` are skipped.
pub fn read_sentence_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let sentences: Vec<String> = text
        .trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    if sentences.is_empty() {
        return Err(EngineError::InvalidInput(format!(
            "{}: no sentences (one per line; blank lines and #comments are skipped)",
            path.display()
        )));
    }
    Ok(sentences)
}

/// Writes the direction to `path` atomically (a temporary file in the same folder, then a
/// rename). `extra_metadata` is stored next to the direction's own metadata; it cannot
/// overwrite the phrases, method or sentence count.
pub fn save_direction(
    dir: &EditDirection,
    extra_metadata: &[(String, String)],
    path: &Path,
) -> Result<()> {
    let mut metadata: HashMap<String, String> = dir.metadata.clone().into_iter().collect();
    metadata.extend(extra_metadata.iter().cloned());
    metadata.insert("format".into(), FORMAT.into());
    metadata.insert("source_phrase".into(), dir.source_phrase.clone());
    metadata.insert("target_phrase".into(), dir.target_phrase.clone());
    metadata.insert("method".into(), dir.method.clone());
    metadata.insert("sentences".into(), dir.sentences.to_string());

    let to_cpu_f32 = |t: &Tensor| -> Result<Tensor> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?)
    };
    let mut tensors = vec![(DELTA, to_cpu_f32(&dir.delta)?)];
    if let Some(mean) = &dir.mean_source {
        tensors.push((MEAN_SOURCE, to_cpu_f32(mean)?));
    }
    if let Some(mean) = &dir.mean_target {
        tensors.push((MEAN_TARGET, to_cpu_f32(mean)?));
    }
    let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| {
        EngineError::CorruptSafetensors {
            file: path.to_path_buf(),
            reason: format!("cannot serialise the direction: {e}"),
        }
    })?;
    write_atomically(path, &bytes)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Io { path, source }
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| EngineError::InvalidInput(format!("{}: not a file path", path.display())))?;
    let temp: PathBuf = path.with_file_name(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(&temp)(e));
    }
    std::fs::rename(&temp, path).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        io_error(path)(e)
    })
}

/// Reads a direction file written by [`save_direction`] and checks it fits a text encoder
/// of width `hidden_size` (`edit_dir` must be `[1, L, hidden_size]`). Tensors come back f32
/// on the CPU.
#[expect(
    clippy::too_many_lines,
    reason = "one reader per accepted file layout, each a few checks; split when a layout is added"
)]
pub fn load_direction(path: &Path, hidden_size: usize) -> Result<EditDirection> {
    let file = path.to_path_buf();
    let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
        path: file.clone(),
        source,
    })?;
    let corrupt = |e: safetensors::SafeTensorError| EngineError::CorruptSafetensors {
        file: file.clone(),
        reason: e.to_string(),
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(corrupt)?;

    let read = |name: &str| -> Result<Option<Tensor>> {
        let view = match tensors.tensor(name) {
            Ok(view) => view,
            Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
            Err(e) => return Err(corrupt(e)),
        };
        let tensor = view
            .load(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| EngineError::CorruptSafetensors {
                file: file.clone(),
                reason: format!("tensor `{name}` cannot be read as f32: {e}"),
            })?;
        Ok(Some(tensor))
    };
    let delta = read(DELTA)?.ok_or_else(|| EngineError::MissingTensor {
        file: file.clone(),
        name: DELTA.into(),
    })?;
    let dims = delta.dims().to_vec();
    if dims.len() != 3 || dims[0] != 1 || dims[1] == 0 || dims[2] != hidden_size {
        return Err(EngineError::ShapeMismatch {
            file,
            name: DELTA.into(),
            expected: vec![1, dims.get(1).copied().unwrap_or(77).max(1), hidden_size],
            found: dims,
        });
    }
    let mut means = Vec::new();
    for name in [MEAN_SOURCE, MEAN_TARGET] {
        let mean = read(name)?;
        if let Some(mean) = &mean
            && mean.dims() != dims.as_slice()
        {
            return Err(EngineError::ShapeMismatch {
                file,
                name: name.into(),
                expected: dims,
                found: mean.dims().to_vec(),
            });
        }
        means.push(mean);
    }
    for (name, tensor) in [
        (DELTA, Some(&delta)),
        (MEAN_SOURCE, means[0].as_ref()),
        (MEAN_TARGET, means[1].as_ref()),
    ] {
        if let Some(t) = tensor
            && t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .any(|v| !v.is_finite())
        {
            return Err(EngineError::NonFinite {
                what: format!("{}: tensor `{name}`", file.display()),
            });
        }
    }

    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut take = |key: &str| metadata.remove(key).unwrap_or_default();
    let source_phrase = take("source_phrase");
    let target_phrase = take("target_phrase");
    let method = take("method");
    let sentences = take("sentences");
    let sentences = if sentences.is_empty() {
        0
    } else {
        sentences
            .parse()
            .map_err(|_| EngineError::CorruptSafetensors {
                file: file.clone(),
                reason: format!("metadata `sentences` is not a count: {sentences:?}"),
            })?
    };
    let mut means = means.into_iter();
    Ok(EditDirection {
        delta,
        source_phrase,
        target_phrase,
        sentences,
        method,
        mean_source: means.next().flatten(),
        mean_target: means.next().flatten(),
        metadata,
    })
}
