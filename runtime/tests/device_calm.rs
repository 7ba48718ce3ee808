//! The whole CALM graph, its training graph and every ablation compiled to kernel plans and run
//! on the device (Vulkan; lavapipe here) match the reference executor, and two runs agree.

use std::collections::BTreeMap;

use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::FloatDType;
use calm_ir::{Bindings, Graph};
use calm_models::{build, CalmConfig, Mode};
use calm_passes::ablate::{ablate, Ablation};
use calm_passes::compile::fusion_passes;
use calm_passes::lower::{lower, LowerOptions};
use calm_passes::Pipeline;
use calm_runtime::device::DeviceExecutor;
use calm_runtime::host::HostTensor;
use calm_runtime::inputs::random_inputs;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::Reference;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use cubecl::Runtime;

/// Largest error of each output relative to its largest magnitude.
fn errors(want: &BTreeMap<String, HostTensor>, got: &BTreeMap<String, HostTensor>) -> BTreeMap<String, f64> {
    want.iter()
        .map(|(name, w)| {
            let (w, g) = (w.data.to_f64(), got[name].data.to_f64());
            let scale = w.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
            let worst = w.iter().zip(&g).map(|(a, b)| (a - b).abs() / scale).fold(0.0, f64::max);
            (name.clone(), worst)
        })
        .collect()
}

fn executor(g: &Graph, params: &ParamStore, bindings: &Bindings) -> DeviceExecutor<WgpuRuntime, f32> {
    let plan = lower(g, bindings, &LowerOptions::default()).unwrap();
    let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(WgpuRuntime::client(&WgpuDevice::default()), plan);
    exec.poison();
    exec.load_params(params).unwrap();
    exec
}

/// Runs `g` on the device twice and on the reference: the runs agree bit for bit and match.
fn check(g: &Graph, bindings: &Bindings, what: &str) {
    let params = ParamStore::init(g, 11);
    let feeds = random_inputs(g, bindings, 11).unwrap();
    let want = Reference::<Flex>::new(FlexDevice, FloatDType::F64).run(g, &params, &feeds).unwrap();
    let mut exec = executor(g, &params, bindings);
    let got = exec.run(&feeds).unwrap();
    assert_eq!(exec.run(&feeds).unwrap(), got, "{what}: two runs, same bits");
    for (name, err) in errors(&want, &got) {
        assert!(err < 1e-4, "{what}: output `{name}` differs by {err:.2e} relative");
    }
}

#[test]
fn tiny_calm_and_every_ablation_match_the_reference() {
    let c = CalmConfig::preset("tiny").unwrap();
    let b = Bindings::new().with("batch", 5).with("tokens", 9);
    for mode in [Mode::Inference, Mode::Training] {
        let g = build(&c, mode).unwrap();
        check(&g, &b, &format!("tiny {mode:?}"));
        for a in Ablation::ALL {
            let mut h = g.clone();
            if ablate(&mut h, a).is_ok() {
                check(&h, &b, &format!("tiny {mode:?} {}", a.name()));
            }
        }
    }
}

/// `g` through every fusion pass, as `calm compile` and `calm run` compile it.
fn fused(g: &Graph) -> Graph {
    let mut f = g.clone();
    Pipeline::new(fusion_passes()).run(&mut f).unwrap();
    f
}

#[test]
fn paper_preset_matches_at_small_batch() {
    let c = CalmConfig::preset("paper").unwrap();
    let b = Bindings::new().with("batch", 3).with("tokens", 7);
    let g = build(&c, Mode::Inference).unwrap();
    check(&g, &b, "paper inference");
    // Fused, with the sparse experts: the reference runs the fused ops as their primitives.
    check(&fused(&g), &b, "paper inference, fused");
}

#[test]
fn half_precision_buffers_stay_close_to_the_reference() {
    use calm_passes::plan::FloatType;
    let g = build(&CalmConfig::preset("tiny").unwrap(), Mode::Inference).unwrap();
    let b = Bindings::new().with("batch", 4).with("tokens", 9);
    let params = ParamStore::init(&g, 11);
    let feeds = random_inputs(&g, &b, 11).unwrap();
    let want = Reference::<Flex>::new(FlexDevice, FloatDType::F64).run(&g, &params, &feeds).unwrap();
    let opts = LowerOptions { float: FloatType::F16, ..LowerOptions::default() };
    for (what, graph) in [("unfused", g.clone()), ("fused", fused(&g))] {
        let plan = lower(&graph, &b, &opts).unwrap();
        let client = WgpuRuntime::client(&WgpuDevice::default());
        let mut exec = DeviceExecutor::<WgpuRuntime, half::f16>::new(client, plan);
        exec.poison();
        exec.load_params(&params).unwrap();
        let got = exec.run(&feeds).unwrap();
        for (name, err) in errors(&want, &got) {
            // f16 keeps 11 significant bits: about 5e-4 per rounding, a few roundings deep.
            assert!(err < 1e-2, "f16 {what}: output `{name}` differs by {err:.2e} relative");
        }
    }
}
