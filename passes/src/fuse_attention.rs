//! Attention fusion: multi-head scaled dot-product attention, as `nn::attention` builds it from
//! primitives, becomes one [`FusedOp::Attention`] whose kernel splits and merges the heads by
//! indexing (no permuted copies) and never writes the scores or probabilities to memory.
//!
//! The pattern, matched by structure from each softmax over the last axis of a rank-4 value:
//!
//! ```text
//! xh = permute(reshape(x, [B, L, h, dh]), [0, 2, 1, 3])            for x in q, k, v
//! p  = softmax(matmul(qh, kh, tB) · c  [+ bias], axis 3)           c a scalar constant
//! out = reshape(permute(matmul(p, vh), [0, 2, 1, 3]), [B, Lq, h·dh])
//! ```
//!
//! It declines, leaving the primitives in place, when an intermediate (scores, probabilities,
//! context) is read elsewhere or is a graph output, when the scale is not a constant, or when
//! the head split is not the one above.

use calm_ir::fused::FusedOp;
use calm_ir::{BinaryFn, Dim, Graph, Node, NodeId, Op, ValueId};

use crate::pattern::{replace, rewrite_matches, Matcher};
use crate::pipeline::{PassError, PassLog};

const PASS: &str = "fuse_attention";

const HEADS_PERM: [usize; 4] = [0, 2, 1, 3];

/// A matched attention: its arguments and the value the fused op replaces.
struct Found {
    q: ValueId,
    k: ValueId,
    v: ValueId,
    bias: Option<ValueId>,
    heads: u64,
    scale: f64,
    out: ValueId,
}

/// `x [B, L, h·dh]` if `xh` is `permute(reshape(x, [B, L, h, dh]), [0, 2, 1, 3])`.
fn unsplit_heads(m: &Matcher, xh: ValueId) -> Option<ValueId> {
    let permute = m.def(xh);
    if !matches!(&permute.op, Op::Permute { perm } if perm[..] == HEADS_PERM) {
        return None;
    }
    let reshaped = permute.args[0];
    let reshape = m.def(reshaped);
    let Op::Reshape { .. } = reshape.op else { return None };
    let x = reshape.args[0];
    let (xs, rs) = (m.shape(x), m.shape(reshaped));
    let (Some(h), Some(dh)) = (rs.get(2).and_then(Dim::fixed), rs.get(3).and_then(Dim::fixed)) else {
        return None;
    };
    let split = xs.len() == 3 && rs.len() == 4 && xs[..2] == rs[..2] && xs[2].fixed() == Some(h * dh);
    split.then_some(x)
}

/// Matches the attention whose softmax is `softmax_node`, or says why not.
fn match_attention(m: &Matcher, softmax_node: NodeId) -> Result<Found, String> {
    let g = m.g;
    let node = &g.nodes[softmax_node];
    let scores = node.args[0];
    let p = node.results[0];
    // Scores: `s · c` or `s · c + bias`, s = qh · khᵀ.
    let (scaled, bias) = match &m.def(scores).op {
        Op::Binary(BinaryFn::Add) => {
            let add = m.def(scores);
            let pick = add.args.iter().copied().find(|&a| matches!(m.def(a).op, Op::Binary(BinaryFn::Mul)));
            let Some(scaled) = pick else { return Err("the scores are not a scaled product".into()) };
            (scaled, m.other_arg(g.producer(scores), scaled))
        }
        Op::Binary(BinaryFn::Mul) => (scores, None),
        _ => return Err("the softmax does not read scaled scores".into()),
    };
    let mul = m.def(scaled);
    let Some(product) = mul.args.iter().copied().find(|&a| matches!(m.def(a).op, Op::MatMul { .. })) else {
        return Err("the scaled scores are not a matmul".into());
    };
    let Some(scale) = m.other_arg(g.producer(scaled), product).and_then(|c| m.constant(c)) else {
        return Err("the score scale is not a scalar constant".into());
    };
    let qk = m.def(product);
    if qk.op != (Op::MatMul { transpose_a: false, transpose_b: true }) {
        return Err("the scores are not q · kᵀ".into());
    }
    let (Some(q), Some(k)) = (unsplit_heads(m, qk.args[0]), unsplit_heads(m, qk.args[1])) else {
        return Err("q or k is not split into heads as [B, h, L, dh]".into());
    };
    // Probabilities times values, heads merged back.
    let Some(pv_node) = m.only_user(p) else { return Err("the attention probabilities are read elsewhere".into()) };
    let pv = &g.nodes[pv_node];
    if pv.op != (Op::MatMul { transpose_a: false, transpose_b: false }) || pv.args[0] != p {
        return Err("the probabilities do not multiply the values".into());
    }
    let Some(v) = unsplit_heads(m, pv.args[1]) else { return Err("v is not split into heads".into()) };
    let ctx = pv.results[0];
    let merged = m.only_user(ctx).map(|n| &g.nodes[n]);
    let Some(merge) = merged.filter(|n| matches!(&n.op, Op::Permute { perm } if perm[..] == HEADS_PERM)) else {
        return Err("the context is not merged back from heads".into());
    };
    let reshaped = m.only_user(merge.results[0]).map(|n| &g.nodes[n]);
    let Some(reshape) = reshaped.filter(|n| matches!(n.op, Op::Reshape { .. })) else {
        return Err("the merged context is not reshaped to [B, Lq, m]".into());
    };
    let out = reshape.results[0];
    if m.shape(out) != m.shape(q) {
        return Err("the merged context has another shape than q".into());
    }
    for (what, value) in [("scores", product), ("scaled scores", scaled), ("biased scores", scores)] {
        if !m.internal(value) {
            return Err(format!("the {what} are read elsewhere"));
        }
    }
    if !m.internal(merge.results[0]) {
        return Err("the merged context is read elsewhere".into());
    }
    let heads = m.shape(qk.args[0])[1].fixed().expect("unsplit_heads checked a fixed head count");
    if m.shape(k) != m.shape(v) || m.shape(k)[2] != m.shape(q)[2] {
        return Err("k and v differ in shape from each other or from q".into());
    }
    Ok(Found { q, k, v, bias, heads, scale, out })
}

/// Fuses every attention that matches; returns whether anything changed.
pub fn fuse_attention(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    let softmax_over_keys =
        |g: &Graph, n: &Node| matches!(n.op, Op::Softmax { axis: 3 }) && g.value_type(n.results[0]).rank() == 4;
    rewrite_matches(g, log, PASS, softmax_over_keys, match_attention, |g, scope, f: Found| {
        let mut args = vec![f.q, f.k, f.v];
        args.extend(f.bias);
        let op = Op::Fused(FusedOp::Attention { heads: f.heads, scale: f.scale, bias: f.bias.is_some() });
        let ty = g.value_type(f.out).clone();
        let fused = g.add_node(op, args, vec![ty], scope);
        let new = g.result(fused);
        replace(g, PASS, f.out, new)?;
        Ok(format!("{} heads{}", f.heads, if f.bias.is_some() { ", with a score bias" } else { "" }))
    })
}
