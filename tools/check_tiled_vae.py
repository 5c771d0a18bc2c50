"""One-off check of Mirror's tiled VAE against diffusers (not part of the test suite).

Builds diffusers' AutoencoderKL from a VAE folder, enables tiling (native tiles, diffusers'
overlap), decodes a fixed random latent and encodes a fixed random image, both larger than
the native size and not a multiple of the tile, and saves inputs and outputs to one
safetensors file. Then compare with Mirror:

    /work/venv/bin/python tools/check_tiled_vae.py [--vae ../shared/fixtures/tiny-sd/vae] [--out DIR]
    MIRROR_TILED_VAE_CHECK=DIR/tiled_vae.safetensors \
        cargo test --release --test vae_tiled -- --ignored --nocapture
"""

import argparse
import math
import os
import tempfile

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                      "shared", "fixtures", "tiny-sd", "vae"))
    parser.add_argument("--out", default=None, help="folder for tiled_vae.safetensors")
    args = parser.parse_args()

    vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32).eval()
    vae.enable_tiling()
    tile = vae.tile_latent_min_size
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    # 2.5 × the native latent high, 1.5 × wide: edge tiles shorter than a tile.
    h, w = math.ceil(2.5 * tile), math.ceil(1.5 * tile)
    gen = torch.Generator().manual_seed(20261201)
    latent = torch.randn(1, vae.config.latent_channels, h, w, generator=gen)
    image = (torch.rand(1, vae.config.in_channels, h * factor, w * factor, generator=gen) * 2 - 1)
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


if __name__ == "__main__":
    main()
