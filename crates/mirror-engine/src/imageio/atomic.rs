//! Atomic file writes: write a temporary file next to the target, then rename it over the
//! target, so a crash or a full disk never leaves a half-written image behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{EngineError, Result};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically. Errors name `path`; no temporary file is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_error = |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path.file_name().ok_or_else(|| {
        io_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let temp = temp_path_for(path, &file_name.to_string_lossy());
    let written = write_and_sync(&temp, bytes).and_then(|()| std::fs::rename(&temp, path));
    if let Err(source) = written {
        // The temp file may or may not exist (e.g. create failed); either way it must go.
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(source));
    }
    Ok(())
}

fn temp_path_for(path: &Path, file_name: &str) -> PathBuf {
    let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp_name = format!(".{file_name}.{}-{unique}.tmp", std::process::id());
    path.with_file_name(temp_name)
}

fn write_and_sync(temp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(temp)?;
    file.write_all(bytes)?;
    file.sync_all()
}
