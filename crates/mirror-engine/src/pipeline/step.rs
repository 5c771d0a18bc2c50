//! What one denoising step of any method returns: its branches in one shape, so that the
//! session records, previews and caches every method the same way.

use candle_core::Tensor;

use super::events::{GuidanceReport, RedescriptionReport};
use crate::branch::Branch;
use crate::nn::is_finite;
use crate::unet::AttentionMaps;
use crate::{EngineError, Result};

/// One branch after one step.
#[derive(Debug, Clone)]
pub struct BranchState {
    /// Which branch this is.
    pub branch: Branch,
    /// The branch latent after the step, [1, 4, h, w].
    pub latent: Tensor,
    /// The DDIM prediction of the clean latent at this step, [1, 4, h, w].
    pub predicted_x0: Tensor,
    /// The step's cross-attention maps of this branch, when there are any.
    pub maps: Option<AttentionMaps>,
}

/// The reconstruction and translation latents a two-branch method carries between steps.
#[derive(Debug, Clone)]
pub struct LatentPair {
    /// The reconstruction branch's latent, `[1, 4, h, w]`.
    pub reconstruction: Tensor,
    /// The translation branch's latent, `[1, 4, h, w]`.
    pub translation: Tensor,
}

impl LatentPair {
    /// Both branches start from the same noisy latent.
    pub fn start(latent: &Tensor) -> Self {
        Self {
            reconstruction: latent.clone(),
            translation: latent.clone(),
        }
    }
}

/// One denoising step of one method.
#[derive(Debug, Clone)]
pub struct MethodStep {
    /// The DDIM timestep of the step.
    pub timestep: usize,
    /// Reconstruction branch first, then translation.
    pub branches: Vec<BranchState>,
    /// The prompt redescription done at this step, if any.
    pub redescription: Option<RedescriptionReport>,
    /// The redescribed caption embedding C*_i (Mirror).
    pub embedding: Option<Tensor>,
    /// The attention guidance done at this step, if any.
    pub guidance: Option<GuidanceReport>,
    /// Edit-direction scale used at this step.
    pub edit_scale: Option<f64>,
    /// Per-step tensors under their `--dump` names (`method.what`).
    pub dump: Vec<(&'static str, Tensor)>,
}

impl MethodStep {
    /// A step with `branches` and nothing else recorded.
    pub fn new(timestep: usize, branches: Vec<BranchState>) -> Self {
        Self {
            timestep,
            branches,
            redescription: None,
            embedding: None,
            guidance: None,
            edit_scale: None,
            dump: Vec::new(),
        }
    }

    /// The state of `branch`, if the step has it.
    pub fn branch(&self, branch: Branch) -> Option<&BranchState> {
        self.branches.iter().find(|b| b.branch == branch)
    }

    /// The tensor dumped under `name` at this step.
    pub fn dumped(&self, name: &str) -> Option<&Tensor> {
        self.dump.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
    }

    /// `Err(StepNotFinite)` naming step `i` (0-based) of `steps` and the first branch whose
    /// latent holds NaN or infinity.
    pub fn ensure_finite(&self, i: usize, steps: usize) -> Result<()> {
        for b in &self.branches {
            if !is_finite(&b.latent)? {
                return Err(EngineError::StepNotFinite {
                    step: i + 1,
                    steps,
                    branch: b.branch,
                });
            }
        }
        Ok(())
    }
}
