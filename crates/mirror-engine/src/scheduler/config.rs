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
    /// Number of diffusion steps the model was trained with (default 1000).
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    /// β at the first training step (linear schedules; default 0.0001).
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    /// β at the last training step (linear schedules; default 0.02).
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// "linear", "scaled_linear" or "squaredcos_cap_v2".
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    /// Explicit β per training step; replaces `beta_schedule` when given.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// Whether the predicted clean latent is clamped to `±clip_sample_range` (default true).
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    /// Clamp bound for `clip_sample` (default 1.0).
    #[serde(default = "default_clip_sample_range")]
    pub clip_sample_range: f64,
    /// Whether ᾱ after the last denoising step is 1 (else `alphas_cumprod[0]`); default true.
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    /// Added to every inference timestep with `leading` spacing (SD 1.x: 1).
    #[serde(default)]
    pub steps_offset: usize,
    /// "epsilon" or "v_prediction".
    #[serde(default = "default_prediction_type")]
    pub prediction_type: String,
    /// "leading", "trailing" or "linspace".
    #[serde(default = "default_timestep_spacing")]
    pub timestep_spacing: String,
    /// Dynamic thresholding; only `false` is supported.
    #[serde(default)]
    pub thresholding: bool,
    /// Zero terminal SNR rescaling of the betas; only `false` is supported.
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The UNet predicts the added noise ε (`epsilon`).
    Epsilon,
    /// The UNet predicts v = √ᾱ·ε − √(1−ᾱ)·x₀ (`v_prediction`).
    VPrediction,
}

/// How the inference timesteps are spread over the training steps (diffusers names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// Timesteps `i * (T / N) + steps_offset` for `i` below N (T training, N inference steps).
    Leading,
    /// Timesteps counted down from T − 1 in strides of T / N.
    Trailing,
    /// Timesteps evenly spaced from 0 to T − 1, rounded.
    Linspace,
}

impl DdimConfig {
    /// Reads and validates `scheduler/scheduler_config.json`.
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

    /// The `prediction_type` as a [`PredictionType`]; an error for any other value.
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

    /// The `timestep_spacing` as a [`TimestepSpacing`]; an error for any other value.
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
