//! Whole runs through `Session::translate` on the tiny model: the mirror effect, branch
//! identity, cancellation, invert-once-edit-many, determinism.

mod common;

use candle_core::{Device, Tensor};
use common::Fixtures;
use mirror_diffusion::engine::imageio::{ImageLimits, load_image};
use mirror_diffusion::engine::methods::mirror::MirrorPreset;
use mirror_diffusion::engine::model::StableDiffusion;
use mirror_diffusion::engine::pipeline::{Branch, CancelToken, Event};
use mirror_diffusion::engine::session::{DirectionChoice, Method, Session, TranslateRequest};

fn session() -> (Fixtures, Session) {
    let fx = Fixtures::load();
    let sd = StableDiffusion::load(&fx.model_dir(), &Device::Cpu).unwrap();
    (fx, Session::new(sd, None))
}

fn request(fx: &Fixtures, target: &str, steps: usize) -> TranslateRequest {
    let image = load_image(&fx.root.join("test_image.png"), &ImageLimits::default()).unwrap();
    let mut req = TranslateRequest::new(image.rgb, "a photo of a cat", target);
    req.steps = steps;
    req.direction = DirectionChoice::Templates { pairs: 64 };
    req
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn errors(reports: &[mirror_diffusion::engine::pipeline::StepReport], branch: Branch) -> Vec<f64> {
    reports
        .iter()
        .map(|r| {
            r.branches
                .iter()
                .find(|b| b.branch == branch)
                .unwrap()
                .mirror_error
                .unwrap()
        })
        .collect()
}

/// What the method exists for: the redescribed reconstruction stays closer to the inversion
/// trajectory than plain DDIM from the same z_N, at every step.
#[test]
fn mirror_reconstruction_tracks_the_inversion_better_than_ddim() {
    let (fx, mut s) = session();
    let mut req = request(&fx, "a photo of a dog", 10);
    req.use_cache = false;
    let out = s.translate(&req, &CancelToken::new(), &mut |_| {}).unwrap();
    assert!(!out.cancelled);
    let mirror = errors(&out.reports, Branch::MirrorReconstruction);
    let ddim = errors(&out.reports, Branch::DdimReconstruction);
    eprintln!("mirror error per step {mirror:.4?}\nDDIM error per step   {ddim:.4?}");
    for (i, (m, d)) in mirror.iter().zip(&ddim).enumerate() {
        assert!(m < d, "step {i}: mirror error {m} not below DDIM's {d}");
    }
    for image in [
        &out.images.translation,
        &out.images.reconstruction,
        &out.images.ddim_reconstruction,
        &out.images.ddim_translation,
    ] {
        let image = image.as_ref().expect("every branch decoded");
        assert_eq!(image.dims(), out.source.dims());
    }
}

/// With Δc = 0 and no attention guidance, the translation branch is the reconstruction.
#[test]
fn translation_equals_reconstruction_without_direction_and_guidance() {
    let (fx, mut s) = session();
    for preset in [MirrorPreset::Recommended, MirrorPreset::Authors] {
        let mut req = request(&fx, "a photo of a dog", 4);
        req.mirror.preset = preset;
        req.edit_strength = 0.0;
        req.mirror.xa_guidance = 0.0;
        req.compare_ddim = false;
        req.use_cache = false;
        let out = s.translate(&req, &CancelToken::new(), &mut |_| {}).unwrap();
        let latent = |b: Branch| out.latents.iter().find(|(x, _)| *x == b).unwrap().1.clone();
        let d = max_diff(
            &latent(Branch::MirrorTranslation),
            &latent(Branch::MirrorReconstruction),
        );
        assert!(
            d < 1e-4,
            "{preset}: translation differs from reconstruction by {d}"
        );
    }
}

#[test]
fn cancel_returns_what_it_has_and_keeps_the_cache_valid() {
    let (fx, mut s) = session();
    let req = request(&fx, "a photo of a dog", 6);
    let cancel = CancelToken::new();
    let mut steps_seen = 0;
    let out = s
        .translate(&req, &cancel, &mut |e| {
            if let Event::Step(r) = e {
                steps_seen = r.step + 1;
                if r.step == 1 {
                    cancel.cancel();
                }
            }
        })
        .unwrap();
    assert!(out.cancelled);
    assert_eq!(out.steps_done, 2);
    assert_eq!(steps_seen, 2);
    assert!(
        out.latents
            .iter()
            .any(|(b, _)| *b == Branch::MirrorTranslation),
        "last latents returned"
    );
    assert!(
        out.images.translation.is_none(),
        "nothing decoded after a cancel"
    );
    // The inversion finished before the cancel: the next run reuses it.
    assert!(s.has_cached_inversion(&req));
    let again = s.translate(&req, &CancelToken::new(), &mut |_| {}).unwrap();
    assert!(again.reused_inversion && !again.reused_reconstruction && !again.cancelled);
}

/// A re-edit with a new target reuses inversion and reconstruction and gives the same result
/// as a fresh run.
#[test]
fn re_edit_reuses_the_cache_and_matches_a_fresh_run() {
    let (fx, mut s) = session();
    let first = s
        .translate(
            &request(&fx, "a photo of a dog", 4),
            &CancelToken::new(),
            &mut |_| {},
        )
        .unwrap();
    assert!(!first.reused_inversion);
    let mut notes = Vec::new();
    let req = request(&fx, "a photo of a tiger", 4);
    let re_edit = s
        .translate(&req, &CancelToken::new(), &mut |e| {
            if let Event::Note(n) = e {
                notes.push(n);
            }
        })
        .unwrap();
    assert!(re_edit.reused_inversion && re_edit.reused_reconstruction);
    assert!(
        notes.iter().any(|n| n.contains("cached inversion")),
        "{notes:?}"
    );
    let mut fresh_req = req.clone();
    fresh_req.use_cache = false;
    let fresh = s
        .translate(&fresh_req, &CancelToken::new(), &mut |_| {})
        .unwrap();
    let (a, b) = (
        re_edit.images.translation.unwrap(),
        fresh.images.translation.unwrap(),
    );
    assert_eq!(max_diff(&a, &b), 0.0, "re-edit differs from a fresh run");
}

#[test]
fn runs_are_deterministic_and_the_disk_cache_survives_a_new_session() {
    let fx = Fixtures::load();
    let dir = std::env::temp_dir().join(format!("mirror-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let load = || {
        Session::new(
            StableDiffusion::load(&fx.model_dir(), &Device::Cpu).unwrap(),
            Some(dir.clone()),
        )
    };
    let mut req = request(&fx, "a photo of a dog", 3);
    req.method = Method::Pix2PixZero;
    req.mirror.preset = MirrorPreset::Authors;
    req.seed = 7;
    let a = load()
        .translate(&req, &CancelToken::new(), &mut |_| {})
        .unwrap();
    let b = load()
        .translate(&req, &CancelToken::new(), &mut |_| {})
        .unwrap();
    assert!(
        !a.reused_inversion && b.reused_inversion,
        "second session reads the disk cache"
    );
    assert_eq!(
        max_diff(
            &a.images.translation.unwrap(),
            &b.images.translation.unwrap()
        ),
        0.0
    );
    req.method = Method::Ddim;
    req.use_cache = false;
    let c = load()
        .translate(&req, &CancelToken::new(), &mut |_| {})
        .unwrap();
    let d = load()
        .translate(&req, &CancelToken::new(), &mut |_| {})
        .unwrap();
    assert_eq!(
        max_diff(
            &c.images.translation.unwrap(),
            &d.images.translation.unwrap()
        ),
        0.0
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn step_events_carry_previews_attention_and_dumps() {
    let (fx, mut s) = session();
    let mut req = request(&fx, "a photo of a dog", 3);
    req.attention_maps = true;
    req.decode_every = Some(2);
    req.record_dump = true;
    req.use_cache = false;
    let mut phases = Vec::new();
    let out = s
        .translate(&req, &CancelToken::new(), &mut |e| {
            if let Event::Phase { phase, .. } = e {
                phases.push(phase)
            }
        })
        .unwrap();
    use mirror_diffusion::engine::pipeline::Phase::*;
    assert_eq!(phases, vec![Encode, Invert, Redescribe, Decode]);
    let last = out.reports.last().unwrap();
    assert_eq!(last.branches.len(), 4);
    for b in &last.branches {
        let maps = b.attention.as_ref().expect("heat maps");
        assert!(maps.tokens >= 7, "BOS + words + EOS");
        let m = maps.token_map(5, None, 16, 16);
        assert!(m.iter().any(|&v| v > 0.0));
        assert!(b.decoded.is_some(), "decoded on the last step");
    }
    assert!(out.reports[0].branches[0].decoded.is_none());
    assert_eq!(
        last.redescription.as_ref().unwrap().losses.len(),
        req.mirror.redescribe.iterations
    );
    let names: Vec<&str> = out.dump.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "inversion.latents",
        "mirror.embeddings",
        "mirror.rec_latents",
        "mirror.edit_latents",
        "mirror.inner_losses",
        "ddim.rec_latents",
    ] {
        assert!(names.contains(&want), "dump lacks {want}: {names:?}");
    }
    let emb = &out
        .dump
        .iter()
        .find(|(n, _)| n == "mirror.embeddings")
        .unwrap()
        .1;
    assert_eq!(emb.dim(0).unwrap(), 3);
    assert_eq!(
        out.edit_phrase,
        Some(("cat".to_string(), "dog".to_string()))
    );
}
