//! Published ports over IPv6: a client's TCP or UDP to the node's IPv6 address (`--addr6`) on a
//! published port reaches the service's IPv4 tasks, as DPVS's NAT64 full-NAT does. Every such
//! flow is masqueraded (the task sees the network's ingress endpoint, as in Swarm's default
//! mode): a task has no IPv6 address to answer an IPv6 client on.
//!
//! The flow lives in the IPv4 flow table, with every other flow (its expiry, `conn ls`, `conn
//! rm`, the masquerade ports, a restart keeping it): its forward key holds a stand-in for the
//! client, an address of 240.0.0.0/4 hashed from the client's IPv6 address ([`stand_in`]), and
//! destination 0.0.0.0, which no IPv4 packet to this node carries; the client's address is kept
//! in the flow ([`crate::flow::Flow::client6`]) and checked on every packet, so two clients
//! that hash alike never share a flow (`ipv6_client_collision`). Its reverse key is the
//! ordinary masquerade one.
//!
//! A packet from the client is judged by its owner (steered by the stand-in, as an IPv4
//! client's by its address), looked up or balanced, then converted in place to IPv4 (RFC 7915
//! §5.1: its extension headers dropped, DF set, the time to live its hop limit) and goes the
//! IPv4 way: DNAT, MSS clamping, VXLAN to the task's node. A task's reply is rewritten by its
//! flow and converted back (RFC 7915 §4.1) when the flow's reverse egress says so
//! ([`Egress::Uplink6`]): IPv4 flows never come here.
//!
//! Sizes: a converted client packet is 20 bytes shorter, but may still be too big for the
//! overlay: the client gets an ICMPv6 packet too big with the overlay's MTU plus 20. A reply
//! grows by 20 bytes, which the uplink always has room for: an overlay's MTU is at least 50
//! under the uplink's, so whatever fits a task's network fits the uplink as IPv6 (TCP's MSS is
//! clamped to the overlay both ways, as for IPv4 clients). A reply that would not fit anyway is
//! dropped (`too_big`; meshd does not fragment IPv6). A task's fragmented reply goes on as
//! IPv6 fragments (RFC 7915 §4.1: a Fragment header with the same offset, flag and
//! identification; 28 bytes longer, still within the uplink), its later pieces following the
//! first by the fragment table; a fragmented UDP reply without a checksum is dropped
//! (`ipv6_fragment`): IPv6 needs one and no piece holds the whole datagram. A router's packet
//! too big about a reply (a link past the node narrower than the reply) reaches the task as
//! fragmentation needed ([`Pipeline::icmp6_from_client`]), so its TCP sends smaller segments.
//!
//! A client's datagram in pieces goes on the same way, piece by piece (RFC 7915 §5.1.1), by
//! the IPv4 fragment path ([`Self::published6_piece`]); nothing is reassembled.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv6Packet, Icmpv6Repr, Ipv6Address, Ipv6Packet, Ipv6Repr, TcpSeqNumber, IPV6_HEADER_LEN,
    IPV6_MIN_MTU,
};

use super::ipv6::{Frag6, L3v6};
use super::*;
use crate::fastmap::mix64;

/// The IPv4 stand-in of an IPv6 client's address in its flow's keys: an address of
/// 240.0.0.0/4 (reserved, never on the wire here) from a hash of the address. The same on every
/// node and across restarts, so a client's flows are balanced alike by every node (Maglev,
/// affinity) and adopted flows still match.
pub fn stand_in(client: &[u8; 16]) -> u32 {
    // Casts: the hash's low 28 bits.
    #[allow(clippy::cast_possible_truncation)]
    let h = hash6(client, 0x6e61_7436_3473_7464) as u32;
    0xf000_0000 | (h & 0x0fff_ffff)
}

/// A hash of an IPv6 client's address, seeded.
fn hash6(client: &[u8; 16], seed: u64) -> u64 {
    let [hi, lo] =
        [&client[..8], &client[8..]].map(|h| u64::from_be_bytes(h.try_into().unwrap_or([0; 8])));
    mix64(hi ^ mix64(lo ^ seed))
}

/// A second hash of an IPv6 client's address, beside its stand-in in the key of its
/// datagrams' pieces (`frag::FragKey`): two clients share one only if 60 bits of two hashes
/// match.
pub(super) fn frag_tag(client: &[u8; 16]) -> u32 {
    // Casts: the hash's high 32 bits.
    #[allow(clippy::cast_possible_truncation)]
    let h = (hash6(client, 0x6672_6167_7461_6736) >> 32) as u32;
    h
}

/// The checksum delta of replacing the pseudo-header's addresses `from` by `to` (16-bit words;
/// an IPv4 address is two, padded with zeros to eight).
pub(super) fn pseudo_delta(from: &[u16; 16], to: &[u16; 16]) -> checksum::Delta {
    let mut pairs = [(0u16, 0u16); 16];
    for (p, (&a, &b)) in pairs.iter_mut().zip(from.iter().zip(to)) {
        *p = (a, b);
    }
    checksum::Delta::new().of(&pairs)
}

pub(super) fn words6(src: &[u8; 16], dst: &[u8; 16]) -> [u16; 16] {
    let mut w = [0u16; 16];
    for (i, c) in src.chunks_exact(2).chain(dst.chunks_exact(2)).enumerate() {
        w[i] = u16::from_be_bytes([c[0], c[1]]);
    }
    w
}

// Casts: an IPv4 address's two 16-bit halves.
#[allow(clippy::cast_possible_truncation)]
pub(super) fn words4(src: u32, dst: u32) -> [u16; 16] {
    let mut w = [0u16; 16];
    w[..4].copy_from_slice(&[
        (src >> 16) as u16,
        src as u16,
        (dst >> 16) as u16,
        dst as u16,
    ]);
    w
}

/// Where the transport checksum of a `proto` header at `l4` is.
fn csum_at(proto: u8, l4: usize) -> usize {
    if proto == TCP {
        l4 + 16
    } else {
        l4 + 6
    }
}

impl Pipeline {
    /// An ICMPv6 error `h` from the uplink to the node's IPv6 address (from a router on the way
    /// to an IPv6 client: packet too big, unreachable, time exceeded) about a reply of a
    /// published port's flow: as [`Self::icmp_from_client`] does for IPv4 clients, once
    /// translated into ICMP (RFC 7915 §5.2: a packet too big becomes fragmentation needed, its
    /// MTU 20 bytes less, what the task's IPv4 packets may be to fit) between the addresses
    /// the flow knows the client's side by (the stand-in, 0.0.0.0), its quote the IPv4 reply
    /// they name. `None`: not about a flow of this node's (the worker that would own it
    /// judged).
    #[cold]
    #[inline(never)]
    pub(super) fn icmp6_from_client(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        h: &L3v6,
    ) -> Option<Result<Verdict, DropReason>> {
        let me = t.node_addr6?;
        // The quoted reply: its IPv6 header (no extension headers: meshd adds none but to
        // pieces, which are not whole enough to name a flow by) and its ports.
        let q = buf
            .data()
            .get(h.l4 + 8..h.end)?
            .get(..IPV6_HEADER_LEN + 4)?;
        let proto = q[6];
        if !(proto == TCP || proto == UDP) || q[8..24] != me.octets() {
            return None;
        }
        let mut client6 = [0u8; 16];
        client6.copy_from_slice(&q[24..40]);
        let port = |at: usize| u16::from_be_bytes([q[at], q[at + 1]]);
        let (published, cport) = (port(40), port(42));
        let standin = stand_in(&client6);
        if self.cfg.workers > 1 {
            if let Some(v) = self.handoff(self.published_owner(standin, cport)) {
                return Some(Ok(v));
            }
        }
        let key = FlowKey::new(proto, standin, cport, 0, published);
        let Some((id, Dir::Fwd)) = self.lookup_live(t, &key, key.hash()) else {
            return None;
        };
        let fl = self.flows.get(id);
        if fl.client6() != client6 {
            return None;
        }
        let a = *fl.action(Dir::Fwd);
        let v4 = |x: Ipv6Address| {
            if x == me {
                Some(0)
            } else {
                (x.octets() == client6).then_some(standin)
            }
        };
        let l3 = L3 {
            proto: ICMP,
            src: standin,
            dst: 0,
            sport: 0,
            dport: 0,
            flags: 0,
            ack: 0,
            l4: ETH + IPV4,
            frag: frag::Frag::Whole,
        };
        // Between the flow's client-side addresses, so its deltas hold for every header.
        let v = icmperr::error6_to_ipv4(buf, 0, h, (standin, 0), v4)
            .and_then(|()| error_by_flow(buf, &l3, &a))
            .and_then(|()| self.send(t, now, buf, a.dst, a.egress));
        if v.is_ok() {
            self.stats.icmp_to_task += 1;
        }
        Some(v)
    }

    /// TCP or UDP from an IPv6 client to the node's IPv6 address `me` (`h`, parsed): to a
    /// published port, balanced and sent on as IPv4; to any other port, the host side's closed
    /// port. Cold and out of line, as `ipv6`, so the IPv4 paths' code is as it was.
    #[cold]
    #[inline(never)]
    pub(super) fn published6(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        h: &L3v6,
    ) -> Result<Verdict, DropReason> {
        let f = buf.data();
        let l4 = f.get(h.l4..h.end).ok_or(DropReason::Truncated)?;
        let verify = self.cfg.verify_l4_checksums;
        // meshd's own sum (smoltcp's took a fifth of this path's instructions).
        let (s6, d6) = (h.src.octets(), h.dst.octets());
        let valid = |data: &[u8]| {
            let len = u32::try_from(data.len()).unwrap_or(0);
            checksum::verify(checksum::pseudo_v6(&s6, &d6, h.proto, len), data)
        };
        let (sport, dport, flags, ack) = if h.proto == TCP {
            let p = TcpPacket::new_checked(l4).map_err(|_| DropReason::BadL4Header)?;
            if verify && !valid(l4) {
                return Err(DropReason::BadL4Checksum);
            }
            let fl = l4.get(13).copied().unwrap_or(0);
            // Casts: the acknowledgement number's bits as TCP carries them.
            #[allow(clippy::cast_sign_loss)]
            let ack = p.ack_number().0 as u32;
            (p.src_port(), p.dst_port(), fl, ack)
        } else {
            let p = UdpPacket::new_checked(l4).map_err(|_| DropReason::BadL4Header)?;
            // A zero checksum is not "none" in IPv6 (smoltcp's check takes it as IPv4's).
            //= https://www.rfc-editor.org/rfc/rfc8200#section-8.1
            //# IPv6 receivers must discard UDP packets containing a zero checksum and should
            //# log the error.
            let datagram = l4.get(..usize::from(p.len())).unwrap_or(l4);
            if verify && (p.checksum() == 0 || !valid(datagram)) {
                return Err(DropReason::BadL4Checksum);
            }
            (p.src_port(), p.dst_port(), 0, 0)
        };
        if h.src.is_multicast() || h.src.is_unspecified() {
            return Err(DropReason::BadIpv6Header);
        }
        let client6 = h.src.octets();
        let mut l3 = L3 {
            proto: h.proto,
            src: stand_in(&client6),
            dst: 0,
            sport,
            dport,
            flags,
            ack,
            l4: 0,
            frag: frag::Frag::Whole,
        };
        let id = match self.flow6(t, now, buf, &l3, client6)? {
            Ok(id) => id,
            Err(v) => return Ok(v),
        };
        let fl = self.flows.get(id);
        let (a, slot) = (fl.fwd, fl.stats_slot(Dir::Fwd));
        // What it will be as IPv4, against where it goes.
        let v4_len = IPV4 + (h.end - h.l4);
        if ETH + v4_len > self.max_frame {
            if let Some(mtu) = self.mtu_to(t, a.dst, a.egress) {
                if v4_len > usize::from(mtu) {
                    self.task_stats.drop_at(slot);
                    return self.too_big6(
                        now,
                        buf,
                        h,
                        l3.src,
                        (h.dst, PortId::Uplink),
                        u32::from(mtu) + 20,
                    );
                }
            }
        }
        l3.l4 = to_ipv4::<false>(buf, 0, h, l3.src, 0)?;
        self.forward(t, now, buf, &l3, id, Dir::Fwd)
    }

    /// The flow of an IPv6 client's packet `l3` (its stand-in's; from `client6`) to a
    /// published port, found or opened; or what to do instead: the host side's closed port,
    /// or the worker that owns it (steered as it arrived, the owner converts it).
    #[inline(always)]
    fn flow6(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &PacketBuf,
        l3: &L3,
        client6: [u8; 16],
    ) -> Result<Result<u32, Verdict>, DropReason> {
        let proto = if l3.proto == TCP {
            IpProtocol::Tcp
        } else {
            IpProtocol::Udp
        };
        let Some(p) = t.published(proto, l3.dport) else {
            return Ok(Err(Verdict::Host(HostReason::Ipv6Port)));
        };
        let p = *p;
        if let Some(v) = self.handoff(self.published_owner(l3.src, l3.sport)) {
            return Ok(Err(v));
        }
        // The hop limit.
        if buf.data().get(ETH + 7).is_none_or(|&hops| hops <= 1) {
            return Err(DropReason::TtlExpired);
        }
        let key = l3.key();
        let hash = key.hash();
        match self.lookup_live(t, &key, hash) {
            Some((id, Dir::Fwd)) => {
                if self.flows.get(id).client6() != client6 {
                    return Err(DropReason::Ipv6ClientCollision);
                }
                Ok(Ok(id))
            }
            // No reverse key has destination 0.0.0.0.
            Some((_, Dir::Rev)) => Err(DropReason::NoRoute),
            None => self.open_ingress(t, now, buf, l3, key, hash, p, Some(client6)),
        }
    }

    /// A piece of an IPv6 client's TCP or UDP datagram to the node's IPv6 address (`h`, parsed,
    /// with its Fragment header `piece`). It takes the IPv4 fragment path (`fragment`: the
    /// datagram's collector, the fragment table, held until its first piece comes), keyed by
    /// the client's stand-in and the 32-bit identification. The first piece finds or opens the
    /// flow as a whole packet does; each goes on as an IPv4 fragment (RFC 7915 §5.1.1: the
    /// same offset and more-fragments flag, the identification's low 16 bits, no DF, so it is
    /// fragmented again if the overlay needs it). Its transport checksum, over the whole
    /// datagram, is the task's to check, as an IPv4 fragment's is; a first UDP piece without
    /// one is refused (RFC 8200 §8.1).
    #[cold]
    #[inline(never)]
    pub(super) fn published6_piece(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        h: &L3v6,
        piece: Frag6,
    ) -> Result<Verdict, DropReason> {
        let data = buf.data().get(h.l4..h.end).ok_or(DropReason::Truncated)?;
        // What `parse_fragment` reads of the IPv4 header the piece will have.
        let mut v4 = [0u8; IPV4];
        v4[6..8].copy_from_slice(&piece.ff.to_be_bytes());
        v4[9] = h.proto;
        let head = frag::parse_fragment(&v4, data)?;
        if h.src.is_multicast() || h.src.is_unspecified() {
            return Err(DropReason::BadIpv6Header);
        }
        // Every piece: a later one's time to live is not looked at again.
        if h.hop_limit <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let client = h.src.octets();
        let l3 = L3 {
            proto: h.proto,
            src: stand_in(&client),
            dst: 0,
            sport: head.sport,
            dport: head.dport,
            flags: head.flags,
            ack: head.ack,
            l4: h.l4,
            frag: head.frag,
        };
        // Checked by `parse_fragment`: the piece ends at or before byte 65,535.
        let len = u16::try_from(data.len()).map_err(|_| DropReason::BadFragment)?;
        self.fragment(t, now, buf, l3, frag::Way::Nat64 { client, piece, len })
    }

    /// The first piece of an IPv6 client's datagram (`l3`, from `client`), run by its collector
    /// (`fragment`): its flow found or opened, then on as an IPv4 fragment.
    #[cold]
    #[inline(never)]
    pub(super) fn published6_first(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        mut l3: L3,
        client: [u8; 16],
    ) -> Result<Verdict, DropReason> {
        // A later piece has no ports to find a flow by: its first piece's flow leads it
        // (`frag::Route`), and no other route sends it here.
        if l3.frag != frag::Frag::First {
            return Err(DropReason::NoRoute);
        }
        // Here, so that the datagram's later pieces are dropped with it.
        if l3.proto == UDP && buf.data().get(l3.l4 + 6..l3.l4 + 8) == Some(&[0, 0][..]) {
            return Err(DropReason::BadL4Checksum);
        }
        let id = match self.flow6(t, now, buf, &l3, client)? {
            Ok(id) => id,
            Err(v) => return Ok(v),
        };
        l3.l4 = piece_to_ipv4(buf, l3.src)?;
        self.forward(t, now, buf, &l3, id, Dir::Fwd)
    }

    /// Answers the IPv6 packet in `buf` (`h`, from the sender whose IPv4 address or stand-in
    /// is `src4`) with an ICMPv6 packet too big in its place (RFC 4443 §3.2: the MTU it may send,
    /// `mtu`, quoting as much of it as fits 1280 bytes), `from` an address of meshd's out of
    /// `port` (back where it came from), at most a burst per sender per 100 ms.
    #[cold]
    #[inline(never)]
    pub(super) fn too_big6(
        &mut self,
        now: u32,
        buf: &mut PacketBuf,
        h: &L3v6,
        src4: u32,
        (from, port): (Ipv6Address, PortId),
        mtu: u32,
    ) -> Result<Verdict, DropReason> {
        if !self.icmp_limit.allow(src4, now) {
            return Err(DropReason::TooBig);
        }
        let f = buf.data();
        let whole = f.get(ETH..h.end).ok_or(DropReason::TooBig)?;
        let header = Ipv6Packet::new_checked(whole)
            .ok()
            .and_then(|p| Ipv6Repr::parse(&p).ok())
            .ok_or(DropReason::TooBig)?;
        // Quote up to the minimum MTU: 40 + 8 + 40 + the data.
        let quote = whole.len().clamp(IPV6_HEADER_LEN, IPV6_MIN_MTU - 48);
        let data = whole.get(IPV6_HEADER_LEN..quote).unwrap_or(&[]);
        let repr = Icmpv6Repr::PktTooBig { mtu, header, data };
        let smac = match port {
            PortId::Uplink => self.cfg.uplink_mac,
            PortId::Tasks => self.cfg.tasks_mac,
        };
        let macs = (smac, EthernetFrame::new_unchecked(f).src_addr().0);
        let mut out = [0u8; ETH + IPV6_MIN_MTU];
        let n = reply::icmpv6_frame(&mut out, macs, from, h.src, 64, &repr)
            .ok_or(DropReason::TooBig)?;
        buf.fill(&out[..n]);
        self.stats.drop(DropReason::TooBig);
        self.stats.icmp_frag_needed += 1;
        Ok(Verdict::Tx(port))
    }

    /// `forward` of a reverse packet of an IPv6 client's flow (`a`, its action; `id`, its flow):
    /// rewritten as any flow's, then turned into IPv6 from the node's IPv6 address to the
    /// client, out of the uplink to `mac`.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward6(
        &mut self,
        t: &ServiceTable,
        buf: &mut PacketBuf,
        l3: &L3,
        a: &Action,
        slot: u16,
        id: u32,
        mac: [u8; 6],
    ) -> Result<Verdict, DropReason> {
        if l3.frag != frag::Frag::Whole {
            return self.forward6_piece(t, buf, l3, a, slot, id, mac);
        }
        self.convert6(t, buf, l3, a, (slot, id, mac), None)
    }

    /// [`Self::forward6`] of a fragment of the task's datagram: it goes on as one, behind a
    /// Fragment header (RFC 7915 §4.1) with the same offset and more-fragments flag and its
    /// IPv4 identification. Apart, so that whole packets pay nothing for it.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn forward6_piece(
        &mut self,
        t: &ServiceTable,
        buf: &mut PacketBuf,
        l3: &L3,
        a: &Action,
        slot: u16,
        id: u32,
        mac: [u8; 6],
    ) -> Result<Verdict, DropReason> {
        let f = buf.data();
        let ff = u16::from_be_bytes([f[ETH + 6], f[ETH + 7]]);
        let ident = u16::from_be_bytes([f[ETH + 4], f[ETH + 5]]);
        let h = fragment_header(l3.proto, ff, ident);
        self.convert6(t, buf, l3, a, (slot, id, mac), Some(h))
    }

    /// The body of [`Self::forward6`]: `piece`, the Fragment header of a fragment.
    #[inline(always)]
    fn convert6(
        &mut self,
        t: &ServiceTable,
        buf: &mut PacketBuf,
        l3: &L3,
        a: &Action,
        (slot, id, mac): (u16, u32, [u8; 6]),
        piece: Option<[u8; FRAGMENT_HEADER_LEN]>,
    ) -> Result<Verdict, DropReason> {
        let Some(me) = t.node_addr6 else {
            return Err(self.blame(slot, DropReason::NoIpv6));
        };
        let f = buf.data();
        let total = usize::from(u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]));
        let payload = total.saturating_sub(l3.l4 - ETH);
        let ext = if piece.is_some() {
            FRAGMENT_HEADER_LEN
        } else {
            0
        };
        if IPV6_HEADER_LEN + ext + payload > usize::from(self.cfg.uplink_mtu) {
            // Blamed on the flow's task by `process` or, for a later fragment, by `route`.
            return Err(DropReason::TooBig);
        }
        self.task_stats.add(slot, 1, buf.len() as u64, 0);
        // A later fragment has no transport header: only its IPv4 header, replaced, would change.
        if piece.is_none() || l3.frag != frag::Frag::Later {
            nat::rewrite(buf.data_mut(), ETH, l3.l4, l3.proto, a);
            if l3.proto == TCP && l3.flags & flow::tcp::SYN != 0 {
                self.clamp_mss(t, buf, l3, a, Dir::Rev);
            }
        }
        let client = self.flows.get(id).client6();
        to_ipv6(
            buf,
            l3,
            payload,
            (me.octets(), client),
            piece,
            (self.cfg.uplink_mac, mac),
            None,
        )
        .map_err(|r| match r {
            DropReason::Ipv6Fragment => self.blame(slot, r),
            r => r,
        })?;
        Ok(Verdict::Tx(PortId::Uplink))
    }

    /// Builds a TCP RST to the IPv6 client of flow `f` (whose reverse egress is the uplink to
    /// `mac`), as from the published port it connected to.
    pub(super) fn reset6(
        &self,
        t: &ServiceTable,
        f: &Flow,
        mac: [u8; 6],
        b: &mut PacketBuf,
    ) -> bool {
        let Some(me) = t.node_addr6 else {
            return false;
        };
        let client = Ipv6Address::from(f.client6());
        let rev = f.rev;
        // Casts: the sequence number's bits as TCP carries them.
        #[allow(clippy::cast_possible_wrap)]
        let rst = reply::rst_repr(
            rev.sport,
            rev.dport,
            TcpSeqNumber(f.client_ack as i32),
            None,
        );
        let caps = ChecksumCapabilities::default();
        let macs = (self.cfg.uplink_mac, mac);
        let n = reply::ipv6_frame(
            b.room_mut(),
            macs,
            me,
            client,
            64,
            IpProtocol::Tcp,
            rst.buffer_len(),
            |x| {
                rst.emit(
                    &mut TcpPacket::new_unchecked(x),
                    &me.into(),
                    &client.into(),
                    &caps,
                );
            },
        );
        let Some(n) = n else { return false };
        b.set_len(n);
        b.port = PortId::Uplink;
        true
    }
}

/// Turns the piece of an IPv6 client's datagram in `buf` into an IPv4 fragment from its
/// stand-in `src` to 0.0.0.0, as [`to_ipv4`] does. Returns where its data now is.
pub(super) fn piece_to_ipv4(buf: &mut PacketBuf, src: u32) -> Result<usize, DropReason> {
    let h = super::ipv6::parse_ipv6(buf.data(), ETH)?;
    to_ipv4::<true>(buf, 0, &h, src, 0)
}

/// Turns the IPv6 packet `h` in `buf` (its Ethernet header at `base`: 0, or behind VXLAN's
/// outer headers) into IPv4 from `src` to `dst` in place (RFC 7915 §5.1): its extension
/// headers dropped, DF set, the time to live its hop limit, the transport checksum moved to
/// the IPv4 pseudo-header; an ICMPv6 echo becomes an ICMP echo (§5.2: types 128/129 to 8/0,
/// a checksum without pseudo-header). What is before the IPv6 header moves up with it. A piece
/// of a datagram (`piece`, its Fragment header) becomes an IPv4 fragment (§5.1.1): its offset
/// and more-fragments flag, the low 16 bits of its identification, no DF; only the first piece
/// has a checksum to move. Returns where the transport header (a later piece's data) now is.
/// `PIECE`: whether `piece` may be one, so that whole packets' copy has no test of it. Never
/// inlined: inlined in `published6`, its address words were built worse (+10% instructions,
/// callgrind).
#[inline(never)]
pub(super) fn to_ipv4<const PIECE: bool>(
    buf: &mut PacketBuf,
    base: usize,
    h: &L3v6,
    src: u32,
    dst: u32,
) -> Result<usize, DropReason> {
    convert_to_ipv4::<PIECE>(buf, base, h, (src, dst), None)
}

/// [`to_ipv4`] of a packet between twins of a dual-stack network, whose checksum changes by
/// `delta` (`ServiceTable::twin_deltas`): nothing summed from the addresses. A copy of its own,
/// so that `to_ipv4`'s code (the published ports') has no test of it.
#[inline(never)]
pub(super) fn twins_to_ipv4(
    buf: &mut PacketBuf,
    base: usize,
    h: &L3v6,
    (src, dst): (u32, u32),
    delta: checksum::Delta,
) -> Result<usize, DropReason> {
    convert_to_ipv4::<false>(buf, base, h, (src, dst), Some(delta))
}

/// [`twins_to_ipv4`] of a piece of a datagram (`h.frag`): an IPv4 fragment (RFC 7915
/// §5.1.1), its transport checksum (in the first piece) moved by `delta`. A first UDP piece
/// without a checksum is refused, as IPv6 requires one (RFC 8200 §8.1).
#[cold]
#[inline(never)]
pub(super) fn twin_piece_to_ipv4(
    buf: &mut PacketBuf,
    base: usize,
    h: &L3v6,
    (src, dst): (u32, u32),
    delta: checksum::Delta,
) -> Result<usize, DropReason> {
    let first = h.frag.is_some_and(|p| p.ff & 0x1fff == 0);
    if first && h.proto == UDP && buf.data().get(h.l4 + 6..h.l4 + 8) == Some(&[0, 0][..]) {
        return Err(DropReason::BadL4Checksum);
    }
    convert_to_ipv4::<true>(buf, base, h, (src, dst), Some(delta))
}

/// [`to_ipv4`]'s body; `delta`, the checksum's change when the caller knows it.
#[inline(always)]
fn convert_to_ipv4<const PIECE: bool>(
    buf: &mut PacketBuf,
    base: usize,
    h: &L3v6,
    (src, dst): (u32, u32),
    delta: Option<checksum::Delta>,
) -> Result<usize, DropReason> {
    let piece = h.frag.filter(|_| PIECE);
    let payload = h.end - h.l4;
    let eth = base + ETH;
    // At least 20 bytes: the IPv6 header is 40.
    let shift = h.l4 - eth - IPV4;
    let f = buf.data_mut();
    let tc = (f[eth] << 4) | (f[eth + 1] >> 4);
    let icmp = h.proto == super::ipv6::ICMPV6;
    if icmp {
        // An echo's type (the caller let only echoes through); its checksum is summed anew
        // once the header is IPv4.
        let ty = f.get_mut(h.l4).ok_or(DropReason::Truncated)?;
        *ty = match *ty {
            128 => 8,
            129 => 0,
            _ => return Err(DropReason::Ipv6Untranslated),
        };
    } else if piece.is_none_or(|p| p.ff & 0x1fff == 0) {
        let c = csum_at(h.proto, h.l4);
        if c + 2 > f.len() {
            return Err(DropReason::Truncated);
        }
        let delta = delta.unwrap_or_else(|| {
            pseudo_delta(&words6(&h.src.octets(), &h.dst.octets()), &words4(src, dst))
        });
        let old = nat::be16(f, c);
        let new = if h.proto == UDP {
            checksum::apply_udp(delta, old)
        } else {
            delta.apply(old)
        };
        put16(f, c, new);
    }
    // What is before the IPv6 header, but its ethertype (the MAC addresses, and any outer
    // headers), moves up by `shift`.
    f.copy_within(..base + 12, shift);
    let ip = shift + eth;
    put16(f, ip - 2, 0x0800);
    let repr = smoltcp::wire::Ipv4Repr {
        src_addr: addr(src),
        dst_addr: addr(dst),
        next_header: if icmp {
            IpProtocol::Icmp
        } else {
            IpProtocol::from(h.proto)
        },
        payload_len: payload,
        hop_limit: h.hop_limit,
    };
    let mut p = smoltcp::wire::Ipv4Packet::new_unchecked(&mut f[ip..ip + IPV4]);
    repr.emit(&mut p, &ChecksumCapabilities::ignored());
    p.set_dscp(tc >> 2);
    p.set_ecn(tc & 3);
    if let Some(piece) = piece {
        // Casts: the identification's low 16 bits, as RFC 7915 §5.1.1 says.
        #[allow(clippy::cast_possible_truncation)]
        p.set_ident(piece.id as u16);
        p.set_dont_frag(false);
        p.set_more_frags(piece.ff & 0x2000 != 0);
        p.set_frag_offset((piece.ff & 0x1fff) * 8);
    } else {
        p.set_dont_frag(true);
    }
    p.fill_checksum();
    if icmp {
        let end = ip + IPV4 + payload;
        let body = f.get_mut(ip + IPV4..end).ok_or(DropReason::Truncated)?;
        smoltcp::wire::Icmpv4Packet::new_unchecked(body).fill_checksum();
    }
    if !buf.trim_front(shift) {
        return Err(DropReason::Truncated);
    }
    buf.truncate(eth + IPV4 + payload);
    Ok(eth + IPV4)
}

/// The IPv6 Fragment header's length.
const FRAGMENT_HEADER_LEN: usize = 8;

/// The IPv6 Fragment header of an IPv4 fragment of protocol `proto` (`ff`, its flags and
/// offset; `id`, its identification): the same offset and more-fragments flag, the
/// identification zero-extended (RFC 7915 §4.1).
pub(super) fn fragment_header(proto: u8, ff: u16, id: u16) -> [u8; FRAGMENT_HEADER_LEN] {
    let word = ((ff & 0x1fff) << 3) | u16::from(ff & 0x2000 != 0);
    let [w0, w1] = word.to_be_bytes();
    let [i0, i1] = id.to_be_bytes();
    [proto, 0, w0, w1, 0, 0, i0, i1]
}

/// Turns the IPv4 packet `l3` in `buf` (rewritten, `payload` bytes after its header) into IPv6
/// from `src` to `dst` in place (RFC 7915 §4.1): traffic class its TOS, hop limit its time to
/// live, the transport checksum moved to the IPv6 pseudo-header (a UDP datagram without one
/// gets one: IPv6 requires it); `macs` (ours, the next hop's). A fragment gets the Fragment
/// header `piece` after the IPv6 header; only the first carries a checksum to move, and a UDP
/// datagram without one cannot get one from a piece of it (`ipv6_fragment`). An ICMP echo
/// becomes an ICMPv6 echo (§4.2; the caller lets no other ICMP through). `delta`: the
/// checksum's change when the caller knows it (`twin_deltas`), else summed from the addresses.
#[inline(always)]
pub(super) fn to_ipv6(
    buf: &mut PacketBuf,
    l3: &L3,
    payload: usize,
    (src, dst): ([u8; 16], [u8; 16]),
    piece: Option<[u8; FRAGMENT_HEADER_LEN]>,
    macs: ([u8; 6], [u8; 6]),
    delta: Option<checksum::Delta>,
) -> Result<(), DropReason> {
    let ihl = l3.l4 - ETH;
    let ext = if piece.is_some() {
        FRAGMENT_HEADER_LEN
    } else {
        0
    };
    let f = buf.data();
    let (tos, ttl) = (f[ETH + 1], f[ETH + 8]);
    let from = words4(
        u32::from_be_bytes([f[ETH + 12], f[ETH + 13], f[ETH + 14], f[ETH + 15]]),
        u32::from_be_bytes([f[ETH + 16], f[ETH + 17], f[ETH + 18], f[ETH + 19]]),
    );
    // Written so that a whole packet (`piece` None) folds every fragment's test away.
    let sum = piece.is_none() || l3.frag != frag::Frag::Later;
    if piece.is_some() && l3.frag == frag::Frag::First && l3.proto == UDP {
        let c = csum_at(UDP, l3.l4);
        // No checksum: IPv6 needs one, and a piece cannot compute the datagram's.
        if f.get(c..c + 2) == Some(&[0, 0][..]) {
            return Err(DropReason::Ipv6Fragment);
        }
    }
    // The new headers' start: 20 bytes (28 with a Fragment header) before the old one's, less
    // with IPv4 options.
    let grow = (IPV6_HEADER_LEN + ext).saturating_sub(ihl);
    let cut = ihl.saturating_sub(IPV6_HEADER_LEN + ext);
    if grow > 0 {
        buf.prepend(grow).ok_or(DropReason::NoHeadroom)?;
    } else if !buf.trim_front(cut) {
        return Err(DropReason::Truncated);
    }
    let l4 = ETH + IPV6_HEADER_LEN + ext;
    buf.truncate(l4 + payload);
    let f = buf.data_mut();
    let c = csum_at(l3.proto, l4);
    if f.len() < l4 + payload || (sum && c + 2 > f.len()) {
        return Err(DropReason::Truncated);
    }
    let (smac, dmac) = macs;
    f[0..6].copy_from_slice(&dmac);
    f[6..12].copy_from_slice(&smac);
    put16(f, 12, 0x86dd);
    let ip6 = ETH + IPV6_HEADER_LEN;
    Ipv6Repr {
        src_addr: Ipv6Address::from(src),
        dst_addr: Ipv6Address::from(dst),
        next_header: if piece.is_some() {
            IpProtocol::Ipv6Frag
        } else if l3.proto == ICMP {
            IpProtocol::Icmpv6
        } else {
            IpProtocol::from(l3.proto)
        },
        payload_len: ext + payload,
        hop_limit: ttl,
    }
    .emit(&mut Ipv6Packet::new_unchecked(&mut f[ETH..ip6]));
    Ipv6Packet::new_unchecked(&mut f[ETH..ip6]).set_traffic_class(tos);
    if let Some(h) = piece {
        f[ip6..l4].copy_from_slice(&h);
    }
    if !sum {
        return Ok(());
    }
    if l3.proto == ICMP {
        let body = &mut f[l4..l4 + payload];
        let ty = body.first_mut().ok_or(DropReason::Truncated)?;
        *ty = match *ty {
            8 => 128,
            0 => 129,
            _ => return Err(DropReason::Ipv6Untranslated),
        };
        let (s, d) = (Ipv6Address::from(src), Ipv6Address::from(dst));
        Icmpv6Packet::new_unchecked(body).fill_checksum(&s, &d);
        return Ok(());
    }
    let old = nat::be16(f, c);
    if l3.proto == UDP && old == 0 {
        let (s, d) = (Ipv6Address::from(src).into(), Ipv6Address::from(dst).into());
        UdpPacket::new_unchecked(&mut f[l4..l4 + payload]).fill_checksum(&s, &d);
    } else {
        let delta = delta.unwrap_or_else(|| pseudo_delta(&from, &words6(&src, &dst)));
        let new = if l3.proto == UDP {
            checksum::apply_udp(delta, old)
        } else {
            delta.apply(old)
        };
        put16(f, c, new);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use super::*;
    use crate::balance::table::tests::three_nodes;
    use crate::pipeline::tests::run;
    use crate::testkit;
    use smoltcp::wire::{Icmpv6Packet, IpAddress, Ipv4Packet, TcpControl, TcpRepr};

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
    const WEB1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
    const WEB1: u32 = 0x0a00_000b;

    fn n2_addr6() -> Ipv6Address {
        "fd00:100::12".parse().unwrap()
    }

    fn client(i: u16) -> Ipv6Address {
        Ipv6Address::new(0xfd00, 0x100, 0, 0, 0, 0, 0xc, i)
    }

    /// Node n2 of [`three_nodes`] (web.1 is local) with an IPv6 address, and a pipeline of
    /// worker `worker` of `workers` that knows web.1's MAC.
    fn on_n2(workers: u16, worker: u16) -> (ServiceTable, Pipeline) {
        let mut s = three_nodes();
        s.nodes.iter_mut().find(|n| n.name == "n2").unwrap().addr6 = Some(n2_addr6());
        let t = ServiceTable::build(&s, "n2", 1).unwrap();
        let neigh = Arc::new(Neighbors::new(64));
        neigh.learn(WEB1, WEB1_MAC);
        let cfg = Config {
            worker,
            workers,
            ..Config::default()
        };
        (t, Pipeline::new(cfg, neigh))
    }

    /// A TCP segment over IPv6 from `src:sport` to n2's `dport` with `control`, an MSS option
    /// and `payload`, checksum right.
    fn seg6(
        src: Ipv6Address,
        sport: u16,
        dport: u16,
        control: TcpControl,
        payload: &[u8],
    ) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: sport,
            dst_port: dport,
            control,
            seq_number: TcpSeqNumber(1000),
            ack_number: (control != TcpControl::Syn).then_some(TcpSeqNumber(5000)),
            window_len: 64240,
            window_scale: None,
            max_seg_size: (control == TcpControl::Syn).then_some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let (s, d) = (IpAddress::Ipv6(src), IpAddress::Ipv6(n2_addr6()));
        to_n2(src, IpProtocol::Tcp, tcp.buffer_len(), |b| {
            tcp.emit(
                &mut TcpPacket::new_unchecked(b),
                &s,
                &d,
                &ChecksumCapabilities::default(),
            );
        })
    }

    /// The client's frame from `src` to n2's IPv6 address: `len` bytes of `proto` by `fill`.
    fn to_n2(
        src: Ipv6Address,
        proto: IpProtocol,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let up = Config::default().uplink_mac;
        testkit::ipv6_with(CLIENT_MAC, up, src, n2_addr6(), 64, proto, len, fill)
    }

    fn mss(tcp: &[u8], src: IpAddress, dst: IpAddress) -> Option<u16> {
        let p = TcpPacket::new_checked(tcp).unwrap();
        TcpRepr::parse(&p, &src, &dst, &ChecksumCapabilities::default())
            .unwrap()
            .max_seg_size
    }

    /// The client's SYNs from `client(i)`, a port each, until one is balanced to web.1 on n2:
    /// that port and the IPv4 SYN web.1 got.
    fn syn_to_web1(p: &mut Pipeline, t: &ServiceTable, i: u16) -> (u16, Vec<u8>) {
        for sport in 40000..40100 {
            let (v, out) = run(
                p,
                t,
                PortId::Uplink,
                &seg6(client(i), sport, 8080, TcpControl::Syn, b""),
            );
            if v == Verdict::Tx(PortId::Tasks) {
                return (sport, out);
            }
            assert_eq!(v, Verdict::Tx(PortId::Uplink), "to web.2 or web.3 by VXLAN");
        }
        panic!("no SYN went to web.1");
    }

    #[test]
    fn an_ipv6_client_reaches_an_ipv4_task_through_a_published_port_and_back() {
        let (t, mut p) = on_n2(1, 0);
        let ep = ipkey(t.net(t.ingress_net.unwrap()).local_endpoint.unwrap());
        let (sport, out) = syn_to_web1(&mut p, &t, 1);
        // IPv4 to web.1, checksums right (parse_ipv4 verifies them), masqueraded to n2's
        // endpoint, DF, one hop less, the MSS clamped to the overlay as for IPv4 clients.
        let l3 = parse_ipv4(&out, ETH, true).unwrap();
        assert_eq!((l3.dst, l3.dport, l3.src), (WEB1, 80, ep));
        assert_eq!(&out[0..6], &WEB1_MAC);
        let ip = Ipv4Packet::new_checked(&out[ETH..]).unwrap();
        assert!(ip.dont_frag());
        assert_eq!(ip.hop_limit(), 63);
        assert_eq!(
            out.len(),
            ETH + 20 + 24,
            "the IPv6 header gone, nothing else"
        );
        assert_eq!(
            mss(&out[l3.l4..], addr(l3.src).into(), addr(l3.dst).into()),
            Some(1410)
        );
        // web.1's SYN-ACK goes back to the client as IPv6, from n2's address and the published
        // port.
        let caps = ChecksumCapabilities::default();
        let synack = {
            let tcp = TcpRepr {
                src_port: 80,
                dst_port: l3.sport,
                control: TcpControl::Syn,
                seq_number: TcpSeqNumber(9000),
                ack_number: Some(TcpSeqNumber(1001)),
                window_len: 64240,
                window_scale: None,
                max_seg_size: Some(1460),
                sack_permitted: false,
                sack_ranges: [None; 3],
                timestamp: None,
                payload: b"",
            };
            let mut f = vec![0u8; ETH + 20 + tcp.buffer_len()];
            f[0..6].copy_from_slice(&p.cfg.tasks_mac);
            f[6..12].copy_from_slice(&WEB1_MAC);
            f[12..14].copy_from_slice(&[8, 0]);
            smoltcp::wire::Ipv4Repr {
                src_addr: addr(WEB1),
                dst_addr: addr(ep),
                next_header: IpProtocol::Tcp,
                payload_len: tcp.buffer_len(),
                hop_limit: 64,
            }
            .emit(&mut Ipv4Packet::new_unchecked(&mut f[ETH..]), &caps);
            tcp.emit(
                &mut TcpPacket::new_unchecked(&mut f[ETH + 20..]),
                &addr(WEB1).into(),
                &addr(ep).into(),
                &caps,
            );
            f
        };
        let (v, back) = run(&mut p, &t, PortId::Tasks, &synack);
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        assert_eq!(&back[0..6], &CLIENT_MAC);
        assert_eq!(&back[6..12], &p.cfg.uplink_mac);
        let h = parse_ipv6(&back, ETH).unwrap();
        assert_eq!(
            (h.src, h.dst, h.hop_limit, h.proto),
            (n2_addr6(), client(1), 63, TCP)
        );
        assert_eq!(h.end, back.len());
        let seg = TcpPacket::new_checked(&back[h.l4..]).unwrap();
        assert!(seg.verify_checksum(&h.src.into(), &h.dst.into()));
        assert_eq!((seg.src_port(), seg.dst_port()), (8080, sport));
        assert_eq!(mss(&back[h.l4..], h.src.into(), h.dst.into()), Some(1410));
        // The client's ACK finds its flow; the connection shows as the client sent it.
        let (v, _) = run(
            &mut p,
            &t,
            PortId::Uplink,
            &seg6(client(1), sport, 8080, TcpControl::None, b"GET /"),
        );
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        assert_eq!(p.stats.new_flows, p.flows.len() as u64);
        let id = p
            .flows
            .live_ids()
            .find(|&id| p.flows.get(id).fwd.dst == WEB1)
            .unwrap();
        let row = crate::conn::Row {
            flow: *p.flows.get(id),
            idle_ms: 0,
            expires_ms: 0,
        };
        let c = crate::conn::conn_of(&t, 0, &row, false);
        assert_eq!(c.client.to_string(), format!("[fd00:100::c:1]:{sport}"));
        assert_eq!(c.service_addr.to_string(), "[fd00:100::12]:8080");
        assert_eq!(c.task.as_deref(), Some("web.1"));
        // `conn ls --client` by IPv6 prefix; an IPv4 prefix never holds it.
        for (prefix, holds) in [
            ("fd00:100::c:0/112", true),
            ("fd00:100::c:1/128", true),
            ("fd00:200::/64", false),
            ("0.0.0.0/0", false),
        ] {
            let f = ctl::proto::ConnFilter {
                client: Some(prefix.parse().unwrap()),
                ..Default::default()
            };
            let m = crate::conn::Matcher::new(&f, &t).unwrap();
            assert_eq!(m.matches(p.flows.get(id)), holds, "{prefix}");
        }
        // Ended (its task gone, `conn rm`): the client gets a RST over IPv6, in window.
        let mut b = PacketBuf::new();
        assert!(p.reset_frame(&t, p.flows.get(id), &mut b));
        let h = parse_ipv6(b.data(), ETH).unwrap();
        assert_eq!((h.src, h.dst), (n2_addr6(), client(1)));
        let rst = TcpPacket::new_checked(&b.data()[h.l4..]).unwrap();
        assert!(rst.rst() && rst.verify_checksum(&h.src.into(), &h.dst.into()));
        assert_eq!(
            (rst.src_port(), rst.dst_port(), rst.seq_number()),
            (8080, sport, TcpSeqNumber(5000))
        );
        assert_eq!(p.stats.total_drops(), 0);
    }

    /// A UDP datagram over IPv6 from `src:sport` to n2's `dport`, checksum right.
    fn udp6(src: Ipv6Address, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let (s, d) = (IpAddress::Ipv6(src), IpAddress::Ipv6(n2_addr6()));
        let len = 8 + payload.len();
        to_n2(src, IpProtocol::Udp, len, |b| {
            let mut u = UdpPacket::new_unchecked(b);
            u.set_src_port(sport);
            u.set_dst_port(dport);
            u.set_len(len as u16);
            u.payload_mut().copy_from_slice(payload);
            u.fill_checksum(&s, &d);
        })
    }

    /// n2 of [`three_nodes`] with UDP 5353 published too (to web's port 53).
    fn udp_on_n2() -> (ServiceTable, Pipeline) {
        let (_, p) = on_n2(1, 0);
        let mut s = crate::pipeline::tests::udp_published();
        s.nodes.iter_mut().find(|n| n.name == "n2").unwrap().addr6 = Some(n2_addr6());
        (ServiceTable::build(&s, "n2", 1).unwrap(), p)
    }

    /// Sends `data` from `c` to UDP 5353 from the first source port whose flow goes to web.1:
    /// the datagram web.1 got, and its parsed header.
    fn udp_to_web1(
        p: &mut Pipeline,
        t: &ServiceTable,
        c: Ipv6Address,
        data: &[u8],
    ) -> (L3, Vec<u8>) {
        let to = (50000..50100)
            .find_map(|sport| {
                let (v, out) = run(p, t, PortId::Uplink, &udp6(c, sport, 5353, data));
                (v == Verdict::Tx(PortId::Tasks)).then_some(out)
            })
            .expect("a datagram to web.1");
        (parse_ipv4(&to, ETH, true).unwrap(), to)
    }

    /// web.1's answer `data` to the datagram `to` (as it reached web.1), with a checksum if `sum`.
    fn web1_answer(tasks_mac: [u8; 6], to: &L3, data: &[u8], sum: bool) -> Vec<u8> {
        let mut f = testkit::udp_frame(
            WEB1_MAC,
            tasks_mac,
            addr(WEB1),
            53,
            addr(to.src),
            to.sport,
            data,
        );
        if !sum {
            put16(&mut f, ETH + 20 + 6, 0);
        }
        f
    }

    #[test]
    fn udp_of_an_ipv6_client_is_translated_both_ways_and_a_reply_without_checksum_gets_one() {
        let (t, mut p) = udp_on_n2();
        // Unpublished: the host side's closed port.
        let (v, _) = run(
            &mut p,
            &t,
            PortId::Uplink,
            &udp6(client(2), 5000, 9999, b"x"),
        );
        assert_eq!(v, Verdict::Host(HostReason::Ipv6Port));
        // No checksum: refused in IPv6, whatever IPv4 allows.
        let mut none = udp6(client(2), 5000, 5353, b"x");
        let at = none.len() - 3;
        none[at..at + 2].copy_from_slice(&[0, 0]);
        let (v, _) = run(&mut p, &t, PortId::Uplink, &none);
        assert_eq!(v, Verdict::Drop(DropReason::BadL4Checksum));
        let (l3, to) = udp_to_web1(&mut p, &t, client(2), b"ping");
        assert_eq!(
            (l3.dst, l3.dport, &to[l3.l4 + 8..]),
            (WEB1, 53, &b"ping"[..])
        );
        // web.1 answers without a checksum (IPv4 allows it): IPv6 gets one.
        for sum in [true, false] {
            let f = web1_answer(p.cfg.tasks_mac, &l3, b"pong", sum);
            let (v, back) = run(&mut p, &t, PortId::Tasks, &f);
            assert_eq!(v, Verdict::Tx(PortId::Uplink), "checksum {sum}");
            let h = parse_ipv6(&back, ETH).unwrap();
            assert_eq!((h.src, h.dst, h.proto), (n2_addr6(), client(2), UDP));
            let u = UdpPacket::new_checked(&back[h.l4..h.end]).unwrap();
            assert!(u.checksum() != 0 && u.verify_checksum(&h.src.into(), &h.dst.into()));
            assert_eq!((u.src_port(), u.payload()), (5353, &b"pong"[..]));
        }
    }

    /// web.1's port unreachable about an IPv6 client's datagram to a published UDP port reaches
    /// the client as ICMPv6 from the node's IPv6 address, quoting the datagram as the client
    /// sent it (its address, port and checksum), so its socket hears of it at once; the flow
    /// ends (passive health's evidence, as for an IPv4 client).
    #[test]
    fn a_tasks_unreachable_reaches_the_ipv6_client_as_icmpv6_about_what_it_sent() {
        let (t, mut p) = udp_on_n2();
        let (sport, sent, to) = (50000..50100)
            .find_map(|sport| {
                let d = udp6(client(4), sport, 5353, b"query");
                let (v, out) = run(&mut p, &t, PortId::Uplink, &d);
                (v == Verdict::Tx(PortId::Tasks)).then_some((sport, d, out))
            })
            .expect("a datagram to web.1");
        let got = parse_ipv4(&to, ETH, true).unwrap();
        let refused =
            testkit::icmp_unreachable(WEB1_MAC, p.cfg.tasks_mac, addr(WEB1), addr(got.src), 3, &to);
        let (v, out) = run(&mut p, &t, PortId::Tasks, &refused);
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        assert_eq!(testkit::eth(&out).unwrap().0, CLIENT_MAC);
        let h = parse_ipv6(&out, ETH).unwrap();
        assert_eq!(
            (h.src, h.dst, h.proto),
            (n2_addr6(), client(4), super::super::ipv6::ICMPV6)
        );
        let icmp = Icmpv6Packet::new_checked(&out[h.l4..h.end]).unwrap();
        assert!(icmp.verify_checksum(&h.src, &h.dst));
        assert_eq!(
            (icmp.msg_type(), icmp.msg_code()),
            (smoltcp::wire::Icmpv6Message::DstUnreachable, 4)
        );
        // The quote: the client's IPv6 header and UDP header, byte for byte but the hop limit
        // (which the datagram spent on its way), what its socket matches.
        let quote = &out[h.l4 + 8..h.end];
        let mine = &sent[ETH..];
        assert_eq!(
            &quote[8..40],
            &mine[8..40],
            "the addresses as the client sent them"
        );
        assert_eq!(
            &quote[40..48],
            &mine[40..48],
            "its UDP header, checksum included"
        );
        assert_eq!(u16::from_be_bytes([quote[40], quote[41]]), sport);
        assert_eq!(p.stats.task_unreachable, 1);
        assert!(
            !p.flows
                .contains(&FlowKey::new(UDP, WEB1, 53, got.src, got.sport)),
            "the flow ended"
        );
    }

    /// A router's packet too big about a reply to an IPv6 client (a link past the node
    /// narrower than the reply) reaches web.1 as ICMP "fragmentation needed", its MTU 20 bytes
    /// less, about the reply as web.1 sent it (its address and port, the address it knows the
    /// client by, its checksum). One about a port the client did not use, about another
    /// client, or about a packet from another address is not sent on.
    #[test]
    fn a_routers_packet_too_big_about_a_reply_reaches_the_task_as_fragmentation_needed() {
        let (t, mut p) = udp_on_n2();
        let (l3, _) = udp_to_web1(&mut p, &t, client(4), b"q");
        let answer = web1_answer(p.cfg.tasks_mac, &l3, b"a long reply", true);
        let (v, reply) = run(&mut p, &t, PortId::Tasks, &answer);
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        let up = p.cfg.uplink_mac;
        let router: Ipv6Address = "fd00:100::1".parse().unwrap();
        let too_big = |reply: &[u8]| {
            let ip = Ipv6Packet::new_checked(&reply[ETH..]).unwrap();
            let header = Ipv6Repr::parse(&ip).unwrap();
            let data = &reply[ETH + IPV6_HEADER_LEN..];
            let repr = Icmpv6Repr::PktTooBig {
                mtu: 1280,
                header,
                data,
            };
            testkit::icmpv6_frame(CLIENT_MAC, up, router, n2_addr6(), 64, &repr)
        };
        let (v, out) = run(&mut p, &t, PortId::Uplink, &too_big(&reply));
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        let e = testkit::parse_icmp4_error(&out).expect("ICMP error, checksums right");
        assert_eq!(
            (e.dst_mac, e.src, e.dst, e.kind, e.code, e.rest),
            (WEB1_MAC, addr(l3.src), addr(WEB1), 3, 4, 1260)
        );
        assert_eq!(e.quoted, ((addr(WEB1), 53), (addr(l3.src), l3.sport)));
        assert_eq!(e.quoted_udp_checksum, nat::be16(&answer, ETH + 20 + 6));
        assert_eq!(p.stats.icmp_to_task, 1);
        // The reply as it would be to another port, another client, from another address.
        let at = ETH + IPV6_HEADER_LEN;
        let mut other_port = reply.clone();
        put16(&mut other_port, at + 2, nat::be16(&reply, at + 2) ^ 1);
        let mut other_client = reply.clone();
        other_client[ETH + 24..ETH + 40].copy_from_slice(&client(5).octets());
        let mut other_source = reply.clone();
        other_source[ETH + 8..ETH + 24].copy_from_slice(&router.octets());
        for r in [other_port, other_client, other_source] {
            let (v, _) = run(&mut p, &t, PortId::Uplink, &too_big(&r));
            assert_eq!(v, Verdict::Drop(DropReason::Icmp6NoFlow));
        }
        // The reply as no IPv4 packet could be (its length with IPv4's header past 65,535):
        // refused, nothing sent, not counted.
        let mut too_long = too_big(&reply);
        let icmp = ETH + IPV6_HEADER_LEN;
        put16(&mut too_long, icmp + 8 + 4, 0xffff);
        Icmpv6Packet::new_unchecked(&mut too_long[icmp..]).fill_checksum(&router, &n2_addr6());
        let (v, _) = run(&mut p, &t, PortId::Uplink, &too_long);
        assert_eq!(v, Verdict::Drop(DropReason::Ipv6Untranslated));
        assert_eq!(p.stats.icmp_to_task, 1);
    }

    #[test]
    fn a_tasks_fragmented_reply_reaches_the_ipv6_client_as_ipv6_fragments() {
        let (t, mut p) = udp_on_n2();
        let (l3, _) = udp_to_web1(&mut p, &t, client(4), b"big?");
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let tasks_mac = p.cfg.tasks_mac;
        let answer = |sum: bool| {
            // web.1's stack splits it for its network's 1450 (no DF), as Linux does.
            testkit::fragment(&web1_answer(tasks_mac, &l3, &data, sum), 1450, 0x1234)
        };
        let pieces = answer(true);
        assert_eq!(pieces.len(), 3);
        let mut joined = Vec::new();
        for (k, piece) in pieces.iter().enumerate() {
            let (v, out) = run(&mut p, &t, PortId::Tasks, piece);
            assert_eq!(v, Verdict::Tx(PortId::Uplink), "fragment {k}");
            let ip = Ipv6Packet::new_checked(&out[ETH..]).unwrap();
            assert_eq!(
                (ip.src_addr(), ip.dst_addr(), ip.next_header()),
                (n2_addr6(), client(4), IpProtocol::Ipv6Frag)
            );
            assert!(out.len() - ETH <= 1500, "fits the uplink");
            let fh = &ip.payload()[..8];
            let off = usize::from(u16::from_be_bytes([fh[2], fh[3]]) >> 3) * 8;
            let more = fh[3] & 1 == 1;
            assert_eq!(fh[0], UDP);
            assert_eq!(&fh[4..], &[0, 0, 0x12, 0x34], "the IPv4 identification");
            assert_eq!((off, more), (k * 1424, k < 2), "fragment {k}");
            assert_eq!(off, joined.len());
            joined.extend_from_slice(&ip.payload()[8..]);
        }
        let u = UdpPacket::new_checked(&joined[..]).unwrap();
        assert!(u.verify_checksum(&n2_addr6().into(), &client(4).into()));
        assert_eq!((u.src_port(), u.payload()), (5353, &data[..]));
        // Without a checksum, a piece cannot get the whole datagram's: dropped, and the
        // later pieces follow the first.
        for piece in answer(false) {
            let (v, _) = run(&mut p, &t, PortId::Tasks, &piece);
            assert_eq!(v, Verdict::Drop(DropReason::Ipv6Fragment));
        }
    }

    #[test]
    fn a_client_packet_too_big_for_the_overlay_once_ipv4_gets_packet_too_big() {
        let (t, mut p) = on_n2(1, 0);
        let (sport, _) = syn_to_web1(&mut p, &t, 3);
        // 1,430 bytes of data: 1,470 as IPv4, over the overlay's 1,450.
        let big = seg6(client(3), sport, 8080, TcpControl::Psh, &[7; 1430]);
        let (v, out) = run(&mut p, &t, PortId::Uplink, &big);
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        let h = parse_ipv6(&out, ETH).unwrap();
        assert_eq!(
            (h.src, h.dst, h.proto),
            (n2_addr6(), client(3), super::super::ipv6::ICMPV6)
        );
        let icmp = Icmpv6Packet::new_checked(&out[h.l4..h.end]).unwrap();
        assert!(icmp.verify_checksum(&h.src, &h.dst));
        let Ok(Icmpv6Repr::PktTooBig { mtu, header, .. }) =
            Icmpv6Repr::parse(&h.src, &h.dst, &icmp, &ChecksumCapabilities::default())
        else {
            panic!("not a packet too big");
        };
        assert_eq!((mtu, header.src_addr), (1470, client(3)));
        assert_eq!(h.end - ETH, IPV6_MIN_MTU, "quoting up to the minimum MTU");
        assert_eq!(p.stats.dropped(DropReason::TooBig), 1);
        // What fits goes: 1,410 bytes of data, 1,450 as IPv4.
        let fits = seg6(client(3), sport, 8080, TcpControl::Psh, &[7; 1410]);
        let (v, out) = run(&mut p, &t, PortId::Uplink, &fits);
        assert_eq!((v, out.len()), (Verdict::Tx(PortId::Tasks), ETH + 1450));
    }

    /// Two IPv6 client addresses that give one stand-in.
    fn twins() -> (Ipv6Address, Ipv6Address) {
        let mut seen = std::collections::HashMap::new();
        let (a, b) = (1u32..)
            .find_map(|i| {
                let c = Ipv6Address::new(0xfd00, 0x200, 0, 0, 0, 0, (i >> 16) as u16, i as u16);
                seen.insert(stand_in(&c.octets()), c).map(|prev| (prev, c))
            })
            .unwrap();
        assert_ne!(a, b);
        (a, b)
    }

    /// Two IPv6 clients whose addresses give one stand-in, from one port: the second never
    /// reaches the first's connection.
    #[test]
    fn two_clients_with_one_stand_in_never_share_a_flow() {
        let (a, b) = twins();
        let (t, mut p) = on_n2(1, 0);
        let s = |c| seg6(c, 40000, 8080, TcpControl::Syn, b"");
        let (v, _) = run(&mut p, &t, PortId::Uplink, &s(a));
        assert!(matches!(v, Verdict::Tx(_)));
        for f in [s(b), seg6(b, 40000, 8080, TcpControl::Psh, b"data")] {
            let (v, out) = run(&mut p, &t, PortId::Uplink, &f);
            assert_eq!(v, Verdict::Drop(DropReason::Ipv6ClientCollision));
            assert_eq!(out, f, "untouched");
        }
        assert_eq!(p.flows.len(), 1);
        // Stand-ins are of 240.0.0.0/4, never an address on the wire.
        assert_eq!(stand_in(&a.octets()) >> 28, 0xf);
    }

    /// `udp_published`'s node `node` with n2's IPv6 address, and `workers` workers.
    fn udp_node(node: &str, workers: u16) -> (ServiceTable, Vec<Pipeline>) {
        let mut s = crate::pipeline::tests::udp_published();
        s.nodes.iter_mut().find(|n| n.name == node).unwrap().addr6 = Some(n2_addr6());
        crate::pipeline::tests::node_of(&s, node, workers)
    }

    /// `len` bytes from `c` to UDP 5353 as the pieces a 1,500-byte IPv6 link gives them (1,448
    /// bytes each), identification `id`: the data and the pieces.
    fn client_pieces(c: Ipv6Address, len: usize, id: u32) -> (Vec<u8>, Vec<Vec<u8>>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
        let pieces = testkit::fragment6(&udp6(c, 40000, 5353, &data), 1500, id);
        (data, pieces)
    }

    fn bufs(input: &[(usize, &Vec<u8>)]) -> Vec<(usize, PacketBuf)> {
        input
            .iter()
            .map(|&(w, f)| (w, PacketBuf::from_frame(PortId::Uplink, f)))
            .collect()
    }

    /// A client's datagram larger than its link reaches the task as IPv4 fragments (RFC 7915
    /// §5.1.1), whatever the order its pieces come in and whichever workers they land on, on
    /// the node of the task (n2) and through VXLAN (n1).
    #[test]
    fn an_ipv6_clients_pieces_reach_the_task_as_ipv4_fragments_in_any_order_on_any_worker() {
        use crate::pipeline::tests::{delivered, drive};
        let c = client(6);
        let owner = usize::from(flow::owner_of(stand_in(&c.octets()), 40000, 2));
        for node in ["n2", "n1"] {
            for workers in [1, 2] {
                for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
                    let what = format!("{node}, {workers} workers, {order:?}");
                    let (t, mut ps) = udp_node(node, workers);
                    let (data, pieces) = client_pieces(c, 4000, 0xabcd_0077);
                    assert_eq!(pieces.len(), 3);
                    // With two workers, the first piece on one and the others on the other.
                    let on = |i: usize| if i == 0 { 0 } else { usize::from(workers) - 1 };
                    let input: Vec<_> = order.iter().map(|&i| (on(i), &pieces[i])).collect();
                    let (out, seen) = drive(&mut ps, &t, 5, bufs(&input));

                    assert!(
                        seen.iter().all(|v| !matches!(v, Verdict::Drop(_))),
                        "{what}: {seen:?}"
                    );
                    let got = delivered(&out);
                    assert_eq!(got.payload, data, "{what}");
                    let ep = t.net(t.ingress_net.unwrap()).local_endpoint.unwrap();
                    assert_eq!((got.src.octets(), got.dport), (ep.octets(), 53), "{what}");
                    let p = &ps[if workers == 2 { owner } else { 0 }];
                    assert_eq!(p.flows.len(), 1, "{what}: the flow on its owner");
                    assert_eq!(p.stats.new_flows, 1, "{what}");
                    // 1,468 bytes each as IPv4, over the overlay's 1,450: the first two are
                    // fragmented again.
                    assert_eq!(p.stats.fragments_made, 4, "{what}");
                    for p in &ps {
                        assert_eq!(p.fragments(5), (0, 0), "{what}: done and forgotten");
                    }
                }
            }
        }
    }

    /// What a piece of a client's datagram may not do: open a flow without a checksum (UDP),
    /// reach a port nothing is published on, overlap, or join another client's datagram.
    #[test]
    fn an_ipv6_clients_bad_pieces_are_refused_and_its_good_ones_go_on() {
        use crate::pipeline::tests::{delivered, drive};
        let (t, mut ps) = udp_node("n2", 1);
        let run1 = |ps: &mut Vec<Pipeline>, f: &Vec<u8>| {
            let (_, seen) = drive(ps, &t, 5, bufs(&[(0, f)]));
            seen[0]
        };
        // No UDP checksum: the first piece and those after it dropped.
        let (_, mut none) = client_pieces(client(7), 3000, 1);
        none[0][ETH + 48 + 6..ETH + 48 + 8].copy_from_slice(&[0, 0]);
        for f in &none {
            assert_eq!(run1(&mut ps, f), Verdict::Drop(DropReason::BadL4Checksum));
        }
        // To a closed port: the host side's, which answers the first piece only.
        let (_, mut closed) = client_pieces(client(7), 3000, 2);
        closed[0][ETH + 48 + 2..ETH + 48 + 4].copy_from_slice(&9999u16.to_be_bytes());
        for f in &closed {
            assert_eq!(run1(&mut ps, f), Verdict::Host(HostReason::Ipv6Port));
        }
        // A piece whose hop limit is spent, first or later.
        for f in &none {
            let mut spent = f.clone();
            spent[ETH + 7] = 1;
            assert_eq!(run1(&mut ps, &spent), Verdict::Drop(DropReason::TtlExpired));
        }
        // A piece twice: the second overlaps.
        let (_, pieces) = client_pieces(client(8), 3000, 3);
        assert!(matches!(run1(&mut ps, &pieces[0]), Verdict::Tx(_)));
        assert_eq!(
            run1(&mut ps, &pieces[0]),
            Verdict::Drop(DropReason::FragmentOverlap)
        );
        // Another client with the same stand-in and identification: its piece waits for a
        // first piece of its own, never joining client a's datagram.
        let (a, b) = twins();
        let (_, of_a) = client_pieces(a, 3000, 4);
        let (_, of_b) = client_pieces(b, 3000, 4);
        let (out, seen) = drive(
            &mut ps,
            &t,
            5,
            bufs(&[(0, &of_a[0]), (0, &of_b[1]), (0, &of_a[1]), (0, &of_a[2])]),
        );
        let held = seen.iter().filter(|&&v| v == Verdict::Consumed).count();
        assert_eq!(held, 1, "b's piece held: {seen:?}");
        assert!(
            !seen.iter().any(|v| matches!(v, Verdict::Drop(_))),
            "{seen:?}"
        );
        assert_eq!(delivered(&out).payload.len(), 3000);
        assert_eq!(ps[0].fragments(5).1, 1, "b's piece held");
    }

    /// A task on another node answers an IPv6 client that entered by this one (n1) with a
    /// datagram in fragments: they come in VXLAN, and go on as IPv6 pieces of the whole.
    #[test]
    fn a_tasks_fragmented_reply_through_vxlan_reaches_the_ipv6_client_whole() {
        use crate::pipeline::tests::drive;
        let (t, mut ps) = udp_node("n1", 1);
        let c = client(10);
        // The first source port whose flow goes to web.1 on n2, and what web.1 got.
        let (vx, to) = (50000..50100)
            .find_map(|sport| {
                let f = udp6(c, sport, 5353, b"big?");
                let (out, _) = drive(&mut ps, &t, 5, bufs(&[(0, &f)]));
                let (_, inner) = testkit::decap(&out[0].1)?;
                let l3 = parse_ipv4(inner, ETH, true).ok()?;
                (l3.dst == WEB1).then(|| (out[0].1.clone(), l3))
            })
            .expect("a flow to web.1");
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 11) as u8).collect();
        let answer = web1_answer(ps[0].cfg.tasks_mac, &to, &data, true);
        let ip4 =
            |at: usize| std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&vx[at..at + 4]).unwrap());
        let (n1, n2) = (ip4(ETH + 12), ip4(ETH + 16));
        let (n2_mac, up) = (vx[..6].try_into().unwrap(), ps[0].cfg.uplink_mac);
        let frames: Vec<Vec<u8>> = testkit::fragment(&answer, 1450, 0x4321)
            .iter()
            .map(|piece| testkit::vxlan_frame(n2_mac, up, n2, n1, 50001, ctl::INGRESS_VNI, piece))
            .collect();
        assert_eq!(frames.len(), 3);
        let input: Vec<_> = frames.iter().map(|f| (0, f)).collect();
        let (out, seen) = drive(&mut ps, &t, 6, bufs(&input));
        assert_eq!(seen, vec![Verdict::Tx(PortId::Uplink); 3]);
        let mut joined = Vec::new();
        for (_, f) in &out {
            let ip = Ipv6Packet::new_checked(&f[ETH..]).unwrap();
            assert_eq!(ip.dst_addr(), c);
            let fh = &ip.payload()[..8];
            let off = usize::from(u16::from_be_bytes([fh[2], fh[3]]) >> 3) * 8;
            assert_eq!(off, joined.len());
            joined.extend_from_slice(&ip.payload()[8..]);
        }
        let u = UdpPacket::new_checked(&joined[..]).unwrap();
        assert_eq!(
            usize::from(u.len()),
            joined.len(),
            "every byte of the datagram"
        );
        assert!(u.verify_checksum(&n2_addr6().into(), &c.into()));
        assert_eq!(u.payload(), &data[..]);
    }

    /// An atomic fragment (offset 0, no more fragments) is the whole datagram (RFC 6946).
    #[test]
    fn an_atomic_fragment_is_taken_whole() {
        let (t, mut p) = udp_on_n2();
        let whole = udp6(client(9), 50000, 5353, b"atomic");
        let mut atomic = testkit::fragment6(&whole, 1500, 7).remove(0);
        assert_eq!(atomic.len(), whole.len() + 8);
        let (v, out) = run(&mut p, &t, PortId::Uplink, &atomic);
        assert!(matches!(v, Verdict::Tx(_)), "{v:?}");
        assert_eq!(p.stats.fragments_in, 0);
        assert!(out.windows(6).any(|w| w == b"atomic"));
        // Its checksum is checked as a whole datagram's.
        let last = atomic.len() - 1;
        atomic[last] ^= 1;
        let (v, _) = run(&mut p, &t, PortId::Uplink, &atomic);
        assert_eq!(v, Verdict::Drop(DropReason::BadL4Checksum));
    }

    /// A segment whose checksum does not hold over the IPv6 pseudo-header never opens a flow.
    #[test]
    fn a_bad_checksum_over_ipv6_is_dropped_untouched() {
        let (t, mut p) = on_n2(1, 0);
        let mut f = seg6(client(5), 40000, 8080, TcpControl::Syn, b"");
        let last = f.len() - 1;
        f[last] ^= 0x10;
        let (v, out) = run(&mut p, &t, PortId::Uplink, &f);
        assert_eq!((v, &out), (Verdict::Drop(DropReason::BadL4Checksum), &f));
        assert_eq!(p.flows.len(), 0);
    }

    /// A client's packet lands on any worker's queue; the owner of its flow converts it.
    #[test]
    fn an_ipv6_clients_packet_is_handed_as_it_arrived_to_the_worker_that_owns_its_flow() {
        let f = seg6(client(4), 40000, 8080, TcpControl::Syn, b"");
        let owner = flow::owner_of(stand_in(&client(4).octets()), 40000, 2);
        let (t, mut p) = on_n2(2, 1 - owner);
        let (v, out) = run(&mut p, &t, PortId::Uplink, &f);
        assert_eq!((v, &out), (Verdict::Handoff(owner), &f));
        let (t, mut p) = on_n2(2, owner);
        let (v, _) = run(&mut p, &t, PortId::Uplink, &f);
        assert!(matches!(v, Verdict::Tx(_)), "{v:?}");
    }
}
