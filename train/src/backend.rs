//! The Burn backend the reference executor trains, evaluates and encodes on: Flex on the CPU,
//! wgpu on a Vulkan device, or CUDA (with Burn's fusion) on an NVIDIA GPU; `auto` picks CUDA
//! where a driver and GPU answer, else Flex.

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// A backend of the reference executor (recorded in checkpoints and logs; a checkpoint of one
/// backend resumes or evaluates on any other).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Burn Flex on the CPU.
    Flex,
    /// Burn wgpu (the Vulkan device).
    Wgpu,
    /// Burn's CUDA backend with fusion (an NVIDIA GPU).
    Cuda,
}

/// What `--backend` asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA if it starts, else Flex.
    Auto,
    Only(Backend),
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }

    /// What the backend runs on, for the line a run prints.
    pub fn describe(self) -> &'static str {
        match self {
            Backend::Flex => "Burn Flex on the CPU",
            Backend::Wgpu => "Burn wgpu on the Vulkan device",
            Backend::Cuda => "Burn CUDA (with fusion) on the GPU",
        }
    }

    /// The backend `choice` names, started: CUDA is probed (driver, GPU, toolkit) before any
    /// Burn tensor touches it, so a machine without one gets a one-line error (or, under
    /// `auto`, Flex) instead of a panic inside Burn. Returns the backend and, where `auto`
    /// passed CUDA over, why.
    pub fn resolve(choice: BackendChoice) -> Result<(Backend, Option<String>), TrainError> {
        use calm_runtime::device::select::{Device, DeviceChoice};
        // The device's errors end with the fused executor's way out; here it is another backend.
        let cuda =
            || Device::open(DeviceChoice::Cuda).map_err(|e| e.to_string().replace("--device wgpu", "--backend flex"));
        match choice {
            BackendChoice::Only(Backend::Cuda) => match cuda() {
                Ok(_) => Ok((Backend::Cuda, None)),
                Err(e) => Err(TrainError::Backend(format!("--backend cuda: {e}"))),
            },
            BackendChoice::Only(Backend::Wgpu) => match Device::open(DeviceChoice::Wgpu) {
                Ok(_) => Ok((Backend::Wgpu, None)),
                Err(e) => Err(TrainError::Backend(format!("--backend wgpu: {e}"))),
            },
            BackendChoice::Only(Backend::Flex) => Ok((Backend::Flex, None)),
            BackendChoice::Auto => match cuda() {
                Ok(_) => Ok((Backend::Cuda, None)),
                Err(e) => Ok((Backend::Flex, Some(e))),
            },
        }
    }
}

/// Runs `$body` with `$B` the Burn backend type of `$backend` and `$device` its device:
/// the executor's code is generic over the backend, and this is the one place that names each.
#[macro_export]
macro_rules! on_backend {
    ($backend:expr, |$B:ident, $device:ident| $body:expr) => {
        match $backend {
            $crate::backend::Backend::Flex => {
                type $B = burn::backend::flex::Flex;
                let $device = burn::backend::flex::FlexDevice;
                $body
            }
            $crate::backend::Backend::Wgpu => {
                type $B = burn::backend::wgpu::Wgpu;
                let $device = burn::backend::wgpu::WgpuDevice::default();
                $body
            }
            $crate::backend::Backend::Cuda => {
                type $B = burn::backend::Cuda;
                let $device = burn::backend::cuda::CudaDevice::default();
                $body
            }
        }
    };
}
