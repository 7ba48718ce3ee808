//! A small, complete model for tests, examples and the CLI's documentation: a one-block
//! attention classifier over token states, with a loss, that uses most op classes.

use crate::builder::{BuildResult, GraphBuilder};
use crate::graph::Graph;
use crate::nn;
use crate::shape;
use crate::types::DType;

/// Builds the sample classifier: `x: f32[batch,tokens,16]`, `mask: f32[batch,tokens]`,
/// `labels: i32[batch]` in; `logits`, `top2` (class indices) and `loss` out.
pub fn tiny_classifier() -> Graph {
    // Fixed code: a failure here is a bug in the builder, not a user error.
    let b = build().unwrap_or_else(|e| panic!("sample graph must build: {e}"));
    b.finish().unwrap_or_else(|e| panic!("sample graph must verify: {e}"))
}

fn build() -> BuildResult<GraphBuilder> {
    let mut b = GraphBuilder::new("tiny");
    let (x, mask, labels) = b.scoped("inputs", |b| {
        Ok((
            b.input("x", DType::F32, shape!["batch", "tokens", 16u64])?,
            b.input("mask", DType::F32, shape!["batch", "tokens"])?,
            b.input("labels", DType::I32, shape!["batch"])?,
        ))
    })?;
    let h = b.scoped("block", |b| {
        let h = nn::linear(b, "proj", x, 32)?;
        let h = b.gelu(h)?;
        let bias = nn::key_mask_bias(b, mask, f64::NEG_INFINITY)?;
        let a = nn::multi_head_attention(b, "attn", h, h, 4, Some(bias))?;
        let h = b.add(h, a)?;
        nn::layer_norm(b, "ln", h, nn::LAYER_NORM_EPS)
    })?;
    let logits = b.scoped("head", |b| {
        let pooled = nn::masked_mean(b, h, mask)?;
        nn::linear(b, "out", pooled, 3)
    })?;
    let (top2, loss) = b.scoped("loss", |b| {
        let probs = b.softmax(logits, -1)?;
        let (_, top2) = b.top_k(probs, 2)?;
        Ok((top2, nn::cross_entropy(b, logits, labels)?))
    })?;
    b.output("logits", logits);
    b.output("top2", top2);
    b.output("loss", loss);
    Ok(b)
}
