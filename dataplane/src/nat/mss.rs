//! TCP MSS clamping, as `iptables -j TCPMSS --clamp-mss-to-pmtu` does for a router whose next
//! hop has a smaller MTU: the MSS option of a SYN or SYN-ACK that meshd translates is lowered
//! to what the path through the overlay carries, so neither end ever sends a segment that does
//! not fit the VXLAN tunnel.
//!
//! Whichever MSS an end announces bounds what the *other* end sends (RFC 9293 §3.7.1), so the
//! SYN (towards the task) and the SYN-ACK (towards the client) are both clamped.

//= https://www.rfc-editor.org/rfc/rfc9293#section-3.7.1
//# Maximum Segment Size (MSS) ... the MSS value is the maximum size of the data the
//# sender of the option can receive.
//= https://www.rfc-editor.org/rfc/rfc9293#section-3.7.1
//# If an MSS Option is not received at connection setup, TCP implementations MUST assume a
//# default send MSS of 536 (576 - 40) for IPv4 or 1220 (1280 - 60) for IPv6 (MUST-15).
//
// So a SYN without the option is already small enough for any overlay MTU of at least 576
// (the smallest a network accepts): it is left alone.

use crate::wire::checksum::update16;

/// IPv4 and TCP headers without options: what an overlay MTU spends on headers before the MSS.
pub const IPV4_TCP_HEADERS: u16 = 40;

const KIND_EOL: u8 = 0;
const KIND_NOP: u8 = 1;
const KIND_MSS: u8 = 2;

/// Lowers the MSS option of the TCP segment whose header starts at `l4` in `f` to `max` when it
/// is larger, and fixes the TCP checksum (RFC 1624). Returns whether it changed the segment.
///
/// Reads the options within the header length the segment claims and within `f`; a malformed
/// option list (a length of 0 or 1, or one running past the header) ends the walk without a
/// change. Never panics, allocates nothing.
pub fn clamp(f: &mut [u8], l4: usize, max: u16) -> bool {
    let Some(doff) = f.get(l4 + 12).map(|b| usize::from(b >> 4) * 4) else {
        return false;
    };
    if doff <= 20 || f.len() < l4 + doff {
        return false;
    }
    let mut at = l4 + 20;
    let end = l4 + doff;
    while at < end {
        match f[at] {
            KIND_EOL => return false,
            KIND_NOP => at += 1,
            kind => {
                let Some(&len) = f.get(at + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || at + len > end {
                    return false;
                }
                if kind == KIND_MSS && len == 4 {
                    let old = u16::from_be_bytes([f[at + 2], f[at + 3]]);
                    if old <= max {
                        return false;
                    }
                    f[at + 2..at + 4].copy_from_slice(&max.to_be_bytes());
                    // The checksum sums 16-bit words from the header's start (an even offset):
                    // an option at an odd offset splits its value over two words.
                    let ck = l4 + 16;
                    let mut c = u16::from_be_bytes([f[ck], f[ck + 1]]);
                    if (at + 2 - l4) & 1 == 0 {
                        c = update16(c, old, max);
                    } else {
                        // Words [x, hi] and [lo, y]: the high byte ends one word, the low byte
                        // starts the next.
                        let [oh, ol] = old.to_be_bytes();
                        let [nh, nl] = max.to_be_bytes();
                        let prev = f[at + 1];
                        // In bounds: the header length is a multiple of 4 and this value's word
                        // parity is odd, so its last byte is not the header's last.
                        let next = f[at + 4];
                        let w1o = u16::from_be_bytes([prev, oh]);
                        let w1n = u16::from_be_bytes([prev, nh]);
                        let w2o = u16::from_be_bytes([ol, next]);
                        let w2n = u16::from_be_bytes([nl, next]);
                        c = update16(update16(c, w1o, w1n), w2o, w2n);
                    }
                    f[ck..ck + 2].copy_from_slice(&c.to_be_bytes());
                    return true;
                }
                at += len;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use smoltcp::wire::{IpAddress, Ipv4Address, TcpPacket};

    const SRC: Ipv4Address = Ipv4Address::new(192, 168, 100, 1);
    const DST: Ipv4Address = Ipv4Address::new(10, 0, 0, 11);

    /// A SYN with the given options (padded to a multiple of 4 with EOL) and a valid checksum.
    fn syn(options: &[u8], payload: &[u8]) -> Vec<u8> {
        let olen = options.len().div_ceil(4) * 4;
        let mut seg = vec![0u8; 20 + olen + payload.len()];
        seg[0..2].copy_from_slice(&40000u16.to_be_bytes());
        seg[2..4].copy_from_slice(&80u16.to_be_bytes());
        seg[4..8].copy_from_slice(&7u32.to_be_bytes());
        seg[12] = u8::try_from((20 + olen) / 4).unwrap() << 4;
        seg[13] = 0x02;
        seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
        seg[20..20 + options.len()].copy_from_slice(options);
        seg[20 + olen..].copy_from_slice(payload);
        let mut p = TcpPacket::new_unchecked(&mut seg[..]);
        p.fill_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST));
        seg
    }

    fn verifies(seg: &[u8]) -> bool {
        TcpPacket::new_unchecked(seg).verify_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST))
    }

    fn mss_of(seg: &[u8]) -> Option<u16> {
        let p = TcpPacket::new_checked(seg).ok()?;
        let mut opts = p.options();
        while !opts.is_empty() {
            let (rest, o) = smoltcp::wire::TcpOption::parse(opts).ok()?;
            if let smoltcp::wire::TcpOption::MaxSegmentSize(m) = o {
                return Some(m);
            }
            if matches!(o, smoltcp::wire::TcpOption::EndOfList) {
                break;
            }
            opts = rest;
        }
        None
    }

    #[test]
    fn a_linux_syn_is_clamped_and_its_checksum_stays_right() {
        // Linux's SYN options: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
        let opts = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let mut seg = syn(&opts, &[]);
        assert!(clamp(&mut seg, 0, 1410));
        assert_eq!(mss_of(&seg), Some(1410));
        assert!(verifies(&seg));
        // Already small enough: untouched.
        let before = seg.clone();
        assert!(!clamp(&mut seg, 0, 1410));
        assert!(!clamp(&mut seg, 0, 1500));
        assert_eq!(seg, before);
    }

    #[test]
    fn an_mss_option_at_an_odd_offset_keeps_the_checksum_right() {
        // NOP first: the MSS value's high byte ends one 16-bit word, the low byte starts the next.
        let mut seg = syn(&[1, 2, 4, 0x23, 0x28, 1, 1, 1], b"odd");
        assert_eq!(mss_of(&seg), Some(9000));
        assert!(clamp(&mut seg, 0, 1410));
        assert_eq!(mss_of(&seg), Some(1410));
        assert!(verifies(&seg));
    }

    #[test]
    fn no_option_or_a_malformed_list_changes_nothing() {
        for opts in [
            &[][..],
            &[1, 1, 1, 1],
            &[0, 2, 4, 0x05, 0xb4],    // EOL before the MSS
            &[8, 0, 2, 4, 0x05, 0xb4], // a zero length
            &[8, 40, 2, 4],            // a length past the header
            &[2, 3, 0x05, 0xb4],       // an MSS option of the wrong length
        ] {
            let mut seg = syn(opts, &[]);
            let before = seg.clone();
            assert!(!clamp(&mut seg, 0, 536), "{opts:?}");
            assert_eq!(seg, before);
        }
        // A header length past the frame.
        let mut seg = syn(&[2, 4, 0x05, 0xb4], &[]);
        seg[12] = 15 << 4;
        assert!(!clamp(&mut seg, 0, 536));
        assert!(!clamp(&mut [0u8; 5], 0, 536));
    }

    #[test]
    fn the_segment_may_sit_anywhere_in_the_frame() {
        let seg = syn(&[2, 4, 0x05, 0xb4], b"x");
        let mut frame = vec![0xa5; 34];
        frame.extend_from_slice(&seg);
        assert!(clamp(&mut frame, 34, 1200));
        assert_eq!(mss_of(&frame[34..]), Some(1200));
        assert!(verifies(&frame[34..]));
        assert!(frame[..34].iter().all(|&b| b == 0xa5));
    }

    proptest! {
        #[test]
        fn any_options_never_panic_and_a_clamped_segment_verifies(
            opts in proptest::collection::vec(any::<u8>(), 0..40),
            pad in 0usize..3,
            mss in any::<u16>(),
            max in 536u16..9000,
        ) {
            // An MSS option after some NOPs, then arbitrary bytes.
            let mut o = vec![1u8; pad];
            o.extend_from_slice(&[2, 4]);
            o.extend_from_slice(&mss.to_be_bytes());
            o.extend_from_slice(&opts);
            o.truncate(40);
            let mut seg = syn(&o, &[]);
            let changed = clamp(&mut seg, 0, max);
            prop_assert!(verifies(&seg));
            prop_assert_eq!(changed, mss > max);
            prop_assert_eq!(mss_of(&seg), Some(mss.min(max)));
            // Arbitrary option bytes alone.
            let mut seg = syn(&opts[..opts.len().min(40)], &[]);
            let _ = clamp(&mut seg, 0, max);
            prop_assert!(verifies(&seg));
        }
    }
}
