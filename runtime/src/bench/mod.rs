//! Benchmarks measured side by side in one run on one device (`calm bench`): the device's
//! ceilings, calm's GEMM against Burn's on the same device and on the CPU, and the CALM head
//! forward fused, unfused, through Burn's fusion engine (wgpu, and CUDA where a CUDA device
//! answers) and on Burn Flex.
//!
//! `cubek` holds the comparison with cubek-matmul on calm's own client.
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

pub mod cubek;

/// One measured line of a benchmark table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measurement {
    pub name: String,
    pub seconds: f64,
    pub flops: f64,
    pub bytes: f64,
    /// The largest relative error of sampled outputs against an f64 product, where checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error: Option<f64>,
}

impl Measurement {
    pub fn gflops(&self) -> f64 {
        self.flops / self.seconds / 1e9
    }
}

/// `relu(x Wᵀ + b)` with `x: m × k`, `W: n × k`, as a graph; or plain `x Wᵀ` (`epilogue`
/// false), the product cubek-matmul computes.
fn linear_relu(m: u64, k: u64, n: u64, epilogue: bool) -> Graph {
    let mut b = GraphBuilder::new("bench");
    let x = b.input("x", DType::F32, shape![m, k]).expect("input");
    let layer = nn::Linear::new(&mut b, "lin", k, n, epilogue).expect("linear");
    let mut y = b.scoped("lin", |b| layer.apply(b, x)).expect("linear");
    if epilogue {
        y = b.relu(y).expect("relu");
    }
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

/// The GEMM benchmark: calm's fused linear + ReLU and its plain matmul (lowered with `lower`)
/// against Burn's linear + ReLU on wgpu and, where CUDA answers, on CUDA (both with Burn's
/// fusion) and on Flex, and against every cubek-matmul strategy on `client` itself
/// ([`cubek::gemm`]), all `m × k` by `k × n` with f32 buffers. Also the lines of cubek
/// strategies that did not run, each with why.
pub fn gemm<R: Runtime>(
    client: &ComputeClient<R>,
    m: u64,
    k: u64,
    n: u64,
    lower: &LowerOptions,
    iters: usize,
) -> (Vec<Measurement>, Vec<String>) {
    let flops = 2.0 * (m * k * n) as f64;
    let bytes = 4.0 * (m * k + k * n + m * n) as f64;
    let measure = |name: &str, t: Duration| Measurement {
        name: name.into(),
        seconds: t.as_secs_f64(),
        flops,
        bytes,
        max_error: None,
    };
    let calm = |epilogue| calm_forward(client, &linear_relu(m, k, n, epilogue), &Bindings::new(), true, lower, iters).0;
    let mut out = vec![measure("calm (fused matmul + bias + relu)", calm(true)), measure(CALM_PLAIN, calm(false))];
    // A CUDA machine may have no Vulkan loader: then Burn wgpu's row is left out, with why.
    match crate::device::select::catch_device(|| burn_linear_relu::<Wgpu>(&WgpuDevice::default(), m, k, n, iters)) {
        Ok(t) => out.push(measure("burn wgpu (fusion)", t)),
        Err(why) => eprintln!("calm: burn wgpu (fusion) GEMM skipped: Burn wgpu failed: {why}"),
    }
    if cuda_answers().is_ok() {
        use burn::backend::cuda::{Cuda, CudaDevice};
        let on_cuda =
            crate::device::select::catch_device(|| burn_linear_relu::<Cuda>(&CudaDevice::default(), m, k, n, iters));
        match on_cuda {
            Ok(t) => out.push(measure("burn cuda (fusion)", t)),
            Err(why) => eprintln!("calm: burn cuda (fusion) GEMM skipped: Burn CUDA failed: {why}"),
        }
    }
    out.push(measure("burn flex (cpu)", burn_linear_relu::<Flex>(&FlexDevice, m, k, n, iters)));
    let on_client = cubek::gemm(client, (m as usize, k as usize, n as usize), lower.precision, iters);
    out.extend(on_client.rows);
    (out, on_client.skipped)
}

/// The GEMM table's row every other is compared with: calm's matmul with no epilogue, the
/// product cubek-matmul computes.
pub const CALM_PLAIN: &str = "calm (plain matmul)";

/// Whether a CUDA device starts here, or a one-line reason why not. Never panics.
pub fn cuda_answers() -> Result<(), String> {
    use crate::device::select::{Device, DeviceChoice};
    Device::open(DeviceChoice::Cuda).map(|_| ()).map_err(|e| e.to_string())
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

/// The whole forwards of [`head`], and the peers that cannot run on this machine, each with a
/// one-line reason.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Peers {
    /// calm fused first.
    pub rows: Vec<Forward>,
    pub skipped: Vec<String>,
}

/// The CALM head's inference forward (`g`) at `bindings`, side by side: calm's plan fused and
/// unfused on `client` (lowered with `lower`), the reference executor op by op on Burn's wgpu
/// backend and, where CUDA answers, on Burn's CUDA backend (both with Burn's fusion engine)
/// and on Burn Flex (CPU, f32), and calm's reference executor on Flex with routed experts, as
/// `calm eval` runs it.
pub fn head<R: Runtime>(
    client: &ComputeClient<R>,
    g: &Graph,
    bindings: &Bindings,
    lower: &LowerOptions,
    iters: usize,
) -> Peers {
    let row =
        |name: &str, t: Duration, count, unit| Forward { name: name.into(), seconds: t.as_secs_f64(), count, unit };
    let (fused, fused_launches) = calm_forward(client, g, bindings, true, lower, iters);
    let (unfused, unfused_launches) = calm_forward(client, g, bindings, false, lower, iters);
    let (reference, reference_ops) = reference_forward(g, bindings, iters);
    let ops = g.nodes.len();
    let mut rows = vec![
        row("calm fused", fused, fused_launches, "launches"),
        row("calm unfused", unfused, unfused_launches, "launches"),
    ];
    let mut skipped = Vec::new();
    // A CUDA machine may have no Vulkan loader: Burn wgpu's failure is a skipped row.
    match crate::device::select::catch_device(|| burn_forward::<Wgpu>(&WgpuDevice::default(), g, bindings, iters)) {
        Ok(t) => rows.push(row(BURN_WGPU, t, ops, "ops")),
        Err(why) => skipped.push(format!("{BURN_WGPU}: skipped, Burn wgpu failed: {why}")),
    }
    match burn_cuda_forward(g, bindings, iters) {
        Ok(t) => rows.push(row(BURN_CUDA, t, ops, "ops")),
        Err(why) => skipped.push(format!("{BURN_CUDA}: skipped, {why}")),
    }
    let burn_flex = burn_forward::<Flex>(&FlexDevice, g, bindings, iters.min(3));
    rows.push(row("burn flex (cpu), op by op", burn_flex, ops, "ops"));
    rows.push(row("calm reference on flex (cpu), routed", reference, reference_ops, "ops"));
    Peers { rows, skipped }
}

/// The Burn wgpu peer's name in reports.
pub const BURN_WGPU: &str = "burn wgpu (fusion), op by op";

/// The Burn CUDA peer's name in reports.
pub const BURN_CUDA: &str = "burn cuda (fusion), op by op";

/// The reference executor's forward of `g` op by op on Burn's CUDA backend with its fusion
/// engine (what a Burn user on an H100 runs): the host-clock median of `iters` runs, or why it
/// cannot run here (no CUDA device, or the device failed). Probing never panics.
pub fn burn_cuda_forward(g: &Graph, bindings: &Bindings, iters: usize) -> Result<Duration, String> {
    use burn::backend::cuda::{Cuda, CudaDevice};
    cuda_answers()?;
    crate::device::select::catch_device(|| burn_forward::<Cuda>(&CudaDevice::default(), g, bindings, iters))
        .map_err(|e| format!("Burn CUDA failed: {e}"))
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

/// The reference executor's forward of `g`, op by op on Burn backend `B` (its fusion engine
/// where `B` has one): the host-clock median of `iters` runs.
pub fn burn_forward<B: Backend>(device: &B::Device, g: &Graph, bindings: &Bindings, iters: usize) -> Duration {
    let params = ParamStore::init(g, 1);
    let inputs: BTreeMap<String, HostTensor> = random_inputs(g, bindings, 1).expect("bound");
    let on_device = Reference::<B>::new(device.clone(), FloatDType::F32);
    median(iters, || {
        on_device.run(g, &params, &inputs).expect("runs");
    })
}
