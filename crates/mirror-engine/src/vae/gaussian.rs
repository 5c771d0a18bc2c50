//! The VAE posterior N(mean, exp(logvar)) and its seeded sampling.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/autoencoders/vae.py (pinned).

use candle_core::{Result, Tensor};

use crate::rng::SplitMix64;

/// diffusers' `DiagonalGaussianDistribution`; `logvar` is already clamped to [−30, 20].
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// Mean of the latent, `[B, C, H, W]`.
    pub mean: Tensor,
    /// Log-variance of the latent, `[B, C, H, W]`.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits encoder moments [B, 2C, H, W] into mean and (clamped) log-variance.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let channels = moments.dim(1)? / 2;
        let mean = moments.narrow(1, 0, channels)?;
        let logvar = moments
            .narrow(1, channels, channels)?
            .clamp(-30f32, 20f32)?;
        Ok(Self { mean, logvar })
    }

    /// Standard deviation, `exp(logvar / 2)`.
    pub fn std(&self) -> Result<Tensor> {
        (&self.logvar * 0.5)?.exp()
    }

    /// mean + std · n with n ~ N(0, 1) from a seeded generator computed on the host in f64,
    /// so a seed gives the same sample on every device.
    pub fn sample(&self, seed: u64) -> Result<Tensor> {
        let noise = standard_normal(seed, self.mean.elem_count());
        let noise = Tensor::from_vec(noise, self.mean.shape(), self.mean.device())?
            .to_dtype(self.mean.dtype())?;
        &self.mean + self.std()?.mul(&noise)?
    }
}

/// `count` standard normal values (Box-Muller in f64, rounded to f32 at the end).
pub fn standard_normal(seed: u64, count: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(count + 1);
    while out.len() < count {
        let radius = (-2.0 * rng.next_open_unit().ln()).sqrt();
        let angle = std::f64::consts::TAU * rng.next_open_unit();
        out.push((radius * angle.cos()) as f32);
        out.push((radius * angle.sin()) as f32);
    }
    out.truncate(count);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_noise_is_seeded_and_standard() {
        let a = standard_normal(7, 20_001);
        assert_eq!(a, standard_normal(7, 20_001));
        assert_ne!(a[..10], standard_normal(8, 10)[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
    }
}
