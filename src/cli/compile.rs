//! `calm compile GRAPH --bind ... --emit plan|summary`: the kernel plan of a graph.

use std::collections::BTreeMap;
use std::path::PathBuf;

use calm_ir::text::{group_digits, human_bytes, human_count};
use calm_ir::Bindings;
use calm_passes::compile::compile;
use calm_passes::lower::LowerOptions;
use calm_passes::plan::{ComputeUnit, FloatType, KernelPlan, Precision};
use calm_passes::PassLog;

use super::cuda;
use super::error::{read_graph, CliError, OtherError};

/// What `calm compile` prints or writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emit {
    /// The whole plan as JSON.
    Plan,
    /// Launches by kernel, modelled FLOPs and bytes, memory; before and after fusion.
    Summary,
    /// Every pattern fusion that fired and every one that declined, with the reason.
    Fusions,
    /// The CUDA C++ of every kernel, one file each, into a folder.
    Cuda(PathBuf),
    /// The CUDA C++ and its sm_90 PTX (NVRTC), with ptxas's registers, shared memory and spills.
    Ptx(PathBuf),
}

impl Emit {
    fn parse(values: &[String]) -> Result<Emit, OtherError> {
        let dir = |what: &str| match values.get(1) {
            Some(d) => Ok(PathBuf::from(d)),
            None => Err(OtherError(format!("--emit {what} needs a folder: --emit {what} DIR"))),
        };
        let no_dir = |e: Emit| match values.get(1) {
            Some(d) => {
                Err(OtherError(format!("--emit {}: unexpected `{d}` (only cuda and ptx write a folder)", values[0])))
            }
            None => Ok(e),
        };
        match values.first().map(String::as_str) {
            Some("summary") | None => no_dir(Emit::Summary),
            Some("plan") => no_dir(Emit::Plan),
            Some("fusions") => no_dir(Emit::Fusions),
            Some("cuda") => Ok(Emit::Cuda(dir("cuda")?)),
            Some("ptx") => Ok(Emit::Ptx(dir("ptx")?)),
            Some(other) => {
                Err(OtherError(format!("--emit `{other}`: expected summary, plan, fusions, cuda DIR or ptx DIR")))
            }
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Vulkan through wgpu (WGSL).
    Wgpu,
    /// CUDA, Hopper (sm_90): CUDA C++ by CubeCL's CUDA compiler.
    Cuda,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Graph file (calm-ir/1 JSON).
    pub file: PathBuf,
    /// Sizes of the graph's symbols, e.g. `batch=64,tokens=128`.
    #[arg(long)]
    pub bind: Option<String>,
    /// `summary`: launches, FLOPs and bytes before and after fusion, memory; `plan`: the plan as
    /// JSON; `fusions`: which fusions fired and which declined, and why; `cuda DIR` (with
    /// --target cuda): the CUDA C++ of every kernel into DIR; `ptx DIR`: that, compiled to sm_90
    /// PTX by NVRTC, with each kernel's registers, shared memory and spills.
    #[arg(long, num_args = 1..=2, value_names = ["WHAT", "DIR"], default_value = "summary")]
    pub emit: Vec<String>,
    /// The device the kernels are generated for.
    #[arg(long, value_enum, default_value_t = Target::Wgpu)]
    pub target: Target,
    /// Skip the fusion passes.
    #[arg(long)]
    pub no_fuse: bool,
    /// Element type of float buffers on the device.
    #[arg(long, value_enum, default_value_t = Float::F32)]
    pub float: Float,
    #[arg(long, value_enum, default_value_t = PrecisionArg::Highest, help = PRECISION_HELP)]
    pub precision: PrecisionArg,
}

/// The help of every command's `--precision`.
pub const PRECISION_HELP: &str =
    "What matrix products of f32 buffers may use, as in JAX and PyTorch: `highest` exact f32, \
`high` TF32 tensor cores allowed, `default` bf16 tensor cores allowed, on devices that report them (CUDA \
GPUs; never lavapipe). bf16 and f16 buffers use their own type's tensor cores whatever it says. Recorded in the \
plan and reports";

/// `--precision`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionArg {
    Highest,
    High,
    Default,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::Highest => Precision::Highest,
            PrecisionArg::High => Precision::High,
            PrecisionArg::Default => Precision::Default,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float {
    F32,
    F16,
    /// CUDA only (WGSL has no bf16).
    Bf16,
}

impl Float {
    pub fn plan_type(self) -> FloatType {
        match self {
            Float::F32 => FloatType::F32,
            Float::F16 => FloatType::F16,
            Float::Bf16 => FloatType::Bf16,
        }
    }
}

/// Launch count, FLOPs and bytes of a plan.
fn totals(plan: &KernelPlan) -> (usize, u64, u64) {
    let flops = plan.launches.values().map(|l| l.cost.flops).sum();
    let bytes = plan.launches.values().map(|l| l.cost.bytes_read + l.cost.bytes_written).sum();
    (plan.launches.len(), flops, bytes)
}

pub fn run(args: Args) -> Result<(), CliError> {
    let emit = Emit::parse(&args.emit)?;
    if matches!(emit, Emit::Cuda(_) | Emit::Ptx(_)) && args.target != Target::Cuda {
        return Err(OtherError("--emit cuda and --emit ptx generate CUDA: add --target cuda".into()).into());
    }
    if args.float == Float::Bf16 && args.target != Target::Cuda {
        return Err(OtherError("--float bf16 needs --target cuda (WGSL has no bf16)".into()).into());
    }
    let (file, fuse, float) = (args.file.as_path(), !args.no_fuse, args.float);
    let g = read_graph(file)?;
    let bindings: Bindings = args.bind.as_deref().unwrap_or("").parse()?;
    super::stats::check_bound(&g, &bindings, file)?;
    let base = match args.target {
        Target::Wgpu => LowerOptions::default(),
        // Hopper (sm_90, what the CUDA target compiles for): its tensor cores included.
        Target::Cuda => LowerOptions::sm90(),
    };
    let opts = LowerOptions { float: float.plan_type(), precision: args.precision.into(), ..base };
    let compiled = compile(&g, &bindings, fuse, &opts)?;
    let plan = compiled.plan;
    match emit {
        Emit::Plan => {
            println!("{}", plan.to_json());
            return Ok(());
        }
        Emit::Fusions => {
            print_fusions(&compiled.log, fuse);
            return Ok(());
        }
        Emit::Cuda(dir) => return cuda::write_sources(&plan, &dir, false),
        Emit::Ptx(dir) => return cuda::write_sources(&plan, &dir, true),
        Emit::Summary => {}
    }
    let unfused = compile(&g, &bindings, false, &opts)?.plan;
    println!("graph `{}` with {}, {:?} buffers, precision {}", g.name, bindings, float, plan.precision);
    println!("{:<12} {:>9} {:>12} {:>12}", "", "launches", "FLOPs", "bytes moved");
    for (label, p) in [("unfused", &unfused), (if fuse { "fused" } else { "compiled" }, &plan)] {
        let (n, flops, bytes) = totals(p);
        println!("{label:<12} {n:>9} {:>12} {:>12}", human_count(flops), human_bytes(bytes));
    }
    let mut by_kernel: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for l in plan.launches.values() {
        let e = by_kernel.entry(l.kernel.name()).or_default();
        e.0 += 1;
        e.1 += l.cost.flops;
        e.2 += l.cost.bytes_read + l.cost.bytes_written;
    }
    println!("\n{:<18} {:>9} {:>12} {:>12}", "kernel", "launches", "FLOPs", "bytes moved");
    for (k, (n, flops, bytes)) in by_kernel {
        println!("{k:<18} {n:>9} {:>12} {:>12}", human_count(flops), human_bytes(bytes));
    }
    let mut by_unit: BTreeMap<ComputeUnit, u64> = BTreeMap::new();
    for l in plan.launches.values() {
        *by_unit.entry(l.kernel.compute_unit()).or_default() += l.cost.flops;
    }
    let units: Vec<String> = by_unit.iter().map(|(u, f)| format!("{u} {}", human_count(*f))).collect();
    println!("\nFLOPs by execution unit: {}", units.join(", "));
    let m = &plan.memory;
    println!(
        "\nmemory: {} in {} slots for {} buffers (one allocation each: {}; {:.1}x less)",
        human_bytes(m.peak_bytes),
        group_digits(m.slots.len() as u64),
        group_digits(plan.buffers.len() as u64),
        human_bytes(m.naive_bytes),
        m.naive_bytes as f64 / m.peak_bytes.max(1) as f64
    );
    Ok(())
}

/// The notes of the pattern fusions, fired first, grouped by pass.
fn print_fusions(log: &PassLog, fuse: bool) {
    if !fuse {
        println!("fusion passes off (--no-fuse): nothing fired");
        return;
    }
    if log.notes.is_empty() {
        println!("no fusion pattern was found in this graph");
        return;
    }
    // Columns as wide as the longest pass name (`fuse_matmul_epilogues`).
    let width = log.notes.iter().map(|n| n.pass.len()).max().unwrap_or(0);
    for fired in [true, false] {
        let notes: Vec<_> = log.notes.iter().filter(|n| n.fired == fired).collect();
        println!("{} ({}):", if fired { "fired" } else { "declined" }, notes.len());
        // Notes that differ only in numbered scopes (`expert0`, `expert1`, ...) on one line.
        let mut groups: Vec<(&str, String, &str, Vec<&str>)> = Vec::new();
        for n in notes {
            let pattern = calm_ir::text::numbers_as_stars(&n.scope);
            match groups.iter_mut().find(|g| g.0 == n.pass && g.1 == pattern && g.2 == n.detail) {
                Some(g) => g.3.push(&n.scope),
                None => groups.push((n.pass, pattern, &n.detail, vec![&n.scope])),
            }
        }
        for (pass, pattern, detail, scopes) in groups {
            let scope =
                if scopes.len() == 1 { scopes[0].to_string() } else { format!("{pattern} ({}×)", scopes.len()) };
            println!("  {pass:<width$} {scope:<48} {detail}");
        }
    }
}
