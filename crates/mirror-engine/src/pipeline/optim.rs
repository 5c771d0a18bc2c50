//! Adam on a single tensor, exactly as `torch.optim.Adam` (betas 0.9/0.999, eps 1e-8 outside
//! the square root, no weight decay), written with the same operation order.

use candle_core::{Result, Tensor};

/// Adam (β₁ 0.9, β₂ 0.999, ε 1e-8) on one tensor, with the first and second moments it keeps.
pub struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step: i32,
    m: Option<Tensor>,
    v: Option<Tensor>,
}

impl Adam {
    /// An optimiser with learning rate `lr` and no steps taken yet.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: None,
            v: None,
        }
    }

    /// Returns the updated parameter `p` given its gradient `g`.
    pub fn update(&mut self, p: &Tensor, g: &Tensor) -> Result<Tensor> {
        self.step += 1;
        let m = match &self.m {
            // torch: exp_avg.lerp_(g, 1 - b1)
            Some(m) => (m + ((g - m)? * (1.0 - self.beta1))?)?,
            None => (g * (1.0 - self.beta1))?,
        };
        let g2 = (g.sqr()? * (1.0 - self.beta2))?;
        let v = match &self.v {
            Some(v) => ((v * self.beta2)? + g2)?,
            None => g2,
        };
        let bias1 = 1.0 - self.beta1.powi(self.step);
        let bias2 = 1.0 - self.beta2.powi(self.step);
        let step_size = self.lr / bias1;
        let denom = ((v.sqrt()? / bias2.sqrt())? + self.eps)?;
        let updated = (p - (m.div(&denom)? * step_size)?)?;
        self.m = Some(m);
        self.v = Some(v);
        Ok(updated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two Adam steps by hand (f64) on a 2-element parameter.
    #[test]
    fn matches_the_adam_formula() -> Result<()> {
        let dev = Device::Cpu;
        let p0 = [1.0f64, -2.0];
        let grads = [[0.5f64, -0.1], [0.2, 0.3]];
        let mut adam = Adam::new(0.01);
        let mut p = Tensor::new(&p0, &dev)?;
        let (mut m, mut v, mut want) = ([0.0; 2], [0.0; 2], p0);
        for (t, g) in grads.iter().enumerate() {
            p = adam.update(&p, &Tensor::new(g, &dev)?)?;
            let t = (t + 1) as i32;
            for k in 0..2 {
                m[k] = 0.9 * m[k] + 0.1 * g[k];
                v[k] = 0.999 * v[k] + 0.001 * g[k] * g[k];
                let mh = m[k] / (1.0 - 0.9f64.powi(t));
                let denom = v[k].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8;
                want[k] -= 0.01 * mh / denom;
            }
        }
        let got = p.to_vec1::<f64>()?;
        for k in 0..2 {
            assert!((got[k] - want[k]).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        Ok(())
    }
}
