//! `calm compile --target cuda --emit cuda|ptx DIR`: the plan's kernels as CUDA C++ files and,
//! through NVRTC, sm_90 PTX with ptxas's resource report.

use std::path::Path;

use calm_ir::entity::EntityId;
use calm_passes::plan::{ComputeUnit, KernelPlan, LaunchId};
use calm_runtime::cuda_target::nvrtc::{Nvrtc, Resources, Toolkit};
use calm_runtime::cuda_target::{cuda_sources, CudaKernel};

use super::error::{write_file, CliError, OtherError};

/// The sm_90 target named by the issue and by `CudaRuntime` for Hopper (without the `a`
/// features: the kernels use no wgmma or TMA).
const ARCH: &str = "sm_90";

pub fn write_sources(plan: &KernelPlan, dir: &Path, ptx: bool) -> Result<(), CliError> {
    let kernels = cuda_sources(plan).map_err(|e| OtherError(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|source| CliError::Write { path: dir.to_path_buf(), source })?;
    for k in &kernels {
        write_file(&dir.join(format!("{}.cu", k.name)), k.source.as_bytes())?;
    }
    println!("wrote {} CUDA kernels ({} launches) to {}", kernels.len(), plan.launches.len(), dir.display());
    // The unit each kernel multiplies on, as the plan chose it (every launch of a kernel has
    // the same configuration, so its first says).
    let unit = |k: &CudaKernel| plan.launches[LaunchId::new(k.launches[0])].kernel.compute_unit();
    let mut index: Vec<serde_json::Value> = kernels
        .iter()
        .map(|k| {
            let mut v = serde_json::to_value(k).expect("json");
            v["unit"] = unit(k).name().into();
            v
        })
        .collect();
    let mut failures = Vec::new();
    if ptx {
        let toolkit = Toolkit::find().map_err(|e| OtherError(e.to_string()))?;
        let nvrtc = Nvrtc::load(&toolkit).map_err(|e| OtherError(e.to_string()))?;
        println!("NVRTC {} ({}), {ARCH}", nvrtc.version(), toolkit.library.display());
        println!(
            "{:<40} {:>8} {:>9} {:>10} {:>10} {:>12}  {:<12}",
            "kernel", "launches", "registers", "shared B", "stack B", "spills B", "unit"
        );
        let (mut spilling, mut worst, mut tensor) = (0, 0u32, 0);
        for (k, entry) in kernels.iter().zip(index.iter_mut()) {
            match nvrtc.compile(&k.name, &k.source, ARCH) {
                Ok(c) => {
                    write_file(&dir.join(format!("{}.ptx", k.name)), c.ptx.as_bytes())?;
                    let r = c.resources.iter().find(|r| r.function == k.entry).cloned().unwrap_or_default();
                    print_row(k, &r, unit(k));
                    // What the PTX says, not what the plan meant: tensor-core products.
                    let mma = c.ptx.contains("wmma.mma") || c.ptx.contains("mma.sync");
                    tensor += usize::from(mma);
                    entry["tensor_core_products"] = mma.into();
                    if r.spill_store_bytes + r.spill_load_bytes > 0 {
                        spilling += 1;
                    }
                    worst = worst.max(r.registers);
                    entry["ptxas"] = serde_json::to_value(&r).expect("json");
                }
                Err(e) => {
                    println!("{:<40} {:>8} failed", k.name, k.launches.len());
                    failures.push(e.to_string());
                }
            }
        }
        println!(
            "{} of {} kernels compiled for {ARCH}; most registers {worst}; {spilling} spill; {tensor} multiply on tensor \
             cores (mma in their PTX)",
            kernels.len() - failures.len(),
            kernels.len()
        );
    }
    let doc = serde_json::json!({ "arch": ARCH, "float": plan.float, "kernels": index });
    write_file(&dir.join("kernels.json"), serde_json::to_string_pretty(&doc).expect("json").as_bytes())?;
    match failures.first() {
        None => Ok(()),
        Some(first) => {
            Err(OtherError(format!("{} kernels did not compile for {ARCH}; the first: {first}", failures.len())).into())
        }
    }
}

fn print_row(k: &CudaKernel, r: &Resources, unit: ComputeUnit) {
    println!(
        "{:<40} {:>8} {:>9} {:>10} {:>10} {:>12}  {:<12}",
        k.name,
        k.launches.len(),
        r.registers,
        // ptxas counts static shared memory; CubeCL's is dynamic.
        r.shared_bytes + k.shared_bytes as u64,
        r.stack_bytes,
        r.spill_store_bytes + r.spill_load_bytes,
        unit.name()
    );
}
