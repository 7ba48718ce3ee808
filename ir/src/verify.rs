//! The verifier: checks a graph's invariants and reports every violation it finds.
//!
//! Invariants checked, in this order:
//! 1. every argument, result and output id resolves to an existing value;
//! 2. every value is defined exactly once: the value's definition names a node that lists it as
//!    that result (so no value is the result of two nodes, and no value dangles);
//! 3. every op gets the number of arguments and defines the number of results it takes;
//! 4. result types equal the types the op's shape rule infers from its arguments (shapes, dtypes
//!    and attributes agree);
//! 5. every type is well formed: fixed dimensions are positive, symbols are identifiers, and a
//!    fully fixed type's size in bytes fits in 64 bits;
//! 6. the graph is acyclic;
//! 7. scopes are `/`-separated paths of non-empty segments; a parameter is named by its scope
//!    path (`{scope}/{leaf}`), and parameter names are unique, as are input names;
//! 8. there is at least one output, output names are unique, every output is a value some node
//!    defines (so it can be computed);
//! 9. random ops draw from distinct streams (two ops on one stream would draw the same numbers).
//!
//! Errors are data: each names the node (id, op, scope) or output at fault.

use std::collections::HashMap;
use std::fmt;

use thiserror::Error;

use crate::graph::{Graph, NodeId, ValueId};
use crate::infer::{infer, TypeError};
use crate::op::Op;
use crate::types::{is_valid_symbol, Bindings, Dim, TensorType};

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyErrorKind {
    #[error("argument {0} does not exist")]
    DanglingArg(ValueId),
    #[error("result {0} does not exist")]
    DanglingResult(ValueId),
    #[error("{value} is listed as result {index} but is defined as result {def_index} of {def_node}")]
    Redefined { value: ValueId, index: usize, def_node: NodeId, def_index: usize },
    #[error("{0} is defined by no node that lists it as a result")]
    Orphan(ValueId),
    #[error("{op} defines {expected} results, found {found}")]
    ResultCount { op: &'static str, expected: usize, found: usize },
    #[error(transparent)]
    Type(#[from] TypeError),
    #[error("result {value} is declared {declared} but the op gives {inferred}")]
    ResultType { value: ValueId, declared: TensorType, inferred: TensorType },
    #[error("{value}: dimension {axis} is 0; dimensions must be positive")]
    ZeroDim { value: ValueId, axis: usize },
    #[error("{value}: `{symbol}` is not a valid symbol name")]
    BadSymbol { value: ValueId, symbol: String },
    #[error("{value}: the size of {ty} overflows 64 bits")]
    TooLarge { value: ValueId, ty: TensorType },
    #[error("the parameters' total size overflows 64 bits")]
    ParamsTooLarge,
    #[error("random stream {stream} is already used by {first}")]
    DuplicateStream { stream: u32, first: NodeId },
    #[error("is on a cycle: {}", cycle_text(.0))]
    Cycle(Vec<NodeId>),
    #[error("scope `{0}` is not a `/`-separated path of non-empty segments")]
    BadScope(String),
    #[error("parameter `{name}` is not named by its scope path (`{scope}/<leaf>`)")]
    ParamOutsideScope { name: String, scope: String },
    #[error("parameter name `{name}` is already used by {first}")]
    DuplicateParam { name: String, first: NodeId },
    #[error("input name `{name}` is already used by {first}")]
    DuplicateInput { name: String, first: NodeId },
    #[error("graph has no outputs")]
    NoOutputs,
    #[error("output name is used twice")]
    DuplicateOutput,
    #[error("output value {0} does not exist")]
    DanglingOutput(ValueId),
}

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Graph,
    Node { node: NodeId, op: &'static str, scope: String },
    Output(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Graph => f.write_str("graph"),
            Location::Node { node, op, scope } => write!(f, "{node} ({op} @ {scope})"),
            Location::Output(name) => write!(f, "output `{name}`"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{location}: {kind}")]
pub struct VerifyError {
    pub location: Location,
    pub kind: VerifyErrorKind,
}

/// All the problems found in one graph.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct VerifyErrors(pub Vec<VerifyError>);

impl fmt::Display for VerifyErrors {
    /// One line: the first few errors, then how many more.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 3;
        let shown: Vec<String> = self.0.iter().take(SHOWN).map(ToString::to_string).collect();
        write!(f, "{}", shown.join("; "))?;
        if self.0.len() > SHOWN {
            write!(f, " (+{} more)", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

impl VerifyErrors {
    pub fn kinds(&self) -> impl Iterator<Item = &VerifyErrorKind> {
        self.0.iter().map(|e| &e.kind)
    }
}

fn cycle_text(nodes: &[NodeId]) -> String {
    let mut names: Vec<String> = nodes.iter().map(NodeId::to_string).collect();
    names.push(nodes[0].to_string());
    names.join(" -> ")
}

/// One cycle among `stuck` (nodes the topological sort could not order): from each stuck node
/// in turn, follow arguments backwards through stuck producers until a node repeats. (A stuck
/// node may only read a dangling value; the walk from it ends without a cycle.)
fn find_cycle(g: &Graph, stuck: &[NodeId]) -> Option<Vec<NodeId>> {
    stuck.iter().find_map(|&start| cycle_from(g, stuck, start))
}

fn cycle_from(g: &Graph, stuck: &[NodeId], start: NodeId) -> Option<Vec<NodeId>> {
    let is_stuck = |n: NodeId| stuck.binary_search(&n).is_ok();
    let mut path: Vec<NodeId> = Vec::new();
    let mut cur = start;
    loop {
        if let Some(i) = path.iter().position(|&p| p == cur) {
            let mut cycle = path.split_off(i);
            // Report it in data-flow order (producer before reader), starting from its lowest id.
            cycle.reverse();
            let start = cycle.iter().enumerate().min_by_key(|(_, n)| **n).map(|(i, _)| i)?;
            cycle.rotate_left(start);
            return Some(cycle);
        }
        path.push(cur);
        cur = g.nodes[cur].args.iter().filter_map(|&a| g.values.get(a)).map(|d| d.def.node).find(|&p| is_stuck(p))?;
    }
}

fn valid_scope(scope: &str) -> bool {
    !scope.is_empty() && scope.split('/').all(|seg| !seg.is_empty() && !seg.chars().any(char::is_whitespace))
}

/// Checks every invariant listed in the module documentation.
pub fn verify(g: &Graph) -> Result<(), VerifyErrors> {
    let mut errors = Vec::new();
    let mut params: HashMap<&str, NodeId> = HashMap::new();
    let mut inputs: HashMap<&str, NodeId> = HashMap::new();
    let mut streams: HashMap<u32, NodeId> = HashMap::new();

    for (n, node) in g.nodes.iter() {
        let mut fail = |kind: VerifyErrorKind| {
            errors.push(VerifyError {
                location: Location::Node { node: n, op: node.op.name(), scope: node.scope.clone() },
                kind,
            })
        };
        // 1 and 2: ids resolve, definitions agree.
        let dangling_args: Vec<ValueId> = node.args.iter().copied().filter(|&a| !g.values.is_valid(a)).collect();
        dangling_args.iter().for_each(|&a| fail(VerifyErrorKind::DanglingArg(a)));
        let mut results_ok = true;
        for (index, &v) in node.results.iter().enumerate() {
            match g.values.get(v) {
                None => {
                    fail(VerifyErrorKind::DanglingResult(v));
                    results_ok = false;
                }
                Some(data) if data.def.node != n || data.def.index != index => {
                    fail(VerifyErrorKind::Redefined {
                        value: v,
                        index,
                        def_node: data.def.node,
                        def_index: data.def.index,
                    });
                    results_ok = false;
                }
                Some(data) => check_type_well_formed(v, &data.ty, &mut fail),
            }
        }
        // 3 and 4: arity, result count, types.
        let expected = node.op.num_results();
        if node.results.len() != expected {
            fail(VerifyErrorKind::ResultCount { op: node.op.name(), expected, found: node.results.len() });
            results_ok = false;
        }
        if dangling_args.is_empty() {
            let arg_types: Vec<&TensorType> = node.args.iter().map(|&a| g.value_type(a)).collect();
            match infer(&node.op, &arg_types) {
                Err(e) => fail(VerifyErrorKind::Type(e)),
                Ok(inferred) if results_ok => {
                    for (&v, inferred) in node.results.iter().zip(inferred) {
                        let declared = g.value_type(v);
                        if *declared != inferred {
                            fail(VerifyErrorKind::ResultType { value: v, declared: declared.clone(), inferred });
                        }
                    }
                }
                Ok(_) => {}
            }
        }
        // 7: scopes and names.
        if !valid_scope(&node.scope) {
            fail(VerifyErrorKind::BadScope(node.scope.clone()));
        }
        if let Some(name) = node.op.param_name() {
            let leaf = name.strip_prefix(node.scope.as_str()).and_then(|rest| rest.strip_prefix('/'));
            if !leaf.is_some_and(|l| !l.is_empty() && !l.contains('/')) {
                fail(VerifyErrorKind::ParamOutsideScope { name: name.to_string(), scope: node.scope.clone() });
            }
            if let Some(&first) = params.get(name) {
                fail(VerifyErrorKind::DuplicateParam { name: name.to_string(), first });
            } else {
                params.insert(name, n);
            }
        }
        // 9: random streams.
        if let Op::RandomUniform { stream, .. } | Op::Dropout { stream, .. } = node.op {
            if let Some(&first) = streams.get(&stream) {
                fail(VerifyErrorKind::DuplicateStream { stream, first });
            } else {
                streams.insert(stream, n);
            }
        }
        if let Some(name) = node.op.input_name() {
            if let Some(&first) = inputs.get(name) {
                fail(VerifyErrorKind::DuplicateInput { name: name.to_string(), first });
            } else {
                inputs.insert(name, n);
            }
        }
    }

    // Every later count of the parameters (summaries, budgets, initialisation) may rely on it.
    if g.checked_param_count().is_none() {
        errors.push(VerifyError { location: Location::Graph, kind: VerifyErrorKind::ParamsTooLarge });
    }

    // 2: values nobody defines.
    for (v, data) in g.values.iter() {
        let listed = g.nodes.get(data.def.node).and_then(|node| node.results.get(data.def.index)) == Some(&v);
        if !listed {
            errors.push(VerifyError { location: Location::Graph, kind: VerifyErrorKind::Orphan(v) });
        }
    }

    // 6: cycles (nodes that read dangling values are reported above already). One cycle is
    // reported, at its first node; the nodes downstream of it are not errors of their own.
    if let Err(stuck) = g.topo_order() {
        if let Some(cycle) = find_cycle(g, &stuck) {
            let node = &g.nodes[cycle[0]];
            errors.push(VerifyError {
                location: Location::Node { node: cycle[0], op: node.op.name(), scope: node.scope.clone() },
                kind: VerifyErrorKind::Cycle(cycle),
            });
        }
    }

    // 8: outputs.
    if g.outputs.is_empty() {
        errors.push(VerifyError { location: Location::Graph, kind: VerifyErrorKind::NoOutputs });
    }
    for (i, out) in g.outputs.iter().enumerate() {
        let location = Location::Output(out.name.clone());
        if g.outputs[..i].iter().any(|o| o.name == out.name) {
            errors.push(VerifyError { location: location.clone(), kind: VerifyErrorKind::DuplicateOutput });
        }
        if !g.values.is_valid(out.value) {
            errors.push(VerifyError { location, kind: VerifyErrorKind::DanglingOutput(out.value) });
        }
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(VerifyErrors(errors))
    }
}

fn check_type_well_formed(v: ValueId, ty: &TensorType, fail: &mut impl FnMut(VerifyErrorKind)) {
    for (axis, d) in ty.shape.iter().enumerate() {
        match d {
            Dim::Fixed(0) => fail(VerifyErrorKind::ZeroDim { value: v, axis }),
            Dim::Sym(s) if !is_valid_symbol(s) => fail(VerifyErrorKind::BadSymbol { value: v, symbol: s.clone() }),
            _ => {}
        }
    }
    if ty.is_fully_fixed() && ty.size_bytes(&Bindings::new()).is_err() {
        fail(VerifyErrorKind::TooLarge { value: v, ty: ty.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::EntityId;
    use crate::graph::ValueData;
    use crate::op::{Init, Op};
    use crate::sample::tiny_classifier;
    use crate::shape;
    use crate::types::DType;

    fn kinds(g: &Graph) -> Vec<VerifyErrorKind> {
        verify(g).expect_err("should not verify").0.into_iter().map(|e| e.kind).collect()
    }

    /// The first node with op `name`.
    fn find(g: &Graph, name: &str) -> NodeId {
        g.nodes.iter().find(|(_, n)| n.op.name() == name).map(|(id, _)| id).unwrap()
    }

    #[test]
    fn the_sample_verifies() {
        verify(&tiny_classifier()).unwrap();
    }

    #[test]
    fn dangling_argument_and_output() {
        let mut g = tiny_classifier();
        let add = find(&g, "add");
        g.nodes[add].args[1] = ValueId::new(10_000);
        g.outputs[0].value = ValueId::new(10_001);
        let k = kinds(&g);
        assert!(k.contains(&VerifyErrorKind::DanglingArg(ValueId::new(10_000))), "{k:?}");
        assert!(k.contains(&VerifyErrorKind::DanglingOutput(ValueId::new(10_001))), "{k:?}");
    }

    #[test]
    fn a_value_defined_twice_or_by_no_node() {
        let mut g = tiny_classifier();
        let x = g.inputs().next().unwrap().0;
        let xv = g.result(x);
        // A second node claims x's value as its result.
        let ty = g.value_type(xv).clone();
        g.nodes.push(crate::graph::Node {
            op: Op::Input { name: "again".into(), dtype: ty.dtype, shape: ty.shape },
            args: vec![],
            results: vec![xv],
            scope: "tiny".into(),
        });
        assert!(kinds(&g).iter().any(|k| matches!(k, VerifyErrorKind::Redefined { .. })));

        let mut g = tiny_classifier();
        let owner = find(&g, "gelu");
        g.values.push(ValueData {
            ty: crate::types::TensorType::scalar(DType::F32),
            def: crate::graph::ValueDef { node: owner, index: 0 },
        });
        assert!(kinds(&g).iter().any(|k| matches!(k, VerifyErrorKind::Orphan(_))));
    }

    #[test]
    fn arity_and_result_count() {
        let mut g = tiny_classifier();
        let add = find(&g, "add");
        g.nodes[add].args.pop();
        assert!(kinds(&g).iter().any(|k| matches!(k, VerifyErrorKind::Type(crate::infer::TypeError::Arity { .. }))));
        let mut g = tiny_classifier();
        let topk = find(&g, "top_k");
        g.nodes[topk].results.pop();
        assert!(kinds(&g).iter().any(|k| matches!(k, VerifyErrorKind::ResultCount { expected: 2, found: 1, .. })));
    }

    #[test]
    fn declared_result_types_must_match_inference() {
        let mut g = tiny_classifier();
        let v = g.result(find(&g, "gelu"));
        g.values[v].ty.shape[2] = 33u64.into();
        let k = kinds(&g);
        assert!(k.iter().any(|k| matches!(k, VerifyErrorKind::ResultType { .. })), "{k:?}");
        // Its readers now see a shape that does not fit either.
        assert!(k.iter().any(|k| matches!(k, VerifyErrorKind::Type(crate::infer::TypeError::Shape(_)))), "{k:?}");
    }

    #[test]
    fn dtype_mismatch_is_reported_at_the_reader() {
        let mut g = tiny_classifier();
        let x = g.inputs().next().unwrap().0;
        if let Op::Input { dtype, .. } = &mut g.nodes[x].op {
            *dtype = DType::F16;
        }
        let v = g.result(x);
        g.values[v].ty.dtype = DType::F16;
        let errs = verify(&g).unwrap_err();
        let e =
            errs.0.iter().find(|e| matches!(e.kind, VerifyErrorKind::Type(crate::infer::TypeError::DType(_)))).unwrap();
        assert!(matches!(&e.location, Location::Node { op: "matmul", scope, .. } if scope == "tiny/block/proj"), "{e}");
    }

    #[test]
    fn parameters_whose_total_overflows_are_refused() {
        let mut b = crate::GraphBuilder::new("m");
        // Each 2^61 elements (2^63 bytes, within 64 bits); nine of them are not.
        let x = b.input("x", DType::F32, shape![3u64]).unwrap();
        for i in 0..9 {
            b.scoped(&format!("l{i}"), |b| b.param("w", shape![1u64 << 31, 1u64 << 30], crate::op::Init::Zeros))
                .unwrap();
        }
        b.output("x", x);
        assert!(kinds(b.graph()).contains(&VerifyErrorKind::ParamsTooLarge));
        assert_eq!(b.graph().param_count(), u64::MAX);
    }

    #[test]
    fn oversized_types_and_shared_random_streams() {
        let mut b = crate::GraphBuilder::new("m");
        let x = b.input("x", DType::F32, shape![1u64 << 40, 1u64 << 40]).unwrap();
        b.output("x", x);
        assert!(kinds(b.graph()).iter().any(|k| matches!(k, VerifyErrorKind::TooLarge { .. })));
        let mut b = crate::GraphBuilder::new("m");
        b.enable_randomness().unwrap();
        let u = b.random_uniform(shape![3u64]).unwrap();
        let w = b.random_uniform(shape![3u64]).unwrap();
        let s = b.add(u, w).unwrap();
        b.output("s", s);
        let mut g = b.graph().clone();
        verify(&g).unwrap();
        let second = g.producer(w);
        if let Op::RandomUniform { stream, .. } = &mut g.nodes[second].op {
            *stream = 0;
        }
        assert!(kinds(&g).iter().any(|k| matches!(k, VerifyErrorKind::DuplicateStream { stream: 0, .. })));
    }

    #[test]
    fn a_cycle_is_found_beside_a_dangling_argument() {
        let mut g = tiny_classifier();
        let gelu = find(&g, "gelu");
        let ln = g.result(find(&g, "layer_norm"));
        g.nodes[gelu].args[0] = ln;
        // A lower node reads a value that does not exist.
        let first_add = find(&g, "add");
        g.nodes[first_add].args[1] = ValueId::new(50_000);
        let k = kinds(&g);
        assert!(k.iter().any(|k| matches!(k, VerifyErrorKind::Cycle(_))), "{k:?}");
    }

    #[test]
    fn zero_dimensions_and_bad_symbols() {
        let mut b = crate::GraphBuilder::new("m");
        let x = b.input("x", DType::F32, shape![0u64, "bad sym"]).unwrap();
        b.output("x", x);
        let k = kinds(b.graph());
        assert!(k.contains(&VerifyErrorKind::ZeroDim { value: x, axis: 0 }), "{k:?}");
        assert!(k.contains(&VerifyErrorKind::BadSymbol { value: x, symbol: "bad sym".into() }), "{k:?}");
    }

    #[test]
    fn cycles_are_found() {
        let mut g = tiny_classifier();
        // Make the first gelu read the layer norm that (indirectly) reads it.
        let gelu = find(&g, "gelu");
        let ln = g.result(find(&g, "layer_norm"));
        let proj = g.nodes[gelu].args[0];
        // Same type as the projection, so only the cycle is wrong.
        assert_eq!(g.value_type(proj), g.value_type(ln));
        g.nodes[gelu].args[0] = ln;
        let k = kinds(&g);
        let [VerifyErrorKind::Cycle(cycle)] = &k[..] else { panic!("exactly one cycle error: {k:?}") };
        // gelu -> attention -> residual add -> layer norm -> gelu, and nothing downstream of it.
        assert_eq!(cycle[0], gelu);
        assert_eq!(*cycle.last().unwrap(), g.producer(ln));
        for pair in cycle.windows(2) {
            let reads: Vec<NodeId> = g.nodes[pair[1]].args.iter().map(|&a| g.producer(a)).collect();
            assert!(reads.contains(&pair[0]), "{pair:?} is not an edge");
        }
        assert!(g.nodes[gelu].args.iter().any(|&a| g.producer(a) == *cycle.last().unwrap()));
    }

    #[test]
    fn names_and_scopes() {
        let mut g = tiny_classifier();
        let params: Vec<NodeId> = g.params().map(|(n, _, _)| n).collect();
        let first_name = g.nodes[params[0]].op.param_name().unwrap().to_string();
        let (scope1, scope0) = (g.nodes[params[1]].scope.clone(), g.nodes[params[0]].scope.clone());
        assert_eq!(scope0, scope1, "weight and bias share a scope");
        if let Op::Param { name, .. } = &mut g.nodes[params[1]].op {
            *name = first_name.clone();
        }
        let k = kinds(&g);
        assert!(k.contains(&VerifyErrorKind::DuplicateParam { name: first_name, first: params[0] }), "{k:?}");

        let mut g = tiny_classifier();
        if let Op::Param { name, .. } = &mut g.nodes[params[0]].op {
            *name = "elsewhere/weight".into();
        }
        g.nodes[params[1]].scope = "tiny//block".into();
        let k = kinds(&g);
        assert!(k.iter().any(|k| matches!(k, VerifyErrorKind::ParamOutsideScope { .. })), "{k:?}");
        assert!(k.contains(&VerifyErrorKind::BadScope("tiny//block".into())), "{k:?}");

        let mut g = tiny_classifier();
        let inputs: Vec<NodeId> = g.inputs().map(|(n, _, _)| n).collect();
        if let Op::Input { name, .. } = &mut g.nodes[inputs[1]].op {
            *name = "x".into();
        }
        assert!(kinds(&g).contains(&VerifyErrorKind::DuplicateInput { name: "x".into(), first: inputs[0] }));
    }

    #[test]
    fn outputs_must_exist_and_be_unique() {
        let mut g = tiny_classifier();
        let dup = g.outputs[0].clone();
        g.outputs.push(dup);
        assert!(kinds(&g).contains(&VerifyErrorKind::DuplicateOutput));
        g.outputs.clear();
        assert_eq!(kinds(&g), [VerifyErrorKind::NoOutputs]);
    }

    #[test]
    fn parameters_need_fixed_shapes() {
        let mut b = crate::GraphBuilder::new("m");
        let p = b
            .op(
                Op::Param {
                    name: "m/w".into(),
                    dtype: DType::F32,
                    shape: vec![3u64.into()],
                    init: Init::Zeros,
                    frozen: false,
                },
                &[],
            )
            .unwrap();
        b.output("p", p);
        let mut g = b.graph().clone();
        let node = g.producer(p);
        if let Op::Param { shape, .. } = &mut g.nodes[node].op {
            shape[0] = "batch".into();
        }
        g.values[p].ty.shape[0] = "batch".into();
        let k = kinds(&g);
        assert!(
            matches!(&k[..], [VerifyErrorKind::Type(crate::infer::TypeError::Attribute(m))] if m.contains("symbol `batch`")),
            "{k:?}"
        );
    }

    #[test]
    fn every_error_is_reported_at_once_and_printed_on_one_line() {
        let mut g = tiny_classifier();
        let add = find(&g, "add");
        g.nodes[add].args[1] = ValueId::new(10_000);
        let gelu = find(&g, "gelu");
        g.nodes[gelu].scope = "".into();
        g.outputs.clear();
        let errs = verify(&g).unwrap_err();
        assert_eq!(errs.0.len(), 3, "{errs:?}");
        let line = errs.to_string();
        assert!(!line.contains('\n'));
        assert!(line.contains("(add @ tiny/"), "{line}");
    }
}
