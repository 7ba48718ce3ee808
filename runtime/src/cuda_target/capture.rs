//! A CubeCL runtime that compiles instead of running: its server turns every launched kernel
//! into CUDA C++ with CubeCL's own CUDA compiler (`CudaCompiler`, the one `CudaRuntime` uses)
//! and records it. Running a plan's launches through the ordinary executor on this runtime gives
//! the CUDA source of exactly the kernels the plan launches, configured as it configures them,
//! without a GPU or a driver. Memory is never allocated: no kernel runs.

use std::sync::{Arc, Mutex};

use cubecl::cuda::{CudaCompiler, CudaRuntime};
use cubecl::ir::features::Plane;
use cubecl::ir::{DeviceProperties, HardwareProperties, MemoryDeviceProperties, VectorSize};
use cubecl::prelude::*;
use cubecl::server::{
    Binding, ComputeServer, CopyDescriptor, ExecutionMode, KernelArguments, ProfileError, ProfilingToken,
    ServerCommunication, ServerError, ServerUtilities,
};
use cubecl_common::backtrace::BackTrace;
use cubecl_common::bytes::Bytes;
use cubecl_common::device::{Device, DeviceId, DeviceService, ServerUtilitiesHandle};
use cubecl_common::future::DynFut;
use cubecl_common::profile::{ProfileDuration, TimingMethod};
use cubecl_common::stream_id::StreamId;
use cubecl_cpp::shared::{CompilationOptions, CppSupportedFeatures};
use cubecl_runtime::allocator::ContiguousMemoryLayoutPolicy;
use cubecl_runtime::compiler::CubeTask;
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::memory_management::{ManagedMemoryHandle, MemoryAllocationMode, MemoryUsage};
use cubecl_runtime::storage::{ComputeStorage, ManagedResource, StorageHandle, StorageId};
use cubecl_runtime::timestamp_profiler::TimestampProfiler;
use cubecl_zspace::{Shape, Strides};

/// One kernel as CUDA C++.
#[derive(Clone, Debug)]
pub struct CapturedKernel {
    /// The `extern "C" __global__` function's name.
    pub entry: String,
    /// CubeCL's identity of the kernel and its configuration (the generated text is not
    /// stable between runs: CubeCL emits its helper structs in hash order).
    pub id: String,
    pub source: String,
    /// Dynamic shared memory per cube (CubeCL allocates all shared memory dynamically, so
    /// ptxas's static `smem` figure does not count it).
    pub shared_bytes: usize,
    pub cube_dim: [u32; 3],
    /// The grid it was launched with (`None` for a dynamic count).
    pub cube_count: Option<[u32; 3]>,
}

/// What the server has compiled, in launch order, or the first compilation error.
static CAPTURED: Mutex<Vec<Result<CapturedKernel, String>>> = Mutex::new(Vec::new());
/// Serialises users of [`CAPTURED`] (each capture drains it).
pub(super) static CAPTURE: Mutex<()> = Mutex::new(());

pub(super) fn take_captured() -> Vec<Result<CapturedKernel, String>> {
    std::mem::take(&mut *CAPTURED.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The (only) device of the capture runtime.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct CaptureDevice;

/// A device type id no CubeCL runtime uses, so the capture server never shares a device
/// runner's identity with a real one.
const CAPTURE_TYPE_ID: u16 = 0xCA11;

impl Device for CaptureDevice {
    fn from_id(_: DeviceId) -> Self {
        CaptureDevice
    }
    fn to_id(&self) -> DeviceId {
        DeviceId { type_id: CAPTURE_TYPE_ID, index_id: 0 }
    }
}

/// The target: Hopper (sm_90), as `CudaRuntime` describes an H100/H200 to CubeCL.
pub const ARCH: u32 = 90;

#[derive(Debug, Clone)]
pub struct CaptureRuntime;

impl Runtime for CaptureRuntime {
    type Compiler = CudaCompiler;
    type Server = CaptureServer;
    type Device = CaptureDevice;

    fn client(device: &Self::Device) -> ComputeClient<Self> {
        ComputeClient::load(device)
    }
    fn name(_: &ComputeClient<Self>) -> &'static str {
        "cuda source (sm_90)"
    }
    fn max_cube_count() -> (u32, u32, u32) {
        CudaRuntime::max_cube_count()
    }
    fn can_read_tensor(shape: &Shape, strides: &Strides) -> bool {
        CudaRuntime::can_read_tensor(shape, strides)
    }
    fn target_properties() -> cubecl::ir::TargetProperties {
        CudaRuntime::target_properties()
    }
    fn enumerate_devices(_: u16, _: &()) -> Vec<DeviceId> {
        vec![CaptureDevice.to_id()]
    }
}

/// Storage that holds nothing: the capture server allocates no memory.
#[derive(Debug, Default)]
pub struct NoStorage;

impl ComputeStorage for NoStorage {
    type Resource = ();
    fn alignment(&self) -> usize {
        256
    }
    fn get(&mut self, _: &StorageHandle) {}
    fn alloc(&mut self, _: u64) -> Result<StorageHandle, cubecl::server::IoError> {
        Err(cubecl::server::IoError::UnsupportedIoOperation { backtrace: BackTrace::capture() })
    }
    fn dealloc(&mut self, _: StorageId) {}
    fn flush(&mut self) {}
}

#[derive(Debug)]
pub struct CaptureServer {
    options: CompilationOptions,
    timestamps: TimestampProfiler,
    utilities: Arc<ServerUtilities<Self>>,
}

/// An H100/H200 as `CudaRuntime` reports one (sm_90, 132 SMs, 227 KiB of shared memory per
/// block, warp 32), with the features CubeCL enables for sm_90 that our kernels can meet.
fn hopper_properties() -> DeviceProperties {
    let hardware = HardwareProperties {
        load_width: 128,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: 1024,
        max_shared_memory_size: 227 * 1024,
        max_cube_count: (i32::MAX as u32, u16::MAX as u32, u16::MAX as u32),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: Some(132),
        num_tensor_cores: Some(4),
        min_tensor_cores_dim: Some(8),
        num_cpu_cores: None,
        max_vector_size: VectorSize::MAX,
    };
    let memory = MemoryDeviceProperties { max_page_size: 35 << 30, alignment: 512 };
    let mut props = DeviceProperties::new(Default::default(), memory, hardware, TimingMethod::System);
    cubecl_cpp::register_supported_types(&mut props);
    props.features.plane.insert(Plane::Ops);
    props.features.plane.insert(Plane::Sync);
    props.features.plane.insert(Plane::NonUniformControlFlow);
    props.features.memory_reinterpret = true;
    props.features.alignment = true;
    props
}

impl DeviceService for CaptureServer {
    fn init(_: DeviceId) -> Self {
        let utilities = Arc::new(ServerUtilities::new(
            hopper_properties(),
            Arc::new(ServerLogger::default()),
            (),
            ContiguousMemoryLayoutPolicy::new(512),
        ));
        // As `CudaRuntime` compiles for sm_90.
        let options = CompilationOptions {
            warp_size: 32,
            supports_features: CppSupportedFeatures {
                grid_constants: true,
                clusters: true,
                fast_math: true,
                fast_tanh: true,
                elect_sync: true,
            },
        };
        CaptureServer { options, timestamps: TimestampProfiler::default(), utilities }
    }
    fn utilities(&self) -> ServerUtilitiesHandle {
        self.utilities.clone() as ServerUtilitiesHandle
    }
}

impl ServerCommunication for CaptureServer {
    const SERVER_COMM_ENABLED: bool = false;
}

fn nothing_here() -> ServerError {
    ServerError::Generic { reason: "the CUDA capture runtime holds no memory".into(), backtrace: BackTrace::capture() }
}

impl ComputeServer for CaptureServer {
    type Kernel = Box<dyn CubeTask<CudaCompiler>>;
    type Info = ();
    type MemoryLayoutPolicy = ContiguousMemoryLayoutPolicy;
    type Storage = NoStorage;

    fn initialize_memory(&mut self, _: ManagedMemoryHandle, _: u64, _: StreamId) {}

    fn logger(&self) -> Arc<ServerLogger> {
        self.utilities.logger.clone()
    }

    fn utilities(&self) -> Arc<ServerUtilities<Self>> {
        self.utilities.clone()
    }

    fn read(&mut self, _: Vec<CopyDescriptor>, _: StreamId) -> DynFut<Result<Vec<Bytes>, ServerError>> {
        Box::pin(async { Err(nothing_here()) })
    }

    fn write(&mut self, _: Vec<(CopyDescriptor, Bytes)>, _: StreamId) {}

    fn sync(&mut self, _: StreamId) -> DynFut<Result<(), ServerError>> {
        Box::pin(async { Ok(()) })
    }

    fn get_resource(&mut self, _: Binding, _: StreamId) -> Result<ManagedResource<()>, ServerError> {
        Err(nothing_here())
    }

    unsafe fn launch(
        &mut self,
        kernel: Self::Kernel,
        count: CubeCount,
        _: KernelArguments,
        mode: ExecutionMode,
        _: StreamId,
    ) {
        let id = format!("{:?}", kernel.id());
        let compiled = kernel
            .compile(&mut Default::default(), &self.options, mode, kernel.address_type())
            .map(|k| CapturedKernel {
                entry: k.entrypoint_name,
                id,
                shared_bytes: k.repr.as_ref().map_or(0, |r| r.shared_memory_size()),
                source: k.source,
                cube_dim: [k.cube_dim.x, k.cube_dim.y, k.cube_dim.z],
                cube_count: match count {
                    CubeCount::Static(x, y, z) => Some([x, y, z]),
                    _ => None,
                },
            })
            .map_err(|e| format!("{e}"));
        CAPTURED.lock().unwrap_or_else(|e| e.into_inner()).push(compiled);
    }

    fn flush(&mut self, _: StreamId) -> Result<(), ServerError> {
        Ok(())
    }

    fn memory_usage(&mut self, _: StreamId) -> Result<MemoryUsage, ServerError> {
        Err(nothing_here())
    }

    fn memory_cleanup(&mut self, _: StreamId) {}

    fn start_profile(&mut self, _: StreamId) -> Result<ProfilingToken, ServerError> {
        Ok(self.timestamps.start())
    }

    fn end_profile(&mut self, _: StreamId, token: ProfilingToken) -> Result<ProfileDuration, ProfileError> {
        self.timestamps.stop(token)
    }

    fn allocation_mode(&mut self, _: MemoryAllocationMode, _: StreamId) {}
}
