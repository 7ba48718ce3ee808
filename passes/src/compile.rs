//! The compiler pipeline: fusion passes (each verified after it runs), then lowering to a plan.

use calm_ir::{Bindings, Graph};
use thiserror::Error;

use crate::cse::cse;
use crate::fuse_attention::fuse_attention;
use crate::fuse_elementwise::fuse_elementwise;
use crate::fuse_experts::{fuse_expert_routers, fuse_experts, join_expert_results};
use crate::fuse_gumbel_pool::fuse_gumbel_pool;
use crate::fuse_matmul::fuse_matmul_epilogues;
use crate::fuse_projections::fuse_projections;
use crate::fuse_reduce::fuse_reduce_prologues;
use crate::fuse_route::fuse_route;
use crate::lower::{lower, LowerError, LowerOptions};
use crate::pipeline::{Pass, PassError, PassLog, Pipeline};
use crate::plan::KernelPlan;

/// The fusion passes, in the order they run: the CALM patterns first (they match primitives),
/// then common subexpressions merged, then the generic elementwise, epilogue and prologue
/// fusions over what is left. The pipeline removes dead code after each pass that changed the
/// graph; the expert fusion is three passes so that this happens between its steps (the
/// mixture, then its routers, then its groups' results joined).
pub fn fusion_passes() -> Vec<Pass> {
    let mut passes = vec![Pass { name: "fuse_gumbel_pool", run: fuse_gumbel_pool }];
    passes.extend(reference_passes());
    passes.extend([
        Pass { name: "fuse_projections", run: fuse_projections },
        Pass { name: "cse", run: cse },
        Pass { name: "fuse_elementwise", run: fuse_elementwise },
        Pass { name: "fuse_matmul_epilogues", run: fuse_matmul_epilogues },
        Pass { name: "fuse_reduce_prologues", run: fuse_reduce_prologues },
    ]);
    passes
}

/// The fusions worth running before the reference executor (the fusion passes run them too,
/// after the Gumbel pool's): its fused expert mixture computes
/// only the routed (unit, expert) pairs, about `k/E` of the dense experts' FLOPs, with the same
/// results and gradients (the gates are exactly 0 off the routed experts). The attention fusion
/// runs first because the expert pattern is written over fused attention. Other fusions gain
/// nothing there: the reference computes a fused op as the primitives it replaced.
pub fn reference_passes() -> Vec<Pass> {
    vec![
        Pass { name: "fuse_attention", run: fuse_attention },
        Pass { name: "fuse_route", run: fuse_route },
        Pass { name: "fuse_experts", run: fuse_experts },
        Pass { name: "fuse_expert_routers", run: fuse_expert_routers },
        Pass { name: "join_expert_results", run: join_expert_results },
    ]
}

/// `g` after [`reference_passes`]: the graph the reference executor trains and scores (only
/// routed experts computed), with the same parameters, results and gradients as `g`.
pub fn for_reference(g: &Graph) -> Result<Graph, PassError> {
    let mut g = g.clone();
    Pipeline::new(reference_passes()).run(&mut g)?;
    Ok(g)
}

#[derive(Debug, Error)]
pub enum CompileError {
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Lower(#[from] LowerError),
}

/// What [`compile`] produced: the graph after the fusion passes (unchanged without them), what
/// the passes noted, and the plan.
pub struct Compiled {
    pub graph: Graph,
    pub log: PassLog,
    pub plan: KernelPlan,
}

/// Compiles `g` for `bindings`, with the fusion passes if `fuse`.
pub fn compile(g: &Graph, bindings: &Bindings, fuse: bool, opts: &LowerOptions) -> Result<Compiled, CompileError> {
    let mut graph = g.clone();
    let passes = if fuse { fusion_passes() } else { Vec::new() };
    let report = Pipeline::new(passes).run(&mut graph)?;
    let plan = lower(&graph, bindings, opts)?;
    Ok(Compiled { graph, log: report.log, plan })
}
