//! What CubeCL's CUDA runtime needs from the process before it first starts, so that
//! `--device cuda` works with no environment variable set:
//!
//! - the CUDA toolkit ([`crate::cuda_target::toolkit`]): CubeCL reads the headers from
//!   `$CUDA_PATH/include` each time it compiles a kernel (and panics without a `CUDA_PATH` or a
//!   `/usr/local/cuda`), and cudarc loads NVRTC by bare names (`libnvrtc.so`, ...,
//!   `libnvrtc.so.13`). calm sets `CUDA_PATH` to the toolkit it found when it is unset, and loads
//!   that toolkit's NVRTC by its full path first: the dynamic loader then answers cudarc's
//!   `dlopen("libnvrtc.so.13")` with the library already loaded (same SONAME).
//! - the driver's `libcuda`, never the one of CUDA's forward-compatibility package (a folder
//!   named `compat`): that one only works with the driver it was built for, and fails to start
//!   CUDA on any other. When `LD_LIBRARY_PATH` lists such a folder, calm loads the driver's own
//!   `libcuda.so.1` from the system library folders first, so cudarc's `dlopen("libcuda.so.1")`
//!   gets it, and says so in one line. A compat folder holding a bare `libcuda.so` would still
//!   win cudarc's first try (`dlopen("libcuda.so")` matches no SONAME and searches
//!   `LD_LIBRARY_PATH`, which the loader read at start-up), so for that case
//!   [`prepare_process`] starts calm again without the folder on `LD_LIBRARY_PATH`.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use thiserror::Error;

use crate::cuda_target::toolkit::{Toolkit, ToolkitError};

/// Where NVIDIA's driver installs `libcuda.so.1` (Debian and Ubuntu, Red Hat, others, WSL).
pub const SYSTEM_LIBRARY_DIRS: [&str; 5] =
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu", "/usr/lib/wsl/lib"];

/// Set by [`prepare_process`] for the process it starts again: the compat folders it took off
/// `LD_LIBRARY_PATH`, for the one-line note.
const PASSED_OVER_VAR: &str = "CALM_PASSED_OVER_LIBCUDA";

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CudaEnvError {
    #[error(transparent)]
    Toolkit(#[from] ToolkitError),
    #[error("could not load NVRTC {library}: {message}")]
    LoadNvrtc { library: PathBuf, message: String },
    #[error(
        "CUDA_PATH={cuda_path} has no include/cuda_runtime.h, which CUDA kernels are compiled with; \
         unset CUDA_PATH to use the toolkit calm found in {found}, or point it at a complete toolkit"
    )]
    CudaPathWithoutHeaders { cuda_path: PathBuf, found: PathBuf },
    #[error(
        "the only libcuda is CUDA's forward-compatibility one in {compat} (on LD_LIBRARY_PATH; it \
         fails with any driver but its own), and there is no driver libcuda.so.1 in {looked_in}: \
         install the NVIDIA driver, or use --device wgpu"
    )]
    OnlyCompatLibcuda { compat: String, looked_in: String },
    #[error(
        "LD_LIBRARY_PATH lists {compat}, whose libcuda.so (CUDA's forward-compatibility driver) \
         CUDA would load before the driver's own {driver}: take that folder off LD_LIBRARY_PATH"
    )]
    CompatLibcudaFirst { compat: PathBuf, driver: PathBuf },
    #[error("could not load the driver's {library}: {message}")]
    LoadLibcuda { library: PathBuf, message: String },
}

/// Part of [`super::prepare_process`], which `main` calls before any thread starts. Starts calm
/// again without compat folders on `LD_LIBRARY_PATH` when one holds a bare
/// `libcuda.so` (see the module's notes), then sets `CUDA_PATH` to the toolkit calm finds when
/// it is unset. Silent: a missing toolkit is reported only if CUDA is asked for.
pub fn prepare_process() {
    if std::env::var_os(PASSED_OVER_VAR).is_none() {
        let dirs = system_dirs();
        if let Some((ld_library_path, removed)) = restart_plan(std::env::var_os("LD_LIBRARY_PATH").as_deref(), &dirs) {
            restart_with(&ld_library_path, &removed);
        }
    }
    if std::env::var_os("CUDA_PATH").is_none_or(|v| v.is_empty()) {
        if let Ok(toolkit) = Toolkit::find() {
            std::env::set_var("CUDA_PATH", &toolkit.cuda_path);
        }
    }
}

/// Makes sure cudarc will load the driver's `libcuda`, not a compat one: call before CubeCL's
/// CUDA runtime first starts. Once per process; later calls return the first answer.
pub fn prepare_cuda_driver() -> Result<(), CudaEnvError> {
    static PREPARED: OnceLock<Result<(), CudaEnvError>> = OnceLock::new();
    PREPARED
        .get_or_init(|| {
            let passed_over: Vec<PathBuf> =
                std::env::var_os(PASSED_OVER_VAR).map(|v| std::env::split_paths(&v).collect()).unwrap_or_default();
            let choice = choose_libcuda(std::env::var_os("LD_LIBRARY_PATH").as_deref(), &passed_over, &system_dirs())?;
            if let LibcudaChoice::Driver { library, passed_over } = choice {
                load_global(&library)
                    .map_err(|message| CudaEnvError::LoadLibcuda { library: library.clone(), message })?;
                eprintln!(
                    "calm: note: passed over the libcuda of CUDA's forward-compatibility package in {} \
                     (LD_LIBRARY_PATH) for the driver's own {}",
                    list(&passed_over),
                    library.display()
                );
            }
            Ok(())
        })
        .clone()
}

/// Finds the CUDA toolkit and readies it for CubeCL's CUDA runtime (`CUDA_PATH` for its
/// headers, NVRTC loaded): call before the first kernel compiles. Once per process.
pub fn prepare_cuda_toolkit() -> Result<&'static Toolkit, CudaEnvError> {
    static PREPARED: OnceLock<Result<Toolkit, CudaEnvError>> = OnceLock::new();
    PREPARED
        .get_or_init(|| {
            let toolkit = Toolkit::find()?;
            match std::env::var_os("CUDA_PATH").filter(|v| !v.is_empty()).map(PathBuf::from) {
                // `prepare_process` sets it in `main`; a library caller that did not gets it here.
                None => std::env::set_var("CUDA_PATH", &toolkit.cuda_path),
                Some(cuda_path) if !cuda_path.join("include/cuda_runtime.h").is_file() => {
                    return Err(CudaEnvError::CudaPathWithoutHeaders { cuda_path, found: toolkit.cuda_path });
                }
                Some(_) => {}
            }
            load_global(&toolkit.library)
                .map_err(|message| CudaEnvError::LoadNvrtc { library: toolkit.library.clone(), message })?;
            Ok(toolkit)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Which `libcuda` calm loads before cudarc looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LibcudaChoice {
    /// No compat `libcuda` in sight: the dynamic loader finds the driver's as usual.
    AsUsual,
    /// The driver's own, by full path, passing over these compat folders.
    Driver { library: PathBuf, passed_over: Vec<PathBuf> },
}

/// Decides which `libcuda` to load: `ld_library_path` as the process has it, the compat folders
/// a restart already took off it, and the system library folders to find the driver's in.
pub fn choose_libcuda(
    ld_library_path: Option<&OsStr>,
    restarted_without: &[PathBuf],
    system_dirs: &[PathBuf],
) -> Result<LibcudaChoice, CudaEnvError> {
    let on_path = compat_libcuda_dirs(ld_library_path);
    if on_path.is_empty() && restarted_without.is_empty() {
        return Ok(LibcudaChoice::AsUsual);
    }
    let mut passed_over = restarted_without.to_vec();
    passed_over.extend(on_path.iter().cloned());
    let Some(library) = driver_libcuda(system_dirs) else {
        return Err(CudaEnvError::OnlyCompatLibcuda { compat: list(&passed_over), looked_in: list(system_dirs) });
    };
    if let Some(compat) = on_path.iter().find(|d| d.join("libcuda.so").exists()) {
        return Err(CudaEnvError::CompatLibcudaFirst { compat: compat.clone(), driver: library });
    }
    Ok(LibcudaChoice::Driver { library, passed_over })
}

/// When a compat folder on `ld_library_path` holds a bare `libcuda.so` and the driver's own
/// `libcuda.so.1` is in `system_dirs`: `LD_LIBRARY_PATH` without the compat folders, and the
/// folders taken off.
pub fn restart_plan(ld_library_path: Option<&OsStr>, system_dirs: &[PathBuf]) -> Option<(OsString, Vec<PathBuf>)> {
    let compat = compat_libcuda_dirs(ld_library_path);
    if !compat.iter().any(|d| d.join("libcuda.so").exists()) || driver_libcuda(system_dirs).is_none() {
        return None;
    }
    let kept: Vec<PathBuf> = std::env::split_paths(ld_library_path?).filter(|d| !compat.contains(d)).collect();
    Some((std::env::join_paths(kept).ok()?, compat))
}

/// The folders of `ld_library_path` that are part of a CUDA forward-compatibility package (a
/// `compat` component) and hold a `libcuda`.
pub fn compat_libcuda_dirs(ld_library_path: Option<&OsStr>) -> Vec<PathBuf> {
    let Some(paths) = ld_library_path else { return Vec::new() };
    std::env::split_paths(paths).filter(|d| is_compat(d) && holds_libcuda(d)).collect()
}

/// The driver's own `libcuda.so.1`: the first in `system_dirs`, never one that is, or links
/// to, a compat package's.
pub fn driver_libcuda(system_dirs: &[PathBuf]) -> Option<PathBuf> {
    system_dirs
        .iter()
        .map(|d| d.join("libcuda.so.1"))
        .find(|lib| lib.is_file() && !is_compat(lib) && !lib.canonicalize().is_ok_and(|real| is_compat(&real)))
}

fn is_compat(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "compat")
}

fn holds_libcuda(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("libcuda.so")))
    })
}

fn system_dirs() -> Vec<PathBuf> {
    SYSTEM_LIBRARY_DIRS.iter().map(PathBuf::from).collect()
}

fn list(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Loads a library by full path for the whole process (`RTLD_GLOBAL`; never unloaded), so a
/// later `dlopen` of its SONAME gets it.
fn load_global(library: &Path) -> Result<(), String> {
    let path = CString::new(library.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        let why = unsafe { libc::dlerror() };
        return Err(if why.is_null() {
            "dlopen failed".into()
        } else {
            unsafe { CStr::from_ptr(why) }.to_string_lossy().into_owned()
        });
    }
    Ok(())
}

/// Replaces this process with calm started again under `ld_library_path` (the dynamic loader
/// reads `LD_LIBRARY_PATH` only at start-up). Returns only if that fails, and then calm goes on
/// as it is ([`prepare_cuda_driver`] reports the compat folder if CUDA is asked for).
fn restart_with(ld_library_path: &OsStr, removed: &[PathBuf]) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else { return };
    let Some(passed_over) = std::env::join_paths(removed).ok() else { return };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let _error = command.args(args).env("LD_LIBRARY_PATH", ld_library_path).env(PASSED_OVER_VAR, passed_over).exec();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder `dir` holding a fake `libcuda.so.1` (and a bare `libcuda.so` when `bare`).
    fn libcuda_in(dir: &Path, bare: bool) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("libcuda.so.1"), "").unwrap();
        if bare {
            std::os::unix::fs::symlink("libcuda.so.1", dir.join("libcuda.so")).unwrap();
        }
        dir.to_path_buf()
    }

    fn path_of(dirs: &[&Path]) -> OsString {
        std::env::join_paths(dirs).unwrap()
    }

    #[test]
    fn no_compat_folder_leaves_the_loader_alone() {
        let dir = tempfile::tempdir().unwrap();
        let nvidia = libcuda_in(&dir.path().join("usr/local/nvidia/lib64"), true);
        let ld = path_of(&[&nvidia]);
        assert_eq!(choose_libcuda(Some(ld.as_os_str()), &[], &[]), Ok(LibcudaChoice::AsUsual));
        assert_eq!(choose_libcuda(None, &[], &[]), Ok(LibcudaChoice::AsUsual));
        assert_eq!(restart_plan(Some(ld.as_os_str()), &[nvidia]), None);
    }

    #[test]
    fn a_compat_libcuda_is_passed_over_for_the_drivers() {
        let dir = tempfile::tempdir().unwrap();
        let compat = libcuda_in(&dir.path().join("usr/local/cuda-13.0/compat"), false);
        let empty_compat = dir.path().join("other/compat");
        std::fs::create_dir_all(&empty_compat).unwrap();
        let system = libcuda_in(&dir.path().join("usr/lib/x86_64-linux-gnu"), true);
        let ld = path_of(&[&empty_compat, &compat]);
        let found = compat_libcuda_dirs(Some(ld.as_os_str()));
        assert_eq!(found, std::slice::from_ref(&compat), "a compat folder without libcuda is harmless");
        let choice =
            choose_libcuda(Some(ld.as_os_str()), &[], &[dir.path().join("usr/lib64"), system.clone()]).unwrap();
        assert_eq!(
            choice,
            LibcudaChoice::Driver { library: system.join("libcuda.so.1"), passed_over: vec![compat.clone()] }
        );
        // Without a bare libcuda.so in the compat folder, loading the driver's first is enough.
        assert_eq!(restart_plan(Some(ld.as_os_str()), &[system]), None);
    }

    #[test]
    fn a_bare_compat_libcuda_so_restarts_calm_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let compat = libcuda_in(&dir.path().join("cuda/compat"), true);
        let other = dir.path().join("other/lib");
        let system = libcuda_in(&dir.path().join("usr/lib64"), false);
        let ld = path_of(&[&other, &compat]);
        let (kept, removed) = restart_plan(Some(ld.as_os_str()), std::slice::from_ref(&system)).unwrap();
        assert_eq!((kept, removed.clone()), (other.into_os_string(), vec![compat.clone()]));
        // In process (a library caller; no restart), that compat folder cannot be kept out: a
        // one-line error, no panic.
        let e = choose_libcuda(Some(ld.as_os_str()), &[], std::slice::from_ref(&system)).unwrap_err();
        assert!(matches!(e, CudaEnvError::CompatLibcudaFirst { .. }), "{e:?}");
        assert!(!e.to_string().contains('\n'), "{e}");
        // After the restart, the driver's is loaded and the note names what was passed over.
        let after = choose_libcuda(Some(OsStr::new("")), &removed, std::slice::from_ref(&system)).unwrap();
        assert_eq!(after, LibcudaChoice::Driver { library: system.join("libcuda.so.1"), passed_over: vec![compat] });
    }

    /// With NVRTC installed (`scripts/fetch-cuda`; `scripts/test` sets CALM_REQUIRE_NVRTC): once
    /// calm has loaded the toolkit's NVRTC by full path, the bare SONAME cudarc asks for
    /// resolves to it, without any library path set.
    #[test]
    fn nvrtc_loaded_by_path_answers_cudarcs_bare_name() {
        let toolkit = match Toolkit::find() {
            Ok(t) => t,
            Err(e) if std::env::var_os("CALM_REQUIRE_NVRTC").is_some() => panic!("{e}"),
            Err(e) => {
                eprintln!("SKIPPED nvrtc_loaded_by_path_answers_cudarcs_bare_name: {e}");
                return;
            }
        };
        load_global(&toolkit.library).unwrap();
        // cudarc's candidates for CUDA 13 and 12 (`get_lib_name_candidates`); RTLD_NOLOAD: only
        // a library already loaded answers.
        let answered = ["libnvrtc.so.13", "libnvrtc.so.12"].iter().any(|name| {
            let name = CString::new(*name).unwrap();
            !unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) }.is_null()
        });
        assert!(answered, "{} is not found by its SONAME", toolkit.library.display());
    }

    #[test]
    fn only_a_compat_libcuda_is_an_error_naming_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let compat = libcuda_in(&dir.path().join("cuda/compat"), false);
        // A system libcuda.so.1 that links into a compat package is not the driver's.
        let system = dir.path().join("usr/lib");
        std::fs::create_dir_all(&system).unwrap();
        std::os::unix::fs::symlink(compat.join("libcuda.so.1"), system.join("libcuda.so.1")).unwrap();
        let ld = path_of(&[&compat]);
        let e = choose_libcuda(Some(ld.as_os_str()), &[], std::slice::from_ref(&system)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, CudaEnvError::OnlyCompatLibcuda { .. }), "{e:?}");
        assert!(!text.contains('\n') && text.contains(&system.display().to_string()), "{text}");
        assert_eq!(restart_plan(Some(ld.as_os_str()), &[system]), None, "no restart without a driver libcuda to use");
    }
}
