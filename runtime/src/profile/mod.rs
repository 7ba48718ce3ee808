//! `calm profile`: every launch of a plan timed on the device, set against the cost model's
//! FLOPs and bytes and the device's ceilings (a roofline), with reports for people (a table),
//! machines (JSON), Perfetto (a Chrome trace) and a roofline chart (SVG).
//!
//! Each launch is read against the ceiling of the unit its kernel runs on ([`roofline`]); the
//! same roofline plus a launch overhead models each launch, from the device's measured
//! ceilings (the "modelled" column beside "measured") or from a table of a device we do not
//! have ([`DeviceModel::h200`]).

pub mod peaks;
mod roofline;
mod svg;
mod trace;

use calm_passes::plan::{ComputeUnit, KernelPlan, Launch, Precision};
use cubecl::prelude::*;
use serde::Serialize;

use crate::device::stamps::StampClock;
use crate::device::{DeviceError, DeviceExecutor, DeviceFloat, Timer};

pub use roofline::{Bound, Ceilings, Constant, DeviceModel, ModelConstant};
pub use svg::roofline_svg;
pub use trace::chrome_trace;

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
    /// The unit its arithmetic runs on: whose ceiling it is read against.
    pub unit: ComputeUnit,
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
    /// floor (on its unit) over its time.
    pub fn share_of_peak(&self, c: &Ceilings) -> f64 {
        c.floor_seconds(self.unit, self.flops, self.bytes) / self.seconds
    }

    /// Its time under the roofline model of `c`: floor plus launch overhead.
    pub fn modelled_seconds(&self, c: &Ceilings) -> f64 {
        c.modelled_seconds(self.unit, self.flops, self.bytes)
    }
}

/// The launch profiles of a plan whose executor has its weights and inputs loaded (after a
/// [`DeviceExecutor::run`]): one untimed round, then the median of `iters` timed rounds per
/// launch. With a stamp clock (CUDA), each round runs the launches back to back timed by the
/// GPU's own clock; without one, each launch runs alone under the runtime's profiler. A stamp
/// clock that fails falls back to the profiler, and the timer returned says which was used.
pub fn profile_plan<R: Runtime, F: DeviceFloat>(
    exec: &DeviceExecutor<R, F>,
    iters: usize,
    clock: Option<&StampClock>,
) -> Result<(Vec<LaunchProfile>, Timer), DeviceError> {
    let n = exec.plan().launches.len();
    let stamped = |clock: &StampClock| -> Result<Vec<Vec<f64>>, String> {
        clock.time_launches(n, &mut |i| exec.launch_at(i))?;
        (0..iters.max(1)).map(|_| clock.time_launches(n, &mut |i| exec.launch_at(i))).collect()
    };
    let stamped = clock.map(stamped);
    let (rounds, timer) = match stamped {
        Some(Ok(rounds)) => (rounds, Timer::Stamps),
        other => {
            if let Some(Err(why)) = other {
                eprintln!("calm: the device clock failed ({why}); timing with the runtime's profiler");
            }
            exec.profile_launches()?;
            let mut rounds = Vec::new();
            let mut timer = Timer::Device;
            for _ in 0..iters.max(1) {
                let (times, t) = exec.profile_launches()?;
                if t == Timer::Host {
                    timer = Timer::Host;
                }
                rounds.push(times.iter().map(|d| d.as_secs_f64()).collect());
            }
            (rounds, timer)
        }
    };
    let plan = exec.plan();
    let profiles = plan
        .launches
        .values()
        .enumerate()
        .map(|(i, l)| {
            let mut times: Vec<f64> = rounds.iter().map(|r: &Vec<f64>| r[i]).collect();
            times.sort_by(f64::total_cmp);
            LaunchProfile {
                index: i,
                kernel: l.kernel.name().to_string(),
                scope: l.scope.clone(),
                nodes: l.nodes.len(),
                cube_count: l.cube_count,
                cube_dim: l.cube_dim,
                unit: l.kernel.compute_unit(),
                seconds: times[times.len() / 2],
                min_seconds: times[0],
                flops: l.cost.flops,
                bytes: bytes(l),
            }
        })
        .collect();
    Ok((profiles, timer))
}

/// The whole forward of a loaded executor, every launch back to back: the median of `iters`
/// rounds after one untimed, on the stamp clock where there is one, else under the runtime's
/// profiler (device timestamps where it has them), and which clock that was.
pub fn profile_forward<R: Runtime, F: DeviceFloat>(
    exec: &DeviceExecutor<R, F>,
    iters: usize,
    clock: Option<&StampClock>,
) -> Result<(f64, Timer), DeviceError> {
    let median = |mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    if let Some(clock) = clock {
        let mut forward = |_: usize| exec.launch_all();
        let rounds: Result<Vec<f64>, String> =
            (0..=iters.max(1)).map(|_| clock.time_launches(1, &mut forward).map(|t| t[0])).collect();
        match rounds {
            Ok(rounds) => return Ok((median(rounds[1..].to_vec()), Timer::Stamps)),
            Err(why) => eprintln!("calm: the device clock failed on the whole forward ({why})"),
        }
    }
    exec.profile_forward()?;
    let mut timer = Timer::Device;
    let mut times = Vec::new();
    for _ in 0..iters.max(1) {
        let (t, clock) = exec.profile_forward()?;
        if clock == Timer::Host {
            timer = Timer::Host;
        }
        times.push(t.as_secs_f64());
    }
    Ok((median(times), timer))
}

/// Launches of one kernel whose scopes differ only in numbers (`expert0`, `expert1`, ...),
/// summed: the rows of the profile table.
#[derive(Clone, Debug, Serialize)]
pub struct KernelGroup {
    pub kernel: String,
    pub scope: String,
    pub unit: ComputeUnit,
    pub launches: usize,
    /// Measured (or, in a model-only report, modelled) and modelled seconds.
    pub seconds: f64,
    pub modelled_seconds: f64,
    pub flops: u64,
    pub bytes: u64,
}

impl KernelGroup {
    /// A group of one launch: its key, its time and its modelled time.
    pub fn of_one((kernel, scope, unit, flops, bytes): LaunchKey, seconds: f64, modelled_seconds: f64) -> KernelGroup {
        KernelGroup { kernel, scope, unit, launches: 1, seconds, modelled_seconds, flops, bytes }
    }

    pub fn share_of_peak(&self, c: &Ceilings) -> f64 {
        c.floor_seconds(self.unit, self.flops, self.bytes) / self.seconds
    }
}

/// What groups launches into a [`KernelGroup`], and its work: kernel, scope, unit, FLOPs, bytes.
pub type LaunchKey = (String, String, ComputeUnit, u64, u64);

/// Groups launches by kernel, numbered-scope pattern and unit, slowest group first. Each launch
/// comes with its time (measured or modelled) and its modelled time.
pub fn group(launches: impl IntoIterator<Item = (LaunchKey, f64, f64)>) -> Vec<KernelGroup> {
    let mut groups: Vec<KernelGroup> = Vec::new();
    for ((kernel, scope, unit, flops, bytes), s, m) in launches {
        let scope = calm_ir::text::numbers_as_stars(&scope);
        match groups.iter_mut().find(|g| g.kernel == kernel && g.scope == scope && g.unit == unit) {
            Some(g) => {
                g.launches += 1;
                g.seconds += s;
                g.modelled_seconds += m;
                g.flops += flops;
                g.bytes += bytes;
            }
            None => groups.push(KernelGroup::of_one((kernel, scope, unit, flops, bytes), s, m)),
        }
    }
    groups.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    groups
}

/// The grouping key of each launch of a plan.
pub fn launch_keys(plan: &KernelPlan) -> Vec<LaunchKey> {
    plan.launches
        .values()
        .map(|l| (l.kernel.name().to_string(), l.scope.clone(), l.kernel.compute_unit(), l.cost.flops, bytes(l)))
        .collect()
}

/// The grouping key of each profiled launch.
pub fn profile_keys(launches: &[LaunchProfile]) -> Vec<LaunchKey> {
    launches.iter().map(|l| (l.kernel.clone(), l.scope.clone(), l.unit, l.flops, l.bytes)).collect()
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
    /// What matrix products of f32 buffers may use (recorded; see [`Precision`]).
    pub precision: Precision,
    /// Let the device's lowering split the k of GEMMs with few tiles (`LowerOptions::split_k`).
    pub split_k: bool,
}

/// Everything one `calm profile` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub precision: Precision,
    pub timer: Timer,
    pub peaks: peaks::DevicePeaks,
    /// Where the peaks came from (cache or measured now).
    pub peaks_note: String,
    pub launches: Vec<LaunchProfile>,
    /// The whole fused forward (every launch back to back), median of the timed rounds, on
    /// the clock `forward_timer` says.
    pub forward_seconds: f64,
    pub forward_timer: Timer,
    /// Calm fused first, then the others; empty without [`Options::peers`].
    pub peers: crate::bench::Peers,
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
    let base = device.lower_options();
    let lower =
        calm_passes::lower::LowerOptions { precision: opts.precision, split_k: base.split_k && opts.split_k, ..base };
    let plan = calm_passes::compile::compile(g, bindings, true, &lower)?.plan;
    // Refused before anything is allocated when it cannot fit.
    device.check_memory(&plan)?;
    // A device that fails mid-run is an error, as in `Device::run`.
    let name = device.name();
    let shape = device_shape(device);
    crate::device::select::catch_device(|| match device {
        Device::Wgpu(c) => profile_on(c, name, &shape, &lower, g, plan, bindings, opts, None),
        Device::Cuda(c) => {
            let clock = StampClock::new(c.clone())
                .inspect_err(|why| eprintln!("calm: no device clock ({why}); timing with the host clock"))
                .ok();
            profile_on(c, name, &shape, &lower, g, plan, bindings, opts, clock.as_ref())
        }
    })
    .map_err(DeviceError::from)?
}

#[allow(clippy::too_many_arguments)]
fn profile_on<R: Runtime>(
    client: &ComputeClient<R>,
    device: String,
    shape: &peaks::DeviceShape,
    lower: &calm_passes::lower::LowerOptions,
    g: &calm_ir::Graph,
    plan: KernelPlan,
    bindings: &calm_ir::Bindings,
    opts: &Options,
    clock: Option<&StampClock>,
) -> Result<Report, ProfileError> {
    let (peaks, peaks_note) = cached_peaks(client, &device, shape, &opts.peak_cache, opts.remeasure_peaks)?;
    let mut exec = DeviceExecutor::<R, f32>::new(client.clone(), plan);
    exec.load_params(&crate::params::ParamStore::try_init(g, 1)?)?;
    let inputs = crate::inputs::random_inputs(g, bindings, 1)?;
    eprintln!("calm: profiling {} launches, {} timed runs each...", exec.plan().launches.len(), opts.iters);
    exec.run(&inputs)?;
    let (launches, timer) = profile_plan(&exec, opts.iters, clock)?;
    let (forward_seconds, forward_timer) = profile_forward(&exec, opts.iters, clock)?;
    drop(exec);
    let peers = if opts.peers {
        eprintln!(
            "calm: timing whole forwards: calm fused and unfused, Burn wgpu and CUDA, Burn Flex, calm reference..."
        );
        crate::bench::head(client, g, bindings, lower, opts.iters)
    } else {
        crate::bench::Peers { rows: Vec::new(), skipped: Vec::new() }
    };
    Ok(Report {
        device,
        precision: opts.precision,
        timer,
        peaks,
        peaks_note,
        launches,
        forward_seconds,
        forward_timer,
        peers,
    })
}

/// The peaks of `device`: from the cache at `cache` unless `remeasure`, else measured now and
/// cached. Also says where they came from.
pub fn device_peaks(
    device: &crate::device::select::Device,
    cache: &std::path::Path,
    remeasure: bool,
) -> Result<(peaks::DevicePeaks, String), ProfileError> {
    use crate::device::select::Device;
    let shape = device_shape(device);
    crate::device::select::catch_device(|| match device {
        Device::Wgpu(c) => cached_peaks(c, &device.name(), &shape, cache, remeasure),
        Device::Cuda(c) => cached_peaks(c, &device.name(), &shape, cache, remeasure),
    })
    .map_err(DeviceError::from)?
}

/// The peaks of `device` measured now (not cached): `calm bench` sets its kernels beside
/// ceilings of the same run.
pub fn measure_peaks(device: &crate::device::select::Device, iters: usize) -> Result<peaks::DevicePeaks, ProfileError> {
    use crate::device::select::Device;
    let shape = device_shape(device);
    let progress = |what: &str| eprintln!("calm:   {what}");
    Ok(crate::device::select::catch_device(|| match device {
        Device::Wgpu(c) => peaks::measure(c, &shape, iters, &progress),
        Device::Cuda(c) => peaks::measure(c, &shape, iters, &progress),
    })
    .map_err(DeviceError::from)?)
}

/// What the microbenchmarks size themselves by: SMs, CPU or not, memory, last-level cache.
fn device_shape(device: &crate::device::select::Device) -> peaks::DeviceShape {
    use crate::device::select::Device;
    let (max_buffer_bytes, memory) = device.memory();
    let sms = match device {
        Device::Wgpu(c) => c.properties().hardware.num_streaming_multiprocessors,
        Device::Cuda(c) => c.properties().hardware.num_streaming_multiprocessors,
    };
    let cpu = device.is_cpu_adapter();
    peaks::DeviceShape {
        sms,
        cpu,
        max_buffer_bytes,
        memory_bytes: memory.map(|(bytes, _)| bytes),
        llc_bytes: if cpu { host_last_level_cache() } else { None },
    }
}

/// The largest cache of the host's first CPU (Linux sysfs), in bytes.
fn host_last_level_cache() -> Option<u64> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("size")).ok())
        .filter_map(|size| {
            let size = size.trim();
            let (digits, scale) = match size.strip_suffix('K') {
                Some(d) => (d, 1u64 << 10),
                None => match size.strip_suffix('M') {
                    Some(d) => (d, 1 << 20),
                    None => (size, 1),
                },
            };
            digits.parse::<u64>().ok().map(|n| n * scale)
        })
        .max()
}

/// The device's peaks: from the cache, or measured now and cached.
fn cached_peaks<R: Runtime>(
    client: &ComputeClient<R>,
    device: &str,
    shape: &peaks::DeviceShape,
    path: &std::path::Path,
    remeasure: bool,
) -> Result<(peaks::DevicePeaks, String), ProfileError> {
    // Remeasuring replaces a cache that does not parse (the error says to do so).
    let mut cache = match peaks::PeakCache::open(path) {
        Err(peaks::PeakCacheError::Parse { .. }) if remeasure => peaks::PeakCache::replacing(path),
        other => other?,
    };
    if let (Some(p), false) = (cache.get(device), remeasure) {
        return Ok((p.clone(), format!("measured {}, cached in {}", p.measured_date(), path.display())));
    }
    let why = if remeasure {
        "as asked"
    } else if cache.stale.iter().any(|d| d == device) {
        "the cache held them in an older format, whose FMA and copy figures were not the ceilings"
    } else {
        "once per device"
    };
    eprintln!("calm: measuring the device's ceilings ({why})...");
    let p = peaks::measure(client, shape, 9, &|what| eprintln!("calm:   {what}"));
    cache.insert(device, p.clone())?;
    Ok((p, format!("measured now, cached in {}", path.display())))
}
