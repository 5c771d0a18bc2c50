//! An output computed with plain tensor ops, handed to a custom autograd op's forward.
//!
//! candle's custom ops compute their forward on raw storage. The chunked attention and the
//! frozen layers compute theirs with ordinary tensor ops instead, then attach a custom
//! backward: the op's forward only hands over this output. It is handed over once, so the
//! graph node (alive until the backward) does not keep a second copy of it.

use std::sync::Mutex;

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
