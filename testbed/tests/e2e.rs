//! End-to-end tests: a 3-node meshd mesh in network namespaces, checked with real clients
//! (curl, ping, UDP and TCP sockets in the client's or a task's namespace).
//!
//! Run as root from the workspace root:
//!
//! ```text
//! sudo cargo test -p testbed --test e2e
//! ```
//!
//! Without root every test prints a line and passes. The tests run one at a time (a global
//! lock: they share the machine's two cores and meshd's timing), each on its own instance
//! `meshd-e<tag><pid>-*`, removed by a guard even when the test fails; the guard also checks
//! that no namespace of the instance is left. The test builds meshd and meshctl first (`cargo
//! build -p dataplane -p ctl`), so it never runs stale daemons.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Mesh;
use ctl::model::{Availability, PublishMode};
use testbed::probe::{self, Failure, KeepAlive};
use testbed::{sys, RunSpec};

const T: Duration = Duration::from_secs(3);
/// How long a negative check (isolation, a hang) waits.
const SHORT: Duration = Duration::from_millis(1500);

/// A fresh 3-node mesh, or `None` (with a printed line) when not root.
fn mesh(tag: &str) -> Option<Mesh> {
    common::mesh("e", "e2e", tag, || {
        let missing = testbed::preflight::missing();
        assert!(
            missing.is_empty(),
            "missing programs: {missing:?} (apt-get install -y iproute2 ethtool curl iputils-ping)"
        );
    })
}

fn url(m: &Mesh, node: &str, port: u16) -> String {
    format!("http://{}:{port}/", m.node(node).unwrap().addr)
}

/// curl from the outside client; the task that answered.
fn hostname(m: &Mesh, node: &str, port: u16) -> String {
    let r = probe::curl(&m.client_ns(), &url(m, node, port), T, &[]).unwrap();
    assert!(r.ok(), "curl {} failed: {}", url(m, node, port), r.stderr);
    r.whoami()
        .unwrap_or_else(|| panic!("not a whoami answer: {:?}", r.body))
        .hostname
}

fn web(replicas: u32) -> RunSpec {
    RunSpec::new("web", replicas)
        .publish("8080:80", PublishMode::Ingress)
        .unwrap()
}

#[test]
fn a_published_port_answers_on_every_node_even_one_without_a_task() {
    let Some(mut m) = mesh("every") else { return };
    m.run(&web(2)).unwrap();
    let nodes: Vec<&str> = m.tasks_of("web").iter().map(|t| t.node.as_str()).collect();
    assert_eq!(
        nodes,
        ["n1", "n2"],
        "two tasks spread over n1 and n2, none on n3"
    );
    for node in ["n1", "n2", "n3"] {
        let h = hostname(&m, node, 8080);
        assert!(h.starts_with("web."), "{node}: {h}");
    }
}

#[test]
fn two_connections_reach_two_different_tasks() {
    let Some(mut m) = mesh("rr") else { return };
    m.run(&web(2)).unwrap();
    for node in ["n1", "n3"] {
        let a = hostname(&m, node, 8080);
        let b = hostname(&m, node, 8080);
        assert_ne!(a, b, "two connections to {node} should go to two tasks");
    }
}

#[test]
fn after_scaling_to_one_task_every_node_still_reaches_it() {
    let Some(mut m) = mesh("scale") else { return };
    m.run(&web(3)).unwrap();
    m.scale("web", 1).unwrap();
    assert_eq!(m.tasks_of("web").len(), 1);
    assert!(
        sys::netns_with_prefix(&m.plan.task_ns("web.2"))
            .unwrap()
            .is_empty(),
        "web.2's namespace is gone"
    );
    for node in ["n1", "n2", "n3"] {
        for _ in 0..2 {
            assert_eq!(hostname(&m, node, 8080), "web.1", "{node}");
        }
    }
}

#[test]
fn udp_published_ports_answer_on_every_node_and_balance() {
    let Some(mut m) = mesh("udp") else { return };
    m.run(
        &RunSpec::new("dns", 2)
            .publish("5353:53/udp", PublishMode::Ingress)
            .unwrap(),
    )
    .unwrap();
    let c = m.client_ns();
    let mut seen = BTreeSet::new();
    for node in ["n1", "n2", "n3"] {
        let to = m.node_sock(node, 5353).unwrap();
        // One socket: one flow, one task, every time.
        let s = probe::udp_socket(&c).unwrap().unwrap();
        let first =
            probe::udp_ask_on(&s, to, "hello", T).unwrap_or_else(|f| panic!("udp to {to}: {f}"));
        let (task, payload) = first.split_once(' ').unwrap();
        assert_eq!(payload, "hello");
        for i in 0..3 {
            let again = probe::udp_ask_on(&s, to, &format!("again {i}"), T).unwrap();
            assert_eq!(
                again,
                format!("{task} again {i}"),
                "a UDP flow stays on its task"
            );
        }
        seen.insert(task.to_string());
        // A second socket is a new flow: the other task.
        let other = probe::udp_ask(&c, to, "x", T).unwrap().unwrap();
        seen.insert(other.split_once(' ').unwrap().0.to_string());
    }
    assert_eq!(
        seen,
        BTreeSet::from(["dns.1".to_string(), "dns.2".to_string()])
    );
}

#[test]
fn masquerade_the_task_sees_the_ingress_nodes_endpoint() {
    let Some(mut m) = mesh("masq") else { return };
    m.run(&web(2)).unwrap();
    for (node, ep) in [("n1", "10.0.0.2"), ("n2", "10.0.0.3"), ("n3", "10.0.0.4")] {
        for _ in 0..2 {
            let r = probe::curl(&m.client_ns(), &url(&m, node, 8080), T, &[]).unwrap();
            let w = r.whoami().unwrap_or_else(|| panic!("{node}: {}", r.stderr));
            assert_eq!(w.remote_ip(), ep, "{node}: {w:?}");
        }
    }
}

/// With `--client-ip keep`, the task sees the client's own address through every node, and a
/// task's ICMP error about the client's datagram (port unreachable, once its server has
/// stopped) reaches the client's socket, which is refused at once, whether the task is on the
/// ingress node or on another (the error goes back to the ingress node by the return route,
/// which sends it to the client by the flow).
#[test]
fn keep_client_ip_the_task_sees_the_client() {
    let Some(mut m) = mesh("keep") else { return };
    let spec = web(2)
        .keep_client_ip()
        .publish("9999:9/udp", PublishMode::Ingress)
        .unwrap();
    m.run(&spec).unwrap();
    for node in ["n1", "n2", "n3"] {
        let mut tasks = BTreeSet::new();
        for _ in 0..2 {
            let r = probe::curl(&m.client_ns(), &url(&m, node, 8080), T, &[]).unwrap();
            let w = r.whoami().unwrap_or_else(|| panic!("{node}: {}", r.stderr));
            assert_eq!(w.remote_ip(), "192.168.100.100", "{node}: {w:?}");
            tasks.insert(w.hostname);
        }
        // Both tasks, so both the local and the cross-node return path were used.
        assert_eq!(tasks.len(), 2, "{node}: {tasks:?}");
    }
    // The tasks' servers stop (their kernels answer port unreachable). One datagram per node
    // (passive health counts each refusal against its task; one a node stays under its
    // threshold). n3 runs no task: its datagram's task is on another node.
    for task in ["web.1", "web.2"] {
        m.stop_task_server(task).unwrap();
    }
    for node in ["n3", "n1", "n2"] {
        let to = m.node_sock(node, 9999).unwrap();
        let t0 = Instant::now();
        let r = probe::udp_ask(&m.client_ns(), to, "x", T).unwrap();
        assert_eq!(
            r,
            Err(Failure::Refused),
            "{node} UDP 9999: the task's port unreachable expected"
        );
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }
}

#[test]
fn host_mode_publishing_answers_only_where_a_task_runs_and_with_that_task() {
    let Some(mut m) = mesh("host") else { return };
    m.run(
        &RunSpec::new("web", 2)
            .publish("8080:80", PublishMode::Host)
            .unwrap(),
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(hostname(&m, "n1", 8080), "web.1");
        assert_eq!(hostname(&m, "n2", 8080), "web.2");
    }
    let to = m.node_sock("n3", 8080).unwrap();
    assert_eq!(
        probe::tcp_open(&m.client_ns(), to, T).unwrap().err(),
        Some(Failure::Refused),
        "n3 runs no task"
    );
}

#[test]
fn publish_rm_then_connection_refused() {
    let Some(mut m) = mesh("pubrm") else { return };
    m.run(&web(2)).unwrap();
    assert!(hostname(&m, "n1", 8080).starts_with("web."));
    m.meshctl(&["service", "update", "--publish-rm", "8080", "web"])
        .unwrap();
    for node in ["n1", "n2", "n3"] {
        let r = probe::curl(&m.client_ns(), &url(&m, node, 8080), T, &[]).unwrap();
        assert_eq!(
            r.code, 7,
            "{node}: curl should fail to connect (refused), got {r:?}"
        );
        let to = m.node_sock(node, 8080).unwrap();
        assert_eq!(
            probe::tcp_open(&m.client_ns(), to, T).unwrap().err(),
            Some(Failure::Refused)
        );
    }
    m.meshctl(&["service", "update", "--publish-add", "8080:80", "web"])
        .unwrap();
    assert!(
        hostname(&m, "n3", 8080).starts_with("web."),
        "--publish-add brings it back"
    );
}

#[test]
fn a_client_task_reaches_a_service_by_its_vip_balanced_over_tasks_on_other_nodes() {
    let Some(mut m) = mesh("vip") else { return };
    m.run(&RunSpec::new("web", 2).network("appnet")).unwrap();
    m.run(&RunSpec::new("client", 1).network("appnet")).unwrap();
    let client = m.tasks_of("client")[0].clone();
    assert_eq!(
        client.node, "n3",
        "web.1 and web.2 are on n1 and n2; the client on n3"
    );
    let vip = m.vip("web", "appnet").unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let r = probe::curl(&client.ns, &format!("http://{vip}/"), T, &[]).unwrap();
        let w = r
            .whoami()
            .unwrap_or_else(|| panic!("curl {vip}: {}", r.stderr));
        assert_eq!(
            w.remote_ip(),
            client.addr_on("appnet").unwrap().to_string(),
            "VIP traffic keeps the client's address"
        );
        seen.insert(w.hostname);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["web.1".to_string(), "web.2".to_string()])
    );
    // By name, as `curl web` in seed 004 (the testbed's /etc/hosts stands in for meshd's DNS).
    let r = probe::curl(&client.ns, "http://web/", T, &[]).unwrap();
    assert!(r.whoami().is_some(), "curl web: {}", r.stderr);
    let (ok, out) = probe::ping(&client.ns, &vip.to_string(), 2).unwrap();
    assert!(ok, "ping VIP: {out}");
}

#[test]
fn drain_stops_new_connections_to_a_nodes_tasks_but_keeps_open_ones() {
    let Some(mut m) = mesh("drain") else { return };
    m.run(&web(3)).unwrap();
    let on_n2 = m
        .tasks_of("web")
        .iter()
        .find(|t| t.node == "n2")
        .unwrap()
        .name
        .clone();
    // A connection to n2's task, open before the drain.
    let to = m.node_sock("n1", 8080).unwrap();
    let mut held = None;
    for _ in 0..3 {
        let s = probe::tcp_open(&m.client_ns(), to, T).unwrap().unwrap();
        let mut k = KeepAlive::new(s, "n1", T).unwrap();
        if probe::Whoami::parse(&k.get().unwrap()).unwrap().hostname == on_n2 {
            held = Some(k);
            break;
        }
    }
    let mut held = held.expect("three connections reach all three tasks");
    m.set_availability("n2", Availability::Drain).unwrap();
    for _ in 0..3 {
        for node in ["n1", "n2", "n3"] {
            assert_ne!(
                hostname(&m, node, 8080),
                on_n2,
                "drained {on_n2} took a new connection via {node}"
            );
        }
    }
    let again = held
        .get()
        .unwrap_or_else(|f| panic!("the open connection to {on_n2}: {f}"));
    assert_eq!(
        probe::Whoami::parse(&again).unwrap().hostname,
        on_n2,
        "an open connection stays on the drained task"
    );
    m.set_availability("n2", Availability::Active).unwrap();
    let seen: BTreeSet<String> = (0..3).map(|_| hostname(&m, "n1", 8080)).collect();
    assert!(seen.contains(&on_n2), "active again: {seen:?}");
}

#[test]
fn a_flow_stays_on_its_task_while_tasks_are_added() {
    let Some(mut m) = mesh("sticky") else { return };
    m.run(&web(2)).unwrap();
    let mut conns = Vec::new();
    for node in ["n1", "n3"] {
        let s = probe::tcp_open(&m.client_ns(), m.node_sock(node, 8080).unwrap(), T)
            .unwrap()
            .unwrap();
        let mut k = KeepAlive::new(s, node, T).unwrap();
        let first = probe::Whoami::parse(&k.get().unwrap()).unwrap();
        conns.push((node, k, first));
    }
    m.scale("web", 4).unwrap();
    for (node, k, first) in &mut conns {
        for _ in 0..2 {
            let w =
                probe::Whoami::parse(&k.get().unwrap_or_else(|f| panic!("{node}: {f}"))).unwrap();
            assert_eq!(
                w.hostname, first.hostname,
                "via {node}: the connection moved"
            );
            assert_eq!(w.remote, first.remote, "via {node}: same connection");
        }
    }
    let seen: BTreeSet<String> = (0..4).map(|_| hostname(&m, "n2", 8080)).collect();
    assert_eq!(
        seen.len(),
        4,
        "new connections use the new tasks too: {seen:?}"
    );
}

#[test]
fn a_removed_tasks_client_gets_a_reset_not_a_hang() {
    let Some(mut m) = mesh("reset") else { return };
    m.run(&web(2)).unwrap();
    m.run(
        &RunSpec::new("dns", 2)
            .publish("5353:53/udp", PublishMode::Ingress)
            .unwrap(),
    )
    .unwrap();
    let c = m.client_ns();
    // TCP through n3 (no local task: the flow crosses the overlay).
    let s = probe::tcp_open(&c, m.node_sock("n3", 8080).unwrap(), T)
        .unwrap()
        .unwrap();
    let mut k = KeepAlive::new(s, "n3", Duration::from_secs(5)).unwrap();
    let victim = probe::Whoami::parse(&k.get().unwrap()).unwrap().hostname;
    // UDP through n1.
    let u = probe::udp_socket(&c).unwrap().unwrap();
    let to = m.node_sock("n1", 5353).unwrap();
    let udp_victim = probe::udp_ask_on(&u, to, "a", T)
        .unwrap()
        .split_once(' ')
        .unwrap()
        .0
        .to_string();

    // meshd forgets the tasks; their servers keep running, so only meshd can end the flows.
    m.deregister_task(&victim).unwrap();
    m.deregister_task(&udp_victim).unwrap();
    let t0 = Instant::now();
    let end = k.wait_end();
    assert_eq!(
        end,
        Failure::Reset,
        "the client of removed {victim} should get a RST (waited {:?})",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the reset took {:?}",
        t0.elapsed()
    );
    // The same UDP socket is not black-holed (moby#36878): a client that retries is answered by
    // the other task within a second, not minutes (and its very first datagram already is: see
    // the_first_udp_datagram_after_a_task_is_removed_reaches_another_task).
    let t0 = Instant::now();
    let next = loop {
        match probe::udp_ask_on(&u, to, "b", Duration::from_millis(250)) {
            Ok(a) => break a,
            Err(Failure::Timeout) if t0.elapsed() < Duration::from_secs(1) => continue,
            Err(f) => panic!(
                "UDP after removing {udp_victim}: {f} after {:?}",
                t0.elapsed()
            ),
        }
    };
    assert!(
        !next.starts_with(&udp_victim) && next.ends_with(" b"),
        "{next}"
    );
    for node in ["n1", "n2", "n3"] {
        assert_ne!(hostname(&m, node, 8080), victim);
    }
}

#[test]
fn networks_are_isolated_from_each_other() {
    let Some(mut m) = mesh("iso") else { return };
    m.run(&RunSpec::new("web", 2).network("appnet")).unwrap();
    m.run(&RunSpec::new("api", 1).network("othernet")).unwrap();
    m.run(&RunSpec::new("probe", 1).network("othernet"))
        .unwrap();
    let p = m.tasks_of("probe")[0].ns.clone();
    // Its own network works...
    let api_vip = m.vip("api", "othernet").unwrap();
    let r = probe::curl(&p, &format!("http://{api_vip}/"), T, &[]).unwrap();
    assert_eq!(
        r.whoami().map(|w| w.hostname).as_deref(),
        Some("api.1"),
        "{}",
        r.stderr
    );
    // ...the other one does not: neither its VIP nor its tasks' addresses.
    let web_vip = m.vip("web", "appnet").unwrap();
    let mut targets = vec![web_vip];
    targets.extend(
        m.tasks_of("web")
            .iter()
            .map(|t| t.addr_on("appnet").unwrap()),
    );
    for ip in targets {
        let got = probe::tcp_open(&p, SocketAddr::from((ip, 80)), SHORT).unwrap();
        assert!(got.is_err(), "othernet reached appnet's {ip}");
        let (ok, _) = probe::ping(&p, &ip.to_string(), 1).unwrap();
        assert!(!ok, "othernet pinged appnet's {ip}");
    }
}

#[test]
fn a_nodes_address_answers_ping_and_refuses_what_is_not_published() {
    let Some(mut m) = mesh("addr") else { return };
    m.run(&web(1)).unwrap();
    let c = m.client_ns();
    for node in ["n1", "n2", "n3"] {
        let addr = m.node(node).unwrap().addr;
        let (ok, out) = probe::ping(&c, &addr.to_string(), 2).unwrap();
        assert!(ok, "ping {node}: {out}");
        // Published: answers. Anything else: a host's answers, at once, from meshd.
        assert_eq!(hostname(&m, node, 8080), "web.1");
        for port in [22, 80, 8081] {
            let t0 = Instant::now();
            let r = probe::tcp_open(&c, SocketAddr::from((addr, port)), T).unwrap();
            assert_eq!(r.err(), Some(Failure::Refused), "{node} TCP {port}");
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "the RST took {:?}",
                t0.elapsed()
            );
        }
        for port in [53, 8080] {
            let r = probe::udp_ask(&c, SocketAddr::from((addr, port)), "x", T).unwrap();
            assert_eq!(
                r,
                Err(Failure::Refused),
                "{node} UDP {port}: ICMP port unreachable expected"
            );
        }
    }
}

/// Every node's IPv6 address (`--addr6`): the client finds it by Neighbor Discovery (meshd's
/// answer, with the node's uplink MAC), `ping -6` is answered, `curl -6` of the published port
/// reaches the IPv4 task through every node (local to one, over VXLAN from the others), `conn
/// ls` shows the IPv6 client, TCP and UDP to ports that are not published are refused at once
/// (by meshd), and so is UDP to a published port whose task does not listen (by the task, its
/// port unreachable translated to ICMPv6), while IPv4 goes on as before.
#[test]
fn every_nodes_ipv6_address_answers_ndp_ping6_and_curl6_of_a_published_port() {
    let Some(mut m) = mesh("v6") else { return };
    m.run(&web(1)).unwrap();
    // A published UDP port whose task has no socket on its target port.
    m.meshctl(&["service", "update", "--publish-add", "5454:9/udp", "web"])
        .unwrap();
    let c = m.client_ns();
    for node in ["n1", "n2", "n3"] {
        let n = m.node(node).unwrap().clone();
        let a6 = n.addr6();
        let (ok, out) = probe::ping(&c, &a6.to_string(), 2).unwrap();
        assert!(ok, "ping -6 {node} ({a6}): {out}");
        let neigh = sys::exec_in_output(&c, "ip", &["-6", "neigh", "show", &a6.to_string()])
            .unwrap()
            .stdout;
        assert!(
            neigh.contains(&testbed::plan::uplink_mac(n.index)),
            "{node}: the client's neighbour entry is meshd's uplink MAC: {neigh:?}"
        );
        for i in 0..3 {
            let r = probe::curl(&c, &format!("http://[{a6}]:8080/"), T, &["-6"]).unwrap();
            let w = r.whoami();
            assert_eq!(
                w.as_ref().map(|w| w.hostname.as_str()),
                Some("web.1"),
                "{node}: curl -6 http://[{a6}]:8080/ ({i}): {} {}",
                r.code,
                r.stderr
            );
            // Masqueraded: the IPv4 task sees the ingress network's endpoint.
            let remote = w.unwrap().remote;
            assert!(remote.starts_with("10."), "{node}: the task saw {remote}");
        }
        // The connection as the client made it: from its IPv6 address to the node's.
        let open = probe::tcp_open(&c, SocketAddr::from((a6, 8080)), T)
            .unwrap()
            .unwrap();
        let sport = open.local_addr().unwrap().port();
        let me6 = testbed::plan::CLIENT_ADDR6.to_string();
        let ls = m
            .meshctl_local(node, &["--format", "json", "conn", "ls", "--client", &me6])
            .unwrap();
        let want = format!("\"[{}]:{sport}\"", testbed::plan::CLIENT_ADDR6);
        assert!(
            ls.contains(&want) && ls.contains(&format!("\"[{a6}]:8080\"")),
            "{node}: conn ls shows {want}: {ls}"
        );
        drop(open);
        let t0 = Instant::now();
        let r = probe::tcp_open(&c, SocketAddr::from((a6, 9999)), T).unwrap();
        assert_eq!(r.err(), Some(Failure::Refused), "{node} TCP [{a6}]:9999");
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the RST took {:?}",
            t0.elapsed()
        );
        let r = probe::udp_ask(&c, SocketAddr::from((a6, 53)), "x", T).unwrap();
        assert_eq!(
            r,
            Err(Failure::Refused),
            "{node} UDP [{a6}]:53: ICMPv6 port unreachable expected"
        );
        // The task's own port unreachable about a published UDP port reaches the IPv6 client
        // as ICMPv6 about what it sent (it waited for its timeout before), as it reaches an
        // IPv4 one.
        for to in [
            SocketAddr::from((a6, 5454)),
            SocketAddr::from((n.addr, 5454)),
        ] {
            let t0 = Instant::now();
            let r = probe::udp_ask(&c, to, "x", T).unwrap();
            assert_eq!(
                r,
                Err(Failure::Refused),
                "{node} UDP {to}: the task's refusal"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "{node} UDP {to}: refused after {:?}",
                t0.elapsed()
            );
        }
        assert_eq!(
            hostname(&m, node, 8080),
            "web.1",
            "{node}: IPv4 still answers"
        );
        let stats = m
            .meshctl_local(node, &["--format", "json", "stats"])
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert!(
            sum_of(&v, "ndp_replies") >= 1,
            "{node}: meshd counted its Neighbor Advertisements: {stats}"
        );
    }
}

/// The sum of every number named `key` anywhere in `v`.
fn sum_of(v: &serde_json::Value, key: &str) -> u64 {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                if k == key {
                    x.as_u64().unwrap_or(0)
                } else {
                    sum_of(x, key)
                }
            })
            .sum(),
        serde_json::Value::Array(a) => a.iter().map(|x| sum_of(x, key)).sum(),
        _ => 0,
    }
}

/// A change is acknowledged only when every worker runs it, and a flow whose task is gone ends
/// at its first packet after that (while the sweep of the new table is under way): the first
/// datagram after the removal already reaches another task.
#[test]
fn the_first_udp_datagram_after_a_task_is_removed_reaches_another_task() {
    let Some(mut m) = mesh("udprm") else { return };
    m.run(
        &RunSpec::new("dns", 2)
            .publish("5353:53/udp", PublishMode::Ingress)
            .unwrap(),
    )
    .unwrap();
    let u = probe::udp_socket(&m.client_ns()).unwrap().unwrap();
    let to = m.node_sock("n1", 5353).unwrap();
    let victim = probe::udp_ask_on(&u, to, "a", T)
        .unwrap()
        .split_once(' ')
        .unwrap()
        .0
        .to_string();
    m.deregister_task(&victim).unwrap();
    let next = probe::udp_ask_on(&u, to, "b", T)
        .unwrap_or_else(|f| panic!("the first datagram after removing {victim}: {f}"));
    assert!(!next.starts_with(&victim), "{next}");
}

/// A VIP connection from a task to a task on the same node: meshd masquerades the client to the
/// network's gateway (hairpin NAT, as IPVS does), so the task answers through meshd and the
/// client sees the SYN-ACK come from the VIP, not straight from the task's address.
#[test]
fn a_vip_connection_to_a_task_on_the_clients_own_node_works() {
    let Some(mut m) = mesh("viploc") else { return };
    m.run(&RunSpec::new("web", 1).network("appnet").on("n1"))
        .unwrap();
    m.run(&RunSpec::new("client", 1).network("appnet").on("n1"))
        .unwrap();
    let client = m.tasks_of("client")[0].ns.clone();
    let vip = m.vip("web", "appnet").unwrap();
    for _ in 0..2 {
        let r = probe::curl(&client, &format!("http://{vip}/"), T, &[]).unwrap();
        assert_eq!(
            r.whoami().map(|w| w.hostname).as_deref(),
            Some("web.1"),
            "curl {vip}: {}",
            r.stderr
        );
    }
}

/// `meshctl conn ls` shows a real client's open connection on the node it entered, as the
/// task saw it; `conn rm` of that client ends it with a RST, and the node serves on.
#[test]
fn conn_ls_shows_a_clients_connection_and_conn_rm_resets_it() {
    use ctl::proto::{ConnKind, ConnList, ConnState};
    let Some(mut m) = mesh("conn") else { return };
    m.run(&web(2)).unwrap();
    let c = m.client_ns();
    // Through n3, which runs no task of web: the flow crosses the overlay.
    let s = probe::tcp_open(&c, m.node_sock("n3", 8080).unwrap(), T)
        .unwrap()
        .unwrap();
    let mut k = KeepAlive::new(s, "n3", Duration::from_secs(5)).unwrap();
    let seen = probe::Whoami::parse(&k.get().unwrap()).unwrap();
    let n3 = vec![m.node("n3").unwrap().socket.clone()];

    let json = m
        .meshctl(&["--format", "json", "conn", "ls", "--service", "web"])
        .unwrap();
    let lists: Vec<ConnList> = serde_json::from_str(&json).unwrap();
    assert_eq!(lists.len(), 3, "one answer per node: {json}");
    let on_n3 = lists.iter().find(|l| l.node == "n3").unwrap();
    let mine: Vec<_> = on_n3
        .connections
        .iter()
        .filter(|k| k.client.ip() == testbed::plan::CLIENT_ADDR)
        .collect();
    assert_eq!(mine.len(), 1, "{json}");
    let conn = mine[0];
    assert_eq!(conn.kind, ConnKind::Ingress);
    assert_eq!(conn.state, ConnState::Established);
    assert_eq!(
        conn.service_addr,
        m.node_sock("n3", 8080)
            .unwrap()
            .to_string()
            .parse()
            .unwrap()
    );
    assert_eq!(conn.task.as_deref(), Some(seen.hostname.as_str()));
    assert_eq!(
        conn.source.to_string(),
        seen.remote,
        "the source the task saw"
    );
    // The testbed's meshds run with --flow-accounting.
    let (pin, pout) = (conn.packets_in.unwrap(), conn.packets_out.unwrap());
    assert!(pin >= 3 && pout >= 2, "{conn:?}");
    assert!(
        conn.bytes_out.unwrap() > conn.bytes_in.unwrap(),
        "the answer is the bigger side: {conn:?}"
    );
    // The table people read says the same.
    let table = m
        .meshctl_on(&n3, &["conn", "ls", "--state", "established"])
        .unwrap();
    assert!(
        table.contains("ESTABLISHED") && table.contains(&seen.hostname),
        "{table}"
    );
    // service stats counts it as the task's active connection on n3 (as of the sweep's last
    // pass over the flow table: a fraction of a second).
    let t0 = Instant::now();
    let active = loop {
        let json = m
            .meshctl_on(
                &n3,
                &[
                    "--format",
                    "json",
                    "service",
                    "stats",
                    "web",
                    "--interval",
                    "0",
                ],
            )
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let row = v[0]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task"] == seen.hostname.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{json}"));
        if row["active"] == 1 || t0.elapsed() > Duration::from_secs(5) {
            break row;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(active["active"], 1, "{active}");
    assert!(active["connections"].as_u64().unwrap() >= 1, "{active}");
    let e = m
        .meshctl_on(&n3, &["service", "stats", "nope"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("service \"nope\" not found"), "{e}");
    // A filter that does not parse is refused, with the fix.
    let e = m
        .meshctl_on(&n3, &["conn", "ls", "--client", "192.168.100.100/24"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean 192.168.100.0/24"), "{e}");
    let e = m.meshctl_on(&n3, &["conn", "rm"]).unwrap_err().to_string();
    assert!(e.contains("--all"), "{e}");

    let out = m
        .meshctl_on(
            &n3,
            &[
                "conn",
                "rm",
                "--client",
                &testbed::plan::CLIENT_ADDR.to_string(),
            ],
        )
        .unwrap();
    assert!(
        out.contains("n3: 1 connection ended, 1 TCP client sent a RST"),
        "{out}"
    );
    let t0 = Instant::now();
    assert_eq!(k.wait_end(), Failure::Reset, "the client should get a RST");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let after = m
        .meshctl_on(
            &n3,
            &[
                "--format",
                "json",
                "conn",
                "ls",
                "--client",
                "192.168.100.100",
            ],
        )
        .unwrap();
    let after: Vec<ConnList> = serde_json::from_str(&after).unwrap();
    assert_eq!(after[0].matched, 0, "{after:?}");
    // The node serves on: a new connection through it is answered.
    hostname(&m, "n3", 8080);
}

/// `meshctl capture` on every node while a client reaches a task through n3: the file tcpdump
/// reads shows the connection's walk, each frame marked with its node, port and direction —
/// the client's SYN as it came to n3, n3's VXLAN to the task's node, that node receiving it,
/// and the SYN as the task got it (translated).
#[test]
fn capture_shows_a_connections_walk_through_the_mesh_before_and_after_translation() {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    use std::io::BufRead;
    let Some(mut m) = mesh("cap") else { return };
    assert!(
        testbed::preflight::on_path("tcpdump"),
        "tcpdump is missing (apt-get install -y tcpdump; scripts/deps.sh installs it)"
    );
    m.run(&web(2)).unwrap();
    let file = std::env::temp_dir().join(format!("meshd-capture-{}.pcapng", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let mut args: Vec<String> = Vec::new();
    for s in m.sockets() {
        args.extend(["--socket".into(), s.display().to_string()]);
    }
    args.extend(
        [
            "capture",
            "-w",
            file.to_str().unwrap(),
            "--filter",
            "tcp port 8080 or tcp port 80 or udp port 4789",
            "--duration",
            "20s",
        ]
        .map(String::from),
    );
    let mut child = std::process::Command::new(&m.tools.meshctl)
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("capturing on n1, n2, n3 (filter: tcp port 8080"),
        "{line}"
    );
    // One connection through n3, which runs no task of web.
    let h = hostname(&m, "n3", 8080);
    let task_node = m
        .tasks_of("web")
        .iter()
        .find(|t| t.name == h)
        .unwrap()
        .node
        .clone();
    // Ended early: SIGINT, as Ctrl-C; meshctl closes the file properly.
    std::thread::sleep(Duration::from_millis(300));
    sys::signal(child.id(), libc::SIGINT);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(status.success(), "meshctl capture failed: {rest}");
    for n in ["n1", "n2", "n3"] {
        assert!(rest.contains(&format!("{n}: ")), "{rest}");
    }
    assert!(rest.contains("interrupted"), "{rest}");

    // tcpdump reads it.
    let out = std::process::Command::new("tcpdump")
        .args(["-nn", "-r", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n3 = m.node("n3").unwrap().addr;
    assert!(text.contains(&format!("{n3}.8080: Flags [S]")), "{text}");
    assert!(text.contains("VXLAN"), "{text}");

    // And each frame says where it was seen.
    let bytes = std::fs::read(&file).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).unwrap();
    let mut names = Vec::new();
    let mut seen = BTreeSet::new();
    while let Some(b) = r.next_block() {
        match b.unwrap() {
            Block::InterfaceDescription(i) => {
                names.extend(i.options.iter().filter_map(|o| match o {
                    InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                    _ => None,
                }))
            }
            Block::EnhancedPacket(p) => {
                let comment = p.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                    _ => None,
                });
                let c = comment.expect("every frame has its comment");
                // "n3 uplink rx, before translation, worker 0": node, port, direction.
                let words: Vec<&str> = c.split([' ', ',']).collect();
                seen.insert((
                    words[0].to_string(),
                    words[1].to_string(),
                    words[2].to_string(),
                ));
                let iface = &names[p.interface_id as usize];
                assert_eq!(iface, &format!("{}:{}", words[0], words[1]), "{c}");
            }
            _ => {}
        }
    }
    assert_eq!(
        names,
        [
            "n1:uplink",
            "n1:tasks",
            "n2:uplink",
            "n2:tasks",
            "n3:uplink",
            "n3:tasks"
        ]
    );
    let t = |n: &str, p: &str, d: &str| (n.to_string(), p.to_string(), d.to_string());
    for want in [
        t("n3", "uplink", "rx"),
        t("n3", "uplink", "tx"),
        t(&task_node, "uplink", "rx"),
        t(&task_node, "tasks", "tx"),
        t(&task_node, "tasks", "rx"),
    ] {
        assert!(seen.contains(&want), "{want:?} not in {seen:?}");
    }
    let _ = std::fs::remove_file(&file);
}
