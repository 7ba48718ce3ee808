//! Fused ops: the ops that fusion passes create, kept apart from the primitives.
//!
//! The rest of the IR reaches a fused op only through [`Op::Fused`](crate::op::Op::Fused) and the
//! methods below, so a fusion pass adds its op here (a variant, its name, arity, results and its
//! shape rule in [`FusedOp::infer`]) and touches nothing else.

use serde::{Deserialize, Serialize};

use crate::infer::{broadcast_shapes, infer, TypeError};
use crate::op::{Arity, Op};
use crate::program::Program;
use crate::types::{DType, Dim, Shape, TensorType};

/// An op produced by fusing primitives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "snake_case")]
pub enum FusedOp {
    /// A chain of elementwise ops as one program over `shape`: arguments broadcast to it, one
    /// result per program output.
    Elementwise { shape: Shape, program: Program },
    /// A matmul followed by an elementwise program on its result: arguments `a, b, extra..`;
    /// program argument 0 is the product, arguments `1..` the extras (broadcast to the product).
    MatMulEpilogue { transpose_a: bool, transpose_b: bool, program: Program },
    /// A reduction of an elementwise program's result: the program (one output) is evaluated
    /// over the broadcast shape of its arguments (one of which has that whole shape) and reduced
    /// along `axes`, as the primitive `reduction` would, without the product being stored.
    Reduce { reduction: Reduction, axes: Vec<usize>, keep_dims: bool, program: Program },
    /// Multi-head scaled dot-product attention with the head split and merge built in:
    /// arguments `q: [B, Lq, m]`, `k, v: [B, Lk, m]` and, if `bias`, an additive score bias that
    /// broadcasts to `[B, heads, Lq, Lk]`; result `[B, Lq, m]`, per head
    /// `softmax(q kᵀ · scale + bias) v` over `m / heads` columns.
    Attention { heads: u64, scale: f64, bias: bool },
    /// Gumbel-softmax clustering and pooling (CALM stage 3). Arguments `hidden: [B, T, H]`,
    /// `w` (`[H, K]`, or `[K, H]` if `transpose_w`), `bias: [K]`, `x: [B, T, D]`,
    /// `mask: [B, T, 1]`, then the temperature (a scalar) if `temperature`, then the generator's
    /// `seed` and `offset` (u32 scalars) if `noise_stream` is set. With
    /// `A = softmax_K((hidden·w + bias + g) / τ) · mask` and Gumbel noise `g = −log(−log u)`,
    /// `u` drawn at each element of `[B, T, K]` on `noise_stream`, the results are
    /// `pooled: [B, K, D] = Σ_t A x / (Σ_t A + eps)` and the assignment `A: [B, T, K]`.
    GumbelPool { transpose_w: bool, temperature: bool, noise_stream: Option<u32>, eps: f64 },
    /// Top-k routing (CALM stage 4): arguments `x: [B, m]`, `w` (`[m, E]`, or `[E, m]` if
    /// `transpose_w`), `bias: [E]`. With `p = softmax(x·w + bias)` and the `top_k` largest
    /// probabilities (ties to the lower index) renormalised to sum to one, the results are the
    /// gate matrix `[B, E]` (those gates, zero elsewhere), `p: [B, E]`, and the choices one-hot
    /// `[B, top_k, E]` (f32).
    Route { top_k: u64, transpose_w: bool },
    /// `groups` mixtures (CALM's communicative dimensions) of `experts` pre-LN transformer
    /// experts of `layers` layers each (CALM stage 4) over the same units `z: [B, K, m]`.
    /// Arguments: `z`; then the routing: without `router`, per group the gate matrix `[B, E]`
    /// and the one-hot choices `[B, top_k, E]` of a [`FusedOp::Route`]; with `router`, the
    /// routers themselves, as [`FusedOp::Route`] computes them from `x: [B, r]`, the groups'
    /// weights stacked along axis 0 (`[G·E, r]` if `transpose_w`, else `[G·r, E]`) and biases
    /// `[G·E]`; then per layer the parameters of all `G·E`
    /// experts (group-major) stacked along axis 0, in the order of [`EXPERT_LAYER_PARAMS`] (for
    /// each expert its block: `ln1` gamma and beta `[G·E·m]`, q, k, v weights `[G·E·3m, m]`
    /// (each expert's `[q; k; v]`) and biases, output projection `[G·E·m, m]` and bias, `ln2`,
    /// `ffn1` `[G·E·F, m]` and bias, `ffn2` `[G·E·m, F]` and bias; weights as `x·Wᵀ`). Result
    /// `g`, `[B, m]`: `Σ_e gates_g[b, e] · mean_K(expert_{g,e}(z[b]))`, each layer
    /// `x += attn(ln1(x)) W_oᵀ + b_o; x += gelu(ln2(x) W_1ᵀ + b_1) W_2ᵀ + b_2`. The reference
    /// executor and the kernels compute only the chosen (unit, expert) pairs (the gates are
    /// zero off the choices), which is the dense mixture wherever the experts' outputs are
    /// finite. With `joined`, the groups' results come as one `[B, G·m]`, their concatenation
    /// along the last axis. With a router that has `stats`, two more results: the load-balance statistics
    /// `f: [G, E]` (the share of each group's `B·top_k` choices given to each expert, as
    /// `mean_B(Σ_k chosen) · (1/top_k)`) and `P: [G, E]` (the mean router probability).
    ExpertMixture {
        groups: u64,
        experts: u64,
        top_k: u64,
        layers: u64,
        heads: u64,
        scale: f64,
        eps: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        router: Option<MixtureRouter>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        joined: bool,
    },
}

/// The routers an [`FusedOp::ExpertMixture`] computes itself, so that one kernel routes every
/// group and orders the routed units by expert.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixtureRouter {
    /// Each router's weight is `[E, r]` rather than `[r, E]`.
    pub transpose_w: bool,
    /// Also return the load-balance statistics `f` and `P`.
    pub stats: bool,
}

/// Which reduction a [`FusedOp::Reduce`] applies.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    Sum,
    Mean,
    Max,
}

impl Reduction {
    /// The reduction of a primitive op, if it is one.
    pub fn of(op: &Op) -> Option<(Reduction, &[usize], bool)> {
        match op {
            Op::ReduceSum { axes, keep_dims } => Some((Reduction::Sum, axes, *keep_dims)),
            Op::ReduceMean { axes, keep_dims } => Some((Reduction::Mean, axes, *keep_dims)),
            Op::ReduceMax { axes, keep_dims } => Some((Reduction::Max, axes, *keep_dims)),
            _ => None,
        }
    }

    /// The primitive op of this reduction.
    pub fn primitive(self, axes: &[usize], keep_dims: bool) -> Op {
        let axes = axes.to_vec();
        match self {
            Reduction::Sum => Op::ReduceSum { axes, keep_dims },
            Reduction::Mean => Op::ReduceMean { axes, keep_dims },
            Reduction::Max => Op::ReduceMax { axes, keep_dims },
        }
    }
}

/// The stacked parameters of one expert layer, in argument order (see [`FusedOp::ExpertMixture`]).
pub const EXPERT_LAYER_PARAMS: [&str; 12] = [
    "ln1.gamma",
    "ln1.beta",
    "qkv.weight",
    "qkv.bias",
    "output.weight",
    "output.bias",
    "ln2.gamma",
    "ln2.beta",
    "ffn1.weight",
    "ffn1.bias",
    "ffn2.weight",
    "ffn2.bias",
];

/// Positions in [`EXPERT_LAYER_PARAMS`] of the weights (read as `x·Wᵀ`).
pub const EXPERT_LAYER_WEIGHTS: [usize; 4] = [2, 4, 8, 10];

impl FusedOp {
    /// The position of an expert mixture's first stacked parameter.
    pub fn first_expert_param(&self) -> Option<usize> {
        match self {
            FusedOp::ExpertMixture { router: Some(_), .. } => Some(4),
            FusedOp::ExpertMixture { groups, .. } => Some(1 + 2 * *groups as usize),
            _ => None,
        }
    }

    /// Whether argument `i` of this op is a weight read as `x·Wᵀ` (the lowering may store it
    /// transposed).
    pub fn reads_as_weight(&self, i: usize) -> bool {
        match self {
            FusedOp::ExpertMixture { .. } => {
                let first = self.first_expert_param().expect("an expert mixture");
                i >= first && EXPERT_LAYER_WEIGHTS.contains(&((i - first) % EXPERT_LAYER_PARAMS.len()))
            }
            _ => false,
        }
    }
}

impl FusedOp {
    pub fn name(&self) -> &'static str {
        match self {
            FusedOp::Elementwise { .. } => "fused_elementwise",
            FusedOp::MatMulEpilogue { .. } => "fused_matmul",
            FusedOp::Reduce { .. } => "fused_reduce",
            FusedOp::Attention { .. } => "fused_attention",
            FusedOp::GumbelPool { .. } => "fused_gumbel_pool",
            FusedOp::Route { .. } => "fused_route",
            FusedOp::ExpertMixture { .. } => "fused_expert_mixture",
        }
    }

    pub fn arity(&self) -> Arity {
        match self {
            FusedOp::Elementwise { .. } => Arity::AtLeast(0),
            FusedOp::MatMulEpilogue { .. } => Arity::AtLeast(2),
            FusedOp::Reduce { .. } => Arity::AtLeast(1),
            FusedOp::Attention { bias, .. } => Arity::Exact(3 + *bias as usize),
            FusedOp::GumbelPool { temperature, noise_stream, .. } => {
                Arity::Exact(5 + *temperature as usize + 2 * noise_stream.is_some() as usize)
            }
            FusedOp::Route { .. } => Arity::Exact(3),
            FusedOp::ExpertMixture { layers, .. } => Arity::Exact(
                self.first_expert_param().expect("an expert mixture") + EXPERT_LAYER_PARAMS.len() * *layers as usize,
            ),
        }
    }

    pub fn num_results(&self) -> usize {
        match self {
            FusedOp::Elementwise { program, .. } => program.outputs.len(),
            FusedOp::MatMulEpilogue { .. } | FusedOp::Attention { .. } | FusedOp::Reduce { .. } => 1,
            FusedOp::ExpertMixture { groups, router, joined, .. } => {
                (if *joined { 1 } else { *groups as usize }) + 2 * router.is_some_and(|r| r.stats) as usize
            }
            FusedOp::GumbelPool { .. } => 2,
            FusedOp::Route { .. } => 3,
        }
    }

    pub fn attrs_text(&self) -> String {
        let n = |p: &Program| p.instrs.len();
        match self {
            FusedOp::Elementwise { program, .. } => format!("{} instrs", n(program)),
            FusedOp::MatMulEpilogue { transpose_a, transpose_b, program } => {
                format!(
                    "{}{}+{} instrs",
                    if *transpose_a { "tA," } else { "" },
                    if *transpose_b { "tB," } else { "" },
                    n(program)
                )
            }
            FusedOp::Reduce { reduction, axes, keep_dims, program } => {
                let keep = if *keep_dims { " keep" } else { "" };
                format!("{reduction:?} axes={axes:?}{keep} of {} instrs", n(program)).to_lowercase()
            }
            FusedOp::Attention { heads, scale, bias } => {
                format!("heads={heads} scale={scale}{}", if *bias { " +bias" } else { "" })
            }
            FusedOp::GumbelPool { transpose_w, temperature, noise_stream, eps } => {
                let mut parts = vec![format!("eps={eps}")];
                if *transpose_w {
                    parts.push("tW".into());
                }
                if *temperature {
                    parts.push("τ".into());
                }
                if let Some(s) = noise_stream {
                    parts.push(format!("noise stream={s}"));
                }
                parts.join(" ")
            }
            FusedOp::Route { top_k, transpose_w } => format!("k={top_k}{}", if *transpose_w { " tW" } else { "" }),
            FusedOp::ExpertMixture { groups, experts, top_k, layers, heads, router, joined, .. } => {
                let routed = match router {
                    Some(r) => format!(
                        " +router{}{}",
                        if r.transpose_w { " tW" } else { "" },
                        if r.stats { " +stats" } else { "" }
                    ),
                    None => String::new(),
                };
                let joined = if *joined { " joined" } else { "" };
                format!("groups={groups} experts={experts} k={top_k} layers={layers} heads={heads}{routed}{joined}")
            }
        }
    }

    /// Result types from argument types, as for the primitives.
    pub fn infer(&self, args: &[&TensorType]) -> Result<Vec<TensorType>, TypeError> {
        let program_error = |e: String| TypeError::Attribute(format!("program: {e}"));
        match self {
            FusedOp::Elementwise { shape, program } => {
                program.check(args.len()).map_err(program_error)?;
                let mut all: Vec<&[crate::types::Dim]> = args.iter().map(|t| t.shape.as_slice()).collect();
                all.push(shape);
                if broadcast_shapes(&all)? != *shape {
                    return Err(TypeError::Shape(format!("arguments do not broadcast to {shape:?}")));
                }
                Ok(program.outputs.iter().map(|&(_, dtype)| TensorType::new(dtype, shape.clone())).collect())
            }
            FusedOp::MatMulEpilogue { transpose_a, transpose_b, program } => {
                let product =
                    infer(&Op::MatMul { transpose_a: *transpose_a, transpose_b: *transpose_b }, &args[..2])?.remove(0);
                program.check(args.len() - 1).map_err(program_error)?;
                if program.outputs.len() != 1 {
                    return Err(TypeError::Attribute("a matmul epilogue has one output".into()));
                }
                let mut all: Vec<&[crate::types::Dim]> = args[2..].iter().map(|t| t.shape.as_slice()).collect();
                all.push(&product.shape);
                if broadcast_shapes(&all)? != product.shape {
                    return Err(TypeError::Shape("epilogue arguments do not broadcast to the product".into()));
                }
                let dtype: DType = program.outputs[0].1;
                Ok(vec![TensorType::new(dtype, product.shape)])
            }
            FusedOp::Reduce { reduction, axes, keep_dims, program } => {
                program.check(args.len()).map_err(program_error)?;
                if program.outputs.len() != 1 {
                    return Err(TypeError::Attribute("a reduction's program has one output".into()));
                }
                let all: Vec<&[Dim]> = args.iter().map(|t| t.shape.as_slice()).collect();
                let shape = broadcast_shapes(&all)?;
                if !args.iter().any(|t| t.shape == shape) {
                    return Err(TypeError::Shape(format!("no argument has the reduced shape {shape:?}")));
                }
                let product = TensorType::new(program.outputs[0].1, shape);
                infer(&reduction.primitive(axes, *keep_dims), &[&product])
            }
            FusedOp::Attention { heads, bias, .. } => infer_attention(args, *heads, *bias),
            FusedOp::GumbelPool { transpose_w, .. } => infer_gumbel_pool(args, *transpose_w),
            FusedOp::Route { top_k, transpose_w } => infer_route(args, *top_k, *transpose_w),
            FusedOp::ExpertMixture { groups, experts, top_k, heads, router, joined, .. } => {
                let first = self.first_expert_param().expect("an expert mixture");
                infer_experts(args, first, *groups, *experts, *top_k, *heads, *router, *joined)
            }
        }
    }
}

fn shape_error(what: &str, args: &[&TensorType]) -> TypeError {
    let list: Vec<String> = args.iter().map(|t| t.to_string()).collect();
    TypeError::Shape(format!("{what}, got {}", list.join(", ")))
}

fn infer_attention(args: &[&TensorType], heads: u64, bias: bool) -> Result<Vec<TensorType>, TypeError> {
    let (q, k, v) = (&args[0].shape, &args[1].shape, &args[2].shape);
    let ok = [q, k, v].iter().all(|s| s.len() == 3)
        && q[0] == k[0]
        && k == v
        && q[2] == k[2]
        && heads > 0
        && q[2].fixed().is_some_and(|m| m % heads == 0)
        && args[..3].iter().all(|t| t.dtype.is_float());
    if !ok {
        return Err(shape_error(
            &format!("attention needs float q [B, Lq, m], k = v [B, Lk, m] with m divisible by {heads} heads"),
            args,
        ));
    }
    if bias {
        let scores: crate::types::Shape = vec![q[0].clone(), Dim::Fixed(heads), q[1].clone(), k[1].clone()];
        if broadcast_shapes(&[&args[3].shape, &scores])? != scores {
            return Err(shape_error("the attention bias must broadcast to [B, heads, Lq, Lk]", args));
        }
    }
    Ok(vec![args[0].clone()])
}

fn infer_gumbel_pool(args: &[&TensorType], transpose_w: bool) -> Result<Vec<TensorType>, TypeError> {
    let (hidden, w, bias, x, mask) = (&args[0].shape, &args[1].shape, &args[2].shape, &args[3].shape, &args[4].shape);
    let (batch, tokens) = (hidden.first(), hidden.get(1));
    let ok = hidden.len() == 3
        && w.len() == 2
        && x.len() == 3
        && bias.len() == 1
        && mask.len() == 3
        && w[transpose_w as usize] == hidden[2]
        && bias[0] == w[1 - transpose_w as usize]
        && x.first() == batch
        && x.get(1) == tokens
        && mask[..2] == hidden[..2]
        && mask[2] == Dim::Fixed(1)
        && args[5..].iter().all(|t| t.shape.is_empty())
        && args[..5].iter().all(|t| t.dtype.is_float());
    if !ok {
        return Err(shape_error(
            "gumbel_pool needs hidden [B, T, H], w [H, K] (or [K, H]), bias [K], x [B, T, D], mask [B, T, 1], scalars",
            args,
        ));
    }
    let (b, t, k, d) = (hidden[0].clone(), hidden[1].clone(), bias[0].clone(), x[2].clone());
    let dtype = args[3].dtype;
    Ok(vec![TensorType::new(dtype, vec![b.clone(), k.clone(), d]), TensorType::new(dtype, vec![b, t, k])])
}

fn infer_route(args: &[&TensorType], top_k: u64, transpose_w: bool) -> Result<Vec<TensorType>, TypeError> {
    let (x, w, bias) = (&args[0].shape, &args[1].shape, &args[2].shape);
    let t = transpose_w as usize;
    let ok = x.len() == 2
        && w.len() == 2
        && bias.len() == 1
        && w[t] == x[1]
        && w[1 - t] == bias[0]
        && bias[0].fixed().is_some_and(|e| top_k >= 1 && top_k <= e)
        && args.iter().all(|a| a.dtype.is_float());
    if !ok {
        return Err(shape_error(
            &format!("route needs x [B, m], w [m, E] (or [E, m]), bias [E] with 1 <= {top_k} <= E"),
            args,
        ));
    }
    let (b, e) = (x[0].clone(), bias[0].clone());
    let dtype = args[0].dtype;
    Ok(vec![
        TensorType::new(dtype, vec![b.clone(), e.clone()]),
        TensorType::new(dtype, vec![b.clone(), e.clone()]),
        TensorType::new(DType::F32, vec![b, Dim::Fixed(top_k), e]),
    ])
}

/// `first`: the position of the first stacked parameter ([`FusedOp::first_expert_param`]).
#[allow(clippy::too_many_arguments)]
fn infer_experts(
    args: &[&TensorType],
    first: usize,
    groups: u64,
    experts: u64,
    top_k: u64,
    heads: u64,
    router: Option<MixtureRouter>,
    joined: bool,
) -> Result<Vec<TensorType>, TypeError> {
    let z = &args[0].shape;
    let g = groups as usize;
    let e = Dim::Fixed(experts);
    let width = z.get(2).and_then(Dim::fixed);
    let (routing_ok, routing) = match router {
        None => {
            let ok = (0..g).all(|i| {
                let (gates, chosen) = (&args[1 + 2 * i].shape, &args[2 + 2 * i].shape);
                z.len() == 3
                    && gates[..] == [z[0].clone(), e.clone()]
                    && chosen[..] == [z[0].clone(), Dim::Fixed(top_k), e.clone()]
            });
            (ok, format!("{groups} pairs of gates [B, {experts}] and choices [B, {top_k}, {experts}]"))
        }
        Some(r) => {
            let (x, w, bias) = (&args[1].shape, &args[2].shape, &args[3].shape);
            let r_width = x.get(1).and_then(Dim::fixed);
            let stacked = |d: &Dim, per: Option<u64>| per.is_some_and(|p| d.fixed() == Some(groups * p));
            let w_ok = w.len() == 2
                && if r.transpose_w {
                    stacked(&w[0], Some(experts)) && w[1].fixed() == r_width
                } else {
                    stacked(&w[0], r_width) && w[1] == e
                };
            let ok = z.len() == 3
                && x.len() == 2
                && x[0] == z[0]
                && w_ok
                && bias.len() == 1
                && stacked(&bias[0], Some(experts))
                && (1..=experts).contains(&top_k);
            let w_form = if r.transpose_w { "[G·E, r]" } else { "[G·r, E]" };
            (ok, format!("the routers' x [B, r], weights {w_form} and biases [G·E] (G = {groups}, E = {experts})"))
        }
    };
    let ok = groups >= 1
        && routing_ok
        && heads > 0
        && width.is_some_and(|m| m % heads == 0)
        && args.iter().all(|a| a.dtype.is_float());
    if !ok {
        return Err(shape_error(
            &format!("expert_mixture needs z [B, K, m] (m divisible by {heads} heads), then {routing}"),
            args,
        ));
    }
    let m = width.expect("checked");
    let all = groups * experts;
    // The FFN width from the first layer's ffn1 bias.
    let ffn = args.get(first + 9).and_then(|t| t.shape.first()).and_then(Dim::fixed).map(|n| n / all.max(1));
    let Some(f) = ffn else { return Err(shape_error("expert_mixture needs every layer's parameters", args)) };
    let expected = |p: usize| -> Vec<u64> {
        match p {
            0 | 1 | 5 | 6 | 7 | 11 => vec![all * m],
            2 => vec![all * 3 * m, m],
            3 => vec![all * 3 * m],
            4 => vec![all * m, m],
            8 => vec![all * f, m],
            9 => vec![all * f],
            _ => vec![all * m, f],
        }
    };
    for (i, t) in args[first..].iter().enumerate() {
        let want: Vec<Dim> = expected(i % EXPERT_LAYER_PARAMS.len()).into_iter().map(Dim::Fixed).collect();
        if t.shape != want {
            return Err(TypeError::Shape(format!(
                "expert_mixture argument {} ({}) is {t}, expected {want:?}",
                first + i,
                EXPERT_LAYER_PARAMS[i % EXPERT_LAYER_PARAMS.len()]
            )));
        }
    }
    let mut results = if joined {
        vec![TensorType::new(args[0].dtype, vec![z[0].clone(), Dim::Fixed(groups * m)])]
    } else {
        vec![TensorType::new(args[0].dtype, vec![z[0].clone(), z[2].clone()]); g]
    };
    if router.is_some_and(|r| r.stats) {
        // As the graph computes them: `f` from the f32 one-hot choices, `P` from the routers'
        // probabilities (the dtype of `x`).
        let rows = vec![Dim::Fixed(groups), e.clone()];
        results.extend([TensorType::new(DType::F32, rows.clone()), TensorType::new(args[1].dtype, rows)]);
    }
    Ok(results)
}
