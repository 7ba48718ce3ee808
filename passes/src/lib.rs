//! `calm-passes`: passes over the CALM IR.
//!
//! A pass is a plain function `fn(&mut Graph, &mut PassLog) -> Result<bool, PassError>`
//! ([`Pass`]): it rewrites the graph, says whether it changed it, and notes in the [`PassLog`]
//! each rewrite that fired and each candidate it declined, with the reason (`calm compile --emit
//! fusions` prints the notes). A pass leaves the nodes it replaced in the graph, unread; a
//! [`Pipeline`] runs its passes in order, removes dead code ([`dce()`]) after each one that
//! changed the graph (so the next pass, the verifier and `dump_after` see a clean graph),
//! verifies the graph before the first pass and after each, and reports every step.
//!
//! The fusion passes ([`compile::fusion_passes`], in order): the CALM patterns
//! [`fuse_gumbel_pool`], [`fuse_attention`], [`fuse_route`], [`fuse_experts`] (three passes: the
//! mixture, its routers, its joined results), [`fuse_projections`]; then [`cse`]; then the
//! generic [`fuse_elementwise`], [`fuse_matmul`] (epilogues) and [`fuse_reduce`] (prologues).
//! [`compile::reference_passes`] are those the reference executor runs. [`mod@ablate`] applies
//! the named ablations as graph edits (not pipeline passes: each cleans up after itself).
//! [`lower`] turns a graph into a [`plan::KernelPlan`] (the self-contained contract with the
//! runtime: typed ids, ports with their dtypes), one file per kernel family under `lower/`;
//! [`layout`] is where tensors lie in buffers (strides, slices read in place), shared by the
//! lowering, the memory planner and the projection fusion; [`memory`] assigns the plan's buffers
//! to device memory and checks the assignment; [`compile::compile`] runs the fusion pipeline,
//! then lowers.

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
