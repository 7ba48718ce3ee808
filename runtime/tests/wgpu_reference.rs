//! The reference executor on Burn's Wgpu backend (Vulkan; lavapipe on CPU-only machines)
//! computes what it computes on Flex, to f32 precision.

use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::tensor::FloatDType;
use calm_ir::Bindings;
use calm_models::{build, CalmConfig, Mode};
use calm_runtime::inputs::random_inputs;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::Reference;

#[test]
fn wgpu_matches_flex() {
    let g = build(&CalmConfig::preset("tiny").unwrap(), Mode::Training).unwrap();
    let params = ParamStore::init(&g, 4);
    let inputs = random_inputs(&g, &Bindings::new().with("batch", 5).with("tokens", 9), 4).unwrap();
    let cpu = Reference::<Flex>::new(FlexDevice, FloatDType::F64).run(&g, &params, &inputs).unwrap();
    let gpu = Reference::<Wgpu>::new(WgpuDevice::default(), FloatDType::F32).run(&g, &params, &inputs).unwrap();
    for (name, want) in &cpu {
        let (w, got) = (want.data.to_f64(), gpu[name].data.to_f64());
        let worst = w.iter().zip(&got).map(|(a, b)| (a - b).abs() / (1e-3 + a.abs())).fold(0.0, f64::max);
        eprintln!("{name}: worst relative error {worst:.2e}");
        assert!(worst < 1e-3, "{name}: {worst}");
    }
}
