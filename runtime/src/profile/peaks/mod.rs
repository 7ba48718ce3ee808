//! A device's ceilings, one per execution unit, measured by microbenchmarks
//! ([`microbench`]): the FP32 pipelines, the tensor cores per operand type (where the device
//! has them), memory bandwidth and the cost of a launch. Measured once per device and cached in
//! `$CALM_HOME/device-peaks.json`, because a profile reads each kernel as a share of them and
//! the measurement takes seconds.

pub mod microbench;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use calm_passes::plan::ComputeUnit;
use cubecl::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::Ceilings;
pub(crate) use microbench::sync;
pub use microbench::{median, DeviceShape};
use microbench::{CopyBench, FmaBench, LaunchBench, MmaBench};

/// The format tag of the cache file. 1 (untagged, before 2026-12-06) held one FMA and one copy
/// figure per device, measured on too few threads and an L2-sized buffer; its entries are
/// measured again, not read.
pub const PEAKS_FORMAT: &str = "calm-device-peaks/2";

/// A device's measured ceilings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DevicePeaks {
    /// FMA throughput of the FP32 pipelines, GFLOP/s.
    pub fp32_gflops: f64,
    /// Tensor-core throughput per operand type (`tensor-bf16`, ...), GFLOP/s: only the types
    /// the device reports `cmma` support for.
    pub tensor_gflops: BTreeMap<ComputeUnit, f64>,
    /// Copy bandwidth, bytes read plus bytes written, GB/s; each source buffer's size and how
    /// many there were (the working set is their sum, twice).
    pub copy_gbps: f64,
    pub copy_buffer_bytes: u64,
    pub copy_buffers: u32,
    /// What a launch costs beyond its work, launched back to back, µs.
    pub launch_overhead_us: f64,
    /// When it was measured (seconds since the Unix epoch) and with how many timed runs.
    pub measured_unix: u64,
    pub iters: usize,
}

impl DevicePeaks {
    pub fn ceilings(&self) -> Ceilings {
        let mut flops_per_s = BTreeMap::from([(ComputeUnit::Fp32Cores, self.fp32_gflops * 1e9)]);
        flops_per_s.extend(self.tensor_gflops.iter().map(|(&u, &g)| (u, g * 1e9)));
        Ceilings { flops_per_s, bytes_per_s: self.copy_gbps * 1e9, launch_overhead_s: self.launch_overhead_us * 1e-6 }
    }

    /// The day it was measured, `YYYY-MM-DD` (UTC).
    pub fn measured_date(&self) -> String {
        civil_date(self.measured_unix)
    }
}

/// `YYYY-MM-DD` of a Unix time (UTC), by Howard Hinnant's days-to-civil algorithm.
fn civil_date(unix: u64) -> String {
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[derive(Debug, Error)]
pub enum PeakCacheError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a device-peak cache ({source}); delete it or measure again (calm device-peak --remeasure)")]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// Measures every ceiling of the device behind `client` (the fastest of `iters` runs each),
/// saying what it measures through `progress`.
pub fn measure<R: Runtime>(
    client: &ComputeClient<R>,
    shape: &DeviceShape,
    iters: usize,
    progress: &dyn Fn(&str),
) -> DevicePeaks {
    progress("FP32 multiply-adds");
    let fp32 = FmaBench::for_device(shape).run(client, iters);
    let mut tensor_gflops = BTreeMap::new();
    // A CPU adapter has no tensor cores to measure.
    for unit in ComputeUnit::ALL.into_iter().filter(|u| u.is_tensor_core() && !shape.cpu) {
        progress(unit.name());
        if let Some(rate) = MmaBench::for_device(unit, shape).run(client, iters) {
            tensor_gflops.insert(unit, rate / 1e9);
        }
    }
    let copy = CopyBench::for_device(shape);
    progress(&format!("copies of {} × {} MiB", copy.buffers, copy.bytes >> 20));
    let copy_rate = copy.run(client, iters);
    progress("launch overhead");
    let overhead = LaunchBench { launches: 200 }.run(client, iters);
    DevicePeaks {
        fp32_gflops: fp32 / 1e9,
        tensor_gflops,
        copy_gbps: copy_rate / 1e9,
        copy_buffer_bytes: copy.bytes,
        copy_buffers: copy.buffers,
        launch_overhead_us: overhead * 1e6,
        measured_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        iters,
    }
}

/// Where calm keeps caches: `$CALM_HOME`, else `~/.cache/calm`.
pub fn calm_home() -> PathBuf {
    match std::env::var_os("CALM_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".cache/calm"),
    }
}

/// The cache of measured peaks, by device name.
pub struct PeakCache {
    path: PathBuf,
    entries: BTreeMap<String, DevicePeaks>,
    /// Devices whose entries were of an older format and will be measured again.
    pub stale: Vec<String>,
}

/// The file: the format tag and the entries.
#[derive(Serialize, Deserialize)]
struct PeakFile {
    format: String,
    devices: BTreeMap<String, DevicePeaks>,
}

impl PeakCache {
    /// The cache at `path` (empty if the file does not exist yet). A file of the first format
    /// (no tag) opens empty, its devices listed in [`stale`](Self::stale); a file of an
    /// unknown format or that does not parse is an error.
    pub fn open(path: &Path) -> Result<PeakCache, PeakCacheError> {
        let parse = |source| PeakCacheError::Parse { path: path.to_path_buf(), source };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PeakCache::replacing(path)),
            Err(source) => return Err(PeakCacheError::Io { path: path.to_path_buf(), source }),
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(parse)?;
        match value.get("format").and_then(serde_json::Value::as_str) {
            Some(PEAKS_FORMAT) => {
                let file: PeakFile = serde_json::from_value(value).map_err(parse)?;
                Ok(PeakCache { path: path.to_path_buf(), entries: file.devices, stale: Vec::new() })
            }
            Some(other) => {
                let message = format!("format `{other}`, not this calm's `{PEAKS_FORMAT}`");
                Err(parse(serde::de::Error::custom(message)))
            }
            None => {
                // Format 1: device name → {fma_gflops, copy_gbps, ...}.
                let old: BTreeMap<String, serde_json::Value> = serde_json::from_value(value).map_err(parse)?;
                Ok(PeakCache { path: path.to_path_buf(), entries: BTreeMap::new(), stale: old.into_keys().collect() })
            }
        }
    }

    /// An empty cache that will be written to `path` (replacing whatever is there).
    pub fn replacing(path: &Path) -> PeakCache {
        PeakCache { path: path.to_path_buf(), entries: BTreeMap::new(), stale: Vec::new() }
    }

    /// The default cache, `$CALM_HOME/device-peaks.json`.
    pub fn default_path() -> PathBuf {
        calm_home().join("device-peaks.json")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, device: &str) -> Option<&DevicePeaks> {
        self.entries.get(device)
    }

    /// The entries, by device name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &DevicePeaks)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Records `peaks` for `device` and rewrites the file atomically (in the current format;
    /// stale entries of an older one are dropped). Under the file's lock it first rereads what
    /// other processes recorded since this cache was opened, so two measuring at once both land.
    pub fn insert(&mut self, device: &str, peaks: DevicePeaks) -> Result<(), PeakCacheError> {
        let io = |source| PeakCacheError::Io { path: self.path.clone(), source };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let path = self.path.clone();
        calm_ir::files::with_lock(&path, || {
            // A file that no longer parses (or is of another format) is replaced, as before.
            if let Ok(on_disk) = PeakCache::open(&path) {
                // Other devices' entries on disk are at least as new as this cache's.
                self.entries.extend(on_disk.entries);
            }
            self.entries.insert(device.to_string(), peaks);
            self.stale.retain(|d| d != device);
            let file = PeakFile { format: PEAKS_FORMAT.into(), devices: self.entries.clone() };
            let json = serde_json::to_string_pretty(&file).expect("peaks serialise");
            calm_ir::files::write_atomic(&path, json.as_bytes())
        })
        .and_then(|written| written)
        .map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peaks() -> DevicePeaks {
        DevicePeaks {
            fp32_gflops: 80.0,
            tensor_gflops: BTreeMap::from([(ComputeUnit::TensorBf16, 700_000.0)]),
            copy_gbps: 20.0,
            copy_buffer_bytes: 1 << 30,
            copy_buffers: 1,
            launch_overhead_us: 4.5,
            measured_unix: 1_796_342_400,
            iters: 9,
        }
    }

    #[test]
    fn the_cache_round_trips_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/device-peaks.json");
        let mut cache = PeakCache::open(&path).unwrap();
        assert!(cache.get("dev").is_none());
        cache.insert("dev", peaks()).unwrap();
        assert_eq!(PeakCache::open(&path).unwrap().get("dev"), Some(&peaks()));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(PEAKS_FORMAT) && text.contains("\"tensor-bf16\": 700000.0"), "{text}");
        std::fs::write(&path, "{bad").unwrap();
        let err = PeakCache::open(&path).err().expect("a parse error").to_string();
        assert!(err.contains("device-peaks.json") && err.contains("--remeasure"), "{err}");
        std::fs::write(&path, r#"{"format": "calm-device-peaks/9", "devices": {}}"#).unwrap();
        let err = PeakCache::open(&path).err().expect("a format error").to_string();
        assert!(err.contains("calm-device-peaks/9") && err.contains("--remeasure"), "{err}");
        let mut fresh = PeakCache::replacing(&path);
        fresh.insert("dev", peaks()).unwrap();
        assert_eq!(PeakCache::open(&path).unwrap().get("dev"), Some(&peaks()));
    }

    /// Two processes that opened the cache before either measured both keep their entry.
    #[test]
    fn two_caches_measuring_at_once_lose_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device-peaks.json");
        let (mut a, mut b) = (PeakCache::open(&path).unwrap(), PeakCache::open(&path).unwrap());
        a.insert("gpu a", peaks()).unwrap();
        b.insert("gpu b", peaks()).unwrap();
        let file = PeakCache::open(&path).unwrap();
        assert!(file.get("gpu a").is_some() && file.get("gpu b").is_some());
        // Concurrent inserters from many threads: every one lands.
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = &path;
                s.spawn(move || PeakCache::open(path).unwrap().insert(&format!("dev {i}"), peaks()).unwrap());
            }
        });
        assert_eq!(PeakCache::open(&path).unwrap().entries().count(), 10);
    }

    #[test]
    fn entries_of_the_first_format_are_remeasured_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device-peaks.json");
        // As calm wrote it before 2026-12-06: FMA 10.9 TFLOP/s and an L2-sized copy on an H200.
        let old = r#"{"cuda (NVIDIA H200)": {"fma_gflops": 10900.0, "copy_gbps": 5300.0, "measured_unix": 1, "iters": 9},
                      "wgpu (llvmpipe)": {"fma_gflops": 60.0, "copy_gbps": 12.0, "measured_unix": 1, "iters": 9}}"#;
        std::fs::write(&path, old).unwrap();
        let mut cache = PeakCache::open(&path).unwrap();
        assert!(cache.get("cuda (NVIDIA H200)").is_none(), "an old entry is not read as a new one");
        assert_eq!(cache.stale, ["cuda (NVIDIA H200)", "wgpu (llvmpipe)"]);
        cache.insert("wgpu (llvmpipe)", peaks()).unwrap();
        let reread = PeakCache::open(&path).unwrap();
        assert_eq!(reread.get("wgpu (llvmpipe)"), Some(&peaks()));
        assert!(reread.get("cuda (NVIDIA H200)").is_none() && reread.stale.is_empty());
    }

    #[test]
    fn peaks_become_ceilings_per_unit() {
        let c = peaks().ceilings();
        assert_eq!(c.flops_of(ComputeUnit::Fp32Cores), 80e9);
        assert_eq!(c.flops_of(ComputeUnit::TensorBf16), 700e12);
        // Not measured (no f16 cmma reported): the FP32 figure.
        assert_eq!(c.flops_of(ComputeUnit::TensorF16), 80e9);
        assert_eq!((c.bytes_per_s, c.launch_overhead_s), (20e9, 4.5e-6));
        assert_eq!(peaks().measured_date(), "2026-12-04");
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
    }
}
