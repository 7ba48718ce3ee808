//! `calm-runtime`: runs CALM graphs.
//!
//! - [`reference`]: the reference executor on Burn (any graph, op by op; f64 on CPU) and
//!   gradients through Burn's autodiff;
//! - [`device`]: the device executor, running a kernel plan on a CubeCL runtime;
//! - [`params`]: the parameter store (deterministic initialisation, safetensors load and save);
//! - [`host`], [`safetensors`]: host tensors and the weight/input file format;
//! - [`inputs`]: random inputs of the right shapes for `calm run`.

pub mod bench;
pub mod device;
pub mod host;
pub mod inputs;
pub mod params;
pub mod reference;
pub mod safetensors;
