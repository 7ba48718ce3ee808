//! `calm bench`: device ceilings, GEMM and CALM head, side by side in one run.

use std::path::Path;

use calm_ir::Bindings;
use calm_models::{build, CalmConfig, Mode};
use calm_passes::lower::LowerOptions;
use calm_runtime::bench;
use calm_runtime::device::select::{Device, DeviceChoice};

use super::error::{write_file, CliError, OtherError};

pub fn run(gemm: &str, head: &str, iters: usize, json: Option<&Path>) -> Result<(), CliError> {
    let sizes: Vec<u64> = gemm
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| OtherError(format!("--gemm `{gemm}`: expected m,k,n")))?;
    let [m, k, n] = sizes[..] else { return Err(OtherError(format!("--gemm `{gemm}`: expected m,k,n")).into()) };
    let bindings: Bindings = head.parse()?;
    let Device::Wgpu(client) = Device::open(DeviceChoice::Wgpu)? else { unreachable!("asked for wgpu") };
    let device = Device::Wgpu(client.clone()).name();
    let peaks = calm_runtime::profile::peaks::measure(&client, iters);
    let (peak_flops, peak_bw) = (peaks.fma_gflops, peaks.copy_gbps);
    println!("device: {device}");
    println!("peaks: FMA {peak_flops:.1} GFLOP/s, copy {peak_bw:.1} GB/s (calm_kernels::peak)\n");
    println!("linear + ReLU, {m}x{k} by {k}x{n}, f32 (median of {iters}):");
    let gemm_rows = bench::gemm(&client, m, k, n, iters);
    let burn = gemm_rows.iter().find(|r| r.name.starts_with("burn wgpu")).map(|r| r.seconds).unwrap_or(f64::NAN);
    for r in &gemm_rows {
        println!(
            "  {:<36} {:>9.2} ms {:>8.2} GFLOP/s {:>5.0}% of FMA peak {:>6.2}x burn wgpu",
            r.name,
            r.seconds * 1e3,
            r.gflops(),
            100.0 * r.gflops() / peak_flops,
            burn / r.seconds
        );
    }
    let g = build(&CalmConfig::preset("paper").unwrap_or_default(), Mode::Inference)?;
    println!("\nCALM head, paper preset, inference, {bindings} (median of {iters}):");
    let head_rows = bench::head(&client, &g, &bindings, &LowerOptions::default(), iters);
    let fused = head_rows[0].seconds;
    for r in &head_rows {
        println!(
            "  {:<38} {:>10.1} ms {:>6} {:<8} {:>6.2}x calm fused",
            r.name,
            r.seconds * 1e3,
            r.count,
            r.unit,
            r.seconds / fused
        );
    }
    if let Some(path) = json {
        let doc = serde_json::json!({
            "device": device,
            "peaks": { "fma_gflops": peak_flops, "copy_gbps": peak_bw },
            "gemm": { "m": m, "k": k, "n": n, "rows": gemm_rows },
            "head": { "bindings": bindings.to_string(), "rows": head_rows },
        });
        write_file(path, serde_json::to_string_pretty(&doc).expect("json").as_bytes())?;
    }
    Ok(())
}
