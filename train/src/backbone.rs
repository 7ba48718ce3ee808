//! The frozen backbone: all-MiniLM-L6-v2 (or a tiny random BERT of the same structure for
//! tests), its WordPiece tokenizer, and its last hidden states for a dataset's texts, computed
//! once and cached on disk.
//!
//! The encoder is the `minilm-l6` graph of `calm-models` run on the reference executor; its
//! weights load by name from the checkpoint `scripts/fetch-minilm` unpacks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::FloatDType;
use calm_ir::{DType, Graph, GraphBuilder};
use calm_models::minilm::{self, BertConfig};
use calm_runtime::host::{HostData, HostTensor};
use calm_runtime::params::ParamStore;
use calm_runtime::reference::Reference;
use calm_runtime::safetensors;
use sha2::{Digest, Sha256};

use crate::backend::Backend;
use crate::on_backend;
use crate::progress::Progress;
use crate::TrainError;

/// Texts encoded per forward of the encoder.
const ENCODE_BATCH: usize = 32;

/// Where `scripts/fetch-minilm` puts the model: `$CALM_HOME/minilm-l6`.
pub fn minilm_dir() -> PathBuf {
    calm_runtime::profile::peaks::calm_home().join("minilm-l6")
}

/// A BERT encoder with its weights and tokenizer.
pub struct Encoder {
    pub bert: BertConfig,
    graph: Graph,
    params: ParamStore,
    tokenizer: tokenizers::Tokenizer,
    /// Where the tokenizer came from, for errors.
    tokenizer_path: PathBuf,
    /// Identifies the weights and tokenizer (a hash of their files); part of cache keys.
    pub fingerprint: String,
    /// Where texts are encoded (Flex unless [`on`](Self::on) says otherwise).
    backend: Backend,
}

/// The encoder alone as a graph: `input_ids: i32[batch,tokens]` and `mask: f32[batch,tokens]`
/// in, `states: f32[batch,tokens,hidden]` out. Parameters are named as in the CALM graph
/// (`calm/backbone/...`), so [`minilm::weight_key`] maps them onto the checkpoint.
pub fn encoder_graph(bert: &BertConfig) -> Result<Graph, TrainError> {
    let mut b = GraphBuilder::new("calm");
    let build = |b: &mut GraphBuilder| -> calm_ir::BuildResult<()> {
        let ids = b.input("input_ids", DType::I32, calm_ir::shape!["batch", "tokens"])?;
        let mask = b.input("mask", DType::F32, calm_ir::shape!["batch", "tokens"])?;
        let states = b.scoped("backbone", |b| minilm::encoder(b, bert, ids, mask))?;
        b.output("states", states);
        Ok(())
    };
    build(&mut b).map_err(|e| TrainError::Model(e.into()))?;
    b.finish().map_err(|e| TrainError::Model(e.into()))
}

fn hash_file(h: &mut Sha256, path: &Path) -> Result<(), TrainError> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(&bytes);
    Ok(())
}

impl Encoder {
    /// all-MiniLM-L6-v2 from `dir` (`model.safetensors`, `tokenizer.json`), as
    /// `scripts/fetch-minilm` leaves it.
    pub fn minilm(dir: &Path) -> Result<Self, TrainError> {
        let (model, tok) = (dir.join("model.safetensors"), dir.join("tokenizer.json"));
        for f in [&model, &tok] {
            if !f.is_file() {
                return Err(TrainError::BackboneMissing { path: f.clone() });
            }
        }
        let bert = BertConfig::minilm_l6();
        let graph = encoder_graph(&bert)?;
        let file = safetensors::read(&model)?;
        let tensors: BTreeMap<String, HostTensor> = graph
            .params()
            .filter_map(|(_, name, _)| {
                let key = minilm::weight_key(name)?;
                Some((name.to_string(), file.get(&key)?.clone()))
            })
            .collect();
        let params = ParamStore::from_tensors(&graph, &model, tensors)?;
        let tokenizer = tokenizers::Tokenizer::from_file(&tok)
            .map_err(|e| TrainError::Tokenizer { path: tok.clone(), reason: e.to_string() })?;
        let mut h = Sha256::new();
        hash_file(&mut h, &model)?;
        hash_file(&mut h, &tok)?;
        let fingerprint = format!("minilm-l6:{}", hex(&h.finalize()[..12]));
        Ok(Encoder { bert, graph, params, tokenizer, tokenizer_path: tok, fingerprint, backend: Backend::Flex })
    }

    /// A tiny BERT with random weights (from `seed`) and a character-level WordPiece tokenizer:
    /// the same code path as MiniLM, for tests and smoke runs that must not download anything.
    pub fn tiny(seed: u64) -> Self {
        let bert = BertConfig::tiny();
        let graph = encoder_graph(&bert).expect("the tiny encoder builds");
        let params = ParamStore::init(&graph, seed);
        let tokenizer: tokenizers::Tokenizer = tiny_tokenizer_json().parse().expect("the tiny tokenizer parses");
        let (tokenizer_path, fingerprint) = (PathBuf::from("<tiny tokenizer>"), format!("tiny-bert:{seed}"));
        Encoder { bert, graph, params, tokenizer, tokenizer_path, fingerprint, backend: Backend::Flex }
    }

    /// The encoder running on `backend` (the training run's: states computed on the GPU when
    /// training runs there). The states, and so their cache, are the same to f32 rounding.
    pub fn on(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// d, the width of the states.
    pub fn width(&self) -> usize {
        self.bert.hidden as usize
    }

    /// Token ids of each text: `[CLS] ... [SEP]`, truncated to `max_tokens` (at most the
    /// encoder's positions).
    pub fn tokenize(&self, texts: &[String], max_tokens: usize) -> Result<Vec<Vec<u32>>, TrainError> {
        let max_tokens = max_tokens.clamp(2, self.bert.max_positions as usize);
        let mut tok = self.tokenizer.clone();
        tok.with_padding(None);
        tok.with_truncation(Some(tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| TrainError::Tokenizer { path: self.tokenizer_path.clone(), reason: e.to_string() })?;
        texts
            .iter()
            .map(|t| {
                tok.encode(t.as_str(), true)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| TrainError::Tokenizer { path: self.tokenizer_path.clone(), reason: e.to_string() })
            })
            .collect()
    }

    /// The last hidden states of every text, truncated to `max_tokens`. Texts run in batches
    /// of similar length (sorted), each padded to its longest text.
    pub fn encode(&self, texts: &[String], max_tokens: usize, progress: &Progress) -> Result<States, TrainError> {
        let ids = self.tokenize(texts, max_tokens)?;
        let width = self.width();
        let tokens = ids.iter().map(Vec::len).max().unwrap_or(1);
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| (ids[i].len(), i));
        let mut states = States { width, tokens, lengths: ids.iter().map(Vec::len).collect(), data: vec![0.0; 0] };
        states.data = vec![0.0; ids.len() * tokens * width];
        let bar = progress.bar(ids.len() as u64, "encoding texts");
        on_backend!(self.backend, |B, device| {
            // The weights go to the backend once, for every batch.
            let exec = Reference::<B>::new(device, FloatDType::F32);
            let weights = exec.load(&self.graph, &self.params)?;
            for chunk in order.chunks(ENCODE_BATCH) {
                let t = chunk.iter().map(|&i| ids[i].len()).max().expect("chunks are not empty");
                let mut input_ids = vec![0i32; chunk.len() * t];
                let mut mask = vec![0f32; chunk.len() * t];
                for (r, &i) in chunk.iter().enumerate() {
                    for (j, &id) in ids[i].iter().enumerate() {
                        input_ids[r * t + j] = id as i32;
                        mask[r * t + j] = 1.0;
                    }
                }
                let inputs = BTreeMap::from([
                    ("input_ids".to_string(), HostTensor::i32(vec![chunk.len(), t], input_ids)),
                    ("mask".to_string(), HostTensor::f32(vec![chunk.len(), t], mask)),
                ]);
                let out = exec.run_loaded(&self.graph, &weights, &inputs)?;
                let h = out["states"].to_f32().expect("states are floats");
                for (r, &i) in chunk.iter().enumerate() {
                    let n = ids[i].len() * width;
                    let dst = i * tokens * width;
                    states.data[dst..dst + n].copy_from_slice(&h[r * t * width..r * t * width + n]);
                }
                bar.inc(chunk.len() as u64);
            }
        });
        bar.finish_and_clear();
        Ok(states)
    }

    /// Sentence embeddings as sentence-transformers makes them: mean of the states over real
    /// tokens, L2-normalised.
    pub fn embed(&self, texts: &[String], max_tokens: usize) -> Result<Vec<Vec<f32>>, TrainError> {
        let s = self.encode(texts, max_tokens, &Progress::hidden())?;
        Ok((0..texts.len())
            .map(|i| {
                let mut v = vec![0f64; s.width];
                for t in 0..s.lengths[i] {
                    for (acc, &x) in v.iter_mut().zip(s.token(i, t)) {
                        *acc += x as f64;
                    }
                }
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                v.iter().map(|x| (x / norm) as f32).collect()
            })
            .collect())
    }

    /// The states of `texts`, from the cache in `cache_dir` when this encoder already encoded
    /// exactly these texts at this length, else encoded and cached (atomically).
    pub fn cached_states(
        &self,
        texts: &[String],
        max_tokens: usize,
        cache_dir: &Path,
        progress: &Progress,
    ) -> Result<States, TrainError> {
        let mut h = Sha256::new();
        h.update(self.fingerprint.as_bytes());
        h.update((max_tokens as u64).to_le_bytes());
        for t in texts {
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        let path = cache_dir.join(format!("states-{}.safetensors", hex(&h.finalize()[..12])));
        if path.is_file() {
            if let Ok(s) = States::load(&path) {
                if s.lengths.len() == texts.len() && s.width == self.width() {
                    return Ok(s);
                }
            }
            progress.note(&format!("the states cache {} does not read back: encoding again", path.display()));
        }
        let s = self.encode(texts, max_tokens, progress)?;
        std::fs::create_dir_all(cache_dir)
            .map_err(|source| TrainError::Io { path: cache_dir.to_path_buf(), source })?;
        s.save(&path)?;
        Ok(s)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hidden states of a set of texts: `[n, tokens, width]`, each text's real tokens first, zeros
/// after.
#[derive(Clone, Debug, PartialEq)]
pub struct States {
    pub width: usize,
    /// The longest text, in tokens.
    pub tokens: usize,
    /// Real tokens of each text.
    pub lengths: Vec<usize>,
    pub data: Vec<f32>,
}

impl States {
    /// The state of token `t` of text `i`.
    pub fn token(&self, i: usize, t: usize) -> &[f32] {
        let at = (i * self.tokens + t) * self.width;
        &self.data[at..at + self.width]
    }

    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let n = self.lengths.len();
        let tensors = BTreeMap::from([
            ("states".to_string(), HostTensor::f32(vec![n, self.tokens, self.width], self.data.clone())),
            ("lengths".to_string(), HostTensor::i32(vec![n], self.lengths.iter().map(|&l| l as i32).collect())),
        ]);
        Ok(safetensors::write(path, &tensors)?)
    }

    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let mut t = safetensors::read(path)?;
        let bad = |reason: &str| TrainError::Cache { path: path.to_path_buf(), reason: reason.to_string() };
        let (Some(states), Some(lengths)) = (t.remove("states"), t.remove("lengths")) else {
            return Err(bad("needs tensors `states` and `lengths`"));
        };
        let (HostData::F32(data), HostData::I32(lengths)) = (states.data, lengths.data) else {
            return Err(bad("`states` must be f32 and `lengths` i32"));
        };
        let [n, tokens, width] = states.shape[..] else { return Err(bad("`states` must be [n, tokens, width]")) };
        if lengths.len() != n || lengths.iter().any(|&l| l < 1 || l as usize > tokens) {
            return Err(bad("`lengths` disagree with `states`"));
        }
        Ok(States { width, tokens, lengths: lengths.into_iter().map(|l| l as usize).collect(), data })
    }
}

/// A WordPiece tokenizer over characters (ids below [`BertConfig::tiny`]'s vocabulary), in the
/// `tokenizer.json` form of MiniLM's, so the tiny encoder goes through the same tokenizer code.
fn tiny_tokenizer_json() -> String {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"].map(String::from).to_vec();
    for c in ('a'..='z').chain('0'..='9') {
        vocab.push(c.to_string());
        vocab.push(format!("##{c}"));
    }
    vocab.extend([".", ",", "!", "?", "'"].map(String::from));
    debug_assert!(vocab.len() as u64 <= BertConfig::tiny().vocab);
    let ids: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
            "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": ids}
    })
    .to_string()
}
