"""Grounded cross-attention for the demo model: each latent cell reads its own phrase.

Trained from scratch on 224 captions, the demo UNet learnt to read the whole caption from
every latent cell (the causal text encoder's later tokens carry all of it), so its
cross-attention maps were flat and a colour word was not bound to its slot: a background
edit recoloured the shape, and neither attention guidance nor an attention mask could tell
the object from the background. The renderer knows where the object is, so training can say
it (token-level grounding as in TokenCompose, Wang et al., CVPR 2024, here per cell):

- a cell inside the object reads the object's phrase (its colour and shape words), a cell of
  the background reads the background's (its colour word and "background"): binary
  cross-entropy of the object phrase's share of the two phrases' attention against the
  cell's object coverage;
- no cell reads the tokens that carry both phrases ("on", the second "a", the end token and
  the padding, which in a causal encoder have seen the whole caption): their attention mass
  is penalised. The start token and the first "a" (which have seen nothing) stay free as the
  attention's sink.

Only the loss is new; the model is the same diffusers UNet2DConditionModel, so nothing in
Mirror changes.
"""
import torch
import torch.nn.functional as F

# Token positions in `<start> a {colour} {shape} on a {background} background <end> <pad>...`.
SINK = [0, 1]
OBJECT = [2, 3]
BACKGROUND = [6, 7]


class RecordingProcessor:
    """diffusers' classic attention (softmax(q kᵀ) v) that keeps the probabilities."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.store.append((attn.heads, probs))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


def record_cross_attention(unet):
    """Swaps every `attn2` processor for a recording one; returns the list they fill."""
    store = []
    processors = {}
    for name, proc in unet.attn_processors.items():
        processors[name] = RecordingProcessor(store) if name.endswith("attn2.processor") else proc
    unet.set_attn_processor(processors)
    return store


def layer_maps(store, coverage, min_side=4):
    """Per recorded layer of at least `min_side` cells a side: its head-averaged attention
    [B, cells, tokens] and the object's coverage of each cell [B, cells]."""
    for heads, probs in store:
        rows, cells, tokens = probs.shape
        side = int(round(cells ** 0.5))
        if side < min_side:
            continue
        a = probs.view(rows // heads, heads, cells, tokens).mean(1)
        yield a, F.adaptive_avg_pool2d(coverage, side).flatten(1)


def grounding_losses(store, coverage, grounded, min_side=4):
    """(binding, leak) averaged over the recorded layers of at least `min_side` cells a side.

    `coverage` [B, 1, H, W]: the object's coverage of each pixel; `grounded` [B] bool: the
    samples whose caption was kept (an empty caption has no phrases)."""
    bind, leak, layers = 0.0, 0.0, 0
    if not grounded.any():
        store.clear()
        return torch.zeros(()), torch.zeros(())
    for a, m in layer_maps(store, coverage, min_side):
        a, m = a[grounded], m[grounded]
        obj = a[..., OBJECT].sum(-1)
        bg = a[..., BACKGROUND].sum(-1)
        free = a[..., SINK].sum(-1)
        share = (obj / (obj + bg + 1e-6)).clamp(1e-4, 1 - 1e-4)
        bind = bind + F.binary_cross_entropy(share, m)
        leak = leak + (1.0 - obj - bg - free).clamp(min=0).mean()
        layers += 1
    store.clear()
    return bind / max(layers, 1), leak / max(layers, 1)


@torch.no_grad()
def attention_inside(store, coverage, min_side=4):
    """Share of each phrase's attention mass inside the object (object phrase) and outside
    (background phrase), averaged over layers: the probe that found the maps flat."""
    inside_obj, outside_bg, layers = 0.0, 0.0, 0
    for a, m in layer_maps(store, coverage, min_side):
        obj = a[..., OBJECT].sum(-1)
        bg = a[..., BACKGROUND].sum(-1)
        inside_obj += float(((obj * m).sum(1) / obj.sum(1).clamp(min=1e-9)).mean())
        outside_bg += float(((bg * (1 - m)).sum(1) / bg.sum(1).clamp(min=1e-9)).mean())
        layers += 1
    store.clear()
    return inside_obj / max(layers, 1), outside_bg / max(layers, 1)
