//! Elementwise fusion: chains of elementwise ops of one shape become one
//! [`FusedOp::Elementwise`] node, evaluated by one generated kernel.
//!
//! Nodes are visited in topological order; an elementwise node joins the group of one of its
//! arguments' producers when the shapes agree and joining cannot create a cycle (no other
//! argument of the node is computed, outside the group, from the group). Scalar constants are
//! inlined into the program (a lone op reading one is rewritten for that alone); explicit
//! broadcasts feeding a group are read through (programs broadcast their arguments). Every group
//! value read outside the group becomes an output.
//! Each primitive's instructions come from [`Program::of_primitive`] (what the lowering
//! launches for a lone op), so the fused program computes exactly what the primitives do.
//!
//! The log gets, per scope, the groups rewritten there (how many ops each, at the scope of the
//! group's last node) and the nodes kept out of a neighbouring group, with the reason (another
//! shape, or a cycle joining would close): one note per scope and reason, not one per node.

use std::collections::HashMap;

use calm_ir::entity::SecondaryMap;
use calm_ir::fused::FusedOp;
use calm_ir::program::{Instr, Program};
use calm_ir::{Graph, NodeId, Op, OpClass, TensorType, ValueId};

use crate::pipeline::{PassError, PassLog};

const PASS: &str = "fuse_elementwise";

/// Why an elementwise node stayed out of the group of one of its arguments' producers.
const OTHER_SHAPE: &str = "the group computes another shape";
const CYCLE: &str = "joining would close a cycle (another argument depends on the group)";

/// True for nodes a group may contain.
fn fusible(g: &Graph, n: NodeId) -> bool {
    let node = &g.nodes[n];
    let arg_types: Vec<calm_ir::DType> = node.args.iter().map(|&a| g.value_type(a).dtype).collect();
    let out = g.value_type(node.results[0]).dtype;
    // Integer arithmetic has no device kernel; comparisons, selects and casts of integers do.
    let integer_math = arg_types.iter().any(|t| t.is_int()) && node.op.is_arithmetic();
    let program_ok = match &node.op {
        op if op.class() == OpClass::Elementwise => Program::of_primitive(op, &arg_types, out).is_some(),
        Op::Iota { .. } => true,
        // Random numbers need their keys to be graph inputs (arguments of the fused node).
        Op::RandomUniform { .. } => node.args.iter().all(|&a| matches!(g.nodes[g.producer(a)].op, Op::Input { .. })),
        _ => false,
    };
    let keys_are_inputs = !matches!(node.op, Op::Dropout { .. })
        || node.args[1..].iter().all(|&a| matches!(g.nodes[g.producer(a)].op, Op::Input { .. }));
    program_ok && !integer_math && keys_are_inputs && !matches!(node.op, Op::Constant { .. })
}

/// The scalar value of a constant node, if `v` is one.
fn scalar_constant(g: &Graph, v: ValueId) -> Option<(u64, calm_ir::DType)> {
    match &g.nodes[g.producer(v)].op {
        Op::Constant { value, dtype } => Some((value.0.to_bits(), *dtype)),
        _ => None,
    }
}

/// `v`, looked through explicit broadcasts (a program broadcasts its arguments itself).
fn through_broadcasts(g: &Graph, mut v: ValueId) -> ValueId {
    while let Op::Broadcast { .. } = g.nodes[g.producer(v)].op {
        v = g.nodes[g.producer(v)].args[0];
    }
    v
}

/// Does `start` depend on a node of `members`? Walks backwards, never below `lowest` (the
/// topological position of the group's first node).
fn depends_on(
    g: &Graph,
    start: NodeId,
    in_group: &dyn Fn(NodeId) -> bool,
    pos: &SecondaryMap<NodeId, usize>,
    lowest: usize,
) -> bool {
    let mut stack = vec![start];
    let mut seen: SecondaryMap<NodeId, bool> = SecondaryMap::new();
    while let Some(n) = stack.pop() {
        if in_group(n) {
            return true;
        }
        if pos[n] < lowest || std::mem::replace(&mut seen[n], true) {
            continue;
        }
        stack.extend(g.nodes[n].args.iter().map(|&a| g.producer(a)));
    }
    false
}

/// Notes gathered per scope (in the order scopes first come up), so that a graph's thousands of
/// elementwise nodes make one note per scope and kind.
struct PerScope<T> {
    entries: Vec<(String, &'static str, Vec<T>)>,
}

impl<T> PerScope<T> {
    fn new() -> Self {
        PerScope { entries: Vec::new() }
    }

    fn add(&mut self, scope: &str, kind: &'static str, item: T) {
        match self.entries.iter_mut().find(|(s, k, _)| s == scope && *k == kind) {
            Some((_, _, items)) => items.push(item),
            None => self.entries.push((scope.to_string(), kind, vec![item])),
        }
    }
}

/// The note for the groups rewritten at one scope, from their sizes.
fn fired_note(sizes: &[usize]) -> String {
    match sizes {
        [1] => "1 op, its scalar constant inlined".into(),
        [ops] => format!("{ops} ops in one kernel"),
        _ => {
            let each: Vec<String> = sizes.iter().map(usize::to_string).collect();
            format!("{} ops in {} kernels ({})", sizes.iter().sum::<usize>(), sizes.len(), each.join(" + "))
        }
    }
}

/// The note for the nodes of one scope kept out of a neighbouring group for one reason.
fn declined_note(ops: &[&'static str], reason: &str) -> String {
    let mut names = ops.to_vec();
    names.sort_unstable();
    names.dedup();
    let what = if ops.len() == 1 { "1 op".to_string() } else { format!("{} ops", ops.len()) };
    format!("{what} ({}) kept out of a neighbouring group: {reason}", names.join(", "))
}

/// Fuses elementwise chains; returns whether anything changed.
pub fn fuse_elementwise(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    let order = g.topo_order().map_err(|_| PassError::Failed { pass: PASS, message: "graph has a cycle".into() })?;
    let mut pos: SecondaryMap<NodeId, usize> = SecondaryMap::new();
    for (i, &n) in order.iter().enumerate() {
        pos[n] = i;
    }
    let mut group_of: SecondaryMap<NodeId, Option<usize>> = SecondaryMap::with_default(None);
    let mut groups: Vec<Vec<NodeId>> = Vec::new();
    let mut kept_apart: PerScope<&'static str> = PerScope::new();
    for &n in &order {
        if !fusible(g, n) {
            continue;
        }
        let shape = &g.value_type(g.nodes[n].results[0]).shape;
        let mut joined = None;
        let mut reasons: Vec<&'static str> = Vec::new();
        for &a in &g.nodes[n].args {
            let p = g.producer(through_broadcasts(g, a));
            let Some(gid) = group_of[p] else { continue };
            if &g.value_type(g.nodes[p].results[0]).shape != shape {
                reasons.push(OTHER_SHAPE);
                continue;
            }
            let lowest = groups[gid].iter().map(|&m| pos[m]).min().expect("groups are not empty");
            let in_group = |x: NodeId| group_of[x] == Some(gid);
            let cycle = g.nodes[n]
                .args
                .iter()
                .map(|&b| g.producer(through_broadcasts(g, b)))
                .filter(|&q| !in_group(q))
                .any(|q| depends_on(g, q, &in_group, &pos, lowest));
            if !cycle {
                joined = Some(gid);
                break;
            }
            reasons.push(CYCLE);
        }
        reasons.sort_unstable();
        reasons.dedup();
        for reason in reasons {
            kept_apart.add(&g.nodes[n].scope, reason, g.nodes[n].op.name());
        }
        let gid = joined.unwrap_or_else(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[gid].push(n);
        group_of[n] = Some(gid);
    }

    for (scope, reason, ops) in &kept_apart.entries {
        log.declined(PASS, scope, declined_note(ops, reason));
    }

    let users = g.users();
    let output_values: Vec<ValueId> = g.outputs.iter().map(|o| o.value).collect();
    let mut rewritten_at: PerScope<usize> = PerScope::new();
    let mut changed = false;
    // A lone op is rewritten too when it reads a scalar constant: inlined, the constant needs
    // no launch of its own to fill its buffer.
    let reads_constant =
        |n: NodeId| g.nodes[n].args.iter().any(|&a| scalar_constant(g, through_broadcasts(g, a)).is_some());
    let rewritten: Vec<bool> = groups.iter().map(|m| m.len() > 1 || reads_constant(m[0])).collect();
    for (gid, members) in groups.iter().enumerate().filter(|&(gid, _)| rewritten[gid]) {
        let in_group = |n: NodeId| group_of[n] == Some(gid);
        let head = *members.last().expect("a group has members");
        let shape = g.value_type(g.nodes[head].results[0]).shape.clone();
        let mut instrs: Vec<Instr> = Vec::new();
        let mut args: Vec<ValueId> = Vec::new();
        let mut reg_of: HashMap<ValueId, u32> = HashMap::new();
        let arg_index = |v: ValueId, args: &mut Vec<ValueId>| -> u32 {
            match args.iter().position(|&a| a == v) {
                Some(i) => i as u32,
                None => {
                    args.push(v);
                    args.len() as u32 - 1
                }
            }
        };
        for &m in members {
            let node = &g.nodes[m];
            let arg_types: Vec<calm_ir::DType> = node.args.iter().map(|&a| g.value_type(a).dtype).collect();
            let out_type = g.value_type(node.results[0]).dtype;
            let program = Program::of_primitive(&node.op, &arg_types, out_type).expect("fusible nodes have programs");
            // The member's operands as registers of the fused program.
            let mut operand_regs = Vec::new();
            for &a in &node.args {
                let v = through_broadcasts(g, a);
                let reg = if let Some(&r) = reg_of.get(&v) {
                    r
                } else if let Some((bits, dtype)) = scalar_constant(g, v) {
                    instrs.push(Instr::Const { bits, dtype });
                    instrs.len() as u32 - 1
                } else {
                    let index = arg_index(v, &mut args);
                    instrs.push(Instr::Arg { index });
                    instrs.len() as u32 - 1
                };
                reg_of.entry(v).or_insert(reg);
                operand_regs.push(reg);
            }
            // Splice the member's program: its arguments become those registers, its own
            // registers are renumbered, its random keys refer to the fused node's arguments.
            let local = splice_program(
                &program,
                &mut instrs,
                |index, _| operand_regs[index as usize],
                |key| arg_index(node.args[key as usize], &mut args),
            );
            let result_reg = local[program.outputs[0].0 as usize];
            reg_of.insert(node.results[0], result_reg);
        }
        // Outputs: group values read outside the group or by the graph.
        let mut outputs: Vec<(ValueId, u32)> = Vec::new();
        for &m in members {
            let v = g.nodes[m].results[0];
            let escapes = users[v].iter().any(|&u| !in_group(u)) || output_values.contains(&v);
            if escapes {
                outputs.push((v, reg_of[&v]));
            }
        }
        let program = Program { instrs, outputs: outputs.iter().map(|&(v, r)| (r, g.value_type(v).dtype)).collect() };
        let types: Vec<TensorType> = outputs.iter().map(|&(v, _)| g.value_type(v).clone()).collect();
        let scope = g.nodes[head].scope.clone();
        let fused = g.add_node(Op::Fused(FusedOp::Elementwise { shape, program }), args, types, &scope);
        let results = g.nodes[fused].results.clone();
        for (&(old, _), &new) in outputs.iter().zip(&results) {
            g.replace_all_uses(old, new).map_err(|e| PassError::Failed { pass: PASS, message: e.to_string() })?;
        }
        rewritten_at.add(&scope, "fired", members.len());
        changed = true;
    }
    for (scope, _, sizes) in &rewritten_at.entries {
        log.fired(PASS, scope, fired_note(sizes));
    }
    Ok(changed)
}

/// Appends `program`'s instructions to `instrs` with its registers renumbered: its argument
/// `i` becomes the register `arg(i, instrs)` returns (which may push instructions), and the
/// argument a random draw keys on (seed, offset) becomes argument `key(i)`. Returns where each
/// of its registers now is. Shared by the elementwise fusion and the GEMM's split-k sum.
pub(crate) fn splice_program(
    program: &Program,
    instrs: &mut Vec<Instr>,
    mut arg: impl FnMut(u32, &mut Vec<Instr>) -> u32,
    mut key: impl FnMut(u32) -> u32,
) -> Vec<u32> {
    let mut local: Vec<u32> = Vec::with_capacity(program.instrs.len());
    for instr in &program.instrs {
        let r = |x: u32| local[x as usize];
        let spliced = match *instr {
            Instr::Arg { index } => {
                let reg = arg(index, instrs);
                local.push(reg);
                continue;
            }
            Instr::Const { bits, dtype } => Instr::Const { bits, dtype },
            Instr::Unary { f, x } => Instr::Unary { f, x: r(x) },
            Instr::Binary { f, a, b } => Instr::Binary { f, a: r(a), b: r(b) },
            Instr::Select { cond, a, b } => Instr::Select { cond: r(cond), a: r(a), b: r(b) },
            Instr::Cast { to, x } => Instr::Cast { to, x: r(x) },
            Instr::Uniform { stream, seed, offset } => Instr::Uniform { stream, seed: key(seed), offset: key(offset) },
            Instr::Index { axis } => Instr::Index { axis },
        };
        instrs.push(spliced);
        local.push(instrs.len() as u32 - 1);
    }
    local
}
