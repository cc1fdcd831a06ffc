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

use common::Mesh;
use ctl::model::PublishMode;
use dataplane::buf::{PacketBuf, Pool, PortId};
use dataplane::port::afpacket::{AfPacketConfig, AfPacketPort};
use dataplane::port::{Burst, Port};
use dataplane::testkit;
use testbed::{plan, probe, sys, RunSpec};

fn mesh(tag: &str) -> Option<Mesh> {
    common::mesh("s", "spoof", tag, || {
        let missing = testbed::preflight::missing();
        assert!(missing.is_empty(), "missing programs: {missing:?}");
    })
}

fn mac(text: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    m
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
    sys::in_netns(&client, move || {
        let mut port = AfPacketPort::open(
            "eth0",
            &AfPacketConfig {
                port: PortId::Uplink,
                ..AfPacketConfig::default()
            },
        )
        .unwrap();
        let mut pool = Pool::new(64);
        for _ in 0..20 {
            let mut burst = Burst::new();
            burst.push(PacketBuf::from_frame(PortId::Uplink, &arp));
            burst.push(PacketBuf::from_frame(PortId::Uplink, &vx));
            port.tx_burst(&mut burst, &mut pool);
            port.flush();
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .unwrap();

    // n1 still sends n2's traffic to n2.
    assert_eq!(curls_through(&m, n1.addr, 10), Vec::<String>::new());
    let conflicts = common::counter(&m, "n1", "neighbor_conflicts") - conflicts_before;
    assert!(conflicts > 0, "n1 never saw the forgeries as conflicts");
    eprintln!(
        "spoof: {conflicts} forged claims not believed; 10 of 10 requests through n1 answered"
    );
}
