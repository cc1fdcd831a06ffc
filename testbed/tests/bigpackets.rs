//! End-to-end tests of big payloads across the overlay: the overlay MTU (1450 on the testbed's
//! 1500-byte underlay), TCP MSS clamping and ICMP "fragmentation needed", with curl moving a
//! mebibyte each way through every path, UDP datagrams of 1,400 to 8,000 bytes (IPv4
//! fragments: forwarded, and fragmented again for the overlay) echoed intact, `ping -s 4000`
//! of every node and of a VIP, and `tracepath` finding the overlay's MTU; with tasks at the
//! overlay's MTU and left at 1500.
//!
//! Run as root from the workspace root: `sudo cargo test -p testbed --test bigpackets`.
//! Each test builds its own mesh (`meshd-b<tag><pid>-*`), removed by a guard even on failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;

use common::{mebibyte_each_way, Mesh, Scratch};
use ctl::model::PublishMode;
use testbed::{sys, RunSpec};

fn mesh(tag: &str) -> Option<Mesh> {
    common::mesh("b", "bigpackets", tag, || {
        let missing = testbed::preflight::missing();
        assert!(missing.is_empty(), "missing programs: {missing:?}");
    })
}

/// The UDP sizes each path must carry: one that fits, one a byte past a 1500-byte link (two
/// fragments), and two of several fragments.
const UDP_SIZES: [usize; 4] = [1400, 1473, 4000, 8000];

/// From namespace `ns`: UDP datagrams of each of `UDP_SIZES` to `to` (IPv4 or IPv6), each
/// echoed whole and intact.
fn udp_sizes_echoed(ns: &str, to: SocketAddr, what: &str) {
    common::udp_echoed(ns, to, &UDP_SIZES, what);
}

/// From namespace `ns`: `ping -s 4000` of `to` is answered (the request and the reply both
/// travel as fragments).
fn big_ping(ns: &str, to: &str, what: &str) {
    let out = sys::exec_in_output(ns, "ping", &["-s", "4000", "-c", "2", "-W", "2", to]).unwrap();
    assert_eq!(
        out.code,
        Some(0),
        "{what}: ping -s 4000 {to}: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("4008 bytes from"),
        "{what}: {}",
        out.stdout
    );
}

/// Runs one task of `name` on n2, published at `port` in Swarm's ingress mode, the client's
/// address kept (`--client-ip keep`) if `keep`.
fn publish_on_n2(m: &mut Mesh, name: &str, port: &str, keep: bool) {
    let mut spec = RunSpec::new(name, 1)
        .publish(port, PublishMode::Ingress)
        .unwrap()
        .on("n2");
    if keep {
        spec = spec.keep_client_ip();
    }
    m.run(&spec).unwrap();
}

/// Published ports (Swarm's masquerade and `--client-ip keep`) through every node, with the
/// task on n2: local to n2, remote from n1 and n3.
fn published_paths(m: &mut Mesh, s: &Scratch) {
    for (name, port, keep) in [
        ("web", "8080:80", false),
        ("kept", "8081:80", true),
        ("uecho", "5353:80/udp", false),
        ("ukept", "5354:80/udp", true),
    ] {
        publish_on_n2(m, name, port, keep);
    }
    let client = m.client_ns();
    for node in ["n1", "n2", "n3"] {
        let a = m.node(node).unwrap().addr;
        udp_sizes_echoed(
            &client,
            SocketAddr::from((a, 5353)),
            &format!("{node}:5353/udp"),
        );
        udp_sizes_echoed(
            &client,
            SocketAddr::from((a, 5354)),
            &format!("{node}:5354/udp (client IP kept)"),
        );
        big_ping(&client, &a.to_string(), &format!("node {node}"));
        mebibyte_each_way(
            s,
            &client,
            &format!("http://{a}:8080"),
            &format!("{node}:8080"),
        );
        mebibyte_each_way(
            s,
            &client,
            &format!("http://{a}:8081"),
            &format!("{node}:8081 (client IP kept)"),
        );
    }
}

/// A VIP from client tasks on n1 (the web task is remote) and n2 (it is local).
fn vip_paths(m: &mut Mesh, s: &Scratch) {
    m.run(&RunSpec::new("api", 1).network("appnet").on("n2"))
        .unwrap();
    m.run(&RunSpec::new("c1", 1).network("appnet").on("n1"))
        .unwrap();
    m.run(&RunSpec::new("c2", 1).network("appnet").on("n2"))
        .unwrap();
    let vip = m.vip("api", "appnet").unwrap();
    for (c, what) in [("c1", "VIP, remote task"), ("c2", "VIP, local task")] {
        let ns = m.tasks_of(c)[0].ns.clone();
        mebibyte_each_way(s, &ns, &format!("http://{vip}"), what);
        udp_sizes_echoed(&ns, SocketAddr::from((vip, 80)), what);
        big_ping(&ns, &vip.to_string(), what);
    }
}

/// Published ports over IPv6 (the node's `--addr6`) through every node, the tasks on n2: a
/// mebibyte each way by `curl -6` (its segments, 20 bytes shorter as IPv4, fit the overlay by
/// the MSS meshd clamps; the replies, 20 bytes longer as IPv6, fit the uplink), through a
/// service that keeps the client's IP too (an IPv6 client is masqueraded all the same), and UDP
/// datagrams of every size echoed: those over the client's link go as IPv6 pieces, reach the
/// task as IPv4 fragments (fragmented again for the overlay), and the task's fragmented echo
/// comes back as IPv6 pieces; and `ping -6 -s 4000` of each node's address.
#[test]
fn a_mebibyte_crosses_published_ports_over_ipv6_through_every_node() {
    let Some(mut m) = mesh("v6") else { return };
    let s = Scratch::new("v6");
    for (name, port, keep) in [
        ("web", "8080:80", false),
        ("kept", "8081:80", true),
        ("uecho", "5353:80/udp", false),
    ] {
        publish_on_n2(&mut m, name, port, keep);
    }
    let client = m.client_ns();
    for node in ["n1", "n2", "n3"] {
        let a6 = m.node(node).unwrap().addr6();
        for port in [8080, 8081] {
            mebibyte_each_way(
                &s,
                &client,
                &format!("http://[{a6}]:{port}"),
                &format!("[{a6}]:{port} ({node})"),
            );
        }
        let to = SocketAddr::from((a6, 5353));
        udp_sizes_echoed(&client, to, &format!("{to} ({node})"));
        // The node's own address: the echo request's pieces put together by the host side,
        // the reply sent in pieces.
        big_ping(&client, &a6.to_string(), &format!("{a6} ({node})"));
    }
}

#[test]
fn a_mebibyte_crosses_every_path_with_tasks_at_the_overlay_mtu() {
    let Some(mut m) = mesh("mtu") else { return };
    let s = Scratch::new("mtu");
    published_paths(&mut m, &s);
    vip_paths(&mut m, &s);
    // The tasks have the overlay's MTU, as Swarm's containers do.
    let t = &m.tasks_of("web")[0];
    let mtu = sys::exec_in(&t.ns, "cat", &["/sys/class/net/eth0/mtu"]).unwrap();
    assert_eq!(mtu.trim(), "1450");
}

#[test]
fn tasks_left_at_mtu_1500_still_move_a_mebibyte_and_learn_the_path_mtu() {
    let Some(mut m) = mesh("1500") else { return };
    m.set_task_mtu(1500).unwrap();
    let s = Scratch::new("1500");
    // TCP works because meshd clamps the MSS of every SYN and SYN-ACK it translates.
    published_paths(&mut m, &s);
    vip_paths(&mut m, &s);
    // A task's own too-big packet with DF (no flow translates it: task to task directly) gets
    // ICMP "fragmentation needed" with the overlay's MTU from its gateway (RFC 1191).
    let c1 = m.tasks_of("c1")[0].ns.clone();
    let api = m.tasks_of("api")[0].addr_on("appnet").unwrap().to_string();
    let out = sys::exec_in_output(
        &c1,
        "ping",
        &["-M", "do", "-s", "1472", "-c", "2", "-W", "1", &api],
    )
    .unwrap();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("mtu = 1450") || text.contains("mtu=1450"),
        "ping: {text}"
    );
    // And the largest packet that fits passes.
    let out = sys::exec_in_output(
        &c1,
        "ping",
        &["-M", "do", "-s", "1422", "-c", "1", "-W", "2", &api],
    )
    .unwrap();
    assert_eq!(
        out.code,
        Some(0),
        "ping -s 1422: {}{}",
        out.stdout,
        out.stderr
    );
    // tracepath from a task at 1500 to a task on another node finds the overlay's MTU: meshd
    // answers its 1500-byte probes with "fragmentation needed".
    let out = sys::exec_in_output(&c1, "tracepath", &["-n", "-m", "4", &api]).unwrap();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("pmtu 1450"), "tracepath: {text}");
}

/// Behind the client namespace, as routers: `<prefix>mid`, reached over a link of `mtu`
/// bytes (both ends), and `<prefix>far` behind it over a 1500-byte link, with the outside
/// client `192.168.78.2` and `fd00:78::2`, which believes its path is 1500 bytes wide (its
/// own link, the MSS it sends). Returns the far namespace. The bed's `down` removes both
/// (they carry its prefix).
fn narrow_path(m: &Mesh, mtu: u16) -> String {
    let prefix = m.plan.prefix();
    let (client, mid, far) = (
        m.client_ns(),
        format!("{prefix}mid"),
        format!("{prefix}far"),
    );
    let mtu = mtu.to_string();
    sys::netns_add(&mid).unwrap();
    sys::netns_add(&far).unwrap();
    for (ns, dev, peer_ns, peer, mtu) in [
        (&client, "narrow", &mid, "north", mtu.as_str()),
        (&mid, "wide", &far, "eth0", "1500"),
    ] {
        sys::ip_in(
            ns,
            &[
                "link", "add", dev, "mtu", mtu, "type", "veth", "peer", "name", peer, "mtu", mtu,
                "netns", peer_ns,
            ],
        )
        .unwrap();
    }
    for (ns, dev, a, a6) in [
        (&client, "narrow", "192.168.77.1/24", "fd00:77::1/64"),
        (&mid, "north", "192.168.77.2/24", "fd00:77::2/64"),
        (&mid, "wide", "192.168.78.1/24", "fd00:78::1/64"),
        (&far, "eth0", "192.168.78.2/24", "fd00:78::2/64"),
    ] {
        // IPv6 on this link only (`netns_add` turns it off), usable at once (no DAD).
        let on = |k: &str| format!("net.ipv6.conf.{dev}.{k}");
        let sysctls = [
            format!("{}=0", on("accept_dad")),
            format!("{}=0", on("router_solicitations")),
            format!("{}=0", on("disable_ipv6")),
        ];
        let mut args = vec!["-qw"];
        args.extend(sysctls.iter().map(String::as_str));
        sys::exec_in(ns, "sysctl", &args).unwrap();
        sys::ip_in(ns, &["addr", "add", a, "dev", dev]).unwrap();
        sys::ip_in(ns, &["-6", "addr", "add", a6, "dev", dev, "nodad"]).unwrap();
        sys::ip_in(ns, &["link", "set", dev, "up"]).unwrap();
    }
    for ns in [&client, &mid] {
        sys::exec_in(
            ns,
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )
        .unwrap();
    }
    for (ns, to, via) in [
        (&client, "192.168.78.0/24", "192.168.77.2"),
        (&client, "fd00:78::/64", "fd00:77::2"),
        (&mid, "default", "192.168.77.1"),
        (&mid, "default", "fd00:77::1"),
        (&far, "default", "192.168.78.1"),
        (&far, "default", "fd00:78::1"),
    ] {
        let family = if via.contains(':') { "-6" } else { "-4" };
        sys::ip_in(ns, &[family, "route", "add", to, "via", via]).unwrap();
    }
    far
}

/// A client whose path has a link narrower than the overlay past the node (1280 bytes, two
/// routers away: its own link and its MSS say 1500) downloads and uploads a mebibyte through
/// a published port, masqueraded and with its address kept, on the task's node and across
/// the overlay, over IPv4 and IPv6: the router's "fragmentation needed" (ICMPv6 "packet too
/// big") about the task's full-sized segments reaches the task, about the segment as the
/// task sent it (meshd counts `icmp_to_task`), and the task sends smaller ones. Before, the
/// error went to the node's host stack (ICMPv6: dropped), which had no such connection, and
/// the download hung: RFC 1191/8201 path MTU discovery black-holed, as behind a load balancer
/// that does not pass ICMP to its backends.
#[test]
fn a_client_behind_a_narrower_link_learns_the_path_mtu_through_a_published_port() {
    let Some(mut m) = mesh("pmtu") else { return };
    let s = Scratch::new("pmtu");
    for (name, port, keep) in [("web", "8080:80", false), ("kept", "8081:80", true)] {
        publish_on_n2(&mut m, name, port, keep);
    }
    let far = narrow_path(&m, 1280);
    for node in ["n1", "n2"] {
        let n = m.node(node).unwrap();
        let (a, a6) = (n.addr.to_string(), format!("[{}]", n.addr6()));
        for addr in [a, a6] {
            let before = common::counter(&m, node, "icmp_to_task");
            for (port, what) in [(8080, "masqueraded"), (8081, "client IP kept")] {
                mebibyte_each_way(
                    &s,
                    &far,
                    &format!("http://{addr}:{port}"),
                    &format!("{addr}:{port} on {node} ({what}) through a 1280-byte link"),
                );
            }
            let after = common::counter(&m, node, "icmp_to_task");
            assert!(
                after > before,
                "{addr} ({node}): icmp_to_task {before} -> {after}"
            );
        }
    }
}
