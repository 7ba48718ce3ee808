//! Progress on stderr for long work (encoding, training, studies): indicatif bars when stderr
//! is a terminal, nothing when it is not or when the caller asked for quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Debug)]
pub struct Progress {
    visible: bool,
}

impl Progress {
    /// Bars on stderr (indicatif draws them only on a terminal).
    pub fn stderr() -> Self {
        Progress { visible: true }
    }

    /// No bars, no notes.
    pub fn hidden() -> Self {
        Progress { visible: false }
    }

    /// A bar of `len` steps labelled `what`.
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if !self.visible {
            return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}")
            .expect("the template is valid")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what.to_string());
        bar
    }

    /// A line on stderr (between bars).
    pub fn note(&self, line: &str) {
        if self.visible {
            eprintln!("calm: {line}");
        }
    }
}
