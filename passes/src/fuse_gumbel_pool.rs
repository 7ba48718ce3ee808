//! Gumbel-softmax clustering fusion (CALM stage 3): from a cluster head's hidden layer to the
//! pooled clusters in one [`FusedOp::GumbelPool`], whose kernel computes the logits, draws the
//! Gumbel noise from the shared generator, applies the temperature, the softmax over clusters
//! and the token mask, and pools the stream, reading it once. The assignment is written only if
//! something still reads it (a graph output such as `assign_e`).
//!
//! The pattern, matched by structure from each softmax over the last axis of a rank-3 value:
//!
//! ```text
//! logits = matmul(hidden, w [, tB]) + bias                 w rank 2, bias [K]
//! y      = (logits [+ −log(−log(random_uniform))]) [/ τ]   τ a scalar
//! A      = softmax(y, axis 2) · mask                        mask [B, T, 1]
//! pooled = matmul(A, x, tA) / (permute(reduce_sum(A, [1], keep), [0, 2, 1]) + ε)
//! ```
//!
//! It declines when an intermediate (logits, noise, softmax, numerator, denominator) is read
//! elsewhere or is a graph output, when ε is not a constant, or when the pieces do not line up.

use calm_ir::fused::FusedOp;
use calm_ir::{BinaryFn, Graph, Node, NodeId, Op, UnaryFn, ValueId};

use crate::pattern::{replace, rewrite_matches, Matcher};
use crate::pipeline::{PassError, PassLog};

const PASS: &str = "fuse_gumbel_pool";

struct Found {
    /// hidden, w, bias, x, mask, [τ], [seed, offset].
    args: Vec<ValueId>,
    op: FusedOp,
    pooled: ValueId,
    assign: ValueId,
}

/// `(stream, seed, offset)` if `g` is `−log(−log(u))` of a uniform draw read only on this path.
fn gumbel_noise(m: &Matcher, g: ValueId) -> Option<(u32, ValueId, ValueId)> {
    let mut v = g;
    for op in [Op::Unary(UnaryFn::Neg), Op::Unary(UnaryFn::Log), Op::Unary(UnaryFn::Neg), Op::Unary(UnaryFn::Log)] {
        let node = m.def(v);
        if node.op != op || !m.internal(v) {
            return None;
        }
        v = node.args[0];
    }
    match m.def(v).op {
        Op::RandomUniform { stream, .. } if m.internal(v) => Some((stream, m.def(v).args[0], m.def(v).args[1])),
        _ => None,
    }
}

fn internal(m: &Matcher, v: ValueId, what: &str) -> Result<(), String> {
    if m.internal(v) {
        Ok(())
    } else {
        Err(format!("the {what} is read elsewhere"))
    }
}

fn match_pool(m: &Matcher, softmax_node: NodeId) -> Result<Found, String> {
    let g = m.g;
    let sm = &g.nodes[softmax_node];
    let probs = sm.results[0];
    // Backwards: temperature, noise, logits.
    let mut y = sm.args[0];
    let mut temperature = None;
    if m.def(y).op == Op::Binary(BinaryFn::Div) && m.shape(m.def(y).args[1]).is_empty() {
        internal(m, y, "tempered logit")?;
        temperature = Some(m.def(y).args[1]);
        y = m.def(y).args[0];
    }
    let mut noise = None;
    let mut logits = y;
    if m.def(y).op == Op::Binary(BinaryFn::Add) {
        let add = m.def(y);
        // Drawn at every element of the logits (not broadcast), so the kernel's element index is
        // the generator's counter.
        let full = |a: ValueId| m.shape(a) == m.shape(y);
        let drawn =
            add.args.iter().enumerate().find_map(|(i, &a)| gumbel_noise(m, a).filter(|_| full(a)).map(|n| (i, n)));
        if let Some((i, n)) = drawn {
            internal(m, y, "noisy logit")?;
            noise = Some(n);
            logits = add.args[1 - i];
        }
    }
    let linear = m.def(logits);
    if linear.op != Op::Binary(BinaryFn::Add) {
        return Err("the logits are not a linear layer (matmul + bias)".into());
    }
    let Some(product) = linear.args.iter().copied().find(|&a| matches!(m.def(a).op, Op::MatMul { .. })) else {
        return Err("the logits are not a linear layer (matmul + bias)".into());
    };
    let bias = m.other_arg(g.producer(logits), product).expect("an add has two arguments");
    let Op::MatMul { transpose_a: false, transpose_b } = m.def(product).op else {
        return Err("the logits' matmul transposes its input".into());
    };
    let (hidden, w) = (m.def(product).args[0], m.def(product).args[1]);
    internal(m, product, "logits' product")?;
    internal(m, logits, "logit")?;
    // Forwards: mask, pooling.
    let Some(masking) = m.only_user(probs) else { return Err("the softmax is read elsewhere".into()) };
    if g.nodes[masking].op != Op::Binary(BinaryFn::Mul) {
        return Err("the softmax is not multiplied by a mask".into());
    }
    let mask = m.other_arg(masking, probs).expect("a mul has two arguments");
    let assign = g.nodes[masking].results[0];
    let users = &m.users[assign];
    let numerator = users.iter().copied().find(|&u| {
        g.nodes[u].op == (Op::MatMul { transpose_a: true, transpose_b: false }) && g.nodes[u].args[0] == assign
    });
    let denominator = users
        .iter()
        .copied()
        .find(|&u| matches!(&g.nodes[u].op, Op::ReduceSum { axes, keep_dims: true } if axes[..] == [1]));
    let (Some(numerator), Some(denominator)) = (numerator, denominator) else {
        return Err("the assignment does not pool a stream (Aᵀ·x and Σ_t A)".into());
    };
    let x = g.nodes[numerator].args[1];
    let num = g.nodes[numerator].results[0];
    // den → permute [0, 2, 1] → + ε → num / den.
    let mut den = g.nodes[denominator].results[0];
    let transpose = m.only_user(den).map(|n| &g.nodes[n]);
    let Some(transpose) = transpose.filter(|n| matches!(&n.op, Op::Permute { perm } if perm[..] == [0, 2, 1])) else {
        return Err("the cluster mass is not transposed to [B, K, 1]".into());
    };
    den = transpose.results[0];
    let add_eps = m.only_user(den).map(|n| (n, &g.nodes[n]));
    let Some((add_eps, add_node)) = add_eps.filter(|(_, n)| n.op == Op::Binary(BinaryFn::Add)) else {
        return Err("no ε is added to the cluster mass".into());
    };
    let Some(eps) = m.other_arg(add_eps, den).and_then(|e| m.constant(e)) else {
        return Err("the ε added to the cluster mass is not a scalar constant".into());
    };
    den = add_node.results[0];
    let divide = m.only_user(den).map(|n| &g.nodes[n]);
    let Some(divide) = divide.filter(|n| n.op == Op::Binary(BinaryFn::Div) && n.args[..] == [num, den]) else {
        return Err("the pooled sum is not divided by the cluster mass".into());
    };
    internal(m, num, "pooled numerator")?;
    let mut args = vec![hidden, w, bias, x, mask];
    args.extend(temperature);
    if let Some((_, seed, offset)) = noise {
        args.extend([seed, offset]);
    }
    let op = FusedOp::GumbelPool {
        transpose_w: transpose_b,
        temperature: temperature.is_some(),
        noise_stream: noise.map(|(stream, ..)| stream),
        eps,
    };
    let arg_types: Vec<_> = args.iter().map(|&a| g.value_type(a)).collect();
    op.infer(&arg_types).map_err(|e| format!("the pieces do not line up: {e}"))?;
    Ok(Found { args, op, pooled: divide.results[0], assign })
}

/// Fuses every Gumbel-softmax clustering that matches; returns whether anything changed.
pub fn fuse_gumbel_pool(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    let softmax_over_clusters =
        |g: &Graph, n: &Node| matches!(n.op, Op::Softmax { axis: 2 }) && g.value_type(n.results[0]).rank() == 3;
    rewrite_matches(g, log, PASS, softmax_over_clusters, match_pool, |g, scope, f: Found| {
        let detail = match &f.op {
            FusedOp::GumbelPool { noise_stream: Some(s), .. } => format!("with Gumbel noise (stream {s})"),
            _ => "without noise".to_string(),
        };
        let types = vec![g.value_type(f.pooled).clone(), g.value_type(f.assign).clone()];
        let fused = g.add_node(Op::Fused(f.op), f.args, types, scope);
        let (pooled, assign) = (g.nodes[fused].results[0], g.nodes[fused].results[1]);
        replace(g, PASS, f.pooled, pooled)?;
        replace(g, PASS, f.assign, assign)?;
        Ok(detail)
    })
}
