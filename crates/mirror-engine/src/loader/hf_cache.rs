//! Stable Diffusion pipelines already downloaded into the Hugging Face hub cache
//! (`models--<owner>--<name>/snapshots/<revision>/`).

use std::path::{Path, PathBuf};

/// A pipeline snapshot found in the Hugging Face hub cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// `owner/name`, from the `models--owner--name` folder.
    pub repo_id: String,
    /// The snapshot folder (a diffusers pipeline folder).
    pub snapshot: PathBuf,
    /// The snapshot's revision (its folder name, a commit hash).
    pub revision: String,
}

/// The hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| {
            var("XDG_CACHE_HOME")
                .or_else(|| var("HOME").map(|h| h.join(".cache")))
                .or_else(|| var("USERPROFILE").map(|h| h.join(".cache")))
                .map(|c| c.join("huggingface").join("hub"))
        })
}

/// SD pipelines in the default hub cache (empty when there is none).
pub fn find_cached_models() -> Vec<CachedModel> {
    hub_cache_dir()
        .map(|hub| find_cached_models_in(&hub))
        .unwrap_or_default()
}

fn looks_like_pipeline(dir: &Path) -> bool {
    dir.join("model_index.json").is_file() || dir.join("unet").join("config.json").is_file()
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

/// SD pipelines (snapshots with `model_index.json` or `unet/config.json`) in `hub`, sorted by
/// repo id and revision. Unreadable folders are skipped.
pub fn find_cached_models_in(hub: &Path) -> Vec<CachedModel> {
    let mut found = Vec::new();
    for repo in sorted_entries(hub) {
        let Some(folder) = repo.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(id) = folder.strip_prefix("models--") else {
            continue;
        };
        let repo_id = id.replacen("--", "/", 1);
        for snapshot in sorted_entries(&repo.join("snapshots")) {
            if !snapshot.is_dir() || !looks_like_pipeline(&snapshot) {
                continue;
            }
            let revision = snapshot
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            found.push(CachedModel {
                repo_id: repo_id.clone(),
                snapshot,
                revision,
            });
        }
    }
    found
}
