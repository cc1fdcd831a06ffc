//! ICMP errors between the tasks of a dual-stack overlay network, translated with the packet
//! they quote (RFC 7915 §4.2 and §5.2): a task's ICMPv6 destination unreachable, packet too big
//! or time exceeded about its IPv6 traffic becomes ICMP about the IPv4 form of that traffic where
//! it comes in, goes the IPv4 way (the flow it quotes judged as any task's ICMP is), and is
//! turned back into ICMPv6 about the IPv6 packet where it goes out. So a UDP client hears "port
//! unreachable" from a task's twin on another node, and a task hears "packet too big" from its
//! gateway's twin ([`Pipeline::task_ipv6`]).
//!
//! What has no counterpart is dropped as `ipv6_untranslated`: Parameter Problem but
//! "unrecognized Next Header" (it needs a pointer translated field by field), codes RFC 7915
//! does not map, and quotes that are not of a packet between twins of the network (extension
//! headers, a piece of a datagram, another protocol than TCP, UDP and echo).
//!
//! The quoted transport checksum is moved to the new pseudo-header as a translated packet's is
//! (receivers do not check it, but a quote reads as the packet was sent); a quoted echo's is
//! left as it was. Errors are rare, so this is out of line, built in a buffer on the stack.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv4Repr, Ipv6Address, Ipv6Packet, Ipv6Repr,
    IPV6_HEADER_LEN, IPV6_MIN_MTU,
};

use super::ipv6::{L3v6, ICMPV6};
use super::nat64::{pseudo_delta, words4, words6};
use super::*;
use crate::buf::BUF_SIZE;

/// An ICMP or ICMPv6 header: type, code, checksum and the 4 bytes of the rest of the header.
const ICMP_HEADER: usize = 8;

/// RFC 7915 §5.2: an ICMPv6 error's type, code and rest of header (`rest`) as ICMP's; `None`
/// when it has no IPv4 counterpart meshd sends.
pub(super) fn type_to_v4(ty: u8, code: u8, rest: u32) -> Option<(u8, u8, u32)> {
    Some(match (ty, code) {
        // Destination unreachable: no route, beyond scope, address unreachable.
        (1, 0 | 2 | 3) => (3, 1, 0),
        // Administratively prohibited.
        (1, 1) => (3, 10, 0),
        // Port unreachable.
        (1, 4) => (3, 3, 0),
        // Packet too big: fragmentation needed, the MTU less the 20 bytes IPv6's header has
        // more.
        (2, 0) => (3, 4, rest.saturating_sub(20).min(0xffff)),
        // Time exceeded.
        (3, 0 | 1) => (11, code, 0),
        // Parameter problem, unrecognized Next Header: protocol unreachable.
        (4, 1) => (3, 2, 0),
        _ => return None,
    })
}

/// RFC 7915 §4.2: an ICMP error's type, code and rest of header as ICMPv6's; `None` when it has
/// no IPv6 counterpart.
pub(super) fn type_to_v6(ty: u8, code: u8, rest: u32) -> Option<(u8, u8, u32)> {
    Some(match (ty, code) {
        // Net or host unreachable, source route failed, and the unknown or isolated ones.
        (3, 0 | 1 | 5 | 6 | 7 | 8 | 11 | 12) => (1, 0, 0),
        // Prohibited, by administration or otherwise.
        (3, 9 | 10 | 13 | 15) => (1, 1, 0),
        // Protocol unreachable: parameter problem at the Next Header field (byte 6).
        (3, 2) => (4, 1, 6),
        (3, 3) => (1, 4, 0),
        // Fragmentation needed: packet too big, with 20 bytes more.
        (3, 4) => (2, 0, (rest & 0xffff) + 20),
        (11, 0 | 1) => (3, code, 0),
        _ => return None,
    })
}

/// Where the quoted transport checksum of `proto` is in `data` (what follows the quoted
/// header), when the quote holds it.
fn quoted_csum(proto: u8, data: &[u8]) -> Option<usize> {
    let at = match proto {
        TCP => 16,
        UDP => 6,
        _ => return None,
    };
    (data.len() >= at + 2).then_some(at)
}

/// Moves the quoted transport checksum in `data` (of `proto`) by `delta`, a UDP datagram
/// without one keeping none.
fn move_quoted_csum(proto: u8, data: &mut [u8], delta: checksum::Delta) {
    if let Some(c) = quoted_csum(proto, data) {
        let old = nat::be16(data, c);
        let new = if proto == UDP {
            checksum::apply_udp(delta, old)
        } else {
            delta.apply(old)
        };
        put16(data, c, new);
    }
}

/// Copies the quoted transport bytes `data` (of `proto`, `ICMP` for either family's) into
/// `body`: an echo's type turned by `echo` (request, reply: from, to), a TCP or UDP checksum
/// moved by `delta`.
fn quoted_transport(
    body: &mut [u8],
    data: &[u8],
    proto: u8,
    echo: [(u8, u8); 2],
    delta: checksum::Delta,
) {
    body.copy_from_slice(data);
    if proto != ICMP {
        move_quoted_csum(proto, body, delta);
    } else if let Some(ty) = body.first_mut() {
        if let Some(&(_, to)) = echo.iter().find(|(from, _)| from == ty) {
            *ty = to;
        }
    }
}

/// Writes into `out` the IPv4 form of the IPv6 packet `q` quoted by an ICMPv6 error (its
/// header, without extension headers, and what of it follows), its addresses by `v4`. Returns
/// the bytes written.
fn quote_to_v4(q: &[u8], out: &mut [u8], v4: impl Fn(Ipv6Address) -> Option<u32>) -> Option<usize> {
    let h = q.get(..IPV6_HEADER_LEN)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let (proto, next) = match h[6] {
        TCP => (TCP, IpProtocol::Tcp),
        UDP => (UDP, IpProtocol::Udp),
        ICMPV6 => (ICMP, IpProtocol::Icmp),
        _ => return None,
    };
    let mut s6 = [0u8; 16];
    let mut d6 = [0u8; 16];
    s6.copy_from_slice(&h[8..24]);
    d6.copy_from_slice(&h[24..40]);
    let (src, dst) = (v4(Ipv6Address::from(s6))?, v4(Ipv6Address::from(d6))?);
    // The length the packet had, not the quote's: refused when no IPv4 packet could be as long.
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if payload_len > usize::from(u16::MAX) - IPV4 {
        return None;
    }
    let data = &q[IPV6_HEADER_LEN..];
    let n = IPV4 + data.len();
    let o = out.get_mut(..n)?;
    let tc = (h[0] << 4) | (h[1] >> 4);
    let repr = Ipv4Repr {
        src_addr: addr(src),
        dst_addr: addr(dst),
        next_header: next,
        payload_len,
        hop_limit: h[7],
    };
    emit_v4(&mut o[..IPV4], &repr, tc);
    let delta = pseudo_delta(&words6(&s6, &d6), &words4(src, dst));
    quoted_transport(&mut o[IPV4..], data, proto, [(128, 8), (129, 0)], delta);
    Some(n)
}

/// Writes into `out` the IPv6 form of the IPv4 packet `q` quoted by an ICMP error, its addresses
/// by `v6`, as much of what follows its header as `out` holds. Returns the bytes written.
fn quote_to_v6(q: &[u8], out: &mut [u8], v6: impl Fn(u32) -> [u8; 16]) -> Option<usize> {
    let ihl = usize::from(q.first()? & 0x0f) * 4;
    if q[0] >> 4 != 4 || ihl < IPV4 {
        return None;
    }
    let h = q.get(..ihl)?;
    // A quoted piece of a datagram would need a Fragment header: not translated.
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return None;
    }
    let (proto, next) = match h[9] {
        TCP => (TCP, IpProtocol::Tcp),
        UDP => (UDP, IpProtocol::Udp),
        ICMP => (ICMP, IpProtocol::Icmpv6),
        _ => return None,
    };
    let word = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let (src, dst) = (word(12), word(16));
    let (s6, d6) = (v6(src), v6(dst));
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let room = out.len().checked_sub(IPV6_HEADER_LEN)?;
    let data = &q[ihl..];
    let data = &data[..data.len().min(room)];
    let n = IPV6_HEADER_LEN + data.len();
    let o = &mut out[..n];
    let repr = Ipv6Repr {
        src_addr: Ipv6Address::from(s6),
        dst_addr: Ipv6Address::from(d6),
        next_header: next,
        payload_len: total.saturating_sub(ihl),
        hop_limit: h[8],
    };
    emit_v6(&mut o[..IPV6_HEADER_LEN], &repr, h[1]);
    let delta = pseudo_delta(&words4(src, dst), &words6(&s6, &d6));
    quoted_transport(
        &mut o[IPV6_HEADER_LEN..],
        data,
        proto,
        [(8, 128), (0, 129)],
        delta,
    );
    Some(n)
}

/// Writes an ICMP or ICMPv6 message's type, code and rest of header (its checksum is summed
/// after).
fn put_header(o: &mut [u8], (ty, code, rest): (u8, u8, u32)) {
    o[0] = ty;
    o[1] = code;
    o[4..8].copy_from_slice(&rest.to_be_bytes());
}

/// Writes the IPv4 header `repr` into `o` (20 bytes; DF set, as smoltcp emits it), the traffic
/// class `tc` as its DSCP and ECN, its checksum summed.
fn emit_v4(o: &mut [u8], repr: &Ipv4Repr, tc: u8) {
    let mut p = Ipv4Packet::new_unchecked(o);
    repr.emit(&mut p, &ChecksumCapabilities::ignored());
    p.set_dscp(tc >> 2);
    p.set_ecn(tc & 3);
    p.fill_checksum();
}

/// Writes the IPv6 header `repr` into `o` (40 bytes), with traffic class `tc`.
fn emit_v6(o: &mut [u8], repr: &Ipv6Repr, tc: u8) {
    let mut p = Ipv6Packet::new_unchecked(o);
    repr.emit(&mut p);
    p.set_traffic_class(tc);
}

/// The rest-of-header word of an ICMP message.
fn rest_of(icmp: &[u8]) -> u32 {
    u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]])
}

/// Writes into `out` the ICMP message translated from the ICMPv6 error `icmp` (the whole
/// message), the quoted addresses by `v4`, its checksum summed. Returns its length.
pub(super) fn error_to_icmp(
    icmp: &[u8],
    out: &mut [u8],
    v4: impl Fn(Ipv6Address) -> Option<u32>,
) -> Option<usize> {
    let hd = icmp.get(..ICMP_HEADER)?;
    let (ty, code, rest) = type_to_v4(hd[0], hd[1], rest_of(hd))?;
    let n = quote_to_v4(&icmp[ICMP_HEADER..], out.get_mut(ICMP_HEADER..)?, v4)?;
    let o = &mut out[..ICMP_HEADER + n];
    put_header(o, (ty, code, rest));
    Icmpv4Packet::new_unchecked(o).fill_checksum();
    Some(ICMP_HEADER + n)
}

/// Writes into `out` the ICMPv6 message from `src` to `dst` translated from the ICMP error
/// `icmp`, the quoted addresses by `v6`, as much of the quote as `out` holds, its checksum
/// summed. Returns its length.
pub(super) fn error_to_icmpv6(
    icmp: &[u8],
    out: &mut [u8],
    (src, dst): (Ipv6Address, Ipv6Address),
    v6: impl Fn(u32) -> [u8; 16],
) -> Option<usize> {
    let hd = icmp.get(..ICMP_HEADER)?;
    let (ty, code, rest) = type_to_v6(hd[0], hd[1], rest_of(hd))?;
    let n = quote_to_v6(&icmp[ICMP_HEADER..], out.get_mut(ICMP_HEADER..)?, v6)?;
    let o = &mut out[..ICMP_HEADER + n];
    put_header(o, (ty, code, rest));
    Icmpv6Packet::new_unchecked(o).fill_checksum(&src, &dst);
    Some(ICMP_HEADER + n)
}

/// Whether the ICMP message at `l4` of the IPv4 frame `f` is an error (not an echo).
pub(super) fn is_icmp_error(f: &[u8], l4: usize) -> bool {
    f.get(l4).is_some_and(|&ty| ty != 0 && ty != 8)
}

/// Turns the ICMPv6 error `h` in `buf` (its Ethernet header at `base`: 0, or behind VXLAN's
/// outer headers, which are kept) into ICMP from `src` to `dst`, its quote's addresses by `v4`
/// (`ipv6_untranslated` when it has no IPv4 form).
#[cold]
#[inline(never)]
pub(super) fn error6_to_ipv4(
    buf: &mut PacketBuf,
    base: usize,
    h: &L3v6,
    (src, dst): (u32, u32),
    v4: impl Fn(Ipv6Address) -> Option<u32>,
) -> Result<(), DropReason> {
    let f = buf.data();
    let eth = base + ETH;
    let icmp = f.get(h.l4..h.end).ok_or(DropReason::Truncated)?;
    let mut out = [0u8; BUF_SIZE];
    out[..eth].copy_from_slice(&f[..eth]);
    put16(&mut out, eth - 2, 0x0800);
    let n = error_to_icmp(icmp, &mut out[eth + IPV4..], v4).ok_or(DropReason::Ipv6Untranslated)?;
    let tc = (f[eth] << 4) | (f[eth + 1] >> 4);
    let repr = Ipv4Repr {
        src_addr: addr(src),
        dst_addr: addr(dst),
        next_header: IpProtocol::Icmp,
        payload_len: n,
        hop_limit: h.hop_limit,
    };
    emit_v4(&mut out[eth..eth + IPV4], &repr, tc);
    buf.refill(&out[..eth + IPV4 + n]);
    Ok(())
}

/// Turns the ICMP error `l3` in `buf` (`payload` bytes after its header) into ICMPv6 between
/// `twins` (source, destination), its quote's addresses by `v6`, at most the IPv6 minimum MTU
/// long (RFC 4443 §2.4); `macs` (ours, the next hop's).
#[cold]
#[inline(never)]
pub(super) fn error4_to_ipv6(
    buf: &mut PacketBuf,
    l3: &L3,
    payload: usize,
    twins: ([u8; 16], [u8; 16]),
    macs: ([u8; 6], [u8; 6]),
    v6: impl Fn(u32) -> [u8; 16],
) -> Result<(), DropReason> {
    let f = buf.data();
    let icmp = f.get(l3.l4..l3.l4 + payload).ok_or(DropReason::Truncated)?;
    let (tos, ttl) = (f[ETH + 1], f[ETH + 8]);
    let (src, dst) = (Ipv6Address::from(twins.0), Ipv6Address::from(twins.1));
    let l4 = ETH + IPV6_HEADER_LEN;
    let mut out = [0u8; ETH + IPV6_MIN_MTU];
    let n = error_to_icmpv6(icmp, &mut out[l4..], (src, dst), v6)
        .ok_or(DropReason::Ipv6Untranslated)?;
    let (smac, dmac) = macs;
    out[0..6].copy_from_slice(&dmac);
    out[6..12].copy_from_slice(&smac);
    put16(&mut out, 12, 0x86dd);
    let repr = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: n,
        hop_limit: ttl,
    };
    emit_v6(&mut out[ETH..l4], &repr, tos);
    buf.refill(&out[..l4 + n]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mapped_error_goes_back_to_what_it_was() {
        // Port unreachable, packet too big and time exceeded are the same message both ways.
        for (ty, code, rest) in [(1, 4, 0), (2, 0, 1450), (3, 0, 0), (3, 1, 0)] {
            let (t4, c4, r4) = type_to_v4(ty, code, rest).unwrap();
            assert_eq!(
                type_to_v6(t4, c4, r4),
                Some((ty, code, rest)),
                "{ty}/{code}"
            );
        }
        for (ty, code, rest) in [(3, 3, 0), (3, 4, 1430), (11, 0, 0), (11, 1, 0)] {
            let (t6, c6, r6) = type_to_v6(ty, code, rest).unwrap();
            assert_eq!(
                type_to_v4(t6, c6, r6),
                Some((ty, code, rest)),
                "{ty}/{code}"
            );
        }
        // Fragmentation needed keeps its MTU in the low 16 bits, whatever the rest says.
        assert_eq!(type_to_v6(3, 4, 0xabcd_05a0), Some((2, 0, 1460)));
    }

    #[test]
    fn what_rfc_7915_does_not_map_is_refused() {
        for (ty, code) in [
            (1, 5),
            (1, 7),
            (2, 1),
            (3, 2),
            (4, 0),
            (4, 2),
            (128, 0),
            (135, 0),
        ] {
            assert_eq!(type_to_v4(ty, code, 0), None, "ICMPv6 {ty}/{code}");
        }
        for (ty, code) in [(3, 14), (3, 16), (5, 0), (11, 2), (12, 0), (8, 0), (0, 0)] {
            assert_eq!(type_to_v6(ty, code, 0), None, "ICMP {ty}/{code}");
        }
    }

    #[test]
    fn a_quote_is_refused_unless_its_packet_is_between_translatable_addresses() {
        let mut q = [0u8; 48];
        q[0] = 0x60;
        q[6] = UDP;
        q[8..24].copy_from_slice(&Ipv6Address::LOCALHOST.octets());
        q[24..40].copy_from_slice(&Ipv6Address::LOCALHOST.octets());
        let mut out = [0u8; 128];
        assert_eq!(quote_to_v4(&q, &mut out, |_| Some(1)), Some(28));
        assert_eq!(
            quote_to_v4(&q, &mut out, |_| None),
            None,
            "outside the network"
        );
        q[6] = 44;
        assert_eq!(
            quote_to_v4(&q, &mut out, |_| Some(1)),
            None,
            "a Fragment header"
        );
        q[6] = UDP;
        q[0] = 0x40;
        assert_eq!(quote_to_v4(&q, &mut out, |_| Some(1)), None, "not IPv6");
        assert_eq!(quote_to_v4(&q[..39], &mut out, |_| Some(1)), None, "short");
        // A payload length no IPv4 packet could carry (with its 20-byte header, more than
        // 65,535): refused, not summed past u16 (smoltcp's emit adds them as u16).
        q[0] = 0x60;
        q[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(
            quote_to_v4(&q, &mut out, |_| Some(1)),
            None,
            "longer than IPv4 allows"
        );
        q[4..6].copy_from_slice(&65_515u16.to_be_bytes());
        assert_eq!(
            quote_to_v4(&q, &mut out, |_| Some(1)),
            Some(28),
            "the longest"
        );
    }

    #[test]
    fn a_quoted_datagram_reads_right_in_either_family_and_comes_back_as_it_was() {
        use smoltcp::wire::{IpAddress, UdpPacket};
        let (s6, d6) = (
            Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0x0a00, 0x0115),
            Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0x0a00, 0x010c),
        );
        let mut q = vec![0u8; 40 + 8 + 12];
        Ipv6Repr {
            src_addr: s6,
            dst_addr: d6,
            next_header: IpProtocol::Udp,
            payload_len: 20,
            hop_limit: 63,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut q[..40]));
        q[40..42].copy_from_slice(&5353u16.to_be_bytes());
        q[42..44].copy_from_slice(&9u16.to_be_bytes());
        q[44..46].copy_from_slice(&20u16.to_be_bytes());
        q[48..].copy_from_slice(b"hello, twin!");
        UdpPacket::new_unchecked(&mut q[40..]).fill_checksum(&s6.into(), &d6.into());
        let low = |a: Ipv6Address| Some(u32::from_be_bytes(a.octets()[12..].try_into().unwrap()));
        let mut v4 = [0u8; 64];
        let n = quote_to_v4(&q, &mut v4, low).unwrap();
        assert_eq!(n, 20 + 20);
        let ip = Ipv4Packet::new_checked(&v4[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.hop_limit(), ip.total_len()), (63, 40));
        let (s4, d4) = (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
        );
        assert_eq!(s4, IpAddress::v4(10, 0, 1, 21));
        assert!(
            UdpPacket::new_checked(&v4[20..n])
                .unwrap()
                .verify_checksum(&s4, &d4),
            "the quoted checksum moved to IPv4's pseudo-header"
        );
        let prefix = |a: u32| {
            let mut o = s6.octets();
            o[12..].copy_from_slice(&a.to_be_bytes());
            o
        };
        let mut back = [0u8; 64];
        let m = quote_to_v6(&v4[..n], &mut back, prefix).unwrap();
        assert_eq!(back[..m], q[..], "back as it was");
        // Cut to what `out` holds.
        assert_eq!(quote_to_v6(&v4[..n], &mut back[..50], prefix), Some(50));
    }
}
