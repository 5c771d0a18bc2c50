#!/usr/bin/env bash
# Builds the Debian package (`cargo deb`, from the release binary the tests built), unpacks it
# into a scratch root (`dpkg-deb -x`) and checks the installed app as a user would get it: the
# binary starts, its desktop entry and icons are where the desktop looks, and it translates a
# picture with its built-in demo model (no --model). Usage: packaging/deb-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mirror-ci-target}"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version "^3"

deb=$(cargo deb --locked --no-build 2>/dev/null | tail -n 1)
test -f "$deb" || { echo "deb-check: cargo deb wrote no package ($deb)"; exit 1; }
dpkg-deb --field "$deb" Package Version Depends
root=$(mktemp -d)
dpkg-deb -x "$deb" "$root"
bin="$root/usr/bin/mirror-diffusion"
"$bin" --version
desktop-file-validate "$root/usr/share/applications/io.github.mirror_diffusion.Mirror.desktop"
test -f "$root/usr/share/metainfo/io.github.mirror_diffusion.Mirror.metainfo.xml"
for s in 16 32 48 64 128 256 512; do
  test -f "$root/usr/share/icons/hicolor/${s}x${s}/apps/io.github.mirror_diffusion.Mirror.png"
done
test -f "$root/usr/share/icons/hicolor/scalable/apps/io.github.mirror_diffusion.Mirror.svg"

# The installed binary on a demo picture, with its own demo model (unpacked to a fresh cache).
work=$(mktemp -d)
export XDG_CACHE_HOME="$work/cache"
"$bin" shapes --out "$work/shapes" --count 1 --seed 3 >/dev/null
caption=$(sed -n 's/.*"text": *"\([^"]*\)".*/\1/p' "$work/shapes/metadata.jsonl" | head -n 1)
photo=$(sed -n 's/.*"file_name": *"\([^"]*\)".*/\1/p' "$work/shapes/metadata.jsonl" | head -n 1)
case "$caption" in
  *circle*) target=${caption/circle/square} ;;
  *) target=$(echo "$caption" | sed -E 's/(square|triangle|star)/circle/') ;;
esac
"$bin" translate --image "$work/shapes/$photo" --source "$caption" --target "$target" \
  --steps 10 --threads 1 --no-ddim --out "$work/edited.png"
"$bin" shapes --classify "$work/edited.png"
echo "deb-check: $(basename "$deb") ($(du -h "$deb" | cut -f1)) installs and translates \"$caption\" to \"$target\""
