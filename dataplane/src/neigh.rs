//! The neighbour table: IPv4 address → MAC address of peers' VTEPs and local tasks, learned from
//! ARP and from the frames they send. Shared by all workers and the control thread without
//! locks: fixed-size open addressing over atomics, entries claimed by compare-and-swap and never
//! removed (a changed MAC overwrites).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::fastmap::mix64;

const VALID: u64 = 1 << 63;
const PROBES: usize = 16;

#[derive(Debug)]
struct Entry {
    ip: AtomicU32,
    mac: AtomicU64,
}

/// A lock-free IPv4 → MAC map.
#[derive(Debug)]
pub struct Neighbors {
    entries: Box<[Entry]>,
    mask: usize,
    /// Bumped after every change of an entry, so a worker's cache of a few entries can tell in
    /// one load that it is still right.
    version: AtomicU32,
}

fn pack(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&mac);
    u64::from_be_bytes(b) | VALID
}

fn unpack(v: u64) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

impl Neighbors {
    /// A table with room for about `capacity` addresses.
    pub fn new(capacity: usize) -> Self {
        let n = (capacity * 2).next_power_of_two().max(64);
        let entries = (0..n)
            .map(|_| Entry {
                ip: AtomicU32::new(0),
                mac: AtomicU64::new(0),
            })
            .collect();
        Neighbors {
            entries,
            mask: n - 1,
            version: AtomicU32::new(0),
        }
    }

    #[inline]
    // Casts: a hash folded to a slot index or tag: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    fn home(&self, ip: u32) -> usize {
        (mix64(u64::from(ip)) as usize) & self.mask
    }

    /// The MAC of `ip` (host byte order), if known.
    #[inline]
    pub fn get(&self, ip: u32) -> Option<[u8; 6]> {
        if ip == 0 {
            return None;
        }
        let mut i = self.home(ip);
        for _ in 0..PROBES {
            let e = &self.entries[i];
            let k = e.ip.load(Ordering::Acquire);
            if k == ip {
                let m = e.mac.load(Ordering::Acquire);
                return (m & VALID != 0).then(|| unpack(m));
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Changes so far. Read it before [`Neighbors::get`]: an answer cached with the version read
    /// before it is still the table's while the version is the same.
    #[inline]
    pub fn version(&self) -> u32 {
        self.version.load(Ordering::Acquire)
    }

    /// Records that `ip` is at `mac`. Writes only when something changed, so a hot entry's cache
    /// line stays shared between workers. Returns false when the table is too full to learn.
    #[inline]
    pub fn learn(&self, ip: u32, mac: [u8; 6]) -> bool {
        if ip == 0 || mac[0] & 1 != 0 {
            return false;
        }
        let packed = pack(mac);
        let mut i = self.home(ip);
        for _ in 0..PROBES {
            let e = &self.entries[i];
            let k = e.ip.load(Ordering::Acquire);
            let claimed = k == ip
                || (k == 0
                    && match e
                        .ip
                        .compare_exchange(0, ip, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => true,
                        Err(other) => other == ip,
                    });
            if claimed {
                if e.mac.load(Ordering::Relaxed) != packed {
                    e.mac.store(packed, Ordering::Release);
                    self.version.fetch_add(1, Ordering::Release);
                }
                return true;
            }
            i = (i + 1) & self.mask;
        }
        false
    }
}

/// A worker's small direct-mapped cache of what it derives from neighbours' MACs (the MAC
/// itself, prebuilt outer headers), in front of the shared table: an entry is right while the
/// table's [`Neighbors::version`] is the one it was made at, so a hit costs one load of the
/// version and two compares, no probe of the shared table.
#[derive(Debug, Clone)]
pub struct NeighCache<K, V, const N: usize> {
    /// (key, the table's version when the entry was made, value).
    entries: [Option<(K, u32, V)>; N],
}

impl<K: Copy + Eq, V: Copy, const N: usize> NeighCache<K, V, N> {
    const EMPTY: Option<(K, u32, V)> = None;

    pub fn new() -> Self {
        const { assert!(N.is_power_of_two() && N > 1) };
        NeighCache {
            entries: [Self::EMPTY; N],
        }
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries = [Self::EMPTY; N];
    }

    /// The value for `key`, whose neighbour is `ip`: the cached one, or `make(ip's MAC)` made
    /// now (`None` while `ip`'s MAC is unknown).
    #[inline(always)]
    pub fn get(
        &mut self,
        neigh: &Neighbors,
        key: K,
        ip: u32,
        make: impl FnOnce([u8; 6]) -> V,
    ) -> Option<&V> {
        let version = neigh.version();
        // The top bits of a multiplicative hash, so neighbouring addresses spread.
        let i = (ip.wrapping_mul(0x9e37_79b1) >> (32 - N.trailing_zeros())) as usize;
        let e = &mut self.entries[i];
        if !matches!(e, Some((k, v, _)) if *k == key && *v == version) {
            *e = Some((key, version, make(neigh.get(ip)?)));
        }
        e.as_ref().map(|(_, _, v)| v)
    }
}

impl<K: Copy + Eq, V: Copy, const N: usize> Default for NeighCache<K, V, N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn learns_and_updates() {
        let n = Neighbors::new(16);
        assert_eq!(n.get(5), None);
        let v0 = n.version();
        assert!(n.learn(5, [2, 0, 0, 0, 0, 1]));
        assert_eq!(n.get(5), Some([2, 0, 0, 0, 0, 1]));
        let v1 = n.version();
        assert_ne!(v0, v1, "a new entry is a change");
        assert!(n.learn(5, [2, 0, 0, 0, 0, 1]));
        assert_eq!(n.version(), v1, "learning the same MAC again is not");
        assert!(n.learn(5, [2, 0, 0, 0, 0, 2]));
        assert_eq!(n.get(5), Some([2, 0, 0, 0, 0, 2]));
        assert_ne!(n.version(), v1, "a moved address is");
        assert!(!n.learn(6, [0xff; 6]), "a broadcast MAC is never learned");
        assert!(!n.learn(0, [2; 6]));
    }

    #[test]
    fn a_cached_value_is_made_again_when_the_table_changes() {
        let n = Neighbors::new(16);
        let mut c: NeighCache<u32, [u8; 6], 8> = NeighCache::new();
        let mut made = 0;
        let mut get = |c: &mut NeighCache<u32, [u8; 6], 8>, ip| {
            c.get(&n, ip, ip, |m| {
                made += 1;
                m
            })
            .copied()
        };
        assert_eq!(get(&mut c, 5), None, "unknown: nothing cached");
        n.learn(5, [2, 0, 0, 0, 0, 1]);
        assert_eq!(get(&mut c, 5), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(get(&mut c, 5), Some([2, 0, 0, 0, 0, 1]));
        n.learn(5, [2, 0, 0, 0, 0, 2]);
        assert_eq!(
            get(&mut c, 5),
            Some([2, 0, 0, 0, 0, 2]),
            "moved: made again"
        );
        c.clear();
        assert_eq!(get(&mut c, 5), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(made, 3);
    }

    #[test]
    fn threads_learn_concurrently() {
        let n = Arc::new(Neighbors::new(4096));
        let hs: Vec<_> = (0..4u32)
            .map(|t| {
                let n = n.clone();
                std::thread::spawn(move || {
                    for ip in 1..1000u32 {
                        n.learn(ip, [2, 0, 0, 0, (ip >> 8) as u8, ip as u8]);
                        let _ = n.get(ip + t);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        for ip in 1..1000u32 {
            assert_eq!(n.get(ip), Some([2, 0, 0, 0, (ip >> 8) as u8, ip as u8]));
        }
    }
}
