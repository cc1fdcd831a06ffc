//! meshd on DPDK memif against pktgen's memif generator, in this process: the published-port
//! path out over VXLAN and the decapsulation path to a task, frame for frame; the DPDK rows of
//! `stats`; and no mbuf leaked on either side (the pools' counts back where they started).
//! Then the other way round: meshd serves the memif sockets and `pktgen memif --client`, a
//! process of its own, connects, goes and comes back.
//!
//! Needs root, DPDK (libdpdk-dev; ./test installs it) and meshd built with DPDK next to this
//! test (`cargo build --release --workspace --features bench/dpdk`, as ./test does). Under CI
//! not being root fails the test (it does not skip).
#![cfg(feature = "dpdk")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bench::memif::{Memif, Role};
use bench::mesh::memif::{frames, meshd_stats, sockets, start_meshd, PathKind};
use bench::mesh::topo::Programs;
use bench::pktgen::{Received, Sent};

/// Held by each test for its whole run: each busy-polls a core with its meshd, and the
/// measurements of one would suffer from the other's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a test starts from: its turn (held to its end), the programs, a fresh directory
/// `/run/meshd-test-<name>-<pid>`, and the core for meshd's worker.
struct Setup {
    _turn: std::sync::MutexGuard<'static, ()>,
    p: Programs,
    dir: PathBuf,
    /// Core 1 (0 on a one-core machine): the generator keeps core 0. Counted before the
    /// in-process generator starts EAL, which pins this thread to its one core.
    core: usize,
}

/// The test's [`Setup`], or `None` where it cannot run (not root, outside CI).
fn begin(name: &str) -> Option<Setup> {
    if !testbed::sys::require_root(name) {
        return None;
    }
    let turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let p = Programs::find().expect("meshd next to this test: build the workspace first");
    let dir = PathBuf::from(format!("/run/meshd-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Some(Setup {
        _turn: turn,
        p,
        dir,
        core: 1 % cores,
    })
}

/// meshd on the memif sockets of the test's directory as their client or server (`role`).
fn meshd_on(s: &Setup, role: Role) -> bench::mesh::memif::Running {
    start_meshd(&s.p, &s.dir, s.core, role).unwrap_or_else(|e| {
        panic!(
            "{e} (a meshd built without DPDK says so in its log: build with --features bench/dpdk)"
        )
    })
}

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
    mbufs_back(meshd, meshd_start, "the link went down");
}

/// Waits until meshd's mbufs in use are back to `start` (at most 2 s), after `what`.
fn mbufs_back(meshd: &bench::mesh::memif::Running, start: u64, what: &str) {
    let mut last = 0;
    assert!(
        eventually(Duration::from_secs(2), || {
            last = dpdk_rows(&meshd_stats(meshd).unwrap()).0;
            last == start
        }),
        "meshd's mbufs in use after {what}: {last}, {start} at the start"
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
    let Some(setup) = begin("memif") else {
        return;
    };
    let dir = &setup.dir;
    let stop = AtomicBool::new(false);
    let mut g = Memif::open(&sockets(dir), Role::Server, 0, 256).expect("the memif generator");
    let gen_start = g.mbufs_in_use();
    let mut meshd = meshd_on(&setup, Role::Client);
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
    let _ = std::fs::remove_dir_all(dir);
}

/// One run of `pktgen memif --client` (a process of its own: a peer that comes and goes) on
/// the sockets of `dir`: the published-port frames at 100 kpps for half a second. Returns
/// (frames sent, frames back).
fn peer_run(p: &Programs, dir: &std::path::Path) -> (u64, u64) {
    let f = frames(PathKind::Ingress, 64, 1024, [0; 6]).inner;
    let [up, tk] = sockets(dir);
    let mac = bench::mesh::topo::mac_str;
    let args: Vec<String> = [
        "memif",
        "--client",
        "--json",
        "--core",
        "0",
        "--wait",
        "20",
        "--rate",
        "100000",
        "--duration",
        "0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--socket".into(),
        up.display().to_string(),
        "--socket".into(),
        tk.display().to_string(),
        "--dst-mac".into(),
        mac(f.dst_mac),
        "--src-ip".into(),
        f.src_ip.to_string(),
        "--dst-ip".into(),
        f.dst_ip.to_string(),
        "--dport".into(),
        f.dport.to_string(),
        "--flows".into(),
        f.flows.to_string(),
    ])
    .collect();
    let out = std::process::Command::new(&p.pktgen)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pktgen {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "pktgen's JSON: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (
        v["sent"]["frames"].as_u64().unwrap(),
        v["received"].as_u64().unwrap(),
    )
}

/// Waits until meshd has counted `downs` links going down in all (both of a peer that went,
/// once each), `peer` the last to go; then meshd must still be running.
fn links_went_down(meshd: &mut bench::mesh::memif::Running, downs: u64, peer: &str) {
    assert!(
        eventually(Duration::from_secs(5), || counter(meshd, "port_link_downs")
            == downs),
        "after {peer} went, meshd counted not {downs} links going down: {}\n    {}",
        meshd_stats(meshd).unwrap()["total"],
        meshd.tail()
    );
    meshd.alive().unwrap();
}

/// meshd serves its memif sockets (role=server) and the generator connects to them, a
/// process that comes and goes (`pktgen memif --client`). When it goes, meshd counts both
/// links going down and keeps running; when it comes again, meshd takes it back without a
/// restart and forwards the published port frame for frame; its mbufs come back to where
/// they started. (A memif client does not do that: DPDK connects one only when its device
/// starts. That is why the README says to make meshd the server of a peer that restarts.)
#[test]
fn meshd_as_memif_server_takes_back_a_peer_that_restarts() {
    let Some(setup) = begin("memif-server") else {
        return;
    };
    let (p, dir) = (&setup.p, &setup.dir);
    let mut meshd = meshd_on(&setup, Role::Server);
    let (meshd_start, devices) = dpdk_rows(&meshd_stats(&meshd).unwrap());
    assert!(
        devices.iter().all(|d| d["link_up"] == false),
        "links up with no peer: {devices:?}"
    );

    // The first peer: meshd learns its addresses (ARP) and makes the flows.
    let (sent, back) = peer_run(p, dir);
    assert!(sent > 10_000, "the first peer sent {sent}");
    assert!(
        back > 0,
        "nothing came back to the first peer\n    {}",
        meshd.tail()
    );
    // It went: both links down, counted once each; meshd serves on.
    links_went_down(&mut meshd, 2, "the first peer");

    // The peer again, a new process: taken back, every frame forwarded.
    let drops0 = total(&drops(&meshd));
    let (sent, back) = peer_run(p, dir);
    assert!(sent > 10_000, "the restarted peer sent {sent}");
    assert_eq!(
        back,
        sent,
        "the restarted peer: frames lost\n    {}",
        meshd.tail()
    );
    assert_eq!(total(&drops(&meshd)), drops0, "meshd dropped frames");
    links_went_down(&mut meshd, 4, "the restarted peer");
    mbufs_back(&meshd, meshd_start, "two peers");
    drop(meshd);
    let _ = std::fs::remove_dir_all(dir);
}
