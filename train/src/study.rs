//! `calm study`: every variant (CALM, its ablations, the baselines) trained with several
//! seeds on the same cached states, each scored on the validation split with its best
//! checkpoint; a markdown table (mean ± std per culture) and an SVG bar chart.
//!
//! Each run keeps its checkpoints and a `result.json` in `OUT/runs/VARIANT-seedS/`; a study
//! started again skips the runs whose result exists, so a killed study loses at most one run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::batch::Split;
use crate::checkpoint::{params_for, Checkpoint};
use crate::metrics::{Report, Score};
use crate::model::ModelSpec;
use crate::progress::Progress;
use crate::trainer::{self, predict, score, Executor, Outputs, Settings, Start};
use crate::TrainError;

/// One trained and scored run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub variant: String,
    pub seed: u64,
    pub steps: u64,
    pub seconds: f64,
    pub best_epoch: u64,
    /// What was trained (model, settings, backbone, data fingerprints): a result is reused only
    /// by a study asking for exactly this.
    pub key: String,
    /// (culture, accuracy, macro-F1) on the validation split, then `overall`.
    pub scores: Vec<(String, f64, f64)>,
}

fn scores_of(report: &Report) -> Vec<(String, f64, f64)> {
    let row = |n: &str, s: &Score| (n.to_string(), s.accuracy, s.macro_f1);
    report.per_culture.iter().map(|(n, s)| row(n, s)).chain([row("overall", &report.overall)]).collect()
}

/// What a study trains: every model with every seed, with these settings (the seed aside), on
/// states of `backbone`, into `out`.
pub struct Plan<'a> {
    pub variants: &'a [ModelSpec],
    pub seeds: &'a [u64],
    pub settings: &'a Settings,
    pub backbone: &'a str,
    pub out: &'a Path,
}

/// Trains and scores every model of the plan with every seed.
pub fn run(plan: &Plan<'_>, train: &Split, valid: &Split, progress: &Progress) -> Result<Vec<RunResult>, TrainError> {
    let Plan { variants, seeds, settings, backbone, out } = *plan;
    let mut results = Vec::new();
    for model in variants {
        for &seed in seeds {
            let dir = out.join("runs").join(format!("{}-seed{seed}", model.name()));
            let result_path = dir.join("result.json");
            let run_settings = Settings { seed, ..settings.clone() };
            let key = serde_json::json!({"model": model, "settings": run_settings, "backbone": backbone,
                "train": trainer::fingerprint(train), "valid": trainer::fingerprint(valid)})
            .to_string();
            let earlier: Option<RunResult> =
                std::fs::read(&result_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            match earlier {
                Some(done) if done.key == key => {
                    progress.note(&format!("{}, seed {seed}: done before, kept", model.name()));
                    results.push(done);
                    continue;
                }
                Some(_) => progress.note(&format!(
                    "{}, seed {seed}: done before with other settings or data: training again",
                    model.name()
                )),
                None => {}
            }
            let started = Instant::now();
            let outputs = Outputs { dir: dir.clone(), log: Some(dir.join("log.jsonl")) };
            std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?;
            let start =
                Start::Fresh { model: Box::new(model.clone()), settings: Settings { seed, ..settings.clone() } };
            let summary = trainer::train(start, train, Some(valid), backbone, &outputs, &Default::default(), progress)?;
            let best = Checkpoint::load(&outputs.best())?;
            let g = best.state.model.inference_graph()?;
            let weights = params_for(&g, &best.params, &outputs.best())?;
            let preds =
                predict(&g, &weights, valid, Executor::Reference(settings.backend), settings.batch_size, progress)?;
            let report = score(valid, &preds.classes, &best.state);
            let result = RunResult {
                variant: model.name(),
                seed,
                steps: summary.steps,
                seconds: started.elapsed().as_secs_f64(),
                best_epoch: best.state.best.as_ref().map_or(0, |b| b.epoch),
                key,
                scores: scores_of(&report),
            };
            progress.note(&format!(
                "{}, seed {seed}: accuracy {:.4}, macro-F1 {:.4} ({:.0} s)",
                result.variant, report.overall.accuracy, report.overall.macro_f1, result.seconds
            ));
            let json = serde_json::to_vec_pretty(&result).expect("results serialise");
            calm_ir::files::write_atomic(&result_path, &json)
                .map_err(|source| TrainError::Io { path: result_path.clone(), source })?;
            results.push(result);
        }
    }
    Ok(results)
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Variants in first-seen order, and for each the values of column `col` (by score name and
/// index: 1 accuracy, 2 macro-F1) over seeds.
fn collect(results: &[RunResult], name: &str, pick: fn(&(String, f64, f64)) -> f64) -> Vec<(String, Vec<f64>)> {
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    for r in results {
        let v = r.scores.iter().find(|s| s.0 == name).map(pick);
        let slot = match out.iter().position(|(n, _)| *n == r.variant) {
            Some(i) => i,
            None => {
                out.push((r.variant.clone(), Vec::new()));
                out.len() - 1
            }
        };
        out[slot].1.extend(v);
    }
    out
}

fn columns(results: &[RunResult]) -> Vec<String> {
    results.first().map(|r| r.scores.iter().map(|s| s.0.clone()).collect()).unwrap_or_default()
}

/// A markdown table: one row per variant, accuracy (mean ± sample std over seeds, in %) per
/// culture and overall, and overall macro-F1.
pub fn table(results: &[RunResult]) -> String {
    let cols = columns(results);
    let mut s = format!("| variant | seeds | {} | macro-F1 |\n", cols.join(" | "));
    s += &format!("|---|---:|{}---:|\n", "---:|".repeat(cols.len()));
    let f1 = collect(results, "overall", |x| x.2);
    for (i, (variant, f1s)) in f1.iter().enumerate() {
        let mut row = format!("| {variant} | {} |", f1s.len());
        for c in &cols {
            let (m, sd) = mean_std(&collect(results, c, |x| x.1)[i].1);
            row += &format!(" {:.1} ± {:.1} |", 100.0 * m, 100.0 * sd);
        }
        let (m, sd) = mean_std(f1s);
        row += &format!(" {:.1} ± {:.1} |\n", 100.0 * m, 100.0 * sd);
        s += &row;
    }
    s
}

/// A grouped bar chart (SVG): mean accuracy per culture (and overall) for each variant, with
/// ± std whiskers.
pub fn chart(results: &[RunResult], title: &str) -> String {
    const COLOURS: [&str; 12] = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
        "#1b9e77", "#7570b3",
    ];
    let cols = columns(results);
    let per_col: Vec<Vec<(String, Vec<f64>)>> = cols.iter().map(|c| collect(results, c, |x| x.1)).collect();
    let variants: Vec<String> = per_col.first().map(|v| v.iter().map(|(n, _)| n.clone()).collect()).unwrap_or_default();
    let (bar, gap, left, top, height) = (10.0, 18.0, 50.0, 40.0, 260.0);
    let group = bar * variants.len() as f64 + gap;
    let width = left + group * cols.len() as f64 + 170.0;
    // The axis spans the data (to 5% steps), so differences of a point stay visible; the
    // caption says where it starts.
    let stats: Vec<(f64, f64)> = per_col.iter().flatten().map(|(_, v)| mean_std(v)).collect();
    let lo_data = stats.iter().map(|(m, sd)| m - sd).fold(1.0, f64::min);
    let hi_data = stats.iter().map(|(m, sd)| m + sd).fold(0.0, f64::max);
    let lo = ((lo_data * 20.0).floor() / 20.0 - 0.05).max(0.0);
    let hi = ((hi_data * 20.0).ceil() / 20.0).clamp(lo + 0.05, 1.0);
    let y = |v: f64| top + height * (1.0 - (v.clamp(lo, hi) - lo) / (hi - lo));
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        top + height + 50.0
    );
    s += &format!("<text x=\"{left}\" y=\"20\" font-size=\"13\">{}</text>\n", escape(title));
    let ticks = ((hi - lo) * 20.0).round() as usize;
    for tick in 0..=ticks {
        let v = lo + tick as f64 * (hi - lo) / ticks.max(1) as f64;
        s += &format!(
            "<line x1=\"{left}\" x2=\"{:.0}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>\n",
            left + group * cols.len() as f64,
            y(v),
            y(v),
            left - 4.0,
            y(v) + 4.0,
            v * 100.0
        );
    }
    for (ci, (c, rows)) in cols.iter().zip(&per_col).enumerate() {
        let x0 = left + gap / 2.0 + group * ci as f64;
        for (vi, (_, vals)) in rows.iter().enumerate() {
            let (m, sd) = mean_std(vals);
            let x = x0 + bar * vi as f64;
            s += &format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n",
                y(m),
                bar - 1.0,
                (y(lo) - y(m)).max(0.0),
                COLOURS[vi % COLOURS.len()]
            );
            if sd > 0.0 {
                let xm = x + (bar - 1.0) / 2.0;
                s += &format!(
                    "<line x1=\"{xm:.1}\" x2=\"{xm:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\n",
                    y((m + sd).min(1.0)),
                    y((m - sd).max(0.0))
                );
            }
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x0 + bar * variants.len() as f64 / 2.0,
            top + height + 16.0,
            escape(&c.replace('_', " "))
        );
    }
    let lx = left + group * cols.len() as f64 + 12.0;
    for (vi, v) in variants.iter().enumerate() {
        let ly = top + 14.0 * vi as f64;
        s += &format!(
            "<rect x=\"{lx:.0}\" y=\"{ly:.0}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text>\n",
            COLOURS[vi % COLOURS.len()],
            lx + 14.0,
            ly + 9.0,
            escape(v)
        );
    }
    s += &format!(
        "<text x=\"{left}\" y=\"{:.0}\">validation accuracy, mean ± std over seeds (the axis starts at {:.0}%)</text>\n</svg>\n",
        top + height + 36.0,
        lo * 100.0
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Where a study writes its table, chart and results.
pub fn outputs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join("study.md"), dir.join("study.svg"), dir.join("study.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(variant: &str, seed: u64, au: f64, overall: f64, f1: f64) -> RunResult {
        RunResult {
            variant: variant.into(),
            seed,
            steps: 1,
            seconds: 1.0,
            best_epoch: 1,
            key: String::new(),
            scores: vec![("Australia".into(), au, au), ("overall".into(), overall, f1)],
        }
    }

    #[test]
    fn table_gives_mean_and_sample_std_per_variant() {
        let r =
            [result("full", 0, 0.8, 0.7, 0.6), result("full", 1, 0.6, 0.7, 0.8), result("linear", 0, 0.5, 0.5, 0.5)];
        let t = table(&r);
        assert!(t.contains("| full | 2 | 70.0 ± 14.1 | 70.0 ± 0.0 | 70.0 ± 14.1 |"), "{t}");
        assert!(t.contains("| linear | 1 | 50.0 ± 0.0 |"), "{t}");
        let svg = chart(&r, "t");
        assert_eq!(svg.matches("<rect").count(), 2 * 2 + 2, "two bars per column plus two legend keys");
    }
}
