//! `convert DIFFUSERS_DIR OUT.safetensors`: one original-layout checkpoint from a diffusers
//! folder (stored dtypes kept), written to a temporary file and renamed into place.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::outputs::{check_writable, temp_path_for};
use mirror_engine::loader::{ModelSource, open_model_source, write_single_file};

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Diffusers model folder.
    #[arg(value_name = "DIFFUSERS_DIR")]
    pub folder: PathBuf,
    /// Single-file checkpoint to write.
    #[arg(value_name = "OUT.safetensors")]
    pub out: PathBuf,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    check_writable(&args.out)?;
    let folder = match open_model_source(&args.folder)? {
        ModelSource::Diffusers(folder) => folder,
        ModelSource::SingleFile(file) => {
            bail!("{}: already a single-file checkpoint", file.display())
        }
    };
    let temp = temp_path_for(&args.out);
    let written = write_single_file(&folder, &temp)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            std::fs::rename(&temp, &args.out)
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.out.display()))
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.1} MB); load it with --configs {} unless it is SD 1.x",
        args.out.display(),
        bytes as f64 / 1e6,
        args.folder.display()
    );
    Ok(())
}
