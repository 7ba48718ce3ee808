//! `calm run GRAPH`: the reference executor, with a summary of each output.

use std::path::PathBuf;

use burn::backend::flex::{Flex, FlexDevice};
use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::tensor::FloatDType;
use calm_runtime::host::Summary;
use calm_runtime::inputs::random_inputs;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::Reference;
use calm_runtime::safetensors;

use super::error::{read_graph, CliError};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Flex,
    Wgpu,
}

pub struct Args {
    pub file: PathBuf,
    pub weights: Option<PathBuf>,
    pub inputs: Option<PathBuf>,
    pub bind: Option<String>,
    pub seed: u64,
    pub output: Option<PathBuf>,
    pub backend: Backend,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let g = read_graph(&args.file)?;
    let (params, weights_from) = match &args.weights {
        Some(path) => (ParamStore::load(&g, path)?, path.display().to_string()),
        None => (ParamStore::init(&g, args.seed), format!("initialised from seed {}", args.seed)),
    };
    let (inputs, inputs_from) = match &args.inputs {
        Some(path) => (safetensors::read(path)?, path.display().to_string()),
        None => {
            let bindings = args.bind.as_deref().unwrap_or("").parse()?;
            (random_inputs(&g, &bindings, args.seed)?, format!("random from seed {}", args.seed))
        }
    };
    let (outputs, backend) = match args.backend {
        Backend::Flex => {
            (Reference::<Flex>::new(FlexDevice, FloatDType::F64).run(&g, &params, &inputs)?, "flex (CPU, f64)")
        }
        Backend::Wgpu => {
            (Reference::<Wgpu>::new(WgpuDevice::default(), FloatDType::F32).run(&g, &params, &inputs)?, "wgpu (f32)")
        }
    };
    if let Some(path) = &args.output {
        safetensors::write(path, &outputs)?;
    }
    println!("ran `{}` on {backend}; weights {weights_from}; inputs {inputs_from}", g.name);
    let width = outputs.keys().map(String::len).max().unwrap_or(6).max(6);
    println!(
        "{:<width$}  {:<16} {:>12} {:>12} {:>12} {:>12} {:>5} {:>5}",
        "output", "shape", "mean", "std", "min", "max", "nan", "inf"
    );
    // In the graph's order of outputs, not alphabetical.
    for o in &g.outputs {
        let t = &outputs[&o.name];
        let s = Summary::of(t);
        let shape = format!("{:?}", t.shape);
        println!(
            "{:<width$}  {:<16} {:>12.5e} {:>12.5e} {:>12.5e} {:>12.5e} {:>5} {:>5}",
            o.name, shape, s.mean, s.std, s.min, s.max, s.nan, s.inf
        );
    }
    if let Some(path) = &args.output {
        println!("wrote {}", path.display());
    }
    Ok(())
}
