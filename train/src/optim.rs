//! AdamW (decoupled weight decay) over a parameter store, and the spec's learning-rate
//! schedule: linear warm-up over the first share of the steps, then linear decay to 0.

use std::collections::BTreeMap;

use calm_runtime::host::HostTensor;
use calm_runtime::params::ParamStore;

/// The spec's schedule: `lr · (s+1)/W` for the first `W = ⌈warmup·S⌉` steps, then
/// `lr · (S − s)/(S − W)`, reaching 0 after the last step.
pub fn learning_rate(base: f64, warmup_fraction: f64, step: u64, total: u64) -> f64 {
    let warm = (warmup_fraction * total as f64).ceil() as u64;
    if step < warm {
        base * (step + 1) as f64 / warm as f64
    } else if total > warm {
        base * total.saturating_sub(step) as f64 / (total - warm) as f64
    } else {
        base
    }
}

/// AdamW's moments, by parameter name, and the number of updates made.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub steps: u64,
    pub m: BTreeMap<String, Vec<f32>>,
    pub v: BTreeMap<String, Vec<f32>>,
}

impl AdamW {
    pub fn new(weight_decay: f64) -> Self {
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, steps: 0, m: BTreeMap::new(), v: BTreeMap::new() }
    }

    /// One update of every parameter that has a gradient, at learning rate `lr`. Weight decay
    /// applies to matrices and embedding tables (rank ≥ 2), not to biases or norm scales, as is
    /// usual for transformers.
    pub fn step(&mut self, params: &mut ParamStore, grads: &BTreeMap<String, HostTensor>, lr: f64) {
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (name, g) in grads {
            let Some(p) = params.get(name) else { continue };
            let decay = if p.shape.len() >= 2 { self.weight_decay } else { 0.0 };
            let mut w = p.to_f32().expect("parameters are floats");
            let g = g.to_f32().expect("gradients are floats");
            let m = self.m.entry(name.clone()).or_insert_with(|| vec![0.0; w.len()]);
            let v = self.v.entry(name.clone()).or_insert_with(|| vec![0.0; w.len()]);
            for i in 0..w.len() {
                let gi = g[i] as f64;
                let mi = b1 * m[i] as f64 + (1.0 - b1) * gi;
                let vi = b2 * v[i] as f64 + (1.0 - b2) * gi * gi;
                m[i] = mi as f32;
                v[i] = vi as f32;
                let update = (mi / c1) / ((vi / c2).sqrt() + self.eps) + decay * w[i] as f64;
                w[i] = (w[i] as f64 - lr * update) as f32;
            }
            params.set(name, w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let lr = |s| learning_rate(1.0, 0.1, s, 100);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(55) - 0.5).abs() < 1e-12);
        assert_eq!(lr(100), 0.0);
        assert_eq!(learning_rate(2.0, 0.0, 0, 4), 2.0);
    }

    #[test]
    fn first_adamw_step_moves_each_weight_by_lr_against_its_gradient() {
        let g = calm_ir::sample::tiny_classifier();
        let mut params = ParamStore::init(&g, 1);
        let (name, before) =
            params.iter().find(|(_, t)| t.shape.len() == 2).map(|(n, t)| (n.to_string(), t.clone())).unwrap();
        let grad: Vec<f32> = (0..before.numel()).map(|i| if i % 2 == 0 { 0.5 } else { -2.0 }).collect();
        let grads = BTreeMap::from([(name.clone(), HostTensor::f32(before.shape.clone(), grad.clone()))]);
        let mut opt = AdamW::new(0.0);
        opt.step(&mut params, &grads, 0.01);
        // Bias-corrected Adam's first step is lr · sign(g) (up to eps).
        let after = params.get(&name).unwrap().to_f32().unwrap();
        for ((a, b), g) in after.iter().zip(before.to_f32().unwrap()).zip(grad) {
            assert!((a - (b - 0.01 * g.signum())).abs() < 1e-6);
        }
        // Decoupled decay shrinks matrices even without gradient signal in the moments' sign.
        let mut decayed = AdamW::new(0.5);
        let mut p2 = ParamStore::init(&g, 1);
        let zero = BTreeMap::from([(name.clone(), HostTensor::f32(before.shape.clone(), vec![0.0; before.numel()]))]);
        decayed.step(&mut p2, &zero, 0.1);
        let w0 = before.to_f32().unwrap()[0];
        assert!((p2.get(&name).unwrap().to_f32().unwrap()[0] - w0 * 0.95).abs() < 1e-6);
    }
}
