//! Benchmarks measured side by side in one run on one device (`calm bench`): the device's
//! ceilings, calm's GEMM against Burn's on the same device and on the CPU, and the CALM head
//! forward fused, unfused, through Burn's fusion engine and on Burn Flex.
//!
//! Times are host-clock medians over `iters` runs after a warm-up, each run ended by a device
//! synchronisation, so they include launch overheads but not compilation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, FloatDType, Tensor};
use calm_ir::{nn, shape, Bindings, DType, Graph, GraphBuilder};
use calm_kernels::peak;
use calm_passes::compile::compile;
use calm_passes::lower::LowerOptions;
use cubecl::prelude::*;
use cubecl::wgpu::WgpuRuntime;

use crate::device::DeviceExecutor;
use crate::host::HostTensor;
use crate::inputs::random_inputs;
use crate::params::ParamStore;
use crate::reference::Reference;

/// The median of `iters` timed runs of `f` after one untimed run.
pub fn median(iters: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn sync(client: &ComputeClient<WgpuRuntime>) {
    cubecl::future::block_on(client.sync()).expect("device sync");
}

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

/// Peak FMA throughput (GFLOP/s) and copy bandwidth (GB/s) of the device.
pub fn device_peaks(client: &ComputeClient<WgpuRuntime>, iters: usize) -> (f64, f64) {
    let (width, threads, cubes, rounds) = (16usize, 64u32, 64u32, 4000u32);
    let out = client.empty(threads as usize * cubes as usize * width * 4);
    let t = median(iters, || {
        unsafe {
            peak::fma::launch_unchecked::<WgpuRuntime>(
                client,
                CubeCount::Static(cubes, 1, 1),
                CubeDim::new_1d(threads),
                width,
                ArrayArg::from_raw_parts(out.clone(), (threads * cubes) as usize),
                rounds,
            )
        };
        sync(client);
    });
    let flops = 16.0 * width as f64 * rounds as f64 * (threads * cubes) as f64;
    let n = 1usize << 24;
    let src = client.create_from_slice(f32::as_bytes(&vec![1.0f32; n]));
    let dst = client.empty(n * 4);
    let units = n / width;
    let copy_cubes = (units / 64) as u32;
    let tc = median(iters, || {
        unsafe {
            peak::copy::launch_unchecked::<WgpuRuntime>(
                client,
                CubeCount::Static(copy_cubes.min(65_535), copy_cubes.div_ceil(65_535), 1),
                CubeDim::new_1d(64),
                width,
                ArrayArg::from_raw_parts(src.clone(), units),
                ArrayArg::from_raw_parts(dst.clone(), units),
            )
        };
        sync(client);
    });
    (flops / t.as_secs_f64() / 1e9, (2 * n * 4) as f64 / tc.as_secs_f64() / 1e9)
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

/// calm's compiled plan for `g` on the device: the median time of its launches.
fn calm_forward(
    client: &ComputeClient<WgpuRuntime>,
    g: &Graph,
    bindings: &Bindings,
    fuse: bool,
    iters: usize,
) -> (Duration, usize) {
    let calm_passes::compile::Compiled { graph: compiled, plan, .. } =
        compile(g, bindings, fuse, &LowerOptions::default()).expect("the benchmark graphs compile");
    let launches = plan.launches.len();
    let types = compiled.outputs.iter().map(|o| compiled.value_type(o.value).dtype).collect();
    let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(client.clone(), plan, types);
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
pub fn gemm(client: &ComputeClient<WgpuRuntime>, m: u64, k: u64, n: u64, iters: usize) -> Vec<Measurement> {
    let flops = 2.0 * (m * k * n) as f64;
    let bytes = 4.0 * (m * k + k * n + m * n) as f64;
    let measure = |name: &str, t: Duration| Measurement { name: name.into(), seconds: t.as_secs_f64(), flops, bytes };
    let (t, _) = calm_forward(client, &linear_relu(m, k, n), &Bindings::new(), true, iters);
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

/// The CALM head's inference forward (`g`) at `bindings`: fused, unfused, the reference on
/// Burn's wgpu backend (its fusion engine), and on Burn Flex (CPU, f32).
pub fn head(
    client: &ComputeClient<WgpuRuntime>,
    g: &Graph,
    bindings: &Bindings,
    iters: usize,
) -> Vec<(String, Duration, usize)> {
    let (fused, fused_launches) = calm_forward(client, g, bindings, true, iters);
    let (unfused, unfused_launches) = calm_forward(client, g, bindings, false, iters);
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
    let ops = g.nodes.len();
    vec![
        ("calm fused".into(), fused, fused_launches),
        ("calm unfused".into(), unfused, unfused_launches),
        ("burn wgpu (fusion), op by op".into(), burn_wgpu, ops),
        ("burn flex (cpu), op by op".into(), burn_flex, ops),
    ]
}
