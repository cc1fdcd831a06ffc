//! Between bursts: idle flows expire, flows of tasks that are gone end (their TCP clients get a
//! RST), and wanted ARP requests go out.

use super::*;

impl Pipeline {
    // ---- housekeeping ----------------------------------------------------------------------

    /// Between bursts: expires idle flows, ends flows of tasks that are gone (TCP resets towards
    /// their clients), and emits wanted ARP requests. Generated frames are appended to `out`
    /// with `port` set to the port to send them on; buffers come from `pool`.
    // Casts: `now` is a millisecond clock kept as u32 that wraps after 49 days: every comparison of it wraps too.
    #[allow(clippy::cast_possible_truncation)]
    pub fn maintain(
        &mut self,
        table: &ServiceTable,
        now_ms: u64,
        pool: &mut Pool,
        out: &mut Burst,
    ) {
        let now = now_ms as u32;
        if table.generation != self.generation {
            self.adopt(table);
        }
        // A new table's check of every flow goes as fast as it can; otherwise the idle sweep
        // looks at `sweep_budget` flows per millisecond gone by, not on every loop (a worker
        // that spins would spend its time sweeping; one that sleeps between frames sweeps as
        // many flows a second, in fewer passes).
        let budget = if self.recheck > 0 {
            self.cfg.sweep_budget.max(4096)
        } else {
            let ms = now.wrapping_sub(self.last_sweep).min(64) as usize;
            self.cfg.sweep_budget * ms
        };
        self.last_sweep = now;
        self.recheck = self.recheck.saturating_sub(budget);
        let stats = &mut self.stats;
        let resets = &mut self.resets;
        let passive = &mut self.passive;
        let tasks = &mut self.task_stats;
        let pass_done = self.flows.sweep(
            now,
            budget,
            |uid| uid == 0 || table.task_alive(uid),
            |r| match r {
                Reaped::Expired => stats.flows_expired += 1,
                Reaped::Unanswered(uid) => {
                    stats.flows_expired += 1;
                    stats.syn_unanswered += 1;
                    passive.saw(uid, super::passive::Seen::Unanswered);
                }
                Reaped::Ended(f) => {
                    stats.flows_ended += 1;
                    if f.is_tcp() && f.kind != FlowKind::ReturnRoute && resets.try_push(f).is_err()
                    {
                        stats.resets_unsent += 1;
                    }
                }
            },
            |f| {
                let active = f.is_tcp() && f.tcp == flow::TcpState::Established;
                tasks.tally(f.stats_slot(Dir::Fwd), active);
            },
        );
        if pass_done {
            self.task_stats.close_pass();
        }
        self.stats.active_flows = self.flows.len() as u64;
        while !out.is_full() {
            let Some(f) = self.resets.pop() else { break };
            let Some(mut b) = pool.get() else {
                // Back where it was popped from: there is room.
                let _ = self.resets.try_push(f);
                break;
            };
            if self.reset_frame(table, &f, &mut b) {
                self.stats.resets_sent += 1;
                out.push(b);
            } else {
                // The client's next hop is not known (or not reachable from here).
                self.stats.resets_unsent += 1;
                pool.put(b);
            }
        }
        if !self.held.is_empty() {
            self.expire_held(now, pool);
        }
        self.refill_spares(pool);
        while !out.is_full() {
            let Some((ip, port)) = self.want_arp.pop() else {
                break;
            };
            let Some(mut b) = pool.get() else { break };
            if !self.arp_request(table, ip, port, &mut b) {
                pool.put(b);
                continue;
            }
            self.asking(ip, now);
            out.push(b);
        }
    }

    /// Walks the next [`crate::conn::CHUNK`] flow records for a `conn ls` or `conn rm` job:
    /// copies the flows it matches into its rows (while they have room), or ends them (a TCP
    /// client's reset queued, sent by [`Pipeline::maintain`]). Returns whether the walk is
    /// through. `conn rm` stops early while the reset queue is full and goes on next time.
    // Casts: `now` is a millisecond clock kept as u32 that wraps after 49 days; flow ids are
    // below the capacity, at most 2^28.
    #[allow(clippy::cast_possible_truncation)]
    pub fn serve(&mut self, job: &mut crate::conn::Job, now_ms: u64) -> bool {
        let now = now_ms as u32;
        job.accounting = self.cfg.flow_accounting;
        let cap = self.flows.capacity() as u32;
        let end = job.cursor.saturating_add(crate::conn::CHUNK).min(cap);
        let mut id = job.cursor;
        while id < end {
            let f = self.flows.get(id);
            if f.is_live() && job.matcher.matches(f) {
                if job.remove {
                    let reset = f.is_tcp() && f.kind != FlowKind::ReturnRoute;
                    if reset && self.resets.is_full() {
                        break;
                    }
                    if let Some(f) = self.flows.remove(id) {
                        job.matched += 1;
                        job.removed += 1;
                        self.stats.flows_removed += 1;
                        if reset && self.resets.try_push(f).is_ok() {
                            job.reset += 1;
                        }
                    }
                } else {
                    job.matched += 1;
                    if job.rows.len() < job.rows.capacity() {
                        let idle_ms = f.idle_ms(now);
                        job.rows.push(crate::conn::Row {
                            flow: *f,
                            idle_ms,
                            expires_ms: f.timeout_ms().saturating_sub(u64::from(idle_ms)),
                        });
                    }
                }
            }
            id += 1;
        }
        job.cursor = id;
        self.stats.active_flows = self.flows.len() as u64;
        id >= cap
    }

    /// Builds a TCP RST to the client of flow `f`, as from the service it connected to.
    pub(super) fn reset_frame(&self, t: &ServiceTable, f: &Flow, b: &mut PacketBuf) -> bool {
        // The reverse action turns a task's packet into what the client expects to see.
        let rev = f.rev;
        let (dmac, smac, port) = match rev.egress {
            Egress::Uplink { mac } => (mac, self.cfg.uplink_mac, PortId::Uplink),
            Egress::Uplink6 { mac } => return self.reset6(t, f, mac, b),
            Egress::Tasks => match self.neigh.get(rev.dst) {
                Some(mac) => (mac, self.cfg.tasks_mac, PortId::Tasks),
                None => return false,
            },
            Egress::Vxlan { .. } => return false,
        };
        let mut frame = [0u8; reply::RST_LEN];
        // In window: the sequence number the client acknowledged last.
        let n = reply::tcp_rst(
            &mut frame,
            (smac, dmac),
            addr(rev.src),
            rev.sport,
            addr(rev.dst),
            rev.dport,
            f.client_ack,
            None,
        );
        b.fill(&frame[..n]);
        b.port = port;
        if port == PortId::Tasks {
            b.vlan = task_vlan(t, rev.dst);
            if f.is_v6() {
                // A dual-stack task's connection to a VIP's twin: its socket is an IPv6 one.
                return super::overlay6::reset_back6(t, b);
            }
        }
        true
    }

    /// Writes into `b` the request for `ip`'s MAC on `port`: ARP, or over an IPv6 underlay
    /// Neighbor Discovery for a peer's VTEP (`ip` its name). False when there is nobody to ask
    /// (a name no peer has now).
    pub(super) fn arp_request(
        &self,
        t: &ServiceTable,
        ip: u32,
        port: PortId,
        b: &mut PacketBuf,
    ) -> bool {
        if let (PortId::Uplink, Some(src)) = (port, t.node(t.local).vtep6) {
            let Some(target) = t.peer(addr(ip)).and_then(|i| t.node(i).vtep6) else {
                return false;
            };
            let mut frame = [0u8; 128];
            let mac = self.cfg.uplink_mac;
            let Some(n) = super::underlay6::neighbor_solicitation(&mut frame, mac, src, target)
            else {
                return false;
            };
            b.fill(&frame[..n]);
            b.port = port;
            return true;
        }
        let (mac, sender) = match port {
            PortId::Uplink => (self.cfg.uplink_mac, t.node(t.local).vtep),
            PortId::Tasks => {
                // Ask from the gateway of the network the address is on.
                let gw = t
                    .addr(addr(ip))
                    .map(|e| t.net(e.net).gateway)
                    .unwrap_or(Ipv4Address::UNSPECIFIED);
                (self.cfg.tasks_mac, gw)
            }
        };
        let mut frame = [0u8; ETH + 28];
        frame[0..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&mac);
        put16(&mut frame, 12, 0x0806);
        let req = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(mac),
            source_protocol_addr: sender,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: addr(ip),
        };
        req.emit(&mut ArpPacket::new_unchecked(&mut frame[ETH..]));
        b.fill(&frame);
        b.port = port;
        if port == PortId::Tasks {
            // On the task's own VLAN: nobody else hears it.
            b.vlan = task_vlan(t, ip);
        }
        true
    }
}
