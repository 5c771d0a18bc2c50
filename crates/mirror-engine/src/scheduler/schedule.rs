//! The noise schedule ā[j] = Π_{m≤j} (1 − β_m), computed with torch's float32 arithmetic so
//! the values are the ones diffusers uses, plus an f64 copy.
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/schedulers/scheduling_ddim.py (pinned).

use super::config::DdimConfig;

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU, element for element.
///
/// torch computes the step in f32 and fills the first half forwards from `start` and the
/// second half backwards from `end`. Its CPU build contracts `start + step * i` into a fused
/// multiply-add (GCC's default), so that is done here too: with it, ā matches torch bit for bit.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![start as f32];
    }
    let (start, end) = (start as f32, end as f32);
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|idx| {
            if idx < halfway {
                step.mul_add(idx as f32, start)
            } else {
                (-step).mul_add((n - idx - 1) as f32, end)
            }
        })
        .collect()
}

/// `torch.linspace(..., dtype=float64)` (scalar rule; f64 needs no bit-exactness here).
fn linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                start + step * i as f64
            } else {
                end - step * (n - i - 1) as f64
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine ("squaredcos_cap_v2") alpha-bar, max β 0.999.
fn cosine_betas(n: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
        })
        .collect()
}

/// ā as diffusers computes it: betas in f32, then `torch.cumprod` (which accumulates in f64 on
/// the CPU and rounds each prefix to f32). The config must have been validated.
pub(crate) fn alphas_cumprod_f32(cfg: &DdimConfig) -> Vec<f32> {
    let n = cfg.num_train_timesteps;
    let betas: Vec<f32> = match (&cfg.trained_betas, cfg.beta_schedule.as_str()) {
        (Some(b), _) => b.iter().map(|&b| b as f32).collect(),
        (None, "scaled_linear") => {
            torch_linspace_f32(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
                .into_iter()
                .map(|x| x * x)
                .collect()
        }
        (None, "squaredcos_cap_v2") => cosine_betas(n).into_iter().map(|b| b as f32).collect(),
        (None, _) => torch_linspace_f32(cfg.beta_start, cfg.beta_end, n),
    };
    let mut acc = 1f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1f32 - b) as f64;
            acc as f32
        })
        .collect()
}

/// The same schedule in f64 throughout.
pub(crate) fn alphas_cumprod_f64(cfg: &DdimConfig) -> Vec<f64> {
    let n = cfg.num_train_timesteps;
    let betas: Vec<f64> = match (&cfg.trained_betas, cfg.beta_schedule.as_str()) {
        (Some(b), _) => b.clone(),
        (None, "scaled_linear") => linspace_f64(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
            .into_iter()
            .map(|x| x * x)
            .collect(),
        (None, "squaredcos_cap_v2") => cosine_betas(n),
        (None, _) => linspace_f64(cfg.beta_start, cfg.beta_end, n),
    };
    let mut acc = 1f64;
    betas
        .iter()
        .map(|&b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_hits_both_ends_and_is_monotone() {
        let v = torch_linspace_f32(0.1, 0.7, 7);
        assert_eq!(v[0], 0.1f32);
        assert_eq!(v[6], 0.7f32);
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(torch_linspace_f32(0.3, 0.9, 1), vec![0.3f32]);
    }

    #[test]
    fn schedule_matches_algorithm_table() {
        let cfg: DdimConfig = serde_json::from_str(
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#,
        )
        .unwrap();
        // docs/algorithm.md §2.1 (f64 values, 6 decimals).
        let a = alphas_cumprod_f64(&cfg);
        for (j, expected) in [
            (0, 0.999150),
            (21, 0.980381),
            (945, 0.008721),
            (999, 0.004660),
        ] {
            assert!((a[j] - expected).abs() < 1e-6, "ā[{j}] = {}", a[j]);
        }
        let a32 = alphas_cumprod_f32(&cfg);
        assert!(
            a32.iter()
                .zip(&a)
                .all(|(x, y)| (*x as f64 - y).abs() < 2e-6)
        );
    }
}
