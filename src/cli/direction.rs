//! How the edit direction was chosen, as recipes record it (`extra.direction`): shared by
//! `translate --recipe` and the app, so that a recipe restores the same direction in both.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use mirror_engine::session::DirectionChoice;

/// How the edit direction was chosen.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionRecipe {
    Templates {
        pairs: usize,
    },
    Prompt,
    File(PathBuf),
    Sentences {
        source: Vec<String>,
        target: Vec<String>,
    },
}

impl DirectionRecipe {
    /// The number of template sentence pairs the engine uses by default.
    pub fn default_pairs() -> usize {
        match DirectionChoice::default() {
            DirectionChoice::Templates { pairs } => pairs,
            _ => 512,
        }
    }

    pub fn choice(&self) -> DirectionChoice {
        match self {
            DirectionRecipe::Templates { pairs } => DirectionChoice::Templates { pairs: *pairs },
            DirectionRecipe::Prompt => DirectionChoice::PromptDifference,
            DirectionRecipe::File(p) => DirectionChoice::File(p.clone()),
            DirectionRecipe::Sentences { source, target } => DirectionChoice::Sentences {
                source: source.clone(),
                target: target.clone(),
            },
        }
    }
}
