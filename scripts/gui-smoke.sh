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
# One engine thread: on a busy 2-core machine rayon's spinning workers make a run ~3x slower.
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
unset WAYLAND_DISPLAY
export XDG_RUNTIME_DIR=/tmp/xdg-$UID; mkdir -p -m 700 "$XDG_RUNTIME_DIR"

xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" bash -c '
  for i in $(seq 150); do xdpyinfo >/dev/null 2>&1 && break; sleep 0.2; done
  "$BIN" >"$LOG" 2>&1 & APP=$!
  W=""; for i in $(seq 120); do W=$(xdotool search --onlyvisible --name "^Mirror" 2>/dev/null | head -1); [ -n "$W" ] && break; sleep 0.5; done
  [ -n "$W" ] || { echo "no window"; kill $APP; exit 1; }
  for i in $(seq 600); do grep -q "^EVENT finished" "$LOG" && break; kill -0 $APP 2>/dev/null || break; sleep 0.5; done
  sleep 1.5
  import -window root "$SHOT"
  xdotool windowfocus --sync "$W"; sleep 0.3
  xdotool key --window "$W" ctrl+s; sleep 1.5
  kill $APP; wait $APP 2>/dev/null; true
'
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); echo "ok   $1"; else fail=$((fail+1)); echo "FAIL $1"; fi; }
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
