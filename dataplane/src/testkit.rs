//! Frame builders and checkers for tests, the in-memory mesh ([`crate::sim`]) and benchmarks.
//!
//! Builders emit with smoltcp's `Repr`s (and [`crate::wire::vxlan`] for VXLAN) and return a new
//! `Vec<u8>` holding a whole Ethernet frame with valid checksums. Parsers check what a receiving
//! host would check (IPv4 header checksum, TCP/UDP/ICMP checksums, lengths) and return `None`
//! for anything that does not pass, so a test that reads a frame back has also verified it.
//!
//! Not for the fast path: every builder allocates its frame.

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, NdiscRepr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    UdpRepr,
};

use crate::wire::{reply, vxlan};
use ctl::model::{self, Ipv4Net, Protocol, State};

/// An Ethernet address as bytes.
pub type Mac = [u8; 6];

/// The broadcast Ethernet address.
pub const BROADCAST: Mac = [0xff; 6];

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// IPv4 header length without options.
pub const IPV4_LEN: usize = 20;
/// Offset of the VXLAN flags byte in a frame built by [`vxlan_frame`].
pub const VXLAN_FLAGS_AT: usize = ETH_LEN + IPV4_LEN + 8;

/// TCP flag bits, as in the header's flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The hop limit every builder uses.
pub const TTL: u8 = 64;

fn eth_header(f: &mut [u8], src_mac: Mac, dst_mac: Mac, ethertype: EthernetProtocol) {
    let repr = EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype,
    };
    repr.emit(&mut EthernetFrame::new_unchecked(f));
}

/// An Ethernet + IPv4 frame (no options, TTL [`TTL`], DF set) of protocol `proto` whose L4 part
/// is `l4_len` bytes filled by `fill`.
fn ipv4_with(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    l4_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4_len,
        hop_limit: TTL,
    };
    let mut f = vec![0u8; ETH_LEN + ip.buffer_len() + l4_len];
    eth_header(&mut f, src_mac, dst_mac, EthernetProtocol::Ipv4);
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut f[ETH_LEN..]),
        &ChecksumCapabilities::default(),
    );
    fill(&mut f[ETH_LEN + IPV4_LEN..]);
    f
}

/// An IPv4 frame carrying `l4` as the payload of protocol number `proto` (for protocols the
/// other builders do not cover, and for malformed L4 headers).
pub fn ipv4_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    ipv4_with(
        src_mac,
        dst_mac,
        src,
        dst,
        IpProtocol::from(proto),
        l4.len(),
        |b| b.copy_from_slice(l4),
    )
}

/// A TCP segment with exactly the flag bits `flags` (see [`tcp_flags`]); the acknowledgement
/// number is written as given (a receiver only reads it when ACK is set).
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: sport,
        dst_port: dport,
        control: TcpControl::None,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: Some(TcpSeqNumber(ack as i32)),
        window_len: 64240,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
    ipv4_with(
        src_mac,
        dst_mac,
        src,
        dst,
        IpProtocol::Tcp,
        repr.buffer_len(),
        |b| {
            let mut p = TcpPacket::new_unchecked(b);
            repr.emit(&mut p, &s, &d, &ChecksumCapabilities::default());
            // The repr knows one control flag at a time; write the flags byte as asked.
            p.clear_flags();
            p.set_fin(flags & tcp_flags::FIN != 0);
            p.set_syn(flags & tcp_flags::SYN != 0);
            p.set_rst(flags & tcp_flags::RST != 0);
            p.set_psh(flags & tcp_flags::PSH != 0);
            p.set_ack(flags & tcp_flags::ACK != 0);
            p.fill_checksum(&s, &d);
        },
    )
}

/// A UDP datagram with its checksum filled in.
pub fn udp_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: sport,
        dst_port: dport,
    };
    let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
    ipv4_with(
        src_mac,
        dst_mac,
        src,
        dst,
        IpProtocol::Udp,
        repr.header_len() + payload.len(),
        |b| {
            let mut p = UdpPacket::new_unchecked(b);
            repr.emit(
                &mut p,
                &s,
                &d,
                payload.len(),
                |out| out.copy_from_slice(payload),
                &ChecksumCapabilities::default(),
            );
        },
    )
}

fn arp(src_mac: Mac, dst_mac: Mac, repr: ArpRepr) -> Vec<u8> {
    let mut f = vec![0u8; ETH_LEN + repr.buffer_len()];
    eth_header(&mut f, src_mac, dst_mac, EthernetProtocol::Arp);
    repr.emit(&mut ArpPacket::new_unchecked(&mut f[ETH_LEN..]));
    f
}

/// A broadcast ARP request from `src_mac`/`src_ip` for `target_ip`.
pub fn arp_request(src_mac: Mac, src_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    arp(
        src_mac,
        BROADCAST,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(src_mac),
            source_protocol_addr: src_ip,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target_ip,
        },
    )
}

/// An ARP reply "`src_ip` is at `src_mac`", sent to `dst_mac`/`dst_ip`.
pub fn arp_reply(src_mac: Mac, src_ip: Ipv4Addr, dst_mac: Mac, dst_ip: Ipv4Addr) -> Vec<u8> {
    arp(
        src_mac,
        dst_mac,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(src_mac),
            source_protocol_addr: src_ip,
            target_hardware_addr: EthernetAddress(dst_mac),
            target_protocol_addr: dst_ip,
        },
    )
}

fn icmp(src_mac: Mac, dst_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr, repr: Icmpv4Repr) -> Vec<u8> {
    ipv4_with(
        src_mac,
        dst_mac,
        src,
        dst,
        IpProtocol::Icmp,
        repr.buffer_len(),
        |b| {
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(b),
                &ChecksumCapabilities::default(),
            );
        },
    )
}

/// An ICMP destination unreachable with `code` (3: port unreachable) from `src` to `dst`,
/// quoting the IPv4 packet of `frame` (its header and first 8 bytes of payload), as a host
/// answers a datagram to a port nothing listens on.
pub fn icmp_unreachable(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    code: u8,
    frame: &[u8],
) -> Vec<u8> {
    icmp_error(src_mac, dst_mac, (src, dst), (3, code, 0), frame)
}

/// An ICMP error of `kind`, `code` and second word `rest` (the next hop's MTU of a
/// "fragmentation needed") from `src` to `dst`, quoting the IPv4 header and first 8 payload
/// bytes of `frame`.
pub fn icmp_error(
    src_mac: Mac,
    dst_mac: Mac,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    (kind, code, rest): (u8, u8, u32),
    frame: &[u8],
) -> Vec<u8> {
    let ip = &frame[ETH_LEN..];
    let quoted = &ip[..(usize::from(ip[0] & 0x0f) * 4 + 8).min(ip.len())];
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let sum = !crate::wire::checksum::fold64(crate::wire::checksum::sum(&icmp));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4_frame(src_mac, dst_mac, src, dst, 1, &icmp)
}

/// An ICMP echo request.
pub fn icmp_echo(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    icmp(
        src_mac,
        dst_mac,
        src,
        dst,
        Icmpv4Repr::EchoRequest {
            ident,
            seq_no: seq,
            data,
        },
    )
}

/// An ICMP echo reply.
pub fn icmp_echo_reply(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    icmp(
        src_mac,
        dst_mac,
        src,
        dst,
        Icmpv4Repr::EchoReply {
            ident,
            seq_no: seq,
            data,
        },
    )
}

/// `inner` sealed by `sealer` with `keys` for network `vni` and encapsulated, as a peer meshd
/// sends on an encrypted network (outer UDP source port 50000); `None` if sealing fails.
#[allow(clippy::too_many_arguments)]
pub fn sealed_vxlan_frame(
    sealer: &mut crate::overlay::seal::Sealer,
    keys: &crate::overlay::seal::NetKeys,
    outer_src_mac: Mac,
    outer_dst_mac: Mac,
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    vni: u32,
    inner: &[u8],
) -> Option<Vec<u8>> {
    let (src, dst) = (u32::from(outer_src), u32::from(outer_dst));
    let mut b = crate::buf::PacketBuf::from_frame(crate::buf::PortId::Uplink, inner);
    sealer.seal(keys, &mut b, vni, src, dst).ok()?;
    crate::overlay::Outer::new(outer_src_mac, outer_dst_mac, src, dst, vxlan::UDP_PORT)
        .encap(&mut b, 50000, vni)
        .ok()?;
    Some(b.data().to_vec())
}

/// A VXLAN frame (RFC 7348): outer Ethernet/IPv4/UDP to port 4789 with a zero UDP checksum,
/// the VXLAN header with the I flag and `vni`, then `inner` (an Ethernet frame).
pub fn vxlan_frame(
    outer_src_mac: Mac,
    outer_dst_mac: Mac,
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    outer_sport: u16,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let (s, d) = (IpAddress::Ipv4(outer_src), IpAddress::Ipv4(outer_dst));
    ipv4_with(
        outer_src_mac,
        outer_dst_mac,
        outer_src,
        outer_dst,
        IpProtocol::Udp,
        VXLAN_UDP_LEN + inner.len(),
        //= https://www.rfc-editor.org/rfc/rfc7348#section-5
        //# UDP Checksum: It SHOULD be transmitted as zero.
        |b| vxlan_udp(b, (s, d), outer_sport, vni, inner, false),
    )
}

/// The outer UDP and VXLAN headers' length.
const VXLAN_UDP_LEN: usize = 8 + vxlan::HEADER_LEN;

/// Writes into `b` the outer UDP datagram from `sport` to port 4789 (between `addrs`, for the
/// checksum, zero unless `checksum`) carrying the VXLAN header with `vni` and `inner`.
fn vxlan_udp(
    b: &mut [u8],
    addrs: (IpAddress, IpAddress),
    sport: u16,
    vni: u32,
    inner: &[u8],
    checksum: bool,
) {
    let repr = UdpRepr {
        src_port: sport,
        dst_port: vxlan::UDP_PORT,
    };
    let v = vxlan::Repr { vni };
    let mut p = UdpPacket::new_unchecked(b);
    repr.emit(
        &mut p,
        &addrs.0,
        &addrs.1,
        v.buffer_len() + inner.len(),
        |out| {
            v.emit(&mut vxlan::Packet::new_unchecked(&mut out[..]));
            out[vxlan::HEADER_LEN..].copy_from_slice(inner);
        },
        &ChecksumCapabilities::default(),
    );
    if !checksum {
        p.set_checksum(0);
    }
}

/// Recomputes the IPv4 header checksum of the frame's IPv4 header (after a test edited it).
pub fn refill_ipv4_checksum(frame: &mut [u8]) {
    if let Some(b) = frame.get_mut(ETH_LEN..) {
        if let Ok(mut p) = Ipv4Packet::new_checked(b) {
            p.fill_checksum();
        }
    }
}

/// Splits an Ethernet/IPv4 frame (IHL 5) into fragments of at most `mtu` bytes of IPv4, as a
/// sender's stack does (RFC 791): each with a copy of the header, data in multiples of 8 bytes
/// but the last, its offset, and more-fragments on all but the last. `id` is set in all.
// Casts: test frames are under 64 KiB.
#[allow(clippy::cast_possible_truncation)]
pub fn fragment(frame: &[u8], mtu: usize, id: u16) -> Vec<Vec<u8>> {
    let total = usize::from(u16::from_be_bytes([frame[ETH_LEN + 2], frame[ETH_LEN + 3]]));
    let payload = &frame[ETH_LEN + 20..ETH_LEN + total];
    let chunk = (mtu - 20) & !7;
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(k, c)| {
            let mut f = frame[..ETH_LEN + 20].to_vec();
            f.extend_from_slice(c);
            let more = if (k + 1) * chunk < payload.len() {
                0x2000
            } else {
                0
            };
            f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&((20 + c.len()) as u16).to_be_bytes());
            f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&id.to_be_bytes());
            let off = (k * chunk / 8) as u16 | more;
            f[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&off.to_be_bytes());
            refill_ipv4_checksum(&mut f);
            f
        })
        .collect()
}

/// Joins Ethernet/IPv4 fragments, in any order, into the datagram's frame (the first
/// fragment's Ethernet and IPv4 headers, offset and flags cleared, checksum refilled). `None`
/// unless they are exactly one datagram: the same addresses, protocol and id, no gap, no
/// overlap, one last fragment, every header checksum right.
// Casts: test frames are under 64 KiB.
#[allow(clippy::cast_possible_truncation)]
pub fn reassemble(frags: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut parts = Vec::new();
    for f in frags {
        let ip = Ipv4Packet::new_checked(f.get(ETH_LEN..)?).ok()?;
        if !ip.verify_checksum() || ip.header_len() != 20 {
            return None;
        }
        let same = (ip.src_addr(), ip.dst_addr(), ip.next_header(), ip.ident());
        let off = usize::from(ip.frag_offset());
        parts.push((off, ip.more_frags(), same, ip.payload().to_vec(), f.clone()));
    }
    let (data, first, _) = join(parts)?;
    let mut f = first[..ETH_LEN + 20].to_vec();
    f.extend_from_slice(&data);
    f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
    f[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&[0, 0]);
    refill_ipv4_checksum(&mut f);
    Some(f)
}

/// A piece of a datagram as [`reassemble`] and [`reassemble6`] read it: its offset, whether
/// more follow, what the datagram's pieces share, its data, and its frame.
type Part<K> = (usize, bool, K, Vec<u8>, Vec<u8>);

/// The datagram's data, the first piece's frame and what they share, when `parts` (in any
/// order) are exactly one datagram: the same key, no gap, no overlap, one last piece.
fn join<K: PartialEq + Copy>(mut parts: Vec<Part<K>>) -> Option<(Vec<u8>, Vec<u8>, K)> {
    parts.sort_by_key(|p| p.0);
    let first = parts.first()?;
    if parts.iter().any(|p| p.2 != first.2) || parts.iter().filter(|p| !p.1).count() != 1 {
        return None;
    }
    let mut data = Vec::new();
    for p in &parts {
        if p.0 != data.len() {
            return None;
        }
        data.extend_from_slice(&p.3);
    }
    if parts.last()?.1 {
        return None;
    }
    Some((data, parts[0].4.clone(), parts[0].2))
}

/// Recomputes the TCP or UDP checksum of the frame's L4 header (after a test edited it).
pub fn refill_l4_checksum(frame: &mut [u8]) {
    let Some(b) = frame.get_mut(ETH_LEN..) else {
        return;
    };
    let Ok(mut ip) = Ipv4Packet::new_checked(b) else {
        return;
    };
    let (s, d) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    match ip.next_header() {
        IpProtocol::Tcp => {
            if let Ok(mut t) = TcpPacket::new_checked(ip.payload_mut()) {
                t.fill_checksum(&s, &d);
            }
        }
        IpProtocol::Udp => {
            if let Ok(mut u) = UdpPacket::new_checked(ip.payload_mut()) {
                u.fill_checksum(&s, &d);
            }
        }
        _ => {}
    }
}

/// The Ethernet addresses and type of a frame: (destination, source, ethertype).
pub fn eth(frame: &[u8]) -> Option<(Mac, Mac, u16)> {
    let e = EthernetFrame::new_checked(frame).ok()?;
    Some((e.dst_addr().0, e.src_addr().0, u16::from(e.ethertype())))
}

/// A checked IPv4 header of an Ethernet frame and its payload (the L4 part).
struct Ip<'a> {
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    ttl: u8,
    payload: &'a [u8],
}

fn parse_ipv4(frame: &[u8]) -> Option<Ip<'_>> {
    let e = EthernetFrame::new_checked(frame).ok()?;
    if e.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let bytes = frame.get(ETH_LEN..)?;
    let p = Ipv4Packet::new_checked(bytes).ok()?;
    let r = Ipv4Repr::parse(&p, &ChecksumCapabilities::default()).ok()?;
    if p.more_frags() || p.frag_offset() != 0 {
        return None;
    }
    let hl = usize::from(p.header_len());
    let total = usize::from(p.total_len());
    Some(Ip {
        src_mac: e.src_addr().0,
        dst_mac: e.dst_addr().0,
        src: r.src_addr,
        dst: r.dst_addr,
        proto: r.next_header,
        ttl: r.hop_limit,
        payload: bytes.get(hl..total)?,
    })
}

/// A TCP segment as a receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSeen {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// The flags byte (see [`tcp_flags`]).
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

impl TcpSeen {
    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }
}

/// What an Ethernet/IPv6/TCP frame carries (see [`parse_ipv6_tcp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcp6Seen {
    pub dst_mac: Mac,
    pub src: Ipv6Addr,
    pub sport: u16,
    pub dst: Ipv6Addr,
    pub dport: u16,
    /// The flags byte (see [`tcp_flags`]).
    pub flags: u8,
    pub hop_limit: u8,
}

/// Parses an Ethernet/IPv6/TCP frame with no extension headers, verifying its length and the
/// TCP checksum.
pub fn parse_ipv6_tcp(frame: &[u8]) -> Option<Tcp6Seen> {
    let (dst_mac, _, ethertype) = eth(frame)?;
    if ethertype != 0x86dd {
        return None;
    }
    let ip = Ipv6Packet::new_checked(frame.get(ETH_LEN..)?).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let l4 = ETH_LEN + 40;
    let body = frame.get(l4..l4 + usize::from(ip.payload_len()))?;
    let tcp = TcpPacket::new_checked(body).ok()?;
    let (s, d) = (
        IpAddress::Ipv6(ip.src_addr()),
        IpAddress::Ipv6(ip.dst_addr()),
    );
    if !tcp.verify_checksum(&s, &d) {
        return None;
    }
    Some(Tcp6Seen {
        dst_mac,
        src: ip.src_addr(),
        sport: tcp.src_port(),
        dst: ip.dst_addr(),
        dport: tcp.dst_port(),
        flags: body[13],
        hop_limit: ip.hop_limit(),
    })
}

/// Parses an Ethernet/IPv4/TCP frame, verifying the IPv4 and TCP checksums and lengths.
pub fn parse_ipv4_tcp(frame: &[u8]) -> Option<TcpSeen> {
    let ip = parse_ipv4(frame)?;
    if ip.proto != IpProtocol::Tcp {
        return None;
    }
    let t = TcpPacket::new_checked(ip.payload).ok()?;
    if !t.verify_checksum(&IpAddress::Ipv4(ip.src), &IpAddress::Ipv4(ip.dst)) {
        return None;
    }
    Some(TcpSeen {
        src_mac: ip.src_mac,
        dst_mac: ip.dst_mac,
        src: ip.src,
        sport: t.src_port(),
        dst: ip.dst,
        dport: t.dst_port(),
        flags: *ip.payload.get(13)?,
        seq: t.seq_number().0 as u32,
        ack: t.ack_number().0 as u32,
        ttl: ip.ttl,
        payload: t.payload().to_vec(),
    })
}

/// A UDP datagram as a receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpSeen {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

/// Parses an Ethernet/IPv4/UDP frame, verifying the IPv4 checksum, the UDP length and the UDP
/// checksum (when not zero).
pub fn parse_ipv4_udp(frame: &[u8]) -> Option<UdpSeen> {
    let ip = parse_ipv4(frame)?;
    if ip.proto != IpProtocol::Udp {
        return None;
    }
    let u = UdpPacket::new_checked(ip.payload).ok()?;
    if usize::from(u.len()) != ip.payload.len() {
        return None;
    }
    if u.checksum() != 0 && !u.verify_checksum(&IpAddress::Ipv4(ip.src), &IpAddress::Ipv4(ip.dst)) {
        return None;
    }
    Some(UdpSeen {
        src_mac: ip.src_mac,
        dst_mac: ip.dst_mac,
        src: ip.src,
        sport: u.src_port(),
        dst: ip.dst,
        dport: u.dst_port(),
        ttl: ip.ttl,
        payload: u.payload().to_vec(),
    })
}

/// An ICMP echo request or reply as a receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpEchoSeen {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub reply: bool,
    pub ident: u16,
    pub seq: u16,
    pub data: Vec<u8>,
}

/// Parses an ICMP echo request or reply, verifying the IPv4 and ICMP checksums.
pub fn parse_icmp_echo(frame: &[u8]) -> Option<IcmpEchoSeen> {
    let ip = parse_ipv4(frame)?;
    if ip.proto != IpProtocol::Icmp {
        return None;
    }
    let p = Icmpv4Packet::new_checked(ip.payload).ok()?;
    let (reply, ident, seq, data) =
        match Icmpv4Repr::parse(&p, &ChecksumCapabilities::default()).ok()? {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => (false, ident, seq_no, data),
            Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => (true, ident, seq_no, data),
            _ => return None,
        };
    Some(IcmpEchoSeen {
        src_mac: ip.src_mac,
        dst_mac: ip.dst_mac,
        src: ip.src,
        dst: ip.dst,
        reply,
        ident,
        seq,
        data: data.to_vec(),
    })
}

/// An ARP packet as a receiver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpSeen {
    /// The Ethernet destination of the frame.
    pub dst_mac: Mac,
    pub request: bool,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

/// Parses an Ethernet/ARP (IPv4 over Ethernet) frame.
pub fn parse_arp(frame: &[u8]) -> Option<ArpSeen> {
    let e = EthernetFrame::new_checked(frame).ok()?;
    if e.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let p = ArpPacket::new_checked(frame.get(ETH_LEN..)?).ok()?;
    match ArpRepr::parse(&p).ok()? {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            target_protocol_addr,
        } => Some(ArpSeen {
            dst_mac: e.dst_addr().0,
            request: operation == ArpOperation::Request,
            sender_mac: source_hardware_addr.0,
            sender_ip: source_protocol_addr,
            target_mac: target_hardware_addr.0,
            target_ip: target_protocol_addr,
        }),
        _ => None,
    }
}

/// The VNI and inner frame of a VXLAN frame (outer Ethernet/IPv4/UDP to the VXLAN port, the I
/// flag set; reserved bits ignored as RFC 7348 §5 says).
pub fn decap(frame: &[u8]) -> Option<(u32, &[u8])> {
    let ip = parse_ipv4(frame)?;
    if ip.proto != IpProtocol::Udp {
        return None;
    }
    let u = UdpPacket::new_checked(ip.payload).ok()?;
    if u.dst_port() != vxlan::UDP_PORT || usize::from(u.len()) != ip.payload.len() {
        return None;
    }
    // The payload borrows from `frame` through `ip.payload`; index there to keep that lifetime.
    let v = vxlan::Packet::new_checked(ip.payload.get(8..)?).ok()?;
    let r = vxlan::Repr::parse(&v).ok()?;
    Some((r.vni, ip.payload.get(8 + vxlan::HEADER_LEN..)?))
}

// ---- IPv6 ----------------------------------------------------------------------------------

/// An IPv6 packet of `next` with hop limit `hop`, its payload written by `fill` (given the
/// payload's bytes).
#[allow(clippy::too_many_arguments)]
pub fn ipv6_with(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    next: IpProtocol,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut f = vec![0u8; ETH_LEN + 40 + len];
    reply::ipv6_frame(&mut f, (src_mac, dst_mac), src, dst, hop, next, len, fill);
    f
}

/// Splits an Ethernet/IPv6 frame with no extension headers into the fragments a link of
/// `mtu` gives it (RFC 8200 §4.5): each the IPv6 header, a Fragment header with identification
/// `id`, and at most `mtu - 48` bytes (a multiple of 8 but the last) of what followed the
/// header.
// Casts: test frames are under 64 KiB.
#[allow(clippy::cast_possible_truncation)]
pub fn fragment6(frame: &[u8], mtu: usize, id: u32) -> Vec<Vec<u8>> {
    let next = frame[ETH_LEN + 6];
    let payload = &frame[ETH_LEN + 40..];
    let chunk = (mtu - 48) & !7;
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(k, c)| {
            let mut f = frame[..ETH_LEN + 40].to_vec();
            f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&((8 + c.len()) as u16).to_be_bytes());
            f[ETH_LEN + 6] = 44;
            let more = u16::from((k + 1) * chunk < payload.len());
            let word = ((k * chunk) as u16) | more;
            f.extend_from_slice(&[next, 0]);
            f.extend_from_slice(&word.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(c);
            f
        })
        .collect()
}

/// An ICMP error over IPv4 as a client would read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmp4Error {
    pub dst_mac: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub kind: u8,
    pub code: u8,
    /// The message's second word (the next hop's MTU of a "fragmentation needed").
    pub rest: u32,
    /// The quoted packet's addresses and ports: (source, port), (destination, port).
    pub quoted: ((Ipv4Addr, u16), (Ipv4Addr, u16)),
    /// The quoted UDP checksum (0 when not quoted or none).
    pub quoted_udp_checksum: u16,
}

/// Parses an Ethernet/IPv4/ICMP error quoting a TCP or UDP packet, verifying the IPv4 checksum,
/// the ICMP checksum and the quoted IPv4 header's checksum.
pub fn parse_icmp4_error(frame: &[u8]) -> Option<Icmp4Error> {
    let (dst_mac, _, ethertype) = eth(frame)?;
    if ethertype != 0x0800 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(frame.get(ETH_LEN..)?).ok()?;
    if !ip.verify_checksum() || ip.next_header() != IpProtocol::Icmp {
        return None;
    }
    let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
    if !icmp.verify_checksum() {
        return None;
    }
    let body = ip.payload();
    let q = Ipv4Packet::new_unchecked(body.get(8..)?);
    let qh = body.get(8..8 + usize::from(q.header_len()))?;
    if !Ipv4Packet::new_unchecked(qh).verify_checksum() {
        return None;
    }
    let l4 = body.get(8 + qh.len()..)?;
    let port = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    let udp_sum = if q.next_header() == IpProtocol::Udp {
        port(6).unwrap_or(0)
    } else {
        0
    };
    Some(Icmp4Error {
        dst_mac,
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        kind: body[0],
        code: body[1],
        rest: u32::from_be_bytes(body.get(4..8)?.try_into().ok()?),
        quoted: ((q.src_addr(), port(0)?), (q.dst_addr(), port(2)?)),
        quoted_udp_checksum: udp_sum,
    })
}

/// Joins Ethernet/IPv6 pieces (each the IPv6 header, then a Fragment header, then its data),
/// in any order, into the datagram's frame (the first piece's Ethernet and IPv6 headers, its
/// next header the Fragment header's, its payload length set). With the datagram, the
/// identification they shared. `None` unless they are exactly one datagram: the same
/// addresses, next header and identification, no gap, no overlap, one last piece.
// Casts: test frames are under 64 KiB.
#[allow(clippy::cast_possible_truncation)]
pub fn reassemble6(pieces: &[Vec<u8>]) -> Option<(Vec<u8>, u32)> {
    let mut parts = Vec::new();
    for f in pieces {
        let ip = Ipv6Packet::new_checked(f.get(ETH_LEN..)?).ok()?;
        if ip.next_header() != IpProtocol::Ipv6Frag {
            return None;
        }
        let p = ip.payload();
        let h = p.get(..8)?;
        let word = u16::from_be_bytes([h[2], h[3]]);
        let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let same = (ip.src_addr(), ip.dst_addr(), h[0], id);
        let off = usize::from(word >> 3) * 8;
        parts.push((off, word & 1 == 1, same, p[8..].to_vec(), f.clone()));
    }
    let (data, first, (_, _, next, id)) = join(parts)?;
    let mut f = first[..ETH_LEN + 40].to_vec();
    f.extend_from_slice(&data);
    f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(data.len() as u16).to_be_bytes());
    f[ETH_LEN + 6] = next;
    Some((f, id))
}

/// A VXLAN frame over IPv6: outer Ethernet/IPv6/UDP to port 4789, its UDP checksum computed
/// (as a Linux VTEP sends it by default) or zero (`checksum` false, RFC 6935), then the VXLAN
/// header with `vni` and `inner`.
#[allow(clippy::too_many_arguments)]
pub fn vxlan6_frame(
    outer_src_mac: Mac,
    outer_dst_mac: Mac,
    outer_src: Ipv6Addr,
    outer_dst: Ipv6Addr,
    outer_sport: u16,
    vni: u32,
    inner: &[u8],
    checksum: bool,
) -> Vec<u8> {
    let (s, d) = (IpAddress::Ipv6(outer_src), IpAddress::Ipv6(outer_dst));
    ipv6_with(
        outer_src_mac,
        outer_dst_mac,
        outer_src,
        outer_dst,
        64,
        IpProtocol::Udp,
        VXLAN_UDP_LEN + inner.len(),
        |b| vxlan_udp(b, (s, d), outer_sport, vni, inner, checksum),
    )
}

/// What a VXLAN-over-IPv6 frame says ([`decap6`]).
#[derive(Debug)]
pub struct Vxlan6Seen<'a> {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub sport: u16,
    pub checksum: u16,
    pub vni: u32,
    pub inner: &'a [u8],
}

/// Reads a VXLAN-over-IPv6 frame: outer source and destination, hop limit, UDP source port and
/// checksum, VNI, and the inner frame. `None` unless it is IPv6 (no extension headers) and UDP
/// to port 4789 with a length that fits.
pub fn decap6(frame: &[u8]) -> Option<Vxlan6Seen<'_>> {
    if eth(frame)?.2 != 0x86dd {
        return None;
    }
    let ip = smoltcp::wire::Ipv6Packet::new_checked(frame.get(ETH_LEN..)?).ok()?;
    if ip.next_header() != IpProtocol::Udp {
        return None;
    }
    let payload = frame.get(ETH_LEN + 40..ETH_LEN + 40 + usize::from(ip.payload_len()))?;
    let u = UdpPacket::new_checked(payload).ok()?;
    if u.dst_port() != vxlan::UDP_PORT || usize::from(u.len()) != payload.len() {
        return None;
    }
    let v = vxlan::Packet::new_checked(payload.get(8..)?).ok()?;
    let r = vxlan::Repr::parse(&v).ok()?;
    Some(Vxlan6Seen {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        hop_limit: ip.hop_limit(),
        sport: u.src_port(),
        checksum: u.checksum(),
        vni: r.vni,
        inner: payload.get(8 + vxlan::HEADER_LEN..)?,
    })
}

/// An ICMPv6 message (`repr`) in a frame, its checksum filled in.
pub fn icmpv6_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    repr: &Icmpv6Repr,
) -> Vec<u8> {
    let mut f = vec![0u8; ETH_LEN + 40 + repr.buffer_len()];
    reply::icmpv6_frame(&mut f, (src_mac, dst_mac), src, dst, hop, repr);
    f
}

/// A Neighbor Solicitation for `target` from `src` (with its link-layer address option unless
/// `src` is the unspecified address), to `target`'s solicited-node group, hop limit 255.
pub fn neighbor_solicit(src_mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let group = crate::pipeline::solicited_node(target);
    let g = group.octets();
    let dst_mac = [0x33, 0x33, g[12], g[13], g[14], g[15]];
    let lladdr = (!src.is_unspecified()).then(|| EthernetAddress(src_mac).into());
    icmpv6_frame(
        src_mac,
        dst_mac,
        src,
        group,
        255,
        &Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr,
        }),
    )
}

/// A TCP segment over IPv6 with exactly the flag bits `flags`, checksum filled in.
#[allow(clippy::too_many_arguments)]
pub fn tcp6_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    flags: u8,
    seq: u32,
) -> Vec<u8> {
    let mut f = vec![0u8; 20];
    f[0..2].copy_from_slice(&sport.to_be_bytes());
    f[2..4].copy_from_slice(&dport.to_be_bytes());
    f[4..8].copy_from_slice(&seq.to_be_bytes());
    f[12] = 5 << 4;
    f[13] = flags;
    f[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let (s, d) = (IpAddress::Ipv6(src), IpAddress::Ipv6(dst));
    ipv6_with(src_mac, dst_mac, src, dst, 64, IpProtocol::Tcp, 20, |b| {
        b.copy_from_slice(&f);
        TcpPacket::new_unchecked(b).fill_checksum(&s, &d);
    })
}

// ---- example states ------------------------------------------------------------------------

/// A node of an example state: `192.168.1.<last>`, VTEP on the same address.
pub fn node(name: &str, last: u8) -> model::Node {
    model::Node {
        name: name.to_string(),
        addr: Ipv4Addr::new(192, 168, 1, last),
        vtep: None,
        addr6: None,
        vtep_port: model::VXLAN_PORT,
        availability: model::Availability::Active,
    }
}

/// A running task with weight 1 and the given `(network, address)` pairs.
pub fn task(name: &str, node: &str, addrs: &[(&str, Ipv4Addr)]) -> model::Task {
    model::Task {
        name: name.to_string(),
        node: node.to_string(),
        addresses: addrs
            .iter()
            .map(|(n, a)| model::TaskAddress {
                network: (*n).to_string(),
                addr: *a,
            })
            .collect(),
        state: model::TaskState::Running,
        weight: 1,
        vlan: None,
    }
}

/// Swarm's layout in seeds 000 and 003: nodes n1, n2, n3 (192.168.1.11-13); the ingress
/// network (VNI 4096, 10.0.0.0/24, endpoints 10.0.0.2-4) and `appnet` (VNI 4097,
/// 10.0.1.0/24); service `web` publishing 8080→80 with VIP 10.0.1.2 and tasks web.1 on n2
/// (10.0.0.11, 10.0.1.11) and web.2 on n3 (10.0.0.12, 10.0.1.12). n1 runs no task.
pub fn three_nodes() -> State {
    let mut endpoints = std::collections::BTreeMap::new();
    endpoints.insert("n1".to_string(), Ipv4Addr::new(10, 0, 0, 2));
    endpoints.insert("n2".to_string(), Ipv4Addr::new(10, 0, 0, 3));
    endpoints.insert("n3".to_string(), Ipv4Addr::new(10, 0, 0, 4));
    let ingress = model::Network {
        subnet6: None,
        name: "ingress".into(),
        vni: model::INGRESS_VNI,
        subnet: Ipv4Net {
            addr: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 24,
        },
        gateway: Ipv4Addr::new(10, 0, 0, 1),
        ingress: true,
        endpoints,
        mtu: None,
        encryption: None,
    };
    let app = model::Network {
        subnet6: None,
        name: "appnet".into(),
        vni: 4097,
        subnet: Ipv4Net {
            addr: Ipv4Addr::new(10, 0, 1, 0),
            prefix: 24,
        },
        gateway: Ipv4Addr::new(10, 0, 1, 1),
        ingress: false,
        endpoints: Default::default(),
        mtu: None,
        encryption: None,
    };
    let mut web = model::Service::new("web");
    web.networks.push(model::ServiceNetwork {
        network: "appnet".into(),
        vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
    });
    web.ports.push(model::PublishedPort {
        protocol: Protocol::Tcp,
        published: 8080,
        target: 80,
        mode: model::PublishMode::Ingress,
    });
    for (i, n) in [(1u8, "n2"), (2, "n3")] {
        web.tasks.push(task(
            &format!("web.{i}"),
            n,
            &[
                ("ingress", Ipv4Addr::new(10, 0, 0, 10 + i)),
                ("appnet", Ipv4Addr::new(10, 0, 1, 10 + i)),
            ],
        ));
    }
    State {
        nodes: vec![node("n1", 11), node("n2", 12), node("n3", 13)],
        networks: vec![ingress, app],
        services: vec![web],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 1];
    const B: Mac = [2, 0, 0, 0, 0, 2];
    const IA: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IB: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn tcp_round_trips_with_every_flag_combination() {
        for flags in [
            tcp_flags::SYN,
            tcp_flags::SYN | tcp_flags::ACK,
            tcp_flags::FIN | tcp_flags::ACK,
            tcp_flags::RST,
        ] {
            let f = tcp_frame(A, B, IA, 1234, IB, 80, flags, 7, 9, b"hi");
            let s = parse_ipv4_tcp(&f).unwrap();
            assert_eq!(
                (s.src, s.sport, s.dst, s.dport, s.flags, s.seq, s.ack),
                (IA, 1234, IB, 80, flags, 7, 9)
            );
            assert_eq!(s.payload, b"hi");
            assert_eq!((s.src_mac, s.dst_mac, s.ttl), (A, B, TTL));
        }
    }

    #[test]
    fn checkers_refuse_bad_checksums() {
        let mut f = tcp_frame(A, B, IA, 1, IB, 2, tcp_flags::SYN, 0, 0, b"");
        f[ETH_LEN + IPV4_LEN + 4] ^= 1;
        assert!(parse_ipv4_tcp(&f).is_none());
        refill_l4_checksum(&mut f);
        assert!(parse_ipv4_tcp(&f).is_some());
        f[ETH_LEN + 8] = 3;
        assert!(parse_ipv4_tcp(&f).is_none());
        refill_ipv4_checksum(&mut f);
        assert_eq!(parse_ipv4_tcp(&f).unwrap().ttl, 3);
        let mut u = udp_frame(A, B, IA, 5, IB, 6, b"x");
        assert_eq!(parse_ipv4_udp(&u).unwrap().payload, b"x");
        let n = u.len() - 1;
        u[n] ^= 0xff;
        assert!(parse_ipv4_udp(&u).is_none());
    }

    #[test]
    fn arp_icmp_and_vxlan_round_trip() {
        let r = parse_arp(&arp_request(A, IA, IB)).unwrap();
        assert!(r.request && r.dst_mac == BROADCAST && r.sender_ip == IA && r.target_ip == IB);
        let r = parse_arp(&arp_reply(B, IB, A, IA)).unwrap();
        assert!(!r.request && r.dst_mac == A && r.sender_mac == B);
        let e = parse_icmp_echo(&icmp_echo(A, B, IA, IB, 3, 4, b"ping")).unwrap();
        assert!(!e.reply && e.ident == 3 && e.seq == 4 && e.data == b"ping");
        assert!(
            parse_icmp_echo(&icmp_echo_reply(B, A, IB, IA, 3, 4, b"ping"))
                .unwrap()
                .reply
        );
        let inner = udp_frame(A, B, IA, 5, IB, 6, b"inner");
        let outer = vxlan_frame(A, B, IA, IB, 50000, 4096, &inner);
        assert_eq!(outer[VXLAN_FLAGS_AT], vxlan::FLAG_I);
        let (vni, got) = decap(&outer).unwrap();
        assert_eq!(vni, 4096);
        assert_eq!(got, &inner[..]);
        assert_eq!(parse_ipv4_udp(&outer).unwrap().dport, vxlan::UDP_PORT);
    }
}
