//! Inputs and parameters: buffers the executor uploads, named by the plan's ports. Weights only
//! ever multiplied as `x · Wᵀ` are stored transposed, and concatenations of parameters (made
//! by the projection fusion) are joined when the weights are loaded, not by a launch.

use calm_ir::entity::SecondaryMap;
use calm_ir::fused::FusedOp;
use calm_ir::{Graph, NodeId, Op, ValueId};

use super::{LowerError, Lowering};
use crate::plan::{ParamConcat, Port, Role};

/// The parameter names a `Concat` node joins, if every argument is a parameter: the lowering
/// builds such a concatenation when the weights are loaded instead of launching a copy.
fn param_concat(g: &Graph, n: NodeId) -> Option<Vec<&str>> {
    let node = &g.nodes[n];
    if !matches!(node.op, Op::Concat { .. }) {
        return None;
    }
    node.args.iter().map(|&a| g.nodes[g.producer(a)].op.param_name()).collect()
}

pub(super) fn is_param_concat(g: &Graph, n: NodeId) -> bool {
    param_concat(g, n).is_some()
}

/// Rank-2 weights (parameters, and load-time concatenations of them) read only as the `B` of
/// `A · Bᵀ` products.
pub(super) fn transposable_weights(
    g: &Graph,
    users: &SecondaryMap<ValueId, Vec<NodeId>>,
) -> SecondaryMap<ValueId, bool> {
    let mut out: SecondaryMap<ValueId, bool> = SecondaryMap::new();
    let weights = g.nodes.iter().filter(|&(id, n)| matches!(n.op, Op::Param { .. }) || is_param_concat(g, id));
    for (_, node) in weights {
        let v = node.results[0];
        let as_weight = |u: NodeId| {
            let reader = &g.nodes[u];
            if let Op::Fused(f @ FusedOp::ExpertMixture { .. }) = &reader.op {
                return reader.args.iter().enumerate().all(|(i, &a)| a != v || f.reads_as_weight(i));
            }
            let transposed_b = match &reader.op {
                Op::MatMul { transpose_b, .. } | Op::Fused(FusedOp::MatMulEpilogue { transpose_b, .. }) => *transpose_b,
                _ => false,
            };
            transposed_b && reader.args[1] == v && reader.args[0] != v && !reader.args[2..].contains(&v)
        };
        out[v] = g.value_type(v).rank() == 2 && !users[v].is_empty() && users[v].iter().all(|&u| as_weight(u));
    }
    out
}

impl Lowering<'_> {
    /// An input or parameter: a buffer and a port.
    pub(super) fn lower_source(&mut self, n: NodeId) -> Result<(), LowerError> {
        let g = self.g;
        let out = g.nodes[n].results[0];
        match &g.nodes[n].op {
            Op::Input { name, .. } => {
                let b = self.new_buffer(out, Role::Input)?;
                let port = self.port(name, out, b)?;
                self.plan.inputs.push(port);
            }
            // Read only by load-time concatenations: uploaded as part of those.
            Op::Param { .. }
                if !self.users[out].is_empty() && self.users[out].iter().all(|&u| is_param_concat(g, u)) => {}
            Op::Param { name, .. } => {
                let b = self.new_buffer(out, Role::Param)?;
                let port = Port { transposed: self.transposed[out], ..self.port(name, out, b)? };
                self.plan.params.push(port);
            }
            other => unreachable!("{} is not an input or a parameter", other.name()),
        }
        Ok(())
    }

    /// A concatenation of parameters, joined when the weights are loaded.
    pub(super) fn lower_param_concat(&mut self, n: NodeId) -> Result<(), LowerError> {
        let g = self.g;
        let Op::Concat { axis } = g.nodes[n].op else { unreachable!("a parameter concatenation") };
        let parts: Vec<String> =
            param_concat(g, n).expect("a parameter concatenation").into_iter().map(str::to_string).collect();
        let out = g.nodes[n].results[0];
        let b = self.new_buffer(out, Role::Param)?;
        let name = format!("concat({})", parts.join(", "));
        let concat = Some(ParamConcat { parts, axis });
        let port = Port { transposed: self.transposed[out], concat, ..self.port(&name, out, b)? };
        self.plan.params.push(port);
        Ok(())
    }
}
