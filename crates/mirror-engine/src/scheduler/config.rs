//! `scheduler/scheduler_config.json` (diffusers `DDIMScheduler`), with diffusers' defaults.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/schedulers/scheduling_ddim.py (pinned).

use std::path::Path;

use serde::Deserialize;

use crate::config::read_json_config;
use crate::{EngineError, Result};

fn default_num_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".to_string()
}
fn default_true() -> bool {
    true
}
fn default_prediction_type() -> String {
    "epsilon".to_string()
}
fn default_clip_sample_range() -> f64 {
    1.0
}
fn default_timestep_spacing() -> String {
    "leading".to_string()
}

/// The DDIM scheduler settings, as diffusers reads them (absent keys take its defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct DdimConfig {
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// "linear", "scaled_linear" or "squaredcos_cap_v2".
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    #[serde(default = "default_clip_sample_range")]
    pub clip_sample_range: f64,
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    /// "epsilon" or "v_prediction".
    #[serde(default = "default_prediction_type")]
    pub prediction_type: String,
    /// "leading", "trailing" or "linspace".
    #[serde(default = "default_timestep_spacing")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
}

/// How the inference timesteps are spread over the training steps (diffusers names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

impl DdimConfig {
    pub fn from_file(path: &Path) -> Result<DdimConfig> {
        let cfg: DdimConfig = read_json_config(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks every setting the scheduler relies on; errors name `file` and the field.
    pub fn validate(&self, file: &Path) -> Result<()> {
        self.prediction(file)?;
        self.spacing(file)?;
        let err = |field: &str, reason: String| EngineError::Config {
            file: file.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let t = self.num_train_timesteps;
        if t == 0 || t > 100_000 {
            return Err(err(
                "num_train_timesteps",
                format!("{t} is out of range 1..=100000"),
            ));
        }
        match &self.trained_betas {
            Some(betas) => {
                if betas.len() != t {
                    return Err(err(
                        "trained_betas",
                        format!("{} values, but num_train_timesteps is {t}", betas.len()),
                    ));
                }
                if let Some(b) = betas.iter().find(|b| !(**b >= 0.0 && **b < 1.0)) {
                    return Err(err("trained_betas", format!("beta {b} is not in [0, 1)")));
                }
            }
            None => match self.beta_schedule.as_str() {
                "linear" | "scaled_linear" => {
                    for (field, b) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)]
                    {
                        if !(0.0..1.0).contains(&b) {
                            return Err(err(field, format!("{b} is not in [0, 1)")));
                        }
                    }
                }
                "squaredcos_cap_v2" => {}
                other => {
                    return Err(err(
                        "beta_schedule",
                        format!(
                            "`{other}` is not supported (linear, scaled_linear, squaredcos_cap_v2)"
                        ),
                    ));
                }
            },
        }
        if self.thresholding {
            return Err(err(
                "thresholding",
                "dynamic thresholding is not supported".into(),
            ));
        }
        if self.rescale_betas_zero_snr {
            return Err(err(
                "rescale_betas_zero_snr",
                "zero-SNR rescaling is not supported".into(),
            ));
        }
        if self.clip_sample && !(self.clip_sample_range.is_finite() && self.clip_sample_range > 0.0)
        {
            return Err(err(
                "clip_sample_range",
                format!("{} is not positive", self.clip_sample_range),
            ));
        }
        Ok(())
    }

    pub fn prediction(&self, file: &Path) -> Result<PredictionType> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(PredictionType::Epsilon),
            "v_prediction" => Ok(PredictionType::VPrediction),
            other => Err(EngineError::Config {
                file: file.to_path_buf(),
                field: "prediction_type".into(),
                reason: format!("`{other}` is not supported (epsilon, v_prediction)"),
            }),
        }
    }

    pub fn spacing(&self, file: &Path) -> Result<TimestepSpacing> {
        match self.timestep_spacing.as_str() {
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            "linspace" => Ok(TimestepSpacing::Linspace),
            other => Err(EngineError::Config {
                file: file.to_path_buf(),
                field: "timestep_spacing".into(),
                reason: format!("`{other}` is not supported (leading, trailing, linspace)"),
            }),
        }
    }
}
