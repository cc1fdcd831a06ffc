//! `bench mesh --io memif`: meshd and `dpdk-testpmd` (io forward, the ceiling) on the same DPDK
//! memif path, alternating, with pktgen's memif mode ([`crate::memif`]) in this process as
//! generator and sink.
//!
//! ```text
//!   bench (core 0): pktgen memif server           system under test (core 1), memif client
//!   /run/meshd-bench-memif/up.sock  ══ uplink ══  meshd up: 192.168.100.11 (node n1)
//!   /run/meshd-bench-memif/tk.sock  ══ tasks ═══  meshd tasks: sink.1 10.0.0.200
//! ```
//!
//! Two paths, each a frame in and a frame out on one worker:
//! - **ingress**: the generator plays clients sending to n1's published port 8080/udp; meshd
//!   DNATs to one of web's 32 tasks (10.0.0.100 and up, on node n2, round-robin), masquerades to its ingress endpoint and sends
//!   the frame over VXLAN to n2 (192.168.100.12), which the generator also plays: out of the
//!   uplink, back to the generator. testpmd: uplink → uplink (`--port-topology=loop`).
//! - **decap**: the generator plays n2 sending its ingress traffic over VXLAN to n1's task
//!   sink.1; meshd decapsulates and delivers it on the tasks port. testpmd: uplink → tasks
//!   (`--port-topology=paired`).
//!
//! For each path, frame size and flow count, each system: every flow once (meshd makes its
//! flows), full load (what the generator can send in a step), an RFC 2544 binary search for
//! the highest rate with loss within the threshold, and latency at half that rate. Sizes are
//! the client's frame (the overlay's); the VXLAN frame on the underlay is 50 bytes more, so the
//! large size is 1468 B (1518 B on the underlay: memif takes no MTU above 1500).

use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::report::{Machine, Spread, Trial};
use super::topo::Programs;
use super::MeshError;
use crate::memif::{Frames, Memif, Role, Vxlan};
use crate::pktgen::{FrameSpec, Percentiles, Proto, Received, Sent};

const DIR: &str = "/run/meshd-bench-memif";
const N1_UP_MAC: [u8; 6] = [0x02, 0x62, 0, 0, 1, 0];
const N1_TK_MAC: [u8; 6] = [0x02, 0x62, 0, 0, 1, 1];
const N1_IP: [u8; 4] = [192, 168, 100, 11];
const N2_IP: [u8; 4] = [192, 168, 100, 12];
const CLIENT_IP: [u8; 4] = [192, 168, 100, 100];
const N2_ENDPOINT: [u8; 4] = [10, 0, 0, 3];
/// web's tasks: 10.0.0.100 and up. Masquerade gives each task at most 64 K flows (the
/// endpoint's source ports): 1 M flows need at least 16.
const WEB_TASKS: u8 = 32;
const WEB_TASK: [u8; 4] = [10, 0, 0, 100];
const SINK_TASK: [u8; 4] = [10, 0, 0, 200];
/// The rate every flow is sent once at before a cell is measured.
const WARM_PPS: f64 = 500_000.0;
/// meshd's flow table: room for the 1 M-flow runs.
const MESHD_FLOWS: usize = 1 << 21;

/// The two paths measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Published port in, VXLAN out to a peer (one port).
    Ingress,
    /// VXLAN in from a peer, to a local task (uplink to tasks).
    Decap,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::Ingress => "ingress",
            PathKind::Decap => "decap",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct MemifOptions {
    pub quick: bool,
    pub rounds: usize,
    pub paths: Vec<PathKind>,
    pub sizes: Vec<usize>,
    pub flows: Vec<u32>,
    pub step: Duration,
    pub steps: usize,
    pub loss_pct: f64,
    pub latency: Duration,
    /// The latency step's offered rate for both systems (`--latency-kpps`); `None`: half each
    /// system's zero-loss rate, where the p99 target is set.
    pub latency_pps: Option<f64>,
    /// The generator's core and the system's forwarding core.
    pub gen_core: usize,
    pub sut_core: usize,
    pub out: PathBuf,
    pub docs: Option<PathBuf>,
    pub command: String,
}

/// One system on one cell (path, size, flows) in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemifRun {
    pub system: String,
    pub path: PathKind,
    pub size: usize,
    pub flows: u32,
    pub round: usize,
    pub full_load: Trial,
    pub zero_loss_pps: f64,
    pub search: Vec<Trial>,
    pub latency_at_pps: f64,
    pub latency: Percentiles,
    /// meshd's `stats` after the cell (mbufs in use, devices, drops), for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meshd_stats: Option<serde_json::Value>,
}

/// A system on a cell over the rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemifSummary {
    pub system: String,
    pub path: PathKind,
    pub size: usize,
    pub flows: u32,
    pub zero_loss_pps: Spread,
    pub full_load_delivered_pps: Spread,
    /// Rounds whose full-load step lost nothing beyond the threshold (over memif the normal
    /// case: the rings push back instead of dropping).
    pub generator_limited: usize,
    pub p50_us: Spread,
    pub p99_us: Spread,
    pub p999_us: Spread,
}

/// meshd against testpmd on one cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemifRatio {
    pub path: PathKind,
    pub size: usize,
    pub flows: u32,
    /// meshd's zero-loss rate over testpmd's (target ≥ 0.9).
    pub zero_loss: f64,
    /// meshd's p99 over testpmd's (target ≤ 1.5, at half each one's zero-loss rate).
    pub p99: f64,
    /// Both targets met (never in a run that measured latency at a rate given: the p99
    /// target is not judged there).
    pub met: bool,
}

/// A published per-core figure of a peer, with what it was measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    pub system: String,
    pub mpps_per_core: String,
    pub what: String,
    pub hardware: String,
    pub source: String,
}

impl MemifReport {
    /// Reads a memif.json written earlier.
    pub fn read(path: &Path) -> Result<MemifReport, MeshError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MeshError::Report(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| MeshError::Report(format!("{}: not a memif.json: {e}", path.display())))
    }
}

/// Everything `bench mesh --io memif` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemifReport {
    pub command: String,
    pub date_utc: String,
    pub machine: Machine,
    pub quick: bool,
    pub rounds: usize,
    pub step_secs: f64,
    pub search_steps: usize,
    pub loss_threshold_pct: f64,
    pub latency_secs: f64,
    /// The latency step's rate when given (`--latency-kpps`): the same for both systems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_pps: Option<f64>,
    pub summaries: Vec<MemifSummary>,
    pub ratios: Vec<MemifRatio>,
    pub peers: Vec<Peer>,
    pub runs: Vec<MemifRun>,
    pub notes: Vec<String>,
}

/// The peers' published figures (per core or per worker), for the table beside ours.
pub fn peers() -> Vec<Peer> {
    let p = |system: &str, mpps: &str, what: &str, hardware: &str, source: &str| Peer {
        system: system.into(),
        mpps_per_core: mpps.into(),
        what: what.into(),
        hardware: hardware.into(),
        source: source.into(),
    };
    vec![
        p(
            "Katran (XDP)",
            "5.2",
            "L4 LB, IPIP to the real, per core (RX queue)",
            "Intel Xeon servers with 10–25G NICs, native XDP (Facebook's figure)",
            "as cited in meshd issue 16 (Katran talks, NetDev 2.1); not re-measured here",
        ),
        p(
            "DPVS v1.9.2",
            "2.9",
            "UDP FNAT, per worker",
            "Intel Xeon E5-2650 v4 @ 2.20GHz, Intel X540-AT2 10G, dperf as client",
            "iqiyi/dpvs test/release/v1.9.2/performance.md",
        ),
        p(
            "VPP LB plugin",
            "> 3",
            "load balancer with 1 M flows, per core",
            "Intel Xeon, Intel 10/40G NICs (FD.io test beds)",
            "as cited in meshd issue 16 (FD.io CSIT); not re-measured here",
        ),
        p(
            "IPVS (kernel)",
            "~1.2",
            "NAT, per core",
            "Intel Xeon with 10G NICs, kernel stack",
            "as cited in meshd issue 16 (DPVS's comparisons); not re-measured here",
        ),
    ]
}

fn ip(a: [u8; 4]) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(a)
}

/// A system under test, stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
#[derive(Debug)]
pub struct Running {
    name: String,
    child: Child,
    log: PathBuf,
    /// meshd's control socket.
    pub socket: Option<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM first: meshd and testpmd close their devices (memif disconnects cleanly).
        // Casts: a child's pid fits pid_t.
        #[allow(clippy::cast_possible_wrap)]
        let pid = self.child.id() as i32;
        let _ = crate::os::terminate(pid);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// The last lines of its log.
    pub fn tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(6)..].join("\n    ")
    }

    /// An error if it has exited.
    pub fn alive(&mut self) -> Result<(), MeshError> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Err(MeshError::Setup(format!(
                "{} exited ({st}):\n    {}",
                self.name,
                self.tail()
            )));
        }
        Ok(())
    }
}

fn spawn(dir: &Path, name: &str, prog: &Path, args: &[String]) -> Result<Running, MeshError> {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).map_err(|e| MeshError::Setup(e.to_string()))?;
    let g = f.try_clone().map_err(|e| MeshError::Setup(e.to_string()))?;
    let mut cmd = Proc::new(prog);
    // This thread is the generator, pinned to its core: the system goes where it says.
    crate::os::unpinned(&mut cmd);
    let child = cmd
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(g)
        .spawn()
        .map_err(|e| MeshError::Setup(format!("starting {}: {e}", prog.display())))?;
    Ok(Running {
        name: name.into(),
        child,
        log,
        socket: None,
    })
}

/// The generator's memif sockets in `dir`: uplink, tasks.
pub fn sockets(dir: &Path) -> [PathBuf; 2] {
    [dir.join("up.sock"), dir.join("tk.sock")]
}

/// Starts meshd as node n1 on the memif sockets of `dir`, as their client (the generator
/// serves them) or their server (`role`: meshd's), its worker on `core` busy-polling, and
/// configures it (see [`configure`]).
pub fn start_meshd(
    p: &Programs,
    dir: &Path,
    core: usize,
    role: Role,
) -> Result<Running, MeshError> {
    let [up, tk] = sockets(dir);
    let mac = |m: [u8; 6]| super::topo::mac_str(m);
    let sock = dir.join("n1.sock");
    let state = dir.join("n1.json");
    let _ = std::fs::remove_file(&state);
    let args: Vec<String> = vec![
        "--node".into(),
        "n1".into(),
        "--addr".into(),
        ip(N1_IP).to_string(),
        "--io".into(),
        "dpdk".into(),
        "--uplink".into(),
        format!("{},mac={}", role.vdev(0, &up), mac(N1_UP_MAC)),
        "--tasks".into(),
        format!("{},mac={}", role.vdev(1, &tk), mac(N1_TK_MAC)),
        "--dpdk-args".into(),
        format!(
            "--no-huge -m 256 --no-pci --file-prefix meshd-memif-{}",
            std::process::id()
        ),
        "--cores".into(),
        core.to_string(),
        "--busy-poll".into(),
        "--flows".into(),
        MESHD_FLOWS.to_string(),
        "--flow-state".into(),
        "none".into(),
        "--socket".into(),
        sock.display().to_string(),
        "--state".into(),
        state.display().to_string(),
    ];
    let mut r = spawn(dir, "meshd", &p.meshd, &args)?;
    r.socket = Some(sock.clone());
    let t0 = Instant::now();
    loop {
        r.alive()?;
        if ctl::client::request(
            &sock,
            &ctl::proto::Command::Query(ctl::proto::Query::NodeLs {}),
            Duration::from_secs(1),
        )
        .is_ok()
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(MeshError::Setup(format!(
                "meshd did not answer on {} in 30 s:\n    {}",
                sock.display(),
                r.tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    configure(&sock)?;
    Ok(r)
}

/// n1's view: peer n2, the ingress network, web (published 8080/udp, its task on n2) and sink
/// (its task on n1).
pub fn configure(sock: &Path) -> Result<(), MeshError> {
    use ctl::proto::{Change, Command, Response};
    use ctl::{
        Availability, Network, Node, Protocol, PublishMode, PublishedPort, Service, Task,
        TaskAddress, TaskState, INGRESS_VNI, VXLAN_PORT,
    };
    let mut endpoints = std::collections::BTreeMap::new();
    endpoints.insert("n1".to_string(), std::net::Ipv4Addr::new(10, 0, 0, 2));
    endpoints.insert("n2".to_string(), ip(N2_ENDPOINT));
    let net = Network {
        subnet6: None,
        name: "ingress".into(),
        vni: INGRESS_VNI,
        subnet: ctl::Ipv4Net::new(std::net::Ipv4Addr::new(10, 0, 0, 0), 24)
            .map_err(|e| MeshError::Setup(e.to_string()))?,
        gateway: std::net::Ipv4Addr::new(10, 0, 0, 1),
        ingress: true,
        endpoints,
        mtu: None,
        encryption: None,
    };
    let task = |name: &str, node: &str, a: [u8; 4]| Task {
        name: name.into(),
        node: node.into(),
        addresses: vec![TaskAddress {
            network: "ingress".into(),
            addr: ip(a),
        }],
        state: TaskState::Running,
        weight: 1,
        vlan: None,
    };
    let mut web = Service::new("web");
    web.ports.push(PublishedPort {
        protocol: Protocol::Udp,
        published: 8080,
        target: 5201,
        mode: PublishMode::Ingress,
    });
    for i in 0..WEB_TASKS {
        let [a, b, c, d] = WEB_TASK;
        web.tasks
            .push(task(&format!("web.{}", i + 1), "n2", [a, b, c, d + i]));
    }
    let mut sink = Service::new("sink");
    sink.tasks.push(task("sink.1", "n1", SINK_TASK));
    let cmds = [
        Command::Change(Change::NodeAdd {
            node: Node {
                name: "n2".into(),
                addr: ip(N2_IP),
                vtep: None,
                addr6: None,
                vtep_port: VXLAN_PORT,
                availability: Availability::Active,
            },
            endpoints: std::collections::BTreeMap::new(),
        }),
        Command::Change(Change::NetworkCreate { network: net }),
        Command::Change(Change::ServiceCreate { service: web }),
        Command::Change(Change::ServiceCreate { service: sink }),
    ];
    for cmd in cmds {
        match ctl::client::request(sock, &cmd, Duration::from_secs(10)) {
            Ok(Response::Ok(_)) => {}
            Ok(Response::Err(e)) => {
                return Err(MeshError::Setup(format!(
                    "meshd: {}: {}",
                    cmd.name(),
                    e.message
                )))
            }
            Err(e) => return Err(MeshError::Setup(e.to_string())),
        }
    }
    Ok(())
}

/// meshd's `stats` answer.
pub fn meshd_stats(r: &Running) -> Option<serde_json::Value> {
    let s = r.socket.as_ref()?;
    match ctl::client::request(
        s,
        &ctl::proto::Command::Query(ctl::proto::Query::Stats {}),
        Duration::from_secs(5),
    ) {
        Ok(ctl::proto::Response::Ok(ok)) => Some(ok.result),
        _ => None,
    }
}

fn start_testpmd(
    p: &Programs,
    dir: &Path,
    path: PathKind,
    main_core: usize,
    core: usize,
) -> Result<Running, MeshError> {
    let Some(testpmd) = p.testpmd.clone() else {
        return Err(MeshError::Setup(
            "dpdk-testpmd is not installed (Debian package dpdk; scripts/deps.sh --bench installs it)".into(),
        ));
    };
    let [up, tk] = sockets(dir);
    let lcores = if main_core == core {
        core.to_string()
    } else {
        format!("{},{}", main_core.min(core), main_core.max(core))
    };
    let mut args: Vec<String> = vec![
        "-l".into(),
        lcores,
        "--main-lcore".into(),
        main_core.to_string(),
        "--no-pci".into(),
        "--no-huge".into(),
        "--no-shconf".into(),
        "-m".into(),
        "512".into(),
        "--log-level".into(),
        "lib.eal:error".into(),
        format!("--vdev={}", Role::Client.vdev(0, &up)),
        format!("--vdev={}", Role::Client.vdev(1, &tk)),
        "--".into(),
        "--forward-mode=io".into(),
    ];
    args.push(match path {
        PathKind::Ingress => "--port-topology=loop".into(),
        PathKind::Decap => "--port-topology=paired".into(),
    });
    args.extend(
        [
            "--auto-start",
            "--stats-period",
            "10",
            "--no-mlockall",
            "--total-num-mbufs=16384",
            "--rxq=1",
            "--txq=1",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    spawn(dir, "testpmd", &testpmd, &args)
}

/// The frames of a path.
pub fn frames(path: PathKind, size: usize, flows: u32, gen_mac: [u8; 6]) -> Frames {
    let per_source = crate::pktgen::FLOWS_PER_ADDR;
    match path {
        PathKind::Ingress => Frames {
            inner: FrameSpec {
                src_mac: gen_mac,
                dst_mac: N1_UP_MAC,
                src_ip: ip(CLIENT_IP),
                dst_ip: ip(N1_IP),
                sport_base: 10_000,
                per_source,
                dport: 8080,
                proto: Proto::Udp,
                size,
                flows,
                tcp_flags: 0,
            },
            vxlan: None,
        },
        PathKind::Decap => Frames {
            inner: FrameSpec {
                src_mac: [0x02, 0x42, 10, 0, 0, 3],
                dst_mac: [0x02, 0x42, 10, 0, 0, 200],
                src_ip: ip(N2_ENDPOINT),
                dst_ip: ip(SINK_TASK),
                sport_base: 10_000,
                per_source,
                dport: 5201,
                proto: Proto::Udp,
                size,
                flows,
                tcp_flags: 0,
            },
            vxlan: Some(Vxlan {
                src_mac: gen_mac,
                dst_mac: N1_UP_MAC,
                src_ip: ip(N2_IP),
                dst_ip: ip(N1_IP),
                vni: ctl::INGRESS_VNI,
            }),
        },
    }
}

fn trial(target: Option<f64>, s: &Sent, got: &Received, loss_pct: f64) -> Trial {
    let lost = s.frames.saturating_sub(got.frames);
    let loss = if s.frames > 0 {
        lost as f64 * 100.0 / s.frames as f64
    } else {
        100.0
    };
    let loss_ok = s.frames > 0 && loss <= loss_pct;
    Trial {
        target_pps: target,
        sent: s.frames,
        received: got.frames,
        secs: s.secs,
        sent_pps: s.pps(),
        delivered_pps: if s.secs > 0.0 {
            got.frames as f64 / s.secs
        } else {
            0.0
        },
        loss_pct: loss,
        reordered: got.reordered,
        sink_dropped: 0,
        loss_ok,
        passed: loss_ok && target.is_none_or(|t| s.pps() >= 0.95 * t),
    }
}

struct Gen<'a> {
    m: &'a mut Memif,
    stop: &'a AtomicBool,
    quiet: Duration,
}

impl Gen<'_> {
    fn step(
        &mut self,
        f: &Frames,
        rate: Option<f64>,
        dur: Duration,
    ) -> Result<(Sent, Received), MeshError> {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(MeshError::Interrupted);
        }
        self.m
            .run(f, 0, rate, dur, self.stop, self.quiet)
            .map_err(|e| MeshError::Run(e.to_string()))
    }
}

fn say(what: &str, t: &Trial) {
    eprintln!(
        "      {what:<10} offered {:>8.1} kpps  delivered {:>8.1} kpps  loss {:>7.3}%{}",
        t.sent_pps / 1e3,
        t.delivered_pps / 1e3,
        t.loss_pct,
        if t.passed { "" } else { "  (fail)" }
    );
}

/// One cell for the running system.
#[allow(clippy::cast_precision_loss)]
fn measure(
    g: &mut Gen<'_>,
    o: &MemifOptions,
    system: &str,
    path: PathKind,
    size: usize,
    flows: u32,
    round: usize,
) -> Result<MemifRun, MeshError> {
    let f = frames(path, size, flows, g.m.mac(0));
    // Warm up: until frames come back (ARP, the memif rings), then every flow once.
    let t0 = Instant::now();
    loop {
        let (_, got) = g.step(&f, Some(50_000.0), Duration::from_millis(100))?;
        if got.frames > 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(MeshError::Run(format!(
                "{system}, {} path: nothing came back in 10 s of warm-up",
                path.name()
            )));
        }
    }
    // Every flow once, at a rate meshd makes new flows at (each a DNAT pick, a masquerade port
    // and two index entries), so the measured steps run on established flows.
    let all = f64::from(flows);
    g.step(
        &f,
        Some(WARM_PPS),
        Duration::from_secs_f64((all / WARM_PPS).max(0.05) * 1.1),
    )?;
    let (s, got) = g.step(&f, None, o.step)?;
    let full = trial(None, &s, &got, o.loss_pct);
    say("full load", &full);
    let mut zl = if full.loss_ok { full.sent_pps } else { 0.0 };
    let (mut lo, mut hi) = (0.0, full.sent_pps);
    let mut search = Vec::new();
    for _ in 0..o.steps {
        let mid = (lo + hi) / 2.0;
        if mid < 1000.0 {
            break;
        }
        let (s, got) = g.step(&f, Some(mid), o.step)?;
        let t = trial(Some(mid), &s, &got, o.loss_pct);
        say("search", &t);
        if t.passed {
            lo = mid;
            zl = zl.max(t.sent_pps);
        } else {
            hi = mid;
        }
        search.push(t);
    }
    let at = o.latency_pps.unwrap_or((zl * 0.5).max(1000.0));
    let (s, got) = g.step(&f, Some(at), o.latency)?;
    let lt = trial(Some(at), &s, &got, o.loss_pct);
    let latency = got.percentiles();
    eprintln!(
        "      latency at {:.1} kpps: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
        at / 1e3,
        latency.p50_us,
        latency.p99_us,
        latency.p999_us
    );
    let _ = lt;
    Ok(MemifRun {
        system: system.into(),
        path,
        size,
        flows,
        round,
        full_load: full,
        zero_loss_pps: zl,
        search,
        latency_at_pps: at,
        latency,
        meshd_stats: None,
    })
}

/// Runs the comparison and writes the report.
pub fn run(o: &MemifOptions) -> Result<MemifReport, MeshError> {
    if !testbed::sys::is_root() {
        return Err(MeshError::NotRoot);
    }
    let p = Programs::find()?;
    if p.testpmd.is_none() {
        return Err(MeshError::Setup(
            "dpdk-testpmd is not installed (Debian package dpdk; scripts/deps.sh --bench installs it)".into(),
        ));
    }
    std::fs::create_dir_all(DIR).map_err(|e| MeshError::Setup(format!("{DIR}: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let machine = super::machine();
    // The generator: EAL in this process, pinned to its core (EAL pins this thread).
    let dir = Path::new(DIR);
    let mut m = Memif::open(&sockets(dir), Role::Server, o.gen_core, 512)
        .map_err(|e| MeshError::Setup(format!("the memif generator: {e}")))?;
    let mut g = Gen {
        m: &mut m,
        stop: &stop,
        quiet: Duration::from_millis(20),
    };
    let mut runs = Vec::new();
    let systems = ["meshd", "testpmd"];
    for round in 0..o.rounds {
        for &path in &o.paths {
            // Alternate which system goes first, round by round.
            let order: Vec<&str> = if round % 2 == 0 {
                systems.to_vec()
            } else {
                systems.iter().rev().copied().collect()
            };
            for system in order {
                eprintln!(
                    "round {}/{}, {} path: {system}",
                    round + 1,
                    o.rounds,
                    path.name()
                );
                let mut r = match system {
                    "meshd" => start_meshd(&p, dir, o.sut_core, Role::Client)?,
                    _ => start_testpmd(&p, dir, path, o.gen_core, o.sut_core)?,
                };
                let up = g.m.wait_up(Duration::from_secs(30), &stop);
                r.alive()?;
                up.map_err(|e| MeshError::Setup(format!("{e}\n    {}", r.tail())))?;
                for &size in &o.sizes {
                    for &flows in &o.flows {
                        eprintln!("    {size} B, {flows} flows");
                        let mut run = measure(&mut g, o, system, path, size, flows, round)?;
                        r.alive()?;
                        run.meshd_stats = meshd_stats(&r);
                        runs.push(run);
                    }
                }
                drop(r);
                // The generator's side sees the peer go before the next one comes.
                let t0 = Instant::now();
                while g.m.up() && t0.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    let leaked = g.m.mbufs_in_use();
    let report = report(o, machine, runs, leaked);
    report.write(&o.out, o.docs.as_deref())?;
    Ok(report)
}

fn report(o: &MemifOptions, machine: Machine, runs: Vec<MemifRun>, leaked: u32) -> MemifReport {
    let mut summaries = Vec::new();
    let mut ratios = Vec::new();
    for &path in &o.paths {
        for &size in &o.sizes {
            for &flows in &o.flows {
                let mut pair = Vec::new();
                for system in ["meshd", "testpmd"] {
                    let rs: Vec<&MemifRun> = runs
                        .iter()
                        .filter(|r| {
                            r.system == system
                                && r.path == path
                                && r.size == size
                                && r.flows == flows
                        })
                        .collect();
                    if rs.is_empty() {
                        continue;
                    }
                    let pick = |f: &dyn Fn(&MemifRun) -> f64| {
                        Spread::of(rs.iter().map(|r| f(r)).collect())
                    };
                    let s = MemifSummary {
                        system: system.into(),
                        path,
                        size,
                        flows,
                        zero_loss_pps: pick(&|r| r.zero_loss_pps),
                        full_load_delivered_pps: pick(&|r| r.full_load.delivered_pps),
                        generator_limited: rs.iter().filter(|r| r.full_load.loss_ok).count(),
                        p50_us: pick(&|r| r.latency.p50_us),
                        p99_us: pick(&|r| r.latency.p99_us),
                        p999_us: pick(&|r| r.latency.p999_us),
                    };
                    pair.push(s.clone());
                    summaries.push(s);
                }
                if let [m, t] = pair.as_slice() {
                    let zl = ratio(m.zero_loss_pps.median, t.zero_loss_pps.median);
                    let p99 = ratio(m.p99_us.median, t.p99_us.median);
                    ratios.push(MemifRatio {
                        path,
                        size,
                        flows,
                        zero_loss: zl,
                        p99,
                        met: zl >= 0.9 && p99 <= 1.5 && o.latency_pps.is_none(),
                    });
                }
            }
        }
    }
    let mut notes = vec![
        "Generator and sink: pktgen's memif mode in the bench process on its own core (memif server); the system under test on the other core (memif client), one forwarding core each: meshd one worker busy-polling, testpmd one forwarding lcore (its main lcore shares the generator's core and idles).".to_string(),
        "Sizes are the client's frame, FCS included; the VXLAN frame on the underlay is 50 bytes more (1468 B in the overlay is 1518 B on the underlay: memif takes no larger MTU).".to_string(),
        format!("The generator's mbuf pool had {leaked} mbufs in use at the end (its RX rings' share; meshd's pool counts are in each run's meshd_stats)."),
    ];
    notes.push("memif pushes back: a system slower than the generator fills the generator's TX ring, and the frames the ring refuses are not sent (nor counted lost). So at full load every system delivers about all that was sent, and the full-load rate is the system's own forwarding rate, up to the generator's ceiling (one core that also sinks everything; the highest full-load rate in a run is a floor for it: on one host about 4.5 Mpps at 64 B, on another about 7). The zero-loss search then finds the highest rate without the few frames a scheduling hiccup of either core loses.".into());
    MemifReport {
        command: o.command.clone(),
        date_utc: super::utc_now(),
        machine,
        quick: o.quick,
        rounds: o.rounds,
        step_secs: o.step.as_secs_f64(),
        search_steps: o.steps,
        loss_threshold_pct: o.loss_pct,
        latency_secs: o.latency.as_secs_f64(),
        latency_pps: o.latency_pps,
        summaries,
        ratios,
        peers: peers(),
        runs,
        notes,
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn mpps(s: Spread) -> String {
    if s.n > 1 {
        format!(
            "{:.2} ({:.2}–{:.2})",
            s.median / 1e6,
            s.min / 1e6,
            s.max / 1e6
        )
    } else {
        format!("{:.2}", s.median / 1e6)
    }
}

impl MemifReport {
    /// The Markdown table, ratios and peers.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# bench mesh --io memif: meshd vs dpdk-testpmd io-forward over DPDK memif\n\n",
        );
        out.push_str(&format!(
            "`{}` — {} — {} ({} CPUs, Linux {}), load at start {}. {} round(s), steps of {:.1} s, {} search steps, loss threshold {}%, latency over {:.1} s at {}.\n\n",
            self.command,
            self.date_utc,
            self.machine.cpu_model,
            self.machine.cpus,
            self.machine.kernel,
            self.machine.load_avg_at_start,
            self.rounds,
            self.step_secs,
            self.search_steps,
            self.loss_threshold_pct,
            self.latency_secs,
            match self.latency_pps {
                None => "half the zero-loss rate".to_string(),
                Some(r) => format!("{:.1} kpps for both systems (`--latency-kpps`)", r / 1e3),
            }
        ));
        out.push_str("| path | frame | flows | system | zero-loss Mpps | full-load delivered Mpps | p50 µs | p99 µs | p99.9 µs |\n|---|---|---|---|---|---|---|---|---|\n");
        for s in &self.summaries {
            out.push_str(&format!(
                "| {} | {} B | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
                s.path.name(),
                s.size,
                flows_str(s.flows),
                s.system,
                mpps(s.zero_loss_pps),
                mpps(s.full_load_delivered_pps),
                s.p50_us.median,
                s.p99_us.median,
                s.p999_us.median
            ));
        }
        let p99 = match self.latency_pps {
            None => "meshd / testpmd p99 (target ≤ 1.5)",
            Some(_) => "meshd / testpmd p99 at the same rate (the target is set at half the zero-loss rate: not judged)",
        };
        out.push_str(&format!(
            "\n| path | frame | flows | meshd / testpmd zero-loss (target ≥ 0.90) | {p99} | met |\n|---|---|---|---|---|---|\n"
        ));
        for r in &self.ratios {
            out.push_str(&format!(
                "| {} | {} B | {} | {:.2} | {:.2} | {} |\n",
                r.path.name(),
                r.size,
                flows_str(r.flows),
                r.zero_loss,
                r.p99,
                match (r.met, self.latency_pps) {
                    (true, _) => "yes",
                    (false, None) => "**no**",
                    (false, Some(_)) => "—",
                }
            ));
        }
        out.push_str("\nPublished per-core figures of the peers (their hardware, not this machine's: a comparison of orders of magnitude, not a race):\n\n| system | Mpps per core | what | hardware | source |\n|---|---|---|---|---|\n");
        for p in &self.peers {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                p.system, p.mpps_per_core, p.what, p.hardware, p.source
            ));
        }
        out.push('\n');
        for n in &self.notes {
            out.push_str(&format!("- {n}\n"));
        }
        out
    }

    /// Writes memif.json, memif.md and memif.svg into `out` (and bench-memif.* into `docs`).
    pub fn write(&self, out: &Path, docs: Option<&Path>) -> Result<(), MeshError> {
        let io = |p: &Path, e: std::io::Error| MeshError::Report(format!("{}: {e}", p.display()));
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        let json =
            serde_json::to_string_pretty(self).map_err(|e| MeshError::Report(e.to_string()))?;
        let p = out.join("memif.json");
        std::fs::write(&p, json).map_err(|e| io(&p, e))?;
        let p = out.join("memif.md");
        std::fs::write(&p, self.markdown()).map_err(|e| io(&p, e))?;
        self.chart(&out.join("memif.svg"))?;
        if let Some(d) = docs {
            let p = d.join("bench-memif.md");
            std::fs::write(&p, self.markdown()).map_err(|e| io(&p, e))?;
            self.chart(&d.join("bench-memif.svg"))?;
        }
        Ok(())
    }

    /// Bars: each cell's zero-loss rate, meshd beside testpmd (whiskers: min–max over rounds).
    pub fn chart(&self, path: &Path) -> Result<(), MeshError> {
        use plotters::prelude::*;
        let err = |e: String| MeshError::Report(format!("drawing {}: {e}", path.display()));
        let cells: Vec<(PathKind, usize, u32)> = self
            .ratios
            .iter()
            .map(|r| (r.path, r.size, r.flows))
            .collect();
        let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let top = self
            .summaries
            .iter()
            .map(|s| s.zero_loss_pps.max / 1e6)
            .fold(1.0f64, f64::max)
            * 1.2;
        let n = cells.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "bench mesh --io memif: zero-loss Mpps, one core (bars: median, whiskers: min–max)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n as f64, 0f64..top)
            .map_err(|e| err(e.to_string()))?;
        let labels: Vec<String> = cells
            .iter()
            .map(|(p, s, f)| format!("{} {s}B {}", p.name(), flows_str(*f)))
            .collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                // Casts: a bar position, 0 to a few dozen.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 && i < labels.len() {
                    labels[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc("Mpps")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let colors = [RGBColor(31, 119, 180), RGBColor(255, 127, 14)];
        for (k, system) in ["meshd", "testpmd"].iter().enumerate() {
            let color = colors[k];
            let bars: Vec<(f64, Spread)> = cells
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    self.summaries
                        .iter()
                        .find(|s| s.system == *system && (s.path, s.size, s.flows) == *c)
                        .map(|s| (i as f64 + 0.1 + 0.4 * k as f64, s.zero_loss_pps))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|(x, s)| {
                    Rectangle::new([(*x, 0.0), (*x + 0.38, s.median / 1e6)], color.filled())
                }))
                .map_err(|e| err(e.to_string()))?
                .label(*system)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            chart
                .draw_series(bars.iter().map(|(x, s)| {
                    PathElement::new(
                        vec![(*x + 0.19, s.min / 1e6), (*x + 0.19, s.max / 1e6)],
                        BLACK.stroke_width(1),
                    )
                }))
                .map_err(|e| err(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))
    }
}

fn flows_str(f: u32) -> String {
    match f {
        1024 => "1K".into(),
        0x10_0000 => "1M".into(),
        _ => f.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(frames: u64, secs: f64) -> Sent {
        Sent {
            frames,
            secs,
            ring_full: 0,
            start_ns: 0,
        }
    }

    fn received(frames: u64) -> Received {
        Received {
            frames,
            reordered: 0,
            sink_dropped: 0,
            latency: crate::pktgen::latency_histogram(),
        }
    }

    #[test]
    fn a_trial_passes_on_loss_within_the_threshold_at_the_rate_asked() {
        let t = trial(Some(1e6), &sent(1_000_000, 1.0), &received(1_000_000), 0.0);
        assert!(t.passed && t.loss_ok);
        let t = trial(Some(1e6), &sent(1_000_000, 1.0), &received(999_999), 0.0);
        assert!(!t.passed && !t.loss_ok);
        // Lossless, but the generator sent only 90% of the rate asked: not a pass.
        let t = trial(Some(1e6), &sent(900_000, 1.0), &received(900_000), 0.0);
        assert!(t.loss_ok && !t.passed);
        let t = trial(None, &sent(0, 1.0), &received(0), 0.1);
        assert!(!t.loss_ok);
    }

    #[test]
    fn ratios_compare_meshd_with_testpmd_per_cell_and_say_whether_targets_are_met() {
        let o = MemifOptions {
            quick: true,
            rounds: 1,
            paths: vec![PathKind::Ingress],
            sizes: vec![64],
            flows: vec![1024],
            step: Duration::from_secs(1),
            steps: 1,
            loss_pct: 0.0,
            latency: Duration::from_secs(1),
            latency_pps: None,
            gen_core: 0,
            sut_core: 1,
            out: PathBuf::from("/nonexistent"),
            docs: None,
            command: "test".into(),
        };
        let run = |system: &str, zl: f64, p99: f64| MemifRun {
            system: system.into(),
            path: PathKind::Ingress,
            size: 64,
            flows: 1024,
            round: 0,
            full_load: trial(None, &sent(10, 1.0), &received(9), 0.0),
            zero_loss_pps: zl,
            search: vec![],
            latency_at_pps: zl / 2.0,
            latency: Percentiles {
                p99_us: p99,
                ..Percentiles::default()
            },
            meshd_stats: None,
        };
        let machine = Machine {
            cpus: 2,
            kernel: String::new(),
            cpu_model: String::new(),
            load_avg_at_start: String::new(),
        };
        // meshd at `zl` against testpmd at 5 Mpps, p99 30 µs against 25.
        let pair = |o: &MemifOptions, zl: f64| {
            report(
                o,
                machine.clone(),
                vec![run("meshd", zl, 30.0), run("testpmd", 5.0e6, 25.0)],
                0,
            )
        };
        let r = pair(&o, 4.6e6);
        assert_eq!(r.ratios.len(), 1);
        assert!((r.ratios[0].zero_loss - 0.92).abs() < 1e-9);
        assert!((r.ratios[0].p99 - 1.2).abs() < 1e-9);
        assert!(r.ratios[0].met);
        let r = pair(&o, 4.0e6);
        assert!(!r.ratios[0].met);
        let md = r.markdown();
        assert!(
            md.contains("| ingress | 64 B | 1K | 0.80 | 1.20 | **no** |"),
            "{md}"
        );
        assert!(md.contains("Katran"), "{md}");
        // Latency at a rate given: the same load on both, the p99 target not judged.
        let fixed = MemifOptions {
            latency_pps: Some(1.9e6),
            ..o
        };
        let r = pair(&fixed, 4.6e6);
        assert!(!r.ratios[0].met);
        let md = r.markdown();
        assert!(
            md.contains("latency over 1.0 s at 1900.0 kpps for both systems"),
            "{md}"
        );
        assert!(
            md.contains("| ingress | 64 B | 1K | 0.92 | 1.20 | — |"),
            "{md}"
        );
    }

    #[test]
    fn the_decap_path_sends_vxlan_from_the_peer_to_a_local_task() {
        let f = frames(PathKind::Decap, 64, 1024, [2, 0, 0, 0, 0, 9]);
        let v = f.vxlan.expect("decap frames are VXLAN");
        assert_eq!((v.src_ip, v.dst_ip), (ip(N2_IP), ip(N1_IP)));
        assert_eq!(f.inner.dst_ip, ip(SINK_TASK));
        assert!(frames(PathKind::Ingress, 64, 1024, [0; 6]).vxlan.is_none());
    }
}
