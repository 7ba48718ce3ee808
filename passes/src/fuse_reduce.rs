//! Reduction prologue fusion: a reduction whose input is computed by an elementwise op (or
//! fused chain) read by nothing else evaluates that program as it reduces, so the product is
//! never stored. CALM's masked means (`Σ_t H · mask`) are the case this is for: at the
//! `qwen3-32b-states` preset the product is as large as `H`, and storing it then reading it
//! back costs twice what reading `H` once does.
//!
//! Declines (and leaves the graph as it is) when the product is read elsewhere or is a graph
//! output, when the chain has several outputs, when the result is an integer (integer
//! reductions run on the reference executor only), or when no argument of the chain has the
//! whole reduced shape (the kernel's shape comes from its arguments).

use calm_ir::fused::{FusedOp, Reduction};
use calm_ir::{Graph, NodeId, Op, ValueId};

use crate::fuse_matmul::elementwise_program;
use crate::pipeline::{PassError, PassLog};

const PASS: &str = "fuse_reduce_prologues";

/// Fuses reductions with the elementwise chains they read; returns whether anything changed.
pub fn fuse_reduce_prologues(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    let users = g.users();
    let outputs: Vec<ValueId> = g.outputs.iter().map(|o| o.value).collect();
    let reductions: Vec<NodeId> =
        g.nodes.iter().filter(|(_, n)| Reduction::of(&n.op).is_some()).map(|(id, _)| id).collect();
    let mut changed = false;
    for r in reductions {
        let (reduction, axes, keep_dims) = Reduction::of(&g.nodes[r].op).expect("a reduction");
        let axes = axes.to_vec();
        let input = g.nodes[r].args[0];
        let producer = g.producer(input);
        let is_elementwise = matches!(g.nodes[producer].op, Op::Fused(FusedOp::Elementwise { .. }))
            || g.nodes[producer].op.is_elementwise();
        if !is_elementwise {
            continue;
        }
        let scope = g.nodes[r].scope.clone();
        let shape = g.value_type(input).shape.clone();
        let reason = if users[input].len() != 1 || outputs.contains(&input) {
            Some("the product is read elsewhere")
        } else if g.value_type(g.nodes[r].results[0]).dtype.is_int() {
            Some("integer reductions have no device kernel")
        } else if !g.nodes[producer].args.iter().any(|&a| g.value_type(a).shape == shape) {
            Some("no argument of the chain has the reduced shape")
        } else {
            None
        };
        let found = match reason {
            Some(reason) => Err(reason.to_string()),
            None => elementwise_program(g, producer),
        };
        let program = match found {
            Ok(program) => program,
            Err(reason) => {
                log.declined(PASS, &scope, reason);
                continue;
            }
        };
        let detail = format!("{} instrs into reduce_{reduction:?} over axes {axes:?}", program.instrs.len());
        let args = g.nodes[producer].args.clone();
        let out = g.nodes[r].results[0];
        let ty = g.value_type(out).clone();
        let op = Op::Fused(FusedOp::Reduce { reduction, axes, keep_dims, program });
        let fused = g.add_node(op, args, vec![ty], &scope);
        let new = g.result(fused);
        g.replace_all_uses(out, new).map_err(|e| PassError::Failed { pass: PASS, message: e.to_string() })?;
        log.fired(PASS, &scope, detail.to_lowercase());
        changed = true;
    }
    Ok(changed)
}
