//! The command line: `inspect` a model, `convert` a diffusers folder to a single file,
//! `translate` an image and `generate` one from a prompt. Errors end the process with one line, `error: <message>`.

mod convert;
mod device;
mod dump;
mod folder;
mod generate;
mod inspect;
mod interrupt;
mod outputs;
mod progress;
mod shapes;
mod translate;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Subcommands (and flags) that mean "run the command line" rather than the desktop app.
pub const CLI_WORDS: &[&str] = &[
    "inspect",
    "convert",
    "translate",
    "generate",
    "shapes",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
];

#[derive(Parser, Debug)]
#[command(
    name = "mirror-diffusion",
    version,
    about = "Zero-shot image translation with Stable Diffusion (MirrorDiffusion)",
    long_about = "Zero-shot image translation with Stable Diffusion (MirrorDiffusion).\n\n\
                  Without a command, Mirror opens the desktop app."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what a model folder or single-file checkpoint contains, then try to load it.
    Inspect(inspect::InspectArgs),
    /// Write a diffusers folder as one original-layout .safetensors checkpoint.
    Convert(convert::ConvertArgs),
    /// Translate an image from what it shows (--source) to what it should become (--target).
    Translate(Box<translate::TranslateArgs>),
    /// Sample images from a prompt (DDIM with classifier-free guidance).
    Generate(generate::GenerateArgs),
    /// Write a data set of rendered shapes with captions, or read the shapes in images.
    Shapes(shapes::ShapesArgs),
}

/// Whether the arguments (program name excluded) ask for the command line.
pub fn is_cli_invocation(args: &[OsString]) -> bool {
    args.first()
        .and_then(|a| a.to_str())
        .is_some_and(|a| CLI_WORDS.contains(&a))
}

/// Prints the command-line help to stdout.
pub fn print_help() {
    let _ = Cli::command().print_long_help();
}

/// Runs the command line on the process arguments; returns the exit code.
pub fn main() -> ExitCode {
    run_from(std::env::args_os())
}

/// Runs the command line on `args` (program name first).
pub fn run_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    // Before anything starts a thread pool: candle and rayon read it once.
    if let Command::Translate(args) = &cli.command
        && let Some(threads) = args.threads
    {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string()) };
    }
    mirror_engine::threads::adopt_current_thread();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Translate(args) if args.image.is_dir() => folder::run(&args),
        Command::Translate(args) => translate::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Shapes(args) => shapes::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Cancelled>().is_some() => {
            eprintln!("cancelled: nothing was written");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The model used when `--model` is not given: the built-in demo model.
pub fn default_model_path() -> anyhow::Result<std::path::PathBuf> {
    mirror_engine::demo::model_dir().map_err(anyhow::Error::msg)
}

/// The run was cancelled (Ctrl-C); nothing was written.
#[derive(Debug)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// The error and its causes on one line (a cause already quoted by its parent is skipped).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace(['\n', '\r'], " ")
}
