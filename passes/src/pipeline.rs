//! Passes and pipelines.

use calm_ir::{verify, Graph, VerifyErrors};
use thiserror::Error;

use crate::dce::dce;

#[derive(Debug, Error)]
pub enum PassError {
    #[error("input graph is invalid: {0}")]
    InvalidInput(VerifyErrors),
    /// A pass broke an invariant: a bug in that pass, reported with its name.
    #[error("pass `{pass}` left an invalid graph: {errors}")]
    Broken { pass: &'static str, errors: VerifyErrors },
    #[error("pass `{pass}`: {message}")]
    Failed { pass: &'static str, message: String },
}

/// A named graph transformation; `run` says whether it changed the graph and may note what it
/// did (or declined to do) in the log. A pass leaves what it replaced in place: the pipeline
/// removes dead code after every pass that changed the graph.
#[derive(Clone, Copy)]
pub struct Pass {
    pub name: &'static str,
    pub run: fn(&mut Graph, &mut PassLog) -> Result<bool, PassError>,
}

/// What a pass did at one place of the graph: a rewrite that fired, or one that declined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassNote {
    pub pass: &'static str,
    /// The scope of the node the pattern is rooted at.
    pub scope: String,
    pub fired: bool,
    /// What was fused, or why it was not.
    pub detail: String,
}

/// The notes passes leave for `calm compile --emit fusions`.
#[derive(Clone, Debug, Default)]
pub struct PassLog {
    pub notes: Vec<PassNote>,
}

impl PassLog {
    pub fn fired(&mut self, pass: &'static str, scope: &str, detail: impl Into<String>) {
        self.notes.push(PassNote { pass, scope: scope.to_string(), fired: true, detail: detail.into() });
    }

    pub fn declined(&mut self, pass: &'static str, scope: &str, reason: impl Into<String>) {
        self.notes.push(PassNote { pass, scope: scope.to_string(), fired: false, detail: reason.into() });
    }

    /// Notes of one pass.
    pub fn of<'a>(&'a self, pass: &'a str) -> impl Iterator<Item = &'a PassNote> + 'a {
        self.notes.iter().filter(move |n| n.pass == pass)
    }
}

/// What a pipeline run did.
#[derive(Debug, Default)]
pub struct PipelineReport {
    /// Each step in order, and whether it changed the graph: the passes, each one that changed
    /// the graph followed by the pipeline's `dce` (true where it removed nodes).
    pub passes: Vec<(&'static str, bool)>,
    /// What the passes noted.
    pub log: PassLog,
    /// The graph right after the pass named by [`Pipeline::dump_after`] and its dead-code
    /// elimination (as the next pass sees it), if that pass ran.
    pub dumped: Option<Graph>,
}

/// A named list of passes, with the verifier before the first and after each one, and
/// dead-code elimination ([`dce`]) after each one that changed the graph.
pub struct Pipeline {
    pub passes: Vec<Pass>,
    /// Keep a copy of the graph after the pass of this name (`--dump-after PASS`).
    pub dump_after: Option<String>,
}

impl Pipeline {
    pub fn new(passes: Vec<Pass>) -> Self {
        Pipeline { passes, dump_after: None }
    }

    pub fn run(&self, g: &mut Graph) -> Result<PipelineReport, PassError> {
        verify(g).map_err(PassError::InvalidInput)?;
        let mut report = PipelineReport::default();
        for pass in &self.passes {
            let changed = (pass.run)(g, &mut report.log)?;
            report.passes.push((pass.name, changed));
            // What the pass replaced goes before the verifier and the next pass see the graph:
            // pattern matchers count a value's readers, and a dead one would block a match.
            if changed {
                // A graph dce cannot walk (a cycle, a read of a missing value) is the pass's bug.
                let removed = dce(g).map_err(|e| match verify(g) {
                    Err(errors) => PassError::Broken { pass: pass.name, errors },
                    Ok(()) => e,
                })?;
                report.passes.push(("dce", removed));
            }
            verify(g).map_err(|errors| PassError::Broken { pass: pass.name, errors })?;
            if self.dump_after.as_deref() == Some(pass.name) {
                report.dumped = Some(g.clone());
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calm_ir::sample::tiny_classifier;

    fn drop_output(g: &mut Graph, name: &str) -> bool {
        let before = g.outputs.len();
        g.outputs.retain(|o| o.name != name);
        g.outputs.len() != before
    }

    fn drop_loss(g: &mut Graph, _: &mut PassLog) -> Result<bool, PassError> {
        Ok(drop_output(g, "loss"))
    }

    fn drop_top2(g: &mut Graph, _: &mut PassLog) -> Result<bool, PassError> {
        Ok(drop_output(g, "top2"))
    }

    /// Changes nothing, and fails if the graph it is given still has dead code.
    fn expect_no_dead_code(g: &mut Graph, _: &mut PassLog) -> Result<bool, PassError> {
        assert!(!crate::dce(&mut g.clone()).unwrap(), "dead code reached the next pass");
        Ok(false)
    }

    fn break_graph(g: &mut Graph, _: &mut PassLog) -> Result<bool, PassError> {
        g.outputs.clear();
        Ok(true)
    }

    #[test]
    fn runs_passes_in_order_with_dce_after_changes_and_dumps_after_the_named_one() {
        let mut g = tiny_classifier();
        let mut p = Pipeline::new(vec![
            Pass { name: "drop_loss", run: drop_loss },
            Pass { name: "expect_no_dead_code", run: expect_no_dead_code },
            Pass { name: "drop_top2", run: drop_top2 },
        ]);
        p.dump_after = Some("drop_loss".into());
        let report = p.run(&mut g).unwrap();
        assert_eq!(
            report.passes,
            [("drop_loss", true), ("dce", true), ("expect_no_dead_code", false), ("drop_top2", true), ("dce", true)]
        );
        let dumped = report.dumped.unwrap();
        assert!(!crate::dce(&mut dumped.clone()).unwrap(), "the dump follows the pass's dce");
        assert!(dumped.nodes.len() > g.nodes.len(), "the dump predates the later passes");
    }

    #[test]
    fn a_pass_that_breaks_the_graph_is_named() {
        let mut g = tiny_classifier();
        let p = Pipeline::new(vec![Pass { name: "break_graph", run: break_graph }]);
        let e = p.run(&mut g).unwrap_err();
        assert!(matches!(e, PassError::Broken { pass: "break_graph", .. }), "{e}");
        let mut bad = tiny_classifier();
        bad.outputs.clear();
        assert!(matches!(Pipeline::new(vec![]).run(&mut bad), Err(PassError::InvalidInput(_))));
    }
}
