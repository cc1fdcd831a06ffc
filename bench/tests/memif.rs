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
use bench::pktgen::{Received, Sent};

/// meshd's drops so far, by reason.
fn drops(meshd: &bench::mesh::memif::Running) -> serde_json::Value {
    meshd_stats(meshd).unwrap()["total"]["drops"].clone()
}

/// A worker counter of meshd's `stats`, summed over its workers.
fn counter(meshd: &bench::mesh::memif::Running, name: &str) -> u64 {
    let s = meshd_stats(meshd).unwrap();
    s["total"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in meshd's stats: {}", s["total"]))
}

/// Polls `f` every 20 ms until it holds, at most `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Sends `f` on the uplink at 100 kpps, far below what one worker does, for `ms`
/// milliseconds, then reads what comes back until 50 ms pass with nothing.
fn steady(g: &mut Memif, f: &bench::memif::Frames, ms: u64, stop: &AtomicBool) -> (Sent, Received) {
    g.run(
        f,
        0,
        Some(100_000.0),
        Duration::from_millis(ms),
        stop,
        Duration::from_millis(50),
    )
    .unwrap()
}

/// Sends `f` at 100 kpps until more than 2,048 frames came back (ARP: meshd asks the
/// generator for n2 and the task; then every flow made). Returns the frames that came back.
fn warm(g: &mut Memif, f: &bench::memif::Frames, stop: &AtomicBool) -> u64 {
    let mut back = 0;
    for _ in 0..50 {
        let (_, got) = steady(g, f, 50, stop);
        back += got.frames;
        if back > 2048 {
            break;
        }
    }
    back
}

/// The tasks link goes down with meshd forwarding into it at full load (the generator closes
/// that interface): meshd counts the link going down and every frame it then cannot send for
/// that reason, loses nothing else, keeps serving the uplink (the published port, frame for
/// frame), and its mbufs come back to where they started.
fn tasks_link_goes_down_under_load(
    g: &mut Memif,
    meshd: &mut bench::mesh::memif::Running,
    meshd_start: u64,
    stop: &AtomicBool,
) {
    let decap = frames(PathKind::Decap, 64, 1024, g.mac(0));
    assert!(warm(g, &decap, stop) > 0, "decap: nothing came back");
    assert_eq!(counter(meshd, "port_link_downs"), 0);
    // Full load, and the tasks interface closed the moment the generator stops sending: the
    // frames on meshd's rings meet a link going down.
    let (sent, _) = g
        .run(
            &decap,
            0,
            None,
            Duration::from_millis(300),
            stop,
            Duration::ZERO,
        )
        .unwrap();
    assert!(g.close_last(), "the generator had no tasks interface");
    assert!(sent.frames > 100_000, "full load sent only {}", sent.frames);
    assert!(
        eventually(Duration::from_secs(5), || counter(meshd, "port_link_downs")
            == 1),
        "meshd did not count the tasks link going down: {}",
        meshd_stats(meshd).unwrap()["total"]
    );
    meshd.alive().unwrap();
    let stats = meshd_stats(meshd).unwrap();
    let (_, devices) = dpdk_rows(&stats);
    assert_eq!(devices[0]["link_up"], true, "{}", devices[0]);
    assert_eq!(devices[1]["link_up"], false, "{}", devices[1]);

    // Frames for the task behind the dead link: each counted for it, none for anything else.
    let (down0, drops0) = (counter(meshd, "port_tx_link_down"), total(&drops(meshd)));
    let others = |m: &bench::mesh::memif::Running| {
        [
            "port_rx_dropped",
            "port_rx_too_long",
            "port_tx_full",
            "port_tx_bad_len",
        ]
        .iter()
        .map(|c| counter(m, c))
        .sum::<u64>()
    };
    let others0 = others(meshd);
    let (sent, got) = steady(g, &decap, 300, stop);
    assert!(sent.frames > 10_000, "sent {}", sent.frames);
    assert_eq!(got.frames, 0, "frames came back from a closed interface");
    assert!(
        eventually(Duration::from_secs(2), || counter(
            meshd,
            "port_tx_link_down"
        ) - down0
            >= sent.frames),
        "sent {} to the task, {} counted as link down",
        sent.frames,
        counter(meshd, "port_tx_link_down") - down0
    );
    assert_eq!(total(&drops(meshd)), drops0, "the pipeline dropped frames");
    assert_eq!(
        others(meshd),
        others0,
        "frames counted for another port drop"
    );

    // The uplink still serves the published port, frame for frame.
    let ingress = frames(PathKind::Ingress, 64, 1024, g.mac(0));
    assert!(warm(g, &ingress, stop) > 0, "ingress: nothing came back");
    let (sent, got) = steady(g, &ingress, 500, stop);
    assert!(sent.frames > 10_000, "sent {}", sent.frames);
    assert_eq!(
        got.frames, sent.frames,
        "ingress lost frames with the tasks link down"
    );
    meshd.alive().unwrap();
    let mut last = 0;
    assert!(
        eventually(Duration::from_secs(2), || {
            last = dpdk_rows(&meshd_stats(meshd).unwrap()).0;
            last == meshd_start
        }),
        "meshd's mbufs in use after the link went down: {last}, {meshd_start} at the start"
    );
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

    for (path, out_on) in [(PathKind::Ingress, 0), (PathKind::Decap, 1)] {
        let f = frames(path, 64, 1024, g.mac(0));
        assert!(
            warm(&mut g, &f, &stop) > 0,
            "{path:?}: nothing came back\n    {}",
            meshd.tail()
        );
        let before = g.chores.stamped_on;
        let dropped = drops(&meshd);
        let (sent, got) = steady(&mut g, &f, 500, &stop);
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
    let handled = |m: &bench::mesh::memif::Running| total(&drops(m)) + counter(m, "to_host");
    let before = handled(&meshd);
    let (sent, _) = steady(&mut g, &f, 300, &stop);
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

    // One process, one EAL: the link-down case runs here, after the rest.
    tasks_link_goes_down_under_load(&mut g, &mut meshd, meshd_start, &stop);
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
