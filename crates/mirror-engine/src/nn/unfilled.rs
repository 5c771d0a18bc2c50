//! Output buffers that a kernel writes in full, allocated without zeroing them first.
//!
//! `vec![0.0; n]` asks calloc for zeroed memory. A block of a fresh mapping is zero already,
//! but the large blocks a pass frees and allocates again come back from the heap, and calloc
//! then zeroes them on one thread: a pass of its own over every layer's output, before the
//! product that overwrites it. These buffers skip that pass; the kernel's own writes are the
//! first ones.

use std::mem::MaybeUninit;

/// `len` values not yet written.
pub(crate) fn unfilled<T>(len: usize) -> Vec<MaybeUninit<T>> {
    let mut buffer = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`, and a `MaybeUninit` needs no initial value.
    unsafe { buffer.set_len(len) };
    buffer
}

/// The values of `buffer`, once every one of them has been written.
///
/// # Safety
///
/// Every element of `buffer` must have been written.
pub(crate) unsafe fn filled<T>(buffer: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut buffer = std::mem::ManuallyDrop::new(buffer);
    let (pointer, len, capacity) = (buffer.as_mut_ptr(), buffer.len(), buffer.capacity());
    // SAFETY: `MaybeUninit<T>` has `T`'s size and alignment, so the allocation is a valid
    // `Vec<T>` allocation of the same capacity, and the caller guarantees that its `len`
    // values are initialised; `buffer` is not dropped, so the allocation has one owner.
    unsafe { Vec::from_raw_parts(pointer.cast::<T>(), len, capacity) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_values_come_back_in_order_with_the_allocation() {
        let mut buffer = unfilled::<f32>(1000);
        let capacity = buffer.capacity();
        for (i, value) in buffer.iter_mut().enumerate() {
            value.write(i as f32 * 0.5);
        }
        // SAFETY: every element was written just above.
        let values = unsafe { filled(buffer) };
        assert_eq!(values.len(), 1000);
        assert_eq!(values.capacity(), capacity);
        assert!(values.iter().enumerate().all(|(i, &v)| v == i as f32 * 0.5));
    }
}
