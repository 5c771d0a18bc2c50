//! `mirror-diffusion` opens the Mirror app; `mirror-diffusion <subcommand> …` runs the CLI.

use std::process::ExitCode;

/// Large blocks (a layer's output at SD size) on huge pages: fewer page faults per pass.
#[global_allocator]
static ALLOCATOR: mirror_engine::memory::LargePageAllocator =
    mirror_engine::memory::LargePageAllocator;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        return match mirror_diffusion::app::run_native() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mirror: could not open the window: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Subcommands, --help/--version, and anything unknown (clap explains the usage error).
    mirror_diffusion::cli::main()
}
