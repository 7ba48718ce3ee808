//! The training step as `calm bench --train-step` times it: the training graph's forward and
//! backward on a backend, then AdamW there (the weights and moments stay on the backend, as in
//! `calm train`), at a given batch and text length, on random states. What a `calm train` step
//! costs, without a dataset or an encoder in the way.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use calm_data::{Dataset, Sample};
use calm_passes::plan::Precision;
use calm_runtime::params::ParamStore;
use serde::Serialize;

use crate::backbone::States;
use crate::backend::Backend;
use crate::batch::{self, Split, StepKeys};
use crate::model::ModelSpec;
use crate::optim::AdamW;
use crate::resident::{Resident, Step};
use crate::TrainError;

/// `batch` samples of texts `tokens` long, with random states of the model's width, cultures
/// and labels drawn from `seed` (the same every call).
pub fn random_split(model: &ModelSpec, batch: usize, tokens: usize, seed: u64) -> Split {
    let c = &model.config;
    let width = c.states_width as usize;
    let values = calm_kernels::philox::uniform(seed as u32, 0, 0, batch * tokens * width);
    let draws = calm_kernels::philox::uniform(seed as u32, 0, 1, 2 * batch);
    let pick = |u: f32, n: u64| ((u as f64 * n as f64) as u32).min(n.saturating_sub(1) as u32);
    let samples = (0..batch)
        .map(|i| Sample {
            text: i,
            culture: pick(draws[2 * i], c.cultures),
            label: pick(draws[2 * i + 1], c.classes),
            line: i + 1,
        })
        .collect();
    let data = Dataset {
        source: PathBuf::from("<random states>"),
        cultures: (0..c.cultures).map(|i| format!("culture{i}")).collect(),
        classes: (0..c.classes).map(|i| format!("class{i}")).collect(),
        texts: (0..batch).map(|i| format!("text {i}")).collect(),
        samples,
    };
    let states =
        States { width, tokens, lengths: vec![tokens; batch], data: values.iter().map(|u| u * 2.0 - 1.0).collect() };
    Split { data, states }
}

/// Medians over the timed steps (the first step, which compiles and autotunes kernels on a GPU,
/// is run but not counted).
#[derive(Clone, Debug, Serialize)]
pub struct StepTime {
    pub backend: Backend,
    pub precision: Precision,
    /// Forward, backward and AdamW on the backend, the loss terms read back: a step of
    /// `calm train`, in seconds.
    pub step: f64,
    pub steps_timed: usize,
    /// The last step's loss, to see the steps were real.
    pub loss: f64,
}

/// Times `iters` training steps (after one untimed) of `model` on `backend` at `precision`,
/// on `split`'s samples as one batch, with AdamW at a small learning rate.
pub fn train_step(
    model: &ModelSpec,
    split: &Split,
    backend: Backend,
    precision: Precision,
    iters: usize,
) -> Result<StepTime, TrainError> {
    let g = ModelSpec::for_reference(&model.training_graph()?)?;
    let mut params = ParamStore::try_init(&g, 0)?;
    let mut adam = AdamW::new(0.01);
    let mut resident = Resident::upload(backend, precision, &g, &params, &mut adam)?;
    let idx: Vec<usize> = (0..split.data.samples.len()).collect();
    let (mut times, mut loss) = (Vec::new(), f64::NAN);
    for step in 0..=iters.max(1) {
        let keys = StepKeys { temperature: 1.0, seed: 0, offset: step as u32 };
        let inputs = batch::inputs(&g, split, &idx, Some(split.states.tokens), Some(keys));
        let began = Instant::now();
        loss = match resident.step(&g, &inputs, (1e-5, false), &mut params, &mut adam)? {
            Step::Done { loss, .. } | Step::NotFinite { loss } => loss,
        };
        if step > 0 {
            times.push(began.elapsed());
        }
    }
    Ok(StepTime { backend, precision, step: median(times), steps_timed: iters.max(1), loss })
}

/// The median, in seconds.
fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64()
}
