//! Accuracy and macro-F1, overall and per culture.

use serde::Serialize;

/// Scores of one group of samples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Score {
    pub samples: usize,
    pub accuracy: f64,
    /// Mean over classes present in the labels or predictions of F1 = 2PR/(P+R) (0 where P+R
    /// is 0), as scikit-learn's `f1_score(average="macro")`.
    pub macro_f1: f64,
}

impl Score {
    /// Scores of `predicted` against `truth` (same length) over `classes` classes.
    pub fn of(predicted: &[u32], truth: &[u32], classes: usize) -> Score {
        assert_eq!(predicted.len(), truth.len(), "one prediction per sample");
        let n = truth.len();
        let correct = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
        let mut f1s = Vec::new();
        for c in 0..classes as u32 {
            let tp = predicted.iter().zip(truth).filter(|&(&p, &t)| p == c && t == c).count() as f64;
            let pred = predicted.iter().filter(|&&p| p == c).count() as f64;
            let real = truth.iter().filter(|&&t| t == c).count() as f64;
            if pred == 0.0 && real == 0.0 {
                continue;
            }
            f1s.push(if pred + real == 0.0 { 0.0 } else { 2.0 * tp / (pred + real) });
        }
        Score {
            samples: n,
            accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
            macro_f1: if f1s.is_empty() { 0.0 } else { f1s.iter().sum::<f64>() / f1s.len() as f64 },
        }
    }
}

/// Scores overall and for each culture.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub overall: Score,
    /// (culture name, score), in the dataset's culture order; cultures without samples omitted.
    pub per_culture: Vec<(String, Score)>,
}

impl Report {
    /// `predicted[i]` and `truth[i]` belong to culture `culture[i]`.
    pub fn of(predicted: &[u32], truth: &[u32], culture: &[u32], cultures: &[String], classes: usize) -> Report {
        let per_culture = cultures
            .iter()
            .enumerate()
            .filter_map(|(c, name)| {
                let idx: Vec<usize> = (0..truth.len()).filter(|&i| culture[i] == c as u32).collect();
                if idx.is_empty() {
                    return None;
                }
                let p: Vec<u32> = idx.iter().map(|&i| predicted[i]).collect();
                let t: Vec<u32> = idx.iter().map(|&i| truth[i]).collect();
                Some((name.clone(), Score::of(&p, &t, classes)))
            })
            .collect();
        Report { overall: Score::of(predicted, truth, classes), per_culture }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<16} {:>8} {:>9} {:>9}", "culture", "samples", "accuracy", "macro-F1")?;
        let rows = self.per_culture.iter().map(|(n, s)| (n.as_str(), s)).chain([("overall", &self.overall)]);
        for (name, s) in rows {
            writeln!(f, "{name:<16} {:>8} {:>9.4} {:>9.4}", s.samples, s.accuracy, s.macro_f1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_predictions_score_as_computed_by_hand() {
        // truth 1 1 0 0 1, predicted 1 0 0 1 1: accuracy 3/5; class 1: tp 2, pred 3, real 3 →
        // F1 2/3; class 0: tp 1, pred 2, real 2 → F1 1/2; macro 7/12.
        let s = Score::of(&[1, 0, 0, 1, 1], &[1, 1, 0, 0, 1], 2);
        assert_eq!(s.samples, 5);
        assert!((s.accuracy - 0.6).abs() < 1e-12);
        assert!((s.macro_f1 - 7.0 / 12.0).abs() < 1e-12);
        // All predicted 0 on truth 0 0 1: class 0 F1 = 2·2/(3+2) = 0.8, class 1 F1 = 0 → 0.4.
        let s = Score::of(&[0, 0, 0], &[0, 0, 1], 2);
        assert!((s.macro_f1 - 0.4).abs() < 1e-12);
        // A class absent from truth and predictions does not count.
        assert_eq!(Score::of(&[2, 2], &[2, 2], 3).macro_f1, 1.0);
        let r = Report::of(&[1, 0, 0, 1], &[1, 0, 1, 1], &[0, 0, 1, 1], &["AU".into(), "GB".into(), "SG".into()], 2);
        assert_eq!(r.per_culture.len(), 2, "SG has no samples");
        assert_eq!(r.per_culture[0].1.accuracy, 1.0);
        assert_eq!(r.per_culture[1].1.accuracy, 0.5);
        assert!((r.overall.accuracy - 0.75).abs() < 1e-12);
        assert!(r.to_string().contains("overall"));
    }
}
