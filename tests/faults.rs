//! Fault paths of `calm run`: NaN and overflow located by `--check-numerics`, work too large for
//! the host or the device refused before it allocates, and a device that fails mid-run. Each
//! ends with a one-line error and no output file.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use calm::ir::{json, shape, DType, GraphBuilder};
use calm::runtime::host::HostTensor;
use calm::runtime::safetensors;

fn calm(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_calm")).args(args).envs(env.iter().copied()).output().expect("calm runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `y = sqrt(x - 1) * w`, `z = exp(x * 100)`, `t = tanh(x)`: NaN where x < 1, an overflow where
/// x is large.
fn write_graph(dir: &Path) -> std::path::PathBuf {
    let mut b = GraphBuilder::new("faulty");
    let x = b.input("x", DType::F32, shape!["n"]).unwrap();
    let w = b.param("w", shape![1u64], calm::ir::Init::Ones).unwrap();
    let one = b.scalar(1.0).unwrap();
    let hundred = b.scalar(100.0).unwrap();
    let y = b.scoped("root", |b| {
        let d = b.sub(x, one)?;
        let r = b.sqrt(d)?;
        let wb = b.broadcast(w, shape!["n"])?;
        b.mul(r, wb)
    });
    let z = b.scoped("blowup", |b| {
        let big = b.mul(x, hundred)?;
        b.exp(big)
    });
    let t = b.tanh(x).unwrap();
    b.output("y", y.unwrap());
    b.output("z", z.unwrap());
    b.output("t", t);
    let g = b.finish().unwrap();
    let path = dir.join("faulty.json");
    json::write_file(&g, &path).unwrap();
    path
}

fn write_inputs(dir: &Path, name: &str, x: Vec<f32>) -> std::path::PathBuf {
    let path = dir.join(name);
    let n = x.len();
    safetensors::write(&path, &BTreeMap::from([("x".to_string(), HostTensor::f32(vec![n], x))])).unwrap();
    path
}

#[test]
fn check_numerics_names_the_node_where_a_nan_or_an_overflow_begins() {
    let dir = tempfile::tempdir().unwrap();
    let graph = write_graph(dir.path());
    let out = dir.path().join("out.safetensors");
    let run = |inputs: &Path, extra: &[&str]| {
        let mut args = vec!["run", s(&graph), "--inputs", s(inputs), "-o", s(&out), "--check-numerics"];
        args.extend(extra);
        calm(&args, &[])
    };
    // Finite everywhere: runs and writes.
    let fine = write_inputs(dir.path(), "fine.safetensors", vec![1.5, 2.0, 1.0]);
    let (ok, _, stderr) = run(&fine, &["--executor", "reference"]);
    assert!(ok, "{stderr}");
    std::fs::remove_file(&out).unwrap();
    // On the fused plan's f32, exp(100 · 1.5) overflows: located at the exp, on the reference
    // executor in f32 (in f64 it would not overflow, and must not be blamed on a kernel).
    let (ok, _, stderr) = run(&fine, &["--executor", "fused", "--device", "wgpu"]);
    assert!(!ok && stderr.contains("(exp @ faulty/blowup) made 0 NaN and 3 infinite"), "{stderr}");
    assert!(!out.exists());

    // x < 1: sqrt makes the NaN (not the subtraction before it, nor the product after).
    let nan = write_inputs(dir.path(), "nan.safetensors", vec![2.0, 0.5, 3.0]);
    for executor in ["reference", "fused"] {
        let (ok, _, stderr) = run(&nan, &["--executor", executor, "--device", "wgpu"]);
        assert!(!ok, "{executor}");
        assert!(stderr.contains("(sqrt @ faulty/root) made 1 NaN") && stderr.contains("at [1]"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!out.exists(), "no output file after a fault");
    }
    // exp(100·x) overflows f64 only for x > 7.09: the node is the exp, not the product.
    let big = write_inputs(dir.path(), "big.safetensors", vec![2.0, 8.0, 1.0]);
    let (ok, _, stderr) = run(&big, &["--executor", "reference"]);
    assert!(!ok && stderr.contains("(exp @ faulty/blowup) made 0 NaN and 1 infinite"), "{stderr}");
    // A NaN already in an input is named as the input's.
    let given = write_inputs(dir.path(), "given.safetensors", vec![2.0, f32::NAN, 3.0]);
    let (ok, _, stderr) = run(&given, &["--executor", "reference"]);
    assert!(!ok && stderr.contains("input `x` holds 1 NaN"), "{stderr}");
    // Without the check, the same run succeeds and reports the NaN in its summary.
    let (ok, stdout, stderr) = calm(&["run", s(&graph), "--inputs", s(&nan), "--executor", "reference"], &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("y ") && l.trim_end().ends_with("1     0")), "{stdout}");
}

#[test]
fn work_too_large_for_memory_is_refused_with_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let graph = write_graph(dir.path());
    let out = dir.path().join("out.safetensors");
    // 2^40 elements: drawing the inputs alone would need terabytes.
    let (ok, _, stderr) =
        calm(&["run", s(&graph), "--bind", "n=1099511627776", "-o", s(&out), "--executor", "reference"], &[]);
    assert!(!ok && stderr.contains("needs") && stderr.contains("TiB of host memory"), "{stderr}");
    assert!(!out.exists());
    // Sizes whose byte count overflows 64 bits are an error, not a wrap.
    let (ok, _, stderr) = calm(&["run", s(&graph), "--bind", "n=9223372036854775807", "--executor", "reference"], &[]);
    assert!(!ok && stderr.contains("overflows"), "{stderr}");
    // A symbol left unbound is named.
    let (ok, _, stderr) = calm(&["run", s(&graph), "--executor", "reference"], &[]);
    assert!(!ok && stderr.contains("unbound n"), "{stderr}");
    // CALM_MEMORY_LIMIT caps the budget. 100,000 inputs: reading their file is allowed 1.2 MB
    // (3× its size); the reference executor holds x and x - 1 in f64 at once (1.6 MB); the device
    // plan x, y, z and t in f32 (1.6 MB). A limit of 1.4 MB lets the file through and refuses
    // each executor at its own check; a run under 64 MiB goes through.
    let inputs = write_inputs(dir.path(), "x.safetensors", vec![1.5; 100_000]);
    for (executor, refused) in [("reference", "on the reference executor"), ("fused", "the plan of `faulty`")] {
        let args =
            ["run", s(&graph), "--inputs", s(&inputs), "-o", s(&out), "--executor", executor, "--device", "wgpu"];
        let (ok, _, stderr) = calm(&args, &[("CALM_MEMORY_LIMIT", "1400000")]);
        assert!(!ok && stderr.contains(refused) && stderr.contains("are allowed (CALM_MEMORY_LIMIT)"), "{stderr}");
        assert!(!out.exists());
        let (ok, _, stderr) = calm(&args, &[("CALM_MEMORY_LIMIT", "64MiB")]);
        assert!(ok, "{executor}: {stderr}");
        std::fs::remove_file(&out).unwrap();
        // A limit that does not parse is not ignored: it allows nothing, and says why.
        let (ok, _, stderr) = calm(&args, &[("CALM_MEMORY_LIMIT", "64 gigs")]);
        assert!(!ok && stderr.contains("CALM_MEMORY_LIMIT=`64 gigs` is not a size"), "{stderr}");
    }
    // A graph file may declare a weight of any size: refused before it is initialised.
    let mut b = GraphBuilder::new("huge");
    let x = b.input("x", DType::F32, shape![1u64 << 40]).unwrap();
    let w = b.param("w", shape![1u64 << 40], calm::ir::Init::Ones).unwrap();
    let y = b.add(x, w).unwrap();
    b.output("y", y);
    let huge = dir.path().join("huge.json");
    json::write_file(&b.finish().unwrap(), &huge).unwrap();
    let (ok, _, stderr) = calm(&["run", s(&huge), "--executor", "reference"], &[]);
    assert!(!ok && stderr.contains("initialising the weights of `huge` needs 4.00 TiB of host memory"), "{stderr}");
    // A weight file larger than memory is refused before it is read (a sparse file: no disk used).
    let big = dir.path().join("big.safetensors");
    std::fs::File::create(&big).unwrap().set_len(1 << 43).unwrap();
    let (ok, _, stderr) =
        calm(&["run", s(&graph), "--weights", s(&big), "--bind", "n=2", "--executor", "reference"], &[]);
    assert!(!ok && stderr.contains("big.safetensors: reading it needs 24.00 TiB of host memory"), "{stderr}");
}

#[test]
fn a_device_that_fails_mid_run_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let graph = write_graph(dir.path());
    let inputs = write_inputs(dir.path(), "x.safetensors", vec![1.5, 2.0]);
    let out = dir.path().join("out.safetensors");
    let args = ["run", s(&graph), "--inputs", s(&inputs), "-o", s(&out), "--executor", "fused", "--device", "wgpu"];
    let (ok, _, stderr) = calm(&args, &[("CALM_INJECT_FAULT", "device")]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("the device failed mid-run: device lost"), "{stderr}");
    assert!(!stderr.contains("panicked"), "the panic is reported as an error, not printed: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file left");
}

#[test]
fn probing_for_cuda_without_a_driver_prints_no_panic() {
    // CubeCL's CUDA server thread panics when libcuda is missing; `--device auto` must keep that
    // off the terminal and go on to Vulkan (or say no device started).
    let dir = tempfile::tempdir().unwrap();
    let graph = write_graph(dir.path());
    let inputs = write_inputs(dir.path(), "x.safetensors", vec![1.5, 2.0]);
    let (_, stdout, stderr) = calm(&["run", s(&graph), "--inputs", s(&inputs)], &[]);
    assert!(!stderr.contains("panicked") && !stderr.contains("stack backtrace"), "{stderr}");
    assert!(stdout.contains("ran `faulty`"), "{stdout}{stderr}");
}
