//! Campaigns: a target run over its seeds, its saved regressions, and then mutated inputs for a
//! bounded time. A panic anywhere is a finding, kept with its input.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::mutate::{mutate, Rng};
use crate::seeds::seeds;
use crate::targets::{Outcome, Target};

/// An input that made a target panic, and the panic's message.
#[derive(Debug, Clone)]
pub struct Finding {
    pub input: Vec<u8>,
    pub message: String,
}

/// What a campaign did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: Target,
    pub runs: u64,
    pub accepted: u64,
    pub refused: u64,
    /// Distinct kinds of error message seen (what steers the corpus).
    pub error_kinds: usize,
    pub corpus: usize,
    pub seconds: f64,
    pub findings: Vec<Finding>,
}

/// `fuzz/corpus/<target>`: inputs kept from libFuzzer runs (minimised to the coverage they
/// reached), replayed by every campaign and mutated further.
pub fn corpus_dir(target: Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target.name())
}

/// `fuzz/regressions/<target>`: inputs that once made the target panic (kept after the fix).
pub fn regressions_dir(target: Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions").join(target.name())
}

/// Every file of `dir` (none if it does not exist), in name order.
pub fn read_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).ok()?)))
        .collect();
    files.sort();
    files
}

thread_local! {
    /// Set while this thread runs a target: its panic message lands here instead of stderr.
    static CAPTURE: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// A panic hook, installed once, that records the messages of threads running a target and
/// leaves every other panic to the previous hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                        let payload = info.payload();
                        let text = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        *slot = Some(format!("{text}{at}"));
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs `target` on `data`: its outcome, or the panic message.
pub fn run_one(target: Target, data: &[u8], scratch: &Path) -> Result<Outcome, String> {
    install_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(None));
    let result = catch_unwind(AssertUnwindSafe(|| target.run(data, scratch)));
    let message = CAPTURE.with(|c| c.borrow_mut().take().flatten());
    result.map_err(|_| message.unwrap_or_else(|| "a panic without a message".into()))
}

/// An error message's kind: its first line up to any parenthesis, without the scratch path,
/// digits and quoted parts (names and values from the input), cut short.
fn kind(message: &str, scratch: &Path) -> String {
    let m = message.replace(&scratch.display().to_string(), "");
    let first = m.lines().next().unwrap_or("");
    let first = first.split('(').next().unwrap_or("");
    let mut out = String::new();
    let mut quoted = None;
    for c in first.chars() {
        match (quoted, c) {
            (None, '`' | '"') => quoted = Some(c),
            (Some(q), c) if c == q => quoted = None,
            (None, c) if !c.is_ascii_digit() => out.push(c),
            _ => {}
        }
    }
    out.chars().take(80).collect()
}

/// How long one input may take before it is reported (libFuzzer's `-timeout` plays this part
/// there). Generous: debug builds with overflow checks run the config target's graph builds.
pub const PER_INPUT_LIMIT: Duration = Duration::from_secs(20);

/// Runs `target` over its seeds, kept corpus and regressions, then over mutations of them (and of inputs
/// that gave new kinds of error) until `budget` has passed or `max_runs` inputs have run.
pub fn fuzz(target: Target, seed: u64, budget: Duration, max_runs: Option<u64>) -> Report {
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let started = Instant::now();
    let mut report = Report {
        target,
        runs: 0,
        accepted: 0,
        refused: 0,
        error_kinds: 0,
        corpus: 0,
        seconds: 0.0,
        findings: Vec::new(),
    };
    let mut corpus: Vec<Vec<u8>> = seeds(target);
    for dir in [corpus_dir(target), regressions_dir(target)] {
        corpus.extend(read_dir(&dir).into_iter().map(|(_, d)| d));
    }
    let mut kinds = std::collections::HashSet::new();
    let mut rng = Rng::new(seed);
    let fixed: Vec<Vec<u8>> = corpus.clone();
    let mut queue = fixed.into_iter();
    loop {
        let input = match queue.next() {
            Some(input) => input,
            None if started.elapsed() < budget && max_runs.is_none_or(|m| report.runs < m) => mutate(&mut rng, &corpus),
            None => break,
        };
        report.runs += 1;
        let began = Instant::now();
        let outcome = run_one(target, &input, scratch.path());
        // A slow input is a finding, not a hang to wait out: the process cannot stop a target
        // mid-run, but it reports every input that took longer than the cap.
        let took = began.elapsed();
        if took > PER_INPUT_LIMIT {
            let message = format!(
                "took {:.1} s, over the per-input limit of {} s",
                took.as_secs_f64(),
                PER_INPUT_LIMIT.as_secs()
            );
            report.findings.push(Finding { input: input.clone(), message });
        }
        match outcome {
            Ok(Outcome::Accepted) => report.accepted += 1,
            Ok(Outcome::Refused(message)) => {
                report.refused += 1;
                if kinds.insert(kind(&message, scratch.path())) && corpus.len() < 4096 {
                    corpus.push(input);
                }
            }
            Err(message) => report.findings.push(Finding { input, message }),
        }
    }
    report.error_kinds = kinds.len();
    report.corpus = corpus.len();
    report.seconds = started.elapsed().as_secs_f64();
    report
}
