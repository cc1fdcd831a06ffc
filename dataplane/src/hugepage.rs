//! Transparent huge pages for the big tables (flow slots and flows): a million flows span
//! hundreds of megabytes, and with 4 KiB pages nearly every lookup would also miss the TLB.
#![allow(unsafe_code)]

/// A vector of `n` copies of `value`, its memory advised to be backed by huge pages before it is
/// first touched (Linux `MADV_HUGEPAGE`; a no-op where the kernel says no).
pub fn vec_of<T: Clone>(n: usize, value: T) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let bytes = n * std::mem::size_of::<T>();
    if bytes >= 4 << 20 {
        let start = v.as_mut_ptr() as usize;
        let page = 2 << 20;
        let aligned = (start + page - 1) & !(page - 1);
        let end = (start + bytes) & !(page - 1);
        if end > aligned {
            // SAFETY: [aligned, end) lies inside the allocation `v` owns (its capacity is `n`
            // elements), and MADV_HUGEPAGE changes only how the kernel backs those pages, not their
            // contents or validity.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    v.resize(n, value);
    v
}
