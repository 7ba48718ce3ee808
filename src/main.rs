//! The `calm` command line: a thin dispatcher over the subcommands in `cli/`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Output piped into `head` and the like: end quietly when the reader goes away, as other
    // command-line tools do, instead of panicking on the failed write (Rust ignores SIGPIPE).
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    // Before any thread starts: it may start calm again (without a CUDA compat libcuda on
    // LD_LIBRARY_PATH), and it sets CUDA_PATH (the toolkit it finds, for CubeCL's CUDA runtime)
    // and, on a headless machine, NODEVICE_SELECT (Mesa's Vulkan layer would probe Wayland).
    calm::runtime::device::prepare_process();
    let cli = calm::cli::Cli::parse();
    match calm::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, so scripts and people see the reason at once.
            eprintln!("calm: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps memory freed by the process for its next allocations instead of returning it to the
/// system. A training step frees and reallocates about a gigabyte of same-sized tensors
/// (weights fed to Burn, gradients read back, temporaries), and glibc's defaults unmap or trim
/// most of it, so every step faulted in and zeroed fresh pages again: 2.86 s against 2.37 s a
/// step at the paper preset (BENCHMARKS.md). Blocks up to 32 MiB (glibc's largest threshold)
/// come from the heap; the heap is trimmed only past 2 GiB of free memory at its top.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
