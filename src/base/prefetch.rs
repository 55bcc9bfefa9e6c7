//! A cache hint: bring a value into the first-level cache ahead of its use, so a loop
//! whose every step goes through the kernel (a fan-out's sends) does not begin each
//! step with a miss.

/// Asks the CPU to bring the `T` at `p` into its first-level cache, every cache line
/// of it: a hint, which never faults and changes nothing but timing (a no-op but on
/// x86-64, the server's target). Hand-written: the one intrinsic, behind a safe call.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // From the line `p` starts in to the one its last byte is in.
        let skew = p.addr() % 64;
        let first = p.cast::<i8>().wrapping_sub(skew);
        for line in 0..(skew + std::mem::size_of::<T>()).div_ceil(64) {
            // SAFETY: a prefetch reads nothing the program sees and does not fault,
            // whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(line * 64)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
