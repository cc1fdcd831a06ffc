//! The per-burst fast path.
//!
//! [`Pipeline::process`] takes a burst of frames, the current [`ServiceTable`] and `now`, and
//! rewrites each frame in place and gives it a [`Verdict`]: out of a port, to the host stack, to
//! the worker that owns its flow, or dropped with a typed reason. It reads no clock, no socket and
//! no global, allocates nothing and cannot panic on any input (frames are checked before any
//! field is read; every index is bounded by those checks).
//!
//! Paths (see DESIGN.md):
//! - uplink → published port: flow lookup; on a miss a task is picked (the service's scheduler),
//!   the flow recorded, the packet DNAT'ed (and masqueraded in Swarm's mode) and delivered on the
//!   tasks port or VXLAN-encapsulated to the task's node;
//! - uplink → VXLAN from a peer VTEP: decapsulated, then routed in its overlay network;
//! - tasks port → overlay: VIP balancing, task-to-task forwarding, replies of flows;
//! - ARP from tasks for any overlay address that is not a local task, and for the node's
//!   address on the uplink, is answered in place.
//!
//! One packet's way, by stage and file:
//! 1. classify (`classify.rs`): `parse_ipv4` checks the headers (every L3/L4 drop reason);
//!    `one` below sends ARP to `arp.rs` and IPv4 to the path of its port (`on_uplink`,
//!    `decap`, `on_task` here), which say what the destination is;
//! 2. steer (`steer.rs`): the worker that owns the flow, decided by one function per way in
//!    before anything is rewritten; VXLAN is steered from the inner packet read in place
//!    (`inner_owner`), so a frame for another worker goes as it arrived;
//! 3. flow (here): look the flow up; on a miss `balance::Scheduler` picks a task,
//!    `nat::ports::MasqPorts` a masquerade port, and the flow is created;
//! 4. transmit (`xmit.rs`): `forward` rewrites by the flow's action (NAT, MSS clamping, the
//!    overlay MTU check) and `send` sends by the flow's egress.
//!
//! Every exit is a typed [`Verdict`]: `Tx`, `Host(HostReason)`, `Handoff`, `Consumed` or
//! `Drop(DropReason)`, each counted. Between bursts, `housekeeping.rs` expires and ends flows.
//!
//! A drop also counts against a task, or its service, once the pipeline knows which (the
//! `DROPPED` column of [`TaskCounters`]; `meshctl service stats`' DROPS), only on the drop
//! path (`blame`, `blame_service`, `blame_flow_of`), so forwarding pays nothing for it:
//! - a flow's packet dropped on its way out (`forward`: no neighbour for the next hop, too big
//!   for the overlay, no buffer to fragment it, sealing or encapsulation failing): the flow's
//!   task, found again by `process` from the frame's 5-tuple as it arrived; the later
//!   fragments that follow a flow, by `later`;
//! - a new connection to a published port or a VIP refused after a task was picked (no
//!   masquerade port, the translation colliding, the flow table full, no ingress endpoint):
//!   that task; refused before one was (no task may take it, answered by the host side as a
//!   closed port, `HostReason::NoTask`; a SYN with FIN or RST; a source over its new-flow
//!   rate): the service alone;
//! - a frame whose headers fail with `ttl_expired` or `bad_l4_checksum` before the pipeline
//!   has read where it goes, when its 5-tuple (read again on that cold path) is a flow of
//!   this worker: the flow's task. A frame the receiving worker does not own is dropped before
//!   it would be handed over, and is not blamed.
//!
//! Not blamed on anyone, counted only by reason: drops before the pipeline knows a service
//! (malformed Ethernet, IPv4, TCP or UDP headers, unknown VTEPs and VNIs, spoofed sources,
//! ARP, fragments the fragment stage refuses, a later fragment of a datagram whose first was
//! dropped), frames delivered by address without a flow on this node (task-to-task traffic,
//! requests another node masqueraded; their packets are not counted per task here either),
//! and the worker's own queues (`handoff_full`, `host_queue_full`, `no_headroom` there).

use std::sync::Arc;

use arrayvec::ArrayVec;
use ctl::model::ClientIpMode;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol,
    Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket,
};

use crate::balance::sched::NewFlow;
use crate::balance::{AddrKind, Scheduler, ServiceTable};
use crate::buf::{PacketBuf, Pool, PortId};
use crate::flow::{
    self, owner_of, Action, Dir, Egress, Flow, FlowKey, FlowKind, FlowTable, Reaped,
};
use crate::nat::ports::{self, MasqPorts};
use crate::nat::{self, dec_ttl, put16};
use crate::neigh::{NeighCache, Neighbors};
use crate::overlay::seal::{Replay, Sealer};
use crate::overlay::{self, entropy_port, Outer, Outer6};
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

// Every counters slot a worker hands out has its live flows counted (least connections).
const _: () = assert!((MAX_COUNTED_TASKS * 2).next_power_of_two() <= flow::ACTIVE_SLOTS);

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
    /// New flows a source address may open per second on this worker (a burst of as many,
    /// then the rest of the second waits); 0: no limit. Katran's connection-rate cap, per
    /// source: a spoofed flood from many sources is bounded by the flow table's eviction of
    /// half-open flows instead.
    pub new_flows_per_source: u16,
    /// Count packets and bytes per flow, both ways, for `meshctl conn ls` (`meshd
    /// --flow-accounting`). Off by default, as the kernel's `nf_conntrack_acct`: the counters
    /// are in a flow's third cache line, one more line per packet, which costs a quarter of the
    /// throughput once the flows outgrow the cache (bench pipeline, 1 M flows).
    pub flow_accounting: bool,
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
            new_flows_per_source: 0,
            flow_accounting: false,
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
/// Sources a worker's new-flow limit tells apart (direct-mapped by address).
const FLOW_LIMIT_SLOTS: usize = 4096;
/// Entries of a worker's cache of local tasks' MACs (direct-mapped).
const MAC_CACHE: usize = 64;

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
    /// What was asked by ARP of each recently wanted address: when, whether a request is open,
    /// a MAC change waiting for a second answer (direct-mapped by address).
    arp_open: [arp::Ask; 16],
    /// Resets towards clients of ended flows, waiting for buffers.
    resets: ArrayVec<Flow, 64>,
    /// What tasks answered to new connections, for passive health (the worker hands it on).
    pub passive: passive::Passive,
    /// The flow key and hash the prefetch pass computed for the frame being processed.
    hint: (FlowKey, u64),
    /// Prebuilt outer headers per peer VTEP and port (emptied when a new table comes).
    outers: NeighCache<(u32, u16), Outer, OUTER_CACHE>,
    /// The same over an IPv6 underlay.
    outers6: NeighCache<(u32, u16), Outer6, OUTER_CACHE>,
    /// Local tasks' and peers' MACs, with the VLAN of a task's port (emptied when a new table
    /// comes: a task's VLAN is the table's).
    macs: NeighCache<u32, Hw, MAC_CACHE>,
    /// Each network's MTU (by network index), the smallest of them, and the longest frame that
    /// fits any overlay (`ETH + min_mtu`): one compare on the fast path. Every frame sent by VXLAN
    /// is checked against it first: in `forward` (before the rewrite, so an ICMP answer quotes
    /// what the sender sent) and on the stateless task-to-peer path.
    net_mtu: Vec<u16>,
    min_mtu: u16,
    max_frame: usize,
    /// Per-source limit of the ICMP answers the pipeline writes.
    icmp_limit: RateLimit,
    /// Per-source limit of new flows (`Config::new_flows_per_source`), when set.
    flow_limit: Option<Box<RateLimit<FLOW_LIMIT_SLOTS>>>,
    /// Datagrams whose fragments pass this worker, and what their first fragment did.
    frags: frag::FragTable,
    /// Fragments waiting for their datagram's first fragment.
    held: ArrayVec<frag::Held, { frag::HOLD }>,
    /// Empty buffers for held fragments and for the pieces of too-big packets (from the pool,
    /// between bursts).
    spare: ArrayVec<PacketBuf, { frag::SPARE }>,
    /// Frames made or released during a burst besides its own, with their verdicts.
    extra: ArrayVec<frag::Extra, { frag::EXTRA }>,
    /// The index in its burst of the frame being processed (which extra frames follow).
    cur: u8,
    /// The flow a first fragment was forwarded by (set by `forward`).
    frag_flow: Option<FlowKey>,
    /// The last neighbour MAC change (address, old MAC, new MAC), for the worker to log and
    /// clear ([`Pipeline::take_mac_change`]).
    mac_change: Option<(u32, [u8; 6], [u8; 6])>,
    /// Seals this worker's VXLAN frames of encrypted networks (its nonces).
    sealer: Sealer,
    /// The nonces of sealed frames this worker opened (the replay check).
    replay: Replay,
    /// A task's IPv6 frame as it came, while it goes through as IPv4 (`overlay6`): given back
    /// when the frame is handed to another worker, which turns it into IPv4 itself. Its
    /// room is allocated here, once.
    saved6: Vec<u8>,
}

mod arp;
mod classify;
pub mod frag;
mod housekeeping;
mod icmperr;
mod ipv6;
pub mod nat64;
mod overlay6;
pub mod passive;
mod steer;
#[cfg(test)]
mod tests;
pub mod underlay6;
mod xmit;

use classify::{addr, ipkey, peek_key};

/// Where a neighbour is on its port: its MAC, and on the tasks port the VLAN of its own port of
/// the tasks bridge (0 for peers and untagged tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hw {
    mac: [u8; 6],
    vlan: u16,
}

impl Hw {
    /// A peer's, or anything's on an untagged segment.
    fn plain(mac: [u8; 6]) -> Self {
        Hw { mac, vlan: 0 }
    }
}

/// [`ServiceTable::local_vlan`] of `ip` (host byte order).
pub(super) fn task_vlan(t: &ServiceTable, ip: u32) -> u16 {
    t.local_vlan(addr(ip))
}
pub use classify::{parse_ipv4, L3};
use frag::{Size, Way};
pub use ipv6::{parse_ipv6, solicited_node, L3v6, MAX_IPV6_EXT_HEADERS};

impl Pipeline {
    /// A pipeline with its flow table allocated. `neigh` is shared by all workers.
    pub fn new(cfg: Config, neigh: Arc<Neighbors>) -> Self {
        let flows = FlowTable::new(cfg.flow_capacity);
        Self::with_flows(cfg, neigh, flows)
    }

    /// A pipeline over `flows`: a table adopted from a meshd before this one
    /// ([`crate::flow::keep`]) or a new one. Adopted flows get this pipeline's clock (their idle
    /// time starts again at the clock's zero, where a worker's clock starts) and counters
    /// slots; masquerade ports are then checked against the table before they are handed out,
    /// since the adopted flows hold some.
    pub fn with_flows(cfg: Config, neigh: Arc<Neighbors>, mut flows: FlowTable) -> Self {
        let flow_limit = (cfg.new_flows_per_source > 0)
            .then(|| Box::new(RateLimit::new(cfg.new_flows_per_source, 1000)));
        let mut masq = MasqPorts::new(cfg.worker, cfg.workers);
        let mut task_stats = TaskCounters::new(MAX_COUNTED_TASKS);
        if !flows.is_empty() {
            masq.check_every_pick();
            let ids: Vec<u32> = flows.live_ids().collect();
            for id in ids {
                let f = flows.get_mut(id);
                let slot = if f.task_uid == 0 {
                    u16::MAX
                } else {
                    task_stats.slot(f.task_uid)
                };
                f.readopt(0, slot);
            }
            flows.recount_active();
        }
        Pipeline {
            cfg,
            flows,
            stats: WorkerStats::default(),
            task_stats,
            neigh,
            sched: Scheduler::default(),
            masq,
            last_sweep: u32::MAX,
            generation: u64::MAX,
            recheck: 0,
            want_arp: ArrayVec::new(),
            arp_open: [arp::Ask::default(); 16],
            resets: ArrayVec::new(),
            passive: passive::Passive::default(),
            hint: (FlowKey::default(), 0),
            outers: NeighCache::new(),
            outers6: NeighCache::new(),
            macs: NeighCache::new(),
            net_mtu: Vec::new(),
            min_mtu: 0,
            max_frame: 0,
            icmp_limit: RateLimit::default(),
            flow_limit,
            frags: frag::FragTable::default(),
            held: ArrayVec::new(),
            spare: ArrayVec::new(),
            extra: ArrayVec::new(),
            cur: 0,
            frag_flow: None,
            mac_change: None,
            sealer: Sealer::new(),
            replay: Replay::default(),
            saved6: Vec::with_capacity(crate::buf::BUF_SIZE),
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

    /// Counts a verdict (of a burst's frame or an extra one).
    #[inline]
    pub(super) fn count(&mut self, v: Verdict) {
        match v {
            Verdict::Tx(PortId::Uplink) => self.stats.tx_uplink += 1,
            Verdict::Tx(PortId::Tasks) => self.stats.tx_tasks += 1,
            Verdict::Host(r) => self.stats.to_host(r),
            Verdict::Handoff(_) => self.stats.handoff_out += 1,
            Verdict::Consumed => {}
            Verdict::Drop(r) => self.stats.drop(r),
        }
    }

    /// Counts a drop against the task whose counters are at `slot` (the task picked for a new
    /// flow, or a later fragment's flow's), and gives `r` back. Drop paths only.
    #[cold]
    #[inline(never)]
    pub(super) fn blame(&mut self, slot: u16, r: DropReason) -> DropReason {
        self.task_stats.drop_at(slot);
        r
    }

    /// Counts a drop (or a refusal) against service `svc` when no task was picked: under the
    /// service's own uid in the task counters. Drop paths only.
    #[cold]
    #[inline(never)]
    fn blame_service(&mut self, t: &ServiceTable, svc: crate::balance::table::SvcIdx) {
        if let Some(s) = t.services.get(usize::from(svc)) {
            let slot = self.task_stats.slot(s.uid);
            self.task_stats.drop_at(slot);
        }
    }

    /// A frame dropped as `r`: when `r` is one a flow's own packet may meet and the frame's
    /// 5-tuple, from the prefetch pass (as it arrived, before any rewrite), is a flow of this
    /// worker, counts it against the flow's task. Those reasons: dropped before the pipeline
    /// read where it goes (time to live, transport checksum), or on the way out once `forward`
    /// has rewritten it (no neighbour, too big, no buffer to fragment it, no headroom, no seal).
    /// Looking the flow up again here, on the drop path, keeps `forward` as it was: a match on
    /// `send`'s result there made `by_flow_or` (the task replies' path) stop inlining `send`.
    #[cold]
    #[inline(never)]
    fn blame_flow_of(&mut self, r: DropReason) {
        use DropReason as R;
        if !matches!(
            r,
            R::TtlExpired
                | R::BadL4Checksum
                | R::NoNeighbor
                | R::TooBig
                | R::NoBuffer
                | R::NoHeadroom
                | R::SealUnknownKey
                | R::SealNoNonce
        ) {
            return;
        }
        let (key, hash) = self.hint;
        if hash == 0 {
            return;
        }
        if let Some((id, dir)) = self.flows.lookup(&key, hash) {
            let slot = self.flows.get(id).stats_slot(dir);
            self.task_stats.drop_at(slot);
        }
    }

    /// Counts a new flow to the task whose counters are at `slot`.
    #[inline]
    fn count_new(&mut self, slot: u16) {
        self.stats.new_flows += 1;
        self.stats.flows_evicted = self.flows.evicted;
        self.stats.affinity_full = self.sched.affinity_full;
        self.stats.sched_uncounted = self.sched.uncounted;
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

    /// Whether housekeeping has work that should not wait for an idle worker's next wake (a
    /// new table's check of every flow, which ends the flows of tasks gone).
    pub fn has_chores(&self) -> bool {
        self.recheck > 0
    }

    /// Adopts a new table: sizes the scheduler's state and schedules a full pass over the flows
    /// to end those whose task is gone. Called by `process` when the generation changes; this is
    /// the only place the pipeline may allocate, and only when the table grew.
    fn adopt(&mut self, table: &ServiceTable) {
        let task_stats = &mut self.task_stats;
        self.sched.adopt(table, |uid| task_stats.slot(uid));
        self.generation = table.generation;
        self.recheck = self.flows.capacity();
        let uplink = self.cfg.uplink_mtu;
        self.net_mtu.clear();
        self.net_mtu
            .extend(table.networks.iter().map(|n| n.mtu_on(uplink)));
        let most = uplink.saturating_sub(ctl::VXLAN_OVERHEAD);
        self.min_mtu = self.net_mtu.iter().copied().min().unwrap_or(most);
        self.max_frame = ETH + usize::from(self.min_mtu);
        // The local VTEP address and the peers' ports may have changed, and tasks' VLANs.
        self.outers.clear();
        self.outers6.clear();
        self.macs.clear();
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
                self.flows.prefetch_flow(*h, self.cfg.flow_accounting);
            }
        }
        for (i, buf) in burst.iter_mut().enumerate() {
            self.hint = keys[i];
            // Casts: a burst has at most BURST (32) frames.
            #[allow(clippy::cast_possible_truncation)]
            {
                self.cur = i as u8;
            }
            self.stats.rx += 1;
            let v = match self.one(table, now, buf) {
                Ok(v) => v,
                Err(r) => {
                    self.blame_flow_of(r);
                    Verdict::Drop(r)
                }
            };
            self.count(v);
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
            EthernetProtocol::Arp => self.arp(t, now, buf),
            EthernetProtocol::Ipv4 => {
                if dst_mac.0 != my_mac {
                    return Err(DropReason::NotOurMac);
                }
                let l3 = parse_ipv4(f, ETH, self.cfg.verify_l4_checksums)?;
                if l3.frag != frag::Frag::Whole {
                    return self.fragment(t, now, buf, l3, Way::Direct);
                }
                match port {
                    PortId::Uplink => self.on_uplink(t, now, buf, l3),
                    PortId::Tasks => self.on_task::<false>(t, now, buf, l3),
                }
            }
            EthernetProtocol::Ipv6 => self.ipv6(t, now, buf),
            _ => Err(DropReason::UnknownEthertype),
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
            return self.decap(t, now, buf, l3, false, false);
        }
        if dst != t.node_addr || !l3.has_ports() {
            if l3.proto == ICMP && dst == t.node_addr {
                if let Some(v) = self.icmp_from_client(t, now, buf, &l3) {
                    return Ok(v);
                }
            }
            return Ok(Verdict::Host(HostReason::NodeAddress));
        }
        let proto = if l3.proto == TCP {
            IpProtocol::Tcp
        } else {
            IpProtocol::Udp
        };
        let Some(p) = t.published(proto, l3.dport) else {
            // Health gossip from a peer's address but not from the peer's MAC is forged.
            if l3.proto == UDP
                && l3.dport == ctl::HEALTH_GOSSIP_PORT
                && t.peer(addr(l3.src)).is_some()
            {
                let smac = EthernetFrame::new_unchecked(buf.data()).src_addr().0;
                if !self.note_mac(l3.src, smac, PortId::Uplink, now, false) {
                    return Err(DropReason::SpoofedPeer);
                }
            }
            return Ok(Verdict::Host(HostReason::NotPublished));
        };
        let p = *p;
        if let Some(v) = self.handoff(self.published_owner(l3.src, l3.sport)) {
            return Ok(v);
        }
        let key = l3.key();
        let hash = self.hash_of(&key);
        if let Some((id, dir)) = self.lookup_live(t, &key, hash) {
            return self.forward(t, now, buf, &l3, id, dir);
        }
        match self.open_ingress(t, now, buf, &l3, key, hash, p, None)? {
            Ok(id) => self.forward(t, now, buf, &l3, id, Dir::Fwd),
            Err(v) => Ok(v),
        }
    }

    /// A new flow of the client of `l3` (`key`, `hash`: its forward key) to published port `p`:
    /// `Ok(Ok(id))` when made, `Ok(Err(verdict))` when refused as the host refuses it (a stray
    /// segment, no task), `Err` when dropped. An IPv6 client (`client6`, its address; `l3`
    /// holds its stand-in and destination 0.0.0.0, see `nat64`) is always masqueraded and its
    /// replies go back as IPv6 ([`Egress::Uplink6`]).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_ingress(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &PacketBuf,
        l3: &L3,
        key: FlowKey,
        hash: u64,
        p: crate::balance::table::Published,
        client6: Option<[u8; 16]>,
    ) -> Result<Result<u32, Verdict>, DropReason> {
        // Only a plain TCP SYN (or any UDP datagram) opens a flow, at most as often as the
        // source may; a stray segment gets the host's answer (RST), as from a kernel with no
        // such connection.
        if let Some(v) = self
            .may_open(l3, now)
            .inspect_err(|_| self.blame_service(t, t.balancer(p.balancer).service))?
        {
            return Ok(Err(v));
        }
        // A table publishes ports only when it has an ingress network.
        let Some(ing) = t.ingress_net else {
            return Ok(Err(Verdict::Host(HostReason::NotPublished)));
        };
        let bal = t.balancer(p.balancer);
        // Fix (found by the simulation): Maglev must pick the same task for a client's flow on
        // every ingress node, but the flow key's destination is this node's own address, which
        // differs on each; schedule on a hash of the flow without it.
        let pick = NewFlow {
            hash: FlowKey::new(l3.proto, l3.src, l3.sport, 0, l3.dport).hash(),
            client: l3.src,
            now,
        };
        let Some(b) = self.sched.pick(t, p.balancer, pick, self.flows.active()) else {
            // No task to take it: refuse like a closed port (the service's drop).
            self.blame_service(t, bal.service);
            return Ok(Err(Verdict::Host(HostReason::NoTask)));
        };
        let svc = &t.services[usize::from(bal.service)];
        let net = t.net(ing);
        let client_mac = EthernetFrame::new_unchecked(buf.data()).src_addr().0;
        let slot = self.task_stats.slot(b.uid);
        let masquerade = client6.is_some() || svc.client_ip == ClientIpMode::Masquerade;
        let (src, sport) = if masquerade {
            let Some(ep) = net.local_endpoint else {
                return Err(self.blame(slot, DropReason::NoRoute));
            };
            let ep = ipkey(ep);
            let picked = self.masq.pick(
                &self.flows,
                (l3.proto, false),
                ep,
                ipkey(b.addr),
                p.target,
                slot,
            );
            let Some(port) = picked else {
                return Err(self.blame(slot, DropReason::NoNatPort));
            };
            (ep, port)
        } else {
            (l3.src, l3.sport)
        };
        let task_addr = ipkey(b.addr);
        let egress = self.egress_to(t, b.local, b.node, net.vni, &key);
        let fwd = Action::new(&key, src, sport, task_addr, p.target, egress);
        let rkey = FlowKey::new(l3.proto, task_addr, p.target, src, sport);
        let back = match client6 {
            Some(_) => Egress::Uplink6 { mac: client_mac },
            None => Egress::Uplink { mac: client_mac },
        };
        let rev = Action::new(&rkey, l3.dst, l3.dport, l3.src, l3.sport, back);
        let mut flow = Flow::new(
            FlowKind::Ingress,
            [key, rkey],
            [fwd, rev],
            b.uid,
            slot,
            timeouts(svc),
            now,
        );
        if let Some(c) = client6 {
            flow.set_client6(c);
        }
        // The forward key just missed; a masquerade port was picked so the reverse key is free.
        let id = if masquerade {
            self.flows.insert_deferred(flow, [hash, rkey.hash()], now)
        } else {
            self.flows.insert(flow, now)
        }
        .map_err(|e| self.blame(slot, insert_refused(e)))?;
        self.count_new(slot);
        Ok(Ok(id))
    }

    /// Whether the packet `l3`, which no flow has, may open one at `now`: `None` if so, the
    /// verdict for it if not (a stray TCP segment: the host's RST), or the drop (a SYN with FIN
    /// or RST; a source over its new-flow rate).
    #[inline]
    fn may_open(&mut self, l3: &L3, now: u32) -> Result<Option<Verdict>, DropReason> {
        if l3.proto == TCP {
            match flow::tcp::opening(l3.flags) {
                flow::tcp::Opening::Opens => {}
                flow::tcp::Opening::NotSyn => return Ok(Some(Verdict::Host(HostReason::NotSyn))),
                flow::tcp::Opening::Invalid => return Err(DropReason::BadTcpFlags),
            }
        }
        if let Some(limit) = &mut self.flow_limit {
            if !limit.allow(l3.src, now) {
                return Err(DropReason::NewFlowRate);
            }
        }
        Ok(None)
    }

    /// Forgets which sealed frames this worker opened, so recorded ones open again
    /// (benchmarks that replay a ring of sealed frames; never the daemon).
    #[cfg(any(test, feature = "testkit"))]
    pub fn forget_replays(&mut self) {
        self.replay.clear();
    }

    /// The last change of a neighbour's MAC since the last call (address, old, new): the worker
    /// logs it, off the fast path.
    pub fn take_mac_change(&mut self) -> Option<(u32, [u8; 6], [u8; 6])> {
        self.mac_change.take()
    }

    // ---- overlay --------------------------------------------------------------------------

    /// Opens a VXLAN frame of network `net` when the network is encrypted (outside `decap`, so
    /// the plain overlay's path does not carry it).
    #[inline(never)]
    fn open_sealed(
        &mut self,
        t: &ServiceTable,
        net: crate::balance::table::NetIdx,
        buf: &mut PacketBuf,
        vni: u32,
        outer: &L3,
    ) -> Result<(), DropReason> {
        match &t.net(net).keys {
            Some(keys) => self.replay.open(keys, buf, vni, outer.src, outer.dst),
            None => Ok(()),
        }
    }

    /// VXLAN from a peer: checked, decapsulated, routed in its network (`v6`: its inner packet
    /// is a task's IPv6 between twins, translated by `decap6`, whose flows are apart from
    /// IPv4's: a constant where it is inlined). Inlined into the uplink's path (a call here
    /// costs the established decapsulating flow a tenth of its instructions); the fragment
    /// stage's replay goes through `decap_replay`.
    #[inline(always)]
    fn decap(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        outer: L3,
        replay: bool,
        v6: bool,
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
        // The peer's MAC, learned if new; the worker's cache of the shared table says when it
        // is known already (most packets), which saves the shared table's probe. A different
        // one is not believed (`note_mac`), and its frame goes no further: a host on the
        // underlay that forges a peer's address from its own MAC reaches no task.
        if self
            .macs
            .get(&self.neigh, outer.src, outer.src, Hw::plain)
            .map(|h| h.mac)
            != Some(smac)
            && !self.note_mac(outer.src, smac, PortId::Uplink, now, false)
        {
            return Err(DropReason::SpoofedPeer);
        }
        let Some(net) = t.network_by_vni(vni) else {
            return Err(DropReason::UnknownVni);
        };
        // An encrypted network's frame is opened before anything reads it (once: a frame
        // handed over or replayed by the fragment stage was opened already).
        if t.sealed && !buf.opened {
            self.open_sealed(t, net, buf, vni, &outer)?;
        }
        // The inner frame is read where it lies, behind the outer headers: the worker that
        // owns its flow is known before anything is stripped, so a frame for another worker
        // goes to it as it arrived.
        let f = buf.data();
        // The inner Ethernet header as an array (no call, no bounds check per byte).
        let Some(eth) = f
            .get(vxlan::ENCAP_LEN..)
            .and_then(<[u8]>::first_chunk::<ETH>)
        else {
            return Err(DropReason::Truncated);
        };
        // The ethertype as a number: a match on smoltcp's enum with an IPv6 arm cost this
        // path 2 instructions a packet.
        let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
        if ethertype != 0x0800 {
            return match EthernetProtocol::from(ethertype) {
                EthernetProtocol::Arp => Err(DropReason::ArpIgnored),
                // A task's IPv6 on a dual-stack network: as IPv4 from here on.
                EthernetProtocol::Ipv6 if t.dual_stack => self.decap6(t, now, buf, outer, net),
                _ => Err(DropReason::UnknownEthertype),
            };
        }
        let mut l3 = parse_ipv4(f, vxlan::ENCAP_LEN + ETH, self.cfg.verify_l4_checksums)?;
        // A fragment goes through the fragment stage, which runs it through here again
        // (`replay`) when its datagram's route says so.
        if l3.frag != frag::Frag::Whole && !replay {
            return self.fragment(t, now, buf, l3, Way::Decap { outer });
        }
        let d = t.addr(addr(l3.dst));
        if let Some(d) = d {
            if d.net != net {
                return Err(DropReason::CrossNetwork);
            }
        }
        let kind = d.map(|d| d.kind);
        // The source's kind matters only for traffic to a local task (a reply to a flow, most
        // packets here, needs no second lookup).
        let src_kind = match kind {
            Some(AddrKind::Task { local: true, .. }) => t.addr(addr(l3.src)).map(|e| e.kind),
            _ => None,
        };
        if l3.proto == ICMP
            && matches!(
                kind,
                Some(AddrKind::Endpoint { local: true, .. } | AddrKind::Task { local: true, .. })
                    | None
            )
        {
            // A task on another node says a flow this node balanced (to a VIP, or a published
            // port it masqueraded, or whose client's address it kept: to that client) cannot
            // reach it.
            let owner = |p: &Self, q3: &L3| p.inner_owner(q3, kind, src_kind);
            let encap = vxlan::ENCAP_LEN;
            if let Some(v) = self.icmp_from_task(t, now, buf, &l3, encap, owner) {
                return Ok(v);
            }
        }
        if self.cfg.workers > 1 {
            if let Some(v) = self.handoff(self.inner_owner(&l3, kind, src_kind)) {
                return Ok(v);
            }
        }
        // Ours: decapsulate.
        if !buf.trim_front(vxlan::ENCAP_LEN) {
            return Err(DropReason::Truncated);
        }
        l3.l4 -= vxlan::ENCAP_LEN;
        match kind {
            // A reply to a flow this node masqueraded.
            Some(AddrKind::Endpoint { local: true, .. }) => {
                self.by_flow_or(t, now, buf, &l3, v6, Err(DropReason::NoRoute))
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
                let key = l3.key().in_family(v6);
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
            None => self.by_flow_or(t, now, buf, &l3, v6, Err(DropReason::NoRoute)),
            // This node does not transit between peers.
            Some(AddrKind::Task { local: false, .. } | AddrKind::Endpoint { local: false, .. }) => {
                Err(DropReason::NoRoute)
            }
            Some(AddrKind::Vip { .. } | AddrKind::Gateway) => {
                Ok(Verdict::Host(HostReason::MeshAddress))
            }
        }
    }

    /// Forwards by the flow `l3` belongs to (in IPv6's family when `v6`), or returns
    /// `otherwise`. Always inlined, so `v6` is a constant where it is called.
    #[inline(always)]
    fn by_flow_or(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: &L3,
        v6: bool,
        otherwise: Result<Verdict, DropReason>,
    ) -> Result<Verdict, DropReason> {
        if !l3.has_ports() {
            return otherwise;
        }
        let key = l3.key().in_family(v6);
        match self.lookup_live(t, &key, self.hash_of(&key)) {
            Some((id, dir)) => self.forward(t, now, buf, l3, id, dir),
            None => otherwise,
        }
    }

    /// A frame from a local task (`V6`: a task's IPv6 between twins, translated, whose flows
    /// are kept apart from IPv4's of the same 5-tuple: [`FlowKey::in_family`]; a parameter of
    /// the type, so IPv4's copy pays nothing for it).
    fn on_task<const V6: bool>(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: L3,
    ) -> Result<Verdict, DropReason> {
        let s = self.task_source(t, now, buf, l3.src)?;
        let net = t.net(s.net);
        let d = t.addr(addr(l3.dst));
        if let Some(d) = d {
            if d.net != s.net {
                return Err(DropReason::CrossNetwork);
            }
        }
        let kind = d.map(|d| d.kind);
        if l3.proto == ICMP {
            // Judged by the worker that owns the flow it quotes; then as any ICMP.
            let owner = |p: &Self, q3: &L3| p.task_owner(q3, kind);
            if let Some(v) = self.icmp_from_task(t, now, buf, &l3, 0, owner) {
                return Ok(v);
            }
        }
        if self.cfg.workers > 1 {
            if let Some(v) = self.handoff(self.task_owner(&l3, kind)) {
                return Ok(v);
            }
        }
        match kind {
            // To another node's task or endpoint (a reply to a flow it masqueraded): stateless.
            Some(
                AddrKind::Task {
                    local: false, node, ..
                }
                | AddrKind::Endpoint { local: false, node },
            ) => {
                let n = t.node(node);
                let key = l3.key();
                let e = Egress::Vxlan {
                    vtep: ipkey(n.vtep),
                    port: n.vtep_port,
                    vni: net.vni,
                    sport: entropy_port(&key),
                };
                let mut split = 0;
                if buf.len() > self.max_frame {
                    match self.oversize(t, now, buf, l3.dst, e) {
                        Size::Fits => {}
                        Size::Refused(v) => return v,
                        Size::Split(mtu) => split = mtu,
                    }
                }
                dec_ttl(buf.data_mut(), ETH);
                self.send_sized(t, now, buf, l3.dst, e, split)
            }
            Some(AddrKind::Vip { service, balancer }) if l3.has_ports() => {
                // A task's IPv6 to the VIP's twin: its flow apart from an IPv4 connection
                // of the same 5-tuple.
                let key = l3.key().in_family(V6);
                let hash = self.hash_of(&key);
                if let Some((id, dir)) = self.lookup_live(t, &key, hash) {
                    return self.forward(t, now, buf, &l3, id, dir);
                }
                if let Some(v) = self
                    .may_open(&l3, now)
                    .inspect_err(|_| self.blame_service(t, service))?
                {
                    return Ok(v);
                }
                let pick = NewFlow {
                    hash,
                    client: l3.src,
                    now,
                };
                let Some(b) = self.sched.pick(t, balancer, pick, self.flows.active()) else {
                    self.blame_service(t, service);
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
                    let picked =
                        self.masq
                            .pick(&self.flows, (l3.proto, V6), gw, baddr, l3.dport, slot);
                    let Some(port) = picked else {
                        return Err(self.blame(slot, DropReason::NoNatPort));
                    };
                    (gw, port)
                } else {
                    (l3.src, l3.sport)
                };
                let fwd = Action::new(&key, src, sport, baddr, l3.dport, egress);
                let rkey = FlowKey::new(l3.proto, baddr, l3.dport, src, sport).in_family(V6);
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
                    .map_err(|e| self.blame(slot, insert_refused(e)))?;
                self.count_new(slot);
                self.forward(t, now, buf, &l3, id, Dir::Fwd)
            }
            // A reply of an ingress flow this node masqueraded and delivered locally.
            Some(AddrKind::Endpoint { local: true, .. }) if l3.has_ports() => self.by_flow_or(
                t,
                now,
                buf,
                &l3,
                V6,
                Ok(Verdict::Host(HostReason::MeshAddress)),
            ),
            // To a task on this node: a VIP flow's reply if a flow says so, else plain L3.
            Some(AddrKind::Task { local: true, .. }) => {
                if l3.has_ports() {
                    let key = l3.key().in_family(V6);
                    if let Some((id, dir)) = self.lookup_live(t, &key, self.hash_of(&key)) {
                        return self.forward(t, now, buf, &l3, id, dir);
                    }
                }
                dec_ttl(buf.data_mut(), ETH);
                self.send(t, now, buf, l3.dst, Egress::Tasks)
            }
            // A reply of a hairpin VIP flow (masqueraded to the gateway) by its flow; else the
            // gateway is the host's (DNS, ping).
            Some(AddrKind::Gateway) if l3.has_ports() => self.by_flow_or(
                t,
                now,
                buf,
                &l3,
                V6,
                Ok(Verdict::Host(HostReason::MeshAddress)),
            ),
            Some(
                AddrKind::Vip { .. } | AddrKind::Gateway | AddrKind::Endpoint { local: true, .. },
            ) => Ok(Verdict::Host(HostReason::MeshAddress)),
            // Outside the overlay: only a reply of a keep-client-IP flow goes there.
            None => self.by_flow_or(t, now, buf, &l3, V6, Err(DropReason::NoRoute)),
        }
    }
}

impl Pipeline {
    /// An ICMP message `l3` from a task (behind `encap` bytes of VXLAN headers, or none): when
    /// it is an error (destination unreachable, time exceeded, parameter problem) about one of
    /// the task's flows, the worker that owns that flow (by `owner`) judges it (`Some(handoff)`
    /// when that is another worker; passive health, [`Self::task_error`]) and sends it to the
    /// flow's client, its quote turned back into what the client sent
    /// ([`Self::error_by_flow`]). `None`: not such an error; it goes on as any ICMP. Out of
    /// line: only ICMP comes here.
    #[cold]
    #[inline(never)]
    fn icmp_from_task(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: &L3,
        encap: usize,
        owner: impl Fn(&Self, &L3) -> u16,
    ) -> Option<Verdict> {
        let mut l3 = *l3;
        let (q3, unreachable) = error_of(buf, l3.l4, l3.src, l3.dst)?;
        if self.cfg.workers > 1 {
            if let Some(v) = self.handoff(owner(self, &q3)) {
                return Some(v);
            }
        }
        let (a, client6) = self.task_error(t, &q3, unreachable, buf.v6)?;
        if encap > 0 {
            if !buf.trim_front(encap) {
                return Some(Verdict::Drop(DropReason::Truncated));
            }
            l3.l4 -= encap;
        }
        let v = error_by_flow(buf, &l3, &a).and_then(|()| match a.egress {
            Egress::Uplink6 { mac } => self.error_to_client6(t, buf, &l3, &a, client6, mac),
            e => self.send(t, now, buf, a.dst, e),
        });
        Some(v.unwrap_or_else(Verdict::Drop))
    }

    /// An ICMP error `l3` from the uplink to the node's address (from a router on the way to a
    /// client: fragmentation needed, unreachable, time exceeded) about a reply of a published
    /// port's flow: judged by the worker that owns the flow (`Some(handoff)` when that is
    /// another) and sent to the flow's task as the flow's forward direction goes, its quote
    /// turned into what the task sent (its own address and port, the masquerade or kept client
    /// address), so that the task's socket hears of it: path MTU discovery across a narrower
    /// link past the node, as IPVS (`ip_vs_in_icmp`) and Katran (packet too big) do. `None`:
    /// not about a flow of this node; it goes to the host, which knows its own sockets. Anyone
    /// on the uplink may send one, knowing a live flow's addresses and ports; the task's stack
    /// checks the quote as it checks any ICMP error (Linux: the sequence number in the window).
    #[cold]
    #[inline(never)]
    fn icmp_from_client(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: &L3,
    ) -> Option<Verdict> {
        // The quoted packet went from this node's address to a client: the key of the
        // client's direction is its reverse.
        let key = classify::error_quote(buf.data(), l3.l4)?.reversed();
        if key.dst() != l3.dst {
            return None;
        }
        if self.cfg.workers > 1 {
            if let Some(v) = self.handoff(self.published_owner(key.src(), key.sport())) {
                return Some(v);
            }
        }
        let Some((id, Dir::Fwd)) = self.lookup_live(t, &key, key.hash()) else {
            return None;
        };
        let a = *self.flows.get(id).action(Dir::Fwd);
        let v = error_by_flow(buf, l3, &a).and_then(|()| {
            // The error's sender is not the flow's client: the flow's checksum delta does not
            // hold for its outer header.
            Ipv4Packet::new_unchecked(&mut buf.data_mut()[ETH..]).fill_checksum();
            self.send(t, now, buf, a.dst, a.egress)
        });
        if v.is_ok() {
            self.stats.icmp_to_task += 1;
        }
        Some(v.unwrap_or_else(Verdict::Drop))
    }

    /// The task's error `l3` in `buf`, rewritten by flow (`a`, its reverse action) for an IPv6
    /// client of a published port (`client6`, behind `mac`): turned into ICMPv6 from the
    /// node's IPv6 address, its quote into the IPv6 datagram the client sent (the stand-in
    /// address the flow knows the client by back to the client's own).
    #[cold]
    #[inline(never)]
    fn error_to_client6(
        &self,
        t: &ServiceTable,
        buf: &mut PacketBuf,
        l3: &L3,
        a: &Action,
        client6: [u8; 16],
        mac: [u8; 6],
    ) -> Result<Verdict, DropReason> {
        let me = t.node_addr6.ok_or(DropReason::NoIpv6)?.octets();
        let total = usize::from(nat::be16(buf.data(), ETH + 2));
        let payload = (ETH + total)
            .checked_sub(l3.l4)
            .ok_or(DropReason::Truncated)?;
        let standin = a.dst;
        let v6 = |x: u32| if x == standin { client6 } else { me };
        icmperr::error4_to_ipv6(
            buf,
            l3,
            payload,
            (me, client6),
            (self.cfg.uplink_mac, mac),
            v6,
        )?;
        Ok(Verdict::Tx(PortId::Uplink))
    }

    /// A task's ICMP error about its direction `q3` of a flow (`v6`: of a flow between twins,
    /// the error a task's ICMPv6 translated): the flow's reverse action (the
    /// way the error goes to the client), with the client's IPv6 address (all zero for an
    /// IPv4 client). When it says nothing listens there (`unreachable`) about a new flow (a TCP
    /// connection the task has not answered) or UDP, it is passive health's evidence against
    /// the task too, and a UDP flow ends so the client's next datagram is balanced again.
    /// A return-route flow's (an outside client's address kept, the task here, the ingress
    /// another node) reverse action is the identity into VXLAN to the ingress node: the error
    /// goes there as the task sent it, and that node, which has the flow's translation,
    /// judges it and sends it to the client.
    #[cold]
    #[inline(never)]
    fn task_error(
        &mut self,
        t: &ServiceTable,
        q3: &L3,
        unreachable: bool,
        v6: bool,
    ) -> Option<(Action, [u8; 16])> {
        let key = q3.key().in_family(v6);
        let Some((id, Dir::Rev)) = self.lookup_live(t, &key, key.hash()) else {
            return None;
        };
        let fl = self.flows.get(id);
        if fl.kind == FlowKind::ReturnRoute {
            return Some((*fl.action(Dir::Rev), [0; 16]));
        }
        let udp = !fl.is_tcp();
        let judged = unreachable && (udp || fl.tcp == flow::TcpState::SynSent);
        let (a, client6, uid) = (*fl.action(Dir::Rev), fl.client6(), fl.task_uid);
        if judged {
            self.stats.task_unreachable += 1;
            self.passive.saw(uid, passive::Seen::Unreachable);
            if udp && self.flows.remove(id).is_some() {
                self.stats.flows_ended += 1;
            }
        }
        Some((a, client6))
    }

    /// The overlay address of the local task that a frame from the tasks side with source
    /// address `src` comes from. Refused unless the frame came in on that task's VLAN (which
    /// the bridge gives every frame by the port it came in on: a task cannot choose it), from
    /// the task's MAC (the one it was first seen with): a task speaks only as itself. Inlined
    /// into `on_task` (a call, returning the entry through memory, cost the task-to-VIP path 2%
    /// of its instructions).
    #[inline(always)]
    pub(super) fn task_source(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &PacketBuf,
        src: u32,
    ) -> Result<crate::balance::AddrEntry, DropReason> {
        let Some(s) = t.addr(addr(src)) else {
            return Err(DropReason::UnknownSource);
        };
        let AddrKind::Task {
            local: true, vlan, ..
        } = s.kind
        else {
            return Err(DropReason::UnknownSource);
        };
        if vlan != buf.vlan {
            return Err(DropReason::WrongVlan);
        }
        let smac = EthernetFrame::new_unchecked(buf.data()).src_addr().0;
        let known = self
            .macs
            .get(&self.neigh, src, src, |mac| Hw { mac, vlan })
            .map(|h| h.mac);
        // A frame claiming a known task's address from another MAC: not from that task.
        if known != Some(smac) && !self.note_mac(src, smac, PortId::Tasks, now, false) {
            return Err(DropReason::SpoofedSource);
        }
        Ok(s)
    }
}

/// When the ICMP message at `l4` of `buf`, from `src` to `dst` (a task's), is an error quoting
/// a TCP or UDP packet sent from `dst` to `src`: the headers of the task's own direction of
/// that packet's flow (what a reply would carry), to find and steer by; and whether the error
/// says nothing listens there (passive health's evidence, [`classify::says_unreachable`]).
fn error_of(buf: &PacketBuf, l4: usize, src: u32, dst: u32) -> Option<(L3, bool)> {
    let f = buf.data();
    let q = classify::error_quote(f, l4)?.reversed();
    // The quoted packet went from the ICMP's destination to its sender: a task speaks only of
    // its own flows.
    if (q.src(), q.dst()) != (src, dst) {
        return None;
    }
    let (&kind, &code) = (f.get(l4)?, f.get(l4 + 1)?);
    let l3 = L3 {
        proto: q.proto(),
        src,
        dst,
        sport: q.sport(),
        dport: q.dport(),
        flags: 0,
        ack: 0,
        l4,
        frag: frag::Frag::Whole,
    };
    Some((l3, classify::says_unreachable(kind, code)))
}

/// Rewrites an ICMP error `l3` (in `buf`, its IPv4 header after the Ethernet header) about a
/// packet of one direction of a flow, as the flow rewrites the other direction (`a`, that
/// direction's action): a task's error about a client's packet it received goes by the reverse
/// action, from the VIP's (or the published) address to the client; a router's error about a
/// task's reply it could not pass on goes by the forward action, to the task. The quote, the
/// packet as the error's sender saw it, is turned back into what was sent (the client's
/// address and port and the VIP's or published ones; the task's and the address it knows the
/// client by), so that the socket that sent it, which knows only those, hears of it (as
/// conntrack's NAT and IPVS do for ICMP errors). The quote's header checksum and transport
/// checksum (when quoted) move by the flow's own deltas (the same words change, in other
/// places); the ICMP checksum is summed anew. So does the outer header's, which holds when its
/// addresses were the flow's (a task's error; a router's is summed anew by its caller).
#[cold]
#[inline(never)]
fn error_by_flow(buf: &mut PacketBuf, l3: &L3, a: &Action) -> Result<(), DropReason> {
    let f = buf.data_mut();
    let end = ETH + usize::from(nat::be16(f, ETH + 2));
    let q = l3.l4 + 8;
    let qihl = usize::from(f.get(q).ok_or(DropReason::Truncated)? & 0x0f) * 4;
    let ql4 = q + qihl;
    // `error_quote` checked the quoted header and its ports.
    if end > f.len() || ql4 + 4 > end {
        return Err(DropReason::Truncated);
    }
    let proto = f[q + 9];
    nat::rewrite_ip(f, ETH, a);
    nat::put32(f, q + 12, a.dst);
    nat::put32(f, q + 16, a.src);
    put16(f, q + 10, a.ip_delta.apply(nat::be16(f, q + 10)));
    put16(f, ql4, a.dport);
    put16(f, ql4 + 2, a.sport);
    match proto {
        UDP if ql4 + 8 <= end && nat::be16(f, ql4 + 6) != 0 => {
            let c = checksum::apply_udp(a.l4_delta, nat::be16(f, ql4 + 6));
            put16(f, ql4 + 6, c);
        }
        TCP if ql4 + 18 <= end => {
            let c = a.l4_delta.apply(nat::be16(f, ql4 + 16));
            put16(f, ql4 + 16, c);
        }
        _ => {}
    }
    smoltcp::wire::Icmpv4Packet::new_unchecked(&mut f[l3.l4..end]).fill_checksum();
    Ok(())
}

/// Why the flow table refused a new flow, as a drop reason.
fn insert_refused(e: flow::InsertError) -> DropReason {
    match e {
        // A translation that collides with a flow the worker has.
        flow::InsertError::Exists => DropReason::NoNatPort,
        flow::InsertError::Full => DropReason::FlowTableFull,
    }
}

fn timeouts(svc: &crate::balance::table::SvcEntry) -> [u32; 3] {
    [
        svc.timeouts.tcp_established,
        svc.timeouts.tcp_transitory,
        svc.timeouts.udp,
    ]
}
