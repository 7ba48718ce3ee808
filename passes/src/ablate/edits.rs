//! The nine ablations of `calm-spec.md`, each a rewrite of the full graph: find the module by
//! its scope, check it is still there and has the expected shape, rewire its readers. The
//! driver (`mod.rs`) then removes what became dead and verifies.

use calm_ir::nn::{self, Mlp};
use calm_ir::{BinaryFn, Dim, Graph, Op, UnaryFn};

use super::graph_edit::*;
use super::AblateError;

fn missing(ablation: &'static str, scope: &str) -> AblateError {
    AblateError::not_applicable(ablation, format!("the graph has no `{scope}` (already ablated?)"))
}

fn require(g: &Graph, ablation: &'static str, scope: &str) -> Result<(), AblateError> {
    if has_scope(g, scope) {
        Ok(())
    } else {
        Err(missing(ablation, scope))
    }
}

/// `no-disentangle`: one MLP feeds S, E and L (E keeps its culture embedding). In an inference
/// graph where E no longer reaches the output (after `no-cross-attention`), only L is rewired.
pub fn no_disentangle(g: &mut Graph) -> Result<(), AblateError> {
    const A: &str = "no-disentangle";
    require(g, A, "calm/disentangle/mlp_s")?;
    let others: Vec<&str> =
        ["calm/disentangle/mlp_e", "calm/disentangle/mlp_l"].into_iter().filter(|s| has_scope(g, s)).collect();
    if others.is_empty() {
        return Err(missing(A, "calm/disentangle/mlp_e or mlp_l"));
    }
    let s = single_result(g, "calm/disentangle/mlp_s", A)?;
    for scope in others {
        let x = single_result(g, scope, A)?;
        rewire(g, x, s, A)?;
    }
    Ok(())
}

/// `no-contrastive`: the loss loses `λ_con L_con`; the projection heads go with it.
pub fn no_contrastive(g: &mut Graph) -> Result<(), AblateError> {
    drop_loss_term(g, "loss_con", "no-contrastive")
}

/// `no-gumbel`: plain softmax of the cluster logits: no noise, τ = 1.
pub fn no_gumbel(g: &mut Graph) -> Result<(), AblateError> {
    const A: &str = "no-gumbel";
    require(g, A, "calm/identity_pool")?;
    let streams = child_scopes(g, "calm/identity_pool", "cluster_");
    if streams.is_empty() {
        return Err(missing(A, "calm/identity_pool/cluster_*"));
    }
    for stream in streams {
        let assign = format!("{stream}/assign");
        let softmax =
            find_node(g, &assign, |op| matches!(op, Op::Softmax { .. })).ok_or_else(|| missing(A, &assign))?;
        // softmax((π + g) / τ): its argument must still be the division by the temperature.
        let scaled = g.nodes[softmax].args[0];
        let div = g.producer(scaled);
        if !matches!(g.nodes[div].op, Op::Binary(BinaryFn::Div)) {
            return Err(AblateError::not_applicable(A, format!("`{assign}` already takes a plain softmax")));
        }
        let mut logits = g.nodes[div].args[0];
        let add = g.producer(logits);
        if matches!(g.nodes[add].op, Op::Binary(BinaryFn::Add)) {
            let args = g.nodes[add].args.clone();
            let is_noise = |v| computed_from(g, v, &assign, |op| matches!(op, Op::RandomUniform { .. }));
            if let Some(&clean) = args.iter().find(|&&v| !is_noise(v)).filter(|_| args.iter().any(|&v| is_noise(v))) {
                logits = clean;
            }
        }
        g.nodes[softmax].args[0] = logits;
    }
    Ok(())
}

/// `no-identity-pool`: `Z = broadcast(mean_t L)` over the K slots; no clustering, no cross-attention.
pub fn no_identity_pool(g: &mut Graph) -> Result<(), AblateError> {
    const A: &str = "no-identity-pool";
    require(g, A, "calm/identity_pool/cluster_l")?;
    let z = single_result(g, "calm/identity_pool", A)?;
    let l = single_entry(g, "calm/identity_pool/cluster_l", A)?;
    let mask = input(g, "mask", A)?;
    let z_shape = g.value_type(z).shape.clone();
    if z_shape.len() != 3 || g.value_type(l).rank() != 3 {
        return Err(AblateError::not_applicable(
            A,
            format!("expected Z and L of rank 3, found {} and {}", g.value_type(z), g.value_type(l)),
        ));
    }
    let z_new = build_in(g, "calm/identity_pool/mean_l", |b| {
        let mean = nn::masked_mean(b, l, mask)?;
        let row = b.reshape(mean, vec![z_shape[0].clone(), Dim::Fixed(1), z_shape[2].clone()])?;
        b.broadcast(row, z_shape)
    })?;
    rewire(g, z, z_new, A)?;
    remove_output(g, "assign_e");
    remove_output(g, "assign_l");
    Ok(())
}

/// `no-cross-attention`: `Z = C_L`; the explicit clusters are no longer read.
pub fn no_cross_attention(g: &mut Graph) -> Result<(), AblateError> {
    const A: &str = "no-cross-attention";
    let scope = "calm/identity_pool/cross_attention";
    require(g, A, scope)?;
    let z = single_result(g, scope, A)?;
    let c_l = entries(g, scope)
        .into_iter()
        .find(|&v| in_scope(&g.nodes[g.producer(v)].scope, "calm/identity_pool/cluster_l"))
        .ok_or_else(|| AblateError::not_applicable(A, "cross-attention does not read the latent clusters".into()))?;
    rewire(g, z, c_l, A)?;
    remove_output(g, "assign_e");
    Ok(())
}

/// `dense-moe`: every expert on every unit with softmax gates (k = E): the gate matrix becomes the
/// router's probabilities and each expert's slot share `f_e` the constant `1/E`.
pub fn dense_moe(g: &mut Graph) -> Result<(), AblateError> {
    const A: &str = "dense-moe";
    let dims = child_scopes(g, "calm/moe", "dim");
    if dims.is_empty() {
        return Err(missing(A, "calm/moe/dim*"));
    }
    for dim in dims {
        let gates = format!("{dim}/gates");
        find_node(g, &gates, |op| matches!(op, Op::TopK { .. })).ok_or_else(|| missing(A, &gates))?;
        let prob = single_result(g, &format!("{dim}/router"), A)?;
        let combine = format!("{dim}/combine");
        let gate_matrix = results(g, &gates)
            .into_iter()
            .find(|&v| g.users()[v].iter().any(|&n| in_scope(&g.nodes[n].scope, &combine)))
            .ok_or_else(|| AblateError::not_applicable(A, format!("nothing in `{combine}` reads the gates")))?;
        rewire(g, gate_matrix, prob, A)?;
        let balance = format!("{dim}/balance");
        let fraction =
            results(g, &balance).into_iter().find(|&v| computed_from(g, v, &dim, |op| matches!(op, Op::TopK { .. })));
        if let Some(fraction) = fraction {
            let ty = g.value_type(fraction).clone();
            let experts = g.value_type(prob).shape.last().and_then(Dim::fixed).unwrap_or(1);
            let uniform = build_in(g, &balance, |b| {
                let share = b.scalar(1.0 / experts as f64)?;
                b.broadcast(share, ty.shape)
            })?;
            rewire(g, fraction, uniform, A)?;
        }
    }
    Ok(())
}

/// `no-moe`: `M = MLP(mean_j Z)`; routers, experts and the load-balance loss go.
pub fn no_moe(g: &mut Graph) -> Result<(), AblateError> {
    const A: &str = "no-moe";
    if child_scopes(g, "calm/moe", "dim").is_empty() {
        return Err(missing(A, "calm/moe/dim*"));
    }
    let m = single_result(g, "calm/moe", A)?;
    let z = single_entry(g, "calm/moe", A)?;
    let width = g.value_type(m).shape.last().and_then(Dim::fixed).unwrap_or(0);
    // The spec's MLP with the graph's own dropout (the first dropout node's, 0 if it has none).
    let dropout =
        g.nodes.values().find_map(|n| if let Op::Dropout { p, .. } = n.op { Some(p) } else { None }).unwrap_or(0.0);
    let m_new = build_in(g, "calm/moe", |b| {
        let mean = b.scoped("summary", |b| b.reduce_mean(z, &[1], false))?;
        let mlp = Mlp::new(b, "mlp", width, width, width, dropout)?;
        b.scoped("mlp", |b| mlp.apply(b, mean))
    })?;
    rewire(g, m, m_new, A)?;
    if g.output("loss_lb").is_some() {
        drop_loss_term(g, "loss_lb", A)?;
    }
    remove_output(g, "lb_fraction");
    remove_output(g, "lb_prob");
    Ok(())
}

/// `no-fusion-gate`: `I = LayerNorm(h̄ + M)`.
pub fn no_fusion_gate(g: &mut Graph) -> Result<(), AblateError> {
    const A: &str = "no-fusion-gate";
    require(g, A, "calm/fusion")?;
    let gated = g.nodes.iter().find_map(|(n, node)| {
        if node.scope != "calm/fusion" || !matches!(node.op, Op::Binary(BinaryFn::Mul)) {
            return None;
        }
        let is_gate = |v| matches!(g.nodes[g.producer(v)].op, Op::Unary(UnaryFn::Sigmoid));
        match node.args[..] {
            [a, b] if is_gate(a) => Some((n, b)),
            [a, b] if is_gate(b) => Some((n, a)),
            _ => None,
        }
    });
    let (mul, m) =
        gated.ok_or_else(|| AblateError::not_applicable(A, "`calm/fusion` has no gate (γ ⊙ M) any more".into()))?;
    let out = g.result(mul);
    rewire(g, out, m, A)
}

/// `no-reflection`: R = 0, the output head reads the identity state `I_0` directly; the rounds'
/// loss terms go.
pub fn no_reflection(g: &mut Graph) -> Result<(), AblateError> {
    const A: &str = "no-reflection";
    require(g, A, "calm/reflection/round0")?;
    let output_scope = "calm/reflection/output";
    let read_by_output = entries(g, output_scope);
    // I_0 enters the reflection stage but is not read by the output head (which reads I_R).
    let i0 = entries(g, "calm/reflection")
        .into_iter()
        .find(|v| !read_by_output.contains(v))
        .ok_or_else(|| AblateError::not_applicable(A, "cannot tell the identity state from s̄".into()))?;
    let i_last = read_by_output
        .into_iter()
        .find(|&v| in_scope(&g.nodes[g.producer(v)].scope, "calm/reflection"))
        .ok_or_else(|| missing(A, "calm/reflection/round*"))?;
    for n in nodes_in(g, output_scope) {
        for a in g.nodes[n].args.iter_mut().filter(|a| **a == i_last) {
            *a = i0;
        }
    }
    for term in ["loss_ref", "loss_ce_rounds"] {
        if g.output(term).is_some() {
            drop_loss_term(g, term, A)?;
        }
    }
    Ok(())
}
