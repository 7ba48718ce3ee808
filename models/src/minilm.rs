//! The BERT encoder of all-MiniLM-L6-v2 in the IR: word, position and token-type embeddings,
//! post-LN transformer layers with GELU, and the attention mask; token ids in, states out.
//!
//! Parameter names follow the model's safetensors file: the parameter
//! `calm/backbone/encoder/layer/0/attention/self/query/weight` is the tensor
//! `encoder.layer.0.attention.self.query.weight` ([`weight_key`]). Three tensors of the file
//! have no parameter ([`UNUSED_TENSORS`]): the `position_ids` buffer (the graph uses `iota`) and
//! the pooler, which sentence-transformers' mean pooling does not use.

use calm_ir::nn;
use calm_ir::{BuildResult, DType, Dim, GraphBuilder, Init, ValueId};

/// Sizes of a BERT encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab: u64,
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
    pub intermediate: u64,
    pub max_positions: u64,
    pub type_vocab: u64,
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// all-MiniLM-L6-v2 (its `config.json`).
    pub fn minilm_l6() -> Self {
        BertConfig {
            vocab: 30522,
            hidden: 384,
            layers: 6,
            heads: 12,
            intermediate: 1536,
            max_positions: 512,
            type_vocab: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// A tiny random BERT of the same structure, for tests that must not download the model.
    pub fn tiny() -> Self {
        BertConfig {
            vocab: 97,
            hidden: 24,
            layers: 2,
            heads: 4,
            intermediate: 40,
            max_positions: 64,
            type_vocab: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// Every tensor name and shape of this encoder's safetensors file (as the Hugging Face
    /// checkpoint writes it), including the tensors the graph does not use.
    pub fn checkpoint_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (h, i) = (self.hidden, self.intermediate);
        let mut t: Vec<(String, Vec<u64>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![self.vocab, h]),
            ("embeddings.position_embeddings.weight".into(), vec![self.max_positions, h]),
            ("embeddings.token_type_embeddings.weight".into(), vec![self.type_vocab, h]),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
            ("embeddings.position_ids".into(), vec![1, self.max_positions]),
        ];
        for l in 0..self.layers {
            let p = format!("encoder.layer.{l}");
            for name in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
            {
                t.push((format!("{p}.{name}.weight"), vec![h, h]));
                t.push((format!("{p}.{name}.bias"), vec![h]));
            }
            t.push((format!("{p}.intermediate.dense.weight"), vec![i, h]));
            t.push((format!("{p}.intermediate.dense.bias"), vec![i]));
            t.push((format!("{p}.output.dense.weight"), vec![h, i]));
            t.push((format!("{p}.output.dense.bias"), vec![h]));
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                t.push((format!("{p}.{ln}.weight"), vec![h]));
                t.push((format!("{p}.{ln}.bias"), vec![h]));
            }
        }
        t.push(("pooler.dense.weight".into(), vec![h, h]));
        t.push(("pooler.dense.bias".into(), vec![h]));
        t
    }
}

/// Tensors of the checkpoint that no parameter takes.
pub const UNUSED_TENSORS: [&str; 3] = ["embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"];

/// The scope the backbone is built in, under the model's root.
pub const SCOPE: &str = "calm/backbone";

/// The checkpoint tensor name of a backbone parameter (`None` for parameters outside it).
pub fn weight_key(param_name: &str) -> Option<String> {
    param_name.strip_prefix(SCOPE)?.strip_prefix('/').map(|rest| rest.replace('/', "."))
}

fn embedding(b: &mut GraphBuilder, name: &str, rows: u64, width: u64) -> BuildResult<ValueId> {
    b.scoped(name, |b| {
        b.param("weight", vec![Dim::Fixed(rows), Dim::Fixed(width)], Init::Normal { mean: 0.0, std: 0.02 })
    })
}

/// The encoder's last hidden states `[B, T, hidden]` for token ids `[B, T]` (i32) and a mask
/// `[B, T]` (f32, 1 for real tokens), built in the current scope. Token types are all 0, as
/// sentence-transformers passes them for single sentences.
pub fn encoder(b: &mut GraphBuilder, cfg: &BertConfig, input_ids: ValueId, mask: ValueId) -> BuildResult<ValueId> {
    let tokens: Dim = b.shape_of(input_ids)[1].clone();
    let x = b.scoped("embeddings", |b| {
        let word_table = embedding(b, "word_embeddings", cfg.vocab, cfg.hidden)?;
        let pos_table = embedding(b, "position_embeddings", cfg.max_positions, cfg.hidden)?;
        let type_table = embedding(b, "token_type_embeddings", cfg.type_vocab, cfg.hidden)?;
        let words = b.gather(word_table, input_ids, 0)?;
        let positions = b.iota(vec![tokens.clone()], 0)?;
        let pos = b.gather(pos_table, positions, 0)?;
        let type0 = b.constant(0.0, DType::I32)?;
        let token_type = b.gather(type_table, type0, 0)?;
        let x = b.add(words, pos)?;
        let x = b.add(x, token_type)?;
        nn::layer_norm(b, "LayerNorm", x, cfg.layer_norm_eps)
    })?;
    // BERT's additive mask value: finite, so a fully padded row stays finite.
    let bias = nn::key_mask_bias(b, mask, -10000.0)?;
    b.scoped("encoder", |b| {
        b.scoped("layer", |b| {
            let mut x = x;
            for l in 0..cfg.layers {
                x = b.scoped(&l.to_string(), |b| layer(b, cfg, x, bias))?;
            }
            Ok(x)
        })
    })
}

/// One post-LN BERT layer: `x = LN(x + Attn(x)); x = LN(x + W2 GELU(W1 x))`.
fn layer(b: &mut GraphBuilder, cfg: &BertConfig, x: ValueId, bias: ValueId) -> BuildResult<ValueId> {
    let (h, eps) = (cfg.hidden, cfg.layer_norm_eps);
    let x = b.scoped("attention", |b| {
        let ctx = b.scoped("self", |b| {
            let q = nn::linear(b, "query", x, h)?;
            let k = nn::linear(b, "key", x, h)?;
            let v = nn::linear(b, "value", x, h)?;
            nn::attention(b, q, k, v, cfg.heads, Some(bias))
        })?;
        b.scoped("output", |b| {
            let a = nn::linear(b, "dense", ctx, h)?;
            let r = b.add(x, a)?;
            nn::layer_norm(b, "LayerNorm", r, eps)
        })
    })?;
    let inter = b.scoped("intermediate", |b| {
        let y = nn::linear(b, "dense", x, cfg.intermediate)?;
        b.gelu(y)
    })?;
    b.scoped("output", |b| {
        let y = nn::linear(b, "dense", inter, h)?;
        let r = b.add(x, y)?;
        nn::layer_norm(b, "LayerNorm", r, eps)
    })
}
