//! `calm-runtime`: runs CALM graphs.
//!
//! - [`reference`]: the reference executor on Burn (any graph, op by op; f64 on CPU) and
//!   gradients through Burn's autodiff;
//! - [`params`]: the parameter store (deterministic initialisation, safetensors load and save);
//! - [`host`], [`safetensors`]: host tensors and the weight/input file format;
//! - [`inputs`]: random inputs of the right shapes for `calm run`.

pub mod host;
pub mod inputs;
pub mod params;
pub mod reference;
pub mod safetensors;
