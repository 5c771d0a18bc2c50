//! Tiled VAE encode and decode (images above the model's native size): the whole-image path
//! at or below one tile, each tile's own output placed in the interior, the overlaps faded as
//! diffusers' `blend_v`/`blend_h` do, and the assembly checked against a literal host-side
//! port of diffusers' `tiled_decode`. Sizes come from the fixture's VAE config. Tiling is
//! off by default, as in diffusers; the tests below turn it on. Mirror's `on` mode is
//! compared with diffusers' `enable_tiling()` on the fixture set's stored `vae_tiled`
//! reference (`tools/check_tiled_vae.py --image-from-manifest`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{Fixtures, half_atol, max_diff, test_device, test_half_precisions};
use mirror_engine::device::resolve_precision;
use mirror_engine::model::StableDiffusion;
use mirror_engine::vae::gaussian::standard_normal;
use mirror_engine::vae::tiled::{TileLayout, TileSpan, TiledMap};
use mirror_engine::vae::{AutoencoderKL, TilingSettings, VaeConfig, VaeTiles};
use proptest::prelude::*;

/// The fixture VAE as it loads (tiling off).
fn load_vae_default(fx: &Fixtures, dtype: DType) -> AutoencoderKL {
    let cfg = VaeConfig::from_file(&fx.config_path("vae")).expect("vae config");
    let weights = fx.weights_path("vae");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, &test_device()) }
        .expect("vae weights");
    AutoencoderKL::new(vb, &cfg).expect("vae builds")
}

/// The fixture VAE with tiling on (diffusers' `enable_tiling()`).
fn load_vae(fx: &Fixtures, dtype: DType) -> AutoencoderKL {
    let mut vae = load_vae_default(fx, dtype);
    vae.set_tiling(vae.tiling().with_enabled(true));
    vae
}

fn seeded(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(standard_normal(seed, n), shape, &test_device()).unwrap()
}

fn off(vae: &AutoencoderKL) -> TilingSettings {
    TilingSettings {
        enabled: false,
        ..*vae.tiling()
    }
}

/// The default grid of the fixture VAE: native tiles, diffusers' overlap.
fn layout(vae: &AutoencoderKL) -> TileLayout {
    let factor = vae.config().downsample_factor();
    vae.tiling()
        .layout(factor)
        .expect("default tiling is valid")
}

/// 2.5 × the native latent side high and 1.5 × wide: tiles that do not divide the size.
fn large_latent_hw(layout: &TileLayout) -> (usize, usize) {
    ((5 * layout.tile).div_ceil(2), (3 * layout.tile).div_ceil(2))
}

/// `t[.., rows, cols]` of a [B, C, H, W] tensor.
fn window(t: &Tensor, rows: (usize, usize), cols: (usize, usize)) -> Tensor {
    t.narrow(2, rows.0, rows.1)
        .unwrap()
        .narrow(3, cols.0, cols.1)
        .unwrap()
}

fn is_finite(t: &Tensor) -> bool {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap()
        .iter()
        .all(|v| v.is_finite())
}

#[test]
fn at_or_below_one_tile_the_whole_image_path_runs() {
    let fx = Fixtures::load();
    let vae = load_vae(&fx, DType::F32);
    let grid = layout(&vae);
    let factor = vae.config().downsample_factor();
    assert!(
        !load_vae_default(&fx, DType::F32).tiling().enabled,
        "tiling is off by default, as in diffusers"
    );
    assert_eq!(
        grid.tile * factor,
        vae.config().sample_size,
        "tiles are the native size"
    );
    let channels = vae.config().latent_channels;
    for (k, (h, w)) in [
        (grid.tile, grid.tile),
        (grid.tile, grid.tile / 2 + 1),
        (grid.stride, grid.tile - 1),
    ]
    .into_iter()
    .enumerate()
    {
        let z = seeded(&[1, channels, h, w], 10 + k as u64);
        let whole = vae.decode_with(&z, &off(&vae)).unwrap();
        assert_eq!(max_diff(&vae.decode(&z).unwrap(), &whole), 0.0, "{h}×{w}");
        let image = (whole.clamp(-1f32, 1f32)).unwrap();
        let posterior = vae.encode(&image).unwrap();
        let whole_posterior = vae.encode_with(&image, &off(&vae)).unwrap();
        assert_eq!(max_diff(&posterior.mean, &whole_posterior.mean), 0.0);
        assert_eq!(max_diff(&posterior.logvar, &whole_posterior.logvar), 0.0);
    }
    // The assembly itself adds nothing when one tile covers the input.
    let z = seeded(&[1, channels, grid.stride, grid.stride], 3);
    let map = TiledMap {
        layout: grid,
        input_scale: 1,
        output_scale: factor,
    };
    let one_tile = map
        .apply(&z, |tile| vae.decode_with(tile, &off(&vae)))
        .unwrap();
    assert_eq!(
        max_diff(&one_tile, &vae.decode_with(&z, &off(&vae)).unwrap()),
        0.0
    );
}

/// The plain outputs of every tile of a `latent_hw` grid, row by row.
fn tile_outputs(
    grid: &TileLayout,
    latent_hw: (usize, usize),
    mut net: impl FnMut(TileSpan, TileSpan) -> Tensor,
) -> Vec<Vec<Tensor>> {
    let cols = grid.spans(latent_hw.1);
    grid.spans(latent_hw.0)
        .into_iter()
        .map(|r| cols.iter().map(|c| net(r, *c)).collect())
        .collect()
}

/// Each tile's interior (outside every fade) is that tile's own output, exactly. An edge tile
/// no longer than the fade has no interior; every other one is checked.
fn assert_interiors(out: &Tensor, tiles: &[Vec<Tensor>], grid: &TileLayout, scale: usize) {
    let (_, _, out_h, out_w) = out.dims4().unwrap();
    let (rows, cols) = (grid.spans(out_h / scale), grid.spans(out_w / scale));
    let (blend, keep) = (grid.blend() * scale, grid.stride * scale);
    for (i, r) in rows.iter().enumerate() {
        for (j, c) in cols.iter().enumerate() {
            let skip = |k: usize| if k > 0 { blend } else { 0 };
            let rows_in = (skip(i), keep.min(r.len * scale).saturating_sub(skip(i)));
            let cols_in = (skip(j), keep.min(c.len * scale).saturating_sub(skip(j)));
            if rows_in.1 == 0 || cols_in.1 == 0 {
                assert!(
                    i + 1 == rows.len() || j + 1 == cols.len(),
                    "only edge tiles"
                );
                continue;
            }
            let placed = window(
                out,
                (r.start * scale + rows_in.0, rows_in.1),
                (c.start * scale + cols_in.0, cols_in.1),
            );
            let own = window(&tiles[i][j], rows_in, cols_in);
            assert_eq!(
                max_diff(&placed, &own),
                0.0,
                "tile ({i}, {j}) interior {rows_in:?} × {cols_in:?}"
            );
        }
    }
}

/// Largest |Δ| between `actual` and the fade `(1 − y/n)·earlier + (y/n)·later` along `dim`
/// (computed on the host in f64), and the smallest |later − actual| (the fade did something).
fn fade_error(earlier: &Tensor, later: &Tensor, actual: &Tensor, dim: usize) -> (f64, f64) {
    let n = actual.dim(dim).unwrap();
    let host = |t: &Tensor| {
        t.to_dtype(DType::F64)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
    };
    let (a, b, out) = (host(earlier), host(later), host(actual));
    let mut shape = [1usize; 4];
    shape[dim] = n;
    let ramp: Vec<f64> = (0..n).map(|y| y as f64 / n as f64).collect();
    let w = Tensor::from_vec(ramp, &shape[..], &Device::Cpu).unwrap();
    let expected =
        (a.broadcast_mul(&(1.0 - &w).unwrap()).unwrap() + b.broadcast_mul(&w).unwrap()).unwrap();
    let max = |t: Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let err = max((&expected - &out).unwrap()).to_scalar::<f64>().unwrap();
    // Past the first row the later tile's own value is changed by the fade.
    let moved =
        max((out.narrow(dim, 1, n - 1).unwrap() - b.narrow(dim, 1, n - 1).unwrap()).unwrap())
            .to_scalar::<f64>()
            .unwrap();
    (err, moved)
}

/// The first vertical fade (tiles (0,0) → (1,0)) and horizontal fade ((0,0) → (0,1)), in the
/// region no other fade touches: the documented convex combination of the two tiles.
fn assert_first_fades(out: &Tensor, tiles: &[Vec<Tensor>], grid: &TileLayout, scale: usize) {
    let (blend, keep) = (grid.blend() * scale, grid.stride * scale);
    let (top, below, right) = (&tiles[0][0], &tiles[1][0], &tiles[0][1]);
    let vertical = fade_error(
        &window(top, (keep, blend), (0, keep)),
        &window(below, (0, blend), (0, keep)),
        &window(out, (keep, blend), (0, keep)),
        2,
    );
    let horizontal = fade_error(
        &window(top, (0, keep), (keep, blend)),
        &window(right, (0, keep), (0, blend)),
        &window(out, (0, keep), (keep, blend)),
        3,
    );
    for (name, (err, moved)) in [("vertical", vertical), ("horizontal", horizontal)] {
        eprintln!(
            "{name} fade: max |Δ| {err:.2e} from the formula; changed the tile by {moved:.2e}"
        );
        assert!(err <= 1e-5, "{name} fade differs from the formula by {err}");
        assert!(moved > 1e-3, "{name} fade left the later tile unchanged");
    }
}

#[test]
fn tiled_decode_places_each_tile_and_fades_the_overlaps() {
    let fx = Fixtures::load();
    let vae = load_vae(&fx, DType::F32);
    let grid = layout(&vae);
    let factor = vae.config().downsample_factor();
    let (h, w) = large_latent_hw(&grid);
    let z = seeded(&[1, vae.config().latent_channels, h, w], 21);
    let out = vae.decode(&z).unwrap();
    assert_eq!(
        out.dims(),
        &[1, vae.config().out_channels, h * factor, w * factor]
    );
    assert!(is_finite(&out));
    let tiles = tile_outputs(&grid, (h, w), |r, c| {
        let tile = window(&z, (r.start, r.len), (c.start, c.len))
            .contiguous()
            .unwrap();
        vae.decode_with(&tile, &off(&vae)).unwrap()
    });
    assert!(
        tiles.len() >= 3 && tiles[0].len() >= 2,
        "a grid of several tiles"
    );
    assert_interiors(&out, &tiles, &grid, factor);
    assert_first_fades(&out, &tiles, &grid, factor);
    let reference = diffusers_assembly(&tiles, grid.blend() * factor, grid.stride * factor);
    let err = max_diff(&out.to_device(&Device::Cpu).unwrap(), &reference);
    eprintln!("tiled decode vs a literal port of diffusers' assembly: max |Δ| {err:.2e}");
    assert!(err <= 1e-6, "{err}");
    // Different from decoding the whole latent at once (the tiles do not see each other).
    assert!(max_diff(&out, &vae.decode_with(&z, &off(&vae)).unwrap()) > 1e-3);
}

#[test]
fn tiled_encode_places_each_tile_and_fades_the_overlaps() {
    let fx = Fixtures::load();
    let vae = load_vae(&fx, DType::F32);
    let grid = layout(&vae);
    let factor = vae.config().downsample_factor();
    let (h, w) = large_latent_hw(&grid);
    let image = seeded(&[1, vae.config().in_channels, h * factor, w * factor], 22)
        .clamp(-1f32, 1f32)
        .unwrap();
    let posterior = vae.encode(&image).unwrap();
    let channels = vae.config().latent_channels;
    assert_eq!(posterior.mean.dims(), &[1, channels, h, w]);
    assert!(is_finite(&posterior.mean) && is_finite(&posterior.logvar));
    let tiles = tile_outputs(&grid, (h, w), |r, c| {
        let pixels = window(
            &image,
            (r.start * factor, r.len * factor),
            (c.start * factor, c.len * factor),
        );
        vae.encode_with(&pixels.contiguous().unwrap(), &off(&vae))
            .unwrap()
            .mean
    });
    assert_interiors(&posterior.mean, &tiles, &grid, 1);
    assert_first_fades(&posterior.mean, &tiles, &grid, 1);

    // Pixels past the last whole latent pixel: the same latent size as the whole-image path.
    let ragged = image
        .narrow(2, 0, h * factor - 1)
        .and_then(|t| t.pad_with_zeros(3, 0, factor - 1))
        .unwrap();
    let tiled = vae.encode(&ragged).unwrap().mean;
    let whole = vae.encode_with(&ragged, &off(&vae)).unwrap().mean;
    assert_eq!(tiled.dims(), whole.dims());
    assert!(is_finite(&tiled));
}

/// Half precision: the tiled decode runs in the VAE's type and tracks the f32 one.
#[test]
fn tiled_decode_runs_in_half_precision() {
    let fx = Fixtures::load();
    let full = load_vae(&fx, DType::F32);
    let grid = layout(&full);
    let (h, w) = large_latent_hw(&grid);
    let z = seeded(&[1, full.config().latent_channels, h, w], 23);
    let reference = full.decode(&z).unwrap();
    for precision in test_half_precisions() {
        let (dtype, _) = resolve_precision(&test_device(), precision);
        let vae = load_vae(&fx, dtype);
        let out = vae.decode(&z.to_dtype(dtype).unwrap()).unwrap();
        assert_eq!(out.dtype(), dtype);
        assert_eq!(out.dims(), reference.dims());
        let err = max_diff(&out.to_dtype(DType::F32).unwrap(), &reference) as f64;
        let tol = half_atol(fx.atol("vae", "decoded"), dtype);
        eprintln!("{dtype:?} tiled decode vs f32: max |Δ| {err:.2e} (tolerance {tol:.2e})");
        assert!(err <= tol, "{dtype:?}: {err} > {tol}");
    }
}

/// A [1, C, H, W] tile on the host, for the literal port below.
#[derive(Clone)]
struct HostTile {
    c: usize,
    h: usize,
    w: usize,
    v: Vec<f32>,
}

impl HostTile {
    fn new(t: &Tensor) -> Self {
        let (_, c, h, w) = t.dims4().unwrap();
        let v = t
            .to_device(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        Self { c, h, w, v }
    }
    fn at(&self, c: usize, y: usize, x: usize) -> usize {
        (c * self.h + y) * self.w + x
    }
}

/// diffusers' `tiled_decode` after the decoder, line for line: `blend_v` and `blend_h` write
/// into the tile in place (so later tiles see faded neighbours), Python-float weights.
fn diffusers_assembly(tiles: &[Vec<Tensor>], blend_extent: usize, row_limit: usize) -> Tensor {
    let mut rows: Vec<Vec<HostTile>> = tiles
        .iter()
        .map(|r| r.iter().map(HostTile::new).collect())
        .collect();
    for i in 0..rows.len() {
        for j in 0..rows[i].len() {
            let mut b = rows[i][j].clone();
            if i > 0 {
                let a = &rows[i - 1][j];
                let e = blend_extent.min(a.h).min(b.h);
                for y in 0..e {
                    let (wa, wb) = (
                        (1.0 - y as f64 / e as f64) as f32,
                        (y as f64 / e as f64) as f32,
                    );
                    for c in 0..b.c {
                        for x in 0..b.w {
                            let k = b.at(c, y, x);
                            b.v[k] = a.v[a.at(c, a.h - e + y, x)] * wa + b.v[k] * wb;
                        }
                    }
                }
            }
            if j > 0 {
                let a = &rows[i][j - 1];
                let e = blend_extent.min(a.w).min(b.w);
                for x in 0..e {
                    let (wa, wb) = (
                        (1.0 - x as f64 / e as f64) as f32,
                        (x as f64 / e as f64) as f32,
                    );
                    for c in 0..b.c {
                        for y in 0..b.h {
                            let k = b.at(c, y, x);
                            b.v[k] = a.v[a.at(c, y, a.w - e + x)] * wa + b.v[k] * wb;
                        }
                    }
                }
            }
            rows[i][j] = b;
        }
    }
    let strips: Vec<Tensor> = rows
        .iter()
        .map(|row| {
            let pieces: Vec<Tensor> = row
                .iter()
                .map(|t| {
                    let full = Tensor::from_vec(t.v.clone(), (1, t.c, t.h, t.w), &Device::Cpu);
                    window(
                        &full.unwrap(),
                        (0, row_limit.min(t.h)),
                        (0, row_limit.min(t.w)),
                    )
                })
                .collect();
            Tensor::cat(&pieces, 3).unwrap()
        })
        .collect();
    Tensor::cat(&strips, 2).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The fade weights sum to one: tiles that all hold one constant give that constant, and
    /// tiles that agree where they overlap (nearest upsampling of the input) give the whole
    /// input's upsampling, whatever the grid, overlap and size.
    #[test]
    fn fades_reproduce_what_the_tiles_agree_on(
        latent_h in 1usize..30,
        latent_w in 1usize..30,
        tile in 1usize..10,
        overlap in prop::sample::select(vec![0.0, 0.1, 0.25, 0.5, 0.75]),
        scale in prop::sample::select(vec![1usize, 2, 4]),
        constant in -4.0f32..4.0,
    ) {
        let settings = TilingSettings { enabled: true, tile_sample_size: tile * scale, overlap };
        let map = TiledMap {
            layout: settings.layout(scale).unwrap(),
            input_scale: 1,
            output_scale: scale,
        };
        let input = seeded(&[1, 2, latent_h, latent_w], latent_h as u64 * 31 + latent_w as u64);
        let flat = map
            .apply(&input, |t| {
                let (b, c, h, w) = t.dims4()?;
                Tensor::full(constant, (b, c, h * scale, w * scale), t.device())
            })
            .unwrap();
        prop_assert_eq!(flat.dims(), &[1, 2, latent_h * scale, latent_w * scale]);
        let off = (flat - f64::from(constant)).unwrap().abs().unwrap().max_all().unwrap();
        prop_assert!(off.to_scalar::<f32>().unwrap() <= 4.0 * f32::EPSILON * constant.abs());

        let upsample = |t: &Tensor| {
            let (_, _, h, w) = t.dims4()?;
            t.upsample_nearest2d(h * scale, w * scale)
        };
        let tiled = map.apply(&input, upsample).unwrap();
        let err = max_diff(&tiled, &upsample(&input).unwrap());
        prop_assert!(err <= 1e-5, "{}", err);
    }
}

/// Mirror's `on` mode against diffusers' `enable_tiling()` on the fixture set's stored
/// reference (`vae_tiled.safetensors`, made by `tools/check_tiled_vae.py
/// --image-from-manifest`): the `vae` fixture's image encoded and latent decoded, and a random
/// latent and image of several tiles, within the atols of `vae_tiled.json`. `off` and `auto`
/// (with memory to spare) give the untiled path on the same inputs.
#[test]
fn on_mode_matches_diffusers_enable_tiling() {
    let fx = Fixtures::load();
    let path = fx.root.join("vae_tiled.safetensors");
    if !path.exists() {
        eprintln!(
            "skipped: {} has no vae_tiled.safetensors (make it with tools/check_tiled_vae.py \
             --image-from-manifest)",
            fx.root.display()
        );
        return;
    }
    let report = common::read_json(&fx.root.join("vae_tiled.json"));
    let atol = |name: &str| {
        report["tensors"][name]["atol"]
            .as_f64()
            .unwrap_or_else(|| panic!("vae_tiled.json: no atol for {name}"))
    };
    let saved = candle_core::safetensors::load(&path, &test_device()).expect("saved tensors");
    let sd = StableDiffusion::load(&fx.model_dir(), &test_device()).expect("model loads");
    let run = |mode: VaeTiles| {
        sd.set_vae_tiles(mode);
        let posterior = sd.encode_posterior(&saved["image"]).unwrap();
        let decoded = sd.decode_latent(&saved["latent"]).unwrap();
        let random_posterior = sd.encode_posterior(&saved["random_image"]).unwrap();
        // The random latent is decoded raw (no scaling), as the reference did: the VAE itself,
        // tiled as the mode made the passes above.
        let tiling = sd.vae.tiling().with_enabled(sd.vae_tiles_report().used);
        let random_decoded = sd
            .vae
            .decode_with(&saved["random_latent"], &tiling)
            .unwrap();
        (
            [
                ("posterior_mean", posterior.mean),
                ("posterior_logvar", posterior.logvar),
                ("decoded", decoded),
                ("random_posterior_mean", random_posterior.mean),
                ("random_posterior_logvar", random_posterior.logvar),
                ("random_decoded", random_decoded),
            ],
            sd.vae_tiles_report(),
        )
    };
    let (tiled, report_on) = run(VaeTiles::On);
    assert!(report_on.used && !report_on.fell_back, "{report_on:?}");
    let (whole, report_off) = run(VaeTiles::Off);
    assert!(!report_off.used, "{report_off:?}");
    let (auto, report_auto) = run(VaeTiles::Auto);
    assert!(!report_auto.used, "a tiny model fits in memory whole");
    for ((name, on), ((_, off), (_, auto))) in tiled.iter().zip(whole.iter().zip(&auto)) {
        let err = common::assert_tensor_close(
            &format!("tiles on: {name} vs diffusers enable_tiling"),
            &saved[*name],
            on,
            atol(name),
        );
        let moved = max_diff(on, off);
        eprintln!(
            "{name}: tiled vs diffusers tiled max |Δ| {err:.2e} (atol {:.2e}); tiled vs untiled \
             {moved:.2e} (diffusers {:.2e})",
            atol(name),
            report["tensors"][name]["tiled_vs_untiled_max_abs"]
                .as_f64()
                .unwrap_or(f64::NAN)
        );
        assert_eq!(max_diff(off, auto), 0.0, "{name}: auto is the untiled path");
    }
}
