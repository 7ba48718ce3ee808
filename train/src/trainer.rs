//! The training loop (`calm train`) and prediction (`calm eval`).
//!
//! Each step runs the training graph on the reference executor under Burn's autodiff (on the
//! run's backend, `crate::backend`; f32, products as `--precision` says), then AdamW, with the
//! weights and moments kept on a GPU between steps (`crate::resident`). Batch order, dropout
//! and Gumbel noise are functions of (seed, epoch, step), and checkpoints hold the weights, the
//! optimizer's moments and the step, so `--resume` continues a run exactly where it stopped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::FloatDType;
use calm_ir::Graph;
use calm_passes::lower::LowerOptions;
use calm_passes::plan::{FloatType, Precision};
use calm_runtime::device::select::{Device, LoadedPlan};
use calm_runtime::host::HostTensor;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::{bind_inputs, Gradients, NonFinite, Reference, RunError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::backend::Backend;
use crate::batch::{self, Split, StepKeys};
use crate::checkpoint::{params_for, Best, Checkpoint, RunState};
use crate::metrics::Report;
use crate::model::ModelSpec;
use crate::on_backend;
use crate::optim::{learning_rate, AdamW};
use crate::progress::Progress;
use crate::resident::{gradients_on, Resident, Step};
use crate::TrainError;

/// Optimisation settings; stored in checkpoints (a resumed run keeps them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub epochs: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub warmup_fraction: f64,
    pub seed: u64,
    /// Where the steps ran (the last run's, for a resumed one: a run may resume elsewhere).
    pub backend: Backend,
    /// How exactly the steps' matrix products are computed (`--precision`): f32 master weights
    /// and AdamW state whatever it says. Checkpoints before it trained at `highest`.
    #[serde(default, skip_serializing_if = "is_exact")]
    pub precision: Precision,
    /// Texts were truncated to this many tokens (with `[CLS]` and `[SEP]`).
    pub max_tokens: usize,
}

/// Exact products (written nowhere: checkpoints and study keys of exact runs stay as they were
/// before `--precision` trained).
fn is_exact(p: &Precision) -> bool {
    *p == Precision::Highest
}

/// Where a run writes: `DIR/last.safetensors` (every epoch and at the end), `DIR/best.safetensors`
/// (best validation macro-F1), and an optional JSON-lines log.
pub struct Outputs {
    pub dir: PathBuf,
    pub log: Option<PathBuf>,
}

impl Outputs {
    pub fn last(&self) -> PathBuf {
        self.dir.join("last.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Where the steps ran, at what precision of products.
    pub backend: Backend,
    pub precision: Precision,
    pub steps: u64,
    pub total_steps: u64,
    pub seconds: f64,
    pub seconds_per_step: f64,
    pub samples_per_second: f64,
    pub best: Option<Best>,
    pub last_loss: f64,
}

/// A fingerprint of a dataset's texts and labels with the backbone that encoded it: a resumed
/// run must see the same data.
pub fn fingerprint(split: &Split) -> String {
    let mut h = Sha256::new();
    for t in &split.data.texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    for s in &split.data.samples {
        h.update([s.text as u64, s.culture as u64, s.label as u64].map(u64::to_le_bytes).concat());
    }
    h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a step's loss or gradients are not finite: the first node of the forward pass that made
/// a NaN or an overflow (found by running the step again with every value checked), or the
/// parameter whose gradient went bad in the backward pass.
fn diagnose(
    settings: &Settings,
    g: &Graph,
    params: &ParamStore,
    inputs: &BTreeMap<String, HostTensor>,
    grads: &Gradients,
) -> String {
    if let Err(RunError::NonFinite(fault)) = gradients_on(settings.backend, settings.precision, g, params, inputs, true)
    {
        return RunError::NonFinite(fault).to_string();
    }
    let bad_grad = grads.grads.iter().find_map(|(name, t)| NonFinite::scan(t).map(|f| (name, f)));
    match bad_grad {
        Some((name, found)) => format!(
            "the loss is {} and every forward value finite, but the gradient of `{name}` holds {found}",
            grads.loss
        ),
        None => format!("the loss is {}", grads.loss),
    }
}

/// Loss terms a step logs: every scalar output named `loss*`.
fn loss_terms(outputs: &BTreeMap<String, HostTensor>) -> BTreeMap<String, f64> {
    outputs
        .iter()
        .filter(|(n, t)| n.starts_with("loss") && t.shape.is_empty())
        .map(|(n, t)| (n.clone(), t.data.to_f64()[0]))
        .collect()
}

/// The run's JSON-lines log: one writer at a time (it holds the log's lock for the whole run),
/// and a line that cannot be written is reported once, on stderr, naming the file.
struct Log {
    file: Option<(std::fs::File, PathBuf)>,
    /// Held while the run lasts; another run writing the same log is refused at the start.
    _lock: Option<std::fs::File>,
    failed: bool,
}

impl Log {
    /// Opens the log: a new run empties it; a run resumed at step `s` keeps only the lines up to
    /// step `s` (a crash after them left lines of steps the resumed run will do again).
    fn open(path: Option<&Path>, resumed_at: Option<u64>) -> Result<Self, TrainError> {
        let Some(path) = path else { return Ok(Log { file: None, _lock: None, failed: false }) };
        let io = |source| TrainError::Io { path: path.to_path_buf(), source };
        let lock = calm_ir::files::lock_file_beside(path).map_err(io)?;
        if lock.try_lock().is_err() {
            let reason = "another run is writing it (its lock is held); give this run another --out";
            return Err(io(std::io::Error::new(std::io::ErrorKind::WouldBlock, reason)));
        }
        let kept: String = match (resumed_at, std::fs::read_to_string(path)) {
            (Some(step), Ok(text)) => text
                .lines()
                .filter(|l| {
                    let v: Option<serde_json::Value> = serde_json::from_str(l).ok();
                    v.and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => String::new(),
        };
        calm_ir::files::write_atomic(path, kept.as_bytes()).map_err(io)?;
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Log { file: Some((file, path.to_path_buf())), _lock: Some(lock), failed: false })
    }

    fn line(&mut self, value: serde_json::Value) {
        let Some((f, path)) = &mut self.file else { return };
        // A log line that cannot be written does not stop training (the checkpoints matter),
        // but it is said, once.
        if let Err(e) = writeln!(f, "{value}").and_then(|_| f.flush()) {
            if !std::mem::replace(&mut self.failed, true) {
                eprintln!("calm: warning: cannot write the training log {}: {e}; training goes on", path.display());
            }
        }
    }
}

/// How far to go and what to check on the way.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop after this many steps in total (the run can be resumed).
    pub stop_after: Option<u64>,
    /// Check every node's results in every step's forward pass (slow); stop at the first NaN or
    /// overflow, naming the node.
    pub check_numerics: bool,
}

/// A new run's starting point, or the checkpoint to resume on a backend at a precision (its
/// own or others: the checkpoint holds f32 weights and moments whatever they were).
pub enum Start {
    Fresh { model: Box<ModelSpec>, settings: Settings },
    Resume { path: PathBuf, backend: Backend, precision: Precision },
}

/// Trains until the schedule's last step or until `options.stop_after` steps in total,
/// validating and checkpointing at every epoch's end and when it stops. A step whose loss or
/// gradients are not finite stops the run: its state before that step is saved as `last`, and
/// the error names the node where the fault began.
pub fn train(
    start: Start,
    train: &Split,
    valid: Option<&Split>,
    backbone: &str,
    out: &Outputs,
    options: &RunOptions,
    progress: &Progress,
) -> Result<Summary, TrainError> {
    let data = format!("{}:{}", fingerprint(train), backbone);
    let resuming = matches!(start, Start::Resume { .. });
    // A run killed while writing leaves temporaries beside its files (never a half file).
    for path in [Some(out.last()), Some(out.best()), out.log.clone()].into_iter().flatten() {
        calm_ir::files::remove_stale_temporaries(&path);
    }
    let Checkpoint { mut state, mut params, optimizer: mut opt } = match start {
        Start::Resume { path, backend, precision } => {
            let mut ck = Checkpoint::load(&path)?;
            (ck.state.settings.backend, ck.state.settings.precision) = (backend, precision);
            if ck.state.data != data {
                let reason = "it was trained on other data or with another backbone than given now".into();
                return Err(TrainError::Checkpoint { path, reason });
            }
            let st = &ck.state;
            let fits = st.settings.batch_size > 0
                && schedule(train, st.settings.batch_size, st.settings.epochs)
                    == (st.steps_per_epoch, Some(st.total_steps));
            if !fits {
                let reason = format!(
                    "its schedule ({} steps an epoch, {} in all, batch {}) does not fit the data",
                    st.steps_per_epoch, st.total_steps, st.settings.batch_size
                );
                return Err(TrainError::Checkpoint { path, reason });
            }
            ck
        }
        Start::Fresh { model, settings } => fresh(*model, settings, train, data, backbone)?,
    };
    let g = ModelSpec::for_reference(&state.model.training_graph()?)?;
    let inference = state.model.inference_graph()?;
    let settings = state.settings.clone();
    let n = train.data.samples.len();
    let end = options.stop_after.map_or(state.total_steps, |s| s.min(state.total_steps));
    let mut log = Log::open(out.log.as_deref(), resuming.then_some(state.step))?;
    log.line(serde_json::json!({"event": "start", "step": state.step, "backend": settings.backend,
        "precision": settings.precision, "resumed": resuming}));
    let bar = progress.bar(state.total_steps, &format!("training {}", state.model.name()));
    bar.set_position(state.step);
    // The weights and moments live on the backend from here; the host's copies are refreshed
    // when a checkpoint or a validation needs them.
    let mut resident = Resident::upload(settings.backend, settings.precision, &g, &params, &mut opt)?;
    let started = Instant::now();
    let first = state.step;
    let mut order: Option<(u64, Vec<usize>)> = None;
    let mut last_loss = f64::NAN;
    let mut samples_seen = 0usize;
    while state.step < end {
        let step = state.step;
        let epoch = step / state.steps_per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, batch::shuffled(n, settings.seed, epoch)));
        }
        let order_now = &order.as_ref().expect("set above").1;
        let at = ((step % state.steps_per_epoch) as usize) * settings.batch_size;
        let idx = &order_now[at..(at + settings.batch_size).min(n)];
        let keys = StepKeys {
            temperature: state.model.config.gumbel.temperature(step, state.total_steps),
            seed: settings.seed as u32,
            offset: step as u32,
        };
        let inputs = batch::inputs(&g, train, idx, None, Some(keys));
        let stopped = |params: &ParamStore, opt: &AdamW, what: String| -> TrainError {
            // The weights and moments are still those before this step, all finite: keep them,
            // so the failing step can be replayed (`--resume --check-numerics`).
            match Checkpoint::write(&out.last(), &state, params, opt) {
                Ok(()) => TrainError::NonFinite { step: step + 1, what, checkpoint: out.last() },
                Err(e) => e,
            }
        };
        let lr = learning_rate(settings.learning_rate, settings.warmup_fraction, step, state.total_steps);
        // A device lost or out of memory panics inside the runtime: a one-line error naming the
        // step, not a crash (the host's copies are the last checkpoint's).
        let stepped = calm_runtime::device::select::catch_device(|| {
            resident.step(&g, &inputs, (lr, options.check_numerics), &mut params, &mut opt)
        })
        .map_err(|caught| TrainError::BackendFault {
            step: step + 1,
            backend: settings.backend.name(),
            source: Box::new(caught.into()),
            then: match out.last().exists() {
                true => format!("`calm train --resume` continues from {}", out.last().display()),
                false => "no checkpoint was written yet".into(),
            },
        })?;
        let (loss, outputs) = match stepped {
            Ok(Step::Done { loss, outputs }) => (loss, outputs),
            Ok(Step::NotFinite { .. }) => {
                resident.download(&mut params, &mut opt)?;
                // Found on the host's path: the step again with every value checked, else the
                // gradient that went bad.
                let grads = gradients_on(settings.backend, settings.precision, &g, &params, &inputs, false)?;
                return Err(stopped(&params, &opt, diagnose(&settings, &g, &params, &inputs, &grads)));
            }
            Err(e @ RunError::NonFinite(_)) => {
                resident.download(&mut params, &mut opt)?;
                return Err(stopped(&params, &opt, e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        state.step += 1;
        samples_seen += idx.len();
        last_loss = loss;
        let terms = loss_terms(&outputs);
        let elapsed = started.elapsed().as_secs_f64();
        let rate = samples_seen as f64 / elapsed.max(1e-9);
        bar.set_position(state.step);
        bar.set_message(format!(
            "epoch {} loss {:.4} ({}) {:.1} samples/s",
            epoch + 1,
            loss,
            terms
                .iter()
                .filter(|(k, _)| *k != "loss")
                .map(|(k, v)| format!("{}={v:.3}", &k[5..]))
                .collect::<Vec<_>>()
                .join(" "),
            rate
        ));
        log.line(serde_json::json!({"event": "step", "step": state.step, "epoch": epoch + 1, "lr": lr,
            "losses": terms, "samples": idx.len(), "elapsed_s": elapsed}));
        let epoch_done = state.step % state.steps_per_epoch == 0;
        if epoch_done || state.step == end {
            // The host's weights and moments are brought up to date for the validation and
            // the checkpoints.
            resident.download(&mut params, &mut opt)?;
            // Without a validation split the last checkpoint is the best; with one, only an
            // epoch that improved the validation macro-F1 is.
            let mut better = valid.is_none();
            if let (Some(valid), true) = (valid, epoch_done) {
                let weights = params_for(&inference, &params, &out.last())?;
                let preds = predict(
                    &inference,
                    &weights,
                    valid,
                    Executor::Reference(settings.backend),
                    settings.batch_size,
                    progress,
                )?;
                let report = score(valid, &preds.classes, &state);
                log.line(
                    serde_json::json!({"event": "valid", "step": state.step, "epoch": epoch + 1, "report": report}),
                );
                bar.suspend(|| {
                    progress.note(&format!(
                        "epoch {}: valid accuracy {:.4}, macro-F1 {:.4}",
                        epoch + 1,
                        report.overall.accuracy,
                        report.overall.macro_f1
                    ))
                });
                better = state.best.as_ref().is_none_or(|b| report.overall.macro_f1 > b.macro_f1);
                if better {
                    state.best = Some(Best {
                        epoch: epoch + 1,
                        step: state.step,
                        macro_f1: report.overall.macro_f1,
                        accuracy: report.overall.accuracy,
                    });
                }
            }
            // Best first: a crash between the two leaves `last` (what --resume reads) naming an
            // older best, which the next better epoch overwrites, never a best file older than
            // `last` says.
            if better {
                Checkpoint::write(&out.best(), &state, &params, &opt)?;
            }
            Checkpoint::write(&out.last(), &state, &params, &opt)?;
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let steps = state.step - first;
    Ok(Summary {
        backend: settings.backend,
        precision: settings.precision,
        steps: state.step,
        total_steps: state.total_steps,
        seconds,
        seconds_per_step: seconds / steps.max(1) as f64,
        samples_per_second: samples_seen as f64 / seconds.max(1e-9),
        best: state.best,
        last_loss,
    })
}

/// Steps an epoch of batches of `batch_size` (taken as at least 1) over `train`, and in `epochs` of
/// them, `None` where that overflows the step counter.
fn schedule(train: &Split, batch_size: usize, epochs: u64) -> (u64, Option<u64>) {
    let per_epoch = (train.data.samples.len() as u64).div_ceil(batch_size.max(1) as u64);
    (per_epoch, per_epoch.checked_mul(epochs))
}

fn fresh(
    model: ModelSpec,
    settings: Settings,
    train: &Split,
    data: String,
    backbone: &str,
) -> Result<Checkpoint, TrainError> {
    if settings.batch_size == 0 || settings.epochs == 0 {
        return Err(TrainError::Settings("--batch and --epochs must be at least 1".into()));
    }
    if train.data.samples.is_empty() {
        return Err(TrainError::Settings(format!("{} has no samples", train.data.source.display())));
    }
    let c = &model.config;
    if train.data.cultures.len() as u64 > c.cultures || train.data.classes.len() as u64 > c.classes {
        return Err(TrainError::Settings(format!(
            "the data has {} cultures and {} classes; the model was built for {} and {}",
            train.data.cultures.len(),
            train.data.classes.len(),
            c.cultures,
            c.classes
        )));
    }
    // Checked before anything is built or initialised.
    let (steps_per_epoch, total_steps) = schedule(train, settings.batch_size, settings.epochs);
    let total_steps = total_steps.ok_or_else(|| {
        TrainError::Settings(format!(
            "--epochs {} × {steps_per_epoch} steps an epoch overflows the step counter",
            settings.epochs
        ))
    })?;
    let g = model.training_graph()?;
    let params = ParamStore::try_init(&g, settings.seed)?;
    let optimizer = AdamW::new(settings.weight_decay);
    let state = RunState {
        format: 1,
        cultures: train.data.cultures.clone(),
        classes: train.data.classes.clone(),
        step: 0,
        total_steps,
        steps_per_epoch,
        best: None,
        data,
        backbone: backbone.to_string(),
        model,
        settings,
    };
    Ok(Checkpoint { state, params, optimizer })
}

/// Scores of predictions on a split, with the run's culture names.
pub fn score(split: &Split, preds: &[u32], state: &RunState) -> Report {
    let s = &split.data.samples;
    let truth: Vec<u32> = s.iter().map(|x| x.label).collect();
    let culture: Vec<u32> = s.iter().map(|x| x.culture).collect();
    Report::of(preds, &truth, &culture, &state.cultures, state.model.config.classes as usize)
}

/// Which executor predicts.
pub enum Executor<'a> {
    Reference(Backend),
    /// The compiled, fused plan on a device.
    Fused {
        device: &'a Device,
        float: FloatType,
    },
}

/// A split's predicted classes, and how many times the weights went to the executor for them
/// (once, however many batches).
pub struct Predictions {
    pub classes: Vec<u32>,
    pub weight_uploads: usize,
}

/// The predicted class (argmax of the logits) of every sample of `split`, in batches of
/// `batch_size`, with the weights given to the executor once. The fused executor runs every
/// batch at one shape (the split's longest text, the last batch filled with copies of its last
/// sample), so the plan compiles and its weights upload once.
pub fn predict(
    g: &Graph,
    params: &ParamStore,
    split: &Split,
    executor: Executor<'_>,
    batch_size: usize,
    progress: &Progress,
) -> Result<Predictions, TrainError> {
    let batch_size = batch_size.max(1);
    match executor {
        Executor::Reference(backend) => {
            let g = ModelSpec::for_reference(g)?;
            on_backend!(backend, |B, device| {
                let exec = Reference::<B>::new(device, FloatDType::F32);
                let loaded = exec.load(&g, params)?;
                let classes = in_batches(split, batch_size, progress, |real| {
                    let inputs = batch::inputs(&g, split, real, None, None);
                    Ok(exec.run_loaded(&g, &loaded, &inputs)?.remove("logits").expect("CALM graphs output logits"))
                })?;
                Ok(Predictions { classes, weight_uploads: 1 })
            })
        }
        Executor::Fused { device, float } => {
            let mut loaded: Option<LoadedPlan> = None;
            let classes = in_batches(split, batch_size, progress, |real| {
                let mut idx = real.to_vec();
                idx.resize(batch_size, *real.last().expect("batches are not empty"));
                let inputs = batch::inputs(g, split, &idx, Some(split.states.tokens), None);
                let plan = match &mut loaded {
                    Some(plan) => plan,
                    None => {
                        let bindings = bind_inputs(g, &inputs)?;
                        let opts = LowerOptions { float, ..device.lower_options() };
                        let compiled = calm_passes::compile::compile(g, &bindings, true, &opts)?;
                        loaded.insert(device.load(compiled.plan, params)?)
                    }
                };
                Ok(plan.run(&inputs)?.remove("logits").expect("CALM graphs output logits"))
            })?;
            Ok(Predictions { classes, weight_uploads: loaded.as_ref().map_or(0, LoadedPlan::weight_uploads) })
        }
    }
}

/// The argmax of the logits `logits_of` gives for each batch of the split's samples (a batch
/// given as sample indices; logits may hold padding rows after the real ones).
fn in_batches(
    split: &Split,
    batch_size: usize,
    progress: &Progress,
    mut logits_of: impl FnMut(&[usize]) -> Result<HostTensor, TrainError>,
) -> Result<Vec<u32>, TrainError> {
    let n = split.data.samples.len();
    let mut preds = Vec::with_capacity(n);
    let bar = progress.bar(n as u64, "predicting");
    for start in (0..n).step_by(batch_size) {
        let real: Vec<usize> = (start..(start + batch_size).min(n)).collect();
        let logits = logits_of(&real)?;
        let classes = *logits.shape.last().expect("logits are [batch, classes]");
        let values = logits.data.to_f64();
        for r in 0..real.len() {
            let row = &values[r * classes..(r + 1) * classes];
            // Ties go to the lower class, as argmax does.
            let best = (0..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b });
            preds.push(best as u32);
        }
        bar.inc(real.len() as u64);
    }
    bar.finish_and_clear();
    Ok(preds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_has_one_writer_and_says_when_a_line_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.jsonl");
        let mut first = Log::open(Some(&path), None).unwrap();
        let second = Log::open(Some(&path), None).map(|_| ()).unwrap_err().to_string();
        assert!(second.contains("train.jsonl") && second.contains("another run"), "{second}");
        first.line(serde_json::json!({"step": 1}));
        assert!(!first.failed);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\":1}\n");
        // A handle that cannot be written (as a full disk would refuse): noticed, said once.
        first.file = Some((std::fs::File::open(&path).unwrap(), path.clone()));
        first.line(serde_json::json!({"step": 2}));
        assert!(first.failed);
        drop(first);
        assert!(Log::open(Some(&path), Some(1)).is_ok(), "the lock goes with the run");
    }
}
