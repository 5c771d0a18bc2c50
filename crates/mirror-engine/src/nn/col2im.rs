//! col2im: folding convolution columns back onto the input grid, summing overlaps.
//!
//! The input gradient of an im2col convolution is `Kᵀ · G` (one GEMM against the kernel
//! matrix the forward already holds) followed by this fold, instead of a convolution of the
//! gradient with a flipped, transposed copy of the kernel (three weight copies per call).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The geometry of the convolution whose columns are folded.
#[derive(Debug, Clone, Copy)]
pub struct FoldGeometry {
    pub channels: usize,
    pub kernel: (usize, usize),
    pub padding: usize,
    pub stride: usize,
    /// Input grid (height, width) the columns fold onto.
    pub input: (usize, usize),
    /// Output grid (height, width) of the convolution: one column per position.
    pub output: (usize, usize),
}

impl FoldGeometry {
    /// The input coordinate that output coordinate `o` reads at kernel offset `k`
    /// (`o·stride + k − padding`), when it lies inside `0..limit`.
    fn source(&self, o: usize, k: usize, limit: usize) -> Option<usize> {
        (o * self.stride + k)
            .checked_sub(self.padding)
            .filter(|&i| i < limit)
    }
}

/// `columns` `[B, kh·kw·C, Ho·Wo]` (rows in `(ky, kx, c)` order, as `conv2d_im2col`'s kernel
/// matrix) → `[B, C, H, W]`, each column entry added to the input pixel it was read from.
/// CPU, f32 only (gradient passes run in f32).
pub fn col2im(columns: &Tensor, geometry: FoldGeometry) -> Result<Tensor> {
    columns.contiguous()?.apply_op1_no_bwd(&Fold(geometry))
}

struct Fold(FoldGeometry);

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let FoldGeometry {
            channels: c,
            kernel: (kh, kw),
            input: (h, w),
            output: (ho, wo),
            ..
        } = self.0;
        let (batch, rows, cols) = layout.shape().dims3()?;
        if rows != kh * kw * c || cols != ho * wo {
            candle_core::bail!("col2im: columns {rows}×{cols} do not fit the geometry");
        }
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("col2im: only f32 columns are supported");
        };
        let data = &data[layout.start_offset()..layout.start_offset() + batch * rows * cols];
        let mut out = vec![0f32; batch * c * h * w];
        for (sample, image) in data.chunks(rows * cols).zip(out.chunks_mut(c * h * w)) {
            for ky in 0..kh {
                for kx in 0..kw {
                    let block = &sample[(ky * kw + kx) * c * cols..][..c * cols];
                    fold_shift(block, cols, image, &self.0, (ky, kx));
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, c, h, w))))
    }
}

/// Adds one kernel offset's `[C, Ho·Wo]` block, its rows `plane_stride` apart, onto
/// `[C, H, W]`.
fn fold_shift(
    block: &[f32],
    plane_stride: usize,
    image: &mut [f32],
    g: &FoldGeometry,
    (ky, kx): (usize, usize),
) {
    let ((h, w), (ho, wo)) = (g.input, g.output);
    // Output column ox reads input x = ox·stride + kx − padding; keep those inside 0..w.
    let first_ox = g.padding.saturating_sub(kx).div_ceil(g.stride);
    let last_ox = (w + g.padding)
        .saturating_sub(kx)
        .div_ceil(g.stride)
        .min(wo);
    for (channel, dst) in image.chunks_mut(h * w).enumerate() {
        let plane = &block[channel * plane_stride..][..ho * wo];
        for oy in 0..ho {
            let Some(y) = g.source(oy, ky, h) else {
                continue;
            };
            let src = &plane[oy * wo..][..wo];
            let row = &mut dst[y * w..][..w];
            if g.stride == 1 {
                let x0 = first_ox + kx - g.padding;
                let n = last_ox.saturating_sub(first_ox);
                for (d, s) in row[x0..x0 + n].iter_mut().zip(&src[first_ox..first_ox + n]) {
                    *d += s;
                }
            } else {
                for ox in first_ox..last_ox {
                    row[ox * g.stride + kx - g.padding] += src[ox];
                }
            }
        }
    }
}

/// [`col2im`] of one sample whose columns `[kh·kw·C, Ho·Wo]` are rows of a wider matrix,
/// row r at `columns[r·row_stride..]`, onto `image` `[C, H, W]` (added to what it holds).
/// Each input pixel receives its contributions in the same (ky, kx) order as [`col2im`].
pub fn fold_rows(columns: &[f32], row_stride: usize, image: &mut [f32], g: &FoldGeometry) {
    let (kh, kw) = g.kernel;
    for ky in 0..kh {
        for kx in 0..kw {
            let block = &columns[(ky * kw + kx) * g.channels * row_stride..];
            fold_shift(block, row_stride, image, g, (ky, kx));
        }
    }
}

/// [`col2im`] of one sample whose columns are stored position-major, `[Ho·Wo, kh·kw·C]`,
/// onto `image` `[C, H, W]` (added to what it holds). Each input pixel receives its
/// contributions in the same (ky, kx) order as [`col2im`] adds them.
pub fn fold_position_major(columns: &[f32], image: &mut [f32], g: &FoldGeometry) {
    let ((h, w), (ho, wo), c) = (g.input, g.output, g.channels);
    let (kh, kw) = g.kernel;
    let rows = kh * kw * c;
    for ky in 0..kh {
        for kx in 0..kw {
            let tap = (ky * kw + kx) * c;
            for oy in 0..ho {
                let Some(y) = g.source(oy, ky, h) else {
                    continue;
                };
                for ox in 0..wo {
                    let Some(x) = g.source(ox, kx, w) else {
                        continue;
                    };
                    let src = &columns[(oy * wo + ox) * rows + tap..][..c];
                    for (channel, v) in src.iter().enumerate() {
                        image[(channel * h + y) * w + x] += v;
                    }
                }
            }
        }
    }
}
