//! Bounded fuzzing in CI: every target over its seeds, its kept corpus, its saved regressions
//! (inputs that once panicked) and mutated inputs
//! for `CALM_FUZZ_SECONDS` (default 8) each, and random valid graphs through the compiler and
//! the device (`CALM_FUZZ_GRAPHS`, default 24). Any panic, round-trip or invariant failure, or
//! device/reference mismatch fails the test and prints the input to keep as a regression.

use std::time::Duration;

use calm_fuzz::campaign::{broken_cap, fuzz, regressions_dir, Caps};
use calm_fuzz::graphs::{check_graph, random_graph, Verdict};
use calm_fuzz::targets::Target;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn campaign(target: Target) {
    let seconds = env_u64("CALM_FUZZ_SECONDS", 8);
    let seed = env_u64("CALM_FUZZ_SEED", 0x5eed) ^ target as u64;
    let report = fuzz(target, seed, Duration::from_secs(seconds), None, Caps::default());
    eprintln!(
        "{}: {} runs in {:.1} s ({} accepted, {} refused, {} kinds of error, corpus {})",
        target.name(),
        report.runs,
        report.seconds,
        report.accepted,
        report.refused,
        report.error_kinds,
        report.corpus
    );
    assert!(report.accepted > 0, "{}: no seed was accepted", target.name());
    assert!(report.refused > 0 && report.error_kinds > 3, "{}: mutations reached too few errors", target.name());
    if let Some(f) = report.findings.first() {
        let path = std::env::temp_dir().join(format!("calm-fuzz-{}-{}", target.name(), std::process::id()));
        std::fs::write(&path, &f.input).unwrap();
        panic!(
            "{}: {} inputs panicked; the first ({} bytes, saved to {}; copy it into {}) said: {}",
            target.name(),
            report.findings.len(),
            f.input.len(),
            path.display(),
            regressions_dir(target).display(),
            f.message
        );
    }
}

#[test]
fn fuzz_ir_json_and_verifier() {
    campaign(Target::IrJson);
}

#[test]
fn fuzz_safetensors() {
    campaign(Target::Safetensors);
}

#[test]
fn fuzz_crehate() {
    campaign(Target::Crehate);
}

#[test]
fn fuzz_tables() {
    campaign(Target::Table);
}

#[test]
fn fuzz_configs() {
    campaign(Target::Config);
}

#[test]
fn fuzz_bindings() {
    campaign(Target::Bind);
}

#[test]
fn fuzz_checkpoints() {
    campaign(Target::Checkpoint);
}

#[test]
fn random_graphs_compile_and_match_the_reference_or_are_refused() {
    let count = env_u64("CALM_FUZZ_GRAPHS", 24);
    let first = env_u64("CALM_FUZZ_SEED", 0x5eed);
    let (mut matched, mut refused, mut launches) = (0, Vec::new(), 0);
    for seed in first..first + count {
        let g = random_graph(seed);
        match check_graph(&g, seed, 1e-4) {
            Ok(Verdict::Matched { launches: l }) => {
                matched += 1;
                launches += l;
            }
            Ok(Verdict::Refused(why)) => refused.push(format!("seed {seed}: {why}")),
            Err(e) => panic!("seed {seed}: {e}\n{}", calm_ir::json::to_json(&g)),
        }
    }
    eprintln!("{count} random graphs: {matched} matched ({launches} launches), {} refused", refused.len());
    for r in &refused {
        eprintln!("  {r}");
    }
    assert!(matched * 4 >= count * 3, "most random graphs must compile: {refused:?}");
}

#[test]
fn an_input_over_a_cap_stops_the_campaign_and_is_saved() {
    let caps = Caps { per_input: Duration::from_secs(20), memory_bytes: 4 << 30 };
    assert!(broken_cap(&caps, Duration::from_secs(19), 1 << 30).is_none());
    assert!(broken_cap(&caps, Duration::from_secs(21), 0).unwrap().contains("per-input limit"));
    assert!(broken_cap(&caps, Duration::ZERO, 5 << 30).unwrap().contains("5120 MiB, over the limit of 4096"));
    // The checkpoint target's seed takes more than a millisecond: under a 1 ms cap the
    // campaign stops at it, naming and saving it.
    for (cap, broken) in
        [(["--input-seconds", "0.001"], "per-input limit"), (["--memory-mb", "1"], "over the limit of 1 MiB")]
    {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_calm-fuzz"))
            .args(["--target", "checkpoint", "--seconds", "30"])
            .args(cap)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains(broken) && stderr.contains("it is a finding (saved to "), "{stderr}");
        let saved = stderr.split("saved to ").nth(1).unwrap().split(';').next().unwrap();
        assert!(!std::fs::read(saved).unwrap().is_empty());
        std::fs::remove_file(saved).unwrap();
    }
}
