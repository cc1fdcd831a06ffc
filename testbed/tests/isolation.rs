//! End-to-end: a task speaks only as itself, and reaches other tasks only through meshd.
//!
//! Every task has its own VLAN on its node's tasks bridge (the testbed's `build_task`), so
//! meshd knows which task each frame came from; the tasks' ports do not forward to each other.
//! A task on another network, on the same node as its victim, tries what an attacker inside a
//! container would: reach the victim straight over the shared segment with an address of the
//! victim's network and the victim's MAC, and claim the victim's addresses with forged ARP
//! replies and frames. Neither works, and the victim keeps all of its traffic.
//!
//! Run as root from the workspace root: `sudo cargo test -p testbed --test isolation`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::Mesh;
use ctl::model::PublishMode;
use dataplane::testkit;
use testbed::bed::TaskRec;
use testbed::{plan, probe, sys, RunSpec};

const T: Duration = Duration::from_secs(3);
const SHORT: Duration = Duration::from_millis(1500);

fn mesh(tag: &str) -> Option<Mesh> {
    common::mesh("i", "isolation", tag, || {
        let missing = testbed::preflight::missing();
        assert!(missing.is_empty(), "missing programs: {missing:?}");
    })
}

fn mac_of(ns: &str) -> [u8; 6] {
    common::mac(&sys::exec_in(ns, "cat", &["/sys/class/net/eth0/address"]).unwrap())
}

/// web.1 (appnet, publishing 8080) and a client task on appnet, both on n1, and the attacker:
/// a task of network othernet on n1 too.
fn victim_and_attacker(m: &mut Mesh) -> (TaskRec, TaskRec, TaskRec) {
    m.run(
        &RunSpec::new("web", 1)
            .network("appnet")
            .publish("8080:80", PublishMode::Ingress)
            .unwrap()
            .on("n1"),
    )
    .unwrap();
    m.run(&RunSpec::new("client", 1).network("appnet").on("n1"))
        .unwrap();
    m.run(&RunSpec::new("evil", 1).network("othernet").on("n1"))
        .unwrap();
    (
        m.tasks_of("web")[0].clone(),
        m.tasks_of("client")[0].clone(),
        m.tasks_of("evil")[0].clone(),
    )
}

/// Who answers `url` from `ns`, n times: the hostnames that are not `want`'s, and failures.
fn others(ns: &str, url: &str, n: usize, want: &str) -> Vec<String> {
    (0..n)
        .filter_map(|_| {
            let c = probe::curl(ns, url, T, &[]).unwrap();
            match c.whoami() {
                Some(w) if w.hostname == want => None,
                Some(w) => Some(w.hostname),
                None => Some(c.summary()),
            }
        })
        .collect()
}

#[test]
fn a_task_cannot_reach_another_networks_task_over_the_shared_segment() {
    let Some(mut m) = mesh("l2") else { return };
    let (web, client, evil) = victim_and_attacker(&mut m);
    let web_ip = web.addr_on("appnet").unwrap();
    // web.1's own network reaches it, through meshd (the client is on another VLAN too).
    let c = probe::curl(&client.ns, &format!("http://{web_ip}/"), T, &[]).unwrap();
    assert_eq!(
        c.whoami().map(|w| w.hostname).as_deref(),
        Some(web.name.as_str()),
        "appnet's client to web.1: {}",
        c.stderr
    );
    // The attacker takes an address in appnet's subnet and web.1's MAC as its neighbour: on a
    // shared segment this reaches web.1 without meshd seeing a thing.
    let spare = Ipv4Addr::from(u32::from(web_ip) & 0xffff_ff00 | 250);
    let mac = mac_of(&web.ns)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    sys::ip_in(
        &evil.ns,
        &["addr", "add", &format!("{spare}/24"), "dev", "eth0"],
    )
    .unwrap();
    sys::ip_in(
        &evil.ns,
        &[
            "neigh",
            "replace",
            &web_ip.to_string(),
            "lladdr",
            &mac,
            "dev",
            "eth0",
        ],
    )
    .unwrap();
    let got = probe::tcp_open(&evil.ns, SocketAddr::from((web_ip, 80)), SHORT).unwrap();
    assert!(
        got.is_err(),
        "othernet's task reached web.1 at {web_ip} directly"
    );
    let (ok, _) = probe::ping(&evil.ns, &web_ip.to_string(), 2).unwrap();
    assert!(!ok, "othernet's task pinged web.1 directly");
    // Without the forged neighbour it asks by ARP: meshd does not answer for another network,
    // and web.1 does not hear it.
    sys::ip_in(&evil.ns, &["neigh", "flush", "dev", "eth0"]).unwrap();
    let got = probe::tcp_open(&evil.ns, SocketAddr::from((web_ip, 80)), SHORT).unwrap();
    assert!(got.is_err(), "othernet's task reached web.1 by ARP");
}

#[test]
fn a_task_claiming_another_tasks_addresses_takes_none_of_its_traffic() {
    let Some(mut m) = mesh("hijack") else { return };
    let (web, client, evil) = victim_and_attacker(&mut m);
    let web_addrs: Vec<Ipv4Addr> = ["ingress", "appnet"]
        .iter()
        .map(|n| web.addr_on(n).unwrap())
        .collect();
    let evil_mac = mac_of(&evil.ns);
    let meshd_mac = common::mac(&plan::tasks_bridge_mac(m.node("n1").unwrap().index));
    let before = common::dropped(&m, "n1", "wrong_vlan");
    // "web.1's addresses are at my MAC": ARP replies to the gateways, and frames from web.1's
    // addresses, as a burst and again while the checks below run.
    let mut frames = Vec::new();
    for (ip, gw) in web_addrs
        .iter()
        .zip([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 1, 1)])
    {
        frames.push(testkit::arp_reply(evil_mac, *ip, meshd_mac, gw));
        frames.push(testkit::udp_frame(
            evil_mac, meshd_mac, *ip, 80, gw, 53, b"mine",
        ));
    }
    let ns = evil.ns.clone();
    let spoof = std::thread::spawn(move || {
        common::send_raw(&ns, "eth0", &frames, 100, Duration::from_millis(20));
    });
    std::thread::sleep(Duration::from_millis(300));
    // web.1 keeps its published traffic on every node, and its VIP and address traffic.
    let mut lost = Vec::new();
    for node in ["n1", "n2", "n3"] {
        let url = format!("http://{}:8080/", m.node(node).unwrap().addr);
        lost.extend(others(&m.client_ns(), &url, 5, &web.name));
    }
    let vip = m.vip("web", "appnet").unwrap();
    lost.extend(others(&client.ns, &format!("http://{vip}/"), 5, &web.name));
    lost.extend(others(
        &client.ns,
        &format!("http://{}/", web_addrs[1]),
        5,
        &web.name,
    ));
    spoof.join().unwrap();
    assert_eq!(lost, Vec::<String>::new(), "requests web.1 did not answer");
    let refused = common::dropped(&m, "n1", "wrong_vlan") - before;
    // 400 sent; a few may be lost on the way (the veth's queue), none may pass.
    assert!(
        refused >= 300,
        "n1 refused only {refused} of 400 forged frames as wrong_vlan"
    );
    eprintln!(
        "isolation: {refused} of 400 forged frames refused; 25 of 25 requests answered by web.1"
    );
}
