//! `calm-fuzz`: longer fuzzing campaigns than CI's, e.g.
//! `cargo run --release -p calm-fuzz -- --target ir-json --seconds 600`.
//! Inputs that panic are written to `fuzz/regressions/<target>/` (replayed by the tests).

use std::time::Duration;

use calm_fuzz::campaign::{corpus_dir, fuzz, read_dir, regressions_dir, Caps};
use calm_fuzz::graphs::{check_graph, random_graph, Verdict};
use calm_fuzz::seeds::seeds;
use calm_fuzz::targets::Target;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Fuzz calm's readers (mutation fuzzing) or its compiler (random valid graphs)")]
struct Args {
    /// Readers to fuzz (all when none is given).
    #[arg(long, value_enum)]
    target: Vec<Target>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds one input may run before it is a finding (the process stops, saving it).
    #[arg(long, default_value_t = Caps::default().per_input.as_secs_f64())]
    input_seconds: f64,
    /// MiB the process may hold while an input runs before it is a finding (the same).
    #[arg(long, default_value_t = Caps::default().memory_bytes >> 20)]
    memory_mb: u64,
    /// Seed of the mutations (and first seed of the random graphs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Instead of the readers: check this many random graphs through the compiler and device.
    #[arg(long)]
    graphs: Option<u64>,
    /// Instead of fuzzing: write each target's seeds and regressions to DIR/<target>/ (the
    /// starting corpus of a libFuzzer run: `fuzz/libfuzzer/corpus`).
    #[arg(long, value_name = "DIR")]
    write_seeds: Option<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.write_seeds {
        for &target in Target::ALL {
            let out = dir.join(target.name());
            std::fs::create_dir_all(&out).expect("the seed folder can be made");
            let kept = [corpus_dir(target), regressions_dir(target)].into_iter().flat_map(|d| read_dir(&d));
            for (i, data) in seeds(target).into_iter().chain(kept.map(|(_, d)| d)).enumerate() {
                std::fs::write(out.join(format!("seed-{i}")), data).expect("a seed can be written");
            }
        }
        return;
    }
    if let Some(count) = args.graphs {
        let mut bad = 0;
        for seed in args.seed..args.seed + count {
            match check_graph(&random_graph(seed), seed, 1e-4) {
                Ok(Verdict::Matched { launches }) => println!("seed {seed}: matched ({launches} launches)"),
                Ok(Verdict::Refused(why)) => println!("seed {seed}: refused: {why}"),
                Err(e) => {
                    bad += 1;
                    println!("seed {seed}: MISMATCH {e}");
                }
            }
        }
        std::process::exit(if bad > 0 { 1 } else { 0 });
    }
    let targets = if args.target.is_empty() { Target::ALL.to_vec() } else { args.target.clone() };
    let caps =
        Caps { per_input: Duration::from_secs_f64(args.input_seconds.max(0.0)), memory_bytes: args.memory_mb << 20 };
    let mut found = 0;
    for target in targets {
        let r = fuzz(target, args.seed ^ target as u64, Duration::from_secs(args.seconds), None, caps);
        println!(
            "{:<12} {:>9} runs {:>7.1} s {:>8.0}/s  accepted {:>7}  refused {:>8}  error kinds {:>4}  corpus {:>5}  panics {}",
            target.name(),
            r.runs,
            r.seconds,
            r.runs as f64 / r.seconds.max(1e-9),
            r.accepted,
            r.refused,
            r.error_kinds,
            r.corpus,
            r.findings.len()
        );
        let dir = regressions_dir(target);
        for f in &r.findings {
            found += 1;
            std::fs::create_dir_all(&dir).expect("the regressions folder can be made");
            let name = format!("panic-{:016x}", fnv(&f.input));
            std::fs::write(dir.join(&name), &f.input).expect("a regression can be written");
            println!("  {name}: {}", f.message.lines().next().unwrap_or(""));
        }
    }
    std::process::exit(if found > 0 { 1 } else { 0 });
}

/// FNV-1a: a stable name for an input.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
