//! `calm`: a compiler and runtime for CALM, the culturally self-aware language model.
//!
//! This crate is the `calm` command line and a thin façade over the workspace's crates:
//! [`ir`] (the typed tensor IR), [`passes`], [`kernels`], [`runtime`] and [`models`].

pub mod cli;

pub use calm_ir as ir;
pub use calm_kernels as kernels;
pub use calm_models as models;
pub use calm_passes as passes;
pub use calm_runtime as runtime;
