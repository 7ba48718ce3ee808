//! Helpers for passes that match subgraphs by structure: who defines a value, who reads it,
//! whether an intermediate can disappear into a fused op.

use calm_ir::entity::SecondaryMap;
use calm_ir::{Dim, Graph, Node, NodeId, Op, ValueId};

use crate::pipeline::{PassError, PassLog};

/// A read-only view of a graph for matching.
pub struct Matcher<'g> {
    pub g: &'g Graph,
    pub users: SecondaryMap<ValueId, Vec<NodeId>>,
    outputs: Vec<ValueId>,
}

impl<'g> Matcher<'g> {
    pub fn new(g: &'g Graph) -> Self {
        Matcher { g, users: g.users(), outputs: g.outputs.iter().map(|o| o.value).collect() }
    }

    /// The node defining `v`.
    pub fn def(&self, v: ValueId) -> &'g Node {
        &self.g.nodes[self.g.producer(v)]
    }

    pub fn is_output(&self, v: ValueId) -> bool {
        self.outputs.contains(&v)
    }

    /// True when `v` is read by exactly one node and is no graph output: a fused op may absorb it.
    pub fn internal(&self, v: ValueId) -> bool {
        self.users[v].len() == 1 && !self.is_output(v)
    }

    /// The only reader of `v`, if it has exactly one and is no graph output.
    pub fn only_user(&self, v: ValueId) -> Option<NodeId> {
        self.internal(v).then(|| self.users[v][0])
    }

    pub fn shape(&self, v: ValueId) -> &'g [Dim] {
        &self.g.value_type(v).shape
    }

    /// The value of a scalar `Constant`.
    pub fn constant(&self, v: ValueId) -> Option<f64> {
        match &self.def(v).op {
            Op::Constant { value, .. } if self.shape(v).is_empty() => Some(value.0),
            _ => None,
        }
    }

    /// For a binary node reading `v`, its other argument.
    pub fn other_arg(&self, node: NodeId, v: ValueId) -> Option<ValueId> {
        match self.g.nodes[node].args[..] {
            [a, b] if a == v => Some(b),
            [a, b] if b == v => Some(a),
            _ => None,
        }
    }
}

/// The frame of a pattern rewrite: every node that `candidate` selects is matched on the graph
/// as it is; then each match is rewritten by `rewrite` (which says what it did, for the log) and
/// each decline is logged with its reason. The replaced nodes stay, unread, for the pipeline's
/// dead-code elimination. Returns whether anything changed.
pub fn rewrite_matches<T>(
    g: &mut Graph,
    log: &mut PassLog,
    pass: &'static str,
    candidate: impl Fn(&Graph, &Node) -> bool,
    matcher: impl Fn(&Matcher, NodeId) -> Result<T, String>,
    mut rewrite: impl FnMut(&mut Graph, &str, T) -> Result<String, PassError>,
) -> Result<bool, PassError> {
    let found: Vec<(NodeId, Result<T, String>)> = {
        let m = Matcher::new(g);
        let nodes: Vec<NodeId> = g.nodes.iter().filter(|(_, n)| candidate(g, n)).map(|(id, _)| id).collect();
        nodes.into_iter().map(|n| (n, matcher(&m, n))).collect()
    };
    let mut changed = false;
    for (n, found) in found {
        let scope = g.nodes[n].scope.clone();
        match found {
            Ok(f) => {
                let detail = rewrite(g, &scope, f)?;
                log.fired(pass, &scope, detail);
                changed = true;
            }
            Err(reason) => log.declined(pass, &scope, reason),
        }
    }
    Ok(changed)
}

/// A new node of `op` on `args` under `scope`, its one result typed by the shape rules; for
/// a pass, its failure named.
pub fn add_value(
    g: &mut Graph,
    pass: &'static str,
    op: Op,
    args: Vec<ValueId>,
    scope: &str,
) -> Result<ValueId, PassError> {
    let types: Vec<_> = args.iter().map(|&a| g.value_type(a)).collect();
    let ty =
        calm_ir::infer::infer(&op, &types).map_err(|e| PassError::Failed { pass, message: e.to_string() })?.remove(0);
    let n = g.add_node(op, args, vec![ty], scope);
    Ok(g.result(n))
}

/// `g.replace_all_uses(old, new)` for a pass, its failure named.
pub fn replace(g: &mut Graph, pass: &'static str, old: ValueId, new: ValueId) -> Result<(), PassError> {
    g.replace_all_uses(old, new).map(|_| ()).map_err(|e| PassError::Failed { pass, message: e.to_string() })
}
