//! The per-burst fast path.
//!
//! [`Pipeline::process`] takes a burst of frames, the current [`ServiceTable`] and `now`, and
//! rewrites each frame in place and gives it a [`Verdict`]: out of a port, to the host stack, to
//! the worker that owns its flow, or dropped with a typed reason. It reads no clock, no socket and
//! no global, allocates nothing and cannot panic on any input (frames are checked before any
//! field is read; every index is bounded by those checks).
//!
//! Paths (see DESIGN.md):
//! - uplink → published port: flow lookup; on a miss a task is picked (round-robin or Maglev),
//!   the flow recorded, the packet DNAT'ed (and masqueraded in Swarm's mode) and delivered on the
//!   tasks port or VXLAN-encapsulated to the task's node;
//! - uplink → VXLAN from a peer VTEP: decapsulated, then routed in its overlay network;
//! - tasks port → overlay: VIP balancing, task-to-task forwarding, replies of flows;
//! - ARP from tasks for any overlay address that is not a local task, and for the node's
//!   address on the uplink, is answered in place.

use std::sync::Arc;

use arrayvec::ArrayVec;
use ctl::model::ClientIpMode;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol,
    Ipv4Address, TcpPacket, UdpPacket,
};

use crate::balance::{AddrKind, Scheduler, ServiceTable};
use crate::buf::{PacketBuf, Pool, PortId};
use crate::flow::{
    self, owner_of, Action, Dir, Egress, Flow, FlowKey, FlowKind, FlowTable, Reaped,
};
use crate::nat::ports::{self, MasqPorts};
use crate::nat::{self, dec_ttl, put16, put32};
use crate::neigh::{NeighCache, Neighbors};
use crate::overlay::{self, entropy_port, Outer};
use crate::port::{Burst, BURST};
use crate::stats::{DropReason, HostReason, TaskCounters, WorkerStats};
use crate::wire::checksum;
use crate::wire::reply::{self, RateLimit};
use crate::wire::vxlan;

/// What happens to a frame after the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send out of this port (the frame was rewritten for it).
    Tx(PortId),
    /// Hand to the host stack (ARP/ICMP/RST/DNS for the node and the mesh's own addresses).
    Host(HostReason),
    /// Hand to the worker that owns the frame's flow.
    Handoff(u16),
    /// Used up by the pipeline itself (an ARP reply it learned from): nothing to send.
    Consumed,
    Drop(DropReason),
}

/// How many tasks each worker keeps packet, byte and connection counters for.
pub const MAX_COUNTED_TASKS: usize = 8192;

/// One verdict per frame of a burst, in order.
pub type Verdicts = ArrayVec<Verdict, BURST>;

/// A worker's fixed settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub uplink_mac: [u8; 6],
    pub tasks_mac: [u8; 6],
    /// This worker's index and the number of workers (flow ownership).
    pub worker: u16,
    pub workers: u16,
    pub flow_capacity: usize,
    /// Verify TCP/UDP checksums of received frames (on by default).
    pub verify_l4_checksums: bool,
    /// Flows looked at per [`Pipeline::maintain`] call.
    pub sweep_budget: usize,
    /// The uplink interface's MTU: an encapsulated packet must fit it, so each overlay's MTU is
    /// at most this less 50 ([`ctl::VXLAN_OVERHEAD`]).
    pub uplink_mtu: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            uplink_mac: [0x02, 0, 0, 0, 0, 1],
            tasks_mac: [0x02, 0, 0, 0, 0, 2],
            worker: 0,
            workers: 1,
            flow_capacity: 1 << 16,
            verify_l4_checksums: true,
            sweep_budget: 256,
            uplink_mtu: 1500,
        }
    }
}

const ETH: usize = 14;
const IPV4: usize = 20;
const TCP: u8 = nat::TCP;
const UDP: u8 = nat::UDP;
const ICMP: u8 = 1;
/// Entries of a worker's cache of prebuilt outer headers, one per peer VTEP (direct-mapped).
const OUTER_CACHE: usize = 16;
/// Entries of a worker's cache of local tasks' MACs (direct-mapped).
const MAC_CACHE: usize = 64;

/// The parsed headers of an IPv4 frame; offsets are within the frame.
#[derive(Debug, Clone, Copy)]
pub struct L3 {
    pub proto: u8,
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags, or 0.
    pub flags: u8,
    /// TCP acknowledgement number, or 0.
    pub ack: u32,
    /// Offset of the TCP/UDP header in the frame.
    pub l4: usize,
}

impl L3 {
    #[inline]
    pub fn key(&self) -> FlowKey {
        FlowKey::new(self.proto, self.src, self.sport, self.dst, self.dport)
    }
    #[inline]
    fn has_ports(&self) -> bool {
        self.proto == TCP || self.proto == UDP
    }
}

#[inline]
fn addr(v: u32) -> Ipv4Address {
    Ipv4Address::from(v.to_be_bytes())
}

#[inline]
fn ipkey(a: Ipv4Address) -> u32 {
    u32::from_be_bytes(a.octets())
}

/// Checks the IPv4 header at `off` (and the TCP/UDP header after it) and reads what the fast
/// path needs. Every drop reason of the IPv4 and L4 layers comes from here.
///
/// The same checks as smoltcp's `Ipv4Packet::check_len`/`TcpPacket::check_len`, written out so
/// they cost a few compares, and checksums verified with a 64-bit-word sum; the IPv4 fields are
/// read from the fixed header as an array (no bounds check per field), the TCP and UDP ones
/// through smoltcp's views. Always inlined: returning the parsed fields through memory and the
/// call itself cost 5-13% of an established packet's time (bench pipeline, side by side).
#[inline(always)]
// Casts: an IPv4 payload is at most 65,535 bytes (checked against the total length).
#[allow(clippy::cast_possible_truncation)]
pub fn parse_ipv4(frame: &[u8], off: usize, verify_l4: bool) -> Result<L3, DropReason> {
    let Some(bytes) = frame.get(off..) else {
        return Err(DropReason::Truncated);
    };
    // The fixed header as an array: the reads below need no bounds checks.
    let Some(h) = bytes.first_chunk::<IPV4>() else {
        return Err(DropReason::Truncated);
    };
    //= https://www.rfc-editor.org/rfc/rfc791#section-3.1
    //# Version:  4 bits [...] IHL:  4 bits  Internet Header Length is the length of the internet
    //# header in 32 bit words
    let vihl = h[0];
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(DropReason::BadIpv4Header);
    }
    if vihl & 0x0f != 5 {
        return Err(DropReason::Ipv4Options);
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total < IPV4 || total > bytes.len() {
        return Err(DropReason::BadIpv4Header);
    }
    if !checksum::verify(0, h) {
        return Err(DropReason::BadIpChecksum);
    }
    // More-fragments flag or a fragment offset.
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return Err(DropReason::Fragment);
    }
    if h[8] <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let dst = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    let proto = h[9];
    let l4 = off + IPV4;
    // `IPV4 <= total <= bytes.len()`, checked above: the payload is what the header says.
    let payload = bytes.get(IPV4..total).unwrap_or_default();
    let mut out = L3 {
        proto,
        src,
        dst,
        sport: 0,
        dport: 0,
        flags: 0,
        ack: 0,
        l4,
    };
    let pseudo = || checksum::pseudo_v4(src, dst, proto, payload.len() as u16);
    match proto {
        TCP => {
            if payload.len() < 20 {
                return Err(DropReason::BadL4Header);
            }
            let t = TcpPacket::new_unchecked(payload);
            let doff = usize::from(t.header_len());
            if doff < 20 || doff > payload.len() {
                return Err(DropReason::BadL4Header);
            }
            if verify_l4 && !checksum::verify(pseudo(), payload) {
                return Err(DropReason::BadL4Checksum);
            }
            out.sport = t.src_port();
            out.dport = t.dst_port();
            out.flags = payload[13];
            out.ack = t.ack_number().0 as u32;
        }
        UDP => {
            if payload.len() < 8 {
                return Err(DropReason::BadL4Header);
            }
            let u = UdpPacket::new_unchecked(payload);
            if usize::from(u.len()) != payload.len() {
                return Err(DropReason::BadL4Header);
            }
            //= https://www.rfc-editor.org/rfc/rfc768
            //# An all zero transmitted checksum value means that the transmitter generated no
            //# checksum
            if verify_l4 && u.checksum() != 0 && !checksum::verify(pseudo(), payload) {
                return Err(DropReason::BadL4Checksum);
            }
            out.sport = u.src_port();
            out.dport = u.dst_port();
        }
        ICMP => {}
        _ => return Err(DropReason::UnknownProtocol),
    }
    Ok(out)
}

/// The flow key a frame most likely looks up (its own 5-tuple, or its inner one for VXLAN),
/// read without validation: only used to prefetch.
#[inline]
fn peek_key(f: &[u8]) -> Option<FlowKey> {
    let mut off = ETH;
    for _ in 0..2 {
        // The ethertype, the IPv4 header and the ports as one array: no bounds check per byte.
        let h = f.get(off - 2..)?.first_chunk::<{ 2 + IPV4 + 4 }>()?;
        if h[0..2] != [0x08, 0x00] || h[2] != 0x45 {
            return None;
        }
        let ip = 2;
        let proto = h[ip + 9];
        if proto != TCP && proto != UDP {
            return None;
        }
        let l4 = ip + IPV4;
        let dport = u16::from_be_bytes([h[l4 + 2], h[l4 + 3]]);
        if proto == UDP && dport == vxlan::UDP_PORT {
            off += vxlan::ENCAP_LEN;
            continue;
        }
        let src = u32::from_be_bytes([h[ip + 12], h[ip + 13], h[ip + 14], h[ip + 15]]);
        let dst = u32::from_be_bytes([h[ip + 16], h[ip + 17], h[ip + 18], h[ip + 19]]);
        let sport = u16::from_be_bytes([h[l4], h[l4 + 1]]);
        return Some(FlowKey::new(proto, src, sport, dst, dport));
    }
    None
}

/// The per-worker pipeline state.
#[derive(Debug)]
pub struct Pipeline {
    pub cfg: Config,
    pub flows: FlowTable,
    pub stats: WorkerStats,
    /// Packets, bytes and connections per task.
    pub task_stats: TaskCounters,
    neigh: Arc<Neighbors>,
    /// Picks the task of a new flow.
    sched: Scheduler,
    /// Hands out masquerade ports from this worker's share.
    masq: MasqPorts,
    /// The millisecond of the last idle sweep.
    last_sweep: u32,
    generation: u64,
    /// Flows still to be checked against a new table's live tasks.
    recheck: usize,
    /// Addresses whose MAC is wanted, and from which port.
    want_arp: ArrayVec<(u32, PortId), 16>,
    /// Recently solicited addresses and when, so a storm of misses sends one request.
    arp_sent: [(u32, u32); 16],
    /// Resets towards clients of ended flows, waiting for buffers.
    resets: ArrayVec<Flow, 64>,
    /// The flow key and hash the prefetch pass computed for the frame being processed.
    hint: (FlowKey, u64),
    /// Prebuilt outer headers per peer VTEP and port (emptied when a new table comes).
    outers: NeighCache<(u32, u16), Outer, OUTER_CACHE>,
    /// Local tasks' and peers' MACs.
    macs: NeighCache<u32, [u8; 6], MAC_CACHE>,
    /// Each network's MTU (by network index), the smallest of them, and the longest frame that
    /// fits any overlay (`ETH + min_mtu`): one compare on the fast path. Every frame sent by VXLAN
    /// is checked against it first: in `forward` (before the rewrite, so an ICMP answer quotes
    /// what the sender sent) and on the stateless task-to-peer path.
    net_mtu: Vec<u16>,
    min_mtu: u16,
    max_frame: usize,
    /// Per-source limit of the ICMP answers the pipeline writes.
    icmp_limit: RateLimit,
}

impl Pipeline {
    /// A pipeline with its flow table allocated. `neigh` is shared by all workers.
    pub fn new(cfg: Config, neigh: Arc<Neighbors>) -> Self {
        let flows = FlowTable::new(cfg.flow_capacity);
        let masq = MasqPorts::new(cfg.worker, cfg.workers);
        Pipeline {
            cfg,
            flows,
            stats: WorkerStats::default(),
            task_stats: TaskCounters::new(MAX_COUNTED_TASKS),
            neigh,
            sched: Scheduler::default(),
            masq,
            last_sweep: u32::MAX,
            generation: u64::MAX,
            recheck: 0,
            want_arp: ArrayVec::new(),
            arp_sent: [(0, 0); 16],
            resets: ArrayVec::new(),
            hint: (FlowKey::default(), 0),
            outers: NeighCache::new(),
            macs: NeighCache::new(),
            net_mtu: Vec::new(),
            min_mtu: 0,
            max_frame: 0,
            icmp_limit: RateLimit::default(),
        }
    }

    /// Looks `key` up. While a new table's check of every flow is still under way, a flow whose
    /// task is gone ends here, at its first packet (a TCP client gets its reset), so no packet
    /// reaches a removed task after the change was acknowledged.
    #[inline(always)]
    fn lookup_live(&mut self, t: &ServiceTable, key: &FlowKey, hash: u64) -> Option<(u32, Dir)> {
        let (id, dir) = self.flows.lookup(key, hash)?;
        if self.recheck > 0 && !self.still_live(t, id) {
            return None;
        }
        Some((id, dir))
    }

    /// While a new table is being checked: whether flow `id`'s task is still there; if it is
    /// not, the flow ends now (a TCP client's reset is queued).
    #[cold]
    #[inline(never)]
    fn still_live(&mut self, t: &ServiceTable, id: u32) -> bool {
        let uid = self.flows.get(id).task_uid;
        if uid == 0 || t.task_alive(uid) {
            return true;
        }
        if let Some(f) = self.flows.remove(id) {
            self.stats.flows_ended += 1;
            if f.is_tcp() && f.kind != FlowKind::ReturnRoute && self.resets.try_push(f).is_err() {
                self.stats.resets_unsent += 1;
            }
        }
        false
    }

    /// Counts a new flow to the task whose counters are at `slot`.
    #[inline]
    fn count_new(&mut self, slot: u16) {
        self.stats.new_flows += 1;
        self.stats.flows_evicted = self.flows.evicted;
        self.task_stats.add(slot, 0, 0, 1);
    }

    /// `key`'s hash, from the prefetch pass when it computed it already.
    #[inline]
    fn hash_of(&self, key: &FlowKey) -> u64 {
        if self.hint.0 == *key && self.hint.1 != 0 {
            self.hint.1
        } else {
            key.hash()
        }
    }

    pub fn neighbors(&self) -> &Arc<Neighbors> {
        &self.neigh
    }

    /// The table generation this worker last processed a burst with.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adopts a new table: sizes the round-robin state and schedules a full pass over the flows
    /// to end those whose task is gone. Called by `process` when the generation changes; this is
    /// the only place the pipeline may allocate, and only when the table grew.
    fn adopt(&mut self, table: &ServiceTable) {
        self.sched.adopt(table);
        self.generation = table.generation;
        self.recheck = self.flows.capacity();
        let most = self.cfg.uplink_mtu.saturating_sub(ctl::VXLAN_OVERHEAD);
        self.net_mtu.clear();
        self.net_mtu.extend(
            table
                .networks
                .iter()
                .map(|n| n.mtu.map_or(most, |m| m.min(most))),
        );
        self.min_mtu = self.net_mtu.iter().copied().min().unwrap_or(most);
        self.max_frame = ETH + usize::from(self.min_mtu);
        // The local VTEP address and the peers' ports may have changed.
        self.outers.clear();
        if self.cfg.worker == 0 {
            // Warm the neighbour table so the first packet of a flow finds its next hop.
            for (i, n) in table.nodes.iter().enumerate() {
                if i != usize::from(table.local) && self.neigh.get(ipkey(n.vtep)).is_none() {
                    let _ = self.want_arp.try_push((ipkey(n.vtep), PortId::Uplink));
                }
            }
            for b in &table.balancers {
                for be in b.backends.iter().filter(|b| b.local) {
                    if self.neigh.get(ipkey(be.addr)).is_none() {
                        let _ = self.want_arp.try_push((ipkey(be.addr), PortId::Tasks));
                    }
                }
            }
        }
    }

    /// Processes one burst: rewrites each frame in place and pushes one verdict per frame.
    // Casts: `now` is a millisecond clock kept as u32 that wraps after 49 days: every comparison of it wraps too.
    #[allow(clippy::cast_possible_truncation)]
    pub fn process(
        &mut self,
        table: &ServiceTable,
        now_ms: u64,
        burst: &mut Burst,
        verdicts: &mut Verdicts,
    ) {
        if table.generation != self.generation {
            self.adopt(table);
        }
        let now = now_ms as u32;
        verdicts.clear();
        // Memory-level parallelism: start fetching every frame's flow slot, then every flow,
        // before working on the first frame (a table of a million flows does not fit in cache).
        let mut keys = [(FlowKey::default(), 0u64); BURST];
        for (k, buf) in keys.iter_mut().zip(burst.iter()) {
            if let Some(key) = peek_key(buf.data()) {
                let h = key.hash();
                self.flows.prefetch(h);
                *k = (key, h);
            }
        }
        for (_, h) in keys.iter().take(burst.len()) {
            if *h != 0 {
                self.flows.prefetch_flow(*h);
            }
        }
        for (i, buf) in burst.iter_mut().enumerate() {
            self.hint = keys[i];
            self.stats.rx += 1;
            let v = match self.one(table, now, buf) {
                Ok(v) => v,
                Err(r) => Verdict::Drop(r),
            };
            match v {
                Verdict::Tx(PortId::Uplink) => self.stats.tx_uplink += 1,
                Verdict::Tx(PortId::Tasks) => self.stats.tx_tasks += 1,
                Verdict::Host(r) => self.stats.to_host(r),
                Verdict::Handoff(_) => self.stats.handoff_out += 1,
                Verdict::Consumed => {}
                Verdict::Drop(r) => self.stats.drop(r),
            }
            verdicts.push(v);
        }
        // The reverse slots of this burst's new flows, prefetched when they were made.
        self.flows.flush_pending();
        self.stats.active_flows = self.flows.len() as u64;
    }

    fn one(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
    ) -> Result<Verdict, DropReason> {
        let port = buf.port;
        let f = buf.data();
        let eth = EthernetFrame::new_checked(f).map_err(|_| DropReason::Truncated)?;
        let my_mac = match port {
            PortId::Uplink => self.cfg.uplink_mac,
            PortId::Tasks => self.cfg.tasks_mac,
        };
        let dst_mac = eth.dst_addr();
        if dst_mac.0 != my_mac && !dst_mac.is_broadcast() && !dst_mac.is_multicast() {
            return Err(DropReason::NotOurMac);
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.arp(t, buf),
            EthernetProtocol::Ipv4 => {
                if dst_mac.0 != my_mac {
                    return Err(DropReason::NotOurMac);
                }
                let l3 = parse_ipv4(f, ETH, self.cfg.verify_l4_checksums)?;
                match port {
                    PortId::Uplink => self.on_uplink(t, now, buf, l3),
                    PortId::Tasks => self.on_task(t, now, buf, l3),
                }
            }
            _ => Err(DropReason::UnknownEthertype),
        }
    }

    // ---- ARP ----------------------------------------------------------------------------

    /// Answers ARP in place: on the uplink for the node's address; on the tasks port for every
    /// overlay address that is not a local task. Learns senders that are peers or local tasks.
    fn arp(&mut self, t: &ServiceTable, buf: &mut PacketBuf) -> Result<Verdict, DropReason> {
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
    fn want(&mut self, ip: u32, port: PortId, now: u32) {
        let slot = (ip as usize) % self.arp_sent.len();
        let (last_ip, at) = self.arp_sent[slot];
        if last_ip == ip && now.wrapping_sub(at) < 1000 {
            return;
        }
        if self.want_arp.try_push((ip, port)).is_ok() {
            self.arp_sent[slot] = (ip, now);
        }
    }

    // ---- uplink ---------------------------------------------------------------------------

    fn on_uplink(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: L3,
    ) -> Result<Verdict, DropReason> {
        let dst = addr(l3.dst);
        let me = t.node(t.local);
        if dst != t.node_addr && dst != me.vtep {
            return Err(DropReason::NotForUs);
        }
        if l3.proto == UDP && l3.dport == t.vtep_port && dst == me.vtep {
            // A frame handed to another worker goes as it arrived on the uplink: `decap` decides
            // the owner before it strips anything.
            return self.decap(t, now, buf, l3);
        }
        if dst != t.node_addr || !l3.has_ports() {
            return Ok(Verdict::Host(HostReason::NodeAddress));
        }
        let proto = if l3.proto == TCP {
            IpProtocol::Tcp
        } else {
            IpProtocol::Udp
        };
        let Some(p) = t.published(proto, l3.dport) else {
            return Ok(Verdict::Host(HostReason::NotPublished));
        };
        let p = *p;
        let owner = owner_of(l3.src, l3.sport, self.cfg.workers);
        if owner != self.cfg.worker {
            return Ok(Verdict::Handoff(owner));
        }
        let key = l3.key();
        let hash = self.hash_of(&key);
        if let Some((id, dir)) = self.lookup_live(t, &key, hash) {
            return self.forward(t, now, buf, &l3, id, dir);
        }
        // A new flow: only a TCP SYN (or any UDP datagram) opens one; a stray segment gets the
        // host's answer (RST), as from a kernel with no such connection.
        if l3.proto == TCP && (l3.flags & flow::tcp::SYN == 0 || l3.flags & flow::tcp::ACK != 0) {
            return Ok(Verdict::Host(HostReason::NotSyn));
        }
        // A table publishes ports only when it has an ingress network.
        let Some(ing) = t.ingress_net else {
            return Ok(Verdict::Host(HostReason::NotPublished));
        };
        let bal = t.balancer(p.balancer);
        // Fix (found by the simulation): Maglev must pick the same task for a client's flow on
        // every ingress node, but the flow key's destination is this node's own address, which
        // differs on each; schedule on a hash of the flow without it.
        let sched_hash = FlowKey::new(l3.proto, l3.src, l3.sport, 0, l3.dport).hash();
        let Some(b) = self.sched.pick(t, p.balancer, sched_hash) else {
            // No task to take it: refuse like a closed port.
            return Ok(Verdict::Host(HostReason::NoTask));
        };
        let svc = &t.services[usize::from(bal.service)];
        let net = t.net(ing);
        let client_mac = EthernetFrame::new_unchecked(buf.data()).src_addr().0;
        let slot = self.task_stats.slot(b.uid);
        let (src, sport) = match svc.client_ip {
            ClientIpMode::Keep => (l3.src, l3.sport),
            ClientIpMode::Masquerade => {
                let Some(ep) = net.local_endpoint else {
                    return Err(DropReason::NoRoute);
                };
                let ep = ipkey(ep);
                let port = self
                    .masq
                    .pick(&self.flows, l3.proto, ep, ipkey(b.addr), p.target, slot)
                    .ok_or(DropReason::NoNatPort)?;
                (ep, port)
            }
        };
        let task_addr = ipkey(b.addr);
        let egress = self.egress_to(t, b.local, b.node, net.vni, &key);
        let fwd = Action::new(&key, src, sport, task_addr, p.target, egress);
        let rkey = FlowKey::new(l3.proto, task_addr, p.target, src, sport);
        let rev = Action::new(
            &rkey,
            l3.dst,
            l3.dport,
            l3.src,
            l3.sport,
            Egress::Uplink { mac: client_mac },
        );
        let flow = Flow::new(
            FlowKind::Ingress,
            [key, rkey],
            [fwd, rev],
            b.uid,
            slot,
            timeouts(svc),
            now,
        );
        // The forward key just missed; a masquerade port was picked so the reverse key is free.
        let id = match svc.client_ip {
            ClientIpMode::Masquerade => self.flows.insert_deferred(flow, [hash, rkey.hash()], now),
            ClientIpMode::Keep => self.flows.insert(flow, now),
        }
        .map_err(|_| DropReason::NoNatPort)?;
        self.count_new(slot);
        self.forward(t, now, buf, &l3, id, Dir::Fwd)
    }

    fn egress_to(
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
    fn forward(
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
                if l3.proto == TCP && l3.flags & flow::tcp::CHANGES_STATE_BACKWARDS != 0 {
                    fl.tcp = fl.tcp.next(l3.flags, false);
                }
            }
        }
        let a = *fl.action(dir);
        let slot = fl.stats_slot(dir);
        // A packet that will not fit the tunnel is refused before it is rewritten, so the
        // ICMP answer quotes the header its sender knows.
        if buf.len() > self.max_frame {
            if let Egress::Vxlan { vni, .. } = a.egress {
                if let Some(v) = self.too_big(t, now, buf, vni) {
                    return v;
                }
            }
        }
        self.task_stats.add(slot, 1, buf.len() as u64, 0);
        nat::rewrite(buf.data_mut(), ETH, l3.l4, l3.proto, &a);
        if l3.proto == TCP && l3.flags & flow::tcp::SYN != 0 {
            self.clamp_mss(t, buf, l3, &a, dir);
        }
        self.send(t, now, buf, a.dst, a.egress)
    }

    /// Lowers the MSS of a SYN or SYN-ACK of a flow (already translated) to what its task's
    /// network carries, in both directions: the SYN tells the task, the SYN-ACK the client, how
    /// large a segment the other end may send through the overlay.
    #[cold]
    #[inline(never)]
    fn clamp_mss(&mut self, t: &ServiceTable, buf: &mut PacketBuf, l3: &L3, a: &Action, dir: Dir) {
        let task = match dir {
            Dir::Fwd => a.dst,
            Dir::Rev => l3.src,
        };
        let mtu = t
            .addr(addr(task))
            .and_then(|e| self.net_mtu.get(usize::from(e.net)).copied())
            .unwrap_or(self.min_mtu);
        let max = mtu.saturating_sub(nat::mss::IPV4_TCP_HEADERS);
        if nat::mss::clamp(buf.data_mut(), l3.l4, max) {
            self.stats.mss_clamped += 1;
        }
    }

    /// For a frame about to be encapsulated on overlay `vni`: `None` if it fits the network's
    /// MTU. Otherwise it is dropped as `TooBig`, and when it has DF set (RFC 1191 path MTU
    /// discovery) its sender gets an ICMP "fragmentation needed" with the network's MTU, from
    /// the address it sent through (the node's, or its network's gateway), in place of the
    /// frame, at most a burst per source per 100 ms.
    #[cold]
    #[inline(never)]
    fn too_big(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        vni: u32,
    ) -> Option<Result<Verdict, DropReason>> {
        let mtu = t
            .network_by_vni(vni)
            .and_then(|n| self.net_mtu.get(usize::from(n)).copied())
            .unwrap_or(self.min_mtu);
        let f = buf.data();
        if f.len() <= ETH + usize::from(mtu) {
            return None;
        }
        let df = f.get(ETH + 6).is_some_and(|b| b & 0x40 != 0);
        let Some(sender) = f.get(ETH + 12..ETH + 16) else {
            return Some(Err(DropReason::TooBig));
        };
        let sender = u32::from_be_bytes([sender[0], sender[1], sender[2], sender[3]]);
        let port = buf.port;
        let from = match port {
            PortId::Uplink => Some(t.node_addr),
            PortId::Tasks => t.addr(addr(sender)).map(|e| t.net(e.net).gateway),
        };
        let (Some(from), true) = (from, df) else {
            return Some(Err(DropReason::TooBig));
        };
        if !self.icmp_limit.allow(sender, now) {
            return Some(Err(DropReason::TooBig));
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
        Some(Ok(Verdict::Tx(port)))
    }

    /// Sends an IPv4 frame (already rewritten) towards `dst` by `egress`.
    #[inline]
    fn send(
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
            Egress::Tasks => {
                let Some(&mac) = self.macs.get(&self.neigh, dst, dst, |mac| mac) else {
                    self.want(dst, PortId::Tasks, now);
                    return Err(DropReason::NoNeighbor);
                };
                let f = buf.data_mut();
                f[0..6].copy_from_slice(&mac);
                f[6..12].copy_from_slice(&self.cfg.tasks_mac);
                Ok(Verdict::Tx(PortId::Tasks))
            }
            Egress::Vxlan {
                vtep,
                port,
                vni,
                sport,
            } => {
                let up = self.cfg.uplink_mac;
                let outer = self.outers.get(&self.neigh, (vtep, port), vtep, |mac| {
                    Outer::new(up, mac, ipkey(t.node(t.local).vtep), vtep, port)
                });
                let Some(outer) = outer else {
                    self.want(vtep, PortId::Uplink, now);
                    return Err(DropReason::NoNeighbor);
                };
                {
                    // The inner Ethernet header: the receiving meshd rewrites it on delivery.
                    let f = buf.data_mut();
                    f[0..6].copy_from_slice(&[0; 6]);
                    f[6..12].copy_from_slice(&self.cfg.tasks_mac);
                }
                outer.encap(buf, sport, vni)?;
                Ok(Verdict::Tx(PortId::Uplink))
            }
        }
    }

    // ---- overlay --------------------------------------------------------------------------

    /// VXLAN from a peer: checked, decapsulated, routed in its network.
    fn decap(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        outer: L3,
    ) -> Result<Verdict, DropReason> {
        let Some(peer) = t.peer(addr(outer.src)) else {
            return Err(DropReason::UnknownVtep);
        };
        let (vni, smac) = {
            let f = buf.data();
            (
                overlay::vni(f, outer.l4)?,
                EthernetFrame::new_unchecked(f).src_addr().0,
            )
        };
        // Learn the peer's MAC; the worker's cache of the shared table says when it is known
        // already (most packets), which saves the shared table's probe.
        if self.macs.get(&self.neigh, outer.src, outer.src, |mac| mac) != Some(&smac) {
            self.neigh.learn(outer.src, smac);
        }
        let Some(net) = t.network_by_vni(vni) else {
            return Err(DropReason::UnknownVni);
        };
        // The inner frame is read where it lies, behind the outer headers: the worker that
        // owns its flow is known before anything is stripped, so a frame for another worker
        // goes to it as it arrived.
        let f = buf.data();
        let inner = f.get(vxlan::ENCAP_LEN..).ok_or(DropReason::Truncated)?;
        let eth = EthernetFrame::new_checked(inner).map_err(|_| DropReason::Truncated)?;
        match eth.ethertype() {
            EthernetProtocol::Ipv4 => {}
            EthernetProtocol::Arp => return Err(DropReason::ArpIgnored),
            _ => return Err(DropReason::UnknownEthertype),
        }
        let mut l3 = parse_ipv4(f, vxlan::ENCAP_LEN + ETH, self.cfg.verify_l4_checksums)?;
        let d = t.addr(addr(l3.dst));
        if let Some(d) = d {
            if d.net != net {
                return Err(DropReason::CrossNetwork);
            }
        }
        let kind = d.map(|d| d.kind);
        let src_kind = t.addr(addr(l3.src)).map(|e| e.kind);
        if let Some(v) = self.handoff(self.inner_owner(&l3, kind, src_kind)) {
            return Ok(v);
        }
        // Ours: decapsulate.
        if !buf.trim_front(vxlan::ENCAP_LEN) {
            return Err(DropReason::Truncated);
        }
        l3.l4 -= vxlan::ENCAP_LEN;
        match kind {
            // A reply to a flow this node masqueraded.
            Some(AddrKind::Endpoint { local: true, .. }) => {
                self.by_flow_or(t, now, buf, &l3, Err(DropReason::NoRoute))
            }
            Some(AddrKind::Task {
                local: true, task, ..
            }) => {
                if !l3.has_ports() || matches!(src_kind, Some(AddrKind::Endpoint { .. })) {
                    // ICMP, or a request another node masqueraded: no state here.
                    dec_ttl(buf.data_mut(), ETH);
                    return self.send(t, now, buf, l3.dst, Egress::Tasks);
                }
                let outside = src_kind.is_none();
                let key = l3.key();
                if let Some((id, dir)) = self.lookup_live(t, &key, self.hash_of(&key)) {
                    return self.forward(t, now, buf, &l3, id, dir);
                }
                if outside {
                    // An outside client's packet, DNAT'ed with its address kept: remember which
                    // ingress VTEP the replies go back to.
                    let te = &t.tasks[task as usize];
                    let svc = &t.services[usize::from(te.service)];
                    let rkey = key.reversed();
                    let n = t.node(peer);
                    let back = Egress::Vxlan {
                        vtep: ipkey(n.vtep),
                        port: n.vtep_port,
                        vni: t.net(net).vni,
                        sport: entropy_port(&key),
                    };
                    let fwd = Action::keep(&key, Egress::Tasks);
                    let rev = Action::keep(&rkey, back);
                    let slot = self.task_stats.slot(te.uid);
                    let flow = Flow::new(
                        FlowKind::ReturnRoute,
                        [key, rkey],
                        [fwd, rev],
                        te.uid,
                        slot,
                        timeouts(svc),
                        now,
                    );
                    if let Ok(id) = self.flows.insert(flow, now) {
                        self.stats.new_flows += 1;
                        self.stats.flows_evicted = self.flows.evicted;
                        return self.forward(t, now, buf, &l3, id, Dir::Fwd);
                    }
                }
                dec_ttl(buf.data_mut(), ETH);
                self.send(t, now, buf, l3.dst, Egress::Tasks)
            }
            // Not an overlay address: a reply towards an outside client of a keep-client-IP flow.
            None => self.by_flow_or(t, now, buf, &l3, Err(DropReason::NoRoute)),
            // This node does not transit between peers.
            Some(AddrKind::Task { local: false, .. } | AddrKind::Endpoint { local: false, .. }) => {
                Err(DropReason::NoRoute)
            }
            Some(AddrKind::Vip { .. } | AddrKind::Gateway) => {
                Ok(Verdict::Host(HostReason::MeshAddress))
            }
        }
    }

    /// The worker that owns the flow of a decapsulated packet `l3` (read in place, before
    /// decapsulation), whose destination and source are of kinds `dst` and `src` (`None`: not
    /// an overlay address); this worker when no flow is involved.
    #[inline]
    fn inner_owner(&self, l3: &L3, dst: Option<AddrKind>, src: Option<AddrKind>) -> u16 {
        let workers = self.cfg.workers;
        match dst {
            // A reply to a flow this node masqueraded: its port says which worker owns it.
            Some(AddrKind::Endpoint { local: true, .. }) => ports::owner(l3.dport, workers),
            Some(AddrKind::Task { local: true, .. }) => {
                if !l3.has_ports() || matches!(src, Some(AddrKind::Endpoint { .. })) {
                    self.cfg.worker
                } else if src.is_none() {
                    // An outside client, its address kept: owned by the client end.
                    owner_of(l3.src, l3.sport, workers)
                } else {
                    owner_of(l3.dst, l3.dport, workers)
                }
            }
            // A reply towards an outside client of a keep-client-IP flow.
            None => owner_of(l3.dst, l3.dport, workers),
            Some(_) => self.cfg.worker,
        }
    }

    /// `Some(Handoff)` when worker `owner` is not this one.
    #[inline]
    fn handoff(&self, owner: u16) -> Option<Verdict> {
        (owner != self.cfg.worker).then_some(Verdict::Handoff(owner))
    }

    /// Forwards by the flow `l3` belongs to, or returns `otherwise`.
    #[inline]
    fn by_flow_or(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: &L3,
        otherwise: Result<Verdict, DropReason>,
    ) -> Result<Verdict, DropReason> {
        if !l3.has_ports() {
            return otherwise;
        }
        let key = l3.key();
        match self.lookup_live(t, &key, self.hash_of(&key)) {
            Some((id, dir)) => self.forward(t, now, buf, l3, id, dir),
            None => otherwise,
        }
    }

    /// A frame from a local task.
    fn on_task(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: L3,
    ) -> Result<Verdict, DropReason> {
        let Some(s) = t.addr(addr(l3.src)) else {
            return Err(DropReason::UnknownSource);
        };
        if !matches!(s.kind, AddrKind::Task { local: true, .. }) {
            return Err(DropReason::UnknownSource);
        }
        let smac = EthernetFrame::new_unchecked(buf.data()).src_addr().0;
        self.neigh.learn(l3.src, smac);
        let net = t.net(s.net);
        let d = t.addr(addr(l3.dst));
        if let Some(d) = d {
            if d.net != s.net {
                return Err(DropReason::CrossNetwork);
            }
        }
        let workers = self.cfg.workers;
        match d.map(|d| d.kind) {
            // To another node's task or endpoint (a reply to a flow it masqueraded): stateless.
            Some(
                AddrKind::Task {
                    local: false, node, ..
                }
                | AddrKind::Endpoint { local: false, node },
            ) => {
                if buf.len() > self.max_frame {
                    if let Some(v) = self.too_big(t, now, buf, net.vni) {
                        return v;
                    }
                }
                dec_ttl(buf.data_mut(), ETH);
                let n = t.node(node);
                let key = l3.key();
                let e = Egress::Vxlan {
                    vtep: ipkey(n.vtep),
                    port: n.vtep_port,
                    vni: net.vni,
                    sport: entropy_port(&key),
                };
                self.send(t, now, buf, l3.dst, e)
            }
            Some(AddrKind::Vip { service, balancer }) if l3.has_ports() => {
                if let Some(v) = self.handoff(owner_of(l3.src, l3.sport, workers)) {
                    return Ok(v);
                }
                let key = l3.key();
                let hash = self.hash_of(&key);
                if let Some((id, dir)) = self.lookup_live(t, &key, hash) {
                    return self.forward(t, now, buf, &l3, id, dir);
                }
                if l3.proto == TCP
                    && (l3.flags & flow::tcp::SYN == 0 || l3.flags & flow::tcp::ACK != 0)
                {
                    return Ok(Verdict::Host(HostReason::NotSyn));
                }
                let Some(b) = self.sched.pick(t, balancer, hash) else {
                    return Ok(Verdict::Host(HostReason::NoTask));
                };
                let svc = &t.services[usize::from(service)];
                let baddr = ipkey(b.addr);
                let egress = self.egress_to(t, b.local, b.node, net.vni, &key);
                // A backend on the client's own node would answer the client directly over the
                // tasks' L2 segment, from its own address instead of the VIP's: hairpin NAT, as
                // IPVS does, masquerading the client to the network's gateway so the reply comes
                // back through meshd.
                let slot = self.task_stats.slot(b.uid);
                let (src, sport) = if b.local {
                    let gw = ipkey(net.gateway);
                    (
                        gw,
                        self.masq
                            .pick(&self.flows, l3.proto, gw, baddr, l3.dport, slot)
                            .ok_or(DropReason::NoNatPort)?,
                    )
                } else {
                    (l3.src, l3.sport)
                };
                let fwd = Action::new(&key, src, sport, baddr, l3.dport, egress);
                let rkey = FlowKey::new(l3.proto, baddr, l3.dport, src, sport);
                let rev = Action::new(&rkey, l3.dst, l3.dport, l3.src, l3.sport, Egress::Tasks);
                let flow = Flow::new(
                    FlowKind::Vip,
                    [key, rkey],
                    [fwd, rev],
                    b.uid,
                    slot,
                    timeouts(svc),
                    now,
                );
                let id = self
                    .flows
                    .insert(flow, now)
                    .map_err(|_| DropReason::NoNatPort)?;
                self.count_new(slot);
                self.forward(t, now, buf, &l3, id, Dir::Fwd)
            }
            // A reply of an ingress flow this node masqueraded and delivered locally.
            Some(AddrKind::Endpoint { local: true, .. }) if l3.has_ports() => {
                if let Some(v) = self.handoff(ports::owner(l3.dport, workers)) {
                    return Ok(v);
                }
                self.by_flow_or(t, now, buf, &l3, Ok(Verdict::Host(HostReason::MeshAddress)))
            }
            // To a task on this node: a VIP flow's reply if a flow says so, else plain L3.
            Some(AddrKind::Task { local: true, .. }) => {
                if l3.has_ports() {
                    if let Some(v) = self.handoff(owner_of(l3.dst, l3.dport, workers)) {
                        return Ok(v);
                    }
                    let key = l3.key();
                    if let Some((id, dir)) = self.lookup_live(t, &key, self.hash_of(&key)) {
                        return self.forward(t, now, buf, &l3, id, dir);
                    }
                }
                dec_ttl(buf.data_mut(), ETH);
                self.send(t, now, buf, l3.dst, Egress::Tasks)
            }
            // A reply of a hairpin VIP flow (masqueraded to the gateway) by its flow; else the
            // gateway is the host's (DNS, ping).
            Some(AddrKind::Gateway) if l3.has_ports() => {
                if let Some(v) = self.handoff(ports::owner(l3.dport, workers)) {
                    return Ok(v);
                }
                self.by_flow_or(t, now, buf, &l3, Ok(Verdict::Host(HostReason::MeshAddress)))
            }
            Some(
                AddrKind::Vip { .. } | AddrKind::Gateway | AddrKind::Endpoint { local: true, .. },
            ) => Ok(Verdict::Host(HostReason::MeshAddress)),
            // Outside the overlay: only a reply of a keep-client-IP flow goes there.
            None => {
                if let Some(v) = self.handoff(owner_of(l3.dst, l3.dport, workers)) {
                    return Ok(v);
                }
                self.by_flow_or(t, now, buf, &l3, Err(DropReason::NoRoute))
            }
        }
    }

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
        // looks at `sweep_budget` flows once per millisecond, not on every loop (a worker that
        // spins would spend its time sweeping).
        let budget = if self.recheck > 0 {
            self.cfg.sweep_budget.max(4096)
        } else if now != self.last_sweep {
            self.cfg.sweep_budget
        } else {
            0
        };
        self.last_sweep = now;
        self.recheck = self.recheck.saturating_sub(budget);
        let stats = &mut self.stats;
        let resets = &mut self.resets;
        self.flows.sweep(
            now,
            budget,
            |uid| uid == 0 || table.task_alive(uid),
            |r| match r {
                Reaped::Expired => stats.flows_expired += 1,
                Reaped::Ended(f) => {
                    stats.flows_ended += 1;
                    if f.is_tcp() && f.kind != FlowKind::ReturnRoute && resets.try_push(f).is_err()
                    {
                        stats.resets_unsent += 1;
                    }
                }
            },
        );
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
        while !out.is_full() {
            let Some((ip, port)) = self.want_arp.pop() else {
                break;
            };
            let Some(mut b) = pool.get() else { break };
            self.arp_request(table, ip, port, &mut b);
            out.push(b);
        }
    }

    /// Builds a TCP RST to the client of flow `f`, as from the service it connected to.
    fn reset_frame(&self, t: &ServiceTable, f: &Flow, b: &mut PacketBuf) -> bool {
        // The reverse action turns a task's packet into what the client expects to see.
        let rev = f.rev;
        let mut frame = [0u8; ETH + IPV4 + 20];
        let (smac, port) = match rev.egress {
            Egress::Uplink { mac } => {
                frame[0..6].copy_from_slice(&mac);
                (self.cfg.uplink_mac, PortId::Uplink)
            }
            Egress::Tasks => match self.neigh.get(rev.dst) {
                Some(mac) => {
                    frame[0..6].copy_from_slice(&mac);
                    (self.cfg.tasks_mac, PortId::Tasks)
                }
                None => return false,
            },
            Egress::Vxlan { .. } => return false,
        };
        let _ = t;
        frame[6..12].copy_from_slice(&smac);
        put16(&mut frame, 12, 0x0800);
        let ip = ETH;
        frame[ip] = 0x45;
        put16(&mut frame, ip + 2, 40);
        put16(&mut frame, ip + 6, 0x4000);
        frame[ip + 8] = 64;
        frame[ip + 9] = TCP;
        put32(&mut frame, ip + 12, rev.src);
        put32(&mut frame, ip + 16, rev.dst);
        let c = overlay::ipv4_header_checksum(&frame[ip..ip + IPV4]);
        put16(&mut frame, ip + 10, c);
        let tcp = ip + IPV4;
        put16(&mut frame, tcp, rev.sport);
        put16(&mut frame, tcp + 2, rev.dport);
        // In window: the sequence number the client acknowledged last.
        put32(&mut frame, tcp + 4, f.client_ack);
        frame[tcp + 12] = 5 << 4;
        frame[tcp + 13] = flow::tcp::RST;
        {
            let mut p = TcpPacket::new_unchecked(&mut frame[tcp..]);
            p.fill_checksum(&addr(rev.src).into(), &addr(rev.dst).into());
        }
        b.fill(&frame);
        b.port = port;
        true
    }

    fn arp_request(&self, t: &ServiceTable, ip: u32, port: PortId, b: &mut PacketBuf) {
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
    }
}

fn timeouts(svc: &crate::balance::table::SvcEntry) -> [u32; 3] {
    [
        svc.timeouts.tcp_established,
        svc.timeouts.tcp_transitory,
        svc.timeouts.udp,
    ]
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use super::*;
    use crate::balance::table::tests::three_nodes;
    use crate::nat::be16;
    use proptest::prelude::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv4Packet, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber, UdpRepr};

    fn ip_udp_frame(src: u32, sport: u16, dst: u32, dport: u16, payload: &[u8]) -> Vec<u8> {
        let caps = ChecksumCapabilities::default();
        let udp = UdpRepr {
            src_port: sport,
            dst_port: dport,
        };
        let ipr = Ipv4Repr {
            src_addr: addr(src),
            dst_addr: addr(dst),
            next_header: IpProtocol::Udp,
            payload_len: 8 + payload.len(),
            hop_limit: 64,
        };
        let mut f = vec![0u8; ETH + IPV4 + 8 + payload.len()];
        f[12..14].copy_from_slice(&[8, 0]);
        ipr.emit(
            &mut Ipv4Packet::new_unchecked(&mut f[ETH..ETH + IPV4]),
            &caps,
        );
        udp.emit(
            &mut UdpPacket::new_unchecked(&mut f[ETH + IPV4..]),
            &addr(src).into(),
            &addr(dst).into(),
            payload.len(),
            |b| b.copy_from_slice(payload),
            &caps,
        );
        f
    }

    fn ip_tcp_frame(src: u32, sport: u16, dst: u32, dport: u16, payload: &[u8]) -> Vec<u8> {
        let caps = ChecksumCapabilities::default();
        let tcp = TcpRepr {
            src_port: sport,
            dst_port: dport,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(77),
            ack_number: Some(TcpSeqNumber(99)),
            window_len: 512,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ipr = Ipv4Repr {
            src_addr: addr(src),
            dst_addr: addr(dst),
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut f = vec![0u8; ETH + IPV4 + tcp.buffer_len()];
        f[12..14].copy_from_slice(&[8, 0]);
        ipr.emit(
            &mut Ipv4Packet::new_unchecked(&mut f[ETH..ETH + IPV4]),
            &caps,
        );
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut f[ETH + IPV4..]),
            &addr(src).into(),
            &addr(dst).into(),
            &caps,
        );
        f
    }

    proptest! {
        /// DNAT (and SNAT) then the reverse translation restores the packet, with valid
        /// checksums at every step (RFC 1624 incremental updates).
        #[test]
        fn translate_then_reverse_restores_the_packet(
            tcp in any::<bool>(),
            src in any::<u32>(), sport in 1u16.., dst in any::<u32>(), dport in 1u16..,
            nsrc in any::<u32>(), nsport in 1u16.., ndst in any::<u32>(), ndport in 1u16..,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let orig = if tcp { ip_tcp_frame(src, sport, dst, dport, &payload) } else { ip_udp_frame(src, sport, dst, dport, &payload) };
            let mut f = orig.clone();
            let l3 = parse_ipv4(&f, ETH, true).unwrap();
            let key = l3.key();
            let a = Action::new(&key, nsrc, nsport, ndst, ndport, Egress::Tasks);
            nat::rewrite(&mut f, ETH, l3.l4, l3.proto, &a);
            let l3b = parse_ipv4(&f, ETH, true).expect("checksums valid after translation");
            prop_assert_eq!(l3b.key(), a.result_key(key.proto()));
            let back = Action::new(&l3b.key(), src, sport, dst, dport, Egress::Tasks);
            nat::rewrite(&mut f, ETH, l3b.l4, l3b.proto, &back);
            // Restored but for the TTL, which each hop decrements (and the header checksum with it).
            let l3c = parse_ipv4(&f, ETH, true).expect("checksums valid after reversal");
            prop_assert_eq!(l3c.key(), key);
            let mut expect = orig.clone();
            dec_ttl(&mut expect, ETH);
            dec_ttl(&mut expect, ETH);
            prop_assert_eq!(&f[..ETH + 8], &expect[..ETH + 8]);
            prop_assert_eq!(&f[ETH + 12..], &expect[ETH + 12..]);
            prop_assert_eq!(be16(&f, ETH + 10), be16(&expect, ETH + 10));
        }

        /// Any bytes on either port: a verdict, never a panic.
        #[test]
        fn arbitrary_frames_never_panic(frames in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..32)) {
            let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
            let mut p = Pipeline::new(Config { flow_capacity: 64, ..Config::default() }, Arc::new(Neighbors::new(64)));
            let mut burst = Burst::new();
            for (up, bytes) in &frames {
                burst.push(PacketBuf::from_frame(if *up { PortId::Uplink } else { PortId::Tasks }, bytes));
            }
            let mut v = Verdicts::new();
            p.process(&table, 1, &mut burst, &mut v);
            prop_assert_eq!(v.len(), frames.len());
            let mut pool = Pool::new(8);
            let mut out = Burst::new();
            p.maintain(&table, 2, &mut pool, &mut out);
        }

        /// Valid Ethernet + IPv4 headers with random everything after, aimed at the node: parsed,
        /// never a panic, always a counted verdict.
        #[test]
        fn random_l4_on_valid_ip_never_panics(proto in prop::sample::select(vec![1u8, 6, 17, 47]), tail in proptest::collection::vec(any::<u8>(), 0..80), up in any::<bool>()) {
            let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
            let mut p = Pipeline::new(Config { flow_capacity: 64, verify_l4_checksums: false, ..Config::default() }, Arc::new(Neighbors::new(64)));
            let mut f = ip_udp_frame(0x0a00_0009, 1, 0xc0a8_010b, 8080, &[]);
            f.truncate(ETH + IPV4);
            f.extend_from_slice(&tail);
            f[0..6].copy_from_slice(if up { &p.cfg.uplink_mac } else { &p.cfg.tasks_mac });
            f[ETH + 9] = proto;
            put16(&mut f, ETH + 2, (IPV4 + tail.len()) as u16);
            put16(&mut f, ETH + 10, 0);
            let c = overlay::ipv4_header_checksum(&f[ETH..ETH + IPV4]);
            put16(&mut f, ETH + 10, c);
            let mut burst = Burst::new();
            burst.push(PacketBuf::from_frame(if up { PortId::Uplink } else { PortId::Tasks }, &f));
            let mut v = Verdicts::new();
            p.process(&table, 1, &mut burst, &mut v);
            prop_assert_eq!(v.len(), 1);
            prop_assert_eq!(p.stats.rx, 1);
        }
    }

    #[test]
    fn masquerade_ports_are_unique_per_task_before_and_after_the_counter_wraps() {
        let cfg = Config {
            worker: 1,
            workers: 2,
            flow_capacity: 1024,
            ..Config::default()
        };
        let mut p = Pipeline::new(cfg, Arc::new(Neighbors::new(64)));
        let (ep, task) = (0x0a00_0002, 0x0a00_000b);
        let span = (65536 - 1024) / 2;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..span {
            let port = p.masq.pick(&p.flows, TCP, ep, task, 80, 5).unwrap();
            assert_eq!((port - 1024) % 2, 1, "worker 1's half of the port space");
            assert!(seen.insert(port), "port {port} given twice");
        }
        // Wrapped: from now on every candidate is checked against the live flows.
        let taken = p.masq.pick(&p.flows, TCP, ep, task, 80, 5).unwrap();
        let k = FlowKey::new(TCP, 0xac10_0001, 40000, 0xc0a8_010b, 8080);
        let r = FlowKey::new(TCP, task, 80, ep, taken);
        let f = Flow::new(
            FlowKind::Ingress,
            [k, r],
            [
                Action::keep(&k, Egress::Tasks),
                Action::keep(&r, Egress::Tasks),
            ],
            1,
            u16::MAX,
            [1, 1, 1],
            0,
        );
        p.flows.insert(f, 0).unwrap();
        p.masq.rewind();
        let next = p.masq.pick(&p.flows, TCP, ep, task, 80, 5).unwrap();
        assert_ne!(next, taken, "a port a live flow holds is skipped");
    }

    #[test]
    fn an_arp_reply_from_a_peer_is_learned_and_not_counted_as_a_drop() {
        let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
        let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
        let peer = std::net::Ipv4Addr::new(192, 168, 1, 12);
        let reply = crate::testkit::arp_reply(
            [2, 0, 0, 0, 0, 0x12],
            peer,
            p.cfg.uplink_mac,
            std::net::Ipv4Addr::new(192, 168, 1, 11),
        );
        let mut burst = Burst::new();
        burst.push(PacketBuf::from_frame(PortId::Uplink, &reply));
        let mut v = Verdicts::new();
        p.process(&table, 1, &mut burst, &mut v);
        assert_eq!(v[0], Verdict::Consumed);
        assert_eq!(p.stats.total_drops(), 0);
        assert_eq!(
            p.neighbors().get(u32::from(peer)),
            Some([2, 0, 0, 0, 0, 0x12])
        );
    }

    #[test]
    fn a_peers_mac_is_learned_from_its_vxlan_and_relearned_when_it_changes() {
        let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
        let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
        let (n1, n2) = (
            std::net::Ipv4Addr::new(192, 168, 1, 11),
            std::net::Ipv4Addr::new(192, 168, 1, 12),
        );
        let inner = crate::testkit::tcp_frame(
            [0; 6],
            [0; 6],
            std::net::Ipv4Addr::new(10, 0, 0, 3),
            40000,
            std::net::Ipv4Addr::new(10, 0, 0, 250),
            80,
            crate::flow::tcp::ACK,
            1,
            1,
            &[],
        );
        let mut v = Verdicts::new();
        for mac in [
            [2, 0, 0, 0, 0, 0x12],
            [2, 0, 0, 0, 0, 0x12],
            [2, 0, 0, 0, 0, 0x99],
        ] {
            let frame = crate::testkit::vxlan_frame(
                mac,
                p.cfg.uplink_mac,
                n2,
                n1,
                50000,
                ctl::INGRESS_VNI,
                &inner,
            );
            let mut burst = Burst::new();
            burst.push(PacketBuf::from_frame(PortId::Uplink, &frame));
            p.process(&table, 1, &mut burst, &mut v);
            assert_eq!(p.neighbors().get(u32::from(n2)), Some(mac));
        }
    }

    #[test]
    fn each_malformation_has_its_reason() {
        let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
        let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
        let mac = p.cfg.uplink_mac;
        let good = {
            let mut f = ip_tcp_frame(0x0a00_0009, 40000, 0xc0a8_010b, 8080, b"x");
            f[0..6].copy_from_slice(&mac);
            f
        };
        let mut cases: Vec<(Vec<u8>, DropReason)> = Vec::new();
        cases.push((good[..10].to_vec(), DropReason::Truncated));
        let mut f = good.clone();
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        cases.push((f, DropReason::UnknownEthertype));
        let mut f = good.clone();
        f[0] = 0x02;
        f[5] = 0x77;
        cases.push((f, DropReason::NotOurMac));
        let mut f = good.clone();
        f[ETH + 10] ^= 0xff;
        cases.push((f, DropReason::BadIpChecksum));
        let fix = |f: &mut Vec<u8>| {
            put16(f, ETH + 10, 0);
            let c = overlay::ipv4_header_checksum(&f[ETH..ETH + IPV4]);
            put16(f, ETH + 10, c);
        };
        let mut f = good.clone();
        f[ETH + 6] = 0x20; // more fragments
        fix(&mut f);
        cases.push((f, DropReason::Fragment));
        let mut f = good.clone();
        f[ETH + 8] = 1;
        fix(&mut f);
        cases.push((f, DropReason::TtlExpired));
        let mut f = good.clone();
        f[ETH] = 0x46;
        fix(&mut f);
        cases.push((f, DropReason::Ipv4Options));
        let mut f = good.clone();
        let n = f.len();
        f[n - 1] ^= 0xff;
        cases.push((f, DropReason::BadL4Checksum));
        let mut f = good.clone();
        f[ETH + 9] = 47;
        fix(&mut f);
        cases.push((f, DropReason::UnknownProtocol));
        let mut f = good.clone();
        put16(&mut f, ETH + 2, 2000);
        fix(&mut f);
        cases.push((f, DropReason::BadIpv4Header));
        for (frame, want) in cases {
            let mut burst = Burst::new();
            burst.push(PacketBuf::from_frame(PortId::Uplink, &frame));
            let mut v = Verdicts::new();
            p.process(&table, 1, &mut burst, &mut v);
            assert_eq!(v[0], Verdict::Drop(want), "case {want:?}");
            assert!(p.stats.dropped(want) >= 1);
        }
    }

    #[test]
    fn a_published_port_is_dnated_and_encapsulated_to_the_tasks_node() {
        let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
        let neigh = Arc::new(Neighbors::new(64));
        neigh.learn(0xc0a8_010c, [2, 0, 0, 0, 0, 0x12]);
        neigh.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
        let mut p = Pipeline::new(Config::default(), neigh);
        let mut f = ip_tcp_frame(0x0a09_0009, 40000, 0xc0a8_010b, 8080, b"");
        f[0..6].copy_from_slice(&p.cfg.uplink_mac);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x99]);
        f[ETH + IPV4 + 13] = flow::tcp::SYN;
        let n = f.len();
        {
            let mut t = TcpPacket::new_unchecked(&mut f[ETH + IPV4..n]);
            t.fill_checksum(&addr(0x0a09_0009).into(), &addr(0xc0a8_010b).into());
        }
        let mut burst = Burst::new();
        burst.push(PacketBuf::from_frame(PortId::Uplink, &f));
        let mut v = Verdicts::new();
        p.process(&table, 1, &mut burst, &mut v);
        assert_eq!(v[0], Verdict::Tx(PortId::Uplink));
        let out = burst[0].data();
        assert_eq!(&out[0..6], &[2, 0, 0, 0, 0, 0x12], "to web.1's node n2");
        let outer = parse_ipv4(out, ETH, true).unwrap();
        assert_eq!((outer.proto, outer.dport), (UDP, 4789));
        assert!(outer.sport >= 49152);
        let vx = vxlan::Packet::new_checked(&out[ETH + IPV4 + 8..]).unwrap();
        assert_eq!(vx.vni(), ctl::INGRESS_VNI);
        let inner = parse_ipv4(out, vxlan::ENCAP_LEN + ETH, true).unwrap();
        // DNAT to web.1's ingress address and target port, masqueraded to n1's endpoint.
        assert_eq!((inner.dst, inner.dport), (0x0a00_000b, 80));
        assert_eq!(inner.src, 0x0a00_0002);
        assert_eq!(p.stats.new_flows, 1);
        assert_eq!(p.flows.len(), 1);
        // Counted for web.1: one packet of the frame's size, one connection.
        let uid = table.tasks.iter().find(|t| t.name == "web.1").unwrap().uid;
        let counted: Vec<_> = p.task_stats.iter().collect();
        assert_eq!(counted, vec![(uid, [1, f.len() as u64, 1])]);
    }

    // ---- big packets: MSS clamping and path MTU discovery ----------------------------------

    const CLIENT: u32 = 0x0a09_0009;
    const N1: u32 = 0xc0a8_010b;
    const N2: u32 = 0xc0a8_010c;
    const WEB1: u32 = 0x0a00_000b;

    /// A TCP segment with the given control, MSS option and payload, checksums right.
    #[allow(clippy::too_many_arguments)]
    fn tcp_seg(
        macs: ([u8; 6], [u8; 6]),
        src: u32,
        sport: u16,
        dst: u32,
        dport: u16,
        control: TcpControl,
        ack: bool,
        mss: Option<u16>,
        payload: &[u8],
        df: bool,
    ) -> Vec<u8> {
        let caps = ChecksumCapabilities::default();
        let tcp = TcpRepr {
            src_port: sport,
            dst_port: dport,
            control,
            seq_number: TcpSeqNumber(1000),
            ack_number: ack.then_some(TcpSeqNumber(5000)),
            window_len: 64240,
            window_scale: None,
            max_seg_size: mss,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ipr = Ipv4Repr {
            src_addr: addr(src),
            dst_addr: addr(dst),
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut f = vec![0u8; ETH + IPV4 + tcp.buffer_len()];
        f[0..6].copy_from_slice(&macs.1);
        f[6..12].copy_from_slice(&macs.0);
        f[12..14].copy_from_slice(&[8, 0]);
        let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH..]);
        ipr.emit(&mut ip, &caps);
        ip.set_dont_frag(df);
        ip.fill_checksum();
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut f[ETH + IPV4..]),
            &addr(src).into(),
            &addr(dst).into(),
            &caps,
        );
        f
    }

    fn mss_at(f: &[u8], ip: usize) -> Option<u16> {
        let l3 = parse_ipv4(f, ip, true).ok()?;
        let p = TcpPacket::new_checked(&f[l3.l4..]).ok()?;
        TcpRepr::parse(
            &p,
            &addr(l3.src).into(),
            &addr(l3.dst).into(),
            &ChecksumCapabilities::default(),
        )
        .ok()?
        .max_seg_size
    }

    fn run(p: &mut Pipeline, t: &ServiceTable, port: PortId, f: &[u8]) -> (Verdict, Vec<u8>) {
        let mut burst = Burst::new();
        burst.push(PacketBuf::from_frame(port, f));
        let mut v = Verdicts::new();
        p.process(t, 1, &mut burst, &mut v);
        (v[0], burst[0].data().to_vec())
    }

    /// Node n2 (web.1 is local): a client's SYN and web.1's SYN-ACK both cross meshd.
    fn on_n2(ingress_mtu: Option<u16>) -> (ServiceTable, Pipeline) {
        let mut state = three_nodes();
        state.networks[0].mtu = ingress_mtu;
        let table = ServiceTable::build(&state, "n2", 1).unwrap();
        let neigh = Arc::new(Neighbors::new(64));
        neigh.learn(WEB1, [2, 0, 0, 0, 0, 0x11]);
        (table, Pipeline::new(Config::default(), neigh))
    }

    #[test]
    fn mss_is_clamped_on_the_syn_and_the_syn_ack_to_the_overlay_mtu() {
        for (mtu, want) in [(None, 1410), (Some(1400), 1360)] {
            let (t, mut p) = on_n2(mtu);
            let (up, tk) = (p.cfg.uplink_mac, p.cfg.tasks_mac);
            let client_mac = [2, 0, 0, 0, 0, 0x99];
            let syn = tcp_seg(
                (client_mac, up),
                CLIENT,
                40000,
                N2,
                8080,
                TcpControl::Syn,
                false,
                Some(1460),
                b"",
                true,
            );
            let (v, out) = run(&mut p, &t, PortId::Uplink, &syn);
            assert_eq!(v, Verdict::Tx(PortId::Tasks));
            // parse_ipv4 verified the TCP checksum after the edit.
            assert_eq!(
                mss_at(&out, ETH),
                Some(want),
                "SYN to the task, network MTU {mtu:?}"
            );
            let to_task = parse_ipv4(&out, ETH, true).unwrap();
            assert_eq!((to_task.dst, to_task.dport), (WEB1, 80));
            // web.1 answers its masqueraded client.
            let synack = tcp_seg(
                ([2, 0, 0, 0, 0, 0x11], tk),
                WEB1,
                80,
                to_task.src,
                to_task.sport,
                TcpControl::Syn,
                true,
                Some(1460),
                b"",
                true,
            );
            let (v, out) = run(&mut p, &t, PortId::Tasks, &synack);
            assert_eq!(v, Verdict::Tx(PortId::Uplink));
            let back = parse_ipv4(&out, ETH, true).unwrap();
            assert_eq!(
                (back.src, back.sport, back.dst, back.dport),
                (N2, 8080, CLIENT, 40000)
            );
            assert_eq!(mss_at(&out, ETH), Some(want), "SYN-ACK to the client");
            assert_eq!(p.stats.mss_clamped, 2);
            // An MSS already small enough is left alone and not counted.
            let syn = tcp_seg(
                (client_mac, up),
                CLIENT,
                40001,
                N2,
                8080,
                TcpControl::Syn,
                false,
                Some(536),
                b"",
                true,
            );
            let (_, out) = run(&mut p, &t, PortId::Uplink, &syn);
            assert_eq!(mss_at(&out, ETH), Some(536));
            assert_eq!(p.stats.mss_clamped, 2);
        }
    }

    /// Node n1 (web.1 is on n2, behind VXLAN) with an established flow from the client.
    fn on_n1_established(ingress_mtu: Option<u16>) -> (ServiceTable, Pipeline) {
        let mut state = three_nodes();
        state.networks[0].mtu = ingress_mtu;
        let t = ServiceTable::build(&state, "n1", 1).unwrap();
        let neigh = Arc::new(Neighbors::new(64));
        neigh.learn(N2, [2, 0, 0, 0, 0, 0x12]);
        neigh.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
        let mut p = Pipeline::new(Config::default(), neigh);
        let up = p.cfg.uplink_mac;
        let syn = tcp_seg(
            ([2, 0, 0, 0, 0, 0x99], up),
            CLIENT,
            40000,
            N1,
            8080,
            TcpControl::Syn,
            false,
            Some(1460),
            b"",
            true,
        );
        let (v, out) = run(&mut p, &t, PortId::Uplink, &syn);
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        assert_eq!(
            mss_at(&out, ETH + vxlan::ENCAP_LEN),
            Some(ingress_mtu.unwrap_or(1450) - 40)
        );
        (t, p)
    }

    #[test]
    fn a_too_big_df_packet_gets_frag_needed_quoting_what_its_sender_sent() {
        for mtu in [None, Some(1400)] {
            let (t, mut p) = on_n1_established(mtu);
            let mtu = mtu.unwrap_or(1450);
            let up = p.cfg.uplink_mac;
            let client_mac = [2, 0, 0, 0, 0, 0x99];
            // The largest packet that fits is encapsulated to exactly the uplink's MTU or less.
            let fits = vec![0x61; usize::from(mtu) - 40];
            let seg = tcp_seg(
                (client_mac, up),
                CLIENT,
                40000,
                N1,
                8080,
                TcpControl::Psh,
                true,
                None,
                &fits,
                true,
            );
            let (v, out) = run(&mut p, &t, PortId::Uplink, &seg);
            assert_eq!(v, Verdict::Tx(PortId::Uplink));
            assert!(out.len() - ETH <= 1500);
            // One byte more: ICMP "fragmentation needed" to the client, from the node.
            let big = vec![0x62; usize::from(mtu) - 39];
            let seg = tcp_seg(
                (client_mac, up),
                CLIENT,
                40000,
                N1,
                8080,
                TcpControl::Psh,
                true,
                None,
                &big,
                true,
            );
            let (v, out) = run(&mut p, &t, PortId::Uplink, &seg);
            assert_eq!(v, Verdict::Tx(PortId::Uplink));
            assert_eq!(&out[0..6], &client_mac);
            assert_eq!(&out[6..12], &up);
            let ip = Ipv4Packet::new_checked(&out[ETH..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!((ipkey(ip.src_addr()), ipkey(ip.dst_addr())), (N1, CLIENT));
            let icmp = smoltcp::wire::Icmpv4Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum());
            assert_eq!((u8::from(icmp.msg_type()), icmp.msg_code()), (3, 4));
            assert_eq!(be16(ip.payload(), 6), mtu, "the next-hop MTU (RFC 1191)");
            // The quote is the packet as the client sent it: to the node's published port.
            assert_eq!(&ip.payload()[8..], &seg[ETH..ETH + 28]);
            assert_eq!(p.stats.icmp_frag_needed, 1);
            assert_eq!(p.stats.dropped(DropReason::TooBig), 1);
            // Without DF: dropped (fragmenting is not done yet), typed.
            let seg = tcp_seg(
                (client_mac, up),
                CLIENT,
                40000,
                N1,
                8080,
                TcpControl::Psh,
                true,
                None,
                &big,
                false,
            );
            let (v, _) = run(&mut p, &t, PortId::Uplink, &seg);
            assert_eq!(v, Verdict::Drop(DropReason::TooBig));
            assert_eq!(p.stats.icmp_frag_needed, 1);
            assert_eq!(p.stats.dropped(DropReason::TooBig), 2);
        }
    }

    #[test]
    fn frag_needed_is_rate_limited_per_source() {
        let (t, mut p) = on_n1_established(None);
        let up = p.cfg.uplink_mac;
        let big = vec![0x62; 1411];
        let seg = tcp_seg(
            ([2, 0, 0, 0, 0, 0x99], up),
            CLIENT,
            40000,
            N1,
            8080,
            TcpControl::Psh,
            true,
            None,
            &big,
            true,
        );
        let answered = (0..50)
            .filter(|_| run(&mut p, &t, PortId::Uplink, &seg).0 == Verdict::Tx(PortId::Uplink))
            .count();
        assert_eq!(answered, 10);
        assert_eq!(p.stats.icmp_frag_needed, 10);
        assert_eq!(p.stats.dropped(DropReason::TooBig), 50);
    }

    #[test]
    fn a_tasks_too_big_reply_gets_frag_needed_from_its_gateway() {
        // On n2, web.1 answers a flow n1 masqueraded: stateless, VXLAN back to n1.
        let (t, mut p) = on_n2(None);
        p.neighbors().learn(N1, [2, 0, 0, 0, 0, 0x01]);
        let tk = p.cfg.tasks_mac;
        let web1_mac = [2, 0, 0, 0, 0, 0x11];
        let big = vec![0x63; 1460];
        let seg = tcp_seg(
            (web1_mac, tk),
            WEB1,
            80,
            0x0a00_0002,
            1024,
            TcpControl::Psh,
            true,
            None,
            &big,
            true,
        );
        let (v, out) = run(&mut p, &t, PortId::Tasks, &seg);
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        assert_eq!(&out[0..6], &web1_mac);
        let ip = Ipv4Packet::new_checked(&out[ETH..]).unwrap();
        // From the ingress network's gateway, to the task.
        assert_eq!(
            (ipkey(ip.src_addr()), ipkey(ip.dst_addr())),
            (0x0a00_0001, WEB1)
        );
        assert_eq!(be16(ip.payload(), 6), 1450);
        assert_eq!(p.stats.icmp_frag_needed, 1);
    }

    #[test]
    fn every_host_reason_is_produced_and_counted() {
        use crate::testkit;
        let client_mac = [2, 0, 0, 0, 0, 0x99];
        let client = std::net::Ipv4Addr::new(10, 9, 0, 9);
        let n1 = std::net::Ipv4Addr::new(192, 168, 1, 11);
        let syn = |dport: u16| {
            testkit::tcp_frame(
                client_mac,
                Config::default().uplink_mac,
                client,
                40000,
                n1,
                dport,
                testkit::tcp_flags::SYN,
                1,
                0,
                b"",
            )
        };
        let full = three_nodes();
        let mut no_task = three_nodes();
        no_task.services[0].tasks.clear();
        let cases: Vec<(HostReason, ctl::State, PortId, Vec<u8>)> = vec![
            (
                HostReason::NodeAddress,
                full.clone(),
                PortId::Uplink,
                testkit::icmp_echo(
                    client_mac,
                    Config::default().uplink_mac,
                    client,
                    n1,
                    1,
                    1,
                    b"ping",
                ),
            ),
            (
                HostReason::NotPublished,
                full.clone(),
                PortId::Uplink,
                syn(9999),
            ),
            (
                HostReason::NotSyn,
                full.clone(),
                PortId::Uplink,
                testkit::tcp_frame(
                    client_mac,
                    Config::default().uplink_mac,
                    client,
                    40000,
                    n1,
                    8080,
                    testkit::tcp_flags::ACK,
                    1,
                    1,
                    b"",
                ),
            ),
            (HostReason::NoTask, no_task, PortId::Uplink, syn(8080)),
            (
                HostReason::MeshAddress,
                full.clone(),
                PortId::Tasks,
                // web.1 pings its network's gateway (on n2, where it runs).
                testkit::icmp_echo(
                    [2, 0, 0, 0, 0, 0x11],
                    Config::default().tasks_mac,
                    std::net::Ipv4Addr::new(10, 0, 1, 11),
                    std::net::Ipv4Addr::new(10, 0, 1, 1),
                    1,
                    1,
                    b"gw",
                ),
            ),
        ];
        let mut seen = [false; HostReason::COUNT];
        for (want, state, port, frame) in cases {
            let node = if port == PortId::Tasks { "n2" } else { "n1" };
            let t = ServiceTable::build(&state, node, 1).unwrap();
            let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
            let (v, _) = run(&mut p, &t, port, &frame);
            assert_eq!(v, Verdict::Host(want), "{want:?}");
            assert_eq!(p.stats.to_host_by[want as usize], 1, "{want:?}");
            assert_eq!(p.stats.to_host, 1);
            seen[want as usize] = true;
        }
        for r in HostReason::ALL {
            assert!(
                seen[r as usize],
                "no input produces HostReason::{r:?}: add one"
            );
        }
    }

    /// Drop reasons produced by the worker loop rather than the pipeline (see
    /// `worker::tests::full_queues_are_counted_by_their_reason`).
    const WORKER_LEVEL: [DropReason; 2] = [DropReason::HandoffFull, DropReason::HostQueueFull];

    #[test]
    fn every_drop_reason_is_produced_and_counted() {
        use crate::testkit;
        use std::net::Ipv4Addr as A;
        let up = Config::default().uplink_mac;
        let tk = Config::default().tasks_mac;
        let cmac = [2, 0, 0, 0, 0, 0x99];
        let web1_mac = [2, 0, 0, 0, 0, 0x11];
        let client = A::new(10, 9, 0, 9);
        let n1 = A::new(192, 168, 1, 11);
        let n2 = A::new(192, 168, 1, 12);
        let web1 = A::new(10, 0, 1, 11);
        let syn = |dst: A, dport: u16, sport: u16| {
            testkit::tcp_frame(
                cmac,
                up,
                client,
                sport,
                dst,
                dport,
                testkit::tcp_flags::SYN,
                1,
                0,
                b"",
            )
        };
        let from_web1 = |dst: A| testkit::udp_frame(web1_mac, tk, web1, 5000, dst, 53, b"q");
        // What a peer's VXLAN carries: a client's SYN to web.1, masqueraded by n2's endpoint.
        let inner = testkit::tcp_frame(
            cmac,
            tk,
            A::new(10, 0, 0, 3),
            1024,
            A::new(10, 0, 0, 11),
            80,
            testkit::tcp_flags::SYN,
            1,
            0,
            b"",
        );
        let vx = |src: A, vni: u32| {
            testkit::vxlan_frame([2, 0, 0, 0, 0, 0x12], up, src, n1, 50000, vni, &inner)
        };
        let mut bad_vxlan = vx(n2, ctl::INGRESS_VNI);
        bad_vxlan[ETH + IPV4 + 8] = 0; // the I flag
        testkit::refill_l4_checksum(&mut bad_vxlan);
        let mut udp_bad_len = testkit::udp_frame(cmac, up, client, 5000, n1, 8080, b"x");
        put16(&mut udp_bad_len, ETH + IPV4 + 4, 3);
        let mut bad_arp = testkit::arp_request(web1_mac, web1, A::new(10, 0, 1, 1));
        bad_arp.truncate(ETH + 10);
        // Two published ports onto the same target port of the one task, client IP kept: the
        // second SYN from the same client port would translate onto the first one's flow.
        let mut kept = three_nodes();
        kept.services[0].client_ip = ClientIpMode::Keep;
        kept.services[0].tasks.truncate(1);
        let mut second = kept.services[0].ports[0];
        second.published = 8081;
        kept.services[0].ports.push(second);
        let full = three_nodes();
        // (reason, state, node, port, frames: all but the last must not be dropped)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(DropReason, &ctl::State, &str, PortId, Vec<Vec<u8>>)> = vec![
            (
                DropReason::NotForUs,
                &full,
                "n1",
                PortId::Uplink,
                vec![syn(A::new(192, 168, 1, 99), 8080, 40000)],
            ),
            (
                DropReason::UnknownVtep,
                &full,
                "n1",
                PortId::Uplink,
                vec![vx(A::new(192, 168, 1, 99), ctl::INGRESS_VNI)],
            ),
            (
                DropReason::BadVxlan,
                &full,
                "n1",
                PortId::Uplink,
                vec![bad_vxlan],
            ),
            (
                DropReason::UnknownVni,
                &full,
                "n1",
                PortId::Uplink,
                vec![vx(n2, 999)],
            ),
            (
                DropReason::BadL4Header,
                &full,
                "n1",
                PortId::Uplink,
                vec![udp_bad_len],
            ),
            (
                DropReason::UnknownSource,
                &full,
                "n2",
                PortId::Tasks,
                vec![testkit::udp_frame(
                    web1_mac,
                    tk,
                    A::new(10, 0, 1, 99),
                    5000,
                    web1,
                    53,
                    b"q",
                )],
            ),
            (
                DropReason::CrossNetwork,
                &full,
                "n2",
                PortId::Tasks,
                vec![from_web1(A::new(10, 0, 0, 12))],
            ),
            (
                DropReason::NoRoute,
                &full,
                "n2",
                PortId::Tasks,
                vec![from_web1(A::new(8, 8, 8, 8))],
            ),
            (
                DropReason::NoNeighbor,
                &full,
                "n2",
                PortId::Uplink,
                vec![syn(n2, 8080, 40000)],
            ),
            (
                DropReason::ArpIgnored,
                &full,
                "n2",
                PortId::Tasks,
                vec![testkit::arp_request(web1_mac, web1, web1)],
            ),
            (
                DropReason::BadArp,
                &full,
                "n2",
                PortId::Tasks,
                vec![bad_arp],
            ),
            (
                DropReason::NoNatPort,
                &kept,
                "n1",
                PortId::Uplink,
                vec![syn(n1, 8080, 40000), syn(n1, 8081, 40000)],
            ),
        ];
        let mut seen: Vec<DropReason> = WORKER_LEVEL.to_vec();
        for (want, state, node, port, frames) in cases {
            let t = ServiceTable::build(state, node, 1).unwrap();
            let neigh = Arc::new(Neighbors::new(64));
            neigh.learn(0xc0a8_010c, [2, 0, 0, 0, 0, 0x12]);
            neigh.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
            let mut p = Pipeline::new(Config::default(), neigh);
            let n = frames.len();
            for (i, f) in frames.iter().enumerate() {
                let (v, _) = run(&mut p, &t, port, f);
                if i + 1 < n {
                    assert!(
                        !matches!(v, Verdict::Drop(_)),
                        "{want:?}: frame {i} was {v:?}"
                    );
                } else {
                    assert_eq!(v, Verdict::Drop(want), "{want:?}");
                }
            }
            assert_eq!(p.stats.dropped(want), 1, "{want:?}");
            seen.push(want);
        }
        // No headroom left to encapsulate: a buffer whose frame starts 10 bytes in.
        {
            let t = ServiceTable::build(&full, "n1", 1).unwrap();
            let neigh = Arc::new(Neighbors::new(64));
            neigh.learn(0xc0a8_010c, [2, 0, 0, 0, 0, 0x12]);
            neigh.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
            let mut p = Pipeline::new(Config::default(), neigh);
            let f = syn(n1, 8080, 40000);
            let mut b = PacketBuf::from_frame(PortId::Uplink, &f);
            let room = b.headroom() - 10;
            b.prepend(room).unwrap();
            b.data_mut()[..f.len()].copy_from_slice(&f);
            b.truncate(f.len());
            assert_eq!(b.headroom(), 10);
            let mut burst = Burst::new();
            burst.push(b);
            let mut v = Verdicts::new();
            p.process(&t, 1, &mut burst, &mut v);
            assert_eq!(v[0], Verdict::Drop(DropReason::NoHeadroom));
            seen.push(DropReason::NoHeadroom);
        }
        // The malformations (see each_malformation_has_its_reason) and too_big (see the big
        // packet tests) are produced there.
        seen.extend([
            DropReason::Truncated,
            DropReason::UnknownEthertype,
            DropReason::NotOurMac,
            DropReason::BadIpChecksum,
            DropReason::Fragment,
            DropReason::TtlExpired,
            DropReason::Ipv4Options,
            DropReason::BadL4Checksum,
            DropReason::UnknownProtocol,
            DropReason::BadIpv4Header,
            DropReason::TooBig,
        ]);
        for r in DropReason::ALL {
            assert!(
                seen.contains(&r),
                "no input produces DropReason::{r:?}: add one"
            );
        }
    }
}
