//! Choosing a device: CUDA when a driver and GPU answer, else Vulkan through wgpu (Mesa's
//! lavapipe on a machine without a GPU). Probing never panics: a runtime that fails to start is
//! reported as unavailable, with what to install.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};

use calm_passes::plan::{FloatType, KernelPlan};
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use thiserror::Error;

use super::{cuda_env, DeviceError, DeviceExecutor};
use crate::host::HostTensor;
use crate::params::ParamStore;

/// Which device to run on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA if it answers, else wgpu.
    Auto,
    Wgpu,
    Cuda,
}

#[derive(Debug, Error)]
pub enum SelectError {
    #[error("no usable device: {0}")]
    Unavailable(String),
    #[error("{0:?} buffers are not supported on this device ({1})")]
    Float(FloatType, String),
}

/// What a panic in calm's own code is, said where one is reported.
pub const CALM_BUG: &str = "a bug in calm rather than the device (please report it)";

/// A panic [`catch_device`] caught: what it said (where it happened), and whether it began in
/// calm's own code (a bug of calm's, such as a failed assertion) rather than in the runtime,
/// the driver or a library (a device fault).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caught {
    pub message: String,
    pub in_calm: bool,
}

impl std::fmt::Display for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        if self.in_calm {
            write!(f, "calm's own code failed, {CALM_BUG}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl From<Caught> for DeviceError {
    fn from(c: Caught) -> DeviceError {
        if c.in_calm {
            DeviceError::Bug(c.message)
        } else {
            DeviceError::Fault(c.message)
        }
    }
}

/// The payload calm panics with where it turns a device failure into a panic on purpose (as
/// the runtime does): counted as the device's, not as a bug of calm's.
pub struct DeviceFailure(pub String);

/// Runs device work, turning a panic inside the runtime into an error carrying its message.
/// CubeCL and wgpu panic where a device is lost, runs out of memory or rejects work, sometimes
/// on their own server threads (cudarc's "no CUDA library" panics on CubeCL's). While any work
/// is guarded, no panic of any thread is printed: each is kept with where it happened, and the
/// error says what they said. A panic at a line of calm's own source (workspace files have
/// relative paths; the runtime's, the standard library's and other crates' are absolute) is
/// calm's bug, and [`Caught::in_calm`] says so.
pub fn catch_device<T>(work: impl FnOnce() -> T) -> Result<T, Caught> {
    static INSTALL: Once = Once::new();
    static GUARDS: AtomicUsize = AtomicUsize::new(0);
    static MESSAGES: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());
    let messages = || MESSAGES.lock().unwrap_or_else(|e| e.into_inner());
    // One hook for the process, installed once: swapping hooks per call would race between
    // threads. Unguarded panics go to the hook that was there before.
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDS.load(Ordering::SeqCst) == 0 {
                return previous(info);
            }
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let deliberate = info.payload().downcast_ref::<DeviceFailure>().is_some();
            let in_calm = !deliberate && info.location().is_some_and(|l| !Path::new(l.file()).is_absolute());
            let mut m = MESSAGES.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() < 8 {
                m.push((format!("{}{at}", panic_text(info.payload())), in_calm));
            }
        }));
    });
    if GUARDS.fetch_add(1, Ordering::SeqCst) == 0 {
        messages().clear();
    }
    let result = catch_unwind(AssertUnwindSafe(work));
    let said: Vec<(String, bool)> = if result.is_err() { messages().clone() } else { Vec::new() };
    GUARDS.fetch_sub(1, Ordering::SeqCst);
    result.map_err(|_| {
        let message = said.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>().join("; ");
        let message = if message.is_empty() { "a panic without a message".into() } else { message };
        Caught { message, in_calm: said.iter().any(|&(_, in_calm)| in_calm) }
    })
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(DeviceFailure(text)) = payload.downcast_ref::<DeviceFailure>() {
        return text.clone();
    }
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .map(|t| t.lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Starts a runtime's client, turning a panic (no driver, no adapter) into `None`.
fn probe<R: Runtime>(device: &R::Device) -> Option<ComputeClient<R>> {
    catch_device(|| R::client(device)).ok()
}

/// Starts CUDA: the driver's `libcuda` readied (never a compat one), the GPU probed, then the
/// toolkit CubeCL compiles kernels with (`CUDA_PATH`, NVRTC). The driver comes first so that a
/// machine without a GPU is told that, not that a toolkit is missing. The error is one line.
fn open_cuda() -> Result<ComputeClient<CudaRuntime>, String> {
    cuda_env::prepare_cuda_driver().map_err(|e| format!("CUDA did not start: {e}"))?;
    let client = probe::<CudaRuntime>(&CudaDevice::default())
        .ok_or("CUDA did not start: install an NVIDIA driver and GPU, or use --device wgpu")?;
    cuda_env::prepare_cuda_toolkit().map_err(|e| format!("CUDA did not start: {e}"))?;
    Ok(client)
}

/// Fault injection for tests of the fault path: `CALM_INJECT_FAULT=device` makes the device
/// fail (panic, as a lost device does in the runtime) after the weights are uploaded.
fn injected_fault() {
    if std::env::var_os("CALM_INJECT_FAULT").is_some_and(|v| v == "device") {
        std::panic::panic_any(DeviceFailure("device lost (injected by CALM_INJECT_FAULT=device)".into()));
    }
}

/// A started device.
pub enum Device {
    Wgpu(ComputeClient<WgpuRuntime>),
    Cuda(ComputeClient<CudaRuntime>),
}

impl Device {
    pub fn open(choice: DeviceChoice) -> Result<Device, SelectError> {
        let cuda = || open_cuda().map(Device::Cuda);
        let wgpu = || probe::<WgpuRuntime>(&WgpuDevice::default()).map(Device::Wgpu);
        let vulkan_help = "install a Vulkan driver: on Debian `apt-get install mesa-vulkan-drivers libvulkan1` (lavapipe runs on the CPU)";
        match choice {
            DeviceChoice::Cuda => cuda().map_err(SelectError::Unavailable),
            DeviceChoice::Wgpu => wgpu().ok_or_else(|| {
                let help = match std::env::var("CUBECL_WGPU_DEFAULT_DEVICE") {
                    Ok(v) => format!(
                        "CUBECL_WGPU_DEFAULT_DEVICE={v} names no adapter of this machine; unset it, or {vulkan_help}"
                    ),
                    Err(_) => vulkan_help.to_string(),
                };
                SelectError::Unavailable(format!("wgpu found no adapter: {help}"))
            }),
            DeviceChoice::Auto => cuda()
                .ok()
                .or_else(wgpu)
                .ok_or_else(|| SelectError::Unavailable(format!("neither CUDA nor wgpu started: {vulkan_help}"))),
        }
    }

    /// How to lower plans for this device: register blocking and several attention rows per
    /// thread on a CPU adapter (lavapipe, whose threads are SIMD lanes); GPU GEMM tiles, a cube
    /// per row and one attention row per thread on CUDA and on a Vulkan GPU, where the CPU's
    /// choices would spill, with the tensor-core units the device reports (its capabilities,
    /// not its name, decide).
    pub fn lower_options(&self) -> calm_passes::lower::LowerOptions {
        use calm_passes::lower::LowerOptions;
        match self {
            Device::Wgpu(_) if cpu_adapter() => LowerOptions::default(),
            Device::Wgpu(c) => gpu_options(c),
            Device::Cuda(c) => gpu_options(c),
        }
    }

    /// Whether the device is a CPU adapter (lavapipe): SIMD lanes for threads, no tensor cores.
    pub fn is_cpu_adapter(&self) -> bool {
        matches!(self, Device::Wgpu(_)) && cpu_adapter()
    }

    /// The most bytes one buffer may hold, and the device's memory where it is known (CUDA's
    /// total; the host's available memory for a CPU adapter such as lavapipe).
    pub fn memory(&self) -> (u64, Option<(u64, String)>) {
        match self {
            Device::Cuda(c) => {
                // CubeCL's CUDA runtime sets its page size to a quarter of the device's memory.
                let page = c.properties().memory.max_page_size;
                (page, crate::limits::cap(Some((page.saturating_mul(4), "is the GPU's memory".into()))))
            }
            Device::Wgpu(c) => {
                let page = c.properties().memory.max_page_size;
                (page, if cpu_adapter() { crate::limits::host_available() } else { crate::limits::cap(None) })
            }
        }
    }

    /// Refuses a plan whose memory does not fit this device, before anything is allocated.
    pub fn check_memory(&self, plan: &KernelPlan) -> Result<(), DeviceError> {
        let (page, total) = self.memory();
        let largest = plan.memory.slots.keys().max_by_key(|&s| plan.slot_bytes(s));
        if let Some(slot) = largest {
            let value = plan
                .buffers
                .iter()
                .find(|&(b, _)| plan.memory.slot_of[b] == slot)
                .map_or("?", |(_, buf)| buf.value.as_str());
            let what = || format!("the buffer of `{value}` (one allocation)");
            crate::limits::check(
                what,
                "device",
                plan.slot_bytes(slot),
                Some((page, "is the most one buffer can hold".into())),
            )?;
        }
        let needed = plan.memory.peak_bytes;
        let bindings = plan.bindings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let what = || format!("the plan of `{}` under {bindings} (its memory plan's slots)", plan.graph);
        Ok(crate::limits::check(what, "device", needed, total)?)
    }

    /// A name for reports: the runtime and the adapter.
    pub fn name(&self) -> String {
        match self {
            Device::Wgpu(c) => format!("{} ({})", WgpuRuntime::name(c), adapter_name()),
            Device::Cuda(c) => format!("cuda ({})", CudaRuntime::name(c)),
        }
    }

    /// Runs `plan` with these weights and inputs.
    pub fn run(
        &self,
        plan: KernelPlan,
        params: &ParamStore,
        inputs: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, RunOnDeviceError> {
        self.load(plan, params)?.run(inputs)
    }

    /// `plan` ready to run on this device with these weights, uploaded once for every
    /// [`LoadedPlan::run`] after (an evaluation's batches).
    pub fn load(&self, plan: KernelPlan, params: &ParamStore) -> Result<LoadedPlan, RunOnDeviceError> {
        self.check_memory(&plan)?;
        macro_rules! go {
            ($client:expr, $rt:ty, $f:ty, $variant:ident) => {{
                let load = || -> Result<_, DeviceError> {
                    let mut exec = DeviceExecutor::<$rt, $f>::new($client.clone(), plan);
                    exec.load_params(params)?;
                    injected_fault();
                    Ok(exec)
                };
                Ok(LoadedPlan::$variant(catch_device(load).map_err(DeviceError::from)??))
            }};
        }
        if let (Device::Wgpu(c), FloatType::F16) = (self, plan.float) {
            let f16 = cubecl::ir::StorageType::Scalar(cubecl::ir::ElemType::Float(cubecl::ir::FloatKind::F16));
            if !c.properties().features.types.storage.contains_key(&f16) {
                return Err(SelectError::Float(FloatType::F16, "the adapter reports no f16 support".into()).into());
            }
        }
        match (self, plan.float) {
            (Device::Wgpu(c), FloatType::F32) => go!(c, WgpuRuntime, f32, WgpuF32),
            (Device::Wgpu(c), FloatType::F16) => go!(c, WgpuRuntime, half::f16, WgpuF16),
            (Device::Cuda(c), FloatType::F32) => go!(c, CudaRuntime, f32, CudaF32),
            (Device::Cuda(c), FloatType::F16) => go!(c, CudaRuntime, half::f16, CudaF16),
            (Device::Cuda(c), FloatType::Bf16) => go!(c, CudaRuntime, half::bf16, CudaBf16),
            (Device::Wgpu(_), FloatType::Bf16) => {
                Err(SelectError::Float(FloatType::Bf16, "WGSL has no bf16; use --float f32 or f16".into()).into())
            }
        }
    }
}

/// A plan on a device with its weights uploaded ([`Device::load`]): runs on any inputs of the
/// plan's shapes without uploading a weight again.
pub enum LoadedPlan {
    WgpuF32(DeviceExecutor<WgpuRuntime, f32>),
    WgpuF16(DeviceExecutor<WgpuRuntime, half::f16>),
    CudaF32(DeviceExecutor<CudaRuntime, f32>),
    CudaF16(DeviceExecutor<CudaRuntime, half::f16>),
    CudaBf16(DeviceExecutor<CudaRuntime, half::bf16>),
}

macro_rules! each_loaded {
    ($loaded:expr, |$exec:ident| $body:expr) => {
        match $loaded {
            LoadedPlan::WgpuF32($exec) => $body,
            LoadedPlan::WgpuF16($exec) => $body,
            LoadedPlan::CudaF32($exec) => $body,
            LoadedPlan::CudaF16($exec) => $body,
            LoadedPlan::CudaBf16($exec) => $body,
        }
    };
}

impl LoadedPlan {
    /// Runs the plan on `inputs` and reads every output back.
    pub fn run(
        &mut self,
        inputs: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, RunOnDeviceError> {
        let run = || each_loaded!(self, |exec| exec.run(inputs));
        Ok(catch_device(run).map_err(DeviceError::from)??)
    }

    /// How many times weights were uploaded to the device for this plan.
    pub fn weight_uploads(&self) -> usize {
        each_loaded!(self, |exec| exec.weight_uploads())
    }

    pub fn plan(&self) -> &KernelPlan {
        each_loaded!(self, |exec| exec.plan())
    }
}

/// The adapter behind `WgpuDevice::default()`, found once per process by the rule CubeCL 0.10's
/// `request_adapter` follows (its choice is private): `CUBECL_WGPU_DEFAULT_DEVICE` when set
/// (`DiscreteGpu(n)`, `IntegratedGpu(n)`, `VirtualGpu(n)`, `Cpu`: the n-th Vulkan adapter of
/// that type, else the n-th of type `Other`), otherwise wgpu's high-performance choice.
/// `Device::run` asks whether the device is a CPU adapter on every call (a batch at a time when
/// scoring), and a Vulkan instance per call would cost more than the question. `None`: no
/// Vulkan adapter answered.
fn opened_adapter() -> Option<&'static wgpu::AdapterInfo> {
    static INFO: OnceLock<Option<wgpu::AdapterInfo>> = OnceLock::new();
    INFO.get_or_init(|| {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let wanted = std::env::var("CUBECL_WGPU_DEFAULT_DEVICE").ok().and_then(|v| adapter_override(&v));
        match wanted {
            Some((kind, n)) => {
                let infos: Vec<wgpu::AdapterInfo> =
                    cubecl::future::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN))
                        .iter()
                        .map(|a| a.get_info())
                        .collect();
                let of = |t: wgpu::DeviceType| infos.iter().filter(move |i| i.device_type == t).cloned();
                of(kind).nth(n).or_else(|| of(wgpu::DeviceType::Other).nth(n))
            }
            None => cubecl::future::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
            }))
            .ok()
            .map(|a| a.get_info()),
        }
    })
    .as_ref()
}

/// `CUBECL_WGPU_DEFAULT_DEVICE`'s adapter type and index, spelled as CubeCL reads it.
fn adapter_override(var: &str) -> Option<(wgpu::DeviceType, usize)> {
    if var == "Cpu" {
        return Some((wgpu::DeviceType::Cpu, 0));
    }
    let kinds = [
        ("DiscreteGpu(", wgpu::DeviceType::DiscreteGpu),
        ("IntegratedGpu(", wgpu::DeviceType::IntegratedGpu),
        ("VirtualGpu(", wgpu::DeviceType::VirtualGpu),
    ];
    kinds.iter().find_map(|(prefix, kind)| {
        let n = var.strip_prefix(prefix)?.strip_suffix(')')?.parse().ok()?;
        Some((*kind, n))
    })
}

/// Whether the wgpu device runs on the CPU (lavapipe): its threads are SIMD lanes and its
/// memory is the host's.
fn cpu_adapter() -> bool {
    opened_adapter().is_some_and(|info| info.device_type == wgpu::DeviceType::Cpu)
}

/// The name and driver of the wgpu device's adapter (`llvmpipe (LLVM 15.0.6, 256 bits),
/// llvmpipe Mesa 22.3.6`): what identifies the device in reports and in the peak cache.
fn adapter_name() -> String {
    opened_adapter().map_or_else(
        || "no Vulkan adapter".into(),
        |info| format!("{}, {} {}", info.name, info.driver, info.driver_info),
    )
}

#[derive(Debug, Error)]
pub enum RunOnDeviceError {
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// The GPU lowering for what the device reports: its tensor-core units, the shared memory one
/// cube may use, and its plane width where every plane has the same and plane operations work.
fn gpu_options<R: Runtime>(client: &ComputeClient<R>) -> calm_passes::lower::LowerOptions {
    use crate::profile::peaks::microbench::tensor_units;
    let properties = client.properties();
    let hardware = &properties.hardware;
    let planes = properties.features.plane.contains(cubecl::features::Plane::Ops)
        && hardware.plane_size_min == hardware.plane_size_max;
    calm_passes::lower::LowerOptions {
        tensor_units: tensor_units(client),
        shared_memory: hardware.max_shared_memory_size as u64,
        plane_width: planes.then_some(hardware.plane_size_min),
        ..calm_passes::lower::LowerOptions::gpu()
    }
}

#[cfg(test)]
mod tests {
    use super::{adapter_override, catch_device, DeviceFailure};
    use crate::device::DeviceError;
    use wgpu::DeviceType;

    /// A failed assertion of calm's own is calm's bug; a panic from a library (here the
    /// standard library's, at an absolute path, as CubeCL's and wgpu's are) or a deliberate
    /// device failure is the device's.
    #[test]
    fn calm_bugs_and_device_faults_are_told_apart() {
        let ours = catch_device(|| assert_eq!(1 + 1, 3, "an invariant of calm's")).unwrap_err();
        assert!(ours.in_calm && ours.message.contains("an invariant of calm's"), "{ours:?}");
        assert!(matches!(DeviceError::from(ours), DeviceError::Bug(_)));
        let theirs = catch_device(|| std::panic::panic_any(DeviceFailure("device lost".into()))).unwrap_err();
        assert!(!theirs.in_calm && theirs.message.starts_with("device lost at "), "{theirs:?}");
        let e = DeviceError::from(theirs).to_string();
        assert!(e.starts_with("the device failed mid-run: device lost"), "{e}");
        // A panic inside another crate (bytemuck's cast of 3 bytes to u32s), at its own line.
        let on_a_library_line = catch_device(|| {
            let bytes = std::hint::black_box(vec![1u8, 2, 3]);
            bytemuck::cast_slice::<u8, u32>(&bytes).len()
        })
        .unwrap_err();
        assert!(!on_a_library_line.in_calm, "{on_a_library_line:?}");
    }

    #[test]
    fn adapter_overrides_read_as_cubecl_reads_them() {
        assert_eq!(adapter_override("Cpu"), Some((DeviceType::Cpu, 0)));
        assert_eq!(adapter_override("DiscreteGpu(1)"), Some((DeviceType::DiscreteGpu, 1)));
        assert_eq!(adapter_override("IntegratedGpu(0)"), Some((DeviceType::IntegratedGpu, 0)));
        assert_eq!(adapter_override("VirtualGpu(2)"), Some((DeviceType::VirtualGpu, 2)));
        // CubeCL ignores what it cannot read and takes its default choice; so does calm.
        assert_eq!(adapter_override("DiscreteGpu"), None);
        assert_eq!(adapter_override("Gpu(0)"), None);
        assert_eq!(adapter_override("DiscreteGpu(x)"), None);
    }
}
