//! `meshctl`: the command line, in Docker Swarm's vocabulary, over the control protocol.
//!
//! Reads (`ls`, `inspect`, `ps`, `stats`) ask the first `--socket`; changes go to every socket
//! (one per node of a small mesh) at once and are reported per node.

mod capture;
#[cfg(feature = "cluster")]
mod cluster;
mod conn;
pub mod render;
mod service_stats;
pub mod spec;
pub mod stats;

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ctl::client::{self, ClientError};
use ctl::model::{
    self, Encryption, HealthCheck, Network, NetworkKey, Node, PsTask, Secret, Service,
    ServiceNetwork, State, Task, INGRESS_VNI, VXLAN_PORT,
};
use ctl::proto::{Change, Command, NetworkUpdate, Query, ServiceUpdate, Success, TimeoutsUpdate};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use spec::SpecError;

const DEFAULT_SOCKET: &str = "/run/meshd/meshd.sock";

const EXAMPLES: &str = "\
Examples:
  # Two nodes; every change goes to both daemons.
  export MESHCTL_SOCKET=/run/meshd/n1.sock,/run/meshd/n2.sock
  meshctl node add n1 --addr 192.168.1.11
  meshctl node add n2 --addr 192.168.1.12
  meshctl network create ingress --ingress --subnet 10.0.0.0/24 \\
      --endpoint n1=10.0.0.2 --endpoint n2=10.0.0.3
  meshctl network create appnet --subnet 10.0.1.0/24
  meshctl service create --name web --publish published=8080,target=80 --network appnet \\
      --task name=web.1,node=n1,addr=ingress:10.0.0.11,addr=appnet:10.0.1.11 \\
      --task name=web.2,node=n2,addr=ingress:10.0.0.12,addr=appnet:10.0.1.12
  curl http://192.168.1.11:8080/     # any node answers, round-robin over web.1 and web.2
  meshctl service ls
  meshctl service ps web
  meshctl service update --publish-add 8443:443 --task-update name=web.2,weight=0 web
  meshctl service scale web=1        # removes web.2
  meshctl node update --availability drain n2
  meshctl --format json service inspect web | jq '.[0].Endpoint.VirtualIPs'

  # A fleet whose meshds run with --cluster: the same commands, against etcd, from anywhere.
  export MESHCTL_CLUSTER=etcd://10.0.9.1:2379,10.0.9.2:2379,10.0.9.3:2379
  meshctl node ls                    # STATUS Ready/Down, the revision each node runs
  meshctl service scale web=1        # returns once every node runs it (or names who does not)

meshd does not start containers: a task is a backend that already exists somewhere (a
container, a network namespace) with an address on each network; meshctl registers it.";

/// Control meshd, the userspace routing mesh, in Docker Swarm's words.
///
/// meshctl talks to meshd over its control socket. Reads (ls, inspect, ps, stats) ask the first
/// socket; a change (create, update, scale, rm, add) goes to every socket named, so one command
/// updates each node of a small mesh, and meshctl reports per node once each daemon's workers
/// all run the new state.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, after_help = EXAMPLES)]
pub struct Cli {
    /// meshd's control socket. Repeat the flag or separate paths with commas to name one per
    /// node: changes go to all of them, reads to the first.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "MESHCTL_SOCKET",
        value_delimiter = ',',
        default_value = DEFAULT_SOCKET,
        value_name = "PATH"
    )]
    socket: Vec<PathBuf>,

    /// The cluster's etcd (etcd://HOST:PORT[,HOST:PORT...]), for a mesh whose meshds run with
    /// --cluster: reads and changes go to etcd instead of sockets, from any machine that
    /// reaches it, and a change waits until every node runs it.
    #[arg(
        long,
        global = true,
        help_heading = "Cluster options",
        env = "MESHCTL_CLUSTER",
        value_name = "ENDPOINTS"
    )]
    cluster: Option<String>,

    /// The CA certificate (PEM) that signed etcd's: etcd is then reached over TLS.
    #[arg(
        long,
        global = true,
        help_heading = "Cluster options",
        env = "MESHCTL_ETCD_CACERT",
        value_name = "FILE"
    )]
    etcd_cacert: Option<PathBuf>,

    /// A client certificate (PEM) for an etcd that asks for one (with --etcd-key).
    #[arg(
        long,
        global = true,
        help_heading = "Cluster options",
        env = "MESHCTL_ETCD_CERT",
        value_name = "FILE"
    )]
    etcd_cert: Option<PathBuf>,

    /// The key of --etcd-cert (PEM).
    #[arg(
        long,
        global = true,
        help_heading = "Cluster options",
        env = "MESHCTL_ETCD_KEY",
        value_name = "FILE"
    )]
    etcd_key: Option<PathBuf>,

    /// With --cluster, return once the change is written, without waiting for the nodes to run
    /// it (Docker's --detach).
    #[arg(long, short = 'd', global = true, help_heading = "Cluster options")]
    detach: bool,

    /// Output: `table` for people (tables, Docker-style progress, Docker-shaped inspect), `json`
    /// for scripts (meshd's own JSON, unchanged).
    #[arg(long, global = true, help_heading = "Global options", value_enum, default_value_t = Format::Table)]
    format: Format,

    /// Seconds to wait for each daemon's answer; a change is answered once every worker of the
    /// daemon runs it.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        default_value = "30",
        value_name = "SECONDS",
        value_parser = parse_seconds
    )]
    timeout: Duration,

    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() && x < 1e9 => Ok(Duration::from_secs_f64(x)),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

// Parsed once per run: the size of the largest command's arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Top {
    /// Manage overlay networks (VXLAN segments)
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Manage the nodes (peer meshd instances) of the mesh
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage services: published ports, VIPs and their tasks
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Show meshd's counters (of the first socket)
    Stats,
    /// See and end the connections meshd's workers hold (of every socket)
    #[command(subcommand)]
    Conn(conn::ConnCmd),
    /// Write what meshd's workers receive and send to a pcapng file (as tcpdump -w)
    #[command(after_help = capture::EXAMPLES)]
    Capture(capture::CaptureArgs),
}

#[derive(Debug, Subcommand)]
enum NetworkCmd {
    /// Create an overlay network
    #[command(after_help = "\
Examples:
  meshctl network create ingress --ingress --subnet 10.0.0.0/24 --endpoint n1=10.0.0.2 --endpoint n2=10.0.0.3
  meshctl network create appnet --subnet 10.0.1.0/24 --gateway 10.0.1.1 --vni 4097
  meshctl network create jumbo --subnet 10.0.2.0/24 --opt mtu=8950
  meshctl network create secret --subnet 10.0.3.0/24 --opt encrypted
  meshctl network create dual --subnet 10.0.5.0/24 --ipv6 --subnet fd00:5::/64

Without --vni, the ingress network gets VNI 4096, as in Swarm, and any other network the
lowest free VNI above it on every daemon named by --socket.

Each network has an MTU, the largest IPv4 packet its tasks send: by default each node's uplink
MTU less the 50 bytes VXLAN adds (1450 on a 1500 underlay), as Swarm's overlays. Give the tasks'
interfaces that MTU. meshd also clamps the TCP MSS of connections it translates and answers
too-big packets with ICMP \"fragmentation needed\", so a task left at 1500 still works.

--opt encrypted makes an encrypted overlay, as Swarm's: meshctl makes a random 256-bit key and
gives it to every daemon named by --socket (keys are kept in each node's state file, readable by
root only, and never shown); each VXLAN frame of the network is sealed with XChaCha20-Poly1305,
so a host on the underlay can neither read nor forge the network's traffic. Sealing adds 44
bytes, so the default MTU is 1406 on a 1500 underlay. Without it the underlay is trusted: any
host on it that can send from a peer's address can inject frames into unencrypted networks.
Rotate the key with `meshctl network update --rotate-key`.

--ipv6 makes a dual-stack network, as Docker's: give its IPv6 prefix (at most /96) with a second
--subnet; meshd picks none itself. Nothing is allocated twice: every address on the network (the
tasks', the VIPs', the gateway's, the endpoints') has an IPv6 twin, the prefix with the IPv4
address in its last 32 bits (task 10.0.5.3 is fd00:5::a00:503 above). `network inspect`,
`service inspect` and `service ps` show the twins and the embedded DNS answers AAAA queries with
them. The ingress network stays IPv4: IPv6 clients of published ports are translated at the node
(meshd --addr6).")]
    Create(NetworkCreateArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls,
    /// Rotate an encrypted network's key on every daemon named by --socket
    #[command(after_help = "\
Examples:
  meshctl network update --rotate-key appnet

An encrypted network (created with --opt encrypted) seals every VXLAN frame with its primary key
and opens frames sealed with any of its keys. --rotate-key makes a new random key and sends it
to every daemon twice: first to accept it, then to seal with it; the old key is still accepted
until the next rotation, so no frame in flight is refused. Swarm rotates its overlay keys every
12 hours; run this from a timer to do the same. If a daemon refuses the first step, none seals
with the new key: fix it and rotate again.")]
    Update {
        /// Make a new key, distribute it, then seal with it
        #[arg(long, required = true)]
        rotate_key: bool,
        /// The encrypted network
        #[arg(value_name = "NETWORK")]
        name: String,
    },
    /// Show networks as JSON
    Inspect {
        #[arg(required = true, value_name = "NETWORK")]
        names: Vec<String>,
    },
    /// Remove networks no service uses
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "NETWORK")]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct NetworkCreateArgs {
    /// The network's name
    name: String,
    /// The network's IPv4 subnet; with --ipv6, give it again for the IPv6 prefix (at most /96),
    /// as `docker network create --ipv6 --subnet 10.0.5.0/24 --subnet fd00:5::/64`
    #[arg(long, required = true, value_name = "CIDR")]
    subnet: Vec<String>,
    /// Make the network dual-stack: its IPv6 prefix is the second --subnet, and every address
    /// on it has an IPv6 twin there (the prefix, then the IPv4 address)
    #[arg(long)]
    ipv6: bool,
    /// The gateway and DNS resolver address [default: the subnet's first address]; on a
    /// dual-stack network its IPv6 twin is the IPv6 gateway
    #[arg(long, value_name = "IP")]
    gateway: Option<Ipv4Addr>,
    /// The VXLAN network identifier [default: 4096 for --ingress, else the lowest free above]
    #[arg(long, value_name = "N")]
    vni: Option<u32>,
    /// Make this Swarm's ingress network, which carries published-port traffic
    #[arg(long)]
    ingress: bool,
    /// A node's endpoint address on this network, the source it masquerades published-port
    /// traffic with (repeatable; the ingress network needs one per node)
    #[arg(long = "endpoint", value_name = "NODE=IP")]
    endpoints: Vec<String>,
    /// A driver option, as `docker network create -o`: `mtu=N` (or Docker's
    /// `com.docker.network.driver.mtu=N`) sets the MTU of the network's tasks. Without it the
    /// MTU is each node's uplink MTU less 50 bytes of VXLAN (1450 on a 1500 underlay); a node
    /// refuses a network whose MTU does not fit its uplink (repeatable)
    #[arg(long = "opt", short = 'o', value_name = "KEY=VALUE")]
    opts: Vec<String>,
}

/// What `--opt` sets on a new network.
#[derive(Debug, Default, PartialEq, Eq)]
struct NetOpts {
    mtu: Option<u16>,
    encrypted: bool,
}

/// The options set by `--opt` (the last one given wins, as in Docker), or an error naming what
/// is wrong: `mtu=N` (also Docker's `com.docker.network.driver.mtu=N`), `encrypted` (or
/// `encrypted=true|false`).
fn network_opts(opts: &[String]) -> Result<NetOpts, CliError> {
    let mut o = NetOpts::default();
    for text in opts {
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (text.trim(), None),
        };
        match (key, value) {
            ("mtu" | "com.docker.network.driver.mtu", Some(value)) => {
                let n: u16 = value.parse().map_err(|_| {
                    CliError::Msg(format!(
                        "--opt {text:?}: the MTU must be a number from {} to {}",
                        ctl::MIN_NETWORK_MTU,
                        ctl::MAX_NETWORK_MTU
                    ))
                })?;
                o.mtu = Some(n);
            }
            ("mtu" | "com.docker.network.driver.mtu", None) => {
                return Err(CliError::Msg(format!(
                    "--opt {text:?}: expected KEY=VALUE, for example --opt mtu=1400"
                )))
            }
            ("encrypted", None | Some("" | "true")) => o.encrypted = true,
            ("encrypted", Some("false")) => o.encrypted = false,
            ("encrypted", Some(v)) => {
                return Err(CliError::Msg(format!(
                    "--opt {text:?}: encrypted takes no value (or true/false), not {v:?}"
                )))
            }
            (other, _) => {
                return Err(CliError::Msg(format!(
                    "--opt {text:?}: unknown option {other:?}; meshd knows `mtu=N` \
                     (also spelled com.docker.network.driver.mtu) and `encrypted`"
                )))
            }
        }
    }
    Ok(o)
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Add a node: a peer meshd with its underlay address and VXLAN tunnel endpoint
    #[command(after_help = "\
Examples:
  meshctl node add n3 --addr 192.168.1.13 --endpoint ingress=10.0.0.4
  meshctl node add n4 --addr 192.168.1.14 --vtep 172.16.0.14 --vtep-port 4789
  meshctl node add n5 --addr 192.168.1.15 --vtep fd00:100::15    # VXLAN over IPv6

Once a service publishes a port, every node needs an endpoint address on the ingress network:
give it with --endpoint ingress=IP.")]
    Add(NodeAddArgs),
    /// List nodes
    #[command(visible_alias = "list")]
    Ls,
    /// Remove nodes that run no task
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "NODE")]
        names: Vec<String>,
    },
    /// Change a node's availability
    #[command(after_help = "\
Example:
  meshctl node update --availability drain n2    # n2's tasks take no new connections
  meshctl node update --availability active n2")]
    Update {
        /// `drain`: the node's tasks take no new connections; existing ones go on
        #[arg(long, value_enum)]
        availability: AvailabilityArg,
        /// The node to change
        name: String,
    },
}

#[derive(Debug, Args)]
struct NodeAddArgs {
    /// The node's name
    name: String,
    /// The node's underlay address, where its published ports answer
    #[arg(long, value_name = "IP")]
    addr: Ipv4Addr,
    /// The node's VXLAN tunnel endpoint, IPv4 or IPv6 (VXLAN over an IPv6 underlay: every
    /// node's then; 20 bytes more per frame) [default: --addr]
    #[arg(long, value_name = "IP")]
    vtep: Option<std::net::IpAddr>,
    /// The node's IPv6 address on the underlay, if it has one (where it answers ping6)
    #[arg(long, value_name = "IPV6")]
    addr6: Option<Ipv6Addr>,
    /// The UDP port of the node's VXLAN tunnel endpoint
    #[arg(long, value_name = "PORT", default_value_t = VXLAN_PORT)]
    vtep_port: u16,
    /// Whether the node's tasks take new connections
    #[arg(long, value_enum, default_value_t = AvailabilityArg::Active)]
    availability: AvailabilityArg,
    /// The node's endpoint address on a network (repeatable)
    #[arg(long = "endpoint", value_name = "NETWORK=IP")]
    endpoints: Vec<String>,
}

const SERVICE_CREATE_HELP: &str = "\
Example:
  meshctl service create --name web --publish published=8080,target=80 \\
      --network appnet --endpoint-mode vip \\
      --task name=web.1,node=n1,addr=ingress:10.0.0.11,addr=appnet:10.0.1.11 \\
      --task name=web.2,node=n2,addr=ingress:10.0.0.12,addr=appnet:10.0.1.12

Specs:
  --publish  published=PORT,target=PORT[,protocol=tcp|udp][,mode=ingress|host], or Docker's
             PUBLISHED:TARGET[/udp]. mode=ingress (the default) answers on every node, even
             one without a task; mode=host only on the nodes that run a task.
  --network  NETWORK[:VIP]. In endpoint mode vip, meshctl picks the lowest free address of the
             network (on every daemon named) when no VIP is given.
  --task     name=SERVICE.SLOT,node=NODE,addr=NETWORK:IP[,addr=NETWORK:IP...][,weight=N]
             [,state=running|unhealthy|draining|shutdown|failed][,vlan=1-4094]. A task of a
             service that publishes ports needs an address on the ingress network. weight=0
             takes no new connections. vlan= is the VLAN of the task's own port on its node's
             tasks bridge (unique per node): meshd then takes from the task only frames tagged
             with it, and carries every frame between tasks itself (README: Floods and hostile
             input).
  --health   tcp[:PORT] or http:[PORT]/PATH[=STATUS], with --health-interval, --health-timeout
             (durations like 500ms, 2s, 1m30s) and --health-retries, as Docker's HEALTHCHECK.
             A task takes connections once a check passes; after --health-retries failures in
             a row it takes none and its connections are reset, until a check passes again.
  --outlier  consecutive=N,eject=DURATION,max=P% or none. Passive health, on without a check:
             a node that sees N new connections to a task fail in a row (a RST to its SYN, or
             no answer within 10 s) sends it no new connection for DURATION, one DURATION
             longer each time in a row (5m at most), then tries it again; never more than P%
             of a service's tasks (at least one) at once. Running connections stay. Each node
             judges by what it sees itself. Defaults: consecutive=3,eject=10s,max=50%.

Schedulers (--scheduler; each worker of each node schedules its own connections):
  rr      strict rotation over the tasks taking connections (the default). Weights are
          ignored, as by IPVS's rr: weight=0 (no new connections) is the only one that counts.
  wrr     weighted round-robin: a task of weight=3 gets three connections for every one of a
          task of weight=1, interleaved, not in bursts (nginx's smooth weighted round-robin: a
          task is never a whole connection ahead of its exact share, and has exactly it after
          each round of sum-of-weights connections).
  lc      least connections: the task with the fewest active connections made by the worker
          picking (ties in rotation). A worker picks only a task at its least count, so with
          W workers on N nodes picks leave the tasks' totals within N*W of each other (closes
          can spread them more; the next picks fill the least loaded first).
  wlc     weighted least connections: the fewest active connections per unit of weight.
  maglev  Maglev consistent hashing over the client's address and ports: the same choice on
          every node; weighted.

Affinity (--affinity client-ip [--affinity-timeout 10m]): a client's first connection goes to
a task chosen by a consistent hash of its address (Maglev, weighted for wrr, wlc and maglev; the
same on every node and worker, whatever the scheduler), and later ones to the same task. While
the tasks stay, that holds forever. When tasks are added or removed, each worker keeps sending
a client it has seen within the timeout (since its last new connection) to its task, unless
that task is removed, drained, unhealthy or on a node down (then the client is placed again); a
worker or node that has not seen the client places it by the new hash, which moves few clients.
Each worker remembers up to 65536 clients; a client it has no room for still gets the hashed
task, counted in affinity_full (meshctl stats). See docs/schedulers.md.";

const SERVICE_UPDATE_HELP: &str = "\
Examples:
  meshctl service update --publish-add published=8443,target=443 --publish-rm 8080 web
  meshctl service update --publish-rm 53/udp dns
  meshctl service update --task-add name=web.3,node=n2,addr=ingress:10.0.0.13,addr=appnet:10.0.1.13 web
  meshctl service update --task-update name=web.1,weight=0 web      # drain web.1
  meshctl service update --task-rm web.1 web
  meshctl service update --client-ip keep --scheduler maglev web
  meshctl service update --scheduler wrr --task-update name=web.1,weight=3 web
  meshctl service update --affinity client-ip --affinity-timeout 10m web
  meshctl service update --affinity none web          # no affinity
  meshctl service update --health http:/healthz=200 --health-interval 2s --health-retries 3 web
  meshctl service update --health-interval 5s web     # keeps the rest of the check
  meshctl service update --no-healthcheck web
  meshctl service update --outlier consecutive=5,eject=30s web
  meshctl service update --outlier none web          # no passive health

Removals run before additions, so a port or a task can be replaced in one update.
--publish-rm takes PORT[/udp] (or Docker's PUBLISHED:TARGET); --task-update takes
name=TASK[,weight=N][,state=STATE]; the other specs are those of `service create`.";

#[derive(Debug, Subcommand)]
enum ServiceCmd {
    /// Create a service with its published ports and tasks
    #[command(after_help = SERVICE_CREATE_HELP)]
    Create(ServiceCreateArgs),
    /// Change a service: ports, networks, tasks, settings
    #[command(after_help = SERVICE_UPDATE_HELP)]
    Update(ServiceUpdateArgs),
    /// Scale services down by removing their highest-numbered tasks
    #[command(after_help = "\
Example:
  meshctl service scale web=1 api=2

meshd does not start containers, so it cannot scale up: add tasks with
  meshctl service update --task-add name=web.3,node=n1,addr=ingress:10.0.0.13,addr=appnet:10.0.1.13 web")]
    Scale {
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        specs: Vec<String>,
    },
    /// List services
    #[command(visible_alias = "list")]
    Ls,
    /// Show services in Docker's inspect shape (Endpoint.Ports, Endpoint.VirtualIPs, ...)
    Inspect {
        #[arg(required = true, value_name = "SERVICE")]
        names: Vec<String>,
    },
    /// List the tasks of services
    Ps {
        #[arg(required = true, value_name = "SERVICE")]
        names: Vec<String>,
    },
    /// Remove services
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "SERVICE")]
        names: Vec<String>,
    },
    /// Show services' traffic per task on every node: connections held (active, inactive),
    /// new connections, packets and bytes, per second and in all
    #[command(after_help = service_stats::HELP)]
    Stats(service_stats::Args),
}

#[derive(Debug, Args)]
struct ServiceCreateArgs {
    /// The service's name
    #[arg(long)]
    name: String,
    /// Publish a port (repeatable)
    #[arg(long, short = 'p', value_name = "SPEC")]
    publish: Vec<String>,
    /// Attach to an overlay network (repeatable)
    #[arg(long, value_name = "NETWORK[:VIP]")]
    network: Vec<String>,
    /// `vip`: one virtual IP per network, balanced by meshd; `dnsrr`: the name resolves to the
    /// tasks' addresses
    #[arg(long, value_enum, default_value_t = EndpointModeArg::Vip)]
    endpoint_mode: EndpointModeArg,
    /// What source address tasks see for published-port traffic: `masquerade` (Swarm's: the
    /// ingress node's endpoint) or `keep` (the client's)
    #[arg(long, value_enum, default_value_t = ClientIpArg::Masquerade)]
    client_ip: ClientIpArg,
    /// How new connections are spread over the tasks (see "Schedulers" below); weights count
    /// only for wrr, wlc and maglev (weight=0: no new connections, for every scheduler)
    #[arg(long, value_enum, default_value_t = SchedulerArg::Rr)]
    scheduler: SchedulerArg,
    #[command(flatten)]
    affinity: AffinityArgs,
    /// Register a task, a backend that already runs (repeatable)
    #[arg(long = "task", value_name = "SPEC")]
    tasks: Vec<String>,
    #[command(flatten)]
    timeouts: TimeoutArgs,
    #[command(flatten)]
    health: HealthArgs,
    /// Passive health: `consecutive=N,eject=DURATION,max=P%` or `none` (on by default:
    /// 3 failed connections in a row take a task out for 10s on the node that saw them)
    #[arg(long, value_name = "SPEC")]
    outlier: Option<String>,
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// Check the tasks: `tcp[:PORT]` (connect) or `http:[PORT]/PATH[=STATUS]` (GET; any 2xx or
    /// 3xx passes unless STATUS is given). The port defaults to the first published TCP target
    /// (80 if none). Each node checks its own tasks and tells the others.
    #[arg(long, value_name = "CHECK")]
    health: Option<String>,
    /// Time between checks (30s unless set)
    #[arg(long, value_name = "DURATION")]
    health_interval: Option<String>,
    /// Time one check may take (30s unless set, and never more than the interval)
    #[arg(long, value_name = "DURATION")]
    health_timeout: Option<String>,
    /// Failed checks in a row that make a task unhealthy (3 unless set)
    #[arg(long, value_name = "N")]
    health_retries: Option<u32>,
}

impl HealthArgs {
    fn given(&self) -> bool {
        self.health.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
    }

    /// The check these flags make of `current` (the service's check, if any); `None` when no
    /// flag is given.
    fn merge(&self, current: Option<&HealthCheck>) -> Result<Option<HealthCheck>, CliError> {
        if !self.given() {
            return Ok(None);
        }
        let mut h = match (current, &self.health) {
            (Some(h), _) => h.clone(),
            (None, Some(_)) => HealthCheck::default(),
            (None, None) => {
                return Err(CliError::Msg(
                    "--health-interval, --health-timeout and --health-retries need a check: give --health tcp or --health http:/PATH".into(),
                ))
            }
        };
        if let Some(spec) = &self.health {
            spec::health("--health", spec)?.apply_to(&mut h);
        }
        if let Some(v) = &self.health_interval {
            h.interval_ms = spec::duration_ms("--health-interval", v)?;
        }
        match &self.health_timeout {
            Some(v) => h.timeout_ms = spec::duration_ms("--health-timeout", v)?,
            // One check ends before the next starts.
            None => h.timeout_ms = h.timeout_ms.min(h.interval_ms),
        }
        if let Some(n) = self.health_retries {
            h.retries = n;
        }
        Ok(Some(h))
    }
}

#[derive(Debug, Args)]
struct AffinityArgs {
    /// `client-ip`: a client keeps reaching the same task, on every node, while the tasks
    /// stay; when they change, a client seen within --affinity-timeout keeps its task unless
    /// that task stops taking connections. `none` (the default) turns it off
    #[arg(long, value_enum, value_name = "MODE")]
    affinity: Option<AffinityArg>,
    /// How long a node remembers a client's task after the client's last new connection
    /// (as in 30s, 10m, 1h; 1s to 24h; 5m unless set)
    #[arg(long, value_name = "DURATION")]
    affinity_timeout: Option<String>,
}

impl AffinityArgs {
    /// `--affinity-timeout` in seconds, if given: whole seconds, 1s to 24h.
    fn timeout_s(&self) -> Result<Option<u32>, CliError> {
        let Some(v) = &self.affinity_timeout else {
            return Ok(None);
        };
        let ms = spec::duration_ms("--affinity-timeout", v)?;
        let max = model::Affinity::MAX_TIMEOUT_S;
        if ms % 1000 != 0 || ms / 1000 > max {
            return Err(CliError::Msg(format!(
                "--affinity-timeout: {v:?} must be whole seconds, 1s to 24h (as in 30s, 10m, 1h)"
            )));
        }
        Ok(Some(ms / 1000))
    }

    /// The affinity a new service gets.
    fn create(&self) -> Result<Option<model::Affinity>, CliError> {
        let t = self.timeout_s()?;
        match (self.affinity, t) {
            (Some(AffinityArg::ClientIp), t) => Ok(Some(model::Affinity::ClientIp {
                timeout_s: t.unwrap_or(model::Affinity::DEFAULT_TIMEOUT_S),
            })),
            (_, Some(_)) => Err(CliError::Msg(
                "--affinity-timeout needs --affinity client-ip".into(),
            )),
            (_, None) => Ok(None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AffinityArg {
    None,
    ClientIp,
}

impl From<AffinityArg> for model::AffinityMode {
    fn from(a: AffinityArg) -> Self {
        match a {
            AffinityArg::None => model::AffinityMode::None,
            AffinityArg::ClientIp => model::AffinityMode::ClientIp,
        }
    }
}

#[derive(Debug, Args)]
struct TimeoutArgs {
    /// Idle timeout of an established TCP connection (7200 unless set; Swarm cuts at 900)
    #[arg(long, value_name = "SECONDS")]
    tcp_timeout: Option<u32>,
    /// Idle timeout of a TCP connection that is opening or closing (60 unless set)
    #[arg(long, value_name = "SECONDS")]
    tcp_transitory_timeout: Option<u32>,
    /// Idle timeout of a UDP flow (30 unless set)
    #[arg(long, value_name = "SECONDS")]
    udp_timeout: Option<u32>,
}

impl TimeoutArgs {
    fn update(&self) -> Option<TimeoutsUpdate> {
        let u = TimeoutsUpdate {
            tcp_established: self.tcp_timeout,
            tcp_transitory: self.tcp_transitory_timeout,
            udp: self.udp_timeout,
        };
        (!u.is_empty()).then_some(u)
    }
}

#[derive(Debug, Args)]
struct ServiceUpdateArgs {
    /// Publish a port (repeatable)
    #[arg(long, value_name = "SPEC")]
    publish_add: Vec<String>,
    /// Stop publishing a port (repeatable): later connections to it are refused
    #[arg(long, value_name = "PORT[/PROTOCOL]")]
    publish_rm: Vec<String>,
    /// Attach to a network (repeatable)
    #[arg(long, value_name = "NETWORK[:VIP]")]
    network_add: Vec<String>,
    /// Detach from a network (repeatable)
    #[arg(long, value_name = "NETWORK")]
    network_rm: Vec<String>,
    /// Register a task (repeatable)
    #[arg(long, value_name = "SPEC")]
    task_add: Vec<String>,
    /// Remove a task (repeatable): its connections are ended at once
    #[arg(long, value_name = "TASK")]
    task_rm: Vec<String>,
    /// Change a task's weight or state (repeatable)
    #[arg(long, value_name = "SPEC")]
    task_update: Vec<String>,
    /// Change the endpoint mode
    #[arg(long, value_enum)]
    endpoint_mode: Option<EndpointModeArg>,
    /// Change the client-IP mode
    #[arg(long, value_enum)]
    client_ip: Option<ClientIpArg>,
    /// Change the scheduler (see `service create --help`)
    #[arg(long, value_enum)]
    scheduler: Option<SchedulerArg>,
    #[command(flatten)]
    affinity: AffinityArgs,
    #[command(flatten)]
    timeouts: TimeoutArgs,
    #[command(flatten)]
    health: HealthArgs,
    /// Remove the health check: every task takes new connections again
    #[arg(long, conflicts_with = "health")]
    no_healthcheck: bool,
    /// Passive health: `consecutive=N,eject=DURATION,max=P%` (what is not named goes back to
    /// its default) or `none`
    #[arg(long, value_name = "SPEC")]
    outlier: Option<String>,
    /// The service to change
    name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AvailabilityArg {
    Active,
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EndpointModeArg {
    Vip,
    Dnsrr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientIpArg {
    Masquerade,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SchedulerArg {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Maglev,
}

impl From<AvailabilityArg> for model::Availability {
    fn from(a: AvailabilityArg) -> Self {
        match a {
            AvailabilityArg::Active => model::Availability::Active,
            AvailabilityArg::Drain => model::Availability::Drain,
        }
    }
}

impl From<EndpointModeArg> for model::EndpointMode {
    fn from(a: EndpointModeArg) -> Self {
        match a {
            EndpointModeArg::Vip => model::EndpointMode::Vip,
            EndpointModeArg::Dnsrr => model::EndpointMode::Dnsrr,
        }
    }
}

impl From<ClientIpArg> for model::ClientIpMode {
    fn from(a: ClientIpArg) -> Self {
        match a {
            ClientIpArg::Masquerade => model::ClientIpMode::Masquerade,
            ClientIpArg::Keep => model::ClientIpMode::Keep,
        }
    }
}

impl From<SchedulerArg> for model::SchedulerKind {
    fn from(a: SchedulerArg) -> Self {
        match a {
            SchedulerArg::Rr => model::SchedulerKind::Rr,
            SchedulerArg::Wrr => model::SchedulerKind::Wrr,
            SchedulerArg::Lc => model::SchedulerKind::Lc,
            SchedulerArg::Wlc => model::SchedulerKind::Wlc,
            SchedulerArg::Maglev => model::SchedulerKind::Maglev,
        }
    }
}

/// A failure of meshctl itself; the message goes after `Error: `.
#[derive(Debug)]
enum CliError {
    Msg(String),
    /// Already printed (per node) while reporting a change.
    Reported,
}

impl From<SpecError> for CliError {
    fn from(e: SpecError) -> Self {
        CliError::Msg(e.0)
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Msg(e.to_string())
    }
}

/// Runs meshctl with the process's arguments; the exit code is 0 on success, 1 when meshd or
/// meshctl reports an error and 2 for a command line clap refuses.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                // --help, --version.
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("Error: {text}");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Msg(m)) => {
            eprintln!("Error: {m}");
            ExitCode::FAILURE
        }
        Err(CliError::Reported) => ExitCode::FAILURE,
    }
}

/// The daemons to talk to and how.
struct Ctx {
    sockets: Vec<PathBuf>,
    format: Format,
    timeout: Duration,
    /// `--cluster`: etcd instead of the sockets.
    #[cfg(feature = "cluster")]
    cluster: Option<cluster::Cluster>,
    detach: bool,
}

/// How a successful change is reported.
struct Report {
    /// The first line, such as `web` or `web scaled to 1`.
    header: String,
    /// Whether the result is a service whose tasks to show as progress.
    progress: bool,
    /// What `verify:` says, such as `Service converged`.
    verify: &'static str,
}

impl Report {
    fn service(header: String, verify: &'static str) -> Self {
        Report {
            header,
            progress: true,
            verify,
        }
    }
    fn plain(header: String, verify: &'static str) -> Self {
        Report {
            header,
            progress: false,
            verify,
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let sockets: Vec<PathBuf> = cli
        .socket
        .into_iter()
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    if sockets.is_empty() {
        return Err(CliError::Msg(format!(
            "no control socket given: pass --socket PATH or set MESHCTL_SOCKET (meshd's default is {DEFAULT_SOCKET})"
        )));
    }
    #[cfg(feature = "cluster")]
    let cluster = match &cli.cluster {
        Some(spec) if !spec.trim().is_empty() => {
            let tls = ctl::cluster::etcd::Tls {
                cacert: cli.etcd_cacert.clone(),
                cert: cli.etcd_cert.clone(),
                key: cli.etcd_key.clone(),
            };
            // Stats is a node's: it goes to the socket whatever --cluster says.
            match &cli.command {
                Top::Stats
                | Top::Conn(_)
                | Top::Capture(_)
                | Top::Service(ServiceCmd::Stats(_)) => None,
                _ => Some(cluster::Cluster::connect(
                    spec,
                    &tls,
                    cli.timeout.min(Duration::from_secs(10)),
                )?),
            }
        }
        _ => None,
    };
    #[cfg(not(feature = "cluster"))]
    if cli.cluster.as_ref().is_some_and(|s| !s.trim().is_empty()) {
        return Err(CliError::Msg(
            "meshctl was built without cluster mode (--no-default-features): build it with its default features".into(),
        ));
    }
    let _ = (&cli.etcd_cacert, &cli.etcd_cert, &cli.etcd_key);
    let ctx = Ctx {
        sockets,
        format: cli.format,
        timeout: cli.timeout,
        #[cfg(feature = "cluster")]
        cluster,
        detach: cli.detach,
    };
    match cli.command {
        Top::Network(c) => network(&ctx, c),
        #[cfg(feature = "cluster")]
        Top::Node(NodeCmd::Ls) if ctx.cluster.is_some() => match &ctx.cluster {
            Some(c) => c.node_ls(ctx.format),
            None => Ok(()),
        },
        Top::Node(c) => node(&ctx, c),
        Top::Service(c) => service(&ctx, c),
        Top::Stats => {
            let s: ctl::proto::StatsReport = ctx.read_as(Command::Query(Query::Stats {}))?;
            ctx.show(&s, || stats::render(&s))
        }
        Top::Conn(c) => conn::run(&ctx, c),
        Top::Capture(a) => capture::run(&ctx, a),
    }
}

fn network(ctx: &Ctx, c: NetworkCmd) -> Result<(), CliError> {
    match c {
        NetworkCmd::Create(a) => {
            let (subnet, subnet6) = spec::subnets(&a.subnet, a.ipv6)?;
            let mut endpoints = std::collections::BTreeMap::new();
            for e in &a.endpoints {
                let (node, ip) = spec::name_ip("--endpoint", e, "n1=10.0.1.250")?;
                if endpoints.insert(node.clone(), ip).is_some() {
                    return Err(CliError::Msg(format!(
                        "--endpoint: node {node:?} is given twice"
                    )));
                }
            }
            let vni = match (a.vni, a.ingress) {
                (Some(v), _) => v,
                (None, true) => INGRESS_VNI,
                (None, false) => next_vni(&ctx.states()?),
            };
            let gateway = a
                .gateway
                .unwrap_or_else(|| Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1)));
            let opts = network_opts(&a.opts)?;
            let encryption = if opts.encrypted {
                Some(Encryption::single(
                    1,
                    Secret::random().map_err(CliError::Msg)?,
                ))
            } else {
                None
            };
            let mtu = opts.mtu;
            let network = Network {
                subnet6,
                name: a.name.clone(),
                vni,
                subnet,
                gateway,
                ingress: a.ingress,
                endpoints,
                mtu,
                encryption,
            };
            ctx.change(
                Command::Change(Change::NetworkCreate { network }),
                Report::plain(a.name, "Network created"),
            )
        }
        NetworkCmd::Ls => {
            let nets: Vec<Network> = ctx.read_as(Command::Query(Query::NetworkLs {}))?;
            ctx.show(&nets, || render::network_ls(&nets))
        }
        NetworkCmd::Inspect { names } => {
            let mut all = Vec::new();
            for name in names {
                let mut v = ctx
                    .read(Command::Query(Query::NetworkInspect { name }))?
                    .result;
                // For people, Docker's EnableIPv6 and IPAM beside meshd's own fields; for
                // scripts (--format json), meshd's JSON as it is.
                if ctx.format == Format::Table {
                    let n: Network = decode(&ctx.sockets[0], "network-inspect", v.clone())?;
                    if let Value::Object(o) = &mut v {
                        o.extend(render::docker_network_fields(&n));
                    }
                }
                all.push(v);
            }
            print_json(&all)
        }
        NetworkCmd::Update { rotate_key, name } => {
            debug_assert!(rotate_key, "clap requires --rotate-key");
            // The new key's id: above every id any daemon has, so it is new everywhere.
            let states = ctx.states()?;
            let next = states
                .iter()
                .filter_map(|s| s.network(&name)?.encryption.as_ref())
                .flat_map(|e| e.keys.iter().map(|k| k.id))
                .max()
                .unwrap_or(0)
                .saturating_add(1);
            let key = Secret::random().map_err(CliError::Msg)?;
            let update = |u: NetworkUpdate| {
                Command::Change(Change::NetworkUpdate {
                    name: name.clone(),
                    update: u,
                })
            };
            ctx.change(
                update(NetworkUpdate {
                    key_add: Some(NetworkKey {
                        id: next,
                        key: Some(key),
                    }),
                    key_primary: None,
                }),
                Report::plain(format!("{name}: key {next} added"), "Key accepted"),
            )?;
            ctx.change(
                update(NetworkUpdate {
                    key_add: None,
                    key_primary: Some(next),
                }),
                Report::plain(format!("{name}: key {next} seals"), "Key in use"),
            )
        }
        NetworkCmd::Rm { names } => each(names, |name| {
            ctx.change(
                Command::Change(Change::NetworkRm { name: name.clone() }),
                Report::plain(name, "Network removed"),
            )
        }),
    }
}

fn node(ctx: &Ctx, c: NodeCmd) -> Result<(), CliError> {
    match c {
        NodeCmd::Add(a) => {
            let mut endpoints = std::collections::BTreeMap::new();
            for e in &a.endpoints {
                let (net, ip) = spec::name_ip("--endpoint", e, "ingress=10.0.0.4")?;
                if endpoints.insert(net.clone(), ip).is_some() {
                    return Err(CliError::Msg(format!(
                        "--endpoint: network {net:?} is given twice"
                    )));
                }
            }
            let node = Node {
                name: a.name.clone(),
                addr: a.addr,
                vtep: a.vtep,
                addr6: a.addr6,
                vtep_port: a.vtep_port,
                availability: a.availability.into(),
            };
            ctx.change(
                Command::Change(Change::NodeAdd { node, endpoints }),
                Report::plain(a.name, "Node added"),
            )
        }
        NodeCmd::Ls => {
            let nodes: Vec<Node> = ctx.read_as(Command::Query(Query::NodeLs {}))?;
            ctx.show(&nodes, || render::node_ls(&nodes))
        }
        NodeCmd::Rm { names } => each(names, |name| {
            ctx.change(
                Command::Change(Change::NodeRm { name: name.clone() }),
                Report::plain(name, "Node removed"),
            )
        }),
        NodeCmd::Update { availability, name } => ctx.change(
            Command::Change(Change::NodeUpdate {
                name: name.clone(),
                availability: availability.into(),
            }),
            Report::plain(name, "Node updated"),
        ),
    }
}

fn service(ctx: &Ctx, c: ServiceCmd) -> Result<(), CliError> {
    match c {
        ServiceCmd::Create(a) => service_create(ctx, a),
        ServiceCmd::Stats(a) => service_stats::run(ctx, &a),
        ServiceCmd::Update(a) => service_update(ctx, a),
        ServiceCmd::Scale { specs } => {
            let parsed = specs
                .iter()
                .map(|s| spec::scale(s))
                .collect::<Result<Vec<_>, _>>()?;
            each(parsed, |(name, replicas)| {
                ctx.change(
                    Command::Change(Change::ServiceScale {
                        name: name.clone(),
                        replicas,
                    }),
                    Report::service(format!("{name} scaled to {replicas}"), "Service converged"),
                )
            })
        }
        ServiceCmd::Ls => {
            let services: Vec<Service> = ctx.read_as(Command::Query(Query::ServiceLs {}))?;
            ctx.show(&services, || render::service_ls(&services))
        }
        ServiceCmd::Inspect { names } => {
            let mut services = Vec::new();
            for name in names {
                services
                    .push(ctx.read_as::<Service>(Command::Query(Query::ServiceInspect { name }))?);
            }
            match ctx.format {
                Format::Json => print_json(&services),
                Format::Table => {
                    let nets: Vec<Network> = ctx.read_as(Command::Query(Query::NetworkLs {}))?;
                    let views: Vec<_> = services
                        .iter()
                        .map(|s| render::docker_inspect(s, &nets))
                        .collect();
                    print_json(&views)
                }
            }
        }
        ServiceCmd::Ps { names } => {
            let mut all = Vec::new();
            for name in names {
                let tasks: Vec<PsTask> =
                    ctx.read_as(Command::Query(Query::ServicePs { name: name.clone() }))?;
                all.push((name, tasks));
            }
            match ctx.format {
                Format::Json => print_json(&all.iter().flat_map(|(_, t)| t).collect::<Vec<_>>()),
                Format::Table => {
                    // For the IPv6 twins of addresses on dual-stack networks.
                    let nets: Vec<Network> = ctx.read_as(Command::Query(Query::NetworkLs {}))?;
                    out(&render::service_ps(&all, &nets))
                }
            }
        }
        ServiceCmd::Rm { names } => each(names, |name| {
            ctx.change(
                Command::Change(Change::ServiceRm { name: name.clone() }),
                Report::plain(name, "Service removed"),
            )
        }),
    }
}

fn service_create(ctx: &Ctx, a: ServiceCreateArgs) -> Result<(), CliError> {
    let mut svc = Service::new(&a.name);
    svc.endpoint_mode = a.endpoint_mode.into();
    svc.client_ip = a.client_ip.into();
    svc.scheduler = a.scheduler.into();
    svc.affinity = a.affinity.create()?;
    if let Some(t) = a.timeouts.update() {
        svc.timeouts.tcp_established = t.tcp_established.unwrap_or(svc.timeouts.tcp_established);
        svc.timeouts.tcp_transitory = t.tcp_transitory.unwrap_or(svc.timeouts.tcp_transitory);
        svc.timeouts.udp = t.udp.unwrap_or(svc.timeouts.udp);
    }
    for p in &a.publish {
        svc.ports.push(spec::publish("--publish", p)?);
    }
    for n in &a.network {
        svc.networks.push(spec::service_network("--network", n)?);
    }
    for t in &a.tasks {
        svc.tasks.push(spec::task("--task", t)?);
    }
    svc.health = a.health.merge(None)?;
    if let Some(o) = &a.outlier {
        svc.outlier = spec::outlier("--outlier", o)?;
    }
    if svc.endpoint_mode == model::EndpointMode::Vip && svc.networks.iter().any(|n| n.vip.is_none())
    {
        let states = ctx.states()?;
        let taken: Vec<(String, Ipv4Addr)> = task_addresses(&svc.tasks);
        for n in &mut svc.networks {
            if n.vip.is_none() && !is_ingress(&states, &n.network) {
                n.vip = Some(pick_vip(&states, &n.network, &taken)?);
            }
        }
    }
    ctx.change(
        Command::Change(Change::ServiceCreate { service: svc }),
        Report::service(a.name, "Service converged"),
    )
}

fn service_update(ctx: &Ctx, a: ServiceUpdateArgs) -> Result<(), CliError> {
    let mut u = ServiceUpdate {
        endpoint_mode: a.endpoint_mode.map(Into::into),
        client_ip: a.client_ip.map(Into::into),
        scheduler: a.scheduler.map(Into::into),
        affinity: a.affinity.affinity.map(Into::into),
        affinity_timeout_s: a.affinity.timeout_s()?,
        timeouts: a.timeouts.update(),
        network_rm: a.network_rm.clone(),
        task_rm: a.task_rm.clone(),
        ..ServiceUpdate::default()
    };
    for p in &a.publish_add {
        u.publish_add.push(spec::publish("--publish-add", p)?);
    }
    for p in &a.publish_rm {
        u.publish_rm.push(spec::publish_rm("--publish-rm", p)?);
    }
    for n in &a.network_add {
        u.network_add
            .push(spec::service_network("--network-add", n)?);
    }
    for t in &a.task_add {
        u.task_add.push(spec::task("--task-add", t)?);
    }
    for t in &a.task_update {
        u.task_update.push(spec::task_update("--task-update", t)?);
    }
    u.no_health = a.no_healthcheck;
    if let Some(o) = &a.outlier {
        u.outlier = Some(spec::outlier("--outlier", o)?);
    }
    if a.health.given() {
        // The flags change what they name and keep the rest of the current check.
        let current = ctx
            .read_as::<Service>(Command::Query(Query::ServiceInspect {
                name: a.name.clone(),
            }))?
            .health;
        u.health = a.health.merge(current.as_ref())?;
    }
    if u.is_empty() {
        return Err(CliError::Msg(format!(
            "service update {}: nothing to change (see `meshctl service update --help`)",
            a.name
        )));
    }
    let wants_vips = u.endpoint_mode == Some(model::EndpointMode::Vip)
        || (u.endpoint_mode.is_none() && u.network_add.iter().any(|n| n.vip.is_none()));
    if wants_vips {
        let states = ctx.states()?;
        // An unknown service is left for meshd to report.
        if let Some(current) = states.first().and_then(|s| s.service(&a.name)) {
            let mode = u.endpoint_mode.unwrap_or(current.endpoint_mode);
            if mode == model::EndpointMode::Vip {
                let taken = task_addresses(current.tasks.iter().chain(&u.task_add));
                for n in &mut u.network_add {
                    if n.vip.is_none() && !is_ingress(&states, &n.network) {
                        n.vip = Some(pick_vip(&states, &n.network, &taken)?);
                    }
                }
                // Switching to vip: give a VIP to every attached network that lacks one.
                for n in &current.networks {
                    let kept = !u.network_rm.contains(&n.network);
                    if kept && n.vip.is_none() && !is_ingress(&states, &n.network) {
                        let vip = pick_vip(&states, &n.network, &taken)?;
                        u.network_rm.push(n.network.clone());
                        u.network_add.push(ServiceNetwork {
                            network: n.network.clone(),
                            vip: Some(vip),
                        });
                    }
                }
            }
        }
    }
    ctx.change(
        Command::Change(Change::ServiceUpdate {
            name: a.name.clone(),
            update: u,
        }),
        Report::service(a.name, "Service converged"),
    )
}

/// Runs `f` for every item, going on after a failure; fails if any did.
fn each<T>(items: Vec<T>, mut f: impl FnMut(T) -> Result<(), CliError>) -> Result<(), CliError> {
    let mut failed = false;
    for item in items {
        match f(item) {
            Ok(()) => {}
            Err(CliError::Msg(m)) => {
                eprintln!("Error: {m}");
                failed = true;
            }
            Err(CliError::Reported) => failed = true,
        }
    }
    if failed {
        Err(CliError::Reported)
    } else {
        Ok(())
    }
}

fn task_addresses<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> Vec<(String, Ipv4Addr)> {
    tasks
        .into_iter()
        .flat_map(|t| t.addresses.iter().map(|a| (a.network.clone(), a.addr)))
        .collect()
}

fn is_ingress(states: &[State], network: &str) -> bool {
    states
        .iter()
        .filter_map(|s| s.network(network))
        .any(|n| n.ingress)
}

/// The lowest VNI above the ingress network's that no daemon uses.
fn next_vni(states: &[State]) -> u32 {
    let used: std::collections::BTreeSet<u32> = states
        .iter()
        .flat_map(|s| s.networks.iter().map(|n| n.vni))
        .collect();
    (INGRESS_VNI + 1..)
        .find(|v| !used.contains(v))
        .unwrap_or(INGRESS_VNI + 1)
}

/// The lowest host address of `network` that no daemon uses for a gateway, endpoint, VIP or
/// task, and that is not in `also_taken`; Docker hands VIPs out the same way.
fn pick_vip(
    states: &[State],
    network: &str,
    also_taken: &[(String, Ipv4Addr)],
) -> Result<Ipv4Addr, CliError> {
    let Some(net) = states.iter().find_map(|s| s.network(network)) else {
        return Err(CliError::Msg(format!(
            "network {network:?} not found; create it first with `meshctl network create {network} --subnet CIDR`"
        )));
    };
    let mut taken: std::collections::BTreeSet<Ipv4Addr> = also_taken
        .iter()
        .filter(|(n, _)| n == network)
        .map(|(_, a)| *a)
        .collect();
    for s in states {
        if let Some(n) = s.network(network) {
            taken.insert(n.gateway);
            taken.extend(n.endpoints.values().copied());
        }
        for svc in &s.services {
            taken.extend(
                svc.networks
                    .iter()
                    .filter(|n| n.network == network)
                    .filter_map(|n| n.vip),
            );
            taken.extend(svc.tasks.iter().filter_map(|t| t.addr_on(network)));
        }
    }
    let first = u32::from(net.subnet.network());
    let last = u32::from(net.subnet.broadcast());
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|a| net.subnet.is_host(*a) && !taken.contains(a))
        .ok_or_else(|| {
            CliError::Msg(format!(
                "network {network:?} ({}) has no free address for a VIP; give one as --network {network}:VIP",
                net.subnet
            ))
        })
}

fn out(s: &str) -> Result<(), CliError> {
    let mut o = std::io::stdout().lock();
    // A closed pipe (`meshctl service ls | head -1`) is not an error worth a message.
    let _ = o.write_all(s.as_bytes()).and_then(|()| o.flush());
    Ok(())
}

fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Msg(format!("cannot encode JSON: {e}")))?;
    out(&format!("{s}\n"))
}

/// The result of one change on one daemon.
struct Outcome {
    socket: PathBuf,
    result: Result<Success, String>,
}

impl Ctx {
    fn multi(&self) -> bool {
        self.sockets.len() > 1
    }

    /// `socket: ` before a message when several daemons are involved.
    fn prefix(&self, socket: &std::path::Path) -> String {
        if self.multi() {
            format!("{}: ", socket.display())
        } else {
            String::new()
        }
    }

    /// Sends a read to the first socket (or answers it from etcd's state).
    fn read(&self, cmd: Command) -> Result<Success, CliError> {
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            return c.read(&cmd);
        }
        let socket = &self.sockets[0];
        let resp = client::request(socket, &cmd, self.timeout)?;
        resp.into_result()
            .map_err(|e| CliError::Msg(format!("{}{}", self.prefix(socket), e.message)))
    }

    /// Sends `cmd` to every socket (never to etcd: it asks a node's own workers) and decodes
    /// each answer, in the sockets' order; fails with every node's error if any failed.
    fn ask_each<T: DeserializeOwned>(&self, cmd: &Command) -> Result<Vec<T>, CliError> {
        let mut got = Vec::new();
        let mut errors = Vec::new();
        for o in self.send_all(cmd) {
            match o.result {
                Ok(s) => got.push(decode(&o.socket, cmd.name(), s.result)?),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(got)
        } else {
            Err(CliError::Msg(errors.join("\n")))
        }
    }

    fn read_as<T: DeserializeOwned>(&self, cmd: Command) -> Result<T, CliError> {
        let name = cmd.name();
        let s = self.read(cmd)?;
        decode(&self.sockets[0], name, s.result)
    }

    /// Prints a read result: the table, or the JSON it came from.
    fn show<T: Serialize>(&self, v: &T, table: impl FnOnce() -> String) -> Result<(), CliError> {
        match self.format {
            Format::Json => print_json(v),
            Format::Table => out(&table()),
        }
    }

    /// The whole state of every daemon, for choosing VNIs and VIPs free on all of them.
    fn states(&self) -> Result<Vec<State>, CliError> {
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            return c.states();
        }
        let mut states = Vec::new();
        for o in self.send_all(&Command::Query(Query::State {})) {
            let s = o.result.map_err(CliError::Msg)?;
            states.push(decode(&o.socket, "state", s.result)?);
        }
        Ok(states)
    }

    /// Sends one command to every socket at once; outcomes in socket order, each error message
    /// naming its socket when there are several.
    fn send_all(&self, cmd: &Command) -> Vec<Outcome> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .sockets
                .iter()
                .map(|socket| {
                    let h = scope.spawn(move || {
                        // A client error names the socket already; a daemon's does not.
                        client::request(socket, cmd, self.timeout)
                            .map_err(|e| e.to_string())
                            .and_then(|r| {
                                r.into_result()
                                    .map_err(|e| format!("{}{}", self.prefix(socket), e.message))
                            })
                    });
                    (socket, h)
                })
                .collect();
            handles
                .into_iter()
                .map(|(socket, h)| Outcome {
                    socket: socket.clone(),
                    result: h.join().unwrap_or_else(|_| {
                        Err("meshctl failed while waiting for this daemon".into())
                    }),
                })
                .collect()
        })
    }

    /// Sends a change to every socket and reports per node; fails if any node refused it.
    fn change(&self, cmd: Command, report: Report) -> Result<(), CliError> {
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            return c.change(&cmd, &report, self.format, self.timeout, self.detach);
        }
        let _ = self.detach;
        let outcomes = self.send_all(&cmd);
        let mut failed = false;
        match self.format {
            Format::Json => {
                let v: Vec<Value> = outcomes
                    .iter()
                    .map(|o| match &o.result {
                        Ok(s) => json!({"socket": o.socket, "ok": true, "generation": s.generation, "result": s.result}),
                        Err(m) => json!({"socket": o.socket, "ok": false, "error": m}),
                    })
                    .collect();
                print_json(&v)?;
            }
            Format::Table => {
                let mut text = String::new();
                if let Some(first) = outcomes.iter().find_map(|o| o.result.as_ref().ok()) {
                    text.push_str(&report.header);
                    text.push('\n');
                    if report.progress {
                        if let Ok(svc) = serde_json::from_value::<Service>(first.result.clone()) {
                            text.push_str(&render::progress(&svc));
                        }
                    }
                }
                for o in &outcomes {
                    if let Ok(s) = &o.result {
                        let on = if self.multi() {
                            format!(" on {}", o.socket.display())
                        } else {
                            String::new()
                        };
                        text.push_str(&format!(
                            "verify: {}{on} (generation {})\n",
                            report.verify, s.generation
                        ));
                    }
                }
                out(&text)?;
            }
        }
        for o in &outcomes {
            if let Err(m) = &o.result {
                eprintln!("Error: {m}");
                failed = true;
            }
        }
        if failed {
            Err(CliError::Reported)
        } else {
            Ok(())
        }
    }
}

fn decode<T: DeserializeOwned>(
    socket: &std::path::Path,
    command: &str,
    v: Value,
) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| {
        CliError::Msg(format!(
            "meshd at {} answered {command} with a result meshctl cannot read: {e} (are meshctl and meshd of the same release?)",
            socket.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory;
    use ctl::model::*;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn network_opts_set_the_mtu_and_encryption_in_meshds_and_dockers_words() {
        let o = |v: &[&str]| network_opts(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mtu = |v: &[&str]| o(v).unwrap().mtu;
        assert_eq!(o(&[]).unwrap(), NetOpts::default());
        assert_eq!(mtu(&["mtu=1400"]), Some(1400));
        assert_eq!(
            mtu(&["com.docker.network.driver.mtu=9000", "mtu=1300"]),
            Some(1300)
        );
        assert!(o(&["encrypted"]).unwrap().encrypted);
        assert!(o(&["encrypted=true", "mtu=1300"]).unwrap().encrypted);
        assert!(!o(&["encrypted", "encrypted=false"]).unwrap().encrypted);
        let e = |v: &[&str]| match o(v) {
            Err(CliError::Msg(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(e(&["mtu"]).contains("expected KEY=VALUE"));
        assert!(e(&["mtu=big"]).contains("the MTU must be a number"));
        assert!(e(&["encrypted=yes"]).contains("encrypted takes no value"));
        assert!(e(&["ipv6"]).contains("unknown option \"ipv6\""));
    }

    #[test]
    fn sockets_split_on_commas() {
        let cli = Cli::try_parse_from([
            "meshctl",
            "--socket",
            "/a.sock,/b.sock",
            "--socket",
            "/c.sock",
            "service",
            "ls",
        ])
        .unwrap();
        assert_eq!(
            cli.socket,
            [PathBuf::from("/a.sock"), "/b.sock".into(), "/c.sock".into()]
        );
        let cli = Cli::try_parse_from([
            "meshctl",
            "service",
            "ls",
            "--format",
            "json",
            "--timeout",
            "2.5",
        ])
        .unwrap();
        assert_eq!(cli.format, Format::Json);
        assert_eq!(cli.timeout, Duration::from_millis(2500));
        assert!(Cli::try_parse_from(["meshctl", "--timeout", "0", "stats"]).is_err());
    }

    #[test]
    fn affinity_flags_make_the_affinity_or_say_what_is_missing() {
        let parse = |args: &[&str]| -> AffinityArgs {
            let mut v = vec!["meshctl", "service", "create", "--name", "web"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).unwrap().command {
                Top::Service(ServiceCmd::Create(a)) => a.affinity,
                other => panic!("{other:?}"),
            }
        };
        let made = |args: &[&str]| parse(args).create();
        assert_eq!(made(&[]).unwrap(), None);
        assert_eq!(made(&["--affinity", "none"]).unwrap(), None);
        assert_eq!(
            made(&["--affinity", "client-ip"]).unwrap(),
            Some(Affinity::ClientIp {
                timeout_s: Affinity::DEFAULT_TIMEOUT_S
            })
        );
        assert_eq!(
            made(&["--affinity", "client-ip", "--affinity-timeout", "10m"]).unwrap(),
            Some(Affinity::ClientIp { timeout_s: 600 })
        );
        let msg = |args: &[&str]| match made(args) {
            Err(CliError::Msg(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            msg(&["--affinity-timeout", "10m"]),
            "--affinity-timeout needs --affinity client-ip"
        );
        assert!(
            msg(&["--affinity", "client-ip", "--affinity-timeout", "1500ms"])
                .contains("must be whole seconds, 1s to 24h")
        );
        assert!(
            msg(&["--affinity", "client-ip", "--affinity-timeout", "25h"])
                .contains("must be whole seconds, 1s to 24h")
        );
        assert!(
            msg(&["--affinity", "client-ip", "--affinity-timeout", "0s"])
                .contains("is out of range")
        );
        assert!(Cli::try_parse_from([
            "meshctl",
            "service",
            "create",
            "--name",
            "w",
            "--scheduler",
            "wlc"
        ])
        .is_ok());
        assert!(Cli::try_parse_from([
            "meshctl",
            "service",
            "update",
            "--affinity",
            "none",
            "--scheduler",
            "lc",
            "web"
        ])
        .is_ok());
    }

    fn state_with_appnet() -> State {
        let mut s = State::default();
        s.networks.push(Network {
            subnet6: None,
            name: "appnet".into(),
            vni: 4097,
            subnet: "10.0.1.0/29".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            ingress: false,
            endpoints: BTreeMap::from([("n1".to_string(), Ipv4Addr::new(10, 0, 1, 2))]),
            mtu: None,
            encryption: None,
        });
        s
    }

    #[test]
    fn vips_are_the_lowest_free_address_on_every_daemon() {
        let a = state_with_appnet();
        let mut b = state_with_appnet();
        let mut svc = Service::new("api");
        svc.networks.push(ServiceNetwork {
            network: "appnet".into(),
            vip: Some(Ipv4Addr::new(10, 0, 1, 3)),
        });
        b.services.push(svc);
        let taken = vec![
            ("appnet".to_string(), Ipv4Addr::new(10, 0, 1, 4)),
            ("other".to_string(), Ipv4Addr::new(10, 0, 1, 5)),
        ];
        assert_eq!(
            pick_vip(&[a.clone(), b.clone()], "appnet", &taken).unwrap(),
            Ipv4Addr::new(10, 0, 1, 5)
        );
        let full: Vec<(String, Ipv4Addr)> = (4..=6)
            .map(|i| ("appnet".to_string(), Ipv4Addr::new(10, 0, 1, i)))
            .collect();
        let e = pick_vip(&[a.clone(), b], "appnet", &full).unwrap_err();
        assert!(
            matches!(e, CliError::Msg(m) if m.contains("no free address") && m.contains("--network appnet:VIP"))
        );
        assert!(
            matches!(pick_vip(&[a], "nonet", &[]), Err(CliError::Msg(m)) if m.contains("network \"nonet\" not found"))
        );
    }

    #[test]
    fn vnis_follow_the_ingress_network() {
        let mut a = state_with_appnet();
        assert_eq!(next_vni(&[]), 4097);
        assert_eq!(next_vni(&[a.clone()]), 4098);
        a.networks[0].vni = 4099;
        let b = state_with_appnet();
        assert_eq!(next_vni(&[a, b]), 4098);
    }
}
