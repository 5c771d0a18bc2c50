#!/usr/bin/env bash
# Starts the real Mirror window under Xvfb with the tiny fixture model and image, runs a
# 4-step translation, exports with Ctrl+S, and saves a screenshot.
# Needs (apt): xvfb xauth mesa-vulkan-drivers libvulkan1 xdotool imagemagick x11-utils
# (scripts/gui-files.sh also: xclip python3-gi gir1.2-gtk-3.0)
# Usage: scripts/gui-smoke.sh [screenshot.png]   (BIN=path/to/mirror-diffusion to skip the build)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHOT=${1:-$ROOT/target/gui-smoke/mirror-window.png}
OUT=$(dirname "$SHOT")
mkdir -p "$OUT"
FIX=$ROOT/../shared/fixtures
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin mirror-diffusion >&2 || { echo "gui-smoke: 0 passed, 1 failed"; exit 1; }
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/mirror-diffusion
fi
WORK=$(mktemp -d)
export MIRROR_MODEL=$FIX/tiny-sd MIRROR_IMAGE=$FIX/tiny-sd-ref/test_image.png
export MIRROR_SOURCE="a photo of a cat" MIRROR_TARGET="a photo of a dog" MIRROR_STEPS=${MIRROR_STEPS:-4}
export MIRROR_DECODE_EVERY=1 MIRROR_AUTORUN=1 MIRROR_EVENTS=1 MIRROR_MEMORY_CACHE=1
export MIRROR_CONFIG_DIR=$WORK/config MIRROR_EXPORT_DIR=$WORK/exports
export BIN SHOT LOG=$OUT/gui-smoke.log
. "$ROOT/scripts/xvfb-lib.sh"

in_xvfb '
  for i in $(seq 600); do grep -q "^EVENT finished" "$LOG" && break; kill -0 $APP 2>/dev/null || break; sleep 0.5; done
  sleep 1.5
  import -window root "$SHOT"
  xdotool windowfocus --sync "$W"; sleep 0.3
  xdotool key --window "$W" ctrl+s; sleep 1.5
  kill $APP; wait $APP 2>/dev/null; true
'
check "model loaded"        'grep -q "^EVENT model_loaded" "$LOG"'
check "image loaded"        'grep -q "^EVENT image_loaded" "$LOG"'
check "run finished"        'grep -q "^EVENT finished cancelled=false" "$LOG"'
check "per-step previews"   '[ "$(grep -c "^EVENT step " "$LOG")" -ge "$MIRROR_STEPS" ]'
check "exported (Ctrl+S)"   'grep -q "^EVENT exported" "$LOG" && ls "$MIRROR_EXPORT_DIR"/*-translation.png >/dev/null 2>&1'
check "screenshot saved"    '[ -s "$SHOT" ]'
check "no error events"     '! grep -q "^EVENT error" "$LOG"'
grep "^EVENT finished" "$LOG" | sed "s/^/  /"
echo "screenshot: $SHOT"
rm -rf "$WORK"
echo "gui-smoke: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
