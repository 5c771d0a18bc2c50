#!/usr/bin/env python3
"""The side-by-side table of docs/performance.md: every case in Mirror, then at once in
PyTorch, before the next case, so that both halves of a pair see the same machine; the
machine's f32 matrix-product peak on both sides and each UNet case's share of it (FLOPs
counted by PyTorch's FlopCounterMode); the resident peak of each process.

  python scripts/side-by-side.py [--quick] [--only unet_full,unet_tiny,vae_full,clip_full]
                                 [--json FILE]

Needs PyTorch and diffusers (`pip install torch diffusers transformers safetensors`) and
../shared/tools/oracle/bench_torch.py beside the clone. Prints a Markdown table.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TORCH_BENCH = os.path.join(ROOT, "..", "shared", "tools", "oracle", "bench_torch.py")
TORCH_FLOPS = os.path.join(ROOT, "crates", "mirror-engine", "benches", "torch_flops.py")

NAMES = {
    "unet_full": "UNet",
    "unet_tiny": "tiny UNet",
}


def last_json(cmd):
    """The last JSON line a command prints on stdout."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def mirror(case, quick):
    cmd = ["cargo", "bench", "-q", "--locked", "-p", "mirror-engine", "--bench", "engine",
           "--", "--case", case] + (["--quick"] if quick else [])
    return last_json(cmd)


def torch_side(case, quick):
    return last_json([sys.executable, TORCH_BENCH, "--case", case] + (["--quick"] if quick else []))


def label(case):
    kind, args = case.split(":")
    parts = args.split(",")
    if kind.startswith("unet"):
        mode = "forward" if parts[0] == "fwd" else "forward + backward"
        size = f", {parts[1]}²" if kind == "unet_full" else ""
        return f"{NAMES[kind]} {mode}{size}, batch {parts[2]}"
    if kind == "vae_full":
        return f"VAE decode, {parts[0]} px"
    return f"CLIP text encoder, batch {parts[0]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 timed repeats instead of 3")
    ap.add_argument("--only", default="unet_full,unet_tiny,vae_full,clip_full")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(TORCH_BENCH))
    from bench_torch import all_cases  # the oracle's own case list

    peaks = {"mirror": mirror("peak_gemm:4096", False).get("gflops"),
             "torch": last_json([sys.executable, TORCH_FLOPS, "peak"])["peak"]["gflops"]}
    gflop = last_json([sys.executable, TORCH_FLOPS, "flops"])["gflop"]
    rows = []
    for case in all_cases(set(args.only.split(","))):
        ours, theirs = mirror(case, args.quick), torch_side(case, args.quick)
        rows.append((case, ours, theirs))
        print(f"{case}: {ours['median_s']} s against {theirs['median_s']} s", file=sys.stderr)
    print(f"Peak: {peaks['mirror']} GFLOP/s (Mirror's gemm), {peaks['torch']} GFLOP/s (PyTorch)\n")
    print("| case | Mirror s | PyTorch s | ratio | Mirror % of peak | PyTorch % of peak "
          "| Mirror peak MiB | PyTorch peak MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for case, ours, theirs in rows:
        ratio = ours["median_s"] / theirs["median_s"]
        ratio_text = f"**{ratio:.2f}**" if ratio <= 1.0 else f"{ratio:.2f}"
        share = ["", ""]
        flops = gflop.get(case.split(":")[1]) if case.startswith("unet_full") else None
        if flops:
            # One yardstick for both sides: the larger of the two peaks.
            top = max(peaks["mirror"], peaks["torch"])
            share = [f"{flops / s / top:.0%}".replace("%", " %")
                     for s in (ours["median_s"], theirs["median_s"])]
        print(f"| {label(case)} | {ours['median_s']:.4g} | {theirs['median_s']:.4g} | {ratio_text} "
              f"| {share[0]} | {share[1]} | {ours['peak_rss_mib']:.0f} "
              f"| {theirs['peak_rss_mib']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peaks": peaks, "gflop": gflop,
                       "cases": [{"case": c, "mirror": o, "torch": t} for c, o, t in rows]}, f,
                      indent=1)


if __name__ == "__main__":
    main()
