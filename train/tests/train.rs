//! Training on the tiny backbone and the tiny preset, on the first CREHate posts: a step lowers
//! the loss, a resumed run equals an uninterrupted one, checkpoints refuse what is not theirs.

use std::path::{Path, PathBuf};

use calm_models::{Backbone, CalmConfig};
use calm_runtime::params::ParamStore;
use calm_runtime::reference::gradients;
use calm_train::backbone::Encoder;
use calm_train::batch::{self, Split, StepKeys};
use calm_train::checkpoint::Checkpoint;
use calm_train::model::ModelSpec;
use calm_train::optim::AdamW;
use calm_train::progress::Progress;
use calm_train::trainer::{self, Backend, Outputs, RunOptions, Settings, Start};

fn crehate(split: &str) -> PathBuf {
    calm_data::crehate_dir().unwrap().join(format!("CREHate_{split}.csv"))
}

fn split(name: &str, texts: usize, enc: &Encoder) -> Split {
    let data = calm_data::load_crehate(&crehate(name)).unwrap().take(texts);
    let states = enc.encode(&data.texts, 16, &Progress::hidden()).unwrap();
    Split { data, states }
}

fn config(enc: &Encoder) -> CalmConfig {
    CalmConfig {
        backbone: Backbone::States,
        states_width: enc.width() as u64,
        cultures: 5,
        classes: 2,
        ..CalmConfig::preset("tiny").unwrap()
    }
}

fn settings(epochs: u64) -> Settings {
    Settings {
        epochs,
        batch_size: 16,
        learning_rate: 1e-3,
        weight_decay: 0.01,
        warmup_fraction: 0.1,
        seed: 5,
        backend: Backend::Flex,
        max_tokens: 16,
    }
}

#[test]
fn one_step_lowers_the_loss_of_its_batch_for_calm_and_the_baselines() {
    let enc = Encoder::tiny(1);
    let train = split("train", 8, &enc);
    for variant in ["full", "no-moe", "linear", "mlp"] {
        let model = ModelSpec::variant(variant, &config(&enc)).unwrap();
        let g = model.training_graph().unwrap();
        let mut params = ParamStore::init(&g, 2);
        let idx: Vec<usize> = (0..train.data.samples.len()).collect();
        let keys = StepKeys { temperature: 1.0, seed: 3, offset: 0 };
        let inputs = batch::inputs(&g, &train, &idx, None, Some(keys));
        let loss = |p: &ParamStore| {
            gradients::<burn::backend::flex::Flex>(
                Default::default(),
                burn::tensor::FloatDType::F32,
                &g,
                p,
                &inputs,
                "loss",
                false,
            )
            .unwrap()
        };
        let before = loss(&params);
        assert!(before.loss.is_finite());
        let mut opt = AdamW::new(0.0);
        opt.step(&mut params, &before.grads, 1e-3);
        let after = loss(&params).loss;
        assert!(after < before.loss, "{variant}: {} -> {after}", before.loss);
    }
}

fn read_params(path: &Path) -> (ParamStore, AdamW, u64) {
    let ck = Checkpoint::load(path).unwrap();
    (ck.params, ck.optimizer, ck.state.step)
}

#[test]
fn a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one() {
    let enc = Encoder::tiny(1);
    let (train, valid) = (split("train", 9, &enc), split("valid", 4, &enc));
    let model = ModelSpec::variant("full", &config(&enc)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, stop: Option<u64>, resume: bool| {
        let out = Outputs { dir: dir.path().join(name), log: Some(dir.path().join(format!("{name}.jsonl"))) };
        let start = if resume {
            Start::Resume(out.last())
        } else {
            Start::Fresh { model: Box::new(model.clone()), settings: settings(2) }
        };
        let options = RunOptions { stop_after: stop, ..Default::default() };
        trainer::train(start, &train, Some(&valid), &enc.fingerprint, &out, &options, &Progress::hidden()).unwrap()
    };
    // 45 samples in batches of 16: 3 steps an epoch (the last of 13), 6 in all.
    let whole = run("whole", None, false);
    assert_eq!((whole.steps, whole.total_steps), (6, 6));
    let first = run("split", Some(2), false);
    assert_eq!(first.steps, 2);
    assert_eq!(read_params(&dir.path().join("split/last.safetensors")).2, 2);
    let rest = run("split", None, true);
    assert_eq!(rest.steps, 6);
    let (a, oa, sa) = read_params(&dir.path().join("whole/last.safetensors"));
    let (b, ob, sb) = read_params(&dir.path().join("split/last.safetensors"));
    assert_eq!(sa, sb);
    assert_eq!(a, b, "weights differ after resuming");
    assert_eq!(oa, ob, "optimizer state differs after resuming");
    assert_ne!(a, ParamStore::init(&model.training_graph().unwrap(), 5), "training changed the weights");
    // The log of the split run has each step once, numbered 1..6, with every loss term.
    let log = std::fs::read_to_string(dir.path().join("split.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "step")
        .map(|v| {
            for term in ["loss", "loss_ce", "loss_ce_rounds", "loss_con", "loss_lb", "loss_orth", "loss_ref"] {
                assert!(v["losses"][term].as_f64().is_some_and(f64::is_finite), "{term} in {v}");
            }
            v["step"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    assert!(log.lines().filter(|l| l.contains("\"valid\"")).count() == 2, "one validation per epoch");
    // Resuming on other data is refused.
    let other = split("train", 5, &enc);
    let out = Outputs { dir: dir.path().join("split"), log: None };
    let err = trainer::train(
        Start::Resume(out.last()),
        &other,
        None,
        &enc.fingerprint,
        &out,
        &RunOptions::default(),
        &Progress::hidden(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("other data"), "{err}");
}

#[test]
fn a_nan_stops_training_with_a_checkpoint_and_names_where_it_began() {
    let enc = Encoder::tiny(1);
    let mut train = split("train", 9, &enc);
    // The first state of every text is NaN: the first step fails.
    let model = ModelSpec::variant("full", &config(&enc)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Outputs { dir: dir.path().join("nan"), log: None };
    let fresh = || Start::Fresh { model: Box::new(model.clone()), settings: settings(2) };
    for t in 0..train.data.texts.len() {
        let at = t * train.states.tokens * train.states.width;
        train.states.data[at] = f32::NAN;
    }
    for check_numerics in [false, true] {
        let _ = std::fs::remove_file(out.last());
        let options = RunOptions { check_numerics, ..Default::default() };
        let err = trainer::train(fresh(), &train, None, &enc.fingerprint, &out, &options, &Progress::hidden())
            .err()
            .unwrap()
            .to_string();
        // Found where the NaN entered (the states input), whether checked from the start or
        // after the loss went bad; the run's state before the step is saved and resumable.
        assert!(err.starts_with("step 1: input `states` holds "), "{err}");
        assert!(err.contains("NaN") && err.contains("last.safetensors"), "{err}");
        let saved = Checkpoint::load(&out.last()).unwrap();
        assert_eq!(saved.state.step, 0);
        assert!(saved.params.iter().all(|(_, t)| t.data.to_f64().iter().all(|v| v.is_finite())));
    }
}

#[test]
fn checkpoints_refuse_files_that_are_not_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    ParamStore::default().save(&weights).unwrap();
    let e = Checkpoint::load(&weights).err().unwrap().to_string();
    assert!(e.contains("not a calm training checkpoint") && e.contains("w.safetensors"), "{e}");
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a file").unwrap();
    assert!(Checkpoint::load(&junk).err().unwrap().to_string().contains("junk.safetensors"));
    assert!(Checkpoint::load(&dir.path().join("none.safetensors")).is_err());
}
