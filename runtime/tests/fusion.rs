//! The fusion passes on CALM graphs: the fused graph verifies, computes on the reference exactly
//! what the unfused graph does, runs on the device within f32 of it, and needs fewer launches.

use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::FloatDType;
use calm_ir::{verify, Bindings, Graph, Op};
use calm_models::{build, CalmConfig, Mode};
use calm_passes::ablate::{ablate, Ablation};
use calm_passes::compile::fusion_passes;
use calm_passes::lower::{lower, LowerOptions};
use calm_passes::Pipeline;
use calm_runtime::device::DeviceExecutor;
use calm_runtime::inputs::random_inputs;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::Reference;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use cubecl::Runtime;

/// The graph through every fusion pass, as `calm compile` runs them.
fn fused(g: &Graph) -> Graph {
    let mut f = g.clone();
    Pipeline::new(fusion_passes()).run(&mut f).unwrap();
    verify(&f).unwrap();
    f
}

fn launches(g: &Graph, b: &Bindings) -> usize {
    lower(g, b, &LowerOptions::default()).unwrap().launches.len()
}

#[test]
fn fused_calm_graphs_compute_what_the_primitives_compute() {
    let c = CalmConfig::preset("tiny").unwrap();
    let b = Bindings::new().with("batch", 5).with("tokens", 9);
    let reference = Reference::<Flex>::new(FlexDevice, FloatDType::F64);
    for mode in [Mode::Inference, Mode::Training] {
        let full = build(&c, mode).unwrap();
        for variant in [None].into_iter().chain(Ablation::ALL.map(Some)) {
            let mut g = full.clone();
            if let Some(a) = variant {
                if ablate(&mut g, a).is_err() {
                    continue;
                }
            }
            let f = fused(&g);
            assert!(f.nodes.values().any(|n| matches!(n.op, Op::Fused(_))), "something fused");
            assert!(launches(&f, &b) < launches(&g, &b));
            let params = ParamStore::init(&g, 5);
            let feeds = random_inputs(&g, &b, 5).unwrap();
            let want = reference.run(&g, &params, &feeds).unwrap();
            let got = reference.run(&f, &params, &feeds).unwrap();
            for (name, w) in &want {
                let (w, gv) = (w.data.to_f64(), got[name].data.to_f64());
                let same = w.iter().zip(&gv).all(|(a, b)| a == b || (a - b).abs() <= 1e-12 * (1.0 + a.abs()));
                assert!(same, "{mode:?} {variant:?}: `{name}` changed by fusion");
            }
            // And on the device.
            let plan = lower(&f, &b, &LowerOptions::default()).unwrap();
            let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(WgpuRuntime::client(&WgpuDevice::default()), plan);
            exec.poison();
            exec.load_params(&params).unwrap();
            let dev = exec.run(&feeds).unwrap();
            for (name, w) in &want {
                let (w, d) = (w.data.to_f64(), dev[name].data.to_f64());
                let scale = w.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
                let err = w.iter().zip(&d).map(|(a, b)| (a - b).abs() / scale).fold(0.0, f64::max);
                assert!(err < 1e-4, "{mode:?} {variant:?}: `{name}` on the device differs by {err:.2e}");
            }
        }
    }
}

#[test]
fn paper_head_launch_counts() {
    let b = Bindings::new().with("batch", 64).with("tokens", 128);
    let g = build(&CalmConfig::preset("paper").unwrap(), Mode::Inference).unwrap();
    let (before, after) = (launches(&g, &b), launches(&fused(&g), &b));
    eprintln!("paper inference: {before} launches unfused, {after} fused");
    assert!(after * 10 < before * 7, "{before} -> {after}");
}
