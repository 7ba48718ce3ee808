//! Routing fusion (CALM stage 4): a router's logits, softmax, top-k, renormalised gates and
//! their scatter into a `[B, E]` gate matrix become one [`FusedOp::Route`], computed by one
//! kernel with a thread per routed unit. The probabilities and the one-hot choices (which the
//! load-balancing statistics read) are written only if something still reads them.
//!
//! The pattern, matched by structure from each top-k:
//!
//! ```text
//! p       = softmax(matmul(x, w [, tB]) + bias, axis 1)               x [B, m]
//! (v, i)  = top_k(p, k)
//! gates   = v / reduce_sum(v, [1], keep)
//! chosen  = one_hot(i, E)                                              [B, k, E]
//! matrix  = reduce_sum(chosen · reshape(gates, [B, k, 1]), [1])        [B, E]
//! ```
//!
//! It declines when an intermediate (logits, top-k values or indices, gates) is read elsewhere
//! or is a graph output, or when the pieces do not line up.

use calm_ir::fused::FusedOp;
use calm_ir::{BinaryFn, Graph, Node, NodeId, Op, ValueId};

use crate::pattern::{replace, rewrite_matches, Matcher};
use crate::pipeline::{PassError, PassLog};

const PASS: &str = "fuse_route";

struct Found {
    args: Vec<ValueId>,
    op: FusedOp,
    /// The values the results replace: gate matrix, probabilities, one-hot choices.
    replaces: [ValueId; 3],
}

/// The single node reading `v` whose op satisfies `want`.
fn only_reader<'g>(m: &Matcher<'g>, v: ValueId, what: &str, want: impl Fn(&Op) -> bool) -> Result<NodeId, String> {
    m.only_user(v)
        .filter(|&n| want(&m.g.nodes[n].op))
        .ok_or_else(|| format!("the {what} is read elsewhere or differently"))
}

fn match_route(m: &Matcher, top_k_node: NodeId) -> Result<Found, String> {
    let g = m.g;
    let node = &g.nodes[top_k_node];
    let Op::TopK { k } = node.op else { unreachable!("called on top-k nodes") };
    let (values, indices) = (node.results[0], node.results[1]);
    let prob = node.args[0];
    if !matches!(m.def(prob).op, Op::Softmax { axis: 1 }) || m.shape(prob).len() != 2 {
        return Err("the top-k does not pick from a softmax over [B, E]".into());
    }
    let logits = m.def(prob).args[0];
    let linear = m.def(logits);
    if linear.op != Op::Binary(BinaryFn::Add) {
        return Err("the router logits are not a linear layer (matmul + bias)".into());
    }
    let product = linear.args.iter().copied().find(|&a| matches!(m.def(a).op, Op::MatMul { transpose_a: false, .. }));
    let Some(product) = product else { return Err("the router logits are not a linear layer (matmul + bias)".into()) };
    let bias = m.other_arg(g.producer(logits), product).expect("an add has two arguments");
    let Op::MatMul { transpose_b, .. } = m.def(product).op else { unreachable!() };
    let (x, w) = (m.def(product).args[0], m.def(product).args[1]);
    for (what, v) in [("router product", product), ("router logit", logits)] {
        if !m.internal(v) {
            return Err(format!("the {what} is read elsewhere"));
        }
    }
    // values → Σ → gates = values / Σ (values read by both).
    let readers = &m.users[values];
    let sum = readers
        .iter()
        .copied()
        .find(|&n| matches!(&g.nodes[n].op, Op::ReduceSum { axes, keep_dims: true } if axes[..] == [1]));
    let Some(sum) = sum.filter(|_| readers.len() == 2 && !m.is_output(values)) else {
        return Err("the top-k values are not just renormalised".into());
    };
    let total = g.nodes[sum].results[0];
    let divide = only_reader(m, total, "sum of the top-k values", |op| *op == Op::Binary(BinaryFn::Div))?;
    if g.nodes[divide].args[..] != [values, total] || !readers.contains(&divide) {
        return Err("the gates are not the top-k values over their sum".into());
    }
    let gates = g.nodes[divide].results[0];
    let reshape = only_reader(m, gates, "gate vector", |op| matches!(op, Op::Reshape { .. }))?;
    let gates_column = g.nodes[reshape].results[0];
    let one_hot = only_reader(m, indices, "top-k index", |op| matches!(op, Op::OneHot { .. }))?;
    let chosen = g.nodes[one_hot].results[0];
    let experts = m.shape(prob)[1].clone();
    if !matches!(g.nodes[one_hot].op, Op::OneHot { depth, dtype } if experts.fixed() == Some(depth) && dtype.is_float())
    {
        return Err("the choices are not one-hot over the experts".into());
    }
    let weight = only_reader(m, gates_column, "gate column", |op| *op == Op::Binary(BinaryFn::Mul))?;
    if m.other_arg(weight, gates_column) != Some(chosen)
        || m.shape(gates_column).last().and_then(|d| d.fixed()) != Some(1)
    {
        return Err("the gates do not weight the one-hot choices".into());
    }
    let weighted = g.nodes[weight].results[0];
    let scatter = only_reader(
        m,
        weighted,
        "weighted choice",
        |op| matches!(op, Op::ReduceSum { axes, keep_dims: false } if axes[..] == [1]),
    )?;
    let matrix = g.nodes[scatter].results[0];
    let op = FusedOp::Route { top_k: k, transpose_w: transpose_b };
    let arg_types = [g.value_type(x), g.value_type(w), g.value_type(bias)];
    op.infer(&arg_types).map_err(|e| format!("the pieces do not line up: {e}"))?;
    Ok(Found { args: vec![x, w, bias], op, replaces: [matrix, prob, chosen] })
}

/// Fuses every routing that matches; returns whether anything changed.
pub fn fuse_route(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    let top_k = |_: &Graph, n: &Node| matches!(n.op, Op::TopK { .. });
    rewrite_matches(g, log, PASS, top_k, match_route, |g, scope, f: Found| {
        let FusedOp::Route { top_k: k, .. } = f.op else { unreachable!() };
        let types = f.replaces.iter().map(|&v| g.value_type(v).clone()).collect();
        let fused = g.add_node(Op::Fused(f.op), f.args, types, scope);
        let results = g.nodes[fused].results.clone();
        for (old, new) in f.replaces.into_iter().zip(results) {
            replace(g, PASS, old, new)?;
        }
        Ok(format!("top-{k} routing"))
    })
}
