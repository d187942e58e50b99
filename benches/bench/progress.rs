//! The live progress line: on a terminal only, quiet otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    unit: &'static str,
}

impl Progress {
    pub fn new(unit: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {prefix:>12} {msg}").expect("valid template"));
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            bar
        });
        Progress { bar, unit }
    }

    pub fn phase(&self, phase: &str) {
        if let Some(b) = &self.bar {
            b.set_prefix(phase.to_string());
        }
    }

    pub fn rate(&self, per_second: f64) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{per_second:>12.0} {}/s", self.unit));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
