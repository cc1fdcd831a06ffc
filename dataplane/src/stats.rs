//! Counters. Every drop has a typed reason ([`DropReason`]) and every reason a counter.
//!
//! Both lists are written once. A worker's plain counters are [`ctl::proto::WorkerCounters`]
//! (add one there, one line in its `counters!` invocation); a reason enum is one [`reasons!`]
//! invocation, which gives the variants, `COUNT`, `ALL`, `NAMES` and `name()`. To add a reason,
//! add one line `/// Why. \n NewReason = "new_reason",`; its counter, `meshctl stats` row and
//! Prometheus label follow. Another reason enum with its own counters takes the same macro:
//!
//! ```text
//! reasons! {
//!     /// Why a frame went to the host side.
//!     pub enum HostReason {
//!         /// The published port has no listener.
//!         NotPublished = "not_published",
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

pub use ctl::proto::WorkerCounters;

/// Defines a `#[repr(u8)]` reason enum once: its variants (each `Variant = "name"`, with its doc
/// comment), `COUNT`, `ALL` (in declaration order, so `r as usize` indexes it), `NAMES` and
/// `name()` (the name `meshctl stats` and Prometheus labels use).
macro_rules! reasons {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $label:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Number of reasons.
            pub const COUNT: usize = [$($label),*].len();

            /// Every reason, in declaration order (`r as usize` is its index).
            pub const ALL: [$name; Self::COUNT] = [$($name::$variant),*];

            /// Every reason's name, in [`Self::ALL`] order.
            pub const NAMES: [&'static str; Self::COUNT] = [$($label),*];

            /// The name used in `meshctl stats` and Prometheus labels.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )*
                }
            }
        }
    };
}

reasons! {
    /// Why the fast path dropped a frame. Each variant has a counter in [`WorkerStats::drops`].
    pub enum DropReason {
        /// Shorter than the headers it claims to carry.
        Truncated = "truncated",
        /// An ethertype the mesh does not route.
        UnknownEthertype = "unknown_ethertype",
        /// Not addressed to this node's MAC.
        NotOurMac = "not_our_mac",
        /// IPv4 header length, total length or version is wrong.
        BadIpv4Header = "bad_ipv4_header",
        /// IPv4 header checksum is wrong.
        BadIpChecksum = "bad_ip_checksum",
        /// IPv4 options are present; the mesh does not forward them.
        Ipv4Options = "ipv4_options",
        /// A fragment of VXLAN: VTEPs do not fragment it (RFC 7348 section 4.3) and meshd
        /// does not reassemble it.
        Fragment = "fragment",
        /// A malformed IPv4 fragment: past byte 65,535, data not a multiple of 8 bytes before
        /// the last, a first fragment too short for its transport header, a later one past
        /// the datagram's end, or a TCP fragment at offset 8 (RFC 1858).
        BadFragment = "bad_fragment",
        /// A fragment overlapping one already forwarded (RFC 5722's rule, as the kernel
        /// applies it to IPv4).
        FragmentOverlap = "fragment_overlap",
        /// No room to track another datagram's fragments, or to hold another early fragment.
        FragmentTableFull = "fragment_table_full",
        /// A fragment whose datagram's first fragment did not come in time.
        FragmentTimeout = "fragment_timeout",
        /// No free buffer to hold a fragment or to fragment a too-big packet into.
        NoBuffer = "no_buffer",
        /// Time to live ran out.
        TtlExpired = "ttl_expired",
        /// TCP or UDP header (or, to the node's IPv6 address, ICMPv6) is malformed or its
        /// length is wrong.
        BadL4Header = "bad_l4_header",
        /// TCP or UDP checksum (or an ICMPv6 one) is wrong.
        BadL4Checksum = "bad_l4_checksum",
        /// A protocol other than TCP, UDP or ICMP; over IPv6, also ICMPv6 other than echo
        /// requests and errors to the node's address and Neighbor Discovery (a ping of a
        /// multicast group, an error message to one).
        UnknownProtocol = "unknown_protocol",
        /// Addressed to an IP this node does not serve.
        NotForUs = "not_for_us",
        /// VXLAN from an address that is not a known peer VTEP.
        UnknownVtep = "unknown_vtep",
        /// VXLAN header is malformed (I flag clear).
        BadVxlan = "bad_vxlan",
        /// VXLAN network identifier this node does not know.
        UnknownVni = "unknown_vni",
        /// From a local task address the table does not know.
        UnknownSource = "unknown_source",
        /// Between two different overlay networks.
        CrossNetwork = "cross_network",
        /// No route: the destination is not in any overlay and no flow knows it.
        NoRoute = "no_route",
        /// The next hop's MAC address is not known yet (an ARP request went out).
        NoNeighbor = "no_neighbor",
        /// ARP that the mesh does not answer (not a request, or for an address a task owns).
        ArpIgnored = "arp_ignored",
        /// Malformed ARP.
        BadArp = "bad_arp",
        /// The headroom was too small to encapsulate.
        NoHeadroom = "no_headroom",
        /// The owning worker's handoff ring was full (or, never expected, there is no such
        /// worker).
        HandoffFull = "handoff_full",
        /// A new flow could not be made: no masquerade port of this worker was free, or its
        /// translation would collide with a flow the worker already has (the same client port
        /// onto the same task port through two published ports, with the client IP kept).
        NoNatPort = "no_nat_port",
        /// A VXLAN frame or health gossip with a peer's address from another MAC than the peer's
        /// (forged on the underlay): not delivered, and meshd asks the peer's MAC by ARP.
        SpoofedPeer = "spoofed_peer",
        /// VXLAN of an encrypted network sealed with a key id this node does not have (a peer
        /// a key rotation missed, a peer that does not encrypt the network, or a forgery), or
        /// too short to hold a seal.
        SealUnknownKey = "seal_unknown_key",
        /// VXLAN of an encrypted network whose seal does not check: forged or damaged.
        SealForged = "seal_forged",
        /// VXLAN of an encrypted network sealed with a nonce this worker has seen opened
        /// already, or one too old to tell: a recorded frame sent again.
        SealReplayed = "seal_replayed",
        /// Not sealed: this worker drew no random nonce prefix when it started (the kernel
        /// gave none), and it seals nothing rather than risk a nonce twice.
        SealNoNonce = "seal_no_nonce",
        /// A frame from the tasks side with a local task's address from another MAC than the
        /// task's: not forwarded.
        SpoofedSource = "spoofed_source",
        /// A frame (or ARP) from the tasks side with a local task's address that did not come
        /// in on that task's VLAN: another task claiming its address, or a task whose `vlan=`
        /// does not match its port on the tasks bridge.
        WrongVlan = "wrong_vlan",
        /// A TCP segment with SYN and FIN or RST: no stack sends one (a scan or a flood); it
        /// never opens a flow.
        BadTcpFlags = "bad_tcp_flags",
        /// A new flow was refused: the worker's flow table is full of established connections,
        /// which eviction never takes for a new flow (half-open flows, UDP and closed ones go
        /// first).
        FlowTableFull = "flow_table_full",
        /// A source opened new flows faster than `--new-flows-per-source` allows.
        NewFlowRate = "new_flow_rate",
        /// Larger than the overlay's MTU once encapsulated: answered with ICMP "fragmentation
        /// needed" when DF is set (rate-limited per source), else dropped.
        TooBig = "too_big",
        /// The queue to the host side (the node's own stack) was full.
        HostQueueFull = "host_queue_full",
        /// IPv6 meshd does not carry: on the uplink of a node started without `--addr6`; from
        /// a task of a network that is not dual-stack, or to an address outside its network
        /// (the IPv6 twins of the network's IPv4 subnet); out of VXLAN on a network that is
        /// not dual-stack here; a task's reply to an IPv6 client when the node's IPv6 address
        /// has since been removed.
        NoIpv6 = "no_ipv6",
        /// A task's IPv6 on a dual-stack network that meshd does not translate: ICMPv6 other
        /// than echo, errors and Neighbor Discovery; an error without an IPv4 form (parameter
        /// problem at a header field, a quote with extension headers or of a piece, or of
        /// addresses outside the network); or, out of VXLAN, a packet to the IPv6 twin of a
        /// VIP or the gateway that is no flow's (the asker's own node answers those).
        Ipv6Untranslated = "ipv6_untranslated",
        /// An IPv6 header that is not one: a version other than 6, a payload length past the
        /// frame.
        BadIpv6Header = "bad_ipv6_header",
        /// IPv6 extension headers meshd does not walk: more than
        /// [`crate::pipeline::MAX_IPV6_EXT_HEADERS`], hop-by-hop options anywhere but first,
        /// a kind repeated (destination options may come twice), or one running past the
        /// packet.
        Ipv6ExtChain = "ipv6_ext_chain",
        /// A piece of an IPv6 datagram that is not TCP, UDP or ICMPv6 to the node's address
        /// (to its solicited-node group, or of another protocol), or a piece of a task's UDP reply to an IPv6 client that has no checksum, which IPv6 requires and no
        /// piece can compute.
        Ipv6Fragment = "ipv6_fragment",
        /// Neighbor Discovery that RFC 4861 says to discard: a hop limit other than 255, a
        /// code other than 0, a multicast target, bad options, a solicitation from the
        /// unspecified address not sent to the solicited-node group.
        BadNdp = "bad_ndp",
        /// Neighbor Discovery not for meshd to answer: a solicitation for another address,
        /// an advertisement, a router solicitation or advertisement, a redirect.
        NdpIgnored = "ndp_ignored",
        /// An ICMPv6 error to the node's IPv6 address that names no flow of this node: its
        /// quote is not a TCP or UDP packet from the node's address, or no live flow of a
        /// published port (of that IPv6 client) is the one it names. (IPv4's go to the host
        /// stack, which takes none of them either: it counts them `ignored`.)
        Icmp6NoFlow = "icmpv6_no_flow",
        /// A packet of an IPv6 client to a published port whose flow key (which holds a
        /// stand-in IPv4 address hashed from the client's) is another IPv6 client's flow: two
        /// addresses that hash alike, from the same port. Dropped, never delivered into the
        /// other client's connection.
        Ipv6ClientCollision = "ipv6_client_collision",
    }
}

reasons! {
    /// Why the pipeline handed a frame to the host side (the node's own stack: ARP and ICMP it
    /// does not answer in place, RST and port unreachable for closed ports, DNS, health checks).
    /// Each has a counter, beside the total `to_host`.
    pub enum HostReason {
        /// To the node's address, and not a published port's TCP or UDP (ICMP echo, say).
        NodeAddress = "node_address",
        /// To a port of the node that is not published: answered as a closed port.
        NotPublished = "not_published",
        /// A TCP segment other than a SYN that belongs to no flow (a connection meshd does not
        /// know, or one whose task is gone): answered with a RST.
        NotSyn = "not_syn",
        /// A new connection to a service with no task that may take it (none, all draining or
        /// unhealthy): refused as a closed port.
        NoTask = "no_task",
        /// To one of the mesh's own overlay addresses (a VIP, a gateway, an endpoint) and not
        /// a flow's: ping, DNS, a closed port.
        MeshAddress = "mesh_address",
        /// TCP or UDP to the node's IPv6 address on a port that is not published: refused as
        /// a closed port (RST, ICMPv6 port unreachable).
        Ipv6Port = "ipv6_port",
    }
}

/// Non-zero counts by reason name: `names` and `counts` in the same (reason) order.
pub fn by_reason(names: &[&'static str], counts: &[u64]) -> BTreeMap<String, u64> {
    names
        .iter()
        .zip(counts)
        .filter(|(_, &n)| n > 0)
        .map(|(name, &n)| ((*name).to_string(), n))
        .collect()
}

/// One worker's counters: the plain ones ([`WorkerCounters`], reached through `Deref`, so
/// `stats.rx += 1` works) and one per drop reason. Plain integers: only the worker writes them;
/// readers get copies published by the worker (see `shared.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    pub counters: WorkerCounters,
    pub drops: [u64; DropReason::COUNT],
    /// Frames handed to the host side, by reason (they add up to `to_host`).
    pub to_host_by: [u64; HostReason::COUNT],
}

// By hand: arrays longer than 32 have no derived `Default`.
impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            counters: WorkerCounters::default(),
            drops: [0; DropReason::COUNT],
            to_host_by: [0; HostReason::COUNT],
        }
    }
}

impl Deref for WorkerStats {
    type Target = WorkerCounters;
    fn deref(&self) -> &WorkerCounters {
        &self.counters
    }
}

impl DerefMut for WorkerStats {
    fn deref_mut(&mut self) -> &mut WorkerCounters {
        &mut self.counters
    }
}

impl WorkerStats {
    /// Number of plain counters before the drop counters in [`Self::to_array`].
    pub const FIELDS: usize = WorkerCounters::FIELDS;

    /// Names of the plain counters, in [`Self::to_array`] order.
    pub const NAMES: [&'static str; Self::FIELDS] = WorkerCounters::NAMES;

    /// The length of [`Self::to_array`]: plain counters, drop reasons, host reasons.
    pub const LEN: usize = Self::FIELDS + DropReason::COUNT + HostReason::COUNT;

    /// All counters as one array: the plain ones, then one per drop reason, then one per host
    /// reason.
    pub fn to_array(&self) -> [u64; Self::LEN] {
        let mut a = [0u64; Self::LEN];
        let (plain, rest) = a.split_at_mut(Self::FIELDS);
        let (drops, host) = rest.split_at_mut(DropReason::COUNT);
        plain.copy_from_slice(&self.counters.to_array());
        drops.copy_from_slice(&self.drops);
        host.copy_from_slice(&self.to_host_by);
        a
    }

    pub fn from_array(a: &[u64; Self::LEN]) -> Self {
        let mut plain = [0u64; Self::FIELDS];
        let mut drops = [0u64; DropReason::COUNT];
        let mut to_host_by = [0u64; HostReason::COUNT];
        let (p, rest) = a.split_at(Self::FIELDS);
        let (d, h) = rest.split_at(DropReason::COUNT);
        plain.copy_from_slice(p);
        drops.copy_from_slice(d);
        to_host_by.copy_from_slice(h);
        WorkerStats {
            counters: WorkerCounters::from_array(&plain),
            drops,
            to_host_by,
        }
    }

    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }

    /// Counts a frame handed to the host side for `r`.
    #[inline]
    pub fn to_host(&mut self, r: HostReason) {
        self.counters.to_host += 1;
        self.to_host_by[r as usize] += 1;
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another worker's counters (for totals).
    pub fn add(&mut self, o: &WorkerStats) {
        self.counters.add(&o.counters);
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
        for (a, b) in self.to_host_by.iter_mut().zip(o.to_host_by.iter()) {
            *a += b;
        }
    }

    /// The counters as the `stats` answer carries them.
    pub fn report(&self) -> ctl::proto::WorkerReport {
        ctl::proto::WorkerReport {
            counters: self.counters.clone(),
            drops: by_reason(&DropReason::NAMES, &self.drops),
            to_host: by_reason(&HostReason::NAMES, &self.to_host_by),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_through_the_array() {
        let mut s = WorkerStats::default();
        (s.rx, s.resets_sent, s.new_flows) = (1, 12, 7);
        s.drop(DropReason::TooBig);
        assert_eq!(WorkerStats::from_array(&s.to_array()), s);
        // Every plain counter has its own slot, in NAMES order.
        let mut s = WorkerStats::default();
        (
            s.resets_unsent,
            s.mss_clamped,
            s.icmp_frag_needed,
            s.fragments_in,
            s.fragments_held,
            s.fragments_made,
            s.neighbor_changes,
            s.neighbor_conflicts,
            s.port_rx_dropped,
            s.port_rx_too_long,
            s.port_tx_full,
            s.port_tx_bad_len,
            s.port_tx_link_down,
            s.port_link_downs,
            s.syn_refused,
            s.syn_unanswered,
            s.passive_lost,
            s.task_unreachable,
            s.icmp_to_task,
            s.flows_removed,
            s.affinity_full,
            s.sched_uncounted,
        ) = (
            14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35,
        );
        let a = s.to_array();
        for (i, name) in WorkerStats::NAMES.iter().enumerate().skip(13) {
            assert_eq!(a[i], i as u64 + 1, "{name}");
        }
        assert_eq!(WorkerStats::from_array(&a), s);
        let mut total = s.clone();
        total.add(&s);
        assert_eq!((total.port_rx_dropped, total.port_tx_bad_len), (44, 50));
    }

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}

/// Per-task counters of one worker, keyed by the task's stable uid: packets, bytes and
/// connections (new flows), the flows it holds now, active (established TCP) and inactive
/// (any other TCP state, and UDP), as IPVS counts them, and the frames of its flows the
/// pipeline dropped. A fixed open-addressing table allocated once; a task seen when the table
/// is full is not counted (and `overflow` says so).
///
/// A service has an entry too, under its own uid ([`crate::balance::table::SvcEntry::uid`]),
/// made on its first drop that no task can be blamed for (a new connection refused before a
/// task was picked: no task to take it, a SYN with FIN or RST, a source over its new-flow
/// rate); only its `DROPPED` column is used. A service's drops are its entry's and its tasks'.
/// Drops are counted only on drop paths ([`Self::drop_at`]): the forwarding path pays nothing.
///
/// The active and inactive counts are those of the idle sweep's last whole pass over the flow
/// table (it looks at every flow anyway): exact for the flows that lived through the pass, and
/// as old as one pass (the table's capacity over `sweep_budget` per millisecond: 0.26 s for 64 K
/// flows). The fast path pays nothing for them.
#[derive(Debug)]
pub struct TaskCounters {
    keys: Box<[u64]>,
    vals: Box<[[u64; TASK_COLS]]>,
    /// Active and inactive flows the sweep's current pass has seen so far, per slot.
    tally: Box<[[u64; 2]]>,
    mask: usize,
    /// Occupied slots, in insertion order (for publishing without a full scan).
    used: Vec<u32>,
    /// At most this many tasks (half the slots, so probes stay short).
    limit: usize,
    pub overflow: u64,
}

/// Index of packets, bytes and connections in a [`TaskCounters`] entry.
pub const PACKETS: usize = 0;
pub const BYTES: usize = 1;
pub const CONNS: usize = 2;
pub const ACTIVE: usize = 3;
pub const INACTIVE: usize = 4;
/// Frames dropped after the pipeline knew their flow's task (or, in a service's entry, the
/// service but no task).
pub const DROPPED: usize = 5;
/// Counters per task.
pub const TASK_COLS: usize = 6;

impl TaskCounters {
    /// Room for `capacity` tasks (rounded up to a power of two, twice over for probing).
    pub fn new(capacity: usize) -> Self {
        let n = (capacity * 2).next_power_of_two().max(16);
        TaskCounters {
            keys: vec![0u64; n].into_boxed_slice(),
            vals: vec![[0u64; TASK_COLS]; n].into_boxed_slice(),
            tally: vec![[0u64; 2]; n].into_boxed_slice(),
            mask: n - 1,
            used: Vec::with_capacity(n / 2),
            limit: n / 2,
            overflow: 0,
        }
    }

    /// The counters of task `uid` (never 0), claiming a slot on first use.
    #[inline]
    pub fn entry(&mut self, uid: u64) -> Option<&mut [u64; TASK_COLS]> {
        let i = self.slot(uid);
        self.vals.get_mut(usize::from(i))
    }

    /// The slot of task `uid`'s counters, claimed on first use; `u16::MAX` when full. A slot,
    /// once given, stays the task's (slots are never freed), so flows can keep it.
    // Casts: a hash folded to a slot index (keeping the low bits is the point); slots are below
    // the table's size, at most 8,192.
    #[allow(clippy::cast_possible_truncation)]
    #[inline]
    pub fn slot(&mut self, uid: u64) -> u16 {
        let mut i = (crate::fastmap::mix64(uid) as usize) & self.mask;
        for _ in 0..32 {
            let k = self.keys[i];
            if k == uid {
                return i as u16;
            }
            if k == 0 {
                if self.used.len() >= self.limit || i >= usize::from(u16::MAX) {
                    break;
                }
                self.keys[i] = uid;
                self.used.push(i as u32);
                return i as u16;
            }
            i = (i + 1) & self.mask;
        }
        self.overflow += 1;
        u16::MAX
    }

    /// Adds to the counters at `slot` (from [`Self::slot`]); `u16::MAX` is ignored.
    #[inline]
    pub fn add(&mut self, slot: u16, packets: u64, bytes: u64, conns: u64) {
        if let Some(v) = self.vals.get_mut(usize::from(slot)) {
            v[PACKETS] += packets;
            v[BYTES] += bytes;
            v[CONNS] += conns;
        }
    }

    /// Counts a dropped frame against the task (or service) at `slot`; `u16::MAX` is ignored.
    /// Only drop paths call it.
    #[cold]
    pub fn drop_at(&mut self, slot: u16) {
        if let Some(v) = self.vals.get_mut(usize::from(slot)) {
            v[DROPPED] += 1;
        }
    }

    /// Counts a flow of the task at `slot` the sweep's pass found alive; `u16::MAX` is ignored.
    #[inline]
    pub fn tally(&mut self, slot: u16, active: bool) {
        if let Some(t) = self.tally.get_mut(usize::from(slot)) {
            t[usize::from(!active)] += 1;
        }
    }

    /// The sweep finished a pass: what it counted becomes each task's active and inactive
    /// flows, and the next pass counts afresh.
    pub fn close_pass(&mut self) {
        for &i in &self.used {
            let i = i as usize;
            if let (Some(v), Some(t)) = (self.vals.get_mut(i), self.tally.get_mut(i)) {
                v[ACTIVE] = t[0];
                v[INACTIVE] = t[1];
                *t = [0, 0];
            }
        }
    }

    /// Every counted task (and service): (uid, [packets, bytes, connections, active, inactive,
    /// dropped]).
    pub fn iter(&self) -> impl Iterator<Item = (u64, [u64; TASK_COLS])> + '_ {
        self.used
            .iter()
            .map(|&i| (self.keys[i as usize], self.vals[i as usize]))
    }
}

#[cfg(test)]
mod task_tests {
    use super::*;

    #[test]
    fn counts_per_task_and_refuses_when_full() {
        let mut t = TaskCounters::new(4);
        for uid in 1..=8u64 {
            let c = t.entry(uid).unwrap();
            c[PACKETS] += uid;
        }
        assert!(
            t.entry(9).is_none(),
            "room for 8 (16 slots, half full at most), all used"
        );
        assert_eq!(t.overflow, 1);
        t.entry(3).unwrap()[BYTES] += 100;
        let got: std::collections::BTreeMap<u64, [u64; TASK_COLS]> = t.iter().collect();
        assert_eq!(got[&3], [3, 100, 0, 0, 0, 0]);
        assert_eq!(got.len(), 8);
    }

    #[test]
    fn drops_count_against_their_slot_and_nothing_else() {
        let mut t = TaskCounters::new(4);
        let (task, service) = (t.slot(7), t.slot(0x5e41));
        t.add(task, 2, 120, 1);
        t.drop_at(task);
        for _ in 0..3 {
            t.drop_at(service);
        }
        t.drop_at(u16::MAX);
        let got: std::collections::BTreeMap<u64, [u64; TASK_COLS]> = t.iter().collect();
        assert_eq!(got[&7], [2, 120, 1, 0, 0, 1]);
        assert_eq!(got[&0x5e41], [0, 0, 0, 0, 0, 3]);
        assert_eq!(got.len(), 2, "an unknown slot claims nothing");
        // A pass of the sweep leaves the drops alone.
        t.close_pass();
        assert_eq!(t.iter().map(|(_, v)| v[DROPPED]).sum::<u64>(), 4);
    }

    #[test]
    fn active_and_inactive_are_the_last_whole_pass() {
        let mut t = TaskCounters::new(4);
        let (a, b) = (t.slot(1), t.slot(2));
        for _ in 0..3 {
            t.tally(a, true);
        }
        t.tally(a, false);
        t.tally(b, false);
        t.tally(u16::MAX, true);
        let now = |t: &TaskCounters| -> Vec<[u64; 2]> {
            t.iter().map(|(_, v)| [v[ACTIVE], v[INACTIVE]]).collect()
        };
        assert_eq!(now(&t), [[0, 0], [0, 0]], "nothing until the pass ends");
        t.close_pass();
        assert_eq!(now(&t), [[3, 1], [0, 1]]);
        t.tally(b, true);
        t.close_pass();
        assert_eq!(now(&t), [[0, 0], [1, 0]], "each pass counts afresh");
    }
}
