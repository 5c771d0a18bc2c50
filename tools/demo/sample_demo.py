#!/usr/bin/env python3
"""Quick check of a demo-model folder during training (diffusers, not Mirror): text-to-image
samples of every caption in a fixed sample, written as PNGs with the caption in the name's
order, for `mirror-diffusion shapes --classify` to read.

  python3 tools/demo/sample_demo.py --model /tmp/demo-snapshot --out /tmp/samples --guidance 3
"""
import argparse
import itertools
import json
import os

import numpy as np
import torch
from PIL import Image

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star"]


def captions(count, seed):
    every = [(c, s, b) for c, s, b in itertools.product(COLOURS, SHAPES, COLOURS) if b != c]
    rng = np.random.default_rng(seed)
    return [every[i] for i in rng.permutation(len(every))[:count]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for seed in range(args.seeds):
        caps = captions(args.count, 0)
        prompts = [f"a {c} {s} on a {b} background" for c, s, b in caps]
        gen = torch.Generator().manual_seed(seed)
        images = pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      generator=gen, height=64, width=64).images
        for i, (img, p) in enumerate(zip(images, prompts)):
            name = f"s{seed}_{i:03d}.png"
            img.save(os.path.join(args.out, name))
            rows.append({"file_name": name, "text": p})
    with open(os.path.join(args.out, "metadata.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
