//! Cache prefetch hints for the batched fast path.
#![allow(unsafe_code)]

/// Asks the CPU to start loading the cache line holding `r`. A hint only: no effect on
/// correctness, never faults.
#[inline(always)]
pub fn read<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint that never faults and does not read memory architecturally;
    // the pointer comes from a valid reference anyway.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            (r as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
