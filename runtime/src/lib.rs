//! `calm-runtime`: runs CALM graphs.
//!
//! - [`reference`]: the reference executor on Burn (any graph, op by op; f64 on CPU) and
//!   gradients through Burn's autodiff;
//! - [`device`]: the device executor, running a kernel plan on a CubeCL runtime;
//! - [`params`]: the parameter store (deterministic initialisation, safetensors load and save);
//! - [`host`], [`safetensors`]: host tensors and the weight/input file format;
//! - [`inputs`]: random inputs of the right shapes for `calm run`;
//! - [`limits`]: memory budgets of the host and the device, checked before allocating;
//! - [`profile`]: launches timed on the device against the roofline (`calm profile`), the
//!   device's measured ceilings, and modelled times for devices we do not have;
//! - [`cuda_target`]: CUDA C++ of a plan's kernels without a GPU, and sm_90 PTX through NVRTC;
//! - [`bench`]: side-by-side benchmarks against Burn (`calm bench`).

pub mod bench;
pub mod cuda_target;
pub mod device;
pub mod host;
pub mod inputs;
/// Re-exported from `calm_ir`, where the data readers use it too.
pub use calm_ir::limits;
pub mod parallel;
pub mod params;
pub mod profile;
pub mod reference;
pub mod safetensors;
