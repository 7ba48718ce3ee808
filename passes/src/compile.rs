//! The compiler pipeline: fusion passes (each verified after it runs), then lowering to a plan.

use calm_ir::{Bindings, Graph};
use thiserror::Error;

use crate::fuse_elementwise::fuse_elementwise;
use crate::fuse_matmul::fuse_matmul_epilogues;
use crate::lower::{lower, LowerError, LowerOptions};
use crate::pipeline::{Pass, PassError, Pipeline};
use crate::plan::KernelPlan;

/// The fusion passes, in the order they run.
pub fn fusion_passes() -> Vec<Pass> {
    vec![
        Pass { name: "fuse_elementwise", run: fuse_elementwise },
        Pass { name: "fuse_matmul_epilogues", run: fuse_matmul_epilogues },
    ]
}

#[derive(Debug, Error)]
pub enum CompileError {
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Lower(#[from] LowerError),
}

/// The graph after the fusion passes (`fuse` false: unchanged), and its plan for `bindings`.
pub fn compile(
    g: &Graph,
    bindings: &Bindings,
    fuse: bool,
    opts: &LowerOptions,
) -> Result<(Graph, KernelPlan), CompileError> {
    let mut g = g.clone();
    let passes = if fuse { fusion_passes() } else { Vec::new() };
    Pipeline::new(passes).run(&mut g)?;
    let plan = lower(&g, bindings, opts)?;
    Ok((g, plan))
}
