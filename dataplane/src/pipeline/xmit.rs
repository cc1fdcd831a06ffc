//! Stage 4, transmit: the flow's rewrite (NAT, MSS clamping), the size check against the
//! overlay's MTU (with ICMP "fragmentation needed"), and the send by the flow's egress (the
//! tasks port, the uplink, or VXLAN to a peer).

use super::*;

impl Pipeline {
    pub(super) fn egress_to(
        &self,
        t: &ServiceTable,
        local: bool,
        node: u16,
        vni: u32,
        key: &FlowKey,
    ) -> Egress {
        if local {
            Egress::Tasks
        } else {
            let n = t.node(node);
            Egress::Vxlan {
                vtep: ipkey(n.vtep),
                port: n.vtep_port,
                vni,
                sport: entropy_port(key),
            }
        }
    }

    /// Applies flow `id`'s action for `dir` to the packet and sends it on (always inlined, as
    /// `parse_ipv4` is: the hot path is one function).
    #[inline(always)]
    pub(super) fn forward(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: &L3,
        id: u32,
        dir: Dir,
    ) -> Result<Verdict, DropReason> {
        let fl = self.flows.get_mut(id);
        match dir {
            Dir::Fwd => {
                fl.last_seen = now;
                if l3.proto == TCP {
                    fl.tcp = fl.tcp.next(l3.flags, true);
                    if l3.flags & flow::tcp::ACK != 0 {
                        fl.client_ack = l3.ack;
                    }
                }
            }
            Dir::Rev => {
                fl.rev_seen = now;
                // Only these flags move the state on a reverse segment (`TcpState::next`): the
                // others leave the flow's first line alone.
                if l3.proto != TCP {
                    // UDP: a datagram back says the task serves (news only after a failure).
                    if fl.kind != flow::FlowKind::ReturnRoute {
                        self.passive.answered(fl.task_uid);
                    }
                } else if l3.flags & flow::tcp::CHANGES_STATE_BACKWARDS != 0 {
                    let opening = fl.tcp == flow::TcpState::SynSent;
                    fl.tcp = fl.tcp.next(l3.flags, false);
                    // The task's answer to a new connection: passive health's evidence.
                    if opening && fl.kind != flow::FlowKind::ReturnRoute {
                        if l3.flags & flow::tcp::RST != 0 {
                            self.stats.syn_refused += 1;
                            self.passive.saw(fl.task_uid, passive::Seen::Refused);
                        } else if fl.tcp == flow::TcpState::SynReceived {
                            self.passive.saw(fl.task_uid, passive::Seen::Answered);
                        }
                    }
                }
            }
        }
        if self.cfg.flow_accounting {
            fl.count(dir, buf.len() as u64);
        }
        let a = *fl.action(dir);
        let slot = fl.stats_slot(dir);
        if l3.frag != frag::Frag::Whole {
            // A datagram's first fragment: its other fragments follow this flow.
            self.frag_flow = Some(*fl.key(dir));
        }
        if let Egress::Uplink6 { mac } = a.egress {
            return self.forward6(t, buf, l3, &a, slot, id, mac);
        }
        if buf.len() > self.max_frame {
            return self.forward_big(t, now, buf, l3, &a, slot, dir);
        }
        self.task_stats.add(slot, 1, buf.len() as u64, 0);
        nat::rewrite(buf.data_mut(), ETH, l3.l4, l3.proto, &a);
        if l3.proto == TCP && l3.flags & flow::tcp::SYN != 0 {
            self.clamp_mss(t, buf, l3, &a, dir);
        }
        // A drop here is blamed on the flow's task by `process` (`blame_flow_of`), off this
        // path: matching the result here made `by_flow_or` stop inlining `send`.
        self.send(t, now, buf, a.dst, a.egress)
    }

    /// `forward` of a packet longer than the smallest overlay MTU, or of a datagram's fragment
    /// after the first (any length; only its IPv4 header is rewritten): checked against where
    /// it goes before it is rewritten (so an ICMP answer quotes the header its sender knows),
    /// and fragmented after, when it has no DF.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_big(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: &L3,
        a: &Action,
        slot: u16,
        dir: Dir,
    ) -> Result<Verdict, DropReason> {
        let split = match self.oversize(t, now, buf, a.dst, a.egress) {
            // Dropped as too big and answered with ICMP (a `Tx` verdict): the flow's task's
            // drop. Dropped without an answer (`Err`): blamed as any of the flow's drops, by
            // `process` or (a later fragment) `later`.
            Size::Refused(v) => {
                if v.is_ok() {
                    self.task_stats.drop_at(slot);
                }
                return v;
            }
            Size::Fits => 0,
            Size::Split(mtu) => mtu,
        };
        self.task_stats.add(slot, 1, buf.len() as u64, 0);
        if l3.frag == frag::Frag::Later {
            nat::rewrite_ip(buf.data_mut(), ETH, a);
        } else {
            nat::rewrite(buf.data_mut(), ETH, l3.l4, l3.proto, a);
        }
        if l3.proto == TCP && l3.flags & flow::tcp::SYN != 0 {
            self.clamp_mss(t, buf, l3, a, dir);
        }
        self.send_sized(t, now, buf, a.dst, a.egress, split)
    }

    /// Lowers the MSS of a SYN or SYN-ACK of a flow (already translated) to what its task's
    /// network carries, in both directions: the SYN tells the task, the SYN-ACK the client, how
    /// large a segment the other end may send through the overlay.
    #[cold]
    #[inline(never)]
    pub(super) fn clamp_mss(
        &mut self,
        t: &ServiceTable,
        buf: &mut PacketBuf,
        l3: &L3,
        a: &Action,
        dir: Dir,
    ) {
        let task = match dir {
            Dir::Fwd => a.dst,
            Dir::Rev => l3.src,
        };
        let mtu = self.mtu_of(t.addr(addr(task)).map(|e| e.net));
        let max = mtu.saturating_sub(nat::mss::IPV4_TCP_HEADERS);
        if nat::mss::clamp(buf.data_mut(), l3.l4, max) {
            self.stats.mss_clamped += 1;
        }
    }

    /// For a frame about to go to `dst` by `egress` (encapsulated on an overlay, or to a local
    /// task): whether it fits the network's MTU. If it does not and has no DF, it is to be
    /// fragmented to that MTU. If it has DF (RFC 1191 path MTU discovery) it is dropped as
    /// `TooBig` and its sender gets an ICMP "fragmentation needed" with the network's MTU,
    /// from the address it sent through (the node's, or its network's gateway), in place of
    /// the frame, at most a burst per source per 100 ms.
    #[cold]
    #[inline(never)]
    pub(super) fn oversize(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        dst: u32,
        egress: Egress,
    ) -> Size {
        let Some(mtu) = self.mtu_to(t, dst, egress) else {
            return Size::Fits;
        };
        let f = buf.data();
        if f.len() <= ETH + usize::from(mtu) {
            return Size::Fits;
        }
        if buf.v6 {
            // A task's IPv6 packet, which IPv6 never fragments on the way: dropped (see
            // `overlay6`).
            return Size::Refused(Err(DropReason::TooBig));
        }
        let df = f.get(ETH + 6).is_some_and(|b| b & 0x40 != 0);
        if !df {
            return Size::Split(mtu);
        }
        let Some(sender) = f.get(ETH + 12..ETH + 16) else {
            return Size::Refused(Err(DropReason::TooBig));
        };
        let sender = u32::from_be_bytes([sender[0], sender[1], sender[2], sender[3]]);
        let port = buf.port;
        let from = match port {
            PortId::Uplink => Some(t.node_addr),
            PortId::Tasks => t.addr(addr(sender)).map(|e| t.net(e.net).gateway),
        };
        let Some(from) = from else {
            return Size::Refused(Err(DropReason::TooBig));
        };
        if !self.icmp_limit.allow(sender, now) {
            return Size::Refused(Err(DropReason::TooBig));
        }
        let smac = match port {
            PortId::Uplink => self.cfg.uplink_mac,
            PortId::Tasks => self.cfg.tasks_mac,
        };
        let dmac = EthernetFrame::new_unchecked(f).src_addr().0;
        let mut out = [0u8; reply::FRAG_NEEDED_LEN];
        let n = reply::frag_needed(&mut out, (smac, dmac), ipkey(from), sender, mtu, &f[ETH..]);
        buf.fill(&out[..n]);
        self.stats.drop(DropReason::TooBig);
        self.stats.icmp_frag_needed += 1;
        Size::Refused(Ok(Verdict::Tx(port)))
    }

    /// The MTU of the network a frame to `dst` by `egress` goes through: its overlay's
    /// (VXLAN, or to a local task); `None` towards an outside client, as the uplink carries
    /// what the overlay does and more.
    pub(super) fn mtu_to(&self, t: &ServiceTable, dst: u32, egress: Egress) -> Option<u16> {
        let net = match egress {
            Egress::Vxlan { vni, .. } => t.network_by_vni(vni),
            Egress::Tasks => t.addr(addr(dst)).map(|e| e.net),
            Egress::Uplink { .. } | Egress::Uplink6 { .. } => return None,
        };
        Some(self.mtu_of(net))
    }

    /// The MTU of network `net` on this node; the smallest of any when it is not known.
    #[inline(always)]
    pub(super) fn mtu_of(&self, net: Option<crate::balance::table::NetIdx>) -> u16 {
        net.and_then(|n| self.net_mtu.get(usize::from(n)).copied())
            .unwrap_or(self.min_mtu)
    }

    /// Sends an IPv4 frame (already rewritten) towards `dst` by `egress`.
    #[inline]
    pub(super) fn send(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        dst: u32,
        egress: Egress,
    ) -> Result<Verdict, DropReason> {
        match egress {
            Egress::Uplink { mac } => {
                let f = buf.data_mut();
                f[0..6].copy_from_slice(&mac);
                f[6..12].copy_from_slice(&self.cfg.uplink_mac);
                Ok(Verdict::Tx(PortId::Uplink))
            }
            // Converted by `forward6` before it comes here; never sent as IPv4.
            Egress::Uplink6 { .. } => Err(DropReason::NoRoute),
            Egress::Tasks => {
                let Some(&hw) = self.macs.get(&self.neigh, dst, dst, |mac| Hw {
                    mac,
                    vlan: task_vlan(t, dst),
                }) else {
                    self.want(dst, PortId::Tasks, now);
                    return Err(DropReason::NoNeighbor);
                };
                let f = buf.data_mut();
                f[0..6].copy_from_slice(&hw.mac);
                f[6..12].copy_from_slice(&self.cfg.tasks_mac);
                buf.vlan = hw.vlan;
                Ok(Verdict::Tx(PortId::Tasks))
            }
            Egress::Vxlan {
                vtep,
                port,
                vni,
                sport,
            } => {
                if t.vxlan_slow {
                    return self.send_vxlan_slow(t, now, buf, (vtep, port), vni, sport);
                }
                let up = self.cfg.uplink_mac;
                let outer = self.outers.get(&self.neigh, (vtep, port), vtep, |mac| {
                    Outer::new(up, mac, ipkey(t.node(t.local).vtep), vtep, port)
                });
                let Some(outer) = outer else {
                    self.want(vtep, PortId::Uplink, now);
                    return Err(DropReason::NoNeighbor);
                };
                inner_ethernet(buf, self.cfg.tasks_mac);
                outer.encap(buf, sport, vni)?;
                Ok(Verdict::Tx(PortId::Uplink))
            }
        }
    }

    /// `send` into VXLAN when the mesh has an encrypted network (the frame sealed first if its
    /// network is), runs over an IPv6 underlay (IPv6 outer headers) or has a dual-stack
    /// network (a task's IPv6 packet turned back into IPv6 first): out of `send`, so the plain
    /// IPv4 overlay's path carries none of them.
    #[cold]
    #[inline(never)]
    fn send_vxlan_slow(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        (vtep, port): (u32, u16),
        vni: u32,
        sport: u16,
    ) -> Result<Verdict, DropReason> {
        if buf.v6 {
            // A task's IPv6 packet: IPv6 again inside VXLAN.
            let net = t.network_by_vni(vni).ok_or(DropReason::UnknownVni)?;
            overlay6::back6(t, buf, net)?;
        }
        let (up, tasks_mac) = (self.cfg.uplink_mac, self.cfg.tasks_mac);
        let me = t.node(t.local);
        if let Some(src) = me.vtep6 {
            // Over an IPv6 underlay `vtep` is the peer's 32-bit name (`ctl::vtep6_key`); a name
            // no peer has now (a flow of a removed node) gets the unspecified address, which
            // `Outer6::encap` refuses.
            let outer = self.outers6.get(&self.neigh, (vtep, port), vtep, |mac| {
                let dst = t.peer(addr(vtep)).and_then(|i| t.node(i).vtep6);
                let dst = dst.unwrap_or(smoltcp::wire::Ipv6Address::UNSPECIFIED);
                Outer6::new(up, mac, src.octets(), dst.octets(), port)
            });
            let Some(outer) = outer else {
                self.want(vtep, PortId::Uplink, now);
                return Err(DropReason::NoNeighbor);
            };
            inner_ethernet(buf, tasks_mac);
            if t.sealed {
                Self::seal(&mut self.sealer, t, buf, vni, vtep)?;
            }
            outer.encap(buf, sport, vni)?;
        } else {
            let outer = self.outers.get(&self.neigh, (vtep, port), vtep, |mac| {
                Outer::new(up, mac, ipkey(me.vtep), vtep, port)
            });
            let Some(outer) = outer else {
                self.want(vtep, PortId::Uplink, now);
                return Err(DropReason::NoNeighbor);
            };
            inner_ethernet(buf, tasks_mac);
            if t.sealed {
                Self::seal(&mut self.sealer, t, buf, vni, vtep)?;
            }
            outer.encap(buf, sport, vni)?;
        }
        Ok(Verdict::Tx(PortId::Uplink))
    }

    /// Seals a frame for VTEP `vtep` on network `vni` when the network is encrypted (outside
    /// `send`, so the plain overlay's path does not carry it).
    #[inline(never)]
    fn seal(
        sealer: &mut Sealer,
        t: &ServiceTable,
        buf: &mut PacketBuf,
        vni: u32,
        vtep: u32,
    ) -> Result<(), DropReason> {
        let Some(keys) = t.network_by_vni(vni).and_then(|n| t.net(n).keys.as_ref()) else {
            return Ok(());
        };
        let local = ipkey(t.node(t.local).vtep);
        sealer.seal(keys, buf, vni, local, vtep)
    }
}

/// Writes the inner Ethernet header of a frame going into VXLAN (from `tasks_mac`): the
/// receiving meshd rewrites it on delivery.
#[inline(always)]
fn inner_ethernet(buf: &mut PacketBuf, tasks_mac: [u8; 6]) {
    let f = buf.data_mut();
    f[0..6].copy_from_slice(&[0; 6]);
    f[6..12].copy_from_slice(&tasks_mac);
}
