//! The host stack in the in-memory mesh (`tests/mesh/`): the embedded DNS resolver asked by
//! tasks through their gateway, health checks that take a failing task out of rotation on every
//! node and put it back, and the node's own answers (ping, RST) for the mesh's addresses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod mesh;

use std::net::Ipv4Addr;

use ctl::model::{EndpointMode, Health, HealthCheck, HealthTest, Service, ServiceNetwork, State};
use dataplane::host::dns::{self, TYPE_A, TYPE_AAAA};
use mesh::{task, three_nodes, CurlError, Mesh, TcpConnState};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 100);
const APP_GW: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const BACK_GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);

/// `three_nodes` (web: VIP 10.0.1.2, web.1 on n2, web.2 on n3) plus `tool` on appnet (tool.1
/// on n1), `api` in dnsrr mode on appnet (api.1, api.2 on n1 and n2), and `db` alone on
/// `backnet` (db.1 on n1).
fn state() -> State {
    let mut s = three_nodes();
    let mut back = s.networks[1].clone();
    back.name = "backnet".into();
    back.vni = 4098;
    back.subnet = "10.0.2.0/24".parse().unwrap();
    back.gateway = BACK_GW;
    s.networks.push(back);
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
    let mut api = Service::new("api");
    api.endpoint_mode = EndpointMode::Dnsrr;
    api.networks.push(ServiceNetwork {
        network: "appnet".into(),
        vip: None,
    });
    api.tasks.push(task(
        "api.1",
        "n1",
        &[("appnet", Ipv4Addr::new(10, 0, 1, 31))],
    ));
    api.tasks.push(task(
        "api.2",
        "n2",
        &[("appnet", Ipv4Addr::new(10, 0, 1, 32))],
    ));
    let mut db = Service::new("db");
    db.networks.push(ServiceNetwork {
        network: "backnet".into(),
        vip: Some(Ipv4Addr::new(10, 0, 2, 2)),
    });
    db.tasks.push(task(
        "db.1",
        "n1",
        &[("backnet", Ipv4Addr::new(10, 0, 2, 10))],
    ));
    s.services.extend([tool, api, db]);
    s
}

fn mesh(s: State) -> Mesh {
    let mut m = Mesh::new(s).unwrap();
    m.add_client("client", CLIENT).unwrap();
    m
}

fn sorted(p: &dns::Parsed) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = p.a.iter().map(|(a, _)| *a).collect();
    v.sort();
    v
}

const NOERROR: u16 = 0;
const FORMERR: u16 = 1;
const NXDOMAIN: u16 = 3;

// ---- DNS ---------------------------------------------------------------------------------

#[test]
fn a_task_resolves_services_of_its_networks_through_its_gateway() {
    let mut m = mesh(state());
    let web = m.dns("tool.1", APP_GW, "web", TYPE_A).unwrap();
    assert_eq!(
        (web.rcode, web.aa, sorted(&web)),
        (NOERROR, true, vec![WEB_VIP]),
        "vip mode: the VIP"
    );
    assert_eq!(web.a[0].1, 600);
    let tasks = m.dns("tool.1", APP_GW, "tasks.web", TYPE_A).unwrap();
    assert_eq!(
        sorted(&tasks),
        [Ipv4Addr::new(10, 0, 1, 11), Ipv4Addr::new(10, 0, 1, 12)]
    );
    let api = m.dns("tool.1", APP_GW, "api", TYPE_A).unwrap();
    assert_eq!(
        sorted(&api),
        [Ipv4Addr::new(10, 0, 1, 31), Ipv4Addr::new(10, 0, 1, 32)],
        "dnsrr: the tasks"
    );
    let aaaa = m.dns("tool.1", APP_GW, "web", TYPE_AAAA).unwrap();
    assert_eq!(
        (aaaa.rcode, aaaa.a.len(), aaaa.aaaa.len(), aaaa.other),
        (NOERROR, 0, 0, 0),
        "IPv4 only: an empty NOERROR"
    );
    for name in ["db", "tasks.db", "nosuch", "web.example.com"] {
        assert_eq!(
            m.dns("tool.1", APP_GW, name, TYPE_A).unwrap().rcode,
            NXDOMAIN,
            "{name}"
        );
    }
    // db.1 is on backnet only: it sees db, not web.
    assert_eq!(
        sorted(&m.dns("db.1", BACK_GW, "db", TYPE_A).unwrap()),
        [Ipv4Addr::new(10, 0, 2, 2)]
    );
    assert_eq!(
        m.dns("db.1", BACK_GW, "web", TYPE_A).unwrap().rcode,
        NXDOMAIN
    );
    // The same from tasks on other nodes (each node answers for its own tasks).
    assert_eq!(
        sorted(&m.dns("web.1", APP_GW, "tool", TYPE_A).unwrap()),
        [Ipv4Addr::new(10, 0, 1, 3)]
    );
    assert_eq!(
        sorted(&m.dns("api.2", APP_GW, "tasks.api", TYPE_A).unwrap()).len(),
        2
    );
    let n1 = m.node("n1").unwrap().host().stats.clone();
    assert!(n1.dns_queries >= 9 && n1.dns_nxdomain >= 4, "{n1:?}");
}

/// appnet dual-stack (fd00:1::/64): AAAA names the twins of what A names, over UDP and TCP,
/// from every node; backnet (IPv4 only) still answers AAAA with no record.
#[test]
fn on_a_dual_stack_network_aaaa_names_the_ipv6_twins() {
    let mut s = state();
    let p: ctl::model::Ipv6Net = "fd00:1::/64".parse().unwrap();
    s.networks[1].subnet6 = Some(p);
    let twin = |last: u8| p.embed(Ipv4Addr::new(10, 0, 1, last));
    let mut m = mesh(s);
    let web = m.dns("tool.1", APP_GW, "web", TYPE_AAAA).unwrap();
    assert_eq!(
        (web.rcode, web.aa, web.a.len(), web.aaaa.clone()),
        (NOERROR, true, 0, vec![(twin(2), 600)]),
        "vip mode: the VIP's twin"
    );
    assert_eq!(
        twin(2),
        "fd00:1::a00:102".parse::<std::net::Ipv6Addr>().unwrap()
    );
    let mut tasks: Vec<_> = m
        .dns("tool.1", APP_GW, "tasks.web", TYPE_AAAA)
        .unwrap()
        .aaaa;
    tasks.sort();
    assert_eq!(tasks, [(twin(11), 0), (twin(12), 0)]);
    let api = m.dns_tcp("web.1", APP_GW, "api", TYPE_AAAA).unwrap();
    let mut got: Vec<_> = api.aaaa.iter().map(|(a, _)| *a).collect();
    got.sort();
    assert_eq!(got, [twin(31), twin(32)], "dnsrr over TCP, from n2");
    assert_eq!(
        m.dns("tool.1", APP_GW, "web.2", TYPE_AAAA).unwrap().aaaa,
        [(twin(12), 0)]
    );
    let db = m.dns("db.1", BACK_GW, "db", TYPE_AAAA).unwrap();
    assert_eq!(
        (db.rcode, db.a.len(), db.aaaa.len()),
        (NOERROR, 0, 0),
        "backnet is IPv4 only"
    );
    // A is unchanged.
    assert_eq!(
        sorted(&m.dns("tool.1", APP_GW, "web", TYPE_A).unwrap()),
        [WEB_VIP]
    );
}

#[test]
fn answers_follow_the_table_at_once() {
    let mut m = mesh(state());
    assert_eq!(
        m.dns("tool.1", APP_GW, "tasks.api", TYPE_A)
            .unwrap()
            .a
            .len(),
        2
    );
    let mut s = state();
    s.services[2].tasks.pop();
    m.set_state(s).unwrap();
    let p = m.dns("tool.1", APP_GW, "tasks.api", TYPE_A).unwrap();
    assert_eq!(
        sorted(&p),
        [Ipv4Addr::new(10, 0, 1, 31)],
        "the scaled-down task is gone"
    );
    let mut s = state();
    s.services.retain(|x| x.name != "api");
    m.set_state(s).unwrap();
    assert_eq!(
        m.dns("tool.1", APP_GW, "api", TYPE_A).unwrap().rcode,
        NXDOMAIN
    );
}

#[test]
fn malformed_queries_get_formerr_or_are_dropped_and_counted() {
    let mut m = mesh(state());
    assert_eq!(
        m.dns_raw("tool.1", APP_GW, &[1, 2, 3]).unwrap(),
        None,
        "no header: dropped"
    );
    let mut response = dns::build_query(5, "web", TYPE_A, None);
    response[2] |= 0x80;
    assert_eq!(
        m.dns_raw("tool.1", APP_GW, &response).unwrap(),
        None,
        "a response: dropped"
    );
    let mut two = dns::build_query(6, "web", TYPE_A, None);
    two[5] = 2;
    let a = m.dns_raw("tool.1", APP_GW, &two).unwrap().unwrap();
    assert_eq!(
        dns::parse_answer(&a).map(|p| (p.id, p.rcode)),
        Some((6, FORMERR))
    );
    let stats = m.node("n1").unwrap().host().stats.clone();
    assert_eq!(stats.dns_formerr, 1);
    // Each dropped message was sent `tries` times.
    assert_eq!(stats.dns_dropped, 2 * u64::from(m.config().tries));
    // The resolver still answers.
    assert_eq!(
        sorted(&m.dns("tool.1", APP_GW, "web", TYPE_A).unwrap()),
        [WEB_VIP]
    );
}

#[test]
fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let mut s = state();
    for i in 3..=40u8 {
        s.services[2].tasks.push(task(
            &format!("api.{i}"),
            "n3",
            &[("appnet", Ipv4Addr::new(10, 0, 1, 100 + i))],
        ));
    }
    let mut m = mesh(s);
    let q = dns::build_query(9, "tasks.api", TYPE_A, None);
    let a = m.dns_raw("tool.1", APP_GW, &q).unwrap().unwrap();
    assert!(a.len() <= 512);
    let p = dns::parse_answer(&a).unwrap();
    assert!(
        p.tc && p.a.is_empty(),
        "40 records do not fit in 512 bytes: {p:?}"
    );
    let p = m.dns_tcp("tool.1", APP_GW, "tasks.api", TYPE_A).unwrap();
    assert_eq!((p.rcode, p.tc, p.a.len()), (NOERROR, false, 40));
    // With EDNS, 1232 bytes hold them.
    assert_eq!(
        m.dns("tool.1", APP_GW, "tasks.api", TYPE_A)
            .unwrap()
            .a
            .len(),
        40
    );
    let stats = m.node("n1").unwrap().host().stats.clone();
    assert_eq!((stats.dns_truncated, stats.dns_tcp_queries), (1, 1));
}

#[test]
fn the_gateway_and_vips_answer_ping_and_refuse_other_ports() {
    let mut m = mesh(state());
    assert_eq!(m.ping("tool.1", WEB_VIP).unwrap(), WEB_VIP);
    assert_eq!(m.ping("tool.1", APP_GW).unwrap(), APP_GW);
    // A port of the gateway nobody listens on: refused at once (smoltcp's RST).
    assert_eq!(m.curl("tool.1", APP_GW, 22), Err(CurlError::Refused));
    // The node's own address, from outside: ping, and a RST for an unpublished port.
    let n2 = m.node_addr("n2").unwrap();
    assert_eq!(m.ping("client", n2).unwrap(), n2);
    assert_eq!(m.curl("client", n2, 9999), Err(CurlError::Refused));
    assert!(m.node("n2").unwrap().host_resets() >= 1);
}

// ---- health checks -------------------------------------------------------------------------

const INTERVAL: u32 = 1000;
const RETRIES: u32 = 3;

fn checked(test: HealthTest, timeout_ms: u32) -> State {
    let mut s = three_nodes();
    s.services[0].health = Some(HealthCheck {
        test,
        path: "/healthz".into(),
        status: Some(200),
        interval_ms: INTERVAL,
        timeout_ms,
        retries: RETRIES,
        ..HealthCheck::default()
    });
    s
}

fn health_everywhere(m: &Mesh, task: &str, h: Health) -> bool {
    ["n1", "n2", "n3"]
        .iter()
        .all(|n| m.health(n, task) == Some(h))
}

/// A checked mesh whose tasks every node holds healthy.
fn healthy_mesh(test: HealthTest, timeout_ms: u32) -> Mesh {
    let mut m = mesh(checked(test, timeout_ms));
    assert_eq!(m.health("n1", "web.1"), Some(Health::Starting));
    let at = m.run_until(2000, |m| {
        health_everywhere(m, "web.1", Health::Healthy)
            && health_everywhere(m, "web.2", Health::Healthy)
    });
    assert!(
        at.is_some(),
        "the first checks pass and every node hears of them"
    );
    assert!(
        at.unwrap() < 100,
        "healthy within {} ms of the start",
        at.unwrap()
    );
    m
}

#[test]
fn a_task_that_stops_serving_leaves_every_node_within_interval_times_retries_and_comes_back() {
    let mut m = healthy_mesh(HealthTest::Tcp, 500);
    let n1 = m.node_addr("n1").unwrap();
    // A connection to each task through n1 (round robin: web.1 then web.2).
    let to1 = m.open("client", n1, 8080).unwrap();
    assert_eq!(m.request(&to1).unwrap().task, "web.1");
    let to2 = m.open("client", n1, 8080).unwrap();
    assert_eq!(m.request(&to2).unwrap().task, "web.2");

    m.set_serving("web.1", false).unwrap();
    let stopped = m.now_ms();
    let bound = u64::from(INTERVAL * RETRIES);
    let at = m
        .run_until(bound + 500, |m| {
            health_everywhere(m, "web.1", Health::Unhealthy)
        })
        .expect("unhealthy everywhere");
    println!(
        "web.1 unhealthy on every node {} ms after its server stopped (bound {bound} ms)",
        at - stopped
    );
    assert!(at - stopped <= bound + 50, "{} ms", at - stopped);
    m.run_until_idle().unwrap();
    // Its flow ended as a removed task's does (a RST to the client); the other one goes on.
    assert_eq!(m.conn_state(&to1), Some(TcpConnState::Reset));
    assert_eq!(m.request(&to2).unwrap().task, "web.2");
    // No new connection reaches it, through any node; DNS leaves it out.
    for n in ["n1", "n2", "n3", "n1", "n2", "n3"] {
        let a = m.node_addr(n).unwrap();
        assert_eq!(m.curl("client", a, 8080).unwrap().task, "web.2", "via {n}");
    }
    let p = m.dns("web.2", APP_GW, "tasks.web", TYPE_A).unwrap();
    assert_eq!(sorted(&p), [Ipv4Addr::new(10, 0, 1, 12)]);
    let d = m
        .node("n2")
        .unwrap()
        .host()
        .detail(m.node("n2").unwrap().table().tasks[0].uid)
        .cloned()
        .unwrap();
    assert_eq!(
        (d.health, d.error.as_str(), d.node.as_str()),
        (Health::Unhealthy, "connection refused", "n2")
    );
    let far = m
        .node("n1")
        .unwrap()
        .host()
        .detail(m.node("n1").unwrap().table().tasks[0].uid)
        .cloned()
        .unwrap();
    assert_eq!(far.error, "connection refused", "n1 heard why from n2");

    // It passes again: back in rotation everywhere, within an interval.
    m.set_serving("web.1", true).unwrap();
    let back = m.now_ms();
    let at = m
        .run_until(u64::from(INTERVAL) + 500, |m| {
            health_everywhere(m, "web.1", Health::Healthy)
        })
        .expect("healthy again");
    assert!(at - back <= u64::from(INTERVAL) + 50, "{} ms", at - back);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(m.curl("client", n1, 8080).unwrap().task);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    m.close(&to2).unwrap();
}

#[test]
fn a_silent_task_fails_on_timeouts() {
    let mut m = healthy_mesh(HealthTest::Tcp, 300);
    m.set_silent("web.2", true).unwrap();
    let stopped = m.now_ms();
    let bound = u64::from(INTERVAL * RETRIES) + 300;
    let at = m
        .run_until(bound + 500, |m| {
            health_everywhere(m, "web.2", Health::Unhealthy)
        })
        .expect("unhealthy");
    assert!(at - stopped <= bound + 50, "{} ms", at - stopped);
    let uid = m.node("n3").unwrap().table().tasks[1].uid;
    let d = m.node("n3").unwrap().host().detail(uid).cloned().unwrap();
    assert_eq!(d.error, "no answer within 300 ms");
    let n2 = m.node_addr("n2").unwrap();
    for _ in 0..3 {
        assert_eq!(m.curl("client", n2, 8080).unwrap().task, "web.1");
    }
}

/// Over an IPv6 underlay (every VTEP fd00:100::1x): the nodes find each other's VTEPs by
/// Neighbor Discovery, tell each other their tasks' health over IPv6, and carry clients
/// through every node to both tasks; a task that stops serving leaves every node.
#[test]
fn over_an_ipv6_underlay_nodes_find_each_other_gossip_and_carry_clients() {
    let mut s = checked(HealthTest::Tcp, 500);
    for (n, last) in s.nodes.iter_mut().zip(0x11..) {
        n.vtep = Some(std::net::Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, last).into());
    }
    ctl::validate(&s).unwrap();
    let mut m = mesh(s);
    let at = m.run_until(2000, |m| {
        health_everywhere(m, "web.1", Health::Healthy)
            && health_everywhere(m, "web.2", Health::Healthy)
    });
    assert!(at.is_some(), "every node hears of the first checks");
    for node in ["n1", "n2", "n3"] {
        let addr = m.node_addr(node).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2 {
            seen.insert(m.curl("client", addr, 8080).unwrap().task);
        }
        assert_eq!(seen.len(), 2, "through {node}: {seen:?}");
    }
    m.set_serving("web.1", false).unwrap();
    assert!(m
        .run_until(u64::from(INTERVAL * RETRIES) + 1000, |m| {
            health_everywhere(m, "web.1", Health::Unhealthy)
        })
        .is_some());
    // n2 and n3 check their tasks and tell the others; n1 runs none and only hears.
    for node in ["n1", "n2", "n3"] {
        let h = m.node(node).unwrap().host().stats.clone();
        assert!(h.gossip_received >= 2, "{node}: {h:?}");
        assert!(h.gossip_sent >= 2 || node == "n1", "{node}: {h:?}");
        assert_eq!(
            (h.gossip_rejected, h.gossip_forged),
            (0, 0),
            "{node}: {h:?}"
        );
    }
}

#[test]
fn http_checks_want_their_status() {
    let mut m = healthy_mesh(HealthTest::Http, 500);
    m.set_http_status("web.1", 500).unwrap();
    let at = m.run_until(u64::from(INTERVAL * RETRIES) + 500, |m| {
        health_everywhere(m, "web.1", Health::Unhealthy)
    });
    assert!(at.is_some());
    let uid = m.node("n2").unwrap().table().tasks[0].uid;
    assert_eq!(
        m.node("n2").unwrap().host().detail(uid).unwrap().error,
        "HTTP status 500, expected 200"
    );
    m.set_http_status("web.1", 200).unwrap();
    assert!(m
        .run_until(u64::from(INTERVAL) + 500, |m| health_everywhere(
            m,
            "web.1",
            Health::Healthy
        ))
        .is_some());
}

#[test]
fn checks_leave_the_tasks_clean() {
    // Probes end with a RST the task accepts: no task sees a segment it cannot place.
    let mut m = healthy_mesh(HealthTest::Http, 500);
    m.run_for(5000);
    for t in ["web.1", "web.2"] {
        let h = m.host(t).unwrap();
        assert_eq!(
            (h.bad_resets(), h.unmatched(), h.bad_frames()),
            (0, 0, 0),
            "{t}"
        );
        assert_eq!(h.open_conns(), 0, "{t}");
    }
    let n2 = m.node("n2").unwrap().host().stats.clone();
    assert!(n2.checks_passed >= 5 && n2.checks_failed == 0, "{n2:?}");
    assert!(
        n2.gossip_sent >= 2 * 5,
        "n2 told n1 and n3 every second: {n2:?}"
    );
    assert_eq!(m.node("n1").unwrap().host().stats.gossip_rejected, 0);
}

#[test]
fn removing_the_check_puts_every_task_back() {
    let mut m = healthy_mesh(HealthTest::Tcp, 500);
    m.set_serving("web.1", false).unwrap();
    assert!(m
        .run_until(5000, |m| health_everywhere(m, "web.1", Health::Unhealthy))
        .is_some());
    m.set_state(three_nodes()).unwrap();
    assert!(health_everywhere(&m, "web.1", Health::Healthy) || m.health("n1", "web.1").is_none());
    m.set_serving("web.1", true).unwrap();
    let n3 = m.node_addr("n3").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(m.curl("client", n3, 8080).unwrap().task);
    }
    assert_eq!(seen.len(), 2);
}

/// An upstream resolver that knows `example.com` and answers at once.
struct FakeUpstream {
    answers: Vec<Vec<u8>>,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl dataplane::host::Upstream for FakeUpstream {
    fn send(&mut self, msg: &[u8]) -> bool {
        let Ok(q) = dns::parse_query(msg) else {
            return false;
        };
        self.asked.lock().unwrap().push(q.name.clone());
        let (rcode, answers) = if q.name == "example.com" {
            (
                dns::Rcode::NoError,
                vec![dns::Answer {
                    addr: Ipv4Addr::new(93, 184, 216, 34).into(),
                    ttl: 300,
                }],
            )
        } else {
            (dns::Rcode::NxDomain, vec![])
        };
        let spec = dns::AnswerSpec {
            rcode,
            aa: true,
            ra: true,
            limit: 512,
        };
        self.answers.push(dns::build_answer(&q, &answers, spec));
        true
    }
    fn recv(&mut self) -> Option<Vec<u8>> {
        self.answers.pop()
    }
}

#[test]
fn names_outside_the_mesh_go_upstream_when_one_is_configured() {
    let mut m = mesh(state());
    assert_eq!(
        m.dns("tool.1", APP_GW, "example.com", TYPE_A)
            .unwrap()
            .rcode,
        NXDOMAIN,
        "no upstream: NXDOMAIN"
    );
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    m.set_dns_upstream(
        "n1",
        Box::new(FakeUpstream {
            answers: Vec::new(),
            asked: asked.clone(),
        }),
    )
    .unwrap();
    let p = m.dns("tool.1", APP_GW, "example.com", TYPE_A).unwrap();
    assert_eq!(
        (p.rcode, p.ra, sorted(&p)),
        (NOERROR, true, vec![Ipv4Addr::new(93, 184, 216, 34)])
    );
    assert_eq!(
        m.dns("tool.1", APP_GW, "nosuch.example", TYPE_A)
            .unwrap()
            .rcode,
        NXDOMAIN
    );
    // The mesh's own names never leave the node.
    assert_eq!(
        sorted(&m.dns("tool.1", APP_GW, "web", TYPE_A).unwrap()),
        [WEB_VIP]
    );
    assert_eq!(*asked.lock().unwrap(), ["example.com", "nosuch.example"]);
    let st = m.node("n1").unwrap().host().stats.clone();
    assert_eq!((st.dns_forwarded, st.dns_upstream_answers), (2, 2));
}

/// One task cannot starve the resolver's TCP side: it opens twenty connections to its gateway's
/// port 53 and leaves them idle; all but its share (two) are reset as they open, the others
/// close once idle, and meanwhile another task on the same network and node (api.1 next to
/// tool.1 on n1) gets its answers over TCP.
#[test]
fn one_task_holding_dns_tcp_connections_cannot_starve_the_others() {
    let mut m = mesh(state());
    let mut held = Vec::new();
    for _ in 0..20 {
        if let Ok(c) = m.open("tool.1", APP_GW, 53) {
            held.push(c);
        }
    }
    m.run_until_idle().unwrap();
    let open = held
        .iter()
        .filter(|c| m.conn_state(c) == Some(TcpConnState::Established))
        .count();
    assert!(
        open <= 2,
        "{open} idle resolver connections still open for one task"
    );
    let stats = m.node("n1").unwrap().host().stats.clone();
    assert!(stats.dns_tcp_refused >= 18, "{}", stats.dns_tcp_refused);
    let p = m.dns_tcp("api.1", APP_GW, "tasks.api", TYPE_A).unwrap();
    assert_eq!(p.rcode, NOERROR);
    // Idle for longer than the resolver keeps a quiet connection: closed by the resolver.
    m.advance(6_000);
    m.run_until_idle().unwrap();
    m.advance(6_000);
    m.run_until_idle().unwrap();
    for c in &held {
        assert_ne!(
            m.conn_state(c),
            Some(TcpConnState::Established),
            "an idle resolver connection stayed open"
        );
    }
}
