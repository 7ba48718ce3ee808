//! The full CALM graph on the reference executor: it runs, is deterministic for a seed, gives
//! finite outputs, every ablation runs, and its gradients agree with finite differences.

use std::collections::BTreeMap;

use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::FloatDType;
use calm_ir::{Bindings, Graph};
use calm_models::{build, CalmConfig, Mode};
use calm_passes::{ablate, Ablation};
use calm_runtime::host::{HostData, HostTensor, Summary};
use calm_runtime::inputs::random_inputs;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::{gradients, Reference};

fn exec() -> Reference<Flex> {
    Reference::new(FlexDevice, FloatDType::F64)
}

fn bind(batch: u64, tokens: u64) -> Bindings {
    Bindings::new().with("batch", batch).with("tokens", tokens)
}

fn run(g: &Graph, seed: u64, b: &Bindings) -> BTreeMap<String, HostTensor> {
    let params = ParamStore::init(g, seed);
    let inputs = random_inputs(g, b, seed).unwrap();
    exec().run(g, &params, &inputs).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_finite(outputs: &BTreeMap<String, HostTensor>, what: &str) {
    for (name, t) in outputs {
        let s = Summary::of(t);
        assert_eq!((s.nan, s.inf), (0, 0), "{what}: output `{name}` is not finite: {s:?}");
    }
}

#[test]
fn tiny_calm_runs_deterministically_with_finite_outputs() {
    let c = CalmConfig::preset("tiny").unwrap();
    for mode in [Mode::Inference, Mode::Training] {
        let g = build(&c, mode).unwrap();
        let b = bind(6, 7);
        let a = run(&g, 1, &b);
        assert_finite(&a, &format!("{mode:?}"));
        assert_eq!(a, run(&g, 1, &b), "{mode:?}: same seed, same outputs");
        assert_ne!(a, run(&g, 2, &b), "{mode:?}: another seed, other outputs");
        assert_eq!(a["logits"].shape, [6, 2]);
        if mode == Mode::Inference {
            // Assignments are distributions over K on real tokens and zero on padding.
            let inputs = random_inputs(&g, &b, 1).unwrap();
            let mask = inputs["mask"].data.to_f64();
            let assign = a["assign_e"].data.to_f64();
            for (t, row) in assign.chunks(3).enumerate() {
                let total: f64 = row.iter().sum();
                assert!((total - mask[t]).abs() < 1e-9, "token {t}: Σ_k A = {total}, mask {}", mask[t]);
            }
        } else {
            let loss = a["loss"].data.to_f64()[0];
            let terms = ["loss_ce", "loss_ce_rounds", "loss_con", "loss_lb", "loss_orth", "loss_ref"];
            let w = &c.loss_weights;
            let weights = [1.0, 1.0, w.contrastive, w.load_balance, w.orthogonality, w.reflection];
            let sum: f64 = terms.iter().zip(weights).map(|(t, w)| w * a[*t].data.to_f64()[0]).sum();
            assert!((loss - sum).abs() < 1e-9, "loss {loss} is the weighted sum of its terms {sum}");
            // f is a distribution over experts per dimension, and so is P.
            for stat in ["lb_fraction", "lb_prob"] {
                for row in a[stat].data.to_f64().chunks(c.experts as usize) {
                    assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{stat} rows sum to 1");
                }
            }
        }
    }
}

/// Weights fed once serve many runs with the outputs of feeding them every run; a graph whose
/// parameters were not loaded is an error naming the parameter.
#[test]
fn weights_loaded_once_give_the_outputs_of_every_run() {
    let c = CalmConfig::preset("tiny").unwrap();
    let g = build(&c, Mode::Inference).unwrap();
    let exec = Reference::<Flex>::new(FlexDevice, FloatDType::F32);
    let params = ParamStore::init(&g, 4);
    let loaded = exec.load(&g, &params).unwrap();
    for (seed, batch) in [(1, 3), (2, 5)] {
        let inputs = random_inputs(&g, &bind(batch, 6), seed).unwrap();
        assert_eq!(exec.run_loaded(&g, &loaded, &inputs).unwrap(), exec.run(&g, &params, &inputs).unwrap());
    }
    let other = build(&CalmConfig { experts: c.experts + 1, ..c.clone() }, Mode::Inference).unwrap();
    let with_new_params = exec.load(&g, &ParamStore::init(&g, 4)).unwrap();
    let inputs = random_inputs(&other, &bind(2, 3), 1).unwrap();
    let err = exec.run_loaded(&other, &with_new_params, &inputs).expect_err("other shapes").to_string();
    assert!(err.contains("calm/") && err.contains("loaded with shape"), "{err}");
    let mut fewer = g.clone();
    ablate(&mut fewer, Ablation::NoReflection).unwrap();
    let without_reflection = exec.load(&fewer, &params).unwrap();
    let inputs = random_inputs(&g, &bind(2, 3), 1).unwrap();
    let err = exec.run_loaded(&g, &without_reflection, &inputs).expect_err("missing weights").to_string();
    assert!(err.contains("calm/reflection") && err.contains("not among the loaded weights"), "{err}");
    let in_f64 = Reference::<Flex>::new(FlexDevice, FloatDType::F64);
    let err = in_f64.run_loaded(&g, &loaded, &inputs).expect_err("another float type").to_string();
    assert!(err.contains("loaded in F32") && err.contains("F64"), "{err}");
}

#[test]
fn paper_preset_runs_at_small_batch() {
    let c = CalmConfig::preset("paper").unwrap();
    for mode in [Mode::Inference, Mode::Training] {
        let g = build(&c, mode).unwrap();
        let out = run(&g, 3, &bind(3, 5));
        assert_finite(&out, &format!("paper {mode:?}"));
        assert_eq!(out["logits"].shape, [3, 2]);
    }
}

#[test]
fn every_ablated_graph_runs() {
    let c = CalmConfig::preset("tiny").unwrap();
    for mode in [Mode::Inference, Mode::Training] {
        let full = build(&c, mode).unwrap();
        for a in Ablation::ALL {
            let mut g = full.clone();
            if ablate(&mut g, a).is_err() {
                assert!(mode == Mode::Inference && a.training_only(), "{} applies to {mode:?}", a.name());
                continue;
            }
            assert_finite(&run(&g, 5, &bind(4, 6)), a.name());
        }
    }
}

/// Central differences in f64 against autodiff, on a tiny training graph without dropout (the
/// Gumbel noise is fixed by the seed input).
#[test]
fn gradients_agree_with_finite_differences() {
    let c = CalmConfig { dropout: 0.0, ..CalmConfig::preset("tiny").unwrap() };
    let g = build(&c, Mode::Training).unwrap();
    let mut params = ParamStore::init(&g, 9);
    let inputs = random_inputs(&g, &bind(5, 4), 9).unwrap();
    let grads = gradients::<Flex>(FlexDevice, FloatDType::F64, &g, &params, &inputs, "loss", false).unwrap();
    let forward = exec().run(&g, &params, &inputs).unwrap();
    assert!((forward["loss"].data.to_f64()[0] - grads.loss).abs() < 1e-12, "autodiff runs the same forward pass");
    assert_eq!(grads.grads.len(), params.len());

    let loss_at = |p: &ParamStore| exec().run(&g, p, &inputs).unwrap()["loss"].data.to_f64()[0];
    let names: Vec<String> = params.iter().map(|(n, _)| n.to_string()).collect();
    let mut checked = 0;
    let mut nonzero = 0;
    for (k, name) in names.iter().enumerate() {
        let values = params.get(name).unwrap().to_f32().unwrap();
        let HostData::F64(grad) = &grads.grads[name].data else { panic!("f64 gradients") };
        // Two entries per parameter, spread over the tensor.
        for j in [k % values.len(), (values.len() * 2 / 3 + k) % values.len()] {
            // The store holds f32; perturb by an f32-representable step.
            let h = 1.0 / 1024.0;
            let mut plus = values.clone();
            plus[j] += h as f32;
            let mut minus = values.clone();
            minus[j] -= h as f32;
            params.set(name, plus);
            let lp = loss_at(&params);
            params.set(name, minus);
            let lm = loss_at(&params);
            params.set(name, values.clone());
            // The actual step, after rounding to f32.
            let numeric = (lp - lm) / ((values[j] + h as f32) as f64 - (values[j] - h as f32) as f64);
            let analytic = grad[j];
            let err = (numeric - analytic).abs();
            assert!(
                err <= 1e-8 + 1e-4 * analytic.abs(),
                "{name}[{j}]: autodiff {analytic:.9}, finite difference {numeric:.9}"
            );
            checked += 1;
            nonzero += usize::from(analytic.abs() > 1e-8);
        }
    }
    assert!(checked >= 2 * names.len() && nonzero > checked / 2, "{nonzero} of {checked} gradients are non-zero");
    // Softmax is invariant to a shift per query, so attention key biases get no gradient: a
    // check that autodiff computes the mathematics, not just numbers of the right size.
    for (name, grad) in grads.grads.iter().filter(|(n, _)| n.ends_with("/key/bias")) {
        assert!(grad.data.to_f64().iter().all(|x| x.abs() < 1e-12), "`{name}`: {:?}", grad.data);
    }
}
