#!/usr/bin/env bash
# The real Mirror window under Xvfb, files in without a file dialog:
#  1. Ctrl+O where no dialog can appear (no desktop portal under Xvfb): the app says so
#     (EVENT dialog_closed_without_choice) and names the other ways in;
#  2. one of them: a path on the clipboard, pasted with Ctrl+V, opens the image;
#  3. a real XDND drop of the fixture image from a GTK drag source onto the window.
# Needs (apt): xvfb xauth mesa-vulkan-drivers libvulkan1 xdotool imagemagick x11-utils xclip
#              python3-gi gir1.2-gtk-3.0
# Usage: scripts/gui-files.sh   (BIN=path/to/mirror-diffusion to skip the build)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FIX=$ROOT/../shared/fixtures
DRAGSRC=$ROOT/../shared/tools/xdnd-drag-source.py
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin mirror-diffusion >&2 || { echo "gui-files: 0 passed, 1 failed"; exit 1; }
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/mirror-diffusion
fi
WORK=$(mktemp -d)
OUT=${OUT:-$ROOT/target/gui-files}; mkdir -p "$OUT"
# A 3:2 copy of the fixture image for the drop (its shape must survive).
convert "$FIX/tiny-sd-ref/test_image.png" -resize '150%x100%!' "$WORK/landscape.png"
export MIRROR_MODEL=$FIX/tiny-sd MIRROR_EVENTS=1 MIRROR_MEMORY_CACHE=1
export MIRROR_CONFIG_DIR=$WORK/config MIRROR_EXPORT_DIR=$WORK/exports
export BIN DRAGSRC WORK LOG=$OUT/gui-files.log SHOT=$OUT/gui-files.png
unset MIRROR_IMAGE
. "$ROOT/scripts/xvfb-lib.sh"

in_xvfb '
  for i in $(seq 240); do grep -q "^EVENT model_loaded" "$LOG" && break; sleep 0.5; done
  xdotool windowfocus --sync "$W"; sleep 0.5
  # 1. The dialog cannot appear here: the app must say so.
  xdotool key --window "$W" ctrl+o
  for i in $(seq 40); do grep -q "^EVENT dialog_closed_without_choice" "$LOG" && break; sleep 0.25; done
  # 2. Paste the path instead (the way in the hint names).
  printf "%s" "'"$FIX"'/tiny-sd-ref/test_image.png" | xclip -selection clipboard
  sleep 0.3; xdotool key --window "$W" ctrl+v
  for i in $(seq 40); do grep -q "^EVENT image_loaded" "$LOG" && break; sleep 0.25; done
  # 3. A real XDND drop from a GTK drag source.
  /usr/bin/python3 "$DRAGSRC" "$WORK/landscape.png" >"$WORK/dragsrc.log" 2>&1 & SRC=$!
  S=""; for i in $(seq 40); do S=$(xdotool search --onlyvisible --name "^dragsrc" 2>/dev/null | head -1); [ -n "$S" ] && break; sleep 0.25; done
  if [ -n "$S" ]; then
    eval $(xdotool getwindowgeometry --shell "$S")
    xdotool mousemove $((X + 90)) $((Y + 50)); sleep 0.3
    xdotool mousedown 1; sleep 0.3
    for p in 100 300 500 640; do xdotool mousemove $p 400; sleep 0.2; done
    xdotool mouseup 1
    for i in $(seq 40); do [ "$(grep -c "^EVENT image_loaded" "$LOG")" -ge 2 ] && break; sleep 0.25; done
  fi
  sleep 1; import -window root "$SHOT"
  kill $SRC $APP 2>/dev/null; wait $APP 2>/dev/null; true
'
SIZE=$(identify -format "%wx%h" "$WORK/landscape.png" 2>/dev/null)
PASTED=$(identify -format "%wx%h" "$FIX/tiny-sd-ref/test_image.png" 2>/dev/null)
FIRST=$(grep -m1 "^EVENT image_loaded" "$LOG")
check "model loaded"                   'grep -q "^EVENT model_loaded" "$LOG"'
check "no dialog: the user is told"    'grep -q "^EVENT dialog_closed_without_choice" "$LOG" && grep -q "No file was chosen" "$LOG"'
check "pasted path opens the image"    '[ "$FIRST" = "EVENT image_loaded $PASTED" ]'
check "XDND drop opens the 3:2 image"  'grep -q "^EVENT image_loaded $SIZE\$" "$LOG"'
check "no error events"                '! grep -q "^EVENT error" "$LOG"'
echo "screenshot: $SHOT"
rm -rf "$WORK"
echo "gui-files: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
