//! The `meshd` daemon: configuration, start-up, the threads, shutdown.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::balance::ServiceTable;
use crate::buf::PortId;
use crate::control::{ControlHandle, Controller, Persisted, Server, StateStore};
use crate::flow::{FlowTable, MAX_FLOWS};
use crate::host::{HostConfig, HostShared, HostStack, Upstream};
use crate::neigh::Neighbors;
use crate::pipeline::{Config, Pipeline};
use crate::port::afpacket::{AfPacketConfig, AfPacketPort, RxRing};
use crate::port::pcap::{Capture, PcapWriter};
use crate::port::Port;
use crate::worker::{Clock, Idle, Shared, Worker};

const AFTER_HELP: &str = "\
EXAMPLES:
  # A node whose underlay NIC is eth1 and whose local tasks hang off the bridge br-tasks:
  meshd --node n1 --addr 192.168.1.11 --uplink eth1 --tasks br-tasks

  # The same from a file (flags given on the command line win over the file):
  meshd --config /etc/meshd/meshd.toml

  # Two workers pinned to cores 2 and 3, spinning without back-off:
  meshd --config /etc/meshd/meshd.toml --cores 2,3 --busy-poll

  # AF_XDP instead of AF_PACKET (one worker):
  meshd --config /etc/meshd/meshd.toml --io afxdp --cores 2

  # Cluster mode: the desired state from etcd (every node of the mesh names the same etcd):
  meshd --config /etc/meshd/meshd.toml --cluster etcd://10.0.9.1:2379,10.0.9.2:2379,10.0.9.3:2379

CONFIG FILE (TOML), every key optional and named like its flag:
  node = \"n1\"
  addr = \"192.168.1.11\"
  uplink = \"eth1\"
  tasks = \"br-tasks\"
  cores = [0, 1]
  socket = \"/run/meshd/meshd.sock\"
  state = \"/var/lib/meshd/state.json\"
  flows = 1048576
  new_flows_per_source = 0
  flow_accounting = false
  busy_poll = false
  io = \"afpacket\"
  rx_ring = \"frames\"
  metrics = \"127.0.0.1:9469\"
  dns_upstream = \"192.168.1.1:53\"
  cluster = \"etcd://10.0.9.1:2379\"
  etcd_cacert = \"/etc/meshd/etcd-ca.pem\"

Then add peers, networks and services with meshctl (see `meshctl --help`).
The kernel should hold no IP address on the uplink and tasks interfaces: meshd answers for the
node's address itself (ARP, ICMP echo, RST for ports it does not publish). meshd reads both
interfaces' MAC addresses once at start: give a tasks bridge a fixed one
(`ip link set br-tasks address 02:...`), since a Linux bridge otherwise takes its lowest port's
MAC and changes it as tasks come and go.";

/// meshd: a userspace routing mesh for an edge node (published ports on every node, DNAT and
/// round-robin over a service's tasks, a VXLAN overlay, service VIPs).
#[derive(Debug, Parser, Default)]
#[command(name = "meshd", version, about, after_help = AFTER_HELP)]
pub struct Args {
    /// A TOML file with the options below; flags override it.
    #[arg(long, short = 'c', env = "MESHD_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's name in the mesh (as `meshctl node add` names it).
    #[arg(long)]
    pub node: Option<String>,
    /// This node's underlay address: published ports and VXLAN answer here.
    #[arg(long)]
    pub addr: Option<Ipv4Addr>,
    /// This node's VXLAN tunnel endpoint address, IPv4 or IPv6 (defaults to --addr). An IPv6
    /// one runs the overlay over IPv6: every node's VTEP must be IPv6 then, and VXLAN takes
    /// 20 bytes more of the uplink's MTU (1430 left of 1500).
    #[arg(long, value_name = "IP")]
    pub vtep: Option<std::net::IpAddr>,
    /// This node's IPv6 address on the underlay (optional): meshd answers Neighbor Discovery
    /// and ping6 there, and refuses TCP and UDP as closed ports (published ports answer on
    /// IPv4 only so far). Without it, IPv6 frames are dropped as `no_ipv6`.
    #[arg(long, value_name = "IPV6")]
    pub addr6: Option<Ipv6Addr>,
    /// The underlay interface (clients and peer nodes).
    #[arg(long)]
    pub uplink: Option<String>,
    /// The interface the local tasks are reached on (a bridge or a veth).
    #[arg(long)]
    pub tasks: Option<String>,
    /// Cores to pin one worker each to, comma separated (default: one worker, core 0). meshd's
    /// other threads run on the cores left, if any.
    #[arg(long, value_delimiter = ',')]
    pub cores: Option<Vec<usize>>,
    /// The control socket meshctl talks to (mode 0600).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Where the state is persisted across restarts.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Flow table size per worker (16 to 268435456, about 228 bytes each, allocated at start;
    /// default 1048576). A full table evicts expired flows, then the stalest half-open (a SYN
    /// flood's), UDP and closed ones; never an established connection: with none of those
    /// left, a new flow is refused (drop reason flow_table_full).
    #[arg(long)]
    pub flows: Option<usize>,
    /// Where the flow tables live, so that they outlive meshd: a file (on tmpfs: memory) that
    /// a restarted meshd with the same node, address, --cores count and --flows adopts, keeping
    /// every connection through this node across a crash, `kill -9`, or an upgrade. A file that
    /// does not fit is logged and replaced by empty tables. `none`: flow tables on the heap,
    /// lost at exit [default: /dev/shm/meshd-NODE.flows].
    #[arg(long, value_name = "FILE|none")]
    pub flow_state: Option<PathBuf>,
    /// New flows one source address may open per second on each worker (1 to 65535; default 0:
    /// no limit). Over it, a source's new flows are dropped (new_flow_rate) until the second
    /// ends; its established ones go on.
    #[arg(long, value_name = "N")]
    pub new_flows_per_source: Option<u16>,
    /// Count packets and bytes per connection, both ways, for `meshctl conn ls` (off by
    /// default, as the kernel's nf_conntrack_acct: one more cache line per packet, a quarter
    /// of the throughput at a million flows; bench pipeline --flow-accounting measures it).
    #[arg(long)]
    pub flow_accounting: bool,
    /// Keep workers spinning when idle (lowest latency; a core at 100% each).
    #[arg(long)]
    pub busy_poll: bool,
    /// How frames get in and out of meshd [default: afpacket].
    ///
    /// afpacket: an AF_PACKET socket with memory-mapped RX and TX rings per worker and
    /// interface (any Linux, any number of workers, the kernel stack still sees the frames).
    /// afxdp: an AF_XDP socket on queue 0 of each interface, fed by a small XDP program that
    /// meshd attaches at start and that goes away with meshd (even if it is killed); the frames
    /// no longer reach the kernel stack. On drivers with native XDP (veth has it) frames are
    /// taken before the kernel's stack and packet taps see them. One worker only (one socket per interface queue):
    /// give --cores a single core. Needs Linux 5.9+ (and a meshd built with its default features).
    ///
    /// dpdk: a DPDK poll-mode driver (a meshd built with --features dpdk): --uplink and --tasks
    /// then name DPDK devices — a PCI address bound to vfio-pci (0000:03:00.0), or a virtual
    /// device with its arguments (net_af_packet0,iface=eth1; net_af_xdp0,iface=eth1;
    /// net_memif0,role=server,socket=/run/m.sock) — with one queue pair per worker (RSS
    /// spreads flows over them). EAL's own options go in --dpdk-args. Make meshd the memif
    /// server of a peer that may restart: it takes the peer back; a memif client (role=client)
    /// connects only when meshd starts.
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub io: Option<IoMode>,
    /// With --io dpdk: DPDK EAL arguments, in one string, e.g. "--no-huge -m 512" (no
    /// hugepages) or "--vdev net_memif0,socket=/run/m.sock" (then --uplink net_memif0). meshd
    /// adds, unless given: -l with the first --cores core, --in-memory (--no-shconf with
    /// --no-huge), --log-level=*:warning.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub dpdk_args: Option<String>,
    /// With --io dpdk: the MTU to set on the uplink device [default: the device's, usually
    /// 1500]. A NIC driven by DPDK has no kernel interface to set it on; an underlay that
    /// carries VXLAN often runs 1550 or more so the overlay keeps 1500. 1280 to 1900 (meshd's
    /// buffers hold 1920-byte frames).
    #[arg(long, value_name = "BYTES")]
    pub uplink_mtu: Option<u16>,
    /// How the kernel hands received frames over, with --io afpacket [default: frames].
    ///
    /// frames: one frame per ring slot (TPACKET_V2), each the worker's as soon as it arrives:
    /// the lowest latency at every rate. blocks: frames packed into 64 KiB blocks (TPACKET_V3),
    /// each handed over when full or after a 2 ms timer: fewer wake-ups and more small frames
    /// buffered at high rates, but up to 2 ms added per frame at each meshd hop at low and
    /// moderate rates.
    #[arg(long, value_enum, value_name = "MODE")]
    pub rx_ring: Option<RxRingMode>,
    /// Serve Prometheus metrics over HTTP on this address, e.g. 127.0.0.1:9469.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Forward DNS names that are not the mesh's (asked of a network's resolver, its gateway)
    /// to this resolver, e.g. 192.168.1.1:53, from a UDP socket in meshd's own network
    /// namespace (not the uplink). Without it they get NXDOMAIN.
    #[arg(long, value_name = "IP:PORT")]
    pub dns_upstream: Option<std::net::SocketAddrV4>,
    /// Write every frame meshd receives and sends, on both interfaces, to this pcap file
    /// (`tcpdump -r FILE`, Wireshark): what tcpdump on the interfaces cannot show once meshd
    /// owns them. For debugging: it costs a copy, a lock and a write per frame.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Sign the health gossip this node sends and take only gossip signed with a key in this
    /// file (one key a line, 64 hexadecimal digits: `head -c 32 /dev/urandom | od -An -tx1 |
    /// tr -d ' \n'`; the first signs, all are accepted, so keys roll: add the new one on every
    /// node, move it first, remove the old). The same file on every node. Without it, gossip is
    /// taken from any datagram that comes from a peer's address and MAC: the underlay is
    /// trusted.
    #[arg(long, value_name = "FILE")]
    pub gossip_key_file: Option<PathBuf>,
    /// Cluster mode: take the desired state from etcd at these endpoints
    /// (etcd://HOST:PORT[,HOST:PORT...]) and follow it, instead of the local state file and
    /// changes on the socket. meshd registers under a lease (`meshctl node ls` shows it Ready,
    /// Down once the lease lapses), says which revision it runs, and keeps serving its last
    /// applied state while etcd is away (the state file is then its cache, also across a
    /// restart). Changes: `meshctl --cluster ...` from any machine that reaches etcd.
    #[arg(long, value_name = "ENDPOINTS")]
    pub cluster: Option<String>,
    /// The CA certificate (PEM) that signed etcd's: etcd is then reached over TLS.
    #[arg(long, value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// This node's client certificate (PEM), when etcd asks for one (with --etcd-key).
    #[arg(long, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// Seconds this node's lease lives without a keep-alive: after that long out of touch with
    /// etcd it is Down for the others, and its tasks take no new connections through them
    /// [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub cluster_lease: Option<u64>,
}

/// The options from the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node: Option<String>,
    addr: Option<Ipv4Addr>,
    vtep: Option<std::net::IpAddr>,
    addr6: Option<Ipv6Addr>,
    uplink: Option<String>,
    tasks: Option<String>,
    cores: Option<Vec<usize>>,
    socket: Option<PathBuf>,
    state: Option<PathBuf>,
    flows: Option<usize>,
    flow_state: Option<PathBuf>,
    new_flows_per_source: Option<u16>,
    flow_accounting: Option<bool>,
    busy_poll: Option<bool>,
    io: Option<IoMode>,
    dpdk_args: Option<String>,
    uplink_mtu: Option<u16>,
    rx_ring: Option<RxRingMode>,
    metrics: Option<std::net::SocketAddr>,
    dns_upstream: Option<std::net::SocketAddrV4>,
    pcap: Option<PathBuf>,
    gossip_key_file: Option<PathBuf>,
    cluster: Option<String>,
    etcd_cacert: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    cluster_lease: Option<u64>,
}

/// `--io`: the port backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// AF_PACKET rings, any number of workers.
    #[default]
    Afpacket,
    /// An AF_XDP socket and meshd's XDP program, one worker (in the default build).
    Afxdp,
    /// A DPDK poll-mode driver, a queue pair per worker (in a build with --features dpdk).
    Dpdk,
}

/// `--uplink-mtu`'s bounds: below 1280 the overlay (the MTU less VXLAN's 50 bytes) would be
/// refused anyway; above 1900 a frame (with Ethernet and an 802.1Q tag) would not fit a
/// [`crate::buf::PacketBuf`].
const MIN_UPLINK_MTU: u16 = 1280;
const MAX_UPLINK_MTU: u16 = 1900;

/// What a meshd built without the `dpdk` feature says to `--io dpdk`.
pub const NO_DPDK: &str = "meshd was built without DPDK: build it with `cargo build --release --features dataplane/dpdk` (needs libdpdk-dev and pkg-config)";

/// What a meshd built without the `afxdp` feature says to `--io afxdp`.
pub const NO_AFXDP: &str = "meshd was built without AF_XDP (--no-default-features): build it with its default features (cargo build --release)";

/// `--rx-ring`: the AF_PACKET RX ring mode ([`RxRing`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RxRingMode {
    /// One frame per slot (TPACKET_V2): lowest latency.
    #[default]
    Frames,
    /// Frames packed in blocks (TPACKET_V3): up to 2 ms added latency at low rates.
    Blocks,
}

impl From<RxRingMode> for RxRing {
    fn from(m: RxRingMode) -> RxRing {
        match m {
            RxRingMode::Frames => RxRing::PerFrame,
            RxRingMode::Blocks => RxRing::Blocks,
        }
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub addr: Ipv4Addr,
    pub vtep: Option<std::net::IpAddr>,
    pub addr6: Option<Ipv6Addr>,
    pub uplink: String,
    pub tasks: String,
    pub cores: Vec<usize>,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub flows: usize,
    /// Where the flow tables outlive the process (`--flow-state`; None: on the heap).
    pub flow_state: Option<PathBuf>,
    /// `Config::new_flows_per_source` (0: no limit).
    pub new_flows_per_source: u16,
    /// `Config::flow_accounting`.
    pub flow_accounting: bool,
    pub busy_poll: bool,
    pub io: IoMode,
    /// `--dpdk-args`, split at white space.
    pub dpdk_args: Vec<String>,
    /// `--uplink-mtu`: set on the DPDK uplink device at start.
    pub uplink_mtu: Option<u16>,
    pub rx_ring: RxRing,
    pub metrics: Option<std::net::SocketAddr>,
    pub dns_upstream: Option<std::net::SocketAddrV4>,
    pub pcap: Option<PathBuf>,
    /// The health gossip's keys (`--gossip-key-file`), read at start: empty without.
    pub gossip_keys: crate::host::gossip::Keyring,
    /// Cluster mode (`--cluster`).
    pub cluster: Option<ClusterSettings>,
}

/// Where the cluster's state is and how to reach it.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `--cluster` as given (for messages).
    pub spec: String,
    /// The endpoints as URLs.
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub lease: Duration,
}

/// What a meshd built without the `cluster` feature says to `--cluster`.
pub const NO_CLUSTER: &str = "meshd was built without cluster mode (--no-default-features): build it with its default features (cargo build --release)";

#[cfg(feature = "cluster")]
fn cluster_settings(
    spec: String,
    cacert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    lease: u64,
) -> Result<ClusterSettings, StartError> {
    let tls = ctl::cluster::etcd::Tls {
        cacert: cacert.clone(),
        cert: cert.clone(),
        key: key.clone(),
    };
    let endpoints = ctl::cluster::etcd::endpoints(&spec, &tls)
        .map_err(|e| StartError::Config(e.to_string()))?;
    if cert.is_some() != key.is_some() {
        return Err(StartError::Config(
            "--etcd-cert and --etcd-key go together: give both (the client certificate and its key) or neither".into(),
        ));
    }
    if !(2..=3600).contains(&lease) {
        return Err(StartError::Config(format!(
            "--cluster-lease {lease}: give 2 to 3600 seconds"
        )));
    }
    Ok(ClusterSettings {
        spec,
        endpoints,
        cacert,
        cert,
        key,
        lease: Duration::from_secs(lease),
    })
}

#[cfg(not(feature = "cluster"))]
fn cluster_settings(
    _: String,
    _: Option<PathBuf>,
    _: Option<PathBuf>,
    _: Option<PathBuf>,
    _: u64,
) -> Result<ClusterSettings, StartError> {
    Err(StartError::Config(NO_CLUSTER.to_owned()))
}

/// A start-up error, said so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Port(#[from] crate::port::afpacket::AfPacketError),
    #[cfg(feature = "afxdp")]
    #[error("{0}")]
    XdpPort(#[from] crate::port::afxdp::AfXdpError),
    #[cfg(feature = "dpdk")]
    #[error("{0}")]
    Dpdk(#[from] crate::port::dpdk::DpdkError),
    #[error("{0}")]
    State(#[from] crate::control::store::StoreError),
    #[error("control socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    FlowState(#[from] crate::flow::keep::KeepError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Args {
    /// Merges the config file under the flags and checks that everything needed is there.
    pub fn resolve(self) -> Result<Settings, StartError> {
        let file: FileConfig = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| StartError::Config(format!("{}: {e}", p.display())))?;
                toml::from_str(&text)
                    .map_err(|e| StartError::Config(format!("{}: {e}", p.display())))?
            }
            None => FileConfig::default(),
        };
        let need = |what: &str, flag: &str| {
            StartError::Config(format!(
                "{what} is not set: give --{flag} or `{flag} = ...` in the config file"
            ))
        };
        let node = self
            .node
            .or(file.node)
            .ok_or_else(|| need("the node name", "node"))?;
        let addr = self
            .addr
            .or(file.addr)
            .ok_or_else(|| need("the node's underlay address", "addr"))?;
        let uplink = self
            .uplink
            .or(file.uplink)
            .ok_or_else(|| need("the uplink interface", "uplink"))?;
        let tasks = self
            .tasks
            .or(file.tasks)
            .ok_or_else(|| need("the tasks interface", "tasks"))?;
        let io = self.io.or(file.io).unwrap_or_default();
        let cores = self.cores.or(file.cores).unwrap_or_else(|| vec![0]);
        if io == IoMode::Afxdp {
            if !cfg!(feature = "afxdp") {
                return Err(StartError::Config(NO_AFXDP.to_owned()));
            }
            if cores.len() > 1 {
                return Err(StartError::Config(format!(
                    "--io afxdp runs one worker (an AF_XDP socket per interface queue, and a veth \
                     has one queue), but --cores names {}: give a single core, or use --io afpacket",
                    cores.len()
                )));
            }
        }
        if io == IoMode::Dpdk && !cfg!(feature = "dpdk") {
            return Err(StartError::Config(NO_DPDK.to_owned()));
        }
        let dpdk_args: Vec<String> = self
            .dpdk_args
            .or(file.dpdk_args)
            .map(|a| a.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        if !dpdk_args.is_empty() && io != IoMode::Dpdk {
            return Err(StartError::Config(
                "--dpdk-args goes with --io dpdk".to_owned(),
            ));
        }
        let uplink_mtu = self.uplink_mtu.or(file.uplink_mtu);
        match uplink_mtu {
            Some(_) if io != IoMode::Dpdk => {
                return Err(StartError::Config(
                    "--uplink-mtu goes with --io dpdk (with AF_PACKET or AF_XDP, set the interface's: ip link set DEV mtu N)".to_owned(),
                ))
            }
            Some(m) if !(MIN_UPLINK_MTU..=MAX_UPLINK_MTU).contains(&m) => {
                return Err(StartError::Config(format!(
                    "--uplink-mtu {m}: {MIN_UPLINK_MTU} to {MAX_UPLINK_MTU} (meshd's buffers hold {}-byte frames)",
                    crate::buf::BUF_SIZE - crate::buf::HEADROOM
                )))
            }
            _ => {}
        }
        let flows = self.flows.or(file.flows).unwrap_or(1 << 20);
        if !(16..=MAX_FLOWS).contains(&flows) {
            return Err(StartError::Config(format!(
                "--flows {flows}: a worker's flow table takes 16 to {MAX_FLOWS} flows (each \
                 costs about {b} bytes per worker, allocated at start: the default, 1048576 flows, \
                 takes {b} MiB per worker)",
                b = FlowTable::BYTES_PER_FLOW
            )));
        }
        let cluster = match self.cluster.or(file.cluster) {
            Some(spec) => Some(cluster_settings(
                spec,
                self.etcd_cacert.or(file.etcd_cacert),
                self.etcd_cert.or(file.etcd_cert),
                self.etcd_key.or(file.etcd_key),
                self.cluster_lease.or(file.cluster_lease).unwrap_or(10),
            )?),
            None => None,
        };
        Ok(Settings {
            cluster,
            socket: self
                .socket
                .or(file.socket)
                .unwrap_or_else(|| PathBuf::from("/run/meshd/meshd.sock")),
            state: self
                .state
                .or(file.state)
                .unwrap_or_else(|| PathBuf::from(format!("/var/lib/meshd/{node}.json"))),
            flow_state: match self.flow_state.or(file.flow_state) {
                Some(p) if p.as_os_str() == "none" => None,
                Some(p) => Some(p),
                None => Some(PathBuf::from(format!("/dev/shm/meshd-{node}.flows"))),
            },
            node,
            addr,
            vtep: self.vtep.or(file.vtep),
            addr6: self.addr6.or(file.addr6),
            uplink,
            tasks,
            cores,
            flows,
            new_flows_per_source: self
                .new_flows_per_source
                .or(file.new_flows_per_source)
                .unwrap_or(0),
            flow_accounting: self.flow_accounting || file.flow_accounting.unwrap_or(false),
            busy_poll: self.busy_poll || file.busy_poll.unwrap_or(false),
            io,
            dpdk_args,
            uplink_mtu,
            rx_ring: self.rx_ring.or(file.rx_ring).unwrap_or_default().into(),
            metrics: self.metrics.or(file.metrics),
            dns_upstream: self.dns_upstream.or(file.dns_upstream),
            pcap: self.pcap.or(file.pcap),
            gossip_keys: match self.gossip_key_file.or(file.gossip_key_file) {
                None => crate::host::gossip::Keyring::default(),
                Some(path) => crate::host::gossip::Keyring::load(&path)
                    .map_err(|e| StartError::Config(format!("--gossip-key-file {e}")))?,
            },
        })
    }
}

/// Reads an interface's MAC address from sysfs.
pub fn interface_mac(ifname: &str) -> Result<[u8; 6], StartError> {
    let path = format!("/sys/class/net/{ifname}/address");
    let text = std::fs::read_to_string(&path)
        .map_err(|_| StartError::Config(format!("no such interface {ifname:?} (see `ip link`)")))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(StartError::Config(format!(
            "{path}: {text:?} is not a MAC address"
        )));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)
            .map_err(|_| StartError::Config(format!("{path}: {text:?} is not a MAC address")))?;
    }
    Ok(mac)
}

/// Reads an interface's MTU from sysfs.
pub fn interface_mtu(ifname: &str) -> Result<u16, StartError> {
    let path = format!("/sys/class/net/{ifname}/mtu");
    let text = std::fs::read_to_string(&path)
        .map_err(|_| StartError::Config(format!("no such interface {ifname:?} (see `ip link`)")))?;
    let mtu: u32 = text
        .trim()
        .parse()
        .map_err(|_| StartError::Config(format!("{path}: {text:?} is not an MTU")))?;
    // An IPv4 packet is at most 65,535 bytes, whatever the link carries.
    Ok(u16::try_from(mtu).unwrap_or(u16::MAX))
}

/// The state to start from: the persisted one, with this node in it.
fn initial_state(s: &Settings, store: &StateStore) -> Result<Persisted, StartError> {
    let mut p = store.load()?.unwrap_or_default();
    match p.state.nodes.iter_mut().find(|n| n.name == s.node) {
        Some(n) => {
            n.addr = s.addr;
            n.vtep = s.vtep;
            n.addr6 = s.addr6;
        }
        None => p.state.nodes.push(ctl::Node {
            name: s.node.clone(),
            addr: s.addr,
            vtep: s.vtep,
            addr6: s.addr6,
            vtep_port: ctl::VXLAN_PORT,
            availability: ctl::Availability::Active,
        }),
    }
    Ok(p)
}

/// The CPUs meshd's other threads run on: those allowed less the workers' cores, or `None`
/// when that leaves none (every core a worker's) or changes nothing.
fn control_cpus(allowed: &[usize], worker_cores: &[usize]) -> Option<Vec<usize>> {
    let rest: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !worker_cores.contains(c))
        .collect();
    (!rest.is_empty() && rest.len() < allowed.len()).then_some(rest)
}

/// Keeps this thread and those it starts from now on (control, host stack, control socket,
/// metrics, etcd follower) off the workers' cores, as DPDK keeps its main lcore off the
/// forwarding ones: a worker polls its core without pause, and another thread woken there
/// preempts it for a scheduler slice while frames wait. On a machine whose every core is a
/// worker's they stay where they were.
fn keep_off_workers(worker_cores: &[usize]) {
    let allowed = match crate::port::sys::allowed_cpus() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("cannot read this thread's CPUs ({e}); meshd's other threads may share the workers' cores");
            return;
        }
    };
    match control_cpus(&allowed, worker_cores) {
        Some(rest) => match crate::port::sys::set_allowed_cpus(&rest) {
            Ok(()) => tracing::info!(cpus = ?rest, "meshd's other threads kept off the workers' cores"),
            Err(e) => tracing::warn!(cpus = ?rest, "cannot keep meshd's other threads off the workers' cores: {e}"),
        },
        None if allowed.iter().all(|c| worker_cores.contains(c)) => tracing::info!(
            "every core is a worker's: meshd's other threads share them (a core left out of --cores keeps them off)"
        ),
        None => {}
    }
}

/// Runs meshd until SIGINT or SIGTERM.
// Casts: the worker index and count come from --cores (a few dozen); the seed keeps the nanoseconds' low bits on purpose.
#[allow(clippy::cast_possible_truncation)]
pub fn run(s: Settings) -> Result<(), StartError> {
    // First: it refuses a second meshd for the same node before that one touches anything.
    let (mut flow_file, mut undo) = open_flow_state(&s, s.cores.len().max(1))?;
    let store = StateStore::new(&s.state);
    let t0 = std::time::Instant::now();
    let persisted = initial_state(&s, &store)?;
    let read = t0.elapsed();
    let workers = s.cores.len().max(1);
    let dpdk = open_dpdk(&s, workers)?;
    let (uplink_mac, tasks_mac, uplink_mtu) = match &dpdk {
        Some(d) => d.addresses(),
        None => (
            interface_mac(&s.uplink)?,
            interface_mac(&s.tasks)?,
            interface_mtu(&s.uplink)?,
        ),
    };
    // What VXLAN takes of the uplink: 20 bytes more over an IPv6 underlay.
    let vxlan = ctl::overlay_overhead(false, matches!(s.vtep, Some(std::net::IpAddr::V6(_))));
    if uplink_mtu < ctl::MIN_NETWORK_MTU + vxlan {
        return Err(StartError::Config(format!(
            "the uplink {:?} has MTU {uplink_mtu}: VXLAN needs {vxlan} bytes of it, which leaves \
             less than the {}-byte minimum an overlay must carry; raise it (ip link set {} mtu \
             1500)",
            s.uplink,
            ctl::MIN_NETWORK_MTU,
            s.uplink
        )));
    }
    let neigh = Arc::new(Neighbors::new(1 << 16));
    let table = ServiceTable::empty(&s.node, s.addr);
    let shared = Shared::new(table, workers, neigh);
    if let Some(d) = &dpdk {
        let _ = shared.devices.set(d.stats_source());
    }
    let t1 = std::time::Instant::now();
    let mut controller = Controller::new(s.node.clone(), persisted, store, shared.clone())
        .map_err(StartError::Config)?;
    tracing::info!(
        services = controller.state.services.len(),
        tasks = controller
            .state
            .services
            .iter()
            .map(|x| x.tasks.len())
            .sum::<usize>(),
        read_ms = read.as_millis(),
        compiled_ms = t1.elapsed().as_millis(),
        "state from {} in force",
        s.state.display()
    );
    let host_shared = Arc::new(HostShared::default());
    controller.host = Some(host_shared.clone());
    controller.uplink_mtu = Some(uplink_mtu);
    if let Some(c) = &s.cluster {
        controller.cluster = Some(c.spec.clone());
    }
    if let Err(e) = ctl::validate::check_mtu(&controller.state, uplink_mtu) {
        tracing::error!(
            "{e}; until it is changed, that network's packets are limited to {} bytes",
            uplink_mtu - vxlan
        );
    }
    tracing::info!(uplink = %s.uplink, mtu = uplink_mtu, overlay_mtu = uplink_mtu - vxlan, "uplink MTU");
    tracing::info!(node = %s.node, addr = %s.addr, generation = controller.generation, "state restored");

    let group = (std::process::id() & 0x7fff) as u16;
    let capture = match &s.pcap {
        Some(path) => {
            let c = Capture::create(path)
                .map_err(|e| StartError::Config(format!("--pcap {}: {e}", path.display())))?;
            tracing::warn!(file = %path.display(), "capturing every frame (a write per frame: for debugging)");
            Some(c)
        }
        None => None,
    };
    let mut handles = Vec::new();
    let mut kept = flow_file.as_mut().map(|ff| ff.regions().into_iter());
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    for (w, &core) in s.cores.iter().enumerate().take(workers) {
        let open = |ifname: &str, port: PortId, fanout: u16| {
            AfPacketPort::open(
                ifname,
                &AfPacketConfig {
                    port,
                    rx_ring: s.rx_ring,
                    fanout: Some(fanout),
                    ..AfPacketConfig::default()
                },
            )
        };
        let (mut up, mut tk): PortPair = match s.io {
            IoMode::Afpacket => (
                Box::new(open(&s.uplink, PortId::Uplink, group)?),
                Box::new(open(&s.tasks, PortId::Tasks, group.wrapping_add(0x8000))?),
            ),
            IoMode::Afxdp => open_xdp(&s)?,
            IoMode::Dpdk => match &dpdk {
                Some(d) => d.ports(w),
                None => return Err(StartError::Config(NO_DPDK.to_owned())),
            },
        };
        if let Some(cap) = &capture {
            up = Box::new(PcapWriter::new(up, cap.clone()));
            tk = Box::new(PcapWriter::new(tk, cap.clone()));
        }
        let cfg = Config {
            uplink_mac,
            tasks_mac,
            worker: w as u16,
            workers: workers as u16,
            flow_capacity: s.flows,
            uplink_mtu,
            new_flows_per_source: s.new_flows_per_source,
            flow_accounting: s.flow_accounting,
            ..Config::default()
        };
        let idle = if s.busy_poll {
            Idle::BusyPoll
        } else {
            // Long: frames, a table published and the host stack's frames wake a worker
            // at once (its ports' descriptors and its bell); only housekeeping waits this.
            Idle::Backoff {
                max: Duration::from_millis(50),
            }
        };
        let flows = match kept.as_mut().and_then(Iterator::next) {
            Some(arena) => {
                let (table, dropped) = FlowTable::adopt(arena);
                if dropped > 0 {
                    tracing::warn!(
                        worker = w,
                        dropped,
                        "adopted flows held the same key twice: kept the first of each"
                    );
                }
                table
            }
            None => FlowTable::new(s.flows),
        };
        let pipeline = Pipeline::with_flows(cfg, shared.neigh.clone(), flows);
        let mut worker = Worker::with_pipeline(w, pipeline, up, tk, shared.clone(), idle, 4096);
        let core_id = core_ids.iter().find(|c| c.id == core).copied();
        let on_dpdk = dpdk.is_some();
        let h = std::thread::Builder::new()
            .name(format!("meshd-w{w}"))
            .spawn(move || {
                match core_id {
                    Some(c) if core_affinity::set_for_current(c) => {
                        tracing::info!(worker = w, core, "worker pinned")
                    }
                    _ => tracing::warn!(
                        worker = w,
                        core,
                        "could not pin the worker to its core; running unpinned"
                    ),
                }
                if on_dpdk {
                    register_dpdk_thread();
                }
                worker.run();
            })?;
        handles.push(h);
    }
    tracing::info!(workers, uplink = %s.uplink, tasks = %s.tasks, io = ?s.io, rx_ring = ?s.rx_ring, "workers started");
    keep_off_workers(&s.cores);

    // The control thread owns the controller; everyone else sends it messages.
    let cached_revision = controller.revision;
    let (ctl, control_thread) = controller.start()?;
    handles.push(control_thread);
    if let Some(c) = &s.cluster {
        handles.push(start_follower(
            &s,
            c,
            workers,
            cached_revision,
            ctl.clone(),
        )?);
    }

    // The host side.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    if s.gossip_keys.is_empty() {
        tracing::info!(
            "health gossip is not signed (no --gossip-key-file): the underlay is trusted"
        );
    }
    let mut stack = HostStack::new(HostConfig {
        uplink_mac,
        tasks_mac,
        seed,
        uplink_mtu,
        gossip_keys: s.gossip_keys.clone(),
    });
    if let Some(up) = s.dns_upstream {
        stack.set_upstream(Box::new(UdpUpstream::connect(up)?));
        tracing::info!(upstream = %up, "DNS names outside the mesh go upstream");
    }
    let (hs, hc, hh) = (shared.clone(), ctl.clone(), host_shared.clone());
    handles.push(
        std::thread::Builder::new()
            .name("meshd-host".into())
            .spawn(move || host_loop(&hs, &hc, &hh, stack))?,
    );

    // The control socket.
    let (server, listener) = Server::bind(&s.socket).map_err(|e| StartError::Socket {
        path: s.socket.display().to_string(),
        source: e,
    })?;
    let cc = ctl.clone();
    handles.push(
        std::thread::Builder::new()
            .name("meshd-ctl".into())
            .spawn(move || Server::serve(listener, cc))?,
    );
    tracing::info!(socket = %s.socket.display(), "control socket ready");

    if let Some(addr) = s.metrics {
        let (ms, mh) = (shared.clone(), host_shared.clone());
        let l = std::net::TcpListener::bind(addr)?;
        tracing::info!(%addr, "Prometheus metrics at /metrics");
        handles.push(
            std::thread::Builder::new()
                .name("meshd-metrics".into())
                .spawn(move || crate::metrics::serve(l, ms, Some(mh)))?,
        );
    }

    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;
    // Started: the flow-state file is this meshd's now.
    undo.keep();
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping");
    shared.stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    drop(server);
    if let Some(ff) = &flow_file {
        ff.stopped();
        tracing::info!(file = %ff.path().display(), "flows kept for the next meshd");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Maps the flow-state file (`--flow-state`) and says what it found in it.
fn open_flow_state(
    s: &Settings,
    workers: usize,
) -> Result<(Option<crate::flow::keep::FlowFile>, RemoveUnlessStarted), StartError> {
    use crate::flow::keep::{FlowFile, Found};
    let Some(path) = &s.flow_state else {
        tracing::info!("flow tables on the heap (--flow-state none): a restart ends every connection through this node");
        return Ok((None, RemoveUnlessStarted(None)));
    };
    let t0 = std::time::Instant::now();
    let (ff, found) = FlowFile::open(path, &s.node, u32::from(s.addr), workers, s.flows)?;
    let file = path.display();
    // A file this start made (or found of no use) goes if the start fails; adopted flows stay
    // for the next try.
    let undo = (!matches!(found, Found::Adopted { .. })).then(|| path.clone());
    match found {
        Found::Fresh => {
            tracing::info!(%file, "no flows kept from a meshd before this one: flow tables start empty (and are kept in that file)");
        }
        Found::Adopted {
            flows,
            discarded,
            clean,
        } => {
            tracing::info!(
                %file,
                flows = flows.iter().sum::<usize>(),
                per_worker = ?flows,
                discarded,
                took_ms = t0.elapsed().as_millis(),
                "adopted the flows of the meshd before this one ({})",
                if clean { "it stopped cleanly" } else { "it did not stop cleanly: killed or crashed" }
            );
        }
        Found::Refused(why) => {
            tracing::warn!(%file, "flows kept there not adopted: {why}; flow tables start empty");
        }
    }
    Ok((Some(ff), RemoveUnlessStarted(undo)))
}

/// Removes the flow-state file at its path when dropped, unless [`Self::keep`] was called: a
/// start refused after the file was opened (a bad state, an interface that does not exist)
/// leaves no file behind.
struct RemoveUnlessStarted(Option<PathBuf>);

impl RemoveUnlessStarted {
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveUnlessStarted {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Cluster mode: the thread that follows etcd and hands its state to the controller.
#[cfg(feature = "cluster")]
fn start_follower(
    s: &Settings,
    c: &ClusterSettings,
    workers: usize,
    cached_revision: i64,
    ctl: ControlHandle,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    use ctl::cluster::follow::{follow, Applier, FollowConfig};

    struct ToController(ControlHandle);
    impl Applier for ToController {
        fn apply(
            &mut self,
            delta: ctl::cluster::Delta,
            revision: i64,
            live: &std::collections::BTreeSet<String>,
        ) -> Result<u64, String> {
            self.0.adopt(delta, revision, live.clone())
        }
        fn stopping(&self) -> bool {
            self.0.shared().stop.load(Ordering::Relaxed)
        }
    }
    let cfg = FollowConfig {
        endpoints: c.endpoints.clone(),
        tls: ctl::cluster::etcd::Tls {
            cacert: c.cacert.clone(),
            cert: c.cert.clone(),
            key: c.key.clone(),
        },
        node: ctl::Node {
            name: s.node.clone(),
            addr: s.addr,
            vtep: s.vtep,
            addr6: s.addr6,
            vtep_port: ctl::VXLAN_PORT,
            availability: ctl::Availability::Active,
        },
        member: ctl::cluster::Member {
            addr: s.addr,
            vtep: s.vtep,
            version: env!("CARGO_PKG_VERSION").to_string(),
            workers,
        },
        lease_ttl: c.lease,
        timeout: Duration::from_secs(3),
        cached_revision,
    };
    tracing::info!(etcd = %c.spec, lease = ?c.lease, "cluster mode: following the state in etcd");
    let mut applier = ToController(ctl);
    Ok(std::thread::Builder::new()
        .name("meshd-cluster".into())
        .spawn(move || follow(&cfg, &mut applier))?)
}

#[cfg(not(feature = "cluster"))]
fn start_follower(
    _: &Settings,
    _: &ClusterSettings,
    _: usize,
    _: i64,
    _: ControlHandle,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    Err(StartError::Config(NO_CLUSTER.to_owned()))
}

/// A worker's uplink and tasks ports.
type PortPair = (Box<dyn Port + Send>, Box<dyn Port + Send>);

/// The uplink and tasks ports of the (single) worker on AF_XDP.
#[cfg(feature = "afxdp")]
fn open_xdp(s: &Settings) -> Result<PortPair, StartError> {
    use crate::port::afxdp::{AfXdpConfig, AfXdpPort};
    let open = |ifname: &str, port: PortId| {
        let p = AfXdpPort::open(
            ifname,
            &AfXdpConfig {
                port,
                ..AfXdpConfig::default()
            },
        )?;
        tracing::info!(ifname, mode = ?p.mode(), zero_copy = p.zero_copy(), "AF_XDP port open");
        Ok::<_, StartError>(p)
    };
    Ok((
        Box::new(open(&s.uplink, PortId::Uplink)?),
        Box::new(open(&s.tasks, PortId::Tasks)?),
    ))
}

/// Never called: [`Args::resolve`] refuses `--io afxdp` in a build without the feature.
#[cfg(not(feature = "afxdp"))]
fn open_xdp(_: &Settings) -> Result<PortPair, StartError> {
    Err(StartError::Config(NO_AFXDP.to_owned()))
}

/// The DPDK devices of `--io dpdk`, started, and each worker's mbuf pool.
#[cfg(feature = "dpdk")]
struct DpdkIo {
    up: crate::port::dpdk::Device,
    tk: crate::port::dpdk::Device,
    pools: Vec<Arc<crate::port::dpdk::MbufPool>>,
}

#[cfg(feature = "dpdk")]
impl DpdkIo {
    fn addresses(&self) -> ([u8; 6], [u8; 6], u16) {
        (self.up.mac, self.tk.mac, self.up.mtu)
    }

    /// What `stats` shows of the devices and pools, read on the asking thread.
    fn stats_source(&self) -> crate::shared::DeviceStats {
        let devices = [("uplink", self.up.handle()), ("tasks", self.tk.handle())];
        let pools = self.pools.clone();
        crate::shared::DeviceStats(Box::new(move || {
            crate::port::dpdk::report(&devices, &pools)
        }))
    }

    /// Worker `w`'s queue pair on each device.
    // Casts: w < workers, which the devices have queues for (u16).
    #[allow(clippy::cast_possible_truncation)]
    fn ports(&self, w: usize) -> PortPair {
        use crate::port::dpdk::DpdkPort;
        let pool = self.pools[w].clone();
        (
            Box::new(DpdkPort::new(
                &self.up,
                w as u16,
                PortId::Uplink,
                pool.clone(),
            )),
            Box::new(DpdkPort::new(&self.tk, w as u16, PortId::Tasks, pool)),
        )
    }
}

/// A DPDK worker's thread takes an lcore id before its first burst.
#[cfg(feature = "dpdk")]
fn register_dpdk_thread() {
    crate::port::dpdk::register_thread();
}

/// Never called: without the `dpdk` feature there are no DPDK workers.
#[cfg(not(feature = "dpdk"))]
fn register_dpdk_thread() {}

/// With `--io dpdk`: starts EAL and both devices, a queue pair per worker.
#[cfg(feature = "dpdk")]
fn open_dpdk(s: &Settings, workers: usize) -> Result<Option<DpdkIo>, StartError> {
    use crate::port::dpdk::{self, Device, DeviceSpec, MbufPool};
    if s.io != IoMode::Dpdk {
        return Ok(None);
    }
    let up =
        DeviceSpec::parse(&s.uplink).map_err(|e| StartError::Config(format!("--uplink {e}")))?;
    let tk = DeviceSpec::parse(&s.tasks).map_err(|e| StartError::Config(format!("--tasks {e}")))?;
    if up.name() == tk.name() {
        return Err(StartError::Config(format!(
            "--uplink and --tasks both name the DPDK device {:?}: give two devices",
            up.name()
        )));
    }
    let args = dpdk::eal_args(
        &s.dpdk_args,
        s.cores.first().copied().unwrap_or(0),
        &[&up, &tk],
    );
    tracing::info!(?args, "starting DPDK's EAL");
    dpdk::init(&args)?;
    let pools = (0..workers)
        .map(|w| MbufPool::new(&format!("meshd-w{w}")).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&MbufPool> = pools.iter().map(|p| &**p).collect();
    let upd = Device::start(&up, &refs, s.uplink_mtu)?;
    let tkd = Device::start(&tk, &refs, None)?;
    for d in [&upd, &tkd] {
        let l = d.link();
        tracing::info!(
            device = %d.name,
            port = d.id,
            driver = %d.driver,
            queues = d.queues,
            rss = d.rss,
            mtu = d.mtu,
            link_up = l.up != 0,
            speed_mbps = l.speed_mbps,
            "DPDK device started"
        );
    }
    Ok(Some(DpdkIo {
        up: upd,
        tk: tkd,
        pools,
    }))
}

/// Uninhabited without the `dpdk` feature: [`Args::resolve`] refuses `--io dpdk`.
#[cfg(not(feature = "dpdk"))]
enum DpdkIo {}

#[cfg(not(feature = "dpdk"))]
impl DpdkIo {
    fn addresses(&self) -> ([u8; 6], [u8; 6], u16) {
        match *self {}
    }
    fn stats_source(&self) -> crate::shared::DeviceStats {
        match *self {}
    }
    fn ports(&self, _: usize) -> PortPair {
        match *self {}
    }
}

#[cfg(not(feature = "dpdk"))]
#[allow(clippy::unnecessary_wraps)]
fn open_dpdk(_: &Settings, _: usize) -> Result<Option<DpdkIo>, StartError> {
    Ok(None)
}

/// The upstream resolver: a kernel UDP socket in meshd's own namespace, connected so only the
/// upstream's answers come in.
struct UdpUpstream(std::net::UdpSocket);

impl UdpUpstream {
    fn connect(to: std::net::SocketAddrV4) -> std::io::Result<UdpUpstream> {
        let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(to)?;
        s.set_nonblocking(true)?;
        Ok(UdpUpstream(s))
    }
}

impl Upstream for UdpUpstream {
    fn send(&mut self, msg: &[u8]) -> bool {
        self.0.send(msg).is_ok()
    }
    fn recv(&mut self) -> Option<Vec<u8>> {
        let mut b = [0u8; 4096];
        let n = self.0.recv(&mut b).ok()?;
        Some(b[..n].to_vec())
    }
}

/// The host thread: frames from the workers into the host stack, its frames back to worker 0,
/// health views to the controller (which publishes them as new table generations), counters
/// and health details for the control thread.
fn host_loop(shared: &Shared, ctl: &ControlHandle, host: &HostShared, mut stack: HostStack) {
    let clock = Clock::new();
    let mut last_stats = 0u64;
    let mut wake = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let now = clock.now_ms();
        let table = shared.table.load_full();
        let mut got = 0;
        while got < 256 {
            let Some(b) = shared.to_host.pop() else { break };
            stack.input(&table, b.port, b.data(), now);
            // The buffer goes back to the workers.
            let _ = shared.spare.push(b);
            got += 1;
        }
        for q in &shared.seen {
            while let Some((uid, seen)) = q.pop() {
                stack.seen(&table, uid, seen, now);
                got += 1;
            }
        }
        if got > 0 || now >= wake {
            stack.poll(&table, &shared.neigh, now);
            let mut sent = false;
            for (port, f) in stack.take_output() {
                let mut b = shared.spare.pop().unwrap_or_default();
                b.fill(&f);
                b.port = port;
                // To a task: on its VLAN, by the table.
                b.vlan = match port {
                    PortId::Tasks => crate::host::tasks_frame_vlan(&table, &f),
                    PortId::Uplink => 0,
                };
                let _ = shared.from_host.push(b);
                sent = true;
            }
            if sent {
                shared.bells[0].ring();
            }
            wake = stack.next_wakeup(now);
        }
        if let Some(v) = stack.take_view() {
            // Never waits: the control thread applies it after any request under way.
            ctl.health(v);
        }
        if let Some(b) = stack.take_board() {
            if let Ok(mut x) = host.board.lock() {
                *x = b;
            }
        }
        if now.saturating_sub(last_stats) >= 100 {
            if let Ok(mut x) = host.stats.lock() {
                *x = stack.stats.clone();
            }
            last_stats = now;
        }
        // Not held while asleep: the controller patches the table before the running one in
        // place once nobody holds it (a copy of 100,000 tasks otherwise).
        drop(table);
        if got == 0 {
            // Nothing came: sleep until the stack's next timer, the next counters copy or a
            // worker's ring, whichever is first.
            let due = wake.min(last_stats + 100).saturating_sub(now).clamp(1, 100);
            host_sleep(shared, Duration::from_millis(due));
        }
    }
}

/// The host thread's wait: on its bell when it has one (a worker rings it when it queues
/// frames or passive-health events), else a short sleep.
fn host_sleep(shared: &Shared, most: Duration) {
    let bell = &shared.host_bell;
    let Some(fd) = bell.fd() else {
        std::thread::sleep(most.min(Duration::from_micros(200)));
        return;
    };
    bell.arm();
    let waiting = !shared.to_host.is_empty() || shared.seen.iter().any(|q| !q.is_empty());
    if !waiting {
        crate::port::sys::wait_readable(&[fd], most);
    }
    bell.disarm();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "meshd", "--node", "n1", "--addr", "10.0.0.1", "--uplink", "u", "--tasks", "t",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn other_threads_go_on_the_cores_no_worker_has() {
        assert_eq!(control_cpus(&[0, 1], &[1]), Some(vec![0]));
        assert_eq!(control_cpus(&[0, 1, 2, 3], &[0, 2]), Some(vec![1, 3]));
        // Every core a worker's: nowhere else to go.
        assert_eq!(control_cpus(&[0, 1], &[0, 1]), None);
        // A worker on a core this process may not use changes nothing.
        assert_eq!(control_cpus(&[2, 3], &[0]), None);
    }

    #[test]
    fn rx_ring_defaults_to_per_frame_and_the_flag_picks_blocks() {
        assert_eq!(args(&[]).resolve().unwrap().rx_ring, RxRing::PerFrame);
        let s = args(&["--rx-ring", "blocks"]).resolve().unwrap();
        assert_eq!(s.rx_ring, RxRing::Blocks);
        let s = args(&["--rx-ring", "frames"]).resolve().unwrap();
        assert_eq!(s.rx_ring, RxRing::PerFrame);
        assert!(Args::try_parse_from(["meshd", "--rx-ring", "v3"]).is_err());
    }

    #[test]
    fn io_dpdk_needs_the_feature_and_dpdk_args_need_io_dpdk() {
        let d = args(&["--io", "dpdk", "--dpdk-args", "--no-huge -m 128"]).resolve();
        if cfg!(feature = "dpdk") {
            assert_eq!(d.unwrap().dpdk_args, ["--no-huge", "-m", "128"]);
        } else {
            assert!(d
                .unwrap_err()
                .to_string()
                .contains("--features dataplane/dpdk"));
        }
        let e = args(&["--dpdk-args", "--no-huge"]).resolve().unwrap_err();
        assert!(e.to_string().contains("--io dpdk"), "{e}");
        let e = args(&["--uplink-mtu", "1600"]).resolve().unwrap_err();
        assert!(e.to_string().contains("goes with --io dpdk"), "{e}");
        if cfg!(feature = "dpdk") {
            let d = args(&["--io", "dpdk", "--uplink-mtu", "1600"]).resolve();
            assert_eq!(d.unwrap().uplink_mtu, Some(1600));
            for bad in ["1000", "9000"] {
                let e = args(&["--io", "dpdk", "--uplink-mtu", bad])
                    .resolve()
                    .unwrap_err();
                assert!(e.to_string().contains("1280 to 1900"), "{e}");
            }
        }
    }

    #[test]
    fn io_defaults_to_afpacket_and_afxdp_needs_the_feature_and_one_core() {
        assert_eq!(args(&[]).resolve().unwrap().io, IoMode::Afpacket);
        assert_eq!(
            args(&["--io", "afpacket"]).resolve().unwrap().io,
            IoMode::Afpacket
        );
        assert!(Args::try_parse_from(["meshd", "--io", "xdp"]).is_err());
        let xdp = args(&["--io", "afxdp"]).resolve();
        if cfg!(feature = "afxdp") {
            assert_eq!(xdp.unwrap().io, IoMode::Afxdp);
            let two = args(&["--io", "afxdp", "--cores", "0,1"])
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(
                two.contains("one worker") && two.contains("--cores names 2"),
                "{two}"
            );
            // One core is fine, and AF_PACKET takes any number.
            assert!(args(&["--io", "afxdp", "--cores", "1"]).resolve().is_ok());
            assert!(args(&["--cores", "0,1"]).resolve().is_ok());
        } else {
            assert_eq!(xdp.unwrap_err().to_string(), NO_AFXDP);
        }
    }

    #[test]
    fn a_flow_table_size_out_of_range_is_refused_with_the_range() {
        assert_eq!(args(&[]).resolve().unwrap().flows, 1 << 20);
        assert_eq!(args(&["--flows", "16"]).resolve().unwrap().flows, 16);
        assert_eq!(
            FlowTable::BYTES_PER_FLOW,
            228,
            "--flows's help says 228 bytes"
        );
        for bad in ["0", "15", "268435457"] {
            let e = args(&["--flows", bad]).resolve().unwrap_err().to_string();
            assert!(
                e.contains(&format!("--flows {bad}")) && e.contains("16 to 268435456"),
                "{e}"
            );
        }
    }

    #[test]
    fn io_from_the_config_file_and_the_flag_wins() {
        let dir = std::env::temp_dir().join(format!("meshd-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meshd.toml");
        std::fs::write(&path, "io = \"afxdp\"\n").unwrap();
        let p = path.to_str().unwrap();
        let from_file = args(&["--config", p]).resolve();
        if cfg!(feature = "afxdp") {
            assert_eq!(from_file.unwrap().io, IoMode::Afxdp);
        } else {
            assert_eq!(from_file.unwrap_err().to_string(), NO_AFXDP);
        }
        assert_eq!(
            args(&["--config", p, "--io", "afpacket"])
                .resolve()
                .unwrap()
                .io,
            IoMode::Afpacket
        );
        std::fs::write(&path, "io = \"netmap\"\n").unwrap();
        assert!(args(&["--config", p]).resolve().is_err(), "no such backend");
        std::fs::write(&path, "io = \"dpdk\"\ndpdk_args = \"--no-huge\"\n").unwrap();
        let d = args(&["--config", p]).resolve();
        if cfg!(feature = "dpdk") {
            let d = d.unwrap();
            assert_eq!(
                (d.io, d.dpdk_args),
                (IoMode::Dpdk, vec!["--no-huge".to_string()])
            );
        } else {
            assert_eq!(d.unwrap_err().to_string(), NO_DPDK);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rx_ring_from_the_config_file_and_the_flag_wins() {
        let dir = std::env::temp_dir().join(format!("meshd-rx-ring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meshd.toml");
        std::fs::write(&path, "rx_ring = \"blocks\"\n").unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(
            args(&["--config", p]).resolve().unwrap().rx_ring,
            RxRing::Blocks
        );
        assert_eq!(
            args(&["--config", p, "--rx-ring", "frames"])
                .resolve()
                .unwrap()
                .rx_ring,
            RxRing::PerFrame
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
