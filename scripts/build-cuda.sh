#!/usr/bin/env bash
# Builds the CUDA-enabled release binary on a machine without a GPU, with the CUDA 13.0
# toolchain from PyPI wheels (recipe: ../shared/docs/gpu.md).
# usage: scripts/build-cuda.sh [CUDA_PREFIX]   -> target/release/mirror-diffusion (cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-$HOME/.cache/mirror-cuda13}
setup=../shared/tools/cuda/setup.sh
if [ ! -f "$prefix/env.sh" ]; then
    [ -x "$setup" ] || { echo "error: $setup not found (it installs the CUDA 13.0 wheels)" >&2; exit 1; }
    "$setup" "$prefix"
fi
# shellcheck disable=SC1091
source "$prefix/env.sh"
cargo build --release --locked --features cuda
echo "built target/release/mirror-diffusion with CUDA (needs libcuda.so.1, libcudart.so.13, libcublas.so.13 at run time)"
