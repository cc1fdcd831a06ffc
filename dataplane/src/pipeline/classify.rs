//! Stage 1, classify: what a frame is. The IPv4 and L4 checks (every drop reason of those
//! layers comes from `parse_ipv4`), and the peek at a frame's flow key (through VXLAN too) that
//! the prefetch pass uses.

use super::*;

/// The parsed headers of an IPv4 frame; offsets are within the frame.
#[derive(Debug, Clone, Copy)]
pub struct L3 {
    pub proto: u8,
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags, or 0.
    pub flags: u8,
    /// TCP acknowledgement number, or 0.
    pub ack: u32,
    /// Offset of the TCP/UDP header in the frame.
    pub l4: usize,
    /// Whether this is a whole datagram or which fragment of one.
    pub frag: super::frag::Frag,
}

impl L3 {
    #[inline]
    pub fn key(&self) -> FlowKey {
        FlowKey::new(self.proto, self.src, self.sport, self.dst, self.dport)
    }
    #[inline]
    pub(super) fn has_ports(&self) -> bool {
        (self.proto == TCP || self.proto == UDP) && self.frag != super::frag::Frag::Later
    }
}

#[inline]
pub(super) fn addr(v: u32) -> Ipv4Address {
    Ipv4Address::from(v.to_be_bytes())
}

#[inline]
pub(super) fn ipkey(a: Ipv4Address) -> u32 {
    u32::from_be_bytes(a.octets())
}

/// Whether an ICMP error of `kind` and `code` says nothing listens or may be reached where its
/// quoted packet went (host, protocol or port unreachable; administratively prohibited): not
/// "fragmentation needed", which is path MTU discovery, nor a time exceeded.
//= https://www.rfc-editor.org/rfc/rfc792
//# Destination Unreachable Message [...] Internet Header + 64 bits of Original Data Datagram
pub(super) fn says_unreachable(kind: u8, code: u8) -> bool {
    kind == 3 && matches!(code, 1 | 2 | 3 | 9 | 10 | 13)
}

/// The key of the TCP or UDP packet an ICMP error at `l4` quotes: a destination unreachable
/// of any code (fragmentation needed included), a time exceeded or a parameter problem, the
/// errors a router on a packet's way sends its sender.
pub(super) fn error_quote(frame: &[u8], l4: usize) -> Option<FlowKey> {
    let icmp = frame.get(l4..)?;
    if !matches!(icmp.first(), Some(3 | 11 | 12)) {
        return None;
    }
    quoted_key(icmp)
}

/// The key of the TCP or UDP packet quoted after the 8 bytes of the ICMP error `icmp`, when
/// the quote holds its IPv4 header and ports.
fn quoted_key(icmp: &[u8]) -> Option<FlowKey> {
    let ip = icmp.get(8..)?;
    let h = ip.first_chunk::<IPV4>()?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let proto = h[9];
    if ihl < IPV4 || !(proto == TCP || proto == UDP) {
        return None;
    }
    let ports = ip.get(ihl..)?.first_chunk::<4>()?;
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some(FlowKey::new(
        proto,
        word(&h[12..16]),
        u16::from_be_bytes([ports[0], ports[1]]),
        word(&h[16..20]),
        u16::from_be_bytes([ports[2], ports[3]]),
    ))
}

/// Checks the IPv4 header at `off` (and the TCP/UDP header after it) and reads what the fast
/// path needs. Every drop reason of the IPv4 and L4 layers comes from here.
///
/// The same checks as smoltcp's `Ipv4Packet::check_len`/`TcpPacket::check_len`, written out so
/// they cost a few compares, and checksums verified with a 64-bit-word sum; the IPv4 fields are
/// read from the fixed header as an array (no bounds check per field), the TCP and UDP ones
/// through smoltcp's views. Always inlined: returning the parsed fields through memory and the
/// call itself cost 5-13% of an established packet's time (bench pipeline, side by side).
#[inline(always)]
// Casts: an IPv4 payload is at most 65,535 bytes (checked against the total length).
#[allow(clippy::cast_possible_truncation)]
pub fn parse_ipv4(frame: &[u8], off: usize, verify_l4: bool) -> Result<L3, DropReason> {
    let Some(bytes) = frame.get(off..) else {
        return Err(DropReason::Truncated);
    };
    // The fixed header as an array: the reads below need no bounds checks.
    let Some(h) = bytes.first_chunk::<IPV4>() else {
        return Err(DropReason::Truncated);
    };
    //= https://www.rfc-editor.org/rfc/rfc791#section-3.1
    //# Version:  4 bits [...] IHL:  4 bits  Internet Header Length is the length of the internet
    //# header in 32 bit words
    let vihl = h[0];
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(DropReason::BadIpv4Header);
    }
    if vihl & 0x0f != 5 {
        return Err(DropReason::Ipv4Options);
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total < IPV4 || total > bytes.len() {
        return Err(DropReason::BadIpv4Header);
    }
    if !checksum::verify(0, h) {
        return Err(DropReason::BadIpChecksum);
    }
    if h[8] <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let dst = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    let proto = h[9];
    let l4 = off + IPV4;
    // `IPV4 <= total <= bytes.len()`, checked above: the payload is what the header says.
    let payload = bytes.get(IPV4..total).unwrap_or_default();
    let mut out = L3 {
        proto,
        src,
        dst,
        sport: 0,
        dport: 0,
        flags: 0,
        ack: 0,
        l4,
        frag: super::frag::Frag::Whole,
    };
    // More-fragments flag or a fragment offset: checked apart (cold).
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        let head = super::frag::parse_fragment(h, payload)?;
        out.frag = head.frag;
        out.sport = head.sport;
        out.dport = head.dport;
        out.flags = head.flags;
        out.ack = head.ack;
        return Ok(out);
    }
    let pseudo = || checksum::pseudo_v4(src, dst, proto, payload.len() as u16);
    match proto {
        TCP => {
            if payload.len() < 20 {
                return Err(DropReason::BadL4Header);
            }
            let t = TcpPacket::new_unchecked(payload);
            let doff = usize::from(t.header_len());
            if doff < 20 || doff > payload.len() {
                return Err(DropReason::BadL4Header);
            }
            if verify_l4 && !checksum::verify(pseudo(), payload) {
                return Err(DropReason::BadL4Checksum);
            }
            out.sport = t.src_port();
            out.dport = t.dst_port();
            out.flags = payload[13];
            out.ack = t.ack_number().0 as u32;
        }
        UDP => {
            if payload.len() < 8 {
                return Err(DropReason::BadL4Header);
            }
            let u = UdpPacket::new_unchecked(payload);
            if usize::from(u.len()) != payload.len() {
                return Err(DropReason::BadL4Header);
            }
            //= https://www.rfc-editor.org/rfc/rfc768
            //# An all zero transmitted checksum value means that the transmitter generated no
            //# checksum
            if verify_l4 && u.checksum() != 0 && !checksum::verify(pseudo(), payload) {
                return Err(DropReason::BadL4Checksum);
            }
            out.sport = u.src_port();
            out.dport = u.dst_port();
        }
        ICMP => {}
        _ => return Err(DropReason::UnknownProtocol),
    }
    Ok(out)
}

/// The flow key a frame most likely looks up (its own 5-tuple, or its inner one for VXLAN),
/// read without validation: only used to prefetch.
#[inline]
pub(super) fn peek_key(f: &[u8]) -> Option<FlowKey> {
    let mut off = ETH;
    for _ in 0..2 {
        // The ethertype, the IPv4 header and the ports as one array: no bounds check per byte.
        let h = f.get(off - 2..)?.first_chunk::<{ 2 + IPV4 + 4 }>()?;
        if h[0..2] != [0x08, 0x00] || h[2] != 0x45 {
            return None;
        }
        let ip = 2;
        let proto = h[ip + 9];
        if proto != TCP && proto != UDP {
            return None;
        }
        let l4 = ip + IPV4;
        let dport = u16::from_be_bytes([h[l4 + 2], h[l4 + 3]]);
        if proto == UDP && dport == vxlan::UDP_PORT {
            off += vxlan::ENCAP_LEN;
            continue;
        }
        let src = u32::from_be_bytes([h[ip + 12], h[ip + 13], h[ip + 14], h[ip + 15]]);
        let dst = u32::from_be_bytes([h[ip + 16], h[ip + 17], h[ip + 18], h[ip + 19]]);
        let sport = u16::from_be_bytes([h[l4], h[l4 + 1]]);
        return Some(FlowKey::new(proto, src, sport, dst, dport));
    }
    None
}
