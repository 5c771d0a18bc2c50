//! An allocator for Mirror's programs that asks Linux for 2 MiB pages on large blocks.
//!
//! A UNet pass at SD 1.5 size allocates tens of fresh buffers of 10–100 MB (a layer's output,
//! a padded input, a gradient). The system allocator maps each one anew, and the kernel then
//! faults it in 4 KiB at a time on the first write: on the GEGLU projection at 64², that cost
//! as much as the product itself. Marked for transparent huge pages before their first touch,
//! those blocks fault in 512 times less often. Nothing else changes: the blocks come from and
//! go back to the system allocator, and where huge pages are switched off (or on other
//! systems) the advice is ignored.
//!
//! A program opts in with
//! `#[global_allocator] static ALLOCATOR: LargePageAllocator = LargePageAllocator;`.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks from this size on are advised: below it a block rarely spans a whole 2 MiB page,
/// and the system call would cost more than the faults it saves.
pub const ADVISED_FROM: usize = 4 << 20;

/// A transparent huge page on x86-64 and most ARM kernels.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// The system allocator, with large blocks marked for transparent huge pages.
#[derive(Debug, Default, Clone, Copy)]
pub struct LargePageAllocator;

// SAFETY: every block comes from `System` and goes back to it with the same layout; the
// advice only changes how the kernel backs the pages of a block we own, never its contents.
unsafe impl GlobalAlloc for LargePageAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        let block = unsafe { System.alloc(layout) };
        advise(block, layout.size());
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`. A fresh mapping comes zeroed without being touched, so
        // the advice still applies to its first faults.
        let block = unsafe { System.alloc_zeroed(layout) };
        advise(block, layout.size());
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: `block` came from `System` with this layout (see above).
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller's contract is `System.realloc`'s.
        let moved = unsafe { System.realloc(block, layout, new_size) };
        advise(moved, new_size);
        moved
    }
}

/// Marks the whole 2 MiB pages inside a large block for transparent huge pages.
#[cfg(target_os = "linux")]
fn advise(block: *mut u8, size: usize) {
    if block.is_null() || size < ADVISED_FROM {
        return;
    }
    let start = (block as usize).next_multiple_of(HUGE_PAGE);
    let end = (block as usize + size) / HUGE_PAGE * HUGE_PAGE;
    if end > start {
        // SAFETY: [start, end) lies inside the block just allocated; madvise with
        // MADV_HUGEPAGE changes no contents, and an error (huge pages unsupported) only
        // means the advice is not taken.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_block: *mut u8, _size: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large and small blocks, zeroed or not, grown and shrunk, keep their contents.
    #[test]
    fn blocks_keep_their_contents() {
        let allocator = LargePageAllocator;
        for size in [
            64,
            ADVISED_FROM - 8,
            ADVISED_FROM,
            3 * ADVISED_FROM + 12_345,
        ] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: non-zero sizes, blocks used within their sizes and freed with the
            // layout they were allocated (or reallocated) with.
            unsafe {
                let zeroed = allocator.alloc_zeroed(layout);
                assert!(!zeroed.is_null());
                assert!(
                    std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0)
                );
                allocator.dealloc(zeroed, layout);

                let block = allocator.alloc(layout);
                assert!(!block.is_null());
                for i in 0..size {
                    *block.add(i) = (i % 251) as u8;
                }
                let grown = allocator.realloc(block, layout, 2 * size);
                assert!(!grown.is_null());
                assert!((0..size).all(|i| *grown.add(i) == (i % 251) as u8));
                let grown_layout = Layout::from_size_align(2 * size, 64).unwrap();
                let shrunk = allocator.realloc(grown, grown_layout, size / 2);
                assert!((0..size / 2).all(|i| *shrunk.add(i) == (i % 251) as u8));
                allocator.dealloc(shrunk, Layout::from_size_align(size / 2, 64).unwrap());
            }
        }
    }

    /// On Linux with transparent huge pages, a large block's whole 2 MiB pages carry the
    /// advice (the `hg` flag of their mapping in /proc/self/smaps); a small block's do not.
    #[cfg(target_os = "linux")]
    #[test]
    fn large_blocks_are_advised_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        /// The VmFlags of the mapping that holds `address`.
        fn flags_at(address: usize) -> Vec<String> {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut inside = false;
            for line in smaps.lines() {
                let range = line.split_whitespace().next().unwrap_or("");
                if let Some((from, to)) = range.split_once('-')
                    && let (Ok(from), Ok(to)) = (
                        usize::from_str_radix(from, 16),
                        usize::from_str_radix(to, 16),
                    )
                {
                    inside = (from..to).contains(&address);
                } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.split_whitespace().map(str::to_owned).collect();
                }
            }
            panic!("no mapping holds {address:#x}");
        }
        let allocator = LargePageAllocator;
        let size = 4 * ADVISED_FROM;
        let layout = Layout::from_size_align(size, 64).unwrap();
        // SAFETY: a non-zero size, freed with its layout; only its address is read.
        unsafe {
            let block = allocator.alloc(layout);
            let page = (block as usize).next_multiple_of(HUGE_PAGE);
            let advised = flags_at(page).contains(&"hg".to_owned());
            allocator.dealloc(block, layout);
            assert!(advised, "a {size}-byte block is not advised");
        }
        let mut small = vec![0u8; 1 << 16];
        small[0] = 1;
        assert!(!flags_at(small.as_ptr() as usize).contains(&"hg".to_owned()));
    }
}
