//! Memory latency by working-set size: a random pointer chase, one cache line a step, each load
//! waiting for the one before. It shows how much last-level cache one core of this machine
//! really gets: on a shared VM far less than `lscpu` says, which decides where the pipeline's
//! flow-table scenarios fall off (see docs/perf.md).

use std::time::Instant;

/// Nanoseconds per dependent load over a random cycle through `bytes` of memory (64-byte lines,
/// on 2 MiB pages where the kernel gives them, as the flow table is), timed over `loads` loads.
pub fn chase(bytes: usize, loads: usize) -> f64 {
    let lines = (bytes / 64).max(2);
    // One cycle through every line, in random order (Sattolo's shuffle; xorshift, so every run
    // walks the same cycle).
    let mut order: Vec<u32> = (0..lines as u32).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..lines).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % i as u64) as usize);
    }
    let mut next = dataplane::hugepage::vec_of(lines, [0u64; 8]);
    for (line, &to) in next.iter_mut().zip(&order) {
        line[0] = u64::from(to);
    }
    let mut p = 0usize;
    // Once round to bring in what fits.
    for _ in 0..lines {
        p = next[p][0] as usize;
    }
    let t = Instant::now();
    for _ in 0..loads {
        p = next[p][0] as usize;
    }
    let ns = t.elapsed().as_nanos() as f64 / loads as f64;
    std::hint::black_box(p);
    ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chase_runs_and_reports_a_latency() {
        let ns = chase(1 << 16, 10_000);
        assert!(ns > 0.0 && ns.is_finite());
    }
}
