//! AdamW (decoupled weight decay) over a parameter store, and the spec's learning-rate
//! schedule: linear warm-up over the first share of the steps, then linear decay to 0.

use std::collections::BTreeMap;

use calm_runtime::host::{HostData, HostTensor};
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
    ///
    /// In place and in f32 (as PyTorch's AdamW), on every core: at the paper preset this is
    /// 100 M weights, each read and written with its two moments, every step, so it is bound by
    /// memory bandwidth, and a copy of the weights or a single thread cost a fifth of the step.
    pub fn step(&mut self, params: &mut ParamStore, grads: &BTreeMap<String, HostTensor>, lr: f64) {
        self.steps += 1;
        let t = self.steps as i32;
        let k = Coefficients {
            b1: self.beta1 as f32,
            b2: self.beta2 as f32,
            // Bias corrections folded into the rate and the moments' scale.
            lr: (lr / (1.0 - self.beta1.powi(t))) as f32,
            v_scale: (1.0 / (1.0 - self.beta2.powi(t))) as f32,
            eps: self.eps as f32,
            decay: 0.0,
        };
        for (name, g) in grads {
            if params.get(name).is_some() {
                let n = g.numel();
                self.m.entry(name.clone()).or_insert_with(|| vec![0.0; n]);
                self.v.entry(name.clone()).or_insert_with(|| vec![0.0; n]);
            }
        }
        let narrowed: BTreeMap<&str, Vec<f32>> = grads
            .iter()
            .filter(|(_, g)| !matches!(g.data, HostData::F32(_)))
            .map(|(name, g)| (name.as_str(), g.to_f32().expect("gradients are floats")))
            .collect();
        let mut m: BTreeMap<&str, &mut Vec<f32>> = self.m.iter_mut().map(|(n, x)| (n.as_str(), x)).collect();
        let mut v: BTreeMap<&str, &mut Vec<f32>> = self.v.iter_mut().map(|(n, x)| (n.as_str(), x)).collect();
        let mut work = Vec::new();
        for (name, w) in params.values_mut() {
            let Some(grad) = grads.get(name) else { continue };
            let g: &[f32] = match &grad.data {
                HostData::F32(g) => g,
                _ => &narrowed[name],
            };
            assert_eq!(g.len(), w.len(), "the gradient of `{name}` has its parameter's size");
            let (m, v) = (m.remove(name).expect("made above"), v.remove(name).expect("made above"));
            let decay = if grad.shape.len() >= 2 { self.weight_decay } else { 0.0 };
            let k = Coefficients { decay: (lr * decay) as f32, ..k };
            // Pieces of at most CHUNK elements, so that all cores share even one large matrix.
            let pieces = w.chunks_mut(CHUNK).zip(g.chunks(CHUNK)).zip(m.chunks_mut(CHUNK)).zip(v.chunks_mut(CHUNK));
            work.extend(pieces.map(|(((w, g), m), v)| (w, g, m, v, k)));
        }
        calm_runtime::parallel::on_every_core(work, |(w, g, m, v, k)| k.update(w, g, m, v));
    }
}

/// Elements per piece of work of [`AdamW::step`].
const CHUNK: usize = 1 << 16;

/// One step's scalars of AdamW, bias corrections folded in.
#[derive(Clone, Copy, Debug)]
struct Coefficients {
    b1: f32,
    b2: f32,
    /// `lr / (1 − β₁ᵗ)`.
    lr: f32,
    /// `1 / (1 − β₂ᵗ)`.
    v_scale: f32,
    eps: f32,
    /// `lr · weight decay` for this parameter.
    decay: f32,
}

impl Coefficients {
    /// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
    /// `w ← w − lr·(m̂ / (√v̂ + ε)) − lr·λ·w`: one pass over the four arrays.
    fn update(&self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = self.b1 * *m + (1.0 - self.b1) * g;
            *v = self.b2 * *v + (1.0 - self.b2) * g * g;
            *w -= self.lr * *m / ((*v * self.v_scale).sqrt() + self.eps) + self.decay * *w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calm_ir::Init;

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

    /// The in-place, multi-threaded f32 update against AdamW written out in f64, element by
    /// element, over several steps: matrices larger than one piece of work (so pieces of one
    /// matrix go to different threads), vectors without decay, and a parameter with no gradient.
    #[test]
    fn adamw_matches_an_f64_reference_over_several_steps() {
        let mut b = calm_ir::GraphBuilder::new("params");
        let x = b.input("x", calm_ir::DType::F32, calm_ir::shape![]).unwrap();
        let mut total = x;
        let shapes = [
            ("big", calm_ir::shape![CHUNK + 77, 3usize]),
            ("vector", calm_ir::shape![130usize]),
            ("frozen_out", calm_ir::shape![5usize, 7usize]),
        ];
        for (name, shape) in shapes {
            let p = b.scoped("p", |b| b.param(name, shape, Init::Uniform { low: -1.0, high: 1.0 })).unwrap();
            let axes: Vec<isize> = (0..b.rank_of(p) as isize).collect();
            let s = b.reduce_sum(p, &axes, false).unwrap();
            total = b.add(total, s).unwrap();
        }
        b.output("y", total);
        let g = b.finish().unwrap();
        let mut params = ParamStore::init(&g, 3);
        let mut want: BTreeMap<String, Vec<f64>> =
            params.iter().map(|(n, t)| (n.to_string(), t.data.to_f64())).collect();
        let (mut m, mut v): (BTreeMap<String, Vec<f64>>, BTreeMap<String, Vec<f64>>) = Default::default();
        let mut opt = AdamW::new(0.1);
        for step in 1..=4 {
            let grads: BTreeMap<String, HostTensor> = params
                .iter()
                .filter(|(n, _)| !n.ends_with("frozen_out"))
                .map(|(n, t)| {
                    // Scrambled values in [-2, 2), different each step.
                    let g =
                        (0..t.numel()).map(|i| ((i as u64 * 2_654_435_761 + step * 977) % 4001) as f32 / 1000.0 - 2.0);
                    (n.to_string(), HostTensor::f32(t.shape.clone(), g.collect()))
                })
                .collect();
            let lr = 0.01 * step as f64;
            opt.step(&mut params, &grads, lr);
            for (name, grad) in &grads {
                let decay = if grad.shape.len() >= 2 { 0.1 } else { 0.0 };
                let w = want.get_mut(name).unwrap();
                let m = m.entry(name.clone()).or_insert_with(|| vec![0.0; w.len()]);
                let v = v.entry(name.clone()).or_insert_with(|| vec![0.0; w.len()]);
                for (i, g) in grad.data.to_f64().into_iter().enumerate() {
                    m[i] = 0.9 * m[i] + 0.1 * g;
                    v[i] = 0.999 * v[i] + 0.001 * g * g;
                    let (mh, vh) = (m[i] / (1.0 - 0.9f64.powi(step as i32)), v[i] / (1.0 - 0.999f64.powi(step as i32)));
                    w[i] -= lr * (mh / (vh.sqrt() + 1e-8) + decay * w[i]);
                }
            }
        }
        for (name, t) in params.iter() {
            let got = t.data.to_f64();
            let worst = got.iter().zip(&want[name]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-5, "`{name}` is off by {worst}");
        }
        let (frozen, kept) = params.iter().find(|(n, _)| n.ends_with("frozen_out")).unwrap();
        assert_eq!(kept, ParamStore::init(&g, 3).get(frozen).unwrap(), "no gradient, no update");
        assert_eq!(opt.m.len(), 2);
    }
}
