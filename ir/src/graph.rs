//! The graph: nodes and values in arenas, named outputs, and the queries passes need.
//!
//! A node applies an [`Op`] to argument values and defines its result values; every value is
//! defined by exactly one node (inputs and parameters are nodes too). The fields are public so
//! that passes can rewrite freely; [`verify`](crate::verify::verify) checks the invariants after.

use std::collections::BTreeSet;

use crate::entity::{PrimaryMap, SecondaryMap};
use crate::entity_id;
use crate::infer::TypeError;
use crate::op::Op;
use crate::types::TensorType;

entity_id!(
    /// A node of the graph, written `n3`.
    NodeId,
    "n"
);
entity_id!(
    /// A value (a tensor) of the graph, written `v3`.
    ValueId,
    "v"
);

/// One application of an op.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub args: Vec<ValueId>,
    pub results: Vec<ValueId>,
    /// Where the node sits in the model, e.g. `calm/identity_pool/cluster_e/l1`.
    pub scope: String,
}

/// Where a value comes from: result `index` of `node`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ValueDef {
    pub node: NodeId,
    pub index: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValueData {
    pub ty: TensorType,
    pub def: ValueDef,
}

/// A named result of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub value: ValueId,
}

/// Why [`Graph::retain_nodes`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetainError {
    #[error("{node} reads {value}, whose node would be removed")]
    ReadsRemoved { node: NodeId, value: ValueId },
    #[error("output `{0}` would lose its value")]
    OutputRemoved(String),
    #[error("{0} is on a cycle")]
    Cycle(NodeId),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub name: String,
    pub nodes: PrimaryMap<NodeId, Node>,
    pub values: PrimaryMap<ValueId, ValueData>,
    pub outputs: Vec<Output>,
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Graph { name: name.to_string(), ..Graph::default() }
    }

    /// Adds a node whose results have the given types, without checking them (the builder
    /// infers types; readers and passes rely on the verifier).
    pub fn add_node(&mut self, op: Op, args: Vec<ValueId>, result_types: Vec<TensorType>, scope: &str) -> NodeId {
        let node = self.nodes.next_key();
        let results = result_types
            .into_iter()
            .enumerate()
            .map(|(index, ty)| self.values.push(ValueData { ty, def: ValueDef { node, index } }))
            .collect();
        self.nodes.push(Node { op, args, results, scope: scope.to_string() })
    }

    pub fn value_type(&self, v: ValueId) -> &TensorType {
        &self.values[v].ty
    }

    /// The node that defines `v`.
    pub fn producer(&self, v: ValueId) -> NodeId {
        self.values[v].def.node
    }

    /// The first result of `n` (most ops have exactly one).
    pub fn result(&self, n: NodeId) -> ValueId {
        self.nodes[n].results[0]
    }

    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.value)
    }

    /// Declares `value` as the named output `name` (replacing an output of that name).
    pub fn set_output(&mut self, name: &str, value: ValueId) {
        match self.outputs.iter_mut().find(|o| o.name == name) {
            Some(o) => o.value = value,
            None => self.outputs.push(Output { name: name.to_string(), value }),
        }
    }

    /// For each value, the nodes that read it (a node reading a value twice is listed twice).
    pub fn users(&self) -> SecondaryMap<ValueId, Vec<NodeId>> {
        let mut users: SecondaryMap<ValueId, Vec<NodeId>> = SecondaryMap::new();
        for (n, node) in self.nodes.iter() {
            for &a in &node.args {
                users[a].push(n);
            }
        }
        users
    }

    /// Makes every reader of `old` (nodes and outputs) read `new` instead; the types must agree.
    /// Returns how many uses were rewritten.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) -> Result<usize, TypeError> {
        let (from, to) = (self.value_type(old), self.value_type(new));
        if from != to {
            return Err(TypeError::Shape(format!("cannot replace {old}: {from} with {new}: {to}")));
        }
        let mut count = 0;
        for node in self.nodes.values_mut() {
            for a in node.args.iter_mut().filter(|a| **a == old) {
                *a = new;
                count += 1;
            }
        }
        for o in self.outputs.iter_mut().filter(|o| o.value == old) {
            o.value = new;
            count += 1;
        }
        Ok(count)
    }

    /// Nodes in an order where every node follows the producers of its arguments (stable:
    /// arena order where the dependencies allow). `Err` holds the nodes that sit on or behind a
    /// cycle, or read a value that does not exist.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, Vec<NodeId>> {
        let mut pending: SecondaryMap<NodeId, usize> = SecondaryMap::new();
        let mut readers: SecondaryMap<NodeId, Vec<NodeId>> = SecondaryMap::new();
        let mut broken = Vec::new();
        for (n, node) in self.nodes.iter() {
            for &a in &node.args {
                match self.values.get(a).map(|d| d.def.node).filter(|p| self.nodes.is_valid(*p)) {
                    Some(p) => {
                        pending[n] += 1;
                        readers[p].push(n);
                    }
                    None => broken.push(n),
                }
            }
        }
        // A heap keyed by id keeps the order deterministic and close to arena order.
        let mut ready: BTreeSet<NodeId> = self.nodes.keys().filter(|&n| pending[n] == 0).collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for &r in &readers[n] {
                pending[r] -= 1;
                if pending[r] == 0 {
                    ready.insert(r);
                }
            }
        }
        if order.len() == self.nodes.len() && broken.is_empty() {
            Ok(order)
        } else {
            let mut stuck: Vec<NodeId> = self.nodes.keys().filter(|&n| pending[n] > 0).collect();
            stuck.extend(broken);
            stuck.sort();
            stuck.dedup();
            Err(stuck)
        }
    }

    /// The parameter nodes, in arena order, with their names and types.
    pub fn params(&self) -> impl Iterator<Item = (NodeId, &str, &TensorType)> {
        self.nodes.iter().filter_map(|(n, node)| {
            let name = node.op.param_name()?;
            Some((n, name, self.value_type(node.results[0])))
        })
    }

    /// The input nodes, in arena order, with their names and types.
    pub fn inputs(&self) -> impl Iterator<Item = (NodeId, &str, &TensorType)> {
        self.nodes.iter().filter_map(|(n, node)| {
            let name = node.op.input_name()?;
            Some((n, name, self.value_type(node.results[0])))
        })
    }

    /// Total number of parameter elements (all parameter shapes are fixed), or `None` where it
    /// overflows 64 bits (the verifier refuses such graphs).
    /// Safe on graphs not yet verified (the verifier calls it): a parameter node without a
    /// result, or whose result does not exist, counts nothing (the verifier reports it).
    pub fn checked_param_count(&self) -> Option<u64> {
        let types = self.nodes.values().filter(|node| node.op.param_name().is_some()).filter_map(|node| {
            let v = *node.results.first()?;
            self.values.get(v).map(|data| &data.ty)
        });
        types.into_iter().try_fold(0u64, |total, t| {
            let numel = t.shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(d.fixed().unwrap_or(0)))?;
            total.checked_add(numel)
        })
    }

    /// Total number of parameter elements of a verified graph (saturating, so it never panics).
    pub fn param_count(&self) -> u64 {
        self.checked_param_count().unwrap_or(u64::MAX)
    }

    /// Keeps only the nodes for which `keep` holds, renumbering nodes and values densely in
    /// topological order (arena order where the dependencies allow, so nodes a pass appended
    /// move up to just before their first reader). Fails, changing nothing, if a kept node or
    /// output reads a value of a removed node, or the graph has a cycle.
    pub fn retain_nodes(&mut self, keep: impl Fn(NodeId) -> bool) -> Result<(), RetainError> {
        let order = self.topo_order().map_err(|stuck| RetainError::Cycle(stuck[0]))?;
        let mut value_map: SecondaryMap<ValueId, Option<ValueId>> = SecondaryMap::new();
        let mut out = Graph::new(&self.name);
        for n in order.into_iter().filter(|&n| keep(n)) {
            let node = &self.nodes[n];
            let mut args = Vec::with_capacity(node.args.len());
            for &a in &node.args {
                args.push(value_map[a].ok_or(RetainError::ReadsRemoved { node: n, value: a })?);
            }
            let types = node.results.iter().map(|&r| self.value_type(r).clone()).collect();
            let new = out.add_node(node.op.clone(), args, types, &node.scope);
            for (&old, &new) in node.results.iter().zip(&out.nodes[new].results) {
                value_map[old] = Some(new);
            }
        }
        for o in &self.outputs {
            let value = value_map[o.value].ok_or_else(|| RetainError::OutputRemoved(o.name.clone()))?;
            out.outputs.push(Output { name: o.name.clone(), value });
        }
        *self = out;
        Ok(())
    }

    /// Every symbol that some value's shape mentions, sorted.
    pub fn symbols(&self) -> BTreeSet<String> {
        self.values.values().flat_map(|v| v.ty.symbols().map(str::to_string)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::EntityId;
    use crate::sample::tiny_classifier;

    #[test]
    fn retain_renumbers_and_refuses_to_cut_live_edges() {
        let mut g = tiny_classifier();
        let before = g.clone();
        // Removing the first input is refused: the projection reads it.
        assert!(matches!(g.retain_nodes(|n| n.index() != 0), Err(RetainError::ReadsRemoved { .. })));
        assert_eq!(g, before, "a refused retain changes nothing");
        g.retain_nodes(|_| true).unwrap();
        assert_eq!(g, before);
    }

    #[test]
    fn retain_moves_appended_nodes_before_their_readers() {
        let mut g = tiny_classifier();
        // Append a node computing a new value and make the first gelu's reader... read it.
        let gelu = g.nodes.iter().find(|(_, n)| n.op.name() == "gelu").map(|(id, _)| id).unwrap();
        let x = g.nodes[gelu].args[0];
        let ty = g.value_type(x).clone();
        let relu = g.add_node(Op::Unary(crate::op::UnaryFn::Relu), vec![x], vec![ty], "tiny/extra");
        let relu_v = g.result(relu);
        g.nodes[gelu].args[0] = relu_v;
        g.retain_nodes(|_| true).unwrap();
        crate::verify(&g).unwrap();
        let pos = |name: &str| g.nodes.iter().position(|(_, n)| n.op.name() == name).unwrap();
        assert_eq!(pos("relu") + 1, pos("gelu"));
    }

    #[test]
    fn replace_all_uses_checks_types() {
        let mut g = tiny_classifier();
        let x = g.result(g.inputs().next().unwrap().0);
        let mask = g.result(g.inputs().nth(1).unwrap().0);
        assert!(g.replace_all_uses(x, mask).is_err());
        let n = g.replace_all_uses(x, x).unwrap();
        assert_eq!(n, g.users()[x].len());
    }

    #[test]
    fn topo_order_puts_producers_first() {
        let g = tiny_classifier();
        let order = g.topo_order().unwrap();
        let mut pos = SecondaryMap::<NodeId, usize>::new();
        for (i, &n) in order.iter().enumerate() {
            pos[n] = i;
        }
        for (n, node) in g.nodes.iter() {
            for &a in &node.args {
                assert!(pos[g.producer(a)] < pos[n]);
            }
        }
    }
}
