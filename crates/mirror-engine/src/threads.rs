//! How the engine's CPU work is spread over threads: the thread that runs the edits joins the
//! compute pool, and on small latents the next step's reconstruction runs beside the current
//! step's translation instead of splitting every small operation.

/// Makes the calling thread the first thread of the global compute pool (the GEMMs' and the
/// engine's parallel kernels), with as many threads as candle splits its products into.
///
/// Call it once, first thing, on the thread that will run the edits (the app's engine thread,
/// the command line's main thread). Without it every parallel operation hands its work to
/// the pool and waits: on 2 cores the pool's idle threads then spin against the caller, and
/// the demo edit took 1.5× as long on 2 threads as on one. Returns `false` when the pool was
/// already started or has one thread only (the edits still run, through the hand-off).
///
/// The adopted thread never takes work from other threads: they are served by the pool's
/// other threads, so a one-thread pool is never adopted (another thread's parallel work
/// would wait forever), and the thread must live as long as the process.
pub fn adopt_current_thread() -> bool {
    let threads = candle_core::utils::get_num_threads();
    threads > 1
        && rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .use_current_thread()
            .build_global()
            .is_ok()
}

/// Latents of at most this many positions are "small": one UNet call is a few milliseconds
/// of small products that gain nothing from a second thread, so the Mirror branches overlap
/// instead (see [`overlap_branches`]). An SD 1.5 latent of 256 px (32 × 32) is above it: its
/// products split well, and overlapping would hold two backward graphs at once.
pub const SMALL_LATENT_POSITIONS: usize = 256;

/// Whether a run on a `height × width` latent computes the next step's reconstruction while
/// the current step's translation runs: the pool must have a second thread for it, and the
/// latent must be small enough that its operations could not use that thread themselves.
/// The numbers are the same either way; only the order of the work changes.
pub fn overlap_branches(height: usize, width: usize) -> bool {
    rayon::current_num_threads() > 1 && height * width <= SMALL_LATENT_POSITIONS
}
