//! Starting a device from the command line with nothing set up by hand: no spurious errors from
//! the Vulkan stack on a headless machine, and CUDA refused in one line (never a panic) when its
//! driver or toolkit is missing, never through a compat libcuda.

mod common;

use std::path::Path;
use std::process::Command;

use common::{output, s};

use calm::runtime::device::cuda_env::{driver_libcuda, SYSTEM_LIBRARY_DIRS};

/// `calm` as a user on a fresh headless machine starts it: none of the variables calm or its
/// drivers read, beyond `PATH` and `HOME`, and `CALM_HOME` in a fresh folder.
fn fresh(home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_calm"));
    command.args(args).env("CALM_HOME", home);
    for var in [
        "XDG_RUNTIME_DIR",
        "NODEVICE_SELECT",
        "CUDA_PATH",
        "CUDA_HOME",
        "CALM_NVRTC",
        "LD_LIBRARY_PATH",
        "CALM_PASSED_OVER_LIBCUDA",
    ] {
        command.env_remove(var);
    }
    command
}

/// A small graph to run, written by `calm sample`.
fn sample(dir: &Path) -> std::path::PathBuf {
    let graph = dir.join("g.json");
    let (ok, _, stderr) = output(&mut fresh(dir, &["sample", "-o", s(&graph)]));
    assert!(ok, "{stderr}");
    graph
}

#[test]
fn wgpu_starts_without_a_runtime_directory_and_says_nothing_of_it() {
    // Mesa's Vulkan device-select layer asked Wayland for the display's GPU on every adapter
    // listing, and libwayland printed `error: XDG_RUNTIME_DIR is invalid or not set in the
    // environment.` four times a run; calm turns the layer off where there is no display.
    let dir = tempfile::tempdir().unwrap();
    let graph = sample(dir.path());
    for executor in
        [&["--executor", "fused", "--device", "wgpu"][..], &["--executor", "reference", "--backend", "wgpu"][..]]
    {
        let mut args = vec!["run", s(&graph), "--bind", "batch=2,tokens=3"];
        args.extend_from_slice(executor);
        let (ok, stdout, stderr) = output(&mut fresh(dir.path(), &args));
        assert!(ok, "{executor:?}: {stderr}");
        assert!(stdout.contains("wgpu"), "{executor:?} ran on wgpu: {stdout}");
        assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{executor:?}: {stderr}");
        assert!(stderr.trim().is_empty(), "{executor:?}: nothing on stderr: {stderr}");
    }
}

#[test]
fn cuda_that_cannot_start_is_one_line_and_auto_falls_back_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let graph = sample(dir.path());
    let run = |device: &str| {
        output(&mut fresh(dir.path(), &["run", s(&graph), "--bind", "batch=2,tokens=3", "--device", device]))
    };
    let (ok, _, stderr) = run("cuda");
    if !ok {
        // No GPU (this machine's case in CI), or no toolkit: either way one line saying what.
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("calm: error: no usable device: CUDA did not start: "), "{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, stdout, stderr) = run("auto");
    assert!(ok && stdout.contains("ran `tiny`"), "{stdout}{stderr}");
    assert!(stderr.trim().is_empty(), "auto says nothing of a CUDA that did not start: {stderr}");
}

#[test]
fn a_compat_libcuda_on_ld_library_path_is_never_used() {
    // CUDA's forward-compatibility package: a libcuda that fails with any driver but its own.
    let dir = tempfile::tempdir().unwrap();
    let graph = sample(dir.path());
    let compat = dir.path().join("cuda-13.0/compat");
    std::fs::create_dir_all(&compat).unwrap();
    for name in ["libcuda.so", "libcuda.so.1"] {
        // Not a library at all: loading it would fail loudly.
        std::fs::write(compat.join(name), "not a library").unwrap();
    }
    let args = ["run", s(&graph), "--bind", "batch=2,tokens=3", "--device", "cuda"];
    let (ok, _, stderr) = output(fresh(dir.path(), &args).env("LD_LIBRARY_PATH", &compat));
    let system: Vec<_> = SYSTEM_LIBRARY_DIRS.iter().map(std::path::PathBuf::from).collect();
    match driver_libcuda(&system) {
        // No NVIDIA driver here: the compat libcuda is all there is, and calm says so.
        None => {
            assert!(!ok, "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains("forward-compatibility") && stderr.contains(s(&compat)), "{stderr}");
        }
        // A driver: calm starts again without the compat folder and notes it passed it over.
        Some(driver) => {
            let note = stderr.lines().next().unwrap_or_default();
            assert!(note.contains("passed over") && note.contains(s(&driver)), "{stderr}");
        }
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("not a library"), "{stderr}");
    // `--device auto` goes on to Vulkan without a word about CUDA when it cannot start.
    if driver_libcuda(&system).is_none() {
        let args = ["run", s(&graph), "--bind", "batch=2,tokens=3", "--device", "auto"];
        let (ok, stdout, stderr) = output(fresh(dir.path(), &args).env("LD_LIBRARY_PATH", &compat));
        assert!(ok && stdout.contains("wgpu") && stderr.trim().is_empty(), "{stdout}{stderr}");
    }
}
