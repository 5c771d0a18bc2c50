//! Name maps from the diffusers layout to the original LDM/CompVis single-file layout of
//! SD 1.x checkpoints (`model.diffusion_model.*`, `first_stage_model.*`,
//! `cond_stage_model.transformer.*`), derived from the component configs.

use super::config::{UnetLayout, VaeLayout};
use super::names::NameMap;

/// Prefix of the UNet's tensors in an original checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model";
/// Prefix of the VAE's tensors in an original checkpoint.
pub const VAE_PREFIX: &str = "first_stage_model";
/// Prefix of the CLIP text encoder's tensors in an original checkpoint.
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer";

/// diffusers `ResnetBlock2D` (UNet) -> LDM `ResBlock` sub-module names.
const UNET_RESNET: [(&str, &str); 6] = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

fn unet_resnet(map: &mut NameMap, from: &str, to: &str) {
    map.rename(from, &[to]);
    for (d, o) in UNET_RESNET {
        map.rename(&format!("{from}.{d}"), &[&format!("{to}.{o}")]);
    }
}

/// UNet: diffusers names -> `model.diffusion_model.*`. The `SpatialTransformer` internals
/// (norm, proj_in, transformer_blocks.*, proj_out) have the same names in both layouts.
pub fn unet_map(layout: &UnetLayout) -> NameMap {
    let p = |s: String| format!("{UNET_PREFIX}.{s}");
    let mut map = NameMap::identity();
    map.rename("", &[UNET_PREFIX]);
    map.rename("time_embedding.linear_1", &[&p("time_embed.0".into())]);
    map.rename("time_embedding.linear_2", &[&p("time_embed.2".into())]);
    map.rename("conv_in", &[&p("input_blocks.0.0".into())]);
    map.rename("conv_norm_out", &[&p("out.0".into())]);
    map.rename("conv_out", &[&p("out.2".into())]);

    let n = layout.block_out_channels.len();
    // input_blocks.0 is conv_in; then per down block: its resnets (+attention), then the downsampler.
    let mut k = 1;
    for i in 0..n {
        for j in 0..layout.layers_per_block[i] {
            unet_resnet(
                &mut map,
                &format!("down_blocks.{i}.resnets.{j}"),
                &p(format!("input_blocks.{k}.0")),
            );
            if layout.down_has_attention[i] {
                map.rename(
                    &format!("down_blocks.{i}.attentions.{j}"),
                    &[&p(format!("input_blocks.{k}.1"))],
                );
            }
            k += 1;
        }
        if i + 1 < n {
            map.rename(
                &format!("down_blocks.{i}.downsamplers.0.conv"),
                &[&p(format!("input_blocks.{k}.0.op"))],
            );
            k += 1;
        }
    }

    unet_resnet(&mut map, "mid_block.resnets.0", &p("middle_block.0".into()));
    if layout.mid_has_attention {
        map.rename("mid_block.attentions.0", &[&p("middle_block.1".into())]);
        unet_resnet(&mut map, "mid_block.resnets.1", &p("middle_block.2".into()));
    } else {
        unet_resnet(&mut map, "mid_block.resnets.1", &p("middle_block.1".into()));
    }

    // Up blocks mirror the down blocks: one more resnet each; the upsampler sits in the last
    // output block of its level, after the resnet (and the attention, when there is one).
    let mut k = 0;
    for i in 0..n {
        let layers = layout.layers_per_block[n - 1 - i] + 1;
        for j in 0..layers {
            unet_resnet(
                &mut map,
                &format!("up_blocks.{i}.resnets.{j}"),
                &p(format!("output_blocks.{k}.0")),
            );
            if layout.up_has_attention[i] {
                map.rename(
                    &format!("up_blocks.{i}.attentions.{j}"),
                    &[&p(format!("output_blocks.{k}.1"))],
                );
            }
            if j + 1 == layers && i + 1 < n {
                let slot = if layout.up_has_attention[i] { 2 } else { 1 };
                map.rename(
                    &format!("up_blocks.{i}.upsamplers.0.conv"),
                    &[&p(format!("output_blocks.{k}.{slot}.conv"))],
                );
            }
            k += 1;
        }
    }
    map
}

fn vae_resnet(map: &mut NameMap, from: &str, to: &str) {
    map.rename(from, &[to]);
    map.rename(
        &format!("{from}.conv_shortcut"),
        &[&format!("{to}.nin_shortcut")],
    );
}

/// VAE mid-block attention: today's (`to_q`...) and older (`query`...) diffusers names -> the
/// original 1x1-convolution names (reshapable `[C, C, 1, 1]` <-> `[C, C]`).
fn vae_attention(map: &mut NameMap, from: &str, to: &str) {
    map.rename(from, &[to]);
    map.rename(&format!("{from}.group_norm"), &[&format!("{to}.norm")]);
    for (d, o) in [
        ("to_q", "q"),
        ("query", "q"),
        ("to_k", "k"),
        ("key", "k"),
        ("to_v", "v"),
        ("value", "v"),
        ("to_out.0", "proj_out"),
        ("proj_attn", "proj_out"),
    ] {
        map.rename_reshapable(&format!("{from}.{d}"), &[&format!("{to}.{o}")]);
    }
}

/// VAE: diffusers names -> `first_stage_model.*` (decoder levels are numbered in reverse).
pub fn vae_map(layout: &VaeLayout) -> NameMap {
    let p = |s: String| format!("{VAE_PREFIX}.{s}");
    let mut map = NameMap::identity();
    map.rename("", &[VAE_PREFIX]);
    let n = layout.blocks;
    for part in ["encoder", "decoder"] {
        vae_resnet(
            &mut map,
            &format!("{part}.mid_block.resnets.0"),
            &p(format!("{part}.mid.block_1")),
        );
        vae_resnet(
            &mut map,
            &format!("{part}.mid_block.resnets.1"),
            &p(format!("{part}.mid.block_2")),
        );
        vae_attention(
            &mut map,
            &format!("{part}.mid_block.attentions.0"),
            &p(format!("{part}.mid.attn_1")),
        );
        map.rename(
            &format!("{part}.conv_norm_out"),
            &[&p(format!("{part}.norm_out"))],
        );
    }
    for i in 0..n {
        for j in 0..layout.layers_per_block {
            vae_resnet(
                &mut map,
                &format!("encoder.down_blocks.{i}.resnets.{j}"),
                &p(format!("encoder.down.{i}.block.{j}")),
            );
        }
        if i + 1 < n {
            map.rename(
                &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                &[&p(format!("encoder.down.{i}.downsample.conv"))],
            );
        }
        let level = n - 1 - i;
        for j in 0..layout.layers_per_block + 1 {
            vae_resnet(
                &mut map,
                &format!("decoder.up_blocks.{i}.resnets.{j}"),
                &p(format!("decoder.up.{level}.block.{j}")),
            );
        }
        if i + 1 < n {
            map.rename(
                &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                &[&p(format!("decoder.up.{level}.upsample.conv"))],
            );
        }
    }
    map
}

/// CLIP text encoder: `text_model.*` (or the same without `text_model.`) ->
/// `cond_stage_model.transformer.text_model.*`, or `cond_stage_model.transformer.*` in older files.
pub fn text_encoder_map() -> NameMap {
    let with = format!("{CLIP_PREFIX}.text_model");
    let mut map = NameMap::identity();
    map.rename("", &[&with, CLIP_PREFIX]);
    map.rename("text_model", &[&with, CLIP_PREFIX]);
    map
}

/// For diffusers-folder text encoders: accepts files with and without the `text_model.` prefix
/// (transformers 5 drops it), whichever way the model asks.
pub fn diffusers_text_encoder_map() -> NameMap {
    let mut map = NameMap::identity();
    map.rename("", &["text_model", ""]);
    map.rename("text_model", &["text_model", ""]);
    map
}
