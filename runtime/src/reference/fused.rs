//! The CALM fused ops on the reference executor, each written as the primitives its fusion pass
//! replaced, in the same order, so a fused graph computes here exactly what the unfused one does
//! (the device kernels are checked against this).

use burn::tensor::backend::Backend;
use calm_ir::op::ConstValue;
use calm_ir::{DType, Op};

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
    let mut s = prim(ctx, Op::Mul, &[&s, &scalar(ctx, scale)?], &scores_shape)?;
    if let Some(bias) = args.get(3) {
        s = prim(ctx, Op::Add, &[&s, bias], &scores_shape)?;
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
    let mut y = prim(ctx, Op::Add, &[&product, args[2]], &bt_k)?;
    let mut next = 5;
    let tau = temperature.then(|| {
        next += 1;
        args[5]
    });
    if let Some(stream) = noise_stream {
        let (seed, offset) = (args[next], args[next + 1]);
        let u = prim(ctx, Op::RandomUniform { shape: vec![], stream }, &[seed, offset], &bt_k)?;
        let mut g = u;
        for op in [Op::Log, Op::Neg, Op::Log, Op::Neg] {
            g = prim(ctx, op, &[&g], &bt_k)?;
        }
        y = prim(ctx, Op::Add, &[&y, &g], &bt_k)?;
    }
    if let Some(tau) = tau {
        y = prim(ctx, Op::Div, &[&y, tau], &bt_k)?;
    }
    let a = prim(ctx, Op::Softmax { axis: 2 }, &[&y], &bt_k)?;
    let assign = prim(ctx, Op::Mul, &[&a, args[4]], &bt_k)?;
    let num = prim(ctx, Op::MatMul { transpose_a: true, transpose_b: false }, &[&assign, x], &[b, k, d])?;
    let den = prim(ctx, Op::ReduceSum { axes: vec![1], keep_dims: true }, &[&assign], &[b, 1, k])?;
    let den = prim(ctx, Op::Permute { perm: vec![0, 2, 1] }, &[&den], &[b, k, 1])?;
    let den = prim(ctx, Op::Add, &[&den, &scalar(ctx, eps)?], &[b, k, 1])?;
    let pooled = prim(ctx, Op::Div, &[&num, &den], &[b, k, d])?;
    Ok(vec![pooled, assign])
}

/// [`calm_ir::fused::FusedOp::Route`]: arguments `x, w, bias`; results `gates, p, chosen`.
pub fn route<B: Backend>(ctx: &Ctx<B>, args: &[&Value<B>], top_k: u64, transpose_w: bool) -> OpResult<Vec<Value<B>>> {
    let (b, e, k) = (args[0].shape[0], args[2].shape[0], top_k as usize);
    let product = prim(ctx, Op::MatMul { transpose_a: false, transpose_b: transpose_w }, &[args[0], args[1]], &[b, e])?;
    let logits = prim(ctx, Op::Add, &[&product, args[2]], &[b, e])?;
    let p = prim(ctx, Op::Softmax { axis: 1 }, &[&logits], &[b, e])?;
    let mut top = apply(ctx, &Op::TopK { k: top_k }, &[&p], &[vec![b, k], vec![b, k]])?;
    let (values, indices) = (top.remove(0), top.remove(0));
    let total = prim(ctx, Op::ReduceSum { axes: vec![1], keep_dims: true }, &[&values], &[b, 1])?;
    let gates = prim(ctx, Op::Div, &[&values, &total], &[b, k])?;
    let chosen = prim(ctx, Op::OneHot { depth: e as u64, dtype: DType::F32 }, &[&indices], &[b, k, e])?;
    let column = prim(ctx, Op::Reshape { shape: vec![] }, &[&gates], &[b, k, 1])?;
    let weighted = prim(ctx, Op::Mul, &[&chosen, &column], &[b, k, e])?;
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

/// [`calm_ir::fused::FusedOp::ExpertMixture`], densely: every expert on every unit, as the
/// unfused graph computes it (the choices are not needed; the gates are zero off them).
pub fn expert_mixture<B: Backend>(
    ctx: &Ctx<B>,
    args: &[&Value<B>],
    groups: u64,
    experts: u64,
    heads: u64,
    scale: f64,
    eps: f64,
) -> OpResult<Vec<Value<B>>> {
    let g = groups as usize;
    let stacked = &args[1 + 2 * g..];
    let e_count = experts as usize;
    (0..g)
        .map(|group| {
            // This group's experts' rows of each stacked parameter.
            let own = stacked
                .iter()
                .map(|p| {
                    let per_group = p.shape[0] / g;
                    rows(ctx, p, group * per_group, per_group)
                })
                .collect::<OpResult<Vec<_>>>()?;
            let mut group_args = vec![args[0], args[1 + 2 * group], args[2 + 2 * group]];
            group_args.extend(own.iter());
            one_mixture(ctx, &group_args, e_count, heads, scale, eps)
        })
        .collect()
}

/// One group of [`expert_mixture`]: arguments `z, gates, chosen, stacked parameters..`.
fn one_mixture<B: Backend>(
    ctx: &Ctx<B>,
    args: &[&Value<B>],
    e_count: usize,
    heads: u64,
    scale: f64,
    eps: f64,
) -> OpResult<Value<B>> {
    let (z, gates) = (args[0], args[1]);
    let (b, k, m) = (z.shape[0], z.shape[1], z.shape[2]);
    let per_layer = calm_ir::fused::EXPERT_LAYER_PARAMS.len();
    let layers = (args.len() - 3) / per_layer;
    let tokens = [b, k, m];
    let linear = |x: &Value<B>, w: &Value<B>, bias: &Value<B>, out: usize| -> OpResult<Value<B>> {
        let shape = [b, k, out];
        let y = prim(ctx, Op::MatMul { transpose_a: false, transpose_b: true }, &[x, w], &shape)?;
        prim(ctx, Op::Add, &[&y, bias], &shape)
    };
    let mut outs = Vec::with_capacity(e_count);
    for e in 0..e_count {
        let mut x = z.clone();
        for l in 0..layers {
            let p = |i: usize| args[3 + l * per_layer + i];
            let ffn = p(9).shape[0] / e_count;
            let norm = |x: &Value<B>, g: usize| -> OpResult<Value<B>> {
                let (gamma, beta) = (rows(ctx, p(g), e * m, m)?, rows(ctx, p(g + 1), e * m, m)?);
                prim(ctx, Op::LayerNorm { eps }, &[x, &gamma, &beta], &tokens)
            };
            let h = norm(&x, 0)?;
            let mut qkv = Vec::new();
            for j in 0..3 {
                let at = (3 * e + j) * m;
                qkv.push(linear(&h, &rows(ctx, p(2), at, m)?, &rows(ctx, p(3), at, m)?, m)?);
            }
            let ctx_v = attention(ctx, &[&qkv[0], &qkv[1], &qkv[2]], heads, scale)?.remove(0);
            let a = linear(&ctx_v, &rows(ctx, p(4), e * m, m)?, &rows(ctx, p(5), e * m, m)?, m)?;
            let x1 = prim(ctx, Op::Add, &[&x, &a], &tokens)?;
            let h = norm(&x1, 6)?;
            let h = linear(&h, &rows(ctx, p(8), e * ffn, ffn)?, &rows(ctx, p(9), e * ffn, ffn)?, ffn)?;
            let h = prim(ctx, Op::Gelu, &[&h], &[b, k, ffn])?;
            let h = linear(&h, &rows(ctx, p(10), e * m, m)?, &rows(ctx, p(11), e * m, m)?, m)?;
            x = prim(ctx, Op::Add, &[&x1, &h], &tokens)?;
        }
        let mean = prim(ctx, Op::ReduceMean { axes: vec![1], keep_dims: false }, &[&x], &[b, m])?;
        outs.push(prim(ctx, Op::Reshape { shape: vec![] }, &[&mean], &[b, 1, m])?);
    }
    let stacked = if e_count == 1 {
        outs.remove(0)
    } else {
        let refs: Vec<&Value<B>> = outs.iter().collect();
        prim(ctx, Op::Concat { axis: 1 }, &refs, &[b, e_count, m])?
    };
    let column = prim(ctx, Op::Reshape { shape: vec![] }, &[gates], &[b, e_count, 1])?;
    let weighted = prim(ctx, Op::Mul, &[&stacked, &column], &[b, e_count, m])?;
    prim(ctx, Op::ReduceSum { axes: vec![1], keep_dims: false }, &[&weighted], &[b, m])
}
