#!/usr/bin/env bash
# Makes a second fixture set (another tiny model architecture and its PyTorch references) with
# the shared generator, so the test suite can be run against it:
#   MIRROR_FIXTURES=OUT_DIR/tiny-sd-b-ref cargo test --release
# For developers only (needs Python with torch, diffusers, transformers, safetensors, pillow,
# ftfy; about 10 minutes on one core: 3 generator runs); CI never runs it.
#
# Usage: scripts/make-fixture-set.sh OUT_DIR [SPEC.json]
#   SPEC.json  the model spec, in the form of a VARIANTS entry of make_tiny_model.py (JSON);
#              without it, the "set B" spec below. Besides the keys that generator reads, the
#              spec may set "text_hidden_act" (e.g. "gelu") and, under "unet", SD 2.x keys such
#              as "use_linear_projection", which the shared generator would otherwise fix or
#              trim from the written config.
# Env: ORACLE (default ../shared/tools/oracle), PYTHON (default python3), THREADS (default 1),
# NAME (default tiny-sd-b).
# Writes OUT_DIR/NAME (the model) and OUT_DIR/NAME-ref (the references, with the
# per-tensor atol from compare_precision.py: float64 and 2-thread float32 reruns, as shipped).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: scripts/make-fixture-set.sh OUT_DIR [SPEC.json]}
ORACLE=$(cd "${ORACLE:-$ROOT/../shared/tools/oracle}" && pwd)
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-1}
NAME=${NAME:-tiny-sd-b}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MODEL=$OUT/$NAME
REF=$OUT/$NAME-ref
SPEC=$OUT/$NAME-spec.json
if [ $# -ge 2 ]; then
  cp "$2" "$SPEC"
else
  # Set B: SD 2-style 3-level UNet with a per-block head list and linear projections,
  # 1 layer per block, 16 norm groups; 48-wide 3-layer gelu text encoder (cross_attention_dim
  # 48); x8 VAE with 4 blocks and an explicit scaling_factor; a 3:2 landscape test image.
  cat >"$SPEC" <<'JSON'
{
  "seed": 4321,
  "text": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
           "num_attention_heads": 3},
  "text_hidden_act": "gelu",
  "unet": {
    "sample_size": 8,
    "block_out_channels": [32, 48, 96],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": [2, 4, 4],
    "use_linear_projection": true,
    "norm_num_groups": 16
  },
  "vae": {"block_out_channels": [16, 32, 48, 48], "layers_per_block": 1, "norm_num_groups": 16,
          "sample_size": 64, "explicit_scaling_factor": true},
  "fixture_image_hw": [64, 96]
}
JSON
fi

# Registers the spec as a variant of the shared generator (read-only) and lets it choose
# what that generator fixes: the text activation and the SD 2.x UNet config keys.
"$PYTHON" - "$ORACLE" "$SPEC" "$MODEL" <<'PY'
import json, sys
oracle, spec_path, out_dir = sys.argv[1:4]
sys.path.insert(0, oracle)
import make_tiny_model as gen
from transformers.activations import ACT2FN

spec = json.load(open(spec_path))
act = spec.get("text_hidden_act")
if act:
    build_text_encoder = gen.build_text_encoder

    def build_with_activation(text_spec, rng):
        model = build_text_encoder(text_spec, rng)
        model.config.hidden_act = act   # the activation has no weights: swap it after init
        for module in model.modules():
            if hasattr(module, "activation_fn"):
                module.activation_fn = ACT2FN[act]
        return model

    gen.build_text_encoder = build_with_activation
gen.UNET_KEYS.extend(k for k in ("use_linear_projection", "upcast_attention", "num_attention_heads")
                     if k in spec["unet"] and k not in gen.UNET_KEYS)
gen.VARIANTS["x"] = dict(spec, default_out=out_dir)
import torch
torch.set_num_threads(1)
pipe, log = gen.build("x", out_dir)
print(json.dumps(gen.check(out_dir, pipe), indent=1)[:2000])
PY

# float32 references (shipped), then a float64 and a 2-thread float32 rerun for the tolerances.
"$PYTHON" "$ORACLE/make_fixtures.py" "$MODEL" "$REF" --threads "$THREADS"
"$PYTHON" "$ORACLE/make_fixtures.py" "$MODEL" "$OUT/$NAME-f64" --dtype float64 --threads "$THREADS" \
  --stepwise-report "$OUT/$NAME-stepwise.json"
"$PYTHON" "$ORACLE/make_fixtures.py" "$MODEL" "$OUT/$NAME-alt" --threads 2
"$PYTHON" "$ORACLE/compare_precision.py" "$REF" "$OUT/$NAME-f64" --alt "$OUT/$NAME-alt" \
  --stepwise "$OUT/$NAME-stepwise.json" --write
rm -rf "$OUT/$NAME-f64" "$OUT/$NAME-alt"
echo "fixture set ready: MIRROR_FIXTURES=$REF"
