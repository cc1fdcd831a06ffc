//! IPv6 to the node's own address (`--addr6`): the header and a bounded walk over its extension
//! headers (every IPv6 drop reason comes from [`parse_ipv6`]), Neighbor Discovery answered in
//! place as ARP is (RFC 4861), echo requests and TCP/UDP handed to the host side, which answers
//! them as a host with no sockets would (`host::stateless`), TCP and UDP to published ports
//! (and their pieces) translated to IPv4 (`nat64`). Tasks' IPv6 on a dual-stack network goes
//! to `overlay6`; on any other, it is dropped as `no_ipv6`.

use smoltcp::wire::{
    Icmpv6Message, Icmpv6Packet, Icmpv6Repr, Ipv6Address, NdiscNeighborFlags, NdiscRepr,
};

use super::*;

/// The most extension headers [`parse_ipv6`] walks: one of each kind RFC 8200 §4.1 lists, with
/// destination options twice, is at most this many. A longer chain is dropped
/// (`ipv6_ext_chain`), so the walk is bounded whatever a frame holds.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

const IPV6: usize = 40;
pub(super) const ICMPV6: u8 = 58;

/// The parsed header of an IPv6 packet; offsets are within the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L3v6 {
    pub src: Ipv6Address,
    pub dst: Ipv6Address,
    pub hop_limit: u8,
    /// The upper-layer protocol, after the extension headers.
    pub proto: u8,
    /// Offset of the upper-layer header in the frame.
    pub l4: usize,
    /// Offset of the packet's end in the frame (Ethernet padding excluded).
    pub end: usize,
    /// Its Fragment header, when it is a piece of a datagram: then `proto` is what the
    /// header names and `l4` is where the piece's data starts (the upper-layer header in the
    /// first piece, the middle of the datagram in later ones).
    pub frag: Option<Frag6>,
}

/// An IPv6 Fragment header (RFC 8200 §4.5) of a piece that is not the whole datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frag6 {
    /// The fragment offset and more-fragments flag as IPv4 carries them: the offset in
    /// 8-byte units in the low 13 bits, 0x2000 for more fragments.
    pub ff: u16,
    /// The datagram's identification.
    pub id: u32,
}

/// Extension headers walked as "next header, length in 8-octet units after the first 8":
/// hop-by-hop, routing, destination options, mobility, HIP, shim6, the two experimental
/// values. Each has a bit in the walk's `seen` mask.
fn ext_bit(next: u8) -> Option<u8> {
    match next {
        0 => Some(0),
        43 => Some(1),
        60 => Some(2),
        135 => Some(3),
        139 => Some(4),
        140 => Some(5),
        253 => Some(6),
        254 => Some(7),
        _ => None,
    }
}

const FRAGMENT_HEADER: u8 = 44;
const DEST_OPTIONS: u8 = 60;

/// Checks the IPv6 header at `off` in `frame` and walks its extension headers to the
/// upper-layer protocol: at most [`MAX_IPV6_EXT_HEADERS`], hop-by-hop only first, no kind
/// twice but destination options (before routing and at the end), each within the packet.
/// The walk stops at a Fragment header (the rest is the datagram's piece, [`L3v6::frag`]),
/// but for an atomic fragment (offset 0, no more fragments: the whole datagram, which RFC
/// 6946 says to take as unfragmented), after which it goes on.
//= https://www.rfc-editor.org/rfc/rfc8200#section-4.1
//# Each extension header should occur at most once, except for the Destination Options
//# header, which should occur at most twice (once before a Routing header and once before
//# the upper-layer header).
// Always inlined: `ipv6` is the published ports' path; the fragment path's calls are cold.
#[inline(always)]
pub fn parse_ipv6(frame: &[u8], off: usize) -> Result<L3v6, DropReason> {
    let h = frame
        .get(off..)
        .and_then(|b| b.first_chunk::<IPV6>())
        .ok_or(DropReason::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(DropReason::BadIpv6Header);
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let end = off + IPV6 + payload;
    if end > frame.len() {
        return Err(DropReason::BadIpv6Header);
    }
    let mut next = h[6];
    let mut at = off + IPV6;
    let mut seen = 0u8;
    let mut dest_options = 0u8;
    let mut atomic = false;
    let done = |proto, l4, frag| {
        let src: [u8; 16] = h[8..24].try_into().unwrap_or([0; 16]);
        let dst: [u8; 16] = h[24..40].try_into().unwrap_or([0; 16]);
        Ok(L3v6 {
            src: Ipv6Address::from(src),
            dst: Ipv6Address::from(dst),
            hop_limit: h[7],
            proto,
            l4,
            end,
            frag,
        })
    };
    for walked in 0..=MAX_IPV6_EXT_HEADERS {
        if next == FRAGMENT_HEADER {
            if walked == MAX_IPV6_EXT_HEADERS || atomic {
                return Err(DropReason::Ipv6ExtChain);
            }
            let e = frame
                .get(at..end)
                .and_then(|b| b.first_chunk::<8>())
                .ok_or(DropReason::Ipv6Fragment)?;
            let word = u16::from_be_bytes([e[2], e[3]]);
            let frag = Frag6 {
                ff: (word >> 3) | if word & 1 != 0 { 0x2000 } else { 0 },
                id: u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
            };
            next = e[0];
            at += 8;
            if frag.ff != 0 {
                return done(next, at, Some(frag));
            }
            atomic = true;
            continue;
        }
        let Some(bit) = ext_bit(next) else {
            return done(next, at, None);
        };
        let repeated = if next == DEST_OPTIONS {
            dest_options += 1;
            dest_options > 2
        } else {
            seen & (1 << bit) != 0
        };
        if walked == MAX_IPV6_EXT_HEADERS || repeated || (next == 0 && walked != 0) {
            return Err(DropReason::Ipv6ExtChain);
        }
        seen |= 1 << bit;
        let e = frame
            .get(at..end)
            .and_then(|b| b.first_chunk::<2>())
            .ok_or(DropReason::Ipv6ExtChain)?;
        next = e[0];
        at += (usize::from(e[1]) + 1) * 8;
        if at > end {
            return Err(DropReason::Ipv6ExtChain);
        }
    }
    Err(DropReason::Ipv6ExtChain)
}

/// The solicited-node multicast group of `a` (RFC 4291 §2.7.1): ff02::1:ff00:0/104 and its last
/// 24 bits.
pub fn solicited_node(a: Ipv6Address) -> Ipv6Address {
    let o = a.octets();
    Ipv6Address::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

const ALL_NODES: Ipv6Address = Ipv6Address::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

impl Pipeline {
    /// An IPv6 frame: on the uplink, to the node's IPv6 address or its solicited-node group.
    /// Cold and out of line while IPv6 is only the node's own address (Neighbor Discovery,
    /// ping): inlined into `one`, it cost the IPv4 paths 0.4–1.6% more instructions
    /// (callgrind).
    #[cold]
    #[inline(never)]
    pub(super) fn ipv6(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
    ) -> Result<Verdict, DropReason> {
        // The node's IPv6 address and its IPv6 VTEP (often the same): Neighbor Discovery is
        // answered for both, published ports and ping only on the first.
        let vtep6 = t.node(t.local).vtep6;
        let mine = [t.node_addr6, vtep6];
        if buf.port == PortId::Tasks {
            return if t.dual_stack {
                self.task_ipv6(t, now, buf)
            } else {
                Err(DropReason::NoIpv6)
            };
        }
        if mine == [None, None] {
            return Err(DropReason::NoIpv6);
        }
        let h = parse_ipv6(buf.data(), ETH)?;
        if vtep6 == Some(h.dst) && h.proto == UDP && h.frag.is_none() {
            if let Some(r) = self.underlay6(t, now, buf, &h) {
                return r;
            }
        }
        let for_me = t.node_addr6 == Some(h.dst);
        let to_group = mine
            .iter()
            .flatten()
            .any(|&m| h.dst == m || h.dst == solicited_node(m));
        if !for_me && !to_group && h.dst != ALL_NODES {
            return Err(DropReason::NotForUs);
        }
        if let Some(piece) = h.frag {
            // Pieces of a client's TCP or UDP go on as IPv4 fragments (or, to a port nothing
            // is published on, to the host side); an echo request's to the host side, which
            // puts them together to answer (a large `ping -6` of the node).
            return match h.proto {
                TCP | UDP if for_me => self.published6_piece(t, now, buf, &h, piece),
                ICMPV6 if for_me => Ok(Verdict::Host(HostReason::NodeAddress)),
                _ => Err(DropReason::Ipv6Fragment),
            };
        }
        match h.proto {
            ICMPV6 => self.icmpv6(t, now, mine, &h, buf, for_me),
            TCP | UDP if for_me => self.published6(t, now, buf, &h),
            _ if for_me => Err(DropReason::UnknownProtocol),
            _ => Err(DropReason::NotForUs),
        }
    }

    fn icmpv6(
        &mut self,
        t: &ServiceTable,
        now: u32,
        mine: [Option<Ipv6Address>; 2],
        h: &L3v6,
        buf: &mut PacketBuf,
        for_me: bool,
    ) -> Result<Verdict, DropReason> {
        let f = buf.data();
        let icmp = checked_icmpv6(f, h)?;
        let smac = EthernetFrame::new_unchecked(f).src_addr().0;
        match icmp.msg_type() {
            Icmpv6Message::EchoRequest if for_me => Ok(Verdict::Host(HostReason::NodeAddress)),
            Icmpv6Message::NeighborSolicit => {
                let (target, dst, dst_mac, flags) =
                    solicitation(h, &icmp, smac, |a| mine.contains(&Some(a)))?;
                // A peer's solicitation says where its VTEP is, as an ARP request does.
                if let Some(peer) = (!h.src.is_unspecified()).then(|| t.peer6(h.src)).flatten() {
                    let _ = self.note_mac(
                        ipkey(t.node(peer).vtep),
                        dst_mac,
                        PortId::Uplink,
                        now,
                        false,
                    );
                }
                self.advertise(PortId::Uplink, target, dst, dst_mac, flags, buf)
            }
            Icmpv6Message::NeighborAdvert => self.advertisement(t, now, h, &icmp, smac),
            // About a published port's reply: to its task.
            Icmpv6Message::DstUnreachable
            | Icmpv6Message::PktTooBig
            | Icmpv6Message::TimeExceeded
            | Icmpv6Message::ParamProblem
                if for_me =>
            {
                self.icmp6_from_client(t, now, buf, h)
                    .unwrap_or(Err(DropReason::Icmp6NoFlow))
            }
            m if m.is_ndisc() => Err(DropReason::NdpIgnored),
            _ => Err(DropReason::UnknownProtocol),
        }
    }

    /// Turns `buf` into the Neighbor Advertisement of `me` (an address meshd answers for on
    /// `port`) to `dst` (`dst_mac`), with `flags` and the port's MAC as its target link-layer
    /// address.
    pub(super) fn advertise(
        &mut self,
        port: PortId,
        me: Ipv6Address,
        dst: Ipv6Address,
        dst_mac: [u8; 6],
        flags: NdiscNeighborFlags,
        buf: &mut PacketBuf,
    ) -> Result<Verdict, DropReason> {
        let my_mac = match port {
            PortId::Uplink => self.cfg.uplink_mac,
            PortId::Tasks => self.cfg.tasks_mac,
        };
        let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags,
            target_addr: me,
            lladdr: Some(EthernetAddress(my_mac).into()),
        });
        let n = reply::icmpv6_frame(buf.room_mut(), (my_mac, dst_mac), me, dst, 255, &na)
            .ok_or(DropReason::NoBuffer)?;
        buf.set_len(n);
        self.stats.ndp_replies += 1;
        Ok(Verdict::Tx(port))
    }
}

/// The ICMPv6 message of `h` in frame `f`, its length and checksum checked. Always checked:
/// Neighbor Discovery changes what meshd sends, and an echo translated to IPv4 gets a checksum
/// summed anew, so no offload may vouch for it.
pub(super) fn checked_icmpv6<'a>(
    f: &'a [u8],
    h: &L3v6,
) -> Result<Icmpv6Packet<&'a [u8]>, DropReason> {
    let body = f.get(h.l4..h.end).ok_or(DropReason::Truncated)?;
    let icmp = Icmpv6Packet::new_checked(body).map_err(|_| DropReason::BadL4Header)?;
    if !icmp.verify_checksum(&h.src, &h.dst) {
        return Err(DropReason::BadL4Checksum);
    }
    Ok(icmp)
}

/// A Neighbor Solicitation (`icmp`, checksum checked, from the frame of `asker_mac`), validated
/// as RFC 4861 §7.1.1 asks: when it is for an address meshd answers for (`mine`), that
/// address, where its advertisement goes (address, MAC) and with which flags.
pub(super) fn solicitation(
    h: &L3v6,
    icmp: &Icmpv6Packet<&[u8]>,
    asker_mac: [u8; 6],
    mine: impl Fn(Ipv6Address) -> bool,
) -> Result<(Ipv6Address, Ipv6Address, [u8; 6], NdiscNeighborFlags), DropReason> {
    //= https://www.rfc-editor.org/rfc/rfc4861#section-7.1.1
    //# - The IP Hop Limit field has a value of 255, i.e., the packet could not possibly
    //#   have been forwarded by a router.
    if h.hop_limit != 255 || icmp.msg_code() != 0 {
        return Err(DropReason::BadNdp);
    }
    let Ok(NdiscRepr::NeighborSolicit {
        target_addr,
        lladdr,
    }) = NdiscRepr::parse(icmp)
    else {
        return Err(DropReason::BadNdp);
    };
    //# - Target Address is not a multicast address.
    //# - If the IP source address is the unspecified address, the IP destination address
    //#   is a solicited-node multicast address.
    //# - If the IP source address is the unspecified address, there is no source
    //#   link-layer address option in the message.
    let dad = h.src.is_unspecified();
    if target_addr.is_multicast()
        || (dad && (lladdr.is_some() || h.dst != solicited_node(target_addr)))
    {
        return Err(DropReason::BadNdp);
    }
    if !mine(target_addr) {
        return Err(DropReason::NdpIgnored);
    }
    //= https://www.rfc-editor.org/rfc/rfc4861#section-7.2.4
    //# If the source of the solicitation is the unspecified address, the node MUST set
    //# the Solicited flag to zero and multicast the advertisement to the all-nodes
    //# address. Otherwise, the node MUST set the Solicited flag to one and unicast the
    //# advertisement to the source of the solicitation.
    Ok(if dad {
        (
            target_addr,
            ALL_NODES,
            ALL_NODES_MAC,
            NdiscNeighborFlags::OVERRIDE,
        )
    } else {
        let mac = lladdr
            .and_then(|l| <[u8; 6]>::try_from(l.as_bytes()).ok())
            .unwrap_or(asker_mac);
        (
            target_addr,
            h.src,
            mac,
            NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame holding an IPv6 header with `next` and the `ext` bytes after it, then
    /// `tail`.
    fn frame(next: u8, ext: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        let len = u16::try_from(ext.len() + tail.len()).unwrap();
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[next, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(ext);
        f.extend_from_slice(tail);
        f
    }

    /// An extension header of 8 bytes naming `next`.
    fn ext(next: u8) -> [u8; 8] {
        [next, 0, 0, 0, 0, 0, 0, 0]
    }

    #[test]
    fn the_upper_layer_is_found_after_the_extension_headers() {
        let f = frame(6, &[], &[0; 20]);
        let h = parse_ipv6(&f, ETH).unwrap();
        assert_eq!((h.proto, h.l4, h.end), (6, ETH + 40, ETH + 60));
        assert_eq!(h.dst, "fd00::2".parse::<Ipv6Address>().unwrap());
        let mut chain = Vec::new();
        chain.extend_from_slice(&ext(60)); // hop-by-hop, then destination options
        chain.extend_from_slice(&ext(43)); // routing
        chain.extend_from_slice(&ext(60)); // destination options again
        chain.extend_from_slice(&ext(17)); // UDP
        let f = frame(0, &chain, &[0; 8]);
        let h = parse_ipv6(&f, ETH).unwrap();
        assert_eq!((h.proto, h.l4), (17, ETH + 40 + 32));
        // A longer header: length 1 means 16 bytes.
        let mut long = [0u8; 16];
        long[0] = 58;
        long[1] = 1;
        let h = parse_ipv6(&frame(60, &long, &[0; 8]), ETH).unwrap();
        assert_eq!((h.proto, h.l4), (58, ETH + 56));
    }

    #[test]
    fn a_fragment_header_ends_the_walk_but_in_an_atomic_fragment() {
        // A later piece: offset 1,448 (181 units), more fragments, identification 0x01020304.
        let piece = [17, 0, 0x05, 0xa9, 1, 2, 3, 4];
        let h = parse_ipv6(
            &frame(60, &[[44, 0, 0, 0, 0, 0, 0, 0], piece].concat(), &[0; 16]),
            ETH,
        )
        .unwrap();
        let want = Frag6 {
            ff: 0x2000 | 181,
            id: 0x0102_0304,
        };
        assert_eq!((h.frag, h.proto, h.l4), (Some(want), 17, ETH + 56));
        // An atomic fragment: the walk goes on to the upper layer.
        let atomic = [60, 0, 0, 0, 0, 0, 0, 9];
        let h = parse_ipv6(&frame(44, &[atomic, ext(6)].concat(), &[0; 20]), ETH).unwrap();
        assert_eq!((h.frag, h.proto, h.l4), (None, 6, ETH + 56));
    }

    #[test]
    fn bad_chains_are_dropped_by_reason() {
        use DropReason::*;
        // Hop-by-hop after another header.
        let c = [ext(0), ext(6)].concat();
        assert_eq!(parse_ipv6(&frame(60, &c, &[]), ETH), Err(Ipv6ExtChain));
        // A kind twice (routing), and destination options three times.
        let c = [ext(43), ext(6)].concat();
        assert_eq!(parse_ipv6(&frame(43, &c, &[]), ETH), Err(Ipv6ExtChain));
        let c = [ext(60), ext(60), ext(6)].concat();
        assert_eq!(parse_ipv6(&frame(60, &c, &[]), ETH), Err(Ipv6ExtChain));
        // A header longer than the packet.
        let mut long = ext(6);
        long[1] = 4;
        assert_eq!(parse_ipv6(&frame(60, &long, &[]), ETH), Err(Ipv6ExtChain));
        // A chain that ends at the packet's end without an upper layer.
        assert_eq!(
            parse_ipv6(&frame(60, &[], &[]), ETH),
            Err(Ipv6ExtChain),
            "no room for the header it names"
        );
        // A Fragment header cut short, and two of them.
        assert_eq!(
            parse_ipv6(&frame(44, &[6, 0, 0], &[]), ETH),
            Err(Ipv6Fragment)
        );
        let c = [ext(44), ext(6)].concat();
        assert_eq!(parse_ipv6(&frame(44, &c, &[0; 20]), ETH), Err(Ipv6ExtChain));
        // The header itself.
        let mut f = frame(6, &[], &[0; 20]);
        f[ETH] = 0x45;
        assert_eq!(parse_ipv6(&f, ETH), Err(BadIpv6Header));
        let mut f = frame(6, &[], &[0; 20]);
        f[ETH + 5] += 1;
        assert_eq!(parse_ipv6(&f, ETH), Err(BadIpv6Header));
        assert_eq!(parse_ipv6(&f[..ETH + 39], ETH), Err(Truncated));
    }

    #[test]
    fn the_longest_legal_chain_is_walked_and_one_more_is_not() {
        // Every kind once (destination options twice): 9 headers would need a repeat, so the
        // bound is reached only with a repeat; check the bound with the experimental values.
        let kinds = [0u8, 60, 43, 135, 139, 140, 253, 254];
        let mut c = Vec::new();
        for w in kinds.windows(2) {
            c.extend_from_slice(&ext(w[1]));
        }
        c.extend_from_slice(&ext(6));
        let h = parse_ipv6(&frame(0, &c, &[0; 20]), ETH).unwrap();
        assert_eq!((h.proto, h.l4), (6, ETH + 40 + 8 * kinds.len()));
        // One more destination options header makes nine: refused.
        let mut c9 = Vec::new();
        for w in kinds.windows(2) {
            c9.extend_from_slice(&ext(w[1]));
        }
        c9.extend_from_slice(&ext(60));
        c9.extend_from_slice(&ext(6));
        assert_eq!(
            parse_ipv6(&frame(0, &c9, &[0; 20]), ETH),
            Err(DropReason::Ipv6ExtChain)
        );
    }

    #[test]
    fn solicited_node_groups_take_the_last_24_bits() {
        let a: Ipv6Address = "fd00:100::abcd:1234".parse().unwrap();
        assert_eq!(
            solicited_node(a),
            "ff02::1:ffcd:1234".parse::<Ipv6Address>().unwrap()
        );
    }

    // ---- through the pipeline ----

    use crate::balance::table::tests::three_nodes;
    use crate::testkit;
    use smoltcp::wire::{EthernetAddress, Ipv6Packet, NdiscRepr};

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc];

    fn me() -> Ipv6Address {
        "fd00:100::11".parse().unwrap()
    }

    fn client() -> Ipv6Address {
        "fd00:100::c".parse().unwrap()
    }

    /// n1 of [`three_nodes`], with `addr6` as its IPv6 address.
    fn table(addr6: Option<Ipv6Address>) -> ServiceTable {
        let mut s = three_nodes();
        s.nodes.iter_mut().find(|n| n.name == "n1").unwrap().addr6 = addr6;
        ServiceTable::build(&s, "n1", 1).unwrap()
    }

    /// Runs `frames` (on `port`) through a pipeline for `t`: the verdicts and the frames after.
    fn run(
        t: &ServiceTable,
        port: PortId,
        frames: &[Vec<u8>],
    ) -> (Pipeline, Vec<Verdict>, Vec<Vec<u8>>) {
        let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
        let mut burst = Burst::new();
        for f in frames {
            burst.push(PacketBuf::from_frame(port, f));
        }
        let mut v = Verdicts::new();
        p.process(t, 1, &mut burst, &mut v);
        let out = burst.iter().map(|b| b.data().to_vec()).collect();
        (p, v.to_vec(), out)
    }

    /// The Neighbor Advertisement in `f`, checked as a host would (hop limit 255, checksum):
    /// destination MAC and address, flags, target, its link-layer address.
    fn advert(
        f: &[u8],
    ) -> (
        [u8; 6],
        Ipv6Address,
        NdiscNeighborFlags,
        Ipv6Address,
        Vec<u8>,
    ) {
        let ip = Ipv6Packet::new_checked(&f[ETH..]).unwrap();
        assert_eq!(ip.hop_limit(), 255);
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
        assert_eq!(ip.src_addr(), me());
        let Ok(NdiscRepr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        }) = NdiscRepr::parse(&icmp)
        else {
            panic!("not an advertisement");
        };
        (
            f[0..6].try_into().unwrap(),
            ip.dst_addr(),
            flags,
            target_addr,
            lladdr.unwrap().as_bytes().to_vec(),
        )
    }

    #[test]
    fn a_solicitation_for_the_nodes_ipv6_address_is_answered_in_place() {
        let t = table(Some(me()));
        let ns = testkit::neighbor_solicit(CLIENT_MAC, client(), me());
        let (p, v, out) = run(&t, PortId::Uplink, &[ns]);
        assert_eq!(v, vec![Verdict::Tx(PortId::Uplink)]);
        let (mac, dst, flags, target, ll) = advert(&out[0]);
        assert_eq!((mac, dst, target), (CLIENT_MAC, client(), me()));
        assert_eq!(
            flags,
            NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE
        );
        assert_eq!(ll, p.cfg.uplink_mac);
        assert_eq!(&out[0][6..12], &p.cfg.uplink_mac);
        assert_eq!((p.stats.ndp_replies, p.stats.total_drops()), (1, 0));
    }

    /// Duplicate address detection by another host is answered to all nodes, unsolicited: the
    /// address is taken.
    #[test]
    fn duplicate_address_detection_is_answered_to_all_nodes() {
        let t = table(Some(me()));
        let ns = testkit::neighbor_solicit(CLIENT_MAC, Ipv6Address::UNSPECIFIED, me());
        let (_, v, out) = run(&t, PortId::Uplink, &[ns]);
        assert_eq!(v, vec![Verdict::Tx(PortId::Uplink)]);
        let (mac, dst, flags, ..) = advert(&out[0]);
        assert_eq!((mac, dst), (ALL_NODES_MAC, ALL_NODES));
        assert_eq!(flags, NdiscNeighborFlags::OVERRIDE);
    }

    /// The client's echo request of `data` to the node's address.
    fn echo_to_me(data: &[u8]) -> Vec<u8> {
        testkit::icmpv6_frame(
            CLIENT_MAC,
            Config::default().uplink_mac,
            client(),
            me(),
            64,
            &Icmpv6Repr::EchoRequest {
                ident: 7,
                seq_no: 1,
                data,
            },
        )
    }

    #[test]
    fn echo_and_tcp_to_an_unpublished_port_of_the_nodes_ipv6_address_go_to_the_host_side() {
        let t = table(Some(me()));
        let uplink = Config::default().uplink_mac;
        let ping = echo_to_me(b"ping");
        // To a port that is not published (8080 is: pipeline::nat64's tests).
        let syn = testkit::tcp6_frame(CLIENT_MAC, uplink, client(), 40000, me(), 9999, 0x02, 1);
        let (_, v, _) = run(&t, PortId::Uplink, &[ping, syn]);
        assert_eq!(
            v,
            vec![
                Verdict::Host(HostReason::NodeAddress),
                Verdict::Host(HostReason::Ipv6Port)
            ]
        );
    }

    #[test]
    fn ipv6_meshd_does_not_answer_is_dropped_by_reason_and_nothing_is_sent() {
        use DropReason::*;
        let uplink = Config::default().uplink_mac;
        let other: Ipv6Address = "fd00:100::99".parse().unwrap();
        let ns = testkit::neighbor_solicit(CLIENT_MAC, client(), me());
        let mut cases: Vec<(&str, PortId, Vec<u8>, DropReason)> = vec![
            (
                "for another address",
                PortId::Uplink,
                testkit::neighbor_solicit(CLIENT_MAC, client(), other),
                NotForUs,
            ),
            ("from a task", PortId::Tasks, ns.clone(), NoIpv6),
        ];
        // The solicited-node group of `me`, asking for another address with the same last 24
        // bits: not meshd's to answer.
        let twin: Ipv6Address = "fd00:200::11".parse().unwrap();
        cases.push((
            "for a twin address",
            PortId::Uplink,
            testkit::neighbor_solicit(CLIENT_MAC, client(), twin),
            NdpIgnored,
        ));
        // Forwarded by a router: hop limit not 255 (checksum refilled, it covers no hop limit).
        let mut hop = ns.clone();
        hop[ETH + 7] = 64;
        cases.push(("hop limit 64", PortId::Uplink, hop, BadNdp));
        let mut sum = ns.clone();
        let last = sum.len() - 1;
        sum[last] ^= 1;
        cases.push(("bad checksum", PortId::Uplink, sum, BadL4Checksum));
        // Duplicate address detection with a link-layer address option.
        let dad = testkit::icmpv6_frame(
            CLIENT_MAC,
            [0x33, 0x33, 0xff, 0, 0, 0x11],
            Ipv6Address::UNSPECIFIED,
            solicited_node(me()),
            255,
            &Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                target_addr: me(),
                lladdr: Some(EthernetAddress(CLIENT_MAC).into()),
            }),
        );
        cases.push(("DAD with an option", PortId::Uplink, dad, BadNdp));
        let na = testkit::icmpv6_frame(
            CLIENT_MAC,
            uplink,
            client(),
            me(),
            255,
            &Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::OVERRIDE,
                target_addr: client(),
                lladdr: Some(EthernetAddress(CLIENT_MAC).into()),
            }),
        );
        cases.push(("an advertisement", PortId::Uplink, na, NdpIgnored));
        let mut frag = testkit::tcp6_frame(CLIENT_MAC, uplink, client(), 1, me(), 8080, 0x02, 1);
        frag[ETH + 6] = 44;
        cases.push(("a fragment", PortId::Uplink, frag, Ipv6Fragment));
        // Hop-by-hop options whose length (TCP's source port, read as one) runs past the
        // packet.
        let mut chain =
            testkit::tcp6_frame(CLIENT_MAC, uplink, client(), 40000, me(), 8080, 0x02, 1);
        chain[ETH + 6] = 0;
        cases.push((
            "a chain past the packet",
            PortId::Uplink,
            chain,
            Ipv6ExtChain,
        ));
        let mut long = testkit::tcp6_frame(CLIENT_MAC, uplink, client(), 1, me(), 8080, 0x02, 1);
        long[ETH + 5] += 1;
        cases.push((
            "a payload length past the frame",
            PortId::Uplink,
            long,
            BadIpv6Header,
        ));
        for (what, port, f, want) in &cases {
            let (p, v, out) = run(&table(Some(me())), *port, std::slice::from_ref(f));
            assert_eq!(v, vec![Verdict::Drop(*want)], "{what}");
            assert_eq!(&out[0], f, "{what}: the frame is not touched");
            assert_eq!(p.stats.ndp_replies, 0, "{what}");
        }
        // A node without an IPv6 address answers no IPv6 at all.
        let (_, v, _) = run(&table(None), PortId::Uplink, &[ns]);
        assert_eq!(v, vec![Verdict::Drop(NoIpv6)]);
    }

    /// Pieces of an echo request to the node go to the host side (which puts them together);
    /// pieces to anything but the node's address are dropped.
    #[test]
    fn an_echo_requests_pieces_go_to_the_host_side() {
        let pieces = testkit::fragment6(&echo_to_me(&[3; 3000]), 1500, 5);
        let (_, v, _) = run(&table(Some(me())), PortId::Uplink, &pieces);
        assert_eq!(v, vec![Verdict::Host(HostReason::NodeAddress); 3]);
        let mut elsewhere = pieces[0].clone();
        elsewhere[ETH + 24 + 15] ^= 1;
        let (_, v, _) = run(&table(Some(me())), PortId::Uplink, &[elsewhere]);
        assert_eq!(v, vec![Verdict::Drop(DropReason::NotForUs)]);
        let mut group = pieces[1].clone();
        group[ETH + 24..ETH + 40].copy_from_slice(&solicited_node(me()).octets());
        let (_, v, _) = run(&table(Some(me())), PortId::Uplink, &[group]);
        assert_eq!(v, vec![Verdict::Drop(DropReason::Ipv6Fragment)]);
    }

    proptest::proptest! {
        /// Whatever the bytes after an IPv6 header, the walk ends (in bounded steps) with an
        /// upper layer inside the packet or a drop, never a panic.
        #[test]
        fn any_chain_is_walked_or_dropped(next: u8, bytes in proptest::collection::vec(0u8..=255, 0..256)) {
            let f = frame(next, &bytes, &[]);
            if let Ok(h) = parse_ipv6(&f, ETH) {
                proptest::prop_assert!(h.l4 <= h.end && h.end == f.len());
                // A piece's data follows its Fragment header, whatever that names.
                proptest::prop_assert!(h.frag.is_some() || (ext_bit(h.proto).is_none() && h.proto != FRAGMENT_HEADER));
            }
        }
    }
}
