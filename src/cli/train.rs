//! `calm train`, `calm eval`, `calm study`: CALM and its baselines on a cultural dataset, from
//! the frozen backbone's cached states.

use std::path::{Path, PathBuf};

use calm_models::{Backbone, CalmConfig};
use calm_passes::plan::{FloatType, Precision};
use calm_runtime::device::select::Device;
use calm_train::backbone::{minilm_dir, Encoder};
use calm_train::backend::{Backend, BackendChoice};
use calm_train::batch::Split;
use calm_train::checkpoint::{params_for, Checkpoint};
use calm_train::model::{ModelKind, ModelSpec};
use calm_train::progress::Progress;
use calm_train::study;
use calm_train::trainer::{self, predict, score, Executor, Outputs, RunOptions, Settings, Start};
use clap::{Args, ValueEnum};

use super::compile::{Float, PrecisionArg};
use super::data::Columns;
use super::error::{write_file, CliError, OtherError};
use super::run::DeviceArg;

/// The frozen backbone whose states the head reads.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackboneArg {
    /// all-MiniLM-L6-v2 (d = 384), installed by scripts/fetch-minilm.
    Minilm,
    /// A tiny random BERT (d = 24) with a character tokenizer: smoke tests without downloads.
    Tiny,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// CUDA if a driver and GPU answer, else Flex.
    Auto,
    /// Burn Flex on the CPU.
    Flex,
    /// Burn wgpu on the Vulkan device.
    Wgpu,
    /// Burn's CUDA backend (with fusion) on an NVIDIA GPU.
    Cuda,
}

impl BackendArg {
    fn choice(self) -> BackendChoice {
        match self {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Flex => BackendChoice::Only(Backend::Flex),
            BackendArg::Wgpu => BackendChoice::Only(Backend::Wgpu),
            BackendArg::Cuda => BackendChoice::Only(Backend::Cuda),
        }
    }
}

/// The backend a command runs on: the one asked for (an error if it does not start), else the
/// checkpoint's where one is given and it starts, else `auto`'s. The choice is said on stderr.
fn start_backend(
    asked: Option<BackendArg>,
    recorded: Option<Backend>,
    progress: &Progress,
) -> Result<Backend, CliError> {
    let (backend, why) = match (asked, recorded) {
        (Some(a), _) => Backend::resolve(a.choice())?,
        (None, Some(b)) => match Backend::resolve(BackendChoice::Only(b)) {
            Ok(found) => found,
            Err(e) => {
                let (backend, _) = Backend::resolve(BackendChoice::Auto)?;
                (backend, Some(format!("the checkpoint's backend did not start ({e})")))
            }
        },
        (None, None) => Backend::resolve(BackendChoice::Auto)?,
    };
    match why {
        Some(why) => progress.note(&format!("backend {}: {} ({why})", backend.name(), backend.describe())),
        None => progress.note(&format!("backend {}: {}", backend.name(), backend.describe())),
    }
    Ok(backend)
}

/// Where samples come from and how their texts are encoded.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Without --text/--culture/--label, files are CREHate splits.
    #[command(flatten)]
    pub columns: Columns,
    /// Use only the first N texts of each file (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Cut texts to this many tokens ([CLS] and [SEP] included) before encoding.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
}

/// Loads a dataset (cultures and classes renumbered as a model's `names` when given) and its
/// states, encoded by `encoder` once and cached in $CALM_HOME/states.
fn load_split(
    path: &Path,
    data: &DataArgs,
    encoder: &Encoder,
    names: Option<(&[String], &[String])>,
    progress: &Progress,
) -> Result<Split, CliError> {
    let mut ds = calm_data::load(path, data.columns.spec().as_ref())?;
    if let Some(n) = data.limit {
        ds = ds.take(n);
    }
    if let Some((cultures, classes)) = names {
        ds.remap_cultures(cultures)?;
        ds.remap_classes(classes)?;
    }
    let cache = calm_runtime::profile::peaks::calm_home().join("states");
    let states = encoder.cached_states(&ds.texts, data.max_tokens, &cache, progress)?;
    Ok(Split { data: ds, states })
}

fn encoder(backbone: BackboneArg, seed: u64) -> Result<Encoder, CliError> {
    Ok(match backbone {
        BackboneArg::Minilm => Encoder::minilm(&minilm_dir())?,
        BackboneArg::Tiny => Encoder::tiny(seed),
    })
}

/// The encoder a checkpoint was trained with (its fingerprint names it).
fn encoder_of(fingerprint: &str) -> Result<Encoder, CliError> {
    let enc = match fingerprint.strip_prefix("tiny-bert:") {
        Some(seed) => Encoder::tiny(seed.parse().map_err(|_| OtherError(format!("unknown backbone `{fingerprint}`")))?),
        None => Encoder::minilm(&minilm_dir())?,
    };
    if enc.fingerprint != fingerprint {
        return Err(OtherError(format!(
            "the checkpoint was trained on backbone `{fingerprint}` but {} holds `{}`",
            minilm_dir().display(),
            enc.fingerprint
        ))
        .into());
    }
    Ok(enc)
}

/// The model: a preset or config, a kind and ablations.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Built-in config: `paper` (the spec), `small` (quarter widths) or `tiny`.
    #[arg(long, conflicts_with = "config", default_value = "paper")]
    pub preset: String,
    /// Config file (TOML, or JSON by extension); fields it omits keep the paper defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ModelArgs {
    /// The config, sized for the data: states of the backbone's width, the data's cultures and
    /// classes.
    fn config(&self, encoder: &Encoder, train: &Split) -> Result<CalmConfig, CliError> {
        let mut c = match &self.config {
            Some(path) => CalmConfig::from_file(path)?,
            None => CalmConfig::preset(&self.preset)?,
        };
        c.backbone = Backbone::States;
        c.states_width = encoder.width() as u64;
        c.cultures = train.data.cultures.len() as u64;
        c.classes = (train.data.classes.len() as u64).max(2);
        c.validate()?;
        Ok(c)
    }
}

/// Optimisation flags; unset ones come from the config's `[training]` (the spec's AdamW).
#[derive(Args, Debug, Clone)]
pub struct OptimArgs {
    /// Passes over the training data.
    #[arg(long, default_value_t = 5)]
    pub epochs: u64,
    /// Samples per step (default: the config's, 64).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate of AdamW (default: the config's, 3e-5).
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW's decoupled weight decay (default: the config's, 0.01).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Share of the steps spent warming up linearly (default: the config's, 0.1); then the
    /// rate decays linearly to 0.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Seed of the weights, batch order, dropout and Gumbel noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Burn backend of the training steps, the validation and the encoding of texts: `auto`
    /// (CUDA if it starts, else Flex) unless given; a resumed run keeps its checkpoint's where
    /// that starts. The choice is printed and logged.
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// Mixed precision of the training steps' matrix products: `highest` f32, `high` TF32,
    /// `default` bf16 operands (f32 products, sums, master weights and AdamW state whatever
    /// it says). On CUDA bf16 operands are cast (tensor cores); on Flex and wgpu their rounding
    /// is emulated in f32 (same losses, no speed-up). A resumed run keeps its checkpoint's
    /// unless given.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
}

impl OptimArgs {
    fn settings(&self, c: &CalmConfig, max_tokens: usize, backend: Backend) -> Result<Settings, CliError> {
        let s = Settings {
            epochs: self.epochs,
            batch_size: self.batch.unwrap_or(c.training.batch_size as usize),
            learning_rate: self.lr.unwrap_or(c.training.learning_rate),
            weight_decay: self.weight_decay.unwrap_or(c.training.weight_decay),
            warmup_fraction: self.warmup.unwrap_or(c.training.warmup_fraction),
            seed: self.seed,
            backend,
            precision: self.precision.map_or(Default::default(), Into::into),
            max_tokens,
        };
        if s.epochs == 0 || s.batch_size == 0 {
            return Err(OtherError("--epochs and --batch must be at least 1".into()).into());
        }
        if !(s.learning_rate.is_finite() && s.learning_rate > 0.0) {
            return Err(OtherError(format!("--lr {} must be a positive number", s.learning_rate)).into());
        }
        if !(s.weight_decay.is_finite() && s.weight_decay >= 0.0 && (0.0..=1.0).contains(&s.warmup_fraction)) {
            return Err(OtherError("--weight-decay must be ≥ 0 and --warmup in [0, 1]".into()).into());
        }
        Ok(s)
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training split (a CREHate CSV, or a table with --text/--culture/--label).
    #[arg(long)]
    pub train: PathBuf,
    /// Validation split, scored after every epoch; the best epoch's checkpoint is kept.
    #[arg(long)]
    pub valid: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model_args: ModelArgs,
    /// `calm` (with --variant ablations), or a baseline on mean-pooled states and the
    /// one-hot culture: `linear` (a probe) or `mlp` (two layers).
    #[arg(long, value_enum, default_value_t = ModelArg::Calm)]
    pub model: ModelArg,
    /// Ablations of CALM, comma-separated (see `calm ablations`).
    #[arg(long)]
    pub variant: Option<String>,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[arg(long, value_enum, default_value_t = BackboneArg::Minilm)]
    pub backbone: BackboneArg,
    /// Directory of the checkpoints: last.safetensors (every epoch and when stopped) and
    /// best.safetensors (best validation macro-F1).
    #[arg(long, short, default_value = "runs/calm")]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint, with its settings.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps in all (the schedule still spans every epoch); --resume
    /// continues.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Check every value of every step's forward pass and stop at the first NaN or overflow,
    /// naming the node (slow). Without it, a step whose loss or gradients are not finite still
    /// stops the run, saves its state and names the node.
    #[arg(long)]
    pub check_numerics: bool,
    /// Append a JSON line per step and per validation to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bars or notes.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    Calm,
    Linear,
    Mlp,
}

fn progress(quiet: bool) -> Progress {
    if quiet {
        Progress::hidden()
    } else {
        Progress::stderr()
    }
}

pub fn train(args: TrainArgs) -> Result<(), CliError> {
    let progress = progress(args.quiet);
    let outputs = Outputs { dir: args.out.clone(), log: args.json.clone() };
    let (start, enc, train, valid) = if args.resume {
        let ck = Checkpoint::load(&outputs.last())?;
        let backend = start_backend(args.optim.backend, Some(ck.state.settings.backend), &progress)?;
        let precision = args.optim.precision.map_or(ck.state.settings.precision, Into::into);
        let enc = encoder_of(&ck.state.backbone)?.on(backend);
        let data = DataArgs { max_tokens: ck.state.settings.max_tokens, ..args.data.clone() };
        let train = load_split(&args.train, &data, &enc, Some((&ck.state.cultures, &ck.state.classes)), &progress)?;
        let valid = match &args.valid {
            Some(v) => Some(load_split(v, &data, &enc, Some((&ck.state.cultures, &ck.state.classes)), &progress)?),
            None => None,
        };
        progress.note(&format!(
            "resuming {} at step {}/{}",
            outputs.last().display(),
            ck.state.step,
            ck.state.total_steps
        ));
        (Start::Resume { path: outputs.last(), backend, precision }, enc, train, valid)
    } else {
        let backend = start_backend(args.optim.backend, None, &progress)?;
        let enc = encoder(args.backbone, args.optim.seed)?.on(backend);
        let train = load_split(&args.train, &args.data, &enc, None, &progress)?;
        let valid = match &args.valid {
            Some(v) => {
                Some(load_split(v, &args.data, &enc, Some((&train.data.cultures, &train.data.classes)), &progress)?)
            }
            None => None,
        };
        let config = args.model_args.config(&enc, &train)?;
        let kind = match args.model {
            ModelArg::Calm => ModelKind::Calm,
            ModelArg::Linear => ModelKind::Linear,
            ModelArg::Mlp => ModelKind::Mlp,
        };
        if kind != ModelKind::Calm && args.variant.is_some() {
            return Err(OtherError("--variant applies to --model calm only".into()).into());
        }
        let mut model = ModelSpec::variant(args.variant.as_deref().unwrap_or("full"), &config)?;
        if model.kind != ModelKind::Calm {
            return Err(OtherError(format!("--variant {}: use --model {} instead", model.name(), model.name())).into());
        }
        model.kind = kind;
        let settings = args.optim.settings(&config, args.data.max_tokens, backend)?;
        (Start::Fresh { model: Box::new(model), settings }, enc, train, valid)
    };
    let options = RunOptions { stop_after: args.max_steps, check_numerics: args.check_numerics };
    let summary = trainer::train(start, &train, valid.as_ref(), &enc.fingerprint, &outputs, &options, &progress)?;
    println!(
        "trained {} of {} steps on {} ({} precision; {:.2} s/step, {:.1} samples/s); last loss {:.4}; checkpoints in {}",
        summary.steps,
        summary.total_steps,
        summary.backend.name(),
        summary.precision.name(),
        summary.seconds_per_step,
        summary.samples_per_second,
        summary.last_loss,
        args.out.display()
    );
    if let Some(b) = &summary.best {
        println!(
            "best: epoch {} (step {}), valid accuracy {:.4}, macro-F1 {:.4}",
            b.epoch, b.step, b.accuracy, b.macro_f1
        );
    }
    Ok(())
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExecutorArg {
    /// Op by op on Burn (the checkpoint's training backend).
    Reference,
    /// The compiled, fused plan on a device.
    Fused,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint written by `calm train` (best.safetensors or last.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The split to score.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub data_args: DataArgs,
    #[arg(long, value_enum, default_value_t = ExecutorArg::Reference)]
    pub executor: ExecutorArg,
    /// Burn backend of the reference executor and of the encoding of texts: the
    /// checkpoint's where it starts, else `auto` (CUDA, then Flex), unless given.
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// Device of the fused executor.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Float type of the fused executor's buffers.
    #[arg(long, value_enum, default_value_t = Float::F32)]
    pub float: Float,
    /// Run both executors and report how often their predictions agree.
    #[arg(long)]
    pub compare: bool,
    /// Samples per forward.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Also write the scores as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn eval(args: EvalArgs) -> Result<(), CliError> {
    let progress = progress(args.quiet);
    let ck = Checkpoint::load(&args.checkpoint)?;
    let backend = start_backend(args.backend, Some(ck.state.settings.backend), &progress)?;
    let enc = encoder_of(&ck.state.backbone)?.on(backend);
    let data = DataArgs { max_tokens: ck.state.settings.max_tokens, ..args.data_args.clone() };
    let split = load_split(&args.data, &data, &enc, Some((&ck.state.cultures, &ck.state.classes)), &progress)?;
    let g = ck.state.model.inference_graph()?;
    let weights = params_for(&g, &ck.params, &args.checkpoint)?;
    let batch = args.batch.max(1);
    let reference = || -> Result<Vec<u32>, CliError> {
        Ok(predict(&g, &weights, &split, Executor::Reference(backend), batch, &progress)?.classes)
    };
    let fused = || -> Result<(Vec<u32>, String), CliError> {
        let device = Device::open(args.device.into())?;
        let float: FloatType = args.float.plan_type();
        let preds = predict(&g, &weights, &split, Executor::Fused { device: &device, float }, batch, &progress)?;
        Ok((preds.classes, device.name()))
    };
    let (preds, how, agreement) = match (args.executor, args.compare) {
        (ExecutorArg::Reference, false) => {
            (reference()?, format!("the reference executor on {}", backend.name()), None)
        }
        (ExecutorArg::Fused, false) => {
            let (p, name) = fused()?;
            (p, format!("the fused plan on {name}"), None)
        }
        (executor, true) => {
            let r = reference()?;
            let (f, name) = fused()?;
            let same = r.iter().zip(&f).filter(|(a, b)| a == b).count();
            let agreement = same as f64 / r.len().max(1) as f64;
            let preds = if executor == ExecutorArg::Fused { f } else { r };
            (preds, format!("both executors (fused on {name})"), Some((same, agreement)))
        }
    };
    let report = score(&split, &preds, &ck.state);
    println!("{} on {} ({} samples) by {how}:", ck.state.model.name(), args.data.display(), split.data.samples.len());
    print!("{report}");
    if let Some((same, a)) = agreement {
        println!("fused and reference predictions agree on {same} of {} samples ({:.2}%)", preds.len(), 100.0 * a);
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({"model": ck.state.model.name(), "data": args.data, "report": report,
            "agreement": agreement.map(|(_, a)| a)});
        write_file(path, serde_json::to_string_pretty(&json).expect("reports serialise").as_bytes())?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct StudyArgs {
    #[arg(long)]
    pub train: PathBuf,
    #[arg(long)]
    pub valid: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Built-in config of CALM's variants: `small` (quarter widths), `paper` or `tiny`.
    #[arg(long, conflicts_with = "config", default_value = "small")]
    pub preset: String,
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Models, comma-separated: `full`, ablation names (`a+b` for several at once), `linear`,
    /// `mlp`. Default: full, each of the nine ablations, and both baselines.
    #[arg(long)]
    pub variants: Option<String>,
    /// Seeds per model (0..N).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[arg(long, value_enum, default_value_t = BackboneArg::Minilm)]
    pub backbone: BackboneArg,
    /// Where the runs, study.md, study.svg and study.json go; runs already done there are kept.
    #[arg(long, short, default_value = "runs/study")]
    pub out: PathBuf,
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn study(args: StudyArgs) -> Result<(), CliError> {
    let progress = progress(args.quiet);
    let backend = start_backend(args.optim.backend, None, &progress)?;
    let enc = encoder(args.backbone, 0)?.on(backend);
    let train = load_split(&args.train, &args.data, &enc, None, &progress)?;
    let valid =
        load_split(&args.valid, &args.data, &enc, Some((&train.data.cultures, &train.data.classes)), &progress)?;
    let config = ModelArgs { preset: args.preset.clone(), config: args.config.clone() }.config(&enc, &train)?;
    let names: Vec<String> = match &args.variants {
        Some(list) => list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => ["full"]
            .into_iter()
            .map(String::from)
            .chain(calm_passes::Ablation::ALL.iter().map(|a| a.name().to_string()))
            .chain(["linear".into(), "mlp".into()])
            .collect(),
    };
    let variants = names.iter().map(|n| ModelSpec::variant(n, &config)).collect::<Result<Vec<_>, _>>()?;
    if args.seeds == 0 {
        return Err(OtherError("--seeds must be at least 1".into()).into());
    }
    let settings = args.optim.settings(&config, args.data.max_tokens, backend)?;
    let seeds: Vec<u64> = (0..args.seeds).collect();
    std::fs::create_dir_all(&args.out).map_err(|source| CliError::Write { path: args.out.clone(), source })?;
    let plan = study::Plan {
        variants: &variants,
        seeds: &seeds,
        settings: &settings,
        backbone: &enc.fingerprint,
        out: &args.out,
    };
    let results = study::run(&plan, &train, &valid, &progress)?;
    let (md, svg, json) = study::outputs(&args.out);
    let table = study::table(&results);
    let title = format!(
        "CALM ({}) on {}: {} epochs, batch {}, lr {}, {} seeds",
        args.config.as_ref().map_or(format!("preset {}", args.preset), |c| c.display().to_string()),
        args.valid.display(),
        settings.epochs,
        settings.batch_size,
        settings.learning_rate,
        args.seeds
    );
    write_file(
        &md,
        format!("{title}\n\nValidation accuracy (%) per culture, mean ± std over seeds; macro-F1 overall.\n\n{table}")
            .as_bytes(),
    )?;
    write_file(&svg, study::chart(&results, &title).as_bytes())?;
    write_file(&json, serde_json::to_string_pretty(&results).expect("results serialise").as_bytes())?;
    println!("{title}\n\n{table}");
    let seconds: f64 = results.iter().map(|r| r.seconds).sum();
    println!(
        "{} runs, {:.0} s of training and scoring; wrote {}, {}, {}",
        results.len(),
        seconds,
        md.display(),
        svg.display(),
        json.display()
    );
    Ok(())
}

/// `calm bench --train-step`: the training step on each backend and precision, side by side.
pub fn bench_train_step(args: &super::bench::Args, sizes: &str) -> Result<(), CliError> {
    let bindings: calm_ir::Bindings = sizes.parse()?;
    let size = |name: &str| {
        bindings
            .get(name)
            .ok_or_else(|| OtherError(format!("--train-step `{sizes}`: give {name}=N (batch and tokens)")))
    };
    let (batch, tokens) = (size("batch")? as usize, size("tokens")? as usize);
    if batch == 0 || tokens == 0 {
        return Err(OtherError("--train-step: batch and tokens must be at least 1".into()).into());
    }
    let mut config = CalmConfig::preset(&args.train_preset)?;
    (config.backbone, config.states_width, config.cultures, config.classes) = (Backbone::States, 384, 5, 2);
    config.validate()?;
    let model = ModelSpec::variant("full", &config)?;
    let progress = Progress::stderr();
    let backends = if args.train_backends.is_empty() {
        let mut found = vec![Backend::Flex];
        if Backend::resolve(BackendChoice::Only(Backend::Cuda)).is_ok() {
            found.insert(0, Backend::Cuda);
        }
        found
    } else {
        let mut found = Vec::new();
        for a in &args.train_backends {
            found.push(start_backend(Some(*a), None, &progress)?);
        }
        found
    };
    let split = calm_train::bench::random_split(&model, batch, tokens, 1);
    println!(
        "training step of CALM ({} preset, d = 384), batch {batch}, tokens {tokens}, median of {} after one untimed:",
        args.train_preset,
        args.iters.max(1)
    );
    let mut rows = Vec::new();
    for &backend in &backends {
        for &precision in &args.train_precisions {
            progress.note(&format!("timing {} at {} precision...", backend.name(), Precision::from(precision).name()));
            let t = calm_train::bench::train_step(&model, &split, backend, precision.into(), args.iters)?;
            let first = rows.first().map_or(t.step, |r: &calm_train::bench::StepTime| r.step);
            println!(
                "  {:<5} {:<8} {:>10.1} ms a step {:>6.2}x the first row, loss {:.4}",
                backend.name(),
                Precision::from(precision).name(),
                t.step * 1e3,
                t.step / first,
                t.loss
            );
            rows.push(t);
        }
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"train_step": {"preset": args.train_preset, "batch": batch, "tokens": tokens, "rows": rows}});
        write_file(path, serde_json::to_string_pretty(&doc).expect("json").as_bytes())?;
    }
    Ok(())
}
