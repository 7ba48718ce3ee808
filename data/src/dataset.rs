//! A loaded dataset: unique texts and (text, culture, label) samples over them.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::{DataError, DataErrorKind};

/// One labelled sample: a text (an index into [`Dataset::texts`]), the cultural context (an
/// index into [`Dataset::cultures`]) and the label (an index into [`Dataset::classes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sample {
    pub text: usize,
    pub culture: u32,
    pub label: u32,
    /// 1-based line of the source row where it started.
    pub line: usize,
}

/// Samples of a classification task judged in several cultures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// The file it was read from.
    pub source: PathBuf,
    /// Culture index -> name.
    pub cultures: Vec<String>,
    /// Label index -> name (CREHate: `["not hate", "hate"]`).
    pub classes: Vec<String>,
    /// Unique texts, in order of first appearance (CREHate: one per post).
    pub texts: Vec<String>,
    /// In file order (CREHate: five a post, cultures in column order).
    pub samples: Vec<Sample>,
}

impl Dataset {
    /// Reindexes the samples to the culture list `names` (a checkpoint's), which becomes
    /// [`Dataset::cultures`]. Every culture of the dataset must be in `names`; `names` may hold
    /// more. An error names the cultures that are not.
    pub fn remap_cultures(&mut self, names: &[String]) -> Result<(), DataError> {
        let unknown = |names, known| DataErrorKind::UnknownCultures { names, known };
        remap(&self.source, &mut self.cultures, &mut self.samples, names, |s| &mut s.culture, unknown)
    }

    /// Renumbers the samples' labels as `names` (a model's classes): a model scores a file
    /// whose string labels sort differently, or lack a class, by the same indices it was trained
    /// with. A label not in `names` is an error naming it.
    pub fn remap_classes(&mut self, names: &[String]) -> Result<(), DataError> {
        let unknown = |names, known| DataErrorKind::UnknownClasses { names, known };
        remap(&self.source, &mut self.classes, &mut self.samples, names, |s| &mut s.label, unknown)
    }

    /// The first `n_texts` texts and their samples (all of them when there are fewer), with the
    /// same cultures and classes: a small slice for smoke tests.
    pub fn take(&self, n_texts: usize) -> Dataset {
        let n = n_texts.min(self.texts.len());
        Dataset {
            source: self.source.clone(),
            cultures: self.cultures.clone(),
            classes: self.classes.clone(),
            texts: self.texts[..n].to_vec(),
            samples: self.samples.iter().filter(|s| s.text < n).copied().collect(),
        }
    }
}

/// Interns texts and names: identical strings share one index, assigned in order of first
/// appearance.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    pub names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> usize {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.names.len();
        self.names.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// Renumbers one index of every sample (`field`) from the names `current` to `names`, which
/// replace them; names missing from `names` are the error `unknown(missing, names)`.
fn remap(
    source: &std::path::Path,
    current: &mut Vec<String>,
    samples: &mut [Sample],
    names: &[String],
    field: fn(&mut Sample) -> &mut u32,
    unknown: fn(Vec<String>, Vec<String>) -> DataErrorKind,
) -> Result<(), DataError> {
    let map = index_map(current, names).map_err(|missing| DataError::file(source, unknown(missing, names.to_vec())))?;
    for s in samples {
        let index = field(s);
        *index = map[*index as usize];
    }
    *current = names.to_vec();
    Ok(())
}

/// For each of `have`, its index in `want`; the names missing from `want` as the error.
fn index_map(have: &[String], want: &[String]) -> Result<Vec<u32>, Vec<String>> {
    let found: Vec<Option<u32>> = have.iter().map(|c| want.iter().position(|n| n == c).map(|i| i as u32)).collect();
    let unknown: Vec<String> = have.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(c, _)| c.clone()).collect();
    if unknown.is_empty() {
        Ok(found.into_iter().map(|f| f.expect("all found")).collect())
    } else {
        Err(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        let sample = |text, culture, label, line| Sample { text, culture, label, line };
        Dataset {
            source: PathBuf::from("tiny.csv"),
            cultures: vec!["A".into(), "B".into()],
            classes: vec!["no".into(), "yes".into()],
            texts: vec!["x".into(), "y".into(), "z".into()],
            samples: vec![sample(0, 0, 1, 2), sample(0, 1, 0, 2), sample(1, 1, 1, 3), sample(2, 0, 0, 4)],
        }
    }

    #[test]
    fn remap_cultures_reindexes_samples() {
        let mut d = tiny();
        let names: Vec<String> = ["C", "B", "A"].map(String::from).to_vec();
        d.remap_cultures(&names).unwrap();
        assert_eq!(d.cultures, names);
        let cultures: Vec<u32> = d.samples.iter().map(|s| s.culture).collect();
        assert_eq!(cultures, [2, 1, 1, 2]);
        let labels: Vec<u32> = d.samples.iter().map(|s| s.label).collect();
        assert_eq!(labels, [1, 0, 1, 0]);
    }

    #[test]
    fn remap_classes_follows_the_model_and_names_unknown_labels() {
        let mut d = tiny();
        let names: Vec<String> = ["maybe", "yes", "no"].map(String::from).to_vec();
        d.remap_classes(&names).unwrap();
        let labels: Vec<u32> = d.samples.iter().map(|s| s.label).collect();
        assert_eq!(labels, [1, 2, 1, 2]);
        let e = tiny().remap_classes(&["no".to_string()]).unwrap_err().to_string();
        assert!(e.contains("tiny.csv") && e.contains("yes"), "{e}");
    }

    #[test]
    fn remap_cultures_names_missing_culture() {
        let mut d = tiny();
        let before = d.clone();
        let err = d.remap_cultures(&["B".to_string(), "C".to_string()]).unwrap_err();
        assert!(matches!(&err.kind, DataErrorKind::UnknownCultures { names, .. } if names == &["A"]));
        let msg = err.to_string();
        assert!(msg.starts_with("tiny.csv: culture `A` not among"), "{msg}");
        assert_eq!(d, before, "unchanged on error");
    }

    #[test]
    fn take_keeps_first_texts_and_their_samples() {
        let d = tiny();
        let t = d.take(2);
        assert_eq!(t.texts, ["x", "y"]);
        assert_eq!(t.samples, d.samples[..3]);
        assert_eq!(t.cultures, d.cultures);
        assert_eq!(d.take(10), d);
        assert!(d.take(0).samples.is_empty());
    }

    #[test]
    fn interner_shares_indices() {
        let mut i = Interner::default();
        assert_eq!([i.intern("a"), i.intern("b"), i.intern("a")], [0, 1, 0]);
        assert_eq!(i.names, ["a", "b"]);
    }
}
