//! The answers meshd writes itself, for the pipeline and the host side alike: a TCP RST
//! (a closed port, a segment of no connection, a flow whose task is gone), an ICMP destination
//! unreachable (port unreachable for UDP to a closed port; "fragmentation needed" with the
//! next-hop MTU for a packet too big for the overlay, as a router on the path does), and a
//! per-source rate limit for them. Each writes a whole Ethernet frame into a caller's buffer.

//= https://www.rfc-editor.org/rfc/rfc1191#section-4
//# The router MUST include the MTU of that next-hop network in the low-order 16 bits of the
//# ICMP header field that is labelled "unused" in the ICMP specification [7]. The high-order
//# 16 bits of the field MUST be zero.
//= https://www.rfc-editor.org/rfc/rfc792
//# Destination Unreachable Message ... Internet Header + 64 bits of Original Data Datagram

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
    Ipv6Address, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    IPV6_HEADER_LEN,
};

/// Ethernet, IPv4 and ICMP headers of an answer, before the quoted datagram.
const HEADERS: usize = 14 + 20 + 8;
/// What an ICMP error quotes: the offending IPv4 header (20 bytes: meshd forwards no options)
/// and the first 8 bytes of its payload (the ports).
pub const QUOTE: usize = 20 + 8;
/// The length of a frag-needed frame with a full quote.
pub const FRAG_NEEDED_LEN: usize = HEADERS + QUOTE;

/// The length of a TCP RST frame (Ethernet, IPv4 and TCP headers without options).
pub const RST_LEN: usize = 14 + 20 + 20;

/// ICMP destination unreachable codes meshd sends (RFC 792).
pub const PORT_UNREACHABLE: u8 = 3;
/// "Fragmentation needed and DF set" (RFC 792), with the next-hop MTU (RFC 1191).
pub const FRAG_NEEDED: u8 = 4;

/// Writes into `out` an Ethernet frame (`macs`: ours, the peer's) carrying an IPv6 packet from
/// `src` to `dst` with hop limit `hop`, whose `len` bytes of `next` `fill` writes. Returns the
/// frame's length; `None`, and `out` untouched, when it is too short.
#[allow(clippy::too_many_arguments)]
pub fn ipv6_frame(
    out: &mut [u8],
    macs: ([u8; 6], [u8; 6]),
    src: Ipv6Address,
    dst: Ipv6Address,
    hop: u8,
    next: IpProtocol,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Option<usize> {
    let total = 14 + IPV6_HEADER_LEN + len;
    let out = out.get_mut(..total)?;
    let (smac, dmac) = macs;
    out[0..6].copy_from_slice(&dmac);
    out[6..12].copy_from_slice(&smac);
    out[12..14].copy_from_slice(&[0x86, 0xdd]);
    let (iph, rest) = out[14..].split_at_mut(IPV6_HEADER_LEN);
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: next,
        payload_len: len,
        hop_limit: hop,
    }
    .emit(&mut Ipv6Packet::new_unchecked(iph));
    fill(rest);
    Some(total)
}

/// [`ipv6_frame`] carrying the ICMPv6 message `repr`, its checksum filled in.
pub fn icmpv6_frame(
    out: &mut [u8],
    macs: ([u8; 6], [u8; 6]),
    src: Ipv6Address,
    dst: Ipv6Address,
    hop: u8,
    repr: &Icmpv6Repr,
) -> Option<usize> {
    let len = repr.buffer_len();
    ipv6_frame(out, macs, src, dst, hop, IpProtocol::Icmpv6, len, |b| {
        repr.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(b),
            &ChecksumCapabilities::default(),
        );
    })
}

/// A TCP RST from `sport` to `dport` with sequence number `seq`, and ACK set to `ack` when
/// given: no window, no options, no payload.
pub fn rst_repr(
    sport: u16,
    dport: u16,
    seq: TcpSeqNumber,
    ack: Option<TcpSeqNumber>,
) -> TcpRepr<'static> {
    TcpRepr {
        src_port: sport,
        dst_port: dport,
        control: TcpControl::Rst,
        seq_number: seq,
        ack_number: ack,
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    }
}

/// Writes into `out` an Ethernet frame carrying a TCP RST from `src:sport` to `dst:dport`
/// with sequence number `seq`, and with ACK set to `ack` when given; `macs` are (ours, the
/// peer's). Returns the frame's length, [`RST_LEN`].
//= https://www.rfc-editor.org/rfc/rfc9293#section-3.10.7.1
//# If the incoming segment has the ACK bit set, the reset takes its sequence number from the
//# ACK field of the segment; otherwise, the reset has sequence number zero and the ACK field is
//# set to the sum of the sequence number and segment length of the incoming segment.
#[allow(clippy::too_many_arguments)]
pub fn tcp_rst(
    out: &mut [u8; RST_LEN],
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Address,
    sport: u16,
    dst: Ipv4Address,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
) -> usize {
    let caps = ChecksumCapabilities::default();
    let as_seq = |n: u32| TcpSeqNumber(i32::from_ne_bytes(n.to_ne_bytes()));
    let rst = rst_repr(sport, dport, as_seq(seq), ack.map(as_seq));
    let ipr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: rst.buffer_len(),
        hop_limit: 64,
    };
    let (smac, dmac) = macs;
    out[0..6].copy_from_slice(&dmac);
    out[6..12].copy_from_slice(&smac);
    out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let (iph, tcp) = out[14..].split_at_mut(20);
    ipr.emit(&mut Ipv4Packet::new_unchecked(iph), &caps);
    rst.emit(
        &mut TcpPacket::new_unchecked(tcp),
        &src.into(),
        &dst.into(),
        &caps,
    );
    RST_LEN
}

/// Writes into `out` an Ethernet frame carrying an ICMP destination unreachable, code 4
/// ("fragmentation needed and DF set"), with next-hop MTU `mtu`, from `src` to `dst`, quoting
/// the start of `offending` (the too-big IPv4 packet, from its header). Returns the frame's
/// length (at most [`FRAG_NEEDED_LEN`]).
pub fn frag_needed(
    out: &mut [u8; FRAG_NEEDED_LEN],
    macs: ([u8; 6], [u8; 6]),
    src: u32,
    dst: u32,
    mtu: u16,
    offending: &[u8],
) -> usize {
    dst_unreachable(out, macs, src, dst, FRAG_NEEDED, mtu, offending)
}

/// Writes into `out` an Ethernet frame carrying an ICMP destination unreachable with `code`
/// ([`PORT_UNREACHABLE`], [`FRAG_NEEDED`], ...) and, for code 4, the next-hop `mtu` (else 0),
/// from `src` to `dst`, quoting the IPv4 header and first 8 payload bytes of `offending`.
/// Returns the frame's length (at most [`FRAG_NEEDED_LEN`]).
pub fn dst_unreachable(
    out: &mut [u8; FRAG_NEEDED_LEN],
    macs: ([u8; 6], [u8; 6]),
    src: u32,
    dst: u32,
    code: u8,
    mtu: u16,
    offending: &[u8],
) -> usize {
    let quote = &offending[..offending.len().min(QUOTE)];
    let len = HEADERS + quote.len();
    let (smac, dmac) = macs;
    out[0..6].copy_from_slice(&dmac);
    out[6..12].copy_from_slice(&smac);
    out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = 14;
    let ip_len = u16::try_from(len - ip).unwrap_or(u16::MAX);
    out[ip] = 0x45;
    // Internetwork control, as Linux marks the ICMP errors it sends.
    out[ip + 1] = 0xc0;
    out[ip + 2..ip + 4].copy_from_slice(&ip_len.to_be_bytes());
    out[ip + 4..ip + 8].copy_from_slice(&[0; 4]);
    out[ip + 8] = 64;
    out[ip + 9] = 1;
    out[ip + 12..ip + 16].copy_from_slice(&src.to_be_bytes());
    out[ip + 16..ip + 20].copy_from_slice(&dst.to_be_bytes());
    Ipv4Packet::new_unchecked(&mut out[ip..ip + 20]).fill_checksum();
    let icmp = ip + 20;
    out[icmp] = 3;
    out[icmp + 1] = code;
    out[icmp + 2..icmp + 6].copy_from_slice(&[0; 4]);
    let mtu = if code == FRAG_NEEDED { mtu } else { 0 };
    out[icmp + 6..icmp + 8].copy_from_slice(&mtu.to_be_bytes());
    out[HEADERS..len].copy_from_slice(quote);
    Icmpv4Packet::new_unchecked(&mut out[icmp..len]).fill_checksum();
    len
}

/// How many answers one source may get per window, and the window.
const BURST: u16 = 10;
const WINDOW_MS: u32 = 100;
const SLOTS: usize = 64;

/// A per-source rate limit: at most `burst` events per source address in any window of
/// `window_ms` (for generated answers, as Linux's `icmp_ratelimit`, [`BURST`] per [`WINDOW_MS`];
/// for new flows, a configured number per second). Direct-mapped by address over `N` slots:
/// two sources sharing a slot only reset each other's window (they may get more, never
/// starve). Time is the caller's `now` in milliseconds; no clock is read.
#[derive(Debug, Clone)]
pub struct RateLimit<const N: usize = SLOTS> {
    slots: [(u32, u32, u16); N],
    burst: u16,
    window_ms: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(BURST, WINDOW_MS)
    }
}

impl<const N: usize> RateLimit<N> {
    /// At most `burst` per source in any `window_ms`.
    pub fn new(burst: u16, window_ms: u32) -> Self {
        RateLimit {
            slots: [(0, 0, 0); N],
            burst,
            window_ms,
        }
    }

    /// Whether `src` may have one more at `now`; counts it if so.
    // Casts: the product's high half, below N.
    #[allow(clippy::cast_possible_truncation)]
    #[inline]
    pub fn allow(&mut self, src: u32, now: u32) -> bool {
        // Multiply-shift: the hash's high bits, scaled to the slots.
        let h = src.wrapping_mul(0x9e37_79b1);
        let slot = ((u64::from(h) * N as u64) >> 32) as usize;
        let Some(e) = self.slots.get_mut(slot) else {
            return true;
        };
        if e.0 != src || e.2 == 0 || now.wrapping_sub(e.1) >= self.window_ms {
            *e = (src, now, 1);
            return true;
        }
        if e.2 < self.burst {
            e.2 += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frag_needed_carries_the_mtu_and_quotes_the_offending_header() {
        // A 1,500-byte TCP packet with DF, from 192.168.100.1:40000 to 192.168.100.11:8080.
        let mut big = vec![0xa5u8; 1500];
        big[..20].copy_from_slice(&[
            0x45, 0, 0x05, 0xdc, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 192, 168, 100, 1, 192, 168, 100,
            11,
        ]);
        big[20..24].copy_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
        let mut out = [0xa5u8; FRAG_NEEDED_LEN];
        let n = frag_needed(
            &mut out,
            ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 9]),
            u32::from_be_bytes([192, 168, 100, 11]),
            u32::from_be_bytes([192, 168, 100, 1]),
            1450,
            &big,
        );
        assert_eq!(n, FRAG_NEEDED_LEN);
        assert_eq!(&out[0..6], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&out[6..12], &[2, 0, 0, 0, 0, 1]);
        let ip = Ipv4Packet::new_checked(&out[14..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.next_header(), smoltcp::wire::IpProtocol::Icmp);
        assert_eq!(usize::from(ip.total_len()), n - 14);
        assert_eq!(ip.dst_addr().octets(), [192, 168, 100, 1]);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((icmp.msg_type().into(), icmp.msg_code()), (3u8, 4u8));
        // RFC 1191: the next-hop MTU in the low 16 bits of the "unused" field.
        assert_eq!(&ip.payload()[4..8], &[0, 0, 0x05, 0xaa]);
        // The quote: the whole offending IPv4 header and its ports.
        assert_eq!(&ip.payload()[8..], &big[..QUOTE]);
    }

    #[test]
    fn a_short_offending_packet_is_quoted_whole() {
        let mut out = [0u8; FRAG_NEEDED_LEN];
        let n = frag_needed(&mut out, ([1; 6], [2; 6]), 1, 2, 1400, &[0x45; 20]);
        assert_eq!(n, FRAG_NEEDED_LEN - 8);
        assert!(Icmpv4Packet::new_checked(&out[34..n])
            .unwrap()
            .verify_checksum());
    }

    #[test]
    fn each_source_gets_a_burst_per_window() {
        let mut l = RateLimit::default();
        let a = 0x0a00_0001;
        let b = 0x0a00_0002;
        for _ in 0..BURST {
            assert!(l.allow(a, 1000));
        }
        assert!(!l.allow(a, 1000));
        assert!(!l.allow(a, 1000 + WINDOW_MS - 1));
        // Another source is not held back by the first.
        assert!(l.allow(b, 1000));
        // A new window.
        assert!(l.allow(a, 1000 + WINDOW_MS));
        // The clock wraps.
        let mut l = RateLimit::default();
        assert!(l.allow(a, u32::MAX - 10));
        for _ in 1..BURST {
            assert!(l.allow(a, u32::MAX));
        }
        assert!(!l.allow(a, 5));
        assert!(l.allow(a, 90 + 10));
    }
}
