//! Flows: keys, the per-worker flow table, TCP tracking and idle timeouts.
//!
//! Each flow is owned by one worker, which alone holds its state (no locks). A flow has two
//! keys, one per direction, and an [`Action`] for each: how to rewrite and where to send a
//! packet that matches that key.
//!
//! The table is an open-addressing index (linear probing, backward-shift deletion) of 8-byte
//! slots, a hash tag and a place, into an arena of flows that hold the keys. Both are sized once
//! for `capacity` flows. When the arena is full, a new flow evicts the least recently seen of a
//! small sample of flows (an approximation of "oldest idle" that costs no per-packet
//! bookkeeping) and counts it.

use crate::fastmap::mix64;
use crate::wire::checksum::Delta;

pub mod keep;
pub mod tcp;
pub use tcp::TcpState;

/// A flow key: one direction of a TCP or UDP conversation, held as the two 64-bit words it is
/// hashed and compared as: `src << 32 | dst` and `sport << 32 | dport << 16 | proto`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(C)]
pub struct FlowKey {
    a: u64,
    b: u64,
}

impl FlowKey {
    #[inline]
    pub const fn new(proto: u8, src: u32, sport: u16, dst: u32, dport: u16) -> Self {
        FlowKey {
            a: ((src as u64) << 32) | dst as u64,
            b: ((sport as u64) << 32) | ((dport as u64) << 16) | proto as u64,
        }
    }

    #[inline]
    pub const fn src(&self) -> u32 {
        (self.a >> 32) as u32
    }

    #[inline]
    // Casts: unpacking a field from the key's packed word.
    #[allow(clippy::cast_possible_truncation)]
    pub const fn dst(&self) -> u32 {
        self.a as u32
    }

    #[inline]
    // Casts: unpacking a field from the key's packed word.
    #[allow(clippy::cast_possible_truncation)]
    pub const fn sport(&self) -> u16 {
        (self.b >> 32) as u16
    }

    #[inline]
    // Casts: unpacking a field from the key's packed word.
    #[allow(clippy::cast_possible_truncation)]
    pub const fn dport(&self) -> u16 {
        (self.b >> 16) as u16
    }

    #[inline]
    // Casts: unpacking a field from the key's packed word.
    #[allow(clippy::cast_possible_truncation)]
    pub const fn proto(&self) -> u8 {
        self.b as u8
    }

    /// The key of the other direction, untranslated (in the same family).
    #[inline]
    pub fn reversed(&self) -> Self {
        FlowKey::new(
            self.proto(),
            self.dst(),
            self.dport(),
            self.src(),
            self.sport(),
        )
        .in_family(self.is_v6())
    }

    /// This key in IPv6's family when `v6`: a connection between twins of a dual-stack
    /// network (a task's IPv6, translated to IPv4 in the pipeline) is kept apart from an IPv4
    /// connection of the same addresses and ports (a bit of the second word that the 5-tuple
    /// leaves free).
    #[inline]
    #[must_use]
    pub const fn in_family(self, v6: bool) -> Self {
        FlowKey {
            a: self.a,
            b: self.b | ((v6 as u64) << 8),
        }
    }

    /// Whether this key is of a connection between twins (IPv6, [`Self::in_family`]).
    #[inline]
    pub const fn is_v6(&self) -> bool {
        self.b & (1 << 8) != 0
    }

    #[inline]
    pub fn hash(&self) -> u64 {
        mix64(self.a ^ mix64(self.b))
    }
}

/// Which worker owns the flow whose client end is `ip:port`.
#[inline]
// Casts: a remainder of the worker count, itself a u16.
#[allow(clippy::cast_possible_truncation)]
pub fn owner_of(ip: u32, port: u16, workers: u16) -> u16 {
    if workers <= 1 {
        return 0;
    }
    (mix64((u64::from(ip) << 16) | u64::from(port)) % u64::from(workers)) as u16
}

/// Where a translated packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::CheckedBitPattern)]
#[repr(C, u8)]
pub enum Egress {
    /// Out of the uplink to this MAC (a client or its router).
    Uplink { mac: [u8; 6] },
    /// Out of the uplink to this MAC, turned into IPv6 first: the reverse direction of an
    /// IPv6 client's flow to a published port (from the node's IPv6 address to
    /// [`Flow::client6`]).
    Uplink6 { mac: [u8; 6] },
    /// Out of the tasks port to the local task at the packet's new destination address.
    Tasks,
    /// VXLAN-encapsulated to a peer's VTEP.
    Vxlan {
        vtep: u32,
        vni: u32,
        port: u16,
        sport: u16,
    },
}

/// How to rewrite a packet matching one key of a flow, and where to send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::CheckedBitPattern)]
#[repr(C)]
pub struct Action {
    pub src: u32,
    pub dst: u32,
    /// Ones-complement difference for the IPv4 header checksum (addresses).
    pub ip_delta: Delta,
    /// Ones-complement difference for the TCP/UDP checksum (pseudo-header addresses and ports).
    pub l4_delta: Delta,
    pub sport: u16,
    pub dport: u16,
    pub egress: Egress,
}

impl Action {
    /// The action that rewrites `from` into the given tuple.
    // Casts: splitting packed words and sizing by a capacity checked to be at most 2^28 (MAX_FLOWS).
    #[allow(clippy::cast_possible_truncation)]
    pub fn new(from: &FlowKey, src: u32, sport: u16, dst: u32, dport: u16, egress: Egress) -> Self {
        let hi = |x: u32| (x >> 16) as u16;
        let lo = |x: u32| x as u16;
        let ip_delta = Delta::new().of(&[
            (hi(from.src()), hi(src)),
            (lo(from.src()), lo(src)),
            (hi(from.dst()), hi(dst)),
            (lo(from.dst()), lo(dst)),
        ]);
        let l4_delta = ip_delta.of(&[(from.sport(), sport), (from.dport(), dport)]);
        Action {
            src,
            sport,
            dst,
            dport,
            ip_delta,
            l4_delta,
            egress,
        }
    }

    /// The identity action (no rewrite) with `egress`.
    pub fn keep(from: &FlowKey, egress: Egress) -> Self {
        Action {
            src: from.src(),
            sport: from.sport(),
            dst: from.dst(),
            dport: from.dport(),
            ip_delta: Delta::new(),
            l4_delta: Delta::new(),
            egress,
        }
    }

    /// Whether `other` rewrites the same way (its deltas equal, or both a zero: the two
    /// ones-complement zeros are the same change).
    fn same(&self, other: &Action) -> bool {
        let delta = |a: Delta, b: Delta| a == b || (a.is_zero() && b.is_zero());
        (self.src, self.sport, self.dst, self.dport, self.egress)
            == (other.src, other.sport, other.dst, other.dport, other.egress)
            && delta(self.ip_delta, other.ip_delta)
            && delta(self.l4_delta, other.l4_delta)
    }

    /// The key a packet has after this action.
    pub fn result_key(&self, proto: u8) -> FlowKey {
        FlowKey::new(proto, self.src, self.sport, self.dst, self.dport)
    }
}

/// What made the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::CheckedBitPattern)]
#[repr(u8)]
pub enum FlowKind {
    /// A published port: client → node:published, balanced to a task.
    Ingress,
    /// A local task to a service VIP.
    Vip,
    /// On a task's node, keep-client-IP: where replies to an outside client go back to.
    ReturnRoute,
}

/// Direction of a packet within its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the client towards the service.
    Fwd = 0,
    /// From the task back to the client.
    Rev = 1,
}

/// One flow. Laid out for the fast path: a packet needs only its direction's cache line. The
/// first holds the forward key and action and the state forward packets update (when last
/// seen, the client's acknowledgement, the TCP state); the second the reverse key and action and
/// when the reverse direction was last seen. A reverse segment changes the TCP state only if it
/// carries SYN, FIN or RST ([`TcpState::next`]); only those reach into the first line. The
/// rest is cold. The flow table's index holds only a hash tag per key, and a lookup checks the
/// key here, in the line the packet needs anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::CheckedBitPattern)]
#[repr(C, align(64))]
pub struct Flow {
    /// The client-to-task key.
    fwd_key: FlowKey,
    /// For packets matching the forward key.
    pub fwd: Action,
    /// Milliseconds (of the pipeline's clock, wrapping) when a forward packet was last seen.
    pub last_seen: u32,
    /// The client's last acknowledgement number: the sequence number a reset towards it needs.
    pub client_ack: u32,
    pub tcp: TcpState,
    live: bool,
    /// Where the task's packet, byte and connection counters are in the worker's
    /// [`crate::stats::TaskCounters`] (`u16::MAX`: not counted); set once, with its copy for
    /// reverse packets (read both through [`Flow::stats_slot`]).
    stats_slot: u16,
    /// The task-to-client key; starts the second cache line.
    rev_key: FlowKey,
    /// For packets matching the reverse key.
    pub rev: Action,
    /// When a reverse packet was last seen.
    pub rev_seen: u32,
    /// `stats_slot`, for reverse packets.
    rev_stats_slot: u16,
    pub kind: FlowKind,
    /// An IPv6 client's address (its flow's keys carry a stand-in IPv4 address, see
    /// `pipeline::nat64`), all zero for an IPv4 client: its first 4 bytes here, in the second
    /// line's room, the other 12 in the third's ([`Flow::client6`]). Read only when a flow's
    /// packet is converted, never by IPv4 packets.
    client6_head: [u8; 4],
    pub task_uid: u64,
    /// Idle timeouts in seconds: established TCP, other TCP states, UDP.
    pub timeouts: [u32; 3],
    /// The rest of the IPv6 client's address.
    client6_tail: [u8; 12],
    /// Packets and bytes each way, for `meshctl conn ls`: forward packets, forward bytes,
    /// reverse packets, reverse bytes; counted only with `--flow-accounting`. In the third
    /// line, which only the owning worker writes (prefetched with the direction's line when
    /// counted).
    pub counts: [u64; 4],
}

// What the layout above promises (checked when it compiles): one line per direction, the
// reverse one starting the second.
const _: () = assert!(std::mem::align_of::<Flow>() == 64);
const _: () = assert!(std::mem::offset_of!(Flow, rev_key) == 64);
const _: () = assert!(std::mem::offset_of!(Flow, stats_slot) + 2 <= 64);
const _: () = assert!(std::mem::offset_of!(Flow, kind) < 128);
const _: () = assert!(std::mem::offset_of!(Flow, client6_head) + 4 <= 128);
const _: () = assert!(std::mem::offset_of!(Flow, counts) >= 128);
const _: () = assert!(std::mem::size_of::<Flow>() == 192);

impl Flow {
    pub fn new(
        kind: FlowKind,
        keys: [FlowKey; 2],
        actions: [Action; 2],
        task_uid: u64,
        stats_slot: u16,
        timeouts: [u32; 3],
        now: u32,
    ) -> Self {
        let [fwd_key, rev_key] = keys;
        let [fwd, rev] = actions;
        Flow {
            fwd_key,
            rev_key,
            fwd,
            rev,
            kind,
            task_uid,
            stats_slot,
            rev_stats_slot: stats_slot,
            tcp: TcpState::None,
            last_seen: now,
            rev_seen: now,
            timeouts,
            client_ack: 0,
            live: true,
            counts: [0; 4],
            client6_head: [0; 4],
            client6_tail: [0; 12],
        }
    }

    /// The IPv6 client's address; all zero for an IPv4 client.
    pub fn client6(&self) -> [u8; 16] {
        let mut a = [0; 16];
        a[..4].copy_from_slice(&self.client6_head);
        a[4..].copy_from_slice(&self.client6_tail);
        a
    }

    /// Records the IPv6 client's address `a`.
    pub fn set_client6(&mut self, a: [u8; 16]) {
        self.client6_head.copy_from_slice(&a[..4]);
        self.client6_tail.copy_from_slice(&a[4..]);
    }

    /// Whether the client is an IPv6 one ([`Flow::client6`] is set).
    pub fn is_v6(&self) -> bool {
        self.client6() != [0; 16]
    }

    /// Counts a packet of `bytes` in direction `dir`.
    #[inline]
    pub fn count(&mut self, dir: Dir, bytes: u64) {
        let i = dir as usize * 2;
        if let Some([p, b]) = self.counts.get_mut(i..i + 2) {
            *p += 1;
            *b += bytes;
        }
    }

    /// Whether the record holds a flow (a free place does not).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The forward (client to task) and reverse (task to client) keys.
    #[inline]
    pub fn keys(&self) -> [FlowKey; 2] {
        [self.fwd_key, self.rev_key]
    }

    /// The key of direction `dir`.
    #[inline]
    pub fn key(&self, dir: Dir) -> &FlowKey {
        match dir {
            Dir::Fwd => &self.fwd_key,
            Dir::Rev => &self.rev_key,
        }
    }

    /// Where direction `dir`'s counters are (the same slot, kept in each direction's line).
    #[inline]
    pub fn stats_slot(&self, dir: Dir) -> u16 {
        match dir {
            Dir::Fwd => self.stats_slot,
            Dir::Rev => self.rev_stats_slot,
        }
    }

    /// Milliseconds since either direction last saw a packet.
    pub fn idle_ms(&self, now: u32) -> u32 {
        now.wrapping_sub(self.last_seen)
            .min(now.wrapping_sub(self.rev_seen))
    }

    /// The action for packets in direction `dir`.
    #[inline]
    pub fn action(&self, dir: Dir) -> &Action {
        match dir {
            Dir::Fwd => &self.fwd,
            Dir::Rev => &self.rev,
        }
    }

    pub fn is_tcp(&self) -> bool {
        self.fwd_key.proto() == 6
    }

    /// The idle timeout in force, in milliseconds.
    pub fn timeout_ms(&self) -> u64 {
        let secs = if !self.is_tcp() {
            self.timeouts[2]
        } else {
            match self.tcp {
                TcpState::Established => self.timeouts[0],
                TcpState::Closed => self.timeouts[1].min(10),
                s if s.half_open() => self.timeouts[1].min(tcp::HALF_OPEN_S),
                _ => self.timeouts[1],
            }
        };
        u64::from(secs) * 1000
    }

    /// Whether eviction may take this flow for a new one while it is alive: anything but an
    /// established or closing TCP connection (half-open flows, UDP, closed connections).
    pub fn evictable(&self) -> bool {
        !self.is_tcp() || self.tcp.half_open() || self.tcp == TcpState::Closed
    }

    /// Whether a record is whole: its keys differ and are of one protocol, its two counters
    /// slots agree, and each direction's checksum deltas are what its key and rewrite give. A
    /// record the process was writing when it died fails this (see [`keep`]).
    pub(crate) fn consistent(&self) -> bool {
        let again = |k: &FlowKey, a: &Action| {
            Action::new(k, a.src, a.sport, a.dst, a.dport, a.egress).same(a)
        };
        self.fwd_key != self.rev_key
            && self.fwd_key.proto() == self.rev_key.proto()
            && self.stats_slot == self.rev_stats_slot
            && again(&self.fwd_key, &self.fwd)
            && again(&self.rev_key, &self.rev)
    }

    /// Starts the flow's clock again at `now`, and points its counters at `slot` (a flow adopted
    /// from a process before this one: its times and slots were that process's).
    pub(crate) fn readopt(&mut self, now: u32, slot: u16) {
        self.last_seen = now;
        self.rev_seen = now;
        self.stats_slot = slot;
        self.rev_stats_slot = slot;
    }

    /// Whether the flow has been idle past its timeout at `now`.
    pub fn expired(&self, now: u32) -> bool {
        u64::from(self.idle_ms(now)) > self.timeout_ms()
    }
}

/// Most flows a table holds (a slot's place is 32 bits, and its tag must cover the index).
pub const MAX_FLOWS: usize = 1 << 28;

/// One slot of the index, 8 bytes, eight to a cache line: the low 32 bits of its key's hash
/// (which give the slot's home, and tell most other keys apart without reading the flow) and
/// where the flow is. A lookup confirms the key in the flow's line for that direction, the line
/// the packet needs next anyway. The index of 64 K flows is 2 MiB (24-byte key slots took 6,
/// and a quarter of them straddled two lines): what decides the speed once the flows outgrow
/// the cache is how many bytes a packet needs (docs/perf.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(8))]
struct Slot {
    tag: u32,
    /// `id << 1 | direction`, or `EMPTY`.
    val: u32,
}

const EMPTY: u32 = u32::MAX;

impl Slot {
    const EMPTY: Slot = Slot { tag: 0, val: EMPTY };

    #[inline]
    fn is_empty(&self) -> bool {
        self.val == EMPTY
    }

    #[inline]
    fn id(&self) -> u32 {
        self.val >> 1
    }

    #[inline]
    fn dir(&self) -> Dir {
        if self.val & 1 == 0 {
            Dir::Fwd
        } else {
            Dir::Rev
        }
    }
}

/// Why a flow was not inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// One of its keys is already in the table.
    Exists,
    /// The table is full of flows eviction must not take (established connections): the new
    /// one is refused.
    Full,
}

/// Where flow `f` is counted in [`FlowTable::active`]: its counters slot when a scheduler picked
/// its task (ingress and VIP flows), else past the end (a return route was balanced by another
/// node; a flow without a slot is not counted).
#[inline]
fn active_slot(f: &Flow) -> usize {
    match f.kind {
        FlowKind::ReturnRoute => usize::MAX,
        FlowKind::Ingress | FlowKind::Vip => usize::from(f.stats_slot),
    }
}

/// A flow removed by [`FlowTable::sweep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    Expired,
    /// Expired before its task answered the SYN (the task's uid): passive health's evidence.
    Unanswered(u64),
    /// Its task is gone or failed.
    Ended(Flow),
}

/// A worker's flow table.
#[derive(Debug)]
pub struct FlowTable {
    slots: Box<[Slot]>,
    mask: usize,
    flows: keep::Arena,
    free: Vec<u32>,
    capacity: usize,
    len: usize,
    evict_cursor: usize,
    sweep_cursor: usize,
    pub evicted: u64,
    /// New flows refused: the table was full of flows eviction must not take.
    pub refused: u64,
    /// Reverse keys of flows inserted with [`FlowTable::insert_deferred`] whose slot is still to
    /// be written: (flow id, key, hash).
    pending: arrayvec::ArrayVec<(u32, FlowKey, u64), PENDING>,
    /// Live balanced flows (ingress and VIP: those a scheduler picked a task for) per task
    /// counters slot ([`Flow::stats_slot`]), for the least-connections schedulers. Kept where
    /// every flow is made ([`FlowTable::claim`]) and ends ([`FlowTable::remove`]: expiry, end,
    /// eviction), so no way out is missed. Slots from [`ACTIVE_SLOTS`] up are not counted.
    active: Box<[u32]>,
}

/// Task counters slots whose live flows a [`FlowTable`] counts (the pipeline's
/// `TaskCounters` hands out slots below this; a const assertion there says so).
pub const ACTIVE_SLOTS: usize = 1 << 14;

/// Most reverse slots [`FlowTable::insert_deferred`] holds back (a burst's worth).
const PENDING: usize = 32;

/// How many flows eviction samples.
const EVICT_SAMPLE: usize = 16;
/// How many places eviction looks at, at most, for an evictable flow.
const EVICT_PROBES: usize = 256;

impl FlowTable {
    /// Memory a flow of capacity takes when the capacity is a power of two: its record, four
    /// index slots and a free-list entry (the index rounds up to a power of two).
    pub const BYTES_PER_FLOW: usize =
        std::mem::size_of::<Flow>() + 4 * std::mem::size_of::<Slot>() + 4;

    /// A table for up to `capacity` flows (at least 16, at most [`MAX_FLOWS`]), on the heap.
    /// Allocates everything now.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(16, MAX_FLOWS);
        let dummy_action = Action::new(&FlowKey::default(), 0, 0, 0, 0, Egress::Tasks);
        let dummy = Flow {
            fwd_key: FlowKey::default(),
            rev_key: FlowKey::default(),
            fwd: dummy_action,
            rev: dummy_action,
            kind: FlowKind::Ingress,
            task_uid: 0,
            stats_slot: u16::MAX,
            rev_stats_slot: u16::MAX,
            tcp: TcpState::None,
            last_seen: 0,
            rev_seen: 0,
            timeouts: [0; 3],
            client_ack: 0,
            live: false,
            counts: [0; 4],
            client6_head: [0; 4],
            client6_tail: [0; 12],
        };
        Self::adopt(keep::Arena::heap(capacity, dummy)).0
    }

    /// A table over `flows` (a region of a [`keep::FlowFile`], checked there: every record
    /// valid, the live ones whole; or the heap), its live records its flows: the index, the free
    /// list and the counters are rebuilt from them. A record whose key another one already
    /// holds is dropped. Returns the table and how many it dropped. Its capacity is the arena's length
    /// (16 to [`MAX_FLOWS`]: [`FlowTable::new`] and [`keep::FlowFile::open`] clamp to that).
    // Casts: flow ids are below the capacity, at most 2^28 (MAX_FLOWS).
    #[allow(clippy::cast_possible_truncation)]
    pub fn adopt(flows: keep::Arena) -> (Self, usize) {
        let capacity = flows.len();
        debug_assert!((16..=MAX_FLOWS).contains(&capacity));
        // Two keys per flow, at most half full.
        let nslots = (capacity * 4).next_power_of_two();
        let mut t = FlowTable {
            slots: crate::hugepage::vec_of(nslots, Slot::EMPTY).into_boxed_slice(),
            mask: nslots - 1,
            flows,
            free: Vec::with_capacity(capacity),
            capacity,
            len: 0,
            evict_cursor: 0,
            sweep_cursor: 0,
            evicted: 0,
            refused: 0,
            pending: arrayvec::ArrayVec::new(),
            active: vec![0u32; ACTIVE_SLOTS].into_boxed_slice(),
        };
        let mut dropped = 0;
        for id in 0..capacity as u32 {
            if !t.flows[id as usize].live {
                continue;
            }
            let [k0, k1] = t.flows[id as usize].keys();
            if t.contains(&k0) || t.contains(&k1) {
                t.flows[id as usize].live = false;
                dropped += 1;
                continue;
            }
            t.put_slot(k0.hash(), id << 1);
            t.put_slot(k1.hash(), (id << 1) | 1);
            t.len += 1;
        }
        t.free = (0..capacity as u32)
            .rev()
            .filter(|&id| !t.flows[id as usize].live)
            .collect();
        t.recount_active();
        (t, dropped)
    }

    /// Counts the live balanced flows per counters slot again, from the flows (after their
    /// slots were changed: flows adopted from a meshd before this one).
    pub fn recount_active(&mut self) {
        self.active.fill(0);
        for f in self.flows.iter().filter(|f| f.live) {
            if let Some(n) = self.active.get_mut(active_slot(f)) {
                *n += 1;
            }
        }
    }

    /// Live balanced flows (ingress and VIP) per task counters slot: the active connections
    /// each task has from this table's worker. Indexed by [`Flow::stats_slot`]; a slot past
    /// the end is not counted.
    #[inline]
    pub fn active(&self) -> &[u32] {
        &self.active
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Hints the CPU to fetch the slot `hash` starts at.
    #[inline]
    // Casts: a hash folded to a slot index or tag: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    pub fn prefetch(&self, hash: u64) {
        crate::prefetch::read(&self.slots[(hash as usize) & self.mask]);
    }

    /// Hints the CPU to fetch the flow line a packet with `key` needs, when its home slot
    /// (prefetched earlier) has `key`'s tag: the first line for the forward direction, the
    /// second for the reverse one.
    #[inline]
    // Casts: a hash folded to a slot index or tag: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    pub fn prefetch_flow(&self, hash: u64, counts: bool) {
        let s = &self.slots[(hash as usize) & self.mask];
        if s.tag == hash as u32 && !s.is_empty() {
            let f = &self.flows[s.id() as usize];
            match s.dir() {
                Dir::Fwd => crate::prefetch::read(f),
                Dir::Rev => crate::prefetch::read(&f.rev_key),
            }
            if counts {
                crate::prefetch::read(&f.counts);
            }
        }
    }

    /// The first slot of `hash`'s probe run (from its home to the next empty slot) that `hit`
    /// accepts.
    #[inline(always)]
    // Casts: a hash folded to a slot index or tag: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    fn probe(&self, hash: u64, hit: impl Fn(&Slot) -> bool) -> Option<usize> {
        let mut i = (hash as usize) & self.mask;
        loop {
            let s = &self.slots[i];
            if s.is_empty() {
                return None;
            }
            if hit(s) {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The slot holding `key`, if any: its tag, then the key in the flow's line.
    #[inline]
    // Casts: a hash folded to a slot index or tag: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    fn find_slot(&self, key: &FlowKey, hash: u64) -> Option<usize> {
        let tag = hash as u32;
        self.probe(hash, |s| {
            s.tag == tag && self.flows[s.id() as usize].key(s.dir()) == key
        })
    }

    /// The flow `key` belongs to, and the direction it matches.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, hash: u64) -> Option<(u32, Dir)> {
        let s = self.slots[self.find_slot(key, hash)?];
        Some((s.id(), s.dir()))
    }

    #[inline]
    pub fn get_mut(&mut self, id: u32) -> &mut Flow {
        &mut self.flows[id as usize]
    }

    #[inline]
    pub fn get(&self, id: u32) -> &Flow {
        &self.flows[id as usize]
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.find_slot(key, key.hash()).is_some()
    }

    /// The slot from `hash`'s home that points at `val` (a flow's own slot for one direction).
    // Casts: a hash folded to a slot index or tag: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    fn slot_of(&self, hash: u64, val: u32) -> Option<usize> {
        self.probe(hash, |s| s.val == val && s.tag == hash as u32)
    }

    /// Points the first free slot from `hash`'s home at `val` (the flow must hold the key
    /// already: lookups confirm keys there).
    // Casts: a hash folded to a slot index or tag: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    fn put_slot(&mut self, hash: u64, val: u32) {
        let mut i = (hash as usize) & self.mask;
        while !self.slots[i].is_empty() {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = Slot {
            tag: hash as u32,
            val,
        };
    }

    /// Removes the slot at `i` by backward-shift deletion (keeps probe chains intact).
    fn remove_slot(&mut self, mut i: usize) {
        let mask = self.mask;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            if self.slots[j].is_empty() {
                break;
            }
            // The tag is the hash's low 32 bits, which hold the home (the mask is narrower).
            let home = self.slots[j].tag as usize & mask;
            // Move j into the hole at i if its home is not cyclically within (i, j].
            let in_range = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !in_range {
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
        self.slots[i] = Slot::EMPTY;
    }

    /// Inserts `flow`. When the table is full, evicts the stalest of a sample of flows first
    /// (counted in `evicted`). Returns the new flow's id.
    pub fn insert(&mut self, flow: Flow, now: u32) -> Result<u32, InsertError> {
        let [k0, k1] = flow.keys();
        if self.contains(&k0) || self.contains(&k1) || k0 == k1 {
            return Err(InsertError::Exists);
        }
        self.insert_absent(flow, [k0.hash(), k1.hash()], now)
    }

    /// Inserts `flow` whose keys the caller has just looked up and found absent (and whose hashes
    /// it has): the new-flow path saves two lookups. A key that is in fact present is then held
    /// twice, and lookups find the entry nearer its home, the older one, until that expires;
    /// `insert` checks and is the safe default.
    #[inline]
    pub fn insert_absent(
        &mut self,
        flow: Flow,
        hashes: [u64; 2],
        now: u32,
    ) -> Result<u32, InsertError> {
        let id = self.claim(flow, now)?;
        self.put_slot(hashes[0], id << 1);
        self.put_slot(hashes[1], (id << 1) | 1);
        Ok(id)
    }

    /// Stores `flow` in a free place of the arena (evicting the stalest of a sample when there
    /// is none) and counts it; its slots are the caller's to write. Returns its id.
    #[inline]
    fn claim(&mut self, flow: Flow, now: u32) -> Result<u32, InsertError> {
        if flow.fwd_key == flow.rev_key {
            return Err(InsertError::Exists);
        }
        if self.free.is_empty() {
            self.evict_one(now);
        }
        let Some(id) = self.free.pop() else {
            self.refused += 1;
            return Err(InsertError::Full);
        };
        self.flows[id as usize] = flow;
        self.len += 1;
        if let Some(n) = self.active.get_mut(active_slot(&flow)) {
            *n += 1;
        }
        Ok(id)
    }

    /// As [`FlowTable::insert_absent`], but the reverse key's slot (a random cache line that
    /// nothing has fetched yet) is only prefetched now and written by the next
    /// [`FlowTable::flush_pending`], when it has arrived: the new-flow path's costliest miss
    /// overlaps the rest of the burst. Until then a lookup of the reverse key misses; the
    /// caller flushes before any packet of that direction can exist (a reply comes after the
    /// first packet has been sent, so after the burst).
    #[inline]
    pub fn insert_deferred(
        &mut self,
        flow: Flow,
        hashes: [u64; 2],
        now: u32,
    ) -> Result<u32, InsertError> {
        if self.pending.is_full() {
            self.flush_pending();
        }
        let id = self.claim(flow, now)?;
        self.put_slot(hashes[0], id << 1);
        self.prefetch(hashes[1]);
        self.pending.push((id, flow.rev_key, hashes[1]));
        Ok(id)
    }

    /// Writes the reverse slots [`FlowTable::insert_deferred`] held back, of the flows still
    /// there (one evicted or ended meanwhile has none to write).
    #[inline]
    pub fn flush_pending(&mut self) {
        while let Some((id, key, hash)) = self.pending.pop() {
            let f = &self.flows[id as usize];
            if f.live && f.rev_key == key && self.find_slot(&key, hash).is_none() {
                self.put_slot(hash, (id << 1) | 1);
            }
        }
    }

    /// Removes flow `id`; returns it.
    pub fn remove(&mut self, id: u32) -> Option<Flow> {
        let f = *self.flows.get(id as usize)?;
        if !f.live {
            return None;
        }
        for (val, k) in [(id << 1, f.fwd_key), ((id << 1) | 1, f.rev_key)] {
            if let Some(i) = self.slot_of(k.hash(), val) {
                self.remove_slot(i);
            }
        }
        self.flows[id as usize].live = false;
        self.free.push(id);
        self.len -= 1;
        if let Some(n) = self.active.get_mut(active_slot(&f)) {
            *n = n.saturating_sub(1);
        }
        Some(f)
    }

    /// Frees a place for a new flow when the table is full: the first expired flow among the
    /// next few it samples, else the stalest evictable one (half-open, UDP, closed: never an
    /// established or closing connection). Looks at up to `EVICT_SAMPLE` live flows, and up to
    /// `EVICT_PROBES` places; finding nothing evictable, it frees nothing and the new flow is
    /// refused (a SYN flood fills the table with half-open flows, which go first; a table of
    /// established connections keeps them all).
    // Casts: flow ids are below the capacity, at most 2^28 (MAX_FLOWS).
    #[allow(clippy::cast_possible_truncation)]
    fn evict_one(&mut self, now: u32) {
        let mut best: Option<(u32, u32)> = None;
        let mut seen = 0;
        for _ in 0..EVICT_PROBES.min(self.capacity) {
            let i = self.evict_cursor;
            self.evict_cursor = (self.evict_cursor + 1) % self.capacity;
            let f = &self.flows[i];
            if !f.live {
                continue;
            }
            if f.expired(now) {
                best = Some((i as u32, u32::MAX));
                break;
            }
            if f.evictable() {
                let idle = f.idle_ms(now);
                if best.is_none_or(|(_, b)| idle > b) {
                    best = Some((i as u32, idle));
                }
            }
            seen += 1;
            if seen >= EVICT_SAMPLE && best.is_some() {
                break;
            }
        }
        if let Some((id, _)) = best {
            self.remove(id);
            self.evicted += 1;
        }
    }

    /// Looks at up to `budget` flows from where the last sweep stopped; removes those idle past
    /// their timeout and those whose task `alive` says is gone, reporting each to `reaped`, and
    /// shows `kept` the others. Returns whether it finished a pass over the whole table (it
    /// stops there: a pass sees each flow once).
    // Casts: flow ids are below the capacity, at most 2^28 (MAX_FLOWS).
    #[allow(clippy::cast_possible_truncation)]
    pub fn sweep(
        &mut self,
        now: u32,
        budget: usize,
        alive: impl Fn(u64) -> bool,
        mut reaped: impl FnMut(Reaped),
        mut kept: impl FnMut(&Flow),
    ) -> bool {
        for _ in 0..budget.min(self.capacity) {
            let i = self.sweep_cursor;
            self.sweep_cursor = (self.sweep_cursor + 1) % self.capacity;
            let wrapped = self.sweep_cursor == 0;
            // Look through a reference: most slots are free or fine, and a flow is 192 bytes.
            let f = &self.flows[i];
            if !f.live {
                // Nothing here.
            } else if f.expired(now) {
                let unanswered = (f.tcp == TcpState::SynSent && f.kind != FlowKind::ReturnRoute)
                    .then_some(f.task_uid);
                self.remove(i as u32);
                reaped(unanswered.map_or(Reaped::Expired, Reaped::Unanswered));
            } else if !alive(f.task_uid) {
                if let Some(f) = self.remove(i as u32) {
                    reaped(Reaped::Ended(f));
                }
            } else {
                kept(f);
            }
            if wrapped {
                return true;
            }
        }
        false
    }

    /// Ids of live flows (for tests and stats; not for the fast path).
    // Casts: flow ids are below the capacity, at most 2^28 (MAX_FLOWS).
    #[allow(clippy::cast_possible_truncation)]
    pub fn live_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.live)
            .map(|(i, _)| i as u32)
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flow(i: u32, now: u32) -> Flow {
        let k = FlowKey::new(
            6,
            0x0a00_0000 + i,
            1000 + (i % 50000) as u16,
            0xc0a8_010b,
            8080,
        );
        let r = FlowKey::new(6, 0x0a00_000b, 80, 0x0a00_0002, 1024 + (i % 60000) as u16)
            .reversed()
            .reversed();
        let r = FlowKey::new(r.proto(), r.src() ^ i, r.sport(), r.dst(), r.dport());
        let a = Action::new(&k, k.src(), k.sport(), r.src(), 80, Egress::Tasks);
        let b = Action::new(
            &r,
            k.dst(),
            k.dport(),
            k.src(),
            k.sport(),
            Egress::Uplink { mac: [2; 6] },
        );
        Flow::new(FlowKind::Ingress, [k, r], [a, b], 7, 0, [7200, 60, 30], now)
    }

    #[test]
    fn a_deferred_reverse_slot_appears_at_the_flush_and_never_for_a_flow_gone_meanwhile() {
        let mut t = FlowTable::new(16);
        let hashes = |f: &Flow| [f.keys()[0].hash(), f.keys()[1].hash()];
        let a = flow(1, 0);
        let id = t.insert_deferred(a, hashes(&a), 0).unwrap();
        assert_eq!(
            t.lookup(&a.keys()[0], a.keys()[0].hash()),
            Some((id, Dir::Fwd))
        );
        assert_eq!(
            t.lookup(&a.keys()[1], a.keys()[1].hash()),
            None,
            "held back"
        );
        t.flush_pending();
        assert_eq!(
            t.lookup(&a.keys()[1], a.keys()[1].hash()),
            Some((id, Dir::Rev))
        );

        // Removed before the flush: its reverse slot is never written.
        let b = flow(2, 0);
        let id = t.insert_deferred(b, hashes(&b), 0).unwrap();
        t.remove(id).unwrap();
        // Its id is reused by a flow with other keys before the flush.
        let c = flow(3, 0);
        assert_eq!(t.insert_deferred(c, hashes(&c), 0).unwrap(), id);
        t.flush_pending();
        assert_eq!(t.lookup(&b.keys()[1], b.keys()[1].hash()), None);
        assert_eq!(
            t.lookup(&c.keys()[1], c.keys()[1].hash()),
            Some((id, Dir::Rev))
        );
        assert_eq!(t.len(), 2);

        // More than a burst held back: the oldest are written as room is needed, none lost.
        let mut t = FlowTable::new(256);
        let fs: Vec<Flow> = (10..10 + 2 * PENDING as u32).map(|i| flow(i, 0)).collect();
        for f in &fs {
            t.insert_deferred(*f, hashes(f), 0).unwrap();
        }
        t.flush_pending();
        for f in &fs {
            assert!(t.contains(&f.keys()[0]) && t.contains(&f.keys()[1]));
        }
        // Removing every flow leaves no slot behind.
        for id in 0..fs.len() as u32 {
            t.remove(id);
        }
        assert!(t.is_empty());
        assert!(fs
            .iter()
            .all(|f| !t.contains(&f.keys()[0]) && !t.contains(&f.keys()[1])));
    }

    #[test]
    fn keys_whose_tags_collide_are_told_apart_by_the_key_in_the_flow() {
        // Two keys with the same low 32 hash bits (the slot's tag and home): found by the
        // birthday bound among 2^18 keys.
        let mut seen = std::collections::HashMap::new();
        let (k1, k2) = (0u32..1 << 18)
            .find_map(|i| {
                let k = FlowKey::new(6, 0x0a00_0000 + i, 1000, 0xc0a8_010b, 8080);
                seen.insert(k.hash() as u32, k)
                    .filter(|old| *old != k)
                    .map(|old| (old, k))
            })
            .expect("a tag collision among 2^18 keys");
        assert_eq!(k1.hash() as u32, k2.hash() as u32);
        let mk = |k: FlowKey, n: u32| {
            let r = FlowKey::new(6, 0x0a00_0000 + n, 80, 0x0a00_0002, 2000);
            let a = Action::keep(&k, Egress::Tasks);
            let b = Action::keep(&r, Egress::Tasks);
            Flow::new(FlowKind::Ingress, [k, r], [a, b], 1, 0, [60; 3], 0)
        };
        let mut t = FlowTable::new(64);
        let id1 = t.insert(mk(k1, 1), 0).unwrap();
        let id2 = t.insert(mk(k2, 2), 0).unwrap();
        assert_eq!(t.lookup(&k1, k1.hash()), Some((id1, Dir::Fwd)));
        assert_eq!(t.lookup(&k2, k2.hash()), Some((id2, Dir::Fwd)));
        t.remove(id1);
        assert_eq!(t.lookup(&k1, k1.hash()), None);
        assert_eq!(t.lookup(&k2, k2.hash()), Some((id2, Dir::Fwd)));
    }

    #[test]
    fn live_balanced_flows_are_counted_per_slot_until_they_end_however_they_end() {
        let mut t = FlowTable::new(16);
        let mk = |i: u32, kind: FlowKind, slot: u16| {
            let mut f = flow(i, 0);
            f.kind = kind;
            f.stats_slot = slot;
            f.rev_stats_slot = slot;
            f
        };
        let a = t.insert(mk(1, FlowKind::Ingress, 3), 0).unwrap();
        t.insert(mk(2, FlowKind::Vip, 3), 0).unwrap();
        t.insert(mk(3, FlowKind::Ingress, 5), 0).unwrap();
        // A return route was balanced elsewhere; a flow without a slot is not counted.
        t.insert(mk(4, FlowKind::ReturnRoute, 5), 0).unwrap();
        t.insert(mk(5, FlowKind::Ingress, u16::MAX), 0).unwrap();
        assert_eq!((t.active()[3], t.active()[5]), (2, 1));
        t.remove(a).unwrap();
        assert!(t.remove(a).is_none(), "ended once");
        assert_eq!(t.active()[3], 1);
        // Filled up, new flows evict (none is established): the counts follow, as counted
        // afresh from the flows.
        for i in 10..30 {
            t.insert(mk(i, FlowKind::Ingress, 7), 0).unwrap();
        }
        assert!(t.evicted > 0);
        let kept = t.active().to_vec();
        t.recount_active();
        assert_eq!(kept, t.active());
        // Expired by the sweep: nothing left counted.
        // (A sweep stops where a pass ends: two calls see every place whatever the cursor.)
        for _ in 0..2 {
            t.sweep(u32::MAX / 2, 64, |_| true, |_| {}, |_| {});
        }
        assert_eq!((t.len(), t.active().iter().sum::<u32>()), (0, 0));
        t.insert(mk(40, FlowKind::Vip, 9), 0).unwrap();
        t.recount_active();
        assert_eq!(t.active()[9], 1);
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = FlowTable::new(64);
        let f = flow(1, 0);
        let id = t.insert(f, 0).unwrap();
        assert_eq!(
            t.lookup(&f.keys()[0], f.keys()[0].hash()),
            Some((id, Dir::Fwd))
        );
        assert_eq!(
            t.lookup(&f.keys()[1], f.keys()[1].hash()),
            Some((id, Dir::Rev))
        );
        assert_eq!(t.insert(f, 0), Err(InsertError::Exists));
        t.remove(id);
        assert_eq!(t.lookup(&f.keys()[0], f.keys()[0].hash()), None);
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_evicts_the_stalest_sampled_flow() {
        let mut t = FlowTable::new(16);
        for i in 0..16 {
            t.insert(flow(i, 100 + i), 100 + i).unwrap();
        }
        // Flow 0 is the stalest of all; the sample covers the whole 16-flow arena.
        t.insert(flow(100, 500), 500).unwrap();
        assert_eq!(t.len(), 16);
        assert_eq!(t.evicted, 1);
        let f0 = flow(0, 0);
        assert!(!t.contains(&f0.keys()[0]));
        assert!(t.contains(&flow(1, 0).keys()[0]));
    }

    /// A flow in TCP state `tcp`.
    fn in_state(i: u32, now: u32, tcp: TcpState) -> Flow {
        let mut f = flow(i, now);
        f.tcp = tcp;
        f
    }

    #[test]
    fn a_table_of_established_connections_refuses_a_new_flow_and_keeps_them_all() {
        let mut t = FlowTable::new(16);
        for i in 0..16 {
            t.insert(in_state(i, 100, TcpState::Established), 100)
                .unwrap();
        }
        // Idle for a minute, well inside their 2-hour timeout: none may go.
        assert_eq!(
            t.insert(in_state(100, 60_000, TcpState::None), 60_000),
            Err(InsertError::Full)
        );
        assert_eq!((t.len(), t.evicted, t.refused), (16, 0, 1));
        for i in 0..16 {
            assert!(t.contains(&flow(i, 0).keys()[0]));
        }
        // Once one has expired, it makes room.
        assert!(t
            .insert(in_state(101, 7_300_000, TcpState::None), 7_300_000)
            .is_ok());
        assert_eq!(t.evicted, 1);
    }

    #[test]
    fn half_open_flows_go_before_established_ones_however_stale() {
        let mut t = FlowTable::new(16);
        // Half the table established long ago, half a flood's SYNs since.
        for i in 0..8 {
            t.insert(in_state(i, 0, TcpState::Established), 0).unwrap();
        }
        for i in 8..16 {
            t.insert(in_state(i, 1000 + i, TcpState::SynSent), 1000 + i)
                .unwrap();
        }
        // Eight new flows: each takes a half-open one, the stalest first.
        for i in 100..108 {
            t.insert(in_state(i, 2000, TcpState::SynSent), 2000)
                .unwrap();
        }
        assert_eq!((t.len(), t.evicted, t.refused), (16, 8, 0));
        for i in 0..8 {
            assert!(
                t.contains(&flow(i, 0).keys()[0]),
                "established {i} was evicted"
            );
        }
        for i in 8..16 {
            assert!(!t.contains(&flow(i, 0).keys()[0]), "half-open {i} stayed");
        }
    }

    #[test]
    fn a_half_open_flow_has_its_own_short_timeout() {
        let f = in_state(1, 0, TcpState::SynSent);
        assert_eq!(f.timeout_ms(), u64::from(tcp::HALF_OPEN_S) * 1000);
        assert!(f.expired(tcp::HALF_OPEN_S * 1000 + 1));
        let e = in_state(1, 0, TcpState::Established);
        assert!(!e.expired(tcp::HALF_OPEN_S * 1000 + 1));
    }

    #[test]
    fn a_flow_whose_packets_all_come_back_is_not_idle() {
        // UDP, 30 s: the forward direction went quiet at 0, the reverse one is still talking.
        let mut f = flow(1, 0);
        let udp = |k: FlowKey| FlowKey::new(17, k.src(), k.sport(), k.dst(), k.dport());
        let [k0, k1] = f.keys();
        (f.fwd_key, f.rev_key) = (udp(k0), udp(k1));
        f.rev_seen = 100_000;
        assert_eq!(f.idle_ms(110_000), 10_000);
        assert!(!f.expired(110_000));
        assert!(f.expired(131_000));
        // The clock wraps: the most recent of the two still counts.
        f.last_seen = u32::MAX - 5_000;
        f.rev_seen = 5_000;
        assert_eq!(f.idle_ms(10_000), 5_000);
    }

    #[test]
    fn sweep_expires_idle_flows_and_ends_dead_tasks() {
        let mut t = FlowTable::new(16);
        let mut udp = flow(1, 0);
        let udp_key = |k: FlowKey| FlowKey::new(17, k.src(), k.sport(), k.dst(), k.dport());
        let [k0, k1] = udp.keys();
        (udp.fwd_key, udp.rev_key) = (udp_key(k0), udp_key(k1));
        t.insert(udp, 0).unwrap();
        let mut est = flow(2, 0);
        est.tcp = TcpState::Established;
        est.task_uid = 9;
        t.insert(est, 0).unwrap();
        // A SYN its task never answered: expired, and told as such.
        let mut syn = flow(3, 0);
        syn.tcp = TcpState::SynSent;
        syn.task_uid = 11;
        t.insert(syn, 0).unwrap();
        let mut n = (0, 0);
        let mut unanswered = Vec::new();
        // 16 minutes later: UDP (30 s) expired; an established TCP flow (2 h) is not cut at 900 s.
        let mut kept = Vec::new();
        let whole = t.sweep(
            16 * 60 * 1000,
            16,
            |_| true,
            |r| match r {
                Reaped::Expired => n.0 += 1,
                Reaped::Unanswered(uid) => unanswered.push(uid),
                Reaped::Ended(_) => n.1 += 1,
            },
            |f| kept.push(f.task_uid),
        );
        assert!(whole, "16 places of a 16-flow table: a whole pass");
        assert_eq!(n, (1, 0));
        assert_eq!(unanswered, [11]);
        assert_eq!(kept, [9], "the established flow stays, and is shown");
        assert_eq!(t.len(), 1);
        // A pass ends where it began, however large the budget: each flow is seen once.
        let whole = t.sweep(
            16 * 60 * 1000,
            1000,
            |uid| uid != 9,
            |r| match r {
                Reaped::Expired | Reaped::Unanswered(_) => n.0 += 1,
                Reaped::Ended(f) => {
                    assert_eq!(f.task_uid, 9);
                    n.1 += 1
                }
            },
            |_| panic!("nothing is kept"),
        );
        assert!(whole);
        assert_eq!(n, (1, 1));
        assert!(t.is_empty());
        assert!(!t.sweep(0, 5, |_| true, |_| {}, |_| {}), "a part of a pass");
    }

    proptest! {
        /// The same in the smallest table, full to its capacity: 64 slots for up to 32 keys,
        /// so probe chains are long, wrap around the end and are cut by deletions, and
        /// reverse slots come both at once and deferred to the end of a burst.
        #[test]
        fn a_full_small_table_matches_a_model(ops in proptest::collection::vec((0u32..48, 0u8..3), 1..600)) {
            let mut t = FlowTable::new(16);
            let mut model = std::collections::HashMap::new();
            for (i, op) in ops {
                let f = flow(i, 0);
                match op {
                    0 | 1 if model.len() < 16 && !model.contains_key(&i) => {
                        let id = if op == 0 {
                            t.insert(f, 0).unwrap()
                        } else {
                            let [k0, k1] = f.keys();
                            let id = t.insert_deferred(f, [k0.hash(), k1.hash()], 0).unwrap();
                            t.flush_pending();
                            id
                        };
                        model.insert(i, id);
                    }
                    2 => {
                        if let Some(id) = model.remove(&i) {
                            prop_assert!(t.remove(id).is_some());
                        }
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(t.len(), model.len());
            prop_assert_eq!(t.evicted, 0);
            for i in 0..48 {
                let f = flow(i, 0);
                let want = model.get(&i).copied();
                for (k, dir) in f.keys().iter().zip([Dir::Fwd, Dir::Rev]) {
                    prop_assert_eq!(t.lookup(k, k.hash()), want.map(|id| (id, dir)));
                }
            }
        }

        /// Any sequence of inserts and removes leaves exactly the live flows findable.
        #[test]
        fn table_matches_a_model(ops in proptest::collection::vec((0u32..200, any::<bool>()), 1..400)) {
            let mut t = FlowTable::new(256);
            let mut model = std::collections::HashMap::new();
            for (i, add) in ops {
                let f = flow(i, 0);
                if add {
                    if let std::collections::hash_map::Entry::Vacant(e) = model.entry(i) {
                        e.insert(t.insert(f, 0).unwrap());
                    }
                } else if let Some(id) = model.remove(&i) {
                    t.remove(id);
                }
            }
            prop_assert_eq!(t.len(), model.len());
            for i in 0..200 {
                let f = flow(i, 0);
                let found = t.lookup(&f.keys()[0], f.keys()[0].hash()).map(|x| x.0);
                prop_assert_eq!(found, model.get(&i).copied());
                let found = t.lookup(&f.keys()[1], f.keys()[1].hash()).map(|x| x.0);
                prop_assert_eq!(found, model.get(&i).copied());
            }
        }
    }
}
