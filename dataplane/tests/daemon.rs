//! The daemon for real: `meshd` on two veth pairs in a network namespace, configured over its
//! control socket, with real frames sent and received through AF_PACKET on the far ends; then
//! killed with SIGKILL and restarted, its state intact. Needs root; skips itself otherwise.

// Test code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ctl::client;
use ctl::proto::{Change, Command, Query, Response};
use ctl::*;
use dataplane::buf::{Pool, PortId};
use dataplane::port::afpacket::{AfPacketConfig, AfPacketPort};
use dataplane::port::{Burst, Port};
use dataplane::testkit::{self, tcp_flags, Mac};
use testbed::sys::{self as netns, Netns};

const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x99];
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 100);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 11);
const TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

struct Meshd {
    child: Child,
}

impl Drop for Meshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The meshd of node n1 with `--io io`, its control socket `dir/socket`, its state and flow
/// state in `dir`.
fn meshd_command(ns: &Netns, dir: &Path, io: &str, socket: &str) -> std::process::Command {
    let mut c = ns.command(env!("CARGO_BIN_EXE_meshd"));
    c.args([
        "--node",
        "n1",
        "--addr",
        "192.168.1.11",
        "--uplink",
        "up0",
        "--tasks",
        "tk0",
        "--io",
        io,
    ])
    .arg("--socket")
    .arg(dir.join(socket))
    .arg("--state")
    .arg(dir.join("state.json"))
    .arg("--flow-state")
    .arg(dir.join("n1.flows"))
    .args(["--flows", "4096"]);
    c
}

/// Starts meshd with `--io io`.
fn start(ns: &Netns, dir: &Path, io: &str) -> Meshd {
    let log = std::fs::File::create(dir.join("meshd.log")).unwrap();
    let child = meshd_command(ns, dir, io, "meshd.sock")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let m = Meshd { child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while client::request(
        &dir.join("meshd.sock"),
        &Command::Query(Query::NodeLs {}),
        Duration::from_secs(1),
    )
    .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "meshd did not open its socket: {}",
            log_of(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    m
}

/// Each thread of process `pid` by name, with the CPUs it may run on (`Cpus_allowed_list`).
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default();
        out.push((comm.trim().to_string(), cpus.trim().to_string()));
    }
    out
}

/// meshd's worker (on core 0, the default `--cores`) has core 0 to itself: its control, host
/// and control-socket threads run on the others (on a machine with more than one CPU).
fn threads_keep_off_the_worker_core(pid: u32) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = thread_cpus(pid);
    let of = |name: &str| {
        threads
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("no thread {name} in meshd: {threads:?}"))
    };
    assert_eq!(of("meshd-w0"), "0", "{threads:?}");
    for name in ["meshd-control", "meshd-host", "meshd-ctl"] {
        let allowed = of(name);
        if cpus > 1 {
            let others = if cpus == 2 {
                "1".to_string()
            } else {
                format!("1-{}", cpus - 1)
            };
            assert_eq!(
                allowed, others,
                "{name} shares the worker's core: {threads:?}"
            );
        } else {
            assert_eq!(allowed, "0", "{threads:?}");
        }
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("meshd.log")).unwrap_or_default()
}

fn send(dir: &Path, cmd: Command) -> ctl::proto::Success {
    match client::request(&dir.join("meshd.sock"), &cmd, Duration::from_secs(10)).unwrap() {
        Response::Ok(s) => s,
        Response::Err(e) => panic!("{}: {}", cmd.name(), e.message),
    }
}

fn mac_of(ns: &Netns, dev: &str) -> Mac {
    let s = ns
        .exec(&["cat", &format!("/sys/class/net/{dev}/address")])
        .unwrap();
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Receives on `port` until `want` accepts a frame or `timeout` passes, calling `poke` every
/// 200 ms (to resend what may have been dropped while ARP resolved).
fn expect(
    port: &mut AfPacketPort,
    timeout: Duration,
    mut poke: impl FnMut(),
    mut want: impl FnMut(&[u8]) -> bool,
) -> Vec<u8> {
    let mut pool = Pool::new(64);
    let deadline = Instant::now() + timeout;
    let mut next_poke = Instant::now();
    loop {
        if Instant::now() >= next_poke {
            poke();
            next_poke = Instant::now() + Duration::from_millis(200);
        }
        let mut b = Burst::new();
        port.rx_burst(&mut pool, &mut b);
        for f in b.drain(..) {
            if want(f.data()) {
                return f.data().to_vec();
            }
            pool.put(f);
        }
        assert!(Instant::now() < deadline, "expected frame did not arrive");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The far ends of the veths: a client on the uplink, a task on the tasks side (one socket
/// each way).
struct Far {
    client: AfPacketPort,
    client_tx: AfPacketPort,
    task: AfPacketPort,
    task_tx: AfPacketPort,
}

/// Runs `f` on a thread inside `ns` (where the far ends' sockets live).
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = ns.name.clone();
    std::thread::spawn(move || {
        netns::enter(&name).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// The connection client:40000 → node:8080 → task:80, masqueraded to `ENDPOINT:masq`.
#[derive(Clone, Copy)]
struct Hop {
    up_mac: Mac,
    tk_mac: Mac,
    task_mac: Mac,
    masq: u16,
}

impl Hop {
    /// The client's `n`th data segment reaches the task on the connection's masquerade port,
    /// and the task's answer reaches the client from node:8080; neither is a SYN or a RST.
    fn carry_on(self, mut far: Far, n: u32) -> Far {
        let seg = testkit::tcp_frame(
            CLIENT_MAC,
            self.up_mac,
            CLIENT,
            40000,
            NODE,
            8080,
            tcp_flags::ACK | tcp_flags::PSH,
            1001 + 4 * (n - 1),
            5001,
            b"GET ",
        );
        let task_mac = self.task_mac;
        let got = {
            let Far {
                task,
                task_tx,
                client_tx,
                ..
            } = &mut far;
            expect(
                task,
                Duration::from_secs(10),
                || tx(client_tx, &seg),
                |f| {
                    if let Some(a) = testkit::parse_arp(f) {
                        if a.request && a.target_ip == TASK {
                            tx(
                                task_tx,
                                &testkit::arp_reply(task_mac, TASK, a.sender_mac, a.sender_ip),
                            );
                        }
                        return false;
                    }
                    testkit::parse_ipv4_tcp(f).is_some_and(|t| t.dst == TASK && t.dport == 80)
                },
            )
        };
        let t = testkit::parse_ipv4_tcp(&got).unwrap();
        assert_eq!(
            (t.src, t.sport),
            (ENDPOINT, self.masq),
            "segment {n}: the kept flow keeps its masquerade port"
        );
        assert!(!t.has(tcp_flags::SYN) && !t.has(tcp_flags::RST));
        let answer = testkit::tcp_frame(
            self.task_mac,
            self.tk_mac,
            TASK,
            80,
            ENDPOINT,
            self.masq,
            tcp_flags::ACK | tcp_flags::PSH,
            5001,
            1001 + 4 * n,
            b"OK",
        );
        let back = expect(
            &mut far.client,
            Duration::from_secs(5),
            || tx(&mut far.task_tx, &answer),
            |f| testkit::parse_ipv4_tcp(f).is_some_and(|t| t.dport == 40000),
        );
        let b = testkit::parse_ipv4_tcp(&back).unwrap();
        assert_eq!((b.src, b.sport, b.dst), (NODE, 8080, CLIENT));
        assert!(!b.has(tcp_flags::RST), "segment {n}: answered by a reset");
        far
    }
}

fn tx(port: &mut AfPacketPort, frame: &[u8]) {
    let mut pool = Pool::new(0);
    let mut b = Burst::new();
    b.push(dataplane::buf::PacketBuf::from_frame(PortId::Uplink, frame));
    port.tx_burst(&mut b, &mut pool);
    port.flush();
}

#[test]
fn frames_cross_a_running_meshd_and_its_state_survives_sigkill() {
    frames_cross_and_state_survives_sigkill("afpacket");
}

/// The same over AF_XDP. The restart also shows that a killed meshd leaves no XDP program
/// behind: the new one could not attach its own otherwise.
#[cfg(feature = "afxdp")]
#[test]
fn frames_cross_a_running_meshd_on_af_xdp_and_its_state_survives_sigkill() {
    frames_cross_and_state_survives_sigkill("afxdp");
}

fn frames_cross_and_state_survives_sigkill(io: &str) {
    if !netns::require_root("frames_cross_and_state_survives_sigkill") {
        return;
    }
    let ns = Netns::new(&format!("t-daemon-{}-{io}", std::process::id())).unwrap();
    for (a, b) in [("up0", "upc"), ("tk0", "tkc")] {
        ns.ip(&["link", "add", "name", a, "type", "veth", "peer", "name", b])
            .unwrap();
        ns.ip(&["link", "set", a, "up"]).unwrap();
        ns.ip(&["link", "set", b, "up"]).unwrap();
    }
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        .unwrap();
    let dir = PathBuf::from(format!("/tmp/{}", ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let up_mac = mac_of(&ns, "up0");
    let tk_mac = mac_of(&ns, "tk0");
    let task_mac = mac_of(&ns, "tkc");

    let meshd = start(&ns, &dir, io);
    threads_keep_off_the_worker_core(meshd.child.id());
    let mut endpoints = BTreeMap::new();
    endpoints.insert("n1".to_string(), ENDPOINT);
    send(
        &dir,
        Command::Change(Change::NetworkCreate {
            network: Network {
                subnet6: None,
                name: "ingress".into(),
                vni: INGRESS_VNI,
                subnet: "10.0.0.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                ingress: true,
                endpoints,
                mtu: None,
                encryption: None,
            },
        }),
    );
    let mut web = Service::new("web");
    web.ports.push(PublishedPort {
        protocol: Protocol::Tcp,
        published: 8080,
        target: 80,
        mode: PublishMode::Ingress,
    });
    web.tasks.push(Task {
        name: "web.1".into(),
        node: "n1".into(),
        addresses: vec![TaskAddress {
            network: "ingress".into(),
            addr: TASK,
        }],
        state: TaskState::Running,
        weight: 1,
        vlan: None,
    });
    let generation = send(
        &dir,
        Command::Change(Change::ServiceCreate { service: web }),
    )
    .generation;

    // The far ends, opened from a thread inside the namespace: one socket each to receive and
    // one to send (a port does not see what its own interface sends).
    let ns_name = ns.name.clone();
    let handle = std::thread::spawn(move || {
        netns::enter(&ns_name).unwrap();
        let cfg = |port| AfPacketConfig {
            port,
            ..AfPacketConfig::default()
        };
        let mut client = AfPacketPort::open("upc", &cfg(PortId::Uplink)).unwrap();
        let mut client_tx = AfPacketPort::open("upc", &cfg(PortId::Uplink)).unwrap();
        let mut task = AfPacketPort::open("tkc", &cfg(PortId::Tasks)).unwrap();
        let mut task_tx = AfPacketPort::open("tkc", &cfg(PortId::Tasks)).unwrap();

        // ARP for the node's address is answered by meshd with the uplink's MAC.
        let arp = testkit::arp_request(CLIENT_MAC, CLIENT, NODE);
        let reply = expect(
            &mut client,
            Duration::from_secs(5),
            || tx(&mut client_tx, &arp),
            |f| testkit::parse_arp(f).is_some_and(|a| !a.request && a.sender_ip == NODE),
        );
        assert_eq!(testkit::parse_arp(&reply).unwrap().sender_mac, up_mac);

        // A SYN to the published port comes out on the tasks side, DNAT'ed and masqueraded;
        // the task answers meshd's ARP for its address on the way.
        let syn = testkit::tcp_frame(
            CLIENT_MAC,
            up_mac,
            CLIENT,
            40000,
            NODE,
            8080,
            tcp_flags::SYN,
            1000,
            0,
            &[],
        );
        let got = expect(
            &mut task,
            Duration::from_secs(10),
            || tx(&mut client_tx, &syn),
            |f| {
                if let Some(a) = testkit::parse_arp(f) {
                    if a.request && a.target_ip == TASK {
                        tx(
                            &mut task_tx,
                            &testkit::arp_reply(task_mac, TASK, a.sender_mac, a.sender_ip),
                        );
                    }
                    return false;
                }
                testkit::parse_ipv4_tcp(f).is_some_and(|t| t.dst == TASK && t.dport == 80)
            },
        );
        let t = testkit::parse_ipv4_tcp(&got).unwrap();
        assert!(t.has(tcp_flags::SYN));
        assert_eq!(
            t.src, ENDPOINT,
            "masqueraded to the node's ingress endpoint"
        );
        assert_eq!(&got[0..6], &task_mac);

        // The task's SYN-ACK goes back to the client from node:8080.
        let synack = testkit::tcp_frame(
            task_mac,
            tk_mac,
            TASK,
            80,
            ENDPOINT,
            t.sport,
            tcp_flags::SYN | tcp_flags::ACK,
            5000,
            1001,
            &[],
        );
        let back = expect(
            &mut client,
            Duration::from_secs(5),
            || tx(&mut task_tx, &synack),
            |f| testkit::parse_ipv4_tcp(f).is_some_and(|t| t.dport == 40000),
        );
        let b = testkit::parse_ipv4_tcp(&back).unwrap();
        assert_eq!((b.src, b.sport, b.dst), (NODE, 8080, CLIENT));
        assert!(b.has(tcp_flags::SYN) && b.has(tcp_flags::ACK));
        assert_eq!(&back[0..6], &CLIENT_MAC);

        // A port meshd does not publish is refused with a reset, as a host would.
        let stray = testkit::tcp_frame(
            CLIENT_MAC,
            up_mac,
            CLIENT,
            40001,
            NODE,
            9999,
            tcp_flags::SYN,
            7,
            0,
            &[],
        );
        let rst = expect(
            &mut client,
            Duration::from_secs(5),
            || tx(&mut client_tx, &stray),
            |f| testkit::parse_ipv4_tcp(f).is_some_and(|t| t.dport == 40001),
        );
        assert!(testkit::parse_ipv4_tcp(&rst).unwrap().has(tcp_flags::RST));
        (client, client_tx, task, task_tx, t.sport)
    });
    let (client, client_tx, task, task_tx, masq) = handle.join().unwrap();

    // SIGKILL: no chance to clean up. The restarted daemon has the same state and generation.
    drop(meshd);
    if io == "afxdp" {
        // The kernel took the XDP programs off with the process's BPF links.
        for dev in ["up0", "tk0"] {
            let link = ns.ip(&["link", "show", "dev", dev]).unwrap();
            assert!(
                !link.contains("xdp"),
                "{dev} kept meshd's XDP program: {link}"
            );
        }
    }
    let meshd = start(&ns, &dir, io);
    let ls = send(&dir, Command::Query(Query::ServiceLs {}));
    assert_eq!(ls.generation, generation);
    assert_eq!(ls.result[0]["name"], "web");
    let log = log_of(&dir);
    assert!(
        log.contains("adopted the flows of the meshd before this one (it did not stop cleanly")
            && log.contains("flows=1"),
        "the restarted meshd did not adopt the connection's flow: {log}"
    );

    // The connection opened before the kill goes on through the restarted meshd: the client's
    // next segment reaches the task on the same masquerade port, and the task's answer comes
    // back from node:8080. (Without the kept flow, it would meet no flow and be refused.)
    let hop = Hop {
        up_mac,
        tk_mac,
        task_mac,
        masq,
    };
    let far = Far {
        client,
        client_tx,
        task,
        task_tx,
    };
    let far = in_ns(&ns, move || hop.carry_on(far, 1));

    // A second meshd for the same node is refused while this one runs, and disturbs nothing.
    let second = meshd_command(&ns, &dir, io, "second.sock")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second meshd started: {err}");
    assert!(
        err.contains(&format!("another meshd (pid {})", meshd.child.id())),
        "{err}"
    );
    let far = in_ns(&ns, move || hop.carry_on(far, 2));

    // A graceful stop (SIGTERM, as `systemctl restart` sends) hands over the same way.
    let mut meshd = meshd;
    let pid = i32::try_from(meshd.child.id()).unwrap();
    // SAFETY: signalling the child this test started, by its id.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(meshd.child.wait().unwrap().success(), "{}", log_of(&dir));
    let meshd = start(&ns, &dir, io);
    assert!(
        log_of(&dir).contains("(it stopped cleanly)"),
        "{}",
        log_of(&dir)
    );
    let Far {
        client: _client,
        mut client_tx,
        mut task,
        mut task_tx,
    } = in_ns(&ns, move || hop.carry_on(far, 3));

    let syn = testkit::tcp_frame(
        CLIENT_MAC,
        up_mac,
        CLIENT,
        40002,
        NODE,
        8080,
        tcp_flags::SYN,
        1000,
        0,
        &[],
    );
    std::thread::spawn(move || {
        // The restarted meshd has to learn the task's MAC again.
        let got = expect(
            &mut task,
            Duration::from_secs(10),
            || tx(&mut client_tx, &syn),
            |f| {
                if let Some(a) = testkit::parse_arp(f) {
                    if a.request && a.target_ip == TASK {
                        tx(
                            &mut task_tx,
                            &testkit::arp_reply(task_mac, TASK, a.sender_mac, a.sender_ip),
                        );
                    }
                    return false;
                }
                testkit::parse_ipv4_tcp(f).is_some_and(|t| t.dst == TASK && t.sport != 0)
            },
        );
        assert!(testkit::parse_ipv4_tcp(&got).unwrap().has(tcp_flags::SYN));
    })
    .join()
    .unwrap();
    drop(meshd);
    let _ = std::fs::remove_dir_all(&dir);
}
