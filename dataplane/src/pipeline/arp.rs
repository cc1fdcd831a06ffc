//! ARP, answered in place: on the uplink for the node's address; on the tasks port for every
//! overlay address that is not a local task (RFC 826).

use super::*;

impl Pipeline {
    // ---- ARP ----------------------------------------------------------------------------

    /// Answers ARP in place: on the uplink for the node's address; on the tasks port for every
    /// overlay address that is not a local task. Learns senders that are peers or local tasks.
    pub(super) fn arp(
        &mut self,
        t: &ServiceTable,
        buf: &mut PacketBuf,
    ) -> Result<Verdict, DropReason> {
        let port = buf.port;
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
        let (answer, my_mac) = match port {
            PortId::Uplink => {
                if t.peer(source_protocol_addr).is_some() {
                    self.neigh.learn(sender, source_hardware_addr.0);
                }
                let me = t.node(t.local);
                (
                    target_protocol_addr == t.node_addr || target_protocol_addr == me.vtep,
                    self.cfg.uplink_mac,
                )
            }
            PortId::Tasks => {
                let Some(src) = t.addr(source_protocol_addr) else {
                    return Err(DropReason::ArpIgnored);
                };
                if !matches!(src.kind, AddrKind::Task { local: true, .. }) {
                    return Err(DropReason::ArpIgnored);
                }
                self.neigh.learn(sender, source_hardware_addr.0);
                let local_task = matches!(
                    t.addr(target_protocol_addr).map(|e| e.kind),
                    Some(AddrKind::Task { local: true, .. })
                );
                let net = t.net(src.net);
                let in_net = net.subnet.contains(target_protocol_addr);
                (
                    in_net && !local_task && target_protocol_addr != source_protocol_addr,
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

    /// Notes that `ip`'s MAC is wanted; [`Pipeline::maintain`] sends the request.
    pub(super) fn want(&mut self, ip: u32, port: PortId, now: u32) {
        let slot = (ip as usize) % self.arp_sent.len();
        let (last_ip, at) = self.arp_sent[slot];
        if last_ip == ip && now.wrapping_sub(at) < 1000 {
            return;
        }
        if self.want_arp.try_push((ip, port)).is_ok() {
            self.arp_sent[slot] = (ip, now);
        }
    }
}
