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

use calm_ir::fused::{FusedOp, EXPERT_LAYER_PARAMS};
use calm_ir::{Dim, Graph, NodeId, Op, ValueId};

use crate::dce::dce;
use crate::pattern::{add_value, replace, Matcher};
use crate::pipeline::{PassError, PassLog};

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
    if add.op != Op::Add {
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
    if add.op != Op::Add {
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
    if m.def(hidden).op != Op::Gelu || !m.internal(hidden) {
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
    if mul.op != Op::Mul || !m.internal(weighted) {
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
                mul.op == Op::Mul && stacks_means(mul.args[0])
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
        let op =
            FusedOp::ExpertMixture { groups, experts: experts as u64, top_k, layers: layers as u64, heads, scale, eps };
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
    if changed {
        dce(g)?;
    }
    Ok(changed)
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
