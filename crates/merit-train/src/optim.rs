//! AdamW (bias-corrected, decoupled weight decay, as `torch.optim.AdamW`),
//! gradient clipping by global norm, and learning-rate schedules.

use candle_core::{Tensor, Var};

type CResult<T> = candle_core::Result<T>;

/// The learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Constant,
    Linear,
    Cosine,
}

impl std::str::FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Scheduler::Constant),
            "linear" => Ok(Scheduler::Linear),
            "cosine" => Ok(Scheduler::Cosine),
            other => Err(format!("scheduler `{other}` is not one of constant, linear, cosine")),
        }
    }
}

/// The learning rate at optimizer step `step` (0-based) of `total`, with
/// `warmup` steps of linear warmup first (as transformers' schedules).
pub fn learning_rate(base: f64, scheduler: Scheduler, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match scheduler {
        Scheduler::Constant => base,
        Scheduler::Linear => base * (1.0 - progress),
        Scheduler::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// AdamW moments for a list of variables.
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken (for bias correction).
    pub t: u64,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: &[Var], weight_decay: f64) -> CResult<AdamW> {
        let zeros = |v: &Var| v.zeros_like();
        Ok(AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
            m: vars.iter().map(zeros).collect::<CResult<_>>()?,
            v: vars.iter().map(zeros).collect::<CResult<_>>()?,
        })
    }

    /// One update with gradients `grads` (same order as the variables).
    pub fn step(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> CResult<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let mut p = var.as_tensor().clone();
            if self.weight_decay != 0.0 {
                p = (p * (1.0 - lr * self.weight_decay))?;
            }
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let update = ((&m / bc1)? / denom)?;
            var.set(&(p - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// The global L2 norm of `grads`; scales them down to `max_norm` when above
/// it (as `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> CResult<f64> {
    let mut total = 0f64;
    for g in grads.iter() {
        total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    /// One AdamW step against the formula worked by hand (torch's numbers).
    #[test]
    fn adamw_matches_torch_first_step() {
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(std::slice::from_ref(&var), 0.1).unwrap();
        let g = Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap();
        opt.step(std::slice::from_ref(&var), &[g], 0.01).unwrap();
        // First step: m̂ = g, v̂ = g², update = g/|g| = sign(g) (eps aside);
        // p ← p(1 − lr·wd) − lr·sign(g).
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) - 0.01];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b as f32).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let v = g[0].to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5, "{v:?}");
    }

    proptest! {
        /// Schedules: warmup rises to the base rate, nothing exceeds it or goes negative,
        /// linear and cosine end at zero, constant stays.
        #[test]
        fn schedules_stay_in_range(total in 1usize..500, warmup_frac in 0.0f64..0.5, base in 1e-6f64..1.0) {
            let warmup = (total as f64 * warmup_frac) as usize;
            for s in [Scheduler::Constant, Scheduler::Linear, Scheduler::Cosine] {
                for step in 0..total {
                    let lr = learning_rate(base, s, step, total, warmup);
                    prop_assert!(lr >= 0.0 && lr <= base * (1.0 + 1e-12));
                    if step + 1 == warmup {
                        prop_assert!((lr - base).abs() < 1e-12);
                    }
                }
                let end = learning_rate(base, s, total, total, warmup);
                if s == Scheduler::Constant { prop_assert!((end - base).abs() < 1e-12) } else { prop_assert!(end.abs() < 1e-9) }
            }
        }
    }
}
