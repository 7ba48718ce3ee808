//! `calm-passes`: passes over the CALM IR.
//!
//! A pass is a plain function `fn(&mut Graph) -> Result<bool, PassError>` that says whether it
//! changed the graph ([`Pass`]); a [`Pipeline`] is a named list of passes that verifies the graph
//! before it starts and after every pass, and can keep the graph as it stood after a named pass.
//!
//! Passes so far: [`dce`] (dead-code elimination) and the named [`ablate`] edits. [`lower`]
//! turns a graph into a [`plan::KernelPlan`]; [`memory`] assigns its buffers to device memory
//! and checks the assignment.

pub mod ablate;
pub mod compile;
pub mod cse;
pub mod dce;
pub mod fuse_attention;
pub mod fuse_elementwise;
pub mod fuse_experts;
pub mod fuse_gumbel_pool;
pub mod fuse_matmul;
pub mod fuse_projections;
pub mod fuse_reduce;
pub mod fuse_route;
pub mod layout;
pub mod lower;
pub mod memory;
pub mod pattern;
pub mod pipeline;
pub mod plan;

pub use ablate::{ablate, ablate_all, AblateError, Ablation};
pub use dce::dce;
pub use pipeline::{Pass, PassError, PassLog, PassNote, Pipeline, PipelineReport};
