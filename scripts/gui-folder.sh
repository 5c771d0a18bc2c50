#!/usr/bin/env bash
# The real Mirror window under Xvfb with the built-in demo model: a folder of five demo renders
# of its first image's caption, a damaged PNG and a text file; File -> Apply to a folder...
# (no dialog can appear: the app names the field instead), types the folder into "Photo
# folder" (xdotool), applies the edit to it, waits for the end and saves a screenshot; checks
# the events the app printed and the files it wrote.
# Needs (apt): xvfb xauth mesa-vulkan-drivers libvulkan1 xdotool imagemagick x11-utils
# Usage: scripts/gui-folder.sh [screenshot.png]   (BIN=path/to/mirror-diffusion to skip the build)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHOT=${1:-$ROOT/target/gui-folder/folder-window.png}
OUT=$(dirname "$SHOT")
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin mirror-diffusion >&2 || { echo "gui-folder: 0 passed, 1 failed"; exit 1; }
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/mirror-diffusion
fi
WORK=$(mktemp -d)
PHOTOS=$WORK/photos
mkdir -p "$PHOTOS"
# The demo's first image is "a green star on a red background": five renders of that caption.
"$BIN" shapes --out "$WORK/renders" --count 3000 --seed 5 >/dev/null
grep '"a green star on a red background"' "$WORK/renders/metadata.jsonl" | head -5 |
  sed 's/.*"file_name":"\([^"]*\)".*/\1/' | while read -r f; do cp "$WORK/renders/$f" "$PHOTOS/star-$f"; done
printf '\x89PNG\r\n\x1a\nnot really' > "$PHOTOS/broken.png"
echo "shot on a sunny day" > "$PHOTOS/notes.txt"
export MIRROR_EVENTS=1 MIRROR_MEMORY_CACHE=1
export MIRROR_CONFIG_DIR=$WORK/config MIRROR_EXPORT_DIR=$WORK/exports
export BIN SHOT OUT PHOTOS LOG=$OUT/gui-folder.log
. "$ROOT/scripts/xvfb-lib.sh"

in_xvfb '
  for i in $(seq 120); do grep -q "^EVENT image_loaded" "$LOG" && break; sleep 0.5; done
  sleep 1.5
  # File -> Apply to a folder...: no dialog can appear here, so the app says to type the
  # folder into the Photo folder row it now shows under Export (at 1280x800: y 758).
  xdotool mousemove --window "$W" 20 12 click 1; sleep 1
  xdotool mousemove --window "$W" 70 257 click 1
  for i in $(seq 60); do grep -q "^EVENT dialog_closed_without_choice" "$LOG" && break; sleep 0.5; done
  sleep 1
  xdotool mousemove --window "$W" 160 758 click 1; sleep 0.5
  xdotool windowfocus --sync "$W"; sleep 0.3
  xdotool type --delay 20 "$PHOTOS"; sleep 0.5
  xdotool mousemove --window "$W" 300 758 click 1
  for i in $(seq 600); do grep -q "^EVENT folder_run_finished" "$LOG" && break; kill -0 $APP 2>/dev/null || break; sleep 0.5; done
  xdotool mousemove --window "$W" 900 500; sleep 1.5
  import -window root "$SHOT"
  kill $APP; wait $APP 2>/dev/null; true
'
RESULTS="$WORK/exports/photos edited"
check "the no-dialog note"    'grep -q "^EVENT note No folder was chosen" "$LOG"'
check "folder run finished"   'grep -q "^EVENT folder_run_finished written=5 failed=1 skipped=1 cancelled=false" "$LOG"'
check "five results"          '[ "$(ls "$RESULTS"/star-*.png 2>/dev/null | wc -l)" -eq 5 ]'
check "contact sheet"         '[ -s "$RESULTS/contact-sheet.png" ]'
check "screenshot saved"      '[ -s "$SHOT" ]'
check "no error events"       '! grep -q "^EVENT error" "$LOG"'
echo "screenshot: $SHOT"
rm -rf "$WORK"
echo "gui-folder: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
