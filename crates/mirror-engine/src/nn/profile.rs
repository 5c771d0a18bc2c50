//! Seconds per named stage of the layers, added up while the environment variable
//! `MIRROR_PROFILE` is set: the benchmark's view of where a pass goes. Unset, a stage costs
//! one check of a cached flag and no clock reads. A stage started inside another on the same
//! thread counts only under its own name: the outer one gets its own time less the inner
//! ones', so that the table adds up to the pass.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Whether `MIRROR_PROFILE` was set when the first stage ran.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("MIRROR_PROFILE").is_some_and(|v| v != "0"))
}

/// Seconds and calls per stage since the last [`take`].
static TOTALS: Mutex<Option<HashMap<String, (f64, usize)>>> = Mutex::new(None);

thread_local! {
    /// Seconds spent in the stages nested inside each running stage of this thread, innermost
    /// last.
    static NESTED: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// A running stage: its time is added under its name when it is dropped.
#[must_use = "a stage is timed until it is dropped"]
pub struct Stage(Option<(String, Instant)>);

/// Starts timing a stage; `name` is only called while profiling.
pub fn stage(name: impl FnOnce() -> String) -> Stage {
    Stage(enabled().then(|| {
        enter();
        (name(), Instant::now())
    }))
}

/// Opens a stage on this thread's stack of running stages.
fn enter() {
    NESTED.with(|n| n.borrow_mut().push(0.0));
}

/// Closes the innermost running stage after `elapsed` seconds: its own time (less the stages
/// nested in it), which is added to the stage around it as nested time.
fn leave(elapsed: f64) -> f64 {
    NESTED.with(|n| {
        let mut n = n.borrow_mut();
        let inner = n.pop().unwrap_or(0.0);
        if let Some(outer) = n.last_mut() {
            *outer += elapsed;
        }
        (elapsed - inner).max(0.0)
    })
}

impl Drop for Stage {
    fn drop(&mut self) {
        let Some((name, start)) = self.0.take() else {
            return;
        };
        let seconds = leave(start.elapsed().as_secs_f64());
        if let Ok(mut totals) = TOTALS.lock() {
            let entry = totals.get_or_insert_with(HashMap::new).entry(name);
            let total = entry.or_default();
            total.0 += seconds;
            total.1 += 1;
        }
    }
}

/// The stages timed since the last call, slowest first: (name, seconds, calls).
pub fn take() -> Vec<(String, f64, usize)> {
    let totals = TOTALS.lock().ok().and_then(|mut t| t.take());
    let mut stages: Vec<_> = totals
        .unwrap_or_default()
        .into_iter()
        .map(|(name, (seconds, calls))| (name, seconds, calls))
        .collect();
    stages.sort_by(|a, b| b.1.total_cmp(&a.1));
    stages
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stages add up under their names only while profiling, and `take` empties the table.
    /// (Other tests may add stages of their own at the same time.)
    #[test]
    fn stages_add_up_under_their_names() {
        let timed = |name: &'static str| drop(stage(|| name.to_string()));
        timed("profile test a");
        timed("profile test a");
        timed("profile test b");
        let calls = |stages: &[(String, f64, usize)], name: &str| {
            stages.iter().find(|s| s.0 == name).map(|s| s.2)
        };
        let stages = take();
        let expected = |n| enabled().then_some(n);
        assert_eq!(calls(&stages, "profile test a"), expected(2));
        assert_eq!(calls(&stages, "profile test b"), expected(1));
        assert!(stages.windows(2).all(|w| w[0].1 >= w[1].1));
        assert_eq!(calls(&take(), "profile test a"), None);
    }

    /// A stage's own time leaves out the stages nested in it, at every depth.
    #[test]
    fn nested_stages_count_once() {
        std::thread::spawn(|| {
            enter(); // outer
            enter(); // middle
            enter(); // inner
            assert_eq!(leave(1.0), 1.0);
            enter(); // second inner
            assert_eq!(leave(0.5), 0.5);
            assert_eq!(leave(4.0), 2.5);
            assert_eq!(leave(10.0), 6.0);
        })
        .join()
        .expect("the stage stack test runs");
    }
}
