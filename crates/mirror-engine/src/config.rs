//! The one way JSON config files are read: the diffusers configs (UNet, VAE, text encoder,
//! scheduler, the loader's typed reads) and `mirror.json` all go through [`read_json_object`],
//! and every error names the file and the field with [`config_error`].

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{EngineError, Result};

/// The field name errors use when the whole file is wrong (not JSON, not an object).
pub const WHOLE_FILE: &str = "(whole file)";

/// An error about `field` of the config `file`.
pub fn config_error(file: &Path, field: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Config {
        file: file.to_path_buf(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The text of `file`; an I/O error names it.
pub fn read_text(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).map_err(|source| EngineError::Io {
        path: file.to_path_buf(),
        source,
    })
}

/// The JSON object in `text` (`file` labels the errors).
pub fn parse_json_object(text: &str, file: &Path) -> Result<Map<String, Value>> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| config_error(file, WHOLE_FILE, format!("invalid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(config_error(
            file,
            WHOLE_FILE,
            format!("expected a JSON object, found {other}"),
        )),
    }
}

/// Reads the JSON object in `file`.
pub fn read_json_object(file: &Path) -> Result<Map<String, Value>> {
    parse_json_object(&read_text(file)?, file)
}

/// A typed config from an object whose fields all have serde defaults. serde does not say
/// which key failed, so on an error each key is parsed on its own to name it.
pub fn from_json_object<T: DeserializeOwned>(map: Map<String, Value>, file: &Path) -> Result<T> {
    match serde_json::from_value::<T>(Value::Object(map.clone())) {
        Ok(cfg) => Ok(cfg),
        Err(whole) => {
            for (key, v) in map {
                let single = Value::Object([(key.clone(), v)].into_iter().collect());
                if let Err(e) = serde_json::from_value::<T>(single) {
                    return Err(config_error(file, &key, e.to_string()));
                }
            }
            Err(config_error(file, WHOLE_FILE, whole.to_string()))
        }
    }
}

/// Reads a diffusers JSON config whose fields all have serde defaults.
pub fn read_json_config<T: DeserializeOwned>(file: &Path) -> Result<T> {
    from_json_object(read_json_object(file)?, file)
}
