#!/usr/bin/env python3
"""The yardsticks of docs/performance.md's "share of the peak": the machine's f32
matrix-product rate in PyTorch (a 4096² product, torch.set_num_threads(2), best of 5; the
Rust side is `cargo bench -p mirror-engine --bench engine -- --only peak_gemm`), and the
floating-point operations of the SD 1.5 UNet cases of bench_torch.py (forward, and forward +
backward w.r.t. the prompt embedding), counted by torch.utils.flop_counter.FlopCounterMode.

  python crates/mirror-engine/benches/torch_flops.py [peak|flops|both]

Prints one JSON line.
"""
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "shared", "tools", "oracle"))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

torch.set_num_threads(2)


def peak(n=4096):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return {"n": n, "best_s": round(best, 4), "gflops": round(2 * n**3 / best / 1e9, 1)}


def _timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def flops():
    from bench_torch import SD15_UNET  # the benchmark's own config
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    out = {}
    for hw in (32, 64):
        for bs in (1, 2):
            x = torch.randn(bs, 4, hw, hw)
            emb = torch.randn(bs, 77, 768)
            with FlopCounterMode(display=False) as fwd:
                with torch.no_grad():
                    unet(x, 501, emb)
            e = emb.clone().requires_grad_(True)
            with FlopCounterMode(display=False) as bwd:
                unet(x, 501, e).sample.pow(2).sum().backward()
            out[f"fwd,{hw},{bs}"] = round(fwd.get_total_flops() / 1e9, 1)
            out[f"bwd,{hw},{bs}"] = round(bwd.get_total_flops() / 1e9, 1)
    return {"gflop": out}


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "both"
    report = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if what in ("peak", "both"):
        report["peak"] = peak()
    if what in ("flops", "both"):
        report.update(flops())
    print(json.dumps(report))
