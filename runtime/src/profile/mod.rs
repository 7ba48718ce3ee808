//! `calm profile`: every launch of a plan timed on the device, set against the cost model's
//! FLOPs and bytes and the device's ceilings (a roofline), with reports for people (a table),
//! machines (JSON), Perfetto (a Chrome trace) and a roofline chart (SVG).
//!
//! The same roofline, with a datasheet's ceilings instead of measured ones, gives the modelled
//! time of a plan on a device we do not have ([`H200`]).

pub mod peaks;
mod svg;
mod trace;

use calm_passes::plan::{KernelPlan, Launch};
use cubecl::prelude::*;
use serde::Serialize;

use crate::device::{DeviceError, DeviceExecutor, DeviceFloat, Timer};

pub use svg::roofline_svg;
pub use trace::chrome_trace;

/// A device's two ceilings: arithmetic throughput and memory bandwidth.
#[derive(Copy, Clone, Debug, PartialEq, Serialize)]
pub struct Ceilings {
    pub flops_per_s: f64,
    pub bytes_per_s: f64,
}

/// What limits a kernel under the roofline model.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Compute,
    Memory,
}

impl Ceilings {
    /// The shortest time the device could take for this work: the slower of doing its FLOPs at
    /// peak and moving its bytes at peak.
    pub fn floor_seconds(&self, flops: u64, bytes: u64) -> f64 {
        (flops as f64 / self.flops_per_s).max(bytes as f64 / self.bytes_per_s)
    }

    pub fn bound(&self, flops: u64, bytes: u64) -> Bound {
        if flops as f64 / self.flops_per_s >= bytes as f64 / self.bytes_per_s {
            Bound::Compute
        } else {
            Bound::Memory
        }
    }

    /// FLOPs per byte at which the two ceilings meet.
    pub fn ridge(&self) -> f64 {
        self.flops_per_s / self.bytes_per_s
    }
}

/// NVIDIA H200 (SXM) datasheet ceilings: dense FP16/BF16 tensor-core throughput without
/// sparsity (~790 TFLOP/s, as the issue states it) and HBM3e bandwidth (4.3 TB/s usable).
pub const H200: Ceilings = Ceilings { flops_per_s: 790e12, bytes_per_s: 4.3e12 };

/// The modelled cost of one kernel launch on a CUDA device (driver and front-end), added to each
/// launch's roofline floor.
pub const CUDA_LAUNCH_OVERHEAD_S: f64 = 3e-6;

/// The modelled time of each launch of `plan`: its roofline floor plus `overhead`.
pub fn modelled_seconds(plan: &KernelPlan, ceilings: &Ceilings, overhead: f64) -> Vec<f64> {
    plan.launches.values().map(|l| ceilings.floor_seconds(l.cost.flops, bytes(l)) + overhead).collect()
}

fn bytes(l: &Launch) -> u64 {
    l.cost.bytes_read + l.cost.bytes_written
}

/// One launch, timed.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchProfile {
    /// Position in the plan.
    pub index: usize,
    pub kernel: String,
    /// The scope of the first graph node it computes, and how many nodes it computes.
    pub scope: String,
    pub nodes: usize,
    pub cube_count: [u32; 3],
    pub cube_dim: [u32; 3],
    /// Median and fastest of the timed runs.
    pub seconds: f64,
    pub min_seconds: f64,
    /// Modelled by the cost model from the graph nodes it computes.
    pub flops: u64,
    pub bytes: u64,
}

impl LaunchProfile {
    pub fn flops_per_s(&self) -> f64 {
        self.flops as f64 / self.seconds
    }

    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds
    }

    /// FLOPs per byte moved.
    pub fn intensity(&self) -> f64 {
        self.flops as f64 / self.bytes.max(1) as f64
    }

    /// The share of the device's ceiling for this kernel's bound that it reached: its roofline
    /// floor over its time.
    pub fn share_of_peak(&self, c: &Ceilings) -> f64 {
        c.floor_seconds(self.flops, self.bytes) / self.seconds
    }
}

/// The launch profiles of a plan whose executor has its weights and inputs loaded (after a
/// [`DeviceExecutor::run`]): one untimed round, then the median of `iters` timed rounds per
/// launch.
pub fn profile_plan<R: Runtime, F: DeviceFloat>(
    exec: &DeviceExecutor<R, F>,
    iters: usize,
) -> Result<(Vec<LaunchProfile>, Timer), DeviceError> {
    exec.profile_launches()?;
    let mut rounds = Vec::new();
    let mut timer = Timer::Device;
    for _ in 0..iters.max(1) {
        let (times, t) = exec.profile_launches()?;
        if t == Timer::Host {
            timer = Timer::Host;
        }
        rounds.push(times);
    }
    let plan = exec.plan();
    let profiles = plan
        .launches
        .values()
        .enumerate()
        .map(|(i, l)| {
            let mut times: Vec<f64> = rounds.iter().map(|r| r[i].as_secs_f64()).collect();
            times.sort_by(f64::total_cmp);
            LaunchProfile {
                index: i,
                kernel: l.kernel.name().to_string(),
                scope: l.scope.clone(),
                nodes: l.nodes.len(),
                cube_count: l.cube_count,
                cube_dim: l.cube_dim,
                seconds: times[times.len() / 2],
                min_seconds: times[0],
                flops: l.cost.flops,
                bytes: bytes(l),
            }
        })
        .collect();
    Ok((profiles, timer))
}

/// Launches of one kernel whose scopes differ only in numbers (`expert0`, `expert1`, ...),
/// summed: the rows of the profile table.
#[derive(Clone, Debug, Serialize)]
pub struct KernelGroup {
    pub kernel: String,
    pub scope: String,
    pub launches: usize,
    pub seconds: f64,
    pub flops: u64,
    pub bytes: u64,
}

impl KernelGroup {
    pub fn share_of_peak(&self, c: &Ceilings) -> f64 {
        c.floor_seconds(self.flops, self.bytes) / self.seconds
    }
}

/// Groups launches by kernel and numbered-scope pattern, slowest group first. `seconds` gives
/// each launch's time (measured or modelled).
pub fn group(
    launches: impl IntoIterator<Item = (String, String, u64, u64)>,
    seconds: impl IntoIterator<Item = f64>,
) -> Vec<KernelGroup> {
    let mut groups: Vec<KernelGroup> = Vec::new();
    for ((kernel, scope, flops, bytes), s) in launches.into_iter().zip(seconds) {
        let scope = calm_ir::text::numbers_as_stars(&scope);
        match groups.iter_mut().find(|g| g.kernel == kernel && g.scope == scope) {
            Some(g) => {
                g.launches += 1;
                g.seconds += s;
                g.flops += flops;
                g.bytes += bytes;
            }
            None => groups.push(KernelGroup { kernel, scope, launches: 1, seconds: s, flops, bytes }),
        }
    }
    groups.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    groups
}

/// The grouping key of each launch of a plan.
pub fn launch_keys(plan: &KernelPlan) -> Vec<(String, String, u64, u64)> {
    plan.launches.values().map(|l| (l.kernel.name().to_string(), l.scope.clone(), l.cost.flops, bytes(l))).collect()
}

/// What [`profile`] does besides timing the fused plan.
#[derive(Clone, Debug)]
pub struct Options {
    /// Timed runs per launch and per peer.
    pub iters: usize,
    /// Also time whole forwards of calm unfused, Burn wgpu (fusion), Burn Flex and calm's
    /// reference executor on Flex.
    pub peers: bool,
    /// Measure the device's peaks again instead of reading the cache.
    pub remeasure_peaks: bool,
    /// The peak cache file (default [`peaks::PeakCache::default_path`]).
    pub peak_cache: std::path::PathBuf,
}

/// Everything one `calm profile` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub timer: Timer,
    pub peaks: peaks::DevicePeaks,
    /// Where the peaks came from (cache or measured now).
    pub peaks_note: String,
    pub launches: Vec<LaunchProfile>,
    /// Calm fused first, then the others; empty without [`Options::peers`].
    pub peers: Vec<crate::bench::Forward>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Compile(#[from] calm_passes::compile::CompileError),
    #[error(transparent)]
    Inputs(#[from] crate::inputs::RandomInputError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    PeakCache(#[from] peaks::PeakCacheError),
    #[error(transparent)]
    Memory(#[from] crate::limits::MemoryError),
}

/// Compiles `g` with every fusion pass, runs it once on `device` with seeded weights and random
/// inputs, then times each launch (and, with [`Options::peers`], the peers' whole forwards).
pub fn profile(
    device: &crate::device::select::Device,
    g: &calm_ir::Graph,
    bindings: &calm_ir::Bindings,
    opts: &Options,
) -> Result<Report, ProfileError> {
    use crate::device::select::Device;
    let lower = device.lower_options();
    let plan = calm_passes::compile::compile(g, bindings, true, &lower)?.plan;
    // Refused before anything is allocated when it cannot fit.
    device.check_memory(&plan)?;
    // A device that fails mid-run is an error, as in `Device::run`.
    let name = device.name();
    crate::device::select::catch_device(|| match device {
        Device::Wgpu(c) => profile_on(c, name, &lower, g, plan, bindings, opts),
        Device::Cuda(c) => profile_on(c, name, &lower, g, plan, bindings, opts),
    })
    .map_err(DeviceError::Fault)?
}

fn profile_on<R: Runtime>(
    client: &ComputeClient<R>,
    device: String,
    lower: &calm_passes::lower::LowerOptions,
    g: &calm_ir::Graph,
    plan: KernelPlan,
    bindings: &calm_ir::Bindings,
    opts: &Options,
) -> Result<Report, ProfileError> {
    let (peaks, peaks_note) = cached_peaks(client, &device, &opts.peak_cache, opts.remeasure_peaks)?;
    let mut exec = DeviceExecutor::<R, f32>::new(client.clone(), plan);
    exec.load_params(&crate::params::ParamStore::try_init(g, 1)?)?;
    let inputs = crate::inputs::random_inputs(g, bindings, 1)?;
    eprintln!("calm: profiling {} launches, {} timed runs each...", exec.plan().launches.len(), opts.iters);
    exec.run(&inputs)?;
    let (launches, timer) = profile_plan(&exec, opts.iters)?;
    drop(exec);
    let peers = if opts.peers {
        eprintln!("calm: timing whole forwards: calm fused and unfused, Burn wgpu, Burn Flex, calm reference...");
        crate::bench::head(client, g, bindings, lower, opts.iters)
    } else {
        Vec::new()
    };
    Ok(Report { device, timer, peaks, peaks_note, launches, peers })
}

/// The peaks of `device`: from the cache at `cache` unless `remeasure`, else measured now and
/// cached. Also says where they came from.
pub fn device_peaks(
    device: &crate::device::select::Device,
    cache: &std::path::Path,
    remeasure: bool,
) -> Result<(peaks::DevicePeaks, String), ProfileError> {
    use crate::device::select::Device;
    match device {
        Device::Wgpu(c) => cached_peaks(c, &device.name(), cache, remeasure),
        Device::Cuda(c) => cached_peaks(c, &device.name(), cache, remeasure),
    }
}

/// The device's peaks: from the cache, or measured now and cached.
fn cached_peaks<R: Runtime>(
    client: &ComputeClient<R>,
    device: &str,
    path: &std::path::Path,
    remeasure: bool,
) -> Result<(peaks::DevicePeaks, String), ProfileError> {
    // Remeasuring replaces a cache that does not parse (the error says to do so).
    let mut cache = match peaks::PeakCache::open(path) {
        Err(peaks::PeakCacheError::Parse { .. }) if remeasure => peaks::PeakCache::replacing(path),
        other => other?,
    };
    if let (Some(p), false) = (cache.get(device), remeasure) {
        return Ok((p.clone(), format!("cached in {}", path.display())));
    }
    eprintln!("calm: measuring the device's peaks (once per device)...");
    let p = peaks::measure(client, 9);
    cache.insert(device, p.clone())?;
    Ok((p, format!("measured now, cached in {}", path.display())))
}
