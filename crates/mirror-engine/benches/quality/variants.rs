//! Every method and variant Mirror offers, as the requests the benchmark sends.

use mirror_engine::demo;
use mirror_engine::methods::mask::{EditMask, MaskFinder};
use mirror_engine::methods::mirror::{GuidanceBase, MirrorPreset, MirrorSettings};
use mirror_engine::model::StableDiffusion;
use mirror_engine::session::{
    DdimTranslation, DirectionChoice, InversionChoice, Method, TranslateRequest,
};

/// One column of the benchmark: a method with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// MirrorDiffusion, recommended preset with the model's recommended values.
    Recommended,
    /// Recommended with prompt redescription at Mirror's default iterations and the exact
    /// mirror.
    Redescribed,
    /// Recommended with the paper's reconstruction: prompt redescription alone, no exact
    /// mirror.
    Paper,
    /// Recommended with the exact mirror and no redescription (0 iterations).
    ExactFast,
    /// Recommended, confined to the mask found from the words' attention.
    Masked,
    /// Recommended, confined to DiffEdit's mask.
    DiffEditMasked,
    /// MirrorDiffusion, the authors' preset (the released code's values and inversion).
    Authors,
    /// Plain DDIM: word-swap sampling from the shared (regularised) inversion.
    Ddim,
    /// pix2pix-zero.
    Pix2PixZero,
}

impl Variant {
    pub const ALL: [Variant; 9] = [
        Variant::Recommended,
        Variant::Redescribed,
        Variant::Paper,
        Variant::ExactFast,
        Variant::Masked,
        Variant::DiffEditMasked,
        Variant::Ddim,
        Variant::Pix2PixZero,
        Variant::Authors,
    ];

    /// The name `--methods` takes and the CSVs write.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Recommended => "recommended",
            Variant::Redescribed => "redescribed",
            Variant::Paper => "paper",
            Variant::ExactFast => "exact-fast",
            Variant::Masked => "masked",
            Variant::DiffEditMasked => "diffedit-masked",
            Variant::Authors => "authors",
            Variant::Ddim => "ddim",
            Variant::Pix2PixZero => "pix2pix-zero",
        }
    }

    /// The name the markdown table shows.
    pub fn title(self) -> &'static str {
        match self {
            Variant::Recommended => "MirrorDiffusion recommended",
            Variant::Redescribed => "recommended + redescription",
            Variant::Paper => "recommended, paper's reconstruction",
            Variant::ExactFast => "exact mirror, no redescription",
            Variant::Masked => "recommended + mask from the words' attention",
            Variant::DiffEditMasked => "recommended + DiffEdit mask",
            Variant::Authors => "MirrorDiffusion authors' preset",
            Variant::Ddim => "plain DDIM (word swap)",
            Variant::Pix2PixZero => "pix2pix-zero",
        }
    }

    /// `--methods a,b,…` (names as [`Variant::name`]; "all" for every one).
    pub fn parse_list(list: &str) -> Vec<Variant> {
        if list == "all" {
            return Variant::ALL.to_vec();
        }
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                Variant::ALL
                    .into_iter()
                    .find(|v| v.name() == s)
                    .unwrap_or_else(|| {
                        let names: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
                        panic!("unknown method {s} (expected {})", names.join(", "))
                    })
            })
            .collect()
    }

    /// The request template of this variant (image and prompts are filled in per edit): the
    /// model's recommendations, then `--set`, then what makes the variant. Every variant but
    /// the authors' preset inverts the same way (consistent grid, posterior mean, noise
    /// regulariser), so they share one cached inversion per source; plain DDIM is asked to
    /// use that regularised inversion ([`InversionChoice::Regularized`]) for the same reason.
    pub fn request(self, sd: &StableDiffusion, sets: &[(String, String)]) -> TranslateRequest {
        let blank = image::RgbImage::new(demo::IMAGE_SIDE, demo::IMAGE_SIDE);
        let mut req = TranslateRequest::new(blank, "", "");
        req.use_cache = true;
        req.compare_ddim = false;
        if self == Variant::Authors {
            req.mirror = MirrorSettings::with_preset(MirrorPreset::Authors);
        }
        req.apply_recommended(sd.recommended());
        apply_sets(&mut req, sets);
        let iterations = MirrorSettings::default().redescribe.iterations;
        match self {
            Variant::Recommended | Variant::Authors => {}
            Variant::Redescribed => {
                req.mirror.exact_mirror = true;
                req.mirror.redescribe.iterations = iterations;
            }
            Variant::Paper => {
                req.mirror.exact_mirror = false;
                req.mirror.redescribe.iterations = iterations;
            }
            Variant::ExactFast => {
                req.mirror.exact_mirror = true;
                req.mirror.redescribe.iterations = 0;
            }
            Variant::Masked => req.mask = EditMask::Found(MaskFinder::Attention),
            Variant::DiffEditMasked => req.mask = EditMask::Found(MaskFinder::DiffEdit),
            Variant::Ddim => {
                req.method = Method::Ddim;
                req.inversion = InversionChoice::Regularized;
                // Its own guidance: retuning MirrorDiffusion's must not weaken the baseline.
                req.ddim_translation = DdimTranslation::WordSwap {
                    guidance: ddim_guidance(sets),
                };
            }
            Variant::Pix2PixZero => req.method = Method::Pix2PixZero,
        }
        req
    }
}

/// Plain DDIM's word-swap guidance: 2, its best measured trade-off on the demo model (seed
/// 91, 20 per kind: guidance 1 / 1.25 / 2 hit the target in 75 / 90 / 97 % and keep the other
/// words in 82 / 82 / 90 %); `--set ddim_guidance=G` for another.
fn ddim_guidance(sets: &[(String, String)]) -> f64 {
    sets.iter()
        .rev()
        .find(|(k, _)| k == "ddim_guidance")
        .map_or(2.0, |(_, v)| v.parse().expect("ddim_guidance=G: a number"))
}

/// `--set key=value` on a request.
fn apply_sets(req: &mut TranslateRequest, sets: &[(String, String)]) {
    for (k, v) in sets {
        let f = || -> f64 {
            v.parse::<f64>()
                .unwrap_or_else(|_| panic!("{k}={v}: not a number"))
        };
        match k.as_str() {
            "steps" => req.steps = f() as usize,
            "guidance_scale" => req.mirror.guidance_scale = f(),
            "xa_guidance" => req.mirror.xa_guidance = f(),
            "xa_guidance_until" => req.mirror.xa_guidance_until = f(),
            "ddim_guidance" => {} // read by the plain DDIM variant
            "edit_scale" => req.mirror.edit_scale = f(),
            "ramp_total" => req.mirror.ramp_total = f(),
            "edit_strength" => req.edit_strength = f(),
            "exact_mirror" => req.mirror.exact_mirror = f() != 0.0,
            "redescribe_iterations" => req.mirror.redescribe.iterations = f() as usize,
            "guidance_base" => {
                req.mirror.guidance_base = match v.as_str() {
                    "empty" => GuidanceBase::EmptyPrompt,
                    "description" => GuidanceBase::Description,
                    _ => panic!("guidance_base=empty|description"),
                }
            }
            "mask_threshold" => req.mask_settings.attention.threshold = f(),
            "latent_blend_until" => req.mask_settings.latent_blend_until = f(),
            "inject_until" => req.mirror.inject_until = f(),
            "mask_strength" => req.mask_settings.attention.strength = f(),
            "mask_draws" => req.mask_settings.attention.draws = f() as usize,
            "direction" if v == "prompt" => req.direction = DirectionChoice::PromptDifference,
            // The model's own captions (its `sentence_templates`) when it has them.
            "direction" if v == "templates" => req.direction = DirectionChoice::default(),
            other => panic!("unknown setting {other}"),
        }
    }
}
