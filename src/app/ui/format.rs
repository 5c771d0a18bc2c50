//! Progress in words, shared by the Run section and the status bar: what a phase is doing,
//! and how long something takes.

use mirror_engine::pipeline::Phase;

/// What a phase is doing, in words.
pub fn phase_words(phase: Phase) -> &'static str {
    match phase {
        Phase::Encode => "reading the photo",
        Phase::Invert => "analysing the photo",
        Phase::Redescribe => "redescribing and editing",
        Phase::Translate => "editing",
        Phase::Decode => "finishing the images",
    }
}

/// A duration as the UI shows it: "42 s", "3m 07s".
pub fn fmt_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.0} s")
    } else {
        format!("{}m {:02.0}s", (s / 60.0) as u64, s % 60.0)
    }
}
