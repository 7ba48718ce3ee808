//! NVRTC, loaded at run time: CUDA C++ to sm_90 PTX, with ptxas's resource report (registers,
//! shared memory, spills) from the same call. No CUDA driver or GPU is needed, only the
//! toolkit's `libnvrtc` and headers, which [`super::toolkit`] finds (a CUDA toolkit, or the
//! NVIDIA Python wheels that `scripts/fetch-cuda` installs into `$CALM_HOME/cuda`).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;

use serde::Serialize;
use thiserror::Error;

pub use super::toolkit::{Toolkit, ToolkitError};

#[derive(Debug, Error)]
pub enum NvrtcError {
    #[error(transparent)]
    Toolkit(#[from] ToolkitError),
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("NVRTC failed on kernel `{kernel}` ({code}): {log}")]
    Compile { kernel: String, code: String, log: String },
}

type Program = *mut c_void;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type CreateFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Program) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// The NVRTC entry points calm uses.
pub struct Nvrtc {
    handle: *mut c_void,
    version: VersionFn,
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: GetFn,
    ptx_size: SizeFn,
    ptx: GetFn,
    destroy: DestroyFn,
    error_string: ErrorStringFn,
    includes: Vec<PathBuf>,
}

// The library handle and function pointers may move between threads; NVRTC is thread-safe.
unsafe impl Send for Nvrtc {}

impl Drop for Nvrtc {
    fn drop(&mut self) {
        unsafe { libc::dlclose(self.handle) };
    }
}

/// One kernel compiled for sm_90: its PTX and what ptxas reported.
#[derive(Clone, Debug, Serialize)]
pub struct Compiled {
    pub ptx: String,
    pub resources: Vec<Resources>,
}

/// ptxas's report for one entry function.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub function: String,
    pub registers: u32,
    pub shared_bytes: u64,
    pub stack_bytes: u64,
    pub spill_store_bytes: u64,
    pub spill_load_bytes: u64,
}

impl Nvrtc {
    pub fn load(toolkit: &Toolkit) -> Result<Nvrtc, NvrtcError> {
        let err = |message: String| NvrtcError::Load { path: toolkit.library.clone(), message };
        let path = CString::new(toolkit.library.as_os_str().as_encoded_bytes()).map_err(|e| err(e.to_string()))?;
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            let why = unsafe { CStr::from_ptr(libc::dlerror()) }.to_string_lossy().into_owned();
            return Err(err(why));
        }
        macro_rules! sym {
            ($name:literal, $ty:ty) => {{
                let name = CString::new($name).expect("a symbol name");
                let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
                if p.is_null() {
                    unsafe { libc::dlclose(handle) };
                    return Err(err(format!("no symbol {}", $name)));
                }
                // SAFETY: the symbol is NVRTC's function of this documented signature.
                unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
            }};
        }
        Ok(Nvrtc {
            handle,
            version: sym!("nvrtcVersion", VersionFn),
            create: sym!("nvrtcCreateProgram", CreateFn),
            compile: sym!("nvrtcCompileProgram", CompileFn),
            log_size: sym!("nvrtcGetProgramLogSize", SizeFn),
            log: sym!("nvrtcGetProgramLog", GetFn),
            ptx_size: sym!("nvrtcGetPTXSize", SizeFn),
            ptx: sym!("nvrtcGetPTX", GetFn),
            destroy: sym!("nvrtcDestroyProgram", DestroyFn),
            error_string: sym!("nvrtcGetErrorString", ErrorStringFn),
            includes: toolkit.includes.clone(),
        })
    }

    /// `major.minor`.
    pub fn version(&self) -> String {
        let (mut major, mut minor) = (0, 0);
        unsafe { (self.version)(&mut major, &mut minor) };
        format!("{major}.{minor}")
    }

    fn code(&self, code: c_int) -> String {
        let s = unsafe { (self.error_string)(code) };
        if s.is_null() {
            format!("error {code}")
        } else {
            unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
        }
    }

    /// Compiles `source` (kernel `name`, for messages) for `arch` (`sm_90`): its PTX, and the
    /// registers, shared memory and spills of each entry as ptxas reports them.
    pub fn compile(&self, name: &str, source: &str, arch: &str) -> Result<Compiled, NvrtcError> {
        let fail = |code: String, log: String| NvrtcError::Compile { kernel: name.to_string(), code, log };
        let src = CString::new(source).map_err(|e| fail("source".into(), e.to_string()))?;
        let file = CString::new(format!("{name}.cu")).expect("a file name");
        let mut options: Vec<CString> = vec![
            CString::new(format!("--gpu-architecture={arch}")).expect("option"),
            CString::new("-lineinfo").expect("option"),
            CString::new("--ptxas-options=-v").expect("option"),
        ];
        for dir in &self.includes {
            options.push(CString::new(format!("--include-path={}", dir.display())).expect("option"));
        }
        let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Program = std::ptr::null_mut();
        let rc =
            unsafe { (self.create)(&mut prog, src.as_ptr(), file.as_ptr(), 0, std::ptr::null(), std::ptr::null()) };
        if rc != 0 {
            return Err(fail(self.code(rc), String::new()));
        }
        let rc = unsafe { (self.compile)(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
        let log = self.read(prog, self.log_size, self.log);
        let result = if rc != 0 {
            Err(fail(self.code(rc), log))
        } else {
            let ptx = self.read(prog, self.ptx_size, self.ptx);
            Ok(Compiled { ptx, resources: parse_ptxas(&log) })
        };
        unsafe { (self.destroy)(&mut prog) };
        result
    }

    fn read(&self, prog: Program, size: SizeFn, get: GetFn) -> String {
        let mut n = 0usize;
        if unsafe { size(prog, &mut n) } != 0 || n == 0 {
            return String::new();
        }
        let mut buf = vec![0u8; n];
        if unsafe { get(prog, buf.as_mut_ptr() as *mut c_char) } != 0 {
            return String::new();
        }
        // The size counts the terminating NUL.
        String::from_utf8_lossy(&buf[..n.saturating_sub(1)]).into_owned()
    }
}

/// The numbers before each of `labels` in a comma-separated list (`Used 40 registers, used 1
/// barriers, 1024 bytes smem`), 0 where a label is absent.
fn numbers_before<const N: usize>(text: &str, labels: [&str; N]) -> [u64; N] {
    let mut out = [0; N];
    for item in text.split(',') {
        let item = item.trim();
        for (i, label) in labels.iter().enumerate() {
            if let Some(number) = item.strip_suffix(label) {
                let number = number.trim().rsplit(' ').next().unwrap_or("");
                if let Ok(v) = number.parse() {
                    out[i] = v;
                }
            }
        }
    }
    out
}

/// ptxas's `-v` report, per entry function (a function's properties line, then its `Used`
/// line; NVRTC prefixes the former with `ptxas .`). Non-entry functions have no `Used` line and
/// are left out.
pub fn parse_ptxas(log: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    let mut current: Option<Resources> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some(Resources { function: rest.trim().to_string(), ..Resources::default() });
        } else if line.contains("bytes stack frame") {
            if let Some(r) = current.as_mut() {
                let [stack, stores, loads] =
                    numbers_before(line, ["bytes stack frame", "bytes spill stores", "bytes spill loads"]);
                (r.stack_bytes, r.spill_store_bytes, r.spill_load_bytes) = (stack, stores, loads);
            }
        } else if let Some(rest) = line.split("Used ").nth(1) {
            if let Some(mut r) = current.take() {
                let [registers, smem] = numbers_before(&format!("Used {rest}"), ["registers", "bytes smem"]);
                r.registers = registers as u32;
                r.shared_bytes = smem;
                out.push(r);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_reports_parse() {
        // Verbatim from ptxas 13.5 (-v) and from NVRTC's log with --ptxas-options=-v.
        let log = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'smem_reduce' for 'sm_90'
ptxas info    : Function properties for smem_reduce
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 1 barriers, 1024 bytes smem
ptxas info    : Compile time = 3.371 ms
ptxas info    : Function properties for spill
ptxas         .     640 bytes stack frame, 1544 bytes spill stores, 1640 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 640 bytes cumulative stack size
ptxas info    : Function properties for _Z6helperPfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
";
        let r = parse_ptxas(log);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(
            r[0],
            Resources { function: "smem_reduce".into(), registers: 14, shared_bytes: 1024, ..Resources::default() }
        );
        assert_eq!(
            r[1],
            Resources {
                function: "spill".into(),
                registers: 32,
                shared_bytes: 0,
                stack_bytes: 640,
                spill_store_bytes: 1544,
                spill_load_bytes: 1640
            }
        );
    }
}
