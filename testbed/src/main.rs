//! `testbed`: a meshd mesh in network namespaces. See `testbed --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ctl::model::{Availability, ClientIpMode, PublishMode};
use testbed::bed::{self, Bed, RunSpec, Tools};
use testbed::error::{Error, Result};
use testbed::{demo, preflight, probe, whoami, Plan};

const ABOUT: &str =
    "A multi-node meshd mesh in network namespaces on this machine: Docker Swarm's routing mesh, \
reproduced and poked with real clients.";

const LONG_ABOUT: &str = "A multi-node meshd mesh in network namespaces on this machine: Docker Swarm's routing mesh, \
reproduced and poked with real clients (curl, ping, a UDP client).

`testbed up` builds an underlay switch, an outside client (192.168.100.100) and N nodes; each node is a \
namespace where meshd owns the uplink veth and a tasks bridge, holding the node's address \
192.168.100.1<i> itself (the kernel has none). `testbed run` starts tasks: namespaces on a node's tasks \
bridge running `testbed whoami`, an HTTP server that says which task answered and whom it saw, and a UDP \
echo. Services are registered on every node's meshd with meshctl. Everything is named \
meshd-<instance>-* (instance `tb` unless --instance), so `testbed down` finds it all, even after a crash.

Needs root, and ip, ethtool, curl and ping (installed with apt-get when missing). meshd and meshctl are \
taken from next to this executable (target/<profile>/, so run `cargo build` first) or from \
MESHD_BIN / MESHCTL_BIN.";

const EXAMPLES: &str = "\
Examples:
  sudo target/debug/testbed demo              # the seed articles' walk; leaves the mesh up
  sudo target/debug/testbed demo --down       # ... and tears it down at the end

  testbed up --nodes 3
  testbed run web --replicas 2 --publish 8080:80 --network appnet
  ip netns exec meshd-tb-client curl http://192.168.100.13:8080/     # n3 runs no task, answers anyway
  testbed run dns --replicas 2 --publish 5353:53/udp
  ip netns exec meshd-tb-client testbed udp 192.168.100.11:5353 hello
  testbed run client --network appnet --node n3
  ip netns exec meshd-tb-client.1 curl http://web/                  # web's VIP, from a task
  testbed scale web=1
  testbed drain n2
  testbed ctl service update --publish-rm 8080 web                   # any meshctl command, every node
  testbed status
  testbed down

Addresses: nodes 192.168.100.11, .12, ...; client 192.168.100.100; ingress network 10.0.0.0/24 (VNI 4096,
node endpoints 10.0.0.2, .3, ...); each other network 10.0.k.0/24 (gateway .1, VIPs from .2, tasks from .100),
with `up --ipv6-overlay` also fd00:10:k::/64, every address's twin there (10.0.1.100 is fd00:10:1::a00:164).";

#[derive(Debug, Parser)]
#[command(name = "testbed", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Cli {
    /// Which testbed: every name it makes is meshd-<INSTANCE>-*, so instances never collide.
    #[arg(
        long,
        short = 'i',
        global = true,
        env = "TESTBED_INSTANCE",
        default_value = "tb"
    )]
    instance: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// On every node, balanced over all tasks (the routing mesh).
    Ingress,
    /// Only on nodes that run a task, served by that node's tasks.
    Host,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ClientIpArg {
    /// Tasks see the ingress node's endpoint address (Swarm's behaviour).
    Masquerade,
    /// Tasks see the client's own address.
    Keep,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the mesh: switch, client, nodes; start meshd on each and make them peers
    #[command(after_help = "Example:\n  testbed up --nodes 3\n  testbed status")]
    Up {
        /// How many nodes (n1, n2, ...)
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The MTU of the tasks' interfaces [default: 1450, the 1500-byte underlay less 50 bytes
        /// of VXLAN, as Swarm gives containers on an overlay; 1430 with --underlay6]. 1500 shows
        /// that a task left at the underlay's MTU still works (meshd clamps the MSS, sends
        /// "fragmentation needed")
        #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(576..=9000))]
        task_mtu: Option<u16>,
        /// Cluster mode: start an etcd (Debian's) on a management network and run every meshd
        /// with --cluster; meshctl then changes etcd
        #[arg(long)]
        cluster: bool,
        /// With --cluster, how many etcd members (1, 3 or 5)
        #[arg(long, default_value_t = 1, value_name = "N")]
        etcd_members: usize,
        /// How each meshd reaches its interfaces: afpacket (its default), or dpdk (a
        /// net_af_packet virtual device on each, EAL without hugepages; needs meshd built with
        /// `cargo build --release --features dataplane/dpdk`)
        #[arg(long, value_enum, default_value_t = testbed::plan::NodeIo::Afpacket)]
        io: testbed::plan::NodeIo,
        /// VXLAN over IPv6: every node's VTEP is its IPv6 address fd00:100::1<i> (meshd --vtep,
        /// meshctl node add --vtep), the overlay's MTU 1430
        #[arg(long)]
        underlay6: bool,
        /// Dual-stack overlays: every network `run --network` creates (10.0.k.0/24) also gets
        /// the IPv6 prefix fd00:10:k::/64 (meshctl network create --ipv6 --subnet), and each of
        /// its tasks its IPv6 twin there (the IPv4 address in the last 32 bits) with a /64 on
        /// eth0; `run --ipv4-only` keeps a new network IPv4 only
        #[arg(long)]
        ipv6_overlay: bool,
    },
    /// Remove everything `up` made: stop meshd and tasks, delete the namespaces (also after a crash)
    Down {
        /// Remove every testbed instance found (namespaces meshd-*-*, /run/meshd-*)
        #[arg(long)]
        all: bool,
    },
    /// Show nodes, namespaces, addresses, services and tasks, and how to run your own clients
    Status,
    /// Start a service: task namespaces running whoami, registered on every node's meshd
    #[command(after_help = "\
Examples:
  testbed run web --replicas 3 --publish 8080:80
  testbed run web --replicas 2 --publish 8080:80 --network appnet --client-ip keep
  testbed run dns --replicas 2 --publish 5353:53/udp
  testbed run web --replicas 2 --publish 8080:80 --mode host       # only n1 and n2 answer
  testbed run client --network appnet --node n3                    # a client task, no port

Tasks are spread over the active nodes (fewest tasks of the service first). A task has an
address on the ingress network when the service publishes a port, and one on each --network
(created on every node, 10.0.k.0/24, when new). whoami listens on every target port and on 80.")]
    Run {
        /// The service's name (tasks are NAME.1, NAME.2, ...)
        name: String,
        /// How many tasks
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// Publish a port: PUBLISHED:TARGET[/udp] (repeatable)
        #[arg(long, short = 'p', value_name = "PUBLISHED:TARGET[/udp]")]
        publish: Vec<String>,
        /// Attach to an overlay network, created when new (repeatable)
        #[arg(long, value_name = "NET")]
        network: Vec<String>,
        /// Create the new networks of --network encrypted (`meshctl network create --opt
        /// encrypted`: VXLAN sealed with XChaCha20-Poly1305, tasks' MTU 1406)
        #[arg(long, requires = "network")]
        encrypted: bool,
        /// Create the new networks of --network IPv4 only, on a mesh of dual-stack overlays
        /// (`up --ipv6-overlay`) too
        #[arg(long, requires = "network")]
        ipv4_only: bool,
        /// Publish mode of every --publish
        #[arg(long, value_enum, default_value_t = ModeArg::Ingress)]
        mode: ModeArg,
        /// What source address tasks see for published-port traffic
        #[arg(long, value_enum, default_value_t = ClientIpArg::Masquerade)]
        client_ip: ClientIpArg,
        /// Place tasks only on these nodes (repeatable)
        #[arg(long, value_name = "NODE")]
        node: Vec<String>,
        /// A health check, as `meshctl service create --health`: tcp[:PORT] or
        /// http:[PORT]/PATH[=STATUS] (whoami answers every path with 200). A task takes
        /// connections once it passes, and none while it fails (`testbed ctl service ps NAME`)
        #[arg(long, value_name = "CHECK")]
        health: Option<String>,
        /// Time between checks (500ms, 2s, 1m30s), with --health
        #[arg(long, value_name = "DURATION", requires = "health")]
        health_interval: Option<String>,
        /// Failures in a row before a task is unhealthy, with --health
        #[arg(long, value_name = "N", requires = "health")]
        health_retries: Option<u32>,
    },
    /// Scale services: SERVICE=REPLICAS (down: meshd drops the highest-numbered tasks first)
    Scale {
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        specs: Vec<String>,
    },
    /// Drain a node: its tasks take no new connections (existing ones go on)
    Drain { node: String },
    /// Make a drained node active again
    Activate { node: String },
    /// Remove a service and its tasks
    Rm { name: String },
    /// Run meshctl with every node's socket: `testbed ctl service ps web`
    #[command(trailing_var_arg = true)]
    Ctl {
        #[arg(
            allow_hyphen_values = true,
            required = true,
            value_name = "MESHCTL ARGS"
        )]
        args: Vec<String>,
    },
    /// Walk through the seed articles on a fresh mesh, then leave it up (or --down)
    Demo {
        /// Tear the mesh down at the end
        #[arg(long)]
        down: bool,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// The task server: HTTP whoami and UDP echo (the testbed runs it inside task namespaces)
    #[command(
        after_help = "Example:\n  testbed whoami --name web.1 --http 80 --udp 80\n\n\
HTTP answers like containous/whoami (Hostname, IP lines, RemoteAddr, the request line and headers);\n\
a UDP datagram PAYLOAD is answered with \"NAME PAYLOAD\"."
    )]
    Whoami {
        /// The name to answer with (Hostname:)
        #[arg(long)]
        name: String,
        /// TCP port to serve HTTP on (repeatable)
        #[arg(long)]
        http: Vec<u16>,
        /// UDP port to echo on (repeatable)
        #[arg(long)]
        udp: Vec<u16>,
        /// Write this file once listening
        #[arg(long)]
        ready: Option<PathBuf>,
    },
    /// A UDP client: send MESSAGE to ADDR:PORT and print the answer (or "refused" / "timed out")
    #[command(
        after_help = "Example:\n  ip netns exec meshd-tb-client testbed udp 192.168.100.11:5353 hello"
    )]
    Udp {
        to: SocketAddr,
        message: String,
        /// Seconds to wait for the answer
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("testbed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(plan: Plan) -> Result<Bed> {
    preflight::check(true)?;
    Bed::load(plan, Tools::find()?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let plan = Plan::new(&cli.instance)?;
    match cli.command {
        Cmd::Whoami {
            name,
            http,
            udp,
            ready,
        } => {
            if http.is_empty() && udp.is_empty() {
                return Err(Error::msg("whoami: give at least one --http or --udp port"));
            }
            whoami::serve(whoami::Config {
                name,
                http,
                udp,
                ready,
            })?;
        }
        Cmd::Udp {
            to,
            message,
            timeout,
        } => {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")
                .map_err(|e| Error::io("binding a UDP socket", e))?;
            let t = Duration::from_secs_f64(timeout.clamp(0.001, 3600.0));
            match probe::udp_ask_on(&sock, to, &message, t) {
                Ok(answer) => println!("{answer}"),
                Err(f) => {
                    println!("udp {to}: {f}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Cmd::Up {
            nodes,
            task_mtu,
            cluster,
            etcd_members,
            io,
            underlay6,
            ipv6_overlay,
        } => {
            preflight::check(true)?;
            let members = if cluster { etcd_members } else { 0 };
            let plan = Plan {
                io,
                underlay6,
                ipv6_overlay,
                ..plan
            };
            let mut bed = Bed::up_with(plan, Tools::find()?, nodes, true, members)?;
            if let Some(mtu) = task_mtu {
                bed.set_task_mtu(mtu)?;
            }
            println!("{}", bed.status());
        }
        Cmd::Down { all } => {
            if !testbed::sys::is_root() {
                return Err(Error::msg(
                    "down needs root (it deletes network namespaces): run it with sudo",
                ));
            }
            let plans = if all {
                bed::instances()
                    .iter()
                    .filter_map(|i| Plan::new(i).ok())
                    .collect()
            } else {
                vec![plan]
            };
            let mut any = false;
            for p in plans {
                for l in bed::down(&p) {
                    println!("{l}");
                    any = true;
                }
            }
            if !any {
                println!("nothing to remove");
            }
        }
        Cmd::Status => {
            let bed = open(plan)?;
            println!("{}", bed.status());
        }
        Cmd::Run {
            name,
            replicas,
            publish,
            network,
            encrypted,
            ipv4_only,
            mode,
            client_ip,
            node,
            health,
            health_interval,
            health_retries,
        } => {
            let mut bed = open(plan)?;
            bed.verbose = true;
            let mode = match mode {
                ModeArg::Ingress => PublishMode::Ingress,
                ModeArg::Host => PublishMode::Host,
            };
            let mut spec = RunSpec::new(&name, replicas);
            for p in &publish {
                spec = spec.publish(p, mode)?;
            }
            spec.networks = network;
            spec.encrypted = encrypted;
            spec.ipv4_only = ipv4_only;
            spec.nodes = node;
            let mut extra: Vec<String> = Vec::new();
            if let Some(h) = health {
                extra.extend(["--health".to_string(), h]);
            }
            if let Some(i) = health_interval {
                extra.extend(["--health-interval".to_string(), i]);
            }
            if let Some(r) = health_retries {
                extra.extend(["--health-retries".to_string(), r.to_string()]);
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            spec = spec.with_args(&extra);
            spec.client_ip = match client_ip {
                ClientIpArg::Masquerade => ClientIpMode::Masquerade,
                ClientIpArg::Keep => ClientIpMode::Keep,
            };
            bed.run(&spec)?;
            for t in bed.tasks_of(&name) {
                let addrs: Vec<String> = t
                    .addrs
                    .iter()
                    .map(|(n, a)| format!("{n}:{a}"))
                    .chain(t.addrs6.iter().map(|(n, a)| format!("{n}:{a}")))
                    .collect();
                println!(
                    "{} on {}: namespace {} ({})",
                    t.name,
                    t.node,
                    t.ns,
                    addrs.join(", ")
                );
            }
        }
        Cmd::Scale { specs } => {
            let mut bed = open(plan)?;
            bed.verbose = true;
            for s in specs {
                let (name, n) = s
                    .split_once('=')
                    .and_then(|(a, b)| Some((a.to_string(), b.parse::<u32>().ok()?)))
                    .ok_or_else(|| {
                        Error::msg(format!(
                            "scale {s:?}: expected SERVICE=REPLICAS, like web=2"
                        ))
                    })?;
                bed.scale(&name, n)?;
                println!(
                    "{name} scaled to {n}: {}",
                    bed.tasks_of(&name)
                        .iter()
                        .map(|t| format!("{} on {}", t.name, t.node))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Cmd::Drain { node } => {
            let mut bed = open(plan)?;
            bed.verbose = true;
            bed.set_availability(&node, Availability::Drain)?;
        }
        Cmd::Activate { node } => {
            let mut bed = open(plan)?;
            bed.verbose = true;
            bed.set_availability(&node, Availability::Active)?;
        }
        Cmd::Rm { name } => {
            let mut bed = open(plan)?;
            bed.verbose = true;
            bed.rm(&name)?;
        }
        Cmd::Ctl { args } => {
            let bed = Bed::load(plan, Tools::find()?)?;
            let status = bed
                .meshctl_command()
                .args(&args)
                .env("MESHCTL_SOCKET", bed.socket_env())
                .status()
                .map_err(|e| Error::io(format!("running {}", bed.tools.meshctl.display()), e))?;
            return Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Cmd::Demo { down, nodes } => {
            preflight::check(true)?;
            let tools = Tools::find()?;
            if Bed::exists(&plan)? {
                println!(
                    "demo: instance {} is up; removing it first (testbed down)",
                    plan.instance
                );
                bed::down(&plan);
            }
            // The demo runs in cluster mode: one etcd, every meshd following it.
            let bed = Bed::up_with(plan, tools, nodes, false, 1)?;
            demo::run(bed, down)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
