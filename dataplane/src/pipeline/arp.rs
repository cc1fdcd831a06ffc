//! ARP, answered in place: on the uplink for the node's address; on the tasks port for every
//! overlay address that is not on the asker's own segment (RFC 826): for a task on its own
//! VLAN, every other address of its network.

use super::*;

/// What meshd asked of `ip`'s MAC: when it last wanted it (at most one request a second), the
/// request sent and open until its first answer, and the MAC a first answer proposed in place of
/// the known one, until a second answer confirms it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ask {
    ip: u32,
    wanted_at: u32,
    sent_at: u32,
    open: bool,
    candidate: Option<[u8; 6]>,
}

impl Pipeline {
    // ---- ARP ----------------------------------------------------------------------------

    /// Answers ARP in place: on the uplink for the node's address; on the tasks port for every
    /// overlay address not on the asker's segment. Learns senders that are peers or local tasks
    /// (a task only from its own VLAN).
    pub(super) fn arp(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
    ) -> Result<Verdict, DropReason> {
        let (port, in_vlan) = (buf.port, buf.vlan);
        let f = buf.data_mut();
        let repr = {
            let p = ArpPacket::new_checked(&f[ETH..]).map_err(|_| DropReason::BadArp)?;
            ArpRepr::parse(&p).map_err(|_| DropReason::BadArp)?
        };
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = repr
        else {
            return Err(DropReason::BadArp);
        };
        let sender = ipkey(source_protocol_addr);
        // Only an answer to meshd's own request may change a MAC it knows.
        let solicited = operation == ArpOperation::Reply && self.asked(sender, now);
        let (answer, my_mac) = match port {
            PortId::Uplink => {
                if t.peer(source_protocol_addr).is_some() {
                    let _ = self.note_mac(sender, source_hardware_addr.0, port, now, solicited);
                }
                let me = t.node(t.local);
                (
                    // Over an IPv6 underlay the VTEP's name is no address to answer for.
                    target_protocol_addr == t.node_addr
                        || (target_protocol_addr == me.vtep && me.vtep6.is_none()),
                    self.cfg.uplink_mac,
                )
            }
            PortId::Tasks => {
                let Some(src) = t.addr(source_protocol_addr) else {
                    return Err(DropReason::ArpIgnored);
                };
                let AddrKind::Task {
                    local: true, vlan, ..
                } = src.kind
                else {
                    return Err(DropReason::ArpIgnored);
                };
                if vlan != in_vlan {
                    return Err(DropReason::WrongVlan);
                }
                let _ = self.note_mac(sender, source_hardware_addr.0, port, now, solicited);
                // Whoever shares the asker's segment answers for itself: a task on its own
                // VLAN shares it with nobody, so meshd answers for every other address of its
                // network (and carries the traffic, by its rules); untagged tasks share one.
                let same_segment = matches!(
                    t.addr(target_protocol_addr).map(|e| e.kind),
                    Some(AddrKind::Task { local: true, vlan: v, .. }) if v == vlan
                );
                let net = t.net(src.net);
                let in_net = net.subnet.contains(target_protocol_addr);
                (
                    in_net && !same_segment && target_protocol_addr != source_protocol_addr,
                    self.cfg.tasks_mac,
                )
            }
        };
        if operation == ArpOperation::Reply
            && (port == PortId::Tasks || t.peer(source_protocol_addr).is_some())
        {
            // A reply from a task or a peer, learned above: nothing to send, and not a drop.
            return Ok(Verdict::Consumed);
        }
        if operation != ArpOperation::Request || !answer {
            return Err(DropReason::ArpIgnored);
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(my_mac),
            source_protocol_addr: target_protocol_addr,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let mut p = ArpPacket::new_unchecked(&mut f[ETH..]);
        reply.emit(&mut p);
        f[0..6].copy_from_slice(&source_hardware_addr.0);
        f[6..12].copy_from_slice(&my_mac);
        self.stats.arp_replies += 1;
        Ok(Verdict::Tx(port))
    }

    /// What a frame or an ARP packet says of `ip`'s MAC (from `port`): learned when `ip` has no
    /// entry yet. When it contradicts the entry: if `solicited` (the first answer to meshd's
    /// own open request), the new MAC becomes a candidate, and a second such answer with the
    /// same MAC makes the change (counted in `neighbor_changes`, kept for the worker to log);
    /// else it is not believed (counted in `neighbor_conflicts`) and an ARP request goes out,
    /// at most once a second. So a forged ARP reply or VXLAN frame from the underlay, or a
    /// task's spoofed frame, does not redirect a peer's or a task's traffic: a forger must
    /// answer meshd's requests before the real owner, twice in a row. Returns whether `mac` is
    /// now `ip`'s (known already, or just learned): a frame that says otherwise is dropped by
    /// its caller.
    #[cold]
    #[inline(never)]
    pub(super) fn note_mac(
        &mut self,
        ip: u32,
        mac: [u8; 6],
        port: PortId,
        now: u32,
        solicited: bool,
    ) -> bool {
        let slot = (ip as usize) % self.arp_open.len();
        match self.neigh.get(ip) {
            None => {
                // A full table learns nothing; the frame is not refused for it.
                self.neigh.learn(ip, mac);
                true
            }
            Some(known) if known == mac => {
                if solicited && self.arp_open[slot].ip == ip {
                    self.arp_open[slot].candidate = None;
                }
                true
            }
            Some(known) if solicited => {
                let ask = &mut self.arp_open[slot];
                if ask.ip == ip && ask.candidate == Some(mac) {
                    ask.candidate = None;
                    self.neigh.learn(ip, mac);
                    self.stats.neighbor_changes += 1;
                    self.mac_change = Some((ip, known, mac));
                    true
                } else {
                    ask.ip = ip;
                    ask.candidate = Some(mac);
                    self.want(ip, port, now);
                    false
                }
            }
            Some(_) => {
                self.stats.neighbor_conflicts += 1;
                self.want(ip, port, now);
                false
            }
        }
    }

    /// Whether an ARP reply from `ip` answers meshd's own request: one sent in the last 3
    /// seconds and not answered yet. The first answer closes it.
    pub(super) fn asked(&mut self, ip: u32, now: u32) -> bool {
        let a = &mut self.arp_open[(ip as usize) % self.arp_open.len()];
        if a.ip == ip && a.open && now.wrapping_sub(a.sent_at) < 3000 {
            a.open = false;
            return true;
        }
        false
    }

    /// `ip`'s entry of the table of asks, taken over from another address if it held it.
    fn ask_of(&mut self, ip: u32) -> &mut Ask {
        let a = &mut self.arp_open[(ip as usize) % self.arp_open.len()];
        if a.ip != ip {
            *a = Ask {
                ip,
                ..Ask::default()
            };
        }
        a
    }

    /// Notes that a request for `ip` went out at `now`.
    pub(super) fn asking(&mut self, ip: u32, now: u32) {
        let a = self.ask_of(ip);
        a.sent_at = now;
        a.open = true;
    }

    /// Notes that `ip`'s MAC is wanted; [`Pipeline::maintain`] sends the request, at most once
    /// a second per address, so a storm of misses sends one.
    pub(super) fn want(&mut self, ip: u32, port: PortId, now: u32) {
        let slot = (ip as usize) % self.arp_open.len();
        let a = self.arp_open[slot];
        if a.ip == ip && a.wanted_at != 0 && now.wrapping_sub(a.wanted_at) < 1000 {
            return;
        }
        if self.want_arp.try_push((ip, port)).is_ok() {
            // Never 0: 0 means "not wanted yet".
            self.ask_of(ip).wanted_at = now.max(1);
        }
    }
}
