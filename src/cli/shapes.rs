//! `shapes --out DIR`: a seeded data set of the demo world (rendered shapes with their
//! captions) for training; `shapes --classify IMAGE…`: what the classifier reads in images.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use mirror_engine::shapes::{DatasetSettings, caption, classify, write_dataset};

#[derive(Args, Debug)]
pub struct ShapesArgs {
    /// Folder to write the PNG images and `metadata.jsonl` (file name + caption per line) into.
    #[arg(long, value_name = "DIR", required_unless_present = "classify")]
    pub out: Option<PathBuf>,
    /// Number of images.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// The same seed writes the same data set.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Instead of writing a data set, print what each of these images shows.
    #[arg(long, value_name = "IMAGE", num_args = 1.., conflicts_with = "out")]
    pub classify: Vec<PathBuf>,
}

pub fn run(args: &ShapesArgs) -> Result<()> {
    if !args.classify.is_empty() {
        for path in &args.classify {
            let image = image::open(path)
                .with_context(|| format!("{}: cannot read the image", path.display()))?
                .to_rgb8();
            let reading = classify(&image);
            match reading.object {
                Some(o) => println!(
                    "{}: {} (centre {:.1}, {:.1}; area {:.0} px; fit {:.2})",
                    path.display(),
                    caption(o.colour, o.shape, reading.background),
                    o.centroid.0,
                    o.centroid.1,
                    o.area,
                    o.fit
                ),
                None => println!(
                    "{}: no shape on a {} background",
                    path.display(),
                    reading.background.word()
                ),
            }
        }
        return Ok(());
    }
    let Some(out) = &args.out else {
        bail!("--out DIR is needed to write a data set")
    };
    if args.size < 8 {
        bail!("--size {}: images need at least 8 pixels a side", args.size);
    }
    let settings = DatasetSettings {
        count: args.count,
        side: args.size,
        seed: args.seed,
    };
    let scenes = write_dataset(out, &settings)?;
    eprintln!(
        "wrote {} images and metadata.jsonl to {}",
        scenes.len(),
        out.display()
    );
    Ok(())
}
