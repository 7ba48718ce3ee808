//! `calm run GRAPH`: the compiled plan on a device (or the reference executor), with a summary
//! of each output; `--compare` runs both.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::tensor::FloatDType;
use calm_ir::Graph;
use calm_passes::compile::compile;
use calm_passes::lower::LowerOptions;
use calm_passes::plan::Precision;
use calm_runtime::device::select::{Device, DeviceChoice};
use calm_runtime::host::{max_relative_error, HostTensor, Summary};
use calm_runtime::inputs::random_inputs;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::{bind_inputs, NonFinite, Reference};
use calm_runtime::safetensors;

use super::compile::{Float, PrecisionArg};
use super::error::{read_graph, CliError, OtherError};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Flex,
    Wgpu,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executor {
    Fused,
    Reference,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Auto,
    Wgpu,
    Cuda,
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> DeviceChoice {
        match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Wgpu => DeviceChoice::Wgpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Graph file (calm-ir/1 JSON).
    pub file: PathBuf,
    /// Weights (safetensors), keyed by parameter name.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Inputs (safetensors), keyed by input name; their shapes bind the symbols.
    #[arg(long, conflicts_with = "bind")]
    pub inputs: Option<PathBuf>,
    /// Sizes of the graph's symbols for random inputs, e.g. `batch=4,tokens=16`.
    #[arg(long)]
    pub bind: Option<String>,
    /// Seed of random inputs and initial weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write every output to this safetensors file.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// `fused`: the compiled plan on a device; `reference`: op by op on Burn. Default: fused
    /// when a device starts.
    #[arg(long, value_enum)]
    pub executor: Option<Executor>,
    /// Device of the fused executor: `auto` tries CUDA, then Vulkan through wgpu.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Element type of float buffers on the device.
    #[arg(long, value_enum, default_value_t = Float::F32)]
    pub float: Float,
    #[arg(long, value_enum, default_value_t = PrecisionArg::Highest, help = super::compile::PRECISION_HELP)]
    pub precision: PrecisionArg,
    /// Skip the fusion passes (fused executor).
    #[arg(long)]
    pub no_fuse: bool,
    /// Run both executors and print the largest relative error of each output.
    #[arg(long)]
    pub compare: bool,
    /// Backend of the reference executor: `flex` (CPU, f64) or `wgpu` (f32).
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    pub backend: Backend,
    /// Fail at the first node whose result holds a NaN, or an infinity its arguments did not
    /// hold (an overflow), naming it; NaN or infinity in the inputs and weights are named too.
    /// On the fused executor the outputs are checked and a fault is then located on the
    /// reference executor (slow: every value is read back).
    #[arg(long)]
    pub check_numerics: bool,
}

type Outputs = BTreeMap<String, HostTensor>;

fn reference(
    backend: Backend,
    g: &Graph,
    params: &ParamStore,
    inputs: &Outputs,
    check_numerics: bool,
) -> Result<(Outputs, String), CliError> {
    Ok(match backend {
        Backend::Flex => (
            Reference::<Flex>::new(FlexDevice, FloatDType::F64)
                .checking_numerics(check_numerics)
                .run(g, params, inputs)?,
            "reference on flex (CPU, f64)".into(),
        ),
        Backend::Wgpu => (
            Reference::<Wgpu>::new(WgpuDevice::default(), FloatDType::F32)
                .checking_numerics(check_numerics)
                .run(g, params, inputs)?,
            "reference on wgpu (f32)".into(),
        ),
    })
}

fn fused(
    device: &Device,
    args: &Args,
    g: &Graph,
    params: &ParamStore,
    inputs: &Outputs,
) -> Result<(Outputs, String), CliError> {
    let bindings = bind_inputs(g, inputs)?;
    let opts =
        LowerOptions { float: args.float.plan_type(), precision: args.precision.into(), ..device.lower_options() };
    let plan = compile(g, &bindings, !args.no_fuse, &opts)?.plan;
    let launches = plan.launches.len();
    let out = device.run(plan, params, inputs)?;
    Ok((
        out,
        format!(
            "{} kernel launches on {} ({:?} buffers, precision {}{})",
            launches,
            device.name(),
            args.float,
            Precision::from(args.precision),
            if !args.no_fuse { "" } else { ", unfused" }
        ),
    ))
}

/// `--check-numerics` on the fused executor: a non-finite output is located on the reference
/// executor in f32 (the plan's precision, not the oracle's f64, where an f32 overflow would not
/// happen); one that the reference does not reproduce is an overflow of narrower buffers or a
/// kernel fault.
fn check_fused(g: &Graph, params: &ParamStore, inputs: &Outputs, got: &Outputs, float: Float) -> Result<(), CliError> {
    let Some((name, found)) = g.outputs.iter().find_map(|o| NonFinite::scan(&got[&o.name]).map(|f| (&o.name, f)))
    else {
        return Ok(());
    };
    let want = Reference::<Flex>::new(FlexDevice, FloatDType::F32).checking_numerics(true).run(g, params, inputs)?;
    match NonFinite::scan(&want[name]) {
        Some(w) if (w.nan, w.inf) == (found.nan, found.inf) => Ok(()),
        w => Err(OtherError(format!(
            "fused output `{name}` holds {found}, where the reference executor (f32) computes {}: {}",
            w.map_or("every value finite".to_string(), |w| w.to_string()),
            if float == Float::F32 {
                "a kernel fault on this device"
            } else {
                "an overflow of the plan's narrower floats, or a kernel fault"
            }
        ))
        .into()),
    }
}

/// Each output's largest error relative to its largest magnitude.
fn relative_errors(want: &Outputs, got: &Outputs) -> Vec<(String, f64)> {
    want.iter().map(|(name, w)| (name.clone(), max_relative_error(w, &got[name], f64::MIN_POSITIVE).0)).collect()
}

pub fn run(args: Args) -> Result<(), CliError> {
    let g = read_graph(&args.file)?;
    let (params, weights_from) = match &args.weights {
        Some(path) => (ParamStore::load(&g, path)?, path.display().to_string()),
        None => (ParamStore::try_init(&g, args.seed)?, format!("initialised from seed {}", args.seed)),
    };
    let (inputs, inputs_from) = match &args.inputs {
        Some(path) => (safetensors::read(path)?, path.display().to_string()),
        None => {
            let bindings = args.bind.as_deref().unwrap_or("").parse()?;
            (random_inputs(&g, &bindings, args.seed)?, format!("random from seed {}", args.seed))
        }
    };
    let choice = DeviceChoice::from(args.device);
    // The fused executor by default when a device starts; a device asked for must start.
    let device = match (args.executor, args.compare) {
        (Some(Executor::Reference), false) => None,
        (Some(Executor::Fused), _) | (_, true) => Some(Device::open(choice)?),
        (None, false) if choice != DeviceChoice::Auto => Some(Device::open(choice)?),
        (None, false) => match Device::open(choice) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("calm: note: {e}; running the reference executor");
                None
            }
        },
    };
    let (outputs, how) = match &device {
        Some(d) => {
            let (outputs, how) = fused(d, &args, &g, &params, &inputs)?;
            if args.check_numerics {
                check_fused(&g, &params, &inputs, &outputs, args.float)?;
            }
            (outputs, how)
        }
        None => reference(args.backend, &g, &params, &inputs, args.check_numerics)?,
    };
    let errors = if args.compare {
        let (want, _) = reference(args.backend, &g, &params, &inputs, false)?;
        Some(relative_errors(&want, &outputs))
    } else {
        None
    };
    if let Some(path) = &args.output {
        safetensors::write(path, &outputs)?;
    }
    println!("ran `{}`: {how}; weights {weights_from}; inputs {inputs_from}", g.name);
    let width = outputs.keys().map(String::len).max().unwrap_or(6).max(6);
    let compare_head = if errors.is_some() { format!(" {:>14}", "vs reference") } else { String::new() };
    println!(
        "{:<width$}  {:<16} {:>12} {:>12} {:>12} {:>12} {:>5} {:>5}{compare_head}",
        "output", "shape", "mean", "std", "min", "max", "nan", "inf"
    );
    // In the graph's order of outputs, not alphabetical.
    for o in &g.outputs {
        let t = &outputs[&o.name];
        let s = Summary::of(t);
        let shape = format!("{:?}", t.shape);
        let err = errors
            .as_ref()
            .map(|e| format!(" {:>14.2e}", e.iter().find(|(n, _)| *n == o.name).map_or(0.0, |(_, e)| *e)))
            .unwrap_or_default();
        println!(
            "{:<width$}  {:<16} {:>12.5e} {:>12.5e} {:>12.5e} {:>12.5e} {:>5} {:>5}{err}",
            o.name, shape, s.mean, s.std, s.min, s.max, s.nan, s.inf
        );
    }
    if let Some(path) = &args.output {
        println!("wrote {}", path.display());
    }
    Ok(())
}
