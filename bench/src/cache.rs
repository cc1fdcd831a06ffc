//! Memory latency by working-set size: a random pointer chase, one cache line a step, each load
//! waiting for the one before. It shows how much last-level cache one core of this machine
//! really gets: on a shared VM far less than `lscpu` says, which decides where the pipeline's
//! flow-table scenarios fall off (see docs/perf.md).

use std::time::Instant;

/// Nanoseconds per dependent load over a random cycle through `bytes` of memory (64-byte lines,
/// on 2 MiB pages where the kernel gives them, as the flow table is), timed over `loads` loads.
// Casts: u64/u128 to usize or u64: lossless on the 64-bit targets meshd runs on.
#[allow(clippy::cast_possible_truncation)]
pub fn chase(bytes: usize, loads: usize) -> f64 {
    let lines = (bytes / 64).max(2);
    // One cycle through every line, in random order (the same cycle every run).
    let order = crate::scenarios::shuffled(lines, true);
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
    fn the_chase_walks_one_cycle_through_every_line() {
        let order = crate::scenarios::shuffled(1000, true);
        let (mut p, mut seen) = (0usize, vec![false; 1000]);
        for _ in 0..1000 {
            assert!(!seen[p], "line {p} visited twice before the cycle closed");
            seen[p] = true;
            p = order[p] as usize;
        }
        assert_eq!(p, 0);
    }

    #[test]
    fn the_chase_runs_and_reports_a_latency() {
        let ns = chase(1 << 16, 10_000);
        assert!(ns > 0.0 && ns.is_finite());
    }
}
