//! Counts of samples per culture and class: a table for people, JSON for scripts.

use std::fmt;

use serde::Serialize;

use crate::dataset::Dataset;

/// Samples per culture and class of a [`Dataset`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The file the dataset was read from.
    pub source: String,
    /// Class names, the order of every `counts`.
    pub classes: Vec<String>,
    /// One row per culture, in the dataset's culture order.
    pub cultures: Vec<CultureCounts>,
    /// Samples per class over all cultures.
    pub totals: Vec<usize>,
    /// Unique texts.
    pub texts: usize,
    pub samples: usize,
}

/// One culture's samples per class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CultureCounts {
    pub name: String,
    pub counts: Vec<usize>,
    pub total: usize,
}

impl Dataset {
    /// Counts of samples per culture and label, with totals and the number of texts.
    pub fn stats(&self) -> Stats {
        let mut cultures: Vec<CultureCounts> = self
            .cultures
            .iter()
            .map(|name| CultureCounts { name: name.clone(), counts: vec![0; self.classes.len()], total: 0 })
            .collect();
        let mut totals = vec![0; self.classes.len()];
        for s in &self.samples {
            // Indices out of range (only possible if the fields were edited by hand) are skipped.
            let Some(row) = cultures.get_mut(s.culture as usize) else { continue };
            let Some(count) = row.counts.get_mut(s.label as usize) else { continue };
            *count += 1;
            row.total += 1;
            totals[s.label as usize] += 1;
        }
        Stats {
            source: self.source.display().to_string(),
            classes: self.classes.clone(),
            cultures,
            totals,
            texts: self.texts.len(),
            samples: self.samples.len(),
        }
    }
}

impl fmt::Display for Stats {
    /// An aligned table: a row per culture with its count per class and total, a total row, then
    /// a line with the numbers of texts and samples.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: usize = self.totals.iter().sum();
        let name_width = self.cultures.iter().map(|c| c.name.chars().count()).chain([7]).max().unwrap_or(7);
        // Each count column as wide as its class name or its largest number.
        let digits = |n: usize| n.to_string().len();
        let widths: Vec<usize> = self
            .classes
            .iter()
            .enumerate()
            .map(|(i, name)| name.chars().count().max(digits(self.totals.get(i).copied().unwrap_or(0))))
            .collect();
        let total_width = digits(total).max(5);
        write!(f, "{:<name_width$}", "culture")?;
        for (name, width) in self.classes.iter().zip(&widths) {
            write!(f, "  {name:>width$}")?;
        }
        writeln!(f, "  {:>total_width$}", "total")?;
        for c in &self.cultures {
            write!(f, "{:<name_width$}", c.name)?;
            for (n, width) in c.counts.iter().zip(&widths) {
                write!(f, "  {n:>width$}")?;
            }
            writeln!(f, "  {:>total_width$}", c.total)?;
        }
        write!(f, "{:<name_width$}", "total")?;
        for (n, width) in self.totals.iter().zip(&widths) {
            write!(f, "  {n:>width$}")?;
        }
        writeln!(f, "  {total:>total_width$}")?;
        write!(
            f,
            "{} texts, {} samples, {} cultures, {} classes ({})",
            self.texts,
            self.samples,
            self.cultures.len(),
            self.classes.len(),
            self.source
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::dataset::Sample;

    use super::*;

    #[test]
    fn counts_and_table() {
        let sample = |text, culture, label| Sample { text, culture, label, line: 2 };
        let d = Dataset {
            source: PathBuf::from("t.csv"),
            cultures: vec!["Australia".into(), "B".into()],
            classes: vec!["not hate".into(), "hate".into()],
            texts: vec!["x".into(), "y".into()],
            samples: vec![sample(0, 0, 1), sample(0, 1, 0), sample(1, 0, 0), sample(1, 1, 0)],
        };
        let s = d.stats();
        assert_eq!(s.totals, [3, 1]);
        assert_eq!(s.cultures[0].counts, [1, 1]);
        assert_eq!(s.cultures[1].counts, [2, 0]);
        assert_eq!((s.texts, s.samples), (2, 4));
        let expected = "\
culture    not hate  hate  total
Australia         1     1      2
B                 2     0      2
total             3     1      4
2 texts, 4 samples, 2 cultures, 2 classes (t.csv)";
        assert_eq!(s.to_string(), expected);
    }
}
