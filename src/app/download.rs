//! Downloading Stable Diffusion from the Hugging Face Hub (feature `hub`, on by default).
//! Only the files the engine reads are fetched (fp32 safetensors, about 4 GB).

use std::path::PathBuf;

use crossbeam_channel::Sender;

use crate::worker::WorkerEvent;

/// The diffusers files Mirror needs.
pub const FILES: [&str; 11] = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
];
const VAE_WEIGHTS: &str = "vae/diffusion_pytorch_model.safetensors";

/// Downloads `repo` into the hub cache and returns its snapshot folder.
#[cfg(feature = "hub")]
pub fn download(repo: &str, tx: &Sender<WorkerEvent>) -> Result<PathBuf, String> {
    use hf_hub::api::Progress;

    struct Report<'a> {
        tx: &'a Sender<WorkerEvent>,
        file: String,
        total: u64,
        done: u64,
    }
    impl Progress for Report<'_> {
        fn init(&mut self, size: usize, filename: &str) {
            self.total = size as u64;
            self.file = filename.to_string();
        }
        fn update(&mut self, size: usize) {
            self.done += size as u64;
            // Every ~4 MB is plenty for a progress bar.
            if self.done % (4 << 20) < size as u64 || self.done == self.total {
                let _ = self.tx.send(WorkerEvent::Download {
                    done: self.done,
                    total: self.total,
                    file: self.file.clone(),
                });
            }
        }
        fn finish(&mut self) {}
    }

    let offline = |e: String| {
        format!(
            "Could not download {repo}. Mirror seems to be offline or the Hub is unreachable \
             ({e}). Open a model folder you already have instead."
        )
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| offline(e.to_string()))?;
    let model = api.model(repo.to_string());
    let mut last = None;
    for file in FILES.iter().chain(std::iter::once(&VAE_WEIGHTS)) {
        let report = Report {
            tx,
            file: file.to_string(),
            total: 0,
            done: 0,
        };
        let path = model
            .download_with_progress(file, report)
            .map_err(|e| offline(e.to_string()))?;
        last = Some(path);
    }
    // …/snapshots/<rev>/vae/diffusion_pytorch_model.safetensors → …/snapshots/<rev>
    last.and_then(|p| p.parent().and_then(|p| p.parent()).map(PathBuf::from))
        .ok_or_else(|| "the download finished without files".to_string())
}

#[cfg(not(feature = "hub"))]
pub fn download(repo: &str, _tx: &Sender<WorkerEvent>) -> Result<PathBuf, String> {
    Err(format!(
        "This build of Mirror cannot download ({repo}): it was built without the `hub` feature. \
         Download the model folder yourself and open it."
    ))
}
