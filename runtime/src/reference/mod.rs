//! The reference executor: interprets any verified graph op by op on a Burn backend.
//!
//! It is the correctness oracle for the kernels and the engine for training, so it favours
//! precision: on CPU (Burn's Flex backend) it computes in f64; on devices without f64 (Wgpu) in
//! f32. Every graph float type (f32, f16, bf16) is computed in that one type. Symbols are bound
//! from the inputs' shapes. Values are freed after their last reader.

mod fused;
mod grad;
mod numerics;
mod ops;
mod value;

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::FloatDType;
use calm_ir::entity::SecondaryMap;
use calm_ir::fused::FusedOp;
use calm_ir::types::ShapeError;
use calm_ir::{verify, Bindings, Dim, Graph, NodeId, Op, ValueId, VerifyErrors};
use thiserror::Error;

use crate::host::HostTensor;
use crate::params::ParamStore;

pub use grad::{gradients, gradients_loaded, DeviceGradients, Gradients};
pub use numerics::{describe, Fault, NonFinite};
pub use ops::OpError;
pub use value::{Compute, Ctx, DeviceError, Value};

#[derive(Debug, Error)]
pub enum RunError {
    #[error("invalid graph: {0}")]
    Invalid(#[from] VerifyErrors),
    #[error("missing input{}: {}", if .0.len() == 1 { "" } else { "s" }, .0.join(", "))]
    MissingInputs(Vec<String>),
    #[error("unknown input{}: {} (the graph's inputs are {expected})", if .names.len() == 1 { "" } else { "s" }, .names.join(", "))]
    UnknownInputs { names: Vec<String>, expected: String },
    #[error("input `{name}`: {reason}")]
    Input { name: String, reason: String },
    #[error("symbol `{symbol}` is {first} from input `{first_input}` but {second} from input `{second_input}`")]
    SymbolConflict { symbol: String, first: u64, first_input: String, second: u64, second_input: String },
    #[error("{0}")]
    Shape(#[from] ShapeError),
    #[error("parameter `{name}`: {reason}")]
    Param { name: String, reason: String },
    #[error("the weights were loaded in {loaded:?}; this executor computes in {computes:?}")]
    LoadedFloat { loaded: FloatDType, computes: FloatDType },
    #[error("{node} ({op} @ {scope}): {source}")]
    Op { node: NodeId, op: &'static str, scope: String, source: OpError },
    #[error("output `{0}` does not exist")]
    UnknownOutput(String),
    #[error("output `{name}` is {found}; a loss must be a float scalar")]
    Loss { name: String, found: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Memory(#[from] crate::limits::MemoryError),
    #[error("{0}")]
    NonFinite(Box<Fault>),
}

/// Binds the graph's symbols from the shapes of `inputs`, checking the graph and every input
/// against its type.
pub fn bind_inputs(g: &Graph, inputs: &BTreeMap<String, HostTensor>) -> Result<Bindings, RunError> {
    verify(g)?;
    let mut bindings = Bindings::new();
    let mut bound_by: BTreeMap<String, String> = BTreeMap::new();
    let missing: Vec<String> =
        g.inputs().filter(|(_, n, _)| !inputs.contains_key(*n)).map(|(_, n, _)| n.to_string()).collect();
    if !missing.is_empty() {
        return Err(RunError::MissingInputs(missing));
    }
    let unknown: Vec<String> =
        inputs.keys().filter(|k| !g.inputs().any(|(_, n, _)| n == k.as_str())).cloned().collect();
    if !unknown.is_empty() {
        let expected = g.inputs().map(|(_, n, _)| n).collect::<Vec<_>>().join(", ");
        return Err(RunError::UnknownInputs { names: unknown, expected });
    }
    for (_, name, ty) in g.inputs() {
        let t = &inputs[name];
        let fail = |reason: String| RunError::Input { name: name.to_string(), reason };
        if t.data.len() != t.shape.iter().product::<usize>() {
            return Err(fail(format!("holds {} values for shape {:?}", t.data.len(), t.shape)));
        }
        if !t.data.fits(ty.dtype) {
            return Err(fail(format!("holds {} values, the graph wants {}", t.data.type_name(), ty.dtype)));
        }
        if t.shape.len() != ty.rank() {
            return Err(fail(format!("has shape {:?}, the graph wants {ty}", t.shape)));
        }
        for (&size, dim) in t.shape.iter().zip(&ty.shape) {
            match dim {
                Dim::Fixed(n) if *n as usize != size => {
                    return Err(fail(format!("has shape {:?}, the graph wants {ty}", t.shape)));
                }
                Dim::Sym(s) => match bindings.get(s) {
                    Some(bound) if bound as usize != size => {
                        return Err(RunError::SymbolConflict {
                            symbol: s.clone(),
                            first: bound,
                            first_input: bound_by[s].clone(),
                            second: size as u64,
                            second_input: name.to_string(),
                        });
                    }
                    Some(_) => {}
                    None if size == 0 => return Err(fail(format!("binds `{s}` to 0; sizes must be positive"))),
                    None => {
                        bindings.insert(s, size as u64);
                        bound_by.insert(s.clone(), name.to_string());
                    }
                },
                Dim::Fixed(_) => {}
            }
        }
    }
    Ok(bindings)
}

/// Runs graphs on backend `B`.
pub struct Reference<B: Backend> {
    ctx: Ctx<B>,
    check_numerics: bool,
}

impl<B: Backend> Reference<B> {
    /// An executor on `device` computing in `compute`'s float type (F64 or F32), its matrix
    /// products as exactly as `compute` says (a float type alone: exactly).
    pub fn new(device: B::Device, compute: impl Into<Compute>) -> Self {
        Reference { ctx: Ctx::new(device, compute), check_numerics: false }
    }

    /// Checks every node's results as they are computed and stops at the first that holds a NaN,
    /// or an infinity its arguments did not hold ([`RunError::NonFinite`]). Reads every value
    /// back to the host: slow, for finding faults.
    pub fn checking_numerics(mut self, on: bool) -> Self {
        self.check_numerics = on;
        self
    }

    pub fn ctx(&self) -> &Ctx<B> {
        &self.ctx
    }

    /// Every named output of `g` for these parameters and inputs.
    pub fn run(
        &self,
        g: &Graph,
        params: &ParamStore,
        inputs: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, RunError> {
        let bindings = bind_inputs(g, inputs)?;
        let how = Evaluation { check_numerics: self.check_numerics, autodiff: false };
        let outputs = evaluate(&self.ctx, g, &bindings, how, &mut |op| feed(&self.ctx, op, params, inputs))?;
        to_host(g, outputs)
    }
}

/// A graph's weights fed to the backend once, for many runs ([`Reference::load`],
/// [`Reference::run_loaded`]): inference over many batches then reads them where they are
/// instead of copying every weight from the host for every batch (40 ms of a 0.6 s forward at
/// the paper preset). Runs share them read-only: Burn writes in place only into tensors nothing
/// else holds.
pub struct LoadedParams<B: Backend> {
    values: BTreeMap<String, Value<B>>,
    /// The float type they were fed in (the loading executor's).
    float: FloatDType,
}

impl<B: Backend> Reference<B> {
    /// Feeds every parameter of `g` from `params`, checked as [`Reference::run`] checks them.
    pub fn load(&self, g: &Graph, params: &ParamStore) -> Result<LoadedParams<B>, RunError> {
        let no_inputs = BTreeMap::new();
        let mut values = BTreeMap::new();
        for (_, node) in g.nodes.iter() {
            if let Op::Param { name, .. } = &node.op {
                values.insert(name.clone(), feed(&self.ctx, &node.op, params, &no_inputs)?);
            }
        }
        Ok(LoadedParams { values, float: self.ctx.float })
    }

    /// [`Reference::run`] with weights fed by [`Reference::load`] (for this graph, or one with
    /// the same parameters).
    pub fn run_loaded(
        &self,
        g: &Graph,
        params: &LoadedParams<B>,
        inputs: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, RunError> {
        if params.float != self.ctx.float {
            return Err(RunError::LoadedFloat { loaded: params.float, computes: self.ctx.float });
        }
        let bindings = bind_inputs(g, inputs)?;
        let how = Evaluation { check_numerics: self.check_numerics, autodiff: false };
        let outputs = evaluate(&self.ctx, g, &bindings, how, &mut |op| match op {
            Op::Param { .. } => Ok(params.get(op)?.clone()),
            op => feed(&self.ctx, op, &ParamStore::default(), inputs),
        })?;
        to_host(g, outputs)
    }
}

impl<B: Backend> LoadedParams<B> {
    /// The loaded value of a parameter node, checked against the shape the graph declares.
    pub(crate) fn get(&self, param: &Op) -> Result<&Value<B>, RunError> {
        let Op::Param { name, shape, .. } = param else { unreachable!("a parameter node") };
        let value = self.values.get(name).ok_or_else(|| RunError::Param {
            name: name.clone(),
            reason: "not among the loaded weights (loaded for another graph)".into(),
        })?;
        check_param_shape(name, shape, &value.shape, "loaded with")?;
        Ok(value)
    }

    /// A loaded parameter's shape and tensor (all parameters are floats).
    pub fn float(&self, name: &str) -> Option<(&[usize], &FloatTensor<B>)> {
        self.values.get(name).map(|v| match &v.data {
            value::Data::Float(t) => (v.shape.as_slice(), t),
            _ => unreachable!("parameters are floats"),
        })
    }

    /// Replaces a loaded parameter's tensor (same shape): an optimizer's update on the backend.
    pub fn set(&mut self, name: &str, t: FloatTensor<B>) {
        let v = self.values.get_mut(name).expect("a loaded parameter");
        v.data = value::Data::Float(t);
    }

    /// A loaded parameter read back to the host.
    pub fn to_host(&self, name: &str) -> Result<HostTensor, RunError> {
        Ok(self.values.get(name).expect("a loaded parameter").to_host()?)
    }
}

/// Outputs read back to the host, typed as the graph declares them.
pub(crate) fn to_host<B: Backend>(
    g: &Graph,
    outputs: Vec<(String, Value<B>)>,
) -> Result<BTreeMap<String, HostTensor>, RunError> {
    outputs
        .into_iter()
        .map(|(name, v)| {
            let dtype = g.value_type(g.output(&name).expect("outputs of the graph")).dtype;
            Ok((name, v.to_host_as(dtype)?))
        })
        .collect()
}

/// The value of an input or parameter node, from the host.
pub(crate) fn feed<B: Backend>(
    ctx: &Ctx<B>,
    op: &Op,
    params: &ParamStore,
    inputs: &BTreeMap<String, HostTensor>,
) -> Result<Value<B>, RunError> {
    match op {
        Op::Input { name, .. } => Ok(Value::from_host(ctx, &inputs[name])),
        Op::Param { name, shape, .. } => {
            let t = params
                .get(name)
                .ok_or_else(|| RunError::Param { name: name.clone(), reason: "not in the weights".into() })?;
            check_param_shape(name, shape, &t.shape, "weights have")?;
            Ok(Value::from_host(ctx, t))
        }
        _ => unreachable!("only inputs and parameters are fed"),
    }
}

/// That the weights of parameter `name` (`found`, from `source`: "weights have", "loaded with")
/// have the shape the graph declares.
fn check_param_shape(name: &str, shape: &[Dim], found: &[usize], source: &str) -> Result<(), RunError> {
    let expected: Vec<usize> = shape.iter().map(|d| d.fixed().unwrap_or(0) as usize).collect();
    if found == expected {
        return Ok(());
    }
    let reason = format!("{source} shape {found:?}, the graph wants {expected:?}");
    Err(RunError::Param { name: name.to_string(), reason })
}

/// The most bytes of values alive at once when evaluating in `order` and freeing each value
/// after its last reader (`last_use`; `None`: nothing is freed, as under autodiff), at `elem`
/// bytes per element (every element type is stored at most that wide). An estimate: the
/// temporaries inside an op are not counted. Checked: sizes whose product overflows are an
/// error.
fn peak_bytes(
    g: &Graph,
    order: &[NodeId],
    last_use: Option<&SecondaryMap<ValueId, Option<usize>>>,
    bindings: &Bindings,
    elem: u64,
) -> Result<u64, RunError> {
    let bytes = |v: ValueId| -> Result<u64, RunError> {
        let ty = g.value_type(v);
        let n = ty.numel(bindings)?;
        Ok(n.checked_mul(elem).ok_or_else(|| ShapeError::Overflow(ty.to_string()))?)
    };
    let (mut live, mut peak) = (0u64, 0u64);
    for (pos, &n) in order.iter().enumerate() {
        let node = &g.nodes[n];
        for &v in &node.results {
            // Results nobody reads are freed at once, but exist while their node runs.
            live = live.saturating_add(bytes(v)?);
        }
        peak = peak.max(live);
        let Some(last_use) = last_use else { continue };
        for &v in &node.results {
            if last_use[v].is_none() {
                live = live.saturating_sub(bytes(v)?);
            }
        }
        for (i, &a) in node.args.iter().enumerate() {
            // An argument read twice by one node is freed once.
            if last_use[a] == Some(pos) && !node.args[..i].contains(&a) {
                live = live.saturating_sub(bytes(a)?);
            }
        }
    }
    Ok(peak)
}

/// Values made by a `Concat` of parameters that only expert mixtures read (the stacked weights
/// of `fuse_experts`), with their parts.
fn joined_parameters(g: &Graph) -> BTreeMap<ValueId, Vec<ValueId>> {
    let users = g.users();
    g.nodes
        .iter()
        .map(|(_, node)| node)
        .filter(|node| matches!(node.op, Op::Concat { axis: 0 }))
        .filter(|node| node.args.iter().all(|&a| matches!(g.nodes[g.producer(a)].op, Op::Param { .. })))
        .filter(|node| {
            let v = node.results[0];
            !g.outputs.iter().any(|o| o.value == v)
                && !users[v].is_empty()
                && users[v].iter().all(|&u| matches!(g.nodes[u].op, Op::Fused(FusedOp::ExpertMixture { .. })))
        })
        .map(|node| (node.results[0], node.args.clone()))
        .collect()
}

/// Supplies the value of an input or parameter node.
pub(crate) type Feed<'a, B> = dyn FnMut(&Op) -> Result<Value<B>, RunError> + 'a;

/// How [`evaluate`] runs a graph.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Evaluation {
    /// Check each node's results ([`Reference::checking_numerics`]).
    pub check_numerics: bool,
    /// On an autodiff backend, which keeps every value for the backward pass (what the memory
    /// check must count).
    pub autodiff: bool,
}

/// Evaluates every node in topological order and returns the named outputs. `feed` supplies the
/// values of input and parameter nodes.
pub(crate) fn evaluate<B: Backend>(
    ctx: &Ctx<B>,
    g: &Graph,
    bindings: &Bindings,
    how: Evaluation,
    feed: &mut Feed<'_, B>,
) -> Result<Vec<(String, Value<B>)>, RunError> {
    verify(g)?;
    let order = g.topo_order().expect("verified graphs are acyclic");
    // Position of each value's last reader (None: never read); outputs live to the end.
    let mut last_use: SecondaryMap<ValueId, Option<usize>> = SecondaryMap::with_default(None);
    for (pos, &n) in order.iter().enumerate() {
        for &a in &g.nodes[n].args {
            last_use[a] = Some(pos);
        }
    }
    for o in &g.outputs {
        last_use[o.value] = Some(usize::MAX);
    }
    // Parameters joined only for expert mixtures are read by the mixture as parts (see
    // `fused::Stacked`), so they live as long as the joined value would.
    let joined = joined_parameters(g);
    for (&v, parts) in &joined {
        for &p in parts {
            last_use[p] = last_use[p].max(last_use[v]);
        }
    }
    let elem = if ctx.float == FloatDType::F64 { 8 } else { 4 };
    let peak = peak_bytes(g, &order, (!how.autodiff).then_some(&last_use), bindings, elem)?;
    let kept = if how.autodiff { "all its values, kept for the backward pass" } else { "its live values at the peak" };
    let what = || format!("running `{}` on the reference executor ({kept}, {bindings})", g.name);
    crate::limits::check_host(what, peak)?;
    let mut values: SecondaryMap<ValueId, Option<Value<B>>> = SecondaryMap::with_default(None);
    let mut checker = how.check_numerics.then(numerics::Checker::new);
    for (pos, &n) in order.iter().enumerate() {
        let node = &g.nodes[n];
        let results = match &node.op {
            Op::Input { .. } | Op::Param { .. } => vec![feed(&node.op)?],
            Op::Concat { .. } if joined.contains_key(&node.results[0]) => Vec::new(),
            Op::Fused(f @ FusedOp::ExpertMixture { groups, experts, heads, scale, eps, joined: concatenated, .. }) => {
                let value = |a: ValueId| values[a].as_ref().expect("arguments are computed before their readers");
                let (routes, stacked) = node.args.split_at(f.first_expert_param().expect("an expert mixture"));
                // Joined parameters are read as their parts (see `joined_parameters`).
                let as_stacked = |a: ValueId| match joined.get(&a) {
                    Some(parts) => fused::Stacked::Parts(parts.iter().map(|&p| value(p)).collect()),
                    None => fused::Stacked::Whole(value(a)),
                };
                let routing = fused::routing(f, routes, value, as_stacked);
                let stacked: Vec<fused::Stacked<'_, B>> = stacked.iter().map(|&a| as_stacked(a)).collect();
                let z = value(routes[0]);
                fused::expert_mixture(
                    ctx,
                    z,
                    *groups as usize,
                    *concatenated,
                    &routing,
                    &stacked,
                    *experts,
                    *heads,
                    *scale,
                    *eps,
                )
                .map_err(|source| RunError::Op {
                    node: n,
                    op: node.op.name(),
                    scope: node.scope.clone(),
                    source,
                })?
            }
            op => {
                let out = node
                    .results
                    .iter()
                    .map(|&v| {
                        // Checked: a graph file can declare sizes whose product overflows.
                        let ty = g.value_type(v);
                        ty.size_bytes(bindings)?;
                        Ok(ty.dims(bindings)?.into_iter().map(|d| d as usize).collect())
                    })
                    .collect::<Result<Vec<_>, RunError>>()?;
                let args: Vec<&Value<B>> = node
                    .args
                    .iter()
                    .map(|&a| values[a].as_ref().expect("arguments are computed before their readers"))
                    .collect();
                ops::apply(ctx, op, &args, &out).map_err(|source| RunError::Op {
                    node: n,
                    op: node.op.name(),
                    scope: node.scope.clone(),
                    source,
                })?
            }
        };
        if let Some(checker) = &mut checker {
            if let Some(fault) = checker.check(g, n, &results)? {
                return Err(RunError::NonFinite(Box::new(fault)));
            }
        }
        for (&v, value) in node.results.iter().zip(results) {
            if last_use[v].is_some() {
                values[v] = Some(value);
            }
        }
        for &a in &node.args {
            if last_use[a] == Some(pos) {
                values[a] = None;
            }
        }
    }
    Ok(g.outputs.iter().map(|o| (o.name.clone(), values[o.value].clone().expect("outputs are computed"))).collect())
}
