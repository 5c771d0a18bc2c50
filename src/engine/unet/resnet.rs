//! ResnetBlock2D and the down/up samplers of the UNet.

use candle_core::{Module, Result, Tensor};
use candle_nn::{GroupNorm, VarBuilder};

use crate::engine::nn::{Conv2d, Linear, conv2d, linear};

use crate::engine::nn::group_norm;

/// Sizes of one `ResnetBlock2D`.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    /// The output is divided by it (mid block: `mid_block_scale_factor`).
    pub output_scale_factor: f64,
}

/// GroupNorm → SiLU → conv → (+ time projection) → GroupNorm → SiLU → conv, plus the shortcut.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

fn conv3x3(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d(in_c, out_c, 3, 1, 1, vb)
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, cfg: &ResnetConfig) -> Result<Self> {
        let (i, o) = (cfg.in_channels, cfg.out_channels);
        let conv_shortcut = if i != o {
            Some(conv2d(i, o, 1, 0, 1, vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(cfg.groups, i, cfg.eps, vb.pp("norm1"))?,
            conv1: conv3x3(i, o, vb.pp("conv1"))?,
            time_emb_proj: linear(cfg.temb_channels, o, vb.pp("time_emb_proj"))?,
            norm2: group_norm(cfg.groups, o, cfg.eps, vb.pp("norm2"))?,
            conv2: conv3x3(o, o, vb.pp("conv2"))?,
            conv_shortcut,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `temb` is the time embedding `[B, temb_channels]`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let t = self
            .time_emb_proj
            .forward(&temb.silu()?)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = h.broadcast_add(&t)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let out = (shortcut + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// Stride-2 3x3 conv. With `padding` 0 diffusers pads one zero row/column at the bottom/right.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    pad_bottom_right: bool,
}

impl Downsample2D {
    pub fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(channels, channels, 3, padding, 2, vb.pp("conv"))?,
            pad_bottom_right: padding == 0,
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

/// Nearest-neighbour x2 then a 3x3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(channels, channels, vb.pp("conv"))?,
        })
    }
}

impl Module for Upsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest_x2(x)?)
    }
}

/// Nearest x2 as broadcast + reshape: its backward is the ordinary (accumulating) sum,
/// whereas candle's `upsample_nearest2d` backward overwrites earlier gradient contributions.
fn upsample_nearest_x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}
