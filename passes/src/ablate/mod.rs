//! Named ablations of `calm-spec.md` as graph edits.
//!
//! Each ablation rewires the full graph where its module sits (found by scope, checked by
//! shape), then dead-code elimination removes what no output needs any more and the verifier
//! checks the result. Ablations compose; one whose module is already gone is an error that says
//! so. See `docs/passes.md` for what each removes.

mod edits;
pub mod graph_edit;

use calm_ir::{verify, BuildError, Graph, VerifyErrors};
use thiserror::Error;

use crate::dce::dce;
use crate::pipeline::PassError;

/// The named ablations, in the spec's order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ablation {
    NoDisentangle,
    NoContrastive,
    NoGumbel,
    NoIdentityPool,
    NoCrossAttention,
    DenseMoe,
    NoMoe,
    NoFusionGate,
    NoReflection,
}

#[derive(Debug, Error)]
pub enum AblateError {
    #[error("unknown ablation `{0}` (`calm ablations` lists them)")]
    Unknown(String),
    #[error("ablation `{ablation}` does not apply: {reason}")]
    NotApplicable { ablation: &'static str, reason: String },
    #[error("ablation could not add its nodes: {0}")]
    Build(#[from] BuildError),
    #[error(transparent)]
    Pass(#[from] PassError),
    /// The edit left an invalid graph: a bug in the ablation, named here.
    #[error("ablation `{ablation}` left an invalid graph: {errors}")]
    Broken { ablation: &'static str, errors: VerifyErrors },
}

impl AblateError {
    pub(crate) fn not_applicable(ablation: &'static str, reason: String) -> Self {
        AblateError::NotApplicable { ablation, reason }
    }
}

impl Ablation {
    pub const ALL: [Ablation; 9] = [
        Ablation::NoDisentangle,
        Ablation::NoContrastive,
        Ablation::NoGumbel,
        Ablation::NoIdentityPool,
        Ablation::NoCrossAttention,
        Ablation::DenseMoe,
        Ablation::NoMoe,
        Ablation::NoFusionGate,
        Ablation::NoReflection,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Ablation::NoDisentangle => "no-disentangle",
            Ablation::NoContrastive => "no-contrastive",
            Ablation::NoGumbel => "no-gumbel",
            Ablation::NoIdentityPool => "no-identity-pool",
            Ablation::NoCrossAttention => "no-cross-attention",
            Ablation::DenseMoe => "dense-moe",
            Ablation::NoMoe => "no-moe",
            Ablation::NoFusionGate => "no-fusion-gate",
            Ablation::NoReflection => "no-reflection",
        }
    }

    /// One line: what the edit does.
    pub fn description(self) -> &'static str {
        match self {
            Ablation::NoDisentangle => "one MLP feeds S, E and L (stage 1 without separate channels)",
            Ablation::NoContrastive => "drop the contrastive loss L_con and its projection heads (training graphs)",
            Ablation::NoGumbel => "plain softmax cluster assignment: no Gumbel noise, temperature 1",
            Ablation::NoIdentityPool => "Z = mean_t L broadcast over the K slots: no clustering, no cross-attention",
            Ablation::NoCrossAttention => {
                "Z = C_L: latent clusters go to the experts without attending to explicit ones"
            }
            Ablation::DenseMoe => "every expert on every unit with softmax gates (k = E)",
            Ablation::NoMoe => "M = MLP(mean_j Z): no routers, experts or load-balance loss",
            Ablation::NoFusionGate => "I = LayerNorm(h + M): no gate on the mixture's output",
            Ablation::NoReflection => {
                "R = 0: the output head reads the identity state; no reflective rounds or their losses"
            }
        }
    }

    /// True for ablations that change only the training graph.
    pub fn training_only(self) -> bool {
        self == Ablation::NoContrastive
    }

    pub fn parse(name: &str) -> Result<Self, AblateError> {
        Ablation::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| AblateError::Unknown(name.to_string()))
    }

    /// Parses a comma-separated list (`no-moe,no-gumbel`); repeats are refused.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, AblateError> {
        let mut out: Vec<Ablation> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let a = Ablation::parse(name)?;
            if out.contains(&a) {
                return Err(AblateError::not_applicable(a.name(), "it is listed twice".into()));
            }
            out.push(a);
        }
        Ok(out)
    }

    fn edit(self) -> fn(&mut Graph) -> Result<(), AblateError> {
        match self {
            Ablation::NoDisentangle => edits::no_disentangle,
            Ablation::NoContrastive => edits::no_contrastive,
            Ablation::NoGumbel => edits::no_gumbel,
            Ablation::NoIdentityPool => edits::no_identity_pool,
            Ablation::NoCrossAttention => edits::no_cross_attention,
            Ablation::DenseMoe => edits::dense_moe,
            Ablation::NoMoe => edits::no_moe,
            Ablation::NoFusionGate => edits::no_fusion_gate,
            Ablation::NoReflection => edits::no_reflection,
        }
    }
}

/// Applies `ablation` to `g`: the edit, dead-code elimination, verification. On error `g` is
/// left as it was.
pub fn ablate(g: &mut Graph, ablation: Ablation) -> Result<(), AblateError> {
    let mut edited = g.clone();
    (ablation.edit())(&mut edited)?;
    // Unlike a fusion pass, an ablation is no pipeline step: its callers (`calm ablate`, `calm
    // build`, the trainer, tests) take the graph as it is, and the next ablation checks by scope
    // whether its module is still there, which dead leftovers of this one would fake. So it
    // removes what its edit left dead itself.
    dce(&mut edited)?;
    verify(&edited).map_err(|errors| AblateError::Broken { ablation: ablation.name(), errors })?;
    *g = edited;
    Ok(())
}

/// Applies several ablations in order.
pub fn ablate_all(g: &mut Graph, ablations: &[Ablation]) -> Result<(), AblateError> {
    ablations.iter().try_for_each(|&a| ablate(g, a))
}
