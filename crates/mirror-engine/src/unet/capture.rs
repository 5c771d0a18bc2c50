//! Recording of cross-attention (`attn2`) probabilities, keys and values, and the map losses
//! MirrorDiffusion / pix2pix-zero build from them.
//!
//! Ports: https://github.com/pix2pixzero/pix2pix-zero/blob/a8f7269a5318353b6fc5263223f68d96a419bd49/src/utils/cross_attention.py (pinned).

use candle_core::{Result, Tensor};

/// What one UNet call should record from every `attn2` layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureRequest {
    /// Record the attention probabilities (`softmax(QKᵀ/√d)`).
    pub probs: bool,
    /// Record the keys and values (projections of the text embedding).
    pub keys_values: bool,
}

impl CaptureRequest {
    /// Whether anything is recorded.
    pub fn any(&self) -> bool {
        self.probs || self.keys_values
    }
}

/// One `attn2` layer's recorded tensors, still attached to the autograd graph.
/// probs `[batch*heads, query_len, key_len]`, keys/values `[batch*heads, key_len, head_dim]`,
/// row `b*heads + h`.
#[derive(Debug, Clone)]
pub struct CapturedAttention {
    /// The layer's module name (e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn2`).
    pub name: String,
    /// Number of attention heads.
    pub heads: usize,
    /// Query grid (height, width).
    pub spatial: (usize, usize),
    /// Attention probabilities, when recorded.
    pub probs: Option<Tensor>,
    /// Keys, when recorded.
    pub keys: Option<Tensor>,
    /// Values, when recorded.
    pub values: Option<Tensor>,
}

/// Every `attn2` layer of one call, in `unet.named_modules()` order: down blocks, up blocks,
/// then the mid block (the order MirrorDiffusion sums its losses in).
#[derive(Debug, Clone, Default)]
pub struct AttentionMaps {
    /// The layers, in `named_modules()` order.
    pub layers: Vec<CapturedAttention>,
}

/// Where the attention layers of one call put their records (passed down explicitly), and
/// the maps they use instead of their own, when some are injected.
pub(crate) struct CaptureSink<'a> {
    pub request: CaptureRequest,
    pub layers: &'a mut Vec<CapturedAttention>,
    pub inject: Option<&'a Injection>,
}

/// Cross-attention maps that replace one batch sample's own (prompt-to-prompt's attention
/// replacement, Hertz et al., 2022): that sample's text is read with the layout of another
/// pass.
#[derive(Debug, Clone)]
pub struct Injection {
    /// Probabilities of every `attn2` layer, `[heads, queries, keys]` each (the last sample
    /// of the recorded batch is used).
    pub maps: AttentionMaps,
    /// The batch sample whose maps are replaced.
    pub sample: usize,
}

impl Injection {
    /// The maps for the layer `name` (a module path that ends with a recorded layer's name):
    /// the last sample's `[heads, queries, keys]`.
    pub(crate) fn for_layer(&self, name: &str, heads: usize) -> Result<Option<Tensor>> {
        let Some(layer) = self.maps.layers.iter().find(|l| name.ends_with(&l.name)) else {
            return Ok(None);
        };
        let Some(probs) = &layer.probs else {
            return Ok(None);
        };
        let rows = probs.dim(0)?;
        if rows < heads || rows % heads != 0 {
            candle_core::bail!(
                "{}: injected maps of {rows} rows for {heads} heads",
                layer.name
            );
        }
        Ok(Some(probs.narrow(0, rows - heads, heads)?))
    }
}

/// Position of a layer name in `named_modules()` order (down < up < mid); the stable sort
/// keeps execution order inside each group, which matches module order there.
pub(crate) fn module_order_rank(name: &str) -> u8 {
    if name.starts_with("down_blocks") {
        0
    } else if name.starts_with("up_blocks") {
        1
    } else {
        2
    }
}

/// Σ_layers weight · ((cur − ref)²).sum over the last two dims, mean over rows (batch·heads).
/// `cur` and `reference` are per-layer tensors `[rows, a, b]` in the same layer order.
pub fn map_loss(cur: &[&Tensor], reference: &[&Tensor], weight: f64) -> Result<Tensor> {
    if cur.len() != reference.len() || cur.is_empty() {
        candle_core::bail!(
            "map loss: {} current layers vs {} reference layers",
            cur.len(),
            reference.len()
        );
    }
    let mut total: Option<Tensor> = None;
    for (c, r) in cur.iter().zip(reference) {
        let term = (crate::nn::squared_distance_rows(c, r)?.mean(0)? * weight)?;
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    total.ok_or_else(|| candle_core::Error::Msg("map loss: no layers".into()))
}

fn select<'a>(
    maps: &'a AttentionMaps,
    what: &str,
    pick: impl Fn(&'a CapturedAttention) -> Option<&'a Tensor>,
) -> Result<Vec<&'a Tensor>> {
    maps.layers
        .iter()
        .map(|l| {
            pick(l)
                .ok_or_else(|| candle_core::Error::Msg(format!("{}: no {what} captured", l.name)))
        })
        .collect()
}

fn check_same_layers(cur: &AttentionMaps, reference: &AttentionMaps) -> Result<()> {
    let same = cur.layers.len() == reference.layers.len()
        && cur
            .layers
            .iter()
            .zip(&reference.layers)
            .all(|(a, b)| a.name == b.name);
    if !same {
        candle_core::bail!("attention maps of different layers cannot be compared");
    }
    Ok(())
}

/// The reference maps of a batch-`n` call repeated `times` along the batch (rows b·heads + h),
/// e.g. a batch-1 reconstruction pass used against a batch-2 guidance pass.
pub fn repeat_batch(maps: &AttentionMaps, times: usize) -> Result<AttentionMaps> {
    let rep = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
        t.as_ref()
            .map(|t| Tensor::cat(&vec![t; times], 0))
            .transpose()
    };
    let layers = maps
        .layers
        .iter()
        .map(|l| {
            Ok(CapturedAttention {
                probs: rep(&l.probs)?,
                keys: rep(&l.keys)?,
                values: rep(&l.values)?,
                ..l.clone()
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(AttentionMaps { layers })
}

/// Attention-probability guidance loss Σ_ℓ ((P_ℓ − R_ℓ)²).sum((1,2)).mean(0).
/// Both must hold probabilities of the same layers with the same shapes (same batch).
pub fn attention_map_loss(probs: &AttentionMaps, reference: &AttentionMaps) -> Result<Tensor> {
    check_same_layers(probs, reference)?;
    map_loss(
        &select(probs, "probs", |l| l.probs.as_ref())?,
        &select(reference, "probs", |l| l.probs.as_ref())?,
        1.0,
    )
}

/// MirrorDiffusion's key and value terms: (weight · Σ_ℓ mean_rows Σ (K − K_ref)²,
/// weight · Σ_ℓ mean_rows Σ (V − V_ref)²). They depend on the text contexts only.
pub fn key_value_losses(
    cur: &AttentionMaps,
    reference: &AttentionMaps,
    weight: f64,
) -> Result<(Tensor, Tensor)> {
    check_same_layers(cur, reference)?;
    let keys = map_loss(
        &select(cur, "keys", |l| l.keys.as_ref())?,
        &select(reference, "keys", |l| l.keys.as_ref())?,
        weight,
    )?;
    let values = map_loss(
        &select(cur, "values", |l| l.values.as_ref())?,
        &select(reference, "values", |l| l.values.as_ref())?,
        weight,
    )?;
    Ok((keys, values))
}

impl AttentionMaps {
    /// A copy cut from the autograd graph (e.g. to keep as a reference).
    pub fn detach(&self) -> AttentionMaps {
        let d = |t: &Option<Tensor>| t.as_ref().map(|t| t.detach());
        AttentionMaps {
            layers: self
                .layers
                .iter()
                .map(|l| CapturedAttention {
                    probs: d(&l.probs),
                    keys: d(&l.keys),
                    values: d(&l.values),
                    ..l.clone()
                })
                .collect(),
        }
    }

    /// The layer names, in order.
    pub fn names(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.name.clone()).collect()
    }
}
