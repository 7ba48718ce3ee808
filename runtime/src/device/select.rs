//! Choosing a device: CUDA when a driver and GPU answer, else Vulkan through wgpu (Mesa's
//! lavapipe on a machine without a GPU). Probing never panics: a runtime that fails to start is
//! reported as unavailable, with what to install.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use calm_ir::Graph;
use calm_passes::plan::{FloatType, KernelPlan};
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use thiserror::Error;

use super::{DeviceError, DeviceExecutor};
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

/// Starts a runtime's client, turning a panic (no driver, no adapter) into `None` and keeping
/// the panic message off the terminal.
fn probe<R: Runtime>(device: &R::Device) -> Option<ComputeClient<R>> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let client = catch_unwind(AssertUnwindSafe(|| R::client(device))).ok();
    std::panic::set_hook(hook);
    client
}

/// A started device.
pub enum Device {
    Wgpu(ComputeClient<WgpuRuntime>),
    Cuda(ComputeClient<CudaRuntime>),
}

impl Device {
    pub fn open(choice: DeviceChoice) -> Result<Device, SelectError> {
        let cuda = || probe::<CudaRuntime>(&CudaDevice::default()).map(Device::Cuda);
        let wgpu = || probe::<WgpuRuntime>(&WgpuDevice::default()).map(Device::Wgpu);
        let vulkan_help = "install a Vulkan driver: on Debian `apt-get install mesa-vulkan-drivers libvulkan1` (lavapipe runs on the CPU)";
        match choice {
            DeviceChoice::Cuda => cuda().ok_or_else(|| {
                SelectError::Unavailable(
                    "CUDA did not start: install an NVIDIA driver and GPU, or use --device wgpu".into(),
                )
            }),
            DeviceChoice::Wgpu => {
                wgpu().ok_or_else(|| SelectError::Unavailable(format!("wgpu found no adapter: {vulkan_help}")))
            }
            DeviceChoice::Auto => cuda()
                .or_else(wgpu)
                .ok_or_else(|| SelectError::Unavailable(format!("neither CUDA nor wgpu started: {vulkan_help}"))),
        }
    }

    /// How to lower plans for this device: GPU GEMM tiles on CUDA, register blocking on Vulkan
    /// (where the only device here is lavapipe, on the CPU).
    pub fn lower_options(&self) -> calm_passes::lower::LowerOptions {
        match self {
            Device::Wgpu(_) => calm_passes::lower::LowerOptions::default(),
            Device::Cuda(_) => calm_passes::lower::LowerOptions::gpu(),
        }
    }

    /// A name for reports: the runtime and the adapter.
    pub fn name(&self) -> String {
        match self {
            Device::Wgpu(c) => format!("{} ({})", WgpuRuntime::name(c), vulkan_adapters()),
            Device::Cuda(c) => format!("cuda ({})", CudaRuntime::name(c)),
        }
    }

    /// Runs `plan` (compiled from `g`) with these weights and inputs.
    pub fn run(
        &self,
        g: &Graph,
        plan: KernelPlan,
        params: &ParamStore,
        inputs: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, RunOnDeviceError> {
        let types = g.outputs.iter().map(|o| g.value_type(o.value).dtype).collect();
        macro_rules! go {
            ($client:expr, $rt:ty, $f:ty) => {{
                let mut exec = DeviceExecutor::<$rt, $f>::new($client.clone(), plan, types);
                exec.load_params(params)?;
                Ok(exec.run(inputs)?)
            }};
        }
        if let (Device::Wgpu(c), FloatType::F16) = (self, plan.float) {
            let f16 = cubecl::ir::StorageType::Scalar(cubecl::ir::ElemType::Float(cubecl::ir::FloatKind::F16));
            if !c.properties().features.types.storage.contains_key(&f16) {
                return Err(SelectError::Float(FloatType::F16, "the adapter reports no f16 support".into()).into());
            }
        }
        match (self, plan.float) {
            (Device::Wgpu(c), FloatType::F32) => go!(c, WgpuRuntime, f32),
            (Device::Wgpu(c), FloatType::F16) => go!(c, WgpuRuntime, half::f16),
            (Device::Cuda(c), FloatType::F32) => go!(c, CudaRuntime, f32),
            (Device::Cuda(c), FloatType::F16) => go!(c, CudaRuntime, half::f16),
            (Device::Cuda(c), FloatType::Bf16) => go!(c, CudaRuntime, half::bf16),
            (Device::Wgpu(_), FloatType::Bf16) => {
                Err(SelectError::Float(FloatType::Bf16, "WGSL has no bf16; use --float f32 or f16".into()).into())
            }
        }
    }
}

/// The names and drivers of the Vulkan adapters (`llvmpipe (LLVM 15.0.6, 256 bits), Mesa
/// 22.3.6`): what identifies the device behind wgpu's default choice in reports and caches.
fn vulkan_adapters() -> String {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let names: Vec<String> = cubecl::future::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN))
        .iter()
        .map(|a| {
            let info = a.get_info();
            format!("{}, {} {}", info.name, info.driver, info.driver_info)
        })
        .collect();
    if names.is_empty() {
        "no Vulkan adapter".into()
    } else {
        names.join("; ")
    }
}

#[derive(Debug, Error)]
pub enum RunOnDeviceError {
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}
