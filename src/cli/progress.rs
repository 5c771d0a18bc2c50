//! Progress on stderr: a one-line bar (phase, step i/N, ETA, losses) on a terminal; one line
//! per phase (and per note) otherwise, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use mirror_engine::pipeline::{Event, Phase};

const BAR_WIDTH: usize = 24;

pub struct Progress {
    tty: bool,
    phase: Option<Phase>,
    phase_started: Instant,
    /// A bar is drawn on the current line.
    drawn: bool,
}

impl Progress {
    pub fn new() -> Self {
        Self::with_tty(std::io::stderr().is_terminal())
    }

    pub fn with_tty(tty: bool) -> Self {
        Self {
            tty,
            phase: None,
            phase_started: Instant::now(),
            drawn: false,
        }
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Phase { phase, steps } => {
                self.end_line();
                self.phase = Some(phase);
                self.phase_started = Instant::now();
                // Decoding has no per-image events: a line, not a bar.
                if self.tty && phase != Phase::Decode {
                    self.draw(0, steps, "");
                } else if steps > 0 {
                    let unit = if phase == Phase::Decode {
                        "images"
                    } else {
                        "steps"
                    };
                    eprintln!("{:>10} ({steps} {unit})", phase.label());
                } else {
                    eprintln!("{:>10}", phase.label());
                }
            }
            // `step` counts the inversion steps done.
            Event::Inversion { step, total, .. } => self.draw(step, total, ""),
            Event::Direction { done, total } => {
                if self.tty {
                    self.end_line();
                    let _ = write!(
                        std::io::stderr(),
                        "\r\x1b[2K  direction: {done}/{total} sentences"
                    );
                    self.drawn = true;
                }
            }
            Event::Step(report) => {
                let mut detail = String::new();
                if let Some(loss) = report.redescription.as_ref().and_then(|r| r.losses.last()) {
                    detail.push_str(&format!("  redescribe loss {loss:.3e}"));
                }
                if let Some(g) = &report.guidance {
                    detail.push_str(&format!("  guidance loss {:.3e}", g.loss));
                }
                self.draw(report.step + 1, report.total, &detail);
            }
            Event::Note(note) => {
                self.end_line();
                eprintln!("{note}");
            }
            // The bar moves per step; progress inside a step is for the app.
            Event::StepWork(_) => {}
        }
    }

    /// Ends the bar's line (before other output or at the end of the run).
    pub fn finish(&mut self) {
        self.end_line();
    }

    fn end_line(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }

    fn draw(&mut self, done: usize, total: usize, detail: &str) {
        if !self.tty {
            return;
        }
        let label = self.phase.map(|p| p.label()).unwrap_or("");
        let line = if let Some(share) = (done * BAR_WIDTH).checked_div(total) {
            let filled = share.min(BAR_WIDTH);
            let bar = format!("{}{}", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled));
            let eta = eta(self.phase_started.elapsed(), done, total)
                .map(|d| format!("  ETA {}", clock(d)))
                .unwrap_or_default();
            format!("{label:>10} [{bar}] {done}/{total}{eta}{detail}")
        } else {
            format!("{label:>10}")
        };
        let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
        self.drawn = true;
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// Remaining time from the mean duration of the steps done so far in this phase.
pub fn eta(elapsed: Duration, done: usize, total: usize) -> Option<Duration> {
    if done == 0 || done > total {
        return None;
    }
    Some(elapsed.mul_f64((total - done) as f64 / done as f64))
}

/// `m:ss`, or `h:mm:ss` from an hour on.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_scales_mean_step_time() {
        assert_eq!(
            eta(Duration::from_secs(10), 2, 10),
            Some(Duration::from_secs(40))
        );
        assert_eq!(eta(Duration::from_secs(10), 0, 10), None);
        assert_eq!(eta(Duration::from_secs(10), 10, 10), Some(Duration::ZERO));
    }

    #[test]
    fn clock_formats() {
        assert_eq!(clock(Duration::from_secs(75)), "1:15");
        assert_eq!(clock(Duration::from_secs(3725)), "1:02:05");
    }
}
