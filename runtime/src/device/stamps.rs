//! The CUDA device's own clock around each launch. CubeCL 0.10's CUDA runtime times work with
//! the host clock and a synchronisation (`TimingMethod::System`), which adds 15–30 µs to every
//! small kernel, and it keeps its CUDA stream private, so CUDA events cannot be recorded on it.
//! Instead calm enqueues, on the same stream, a one-thread kernel that writes the GPU's
//! nanosecond `%globaltimer` between launches:
//!
//! `hold`, `stamp`, launch 0, `stamp`, launch 1, ..., launch n-1, `stamp`
//!
//! Stream order makes each stamp start after the launch before it has finished. The `hold`
//! kernel spins on the device until the host has enqueued everything behind it, so the launches
//! run back to back and the gaps between stamps are device time, not the host's enqueueing.
//! The cost of a stamp itself (its launch and its one store, measured as the gap between two
//! stamps with nothing between) is subtracted.

use cubecl::cuda::{CudaCompiler, CudaRuntime};
use cubecl::prelude::*;
use cubecl::server::{ExecutionMode, KernelArguments};
use cubecl::{CompilationError, CubeTask};
use cubecl_runtime::id::KernelId;
use cubecl_runtime::kernel::{CompiledKernel, KernelDefinition, KernelMetadata, KernelOptions};

/// CUDA C++ of the stamp: the next slot (an atomic counter in word 0) gets the global timer.
pub const STAMP_SOURCE: &str = r#"
extern "C" __global__ void calm_stamp(unsigned long long* stamps) {
    unsigned long long now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    unsigned long long slot = atomicAdd(&stamps[0], 1ull);
    stamps[1 + slot] = now;
}
"#;

/// CUDA C++ of the hold: spins until `hold[0]` nanoseconds of the global timer have passed.
pub const HOLD_SOURCE: &str = r#"
extern "C" __global__ void calm_hold(const unsigned long long* hold) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < hold[0]);
}
"#;

/// One of the two source kernels, as CubeCL's CUDA server compiles it (NVRTC) and launches it
/// (one buffer argument; the metadata pointer CubeCL appends is ignored). The server also wants
/// the compiler's representation of a kernel (for its shared memory): that of an empty CubeCL
/// kernel, which has none, as these have none.
struct SourceKernel {
    entry: &'static str,
    source: &'static str,
}

impl KernelMetadata for SourceKernel {
    fn name(&self) -> &'static str {
        self.entry
    }

    fn id(&self) -> KernelId {
        KernelId::new::<SourceKernel>().info(self.entry).cube_dim(CubeDim::new_1d(1))
    }

    fn address_type(&self) -> cubecl::ir::StorageType {
        u32::as_type_native_unchecked().storage_type()
    }
}

impl CubeTask<CudaCompiler> for SourceKernel {
    fn compile(
        &self,
        compiler: &mut CudaCompiler,
        options: &<CudaCompiler as cubecl::Compiler>::CompilationOptions,
        mode: ExecutionMode,
        address_type: cubecl::ir::StorageType,
    ) -> Result<CompiledKernel<CudaCompiler>, CompilationError> {
        let empty = KernelDefinition {
            buffers: Vec::new(),
            tensor_maps: Vec::new(),
            scalars: Vec::new(),
            cube_dim: CubeDim::new_1d(1),
            body: cubecl::ir::Scope::root(false),
            options: KernelOptions { kernel_name: self.entry.to_string(), ..KernelOptions::default() },
        };
        let repr = cubecl::Compiler::compile(compiler, empty, options, mode, address_type)?;
        Ok(CompiledKernel {
            entrypoint_name: self.entry.to_string(),
            debug_name: Some(self.entry),
            source: self.source.to_string(),
            cube_dim: CubeDim::new_1d(1),
            debug_info: None,
            repr: Some(repr),
        })
    }
}

/// The stamp kernel, for a runtime that compiles with CubeCL's CUDA compiler.
pub fn stamp_task() -> Box<dyn CubeTask<CudaCompiler>> {
    Box::new(SourceKernel { entry: "calm_stamp", source: STAMP_SOURCE })
}

/// The hold kernel, likewise.
pub fn hold_task() -> Box<dyn CubeTask<CudaCompiler>> {
    Box::new(SourceKernel { entry: "calm_hold", source: HOLD_SOURCE })
}

/// Per-launch device times from the stamps of one round: the gaps between consecutive stamps
/// less `stamp_ns`, the cost of a stamp alone (never below zero), in seconds.
pub fn launch_seconds(stamps: &[u64], stamp_ns: f64) -> Vec<f64> {
    stamps.windows(2).map(|w| (w[1].saturating_sub(w[0]) as f64 - stamp_ns).max(0.0) * 1e-9).collect()
}

/// The median gap between consecutive stamps, in nanoseconds.
fn median_gap(stamps: &[u64]) -> f64 {
    let mut gaps: Vec<u64> = stamps.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    gaps.sort_unstable();
    gaps.get(gaps.len() / 2).copied().unwrap_or(0) as f64
}

/// The stamp clock of a CUDA device.
pub struct StampClock {
    client: ComputeClient<CudaRuntime>,
    /// What one stamp costs, measured when the clock is made.
    stamp_ns: f64,
}

/// The longest calm holds the device while enqueueing one round.
const MAX_HOLD_NS: u64 = 2_000_000_000;

impl StampClock {
    pub fn new(client: ComputeClient<CudaRuntime>) -> Result<StampClock, String> {
        let mut clock = StampClock { client, stamp_ns: 0.0 };
        let empty = clock.stamped(32, &mut |_| {})?;
        clock.stamp_ns = median_gap(&empty);
        Ok(clock)
    }

    fn launch(&self, kernel: Box<dyn CubeTask<CudaCompiler>>, buffer: &cubecl::server::Handle) {
        let args = KernelArguments::new().with_buffer(buffer.clone().binding());
        self.client.launch(kernel, CubeCount::Static(1, 1, 1), args);
    }

    /// The stamps around `n` launches made by `launch(i)`, enqueued behind a hold long enough
    /// for the host to enqueue them all (doubled until it is, up to two seconds).
    fn stamped(&self, n: usize, launch: &mut dyn FnMut(usize)) -> Result<Vec<u64>, String> {
        let mut hold_ns: u64 = 2_000_000 + 50_000 * n as u64;
        loop {
            let stamps = self.client.create_from_slice(u64::as_bytes(&vec![0u64; n + 2]));
            let hold = self.client.create_from_slice(u64::as_bytes(&[hold_ns]));
            let start = std::time::Instant::now();
            self.launch(hold_task(), &hold);
            self.launch(stamp_task(), &stamps);
            for i in 0..n {
                launch(i);
                self.launch(stamp_task(), &stamps);
            }
            let enqueued = start.elapsed().as_nanos() as u64;
            let bytes = self.client.read_one(stamps).map_err(|e| format!("reading the stamps: {e:?}"))?;
            let words: &[u64] = bytemuck::cast_slice(&bytes);
            if words[0] != n as u64 + 1 {
                return Err(format!("{} of {} stamps were written", words[0], n + 1));
            }
            if enqueued < hold_ns {
                return Ok(words[1..].to_vec());
            }
            if hold_ns >= MAX_HOLD_NS {
                return Err(format!(
                    "enqueueing {n} launches took {} ms, longer than the device can be held",
                    enqueued / 1_000_000
                ));
            }
            hold_ns = (2 * hold_ns).max(2 * enqueued).min(MAX_HOLD_NS);
        }
    }

    /// Device seconds of each of `n` launches made by `launch(i)`, back to back.
    pub fn time_launches(&self, n: usize, launch: &mut dyn FnMut(usize)) -> Result<Vec<f64>, String> {
        Ok(launch_seconds(&self.stamped(n, launch)?, self.stamp_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_kernels_compile_as_cubecls_cuda_server_wants_them() {
        for task in [stamp_task(), hold_task()] {
            let options = Default::default();
            let u32_type = u32::as_type_native_unchecked().storage_type();
            let compiled =
                task.compile(&mut CudaCompiler::default(), &options, ExecutionMode::Checked, u32_type).unwrap();
            // The server unwraps the representation (for shared memory); these use none.
            assert_eq!(compiled.repr.expect("a representation").shared_memory_size(), 0);
            assert!(compiled.source.contains(&format!("void {}(", compiled.entrypoint_name)), "{}", compiled.source);
        }
    }

    #[test]
    fn launch_times_are_the_gaps_less_a_stamps_cost() {
        let stamps = [1_000, 11_000, 11_500, 31_000];
        let t = launch_seconds(&stamps, 1_000.0);
        for (got, want) in t.iter().zip([9e-6, 0.0, 18.5e-6]) {
            assert!((got - want).abs() < 1e-15, "{t:?}");
        }
        assert_eq!(t.len(), 3);
        assert_eq!(median_gap(&stamps), 10_000.0);
    }
}
