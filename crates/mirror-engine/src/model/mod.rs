//! A whole Stable Diffusion pipeline (tokenizer, text encoder, UNet, VAE, DDIM scheduler)
//! loaded from a diffusers folder or a single-file checkpoint, with what its folder says about
//! itself (`mirror.json`) and the prompt check that uses it.

mod lora;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};

use crate::clip::{ClipTextConfig, ClipTextTransformer};
use crate::device::{Precision, forward_dtype};
use crate::forward::{ForwardNets, ForwardUnet};
use crate::loader::lora::LoraInfo;
use crate::loader::{
    CheckpointConfigs, ModelNotes, ModelSource, Recommended, SingleFileCheckpoint, ldm_names,
    open_model_source, weight_error,
};
use crate::scheduler::DdimScheduler;
use crate::tokenizer::{ClipTokenizer, unknown_words_message};
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::vae::tiled::{VaeTiles, fits_whole, free_memory_bytes, untiled_peak_bytes};
use crate::vae::{AutoencoderKL, DiagonalGaussian, TilingSettings, VaeConfig};
use crate::{EngineError, Result};

/// What a run says when `auto` worked the VAE in tiles.
pub const VAE_TILES_FALLBACK_NOTE: &str = "the image was too large for memory in one piece: \
     the VAE worked on it in tiles (results differ slightly from a run in one piece)";

/// What a run's VAE passes did about tiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VaeTilesReport {
    /// At least one pass went through in tiles.
    pub used: bool,
    /// `auto` chose tiles: the whole pass would not fit in memory, or ran out of it.
    pub fell_back: bool,
}

/// The tiles mode of the current run and its report. Behind a lock because the model is
/// shared by reference with every stage of a run; a session runs one request at a time.
#[derive(Debug, Default)]
pub struct VaeTilesState(Mutex<(VaeTiles, VaeTilesReport)>);

impl VaeTilesState {
    fn lock(&self) -> std::sync::MutexGuard<'_, (VaeTiles, VaeTilesReport)> {
        // A panicked pass leaves a plain value behind: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a loaded model is, for display, recipes and cache keys.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Folder or file name.
    pub name: String,
    /// The model folder or checkpoint file it was loaded from.
    pub path: PathBuf,
    /// "diffusers folder" or "single-file checkpoint".
    pub kind: &'static str,
    /// Fingerprint of the weight files (headers plus sampled bytes): cheap, stable, and
    /// different for different weights in practice.
    pub fingerprint: String,
}

/// A loaded Stable Diffusion model: tokenizer, CLIP text encoder, UNet, VAE and DDIM scheduler,
/// in f32 on one device.
pub struct StableDiffusion {
    /// The CLIP tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The CLIP text encoder (f32).
    pub text_encoder: ClipTextTransformer,
    /// The UNet (f32).
    pub unet: UNet2DConditionModel,
    /// The VAE (f32).
    pub vae: AutoencoderKL,
    /// The DDIM scheduler.
    pub scheduler: DdimScheduler,
    /// The device every network lives on.
    pub device: Device,
    /// What the model is (name, path, kind, fingerprint).
    pub info: ModelInfo,
    /// The folder's `mirror.json` (empty without one).
    pub notes: ModelNotes,
    /// Copies of the networks in a half type for forward-only passes (None: those passes
    /// use the f32 networks above).
    pub half: Option<ForwardNets>,
    /// When VAE passes go through in tiles, and whether they did.
    pub vae_tiles: VaeTilesState,
    /// The LoRAs merged into the text encoder and UNet (`set_loras`), in order.
    pub loras: Vec<LoraInfo>,
    /// The configs a single-file checkpoint was built with (`set_loras` rebuilds from them);
    /// None for a diffusers folder.
    pub checkpoint_configs: Option<CheckpointConfigs>,
}

impl StableDiffusion {
    /// Loads a diffusers folder or an SD 1.x single-file checkpoint (with the bundled SD 1.x
    /// configs) on `device`, in f32 (the methods differentiate through the UNet).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with_configs(path, device, CheckpointConfigs::bundled_sd_v1())
    }

    /// As [`Self::load`]; `single_file_configs` describe the architecture of a single-file
    /// checkpoint (ignored for diffusers folders, which carry their configs).
    pub fn load_with_configs(
        path: &Path,
        device: &Device,
        single_file_configs: CheckpointConfigs,
    ) -> Result<Self> {
        Self::load_with_precision(path, device, single_file_configs, Precision::F32)
    }

    /// As [`Self::load_with_configs`]; forward-only passes run in the type `precision` gives
    /// on `device` ([`forward_dtype`]). A half type loads a second, half-size copy of the
    /// networks once, so no pass pays for converting weights; gradient passes keep f32.
    pub fn load_with_precision(
        path: &Path,
        device: &Device,
        single_file_configs: CheckpointConfigs,
        precision: Precision,
    ) -> Result<Self> {
        let dtype = DType::F32;
        let notes = ModelNotes::for_model(path)?;
        let half_dtype = Some(forward_dtype(device, precision)).filter(|d| *d != DType::F32);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let mut checkpoint_configs = None;
        let (parts, half, kind, files) = match open_model_source(path)? {
            ModelSource::Diffusers(folder) => {
                let text_weights = folder.text_encoder.open_weights()?;
                let unet_weights = folder.unet.open_weights()?;
                let vae_weights = folder.vae.open_weights()?;
                let configs = CheckpointConfigs {
                    unet_config: folder.unet.config.clone(),
                    vae_config: folder.vae.config.clone(),
                    text_encoder_config: folder.text_encoder.config.clone(),
                    scheduler_config: folder.scheduler_config.clone(),
                    tokenizer_dir: folder.tokenizer_dir.clone(),
                };
                let text_map = Arc::new(ldm_names::diffusers_text_encoder_map());
                let make = |dtype| {
                    build(
                        &configs,
                        (
                            text_weights.var_builder_mapped(text_map.clone(), dtype, device),
                            text_weights.label(),
                        ),
                        (
                            unet_weights.var_builder(dtype, device),
                            unet_weights.label(),
                        ),
                        (vae_weights.var_builder(dtype, device), vae_weights.label()),
                    )
                };
                let parts = make(dtype)?;
                let half = half_dtype.map(make).transpose()?;
                let mut files = text_weights.files().to_vec();
                files.extend_from_slice(unet_weights.files());
                files.extend_from_slice(vae_weights.files());
                (parts, half, "diffusers folder", files)
            }
            ModelSource::SingleFile(file) => {
                let ckpt = SingleFileCheckpoint::open(&file, single_file_configs)?;
                checkpoint_configs = Some(ckpt.configs().clone());
                let make = |dtype| {
                    build(
                        ckpt.configs(),
                        (ckpt.text_encoder_vb(dtype, device), &file),
                        (ckpt.unet_vb(dtype, device), &file),
                        (ckpt.vae_vb(dtype, device), &file),
                    )
                };
                let parts = make(dtype)?;
                let half = half_dtype.map(make).transpose()?;
                (parts, half, "single-file checkpoint", vec![file])
            }
        };
        let (tokenizer, text_encoder, unet, vae, scheduler) = parts;
        let half = half.map(|(_, text_encoder, unet, vae, _)| ForwardNets {
            dtype: half_dtype.unwrap_or(DType::F32),
            text_encoder,
            unet,
            vae,
        });
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler,
            device: device.clone(),
            info: ModelInfo {
                name,
                path: path.to_path_buf(),
                kind,
                fingerprint: fingerprint(&files)?,
            },
            notes,
            half,
            vae_tiles: VaeTilesState::default(),
            loras: Vec::new(),
            checkpoint_configs,
        })
    }

    /// Sets the tiles mode of the coming VAE passes and clears the report.
    pub fn set_vae_tiles(&self, mode: VaeTiles) {
        *self.vae_tiles.lock() = (mode, VaeTilesReport::default());
    }

    /// The tiles mode VAE passes follow now.
    pub fn vae_tiles_mode(&self) -> VaeTiles {
        self.vae_tiles.lock().0
    }

    /// What the VAE passes since the last [`Self::set_vae_tiles`] did about tiles.
    pub fn vae_tiles_report(&self) -> VaeTilesReport {
        self.vae_tiles.lock().1
    }

    fn note_tiles(&self, fell_back: bool) {
        let report = &mut self.vae_tiles.lock().1;
        report.used = true;
        report.fell_back |= fell_back;
    }

    /// One VAE pass of `vae` on a latent of `latent_hw`, whole or in tiles as the mode says:
    /// `off` whole, `on` in tiles (above the native size), `auto` whole unless the estimated
    /// peak would not fit the free memory, and again in tiles after an out-of-memory error
    /// (ComfyUI's fallback to its tiled decode).
    fn vae_pass<T>(
        &self,
        vae: &AutoencoderKL,
        latent_hw: (usize, usize),
        dtype: DType,
        pass: impl Fn(&TilingSettings) -> candle_core::Result<T>,
    ) -> Result<T> {
        let whole = vae.tiling().with_enabled(false);
        let tiled = vae.tiling().with_enabled(true);
        let applies = tiled.applies(latent_hw, vae.config().downsample_factor());
        match self.vae_tiles_mode() {
            _ if !applies => Ok(pass(&whole)?),
            VaeTiles::Off => Ok(pass(&whole)?),
            VaeTiles::On => {
                self.note_tiles(false);
                Ok(pass(&tiled)?)
            }
            VaeTiles::Auto => {
                let peak = untiled_peak_bytes(vae.config(), latent_hw, dtype);
                if !fits_whole(peak, free_memory_bytes(&self.device)) {
                    self.note_tiles(true);
                    return Ok(pass(&tiled)?);
                }
                match pass(&whole) {
                    Err(e) if crate::error::is_out_of_memory(&e.to_string()) => {
                        self.note_tiles(true);
                        Ok(pass(&tiled)?)
                    }
                    other => Ok(other?),
                }
            }
        }
    }

    /// VAE encode (f32, the posterior feeds gradients' inputs): image [1, 3, H, W] in
    /// [−1, 1] → posterior, whole or in tiles as [`Self::set_vae_tiles`] says.
    pub fn encode_posterior(&self, image: &Tensor) -> Result<DiagonalGaussian> {
        let (_, _, h, w) = image.dims4()?;
        let factor = self.latent_factor();
        self.vae_pass(&self.vae, (h / factor, w / factor), DType::F32, |t| {
            self.vae.encode_with(image, t)
        })
    }

    /// The type forward-only passes run in (f32 unless loaded with a half precision).
    pub fn forward_dtype(&self) -> DType {
        self.half.as_ref().map_or(DType::F32, |h| h.dtype)
    }

    /// The UNet of forward-only passes: inputs are cast to its type and its outputs
    /// (prediction and recorded attention) come back in f32, so latents stay f32 throughout.
    pub fn forward_unet(&self) -> ForwardUnet<'_> {
        match &self.half {
            Some(h) => ForwardUnet::new(&h.unet, h.dtype),
            None => ForwardUnet::new(&self.unet, DType::F32),
        }
    }

    /// VAE decode (a forward-only pass, in the forward type): latent → image in f32. A half
    /// decode that overflows is an error, never a black image.
    pub fn decode_latent(&self, latent: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = latent.dims4()?;
        let Some(half) = &self.half else {
            return self.vae_pass(&self.vae, (h, w), DType::F32, |t| {
                self.vae.latent_to_image_with(latent, t)
            });
        };
        let latent = latent.to_dtype(half.dtype)?;
        let image = self
            .vae_pass(&half.vae, (h, w), half.dtype, |t| {
                half.vae.latent_to_image_with(&latent, t)
            })?
            .to_dtype(DType::F32)?;
        if !crate::nn::is_finite(&image)? {
            return Err(EngineError::NonFinite {
                what: format!("the decoded image{}", self.half_precision_hint()),
            });
        }
        Ok(image)
    }

    /// " (computed in f16; full precision f32 may avoid this)" when forward passes run in a
    /// half type, else nothing: appended to overflow errors of forward passes.
    pub fn half_precision_hint(&self) -> String {
        match &self.half {
            Some(h) => format!(
                " (computed in {}; full precision, f32, may avoid this)",
                crate::device::dtype_word(h.dtype)
            ),
            None => String::new(),
        }
    }

    /// Token ids of prompts, padded to the text encoder's length: [B, 77] u32.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Tensor> {
        let mut ids = Vec::with_capacity(prompts.len() * self.tokenizer.max_length());
        for prompt in prompts {
            ids.extend(self.tokenizer.encode(prompt)?);
        }
        Ok(Tensor::from_vec(
            ids,
            (prompts.len(), self.tokenizer.max_length()),
            &self.device,
        )?)
    }

    /// Text-encoder hidden states of prompts: [B, 77, D] in f32 (the encoder runs in the
    /// forward type).
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor> {
        let ids = self.tokenize(prompts)?;
        let encoder = self
            .half
            .as_ref()
            .map_or(&self.text_encoder, |h| &h.text_encoder);
        Ok(encoder.forward(&ids)?.to_dtype(DType::F32)?)
    }

    /// Text-encoder hidden states of one prompt: [1, 77, D].
    pub fn encode_prompt(&self, prompt: &str) -> Result<Tensor> {
        self.encode_prompts(&[prompt])
    }

    /// Pixels per latent cell (8 for SD, 4 for the tiny fixture model).
    pub fn latent_factor(&self) -> usize {
        self.vae.config().downsample_factor()
    }

    /// Image pixels must be a multiple of this for the whole pipeline (VAE × UNet factors).
    pub fn size_multiple(&self) -> usize {
        self.latent_factor() * self.unet.config().downsample_factor()
    }

    /// The square image side the model was trained at (UNet sample size × VAE factor).
    pub fn default_image_side(&self) -> usize {
        self.unet.config().sample_size * self.latent_factor()
    }

    /// Checks that an image of `width`×`height` pixels can go through VAE and UNet.
    pub fn check_image_size(&self, width: usize, height: usize) -> Result<()> {
        let multiple = self.size_multiple();
        if width == 0
            || height == 0
            || !width.is_multiple_of(multiple)
            || !height.is_multiple_of(multiple)
        {
            return Err(EngineError::InvalidInput(format!(
                "image size {width}×{height} is not a multiple of {multiple} pixels, which this model needs"
            )));
        }
        let factor = self.latent_factor();
        self.unet.check_latent_size(height / factor, width / factor)
    }
}

/// The notes of a loaded model, and its prompt check.
impl StableDiffusion {
    /// What the model folder's `mirror.json` says (name, recommended settings, vocabulary,
    /// sentence templates).
    pub fn model_notes(&self) -> &ModelNotes {
        &self.notes
    }

    /// The model's recommended settings (empty when it recommends nothing).
    pub fn recommended(&self) -> &Recommended {
        &self.notes.recommended
    }

    /// The words of `prompt` this model does not know (see [`ClipTokenizer::unknown_words`]).
    pub fn unknown_words(&self, prompt: &str) -> Result<Vec<String>> {
        self.tokenizer
            .unknown_words(prompt, self.notes.vocabulary.as_deref())
    }

    /// An error naming the unknown words of any of `prompts` (and the words the model knows,
    /// when it lists them), so that no word silently becomes the unknown token.
    pub fn check_known_words(&self, prompts: &[&str]) -> Result<()> {
        let mut unknown: Vec<String> = Vec::new();
        for prompt in prompts {
            for word in self.unknown_words(prompt)? {
                if !unknown.contains(&word) {
                    unknown.push(word);
                }
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        Err(EngineError::InvalidInput(unknown_words_message(
            &unknown,
            self.notes.vocabulary.as_deref(),
        )))
    }
}

/// What checking prompts needs without the weights (the app's prompt fields): the model's
/// notes and its tokenizer, read the way [`StableDiffusion::load`] reads them.
pub struct ModelWords {
    /// The folder's `mirror.json` (empty without one).
    pub notes: ModelNotes,
    tokenizer: ClipTokenizer,
}

impl std::fmt::Debug for ModelWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelWords")
            .field("notes", &self.notes)
            .finish_non_exhaustive()
    }
}

impl ModelWords {
    /// Notes and tokenizer of a diffusers folder, or of a single-file checkpoint with the
    /// bundled SD 1.x tokenizer.
    pub fn for_model(path: &Path) -> Result<Self> {
        let tokenizer_dir = match open_model_source(path)? {
            ModelSource::Diffusers(folder) => folder.tokenizer_dir,
            ModelSource::SingleFile(_) => CheckpointConfigs::bundled_sd_v1().tokenizer_dir,
        };
        Ok(Self {
            notes: ModelNotes::for_model(path)?,
            tokenizer: ClipTokenizer::from_dir(&tokenizer_dir)?,
        })
    }

    /// The words of `prompt` the model does not know (see [`ClipTokenizer::unknown_words`]).
    pub fn unknown_words(&self, prompt: &str) -> Result<Vec<String>> {
        self.tokenizer
            .unknown_words(prompt, self.notes.vocabulary.as_deref())
    }

    /// When `prompt` is longer than the model reads, the last words it reads (see
    /// [`ClipTokenizer::truncation`]).
    pub fn truncation(&self, prompt: &str) -> Result<Option<String>> {
        self.tokenizer.truncation(prompt)
    }

    /// The model's own captions (`mirror.json`'s `sentence_templates`), when it lists them.
    pub fn captions(&self) -> Option<&[String]> {
        self.notes.templates()
    }

    /// The message for `unknown` words, with the words the model knows when it lists them.
    pub fn message(&self, unknown: &[String]) -> String {
        unknown_words_message(unknown, self.notes.vocabulary.as_deref())
    }
}

type Parts = (
    ClipTokenizer,
    ClipTextTransformer,
    UNet2DConditionModel,
    AutoencoderKL,
    DdimScheduler,
);

/// Builds every component from its config and weights; weight errors name `file`.
fn build(
    configs: &CheckpointConfigs,
    text: (VarBuilder, &Path),
    unet: (VarBuilder, &Path),
    vae: (VarBuilder, &Path),
) -> Result<Parts> {
    let text_cfg = ClipTextConfig::from_file(&configs.text_encoder_config)?;
    let tokenizer = ClipTokenizer::from_dir(&configs.tokenizer_dir)?
        .with_max_length(text_cfg.max_position_embeddings)?;
    let unet_cfg = UNetConfig::from_file(&configs.unet_config)?;
    let (text_encoder, unet_model) = build_text_and_unet((text, &text_cfg), (unet, &unet_cfg))?;
    let vae_cfg = VaeConfig::from_file(&configs.vae_config)?;
    let vae_model = AutoencoderKL::new(vae.0, &vae_cfg).map_err(|e| weight_error(vae.1, e))?;
    let scheduler = DdimScheduler::from_file(&configs.scheduler_config)?;
    Ok((tokenizer, text_encoder, unet_model, vae_model, scheduler))
}

/// The text encoder and the UNet from their weights and configs (also rebuilt with LoRAs,
/// `model/lora.rs`); weight errors name the file.
pub(crate) fn build_text_and_unet(
    text: ((VarBuilder, &Path), &ClipTextConfig),
    unet: ((VarBuilder, &Path), &UNetConfig),
) -> Result<(ClipTextTransformer, UNet2DConditionModel)> {
    let (((text_vb, text_file), text_cfg), ((unet_vb, unet_file), unet_cfg)) = (text, unet);
    let text_encoder =
        ClipTextTransformer::new(text_vb, text_cfg).map_err(|e| weight_error(text_file, e))?;
    let unet_model =
        UNet2DConditionModel::new(unet_vb, unet_cfg).map_err(|e| weight_error(unet_file, e))?;
    Ok((text_encoder, unet_model))
}

/// Hash of each file's safetensors header plus 64 KiB samples at 16 evenly spaced offsets:
/// reading a few MiB instead of gigabytes, yet different whenever the weights differ.
fn fingerprint(files: &[PathBuf]) -> Result<String> {
    let mut hasher = Sha256::new();
    for file in files {
        let io = |source| EngineError::Io {
            path: file.clone(),
            source,
        };
        let mut f = std::fs::File::open(file).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        hasher.update(len.to_le_bytes());
        let mut header_len = [0u8; 8];
        f.read_exact(&mut header_len).map_err(io)?;
        let header_len = u64::from_le_bytes(header_len).min(len.saturating_sub(8));
        let mut buf = vec![0u8; header_len as usize];
        f.read_exact(&mut buf).map_err(io)?;
        hasher.update(&buf);
        let data_start = 8 + header_len;
        let data_len = len - data_start;
        let mut sample = vec![0u8; 65536];
        for k in 0..16u64 {
            let offset = data_start + data_len * k / 16;
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            let n = f.read(&mut sample).map_err(io)?;
            hasher.update(&sample[..n]);
        }
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}
