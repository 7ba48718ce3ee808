//! Sparse expert dispatch (CALM stage 4): a dense mixture of identical pre-LN transformer
//! experts, weighted by a fused router's gate matrix, becomes one [`FusedOp::ExpertMixture`]
//! whose lowering computes only the routed (unit, expert) pairs: a dispatch kernel orders the
//! units by expert, each layer runs as grouped GEMMs (each routed unit's rows against its
//! expert's weights, rows read through the permutation), and a combine kernel mixes the
//! experts' outputs back to units with the gates. Dropless: every unit reaches each expert it
//! chose, however uneven the routing.
//!
//! The pattern, matched by structure from the combine:
//!
//! ```text
//! out_e = reduce_mean(layers_e(z), [1])                     e = 0..E, the same z
//! m     = reduce_sum(concat(reshape(out_e, [B, 1, m]), 1) · reshape(gates, [B, E, 1]), [1])
//! layer: x += linear_o(attention(linear_q(h), linear_k(h), linear_v(h))), h = ln1(x)
//!        x += linear_2(gelu(linear_1(ln2(x))))
//! ```
//!
//! with `gates` and the one-hot choices from one [`FusedOp::Route`], every weight a parameter
//! and every expert of the same shape. Mixtures over the same units with experts of the same
//! form (CALM's communicative dimensions) become one op with a group each, so they share the
//! dispatch order and every layer step is one launch for all of them. The experts' parameters are stacked (joined once, when
//! the weights are loaded). It declines when the gates do not come from a fused top-k router
//! (`dense-moe` uses every expert), when an intermediate is read elsewhere, or when the experts
//! differ.
//!
//! Two later steps are passes of their own, each matched on the graph the pipeline has cleared
//! of what the step before replaced: [`fuse_expert_routers`] lets a mixture compute its routers,
//! and [`join_expert_results`] lets it write its groups' results as their concatenation. All
//! three note under `fuse_experts`.

use calm_ir::fused::{FusedOp, MixtureRouter, EXPERT_LAYER_PARAMS};
use calm_ir::{BinaryFn, Dim, Graph, NodeId, Op, UnaryFn, ValueId};

use crate::pattern::{add_value, replace, Matcher};
use crate::pipeline::{PassError, PassLog};
use crate::plan::ROUTE_THREADS;

const PASS: &str = "fuse_experts";

/// One expert layer's parameters in [`EXPERT_LAYER_PARAMS`] order, q, k and v apart:
/// `ln1 γ, β, q w, b, k w, b, v w, b, o w, b, ln2 γ, β, ffn1 w, b, ffn2 w, b`.
type LayerParams = [ValueId; 16];

struct Layer {
    params: LayerParams,
    heads: u64,
    scale: f64,
    eps: f64,
}

struct Found {
    z: ValueId,
    route: NodeId,
    /// Per expert, per layer.
    experts: Vec<Vec<Layer>>,
    mixed: ValueId,
}

type Match<T> = Result<T, String>;

/// `(x, w, b)` if `v` is `x·wᵀ + b` with parameters `w` and `b`, read only once on the way.
fn linear(m: &Matcher, v: ValueId) -> Option<(ValueId, ValueId, ValueId)> {
    let add = m.def(v);
    if add.op != Op::Binary(BinaryFn::Add) {
        return None;
    }
    let product =
        add.args.iter().copied().find(|&a| m.def(a).op == (Op::MatMul { transpose_a: false, transpose_b: true }))?;
    let bias = m.other_arg(m.g.producer(v), product)?;
    let (x, w) = (m.def(product).args[0], m.def(product).args[1]);
    let params = [w, bias].iter().all(|&p| matches!(m.def(p).op, Op::Param { .. }));
    (params && m.internal(product)).then_some((x, w, bias))
}

/// `(x, γ, β, eps)` if `v` is a layer norm of `x` with parameters.
fn layer_norm(m: &Matcher, v: ValueId) -> Option<(ValueId, ValueId, ValueId, f64)> {
    let node = m.def(v);
    let Op::LayerNorm { eps } = node.op else { return None };
    let params = node.args[1..].iter().all(|&p| matches!(m.def(p).op, Op::Param { .. }));
    params.then_some((node.args[0], node.args[1], node.args[2], eps))
}

/// The residual branch of `add(x, branch)`: `(x, branch)`, where the branch is a linear.
fn residual(m: &Matcher, v: ValueId) -> Option<(ValueId, ValueId)> {
    let add = m.def(v);
    if add.op != Op::Binary(BinaryFn::Add) {
        return None;
    }
    let [x, branch] = add.args[..] else { return None };
    (linear(m, branch).is_some() && m.internal(branch)).then_some((x, branch))
}

/// One pre-LN layer whose output is `out`: its input and parameters.
fn match_layer(m: &Matcher, out: ValueId) -> Match<(ValueId, Layer)> {
    let bad = |what: &str| format!("an expert layer's {what} is not the pre-LN transformer form");
    let (x1, ffn) = residual(m, out).ok_or_else(|| bad("FFN residual"))?;
    let (hidden, w2, b2) = linear(m, ffn).expect("residual checked");
    if m.def(hidden).op != Op::Unary(UnaryFn::Gelu) || !m.internal(hidden) {
        return Err(bad("FFN activation"));
    }
    let up = m.def(hidden).args[0];
    let (n2, w1, b1) = linear(m, up).filter(|_| m.internal(up)).ok_or_else(|| bad("first FFN layer"))?;
    let (x1_again, g2, beta2, eps) = layer_norm(m, n2).filter(|_| m.internal(n2)).ok_or_else(|| bad("second norm"))?;
    if x1_again != x1 {
        return Err(bad("second norm input"));
    }
    let (x, projected) = residual(m, x1).ok_or_else(|| bad("attention residual"))?;
    let (ctx, wo, bo) = linear(m, projected).expect("residual checked");
    let Op::Fused(FusedOp::Attention { heads, scale, bias: false }) = m.def(ctx).op else {
        return Err(bad("attention (not a fused attention without bias)"));
    };
    let mut proj = Vec::new();
    for &p in &m.def(ctx).args {
        proj.push(linear(m, p).filter(|_| m.internal(p)).ok_or_else(|| bad("q, k, v projections"))?);
    }
    let n1 = proj[0].0;
    if proj.iter().any(|p| p.0 != n1) || m.users[n1].len() != 3 || m.is_output(n1) {
        return Err(bad("q, k, v input"));
    }
    let proj: Vec<(ValueId, ValueId)> = proj.into_iter().map(|(_, w, b)| (w, b)).collect();
    let (x_again, g1, beta1, eps1) = layer_norm(m, n1).ok_or_else(|| bad("first norm"))?;
    if x_again != x || eps1 != eps || !m.internal(ctx) {
        return Err(bad("first norm input"));
    }
    let params = [
        g1, beta1, proj[0].0, proj[0].1, proj[1].0, proj[1].1, proj[2].0, proj[2].1, wo, bo, g2, beta2, w1, b1, w2, b2,
    ];
    Ok((x, Layer { params, heads, scale, eps }))
}

/// The route node and the value its gate matrix is, if `v` is result 0 of a fused router.
fn route_of(m: &Matcher, v: ValueId) -> Option<NodeId> {
    let n = m.g.producer(v);
    (matches!(m.g.nodes[n].op, Op::Fused(FusedOp::Route { .. })) && m.g.nodes[n].results[0] == v).then_some(n)
}

fn match_mixture(m: &Matcher, sum_node: NodeId) -> Match<Found> {
    let g = m.g;
    let weighted = g.nodes[sum_node].args[0];
    let mul = m.def(weighted);
    if mul.op != Op::Binary(BinaryFn::Mul) || !m.internal(weighted) {
        return Err("not an expert combine".into());
    }
    let [stacked, gate_column] = mul.args[..] else { return Err("not an expert combine".into()) };
    let reshaped_gates = m.def(gate_column);
    if !matches!(reshaped_gates.op, Op::Reshape { .. }) {
        return Err("the combine does not weight by a gate matrix".into());
    }
    let Some(route) = route_of(m, reshaped_gates.args[0]) else {
        return Err("the gates do not come from a fused top-k router (dense gates run every expert)".into());
    };
    let parts: Vec<ValueId> = match &m.def(stacked).op {
        Op::Concat { axis: 1 } if m.internal(stacked) => m.def(stacked).args.clone(),
        Op::Reshape { .. } => vec![stacked],
        _ => return Err("the experts' outputs are not stacked".into()),
    };
    let experts = m.shape(reshaped_gates.args[0])[1].fixed().unwrap_or(0);
    if parts.len() as u64 != experts {
        return Err(format!("{} expert outputs for {experts} gates", parts.len()));
    }
    let mut z = None;
    let mut layers = Vec::new();
    for part in parts {
        let reshape = m.def(part);
        let mean = reshape.args[0];
        if !matches!(reshape.op, Op::Reshape { .. }) || !m.internal(part) || !m.internal(mean) {
            return Err("an expert's output is read elsewhere".into());
        }
        if !matches!(&m.def(mean).op, Op::ReduceMean { axes, keep_dims: false } if axes[..] == [1]) {
            return Err("an expert's output is not its mean over tokens".into());
        }
        let mut x = m.def(mean).args[0];
        let mut stack = Vec::new();
        // Walk back through the layers until the input every expert shares.
        loop {
            match match_layer(m, x) {
                Ok((input, layer)) => {
                    stack.push(layer);
                    x = input;
                    if Some(x) == z || m.users[x].len() > 2 {
                        break;
                    }
                }
                Err(reason) if stack.is_empty() => return Err(reason),
                Err(_) => break,
            }
        }
        stack.reverse();
        match z {
            None => z = Some(x),
            Some(z0) if z0 != x => return Err("the experts read different inputs".into()),
            _ => {}
        }
        layers.push(stack);
    }
    let same = |a: &Layer, b: &Layer| {
        a.heads == b.heads
            && a.scale == b.scale
            && a.eps == b.eps
            && a.params.iter().zip(&b.params).all(|(&p, &q)| g.value_type(p) == g.value_type(q))
    };
    let first = &layers[0];
    if !layers.iter().all(|l| l.len() == first.len() && l.iter().zip(first).all(|(a, b)| same(a, b))) {
        return Err("the experts differ in depth, heads or shapes".into());
    }
    let z = z.expect("at least one expert");
    if m.shape(z).len() != 3 || m.shape(z)[2] != Dim::Fixed(m.shape(first[0].params[0])[0].fixed().unwrap_or(0)) {
        return Err("the experts' input is not [B, K, m]".into());
    }
    Ok(Found { z, route, experts: layers, mixed: g.nodes[sum_node].results[0] })
}

/// Fuses every sparse-routed mixture of experts; returns whether anything changed.
pub fn fuse_experts(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    let sums: Vec<NodeId> = g
        .nodes
        .iter()
        .filter(|(_, n)| {
            matches!(&n.op, Op::ReduceSum { axes, keep_dims: false } if axes[..] == [1])
                && g.value_type(n.args[0]).rank() == 3
        })
        .map(|(id, _)| id)
        .collect();
    let found: Vec<(NodeId, Match<Found>)> = {
        let m = Matcher::new(g);
        // Candidates worth a note: sums of experts' outputs (token means, stacked) times a column.
        let stacks_means = |v: ValueId| {
            let parts = match &m.def(v).op {
                Op::Concat { axis: 1 } => m.def(v).args.clone(),
                _ => vec![v],
            };
            parts.iter().all(|&p| {
                matches!(m.def(p).op, Op::Reshape { .. }) && matches!(m.def(m.def(p).args[0]).op, Op::ReduceMean { .. })
            })
        };
        sums.into_iter()
            .filter(|&s| {
                let mul = m.def(g.nodes[s].args[0]);
                mul.op == Op::Binary(BinaryFn::Mul) && stacks_means(mul.args[0])
            })
            .map(|s| (s, match_mixture(&m, s)))
            .collect()
    };
    // Mixtures over the same units with experts of the same form run together (one dispatch
    // order, one grouped launch per layer step for all of them): CALM's dimensions.
    let mut batches: Vec<(String, Vec<Found>)> = Vec::new();
    for (sum, found) in found {
        let scope = g.nodes[sum].scope.clone();
        match found {
            Ok(f) => match batches.iter_mut().find(|(_, b)| same_form(g, &b[0], &f)) {
                Some((_, b)) => b.push(f),
                None => batches.push((scope, vec![f])),
            },
            Err(reason) => log.declined(PASS, &scope, reason),
        }
    }
    let changed = !batches.is_empty();
    for (scope, mixtures) in batches {
        // The common scope of the mixtures (`calm/moe` for CALM's dimensions).
        let scope = if mixtures.len() > 1 { parent_scope(&scope) } else { scope };
        let first = &mixtures[0].experts[0][0];
        let (heads, scale, eps) = (first.heads, first.scale, first.eps);
        let (experts, layers) = (mixtures[0].experts.len(), mixtures[0].experts[0].len());
        let Op::Fused(FusedOp::Route { top_k, .. }) = g.nodes[mixtures[0].route].op else { unreachable!() };
        let mut args = vec![mixtures[0].z];
        for f in &mixtures {
            args.extend([g.nodes[f.route].results[0], g.nodes[f.route].results[2]]);
        }
        for l in 0..layers {
            // Parameter p of every expert of every mixture, joined along axis 0; q, k, v per
            // expert together.
            let all = || mixtures.iter().flat_map(|f| f.experts.iter());
            let each = |p: usize| -> Vec<ValueId> { all().map(|e| e[l].params[p]).collect() };
            let qkv = |w: usize| -> Vec<ValueId> {
                all().flat_map(|e| [e[l].params[w], e[l].params[w + 2], e[l].params[w + 4]]).collect()
            };
            let kinds: [Vec<ValueId>; 12] = [
                each(0),
                each(1),
                qkv(2),
                qkv(3),
                each(8),
                each(9),
                each(10),
                each(11),
                each(12),
                each(13),
                each(14),
                each(15),
            ];
            for parts in kinds {
                args.push(add_value(g, PASS, Op::Concat { axis: 0 }, parts, &scope)?);
            }
        }
        let groups = mixtures.len() as u64;
        debug_assert_eq!(args.len(), 1 + 2 * mixtures.len() + EXPERT_LAYER_PARAMS.len() * layers);
        let op = FusedOp::ExpertMixture {
            groups,
            experts: experts as u64,
            top_k,
            layers: layers as u64,
            heads,
            scale,
            eps,
            router: None,
            joined: false,
        };
        let types = mixtures.iter().map(|f| g.value_type(f.mixed).clone()).collect();
        let fused = g.add_node(Op::Fused(op), args, types, &scope);
        let results = g.nodes[fused].results.clone();
        for (f, out) in mixtures.iter().zip(results) {
            replace(g, PASS, f.mixed, out)?;
        }
        log.fired(
            PASS,
            &scope,
            format!(
                "{groups} mixture(s) of {experts} experts of {layers} layers, top-{top_k}: only routed units computed"
            ),
        );
    }
    Ok(changed)
}

/// Second step of the expert fusion, a pass of its own so that it matches on a graph without
/// the dense experts [`fuse_experts`] replaced (they read the routers' results): each mixture
/// that can computes its routers (`absorb_routers`). Notes go under `fuse_experts`.
pub fn fuse_expert_routers(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    each_mixture(g, log, absorb_routers)
}

/// Third step of the expert fusion, after [`fuse_expert_routers`] and its dead-code
/// elimination: each mixture whose groups' results the graph only concatenates writes them as
/// that concatenation (`join_results`). Notes go under `fuse_experts`.
pub fn join_expert_results(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    each_mixture(g, log, join_results)
}

/// Applies `step` to every expert mixture of `g` (a step that does not apply leaves its
/// mixture as it is); returns whether any step applied.
fn each_mixture(
    g: &mut Graph,
    log: &mut PassLog,
    step: fn(&mut Graph, &mut PassLog, NodeId) -> Result<bool, PassError>,
) -> Result<bool, PassError> {
    let mixtures: Vec<NodeId> = g
        .nodes
        .iter()
        .filter(|(_, n)| matches!(n.op, Op::Fused(FusedOp::ExpertMixture { .. })))
        .map(|(id, _)| id)
        .collect();
    let mut changed = false;
    for mixture in mixtures {
        changed |= step(g, log, mixture)?;
    }
    Ok(changed)
}

/// A mixture's routers, when it can compute them itself.
struct Routers {
    x: ValueId,
    /// Each group's router weight and bias.
    params: Vec<(ValueId, ValueId)>,
    transpose_w: bool,
    /// Each group's load-balance statistics `(f, P)`, if the graph computes them.
    stats: Option<Vec<(ValueId, ValueId)>>,
}

/// The routers of `mixture` (one [`FusedOp::Route`] per group, which it reads as gates and
/// choices), if they read the same units, their weights are parameters and nothing else reads
/// their results but the load-balance statistics.
fn match_routers(m: &Matcher, mixture: NodeId) -> Match<Routers> {
    let g = m.g;
    let node = &g.nodes[mixture];
    let Op::Fused(FusedOp::ExpertMixture { groups, experts, router: None, .. }) = node.op else {
        return Err("the mixture already routes".into());
    };
    if experts > ROUTE_THREADS {
        return Err(format!("more than {ROUTE_THREADS} experts per group (one routing thread each)"));
    }
    let mut found: Option<Routers> = None;
    for group in 0..groups as usize {
        let route = g.producer(node.args[1 + 2 * group]);
        let Op::Fused(FusedOp::Route { top_k, transpose_w }) = g.nodes[route].op else {
            return Err("the gates do not come from a fused router".into());
        };
        let [x, w, bias] = g.nodes[route].args[..] else { unreachable!("a route has three arguments") };
        if ![w, bias].iter().all(|&p| matches!(m.def(p).op, Op::Param { .. })) {
            return Err("a router's weights are not parameters".into());
        }
        let stats = router_stats(m, route, mixture, top_k)?;
        let r = found.get_or_insert_with(|| Routers {
            x,
            params: Vec::new(),
            transpose_w,
            stats: stats.map(|_| Vec::new()),
        });
        if r.x != x || r.transpose_w != transpose_w || r.stats.is_some() != stats.is_some() {
            return Err("the routers differ in input, weight layout or statistics".into());
        }
        r.params.push((w, bias));
        if let (Some(all), Some(s)) = (&mut r.stats, stats) {
            all.push(s);
        }
    }
    found.ok_or_else(|| "a mixture without groups".into())
}

/// What reads route `route`'s results besides `mixture`: nothing, or exactly the load-balance
/// statistics `f = reduce_mean(reduce_sum(chosen, [1]), [0]) · (1/k)` and
/// `P = reduce_mean(p, [0])` (CALM's training graph), which are returned.
fn router_stats(m: &Matcher, route: NodeId, mixture: NodeId, top_k: u64) -> Match<Option<(ValueId, ValueId)>> {
    let g = m.g;
    let [gates, prob, chosen] = g.nodes[route].results[..] else { unreachable!("a route has three results") };
    let others = |v: ValueId| -> Vec<NodeId> { m.users[v].iter().copied().filter(|&u| u != mixture).collect() };
    if [gates, prob, chosen].iter().any(|&v| m.is_output(v)) || !others(gates).is_empty() {
        return Err("a router's result is a graph output or its gates are read elsewhere".into());
    }
    let reduction = |n: NodeId, mean: bool, axis: usize| match &g.nodes[n].op {
        Op::ReduceMean { axes, keep_dims: false } if mean => axes[..] == [axis],
        Op::ReduceSum { axes, keep_dims: false } if !mean => axes[..] == [axis],
        _ => false,
    };
    let (by_choice, by_prob) = (others(chosen), others(prob));
    match (&by_choice[..], &by_prob[..]) {
        ([], []) => Ok(None),
        (&[per_unit], &[mean_prob]) if reduction(per_unit, false, 1) && reduction(mean_prob, true, 0) => {
            let share = m
                .only_user(g.nodes[per_unit].results[0])
                .filter(|&n| reduction(n, true, 0))
                .and_then(|n| m.only_user(g.nodes[n].results[0]).map(|s| (n, s)))
                .filter(|&(n, s)| {
                    g.nodes[s].op == Op::Binary(BinaryFn::Mul)
                        && m.other_arg(s, g.nodes[n].results[0])
                            .and_then(|c| m.constant(c))
                            .is_some_and(|c| c == 1.0 / top_k as f64)
                });
            let Some((_, scale)) = share else {
                return Err("a router's choices are read other than as the load-balance share f".into());
            };
            Ok(Some((g.nodes[scale].results[0], g.nodes[mean_prob].results[0])))
        }
        _ => Err("a router's probabilities or choices are read other than as load-balance statistics".into()),
    }
}

/// Makes `mixture` compute its routers ([`MixtureRouter`]): one kernel then routes every group
/// and orders the units by expert, and computes the load-balance statistics where the graph
/// reads them. Declines (logged) where [`match_routers`] does. Returns whether it applied.
fn absorb_routers(g: &mut Graph, log: &mut PassLog, mixture: NodeId) -> Result<bool, PassError> {
    if !matches!(g.nodes[mixture].op, Op::Fused(FusedOp::ExpertMixture { router: None, .. })) {
        return Ok(false);
    }
    let scope = g.nodes[mixture].scope.clone();
    let found = match_routers(&Matcher::new(g), mixture);
    let r = match found {
        Ok(r) => r,
        Err(reason) => {
            log.declined(PASS, &scope, format!("the mixture reads its routers' gates: {reason}"));
            return Ok(false);
        }
    };
    let old = g.nodes[mixture].clone();
    let Op::Fused(mut op @ FusedOp::ExpertMixture { groups, .. }) = old.op.clone() else {
        unreachable!("matched a mixture")
    };
    let stats = r.stats.is_some();
    if let FusedOp::ExpertMixture { router, .. } = &mut op {
        *router = Some(MixtureRouter { transpose_w: r.transpose_w, stats });
    }
    let w = add_value(g, PASS, Op::Concat { axis: 0 }, r.params.iter().map(|p| p.0).collect(), &scope)?;
    let bias = add_value(g, PASS, Op::Concat { axis: 0 }, r.params.iter().map(|p| p.1).collect(), &scope)?;
    let Op::Fused(before) = &old.op else { unreachable!() };
    let first = before.first_expert_param().expect("a mixture");
    let mut args = vec![old.args[0], r.x, w, bias];
    args.extend_from_slice(&old.args[first..]);
    let results = add_mixture(g, op, args, &scope)?;
    for (&before, &after) in old.results.iter().zip(&results) {
        replace(g, PASS, before, after)?;
    }
    if let Some(per_group) = r.stats {
        let g_count = groups as usize;
        replace_stacked(g, &per_group.iter().map(|s| s.0).collect::<Vec<_>>(), results[g_count], &scope)?;
        replace_stacked(g, &per_group.iter().map(|s| s.1).collect::<Vec<_>>(), results[g_count + 1], &scope)?;
    }
    let what = if stats { "routers and load-balance statistics" } else { "routers" };
    log.fired(PASS, &scope, format!("{what} of {groups} group(s) computed with the dispatch order, in one kernel"));
    Ok(true)
}

/// A new mixture node of `op` on `args`, its results typed by the op's shape rule.
fn add_mixture(g: &mut Graph, op: FusedOp, args: Vec<ValueId>, scope: &str) -> Result<Vec<ValueId>, PassError> {
    let types: Vec<_> = args.iter().map(|&a| g.value_type(a)).collect();
    let types = op.infer(&types).map_err(|e| PassError::Failed { pass: PASS, message: e.to_string() })?;
    let fused = g.add_node(Op::Fused(op), args, types, scope);
    Ok(g.nodes[fused].results.clone())
}

/// Makes `mixture` write its groups' results as one concatenation where the graph only
/// concatenates them (CALM's `mix`), so that the combine writes each group's columns in place
/// of a copy per group. Returns whether it applied.
fn join_results(g: &mut Graph, log: &mut PassLog, mixture: NodeId) -> Result<bool, PassError> {
    let old = g.nodes[mixture].clone();
    let Op::Fused(mut op @ FusedOp::ExpertMixture { groups, joined: false, .. }) = old.op.clone() else {
        return Ok(false);
    };
    if groups < 2 {
        return Ok(false);
    }
    let parts = &old.results[..groups as usize];
    let concat = {
        let m = Matcher::new(g);
        m.only_user(parts[0])
            .filter(|&c| {
                g.nodes[c].op == Op::Concat { axis: 1 }
                    && g.nodes[c].args[..] == *parts
                    && parts.iter().all(|&p| m.internal(p))
            })
            .map(|c| g.nodes[c].results[0])
    };
    let Some(concat) = concat else {
        let reason = "each group writes its own result: the graph reads them other than as one concatenation";
        log.declined(PASS, &old.scope, reason);
        return Ok(false);
    };
    if let FusedOp::ExpertMixture { joined, .. } = &mut op {
        *joined = true;
    }
    let results = add_mixture(g, op, old.args.clone(), &old.scope)?;
    replace(g, PASS, concat, results[0])?;
    for (&before, &after) in old.results[groups as usize..].iter().zip(&results[1..]) {
        replace(g, PASS, before, after)?;
    }
    log.fired(PASS, &old.scope, format!("the {groups} groups' results written as their concatenation"));
    Ok(true)
}

/// Replaces each group's statistic `parts[c]` (`[E]`) by row `c` of `all` (`[G, E]`). Where
/// the graph itself stacks them as `concat_0(reshape(parts[c], [1, E]))` (CALM's balance), that
/// stack is `all` and is replaced whole.
fn replace_stacked(g: &mut Graph, parts: &[ValueId], all: ValueId, scope: &str) -> Result<(), PassError> {
    let stacked = {
        let m = Matcher::new(g);
        let rows: Option<Vec<ValueId>> = parts
            .iter()
            .map(|&p| {
                let reshape = m.only_user(p).filter(|&u| matches!(g.nodes[u].op, Op::Reshape { .. }))?;
                let row = g.nodes[reshape].results[0];
                (m.shape(row).len() == 2 && m.shape(row)[0] == Dim::Fixed(1)).then_some(row)
            })
            .collect();
        rows.and_then(|rows| match rows[..] {
            [row] => Some(row),
            _ => {
                let concat = m.only_user(rows[0]).filter(|&c| g.nodes[c].op == Op::Concat { axis: 0 })?;
                (g.nodes[concat].args == rows && rows.iter().all(|&r| m.internal(r)))
                    .then(|| g.nodes[concat].results[0])
            }
        })
    };
    if let Some(stack) = stacked {
        return replace(g, PASS, stack, all);
    }
    let width = g.value_type(all).shape[1].clone();
    for (c, &part) in parts.iter().enumerate() {
        let row = add_value(g, PASS, Op::Slice { axis: 0, start: c as u64, end: c as u64 + 1 }, vec![all], scope)?;
        let flat = add_value(g, PASS, Op::Reshape { shape: vec![width.clone()] }, vec![row], scope)?;
        replace(g, PASS, part, flat)?;
    }
    Ok(())
}

/// Whether two matched mixtures read the same units with experts of the same form.
fn same_form(g: &Graph, a: &Found, b: &Found) -> bool {
    let (x, y) = (&a.experts[0], &b.experts[0]);
    let route_k = |f: &Found| match g.nodes[f.route].op {
        Op::Fused(FusedOp::Route { top_k, .. }) => top_k,
        _ => 0,
    };
    a.z == b.z
        && a.experts.len() == b.experts.len()
        && route_k(a) == route_k(b)
        && x.len() == y.len()
        && x.iter().zip(y).all(|(p, q)| {
            p.heads == q.heads
                && p.scale == q.scale
                && p.eps == q.eps
                && p.params.iter().zip(&q.params).all(|(&u, &v)| g.value_type(u) == g.value_type(v))
        })
}

/// The scope two levels above a combine's, which CALM's dimensions share
/// (`calm/moe/dim0/combine` → `calm/moe`).
fn parent_scope(scope: &str) -> String {
    let parts: Vec<&str> = scope.split('/').collect();
    parts[..parts.len().saturating_sub(2).max(1)].join("/")
}
