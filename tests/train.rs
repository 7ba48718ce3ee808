//! `calm train`, `calm eval` and `calm study` end to end on the tiny backbone (a random BERT
//! with a character tokenizer: no download) and the first CREHate posts; errors on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs calm with `CALM_HOME` in `home`: success, stdout, stderr.
fn calm(home: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_calm")).env("CALM_HOME", home).args(args).output().expect("calm runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn crehate(split: &str) -> String {
    let p: PathBuf = calm_data::crehate_dir().unwrap().join(format!("CREHate_{split}.csv"));
    p.to_str().unwrap().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_then_eval_on_both_executors() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("run");
    let log = home.path().join("log.jsonl");
    let (train, valid) = (crehate("train"), crehate("valid"));
    let common = ["--backbone", "tiny", "--preset", "tiny", "--limit", "10", "--batch", "16", "--lr", "1e-3", "-q"];
    let mut args =
        vec!["train", "--train", &train, "--valid", &valid, "--epochs", "2", "--out", s(&out), "--json", s(&log)];
    args.extend(common);
    let (ok, stdout, stderr) = calm(home.path(), &args);
    assert!(ok, "{stderr}");
    // 10 posts × 5 countries = 50 samples: 4 steps an epoch.
    assert!(stdout.contains("trained 8 of 8 steps"), "{stdout}");
    assert!(stdout.contains("best: epoch"), "{stdout}");
    assert!(out.join("last.safetensors").is_file() && out.join("best.safetensors").is_file());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2, "no temporary files left");
    // The states were cached once per split.
    assert_eq!(std::fs::read_dir(home.path().join("states")).unwrap().count(), 2);
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("\"step\"") && l.contains("\"losses\"")).count(), 8);

    let best = out.join("best.safetensors");
    let json = home.path().join("eval.json");
    let (ok, stdout, stderr) = calm(
        home.path(),
        &[
            "eval",
            "--checkpoint",
            s(&best),
            "--data",
            &valid,
            "--limit",
            "10",
            "--executor",
            "fused",
            "--device",
            "wgpu",
            "--compare",
            "--json",
            s(&json),
            "-q",
        ],
    );
    assert!(ok, "{stderr}");
    for country in ["Australia", "United_States", "United_Kingdom", "South_Africa", "Singapore", "overall"] {
        assert!(stdout.lines().any(|l| l.starts_with(country)), "{country}: {stdout}");
    }
    let agree = stdout.lines().find(|l| l.contains("agree on")).unwrap_or_else(|| panic!("{stdout}"));
    let share: f64 = agree.rsplit('(').next().unwrap().trim_end_matches("%)").parse().unwrap();
    assert!(share >= 99.5, "fused and reference agree on only {share}%: {agree}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["report"]["overall"]["samples"], 50);

    // Resuming a finished run does nothing more; a missing run is an error naming the file.
    let mut args = vec!["train", "--train", &train, "--out", s(&out), "--resume"];
    args.extend(common);
    let (ok, stdout, stderr) = calm(home.path(), &args);
    assert!(ok && stdout.contains("trained 8 of 8 steps"), "{stdout}{stderr}");
    let nowhere = home.path().join("nowhere");
    let mut args = vec!["train", "--train", &train, "--out", s(&nowhere), "--resume"];
    args.extend(common);
    let (ok, _, stderr) = calm(home.path(), &args);
    assert!(!ok && stderr.contains("nowhere/last.safetensors"), "{stderr}");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let home = tempfile::tempdir().unwrap();
    let train = crehate("train");
    // No MiniLM in this CALM_HOME: say how to get it.
    let (ok, _, stderr) = calm(home.path(), &["train", "--train", &train, "--out", s(&home.path().join("r")), "-q"]);
    assert!(!ok && stderr.contains("scripts/fetch-minilm"), "{stderr}");
    // A weight file that is not a checkpoint.
    let w = home.path().join("w.safetensors");
    std::fs::write(&w, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ").unwrap();
    let (ok, _, stderr) = calm(home.path(), &["eval", "--checkpoint", s(&w), "--data", &train, "-q"]);
    assert!(!ok && stderr.contains("w.safetensors") && stderr.lines().count() == 1, "{stderr}");
    // The tiny model on the tiny backbone, quietly: what the refusals below start from.
    let tiny = ["train", "--train", &train, "--backbone", "tiny", "--preset", "tiny", "-q"];
    let (ok, _, stderr) = calm(home.path(), &[&tiny[..], &["--variant", "no-such", "--limit", "2"]].concat());
    assert!(!ok && stderr.contains("no-such"), "{stderr}");
    // Epochs whose steps overflow the step counter: a one-line error, not a panic or a wrap.
    let out = home.path().join("e");
    let max = u64::MAX.to_string();
    let overflowing = ["--epochs", &max, "--out", s(&out), "--limit", "9", "--batch", "4"];
    let (ok, _, stderr) = calm(home.path(), &[&tiny[..], &overflowing[..]].concat());
    assert!(!ok && stderr.contains("overflows the step counter") && stderr.lines().count() == 1, "{stderr}");
}

#[test]
fn the_backend_is_chosen_said_and_logged() {
    let home = tempfile::tempdir().unwrap();
    let train = crehate("train");
    // 10 samples, a step an epoch, 2 epochs.
    let tiny = ["train", "--train", &train, "--backbone", "tiny", "--preset", "tiny", "--limit", "2", "--epochs", "2"];
    let one_step = [&tiny[..], &["--max-steps", "1"]].concat();
    // --backend cuda trains on CUDA where it starts; elsewhere it is a one-line error.
    let cuda_out = home.path().join("cuda");
    let (cuda, stdout, stderr) =
        calm(home.path(), &[&one_step[..], &["--backend", "cuda", "--out", s(&cuda_out), "-q"]].concat());
    if cuda {
        assert!(stdout.contains("steps on cuda"), "{stdout}");
    } else {
        assert!(
            stderr.starts_with("calm: error: --backend cuda: ") && stderr.contains("CUDA did not start"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!cuda_out.exists(), "nothing written");
    }
    // `auto` (the default) picks CUDA, else Flex, and says which and why on stderr and in the log.
    let want = if cuda { "cuda" } else { "flex" };
    let (out, log) = (home.path().join("auto"), home.path().join("auto.jsonl"));
    let (ok, stdout, stderr) = calm(home.path(), &[&one_step[..], &["--out", s(&out), "--json", s(&log)]].concat());
    assert!(ok && stdout.contains(&format!("1 of 2 steps on {want} (highest precision")), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("calm: backend {want}: ")), "{stderr}");
    assert!(cuda || stderr.contains("CUDA did not start"), "why auto passed CUDA over: {stderr}");
    let first = std::fs::read_to_string(&log).unwrap();
    let start: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!((start["event"].as_str(), start["backend"].as_str()), (Some("start"), Some(want)), "{first}");
    // A resumed run keeps its checkpoint's backend unless told; --precision is recorded.
    let resumed = [&tiny[..], &["--resume", "--precision", "default", "--out", s(&out)]].concat();
    let (ok, stdout, stderr) = calm(home.path(), &resumed[..]);
    assert!(ok && stdout.contains(&format!("2 of 2 steps on {want} (default precision")), "{stdout}{stderr}");
}

#[test]
fn a_backend_failing_mid_step_is_a_one_line_error() {
    let home = tempfile::tempdir().unwrap();
    let (train, out) = (crehate("train"), home.path().join("run"));
    let args = ["train", "--train", &train, "--backbone", "tiny", "--preset", "tiny", "--limit", "2", "--out", s(&out)];
    // The device lost in the first step (injected: the runtime panics, as it does on a lost GPU).
    let o = Command::new(env!("CARGO_BIN_EXE_calm"))
        .env("CALM_HOME", home.path())
        .env("CALM_INJECT_FAULT", "train-step")
        .args(args)
        .arg("-q")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("calm: error: step 1: the flex backend failed: the device failed mid-run: device lost"),
        "{stderr}"
    );
    assert!(stderr.contains("no checkpoint was written yet") && !stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_smoke_study_writes_its_table_and_chart_and_resumes() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("study");
    let (train, valid) = (crehate("train"), crehate("valid"));
    let args = [
        "study",
        "--train",
        &train,
        "--valid",
        &valid,
        "--backbone",
        "tiny",
        "--preset",
        "tiny",
        "--limit",
        "8",
        "--variants",
        "full,no-moe,no-reflection,linear,mlp",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--batch",
        "16",
        "--lr",
        "1e-3",
        "--out",
        s(&out),
        "-q",
    ];
    let (ok, stdout, stderr) = calm(home.path(), &args);
    assert!(ok, "{stderr}");
    let table = std::fs::read_to_string(out.join("study.md")).unwrap();
    for v in ["full", "no-moe", "no-reflection", "linear", "mlp"] {
        let row = table.lines().find(|l| l.starts_with(&format!("| {v} |"))).unwrap_or_else(|| panic!("{v}: {table}"));
        assert!(row.starts_with(&format!("| {v} | 2 |")), "{row}");
        assert_eq!(row.matches('±').count(), 7, "five countries, overall accuracy and macro-F1: {row}");
    }
    assert!(stdout.contains("10 runs"), "{stdout}");
    let svg = std::fs::read_to_string(out.join("study.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<rect").count() == 6 * 5 + 5, "bars and legend");
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("study.json")).unwrap()).unwrap();
    assert_eq!(results.as_array().unwrap().len(), 10);
    // Again: every run is kept, nothing retrained, the same table.
    let mut again = args.to_vec();
    again.pop();
    let (ok, _, stderr) = calm(home.path(), &again);
    assert!(ok, "{stderr}");
    assert_eq!(stderr.matches("done before, kept").count(), 10, "{stderr}");
    assert_eq!(std::fs::read_to_string(out.join("study.md")).unwrap(), table);
}

/// SplitMix64, for kill times that are random but the same on every run of the test.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weights and AdamW moments of a checkpoint, by name, as bits.
fn tensors_of(path: &Path) -> Vec<(String, Vec<u64>)> {
    let (tensors, _) = calm::runtime::safetensors::read_with_metadata(path).unwrap();
    tensors.into_iter().map(|(k, t)| (k, t.data.to_f64().iter().map(|v| v.to_bits()).collect())).collect()
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_same_weights() {
    let home = tempfile::tempdir().unwrap();
    let train = crehate("train");
    // 4 posts × 5 countries = 20 samples, batches of 8: 3 steps an epoch, 72 in all, with a
    // checkpoint at each epoch's end.
    let args = |out: &Path, log: &Path, resume: bool| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--train",
            &train,
            "--backbone",
            "tiny",
            "--preset",
            "tiny",
            "--limit",
            "4",
            "--batch",
            "8",
            "--epochs",
            "24",
            "--lr",
            "1e-3",
            "-q",
            "--out",
            s(out),
            "--json",
            s(log),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let run_whole = |name: &str| {
        let (out, log) = (home.path().join(name), home.path().join(format!("{name}.jsonl")));
        let started = std::time::Instant::now();
        let (ok, _, stderr) =
            calm(home.path(), &args(&out, &log, false).iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{stderr}");
        (out, started.elapsed())
    };
    // The first run encodes the texts into the states cache; the second, timed, is what a
    // resumed run repeats.
    let (whole, _) = run_whole("whole");
    let (_, full) = run_whole("whole-again");

    let (killed, killed_log) = (home.path().join("killed"), home.path().join("killed.jsonl"));
    let last = killed.join("last.safetensors");
    let mut rng = 0x6b11u64;
    let (mut kills, mut spawns) = (0, 0);
    // Rounds of starts killed at random moments until one finishes by itself; a round that saw
    // fewer than 3 kills (the machine ran faster than when `full` was measured) starts over.
    for round in 0.. {
        assert!(round < 10, "10 rounds without 3 kills");
        let _ = std::fs::remove_dir_all(&killed);
        let _ = std::fs::remove_file(&killed_log);
        kills = 0;
        loop {
            spawns += 1;
            assert!(spawns <= 200, "the run did not finish in 200 starts");
            let resume = last.exists();
            let mut child = Command::new(env!("CARGO_BIN_EXE_calm"))
                .env("CALM_HOME", home.path())
                .args(args(&killed, &killed_log, resume))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Anywhere in the first half of a whole run's span: start-up, steps, checkpoint and
            // log writes.
            let at = full.mul_f64((splitmix(&mut rng) % 1000) as f64 / 2000.0);
            std::thread::sleep(at);
            let finished = child.try_wait().unwrap().is_some();
            if !finished {
                child.kill().unwrap(); // SIGKILL: no chance to clean up
                kills += 1;
            }
            let status = child.wait().unwrap();
            // Whatever moment the kill hit, the last checkpoint is whole and resumable.
            if last.exists() {
                let ck =
                    calm_train::checkpoint::Checkpoint::load(&last).unwrap_or_else(|e| panic!("after a kill: {e}"));
                assert!(ck.state.step.is_multiple_of(3) && ck.state.step <= 72, "checkpoints are at epoch ends");
            }
            if finished {
                assert!(status.success(), "a run that was not killed failed");
                break;
            }
        }
        if kills >= 3 {
            break;
        }
    }
    eprintln!("{kills} kills in the last round, {spawns} starts in all (a whole run takes {full:?})");
    let resume = last.exists();
    let (ok, stdout, stderr) =
        calm(home.path(), &args(&killed, &killed_log, resume).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok && stdout.contains("trained 72 of 72 steps"), "{stdout}{stderr}");
    assert_eq!(
        tensors_of(&whole.join("last.safetensors")),
        tensors_of(&last),
        "weights or moments differ after {kills} kills"
    );
    // No temporary file is left, and the log has each step once.
    let mut files: Vec<String> =
        std::fs::read_dir(&killed).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["best.safetensors", "last.safetensors"], "{files:?}");
    let steps: Vec<u64> = std::fs::read_to_string(&killed_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "step")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=72).collect::<Vec<_>>());
}

/// A disk that fills while a checkpoint is written (here a file-size limit, `ulimit -f`, with
/// SIGXFSZ ignored so the write fails with EFBIG as on a full disk): the run fails with an
/// error naming the file, and the previous checkpoint survives byte for byte.
#[test]
fn a_full_disk_while_checkpointing_keeps_the_previous_checkpoint() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("run");
    let train = crehate("train");
    let args = ["--train", &train, "--backbone", "tiny", "--preset", "tiny", "--limit", "4", "--batch", "8", "-q"];
    let mut first = vec!["train", "--out", s(&out), "--epochs", "1"];
    first.extend(args);
    let (ok, _, stderr) = calm(home.path(), &first);
    assert!(ok, "{stderr}");
    let last = out.join("last.safetensors");
    let before = std::fs::read(&last).unwrap();
    assert!(before.len() > 16 * 1024, "the checkpoint is larger than the limit below");
    let command = format!(
        "trap '' XFSZ; ulimit -f 8; exec \"$0\" train --out '{}' --epochs 2 {}",
        s(&out),
        args.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
    );
    let o = Command::new("bash")
        .args(["-c", &command, env!("CARGO_BIN_EXE_calm")])
        .env("CALM_HOME", home.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains("safetensors") && stderr.contains(s(&out)), "the error names the file: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read(&last).unwrap(), before, "the previous checkpoint is untouched");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().contains(".tmp-")), "no temporary left: {left:?}");
}
