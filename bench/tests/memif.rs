//! meshd on DPDK memif against pktgen's memif generator, in this process: the published-port
//! path out over VXLAN and the decapsulation path to a task, frame for frame; the DPDK rows of
//! `stats`; and no mbuf leaked on either side (the pools' counts back where they started).
//!
//! Needs root, DPDK (libdpdk-dev; ./test installs it) and meshd built with DPDK next to this
//! test (`cargo build --release --workspace --features bench/dpdk`, as ./test does). Under CI
//! not being root fails the test (it does not skip).
#![cfg(feature = "dpdk")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bench::memif::Memif;
use bench::mesh::memif::{frames, meshd_stats, sockets, start_meshd, PathKind};
use bench::mesh::topo::Programs;

/// meshd's drops so far, by reason.
fn drops(meshd: &bench::mesh::memif::Running) -> serde_json::Value {
    meshd_stats(meshd).unwrap()["total"]["drops"].clone()
}

/// The sum of a drops-by-reason map.
fn total(drops: &serde_json::Value) -> u64 {
    drops.as_object().map_or(0, |m| {
        m.values().filter_map(serde_json::Value::as_u64).sum()
    })
}

fn dpdk_rows(stats: &serde_json::Value) -> (u64, Vec<serde_json::Value>) {
    let d = &stats["dpdk"];
    assert!(d.is_object(), "no dpdk section in meshd's stats: {stats}");
    (
        d["mbufs_in_use"].as_u64().unwrap(),
        d["devices"].as_array().unwrap().clone(),
    )
}

#[test]
fn meshd_forwards_memif_frames_both_ways_and_leaks_no_mbuf() {
    if !testbed::sys::require_root("memif") {
        return;
    }
    let p = Programs::find().expect("meshd next to this test: build the workspace first");
    let dir = PathBuf::from(format!("/run/meshd-test-memif-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stop = AtomicBool::new(false);
    // The generator on core 0, meshd's worker on core 1 (or 0 on a one-core machine).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = Memif::open(&sockets(&dir), 0, 256).expect("the memif generator");
    let gen_start = g.mbufs_in_use();
    let mut meshd = start_meshd(&p, &dir, 1 % cores).unwrap_or_else(|e| {
        panic!(
            "{e} (a meshd built without DPDK says so in its log: build with --features bench/dpdk)"
        )
    });
    g.wait_up(Duration::from_secs(20), &stop)
        .unwrap_or_else(|e| panic!("{e}\n    {}", meshd.tail()));
    let (meshd_start, _) = dpdk_rows(&meshd_stats(&meshd).unwrap());
    let q = Duration::from_millis(50);

    for (path, out_on) in [(PathKind::Ingress, 0), (PathKind::Decap, 1)] {
        let f = frames(path, 64, 1024, g.mac(0));
        // ARP (meshd asks the generator for n2 and the task), then every flow made.
        let mut warm = 0;
        for _ in 0..50 {
            let (_, got) = g
                .run(&f, 0, Some(100_000.0), Duration::from_millis(50), &stop, q)
                .unwrap();
            warm += got.frames;
            if warm > 2048 {
                break;
            }
        }
        assert!(
            warm > 0,
            "{path:?}: nothing came back\n    {}",
            meshd.tail()
        );
        let before = g.chores.stamped_on;
        let dropped = drops(&meshd);
        let (sent, got) = g
            .run(&f, 0, Some(100_000.0), Duration::from_millis(500), &stop, q)
            .unwrap();
        let after = g.chores.stamped_on;
        // Frames the ring did not take (meshd's worker descheduled on a loaded machine) are
        // not sent; every frame sent must arrive.
        assert!(
            sent.frames > 10_000,
            "{path:?}: sent {} ({} not taken by the ring); generator: {g:?}",
            sent.frames,
            sent.ring_full,
        );
        // At 100 kpps, far below what one worker does, nothing is lost, and every frame comes
        // back where the path says: ingress out of the uplink (inside VXLAN: the stamp is found
        // in the inner frame only), decap out of the tasks port.
        assert_eq!(got.frames, sent.frames, "{path:?}: lost frames");
        assert_eq!(
            after[out_on] - before[out_on],
            got.frames,
            "{path:?}: frames came back on the other port"
        );
        assert_eq!(drops(&meshd), dropped, "{path:?}: meshd dropped frames");
        meshd.alive().unwrap();
    }
    // Frames for the node itself (UDP to a port no service publishes): the pipeline hands them
    // to the host stack, which keeps them in heap buffers (and answers some); their mbufs go
    // back to meshd's pool.
    let mut f = frames(PathKind::Ingress, 64, 1024, g.mac(0));
    f.inner.dport = 9;
    let handled = |m: &bench::mesh::memif::Running| {
        let s = meshd_stats(m).unwrap();
        total(&s["total"]["drops"]) + s["total"]["to_host"].as_u64().unwrap()
    };
    let before = handled(&meshd);
    let (sent, _) = g
        .run(&f, 0, Some(100_000.0), Duration::from_millis(300), &stop, q)
        .unwrap();
    assert!(sent.frames > 5_000, "sent {}", sent.frames);
    assert_eq!(
        handled(&meshd) - before,
        sent.frames,
        "to port 9: not all for the host stack or dropped: {}",
        meshd_stats(&meshd).unwrap()["total"]
    );
    meshd.alive().unwrap();

    let stats = meshd_stats(&meshd).unwrap();
    let (meshd_end, devices) = dpdk_rows(&stats);
    for (d, port) in devices.iter().zip(["uplink", "tasks"]) {
        assert_eq!(d["port"], port, "{d}");
        assert_eq!(d["driver"], "net_memif", "{d}");
        assert_eq!(d["link_up"], true, "{d}");
        assert_eq!(d["rx_nombuf"], 0, "{d}");
    }
    assert!(
        devices[0]["rx_packets"].as_u64().unwrap() > 20_000,
        "{stats}"
    );
    assert!(
        devices[1]["tx_packets"].as_u64().unwrap() > 10_000,
        "{stats}"
    );
    // meshd's frames leave in their own mbufs or go back to their pool: its pools hold what
    // they held before.
    assert_eq!(meshd_end, meshd_start, "meshd's mbufs in use: {stats}");
    drop(meshd);
    // The generator's side sees the peer go (the link state the stats report).
    let t0 = std::time::Instant::now();
    while g.up() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!g.up(), "memif link still up 5 s after meshd stopped");
    assert_eq!(g.mbufs_in_use(), gen_start, "the generator's mbufs in use");
    let _ = std::fs::remove_dir_all(&dir);
}
