#!/usr/bin/env python3
"""How grounded a demo model's cross-attention is: the share of the object phrase's attention
inside the object and of the background phrase's outside it, at 30 % and 60 % noise, on
renders the model was not trained on (seed 99 of `mirror-diffusion shapes`).

  python3 tools/demo/probe_attention.py --model crates/mirror-engine/assets/demo/model --data /tmp/probe-data
  python3 tools/demo/probe_attention.py --checkpoint /tmp/demo-work --data /tmp/probe-data   # EMA of a run

A flat map scores the object's share of the picture (about 0.2 inside, 0.8 outside)."""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grounding  # noqa: E402
import train_demo  # noqa: E402


def load(args):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    model = args.model
    vae = AutoencoderKL.from_pretrained(os.path.join(model or args.vae_from, "vae"), torch_dtype=torch.float32)
    tok_dir = os.path.join(model, "tokenizer") if model else os.path.join(args.checkpoint, "tokenizer")
    tok = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"))
    if model:
        unet = UNet2DConditionModel.from_pretrained(os.path.join(model, "unet"), torch_dtype=torch.float32)
        text = CLIPTextModel.from_pretrained(os.path.join(model, "text_encoder"), torch_dtype=torch.float32)
    else:
        import json
        saved = argparse.Namespace(**json.load(open(os.path.join(args.checkpoint, "args.json"))))
        vocab = tok.get_vocab()
        text = train_demo.make_text_encoder(saved, len(vocab), vocab[train_demo.BOS], vocab[train_demo.EOS])
        unet = train_demo.make_unet(saved, saved.size // 8)
        ck = torch.load(os.path.join(args.checkpoint, "unet_ckpt.pt"))
        params = list(unet.parameters()) + list(text.parameters())
        with torch.no_grad():
            for e, p in zip(ck["ema"], params):
                p.copy_(e)
        print(f"checkpoint step {ck['step']}")
    return vae.eval(), tok, unet.eval(), text.eval()


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--checkpoint", help="a training work folder (its EMA weights)")
    ap.add_argument("--vae-from", default="crates/mirror-engine/assets/demo/model")
    ap.add_argument("--data", required=True, help="renders: mirror-diffusion shapes --out DIR --count 64 --seed 99")
    ap.add_argument("--count", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    vae, tok, unet, text = load(args)
    store = grounding.record_cross_attention(unet)
    images, captions, coverage = train_demo.load_dataset(args.data, args.count)
    z0 = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    emb = text(train_demo.tokenize(tok, captions))[0]
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(**{k: v for k, v in train_demo.SD1_SCHEDULER.items()
                             if k not in ("set_alpha_to_one", "steps_offset")})
    gen = torch.Generator().manual_seed(0)
    for level in (0.3, 0.6):
        t = torch.full((len(z0),), int(level * 1000))
        zt = sched.add_noise(z0, torch.randn(z0.shape, generator=gen), t)
        store.clear()
        unet(zt, t, encoder_hidden_states=emb)
        inside, outside = grounding.attention_inside(store, coverage)
        print(f"noise {level:.0%}: object phrase inside the object {inside:.3f}, "
              f"background phrase outside it {outside:.3f}, object share of the picture "
              f"{float(coverage.mean()):.3f}")


if __name__ == "__main__":
    main()
