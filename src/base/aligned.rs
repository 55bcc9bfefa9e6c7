//! The binary's default allocator: the system's `malloc`, except for small blocks
//! aligned to more than 16 bytes, which come from slabs of equal blocks.
//!
//! tokio allocates every task cell and every socket registration (`ScheduledIo`)
//! 128-byte aligned, so an idle async connection is two such blocks (384 and 256
//! bytes). glibc's `memalign` takes `size + alignment + 32` bytes from the heap for
//! each and frees the unaligned head and tail as fragments too small for the next
//! aligned request: about 150 bytes lost per block, 1,030 bytes of RSS per idle
//! connection for 680 bytes allocated (`BENCHMARKS.md`, idle connections). Here a
//! block of size `S` (the size rounded up to its alignment, at most [`MAX`] bytes) is
//! cut from a page-aligned chunk at a multiple of `S`, so it is aligned for free and
//! costs exactly `S`; freed blocks go on their size's free list and are reused by the
//! next block of that size. Every other request (alignment ≤ 16, the common case, or a
//! block over [`MAX`]) is glibc's, untouched, so a thread-per-connection client keeps
//! glibc's small per-thread footprint (jemalloc, which also aligns for free, doubles
//! it with its per-thread caches).
//!
//! The price: a slab's memory is never handed back to the system (glibc rarely hands
//! back the middle of its heap either); after a peak of 19,000 connections about
//! 12 MB stay for the next peak. Each size has one lock, taken once per allocation
//! and free of an over-aligned block (a task spawn, a socket registration), never
//! per message.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::Mutex;

/// The largest block (size rounded up to its alignment) served from the slabs.
pub const MAX: usize = 1024;
/// The slab sizes are the multiples of this (the smallest alignment served here).
const STEP: usize = 32;
/// Bytes mapped at a time for one size's blocks.
const CHUNK: usize = 256 * 1024;

/// One block size's slab: the free list threaded through the freed blocks, and the
/// untouched rest of the newest chunk.
struct Slab {
    free: *mut u8,
    next: *mut u8,
    end: *mut u8,
}

// SAFETY: the pointers are only dereferenced under the slab's lock; the memory they
// point to belongs to the allocator, not to a thread.
unsafe impl Send for Slab {}

/// The allocator: [`System`] with slabs for small over-aligned blocks.
pub struct Aligned {
    slabs: [Mutex<Slab>; MAX / STEP],
}

impl Aligned {
    /// An allocator with empty slabs (they map memory on first use).
    pub const fn new() -> Self {
        Self {
            slabs: [const {
                Mutex::new(Slab {
                    free: ptr::null_mut(),
                    next: ptr::null_mut(),
                    end: ptr::null_mut(),
                })
            }; MAX / STEP],
        }
    }

    /// The slab block size for `layout`, if it is one served here.
    fn block(layout: Layout) -> Option<usize> {
        let align = layout.align();
        if align <= 16 {
            return None;
        }
        let size = layout.size().max(1).checked_next_multiple_of(align)?;
        (size <= MAX).then_some(size)
    }

    /// A block of `size` bytes (a multiple of [`STEP`]) from its slab, null if no
    /// memory could be mapped.
    fn take(&self, size: usize) -> *mut u8 {
        let mut s = self.slabs[size / STEP - 1]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !s.free.is_null() {
            let b = s.free;
            // SAFETY: a block on the free list holds the next one's address in its
            // first word (written by `give`), and blocks are at least 32 bytes.
            s.free = unsafe { b.cast::<*mut u8>().read() };
            return b;
        }
        if (s.end as usize) - (s.next as usize) < size {
            // SAFETY: an anonymous private mapping, no file, no fixed address.
            let m = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    CHUNK,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if m == libc::MAP_FAILED {
                return ptr::null_mut();
            }
            s.next = m.cast();
            // SAFETY: the end of the mapping just made.
            s.end = unsafe { s.next.add(CHUNK) };
        }
        let b = s.next;
        // SAFETY: at least `size` bytes are left before `end` (checked above).
        s.next = unsafe { b.add(size) };
        b
    }

    /// Puts a block of `size` bytes back on its slab's free list.
    ///
    /// # Safety
    /// `b` came from `take(size)` and is not used again.
    unsafe fn give(&self, b: *mut u8, size: usize) {
        let mut s = self.slabs[size / STEP - 1]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // SAFETY: the block is ours again and at least a word long and aligned.
        unsafe { b.cast::<*mut u8>().write(s.free) };
        s.free = b;
    }
}

impl Default for Aligned {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block is either System's (and handed back to it) or a slab block of
// at least the layout's size at a multiple of its size in a page-aligned chunk, hence
// aligned; `block` sends the same layout to the same side in `alloc` and `dealloc`.
unsafe impl GlobalAlloc for Aligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::block(layout) {
            Some(size) => self.take(size),
            // SAFETY: the caller's layout, as GlobalAlloc requires.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::block(layout) {
            // SAFETY: allocated by `take(size)` for this layout.
            Some(size) => unsafe { self.give(ptr, size) },
            // SAFETY: allocated by System for this layout.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees the new layout is valid.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old_block, new_block) = (Self::block(layout), Self::block(new));
        if old_block == new_block {
            return match old_block {
                // The same slab block holds the new size.
                Some(_) => ptr,
                // SAFETY: System's block, and System's again at the new size.
                None => unsafe { System.realloc(ptr, layout, new_size) },
            };
        }
        // The block changes sides or slabs (an over-aligned block grown past `MAX`,
        // or shrunk into a slab's size: `dealloc` will look at the new layout, so the
        // block must then be a slab's). SAFETY: a fresh block for the new layout, the
        // old one's bytes copied (as many as both hold), then the old one freed where
        // it came from.
        unsafe {
            let p = self.alloc(new);
            if !p.is_null() {
                ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn small_over_aligned_blocks_are_aligned_and_tile_their_chunk() {
        let a = Aligned::new();
        for (size, align) in [(384, 128), (256, 128), (40, 64), (1, 32), (1024, 1024)] {
            let l = layout(size, align);
            let ps: Vec<_> = (0..100).map(|_| unsafe { a.alloc(l) }).collect();
            for p in &ps {
                assert!(!p.is_null());
                assert_eq!(*p as usize % align, 0, "{size}/{align}");
                unsafe { p.write_bytes(0xa5, size) };
            }
            // Consecutive blocks of one chunk are exactly one block apart: no gaps.
            let step = size.next_multiple_of(align) as isize;
            let tight = ps
                .windows(2)
                .filter(|w| unsafe { w[1].offset_from(w[0]) } == step);
            assert!(tight.count() >= 90, "{size}/{align}");
            for p in ps {
                unsafe { a.dealloc(p, l) };
            }
        }
    }

    #[test]
    fn a_freed_block_is_the_next_one_given_for_its_size() {
        let a = Aligned::new();
        let l = layout(384, 128);
        let p = unsafe { a.alloc(l) };
        let q = unsafe { a.alloc(l) };
        unsafe { a.dealloc(p, l) };
        assert_eq!(unsafe { a.alloc(l) }, p);
        // Another size does not take it.
        unsafe { a.dealloc(q, l) };
        let r = unsafe { a.alloc(layout(256, 128)) };
        assert_ne!(r, q);
    }

    #[test]
    fn ordinary_and_large_blocks_are_left_to_the_system() {
        assert_eq!(Aligned::block(layout(384, 8)), None);
        assert_eq!(Aligned::block(layout(4096, 16)), None);
        assert_eq!(Aligned::block(layout(1025, 128)), None);
        assert_eq!(Aligned::block(layout(384, 128)), Some(384));
        assert_eq!(Aligned::block(layout(300, 128)), Some(384));
        assert_eq!(Aligned::block(layout(0, 64)), Some(64));
        let a = Aligned::new();
        let l = layout(4096, 128);
        let p = unsafe { a.alloc(l) };
        assert_eq!(p as usize % 128, 0);
        unsafe { a.dealloc(p, l) };
    }

    #[test]
    fn realloc_keeps_the_bytes_across_slab_sizes_and_into_the_system() {
        let a = Aligned::new();
        let l = layout(100, 64);
        let p = unsafe { a.alloc(l) };
        for i in 0..100 {
            unsafe { p.add(i).write(i as u8) };
        }
        // Within its 128-byte block: the same block.
        assert_eq!(unsafe { a.realloc(p, l, 120) }, p);
        let l = layout(120, 64);
        let q = unsafe { a.realloc(p, l, 700) };
        assert_eq!(q as usize % 64, 0);
        let l = layout(700, 64);
        let r = unsafe { a.realloc(q, l, 5000) };
        assert_eq!(r as usize % 64, 0);
        for i in 0..100 {
            assert_eq!(unsafe { r.add(i).read() }, i as u8);
        }
        unsafe { a.dealloc(r, layout(5000, 64)) };
    }

    #[test]
    fn a_system_block_shrunk_to_a_slab_size_moves_into_the_slab() {
        // `dealloc` finds a block's side from its layout: a block of 4096 bytes
        // aligned to 128 is the system's, but shrunk to 500 its layout says "slab", so
        // it must be in the slab by then (else a system block of ~500 bytes would be
        // handed out later as a 512-byte slab block).
        let a = Aligned::new();
        let big = layout(4096, 128);
        let p = unsafe { a.alloc(big) };
        for i in 0..500 {
            unsafe { p.add(i).write(i as u8) };
        }
        let small = layout(500, 128);
        let q = unsafe { a.realloc(p, big, 500) };
        assert_eq!(q as usize % 128, 0);
        for i in 0..500 {
            assert_eq!(unsafe { q.add(i).read() }, i as u8);
        }
        // The next 512-byte block of this (fresh) allocator is cut right after it.
        let r = unsafe { a.alloc(small) };
        assert_eq!(
            r as usize - q as usize,
            512,
            "the shrunk block is not a slab's"
        );
        unsafe {
            a.dealloc(r, small);
            a.dealloc(q, small);
        }
    }

    #[test]
    fn threads_allocating_at_once_never_share_a_block() {
        static A: Aligned = Aligned::new();
        let l = layout(384, 128);
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let ps: Vec<_> = (0..8).map(|_| unsafe { A.alloc(l) }).collect();
                        for p in &ps {
                            unsafe { p.write_bytes(t, 384) };
                        }
                        for p in ps {
                            let all = unsafe { std::slice::from_raw_parts(p, 384) };
                            assert!(all.iter().all(|&b| b == t));
                            unsafe { A.dealloc(p, l) };
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
