//! Matmul epilogue fusion: a matmul whose only reader is an elementwise op (or fused chain) of
//! the same shape runs that op in its epilogue (bias, activation, residual add, scale), so the
//! product is never written to memory.
//!
//! Declines (and leaves the graph as it is) when the product is read elsewhere or is a graph
//! output, when the chain has several outputs, draws random numbers or reads element indices
//! (the GEMM epilogue does neither), reads non-float arguments, or reads an argument that does not
//! broadcast to the product. Every matmul is noted: what its epilogue took, or why it took none.

use calm_ir::entity::SecondaryMap;
use calm_ir::fused::FusedOp;
use calm_ir::infer::broadcast_shapes;
use calm_ir::program::{Instr, Program};
use calm_ir::{Graph, NodeId, Op, ValueId};

use crate::pipeline::{PassError, PassLog};

const PASS: &str = "fuse_matmul_epilogues";

/// The program of node `n`, if it is an elementwise op or chain with one output; else why not.
pub(crate) fn elementwise_program(g: &Graph, n: NodeId) -> Result<Program, String> {
    let node = &g.nodes[n];
    let program = match &node.op {
        Op::Fused(FusedOp::Elementwise { program, .. }) => program.clone(),
        op if op.is_elementwise() => {
            let types: Vec<_> = node.args.iter().map(|&a| g.value_type(a).dtype).collect();
            Program::of_primitive(op, &types, g.value_type(node.results[0]).dtype)
                .ok_or_else(|| format!("{} has no elementwise program for its types", op.name()))?
        }
        op => return Err(format!("{} is not elementwise", op.name())),
    };
    match program.outputs.len() {
        1 => Ok(program),
        outputs => Err(format!("the chain has {outputs} outputs")),
    }
}

/// The functions a program applies, in order, for the log: `add, gelu`.
pub(crate) fn program_ops(program: &Program) -> String {
    let ops: Vec<String> = program
        .instrs
        .iter()
        .filter_map(|i| match i {
            Instr::Unary { f, .. } => Some(format!("{f:?}")),
            Instr::Binary { f, .. } => Some(format!("{f:?}")),
            Instr::Select { .. } => Some("select".into()),
            Instr::Cast { to, .. } => Some(format!("cast to {to:?}")),
            Instr::Uniform { .. } => Some("uniform".into()),
            Instr::Index { .. } => Some("index".into()),
            Instr::Arg { .. } | Instr::Const { .. } => None,
        })
        .collect();
    ops.join(", ").to_lowercase()
}

/// Whether the GEMM can read `extra` at each element of a product of `shape`: any argument
/// that broadcasts to it (a bias, a residual, a per-sample row `[B, 1, n]`). The lowering folds
/// the batch into the GEMM's rows only where every argument can follow them.
fn addressable(g: &Graph, extra: ValueId, product: &[calm_ir::Dim]) -> bool {
    // Symbolic dimensions compare by name, so this holds for every binding.
    broadcast_shapes(&[&g.value_type(extra).shape, product]).is_ok_and(|s| s == product)
}

/// An epilogue matmul `m` can take: its product's reader, that reader's program, and the
/// reader's other arguments.
struct Found {
    reader: NodeId,
    program: Program,
    extras: Vec<ValueId>,
}

/// The epilogue of matmul `m`, or why it has none.
fn match_epilogue(g: &Graph, users: &SecondaryMap<ValueId, Vec<NodeId>>, m: NodeId) -> Result<Found, String> {
    let product = g.nodes[m].results[0];
    if g.outputs.iter().any(|o| o.value == product) {
        return Err("the product is a graph output".into());
    }
    let reader = match users[product][..] {
        [reader] => reader,
        [] => return Err("nothing reads the product".into()),
        ref reads => return Err(format!("the product is read {} times", reads.len())),
    };
    let program = elementwise_program(g, reader).map_err(|e| format!("its reader: {e}"))?;
    let reader_node = &g.nodes[reader];
    let product_shape = &g.value_type(product).shape;
    if &g.value_type(reader_node.results[0]).shape != product_shape {
        return Err("its reader's result has another shape than the product".into());
    }
    if program.instrs.iter().any(|i| matches!(i, Instr::Uniform { .. } | Instr::Index { .. })) {
        return Err("its reader draws random numbers or reads element indices".into());
    }
    let extras: Vec<ValueId> = reader_node.args.iter().copied().filter(|&a| a != product).collect();
    for &e in &extras {
        let ty = g.value_type(e);
        if !ty.dtype.is_float() {
            return Err(format!("its reader reads a {:?} argument (not float)", ty.dtype));
        }
        if !addressable(g, e, product_shape) {
            return Err(format!("its reader reads {ty}, which does not broadcast to the product"));
        }
    }
    Ok(Found { reader, program, extras })
}

/// Fuses matmul epilogues; returns whether anything changed.
pub fn fuse_matmul_epilogues(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    let users = g.users();
    // Readers already in an epilogue: one reading two products (`a·b + c·d`) goes with the first.
    let mut taken: SecondaryMap<NodeId, bool> = SecondaryMap::new();
    let mut changed = false;
    let matmuls: Vec<NodeId> =
        g.nodes.iter().filter(|(_, n)| matches!(n.op, Op::MatMul { .. })).map(|(id, _)| id).collect();
    for m in matmuls {
        let Op::MatMul { transpose_a, transpose_b } = g.nodes[m].op else { unreachable!() };
        let scope = g.nodes[m].scope.clone();
        let found = match_epilogue(g, &users, m).and_then(|f| match taken[f.reader] {
            true => Err("its reader is already the epilogue of another matmul".to_string()),
            false => Ok(f),
        });
        let Found { reader, program, extras } = match found {
            Ok(found) => found,
            Err(reason) => {
                log.declined(PASS, &scope, reason);
                continue;
            }
        };
        taken[reader] = true;
        let product = g.nodes[m].results[0];
        let reader_node = &g.nodes[reader];
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
        let more = match extras.len() {
            1 => "1 more argument".to_string(),
            n => format!("{n} more arguments"),
        };
        let (name, count, ops) = (reader_node.op.name(), program.instrs.len(), program_ops(&program));
        let detail = format!("{name} in the epilogue ({count} instrs: {ops}), reading {more}");
        let fused_program = Program { instrs, outputs: program.outputs.clone() };
        let mut args = g.nodes[m].args.clone();
        args.extend(&extras);
        let out = reader_node.results[0];
        let ty = g.value_type(out).clone();
        let op = Op::Fused(FusedOp::MatMulEpilogue { transpose_a, transpose_b, program: fused_program });
        let fused = g.add_node(op, args, vec![ty], &scope);
        let new = g.result(fused);
        g.replace_all_uses(out, new).map_err(|e| PassError::Failed { pass: PASS, message: e.to_string() })?;
        log.fired(PASS, &scope, detail);
        changed = true;
    }
    Ok(changed)
}
