//! LoRAs beside the model: the list the user keeps (file and strength, in the settings, so it
//! comes back with the next model), merged into the model on the worker thread, and what a
//! dropped recipe says about them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::MirrorApp;
use crate::worker::Command;
use mirror_engine::loader::lora::LoraSpec;
use mirror_engine::recipe::RecipeLora;

/// One LoRA of the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraSetting {
    pub path: PathBuf,
    pub strength: f64,
}

impl Default for LoraSetting {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            strength: 1.0,
        }
    }
}

impl LoraSetting {
    /// The file's name, as the list and recipes show it.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

impl MirrorApp {
    /// Merges the list into the loaded model (on the worker; the answer arrives as an event).
    pub(crate) fn apply_loras(&mut self) {
        if self.state.progress.running {
            return self
                .state
                .error("Cancel the run before changing the LoRAs.");
        }
        if self.state.model_ready().is_none() {
            return; // merged when a model has loaded
        }
        let specs: Vec<LoraSpec> = (self.state.settings.loras.iter())
            .map(|l| LoraSpec {
                path: l.path.clone(),
                strength: l.strength,
            })
            .collect();
        self.worker.send(Command::SetLoras(specs));
    }

    pub(crate) fn add_lora(&mut self, path: PathBuf) {
        if !self.state.settings.loras.iter().any(|l| l.path == path) {
            self.state.settings.loras.push(LoraSetting {
                path,
                strength: 1.0,
            });
        }
        self.apply_loras();
    }

    pub(crate) fn remove_lora(&mut self, index: usize) {
        if index < self.state.settings.loras.len() {
            self.state.settings.loras.remove(index);
            self.apply_loras();
        }
    }

    /// Brings the LoRAs a recipe names back: each found in the list by its file name gets the
    /// recipe's strength, the others are named in a note; the list is merged again when it
    /// changed. Returns the names that could not be found.
    pub(crate) fn restore_loras(&mut self, wanted: &[RecipeLora]) -> Vec<String> {
        let applied: Vec<RecipeLora> = (self.state.applied_loras.iter())
            .map(RecipeLora::from)
            .collect();
        if applied == wanted {
            return Vec::new();
        }
        let mut missing = Vec::new();
        let mut list = Vec::new();
        for lora in wanted {
            match (self.state.settings.loras.iter()).find(|l| l.file_name() == lora.file_name) {
                Some(l) => list.push(LoraSetting {
                    path: l.path.clone(),
                    strength: lora.strength,
                }),
                None => missing.push(lora.file_name.clone()),
            }
        }
        self.state.settings.loras = list;
        self.apply_loras();
        missing
    }
}
