//! CREHate (Lee et al., 2024): posts labelled hate or not by annotators of five countries.
//!
//! A CSV file with the header `ID,Text,Australia_Hate,United_States_Hate,United_Kingdom_Hate,
//! South_Africa_Hate,Singapore_Hate` (other columns are ignored); texts are quoted and may span
//! several lines; labels are `0`/`1` or `0.0`/`1.0`. Each post gives five samples, one per
//! country, cultures in the header's column order and named without `_Hate`.

use std::path::Path;

use csv::StringRecord;

use crate::csvfile::CsvFile;
use crate::dataset::{Dataset, Interner, Sample};
use crate::error::{DataError, DataErrorKind};

/// The five countries, as the header names them less the `_Hate` suffix.
pub const CREHATE_CULTURES: [&str; 5] = ["Australia", "United_States", "United_Kingdom", "South_Africa", "Singapore"];

/// CREHate's classes: label 0 and label 1.
pub const CREHATE_CLASSES: [&str; 2] = ["not hate", "hate"];

const LABEL_SUFFIX: &str = "_Hate";

/// Reads a CREHate split (`CREHate_train.csv`, `CREHate_valid.csv`, ...). Any problem is an
/// error naming the file and the line (and column) at fault.
pub fn load_crehate(path: &Path) -> Result<Dataset, DataError> {
    let mut file = CsvFile::open(path)?;
    let label_columns: Vec<String> = CREHATE_CULTURES.iter().map(|c| format!("{c}{LABEL_SUFFIX}")).collect();
    let mut wanted = vec!["ID", "Text"];
    wanted.extend(label_columns.iter().map(String::as_str));
    let columns = file.columns(&wanted)?;
    let text_column = columns[1];
    // Cultures in the header's column order.
    let mut by_position: Vec<(usize, &str)> = columns[2..].iter().copied().zip(CREHATE_CULTURES).collect();
    by_position.sort_unstable();
    let cultures: Vec<String> = by_position.iter().map(|&(_, c)| c.to_string()).collect();

    let mut texts = Interner::default();
    let mut samples = Vec::new();
    let mut record = StringRecord::new();
    while let Some(line) = file.next(&mut record)? {
        let text = &record[text_column];
        if text.trim().is_empty() {
            return Err(DataError::at(path, line, DataErrorKind::EmptyText { column: "Text".into() }));
        }
        let mut labels = [0u32; CREHATE_CULTURES.len()];
        for (label, &(column, culture)) in labels.iter_mut().zip(&by_position) {
            *label = match record[column].trim() {
                "0" | "0.0" => 0,
                "1" | "1.0" => 1,
                value => {
                    let kind = DataErrorKind::Label {
                        column: format!("{culture}{LABEL_SUFFIX}"),
                        value: value.to_string(),
                        expected: "0 or 1 (or 0.0, 1.0)",
                    };
                    return Err(DataError::at(path, line, kind));
                }
            };
        }
        let text = texts.intern(text);
        for (culture, label) in labels.into_iter().enumerate() {
            samples.push(Sample { text, culture: culture as u32, label, line });
        }
    }
    if samples.is_empty() {
        return Err(DataError::file(path, DataErrorKind::NoRows));
    }
    Ok(Dataset {
        source: path.to_path_buf(),
        cultures,
        classes: CREHATE_CLASSES.map(String::from).to_vec(),
        texts: texts.names,
        samples,
    })
}
