#!/usr/bin/env bash
# Trains Mirror's demo model from scratch, reproducibly (fixed seeds), into crates/mirror-engine/assets/demo/model.
# Needs Python with torch, diffusers and transformers (training only: Mirror itself never
# needs Python). Wall time on a 2-core machine: about 2 h 10 min with one thread (stage times
# are in the log); with a free second core, the decoder stage can run beside the UNet stage
# (see --decoder-beside-unet / --only-decoder in train_demo.py). To retrain only the UNet and
# text encoder on the shipped autoencoder (48 min), as the 2026-12-07 model was:
#   python3 tools/demo/train_demo.py --threads 1 --ground 0.1 --leak 0.1 --decoder-rounds 2 \
#     --vae-from crates/mirror-engine/assets/demo/model --data DATA --work WORK --out OUT
#
#   tools/demo/train.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/mirror-demo-work}
data=$work/data
python=${PYTHON:-python3}
if [ ! -f "$data/metadata.jsonl" ]; then
  cargo run --release --quiet -- shapes --out "$data" --count 20000 --seed 1 --size 64
fi
# VAE, latents, decoder round 1, UNet + text encoder with grounded cross-attention
# (tools/demo/grounding.py), export.
"$python" tools/demo/train_demo.py --threads 1 --ground 0.1 --leak 0.1 --data "$data" \
  --out crates/mirror-engine/assets/demo/model --work "$work"
# Decoder round 2 (sharper colours on the hard pairs), then the export with it.
"$python" tools/demo/train_demo.py --threads 1 --only-decoder --decoder-rounds 2 --decoder-steps 1500 \
  --decoder-lr 3e-4 --data "$data" --out crates/mirror-engine/assets/demo/model --work "$work"
"$python" tools/demo/train_demo.py --threads 1 --export-checkpoint --decoder-rounds 2 --decoder-steps 0 \
  --data "$data" --out crates/mirror-engine/assets/demo/model --work "$work"
