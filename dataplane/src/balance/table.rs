//! The service table: an immutable snapshot of the model, compiled for one node and indexed for
//! the fast path. Built (and validated) on the control thread; workers only read it.

use std::net::{Ipv4Addr, Ipv6Addr};

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ctl::model::{
    self, Availability, ClientIpMode, EndpointMode, Health, Protocol, PublishMode, SchedulerKind,
    State,
};
use smoltcp::wire::{IpProtocol, Ipv4Address, Ipv6Address};

use super::maglev::{self, Maglev};
use crate::fastmap::{mix64, FrozenMap};
use crate::overlay::seal;
use crate::wire::checksum::Delta;

/// Why a state cannot become a service table. The previous table stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Invalid(#[from] ctl::ValidationError),
    #[error("this node \"{0}\" is not among the mesh's nodes; add it with `meshctl node add`")]
    UnknownLocalNode(String),
    #[error("too many {what} ({count}); at most {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
}

pub type NodeIdx = u16;
pub type NetIdx = u16;
pub type SvcIdx = u16;
pub type TaskIdx = u32;
pub type BalIdx = u16;

/// A node of the mesh as the fast path needs it.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub name: String,
    pub addr: Ipv4Address,
    /// The VTEP's 32-bit name: its IPv4 address, or [`ctl::vtep6_key`] of its IPv6 one.
    pub vtep: Ipv4Address,
    /// The VTEP's IPv6 address, over an IPv6 underlay.
    pub vtep6: Option<Ipv6Address>,
    pub vtep_port: u16,
    /// Drained in the desired state (`meshctl node update --availability drain`). A node down
    /// (no lease) is not drained here but flagged in [`NodesDown`].
    pub drained: bool,
}

/// Which nodes are down (cluster mode: their meshd holds no lease), by node index. The
/// balancers skip a down node's tasks when they pick ([`super::Scheduler::pick`]), as DNS
/// does when it answers, so a lease lapsing or coming back costs a store per node, not a
/// compile of every task on every node (a storm at 50 nodes of 100,000 tasks). Shared by every
/// table made from one compile (patches and copies of it): setting a flag reaches the table
/// the workers run at once.
#[derive(Debug, Default)]
pub struct NodesDown {
    /// Whether any flag is set: the one load a pick makes while every node is up.
    any: AtomicBool,
    each: Box<[AtomicBool]>,
}

impl NodesDown {
    fn new(nodes: &[NodeEntry], down: &BTreeSet<String>) -> NodesDown {
        let d = NodesDown {
            any: AtomicBool::new(false),
            each: nodes.iter().map(|_| AtomicBool::new(false)).collect(),
        };
        d.set(nodes, down);
        d
    }

    /// Flags the nodes named in `down`, clears the others; returns whether any flag changed.
    fn set(&self, nodes: &[NodeEntry], down: &BTreeSet<String>) -> bool {
        let mut changed = false;
        for (n, flag) in nodes.iter().zip(self.each.iter()) {
            let d = down.contains(&n.name);
            changed |= flag.swap(d, Ordering::Relaxed) != d;
        }
        self.any.store(
            self.each.iter().any(|f| f.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        changed
    }

    /// Whether some node is down.
    #[inline]
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Whether node `n` is down.
    #[inline]
    pub fn is_down(&self, n: NodeIdx) -> bool {
        self.each
            .get(usize::from(n))
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

/// An overlay network.
#[derive(Debug, Clone)]
pub struct NetEntry {
    pub name: String,
    pub vni: u32,
    pub subnet: model::Ipv4Net,
    pub gateway: Ipv4Address,
    pub ingress: bool,
    /// This node's endpoint (masquerade) address here, if it has one.
    pub local_endpoint: Option<Ipv4Address>,
    /// The MTU set for the network (`--opt mtu`), if any; otherwise the uplink's less VXLAN's
    /// 50 bytes ([`model::Network::effective_mtu`]).
    pub mtu: Option<u16>,
    /// An encrypted network's keys: its VXLAN frames are sealed and must open.
    pub keys: Option<seal::NetKeys>,
    /// Whether its VXLAN frames go over IPv6 (20 bytes more).
    pub underlay6: bool,
}

impl NetEntry {
    /// The network's MTU on a node whose uplink MTU is `uplink_mtu`: the one set, at most what
    /// the uplink carries once encapsulated (and sealed), else the uplink's less VXLAN's 50
    /// bytes (and the seal's 44).
    pub fn mtu_on(&self, uplink_mtu: u16) -> u16 {
        let most =
            uplink_mtu.saturating_sub(ctl::overlay_overhead(self.keys.is_some(), self.underlay6));
        self.mtu.map_or(most, |m| m.min(most))
    }
}

/// A task.
#[derive(Debug, Clone)]
pub struct TaskEntry {
    /// Stable across tables while the task keeps its name, node and addresses.
    pub uid: u64,
    pub name: Arc<str>,
    pub service: SvcIdx,
    pub node: NodeIdx,
    /// May take new flows: running, weight > 0, node active, and healthy when its service has
    /// a health check.
    pub eligible: bool,
    /// May keep the flows it has (not unhealthy either).
    pub alive: bool,
    pub weight: u32,
    /// The desired state.
    pub state: model::TaskState,
    /// The health verdict compiled in, for a service with a health check.
    pub health: Option<Health>,
    /// The task's address on each network it is on (the host side's view: DNS, health checks).
    pub addrs: Arc<[(NetIdx, Ipv4Address)]>,
    /// Gone from the state since this table's last full compile ([`ServiceTable::patch`]):
    /// nothing refers to it any more.
    pub removed: bool,
}

/// A service.
#[derive(Debug, Clone)]
pub struct SvcEntry {
    pub name: Arc<str>,
    /// The service's identity for counters (never 0): a hash of its name, alike in every
    /// table and on every node. Its drops that no task can be blamed for are counted under it
    /// in the workers' [`crate::stats::TaskCounters`], beside its tasks' uids.
    pub uid: u64,
    pub endpoint_mode: EndpointMode,
    pub client_ip: ClientIpMode,
    pub timeouts: model::Timeouts,
    pub tasks: Arc<[TaskIdx]>,
    /// The networks the service is attached to, with its VIP there (endpoint mode vip).
    pub networks: Arc<[(NetIdx, Option<Ipv4Address>)]>,
    pub health: Option<Arc<model::HealthCheck>>,
    /// The port the health check connects to.
    pub health_port: u16,
    /// Passive health: when this node stops sending a task new connections.
    pub outlier: model::Outlier,
    /// Its VIPs' and published ports' balancers, and its slots in the port map: what
    /// [`ServiceTable::patch`] takes out when the service changes.
    balancers: Arc<[BalIdx]>,
    slots: Arc<[usize]>,
    /// Gone from the state since this table's last full compile (its name no longer finds it).
    pub removed: bool,
}

/// One backend of a balancer: a task and the address it is reached at on that balancer's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub task: TaskIdx,
    pub uid: u64,
    pub addr: Ipv4Address,
    pub node: NodeIdx,
    pub local: bool,
    /// The weight its balancer's scheduler gives it: the task's for the weighted schedulers
    /// (wrr, wlc, maglev), else 1 (rr and lc ignore weights, as IPVS's do). Never 0: a task of
    /// weight 0 is no backend.
    pub weight: u32,
}

/// What spreads a published port's or a VIP's new flows.
#[derive(Debug, Clone)]
pub struct Balancer {
    pub service: SvcIdx,
    pub net: NetIdx,
    /// Eligible backends only, in a stable order (by task name). Those on a node down are
    /// here too: the pick skips them ([`ServiceTable::down`]).
    pub backends: Arc<[Backend]>,
    pub scheduler: SchedulerKind,
    /// The backends' Maglev table: for the Maglev scheduler, and for source-IP affinity's
    /// first pick (hashed by the client's address).
    pub maglev: Option<Arc<Maglev>>,
    /// Source-IP affinity's timeout in milliseconds; 0: no affinity.
    pub affinity_ms: u32,
    /// The balancer's identity across tables and nodes (its service's name, and its network
    /// or published port): what a worker remembers a client's task under.
    pub key: u64,
}

/// A published port on this node.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub balancer: BalIdx,
    pub target: u16,
    pub mode: PublishMode,
}

/// What an overlay address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrKind {
    Task {
        task: TaskIdx,
        node: NodeIdx,
        local: bool,
        /// The VLAN of the task's port on its node's tasks bridge (0: untagged).
        vlan: u16,
    },
    Vip {
        service: SvcIdx,
        balancer: BalIdx,
    },
    Gateway,
    Endpoint {
        node: NodeIdx,
        local: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrEntry {
    pub net: NetIdx,
    pub kind: AddrKind,
}

const PORTS: usize = 1 << 16;

/// The compiled snapshot.
#[derive(Debug, Clone)]
pub struct ServiceTable {
    pub generation: u64,
    pub local: NodeIdx,
    /// This node's underlay address: published ports and VXLAN answer here.
    pub node_addr: Ipv4Address,
    /// This node's IPv6 address on the underlay, if it has one: it answers Neighbor Discovery
    /// and ping there.
    pub node_addr6: Option<Ipv6Addr>,
    pub vtep_port: u16,
    pub nodes: Vec<NodeEntry>,
    /// The nodes down now, by index into `nodes`.
    pub down: Arc<NodesDown>,
    pub networks: Vec<NetEntry>,
    pub services: Vec<SvcEntry>,
    pub tasks: Vec<TaskEntry>,
    pub balancers: Vec<Balancer>,
    published: Vec<Published>,
    /// Index + 1 into `published` for TCP ports, then UDP ports; 0 when not published.
    port_map: Box<[u16]>,
    addrs: FrozenMap<u32, AddrEntry>,
    peers: FrozenMap<u32, NodeIdx>,
    /// The peers by their IPv6 VTEP, over an IPv6 underlay.
    peers6: FrozenMap<u128, NodeIdx>,
    vnis: FrozenMap<u32, NetIdx>,
    alive: FrozenMap<u64, TaskIdx>,
    pub ingress_net: Option<NetIdx>,
    /// Whether any network is encrypted (one test on the VXLAN paths of a mesh without).
    pub sealed: bool,
    /// Whether VXLAN frames take more than plain IPv4 outer headers: `sealed`, or the underlay
    /// is IPv6 (one test on the plain overlay's transmit path). A dual-stack network's frames
    /// take the plain path and are turned back into IPv6 after it (`overlay6`).
    pub vxlan_slow: bool,
    /// Whether any network is dual-stack (IPv6 frames of its tasks are carried).
    pub dual_stack: bool,
    /// Each network's IPv6 prefix when it is dual-stack ([`ServiceTable::subnet6`]).
    subnets6: Box<[Option<model::Ipv6Net>]>,
    /// Each network's [`ServiceTable::twin_deltas`].
    deltas6: Box<[[Delta; 2]]>,
    /// Services by name, lower case (DNS names are case-insensitive).
    svc_names: HashMap<Arc<str>, SvcIdx>,
    /// Tasks by name, lower case.
    task_names: HashMap<Arc<str>, TaskIdx>,
    /// Entries of tasks and balancers left behind by [`ServiceTable::patch`].
    garbage: usize,
}

/// Entries [`ServiceTable::make_room`] makes room for.
const ROOM: usize = 4096;

/// Health verdicts by task uid: runtime state layered over the desired state when a table is
/// compiled (never persisted). A task of a service with a health check and no verdict here is
/// [`Health::Starting`].
pub type HealthView = HashMap<u64, Health>;

fn ip(a: Ipv4Addr) -> Ipv4Address {
    a
}

fn key(a: Ipv4Address) -> u32 {
    u32::from_be_bytes(a.octets())
}

/// A task's identity for flows: its service, name, node and addresses. A task that changes any
/// of them is, for its flows, a new task.
fn task_uid(svc: &str, t: &model::Task) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    let mut eat = |bytes: &[u8]| {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = mix64(h ^ u64::from_le_bytes(w)).rotate_left(5);
        }
        h = mix64(h ^ bytes.len() as u64);
    };
    eat(svc.as_bytes());
    eat(t.name.as_bytes());
    eat(t.node.as_bytes());
    for a in &t.addresses {
        eat(a.network.as_bytes());
        eat(&a.addr.octets());
    }
    h
}

/// A service's identity for counters ([`SvcEntry::uid`]): its name's hash, salted apart from
/// the balancers' keys, never 0 (a free slot's key).
fn service_uid(name: &str) -> u64 {
    (mix64(name_hash(name.as_bytes()) ^ 0x5e41_ce00_d409_0001)).max(1)
}

/// A name's hash, alike on every node and in every process (no random seed).
fn name_hash(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(mix64(bytes.len() as u64), |h, chunk| {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        mix64(h ^ u64::from_le_bytes(w)).rotate_left(7)
    })
}

/// What compiling one service needs to know of the rest: this node, and the nodes and
/// networks by name.
struct Ctx<'a> {
    local: &'a str,
    local_idx: NodeIdx,
    nodes: HashMap<&'a str, NodeIdx>,
    nets: HashMap<&'a str, NetIdx>,
}

impl<'a> Ctx<'a> {
    // Casts: indices below the counts checked in `ServiceTable::compile`.
    #[allow(clippy::cast_possible_truncation)]
    fn new(state: &'a State, local: &'a str, local_idx: NodeIdx) -> Ctx<'a> {
        Ctx {
            local,
            local_idx,
            nodes: state
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.as_str(), i as NodeIdx))
                .collect(),
            nets: state
                .networks
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.as_str(), i as NetIdx))
                .collect(),
        }
    }
}

/// A name as the name maps key it: lower case, sharing the entry's own string when it is
/// lower case already.
fn lower(name: &Arc<str>) -> Arc<str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Arc::from(name.to_ascii_lowercase())
    } else {
        Arc::clone(name)
    }
}

impl ServiceTable {
    /// Validates `state` and compiles it for node `local`, every health-checked task starting.
    pub fn build(state: &State, local: &str, generation: u64) -> Result<ServiceTable, BuildError> {
        Self::build_with(state, local, generation, &HealthView::new())
    }

    /// [`ServiceTable::build`] with the health verdicts `health` layered over the desired state:
    /// a task of a service with a health check takes new flows only when healthy, and keeps its
    /// flows unless unhealthy.
    pub fn build_with(
        state: &State,
        local: &str,
        generation: u64,
        health: &HealthView,
    ) -> Result<ServiceTable, BuildError> {
        ctl::validate(state)?;
        Self::compile(state, local, generation, health, &BTreeSet::new())
    }

    /// Compiles a state validated already (by [`ctl::validate`], or [`ctl::validate::Claims`]
    /// kept up to date change by change), the nodes named in `down` flagged down (in cluster
    /// mode, the nodes whose meshd holds no lease: their tasks take no new connections; see
    /// [`ServiceTable::set_down`]).
    // Casts: indices below the counts checked at the top (nodes, networks, services, balancers, ports <= u16::MAX; tasks far below u32::MAX).
    #[allow(clippy::cast_possible_truncation)]
    pub fn compile(
        state: &State,
        local: &str,
        generation: u64,
        health: &HealthView,
        down: &BTreeSet<String>,
    ) -> Result<ServiceTable, BuildError> {
        let too_many = |what, count, max| BuildError::TooMany { what, count, max };
        if state.nodes.len() > usize::from(u16::MAX) {
            return Err(too_many("nodes", state.nodes.len(), usize::from(u16::MAX)));
        }
        if state.networks.len() > usize::from(u16::MAX)
            || state.services.len() > usize::from(u16::MAX)
        {
            return Err(too_many(
                "networks or services",
                state.networks.len().max(state.services.len()),
                usize::from(u16::MAX),
            ));
        }
        let local_idx = state
            .nodes
            .iter()
            .position(|n| n.name == local)
            .ok_or_else(|| BuildError::UnknownLocalNode(local.to_string()))?
            as NodeIdx;
        let ctx = Ctx::new(state, local, local_idx);
        let nodes: Vec<NodeEntry> = state
            .nodes
            .iter()
            .map(|n| NodeEntry {
                name: n.name.clone(),
                addr: ip(n.addr),
                vtep: ip(n.vtep_key()),
                vtep6: n.vtep6(),
                vtep_port: n.vtep_port,
                drained: n.availability == Availability::Drain,
            })
            .collect();
        let nodes_down = Arc::new(NodesDown::new(&nodes, down));
        let networks: Vec<NetEntry> = state
            .networks
            .iter()
            .map(|n| NetEntry {
                name: n.name.clone(),
                vni: n.vni,
                subnet: n.subnet,
                gateway: ip(n.gateway),
                ingress: n.ingress,
                local_endpoint: n.endpoints.get(local).copied().map(ip),
                mtu: n.mtu,
                keys: n.encryption.as_ref().and_then(seal::NetKeys::new),
                underlay6: state.underlay6(),
            })
            .collect();
        // Beside the entries, not in them: a larger entry cost the IPv4 paths that read one
        // (the task-to-VIP path) 2 instructions a packet.
        let subnets6: Box<[Option<model::Ipv6Net>]> =
            state.networks.iter().map(|n| n.subnet6).collect();
        let deltas6 = subnets6
            .iter()
            .map(|p| p.map(twin_deltas).unwrap_or_default())
            .collect();
        let sealed = networks.iter().any(|n| n.keys.is_some());
        let dual_stack = subnets6.iter().any(Option::is_some);
        let ingress_net = state
            .networks
            .iter()
            .position(|n| n.ingress)
            .map(|i| i as NetIdx);

        let mut addrs: Vec<(u32, AddrEntry)> = Vec::new();
        for (ni, n) in state.networks.iter().enumerate() {
            let net = ni as NetIdx;
            addrs.push((
                key(ip(n.gateway)),
                AddrEntry {
                    net,
                    kind: AddrKind::Gateway,
                },
            ));
            for (node, a) in &n.endpoints {
                if let Some(&nd) = ctx.nodes.get(node.as_str()) {
                    addrs.push((
                        key(ip(*a)),
                        AddrEntry {
                            net,
                            kind: AddrKind::Endpoint {
                                node: nd,
                                local: nd == local_idx,
                            },
                        },
                    ));
                }
            }
        }
        let peers = FrozenMap::build(
            nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != usize::from(local_idx))
                .map(|(i, n)| (key(n.vtep), i as NodeIdx)),
        );
        let peers6 = FrozenMap::build(
            nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != usize::from(local_idx))
                .filter_map(|(i, n)| Some((u128::from(n.vtep6?), i as NodeIdx))),
        );
        let vnis = FrozenMap::build(
            networks
                .iter()
                .enumerate()
                .map(|(i, n)| (n.vni, i as NetIdx)),
        );
        let me = &nodes[usize::from(local_idx)];
        let tasks_hint: usize = state.services.iter().map(|s| s.tasks.len()).sum();
        let mut t = ServiceTable {
            generation,
            local: local_idx,
            node_addr: me.addr,
            node_addr6: state.nodes[usize::from(local_idx)].addr6,
            vtep_port: me.vtep_port,
            addrs: FrozenMap::build(addrs),
            nodes,
            down: nodes_down,
            networks,
            services: Vec::with_capacity(state.services.len()),
            tasks: Vec::with_capacity(tasks_hint),
            balancers: Vec::new(),
            published: Vec::new(),
            port_map: vec![0u16; 2 * PORTS].into_boxed_slice(),
            peers,
            peers6,
            vnis,
            alive: FrozenMap::default(),
            ingress_net,
            sealed,
            vxlan_slow: sealed || state.underlay6(),
            dual_stack,
            subnets6,
            deltas6,
            svc_names: HashMap::with_capacity(state.services.len()),
            task_names: HashMap::with_capacity(tasks_hint + ROOM),
            garbage: 0,
        };
        for (si, s) in state.services.iter().enumerate() {
            t.put_service(&ctx, state, si as SvcIdx, s, health);
        }
        t.check_counts()?;
        // Patched later in place (as the controller's spare): room for that now.
        t.make_room();
        Ok(t)
    }

    /// A table for `state` made from this one by compiling again only the services named in
    /// `changed` (new, updated or gone), as a change from etcd or a health verdict touches a
    /// few services of many: the cost follows the change, not the mesh's size. `state` must be
    /// validated, and have this table's nodes (drained alike) and networks (any other change
    /// compiles it all with [`ServiceTable::compile`]); `health` as for that. The parts of the services that
    /// changed stay behind, unreachable, until garbage reaches a quarter of the table, when
    /// the whole state is compiled afresh.
    pub fn patch(
        &self,
        state: &State,
        changed: &BTreeSet<String>,
        generation: u64,
        health: &HealthView,
    ) -> Result<ServiceTable, BuildError> {
        if self.spoiled() {
            return self.compile_again(state, generation, health);
        }
        let mut t = self.clone();
        t.make_room();
        t.patch_here(state, changed, generation, health)?;
        Ok(t)
    }

    /// Room for the entries of patches to come, so a patch does not grow (copy and rehash) a
    /// list or a name map of 100,000 tasks for its ten (a copy has exactly its length).
    pub fn make_room(&mut self) {
        self.tasks.reserve(ROOM);
        self.balancers.reserve(ROOM / 4);
        self.services.reserve(ROOM / 16);
        self.task_names.reserve(ROOM);
        self.svc_names.reserve(ROOM / 16);
    }

    /// [`ServiceTable::patch`] in place, for a table no worker holds any more (the one before
    /// the table running, kept for this): the copy is saved, the cost is the change's alone.
    /// On `Err` the table is half made: drop it.
    pub fn update(
        &mut self,
        state: &State,
        changed: &BTreeSet<String>,
        generation: u64,
        health: &HealthView,
    ) -> Result<(), BuildError> {
        if self.spoiled() {
            *self = self.compile_again(state, generation, health)?;
            return Ok(());
        }
        self.patch_here(state, changed, generation, health)
    }

    /// Whether garbage has reached a quarter of the table (then it is compiled afresh).
    fn spoiled(&self) -> bool {
        self.garbage > 1024 + (self.tasks.len() + self.balancers.len()) / 4
    }

    /// `state` compiled whole, sharing this table's flags of the nodes down (the table running
    /// and this one are one mesh: a flag set later reaches both).
    fn compile_again(
        &self,
        state: &State,
        generation: u64,
        health: &HealthView,
    ) -> Result<ServiceTable, BuildError> {
        let local = &self.nodes[usize::from(self.local)].name;
        let down: BTreeSet<String> = (0..self.nodes.len())
            .filter(|&i| NodeIdx::try_from(i).is_ok_and(|i| self.down.is_down(i)))
            .map(|i| self.nodes[i].name.clone())
            .collect();
        let mut t = Self::compile(state, local, generation, health, &down)?;
        if t.nodes
            .iter()
            .map(|n| &n.name)
            .eq(self.nodes.iter().map(|n| &n.name))
        {
            t.down = Arc::clone(&self.down);
        }
        Ok(t)
    }

    /// Flags the nodes named in `down` down and the others up, in this table and every table
    /// sharing its flags (made from it by a patch or a copy): no compile, no new generation.
    /// Returns whether any flag changed.
    pub fn set_down(&self, down: &BTreeSet<String>) -> bool {
        self.down.set(&self.nodes, down)
    }

    /// Whether task `ti` takes new flows now: eligible in the table and on a node up.
    #[inline]
    pub fn takes_new(&self, ti: TaskIdx) -> bool {
        self.tasks
            .get(ti as usize)
            .is_some_and(|te| te.eligible && !self.down.is_down(te.node))
    }

    // Casts: as in `compile`.
    #[allow(clippy::cast_possible_truncation)]
    fn patch_here(
        &mut self,
        state: &State,
        changed: &BTreeSet<String>,
        generation: u64,
        health: &HealthView,
    ) -> Result<(), BuildError> {
        let local = self.nodes[usize::from(self.local)].name.clone();
        let ctx = Ctx::new(state, &local, self.local);
        self.generation = generation;
        for name in changed {
            let at = self.service_by_name(name);
            if let Some(si) = at {
                self.drop_service(si);
            }
            let Some(s) = state.service(name) else {
                continue;
            };
            let si = match at {
                Some(si) => si,
                None if self.services.len() < usize::from(u16::MAX) => {
                    self.services.len() as SvcIdx
                }
                None => {
                    return Err(BuildError::TooMany {
                        what: "networks or services",
                        count: self.services.len() + 1,
                        max: usize::from(u16::MAX),
                    })
                }
            };
            self.put_service(&ctx, state, si, s, health);
        }
        self.check_counts()
    }

    fn check_counts(&self) -> Result<(), BuildError> {
        if self.balancers.len() >= usize::from(u16::MAX)
            || self.published.len() >= usize::from(u16::MAX)
        {
            return Err(BuildError::TooMany {
                what: "published ports and VIPs",
                count: self.balancers.len(),
                max: usize::from(u16::MAX) - 1,
            });
        }
        Ok(())
    }

    /// Takes service `si` out: its tasks, VIPs and published ports stop answering, its entries
    /// stay (indices of the others do not move) as garbage.
    fn drop_service(&mut self, si: SvcIdx) {
        let svc = &mut self.services[usize::from(si)];
        svc.removed = true;
        let lname = lower(&svc.name);
        if self.svc_names.get(&lname) == Some(&si) {
            self.svc_names.remove(&lname);
        }
        let (tasks, bals, slots) = (
            std::mem::take(&mut svc.tasks),
            std::mem::take(&mut svc.balancers),
            std::mem::take(&mut svc.slots),
        );
        let vips: Vec<Ipv4Address> = svc.networks.iter().filter_map(|(_, v)| *v).collect();
        for &ti in tasks.iter() {
            let te = &mut self.tasks[ti as usize];
            te.removed = true;
            te.eligible = false;
            te.alive = false;
            if self.alive.get(te.uid) == Some(ti) {
                self.alive.remove(te.uid);
            }
            for &(_, a) in te.addrs.iter() {
                if matches!(self.addrs.get(key(a)), Some(AddrEntry { kind: AddrKind::Task { task, .. }, .. }) if task == ti)
                {
                    self.addrs.remove(key(a));
                }
            }
            let lname = lower(&te.name);
            if self.task_names.get(&lname) == Some(&ti) {
                self.task_names.remove(&lname);
            }
        }
        for a in vips {
            if matches!(self.addrs.get(key(a)), Some(AddrEntry { kind: AddrKind::Vip { service, .. }, .. }) if service == si)
            {
                self.addrs.remove(key(a));
            }
        }
        for &b in bals.iter() {
            let bal = &mut self.balancers[usize::from(b)];
            bal.backends = Arc::from([]);
            bal.maglev = None;
        }
        for &slot in slots.iter() {
            let p = self.port_map[slot];
            if p != 0
                && self
                    .published
                    .get(usize::from(p) - 1)
                    .is_some_and(|p| bals.contains(&p.balancer))
            {
                self.port_map[slot] = 0;
            }
        }
        self.garbage += tasks.len() + bals.len();
    }

    /// Compiles service `s` into slot `si` (an existing slot, taken out first, or the next).
    // Casts: as in `compile`.
    #[allow(clippy::cast_possible_truncation)]
    fn put_service(
        &mut self,
        ctx: &Ctx,
        state: &State,
        si: SvcIdx,
        s: &model::Service,
        health: &HealthView,
    ) {
        let svc = si;
        let mut ids = Vec::with_capacity(s.tasks.len());
        let mut sorted: Vec<&model::Task> = s.tasks.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for &t in &sorted {
            let node = ctx.nodes.get(t.node.as_str()).copied().unwrap_or(0);
            let tidx = self.tasks.len() as TaskIdx;
            let uid = task_uid(&s.name, t);
            // An ejection (this node's passive verdict) stands over any check's verdict; a
            // service without a check has no other.
            let verdict = match (health.get(&uid).copied(), &s.health) {
                (Some(Health::Ejected), _) => Some(Health::Ejected),
                (v, Some(_)) => Some(v.unwrap_or(Health::Starting)),
                (_, None) => None,
            };
            let name: Arc<str> = Arc::from(t.name.as_str());
            let entry = TaskEntry {
                uid,
                name: Arc::clone(&name),
                service: svc,
                node,
                eligible: t.state == model::TaskState::Running
                    && t.weight > 0
                    && !self.nodes[usize::from(node)].drained
                    && matches!(verdict, None | Some(Health::Healthy)),
                alive: t.state.keeps_flows() && verdict != Some(Health::Unhealthy),
                weight: t.weight,
                state: t.state,
                health: verdict,
                addrs: t
                    .addresses
                    .iter()
                    .filter_map(|a| Some((*ctx.nets.get(a.network.as_str())?, ip(a.addr))))
                    .collect(),
                removed: false,
            };
            for &(net, a) in entry.addrs.iter() {
                self.addrs.insert(
                    key(a),
                    AddrEntry {
                        net,
                        kind: AddrKind::Task {
                            task: tidx,
                            node,
                            local: node == ctx.local_idx,
                            vlan: t.vlan.unwrap_or(0),
                        },
                    },
                );
            }
            if entry.alive {
                self.alive.insert(uid, tidx);
            }
            self.task_names.insert(lower(&name), tidx);
            self.tasks.push(entry);
            ids.push(tidx);
        }
        let mut bals = Vec::new();
        let mut slots = Vec::new();
        let affinity_ms = s.affinity.map_or(0, |a| a.timeout_s().saturating_mul(1000));
        let weighted = s.scheduler.weighted();
        let mk_balancer = |net: NetIdx, local_only: bool, key: u64, tasks: &Vec<TaskEntry>| {
            let net_name = &state.networks[usize::from(net)].name;
            // `sorted[k]` is the task `ids[k]` was made from (no search by name: a
            // service of many tasks compiles in linear time).
            let backends: Vec<Backend> = ids
                .iter()
                .zip(&sorted)
                .filter_map(|(&ti, mt)| {
                    let te = &tasks[ti as usize];
                    let addr = mt.addr_on(net_name)?;
                    let local = te.node == ctx.local_idx;
                    (te.eligible && (!local_only || local)).then_some(Backend {
                        task: ti,
                        uid: te.uid,
                        addr: ip(addr),
                        node: te.node,
                        local,
                        weight: if weighted { te.weight.max(1) } else { 1 },
                    })
                })
                .collect();
            let maglev = (s.scheduler == SchedulerKind::Maglev || affinity_ms > 0).then(|| {
                let bs: Vec<maglev::Backend> = backends
                    .iter()
                    .map(|b| maglev::Backend {
                        id: b.uid,
                        weight: b.weight,
                    })
                    .collect();
                Arc::new(Maglev::build(&bs))
            });
            Balancer {
                service: svc,
                net,
                backends: backends.into(),
                scheduler: s.scheduler,
                maglev,
                affinity_ms,
                key,
            }
        };
        let svc_key = name_hash(s.name.as_bytes());
        for sn in &s.networks {
            if let (Some(vip), Some(&net)) = (sn.vip, ctx.nets.get(sn.network.as_str())) {
                let bal = self.balancers.len() as BalIdx;
                let bkey = mix64(svc_key ^ u64::from(state.networks[usize::from(net)].vni));
                self.balancers
                    .push(mk_balancer(net, false, bkey, &self.tasks));
                bals.push(bal);
                self.addrs.insert(
                    key(ip(vip)),
                    AddrEntry {
                        net,
                        kind: AddrKind::Vip {
                            service: svc,
                            balancer: bal,
                        },
                    },
                );
            }
        }
        for p in &s.ports {
            let Some(net) = self.ingress_net else {
                continue;
            };
            let local_only = p.mode == PublishMode::Host;
            if local_only && !s.tasks.iter().any(|t| t.node == ctx.local) {
                // Host mode: only nodes that run a task answer.
                continue;
            }
            let bal = self.balancers.len() as BalIdx;
            let proto = u64::from(p.protocol.ip_number());
            let bkey = mix64(svc_key ^ (1 << 40 | proto << 16 | u64::from(p.published)));
            self.balancers
                .push(mk_balancer(net, local_only, bkey, &self.tasks));
            bals.push(bal);
            let slot = match p.protocol {
                Protocol::Tcp => 0,
                Protocol::Udp => PORTS,
            } + usize::from(p.published);
            self.published.push(Published {
                balancer: bal,
                target: p.target,
                mode: p.mode,
            });
            // Saturates rather than wraps: past u16::MAX entries `check_counts` refuses
            // the table anyway.
            self.port_map[slot] = u16::try_from(self.published.len()).unwrap_or(u16::MAX);
            slots.push(slot);
        }
        let entry = SvcEntry {
            name: Arc::from(s.name.as_str()),
            uid: service_uid(&s.name),
            endpoint_mode: s.endpoint_mode,
            client_ip: s.client_ip,
            timeouts: s.timeouts,
            tasks: ids.into(),
            networks: s
                .networks
                .iter()
                .filter_map(|n| Some((*ctx.nets.get(n.network.as_str())?, n.vip.map(ip))))
                .collect(),
            health: s.health.clone().map(Arc::new),
            health_port: s.health_port().unwrap_or(80),
            outlier: s.outlier,
            balancers: bals.into(),
            slots: slots.into(),
            removed: false,
        };
        self.svc_names.insert(lower(&entry.name), si);
        if usize::from(si) == self.services.len() {
            self.services.push(entry);
        } else {
            self.services[usize::from(si)] = entry;
        }
    }

    /// The service named `name` (any case).
    pub fn service_by_name(&self, name: &str) -> Option<SvcIdx> {
        self.svc_names
            .get(name.to_ascii_lowercase().as_str())
            .copied()
    }

    /// The task named `name` (any case).
    pub fn task_by_name(&self, name: &str) -> Option<TaskIdx> {
        self.task_names
            .get(name.to_ascii_lowercase().as_str())
            .copied()
    }

    /// Task `t`'s address on network `net`.
    pub fn task_addr_on(&self, t: TaskIdx, net: NetIdx) -> Option<Ipv4Address> {
        let te = self.tasks.get(t as usize)?;
        te.addrs.iter().find(|(n, _)| *n == net).map(|(_, a)| *a)
    }

    /// The published port `port` of protocol `proto` on this node.
    #[inline]
    pub fn published(&self, proto: IpProtocol, port: u16) -> Option<&Published> {
        let base = match proto {
            IpProtocol::Tcp => 0,
            IpProtocol::Udp => PORTS,
            _ => return None,
        };
        let i = self.port_map[base + usize::from(port)];
        if i == 0 {
            None
        } else {
            self.published.get(usize::from(i) - 1)
        }
    }

    /// What the overlay address `a` is.
    #[inline]
    pub fn addr(&self, a: Ipv4Address) -> Option<AddrEntry> {
        self.addrs.get(key(a))
    }

    /// The VLAN of the tasks bridge port of the local task at `a`: 0 for an untagged task, or
    /// an address that is no local task's.
    pub fn local_vlan(&self, a: Ipv4Address) -> u16 {
        match self.addr(a).map(|e| e.kind) {
            Some(AddrKind::Task {
                local: true, vlan, ..
            }) => vlan,
            _ => 0,
        }
    }

    /// The peer node whose VTEP is `a`.
    #[inline]
    pub fn peer(&self, a: Ipv4Address) -> Option<NodeIdx> {
        self.peers.get(key(a))
    }

    /// The peer whose VTEP is the IPv6 address `a` (over an IPv6 underlay).
    #[inline]
    pub fn peer6(&self, a: Ipv6Address) -> Option<NodeIdx> {
        self.peers6.get(u128::from(a))
    }

    #[inline]
    pub fn network_by_vni(&self, vni: u32) -> Option<NetIdx> {
        self.vnis.get(vni)
    }

    /// Whether the task with `uid` may keep its flows.
    #[inline]
    pub fn task_alive(&self, uid: u64) -> bool {
        self.alive.get(uid).is_some()
    }

    /// The task with `uid`, while it may keep flows.
    pub fn task_by_uid(&self, uid: u64) -> Option<TaskIdx> {
        self.alive.get(uid)
    }

    #[inline]
    pub fn net(&self, i: NetIdx) -> &NetEntry {
        &self.networks[usize::from(i)]
    }

    /// A dual-stack network's IPv6 prefix: every overlay address of network `i` has its IPv6
    /// twin there ([`model::Ipv6Net::embed`]).
    #[inline]
    pub fn subnet6(&self, i: NetIdx) -> Option<model::Ipv6Net> {
        self.subnets6.get(usize::from(i)).copied().flatten()
    }

    /// What the transport checksum of a packet between two twins of dual-stack network `i`
    /// changes by when it is turned into IPv4 (`[0]`) and back (`[1]`): only the pseudo-header's
    /// addresses change, and the twins of one network share their first 96 bits, so it is the
    /// network's constant, not the packet's. Zero for a network that is not dual-stack.
    #[inline]
    pub fn twin_deltas(&self, i: NetIdx) -> [Delta; 2] {
        self.deltas6
            .get(usize::from(i))
            .copied()
            .unwrap_or_default()
    }

    #[inline]
    pub fn node(&self, i: NodeIdx) -> &NodeEntry {
        &self.nodes[usize::from(i)]
    }

    #[inline]
    pub fn balancer(&self, i: BalIdx) -> &Balancer {
        &self.balancers[usize::from(i)]
    }

    /// An empty table for a node that knows nothing yet (everything is dropped or handed to the
    /// host stack).
    pub fn empty(local: &str, addr: Ipv4Addr) -> ServiceTable {
        let state = State {
            nodes: vec![model::Node {
                name: local.to_string(),
                addr,
                vtep: None,
                addr6: None,
                vtep_port: model::VXLAN_PORT,
                availability: Availability::Active,
            }],
            ..State::default()
        };
        // An empty state with one node always validates and builds; fall back to a hand-built
        // table anyway rather than panic.
        match Self::build(&state, local, 0) {
            Ok(t) => t,
            Err(_) => ServiceTable {
                generation: 0,
                local: 0,
                node_addr: ip(addr),
                node_addr6: None,
                vtep_port: model::VXLAN_PORT,
                nodes: Vec::new(),
                down: Arc::default(),
                networks: Vec::new(),
                services: Vec::new(),
                tasks: Vec::new(),
                balancers: Vec::new(),
                published: Vec::new(),
                port_map: vec![0u16; 2 * PORTS].into_boxed_slice(),
                addrs: FrozenMap::default(),
                peers: FrozenMap::default(),
                peers6: FrozenMap::default(),
                vnis: FrozenMap::default(),
                alive: FrozenMap::default(),
                ingress_net: None,
                sealed: false,
                vxlan_slow: false,
                dual_stack: false,
                subnets6: Box::default(),
                deltas6: Box::default(),
                svc_names: HashMap::new(),
                task_names: HashMap::new(),
                garbage: 0,
            },
        }
    }
}

/// [`ServiceTable::twin_deltas`] of prefix `p`: its first 96 bits, in the source and the
/// destination address, leave the pseudo-header (and come back).
fn twin_deltas(p: model::Ipv6Net) -> [Delta; 2] {
    let o = p.addr.octets();
    let mut to4 = [(0u16, 0u16); 12];
    for (i, w) in o[..12].chunks_exact(2).enumerate() {
        let w = u16::from_be_bytes([w[0], w[1]]);
        to4[i] = (w, 0);
        to4[i + 6] = (w, 0);
    }
    let to6 = to4.map(|(w, z)| (z, w));
    [Delta::new().of(&to4), Delta::new().of(&to6)]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ctl::model::*;

    /// Two networks, three nodes, `web` with tasks on n2 and n3 publishing 8080->80: the
    /// simulation's seed layout.
    pub(crate) use crate::testkit::three_nodes;

    #[test]
    fn compiles_published_ports_vips_and_addresses() {
        let t = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
        let p = t.published(IpProtocol::Tcp, 8080).unwrap();
        assert_eq!(p.target, 80);
        assert!(t.published(IpProtocol::Udp, 8080).is_none());
        assert!(t.published(IpProtocol::Tcp, 8081).is_none());
        let b = t.balancer(p.balancer);
        assert_eq!(b.backends.len(), 2);
        assert_eq!(b.backends[0].addr, Ipv4Address::new(10, 0, 0, 11));
        assert!(!b.backends[0].local);
        let vip = t.addr(Ipv4Address::new(10, 0, 1, 2)).unwrap();
        assert!(matches!(vip.kind, AddrKind::Vip { .. }));
        assert_eq!(
            t.addr(Ipv4Address::new(10, 0, 0, 2)).unwrap().kind,
            AddrKind::Endpoint {
                node: 0,
                local: true
            }
        );
        assert_eq!(t.peer(Ipv4Address::new(192, 168, 1, 12)), Some(1));
        assert_eq!(
            t.peer(Ipv4Address::new(192, 168, 1, 11)),
            None,
            "a node is not its own peer"
        );
        assert_eq!(t.network_by_vni(INGRESS_VNI), Some(0));
        assert_eq!(t.net(0).local_endpoint, Some(Ipv4Address::new(10, 0, 0, 2)));
    }

    #[test]
    fn drained_nodes_and_weight_zero_tasks_take_no_new_flows_but_stay_alive() {
        let mut s = three_nodes();
        s.nodes[1].availability = Availability::Drain;
        s.services[0].tasks[1].weight = 0;
        let t = ServiceTable::build(&s, "n1", 1).unwrap();
        let p = t.published(IpProtocol::Tcp, 8080).unwrap();
        assert!(t.balancer(p.balancer).backends.is_empty());
        assert!(t.tasks.iter().all(|x| t.task_alive(x.uid)));
    }

    #[test]
    fn health_verdicts_decide_who_takes_and_keeps_flows() {
        let mut s = three_nodes();
        s.services[0].health = Some(HealthCheck::default());
        let t = ServiceTable::build(&s, "n1", 1).unwrap();
        let bal = |t: &ServiceTable| {
            t.balancer(t.published(IpProtocol::Tcp, 8080).unwrap().balancer)
                .backends
                .len()
        };
        // Starting: no new flows yet, but nothing to end either.
        assert_eq!(bal(&t), 0);
        assert!(t
            .tasks
            .iter()
            .all(|x| x.health == Some(Health::Starting) && x.alive && !x.eligible));
        let (u1, u2) = (t.tasks[0].uid, t.tasks[1].uid);
        let view = HealthView::from([(u1, Health::Healthy), (u2, Health::Unhealthy)]);
        let t = ServiceTable::build_with(&s, "n1", 2, &view).unwrap();
        assert_eq!(bal(&t), 1);
        assert!(t.task_alive(u1));
        assert!(!t.task_alive(u2), "an unhealthy task's flows end");
        // Without a health check, verdicts are ignored.
        s.services[0].health = None;
        let t = ServiceTable::build_with(&s, "n1", 3, &view).unwrap();
        assert_eq!(bal(&t), 2);
        assert!(t.tasks.iter().all(|x| x.health.is_none()));
        // An ejection counts with or without a check: no new flows, its flows go on.
        let view = HealthView::from([(u1, Health::Ejected)]);
        let t = ServiceTable::build_with(&s, "n1", 4, &view).unwrap();
        assert_eq!(bal(&t), 1);
        assert_eq!(t.tasks[0].health, Some(Health::Ejected));
        assert!(t.task_alive(u1) && !t.tasks[0].eligible);
        s.services[0].health = Some(HealthCheck::default());
        let view = HealthView::from([(u1, Health::Ejected), (u2, Health::Healthy)]);
        let t = ServiceTable::build_with(&s, "n1", 5, &view).unwrap();
        assert_eq!(bal(&t), 1);
        assert!(t.task_alive(u1));
    }

    #[test]
    fn names_and_addresses_for_the_host_side() {
        let t = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
        assert_eq!(t.service_by_name("WEB"), Some(0));
        assert_eq!(t.task_by_name("web.2"), Some(1));
        let app = t.addr(Ipv4Address::new(10, 0, 1, 1)).unwrap().net;
        assert_eq!(t.task_addr_on(1, app), Some(Ipv4Address::new(10, 0, 1, 12)));
        assert_eq!(
            &t.services[0].networks[..],
            [(app, Some(Ipv4Address::new(10, 0, 1, 2)))]
        );
        assert_eq!(t.services[0].health_port, 80);
    }

    #[test]
    fn host_mode_ports_are_served_by_local_tasks_only() {
        let mut s = three_nodes();
        s.services[0].ports[0].mode = PublishMode::Host;
        let t1 = ServiceTable::build(&s, "n1", 1).unwrap();
        assert!(
            t1.published(IpProtocol::Tcp, 8080).is_none(),
            "n1 runs no task"
        );
        let t2 = ServiceTable::build(&s, "n2", 1).unwrap();
        let p = t2.published(IpProtocol::Tcp, 8080).unwrap();
        let b = t2.balancer(p.balancer);
        assert_eq!(b.backends.len(), 1);
        assert!(b.backends[0].local);
    }

    #[test]
    fn invalid_states_and_unknown_local_nodes_are_refused() {
        let mut s = three_nodes();
        s.services[0].networks[0].vip = Some(Ipv4Addr::new(10, 9, 9, 9));
        assert!(matches!(
            ServiceTable::build(&s, "n1", 1),
            Err(BuildError::Invalid(_))
        ));
        assert!(matches!(
            ServiceTable::build(&three_nodes(), "n9", 1),
            Err(BuildError::UnknownLocalNode(_))
        ));
    }

    #[test]
    fn task_uids_are_stable_and_change_with_the_address() {
        let a = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
        let b = ServiceTable::build(&three_nodes(), "n1", 2).unwrap();
        assert_eq!(a.tasks[0].uid, b.tasks[0].uid);
        let mut s = three_nodes();
        s.services[0].tasks[0].addresses[0].addr = Ipv4Addr::new(10, 0, 0, 99);
        let c = ServiceTable::build(&s, "n1", 3).unwrap();
        assert_ne!(a.tasks[0].uid, c.tasks[0].uid);
        assert!(!c.task_alive(a.tasks[0].uid));
    }

    /// What a table answers, by names rather than indices: two tables that answer alike for
    /// every port, address, name and task are the same to the fast path and the host side.
    fn answers(t: &ServiceTable) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let task = |ti: TaskIdx| &*t.tasks[ti as usize].name;
        let backends = |b: BalIdx| {
            let bal = t.balancer(b);
            let v: Vec<_> = bal
                .backends
                .iter()
                .map(|be| (task(be.task), be.uid, be.addr, be.local))
                .collect();
            (
                &*t.services[usize::from(bal.service)].name,
                bal.net,
                v,
                bal.maglev.is_some(),
            )
        };
        for (slot, &i) in t.port_map.iter().enumerate().filter(|(_, &i)| i != 0) {
            let (name, port) = if slot < PORTS {
                ("tcp", slot)
            } else {
                ("udp", slot - PORTS)
            };
            let p = &t.published[usize::from(i) - 1];
            let _ = writeln!(
                out,
                "{name}/{port} -> {} {:?} {:?}",
                p.target,
                p.mode,
                backends(p.balancer)
            );
        }
        let mut addrs: Vec<_> = t.addrs.iter().collect();
        addrs.sort_by_key(|(k, _)| *k);
        for (k, e) in addrs {
            let kind = match e.kind {
                AddrKind::Task {
                    task: ti,
                    node,
                    local,
                    vlan,
                } => format!("task {} {node} {local} {vlan}", task(ti)),
                AddrKind::Vip { service, balancer } => format!(
                    "vip {} {:?}",
                    t.services[usize::from(service)].name,
                    backends(balancer)
                ),
                other => format!("{other:?}"),
            };
            let _ = writeln!(out, "addr {k:x} net {} {kind}", e.net);
        }
        let mut alive: Vec<_> = t.alive.iter().map(|(u, ti)| (u, task(ti))).collect();
        alive.sort_unstable();
        let _ = writeln!(out, "alive {alive:?}");
        let mut svcs: Vec<_> = t.services.iter().filter(|s| !s.removed).collect();
        svcs.sort_by(|a, b| a.name.cmp(&b.name));
        for s in svcs {
            let tasks: Vec<_> = s
                .tasks
                .iter()
                .map(|&ti| {
                    let te = &t.tasks[ti as usize];
                    (
                        task(ti),
                        te.uid,
                        te.eligible,
                        te.alive,
                        te.weight,
                        te.state,
                        te.health,
                        te.node,
                        te.addrs.to_vec(),
                    )
                })
                .collect();
            let by_name = t
                .service_by_name(&s.name)
                .map(|i| &*t.services[usize::from(i)].name);
            let _ = writeln!(
                out,
                "svc {} {by_name:?} {:?} {:?} {:?} {}",
                s.name, s.endpoint_mode, s.networks, tasks, s.health_port
            );
            for &ti in s.tasks.iter() {
                let found = t.task_by_name(task(ti)).map(task);
                assert_eq!(found, Some(task(ti)));
            }
        }
        let live = t.tasks.iter().filter(|te| !te.removed).count();
        let _ = writeln!(out, "tasks {live}");
        out
    }

    #[derive(Debug, Clone)]
    enum Op {
        Weight(usize, usize, u32),
        Shutdown(usize, usize),
        AddTask(usize, u8),
        RemoveTask(usize),
        RemoveService(usize),
        AddService(u8),
        Publish(usize, u16),
        Unpublish(usize),
        Health(usize, usize, u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..6usize, 0..6usize, 0..4u32).prop_map(|(s, t, w)| Op::Weight(s, t, w)),
            (0..6usize, 0..6usize).prop_map(|(s, t)| Op::Shutdown(s, t)),
            (0..6usize, 0..3u8).prop_map(|(s, n)| Op::AddTask(s, n)),
            (0..6usize).prop_map(Op::RemoveTask),
            (0..6usize).prop_map(Op::RemoveService),
            (0..200u8).prop_map(Op::AddService),
            (0..6usize, 8080..8084u16).prop_map(|(s, p)| Op::Publish(s, p)),
            (0..6usize).prop_map(Op::Unpublish),
            (0..6usize, 0..6usize, 0..3u8).prop_map(|(s, t, h)| Op::Health(s, t, h)),
        ]
    }

    #[test]
    fn a_patched_table_answers_as_one_compiled_afresh() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(64), |(ops in proptest::collection::vec(op(), 1..30))| {
            let mut state = three_nodes();
            let mut health = HealthView::new();
            let mut next_addr = 100u8;
            let mut table = ServiceTable::build(&state, "n1", 1).unwrap();
            // The table before `table`, and the services changed since: patched in place, as
            // the controller does with the table the workers have let go.
            let mut spare: Option<(ServiceTable, BTreeSet<String>)> = None;
            for (step, op) in ops.into_iter().enumerate() {
                let mut next = state.clone();
                let n = next.services.len();
                let mut touched = BTreeSet::new();
                let mut health_next = health.clone();
                match op {
                    Op::Weight(s, t, _) | Op::Health(s, t, _) if n > 0 && !next.services[s % n].tasks.is_empty() => {
                        let svc = &mut next.services[s % n];
                        let k = t % svc.tasks.len();
                        touched.insert(svc.name.clone());
                        match op {
                            Op::Weight(_, _, w) => svc.tasks[k].weight = w,
                            Op::Health(_, _, h) => {
                                if svc.health.is_none() {
                                    svc.health = Some(model::HealthCheck::default());
                                }
                                let uid = task_uid(&svc.name, &svc.tasks[k]);
                                let v = [Health::Healthy, Health::Unhealthy, Health::Starting][usize::from(h)];
                                health_next.insert(uid, v);
                            }
                            _ => {}
                        }
                    }
                    Op::Shutdown(s, t) if n > 0 && !next.services[s % n].tasks.is_empty() => {
                        let svc = &mut next.services[s % n];
                        let k = t % svc.tasks.len();
                        svc.tasks[k].state = model::TaskState::Shutdown;
                        touched.insert(svc.name.clone());
                    }
                    Op::AddTask(s, node) if n > 0 => {
                        let svc = &mut next.services[s % n];
                        let slot = svc.tasks.len() + 1 + usize::from(next_addr);
                        next_addr = next_addr.wrapping_add(1).max(100);
                        let mut t = crate::testkit::task(
                            &format!("{}.{slot}", svc.name),
                            ["n1", "n2", "n3"][usize::from(node)],
                            &[("ingress", Ipv4Addr::new(10, 0, 0, next_addr)), ("appnet", Ipv4Addr::new(10, 0, 1, next_addr))],
                        );
                        t.weight = 1;
                        svc.tasks.push(t);
                        touched.insert(svc.name.clone());
                    }
                    Op::RemoveTask(s) if n > 0 => {
                        let svc = &mut next.services[s % n];
                        svc.tasks.pop();
                        touched.insert(svc.name.clone());
                    }
                    Op::RemoveService(s) if n > 0 => {
                        touched.insert(next.services.remove(s % n).name);
                    }
                    Op::AddService(k) => {
                        let name = format!("svc{k}");
                        if next.service(&name).is_none() {
                            next_addr = next_addr.wrapping_add(1).max(100);
                            let mut svc = model::Service::new(&name);
                            svc.networks.push(model::ServiceNetwork { network: "appnet".into(), vip: Some(Ipv4Addr::new(10, 0, 1, next_addr)) });
                            next.put_service(&name, Some(svc));
                            touched.insert(name);
                        }
                    }
                    Op::Publish(s, port) if n > 0 => {
                        let svc = &mut next.services[s % n];
                        svc.ports.push(model::PublishedPort { protocol: Protocol::Tcp, published: port, target: 80, mode: if port % 2 == 0 { PublishMode::Ingress } else { PublishMode::Host } });
                        touched.insert(svc.name.clone());
                    }
                    Op::Unpublish(s) if n > 0 => {
                        let svc = &mut next.services[s % n];
                        svc.ports.clear();
                        touched.insert(svc.name.clone());
                    }
                    _ => {}
                }
                // Tasks of a service publishing ports need an ingress address: every task has one.
                if ctl::validate(&next).is_err() {
                    continue;
                }
                let g = 2 + step as u64;
                let patched = match spare.take() {
                    // Every third step on a copy, the others on the spare.
                    Some((mut old, behind)) if step % 3 != 0 => {
                        let all: BTreeSet<String> = behind.union(&touched).cloned().collect();
                        old.update(&next, &all, g, &health_next).unwrap();
                        old
                    }
                    _ => table.patch(&next, &touched, g, &health_next).unwrap(),
                };
                let fresh = ServiceTable::compile(&next, "n1", g, &health_next, &BTreeSet::new()).unwrap();
                prop_assert_eq!(answers(&patched), answers(&fresh));
                state = next;
                health = health_next;
                spare = Some((std::mem::replace(&mut table, patched), touched));
            }
        });
    }
}
