//! The microbenchmarks behind [`DevicePeaks`](super::DevicePeaks), each sized for the device it
//! runs on and each counting its own work, so the counts can be checked by hand:
//! - FP32: enough cubes to fill every SM several times over, eight independent FMA chains per
//!   thread (one chain would measure an FMA's latency, not the pipelines' throughput);
//! - tensor cores: four independent `cmma` chains per plane, four planes per cube, eight cubes
//!   per SM, for each operand type the device reports `cmma` support for;
//! - memory: copies of buffers at least 16 times the last-level cache in all (a copy that fits
//!   in the H200's 60 MB L2 measured 5.3 TB/s, more than its HBM can give);
//! - launch overhead: many launches of a kernel that does nothing, one synchronisation.
//!
//! Each is timed on the host clock around back-to-back launches and one synchronisation, long
//! enough (milliseconds) that the synchronisation is noise; the fastest of the timed runs is
//! the ceiling (slower runs measure a shared machine's neighbours).

use std::time::{Duration, Instant};

use calm_kernels::peak;
use calm_passes::plan::{ComputeUnit, Gemm};
use cubecl::ir::features::MmaConfig;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::*;

/// What sizing the microbenchmarks needs to know of a device.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceShape {
    /// Streaming multiprocessors (compute units), where the runtime reports them.
    pub sms: Option<u32>,
    /// A CPU adapter (lavapipe): threads are SIMD lanes, and there are no tensor cores.
    pub cpu: bool,
    /// The largest buffer one allocation may hold, and the device memory where known.
    pub max_buffer_bytes: u64,
    pub memory_bytes: Option<u64>,
    /// The last-level cache: the GPU's L2, or the CPU's largest cache level.
    pub llc_bytes: Option<u64>,
}

/// The SMs an H100/H200 has: the sizing when a CUDA runtime does not say.
const DEFAULT_SMS: u32 = 132;

/// `iters` rounds of 8 independent FMA chains on `width`-wide vectors per thread.
#[derive(Clone, Debug, PartialEq)]
pub struct FmaBench {
    pub width: usize,
    pub threads: u32,
    pub cubes: u32,
    pub rounds: u32,
}

impl FmaBench {
    pub fn for_device(d: &DeviceShape) -> FmaBench {
        if d.cpu {
            // lavapipe: a cube is a SIMD group; 16-wide vectors fill 256-bit lanes twice over.
            FmaBench { width: 16, threads: 64, cubes: 64, rounds: 4000 }
        } else {
            // Eight 256-thread cubes per SM (2,048 threads, an SM's most), ~2 ms on an H200.
            FmaBench { width: 4, threads: 256, cubes: 8 * d.sms.unwrap_or(DEFAULT_SMS), rounds: 8192 }
        }
    }

    /// Two FLOPs per multiply-add, 8 chains of `width` lanes per round and thread.
    pub fn flops(&self) -> f64 {
        16.0 * self.width as f64 * self.rounds as f64 * self.threads as f64 * self.cubes as f64
    }
}

/// Tensor-core products of one operand type: `16 × 16 × k` tiles, 4 chains a plane.
#[derive(Clone, Debug, PartialEq)]
pub struct MmaBench {
    pub unit: ComputeUnit,
    pub k: usize,
    pub planes_per_cube: u32,
    pub cubes: u32,
    pub rounds: u32,
}

impl MmaBench {
    /// The benchmark of `unit` (a tensor-core unit) on a device with `sms` SMs.
    pub fn for_device(unit: ComputeUnit, d: &DeviceShape) -> MmaBench {
        // tf32 products are 16 × 16 × 8 in CUDA's wmma, the 16-bit types 16 × 16 × 16.
        MmaBench::new(unit, 8 * d.sms.unwrap_or(DEFAULT_SMS), 4096)
    }

    /// `cubes` cubes of 4 planes, `rounds` rounds of products in `unit`'s operand type.
    pub fn new(unit: ComputeUnit, cubes: u32, rounds: u32) -> MmaBench {
        // tf32 products are 16 × 16 × 8 in CUDA's wmma, the 16-bit types 16 × 16 × 16.
        MmaBench { unit, k: Gemm::mma_k(unit) as usize, planes_per_cube: 4, cubes, rounds }
    }

    /// Elements of one operand tile (`16 × k`) and of the output (4 accumulator tiles a plane).
    pub fn operand_len(&self) -> usize {
        16 * self.k
    }

    pub fn out_len(&self) -> usize {
        self.planes_per_cube as usize * self.cubes as usize * 4 * 256
    }

    /// Launches `peak::mma` in this unit's operand type (bf16, f16 or tf32) on `lhs` and `rhs`
    /// of [`operand_len`](Self::operand_len) elements into `out` of [`out_len`](Self::out_len).
    ///
    /// # Safety
    /// The buffers must hold at least those lengths, in the operand type and in f32.
    pub unsafe fn launch<R: Runtime>(
        &self,
        client: &ComputeClient<R>,
        lhs: ArrayArg<R>,
        rhs: ArrayArg<R>,
        out: ArrayArg<R>,
    ) {
        let (count, dim, rounds, k) =
            (grid(self.cubes), CubeDim::new_2d(32, self.planes_per_cube), self.rounds, self.k);
        unsafe {
            match self.unit {
                ComputeUnit::TensorF16 => {
                    peak::mma::launch_unchecked::<half::f16, R>(client, count, dim, lhs, rhs, out, rounds, k)
                }
                ComputeUnit::TensorTf32 => {
                    peak::mma::launch_unchecked::<tf32, R>(client, count, dim, lhs, rhs, out, rounds, k)
                }
                _ => peak::mma::launch_unchecked::<half::bf16, R>(client, count, dim, lhs, rhs, out, rounds, k),
            }
        }
    }

    /// `2 · 16 · 16 · k` FLOPs a product, 4 chains per plane and round.
    pub fn flops(&self) -> f64 {
        2.0 * 256.0 * self.k as f64 * 4.0 * self.rounds as f64 * self.planes_per_cube as f64 * self.cubes as f64
    }

    /// One operand tile's bytes, every element 0.01 (tf32 is stored as f32).
    fn operand_bytes(&self) -> Vec<u8> {
        let len = self.operand_len();
        match self.unit {
            ComputeUnit::TensorF16 => half::f16::as_bytes(&vec![half::f16::from_f32(0.01); len]).to_vec(),
            ComputeUnit::TensorTf32 => f32::as_bytes(&vec![0.01f32; len]).to_vec(),
            _ => half::bf16::as_bytes(&vec![half::bf16::from_f32(0.01); len]).to_vec(),
        }
    }

    /// The `cmma` configuration CubeCL must report for this benchmark to run.
    pub fn config(&self) -> MmaConfig {
        mma_config(self.unit)
    }
}

/// The `cmma` product a tensor-core unit stands for (what the benchmark and the tensor-core GEMM
/// run): `16 × 16 × k` of its operand type into f32, `k` as [`Gemm::mma_k`] says.
pub fn mma_config(unit: ComputeUnit) -> MmaConfig {
    let operand = |kind| ElemType::Float(kind).into();
    let kind = match unit {
        ComputeUnit::TensorF16 => FloatKind::F16,
        ComputeUnit::TensorTf32 => FloatKind::TF32,
        _ => FloatKind::BF16,
    };
    MmaConfig {
        a_type: operand(kind),
        b_type: operand(kind),
        cd_type: operand(FloatKind::F32),
        m: 16,
        k: Gemm::mma_k(unit),
        n: 16,
    }
}

/// The tensor-core units the tensor-core GEMM may use on the device: the products it reports
/// (`cmma`), on planes of exactly 32 units (the GEMM gives each 32-unit plane a quarter of its
/// tile; CUDA's warps, not every Vulkan device's subgroups).
pub fn tensor_units<R: Runtime>(client: &ComputeClient<R>) -> Vec<ComputeUnit> {
    let hardware = &client.properties().hardware;
    if (hardware.plane_size_min, hardware.plane_size_max) != (32, 32) {
        return Vec::new();
    }
    let cmma = &client.features().matmul.cmma;
    ComputeUnit::ALL.into_iter().filter(|&u| u.is_tensor_core() && cmma.contains(&mma_config(u))).collect()
}

/// `dst = src` over `buffers` pairs of `bytes` of f32 each, in `width`-wide vectors, one pair
/// after the other, `reps` times a timed run. Several pairs where one allocation cannot hold
/// the whole working set (wgpu's buffers are limited to a few hundred MiB).
#[derive(Clone, Debug, PartialEq)]
pub struct CopyBench {
    pub bytes: u64,
    pub buffers: u32,
    pub width: usize,
    pub reps: u32,
}

/// Threads per cube of the copy and the granularity of its buffer.
const COPY_THREADS: u32 = 256;

impl CopyBench {
    pub fn for_device(d: &DeviceShape) -> CopyBench {
        // 16 times the last-level cache, so almost every byte comes from memory; on a GPU at
        // least 1 GiB (16 × the H200's 60 MB L2 is 0.94 GiB). Two buffers must fit one
        // allocation each and, together, half the device's memory.
        let llc = d.llc_bytes.unwrap_or(32 << 20);
        let floor: u64 = if d.cpu { 256 << 20 } else { 1 << 30 };
        let mut total = (16 * llc).max(floor);
        if let Some(memory) = d.memory_bytes {
            total = total.min(memory / 4);
        }
        let width = if d.cpu { 16 } else { 4 };
        let grain = (width as u64) * 4 * COPY_THREADS as u64;
        let bytes = (total.min(d.max_buffer_bytes) / grain).max(1) * grain;
        let buffers = total.div_ceil(bytes).min(64) as u32;
        CopyBench { bytes, buffers, width, reps: if d.cpu { 1 } else { 4 } }
    }

    /// Bytes moved a timed run: each byte of every pair read once and written once, `reps`
    /// times.
    pub fn moved(&self) -> f64 {
        2.0 * self.bytes as f64 * self.buffers as f64 * self.reps as f64
    }

    fn vectors(&self) -> usize {
        self.bytes as usize / (4 * self.width)
    }
}

/// `launches` launches of a kernel that does nothing, then one synchronisation.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchBench {
    pub launches: u32,
}

impl LaunchBench {
    /// What one launch costs: the run's time less a synchronisation's alone, per launch.
    pub fn per_launch(&self, run: Duration, sync_alone: Duration) -> f64 {
        run.saturating_sub(sync_alone).as_secs_f64() / self.launches.max(1) as f64
    }
}

/// The host-clock times of `iters` runs of `f` after one untimed run.
fn timed_runs(iters: usize, mut f: impl FnMut()) -> Vec<Duration> {
    f();
    (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

/// The median of `iters` timed runs of `f` (host clock) after one untimed run.
pub fn median(iters: usize, f: impl FnMut()) -> Duration {
    let mut times = timed_runs(iters, f);
    times.sort();
    times[times.len() / 2]
}

/// The fastest of `iters` timed runs of `f` after one untimed run.
pub(super) fn fastest(iters: usize, f: impl FnMut()) -> Duration {
    timed_runs(iters, f).into_iter().min().expect("at least one run")
}

/// Waits for everything enqueued on `client`'s device.
pub(crate) fn sync<R: Runtime>(client: &ComputeClient<R>) {
    cubecl::future::block_on(client.sync()).expect("device sync");
}

/// A one-dimensional grid of `cubes` within the 65,535-per-dimension limit.
fn grid(cubes: u32) -> CubeCount {
    CubeCount::Static(cubes.min(65_535), cubes.div_ceil(65_535), 1)
}

impl FmaBench {
    pub(super) fn run<R: Runtime>(&self, client: &ComputeClient<R>, iters: usize) -> f64 {
        let threads = self.threads as usize * self.cubes as usize;
        let out = client.empty(threads * self.width * 4);
        let t = fastest(iters, || {
            unsafe {
                peak::fma::launch_unchecked::<R>(
                    client,
                    grid(self.cubes),
                    CubeDim::new_1d(self.threads),
                    self.width,
                    ArrayArg::from_raw_parts(out.clone(), threads),
                    self.rounds,
                )
            };
            sync(client);
        });
        self.flops() / t.as_secs_f64()
    }
}

impl MmaBench {
    /// FLOP/s, or `None` where the device has no `cmma` for this operand type.
    pub(super) fn run<R: Runtime>(&self, client: &ComputeClient<R>, iters: usize) -> Option<f64> {
        if !client.features().matmul.cmma.contains(&self.config()) {
            return None;
        }
        let (tile, out_len) = (self.operand_len(), self.out_len());
        let operand = self.operand_bytes();
        let (lhs, rhs) = (client.create_from_slice(&operand), client.create_from_slice(&operand));
        let out = client.empty(out_len * 4);
        // SAFETY: the buffers were made above with exactly the lengths `launch` takes.
        let launch = || unsafe {
            let arg = |h: &cubecl::server::Handle, len| ArrayArg::from_raw_parts(h.clone(), len);
            self.launch(client, arg(&lhs, tile), arg(&rhs, tile), arg(&out, out_len))
        };
        let t = fastest(iters, || {
            launch();
            sync(client);
        });
        Some(self.flops() / t.as_secs_f64())
    }
}

impl CopyBench {
    pub(super) fn run<R: Runtime>(&self, client: &ComputeClient<R>, iters: usize) -> f64 {
        let n = self.bytes as usize / 4;
        let ones = vec![1.0f32; n];
        let pairs: Vec<_> =
            (0..self.buffers).map(|_| (client.create_from_slice(f32::as_bytes(&ones)), client.empty(n * 4))).collect();
        drop(ones);
        let units = self.vectors();
        let cubes = (units as u32).div_ceil(COPY_THREADS);
        let t = fastest(iters, || {
            for _ in 0..self.reps {
                for (src, dst) in &pairs {
                    unsafe {
                        peak::copy::launch_unchecked::<R>(
                            client,
                            grid(cubes),
                            CubeDim::new_1d(COPY_THREADS),
                            self.width,
                            ArrayArg::from_raw_parts(src.clone(), units),
                            ArrayArg::from_raw_parts(dst.clone(), units),
                        )
                    };
                }
            }
            sync(client);
        });
        self.moved() / t.as_secs_f64()
    }
}

impl LaunchBench {
    /// Seconds per launch.
    pub(super) fn run<R: Runtime>(&self, client: &ComputeClient<R>, iters: usize) -> f64 {
        let out = client.empty(4);
        let sync_alone = fastest(iters, || sync(client));
        let run = fastest(iters, || {
            for _ in 0..self.launches {
                unsafe {
                    peak::nothing::launch_unchecked::<R>(
                        client,
                        CubeCount::Static(1, 1, 1),
                        CubeDim::new_1d(32),
                        ArrayArg::from_raw_parts(out.clone(), 1),
                    )
                };
            }
            sync(client);
        });
        self.per_launch(run, sync_alone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200() -> DeviceShape {
        DeviceShape {
            sms: Some(132),
            cpu: false,
            max_buffer_bytes: 35 << 30,
            memory_bytes: Some(141 << 30),
            llc_bytes: Some(60 << 20),
        }
    }

    #[test]
    fn the_fp32_benchmark_counts_two_flops_per_multiply_add() {
        let b = FmaBench::for_device(&h200());
        // 1,056 cubes of 256 threads, each 8 chains × 4 lanes × 8,192 rounds of one FMA.
        assert_eq!((b.cubes, b.threads, b.width, b.rounds), (1056, 256, 4, 8192));
        assert_eq!(b.flops(), 2.0 * 8.0 * 4.0 * 8192.0 * 256.0 * 1056.0);
        let cpu = FmaBench::for_device(&DeviceShape { cpu: true, sms: None, ..h200() });
        assert_eq!(cpu.flops(), 2.0 * 8.0 * 16.0 * 4000.0 * 64.0 * 64.0);
    }

    #[test]
    fn the_tensor_benchmark_counts_each_product() {
        let bf16 = MmaBench::for_device(ComputeUnit::TensorBf16, &h200());
        // 16 × 16 × 16 products: 8,192 FLOPs each; 4 chains, 4,096 rounds, 4 × 1,056 planes.
        assert_eq!(bf16.flops(), 8192.0 * 4.0 * 4096.0 * 4.0 * 1056.0);
        let tf32 = MmaBench::for_device(ComputeUnit::TensorTf32, &h200());
        assert_eq!((tf32.k, tf32.flops()), (8, bf16.flops() / 2.0));
        assert_eq!(tf32.config().k, 8);
        assert_eq!(bf16.config().a_type, ElemType::Float(FloatKind::BF16).into());
    }

    #[test]
    fn the_copy_is_sixteen_caches_and_counts_read_and_write() {
        // 16 × 60 MiB is under 1 GiB: a GPU copies at least 1 GiB, four times a run.
        let b = CopyBench::for_device(&h200());
        assert_eq!((b.bytes, b.buffers, b.reps), (1 << 30, 1, 4));
        assert_eq!(b.moved(), 2.0 * 4.0 * (1u64 << 30) as f64);
        // A larger cache: 16 × 128 MiB.
        let big = CopyBench::for_device(&DeviceShape { llc_bytes: Some(128 << 20), ..h200() });
        assert_eq!((big.bytes, big.buffers), (2 << 30, 1));
        // One allocation holds less: whole cubes of vectors per buffer, pairs enough for 1 GiB.
        let small = CopyBench::for_device(&DeviceShape { max_buffer_bytes: 100_000_000, ..h200() });
        assert_eq!((small.bytes, small.buffers), (100_000_000 / 4096 * 4096, 11));
        assert_eq!(small.moved(), 2.0 * small.bytes as f64 * 11.0 * 4.0);
        // lavapipe: 16 × a 32 MiB cache in 128 MiB buffers (wgpu's largest), once a run.
        let cpu = DeviceShape { cpu: true, llc_bytes: Some(32 << 20), max_buffer_bytes: 128 << 20, ..h200() };
        let cpu = CopyBench::for_device(&cpu);
        assert_eq!((cpu.bytes, cpu.buffers, cpu.reps, cpu.width), (128 << 20, 4, 1, 16));
        // Never more than a quarter of the device's memory.
        let tiny = CopyBench::for_device(&DeviceShape { memory_bytes: Some(1 << 30), ..h200() });
        assert_eq!((tiny.bytes, tiny.buffers), (256 << 20, 1));
    }

    #[test]
    fn launch_overhead_is_per_launch_beyond_a_bare_synchronisation() {
        let b = LaunchBench { launches: 200 };
        let per = b.per_launch(Duration::from_micros(1_020), Duration::from_micros(20));
        assert!((per - 5e-6).abs() < 1e-12, "{per}");
        assert_eq!(b.per_launch(Duration::from_micros(10), Duration::from_micros(20)), 0.0);
    }
}
