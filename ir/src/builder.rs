//! The graph builder: adds nodes under a scope stack, inferring result types as it goes.
//!
//! One method per primitive op lives here; compositions of primitives (`linear`, `mlp`,
//! `layer_norm`, attention, masked means) live in [`crate::nn`].

use thiserror::Error;

use crate::graph::{Graph, NodeId, ValueId};
use crate::infer::{infer, TypeError};
use crate::op::{BinaryFn, ConstValue, Init, Op, UnaryFn};
use crate::types::{DType, Shape, TensorType};
use crate::verify::{verify, VerifyErrors};

/// An op the builder could not add: names the scope and op, and says why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{scope}: {op}: {source}")]
pub struct BuildError {
    pub scope: String,
    pub op: &'static str,
    #[source]
    pub source: TypeError,
}

pub type BuildResult<T> = Result<T, BuildError>;

/// Keys of the counter-based generator for the random ops of a training graph.
#[derive(Copy, Clone, Debug)]
struct RandomKey {
    seed: ValueId,
    offset: ValueId,
}

pub struct GraphBuilder {
    graph: Graph,
    scopes: Vec<String>,
    random_key: Option<RandomKey>,
    next_stream: u32,
    /// Dropout is on (training graphs); random ops need only a key.
    training: bool,
    /// Parameters created now are frozen (a pretrained backbone's).
    frozen: bool,
}

impl GraphBuilder {
    /// A builder whose root scope is `name`.
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: Graph::new(name),
            scopes: vec![name.to_string()],
            random_key: None,
            next_stream: 0,
            training: false,
            frozen: false,
        }
    }

    /// A builder that adds to an existing graph under `scope` (a `/` path), for passes that
    /// insert layers. Random ops it adds reuse the graph's `seed` and `offset` inputs, if it has
    /// them, on streams after the graph's last; dropout is on if the graph already has some.
    pub fn edit(graph: Graph, scope: &str) -> Self {
        let input = |name: &str| graph.inputs().find(|(_, n, _)| *n == name).map(|(id, _, _)| graph.result(id));
        let random_key = input("seed").zip(input("offset")).map(|(seed, offset)| RandomKey { seed, offset });
        let next_stream = graph
            .nodes
            .values()
            .filter_map(|n| match n.op {
                // Saturating: the verifier refuses a second op on the last stream.
                Op::RandomUniform { stream, .. } | Op::Dropout { stream, .. } => Some(stream.saturating_add(1)),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let training = graph.nodes.values().any(|n| matches!(n.op, Op::Dropout { .. }));
        let scopes = scope.split('/').map(str::to_string).collect();
        GraphBuilder { graph, scopes, random_key, next_stream, training, frozen: false }
    }

    /// The graph, unverified (an editing pass verifies after its clean-up).
    pub fn into_graph(self) -> Graph {
        self.graph
    }

    /// Mutable access to the graph, for rewiring between additions.
    pub fn graph_mut(&mut self) -> &mut Graph {
        &mut self.graph
    }

    /// The graph so far, for inspection.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Verifies and returns the graph.
    pub fn finish(self) -> Result<Graph, VerifyErrors> {
        verify(&self.graph)?;
        Ok(self.graph)
    }

    /// The current scope path, e.g. `calm/stage1/mlp_s`.
    pub fn scope(&self) -> String {
        self.scopes.join("/")
    }

    /// Runs `f` with `name` pushed on the scope stack.
    pub fn scoped<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        self.scopes.push(name.to_string());
        let r = f(self);
        self.scopes.pop();
        r
    }

    pub fn type_of(&self, v: ValueId) -> &TensorType {
        self.graph.value_type(v)
    }

    pub fn shape_of(&self, v: ValueId) -> &Shape {
        &self.graph.value_type(v).shape
    }

    pub fn rank_of(&self, v: ValueId) -> usize {
        self.graph.value_type(v).rank()
    }

    pub fn output(&mut self, name: &str, v: ValueId) {
        self.graph.set_output(name, v);
    }

    fn error(&self, op: &Op, source: TypeError) -> BuildError {
        BuildError { scope: self.scope(), op: op.name(), source }
    }

    /// Adds `op` on `args` in the current scope; returns the node.
    pub fn node(&mut self, op: Op, args: &[ValueId]) -> BuildResult<NodeId> {
        let types: Vec<&TensorType> = args.iter().map(|&a| self.graph.value_type(a)).collect();
        let results = infer(&op, &types).map_err(|e| self.error(&op, e))?;
        let scope = self.scope();
        Ok(self.graph.add_node(op, args.to_vec(), results, &scope))
    }

    /// Adds a single-result op and returns its value.
    pub fn op(&mut self, op: Op, args: &[ValueId]) -> BuildResult<ValueId> {
        let n = self.node(op, args)?;
        Ok(self.graph.result(n))
    }

    /// Turns a possibly negative axis (`-1` is the last) into an index for a value of `rank`.
    pub fn axis(&self, op: &'static str, rank: usize, axis: isize) -> BuildResult<usize> {
        let a = if axis < 0 { axis + rank as isize } else { axis };
        if a < 0 || a as usize >= rank {
            return Err(BuildError {
                scope: self.scope(),
                op,
                source: TypeError::Attribute(format!("axis {axis} is out of range for rank {rank}")),
            });
        }
        Ok(a as usize)
    }

    fn axes(&self, op: &'static str, rank: usize, axes: &[isize]) -> BuildResult<Vec<usize>> {
        axes.iter().map(|&a| self.axis(op, rank, a)).collect()
    }

    // --- sources ---

    pub fn input(&mut self, name: &str, dtype: DType, shape: Shape) -> BuildResult<ValueId> {
        self.op(Op::Input { name: name.to_string(), dtype, shape }, &[])
    }

    /// A parameter named `{scope}/{leaf}` (frozen inside [`frozen`](Self::frozen)).
    pub fn param(&mut self, leaf: &str, shape: Shape, init: Init) -> BuildResult<ValueId> {
        let name = format!("{}/{leaf}", self.scope());
        self.op(Op::Param { name, dtype: DType::F32, shape, init, frozen: self.frozen }, &[])
    }

    /// Runs `f` with every parameter it creates frozen.
    pub fn frozen<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let before = std::mem::replace(&mut self.frozen, true);
        let r = f(self);
        self.frozen = before;
        r
    }

    /// Turns dropout on (training graphs) or off.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    pub fn constant(&mut self, value: f64, dtype: DType) -> BuildResult<ValueId> {
        self.op(Op::Constant { value: ConstValue(value), dtype }, &[])
    }

    /// An f32 scalar constant.
    pub fn scalar(&mut self, value: f64) -> BuildResult<ValueId> {
        self.constant(value, DType::F32)
    }

    pub fn iota(&mut self, shape: Shape, axis: usize) -> BuildResult<ValueId> {
        self.op(Op::Iota { shape, axis }, &[])
    }

    /// Declares the `seed` and `offset` u32 inputs that key every random op built after this
    /// call (each op gets its own stream). Dropout also needs [`set_training`](Self::set_training).
    pub fn enable_randomness(&mut self) -> BuildResult<(ValueId, ValueId)> {
        let seed = self.input("seed", DType::U32, Vec::new())?;
        let offset = self.input("offset", DType::U32, Vec::new())?;
        self.random_key = Some(RandomKey { seed, offset });
        Ok((seed, offset))
    }

    fn random_key(&self, op: &Op) -> BuildResult<RandomKey> {
        self.random_key.ok_or_else(|| {
            self.error(
                op,
                TypeError::Attribute("random op in a graph without a seed input (call enable_randomness)".into()),
            )
        })
    }

    fn take_stream(&mut self) -> u32 {
        self.next_stream += 1;
        self.next_stream - 1
    }

    /// Uniform numbers in (0, 1) of the given shape, from the next stream.
    pub fn random_uniform(&mut self, shape: Shape) -> BuildResult<ValueId> {
        let op = Op::RandomUniform { shape, stream: self.next_stream };
        let key = self.random_key(&op)?;
        self.take_stream();
        self.op(op, &[key.seed, key.offset])
    }

    /// Dropout with probability `p`: the identity unless training with a random key and `p > 0`.
    pub fn dropout(&mut self, x: ValueId, p: f64) -> BuildResult<ValueId> {
        match self.random_key {
            Some(key) if p > 0.0 && self.training => {
                let stream = self.take_stream();
                self.op(Op::Dropout { p, stream }, &[x, key.seed, key.offset])
            }
            _ => Ok(x),
        }
    }

    // --- elementwise ---

    pub fn unary(&mut self, f: UnaryFn, x: ValueId) -> BuildResult<ValueId> {
        self.op(Op::Unary(f), &[x])
    }
    pub fn binary(&mut self, f: BinaryFn, a: ValueId, b: ValueId) -> BuildResult<ValueId> {
        self.op(Op::Binary(f), &[a, b])
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> BuildResult<ValueId> {
        self.binary(BinaryFn::Add, a, b)
    }
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> BuildResult<ValueId> {
        self.binary(BinaryFn::Sub, a, b)
    }
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> BuildResult<ValueId> {
        self.binary(BinaryFn::Mul, a, b)
    }
    pub fn div(&mut self, a: ValueId, b: ValueId) -> BuildResult<ValueId> {
        self.binary(BinaryFn::Div, a, b)
    }
    pub fn max(&mut self, a: ValueId, b: ValueId) -> BuildResult<ValueId> {
        self.binary(BinaryFn::Max, a, b)
    }
    pub fn equal(&mut self, a: ValueId, b: ValueId) -> BuildResult<ValueId> {
        self.binary(BinaryFn::Equal, a, b)
    }
    pub fn less(&mut self, a: ValueId, b: ValueId) -> BuildResult<ValueId> {
        self.binary(BinaryFn::Less, a, b)
    }
    pub fn neg(&mut self, x: ValueId) -> BuildResult<ValueId> {
        self.unary(UnaryFn::Neg, x)
    }
    pub fn exp(&mut self, x: ValueId) -> BuildResult<ValueId> {
        self.unary(UnaryFn::Exp, x)
    }
    pub fn log(&mut self, x: ValueId) -> BuildResult<ValueId> {
        self.unary(UnaryFn::Log, x)
    }
    pub fn sqrt(&mut self, x: ValueId) -> BuildResult<ValueId> {
        self.unary(UnaryFn::Sqrt, x)
    }
    pub fn rsqrt(&mut self, x: ValueId) -> BuildResult<ValueId> {
        self.unary(UnaryFn::Rsqrt, x)
    }
    pub fn tanh(&mut self, x: ValueId) -> BuildResult<ValueId> {
        self.unary(UnaryFn::Tanh, x)
    }
    pub fn sigmoid(&mut self, x: ValueId) -> BuildResult<ValueId> {
        self.unary(UnaryFn::Sigmoid, x)
    }
    pub fn relu(&mut self, x: ValueId) -> BuildResult<ValueId> {
        self.unary(UnaryFn::Relu, x)
    }
    pub fn gelu(&mut self, x: ValueId) -> BuildResult<ValueId> {
        self.unary(UnaryFn::Gelu, x)
    }
    pub fn cast(&mut self, x: ValueId, to: DType) -> BuildResult<ValueId> {
        self.op(Op::Cast { to }, &[x])
    }
    pub fn select(&mut self, cond: ValueId, a: ValueId, b: ValueId) -> BuildResult<ValueId> {
        self.op(Op::Select, &[cond, a, b])
    }

    // --- contractions and normalisations ---

    pub fn matmul(&mut self, a: ValueId, b: ValueId, transpose_a: bool, transpose_b: bool) -> BuildResult<ValueId> {
        self.op(Op::MatMul { transpose_a, transpose_b }, &[a, b])
    }

    pub fn softmax(&mut self, x: ValueId, axis: isize) -> BuildResult<ValueId> {
        let axis = self.axis("softmax", self.rank_of(x), axis)?;
        self.op(Op::Softmax { axis }, &[x])
    }

    pub fn log_softmax(&mut self, x: ValueId, axis: isize) -> BuildResult<ValueId> {
        let axis = self.axis("log_softmax", self.rank_of(x), axis)?;
        self.op(Op::LogSoftmax { axis }, &[x])
    }

    /// The layer-norm primitive on given affine values (see `nn::layer_norm` for the version
    /// that creates its parameters).
    pub fn layer_norm_op(&mut self, x: ValueId, gamma: ValueId, beta: ValueId, eps: f64) -> BuildResult<ValueId> {
        self.op(Op::LayerNorm { eps }, &[x, gamma, beta])
    }

    // --- reductions ---

    pub fn reduce_sum(&mut self, x: ValueId, axes: &[isize], keep_dims: bool) -> BuildResult<ValueId> {
        let axes = self.axes("reduce_sum", self.rank_of(x), axes)?;
        self.op(Op::ReduceSum { axes, keep_dims }, &[x])
    }

    pub fn reduce_mean(&mut self, x: ValueId, axes: &[isize], keep_dims: bool) -> BuildResult<ValueId> {
        let axes = self.axes("reduce_mean", self.rank_of(x), axes)?;
        self.op(Op::ReduceMean { axes, keep_dims }, &[x])
    }

    pub fn reduce_max(&mut self, x: ValueId, axes: &[isize], keep_dims: bool) -> BuildResult<ValueId> {
        let axes = self.axes("reduce_max", self.rank_of(x), axes)?;
        self.op(Op::ReduceMax { axes, keep_dims }, &[x])
    }

    // --- movement ---

    pub fn reshape(&mut self, x: ValueId, shape: Shape) -> BuildResult<ValueId> {
        self.op(Op::Reshape { shape }, &[x])
    }

    pub fn permute(&mut self, x: ValueId, perm: &[usize]) -> BuildResult<ValueId> {
        self.op(Op::Permute { perm: perm.to_vec() }, &[x])
    }

    pub fn broadcast(&mut self, x: ValueId, shape: Shape) -> BuildResult<ValueId> {
        self.op(Op::Broadcast { shape }, &[x])
    }

    pub fn concat(&mut self, xs: &[ValueId], axis: isize) -> BuildResult<ValueId> {
        let rank = xs.first().map(|&x| self.rank_of(x)).unwrap_or(0);
        let axis = self.axis("concat", rank, axis)?;
        self.op(Op::Concat { axis }, xs)
    }

    pub fn slice(&mut self, x: ValueId, axis: isize, start: u64, end: u64) -> BuildResult<ValueId> {
        let axis = self.axis("slice", self.rank_of(x), axis)?;
        self.op(Op::Slice { axis, start, end }, &[x])
    }

    // --- indexing ---

    pub fn gather(&mut self, table: ValueId, indices: ValueId, axis: isize) -> BuildResult<ValueId> {
        let axis = self.axis("gather", self.rank_of(table), axis)?;
        self.op(Op::Gather { axis }, &[table, indices])
    }

    pub fn scatter_add(
        &mut self,
        base: ValueId,
        indices: ValueId,
        updates: ValueId,
        axis: isize,
    ) -> BuildResult<ValueId> {
        let axis = self.axis("scatter_add", self.rank_of(base), axis)?;
        self.op(Op::ScatterAdd { axis }, &[base, indices, updates])
    }

    /// The `k` largest entries of the last axis: `(values, indices)`.
    pub fn top_k(&mut self, x: ValueId, k: u64) -> BuildResult<(ValueId, ValueId)> {
        let n = self.node(Op::TopK { k }, &[x])?;
        let results = &self.graph.nodes[n].results;
        Ok((results[0], results[1]))
    }

    pub fn one_hot(&mut self, indices: ValueId, depth: u64, dtype: DType) -> BuildResult<ValueId> {
        self.op(Op::OneHot { depth, dtype }, &[indices])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape;

    #[test]
    fn builder_infers_types_and_scopes_nodes() {
        let mut b = GraphBuilder::new("m");
        let x = b.input("x", DType::F32, shape!["batch", 4u64]).unwrap();
        let y = b
            .scoped("layer", |b| {
                let w = b.param("weight", shape![3u64, 4u64], Init::Zeros)?;
                b.matmul(x, w, false, true)
            })
            .unwrap();
        assert_eq!(b.type_of(y).to_string(), "f32[batch,3]");
        assert_eq!(b.graph().nodes[b.graph().producer(y)].scope, "m/layer");
        assert_eq!(b.graph().params().next().unwrap().1, "m/layer/weight");
        b.output("y", y);
        let g = b.finish().unwrap();
        assert_eq!(g.output("y"), Some(y));
    }

    #[test]
    fn builder_errors_name_scope_and_op() {
        let mut b = GraphBuilder::new("m");
        let x = b.input("x", DType::F32, shape![2u64, 3u64]).unwrap();
        let y = b.input("y", DType::F32, shape![4u64]).unwrap();
        let e = b.scoped("blk", |b| b.add(x, y)).unwrap_err();
        assert_eq!(e.scope, "m/blk");
        assert_eq!(e.op, "add");
        assert!(e.to_string().starts_with("m/blk: add: shape mismatch"), "{e}");
        assert!(b.softmax(x, 2).is_err());
        let s = b.softmax(x, -1).unwrap();
        assert_eq!(b.type_of(s), b.type_of(x));
    }

    #[test]
    fn editing_resumes_scopes_and_random_streams() {
        let mut b = GraphBuilder::new("m");
        b.enable_randomness().unwrap();
        b.set_training(true);
        let x = b.input("x", DType::F32, shape![3u64]).unwrap();
        let d = b.dropout(x, 0.5).unwrap();
        b.output("d", d);
        let g = b.finish().unwrap();
        let mut e = GraphBuilder::edit(g, "m/extra");
        let d2 = e.dropout(d, 0.5).unwrap();
        let node = &e.graph().nodes[e.graph().producer(d2)];
        assert_eq!(node.scope, "m/extra");
        assert!(matches!(node.op, Op::Dropout { stream: 1, .. }));
        e.output("d", d2);
        verify(&e.into_graph()).unwrap();
    }

    #[test]
    fn random_ops_need_a_key_and_get_distinct_streams() {
        let mut b = GraphBuilder::new("m");
        assert!(b.random_uniform(shape![3u64]).is_err());
        let x = b.input("x", DType::F32, shape![3u64]).unwrap();
        assert_eq!(b.dropout(x, 0.1).unwrap(), x, "dropout is the identity without randomness");
        b.enable_randomness().unwrap();
        assert_eq!(b.dropout(x, 0.1).unwrap(), x, "and outside training");
        b.set_training(true);
        let u = b.random_uniform(shape![3u64]).unwrap();
        let d = b.dropout(x, 0.1).unwrap();
        let g = b.graph();
        let streams: Vec<u32> = [u, d]
            .iter()
            .map(|&v| match g.nodes[g.producer(v)].op {
                Op::RandomUniform { stream, .. } | Op::Dropout { stream, .. } => stream,
                _ => panic!("not random"),
            })
            .collect();
        assert_eq!(streams, [0, 1]);
    }
}
