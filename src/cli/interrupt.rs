//! Ctrl-C cancels the run through its `CancelToken`; a second Ctrl-C exits at once.
//! Outputs are written atomically after the run, so neither leaves a partial file.

use mirror_engine::pipeline::CancelToken;

#[cfg(unix)]
mod imp {
    use std::sync::OnceLock;

    use mirror_engine::pipeline::CancelToken;

    static TOKEN: OnceLock<CancelToken> = OnceLock::new();

    // Only atomic loads/stores and `_exit`: async-signal-safe.
    extern "C" fn on_interrupt(_signal: libc::c_int) {
        if let Some(token) = TOKEN.get() {
            if token.is_cancelled() {
                // SAFETY: `_exit` is async-signal-safe.
                unsafe { libc::_exit(130) };
            }
            token.cancel();
        }
    }

    pub fn install(token: &CancelToken) {
        if TOKEN.set(token.clone()).is_ok() {
            let handler = on_interrupt as extern "C" fn(libc::c_int);
            // SAFETY: installs a handler that only touches atomics.
            unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use mirror_engine::pipeline::CancelToken;

    /// Elsewhere Ctrl-C ends the process (outputs are still never partial).
    pub fn install(_token: &CancelToken) {}
}

/// Routes Ctrl-C to `token` for the rest of the process.
pub fn install(token: &CancelToken) {
    imp::install(token)
}
