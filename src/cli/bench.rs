//! `calm bench`: device ceilings, GEMM and CALM head, side by side in one run.

use calm_ir::Bindings;
use calm_models::{build, CalmConfig, Mode};
use calm_passes::lower::LowerOptions;
use calm_passes::plan::ComputeUnit;
use calm_runtime::bench;
use calm_runtime::device::select::{Device, RunOnDeviceError};
use calm_runtime::device::DeviceError;

use super::compile::PrecisionArg;
use super::error::{write_file, CliError, OtherError};
use super::run::DeviceArg;

/// What `calm bench` measures, as its command line gave it.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// GEMM sizes `m,k,n` of the linear + ReLU benchmark; repeat for several (each is measured
    /// for calm, Burn and every cubek-matmul strategy that runs on the device).
    #[arg(long, default_values_t = ["8192,512,2048".to_string()])]
    pub gemm: Vec<String>,
    /// Sizes of the CALM head benchmark (paper preset, inference).
    #[arg(long, default_value = "batch=16,tokens=64")]
    pub head: String,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Device to benchmark: `auto` tries CUDA, then Vulkan through wgpu.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value_t = PrecisionArg::Highest, help = super::compile::PRECISION_HELP)]
    pub precision: PrecisionArg,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Instead of the device benchmarks: time `calm train`'s step (forward, backward, AdamW)
    /// at these sizes, e.g. `batch=64,tokens=128`, on random states, for each of
    /// --train-backends and --train-precisions side by side (median of --iters after one
    /// untimed step).
    #[arg(long, value_name = "BINDINGS")]
    pub train_step: Option<String>,
    /// Preset of the trained model (states of width 384, as MiniLM's; 5 cultures, 2 classes).
    #[arg(long, default_value = "paper")]
    pub train_preset: String,
    /// Backends of the training step, comma-separated: `flex`, `wgpu`, `cuda`. Default: CUDA
    /// where it starts, and Flex.
    #[arg(long, value_delimiter = ',')]
    pub train_backends: Vec<super::train::BackendArg>,
    /// Precisions of the steps' products, comma-separated (see `calm train --precision`).
    #[arg(long, value_delimiter = ',', default_value = "highest,default")]
    pub train_precisions: Vec<PrecisionArg>,
}

pub fn run(args: &Args) -> Result<(), CliError> {
    if let Some(sizes) = &args.train_step {
        return super::train::bench_train_step(args, sizes);
    }
    let gemms = args.gemm.iter().map(|g| parse_gemm(g)).collect::<Result<Vec<_>, _>>()?;
    let (bindings, iters): (Bindings, usize) = (args.head.parse()?, args.iters);
    let device = Device::open(args.device.into())?;
    let lower = LowerOptions { precision: args.precision.into(), ..device.lower_options() };
    let name = device.name();
    eprintln!("calm: measuring the device's ceilings...");
    let peaks = calm_runtime::profile::measure_peaks(&device, iters)?;
    let fp32 = peaks.fp32_gflops;
    println!("device: {name}, precision {}", lower.precision);
    let tensor: Vec<String> = peaks.tensor_gflops.iter().map(|(u, g)| format!(", {u} {g:.1} GFLOP/s")).collect();
    println!(
        "ceilings: {} {fp32:.1} GFLOP/s{}, memory {:.1} GB/s, {:.2} µs a launch (calm_kernels::peak)\n",
        ComputeUnit::Fp32Cores,
        tensor.concat(),
        peaks.copy_gbps,
        peaks.launch_overhead_us
    );
    let mut gemm_json = Vec::new();
    for &[m, k, n] in &gemms {
        let (rows, skipped) = gemm_table(&device, [m, k, n], &lower, iters)?;
        gemm_json.push(serde_json::json!({ "m": m, "k": k, "n": n, "rows": rows, "skipped": skipped }));
    }
    let g = build(&CalmConfig::preset("paper").unwrap_or_default(), Mode::Inference)?;
    println!("CALM head, paper preset, inference, {bindings} (median of {iters}):");
    let peers = calm_runtime::device::select::catch_device(|| match &device {
        Device::Wgpu(c) => bench::head(c, &g, &bindings, &lower, iters),
        Device::Cuda(c) => bench::head(c, &g, &bindings, &lower, iters),
    })
    .map_err(|e| RunOnDeviceError::from(DeviceError::from(e)))?;
    let fused = peers.rows[0].seconds;
    for r in &peers.rows {
        println!(
            "  {:<38} {:>10.1} ms {:>6} {:<8} {:>6.2}x calm fused",
            r.name,
            r.seconds * 1e3,
            r.count,
            r.unit,
            r.seconds / fused
        );
    }
    for why in &peers.skipped {
        println!("  {why}");
    }
    if let Some(path) = args.json.as_deref() {
        let doc = serde_json::json!({
            "device": name,
            "precision": lower.precision,
            "peaks": peaks,
            "gemm": gemm_json,
            "head": { "bindings": bindings.to_string(), "rows": peers.rows, "skipped": peers.skipped },
        });
        write_file(path, serde_json::to_string_pretty(&doc).expect("json").as_bytes())?;
    }
    Ok(())
}

fn parse_gemm(gemm: &str) -> Result<[u64; 3], CliError> {
    let bad = || OtherError(format!("--gemm `{gemm}`: expected m,k,n, three positive sizes"));
    let sizes: Vec<u64> = gemm.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>().map_err(|_| bad())?;
    match sizes[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok([m, k, n]),
        _ => Err(bad().into()),
    }
}

/// One GEMM's table: calm, Burn and cubek-matmul side by side, each against calm's plain
/// matmul, and the cubek strategies that did not run, with why.
fn gemm_table(
    device: &Device,
    [m, k, n]: [u64; 3],
    lower: &LowerOptions,
    iters: usize,
) -> Result<(Vec<bench::Measurement>, Vec<String>), CliError> {
    // No "% of peak" column: the rows run on different units (FP32 pipelines, TF32 or bf16
    // tensor cores), whose ceilings are printed above.
    println!("linear + ReLU, {m}x{k} by {k}x{n}, f32 buffers (median of {iters}):");
    let (gemm_rows, cubek_skipped) = calm_runtime::device::select::catch_device(|| match device {
        Device::Wgpu(c) => bench::gemm(c, m, k, n, lower, iters),
        Device::Cuda(c) => bench::gemm(c, m, k, n, lower, iters),
    })
    .map_err(|e| RunOnDeviceError::from(DeviceError::from(e)))?;
    let calm_plain = gemm_rows.iter().find(|r| r.name == bench::CALM_PLAIN).map(|r| r.seconds).unwrap_or(f64::NAN);
    for r in &gemm_rows {
        let error = r.max_error.map(|e| format!("  error {e:.1e}")).unwrap_or_default();
        println!(
            "  {:<68} {:>9.3} ms {:>10.1} GFLOP/s {:>6.2}x calm plain{error}",
            r.name,
            r.seconds * 1e3,
            r.gflops(),
            calm_plain / r.seconds
        );
    }
    for why in &cubek_skipped {
        println!("  {why}");
    }
    println!();
    Ok((gemm_rows, cubek_skipped))
}
