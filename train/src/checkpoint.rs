//! Checkpoints: one safetensors file holding the weights (`weights/NAME`), AdamW's moments
//! (`adam.m/NAME`, `adam.v/NAME`) and, in the file's metadata, the run's state as JSON (model,
//! settings, step, best validation score). One file written atomically, so a reader sees a
//! whole checkpoint or the previous one, never a mix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use calm_ir::Graph;
use calm_runtime::host::HostTensor;
use calm_runtime::params::ParamStore;
use calm_runtime::safetensors::{self, Metadata};
use serde::{Deserialize, Serialize};

use crate::model::ModelSpec;
use crate::optim::AdamW;
use crate::trainer::Settings;
use crate::TrainError;

const STATE_KEY: &str = "calm.train.state";
const FORMAT: u32 = 1;

/// The best validation score so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: u64,
    pub step: u64,
    pub macro_f1: f64,
    pub accuracy: f64,
}

/// Everything about a run besides its tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    pub model: ModelSpec,
    pub settings: Settings,
    /// Names of the cultures and classes the model's indices stand for.
    pub cultures: Vec<String>,
    pub classes: Vec<String>,
    /// Steps done.
    pub step: u64,
    pub total_steps: u64,
    pub steps_per_epoch: u64,
    pub best: Option<Best>,
    /// Hash of the training data and of the backbone that encoded it.
    pub data: String,
    pub backbone: String,
}

pub struct Checkpoint {
    pub state: RunState,
    pub params: ParamStore,
    pub optimizer: AdamW,
}

impl Checkpoint {
    /// Writes a checkpoint of these parts (borrowed: the paper preset's weights and moments are
    /// 1.3 GB, not to be cloned into a `Checkpoint` first).
    pub fn write(path: &Path, state: &RunState, params: &ParamStore, optimizer: &AdamW) -> Result<(), TrainError> {
        let mut tensors: BTreeMap<String, HostTensor> = BTreeMap::new();
        for (name, t) in params.iter() {
            tensors.insert(format!("weights/{name}"), t.clone());
            let shape = t.shape.clone();
            for (prefix, moments) in [("adam.m", &optimizer.m), ("adam.v", &optimizer.v)] {
                if let Some(values) = moments.get(name) {
                    tensors.insert(format!("{prefix}/{name}"), HostTensor::f32(shape.clone(), values.clone()));
                }
            }
        }
        let opt = optimizer;
        let state = serde_json::json!({
            "run": state,
            "adamw": {"beta1": opt.beta1, "beta2": opt.beta2, "eps": opt.eps, "weight_decay": opt.weight_decay, "steps": opt.steps},
        });
        let metadata = Metadata::from([(STATE_KEY.to_string(), state.to_string())]);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| TrainError::Io { path: dir.to_path_buf(), source })?;
        }
        Ok(safetensors::write_with_metadata(path, &tensors, &metadata)?)
    }

    /// Reads a checkpoint; the weights are checked against the model's training graph.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let (mut tensors, metadata) = safetensors::read_with_metadata(path)?;
        let bad = |reason: String| TrainError::Checkpoint { path: path.to_path_buf(), reason };
        let text = metadata
            .get(STATE_KEY)
            .ok_or_else(|| bad(format!("no `{STATE_KEY}` metadata: not a calm training checkpoint")))?;
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("state does not parse: {e}")))?;
        let state: RunState = serde_json::from_value(json["run"].clone()).map_err(|e| bad(format!("state: {e}")))?;
        if state.format != FORMAT {
            return Err(bad(format!("format {} (this calm reads {FORMAT})", state.format)));
        }
        let adam = &json["adamw"];
        let num = |k: &str| adam[k].as_f64().ok_or_else(|| bad(format!("adamw.{k} is missing")));
        let mut optimizer = AdamW::new(num("weight_decay")?);
        (optimizer.beta1, optimizer.beta2, optimizer.eps) = (num("beta1")?, num("beta2")?, num("eps")?);
        optimizer.steps = adam["steps"].as_u64().ok_or_else(|| bad("adamw.steps is missing".into()))?;
        let mut weights = BTreeMap::new();
        for (name, t) in std::mem::take(&mut tensors) {
            let f32s = || t.to_f32().ok_or_else(|| bad(format!("`{name}` is not float")));
            if let Some(p) = name.strip_prefix("weights/") {
                weights.insert(p.to_string(), t.clone());
            } else if let Some(p) = name.strip_prefix("adam.m/") {
                optimizer.m.insert(p.to_string(), f32s()?);
            } else if let Some(p) = name.strip_prefix("adam.v/") {
                optimizer.v.insert(p.to_string(), f32s()?);
            } else {
                return Err(bad(format!("unexpected tensor `{name}`")));
            }
        }
        let graph = state.model.training_graph()?;
        let params = ParamStore::from_tensors(&graph, path, weights)?;
        // AdamW's moments: both or neither for a parameter, each the parameter's size.
        for (name, t) in params.iter() {
            let (m, v) = (optimizer.m.get(name).map(Vec::len), optimizer.v.get(name).map(Vec::len));
            match (m, v) {
                (None, None) => {}
                (Some(a), Some(b)) if a == t.numel() && b == t.numel() => {}
                _ => return Err(bad(format!("AdamW moments of `{name}` are missing or of the wrong size"))),
            }
        }
        if let Some(name) = optimizer.m.keys().chain(optimizer.v.keys()).find(|n| params.get(n).is_none()) {
            return Err(bad(format!("AdamW moments of `{name}`, which is not a parameter")));
        }
        Ok(Checkpoint { state, params, optimizer })
    }
}

/// The parameters of `g` (an inference graph, whose parameters are a subset of the training
/// graph's) taken from `params`.
pub fn params_for(g: &Graph, params: &ParamStore, source: &Path) -> Result<ParamStore, TrainError> {
    let wanted: Vec<&str> = g.params().map(|(_, n, _)| n).collect();
    let tensors = params.iter().filter(|(n, _)| wanted.contains(n)).map(|(n, t)| (n.to_string(), t.clone())).collect();
    Ok(ParamStore::from_tensors(g, &PathBuf::from(source), tensors)?)
}
