use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        // The desktop app opens here (`mirror_diffusion::app::run()`); until then, the help.
        mirror_diffusion::cli::print_help();
        return ExitCode::SUCCESS;
    }
    // Subcommands, --help/--version, and anything unknown (clap explains the usage error).
    mirror_diffusion::cli::main()
}
