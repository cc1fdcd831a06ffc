//! End-to-end: encrypted overlay networks (`meshctl network create --opt encrypted`). What a
//! task sends to another node's task crosses the underlay sealed: a mebibyte moves intact while
//! a capture on the underlay switch finds none of it (and finds it on an unencrypted network);
//! a host on the underlay that forges a peer's address and MAC, or replays a recorded frame,
//! reaches no task of an encrypted network (it does reach one of an unencrypted network, which
//! is why the README says the underlay is trusted without encryption); keys rotate under
//! traffic without a failed request.
//!
//! Run as root from the workspace root: `sudo cargo test -p testbed --test encrypted`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{mac, Mesh};
use dataplane::testkit;
use testbed::{plan, probe, sys, whoami, RunSpec};

fn mesh(tag: &str) -> Option<Mesh> {
    common::mesh("e", "encrypted", tag, || {
        let missing = testbed::preflight::missing();
        assert!(missing.is_empty(), "missing programs: {missing:?}");
    })
}

/// `api` on n2 and a client task `NAME-c` on n1, both on network `net` (encrypted or not).
fn pair(m: &mut Mesh, net: &str, api: &str, encrypted: bool) {
    let spec = RunSpec::new(api, 1).network(net).on("n2");
    m.run(&if encrypted { spec.encrypted() } else { spec })
        .unwrap();
    m.run(&RunSpec::new(&format!("{api}-c"), 1).network(net).on("n1"))
        .unwrap();
}

/// The VNI of network `net`, from `meshctl network inspect`.
fn vni(m: &Mesh, net: &str) -> u32 {
    let out = m.meshctl(&["network", "inspect", net]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    u32::try_from(v[0]["vni"].as_u64().unwrap()).unwrap()
}

/// The VXLAN frames of `vni` among `frames`.
fn of_vni(frames: &[Vec<u8>], vni: u32) -> Vec<&Vec<u8>> {
    frames
        .iter()
        .filter(|f| testkit::decap(f).is_some_and(|(v, _)| v == vni))
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Downloads a mebibyte from `api`'s VIP on `net` in its client task, while the underlay
/// switch records what n2 sends; returns n2's VXLAN frames of the network and whether any
/// carries the response's header or a stretch of its body as it is.
fn download_watched(m: &Mesh, net: &str, api: &str) -> (usize, bool) {
    let vip = m.vip(api, net).unwrap();
    let ns = m.tasks_of(&format!("{api}-c"))[0].ns.clone();
    let cap = common::capture(&m.plan.switch_ns(), "n2", Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(500));
    let url = format!("http://{vip}/bytes/{}", 1 << 20);
    let out = sys::exec_in_output(
        &ns,
        "curl",
        &[
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &url,
        ],
    )
    .unwrap();
    assert_eq!(out.code, Some(0), "{net}: curl {url}: {}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        (1 << 20).to_string(),
        "{net}: bytes downloaded"
    );
    let frames = cap.join().unwrap();
    let ours = of_vni(&frames, vni(m, net));
    let body = whoami::pattern(1 << 20);
    let markers: Vec<&[u8]> = vec![
        b"HTTP/1.1 200",
        &body[5_000..5_024],
        &body[300_000..300_024],
        &body[700_000..700_024],
    ];
    for f in &ours {
        assert!(
            f.len() <= 14 + 1500,
            "{net}: a frame longer than the link: {}",
            f.len()
        );
    }
    let readable = ours.iter().any(|f| markers.iter().any(|k| contains(f, k)));
    (ours.len(), readable)
}

#[test]
fn an_encrypted_network_is_unreadable_and_unforgeable_on_the_underlay() {
    let Some(mut m) = mesh("seal") else { return };
    pair(&mut m, "vault", "api", true);
    pair(&mut m, "plain", "papi", false);
    // Tasks on the encrypted network have its MTU: 1450 less the seal's 44 bytes.
    let t = &m.tasks_of("api")[0];
    let mtu = sys::exec_in(&t.ns, "cat", &["/sys/class/net/eth0/mtu"]).unwrap();
    assert_eq!(mtu.trim(), "1406");

    // A mebibyte from n2's task to n1's: on the unencrypted network the capture reads it; on
    // the encrypted one it moves as intact, and nothing of it is readable.
    let (n, readable) = download_watched(&m, "plain", "papi");
    assert!(
        n > 500 && readable,
        "the control capture saw {n} frames, readable {readable}"
    );
    let (n, readable) = download_watched(&m, "vault", "api");
    assert!(n > 500, "only {n} frames of the encrypted network captured");
    assert!(
        !readable,
        "the encrypted network's traffic is readable on the underlay"
    );
    eprintln!("encrypted: 1 MiB in {n} sealed frames, none readable on the underlay");

    // A host on the underlay (the client) forges n1 completely, address and MAC, and sends n2
    // a UDP datagram for each network's task, as if from the client task on n1. On the switch
    // n1's MAC is then at the forger's port, so what n2 sends n1 comes to the forger: it sees
    // whether the task echoed its datagram.
    let (n1, n2) = (m.node("n1").unwrap().clone(), m.node("n2").unwrap().clone());
    let n1_mac = mac(&plan::uplink_mac(n1.index));
    let n2_mac = mac(&plan::uplink_mac(n2.index));
    let client = m.client_ns();
    // The VXLAN frames of `net` n2 sent the forger, and whether any carries the echo.
    let forge = |net: &str, api: &str| -> (usize, bool) {
        let from = m.tasks_of(&format!("{api}-c"))[0].addr_on(net).unwrap();
        let to = m.tasks_of(api)[0].addr_on(net).unwrap();
        let inner = testkit::udp_frame(
            [2; 6],
            [2; 6],
            from,
            40_000,
            to,
            80,
            b"forged by the underlay",
        );
        let vx = testkit::vxlan_frame(
            n1_mac,
            n2_mac,
            n1.addr,
            n2.addr,
            50000,
            vni(&m, net),
            &inner,
        );
        let cap = common::capture(&client, "eth0", Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(300));
        common::send_raw(&client, "eth0", &[vx], 10, Duration::from_millis(100));
        let frames = cap.join().unwrap();
        let back: Vec<&Vec<u8>> = of_vni(&frames, vni(&m, net))
            .into_iter()
            .filter(|f| f[26..30] == n2.addr.octets())
            .collect();
        let echoed = back.iter().any(|f| contains(f, b"forged by the underlay"));
        (back.len(), echoed)
    };
    let (n, echoed) = forge("plain", "papi");
    assert!(
        echoed,
        "control: the unencrypted network's task never echoed the forged datagram ({n} frames back)"
    );
    let unknown = common::dropped(&m, "n2", "seal_unknown_key");
    let (n, _) = forge("vault", "api");
    assert_eq!(
        n, 0,
        "the encrypted network's task answered a forged datagram"
    );
    assert!(
        common::dropped(&m, "n2", "seal_unknown_key") >= unknown + 10,
        "n2 did not count the forgeries"
    );
    // The switch learns n1's port again from n1's next frame.
    std::thread::sleep(Duration::from_secs(2));

    // A frame n1 really sealed, recorded on the underlay and sent again: as it is, refused as
    // replayed; with its nonce's counter moved ahead (to pass the replay window) and a byte of
    // its ciphertext changed, refused as forged.
    let cap = common::capture(&m.plan.switch_ns(), "n1", Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(500));
    let vip = m.vip("api", "vault").unwrap();
    let ns = m.tasks_of("api-c")[0].ns.clone();
    let c = probe::curl(&ns, &format!("http://{vip}/"), Duration::from_secs(3), &[]).unwrap();
    assert!(c.ok(), "{}", c.summary());
    let frames = cap.join().unwrap();
    let real = of_vni(&frames, vni(&m, "vault"))
        .into_iter()
        .find(|f| f.len() > 100 && f[30..34] == n2.addr.octets())
        .expect("a sealed frame from n1 to n2")
        .clone();
    let mut changed = real.clone();
    // Outer headers (50), key id (4), nonce prefix (16), then the counter's top byte.
    changed[50 + 4 + 16] ^= 0x40;
    let at = changed.len() - 30;
    changed[at] ^= 0x20;
    let (replayed, forged) = (
        common::dropped(&m, "n2", "seal_replayed"),
        common::dropped(&m, "n2", "seal_forged"),
    );
    common::send_raw(
        &client,
        "eth0",
        &[real, changed],
        5,
        Duration::from_millis(20),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(common::dropped(&m, "n2", "seal_replayed") - replayed, 5);
    assert_eq!(common::dropped(&m, "n2", "seal_forged") - forged, 5);
    // And the network still works (n1's next frames teach the switch its port again).
    let ok = (0..20).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        probe::curl(&ns, &format!("http://{vip}/"), Duration::from_secs(2), &[])
            .unwrap()
            .ok()
    });
    assert!(
        ok,
        "the encrypted network stopped working after the forgeries"
    );
}

#[test]
fn a_key_rotation_under_traffic_fails_no_request() {
    let Some(mut m) = mesh("rotate") else { return };
    pair(&mut m, "vault", "api", true);
    let vip = m.vip("api", "vault").unwrap();
    let ns = m.tasks_of("api-c")[0].ns.clone();
    // One connection held open across the rotations, and new ones all along.
    let stream = probe::tcp_open(&ns, SocketAddr::from((vip, 80)), Duration::from_secs(2))
        .unwrap()
        .unwrap();
    let mut held = probe::KeepAlive::new(stream, &vip.to_string(), Duration::from_secs(2)).unwrap();
    held.get().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (stop, ns) = (stop.clone(), ns.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let c = probe::curl(&ns, &format!("http://{vip}/"), Duration::from_secs(3), &[])
                    .unwrap();
                if c.ok() {
                    ok += 1
                } else {
                    failed.push(c.summary())
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        m.meshctl(&["network", "update", "--rotate-key", "vault"])
            .unwrap();
        held.get().unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = worker.join().unwrap();
    held.get().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok > 20, "only {ok} requests during the rotations");
    // Every node seals with key 3 and still accepts key 2; no frame was refused anywhere.
    for node in ["n1", "n2", "n3"] {
        let sock = m.node(node).unwrap().socket.display().to_string();
        let out = m
            .meshctl(&["--socket", &sock, "network", "inspect", "vault"])
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let e = &v[0]["encryption"];
        assert_eq!(e["primary"], 3, "{node}: {e}");
        let ids: Vec<u64> = e["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![2, 3], "{node}");
        assert!(!out.contains("\"key\""), "{node} shows a key: {out}");
        for r in ["seal_unknown_key", "seal_forged", "seal_replayed"] {
            assert_eq!(common::dropped(&m, node, r), 0, "{node}: {r}");
        }
    }
    eprintln!(
        "encrypted: {ok} requests and a held connection through two key rotations, none failed"
    );
}
