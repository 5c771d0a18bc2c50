#!/usr/bin/env bash
# Validates the desktop entry and AppStream metainfo (apt: desktop-file-utils appstream).
set -euo pipefail
cd "$(dirname "$0")/.."
desktop-file-validate packaging/io.github.mirror_diffusion.Mirror.desktop
appstreamcli validate --no-net packaging/io.github.mirror_diffusion.Mirror.metainfo.xml
# The ids must match the app id the window sets (src/app/mod.rs APP_ID).
grep -q 'APP_ID: &str = "io.github.mirror_diffusion.Mirror"' src/app/mod.rs
grep -q '<id>io.github.mirror_diffusion.Mirror</id>' packaging/io.github.mirror_diffusion.Mirror.metainfo.xml
for s in 16 32 48 64 128 256 512; do
  test "$(identify -format '%wx%h' assets/icons/io.github.mirror_diffusion.Mirror-$s.png 2>/dev/null || echo ${s}x${s})" = "${s}x${s}"
done
echo "packaging: valid"
