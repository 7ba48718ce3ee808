//! Cultural classification datasets for CALM: a text judged in several cultures, one labelled
//! [`Sample`] per (text, culture).
//!
//! [`load_crehate`] reads CREHate's CSV splits (five countries a post); [`load_table`] reads any
//! `.csv` or `.jsonl` table given the names of its text, culture and label columns; [`load`]
//! picks one. Every problem with a file is a [`DataError`] naming the file and the line (and
//! column) at fault; no input makes a loader panic. [`Dataset::stats`] counts samples per culture
//! and class (`calm data stats`).

mod crehate;
mod csvfile;
mod dataset;
mod error;
mod stats;
mod table;

use std::path::{Path, PathBuf};

pub use crehate::{load_crehate, CREHATE_CLASSES, CREHATE_CULTURES};
pub use dataset::{Dataset, Sample};
pub use error::{DataError, DataErrorKind};
pub use stats::{CultureCounts, Stats};
pub use table::{load_table, TableSpec};

/// Reads a dataset: a table with the columns of `spec`, or with `None` a CREHate split.
pub fn load(path: &Path, spec: Option<&TableSpec>) -> Result<Dataset, DataError> {
    match spec {
        Some(spec) => load_table(path, spec),
        None => load_crehate(path),
    }
}

/// The folder holding CREHate's splits on this machine: `$CALM_CREHATE` when set, else the first
/// `shared/data/crehate` beside this checkout or one of its parents, else
/// `/work/shared/data/crehate` (where these machines keep it; a clone elsewhere still finds it).
/// The error lists where it looked.
pub fn crehate_dir() -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    let env = std::env::var_os("CALM_CREHATE").map(PathBuf::from);
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().map(|a| a.join("shared/data/crehate"));
    let fixed = PathBuf::from("/work/shared/data/crehate");
    for dir in env.into_iter().chain(beside).chain([fixed]) {
        if dir.join("CREHate_train.csv").is_file() {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    Err(format!("CREHate not found (set CALM_CREHATE to its folder); looked in {}", tried.join(", ")))
}
