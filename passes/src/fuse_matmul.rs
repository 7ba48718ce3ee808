//! Matmul epilogue fusion: a matmul whose only reader is an elementwise op (or fused chain) of
//! the same shape runs that op in its epilogue (bias, activation, residual add, scale), so the
//! product is never written to memory.
//!
//! Declines (and leaves the graph as it is) when the product is read elsewhere or is a graph
//! output, when the chain has several outputs, draws random numbers or reads element indices
//! (the GEMM epilogue does neither), reads non-float arguments, or reads an argument that does not
//! broadcast to the product.

use calm_ir::fused::FusedOp;
use calm_ir::infer::broadcast_shapes;
use calm_ir::program::{Instr, Program};
use calm_ir::{Graph, NodeId, Op, ValueId};

use crate::dce::dce;
use crate::pipeline::PassError;

/// The reader's program, if it is an elementwise op or chain with one output.
pub(crate) fn elementwise_program(g: &Graph, n: NodeId) -> Option<Program> {
    let node = &g.nodes[n];
    let program = match &node.op {
        Op::Fused(FusedOp::Elementwise { program, .. }) => program.clone(),
        op if op.is_elementwise() => {
            let types: Vec<_> = node.args.iter().map(|&a| g.value_type(a).dtype).collect();
            Program::of_primitive(op, &types, g.value_type(node.results[0]).dtype)?
        }
        _ => return None,
    };
    (program.outputs.len() == 1).then_some(program)
}

/// Whether the GEMM can read `extra` at each element of a product of `shape`: any argument
/// that broadcasts to it (a bias, a residual, a per-sample row `[B, 1, n]`). The lowering folds
/// the batch into the GEMM's rows only where every argument can follow them.
fn addressable(g: &Graph, extra: ValueId, product: &[calm_ir::Dim]) -> bool {
    // Symbolic dimensions compare by name, so this holds for every binding.
    broadcast_shapes(&[&g.value_type(extra).shape, product]).is_ok_and(|s| s == product)
}

/// Fuses matmul epilogues; returns whether anything changed.
pub fn fuse_matmul_epilogues(g: &mut Graph) -> Result<bool, PassError> {
    let users = g.users();
    let outputs: Vec<ValueId> = g.outputs.iter().map(|o| o.value).collect();
    let mut changed = false;
    let matmuls: Vec<NodeId> =
        g.nodes.iter().filter(|(_, n)| matches!(n.op, Op::MatMul { .. })).map(|(id, _)| id).collect();
    for m in matmuls {
        let Op::MatMul { transpose_a, transpose_b } = g.nodes[m].op else { unreachable!() };
        let product = g.nodes[m].results[0];
        let [reader] = users[product][..] else { continue };
        if outputs.contains(&product) {
            continue;
        }
        let Some(program) = elementwise_program(g, reader) else { continue };
        let reader_node = &g.nodes[reader];
        let product_shape = g.value_type(product).shape.clone();
        if g.value_type(reader_node.results[0]).shape != product_shape {
            continue;
        }
        if program.instrs.iter().any(|i| matches!(i, Instr::Uniform { .. } | Instr::Index { .. })) {
            continue;
        }
        let extras: Vec<ValueId> = reader_node.args.iter().copied().filter(|&a| a != product).collect();
        if !extras.iter().all(|&e| g.value_type(e).dtype.is_float() && addressable(g, e, &product_shape)) {
            continue;
        }
        // The reader's arguments renumbered: the product is 0, the extras 1.. in order.
        let remap = |index: u32| -> u32 {
            let v = reader_node.args[index as usize];
            if v == product {
                0
            } else {
                1 + extras.iter().position(|&e| e == v).expect("an extra") as u32
            }
        };
        let instrs = program
            .instrs
            .iter()
            .map(|i| match *i {
                Instr::Arg { index } => Instr::Arg { index: remap(index) },
                ref other => other.clone(),
            })
            .collect();
        let fused_program = Program { instrs, outputs: program.outputs.clone() };
        let mut args = g.nodes[m].args.clone();
        args.extend(&extras);
        let out = reader_node.results[0];
        let ty = g.value_type(out).clone();
        let scope = g.nodes[m].scope.clone();
        let op = Op::Fused(FusedOp::MatMulEpilogue { transpose_a, transpose_b, program: fused_program });
        let fused = g.add_node(op, args, vec![ty], &scope);
        let new = g.result(fused);
        g.replace_all_uses(out, new)
            .map_err(|e| PassError::Failed { pass: "fuse_matmul_epilogues", message: e.to_string() })?;
        changed = true;
    }
    if changed {
        dce(g)?;
    }
    Ok(changed)
}
