//! The ResNet block and the ×2 down/up samplers that the UNet and the VAE share (diffusers'
//! `ResnetBlock2D`, `Downsample2D`, `Upsample2D`).
//! Ports: https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/resnet.py (pinned).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{Conv2d, GroupNorm, Linear, conv2d, linear};

/// `act_fn` of a model config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU, `x * sigmoid(x)` (`silu` or `swish`).
    Silu,
    /// GELU, exact erf form (`gelu`).
    Gelu,
    /// ReLU (`relu`).
    Relu,
}

impl Activation {
    /// `name` was validated with the config; anything else is reported here.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            // torch.nn.GELU(): the exact erf form.
            "gelu" => Ok(Self::Gelu),
            "relu" => Ok(Self::Relu),
            other => candle_core::bail!("unsupported activation `{other}`"),
        }
    }

    /// Applies the activation elementwise.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => x.silu(),
            Self::Gelu => x.gelu_erf(),
            Self::Relu => x.relu(),
        }
    }
}

/// Sizes and settings of one `ResnetBlock2D`.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    /// Channels of the input.
    pub in_channels: usize,
    /// Channels of the output.
    pub out_channels: usize,
    /// Width of the time embedding (UNet); `None` for blocks without one (VAE).
    pub temb_channels: Option<usize>,
    /// GroupNorm groups (`norm_num_groups`).
    pub groups: usize,
    /// GroupNorm eps (UNet: `norm_eps` of the config; VAE: 1e-6).
    pub eps: f64,
    /// The activation after each norm and on the time embedding.
    pub act: Activation,
    /// The output is divided by it (UNet mid block: `mid_block_scale_factor`).
    pub output_scale_factor: f64,
}

/// norm → act → conv → (+ time projection) → norm → act → conv, plus the shortcut (a 1×1
/// conv when the width changes).
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
    output_scale_factor: f64,
}

fn conv3x3(
    in_c: usize,
    out_c: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    conv2d(in_c, out_c, 3, padding, stride, vb)
}

impl ResnetBlock2D {
    /// Loads the block's weights (`norm1`, `conv1`, `time_emb_proj`, ...) under `vb`.
    pub fn new(vb: VarBuilder, cfg: &ResnetConfig) -> Result<Self> {
        let (i, o) = (cfg.in_channels, cfg.out_channels);
        let conv_shortcut = (i != o)
            .then(|| conv2d(i, o, 1, 0, 1, vb.pp("conv_shortcut")))
            .transpose()?;
        let time_emb_proj = cfg
            .temb_channels
            .map(|t| linear(t, o, vb.pp("time_emb_proj")))
            .transpose()?;
        Ok(Self {
            norm1: GroupNorm::load(cfg.groups, i, cfg.eps, vb.pp("norm1"))?,
            conv1: conv3x3(i, o, 1, 1, vb.pp("conv1"))?,
            time_emb_proj,
            norm2: GroupNorm::load(cfg.groups, o, cfg.eps, vb.pp("norm2"))?,
            conv2: conv3x3(o, o, 1, 1, vb.pp("conv2"))?,
            conv_shortcut,
            act: cfg.act,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `temb` is the time embedding `[B, temb_channels]`; blocks built without one ignore it.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let act = Some(self.act);
        // The time embedding and the skip are added inside the convolutions' nodes, so that a
        // gradient pass keeps no separate tensor for either convolution's output.
        let normed = self.norm1.forward_then(x, act)?;
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let t = proj
                    .forward(&self.act.apply(temb)?)?
                    .unsqueeze(2)?
                    .unsqueeze(3)?;
                self.conv1.forward_adding(&normed, &t)?
            }
            _ => self.conv1.forward(&normed)?,
        };
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let out = self
            .conv2
            .forward_adding(&self.norm2.forward_then(&h, act)?, &shortcut)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// Channels and padding of one `Downsample2D`.
#[derive(Debug, Clone, Copy)]
pub struct DownsampleConfig {
    /// Channels of the input and the output.
    pub channels: usize,
    /// The conv's padding; with 0, diffusers first pads one zero row/column at the
    /// bottom/right (the VAE always, the UNet when `downsample_padding` is 0).
    pub padding: usize,
}

/// Stride-2 3×3 conv.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    pad_bottom_right: bool,
}

impl Downsample2D {
    /// Loads the conv under `vb.pp("conv")`.
    pub fn new(vb: VarBuilder, cfg: &DownsampleConfig) -> Result<Self> {
        let c = cfg.channels;
        Ok(Self {
            conv: conv3x3(c, c, 2, cfg.padding, vb.pp("conv"))?,
            pad_bottom_right: cfg.padding == 0,
        })
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_bottom_right {
            let x = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour ×2, then a 3×3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    /// Loads the conv under `vb.pp("conv")`; `channels` in and out.
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(channels, channels, 1, 1, vb.pp("conv"))?,
        })
    }
}

impl Module for Upsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.conv.forward_upsampled_x2(x)? {
            Some(y) => Ok(y),
            None => self.conv.forward(&upsample_nearest_x2(x)?),
        }
    }
}

/// Nearest ×2 as broadcast + reshape: its backward is the ordinary (accumulating) sum,
/// whereas candle's `upsample_nearest2d` backward overwrites earlier gradient contributions.
fn upsample_nearest_x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Same values as candle's kernel, and a gradient where every input cell gets the sum of
    /// its four copies (candle's own backward keeps only one).
    #[test]
    fn nearest_upsample_matches_candle_and_sums_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 2, 3, 4), &dev)?)?;
        let ours = upsample_nearest_x2(x.as_tensor())?;
        let theirs = x.as_tensor().upsample_nearest2d(6, 8)?;
        let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let grad = ours.sum_all()?.backward()?;
        let g = grad.get(x.as_tensor()).expect("gradient");
        let values = g.flatten_all()?.to_vec1::<f32>()?;
        assert!(values.iter().all(|&v| v == 4.0), "{values:?}");
        Ok(())
    }
}
