//! Benchmarks measured side by side in one run on one device (`calm bench`): the device's
//! ceilings, calm's GEMM against Burn's on the same device and on the CPU, and the CALM head
//! forward fused, unfused, through Burn's fusion engine and on Burn Flex.
//!
//! Times are host-clock medians over `iters` runs after a warm-up, each run ended by a device
//! synchronisation, so they include launch overheads but not compilation.

use std::collections::BTreeMap;
use std::time::Duration;

use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, FloatDType, Tensor};
use calm_ir::{nn, shape, Bindings, DType, Graph, GraphBuilder};
use calm_passes::compile::compile;
use calm_passes::lower::LowerOptions;
use cubecl::prelude::*;

use crate::device::DeviceExecutor;
use crate::host::HostTensor;
use crate::inputs::random_inputs;
use crate::params::ParamStore;
use crate::profile::peaks::{median, sync};
use crate::reference::Reference;

/// One measured line of a benchmark table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measurement {
    pub name: String,
    pub seconds: f64,
    pub flops: f64,
    pub bytes: f64,
}

impl Measurement {
    pub fn gflops(&self) -> f64 {
        self.flops / self.seconds / 1e9
    }
}

/// `relu(x Wᵀ + b)` with `x: m × k`, `W: n × k`, as a graph.
fn linear_relu(m: u64, k: u64, n: u64) -> Graph {
    let mut b = GraphBuilder::new("bench");
    let x = b.input("x", DType::F32, shape![m, k]).expect("input");
    let y = nn::linear(&mut b, "lin", x, n).expect("linear");
    let y = b.relu(y).expect("relu");
    b.output("y", y);
    b.finish().expect("a valid graph")
}

/// calm's compiled plan for `g` (fusion passes on or off) on the device: the host-clock median
/// of enqueueing all its launches and waiting for the device, and the number of launches.
pub fn calm_forward<R: Runtime>(
    client: &ComputeClient<R>,
    g: &Graph,
    bindings: &Bindings,
    fuse: bool,
    opts: &LowerOptions,
    iters: usize,
) -> (Duration, usize) {
    let calm_passes::compile::Compiled { plan, .. } =
        compile(g, bindings, fuse, opts).expect("the benchmark graphs compile");
    let launches = plan.launches.len();
    let mut exec = DeviceExecutor::<R, f32>::new(client.clone(), plan);
    let params = ParamStore::init(g, 1);
    exec.load_params(&params).expect("weights fit");
    let inputs = random_inputs(g, bindings, 1).expect("bound");
    exec.run(&inputs).expect("runs");
    let t = median(iters, || {
        exec.launch_all();
        sync(client);
    });
    (t, launches)
}

/// The GEMM benchmark: calm's fused linear + ReLU against Burn's on wgpu (with its fusion) and
/// on Flex, all `m × k` by `k × n` in f32.
pub fn gemm<R: Runtime>(client: &ComputeClient<R>, m: u64, k: u64, n: u64, iters: usize) -> Vec<Measurement> {
    let flops = 2.0 * (m * k * n) as f64;
    let bytes = 4.0 * (m * k + k * n + m * n) as f64;
    let measure = |name: &str, t: Duration| Measurement { name: name.into(), seconds: t.as_secs_f64(), flops, bytes };
    let (t, _) = calm_forward(client, &linear_relu(m, k, n), &Bindings::new(), true, &LowerOptions::default(), iters);
    let mut out = vec![measure("calm (fused matmul + bias + relu)", t)];
    out.push(measure("burn wgpu (fusion)", burn_linear_relu::<Wgpu>(&WgpuDevice::default(), m, k, n, iters)));
    out.push(measure("burn flex (cpu)", burn_linear_relu::<Flex>(&FlexDevice, m, k, n, iters)));
    out
}

fn burn_linear_relu<B: Backend>(device: &B::Device, m: u64, k: u64, n: u64, iters: usize) -> Duration {
    let (m, k, n) = (m as usize, k as usize, n as usize);
    let x = Tensor::<B, 2>::random([m, k], Distribution::Default, device);
    let w = Tensor::<B, 2>::random([n, k], Distribution::Default, device);
    let b = Tensor::<B, 1>::random([n], Distribution::Default, device);
    median(iters, || {
        let y = relu(x.clone().matmul(w.clone().transpose()) + b.clone().unsqueeze::<2>());
        // Keep the result alive until the device has finished.
        B::sync(device).expect("device sync");
        drop(y);
    })
}

/// A whole forward of one executor, timed on the host clock: a row of the peers' table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Forward {
    pub name: String,
    pub seconds: f64,
    /// How many kernel launches (calm's device plan) or graph ops (executors that run the
    /// graph op by op) one forward takes; `unit` says which.
    pub count: usize,
    pub unit: &'static str,
}

/// The CALM head's inference forward (`g`) at `bindings`, side by side: calm's plan fused and
/// unfused on `client` (lowered with `lower`), the reference executor op by op on Burn's wgpu
/// backend (its fusion engine) and on Burn Flex (CPU, f32), and calm's reference executor on
/// Flex with routed experts, as `calm eval` runs it.
pub fn head<R: Runtime>(
    client: &ComputeClient<R>,
    g: &Graph,
    bindings: &Bindings,
    lower: &LowerOptions,
    iters: usize,
) -> Vec<Forward> {
    let row =
        |name: &str, t: Duration, count, unit| Forward { name: name.into(), seconds: t.as_secs_f64(), count, unit };
    let (fused, fused_launches) = calm_forward(client, g, bindings, true, lower, iters);
    let (unfused, unfused_launches) = calm_forward(client, g, bindings, false, lower, iters);
    let (burn_wgpu, burn_flex) = burn_forwards(g, bindings, iters);
    let (reference, reference_ops) = reference_forward(g, bindings, iters);
    let ops = g.nodes.len();
    vec![
        row("calm fused", fused, fused_launches, "launches"),
        row("calm unfused", unfused, unfused_launches, "launches"),
        row("burn wgpu (fusion), op by op", burn_wgpu, ops, "ops"),
        row("burn flex (cpu), op by op", burn_flex, ops, "ops"),
        row("calm reference on flex (cpu), routed", reference, reference_ops, "ops"),
    ]
}

/// calm's reference executor on Burn Flex (CPU, f32) on `g` after
/// [`calm_passes::compile::reference_passes`], as `calm eval` and `calm train` run it: only the
/// routed experts are computed, and the weights are fed once ([`Reference::load`]), as calm's
/// device plan loads them once. Host-clock median over at most 3 runs after one warm-up (the
/// first run faults in the pages of its temporaries); also the routed graph's node count.
pub fn reference_forward(g: &Graph, bindings: &Bindings, iters: usize) -> (Duration, usize) {
    let routed = calm_passes::compile::for_reference(g).expect("the passes apply");
    let inputs: BTreeMap<String, HostTensor> = random_inputs(g, bindings, 1).expect("bound");
    let on_flex = Reference::<Flex>::new(FlexDevice, FloatDType::F32);
    let params = on_flex.load(&routed, &ParamStore::init(g, 1)).expect("the weights fit the graph");
    on_flex.run_loaded(&routed, &params, &inputs).expect("runs");
    let t = median(iters.min(3), || {
        on_flex.run_loaded(&routed, &params, &inputs).expect("runs");
    });
    (t, routed.nodes.len())
}

/// The reference executor's forward of `g` on Burn's wgpu backend (its fusion engine, same
/// Vulkan device) and on Burn Flex (CPU, f32): host-clock medians, Flex over at most 3 runs.
pub fn burn_forwards(g: &Graph, bindings: &Bindings, iters: usize) -> (Duration, Duration) {
    let params = ParamStore::init(g, 1);
    let inputs: BTreeMap<String, HostTensor> = random_inputs(g, bindings, 1).expect("bound");
    let on_wgpu = Reference::<Wgpu>::new(WgpuDevice::default(), FloatDType::F32);
    let burn_wgpu = median(iters, || {
        on_wgpu.run(g, &params, &inputs).expect("runs");
    });
    let on_flex = Reference::<Flex>::new(FlexDevice, FloatDType::F32);
    let burn_flex = median(iters.min(3), || {
        on_flex.run(g, &params, &inputs).expect("runs");
    });
    (burn_wgpu, burn_flex)
}
