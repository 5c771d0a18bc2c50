//! `mirror-diffusion` opens the Mirror app; `mirror-diffusion <subcommand> …` runs the CLI.

fn main() -> std::process::ExitCode {
    // A subcommand (anything but an empty command line) goes to the CLI once it exists;
    // until then the app starts.
    match mirror_diffusion::app::run_native() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirror: could not open the window: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
