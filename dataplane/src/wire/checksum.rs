//! Incremental update of the Internet checksum (RFC 1624), for NAT and encapsulation: when
//! a rewrite changes a few 16- or 32-bit fields of a header, the IPv4, TCP or UDP checksum is
//! patched from the old and new field values instead of summed again over the whole packet.
//!
//! All values are as read from the packet in network byte order (`u16::from_be_bytes`,
//! `u32::from_be_bytes`, `u32::from(Ipv4Address)`, or smoltcp's accessors), and checksums are
//! the values stored in the header (already complemented).
//!
//! [`update16`] and [`update32`] patch one field; a [`Delta`] sums several rewrites once so
//! that the same translation can be applied to every packet of a flow with one addition.
//! For UDP, where a zero checksum means "none", use [`apply_udp`].
//!
//! This module shadows `smoltcp::wire::checksum` in `crate::wire`, so it re-exports smoltcp's
//! full-sum helpers ([`data`], [`combine`], [`pseudo_header_v4`], [`pseudo_header_v6`]).
//!
//! ### ±0
//!
//! Ones-complement arithmetic has two zeros, 0x0000 (+0) and 0xFFFF (-0). A checksum computed
//! from scratch over a header with any non-zero field is never 0xFFFF; eqn. 3 below preserves
//! that, so for any header that is not all zeros (every real IPv4, TCP or UDP header: the
//! version or the pseudo-header's protocol is non-zero) the incremental result is exactly the
//! recomputed one. Rewrites whose old and new values are equal are skipped (see [`update16`]).

pub use smoltcp::wire::checksum::{combine, data, pseudo_header_v4, pseudo_header_v6};

/// Fold a `u32` sum of 16-bit words to their 16-bit ones-complement sum (end-around carry).
/// The result is 0 only when every word added was 0.
#[inline]
const fn fold(sum: u32) -> u16 {
    // sum + (sum rotated by 16) holds, in its high half, high + low + the carry out of the low
    // half: the end-around-carry sum of the two halves in one addition (as Linux's csum_fold).
    (sum.wrapping_add(sum.rotate_right(16)) >> 16) as u16
}

/// Return the checksum `csum` updated for a 16-bit field of the checksummed data changing
/// from `old` to `new`.
///
/// If `old == new` the checksum is returned unchanged (RFC 1624 erratum 4782: eqn. 3 would
/// otherwise turn a checksum of 0x0000 into 0xFFFF).
#[inline]
pub const fn update16(csum: u16, old: u16, new: u16) -> u16 {
    Delta::new().add16(old, new).apply(csum)
}

/// Return the checksum `csum` updated for a 32-bit field (an IPv4 address, for example)
/// changing from `old` to `new`: the same as two [`update16`] calls, one per 16-bit half.
#[inline]
pub const fn update32(csum: u16, old: u32, new: u32) -> u16 {
    Delta::new().add32(old, new).apply(csum)
}

/// A precomputed checksum change: the ones-complement sum of `~old + new` over the fields a
/// translation rewrites. Compute it once per flow, then [`Delta::apply`] it to every packet.
///
/// Applying a delta gives exactly what the same [`update16`] / [`update32`] calls, in any
/// order, would give. Two deltas that compare unequal can still be equivalent (the two
/// zeros, see [`Delta::is_zero`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(transparent)]
pub struct Delta(u32);

impl Delta {
    /// The empty delta: applying it leaves any checksum unchanged.
    #[inline]
    pub const fn new() -> Delta {
        Delta(0)
    }

    /// Add the rewrite of a 16-bit field from `old` to `new`. Nothing is added when
    /// `old == new`.
    #[inline]
    #[must_use]
    pub const fn add16(self, old: u16, new: u16) -> Delta {
        if old == new {
            return self;
        }
        // `self.0` stays at most 0xffff, so three words cannot overflow the u32.
        Delta(fold(self.0 + (!old) as u32 + new as u32) as u32)
    }

    /// Add the rewrite of a 32-bit field from `old` to `new`, as two 16-bit words.
    #[inline]
    #[must_use]
    // Casts: a 32-bit word split into its two 16-bit halves.
    #[allow(clippy::cast_possible_truncation)]
    pub const fn add32(self, old: u32, new: u32) -> Delta {
        self.add16((old >> 16) as u16, (new >> 16) as u16)
            .add16(old as u16, new as u16)
    }

    /// The delta of rewriting each 16-bit word `old` to `new` of `pairs`, with one fold at the
    /// end instead of one per word: the same value as chaining [`Delta::add16`] (unchanged words
    /// are skipped alike; a positive sum folds to the same representative either way).
    #[inline]
    #[must_use]
    // Casts: folding a wide sum keeps its low bits on purpose (RFC 1071).
    #[allow(clippy::cast_possible_truncation)]
    pub fn of(self, pairs: &[(u16, u16)]) -> Delta {
        let mut sum = self.0 as u64;
        for &(old, new) in pairs {
            if old != new {
                sum += u64::from(!old) + u64::from(new);
            }
        }
        let s = (sum & 0xffff) + (sum >> 16);
        let s = (s & 0xffff) + (s >> 16);
        let s = (s & 0xffff) + (s >> 16);
        Delta(s as u32)
    }

    /// Return the checksum `csum` with the rewrites applied.
    //= https://www.rfc-editor.org/rfc/rfc1624#section-3
    //# RFC 1141 yields an updated header checksum of -0 when it should be
    //# +0.  This is because it assumed that one's complement has a
    //# distributive property, which does not hold when the result is 0 (see
    //# derivation of [Eqn. 2]).
    //#
    //# The problem is avoided by not assuming this property.  The correct
    //# equation is given below:
    //#
    //#        HC' = ~(C + (-m) + m')    --    [Eqn. 3]
    //#            = ~(~HC + ~m + m')
    #[inline]
    #[must_use]
    pub const fn apply(self, csum: u16) -> u16 {
        // With several fields, ~m + m' is summed over all of them: ones-complement addition
        // is associative and commutative, and `fold` is 0 only if every term was 0, so this
        // is bit for bit the chain of single-field updates.
        !fold((!csum) as u32 + self.0)
    }

    /// Return whether the rewrites cancel out (their sum is +0 or -0). Applying such a delta
    /// changes no checksum, except that it may turn 0xFFFF into 0x0000, its ones-complement
    /// equal; callers may skip the update.
    #[inline]
    pub const fn is_zero(self) -> bool {
        self.0 == 0 || self.0 == 0xffff
    }
}

/// Return the UDP checksum `csum` with `delta` applied, keeping UDP's zero convention.
//= https://www.rfc-editor.org/rfc/rfc768
//# If the computed  checksum  is zero,  it is transmitted  as all ones (the
//# equivalent  in one's complement  arithmetic).   An all zero  transmitted
//# checksum  value means that the transmitter  generated  no checksum  (for
//# debugging or for higher level protocols that don't care).
#[inline]
pub const fn apply_udp(delta: Delta, csum: u16) -> u16 {
    if csum == 0 {
        return 0;
    }
    match delta.apply(csum) {
        0 => 0xffff,
        csum => csum,
    }
}

/// The Internet checksum's running sum of `data` (RFC 1071), as a value [`fold64`] reduces to
/// the 16-bit ones-complement sum of its big-endian 16-bit words (a trailing odd byte is the
/// high byte of a final word, as RFC 1071 pads it).
///
/// It adds 64-bit words as they lie in memory, with end-around carry, and swaps the folded
/// result into big-endian order once at the end: the ones-complement sum does not depend on
/// byte order (RFC 1071 §2(B)), and 2^16 ≡ 1 (mod 0xffff) makes a sum of 64-bit words the same
/// sum as one of 16-bit words, in a quarter of the additions and with no swap per word.
#[inline(always)]
// Casts: folding a wide sum keeps its low bits on purpose (RFC 1071).
#[allow(clippy::cast_possible_truncation)]
pub fn sum(mut data: &[u8]) -> u64 {
    // A 128-bit accumulator: the carries out of 64 bits pile up in the high half (add, adc).
    let mut acc = 0u128;
    while let Some((w, rest)) = data.split_first_chunk::<8>() {
        acc += u128::from(u64::from_ne_bytes(*w));
        data = rest;
    }
    // The last 0 to 7 bytes, from an even offset: a 32-bit word, a 16-bit word, a byte (as the
    // first byte of a 16-bit word whose second is zero); fixed-size reads, no copy.
    if let Some((w, rest)) = data.split_first_chunk::<4>() {
        acc += u128::from(u32::from_ne_bytes(*w));
        data = rest;
    }
    if let Some((w, rest)) = data.split_first_chunk::<2>() {
        acc += u128::from(u16::from_ne_bytes(*w));
        data = rest;
    }
    if let Some(&b) = data.first() {
        acc += u128::from(u16::from_ne_bytes([b, 0]));
    }
    // Each carry out of bit 63 is worth 2^64 ≡ 1: add the high half back in (the high half is
    // far below 2^32, so a carry of this addition cannot carry again).
    let (s, c) = (acc as u64).overflowing_add((acc >> 64) as u64);
    let folded = fold64(s + u64::from(c));
    // The 16-bit words summed were in memory order; on a little-endian machine that is each
    // word byte-swapped, and so is the sum.
    if cfg!(target_endian = "little") {
        u64::from(folded.swap_bytes())
    } else {
        u64::from(folded)
    }
}

/// Reduces a [`sum`] to the 16-bit ones-complement sum (not yet complemented).
#[inline]
// Casts: folding a wide sum keeps its low bits on purpose (RFC 1071).
#[allow(clippy::cast_possible_truncation)]
pub const fn fold64(acc: u64) -> u16 {
    // The two 32-bit halves with end-around carry (the sum of two halves is at most
    // 2^33 - 2, so adding its carry back cannot carry again), then the two 16-bit halves.
    let (s, c) = (acc as u32).overflowing_add((acc >> 32) as u32);
    fold(s + c as u32)
}

/// The sum of the IPv4 pseudo-header (RFC 793 §3.1, RFC 768) for `src`, `dst`, protocol
/// `proto` and an upper-layer length of `len`.
#[inline]
pub const fn pseudo_v4(src: u32, dst: u32, proto: u8, len: u16) -> u64 {
    src as u64 + dst as u64 + proto as u64 + len as u64
}

/// The IPv6 pseudo-header's running sum (RFC 8200 §8.1) for [`verify`]: the addresses as
/// 32-bit words, the upper-layer length and the next header, summed as [`pseudo_v4`]'s are.
#[inline]
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, len: u32) -> u64 {
    let words = src.chunks_exact(4).chain(dst.chunks_exact(4));
    words
        .map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum::<u64>()
        + u64::from(proto)
        + u64::from(len)
}

/// Whether `data` (with its checksum field in place) plus `pseudo` sums to all ones: a valid
/// Internet checksum.
#[inline]
pub fn verify(pseudo: u64, data: &[u8]) -> bool {
    // Fuzzing (cargo-fuzz builds with `--cfg fuzzing`): every checksum passes, so the fuzzer
    // reaches what lies behind them, as smoltcp's fuzz targets do.
    cfg!(fuzzing) || fold64(pseudo + sum(data)) == 0xffff
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod test {
    use super::*;
    use proptest::prelude::*;
    use smoltcp::wire::{Ipv4Address, Ipv4Packet, UdpPacket};

    /// The checksum of `bytes` from scratch, with the 16-bit checksum field at `at` taken as 0.
    fn full(bytes: &[u8], at: usize) -> u16 {
        let mut copy = bytes.to_vec();
        copy[at..at + 2].fill(0);
        !data(&copy)
    }

    fn read16(bytes: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([bytes[at], bytes[at + 1]])
    }

    fn read32(bytes: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    /// +0 and -0 are the same ones-complement number.
    fn same(a: u16, b: u16) -> bool {
        a == b || (a == 0 || a == 0xffff) && (b == 0 || b == 0xffff)
    }

    #[test]
    fn test_rfc1624_example() {
        //= https://www.rfc-editor.org/rfc/rfc1624#section-4
        //# Consider an IP packet header in which a 16-bit field m = 0x5555
        //# changes to m' = 0x3285.  Also, the one's complement sum of all other
        //# header octets is 0xCD7A.
        let others = 0xcd7a;
        let hc = !combine(&[others, 0x5555]);
        assert_eq!(hc, 0xdd2f);
        assert_eq!(!combine(&[others, 0x3285]), 0x0000);
        // Eqn. 2 (RFC 1141) gives -0 here; eqn. 3 gives the recomputed +0.
        assert_eq!(combine(&[hc, 0x5555, !0x3285]), 0xffff);
        assert_eq!(update16(hc, 0x5555, 0x3285), 0x0000);
        assert_eq!(Delta::new().add16(0x5555, 0x3285).apply(hc), 0x0000);
    }

    /// An IPv4 header from a capture: 192.168.1.10 -> 192.168.1.20, ttl 64, UDP.
    static IPV4_BYTES: [u8; 20] = [
        0x45, 0x00, 0x00, 0x34, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb7, 0x4a, 0xc0, 0xa8, 0x01,
        0x0a, 0xc0, 0xa8, 0x01, 0x14,
    ];

    #[test]
    fn test_ipv4_dnat() {
        let mut bytes = IPV4_BYTES;
        // Header only: `new_checked` would want the 52 bytes its length field announces.
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
        assert!(ip.verify_checksum());
        let old = ip.dst_addr();
        let new = Ipv4Address::new(10, 0, 0, 5);
        ip.set_dst_addr(new);
        let csum = update32(ip.checksum(), u32::from(old), u32::from(new));
        ip.set_checksum(csum);
        assert!(ip.verify_checksum());
        ip.fill_checksum();
        assert_eq!(ip.checksum(), csum);
    }

    #[test]
    fn test_ttl_decrement() {
        let mut bytes = IPV4_BYTES;
        let old = read16(&bytes, 8);
        bytes[8] -= 1;
        let csum = update16(read16(&bytes, 10), old, read16(&bytes, 8));
        assert_eq!(csum, full(&bytes, 10));
    }

    #[test]
    fn test_unchanged_field_keeps_checksum() {
        // RFC 1624 erratum 4782: a no-op rewrite must not turn +0 into -0.
        assert_eq!(update16(0x0000, 0x5555, 0x5555), 0x0000);
        assert_eq!(update32(0x0000, 0xc0a8_010a, 0xc0a8_010a), 0x0000);
        assert_eq!(Delta::new().add16(7, 7), Delta::new());
        // Only the changed half of a 32-bit field counts.
        assert_eq!(
            update32(0x1234, 0xc0a8_010a, 0xc0a8_0114),
            update16(0x1234, 0x010a, 0x0114)
        );
    }

    #[test]
    fn test_is_zero() {
        assert!(Delta::new().is_zero());
        assert!(Delta::default().is_zero());
        let there_and_back = Delta::new().add32(1, 2).add32(2, 1);
        assert!(there_and_back.is_zero());
        assert_eq!(there_and_back.apply(0x1234), 0x1234);
        assert!(!Delta::new().add16(1, 2).is_zero());
    }

    #[test]
    fn test_apply_udp() {
        let delta = Delta::new().add16(80, 8080);
        assert_eq!(apply_udp(delta, 0), 0, "no checksum stays no checksum");
        // A checksum that the update brings to +0 (~csum + delta = -0) is sent as -0.
        let csum = delta.0 as u16;
        assert_eq!(delta.apply(csum), 0);
        assert_eq!(apply_udp(delta, csum), 0xffff);
        assert_eq!(apply_udp(delta, 0x1234), delta.apply(0x1234));
    }

    /// A rewrite of one field of a 20-byte IPv4 header: the 16-bit word at an even offset
    /// other than the checksum's, or one of the two addresses.
    #[derive(Debug, Clone)]
    enum Rewrite {
        Word(usize, u16),
        Addr(usize, u32),
    }

    fn rewrite() -> impl Strategy<Value = Rewrite> {
        prop_oneof![
            (0..9usize, any::<u16>())
                .prop_map(|(i, v)| Rewrite::Word(if i < 5 { 2 * i } else { 2 * i + 2 }, v)),
            (prop_oneof![Just(12usize), Just(16usize)], any::<u32>())
                .prop_map(|(at, v)| Rewrite::Addr(at, v)),
        ]
    }

    /// Apply `rw` to `bytes` and return the checksum delta for it.
    fn apply_rewrite(bytes: &mut [u8], rw: &Rewrite, delta: Delta) -> Delta {
        match *rw {
            Rewrite::Word(at, v) => {
                let old = read16(bytes, at);
                bytes[at..at + 2].copy_from_slice(&v.to_be_bytes());
                delta.add16(old, v)
            }
            Rewrite::Addr(at, v) => {
                let old = read32(bytes, at);
                bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
                delta.add32(old, v)
            }
        }
    }

    proptest! {
        /// Any header: the incremental checksum equals the recomputed one, up to ±0.
        #[test]
        fn incremental_matches_full_any_bytes(
            header in any::<[u8; 20]>(),
            rewrites in proptest::collection::vec(rewrite(), 1..6),
        ) {
            let mut bytes = header;
            let csum = full(&bytes, 10);
            bytes[10..12].copy_from_slice(&csum.to_be_bytes());
            let mut chained = csum;
            let mut delta = Delta::new();
            for rw in &rewrites {
                let before = bytes;
                delta = apply_rewrite(&mut bytes, rw, delta);
                chained = match *rw {
                    Rewrite::Word(at, _) => update16(chained, read16(&before, at), read16(&bytes, at)),
                    Rewrite::Addr(at, _) => update32(chained, read32(&before, at), read32(&bytes, at)),
                };
            }
            prop_assert_eq!(delta.apply(csum), chained);
            prop_assert!(same(chained, full(&bytes, 10)));
        }

        /// A real IPv4 header (version 4, so never all zeros): exactly the recomputed
        /// checksum, and it verifies.
        #[test]
        fn incremental_matches_full_ipv4(
            header in any::<[u8; 20]>(),
            rewrites in proptest::collection::vec(rewrite(), 1..6),
        ) {
            let mut bytes = header;
            bytes[0] = 0x45;
            let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
            ip.fill_checksum();
            let csum = ip.checksum();
            let mut delta = Delta::new();
            for rw in &rewrites {
                let rw = match *rw {
                    Rewrite::Word(0, v) => Rewrite::Word(0, 0x4500 | (v & 0xff)),
                    ref rw => rw.clone(),
                };
                delta = apply_rewrite(&mut bytes, &rw, delta);
            }
            let mut ip = Ipv4Packet::new_unchecked(&mut bytes[..]);
            ip.set_checksum(delta.apply(csum));
            prop_assert!(ip.verify_checksum());
            let incremental = ip.checksum();
            ip.fill_checksum();
            prop_assert_eq!(incremental, ip.checksum());
        }

        /// DNAT of a UDP datagram (destination address in the pseudo-header, destination
        /// port), and the reverse translation: exactly the recomputed checksum both ways.
        #[test]
        fn udp_dnat_and_back(
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            new_dst in any::<[u8; 4]>(),
            src_port in any::<u16>(),
            dst_port in any::<u16>(),
            new_dst_port in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let (src, dst, new_dst) = (Ipv4Address::from(src), Ipv4Address::from(dst), Ipv4Address::from(new_dst));
            let len = 8 + payload.len();
            let mut bytes = vec![0u8; len];
            let mut udp = UdpPacket::new_unchecked(&mut bytes[..]);
            udp.set_src_port(src_port);
            udp.set_dst_port(dst_port);
            udp.set_len(len as u16);
            udp.payload_mut().copy_from_slice(&payload);
            udp.fill_checksum(&src.into(), &dst.into());

            let forward = Delta::new()
                .add32(u32::from(dst), u32::from(new_dst))
                .add16(dst_port, new_dst_port);
            let csum = apply_udp(forward, udp.checksum());
            udp.set_dst_port(new_dst_port);
            udp.set_checksum(csum);
            prop_assert!(udp.verify_checksum(&src.into(), &new_dst.into()));
            udp.fill_checksum(&src.into(), &new_dst.into());
            prop_assert_eq!(csum, udp.checksum());

            let reverse = Delta::new()
                .add32(u32::from(new_dst), u32::from(dst))
                .add16(new_dst_port, dst_port);
            let back = apply_udp(reverse, csum);
            udp.set_dst_port(dst_port);
            udp.set_checksum(back);
            udp.fill_checksum(&src.into(), &dst.into());
            prop_assert_eq!(back, udp.checksum());

            // A datagram sent without a checksum keeps none.
            prop_assert_eq!(apply_udp(forward, 0), 0);
        }

        /// A delta of several rewrites equals the chained single-field updates, bit for bit.
        #[test]
        fn delta_equals_chained_updates(
            csum in any::<u16>(),
            words in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..8),
            addrs in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..4),
        ) {
            let mut delta = Delta::new();
            let mut chained = csum;
            for &(old, new) in &words {
                delta = delta.add16(old, new);
                chained = update16(chained, old, new);
            }
            for &(old, new) in &addrs {
                delta = delta.add32(old, new);
                chained = update32(chained, old, new);
            }
            prop_assert_eq!(delta.apply(csum), chained);
            let udp = if csum == 0 { 0 } else if chained == 0 { 0xffff } else { chained };
            prop_assert_eq!(apply_udp(delta, csum), udp);
            if delta.is_zero() {
                prop_assert!(same(delta.apply(csum), csum));
            }
        }

        /// update32 is two update16 calls, high half first or low half first.
        #[test]
        fn update32_is_two_words(csum in any::<u16>(), old in any::<u32>(), new in any::<u32>()) {
            let (oh, ol, nh, nl) = ((old >> 16) as u16, old as u16, (new >> 16) as u16, new as u16);
            let expected = update16(update16(csum, oh, nh), ol, nl);
            prop_assert_eq!(update32(csum, old, new), expected);
            prop_assert_eq!(update16(update16(csum, ol, nl), oh, nh), expected);
        }
    }

    /// Every 64-bit addition carries: the carries are added back.
    #[test]
    fn fast_sum_adds_back_every_carry() {
        for len in [0, 1, 7, 8, 9, 20, 40, 1500, 9001] {
            let data = vec![0xffu8; len];
            let ours = fold64(sum(&data));
            let theirs = smoltcp::wire::checksum::data(&data);
            assert!(
                ours == theirs
                    || (ours == 0xffff && theirs == 0)
                    || (ours == 0 && theirs == 0xffff),
                "{len}"
            );
        }
    }

    proptest::proptest! {
        /// The one-addition folds equal folding 16 bits at a time, exactly (zero stays 0,
        /// other multiples of 0xffff give 0xffff).
        #[test]
        fn folds_equal_the_slow_fold(x in proptest::prelude::any::<u64>(), y in proptest::prelude::any::<u32>()) {
            let slow = |mut s: u64| {
                while s > 0xffff {
                    s = (s & 0xffff) + (s >> 16);
                }
                s as u16
            };
            proptest::prop_assert_eq!(fold64(x), slow(x));
            proptest::prop_assert_eq!(fold(y), slow(u64::from(y)));
            for edge in [0, 0xffff, 0x1_0000, 0xffff_ffff, u64::MAX, 1 << 32, (1 << 32) - 1] {
                proptest::prop_assert_eq!(fold64(edge), slow(edge));
            }
        }
    }

    proptest::proptest! {
        /// The fast sum agrees with smoltcp's RFC 1071 implementation for any data.
        #[test]
        fn fast_sum_matches_smoltcp(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let ours = fold64(sum(&data));
            let theirs = smoltcp::wire::checksum::data(&data);
            // 0x0000 and 0xffff are the same ones-complement number.
            proptest::prop_assert!(ours == theirs || (ours == 0xffff && theirs == 0) || (ours == 0 && theirs == 0xffff));
        }
    }

    proptest::proptest! {
        /// A TCP segment over IPv6 whose checksum smoltcp filled passes `verify` with
        /// `pseudo_v6`, and fails with any one bit of it changed.
        #[test]
        fn the_ipv6_pseudo_header_sum_agrees_with_smoltcp(
            src: [u8; 16], dst: [u8; 16], flip in 0usize..(20 * 8),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
        ) {
            use smoltcp::wire::{IpAddress, Ipv6Address, TcpPacket};
            let mut seg = vec![0u8; 20];
            seg[12] = 5 << 4;
            seg.extend_from_slice(&payload);
            let (s, d) = (IpAddress::Ipv6(Ipv6Address::from(src)), IpAddress::Ipv6(Ipv6Address::from(dst)));
            TcpPacket::new_unchecked(&mut seg[..]).fill_checksum(&s, &d);
            let len = seg.len() as u32;
            proptest::prop_assert!(verify(pseudo_v6(&src, &dst, 6, len), &seg));
            seg[flip / 8] ^= 1 << (flip % 8);
            proptest::prop_assert!(!verify(pseudo_v6(&src, &dst, 6, len), &seg));
        }
    }

    proptest::proptest! {
        /// `Delta::of` equals chained `add16` exactly.
        #[test]
        fn one_fold_equals_chained_folds(pairs in proptest::collection::vec((proptest::prelude::any::<u16>(), proptest::prelude::any::<u16>()), 0..12)) {
            let chained = pairs.iter().fold(Delta::new(), |d, &(o, n)| d.add16(o, n));
            proptest::prop_assert_eq!(Delta::new().of(&pairs), chained);
        }
    }
}
