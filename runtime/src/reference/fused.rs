//! The CALM fused ops on the reference executor, each written as the primitives its fusion pass
//! replaced, in the same order, so a fused graph computes here exactly what the unfused one does
//! (the device kernels are checked against this).

use burn::tensor::backend::Backend;
use calm_ir::op::ConstValue;
use calm_ir::{BinaryFn, DType, Op, UnaryFn};

use super::ops::{apply, OpResult};
use super::value::{Ctx, Value};

/// One primitive on `args`, with a result of `shape`.
fn prim<B: Backend>(ctx: &Ctx<B>, op: Op, args: &[&Value<B>], shape: &[usize]) -> OpResult<Value<B>> {
    Ok(apply(ctx, &op, args, &[shape.to_vec()])?.remove(0))
}

fn scalar<B: Backend>(ctx: &Ctx<B>, value: f64) -> OpResult<Value<B>> {
    prim(ctx, Op::Constant { value: ConstValue(value), dtype: DType::F32 }, &[], &[])
}

/// `[B, L, h·dh] → [B, h, L, dh]`.
fn split_heads<B: Backend>(ctx: &Ctx<B>, x: &Value<B>, heads: usize) -> OpResult<Value<B>> {
    let (b, l, m) = (x.shape[0], x.shape[1], x.shape[2]);
    let dh = m / heads;
    let r = prim(ctx, Op::Reshape { shape: vec![] }, &[x], &[b, l, heads, dh])?;
    prim(ctx, Op::Permute { perm: vec![0, 2, 1, 3] }, &[&r], &[b, heads, l, dh])
}

/// [`calm_ir::fused::FusedOp::Attention`]: arguments `q, k, v[, bias]`.
pub fn attention<B: Backend>(ctx: &Ctx<B>, args: &[&Value<B>], heads: u64, scale: f64) -> OpResult<Vec<Value<B>>> {
    let heads = heads as usize;
    let (q, k) = (args[0], args[1]);
    let (b, lq, m, lk) = (q.shape[0], q.shape[1], q.shape[2], k.shape[1]);
    let dh = m / heads;
    let (qh, kh, vh) = (split_heads(ctx, q, heads)?, split_heads(ctx, k, heads)?, split_heads(ctx, args[2], heads)?);
    let scores_shape = [b, heads, lq, lk];
    let s = prim(ctx, Op::MatMul { transpose_a: false, transpose_b: true }, &[&qh, &kh], &scores_shape)?;
    let mut s = prim(ctx, Op::Binary(BinaryFn::Mul), &[&s, &scalar(ctx, scale)?], &scores_shape)?;
    if let Some(bias) = args.get(3) {
        s = prim(ctx, Op::Binary(BinaryFn::Add), &[&s, bias], &scores_shape)?;
    }
    let p = prim(ctx, Op::Softmax { axis: 3 }, &[&s], &scores_shape)?;
    let c = prim(ctx, Op::MatMul { transpose_a: false, transpose_b: false }, &[&p, &vh], &[b, heads, lq, dh])?;
    let c = prim(ctx, Op::Permute { perm: vec![0, 2, 1, 3] }, &[&c], &[b, lq, heads, dh])?;
    Ok(vec![prim(ctx, Op::Reshape { shape: vec![] }, &[&c], &[b, lq, m])?])
}

/// [`calm_ir::fused::FusedOp::GumbelPool`]: arguments `hidden, w, bias, x, mask[, τ][, seed, offset]`;
/// results `pooled, assign`.
pub fn gumbel_pool<B: Backend>(
    ctx: &Ctx<B>,
    args: &[&Value<B>],
    transpose_w: bool,
    temperature: bool,
    noise_stream: Option<u32>,
    eps: f64,
) -> OpResult<Vec<Value<B>>> {
    let (hidden, x) = (args[0], args[3]);
    let (b, t, d) = (hidden.shape[0], hidden.shape[1], x.shape[2]);
    let k = args[2].shape[0];
    let bt_k = [b, t, k];
    let product = prim(ctx, Op::MatMul { transpose_a: false, transpose_b: transpose_w }, &[hidden, args[1]], &bt_k)?;
    let mut y = prim(ctx, Op::Binary(BinaryFn::Add), &[&product, args[2]], &bt_k)?;
    let mut next = 5;
    let tau = temperature.then(|| {
        next += 1;
        args[5]
    });
    if let Some(stream) = noise_stream {
        let (seed, offset) = (args[next], args[next + 1]);
        let u = prim(ctx, Op::RandomUniform { shape: vec![], stream }, &[seed, offset], &bt_k)?;
        let mut g = u;
        for op in [Op::Unary(UnaryFn::Log), Op::Unary(UnaryFn::Neg), Op::Unary(UnaryFn::Log), Op::Unary(UnaryFn::Neg)] {
            g = prim(ctx, op, &[&g], &bt_k)?;
        }
        y = prim(ctx, Op::Binary(BinaryFn::Add), &[&y, &g], &bt_k)?;
    }
    if let Some(tau) = tau {
        y = prim(ctx, Op::Binary(BinaryFn::Div), &[&y, tau], &bt_k)?;
    }
    let a = prim(ctx, Op::Softmax { axis: 2 }, &[&y], &bt_k)?;
    let assign = prim(ctx, Op::Binary(BinaryFn::Mul), &[&a, args[4]], &bt_k)?;
    let num = prim(ctx, Op::MatMul { transpose_a: true, transpose_b: false }, &[&assign, x], &[b, k, d])?;
    let den = prim(ctx, Op::ReduceSum { axes: vec![1], keep_dims: true }, &[&assign], &[b, 1, k])?;
    let den = prim(ctx, Op::Permute { perm: vec![0, 2, 1] }, &[&den], &[b, k, 1])?;
    let den = prim(ctx, Op::Binary(BinaryFn::Add), &[&den, &scalar(ctx, eps)?], &[b, k, 1])?;
    let pooled = prim(ctx, Op::Binary(BinaryFn::Div), &[&num, &den], &[b, k, d])?;
    Ok(vec![pooled, assign])
}

/// [`calm_ir::fused::FusedOp::Route`]: arguments `x, w, bias`; results `gates, p, chosen`.
pub fn route<B: Backend>(ctx: &Ctx<B>, args: &[&Value<B>], top_k: u64, transpose_w: bool) -> OpResult<Vec<Value<B>>> {
    let (b, e, k) = (args[0].shape[0], args[2].shape[0], top_k as usize);
    let product = prim(ctx, Op::MatMul { transpose_a: false, transpose_b: transpose_w }, &[args[0], args[1]], &[b, e])?;
    let logits = prim(ctx, Op::Binary(BinaryFn::Add), &[&product, args[2]], &[b, e])?;
    let p = prim(ctx, Op::Softmax { axis: 1 }, &[&logits], &[b, e])?;
    let mut top = apply(ctx, &Op::TopK { k: top_k }, &[&p], &[vec![b, k], vec![b, k]])?;
    let (values, indices) = (top.remove(0), top.remove(0));
    let total = prim(ctx, Op::ReduceSum { axes: vec![1], keep_dims: true }, &[&values], &[b, 1])?;
    let gates = prim(ctx, Op::Binary(BinaryFn::Div), &[&values, &total], &[b, k])?;
    let chosen = prim(ctx, Op::OneHot { depth: e as u64, dtype: DType::F32 }, &[&indices], &[b, k, e])?;
    let column = prim(ctx, Op::Reshape { shape: vec![] }, &[&gates], &[b, k, 1])?;
    let weighted = prim(ctx, Op::Binary(BinaryFn::Mul), &[&chosen, &column], &[b, k, e])?;
    let matrix = prim(ctx, Op::ReduceSum { axes: vec![1], keep_dims: false }, &[&weighted], &[b, e])?;
    Ok(vec![matrix, p, chosen])
}

/// Rows `start..start + len` of a stacked parameter (axis 0).
fn rows<B: Backend>(ctx: &Ctx<B>, v: &Value<B>, start: usize, len: usize) -> OpResult<Value<B>> {
    let mut shape = v.shape.clone();
    shape[0] = len;
    let op = Op::Slice { axis: 0, start: start as u64, end: (start + len) as u64 };
    prim(ctx, op, &[v], &shape)
}

/// A stacked parameter argument of [`expert_mixture`]: the joined tensor, or, when the graph
/// joins parameters to make it (as `fuse_experts` does), the parts themselves. With the parts,
/// each expert reads its own weights: no joined copy is made, and autodiff hands each
/// parameter its gradient directly (slicing the joined tensor would give each slice's gradient
/// as a zeroed tensor of the whole stack).
pub enum Stacked<'a, B: Backend> {
    Whole(&'a Value<B>),
    /// One part per (group, expert) pair in order; q, k, v of a pair in turn for `qkv.*`.
    Parts(Vec<&'a Value<B>>),
}

impl<B: Backend> Stacked<'_, B> {
    /// Part `i` of `count` equal parts.
    fn part(&self, ctx: &Ctx<B>, i: usize, count: usize) -> OpResult<Value<B>> {
        match self {
            Stacked::Parts(parts) => Ok(parts[i].clone()),
            Stacked::Whole(v) => {
                let len = v.shape[0] / count;
                rows(ctx, v, i * len, len)
            }
        }
    }
}

/// How an expert mixture is routed.
pub enum Routing<'a, B: Backend> {
    /// Each group's gate matrix and one-hot choices, from a route outside the mixture.
    Given(Vec<(&'a Value<B>, &'a Value<B>)>),
    /// The mixture's own routers ([`calm_ir::fused::MixtureRouter`]): as [`route`] computes
    /// them, one per group, from `x` and the groups' stacked weights and biases; with `stats`
    /// the results end with the load-balance statistics `f` and `P`, `[G, E]`.
    Own { x: &'a Value<B>, w: Stacked<'a, B>, bias: Stacked<'a, B>, top_k: u64, transpose_w: bool, stats: bool },
}

/// The routing of expert mixture `op` from its arguments before the stacked parameters (`z`
/// first, as ids or values): `value` reads one, `stacked` reads a stacked router weight or bias.
pub fn routing<'a, B: Backend, A: Copy>(
    op: &calm_ir::fused::FusedOp,
    args: &[A],
    value: impl Fn(A) -> &'a Value<B>,
    stacked: impl Fn(A) -> Stacked<'a, B>,
) -> Routing<'a, B> {
    let calm_ir::fused::FusedOp::ExpertMixture { top_k, router, .. } = op else { unreachable!("an expert mixture") };
    match router {
        Some(r) => Routing::Own {
            x: value(args[1]),
            w: stacked(args[2]),
            bias: stacked(args[3]),
            top_k: *top_k,
            transpose_w: r.transpose_w,
            stats: r.stats,
        },
        None => Routing::Given(args[1..].chunks(2).map(|p| (value(p[0]), value(p[1]))).collect()),
    }
}

/// [`calm_ir::fused::FusedOp::ExpertMixture`] over `z` with `groups` routed groups;
/// `stacked` holds the stacked parameters, layer by layer. One result per group, then the
/// statistics if the routing asks for them.
///
/// Only the routed (unit, expert) pairs are computed, as on the device: each expert runs on
/// the units that chose it (gathered), and its gate-weighted token mean is added back to them
/// (scatter-add, experts in order). The gates are exactly 0 off the chosen experts, so this
/// is the dense mixture of the unfused graph (adding exact zeros changes no sum) in about
/// `k/E` of its FLOPs, with the same gradients (off the chosen experts the gate is a one-hot
/// constant's zero).
#[allow(clippy::too_many_arguments)]
pub fn expert_mixture<B: Backend>(
    ctx: &Ctx<B>,
    z: &Value<B>,
    groups: usize,
    joined: bool,
    routing: &Routing<'_, B>,
    stacked: &[Stacked<'_, B>],
    experts: u64,
    heads: u64,
    scale: f64,
    eps: f64,
) -> OpResult<Vec<Value<B>>> {
    let (b, k, m) = (z.shape[0], z.shape[1], z.shape[2]);
    let (g_count, e_count) = (groups, experts as usize);
    let pairs = g_count * e_count;
    let per_layer = calm_ir::fused::EXPERT_LAYER_PARAMS.len();
    let index = |v: Vec<i64>| Value::<B>::from_ints(ctx, vec![v.len()], v);
    // Each group's gates, probabilities (only from own routers) and choices.
    struct Routed<B: Backend> {
        gates: Value<B>,
        prob: Option<Value<B>>,
        chosen: Value<B>,
    }
    let mut routes: Vec<Routed<B>> = Vec::with_capacity(g_count);
    for group in 0..g_count {
        routes.push(match routing {
            Routing::Given(pairs) => {
                Routed { gates: pairs[group].0.clone(), prob: None, chosen: pairs[group].1.clone() }
            }
            Routing::Own { x, w, bias, top_k, transpose_w, .. } => {
                let (w, bias) = (w.part(ctx, group, g_count)?, bias.part(ctx, group, g_count)?);
                let mut r = route(ctx, &[x, &w, &bias], *top_k, *transpose_w)?;
                let (chosen, prob) = (r.remove(2), r.remove(1));
                Routed { gates: r.remove(0), prob: Some(prob), chosen }
            }
        });
    }
    let mut outputs = Vec::with_capacity(g_count);
    for (group, Routed { gates, chosen, .. }) in routes.iter().enumerate() {
        let top = chosen.shape[1];
        let one_hot = chosen.host_f64()?;
        let flat_gates = prim(ctx, Op::Reshape { shape: vec![] }, &[gates], &[b * e_count])?;
        let mut out = Value::from_f64(ctx, vec![b, m], vec![0.0; b * m]);
        for e in 0..e_count {
            let units: Vec<i64> = (0..b)
                .filter(|&u| (0..top).any(|j| one_hot[(u * top + j) * e_count + e] != 0.0))
                .map(|u| u as i64)
                .collect();
            if units.is_empty() {
                continue;
            }
            let n = units.len();
            let pair = group * e_count + e;
            let tokens = [n, k, m];
            let linear = |x: &Value<B>, w: Value<B>, bias: Value<B>| -> OpResult<Value<B>> {
                let shape = [n, k, w.shape[0]];
                let y = prim(ctx, Op::MatMul { transpose_a: false, transpose_b: true }, &[x, &w], &shape)?;
                prim(ctx, Op::Binary(BinaryFn::Add), &[&y, &bias], &shape)
            };
            let mut x = prim(ctx, Op::Gather { axis: 0 }, &[z, &index(units.clone())], &tokens)?;
            for layer in stacked.chunks(per_layer) {
                let p = |i: usize| layer[i].part(ctx, pair, pairs);
                let qkv = |i: usize, j: usize| layer[i].part(ctx, 3 * pair + j, 3 * pairs);
                let norm = |x: &Value<B>, i: usize| -> OpResult<Value<B>> {
                    prim(ctx, Op::LayerNorm { eps }, &[x, &p(i)?, &p(i + 1)?], &tokens)
                };
                let h = norm(&x, 0)?;
                let q = linear(&h, qkv(2, 0)?, qkv(3, 0)?)?;
                let kk = linear(&h, qkv(2, 1)?, qkv(3, 1)?)?;
                let v = linear(&h, qkv(2, 2)?, qkv(3, 2)?)?;
                let attended = attention(ctx, &[&q, &kk, &v], heads, scale)?.remove(0);
                let x1 = prim(ctx, Op::Binary(BinaryFn::Add), &[&x, &linear(&attended, p(4)?, p(5)?)?], &tokens)?;
                let h = linear(&norm(&x1, 6)?, p(8)?, p(9)?)?;
                let h = prim(ctx, Op::Unary(UnaryFn::Gelu), &[&h], &h.shape.clone())?;
                x = prim(ctx, Op::Binary(BinaryFn::Add), &[&x1, &linear(&h, p(10)?, p(11)?)?], &tokens)?;
            }
            let mean = prim(ctx, Op::ReduceMean { axes: vec![1], keep_dims: false }, &[&x], &[n, m])?;
            let at: Vec<i64> = units.iter().map(|&u| u * e_count as i64 + e as i64).collect();
            let gate = prim(ctx, Op::Gather { axis: 0 }, &[&flat_gates, &index(at)], &[n])?;
            let gate = prim(ctx, Op::Reshape { shape: vec![] }, &[&gate], &[n, 1])?;
            let weighted = prim(ctx, Op::Binary(BinaryFn::Mul), &[&mean, &gate], &[n, m])?;
            out = prim(ctx, Op::ScatterAdd { axis: 0 }, &[&out, &index(units), &weighted], &[b, m])?;
        }
        outputs.push(out);
    }
    if joined {
        let parts: Vec<&Value<B>> = outputs.iter().collect();
        outputs = vec![prim(ctx, Op::Concat { axis: 1 }, &parts, &[b, g_count * m])?];
    }
    if let Routing::Own { top_k, stats: true, .. } = routing {
        // As the graph states them: f = mean_B(Σ_k chosen) · (1/k), P = mean_B(p), stacked.
        let row = |v: Value<B>| prim(ctx, Op::Reshape { shape: vec![] }, &[&v], &[1, e_count]);
        let (mut fractions, mut probs) = (Vec::new(), Vec::new());
        for Routed { prob, chosen, .. } in &routes {
            let per_unit = prim(ctx, Op::ReduceSum { axes: vec![1], keep_dims: false }, &[chosen], &[b, e_count])?;
            let mean = prim(ctx, Op::ReduceMean { axes: vec![0], keep_dims: false }, &[&per_unit], &[e_count])?;
            fractions.push(row(prim(
                ctx,
                Op::Binary(BinaryFn::Mul),
                &[&mean, &scalar(ctx, 1.0 / *top_k as f64)?],
                &[e_count],
            )?)?);
            let p = prob.as_ref().expect("own routers give probabilities");
            probs.push(row(prim(ctx, Op::ReduceMean { axes: vec![0], keep_dims: false }, &[p], &[e_count])?)?);
        }
        for rows in [fractions, probs] {
            let rows: Vec<&Value<B>> = rows.iter().collect();
            outputs.push(prim(ctx, Op::Concat { axis: 0 }, &rows, &[g_count, e_count])?);
        }
    }
    Ok(outputs)
}
