//! Counters. Every drop has a typed reason ([`DropReason`]) and every reason a counter.

/// Why the fast path dropped a frame. Each variant has a counter in [`WorkerStats::drops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than the headers it claims to carry.
    Truncated,
    /// An ethertype the mesh does not route.
    UnknownEthertype,
    /// Not addressed to this node's MAC.
    NotOurMac,
    /// IPv4 header length, total length or version is wrong.
    BadIpv4Header,
    /// IPv4 header checksum is wrong.
    BadIpChecksum,
    /// IPv4 options are present; the mesh does not forward them.
    Ipv4Options,
    /// A fragment; the mesh does not reassemble.
    Fragment,
    /// Time to live ran out.
    TtlExpired,
    /// TCP or UDP header is malformed or its length is wrong.
    BadL4Header,
    /// TCP or UDP checksum is wrong.
    BadL4Checksum,
    /// A protocol other than TCP, UDP or ICMP.
    UnknownProtocol,
    /// Addressed to an IP this node does not serve.
    NotForUs,
    /// VXLAN from an address that is not a known peer VTEP.
    UnknownVtep,
    /// VXLAN header is malformed (I flag clear).
    BadVxlan,
    /// VXLAN network identifier this node does not know.
    UnknownVni,
    /// From a local task address the table does not know.
    UnknownSource,
    /// Between two different overlay networks.
    CrossNetwork,
    /// No route: the destination is not in any overlay and no flow knows it.
    NoRoute,
    /// The service has no eligible task.
    NoTask,
    /// The next hop's MAC address is not known yet (an ARP request went out).
    NoNeighbor,
    /// ARP that the mesh does not answer (not a request, or for an address a task owns).
    ArpIgnored,
    /// Malformed ARP.
    BadArp,
    /// The headroom was too small to encapsulate.
    NoHeadroom,
    /// The flow ended (its task was removed or failed).
    FlowEnded,
    /// The owning worker's handoff ring was full.
    HandoffFull,
    /// Masquerade ports of this worker are exhausted.
    NoNatPort,
    /// Larger than the overlay's MTU once encapsulated: answered with ICMP "fragmentation
    /// needed" when DF is set (rate-limited per source), else dropped.
    TooBig,
}

impl DropReason {
    pub const COUNT: usize = DropReason::TooBig as usize + 1;

    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Truncated,
        DropReason::UnknownEthertype,
        DropReason::NotOurMac,
        DropReason::BadIpv4Header,
        DropReason::BadIpChecksum,
        DropReason::Ipv4Options,
        DropReason::Fragment,
        DropReason::TtlExpired,
        DropReason::BadL4Header,
        DropReason::BadL4Checksum,
        DropReason::UnknownProtocol,
        DropReason::NotForUs,
        DropReason::UnknownVtep,
        DropReason::BadVxlan,
        DropReason::UnknownVni,
        DropReason::UnknownSource,
        DropReason::CrossNetwork,
        DropReason::NoRoute,
        DropReason::NoTask,
        DropReason::NoNeighbor,
        DropReason::ArpIgnored,
        DropReason::BadArp,
        DropReason::NoHeadroom,
        DropReason::FlowEnded,
        DropReason::HandoffFull,
        DropReason::NoNatPort,
        DropReason::TooBig,
    ];

    /// The name used in `meshctl stats` and Prometheus labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::UnknownEthertype => "unknown_ethertype",
            DropReason::NotOurMac => "not_our_mac",
            DropReason::BadIpv4Header => "bad_ipv4_header",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::Ipv4Options => "ipv4_options",
            DropReason::Fragment => "fragment",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::BadL4Header => "bad_l4_header",
            DropReason::BadL4Checksum => "bad_l4_checksum",
            DropReason::UnknownProtocol => "unknown_protocol",
            DropReason::NotForUs => "not_for_us",
            DropReason::UnknownVtep => "unknown_vtep",
            DropReason::BadVxlan => "bad_vxlan",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::UnknownSource => "unknown_source",
            DropReason::CrossNetwork => "cross_network",
            DropReason::NoRoute => "no_route",
            DropReason::NoTask => "no_task",
            DropReason::NoNeighbor => "no_neighbor",
            DropReason::ArpIgnored => "arp_ignored",
            DropReason::BadArp => "bad_arp",
            DropReason::NoHeadroom => "no_headroom",
            DropReason::FlowEnded => "flow_ended",
            DropReason::HandoffFull => "handoff_full",
            DropReason::NoNatPort => "no_nat_port",
            DropReason::TooBig => "too_big",
        }
    }
}

/// One worker's counters. Plain integers: only the worker writes them; readers get copies
/// published by the worker (see `worker.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub rx: u64,
    pub tx_uplink: u64,
    pub tx_tasks: u64,
    pub to_host: u64,
    pub handoff_out: u64,
    pub arp_replies: u64,
    pub new_flows: u64,
    pub active_flows: u64,
    pub flows_expired: u64,
    pub flows_evicted: u64,
    pub flows_ended: u64,
    pub resets_sent: u64,
    /// SYNs and SYN-ACKs whose TCP MSS was lowered to what the overlay carries.
    pub mss_clamped: u64,
    /// ICMP "fragmentation needed" answers sent for too-big packets with DF set (each such
    /// packet is also counted as a `too_big` drop).
    pub icmp_frag_needed: u64,
    /// Frames the ports dropped below the pipeline (see [`crate::port::PortCounters`]), totals
    /// since they opened, refreshed by the worker about every 10 ms: the kernel found the RX
    /// ring full; a received frame did not fit a buffer; the TX ring was full; a frame to send
    /// had a bad length.
    pub port_rx_dropped: u64,
    pub port_rx_too_long: u64,
    pub port_tx_full: u64,
    pub port_tx_bad_len: u64,
    pub drops: [u64; DropReason::COUNT],
}

impl WorkerStats {
    /// Number of plain counters before the drop counters in [`Self::to_array`].
    pub const FIELDS: usize = 18;

    /// Names of the plain counters, in [`Self::to_array`] order.
    pub const NAMES: [&'static str; Self::FIELDS] = [
        "rx",
        "tx_uplink",
        "tx_tasks",
        "to_host",
        "handoff_out",
        "arp_replies",
        "new_flows",
        "active_flows",
        "flows_expired",
        "flows_evicted",
        "flows_ended",
        "resets_sent",
        "mss_clamped",
        "icmp_frag_needed",
        "port_rx_dropped",
        "port_rx_too_long",
        "port_tx_full",
        "port_tx_bad_len",
    ];

    /// All counters as one array: the plain ones, then one per drop reason.
    pub fn to_array(&self) -> [u64; Self::FIELDS + DropReason::COUNT] {
        let mut a = [0u64; Self::FIELDS + DropReason::COUNT];
        let plain = [
            self.rx,
            self.tx_uplink,
            self.tx_tasks,
            self.to_host,
            self.handoff_out,
            self.arp_replies,
            self.new_flows,
            self.active_flows,
            self.flows_expired,
            self.flows_evicted,
            self.flows_ended,
            self.resets_sent,
            self.mss_clamped,
            self.icmp_frag_needed,
            self.port_rx_dropped,
            self.port_rx_too_long,
            self.port_tx_full,
            self.port_tx_bad_len,
        ];
        a[..Self::FIELDS].copy_from_slice(&plain);
        a[Self::FIELDS..].copy_from_slice(&self.drops);
        a
    }

    pub fn from_array(a: &[u64; Self::FIELDS + DropReason::COUNT]) -> Self {
        let mut drops = [0u64; DropReason::COUNT];
        drops.copy_from_slice(&a[Self::FIELDS..]);
        WorkerStats {
            rx: a[0],
            tx_uplink: a[1],
            tx_tasks: a[2],
            to_host: a[3],
            handoff_out: a[4],
            arp_replies: a[5],
            new_flows: a[6],
            active_flows: a[7],
            flows_expired: a[8],
            flows_evicted: a[9],
            flows_ended: a[10],
            resets_sent: a[11],
            mss_clamped: a[12],
            icmp_frag_needed: a[13],
            port_rx_dropped: a[14],
            port_rx_too_long: a[15],
            port_tx_full: a[16],
            port_tx_bad_len: a[17],
            drops,
        }
    }

    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another worker's counters (for totals).
    pub fn add(&mut self, o: &WorkerStats) {
        self.rx += o.rx;
        self.tx_uplink += o.tx_uplink;
        self.tx_tasks += o.tx_tasks;
        self.to_host += o.to_host;
        self.handoff_out += o.handoff_out;
        self.arp_replies += o.arp_replies;
        self.new_flows += o.new_flows;
        self.active_flows += o.active_flows;
        self.flows_expired += o.flows_expired;
        self.flows_evicted += o.flows_evicted;
        self.flows_ended += o.flows_ended;
        self.resets_sent += o.resets_sent;
        self.mss_clamped += o.mss_clamped;
        self.icmp_frag_needed += o.icmp_frag_needed;
        self.port_rx_dropped += o.port_rx_dropped;
        self.port_rx_too_long += o.port_rx_too_long;
        self.port_tx_full += o.port_tx_full;
        self.port_tx_bad_len += o.port_tx_bad_len;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_through_the_array() {
        let mut s = WorkerStats {
            rx: 1,
            resets_sent: 12,
            new_flows: 7,
            ..Default::default()
        };
        s.drop(DropReason::TooBig);
        assert_eq!(WorkerStats::from_array(&s.to_array()), s);
        // Every plain counter has its own slot, in NAMES order.
        let s = WorkerStats {
            mss_clamped: 13,
            icmp_frag_needed: 14,
            port_rx_dropped: 15,
            port_rx_too_long: 16,
            port_tx_full: 17,
            port_tx_bad_len: 18,
            ..Default::default()
        };
        let a = s.to_array();
        for (i, name) in WorkerStats::NAMES.iter().enumerate().skip(12) {
            assert_eq!(a[i], i as u64 + 1, "{name}");
        }
        assert_eq!(WorkerStats::from_array(&a), s);
        let mut total = s.clone();
        total.add(&s);
        assert_eq!((total.port_rx_dropped, total.port_tx_bad_len), (30, 36));
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
/// connections (new flows). A fixed open-addressing table allocated once; a task seen when the
/// table is full is not counted (and `overflow` says so).
#[derive(Debug)]
pub struct TaskCounters {
    keys: Box<[u64]>,
    vals: Box<[[u64; 3]]>,
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

impl TaskCounters {
    /// Room for `capacity` tasks (rounded up to a power of two, twice over for probing).
    pub fn new(capacity: usize) -> Self {
        let n = (capacity * 2).next_power_of_two().max(16);
        TaskCounters {
            keys: vec![0u64; n].into_boxed_slice(),
            vals: vec![[0u64; 3]; n].into_boxed_slice(),
            mask: n - 1,
            used: Vec::with_capacity(n / 2),
            limit: n / 2,
            overflow: 0,
        }
    }

    /// The counters of task `uid` (never 0), claiming a slot on first use.
    #[inline]
    pub fn entry(&mut self, uid: u64) -> Option<&mut [u64; 3]> {
        let i = self.slot(uid);
        self.vals.get_mut(usize::from(i))
    }

    /// The slot of task `uid`'s counters, claimed on first use; `u16::MAX` when full. A slot,
    /// once given, stays the task's (slots are never freed), so flows can keep it.
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

    /// Every counted task: (uid, [packets, bytes, connections]).
    pub fn iter(&self) -> impl Iterator<Item = (u64, [u64; 3])> + '_ {
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
        let got: std::collections::BTreeMap<u64, [u64; 3]> = t.iter().collect();
        assert_eq!(got[&3], [3, 100, 0]);
        assert_eq!(got.len(), 8);
    }
}
