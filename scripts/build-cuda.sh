#!/usr/bin/env bash
# Builds the CUDA-enabled release binary on a machine without a GPU, with the CUDA 13.0
# toolchain from PyPI wheels (recipe: ../shared/docs/gpu.md; details: docs/gpu-ops.md).
# usage: scripts/build-cuda.sh [CUDA_PREFIX]   -> target/release/mirror-diffusion (cuda)
#
# What it needs: nvcc and the CUDA headers/libraries at build time (candle-kernels compiles its
# kernels with nvcc; cudarc reads `nvcc --version` and links libcuda, libcublas, libcublasLt,
# libcurand, libnvrtc). Nothing of that is on a plain machine: the wheels (0.65 GB download)
# go to CUDA_PREFIX (default ~/.cache/mirror-cuda13) once. About 22 minutes on 2 cores cold,
# most of it candle-kernels' quantized kernels; CUDAFORGE_THREADS (env.sh: 2) runs nvcc jobs
# in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-$HOME/.cache/mirror-cuda13}
setup=../shared/tools/cuda/setup.sh
if [ ! -f "$prefix/env.sh" ]; then
    [ -f "$setup" ] || { echo "error: $setup not found (it installs the CUDA 13.0 wheels)" >&2; exit 1; }
    bash "$setup" "$prefix"
fi
# shellcheck disable=SC1091
source "$prefix/env.sh"
command -v nvcc >/dev/null || { echo "error: nvcc not found after sourcing $prefix/env.sh" >&2; exit 1; }
start=$SECONDS
cargo build --release --locked --features cuda
target=${CARGO_TARGET_DIR:-target}
echo "built $target/release/mirror-diffusion with CUDA in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
echo "run time needs libcuda.so.1 (the NVIDIA driver), libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13"
