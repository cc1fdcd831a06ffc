//! End-to-end: VXLAN over an IPv6 underlay. Every node's VTEP is its IPv6 address on the
//! underlay (the testbed's `Plan::underlay6`: `meshd --vtep fd00:100::1<i>`, and `meshctl node
//! add --vtep` of it, or the node registering it itself in cluster mode), so what crosses
//! between the nodes is IPv6/UDP/4789 and the overlay's MTU on the 1500-byte underlay is 1430
//! (an IPv6 header is 20 bytes longer than IPv4's).
//!
//! Through every node, from IPv4 and from `curl -6`: the published port reaches tasks on every
//! node, a mebibyte moves each way, UDP datagrams of 1,400 and 4,000 bytes (fragments) are
//! echoed; a task reaches another node's task by its VIP, and with a 1430-byte packet; `network
//! inspect` says mtu 1430. tcpdump on the underlay switch, which sees every frame between the
//! nodes, finds the mesh's traffic as IPv6 VXLAN only: between the nodes' IPv6 VTEPs and their
//! uplink MACs (Neighbor Discovery found them), frames up to the full 1514 bytes and some of
//! them, no IPv4 VXLAN, no fragment of either family between nodes. meshd counts no drop of an
//! unknown VTEP, a spoofed peer, a bad checksum, and none for an unresolved neighbour once the
//! paths are warm. A mesh of one family refuses a node of the other ("one underlay family"),
//! leaving every node's `node ls` as it was.
//!
//! Run as root from the workspace root: `sudo cargo test -p testbed --test underlay6`.
//! Each test builds its own mesh (`meshd-u<tag><pid>-*`), removed by a guard even on failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{mebibyte_each_way, Mesh, Scratch};
use ctl::model::PublishMode;
use testbed::{plan, probe, sys, RunSpec};

const T: Duration = Duration::from_secs(5);
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// The overlay's MTU over a 1500-byte IPv6 underlay: less IPv6 (40), UDP (8), VXLAN (8) and
/// the inner Ethernet header (14).
const MTU6: u16 = 1430;

/// The longest frame the underlay carries: its 1500-byte MTU and the Ethernet header.
const FULL_FRAME: u32 = 14 + 1500;

/// UDP sizes: one that fits the overlay whole (a 1,428-byte packet; its echo, a few bytes
/// longer, comes back in two fragments), one of several fragments each way.
const UDP_SIZES: [usize; 2] = [1400, 4000];

/// Drops that must never happen on a healthy IPv6 underlay: VXLAN from an address meshd does
/// not take for a peer's VTEP, from a peer's VTEP with another MAC than the one Neighbor
/// Discovery gave, with a bad UDP or TCP checksum (the outer IPv6 UDP checksum, or an inner one
/// broken by translation), an unreadable VXLAN header or an unknown VNI, no room to
/// encapsulate, a fragment of VXLAN.
const NEVER: [&str; 7] = [
    "unknown_vtep",
    "spoofed_peer",
    "bad_l4_checksum",
    "bad_vxlan",
    "unknown_vni",
    "no_headroom",
    "fragment",
];

/// Drops that may happen only while a node resolves a peer's VTEP (or a task's MAC) for the
/// first time: none once every path has carried a packet.
const SETTLED: [&str; 1] = ["no_neighbor"];

fn preflight() {
    let missing = testbed::preflight::missing();
    assert!(missing.is_empty(), "missing programs: {missing:?}");
    assert!(
        testbed::preflight::on_path("tcpdump"),
        "tcpdump is missing (apt-get install -y tcpdump; scripts/deps.sh installs it)"
    );
}

/// A fresh 3-node mesh whose VTEPs are the nodes' IPv6 addresses; in cluster mode with an etcd
/// of `etcd_members` when > 0.
fn mesh6(tag: &str, etcd_members: usize) -> Option<Mesh> {
    common::mesh_plan(
        "u",
        "underlay6",
        tag,
        etcd_members,
        |p| p.underlay6 = true,
        || {
            preflight();
            if etcd_members > 0 {
                assert!(
                    testbed::preflight::on_path("etcd") && testbed::preflight::on_path("etcdctl"),
                    "etcd is not installed: scripts/deps.sh --bench installs it (etcd-server, etcd-client)"
                );
            }
        },
    )
}

/// A fresh 3-node mesh of IPv4 VTEPs (the testbed's default).
fn mesh4(tag: &str) -> Option<Mesh> {
    common::mesh("u", "underlay6", tag, preflight)
}

/// Node `node`'s own `meshctl --format json node ls` (its meshd's state, also in cluster mode).
fn node_ls(m: &Mesh, node: &str) -> String {
    m.meshctl_local(node, &["--format", "json", "node", "ls"])
        .unwrap()
}

/// The VTEP of each node as `rows` (`node ls` in JSON) give it; `None` when it shows none (the
/// node's `--addr` is its VTEP then).
fn vteps_of(rows: &str) -> BTreeMap<String, Option<IpAddr>> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(rows).unwrap();
    rows.iter()
        .map(|r| {
            let vtep = r["vtep"].as_str().map(|v| {
                v.parse()
                    .unwrap_or_else(|e| panic!("node ls: vtep {v:?}: {e}"))
            });
            (r["name"].as_str().unwrap().to_string(), vtep)
        })
        .collect()
}

/// Every node's meshd knows every node by its IPv6 VTEP, the address the bed gave it.
fn every_vtep_is_ipv6(m: &Mesh) {
    let want: BTreeMap<String, Option<IpAddr>> = m
        .rec
        .nodes
        .iter()
        .map(|n| (n.name.clone(), Some(IpAddr::V6(n.addr6()))))
        .collect();
    for n in &m.rec.nodes {
        assert_eq!(
            m.vtep(n),
            IpAddr::V6(n.addr6()),
            "the bed's VTEP of {}",
            n.name
        );
    }
    for node in NODES {
        assert_eq!(
            vteps_of(&node_ls(m, node)),
            want,
            "{node}'s node ls: every VTEP is the node's IPv6 address"
        );
    }
}

/// The MTU node `node` gives tasks on network `net` (`meshctl network inspect`, field `mtu`).
fn mtu_on(m: &Mesh, node: &str, net: &str) -> u64 {
    let out = m.meshctl_local(node, &["network", "inspect", net]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["mtu"]
        .as_u64()
        .unwrap_or_else(|| panic!("{node}: network inspect {net} has no mtu: {out}"))
}

fn assert_mtu_1430(m: &Mesh, nets: &[&str]) {
    for node in NODES {
        for net in nets {
            assert_eq!(
                mtu_on(m, node, net),
                u64::from(MTU6),
                "{node}: network inspect {net}"
            );
        }
    }
}

/// Node `node`'s drops by reason (`meshctl stats`, `total.drops`, summed over its workers).
fn drops(m: &Mesh, node: &str) -> BTreeMap<String, u64> {
    let out = m
        .meshctl_local(node, &["--format", "json", "stats"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["total"]["drops"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

fn every_nodes_drops(m: &Mesh) -> BTreeMap<&'static str, BTreeMap<String, u64>> {
    NODES.iter().map(|n| (*n, drops(m, n))).collect()
}

/// No node dropped for a reason of [`NEVER`], and none for one of [`SETTLED`] since `warm`.
fn no_unexpected_drops(m: &Mesh, warm: &BTreeMap<&'static str, BTreeMap<String, u64>>) {
    let now = every_nodes_drops(m);
    for (node, d) in &now {
        let n = |r: &str| d.get(r).copied().unwrap_or(0);
        for r in NEVER {
            assert_eq!(n(r), 0, "{node} dropped for {r}: all its drops {d:?}");
        }
        for r in SETTLED {
            let before = warm[node].get(r).copied().unwrap_or(0);
            assert_eq!(
                n(r).saturating_sub(before),
                0,
                "{node} dropped for {r} after the paths were warm ({before} while warming up): all its drops {d:?}"
            );
        }
        eprintln!("{node} drops: {d:?}");
    }
}

// ---- the underlay, as tcpdump on its switch sees it --------------------------------------------

/// tcpdump on the underlay switch's bridge (in promiscuous mode: every frame that enters the
/// switch from a node or the client, once), writing the first 160 bytes of each frame, at once
/// (`--immediate-mode`: nothing waits in the kernel when it is stopped), into a pipe we read.
struct Underlay {
    child: Child,
    out: Option<JoinHandle<Vec<u8>>>,
    err: BufReader<ChildStderr>,
}

impl Underlay {
    fn watch(m: &Mesh) -> Underlay {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &m.plan.switch_ns(), "tcpdump"])
            .args(["-i", plan::SWITCH_DEV, "-nn", "-s", "160", "-B", "32768"])
            .args(["--immediate-mode", "-w", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump");
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = out.read_to_end(&mut bytes);
            bytes
        });
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("tcpdump on the underlay switch did not start: {said}");
            }
            said.push_str(&line);
            if line.contains("listening on") {
                break;
            }
        }
        Underlay {
            child,
            out: Some(reader),
            err,
        }
    }

    /// Stops tcpdump (SIGINT, as Ctrl-C) and reads what it saw; fails if the kernel dropped
    /// any frame before tcpdump read it (then "none seen" would prove nothing).
    fn stop(mut self, m: &Mesh) -> Seen {
        // What is still on its way through the switch.
        std::thread::sleep(Duration::from_millis(300));
        sys::signal(self.child.id(), libc::SIGINT);
        let _ = self.child.wait();
        let bytes = self.out.take().unwrap().join().unwrap();
        let mut said = String::new();
        let _ = self.err.read_to_string(&mut said);
        let dropped = said
            .lines()
            .find_map(|l| l.trim().strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("tcpdump did not say what it dropped: {said}"));
        assert_eq!(dropped, 0, "tcpdump missed frames on the underlay: {said}");
        Seen::of(m, &bytes)
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What crossed the underlay switch, as far as the mesh's overlay goes.
#[derive(Debug, Default)]
struct Seen {
    frames: usize,
    /// IPv6 UDP to the VXLAN port, from one node's VTEP and uplink MAC to another's.
    vxlan6: usize,
    /// Of them, frames of the underlay's full length.
    full: usize,
    longest: u32,
    /// (from, to) node names of those frames.
    pairs: BTreeSet<(String, String)>,
    /// IPv6 VXLAN that is not between two nodes' VTEPs and MACs: what it was.
    strangers: Vec<String>,
    /// IPv4 UDP from or to the VXLAN port (anyone's).
    vxlan4: usize,
    /// IPv4 or IPv6 fragments from one node's address to another's.
    node_fragments: usize,
}

impl Seen {
    fn of(m: &Mesh, pcap: &[u8]) -> Seen {
        let nodes = &m.rec.nodes;
        let by_addr6 = |a: &[u8]| nodes.iter().find(|n| n.addr6().octets() == a);
        let by_addr4 = |a: &[u8]| nodes.iter().find(|n| n.addr.octets() == a);
        let mut s = Seen::default();
        let mut r = pcap_file::pcap::PcapReader::new(pcap).expect("tcpdump's pcap header");
        // Raw: pcap-file 2.0 refuses a frame longer than the snapshot length (160) as invalid,
        // which is every full frame here.
        while let Some(p) = r.next_raw_packet() {
            let p = p.expect("a frame of tcpdump's pcap");
            let (f, len) = (&p.data[..], p.orig_len);
            s.frames += 1;
            if f.len() < 14 {
                continue;
            }
            let port = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
            match port(12) {
                0x86dd if f.len() >= 54 => {
                    let (nh, src, dst) = (f[20], &f[22..38], &f[38..54]);
                    let (from, to) = (by_addr6(src), by_addr6(dst));
                    if nh == 44 && from.is_some() && to.is_some() {
                        s.node_fragments += 1;
                    }
                    if nh != 17 || f.len() < 58 || port(56) != ctl::VXLAN_PORT {
                        continue;
                    }
                    s.vxlan6 += 1;
                    s.longest = s.longest.max(len);
                    if len == FULL_FRAME {
                        s.full += 1;
                    }
                    let macs_right = |n: &testbed::bed::NodeRec, at: usize| {
                        f[at..at + 6] == common::mac(&plan::uplink_mac(n.index))
                    };
                    match (from, to) {
                        (Some(a), Some(b))
                            if a.index != b.index && macs_right(a, 6) && macs_right(b, 0) =>
                        {
                            s.pairs.insert((a.name.clone(), b.name.clone()));
                        }
                        _ => {
                            if s.strangers.len() < 10 {
                                s.strangers.push(format!(
                                    "{:02x?} -> {:02x?}: {} -> {}",
                                    &f[6..12],
                                    &f[0..6],
                                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(src).unwrap()),
                                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(dst).unwrap()),
                                ));
                            }
                        }
                    }
                }
                0x0800 if f.len() >= 34 => {
                    let ihl = usize::from(f[14] & 0x0f) * 4;
                    let (proto, frag) = (f[23], port(20));
                    let fragment = frag & 0x3fff != 0;
                    let (from, to) = (by_addr4(&f[26..30]), by_addr4(&f[30..34]));
                    if fragment && from.is_some() && to.is_some() {
                        s.node_fragments += 1;
                    }
                    let l4 = 14 + ihl;
                    if proto == 17
                        && frag & 0x1fff == 0
                        && f.len() >= l4 + 4
                        && (port(l4) == ctl::VXLAN_PORT || port(l4 + 2) == ctl::VXLAN_PORT)
                    {
                        s.vxlan4 += 1;
                    }
                }
                _ => {}
            }
        }
        s
    }

    /// The overlay crossed the underlay as IPv6 only: at least `least` VXLAN frames, all between
    /// nodes' VTEPs and MACs, none longer than the underlay carries, some exactly that long when
    /// `full`; and no IPv4 VXLAN, no fragment between nodes.
    fn assert_ipv6_only(&self, least: usize, full: bool) {
        eprintln!(
            "underlay: {} frames, {} IPv6 VXLAN ({} of {FULL_FRAME} bytes, longest {}) between {:?}; {} IPv4 VXLAN; {} fragments between nodes",
            self.frames, self.vxlan6, self.full, self.longest, self.pairs, self.vxlan4, self.node_fragments
        );
        assert_eq!(self.vxlan4, 0, "IPv4 VXLAN crossed the underlay: {self:?}");
        assert_eq!(
            self.node_fragments, 0,
            "fragments between nodes crossed the underlay (VXLAN is never fragmented): {self:?}"
        );
        assert!(
            self.strangers.is_empty(),
            "IPv6 VXLAN not between two nodes' VTEPs and uplink MACs: {self:?}"
        );
        assert!(
            self.vxlan6 >= least,
            "only {} IPv6 VXLAN frames (at least {least} expected): {self:?}",
            self.vxlan6
        );
        assert!(
            self.longest <= FULL_FRAME,
            "a VXLAN frame longer than the underlay's MTU: {self:?}"
        );
        if full {
            assert!(
                self.full > 0,
                "no VXLAN frame of the full {FULL_FRAME} bytes: the overlay does not use its MTU of {MTU6}: {self:?}"
            );
        }
    }
}

// ---- traffic -------------------------------------------------------------------------------

/// Node `node`'s published port `port` by IPv4 and by IPv6: (URL base, curl's family flag,
/// label).
fn bases(m: &Mesh, node: &str, port: u16) -> [(String, &'static str, String); 2] {
    let n = m.node(node).unwrap();
    let (a, a6) = (n.addr, n.addr6());
    [
        (
            format!("http://{a}:{port}"),
            "-4",
            format!("{node} {a}:{port}"),
        ),
        (
            format!("http://[{a6}]:{port}"),
            "-6",
            format!("{node} [{a6}]:{port}"),
        ),
    ]
}

/// Through every node, by IPv4 and by `curl -6`: new connections to `service`'s published
/// `port` reach every one of its tasks (`tasks`), round-robin; so each node reaches the tasks of
/// the other two over VXLAN, and gets their answers back over it.
fn every_node_reaches_every_task(m: &Mesh, port: u16, tasks: &BTreeSet<String>) {
    let c = m.client_ns();
    for node in NODES {
        for (base, family, what) in bases(m, node, port) {
            let mut seen = BTreeSet::new();
            for _ in 0..3 * tasks.len() {
                let r = probe::curl(&c, &format!("{base}/"), T, &[family]).unwrap();
                let w = r
                    .whoami()
                    .unwrap_or_else(|| panic!("curl {family} {what}: {} {}", r.code, r.stderr));
                seen.insert(w.hostname);
                if &seen == tasks {
                    break;
                }
            }
            assert_eq!(&seen, tasks, "{what}: the tasks new connections reached");
        }
    }
}

fn names(prefix: &str, n: usize) -> BTreeSet<String> {
    (1..=n).map(|i| format!("{prefix}.{i}")).collect()
}

/// From namespace `ns`: `ping -M do -s 1402` of `to` is answered: a 1430-byte IPv4 packet that
/// may not be fragmented crosses the overlay (one VXLAN frame of 1514 bytes over IPv6).
fn ping_at_the_mtu(ns: &str, to: &str, what: &str) {
    let size = (MTU6 - 28).to_string();
    let out = sys::exec_in_output(
        ns,
        "ping",
        &["-M", "do", "-s", &size, "-c", "2", "-W", "2", to],
    )
    .unwrap();
    assert_eq!(
        out.code,
        Some(0),
        "{what}: ping -M do -s {size} {to}: {}{}",
        out.stdout,
        out.stderr
    );
}

/// VXLAN over IPv6 through every path: published ports through every node from IPv4 and IPv6
/// clients (web on every node; big and uecho on n2, so n1 and n3 reach them over VXLAN), a VIP
/// from a task on n1 to a task on n2; the underlay watched throughout.
#[test]
fn vxlan_over_an_ipv6_underlay_carries_every_path_at_mtu_1430_and_no_ipv4_vxlan() {
    let Some(mut m) = mesh6("v6", 0) else { return };
    every_vtep_is_ipv6(&m);
    assert_mtu_1430(&m, &[plan::INGRESS]);

    m.run(
        &RunSpec::new("web", 3)
            .publish("8080:80", PublishMode::Ingress)
            .unwrap(),
    )
    .unwrap();
    let on: BTreeSet<&str> = m.tasks_of("web").iter().map(|t| t.node.as_str()).collect();
    assert_eq!(on, BTreeSet::from(NODES), "one web task on every node");
    for (name, port) in [("big", "8081:80"), ("uecho", "5353:80/udp")] {
        m.run(
            &RunSpec::new(name, 1)
                .publish(port, PublishMode::Ingress)
                .unwrap()
                .on("n2"),
        )
        .unwrap();
    }
    m.run(&RunSpec::new("api", 1).network("appnet").on("n2"))
        .unwrap();
    m.run(&RunSpec::new("c1", 1).network("appnet").on("n1"))
        .unwrap();
    assert_mtu_1430(&m, &[plan::INGRESS, "appnet"]);
    // The bed gives tasks the overlay's MTU, as Swarm does.
    for t in ["web.1", "api.1", "c1.1"] {
        let ns = m.task(t).unwrap().ns.clone();
        let mtu = sys::exec_in(&ns, "cat", &["/sys/class/net/eth0/mtu"]).unwrap();
        assert_eq!(mtu.trim(), MTU6.to_string(), "task {t}'s MTU");
    }

    let watch = Underlay::watch(&m);
    let client = m.client_ns();
    let c1 = m.task("c1.1").unwrap().ns.clone();
    let api = m.task("api.1").unwrap().addr_on("appnet").unwrap();
    let vip = m.vip("api", "appnet").unwrap();

    // Warm: every path carries a packet, so every node has resolved the VTEPs and tasks it
    // sends to.
    every_node_reaches_every_task(&m, 8080, &names("web", 3));
    for node in NODES {
        for (base, family, what) in bases(&m, node, 8081) {
            let r = probe::curl(&client, &format!("{base}/"), T, &[family]).unwrap();
            assert!(r.whoami().is_some(), "{what}: {} {}", r.code, r.stderr);
        }
        let n = m.node(node).unwrap();
        for to in [
            SocketAddr::from((n.addr, 5353)),
            SocketAddr::from((n.addr6(), 5353)),
        ] {
            common::udp_echoed(&client, to, &[8], &format!("{node}: {to}"));
        }
    }
    let r = probe::curl(&c1, &format!("http://{vip}/"), T, &[]).unwrap();
    assert!(r.whoami().is_some(), "c1 -> api's VIP: {}", r.stderr);
    let (ok, out) = probe::ping(&c1, &api.to_string(), 1).unwrap();
    assert!(ok, "c1 -> ping api: {out}");
    let warm = every_nodes_drops(&m);

    // The mebibytes and the fragments.
    let s = Scratch::new("u6");
    for node in NODES {
        for (base, _, what) in bases(&m, node, 8081) {
            mebibyte_each_way(&s, &client, &base, &what);
        }
        let n = m.node(node).unwrap();
        for to in [
            SocketAddr::from((n.addr, 5353)),
            SocketAddr::from((n.addr6(), 5353)),
        ] {
            common::udp_echoed(&client, to, &UDP_SIZES, &format!("{node}: {to}"));
        }
    }
    mebibyte_each_way(&s, &c1, &format!("http://{vip}"), "c1 -> api's VIP");
    common::udp_echoed(
        &c1,
        SocketAddr::from((vip, 80)),
        &UDP_SIZES,
        "c1 -> api's VIP",
    );
    ping_at_the_mtu(&c1, &api.to_string(), "c1 -> api");
    // And web again, now that the big transfers are done.
    every_node_reaches_every_task(&m, 8080, &names("web", 3));

    let seen = watch.stop(&m);
    // Two mebibytes each way through n1 and n3 by each family and one by the VIP: ten
    // mebibytes over VXLAN, some 7,000 full frames; at least half of that.
    seen.assert_ipv6_only(3_500, true);
    for pair in [("n1", "n2"), ("n2", "n1"), ("n3", "n2"), ("n2", "n3")] {
        let p = (pair.0.to_string(), pair.1.to_string());
        assert!(
            seen.pairs.contains(&p),
            "no VXLAN from {} to {}: {seen:?}",
            pair.0,
            pair.1
        );
    }
    no_unexpected_drops(&m, &warm);

    // A node whose VTEP is IPv4 has no place in this mesh.
    refused_as_the_other_family(&m, &[]);
}

/// Cluster mode: every meshd registers itself in etcd with the `--vtep` it was started with,
/// and the mesh runs over IPv6 from the cluster's state; meshctl, writing etcd, refuses a node
/// of IPv4 VTEP.
#[test]
fn in_cluster_mode_the_nodes_register_their_ipv6_vteps_and_vxlan_runs_over_ipv6() {
    let Some(mut m) = mesh6("kv6", 1) else { return };
    every_vtep_is_ipv6(&m);
    // As the cluster has them.
    let rows = m.meshctl(&["--format", "json", "node", "ls"]).unwrap();
    let want: BTreeMap<String, Option<IpAddr>> = m
        .rec
        .nodes
        .iter()
        .map(|n| (n.name.clone(), Some(IpAddr::V6(n.addr6()))))
        .collect();
    assert_eq!(vteps_of(&rows), want, "the cluster's node ls: {rows}");
    assert_mtu_1430(&m, &[plan::INGRESS]);

    m.run(
        &RunSpec::new("web", 3)
            .publish("8080:80", PublishMode::Ingress)
            .unwrap(),
    )
    .unwrap();
    let watch = Underlay::watch(&m);
    every_node_reaches_every_task(&m, 8080, &names("web", 3));
    let warm = every_nodes_drops(&m);
    every_node_reaches_every_task(&m, 8080, &names("web", 3));
    let seen = watch.stop(&m);
    // Each node's connections to the other two nodes' tasks, by two families, twice: dozens
    // of frames.
    seen.assert_ipv6_only(50, false);
    assert_eq!(
        seen.pairs.len(),
        6,
        "VXLAN both ways between every two nodes: {seen:?}"
    );
    no_unexpected_drops(&m, &warm);

    refused_as_the_other_family(&m, &[]);
}

/// A mesh of IPv4 VTEPs (the testbed's default) refuses `meshctl node add` of a node whose VTEP
/// is IPv6, and no node's state changes.
#[test]
fn a_mesh_of_ipv4_vteps_refuses_a_node_with_an_ipv6_vtep() {
    let Some(m) = mesh4("mix") else { return };
    for node in NODES {
        assert!(
            vteps_of(&node_ls(&m, node)).values().all(|v| match v {
                None => true,
                Some(a) => a.is_ipv4(),
            }),
            "{node}: {}",
            node_ls(&m, node)
        );
    }
    let n4 = plan::node_addr6(4).to_string();
    refused_as_the_other_family(&m, &["--vtep", &n4]);
}

/// `meshctl node add n4` (its ingress endpoint given, so that nothing else is missing) with
/// `vtep` (`--vtep IP`, or nothing: its IPv4 `--addr`) of the other family than the mesh's is
/// refused on every node, saying the overlay runs over one underlay family; no node's `node ls`
/// changes, nor the cluster's in cluster mode.
fn refused_as_the_other_family(m: &Mesh, vtep: &[&str]) {
    let before: Vec<String> = NODES.iter().map(|n| node_ls(m, n)).collect();
    let cluster_before = m.meshctl(&["--format", "json", "node", "ls"]).unwrap();
    let (addr, ep) = (plan::node_addr(4).to_string(), plan::ingress_endpoint(4));
    let ep = format!("{}={ep}", plan::INGRESS);
    let mut args = vec!["node", "add", "n4", "--addr", &addr, "--endpoint", &ep];
    args.extend_from_slice(vtep);
    let err = match m.meshctl(&args) {
        Ok(out) => panic!("meshctl {} was taken: {out}", args.join(" ")),
        Err(e) => e,
    };
    let said = match &err {
        testbed::Error::Command { stderr, .. } => stderr.clone(),
        e => panic!("meshctl {}: {e}", args.join(" ")),
    };
    assert!(
        said.contains("one underlay family"),
        "meshctl {}: {said}",
        args.join(" ")
    );
    let after: Vec<String> = NODES.iter().map(|n| node_ls(m, n)).collect();
    assert_eq!(after, before, "a node's node ls changed");
    let cluster_after = m.meshctl(&["--format", "json", "node", "ls"]).unwrap();
    assert_eq!(
        vteps_of(&cluster_after),
        vteps_of(&cluster_before),
        "node ls changed"
    );
}
