//! The CALM graph against the spec: output shapes, parameter counts per stage (formulas from
//! `calm-spec.md` written out here), and the MiniLM backbone's parameter names.

use std::collections::BTreeMap;

use calm_ir::cost::stats_by_scope;
use calm_ir::{Bindings, Graph};
use calm_models::minilm::{self, BertConfig};
use calm_models::{build, Backbone, CalmConfig, Mode};

fn outputs(g: &Graph) -> BTreeMap<String, String> {
    g.outputs.iter().map(|o| (o.name.clone(), g.value_type(o.value).to_string())).collect()
}

fn expected_outputs(c: &CalmConfig, mode: Mode) -> BTreeMap<String, String> {
    let (m, k, y, d, e) = (c.width, c.clusters, c.classes, c.dimensions, c.experts);
    let mut want: Vec<(&str, String)> = vec![("logits", format!("f32[batch,{y}]"))];
    match mode {
        Mode::Inference => {
            want.push(("identity", format!("f32[batch,{m}]")));
            want.push(("assign_e", format!("f32[batch,tokens,{k}]")));
            want.push(("assign_l", format!("f32[batch,tokens,{k}]")));
        }
        Mode::Training => {
            want.push(("lb_fraction", format!("f32[{d},{e}]")));
            want.push(("lb_prob", format!("f32[{d},{e}]")));
            let mut losses = vec!["loss", "loss_ce", "loss_con", "loss_lb", "loss_orth"];
            if c.reflective_rounds > 0 {
                losses.extend(["loss_ce_rounds", "loss_ref"]);
            }
            want.extend(losses.into_iter().map(|l| (l, "f32[]".to_string())));
        }
    }
    want.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Small configs with odd sizes: K = 3, E = 3, k = 1, R = 0, 1, 3.
fn odd_configs() -> Vec<CalmConfig> {
    let base = CalmConfig::preset("tiny").unwrap();
    let mut out = Vec::new();
    for rounds in [0, 1, 3] {
        out.push(CalmConfig {
            clusters: 3,
            experts: 3,
            top_k: 1,
            reflective_rounds: rounds,
            dimensions: 3,
            ..base.clone()
        });
    }
    out.push(CalmConfig { clusters: 1, experts: 1, dimensions: 1, cultures: 1, ..base.clone() });
    out.push(CalmConfig { classes: 7, cultures: 4, top_k: 3, ..base });
    out
}

#[test]
fn every_named_output_has_its_shape() {
    let mut configs = vec![CalmConfig::preset("paper").unwrap(), CalmConfig::preset("tiny").unwrap()];
    configs.extend(odd_configs());
    for c in &configs {
        for mode in [Mode::Inference, Mode::Training] {
            let g = build(c, mode).unwrap_or_else(|e| panic!("{c:?} {mode:?}: {e}"));
            assert_eq!(outputs(&g), expected_outputs(c, mode), "{mode:?} of {c:?}");
        }
    }
}

#[test]
fn inputs_are_named_and_typed() {
    let c = CalmConfig::preset("paper").unwrap();
    let g = build(&c, Mode::Training).unwrap();
    let inputs: Vec<String> = g.inputs().map(|(_, n, t)| format!("{n}:{t}")).collect();
    assert_eq!(
        inputs,
        [
            "states:f32[batch,tokens,384]",
            "mask:f32[batch,tokens]",
            "culture:i32[batch]",
            "labels:i32[batch]",
            "temperature:f32[]",
            "seed:u32[]",
            "offset:u32[]"
        ]
    );
    let g = build(&c, Mode::Inference).unwrap();
    assert_eq!(g.inputs().count(), 3, "inference takes states, mask and culture only");
    let noisy = CalmConfig {
        gumbel: calm_models::config::GumbelConfig { noise_at_inference: true, ..Default::default() },
        ..c.clone()
    };
    assert!(build(&noisy, Mode::Inference).unwrap().inputs().any(|(_, n, _)| n == "seed"));
    let qwen = CalmConfig { backbone: Backbone::Qwen3_32bStates, ..c.clone() };
    assert_eq!(build(&qwen, Mode::Inference).unwrap().inputs().next().unwrap().2.to_string(), "f32[batch,tokens,5120]");
    let minilm = CalmConfig { backbone: Backbone::MiniLmL6, ..c };
    let g = build(&minilm, Mode::Training).unwrap();
    assert_eq!(g.inputs().next().unwrap().2.to_string(), "i32[batch,tokens]");
    // The backbone is frozen (spec: "The backbone is frozen"); CALM's own parameters are not.
    for n in g.nodes.values() {
        if let calm_ir::Op::Param { name, frozen, .. } = &n.op {
            assert_eq!(*frozen, name.starts_with("calm/backbone/"), "{name}");
        }
    }
}

// The spec's layers: Linear(a, b) has a·b + b parameters; MLP(a→b→c) two of them; LayerNorm 2n.
fn lin(a: u64, b: u64) -> u64 {
    a * b + b
}
fn mlp(a: u64, b: u64, c: u64) -> u64 {
    lin(a, b) + lin(b, c)
}
fn ln(n: u64) -> u64 {
    2 * n
}

/// Parameters per stage, from `calm-spec.md`.
fn spec_counts(c: &CalmConfig, training: bool) -> BTreeMap<String, u64> {
    let (d, m, k, y, cu) = (c.backbone_width(), c.width, c.clusters, c.classes, c.cultures);
    let (dims, experts, ffn) = (c.dimensions, c.experts, c.expert_ffn);
    let attention = 4 * lin(m, m);
    let mut counts = BTreeMap::new();
    // Stage 1: S, E, L = MLP(d→m→m) each; U ∈ R^{C×m}.
    counts.insert("calm/disentangle".to_string(), 3 * mlp(d, m, m) + cu * m);
    // Stage 2: P_e, P_l = MLP(m→m→128).
    if training {
        counts.insert("calm/contrastive".to_string(), 2 * mlp(m, m, c.contrastive_dim));
    }
    // Stage 3: two cluster heads MLP(m→256→K); cross-attention W_q, W_k, W_v, W_o; LayerNorm.
    counts.insert("calm/identity_pool".to_string(), 2 * mlp(m, c.cluster_hidden, k) + attention + ln(m));
    // Stage 4: per dimension a router (m→E) and E experts of pre-LN layers (2 LN, attention,
    // FFN m→ffn→m); the mix W_m (D·m→m).
    let layer = 2 * ln(m) + attention + lin(m, ffn) + lin(ffn, m);
    counts.insert(
        "calm/moe".to_string(),
        dims * (lin(m, experts) + experts * c.expert_layers * layer) + lin(dims * m, m),
    );
    // Stage 5: W_h (d→m), W_γ (2m→m), LayerNorm.
    counts.insert("calm/fusion".to_string(), lin(d, m) + lin(2 * m, m) + ln(m));
    // Stage 6: W_p (m→m), Head MLP(2m→m→Y); with rounds also W_y (Y→m), MLP_cal(2m→m→m), LayerNorm.
    let calibration = if c.reflective_rounds > 0 { lin(y, m) + mlp(2 * m, m, m) + ln(m) } else { 0 };
    counts.insert("calm/reflection".to_string(), lin(m, m) + mlp(2 * m, m, y) + calibration);
    counts
}

fn graph_counts(g: &Graph) -> BTreeMap<String, u64> {
    let rows = stats_by_scope(g, &Bindings::new().with("batch", 2).with("tokens", 3), 2).unwrap();
    rows.into_iter().filter(|r| r.level == 2 && r.params > 0).map(|r| (r.scope, r.params)).collect()
}

#[test]
fn parameter_counts_per_stage_match_the_spec() {
    let mut configs = vec![CalmConfig::preset("paper").unwrap(), CalmConfig::preset("tiny").unwrap()];
    configs.extend(odd_configs());
    for c in &configs {
        for (mode, training) in [(Mode::Inference, false), (Mode::Training, true)] {
            let g = build(c, mode).unwrap();
            assert_eq!(graph_counts(&g), spec_counts(c, training), "{mode:?} of {c:?}");
        }
    }
    // The paper preset's totals, for the record (states backbone, d = 384).
    let paper = CalmConfig::preset("paper").unwrap();
    assert_eq!(build(&paper, Mode::Inference).unwrap().param_count(), spec_counts(&paper, false).values().sum::<u64>());
}

/// BERT's parameters: embeddings, and per layer attention, its LayerNorm, the FFN and its LayerNorm.
fn bert_params(b: &BertConfig) -> u64 {
    let h = b.hidden;
    let embeddings = (b.vocab + b.max_positions + b.type_vocab) * h + ln(h);
    embeddings + b.layers * (4 * lin(h, h) + ln(h) + lin(h, b.intermediate) + lin(b.intermediate, h) + ln(h))
}

#[test]
fn minilm_backbone_maps_one_to_one_onto_the_checkpoint() {
    let c = CalmConfig { backbone: Backbone::MiniLmL6, ..CalmConfig::preset("paper").unwrap() };
    let g = build(&c, Mode::Inference).unwrap();
    let bert = BertConfig::minilm_l6();
    // The header of all-MiniLM-L6-v2's model.safetensors (names and shapes, as it ships).
    let header: BTreeMap<String, Vec<u64>> = bert.checkpoint_tensors().into_iter().collect();
    assert_eq!(header.len(), 5 + 1 + 6 * 16 + 2);
    assert_eq!(header["encoder.layer.5.intermediate.dense.weight"], [1536, 384]);
    let mut mapped = BTreeMap::new();
    for (_, name, ty) in g.params() {
        let Some(key) = minilm::weight_key(name) else { continue };
        let shape: Vec<u64> = ty.shape.iter().map(|d| d.fixed().unwrap()).collect();
        assert_eq!(header.get(&key), Some(&shape), "{name} -> {key}");
        assert!(mapped.insert(key, name.to_string()).is_none(), "two parameters map to one tensor");
    }
    let unmapped: Vec<&str> = header.keys().map(String::as_str).filter(|k| !mapped.contains_key(*k)).collect();
    assert_eq!(unmapped, {
        let mut u = minilm::UNUSED_TENSORS.to_vec();
        u.sort();
        u
    });
    let backbone: u64 = g
        .params()
        .filter(|(_, n, _)| minilm::weight_key(n).is_some())
        .map(|(_, _, t)| t.shape.iter().map(|d| d.fixed().unwrap()).product::<u64>())
        .sum();
    assert_eq!(backbone, bert_params(&bert));
    assert_eq!(backbone, 22_565_376, "all-MiniLM-L6-v2 without its pooler");
    // The CALM head on top has the spec's counts for d = 384.
    let head = g.param_count() - backbone;
    assert_eq!(head, spec_counts(&c, false).values().sum::<u64>());
}

#[test]
fn a_tiny_bert_of_the_same_structure_builds() {
    let tiny = BertConfig::tiny();
    let mut b = calm_ir::GraphBuilder::new("calm");
    let ids = b.input("input_ids", calm_ir::DType::I32, calm_ir::shape!["batch", "tokens"]).unwrap();
    let mask = b.input("mask", calm_ir::DType::F32, calm_ir::shape!["batch", "tokens"]).unwrap();
    let h = b.scoped("backbone", |b| minilm::encoder(b, &tiny, ids, mask)).unwrap();
    assert_eq!(b.type_of(h).to_string(), "f32[batch,tokens,24]");
    b.output("h", h);
    let g = b.finish().unwrap();
    assert_eq!(g.param_count(), bert_params(&tiny));
    let keys: Vec<String> = g.params().filter_map(|(_, n, _)| minilm::weight_key(n)).collect();
    let header: Vec<String> = tiny
        .checkpoint_tensors()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !minilm::UNUSED_TENSORS.contains(&k.as_str()))
        .collect();
    let (mut a, mut b) = (keys, header);
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn invalid_configs_are_refused_before_building() {
    let c = CalmConfig { top_k: 9, ..CalmConfig::preset("paper").unwrap() };
    let e = build(&c, Mode::Inference).unwrap_err();
    assert!(e.to_string().contains("top_k"), "{e}");
}
