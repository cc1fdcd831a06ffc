//! In-memory pipeline scenarios: a node `n1` of a three-node mesh, with its flow table warmed,
//! fed prebuilt 64-byte frames. Shared by the `bench pipeline` command and the criterion
//! benches, so both measure the same thing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use ctl::model::*;
use dataplane::balance::ServiceTable;
use dataplane::buf::{PacketBuf, PortId};
use dataplane::flow::{Egress, FlowKey};
use dataplane::neigh::Neighbors;
use dataplane::pipeline::{Config, Pipeline, Verdict, Verdicts};
use dataplane::port::{Burst, BURST};
use dataplane::testkit::{self, tcp_flags, Mac};

pub const UPLINK_MAC: Mac = [0x02, 0, 0, 0, 1, 1];
pub const TASKS_MAC: Mac = [0x02, 0, 0, 0, 2, 1];
const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 9, 9];
const N2_MAC: Mac = [0x02, 0, 0, 0, 1, 2];
const N3_MAC: Mac = [0x02, 0, 0, 0, 1, 3];
const N1: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 11);
/// n1's IPv6 address (`--addr6`).
const N1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11);
const N2: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 12);
const N3: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 13);
/// n1, n2 and n3's VTEPs on the IPv6 underlay (`--vtep fd00:100::11`...).
const N1_VTEP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x11);
const N2_VTEP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x12);
const N3_VTEP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x13);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const CLI_TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 50);
const API_TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 21);
/// Every frame is padded to this (a 64-byte Ethernet frame less its FCS).
pub const FRAME: usize = 60;
/// An IPv6 client's TCP frame (Ethernet, IPv6, TCP), and where they sit in the replay buffer.
const V6_FRAME: usize = 14 + 40 + 20;
const V6_STRIDE: usize = 128;

/// The mesh the scenarios run in: `web` (8080→80, VIP 10.0.1.2) with tasks on n2 and n3, a
/// client task `cli.1` on n1, and `api` (9090→80) with a task on n1.
/// `state()` with the ingress network encrypted (`--opt encrypted`), under a fixed key.
pub fn sealed_state() -> State {
    let mut s = state();
    s.networks[0].encryption = Some(Encryption::single(1, Secret(SEAL_KEY)));
    s
}

const SEAL_KEY: [u8; 32] = [0x42; 32];

/// `state()` over an IPv6 underlay: every node's VTEP an IPv6 address (n1, n2, n3's
/// fd00:100::11 to ::13), so the overlay travels in IPv6 outer headers.
pub fn underlay6_state() -> State {
    let mut s = state();
    for (n, vtep) in s.nodes.iter_mut().zip([N1_VTEP6, N2_VTEP6, N3_VTEP6]) {
        n.vtep = Some(vtep.into());
    }
    s
}

/// `state()` with appnet dual-stack (fd00:10:1::/64): every address on it has an IPv6 twin.
pub fn dual_stack_state() -> State {
    let mut s = state();
    s.networks[1].subnet6 = Some(APP_PREFIX6);
    s
}

/// appnet's IPv6 prefix in [`dual_stack_state`].
const APP_PREFIX6: ctl::model::Ipv6Net = ctl::model::Ipv6Net {
    addr: Ipv6Addr::new(0xfd00, 0x10, 1, 0, 0, 0, 0, 0),
    prefix: 64,
};

/// The IPv6 twin of appnet address `a`.
fn twin(a: Ipv4Addr) -> Ipv6Addr {
    APP_PREFIX6.embed(a)
}

/// appnet's VNI, and web.1's address there (on n2).
const APP_VNI: u32 = 4097;
const WEB1_APP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);

/// The IPv4 length of the MTU-sized scenarios' packets: what an encrypted network on a 1500
/// underlay carries (1406) rounded down to a TCP segment a task would send.
pub const MTU_PACKET: usize = 1400;
/// Where MTU-sized frames sit in the replay buffer.
const MTU_STRIDE: usize = 1536;
/// Where sealed decapsulation frames sit in the replay buffer.
const SEALED_STRIDE: usize = 192;

pub fn state() -> State {
    let node = |name: &str, addr: Ipv4Addr| Node {
        name: name.into(),
        addr,
        vtep: None,
        addr6: None,
        vtep_port: VXLAN_PORT,
        availability: Availability::Active,
    };
    let mut endpoints = BTreeMap::new();
    endpoints.insert("n1".to_string(), Ipv4Addr::new(10, 0, 0, 2));
    endpoints.insert("n2".to_string(), Ipv4Addr::new(10, 0, 0, 3));
    endpoints.insert("n3".to_string(), Ipv4Addr::new(10, 0, 0, 4));
    let ingress = Network {
        subnet6: None,
        name: "ingress".into(),
        vni: INGRESS_VNI,
        subnet: "10.0.0.0/24".parse().expect("constant"),
        gateway: Ipv4Addr::new(10, 0, 0, 1),
        ingress: true,
        endpoints,
        mtu: None,
        encryption: None,
    };
    let app = Network {
        subnet6: None,
        name: "appnet".into(),
        vni: 4097,
        subnet: "10.0.1.0/24".parse().expect("constant"),
        gateway: Ipv4Addr::new(10, 0, 1, 1),
        ingress: false,
        endpoints: BTreeMap::new(),
        mtu: None,
        encryption: None,
    };
    let task = |name: &str, node: &str, addrs: &[(&str, Ipv4Addr)]| Task {
        name: name.into(),
        node: node.into(),
        addresses: addrs
            .iter()
            .map(|(n, a)| TaskAddress {
                network: (*n).into(),
                addr: *a,
            })
            .collect(),
        state: TaskState::Running,
        weight: 1,
        vlan: None,
    };
    let mut web = Service::new("web");
    web.networks.push(ServiceNetwork {
        network: "appnet".into(),
        vip: Some(VIP),
    });
    web.ports.push(PublishedPort {
        protocol: Protocol::Tcp,
        published: 8080,
        target: 80,
        mode: PublishMode::Ingress,
    });
    web.ports.push(PublishedPort {
        protocol: Protocol::Udp,
        published: FRAG_PORT,
        target: 80,
        mode: PublishMode::Ingress,
    });
    // 32 tasks, half on n2 and half on n3: masquerading to n1's one endpoint address leaves about
    // 64K source ports per task, so a million flows need at least 16 tasks (as with Swarm).
    for i in 0..32u8 {
        let node = if i % 2 == 0 { "n2" } else { "n3" };
        web.tasks.push(task(
            &format!("web.{}", i + 1),
            node,
            &[
                ("ingress", Ipv4Addr::new(10, 0, 0, 100 + i)),
                ("appnet", Ipv4Addr::new(10, 0, 1, 100 + i)),
            ],
        ));
    }
    let mut cli = Service::new("cli");
    cli.networks.push(ServiceNetwork {
        network: "appnet".into(),
        vip: Some(Ipv4Addr::new(10, 0, 1, 3)),
    });
    cli.tasks.push(task("cli.1", "n1", &[("appnet", CLI_TASK)]));
    let mut api = Service::new("api");
    api.ports.push(PublishedPort {
        protocol: Protocol::Tcp,
        published: 9090,
        target: 80,
        mode: PublishMode::Ingress,
    });
    api.tasks
        .push(task("api.1", "n1", &[("ingress", API_TASK)]));
    let mut n1 = node("n1", N1);
    n1.addr6 = Some(N1_6);
    State {
        nodes: vec![n1, node("n2", N2), node("n3", N3)],
        networks: vec![ingress, app],
        services: vec![web, cli, api],
    }
}

/// What a scenario feeds the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Established client flows to a published port, balanced to remote tasks (DNAT,
    /// masquerade, VXLAN encapsulation).
    Ingress,
    /// A new flow per packet: SYNs from distinct clients (schedule, insert, translate, encap).
    NewFlows,
    /// Established flows from a local task to a service VIP (DNAT, encapsulation).
    Vip,
    /// VXLAN from a peer to a local task (check, decapsulate, deliver).
    Decap,
    /// The tasks' replies to established ingress flows, back through the ingress node: VXLAN
    /// from the task's node, decapsulated, the reverse translation (un-masquerade, un-DNAT),
    /// out of the uplink to the client.
    Replies,
    /// Established UDP flows to a published port whose datagrams arrive as two 1,500-byte
    /// IPv4 fragments (a 2,952-byte datagram from a client on a 1500 link): the first finds
    /// the flow, the second follows it through the fragment table; each is DNAT'ed,
    /// masqueraded and fragmented again for the 1450 overlay before encapsulation.
    Fragments,
    /// `Ingress` on an encrypted ingress network: each frame is also sealed
    /// (XChaCha20-Poly1305) before it leaves.
    SealedIngress,
    /// `Decap` on an encrypted network: each frame's seal is checked (and its replay window)
    /// and the inner frame decrypted before it is delivered.
    SealedDecap,
    /// `Ingress` with 1,400-byte packets (a full segment of a 1500 underlay's overlay).
    IngressMtu,
    /// `SealedIngress` with 1,400-byte packets: the encrypted overlay's cost per byte.
    SealedIngressMtu,
    /// IPv6 Neighbor Solicitations for the node's IPv6 address from distinct clients (one per
    /// "flow"), each answered in place with an advertisement (parse, validate, checksum both
    /// ways).
    Ndp,
    /// `Ingress` from IPv6 clients to the node's IPv6 address: each packet is also converted
    /// to IPv4 (the flow found by its client's stand-in and checked against its address).
    Ingress6,
    /// `Replies` to IPv6 clients: each reply is also converted back to IPv6.
    Replies6,
    /// `Ingress` over an IPv6 underlay (every node's VTEP an IPv6 address): each packet leaves
    /// in VXLAN in IPv6 outer headers.
    IngressUnderlay6,
    /// `Decap` over an IPv6 underlay: VXLAN in IPv6 (UDP checksum zero, as meshd sends it) from
    /// n2's VTEP to n1's, rewritten in place as the IPv4 datagram between the VTEPs' 32-bit
    /// names before it is checked and decapsulated.
    DecapUnderlay6,
    /// `Vip` over IPv6 on a dual-stack appnet: the client task's segments from its IPv6 twin to
    /// the VIP's, each turned into IPv4 between the twins' addresses, looked up, DNAT'ed, and
    /// turned back into IPv6 inside VXLAN to the task's node.
    Vip6,
    /// `Vip` (IPv4) on a mesh whose appnet is dual-stack: what IPv4 pays for IPv6 beside it.
    VipDualMesh,
    /// `Decap` of a task's IPv6 on a dual-stack appnet: VXLAN from n2 whose inner frame is
    /// web.1's IPv6 segment to the client task's twin, turned into IPv4 in place (the outer
    /// headers moved up), delivered, and turned back into IPv6 for the task.
    Decap6,
}

/// The published UDP port of the fragmented-datagram scenario.
pub const FRAG_PORT: u16 = 5353;
/// Its datagrams' UDP payload: two fragments of 1,480 bytes of IPv4 payload.
const FRAG_PAYLOAD: usize = 2 * 1480 - 8;
/// Where its fragments sit in the replay buffer (each 1,514 bytes).
const FRAG_STRIDE: usize = 1536;

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ingress => "established ingress",
            Kind::NewFlows => "new-flow storm",
            Kind::Vip => "VIP (task to VIP)",
            Kind::Decap => "decapsulation",
            Kind::Replies => "task replies",
            Kind::Fragments => "fragmented UDP (per fragment)",
            Kind::SealedIngress => "sealed ingress",
            Kind::SealedDecap => "sealed decapsulation",
            Kind::IngressMtu => "1400-byte ingress",
            Kind::SealedIngressMtu => "1400-byte sealed ingress",
            Kind::Ndp => "IPv6 neighbor solicitation",
            Kind::Ingress6 => "established IPv6 ingress",
            Kind::Replies6 => "task replies to IPv6 clients",
            Kind::IngressUnderlay6 => "established ingress, IPv6 underlay",
            Kind::DecapUnderlay6 => "decapsulation, IPv6 underlay",
            Kind::Vip6 => "VIP over IPv6, dual-stack",
            Kind::VipDualMesh => "VIP (task to VIP), dual-stack mesh",
            Kind::Decap6 => "decapsulation over IPv6, dual-stack",
        }
    }

    /// Whether the scenario runs on the encrypted ingress network.
    pub fn sealed(self) -> bool {
        matches!(
            self,
            Kind::SealedIngress | Kind::SealedDecap | Kind::SealedIngressMtu
        )
    }

    /// Whether the scenario runs over the IPv6 underlay.
    pub fn underlay6(self) -> bool {
        matches!(self, Kind::IngressUnderlay6 | Kind::DecapUnderlay6)
    }

    /// Whether the scenario runs on the dual-stack appnet.
    pub fn dual_stack(self) -> bool {
        matches!(self, Kind::Vip6 | Kind::Decap6 | Kind::VipDualMesh)
    }

    /// Whether it is the established-ingress path (whatever the size, sealing or underlay).
    fn ingress(self) -> bool {
        matches!(
            self,
            Kind::Ingress
                | Kind::SealedIngress
                | Kind::IngressMtu
                | Kind::SealedIngressMtu
                | Kind::IngressUnderlay6
        )
    }

    /// Whether its packets are MTU-sized.
    fn mtu(self) -> bool {
        matches!(self, Kind::IngressMtu | Kind::SealedIngressMtu)
    }
}

/// A ready-to-run scenario: the pipeline with its flows in place and the frames to replay.
pub struct Scenario {
    pub kind: Kind,
    pub flows: usize,
    /// Frames in the replay buffer: one per flow, two for fragmented datagrams.
    replayed: usize,
    pub table: ServiceTable,
    pub pipeline: Pipeline,
    /// One frame per flow, back to back, replayed in order.
    frames: Vec<u8>,
    port: PortId,
    now: u64,
    /// The next frame to replay.
    cursor: usize,
    /// Buffers reused for every burst (allocated once).
    burst: Burst,
    /// Buffers for frames `maintain` generates, and those frames.
    spare: dataplane::buf::Pool,
    generated: Burst,
    /// With `--flow-state`: the file the flow table lives in (as meshd's), and its path.
    kept: Option<(dataplane::flow::keep::FlowFile, std::path::PathBuf)>,
}

/// A pipeline whose flow table lives in a fresh flow-state file at `path` (as meshd's does by
/// default), or on the heap.
fn pipeline_over(
    cfg: Config,
    neigh: Arc<Neighbors>,
    path: Option<&std::path::Path>,
) -> (
    Pipeline,
    Option<(dataplane::flow::keep::FlowFile, std::path::PathBuf)>,
) {
    let Some(path) = path else {
        return (Pipeline::new(cfg, neigh), None);
    };
    let _ = std::fs::remove_file(path);
    let (mut ff, _) =
        match dataplane::flow::keep::FlowFile::open(path, "bench", 1, 1, cfg.flow_capacity) {
            Ok(x) => x,
            Err(e) => panic!("bench: {e}"),
        };
    let Some(arena) = ff.regions().pop() else {
        panic!("bench: a fresh flow-state file has its one region");
    };
    let (flows, _) = dataplane::flow::FlowTable::adopt(arena);
    (
        Pipeline::with_flows(cfg, neigh, flows),
        Some((ff, path.to_owned())),
    )
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("kind", &self.kind)
            .field("flows", &self.flows)
            .finish()
    }
}

/// Flow `i`'s IPv6 client and port (the port as [`client`]'s).
fn client6(i: usize) -> (Ipv6Addr, u16) {
    let (_, port) = client(i);
    let ip = Ipv6Addr::from(0xfd00_0002_u128 << 96 | (0x1_0000 + (i / 50_000) as u128));
    (ip, port)
}

// Casts: remainders below 50,000 and flow counts below 2^32.
#[allow(clippy::cast_possible_truncation)]
fn client(i: usize) -> (Ipv4Addr, u16) {
    let ip = 0xac10_0000u32 + (i / 50_000) as u32;
    (Ipv4Addr::from(ip), 10_000 + (i % 50_000) as u16)
}

fn pad(mut f: Vec<u8>) -> Vec<u8> {
    f.resize(FRAME.max(f.len()), 0);
    f.truncate(FRAME.max(f.len()));
    f
}

/// `0..n` in a deterministic random order (xorshift), so runs replay the same order. With
/// `one_cycle`, Sattolo's variant: read as "i is followed by v[i]", the order is a single cycle
/// through all `n`.
// Casts: indices of a flow list far shorter than 2^32; a remainder below its length.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn shuffled(n: usize, one_cycle: bool) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let span = if one_cycle { i } else { i + 1 };
        v.swap(i, (x % span as u64) as usize);
    }
    v
}

impl Scenario {
    /// Builds the scenario and, for established kinds, opens every flow first.
    // Casts: a remainder below 64,000, and flow counts below 2^32.
    #[allow(clippy::cast_possible_truncation)]
    pub fn new(kind: Kind, flows: usize) -> Scenario {
        Self::new_kept(kind, flows, None)
    }

    /// As [`Scenario::new`], with the flow table in a flow-state file at `kept` when given.
    pub fn new_kept(kind: Kind, flows: usize, kept: Option<&std::path::Path>) -> Scenario {
        Self::with(kind, flows, kept, false)
    }

    /// A scenario whose flows are kept in `kept` (a flow-state file) or on the heap, with
    /// per-flow packet and byte counts when `accounting` (meshd's `--flow-accounting`).
    // Casts: a remainder below 64,000, and flow counts below 2^32.
    #[allow(clippy::cast_possible_truncation)]
    pub fn with(
        kind: Kind,
        flows: usize,
        kept: Option<&std::path::Path>,
        accounting: bool,
    ) -> Scenario {
        let state = if kind.sealed() {
            sealed_state()
        } else if kind.underlay6() {
            underlay6_state()
        } else if kind.dual_stack() {
            dual_stack_state()
        } else {
            state()
        };
        let table = match ServiceTable::build(&state, "n1", 1) {
            Ok(t) => t,
            Err(e) => panic!("the bench state is valid: {e}"),
        };
        let neigh = Arc::new(Neighbors::new(1024));
        // The peers' VTEPs' MACs, by the names meshd gives them (their IPv4 addresses, or
        // `vtep6_key` of their IPv6 ones).
        for (n, mac) in state.nodes[1..].iter().zip([N2_MAC, N3_MAC]) {
            neigh.learn(u32::from(n.vtep_key()), mac);
        }
        neigh.learn(u32::from(API_TASK), [0x02, 0, 0, 0, 3, 1]);
        neigh.learn(u32::from(CLI_TASK), [0x02, 0, 0, 0, 3, 2]);
        let cfg = Config {
            uplink_mac: UPLINK_MAC,
            tasks_mac: TASKS_MAC,
            flow_capacity: flows.max(1024),
            flow_accounting: accounting,
            ..Config::default()
        };
        let (pipeline, kept) = pipeline_over(cfg, neigh, kept);
        let port = match kind {
            Kind::Vip | Kind::Vip6 | Kind::VipDualMesh => PortId::Tasks,
            _ => PortId::Uplink,
        };
        // The sealed decapsulation frames are sealed as a peer (n2) would, in the order they
        // are replayed (the receiver's replay window wants rising counters).
        let seal_keys = state.networks[0]
            .encryption
            .as_ref()
            .and_then(dataplane::overlay::seal::NetKeys::new);
        let mut sealer = dataplane::overlay::seal::Sealer::new();
        let body = if kind.mtu() {
            vec![0x5a; MTU_PACKET - 40]
        } else {
            Vec::new()
        };
        // What n2 sends the api task on n1 for flow `i`: a masqueraded request's next segment.
        let to_api = |i: usize| {
            let (_, port) = client(i);
            testkit::tcp_frame(
                [0; 6],
                [0; 6],
                Ipv4Addr::new(10, 0, 0, 3),
                port,
                API_TASK,
                80,
                tcp_flags::ACK,
                1000,
                1,
                &[],
            )
        };
        let mut frame = |i: usize, flags: u8| -> Vec<u8> {
            match kind {
                Kind::Ingress
                | Kind::NewFlows
                | Kind::Replies
                | Kind::Fragments
                | Kind::SealedIngress
                | Kind::IngressMtu
                | Kind::SealedIngressMtu
                | Kind::IngressUnderlay6 => {
                    let (ip, port) = client(i);
                    testkit::tcp_frame(
                        CLIENT_MAC, UPLINK_MAC, ip, port, N1, 8080, flags, 1000, 1, &body,
                    )
                }
                Kind::Vip | Kind::VipDualMesh => {
                    // One client task, one flow per source port.
                    let port = 1024 + (i % 64_000) as u16;
                    testkit::tcp_frame(
                        [0x02, 0, 0, 0, 3, 2],
                        TASKS_MAC,
                        CLI_TASK,
                        port,
                        VIP,
                        80,
                        flags,
                        1000,
                        1,
                        &[],
                    )
                }
                Kind::Vip6 => {
                    let port = 1024 + (i % 64_000) as u16;
                    testkit::tcp6_frame(
                        [0x02, 0, 0, 0, 3, 2],
                        TASKS_MAC,
                        twin(CLI_TASK),
                        port,
                        twin(VIP),
                        80,
                        flags,
                        1000,
                    )
                }
                Kind::Decap6 => {
                    let (_, port) = client(i);
                    let inner = testkit::tcp6_frame(
                        [0; 6],
                        [0; 6],
                        twin(WEB1_APP),
                        port,
                        twin(CLI_TASK),
                        80,
                        tcp_flags::ACK,
                        1000,
                    );
                    testkit::vxlan_frame(N2_MAC, UPLINK_MAC, N2, N1, 50000, APP_VNI, &inner)
                }
                Kind::Ingress6 | Kind::Replies6 => {
                    let (ip, port) = client6(i);
                    testkit::tcp6_frame(CLIENT_MAC, UPLINK_MAC, ip, port, N1_6, 8080, flags, 1000)
                }
                Kind::Ndp => {
                    let c = Ipv6Addr::from(0xfd00_0001_u128 << 96 | (0x1_0000 + i as u128));
                    testkit::neighbor_solicit(CLIENT_MAC, c, N1_6)
                }
                Kind::Decap => {
                    testkit::vxlan_frame(N2_MAC, UPLINK_MAC, N2, N1, 50000, INGRESS_VNI, &to_api(i))
                }
                Kind::DecapUnderlay6 => testkit::vxlan6_frame(
                    N2_MAC,
                    UPLINK_MAC,
                    N2_VTEP6,
                    N1_VTEP6,
                    50000,
                    INGRESS_VNI,
                    &to_api(i),
                    false,
                ),
                Kind::SealedDecap => {
                    let Some(keys) = seal_keys.as_ref() else {
                        panic!("the sealed state has keys");
                    };
                    let inner = to_api(i);
                    let f = testkit::sealed_vxlan_frame(
                        &mut sealer,
                        keys,
                        N2_MAC,
                        UPLINK_MAC,
                        N2,
                        N1,
                        INGRESS_VNI,
                        &inner,
                    );
                    let Some(f) = f else {
                        panic!("sealing a bench frame failed");
                    };
                    f
                }
            }
        };
        let vip_max = 64_000;
        let flows = match kind {
            Kind::Vip | Kind::Vip6 | Kind::VipDualMesh => flows.min(vip_max),
            Kind::SealedDecap => flows.next_multiple_of(BURST),
            _ => flows,
        };
        let mut s = Scenario {
            kind,
            flows,
            replayed: flows,
            table,
            pipeline,
            frames: Vec::new(),
            port,
            now: 1,
            cursor: 0,
            burst: Burst::new(),
            spare: dataplane::buf::Pool::new(64),
            generated: Burst::new(),
            kept,
        };
        let (stride, _) = s.layout();
        // Frames are laid out in the order they are replayed, like a NIC's receive ring; which
        // flow each belongs to is shuffled (established kinds), so flow state is hit at random.
        let order = if kind == Kind::NewFlows {
            (0..flows as u32).collect()
        } else {
            shuffled(flows, false)
        };
        let mut build = |flags: u8, stride: usize| {
            let mut all = Vec::with_capacity(flows * stride);
            for &i in &order {
                let mut f = pad(frame(i as usize, flags));
                f.resize(stride, 0);
                all.extend_from_slice(&f);
            }
            all
        };
        if kind.ingress()
            || matches!(
                kind,
                Kind::Vip
                    | Kind::Vip6
                    | Kind::VipDualMesh
                    | Kind::Replies
                    | Kind::Ingress6
                    | Kind::Replies6
            )
        {
            // Open every flow with a SYN first.
            let open = if kind == Kind::Replies {
                (FRAME, FRAME)
            } else if kind == Kind::Replies6 {
                (V6_STRIDE, V6_FRAME)
            } else {
                s.layout()
            };
            s.frames = build(tcp_flags::SYN, open.0);
            s.stride_run(open, flows);
            s.cursor = 0;
        }
        if matches!(kind, Kind::Replies | Kind::Replies6) {
            // Each flow's task answers: from the task to the masquerade address and port the
            // flow was given, encapsulated by the task's node back to this one.
            let mut all = Vec::with_capacity(flows * stride);
            for &i in &order {
                let key = if kind == Kind::Replies6 {
                    let (ip, port) = client6(i as usize);
                    let stand_in = dataplane::pipeline::nat64::stand_in(&ip.octets());
                    FlowKey::new(6, stand_in, port, 0, 8080)
                } else {
                    let (ip, port) = client(i as usize);
                    FlowKey::new(6, u32::from(ip), port, u32::from(N1), 8080)
                };
                let Some((id, _)) = s.pipeline.flows.lookup(&key, key.hash()) else {
                    panic!("flow {i} was opened");
                };
                let f = s.pipeline.flows.get(id);
                let Egress::Vxlan { vtep, .. } = f.fwd.egress else {
                    panic!("web's tasks are on other nodes");
                };
                let back = f.keys()[1];
                let node = Ipv4Addr::from(vtep);
                let node_mac = if node == N2 { N2_MAC } else { N3_MAC };
                let inner = testkit::tcp_frame(
                    [0; 6],
                    [0; 6],
                    Ipv4Addr::from(back.src()),
                    back.sport(),
                    Ipv4Addr::from(back.dst()),
                    back.dport(),
                    tcp_flags::ACK,
                    1000,
                    1,
                    &[],
                );
                let mut f = testkit::vxlan_frame(
                    node_mac,
                    UPLINK_MAC,
                    node,
                    N1,
                    50000,
                    INGRESS_VNI,
                    &inner,
                );
                f.resize(stride, 0);
                all.extend_from_slice(&f);
            }
            s.frames = all;
            return s;
        }
        if kind == Kind::Fragments {
            // Two fragments per flow, one after the other; the first pass opens the flows.
            let body = vec![0x5a; FRAG_PAYLOAD];
            let mut all = Vec::with_capacity(flows * 2 * FRAG_STRIDE);
            for &i in &order {
                let (ip, port) = client(i as usize);
                let whole =
                    testkit::udp_frame(CLIENT_MAC, UPLINK_MAC, ip, port, N1, FRAG_PORT, &body);
                for mut f in testkit::fragment(&whole, 1500, (i % 65_536) as u16) {
                    assert_eq!(f.len(), testkit::ETH_LEN + 1500);
                    f.resize(FRAG_STRIDE, 0);
                    all.extend_from_slice(&f);
                }
            }
            s.frames = all;
            s.replayed = 2 * flows;
            s.stride_run(s.layout(), 2 * flows);
            s.cursor = 0;
            return s;
        }
        let flags = match kind {
            Kind::NewFlows => tcp_flags::SYN,
            _ => tcp_flags::ACK,
        };
        s.frames = build(flags, stride);
        s
    }

    /// Where the replayed frames sit: (distance between frames, frame length).
    fn layout(&self) -> (usize, usize) {
        match self.kind {
            Kind::Decap | Kind::Replies | Kind::Replies6 => (
                128,
                testkit::ETH_LEN + dataplane::wire::vxlan::ENCAP_LEN + 40,
            ),
            Kind::SealedDecap => (
                SEALED_STRIDE,
                testkit::ETH_LEN
                    + dataplane::wire::vxlan::ENCAP_LEN
                    + 40
                    + dataplane::overlay::seal::SEAL_LEN,
            ),
            Kind::DecapUnderlay6 => (128, dataplane::overlay::ENCAP6_LEN + testkit::ETH_LEN + 40),
            Kind::Fragments => (FRAG_STRIDE, testkit::ETH_LEN + 1500),
            // Ethernet, IPv6, a solicitation with its link-layer address option.
            Kind::Ndp => (96, testkit::ETH_LEN + 40 + 32),
            Kind::Ingress6 | Kind::Vip6 => (V6_STRIDE, V6_FRAME),
            Kind::Decap6 => (128, dataplane::wire::vxlan::ENCAP_LEN + V6_FRAME),
            Kind::IngressMtu | Kind::SealedIngressMtu => {
                (MTU_STRIDE, testkit::ETH_LEN + MTU_PACKET)
            }
            _ => (FRAME, FRAME),
        }
    }

    fn stride_run(&mut self, (stride, len): (usize, usize), packets: usize) -> (usize, usize) {
        let mut burst = std::mem::take(&mut self.burst);
        while burst.len() < BURST {
            burst.push(PacketBuf::new());
        }
        let mut verdicts = Verdicts::new();
        let mut done = 0;
        let mut ok = 0;
        while done < packets {
            let n = (packets - done).min(BURST);
            while burst.len() < n {
                burst.push(PacketBuf::new());
            }
            burst.truncate(n);
            if self.kind == Kind::SealedDecap && self.cursor == 0 {
                // The ring of sealed frames starts over: as if their sender had sealed them
                // anew (bursts never straddle the wrap: `Scenario::new` rounds the flows).
                self.pipeline.forget_replays();
            }
            for (k, b) in burst.iter_mut().enumerate() {
                let i = (self.cursor + k) % self.replayed;
                b.fill(&self.frames[i * stride..i * stride + len]);
                b.port = self.port;
            }
            self.pipeline
                .process(&self.table, self.now, &mut burst, &mut verdicts);
            // Frames made beside the burst's (the second pieces of fragmented packets): sent by
            // the worker; here their buffers go back (a frame counts as forwarded by its own
            // verdict).
            if self.pipeline.has_extra() {
                for (b, _, _) in self.pipeline.take_extra() {
                    self.spare.put(b);
                }
            }
            // Between bursts, as the worker loop does: the flow sweep (and whatever it
            // generates, dropped here).
            self.pipeline
                .maintain(&self.table, self.now, &mut self.spare, &mut self.generated);
            while let Some(b) = self.generated.pop() {
                self.spare.put(b);
            }
            ok += verdicts
                .iter()
                .filter(|v| matches!(v, Verdict::Tx(_)))
                .count();
            done += n;
            self.cursor = (self.cursor + n) % self.replayed;
        }
        self.now += 1;
        while burst.len() < BURST {
            burst.push(PacketBuf::new());
        }
        self.burst = burst;
        (done, ok)
    }

    /// The scenario's parts for a harness of its own (a worker over in-memory ports, in
    /// [`crate::capture`]): the table, the pipeline, and each replayed frame.
    pub fn into_parts(self) -> (ServiceTable, Pipeline, Vec<Vec<u8>>) {
        let (stride, len) = self.layout();
        let frames = (0..self.replayed)
            .map(|i| self.frames[i * stride..i * stride + len].to_vec())
            .collect();
        (self.table, self.pipeline, frames)
    }

    /// Replays `packets` frames; returns how many the pipeline forwarded.
    pub fn run(&mut self, packets: usize) -> usize {
        self.stride_run(self.layout(), packets).1
    }

    /// For the new-flow storm: a fresh pipeline state so every SYN is new again.
    pub fn reset_flows(&mut self) {
        let cfg = self.pipeline.cfg.clone();
        let neigh = self.pipeline.neighbors().clone();
        // The old file's lock goes first; its mapping stays until the old pipeline goes.
        let path = self.kept.take().map(|(_, p)| p);
        let (pipeline, kept) = pipeline_over(cfg, neigh, path.as_deref());
        self.pipeline = pipeline;
        self.kept = kept;
        self.cursor = 0;
    }
}

/// One measured line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub scenario: &'static str,
    pub flows: usize,
    pub packets: usize,
    pub forwarded: usize,
    pub mpps: f64,
    pub ns_per_packet: f64,
}

/// Runs `kind` with `flows` flows for about `packets` packets (best of `repeats` runs; the
/// machine is shared and noisy, the best run is the one least disturbed).
pub fn measure(kind: Kind, flows: usize, packets: usize, repeats: usize) -> Measured {
    measure_kept(kind, flows, packets, repeats, None, false)
}

/// As [`measure`], with the flow table in a flow-state file at `kept` when given (meshd's
/// default: a file on tmpfs, see `dataplane::flow::keep`).
pub fn measure_kept(
    kind: Kind,
    flows: usize,
    packets: usize,
    repeats: usize,
    kept: Option<&std::path::Path>,
    accounting: bool,
) -> Measured {
    let mut s = Scenario::with(kind, flows, kept, accounting);
    let packets = if kind == Kind::NewFlows {
        s.flows
    } else {
        packets
    };
    // Warm-up pass.
    if kind != Kind::NewFlows {
        s.run(packets.min(s.flows * 2).max(BURST));
    }
    let mut best = f64::MAX;
    let mut forwarded = 0;
    for _ in 0..repeats.max(1) {
        if kind == Kind::NewFlows {
            s.reset_flows();
        }
        let t = Instant::now();
        forwarded = s.run(packets);
        let ns = t.elapsed().as_nanos() as f64 / packets as f64;
        best = best.min(ns);
    }
    Measured {
        scenario: kind.name(),
        flows: s.flows,
        packets,
        forwarded,
        mpps: 1e3 / best,
        ns_per_packet: best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv6 underlay's rows measure that path: the ingress row's frames leave in VXLAN in
    /// IPv6 from n1's VTEP to the task's node's (to its MAC, UDP checksum zero), and the
    /// decapsulation row's frames are taken from n2's IPv6 VTEP and delivered to the api task.
    #[test]
    fn the_ipv6_underlay_rows_go_over_ipv6() {
        let mut s = Scenario::new(Kind::IngressUnderlay6, 64);
        assert_eq!(s.run(BURST), BURST);
        for b in s.burst.iter() {
            let f = b.data();
            let v = testkit::decap6(f).expect("VXLAN over IPv6");
            let mac = match v.dst {
                N2_VTEP6 => N2_MAC,
                N3_VTEP6 => N3_MAC,
                d => panic!("to {d}"),
            };
            assert_eq!((&f[..6], &f[6..12]), (&mac[..], &UPLINK_MAC[..]));
            assert_eq!((v.src, v.checksum, v.vni), (N1_VTEP6, 0, INGRESS_VNI));
        }
        let mut s = Scenario::new(Kind::DecapUnderlay6, 64);
        assert_eq!(s.run(BURST), BURST);
        for b in s.burst.iter() {
            let f = b.data();
            assert_eq!(f.len(), testkit::ETH_LEN + 40);
            assert_eq!(&f[..6], &[0x02, 0, 0, 0, 3, 1]);
            assert_eq!(f[30..34], API_TASK.octets());
        }
    }

    /// The source, destination and TCP checksum check of an IPv6 TCP frame.
    fn tcp6_of(f: &[u8]) -> (Ipv6Addr, Ipv6Addr, bool) {
        let ip = smoltcp::wire::Ipv6Packet::new_checked(&f[14..]).unwrap();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let tcp = smoltcp::wire::TcpPacket::new_checked(ip.payload()).unwrap();
        (src, dst, tcp.verify_checksum(&src.into(), &dst.into()))
    }

    /// The dual-stack rows measure that path: the VIP row's segments leave as IPv6 inside VXLAN
    /// (from the client's twin to a web task's), the decapsulation row's reach the client task
    /// as IPv6, checksums right.
    #[test]
    fn the_dual_stack_rows_stay_ipv6() {
        let mut s = Scenario::new(Kind::Vip6, 64);
        assert_eq!(s.run(BURST), BURST);
        for b in s.burst.iter() {
            let (_, inner) = testkit::decap(b.data()).expect("VXLAN");
            let (src, dst, sum) = tcp6_of(inner);
            assert_eq!(src, twin(CLI_TASK));
            assert!(APP_PREFIX6
                .extract(dst)
                .is_some_and(|a| a.octets()[3] >= 100));
            assert!(sum);
        }
        let mut s = Scenario::new(Kind::Decap6, 64);
        assert_eq!(s.run(BURST), BURST);
        for b in s.burst.iter() {
            let f = b.data();
            assert_eq!(&f[..6], &[0x02, 0, 0, 0, 3, 2]);
            assert_eq!(tcp6_of(f), (twin(WEB1_APP), twin(CLI_TASK), true));
        }
    }

    #[test]
    fn ipv4_on_a_dual_stack_mesh_stays_ipv4_into_vxlan() {
        let mut s = Scenario::new(Kind::VipDualMesh, 64);
        assert!(s.table.dual_stack);
        assert_eq!(s.run(BURST), BURST);
        for b in s.burst.iter() {
            let (vni, inner) = testkit::decap(b.data()).expect("VXLAN over IPv4");
            assert_eq!(vni, APP_VNI);
            let seg = testkit::parse_ipv4_tcp(inner).expect("inner IPv4 TCP, checksums right");
            assert_eq!(seg.src, CLI_TASK);
        }
        assert_eq!(s.pipeline.stats.total_drops(), 0);
    }

    /// cli.1's MAC, as `Scenario::with` teaches the neighbour table.
    const CLI_TASK_MAC: Mac = [0x02, 0, 0, 0, 3, 2];

    /// The next burst of `s`'s replay, as `Scenario::run` feeds it: each frame's verdict and
    /// the frame as it leaves.
    fn next_burst(s: &mut Scenario) -> Vec<(Verdict, Vec<u8>)> {
        let (stride, len) = s.layout();
        let mut burst = Burst::new();
        for k in 0..BURST {
            let i = (s.cursor + k) % s.replayed;
            let mut b = PacketBuf::new();
            b.fill(&s.frames[i * stride..i * stride + len]);
            b.port = s.port;
            burst.push(b);
        }
        let mut verdicts = Verdicts::new();
        s.pipeline
            .process(&s.table, s.now, &mut burst, &mut verdicts);
        s.cursor = (s.cursor + BURST) % s.replayed;
        verdicts
            .iter()
            .zip(burst.iter())
            .map(|(v, b)| (*v, b.data().to_vec()))
            .collect()
    }

    /// The dual-stack VIP row measures a task's IPv6 to the VIP's twin: every flow opened by its
    /// SYN, each packet sent on in VXLAN (over IPv4, to the backend's node) as IPv6 again, from
    /// the client's twin to the backend's, its checksum right.
    #[test]
    fn the_dual_stack_vip_row_stays_ipv6_into_vxlan() {
        let mut s = Scenario::new(Kind::Vip6, 64);
        assert_eq!(s.pipeline.flows.len(), 64, "each flow opened by its SYN");
        let mut sports = std::collections::BTreeSet::new();
        let mut backends = std::collections::BTreeSet::new();
        for _ in 0..2 {
            for (v, f) in next_burst(&mut s) {
                assert_eq!(v, Verdict::Tx(PortId::Uplink));
                let node = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
                let mac = match node {
                    N2 => N2_MAC,
                    N3 => N3_MAC,
                    n => panic!("to {n}"),
                };
                assert_eq!(
                    testkit::eth(&f).map(|e| (e.0, e.1)),
                    Some((mac, UPLINK_MAC))
                );
                assert_eq!(f[26..30], N1.octets());
                let (vni, inner) = testkit::decap(&f).expect("VXLAN over IPv4");
                assert_eq!(vni, APP_VNI);
                let testkit::Tcp6Seen {
                    src,
                    sport,
                    dst,
                    dport,
                    flags,
                    ..
                } = testkit::parse_ipv6_tcp(inner).expect("inner IPv6 TCP, checksum right");
                assert_eq!((src, dport, flags), (twin(CLI_TASK), 80, tcp_flags::ACK));
                let backend = APP_PREFIX6.extract(dst).expect("a twin");
                let k = backend.octets()[3] - 100;
                assert!(backend.octets()[..3] == [10, 0, 1] && k < 32, "{backend}");
                // web.(k+1) is on n2 when k is even, on n3 when odd.
                assert_eq!(node, if k.is_multiple_of(2) { N2 } else { N3 });
                sports.insert(sport);
                backends.insert(backend);
            }
        }
        assert_eq!(sports, (1024..1024 + 64).collect());
        assert!(backends.len() > 1, "balanced: {backends:?}");
        assert_eq!(s.run(4 * BURST), 4 * BURST);
        assert_eq!(s.pipeline.stats.total_drops(), 0);
        assert_eq!(s.pipeline.flows.len(), 64);
    }

    /// The dual-stack decapsulation row measures IPv6 inside VXLAN delivered to a task: each
    /// frame from n2 leaves on the tasks port to cli.1, IPv6 from web.1's twin to cli.1's,
    /// its hop limit one less and its checksum right, and no flow is made for it.
    #[test]
    fn the_dual_stack_decapsulation_row_delivers_ipv6_to_the_task() {
        let mut s = Scenario::new(Kind::Decap6, 64);
        let mut sports = std::collections::BTreeSet::new();
        for _ in 0..2 {
            for (v, f) in next_burst(&mut s) {
                assert_eq!(v, Verdict::Tx(PortId::Tasks));
                assert_eq!(f.len(), V6_FRAME);
                assert_eq!(
                    testkit::eth(&f).map(|e| (e.0, e.1)),
                    Some((CLI_TASK_MAC, TASKS_MAC))
                );
                let testkit::Tcp6Seen {
                    src,
                    sport,
                    dst,
                    dport,
                    flags,
                    hop_limit: hop,
                    ..
                } = testkit::parse_ipv6_tcp(&f).expect("IPv6 TCP, checksum right");
                assert_eq!(
                    (src, dst, dport, flags, hop),
                    (twin(WEB1_APP), twin(CLI_TASK), 80, tcp_flags::ACK, 63)
                );
                sports.insert(sport);
            }
        }
        assert_eq!(sports, (10_000..10_000 + 64).collect());
        assert_eq!(s.run(4 * BURST), 4 * BURST);
        assert_eq!(s.pipeline.stats.total_drops(), 0);
        assert_eq!(s.pipeline.flows.len(), 0, "delivered without state");
    }
}
