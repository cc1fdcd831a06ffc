//! End-to-end: a host on the underlay cannot redirect a node's tunnel traffic by forging its
//! peer. From the client's namespace (any machine on the underlay), forged ARP replies and
//! forged VXLAN frames claim that node n2's address is at the client's MAC; node n1 must keep
//! sending n2's traffic to n2: requests through n1 to the task on n2 keep working, and n1 counts
//! the forgeries (`neighbor_conflicts`) instead of believing them.
//!
//! Run as root from the workspace root: `sudo cargo test -p testbed --test spoof`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{mac, Mesh};
use ctl::model::PublishMode;
use dataplane::testkit;
use testbed::{plan, probe, sys, RunSpec};

fn mesh(tag: &str) -> Option<Mesh> {
    common::mesh("s", "spoof", tag, || {
        let missing = testbed::preflight::missing();
        assert!(missing.is_empty(), "missing programs: {missing:?}");
    })
}

fn curls_through(m: &Mesh, node: Ipv4Addr, n: usize) -> Vec<String> {
    let url = format!("http://{node}:8080/");
    (0..n)
        .filter_map(|_| {
            let c = probe::curl(&m.client_ns(), &url, Duration::from_secs(3), &[]).unwrap();
            (!(c.ok() && c.whoami().is_some())).then(|| c.summary())
        })
        .collect()
}

#[test]
fn forged_arp_and_vxlan_from_the_underlay_do_not_redirect_a_peers_traffic() {
    let Some(mut m) = mesh("peer") else { return };
    m.run(
        &RunSpec::new("web", 1)
            .publish("8080:80", PublishMode::Ingress)
            .unwrap()
            .on("n2"),
    )
    .unwrap();
    let (n1, n2) = (m.node("n1").unwrap().clone(), m.node("n2").unwrap().clone());
    // n1 knows n2 from real traffic.
    assert_eq!(curls_through(&m, n1.addr, 3), Vec::<String>::new());
    let conflicts_before = common::counter(&m, "n1", "neighbor_conflicts");

    let client = m.client_ns();
    let me = mac(&sys::exec_in(&client, "cat", &["/sys/class/net/eth0/address"]).unwrap());
    let n1_mac = mac(&plan::uplink_mac(n1.index));
    // What the attacker sends: "n2 is at my MAC" as ARP replies to n1, and VXLAN frames with
    // n2's address as their source (a packet for a task address inside).
    let arp = testkit::arp_reply(me, n2.addr, n1_mac, n1.addr);
    let inner = testkit::tcp_frame(
        [2; 6],
        [2; 6],
        Ipv4Addr::new(10, 0, 0, 3),
        40000,
        Ipv4Addr::new(10, 0, 0, 250),
        80,
        testkit::tcp_flags::ACK,
        1,
        1,
        b"",
    );
    let vx = testkit::vxlan_frame(
        me,
        n1_mac,
        n2.addr,
        n1.addr,
        50000,
        ctl::INGRESS_VNI,
        &inner,
    );
    common::send_raw(&client, "eth0", &[arp, vx], 20, Duration::from_millis(10));

    // n1 still sends n2's traffic to n2.
    assert_eq!(curls_through(&m, n1.addr, 10), Vec::<String>::new());
    let conflicts = common::counter(&m, "n1", "neighbor_conflicts") - conflicts_before;
    assert!(conflicts > 0, "n1 never saw the forgeries as conflicts");
    eprintln!(
        "spoof: {conflicts} forged claims not believed; 10 of 10 requests through n1 answered"
    );
}

/// The health of `task` of `service` as node `node` sees it (`meshctl service ps`).
fn health_on(m: &Mesh, node: &str, service: &str, task: &str) -> Option<ctl::model::Health> {
    use ctl::proto::{Command, Query};
    let sock = m.node(node).unwrap().socket.clone();
    let r = ctl::client::request(
        &sock,
        &Command::Query(Query::ServicePs {
            name: service.into(),
        }),
        Duration::from_secs(3),
    )
    .unwrap();
    let rows: Vec<ctl::model::PsTask> =
        serde_json::from_value(r.into_result().unwrap().result).unwrap();
    rows.iter()
        .find(|r| r.task.name == task)
        .and_then(|r| r.status.as_ref()?.health)
}

#[test]
fn forged_health_gossip_does_not_take_a_healthy_task_out_of_rotation() {
    use ctl::model::Health;
    let Some(mut m) = mesh("gossip") else { return };
    m.run(
        &RunSpec::new("web", 1)
            .publish("8080:80", PublishMode::Ingress)
            .unwrap()
            .on("n2")
            .with_args(&["--health", "tcp", "--health-interval", "500ms"]),
    )
    .unwrap();
    let (n1, n2) = (m.node("n1").unwrap().clone(), m.node("n2").unwrap().clone());
    let t0 = std::time::Instant::now();
    while health_on(&m, "n1", "web", "web.1") != Some(Health::Healthy) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "web.1 never healthy on n1"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // web.1's uid, as every node computes it from the state.
    let state: dataplane::control::Persisted =
        serde_json::from_slice(&std::fs::read(m.bed.plan.state_file(n1.index)).unwrap()).unwrap();
    let table = dataplane::balance::table::ServiceTable::build(&state.state, "n1", 1).unwrap();
    let uid = table.tasks[table.task_by_name("web.1").unwrap() as usize].uid;
    // "web.1 is unhealthy", from n2's address and n2's own MAC (the MAC forged too: what the
    // MAC check alone cannot stop), unsigned.
    let forged = dataplane::host::gossip::encode(
        "n2",
        &[dataplane::host::gossip::Entry {
            uid,
            health: Health::Unhealthy,
            streak: 9,
            age_ms: 0,
            error: "\u{1b}[31mforged\u{1b}[0m".into(),
        }],
    )
    .remove(0);
    let f = testkit::udp_frame(
        mac(&plan::uplink_mac(n2.index)),
        mac(&plan::uplink_mac(n1.index)),
        n2.addr,
        ctl::HEALTH_GOSSIP_PORT,
        n1.addr,
        ctl::HEALTH_GOSSIP_PORT,
        &forged,
    );
    let before = common::host_counter(&m, "n1", "gossip_forged");
    let client = m.client_ns();
    common::send_raw(&client, "eth0", &[f], 10, Duration::from_millis(100));
    let forged_seen = common::host_counter(&m, "n1", "gossip_forged") - before;
    assert!(forged_seen > 0, "n1 never saw the forged gossip");
    assert_eq!(health_on(&m, "n1", "web", "web.1"), Some(Health::Healthy));
    // The switch learned n2's MAC on the client's port for a moment: let n2 speak again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(curls_through(&m, n1.addr, 5), Vec::<String>::new());
    eprintln!(
        "spoof: {forged_seen} forged gossip datagrams refused; web.1 healthy, 5 of 5 answered"
    );
}
