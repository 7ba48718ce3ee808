//! The device's two ceilings, measured by microbenchmarks (`calm_kernels::peak`): FMA
//! throughput and copy bandwidth. Measured once per device and cached in
//! `$CALM_HOME/device-peaks.json`, because a profile reads each kernel as a share of them and
//! the measurement takes seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use calm_kernels::peak;
use cubecl::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::Ceilings;

/// A device's measured ceilings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DevicePeaks {
    pub fma_gflops: f64,
    pub copy_gbps: f64,
    /// When it was measured (seconds since the Unix epoch) and with how many timed runs.
    pub measured_unix: u64,
    pub iters: usize,
}

impl DevicePeaks {
    pub fn ceilings(&self) -> Ceilings {
        Ceilings { flops_per_s: self.fma_gflops * 1e9, bytes_per_s: self.copy_gbps * 1e9 }
    }
}

#[derive(Debug, Error)]
pub enum PeakCacheError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a device-peak cache ({source}); delete it or measure again (calm device-peak --remeasure)")]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// The host-clock times of `iters` runs of `f` after one untimed run.
fn timed_runs(iters: usize, mut f: impl FnMut()) -> Vec<Duration> {
    f();
    (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

/// The median of `iters` timed runs of `f` (host clock) after one untimed run.
pub fn median(iters: usize, f: impl FnMut()) -> Duration {
    let mut times = timed_runs(iters, f);
    times.sort();
    times[times.len() / 2]
}

/// The fastest of `iters` timed runs of `f` after one untimed run: a ceiling is what the device
/// can do, and on a shared machine slower runs measure the neighbours.
fn fastest(iters: usize, f: impl FnMut()) -> Duration {
    timed_runs(iters, f).into_iter().min().expect("at least one run")
}

/// Waits for everything enqueued on `client`'s device.
pub(crate) fn sync<R: Runtime>(client: &ComputeClient<R>) {
    cubecl::future::block_on(client.sync()).expect("device sync");
}

/// Measures the device's peak FMA throughput and copy bandwidth (the fastest of `iters` runs).
pub fn measure<R: Runtime>(client: &ComputeClient<R>, iters: usize) -> DevicePeaks {
    let (width, threads, cubes, rounds) = (16usize, 64u32, 64u32, 4000u32);
    let out = client.empty(threads as usize * cubes as usize * width * 4);
    let t = fastest(iters, || {
        unsafe {
            peak::fma::launch_unchecked::<R>(
                client,
                CubeCount::Static(cubes, 1, 1),
                CubeDim::new_1d(threads),
                width,
                ArrayArg::from_raw_parts(out.clone(), (threads * cubes) as usize),
                rounds,
            )
        };
        sync(client);
    });
    let flops = 16.0 * width as f64 * rounds as f64 * (threads * cubes) as f64;
    let n = 1usize << 24;
    let src = client.create_from_slice(f32::as_bytes(&vec![1.0f32; n]));
    let dst = client.empty(n * 4);
    let units = n / width;
    let copy_cubes = (units / 64) as u32;
    let tc = fastest(iters, || {
        unsafe {
            peak::copy::launch_unchecked::<R>(
                client,
                CubeCount::Static(copy_cubes.min(65_535), copy_cubes.div_ceil(65_535), 1),
                CubeDim::new_1d(64),
                width,
                ArrayArg::from_raw_parts(src.clone(), units),
                ArrayArg::from_raw_parts(dst.clone(), units),
            )
        };
        sync(client);
    });
    DevicePeaks {
        fma_gflops: flops / t.as_secs_f64() / 1e9,
        copy_gbps: (2 * n * 4) as f64 / tc.as_secs_f64() / 1e9,
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
}

impl PeakCache {
    /// The cache at `path` (empty if the file does not exist yet).
    pub fn open(path: &Path) -> Result<PeakCache, PeakCacheError> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| PeakCacheError::Parse { path: path.to_path_buf(), source })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(PeakCacheError::Io { path: path.to_path_buf(), source }),
        };
        Ok(PeakCache { path: path.to_path_buf(), entries })
    }

    /// An empty cache that will be written to `path` (replacing whatever is there).
    pub fn replacing(path: &Path) -> PeakCache {
        PeakCache { path: path.to_path_buf(), entries: BTreeMap::new() }
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

    /// Records `peaks` for `device` and rewrites the file atomically.
    pub fn insert(&mut self, device: &str, peaks: DevicePeaks) -> Result<(), PeakCacheError> {
        self.entries.insert(device.to_string(), peaks);
        let io = |source| PeakCacheError::Io { path: self.path.clone(), source };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let json = serde_json::to_string_pretty(&self.entries).expect("peaks serialise");
        calm_ir::files::write_atomic(&self.path, json.as_bytes()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_round_trips_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/device-peaks.json");
        let mut cache = PeakCache::open(&path).unwrap();
        assert!(cache.get("dev").is_none());
        let p = DevicePeaks { fma_gflops: 80.0, copy_gbps: 20.0, measured_unix: 1, iters: 9 };
        cache.insert("dev", p.clone()).unwrap();
        assert_eq!(PeakCache::open(&path).unwrap().get("dev"), Some(&p));
        std::fs::write(&path, "{bad").unwrap();
        let err = PeakCache::open(&path).err().expect("a parse error").to_string();
        assert!(err.contains("device-peaks.json") && err.contains("--remeasure"), "{err}");
        let mut fresh = PeakCache::replacing(&path);
        fresh.insert("dev", p.clone()).unwrap();
        assert_eq!(PeakCache::open(&path).unwrap().get("dev"), Some(&p));
    }
}
