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
    EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
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
    ];
    let n = build_answer(frame, &mut out)?;
    out.truncate(n);
    Some(out)
}

fn build_answer(frame: &[u8], out: &mut [u8]) -> Option<usize> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4
        || eth.dst_addr().0 == [0; 6]
        || !eth.dst_addr().is_unicast()
    {
        return None;
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
            if seg.control == TcpControl::Rst {
                return None;
            }
            //= https://www.rfc-editor.org/rfc/rfc9293#section-3.10.7.1
            //# If the incoming segment has the ACK bit set, the reset takes its sequence number
            //# from the ACK field of the segment; otherwise, the reset has sequence number zero
            //# and the ACK field is set to the sum of the sequence number and segment length of
            //# the incoming segment.
            let (seq, ack) = match seg.ack_number {
                Some(a) => (a, None),
                None => (TcpSeqNumber(0), Some(seg.seq_number + seg.segment_len())),
            };
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

    #[test]
    fn garbage_is_ignored() {
        for n in 0..80 {
            let mut b = PacketBuf::from_frame(PortId::Uplink, &vec![0x45; n]);
            assert_eq!(answer(&mut b), HostAction::Ignore);
        }
    }
}
