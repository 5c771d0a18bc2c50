"""One-off check of Mirror's tiled VAE against diffusers (not part of the test suite).

Builds diffusers' AutoencoderKL from a VAE folder, enables tiling (native tiles, diffusers'
overlap), decodes a fixed random latent and encodes a fixed random image, both larger than
the native size and not a multiple of the tile, and saves inputs and outputs to one
safetensors file. Then compare with Mirror:

    /work/venv/bin/python tools/check_tiled_vae.py [--vae ../shared/fixtures/tiny-sd/vae] [--out DIR]
    MIRROR_TILED_VAE_CHECK=DIR/tiled_vae.safetensors \
        cargo test --release --test vae_tiled -- --ignored --nocapture

Fixture mode (`--image-from-manifest REF_DIR`): writes a stored reference of diffusers'
*tiled* VAE next to a fixture set made by tools/oracle/make_fixtures.py, on that set's own
VAE (REF_DIR/manifest.json `model_dir`/vae, or --vae):

    /work/venv/bin/python tools/check_tiled_vae.py --image-from-manifest FIXTURES/NAME-ref

  * `image` (the `vae` fixture's input image) encoded with tiling on → `posterior_mean`,
    `posterior_logvar`;
  * `latent` (the `vae` fixture's stored `latent`, i.e. posterior mean × scaling_factor,
    exactly the tensor its decode used) decoded with tiling on as diffusers' convention,
    `vae.decode(latent / scaling_factor)` → `decoded`;
  * `random_latent` (2.5 × the latent tile high, 1.5 × wide, seed 20261201) decoded raw,
    `vae.decode(random_latent)` (no scaling, as the random mode) → `random_decoded`;
  * `random_image` ((random_latent's size) × factor, uniform in [-1, 1), same generator
    after the latent) encoded → `random_posterior_mean`, `random_posterior_logvar`.

It writes REF_DIR/vae_tiled.safetensors (inputs and outputs, float32) and REF_DIR/vae_tiled.json:
per tensor its shape and role; per output `ref_max_abs` (of the float64 rerun), `max_abs`
(float32), `err_f64` (float32 vs the same computation with the model and the float32 inputs
cast to float64), `atol` = 10 × max(err_f64, err_alt_f32) + 1e-6 × ref_max_abs (the rule of
the manifest's `tolerance_rule`; the err_alt_f32 term only with --alt-threads), and
`tiled_vs_untiled_max_abs` (diffusers with tiling on vs off on the same input: how much
tiling moves the numbers, to compare with the untiled `vae` fixture's atol); plus the tile
settings and the torch/diffusers versions. The untiled float32 recomputation is also compared
with the stored `vae` fixture (`untiled_vs_vae_fixture_max_abs`, 0 with the same versions).
"""

import argparse
import copy
import json
import math
import os
import tempfile

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

SAFETY = 10.0
FLOOR_REL = 1e-6
RANDOM_SEED = 20261201


def load_vae(path):
    return AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32).eval()


def large_latent_hw(vae):
    """2.5 × the native latent side high, 1.5 × wide: edge tiles shorter than a tile."""
    tile = vae.tile_latent_min_size
    return math.ceil(2.5 * tile), math.ceil(1.5 * tile)


def random_inputs(vae):
    """The random mode's latent and image (same generator, same order)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = large_latent_hw(vae)
    gen = torch.Generator().manual_seed(RANDOM_SEED)
    latent = torch.randn(1, vae.config.latent_channels, h, w, generator=gen)
    image = (torch.rand(1, vae.config.in_channels, h * factor, w * factor, generator=gen) * 2 - 1)
    return latent, image


def random_mode(args):
    vae = load_vae(args.vae or default_vae())
    vae.enable_tiling()
    tile = vae.tile_latent_min_size
    latent, image = random_inputs(vae)
    h, w = latent.shape[-2:]
    with torch.no_grad():
        decoded = vae.decode(latent).sample
        posterior = vae.encode(image).latent_dist
        vae.disable_tiling()
        whole = vae.decode(latent).sample
    out_dir = args.out or tempfile.mkdtemp(prefix="mirror-tiled-vae-")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tiled_vae.safetensors")
    save_file({
        "latent": latent.contiguous(),
        "decoded": decoded.contiguous(),
        "image": image.contiguous(),
        "posterior_mean": posterior.mean.contiguous(),
        "posterior_logvar": posterior.logvar.contiguous(),
    }, path)
    print(f"tile {vae.tile_sample_min_size} px / {tile} latent, overlap {vae.tile_overlap_factor}; "
          f"latent {h}×{w} → image {tuple(decoded.shape)}; image {tuple(image.shape)} → "
          f"latent {tuple(posterior.mean.shape)}")
    # How far tiling moves the result: the scale a wrong tiling would show up at.
    print(f"diffusers tiled vs whole decode: max |Δ| {(decoded - whole).abs().max().item():.3e}")
    print(path)


def default_vae():
    return os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "tiny-sd", "vae")


def run_all(vae, inputs, scaling, tiled):
    """All fixture-mode outputs of `vae` (tiling on or off) from `inputs` (already in the
    model's dtype)."""
    if tiled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    with torch.no_grad():
        post = vae.encode(inputs["image"]).latent_dist
        rpost = vae.encode(inputs["random_image"]).latent_dist
        return {
            "posterior_mean": post.mean,
            "posterior_logvar": post.logvar,
            "decoded": vae.decode(inputs["latent"] / scaling).sample,
            "random_decoded": vae.decode(inputs["random_latent"]).sample,
            "random_posterior_mean": rpost.mean,
            "random_posterior_logvar": rpost.logvar,
        }


def max_abs_diff(a, b):
    return float((a.double() - b.double()).abs().max())


def fixture_mode(args):
    import diffusers

    ref_dir = os.path.abspath(args.image_from_manifest)
    man = json.load(open(os.path.join(ref_dir, "manifest.json"), encoding="utf-8"))
    vae_fx = man["fixtures"]["vae"]
    vae_dir = args.vae or os.path.join(ref_dir, man["model_dir"], "vae")
    vae = load_vae(vae_dir)
    scaling = vae.config.scaling_factor
    if abs(scaling - man["vae_scaling_factor"]) > 0:
        raise SystemExit(f"VAE scaling_factor {scaling} != manifest {man['vae_scaling_factor']}")
    stored = load_file(os.path.join(ref_dir, vae_fx["file"]))
    for k in ("image", "latent"):
        assert k in vae_fx["tensors"], f"vae fixture has no `{k}`"
    random_latent, random_image = random_inputs(vae)
    inputs = {
        "image": stored["image"].float(),
        "latent": stored["latent"].float(),
        "random_latent": random_latent,
        "random_image": random_image,
    }
    tile_lat, tile_px = vae.tile_latent_min_size, vae.tile_sample_min_size
    for k in ("image", "random_image"):
        hw = tuple(inputs[k].shape[-2:])
        assert max(hw) > tile_px, f"{k} {hw} fits one {tile_px} px tile: tiling would not run"
    for k in ("latent", "random_latent"):
        hw = tuple(inputs[k].shape[-2:])
        assert max(hw) > tile_lat, f"{k} {hw} fits one {tile_lat} latent tile: tiling would not run"

    out32 = run_all(vae, inputs, scaling, tiled=True)
    whole32 = run_all(vae, inputs, scaling, tiled=False)
    vae64 = copy.deepcopy(vae).to(torch.float64)
    out64 = run_all(vae64, {k: v.double() for k, v in inputs.items()}, scaling, tiled=True)
    alt = None
    if args.alt_threads:
        torch.set_num_threads(args.alt_threads)
        alt = run_all(vae, inputs, scaling, tiled=True)
        torch.set_num_threads(args.threads)

    untiled_check = {
        "posterior_mean": max_abs_diff(whole32["posterior_mean"], stored["posterior_mean"]),
        "posterior_logvar": max_abs_diff(whole32["posterior_logvar"], stored["posterior_logvar"]),
        "decoded": max_abs_diff(whole32["decoded"], stored["decoded"]),
    }

    descriptions = {
        "image": "input: the `vae` fixture's `image` ((u8 / 255 - 0.5) * 2, NCHW)",
        "latent": "input: the `vae` fixture's `latent` (posterior mean × scaling_factor; the "
                  "untiled fixture decoded exactly this tensor)",
        "random_latent": f"input: randn, torch.Generator seed {RANDOM_SEED}, first draw",
        "random_image": f"input: rand * 2 - 1, same generator after random_latent",
        "posterior_mean": "tiled encode(image).latent_dist.mean",
        "posterior_logvar": "tiled encode(image).latent_dist.logvar",
        "decoded": "tiled decode(latent / scaling_factor).sample (raw, unclamped)",
        "random_decoded": "tiled decode(random_latent).sample (no scaling; raw, unclamped)",
        "random_posterior_mean": "tiled encode(random_image).latent_dist.mean",
        "random_posterior_logvar": "tiled encode(random_image).latent_dist.logvar",
    }
    tensors, info = {}, {}
    for k, v in inputs.items():
        tensors[k] = v.contiguous()
        info[k] = {"shape": list(v.shape), "dtype": "float32", "role": "input", "atol": 0.0,
                   "description": descriptions[k]}
    vae_atols = {k: vae_fx["tensors"].get(k, {}).get("atol") for k in vae_fx["tensors"]}
    for k, v in out32.items():
        tensors[k] = v.contiguous()
        ref_max = float(out64[k].abs().max())
        e64 = max_abs_diff(v, out64[k])
        ealt = max_abs_diff(v, alt[k]) if alt else 0.0
        r = {"shape": list(v.shape), "dtype": "float32", "role": "output",
             "description": descriptions[k],
             "max_abs": float(v.abs().max()), "ref_max_abs": ref_max,
             "err_f64": e64, "rel_err_f64": e64 / ref_max if ref_max else 0.0}
        if alt:
            r["err_alt_f32"] = ealt
        r["atol"] = SAFETY * max(e64, ealt) + FLOOR_REL * ref_max
        r["tiled_vs_untiled_max_abs"] = max_abs_diff(v, whole32[k])
        if k in vae_atols and vae_atols[k] is not None:
            r["untiled_vae_fixture_atol"] = vae_atols[k]
        info[k] = r

    out_path = os.path.join(ref_dir, "vae_tiled.safetensors")
    save_file(tensors, out_path, metadata={"fixture": "vae_tiled"})
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    enc_overlap = int(tile_px * (1 - vae.tile_overlap_factor))
    dec_overlap = int(tile_lat * (1 - vae.tile_overlap_factor))
    report = {
        "format_version": 1,
        "generator": "tools/check_tiled_vae.py --image-from-manifest",
        "file": "vae_tiled.safetensors",
        "vae_dir": os.path.relpath(os.path.abspath(vae_dir), ref_dir),
        "dtype": "float32",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "threads": args.threads,
        "description": "diffusers AutoencoderKL with enable_tiling() (default tile settings) on "
                       "the fixture set's VAE: the `vae` fixture's image encoded and its latent "
                       "decoded, plus a random latent / image of 2.5 × 1.5 tiles.",
        "scaling_factor": scaling,
        "vae_scale_factor": factor,
        "tiling": {
            "tile_sample_min_size": tile_px,
            "tile_latent_min_size": tile_lat,
            "tile_overlap_factor": vae.tile_overlap_factor,
            "encode": {"stride_px": enc_overlap,
                       "blend_latent": int(tile_lat * vae.tile_overlap_factor),
                       "keep_latent": tile_lat - int(tile_lat * vae.tile_overlap_factor)},
            "decode": {"stride_latent": dec_overlap,
                       "blend_px": int(tile_px * vae.tile_overlap_factor),
                       "keep_px": tile_px - int(tile_px * vae.tile_overlap_factor)},
            "condition": "encode tiles when image H or W > tile_sample_min_size; decode tiles "
                         "when latent H or W > tile_latent_min_size",
        },
        "tolerance_rule": ("|rust - fixture| <= atol elementwise; atol = %g * max(|f32 - f64|, "
                           "|f32 - f32_alt|) + %g * max|f64 fixture|%s" %
                           (SAFETY, FLOOR_REL, "" if alt else
                            " (no alternative-thread run: the |f32 - f32_alt| term is 0)")),
        "untiled_vs_vae_fixture_max_abs": untiled_check,
        "tensors": info,
    }
    json_path = os.path.join(ref_dir, "vae_tiled.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for p in (out_path, json_path):
        os.chmod(p, 0o644)

    print(f"VAE {vae_dir}: tile {tile_px} px / {tile_lat} latent, overlap {vae.tile_overlap_factor}, "
          f"scaling_factor {scaling}")
    print(f"untiled recomputation vs stored `vae` fixture: {untiled_check}")
    print(f"{'tensor':24s} {'shape':18s} {'max_abs':>9s} {'err_f64':>9s} {'atol':>9s} "
          f"{'tiled-untiled':>13s} {'untiled atol':>12s}")
    for k in out32:
        r = info[k]
        ua = r.get("untiled_vae_fixture_atol")
        print(f"{k:24s} {str(tuple(r['shape'])):18s} {r['max_abs']:9.3e} {r['err_f64']:9.3e} "
              f"{r['atol']:9.3e} {r['tiled_vs_untiled_max_abs']:13.3e} "
              f"{'' if ua is None else format(ua, '12.3e')}")
    print(out_path)
    print(json_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default=None,
                        help="VAE folder (default: ../shared/fixtures/tiny-sd/vae; with "
                             "--image-from-manifest, the fixture set's own VAE)")
    parser.add_argument("--out", default=None, help="folder for tiled_vae.safetensors (random mode)")
    parser.add_argument("--image-from-manifest", metavar="REF_DIR", default=None,
                        help="fixture mode: use REF_DIR's `vae` fixture and write "
                             "REF_DIR/vae_tiled.safetensors and vae_tiled.json")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--alt-threads", type=int, default=None,
                        help="fixture mode: also rerun float32 with this many threads and "
                             "include |f32 - f32_alt| in the atol")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.image_from_manifest:
        fixture_mode(args)
    else:
        random_mode(args)


if __name__ == "__main__":
    main()
