//! DDIM (η = 0) as diffusers' `DDIMScheduler`, plus the two inverse steps used for inversion:
//! the exact inverse of the forward step (Preset R) and the released pix2pix-zero /
//! MirrorDiffusion `DDIMInverseScheduler` step (Preset F). docs/algorithm.md §2.
//!
//! Every step is plain tensor arithmetic (differentiable in the sample and the model output),
//! done in the tensor's dtype with the ā scalars rounded to f32 first and the operations in
//! diffusers' order, so float32 results match PyTorch bit for bit or nearly.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/schedulers/scheduling_ddim.py
//! and https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/schedulers/scheduling_ddim_inverse.py (pinned).

pub mod config;
pub mod kl;
mod schedule;

use std::path::Path;

use candle_core::{Result, Tensor};

pub use config::{DdimConfig, PredictionType, TimestepSpacing};
pub use kl::{kl_divergence, kl_gradient, kl_regularize};

/// The DDIM scheduler (η = 0): the timestep grid, the forward step and the two inverse steps.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    config: DdimConfig,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    alphas_cumprod: Vec<f32>,
    alphas_cumprod_f64: Vec<f64>,
    /// ā used "after the last step": 1 with `set_alpha_to_one`, else ā[0].
    final_alpha_cumprod: f32,
}

/// Result of one forward (denoising) step.
#[derive(Debug, Clone)]
pub struct DdimStepOutput {
    /// The sample one step less noisy, `x_{t−1}`.
    pub prev_sample: Tensor,
    /// The step's prediction of the clean sample, `x̂₀`.
    pub pred_original_sample: Tensor,
}

/// `x · s` with `s` a 0-d tensor of x's dtype: an exact IEEE product, like torch's
/// tensor × 0-d tensor (and differentiable in x).
fn mul_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    x.broadcast_mul(&Tensor::new(s, x.device())?.to_dtype(x.dtype())?)
}

/// `x / s` as a true division (candle's `x / f64` multiplies by the reciprocal).
fn div_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    x.broadcast_div(&Tensor::new(s, x.device())?.to_dtype(x.dtype())?)
}

impl DdimScheduler {
    /// A scheduler for `cfg`, validated; errors are labelled "scheduler config".
    pub fn new(cfg: DdimConfig) -> crate::Result<Self> {
        let origin = Path::new("scheduler config");
        cfg.validate(origin)?;
        let alphas_cumprod = schedule::alphas_cumprod_f32(&cfg);
        let final_alpha_cumprod = if cfg.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            prediction: cfg.prediction(origin)?,
            spacing: cfg.spacing(origin)?,
            alphas_cumprod_f64: schedule::alphas_cumprod_f64(&cfg),
            alphas_cumprod,
            final_alpha_cumprod,
            config: cfg,
        })
    }

    /// Reads `scheduler/scheduler_config.json`; errors name the file and the field.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        Self::new(DdimConfig::from_file(path)?)
    }

    /// The config it was built from.
    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    /// What the model predicts (ε or v).
    pub fn prediction_type(&self) -> PredictionType {
        self.prediction
    }

    /// Number of training timesteps T.
    pub fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }

    /// ā[j] as diffusers holds it (float32).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// ā[j] computed in f64 throughout (for diagnostics).
    pub fn alphas_cumprod_f64(&self) -> &[f64] {
        &self.alphas_cumprod_f64
    }

    /// ā used "after the last step": 1 with `set_alpha_to_one`, else ā[0].
    pub fn final_alpha_cumprod(&self) -> f32 {
        self.final_alpha_cumprod
    }

    /// `num_inference_steps` must be in 1..=num_train_timesteps (diffusers refuses others).
    pub fn check_num_inference_steps(&self, num_inference_steps: usize) -> crate::Result<()> {
        let t = self.config.num_train_timesteps;
        if num_inference_steps == 0 || num_inference_steps > t {
            return Err(crate::EngineError::InvalidInput(format!(
                "number of DDIM steps {num_inference_steps} is not in 1..={t}"
            )));
        }
        Ok(())
    }

    /// The distance between grid points as diffusers' step uses it: T / N (integer division).
    pub fn step_ratio(&self, num_inference_steps: usize) -> usize {
        self.config.num_train_timesteps / num_inference_steps.max(1)
    }

    /// The sampling timesteps, noisiest first (diffusers `set_timesteps`): for N = 10 with
    /// "leading" spacing and steps_offset 1, 901, 801, …, 1. Empty when N is out of range.
    pub fn timesteps(&self, num_inference_steps: usize) -> Vec<usize> {
        let n = num_inference_steps;
        let t = self.config.num_train_timesteps;
        if self.check_num_inference_steps(n).is_err() {
            return Vec::new();
        }
        match self.spacing {
            TimestepSpacing::Leading => {
                let ratio = t / n;
                (0..n)
                    .rev()
                    .map(|i| i * ratio + self.config.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                // np.round(np.arange(T, 0, -T / N)) − 1
                let ratio = t as f64 / n as f64;
                (0..n)
                    .map(|k| t as f64 - k as f64 * ratio)
                    .take_while(|&v| v > 0.0)
                    .map(|v| (v.round_ties_even() as usize).saturating_sub(1))
                    .collect()
            }
            TimestepSpacing::Linspace => {
                // np.linspace(0, T − 1, N).round()[::-1]
                let last = (t - 1) as f64;
                let step = if n > 1 { last / (n - 1) as f64 } else { 0.0 };
                (0..n)
                    .rev()
                    .map(|i| {
                        let v = if n > 1 && i == n - 1 {
                            last
                        } else {
                            i as f64 * step
                        };
                        v.round_ties_even() as usize
                    })
                    .collect()
            }
        }
    }

    /// ā at grid index `t`; negative indices mean "before the first step" (final alpha).
    fn alpha(&self, t: isize) -> Result<f32> {
        if t < 0 {
            return Ok(self.final_alpha_cumprod);
        }
        match self.alphas_cumprod.get(t as usize) {
            Some(&a) => Ok(a),
            None => candle_core::bail!(
                "timestep {t} is outside the schedule (0..{})",
                self.alphas_cumprod.len()
            ),
        }
    }

    fn checked_ratio(&self, num_inference_steps: usize) -> Result<isize> {
        self.check_num_inference_steps(num_inference_steps)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(self.step_ratio(num_inference_steps) as isize)
    }

    /// Forward (denoising) step x_t → x_{t−r}, η = 0, exactly diffusers' `DDIMScheduler.step`.
    /// `model_output` is ε (or v for v-prediction). Differentiable in both tensors.
    pub fn step(
        &self,
        eps: &Tensor,
        t: usize,
        sample: &Tensor,
        num_inference_steps: usize,
    ) -> Result<DdimStepOutput> {
        let ratio = self.checked_ratio(num_inference_steps)?;
        let a_t = self.alpha(t as isize)?;
        let a_prev = self.alpha(t as isize - ratio)?;
        let beta_t = 1f32 - a_t;
        let (x0, pred_eps) = match self.prediction {
            PredictionType::Epsilon => {
                let x0 = div_scalar(&(sample - mul_scalar(eps, beta_t.sqrt())?)?, a_t.sqrt())?;
                (x0, eps.clone())
            }
            PredictionType::VPrediction => {
                let x0 = (mul_scalar(sample, a_t.sqrt())? - mul_scalar(eps, beta_t.sqrt())?)?;
                let e = (mul_scalar(eps, a_t.sqrt())? + mul_scalar(sample, beta_t.sqrt())?)?;
                (x0, e)
            }
        };
        let x0 = if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0.clamp(-r, r)?
        } else {
            x0
        };
        let prev =
            (mul_scalar(&x0, a_prev.sqrt())? + mul_scalar(&pred_eps, (1f32 - a_prev).sqrt())?)?;
        Ok(DdimStepOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        })
    }

    /// Exact inverse of [`step`](Self::step) on the same grid (Preset R): moves `sample` from
    /// level ā[t−r] (the final alpha when t−r < 0) up to ā[t], with the model output
    /// evaluated for timestep t. (Sample clipping, if configured, is not inverted.)
    pub fn inverse_step(
        &self,
        eps: &Tensor,
        t: usize,
        sample: &Tensor,
        num_inference_steps: usize,
    ) -> Result<Tensor> {
        let ratio = self.checked_ratio(num_inference_steps)?;
        let a_from = self.alpha(t as isize - ratio)?;
        let a_to = self.alpha(t as isize)?;
        match self.prediction {
            PredictionType::Epsilon => {
                let x0 = div_scalar(
                    &(sample - mul_scalar(eps, (1f32 - a_from).sqrt())?)?,
                    a_from.sqrt(),
                )?;
                mul_scalar(&x0, a_to.sqrt())? + mul_scalar(eps, (1f32 - a_to).sqrt())?
            }
            PredictionType::VPrediction => {
                // step: x_prev = c_x · x_t + c_v · v; solve for x_t.
                let (sa, sb) = (a_to.sqrt(), (1f32 - a_to).sqrt());
                let (sp, sq) = (a_from.sqrt(), (1f32 - a_from).sqrt());
                let c_x = sp * sa + sq * sb;
                let c_v = sq * sa - sp * sb;
                div_scalar(&(sample - mul_scalar(eps, c_v)?)?, c_x)
            }
        }
    }

    /// The inverse step shipped with pix2pix-zero / MirrorDiffusion (`DDIMInverseScheduler`,
    /// Preset F): from ā[t−1] to ā[t−1+r], note the `− 1` in both indices. ε-prediction only.
    pub fn authors_inverse_step(
        &self,
        eps: &Tensor,
        t: usize,
        sample: &Tensor,
        num_inference_steps: usize,
    ) -> Result<Tensor> {
        let ratio = self.checked_ratio(num_inference_steps)?;
        if self.prediction != PredictionType::Epsilon {
            candle_core::bail!("the authors' inverse DDIM step supports epsilon prediction only");
        }
        if t == 0 {
            candle_core::bail!("the authors' inverse DDIM step is undefined at timestep 0");
        }
        let a_t = self.alpha(t as isize - 1)?;
        let a_next = self.alpha(t as isize + ratio - 1)?;
        let x0 = div_scalar(
            &(sample - mul_scalar(eps, (1f32 - a_t).sqrt())?)?,
            a_t.sqrt(),
        )?;
        mul_scalar(&x0, a_next.sqrt())? + mul_scalar(eps, (1f32 - a_next).sqrt())?
    }

    /// Timesteps of the authors' inversion loop, `timesteps.flip(0)[1:-1]`: ascending, N − 2
    /// entries (17 … 929 for N = 60).
    pub fn authors_inversion_timesteps(&self, num_inference_steps: usize) -> Vec<usize> {
        let mut ts = self.timesteps(num_inference_steps);
        ts.reverse();
        if ts.len() < 2 {
            return Vec::new();
        }
        ts[1..ts.len() - 1].to_vec()
    }
}
