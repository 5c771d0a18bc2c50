//! `mirror-diffusion` opens the Mirror app; `mirror-diffusion <subcommand> …` runs the CLI.

use std::process::ExitCode;

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
