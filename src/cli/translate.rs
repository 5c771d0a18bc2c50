//! `translate`: one image from `--source` to `--target`, with optional reconstruction, plain
//! DDIM outputs, comparison sheet, per-step dump, and replay of a recipe.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};

use super::device::{DeviceArgs, describe as describe_compute};
use super::dump::{DUMP_HELP, write_dump};
use super::outputs::{check_writable, comparison_tiles, save_comparison, save_tensor_png};
use super::progress::Progress;
use super::{Cancelled, default_model_path, interrupt};
use crate::folder_run::PhotoEdit;
use image::RgbImage;
use mirror_engine::imageio::{ImageLimits, ResizePolicy, describe_resize, load_image};
use mirror_engine::loader::{LoraSpec, ModelNotes, Recommended};
use mirror_engine::methods::mask::{EditMask, MaskFinder};
use mirror_engine::methods::mirror::{GuidanceBase, MirrorPreset, MirrorSettings};
use mirror_engine::pipeline::CancelToken;
use mirror_engine::recipe::{Recipe, RecipeLora, read_recipe};
use mirror_engine::session::{
    DirectionChoice, InversionCache, Method, Session, TranslateOutcome, TranslateRequest,
};
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

/// `FILE[:STRENGTH]`: a strength after the last colon when it reads as a number.
pub(super) fn parse_lora(s: &str) -> std::result::Result<LoraSpec, String> {
    let (path, strength) = match s.rsplit_once(':') {
        Some((path, n)) if !path.is_empty() => match n.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => (path, v),
            Ok(_) => return Err(format!("`{n}` is not a usable strength")),
            Err(_) => (s, 1.0),
        },
        _ => (s, 1.0),
    };
    Ok(LoraSpec {
        path: PathBuf::from(path),
        strength,
    })
}

fn parse_guidance_base(s: &str) -> std::result::Result<GuidanceBase, String> {
    s.parse()
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
    #[arg(long, value_name = "ALPHA", alias = "strength")]
    pub edit_strength: Option<f64>,
    /// How strongly the target prompt is followed [default: the model's recommended, else 5].
    #[arg(long, value_name = "G", alias = "guidance")]
    pub guidance_scale: Option<f64>,
    /// How strongly the photo's layout is held in place while editing [default: the model's
    /// recommended, else 0.1].
    #[arg(long, value_name = "E")]
    pub xa_guidance: Option<f64>,
    /// MirrorDiffusion: the share of the steps, from the first, that get that guidance (0–1)
    /// [default: the model's recommended, else 1].
    #[arg(long, value_name = "SHARE")]
    pub xa_guidance_until: Option<f64>,
    /// MirrorDiffusion: refinement iterations of the photo's description per step [default:
    /// the model's recommended, else 10].
    #[arg(long, value_name = "K", alias = "redescribe-iters")]
    pub redescribe_iterations: Option<usize>,
    /// MirrorDiffusion: step size of that refinement [default: the model's recommended, else
    /// 0.01].
    #[arg(long, value_name = "LR")]
    pub redescribe_lr: Option<f64>,
    /// MirrorDiffusion: put the reconstruction on the photo's inversion after every step, so it
    /// mirrors the photo exactly (with `--redescribe-iterations 0` about twice as fast).
    #[arg(long)]
    pub exact_mirror: bool,
    /// MirrorDiffusion: what the guidance pushes the translation away from: `description`
    /// (the photo's refined description, the paper's) or `empty` (the empty prompt, as plain
    /// DDIM: every word of the target is followed, the unchanged ones too) [default: the
    /// model's recommended, else description].
    #[arg(long, value_name = "description|empty", value_parser = parse_guidance_base)]
    pub guidance_base: Option<GuidanceBase>,
    /// MirrorDiffusion: the share of the steps, from the first, on which the translation reads
    /// its words with the reconstruction's attention maps, so the photo's layout is kept while
    /// it forms (0–1) [default: the model's recommended, else 0].
    #[arg(long, value_name = "SHARE")]
    pub inject_until: Option<f64>,
    /// With `--mask`: the share of the steps, from the first, on which the edit is held to the
    /// photo outside the mask while it forms (0–1; the result shows the photo outside the mask
    /// in any case) [default: the model's recommended, else 1].
    #[arg(long, value_name = "SHARE")]
    pub latent_blend_until: Option<f64>,
    /// How the image is brought to the model's size [default: keep].
    #[arg(long, value_enum)]
    pub resize: Option<ResizeArg>,
    /// Processing size (multiples of the model's size factor) [default: the model's native
    /// area at the image's shape with `--resize keep`, else the model's square].
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub size: Option<Size>,
    /// Where the edit may change the picture: `auto` (found from the edit: where the words
    /// that change attend; `attention` says the same, `diffedit` finds it where the noise
    /// predictions under the two prompts differ), or a mask image painted on the photo
    /// (white = may change, grey = partly; any size) [default: the recipe's, else the whole
    /// picture].
    #[arg(long, value_name = "auto|attention|diffedit|MASK.png")]
    pub mask: Option<String>,
    /// A LoRA to merge into the model (kohya/A1111 or diffusers/PEFT .safetensors), with its
    /// strength [default: 1]; repeat for several.
    #[arg(long, value_name = "FILE[:STRENGTH]", value_parser = parse_lora)]
    pub lora: Vec<LoraSpec>,
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

/// The run's settings once the model's recommendations, the recipe (if any) and the flags are
/// merged, in that order (each later one wins).
#[derive(Debug, Clone)]
struct Plan {
    /// Every run setting; its image is filled in once the photo is loaded and resized.
    request: TranslateRequest,
    resize: ResizePolicy,
    size: Option<(u32, u32)>,
    recipe: Option<Recipe>,
}

/// `recommended`: the model's recommended settings (`mirror.json`); they replace Mirror's own
/// defaults (MirrorDiffusion's only with the recommended preset), never a recipe or a flag.
fn plan(args: &TranslateArgs, recommended: &Recommended) -> Result<Plan> {
    let recipe = match &args.recipe {
        Some(path) => Some(
            read_recipe(path)?
                .ok_or_else(|| anyhow!("{}: holds no Mirror recipe", path.display()))?,
        ),
        None => None,
    };
    let r = recipe.as_ref();
    let from_recipe = |f: fn(&Recipe) -> &str| r.map(f).filter(|s| !s.is_empty());
    let source = args
        .source
        .clone()
        .or_else(|| from_recipe(|r| &r.source_prompt).map(String::from))
        .ok_or_else(|| anyhow!("--source is required (what the image shows)"))?;
    let target = args
        .target
        .clone()
        .or_else(|| from_recipe(|r| &r.target_prompt).map(String::from))
        .ok_or_else(|| anyhow!("--target is required (what the image should become)"))?;
    let preset_flag = args.preset.map(MirrorPreset::from);
    let preset = match (preset_flag, from_recipe(|r| &r.preset)) {
        (Some(p), _) => p,
        (None, Some(p)) => p.parse().map_err(|e| anyhow!("recipe: {e}"))?,
        (None, None) => MirrorPreset::Recommended,
    };

    let mut req = TranslateRequest::new(RgbImage::new(0, 0), &source, &target);
    req.mirror = MirrorSettings::with_preset(preset);
    req.apply_recommended(recommended);
    if let Some(r) = r {
        r.apply_to(&mut req)?;
        req.source_prompt.clone_from(&source);
        req.target_prompt.clone_from(&target);
    }
    if let Some(p) = preset_flag.filter(|&p| p != req.mirror.preset) {
        let base = match p {
            MirrorPreset::Recommended => MirrorSettings::recommended_by(recommended),
            MirrorPreset::Authors => MirrorSettings::with_preset(p),
        };
        req.mirror = req.mirror.keep_knobs_on(base);
    }
    apply_flags(args, &mut req)?;
    let size = match (args.size, r) {
        (Some(Size(w, h)), _) => Some((w, h)),
        (None, Some(r)) if r.width > 0 && r.height > 0 => Some((r.width, r.height)),
        _ => None,
    };
    Ok(Plan {
        request: req,
        resize: args
            .resize
            .map(ResizePolicy::from)
            .or(r.map(|r| r.resize))
            .unwrap_or_default(),
        size,
        recipe,
    })
}

/// The flags given explicitly, over whatever the request holds.
fn apply_flags(args: &TranslateArgs, req: &mut TranslateRequest) -> Result<()> {
    if let Some(m) = args.method {
        req.method = m.into();
    }
    if let Some(n) = args.steps {
        req.steps = n;
    }
    if let Some(s) = args.seed {
        req.seed = s;
    }
    if let Some(v) = args.edit_strength {
        req.edit_strength = v;
    }
    if let Some(v) = args.guidance_scale {
        req.mirror.guidance_scale = v;
    }
    if let Some(v) = args.xa_guidance {
        req.mirror.xa_guidance = v;
    }
    if let Some(v) = args.xa_guidance_until {
        req.mirror.xa_guidance_until = v;
    }
    if let Some(v) = args.redescribe_iterations {
        req.mirror.redescribe.iterations = v;
    }
    if let Some(v) = args.redescribe_lr {
        req.mirror.redescribe.lr = v;
    }
    if args.exact_mirror {
        req.mirror.exact_mirror = true;
    }
    if let Some(base) = args.guidance_base {
        req.mirror.guidance_base = base;
    }
    if let Some(v) = args.inject_until {
        req.mirror.inject_until = v;
    }
    if let Some(v) = args.latent_blend_until {
        req.mask_settings.latent_blend_until = v;
    }
    match (&args.direction, &args.sentences) {
        (_, Some(files)) => {
            let [src, tgt] = files.as_slice() else {
                bail!("--sentences takes two files")
            };
            req.direction = DirectionChoice::Sentences {
                source: read_sentences(src)?,
                target: read_sentences(tgt)?,
            };
        }
        (Some(d), None) => {
            req.direction = match d.as_str() {
                "templates" => DirectionChoice::default(),
                "prompt" => DirectionChoice::PromptDifference,
                file => DirectionChoice::File(PathBuf::from(file)),
            }
        }
        (None, None) => {}
    }
    let wants_ddim_files = args.ddim_out.is_some()
        || args.ddim_reconstruction.is_some()
        || args.ddim_translation.is_some();
    if args.no_ddim && wants_ddim_files && req.method != Method::Ddim {
        bail!("--no-ddim contradicts the DDIM outputs asked for");
    }
    req.compare_ddim = !args.no_ddim && (req.compare_ddim || wants_ddim_files);
    if let Some(t) = args.vae_tiles {
        req.vae_tiles = t;
    }
    match args.mask.as_deref() {
        None => {}
        Some("auto") => req.mask = EditMask::Found(MaskFinder::default()),
        Some(finder @ ("attention" | "diffedit")) => {
            req.mask = EditMask::Found(finder.parse().map_err(anyhow::Error::msg)?)
        }
        Some(path) => {
            let mask = load_image(Path::new(path), &ImageLimits::default())?;
            req.mask = EditMask::Given(image::DynamicImage::ImageRgb8(mask.rgb).to_luma8());
        }
    }
    req.use_cache = !args.no_cache;
    req.record_dump = args.dump.is_some();
    Ok(())
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

/// What every translate run starts from: the model (`--model`, else the demo), its notes, and
/// the merged settings (defaults, the model's recommendations, a recipe, the flags).
pub(super) fn prepare(args: &TranslateArgs) -> Result<(PathBuf, ModelNotes, RequestPlan)> {
    let model_path = match &args.model {
        Some(path) => path.clone(),
        None => default_model_path()?,
    };
    let notes = ModelNotes::for_model(&model_path)?;
    let plan = plan(args, &notes.recommended)?.request_plan();
    Ok((model_path, notes, plan))
}

/// One photo (`--image FILE`); a folder is `folder::run`.
pub fn run(args: &TranslateArgs) -> Result<()> {
    let (model_path, notes, plan) = prepare(args)?;
    let outputs = OutputPaths::from_args(args);
    for path in outputs.all() {
        check_writable(path)?;
    }
    let loaded = load_image(&args.image, &ImageLimits::default())?;
    let mut session = open_session(args, &model_path, &notes, &plan)?;
    if let Some(r) = &plan.recipe
        && !r.image_hash.is_empty()
        && r.image_hash != loaded.content_hash
    {
        eprintln!("note: the image differs from the one the recipe was made from");
    }
    let req = plan.edit.request_for(session.model(), &loaded)?;
    eprintln!(
        "image: {}",
        describe_resize(
            loaded.original_size,
            req.image.dimensions(),
            plan.edit.resize
        )
    );
    let cancel = CancelToken::new();
    interrupt::install(&cancel);
    let outcome = translate_one(&mut session, &req, &cancel)?;
    let recipe = plan.edit.recipe(session.model(), &req, &loaded, &outcome);
    let delivered = (plan.edit.resize, loaded.original_size);
    let wrote = write_outputs(&outputs, &req, &outcome, &recipe, delivered)?;
    report_done(&req, &outcome, &wrote)?;
    Ok(())
}

impl Plan {
    /// What a run of one photo needs of the plan (a folder run shares it).
    fn request_plan(self) -> RequestPlan {
        RequestPlan {
            edit: PhotoEdit {
                request: self.request,
                resize: self.resize,
                size: self.size,
            },
            recipe: self.recipe,
        }
    }
}

/// The merged settings of a run, ready for any photo.
pub(super) struct RequestPlan {
    pub edit: PhotoEdit,
    pub recipe: Option<Recipe>,
}

/// Loads the model (saying which, where it computes and what it recommends), checks the
/// prompts' words and opens a session with the inversion cache unless `--no-cache`.
pub(super) fn open_session(
    args: &TranslateArgs,
    model_path: &Path,
    notes: &ModelNotes,
    plan: &RequestPlan,
) -> Result<Session> {
    let mut sd = args
        .compute
        .load_model(model_path, args.configs.as_deref())?;
    if !args.lora.is_empty() {
        for info in sd.set_loras(&args.lora)? {
            eprintln!(
                "lora: {} at strength {} ({} weights changed)",
                info.file_name, info.strength, info.matched_layers
            );
        }
    }
    eprintln!(
        "model: {} ({}, {})",
        sd.info.name,
        sd.info.kind,
        describe_compute(&sd)
    );
    let req = &plan.edit.request;
    sd.check_known_words(&[&req.source_prompt, &req.target_prompt])?;
    for (which, prompt) in [
        ("source", &req.source_prompt),
        ("target", &req.target_prompt),
    ] {
        if let Some(cut) = sd.tokenizer.truncation(prompt)? {
            eprintln!("note: the {which} prompt is longer than the model reads; it stops at {cut}");
        }
    }
    if req.mirror.preset == MirrorPreset::Recommended && !notes.recommended.is_empty() {
        eprintln!(
            "settings: the model recommends {} (flags still win)",
            notes.recommended.describe()
        );
    }
    if let Some(r) = &plan.recipe
        && !r.model_hash.is_empty()
        && r.model_hash != sd.info.fingerprint
    {
        eprintln!("note: the recipe was made with another model ({})", r.model);
    }
    if let Some(r) = &plan.recipe {
        let now: Vec<RecipeLora> = sd.loras.iter().map(RecipeLora::from).collect();
        if r.loras != now {
            let named: Vec<String> = (r.loras.iter())
                .map(|l| format!("{}:{}", l.file_name, l.strength))
                .collect();
            eprintln!(
                "note: the recipe was made with LoRAs [{}]; give the same with --lora to replay it",
                named.join(", ")
            );
        }
    }
    let cache_dir = if args.no_cache {
        None
    } else {
        InversionCache::default_dir()
    };
    Ok(Session::new(sd, cache_dir))
}

/// Runs `req` with a progress line; a cancelled run is the `Cancelled` error.
pub(super) fn translate_one(
    session: &mut Session,
    req: &TranslateRequest,
    cancel: &CancelToken,
) -> Result<TranslateOutcome> {
    let mut progress = Progress::new();
    let outcome = session.translate(req, cancel, &mut |e| progress.handle(e));
    progress.finish();
    let outcome = outcome?;
    if outcome.cancelled {
        eprintln!("stopped after {}/{} steps", outcome.steps_done, req.steps);
        return Err(Cancelled.into());
    }
    Ok(outcome)
}

/// The closing lines: what ran, how long, the mask's share, the files written.
fn report_done(
    req: &TranslateRequest,
    outcome: &TranslateOutcome,
    wrote: &[PathBuf],
) -> Result<()> {
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
    eprintln!("{} in {:.1} s{phrase}{reused}", req.method, outcome.seconds);
    if let Some(mask) = &outcome.mask {
        let share = mask.mean_all()?.to_scalar::<f32>()?;
        eprintln!(
            "mask: the edit could change {:.0} % of the picture",
            share * 100.0
        );
    }
    for path in wrote {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Writes every output asked for (each PNG with the recipe); `delivered` is the resize policy
/// and the photo's own size (`keep` delivers at that size). Returns the paths written.
fn write_outputs(
    outputs: &OutputPaths,
    req: &TranslateRequest,
    outcome: &TranslateOutcome,
    recipe: &Recipe,
    delivered: (ResizePolicy, (u32, u32)),
) -> Result<Vec<PathBuf>> {
    let images = &outcome.images;
    let mut wrote = Vec::new();
    if let Some(path) = &outputs.dump {
        let metadata = HashMap::from([
            ("format".to_string(), "mirror-dump 1".to_string()),
            ("method".to_string(), req.method.name().to_string()),
            ("preset".to_string(), req.mirror.preset.to_string()),
            ("steps".to_string(), req.steps.to_string()),
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
            save_tensor_png(t, recipe, delivered, path)?;
            wrote.push(path.clone());
        }
    }
    if let Some(path) = &outputs.comparison {
        save_comparison(
            &comparison_tiles(&req.image, req.method, outcome)?,
            recipe,
            path,
        )?;
        wrote.push(path.clone());
    }
    let translation = images
        .translation
        .as_ref()
        .ok_or_else(|| anyhow!("the run produced no translation"))?;
    save_tensor_png(translation, recipe, delivered, &outputs.out)?;
    wrote.push(outputs.out.clone());
    Ok(wrote)
}

#[cfg(test)]
#[path = "translate_recipe_tests.rs"]
mod recipe_tests;
