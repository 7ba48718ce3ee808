//! Horizontal fusion of linear layers that read the same input: `x·W_iᵀ + b_i` for several `i`
//! become one GEMM with the weights and biases concatenated (joined once, when the weights are
//! loaded), so `x` is read once and one launch replaces several. Each branch's result is a
//! slice of the joint result, which its readers take in place (no copy). This is how attention's
//! projections become one GEMM (q, k, v; k and v of a cross-attention) and how CALM's stage 1
//! reads the backbone states `H` once for its three channels.
//!
//! A branch is `add(matmul(x, W, tB?), b)` with `W` a rank-2 parameter and `b` a rank-1
//! parameter, optionally followed by one unary activation that every branch of the group
//! applies (ReLU in stage 1), which then runs once in the joint GEMM's epilogue.
//!
//! It declines a group when a branch's result would have to be copied out of the joint result:
//! the readers that take a slice in place are the row operand of a matmul against a matrix,
//! the q, k, v of a fused attention and elementwise ops (dropout in training graphs), which
//! read each argument at its own strides and start.

use std::collections::BTreeMap;

use calm_ir::{BinaryFn, Graph, NodeId, Op, ValueId};

use crate::layout::reads_slices_in_place;
use crate::pattern::{add_value, replace, Matcher};
use crate::pipeline::{PassError, PassLog};

const PASS: &str = "fuse_projections";

/// One linear layer reading the shared input.
#[derive(Clone)]
struct Branch {
    weight: ValueId,
    bias: ValueId,
    /// The value the branch's readers read (after the activation, if absorbed).
    out: ValueId,
    scope: String,
}

/// The branch rooted at matmul `n`, if it is a linear layer of parameters.
fn branch(m: &Matcher, n: NodeId) -> Option<(ValueId, bool, Branch)> {
    let g = m.g;
    let node = &g.nodes[n];
    let Op::MatMul { transpose_a: false, transpose_b } = node.op else { return None };
    let (x, weight) = (node.args[0], node.args[1]);
    if !matches!(m.def(weight).op, Op::Param { .. }) || m.shape(weight).len() != 2 {
        return None;
    }
    let product = node.results[0];
    let add = m.only_user(product)?;
    if g.nodes[add].op != Op::Binary(BinaryFn::Add) {
        return None;
    }
    let bias = m.other_arg(add, product)?;
    let width = m.shape(product).last()?;
    if !matches!(m.def(bias).op, Op::Param { .. }) || m.shape(bias) != std::slice::from_ref(width) {
        return None;
    }
    let out = g.nodes[add].results[0];
    Some((x, transpose_b, Branch { weight, bias, out, scope: node.scope.clone() }))
}

/// The unary activation every branch applies alone to its result, if there is one.
fn common_activation(m: &Matcher, branches: &[Branch]) -> Option<Op> {
    let ops: Option<Vec<&Op>> = branches
        .iter()
        .map(|b| m.only_user(b.out).map(|u| &m.g.nodes[u].op).filter(|op| op.is_elementwise() && op.arity().accepts(1)))
        .collect();
    let ops = ops?;
    let first = ops[0];
    (ops.iter().all(|op| *op == first) && !first.is_random()).then(|| first.clone())
}

/// Fuses every group of two or more linears that read the same input; returns whether
/// anything changed.
pub fn fuse_projections(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    // Groups by (input, transpose, input width), in node order so the rewrite is deterministic.
    let mut groups: BTreeMap<(ValueId, bool), Vec<Branch>> = BTreeMap::new();
    let plans: Vec<(ValueId, bool, Vec<Branch>, Option<Op>)> = {
        let m = Matcher::new(g);
        for n in g.nodes.keys() {
            if let Some((x, tb, b)) = branch(&m, n) {
                groups.entry((x, tb)).or_default().push(b);
            }
        }
        let mut plans = Vec::new();
        for ((x, tb), mut branches) in std::mem::take(&mut groups) {
            if branches.len() < 2 {
                continue;
            }
            let activation = common_activation(&m, &branches);
            if activation.is_some() {
                for b in &mut branches {
                    b.out = m.g.nodes[m.only_user(b.out).expect("checked")].results[0];
                }
            }
            let blocked = branches.iter().find_map(|b| {
                let bad = m.users[b.out].iter().find(|&&u| !reads_slices_in_place(g, u, b.out));
                let why = if m.is_output(b.out) {
                    Some("is a graph output".to_string())
                } else {
                    bad.map(|&u| format!("is read by {} ({})", g.nodes[u].op.name(), g.nodes[u].scope))
                };
                why.map(|w| format!("the result of {} {w}, which would need a copy of its slice", b.scope))
            });
            if let Some(reason) = blocked {
                log.declined(PASS, &branches[0].scope, reason);
                continue;
            }
            plans.push((x, tb, branches, activation));
        }
        plans
    };
    let changed = !plans.is_empty();
    for (x, tb, branches, activation) in plans {
        let scope = common_scope(branches.iter().map(|b| b.scope.as_str()));
        let weights: Vec<ValueId> = branches.iter().map(|b| b.weight).collect();
        let biases: Vec<ValueId> = branches.iter().map(|b| b.bias).collect();
        let widths: Vec<u64> = branches.iter().map(|b| g.value_type(b.bias).shape[0].fixed().unwrap_or(0)).collect();
        let total: u64 = widths.iter().sum();
        let weight = add_value(g, PASS, Op::Concat { axis: if tb { 0 } else { 1 } }, weights, &scope)?;
        let bias = add_value(g, PASS, Op::Concat { axis: 0 }, biases, &scope)?;
        let product = Op::MatMul { transpose_a: false, transpose_b: tb };
        let mut joint = add_value(g, PASS, product, vec![x, weight], &scope)?;
        joint = add_value(g, PASS, Op::Binary(BinaryFn::Add), vec![joint, bias], &scope)?;
        if let Some(op) = &activation {
            joint = add_value(g, PASS, op.clone(), vec![joint], &scope)?;
        }
        let axis = g.value_type(joint).rank() - 1;
        let mut start = 0;
        for (b, w) in branches.iter().zip(&widths) {
            let slice = add_value(g, PASS, Op::Slice { axis, start, end: start + w }, vec![joint], &b.scope)?;
            replace(g, PASS, b.out, slice)?;
            start += w;
        }
        // Named by the first scope segment their weights' names differ in: `.../query/weight`
        // is `query`, `.../mlp_s/l1/weight` is `mlp_s`.
        let paths: Vec<Vec<&str>> = branches
            .iter()
            .map(|b| g.nodes[g.producer(b.weight)].op.param_name().unwrap_or_default().split('/').collect())
            .collect();
        let differs = (0..paths[0].len()).find(|&i| paths.iter().any(|p| p.get(i) != paths[0].get(i)));
        let names: Vec<&str> = paths.iter().map(|p| differs.and_then(|i| p.get(i).copied()).unwrap_or("?")).collect();
        let act = activation.map(|a| format!(" and {}", a.name())).unwrap_or_default();
        log.fired(
            PASS,
            &scope,
            format!("{} linears ({}) as one GEMM of width {total}{act}", branches.len(), names.join(", ")),
        );
    }
    Ok(changed)
}

/// The longest scope prefix (whole segments) the scopes share.
fn common_scope<'a>(mut scopes: impl Iterator<Item = &'a str>) -> String {
    let first: Vec<&str> = scopes.next().unwrap_or("").split('/').collect();
    let mut len = first.len();
    for s in scopes {
        len = len.min(first.iter().zip(s.split('/')).take_while(|(a, b)| *a == b).count());
    }
    first[..len].join("/")
}
