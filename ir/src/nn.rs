//! Layers as compositions of primitives: `linear`, `mlp`, `layer_norm`, masked means and
//! multi-head attention. Each creates its parameters under a scope of its own, so a parameter's
//! name says which layer it belongs to (`calm/stage1/mlp_s/l1/weight`).
//!
//! Weights follow PyTorch's layout (`[out, in]`, applied as `x Wᵀ + b`), so weight files written
//! by PyTorch models map onto these parameters without transposes.

use crate::builder::{BuildError, BuildResult, GraphBuilder};
use crate::graph::ValueId;
use crate::infer::TypeError;
use crate::op::Init;
use crate::types::{DType, Dim};

/// The epsilon of layer norm unless a model says otherwise (PyTorch's default).
pub const LAYER_NORM_EPS: f64 = 1e-5;

fn attr_error(b: &GraphBuilder, op: &'static str, msg: String) -> BuildError {
    BuildError { scope: b.scope(), op, source: TypeError::Attribute(msg) }
}

/// The fixed size of the last axis of `x` (layers need it to size their weights).
pub fn last_dim(b: &GraphBuilder, op: &'static str, x: ValueId) -> BuildResult<u64> {
    match b.shape_of(x).last() {
        Some(Dim::Fixed(n)) => Ok(*n),
        other => Err(attr_error(b, op, format!("needs a fixed last dimension, got {other:?} in {}", b.type_of(x)))),
    }
}

/// A linear layer `x Wᵀ + b`, `W: [out, in]`, `b: [out]`, with PyTorch's default
/// initialisation (uniform in ±1/√in). Its parameters live in the scope it was created in; it can
/// be applied anywhere, any number of times (weights shared across reflective rounds, say).
#[derive(Copy, Clone, Debug)]
pub struct Linear {
    pub weight: ValueId,
    pub bias: Option<ValueId>,
}

impl Linear {
    pub fn new(b: &mut GraphBuilder, name: &str, in_dim: u64, out_dim: u64, bias: bool) -> BuildResult<Self> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let init = Init::Uniform { low: -bound, high: bound };
        b.scoped(name, |b| {
            let weight = b.param("weight", vec![Dim::Fixed(out_dim), Dim::Fixed(in_dim)], init.clone())?;
            let bias = if bias { Some(b.param("bias", vec![Dim::Fixed(out_dim)], init)?) } else { None };
            Ok(Linear { weight, bias })
        })
    }

    pub fn apply(&self, b: &mut GraphBuilder, x: ValueId) -> BuildResult<ValueId> {
        let y = b.matmul(x, self.weight, false, true)?;
        match self.bias {
            Some(bias) => b.add(y, bias),
            None => Ok(y),
        }
    }
}

/// A [`Linear`] with bias, created in scope `name` and applied to `x` there.
pub fn linear(b: &mut GraphBuilder, name: &str, x: ValueId, out: u64) -> BuildResult<ValueId> {
    let fan_in = last_dim(b, "linear", x)?;
    let layer = Linear::new(b, name, fan_in, out, true)?;
    b.scoped(name, |b| layer.apply(b, x))
}

/// The spec's `MLP(a→b→c)`: `Linear → ReLU → Dropout(p) → Linear`, layers `l1` and `l2`.
#[derive(Copy, Clone, Debug)]
pub struct Mlp {
    pub l1: Linear,
    pub l2: Linear,
    pub dropout: f64,
}

impl Mlp {
    pub fn new(
        b: &mut GraphBuilder,
        name: &str,
        in_dim: u64,
        hidden: u64,
        out: u64,
        dropout: f64,
    ) -> BuildResult<Self> {
        b.scoped(name, |b| {
            Ok(Mlp {
                l1: Linear::new(b, "l1", in_dim, hidden, true)?,
                l2: Linear::new(b, "l2", hidden, out, true)?,
                dropout,
            })
        })
    }

    pub fn apply(&self, b: &mut GraphBuilder, x: ValueId) -> BuildResult<ValueId> {
        let h = self.l1.apply(b, x)?;
        let h = b.relu(h)?;
        let h = b.dropout(h, self.dropout)?;
        self.l2.apply(b, h)
    }
}

/// An [`Mlp`] created in scope `name` and applied to `x` there.
pub fn mlp(b: &mut GraphBuilder, name: &str, x: ValueId, hidden: u64, out: u64, dropout: f64) -> BuildResult<ValueId> {
    let in_dim = last_dim(b, "mlp", x)?;
    let layer = Mlp::new(b, name, in_dim, hidden, out, dropout)?;
    b.scoped(name, |b| layer.apply(b, x))
}

/// Layer norm over the last axis with learned `weight` (ones) and `bias` (zeros).
#[derive(Copy, Clone, Debug)]
pub struct LayerNorm {
    pub gamma: ValueId,
    pub beta: ValueId,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(b: &mut GraphBuilder, name: &str, dim: u64, eps: f64) -> BuildResult<Self> {
        b.scoped(name, |b| {
            let gamma = b.param("weight", vec![Dim::Fixed(dim)], Init::Ones)?;
            let beta = b.param("bias", vec![Dim::Fixed(dim)], Init::Zeros)?;
            Ok(LayerNorm { gamma, beta, eps })
        })
    }

    pub fn apply(&self, b: &mut GraphBuilder, x: ValueId) -> BuildResult<ValueId> {
        b.layer_norm_op(x, self.gamma, self.beta, self.eps)
    }
}

/// A [`LayerNorm`] created in scope `name` and applied to `x` there.
pub fn layer_norm(b: &mut GraphBuilder, name: &str, x: ValueId, eps: f64) -> BuildResult<ValueId> {
    let n = last_dim(b, "layer_norm", x)?;
    let layer = LayerNorm::new(b, name, n, eps)?;
    b.scoped(name, |b| layer.apply(b, x))
}

/// Mean of `x: [B, T, F]` over the tokens that `mask: [B, T]` (f32, 1 for real tokens) marks;
/// a row with no real tokens gives zeros.
pub fn masked_mean(b: &mut GraphBuilder, x: ValueId, mask: ValueId) -> BuildResult<ValueId> {
    let m = b.reshape(mask, [b.shape_of(mask).clone(), vec![Dim::Fixed(1)]].concat())?;
    let xm = b.mul(x, m)?;
    let sum = b.reduce_sum(xm, &[-2], false)?;
    let count = b.reduce_sum(m, &[-2], false)?;
    let one = b.scalar(1.0)?;
    let count = b.max(count, one)?;
    b.div(sum, count)
}

/// Splits `[B, L, h·dh]` into heads: `[B, h, L, dh]`.
fn split_heads(b: &mut GraphBuilder, x: ValueId, heads: u64, head_dim: u64) -> BuildResult<ValueId> {
    let s = b.shape_of(x).clone();
    let x = b.reshape(x, vec![s[0].clone(), s[1].clone(), Dim::Fixed(heads), Dim::Fixed(head_dim)])?;
    b.permute(x, &[0, 2, 1, 3])
}

/// Scaled dot-product attention over already projected `q: [B, Lq, m]`, `k, v: [B, Lk, m]` with
/// `heads` heads: `softmax(q kᵀ / √dh + bias) v`, heads merged back to `[B, Lq, m]`. `bias`, if
/// given, is added to the scores `[B, h, Lq, Lk]` after broadcasting (e.g. a key mask `[B, 1, 1, Lk]`).
pub fn attention(
    b: &mut GraphBuilder,
    q: ValueId,
    k: ValueId,
    v: ValueId,
    heads: u64,
    bias: Option<ValueId>,
) -> BuildResult<ValueId> {
    let width = last_dim(b, "attention", q)?;
    let ranks_ok = [q, k, v].iter().all(|&x| b.rank_of(x) == 3);
    if !ranks_ok || heads == 0 || !width.is_multiple_of(heads) {
        return Err(attr_error(
            b,
            "attention",
            format!(
                "needs q, k, v as [batch, length, width] with width divisible by {heads} heads, got {}, {}, {}",
                b.type_of(q),
                b.type_of(k),
                b.type_of(v)
            ),
        ));
    }
    let head_dim = width / heads;
    let out_shape = b.shape_of(q).clone();
    let (qh, kh, vh) =
        (split_heads(b, q, heads, head_dim)?, split_heads(b, k, heads, head_dim)?, split_heads(b, v, heads, head_dim)?);
    let scores = b.matmul(qh, kh, false, true)?;
    let scale = b.scalar(1.0 / (head_dim as f64).sqrt())?;
    let mut scores = b.mul(scores, scale)?;
    if let Some(bias) = bias {
        scores = b.add(scores, bias)?;
    }
    let p = b.softmax(scores, -1)?;
    let ctx = b.matmul(p, vh, false, false)?;
    let ctx = b.permute(ctx, &[0, 2, 1, 3])?;
    b.reshape(ctx, out_shape)
}

/// Multi-head attention with its four projections (`query`, `key`, `value`, `output`, each a
/// [`Linear`] of width `width`); no residual or norm (callers add the ones their block needs).
#[derive(Copy, Clone, Debug)]
pub struct MultiHeadAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    pub heads: u64,
}

impl MultiHeadAttention {
    pub fn new(b: &mut GraphBuilder, name: &str, width: u64, heads: u64) -> BuildResult<Self> {
        b.scoped(name, |b| {
            Ok(MultiHeadAttention {
                query: Linear::new(b, "query", width, width, true)?,
                key: Linear::new(b, "key", width, width, true)?,
                value: Linear::new(b, "value", width, width, true)?,
                output: Linear::new(b, "output", width, width, true)?,
                heads,
            })
        })
    }

    /// Queries from `query_in: [B, Lq, m]`, keys and values from `kv_in: [B, Lk, m]`.
    pub fn apply(
        &self,
        b: &mut GraphBuilder,
        query_in: ValueId,
        kv_in: ValueId,
        bias: Option<ValueId>,
    ) -> BuildResult<ValueId> {
        let q = self.query.apply(b, query_in)?;
        let k = self.key.apply(b, kv_in)?;
        let v = self.value.apply(b, kv_in)?;
        let ctx = attention(b, q, k, v, self.heads, bias)?;
        self.output.apply(b, ctx)
    }
}

/// A [`MultiHeadAttention`] created in scope `name` and applied there.
pub fn multi_head_attention(
    b: &mut GraphBuilder,
    name: &str,
    query_in: ValueId,
    kv_in: ValueId,
    heads: u64,
    bias: Option<ValueId>,
) -> BuildResult<ValueId> {
    let width = last_dim(b, "multi_head_attention", query_in)?;
    let layer = MultiHeadAttention::new(b, name, width, heads)?;
    b.scoped(name, |b| layer.apply(b, query_in, kv_in, bias))
}

/// An additive attention bias from a key mask `[B, L]` (f32, 1 = attend): 0 where attended,
/// `masked` where not (BERT uses -10000, which keeps a fully padded row finite; `-inf` masks
/// exactly), shaped `[B, 1, 1, L]` to broadcast over heads and queries.
pub fn key_mask_bias(b: &mut GraphBuilder, mask: ValueId, masked: f64) -> BuildResult<ValueId> {
    let s = b.shape_of(mask).clone();
    if s.len() != 2 {
        return Err(attr_error(b, "key_mask_bias", format!("needs a [batch, length] mask, got {}", b.type_of(mask))));
    }
    let cond = b.cast(mask, DType::Bool)?;
    let zero = b.scalar(0.0)?;
    let fill = b.scalar(masked)?;
    let bias = b.select(cond, zero, fill)?;
    b.reshape(bias, vec![s[0].clone(), Dim::Fixed(1), Dim::Fixed(1), s[1].clone()])
}

/// Smallest squared norm the normalisations divide by (PyTorch's `F.normalize` uses 1e-12 on
/// the norm, i.e. 1e-24 on its square).
pub const NORM_EPS_SQUARED: f64 = 1e-24;

/// `x / max(‖x‖, 1e-12)` along the last axis.
pub fn l2_normalize(b: &mut GraphBuilder, x: ValueId) -> BuildResult<ValueId> {
    let sq = b.mul(x, x)?;
    let norm2 = b.reduce_sum(sq, &[-1], true)?;
    let eps = b.scalar(NORM_EPS_SQUARED)?;
    let norm2 = b.max(norm2, eps)?;
    let inv = b.rsqrt(norm2)?;
    b.mul(x, inv)
}

/// `cos²(a, c) = (a·c)² / max(‖a‖²‖c‖², 1e-24)` along the last axis (the axis is removed).
pub fn cos_squared(b: &mut GraphBuilder, a: ValueId, c: ValueId) -> BuildResult<ValueId> {
    let ac = b.mul(a, c)?;
    let dot = b.reduce_sum(ac, &[-1], false)?;
    let aa = b.mul(a, a)?;
    let na = b.reduce_sum(aa, &[-1], false)?;
    let cc = b.mul(c, c)?;
    let nc = b.reduce_sum(cc, &[-1], false)?;
    let den = b.mul(na, nc)?;
    let eps = b.scalar(NORM_EPS_SQUARED)?;
    let den = b.max(den, eps)?;
    let num = b.mul(dot, dot)?;
    b.div(num, den)
}

/// Mean cross-entropy of `logits: [B, Y]` against integer `labels: [B]`, as a scalar:
/// `-mean_b Σ_y onehot(label)_y · log_softmax(logits)_y`.
pub fn cross_entropy(b: &mut GraphBuilder, logits: ValueId, labels: ValueId) -> BuildResult<ValueId> {
    let classes = last_dim(b, "cross_entropy", logits)?;
    let logp = b.log_softmax(logits, -1)?;
    let target = b.one_hot(labels, classes, b.type_of(logits).dtype)?;
    let picked = b.mul(logp, target)?;
    let per_sample = b.reduce_sum(picked, &[-1], false)?;
    let mean = b.reduce_mean(per_sample, &[0], false)?;
    b.neg(mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape;

    #[test]
    fn mlp_has_the_spec_layers_and_shapes() {
        let mut b = GraphBuilder::new("calm");
        let x = b.input("h", DType::F32, shape!["batch", "tokens", 384u64]).unwrap();
        let y = mlp(&mut b, "mlp_s", x, 512, 256, 0.1).unwrap();
        assert_eq!(b.type_of(y).to_string(), "f32[batch,tokens,256]");
        let names: Vec<String> = b.graph().params().map(|(_, n, t)| format!("{n}:{t}")).collect();
        assert_eq!(
            names,
            [
                "calm/mlp_s/l1/weight:f32[512,384]",
                "calm/mlp_s/l1/bias:f32[512]",
                "calm/mlp_s/l2/weight:f32[256,512]",
                "calm/mlp_s/l2/bias:f32[256]"
            ]
        );
        assert_eq!(b.graph().param_count(), 512 * 384 + 512 + 256 * 512 + 256);
    }

    #[test]
    fn attention_keeps_query_shape_and_checks_heads() {
        let mut b = GraphBuilder::new("calm");
        let q = b.input("q", DType::F32, shape!["batch", 5u64, 512u64]).unwrap();
        let kv = b.input("kv", DType::F32, shape!["batch", 7u64, 512u64]).unwrap();
        let y = multi_head_attention(&mut b, "xattn", q, kv, 8, None).unwrap();
        assert_eq!(b.type_of(y), b.type_of(q));
        assert_eq!(b.graph().param_count(), 4 * (512 * 512 + 512));
        assert!(multi_head_attention(&mut b, "bad", q, kv, 7, None).is_err());
    }

    #[test]
    fn masked_mean_and_mask_bias_shapes() {
        let mut b = GraphBuilder::new("calm");
        let x = b.input("x", DType::F32, shape!["batch", "tokens", 16u64]).unwrap();
        let mask = b.input("mask", DType::F32, shape!["batch", "tokens"]).unwrap();
        let m = masked_mean(&mut b, x, mask).unwrap();
        assert_eq!(b.type_of(m).to_string(), "f32[batch,16]");
        let bias = key_mask_bias(&mut b, mask, f64::NEG_INFINITY).unwrap();
        assert_eq!(b.type_of(bias).to_string(), "f32[batch,1,1,tokens]");
        let ln = layer_norm(&mut b, "ln", x, LAYER_NORM_EPS).unwrap();
        assert_eq!(b.type_of(ln), b.type_of(x));
    }
}
