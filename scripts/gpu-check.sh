#!/usr/bin/env bash
# The GPU check, in two halves (a lent GPU machine has the driver and nvcc but no Rust and no
# network; see ../shared/docs/gpu.md):
#
#   scripts/gpu-check.sh prepare   here: builds the CUDA binaries (scripts/build-cuda.sh's
#                                  toolchain) and packs them with the tiny fixtures into
#                                  .gpu/bundle.tar.xz (git-ignored; under the 64 MiB carry limit)
#   scripts/gpu-check.sh run       on the GPU machine, from the repository root (device tool:
#                                  carry [".gpu"]): the parity suite on CUDA in f32 and in half
#                                  precision, the SD 1.5-size benchmark cases, one 512² 50-step
#                                  MirrorDiffusion translate with random SD 1.5 weights; prints
#                                  one table and writes everything under $OUT (or .gpu/out).
#
# Env (run): GPU_CHECK_QUICK=1 times each benchmark case twice instead of three times.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GPU=$ROOT/.gpu
# The parity tests that matter on a device: UNet forward/gradients, the pipeline stages,
# MirrorDiffusion, half precision. (Every test binary carries the CUDA kernels: all of them
# would not fit the carry limit.)
TESTS=(unet pipeline mirror precision)

prepare() {
    local prefix=${CUDA_PREFIX:-$HOME/.cache/mirror-cuda13}
    scripts/build-cuda.sh "$prefix"
    # shellcheck disable=SC1091
    source "$prefix/env.sh"
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    cargo build --release --locked --features cuda
    cargo build --release --locked -p mirror-engine --features cuda --example random_sd15
    cargo bench --locked -p mirror-engine --features cuda --bench engine --no-run
    local test_bins=()
    for t in "${TESTS[@]}"; do
        local bin
        bin=$(cargo test --release --locked -p mirror-engine --features cuda --test "$t" --no-run --message-format=json 2>/dev/null |
            python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]: print(m["executable"])' | tail -1)
        test_bins+=("$bin")
    done
    local bench
    bench=$(ls -t "$target"/release/deps/engine-* | grep -v '\.d$' | head -1)
    rm -rf "$GPU/stage" && mkdir -p "$GPU/stage/bin" "$GPU/stage/fixtures"
    cp "$target/release/mirror-diffusion" "$target/release/examples/random_sd15" "$GPU/stage/bin/"
    cp "$bench" "$GPU/stage/bin/bench-engine"
    for i in "${!TESTS[@]}"; do cp "${test_bins[$i]}" "$GPU/stage/bin/test-${TESTS[$i]}"; done
    strip "$GPU"/stage/bin/* 2>/dev/null || true
    cp -r ../shared/fixtures/tiny-sd ../shared/fixtures/tiny-sd-ref "$GPU/stage/fixtures/"
    echo "$ROOT" > "$GPU/stage/build-root.txt"
    tar -C "$GPU/stage" -cJf "$GPU/bundle.tar.xz" .
    rm -rf "$GPU/stage"
    local mib=$(( $(stat -c %s "$GPU/bundle.tar.xz") / 1048576 ))
    echo "packed $GPU/bundle.tar.xz: ${mib} MiB"
    [ "$mib" -lt 60 ] || { echo "error: the bundle is over the carry limit" >&2; exit 1; }
}

run() {
    local out=${OUT:-$GPU/out}
    local work=$GPU/run
    mkdir -p "$out" "$work"
    tar -C "$work" -xJf "$GPU/bundle.tar.xz"
    # The test binaries find assets and fixtures relative to the folder they were built in.
    local built
    built=$(cat "$work/build-root.txt")
    if [ ! -e "$built" ]; then mkdir -p "$(dirname "$built")" && ln -sfn "$ROOT" "$built"; fi
    export MIRROR_FIXTURES=$work/fixtures/tiny-sd-ref MIRROR_ASSETS=$ROOT/crates/mirror-engine/assets
    local nvlib
    nvlib=$(python3 -c "import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],'cu13','lib'))" 2>/dev/null || true)
    export LD_LIBRARY_PATH=${nvlib}:/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    ldd "$work/bin/mirror-diffusion" | grep -E "libcu|not found" | tee "$out/ldd.txt" || true

    local rows=()
    row() { rows+=("$(printf '%-44s %s' "$1" "$2")"); }
    tests_in() { # label env...
        local label=$1; shift
        local pass=0 fail=0
        for t in "${TESTS[@]}"; do
            if env "$@" "$work/bin/test-$t" --test-threads=1 >"$out/test-$t-$label.log" 2>&1; then
                pass=$((pass + 1))
            else
                fail=$((fail + 1))
            fi
            grep -E "^test result" "$out/test-$t-$label.log" | sed "s/^/$t ($label): /" || true
        done
        row "parity suite, CUDA, $label" "$pass files passed, $fail failed"
    }
    tests_in f32 MIRROR_DEVICE=cuda
    tests_in f16 MIRROR_DEVICE=cuda MIRROR_PRECISION=f16
    tests_in bf16 MIRROR_DEVICE=cuda MIRROR_PRECISION=bf16

    local quick=()
    [ -n "${GPU_CHECK_QUICK:-}" ] && quick=(--quick)
    MIRROR_DEVICE=cuda "$work/bin/bench-engine" --only unet_full,vae_full,clip_full,translate_full \
        "${quick[@]}" --out "$out/bench.json" >"$out/bench.log" 2>&1 || true
    python3 - "$out/bench.json" >"$out/bench-rows.txt" <<'EOF' || true
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    t = r.get("median_s")
    print(f'{r["case"]:<44} {t:.3f} s' if t is not None else f'{r["case"]:<44} {r.get("error", "failed")}')
EOF
    while IFS= read -r line; do rows+=("$line"); done <"$out/bench-rows.txt"

    "$work/bin/random_sd15" "$work/sd15-random" f16 >"$out/random_sd15.log" 2>&1
    local start end
    start=$(date +%s.%N)
    if "$work/bin/mirror-diffusion" translate --model "$work/sd15-random" \
        --image "$work/fixtures/tiny-sd-ref/test_image.png" --source "a photo of a cat" \
        --target "a photo of a dog" --size 512x512 --resize stretch --steps 50 --no-ddim \
        --device cuda --out "$out/translate-512.png" >"$out/translate.log" 2>&1; then
        end=$(date +%s.%N)
        row "translate 512² 50 steps MirrorDiffusion (auto precision)" \
            "$(python3 -c "print(f'{$end - $start:.1f} s')")"
    else
        row "translate 512² 50 steps MirrorDiffusion" "failed: $(tail -1 "$out/translate.log")"
    fi

    {
        echo "GPU check ($(cat "$out/gpu.txt"))"
        printf '%s\n' "${rows[@]}"
    } | tee "$out/table.txt"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: scripts/gpu-check.sh prepare|run" >&2; exit 2 ;;
esac
