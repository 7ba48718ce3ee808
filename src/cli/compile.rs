//! `calm compile GRAPH --bind ... --emit plan|summary`: the kernel plan of a graph.

use std::collections::BTreeMap;
use std::path::Path;

use calm_ir::text::{group_digits, human_bytes, human_count};
use calm_ir::Bindings;
use calm_passes::compile::compile;
use calm_passes::lower::LowerOptions;
use calm_passes::plan::{FloatType, KernelPlan};
use calm_passes::PassLog;

use super::error::{read_graph, CliError};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// The whole plan as JSON.
    Plan,
    /// Launches by kernel, modelled FLOPs and bytes, memory; before and after fusion.
    Summary,
    /// Every pattern fusion that fired and every one that declined, with the reason.
    Fusions,
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
    let flops = plan.launches.iter().map(|l| l.cost.flops).sum();
    let bytes = plan.launches.iter().map(|l| l.cost.bytes_read + l.cost.bytes_written).sum();
    (plan.launches.len(), flops, bytes)
}

pub fn run(file: &Path, bind: &str, emit: Emit, fuse: bool, float: Float) -> Result<(), CliError> {
    let g = read_graph(file)?;
    let bindings: Bindings = bind.parse()?;
    super::stats::check_bound(&g, &bindings, file)?;
    let opts = LowerOptions { float: float.plan_type(), ..LowerOptions::default() };
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
        Emit::Summary => {}
    }
    let unfused = compile(&g, &bindings, false, &opts)?.plan;
    println!("graph `{}` with {}, {:?} buffers", g.name, bindings, float);
    println!("{:<12} {:>9} {:>12} {:>12}", "", "launches", "FLOPs", "bytes moved");
    for (label, p) in [("unfused", &unfused), (if fuse { "fused" } else { "compiled" }, &plan)] {
        let (n, flops, bytes) = totals(p);
        println!("{label:<12} {n:>9} {:>12} {:>12}", human_count(flops), human_bytes(bytes));
    }
    let mut by_kernel: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for l in &plan.launches {
        let e = by_kernel.entry(l.kernel.name()).or_default();
        e.0 += 1;
        e.1 += l.cost.flops;
        e.2 += l.cost.bytes_read + l.cost.bytes_written;
    }
    println!("\n{:<18} {:>9} {:>12} {:>12}", "kernel", "launches", "FLOPs", "bytes moved");
    for (k, (n, flops, bytes)) in by_kernel {
        println!("{k:<18} {n:>9} {:>12} {:>12}", human_count(flops), human_bytes(bytes));
    }
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
    for fired in [true, false] {
        let notes: Vec<_> = log.notes.iter().filter(|n| n.fired == fired).collect();
        println!("{} ({}):", if fired { "fired" } else { "declined" }, notes.len());
        // Notes that differ only in numbered scopes (`expert0`, `expert1`, ...) on one line.
        let mut groups: Vec<(&str, String, &str, Vec<&str>)> = Vec::new();
        for n in notes {
            let pattern = numbers_as_stars(&n.scope);
            match groups.iter_mut().find(|g| g.0 == n.pass && g.1 == pattern && g.2 == n.detail) {
                Some(g) => g.3.push(&n.scope),
                None => groups.push((n.pass, pattern, &n.detail, vec![&n.scope])),
            }
        }
        for (pass, pattern, detail, scopes) in groups {
            let scope =
                if scopes.len() == 1 { scopes[0].to_string() } else { format!("{pattern} ({}×)", scopes.len()) };
            println!("  {pass:<18} {scope:<48} {detail}");
        }
    }
}

/// `calm/moe/dim0/expert3` → `calm/moe/dim*/expert*`.
fn numbers_as_stars(scope: &str) -> String {
    let mut out = String::with_capacity(scope.len());
    let mut in_number = false;
    for c in scope.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('*');
            }
            in_number = true;
        } else {
            out.push(c);
            in_number = false;
        }
    }
    out
}
