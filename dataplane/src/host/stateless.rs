//! The stateless part of the host side: answers as a host with no listening sockets would
//! (RFC 1122), in place: a TCP segment gets a RST, a UDP datagram an ICMP port unreachable, an
//! ICMP echo request its reply. For the node's address, every VIP, the endpoints and the
//! gateways (ICMP), so a port meshd does not publish is refused at once, never silently
//! dropped, and `ping VIP` is answered.
//!
//! Why not smoltcp here: an `Interface` holds a handful of addresses (`IFACE_MAX_ADDR_COUNT`),
//! not one per VIP, and answering an outside client on the uplink would need its route and ARP
//! (the client may sit behind a router). Answering in place, from the frame's own MACs and
//! addresses, needs neither and works for any number of addresses.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Packet,
    Icmpv6Repr, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber, IPV6_HEADER_LEN, IPV6_MIN_MTU,
};

use crate::buf::PacketBuf;
use crate::wire::reply;

const ETH: usize = 14;

/// What the host side did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    /// The frame was turned into its answer, to be sent back out of the port it came in on.
    Reply,
    /// Nothing to answer (a RST, an ICMP error, a frame from inside a tunnel, ...).
    Ignore,
}

/// Answers `buf` in place when a host would.
pub fn answer(buf: &mut PacketBuf) -> HostAction {
    let Some(out) = answer_frame(buf.data()) else {
        return HostAction::Ignore;
    };
    buf.fill(&out);
    HostAction::Reply
}

/// The answer a host would give to `frame`, if any, whatever its length (an echo reply is as
/// long as its request, which may be a reassembled datagram).
pub fn answer_frame(frame: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![
        0u8;
        frame
            .len()
            .max(ETH + reply::FRAG_NEEDED_LEN)
            .max(reply::RST_LEN)
            // An ICMPv6 error quotes its packet up to the minimum MTU (RFC 4443 §2.4).
            .max(ETH + IPV6_MIN_MTU)
    ];
    let n = build_answer(frame, &mut out)?;
    out.truncate(n);
    Some(out)
}

fn build_answer(frame: &[u8], out: &mut [u8]) -> Option<usize> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.dst_addr().0 == [0; 6] || !eth.dst_addr().is_unicast() {
        return None;
    }
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {}
        EthernetProtocol::Ipv6 => return build_answer6(frame, out),
        _ => return None,
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let caps = ChecksumCapabilities::default();
    let ip_repr = Ipv4Repr::parse(&ip, &caps).ok()?;
    let (src, dst) = (ip_repr.src_addr, ip_repr.dst_addr);
    let reply_ip = |proto: IpProtocol, len: usize| Ipv4Repr {
        src_addr: dst,
        dst_addr: src,
        next_header: proto,
        payload_len: len,
        hop_limit: 64,
    };
    out[0..6].copy_from_slice(&eth.src_addr().0);
    out[6..12].copy_from_slice(&eth.dst_addr().0);
    out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    match ip_repr.next_header {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            let seg = TcpRepr::parse(&tcp, &src.into(), &dst.into(), &caps).ok()?;
            let (seq, ack) = rst_numbers(&seg)?;
            let as_u32 = |n: TcpSeqNumber| u32::from_ne_bytes(n.0.to_ne_bytes());
            let mut rst = [0u8; reply::RST_LEN];
            let n = reply::tcp_rst(
                &mut rst,
                (eth.dst_addr().0, eth.src_addr().0),
                dst,
                seg.dst_port,
                src,
                seg.src_port,
                as_u32(seq),
                ack.map(as_u32),
            );
            out.get_mut(..n)?.copy_from_slice(&rst[..n]);
            Some(n)
        }
        IpProtocol::Udp => {
            // ICMP port unreachable quoting the header and the first 8 bytes (RFC 792).
            let mut icmp = [0u8; reply::FRAG_NEEDED_LEN];
            let n = reply::dst_unreachable(
                &mut icmp,
                (eth.dst_addr().0, eth.src_addr().0),
                u32::from_be_bytes(dst.octets()),
                u32::from_be_bytes(src.octets()),
                reply::PORT_UNREACHABLE,
                0,
                eth.payload(),
            );
            out.get_mut(..n)?.copy_from_slice(&icmp[..n]);
            Some(n)
        }
        IpProtocol::Icmp => {
            let p = Icmpv4Packet::new_checked(ip.payload()).ok()?;
            let Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } = Icmpv4Repr::parse(&p, &caps).ok()?
            else {
                return None;
            };
            let icmp = Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            let ipr = reply_ip(IpProtocol::Icmp, icmp.buffer_len());
            let total = ETH + ipr.buffer_len() + icmp.buffer_len();
            if total > out.len() {
                return None;
            }
            let (iph, rest) = out[ETH..total].split_at_mut(ipr.buffer_len());
            ipr.emit(&mut Ipv4Packet::new_unchecked(iph), &caps);
            icmp.emit(&mut Icmpv4Packet::new_unchecked(rest), &caps);
            Some(total)
        }
        _ => None,
    }
}

/// The sequence and acknowledgement numbers of the RST that answers `seg`; `None` when `seg`
/// is a RST itself (never answered).
//= https://www.rfc-editor.org/rfc/rfc9293#section-3.10.7.1
//# If the incoming segment has the ACK bit set, the reset takes its sequence number
//# from the ACK field of the segment; otherwise, the reset has sequence number zero
//# and the ACK field is set to the sum of the sequence number and segment length of
//# the incoming segment.
fn rst_numbers(seg: &TcpRepr) -> Option<(TcpSeqNumber, Option<TcpSeqNumber>)> {
    if seg.control == TcpControl::Rst {
        return None;
    }
    Some(match seg.ack_number {
        Some(a) => (a, None),
        None => (TcpSeqNumber(0), Some(seg.seq_number + seg.segment_len())),
    })
}

/// [`build_answer`] for IPv6, to a unicast destination from a unicast source.
//= https://www.rfc-editor.org/rfc/rfc4443#section-2.4
//# An ICMPv6 error message MUST NOT be originated as a result of receiving [...] a packet
//# destined to an IPv6 multicast address [...] a packet whose source address does not uniquely
//# identify a single node
fn build_answer6(frame: &[u8], out: &mut [u8]) -> Option<usize> {
    let h = crate::pipeline::parse_ipv6(frame, ETH).ok()?;
    let (src, dst) = (h.src, h.dst);
    if dst.is_multicast() || src.is_multicast() || src.is_unspecified() {
        return None;
    }
    // Only a datagram's first piece holds its transport header to answer.
    if h.frag.is_some_and(|p| p.ff & 0x1fff != 0) {
        return None;
    }
    let l4 = frame.get(h.l4..h.end)?;
    let caps = ChecksumCapabilities::default();
    // Back the way it came: from the frame's destination MAC and address to its source.
    let macs = (
        frame.get(0..6)?.try_into().ok()?,
        frame.get(6..12)?.try_into().ok()?,
    );
    let icmp =
        |repr: Icmpv6Repr, out: &mut [u8]| reply::icmpv6_frame(out, macs, dst, src, 64, &repr);
    match h.proto {
        6 => {
            let tcp = TcpPacket::new_checked(l4).ok()?;
            let seg = TcpRepr::parse(&tcp, &src.into(), &dst.into(), &caps).ok()?;
            let (seq, ack) = rst_numbers(&seg)?;
            let rst = reply::rst_repr(seg.dst_port, seg.src_port, seq, ack);
            let len = rst.buffer_len();
            reply::ipv6_frame(out, macs, dst, src, 64, IpProtocol::Tcp, len, |b| {
                rst.emit(
                    &mut TcpPacket::new_unchecked(b),
                    &dst.into(),
                    &src.into(),
                    &caps,
                );
            })
        }
        17 => {
            // The packet in error, its own header and as much after it as fits.
            let whole = frame.get(ETH..h.end)?;
            let header = Ipv6Repr::parse(&Ipv6Packet::new_checked(whole).ok()?).ok()?;
            let repr = Icmpv6Repr::DstUnreachable {
                reason: Icmpv6DstUnreachable::PortUnreachable,
                header,
                data: &whole[IPV6_HEADER_LEN..],
            };
            icmp(repr, out)
        }
        58 => {
            let p = Icmpv6Packet::new_checked(l4).ok()?;
            let Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } = Icmpv6Repr::parse(&src, &dst, &p, &caps).ok()?
            else {
                return None;
            };
            icmp(
                Icmpv6Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                },
                out,
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::PortId;

    fn syn() -> Vec<u8> {
        // Ethernet + IPv4 + TCP SYN 10.0.0.9:40000 -> 192.168.1.11:9999, built with smoltcp.
        let caps = ChecksumCapabilities::default();
        let src = smoltcp::wire::Ipv4Address::new(10, 0, 0, 9);
        let dst = smoltcp::wire::Ipv4Address::new(192, 168, 1, 11);
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 9999,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ipr = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut f = vec![0u8; ETH + 20 + tcp.buffer_len()];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f[12..14].copy_from_slice(&[8, 0]);
        ipr.emit(&mut Ipv4Packet::new_unchecked(&mut f[ETH..ETH + 20]), &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut f[ETH + 20..]),
            &src.into(),
            &dst.into(),
            &caps,
        );
        f
    }

    #[test]
    fn a_syn_to_a_closed_port_gets_a_reset() {
        let mut b = PacketBuf::from_frame(PortId::Uplink, &syn());
        assert_eq!(answer(&mut b), HostAction::Reply);
        let f = b.data();
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 9]);
        let ip = Ipv4Packet::new_checked(&f[ETH..]).unwrap();
        assert!(ip.verify_checksum());
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.rst() && t.ack());
        assert_eq!(t.ack_number(), TcpSeqNumber(1001));
        assert_eq!(t.dst_port(), 40000);
        // A reset is never answered.
        let mut again = b.clone();
        assert_eq!(answer(&mut again), HostAction::Ignore);
    }

    fn v6(a: &str) -> smoltcp::wire::Ipv6Address {
        a.parse().unwrap()
    }

    const CLIENT: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
    const NODE: [u8; 6] = [2, 0, 0, 0, 0, 0x11];

    /// The IPv6 answer to `frame`, checked: MACs and addresses swapped, its ICMPv6 or TCP
    /// checksum right. The upper layer's bytes.
    fn answer6(frame: &[u8]) -> (IpProtocol, Vec<u8>) {
        let out = answer_frame(frame).expect("an answer");
        assert_eq!((&out[0..6], &out[6..12]), (&CLIENT[..], &NODE[..]));
        let ip = Ipv6Packet::new_checked(&out[ETH..]).unwrap();
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (v6("fd00::11"), v6("fd00::c"))
        );
        let (s, d) = (ip.src_addr().into(), ip.dst_addr().into());
        match ip.next_header() {
            IpProtocol::Tcp => assert!(TcpPacket::new_checked(ip.payload())
                .unwrap()
                .verify_checksum(&s, &d)),
            _ => assert!(Icmpv6Packet::new_checked(ip.payload())
                .unwrap()
                .verify_checksum(&ip.src_addr(), &ip.dst_addr())),
        }
        (ip.next_header(), ip.payload().to_vec())
    }

    #[test]
    fn ipv6_gets_a_hosts_answers() {
        // Echo: the same identifier, sequence and data back.
        let ping = crate::testkit::icmpv6_frame(
            CLIENT,
            NODE,
            v6("fd00::c"),
            v6("fd00::11"),
            64,
            &Icmpv6Repr::EchoRequest {
                ident: 9,
                seq_no: 3,
                data: &[7; 1000],
            },
        );
        let (proto, l4) = answer6(&ping);
        assert_eq!(proto, IpProtocol::Icmpv6);
        let p = Icmpv6Packet::new_checked(&l4[..]).unwrap();
        assert_eq!(
            (p.msg_type(), p.echo_ident(), p.echo_seq_no()),
            (smoltcp::wire::Icmpv6Message::EchoReply, 9, 3)
        );
        assert_eq!(p.payload(), &[7; 1000][..]);
        // A SYN: a RST acknowledging it.
        let segment = |flags| {
            crate::testkit::tcp6_frame(
                CLIENT,
                NODE,
                v6("fd00::c"),
                40000,
                v6("fd00::11"),
                8080,
                flags,
                1000,
            )
        };
        let syn = segment(0x02);
        let (proto, l4) = answer6(&syn);
        assert_eq!(proto, IpProtocol::Tcp);
        let t = TcpPacket::new_checked(&l4[..]).unwrap();
        assert!(t.rst() && t.ack());
        assert_eq!(
            (t.src_port(), t.dst_port(), t.ack_number()),
            (8080, 40000, TcpSeqNumber(1001))
        );
        // UDP: port unreachable quoting the datagram.
        let datagram = |len: u16| {
            crate::testkit::ipv6_with(
                CLIENT,
                NODE,
                v6("fd00::c"),
                v6("fd00::11"),
                64,
                IpProtocol::Udp,
                usize::from(len),
                |b| {
                    b[0..4].copy_from_slice(&[0x9c, 0x40, 0, 53]);
                    b[4..6].copy_from_slice(&len.to_be_bytes());
                },
            )
        };
        let udp = datagram(8);
        let (proto, l4) = answer6(&udp);
        assert_eq!(proto, IpProtocol::Icmpv6);
        assert_eq!(
            (l4[0], l4[1]),
            (1, 4),
            "destination unreachable, port unreachable"
        );
        assert_eq!(&l4[8..], &udp[ETH..], "the packet in error, whole");
        // A datagram in pieces: the first, which holds the ports, is answered; a later piece,
        // only data, is not.
        let pieces = crate::testkit::fragment6(&datagram(3000), 1500, 5);
        let (proto, l4) = answer6(&pieces[0]);
        assert_eq!((proto, l4[0], l4[1]), (IpProtocol::Icmpv6, 1, 4));
        assert!(answer_frame(&pieces[1]).is_none());
        // Never to a multicast or an unspecified source, never to a RST.
        let from_group = crate::testkit::icmpv6_frame(
            CLIENT,
            NODE,
            v6("ff02::1"),
            v6("fd00::11"),
            64,
            &Icmpv6Repr::EchoRequest {
                ident: 9,
                seq_no: 3,
                data: &[7; 10],
            },
        );
        assert_eq!(answer_frame(&from_group), None);
        let rst = segment(0x04);
        assert_eq!(answer_frame(&rst), None);
    }

    #[test]
    fn garbage_is_ignored() {
        for n in 0..80 {
            let mut b = PacketBuf::from_frame(PortId::Uplink, &vec![0x45; n]);
            assert_eq!(answer(&mut b), HostAction::Ignore);
        }
    }
}
