//! Whole runs through `Session::translate` on the fixture model: the mirror effect, branch
//! identity, cancellation, invert-once-edit-many, determinism, progress inside a step,
//! numerical guards. Model, image, prompts and sizes come from the fixture manifest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use common::{Fixtures, max_diff};
use mirror_engine::EngineError;
use mirror_engine::imageio::{ImageLimits, load_image};
use mirror_engine::methods::mirror::MirrorPreset;
use mirror_engine::model::StableDiffusion;
use mirror_engine::pipeline::{Branch, CancelToken, Event, StepWork};
use mirror_engine::session::{
    DirectionChoice, InversionChoice, Method, Session, TranslateOutcome, TranslateRequest,
};
use mirror_engine::threads;

fn session() -> (Fixtures, Session) {
    let fx = Fixtures::load();
    let sd = StableDiffusion::load(&fx.model_dir(), &common::test_device()).unwrap();
    (fx, Session::new(sd, None))
}

/// The caption the fixtures inverted with ("a photo of a cat").
fn caption(fx: &Fixtures) -> String {
    fx.settings("inversion")["prompt"]
        .as_str()
        .expect("inversion prompt")
        .to_string()
}

/// The caption with the fixtures' edit word swapped for `word` (None: the fixtures' target).
fn target(fx: &Fixtures, word: Option<&str>) -> String {
    let edit = fx.settings("edit_direction");
    let source = edit["source"].as_str().expect("edit source word");
    let word = word.unwrap_or_else(|| edit["target"].as_str().expect("edit target word"));
    let caption = caption(fx);
    assert!(caption.contains(source), "{caption:?} lacks {source:?}");
    caption.replace(source, word)
}

fn request(fx: &Fixtures, target: &str, steps: usize) -> TranslateRequest {
    let file = fx.fixture("vae")["png"]["test_image"]
        .as_str()
        .expect("test image in the manifest");
    let image = load_image(&fx.root.join(file), &ImageLimits::default()).unwrap();
    let mut req = TranslateRequest::new(image.rgb, &caption(fx), target);
    req.steps = steps;
    req.direction = DirectionChoice::Templates { pairs: 64 };
    req
}

/// The manifest's latent size (heat maps are drawn at it).
fn latent_hw(fx: &Fixtures) -> (usize, usize) {
    let hw = fx.manifest["latent_hw"].as_array().expect("latent_hw");
    (
        hw[0].as_u64().unwrap() as usize,
        hw[1].as_u64().unwrap() as usize,
    )
}

fn errors(reports: &[mirror_engine::pipeline::StepReport], branch: Branch) -> Vec<f64> {
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
    let mut req = request(&fx, &target(&fx, None), 10);
    req.use_cache = false;
    let out = s.translate(&req, &CancelToken::new(), &mut |_| {}).unwrap();
    assert!(!out.cancelled);
    let mirror = errors(&out.reports, Method::Mirror.reconstruction());
    let ddim = errors(&out.reports, Method::Ddim.reconstruction());
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
        let mut req = request(&fx, &target(&fx, None), 4);
        req.mirror.preset = preset;
        req.edit_strength = 0.0;
        req.mirror.xa_guidance = 0.0;
        req.compare_ddim = false;
        req.use_cache = false;
        let out = s.translate(&req, &CancelToken::new(), &mut |_| {}).unwrap();
        let latent = |b: Branch| out.latents.iter().find(|(x, _)| *x == b).unwrap().1.clone();
        let d = max_diff(
            &latent(Method::Mirror.translation()),
            &latent(Method::Mirror.reconstruction()),
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
    let req = request(&fx, &target(&fx, None), 6);
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
            .any(|(b, _)| *b == Method::Mirror.translation()),
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
            &request(&fx, &target(&fx, None), 4),
            &CancelToken::new(),
            &mut |_| {},
        )
        .unwrap();
    assert!(!first.reused_inversion);
    let mut notes = Vec::new();
    let req = request(&fx, &target(&fx, Some("tiger")), 4);
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
            StableDiffusion::load(&fx.model_dir(), &common::test_device()).unwrap(),
            Some(dir.clone()),
        )
    };
    let mut req = request(&fx, &target(&fx, None), 3);
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
    let mut req = request(&fx, &target(&fx, None), 3);
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
    use mirror_engine::pipeline::Phase::*;
    assert_eq!(phases, vec![Encode, Invert, Redescribe, Decode]);
    let last = out.reports.last().unwrap();
    assert_eq!(last.branches.len(), 4);
    let words = s
        .model()
        .tokenizer
        .encode_unpadded(&req.source_prompt)
        .unwrap()
        .len();
    let (h, w) = latent_hw(&fx);
    for b in &last.branches {
        let maps = b.attention.as_ref().expect("heat maps");
        assert!(maps.tokens >= words, "BOS + words + EOS");
        // The last word before EOS (the edited one in the fixtures' caption).
        let m = maps.token_map(words - 2, None, h, w);
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
    let edit = fx.settings("edit_direction");
    assert_eq!(
        out.edit_phrase,
        Some((
            edit["source"].as_str().unwrap().to_string(),
            edit["target"].as_str().unwrap().to_string()
        ))
    );
}

/// `StepWork` events of a run, grouped by step.
fn step_work(s: &mut Session, req: &TranslateRequest) -> (TranslateOutcome, Vec<Vec<StepWork>>) {
    let mut work: Vec<Vec<StepWork>> = vec![Vec::new(); req.steps];
    let out = s
        .translate(req, &CancelToken::new(), &mut |e| {
            if let Event::StepWork(w) = e {
                work[w.step].push(w);
            }
        })
        .unwrap();
    (out, work)
}

/// Inside every step the UNet-call count rises by one per event up to at most the expected
/// number; plain DDIM and pix2pix-zero take exactly that many, Mirror fewer only when
/// redescription stops early, and Mirror reports its redescription iterations.
#[test]
fn step_work_counts_unet_calls_inside_every_step() {
    let (fx, mut s) = session();
    for method in Method::ALL {
        let mut req = request(&fx, &target(&fx, None), 3);
        req.method = method;
        req.use_cache = false;
        let (out, work) = step_work(&mut s, &req);
        for (i, events) in work.iter().enumerate() {
            assert!(!events.is_empty(), "{method}: no StepWork in step {i}");
            let expected = events[0].unet_calls_expected;
            for (k, w) in events.iter().enumerate() {
                assert_eq!((w.step, w.steps), (i, req.steps), "{method}");
                assert_eq!(w.unet_calls, k + 1, "{method} step {i}: one event per call");
                assert_eq!(w.unet_calls_expected, expected, "{method} step {i}");
                assert!(w.unet_calls <= expected, "{method} step {i}: {w:?}");
            }
            let done = events.last().unwrap().unet_calls;
            let redescription: Vec<(usize, usize)> =
                events.iter().filter_map(|w| w.redescription).collect();
            match method {
                Method::Mirror => {
                    let iterations = req.mirror.redescribe.iterations;
                    let report = out.reports[i].redescription.as_ref().unwrap();
                    assert_eq!(redescription.len(), report.losses.len(), "step {i}");
                    for (k, &(done, max)) in redescription.iter().enumerate() {
                        assert_eq!((done, max), (k + 1, iterations), "step {i}");
                    }
                    assert_eq!(done, expected - (iterations - report.losses.len()));
                }
                _ => {
                    assert!(redescription.is_empty(), "{method} does not redescribe");
                    assert_eq!(done, expected, "{method} step {i}");
                }
            }
        }
    }
}

/// A Compare run: Mirror, then pix2pix-zero, then plain DDIM asked for the regularised
/// inversion, on one image. The second and third reuse the first's inversion and give exactly
/// what uncached runs give; plain DDIM with its default inversion does not share it.
#[test]
fn compare_runs_share_one_inversion() {
    let (fx, mut s) = session();
    let mut runs = Vec::new();
    for (method, inversion) in [
        (Method::Mirror, InversionChoice::MethodDefault),
        (Method::Pix2PixZero, InversionChoice::MethodDefault),
        (Method::Ddim, InversionChoice::Regularized),
    ] {
        let mut req = request(&fx, &target(&fx, None), 3);
        req.method = method;
        req.inversion = inversion;
        req.compare_ddim = false;
        runs.push(req);
    }
    for (k, req) in runs.iter().enumerate() {
        let cached = s.translate(req, &CancelToken::new(), &mut |_| {}).unwrap();
        assert_eq!(cached.reused_inversion, k > 0, "{}", req.method);
        let mut fresh_req = req.clone();
        fresh_req.use_cache = false;
        let fresh = s
            .translate(&fresh_req, &CancelToken::new(), &mut |_| {})
            .unwrap();
        let (a, b) = (
            cached.images.translation.unwrap(),
            fresh.images.translation.unwrap(),
        );
        assert_eq!(max_diff(&a, &b), 0.0, "{}: cached run differs", req.method);
    }
    let mut own = runs[2].clone();
    own.inversion = InversionChoice::MethodDefault;
    assert!(
        !s.has_cached_inversion(&own),
        "plain DDIM's own inversion has no regulariser"
    );
}

/// An edit strength so large that the direction overflows float32 (a finite number the
/// engine accepts): the translation turns NaN at step 1, the run fails with an error naming
/// the step and the translation, and the session runs the next request fine.
#[test]
fn a_step_that_overflows_names_the_step_and_branch() {
    let (fx, mut s) = session();
    let mut req = request(&fx, &target(&fx, None), 3);
    req.use_cache = false;
    req.compare_ddim = false;
    req.edit_strength = 1e300;
    let e = match s.translate(&req, &CancelToken::new(), &mut |_| {}) {
        Err(e) => e,
        Ok(out) => panic!("expected a non-finite step, ran {} steps", out.steps_done),
    };
    let text = e.to_string();
    match e {
        EngineError::StepNotFinite {
            step,
            steps,
            branch,
        } => assert_eq!((step, steps, branch), (1, 3, Method::Mirror.translation())),
        other => panic!("expected a non-finite step, got {other:?}"),
    }
    assert!(text.contains("step 1 of 3"), "{text}");
    assert!(text.contains("The translation"), "{text}");
    assert!(text.contains("strength"), "{text}");
    req.edit_strength = f64::NAN;
    assert!(matches!(
        s.translate(&req, &CancelToken::new(), &mut |_| {}),
        Err(EngineError::InvalidInput(_))
    ));
    req.edit_strength = 1.0;
    let out = s.translate(&req, &CancelToken::new(), &mut |_| {}).unwrap();
    assert!(!out.cancelled && out.images.translation.is_some());
}

/// The mask found without a run ("Fill from the edit") is the one a run with the automatic
/// mask uses, pixel for pixel at the photo's processing size, and another seed may find
/// another one only through its noise draws (same seed, same mask).
#[test]
fn the_mask_found_before_a_run_is_the_one_the_run_uses() {
    use mirror_engine::methods::mask::{EditMask, MaskFinder, mask_image};
    let (fx, mut s) = session();
    let mut req = request(&fx, &target(&fx, None), 2);
    req.mask = EditMask::Found(MaskFinder::default());
    req.compare_ddim = false;
    let cancel = CancelToken::new();
    let found = s.find_edit_mask(&req, &cancel).unwrap();
    assert_eq!(found.dimensions(), req.image.dimensions());
    assert_eq!(
        s.find_edit_mask(&req, &cancel).unwrap(),
        found,
        "seeded: the same mask twice"
    );
    let outcome = s.translate(&req, &cancel, &mut |_| {}).unwrap();
    let (w, h) = req.image.dimensions();
    let used = mask_image(outcome.mask.as_ref().expect("the run's mask"), w, h).unwrap();
    assert_eq!(used, found);
    // Asked for the whole picture, the request still gets the mask of its edit.
    req.mask = EditMask::Whole;
    assert_eq!(s.find_edit_mask(&req, &cancel).unwrap(), found);
}

/// Attention guidance on the first share of the steps only: the guided steps report a
/// guidance loss and two more UNet calls, the others none; with no guided step the run is
/// bit for bit the run with a zero guidance rate (a step of zero changes nothing).
#[test]
fn attention_guidance_stops_after_its_share_of_the_steps() {
    let (fx, mut s) = session();
    let mut req = request(&fx, &target(&fx, None), 4);
    req.compare_ddim = false;
    req.use_cache = false;
    req.mirror.redescribe.iterations = 0;
    req.mirror.xa_guidance_until = 0.5;
    let (half, work) = step_work(&mut s, &req);
    for (i, report) in half.reports.iter().enumerate() {
        let guided = i < 2;
        assert_eq!(report.guidance.is_some(), guided, "step {i}");
        let calls = work[i].last().unwrap().unet_calls;
        // Reconstruction and translation passes (2), plus the main guidance pass (and an
        // extra one where scheduled) on guided steps.
        assert_eq!(calls >= 3, guided, "step {i}: {calls} calls");
        assert!(guided || calls == 2, "step {i}: {calls} calls");
    }
    req.mirror.xa_guidance_until = 0.0;
    let none = s.translate(&req, &CancelToken::new(), &mut |_| {}).unwrap();
    assert!(none.reports.iter().all(|r| r.guidance.is_none()));
    req.mirror.xa_guidance_until = 1.0;
    req.mirror.xa_guidance = 0.0;
    let zero = s.translate(&req, &CancelToken::new(), &mut |_| {}).unwrap();
    assert_eq!(
        max_diff(
            none.images.translation.as_ref().unwrap(),
            zero.images.translation.as_ref().unwrap()
        ),
        0.0
    );
}

/// With a second thread, small latents compute the next step's reconstruction beside the
/// current step's translation. The results, and the progress reported inside every step,
/// are those of one thread: for a fresh edit, with the exact mirror, and for a re-edit that
/// replays the cached reconstruction.
#[test]
fn overlapped_branches_give_the_one_thread_result() {
    let (fx, mut s) = session();
    let (h, w) = latent_hw(&fx);
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    let (one, two) = (pool(1), pool(2));
    assert!(!one.install(|| threads::overlap_branches(h, w)));
    if !two.install(|| threads::overlap_branches(h, w)) {
        eprintln!("a {h}×{w} latent is not small: the branches do not overlap, nothing to compare");
        return;
    }
    for (exact, cached) in [(false, false), (true, false), (false, true)] {
        let mut req = request(&fx, &target(&fx, None), 4);
        req.mirror.exact_mirror = exact;
        req.use_cache = cached;
        if cached {
            one.install(|| step_work(&mut s, &req));
        }
        let (a, work_a) = one.install(|| step_work(&mut s, &req));
        let (b, work_b) = two.install(|| step_work(&mut s, &req));
        let case = format!("exact mirror {exact}, re-edit {cached}");
        assert_eq!(b.reused_reconstruction, cached, "{case}");
        assert_eq!(a.latents.len(), b.latents.len(), "{case}");
        for ((branch, x), (other, y)) in a.latents.iter().zip(&b.latents) {
            assert_eq!(branch, other, "{case}");
            let diff = (x - y).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{case}: {branch:?}");
        }
        let losses = |o: &TranslateOutcome| -> Vec<Vec<f64>> {
            o.reports
                .iter()
                .map(|r| r.redescription.as_ref().unwrap().losses.clone())
                .collect()
        };
        assert_eq!(losses(&a), losses(&b), "{case}");
        assert_eq!(work_a, work_b, "{case}: the progress inside the steps");
    }
}

/// With an edit mask, every translation is the photo itself wherever the mask is 0 (to the
/// 8-bit level), whatever the latents did there; where it is 1 the translation is the
/// method's own. Holds for MirrorDiffusion and plain DDIM, at every latent-blend share.
#[test]
fn the_photo_is_kept_exactly_outside_the_mask() {
    use mirror_engine::imageio::tensor_to_image;
    use mirror_engine::methods::mask::EditMask;
    let (fx, mut s) = session();
    let mut req = request(&fx, &target(&fx, None), 2);
    let (w, h) = req.image.dimensions();
    // The left quarter may change.
    req.mask = EditMask::Given(image::GrayImage::from_fn(w, h, |x, _| {
        image::Luma([if x < w / 4 { 255 } else { 0 }])
    }));
    for (method, blend) in [
        (Method::Mirror, 1.0),
        (Method::Mirror, 0.0),
        (Method::Ddim, 0.5),
    ] {
        req.method = method;
        req.mask_settings.latent_blend_until = blend;
        let out = s.translate(&req, &CancelToken::new(), &mut |_| {}).unwrap();
        let translated = tensor_to_image(out.images.translation.as_ref().unwrap()).unwrap();
        let (mut inside_changed, mut outside_changed) = (0, 0);
        for (x, y, p) in translated.enumerate_pixels() {
            let same = p == req.image.get_pixel(x, y);
            if x < w / 4 - 1 {
                inside_changed += usize::from(!same);
            } else if x > w / 4 {
                outside_changed += usize::from(!same);
            }
        }
        assert_eq!(
            outside_changed, 0,
            "{method:?}, blend {blend}: pixels changed outside"
        );
        assert!(
            inside_changed > 0,
            "{method:?}, blend {blend}: nothing changed inside"
        );
    }
}
