//! The pipeline tier: Swarm's routing-mesh scenarios (../shared/seeds/) replayed on an
//! in-memory mesh of dataplane nodes (`tests/mesh/`: meshd's own workers on in-memory ports), asserting what the hosts really
//! received: every reply was parsed from frames whose IPv4 and TCP/UDP checksums verified.

// The helpers below are test code too: a failed lookup is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod mesh;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use ctl::model::{
    Availability, ClientIpMode, Network, Protocol, PublishMode, PublishedPort, SchedulerKind,
    Service, ServiceNetwork, State,
};
use dataplane::buf::PortId;
use dataplane::port::fault::Faults;
use dataplane::stats::{DropReason, WorkerStats};
use dataplane::testkit::{self, tcp_flags::*};
use mesh::{task, three_nodes, CurlError, Mesh, SimConfig, SimError, TcpConnState};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 100);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);

fn mesh_with(state: State, cfg: SimConfig) -> Mesh {
    let mut m = Mesh::with_config(state, cfg).unwrap();
    m.add_client("client", CLIENT).unwrap();
    m
}

fn mesh(state: State) -> Mesh {
    mesh_with(state, SimConfig::default())
}

fn addr(m: &Mesh, node: &str) -> Ipv4Addr {
    m.node_addr(node).unwrap()
}

fn endpoint(node: &str) -> Ipv4Addr {
    match node {
        "n1" => Ipv4Addr::new(10, 0, 0, 2),
        "n2" => Ipv4Addr::new(10, 0, 0, 3),
        "n3" => Ipv4Addr::new(10, 0, 0, 4),
        _ => unreachable!(),
    }
}

fn client_mac(m: &Mesh) -> testkit::Mac {
    m.host("client").unwrap().ifaces()[0].mac
}

fn stats(m: &Mesh, node: &str) -> WorkerStats {
    m.stats(node).unwrap()
}

/// Nothing any host received failed a check, and no host saw a segment it could not place.
fn assert_healthy(m: &Mesh) {
    assert_eq!(
        m.bad_frames(),
        0,
        "a host received a frame with a bad checksum or length"
    );
    for h in m.hosts() {
        assert_eq!(
            h.bad_resets(),
            0,
            "{} got a RST with an unacceptable sequence number",
            h.name()
        );
        assert_eq!(
            h.unmatched(),
            0,
            "{} got a segment of no connection: {:?}",
            h.name(),
            h.tcp_log()
        );
    }
}

/// Every TCP segment `host` received came from `from`, and at least one did.
fn assert_all_segments_from(m: &Mesh, host: &str, since: usize, from: SocketAddrV4) {
    let log = &m.host(host).unwrap().tcp_log()[since..];
    assert!(!log.is_empty());
    for s in log {
        assert_eq!(SocketAddrV4::new(s.src, s.sport), from, "segment {s:?}");
    }
}

fn tcp_log_len(m: &Mesh, host: &str) -> usize {
    m.host(host).unwrap().tcp_log().len()
}

/// `three_nodes` with a third task, web.3, on n1.
fn three_tasks() -> State {
    let mut s = three_nodes();
    s.services[0].tasks.push(task(
        "web.3",
        "n1",
        &[
            ("ingress", Ipv4Addr::new(10, 0, 0, 13)),
            ("appnet", Ipv4Addr::new(10, 0, 1, 13)),
        ],
    ));
    s
}

fn remove_task(s: &mut State, name: &str) {
    for svc in &mut s.services {
        svc.tasks.retain(|t| t.name != name);
    }
}

// ---- seeds 000, 001, 003: the routing mesh -------------------------------------------------

#[test]
fn a_published_port_answers_on_every_node_even_one_without_a_task() {
    let mut m = mesh(three_nodes());
    for n in ["n1", "n2", "n3"] {
        let since = tcp_log_len(&m, "client");
        let r = m.curl("client", addr(&m, n), 8080).unwrap();
        assert!(r.task == "web.1" || r.task == "web.2", "{r:?}");
        // Every answer came from the node's address and published port.
        assert_all_segments_from(&m, "client", since, SocketAddrV4::new(addr(&m, n), 8080));
    }
    // n1 runs no task: its answer crossed the overlay.
    let n1 = stats(&m, "n1");
    assert_eq!(n1.tx_tasks, 0);
    assert!(n1.tx_uplink > 0 && n1.new_flows == 1);
    assert_eq!(m.host("client").unwrap().open_conns(), 0);
    assert_healthy(&m);
}

#[test]
fn two_connections_to_one_node_reach_two_different_tasks() {
    let mut m = mesh(three_nodes());
    let n1 = addr(&m, "n1");
    let a = m.curl("client", n1, 8080).unwrap();
    let b = m.curl("client", n1, 8080).unwrap();
    assert_ne!(a.task, b.task, "round-robin: {a:?} then {b:?}");
    assert_healthy(&m);
}

#[test]
fn n_times_k_connections_spread_exactly_k_per_task_on_every_node() {
    let mut m = mesh(three_tasks());
    let k = 4;
    for n in ["n1", "n2", "n3"] {
        let mut per_task: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..3 * k {
            let r = m.curl("client", addr(&m, n), 8080).unwrap();
            *per_task.entry(r.task).or_default() += 1;
        }
        let want: BTreeMap<String, usize> = ["web.1", "web.2", "web.3"]
            .iter()
            .map(|t| (t.to_string(), k))
            .collect();
        assert_eq!(per_task, want, "connections to {n}");
    }
    assert_healthy(&m);
}

#[test]
fn after_scaling_to_one_task_every_node_still_reaches_it() {
    let mut m = mesh(three_nodes());
    assert!(m.curl("client", addr(&m, "n1"), 8080).is_ok());
    let mut s = three_nodes();
    remove_task(&mut s, "web.2");
    m.set_state(s).unwrap();
    assert!(
        m.host("web.2").is_none(),
        "the removed task's container is gone"
    );
    for n in ["n1", "n2", "n3", "n1", "n2", "n3"] {
        let r = m.curl("client", addr(&m, n), 8080).unwrap();
        assert_eq!(r.task, "web.1", "via {n}");
    }
    assert_healthy(&m);
}

// ---- return traffic: masquerade (Swarm) and keep-client-IP (moby#25526) ---------------------

#[test]
fn masquerade_mode_tasks_see_the_ingress_nodes_endpoint_address() {
    let mut m = mesh(three_nodes());
    for n in ["n1", "n2", "n3"] {
        for _ in 0..2 {
            let r = m.curl("client", addr(&m, n), 8080).unwrap();
            assert_eq!(*r.remote_addr.ip(), endpoint(n), "via {n}: {r:?}");
            assert!(r.remote_addr.port() >= 1024);
        }
    }
    assert_healthy(&m);
}

#[test]
fn keep_client_ip_mode_tasks_see_the_client_and_replies_come_from_the_published_port() {
    let mut s = three_nodes();
    s.services[0].client_ip = ClientIpMode::Keep;
    let mut m = mesh(s);
    let mut sport = 50000;
    let mut seen = Vec::new();
    for n in ["n1", "n2", "n3"] {
        // Two connections per node: one task local to n2 and n3, one remote, for each.
        for _ in 0..2 {
            sport += 1;
            let since = tcp_log_len(&m, "client");
            let r = m
                .curl_from("client", Some(sport), addr(&m, n), 8080)
                .unwrap();
            assert_eq!(
                r.remote_addr,
                SocketAddrV4::new(CLIENT, sport),
                "via {n}: {r:?}"
            );
            assert_all_segments_from(&m, "client", since, SocketAddrV4::new(addr(&m, n), 8080));
            seen.push((n, r.task));
        }
    }
    assert!(
        seen.contains(&("n2", "web.1".to_string())) && seen.contains(&("n2", "web.2".to_string()))
    );
    assert!(
        seen.contains(&("n3", "web.1".to_string())) && seen.contains(&("n3", "web.2".to_string()))
    );
    // The task side saw the client's own address on the wire.
    let web1 = m.host("web.1").unwrap();
    assert!(web1.tcp_log().iter().all(|s| s.src == CLIENT));
    assert_healthy(&m);
}

// ---- publishing modes and removal ------------------------------------------------------------

#[test]
fn host_mode_publishing_is_answered_only_where_a_task_runs() {
    let mut s = three_nodes();
    s.services[0].ports[0].mode = PublishMode::Host;
    let mut m = mesh(s);
    assert_eq!(
        m.curl("client", addr(&m, "n1"), 8080),
        Err(CurlError::Refused)
    );
    let n1 = stats(&m, "n1");
    assert!(n1.to_host >= 1, "{n1:?}");
    assert_eq!(n1.new_flows, 0);
    let syn = m
        .node("n1")
        .unwrap()
        .host_frames()
        .iter()
        .find_map(|(p, f)| {
            let s = testkit::parse_ipv4_tcp(f)?;
            (*p == PortId::Uplink && s.dport == 8080 && s.has(SYN)).then_some(s)
        });
    assert!(syn.is_some(), "the SYN went to n1's host stack");
    for _ in 0..2 {
        assert_eq!(
            m.curl("client", addr(&m, "n2"), 8080).unwrap().task,
            "web.1"
        );
        assert_eq!(
            m.curl("client", addr(&m, "n3"), 8080).unwrap().task,
            "web.2"
        );
    }
    assert_healthy(&m);
}

#[test]
fn a_removed_published_port_refuses_connections() {
    // Seed 002: after `--publish-rm` curl says "Connection refused".
    let mut m = mesh(three_nodes());
    assert!(m.curl("client", addr(&m, "n1"), 8080).is_ok());
    let mut s = three_nodes();
    s.services[0].ports.clear();
    m.set_state(s).unwrap();
    for n in ["n1", "n2", "n3"] {
        assert_eq!(
            m.curl("client", addr(&m, n), 8080),
            Err(CurlError::Refused),
            "via {n}"
        );
        assert!(stats(&m, n).to_host >= 1);
    }
    assert_healthy(&m);
}

// ---- seed 004: service VIPs -----------------------------------------------------------------

/// `three_nodes` plus service `tool` on appnet (VIP 10.0.1.3) with task tool.1 on n1.
fn with_tool() -> State {
    let mut s = three_nodes();
    let mut tool = Service::new("tool");
    tool.networks.push(ServiceNetwork {
        network: "appnet".into(),
        vip: Some(Ipv4Addr::new(10, 0, 1, 3)),
    });
    tool.tasks.push(task(
        "tool.1",
        "n1",
        &[("appnet", Ipv4Addr::new(10, 0, 1, 20))],
    ));
    s.services.push(tool);
    s
}

#[test]
fn a_vip_balances_between_two_tasks_on_other_nodes_and_replies_come_from_the_vip() {
    let mut m = mesh(with_tool());
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let since = tcp_log_len(&m, "tool.1");
        let r = m.task_curl("tool.1", VIP, 80).unwrap();
        // No address translation of the source inside the overlay.
        assert_eq!(*r.remote_addr.ip(), Ipv4Addr::new(10, 0, 1, 20));
        assert_all_segments_from(&m, "tool.1", since, SocketAddrV4::new(VIP, 80));
        tasks.push(r.task);
    }
    tasks.sort();
    assert_eq!(tasks, ["web.1", "web.2"]);
    let n1 = stats(&m, "n1");
    assert_eq!(n1.new_flows, 2);
    assert!(n1.arp_replies >= 1, "n1 answered tool.1's ARP for the VIP");
    assert_healthy(&m);
}

// ---- seed 002: drain -------------------------------------------------------------------------

#[test]
fn drain_stops_new_connections_to_a_node_but_keeps_open_ones() {
    let mut m = mesh(three_nodes());
    let conn = m.open("client", addr(&m, "n1"), 8080).unwrap();
    assert_eq!(
        m.request(&conn).unwrap().task,
        "web.1",
        "round-robin starts with web.1 (on n2)"
    );
    let mut s = three_nodes();
    s.nodes[1].availability = Availability::Drain;
    m.set_state(s).unwrap();
    for n in ["n1", "n2", "n3", "n1", "n2", "n3"] {
        assert_eq!(
            m.curl("client", addr(&m, n), 8080).unwrap().task,
            "web.2",
            "new connection via {n}"
        );
    }
    assert_eq!(
        m.request(&conn).unwrap().task,
        "web.1",
        "the connection opened before the drain"
    );
    m.close(&conn).unwrap();
    assert_healthy(&m);
}

// ---- flows across changes (DESIGN.md, "Balancing") -------------------------------------------

#[test]
fn an_established_flow_keeps_its_task_while_other_tasks_come_and_go() {
    let mut m = mesh(three_nodes());
    let mut conns = Vec::new();
    for n in ["n1", "n2", "n3"] {
        for want in ["web.1", "web.2"] {
            let c = m.open("client", addr(&m, n), 8080).unwrap();
            assert_eq!(m.request(&c).unwrap().task, want);
            conns.push((c, want));
        }
    }
    fn extra(s: &mut State, name: &str, node: &str, last: u8) {
        s.services[0].tasks.push(task(
            name,
            node,
            &[
                ("ingress", Ipv4Addr::new(10, 0, 0, last)),
                ("appnet", Ipv4Addr::new(10, 0, 1, last)),
            ],
        ));
    }
    let mut s = three_nodes();
    type Change = Box<dyn Fn(&mut State)>;
    let steps: Vec<Change> = vec![
        Box::new(|s| extra(s, "web.3", "n1", 13)),
        Box::new(|s| extra(s, "web.4", "n2", 14)),
        Box::new(|s| remove_task(s, "web.3")),
        Box::new(|s| s.services[0].tasks[2].weight = 0),
        Box::new(|s| remove_task(s, "web.4")),
    ];
    for change in steps {
        change(&mut s);
        m.set_state(s.clone()).unwrap();
        // New connections meanwhile, so the rotation moves on.
        for n in ["n1", "n2", "n3"] {
            m.curl("client", addr(&m, n), 8080).unwrap();
        }
        for (c, want) in &conns {
            assert_eq!(
                m.request(c).unwrap().task,
                *want,
                "{c:?} after generation {}",
                m.generation()
            );
        }
    }
    for (c, _) in &conns {
        m.close(c).unwrap();
    }
    assert_healthy(&m);
}

#[test]
fn a_removed_tasks_tcp_connections_get_a_reset_not_silence() {
    let mut m = mesh(three_nodes());
    // web.1 through n1 (remote delivery over VXLAN) and through n2 (its own node).
    let via_n1 = m.open("client", addr(&m, "n1"), 8080).unwrap();
    let via_n2 = m.open("client", addr(&m, "n2"), 8080).unwrap();
    for c in [&via_n1, &via_n2] {
        assert_eq!(m.request(c).unwrap().task, "web.1");
    }
    let since = tcp_log_len(&m, "client");
    let mut s = three_nodes();
    remove_task(&mut s, "web.1");
    m.set_state(s).unwrap();
    m.run_until_idle().unwrap();
    for (c, n) in [(&via_n1, "n1"), (&via_n2, "n2")] {
        assert_eq!(m.conn_state(c), Some(TcpConnState::Reset), "via {n}");
        let rst = m.host("client").unwrap().tcp_log()[since..]
            .iter()
            .find(|s| s.has(RST) && s.dport == c.key.local.port())
            .cloned()
            .unwrap();
        assert_eq!(
            SocketAddrV4::new(rst.src, rst.sport),
            SocketAddrV4::new(addr(&m, n), 8080)
        );
        let st = stats(&m, n);
        assert_eq!((st.flows_ended, st.resets_sent), (1, 1), "{n}: {st:?}");
        assert_eq!(m.request(c), Err(CurlError::Reset));
    }
    // The mesh still serves, from the remaining task.
    assert_eq!(
        m.curl("client", addr(&m, "n1"), 8080).unwrap().task,
        "web.2"
    );
    assert_healthy(&m);
}

#[test]
fn a_removed_tasks_udp_flow_moves_to_a_remaining_task_on_the_next_datagram() {
    // moby#36878: a UDP client must not be black-holed after its task goes away.
    let mut s = three_nodes();
    s.services[0].ports.push(PublishedPort {
        protocol: Protocol::Udp,
        published: 5353,
        target: 53,
        mode: PublishMode::Ingress,
    });
    let mut m = mesh(s.clone());
    let n1 = addr(&m, "n1");
    let first = m
        .udp_from("client", Some(5000), n1, 5353, b"hello")
        .unwrap();
    assert_eq!(first.from, SocketAddrV4::new(n1, 5353));
    assert_eq!(first.payload, b"hello");
    let again = m
        .udp_from("client", Some(5000), n1, 5353, b"again")
        .unwrap();
    assert_eq!(again.task, first.task, "the same flow stays on its task");
    remove_task(&mut s, &first.task);
    m.set_state(s).unwrap();
    let moved = m
        .udp_from("client", Some(5000), n1, 5353, b"after")
        .unwrap();
    assert_ne!(moved.task, first.task);
    assert_eq!(moved.from, SocketAddrV4::new(n1, 5353));
    assert_eq!(moved.payload, b"after");
    let st = stats(&m, "n1");
    assert_eq!((st.flows_ended, st.resets_sent), (1, 0), "{st:?}");
    assert_healthy(&m);
}

// ---- isolation and bad input -------------------------------------------------------------------

#[test]
fn tasks_on_different_networks_cannot_reach_each_other() {
    let mut s = with_tool();
    s.networks.push(Network {
        subnet6: None,
        name: "othernet".into(),
        vni: 4098,
        subnet: "10.0.2.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 0, 2, 1),
        ingress: false,
        endpoints: BTreeMap::new(),
        mtu: None,
        encryption: None,
    });
    let mut db = Service::new("db");
    db.networks.push(ServiceNetwork {
        network: "othernet".into(),
        vip: Some(Ipv4Addr::new(10, 0, 2, 2)),
    });
    db.tasks.push(task(
        "db.1",
        "n2",
        &[("othernet", Ipv4Addr::new(10, 0, 2, 20))],
    ));
    s.services.push(db);
    let mut m = mesh(s);
    // The control: tool.1 reaches its own network's VIP.
    assert!(m.task_curl("tool.1", VIP, 80).is_ok());
    for target in [Ipv4Addr::new(10, 0, 2, 20), Ipv4Addr::new(10, 0, 2, 2)] {
        let before = stats(&m, "n1").dropped(DropReason::CrossNetwork);
        assert!(
            matches!(
                m.task_curl("tool.1", target, 80),
                Err(CurlError::Timeout(_))
            ),
            "to {target}"
        );
        assert!(stats(&m, "n1").dropped(DropReason::CrossNetwork) > before);
    }
    assert!(
        m.host("db.1").unwrap().tcp_log().is_empty(),
        "nothing reached db.1"
    );
    // Over the overlay too: a frame from n1's VTEP on appnet's VNI for db.1 on othernet.
    let n2 = m.node("n2").unwrap();
    let (n2_mac, n2_addr) = (n2.uplink_mac(), n2.addr());
    let inner = testkit::tcp_frame(
        [2; 6],
        [0; 6],
        Ipv4Addr::new(10, 0, 1, 20),
        40000,
        Ipv4Addr::new(10, 0, 2, 20),
        80,
        SYN,
        1,
        0,
        b"",
    );
    // From n1's address and MAC (a forger with another MAC is stopped before: spoofed_peer).
    let spoofed = testkit::vxlan_frame(
        m.node("n1").unwrap().uplink_mac(),
        n2_mac,
        addr(&m, "n1"),
        n2_addr,
        50000,
        4097,
        &inner,
    );
    let before = stats(&m, "n2").dropped(DropReason::CrossNetwork);
    m.send_raw("client", &spoofed).unwrap();
    m.run_until_idle().unwrap();
    assert_eq!(
        stats(&m, "n2").dropped(DropReason::CrossNetwork),
        before + 1
    );
    assert!(m.host("db.1").unwrap().tcp_log().is_empty());
    assert_healthy(&m);
}

#[test]
fn vxlan_from_an_unknown_vtep_is_dropped_and_counted() {
    let mut m = mesh(three_nodes());
    m.run_until_idle().unwrap();
    let n2 = m.node("n2").unwrap();
    let (n2_mac, n2_addr) = (n2.uplink_mac(), n2.addr());
    // A SYN for web.1 (on n2) as n1 would encapsulate it, but from the client's address.
    let inner = testkit::tcp_frame(
        [2; 6],
        [0; 6],
        Ipv4Addr::new(10, 0, 0, 2),
        1024,
        Ipv4Addr::new(10, 0, 0, 11),
        80,
        SYN,
        1,
        0,
        b"",
    );
    let frame = testkit::vxlan_frame(client_mac(&m), n2_mac, CLIENT, n2_addr, 50000, 4096, &inner);
    m.send_raw("client", &frame).unwrap();
    m.run_until_idle().unwrap();
    assert_eq!(stats(&m, "n2").dropped(DropReason::UnknownVtep), 1);
    assert!(
        m.host("web.1").unwrap().tcp_log().is_empty(),
        "nothing was decapsulated"
    );
    // The same frame from n1's VTEP (and n1's MAC) is delivered: only the source was wrong.
    let n1_mac = m.node("n1").unwrap().uplink_mac();
    let frame = testkit::vxlan_frame(n1_mac, n2_mac, addr(&m, "n1"), n2_addr, 50000, 4096, &inner);
    m.send_raw("client", &frame).unwrap();
    m.run_until_idle().unwrap();
    assert!(m
        .host("web.1")
        .unwrap()
        .tcp_log()
        .iter()
        .any(|s| s.has(SYN) && s.src == Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(stats(&m, "n2").dropped(DropReason::UnknownVtep), 1);
}

#[test]
fn malformed_frames_are_dropped_with_their_reasons_and_the_mesh_keeps_serving() {
    let mut m = mesh(three_nodes());
    assert!(m.curl("client", addr(&m, "n1"), 8080).is_ok());
    let n1 = addr(&m, "n1");
    let n1_mac = m.node("n1").unwrap().uplink_mac();
    // VXLAN from n2 comes from n2's MAC (from any other, n1 drops it as spoofed_peer).
    let n2_mac = m.node("n2").unwrap().uplink_mac();
    let cmac = client_mac(&m);
    let syn = testkit::tcp_frame(cmac, n1_mac, CLIENT, 41000, n1, 8080, SYN, 1, 0, b"");
    let udp = testkit::udp_frame(cmac, n1_mac, CLIENT, 41000, n1, 8080, b"x");
    let ip = testkit::ETH_LEN;
    let edit = |base: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = base.to_vec();
        f(&mut v);
        v
    };
    let n2 = addr(&m, "n2");
    let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
        (
            "truncated IPv4",
            syn[..ip + 12].to_vec(),
            DropReason::Truncated,
        ),
        (
            "bad IPv4 checksum",
            edit(&syn, &|f| f[ip + 10] ^= 0x55),
            DropReason::BadIpChecksum,
        ),
        (
            "bad IPv4 version",
            edit(&syn, &|f| {
                f[ip] = 0x65;
                testkit::refill_ipv4_checksum(f)
            }),
            DropReason::BadIpv4Header,
        ),
        (
            "IPv4 options",
            edit(&syn, &|f| {
                f.splice(ip + 20..ip + 20, [1u8, 1, 1, 0]);
                f[ip] = 0x46;
                let len = u16::from_be_bytes([f[ip + 2], f[ip + 3]]) + 4;
                f[ip + 2..ip + 4].copy_from_slice(&len.to_be_bytes());
                testkit::refill_ipv4_checksum(f);
            }),
            DropReason::Ipv4Options,
        ),
        (
            // Fragments are forwarded (see the pipeline's fragment tests); a malformed one is
            // not: more fragments follow, but this one's 20 bytes are not a multiple of 8.
            "fragment of a length not a multiple of 8",
            edit(&syn, &|f| {
                f[ip + 6] |= 0x20;
                testkit::refill_ipv4_checksum(f)
            }),
            DropReason::BadFragment,
        ),
        (
            "TTL 1",
            edit(&syn, &|f| {
                f[ip + 8] = 1;
                testkit::refill_ipv4_checksum(f)
            }),
            DropReason::TtlExpired,
        ),
        (
            "bad TCP checksum",
            edit(&syn, &|f| f[ip + 20 + 16] ^= 0x55),
            DropReason::BadL4Checksum,
        ),
        (
            "TCP data offset too small",
            edit(&syn, &|f| {
                f[ip + 20 + 12] = 0x30;
                testkit::refill_l4_checksum(f)
            }),
            DropReason::BadL4Header,
        ),
        (
            "UDP length wrong",
            edit(&udp, &|f| {
                f[ip + 20 + 5] += 1;
                testkit::refill_l4_checksum(f)
            }),
            DropReason::BadL4Header,
        ),
        (
            "unknown ethertype",
            edit(&syn, &|f| f[12..14].copy_from_slice(&[0x88, 0xb5])),
            DropReason::UnknownEthertype,
        ),
        (
            "GRE",
            testkit::ipv4_frame(cmac, n1_mac, CLIENT, n1, 47, &[0; 8]),
            DropReason::UnknownProtocol,
        ),
        (
            "short ARP",
            testkit::arp_request(cmac, CLIENT, n1)[..30].to_vec(),
            DropReason::BadArp,
        ),
        (
            "not for this node",
            testkit::tcp_frame(
                cmac,
                n1_mac,
                CLIENT,
                41000,
                Ipv4Addr::new(192, 168, 1, 99),
                8080,
                SYN,
                1,
                0,
                b"",
            ),
            DropReason::NotForUs,
        ),
        (
            "VXLAN without the I flag",
            edit(
                &testkit::vxlan_frame(n2_mac, n1_mac, n2, n1, 50000, 4096, &syn),
                &|f| f[testkit::VXLAN_FLAGS_AT] = 0,
            ),
            DropReason::BadVxlan,
        ),
        (
            "VXLAN of an unknown VNI",
            testkit::vxlan_frame(n2_mac, n1_mac, n2, n1, 50000, 777, &syn),
            DropReason::UnknownVni,
        ),
        (
            "VXLAN too short",
            testkit::vxlan_frame(n2_mac, n1_mac, n2, n1, 50000, 4096, &syn[..10]),
            DropReason::Truncated,
        ),
    ];
    for (what, frame, reason) in &cases {
        let before = stats(&m, "n1");
        m.send_raw("client", frame).unwrap();
        m.run_until_idle().unwrap();
        let after = stats(&m, "n1");
        assert_eq!(
            after.dropped(*reason),
            before.dropped(*reason) + 1,
            "{what}: {after:?}"
        );
        assert_eq!(
            after.total_drops(),
            before.total_drops() + 1,
            "{what}: only that drop"
        );
    }
    // A frame for another MAC, as a promiscuous NIC would pass it up.
    let other = testkit::tcp_frame(
        cmac,
        [2, 9, 9, 9, 9, 9],
        CLIENT,
        41000,
        n1,
        8080,
        SYN,
        1,
        0,
        b"",
    );
    let before = stats(&m, "n1").dropped(DropReason::NotOurMac);
    m.inject("n1", PortId::Uplink, &other).unwrap();
    m.run_until_idle().unwrap();
    assert_eq!(stats(&m, "n1").dropped(DropReason::NotOurMac), before + 1);
    // No frame opened a flow, and the mesh still answers on every node.
    assert_eq!(stats(&m, "n1").new_flows, 1);
    for n in ["n1", "n2", "n3"] {
        assert!(m.curl("client", addr(&m, n), 8080).is_ok(), "via {n}");
    }
    assert_healthy(&m);
}

// ---- schedulers ---------------------------------------------------------------------------------

#[test]
fn maglev_makes_every_ingress_node_pick_the_same_task_for_a_client_flow() {
    let mut s = three_tasks();
    s.services[0].scheduler = SchedulerKind::Maglev;
    let mut m = mesh(s);
    let mut used = BTreeMap::new();
    for sport in 50000..50012u16 {
        let picks: Vec<String> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| {
                m.curl_from("client", Some(sport), addr(&m, n), 8080)
                    .unwrap()
                    .task
            })
            .collect();
        assert!(
            picks.iter().all(|t| *t == picks[0]),
            "client port {sport}: {picks:?}"
        );
        *used.entry(picks[0].clone()).or_insert(0) += 1;
    }
    assert!(used.len() >= 2, "Maglev spreads flows: {used:?}");
    assert_healthy(&m);
}

#[test]
fn affinity_sends_each_client_to_one_task_through_every_node_and_worker_and_keeps_it() {
    let mut s = three_tasks();
    s.services[0].affinity = Some(ctl::model::Affinity::ClientIp { timeout_s: 600 });
    let cfg = SimConfig {
        workers: 2,
        ..SimConfig::default()
    };
    let clients: Vec<(String, Ipv4Addr)> = (0..10u8)
        .map(|i| (format!("c{i}"), Ipv4Addr::new(192, 168, 1, 150 + i)))
        .collect();
    let start = |s: &State| {
        let mut m = mesh_with(s.clone(), cfg.clone());
        for (c, ip) in &clients {
            m.add_client(c, *ip).unwrap();
        }
        m
    };
    // Three connections through each node, from client ports `from..from + 9`.
    let each = |m: &mut Mesh, c: &str, from: u16| -> Vec<String> {
        ["n1", "n2", "n3"]
            .iter()
            .flat_map(|n| [*n; 3])
            .zip(from..)
            .map(|(n, sport)| m.curl_from(c, Some(sport), addr(m, n), 8080).unwrap().task)
            .collect()
    };
    let mut m = start(&s);
    let mut first = BTreeMap::new();
    for (c, _) in &clients {
        let picks = each(&mut m, c, 50000);
        assert!(picks.iter().all(|t| *t == picks[0]), "{c}: {picks:?}");
        first.insert(c.clone(), picks[0].clone());
    }
    let used: std::collections::BTreeSet<_> = first.values().collect();
    assert!(used.len() >= 2, "clients spread over the tasks: {first:?}");
    // A task more. Where a mesh that never saw the clients would send each:
    s.services[0].tasks.push(task(
        "web.4",
        "n2",
        &[
            ("ingress", Ipv4Addr::new(10, 0, 0, 14)),
            ("appnet", Ipv4Addr::new(10, 0, 1, 14)),
        ],
    ));
    let mut fresh = start(&s);
    let hashed: BTreeMap<String, String> = clients
        .iter()
        .map(|(c, _)| (c.clone(), each(&mut fresh, c, 50000)[0].clone()))
        .collect();
    assert!(
        clients.iter().any(|(c, _)| hashed[c] != first[c]),
        "the new task takes some clients: {hashed:?}"
    );
    m.set_state(s.clone()).unwrap();
    // The closed connections' flows go (10 s), the clients' memory stays (600 s).
    m.advance(11_000);
    m.run_until_idle().unwrap();
    for (c, _) in &clients {
        // The same client ports land on the same workers, which saw the client: its task.
        let picks = each(&mut m, c, 50000);
        assert!(
            picks.iter().all(|t| *t == first[c]),
            "{c}: {picks:?} (was {})",
            first[c]
        );
        // Other ports may land on a worker that never saw it: the new hash's task, no other.
        let picks = each(&mut m, c, 60000);
        assert!(
            picks.iter().all(|t| *t == first[c] || *t == hashed[c]),
            "{c}: {picks:?} (was {}, hashed {})",
            first[c],
            hashed[c]
        );
    }
    assert_eq!(m.total_stats().affinity_full, 0);
    assert_healthy(&m);
}

#[test]
fn wrr_gives_the_heavier_task_its_share_and_lc_fills_the_least_loaded() {
    // wrr, weights 3, 1, 1 (web.1, web.2, web.3): through one node, 3 of every 5 to web.1.
    let mut s = three_tasks();
    s.services[0].scheduler = SchedulerKind::Wrr;
    s.services[0].tasks[0].weight = 3;
    let mut m = mesh(s.clone());
    let mut count = BTreeMap::new();
    for _ in 0..15 {
        let t = m.curl("client", addr(&m, "n1"), 8080).unwrap().task;
        *count.entry(t).or_insert(0) += 1;
    }
    assert_eq!(count["web.1"], 9, "{count:?}");
    assert_eq!((count["web.2"], count["web.3"]), (3, 3), "{count:?}");
    // lc: connections held open; a closed one's task takes the next.
    s.services[0].scheduler = SchedulerKind::Lc;
    let mut m = mesh(s.clone());
    let n1 = addr(&m, "n1");
    let conns: Vec<_> = (0..6)
        .map(|_| m.open("client", n1, 8080).unwrap())
        .collect();
    let mut on = BTreeMap::new();
    for c in &conns {
        let t = m.request(c).unwrap().task;
        on.entry(t).or_insert_with(Vec::new).push(c.clone());
    }
    assert!(
        on.values().all(|v| v.len() == 2),
        "weights do not count for lc: {on:?}"
    );
    let web2 = on["web.2"].clone();
    for c in &web2 {
        m.close(c).unwrap();
    }
    m.run_until_idle().unwrap();
    // The closed connections' flows end after the closing timeout: advance past it.
    m.advance(11_000);
    m.run_until_idle().unwrap();
    let c = m.open("client", n1, 8080).unwrap();
    assert_eq!(m.request(&c).unwrap().task, "web.2");
    assert_healthy(&m);
}

// ---- several workers per node -------------------------------------------------------------------

#[test]
fn two_workers_per_node_hand_frames_to_the_flow_owner() {
    let cfg = SimConfig {
        workers: 2,
        ..SimConfig::default()
    };
    // Masquerade: every node answers, both tasks are reached through each.
    let mut m = mesh_with(with_tool(), cfg.clone());
    for n in ["n1", "n2", "n3"] {
        let mut tasks: Vec<String> = (0..4)
            .map(|_| m.curl("client", addr(&m, n), 8080).unwrap().task)
            .collect();
        tasks.sort();
        tasks.dedup();
        assert_eq!(tasks, ["web.1", "web.2"], "via {n}");
    }
    // A VIP from a task.
    let mut tasks: Vec<String> = (0..4)
        .map(|_| m.task_curl("tool.1", VIP, 80).unwrap().task)
        .collect();
    tasks.sort();
    tasks.dedup();
    assert_eq!(tasks, ["web.1", "web.2"]);
    // Removing a task resets its connections, from whichever worker owns them.
    let conns: Vec<_> = (0..4)
        .map(|_| m.open("client", addr(&m, "n1"), 8080).unwrap())
        .collect();
    let mut on_web1 = Vec::new();
    for c in &conns {
        if m.request(c).unwrap().task == "web.1" {
            on_web1.push(c.clone());
        }
    }
    assert!(!on_web1.is_empty());
    let mut s = with_tool();
    remove_task(&mut s, "web.1");
    m.set_state(s).unwrap();
    m.run_until_idle().unwrap();
    for c in &conns {
        let want = if on_web1.contains(c) {
            TcpConnState::Reset
        } else {
            TcpConnState::Established
        };
        assert_eq!(m.conn_state(c), Some(want));
    }
    for n in m.nodes() {
        assert!(
            n.handoffs() > 0,
            "{} moved frames between workers",
            n.name()
        );
        assert!(n.worker_stats(0).unwrap().rx > 0 && n.worker_stats(1).unwrap().rx > 0);
    }
    assert_healthy(&m);

    // Keep-client-IP: replies find the owner on the ingress node and on the task's node.
    let mut s = three_nodes();
    s.services[0].client_ip = ClientIpMode::Keep;
    let mut m = mesh_with(s, cfg);
    let mut sport = 52000;
    for n in ["n1", "n2", "n3"] {
        for _ in 0..4 {
            sport += 1;
            let r = m
                .curl_from("client", Some(sport), addr(&m, n), 8080)
                .unwrap();
            assert_eq!(r.remote_addr, SocketAddrV4::new(CLIENT, sport), "via {n}");
        }
    }
    assert_healthy(&m);
}

#[test]
fn tasks_on_different_nodes_ping_each_other_over_the_overlay() {
    let mut m = mesh(with_tool());
    for target in [Ipv4Addr::new(10, 0, 1, 11), Ipv4Addr::new(10, 0, 1, 12)] {
        assert_eq!(m.ping("tool.1", target).unwrap(), target);
    }
    assert_healthy(&m);
}

/// The harness itself: retransmission, refusals, determinism.
mod harness {
    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 100);

    fn mesh() -> Mesh {
        let mut m = Mesh::new(three_nodes()).unwrap();
        m.add_client("client", CLIENT).unwrap();
        m
    }

    #[test]
    fn lost_syns_are_sent_again_after_the_retransmission_timeout() {
        let mut m = mesh();
        let n1 = m.node_addr("n1").unwrap();
        m.lose_next("client", 2).unwrap();
        let r = m.curl("client", n1, 8080).unwrap();
        assert_eq!(r.task, "web.1");
        assert_eq!(m.host("client").unwrap().lost_on_purpose(), 2);
        assert!(m.now_ms() >= 2 * m.config().rto_ms);
        assert_eq!(
            m.stats("n1").unwrap().new_flows,
            1,
            "the retransmitted SYN is the same flow"
        );
    }

    #[test]
    fn unanswered_syns_time_out() {
        let mut m = mesh();
        let n1 = m.node_addr("n1").unwrap();
        m.lose_next("client", 100).unwrap();
        assert_eq!(m.curl("client", n1, 8080), Err(CurlError::Timeout(4)));
    }

    #[test]
    fn a_lost_answer_is_sent_again_when_the_request_is() {
        let mut m = mesh();
        let n1 = m.node_addr("n1").unwrap();
        let c = m.open("client", n1, 8080).unwrap();
        m.lose_next("web.1", 1).unwrap();
        assert_eq!(m.request(&c).unwrap().task, "web.1");
        assert_eq!(m.host("web.1").unwrap().lost_on_purpose(), 1);
        m.close(&c).unwrap();
        assert_eq!(m.host("web.1").unwrap().open_conns(), 0);
        assert_eq!(m.host("client").unwrap().open_conns(), 0);
        assert_eq!(m.bad_frames(), 0);
    }

    #[test]
    fn hosts_refuse_closed_ports_and_reset_unknown_segments() {
        let mut m = mesh();
        // A task connecting to another task's closed port, on another node.
        let web2 = m.host("web.2").unwrap().addr_on("appnet").unwrap();
        assert_eq!(m.curl("web.1", web2, 9999), Err(CurlError::Refused));
        assert_eq!(m.host("web.2").unwrap().unmatched(), 1);
    }

    #[test]
    fn a_state_the_table_refuses_changes_nothing() {
        let mut m = mesh();
        let mut bad = three_nodes();
        bad.services[0].tasks[1].addresses[0].addr = Ipv4Addr::new(10, 0, 0, 11);
        assert!(matches!(m.set_state(bad), Err(SimError::Refused(_))));
        assert_eq!(m.generation(), 1);
        assert!(m.host("web.2").is_some());
        let mut fewer = three_nodes();
        fewer.nodes.pop();
        assert_eq!(m.set_state(fewer), Err(SimError::NodesChanged));
        assert_eq!(
            m.add_client("web.1", Ipv4Addr::new(192, 168, 1, 101)),
            Err(SimError::DuplicateHost("web.1".into()))
        );
    }

    #[test]
    fn runs_are_deterministic() {
        let run = || {
            let mut m = mesh();
            let n = ["n1", "n2", "n3"].map(|x| m.node_addr(x).unwrap());
            let tasks: Vec<String> = n
                .iter()
                .flat_map(|a| [*a, *a])
                .map(|a| m.curl("client", a, 8080).unwrap().task)
                .collect();
            (tasks, m.steps(), m.now_ms(), m.total_stats())
        };
        assert_eq!(run(), run());
    }
}

/// The underlay drops, duplicates and reorders frames (meshd's fault injector on every worker's
/// uplink, two workers per node): every request through every node still reaches a task and
/// gets its answer (the hosts' retransmissions cover the losses), and no host receives a frame
/// it cannot parse or was not meant to get.
#[test]
fn requests_get_through_a_lossy_duplicating_reordering_underlay() {
    let cfg = SimConfig {
        workers: 2,
        uplink_faults: Some(Faults {
            drop_per_mille: 100,
            duplicate_per_mille: 50,
            reorder_per_mille: 100,
            corrupt_per_mille: 0,
            seed: 7,
        }),
        tries: 10,
        ..SimConfig::default()
    };
    let mut m = Mesh::with_config(three_nodes(), cfg).unwrap();
    m.add_client("client", CLIENT).unwrap();
    for i in 0..30 {
        let ip = m.node_addr(["n1", "n2", "n3"][i % 3]).unwrap();
        let r = m.curl("client", ip, 8080).unwrap();
        assert!(r.task == "web.1" || r.task == "web.2", "{r:?}");
    }
    let f = m.fault_counts();
    assert!(
        f.dropped > 0 && f.duplicated > 0 && f.reordered > 0,
        "the faults happened: {f:?}"
    );
    assert_eq!(m.bad_frames(), 0);
    for h in m.hosts() {
        assert_eq!(h.misdelivered(), 0, "{} got frames for others", h.name());
    }
}
