//! `calm profile`: each launch of the fused plan timed on the device against the roofline of
//! the device's measured ceilings, beside calm unfused, Burn's fusion engine and Burn Flex in
//! the same run; or, with `--model h200`, the plan's modelled time on a device we do not have.

use std::path::{Path, PathBuf};

use calm_ir::text::{human_bytes, human_count};
use calm_ir::{Bindings, Graph};
use calm_passes::compile::compile;
use calm_passes::lower::LowerOptions;
use calm_passes::plan::{FloatType, KernelPlan, Role};
use calm_runtime::device::select::Device;
use calm_runtime::device::Timer;
use calm_runtime::profile::peaks::PeakCache;
use calm_runtime::profile::{self, Ceilings, KernelGroup, LaunchProfile};

use super::build::GraphSource;
use super::error::{read_graph, write_file, CliError};
use super::run::DeviceArg;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// NVIDIA H200: 790 TFLOP/s (dense bf16), 4.3 TB/s, 3 µs per launch; bf16 buffers.
    H200,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Graph file (calm-ir/1 JSON); without it the graph is built from --preset or --config.
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub source: GraphSource,
    /// Sizes of the graph's symbols.
    #[arg(long, default_value = "batch=64,tokens=128")]
    pub bind: String,
    /// Device to profile on: `auto` tries CUDA, then Vulkan through wgpu.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Timed runs per launch and per peer (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// One table row per launch instead of per kernel and scope pattern.
    #[arg(long)]
    pub all: bool,
    /// Skip the peers (calm unfused, Burn wgpu with fusion, Burn Flex, calm reference on Flex): only the fused plan.
    #[arg(long)]
    pub no_peers: bool,
    /// Measure the device's peaks again instead of reading the cache.
    #[arg(long)]
    pub remeasure_peaks: bool,
    /// Write every launch, the groups, the peaks and the peers as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a Chrome trace (opens in Perfetto, ui.perfetto.dev).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Write a roofline chart (SVG): each kernel group against the device's two ceilings.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Instead of running: the plan's modelled time on this device (no device needed).
    #[arg(long, value_enum)]
    pub model: Option<Model>,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let (g, description) = match &args.file {
        Some(path) => (read_graph(path)?, path.display().to_string()),
        None => args.source.build()?,
    };
    let bindings: Bindings = args.bind.parse()?;
    super::stats::check_bound(&g, &bindings, args.file.as_deref().unwrap_or(Path::new("the graph")))?;
    if let Some(Model::H200) = args.model {
        return modelled(&g, &description, &bindings, &profile::H200, profile::CUDA_LAUNCH_OVERHEAD_S, &args);
    }
    let device = Device::open(args.device.into())?;
    let opts = profile::Options {
        iters: args.iters,
        peers: !args.no_peers,
        remeasure_peaks: args.remeasure_peaks,
        peak_cache: PeakCache::default_path(),
    };
    let report = profile::profile(&device, &g, &bindings, &opts)?;
    let ceilings = report.peaks.ceilings();
    let launches = &report.launches;

    println!("calm profile: {description}, {bindings}, f32, on {}", report.device);
    println!(
        "timer: {}",
        match report.timer {
            Timer::Device => "the device's timestamps around each launch",
            Timer::Host => "the host clock around each launch and a synchronisation (the device has no timestamps)",
        }
    );
    println!(
        "peaks: FMA {:.1} GFLOP/s, copy {:.1} GB/s ({}; --remeasure-peaks to measure again)",
        report.peaks.fma_gflops, report.peaks.copy_gbps, report.peaks_note
    );
    let total: f64 = launches.iter().map(|l| l.seconds).sum();
    let (flops, bytes): (u64, u64) = (launches.iter().map(|l| l.flops).sum(), launches.iter().map(|l| l.bytes).sum());
    println!(
        "fused plan: {} launches, {} FLOPs, {} moved (modelled); sum of launch medians {:.2} ms\n",
        launches.len(),
        human_count(flops),
        human_bytes(bytes),
        total * 1e3
    );
    let groups = if args.all {
        launches
            .iter()
            .map(|l| KernelGroup {
                kernel: l.kernel.clone(),
                scope: format!("#{} {}", l.index, l.scope),
                launches: 1,
                seconds: l.seconds,
                flops: l.flops,
                bytes: l.bytes,
            })
            .collect()
    } else {
        profile::group(
            launches.iter().map(|l| (l.kernel.clone(), l.scope.clone(), l.flops, l.bytes)),
            launches.iter().map(|l| l.seconds),
        )
    };
    print_groups(&groups, total, &ceilings, "time");

    if let Some(fused) = report.peers.first().map(|p| p.seconds) {
        println!("\nwhole forwards side by side (host-clock medians of {} runs, same device):", args.iters);
        for p in &report.peers {
            println!(
                "  {:<38} {:>10.2} ms {:>6} {:<8} {:>7.2}x calm fused",
                p.name,
                p.seconds * 1e3,
                p.count,
                p.unit,
                p.seconds / fused
            );
        }
    }

    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "graph": description,
            "bindings": bindings.to_string(),
            "device": report.device,
            "timer": report.timer,
            "peaks": report.peaks,
            "launches": launches.iter().map(|l| launch_json(l, &ceilings)).collect::<Vec<_>>(),
            "groups": groups,
            "peers": report.peers,
        });
        write_file(path, serde_json::to_string_pretty(&doc).expect("json").as_bytes())?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.trace {
        let trace = profile::chrome_trace(&report.device, report.timer, launches, &ceilings);
        write_file(path, serde_json::to_string(&trace).expect("json").as_bytes())?;
        println!("wrote {} (open in ui.perfetto.dev)", path.display());
    }
    if let Some(path) = &args.plot {
        let title = format!("{description}, {bindings} on {}", report.device);
        write_file(path, profile::roofline_svg(&title, &groups, &ceilings).as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `calm device-peak`: the device's FMA and copy ceilings, cached or measured.
pub fn device_peak(device: DeviceArg, remeasure: bool) -> Result<(), CliError> {
    let device = Device::open(device.into())?;
    let (peaks, note) = profile::device_peaks(&device, &PeakCache::default_path(), remeasure)?;
    println!("device: {}", device.name());
    println!("FMA {:.1} GFLOP/s, copy {:.1} GB/s ({note})", peaks.fma_gflops, peaks.copy_gbps);
    let ridge = peaks.ceilings().ridge();
    println!("ridge: {ridge:.2} FLOP/byte (kernels below it are bound by bytes, above it by FLOPs)");
    Ok(())
}

/// The plan a GPU runs (shared-tile GEMMs, as `--target cuda` lowers), for the datasheet model.
fn compile_plan(g: &Graph, bindings: &Bindings, fuse: bool, float: FloatType) -> Result<KernelPlan, CliError> {
    Ok(compile(g, bindings, fuse, &LowerOptions { float, ..LowerOptions::gpu() })?.plan)
}

fn launch_json(l: &LaunchProfile, c: &Ceilings) -> serde_json::Value {
    let mut v = serde_json::to_value(l).expect("json");
    v["flops_per_s"] = l.flops_per_s().into();
    v["bytes_per_s"] = l.bytes_per_s().into();
    v["bound"] = serde_json::to_value(c.bound(l.flops, l.bytes)).expect("json");
    v["share_of_peak"] = l.share_of_peak(c).into();
    v
}

fn print_groups(groups: &[KernelGroup], total: f64, c: &Ceilings, time: &str) {
    let width = groups.iter().map(|g| g.scope.len()).max().unwrap_or(5).clamp(5, 56);
    let kernel_width = groups.iter().map(|g| g.kernel.len()).max().unwrap_or(6).max(6);
    println!(
        "{:<kernel_width$} {:<width$} {:>5} {:>10} {:>6} {:>10} {:>10} {:>7} {:>6}",
        "kernel",
        "scope",
        "n",
        format!("{time} ms"),
        "share",
        "GFLOP/s",
        "GB/s",
        "bound",
        "%peak"
    );
    for g in groups {
        let scope = if g.scope.len() > width {
            format!("…{}", &g.scope[g.scope.len() - width + 1..])
        } else {
            g.scope.clone()
        };
        println!(
            "{:<kernel_width$} {:<width$} {:>5} {:>10.3} {:>5.1}% {:>10.2} {:>10.2} {:>7} {:>5.0}%",
            g.kernel,
            scope,
            g.launches,
            g.seconds * 1e3,
            100.0 * g.seconds / total.max(f64::MIN_POSITIVE),
            g.flops as f64 / g.seconds / 1e9,
            g.bytes as f64 / g.seconds / 1e9,
            match c.bound(g.flops, g.bytes) {
                profile::Bound::Compute => "FLOPs",
                profile::Bound::Memory => "bytes",
            },
            100.0 * g.share_of_peak(c)
        );
    }
}

/// The modelled time of the fused and unfused plans (bf16 buffers) on a datasheet device.
fn modelled(
    g: &Graph,
    description: &str,
    bindings: &Bindings,
    c: &Ceilings,
    overhead: f64,
    args: &Args,
) -> Result<(), CliError> {
    let fused = compile_plan(g, bindings, true, FloatType::Bf16)?;
    let unfused = compile_plan(g, bindings, false, FloatType::Bf16)?;
    println!("calm profile --model h200: {description}, {bindings}, bf16 buffers");
    println!(
        "MODELLED, not measured: each launch max(FLOPs / {:.0} TFLOP/s, bytes / {:.1} TB/s) + {:.0} µs launch overhead\n",
        c.flops_per_s / 1e12,
        c.bytes_per_s / 1e12,
        overhead * 1e6
    );
    // The floor of the whole forward: all its FLOPs at peak, or only its inputs, weights and
    // outputs moved once, whichever is slower.
    let essential: u64 =
        fused.buffers.iter().filter(|(_, b)| b.role != Role::Temp).map(|(id, _)| fused.buffer_bytes(id)).sum::<u64>()
            + fused.outputs.iter().map(|o| fused.buffer_bytes(o.buffer)).sum::<u64>();
    let flops: u64 = fused.launches.values().map(|l| l.cost.flops).sum();
    let floor = c.floor_seconds(flops, essential);
    println!(
        "{:<10} {:>9} {:>12} {:>12} {:>14} {:>10}",
        "plan", "launches", "FLOPs", "bytes moved", "modelled ms", "/ floor"
    );
    let mut rows = Vec::new();
    for (name, plan) in [("unfused", &unfused), ("fused", &fused)] {
        let t: f64 = profile::modelled_seconds(plan, c, overhead).iter().sum();
        let bytes: u64 = plan.launches.values().map(|l| l.cost.bytes_read + l.cost.bytes_written).sum();
        println!(
            "{name:<10} {:>9} {:>12} {:>12} {:>14.3} {:>9.2}x",
            plan.launches.len(),
            human_count(plan.launches.values().map(|l| l.cost.flops).sum()),
            human_bytes(bytes),
            t * 1e3,
            t / floor
        );
        rows.push(
            serde_json::json!({"plan": name, "launches": plan.launches.len(), "modelled_seconds": t, "bytes": bytes}),
        );
    }
    println!(
        "floor: {:.3} ms (all {} FLOPs at peak, or inputs, weights and outputs moved once: {})\n",
        floor * 1e3,
        human_count(flops),
        human_bytes(essential)
    );
    let times = profile::modelled_seconds(&fused, c, overhead);
    let total: f64 = times.iter().sum();
    let groups = profile::group(profile::launch_keys(&fused), times);
    println!("fused plan by kernel (modelled):");
    print_groups(&groups, total, c, "model");
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "graph": description, "bindings": bindings.to_string(), "modelled": "h200",
            "ceilings": c, "launch_overhead_s": overhead, "floor_seconds": floor, "plans": rows, "groups": groups,
        });
        write_file(path, serde_json::to_string_pretty(&doc).expect("json").as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
