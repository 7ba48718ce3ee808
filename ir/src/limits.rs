//! Memory limits: work that would not fit is refused before it allocates, with how much it needs
//! and how much there is. (Rust aborts the process when an allocation fails, so a graph bound to
//! absurd sizes must be stopped here, not by the allocator.)
//!
//! The host's budget is Linux's `MemAvailable`, or less where the process's cgroup (v2
//! `memory.max`, v1 `memory.limit_in_bytes`, of its group and every group above) leaves less
//! room: a container is OOM-killed at its cgroup's limit whatever the machine has. A device's is its memory where the runtime says
//! (CUDA), the host's for a CPU adapter (lavapipe), and otherwise only the largest single buffer
//! is checked. `CALM_MEMORY_LIMIT` (bytes, or with a K/M/G/T suffix) caps both, to keep a run
//! inside a share of a machine.

use std::path::Path;

use crate::text::human_bytes;
use thiserror::Error;

/// Work that needs more memory than there is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what} needs {} of {place} memory, but {} {}", human_bytes(*.needed), human_bytes(*.available), .source_of_limit)]
pub struct MemoryError {
    /// What was refused, e.g. "the reference executor's values (peak, under batch=64, tokens=128)".
    pub what: String,
    pub place: &'static str,
    pub needed: u64,
    pub available: u64,
    /// Where `available` comes from, e.g. "are available (MemAvailable)".
    pub source_of_limit: String,
}

/// `CALM_MEMORY_LIMIT`: bytes and why. A value that does not parse allows nothing, and says so:
/// a cap the user believes in must not be silently ignored.
fn configured_limit() -> Option<(u64, String)> {
    let text = std::env::var("CALM_MEMORY_LIMIT").ok()?;
    Some(match parse_size(&text) {
        Some(bytes) => (bytes, "are allowed (CALM_MEMORY_LIMIT)".to_string()),
        None => (0, format!("are allowed: CALM_MEMORY_LIMIT=`{text}` is not a size (use e.g. 8G or 512MiB)")),
    })
}

/// `123`, `512M`, `8G`, `8GB`, `8GiB`, `1.5T` (powers of 1024) → bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let upper = s.to_ascii_uppercase();
    let s = &s[..upper.strip_suffix("IB").or_else(|| upper.strip_suffix('B')).map_or(s.len(), str::len)];
    let (num, scale) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return None,
            };
            (&s[..i], (1u64 << shift) as f64)
        }
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0 && v * scale < u64::MAX as f64).then_some((v * scale) as u64)
}

/// The host memory available now (Linux `MemAvailable`), capped by `CALM_MEMORY_LIMIT`; `None`
/// where neither says.
pub fn host_available() -> Option<(u64, String)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    let meminfo = meminfo.map(|b| (b, "are available (MemAvailable)".to_string()));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|groups| cgroup_room(Path::new("/sys/fs/cgroup"), &groups));
    let least = match (meminfo, cgroup) {
        (Some(m), Some(c)) => Some(if c.0 < m.0 { c } else { m }),
        (m, c) => m.or(c),
    };
    cap(least)
}

/// Room left under the memory limits of the cgroup `proc_self_cgroup` (the text of
/// `/proc/self/cgroup`) names and of every group above it, with the cgroup file system mounted
/// at `root`: the least over those groups of limit − (usage − inactive file pages, which the
/// kernel reclaims before it kills). `None` where no group has a limit.
pub fn cgroup_room(root: &Path, proc_self_cgroup: &str) -> Option<(u64, String)> {
    let mut least: Option<(u64, String)> = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(group)) = (parts.next(), parts.next(), parts.next()) else { continue };
        // v2: "0::/path" under root; v1: "N:memory[,...]:/path" under root/memory.
        let (base, limit_file, usage_file, inactive_key) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max", "memory.current", "inactive_file")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        } else {
            continue;
        };
        // Inside a container the group's path may not exist under its own mount: then the
        // mount's root is the group.
        let mut dir = base.join(group.trim_start_matches('/'));
        if !dir.is_dir() {
            dir = base.clone();
        }
        loop {
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
            // v1 writes "no limit" as a number near 2^63.
            let limit = read(limit_file).and_then(|t| t.trim().parse::<u64>().ok()).filter(|&l| l < 1 << 62);
            if let Some(limit) = limit {
                let usage = read(usage_file).and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
                let inactive = read("memory.stat")
                    .and_then(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix(inactive_key)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
                    })
                    .unwrap_or(0);
                let room = limit.saturating_sub(usage.saturating_sub(inactive));
                if least.as_ref().is_none_or(|(b, _)| room < *b) {
                    let why = format!("are left under the cgroup memory limit ({})", dir.join(limit_file).display());
                    least = Some((room, why));
                }
            }
            if dir == base || !dir.pop() || !dir.starts_with(&base) {
                break;
            }
        }
    }
    least
}

/// `found` capped by `CALM_MEMORY_LIMIT`.
pub fn cap(found: Option<(u64, String)>) -> Option<(u64, String)> {
    match (found, configured_limit()) {
        (Some((b, why)), Some((limit, _))) if b <= limit => Some((b, why)),
        (_, Some(limit)) => Some(limit),
        (found, None) => found,
    }
}

/// Refuses `needed` bytes of host memory beyond what is available.
pub fn check_host(what: impl FnOnce() -> String, needed: u64) -> Result<(), MemoryError> {
    check(what, "host", needed, host_available())
}

/// Refuses `needed` bytes beyond `available` (`None`: unknown, allowed).
pub fn check(
    what: impl FnOnce() -> String,
    place: &'static str,
    needed: u64,
    available: Option<(u64, String)>,
) -> Result<(), MemoryError> {
    match available {
        Some((available, source_of_limit)) if needed > available => {
            Err(MemoryError { what: what(), place, needed, available, source_of_limit })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("2K"), Some(2048));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size(" 8G "), Some(8 << 30));
        assert_eq!(parse_size("8GB"), Some(8 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("100B"), Some(100));
        for bad in ["", "G", "-1", "1X", "1e30T", "nan", "8gigs", "B"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_error_says_what_is_needed_and_what_there_is() {
        let e = check(|| "x".into(), "device", 3 << 30, Some((1 << 30, "has".into()))).unwrap_err();
        assert_eq!(e.to_string(), "x needs 3.00 GiB of device memory, but 1.00 GiB has");
        assert!(check(|| "x".into(), "device", 3 << 30, None).is_ok());
        assert!(host_available().is_some(), "Linux reports MemAvailable");
    }

    /// A container's cgroup limit bounds the budget, for v2 (the tightest group on the path
    /// up) and v1 (usage less reclaimable file pages); unlimited groups bound nothing.
    #[test]
    fn cgroup_limits_bound_the_host_budget() {
        let root = tempfile::tempdir().unwrap();
        let write = |p: &str, text: &str| {
            let p = root.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("memory.max", "max\n");
        write("box/memory.max", "8589934592\n");
        write("box/memory.current", "1073741824\n");
        write("box/memory.stat", "anon 1\ninactive_file 536870912\nactive_file 3\n");
        write("box/job/memory.max", "max\n");
        write("box/job/memory.current", "5\n");
        let (room, why) = cgroup_room(root.path(), "0::/box/job\n").unwrap();
        assert_eq!(room, 8 * (1 << 30) - (1 << 30) + (1 << 29));
        assert!(why.contains("box/memory.max"), "{why}");
        assert_eq!(cgroup_room(root.path(), "0::/\n"), None, "no limit anywhere");
        write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        write("memory/ci/memory.limit_in_bytes", "4294967296\n");
        write("memory/ci/memory.usage_in_bytes", "1073741824\n");
        write("memory/ci/memory.stat", "cache 9\ntotal_inactive_file 1073741824\n");
        let (room, why) = cgroup_room(root.path(), "9:pids:/\n4:memory:/ci\n").unwrap();
        assert_eq!(room, 4 << 30);
        assert!(why.contains("memory.limit_in_bytes"), "{why}");
        // The group's path is not under this mount (a container's view): the mount's root is
        // the group.
        let (room, _) = cgroup_room(&root.path().join("box"), "0::/not/here\n").unwrap();
        assert_eq!(room, 8 * (1 << 30) - (1 << 30) + (1 << 29));
    }
}
