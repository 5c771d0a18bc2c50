//! UNet2DConditionModel against the PyTorch fixtures, gradients (fixtures and finite
//! differences), latent-size and config errors, and an SD 2-style configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // test code: a panic is the report

mod common;

use std::path::{Path, PathBuf};

use candle_core::{D, DType, IndexOp, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mirror_engine::EngineError;
use mirror_engine::unet::{
    AttentionMaps, CaptureRequest, UNet2DConditionModel, UNetConfig, attention_map_loss,
    key_value_losses,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn load(fx: &common::Fixtures) -> UNet2DConditionModel {
    let cfg = UNetConfig::from_file(&fx.config_path("unet")).expect("config parses");
    let weights = fx.weights_path("unet");
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &common::test_device())
    }
    .expect("weights load");
    UNet2DConditionModel::new(vb, &cfg).expect("unet builds")
}

fn timestep(fx: &common::Fixtures, fixture: &str) -> f64 {
    fx.settings(fixture)["timestep"]
        .as_f64()
        .expect("settings.timestep")
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn unet_eps_and_time_embedding_match_fixture() -> TestResult {
    let fx = common::Fixtures::load();
    let unet = load(&fx);
    let latents = fx.tensor("unet", "latents");
    let context = fx.tensor("unet", "encoder_hidden_states");
    for t in fx.timesteps("unet") {
        let name = |kind: &str| format!("{kind}_t{t}");
        fx.assert_close("unet", &name("time_proj"), &unet.time_proj(t, 1)?);
        fx.assert_close("unet", &name("time_embedding"), &unet.time_embedding(t, 1)?);
        fx.assert_close("unet", &name("eps"), &unet.forward(&latents, t, &context)?);
    }
    // Batch-2 call(s): tensors named eps_batch2_t<t>.
    let batch2: Vec<String> = fx
        .names_with_role("unet", "output")
        .into_iter()
        .filter(|n| n.starts_with("eps_batch2_t"))
        .collect();
    assert!(!batch2.is_empty(), "no batch-2 fixture tensor");
    let latents2 = fx.tensor("unet", "batch2_latents");
    let context2 = fx.tensor("unet", "batch2_encoder_hidden_states");
    for name in batch2 {
        let t: f64 = name.trim_start_matches("eps_batch2_t").parse()?;
        fx.assert_close("unet", &name, &unet.forward(&latents2, t, &context2)?);
    }
    Ok(())
}

#[test]
fn unet_attn2_probs_keys_values_match_fixture() -> TestResult {
    let fx = common::Fixtures::load();
    let unet = load(&fx);
    let names: Vec<String> = fx.fixture("unet_attn2")["layer_names"]
        .as_array()
        .expect("layer_names")
        .iter()
        .map(|v| v.as_str().expect("name").to_string())
        .collect();
    assert_eq!(unet.attn2_layer_names(), names);
    let latents = fx.tensor("unet", "latents");
    let context = fx.tensor("unet", "encoder_hidden_states");
    let request = CaptureRequest {
        probs: true,
        keys_values: true,
    };
    let (_, maps) =
        unet.forward_with_capture(&latents, timestep(&fx, "unet_attn2"), &context, request)?;
    assert_eq!(maps.names(), names);
    for layer in &maps.layers {
        let probs = layer.probs.as_ref().expect("probs");
        let (rows, q, _) = probs.dims3()?;
        assert_eq!(rows, latents.dim(0)? * layer.heads);
        assert_eq!(q, layer.spatial.0 * layer.spatial.1);
        fx.assert_close("unet_attn2", &format!("probs.{}", layer.name), probs);
        fx.assert_close(
            "unet_attn2",
            &format!("keys.{}", layer.name),
            layer.keys.as_ref().unwrap(),
        );
        fx.assert_close(
            "unet_attn2",
            &format!("values.{}", layer.name),
            layer.values.as_ref().unwrap(),
        );
    }
    assert!(!maps.layers.is_empty(), "no cross-attention layer captured");
    // Nothing requested: nothing kept.
    let t = timestep(&fx, "unet_attn2");
    let (_, none) = unet.forward_with_capture(&latents, t, &context, CaptureRequest::default())?;
    assert!(none.layers.is_empty());
    // Probabilities only.
    let probs_only = CaptureRequest {
        probs: true,
        keys_values: false,
    };
    let (_, some) = unet.forward_with_capture(&latents, t, &context, probs_only)?;
    assert_eq!(some.layers.len(), names.len());
    assert!(
        some.layers
            .iter()
            .all(|l| l.probs.is_some() && l.keys.is_none() && l.values.is_none())
    );
    Ok(())
}

#[test]
fn unet_grad_matches_fixture() -> TestResult {
    let fx = common::Fixtures::load();
    let unet = load(&fx);
    let latents = Var::from_tensor(&fx.tensor("unet_grad", "latents"))?;
    let context = Var::from_tensor(&fx.tensor("unet_grad", "encoder_hidden_states"))?;
    let weight = fx.tensor("unet_grad", "weight");
    let eps = unet.forward(
        latents.as_tensor(),
        timestep(&fx, "unet_grad"),
        context.as_tensor(),
    )?;
    let loss = weight.mul(&eps.sqr()?)?.sum_all()?;
    let grads = loss.backward()?;
    fx.assert_close("unet_grad", "loss", &loss);
    fx.assert_close(
        "unet_grad",
        "grad_latents",
        grads.get(latents.as_tensor()).expect("latent grad"),
    );
    fx.assert_close(
        "unet_grad",
        "grad_encoder_hidden_states",
        grads.get(context.as_tensor()).expect("context grad"),
    );
    Ok(())
}

#[test]
fn xattn_loss_grad_matches_fixture() -> TestResult {
    let fx = common::Fixtures::load();
    let unet = load(&fx);
    let t = timestep(&fx, "xattn_loss_grad");
    let latents = fx.tensor("xattn_loss_grad", "latents");
    let all = CaptureRequest {
        probs: true,
        keys_values: true,
    };
    let (_, reference) =
        unet.forward_with_capture(&latents, t, &fx.tensor("xattn_loss_grad", "emb_ref"), all)?;
    let reference = reference.detach();
    let x = Var::from_tensor(&latents)?;
    let (_, current) = unet.forward_with_capture(
        x.as_tensor(),
        t,
        &fx.tensor("xattn_loss_grad", "emb_edit"),
        all,
    )?;
    let loss_probs = attention_map_loss(&current, &reference)?;
    let (loss_keys, loss_values) = key_value_losses(&current, &reference, 0.5)?;
    fx.assert_close("xattn_loss_grad", "loss_probs", &loss_probs);
    fx.assert_close("xattn_loss_grad", "loss_keys", &loss_keys);
    fx.assert_close("xattn_loss_grad", "loss_values", &loss_values);
    let grads = loss_probs.backward()?;
    fx.assert_close(
        "xattn_loss_grad",
        "grad_latents",
        grads.get(x.as_tensor()).expect("grad"),
    );
    Ok(())
}

/// Central difference of `f` in one element of `base` (flat index), f32.
fn central_difference(
    base: &Tensor,
    index: usize,
    step: f32,
    f: impl Fn(&Tensor) -> candle_core::Result<f64>,
) -> candle_core::Result<f64> {
    let shape = base.shape().clone();
    let mut values = base.flatten_all()?.to_vec1::<f32>()?;
    let orig = values[index];
    values[index] = orig + step;
    let plus = f(&Tensor::from_vec(values.clone(), &shape, base.device())?)?;
    values[index] = orig - step;
    let minus = f(&Tensor::from_vec(values, &shape, base.device())?)?;
    Ok((plus - minus) / (2.0 * step as f64))
}

fn flat_grad(grad: &Tensor, index: usize) -> f64 {
    grad.flatten_all().unwrap().to_vec1::<f32>().unwrap()[index] as f64
}

fn assert_agree(label: &str, autograd: f64, fd: f64, rel: f64) {
    eprintln!("{label}: autograd {autograd:.6e}, central difference {fd:.6e}");
    assert!(
        autograd.abs() > 1e-6,
        "{label}: gradient vanished ({autograd:e})"
    );
    let err = (autograd - fd).abs() / autograd.abs().max(fd.abs());
    assert!(
        err < rel,
        "{label}: relative disagreement {err:.3e} (autograd {autograd:e}, fd {fd:e})"
    );
}

/// ∂(Σ of one spatial row of one token's attention map in the first attn2 layer)/∂(one latent element).
#[test]
fn attention_map_row_gradient_matches_finite_difference() -> TestResult {
    let fx = common::Fixtures::load();
    let unet = load(&fx);
    let latents = fx.tensor("unet", "latents");
    let context = fx.tensor("unet", "encoder_hidden_states");
    let request = CaptureRequest {
        probs: true,
        keys_values: false,
    };
    let (_, _, h, w) = latents.dims4()?;
    let (row, token) = (h / 4, 2usize);
    let t = timestep(&fx, "unet_attn2");
    let objective = |x: &Tensor| -> candle_core::Result<Tensor> {
        let (_, maps) = unet.forward_with_capture(x, t, &context, request)?;
        let layer = &maps.layers[0];
        let (_, qw) = layer.spatial;
        // Head 0, query pixels of one image row, one key token.
        layer
            .probs
            .as_ref()
            .unwrap()
            .i((0, row * qw..(row + 1) * qw, token))?
            .sum_all()
    };
    let x = Var::from_tensor(&latents)?;
    let value = objective(x.as_tensor())?;
    let grad = value
        .backward()?
        .get(x.as_tensor())
        .expect("latent grad")
        .clone();
    // The latent element under that row (channel 1, column w/3).
    let index = w * h + (row * w + w / 3);
    let fd = central_difference(&latents, index, 1e-2, |x| Ok(scalar(&objective(x)?)))?;
    assert_agree("attention row / latent", flat_grad(&grad, index), fd, 2e-2);
    Ok(())
}

/// ∂(redescription-like loss mean((a·z + b·eps(z, t, C) − y)²))/∂(one embedding element).
#[test]
fn redescription_loss_gradient_matches_finite_difference() -> TestResult {
    let fx = common::Fixtures::load();
    let unet = load(&fx);
    let latents = fx.tensor("unet", "latents");
    let context = fx.tensor("unet", "encoder_hidden_states");
    let target = (latents.affine(0.9, 0.0)? + 0.1)?;
    let (a, b) = (1.05f64, -0.3f64);
    let t = timestep(&fx, "unet_grad");
    let objective = |c: &Tensor| -> candle_core::Result<Tensor> {
        let eps = unet.forward(&latents, t, c)?;
        (latents.affine(a, 0.0)? + eps.affine(b, 0.0)?)?
            .sub(&target)?
            .sqr()?
            .mean_all()
    };
    let c = Var::from_tensor(&context)?;
    let grad = objective(c.as_tensor())?
        .backward()?
        .get(c.as_tensor())
        .expect("grad")
        .clone();
    // The largest gradient entry of a content token (not BOS), to stay above rounding noise.
    let d = context.dim(D::Minus1)?;
    let row = grad.i((0, 2))?.abs()?.to_vec1::<f32>()?;
    let col = (0..d).max_by(|&i, &j| row[i].total_cmp(&row[j])).unwrap();
    let index = 2 * d + col;
    let fd = central_difference(&context, index, 1e-2, |c| Ok(scalar(&objective(c)?)))?;
    assert_agree(
        "redescription loss / embedding",
        flat_grad(&grad, index),
        fd,
        2e-2,
    );
    Ok(())
}

#[test]
fn non_square_latent_runs_and_bad_sizes_are_rejected() -> TestResult {
    let fx = common::Fixtures::load();
    let unet = load(&fx);
    let f = unet.config().downsample_factor();
    let context = fx.tensor("unet", "encoder_hidden_states");
    let c = unet.config().in_channels;
    let (h, w) = (8 * f, 12 * f);
    let x = Tensor::randn(0f32, 1., (1, c, h, w), &common::test_device())?;
    unet.check_latent_size(h, w)?;
    let request = CaptureRequest {
        probs: true,
        keys_values: false,
    };
    let (eps, maps) = unet.forward_with_capture(&x, 501.0, &context, request)?;
    assert_eq!(eps.dims(), &[1, unet.config().out_channels, h, w]);
    assert_eq!(maps.layers[0].spatial, (h, w));
    assert_eq!(maps.layers[0].probs.as_ref().unwrap().dim(1)?, h * w);

    let bad_h = 8 * f + 1;
    if f > 1 {
        assert!(matches!(
            unet.check_latent_size(bad_h, w),
            Err(EngineError::LatentSize { height, width, .. }) if height == bad_h && width == w
        ));
        let bad = Tensor::zeros((1, c, bad_h, w), DType::F32, &common::test_device())?;
        assert!(unet.forward(&bad, 501.0, &context).is_err());
    }
    assert!(matches!(
        unet.check_latent_size(0, w),
        Err(EngineError::LatentSize { .. })
    ));
    Ok(())
}

/// Writes the fixture's UNet config with `edit` applied to a fresh temporary file.
fn edited_config(name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let fx = common::Fixtures::load();
    let mut value = fx.model_config("unet");
    edit(&mut value);
    let dir = std::env::temp_dir().join(format!("mirror-unet-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    path
}

#[test]
fn config_errors_are_typed() {
    let path = edited_config("unknown_block.json", |v| {
        v["down_block_types"][0] = "SimpleCrossAttnDownBlock2D".into();
    });
    match UNetConfig::from_file(&path) {
        Err(EngineError::UnknownBlockType { file, block, .. }) => {
            assert_eq!(file, path);
            assert_eq!(block, "SimpleCrossAttnDownBlock2D");
        }
        other => panic!("expected UnknownBlockType, got {other:?}"),
    }
    let path = edited_config("wrong_type.json", |v| v["norm_num_groups"] = "eight".into());
    match UNetConfig::from_file(&path) {
        Err(EngineError::Config { file, field, .. }) => {
            assert_eq!(file, path);
            assert_eq!(field, "norm_num_groups");
        }
        other => panic!("expected Config error, got {other:?}"),
    }
    // One entry more than there are blocks.
    let blocks = block_channels(&common::Fixtures::load()).len();
    let path = edited_config("bad_list.json", |v| {
        v["attention_head_dim"] = serde_json::json!(vec![2; blocks + 1])
    });
    assert!(matches!(
        UNetConfig::from_file(&path),
        Err(EngineError::Config { field, .. }) if field == "attention_head_dim"
    ));
    assert!(matches!(
        UNetConfig::from_file(Path::new("/nonexistent/unet/config.json")),
        Err(EngineError::Io { .. })
    ));
}

/// Widths of the fixture UNet's blocks (`block_out_channels`).
fn block_channels(fx: &common::Fixtures) -> Vec<usize> {
    fx.model_config("unet")["block_out_channels"]
        .as_array()
        .expect("unet block_out_channels")
        .iter()
        .map(|v| v.as_u64().expect("channel count") as usize)
        .collect()
}

/// Block index of an attn2 layer name: down block i and up block n − 1 − i work at block i's
/// width, the mid block at the last one.
fn block_of(layer: &str, n: usize) -> usize {
    let index = |prefix: &str| -> Option<usize> {
        layer.strip_prefix(prefix)?.split('.').next()?.parse().ok()
    };
    if let Some(i) = index("down_blocks.") {
        i
    } else if let Some(j) = index("up_blocks.") {
        n - 1 - j
    } else {
        assert!(layer.starts_with("mid_block."), "{layer}");
        n - 1
    }
}

/// SD 2-style on the fixture's widths: linear projections, per-block head counts, two
/// transformer layers per block after the first, cross-attention in every block.
#[test]
fn linear_projection_and_per_block_heads_build_and_run() -> TestResult {
    let fx = common::Fixtures::load();
    let channels = block_channels(&fx);
    let n = channels.len();
    assert!(n >= 2, "the fixture UNet has {n} block(s)");
    // 2 heads in the first block, then the most of 4, 2, 1 that divides the width.
    let heads: Vec<usize> = channels
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let options: &[usize] = if i == 0 { &[2, 1] } else { &[4, 2, 1] };
            *options.iter().find(|&&h| c % h == 0).unwrap()
        })
        .collect();
    let layers: Vec<usize> = (0..n).map(|i| if i == 0 { 1 } else { 2 }).collect();
    let cross_dim = 24;
    let path = edited_config("sd2_like.json", |v| {
        v["use_linear_projection"] = true.into();
        v["attention_head_dim"] = serde_json::json!(heads);
        v["transformer_layers_per_block"] = serde_json::json!(layers);
        v["cross_attention_dim"] = cross_dim.into();
        v["down_block_types"] = serde_json::json!(vec!["CrossAttnDownBlock2D"; n]);
        v["up_block_types"] = serde_json::json!(vec!["CrossAttnUpBlock2D"; n]);
        v["layers_per_block"] = 1.into();
    });
    let cfg = UNetConfig::from_file(&path)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &common::test_device());
    // Built under a prefix (as inside a single-file checkpoint): names stay module-relative.
    let unet = UNet2DConditionModel::new(vb.pp("unet"), &cfg)?;
    {
        let data = varmap.data().lock().unwrap();
        let proj_in = data
            .get("unet.down_blocks.0.attentions.0.proj_in.weight")
            .expect("proj_in");
        assert_eq!(
            proj_in.dims(),
            &[channels[0], channels[0]],
            "linear projection weight is 2-D"
        );
        let to_k =
            data.get("unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight");
        assert_eq!(
            to_k.expect("second transformer layer").dims(),
            &[channels[1], cross_dim]
        );
    }
    let names = unet.attn2_layer_names();
    // Down block i: 1 resnet × layers[i]; up blocks: 2 × layers[i]; mid: layers[n − 1].
    let total: usize = layers.iter().sum();
    assert_eq!(names.len(), 3 * total + layers[n - 1]);
    let f = cfg.downsample_factor();
    let (h, w) = (4 * f, 6 * f);
    let x = Tensor::randn(0f32, 1., (2, cfg.in_channels, h, w), &common::test_device())?;
    let context = Tensor::randn(0f32, 1., (2, 77, cross_dim), &common::test_device())?;
    let request = CaptureRequest {
        probs: true,
        keys_values: true,
    };
    let (eps, maps): (Tensor, AttentionMaps) =
        unet.forward_with_capture(&x, 10.0, &context, request)?;
    assert_eq!(eps.dims(), &[2, cfg.out_channels, h, w]);
    assert_eq!(maps.names(), names);
    for layer in &maps.layers {
        let b = block_of(&layer.name, n);
        assert_eq!(layer.heads, heads[b], "{}", layer.name);
        assert_eq!(
            layer.keys.as_ref().unwrap().dims(),
            &[2 * heads[b], 77, channels[b] / heads[b]],
            "{}",
            layer.name
        );
    }
    Ok(())
}

/// Injected maps replace exactly one sample's cross-attention: its own maps injected change
/// nothing, another pass's maps change that sample's prediction and leave the other sample's
/// bit for bit.
#[test]
fn injected_maps_replace_one_samples_attention() -> TestResult {
    use mirror_engine::unet::Injection;
    let fx = common::Fixtures::load();
    let unet = load(&fx);
    let latents = fx.tensor("unet", "batch2_latents");
    let context = fx.tensor("unet", "batch2_encoder_hidden_states");
    let t = fx.timesteps("unet")[0];
    let probs = CaptureRequest {
        probs: true,
        keys_values: false,
    };
    let (eps, own) = unet.forward_with_capture(&latents, t, &context, probs)?;
    let max_diff = |a: &Tensor, b: &Tensor| -> f64 {
        scalar(
            &(a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap(),
        )
    };
    let same = Injection {
        maps: own.clone(),
        sample: 1,
    };
    let (eps_same, _) = unet.forward_injecting(&latents, t, &context, probs, Some(&same))?;
    assert!(
        max_diff(&eps, &eps_same) < 1e-6,
        "own maps injected change the prediction"
    );

    // Maps of sample 0's pass (another latent and text) injected into sample 1.
    let first = |m: &AttentionMaps| -> AttentionMaps {
        let mut m = m.clone();
        for l in &mut m.layers {
            l.probs = l.probs.as_ref().map(|p| p.narrow(0, 0, l.heads).unwrap());
        }
        m
    };
    let other = Injection {
        maps: first(&own),
        sample: 1,
    };
    let (eps_other, maps) = unet.forward_injecting(&latents, t, &context, probs, Some(&other))?;
    assert_eq!(
        max_diff(&eps.i(0)?, &eps_other.i(0)?),
        0.0,
        "the other sample is untouched"
    );
    assert!(
        max_diff(&eps.i(1)?, &eps_other.i(1)?) > 1e-4,
        "the injected sample reads other maps"
    );
    // What the pass records for sample 1 is what it used.
    let layer = &maps.layers[0];
    let recorded = layer
        .probs
        .as_ref()
        .unwrap()
        .narrow(0, layer.heads, layer.heads)?;
    let injected = other.maps.layers[0].probs.as_ref().unwrap();
    assert_eq!(max_diff(&recorded, injected), 0.0);
    Ok(())
}
