//! Finding a CUDA toolkit (NVRTC and the CUDA headers) without any environment variable set:
//! one search, used by the offline CUDA target (`calm compile --target cuda --emit ptx`) and by
//! `--device cuda` (whose CubeCL runtime compiles every kernel with NVRTC at run time).
//!
//! Where it looks, in order: `CALM_NVRTC` (a `libnvrtc.so*` or a toolkit folder), `CUDA_PATH`,
//! `CUDA_HOME`, the folder above `bin/nvcc` for each `nvcc` on `PATH`, `/usr/local/cuda`,
//! `/opt/cuda`, and NVIDIA's pip wheels that `scripts/fetch-cuda` installs into
//! `$CALM_HOME/cuda/nvidia/cu13`. In each of these roots, NVRTC in `lib`, `lib64`,
//! `targets/x86_64-linux/lib` (where CUDA 12 and 13 toolkits keep it) or
//! `lib/x86_64-linux-gnu` (Debian's packages), and `cuda_runtime.h` in `include` or
//! `targets/x86_64-linux/include`. The first root that has both is the toolkit.
//!
//! The search takes its inputs as a value ([`ToolkitSearch`]), so tests point it at fake
//! trees; [`ToolkitSearch::from_env`] reads the process's environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Folders of a root that may hold `libnvrtc.so*`.
const LIBRARY_DIRS: [&str; 4] = ["lib", "lib64", "targets/x86_64-linux/lib", "lib/x86_64-linux-gnu"];
/// Folders of a root that may hold `cuda_runtime.h`.
const INCLUDE_DIRS: [&str; 2] = ["include", "targets/x86_64-linux/include"];

/// What is missing, and every folder the search looked in: one line each, with how to fix it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ToolkitError {
    #[error(
        "CUDA toolkit not found: no NVRTC library (libnvrtc.so*) in {looked_in}; run \
         `scripts/fetch-cuda` (NVIDIA's NVRTC and header wheels into $CALM_HOME/cuda), or set \
         CUDA_PATH to a CUDA toolkit"
    )]
    NoNvrtc { looked_in: String },
    #[error(
        "CUDA headers not found: NVRTC is in {library} but no cuda_runtime.h in {looked_in}; run \
         `scripts/fetch-cuda` (the nvidia-cuda-runtime wheel has them), or set CUDA_PATH to a \
         complete CUDA toolkit"
    )]
    NoHeaders { library: String, looked_in: String },
}

/// A CUDA toolkit, or the part of it NVRTC needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolkit {
    /// `libnvrtc.so*`, resolved (NVRTC finds its builtins library next to the real file).
    pub library: PathBuf,
    /// Header folders: the one holding `cuda_runtime.h`, and its `cccl` where the cccl wheel
    /// put CCCL.
    pub includes: Vec<PathBuf>,
    /// The folder above the headers' `include`: what CubeCL's CUDA runtime must see as
    /// `CUDA_PATH`, since it reads `$CUDA_PATH/include` and `$CUDA_PATH/include/cccl`.
    pub cuda_path: PathBuf,
}

/// The inputs of the search: the environment variables that name a toolkit, and the folders
/// tried after them.
#[derive(Clone, Debug, Default)]
pub struct ToolkitSearch {
    /// `CALM_NVRTC`: a `libnvrtc.so*`, or a toolkit folder.
    pub calm_nvrtc: Option<PathBuf>,
    pub cuda_path: Option<PathBuf>,
    pub cuda_home: Option<PathBuf>,
    /// `PATH`, searched for `nvcc`.
    pub path: Option<OsString>,
    /// The roots tried last, in order: `/usr/local/cuda`, `/opt/cuda`, the wheels.
    pub fallback_roots: Vec<PathBuf>,
}

/// An environment variable's value as a path; an empty one counts as unset.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

impl ToolkitSearch {
    /// The search this process makes: its environment, and the usual install folders.
    pub fn from_env() -> ToolkitSearch {
        ToolkitSearch {
            calm_nvrtc: env_path("CALM_NVRTC"),
            cuda_path: env_path("CUDA_PATH"),
            cuda_home: env_path("CUDA_HOME"),
            path: std::env::var_os("PATH"),
            fallback_roots: vec![
                PathBuf::from("/usr/local/cuda"),
                PathBuf::from("/opt/cuda"),
                wheels_root(&crate::profile::peaks::calm_home()),
            ],
        }
    }

    /// The roots to search, in order, without repeats (`CUDA_PATH=/usr/local/cuda` is looked
    /// at once).
    fn roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = Vec::new();
        roots.extend(self.calm_nvrtc.iter().filter(|p| !p.is_file()).cloned());
        roots.extend(self.cuda_path.iter().cloned());
        roots.extend(self.cuda_home.iter().cloned());
        if let Some(path) = &self.path {
            for dir in std::env::split_paths(path) {
                let nvcc = dir.join("nvcc");
                if !nvcc.is_file() {
                    continue;
                }
                // `/usr/local/bin/nvcc` may be a link into the toolkit: its target's root first,
                // then the root of the folder it was found in.
                if let Some(root) = nvcc.canonicalize().ok().as_deref().and_then(root_above_bin) {
                    roots.push(root);
                }
                roots.extend(root_above_bin(&nvcc));
            }
        }
        roots.extend(self.fallback_roots.iter().cloned());
        let mut seen = Vec::new();
        roots.retain(|r| {
            let new = !seen.contains(r);
            seen.push(r.clone());
            new
        });
        roots
    }

    /// The first root holding both NVRTC and `cuda_runtime.h`; else what is missing and where
    /// the search looked.
    pub fn find(&self) -> Result<Toolkit, ToolkitError> {
        // CALM_NVRTC naming the library itself: the headers are looked for around it.
        if let Some(library) = self.calm_nvrtc.as_ref().filter(|p| p.is_file()) {
            let root = library.parent().map(root_of_library_dir).unwrap_or_default();
            return match headers_in(&root) {
                Some(include) => Ok(Toolkit::new(library, include)),
                None => Err(ToolkitError::NoHeaders {
                    library: library.display().to_string(),
                    looked_in: list(INCLUDE_DIRS.iter().map(|d| root.join(d))),
                }),
            };
        }
        let roots = self.roots();
        let mut first_library: Option<PathBuf> = None;
        for root in &roots {
            let Some(library) = nvrtc_in(root) else { continue };
            if let Some(include) = headers_in(root) {
                return Ok(Toolkit::new(&library, include));
            }
            first_library.get_or_insert(library);
        }
        let each = |dirs: &'static [&'static str]| roots.iter().flat_map(move |r| dirs.iter().map(move |d| r.join(d)));
        match first_library {
            None => Err(ToolkitError::NoNvrtc { looked_in: list(each(&LIBRARY_DIRS)) }),
            Some(library) => Err(ToolkitError::NoHeaders {
                library: library.display().to_string(),
                looked_in: list(each(&INCLUDE_DIRS)),
            }),
        }
    }
}

impl Toolkit {
    /// Finds the toolkit from this process's environment ([`ToolkitSearch::from_env`]).
    pub fn find() -> Result<Toolkit, ToolkitError> {
        ToolkitSearch::from_env().find()
    }

    fn new(library: &Path, include: PathBuf) -> Toolkit {
        let mut includes = vec![include.clone()];
        if include.join("cccl").is_dir() {
            includes.push(include.join("cccl"));
        }
        let cuda_path = include.parent().map(Path::to_path_buf).unwrap_or_default();
        let library = library.canonicalize().unwrap_or_else(|_| library.to_path_buf());
        Toolkit { library, includes, cuda_path }
    }
}

/// Where `scripts/fetch-cuda` installs NVIDIA's wheels under `$CALM_HOME`.
pub fn wheels_root(calm_home: &Path) -> PathBuf {
    calm_home.join("cuda/nvidia/cu13")
}

/// `.../bin/nvcc` → `...`.
fn root_above_bin(nvcc: &Path) -> Option<PathBuf> {
    nvcc.parent().and_then(Path::parent).map(Path::to_path_buf)
}

/// The root a library folder belongs to: `root/targets/x86_64-linux/lib` → `root/targets/
/// x86_64-linux` (which has its own `include`), `root/lib64` → `root`.
fn root_of_library_dir(dir: &Path) -> PathBuf {
    ["lib/x86_64-linux-gnu", "lib", "lib64"]
        .iter()
        .find_map(|suffix| {
            let n = Path::new(suffix).components().count();
            dir.ends_with(suffix).then(|| dir.ancestors().nth(n).map(Path::to_path_buf)).flatten()
        })
        .unwrap_or_else(|| dir.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The first `libnvrtc.so*` of `root`'s library folders (`libnvrtc.so` before `libnvrtc.so.13`
/// before the versioned file: any of them is the same library).
fn nvrtc_in(root: &Path) -> Option<PathBuf> {
    LIBRARY_DIRS.iter().find_map(|dir| {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libnvrtc.so")))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.into_iter().next()
    })
}

/// The folder of `root` holding `cuda_runtime.h`.
fn headers_in(root: &Path) -> Option<PathBuf> {
    INCLUDE_DIRS.iter().map(|d| root.join(d)).find(|d| d.join("cuda_runtime.h").is_file())
}

fn list(dirs: impl Iterator<Item = PathBuf>) -> String {
    dirs.map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake toolkit under `root`: an empty `libnvrtc.so.13` in `lib` and a `cuda_runtime.h`
    /// in `include` (folders relative to `root`; `None` leaves that part out).
    fn fake(root: &Path, lib: Option<&str>, include: Option<&str>) -> PathBuf {
        if let Some(include) = include {
            std::fs::create_dir_all(root.join(include)).unwrap();
            std::fs::write(root.join(include).join("cuda_runtime.h"), "").unwrap();
        }
        let lib = lib.map(|lib| root.join(lib));
        if let Some(lib) = &lib {
            std::fs::create_dir_all(lib).unwrap();
            std::fs::write(lib.join("libnvrtc.so.13"), "").unwrap();
        }
        lib.map(|l| l.join("libnvrtc.so.13").canonicalize().unwrap()).unwrap_or_default()
    }

    fn nothing() -> ToolkitSearch {
        ToolkitSearch::default()
    }

    #[test]
    fn each_variable_names_a_toolkit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cuda-13.0");
        let library = fake(&root, Some("lib64"), Some("include"));
        let expected =
            Toolkit { library: library.clone(), includes: vec![root.join("include")], cuda_path: root.clone() };
        let searches = [
            ("CALM_NVRTC (a folder)", ToolkitSearch { calm_nvrtc: Some(root.clone()), ..nothing() }),
            (
                "CALM_NVRTC (the library)",
                ToolkitSearch { calm_nvrtc: Some(root.join("lib64/libnvrtc.so.13")), ..nothing() },
            ),
            ("CUDA_PATH", ToolkitSearch { cuda_path: Some(root.clone()), ..nothing() }),
            ("CUDA_HOME", ToolkitSearch { cuda_home: Some(root.clone()), ..nothing() }),
            (
                "a fallback root",
                ToolkitSearch { fallback_roots: vec![dir.path().join("absent"), root.clone()], ..nothing() },
            ),
        ];
        for (how, search) in searches {
            assert_eq!(search.find().as_ref(), Ok(&expected), "through {how}");
        }
    }

    #[test]
    fn nvcc_on_path_names_its_toolkit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("toolkit");
        let library = fake(&root, Some("targets/x86_64-linux/lib"), Some("targets/x86_64-linux/include"));
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/nvcc"), "").unwrap();
        let elsewhere = dir.path().join("elsewhere/bin");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let path = std::env::join_paths([elsewhere, root.join("bin")]).unwrap();
        let found = ToolkitSearch { path: Some(path), ..nothing() }.find().unwrap();
        // CUDA 12/13 keep both under targets/: CubeCL must see that folder as CUDA_PATH.
        let target = root.join("targets/x86_64-linux");
        assert_eq!(found, Toolkit { library, includes: vec![target.join("include")], cuda_path: target });

        // A link to nvcc from another bin folder leads to the toolkit it points into.
        let links = dir.path().join("links/bin");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(root.join("bin/nvcc"), links.join("nvcc")).unwrap();
        let through_link = ToolkitSearch { path: Some(links.into_os_string()), ..nothing() }.find().unwrap();
        assert_eq!(through_link.library, found.library);
    }

    #[test]
    fn the_wheels_are_found_with_cccl() {
        let dir = tempfile::tempdir().unwrap();
        let wheels = wheels_root(dir.path());
        let library = fake(&wheels, Some("lib"), Some("include"));
        std::fs::create_dir_all(wheels.join("include/cccl")).unwrap();
        let search = ToolkitSearch {
            fallback_roots: vec![dir.path().join("usr/local/cuda"), dir.path().join("opt/cuda"), wheels.clone()],
            ..nothing()
        };
        let found = search.find().unwrap();
        assert_eq!(found.library, library);
        assert_eq!(found.includes, [wheels.join("include"), wheels.join("include/cccl")]);
        assert_eq!(found.cuda_path, wheels);
    }

    #[test]
    fn the_first_complete_root_wins_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        fake(&a, Some("lib"), None); // NVRTC without headers: passed over
        let library_b = fake(&b, Some("lib64"), Some("include"));
        fake(&c, Some("lib"), Some("include"));
        let search = ToolkitSearch { cuda_path: Some(a), cuda_home: Some(b), fallback_roots: vec![c], ..nothing() };
        assert_eq!(search.find().unwrap().library, library_b);
    }

    #[test]
    fn no_nvrtc_is_one_line_naming_every_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fake(&a, None, Some("include")); // headers alone are not a toolkit
        let search =
            ToolkitSearch { cuda_path: Some(a.clone()), fallback_roots: vec![b.clone(), a.clone()], ..nothing() };
        let e = search.find().unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ToolkitError::NoNvrtc { .. }), "{e:?}");
        assert!(!text.contains('\n'), "one line: {text}");
        for root in [&a, &b] {
            for d in LIBRARY_DIRS {
                assert!(text.contains(&root.join(d).display().to_string()), "names {}/{d}: {text}", root.display());
            }
        }
        assert_eq!(text.matches(&a.join("lib64").display().to_string()).count(), 1, "each folder once: {text}");
        assert!(text.contains("scripts/fetch-cuda") && text.contains("CUDA_PATH"), "says how to fix: {text}");
    }

    #[test]
    fn no_headers_is_one_line_naming_the_library() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cuda");
        let library = fake(&root, Some("lib"), None);
        for search in [
            ToolkitSearch { cuda_home: Some(root.clone()), ..nothing() },
            ToolkitSearch { calm_nvrtc: Some(library.clone()), ..nothing() },
        ] {
            let e = search.find().unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, ToolkitError::NoHeaders { .. }), "{e:?}");
            assert!(!text.contains('\n') && text.contains("cuda_runtime.h"), "{text}");
            assert!(text.contains(&root.join("include").display().to_string()), "{text}");
            assert!(text.contains(&root.join("targets/x86_64-linux/include").display().to_string()), "{text}");
        }
    }

    #[test]
    fn nothing_to_search_is_an_error_not_a_panic() {
        let e = nothing().find().unwrap_err();
        assert_eq!(e, ToolkitError::NoNvrtc { looked_in: String::new() });
    }
}
