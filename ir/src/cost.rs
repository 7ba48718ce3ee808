//! The cost model: FLOPs and bytes moved per node for given symbol bindings, and parameter
//! counts, rolled up by scope. Profiling and rooflines compare measured times against it.
//!
//! Conventions (simple, and documented in `docs/ir.md`):
//! - bytes read are the sizes of the arguments, bytes written the sizes of the results; a gather
//!   reads only the rows it picks (plus the indices), not the whole table;
//! - FLOPs: 1 per output element for elementwise ops (0 for casts), `2·M·N·K` per matmul,
//!   5 per element for softmax and log-softmax, 8 for layer norm, 1 per input element for a
//!   reduction, `k` per input element for top-k, 1 per update for scatter-add, 1 per element for
//!   random numbers; inputs, parameters, constants and data movement cost no FLOPs.

use std::ops::AddAssign;

use thiserror::Error;

use crate::graph::{Graph, NodeId};
use crate::op::{Op, OpClass};
use crate::types::{Bindings, ShapeError, TensorType};

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    pub flops: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        // Sums of u64 costs of real graphs stay far from overflow; saturate rather than wrap.
        self.flops = self.flops.saturating_add(o.flops);
        self.bytes_read = self.bytes_read.saturating_add(o.bytes_read);
        self.bytes_written = self.bytes_written.saturating_add(o.bytes_written);
    }
}

/// A node whose cost cannot be computed under the given bindings.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{node} ({op} @ {scope}): {source}")]
pub struct CostError {
    pub node: NodeId,
    pub op: &'static str,
    pub scope: String,
    #[source]
    pub source: ShapeError,
}

/// FLOPs per router probability of a top-k routing from `width` inputs: the logit (2·width),
/// softmax (5), top-k (k). Shared by the fused route, a mixture's own routers and the lowering.
pub fn route_flops_per_prob(width: u64, top_k: u64) -> u64 {
    2 * width + 5 + top_k
}

fn mul(a: u64, b: u64, what: &TensorType) -> Result<u64, ShapeError> {
    a.checked_mul(b).ok_or_else(|| ShapeError::Overflow(what.to_string()))
}

/// The cost of node `n` of a verified graph.
pub fn node_cost(g: &Graph, n: NodeId, bindings: &Bindings) -> Result<Cost, CostError> {
    node_cost_stored(g, n, bindings, None)
}

/// [`node_cost`] with float values stored in `float_bytes` bytes each (the kernel plan's float
/// type) instead of their IR type's size.
pub fn node_cost_stored(
    g: &Graph,
    n: NodeId,
    bindings: &Bindings,
    float_bytes: Option<u64>,
) -> Result<Cost, CostError> {
    let node = &g.nodes[n];
    let wrap = |source| CostError { node: n, op: node.op.name(), scope: node.scope.clone(), source };
    let compute = || -> Result<Cost, ShapeError> {
        let arg = |i: usize| g.value_type(node.args[i]);
        let out = g.value_type(node.results[0]);
        let size = |t: &TensorType| -> Result<u64, ShapeError> {
            match float_bytes {
                Some(b) if t.dtype.is_float() => mul(t.numel(bindings)?, b, t),
                _ => t.size_bytes(bindings),
            }
        };
        let sum_bytes = |values: &[crate::graph::ValueId]| -> Result<u64, ShapeError> {
            values
                .iter()
                .map(|&v| g.value_type(v))
                .try_fold(0u64, |acc, t| acc.checked_add(size(t)?).ok_or_else(|| ShapeError::Overflow(t.to_string())))
        };
        let mut bytes_read = sum_bytes(&node.args)?;
        let bytes_written = sum_bytes(&node.results)?;
        let out_elems = out.numel(bindings)?;
        let flops = match &node.op {
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } => return Ok(Cost::default()),
            Op::Iota { .. } => 0,
            Op::RandomUniform { .. } => out_elems,
            Op::Cast { .. } => 0,
            op if op.class() == OpClass::Elementwise => out_elems,
            Op::MatMul { transpose_a, .. } => {
                let a = arg(0);
                let k = a.shape[a.rank() - if *transpose_a { 2 } else { 1 }].resolve(bindings)?;
                mul(mul(2, out_elems, out)?, k, out)?
            }
            Op::Softmax { .. } | Op::LogSoftmax { .. } => mul(5, out_elems, out)?,
            Op::LayerNorm { .. } => mul(8, out_elems, out)?,
            Op::ReduceSum { .. } | Op::ReduceMean { .. } | Op::ReduceMax { .. } => arg(0).numel(bindings)?,
            Op::Gather { .. } => {
                bytes_read = size(out)?.saturating_add(size(arg(1))?);
                0
            }
            Op::ScatterAdd { .. } => arg(2).numel(bindings)?,
            Op::TopK { k } => mul(arg(0).numel(bindings)?, *k, arg(0))?,
            Op::OneHot { .. } => 0,
            op if op.class() == OpClass::Movement => 0,
            Op::Fused(crate::fused::FusedOp::Elementwise { program, .. }) => {
                mul(program.flops_per_element(), out_elems, out)?
            }
            Op::Fused(crate::fused::FusedOp::MatMulEpilogue { transpose_a, program, .. }) => {
                let a = arg(0);
                let k = a.shape[a.rank() - if *transpose_a { 2 } else { 1 }].resolve(bindings)?;
                let product = mul(mul(2, out_elems, out)?, k, out)?;
                product.saturating_add(mul(program.flops_per_element(), out_elems, out)?)
            }
            Op::Fused(crate::fused::FusedOp::Reduce { program, .. }) => {
                // The program at each element of its shape (an argument's whole shape), and the
                // reduction's add.
                let mut elems = 0;
                for &a in &node.args {
                    elems = elems.max(g.value_type(a).numel(bindings)?);
                }
                mul(program.flops_per_element() + 1, elems, out)?
            }
            Op::Fused(crate::fused::FusedOp::Attention { heads, .. }) => {
                // Scores and weighted values (2·Lk·m each per query row), softmax (5 per score).
                let keys = arg(1).shape[1].resolve(bindings)?;
                let per_row = mul(keys, 4 * out.shape[2].resolve(bindings)? + 5 * heads, out)?;
                mul(per_row, out_elems / out.shape[2].resolve(bindings)?.max(1), out)?
            }
            Op::Fused(crate::fused::FusedOp::GumbelPool { .. }) => {
                // Per assignment element: the logit (2·H), noise, softmax and mask (~10), its
                // share of the pooled sums (2·D + 1).
                let (h, d) = (arg(0).shape[2].resolve(bindings)?, arg(3).shape[2].resolve(bindings)?);
                let assign = g.value_type(node.results[1]).numel(bindings)?;
                mul(assign, 2 * h + 2 * d + 11, out)?
            }
            Op::Fused(crate::fused::FusedOp::Route { top_k, .. }) => {
                let m = arg(0).shape[1].resolve(bindings)?;
                mul(out_elems, route_flops_per_prob(m, *top_k), out)?
            }
            Op::Fused(f @ crate::fused::FusedOp::ExpertMixture { groups, experts, top_k, layers, router, .. }) => {
                // What the chosen experts compute (k of E per unit): per layer and token the
                // projections and FFN (2·(4m² + 2mF)), attention over the unit's tokens
                // (4·K·m), norms and residuals (~20m).
                let z = arg(0);
                let (b, kk, m) =
                    (z.shape[0].resolve(bindings)?, z.shape[1].resolve(bindings)?, z.shape[2].resolve(bindings)?);
                let first = f.first_expert_param().expect("an expert mixture");
                let ffn = g.value_type(node.args[first + 9]).shape[0].resolve(bindings)? / (groups * experts).max(1);
                let per_token = 2 * (4 * m * m + 2 * m * ffn) + 4 * kk * m + 20 * m;
                let tokens = mul(mul(mul(b, *top_k, out)?, kk, out)?, *groups, out)?;
                let experts_flops = mul(mul(tokens, per_token, out)?, *layers, out)?;
                // Its own routers: as a fused route's, per unit and group.
                let routing = match router {
                    Some(_) => {
                        let r = arg(1).shape[1].resolve(bindings)?;
                        mul(mul(mul(b, *groups, out)?, *experts, out)?, route_flops_per_prob(r, *top_k), out)?
                    }
                    None => 0,
                };
                experts_flops.checked_add(routing).ok_or_else(|| ShapeError::Overflow(out.to_string()))?
            }
            other => unreachable!("{} has no cost rule", other.name()),
        };
        Ok(Cost { flops, bytes_read, bytes_written })
    };
    compute().map_err(wrap)
}

/// The costs of every node, in arena order.
pub fn graph_costs(g: &Graph, bindings: &Bindings) -> Result<Vec<(NodeId, Cost)>, CostError> {
    g.nodes.keys().map(|n| Ok((n, node_cost(g, n, bindings)?))).collect()
}

/// Totals for one scope and everything below it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeStats {
    pub scope: String,
    /// Number of path segments (1 for a root scope such as `calm`).
    pub level: usize,
    pub nodes: usize,
    pub params: u64,
    pub cost: Cost,
}

/// The first `depth` segments of a scope path (`depth` 0 keeps the whole path).
pub fn truncate_scope(scope: &str, depth: usize) -> &str {
    if depth == 0 {
        return scope;
    }
    match scope.match_indices('/').nth(depth - 1) {
        Some((i, _)) => &scope[..i],
        None => scope,
    }
}

/// Cumulative node counts, parameter counts and costs for every scope of at most `depth`
/// segments (0: any depth), each row covering its whole subtree. Rows come in pre-order, children
/// in order of their first node, so a parent precedes its children and the model reads top down.
pub fn stats_by_scope(g: &Graph, bindings: &Bindings, depth: usize) -> Result<Vec<ScopeStats>, CostError> {
    let mut rows: Vec<ScopeStats> = Vec::new();
    let mut children: Vec<Vec<usize>> = Vec::new();
    let mut roots: Vec<usize> = Vec::new();
    for (n, cost) in graph_costs(g, bindings)? {
        let node = &g.nodes[n];
        let params = match &node.op {
            Op::Param { .. } => crate::types::fixed_numel(g.value_type(node.results[0])),
            _ => 0,
        };
        let scope = truncate_scope(&node.scope, depth);
        let mut parent: Option<usize> = None;
        for (level, (end, _)) in scope.match_indices('/').chain([(scope.len(), "")]).enumerate() {
            let prefix = &scope[..end];
            let siblings = parent.map_or(&roots, |p| &children[p]);
            let row = match siblings.iter().copied().find(|&r| rows[r].scope == prefix) {
                Some(r) => r,
                None => {
                    rows.push(ScopeStats { scope: prefix.to_string(), level: level + 1, ..ScopeStats::default() });
                    children.push(Vec::new());
                    let r = rows.len() - 1;
                    match parent {
                        Some(p) => children[p].push(r),
                        None => roots.push(r),
                    }
                    r
                }
            };
            rows[row].nodes += 1;
            rows[row].params = rows[row].params.saturating_add(params);
            rows[row].cost += cost;
            parent = Some(row);
        }
    }
    fn preorder(r: usize, children: &[Vec<usize>], out: &mut Vec<usize>) {
        out.push(r);
        for &c in &children[r] {
            preorder(c, children, out);
        }
    }
    let mut order = Vec::with_capacity(rows.len());
    for &r in &roots {
        preorder(r, &children, &mut order);
    }
    Ok(order.into_iter().map(|r| std::mem::take(&mut rows[r])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;
    use crate::shape;
    use crate::types::DType;

    #[test]
    fn matmul_and_elementwise_costs() {
        let mut b = GraphBuilder::new("m");
        let x = b.input("x", DType::F32, shape!["batch", 3u64, 4u64]).unwrap();
        let w = b.scoped("lin", |b| b.param("weight", shape![5u64, 4u64], crate::op::Init::Zeros)).unwrap();
        let y = b.matmul(x, w, false, true).unwrap();
        let z = b.relu(y).unwrap();
        b.output("z", z);
        let g = b.finish().unwrap();
        let bind = Bindings::new().with("batch", 2);
        let mm = node_cost(&g, g.producer(y), &bind).unwrap();
        assert_eq!(mm.flops, 2 * (2 * 3 * 5) * 4);
        assert_eq!(mm.bytes_read, (2 * 3 * 4 + 5 * 4) * 4);
        assert_eq!(mm.bytes_written, 2 * 3 * 5 * 4);
        assert_eq!(node_cost(&g, g.producer(z), &bind).unwrap().flops, 30);
        assert_eq!(node_cost(&g, g.producer(w), &bind).unwrap(), Cost::default());
        let e = node_cost(&g, g.producer(y), &Bindings::new()).unwrap_err();
        assert_eq!(e.source, ShapeError::Unbound("batch".into()));
        assert!(e.to_string().contains("matmul @ m"), "{e}");
    }

    #[test]
    fn gather_reads_only_picked_rows() {
        let mut b = GraphBuilder::new("m");
        let ids = b.input("ids", DType::I32, shape![7u64]).unwrap();
        let table = b.scoped("emb", |b| b.param("weight", shape![1000u64, 8u64], crate::op::Init::Zeros)).unwrap();
        let e = b.gather(table, ids, 0).unwrap();
        b.output("e", e);
        let g = b.finish().unwrap();
        let c = node_cost(&g, g.producer(e), &Bindings::new()).unwrap();
        assert_eq!(c.bytes_read, 7 * 8 * 4 + 7 * 4);
        assert_eq!(c.bytes_written, 7 * 8 * 4);
    }

    #[test]
    fn stats_roll_up_by_scope_depth() {
        let g = crate::sample::tiny_classifier();
        let bind = Bindings::new().with("batch", 4).with("tokens", 9);
        let rows = stats_by_scope(&g, &bind, 2).unwrap();
        let scopes: Vec<&str> = rows.iter().map(|r| r.scope.as_str()).collect();
        assert_eq!(scopes, ["tiny", "tiny/inputs", "tiny/block", "tiny/head", "tiny/loss"]);
        let total = &rows[0];
        assert_eq!(total.params, g.param_count());
        assert_eq!(total.nodes, g.nodes.len());
        let sum: u64 = rows[1..].iter().map(|r| r.cost.flops).sum();
        assert_eq!(sum, total.cost.flops);
        let all: u64 = graph_costs(&g, &bind).unwrap().iter().map(|(_, c)| c.flops).sum();
        assert_eq!(total.cost.flops, all);
        // block: proj 16->32, attention 4 x (32x32+32), ln 2x32.
        let block = &rows[2];
        assert_eq!(block.params, (32 * 16 + 32) + 4 * (32 * 32 + 32) + 2 * 32);
        // Deeper roll-ups list children right after their parent, cumulative.
        let rows = stats_by_scope(&g, &bind, 3).unwrap();
        let block = rows.iter().position(|r| r.scope == "tiny/block").unwrap();
        assert_eq!(rows[block + 1].scope, "tiny/block/proj");
        assert_eq!(rows[block + 1].level, 3);
        let children: u64 = rows.iter().filter(|r| r.scope.starts_with("tiny/block/")).map(|r| r.params).sum();
        assert_eq!(children, rows[block].params);
        assert_eq!(truncate_scope("a/b/c", 1), "a");
        assert_eq!(truncate_scope("a/b/c", 5), "a/b/c");
        assert_eq!(truncate_scope("a/b/c", 0), "a/b/c");
    }

    #[test]
    fn huge_bindings_report_overflow() {
        let g = crate::sample::tiny_classifier();
        let bind = Bindings::new().with("batch", u64::MAX / 4).with("tokens", u64::MAX / 4);
        let e = stats_by_scope(&g, &bind, 1).unwrap_err();
        assert!(matches!(e.source, ShapeError::Overflow(_)), "{e}");
    }
}
