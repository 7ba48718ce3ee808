//! `calm profile`: each launch of the fused plan timed on the device against the roofline of
//! the device's measured ceilings (of the unit each kernel runs on), with the roofline model's
//! time beside it, and calm unfused, Burn's fusion engines and Burn Flex in the same run; or,
//! with `--model h200`, the plan's modelled time on a device we do not have.

use std::path::{Path, PathBuf};

use calm_ir::text::{human_bytes, human_count};
use calm_ir::{Bindings, Graph};
use calm_passes::compile::compile;
use calm_passes::lower::LowerOptions;
use calm_passes::plan::{ComputeUnit, KernelPlan, Precision, Role};
use calm_runtime::device::select::Device;
use calm_runtime::device::Timer;
use calm_runtime::profile::peaks::{DevicePeaks, PeakCache};
use calm_runtime::profile::{self, Ceilings, Constant, DeviceModel, KernelGroup, LaunchProfile};

use super::build::GraphSource;
use super::compile::{Float, PrecisionArg, PRECISION_HELP};
use super::error::{read_graph, write_file, CliError, OtherError};
use super::run::DeviceArg;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// NVIDIA H200: each launch from the ceiling of its unit (FP32 67 TFLOP/s, bf16 tensor
    /// cores 790), 4.3 TB/s and 3 µs a launch; calibrated by `calm device-peak` on an H200
    /// where the peak cache holds one.
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
    /// Element type of float buffers for --model (a device profile runs f32).
    #[arg(long, value_enum, default_value_t = Float::F32)]
    pub float: Float,
    #[arg(long, value_enum, default_value_t = PrecisionArg::Highest, help = PRECISION_HELP)]
    pub precision: PrecisionArg,
    /// Keep every GEMM's k whole: GPUs otherwise split the k of GEMMs with few tiles in up to 4
    /// shares and sum them in a second launch (profile both ways to see which is faster).
    #[arg(long)]
    pub no_split_k: bool,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let (g, description) = match &args.file {
        Some(path) => (read_graph(path)?, path.display().to_string()),
        None => args.source.build()?,
    };
    let bindings: Bindings = args.bind.parse()?;
    super::stats::check_bound(&g, &bindings, args.file.as_deref().unwrap_or(Path::new("the graph")))?;
    if let Some(Model::H200) = args.model {
        return modelled(&g, &description, &bindings, &DeviceModel::h200(), &args);
    }
    if args.float != Float::F32 {
        return Err(OtherError("--float applies to --model; a device profile runs f32 buffers".into()).into());
    }
    let device = Device::open(args.device.into())?;
    let opts = profile::Options {
        iters: args.iters,
        peers: !args.no_peers,
        remeasure_peaks: args.remeasure_peaks,
        peak_cache: PeakCache::default_path(),
        precision: args.precision.into(),
        split_k: !args.no_split_k,
    };
    let report = profile::profile(&device, &g, &bindings, &opts)?;
    let ceilings = report.peaks.ceilings();
    let launches = &report.launches;

    println!("calm profile: {description}, {bindings}, f32, precision {}, on {}", report.precision, report.device);
    println!(
        "timer: {}",
        match report.timer {
            Timer::Device => "the device's timestamp queries around each launch",
            Timer::Stamps =>
                "the GPU's global timer, stamped between the launches run back to back (a stamp's own cost subtracted)",
            Timer::Host => "the host clock around each launch and a synchronisation (this runtime has no device timer)",
        }
    );
    println!("ceilings ({}; --remeasure-peaks to measure again):", report.peaks_note);
    print_peaks(&report.peaks);
    let total: f64 = launches.iter().map(|l| l.seconds).sum();
    let modelled_total: f64 = launches.iter().map(|l| l.modelled_seconds(&ceilings)).sum();
    let (flops, bytes): (u64, u64) = (launches.iter().map(|l| l.flops).sum(), launches.iter().map(|l| l.bytes).sum());
    println!(
        "fused plan: {} launches, {} FLOPs, {} moved (cost model); sum of launch medians {:.2} ms, \
         modelled {:.2} ms (roofline of these ceilings + launch overhead)",
        launches.len(),
        human_count(flops),
        human_bytes(bytes),
        total * 1e3,
        modelled_total * 1e3
    );
    println!(
        "whole forward, launches back to back: {:.2} ms ({})\n",
        report.forward_seconds * 1e3,
        match report.forward_timer {
            Timer::Stamps => "the GPU's global timer",
            Timer::Device => "the device's timestamp queries",
            Timer::Host => "the host clock and a synchronisation",
        }
    );
    let keyed = profile::profile_keys(launches)
        .into_iter()
        .zip(launches)
        .map(|(key, l)| (key, l.seconds, l.modelled_seconds(&ceilings)));
    let groups = if args.all {
        keyed
            .zip(launches)
            .map(|(((kernel, scope, unit, flops, bytes), s, m), l)| {
                KernelGroup::of_one((kernel, format!("#{} {scope}", l.index), unit, flops, bytes), s, m)
            })
            .collect()
    } else {
        profile::group(keyed)
    };
    print_groups(&groups, total, &ceilings, true);

    if let Some(fused) = report.peers.rows.first().map(|p| p.seconds) {
        println!("\nwhole forwards side by side (host-clock medians of {} runs, same device):", args.iters);
        for p in &report.peers.rows {
            println!(
                "  {:<38} {:>10.2} ms {:>6} {:<8} {:>7.2}x calm fused",
                p.name,
                p.seconds * 1e3,
                p.count,
                p.unit,
                p.seconds / fused
            );
        }
        for why in &report.peers.skipped {
            println!("  {why}");
        }
    }

    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "graph": description,
            "bindings": bindings.to_string(),
            "device": report.device,
            "precision": report.precision,
            "timer": report.timer,
            "forward_seconds": report.forward_seconds,
            "forward_timer": report.forward_timer,
            "peaks": report.peaks,
            "ceilings": ceilings,
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

/// `calm device-peak`: the device's ceilings per execution unit, cached or measured.
pub fn device_peak(device: DeviceArg, remeasure: bool) -> Result<(), CliError> {
    let device = Device::open(device.into())?;
    let (peaks, note) = profile::device_peaks(&device, &PeakCache::default_path(), remeasure)?;
    println!("device: {}", device.name());
    println!("ceilings ({note}):");
    print_peaks(&peaks);
    let c = peaks.ceilings();
    let ridges: Vec<String> = c.flops_per_s.keys().map(|&u| format!("{u} {:.1}", c.ridge(u))).collect();
    println!("ridge points (FLOP/byte; below: bound by memory, above: by the unit): {}", ridges.join(", "));
    Ok(())
}

/// The ceilings, one per line, with how each was measured.
fn print_peaks(p: &DevicePeaks) {
    println!("  {:<12} {:>12.1} GFLOP/s  FMA chains on every SM", ComputeUnit::Fp32Cores.name(), p.fp32_gflops);
    for (unit, g) in &p.tensor_gflops {
        println!("  {:<12} {:>12.1} GFLOP/s  cmma products, f32 accumulators", unit.name(), g);
    }
    if p.tensor_gflops.is_empty() {
        println!(
            "  {:<12} {:>12}          the device reports no cmma (cooperative matrix) support",
            "tensor cores", "none"
        );
    }
    println!(
        "  {:<12} {:>12.1} GB/s     copies of {} in {} (read + written)",
        "memory",
        p.copy_gbps,
        human_bytes(p.copy_buffer_bytes * p.copy_buffers as u64),
        if p.copy_buffers == 1 { "one buffer".to_string() } else { format!("{} buffers", p.copy_buffers) }
    );
    println!("  {:<12} {:>12.2} µs       per launch, launched back to back", "launch", p.launch_overhead_us);
}

/// The plan an H200 runs (as `--target cuda` lowers: shared tiles, tensor cores where the
/// float type and precision allow), for the device model.
fn compile_plan(g: &Graph, bindings: &Bindings, fuse: bool, args: &Args) -> Result<KernelPlan, CliError> {
    let opts = LowerOptions {
        float: args.float.plan_type(),
        precision: args.precision.into(),
        split_k: !args.no_split_k,
        ..LowerOptions::sm90()
    };
    Ok(compile(g, bindings, fuse, &opts)?.plan)
}

fn launch_json(l: &LaunchProfile, c: &Ceilings) -> serde_json::Value {
    let mut v = serde_json::to_value(l).expect("json");
    v["flops_per_s"] = l.flops_per_s().into();
    v["bytes_per_s"] = l.bytes_per_s().into();
    v["bound"] = serde_json::to_value(c.bound(l.unit, l.flops, l.bytes)).expect("json");
    v["share_of_peak"] = l.share_of_peak(c).into();
    v["modelled_seconds"] = l.modelled_seconds(c).into();
    v
}

/// The table: one row per group; `measured` adds the modelled time beside the measured one.
fn print_groups(groups: &[KernelGroup], total: f64, c: &Ceilings, measured: bool) {
    let width = groups.iter().map(|g| g.scope.len()).max().unwrap_or(5).clamp(5, 56);
    let kernel_width = groups.iter().map(|g| g.kernel.len()).max().unwrap_or(6).max(6);
    let time = if measured { "measured ms" } else { "model ms" };
    let modelled = if measured { format!(" {:>11}", "modelled ms") } else { String::new() };
    println!(
        "{:<kernel_width$} {:<width$} {:<11} {:>5} {:>11}{modelled} {:>6} {:>10} {:>10} {:>7} {:>6}",
        "kernel", "scope", "unit", "n", time, "share", "GFLOP/s", "GB/s", "bound", "%peak"
    );
    for g in groups {
        let scope = if g.scope.len() > width {
            format!("…{}", &g.scope[g.scope.len() - width + 1..])
        } else {
            g.scope.clone()
        };
        let modelled = if measured { format!(" {:>11.3}", g.modelled_seconds * 1e3) } else { String::new() };
        println!(
            "{:<kernel_width$} {:<width$} {:<11} {:>5} {:>11.3}{modelled} {:>5.1}% {:>10.2} {:>10.2} {:>7} {:>5.0}%",
            g.kernel,
            scope,
            g.unit.name(),
            g.launches,
            g.seconds * 1e3,
            100.0 * g.seconds / total.max(f64::MIN_POSITIVE),
            g.flops as f64 / g.seconds / 1e9,
            g.bytes as f64 / g.seconds / 1e9,
            match c.bound(g.unit, g.flops, g.bytes) {
                profile::Bound::Compute => "FLOPs",
                profile::Bound::Memory => "bytes",
            },
            100.0 * g.share_of_peak(c)
        );
    }
}

/// The model of `device`, calibrated by the peak cache's measurement of that device where it
/// holds one (`calm device-peak` run on it): the adapter name names the model (`H200`).
fn calibrated(model: &DeviceModel) -> (DeviceModel, Option<String>) {
    let Ok(cache) = PeakCache::open(&PeakCache::default_path()) else { return (model.clone(), None) };
    let wanted = model.name.to_uppercase();
    let found = cache.entries().find(|(name, _)| name.to_uppercase().contains(&wanted));
    let calibrated = found.map(|(name, peaks)| {
        let source = format!("measured by calm device-peak on {name}");
        (model.calibrated(&peaks.ceilings(), &source, &peaks.measured_date()), Some(name.to_string()))
    });
    calibrated.unwrap_or_else(|| (model.clone(), None))
}

/// The modelled time of the fused and unfused plans on a device we may not have.
fn modelled(
    g: &Graph,
    description: &str,
    bindings: &Bindings,
    model: &DeviceModel,
    args: &Args,
) -> Result<(), CliError> {
    let fused = compile_plan(g, bindings, true, args)?;
    let unfused = compile_plan(g, bindings, false, args)?;
    let (model, measured_on) = calibrated(model);
    let c = model.ceilings();
    println!(
        "calm profile --model {}: {description}, {bindings}, {} buffers, precision {}",
        model.name,
        format!("{:?}", fused.float).to_lowercase(),
        fused.precision
    );
    println!(
        "MODELLED, not measured: each launch max(FLOPs / its unit's ceiling, bytes / bandwidth) + launch overhead"
    );
    if let Some(name) = measured_on {
        println!("calibrated by the peak cache's measurement of {name}");
    }
    println!("{:<22} {:>14}  {:<10} source", "constant", "value", "date");
    for row in &model.constants {
        let (what, value) = match row.constant {
            Constant::Flops(unit) => (unit.name().to_string(), format!("{:.1} TFLOP/s", row.value / 1e12)),
            Constant::Bandwidth => ("memory".into(), format!("{:.2} TB/s", row.value / 1e12)),
            Constant::LaunchOverhead => ("launch".into(), format!("{:.1} µs", row.value * 1e6)),
        };
        println!("{what:<22} {value:>14}  {:<10} {}", row.date, row.source);
    }
    if Precision::from(args.precision) != Precision::Highest {
        println!(
            "precision {}: GEMMs (and attention in tiles) on the tensor cores it allows; each launch is modelled on \
             the unit its kernel uses",
            fused.precision
        );
    }
    println!();
    // The floor of the whole forward: all its FLOPs at their units' peaks, or only its inputs,
    // weights and outputs moved once, whichever is slower.
    let essential: u64 =
        fused.buffers.iter().filter(|(_, b)| b.role != Role::Temp).map(|(id, _)| fused.buffer_bytes(id)).sum::<u64>()
            + fused.outputs.iter().map(|o| fused.buffer_bytes(o.buffer)).sum::<u64>();
    let flops: u64 = fused.launches.values().map(|l| l.cost.flops).sum();
    let compute: f64 = fused.launches.values().map(|l| l.cost.flops as f64 / c.flops_of(l.kernel.compute_unit())).sum();
    let floor = compute.max(essential as f64 / c.bytes_per_s);
    println!(
        "{:<10} {:>9} {:>12} {:>12} {:>14} {:>10}",
        "plan", "launches", "FLOPs", "bytes moved", "modelled ms", "/ floor"
    );
    let mut rows = Vec::new();
    for (name, plan) in [("unfused", &unfused), ("fused", &fused)] {
        let t: f64 = c.modelled_plan(plan).iter().sum();
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
        "floor: {:.3} ms (all {} FLOPs at their units' peaks, or inputs, weights and outputs moved once: {})\n",
        floor * 1e3,
        human_count(flops),
        human_bytes(essential)
    );
    let times = c.modelled_plan(&fused);
    let total: f64 = times.iter().sum();
    let groups = profile::group(profile::launch_keys(&fused).into_iter().zip(times).map(|(k, t)| (k, t, t)));
    println!("fused plan by kernel (modelled):");
    print_groups(&groups, total, &c, false);
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "graph": description, "bindings": bindings.to_string(), "modelled": model.name,
            "precision": fused.precision, "float": fused.float, "model": model, "ceilings": c,
            "floor_seconds": floor, "plans": rows, "groups": groups,
        });
        write_file(path, serde_json::to_string_pretty(&doc).expect("json").as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
