//! The namespaces of `bench mesh` and the three systems built on them.
//!
//! ```text
//!  meshd-bench-gen        meshd-bench-sw          meshd-bench-n1 (ingress node)
//!  eth0 192.168.100.100 ── br0 ─┬─────────────────── up0 192.168.100.11   tk0 ─ tkx (no tasks)
//!  (pktgen TX, TCP client)      │
//!                               └─────────────────── up0 192.168.100.12   meshd-bench-n2 (task node)
//!                                                    tk0 ─────────────── eth0  meshd-bench-sink
//!                                                                        10.0.0.100, .101, ...
//!                                                                        (pktgen sink, whoami)
//! ```
//!
//! The generator sends to 192.168.100.11:8080 (the published port); the ingress node n1 DNATs
//! to a task (round-robin), masquerades to its endpoint 10.0.0.2 and sends the frame over VXLAN
//! (VNI 4096) to n2, which decapsulates and delivers it to the sink, which holds every task
//! address. The switch is a Linux bridge, because a node's one uplink carries both the clients'
//! traffic and the VXLAN traffic, as on a real underlay.
//!
//! Systems on n1 and n2:
//! - [`System::Meshd`]: meshd owns up0 and tk0 (no kernel addresses), configured through its
//!   control socket.
//! - [`System::Kernel`]: Swarm's way with the kernel: addresses on up0, nftables DNAT with
//!   `numgen inc mod N` over the tasks and masquerade on n1, a VXLAN device in a bridge on both
//!   nodes, static FDB and neighbour entries as Docker programs them.
//! - [`System::MeshdXdp`]: the same with `--io afxdp` (one worker per node): AF_XDP sockets fed
//!   by meshd's XDP program in native mode on up0 and tk0 instead of AF_PACKET rings.
//! - [`System::AfPacketFwd`], [`System::AfXdpFwd`]: `pktgen forward` on both nodes, on the same
//!   ports as meshd (AF_PACKET or AF_XDP) but with no pipeline: n1 sends up0 → up0 rewriting the
//!   MACs, n2 sends up0 → tk0.
//! - [`System::Testpmd`]: `dpdk-testpmd` on AF_PACKET vdevs: n1 forwards up0 → up0 rewriting
//!   the MACs to n2's (`mac` mode), n2 forwards up0 → tk0 (`io` mode). No NAT, no VXLAN: the
//!   raw cost of moving a frame through the two nodes' veths.
//!
//! The bare path ([`Topology::bare`]), for the cost step: only the generator and the sink, both
//! on the switch (`eth0 ── br0 ── eth0`), the generator sending to the sink's MAC.
//!
//! Everything is named `meshd-bench-*` and removed on drop, processes first.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use ctl::proto::{Change, Command, Query, Response};
use ctl::{
    Availability, Network, Node, Protocol, PublishMode, PublishedPort, Service, Task, TaskAddress,
    TaskState, INGRESS_VNI, VXLAN_PORT,
};
use testbed::sys;

use super::MeshError;

pub const PREFIX: &str = "meshd-bench-";
pub const GEN_NS: &str = "meshd-bench-gen";
pub const SW_NS: &str = "meshd-bench-sw";
pub const N1_NS: &str = "meshd-bench-n1";
pub const N2_NS: &str = "meshd-bench-n2";
pub const SINK_NS: &str = "meshd-bench-sink";
const ALL_NS: [&str; 5] = [GEN_NS, SW_NS, N1_NS, N2_NS, SINK_NS];

pub const GEN_MAC: [u8; 6] = [0x02, 0x62, 0, 0, 0, 0x64];
pub const N1_UP_MAC: [u8; 6] = [0x02, 0x62, 0, 0, 1, 0];
pub const N1_TK_MAC: [u8; 6] = [0x02, 0x62, 0, 0, 1, 1];
pub const N1_BR_MAC: [u8; 6] = [0x02, 0x62, 0, 0, 1, 2];
pub const N2_UP_MAC: [u8; 6] = [0x02, 0x62, 0, 0, 2, 0];
pub const N2_TK_MAC: [u8; 6] = [0x02, 0x62, 0, 0, 2, 1];
pub const N2_BR_MAC: [u8; 6] = [0x02, 0x62, 0, 0, 2, 2];
pub const SINK_MAC: [u8; 6] = [0x02, 0x62, 0, 0, 3, 0];

pub const GEN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 100);
pub const N1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 11);
pub const N2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 12);
pub const N1_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const N2_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
/// The published port (UDP and TCP).
pub const PUBLISHED: u16 = 8080;
/// The tasks' UDP port (the sink drops these frames after counting) and HTTP port (whoami).
pub const UDP_TARGET: u16 = 5201;
pub const HTTP_TARGET: u16 = 80;

/// Task i's address: 10.0.0.(100 + i).
// Casts: a task index of the bench's topology, a handful (the address's last octet).
#[allow(clippy::cast_possible_truncation)]
pub fn task_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 100 + i as u8)
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A system under test, as run on the two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// meshd with this many workers per node.
    Meshd {
        workers: usize,
    },
    Kernel,
    Testpmd,
    /// `pktgen forward` on both nodes: meshd's AF_PACKET ports without the pipeline.
    AfPacketFwd,
    /// meshd with one worker per node on AF_XDP ports (`--io afxdp`).
    MeshdXdp,
    /// `pktgen forward --io afxdp` on both nodes: meshd's AF_XDP ports without the pipeline.
    AfXdpFwd,
}

impl System {
    pub fn name(&self) -> String {
        match self {
            System::Meshd { workers: 1 } => "meshd (1 worker)".into(),
            System::Meshd { workers } => format!("meshd ({workers} workers)"),
            System::Kernel => "kernel (nftables+vxlan)".into(),
            System::Testpmd => "testpmd (veth ceiling)".into(),
            System::AfPacketFwd => "AF_PACKET forwarder (veth ceiling)".into(),
            System::MeshdXdp => "meshd AF_XDP (1 worker)".into(),
            System::AfXdpFwd => "AF_XDP forwarder (veth ceiling)".into(),
        }
    }
    /// A short key for JSON and file names.
    pub fn key(&self) -> String {
        match self {
            System::Meshd { workers } => format!("meshd-{workers}w"),
            System::Kernel => "kernel".into(),
            System::Testpmd => "testpmd".into(),
            System::AfPacketFwd => "afpacket-fwd".into(),
            System::MeshdXdp => "meshd-afxdp".into(),
            System::AfXdpFwd => "afxdp-fwd".into(),
        }
    }

    /// Whether it is meshd (whoami, the TCP run and meshd's own counters apply).
    pub fn is_meshd(&self) -> bool {
        matches!(self, System::Meshd { .. } | System::MeshdXdp)
    }

    /// Whether it only moves frames (no NAT, no TCP run).
    pub fn is_forwarder(&self) -> bool {
        matches!(
            self,
            System::Testpmd | System::AfPacketFwd | System::AfXdpFwd
        )
    }
}

/// Where the programs the bench starts are.
#[derive(Debug, Clone)]
pub struct Programs {
    pub meshd: PathBuf,
    /// The testbed binary, for `testbed whoami`.
    pub testbed: PathBuf,
    /// `dpdk-testpmd`, if installed.
    pub testpmd: Option<PathBuf>,
    /// pktgen, for the AF_PACKET forwarder.
    pub pktgen: PathBuf,
}

impl Programs {
    /// meshd and testbed next to this executable (cargo puts a workspace's binaries together),
    /// or from `MESHD_BIN` / `TESTBED_BIN`; dpdk-testpmd from `TESTPMD_BIN` or the PATH.
    pub fn find() -> Result<Programs, MeshError> {
        let exe = std::env::current_exe()
            .map_err(|e| MeshError::Setup(format!("finding this executable: {e}")))?;
        let dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
        let pick = |var: &str, name: &str| -> Result<PathBuf, MeshError> {
            if let Some(p) = std::env::var_os(var) {
                return Ok(PathBuf::from(p));
            }
            for d in [dir.as_path(), dir.parent().unwrap_or(&dir)] {
                let p = d.join(name);
                if p.is_file() {
                    return Ok(p);
                }
            }
            Err(MeshError::Setup(format!(
                "{name} not found next to {}: build the workspace first (`cargo build --release` at the root), or set {var}",
                exe.display()
            )))
        };
        let testpmd = std::env::var_os("TESTPMD_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                ["/usr/bin/dpdk-testpmd", "/usr/local/bin/dpdk-testpmd"]
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            });
        Ok(Programs {
            meshd: pick("MESHD_BIN", "meshd")?,
            testbed: pick("TESTBED_BIN", "testbed")?,
            pktgen: pick("PKTGEN_BIN", "pktgen")?,
            testpmd,
        })
    }
}

/// Removes every `meshd-bench-*` namespace (and what runs in it) left by an earlier run.
pub fn remove_leftovers() -> Result<(), MeshError> {
    for ns in sys::netns_with_prefix(PREFIX).map_err(setup)? {
        sys::kill_netns_pids(&ns);
        let _ = sys::ip(&["netns", "del", &ns]);
    }
    Ok(())
}

fn setup<E: std::fmt::Display>(e: E) -> MeshError {
    MeshError::Setup(e.to_string())
}

/// The namespaces and links of one system's run, with the processes started in them. Dropping
/// it stops the processes and deletes the namespaces.
#[derive(Debug)]
pub struct Topology {
    /// `None`: the bare path.
    pub system: Option<System>,
    pub run_dir: PathBuf,
    children: Vec<(String, Child)>,
    made: Vec<&'static str>,
    /// The meshds' flow-state files (on tmpfs, as meshd's default), removed at the end.
    flow_files: Vec<PathBuf>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.made.iter().rev() {
            sys::kill_netns_pids(ns);
            let _ = sys::ip(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        for f in &self.flow_files {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Topology {
    /// Creates the run directory and the namespaces `namespaces`.
    fn create(system: Option<System>, namespaces: &[&'static str]) -> Result<Topology, MeshError> {
        let run_dir = PathBuf::from("/run/meshd-bench");
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| MeshError::Setup(format!("creating {}: {e}", run_dir.display())))?;
        let mut t = Topology {
            system,
            run_dir,
            children: Vec::new(),
            made: Vec::new(),
            flow_files: Vec::new(),
        };
        for ns in namespaces {
            sys::netns_add(ns).map_err(setup)?;
            t.made.push(ns);
        }
        Ok(t)
    }

    /// Builds the namespaces and links (see the module documentation); no system yet.
    pub fn build(system: System, tasks: usize) -> Result<Topology, MeshError> {
        let t = Topology::create(Some(system), &ALL_NS)?;
        switch()?;
        to_switch("gen", GEN_NS, "eth0", GEN_MAC)?;
        to_switch("n1", N1_NS, "up0", N1_UP_MAC)?;
        to_switch("n2", N2_NS, "up0", N2_UP_MAC)?;
        // n2's tasks port to the sink; n1's tasks port goes nowhere (no tasks on n1).
        let ip = |ns: &str, args: &[&str]| sys::ip_in(ns, args).map_err(setup);
        let pair = |ns: &str, a: &str, mac: [u8; 6], peer_ns: &str, b: &str, peer_mac: [u8; 6]| {
            ip(
                ns,
                &[
                    "link", "add", "name", a, "type", "veth", "peer", "name", b, "netns", peer_ns,
                ],
            )?;
            ip(
                ns,
                &["link", "set", "dev", a, "address", &mac_str(mac), "up"],
            )?;
            ip(
                peer_ns,
                &["link", "set", "dev", b, "address", &mac_str(peer_mac), "up"],
            )?;
            sys::offloads_off(ns, a).map_err(setup)?;
            sys::offloads_off(peer_ns, b).map_err(setup)
        };
        pair(N2_NS, "tk0", N2_TK_MAC, SINK_NS, "eth0", SINK_MAC)?;
        pair(
            N1_NS,
            "tk0",
            N1_TK_MAC,
            N1_NS,
            "tkx",
            [0x02, 0x62, 0, 0, 1, 9],
        )?;
        hosts(tasks)?;
        Ok(t)
    }

    /// The bare path: the generator and the sink on the switch, no node between them, for the
    /// generator's and the sink's own CPU cost. The generator sends to the sink's MAC (see
    /// [`super::cost`]); the switch knows it, so nothing is flooded.
    pub fn bare(tasks: usize) -> Result<Topology, MeshError> {
        let t = Topology::create(None, &[GEN_NS, SW_NS, SINK_NS])?;
        switch()?;
        to_switch("gen", GEN_NS, "eth0", GEN_MAC)?;
        to_switch("sink", SINK_NS, "eth0", SINK_MAC)?;
        sys::exec_in(
            SW_NS,
            "bridge",
            &[
                "fdb",
                "add",
                &mac_str(SINK_MAC),
                "dev",
                "sink",
                "master",
                "static",
            ],
        )
        .map_err(setup)?;
        hosts(tasks)?;
        Ok(t)
    }

    /// The processes started in the topology (for the CPU they spend).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }

    /// Starts `prog args` in `ns` with its output in `<run_dir>/<log>.log`.
    pub fn spawn(
        &mut self,
        ns: &str,
        prog: &Path,
        args: &[String],
        log: &str,
    ) -> Result<(), MeshError> {
        let path = self.run_dir.join(format!("{log}.log"));
        let child = sys::spawn_in(ns, prog, args, &path, &[("NO_COLOR", "1")]).map_err(setup)?;
        self.children.push((log.to_string(), child));
        Ok(())
    }

    /// The last lines of every log, for an error message.
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        for (name, _) in &self.children {
            let text = std::fs::read_to_string(self.run_dir.join(format!("{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("\n--- {name} log:"));
            for l in &lines[lines.len().saturating_sub(8)..] {
                s.push_str("\n    ");
                s.push_str(l);
            }
        }
        s
    }

    /// meshd's counters on both nodes (`meshctl stats`), for the report.
    pub fn meshd_stats(&self) -> Vec<serde_json::Value> {
        ["n1", "n2"]
            .iter()
            .filter_map(|n| {
                let s = self.run_dir.join(format!("{n}.sock"));
                match ctl::client::request(
                    &s,
                    &Command::Query(Query::Stats {}),
                    Duration::from_secs(5),
                ) {
                    Ok(Response::Ok(ok)) => {
                        Some(serde_json::json!({ "node": n, "stats": ok.result }))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Whether every started process still runs.
    pub fn check_alive(&mut self) -> Result<(), MeshError> {
        for (name, c) in &mut self.children {
            if let Ok(Some(st)) = c.try_wait() {
                return Err(MeshError::Setup(format!("{name} exited ({st})")));
            }
        }
        Ok(())
    }

    /// Starts the task server (whoami on the HTTP target port) in the sink.
    pub fn start_whoami(&mut self, p: &Programs) -> Result<(), MeshError> {
        let ready = self.run_dir.join("whoami.ready");
        let args: Vec<String> = [
            "whoami",
            "--name",
            "sink",
            "--http",
            &HTTP_TARGET.to_string(),
            "--ready",
            &ready.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.spawn(SINK_NS, &p.testbed, &args, "whoami")?;
        wait_for(Duration::from_secs(10), || ready.exists()).map_err(|_| {
            MeshError::Setup(format!("whoami did not start in 10 s{}", self.log_tails()))
        })
    }

    /// Sets the system up on n1 and n2.
    ///
    /// Each node's uplink steers what it receives to the node's cores with RPS, as a NIC's
    /// interrupt would: without it, a veth hands a frame on in the softirq of whoever sent it,
    /// so the kernel's whole forwarding path (and meshd's ring copies) would run on the
    /// generator's thread. One core per node (n1 on the first of `cores`, n2 on the second),
    /// every core for meshd with more than one worker.
    pub fn start_system(
        &mut self,
        p: &Programs,
        tasks: usize,
        cores: &[usize],
        rps: bool,
    ) -> Result<(), MeshError> {
        let Some(system) = self.system else {
            return Err(MeshError::Setup(
                "the bare path has no system to start".into(),
            ));
        };
        let n = cores.len().max(1);
        let mask = |cs: &[usize]| cs.iter().fold(0u64, |m, c| m | 1u64 << (c % 64));
        let (m1, m2) = match system {
            System::Meshd { workers } if workers > 1 => (mask(cores), mask(cores)),
            _ => (
                mask(&[cores.first().copied().unwrap_or(0)]),
                mask(&[cores.get(1 % n).copied().unwrap_or(0)]),
            ),
        };
        if rps {
            steer(N1_NS, "up0", m1)?;
            steer(N2_NS, "up0", m2)?;
        }
        match system {
            System::Meshd { workers } => self.start_meshd(p, tasks, workers, cores, "afpacket"),
            System::MeshdXdp => self.start_meshd(p, tasks, 1, cores, "afxdp"),
            System::Kernel => self.start_kernel(tasks),
            System::Testpmd => self.start_testpmd(p, cores),
            System::AfPacketFwd => self.start_forwarder(p, cores, "afpacket"),
            System::AfXdpFwd => self.start_forwarder(p, cores, "afxdp"),
        }
    }

    /// `pktgen forward --io io` on both nodes, pinned like meshd's single workers.
    fn start_forwarder(
        &mut self,
        p: &Programs,
        cores: &[usize],
        io: &str,
    ) -> Result<(), MeshError> {
        let n = cores.len().max(1);
        let c1 = cores.first().copied().unwrap_or(0);
        let c2 = cores.get(1 % n).copied().unwrap_or(c1);
        let pktgen = p.pktgen.display().to_string();
        for (ns, core, args) in [
            (
                N1_NS,
                c1,
                vec!["--in", "up0", "--dst-mac", &mac_str(N2_UP_MAC)],
            ),
            (N2_NS, c2, vec!["--in", "up0", "--out", "tk0"]),
        ] {
            // Pinned like a meshd worker.
            let mut a: Vec<String> = vec![
                "-c".into(),
                core.to_string(),
                pktgen.clone(),
                "forward".into(),
                "--io".into(),
                io.into(),
            ];
            a.extend(args.iter().map(|s| s.to_string()));
            let log = if ns == N1_NS { "fwd-n1" } else { "fwd-n2" };
            self.spawn(ns, Path::new("taskset"), &a, log)?;
        }
        Ok(())
    }

    fn start_meshd(
        &mut self,
        p: &Programs,
        tasks: usize,
        workers: usize,
        cores: &[usize],
        io: &str,
    ) -> Result<(), MeshError> {
        let n = cores.len().max(1);
        let mut sockets = Vec::new();
        for (i, (ns, name, addr)) in [(N1_NS, "n1", N1_IP), (N2_NS, "n2", N2_IP)]
            .into_iter()
            .enumerate()
        {
            // One worker: the two nodes on different cores. More: every node on every core.
            let node_cores: Vec<String> = if workers == 1 {
                vec![cores.get(i % n).copied().unwrap_or(0).to_string()]
            } else {
                (0..workers)
                    .map(|w| cores.get(w % n).copied().unwrap_or(0).to_string())
                    .collect()
            };
            let socket = self.run_dir.join(format!("{name}.sock"));
            let flow_file = PathBuf::from(format!("/dev/shm/meshd-bench-{name}.flows"));
            let _ = std::fs::remove_file(&flow_file);
            self.flow_files.push(flow_file.clone());
            let args: Vec<String> = vec![
                "--node".into(),
                name.into(),
                "--addr".into(),
                addr.to_string(),
                "--uplink".into(),
                "up0".into(),
                "--tasks".into(),
                "tk0".into(),
                "--cores".into(),
                node_cores.join(","),
                "--flows".into(),
                "262144".into(),
                "--io".into(),
                io.into(),
                "--socket".into(),
                socket.display().to_string(),
                "--state".into(),
                self.run_dir
                    .join(format!("{name}.json"))
                    .display()
                    .to_string(),
                "--flow-state".into(),
                flow_file.display().to_string(),
            ];
            self.spawn(ns, &p.meshd, &args, &format!("meshd-{name}"))?;
            sockets.push(socket);
        }
        for s in &sockets {
            wait_for(Duration::from_secs(20), || {
                ctl::client::request(s, &Command::Query(Query::NodeLs {}), Duration::from_secs(1))
                    .is_ok()
            })
            .map_err(|_| {
                MeshError::Setup(format!(
                    "meshd did not open {} in 20 s{}",
                    s.display(),
                    self.log_tails()
                ))
            })?;
        }
        let node = |name: &str, addr: Ipv4Addr| Node {
            name: name.into(),
            addr,
            vtep: None,
            addr6: None,
            vtep_port: VXLAN_PORT,
            availability: Availability::Active,
        };
        let mut endpoints = BTreeMap::new();
        endpoints.insert("n1".to_string(), N1_ENDPOINT);
        endpoints.insert("n2".to_string(), N2_ENDPOINT);
        let mut web = Service::new("web");
        for (protocol, target) in [(Protocol::Udp, UDP_TARGET), (Protocol::Tcp, HTTP_TARGET)] {
            web.ports.push(PublishedPort {
                protocol,
                published: PUBLISHED,
                target,
                mode: PublishMode::Ingress,
            });
        }
        for i in 0..tasks {
            web.tasks.push(Task {
                name: format!("web.{}", i + 1),
                node: "n2".into(),
                addresses: vec![TaskAddress {
                    network: "ingress".into(),
                    addr: task_ip(i),
                }],
                state: TaskState::Running,
                weight: 1,
                vlan: None,
            });
        }
        let net = Network {
            subnet6: None,
            name: "ingress".into(),
            vni: INGRESS_VNI,
            subnet: ctl::Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 24).map_err(setup)?,
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            ingress: true,
            endpoints,
            mtu: None,
            encryption: None,
        };
        for (s, peer) in [
            (&sockets[0], node("n2", N2_IP)),
            (&sockets[1], node("n1", N1_IP)),
        ] {
            for cmd in [
                Command::Change(Change::NodeAdd {
                    node: peer,
                    endpoints: BTreeMap::new(),
                }),
                Command::Change(Change::NetworkCreate {
                    network: net.clone(),
                }),
                Command::Change(Change::ServiceCreate {
                    service: web.clone(),
                }),
            ] {
                match ctl::client::request(s, &cmd, Duration::from_secs(10)) {
                    Ok(Response::Ok(_)) => {}
                    Ok(Response::Err(e)) => {
                        return Err(MeshError::Setup(format!(
                            "meshd {}: {}: {}",
                            s.display(),
                            cmd.name(),
                            e.message
                        )))
                    }
                    Err(e) => return Err(MeshError::Setup(e.to_string())),
                }
            }
        }
        Ok(())
    }

    fn start_kernel(&mut self, tasks: usize) -> Result<(), MeshError> {
        let ip = |ns: &str, args: &[&str]| sys::ip_in(ns, args).map_err(setup);
        let bridge = |ns: &str, args: &[&str]| {
            let mut a = vec!["fdb"];
            a.extend_from_slice(args);
            sys::exec_in(ns, "bridge", &a).map_err(setup)
        };
        for (ns, addr, br_mac, peer, peer_mac) in [
            (N1_NS, N1_IP, N1_BR_MAC, N2_IP, N2_UP_MAC),
            (N2_NS, N2_IP, N2_BR_MAC, N1_IP, N1_UP_MAC),
        ] {
            sys::exec_in(
                ns,
                "sysctl",
                &[
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ],
            )
            .map_err(setup)?;
            ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", "up0"])?;
            ip(
                ns,
                &[
                    "neigh",
                    "replace",
                    &peer.to_string(),
                    "lladdr",
                    &mac_str(peer_mac),
                    "dev",
                    "up0",
                    "nud",
                    "permanent",
                ],
            )?;
            ip(
                ns,
                &[
                    "link",
                    "add",
                    "name",
                    "br0",
                    "address",
                    &mac_str(br_mac),
                    "type",
                    "bridge",
                    "forward_delay",
                    "0",
                ],
            )?;
            ip(
                ns,
                &[
                    "link",
                    "add",
                    "name",
                    "vxlan0",
                    "type",
                    "vxlan",
                    "id",
                    &INGRESS_VNI.to_string(),
                    "local",
                    &addr.to_string(),
                    "dstport",
                    &VXLAN_PORT.to_string(),
                    "dev",
                    "up0",
                    "nolearning",
                ],
            )?;
            ip(ns, &["link", "set", "dev", "vxlan0", "master", "br0", "up"])?;
            ip(ns, &["link", "set", "dev", "br0", "up"])?;
        }
        // n1: the ingress endpoint on the bridge; the tasks' MACs (all the sink's) behind n2.
        ip(
            N1_NS,
            &["addr", "add", &format!("{N1_ENDPOINT}/24"), "dev", "br0"],
        )?;
        for i in 0..tasks {
            ip(
                N1_NS,
                &[
                    "neigh",
                    "replace",
                    &task_ip(i).to_string(),
                    "lladdr",
                    &mac_str(SINK_MAC),
                    "dev",
                    "br0",
                    "nud",
                    "permanent",
                ],
            )?;
        }
        bridge(
            N1_NS,
            &[
                "add",
                &mac_str(SINK_MAC),
                "dev",
                "vxlan0",
                "master",
                "static",
            ],
        )?;
        bridge(
            N1_NS,
            &[
                "add",
                &mac_str(SINK_MAC),
                "dev",
                "vxlan0",
                "self",
                "dst",
                &N2_IP.to_string(),
                "permanent",
            ],
        )?;
        // n2: the sink on tk0, n1's endpoint behind n1.
        ip(N2_NS, &["link", "set", "dev", "tk0", "master", "br0", "up"])?;
        bridge(
            N2_NS,
            &["add", &mac_str(SINK_MAC), "dev", "tk0", "master", "static"],
        )?;
        bridge(
            N2_NS,
            &[
                "add",
                &mac_str(N1_BR_MAC),
                "dev",
                "vxlan0",
                "master",
                "static",
            ],
        )?;
        bridge(
            N2_NS,
            &[
                "add",
                &mac_str(N1_BR_MAC),
                "dev",
                "vxlan0",
                "self",
                "dst",
                &N1_IP.to_string(),
                "permanent",
            ],
        )?;
        ip(
            SINK_NS,
            &[
                "neigh",
                "replace",
                &N1_ENDPOINT.to_string(),
                "lladdr",
                &mac_str(N1_BR_MAC),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
        // Swarm's published port: DNAT round-robin over the tasks, masquerade into the overlay.
        let map = |port: u16| {
            (0..tasks)
                .map(|i| format!("{i} : {}", task_ip(i)))
                .collect::<Vec<_>>()
                .join(", ")
                + &format!(" }} : {port}")
        };
        let rules = format!(
            "table ip mesh {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
             ip daddr {N1_IP} udp dport {PUBLISHED} dnat to numgen inc mod {tasks} map {{ {}\n    \
             ip daddr {N1_IP} tcp dport {PUBLISHED} dnat to numgen inc mod {tasks} map {{ {}\n  }}\n  \
             chain post {{\n    type nat hook postrouting priority srcnat;\n    oifname \"br0\" masquerade\n  }}\n}}\n",
            map(UDP_TARGET),
            map(HTTP_TARGET),
        );
        nft(N1_NS, &rules)
    }

    fn start_testpmd(&mut self, p: &Programs, cores: &[usize]) -> Result<(), MeshError> {
        let Some(testpmd) = p.testpmd.clone() else {
            return Err(MeshError::Setup(
                "dpdk-testpmd is not installed (Debian package dpdk-dev; scripts/deps.sh installs it)".into(),
            ));
        };
        let n = cores.len().max(1);
        let c1 = cores.first().copied().unwrap_or(0);
        let c2 = cores.get(1 % n).copied().unwrap_or(c1);
        // Each testpmd needs a main lcore (idle: it prints stats once a second) besides its
        // forwarding lcore; the forwarding lcores go where meshd's single workers go.
        let lcores = |fwd: usize| {
            let main = if fwd == c1 { c2 } else { c1 };
            if main == fwd {
                (format!("{fwd}"), fwd)
            } else {
                (format!("{},{}", main.min(fwd), main.max(fwd)), main)
            }
        };
        for (ns, fwd, vdevs, mode) in [
            (
                N1_NS,
                c1,
                vec!["up0"],
                vec![
                    "--forward-mode=mac".to_string(),
                    format!("--eth-peer=0,{}", mac_str(N2_UP_MAC)),
                    "--port-topology=loop".into(),
                ],
            ),
            (
                N2_NS,
                c2,
                vec!["up0", "tk0"],
                vec![
                    "--forward-mode=io".to_string(),
                    "--port-topology=paired".into(),
                ],
            ),
        ] {
            let (list, main) = lcores(fwd);
            let mut args: Vec<String> = vec![
                "-l".into(),
                list,
                "--main-lcore".into(),
                main.to_string(),
                "--no-pci".into(),
                "--no-huge".into(),
                "--no-shconf".into(),
                "-m".into(),
                "256".into(),
                "--log-level".into(),
                "lib.eal:error".into(),
            ];
            for (i, v) in vdevs.iter().enumerate() {
                args.push(format!(
                    "--vdev=net_af_packet{i},iface={v},qdisc_bypass=1,framecnt=1024"
                ));
            }
            args.push("--".into());
            args.extend(mode);
            args.extend(
                [
                    "--auto-start",
                    "--stats-period",
                    "10",
                    "--no-mlockall",
                    "--total-num-mbufs=8192",
                    "--rxq=1",
                    "--txq=1",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            let log = if ns == N1_NS {
                "testpmd-n1"
            } else {
                "testpmd-n2"
            };
            self.spawn(ns, &testpmd, &args, log)?;
        }
        Ok(())
    }
}

/// The switch: a bridge in the switch namespace.
fn switch() -> Result<(), MeshError> {
    let ip = |args: &[&str]| sys::ip_in(SW_NS, args).map_err(setup);
    ip(&["link", "add", "name", "br0", "type", "bridge"])?;
    // Forward at once: no STP listening, no multicast snooping surprises.
    ip(&[
        "link",
        "set",
        "dev",
        "br0",
        "type",
        "bridge",
        "forward_delay",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    ip(&["link", "set", "dev", "br0", "up"])?;
    Ok(())
}

/// A veth from the switch (`sw_end`, a bridge port) to `dev` in namespace `ns`.
fn to_switch(sw_end: &str, ns: &str, dev: &str, mac: [u8; 6]) -> Result<(), MeshError> {
    let ip = |ns: &str, args: &[&str]| sys::ip_in(ns, args).map_err(setup);
    ip(
        SW_NS,
        &[
            "link", "add", "name", sw_end, "type", "veth", "peer", "name", dev, "netns", ns,
        ],
    )?;
    ip(
        SW_NS,
        &["link", "set", "dev", sw_end, "master", "br0", "up"],
    )?;
    ip(
        ns,
        &["link", "set", "dev", dev, "address", &mac_str(mac), "up"],
    )?;
    sys::offloads_off(SW_NS, sw_end).map_err(setup)?;
    sys::offloads_off(ns, dev).map_err(setup)
}

/// Hosts: the generator (a normal client) and the sink (every task's address), each on its
/// eth0. MTU 1450 on both, so encapsulated frames fit the 1500-byte underlay.
fn hosts(tasks: usize) -> Result<(), MeshError> {
    let ip = |ns: &str, args: &[&str]| sys::ip_in(ns, args).map_err(setup);
    ip(
        GEN_NS,
        &["addr", "add", "192.168.100.100/24", "dev", "eth0"],
    )?;
    ip(GEN_NS, &["link", "set", "dev", "eth0", "mtu", "1450"])?;
    ip(
        GEN_NS,
        &[
            "neigh",
            "replace",
            &N1_IP.to_string(),
            "lladdr",
            &mac_str(N1_UP_MAC),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    for i in 0..tasks {
        ip(
            SINK_NS,
            &["addr", "add", &format!("{}/24", task_ip(i)), "dev", "eth0"],
        )?;
    }
    ip(SINK_NS, &["link", "set", "dev", "eth0", "mtu", "1450"])?;
    // Many short connections from one client address: every local port, and reuse of
    // TIME_WAIT ones.
    sys::exec_in(
        GEN_NS,
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )
    .map_err(setup)?;
    // The sink counts UDP frames in its ring; the kernel behind it need not answer them
    // (no ICMP port unreachable flowing back through the system under test).
    nft(
        SINK_NS,
        "table netdev sink {\n  chain in {\n    type filter hook ingress device \"eth0\" priority 0;\n    udp dport { 5201, 8080 } drop\n  }\n}\n",
    )
}

/// Sets the RPS CPU mask of `dev`'s receive queue in `ns`.
pub fn steer(ns: &str, dev: &str, mask: u64) -> Result<(), MeshError> {
    let cmd = format!("echo {mask:x} > /sys/class/net/{dev}/queues/rx-0/rps_cpus");
    sys::exec_in(ns, "sh", &["-c", &cmd])
        .map(|_| ())
        .map_err(|e| MeshError::Setup(format!("RPS on {dev} in {ns}: {e}")))
}

/// Loads an nftables ruleset into namespace `ns`.
pub fn nft(ns: &str, rules: &str) -> Result<(), MeshError> {
    let path = std::env::temp_dir().join(format!("{ns}-{}.nft", std::process::id()));
    std::fs::write(&path, rules).map_err(setup)?;
    let r = sys::exec_in(ns, "nft", &["-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    r.map(|_| ())
        .map_err(|e| MeshError::Setup(format!("{e}\nruleset:\n{rules}")))
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), ()> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    Err(())
}
