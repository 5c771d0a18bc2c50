#!/usr/bin/env python3
"""Train Mirror's demo model: a small Stable Diffusion 1.x pipeline for the shapes world.

The data comes from Mirror itself (`mirror-diffusion shapes --out DIR --count N --seed S`):
PNG images and `metadata.jsonl` captions of the grammar
`a {colour} {shape} on a {background} background`.

The model is exactly the SD 1.x layout and classes (diffusers `StableDiffusionPipeline`
folder): CLIP BPE tokenizer files (vocab.json + merges.txt, only the demo's words),
`CLIPTextModel`, `UNet2DConditionModel`, `AutoencoderKL` with the x8 SD layout (four
`DownEncoderBlock2D`), `DDIMScheduler` with SD 1.x betas and `clip_sample` false. Weights are
saved in float16. Nothing in Mirror special-cases it.

Stages (each resumable from its checkpoint in --work):
  1. tokenizer   the demo vocabulary as CLIP BPE files
  2. vae         autoencoder, pixel L1 + L2 + tiny KL; then the latent scaling factor
  3. latents     posterior means of the whole data set, encoded once
  4. unet        UNet + text encoder trained together (epsilon prediction, 10 % empty
                 captions for classifier-free guidance), EMA of the weights
  5. export      the diffusers folder, float16, with the loss curves

Usage (2 threads, fixed seed; wall time and losses go to --work/log.csv):
  python3 tools/demo/train_demo.py --data /tmp/shapes --out crates/mirror-engine/assets/demo/model --work /tmp/demo-work
"""
import argparse
import csv
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grounding  # noqa: E402

WORDS = ["a", "on", "background",
         "red", "orange", "yellow", "green", "blue", "purple", "white", "black",
         "circle", "square", "triangle", "star"]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LEN = 16  # the grammar needs 10 tokens with BOS/EOS; Mirror pads to max_position_embeddings
SD1_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                     steps_offset=1, prediction_type="epsilon")


def log_line(work, stage, step, **values):
    path = os.path.join(work, "log.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["time", "stage", "step", "name", "value"])
        for k, v in values.items():
            w.writerow([f"{time.time():.1f}", stage, step, k, f"{v:.6g}"])


# ---------------------------------------------------------------- 1. tokenizer
def bpe(word, ranks):
    """CLIP's BPE on one word (greedy lowest-rank merge), as a list of symbols."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == math.inf:
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
    return symbols


def build_tokenizer(out_dir):
    """Merges that make every demo word one token (checked by running BPE); the vocabulary
    holds just the symbols those merges need, so any other word is not the demo's."""
    merges, ranks = [], {}
    changed = True
    while changed:
        changed = False
        for word in WORDS:
            symbols = bpe(word, ranks)
            if len(symbols) > 1:
                pair = (symbols[0], symbols[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                changed = True
    symbols = []
    for word in WORDS:
        for s in list(word[:-1]) + [word[-1] + "</w>"]:
            if s not in symbols:
                symbols.append(s)
    for a, b in merges:
        if a + b not in symbols:
            symbols.append(a + b)
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, f, indent=2)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LEN, "do_lower_case": True,
                   "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS,
                   "errors": "replace", "add_prefix_space": False}, f, indent=2)
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer(os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt"))
    for word in WORDS:
        ids = tok(word).input_ids
        assert len(ids) == 3 and tok.convert_ids_to_tokens(ids[1]) == word + "</w>", (word, ids)
    return tok


def tokenize(tok, captions):
    return tok(captions, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt").input_ids


# ---------------------------------------------------------------- data
# The renderer's palette (crates/mirror-engine/src/shapes/mod.rs, `Colour::rgb`).
PALETTE = {"red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (245, 220, 30), "green": (30, 160, 50),
           "blue": (30, 80, 220), "purple": (140, 40, 180), "white": (245, 245, 245), "black": (15, 15, 15)}


def object_coverage(img, caption):
    """The shape's coverage of each pixel, 0-1: the renderer blends the shape's colour over the
    background by coverage, so projecting a pixel onto the line between the two colours
    recovers it exactly (up to rounding)."""
    words = caption.split()
    fg, bg = np.array(PALETTE[words[1]], np.float32), np.array(PALETTE[words[5]], np.float32)
    d = fg - bg
    return np.clip(((img.astype(np.float32) - bg) @ d) / float(d @ d), 0.0, 1.0)


def load_dataset(data_dir, limit=None):
    images, captions, masks = [], [], []
    with open(os.path.join(data_dir, "metadata.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            img = np.asarray(Image.open(os.path.join(data_dir, row["file_name"])).convert("RGB"))
            images.append(img)
            captions.append(row["text"])
            masks.append(object_coverage(img, row["text"]))
            if limit and len(images) >= limit:
                break
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, captions, torch.from_numpy(np.stack(masks))[:, None]


# ---------------------------------------------------------------- 2. vae
def make_vae(args):
    from diffusers import AutoencoderKL
    ch = [int(c) for c in args.vae_channels.split(",")]
    assert len(ch) == 4, "the SD x8 autoencoder has four blocks"
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, act_fn="silu",
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         block_out_channels=ch, layers_per_block=args.vae_layers,
                         norm_num_groups=args.vae_groups, sample_size=args.size)


def adopt_vae(args):
    """--vae-from MODEL: the autoencoder (and its latent scaling) of an earlier demo model,
    in float32, as the finished VAE and decoder stages, so a retrained UNet reads the same
    latents the shipped decoder decodes."""
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(os.path.join(args.vae_from, "vae"), torch_dtype=torch.float32)
    for stage in ["vae"] + ["vae_sharp" + (str(r) if r > 1 else "") for r in range(1, args.decoder_rounds + 1)]:
        path = os.path.join(args.work, stage)
        if not os.path.exists(os.path.join(path, "config.json")):
            vae.save_pretrained(path)
    return vae


def train_vae(args, images):
    path = os.path.join(args.work, "vae")
    from diffusers import AutoencoderKL
    if args.vae_from:
        return adopt_vae(args)
    if os.path.exists(os.path.join(path, "config.json")):
        return AutoencoderKL.from_pretrained(path)
    vae = make_vae(args).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 2)
    start = time.time()
    for step in range(1, args.vae_steps + 1):
        idx = torch.randint(0, len(images), (args.vae_batch,), generator=gen)
        x = images[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        y = vae.decode(z).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(y, x) + F.mse_loss(y, x) + args.vae_kl * kl
        lr = args.vae_lr * min(1.0, step / 200) * (0.5 * (1 + math.cos(math.pi * step / args.vae_steps)) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == 1:
            log_line(args.work, "vae", step, loss=loss.item(), kl=kl.item(), seconds=time.time() - start)
            print(f"vae {step}/{args.vae_steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    vae.eval().save_pretrained(path)
    return vae


@torch.no_grad()
def encode_all(args, vae, images):
    path = os.path.join(args.work, "latents.pt")
    if os.path.exists(path):
        return torch.load(path)
    means = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    # An adopted autoencoder keeps the scaling its model was shipped with.
    scaling = float(vae.config.scaling_factor) if args.vae_from else 1.0 / float(means.std())
    torch.save({"means": means, "scaling": scaling}, path)
    return {"means": means, "scaling": scaling}


# ---------------------------------------------------------------- 3b. decoder
def finetune_decoder(args, vae, images, latents):
    """Sharpens the decoder on the cached latents while the encoder stays as it was, so the
    latents the UNet learns from do not change (this stage can run beside the UNet's)."""
    from diffusers import AutoencoderKL
    rounds = [os.path.join(args.work, "vae_sharp" + (str(r) if r > 1 else "")) for r in range(1, args.decoder_rounds + 1)]
    done = [p for p in rounds if os.path.exists(os.path.join(p, "config.json"))]
    if len(done) == len(rounds):
        return AutoencoderKL.from_pretrained(rounds[-1])
    if args.decoder_steps == 0:
        return AutoencoderKL.from_pretrained(done[-1]) if done else vae
    if done:  # a later round goes on from the last one, at the same settings
        vae = AutoencoderKL.from_pretrained(done[-1])
    path = rounds[len(done)]
    vae.train()
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 5 + len(done))
    means = latents["means"]
    noise_std = args.decoder_noise * float(means.std())
    start = time.time()
    for step in range(1, args.decoder_steps + 1):
        idx = torch.randint(0, len(images), (args.vae_batch,), generator=gen)
        x = images[idx]
        # A little noise: the decoder also meets the UNet's imperfect latents.
        z = means[idx] + noise_std * torch.randn(means[idx].shape, generator=gen)
        y = vae.decode(z).sample
        loss = F.l1_loss(y, x) + F.mse_loss(y, x)
        lr = args.decoder_lr * min(1.0, step / 100) * (0.5 * (1 + math.cos(math.pi * step / args.decoder_steps)) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == 1:
            log_line(args.work, "decoder", step, loss=loss.item(), seconds=time.time() - start)
            print(f"decoder {step}/{args.decoder_steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    vae.eval().save_pretrained(path)
    return vae


# ---------------------------------------------------------------- 4. unet + text encoder
def make_text_encoder(args, vocab_size, bos, eos):
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=args.text_width, intermediate_size=4 * args.text_width,
                         num_hidden_layers=args.text_layers, num_attention_heads=args.text_heads,
                         max_position_embeddings=MAX_LEN, hidden_act="quick_gelu", projection_dim=args.text_width,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    return CLIPTextModel(cfg)


def make_unet(args, latent_side):
    from diffusers import UNet2DConditionModel
    ch = [int(c) for c in args.unet_channels.split(",")]
    down = ["CrossAttnDownBlock2D"] * (len(ch) - 1) + ["DownBlock2D"]
    up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (len(ch) - 1)
    return UNet2DConditionModel(sample_size=latent_side, in_channels=4, out_channels=4, block_out_channels=ch,
                                down_block_types=down, up_block_types=up, layers_per_block=args.unet_layers,
                                attention_head_dim=args.unet_heads, cross_attention_dim=args.text_width,
                                norm_num_groups=args.unet_groups)


def train_unet(args, tok, latents, captions, coverage):
    from diffusers import DDPMScheduler
    path = os.path.join(args.work, "unet_ckpt.pt")
    vocab = tok.get_vocab()
    text = make_text_encoder(args, len(vocab), vocab[BOS], vocab[EOS])
    unet = make_unet(args, latents["means"].shape[-1])
    # Grounded cross-attention (tools/demo/grounding.py): each cell reads its own phrase.
    store = grounding.record_cross_attention(unet) if args.ground > 0 else None
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params]
    start_step = 1
    if os.path.exists(path):
        ck = torch.load(path)
        unet.load_state_dict(ck["unet"])
        text.load_state_dict(ck["text"])
        opt.load_state_dict(ck["opt"])
        ema = ck["ema"]
        start_step = ck["step"] + 1
    sched = DDPMScheduler(**{k: v for k, v in SD1_SCHEDULER.items() if k not in ("set_alpha_to_one", "steps_offset")})
    ids_all = tokenize(tok, captions)
    empty = tokenize(tok, [""])
    z_all = latents["means"] * latents["scaling"]
    gen = torch.Generator().manual_seed(args.seed + 3 + start_step)
    unet.train()
    text.train()
    start = time.time()
    for step in range(start_step, args.unet_steps + 1):
        idx = torch.randint(0, len(z_all), (args.unet_batch,), generator=gen)
        z0 = z_all[idx]
        ids = ids_all[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < 0.1
        ids[drop] = empty
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (len(idx),), generator=gen)
        zt = sched.add_noise(z0, noise, t)
        emb = text(ids)[0]
        eps = unet(zt, t, encoder_hidden_states=emb).sample
        # Min-SNR-gamma weighting (Hang et al. 2023): the same model in fewer steps.
        snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
        weight = torch.clamp(snr, max=args.min_snr) / snr
        denoise = (F.mse_loss(eps, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        loss = denoise
        if store is not None:
            bind, leak = grounding.grounding_losses(store, coverage[idx], ~drop)
            loss = loss + args.ground * bind + args.leak * leak
        warm = min(1.0, step / 500)
        lr = args.unet_lr * warm * (0.5 * (1 + math.cos(math.pi * step / args.unet_steps)) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        if step % 50 == 0 or step == start_step:
            extra = {}
            if store is not None:
                extra = dict(denoise=denoise.item(), bind=float(bind), leak=float(leak))
            log_line(args.work, "unet", step, loss=loss.item(), lr=lr, seconds=time.time() - start, **extra)
            shown = " ".join(f"{k} {v:.4f}" for k, v in extra.items())
            print(f"unet {step}/{args.unet_steps} loss {loss.item():.4f} {shown} ({time.time() - start:.0f} s)",
                  flush=True)
        if step % args.checkpoint_every == 0 or step == args.unet_steps:
            torch.save({"unet": unet.state_dict(), "text": text.state_dict(), "opt": opt.state_dict(),
                        "ema": ema, "step": step}, path + ".tmp")
            os.replace(path + ".tmp", path)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    if store is not None:
        from diffusers.models.attention_processor import AttnProcessor2_0
        unet.set_attn_processor(AttnProcessor2_0())
    return unet.eval(), text.eval()


# ---------------------------------------------------------------- 5. export
def export(args, tok_dir, vae, unet, text, scaling):
    from diffusers import DDIMScheduler
    out = args.out
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    vae.register_to_config(scaling_factor=scaling)
    for name, model in (("vae", vae), ("unet", unet), ("text_encoder", text)):
        model.to(torch.float16).save_pretrained(os.path.join(out, name), safe_serialization=True)
        model.to(torch.float32)
    shutil.copytree(tok_dir, os.path.join(out, "tokenizer"))
    DDIMScheduler(**SD1_SCHEDULER).save_pretrained(os.path.join(out, "scheduler"))
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": __import__("diffusers").__version__,
             "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    shutil.copy(os.path.join(args.work, "log.csv"), os.path.join(out, "training_log.csv"))
    write_model_notes(out)


COLOURS = WORDS[3:11]
SHAPES = WORDS[11:15]


def write_model_notes(out):
    """Mirror's per-model file: the words the model knows, its own caption grammar as
    sentence templates for edit directions, and the settings tuned for it
    (tools/demo/recommended.json, measured with `cargo bench -p mirror-engine --bench quality`)."""
    captions = [f"a {c} {s} on a {b} background" for c in COLOURS for s in SHAPES for b in COLOURS if b != c]
    notes = {"name": "Demo model", "vocabulary": WORDS, "sentence_templates": captions}
    tuned = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recommended.json")
    if os.path.exists(tuned):
        with open(tuned) as f:
            notes["recommended"] = json.load(f)
    with open(os.path.join(out, "mirror.json"), "w") as f:
        json.dump(notes, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--vae-channels", default="16,32,64,64")
    ap.add_argument("--vae-layers", type=int, default=1)
    ap.add_argument("--vae-groups", type=int, default=8)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-4)
    ap.add_argument("--decoder-steps", type=int, default=2200)
    ap.add_argument("--decoder-lr", type=float, default=5e-4)
    ap.add_argument("--decoder-rounds", type=int, default=1,
                    help="decoder stages of --decoder-steps each, each from the last (the colour pairs "
                         "green-on-red and purple-on-blue need the second)")
    ap.add_argument("--decoder-noise", type=float, default=0.05, help="latent noise, relative to the latents' std")
    ap.add_argument("--only-decoder", action="store_true", help="run just the decoder stage (beside a running UNet stage)")
    ap.add_argument("--decoder-beside-unet", action="store_true",
                    help="the decoder stage runs in another process beside the UNet stage; export picks it up")
    ap.add_argument("--text-width", type=int, default=128)
    ap.add_argument("--text-layers", type=int, default=3)
    ap.add_argument("--text-heads", type=int, default=4)
    ap.add_argument("--unet-channels", default="64,128,128")
    ap.add_argument("--unet-layers", type=int, default=1)
    ap.add_argument("--unet-heads", type=int, default=4)
    ap.add_argument("--unet-groups", type=int, default=32)
    ap.add_argument("--unet-steps", type=int, default=4200)
    ap.add_argument("--ground", type=float, default=0.0,
                    help="weight of the cross-attention grounding loss (tools/demo/grounding.py; 0 = off)")
    ap.add_argument("--leak", type=float, default=0.0,
                    help="weight of the penalty on attention to tokens that carry both phrases")
    ap.add_argument("--vae-from", default=None,
                    help="a trained demo model folder whose VAE (and scaling) to keep instead of training one")
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--unet-lr", type=float, default=8e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-snr", type=float, default=5.0)
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--export-checkpoint", action="store_true",
                    help="export the EMA weights of the latest UNet checkpoint now and stop")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    if not (args.export_checkpoint or args.only_decoder):
        with open(os.path.join(args.work, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
    begin = time.time()
    tok_dir = os.path.join(args.work, "tokenizer")
    tok = build_tokenizer(tok_dir)
    images, captions, coverage = load_dataset(args.data, args.limit)
    print(f"{len(images)} images, {len(tok.get_vocab())} tokens", flush=True)
    vae = train_vae(args, images).eval()
    latents = encode_all(args, vae, images)
    print(f"latents {tuple(latents['means'].shape)}, scaling factor {latents['scaling']:.5f}", flush=True)
    if args.only_decoder or not args.decoder_beside_unet:
        vae = finetune_decoder(args, vae, images, latents).eval()
        if args.only_decoder:
            return
    if args.export_checkpoint:
        args.unet_steps = 0  # load the checkpoint, train nothing, keep its EMA weights
    unet, text = train_unet(args, tok, latents, captions, coverage)
    if args.decoder_beside_unet:
        vae = finetune_decoder(args, vae, images, latents).eval()
    export(args, tok_dir, vae, unet, text, latents["scaling"])
    print(f"done in {(time.time() - begin) / 60:.1f} min -> {args.out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
