//! Training on the tiny backbone and the tiny preset, on the first CREHate posts: a step lowers
//! the loss, a resumed run equals an uninterrupted one, checkpoints refuse what is not theirs.

use std::path::{Path, PathBuf};

use calm_models::{Backbone, CalmConfig};
use calm_passes::plan::Precision;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::gradients;
use calm_train::backbone::Encoder;
use calm_train::batch::{self, Split, StepKeys};
use calm_train::checkpoint::Checkpoint;
use calm_train::model::ModelSpec;
use calm_train::optim::AdamW;
use calm_train::progress::Progress;
use calm_train::trainer::{self, Backend, Executor, Outputs, RunOptions, Settings, Start};

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
        precision: Precision::Highest,
        max_tokens: 16,
    }
}

/// Resuming the run whose last checkpoint is `path`, on Flex at f32.
fn resume_on_flex(path: PathBuf) -> Start {
    Start::Resume { path, backend: Backend::Flex, precision: Precision::Highest }
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
            resume_on_flex(out.last())
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
        resume_on_flex(out.last()),
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
    let fresh =
        |backend| Start::Fresh { model: Box::new(model.clone()), settings: Settings { backend, ..settings(2) } };
    for t in 0..train.data.texts.len() {
        let at = t * train.states.tokens * train.states.width;
        train.states.data[at] = f32::NAN;
    }
    // Weights on the host (Flex) and on the device (wgpu), where one scalar finds the NaN.
    for (backend, check_numerics) in
        [(Backend::Flex, false), (Backend::Flex, true), (Backend::Wgpu, false), (Backend::Wgpu, true)]
    {
        let _ = std::fs::remove_file(out.last());
        let options = RunOptions { check_numerics, ..Default::default() };
        let err = trainer::train(fresh(backend), &train, None, &enc.fingerprint, &out, &options, &Progress::hidden())
            .err()
            .unwrap()
            .to_string();
        // Found where the NaN entered (the states input), whether checked from the start or
        // after the loss went bad; the run's state before the step is saved and resumable.
        assert!(err.starts_with("step 1: input `states` holds "), "{backend:?}: {err}");
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

/// Every step's loss in a run's JSON-lines log, by step.
fn logged_losses(log: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["losses"]["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_checkpoint_resumes_on_another_backend_to_the_same_losses() {
    let enc = Encoder::tiny(1);
    let train = split("train", 9, &enc);
    let model = ModelSpec::variant("full", &config(&enc)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, start: Start, stop: u64| {
        let out = Outputs { dir: dir.path().join(name), log: Some(dir.path().join(format!("{name}.jsonl"))) };
        let options = RunOptions { stop_after: Some(stop), ..Default::default() };
        trainer::train(start, &train, None, &enc.fingerprint, &out, &options, &Progress::hidden()).unwrap();
        out
    };
    let fresh =
        |backend| Start::Fresh { model: Box::new(model.clone()), settings: Settings { backend, ..settings(3) } };
    let other = |b| if b == Backend::Flex { Backend::Wgpu } else { Backend::Flex };
    for first in [Backend::Flex, Backend::Wgpu] {
        // 3 steps on one backend, then 5 on the other, against 8 on the first alone.
        let whole = run(&format!("{first:?}-whole"), fresh(first), 8);
        let split_run = run(&format!("{first:?}-split"), fresh(first), 3);
        let resumed = Start::Resume { path: split_run.last(), backend: other(first), precision: Precision::Highest };
        let split_run = run(&format!("{first:?}-split"), resumed, 8);
        let (a, b) = (logged_losses(whole.log.as_ref().unwrap()), logged_losses(split_run.log.as_ref().unwrap()));
        assert_eq!(b.iter().map(|l| l.0).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
        for ((step, x), (_, y)) in a.iter().zip(&b).skip(3) {
            assert!((x - y).abs() <= 1e-4, "{first:?} then {:?}, step {step}: {x} against {y}", other(first));
        }
        // The log says where each part ran; the checkpoint records the last.
        let log = std::fs::read_to_string(split_run.log.as_ref().unwrap()).unwrap();
        assert!(log.contains(&format!("\"backend\":\"{}\"", other(first).name())), "{log}");
        assert_eq!(Checkpoint::load(&split_run.last()).unwrap().state.settings.backend, other(first));
    }
}

#[test]
fn mixed_precision_stays_within_two_percent_of_f32_with_f32_master_weights() {
    let enc = Encoder::tiny(1);
    let train = split("train", 9, &enc);
    let model = ModelSpec::variant("full", &config(&enc)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |precision: Precision| {
        let name = precision.name();
        let out = Outputs { dir: dir.path().join(name), log: Some(dir.path().join(format!("{name}.jsonl"))) };
        let start = Start::Fresh { model: Box::new(model.clone()), settings: Settings { precision, ..settings(7) } };
        let options = RunOptions { stop_after: Some(20), ..Default::default() };
        trainer::train(start, &train, None, &enc.fingerprint, &out, &options, &Progress::hidden()).unwrap();
        (logged_losses(out.log.as_ref().unwrap()), Checkpoint::load(&out.last()).unwrap())
    };
    let (exact, _) = run(Precision::Highest);
    for precision in [Precision::High, Precision::Default] {
        let (mixed, ck) = run(precision);
        assert_eq!(mixed.len(), 20);
        let (x, y) = (exact[19].1, mixed[19].1);
        assert!((x - y).abs() <= 0.02 * x.abs(), "{}: loss {y} after 20 steps, f32 {x}", precision.name());
        // The rounding happened: the losses are not f32's.
        assert!(exact.iter().zip(&mixed).any(|(a, b)| a.1 != b.1), "{}: same losses as f32", precision.name());
        // Master weights and AdamW's moments stay f32: values bf16 (or TF32) cannot hold.
        assert_eq!(ck.state.settings.precision, precision);
        let mut low_bits = 0;
        for (name, t) in ck.params.iter() {
            let values = t.to_f32().unwrap_or_else(|| panic!("`{name}` is not f32"));
            assert!(matches!(t.data, calm_runtime::host::HostData::F32(_)), "`{name}`");
            low_bits += values.iter().filter(|v| v.to_bits() & 0x1FFF != 0).count();
            assert_eq!(ck.optimizer.m[name].len(), values.len());
        }
        assert!(low_bits > 0, "{}: the weights hold no bits below TF32's", precision.name());
    }
}

#[test]
fn the_fused_evaluator_uploads_the_weights_once_and_predicts_as_the_reference() {
    let enc = Encoder::tiny(1);
    let valid = split("valid", 2, &enc);
    let model = ModelSpec::variant("full", &config(&enc)).unwrap();
    let g = model.inference_graph().unwrap();
    let params = ParamStore::init(&g, 4);
    // 10 samples in batches of 4: 3 batches, the last padded.
    assert_eq!(valid.data.samples.len(), 10);
    let device = calm_runtime::device::select::Device::open(calm_runtime::device::select::DeviceChoice::Wgpu).unwrap();
    let float = calm_passes::plan::FloatType::F32;
    let fused =
        trainer::predict(&g, &params, &valid, Executor::Fused { device: &device, float }, 4, &Progress::hidden())
            .unwrap();
    assert_eq!(fused.weight_uploads, 1, "the weights went to the device once for 3 batches");
    let reference =
        trainer::predict(&g, &params, &valid, Executor::Reference(Backend::Flex), 4, &Progress::hidden()).unwrap();
    assert_eq!(reference.weight_uploads, 1);
    assert_eq!(fused.classes, reference.classes);
}

#[test]
fn weights_kept_on_the_backend_train_as_the_hosts_adamw_does() {
    use calm_train::resident::{Resident, Step};
    let enc = Encoder::tiny(1);
    let train = split("train", 4, &enc);
    let model = ModelSpec::variant("full", &config(&enc)).unwrap();
    let g = ModelSpec::for_reference(&model.training_graph().unwrap()).unwrap();
    let (mut host, mut host_adam) = (ParamStore::init(&g, 2), AdamW::new(0.01));
    // On the device even for Flex (whose runs keep their weights on the host), to compare.
    let (mut unused, mut adam) = (ParamStore::default(), AdamW::new(0.01));
    let mut resident = Resident::on_device(Backend::Flex, Precision::Highest, &g, &host, &mut adam).unwrap();
    let idx: Vec<usize> = (0..train.data.samples.len()).collect();
    for step in 0..3 {
        let keys = StepKeys { temperature: 1.0, seed: 3, offset: step };
        let inputs = batch::inputs(&g, &train, &idx, None, Some(keys));
        let f32s = burn::tensor::FloatDType::F32;
        let grads = gradients::<burn::backend::flex::Flex>(Default::default(), f32s, &g, &host, &inputs, "loss", false)
            .unwrap();
        host_adam.step(&mut host, &grads.grads, 1e-3);
        let Step::Done { loss, .. } = resident.step(&g, &inputs, (1e-3, false), &mut unused, &mut adam).unwrap() else {
            panic!("finite")
        };
        assert_eq!(loss, grads.loss, "step {step}: the same weights give the same loss");
    }
    let mut on_backend = ParamStore::init(&g, 9);
    resident.download(&mut on_backend, &mut adam).unwrap();
    assert_eq!(adam.steps, 3);
    let (mut moved, start) = (0, ParamStore::init(&g, 2));
    for (name, w) in host.iter() {
        let (a, b) = (w.to_f32().unwrap(), on_backend.get(name).unwrap().to_f32().unwrap());
        let init = start.get(name).unwrap().to_f32().unwrap();
        moved += a.iter().zip(&init).filter(|(x, y)| x != y).count();
        assert_eq!(a, b, "`{name}` after 3 steps on the backend and on the host");
        assert_eq!(adam.m[name], host_adam.m[name], "first moment of `{name}`");
        assert_eq!(adam.v[name], host_adam.v[name], "second moment of `{name}`");
    }
    assert!(moved > 0, "the steps changed the weights");
}
