//! `translate`: one image from `--source` to `--target`, with optional reconstruction, plain
//! DDIM outputs, comparison sheet, per-step dump, and replay of a recipe.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};

use super::device::{DeviceArgs, describe as describe_compute};
use super::direction::DirectionRecipe;
use super::dump::{DUMP_HELP, write_dump};
use super::outputs::{check_writable, comparison_tiles, save_comparison, save_tensor_png};
use super::progress::Progress;
use super::{Cancelled, default_model_path, interrupt};
use mirror_engine::imageio::{
    ImageLimits, RECIPE_VERSION, Recipe, ResizePolicy, describe_resize, load_image,
    processing_size, read_recipe, resize,
};
use mirror_engine::loader::{ModelNotes, Recommended, RecommendedDirection};
use mirror_engine::methods::mirror::{MirrorPreset, MirrorSettings};
use mirror_engine::pipeline::CancelToken;
use mirror_engine::session::{InversionCache, Method, Session, TranslateRequest};
use mirror_engine::vae::VaeTiles;

const AFTER_HELP: &str = "\
Threads: --threads T sets RAYON_NUM_THREADS before anything runs (candle reads it). On small
machines (2 cores) a single thread is fastest for tiny models.

Cache: inversions are cached in memory and in the user cache folder (~/.cache/mirror on Linux,
following XDG_CACHE_HOME) so that re-editing the same image skips the inversion; --no-cache
turns both off.

Replay: --recipe reads the recipe stored in a PNG written by Mirror (or a JSON recipe) and runs
it again; options given explicitly override the recipe's values.";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Recommended: the reconstruction mirrors the photo at every step, so only the edited
    /// object changes.
    Mirror,
    /// Analyse the photo, regenerate it with the new prompt (the plain baseline).
    Ddim,
    /// An edit direction from example sentences, guided to keep the layout.
    #[value(name = "pix2pix-zero")]
    Pix2PixZero,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::Mirror => Method::Mirror,
            MethodArg::Ddim => Method::Ddim,
            MethodArg::Pix2PixZero => Method::Pix2PixZero,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// Recommended: consistent settings whose schedules scale to any number of steps.
    Recommended,
    /// As in the authors' released code, step for step.
    Authors,
}

impl From<PresetArg> for MirrorPreset {
    fn from(p: PresetArg) -> MirrorPreset {
        match p {
            PresetArg::Recommended => MirrorPreset::Recommended,
            PresetArg::Authors => MirrorPreset::Authors,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ResizeArg {
    /// Keep the photo's shape: the model's native area at its aspect ratio; outputs come back
    /// at the photo's own size.
    Keep,
    /// Centre-crop to the model's square (or --size), then resize.
    Crop,
    /// Resize, distorting the aspect ratio.
    Stretch,
    /// Fit inside, fill the borders with grey.
    Pad,
}

impl From<ResizeArg> for ResizePolicy {
    fn from(r: ResizeArg) -> ResizePolicy {
        match r {
            ResizeArg::Keep => ResizePolicy::Keep,
            ResizeArg::Crop => ResizePolicy::Crop,
            ResizeArg::Stretch => ResizePolicy::Stretch,
            ResizeArg::Pad => ResizePolicy::Pad,
        }
    }
}

/// `WxH` in pixels.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Size(pub u32, pub u32);

pub(super) fn parse_size(s: &str) -> std::result::Result<Size, String> {
    let bad = || format!("`{s}` is not a size like 512x512");
    let (w, h) = s.split_once(['x', 'X', '×']).ok_or_else(bad)?;
    Ok(Size(
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    ))
}

#[derive(Args, Debug)]
#[command(after_long_help = format!("{AFTER_HELP}\n\n{DUMP_HELP}"))]
pub struct TranslateArgs {
    /// Diffusers model folder or single-file .safetensors checkpoint.
    #[arg(long, value_name = "DIR_OR_FILE")]
    pub model: Option<PathBuf>,
    /// Diffusers folder whose configs and tokenizer describe a single-file checkpoint
    /// (default: the bundled SD 1.x configs).
    #[arg(long, value_name = "DIR")]
    pub configs: Option<PathBuf>,
    /// Input image (PNG, JPEG, WebP, GIF).
    #[arg(long, value_name = "IN")]
    pub image: PathBuf,
    /// What the image shows, e.g. "a photo of a cat".
    #[arg(long, value_name = "TEXT")]
    pub source: Option<String>,
    /// What it should become, e.g. "a photo of a dog".
    #[arg(long, value_name = "TEXT")]
    pub target: Option<String>,
    /// The translated image (PNG with its recipe embedded).
    #[arg(long, short, value_name = "OUT.png")]
    pub out: PathBuf,
    /// Editing method [default: mirror].
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// MirrorDiffusion preset [default: recommended].
    #[arg(long, value_enum)]
    pub preset: Option<PresetArg>,
    /// DDIM steps, shared by inversion and sampling [default: the model's recommended, else 50].
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Seed of the random choices (used by the authors' preset) [default: 0].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Multiplier of the edit direction [default: the model's recommended, else 1].
    #[arg(long, value_name = "ALPHA")]
    pub strength: Option<f64>,
    /// How strongly the target prompt is followed [default: the model's recommended, else 5].
    #[arg(long, value_name = "G")]
    pub guidance: Option<f64>,
    /// How strongly the photo's layout is held in place while editing [default: 0.1].
    #[arg(long, value_name = "E")]
    pub xa_guidance: Option<f64>,
    /// MirrorDiffusion: refinement iterations of the photo's description per step [default: 10].
    #[arg(long, value_name = "K")]
    pub redescribe_iters: Option<usize>,
    /// MirrorDiffusion: step size of that refinement [default: 0.01].
    #[arg(long, value_name = "LR")]
    pub redescribe_lr: Option<f64>,
    /// How the image is brought to the model's size [default: keep].
    #[arg(long, value_enum)]
    pub resize: Option<ResizeArg>,
    /// Processing size (multiples of the model's size factor) [default: the model's native
    /// area at the image's shape with `--resize keep`, else the model's square].
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub size: Option<Size>,
    /// Skip the plain DDIM comparison (faster).
    #[arg(long)]
    pub no_ddim: bool,
    /// Edit direction: `templates` (sentences around the changed phrase), `prompt`
    /// (E(target) − E(source)), or a saved direction file [default: templates].
    #[arg(
        long,
        value_name = "templates|prompt|FILE.safetensors",
        conflicts_with = "sentences"
    )]
    pub direction: Option<String>,
    /// Edit direction from your own sentence lists (one sentence a line).
    #[arg(long, num_args = 2, value_names = ["SRC.txt", "TGT.txt"])]
    pub sentences: Option<Vec<PathBuf>>,
    /// Comparison sheet: source | reconstruction | translation | DDIM reconstruction | DDIM translation.
    #[arg(long, value_name = "SHEET.png")]
    pub comparison: Option<PathBuf>,
    /// The method's reconstruction of the input.
    #[arg(long, value_name = "REC.png")]
    pub reconstruction: Option<PathBuf>,
    /// Plain DDIM reconstruction and translation.
    #[arg(long, num_args = 2, value_names = ["DDIM_REC.png", "DDIM_EDIT.png"])]
    pub ddim_out: Option<Vec<PathBuf>>,
    /// Plain DDIM reconstruction.
    #[arg(long, value_name = "PNG", conflicts_with = "ddim_out")]
    pub ddim_reconstruction: Option<PathBuf>,
    /// Plain DDIM translation.
    #[arg(long, value_name = "PNG", conflicts_with = "ddim_out")]
    pub ddim_translation: Option<PathBuf>,
    /// Every per-step tensor of the run, as safetensors (names below).
    #[arg(long, value_name = "RUN.safetensors")]
    pub dump: Option<PathBuf>,
    /// Replay the recipe stored in a Mirror PNG (or a JSON recipe); explicit options override it.
    #[arg(long, value_name = "RECIPE.png|json")]
    pub recipe: Option<PathBuf>,
    /// Neither read nor write the inversion cache.
    #[arg(long)]
    pub no_cache: bool,
    /// VAE in tiles: auto (only when the image does not fit in memory), on (diffusers'
    /// tiling above the model's size), off [default: the recipe's, else auto].
    #[arg(long, value_name = "auto|on|off")]
    pub vae_tiles: Option<VaeTiles>,
    #[command(flatten)]
    pub compute: DeviceArgs,
    /// Compute threads (sets RAYON_NUM_THREADS).
    #[arg(long, value_name = "T")]
    pub threads: Option<usize>,
}

/// The run's settings once the recipe (if any) and the flags are merged.
#[derive(Debug, Clone)]
struct Plan {
    method: Method,
    preset: MirrorPreset,
    source: String,
    target: String,
    steps: usize,
    seed: u64,
    strength: f64,
    guidance: f64,
    xa_guidance: f64,
    redescribe_iters: usize,
    redescribe_lr: f64,
    resize: ResizePolicy,
    size: Option<(u32, u32)>,
    compare_ddim: bool,
    direction: DirectionRecipe,
    recipe: Option<Recipe>,
}

/// `recommended`: the model's recommended settings (`mirror.json`); they replace Mirror's own
/// defaults (MirrorDiffusion's only with the recommended preset), never a flag or a recipe.
#[expect(
    clippy::too_many_lines,
    reason = "flag by flag over the recommended settings; goes with Recipe::from_request (issue 18)"
)]
fn plan(args: &TranslateArgs, recommended: &Recommended) -> Result<Plan> {
    let recipe = match &args.recipe {
        Some(path) => Some(
            read_recipe(path)?
                .ok_or_else(|| anyhow!("{}: holds no Mirror recipe", path.display()))?,
        ),
        None => None,
    };
    let r = recipe.as_ref();
    let from_recipe_str = |f: fn(&Recipe) -> &str| r.map(f).filter(|s| !s.is_empty());
    let method = match (args.method, from_recipe_str(|r| &r.method)) {
        (Some(m), _) => m.into(),
        (None, Some(m)) => m.parse::<Method>().map_err(|e| anyhow!("recipe: {e}"))?,
        (None, None) => Method::Mirror,
    };
    let preset = match (args.preset, from_recipe_str(|r| &r.preset)) {
        (Some(p), _) => p.into(),
        (None, Some(p)) => p
            .parse::<MirrorPreset>()
            .map_err(|e| anyhow!("recipe: {e}"))?,
        (None, None) => MirrorPreset::Recommended,
    };
    let source = args
        .source
        .clone()
        .or_else(|| from_recipe_str(|r| &r.source_prompt).map(String::from));
    let target = args
        .target
        .clone()
        .or_else(|| from_recipe_str(|r| &r.target_prompt).map(String::from));
    let source = source.ok_or_else(|| anyhow!("--source is required (what the image shows)"))?;
    let target =
        target.ok_or_else(|| anyhow!("--target is required (what the image should become)"))?;
    let defaults = match preset {
        MirrorPreset::Recommended => MirrorSettings::recommended_by(recommended),
        MirrorPreset::Authors => MirrorSettings::with_preset(preset),
    };
    let default_direction = match recommended.direction {
        Some(RecommendedDirection::Prompt) => DirectionRecipe::Prompt,
        _ => DirectionRecipe::Templates {
            pairs: DirectionRecipe::default_pairs(),
        },
    };
    let direction = match (&args.direction, &args.sentences) {
        (_, Some(files)) => {
            let [src, tgt] = files.as_slice() else {
                bail!("--sentences takes two files")
            };
            DirectionRecipe::Sentences {
                source: read_sentences(src)?,
                target: read_sentences(tgt)?,
            }
        }
        (Some(d), None) => match d.as_str() {
            "templates" => DirectionRecipe::Templates {
                pairs: DirectionRecipe::default_pairs(),
            },
            "prompt" => DirectionRecipe::Prompt,
            file => DirectionRecipe::File(PathBuf::from(file)),
        },
        (None, None) => match r.and_then(|r| r.extra.get("direction")) {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| anyhow!("recipe: field `extra.direction`: {e}"))?,
            None => default_direction,
        },
    };
    let wants_ddim_files = args.ddim_out.is_some()
        || args.ddim_reconstruction.is_some()
        || args.ddim_translation.is_some();
    if args.no_ddim && wants_ddim_files && method != Method::Ddim {
        bail!("--no-ddim contradicts the DDIM outputs asked for");
    }
    let recipe_ddim = r
        .and_then(|r| r.extra.get("compare_ddim"))
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let size = match (args.size, r) {
        (Some(Size(w, h)), _) => Some((w, h)),
        (None, Some(r)) if r.width > 0 && r.height > 0 => Some((r.width, r.height)),
        _ => None,
    };
    Ok(Plan {
        method,
        preset,
        source,
        target,
        steps: args
            .steps
            .or(r.map(|r| r.steps).filter(|&s| s > 0))
            .or(recommended.steps)
            .unwrap_or(50),
        seed: args.seed.or(r.map(|r| r.seed)).unwrap_or(0),
        strength: args
            .strength
            .or(r.map(|r| r.edit_strength))
            .or(recommended.edit_strength)
            .unwrap_or(1.0),
        guidance: args
            .guidance
            .or(r.map(|r| r.guidance_scale))
            .unwrap_or(defaults.guidance_scale),
        xa_guidance: args
            .xa_guidance
            .or(r.map(|r| r.xa_guidance))
            .unwrap_or(defaults.xa_guidance),
        redescribe_iters: args
            .redescribe_iters
            .or(r.map(|r| r.redescription_iterations))
            .unwrap_or(defaults.redescribe.iterations),
        redescribe_lr: args
            .redescribe_lr
            .or(r.map(|r| r.redescription_lr))
            .unwrap_or(defaults.redescribe.lr),
        resize: args
            .resize
            .map(ResizePolicy::from)
            .or(r.map(|r| r.resize))
            .unwrap_or_default(),
        size,
        compare_ddim: !args.no_ddim && (recipe_ddim || wants_ddim_files),
        direction,
        recipe,
    })
}

/// Non-empty lines, `#` comments skipped.
fn read_sentences(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if lines.is_empty() {
        bail!("{}: no sentences", path.display());
    }
    Ok(lines)
}

struct OutputPaths {
    out: PathBuf,
    reconstruction: Option<PathBuf>,
    ddim_reconstruction: Option<PathBuf>,
    ddim_translation: Option<PathBuf>,
    comparison: Option<PathBuf>,
    dump: Option<PathBuf>,
}

impl OutputPaths {
    fn from_args(args: &TranslateArgs) -> Self {
        let ddim = args.ddim_out.as_deref().unwrap_or(&[]);
        Self {
            out: args.out.clone(),
            reconstruction: args.reconstruction.clone(),
            ddim_reconstruction: ddim
                .first()
                .cloned()
                .or_else(|| args.ddim_reconstruction.clone()),
            ddim_translation: ddim
                .get(1)
                .cloned()
                .or_else(|| args.ddim_translation.clone()),
            comparison: args.comparison.clone(),
            dump: args.dump.clone(),
        }
    }

    fn all(&self) -> Vec<&Path> {
        let mut v = vec![self.out.as_path()];
        for p in [
            &self.reconstruction,
            &self.ddim_reconstruction,
            &self.ddim_translation,
            &self.comparison,
            &self.dump,
        ]
        .into_iter()
        .flatten()
        {
            v.push(p);
        }
        v
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "the command's stages in order; to be split with Recipe::from_request (issue 18)"
)]
pub fn run(args: &TranslateArgs) -> Result<()> {
    let model_path = match &args.model {
        Some(path) => path.clone(),
        None => default_model_path()?,
    };
    let notes = ModelNotes::for_model(&model_path)?;
    let plan = plan(args, &notes.recommended)?;
    let outputs = OutputPaths::from_args(args);
    for path in outputs.all() {
        check_writable(path)?;
    }
    let loaded = load_image(&args.image, &ImageLimits::default())?;

    let sd = args
        .compute
        .load_model(&model_path, args.configs.as_deref())?;
    eprintln!(
        "model: {} ({}, {})",
        sd.info.name,
        sd.info.kind,
        describe_compute(&sd)
    );
    sd.check_known_words(&[&plan.source, &plan.target])?;
    if plan.preset == MirrorPreset::Recommended && !notes.recommended.is_empty() {
        eprintln!(
            "settings: the model recommends {} (flags still win)",
            notes.recommended.describe()
        );
    }
    if let Some(r) = &plan.recipe {
        if !r.model_hash.is_empty() && r.model_hash != sd.info.fingerprint {
            eprintln!("note: the recipe was made with another model ({})", r.model);
        }
        if !r.image_hash.is_empty() && r.image_hash != loaded.content_hash {
            eprintln!("note: the image differs from the one the recipe was made from");
        }
    }
    let side = sd.default_image_side() as u32;
    let size = processing_size(
        loaded.original_size,
        plan.size,
        plan.resize,
        side,
        sd.size_multiple() as u32,
    )?;
    eprintln!(
        "image: {}",
        describe_resize(loaded.original_size, size, plan.resize)
    );
    let image = resize(&loaded.rgb, size, plan.resize);

    let mut req = TranslateRequest::new(image.clone(), &plan.source, &plan.target);
    req.method = plan.method;
    req.steps = plan.steps;
    req.seed = plan.seed;
    req.edit_strength = plan.strength;
    req.mirror = match plan.preset {
        MirrorPreset::Recommended => MirrorSettings::recommended_by(&notes.recommended),
        MirrorPreset::Authors => MirrorSettings::with_preset(plan.preset),
    };
    req.mirror.guidance_scale = plan.guidance;
    req.mirror.xa_guidance = plan.xa_guidance;
    req.mirror.redescribe.iterations = plan.redescribe_iters;
    req.mirror.redescribe.lr = plan.redescribe_lr;
    req.direction = plan.direction.choice();
    req.compare_ddim = plan.compare_ddim;
    req.use_cache = !args.no_cache;
    req.record_dump = outputs.dump.is_some();
    req.vae_tiles = args
        .vae_tiles
        .or(plan.recipe.as_ref().map(Recipe::vae_tiles))
        .unwrap_or_default();
    let cache_dir = if args.no_cache {
        None
    } else {
        InversionCache::default_dir()
    };
    let model_name = sd.info.name.clone();
    let model_hash = sd.info.fingerprint.clone();
    let mut session = Session::new(sd, cache_dir);

    let cancel = CancelToken::new();
    interrupt::install(&cancel);
    let mut progress = Progress::new();
    let outcome = session.translate(&req, &cancel, &mut |e| progress.handle(e));
    progress.finish();
    let outcome = outcome?;
    if outcome.cancelled {
        eprintln!("stopped after {}/{} steps", outcome.steps_done, req.steps);
        return Err(Cancelled.into());
    }

    let mut extra = serde_json::Map::new();
    extra.insert("direction".into(), serde_json::to_value(&plan.direction)?);
    extra.insert("compare_ddim".into(), plan.compare_ddim.into());
    let recipe = Recipe {
        version: RECIPE_VERSION,
        method: plan.method.name().to_string(),
        preset: plan.preset.to_string(),
        source_prompt: plan.source.clone(),
        target_prompt: plan.target.clone(),
        steps: plan.steps,
        seed: plan.seed,
        edit_strength: plan.strength,
        guidance_scale: plan.guidance,
        xa_guidance: plan.xa_guidance,
        redescription_iterations: plan.redescribe_iters,
        redescription_lr: plan.redescribe_lr,
        resize: plan.resize,
        width: size.0,
        height: size.1,
        model: model_name,
        model_hash,
        image_hash: loaded.content_hash.clone(),
        vae_tiles_used: Some(outcome.vae_tiles.used),
        extra,
    };

    let images = &outcome.images;
    // `keep` delivers at the photo's own size; the other policies at the processing size.
    let delivered = (plan.resize, loaded.original_size);
    let mut wrote = Vec::new();
    if let Some(path) = &outputs.dump {
        let metadata = HashMap::from([
            ("format".to_string(), "mirror-dump 1".to_string()),
            ("method".to_string(), plan.method.name().to_string()),
            ("preset".to_string(), plan.preset.to_string()),
            ("steps".to_string(), plan.steps.to_string()),
        ]);
        write_dump(path, &outcome.dump, metadata)?;
        wrote.push(path.clone());
    }
    let named = [
        (
            &outputs.reconstruction,
            &images.reconstruction,
            "reconstruction",
        ),
        (
            &outputs.ddim_reconstruction,
            &images.ddim_reconstruction,
            "DDIM reconstruction",
        ),
        (
            &outputs.ddim_translation,
            &images.ddim_translation,
            "DDIM translation",
        ),
    ];
    for (path, image, what) in named {
        if let Some(path) = path {
            let t = image
                .as_ref()
                .ok_or_else(|| anyhow!("the run produced no {what}"))?;
            save_tensor_png(t, &recipe, delivered, path)?;
            wrote.push(path.clone());
        }
    }
    if let Some(path) = &outputs.comparison {
        save_comparison(
            &comparison_tiles(&image, plan.method, &outcome)?,
            &recipe,
            path,
        )?;
        wrote.push(path.clone());
    }
    let translation = images
        .translation
        .as_ref()
        .ok_or_else(|| anyhow!("the run produced no translation"))?;
    save_tensor_png(translation, &recipe, delivered, &outputs.out)?;
    wrote.push(outputs.out.clone());

    let phrase = outcome
        .edit_phrase
        .as_ref()
        .map(|(s, t)| format!(" (edit \"{s}\" → \"{t}\")"))
        .unwrap_or_default();
    let reused = if outcome.reused_inversion {
        ", cached inversion"
    } else {
        ""
    };
    eprintln!(
        "{} in {:.1} s{phrase}{reused}",
        plan.method, outcome.seconds
    );
    for path in wrote {
        println!("wrote {}", path.display());
    }
    Ok(())
}
