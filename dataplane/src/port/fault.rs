//! A fault injector around any [`Port`], as smoltcp's `phy::FaultInjector`: it drops,
//! duplicates, reorders and corrupts received frames at set rates, from a seed, so a test can
//! put a lossy, reordering link under real workers and check that meshd counts what it drops
//! and keeps working. Deterministic: no clock, no randomness from the system.

use super::{Burst, Port, PortCounters};
use crate::buf::{PacketBuf, Pool};

/// What to do to received frames, each a chance out of 1000 per frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Frames dropped.
    pub drop_per_mille: u16,
    /// Frames delivered twice.
    pub duplicate_per_mille: u16,
    /// Frames held back and delivered after the next one.
    pub reorder_per_mille: u16,
    /// Frames with one byte flipped (anywhere in the frame).
    pub corrupt_per_mille: u16,
    /// The seed of the generator (the same seed, the same faults).
    pub seed: u64,
}

/// What the injector did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
}

/// A port whose received frames suffer [`Faults`]; sent frames pass untouched.
#[derive(Debug)]
pub struct FaultInjector<P> {
    inner: P,
    faults: Faults,
    state: u64,
    /// A frame held back to be delivered after the next one.
    held: Option<PacketBuf>,
    pub counts: FaultCounts,
}

impl<P: Port> FaultInjector<P> {
    pub fn new(inner: P, faults: Faults) -> Self {
        FaultInjector {
            inner,
            state: faults.seed ^ 0x9e37_79b9_7f4a_7c15,
            faults,
            held: None,
            counts: FaultCounts::default(),
        }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// splitmix64: a fixed sequence from the seed.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, per_mille: u16) -> bool {
        per_mille > 0 && self.next() % 1000 < u64::from(per_mille)
    }
}

impl<P: Port> Port for FaultInjector<P> {
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Burst) -> usize {
        let mut got = Burst::new();
        self.inner.rx_burst(pool, &mut got);
        let before = out.len();
        for mut b in got.drain(..) {
            if self.chance(self.faults.drop_per_mille) {
                self.counts.dropped += 1;
                pool.put(b);
                continue;
            }
            if self.chance(self.faults.corrupt_per_mille) && !b.is_empty() {
                let r = self.next();
                let len = b.len();
                let at = usize::try_from(r % u64::try_from(len).unwrap_or(1)).unwrap_or(0);
                let bit = 1u8 << ((r >> 32) % 8);
                if let Some(x) = b.data_mut().get_mut(at) {
                    *x ^= bit;
                }
                self.counts.corrupted += 1;
            }
            let dup = if self.chance(self.faults.duplicate_per_mille) {
                pool.get().map(|mut d| {
                    d.fill(b.data());
                    d.port = b.port;
                    d
                })
            } else {
                None
            };
            if self.held.is_none() && self.chance(self.faults.reorder_per_mille) {
                self.held = Some(b);
                self.counts.reordered += 1;
            } else {
                push_or_return(out, b, pool);
                if let Some(h) = self.held.take() {
                    push_or_return(out, h, pool);
                }
            }
            if let Some(d) = dup {
                self.counts.duplicated += 1;
                push_or_return(out, d, pool);
            }
        }
        out.len() - before
    }

    fn tx_burst(&mut self, frames: &mut Burst, pool: &mut Pool) -> usize {
        self.inner.tx_burst(frames, pool)
    }

    fn flush(&mut self) {
        self.inner.flush();
    }

    fn counters(&mut self) -> PortCounters {
        self.inner.counters()
    }

    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.wait_fd()
    }

    fn unsent(&self) -> bool {
        self.inner.unsent()
    }
}

/// Appends `b` to `out`, or hands it back to the pool when the burst is full (a duplicate
/// or a released frame past a full burst is lost, as on a congested link).
fn push_or_return(out: &mut Burst, b: PacketBuf, pool: &mut Pool) {
    if let Err(e) = out.try_push(b) {
        pool.put(e.element());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::PortId;
    use crate::port::mem;

    fn frames(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i; 60]).collect()
    }

    /// Receives everything the injector gives for `sent`, in batches of 8.
    fn through(faults: Faults, sent: &[Vec<u8>]) -> (Vec<Vec<u8>>, FaultCounts) {
        let (a, b) = mem::link(256);
        let mut f = FaultInjector::new(a, faults);
        let mut pool = Pool::new(64);
        let mut got = Vec::new();
        for chunk in sent.chunks(8) {
            for fr in chunk {
                assert!(f.inner().inject(PacketBuf::from_frame(PortId::Uplink, fr)));
            }
            let mut out = Burst::new();
            f.rx_burst(&mut pool, &mut out);
            got.extend(out.iter().map(|b| b.data().to_vec()));
        }
        drop(b);
        (got, f.counts)
    }

    #[test]
    fn no_faults_pass_everything_in_order() {
        let sent = frames(40);
        let (got, c) = through(Faults::default(), &sent);
        assert_eq!(got, sent);
        assert_eq!(c, FaultCounts::default());
    }

    #[test]
    fn each_fault_does_what_it_says_and_is_counted() {
        let sent = frames(200);
        let (got, c) = through(
            Faults {
                drop_per_mille: 300,
                seed: 1,
                ..Faults::default()
            },
            &sent,
        );
        assert_eq!(got.len() as u64 + c.dropped, 200);
        assert!((30..=90).contains(&c.dropped), "{c:?}");
        assert!(
            got.windows(2).all(|w| w[0][0] < w[1][0]),
            "drops keep the order"
        );

        let (got, c) = through(
            Faults {
                duplicate_per_mille: 300,
                seed: 2,
                ..Faults::default()
            },
            &sent,
        );
        assert_eq!(got.len() as u64, 200 + c.duplicated);
        assert!(c.duplicated > 20, "{c:?}");

        let (got, c) = through(
            Faults {
                reorder_per_mille: 300,
                seed: 3,
                ..Faults::default()
            },
            &sent,
        );
        assert!(c.reordered > 20, "{c:?}");
        assert!(
            got.windows(2).any(|w| w[0][0] > w[1][0]),
            "some frames swapped"
        );
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert!(
            sorted.len() >= 200 - 8,
            "reordering loses at most a held frame per batch end"
        );

        let (got, c) = through(
            Faults {
                corrupt_per_mille: 1000,
                seed: 4,
                ..Faults::default()
            },
            &sent,
        );
        assert_eq!(c.corrupted, 200);
        for (g, s) in got.iter().zip(&sent) {
            let flipped: u32 = g.iter().zip(s).map(|(x, y)| (x ^ y).count_ones()).sum();
            assert_eq!(flipped, 1, "one bit flipped per frame");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let sent = frames(100);
        let f = Faults {
            drop_per_mille: 100,
            duplicate_per_mille: 100,
            reorder_per_mille: 100,
            corrupt_per_mille: 100,
            seed: 9,
        };
        assert_eq!(through(f, &sent), through(f, &sent));
        let other = Faults { seed: 10, ..f };
        assert_ne!(through(f, &sent).0, through(other, &sent).0);
    }
}
