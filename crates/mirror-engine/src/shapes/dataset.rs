//! A seeded training set: `count` rendered scenes as PNG files plus `metadata.jsonl`
//! (one `{"file_name": …, "text": caption}` per line, the layout diffusers' trainers read).

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::{Scene, SplitMix64, render};

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct DatasetSettings {
    /// Number of images.
    pub count: usize,
    /// Image side in pixels.
    pub side: u32,
    /// Seed of the scene generator; the same seed writes the same data set.
    pub seed: u64,
}

/// Writes the data set into `dir` (created if needed) and returns its scenes.
pub fn write_dataset(dir: &Path, settings: &DatasetSettings) -> anyhow::Result<Vec<Scene>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    let mut rng = SplitMix64::new(settings.seed);
    let digits = settings.count.max(1).to_string().len().max(5);
    let metadata_path = dir.join("metadata.jsonl");
    let mut metadata = std::io::BufWriter::new(
        std::fs::File::create(&metadata_path)
            .with_context(|| format!("{}: cannot create", metadata_path.display()))?,
    );
    let mut scenes = Vec::with_capacity(settings.count);
    for index in 0..settings.count {
        let scene = Scene::random(&mut rng);
        let name = format!("{index:0digits$}.png");
        let path = dir.join(&name);
        render(&scene, settings.side)
            .save(&path)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        let line = serde_json::json!({ "file_name": name, "text": scene.caption() });
        writeln!(metadata, "{line}")
            .with_context(|| format!("{}: cannot write", metadata_path.display()))?;
        scenes.push(scene);
    }
    metadata
        .flush()
        .with_context(|| format!("{}: cannot write", metadata_path.display()))?;
    Ok(scenes)
}
