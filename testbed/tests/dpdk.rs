//! End-to-end tests of `meshd --io dpdk`: a 3-node mesh whose every meshd reaches its uplink
//! and tasks interfaces through DPDK (a `net_af_packet` virtual device on each, EAL without
//! hugepages), checked with the clients of the other end-to-end tests: curl through every
//! node, ping, dig, a VIP across nodes.
//!
//! Needs root and DPDK's development files (`apt-get install libdpdk-dev`; ./test installs
//! them): without DPDK the test fails, saying so (it does not skip).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Mesh;
use ctl::model::PublishMode;
use testbed::plan::{self, NodeIo};
use testbed::{probe, sys, RunSpec};

const T: Duration = Duration::from_secs(3);

fn mesh(tag: &str) -> Option<Mesh> {
    common::mesh_io("d", "dpdk", tag, 0, NodeIo::Dpdk, || {
        assert!(
            common::dpdk_installed(),
            "DPDK is not installed (pkg-config finds no libdpdk): apt-get install libdpdk-dev pkg-config, or run ./test (it installs them)"
        );
        assert!(
            testbed::preflight::on_path("dig"),
            "dig is missing: run scripts/deps.sh (Debian's bind9-dnsutils)"
        );
    })
}

/// `dig +short @server name` in `ns`: the addresses answered.
fn dig(ns: &str, server: std::net::Ipv4Addr, name: &str) -> BTreeSet<String> {
    let at = format!("@{server}");
    let out = sys::exec_in(
        ns,
        "dig",
        &[&at, name, "A", "+short", "+time=2", "+tries=2"],
    )
    .unwrap();
    out.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// curl of each of `urls` from `ns`: the tasks that answered.
fn answered(ns: &str, urls: &[String]) -> BTreeSet<String> {
    urls.iter()
        .map(|url| {
            let r = probe::curl(ns, url, T, &[]).unwrap();
            r.whoami()
                .unwrap_or_else(|| panic!("curl {url}: {}", r.stderr))
                .hostname
        })
        .collect()
}

/// Both tasks of web.
fn both() -> BTreeSet<String> {
    BTreeSet::from(["web.1".to_string(), "web.2".to_string()])
}

#[test]
fn a_mesh_on_dpdk_ports_answers_curl_ping_and_dig_through_every_node() {
    let Some(mut m) = mesh("mesh") else { return };
    for n in ["n1", "n2", "n3"] {
        let log = std::fs::read_to_string(m.plan.node_log(m.node(n).unwrap().index)).unwrap();
        assert!(
            log.contains("DPDK device started") && log.contains("driver=net_af_packet"),
            "{n}'s meshd runs on DPDK ports:\n{log}"
        );
    }
    m.run(
        &RunSpec::new("web", 2)
            .publish("8080:80", PublishMode::Ingress)
            .unwrap()
            .network("appnet"),
    )
    .unwrap();
    m.run(&RunSpec::new("client", 1).network("appnet")).unwrap();

    // The published port on every node, one without a task included; both tasks answer.
    let urls: Vec<String> = ["n1", "n2", "n3", "n1", "n2", "n3"]
        .iter()
        .map(|n| format!("http://{}:8080/", m.node(n).unwrap().addr))
        .collect();
    assert_eq!(answered(&m.client_ns(), &urls), both());

    // A mebibyte (MTU-sized frames, VXLAN across nodes) through a node without a task,
    // byte for byte.
    let url = format!("http://{}:8080/bytes/1048576", m.node("n3").unwrap().addr);
    let file = std::env::temp_dir().join(format!("meshd-dpdk-{}.bin", std::process::id()));
    let path = file.display().to_string();
    let out = sys::exec_in_output(
        &m.client_ns(),
        "curl",
        &["-sS", "--max-time", "30", "-o", &path, &url],
    )
    .unwrap();
    let got = std::fs::read(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.code, Some(0), "curl {url}: {}", out.stderr);
    assert!(
        got == testbed::whoami::pattern(1 << 20),
        "curl {url}: {} bytes, not the mebibyte sent",
        got.len()
    );

    // Every node answers ping on its address.
    for node in ["n1", "n2", "n3"] {
        let ip = m.node(node).unwrap().addr.to_string();
        let (ok, out) = probe::ping(&m.client_ns(), &ip, 2).unwrap();
        assert!(ok, "ping {node} ({ip}): {out}");
    }

    // DNS from a task, then the VIP it names, across nodes.
    let client = m.tasks_of("client")[0].clone();
    let k = m
        .rec
        .networks
        .iter()
        .find(|n| n.name == "appnet")
        .unwrap()
        .k;
    let vip = m.vip("web", "appnet").unwrap();
    assert_eq!(
        dig(&client.ns, plan::gateway(k), "web"),
        BTreeSet::from([vip.to_string()])
    );
    let urls = vec![format!("http://{vip}/"); 4];
    assert_eq!(answered(&client.ns, &urls), both());
    let (ok, out) = probe::ping(&client.ns, &vip.to_string(), 2).unwrap();
    assert!(ok, "ping VIP {vip}: {out}");

    // Nothing lost below the pipeline.
    for node in ["n1", "n2", "n3"] {
        for c in [
            "port_rx_dropped",
            "port_rx_too_long",
            "port_tx_full",
            "port_tx_bad_len",
            "port_tx_link_down",
            "port_link_downs",
        ] {
            assert_eq!(common::counter(&m, node, c), 0, "{node} {c}");
        }
    }
}
