#!/usr/bin/env bash
# The app as a new user first sees it, in a real window under Xvfb: no settings, no model
# given, so it opens the built-in demo model with a demo image; the run starts by itself and
# the window is photographed when it has finished.
#   scripts/demo-screenshot.sh [OUT.png]   (default docs/demo-window.png)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHOT=${1:-$ROOT/docs/demo-window.png}
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin mirror-diffusion >&2 || exit 1
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/mirror-diffusion
fi
WORK=$(mktemp -d)
export MIRROR_AUTORUN=1 MIRROR_EVENTS=1 MIRROR_MEMORY_CACHE=1 MIRROR_DECODE_EVERY=${MIRROR_DECODE_EVERY:-5}
export MIRROR_CONFIG_DIR=$WORK/config MIRROR_EXPORT_DIR=$WORK/exports MIRROR_CACHE=$WORK/cache
export BIN SHOT LOG=$WORK/app.log RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
unset WAYLAND_DISPLAY MIRROR_MODEL MIRROR_IMAGE MIRROR_SOURCE MIRROR_TARGET
export XDG_RUNTIME_DIR=/tmp/xdg-$UID; mkdir -p -m 700 "$XDG_RUNTIME_DIR"
xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" bash -c '
  for i in $(seq 150); do xdpyinfo >/dev/null 2>&1 && break; sleep 0.2; done
  "$BIN" >"$LOG" 2>&1 & APP=$!
  for i in $(seq 1200); do grep -q "^EVENT finished" "$LOG" && break; kill -0 $APP 2>/dev/null || break; sleep 0.5; done
  sleep 1.5
  import -window root "$SHOT"
  kill $APP; wait $APP 2>/dev/null; true
'
grep -E "^EVENT (model_loaded|finished|error)" "$LOG"
grep -q "^EVENT finished cancelled=false" "$LOG" && [ -s "$SHOT" ] && echo "screenshot: $SHOT"
status=$?
rm -rf "$WORK"
exit $status
