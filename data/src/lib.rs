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

use std::path::Path;

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
