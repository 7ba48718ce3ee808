//! Campaigns: a target run over its seeds, its saved regressions, and then mutated inputs for a
//! bounded time. A panic anywhere is a finding, kept with its input.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
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

/// What one input may cost before it is a finding, as libFuzzer's `-timeout` and
/// `-rss_limit_mb` cap its runs.
#[derive(Copy, Clone, Debug)]
pub struct Caps {
    /// Time one input may run. Generous: debug builds with overflow checks run the config
    /// target's graph builds.
    pub per_input: Duration,
    /// Memory the process may hold (resident) while an input runs.
    pub memory_bytes: u64,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps { per_input: Duration::from_secs(20), memory_bytes: 4 << 30 }
    }
}

/// The process's resident memory, from `/proc/self/status` (0 where it cannot be read).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok());
    kib.unwrap_or(0u64) * 1024
}

/// Which cap an input running for `took`, with the process holding `resident` bytes, breaks.
pub fn broken_cap(caps: &Caps, took: Duration, resident: u64) -> Option<String> {
    if took > caps.per_input {
        return Some(format!("ran for over {:.1} s (the per-input limit)", caps.per_input.as_secs_f64()));
    }
    if resident > caps.memory_bytes {
        return Some(format!(
            "the process holds {} MiB, over the limit of {} MiB",
            resident >> 20,
            caps.memory_bytes >> 20
        ));
    }
    None
}

/// The input a campaign is running, and since when.
type Running = Arc<Mutex<Option<(Vec<u8>, Instant)>>>;

/// Watches the running input from another thread: a target cannot be stopped mid-run from
/// inside (nor a runaway allocation undone), so an input that breaks a cap is saved as a
/// finding, `calm-fuzz-finding-TARGET-PID` in the temporary folder, and the process exits
/// (status 3) with a line naming it and the cap, as libFuzzer does.
fn watchdog(target: Target, caps: Caps, running: Running, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            let guard = running.lock().unwrap_or_else(|e| e.into_inner());
            let Some((input, began)) = guard.as_ref() else { continue };
            if let Some(why) = broken_cap(&caps, began.elapsed(), resident_bytes()) {
                let path =
                    std::env::temp_dir().join(format!("calm-fuzz-finding-{}-{}", target.name(), std::process::id()));
                let saved = match std::fs::write(&path, input) {
                    Ok(()) => format!("saved to {}", path.display()),
                    Err(e) => format!("not saved: {e}"),
                };
                eprintln!(
                    "calm-fuzz: {}: an input of {} bytes {why}; it is a finding ({saved}; copy it into {})",
                    target.name(),
                    input.len(),
                    regressions_dir(target).display()
                );
                std::process::exit(3);
            }
        }
    })
}

/// Runs `target` over its seeds, kept corpus and regressions, then over mutations of them (and of inputs
/// that gave new kinds of error) until `budget` has passed or `max_runs` inputs have run.
///
/// An input that breaks `caps` (too long, too much memory) stops the process, saved as a
/// finding (see [`watchdog`]).
pub fn fuzz(target: Target, seed: u64, budget: Duration, max_runs: Option<u64>, caps: Caps) -> Report {
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let running: Running = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicBool::new(false));
    let watching = watchdog(target, caps, running.clone(), done.clone());
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
        *running.lock().unwrap_or_else(|e| e.into_inner()) = Some((input.clone(), Instant::now()));
        let outcome = run_one(target, &input, scratch.path());
        *running.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
    done.store(true, Ordering::Relaxed);
    watching.join().expect("the watchdog does not panic");
    report.error_kinds = kinds.len();
    report.corpus = corpus.len();
    report.seconds = started.elapsed().as_secs_f64();
    report
}
