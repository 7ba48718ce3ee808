//! Crash-safe file writing: a reader sees the old file or the new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `bytes` to `path` through a temporary file in the same directory, synced and then
/// renamed over the target, and the directory synced so the rename survives a power cut. On
/// error the temporary file is removed and `path` is untouched.
///
/// The temporary's name is created exclusively (`O_EXCL`, a fresh name on a clash), so two
/// writers never share one, even processes of the same PID in different PID namespaces; and the
/// writer holds an advisory lock on it until the rename, which tells
/// [`remove_stale_temporaries`] that it is alive.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = dir_of(path);
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())))?;
    let (mut f, tmp) = create_temporary(dir, &file_name.to_string_lossy())?;
    let result = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A new, locked temporary `.NAME.tmp-PID-NANOS-N` in `dir`, never one that already exists.
fn create_temporary(dir: &Path, name: &str) -> io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}{TEMPORARY}{}-{nanos}-{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => {
                // Held until the file is closed (renamed or not); a killed writer's lock goes
                // with its process.
                f.lock()?;
                // Between the creation and the lock the file was unlocked, and a sweep
                // (`remove_stale_temporaries`, which removes only files it holds the lock of)
                // may have taken it for a dead writer's and removed it: then start again.
                if same_file(&f, &tmp) {
                    return Ok((f, tmp));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether `path` still names the open file `f`.
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Runs `work` holding an exclusive advisory lock on `.NAME.lock` beside `path` (created if
/// missing, and left there: removing it would race with the next locker). Processes that
/// read, change and rewrite one shared file (a cache, a log) do so under it, so none loses
/// another's update.
pub fn with_lock<T>(path: &Path, work: impl FnOnce() -> T) -> io::Result<T> {
    let lock = lock_file_beside(path)?;
    lock.lock()?;
    Ok(work())
}

/// The lock file `.NAME.lock` beside `path`, opened (created if missing), not yet locked.
pub fn lock_file_beside(path: &Path) -> io::Result<File> {
    let dir = dir_of(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    OpenOptions::new().write(true).create(true).truncate(false).open(dir.join(format!(".{name}.lock")))
}

/// The directory `path` is in: its parent, or `.` for a bare file name.
fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// What separates a target's name from the rest of its temporaries' names.
const TEMPORARY: &str = ".tmp-";

/// Removes the temporary files that [`write_atomic`] left beside `path` when its process was
/// killed mid-write: those no process holds a lock on. A live writer's file is locked,
/// whatever PID namespace it runs in, and stays; the lock is taken here before the removal, so
/// a writer that had created its file but not yet locked it finds it gone once it has, and
/// makes another (`create_temporary`).
pub fn remove_stale_temporaries(path: &Path) {
    let Some(name) = path.file_name() else { return };
    let dir = dir_of(path);
    let prefix = format!(".{}{TEMPORARY}", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let Ok(f) = OpenOptions::new().write(true).open(entry.path()) else { continue };
        if f.try_lock().is_ok() && same_file(&f, &entry.path()) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("calm-ir-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        // A directory that does not exist fails without creating anything.
        assert!(write_atomic(&dir.join("missing/g.json"), b"x").is_err());
        // What a killed writer leaves (unlocked, however new) is removed; a live writer's file
        // (locked, whatever its PID says) is not.
        let (dead, live) = (dir.join(".g.json.tmp-7-1-0"), dir.join(".g.json.tmp-7-2-0"));
        for p in [&dead, &live] {
            fs::write(p, b"half").unwrap();
        }
        let writer = File::options().write(true).open(&live).unwrap();
        writer.try_lock().unwrap();
        remove_stale_temporaries(&path);
        assert!(!dead.exists() && live.exists());
        drop(writer);
        // A writer's file swept between its creation and its lock: the writer, once it holds
        // the lock, sees its path no longer names its file (and `create_temporary` makes
        // another).
        let racing = dir.join(".g.json.tmp-7-3-0");
        let f = File::options().write(true).create_new(true).open(&racing).unwrap();
        remove_stale_temporaries(&path);
        f.lock().unwrap();
        assert!(!racing.exists() && !same_file(&f, &racing));
        drop(f);
        let (f, tmp) = create_temporary(&dir, "g.json").unwrap();
        assert!(same_file(&f, &tmp) && tmp.exists());
        drop(f);
        fs::remove_file(&tmp).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Temporaries are created exclusively, under fresh names: many writers of one file at once
    /// (threads here; processes of one PID in two namespaces alike) never share one, and every
    /// write lands whole.
    #[test]
    fn concurrent_writers_never_share_a_temporary() {
        let dir = std::env::temp_dir().join(format!("calm-ir-atomic-many-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.json");
        let bodies: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 1 << 16]).collect();
        std::thread::scope(|s| {
            for body in &bodies {
                let path = &path;
                s.spawn(move || (0..20).for_each(|_| write_atomic(path, body).unwrap()));
            }
        });
        let last = fs::read(&path).unwrap();
        assert!(bodies.contains(&last), "a whole write, not a mix of two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary left");
        let (a, ta) = create_temporary(&dir, "x").unwrap();
        let (b, tb) = create_temporary(&dir, "x").unwrap();
        assert_ne!(ta, tb);
        drop((a, b));
        fs::remove_dir_all(&dir).unwrap();
    }
}
