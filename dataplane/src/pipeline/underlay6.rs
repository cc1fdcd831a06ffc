//! VXLAN over an IPv6 underlay (every node's VTEP an IPv6 address, `--vtep fd00:100::11`).
//!
//! Inside meshd a peer's VTEP keeps a 32-bit name ([`ctl::vtep6_key`], an address of 0.0.0.0/8
//! never seen on a wire), so flows, the neighbour table, the seal's associated data and the
//! whole IPv4 overlay path stay as they are. What changes is only at the edge of the uplink:
//! - out: [`crate::overlay::Outer6`] writes IPv6 outer headers (20 bytes more, UDP
//!   checksum zero as RFC 6935 allows tunnels, as Linux's `udp6zerocsumtx`);
//! - in: a UDP datagram from a peer's IPv6 VTEP to ours (VXLAN, or the peer's health gossip)
//!   is rewritten in place as the IPv4 datagram between the two names
//!   ([`Pipeline::underlay6`]) and goes on as one that came over IPv4, with every check of
//!   that path (the peer's MAC, the VNI, the seal, the inner packet);
//! - neighbours: a peer's MAC comes from Neighbor Discovery (a solicitation from meshd,
//!   [`neighbor_solicitation`]; the advertisement learned as an ARP reply is, by the same rule
//!   against forgers, [`Pipeline::note_mac`]).

use smoltcp::wire::{Icmpv6Packet, Icmpv6Repr, Ipv6Address, NdiscNeighborFlags, NdiscRepr};

use super::ipv6::{solicited_node, L3v6};
use super::*;

const IPV4: usize = 20;

impl Pipeline {
    /// A UDP datagram (header `h`, not a piece) to this node's IPv6 VTEP: `Some` when it is
    /// VXLAN or health gossip, taken from a peer's VTEP only; `None` for any other port (it
    /// goes on as to the node's IPv6 address).
    pub(super) fn underlay6(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        h: &L3v6,
    ) -> Option<Result<Verdict, DropReason>> {
        let f = buf.data();
        let udp = f.get(h.l4..h.l4 + 8)?;
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        let vxlan = dport == t.vtep_port;
        if !vxlan && dport != ctl::HEALTH_GOSSIP_PORT {
            return None;
        }
        Some(self.peer6_datagram(t, now, buf, h, vxlan))
    }

    fn peer6_datagram(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        h: &L3v6,
        vxlan: bool,
    ) -> Result<Verdict, DropReason> {
        let Some(peer) = t.peer6(h.src) else {
            return Err(DropReason::UnknownVtep);
        };
        let f = buf.data();
        let udp = f.get(h.l4..h.end).ok_or(DropReason::Truncated)?;
        let u = UdpPacket::new_checked(udp).map_err(|_| DropReason::BadL4Header)?;
        if usize::from(u.len()) != udp.len() {
            return Err(DropReason::BadL4Header);
        }
        // VXLAN may come with a zero checksum (RFC 6935 §5, as meshd sends it); gossip, as any
        // other IPv6 datagram, may not (RFC 8200 §8.1). A checksum given is checked.
        let zero = u.checksum() == 0;
        if (zero && !vxlan) || (!zero && !u.verify_checksum(&h.src.into(), &h.dst.into())) {
            return Err(DropReason::BadL4Checksum);
        }
        let (src, dst) = (t.node(peer).vtep, t.node(t.local).vtep);
        as_ipv4(buf, h, ipkey(src), ipkey(dst))?;
        let l3 = parse_ipv4(buf.data(), ETH, false)?;
        if vxlan {
            return self.decap(t, now, buf, l3, false, false);
        }
        // Gossip from a peer's address but not from the peer's MAC is forged (as over IPv4).
        let smac = EthernetFrame::new_unchecked(buf.data()).src_addr().0;
        if !self.note_mac(l3.src, smac, PortId::Uplink, now, false) {
            return Err(DropReason::SpoofedPeer);
        }
        Ok(Verdict::Host(HostReason::NotPublished))
    }

    /// A Neighbor Advertisement (`icmp`, checksum checked, in the frame from `smac`): a peer's
    /// VTEP's MAC, learned as an ARP reply is (a change believed only as meshd's own asking
    /// answered twice alike). Validated as RFC 4861 §7.1.2 asks.
    pub(super) fn advertisement(
        &mut self,
        t: &ServiceTable,
        now: u32,
        h: &L3v6,
        icmp: &Icmpv6Packet<&[u8]>,
        smac: [u8; 6],
    ) -> Result<Verdict, DropReason> {
        //= https://www.rfc-editor.org/rfc/rfc4861#section-7.1.2
        //# - The IP Hop Limit field has a value of 255 [...]
        //# - Target Address is not a multicast address.
        //# - If the IP Destination Address is a multicast address the
        //#   Solicited flag is zero.
        if h.hop_limit != 255 || icmp.msg_code() != 0 {
            return Err(DropReason::BadNdp);
        }
        let Ok(NdiscRepr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        }) = NdiscRepr::parse(icmp)
        else {
            return Err(DropReason::BadNdp);
        };
        let solicited = flags.contains(NdiscNeighborFlags::SOLICITED);
        if target_addr.is_multicast() || (h.dst.is_multicast() && solicited) {
            return Err(DropReason::BadNdp);
        }
        let Some(peer) = t.peer6(target_addr) else {
            return Err(DropReason::NdpIgnored);
        };
        let name = ipkey(t.node(peer).vtep);
        let mac = lladdr
            .and_then(|l| <[u8; 6]>::try_from(l.as_bytes()).ok())
            .unwrap_or(smac);
        let answer = solicited && self.asked(name, now);
        // As with ARP: what is not believed is counted by `note_mac`, and not a drop.
        let _ = self.note_mac(name, mac, PortId::Uplink, now, answer);
        Ok(Verdict::Consumed)
    }
}

/// Rewrites in place the IPv6 UDP datagram of `h` (checked) as IPv4 from `src` to `dst`: the
/// same Ethernet addresses, an IPv4 header without options (don't fragment, TTL 64), the same
/// UDP header and payload with checksum zero (IPv4's "none": it was checked over IPv6).
// Casts: a datagram in a buffer (2 KiB) is far below 65,535 bytes.
#[allow(clippy::cast_possible_truncation)]
fn as_ipv4(buf: &mut PacketBuf, h: &L3v6, src: u32, dst: u32) -> Result<(), DropReason> {
    let udp = h.end - h.l4;
    let total = IPV4 + udp;
    buf.set_len(h.end);
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&buf.data()[..12]);
    // From the Ethernet header to the UDP header there are at least 54 bytes (40 of IPv6).
    if !buf.trim_front(h.l4 - ETH - IPV4) {
        return Err(DropReason::Truncated);
    }
    let f = buf.data_mut();
    f[..12].copy_from_slice(&macs);
    put16(f, 12, 0x0800);
    let ip = &mut f[ETH..ETH + IPV4];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, UDP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    put16(ip, 2, total as u16);
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    ip[16..20].copy_from_slice(&dst.to_be_bytes());
    let sum = overlay::ipv4_header_checksum(ip);
    put16(ip, 10, sum);
    put16(f, ETH + IPV4 + 6, 0);
    Ok(())
}

/// Writes into `out` a Neighbor Solicitation from `src` (with `mac`, its link-layer address)
/// for `target`, to the target's solicited-node group: how meshd, pipeline and host side
/// alike, learns a peer's IPv6 VTEP's MAC. `None` when `out` is too short.
pub fn neighbor_solicitation(
    out: &mut [u8],
    mac: [u8; 6],
    src: Ipv6Address,
    target: Ipv6Address,
) -> Option<usize> {
    let group = solicited_node(target);
    let g = group.octets();
    let group_mac = [0x33, 0x33, g[12], g[13], g[14], g[15]];
    let ns = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(smoltcp::wire::EthernetAddress(mac).into()),
    });
    reply::icmpv6_frame(out, (mac, group_mac), src, group, 255, &ns)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::pipeline::tests::{client_datagram, delivered, drive, node_of, udp_published};
    use crate::testkit;

    const N1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
    const N2_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x12];
    const N3_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x13];

    fn vtep6(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, last)
    }

    /// `udp_published` (web.1 on n2, web.2 on n3, UDP 5353 published) over an IPv6 underlay:
    /// n1, n2, n3's VTEPs are fd00:100::11 to ::13.
    fn state6() -> ctl::State {
        let mut s = udp_published();
        for (n, last) in s.nodes.iter_mut().zip([0x11, 0x12, 0x13]) {
            n.vtep = Some(vtep6(last).into());
        }
        ctl::validate(&s).unwrap();
        s
    }

    /// Node `node` of `state`, its uplink's MAC its own (`N1_MAC`...), every peer's VTEP's MAC
    /// known by the name meshd gives it, unless `know_peers` is false.
    fn node6(
        state: &ctl::State,
        node: &str,
        workers: u16,
        know_peers: bool,
    ) -> (ServiceTable, Vec<Pipeline>) {
        let (t, mut ps) = node_of(state, node, workers);
        let macs = [N1_MAC, N2_MAC, N3_MAC];
        for p in &mut ps {
            p.cfg.uplink_mac = macs[usize::from(t.local)];
        }
        let neigh = ps[0].neighbors();
        for (i, n) in state.nodes.iter().enumerate() {
            if know_peers {
                neigh.learn(ipkey(n.vtep_key()), macs[i]);
            } else {
                // `node_of` knows the IPv4 underlay's peers: not these.
                assert!(neigh.get(ipkey(n.vtep_key())).is_none());
            }
        }
        (t, ps)
    }

    fn up(f: &[u8]) -> Vec<(usize, PacketBuf)> {
        vec![(0, PacketBuf::from_frame(PortId::Uplink, f))]
    }

    /// A client's 4,000-byte datagram to n1's published port goes to web.1 on n2 in VXLAN over
    /// IPv6: every frame on the wire IPv6 from n1's VTEP to n2's, its UDP checksum zero (RFC
    /// 6935), no longer than the link (the overlay's MTU is 1430 there); n2 takes them on any
    /// worker and web.1 gets the datagram whole.
    #[test]
    fn vxlan_over_ipv6_carries_a_datagram_to_the_task_on_another_node() {
        let state = state6();
        let (t1, mut n1) = node6(&state, "n1", 1, true);
        let (t2, mut n2) = node6(&state, "n2", 2, true);
        assert_eq!(t1.net(0).mtu_on(1500), 1430);
        let (data, frags) = client_datagram(&t1, N1_MAC, 4000, 77);
        let input = frags
            .iter()
            .map(|f| (0, PacketBuf::from_frame(PortId::Uplink, f)))
            .collect();
        let (wire, seen) = drive(&mut n1, &t1, 5, input);
        assert!(
            seen.iter().all(|v| *v == Verdict::Tx(PortId::Uplink)),
            "{seen:?}"
        );
        assert!(wire.len() >= 3);
        let mut inner_sizes = Vec::new();
        for (port, f) in &wire {
            assert_eq!(*port, PortId::Uplink);
            assert!(f.len() <= ETH + 1500, "longer than the link: {}", f.len());
            assert_eq!((&f[..6], &f[6..12]), (&N2_MAC[..], &N1_MAC[..]));
            let v = testkit::decap6(f).expect("VXLAN over IPv6");
            assert_eq!((v.src, v.dst), (vtep6(0x11), vtep6(0x12)));
            assert_eq!((v.checksum, v.vni, v.hop_limit), (0, ctl::INGRESS_VNI, 64));
            assert!(v.sport >= 49152);
            inner_sizes.push(v.inner.len() - ETH);
        }
        assert_eq!(inner_sizes.iter().max(), Some(&1428), "{inner_sizes:?}");
        let arrive = wire
            .iter()
            .enumerate()
            .map(|(i, (_, f))| (i % 2, PacketBuf::from_frame(PortId::Uplink, f)))
            .collect();
        let (out, seen) = drive(&mut n2, &t2, 5, arrive);
        assert!(
            seen.iter().all(|v| !matches!(v, Verdict::Drop(_))),
            "{seen:?}"
        );
        let got = delivered(&out);
        assert_eq!((got.payload, got.dport), (data, 53));
    }

    /// An encrypted network over an IPv6 underlay: sealed inside IPv6 outer headers (the
    /// overlay's MTU 1,386: 1,500 less 70 and the seal's 44), opened by n2, the task gets the
    /// datagram whole.
    #[test]
    fn an_encrypted_network_is_sealed_over_ipv6() {
        let mut state = state6();
        state.networks[0].encryption = Some(ctl::Encryption::single(1, ctl::Secret([7; 32])));
        let (t1, mut n1) = node6(&state, "n1", 1, true);
        let (t2, mut n2) = node6(&state, "n2", 1, true);
        assert_eq!(t1.net(0).mtu_on(1500), 1386);
        let (data, frags) = client_datagram(&t1, N1_MAC, 3000, 78);
        let input = frags
            .iter()
            .map(|f| (0, PacketBuf::from_frame(PortId::Uplink, f)))
            .collect();
        let (wire, _) = drive(&mut n1, &t1, 5, input);
        let marker = &data[1000..1016];
        for (_, f) in &wire {
            assert!(f.len() <= ETH + 1500, "longer than the link: {}", f.len());
            let v = testkit::decap6(f).expect("VXLAN over IPv6");
            assert_eq!(v.dst, vtep6(0x12));
            assert!(
                !f.windows(16).any(|w| w == marker),
                "readable on the underlay"
            );
        }
        let arrive = wire
            .iter()
            .map(|(_, f)| (0, PacketBuf::from_frame(PortId::Uplink, f)))
            .collect();
        let (out, seen) = drive(&mut n2, &t2, 5, arrive);
        assert!(
            seen.iter().all(|v| !matches!(v, Verdict::Drop(_))),
            "{seen:?}"
        );
        assert_eq!(delivered(&out).payload, data);
    }

    /// web.1 on n2 answers the client n1 masqueraded: the reply crosses back over IPv6 and
    /// leaves n1 to the client as IPv4.
    #[test]
    fn a_tasks_reply_crosses_back_over_ipv6() {
        let state = state6();
        let (t1, mut n1) = node6(&state, "n1", 1, true);
        let (t2, mut n2) = node6(&state, "n2", 1, true);
        // The first client port whose flow n1 sends to web.1 on n2.
        let (wire, to) = (40000..40100u16)
            .find_map(|sport| {
                let f = testkit::udp_frame(
                    [2, 0, 0, 0, 0, 0x99],
                    N1_MAC,
                    "10.9.0.9".parse().unwrap(),
                    sport,
                    "192.168.1.11".parse().unwrap(),
                    5353,
                    b"ask",
                );
                let (out, _) = drive(&mut n1, &t1, 5, up(&f));
                let v = testkit::decap6(&out.first()?.1)?;
                (v.dst == vtep6(0x12)).then(|| out[0].1.clone())
            })
            .map(|w| {
                let (out, _) = drive(&mut n2, &t2, 6, up(&w));
                (w, out[0].1.clone())
            })
            .expect("a flow to web.1");
        assert!(!wire.is_empty());
        let asked = testkit::parse_ipv4_udp(&to).expect("to web.1");
        let answer = testkit::udp_frame(
            [2, 0, 0, 0, 0, 0x11],
            n2[0].cfg.tasks_mac,
            asked.dst,
            asked.dport,
            asked.src,
            asked.sport,
            b"answer",
        );
        let input = vec![(0, PacketBuf::from_frame(PortId::Tasks, &answer))];
        let (back, seen) = drive(&mut n2, &t2, 7, input);
        assert_eq!(seen, vec![Verdict::Tx(PortId::Uplink)]);
        let v = testkit::decap6(&back[0].1).expect("over IPv6");
        assert_eq!((v.src, v.dst), (vtep6(0x12), vtep6(0x11)));
        let (out, seen) = drive(&mut n1, &t1, 8, up(&back[0].1));
        assert_eq!(seen, vec![Verdict::Tx(PortId::Uplink)]);
        let got = testkit::parse_ipv4_udp(&out[0].1).expect("IPv4 to the client");
        assert_eq!(got.dst, "10.9.0.9".parse::<std::net::Ipv4Addr>().unwrap());
        assert_eq!((got.sport, got.payload.as_slice()), (5353, &b"answer"[..]));
    }

    /// What does not come from a peer's IPv6 VTEP (its address and its MAC), or does not check,
    /// is dropped by reason; a VXLAN frame with its UDP checksum filled in (as a Linux VTEP
    /// sends by default) is taken.
    #[test]
    fn what_is_not_a_peers_ipv6_vxlan_is_refused_by_reason() {
        let state = state6();
        let (t1, mut n1) = node6(&state, "n1", 1, true);
        let (t2, mut n2) = node6(&state, "n2", 1, true);
        let (_, frags) = client_datagram(&t1, N1_MAC, 200, 5);
        let (wire, _) = drive(&mut n1, &t1, 5, up(&frags[0]));
        let inner = testkit::decap6(&wire[0].1).unwrap().inner.to_vec();
        let frame = |mac, src, checksum| {
            testkit::vxlan6_frame(
                mac,
                N2_MAC,
                src,
                vtep6(0x12),
                50000,
                ctl::INGRESS_VNI,
                &inner,
                checksum,
            )
        };
        let mut bad_sum = frame(N1_MAC, vtep6(0x11), true);
        let last = bad_sum.len() - 1;
        bad_sum[last] ^= 0x40;
        // A destination options header (PadN) between IPv6 and UDP: walked past.
        let mut opts = frame(N1_MAC, vtep6(0x11), false);
        opts[ETH + 6] = 60;
        let len = u16::from_be_bytes([opts[ETH + 4], opts[ETH + 5]]) + 8;
        opts[ETH + 4..ETH + 6].copy_from_slice(&len.to_be_bytes());
        opts.splice(ETH + 40..ETH + 40, [UDP, 0, 1, 4, 0, 0, 0, 0]);
        let cases = [
            (opts, Verdict::Tx(PortId::Tasks)),
            (
                frame(N1_MAC, vtep6(0x99), false),
                Verdict::Drop(DropReason::UnknownVtep),
            ),
            (
                frame([2, 0, 0, 0, 0, 0x66], vtep6(0x11), false),
                Verdict::Drop(DropReason::SpoofedPeer),
            ),
            (bad_sum, Verdict::Drop(DropReason::BadL4Checksum)),
            (frame(N1_MAC, vtep6(0x11), true), Verdict::Tx(PortId::Tasks)),
            (
                frame(N1_MAC, vtep6(0x11), false),
                Verdict::Tx(PortId::Tasks),
            ),
        ];
        for (f, want) in cases {
            let (_, seen) = drive(&mut n2, &t2, 5, up(&f));
            assert_eq!(seen, vec![want]);
        }
        // IPv4 VXLAN from a peer's IPv4 address, on an IPv6 underlay: port 4789 of the node's
        // IPv4 address is a closed port like any other (the host side refuses it).
        let v4 = testkit::vxlan_frame(
            N1_MAC,
            N2_MAC,
            "192.168.1.11".parse().unwrap(),
            "192.168.1.12".parse().unwrap(),
            50000,
            ctl::INGRESS_VNI,
            &inner,
        );
        let (out, seen) = drive(&mut n2, &t2, 5, up(&v4));
        assert_eq!(seen, vec![Verdict::Host(HostReason::NotPublished)]);
        assert!(out.is_empty());
    }

    /// Health gossip from a peer's IPv6 VTEP goes to the host side as the IPv4 datagram between
    /// the two VTEPs' names (what the host side reads over IPv4); without a checksum, or from
    /// another MAC, it is refused.
    #[test]
    fn gossip_over_ipv6_reaches_the_host_side_from_a_peer_only() {
        let state = state6();
        let (t2, mut n2) = node6(&state, "n2", 1, true);
        let gossip = |mac, checksum: bool| {
            let mut f = testkit::ipv6_with(
                mac,
                N2_MAC,
                vtep6(0x11),
                vtep6(0x12),
                64,
                smoltcp::wire::IpProtocol::Udp,
                8 + 5,
                |b| {
                    let p = ctl::HEALTH_GOSSIP_PORT.to_be_bytes();
                    b[..8].copy_from_slice(&[p[0], p[1], p[0], p[1], 0, 13, 0, 0]);
                    b[8..].copy_from_slice(b"hello");
                },
            );
            if checksum {
                let mut u = UdpPacket::new_unchecked(&mut f[ETH + 40..]);
                u.fill_checksum(&vtep6(0x11).into(), &vtep6(0x12).into());
            }
            f
        };
        let mut p = &mut n2[0];
        let mut b = PacketBuf::from_frame(PortId::Uplink, &gossip(N1_MAC, true));
        let v = p.ipv6(&t2, 5, &mut b).unwrap();
        assert_eq!(v, Verdict::Host(HostReason::NotPublished));
        let seen = testkit::parse_ipv4_udp(b.data()).expect("IPv4 now");
        assert_eq!(seen.src, t2.node(0).vtep);
        assert_eq!(seen.dst, t2.node(1).vtep);
        assert_eq!(
            (seen.dport, seen.payload.as_slice()),
            (ctl::HEALTH_GOSSIP_PORT, &b"hello"[..])
        );
        for (f, want) in [
            (gossip(N1_MAC, false), DropReason::BadL4Checksum),
            (gossip([2, 0, 0, 0, 0, 0x66], true), DropReason::SpoofedPeer),
        ] {
            let mut b = PacketBuf::from_frame(PortId::Uplink, &f);
            assert_eq!(p.ipv6(&t2, 5, &mut b), Err(want));
        }
        p = &mut n2[0];
        assert_eq!(p.stats.neighbor_conflicts, 1);
    }

    /// A peer's IPv6 VTEP's MAC comes from Neighbor Discovery: n1, knowing none, drops a
    /// client's packet for want of it and solicits n2's VTEP (from its own, with its MAC, to
    /// the solicited-node group); n2 answers the solicitation, and n1 learns the answer. An
    /// unsolicited advertisement with another MAC is not believed.
    #[test]
    fn a_peers_ipv6_vtep_is_found_by_neighbor_discovery() {
        let state = state6();
        let (t1, mut n1) = node6(&state, "n1", 1, false);
        let (t2, mut n2) = node6(&state, "n2", 1, false);
        let (_, frags) = client_datagram(&t1, N1_MAC, 200, 5);
        let (_, seen) = drive(&mut n1, &t1, 5, up(&frags[0]));
        assert_eq!(seen, vec![Verdict::Drop(DropReason::NoNeighbor)]);
        let mut pool = Pool::new(8);
        let mut out = Burst::new();
        n1[0].maintain(&t1, 6, &mut pool, &mut out);
        let ns = out
            .iter()
            .map(|b| b.data().to_vec())
            .find(|f| f[12..14] == [0x86, 0xdd])
            .expect("a solicitation");
        let want = testkit::neighbor_solicit(N1_MAC, vtep6(0x11), vtep6(0x12));
        assert_eq!(ns, want);
        // n2 answers for its VTEP (not its --addr6: it has none).
        let (na, seen) = drive(&mut n2, &t2, 6, up(&ns));
        assert_eq!(seen, vec![Verdict::Tx(PortId::Uplink)]);
        assert_eq!(&na[0].1[..6], &N1_MAC);
        // ... and learned n1's MAC from the solicitation.
        assert_eq!(n2[0].neighbors().get(ipkey(t2.node(0).vtep)), Some(N1_MAC));
        let (_, seen) = drive(&mut n1, &t1, 7, up(&na[0].1));
        assert_eq!(seen, vec![Verdict::Consumed]);
        let n2_name = ipkey(t1.node(1).vtep);
        assert_eq!(n1[0].neighbors().get(n2_name), Some(N2_MAC));
        // The datagram goes now.
        let (_, seen) = drive(&mut n1, &t1, 8, up(&frags[0]));
        assert_eq!(seen, vec![Verdict::Tx(PortId::Uplink)]);
        // A forger's advertisement for n2's VTEP: not believed, counted.
        let forged = testkit::icmpv6_frame(
            [2, 0, 0, 0, 0, 0x66],
            N1_MAC,
            vtep6(0x12),
            vtep6(0x11),
            255,
            &Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::OVERRIDE,
                target_addr: vtep6(0x12),
                lladdr: Some(smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 0x66]).into()),
            }),
        );
        let (_, seen) = drive(&mut n1, &t1, 9, up(&forged));
        assert_eq!(seen, vec![Verdict::Consumed]);
        assert_eq!(n1[0].neighbors().get(n2_name), Some(N2_MAC));
        assert_eq!(n1[0].stats.neighbor_conflicts, 1);
    }

    proptest::proptest! {
        /// Anything after a valid IPv6 header from a peer's VTEP to ours, UDP to the VXLAN or
        /// the gossip port or not: a counted verdict, never a panic.
        #[test]
        fn any_datagram_to_the_ipv6_vtep_gets_a_verdict(
            dport in proptest::sample::select(vec![4789u16, ctl::HEALTH_GOSSIP_PORT, 53]),
            udp_len in 0u16..200,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let state = state6();
            let (t2, mut n2) = node6(&state, "n2", 1, true);
            let mut body = vec![0xc3, 0x50];
            body.extend_from_slice(&dport.to_be_bytes());
            body.extend_from_slice(&udp_len.to_be_bytes());
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&tail);
            let f = testkit::ipv6_with(N1_MAC, N2_MAC, vtep6(0x11), vtep6(0x12), 64, smoltcp::wire::IpProtocol::Udp, body.len(), |b| b.copy_from_slice(&body));
            let (_, seen) = drive(&mut n2, &t2, 5, up(&f));
            proptest::prop_assert_eq!(seen.len(), 1);
            proptest::prop_assert_eq!(n2[0].stats.rx, 1);
        }
    }
}
