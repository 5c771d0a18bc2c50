//! An output computed with plain tensor ops, handed to a custom autograd op's forward.
//!
//! candle's custom ops compute their forward on raw storage. The chunked attention and the
//! frozen layers compute theirs with ordinary tensor ops instead, then attach a custom
//! backward: the op's forward only hands over this output. It is handed over once, so the
//! graph node (alive until the backward) does not keep a second copy of it.

use std::sync::Mutex;

use super::fused_cpu::PIECE_VALUES;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, MetalStorage, Result, Shape, Storage, Tensor};

pub(crate) struct PrecomputedOutput {
    output: Mutex<Option<Tensor>>,
    op: &'static str,
}

impl PrecomputedOutput {
    pub fn new(output: Tensor, op: &'static str) -> Self {
        Self {
            output: Mutex::new(Some(output)),
            op,
        }
    }

    fn take(&self) -> Result<(Storage, Shape)> {
        let taken = self.output.lock().map(|mut o| o.take());
        let Ok(Some(output)) = taken else {
            candle_core::bail!("{}: the output was already handed over", self.op);
        };
        let _stage = super::profile::stage(|| format!("{} output hand-over copy", self.op));
        let (storage, layout) = output.storage_and_layout();
        let copy = match &*storage {
            Storage::Cpu(s) => Storage::Cpu(s.try_clone(layout)?),
            Storage::Cuda(s) => Storage::Cuda(s.try_clone(layout)?),
            Storage::Metal(s) => Storage::Metal(s.try_clone(layout)?),
        };
        Ok((copy, output.shape().clone()))
    }

    pub fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        match self.take()? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{}: the output is not on the CPU", self.op),
        }
    }

    pub fn cuda(&self) -> Result<(CudaStorage, Shape)> {
        match self.take()? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{}: the output is not on the CUDA device", self.op),
        }
    }

    pub fn metal(&self) -> Result<(MetalStorage, Shape)> {
        match self.take()? {
            (Storage::Metal(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{}: the output is not on the Metal device", self.op),
        }
    }
}

/// The input gradient of a one-input op whose parameters are constants.
pub(crate) trait InputGradient: Send + Sync + 'static {
    const NAME: &'static str;
    fn input_gradient(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor>;

    /// The stage name of the backward from `x` in a profile (see [`super::profile`]).
    fn profile_name(&self, x: &Tensor) -> String {
        format!("{} backward {:?}", Self::NAME, x.dims())
    }
}

/// `output`, computed from `x` outside any graph, attached to `x`'s autograd graph with
/// `gradient` as its backward.
pub(crate) fn attach<G: InputGradient>(x: &Tensor, output: Tensor, gradient: G) -> Result<Tensor> {
    x.apply_op1(Node {
        output: PrecomputedOutput::new(whole(output)?, G::NAME),
        gradient,
    })
}

/// `output` as a tensor that owns its storage from the start (what is handed over is the
/// storage itself).
fn whole(output: Tensor) -> Result<Tensor> {
    if output.is_contiguous() && output.layout().start_offset() == 0 {
        Ok(output)
    } else {
        output.copy()
    }
}

struct Node<G> {
    output: PrecomputedOutput,
    gradient: G,
}

impl<G: InputGradient> candle_core::CustomOp1 for Node<G> {
    fn name(&self) -> &'static str {
        G::NAME
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &candle_core::Layout) -> Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &candle_core::Layout) -> Result<(CudaStorage, Shape)> {
        self.output.cuda()
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &candle_core::Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.output.metal()
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _stage = super::profile::stage(|| self.gradient.profile_name(x));
        let grad_x = self.gradient.input_gradient(&x.detach(), &grad.detach())?;
        Ok(Some(grad_x))
    }
}

/// A frozen one-input op with a kernel that reads f32 CPU values and writes its output
/// directly: as a graph node it needs no precomputed output, so nothing is copied.
pub(crate) trait CpuKernel: InputGradient + Clone {
    /// The output values and dims for `x`'s contiguous values of shape `dims`.
    fn cpu_kernel(&self, x: &[f32], dims: &[usize]) -> Result<(Vec<f32>, Vec<usize>)>;
}

/// `op`'s kernel on an f32 CPU tensor, as a graph node of `x` when it tracks a gradient
/// (candle adds no node for an input that tracks none).
pub(crate) fn apply_cpu_kernel<K: CpuKernel>(x: &Tensor, op: &K) -> Result<Tensor> {
    x.contiguous()?.apply_op1(KernelNode(op.clone()))
}

struct KernelNode<K>(K);

impl<K: CpuKernel> candle_core::CustomOp1 for KernelNode<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &candle_core::Layout) -> Result<(CpuStorage, Shape)> {
        let (values, dims) = self
            .0
            .cpu_kernel(super::matmul_cpu::cpu_values(x, layout)?, layout.dims())?;
        Ok((CpuStorage::F32(values), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _stage = super::profile::stage(|| self.0.profile_name(x));
        let grad_x = self.0.input_gradient(&x.detach(), &grad.detach())?;
        Ok(Some(grad_x))
    }
}

/// The gradients of a two-input op whose output was computed outside any graph.
pub(crate) trait PairGradient: Send + Sync + 'static {
    const NAME: &'static str;

    /// (∂L/∂a, ∂L/∂b) for the output `out` and its gradient `grad`, each `None` where that
    /// input tracks no gradient.
    fn gradients(
        &self,
        a: &Tensor,
        b: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)>;
}

/// `output`, computed from `a` and `b` outside any graph, attached to both their graphs with
/// `gradient` as its backward.
pub(crate) fn attach_pair<G: PairGradient>(
    a: &Tensor,
    b: &Tensor,
    output: Tensor,
    gradient: G,
) -> Result<Tensor> {
    a.apply_op2(
        b,
        PairNode {
            output: PrecomputedOutput::new(whole(output)?, G::NAME),
            gradient,
        },
    )
}

struct PairNode<G> {
    output: PrecomputedOutput,
    gradient: G,
}

impl<G: PairGradient> candle_core::CustomOp2 for PairNode<G> {
    fn name(&self) -> &'static str {
        G::NAME
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &candle_core::Layout,
        _: &CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &candle_core::Layout,
        _: &CudaStorage,
        _: &candle_core::Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.output.cuda()
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &candle_core::Layout,
        _: &MetalStorage,
        _: &candle_core::Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.output.metal()
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.gradient.gradients(a, b, out, grad)
    }
}

/// `output`, computed outside any graph as `f(x) + residual` (the residual broadcast to it),
/// attached to the graphs of `x` and `residual`: `gradient` gives `x`'s gradient, and the
/// residual's is the output's own. The node holds `x` and the residual, which the graph keeps
/// anyway, instead of `f(x)` and a sum node.
pub(crate) fn attach_adding<G: InputGradient>(
    x: &Tensor,
    residual: &Tensor,
    output: Tensor,
    gradient: G,
) -> Result<Tensor> {
    attach_pair(x, residual, output, Adding(gradient))
}

/// The backward of `f(x) + residual` for `f`'s input gradient.
struct Adding<G>(G);

impl<G: InputGradient> PairGradient for Adding<G> {
    const NAME: &'static str = G::NAME;

    fn gradients(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        adding_gradients(&self.0, x, residual, grad)
    }
}

/// The gradients of `f(x) + residual`: `f`'s input gradient for `x`, the output gradient
/// (summed over the broadcast dimensions) for the residual; only for inputs that track one.
fn adding_gradients<G: InputGradient>(
    gradient: &G,
    x: &Tensor,
    residual: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let grad_x = if x.track_op() {
        let _stage = super::profile::stage(|| gradient.profile_name(x));
        Some(gradient.input_gradient(&x.detach(), &grad.detach())?)
    } else {
        None
    };
    let grad_residual = if residual.track_op() {
        let broadcast: Vec<usize> = (0..grad.rank())
            .filter(|&d| residual.dims()[d] == 1 && grad.dims()[d] != 1)
            .collect();
        let summed = if broadcast.is_empty() {
            grad.detach()
        } else {
            grad.detach().sum_keepdim(broadcast)?
        };
        Some(summed.reshape(residual.shape())?)
    } else {
        None
    };
    Ok((grad_x, grad_residual))
}

/// [`apply_cpu_kernel`] plus `residual` (of the output's shape, f32 on the CPU), added in the
/// kernel's output buffer: as a graph node of `x` and `residual`, the layer's own output never
/// exists as a tensor of its own.
pub(crate) fn apply_cpu_kernel_adding<K: CpuKernel>(
    x: &Tensor,
    residual: &Tensor,
    op: &K,
) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&residual.contiguous()?, KernelAddingNode(op.clone()))
}

/// The kernel's output with `residual` added, after checking that the shapes agree.
fn kernel_adding<K: CpuKernel>(
    op: &K,
    x: &[f32],
    dims: &[usize],
    residual: &[f32],
    residual_dims: &[usize],
) -> Result<(Vec<f32>, Vec<usize>)> {
    let (mut values, out_dims) = op.cpu_kernel(x, dims)?;
    if out_dims != residual_dims {
        candle_core::bail!(
            "{}: a residual of shape {residual_dims:?} for an output of {out_dims:?}",
            K::NAME
        );
    }
    super::fused_cpu::for_each_chunk(&mut values, residual, PIECE_VALUES, |_, y, r| {
        y.iter_mut().zip(r).for_each(|(y, r)| *y += *r);
    });
    Ok((values, out_dims))
}

struct KernelAddingNode<K>(K);

impl<K: CpuKernel> candle_core::CustomOp2 for KernelAddingNode<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        layout: &candle_core::Layout,
        residual: &CpuStorage,
        r_layout: &candle_core::Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (values, dims) = kernel_adding(
            &self.0,
            super::matmul_cpu::cpu_values(x, layout)?,
            layout.dims(),
            super::matmul_cpu::cpu_values(residual, r_layout)?,
            r_layout.dims(),
        )?;
        Ok((CpuStorage::F32(values), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        adding_gradients(&self.0, x, residual, grad)
    }
}
