//! What the end-to-end test files share: one 3-node mesh at a time, built fresh for each test
//! and removed by a guard (also when the test fails, after dumping every node's state), with
//! meshd and meshctl rebuilt once per test binary so no stale daemon runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use testbed::{probe, sys, whoami, Bed, Plan, Tools};

static SERIAL: Mutex<()> = Mutex::new(());
static BUILD: Once = Once::new();

/// A running mesh; dropping it removes the instance.
pub struct Mesh {
    pub bed: Bed,
    started: Instant,
    _serial: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Mesh {
    type Target = Bed;
    fn deref(&self) -> &Bed {
        &self.bed
    }
}

impl std::ops::DerefMut for Mesh {
    fn deref_mut(&mut self) -> &mut Bed {
        &mut self.bed
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== mesh {} at failure:\n{}",
                self.bed.plan.instance,
                self.bed.dump()
            );
        }
        self.bed.down_now();
        let left = sys::netns_with_prefix(&self.bed.plan.prefix()).unwrap_or_default();
        eprintln!(
            "mesh {}: {:.1} s",
            self.bed.plan.instance,
            self.started.elapsed().as_secs_f64()
        );
        if !left.is_empty() && !std::thread::panicking() {
            panic!("namespaces left behind: {left:?}");
        }
    }
}

fn build_daemons(testbed: &Path) {
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = testbed.components().any(|c| c.as_os_str() == "release");
        let mut args = vec![
            "build",
            "-q",
            "-p",
            "dataplane",
            "--bin",
            "meshd",
            "-p",
            "ctl",
            "--bin",
            "meshctl",
            // The floods' generator (testbed/tests/floods.rs).
            "-p",
            "bench",
            "--bin",
            "pktgen",
        ];
        if release {
            args.push("--release");
        }
        // meshd with its DPDK port (testbed/tests/dpdk.rs) where DPDK is installed (./test
        // installs it); elsewhere that test fails, saying so.
        if dpdk_installed() {
            args.extend(["--features", "dataplane/dpdk"]);
        }
        let st = std::process::Command::new(&cargo)
            .args(&args)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("running cargo to build meshd and meshctl");
        assert!(st.success(), "cargo build of meshd/meshctl failed");
    });
}

/// Whether DPDK's development files are installed (pkg-config finds libdpdk).
pub fn dpdk_installed() -> bool {
    std::process::Command::new("pkg-config")
        .args(["--exists", "libdpdk"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A fresh 3-node mesh on instance `<letter><tag><pid>`, or `None` (with a printed line) when
/// not root; under CI (which runs as root) not being root fails the test instead
/// ([`sys::require_root`]). `preflight` checks what this test file needs besides root.
#[allow(dead_code)] // each test file uses part of this module
pub fn mesh(letter: &str, test: &str, tag: &str, preflight: impl FnOnce()) -> Option<Mesh> {
    mesh_with(letter, test, tag, 0, preflight)
}

/// [`mesh`] in cluster mode when `etcd_members` > 0: an etcd of that many members, every meshd
/// following it, meshctl changing it.
pub fn mesh_with(
    letter: &str,
    test: &str,
    tag: &str,
    etcd_members: usize,
    preflight: impl FnOnce(),
) -> Option<Mesh> {
    mesh_io(
        letter,
        test,
        tag,
        etcd_members,
        testbed::plan::NodeIo::default(),
        preflight,
    )
}

#[allow(dead_code)] // each test file uses part of this module
/// [`mesh_with`] with every meshd reaching its interfaces the `io` way.
pub fn mesh_io(
    letter: &str,
    test: &str,
    tag: &str,
    etcd_members: usize,
    io: testbed::plan::NodeIo,
    preflight: impl FnOnce(),
) -> Option<Mesh> {
    mesh_plan(letter, test, tag, etcd_members, |p| p.io = io, preflight)
}

/// [`mesh_with`] with the instance's [`Plan`] changed by `shape` before the mesh is built (its
/// `io`, `underlay6`).
pub fn mesh_plan(
    letter: &str,
    test: &str,
    tag: &str,
    etcd_members: usize,
    shape: impl FnOnce(&mut Plan),
    preflight: impl FnOnce(),
) -> Option<Mesh> {
    if !sys::require_root(&format!(
        "{test}/{tag} (sudo cargo test -p testbed --test {test})"
    )) {
        return None;
    }
    preflight();
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exe = Path::new(env!("CARGO_BIN_EXE_testbed"));
    build_daemons(exe);
    let mut plan = Plan::new(&format!("{letter}{tag}{}", std::process::id() % 1000)).unwrap();
    shape(&mut plan);
    testbed::bed::down(&plan);
    let started = Instant::now();
    let bed = Bed::up_with(plan, Tools::beside(exe).unwrap(), 3, false, etcd_members).unwrap();
    Some(Mesh {
        bed,
        started,
        _serial: serial,
    })
}

/// Node `node`'s `meshctl stats --format json`, parsed.
fn stats(m: &Mesh, node: &str) -> serde_json::Value {
    let sock = m.node(node).unwrap().socket.display().to_string();
    let out = m
        .meshctl(&["--socket", &sock, "stats", "--format", "json"])
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// A plain counter of node `node`'s `meshctl stats --format json` (summed over its workers).
#[allow(dead_code)] // each test file uses part of this module
pub fn counter(m: &Mesh, node: &str, name: &str) -> u64 {
    let v = stats(m, node);
    v["total"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {v}"))
}

/// The drops of node `node` for reason `reason` (its name in `meshctl stats`), summed over its
/// workers: 0 while none happened.
#[allow(dead_code)] // each test file uses part of this module
pub fn dropped(m: &Mesh, node: &str, reason: &str) -> u64 {
    stats(m, node)["total"]["drops"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// A counter of node `node`'s host side (`meshctl stats --format json`, `host`).
#[allow(dead_code)] // each test file uses part of this module
pub fn host_counter(m: &Mesh, node: &str, name: &str) -> u64 {
    let v = stats(m, node);
    v["host"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no host counter {name} in {v}"))
}

/// Sends `frames` from interface `dev` of namespace `ns` as they are (an AF_PACKET port, what
/// an attacker with a raw socket there does): all of them `rounds` times, `gap` apart.
#[allow(dead_code)] // each test file uses part of this module
pub fn send_raw(ns: &str, dev: &str, frames: &[Vec<u8>], rounds: usize, gap: std::time::Duration) {
    use dataplane::buf::{PacketBuf, Pool, PortId};
    use dataplane::port::afpacket::{AfPacketConfig, AfPacketPort};
    use dataplane::port::{Burst, Port};
    let dev = dev.to_string();
    sys::in_netns(ns, move || {
        let mut port = AfPacketPort::open(&dev, &AfPacketConfig::default()).unwrap();
        let mut pool = Pool::new(64);
        for _ in 0..rounds {
            for chunk in frames.chunks(dataplane::port::BURST) {
                let mut burst = Burst::new();
                for f in chunk {
                    burst.push(PacketBuf::from_frame(PortId::Uplink, f));
                }
                port.tx_burst(&mut burst, &mut pool);
            }
            port.flush();
            std::thread::sleep(gap);
        }
    })
    .unwrap();
}

/// A MAC address written as `02:6d:73:00:01:01` (what sysfs and the plan give).
#[allow(dead_code)] // each test file uses part of this module
pub fn mac(text: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

/// Starts recording what interface `dev` of namespace `ns` receives (AF_PACKET, as tcpdump
/// does) for `time`; the handle gives the frames (at most 20,000). Give the socket a moment to
/// open before the traffic starts.
#[allow(dead_code)] // each test file uses part of this module
pub fn capture(
    ns: &str,
    dev: &str,
    time: std::time::Duration,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    use dataplane::buf::Pool;
    use dataplane::port::afpacket::{AfPacketConfig, AfPacketPort};
    use dataplane::port::{Burst, Port};
    let (ns, dev) = (ns.to_string(), dev.to_string());
    std::thread::spawn(move || {
        sys::in_netns(&ns, move || {
            let mut port = AfPacketPort::open(&dev, &AfPacketConfig::default()).unwrap();
            let mut pool = Pool::new(256);
            let mut got = Vec::new();
            let end = Instant::now() + time;
            while Instant::now() < end {
                let mut burst = Burst::new();
                if port.rx_burst(&mut pool, &mut burst) == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                for b in burst.drain(..) {
                    if got.len() < 20_000 {
                        got.push(b.data().to_vec());
                    }
                    pool.put(b);
                }
            }
            got
        })
        .unwrap()
    })
}

/// A mebibyte.
pub const MIB: usize = 1 << 20;

/// A scratch directory for one test's files, removed when dropped.
#[allow(dead_code)] // each test file uses part of this module
pub struct Scratch(PathBuf);

#[allow(dead_code)] // each test file uses part of this module
impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("meshd-scratch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// From namespace `ns`: downloads `GET base/bytes/1MiB` and uploads a mebibyte to `base/echo`,
/// and checks both bodies byte for byte. `what` names the path in failure messages.
#[allow(dead_code)] // each test file uses part of this module
pub fn mebibyte_each_way(s: &Scratch, ns: &str, base: &str, what: &str) {
    let down = s.path("down");
    let _ = std::fs::remove_file(&down);
    let url = format!("{base}/bytes/{MIB}");
    let out =
        sys::exec_in_output(ns, "curl", &["-sS", "--max-time", "30", "-o", &down, &url]).unwrap();
    assert_eq!(out.code, Some(0), "{what}: curl {url}: {}", out.stderr);
    let got = std::fs::read(&down).unwrap();
    assert_eq!(got.len(), MIB, "{what}: downloaded {} bytes", got.len());
    assert!(
        got == whoami::pattern(MIB),
        "{what}: the download's bytes differ"
    );

    let up = s.path("up");
    let mut body = whoami::pattern(MIB);
    body.reverse();
    std::fs::write(&up, &body).unwrap();
    let echo = s.path("echo");
    let _ = std::fs::remove_file(&echo);
    let url = format!("{base}/echo");
    let data = format!("@{up}");
    let out = sys::exec_in_output(
        ns,
        "curl",
        &[
            "-sS",
            "--max-time",
            "30",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &data,
            "-o",
            &echo,
            &url,
        ],
    )
    .unwrap();
    assert_eq!(out.code, Some(0), "{what}: curl POST {url}: {}", out.stderr);
    let got = std::fs::read(&echo).unwrap();
    assert_eq!(got.len(), MIB, "{what}: echoed {} bytes", got.len());
    assert!(got == body, "{what}: the echoed upload differs");
}

/// From namespace `ns`: UDP datagrams of each of `sizes` to `to` (IPv4 or IPv6), each echoed
/// whole (the whoami's name, a space, then the datagram) and intact.
#[allow(dead_code)] // each test file uses part of this module
pub fn udp_echoed(ns: &str, to: SocketAddr, sizes: &[usize], what: &str) {
    let sock = probe::udp_socket_for(ns, to).unwrap().unwrap();
    for &n in sizes {
        let body = whoami::pattern(n);
        // A datagram lost to the path MTU discovery of the client's kernel (its first at a new
        // size may meet "fragmentation needed") is sent again, as a UDP application would.
        let got = (0..3)
            .find_map(|_| probe::udp_echo_on(&sock, to, &body, Duration::from_secs(2)).ok())
            .unwrap_or_else(|| panic!("{what}: no echo of {n} bytes to {to}"));
        assert!(
            got.len() > n && got.ends_with(&body),
            "{what}: {n} bytes to {to}: got {} bytes back, not the datagram",
            got.len()
        );
    }
}
