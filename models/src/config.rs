//! `CalmConfig`: every size, weight and schedule of CALM, with the spec's defaults.
//!
//! Read from TOML or JSON (`CalmConfig::from_file`); a file names only what it changes, the rest
//! comes from the `paper` preset. Unknown fields and impossible values are errors naming the field.

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where the backbone's hidden states come from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backbone {
    /// Hidden states are a graph input (cached states) of width `states_width`.
    States,
    /// The all-MiniLM-L6-v2 encoder in the graph: token ids in, d = 384.
    #[serde(rename = "minilm-l6")]
    MiniLmL6,
    /// A states input with Qwen3-32B's width, d = 5120 (the paper's scale, without weights).
    #[serde(rename = "qwen3-32b-states")]
    Qwen3_32bStates,
}

impl Backbone {
    pub const NAMES: [&'static str; 3] = ["states", "minilm-l6", "qwen3-32b-states"];

    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        match name {
            "states" => Ok(Backbone::States),
            "minilm-l6" => Ok(Backbone::MiniLmL6),
            "qwen3-32b-states" => Ok(Backbone::Qwen3_32bStates),
            other => Err(ConfigError::Field {
                field: "backbone".into(),
                message: format!("unknown backbone `{other}` (expected one of {})", Backbone::NAMES.join(", ")),
            }),
        }
    }
}

/// Loss weights λ of the training objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossWeights {
    pub contrastive: f64,
    pub load_balance: f64,
    pub orthogonality: f64,
    pub reflection: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights { contrastive: 0.1, load_balance: 0.01, orthogonality: 0.01, reflection: 0.1 }
    }
}

/// The Gumbel-softmax temperature: cosine-decayed from `start` to `end` over training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GumbelConfig {
    pub start: f64,
    pub end: f64,
    /// τ used by the inference graph.
    pub inference_temperature: f64,
    /// Draw Gumbel noise at inference too (then the inference graph takes `seed` and `offset`).
    pub noise_at_inference: bool,
}

impl Default for GumbelConfig {
    fn default() -> Self {
        GumbelConfig { start: 1.0, end: 0.2, inference_temperature: 0.2, noise_at_inference: false }
    }
}

impl GumbelConfig {
    /// `τ(s) = end + (start − end)/2 · (1 + cos(π s / S))`; the spec's `0.2 + 0.4(1 + cos(π s/S))`.
    pub fn temperature(&self, step: u64, total_steps: u64) -> f64 {
        let progress = if total_steps == 0 { 1.0 } else { (step.min(total_steps) as f64) / total_steps as f64 };
        self.end + 0.5 * (self.start - self.end) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Optimiser settings for `calm train`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    pub batch_size: u64,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Share of the steps spent on linear warm-up.
    pub warmup_fraction: f64,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig { batch_size: 64, learning_rate: 3e-5, weight_decay: 0.01, warmup_fraction: 0.1 }
    }
}

/// The most expert layers a config may ask for over all its dimensions and experts
/// (`dimensions × experts × expert_layers`; the paper preset has 32): about 750,000 graph nodes.
pub const MAX_EXPERT_LAYERS: u64 = 1 << 14;

/// Every setting of a CALM model. The defaults are the `paper` preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalmConfig {
    pub backbone: Backbone,
    /// d for the `states` backbone (the others fix it).
    pub states_width: u64,
    /// m, the module width.
    pub width: u64,
    /// K, clusters per cultural stream.
    pub clusters: u64,
    /// Hidden width of the cluster heads.
    pub cluster_hidden: u64,
    /// h, attention heads (cross-attention and experts).
    pub heads: u64,
    /// D, communicative dimensions.
    pub dimensions: u64,
    /// E, experts per dimension.
    pub experts: u64,
    /// k, experts chosen per routed unit.
    pub top_k: u64,
    /// Transformer layers per expert.
    pub expert_layers: u64,
    /// FFN width inside the experts.
    pub expert_ffn: u64,
    /// R, reflective rounds.
    pub reflective_rounds: u64,
    pub dropout: f64,
    /// C, cultural labels.
    pub cultures: u64,
    /// Y, task classes.
    pub classes: u64,
    /// Output width of the contrastive heads.
    pub contrastive_dim: u64,
    /// τ of the supervised NT-Xent loss.
    pub contrastive_temperature: f64,
    /// ε of the cluster pooling denominator.
    pub pool_eps: f64,
    pub layer_norm_eps: f64,
    pub loss_weights: LossWeights,
    pub gumbel: GumbelConfig,
    pub training: TrainingConfig,
}

impl Default for CalmConfig {
    fn default() -> Self {
        CalmConfig {
            backbone: Backbone::States,
            states_width: 384,
            width: 512,
            clusters: 5,
            cluster_hidden: 256,
            heads: 8,
            dimensions: 4,
            experts: 4,
            top_k: 2,
            expert_layers: 2,
            expert_ffn: 2048,
            reflective_rounds: 2,
            dropout: 0.1,
            cultures: 5,
            classes: 2,
            contrastive_dim: 128,
            contrastive_temperature: 0.07,
            pool_eps: 1e-6,
            layer_norm_eps: 1e-5,
            loss_weights: LossWeights::default(),
            gumbel: GumbelConfig::default(),
            training: TrainingConfig::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("config field `{field}`: {message}")]
    Field { field: String, message: String },
    #[error("unknown preset `{0}` (expected one of {presets})", presets = PRESETS.join(", "))]
    UnknownPreset(String),
}

/// Names of the built-in presets.
pub const PRESETS: [&str; 3] = ["paper", "small", "tiny"];

impl CalmConfig {
    /// A built-in preset: `paper` (the spec's defaults), `small` (the paper's structure at a
    /// quarter of its widths, for studies on a CPU) or `tiny` (small odd sizes, for tests and
    /// quick experiments).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        match name {
            "paper" => Ok(CalmConfig::default()),
            // Every stage, count and schedule of the paper; widths m = 128, FFN 512, cluster
            // head 64, contrastive 32, h = 4 (head width 32): ~25× fewer parameters.
            "small" => Ok(CalmConfig {
                width: 128,
                cluster_hidden: 64,
                heads: 4,
                expert_ffn: 512,
                contrastive_dim: 32,
                ..CalmConfig::default()
            }),
            "tiny" => Ok(CalmConfig {
                states_width: 24,
                width: 32,
                clusters: 3,
                cluster_hidden: 16,
                heads: 4,
                dimensions: 2,
                experts: 3,
                top_k: 1,
                expert_layers: 1,
                expert_ffn: 48,
                reflective_rounds: 1,
                cultures: 3,
                classes: 2,
                contrastive_dim: 8,
                ..CalmConfig::default()
            }),
            other => Err(ConfigError::UnknownPreset(other.to_string())),
        }
    }

    /// Reads a TOML file (or JSON, for a `.json` file); fields it omits keep the paper defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: shown.clone(), source })?;
        let parsed: Result<CalmConfig, String> = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        let config =
            parsed.map_err(|message| ConfigError::Parse { path: shown, message: message.trim().to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// The TOML text of this config.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("configs serialise")
    }

    /// d, the width of the backbone's states.
    pub fn backbone_width(&self) -> u64 {
        match self.backbone {
            Backbone::States => self.states_width,
            Backbone::MiniLmL6 => crate::minilm::BertConfig::minilm_l6().hidden,
            Backbone::Qwen3_32bStates => 5120,
        }
    }

    /// Width of each attention head.
    pub fn head_dim(&self) -> u64 {
        self.width / self.heads
    }

    /// Checks every field's range and the relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &str, message: String| Err(ConfigError::Field { field: field.into(), message });
        let positive: [(&str, u64); 14] = [
            ("states_width", self.states_width),
            ("width", self.width),
            ("clusters", self.clusters),
            ("cluster_hidden", self.cluster_hidden),
            ("heads", self.heads),
            ("dimensions", self.dimensions),
            ("experts", self.experts),
            ("top_k", self.top_k),
            ("expert_layers", self.expert_layers),
            ("expert_ffn", self.expert_ffn),
            ("cultures", self.cultures),
            ("classes", self.classes),
            ("contrastive_dim", self.contrastive_dim),
            ("training.batch_size", self.training.batch_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return fail(field, "must be at least 1".into());
            }
            if v > 1 << 24 {
                return fail(field, format!("{v} is absurdly large (limit {})", 1u64 << 24));
            }
        }
        // The graph grows by about 46 nodes per expert layer (the paper preset has 32 of them in
        // 1,772 nodes): bounding their count bounds what building the graph allocates.
        let expert_layers = self.dimensions.saturating_mul(self.experts).saturating_mul(self.expert_layers);
        if expert_layers > MAX_EXPERT_LAYERS {
            return fail(
                "dimensions × experts × expert_layers",
                format!(
                    "{} × {} × {} = {expert_layers} expert layers in all, over the limit of {MAX_EXPERT_LAYERS} (the graph \
                     grows by about 46 nodes for each)",
                    self.dimensions, self.experts, self.expert_layers
                ),
            );
        }
        if !self.width.is_multiple_of(self.heads) {
            return fail("heads", format!("{} heads do not divide width {}", self.heads, self.width));
        }
        if self.top_k > self.experts {
            return fail("top_k", format!("{} exceeds the {} experts", self.top_k, self.experts));
        }
        if self.reflective_rounds > 64 {
            return fail("reflective_rounds", format!("{} rounds is absurd (limit 64)", self.reflective_rounds));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail("dropout", format!("{} is not in [0, 1)", self.dropout));
        }
        let positive_f: [(&str, f64); 7] = [
            ("contrastive_temperature", self.contrastive_temperature),
            ("pool_eps", self.pool_eps),
            ("layer_norm_eps", self.layer_norm_eps),
            ("gumbel.start", self.gumbel.start),
            ("gumbel.end", self.gumbel.end),
            ("gumbel.inference_temperature", self.gumbel.inference_temperature),
            ("training.learning_rate", self.training.learning_rate),
        ];
        for (field, v) in positive_f {
            if !(v.is_finite() && v > 0.0) {
                return fail(field, format!("{v} must be a positive number"));
            }
        }
        let weights = &self.loss_weights;
        for (field, v) in [
            ("loss_weights.contrastive", weights.contrastive),
            ("loss_weights.load_balance", weights.load_balance),
            ("loss_weights.orthogonality", weights.orthogonality),
            ("loss_weights.reflection", weights.reflection),
            ("training.weight_decay", self.training.weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return fail(field, format!("{v} must be a non-negative number"));
            }
        }
        if !(0.0..=1.0).contains(&self.training.warmup_fraction) {
            return fail("training.warmup_fraction", format!("{} is not in [0, 1]", self.training.warmup_fraction));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn paper_preset_is_the_spec() {
        let c = CalmConfig::preset("paper").unwrap();
        assert_eq!((c.width, c.clusters, c.heads, c.dimensions, c.experts, c.top_k), (512, 5, 8, 4, 4, 2));
        assert_eq!((c.reflective_rounds, c.cluster_hidden, c.expert_ffn, c.contrastive_dim), (2, 256, 2048, 128));
        assert_eq!(c.training.batch_size, 64);
        assert_eq!(c.backbone_width(), 384);
        c.validate().unwrap();
        CalmConfig::preset("tiny").unwrap().validate().unwrap();
        let small = CalmConfig::preset("small").unwrap();
        small.validate().unwrap();
        assert_eq!((small.width, small.clusters, small.experts, small.top_k, small.expert_layers), (128, 5, 4, 2, 2));
        assert!(matches!(CalmConfig::preset("huge"), Err(ConfigError::UnknownPreset(_))));
    }

    #[test]
    fn temperature_schedule_decays_from_one_to_a_fifth() {
        let g = GumbelConfig::default();
        assert!((g.temperature(0, 100) - 1.0).abs() < 1e-12);
        assert!((g.temperature(50, 100) - 0.6).abs() < 1e-12);
        assert!((g.temperature(100, 100) - 0.2).abs() < 1e-12);
        assert!((g.temperature(500, 100) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn files_override_only_what_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let path =
            write(&dir, "c.toml", "clusters = 3\nbackbone = \"qwen3-32b-states\"\n[loss_weights]\ncontrastive = 0.5\n");
        let c = CalmConfig::from_file(&path).unwrap();
        assert_eq!(c.clusters, 3);
        assert_eq!(c.backbone_width(), 5120);
        assert_eq!(c.loss_weights.contrastive, 0.5);
        assert_eq!(c.loss_weights.reflection, 0.1);
        assert_eq!(c.width, 512);
        let json = write(&dir, "c.json", r#"{"experts": 3, "top_k": 1}"#);
        let c = CalmConfig::from_file(&json).unwrap();
        assert_eq!((c.experts, c.top_k), (3, 1));
        // A config written out reads back the same.
        let back = write(&dir, "back.toml", &c.to_toml());
        assert_eq!(CalmConfig::from_file(&back).unwrap(), c);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("unknown.toml", "clusterz = 3\n", "clusterz"),
            ("type.toml", "clusters = \"five\"\n", "clusters"),
            ("zero.toml", "experts = 0\n", "experts"),
            ("topk.toml", "top_k = 5\n", "top_k"),
            ("heads.toml", "heads = 7\n", "heads"),
            ("dropout.toml", "dropout = 1.5\n", "dropout"),
            ("tau.toml", "[gumbel]\nend = -1.0\n", "gumbel.end"),
            ("backbone.toml", "backbone = \"gpt\"\n", "backbone"),
            ("syntax.toml", "clusters = [\n", "c"),
            // Each field within its own limit, their product not: a three-line graph bomb.
            (
                "bomb.toml",
                "dimensions = 4096\nexperts = 4096\nexpert_layers = 4096\n",
                "dimensions × experts × expert_layers",
            ),
        ];
        for (name, text, field) in cases {
            let e = CalmConfig::from_file(&write(&dir, name, text)).unwrap_err();
            assert!(e.to_string().contains(field), "{name}: {e}");
        }
        assert!(matches!(CalmConfig::from_file(Path::new("/no/such/config.toml")), Err(ConfigError::Io { .. })));
    }
}
