//! The host side: what the mesh answers for itself, off the workers' fast path.
//!
//! Frames the pipeline hands over with `Verdict::Host` arrive in [`HostStack::input`], tagged
//! with the port they came in on; what the host side sends comes out of
//! [`HostStack::take_output`], tagged with the port to send it on. The stack reads no clock and
//! spawns nothing: the daemon's host thread (or the in-memory simulation) gives it the time, the
//! current service table and the pipeline's neighbour table.
//!
//! - [`lane`]: per overlay network, a smoltcp interface with the network's gateway address (and
//!   its IPv6 twin on a dual-stack network): the embedded DNS resolver ([`dns`], [`resolver`])
//!   on UDP and TCP port 53, and the health probes' TCP connections to this node's tasks;
//! - [`health`]: which of this node's tasks to check when, and their verdicts;
//! - [`gossip`]: the verdicts this node tells its peers and hears from them;
//! - [`stateless`]: RST, ICMP port unreachable and echo replies for the node's address, the
//!   VIPs, the endpoints and the gateways (in place, for any number of addresses).
//!
//! Health verdicts are runtime state: [`HostStack::take_view`] hands a changed [`HealthView`]
//! to whoever compiles tables (the controller), which layers it over the desired state and
//! publishes a new table generation; nothing of it is persisted.

pub mod defrag;
pub mod dns;
pub mod gossip;
pub mod health;
pub mod lane;
pub mod outlier;
pub mod resolver;
mod stateless;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::pipeline::passive::Seen;
use ctl::model::{Health, HEALTH_GOSSIP_PORT};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress,
    IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, Ipv6Address, UdpPacket, UdpRepr,
};

pub use stateless::{answer, HostAction};

use crate::balance::table::{AddrKind, HealthView, NetIdx, NodeIdx, ServiceTable};
use crate::buf::PortId;
use crate::neigh::Neighbors;
use dns::{AnswerSpec, Malformed, Rcode};
use health::{Monitor, Outcome};
use lane::{DnsRequest, Lane, Via};
use resolver::{Resolution, Rng};

const ETH: usize = 14;
/// How long a query forwarded upstream waits for its answer.
const FORWARD_MS: u64 = 3000;
/// The most queries waiting for an upstream answer at once.
const FORWARD_MAX: usize = 4096;
/// How often the combined view is recomputed without an event (for peers gone quiet).
const RECOMPUTE_MS: u64 = 250;

/// An upstream resolver for names that are not the mesh's (`meshd --dns-upstream`): the daemon
/// gives a kernel UDP socket in meshd's own namespace; the simulation a fake.
pub trait Upstream: Send {
    /// Sends a query; false when it could not.
    fn send(&mut self, msg: &[u8]) -> bool;
    /// An answer that arrived, if any (never blocks).
    fn recv(&mut self) -> Option<Vec<u8>>;
}

impl std::fmt::Debug for dyn Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstream")
    }
}

/// The host side's counters (`meshctl stats`, under `host`), defined in the control protocol.
pub use ctl::proto::HostCounters as HostStats;

/// A task's health as `service ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthDetail {
    pub health: Health,
    pub streak: u32,
    /// Why it is not healthy (the last failed check), empty when healthy.
    pub error: String,
    /// The node that checks it (its own).
    pub node: String,
}

/// What the host thread shares with the control thread.
#[derive(Debug, Default)]
pub struct HostShared {
    pub stats: Mutex<HostStats>,
    /// Every health-checked task's detail by uid, local and reported by peers.
    pub board: Mutex<HashMap<u64, HealthDetail>>,
}

/// The host side's fixed settings.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub uplink_mac: [u8; 6],
    pub tasks_mac: [u8; 6],
    /// Seeds the answers' shuffling and smoltcp's initial sequence numbers.
    pub seed: u64,
    /// The uplink's MTU: answers longer than it (or than a network's MTU on the tasks side)
    /// go out in fragments.
    pub uplink_mtu: u16,
    /// The health gossip's keys: gossip is signed and checked when there are any.
    pub gossip_keys: gossip::Keyring,
}

/// A peer's report about one of its tasks.
#[derive(Debug, Clone)]
struct Remote {
    health: Health,
    streak: u8,
    error: String,
    heard_at: u64,
    node: NodeIdx,
}

/// A query waiting for the upstream's answer.
#[derive(Debug)]
struct Forward {
    vni: u32,
    req: DnsRequest,
    id: u16,
    deadline: u64,
}

/// The whole host side of a node.
#[derive(Debug)]
pub struct HostStack {
    cfg: HostConfig,
    generation: Option<u64>,
    lanes: Vec<Lane>,
    monitor: Monitor,
    remote: HashMap<u64, Remote>,
    /// Each task's uid → its node, from the current table.
    placement: HashMap<u64, NodeIdx>,
    /// The table generation `placement` was made from (made when gossip needs it: a mesh of
    /// 100,000 tasks does not rebuild it per change when no health check runs).
    placement_of: Option<u64>,
    view: HealthView,
    view_dirty: bool,
    /// Passive health: what the workers saw of the tasks' answers, judged.
    outliers: outlier::Outliers,
    /// Why each ejected task is out (for `service ps`).
    ejected_why: HashMap<u64, String>,
    board: HashMap<u64, HealthDetail>,
    board_dirty: bool,
    recompute_at: u64,
    next_gossip: u64,
    gossip_soon: bool,
    rng: Rng,
    pub stats: HostStats,
    out: Vec<(PortId, Vec<u8>)>,
    /// Fragmented datagrams for the host side (a large ping), being put together.
    defrag: defrag::Reassembly,
    upstream: Option<Box<dyn Upstream>>,
    forwards: HashMap<u16, Forward>,
    next_fwd: u16,
    arp_asked: HashMap<Ipv4Address, u64>,
    /// The wall clock (ms since the Unix epoch) when the stack was made: gossip's times.
    wall_at_start: u64,
    /// The host clock's first reading (`now` of the first call that needed the wall clock).
    first_now: Option<u64>,
    /// The time of the last gossip datagram sealed.
    gossip_sent_at: u64,
    /// The time of the last signed gossip taken from each peer.
    gossip_heard: HashMap<NodeIdx, u64>,
}

/// The VLAN a frame the host stack sends on the tasks port goes out on: its task's
/// ([`ServiceTable::local_vlan`] of the IPv4 destination, of the address an ARP request asks
/// for, or of the IPv4 address an IPv6 destination is the twin of); 0 for anything else.
pub fn tasks_frame_vlan(t: &ServiceTable, f: &[u8]) -> u16 {
    let at = match f.get(12..14) {
        Some([0x08, 0x00]) => 30,
        Some([0x08, 0x06]) => 38,
        Some([0x86, 0xdd]) => {
            let Some(v4) = low32_at(f, ETH + 24) else {
                return 0;
            };
            let twin = t
                .addr(v4)
                .and_then(|e| t.subnet6(e.net))
                .map(|p| p.embed(v4));
            let dst = f
                .get(ETH + 24..ETH + 40)
                .and_then(|d| <[u8; 16]>::try_from(d).ok());
            return if twin.map(|a| a.octets()) == dst {
                t.local_vlan(v4)
            } else {
                0
            };
        }
        _ => return 0,
    };
    match f.get(at..at + 4) {
        Some(&[a, b, c, d]) => t.local_vlan(Ipv4Address::new(a, b, c, d)),
        _ => 0,
    }
}

/// The IPv4 address in the last 32 bits of the IPv6 address at `at` in `f` (a twin's).
fn low32_at(f: &[u8], at: usize) -> Option<Ipv4Address> {
    match f.get(at + 12..at + 16) {
        Some(&[a, b, c, d]) => Some(Ipv4Address::new(a, b, c, d)),
        _ => None,
    }
}

fn key(a: Ipv4Address) -> u32 {
    u32::from_be_bytes(a.octets())
}

impl HostStack {
    pub fn new(cfg: HostConfig) -> Self {
        let rng = Rng::new(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
        HostStack {
            cfg,
            generation: None,
            lanes: Vec::new(),
            monitor: Monitor::new(),
            remote: HashMap::new(),
            placement: HashMap::new(),
            placement_of: None,
            view: HealthView::new(),
            view_dirty: false,
            outliers: outlier::Outliers::default(),
            ejected_why: HashMap::new(),
            board: HashMap::new(),
            board_dirty: false,
            recompute_at: 0,
            next_gossip: 0,
            gossip_soon: false,
            rng,
            stats: HostStats::default(),
            out: Vec::new(),
            defrag: defrag::Reassembly::default(),
            upstream: None,
            forwards: HashMap::new(),
            next_fwd: 1,
            arp_asked: HashMap::new(),
            wall_at_start: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            first_now: None,
            gossip_sent_at: 0,
            gossip_heard: HashMap::new(),
        }
    }

    /// Forwards names that are not the mesh's to `up`.
    pub fn set_upstream(&mut self, up: Box<dyn Upstream>) {
        self.upstream = Some(up);
    }

    /// Follows a new table: a lane per network (kept while its gateway stays), the tasks to
    /// check, the peers' reports about tasks that still exist.
    fn sync(&mut self, t: &ServiceTable, now: u64) {
        if self.generation == Some(t.generation) {
            return;
        }
        self.generation = Some(t.generation);
        let mut lanes = Vec::with_capacity(t.networks.len());
        for (i, n) in t.networks.iter().enumerate() {
            let (gw, prefix) = (n.gateway, n.subnet.prefix);
            let gw6 = NetIdx::try_from(i)
                .ok()
                .and_then(|i| t.subnet6(i))
                .map(|p| (p.embed(gw), p.prefix));
            let existing = self.lanes.iter().position(|l| {
                l.vni == n.vni && l.gateway == gw && l.prefix == prefix && l.gateway6 == gw6
            });
            let lane = match existing {
                Some(i) => Some(self.lanes.swap_remove(i)),
                None => Lane::new(
                    n.vni,
                    gw,
                    prefix,
                    gw6,
                    self.cfg.tasks_mac,
                    self.cfg.seed ^ now,
                    now,
                ),
            };
            if let Some(l) = lane {
                lanes.push(l);
            }
        }
        self.lanes = lanes;
        self.monitor.sync(t, now);
        self.outliers.retain(|uid| t.task_alive(uid));
        self.ejected_why.retain(|uid, _| t.task_alive(*uid));
        if !self.remote.is_empty() {
            self.place(t);
            let placement = &self.placement;
            self.remote
                .retain(|uid, r| placement.get(uid) == Some(&r.node));
        }
        self.recompute(t, now);
    }

    /// Makes `placement` (which node runs each task) follow `t`.
    fn place(&mut self, t: &ServiceTable) {
        if self.placement_of != Some(t.generation) {
            self.placement = t
                .tasks
                .iter()
                .filter(|te| !te.removed)
                .map(|te| (te.uid, te.node))
                .collect();
            self.placement_of = Some(t.generation);
        }
    }

    /// A frame the pipeline handed over, with the port it came in on.
    pub fn input(&mut self, t: &ServiceTable, port: PortId, frame: &[u8], now: u64) {
        self.sync(t, now);
        self.stats.frames += 1;
        if frame.get(12..14) == Some(&[0x86, 0xdd]) {
            // The pipeline hands over IPv6 to the node's address (echo, TCP, UDP, and their
            // pieces) and a task's to a VIP's or a gateway's twin: put together, then answered,
            // as long as the request that came in, back where it came from.
            let added = self.defrag.add6(frame, now);
            if let Some(whole) = self.joined(added, frame) {
                // TCP or UDP to the gateway's twin: its lane (the resolver, over IPv6).
                if port == PortId::Tasks {
                    if let Some(lane) = self.lane6(&whole) {
                        lane.input(&whole);
                        return;
                    }
                }
                let mtu = match port {
                    PortId::Uplink => self.cfg.uplink_mtu,
                    // The asker's twin holds its IPv4 address in its last 32 bits.
                    PortId::Tasks => self.task_mtu(t, low32_at(&whole, ETH + 8)),
                };
                self.stateless6(port, &whole, mtu);
            }
            return;
        }
        let added = self.defrag.add(frame, now);
        let Some(whole) = self.joined(added, frame) else {
            return;
        };
        let frame = &*whole;
        let Some((src, dst, proto, l4)) = ipv4(frame) else {
            self.stats.ignored += 1;
            return;
        };
        match port {
            PortId::Uplink => {
                let me = t.node(t.local);
                if dst != t.node_addr && dst != me.vtep {
                    // A peer's overlay frame for a VIP or a gateway: answered by the asker's own
                    // node, never across the tunnel.
                    self.stats.ignored += 1;
                    return;
                }
                if proto == IpProtocol::Udp {
                    if let Ok(u) = UdpPacket::new_checked(l4) {
                        if u.dst_port() == HEALTH_GOSSIP_PORT {
                            self.gossip_in(t, src, u.payload(), now);
                            return;
                        }
                    }
                }
            }
            PortId::Tasks => {
                if matches!(proto, IpProtocol::Tcp | IpProtocol::Udp) {
                    if let Some(e) = t.addr(dst) {
                        if e.kind == AddrKind::Gateway {
                            let vni = t.net(e.net).vni;
                            if let Some(lane) = self
                                .lanes
                                .iter_mut()
                                .find(|l| l.vni == vni && l.gateway == dst)
                            {
                                lane.input(frame);
                                return;
                            }
                        }
                    }
                }
            }
        }
        // The answer goes back to the sender: on the uplink, or to a task on its network.
        let mtu = match port {
            PortId::Uplink => self.cfg.uplink_mtu,
            PortId::Tasks => self.task_mtu(t, Some(src)),
        };
        self.stateless(port, frame, mtu);
    }

    /// The lane whose gateway's twin IPv6 frame `f` (TCP or UDP, no extension header) is to.
    fn lane6(&mut self, f: &[u8]) -> Option<&mut Lane> {
        let h = crate::pipeline::parse_ipv6(f, ETH).ok()?;
        if !matches!(f.get(ETH + 6), Some(6 | 17)) {
            return None;
        }
        self.lanes
            .iter_mut()
            .find(|l| l.gateway6.is_some_and(|(g, _)| g == h.dst))
    }

    /// The MTU of the network of task `src`.
    fn task_mtu(&self, t: &ServiceTable, src: Option<Ipv4Address>) -> u16 {
        let uplink = self.cfg.uplink_mtu;
        src.and_then(|a| t.addr(a))
            .map_or(uplink.saturating_sub(ctl::VXLAN_OVERHEAD), |e| {
                t.net(e.net).mtu_on(uplink)
            })
    }

    /// The datagram `frame` is, or completes (`added`, what the defragmenter made of it),
    /// counted; `None` while it waits for more, or when its datagram was dropped.
    fn joined<'a>(
        &mut self,
        added: defrag::Added,
        frame: &'a [u8],
    ) -> Option<std::borrow::Cow<'a, [u8]>> {
        match added {
            defrag::Added::Whole => Some(frame.into()),
            defrag::Added::Pending => None,
            defrag::Added::Dropped => {
                self.stats.fragments_dropped += 1;
                None
            }
            defrag::Added::Done(whole) => {
                self.stats.reassembled += 1;
                Some(whole.into())
            }
        }
    }

    /// The answers of a host with no sockets (RST, port unreachable, echo reply), in
    /// fragments of at most `mtu` bytes of IPv4 when longer.
    fn stateless(&mut self, port: PortId, frame: &[u8], mtu: u16) {
        let Some(reply) = stateless::answer_frame(frame) else {
            self.stats.ignored += 1;
            return;
        };
        match ipv4(&reply).map(|(_, _, p, l4)| (p, l4.first().copied())) {
            Some((IpProtocol::Tcp, _)) => self.stats.rst_sent += 1,
            Some((IpProtocol::Icmp, Some(0))) => self.stats.echo_replies += 1,
            Some((IpProtocol::Icmp, _)) => self.stats.unreachable_sent += 1,
            _ => {}
        }
        for f in defrag::split(&reply, usize::from(mtu)) {
            self.out.push((port, f));
        }
    }

    /// The answers of a host with no sockets to IPv6 (RST, port unreachable, echo reply), out
    /// of `port`, in pieces of at most `mtu` bytes when longer (a large ping's echo).
    fn stateless6(&mut self, port: PortId, frame: &[u8], mtu: u16) {
        let Some(reply) = stateless::answer_frame(frame) else {
            self.stats.ignored += 1;
            return;
        };
        let l4 = crate::pipeline::parse_ipv6(&reply, ETH)
            .ok()
            .map(|h| (h.proto, reply.get(h.l4).copied()));
        match l4 {
            Some((6, _)) => self.stats.rst_sent += 1,
            Some((58, Some(129))) => self.stats.echo_replies += 1,
            Some((58, _)) => self.stats.unreachable_sent += 1,
            _ => {}
        }
        // Casts: an identification need only differ between datagrams close in time.
        #[allow(clippy::cast_possible_truncation)]
        let id = self.rng.next_u64() as u32;
        for f in defrag::split6(&reply, usize::from(mtu), id) {
            self.out.push((port, f));
        }
    }

    /// Runs everything that is due: health probes, the lanes (answers, retransmissions), the
    /// upstream's answers, gossip.
    pub fn poll(&mut self, t: &ServiceTable, neigh: &Neighbors, now: u64) {
        self.sync(t, now);
        let mut changed = false;
        // First what arrived: probes' answers count before their deadlines are judged (a host
        // thread kept off the CPU for a while must not fail checks whose answers are waiting).
        for i in 0..self.lanes.len() {
            let ev = self.lanes[i].poll(now, neigh);
            self.stats.dns_tcp_refused += ev.dns_tcp_refused;
            for (uid, seq, o) in ev.outcomes {
                match o {
                    Outcome::Pass => self.stats.checks_passed += 1,
                    Outcome::Fail(_) => self.stats.checks_failed += 1,
                }
                if self.monitor.finish(uid, seq, o, now) {
                    self.verdict_changed(uid);
                    changed = true;
                }
            }
            for req in ev.dns {
                self.serve_dns(t, i, req, now);
            }
        }
        // Checks past their deadline, then checks to start.
        for (uid, seq, ch) in self.monitor.expire(now) {
            if ch {
                self.verdict_changed(uid);
                changed = true;
            }
            self.stats.checks_failed += 1;
            for l in &mut self.lanes {
                l.abort_probe(uid, seq, now);
            }
        }
        for p in self.monitor.due(now) {
            let vni = t.networks.get(usize::from(p.net)).map(|n| n.vni);
            let (uid, seq) = (p.uid, p.seq);
            self.stats.checks_started += 1;
            let started = match self.lanes.iter_mut().find(|l| Some(l.vni) == vni) {
                Some(l) => l.start_probe(p, now),
                None => Err(Outcome::Fail("no interface on the task's network".into())),
            };
            if let Err(o) = started {
                self.stats.checks_failed += 1;
                if self.monitor.finish(uid, seq, o, now) {
                    self.verdict_changed(uid);
                    changed = true;
                }
            }
        }
        // Send what the sockets have now: answers, SYNs of new probes, RSTs of ended ones.
        for l in &mut self.lanes {
            l.flush(now, neigh);
            for f in l.out.drain(..) {
                self.out.push((PortId::Tasks, f));
            }
        }
        self.upstream_poll(neigh, now);
        if changed {
            self.gossip_soon = true;
        }
        for uid in self.outliers.expire(now) {
            self.returned(uid);
            if let Some(te) = t.task_by_uid(uid).and_then(|i| t.tasks.get(i as usize)) {
                tracing::info!(task = %te.name, "passive health: the ejection ended; the task takes new connections from this node again");
            }
            changed = true;
        }
        if changed || now >= self.recompute_at {
            self.recompute(t, now);
        }
        self.gossip_out(t, neigh, now);
    }

    /// What a worker saw of task `uid`'s answer to a new connection (passive health).
    pub fn seen(&mut self, t: &ServiceTable, uid: u64, seen: Seen, now: u64) {
        self.sync(t, now);
        let Some(te) = t.task_by_uid(uid).and_then(|i| t.tasks.get(i as usize)) else {
            return;
        };
        let Some(svc) = t.services.get(usize::from(te.service)) else {
            return;
        };
        let siblings: Vec<u64> = svc
            .tasks
            .iter()
            .filter_map(|&i| t.tasks.get(i as usize).map(|x| x.uid))
            .collect();
        let policy = svc.outlier;
        match self.outliers.saw(uid, seen, now, &policy, &siblings) {
            outlier::Judged::Nothing => {}
            outlier::Judged::Held => {
                self.stats.outlier_held += 1;
            }
            outlier::Judged::Ejected(ms) => {
                self.stats.outlier_ejections += 1;
                let what = match seen {
                    Seen::Unanswered => "went unanswered",
                    Seen::Unreachable => "were answered by ICMP unreachable",
                    _ => "were refused (RST)",
                };
                let why = format!(
                    "ejected by node {} for {} s: {} new connections in a row {what}",
                    t.node(t.local).name,
                    ms.div_ceil(1000),
                    policy.consecutive
                );
                tracing::warn!(task = %te.name, "passive health: {why}");
                self.ejected_why.insert(uid, why);
                self.recompute(t, now);
            }
        }
    }

    /// A local task's check gave a new verdict: logged; a pass ends an ejection (the check
    /// says it serves, as Envoy's successful_active_health_check_uneject_host).
    fn verdict_changed(&mut self, uid: u64) {
        self.log_verdict(uid);
        if self
            .monitor
            .verdict(uid)
            .is_some_and(|v| v.health == Health::Healthy)
        {
            self.forgive(uid);
        }
    }

    /// Ends task `uid`'s ejection before its time (a check passed), if it is ejected.
    fn forgive(&mut self, uid: u64) {
        if self.outliers.forgive(uid) {
            self.returned(uid);
        }
    }

    /// Task `uid`'s ejection ended: counted, and its reason forgotten.
    fn returned(&mut self, uid: u64) {
        self.ejected_why.remove(&uid);
        self.stats.outlier_returns += 1;
    }

    /// Logs a local task's new verdict.
    fn log_verdict(&self, uid: u64) {
        if let (Some(name), Some(v)) = (self.monitor.name(uid), self.monitor.verdict(uid)) {
            match v.health {
                Health::Unhealthy => {
                    tracing::warn!(task = name, failed = v.streak, last = %v.last_error, "task unhealthy")
                }
                h => tracing::info!(task = name, health = h.as_str(), "task health"),
            }
        }
    }

    /// Frames to send, with their port.
    pub fn take_output(&mut self) -> Vec<(PortId, Vec<u8>)> {
        std::mem::take(&mut self.out)
    }

    /// The health view, when it changed since last taken: compile it into the next table.
    pub fn take_view(&mut self) -> Option<HealthView> {
        if !self.view_dirty {
            return None;
        }
        self.view_dirty = false;
        Some(self.view.clone())
    }

    /// The current health view.
    pub fn view(&self) -> &HealthView {
        &self.view
    }

    /// Every checked task's detail, when it changed since last taken.
    pub fn take_board(&mut self) -> Option<HashMap<u64, HealthDetail>> {
        if !self.board_dirty {
            return None;
        }
        self.board_dirty = false;
        Some(self.board.clone())
    }

    /// The detail of a task's health.
    pub fn detail(&self, uid: u64) -> Option<&HealthDetail> {
        self.board.get(&uid)
    }

    /// When [`HostStack::poll`] next has something to do, at the latest.
    pub fn next_wakeup(&mut self, now: u64) -> u64 {
        let mut at = self.recompute_at.max(now + 1);
        if let Some(m) = self.monitor.next_wakeup() {
            at = at.min(m);
        }
        if !self.monitor.is_empty() {
            at = at.min(self.next_gossip);
        }
        for l in &mut self.lanes {
            if let Some(p) = l.poll_at(now) {
                at = at.min(p);
            }
        }
        if !self.forwards.is_empty() {
            // The upstream's answers are looked for every millisecond while queries wait (the
            // host thread sleeps on its bell, which the upstream's socket does not ring).
            at = at.min(now + 1);
        }
        if let Some(d) = self.outliers.next_end() {
            at = at.min(d);
        }
        at.max(now)
    }

    /// Health probes under way.
    pub fn probes(&self) -> usize {
        self.lanes.iter().map(Lane::probes).sum()
    }

    // ---- DNS -----------------------------------------------------------------------------

    fn serve_dns(&mut self, t: &ServiceTable, lane: usize, req: DnsRequest, now: u64) {
        self.stats.dns_queries += 1;
        if matches!(req.via, Via::Tcp(_)) {
            self.stats.dns_tcp_queries += 1;
        }
        let Some(l) = self.lanes.get(lane) else {
            return;
        };
        let (vni, gw) = (l.vni, l.gateway);
        // An asker over IPv6 is the task its twin names (the pipeline checked the twin is the
        // sender's own).
        let from = match req.from.addr {
            IpAddress::Ipv4(a) => a,
            IpAddress::Ipv6(a) => match lane::twin_of(l.gateway6, a) {
                Some(a) => a,
                None => {
                    self.stats.dns_dropped += 1;
                    return;
                }
            },
        };
        let Some(net) = t.addr(gw).map(|e| e.net) else {
            return;
        };
        let ra = self.upstream.is_some();
        let reply = match dns::parse_query(&req.msg) {
            Err(Malformed::Drop(_)) => {
                self.stats.dns_dropped += 1;
                return;
            }
            Err(Malformed::Answer {
                id,
                opcode,
                rd,
                rcode,
            }) => {
                self.count(rcode);
                dns::build_error(id, opcode, rd, rcode)
            }
            Ok(q) => {
                let limit = match req.via {
                    Via::Udp => q.udp_limit(),
                    Via::Tcp(_) => usize::from(u16::MAX),
                };
                let spec = |rcode, aa| AnswerSpec {
                    rcode,
                    aa,
                    ra,
                    limit,
                };
                if q.edns.is_some_and(|e| e.version != 0) {
                    //= https://www.rfc-editor.org/rfc/rfc6891#section-6.1.3
                    //# If a responder does not implement the VERSION level of the request, then
                    //# it MUST respond with RCODE=BADVERS.
                    self.count(Rcode::BadVers);
                    dns::build_answer(&q, &[], spec(Rcode::BadVers, false))
                } else {
                    match resolver::resolve(t, from, net, &q, &mut self.rng) {
                        Resolution::Answer { rcode, answers } => {
                            self.count(rcode);
                            let a = dns::build_answer(&q, &answers, spec(rcode, true));
                            if dns::parse_answer(&a).is_some_and(|p| p.tc) {
                                self.stats.dns_truncated += 1;
                            }
                            a
                        }
                        Resolution::NotOurs if self.upstream.is_some() => {
                            let id = q.id;
                            self.forward(vni, req, id, now);
                            return;
                        }
                        Resolution::NotOurs => {
                            self.count(Rcode::NxDomain);
                            dns::build_answer(&q, &[], spec(Rcode::NxDomain, true))
                        }
                    }
                }
            }
        };
        if let Some(l) = self.lanes.get_mut(lane) {
            if !l.answer(&req, &reply) {
                self.stats.dns_send_failed += 1;
            }
        }
    }

    fn count(&mut self, rcode: Rcode) {
        let s = &mut self.stats;
        match rcode {
            Rcode::NoError => s.dns_noerror += 1,
            Rcode::FormErr => s.dns_formerr += 1,
            Rcode::NxDomain => s.dns_nxdomain += 1,
            Rcode::NotImp => s.dns_notimp += 1,
            Rcode::Refused => s.dns_refused += 1,
            Rcode::BadVers => s.dns_badvers += 1,
            Rcode::ServFail => {}
        }
    }

    /// Sends a query that is not the mesh's to the upstream under an ID of ours.
    fn forward(&mut self, vni: u32, req: DnsRequest, id: u16, now: u64) {
        if self.forwards.len() >= FORWARD_MAX {
            self.stats.dns_dropped += 1;
            return;
        }
        let mut fid = self.next_fwd;
        while self.forwards.contains_key(&fid) {
            fid = fid.wrapping_add(1);
        }
        self.next_fwd = fid.wrapping_add(1);
        let mut msg = req.msg.clone();
        dns::set_id(&mut msg, fid);
        let Some(up) = self.upstream.as_mut() else {
            return;
        };
        if up.send(&msg) {
            self.stats.dns_forwarded += 1;
            self.forwards.insert(
                fid,
                Forward {
                    vni,
                    req,
                    id,
                    deadline: now + FORWARD_MS,
                },
            );
        } else {
            self.stats.dns_send_failed += 1;
        }
    }

    fn upstream_poll(&mut self, neigh: &Neighbors, now: u64) {
        let mut answers = Vec::new();
        if let Some(up) = self.upstream.as_mut() {
            while let Some(m) = up.recv() {
                answers.push(m);
            }
        }
        for mut m in answers {
            let Some((fid, true)) = dns::id_of(&m) else {
                continue;
            };
            let Some(f) = self.forwards.remove(&fid) else {
                continue;
            };
            dns::set_id(&mut m, f.id);
            self.stats.dns_upstream_answers += 1;
            if let Some(l) = self.lanes.iter_mut().find(|l| l.vni == f.vni) {
                if !l.answer(&f.req, &m) {
                    self.stats.dns_send_failed += 1;
                }
                l.flush(now, neigh);
                for fr in l.out.drain(..) {
                    self.out.push((PortId::Tasks, fr));
                }
            }
        }
        let before = self.forwards.len();
        self.forwards.retain(|_, f| f.deadline > now);
        self.stats.dns_upstream_timeouts += (before - self.forwards.len()) as u64;
    }

    // ---- health --------------------------------------------------------------------------

    /// Combines this node's verdicts and its peers' fresh reports into the view tables are
    /// compiled with, and the details `service ps` shows.
    fn recompute(&mut self, t: &ServiceTable, now: u64) {
        self.recompute_at = now + RECOMPUTE_MS;
        let mut view = HealthView::new();
        let mut board = HashMap::new();
        let me = t.node(t.local).name.clone();
        for (uid, v) in self.monitor.verdicts() {
            view.insert(uid, v.health);
            let error = if v.health == Health::Healthy {
                String::new()
            } else {
                v.last_error.clone()
            };
            board.insert(
                uid,
                HealthDetail {
                    health: v.health,
                    streak: v.streak,
                    error,
                    node: me.clone(),
                },
            );
        }
        for (uid, r) in &self.remote {
            let node = t
                .nodes
                .get(usize::from(r.node))
                .map(|n| n.name.clone())
                .unwrap_or_default();
            let age = now.saturating_sub(r.heard_at);
            if age > gossip::STALE_MS {
                let error = format!("no health report from node {node} for {} s", age / 1000);
                board.insert(
                    *uid,
                    HealthDetail {
                        health: Health::Starting,
                        streak: 0,
                        error,
                        node,
                    },
                );
                continue;
            }
            view.insert(*uid, r.health);
            let error = if r.health == Health::Healthy {
                String::new()
            } else {
                r.error.clone()
            };
            board.insert(
                *uid,
                HealthDetail {
                    health: r.health,
                    streak: u32::from(r.streak),
                    error,
                    node,
                },
            );
        }
        // A check that passes again (here or on the task's node) ends an ejection.
        let passed: Vec<u64> = self
            .outliers
            .out()
            .filter(|uid| {
                self.view.get(uid) == Some(&Health::Unhealthy)
                    && view.get(uid) == Some(&Health::Healthy)
            })
            .collect();
        for uid in passed {
            self.forgive(uid);
        }
        // This node's ejections over a check's verdict (its own; never gossiped), but not
        // over unhealthy: that one also ends the task's flows.
        for uid in self.outliers.out() {
            if view.get(&uid) == Some(&Health::Unhealthy) {
                continue;
            }
            view.insert(uid, Health::Ejected);
            board.insert(
                uid,
                HealthDetail {
                    health: Health::Ejected,
                    streak: 0,
                    error: self.ejected_why.get(&uid).cloned().unwrap_or_default(),
                    node: me.clone(),
                },
            );
        }
        if view != self.view {
            self.view = view;
            self.view_dirty = true;
            self.stats.health_changes += 1;
        }
        if board != self.board {
            self.board = board;
            self.board_dirty = true;
        }
    }

    fn gossip_in(&mut self, t: &ServiceTable, src: Ipv4Address, payload: &[u8], now: u64) {
        let Some(peer) = t.peer(src) else {
            self.stats.gossip_rejected += 1;
            return;
        };
        let payload = if self.cfg.gossip_keys.is_empty() {
            payload
        } else {
            // Signed with a key of ours, newer than the last from this node, and near our time.
            let wall = self.wall_ms(now);
            match self.cfg.gossip_keys.open(payload) {
                Ok((body, sent))
                    if sent.abs_diff(wall) <= gossip::SKEW_MS
                        && self.gossip_heard.get(&peer).is_none_or(|&last| sent > last) =>
                {
                    self.gossip_heard.insert(peer, sent);
                    body
                }
                _ => {
                    self.stats.gossip_forged += 1;
                    return;
                }
            }
        };
        let Some(msg) = gossip::decode(payload) else {
            self.stats.gossip_rejected += 1;
            return;
        };
        if msg.node != t.node(peer).name {
            self.stats.gossip_rejected += 1;
            return;
        }
        self.stats.gossip_received += 1;
        self.place(t);
        let mut changed = false;
        for e in msg.entries {
            // A node speaks for its own tasks only.
            if self.placement.get(&e.uid) != Some(&peer) {
                continue;
            }
            let prev = self
                .remote
                .get(&e.uid)
                .map(|r| (r.health, now.saturating_sub(r.heard_at) > gossip::STALE_MS));
            changed |= prev != Some((e.health, false));
            self.remote.insert(
                e.uid,
                Remote {
                    health: e.health,
                    streak: e.streak,
                    error: e.error,
                    heard_at: now,
                    node: peer,
                },
            );
        }
        if changed {
            self.recompute(t, now);
        } else {
            // Keep the details (streaks) current without waiting.
            self.recompute_at = self.recompute_at.min(now);
        }
    }

    /// Tells every peer this node's verdicts: every [`gossip::PERIOD_MS`], and at once after a
    /// change.
    // Casts: capped at u32::MAX just before.
    #[allow(clippy::cast_possible_truncation)]
    fn gossip_out(&mut self, t: &ServiceTable, neigh: &Neighbors, now: u64) {
        if self.monitor.is_empty() || !(self.gossip_soon || now >= self.next_gossip) {
            return;
        }
        self.gossip_soon = false;
        self.next_gossip = now + gossip::PERIOD_MS;
        let mut entries: Vec<gossip::Entry> = self
            .monitor
            .verdicts()
            .map(|(uid, v)| gossip::Entry {
                uid,
                health: v.health,
                streak: v.streak.min(255) as u8,
                age_ms: now.saturating_sub(v.since).min(u64::from(u32::MAX)) as u32,
                error: if v.health == Health::Healthy {
                    String::new()
                } else {
                    v.last_error.clone()
                },
            })
            .collect();
        entries.sort_by_key(|e| e.uid);
        let me = t.node(t.local);
        let (name, src, src6) = (me.name.clone(), me.vtep, me.vtep6);
        let mut dgrams = gossip::encode(&name, &entries);
        if !self.cfg.gossip_keys.is_empty() {
            for d in &mut dgrams {
                // Each datagram a later time than the one before, even within a millisecond.
                let sent = self.wall_ms(now).max(self.gossip_sent_at + 1);
                self.gossip_sent_at = sent;
                self.cfg.gossip_keys.seal(d, sent);
            }
        }
        for (i, n) in t.nodes.iter().enumerate() {
            if i == usize::from(t.local) {
                continue;
            }
            // Over an IPv6 underlay, from VTEP to VTEP by their IPv6 addresses.
            let v6 = src6.zip(n.vtep6);
            let Some(mac) = neigh.get(key(n.vtep)) else {
                self.ask_uplink(src, n.vtep, v6, now);
                continue;
            };
            for d in &dgrams {
                let macs = (self.cfg.uplink_mac, mac);
                let f = match v6 {
                    Some((s6, d6)) => {
                        udp6_frame(macs, s6, d6, (HEALTH_GOSSIP_PORT, HEALTH_GOSSIP_PORT), d)
                    }
                    None => udp_frame(macs.0, mac, src, n.vtep, HEALTH_GOSSIP_PORT, d),
                };
                self.out.push((PortId::Uplink, f));
                self.stats.gossip_sent += 1;
            }
        }
    }

    /// The wall clock (ms since the Unix epoch) at `now` of the host's clock: read once, at
    /// start, and moved on by the host clock, so every time the host sees comes from one clock.
    fn wall_ms(&mut self, now: u64) -> u64 {
        let first = *self.first_now.get_or_insert(now);
        self.wall_at_start.saturating_add(now.saturating_sub(first))
    }

    /// An ARP request on the uplink for a peer's VTEP (the pipeline learns the answer); over
    /// an IPv6 underlay (`v6`: our VTEP's and the peer's IPv6 addresses), a Neighbor
    /// Solicitation.
    fn ask_uplink(
        &mut self,
        src: Ipv4Address,
        dst: Ipv4Address,
        v6: Option<(Ipv6Address, Ipv6Address)>,
        now: u64,
    ) {
        if self
            .arp_asked
            .get(&dst)
            .is_some_and(|&at| now.saturating_sub(at) < 1000)
        {
            return;
        }
        self.arp_asked.insert(dst, now);
        if let Some((src6, target)) = v6 {
            let mut f = vec![0u8; 128];
            let mac = self.cfg.uplink_mac;
            if let Some(n) =
                crate::pipeline::underlay6::neighbor_solicitation(&mut f, mac, src6, target)
            {
                f.truncate(n);
                self.out.push((PortId::Uplink, f));
            }
            return;
        }
        let mut f = vec![0u8; ETH + 28];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&self.cfg.uplink_mac);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(self.cfg.uplink_mac),
            source_protocol_addr: src,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: dst,
        }
        .emit(&mut ArpPacket::new_unchecked(&mut f[ETH..]));
        self.out.push((PortId::Uplink, f));
    }
}

/// An IPv4 frame's source, destination, protocol and payload, checked.
fn ipv4(frame: &[u8]) -> Option<(Ipv4Address, Ipv4Address, IpProtocol, &[u8])> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(frame.get(ETH..)?).ok()?;
    let hl = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    let l4 = frame.get(ETH + hl..ETH + total)?;
    Some((ip.src_addr(), ip.dst_addr(), ip.next_header(), l4))
}

/// A UDP datagram in an Ethernet frame, checksums filled.
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Address,
    dst: Ipv4Address,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let udp = UdpRepr {
        src_port: port,
        dst_port: port,
    };
    let ipr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let mut f = vec![0u8; ETH + ipr.buffer_len() + 8 + payload.len()];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let (iph, rest) = f[ETH..].split_at_mut(ipr.buffer_len());
    ipr.emit(&mut Ipv4Packet::new_unchecked(iph), &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(rest),
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    f
}

/// A UDP datagram over IPv6 (`macs`: the sender's, the receiver's; `ports`: source,
/// destination), its checksum filled.
fn udp6_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv6Address,
    dst: Ipv6Address,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: ports.0,
        dst_port: ports.1,
    };
    let len = 8 + payload.len();
    let mut f = vec![0u8; ETH + 40 + len];
    let n = crate::wire::reply::ipv6_frame(&mut f, macs, src, dst, 64, IpProtocol::Udp, len, |b| {
        udp.emit(
            &mut UdpPacket::new_unchecked(b),
            &IpAddress::Ipv6(src),
            &IpAddress::Ipv6(dst),
            payload.len(),
            |b| b.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
    });
    f.truncate(n.unwrap_or(0));
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn stack() -> (HostStack, ServiceTable, Neighbors) {
        let mut s = crate::testkit::three_nodes();
        s.services[0].health = Some(ctl::model::HealthCheck {
            interval_ms: 100,
            timeout_ms: 50,
            ..Default::default()
        });
        let t = ServiceTable::build(&s, "n2", 1).unwrap_or_else(|e| panic!("{e}"));
        let h = HostStack::new(HostConfig {
            uplink_mac: [2, 0, 0, 0, 0, 1],
            tasks_mac: [2, 0, 0, 0, 0, 2],
            seed: 9,
            uplink_mtu: 1500,
            gossip_keys: gossip::Keyring::default(),
        });
        (h, t, Neighbors::new(64))
    }

    #[test]
    fn a_fragmented_ping_of_the_node_or_a_vip_is_answered_in_fragments() {
        let (mut h, t, _) = stack();
        let data: Vec<u8> = (0..4000).map(|i| (i % 251) as u8).collect();
        // From an outside client to the node (uplink, MTU 1500), and from a task to web's VIP
        // (tasks port, the network's 1450).
        let cases = [
            (
                PortId::Uplink,
                Ipv4Addr::new(10, 9, 0, 9),
                Ipv4Addr::new(192, 168, 1, 12),
                1500,
            ),
            (
                PortId::Tasks,
                Ipv4Addr::new(10, 0, 1, 11),
                Ipv4Addr::new(10, 0, 1, 2),
                1450,
            ),
        ];
        for (port, from, to, mtu) in cases {
            let ping = testkit::icmp_echo(
                [2, 0, 0, 0, 0, 9],
                [2, 0, 0, 0, 0, 1],
                from,
                to,
                3,
                4,
                &data,
            );
            for f in testkit::fragment(&ping, 1500, 42).iter().rev() {
                h.input(&t, port, f, 1);
            }
            let out = h.take_output();
            assert!(out.len() >= 3, "{port:?}: {} frames", out.len());
            assert!(out.iter().all(|(p, f)| *p == port && f.len() <= 14 + mtu));
            let frames: Vec<Vec<u8>> = out.into_iter().map(|(_, f)| f).collect();
            let whole = testkit::reassemble(&frames).expect("one datagram");
            let r = testkit::parse_icmp_echo(&whole).expect("checksums right");
            assert!(r.reply);
            assert_eq!((r.src, r.dst, r.data), (to, from, data.clone()));
        }
        assert_eq!(h.stats.reassembled, 2);
        assert_eq!(h.stats.echo_replies, 2);
    }

    fn v6_client() -> smoltcp::wire::Ipv6Address {
        "fd00::c".parse().unwrap()
    }

    fn v6_node() -> smoltcp::wire::Ipv6Address {
        "fd00::12".parse().unwrap()
    }

    /// An outside client's echo request of `data` to the node's IPv6 address.
    fn ping6(data: &[u8]) -> Vec<u8> {
        testkit::icmpv6_frame(
            [2, 0, 0, 0, 0, 9],
            [2, 0, 0, 0, 0, 1],
            v6_client(),
            v6_node(),
            64,
            &smoltcp::wire::Icmpv6Repr::EchoRequest {
                ident: 7,
                seq_no: 1,
                data,
            },
        )
    }

    /// IPv6 to the node's address, which the pipeline hands over whole: answered whole on the
    /// uplink, counted by kind; nothing goes through the IPv4 defragmenter.
    #[test]
    fn ipv6_echo_and_a_syn_are_answered_on_the_uplink_and_counted() {
        let (mut h, t, _) = stack();
        let (client, node) = (v6_client(), v6_node());
        let ping = ping6(&[5; 1400]);
        let syn = testkit::tcp6_frame(
            [2, 0, 0, 0, 0, 9],
            [2, 0, 0, 0, 0, 1],
            client,
            40000,
            node,
            8080,
            0x02,
            1,
        );
        h.input(&t, PortId::Uplink, &ping, 1);
        h.input(&t, PortId::Uplink, &syn, 1);
        let out = h.take_output();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(p, _)| *p == PortId::Uplink));
        assert_eq!(
            out[0].1.len(),
            ping.len(),
            "the reply is as long as the request"
        );
        assert_eq!((h.stats.echo_replies, h.stats.rst_sent), (1, 1));
        assert_eq!((h.stats.reassembled, h.stats.fragments_dropped), (0, 0));
    }

    /// `ping -6 -s 4000` of the node: its pieces, in any order, put together and answered in
    /// pieces that fit the uplink and make the echo reply.
    #[test]
    fn a_large_ipv6_ping_of_the_node_is_answered_in_pieces() {
        use smoltcp::wire::{Icmpv6Packet, Icmpv6Repr};
        let (mut h, t, _) = stack();
        let (client, node) = (v6_client(), v6_node());
        let data: Vec<u8> = (0..4000).map(|i| (i % 251) as u8).collect();
        let ping = ping6(&data);
        for f in testkit::fragment6(&ping, 1500, 0x0102_0304).iter().rev() {
            h.input(&t, PortId::Uplink, f, 1);
        }
        let out = h.take_output();
        assert_eq!(out.len(), 3);
        assert!(out
            .iter()
            .all(|(p, f)| *p == PortId::Uplink && f.len() <= 14 + 1500));
        // Joined by their Fragment headers.
        let mut joined = Vec::new();
        for (_, f) in &out {
            let p = crate::pipeline::parse_ipv6(f, 14).unwrap();
            let piece = p.frag.expect("a piece");
            assert_eq!(usize::from(piece.ff & 0x1fff) * 8, joined.len());
            assert_eq!((p.src, p.dst, p.proto), (node, client, 58));
            joined.extend_from_slice(&f[p.l4..p.end]);
        }
        let icmp = Icmpv6Packet::new_checked(&joined[..]).unwrap();
        assert!(icmp.verify_checksum(&node, &client));
        let caps = ChecksumCapabilities::default();
        let Ok(Icmpv6Repr::EchoReply {
            ident, data: got, ..
        }) = Icmpv6Repr::parse(&node, &client, &icmp, &caps)
        else {
            panic!("not an echo reply");
        };
        assert_eq!((ident, got), (7, &data[..]));
        assert_eq!((h.stats.reassembled, h.stats.echo_replies), (1, 1));
    }

    #[test]
    fn refusals_seen_by_the_workers_eject_a_task_from_this_nodes_view_until_its_time_ends() {
        let (mut h, _, n) = stack();
        // web without a check: passive health is its only verdict.
        let t = ServiceTable::build(&crate::testkit::three_nodes(), "n2", 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let uid = t.tasks[t.task_by_name("web.1").unwrap() as usize].uid;
        h.seen(&t, 0xdead, Seen::Refused, 0); // no such task: nothing
        h.seen(&t, uid, Seen::Refused, 1);
        h.seen(&t, uid, Seen::Unanswered, 2);
        assert_eq!(h.take_view(), None);
        h.seen(&t, uid, Seen::Refused, 3);
        let view = h.take_view().expect("a new view");
        assert_eq!(view.get(&uid), Some(&Health::Ejected));
        assert_eq!(view.len(), 1);
        let board = h.take_board().expect("a new board");
        let why = &board[&uid].error;
        assert!(
            why.contains(
                "ejected by node n2 for 10 s: 3 new connections in a row were refused (RST)"
            ),
            "{why}"
        );
        assert_eq!((h.stats.outlier_ejections, h.stats.outlier_returns), (1, 0));
        // Its time ends: back in the view as nothing (no check), counted.
        assert!(
            h.next_wakeup(4) <= 10_003,
            "the host wakes for the ejection's end"
        );
        h.poll(&t, &n, 10_002);
        assert!(h.view.contains_key(&uid), "not yet");
        h.poll(&t, &n, 10_003);
        assert_eq!(h.take_view(), Some(HealthView::new()));
        assert_eq!(h.stats.outlier_returns, 1);
    }

    proptest! {
        /// Any bytes on either port, then time passing: answers or silence, never a panic.
        #[test]
        fn arbitrary_frames_never_panic(frames in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..16)) {
            let (mut h, t, n) = stack();
            for (i, (up, f)) in frames.iter().enumerate() {
                let port = if *up { PortId::Uplink } else { PortId::Tasks };
                h.input(&t, port, f, i as u64);
                h.poll(&t, &n, i as u64);
            }
            h.poll(&t, &n, 10_000);
            let _ = h.take_output();
        }

        /// Valid Ethernet, IPv4 and UDP headers to the gateway's port 53 or the gossip port,
        /// any payload: the resolver and the gossip decoder never panic.
        #[test]
        fn arbitrary_payloads_to_the_resolver_and_gossip_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..300), gossip in any::<bool>()) {
            let (mut h, t, n) = stack();
            let f = if gossip {
                testkit::udp_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 9], Ipv4Addr::new(192, 168, 1, 13), HEALTH_GOSSIP_PORT, Ipv4Addr::new(192, 168, 1, 12), HEALTH_GOSSIP_PORT, &payload)
            } else {
                testkit::udp_frame([2, 0x42, 10, 0, 1, 11], [2, 0, 0, 0, 0, 2], Ipv4Addr::new(10, 0, 1, 11), 40000, Ipv4Addr::new(10, 0, 1, 1), 53, &payload)
            };
            let port = if gossip { PortId::Uplink } else { PortId::Tasks };
            h.input(&t, port, &f, 1);
            h.poll(&t, &n, 1);
            h.poll(&t, &n, 2);
            let _ = h.take_output();
        }
    }

    #[test]
    fn an_answer_waiting_when_the_deadline_passes_still_counts() {
        // A host thread kept off the CPU past a probe's deadline finds the task's SYN-ACK
        // waiting: the check passed.
        let (mut h, t, n) = stack();
        let web1 = Ipv4Addr::new(10, 0, 1, 11);
        let mac = [2, 0x42, 10, 0, 1, 11];
        n.learn(u32::from(web1), mac);
        h.poll(&t, &n, 0);
        let syn = h
            .take_output()
            .into_iter()
            .find_map(|(_, f)| testkit::parse_ipv4_tcp(&f).filter(|s| s.dst == web1))
            .unwrap_or_else(|| panic!("a SYN to web.1"));
        assert_eq!(
            (syn.dport, syn.flags & testkit::tcp_flags::SYN != 0),
            (80, true)
        );
        assert!((600..1024).contains(&syn.sport));
        let synack = testkit::tcp_frame(
            mac,
            [2, 0, 0, 0, 0, 2],
            web1,
            80,
            syn.src,
            syn.sport,
            testkit::tcp_flags::SYN | testkit::tcp_flags::ACK,
            7777,
            syn.seq.wrapping_add(1),
            &[],
        );
        h.input(&t, PortId::Tasks, &synack, 500);
        h.poll(&t, &n, 500);
        assert_eq!(h.stats.checks_passed, 1, "{:?}", h.stats);
        assert_eq!(h.stats.checks_failed, 0);
        assert_eq!(h.view().get(&t.tasks[0].uid), Some(&Health::Healthy));
    }

    #[test]
    fn gossip_is_taken_only_from_a_peer_about_its_own_tasks() {
        let (mut h, t, n) = stack();
        h.poll(&t, &n, 0);
        let (web1, web2) = (t.tasks[0].uid, t.tasks[1].uid);
        let entry = |uid| gossip::Entry {
            uid,
            health: Health::Unhealthy,
            streak: 3,
            age_ms: 0,
            error: "refused".into(),
        };
        let send = |h: &mut HostStack, from: Ipv4Addr, node: &str, uid| {
            let d = gossip::encode(node, &[entry(uid)]).remove(0);
            let f = testkit::udp_frame(
                [2, 0, 0, 0, 0, 1],
                [2, 0, 0, 0, 0, 9],
                from,
                HEALTH_GOSSIP_PORT,
                Ipv4Addr::new(192, 168, 1, 12),
                HEALTH_GOSSIP_PORT,
                &d,
            );
            h.input(&t, PortId::Uplink, &f, 5);
        };
        // web.2 runs on n3 (192.168.1.13); web.1 on n2, this node.
        send(&mut h, Ipv4Addr::new(192, 168, 1, 99), "n3", web2);
        send(&mut h, Ipv4Addr::new(192, 168, 1, 13), "n1", web2);
        send(&mut h, Ipv4Addr::new(192, 168, 1, 13), "n3", web1);
        assert_eq!(
            h.stats.gossip_rejected, 2,
            "an unknown VTEP, another node's name"
        );
        assert_eq!(
            h.view().get(&web1),
            Some(&Health::Starting),
            "n3 cannot speak for web.1"
        );
        send(&mut h, Ipv4Addr::new(192, 168, 1, 13), "n3", web2);
        assert_eq!(h.view().get(&web2), Some(&Health::Unhealthy));
        assert_eq!(h.detail(web2).map(|d| d.node.as_str()), Some("n3"));
        // Silent for longer than STALE_MS: starting again.
        h.poll(&t, &n, 5 + gossip::STALE_MS + RECOMPUTE_MS + 1);
        assert_eq!(h.view().get(&web2), None);
        assert!(h
            .detail(web2)
            .is_some_and(|d| d.health == Health::Starting
                && d.error.contains("no health report from node n3")));
    }

    #[test]
    fn signed_gossip_is_taken_only_with_a_known_key_newer_than_the_last_and_near_the_clock() {
        let (mut h, t, n) = stack();
        let ring = gossip::Keyring::of(&[[7; gossip::KEY_LEN]]);
        h.cfg.gossip_keys = ring.clone();
        h.poll(&t, &n, 0);
        let web2 = t.tasks[1].uid;
        let dgram = |health, sent: u64, ring: &gossip::Keyring| {
            let e = gossip::Entry {
                uid: web2,
                health,
                streak: 3,
                age_ms: 0,
                error: String::new(),
            };
            let mut d = gossip::encode("n3", &[e]).remove(0);
            if !ring.is_empty() {
                ring.seal(&mut d, sent);
            }
            testkit::udp_frame(
                [2, 0, 0, 0, 0, 3],
                [2, 0, 0, 0, 0, 9],
                Ipv4Addr::new(192, 168, 1, 13),
                HEALTH_GOSSIP_PORT,
                Ipv4Addr::new(192, 168, 1, 12),
                HEALTH_GOSSIP_PORT,
                &d,
            )
        };
        let wall = h.wall_ms(0);
        let other = gossip::Keyring::of(&[[8; gossip::KEY_LEN]]);
        // Unsigned, signed with another key, too old, too far ahead: refused.
        for f in [
            dgram(Health::Unhealthy, wall, &gossip::Keyring::default()),
            dgram(Health::Unhealthy, wall, &other),
            dgram(Health::Unhealthy, wall - gossip::SKEW_MS - 10, &ring),
            dgram(Health::Unhealthy, wall + gossip::SKEW_MS + 10, &ring),
        ] {
            h.input(&t, PortId::Uplink, &f, 5);
        }
        assert_eq!((h.stats.gossip_forged, h.stats.gossip_received), (4, 0));
        assert_eq!(h.view().get(&web2), None, "nothing believed");
        // Signed and current: taken. The same datagram again (a replay): refused.
        let healthy = dgram(Health::Healthy, wall + 5, &ring);
        h.input(&t, PortId::Uplink, &healthy, 5);
        assert_eq!(h.view().get(&web2), Some(&Health::Healthy));
        let unhealthy = dgram(Health::Unhealthy, wall + 6, &ring);
        h.input(&t, PortId::Uplink, &unhealthy, 6);
        h.input(&t, PortId::Uplink, &healthy, 7);
        assert_eq!(
            h.view().get(&web2),
            Some(&Health::Unhealthy),
            "the replay was believed"
        );
        assert_eq!((h.stats.gossip_forged, h.stats.gossip_received), (5, 2));
        // What this node sends is signed: a peer with the key takes it.
        n.learn(0xc0a8_010b, [2, 0, 0, 0, 0, 0x11]);
        n.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
        h.gossip_soon = true;
        h.poll(&t, &n, 10);
        let sent: Vec<Vec<u8>> = h
            .take_output()
            .into_iter()
            .filter(|(_, f)| f.len() > 42 && f[36..38] == HEALTH_GOSSIP_PORT.to_be_bytes())
            .map(|(_, f)| f[42..].to_vec())
            .collect();
        assert!(!sent.is_empty(), "no gossip sent");
        for d in &sent {
            let (body, _) = ring.open(d).unwrap();
            assert_eq!(gossip::decode(body).map(|m| m.node).as_deref(), Some("n2"));
        }
    }

    #[test]
    fn what_the_host_sends_a_task_goes_on_the_tasks_vlan() {
        let mut s = crate::testkit::three_nodes();
        s.services[0].tasks[0].vlan = Some(101);
        let t = ServiceTable::build(&s, "n2", 1).unwrap_or_else(|e| panic!("{e}"));
        let web1 = Ipv4Addr::new(10, 0, 1, 11);
        let gw = Ipv4Addr::new(10, 0, 1, 1);
        let udp = testkit::udp_frame([2; 6], [4; 6], gw, 53, web1, 5000, b"a");
        let arp = testkit::arp_request([2; 6], gw, web1);
        assert_eq!(tasks_frame_vlan(&t, &udp), 101);
        assert_eq!(tasks_frame_vlan(&t, &arp), 101, "an ARP request for web.1");
        // web.2 runs on n3: not a local task's VLAN.
        let other = testkit::arp_request([2; 6], gw, Ipv4Addr::new(10, 0, 1, 12));
        assert_eq!(tasks_frame_vlan(&t, &other), 0);
        assert_eq!(tasks_frame_vlan(&t, &udp[..20]), 0);
    }

    /// n2's host side in the example mesh whose appnet is dual-stack (fd00:10:1::/64), web.1
    /// on VLAN 101: the stack, its table, the network's IPv6 prefix.
    fn dual_stack_n2() -> (HostStack, ServiceTable, ctl::model::Ipv6Net) {
        let mut s = crate::testkit::three_nodes();
        let p: ctl::model::Ipv6Net = "fd00:10:1::/64".parse().unwrap();
        s.networks[1].subnet6 = Some(p);
        s.services[0].tasks[0].vlan = Some(101);
        let t = ServiceTable::build(&s, "n2", 1).unwrap_or_else(|e| panic!("{e}"));
        let h = HostStack::new(HostConfig {
            uplink_mac: [2, 0, 0, 0, 0, 1],
            tasks_mac: [2, 0, 0, 0, 0, 2],
            seed: 9,
            uplink_mtu: 1500,
            gossip_keys: gossip::Keyring::default(),
        });
        (h, t, p)
    }

    /// A task's echo request and SYN to the twin of a VIP of a dual-stack network (the
    /// pipeline hands them over as IPv6, no flow taking them): answered on the tasks port, in
    /// IPv6, from the twin, on the task's VLAN.
    #[test]
    fn a_tasks_ipv6_to_a_vip_twin_is_answered_back_to_it_in_ipv6() {
        let (mut h, t, p) = dual_stack_n2();
        let (web1, vip) = (
            p.embed(Ipv4Addr::new(10, 0, 1, 11)),
            p.embed(Ipv4Addr::new(10, 0, 1, 2)),
        );
        let (task_mac, tasks_mac) = ([2, 0, 0, 0, 0, 0x11], [2, 0, 0, 0, 0, 2]);
        let ping = testkit::icmpv6_frame(
            task_mac,
            tasks_mac,
            web1,
            vip,
            64,
            &smoltcp::wire::Icmpv6Repr::EchoRequest {
                ident: 3,
                seq_no: 9,
                data: b"ping the VIP",
            },
        );
        let syn = testkit::tcp6_frame(task_mac, tasks_mac, web1, 40000, vip, 81, 0x02, 1);
        h.input(&t, PortId::Tasks, &ping, 1);
        h.input(&t, PortId::Tasks, &syn, 1);
        let out = h.take_output();
        assert_eq!(out.len(), 2);
        for (port, f) in &out {
            assert_eq!(*port, PortId::Tasks);
            assert_eq!(testkit::eth(f).unwrap().0, task_mac);
            let ip = smoltcp::wire::Ipv6Packet::new_checked(&f[14..]).unwrap();
            assert_eq!((ip.src_addr(), ip.dst_addr()), (vip, web1));
            assert_eq!(tasks_frame_vlan(&t, f), 101, "web.1's VLAN");
        }
        let icmp = smoltcp::wire::Icmpv6Packet::new_checked(&out[0].1[54..]).unwrap();
        assert!(icmp.verify_checksum(&vip, &web1));
        assert_eq!(icmp.msg_type(), smoltcp::wire::Icmpv6Message::EchoReply);
        assert_eq!(icmp.payload(), b"ping the VIP");
        assert_eq!(out[1].1[54 + 13] & 0x04, 0x04, "a RST");
        assert_eq!((h.stats.echo_replies, h.stats.rst_sent), (1, 1));
        // Not a twin (a prefix outside the network's, the same last 32 bits): no VLAN.
        let mut other = out[0].1.clone();
        other[14 + 24] ^= 0x80;
        assert_eq!(tasks_frame_vlan(&t, &other), 0);
    }

    /// A task's DNS query to its gateway's twin (DNS over IPv6): answered by the resolver from
    /// the twin, over UDP and over TCP, on the task's VLAN, AAAA by the twins; from an IPv6
    /// address outside the network's twins, nothing.
    #[test]
    fn a_tasks_dns_query_to_the_gateways_twin_is_answered_over_ipv6() {
        use smoltcp::wire::{Ipv6Packet, TcpPacket};
        let (mut h, t, p) = dual_stack_n2();
        let neigh = Neighbors::new(64);
        let [web1, vip, gw6] = [11, 2, 1].map(|x| p.embed(Ipv4Addr::new(10, 0, 1, x)));
        let (task_mac, tasks_mac) = ([2, 0, 0, 0, 0, 0x11], [2, 0, 0, 0, 0, 2]);
        let query =
            |src, sport: u16, q: &[u8]| udp6_frame((task_mac, tasks_mac), src, gw6, (sport, 53), q);
        let q = dns::build_query(7, "web", 28, Some(1232));
        h.input(&t, PortId::Tasks, &query(web1, 40000, &q), 1);
        h.poll(&t, &neigh, 2);
        let out = h.take_output();
        assert_eq!(out.len(), 1, "{out:?}");
        let (port, f) = &out[0];
        assert_eq!(*port, PortId::Tasks);
        assert_eq!(testkit::eth(f).unwrap(), (task_mac, tasks_mac, 0x86dd));
        assert_eq!(tasks_frame_vlan(&t, f), 101, "web.1's VLAN");
        let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (gw6, web1));
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(u.verify_checksum(&IpAddress::Ipv6(gw6), &IpAddress::Ipv6(web1)));
        assert_eq!((u.src_port(), u.dst_port()), (53, 40000));
        let a = dns::parse_answer(u.payload()).expect("a DNS answer");
        assert_eq!((a.id, a.rcode, a.aa), (7, 0, true));
        assert_eq!(a.aaaa.iter().map(|r| r.0).collect::<Vec<_>>(), [vip]);
        assert_eq!(h.stats.dns_queries, 1);

        // Over TCP: the resolver's sockets listen on the twin too (a SYN-ACK, not a RST).
        let syn = testkit::tcp6_frame(task_mac, tasks_mac, web1, 40001, gw6, 53, 0x02, 1);
        h.input(&t, PortId::Tasks, &syn, 3);
        h.poll(&t, &neigh, 4);
        let out = h.take_output();
        assert_eq!(out.len(), 1, "{out:?}");
        let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (gw6, web1));
        let seg = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(seg.syn() && seg.ack() && !seg.rst(), "SYN-ACK expected");
        assert_eq!(seg.src_port(), 53);
        // A task's share of the resolver's TCP connections (2) counts both its addresses:
        // with one open from its twin, the second of two more from its IPv4 address is reset.
        let (web1_v4, gw_v4) = (Ipv4Addr::new(10, 0, 1, 11), Ipv4Addr::new(10, 0, 1, 1));
        for port in [40010, 40011] {
            let syn = testkit::tcp_frame(
                task_mac,
                tasks_mac,
                web1_v4,
                port,
                gw_v4,
                53,
                0x02,
                1,
                0,
                &[],
            );
            h.input(&t, PortId::Tasks, &syn, 5);
        }
        h.poll(&t, &neigh, 6);
        let flags: Vec<(u16, u8)> = h
            .take_output()
            .iter()
            .filter_map(|(_, f)| testkit::parse_ipv4_tcp(f))
            .map(|seg| (seg.dport, seg.flags))
            .collect();
        assert_eq!(h.stats.dns_tcp_refused, 1, "{flags:?}");
        assert_eq!(
            flags.iter().filter(|(_, fl)| fl & 0x04 != 0).count(),
            1,
            "one RST: {flags:?}"
        );

        // From an address outside the network's twins (the pipeline lets no task send it; the
        // lane keeps to its own anyway): no answer, no query served.
        let stranger: Ipv6Address = "fd00:99::a00:10b".parse().unwrap();
        h.input(&t, PortId::Tasks, &query(stranger, 40002, &q), 5);
        h.poll(&t, &neigh, 6);
        assert!(h.take_output().is_empty());
        assert_eq!((h.stats.dns_queries, h.stats.dns_dropped), (2, 1));
    }
}
