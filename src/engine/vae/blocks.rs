//! VAE building blocks (diffusers names): `ResnetBlock2D` without time embedding, the
//! stride-2 `Downsample2D`, the nearest-neighbour `Upsample2D`, and the encoder/decoder blocks.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{GroupNorm, VarBuilder};

use crate::engine::nn::{Conv2d, conv2d};

use crate::engine::nn::group_norm;

/// Every GroupNorm in diffusers' `Encoder`/`Decoder` uses this eps (not the 1e-5 default).
pub const VAE_NORM_EPS: f64 = 1e-6;

/// `act_fn` of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Gelu,
    Relu,
}

impl Activation {
    /// `name` was validated by `VaeConfig::validate`; anything else is reported here.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            // torch.nn.GELU(): the exact erf form.
            "gelu" => Ok(Self::Gelu),
            "relu" => Ok(Self::Relu),
            other => candle_core::bail!("unsupported VAE activation `{other}`"),
        }
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => x.silu(),
            Self::Gelu => x.gelu_erf(),
            Self::Relu => x.relu(),
        }
    }
}

fn conv3x3(
    vb: VarBuilder,
    in_c: usize,
    out_c: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    conv2d(in_c, out_c, 3, padding, stride, vb)
}

/// Settings shared by every block of one VAE.
#[derive(Debug, Clone, Copy)]
pub struct BlockSettings {
    pub groups: usize,
    pub act: Activation,
}

/// norm → act → conv → norm → act → conv, plus a 1×1 shortcut when the width changes.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, in_c: usize, out_c: usize, s: BlockSettings) -> Result<Self> {
        let conv_shortcut = if in_c != out_c {
            Some(conv2d(in_c, out_c, 1, 0, 1, vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(s.groups, in_c, VAE_NORM_EPS, vb.pp("norm1"))?,
            conv1: conv3x3(vb.pp("conv1"), in_c, out_c, 1, 1)?,
            norm2: group_norm(s.groups, out_c, VAE_NORM_EPS, vb.pp("norm2"))?,
            conv2: conv3x3(vb.pp("conv2"), out_c, out_c, 1, 1)?,
            conv_shortcut,
            act: s.act,
        })
    }
}

impl Module for ResnetBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self
            .conv1
            .forward(&self.act.apply(&self.norm1.forward(x)?)?)?;
        let h = self
            .conv2
            .forward(&self.act.apply(&self.norm2.forward(&h)?)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        shortcut + h
    }
}

/// Stride-2 3×3 conv. diffusers pads (0, 1, 0, 1) (right and bottom only) before a
/// padding-0 conv, so the result is not the same as a symmetric padding of 1.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(vb.pp("conv"), channels, channels, 2, 0)?,
        })
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x
            .pad_with_zeros(D::Minus1, 0, 1)?
            .pad_with_zeros(D::Minus2, 0, 1)?;
        self.conv.forward(&x)
    }
}

/// Nearest-neighbour ×2 upsampling followed by a 3×3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(vb.pp("conv"), channels, channels, 1, 1)?,
        })
    }
}

impl Module for Upsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

/// `DownEncoderBlock2D`: `num_layers` resnets, then (except in the last block) a downsampler.
#[derive(Debug, Clone)]
pub struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

/// `num_layers` resnets under `resnets.{j}`, the first taking `in_c` channels.
fn resnet_stack(
    vb: &VarBuilder,
    in_c: usize,
    out_c: usize,
    num_layers: usize,
    s: BlockSettings,
) -> Result<Vec<ResnetBlock2D>> {
    (0..num_layers)
        .map(|j| {
            let in_j = if j == 0 { in_c } else { out_c };
            ResnetBlock2D::new(vb.pp("resnets").pp(j), in_j, out_c, s)
        })
        .collect()
}

impl DownEncoderBlock2D {
    pub fn new(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        num_layers: usize,
        add_downsample: bool,
        s: BlockSettings,
    ) -> Result<Self> {
        let resnets = resnet_stack(&vb, in_c, out_c, num_layers, s)?;
        let downsampler = if add_downsample {
            Some(Downsample2D::new(vb.pp("downsamplers").pp(0), out_c)?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            downsampler,
        })
    }
}

impl Module for DownEncoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h)?;
        }
        match &self.downsampler {
            Some(down) => down.forward(&h),
            None => Ok(h),
        }
    }
}

/// `UpDecoderBlock2D`: `num_layers` resnets, then (except in the last block) an upsampler.
#[derive(Debug, Clone)]
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn new(
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        num_layers: usize,
        add_upsample: bool,
        s: BlockSettings,
    ) -> Result<Self> {
        let resnets = resnet_stack(&vb, in_c, out_c, num_layers, s)?;
        let upsampler = if add_upsample {
            Some(Upsample2D::new(vb.pp("upsamplers").pp(0), out_c)?)
        } else {
            None
        };
        Ok(Self { resnets, upsampler })
    }
}

impl Module for UpDecoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&h),
            None => Ok(h),
        }
    }
}
