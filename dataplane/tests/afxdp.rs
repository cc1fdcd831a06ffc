//! The AF_XDP port on a real veth pair in a `meshd-` network namespace: frames both ways
//! between an AF_XDP port and an AF_PACKET port, the XDP program attached while the port is open
//! and gone once it is dropped, a second port on the same queue refused, and the kernel's RX
//! drops counted. Needs root and the `afxdp` feature; skips itself without root. The namespace
//! is deleted when the test ends, failed or not ([`Netns`]'s drop).
#![cfg(feature = "afxdp")]
// Test code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dataplane::buf::{PacketBuf, Pool, PortId};
use dataplane::port::afpacket::{wait_readable, AfPacketConfig, AfPacketPort};
use dataplane::port::afxdp::{AfXdpConfig, AfXdpError, AfXdpPort, XdpMode};
use dataplane::port::{Burst, Port};
use testbed::sys::{self as netns, Netns};

const EXPERIMENTAL: u16 = 0x88b5;
const MAGIC: &[u8; 4] = b"mshd";

/// Frame `seq`: 60 to 1514 bytes, an experimental ethertype, MAGIC, `seq`, a pattern.
// Casts: test values are small and known.
#[allow(clippy::cast_possible_truncation)]
fn frame(seq: u32) -> Vec<u8> {
    let len = 60 + (seq as usize * 151) % (1514 - 60 + 1);
    let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a];
    f.extend_from_slice(&EXPERIMENTAL.to_be_bytes());
    f.extend_from_slice(MAGIC);
    f.extend_from_slice(&seq.to_be_bytes());
    let mut i = 0u32;
    while f.len() < len {
        f.push(seq.wrapping_mul(7).wrapping_add(i) as u8);
        i += 1;
    }
    f
}

/// The sequence number of one of our frames; `None` for the kernel's own (IPv6 router
/// solicitations on a new link...).
fn seq_of(f: &[u8]) -> Option<u32> {
    (f.len() >= 22 && f[12..14] == EXPERIMENTAL.to_be_bytes() && &f[14..18] == MAGIC)
        .then(|| u32::from_be_bytes([f[18], f[19], f[20], f[21]]))
}

/// A namespace with a veth pair `a`/`b`, both up.
fn veth(tag: &str) -> Netns {
    let ns = Netns::new(&format!("t-xdp-{}-{tag}", std::process::id())).unwrap();
    ns.ip(&[
        "link", "add", "name", "a", "type", "veth", "peer", "name", "b",
    ])
    .unwrap();
    // No IPv6 on the pair: the kernel's own frames on a new link (router solicitations, MLD
    // reports) would take ring slots the tests count.
    ns.exec(&[
        "sh",
        "-c",
        "echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6; \
         echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6",
    ])
    .unwrap();
    ns.ip(&["link", "set", "dev", "a", "up"]).unwrap();
    ns.ip(&["link", "set", "dev", "b", "up"]).unwrap();
    ns
}

/// Runs `f` on a thread inside `ns`; a panic in `f` fails the test after the thread is gone
/// (and before `ns` is dropped).
fn inside<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter().unwrap();
            f()
        })
        .join()
    });
    match r {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn send(port: &mut dyn Port, pool: &mut Pool, frames: impl Iterator<Item = Vec<u8>>) -> usize {
    let mut sent = 0;
    let mut burst = Burst::new();
    for f in frames {
        burst.push(PacketBuf::from_frame(PortId::Uplink, &f));
        if burst.is_full() {
            sent += port.tx_burst(&mut burst, pool);
        }
    }
    sent += port.tx_burst(&mut burst, pool);
    // Copy mode sends at most 32 frames per kick: flush until the ring is empty.
    for _ in 0..100 {
        port.flush();
    }
    sent
}

/// Receives until `n` of our frames arrived (or 3 s passed): (sequence number, frame).
fn receive(port: &mut dyn Port, pool: &mut Pool, n: usize, want: PortId) -> Vec<(u32, Vec<u8>)> {
    receive_for(port, pool, n, want, Duration::from_secs(3))
}

/// Throws away what waits (the kernel's own frames on a new link).
fn drain(port: &mut dyn Port, pool: &mut Pool, want: PortId) {
    let _ = receive_for(port, pool, usize::MAX, want, Duration::from_millis(50));
}

fn receive_for(
    port: &mut dyn Port,
    pool: &mut Pool,
    n: usize,
    want: PortId,
    limit: Duration,
) -> Vec<(u32, Vec<u8>)> {
    let mut got = Vec::new();
    let t0 = Instant::now();
    let mut burst = Burst::new();
    while got.len() < n && t0.elapsed() < limit {
        if port.rx_burst(pool, &mut burst) == 0 {
            if let Some(fd) = port.wait_fd() {
                wait_readable(&[fd], Duration::from_millis(10));
            }
        }
        for b in burst.drain(..) {
            assert_eq!(b.port, want);
            if let Some(seq) = seq_of(b.data()) {
                got.push((seq, b.data().to_vec()));
            }
            pool.put(b);
        }
    }
    got
}

/// Whether `ip link show dev DEV` in `ns` lists an XDP program.
fn has_xdp(ns: &Netns, dev: &str) -> bool {
    ns.ip(&["link", "show", "dev", dev])
        .unwrap()
        .contains("xdp")
}

#[test]
fn frames_cross_an_afxdp_port_both_ways_and_the_program_goes_with_the_port() {
    if !netns::require_root(
        "frames_cross_an_afxdp_port_both_ways_and_the_program_goes_with_the_port",
    ) {
        return;
    }
    let ns = veth("both");
    assert!(!has_xdp(&ns, "b"));
    inside(&ns, || {
        let mut a = AfPacketPort::open("a", &AfPacketConfig::default()).unwrap();
        let xcfg = AfXdpConfig {
            port: PortId::Tasks,
            ..AfXdpConfig::default()
        };
        let mut b = AfXdpPort::open("b", &xcfg).unwrap();
        // A veth has native XDP and no zero-copy.
        assert_eq!(b.mode(), XdpMode::Native);
        assert!(!b.zero_copy());
        assert!(
            has_xdp(&ns, "b"),
            "no XDP program on b while the port is open"
        );
        // One socket per queue: a second port on b is refused (after the 2 s the kernel may need
        // to let go of a closed socket's queue), and says why.
        match AfXdpPort::open("b", &xcfg) {
            Err(e @ AfXdpError::Busy { .. }) => {
                assert!(e.to_string().contains("one worker per veth"), "{e}")
            }
            other => panic!("a second port on b: {other:?}"),
        }
        let mut pool = Pool::new(256);
        // Let the kernel's own frames on a new link pass.
        std::thread::sleep(Duration::from_millis(50));
        drain(&mut b, &mut pool, PortId::Tasks);

        // a (AF_PACKET) -> b (AF_XDP): more than the RX half of a small UMEM would hold at
        // once, read as they come.
        const N: u32 = 300;
        let rx = std::thread::scope(|s| {
            let r = s.spawn(|| {
                ns.enter().unwrap();
                let mut pool = Pool::new(256);
                receive(&mut b, &mut pool, N as usize, PortId::Tasks)
            });
            std::thread::sleep(Duration::from_millis(20));
            for chunk in (0..N).collect::<Vec<_>>().chunks(32) {
                assert_eq!(
                    send(&mut a, &mut pool, chunk.iter().map(|&s| frame(s))),
                    chunk.len()
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            r.join().unwrap()
        });
        let seqs: Vec<u32> = rx.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (0..N).collect::<Vec<_>>(),
            "b received out of order or lost"
        );
        for (seq, f) in &rx {
            assert_eq!(f, &frame(*seq), "frame {seq} differs");
        }

        // b (AF_XDP) -> a (AF_PACKET): more frames than one kick sends.
        drain(&mut a, &mut pool, PortId::Uplink);
        let sent = send(&mut b, &mut pool, (1000..1000 + N).map(frame));
        assert_eq!(sent, N as usize);
        let got = receive(&mut a, &mut pool, N as usize, PortId::Uplink);
        let seqs: BTreeSet<u32> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1000..1000 + N).collect(),
            "a did not get every frame b sent"
        );
        for (seq, f) in &got {
            assert_eq!(f, &frame(*seq), "frame {seq} differs");
        }
        let st = b.stats();
        // rx also counts the kernel's own frames on the new link (IPv6 router solicitations).
        assert!(st.rx >= u64::from(N) && st.tx == u64::from(N), "{st:?}");
        assert_eq!(
            (
                st.tx_ring_full,
                st.tx_bad_len,
                st.rx_bad_desc,
                st.rx_too_long
            ),
            (0, 0, 0, 0),
            "{st:?}"
        );
        // Too short and too long for the MTU: dropped before the ring.
        let mut burst = Burst::new();
        burst.push(PacketBuf::from_frame(PortId::Tasks, &[0; 13]));
        burst.push(PacketBuf::from_frame(PortId::Tasks, &[0; 1515]));
        assert_eq!(b.tx_burst(&mut burst, &mut pool), 0);
        assert_eq!(b.counters().tx_bad_len, 2);
        drop(b);
    });
    // Dropping the port closed the BPF link: the interface is as it was.
    assert!(!has_xdp(&ns, "b"), "the XDP program outlived its port");
}

#[test]
fn a_full_rx_ring_counts_the_kernels_drops() {
    if !netns::require_root("a_full_rx_ring_counts_the_kernels_drops") {
        return;
    }
    let ns = veth("rxfull");
    inside(&ns, || {
        let mut a = AfPacketPort::open("a", &AfPacketConfig::default()).unwrap();
        // 64 frames: 32 for RX. Nobody reads while 200 frames arrive.
        let small = AfXdpConfig {
            frames: 64,
            ..AfXdpConfig::default()
        };
        let mut b = AfXdpPort::open("b", &small).unwrap();
        let mut pool = Pool::new(256);
        assert_eq!(send(&mut a, &mut pool, (0..200).map(frame)), 200);
        std::thread::sleep(Duration::from_millis(50));
        let c = b.counters();
        assert!(c.rx_dropped >= 100, "{c:?} {:?}", b.stats());
        // What fit is still there, intact.
        let got = receive(&mut b, &mut pool, 32, PortId::Uplink);
        assert_eq!(got.len(), 32);
        for (seq, f) in &got {
            assert_eq!(f, &frame(*seq));
        }
        // Each frame read went back to the fill ring: frames flow again.
        assert_eq!(send(&mut a, &mut pool, (500..510).map(frame)), 10);
        let got = receive(&mut b, &mut pool, 10, PortId::Uplink);
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (500..510).collect::<Vec<_>>()
        );
    });
}

#[test]
fn bad_configs_and_names_are_refused_clearly() {
    let bad = AfXdpConfig {
        frames: 100,
        ..AfXdpConfig::default()
    };
    assert!(matches!(
        AfXdpPort::open("lo", &bad),
        Err(AfXdpError::Config(_))
    ));
    assert!(matches!(
        AfXdpPort::open("a-name-too-long-for-linux", &AfXdpConfig::default()),
        Err(AfXdpError::BadName(_))
    ));
    assert!(matches!(
        AfXdpPort::open("meshd-nope0", &AfXdpConfig::default()),
        Err(AfXdpError::NoSuchInterface(_))
    ));
}
