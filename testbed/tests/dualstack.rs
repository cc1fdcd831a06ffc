//! End-to-end: dual-stack overlay networks (the testbed's `Plan::ipv6_overlay`, `up
//! --ipv6-overlay`). appnet is 10.0.1.0/24 and fd00:10:1::/64 (`meshctl network create appnet
//! --subnet 10.0.1.0/24 --ipv6 --subnet fd00:10:1::/64`); every overlay address has its IPv6
//! twin there, the prefix's first 96 bits then the IPv4 address (task 10.0.1.100 is
//! fd00:10:1::a00:164), and each task holds its twin with a /64 on eth0, no DAD, no router
//! solicitations, as it holds its IPv4 address. meshd answers Neighbor Discovery for the
//! network's other twins, translates a task's IPv6 to IPv4 at the edge (the twin's low 32
//! bits), runs its IPv4 pipeline (VIP, VXLAN) and turns it back into IPv6 at the other edge.
//!
//! Three nodes; `web` (whoami, listening on `[::]`) and `client` with a task on every node, on
//! appnet. From the client task on every node: `dig A web` is the VIP; `dig AAAA web` the VIP's
//! twin and `dig AAAA tasks.web` the web tasks' twins (asked over IPv4, of the resolver on the
//! network's IPv4 gateway, as resolv.conf says); `curl -4 http://web/` still reaches every web
//! task; `curl -6` of the VIP's twin, and `curl -6 http://web/` (by name: AAAA, the VIP's
//! twin), reach every web task, and a task on another node saw the client's twin as the peer
//! (one on the client's own node the gateway's twin: the hairpin NAT IPv4 VIPs have). A
//! mebibyte each way over IPv6 from a task on n1 to a task on n2, by its twin and by the VIP's;
//! `ping -6` of a web task's twin on another node and on the same node; `ping -6 -M do` at the
//! overlay's MTU (1450: `-s 1402`) to a remote twin is answered, one byte more fails in the
//! client's own kernel, but a task whose own MTU is 1500 gets ICMPv6 packet too big (mtu
//! 1450) from its gateway's twin; a UDP query to a closed port of a remote task's twin is
//! refused at once (the task's port unreachable, translated both ways), and so is one to the
//! VIP or its twin (the error's quote turned back to what the client sent the VIP). `ping -6` of the VIP's
//! and the gateway's twins is answered (by meshd's host side, in IPv6), with 4,000 bytes too
//! (the request's pieces put together there, the reply in pieces), and the resolver answers
//! on the gateway's twin too (`dig @TWIN AAAA web`, over UDP and `+tcp`, from every node's
//! client). meshd counts no drop that says a translated packet was wrong (checksums,
//! spoofed or unknown sources, fragments). UDP datagrams of up to 8,000 bytes over IPv6 (in
//! pieces both ways) are echoed whole by a web task, by its twin and by the VIP's. On `v4net`, an IPv4-only network of the same mesh,
//! the task has no IPv6 at all and AAAA of a service is NODATA (NOERROR, no answer).
//!
//! Run as root from the workspace root: `sudo cargo test --release -p testbed --test dualstack
//! -- --test-threads=1` (with `flock /tmp/meshd-netns.lock` where other testbed runs share the
//! machine). Needs root and fails without it (it never passes without having run); needs dig
//! (`scripts/deps.sh`). The test builds its own mesh (`meshd-d<tag><pid>-*`), removed by a guard
//! even on failure (which prints every node's counters and log tail first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::{mebibyte_each_way, Mesh, Scratch};
use testbed::bed::TaskRec;
use testbed::{plan, probe, sys, RunSpec};

const T: Duration = Duration::from_secs(5);
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// The dual-stack network, and an IPv4-only one beside it.
const APPNET: &str = "appnet";
const V4NET: &str = "v4net";
/// IPv6's header and ICMPv6 echo's: what `ping -6 -s` adds to its payload.
const PING6_HEADERS: u16 = 40 + 8;

/// Drops that say a packet of a dual-stack network was translated or checked wrong: a bad
/// transport checksum or header (the pseudo-header changes between the families), a task's
/// address from another MAC or VLAN or one the table does not know (the twin not taken for the
/// task's), between networks, an IPv6 header or extension chain refused, an IPv6 piece
/// refused (the tasks' UDP pieces are carried; no ICMPv6 is sent in pieces here), malformed
/// Neighbor Discovery, and the VXLAN ones (a translated packet is plain IPv4 inside).
const NEVER: [&str; 17] = [
    "bad_l4_checksum",
    "bad_l4_header",
    "bad_ip_checksum",
    "bad_ipv4_header",
    "spoofed_source",
    "unknown_source",
    "wrong_vlan",
    "cross_network",
    "bad_ipv6_header",
    "ipv6_ext_chain",
    "ipv6_fragment",
    "bad_ndp",
    "unknown_vtep",
    "spoofed_peer",
    "bad_vxlan",
    "unknown_vni",
    "no_headroom",
];

/// Drops that may happen only while the paths warm up (a neighbour being resolved), or while a
/// task's kernel brings IPv6 up on eth0 (its multicast listener reports, which meshd does not
/// carry): none once every path has carried a packet.
const SETTLED: [&str; 4] = ["no_neighbor", "no_ipv6", "ipv6_untranslated", "no_route"];

fn preflight() {
    let missing = testbed::preflight::missing();
    assert!(missing.is_empty(), "missing programs: {missing:?}");
    assert!(
        testbed::preflight::on_path("dig"),
        "dig is missing: run scripts/deps.sh (Debian's bind9-dnsutils)"
    );
}

/// A fresh 3-node mesh whose overlays are dual-stack. Root only: without root the test fails
/// (a skipped test would pass without having run).
fn mesh(tag: &str) -> Mesh {
    assert!(
        sys::is_root(),
        "dualstack needs root (network namespaces, AF_PACKET): sudo cargo test -p testbed --test dualstack"
    );
    common::mesh_plan(
        "d",
        "dualstack",
        tag,
        0,
        |p| p.ipv6_overlay = true,
        preflight,
    )
    .expect("a root mesh")
}

/// What `dig` printed.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    /// (type, data) of the answer section.
    answers: Vec<(String, String)>,
    raw: String,
}

impl Dig {
    fn of(&self, qtype: &str) -> BTreeSet<IpAddr> {
        self.answers
            .iter()
            .filter(|(t, _)| t == qtype)
            .map(|(_, a)| {
                a.parse()
                    .unwrap_or_else(|e| panic!("{a:?}: {e}\n{}", self.raw))
            })
            .collect()
    }
}

/// `dig NAME TYPE` in task namespace `ns`, of the resolver its resolv.conf names (meshd's, on
/// the IPv4 gateway of its network), as a program in the task would ask.
fn dig(ns: &str, name: &str, qtype: &str) -> Dig {
    dig_with(ns, name, qtype, &[])
}

/// [`dig`] with more of dig's arguments (`@SERVER`, `+tcp`).
fn dig_with(ns: &str, name: &str, qtype: &str, more: &[&str]) -> Dig {
    let mut args = vec![name, qtype, "+time=2", "+tries=2"];
    args.extend_from_slice(more);
    let out = sys::exec_in_output(ns, "dig", &args).unwrap();
    let mut d = Dig {
        raw: out.stdout.clone(),
        ..Dig::default()
    };
    let mut in_answer = false;
    for line in out.stdout.lines() {
        if let Some(rest) = line.split_once("status: ").map(|(_, r)| r) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if line.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() {
                in_answer = false;
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                d.answers.push((f[3].to_string(), f[4].to_string()));
            }
        }
    }
    assert!(
        !d.status.is_empty(),
        "{ns}: dig {name} {qtype} {more:?} got no answer:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    d
}

fn v4set(addrs: impl IntoIterator<Item = Ipv4Addr>) -> BTreeSet<IpAddr> {
    addrs.into_iter().map(IpAddr::V4).collect()
}

fn v6set(addrs: impl IntoIterator<Item = Ipv6Addr>) -> BTreeSet<IpAddr> {
    addrs.into_iter().map(IpAddr::V6).collect()
}

/// The task of `service` on node `node` (each service here has one on every node).
fn task_on(m: &Mesh, service: &str, node: &str) -> TaskRec {
    m.tasks_of(service)
        .into_iter()
        .find(|t| t.node == node)
        .unwrap_or_else(|| panic!("no task of {service} on {node}"))
        .clone()
}

/// The global IPv6 addresses (with their prefix lengths) on eth0 of task namespace `ns`.
fn eth0_addrs6(ns: &str) -> BTreeSet<String> {
    let out = sys::exec_in(
        ns,
        "ip",
        &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"],
    )
    .unwrap();
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == "inet6")?;
            f.get(i + 1).map(|a| (*a).to_string())
        })
        .collect()
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
        eprintln!("{node} drops: {d:?}");
    }
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
    }
}

/// The address a web task sees a VIP connection of client task `c` come from: the client's
/// own when the task is on another node, the gateway's when on the client's node (hairpin NAT,
/// so the reply comes back through meshd: IPv4's rule, which the translated packet follows);
/// their IPv6 twins over IPv6.
fn vip_peer(m: &Mesh, c: &TaskRec, answered: &str, ipv6: bool) -> IpAddr {
    let net = m.rec.networks.iter().find(|n| n.name == APPNET).unwrap();
    let local = m.task(answered).unwrap().node == c.node;
    let v4 = if local {
        plan::gateway(net.k)
    } else {
        c.addr_on(APPNET).unwrap()
    };
    if ipv6 {
        IpAddr::V6(net.twin(v4).unwrap())
    } else {
        IpAddr::V4(v4)
    }
}

/// From client task `c`: new connections to `url`, a VIP by name or address (curl with
/// `family`, `-4` or `-6`), reach every task of `tasks` (by name) within a few rounds, each
/// answer a whoami that saw the client as [`vip_peer`] says. Prints which task answered each
/// request, and whom it saw.
fn reaches_every_task(m: &Mesh, c: &TaskRec, url: &str, family: &str, tasks: &BTreeSet<String>) {
    let what = format!("{} on {}", c.name, c.node);
    let mut seen = BTreeSet::new();
    let mut answers = Vec::new();
    for _ in 0..5 * tasks.len() {
        let r = probe::curl(&c.ns, url, T, &[family]).unwrap();
        let w = r.whoami().unwrap_or_else(|| {
            panic!(
                "{what}: curl {family} {url}: exit {} {}{}",
                r.code, r.stderr, r.body
            )
        });
        let peer = vip_peer(m, c, &w.hostname, family == "-6");
        assert_eq!(
            w.remote_ip().parse::<IpAddr>().ok(),
            Some(peer),
            "{what}: curl {family} {url}: {} saw the client as {}, not {peer}",
            w.hostname,
            w.remote
        );
        answers.push(format!("{} (saw {})", w.hostname, w.remote_ip()));
        seen.insert(w.hostname);
        if &seen == tasks {
            break;
        }
    }
    eprintln!(
        "{what}: curl {family} {url}: answered by {}",
        answers.join(", ")
    );
    assert_eq!(
        &seen, tasks,
        "{what}: curl {family} {url}: the tasks new connections reached"
    );
}

/// `ping -6 -c 3` from `ns` of `to` is answered every time.
fn ping6(ns: &str, to: Ipv6Addr, what: &str) {
    let to = to.to_string();
    let out = sys::exec_in_output(
        ns,
        "ping",
        &["-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", &to],
    )
    .unwrap();
    eprintln!(
        "{what}: ping -6 -c 3 {to}: {}",
        out.stdout.lines().rev().nth(1).unwrap_or("").trim()
    );
    assert!(
        out.code == Some(0) && out.stdout.contains("3 received"),
        "{what}: ping -6 -c 3 {to}: {}{}",
        out.stdout,
        out.stderr
    );
}

/// Dual-stack appnet through every node, and the IPv4-only v4net beside it. The IPv6 paths by
/// address come before the ones by name, so a failure says which half (pipeline or DNS) broke.
#[test]
fn a_dual_stack_overlay_resolves_connects_and_pings_over_ipv6_on_every_node() {
    let mut m = mesh("ds");
    m.run(&RunSpec::new("web", 3).network(APPNET)).unwrap();
    m.run(&RunSpec::new("client", 3).network(APPNET)).unwrap();
    m.run(&RunSpec::new("old", 1).network(V4NET).ipv4_only().on("n1"))
        .unwrap();
    for svc in ["web", "client"] {
        let on: BTreeSet<&str> = m.tasks_of(svc).iter().map(|t| t.node.as_str()).collect();
        assert_eq!(on, BTreeSet::from(NODES), "one {svc} task on every node");
    }
    let net = m
        .rec
        .networks
        .iter()
        .find(|n| n.name == APPNET)
        .unwrap()
        .clone();
    let v4net = m
        .rec
        .networks
        .iter()
        .find(|n| n.name == V4NET)
        .unwrap()
        .clone();
    assert!(
        net.ipv6 && !v4net.ipv6,
        "appnet dual-stack, v4net not: {net:?} {v4net:?}"
    );
    let (p6, len6) = net.subnet6().unwrap();
    let prefix = format!("{p6}/{len6}");
    eprintln!(
        "appnet: 10.0.{}.0/24 and {prefix}; v4net: 10.0.{}.0/24 only",
        net.k, v4net.k
    );

    // Every node's meshd has appnet's prefix, and none for v4net.
    for node in NODES {
        for (name, want) in [(APPNET, Some(prefix.as_str())), (V4NET, None)] {
            let out = m
                .meshctl_local(node, &["network", "inspect", name])
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                v[0]["subnet6"].as_str(),
                want,
                "{node}: network inspect {name}: {out}"
            );
            assert_eq!(
                v[0]["EnableIPv6"].as_bool(),
                Some(want.is_some()),
                "{node}: network inspect {name}: {out}"
            );
        }
    }

    // Each task of appnet holds its twin, /64, on eth0; old.1 (v4net only) has no IPv6.
    for t in m.tasks_of("web").into_iter().chain(m.tasks_of("client")) {
        let a = t.addr_on(APPNET).unwrap();
        let twin = t.addr6_on(APPNET).unwrap();
        assert_eq!(twin, plan::twin(net.k, a), "{}'s twin", t.name);
        assert_eq!(
            eth0_addrs6(&t.ns),
            BTreeSet::from([format!("{twin}/{}", plan::OVERLAY6_PREFIX)]),
            "{}: the IPv6 addresses on eth0",
            t.name
        );
    }
    let old = m.tasks_of("old")[0].clone();
    assert!(old.addrs6.is_empty(), "{old:?}");
    assert!(
        eth0_addrs6(&old.ns).is_empty(),
        "old.1 has IPv6: {:?}",
        eth0_addrs6(&old.ns)
    );

    let vip = m.vip("web", APPNET).unwrap();
    let vip6 = plan::twin(net.k, vip);
    let web4: BTreeSet<Ipv4Addr> = m
        .tasks_of("web")
        .iter()
        .map(|t| t.addr_on(APPNET).unwrap())
        .collect();
    let web6: BTreeSet<Ipv6Addr> = m
        .tasks_of("web")
        .iter()
        .map(|t| t.addr6_on(APPNET).unwrap())
        .collect();
    let web_names: BTreeSet<String> = m.tasks_of("web").iter().map(|t| t.name.clone()).collect();
    eprintln!("web: VIP {vip} and {vip6}; tasks {web4:?} and {web6:?}");

    // IPv4 as before, through the dual-stack whoami: the A records, and curl -4 by name, the
    // task seeing the client's IPv4 address.
    for node in NODES {
        let c = task_on(&m, "client", node);
        let d = dig(&c.ns, "web", "A");
        assert_eq!(
            (d.status.as_str(), d.of("A")),
            ("NOERROR", v4set([vip])),
            "{node}: dig A web\n{}",
            d.raw
        );
        let d = dig(&c.ns, "tasks.web", "A");
        assert_eq!(
            d.of("A"),
            v4set(web4.iter().copied()),
            "{node}: dig A tasks.web\n{}",
            d.raw
        );
        reaches_every_task(&m, &c, "http://web/", "-4", &web_names);
    }

    // The IPv4-only network: its task asks its own resolver; AAAA of a name that exists is
    // NODATA (NOERROR, no answer), A is the VIP.
    let old_vip = m.vip("old", V4NET).unwrap();
    let d = dig(&old.ns, "old", "A");
    assert_eq!(
        (d.status.as_str(), d.of("A")),
        ("NOERROR", v4set([old_vip])),
        "v4net: dig A old\n{}",
        d.raw
    );
    for name in ["old", "tasks.old"] {
        let d = dig(&old.ns, name, "AAAA");
        assert_eq!(
            (d.status.as_str(), d.answers.len()),
            ("NOERROR", 0),
            "v4net: dig AAAA {name}: NODATA expected\n{}",
            d.raw
        );
    }
    eprintln!("v4net: dig A old: {old_vip}; dig AAAA old and tasks.old: NOERROR, no answer");

    // IPv6 by address (the pipeline): curl -6 of the VIP's twin from every node's client,
    // balanced over every web task, each of which saw the client's twin and lists its own.
    // This also warms every path (ND, ARP, VTEPs) before the counters are read.
    let by_vip6 = format!("http://[{vip6}]/");
    for node in NODES {
        let c = task_on(&m, "client", node);
        reaches_every_task(&m, &c, &by_vip6, "-6", &web_names);
        let r = probe::curl(&c.ns, &by_vip6, T, &["-6"]).unwrap();
        let w = r
            .whoami()
            .unwrap_or_else(|| panic!("{node}: curl -6 {by_vip6}: {} {}", r.code, r.stderr));
        let answered = m.task(&w.hostname).unwrap().addr6_on(APPNET).unwrap();
        assert!(
            w.ips.contains(&answered.to_string()),
            "{node}: {} does not list its twin {answered}: {:?}",
            w.hostname,
            w.ips
        );
    }
    let c1 = task_on(&m, "client", "n1");
    let (web_n1, web_n2) = (task_on(&m, "web", "n1"), task_on(&m, "web", "n2"));
    let (near6, far6) = (
        web_n1.addr6_on(APPNET).unwrap(),
        web_n2.addr6_on(APPNET).unwrap(),
    );
    for (to, t) in [(far6, &web_n2), (near6, &web_n1)] {
        let r = probe::curl(&c1.ns, &format!("http://[{to}]/"), T, &[]).unwrap();
        assert_eq!(
            r.whoami().map(|w| w.hostname),
            Some(t.name.clone()),
            "client on n1 -> {to}: {} {}",
            r.code,
            r.stderr
        );
    }
    let warm = every_nodes_drops(&m);

    // A mebibyte each way over IPv6 between tasks on different nodes: n1 to n2's web task by
    // its twin, n3 to the VIP's twin (whichever task it picks, n3's own included).
    let s = Scratch::new("ds");
    mebibyte_each_way(
        &s,
        &c1.ns,
        &format!("http://[{far6}]"),
        &format!("client on n1 -> {} [{far6}]", web_n2.name),
    );
    let c3 = task_on(&m, "client", "n3");
    mebibyte_each_way(
        &s,
        &c3.ns,
        &format!("http://[{vip6}]"),
        &format!("client on n3 -> web's VIP [{vip6}]"),
    );
    eprintln!(
        "a mebibyte each way: client on n1 -> [{far6}] ({}), client on n3 -> [{vip6}]",
        web_n2.name
    );

    // A task's connection to the VIP's twin as `conn ls` shows it on the client's node: by
    // the IPv6 addresses the client and the task used (the flow is kept in IPv4 inside).
    // `conn rm` of it resets the client's IPv6 socket at once (a RST in IPv4 would reach no
    // socket of the client's).
    let open = probe::tcp_open(&c3.ns, std::net::SocketAddr::from((vip6, 80)), T)
        .unwrap()
        .unwrap();
    let me = open.local_addr().unwrap();
    let mut k = probe::KeepAlive::new(open, &format!("[{vip6}]"), T).unwrap();
    let seen = probe::Whoami::parse(&k.get().unwrap()).unwrap();
    let mine = format!("{}/128", me.ip());
    // The earlier connections of this client (closed, waiting out their timeout) are
    // listed too: only the open one is established.
    let open_only = ["--client", mine.as_str(), "--state", "established"];
    let json = m
        .meshctl_local(
            "n3",
            &[&["--format", "json", "conn", "ls"][..], &open_only].concat(),
        )
        .unwrap();
    let lists: Vec<ctl::proto::ConnList> = serde_json::from_str(&json).unwrap();
    let conns: Vec<_> = lists.iter().flat_map(|l| &l.connections).collect();
    assert_eq!(conns.len(), 1, "n3: conn ls --client {mine}: {json}");
    let c = conns[0];
    let task6 = m.task(&seen.hostname).unwrap().addr6_on(APPNET).unwrap();
    assert_eq!(
        (c.client, c.service_addr, c.task.as_deref()),
        (
            me,
            std::net::SocketAddr::from((vip6, 80)),
            Some(seen.hostname.as_str())
        ),
        "{json}"
    );
    assert_eq!(
        c.task_addr,
        std::net::SocketAddr::from((task6, 80)),
        "{json}"
    );
    assert_eq!(
        c.source.to_string(),
        seen.remote,
        "the source the task saw: {json}"
    );
    assert_eq!(c.state, ctl::proto::ConnState::Established, "{json}");
    let out = m
        .meshctl_local("n3", &[&["conn", "rm"][..], &open_only].concat())
        .unwrap();
    assert!(
        out.contains("1 connection ended, 1 TCP client sent a RST"),
        "{out}"
    );
    let t0 = std::time::Instant::now();
    assert_eq!(
        k.wait_end(),
        probe::Failure::Reset,
        "the client's IPv6 socket gets the RST"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    eprintln!(
        "conn ls on n3: {} -> {} ({}, {}), conn rm reset it",
        c.client, c.service_addr, seen.hostname, c.task_addr
    );

    // UDP datagrams larger than the overlay's MTU over IPv6, echoed whole by the web task's
    // whoami: the client's kernel sends IPv6 pieces, meshd carries each as a piece (an IPv4
    // fragment inside the pipeline) and the echo comes back in pieces. To n2's web task by its
    // twin, and to the VIP's twin from n1 and n3.
    let sizes = [1400, 1473, 4000, 8000];
    common::udp_echoed(
        &c1.ns,
        std::net::SocketAddr::from((far6, 80)),
        &sizes,
        &format!("client on n1 -> {} [{far6}]:80/udp", web_n2.name),
    );
    for c in [&c1, &c3] {
        let to = std::net::SocketAddr::from((vip6, 80));
        let what = format!("client on {} -> web's VIP [{vip6}]:80/udp", c.node);
        common::udp_echoed(&c.ns, to, &sizes, &what);
    }
    eprintln!("UDP over IPv6 of {sizes:?} bytes echoed: [{far6}] and [{vip6}] from n1 and n3");

    // ping -6 of a task's twin on another node and on the same node.
    ping6(
        &c1.ns,
        far6,
        &format!("client on n1 -> {} on n2", web_n2.name),
    );
    ping6(
        &c1.ns,
        near6,
        &format!("client on n1 -> {} on n1", web_n1.name),
    );

    // At the overlay's MTU: a whole IPv6 packet of the task's MTU (not to be fragmented)
    // crosses to n2 and back; one byte more never leaves the client's kernel.
    let mtu = m.task_mtu(false);
    let fits = (mtu - PING6_HEADERS).to_string();
    let far = far6.to_string();
    let out = sys::exec_in_output(
        &c1.ns,
        "ping",
        &[
            "-6", "-n", "-M", "do", "-s", &fits, "-c", "2", "-W", "2", &far,
        ],
    )
    .unwrap();
    assert!(
        out.code == Some(0) && out.stdout.contains("2 received"),
        "ping -6 -M do -s {fits} {far} (a {mtu}-byte packet): {}{}",
        out.stdout,
        out.stderr
    );
    eprintln!("ping -6 -M do -s {fits} {far}: answered ({mtu}-byte packets)");
    let over = (mtu - PING6_HEADERS + 1).to_string();
    let out = sys::exec_in_output(
        &c1.ns,
        "ping",
        &[
            "-6", "-n", "-M", "do", "-s", &over, "-c", "1", "-W", "2", &far,
        ],
    )
    .unwrap();
    let said = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(
        out.code != Some(0) && said.contains("too long"),
        "ping -6 -M do -s {over} {far} ({} bytes, over the MTU {mtu}) should fail locally: {said}",
        mtu + 1
    );
    eprintln!(
        "ping -6 -M do -s {over} {far}: {}",
        said.lines()
            .find(|l| l.contains("too long"))
            .unwrap_or("")
            .trim()
    );

    // ICMPv6 errors between tasks, translated both ways: a UDP query to a closed port of web's
    // task on n2 is refused at once (its kernel's port unreachable, carried back to the
    // client as ICMPv6), not left to time out.
    let out = sys::exec_in_output(
        &c1.ns,
        "dig",
        &[&format!("@{far}"), "-p", "9", "+tries=1", "+time=4", "web"],
    )
    .unwrap();
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("connection refused"),
        "dig @{far} -p 9 (a closed UDP port of {} on n2): refused expected\n{said}",
        web_n2.name
    );
    eprintln!(
        "dig @{far} -p 9: {}",
        said.lines()
            .find(|l| l.contains("connection refused"))
            .unwrap_or("")
            .trim()
    );

    // The same through the VIP, in both families, from n1 and n3 (a web task on another node,
    // or beside the client): the task's port unreachable reaches the client from the VIP (or
    // its twin), quoting what the client sent to the VIP, so its socket hears of it (as IPVS
    // does); quoting what the task received, it was left to time out.
    for c in [&c1, &c3] {
        for to in [IpAddr::from(vip), IpAddr::from(vip6)] {
            let at = format!("@{to}");
            let out = sys::exec_in_output(
                &c.ns,
                "dig",
                &[&at, "-p", "9", "+tries=1", "+time=4", "web"],
            )
            .unwrap();
            let said = format!("{}{}", out.stdout, out.stderr);
            assert!(
                said.contains("connection refused"),
                "client on {}: dig {at} -p 9 (the VIP, a closed UDP port of its task): refused expected\n{said}",
                c.node
            );
        }
    }
    eprintln!("dig @{vip} -p 9 and @{vip6} -p 9 from n1 and n3: connection refused");

    // The VIP's twin and the gateway's answer ping -6 (meshd's host side, in IPv6).
    let gw6 = net.twin(plan::gateway(net.k)).unwrap();
    ping6(&c1.ns, vip6, "client on n1 -> web's VIP");
    ping6(&c1.ns, gw6, "client on n1 -> appnet's gateway");
    // And with 4,000 bytes: the request's pieces put together by the host side, the reply
    // sent in pieces that fit the network. Of a task's twin on another node and on the same
    // node, the pieces go as they came both ways (no address changes between twins).
    let far_task = format!("{} on n2", web_n2.name);
    let near_task = format!("{} on n1", web_n1.name);
    for (to, what) in [
        (vip6, "web's VIP"),
        (gw6, "appnet's gateway"),
        (far6, far_task.as_str()),
        (near6, near_task.as_str()),
    ] {
        let out = sys::exec_in_output(
            &c1.ns,
            "ping",
            &[
                "-6",
                "-n",
                "-s",
                "4000",
                "-c",
                "2",
                "-W",
                "2",
                &to.to_string(),
            ],
        )
        .unwrap();
        assert!(
            out.code == Some(0) && out.stdout.contains("4008 bytes from"),
            "client on n1 -> {what}: ping -6 -s 4000 {to}: {}{}",
            out.stdout,
            out.stderr
        );
    }
    eprintln!("ping -6 -s 4000 of the VIP's and the gateway's twins and of two tasks': answered");

    // A task whose own MTU is larger than the network's (1500) learns the network's from
    // meshd: its first packet over 1450 bytes gets ICMPv6 packet too big from its gateway's
    // twin, and its kernel keeps to 1450 after.
    m.set_task_mtu(1500).unwrap();
    m.run(&RunSpec::new("big", 1).network(APPNET).on("n1"))
        .unwrap();
    let big = task_on(&m, "big", "n1");
    let out = sys::exec_in_output(
        &big.ns,
        "ping",
        &[
            "-6", "-n", "-M", "do", "-s", &over, "-c", "3", "-i", "0.3", "-W", "2", &far,
        ],
    )
    .unwrap();
    let said = format!("{}{}", out.stdout, out.stderr);
    let told = said.lines().find(|l| {
        let l = l.to_lowercase();
        l.contains(&mtu.to_string()) && (l.contains("too big") || l.contains("too long"))
    });
    assert!(
        told.is_some(),
        "ping -6 -M do -s {over} {far} from a task of MTU 1500: packet too big (mtu {mtu}, from {gw6}) expected\n{said}"
    );
    eprintln!(
        "ping -6 -M do -s {over} {far} from a task of MTU 1500: {}",
        told.unwrap_or("").trim()
    );
    let counted: u64 = NODES
        .iter()
        .map(|n| drops(&m, n).get("too_big").copied().unwrap_or(0))
        .sum();
    assert!(counted >= 1, "no node counted too_big");

    // IPv6 by name (DNS): AAAA over IPv4 from every node's client task, then curl -6 by name.
    for node in NODES {
        let c = task_on(&m, "client", node);
        let d = dig(&c.ns, "web", "AAAA");
        assert_eq!(
            (d.status.as_str(), d.of("AAAA")),
            ("NOERROR", v6set([vip6])),
            "{node}: dig AAAA web\n{}",
            d.raw
        );
        let d = dig(&c.ns, "tasks.web", "AAAA");
        assert_eq!(
            (d.status.as_str(), d.of("AAAA")),
            ("NOERROR", v6set(web6.iter().copied())),
            "{node}: dig AAAA tasks.web\n{}",
            d.raw
        );
        eprintln!(
            "{node}: dig AAAA web: {vip6}; dig AAAA tasks.web: {:?}",
            d.of("AAAA")
        );
        let d = dig(&c.ns, "web", "A");
        assert_eq!(
            d.of("A"),
            v4set([vip]),
            "{node}: dig A web, again\n{}",
            d.raw
        );
        // DNS over IPv6: the resolver answers on the gateway's twin too, over UDP and TCP,
        // the same answers (a task whose resolv.conf names the twin, or an IPv6-only one).
        let at6 = format!("@{gw6}");
        for more in [vec![at6.as_str()], vec![at6.as_str(), "+tcp"]] {
            let d = dig_with(&c.ns, "web", "AAAA", &more);
            assert_eq!(
                (d.status.as_str(), d.of("AAAA")),
                ("NOERROR", v6set([vip6])),
                "{node}: dig {more:?} AAAA web (DNS over IPv6)\n{}",
                d.raw
            );
            assert!(
                d.raw.contains(&format!("SERVER: {gw6}#53")),
                "{node}: dig {more:?}: answered by another server\n{}",
                d.raw
            );
            let d = dig_with(&c.ns, "tasks.web", "A", &more);
            assert_eq!(
                (d.status.as_str(), d.of("A")),
                ("NOERROR", v4set(web4.iter().copied())),
                "{node}: dig {more:?} A tasks.web (DNS over IPv6)\n{}",
                d.raw
            );
        }
        eprintln!("{node}: dig @{gw6} [+tcp] AAAA web: {vip6}; A tasks.web: the tasks");
    }
    for node in NODES {
        let c = task_on(&m, "client", node);
        reaches_every_task(&m, &c, "http://web/", "-6", &web_names);
    }
    no_unexpected_drops(&m, &warm);
}
