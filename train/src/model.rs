//! What is trained: CALM (a config and named ablations) or one of the two baselines, as the
//! training and inference graphs the trainer and evaluator run.
//!
//! Baselines read the same cached states as CALM: the masked mean of the states concatenated
//! with the one-hot culture (so they can give one post different labels for different
//! countries, as CALM can), then a linear layer (`linear`) or the spec's `MLP(d+C→512→Y)`
//! (`mlp`). Their inputs and outputs are named as CALM's, so everything else is shared.

use calm_ir::{nn, BuildResult, DType, Graph, GraphBuilder};
use calm_models::{CalmConfig, Mode};
use calm_passes::{ablate_all, Ablation};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Which model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Calm,
    /// Linear probe on mean-pooled states and the one-hot culture.
    Linear,
    /// Two-layer MLP on the same features.
    Mlp,
}

/// A model to train: its kind, the CALM config (sizes: `states_width`, `cultures`, `classes`,
/// dropout and the rest), and for CALM the ablations applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub kind: ModelKind,
    pub config: CalmConfig,
    /// Ablation names, in order (CALM only).
    pub variants: Vec<String>,
}

impl ModelSpec {
    /// Parses a study variant: `full`, an ablation name (or several joined by `+`), `linear` or
    /// `mlp`.
    pub fn variant(name: &str, config: &CalmConfig) -> Result<Self, TrainError> {
        let (kind, variants) = match name {
            "full" => (ModelKind::Calm, Vec::new()),
            "linear" => (ModelKind::Linear, Vec::new()),
            "mlp" => (ModelKind::Mlp, Vec::new()),
            list => {
                let parsed = Ablation::parse_list(&list.replace('+', ","))?;
                (ModelKind::Calm, parsed.iter().map(|a| a.name().to_string()).collect())
            }
        };
        Ok(ModelSpec { kind, config: config.clone(), variants })
    }

    /// A short name: `full`, `no-moe`, `linear`, ...
    pub fn name(&self) -> String {
        match self.kind {
            ModelKind::Calm if self.variants.is_empty() => "full".into(),
            ModelKind::Calm => self.variants.join("+"),
            ModelKind::Linear => "linear".into(),
            ModelKind::Mlp => "mlp".into(),
        }
    }

    fn ablations(&self) -> Result<Vec<Ablation>, TrainError> {
        Ok(Ablation::parse_list(&self.variants.join(","))?)
    }

    /// The training graph: `loss` (and CALM's terms) from states, mask, culture and labels.
    pub fn training_graph(&self) -> Result<Graph, TrainError> {
        self.graph(Mode::Training)
    }

    /// The inference graph: `logits` from states, mask and culture.
    pub fn inference_graph(&self) -> Result<Graph, TrainError> {
        self.graph(Mode::Inference)
    }

    /// `g` as the reference executor runs it to train and score: with
    /// [`calm_passes::compile::reference_passes`], so that only routed experts are computed.
    /// Same parameters, results and gradients as `g`.
    pub fn for_reference(g: &Graph) -> Result<Graph, TrainError> {
        calm_passes::compile::for_reference(g).map_err(|e| TrainError::Compile(e.into()))
    }

    fn graph(&self, mode: Mode) -> Result<Graph, TrainError> {
        match self.kind {
            ModelKind::Calm => {
                let mut g = calm_models::build(&self.config, mode)?;
                let ablations: Vec<Ablation> =
                    self.ablations()?.into_iter().filter(|a| mode == Mode::Training || !a.training_only()).collect();
                ablate_all(&mut g, &ablations)?;
                Ok(g)
            }
            ModelKind::Linear | ModelKind::Mlp => {
                let mut b = GraphBuilder::new("baseline");
                baseline(&mut b, &self.config, self.kind == ModelKind::Mlp, mode == Mode::Training)
                    .map_err(|e| TrainError::Model(e.into()))?;
                b.finish().map_err(|e| TrainError::Model(e.into()))
            }
        }
    }
}

fn baseline(b: &mut GraphBuilder, cfg: &CalmConfig, mlp: bool, training: bool) -> BuildResult<()> {
    let (states, mask, culture, labels) = b.scoped("inputs", |b| {
        let states = b.input("states", DType::F32, calm_ir::shape!["batch", "tokens", cfg.backbone_width()])?;
        let mask = b.input("mask", DType::F32, calm_ir::shape!["batch", "tokens"])?;
        let culture = b.input("culture", DType::I32, calm_ir::shape!["batch"])?;
        let labels = if training { Some(b.input("labels", DType::I32, calm_ir::shape!["batch"])?) } else { None };
        if training && mlp {
            b.enable_randomness()?;
        }
        b.set_training(training);
        Ok((states, mask, culture, labels))
    })?;
    let pooled = nn::masked_mean(b, states, mask)?;
    let one_hot = b.one_hot(culture, cfg.cultures, DType::F32)?;
    let features = b.concat(&[pooled, one_hot], -1)?;
    let logits = if mlp {
        nn::mlp(b, "mlp", features, cfg.width, cfg.classes, cfg.dropout)?
    } else {
        nn::linear(b, "linear", features, cfg.classes)?
    };
    b.output("logits", logits);
    if let Some(labels) = labels {
        let loss = b.scoped("loss", |b| nn::cross_entropy(b, logits, labels))?;
        b.output("loss_ce", loss);
        b.output("loss", loss);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use burn::backend::flex::FlexDevice;
    use burn::tensor::FloatDType;
    use calm_ir::fused::FusedOp;
    use calm_ir::{Bindings, Op};
    use calm_runtime::params::ParamStore;
    use calm_runtime::reference::gradients;

    use super::*;

    /// The graph the trainer runs (routed experts only) against the training graph as built
    /// (every expert on every unit): same loss terms and gradients, on random inputs with odd
    /// sizes, for the full model and an ablation that keeps the experts.
    #[test]
    fn routed_experts_give_the_dense_mixture_s_loss_and_gradients() {
        let config = CalmConfig::preset("tiny").unwrap();
        for variant in ["full", "no-contrastive"] {
            let spec = ModelSpec::variant(variant, &config).unwrap();
            let dense = spec.training_graph().unwrap();
            let routed = ModelSpec::for_reference(&dense).unwrap();
            let mixtures =
                routed.nodes.values().filter(|n| matches!(n.op, Op::Fused(FusedOp::ExpertMixture { .. }))).count();
            assert!(mixtures > 0, "{variant}: the expert mixture is fused");
            let params = ParamStore::init(&dense, 5);
            let bindings = Bindings::new().with("batch", 7).with("tokens", 9);
            let inputs = calm_runtime::inputs::random_inputs(&dense, &bindings, 11).unwrap();
            let run = |g: &Graph| {
                gradients::<burn::backend::flex::Flex>(FlexDevice, FloatDType::F64, g, &params, &inputs, "loss", false)
                    .unwrap()
            };
            let (want, got) = (run(&dense), run(&routed));
            assert!((want.loss - got.loss).abs() <= 1e-9 * want.loss.abs().max(1.0), "{variant}: loss");
            assert_eq!(want.grads.len(), got.grads.len());
            for (name, w) in &want.grads {
                let (err, _) = calm_runtime::host::max_relative_error(w, &got.grads[name], 1e-6);
                assert!(err < 1e-9, "{variant}: gradient of `{name}` differs by {err}");
            }
            // The mixture reads the joined weights as parts; where a joined value is read by
            // anything else (here: made an output), it reads the whole and slices it.
            let mut whole = routed.clone();
            let joins: Vec<_> = whole
                .nodes
                .values()
                .filter(|n| matches!(n.op, Op::Concat { axis: 0 }))
                .filter(|n| n.args.iter().all(|&a| matches!(whole.nodes[whole.producer(a)].op, Op::Param { .. })))
                .map(|n| n.results[0])
                .collect();
            assert!(!joins.is_empty(), "{variant}: fuse_experts joins the experts' weights");
            for (i, v) in joins.into_iter().enumerate() {
                whole.set_output(&format!("joined{i}"), v);
            }
            let sliced = run(&whole);
            assert!((want.loss - sliced.loss).abs() <= 1e-9 * want.loss.abs().max(1.0), "{variant}: loss, sliced");
            for (name, w) in &want.grads {
                let (err, _) = calm_runtime::host::max_relative_error(w, &sliced.grads[name], 1e-6);
                assert!(err < 1e-9, "{variant}: gradient of `{name}` through slices differs by {err}");
            }
        }
    }
}
