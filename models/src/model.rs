//! The CALM graph: inputs, backbone, the six stages and, for training, the losses.
//!
//! Named inputs: `states: f32[batch,tokens,d]` (or `input_ids: i32[batch,tokens]` with the
//! MiniLM backbone), `mask: f32[batch,tokens]`, `culture: i32[batch]`; for training also
//! `labels: i32[batch]`, `temperature: f32[]` (τ_g of the step), `seed` and `offset` (`u32[]`,
//! the keys of the random numbers: Gumbel noise and dropout).
//!
//! Named outputs, inference: `logits [batch,Y]`, `identity [batch,m]` (the identity state `I`),
//! `assign_e`, `assign_l` (`[batch,tokens,K]`, the cluster assignments).
//! Training: `loss` and each term (`loss_ce`, `loss_ce_rounds`, `loss_con`, `loss_lb`,
//! `loss_orth`, `loss_ref`; the rounds' terms only when R ≥ 1), the load-balance statistics
//! `lb_fraction` and `lb_prob` (`[D,E]`), and `logits`.

use calm_ir::nn;
use calm_ir::{BuildResult, DType, Graph, GraphBuilder, ValueId};

use crate::config::{Backbone, CalmConfig};
use crate::{contrastive, disentangle, fusion, identity_pool, minilm, moe, reflection, ModelError};

/// Which graph to build.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Inference,
    Training,
}

/// Builds and verifies the CALM graph for `cfg`.
pub fn build(cfg: &CalmConfig, mode: Mode) -> Result<Graph, ModelError> {
    cfg.validate()?;
    let mut b = GraphBuilder::new("calm");
    build_into(&mut b, cfg, mode == Mode::Training)?;
    Ok(b.finish()?)
}

struct Inputs {
    states: ValueId,
    mask: ValueId,
    culture: ValueId,
    labels: Option<ValueId>,
    temperature: ValueId,
}

fn inputs(b: &mut GraphBuilder, cfg: &CalmConfig, training: bool) -> BuildResult<Inputs> {
    b.scoped("inputs", |b| {
        let (batch, tokens) = ("batch", "tokens");
        let states = match cfg.backbone {
            Backbone::MiniLmL6 => b.input("input_ids", DType::I32, calm_ir::shape![batch, tokens])?,
            Backbone::States | Backbone::Qwen3_32bStates => {
                b.input("states", DType::F32, calm_ir::shape![batch, tokens, cfg.backbone_width()])?
            }
        };
        let mask = b.input("mask", DType::F32, calm_ir::shape![batch, tokens])?;
        let culture = b.input("culture", DType::I32, calm_ir::shape![batch])?;
        let labels = if training { Some(b.input("labels", DType::I32, calm_ir::shape![batch])?) } else { None };
        let temperature = if training {
            b.input("temperature", DType::F32, Vec::new())?
        } else {
            b.scalar(cfg.gumbel.inference_temperature)?
        };
        if training || cfg.gumbel.noise_at_inference {
            b.enable_randomness()?;
        }
        b.set_training(training);
        Ok(Inputs { states, mask, culture, labels, temperature })
    })
}

fn build_into(b: &mut GraphBuilder, cfg: &CalmConfig, training: bool) -> BuildResult<()> {
    let inp = inputs(b, cfg, training)?;
    let states = match cfg.backbone {
        Backbone::MiniLmL6 => {
            // The spec freezes the backbone: its parameters are loaded, never trained.
            b.scoped("backbone", |b| {
                b.frozen(|b| minilm::encoder(b, &minilm::BertConfig::minilm_l6(), inp.states, inp.mask))
            })?
        }
        Backbone::States | Backbone::Qwen3_32bStates => inp.states,
    };
    let streams = disentangle::build(b, cfg, states, inp.mask, inp.culture, training)?;
    let noise = training || cfg.gumbel.noise_at_inference;
    let pooled = identity_pool::build(b, cfg, streams.e, streams.l, inp.mask, inp.temperature, noise)?;
    let mixture = moe::build(b, cfg, pooled.z, training)?;
    let identity = fusion::build(b, cfg, states, inp.mask, mixture.m)?;
    let reflected = reflection::build(b, cfg, streams.s_bar, identity, training)?;
    b.output("logits", reflected.logits);
    let Some(labels) = inp.labels else {
        b.output("identity", identity);
        b.output("assign_e", pooled.assign_e);
        b.output("assign_l", pooled.assign_l);
        return Ok(());
    };
    let (e_bar, l_bar) = (streams.e_bar.expect("training"), streams.l_bar.expect("training"));
    let con = contrastive::build(b, cfg, e_bar, l_bar, inp.culture)?;
    let balance = mixture.balance.expect("training graphs balance the experts");
    b.output("lb_fraction", balance.fraction);
    b.output("lb_prob", balance.prob);
    b.scoped("loss", |b| {
        let ce = b.scoped("ce", |b| nn::cross_entropy(b, reflected.logits, labels))?;
        let ce_rounds = if reflected.round_logits.is_empty() {
            None
        } else {
            Some(b.scoped("ce_rounds", |b| {
                let mut sum = None;
                for &o in &reflected.round_logits {
                    let ce = nn::cross_entropy(b, o, labels)?;
                    sum = Some(match sum {
                        Some(s) => b.add(s, ce)?,
                        None => ce,
                    });
                }
                let inv = b.scalar(1.0 / reflected.round_logits.len() as f64)?;
                b.mul(sum.expect("at least one round"), inv)
            })?)
        };
        let w = &cfg.loss_weights;
        let terms: Vec<(&str, Option<ValueId>, f64)> = vec![
            ("loss_ce", Some(ce), 1.0),
            ("loss_ce_rounds", ce_rounds, 1.0),
            ("loss_con", Some(con), w.contrastive),
            ("loss_lb", Some(balance.loss), w.load_balance),
            ("loss_orth", streams.orth, w.orthogonality),
            ("loss_ref", reflected.ref_loss, w.reflection),
        ];
        // loss = Σ λ_i · term_i: every term weighted by a `mul` and added into one chain, so an
        // ablation removes a term by bypassing its `add`.
        let mut total: Option<ValueId> = None;
        for (name, term, weight) in terms {
            let Some(term) = term else { continue };
            b.output(name, term);
            let lambda = b.scalar(weight)?;
            let weighted = b.mul(lambda, term)?;
            total = Some(match total {
                Some(t) => b.add(t, weighted)?,
                None => weighted,
            });
        }
        b.output("loss", total.expect("the task loss is always there"));
        Ok(())
    })
}
