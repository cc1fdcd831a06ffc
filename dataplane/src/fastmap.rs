//! A small open-addressing map from integer keys, built once and then only read: what the
//! service table uses for address and peer lookups on the fast path (no SipHash, no allocation,
//! one or two cache lines per lookup).

/// A key that hashes cheaply.
pub trait FastKey: Copy + Eq {
    fn mix(self) -> u64;
}

impl FastKey for u32 {
    /// Fibonacci hashing: one multiplication, whose middle bits depend on every bit of the key.
    /// The maps' keys are addresses from the configuration, often consecutive, which this
    /// spreads evenly; a packet's address only picks which (short) probe run it reads.
    #[inline]
    fn mix(self) -> u64 {
        u64::from(self).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
    }
}

impl FastKey for u64 {
    #[inline]
    fn mix(self) -> u64 {
        mix64(self)
    }
}

impl FastKey for u128 {
    /// An IPv6 address: its halves folded, then mixed (the key itself is compared whole).
    #[inline]
    // Casts: the low half, on purpose.
    #[allow(clippy::cast_possible_truncation)]
    fn mix(self) -> u64 {
        mix64(((self >> 64) as u64) ^ (self as u64).rotate_left(32))
    }
}

/// A strong 64-bit finaliser (splitmix64's).
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// An immutable map, at most half full, linear probing.
#[derive(Debug, Clone)]
pub struct FrozenMap<K, V> {
    slots: Box<[Option<(K, V)>]>,
    mask: usize,
    len: usize,
}

impl<K: FastKey, V: Copy> FrozenMap<K, V> {
    /// Builds the map; a later duplicate key replaces the earlier one.
    // Casts: a hash folded to a slot index or tag: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    pub fn build(items: impl IntoIterator<Item = (K, V)>) -> Self {
        let items: Vec<(K, V)> = items.into_iter().collect();
        let cap = (items.len() * 2).next_power_of_two().max(8);
        let mut slots: Vec<Option<(K, V)>> = vec![None; cap];
        let mask = cap - 1;
        let mut len = 0;
        for (k, v) in items {
            let mut i = (k.mix() as usize) & mask;
            loop {
                match &mut slots[i] {
                    Some((sk, sv)) if *sk == k => {
                        *sv = v;
                        break;
                    }
                    Some(_) => i = (i + 1) & mask,
                    empty @ None => {
                        *empty = Some((k, v));
                        len += 1;
                        break;
                    }
                }
            }
        }
        FrozenMap {
            slots: slots.into_boxed_slice(),
            mask,
            len,
        }
    }

    #[inline(always)]
    // Casts: a hash folded to a slot index or tag: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    pub fn get(&self, k: K) -> Option<V> {
        let mut i = (k.mix() as usize) & self.mask;
        loop {
            match &self.slots[i] {
                Some((sk, v)) if *sk == k => return Some(*v),
                Some(_) => i = (i + 1) & self.mask,
                None => return None,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Every entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.slots.iter().flatten().copied()
    }

    /// Puts `k` → `v` into the map, replacing what `k` had. For the control thread, on its
    /// own copy of a table it is about to publish (a published map is only read). Grows (by a
    /// rebuild) to stay at most half full.
    // Casts: a hash folded to a slot index: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    pub fn insert(&mut self, k: K, v: V) {
        if (self.len + 1) * 2 > self.slots.len() {
            let items: Vec<(K, V)> = self.slots.iter().flatten().copied().collect();
            *self = Self::build(items.into_iter().chain(std::iter::once((k, v))));
            return;
        }
        let mut i = (k.mix() as usize) & self.mask;
        loop {
            match &mut self.slots[i] {
                Some((sk, sv)) if *sk == k => {
                    *sv = v;
                    return;
                }
                Some(_) => i = (i + 1) & self.mask,
                empty @ None => {
                    *empty = Some((k, v));
                    self.len += 1;
                    return;
                }
            }
        }
    }

    /// Takes `k` out of the map (backward-shift deletion: no tombstones, so lookups stay as
    /// short as in a freshly built map). Returns what it held.
    // Casts: as in `insert`.
    #[allow(clippy::cast_possible_truncation)]
    pub fn remove(&mut self, k: K) -> Option<V> {
        let mut i = (k.mix() as usize) & self.mask;
        let v = loop {
            match &self.slots[i] {
                Some((sk, v)) if *sk == k => break *v,
                Some(_) => i = (i + 1) & self.mask,
                None => return None,
            }
        };
        self.slots[i] = None;
        self.len -= 1;
        // Pull back the entries of the run after the hole that may not sit past it.
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        while let Some((jk, _)) = self.slots[j] {
            let home = (jk.mix() as usize) & self.mask;
            // The entry at j may move to the hole if its home is not in (hole, j] cyclically.
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        Some(v)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<K: FastKey, V: Copy> Default for FrozenMap<K, V> {
    fn default() -> Self {
        Self::build(std::iter::empty())
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use super::*;

    #[test]
    fn finds_what_was_put_in() {
        let m = FrozenMap::build((0u32..1000).map(|i| (i * 7919, i)));
        assert_eq!(m.len(), 1000);
        for i in 0..1000 {
            assert_eq!(m.get(i * 7919), Some(i));
        }
        assert_eq!(m.get(1), None);
        let e: FrozenMap<u64, u8> = FrozenMap::default();
        assert_eq!(e.get(5), None);
    }

    #[test]
    fn inserts_and_removes_agree_with_a_hash_map() {
        use proptest::prelude::*;
        proptest!(|(ops in proptest::collection::vec((any::<bool>(), 0u32..64, any::<u8>()), 0..400))| {
            let mut m: FrozenMap<u32, u8> = FrozenMap::build((0u32..8).map(|i| (i * 3, 0)));
            let mut want: std::collections::HashMap<u32, u8> = (0u32..8).map(|i| (i * 3, 0)).collect();
            for (put, k, v) in ops {
                // Keys that collide often: a small range, mixed to neighbouring slots.
                if put {
                    m.insert(k, v);
                    want.insert(k, v);
                } else {
                    prop_assert_eq!(m.remove(k), want.remove(&k));
                }
                prop_assert_eq!(m.len(), want.len());
            }
            for k in 0u32..64 {
                prop_assert_eq!(m.get(k), want.get(&k).copied());
            }
        });
    }

    #[test]
    fn consecutive_addresses_spread_with_short_probe_runs() {
        // A /24 of task addresses, as the service table holds them.
        let keys: Vec<u32> = (0..254u32).map(|i| 0x0a00_0001 + i).collect();
        let m = FrozenMap::build(keys.iter().map(|&k| (k, k)));
        let probes = |k: u32| {
            let mut i = (k.mix() as usize) & m.mask;
            let mut n = 1;
            while m.slots[i].is_some_and(|(sk, _)| sk != k) {
                i = (i + 1) & m.mask;
                n += 1;
            }
            n
        };
        let worst = keys.iter().map(|&k| probes(k)).max().unwrap_or(0);
        assert!(worst <= 4, "a present key took {worst} probes");
        // Absent keys (any address a packet may carry) stop at the first gap soon too.
        let worst_absent = (0..100_000u32)
            .map(|i| probes(i.wrapping_mul(2_654_435_761)))
            .max();
        assert!(worst_absent.unwrap_or(0) <= 8, "{worst_absent:?}");
    }
}
