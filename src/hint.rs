//! CPU hints for the hot paths: prefetching memory that will be touched soon,
//! where measurement showed the miss (see the callers).

/// Ask the CPU to bring the `len` bytes at `start` into its cache. A hint
/// only: it reads nothing architecturally and cannot fault, whatever the
/// address; on other architectures it does nothing.
#[inline]
pub fn prefetch<T: ?Sized>(start: *const T, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = start.cast::<i8>();
        for off in (0..len).step_by(64) {
            // SAFETY: `_mm_prefetch` never dereferences architecturally and
            // cannot fault, so any address is sound.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch(start.wrapping_add(off), _MM_HINT_T0)
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}
