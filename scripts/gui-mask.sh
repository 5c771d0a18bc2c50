#!/usr/bin/env bash
# The real Mirror window under Xvfb with the built-in demo model and its first demo image
# (the tiny fixture model only makes noise, so an edit region would show nothing): paints an
# edit region on the Mask tab with real pointer strokes (xdotool), runs the translation with
# it (Ctrl+Enter), opens the before/after view with the mask tinted and saves a screenshot;
# checks the events the app printed. MODEL=fixture uses the tiny fixture model instead.
# Needs (apt): xvfb xauth mesa-vulkan-drivers libvulkan1 xdotool imagemagick x11-utils
# Usage: scripts/gui-mask.sh [screenshot.png]   (BIN=path/to/mirror-diffusion to skip the build)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHOT=${1:-$ROOT/target/gui-mask/mask-window.png}
OUT=$(dirname "$SHOT")
mkdir -p "$OUT"
FIX=$ROOT/../shared/fixtures
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin mirror-diffusion >&2 || { echo "gui-mask: 0 passed, 1 failed"; exit 1; }
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/mirror-diffusion
fi
WORK=$(mktemp -d)
if [ "${MODEL:-demo}" = fixture ]; then
  export MIRROR_MODEL=$FIX/tiny-sd MIRROR_IMAGE=$FIX/tiny-sd-ref/test_image.png
  export MIRROR_SOURCE="a photo of a cat" MIRROR_TARGET="a photo of a dog"
fi
export MIRROR_STEPS=${MIRROR_STEPS:-20}
export MIRROR_DECODE_EVERY=1 MIRROR_EVENTS=1 MIRROR_MEMORY_CACHE=1
export MIRROR_CONFIG_DIR=$WORK/config MIRROR_EXPORT_DIR=$WORK/exports
export BIN SHOT OUT LOG=$OUT/gui-mask.log
. "$ROOT/scripts/xvfb-lib.sh"

in_xvfb '
  for i in $(seq 120); do grep -q "^EVENT model_loaded" "$LOG" && grep -q "^EVENT image_loaded" "$LOG" && break; sleep 0.5; done
  sleep 1
  # The Mask tab; the photo fills x 392..1005, y 150..763 at 1280x800.
  xdotool mousemove --window "$W" 628 44 click 1; sleep 1
  # Strokes across the middle of the photo (rows y0..y1 from x0 to x1, window points).
  for y in $(seq ${Y0:-260} 40 ${Y1:-580}); do
    xdotool mousemove --window "$W" ${X0:-470} $y mousedown 1; sleep 0.2
    for x in $(seq ${X0:-470} 40 ${X1:-810}); do xdotool mousemove --window "$W" $x $y; sleep 0.1; done
    xdotool mouseup 1; sleep 0.3
  done
  xdotool mousemove --window "$W" 1150 400; sleep 1
  import -window root "$OUT/mask-tab.png"
  xdotool windowfocus --sync "$W"; sleep 0.3
  xdotool key --window "$W" ctrl+Return
  for i in $(seq 600); do grep -q "^EVENT finished" "$LOG" && break; kill -0 $APP 2>/dev/null || break; sleep 0.5; done
  sleep 1
  # Before/after, with the mask the run used tinted over it.
  xdotool mousemove --window "$W" 562 44 click 1; sleep 1
  import -window root "$OUT/compare-before-mask.png"
  xdotool mousemove --window "$W" ${MASK_BOX_X:-556} ${MASK_BOX_Y:-86} click 1; sleep 0.5
  xdotool mousemove --window "$W" 1200 700; sleep 1.5
  import -window root "$SHOT"
  kill $APP; wait $APP 2>/dev/null; true
'
check "model loaded"        'grep -q "^EVENT model_loaded" "$LOG"'
check "strokes painted"     '[ "$(grep -c "^EVENT mask_stroke_ended" "$LOG")" -ge 6 ]'
check "run finished"        'grep -q "^EVENT finished cancelled=false" "$LOG"'
check "screenshot saved"    '[ -s "$SHOT" ]'
check "no error events"     '! grep -q "^EVENT error" "$LOG"'
grep "^EVENT mask_stroke_ended" "$LOG" | tail -1 | sed "s/^/  /"
echo "screenshot: $SHOT"
rm -rf "$WORK"
echo "gui-mask: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
