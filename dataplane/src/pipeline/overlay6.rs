//! Dual-stack overlay networks (`network create --ipv6 --subnet fd00:1::/64`): tasks speak IPv6
//! to each other and to VIPs, end to end, through the IPv4 pipeline.
//!
//! Every overlay address of a dual-stack network has an IPv6 twin: the network's prefix with
//! the IPv4 address in its last 32 bits ([`ctl::model::Ipv6Net::embed`]). A task's IPv6 packet
//! to a twin is turned into IPv4 between the two IPv4 addresses where it comes in (RFC 7915
//! §5.1, stateless: a twin names its IPv4 address), goes the IPv4 way (the task's source
//! checks, VIP balancing and DNAT, hairpin masquerade, flows, MSS clamping, VXLAN), and is
//! turned back into IPv6 (§4.1) where it goes out: to a task, or into VXLAN, so the inner frame
//! between nodes is IPv6 too and the node at the other end does the same. [`PacketBuf::v6`]
//! says which packets go back; flows need no mark. Both tasks see IPv6 from each other's twin
//! (or the VIP's).
//!
//! Neighbor Discovery on the tasks side is answered as ARP is: for every twin of the asker's
//! network but its own and those on its own segment. ICMPv6 echo is translated (`ping -6`
//! between tasks), and so are ICMPv6 errors, with the packet they quote (`icmperr`). A task's
//! packet over its network's MTU (a task whose own MTU is larger) is answered with packet too
//! big from its gateway's twin. A packet to a VIP's or the gateway's twin that is no flow's
//! goes to the host side as it came, which answers as a host with no sockets (echo reply, RST,
//! port unreachable). A piece of a task's TCP or UDP datagram becomes an IPv4 fragment (RFC 7915
//! §5.1.1), goes the IPv4 fragment path (`frag`: its first piece's route, held pieces, the
//! collector and owner workers) and becomes an IPv6 piece again where it goes out (§4.1, the
//! identification's low 16 bits zero-extended: what the IPv4 hop keeps). An ICMPv6 message in
//! pieces (`ping -6 -s 4000`) cannot be translated (its checksum covers the whole message,
//! which no piece knows) and between twins need not be: its pieces go as they came, routed by
//! the twin's IPv4 address, to a task or into VXLAN, or to the host side for the VIP's or the
//! gateway's twin, which puts them together and answers (`icmp6_piece`).
//!
//! What the IPv4 paths pay: nothing, with or without a dual-stack network in the mesh. A packet
//! to a task, or into VXLAN, is turned back by the IPv6 path's own functions once the IPv4
//! pipeline has sent it there (`after6`; behind its outer headers for VXLAN, `vxlan_back6`), or
//! by `send_vxlan_slow`, which only sealed meshes and IPv6 underlays take anyway. A frame
//! handed to another worker goes as it came (IPv6), so the worker that owns its flow turns it
//! into IPv4 itself: IPv4's `send` never tests [`PacketBuf::v6`]. On a node of more than one
//! worker, that costs an IPv6 packet a copy of its frame.

use smoltcp::wire::Icmpv6Message;

use super::frag::Frag;
use super::frag::Way;
use super::icmperr::{error4_to_ipv6, error6_to_ipv4, is_icmp_error};
use super::ipv6::{checked_icmpv6, parse_ipv6, solicitation, L3v6, ICMPV6};
use super::nat64::{fragment_header, to_ipv6, twin_piece_to_ipv4, twins_to_ipv4};
use super::*;
use crate::balance::table::NetIdx;

/// The IPv4 address in the last 32 bits of an IPv6 address (a twin's).
fn low32(a: smoltcp::wire::Ipv6Address) -> u32 {
    let o = a.octets();
    u32::from_be_bytes([o[12], o[13], o[14], o[15]])
}

/// Where an ICMPv6 message of a task goes.
enum Icmp6 {
    /// Answered in place (Neighbor Discovery).
    Answered(Verdict),
    /// An echo request or reply: translated.
    Echo,
    /// An error (destination unreachable, packet too big, ...): translated with its quote
    /// (`icmperr`).
    Error,
}

impl Pipeline {
    /// IPv6 from a task, on a mesh with a dual-stack network: Neighbor Discovery answered,
    /// TCP, UDP and ICMPv6 echo between twins of the task's network turned into IPv4 and sent
    /// on as the task's IPv4 would be.
    #[cold]
    #[inline(never)]
    pub(super) fn task_ipv6(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
    ) -> Result<Verdict, DropReason> {
        let h = parse_ipv6(buf.data(), ETH)?;
        let mut error = false;
        match h.proto {
            TCP | UDP => {}
            ICMPV6 if h.frag.is_none() => match self.icmpv6_of_task(t, now, &h, buf)? {
                Icmp6::Answered(v) => return Ok(v),
                Icmp6::Echo => {}
                Icmp6::Error => error = true,
            },
            // A piece of an ICMPv6 message: after the source checks (`icmp6_piece`).
            ICMPV6 => {}
            _ => return Err(DropReason::UnknownProtocol),
        }
        let src = low32(h.src);
        let s = self.task_source(t, now, buf, src)?;
        let net = t.net(s.net);
        let Some(p) = t.subnet6(s.net) else {
            return Err(DropReason::NoIpv6);
        };
        // The task speaks as its own twin only (its IPv4 address, VLAN and MAC were checked).
        if p.embed(addr(src)) != h.src {
            return Err(DropReason::UnknownSource);
        }
        let dst = p
            .extract(h.dst)
            .filter(|d| net.subnet.contains(*d))
            .ok_or(DropReason::NoIpv6)?;
        // Over the network's MTU (a task whose own MTU is larger): packet too big, from the
        // gateway's twin, as a router on the way would answer.
        let mtu = self.mtu_of(Some(s.net));
        if h.end - ETH > usize::from(mtu) {
            let from = (p.embed(net.gateway), PortId::Tasks);
            return self.too_big6(now, buf, &h, src, from, u32::from(mtu));
        }
        self.save6(buf);
        if h.frag.is_some() {
            if h.proto == ICMPV6 {
                return self.icmp6_piece(t, now, buf, s.net, dst, 0);
            }
            return self.task_piece6(t, now, buf, &h, s.net, (src, ipkey(dst)));
        }
        if error {
            let v4 = |a| p.extract(a).filter(|v| net.subnet.contains(*v)).map(ipkey);
            error6_to_ipv4(buf, 0, &h, (src, ipkey(dst)), v4)?;
        } else {
            let delta = t.twin_deltas(s.net)[0];
            twins_to_ipv4(buf, 0, &h, (src, ipkey(dst)), delta)?;
        }
        buf.v6 = true;
        let l3 = parse_ipv4(buf.data(), ETH, self.cfg.verify_l4_checksums)?;
        let made = self.stats.new_flows;
        let v = self.on_task::<true>(t, now, buf, l3);
        if self.stats.new_flows != made {
            self.client_twin(t, s.net, &l3);
        }
        self.after6(t, buf, v)
    }

    /// A piece of a task's TCP or UDP datagram to a twin of its network `net` (`h`, checked as
    /// a whole packet is, between IPv4 addresses `src` and `dst`): turned into an IPv4
    /// fragment (RFC 7915 §5.1.1) and sent on by the IPv4 fragment path as the task's IPv4
    /// fragment would be (the fragment table, the datagram's collector and owner), then turned back
    /// ([`Self::after6`], or [`Self::held6`] for a piece held until its first came). Apart, so
    /// that whole packets pay nothing for it.
    #[cold]
    #[inline(never)]
    fn task_piece6(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        h: &L3v6,
        net: NetIdx,
        addrs: (u32, u32),
    ) -> Result<Verdict, DropReason> {
        twin_piece_to_ipv4(buf, 0, h, addrs, t.twin_deltas(net)[0])?;
        buf.v6 = true;
        let l3 = parse_ipv4(buf.data(), ETH, self.cfg.verify_l4_checksums)?;
        let made = self.stats.new_flows;
        let v = self.fragment(t, now, buf, l3, Way::Direct);
        if self.stats.new_flows != made {
            self.client_twin(t, net, &l3);
        }
        self.after6(t, buf, v)
    }

    /// Records in the VIP flow that the task's IPv6 packet `l3` (turned into IPv4 between the
    /// twins' IPv4 addresses, on network `net`) just made the client's IPv6 address: the flow
    /// is then shown by its IPv6 addresses (`conn::conn_of`) and the RST that ends it goes as
    /// IPv6 (`Pipeline::reset_frame`). Only for the packet that made a flow: here rather than
    /// where flows are made, which the IPv4 paths share (a test there cost them 2 instructions
    /// a packet, by how the compiler laid out `on_task`). The twin is embedded again rather than
    /// taken from the packet's IPv6 header: keeping that header alive across `on_task` cost
    /// "VIP over IPv6" 43 instructions a packet (callgrind, tried).
    #[cold]
    #[inline(never)]
    fn client_twin(&mut self, t: &ServiceTable, net: NetIdx, l3: &L3) {
        let Some(p) = t.subnet6(net) else { return };
        let key = l3.key().in_family(true);
        if let Some((id, Dir::Fwd)) = self.lookup_live(t, &key, key.hash()) {
            let f = self.flows.get_mut(id);
            if f.kind == FlowKind::Vip {
                f.set_client6(p.embed(addr(l3.src)).octets());
            }
        }
    }

    /// A piece of an ICMPv6 message (`ping -6 -s 4000`) to the twin of `dst` on network
    /// `net`: from a local task (`encap` 0, after the source checks) or from a peer inside
    /// VXLAN (`encap`, the outer headers' length). It cannot be translated (RFC 7915 §5.2: an
    /// ICMPv6 message's checksum covers its whole length, which no piece of it knows; the
    /// translator may drop it), and it need not be: between twins no address changes. So it
    /// goes as it came, routed by the twin's IPv4 address, its hop limit less one: to a task
    /// here, or (from a task) into VXLAN to the task's node, whose meshd does the same. To the
    /// VIP's or the gateway's twin (from a task): to the host side as it came, which puts the
    /// message together and answers it in pieces, as it does a large ping of the node.
    /// Anything else is `ipv6_fragment`.
    ///
    /// It reads the hop limit and the source from the frame rather than from the caller's
    /// parsed header: one argument more cost "VIP over IPv6", none of whose packets come
    /// here, 3 instructions a packet (callgrind, tried).
    #[cold]
    #[inline(never)]
    fn icmp6_piece(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        net: NetIdx,
        dst: Ipv4Address,
        encap: usize,
    ) -> Result<Verdict, DropReason> {
        let kind = t.addr(dst).filter(|e| e.net == net).map(|e| e.kind);
        let (local, node) = match kind {
            Some(AddrKind::Vip { .. } | AddrKind::Gateway) if encap == 0 => {
                return Ok(Verdict::Host(HostReason::MeshAddress));
            }
            // From a peer, only to a task here: this node does not transit between peers.
            Some(AddrKind::Task { local, node, .. }) if local || encap == 0 => (local, node),
            _ => return Err(DropReason::Ipv6Fragment),
        };
        if !buf.trim_front(encap) {
            return Err(DropReason::Truncated);
        }
        // The IPv6 header was parsed whole: its hop limit and source are there.
        let f = buf.data_mut();
        let hop_limit = f[ETH + 7];
        if hop_limit <= 1 {
            return Err(DropReason::TtlExpired);
        }
        f[ETH + 7] = hop_limit - 1;
        let src = u32::from_be_bytes([f[ETH + 20], f[ETH + 21], f[ETH + 22], f[ETH + 23]]);
        // Every piece of a message the same way into VXLAN (its addresses' entropy port).
        let key = FlowKey::new(ICMP, src, 0, ipkey(dst), 0);
        let egress = self.egress_to(t, local, node, t.net(net).vni, &key);
        self.send(t, now, buf, ipkey(dst), egress)
    }

    /// What becomes of a held piece of a task's IPv6 datagram (`way`, how it came) now that
    /// its first piece came and the fragment path decided `v`: as [`Self::after6`] for the
    /// packet at hand, but a piece handed to another worker is turned back from what it holds
    /// (the frame it came as is long gone), and the owner turns it into IPv4 again.
    #[cold]
    #[inline(never)]
    pub(super) fn held6(
        &mut self,
        t: &ServiceTable,
        buf: &mut PacketBuf,
        way: Way,
        v: Verdict,
    ) -> Verdict {
        // `after6`'s arms but for the handoff, written out: one function for both (inlined)
        // cost the IPv6 rows 2 to 4 instructions a packet (callgrind: VIP over IPv6
        // 404,775,370 → 405,624,495).
        let direct = matches!(way, Way::Direct);
        let r = match v {
            Verdict::Tx(PortId::Tasks) => net_of(t, buf, ETH + 16).and_then(|n| back6(t, buf, n)),
            Verdict::Tx(PortId::Uplink) if !t.vxlan_slow => vxlan_back6(t, buf),
            Verdict::Handoff(_) | Verdict::Host(_) if direct => {
                net_of(t, buf, ETH + 12).and_then(|n| back6(t, buf, n))
            }
            // Still inside VXLAN: the owner decapsulates it again.
            Verdict::Handoff(_) => vxlan_back6(t, buf),
            Verdict::Host(_) => Err(DropReason::Ipv6Untranslated),
            v => return v,
        };
        match r {
            Ok(()) => v,
            Err(r) => Verdict::Drop(r),
        }
    }

    /// Keeps the frame of a task's IPv6 packet as it came, for [`Self::after6`], on a node of
    /// more than one worker.
    fn save6(&mut self, buf: &PacketBuf) {
        if self.cfg.workers > 1 {
            self.saved6.clear();
            // Within the capacity it was given (a buffer's size): no allocation.
            self.saved6.extend_from_slice(buf.data());
        }
    }

    /// What becomes of a task's IPv6 packet (`v`: the IPv4 pipeline's verdict on it): to a
    /// task or into VXLAN, turned back into IPv6 here (in `send_vxlan_slow` when VXLAN takes
    /// it: sealed, or over an IPv6 underlay); for another worker, given back as it came
    /// ([`Self::save6`]), so that the worker that owns it turns it into IPv4 itself: the IPv4
    /// path's `send` never looks at [`PacketBuf::v6`]. For the host side: turned back too,
    /// from a task (answered there in IPv6); not from another node (the asker's own node
    /// answers).
    fn after6(
        &mut self,
        t: &ServiceTable,
        buf: &mut PacketBuf,
        v: Result<Verdict, DropReason>,
    ) -> Result<Verdict, DropReason> {
        match v? {
            Verdict::Tx(PortId::Tasks) => {
                let net = net_of(t, buf, ETH + 16)?;
                back6(t, buf, net)?;
                Ok(Verdict::Tx(PortId::Tasks))
            }
            // Into VXLAN by IPv4's own transmit path (a mesh with no encrypted network, over an
            // IPv4 underlay; the others' `send_vxlan_slow` turned it back already).
            Verdict::Tx(PortId::Uplink) if !t.vxlan_slow => {
                vxlan_back6(t, buf)?;
                Ok(Verdict::Tx(PortId::Uplink))
            }
            // A task's packet to a VIP's or the gateway's twin that no flow takes (an echo
            // request, a port the VIP does not serve): the host side answers it as a host with
            // no sockets would, in IPv6 (`host::stateless`).
            Verdict::Host(r) if buf.port == PortId::Tasks => {
                let net = net_of(t, buf, ETH + 12)?;
                back6(t, buf, net)?;
                Ok(Verdict::Host(r))
            }
            Verdict::Handoff(w) => {
                buf.refill(&self.saved6);
                Ok(Verdict::Handoff(w))
            }
            Verdict::Host(_) => Err(DropReason::Ipv6Untranslated),
            v => Ok(v),
        }
    }

    /// An ICMPv6 message `h` of a task (checksum checked): a Neighbor Solicitation for a twin
    /// of its network is answered with the tasks port's MAC, as ARP is (`arp`); an echo goes
    /// on to be translated; other Neighbor Discovery and MLD (the task's own link chatter) are
    /// `ndp_ignored`, the rest `ipv6_untranslated`.
    fn icmpv6_of_task(
        &mut self,
        t: &ServiceTable,
        now: u32,
        h: &L3v6,
        buf: &mut PacketBuf,
    ) -> Result<Icmp6, DropReason> {
        let f = buf.data();
        let icmp = checked_icmpv6(f, h)?;
        match icmp.msg_type() {
            Icmpv6Message::EchoRequest | Icmpv6Message::EchoReply => return Ok(Icmp6::Echo),
            m if u8::from(m) < 128 => return Ok(Icmp6::Error),
            Icmpv6Message::NeighborSolicit => {}
            Icmpv6Message::MldQuery | Icmpv6Message::MldReport => {
                return Err(DropReason::NdpIgnored)
            }
            m if m.is_ndisc() => return Err(DropReason::NdpIgnored),
            _ => return Err(DropReason::Ipv6Untranslated),
        }
        // Duplicate address detection (from ::) and solicitations from a link-local address
        // are the task's own business: its twin is the only address meshd knows it by.
        if h.src.is_unspecified() || h.src.is_unicast_link_local() {
            return Err(DropReason::NdpIgnored);
        }
        // The same source checks as `task_ipv6`'s, written out: shared in one function (even
        // inlined), they cost the IPv6 VIP row 34 to 74 instructions a packet (callgrind).
        let src = low32(h.src);
        let s = self.task_source(t, now, buf, src)?;
        let AddrKind::Task { vlan, .. } = s.kind else {
            return Err(DropReason::UnknownSource);
        };
        let net = t.net(s.net);
        let Some(p) = t.subnet6(s.net) else {
            return Err(DropReason::NoIpv6);
        };
        if p.embed(addr(src)) != h.src {
            return Err(DropReason::UnknownSource);
        }
        let smac = EthernetFrame::new_unchecked(f).src_addr().0;
        // As `arp`: every address of the asker's network but its own, and but those of tasks
        // on its own segment, which answer for themselves.
        let answers = |a| {
            p.extract(a).is_some_and(|v4| {
                let same_segment = matches!(
                    t.addr(v4).map(|e| e.kind),
                    Some(AddrKind::Task { local: true, vlan: v, .. }) if v == vlan
                );
                net.subnet.contains(v4) && ipkey(v4) != src && !same_segment
            })
        };
        let (target, dst, dst_mac, flags) = solicitation(h, &icmp, smac, answers)?;
        self.advertise(PortId::Tasks, target, dst, dst_mac, flags, buf)
            .map(Icmp6::Answered)
    }

    /// A VXLAN frame (`outer`, its outer headers) of network `net` whose inner frame is IPv6:
    /// a task's on another node, on a dual-stack network. Its packet is turned into IPv4 in
    /// place, the outer headers moving up with it and their lengths set again, and it is
    /// decapsulated as IPv4 ([`Self::after6`] says what then).
    #[cold]
    #[inline(never)]
    pub(super) fn decap6(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        outer: L3,
        net: NetIdx,
    ) -> Result<Verdict, DropReason> {
        let n = t.net(net);
        let Some(p) = t.subnet6(net) else {
            return Err(DropReason::NoIpv6);
        };
        let base = vxlan::ENCAP_LEN;
        let h = parse_ipv6(buf.data(), base + ETH)?;
        let (Some(src), Some(dst)) = (p.extract(h.src), p.extract(h.dst)) else {
            return Err(DropReason::NoIpv6);
        };
        if !n.subnet.contains(src) || !n.subnet.contains(dst) {
            return Err(DropReason::NoIpv6);
        }
        let mut error = false;
        match h.proto {
            TCP | UDP => {}
            ICMPV6 if h.frag.is_none() => {
                let icmp = checked_icmpv6(buf.data(), &h)?;
                match icmp.msg_type() {
                    Icmpv6Message::EchoRequest | Icmpv6Message::EchoReply => {}
                    m if u8::from(m) < 128 => error = true,
                    m if m.is_ndisc() => return Err(DropReason::NdpIgnored),
                    _ => return Err(DropReason::Ipv6Untranslated),
                }
            }
            // As in `task_ipv6`: a piece of an ICMPv6 message is not translated
            // (`icmp6_piece`).
            ICMPV6 => {}
            _ => return Err(DropReason::UnknownProtocol),
        }
        // The sending node's meshd answers what is over the network's MTU: nothing is.
        if h.end - (base + ETH) > usize::from(self.mtu_of(Some(net))) {
            return Err(DropReason::TooBig);
        }
        self.save6(buf);
        // As in `task_ipv6`, written out: one function for both (even inlined) cost the IPv6
        // rows 5 to 6 instructions a packet (callgrind).
        if h.frag.is_some() {
            if h.proto == ICMPV6 {
                return self.icmp6_piece(t, now, buf, net, dst, base);
            }
            // A piece: an IPv4 fragment, which `decap` sends down the fragment path.
            let delta = t.twin_deltas(net)[0];
            twin_piece_to_ipv4(buf, base, &h, (ipkey(src), ipkey(dst)), delta)?;
        } else if error {
            let v4 = |a| p.extract(a).filter(|v| n.subnet.contains(*v)).map(ipkey);
            error6_to_ipv4(buf, base, &h, (ipkey(src), ipkey(dst)), v4)?;
        } else {
            let delta = t.twin_deltas(net)[0];
            twins_to_ipv4(buf, base, &h, (ipkey(src), ipkey(dst)), delta)?;
        }
        let f = buf.data_mut();
        let len = f.len();
        let (ip_len, udp_len) = (len - ETH, len - outer.l4);
        // Casts: a frame is at most a buffer (2,048 bytes) long.
        #[allow(clippy::cast_possible_truncation)]
        {
            put16(f, ETH + 2, ip_len as u16);
            put16(f, outer.l4 + 4, udp_len as u16);
        }
        // The outer UDP checksum is optional over IPv4; it was checked when the frame came.
        put16(f, outer.l4 + 6, 0);
        smoltcp::wire::Ipv4Packet::new_unchecked(&mut f[ETH..outer.l4]).fill_checksum();
        buf.v6 = true;
        let v = self.decap(t, now, buf, outer, false, true);
        self.after6(t, buf, v)
    }
}

/// Turns the inner packet of the VXLAN frame in `buf` (a task's IPv6 packet, encapsulated as
/// IPv4 by `Outer::encap`) back into IPv6, its outer headers kept before it, their lengths and
/// IPv4 checksum set again. Out of `send`, so IPv4 pays nothing for it.
#[inline(always)]
fn vxlan_back6(t: &ServiceTable, buf: &mut PacketBuf) -> Result<(), DropReason> {
    const E: usize = vxlan::ENCAP_LEN;
    let f = buf.data();
    let mut outer = [0u8; E];
    outer.copy_from_slice(f.get(..E).ok_or(DropReason::Truncated)?);
    // Only VXLAN over IPv4 (UDP) comes here: a task's IPv6 packet goes to twins of its own
    // network.
    if outer[12..14] != [0x08, 0x00] || outer[ETH + 9] != UDP {
        return Err(DropReason::Ipv6Untranslated);
    }
    let vni = u32::from_be_bytes([0, outer[E - 4], outer[E - 3], outer[E - 2]]);
    let net = t.network_by_vni(vni).ok_or(DropReason::UnknownVni)?;
    if !buf.trim_front(E) {
        return Err(DropReason::Truncated);
    }
    back6(t, buf, net)?;
    let inner = buf.len();
    let f = buf.prepend(E).ok_or(DropReason::NoHeadroom)?;
    f[..E].copy_from_slice(&outer);
    // Casts: a frame is at most a buffer (2,048 bytes) long.
    #[allow(clippy::cast_possible_truncation)]
    let (total, udp) = (
        (IPV4 + 8 + vxlan::HEADER_LEN + inner) as u16,
        (8 + vxlan::HEADER_LEN + inner) as u16,
    );
    // Only the total length changed in the outer IPv4 header: its checksum follows it (summed
    // anew, it cost the IPv6 VIP row 70 instructions a packet).
    let old = nat::be16(f, ETH + 2);
    let csum = nat::be16(f, ETH + 10);
    put16(f, ETH + 2, total);
    put16(
        f,
        ETH + 10,
        checksum::Delta::new().add16(old, total).apply(csum),
    );
    put16(f, ETH + IPV4 + 4, udp);
    Ok(())
}

/// Turns the RST in `b` (from a VIP to a task, built in IPv4) into IPv6 between their twins,
/// for a flow `Pipeline::client_twin` marked; false when it cannot be (the network is no longer
/// dual-stack).
pub(super) fn reset_back6(t: &ServiceTable, b: &mut PacketBuf) -> bool {
    net_of(t, b, ETH + 16)
        .and_then(|net| back6(t, b, net))
        .is_ok()
}

/// The network of the overlay address at `at` in the IPv4 frame in `buf`.
fn net_of(t: &ServiceTable, buf: &PacketBuf, at: usize) -> Result<NetIdx, DropReason> {
    let a = buf.data().get(at..at + 4).ok_or(DropReason::Truncated)?;
    let a = addr(u32::from_be_bytes([a[0], a[1], a[2], a[3]]));
    t.addr(a).map(|e| e.net).ok_or(DropReason::NoRoute)
}

/// Turns the IPv4 frame in `buf` (a task's IPv6 packet on network `net`, rewritten) back into
/// IPv6 between the twins of its addresses, its MAC addresses kept.
pub(super) fn back6(t: &ServiceTable, buf: &mut PacketBuf, net: NetIdx) -> Result<(), DropReason> {
    let h = buf.data().get(..ETH + IPV4).ok_or(DropReason::Truncated)?;
    // A fragment (more fragments, or an offset): apart, so that whole packets pay one test.
    if u16::from_be_bytes([h[ETH + 6], h[ETH + 7]]) & 0x3fff != 0 {
        return back6_piece(t, buf, net);
    }
    let (p, b) = read4(t, buf, net)?;
    if b.l3.proto == ICMP && is_icmp_error(buf.data(), b.l3.l4) {
        let v6 = |a| p.embed(addr(a)).octets();
        return error4_to_ipv6(buf, &b.l3, b.payload, b.twins, b.macs, v6);
    }
    let delta = t.twin_deltas(net)[1];
    to_ipv6(buf, &b.l3, b.payload, b.twins, None, b.macs, Some(delta))
}

/// What [`back6`] reads of the IPv4 frame it turns back.
struct Back {
    l3: L3,
    /// The bytes after the IPv4 header.
    payload: usize,
    /// The twins of its source and destination.
    twins: ([u8; 16], [u8; 16]),
    /// Its source and destination MAC addresses.
    macs: ([u8; 6], [u8; 6]),
}

/// Reads the IPv4 frame in `buf` (of network `net`) for [`back6`]: its header checked, the
/// network's prefix.
#[inline(always)]
fn read4(
    t: &ServiceTable,
    buf: &PacketBuf,
    net: NetIdx,
) -> Result<(ctl::model::Ipv6Net, Back), DropReason> {
    let Some(p) = t.subnet6(net) else {
        return Err(DropReason::NoIpv6);
    };
    let f = buf.data();
    let h = f.get(..ETH + IPV4).ok_or(DropReason::Truncated)?;
    let ihl = usize::from(h[ETH] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[ETH + 2], h[ETH + 3]]));
    if ihl < IPV4 || total < ihl || ETH + total > f.len() {
        return Err(DropReason::BadIpv4Header);
    }
    let word = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let (src, dst) = (word(ETH + 12), word(ETH + 16));
    let l3 = L3 {
        proto: h[ETH + 9],
        src,
        dst,
        sport: 0,
        dport: 0,
        flags: 0,
        ack: 0,
        l4: ETH + ihl,
        frag: Frag::Whole,
    };
    let mut dmac = [0u8; 6];
    let mut smac = [0u8; 6];
    dmac.copy_from_slice(&h[..6]);
    smac.copy_from_slice(&h[6..12]);
    let twins = (p.embed(addr(src)).octets(), p.embed(addr(dst)).octets());
    Ok((
        p,
        Back {
            l3,
            payload: total - ihl,
            twins,
            macs: (smac, dmac),
        },
    ))
}

/// [`back6`] of an IPv4 fragment: an IPv6 piece behind a Fragment header with the same offset
/// and more-fragments flag and the identification zero-extended (RFC 7915 §4.1), so every
/// piece of a datagram gets the same. A piece of an ICMP message is refused (its checksum
/// would need the whole message).
#[cold]
#[inline(never)]
fn back6_piece(t: &ServiceTable, buf: &mut PacketBuf, net: NetIdx) -> Result<(), DropReason> {
    let (_, mut b) = read4(t, buf, net)?;
    if b.l3.proto != TCP && b.l3.proto != UDP {
        return Err(DropReason::Ipv6Fragment);
    }
    let f = buf.data();
    let ff = u16::from_be_bytes([f[ETH + 6], f[ETH + 7]]);
    let id = u16::from_be_bytes([f[ETH + 4], f[ETH + 5]]);
    b.l3.frag = if ff & 0x1fff == 0 {
        Frag::First
    } else {
        Frag::Later
    };
    let piece = fragment_header(b.l3.proto, ff, id);
    let delta = t.twin_deltas(net)[1];
    to_ipv6(
        buf,
        &b.l3,
        b.payload,
        b.twins,
        Some(piece),
        b.macs,
        Some(delta),
    )
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use std::collections::BTreeSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6ParamProblem, Icmpv6Repr, IpAddress, Ipv6Packet,
        Ipv6Repr, NdiscNeighborFlags, NdiscRepr,
    };

    use super::*;
    use crate::pipeline::tests::run;
    use crate::testkit::{self, parse_ipv6_tcp as tcp6, tcp_flags::*};
    use ctl::model::{self, State};

    const CLI_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x21];
    const WEB1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
    const WEB2_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x12];
    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
    const WEB1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 11);
    const WEB2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 12);
    const CLI: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 21);

    fn prefix() -> model::Ipv6Net {
        "fd00:10:1::/64".parse().unwrap()
    }

    fn twin(a: Ipv4Addr) -> Ipv6Addr {
        prefix().embed(a)
    }

    fn tasks_mac() -> [u8; 6] {
        Config::default().tasks_mac
    }

    /// [`testkit::three_nodes`] with appnet dual-stack (fd00:10:1::/64) and a client task,
    /// cli.1 on n2 (10.0.1.21), beside web.1 (n2) and web.2 (n3).
    fn state(dual: bool) -> State {
        let mut s = testkit::three_nodes();
        s.networks[1].subnet6 = dual.then(prefix);
        let mut cli = model::Service::new("cli");
        cli.networks.push(model::ServiceNetwork {
            network: "appnet".into(),
            vip: Some(Ipv4Addr::new(10, 0, 1, 3)),
        });
        cli.tasks
            .push(testkit::task("cli.1", "n2", &[("appnet", CLI)]));
        s.services.push(cli);
        s
    }

    /// Worker `worker` of `workers` on `node`: it knows the tasks' MACs and the VTEPs'.
    fn on_node(s: &State, node: &str, workers: u16, worker: u16) -> (ServiceTable, Pipeline) {
        let t = ServiceTable::build(s, node, 1).unwrap();
        let neigh = Arc::new(Neighbors::new(64));
        for (a, m) in [(CLI, CLI_MAC), (WEB1, WEB1_MAC), (WEB2, WEB2_MAC)] {
            neigh.learn(ipkey(a), m);
        }
        for last in [11, 12, 13] {
            neigh.learn(
                u32::from(Ipv4Addr::new(192, 168, 1, last)),
                Config::default().uplink_mac,
            );
        }
        let cfg = Config {
            worker,
            workers,
            ..Config::default()
        };
        (t, Pipeline::new(cfg, neigh))
    }

    /// `inner` in VXLAN on appnet (VNI 4097) from node 192.168.1.`from` to 192.168.1.`to`, as
    /// a peer's meshd sends it (both uplinks have the default MAC).
    fn appnet_vxlan(from: u8, to: u8, inner: &[u8]) -> Vec<u8> {
        testkit::vxlan_frame(
            Config::default().uplink_mac,
            Config::default().uplink_mac,
            Ipv4Addr::new(192, 168, 1, from),
            Ipv4Addr::new(192, 168, 1, to),
            50000,
            4097,
            inner,
        )
    }

    fn on(node: &str) -> (ServiceTable, Pipeline) {
        on_node(&state(true), node, 1, 0)
    }

    fn payload6(f: &[u8]) -> Option<(Ipv6Packet<&[u8]>, &[u8])> {
        if testkit::eth(f)?.2 != 0x86dd {
            return None;
        }
        let ip = Ipv6Packet::new_checked(f.get(14..)?).ok()?;
        let body = f.get(54..54 + usize::from(ip.payload_len()))?;
        Some((ip, body))
    }

    /// An ICMPv6 echo (request, or reply) from `src` to `dst`.
    fn echo6(mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, request: bool) -> Vec<u8> {
        let data = b"meshd dual-stack ping";
        let repr = if request {
            Icmpv6Repr::EchoRequest {
                ident: 7,
                seq_no: 1,
                data,
            }
        } else {
            Icmpv6Repr::EchoReply {
                ident: 7,
                seq_no: 1,
                data,
            }
        };
        testkit::icmpv6_frame(mac, tasks_mac(), src, dst, 64, &repr)
    }

    /// The echo in an IPv6 frame, its checksum checked: (source, destination, request?).
    fn echo_of(f: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr, bool)> {
        let (ip, body) = payload6(f)?;
        let icmp = Icmpv6Packet::new_checked(body).ok()?;
        if ip.next_header() != IpProtocol::Icmpv6
            || !icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr())
        {
            return None;
        }
        let request = match Icmpv6Repr::parse(
            &ip.src_addr(),
            &ip.dst_addr(),
            &icmp,
            &ChecksumCapabilities::default(),
        )
        .ok()?
        {
            Icmpv6Repr::EchoRequest { data, .. } | Icmpv6Repr::EchoReply { data, .. }
                if data == b"meshd dual-stack ping" =>
            {
                icmp.msg_type() == Icmpv6Message::EchoRequest
            }
            _ => return None,
        };
        Some((ip.src_addr(), ip.dst_addr(), request))
    }

    /// cli.1's segment with `flags` and sequence number `seq` from port `sport` to the VIP's
    /// twin, port 80.
    fn to_vip6(sport: u16, flags: u8, seq: u32) -> Vec<u8> {
        testkit::tcp6_frame(
            CLI_MAC,
            tasks_mac(),
            twin(CLI),
            sport,
            twin(VIP),
            80,
            flags,
            seq,
        )
    }

    /// cli.1's SYN from port `sport` to the VIP's twin, port 80.
    fn syn6(sport: u16) -> Vec<u8> {
        to_vip6(sport, SYN, 1)
    }

    /// A task's IPv4 connection to the VIP and its IPv6 one to the VIP's twin from the same
    /// source port are two flows (the twin's translation gives both the same IPv4 5-tuple):
    /// each balanced on its own, the IPv6 one marked with the client's twin, the IPv4 one
    /// not, and a RST that ends one leaves the other forwarded by its own flow.
    #[test]
    fn an_ipv4_and_an_ipv6_connection_from_one_port_to_a_vip_are_two_flows() {
        let (t2, mut p2) = on("n2");
        let sport = 40300;
        let syn4 = testkit::tcp_frame(CLI_MAC, tasks_mac(), CLI, sport, VIP, 80, SYN, 1, 0, b"");
        for (f, what) in [(syn4.clone(), "IPv4"), (syn6(sport), "IPv6")] {
            let (v, _) = run(&mut p2, &t2, PortId::Tasks, &f);
            assert!(matches!(v, Verdict::Tx(_)), "{what}: {v:?}");
        }
        assert_eq!(p2.stats.new_flows, 2, "a flow each");
        let k4 = FlowKey::new(TCP, ipkey(CLI), sport, ipkey(VIP), 80);
        let flow_of = |p: &mut Pipeline, k: &FlowKey| {
            let (id, _) = p.flows.lookup(k, k.hash())?;
            Some(p.flows.get(id).client6())
        };
        assert_eq!(flow_of(&mut p2, &k4), Some([0; 16]), "the IPv4 flow");
        assert_eq!(
            flow_of(&mut p2, &k4.in_family(true)),
            Some(twin(CLI).octets()),
            "the IPv6 flow, marked with the client's twin"
        );
        // The IPv4 connection ends (the client's RST); the IPv6 one goes on by its flow.
        let rst4 = testkit::tcp_frame(
            CLI_MAC,
            tasks_mac(),
            CLI,
            sport,
            VIP,
            80,
            testkit::tcp_flags::RST,
            2,
            0,
            b"",
        );
        let (v, _) = run(&mut p2, &t2, PortId::Tasks, &rst4);
        assert!(matches!(v, Verdict::Tx(_)), "{v:?}");
        let (v, _) = run(&mut p2, &t2, PortId::Tasks, &to_vip6(sport, ACK, 2));
        assert!(matches!(v, Verdict::Tx(_)), "{v:?}");
        assert_eq!(p2.stats.new_flows, 2);
        assert!(flow_of(&mut p2, &k4.in_family(true)).is_some());
    }

    #[test]
    fn a_tasks_ipv6_connection_to_a_vip_twin_is_balanced_and_stays_ipv6_end_to_end() {
        let (t2, mut p2) = on("n2");
        let (t3, mut p3) = on("n3");
        let mut seen = BTreeSet::new();
        for sport in 40000..40064 {
            let syn = syn6(sport);
            let (v, out) = run(&mut p2, &t2, PortId::Tasks, &syn);
            // The task's answer and what comes back to the client.
            let back = match v {
                // web.1, beside the client: hairpin NAT, the client masqueraded to the
                // gateway's twin, as for IPv4.
                Verdict::Tx(PortId::Tasks) => {
                    let s = tcp6(&out).expect("IPv6 to web.1, checksum right");
                    assert_eq!((s.dst_mac, s.dst, s.dport), (WEB1_MAC, twin(WEB1), 80));
                    assert_eq!(s.src, twin(GW));
                    seen.insert("web.1");
                    let synack = testkit::tcp6_frame(
                        WEB1_MAC,
                        tasks_mac(),
                        twin(WEB1),
                        80,
                        s.src,
                        s.sport,
                        SYN | ACK,
                        9,
                    );
                    let (v, back) = run(&mut p2, &t2, PortId::Tasks, &synack);
                    assert_eq!(v, Verdict::Tx(PortId::Tasks));
                    back
                }
                // web.2 on n3: VXLAN, the inner frame IPv6 as the task sent it.
                Verdict::Tx(PortId::Uplink) => {
                    let (vni, inner) = testkit::decap(&out).expect("VXLAN over IPv4");
                    assert_eq!(vni, 4097);
                    let s = tcp6(inner).expect("inner IPv6, checksum right");
                    assert_eq!(
                        (s.src, s.sport, s.dst, s.dport, s.flags),
                        (twin(CLI), sport, twin(WEB2), 80, SYN)
                    );
                    seen.insert("web.2");
                    let (v, got) = run(&mut p3, &t3, PortId::Uplink, &out);
                    assert_eq!(v, Verdict::Tx(PortId::Tasks));
                    let g = tcp6(&got).expect("IPv6 to web.2");
                    assert_eq!((g.dst_mac, g.src, g.dst), (WEB2_MAC, twin(CLI), twin(WEB2)));
                    let synack = testkit::tcp6_frame(
                        WEB2_MAC,
                        tasks_mac(),
                        twin(WEB2),
                        80,
                        twin(CLI),
                        sport,
                        SYN | ACK,
                        9,
                    );
                    let (v, over) = run(&mut p3, &t3, PortId::Tasks, &synack);
                    assert_eq!(v, Verdict::Tx(PortId::Uplink));
                    let (_, inner) = testkit::decap(&over).unwrap();
                    let b = tcp6(inner).expect("the answer, inner IPv6");
                    assert_eq!((b.src, b.dst), (twin(WEB2), twin(CLI)));
                    let (v, back) = run(&mut p2, &t2, PortId::Uplink, &over);
                    assert_eq!(v, Verdict::Tx(PortId::Tasks));
                    back
                }
                v => panic!("{v:?}"),
            };
            let h = tcp6(&back).expect("the SYN-ACK to the client, IPv6");
            assert_eq!(
                (h.dst_mac, h.src, h.sport, h.dst, h.dport, h.flags),
                (CLI_MAC, twin(VIP), 80, twin(CLI), sport, SYN | ACK)
            );
        }
        assert_eq!(seen.len(), 2, "both tasks picked: {seen:?}");
        // The same task's IPv4 stays IPv4.
        let syn = testkit::tcp_frame(CLI_MAC, tasks_mac(), CLI, 50000, VIP, 80, SYN, 1, 0, b"");
        let (v, out) = run(&mut p2, &t2, PortId::Tasks, &syn);
        let inner = match v {
            Verdict::Tx(PortId::Uplink) => testkit::decap(&out).unwrap().1.to_vec(),
            Verdict::Tx(PortId::Tasks) => out,
            v => panic!("{v:?}"),
        };
        assert_eq!(testkit::eth(&inner).unwrap().2, 0x0800);
        assert!(testkit::parse_ipv4_tcp(&inner).is_some());
        assert_eq!(p2.stats.total_drops(), 0);
        assert_eq!(p3.stats.total_drops(), 0);
    }

    /// `conn ls` shows a dual-stack task's connections to a VIP's twin by their IPv6 addresses
    /// (the flow is made in IPv4), `--client` with an IPv6 prefix finds them, and `conn rm`
    /// resets them in IPv6, which the task's IPv6 socket takes (an IPv4 RST it would ignore).
    #[test]
    fn a_tasks_ipv6_connections_to_a_vip_are_listed_and_reset_in_ipv6() {
        use crate::pipeline::tests::{conn_job, serve_all};
        use ctl::proto::ConnFilter;
        let (t2, mut p2) = on("n2");
        // IPv6 SYNs until both web.1 (hairpin, on n2) and web.2 (n3) are picked, then one
        // connection over IPv4.
        let mut picked = std::collections::BTreeMap::new();
        let mut sport = 40000;
        while picked.len() < 2 {
            sport += 1;
            assert!(sport < 40100, "both tasks picked");
            let syn = syn6(sport);
            match run(&mut p2, &t2, PortId::Tasks, &syn).0 {
                Verdict::Tx(PortId::Tasks) => picked.insert("web.1", sport),
                Verdict::Tx(PortId::Uplink) => picked.insert("web.2", sport),
                v => panic!("{v:?}"),
            };
        }
        let syn = testkit::tcp_frame(CLI_MAC, tasks_mac(), CLI, 50000, VIP, 80, SYN, 1, 0, b"");
        run(&mut p2, &t2, PortId::Tasks, &syn);
        let six = u64::from(sport - 40000);
        assert_eq!(p2.flows.len() as u64, six + 1);

        let mut all = conn_job(&t2, ConnFilter::default(), false);
        serve_all(&mut p2, &mut all, 1);
        let conns: Vec<_> = all
            .rows()
            .iter()
            .map(|r| crate::conn::conn_of(&t2, 0, r, false))
            .collect();
        let sock6 = |a: Ipv4Addr, port| std::net::SocketAddr::from((twin(a), port));
        let sock4 = |a: Ipv4Addr, port| std::net::SocketAddr::from((a, port));
        for (task, addr, source) in [
            // web.1: hairpin, the client masqueraded to the gateway's twin.
            ("web.1", WEB1, None),
            // web.2: over VXLAN, the client's own address.
            ("web.2", WEB2, Some(CLI)),
        ] {
            let port = picked[task];
            let c = conns
                .iter()
                .find(|c| c.client == sock6(CLI, port))
                .unwrap_or_else(|| panic!("{task}'s connection listed by IPv6: {conns:?}"));
            assert_eq!(c.service_addr, sock6(VIP, 80));
            assert_eq!(c.task.as_deref(), Some(task));
            assert_eq!(c.task_addr, sock6(addr, 80));
            match source {
                Some(a) => assert_eq!(c.source, sock6(a, port)),
                None => assert_eq!(c.source.ip(), std::net::IpAddr::from(twin(GW))),
            }
        }
        let c4 = conns
            .iter()
            .find(|c| c.client == sock4(CLI, 50000))
            .expect("the IPv4 connection, by IPv4");
        assert_eq!(c4.service_addr, sock4(VIP, 80));
        assert!(c4.task_addr.is_ipv4() && c4.source.is_ipv4());

        // The client filter tells the families apart, as the listing shows them.
        let by = |client: &str| ConnFilter {
            client: Some(client.parse().unwrap()),
            ..ConnFilter::default()
        };
        let mut j = conn_job(&t2, by("fd00:10:1::/64"), false);
        serve_all(&mut p2, &mut j, 1);
        assert_eq!(j.matched(), six);
        let mut j = conn_job(&t2, by("10.0.1.0/24"), false);
        serve_all(&mut p2, &mut j, 1);
        assert_eq!(j.matched(), 1);

        // conn rm of the IPv6 ones: each client socket gets an IPv6 RST from the VIP's twin.
        let mut rm = conn_job(&t2, by(&format!("{}/128", twin(CLI))), true);
        serve_all(&mut p2, &mut rm, 2);
        assert_eq!(rm.removed(), six);
        let mut out = Burst::new();
        p2.maintain(&t2, 3, &mut Pool::new(256), &mut out);
        let mut reset: Vec<u16> = out
            .iter()
            .filter_map(|b| {
                let r = tcp6(b.data())?;
                assert_eq!(b.port, PortId::Tasks);
                assert_eq!(
                    (r.dst_mac, r.src, r.sport, r.dst),
                    (CLI_MAC, twin(VIP), 80, twin(CLI))
                );
                (r.flags & RST != 0).then_some(r.dport)
            })
            .collect();
        reset.sort_unstable();
        assert_eq!(
            reset,
            (40001..=sport).collect::<Vec<_>>(),
            "one IPv6 RST per connection"
        );
        assert_eq!(p2.stats.resets_sent, six);
        assert_eq!(p2.stats.resets_unsent, 0);
        assert_eq!(p2.flows.len(), 1, "the IPv4 connection stays");
    }

    /// On two workers, the worker a task's IPv6 SYN is handed to (the flow's owner) records
    /// the client's twin in the flow it makes, as one worker does.
    #[test]
    fn the_owner_of_a_tasks_ipv6_connection_records_its_twin_on_two_workers() {
        let (t, mut ps) = workers_of(&state(true), "n2", 2);
        for sport in 40000..40032u16 {
            let syn = syn6(sport);
            let input = vec![(
                usize::from(sport % 2),
                PacketBuf::from_frame(PortId::Tasks, &syn),
            )];
            crate::pipeline::tests::drive(&mut ps, &t, 10, input);
        }
        let mut flows = 0;
        for p in &ps {
            for id in p.flows.live_ids() {
                let f = p.flows.get(id);
                assert_eq!(f.client6(), twin(CLI).octets(), "{f:?}");
                flows += 1;
            }
        }
        assert_eq!(flows, 32);
        assert!(
            ps.iter().all(|p| !p.flows.is_empty()),
            "both workers own some"
        );
    }

    #[test]
    fn ping6_between_tasks_on_two_nodes_is_translated_both_ways() {
        let (t2, mut p2) = on("n2");
        let (t3, mut p3) = on("n3");
        let (v, out) = run(
            &mut p2,
            &t2,
            PortId::Tasks,
            &echo6(CLI_MAC, twin(CLI), twin(WEB2), true),
        );
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        let (_, inner) = testkit::decap(&out).unwrap();
        assert_eq!(echo_of(inner), Some((twin(CLI), twin(WEB2), true)));
        let (v, got) = run(&mut p3, &t3, PortId::Uplink, &out);
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        assert_eq!(echo_of(&got), Some((twin(CLI), twin(WEB2), true)));
        assert_eq!(testkit::eth(&got).unwrap().0, WEB2_MAC);
        let (v, over) = run(
            &mut p3,
            &t3,
            PortId::Tasks,
            &echo6(WEB2_MAC, twin(WEB2), twin(CLI), false),
        );
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        let (v, back) = run(&mut p2, &t2, PortId::Uplink, &over);
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        assert_eq!(echo_of(&back), Some((twin(WEB2), twin(CLI), false)));
        // Beside it: web.1 (untagged, as the client) shares its segment and answers itself,
        // but meshd carries the ping when the client sends it there.
        let (v, got) = run(
            &mut p2,
            &t2,
            PortId::Tasks,
            &echo6(CLI_MAC, twin(CLI), twin(WEB1), true),
        );
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        assert_eq!(echo_of(&got), Some((twin(CLI), twin(WEB1), true)));
        // The VIP's twin and the gateway's: handed to the host side as the IPv6 the task sent
        // (it answers in IPv6, `host::stateless`).
        for to in [VIP, GW] {
            let (v, host) = run(
                &mut p2,
                &t2,
                PortId::Tasks,
                &echo6(CLI_MAC, twin(CLI), twin(to), true),
            );
            assert_eq!(v, Verdict::Host(HostReason::MeshAddress), "{to}");
            assert_eq!(echo_of(&host), Some((twin(CLI), twin(to), true)), "{to}");
            assert_eq!(testkit::eth(&host).unwrap().1, CLI_MAC);
        }
        // From another node (out of VXLAN), the asker's own node answers: not handed over.
        let mut f = echo6([0; 6], twin(WEB2), twin(VIP), true);
        f[6..12].copy_from_slice(&tasks_mac());
        let vx = appnet_vxlan(13, 12, &f);
        let (v, _) = run(&mut p2, &t2, PortId::Uplink, &vx);
        assert_eq!(v, Verdict::Drop(DropReason::Ipv6Untranslated));
    }

    /// The advertisement in `f`: (target, destination, destination MAC, its link-layer
    /// address option, solicited).
    fn advert(f: &[u8]) -> (Ipv6Addr, Ipv6Addr, [u8; 6], Option<[u8; 6]>, bool) {
        let (ip, body) = payload6(f).unwrap();
        let icmp = Icmpv6Packet::new_checked(body).unwrap();
        assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
        assert_eq!(ip.hop_limit(), 255);
        let Ok(NdiscRepr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        }) = NdiscRepr::parse(&icmp)
        else {
            panic!("not an advertisement");
        };
        assert_eq!(ip.src_addr(), target_addr);
        let ll = lladdr.map(|l| <[u8; 6]>::try_from(l.as_bytes()).unwrap());
        let solicited = flags.contains(NdiscNeighborFlags::SOLICITED);
        (
            target_addr,
            ip.dst_addr(),
            testkit::eth(f).unwrap().0,
            ll,
            solicited,
        )
    }

    #[test]
    fn neighbor_discovery_on_the_tasks_side_is_answered_as_arp_is() {
        let (t2, mut p2) = on("n2");
        let mut ns = |mac, src, target| {
            run(
                &mut p2,
                &t2,
                PortId::Tasks,
                &testkit::neighbor_solicit(mac, src, target),
            )
        };
        for target in [VIP, GW, WEB2, Ipv4Addr::new(10, 0, 1, 200)] {
            let (v, out) = ns(CLI_MAC, twin(CLI), twin(target));
            assert_eq!(v, Verdict::Tx(PortId::Tasks), "{target}");
            assert_eq!(
                advert(&out),
                (twin(target), twin(CLI), CLI_MAC, Some(tasks_mac()), true)
            );
        }
        // Not for meshd: the asker itself, a task on its segment (which answers itself), an
        // address of another network or outside the prefix, duplicate address detection, a
        // link-local asker.
        let ll: Ipv6Addr = "fe80::21".parse().unwrap();
        for (src, target) in [
            (twin(CLI), twin(CLI)),
            (twin(CLI), twin(WEB1)),
            (twin(CLI), twin(Ipv4Addr::new(10, 0, 0, 2))),
            (twin(CLI), "fd00:99::a00:10c".parse().unwrap()),
            (Ipv6Addr::UNSPECIFIED, twin(VIP)),
            (ll, twin(VIP)),
        ] {
            let (v, _) = ns(CLI_MAC, src, target);
            assert_eq!(
                v,
                Verdict::Drop(DropReason::NdpIgnored),
                "{src} asks {target}"
            );
        }
        // A task asking as another: refused as its IPv4 would be.
        let (v, _) = ns(CLI_MAC, twin(WEB1), twin(VIP));
        assert_eq!(v, Verdict::Drop(DropReason::SpoofedSource));
        // RFC 4861's checks hold: a hop limit below 255 is a forwarded solicitation.
        let mut f = testkit::neighbor_solicit(CLI_MAC, twin(CLI), twin(VIP));
        f[14 + 7] = 254;
        let (v, _) = run(&mut p2, &t2, PortId::Tasks, &f);
        assert_eq!(v, Verdict::Drop(DropReason::BadNdp));
    }

    /// `ping -6 -s 4000` of another task's twin: the pieces of the ICMPv6 message go as they
    /// came (between twins no address changes), their hop limit one less at each node: into
    /// VXLAN to web.2's node n3, which gives them to web.2; to web.1 beside the client on n2.
    /// From a peer, a piece to a task that is not on the node (transit) is refused, and so is
    /// one whose hop limit has run out.
    #[test]
    fn an_icmpv6_message_in_pieces_between_tasks_goes_as_it_came() {
        let (t2, mut p2) = on("n2");
        let (t3, mut p3) = on("n3");
        let data = [7u8; 3000];
        let big = |to: Ipv4Addr| {
            let repr = Icmpv6Repr::EchoRequest {
                ident: 1,
                seq_no: 1,
                data: &data,
            };
            testkit::icmpv6_frame(CLI_MAC, tasks_mac(), twin(CLI), twin(to), 64, &repr)
        };
        let pieces = testkit::fragment6(&big(WEB2), 1450, 80);
        assert_eq!(pieces.len(), 3);
        let mut over = Vec::new();
        for piece in &pieces {
            let (v, out) = run(&mut p2, &t2, PortId::Tasks, piece);
            assert_eq!(v, Verdict::Tx(PortId::Uplink));
            let (vni, inner) = testkit::decap(&out).expect("VXLAN over IPv4");
            assert_eq!(vni, 4097);
            assert_eq!(inner[ETH + 7], 63, "the hop limit less one");
            assert_eq!(inner[12..ETH + 7], piece[12..ETH + 7]);
            assert_eq!(inner[ETH + 8..], piece[ETH + 8..], "as it came");
            let (v, got) = run(&mut p3, &t3, PortId::Uplink, &out);
            assert_eq!(v, Verdict::Tx(PortId::Tasks));
            assert_eq!(got[..6], WEB2_MAC);
            assert_eq!(got[ETH + 7], 62);
            assert_eq!(got[ETH + 8..], piece[ETH + 8..], "to web.2 as it came");
            over.push(out);
        }
        // Every piece the same way into VXLAN (one entropy port: ECMP keeps them together).
        let sport = |f: &Vec<u8>| f[ETH + 20..ETH + 22].to_vec();
        assert!(over.iter().all(|f| sport(f) == sport(&over[0])));
        // web.1, on n2 beside the client.
        for piece in testkit::fragment6(&big(WEB1), 1450, 81) {
            let (v, got) = run(&mut p2, &t2, PortId::Tasks, &piece);
            assert_eq!(v, Verdict::Tx(PortId::Tasks));
            assert_eq!((got[..6].to_vec(), got[ETH + 7]), (WEB1_MAC.to_vec(), 63));
            assert_eq!(got[ETH + 8..], piece[ETH + 8..]);
        }
        // From a peer (n3): n2 does not pass on a piece to web.2, which is not its task.
        let transit = appnet_vxlan(13, 12, &pieces[0]);
        let (v, _) = run(&mut p2, &t2, PortId::Uplink, &transit);
        assert_eq!(v, Verdict::Drop(DropReason::Ipv6Fragment));
        // A hop limit that ran out, from the task and from a peer.
        let mut spent = pieces[0].clone();
        spent[ETH + 7] = 1;
        let (v, _) = run(&mut p2, &t2, PortId::Tasks, &spent);
        assert_eq!(v, Verdict::Drop(DropReason::TtlExpired));
        let mut spent = over[0].clone();
        spent[vxlan::ENCAP_LEN + ETH + 7] = 1;
        let (v, _) = run(&mut p3, &t3, PortId::Uplink, &spent);
        assert_eq!(v, Verdict::Drop(DropReason::TtlExpired));
    }

    #[test]
    fn what_is_not_carried_is_dropped_by_reason() {
        let (t2, mut p2) = on("n2");
        let syn = |src, dst| testkit::tcp6_frame(CLI_MAC, tasks_mac(), src, 40000, dst, 80, SYN, 1);
        let outside: Ipv6Addr = "fd00:99::a00:10c".parse().unwrap();
        let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
            (
                "outside the prefix",
                syn(twin(CLI), outside),
                DropReason::NoIpv6,
            ),
            (
                "the twin of an address outside the network",
                syn(twin(CLI), twin(Ipv4Addr::new(192, 168, 1, 13))),
                DropReason::NoIpv6,
            ),
            (
                "not the task's twin",
                syn("fd00:99::a00:115".parse().unwrap(), twin(WEB2)),
                DropReason::UnknownSource,
            ),
            (
                "another task's twin",
                syn(twin(WEB1), twin(WEB2)),
                DropReason::SpoofedSource,
            ),
            (
                "an ICMPv6 error without an IPv4 form (parameter problem at a field)",
                testkit::icmpv6_frame(
                    CLI_MAC,
                    tasks_mac(),
                    twin(CLI),
                    twin(WEB2),
                    64,
                    &Icmpv6Repr::ParamProblem {
                        reason: Icmpv6ParamProblem::ErroneousHdrField,
                        pointer: 4,
                        header: Ipv6Repr {
                            src_addr: twin(WEB2),
                            dst_addr: twin(CLI),
                            next_header: IpProtocol::Udp,
                            payload_len: 8,
                            hop_limit: 64,
                        },
                        data: &[0; 8],
                    },
                ),
                DropReason::Ipv6Untranslated,
            ),
            (
                "a bad checksum",
                {
                    let mut f = syn(twin(CLI), twin(WEB2));
                    f[54 + 16] ^= 0x55;
                    f
                },
                DropReason::BadL4Checksum,
            ),
        ];
        for (what, f, want) in cases {
            let (v, _) = run(&mut p2, &t2, PortId::Tasks, &f);
            assert_eq!(v, Verdict::Drop(want), "{what}");
        }
        // UDP to the gateway's twin (DNS over IPv6): handed to the host side as it came, whose
        // resolver answers on the twin too (`host`).
        let dns = {
            let l = 8 + 12;
            testkit::ipv6_with(
                CLI_MAC,
                tasks_mac(),
                twin(CLI),
                twin(GW),
                64,
                IpProtocol::Udp,
                l,
                |b| {
                    b[..2].copy_from_slice(&5353u16.to_be_bytes());
                    b[2..4].copy_from_slice(&53u16.to_be_bytes());
                    b[4..6].copy_from_slice(&(l as u16).to_be_bytes());
                    let (s, d) = (IpAddress::Ipv6(twin(CLI)), IpAddress::Ipv6(twin(GW)));
                    UdpPacket::new_unchecked(b).fill_checksum(&s, &d);
                },
            )
        };
        let (v, host) = run(&mut p2, &t2, PortId::Tasks, &dns);
        assert_eq!(v, Verdict::Host(HostReason::MeshAddress));
        assert_eq!(host, dns);
        // An ICMPv6 message in pieces (`ping -6 -s 4000`) to a twin of the network that is no
        // task's, VIP's or gateway's: it is not translated (its checksum covers the whole
        // message, which no piece knows: RFC 7915 §5.2), and nothing would route it.
        let data = [7u8; 3000];
        let big = testkit::icmpv6_frame(
            CLI_MAC,
            tasks_mac(),
            twin(CLI),
            twin(Ipv4Addr::new(10, 0, 1, 99)),
            64,
            &Icmpv6Repr::EchoRequest {
                ident: 1,
                seq_no: 1,
                data: &data,
            },
        );
        for piece in testkit::fragment6(&big, 1450, 77) {
            let (v, _) = run(&mut p2, &t2, PortId::Tasks, &piece);
            assert_eq!(v, Verdict::Drop(DropReason::Ipv6Fragment));
        }
        // To the VIP's twin or the gateway's: to the host side as they came, which puts the
        // message together and answers it (`host`); once the source is checked.
        for to in [VIP, GW] {
            let big = testkit::icmpv6_frame(
                CLI_MAC,
                tasks_mac(),
                twin(CLI),
                twin(to),
                64,
                &Icmpv6Repr::EchoRequest {
                    ident: 1,
                    seq_no: 1,
                    data: &data,
                },
            );
            let pieces = testkit::fragment6(&big, 1450, 79);
            assert_eq!(pieces.len(), 3);
            for piece in &pieces {
                let (v, host) = run(&mut p2, &t2, PortId::Tasks, piece);
                assert_eq!(v, Verdict::Host(HostReason::MeshAddress), "{to}");
                assert_eq!(&host, piece, "{to}");
            }
            let mut forged = pieces[0].clone();
            forged[ETH + 8..ETH + 24].copy_from_slice(&twin(WEB1).octets());
            let (v, _) = run(&mut p2, &t2, PortId::Tasks, &forged);
            assert_eq!(v, Verdict::Drop(DropReason::SpoofedSource), "{to}");
        }
        // A first UDP piece without a checksum: IPv6 requires one.
        let mut first =
            testkit::fragment6(&udp6(CLI_MAC, twin(CLI), 1, twin(WEB2), 3000), 1450, 78)
                .swap_remove(0);
        first[ETH + 48 + 6..ETH + 48 + 8].copy_from_slice(&[0, 0]);
        let (v, _) = run(&mut p2, &t2, PortId::Tasks, &first);
        assert_eq!(v, Verdict::Drop(DropReason::BadL4Checksum));
        // A task on a network that is not dual-stack (web.1 on the ingress network), and a
        // mesh without any.
        let ingress6 = prefix().embed(Ipv4Addr::new(10, 0, 0, 11));
        let f = testkit::tcp6_frame(
            WEB1_MAC,
            tasks_mac(),
            ingress6,
            40000,
            twin(WEB2),
            80,
            SYN,
            1,
        );
        assert_eq!(
            run(&mut p2, &t2, PortId::Tasks, &f).0,
            Verdict::Drop(DropReason::NoIpv6)
        );
        let (t4, mut p4) = on_node(&state(false), "n2", 1, 0);
        let f = syn(twin(CLI), twin(WEB2));
        assert_eq!(
            run(&mut p4, &t4, PortId::Tasks, &f).0,
            Verdict::Drop(DropReason::NoIpv6)
        );
        // Out of VXLAN: IPv6 on a network that is not dual-stack, or from outside the prefix.
        let (t3, mut p3) = on("n3");
        let vx = |vni, inner: &[u8]| {
            testkit::vxlan_frame(
                Config::default().uplink_mac,
                Config::default().uplink_mac,
                Ipv4Addr::new(192, 168, 1, 12),
                Ipv4Addr::new(192, 168, 1, 13),
                50000,
                vni,
                inner,
            )
        };
        let inner = testkit::tcp6_frame(
            [0; 6],
            tasks_mac(),
            twin(CLI),
            40000,
            twin(WEB2),
            80,
            SYN,
            1,
        );
        let (v, _) = run(
            &mut p3,
            &t3,
            PortId::Uplink,
            &vx(model::INGRESS_VNI, &inner),
        );
        assert_eq!(v, Verdict::Drop(DropReason::NoIpv6));
        let inner =
            testkit::tcp6_frame([0; 6], tasks_mac(), outside, 40000, twin(WEB2), 80, SYN, 1);
        let (v, _) = run(&mut p3, &t3, PortId::Uplink, &vx(4097, &inner));
        assert_eq!(v, Verdict::Drop(DropReason::NoIpv6));
        // And what is carried still is.
        let inner = testkit::tcp6_frame(
            [0; 6],
            tasks_mac(),
            twin(CLI),
            40000,
            twin(WEB2),
            80,
            SYN,
            1,
        );
        let (v, got) = run(&mut p3, &t3, PortId::Uplink, &vx(4097, &inner));
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        assert!(tcp6(&got).is_some());
    }

    /// A UDP datagram over IPv6 to port 9 with `len` bytes of data, checksum filled in.
    fn udp6(mac: [u8; 6], src: Ipv6Addr, sport: u16, dst: Ipv6Addr, len: usize) -> Vec<u8> {
        udp6_to(mac, (src, sport), (dst, 9), len)
    }

    /// [`udp6`] to any port.
    fn udp6_to(
        mac: [u8; 6],
        (src, sport): (Ipv6Addr, u16),
        (dst, dport): (Ipv6Addr, u16),
        len: usize,
    ) -> Vec<u8> {
        let l = 8 + len;
        testkit::ipv6_with(mac, tasks_mac(), src, dst, 64, IpProtocol::Udp, l, |b| {
            b[..2].copy_from_slice(&sport.to_be_bytes());
            b[2..4].copy_from_slice(&dport.to_be_bytes());
            b[4..6].copy_from_slice(&(l as u16).to_be_bytes());
            for (i, x) in b[8..].iter_mut().enumerate() {
                *x = i as u8;
            }
            let (s, d) = (IpAddress::Ipv6(src), IpAddress::Ipv6(dst));
            UdpPacket::new_unchecked(b).fill_checksum(&s, &d);
        })
    }

    /// The ICMPv6 error `repr` a task (`mac`, `src`) sends to `dst` about `packet` (an IPv6
    /// frame it received), quoting as much of it as fits 1280 bytes.
    fn error6(mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, packet: &[u8], ty: u8) -> Vec<u8> {
        let ip = Ipv6Packet::new_checked(&packet[14..]).unwrap();
        let header = Ipv6Repr::parse(&ip).unwrap();
        let data = &packet[54..packet.len().min(14 + 1280 - 48)];
        let repr = match ty {
            1 => Icmpv6Repr::DstUnreachable {
                reason: Icmpv6DstUnreachable::PortUnreachable,
                header,
                data,
            },
            2 => Icmpv6Repr::PktTooBig {
                mtu: 1300,
                header,
                data,
            },
            3 => Icmpv6Repr::TimeExceeded {
                reason: smoltcp::wire::Icmpv6TimeExceeded::HopLimitExceeded,
                header,
                data,
            },
            _ => unreachable!(),
        };
        testkit::icmpv6_frame(mac, tasks_mac(), src, dst, 64, &repr)
    }

    /// An ICMPv6 error in `f`, its checksum checked: (source, destination, type, code, rest of
    /// header, the quoted packet).
    fn error_of(f: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr, u8, u8, u32, Vec<u8>)> {
        let (ip, body) = payload6(f)?;
        let icmp = Icmpv6Packet::new_checked(body).ok()?;
        if ip.next_header() != IpProtocol::Icmpv6
            || !icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr())
            || body[0] >= 128
        {
            return None;
        }
        let rest = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
        Some((
            ip.src_addr(),
            ip.dst_addr(),
            body[0],
            body[1],
            rest,
            body[8..].to_vec(),
        ))
    }

    #[test]
    fn a_tasks_icmpv6_errors_reach_a_task_on_another_node_as_icmpv6_quoting_what_it_sent() {
        let (t2, mut p2) = on("n2");
        let (t3, mut p3) = on("n3");
        for (ty, code, rest) in [(1, 4, 0), (2, 0, 1300), (3, 0, 0)] {
            // The client's datagram reaches web.2 on n3 as IPv6.
            let dgram = udp6(CLI_MAC, twin(CLI), 5353, twin(WEB2), 100);
            let (v, out) = run(&mut p2, &t2, PortId::Tasks, &dgram);
            assert_eq!(v, Verdict::Tx(PortId::Uplink));
            let (v, got) = run(&mut p3, &t3, PortId::Uplink, &out);
            assert_eq!(v, Verdict::Tx(PortId::Tasks));
            // web.2 answers with an error quoting it; inside VXLAN it is ICMPv6 too.
            let err = error6(WEB2_MAC, twin(WEB2), twin(CLI), &got, ty);
            let (v, over) = run(&mut p3, &t3, PortId::Tasks, &err);
            assert_eq!(v, Verdict::Tx(PortId::Uplink), "type {ty}");
            let (_, inner) = testkit::decap(&over).unwrap();
            let e = error_of(inner).expect("inner ICMPv6 error, checksum right");
            assert_eq!((e.2, e.3, e.4), (ty, code, rest), "type {ty} in VXLAN");
            // The client gets the error from web.2's twin, quoting, byte for byte, what web.2
            // received and quoted (its addresses, lengths and UDP checksum as they were).
            let (v, back) = run(&mut p2, &t2, PortId::Uplink, &over);
            assert_eq!(v, Verdict::Tx(PortId::Tasks), "type {ty}");
            assert_eq!(testkit::eth(&back).unwrap().0, CLI_MAC);
            let (src, dst, t, c, r, quote) = error_of(&back).expect("ICMPv6 error, checksum right");
            assert_eq!((src, dst, t, c, r), (twin(WEB2), twin(CLI), ty, code, rest));
            assert_eq!(quote, got[14..].to_vec(), "type {ty}: the quote");
        }
        assert_eq!(p2.stats.total_drops(), 0);
        assert_eq!(p3.stats.total_drops(), 0);
    }

    /// A task's port unreachable about a datagram a client sent to the VIP's twin reaches the
    /// client from the VIP's twin, quoting what the client sent (its twin and port, the VIP's
    /// twin and port, its UDP checksum): what its socket knows, so that it hears of it. From
    /// web.1 beside the client (which saw the gateway's twin) and from web.2 on n3 (through
    /// VXLAN both ways).
    #[test]
    fn a_tasks_unreachable_about_a_vip_datagram_reaches_the_client_about_the_vip() {
        let mut seen = BTreeSet::new();
        let (t2, mut p2) = on("n2");
        let (t3, mut p3) = on("n3");
        for (k, sport) in (40000..40008).enumerate() {
            let dgram = udp6_to(CLI_MAC, (twin(CLI), sport), (twin(VIP), 80), 40);
            let (v, out) = run(&mut p2, &t2, PortId::Tasks, &dgram);
            let back = match v {
                Verdict::Tx(PortId::Tasks) => {
                    seen.insert("web.1");
                    let err = error6(WEB1_MAC, twin(WEB1), twin(GW), &out, 1);
                    let (v, back) = run(&mut p2, &t2, PortId::Tasks, &err);
                    assert_eq!(v, Verdict::Tx(PortId::Tasks));
                    back
                }
                Verdict::Tx(PortId::Uplink) => {
                    seen.insert("web.2");
                    let (v, got) = run(&mut p3, &t3, PortId::Uplink, &out);
                    assert_eq!(v, Verdict::Tx(PortId::Tasks));
                    let err = error6(WEB2_MAC, twin(WEB2), twin(CLI), &got, 1);
                    let (v, over) = run(&mut p3, &t3, PortId::Tasks, &err);
                    assert_eq!(v, Verdict::Tx(PortId::Uplink));
                    let (v, back) = run(&mut p2, &t2, PortId::Uplink, &over);
                    assert_eq!(v, Verdict::Tx(PortId::Tasks));
                    back
                }
                v => panic!("{v:?}"),
            };
            assert_eq!(testkit::eth(&back).unwrap().0, CLI_MAC);
            let (src, dst, ty, code, _, quote) = error_of(&back).expect("ICMPv6, checksum right");
            assert_eq!((src, dst, ty, code), (twin(VIP), twin(CLI), 1, 4));
            let q = Ipv6Packet::new_checked(&quote[..]).expect("the quoted IPv6 header");
            assert_eq!((q.src_addr(), q.dst_addr()), (twin(CLI), twin(VIP)));
            let (u, sent) = (&quote[40..48], &dgram[ETH + 40..ETH + 48]);
            assert_eq!(
                u, sent,
                "the quoted UDP header: ports, length and checksum as sent"
            );
            assert_eq!(
                p2.stats.task_unreachable,
                k as u64 + 1,
                "judged by the flow's node"
            );
            assert_eq!(p2.flows.len(), 0, "the UDP flow ended (passive health)");
            assert_eq!(p2.stats.total_drops() + p3.stats.total_drops(), 0);
        }
        assert_eq!(seen.len(), 2, "both tasks picked: {seen:?}");
    }

    #[test]
    fn an_error_between_tasks_on_one_node_is_translated_there() {
        let (t2, mut p2) = on("n2");
        // Untagged web.1, on the client's segment, would answer it itself; meshd carries what
        // it is sent all the same.
        let dgram = udp6(CLI_MAC, twin(CLI), 5353, twin(WEB1), 40);
        let (v, got) = run(&mut p2, &t2, PortId::Tasks, &dgram);
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        let err = error6(WEB1_MAC, twin(WEB1), twin(CLI), &got, 1);
        let (v, back) = run(&mut p2, &t2, PortId::Tasks, &err);
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        let (src, dst, t, c, _, quote) = error_of(&back).expect("ICMPv6 error");
        assert_eq!((src, dst, t, c), (twin(WEB1), twin(CLI), 1, 4));
        assert_eq!(quote, got[14..].to_vec());
        assert_eq!(p2.stats.total_drops(), 0);
    }

    #[test]
    fn a_tasks_packet_over_the_networks_mtu_gets_packet_too_big_from_its_gateways_twin() {
        let (t2, mut p2) = on("n2");
        let mtu = 1450;
        // At the MTU: carried.
        let fits = udp6(CLI_MAC, twin(CLI), 5353, twin(WEB2), mtu - 48);
        assert_eq!(fits.len(), 14 + mtu);
        assert_eq!(
            run(&mut p2, &t2, PortId::Tasks, &fits).0,
            Verdict::Tx(PortId::Uplink)
        );
        // A byte more (a task whose own MTU is larger): packet too big, back on its segment.
        let big = udp6(CLI_MAC, twin(CLI), 5353, twin(WEB2), mtu - 47);
        let (v, back) = run(&mut p2, &t2, PortId::Tasks, &big);
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        assert_eq!(testkit::eth(&back).unwrap().0, CLI_MAC);
        let (src, dst, t, c, r, quote) = error_of(&back).expect("packet too big");
        assert_eq!((src, dst, t, c, r), (twin(GW), twin(CLI), 2, 0, mtu as u32));
        assert_eq!(back.len(), 14 + 1280, "as much as 1280 bytes hold");
        assert_eq!(quote[..], big[14..14 + 1280 - 48]);
        assert_eq!(p2.stats.drops[DropReason::TooBig as usize], 1);
        // Out of VXLAN, a frame over the MTU (a peer that did not check) is dropped.
        let (t3, mut p3) = on("n3");
        let inner = udp6([0; 6], twin(CLI), 5353, twin(WEB2), mtu - 47);
        let vx = appnet_vxlan(12, 13, &inner);
        assert_eq!(
            run(&mut p3, &t3, PortId::Uplink, &vx).0,
            Verdict::Drop(DropReason::TooBig)
        );
    }

    #[test]
    fn errors_that_cannot_be_translated_are_dropped_by_reason() {
        let (t2, mut p2) = on("n2");
        let dgram = udp6(WEB2_MAC, twin(WEB2), 9, twin(CLI), 20);
        let err = |f: &[u8]| error6(CLI_MAC, twin(CLI), twin(WEB2), f, 1);
        // Quoting a packet of another network, or of no address of the mesh.
        let other = udp6(
            WEB2_MAC,
            twin(WEB2),
            9,
            twin(Ipv4Addr::new(10, 0, 0, 21)),
            20,
        );
        let outside = udp6(WEB2_MAC, "fd00:99::1".parse().unwrap(), 9, twin(CLI), 20);
        // Quoting a piece of a datagram (a Fragment header after the IPv6 header).
        let piece =
            testkit::fragment6(&udp6(WEB2_MAC, twin(WEB2), 9, twin(CLI), 3000), 1450, 5).remove(0);
        for (what, f) in [
            ("other network", other),
            ("outside", outside),
            ("piece", piece),
        ] {
            let (v, _) = run(&mut p2, &t2, PortId::Tasks, &err(&f));
            assert_eq!(v, Verdict::Drop(DropReason::Ipv6Untranslated), "{what}");
        }
        // A destination unreachable code RFC 7915 does not map (5: source address failed
        // policy).
        let mut f = err(&dgram);
        f[54 + 1] = 5;
        let (s, d) = (twin(CLI), twin(WEB2));
        f[54 + 2..54 + 4].copy_from_slice(&[0, 0]);
        Icmpv6Packet::new_unchecked(&mut f[54..]).fill_checksum(&s, &d);
        let (v, _) = run(&mut p2, &t2, PortId::Tasks, &f);
        assert_eq!(v, Verdict::Drop(DropReason::Ipv6Untranslated));
        // A bad checksum is that, before anything.
        let mut f = err(&dgram);
        f[60] ^= 1;
        let (v, _) = run(&mut p2, &t2, PortId::Tasks, &f);
        assert_eq!(v, Verdict::Drop(DropReason::BadL4Checksum));
        // The good one goes.
        let (v, _) = run(&mut p2, &t2, PortId::Tasks, &err(&dgram));
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
    }

    /// What a task's kernel sends for a UDP datagram of 3,000 bytes on its network's 1450:
    /// three IPv6 pieces with identification `id`. The data, and the pieces.
    fn pieces6(mac: [u8; 6], from: (Ipv6Addr, u16), to: (Ipv6Addr, u16), id: u32) -> Pieces {
        pieces6_at(1450, mac, from, to, id)
    }

    /// [`pieces6`] on a network of MTU `mtu`.
    fn pieces6_at(
        mtu: usize,
        mac: [u8; 6],
        from: (Ipv6Addr, u16),
        to: (Ipv6Addr, u16),
        id: u32,
    ) -> Pieces {
        let whole = udp6_to(mac, from, to, 3000);
        let pieces = testkit::fragment6(&whole, mtu, id);
        assert_eq!(pieces.len(), 3);
        (whole[ETH + 48..].to_vec(), pieces)
    }

    type Pieces = (Vec<u8>, Vec<Vec<u8>>);

    /// A datagram put together from IPv6 pieces, its UDP checksum checked.
    #[derive(Debug)]
    struct Joined {
        src: (Ipv6Addr, u16),
        dst: (Ipv6Addr, u16),
        dst_mac: [u8; 6],
        id: u32,
        data: Vec<u8>,
    }

    /// The datagram the frames in `out` (to a task, or inside VXLAN) carry, in IPv6 pieces
    /// none over the overlay's MTU.
    fn joined6(out: &[(PortId, Vec<u8>)]) -> Joined {
        let inner: Vec<Vec<u8>> = out
            .iter()
            .map(|(port, f)| match port {
                PortId::Tasks => f.clone(),
                PortId::Uplink => testkit::decap(f).expect("VXLAN").1.to_vec(),
            })
            .collect();
        for f in &inner {
            assert!(f.len() <= ETH + 1450, "past the overlay's MTU: {}", f.len());
        }
        let (f, id) = testkit::reassemble6(&inner).expect("one datagram's IPv6 pieces");
        let (ip, body) = payload6(&f).expect("IPv6");
        let (s, d) = (
            IpAddress::Ipv6(ip.src_addr()),
            IpAddress::Ipv6(ip.dst_addr()),
        );
        let u = UdpPacket::new_checked(body).expect("UDP");
        assert!(u.verify_checksum(&s, &d), "the datagram's UDP checksum");
        Joined {
            src: (ip.src_addr(), u.src_port()),
            dst: (ip.dst_addr(), u.dst_port()),
            dst_mac: testkit::eth(&f).unwrap().0,
            id,
            data: u.payload().to_vec(),
        }
    }

    /// `workers` workers of `node`, and its table.
    /// Their spare buffers filled, for the pieces they hold.
    fn workers_of(s: &State, node: &str, workers: u16) -> (ServiceTable, Vec<Pipeline>) {
        let t = on_node(s, node, workers, 0).0;
        let mut pool = crate::buf::Pool::new(256);
        let ps = (0..workers)
            .map(|w| {
                let mut p = on_node(s, node, workers, w).1;
                p.maintain(&t, 1, &mut pool, &mut Burst::new());
                p
            })
            .collect();
        (t, ps)
    }

    /// Runs `frames` in (on `port`) through `ps` as `drive` does, the first on worker 0 and
    /// the rest on the last worker (so that, with two, the pieces of a datagram land on both):
    /// what went out; nothing dropped.
    fn through(
        ps: &mut [Pipeline],
        t: &ServiceTable,
        port: PortId,
        frames: &[&Vec<u8>],
        what: &str,
    ) -> Vec<(PortId, Vec<u8>)> {
        let last = ps.len() - 1;
        let input = frames
            .iter()
            .enumerate()
            .map(|(k, f)| {
                (
                    if k == 0 { 0 } else { last },
                    PacketBuf::from_frame(port, f),
                )
            })
            .collect();
        let (out, seen) = crate::pipeline::tests::drive(ps, t, 5, input);
        assert!(
            seen.iter().all(|v| !matches!(v, Verdict::Drop(_))),
            "{what}: {seen:?}"
        );
        for p in ps.iter() {
            let drops = crate::stats::by_reason(&DropReason::NAMES, &p.stats.drops);
            assert_eq!(p.stats.total_drops(), 0, "{what}: {drops:?}");
            assert_eq!(p.fragments(5), (0, 0), "{what}: done and forgotten");
        }
        out
    }

    /// The frames `over` (out of n2's uplink) through n3's workers `p3`: web.2 gets the
    /// datagram of `data` from `from` to its port 9, whole.
    fn web2_gets(
        p3: &mut [Pipeline],
        t3: &ServiceTable,
        over: &[(PortId, Vec<u8>)],
        from: (Ipv6Addr, u16),
        data: &[u8],
        what: &str,
    ) {
        let frames: Vec<_> = over.iter().map(|(_, f)| f).collect();
        let got = through(p3, t3, PortId::Uplink, &frames, what);
        assert!(got.iter().all(|(p, _)| *p == PortId::Tasks), "{what}");
        let j = joined6(&got);
        let want = (from, (twin(WEB2), 9), WEB2_MAC);
        assert_eq!((j.src, j.dst, j.dst_mac), want, "{what}");
        assert_eq!(j.data, data, "{what}");
    }

    /// A task's UDP datagram larger than its network's MTU, in IPv6 pieces to a task on
    /// another node: each piece goes as an IPv6 piece inside VXLAN and reaches the task as one,
    /// whatever their order and however many workers, and the pieces make the datagram again
    /// (its checksum right, the identification's low 16 bits kept: RFC 7915's IPv4 hop keeps
    /// no more).
    #[test]
    fn a_tasks_datagram_in_ipv6_pieces_reaches_a_task_on_another_node_whole() {
        let s = state(true);
        for workers in [1, 2] {
            for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
                let what = format!("{workers} workers, pieces in {order:?}");
                let (t2, mut p2) = workers_of(&s, "n2", workers);
                let (t3, mut p3) = workers_of(&s, "n3", workers);
                let from = (twin(CLI), 5353);
                let (data, pieces) = pieces6(CLI_MAC, from, (twin(WEB2), 9), 0x0102_0304);
                let frames: Vec<_> = order.iter().map(|&i| &pieces[i]).collect();
                let over = through(&mut p2, &t2, PortId::Tasks, &frames, &what);
                assert_eq!(over.len(), 3, "{what}");
                assert!(over.iter().all(|(p, _)| *p == PortId::Uplink), "{what}");
                let j = joined6(&over);
                assert_eq!(
                    (j.src, j.dst, j.id),
                    (from, (twin(WEB2), 9), 0x0304),
                    "{what}"
                );
                assert_eq!(j.data, data, "{what}");
                web2_gets(&mut p3, &t3, &over, from, &data, &what);
                let held: u64 = p2.iter().map(|p| p.stats.fragments_held).sum();
                assert_eq!(
                    held > 0,
                    order[0] != 0,
                    "{what}: pieces before the first held"
                );
            }
        }
    }

    /// The same, on an encrypted network (sealed pieces, opened once, the held ones handed
    /// over opened) and over an IPv6 underlay: the task gets the datagram whole.
    #[test]
    fn a_tasks_pieces_cross_sealed_and_over_an_ipv6_underlay() {
        for mesh in ["encrypted", "IPv6 underlay"] {
            let mut s = state(true);
            if mesh == "encrypted" {
                let key = ctl::Encryption::single(1, ctl::Secret([7; 32]));
                s.networks[1].encryption = Some(key);
            } else {
                for (n, last) in s.nodes.iter_mut().zip([0x11u16, 0x12, 0x13]) {
                    n.vtep = Some(Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, last).into());
                }
            }
            ctl::validate(&s).unwrap();
            for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
                let what = format!("{mesh}, pieces in {order:?}");
                let (t2, mut p2) = workers_of(&s, "n2", 2);
                let (t3, mut p3) = workers_of(&s, "n3", 2);
                for p in p2.iter().chain(&p3) {
                    for n in &s.nodes {
                        p.neighbors()
                            .learn(ipkey(n.vtep_key()), Config::default().uplink_mac);
                    }
                }
                let from = (twin(CLI), 5353);
                // Sealing, or IPv6's outer headers, take room: the network's MTU is smaller
                // (a piece over it would get packet too big).
                let mtu = usize::from(p2[0].mtu_of(t2.addr(CLI).map(|a| a.net)));
                assert!(mtu < 1450, "{what}: MTU {mtu}");
                let to = (twin(WEB2), 9);
                let (data, pieces) = pieces6_at(mtu, CLI_MAC, from, to, 0x0102_0304);
                let frames: Vec<_> = order.iter().map(|&i| &pieces[i]).collect();
                let over = through(&mut p2, &t2, PortId::Tasks, &frames, &what);
                assert!(over.iter().all(|(p, _)| *p == PortId::Uplink), "{what}");
                let cli = twin(CLI).octets();
                let sealed = mesh == "encrypted";
                for (_, f) in &over {
                    assert_eq!(f.windows(16).any(|w| w == cli), !sealed, "{what}");
                }
                web2_gets(&mut p3, &t3, &over, from, &data, &what);
            }
        }
    }

    /// A datagram in pieces to the VIP's twin is balanced as one (its pieces follow the first
    /// piece's flow, DNAT and all), and the task's answer in pieces comes back to the client in
    /// pieces from the VIP's twin, from web.1 beside the client (hairpin: from the gateway's
    /// twin) and from web.2 on n3 (through VXLAN both ways).
    #[test]
    fn a_datagram_in_pieces_to_a_vip_twin_is_balanced_and_answered_in_pieces() {
        let s = state(true);
        let (t2, mut p2) = workers_of(&s, "n2", 2);
        let (t3, mut p3) = workers_of(&s, "n3", 1);
        let mut seen = BTreeSet::new();
        for sport in 40000..40012 {
            let what = format!("from port {sport}");
            let from = (twin(CLI), sport);
            let (data, pieces) = pieces6(CLI_MAC, from, (twin(VIP), 80), u32::from(sport));
            let frames: Vec<_> = pieces.iter().rev().collect();
            let out = through(&mut p2, &t2, PortId::Tasks, &frames, &what);
            let answer = |mac, j: &Joined, id| pieces6(mac, j.dst, j.src, id);
            let back = match out[0].0 {
                PortId::Tasks => {
                    let j = joined6(&out);
                    assert_eq!(
                        (j.src.0, j.dst, j.dst_mac),
                        (twin(GW), (twin(WEB1), 80), WEB1_MAC)
                    );
                    assert_eq!(j.data, data, "{what}");
                    seen.insert("web.1");
                    let (_, reply) = answer(WEB1_MAC, &j, 7);
                    let frames: Vec<_> = reply.iter().collect();
                    through(&mut p2, &t2, PortId::Tasks, &frames, &what)
                }
                PortId::Uplink => {
                    let frames: Vec<_> = out.iter().map(|(_, f)| f).collect();
                    let got = through(&mut p3, &t3, PortId::Uplink, &frames, &what);
                    let j = joined6(&got);
                    assert_eq!(
                        (j.src, j.dst, j.dst_mac),
                        (from, (twin(WEB2), 80), WEB2_MAC)
                    );
                    assert_eq!(j.data, data, "{what}");
                    seen.insert("web.2");
                    let (_, reply) = answer(WEB2_MAC, &j, 7);
                    let frames: Vec<_> = reply.iter().collect();
                    let over = through(&mut p3, &t3, PortId::Tasks, &frames, &what);
                    let frames: Vec<_> = over.iter().map(|(_, f)| f).collect();
                    through(&mut p2, &t2, PortId::Uplink, &frames, &what)
                }
            };
            assert!(back.iter().all(|(p, _)| *p == PortId::Tasks), "{what}");
            let j = joined6(&back);
            assert_eq!((j.src, j.dst, j.dst_mac), ((twin(VIP), 80), from, CLI_MAC));
            assert_eq!(j.data.len(), 3000, "{what}");
        }
        assert_eq!(seen.len(), 2, "both tasks picked: {seen:?}");
    }

    /// A task's IPv4 and IPv6 datagrams to one task with one identification (an IPv6 piece
    /// keeps only its low 16 bits) are two datagrams: the IPv6 one's later pieces, held, are
    /// not taken for the IPv4 one's fragments.
    #[test]
    fn a_tasks_ipv4_and_ipv6_datagrams_with_one_identification_stay_apart() {
        let (t2, mut p2) = workers_of(&state(true), "n2", 1);
        let p2 = &mut p2[0];
        let from = (twin(CLI), 5353);
        let (data6, pieces) = pieces6(CLI_MAC, from, (twin(WEB2), 9), 0x7777_0304);
        let whole4 = testkit::udp_frame(CLI_MAC, tasks_mac(), CLI, 5353, WEB2, 9, &[5; 3000]);
        let frags = testkit::fragment(&whole4, 1450, 0x0304);
        let mut out = Vec::new();
        for f in [&pieces[1], &pieces[2]]
            .into_iter()
            .chain(&frags)
            .chain([&pieces[0]])
        {
            let mut burst = Burst::new();
            burst.push(PacketBuf::from_frame(PortId::Tasks, f));
            let mut v = Verdicts::new();
            p2.process(&t2, 5, &mut burst, &mut v);
            let extra = p2.take_extra().into_iter().map(|(b, v, _)| (b, v));
            for (b, v) in burst.drain(..).zip(v.iter().copied()).chain(extra) {
                match v {
                    Verdict::Tx(PortId::Uplink) => {
                        out.push(testkit::decap(b.data()).unwrap().1.to_vec());
                    }
                    Verdict::Consumed => {}
                    v => panic!("{v:?}"),
                }
            }
        }
        let (v4, v6): (Vec<_>, Vec<_>) = out
            .into_iter()
            .partition(|f| testkit::eth(f).unwrap().2 == 0x0800);
        let got4 = testkit::reassemble(&v4).expect("the IPv4 datagram's fragments");
        let u = testkit::parse_ipv4_udp(&got4).expect("UDP, checksum right");
        assert_eq!(u.payload, vec![5; 3000]);
        let v6: Vec<_> = v6.into_iter().map(|f| (PortId::Tasks, f)).collect();
        let j = joined6(&v6);
        assert_eq!((j.src, j.data), (from, data6));
        assert_eq!(p2.stats.total_drops(), 0);
    }

    /// Runs `buf` through `p` and gives it back, as the worker would keep it (a frame handed
    /// over goes to the other worker as it is).
    fn run_buf(p: &mut Pipeline, t: &ServiceTable, buf: PacketBuf) -> (Verdict, PacketBuf) {
        let mut burst = Burst::new();
        burst.push(buf);
        let mut v = Verdicts::new();
        p.process(t, 1, &mut burst, &mut v);
        (v[0], burst[0].clone())
    }

    #[test]
    fn a_converted_frame_handed_to_the_worker_that_owns_it_goes_out_as_ipv6() {
        let s = state(true);
        let mut w: Vec<_> = (0..2).map(|i| on_node(&s, "n2", 2, i)).collect();
        let mut handed = [false; 2];
        for sport in 40000..40032 {
            // From the task to the VIP (a flow, owned by one worker), and from web.2 to the
            // task (out of VXLAN).
            let to = syn6(sport);
            let inner = testkit::tcp6_frame(
                [0; 6],
                tasks_mac(),
                twin(WEB2),
                80,
                twin(CLI),
                sport,
                SYN | ACK,
                1,
            );
            let from = appnet_vxlan(13, 12, &inner);
            for (k, (port, f)) in [(PortId::Tasks, to), (PortId::Uplink, from)]
                .into_iter()
                .enumerate()
            {
                let (t, p) = &mut w[0];
                let (v, buf) = run_buf(p, t, PacketBuf::from_frame(port, &f));
                let (v, buf) = match v {
                    Verdict::Handoff(1) => {
                        // Handed over as it came: the owner turns it into IPv4 itself.
                        handed[k] = true;
                        assert!(!buf.v6);
                        assert_eq!(buf.data(), &f[..]);
                        let (t, p) = &mut w[1];
                        run_buf(p, t, buf)
                    }
                    v => (v, buf),
                };
                let out = buf.data();
                match port {
                    PortId::Tasks => {
                        let s = match v {
                            Verdict::Tx(PortId::Uplink) => tcp6(testkit::decap(out).unwrap().1),
                            Verdict::Tx(PortId::Tasks) => tcp6(out),
                            v => panic!("{v:?}"),
                        };
                        let s = s.expect("IPv6 out");
                        assert!([(twin(CLI), twin(WEB2)), (twin(GW), twin(WEB1))]
                            .contains(&(s.src, s.dst)));
                    }
                    PortId::Uplink => {
                        assert_eq!(v, Verdict::Tx(PortId::Tasks));
                        // From the VIP's twin when the SYN just before went to web.2.
                        let s = tcp6(out).unwrap();
                        assert!([twin(WEB2), twin(VIP)].contains(&s.src), "{s:?}");
                        assert_eq!((s.dst, s.dst_mac), (twin(CLI), CLI_MAC));
                    }
                }
            }
        }
        assert_eq!(
            handed, [true; 2],
            "some frames of each way went to worker 1"
        );
    }

    #[test]
    fn on_an_encrypted_dual_stack_network_ipv6_is_sealed_and_opened_once_across_workers() {
        let mut s = state(true);
        s.networks[1].encryption = Some(ctl::Encryption::single(1, ctl::Secret([7; 32])));
        let (t2, mut p2) = on_node(&s, "n2", 1, 0);
        let mut n3: Vec<_> = (0..2).map(|i| on_node(&s, "n3", 2, i)).collect();
        let mut seen = [false; 2];
        for sport in 40000..40032 {
            let syn = testkit::tcp6_frame(
                CLI_MAC,
                tasks_mac(),
                twin(CLI),
                sport,
                twin(WEB2),
                80,
                SYN,
                1,
            );
            let (v, wire) = run(&mut p2, &t2, PortId::Tasks, &syn);
            assert_eq!(v, Verdict::Tx(PortId::Uplink));
            // Sealed: the twins are nowhere in the frame on the wire.
            let cli = twin(CLI).octets();
            assert!(!wire.windows(16).any(|w| w == cli), "readable on the wire");
            let (t, p) = &mut n3[0];
            let (v, buf) = run_buf(p, t, PacketBuf::from_frame(PortId::Uplink, &wire));
            let (v, buf) = match v {
                Verdict::Handoff(1) => {
                    // Opened here, handed over opened and still IPv6: not opened twice.
                    seen[1] = true;
                    assert!(buf.opened && !buf.v6);
                    let (t, p) = &mut n3[1];
                    run_buf(p, t, buf)
                }
                v => {
                    seen[0] = true;
                    (v, buf)
                }
            };
            assert_eq!(v, Verdict::Tx(PortId::Tasks));
            let g = tcp6(buf.data()).expect("IPv6 to web.2");
            assert_eq!((g.src, g.sport, g.dst), (twin(CLI), sport, twin(WEB2)));
        }
        assert!(seen[1], "some were handed to the worker that owns them");
        assert_eq!(n3[0].1.stats.total_drops() + n3[1].1.stats.total_drops(), 0);
    }

    #[test]
    fn over_an_ipv6_underlay_a_tasks_ipv6_is_ipv6_inside_and_outside() {
        let mut s = state(true);
        for (n, last) in s.nodes.iter_mut().zip([0x11u16, 0x12, 0x13]) {
            n.vtep = Some(Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, last).into());
        }
        ctl::validate(&s).unwrap();
        let up = Config::default().uplink_mac;
        let node = |name| {
            let (t, p) = on_node(&s, name, 1, 0);
            for n in &s.nodes {
                p.neighbors().learn(ipkey(n.vtep_key()), up);
            }
            (t, p)
        };
        let ((t2, mut p2), (t3, mut p3)) = (node("n2"), node("n3"));
        let syn = testkit::tcp6_frame(
            CLI_MAC,
            tasks_mac(),
            twin(CLI),
            40000,
            twin(WEB2),
            80,
            SYN,
            1,
        );
        let (v, wire) = run(&mut p2, &t2, PortId::Tasks, &syn);
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        let outer = testkit::decap6(&wire).expect("VXLAN over IPv6");
        assert_eq!(outer.dst, Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x13));
        let inner = tcp6(outer.inner).expect("the task's IPv6 inside");
        assert_eq!((inner.src, inner.dst), (twin(CLI), twin(WEB2)));
        let (v, got) = run(&mut p3, &t3, PortId::Uplink, &wire);
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        let g = tcp6(&got).expect("IPv6 to web.2");
        assert_eq!((g.dst_mac, g.src, g.dst), (WEB2_MAC, twin(CLI), twin(WEB2)));
        assert_eq!(p2.stats.total_drops() + p3.stats.total_drops(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A network's constant checksum change (`twin_deltas`) is what summing the two
        /// pseudo-headers gives, for any two twins of any prefix, both ways.
        #[test]
        fn a_networks_twin_delta_is_the_pseudo_headers_change(
            hi in any::<u64>(), a in any::<u32>(), b in any::<u32>(), csum in any::<u16>()
        ) {
            // Any unique-local /64 (fd00::/8).
            let hi = (0xfd_u128 << 120) | (u128::from(hi & 0x00ff_ffff_ffff_ffff) << 64);
            use crate::pipeline::nat64::{pseudo_delta, words4, words6};
            let p = model::Ipv6Net { addr: Ipv6Addr::from(hi), prefix: 64 };
            let mut s = state(true);
            s.networks[1].subnet6 = Some(p);
            let t = ServiceTable::build(&s, "n2", 1).unwrap();
            let [to4, to6] = t.twin_deltas(1);
            let (a6, b6) = (p.embed(Ipv4Addr::from(a)).octets(), p.embed(Ipv4Addr::from(b)).octets());
            let same = |x: u16, y: u16| x == y || (x | y == 0xffff && x & y == 0);
            let want4 = pseudo_delta(&words6(&a6, &b6), &words4(a, b)).apply(csum);
            prop_assert!(same(to4.apply(csum), want4));
            let want6 = pseudo_delta(&words4(a, b), &words6(&a6, &b6)).apply(csum);
            prop_assert!(same(to6.apply(csum), want6));
            // A network that is not dual-stack has none.
            prop_assert!(t.twin_deltas(0)[0].is_zero());
        }

        /// Any change to a task's IPv6 frame, or to a VXLAN frame carrying one, is dropped
        /// with a reason or goes out as a readable frame; nothing panics.
        #[test]
        fn any_ipv6_of_a_task_is_carried_or_refused(
            at in 0usize..80,
            byte in any::<u8>(),
            uplink in any::<bool>(),
        ) {
            let (t, mut p) = on("n3");
            let inner = testkit::tcp6_frame([0; 6], tasks_mac(), twin(CLI), 40000, twin(WEB2), 80, SYN, 1);
            let mut f = if uplink {
                appnet_vxlan(12, 13, &inner)
            } else {
                testkit::tcp6_frame(WEB2_MAC, tasks_mac(), twin(WEB2), 80, twin(CLI), 40000, SYN | ACK, 1)
            };
            let off = if uplink { 50 } else { 0 };
            let i = (off + at).min(f.len() - 1);
            f[i] = byte;
            let port = if uplink { PortId::Uplink } else { PortId::Tasks };
            let (v, out) = run(&mut p, &t, port, &f);
            match v {
                Verdict::Tx(PortId::Tasks) => prop_assert!(testkit::eth(&out).is_some()),
                Verdict::Tx(PortId::Uplink) => prop_assert!(testkit::decap(&out).is_some()),
                _ => {}
            }
        }
    }
}
