#!/usr/bin/env python3
"""PyTorch side of the `translate` benchmarks: the reference MirrorDiffusion loop
(../shared/tools/oracle/mirror_reference.py, Preset R: ddim_invert with KL + mirror_edit_r)
timed on the same model and machine as `cargo bench -p mirror-engine --bench engine -- --only translate,translate_full`.

  python crates/mirror-engine/benches/torch_translate.py tiny STEPS        # the tiny fixture model, whole run, 2 runs
  python crates/mirror-engine/benches/torch_translate.py full STEPS K      # SD 1.5-size random weights at 256x256:
                                                      # inversion + K timed Mirror steps, extrapolated
  python crates/mirror-engine/benches/torch_translate.py step HW           # one Mirror step (the first of 50) at SD 1.5
                                                      # size on an HW x HW latent, random trajectory;
                                                      # SDPA=1: self-attention through
                                                      # F.scaled_dot_product_attention (diffusers' default)
Prints one JSON line. torch.set_num_threads(2) as bench_torch.py.
"""
import json, os, resource, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
# crates/mirror-engine/benches -> the repository root -> ../shared beside it.
ORACLE = os.path.join(HERE, "..", "..", "..", "..", "shared", "tools", "oracle")
sys.path.insert(0, ORACLE)

import torch  # noqa: E402
import mirror_reference as mr  # noqa: E402

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
torch.manual_seed(0)


def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def tiny(steps):
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    import numpy as np
    model = os.path.join(HERE, "..", "..", "shared", "fixtures", "tiny-sd")
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    store = mr.install_recording_processors(pipe.unet)
    img = np.asarray(Image.open(os.path.join(model, "..", "tiny-sd-ref", "test_image.png")).convert("RGB"))
    x = torch.from_numpy(((img / 255.0 - 0.5) * 2).astype("float32")).permute(2, 0, 1)[None]
    times = []
    for _ in range(int(os.environ.get("RUNS", "1"))):
        t0 = time.perf_counter()
        with torch.no_grad():
            z0 = mr.vae_encode_mean(pipe.vae, x)[0] * mr.VAE_SCALE
            emb, _ = mr.encode_prompts(pipe, ["a photo of a cat"])
            templates = ["a photo of a {}.", "a picture of a {}.", "a close-up photo of a {}.", "a drawing of a {}.",
                         "a painting of a {}.", "a {} on a sofa.", "a {} in a garden.", "a small {}."]
            edit_dir, _, _ = mr.edit_direction(pipe, templates, "cat", "dog")
        sched = mr.DDIMSchedule(dict(pipe.scheduler.config), steps)
        with torch.no_grad():
            inv, _, _, _ = mr.ddim_invert(pipe.unet, sched, z0, emb, True)
        final, _ = mr.mirror_edit_r(pipe.unet, store, sched, mr.MirrorSettings(num_inference_steps=steps), inv, emb, edit_dir)
        mr.vae_decode(pipe.vae, final.edit_latents)
        times.append(time.perf_counter() - t0)
    return {"case": f"translate:{steps}", "times_s": times, "median_s": sorted(times)[len(times) // 2]}


SD_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "set_alpha_to_one": False, "steps_offset": 1}


def random_sd15():
    """SD 1.5-size UNet (recording processors on every attention), VAE and CLIP, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    import bench_torch as bt
    unet = UNet2DConditionModel(**bt.SD15_UNET).eval()
    vae = AutoencoderKL(**bt.SD_VAE).eval()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")).eval()
    for m in (vae, te):
        for p in m.parameters():
            p.requires_grad_(False)
    store = mr.install_recording_processors(unet)
    return unet, vae, te, store


def full(steps, k):
    unet, vae, te, store = random_sd15()
    sched = mr.DDIMSchedule(SD_SCHEDULER, steps)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    ids = torch.randint(0, 49408, (2, 77))
    t0 = time.perf_counter()
    with torch.no_grad():
        z0 = vae.encode(x).latent_dist.mean * mr.VAE_SCALE
        embs = te(ids)[0]
        emb, edit_dir = embs[:1], embs[1:] - embs[:1]
        inv, _, _, _ = mr.ddim_invert(unet, sched, z0, emb, True)
    inversion_s = time.perf_counter() - t0
    settings = mr.MirrorSettings(num_inference_steps=steps)
    state = mr.MirrorRState(rec_latents=inv[-1], edit_latents=inv[-1], emb=emb.clone(), extra_done=0)
    extra = mr.preset_r_extra_steps(steps)
    t1 = time.perf_counter()
    for i in range(k):
        state, _ = mr.mirror_step_r(unet, store, sched, settings, state, i, inv, edit_dir, extra)
    per_step = (time.perf_counter() - t1) / k
    t2 = time.perf_counter()
    with torch.no_grad():
        vae.decode(state.edit_latents / mr.VAE_SCALE)
    decode_s = time.perf_counter() - t2
    total = inversion_s + per_step * steps + decode_s
    return {"case": f"translate_full:{steps},{k}", "median_s": total, "inversion_s": inversion_s,
            "mirror_step_s": per_step, "decode_s": decode_s, "steps_timed": k}


def step(hw):
    steps = 50
    unet, vae, te, store = random_sd15()
    if os.environ.get("SDPA") == "1":
        from diffusers.models.attention_processor import AttnProcessor2_0
        procs = dict(unet.attn_processors)
        for name in procs:
            if ".attn1." in name:
                procs[name] = AttnProcessor2_0()
        unet.set_attn_processor(procs)
    sched = mr.DDIMSchedule(SD_SCHEDULER, steps)
    ids = torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        embs = te(ids)[0]
    emb, edit_dir = embs[:1], embs[1:] - embs[:1]
    inv = [torch.randn(1, 4, hw, hw) for _ in range(steps + 1)]
    state = mr.MirrorRState(rec_latents=inv[-1], edit_latents=inv[-1], emb=emb.clone(), extra_done=0)
    before = rss_now()
    t0 = time.perf_counter()
    mr.mirror_step_r(unet, store, sched, mr.MirrorSettings(num_inference_steps=steps), state, 0, inv, edit_dir,
                     mr.preset_r_extra_steps(steps))
    return {"case": f"mirror_step:{hw}", "median_s": time.perf_counter() - t0, "rss_before_step_mib": before,
            "sdpa_self_attention": os.environ.get("SDPA") == "1"}


def rss_now():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    return float("nan")


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "tiny":
        res = tiny(int(sys.argv[2]))
    elif kind == "step":
        res = step(int(sys.argv[2]))
    else:
        res = full(int(sys.argv[2]), int(sys.argv[3]))
    res.update(threads=torch.get_num_threads(), torch=torch.__version__, peak_rss_mib=round(rss(), 1))
    print(json.dumps(res))
