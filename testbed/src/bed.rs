//! One testbed instance: building the namespaces, starting meshd on each node, creating task
//! namespaces with whoami, and registering services on every node through meshctl.
//!
//! The testbed keeps its own record (`/run/meshd-<instance>/testbed.json`) of what it made, so
//! `testbed run`, `scale`, `status` and `down` work across invocations; meshd's state (networks,
//! services, tasks) stays meshd's, read back through the control socket.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use ctl::model::{Availability, ClientIpMode, Protocol, PublishMode, PublishedPort, Service};
use ctl::proto::{Command, Query, StatsReport};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::{self, Plan};
use crate::sys;

/// Where the programs the testbed starts are.
#[derive(Debug, Clone)]
pub struct Tools {
    pub meshd: PathBuf,
    pub meshctl: PathBuf,
    /// This program: task namespaces run `testbed whoami`.
    pub testbed: PathBuf,
}

impl Tools {
    /// meshd and meshctl from `MESHD_BIN` / `MESHCTL_BIN`, else next to the running executable
    /// (cargo puts all of a workspace's binaries in `target/<profile>/`).
    pub fn find() -> Result<Tools> {
        let exe =
            std::env::current_exe().map_err(|e| Error::io("finding the testbed executable", e))?;
        Tools::beside(&exe)
    }

    /// Like [`Tools::find`], with `testbed` being the testbed binary to run tasks with.
    pub fn beside(testbed: &Path) -> Result<Tools> {
        let dir = testbed.parent().unwrap_or(Path::new("."));
        let pick = |var: &str, name: &str| -> Result<PathBuf> {
            if let Some(p) = std::env::var_os(var) {
                let p = PathBuf::from(p);
                return if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::msg(format!("{var}={} is not a file", p.display())))
                };
            }
            // Next to us, or one up when we are a test binary in target/<profile>/deps/.
            for d in [dir, dir.parent().unwrap_or(dir)] {
                let p = d.join(name);
                if p.is_file() {
                    return Ok(p);
                }
            }
            Err(Error::msg(format!(
                "{name} not found in {}: build it with `cargo build` (from the workspace root), or set {var}=/path/to/{name}",
                dir.display()
            )))
        };
        Ok(Tools {
            meshd: pick("MESHD_BIN", "meshd")?,
            meshctl: pick("MESHCTL_BIN", "meshctl")?,
            testbed: testbed.to_path_buf(),
        })
    }
}

/// A node as the testbed made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRec {
    pub name: String,
    pub index: usize,
    pub ns: String,
    pub addr: Ipv4Addr,
    pub endpoint: Ipv4Addr,
    pub socket: PathBuf,
    pub pid: u32,
    pub core: usize,
    pub availability: Availability,
}

impl NodeRec {
    /// The node's IPv6 address on the underlay (`--addr6`).
    pub fn addr6(&self) -> Ipv6Addr {
        plan::node_addr6(self.index)
    }
}

/// An overlay network the testbed created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetRec {
    pub name: String,
    /// Network number: subnet 10.0.k.0/24.
    pub k: u8,
    /// The next host number given to a task.
    pub next_host: u8,
    /// Created with `--opt encrypted`: its VXLAN frames are sealed.
    #[serde(default)]
    pub encrypted: bool,
    /// Dual-stack: created with `--ipv6 --subnet` of [`plan::subnet6`] (k's), every task on it
    /// given its IPv6 twin ([`plan::twin`]).
    #[serde(default)]
    pub ipv6: bool,
}

impl NetRec {
    /// The network's IPv6 prefix, when it is dual-stack.
    pub fn subnet6(&self) -> Option<(Ipv6Addr, u8)> {
        self.ipv6.then(|| plan::subnet6(self.k))
    }

    /// The IPv6 twin of the network's address `v4`, when it is dual-stack.
    pub fn twin(&self, v4: Ipv4Addr) -> Option<Ipv6Addr> {
        self.ipv6.then(|| plan::twin(self.k, v4))
    }
}

/// A service the testbed started tasks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SvcRec {
    pub name: String,
    pub networks: Vec<String>,
    pub ports: Vec<PublishedPort>,
    pub client_ip: ClientIpMode,
    /// Nodes to place tasks on (empty: any active node).
    pub constraint: Vec<String>,
}

/// A task: a namespace on a node running whoami.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRec {
    pub name: String,
    pub service: String,
    pub slot: u32,
    pub node: String,
    pub ns: String,
    /// The veth end on the node's tasks bridge.
    pub veth: String,
    /// The VLAN of that bridge port: untagged towards the task, tagged towards meshd (unique
    /// on its node).
    #[serde(default)]
    pub vlan: u16,
    pub addrs: Vec<(String, Ipv4Addr)>,
    /// The IPv6 twins of its addresses on dual-stack networks ([`NetRec::ipv6`]), on its eth0
    /// with a /64 each.
    #[serde(default)]
    pub addrs6: Vec<(String, Ipv6Addr)>,
    pub pid: u32,
}

impl TaskRec {
    pub fn addr_on(&self, network: &str) -> Option<Ipv4Addr> {
        self.addrs
            .iter()
            .find(|(n, _)| n == network)
            .map(|(_, a)| *a)
    }

    /// The task's IPv6 twin on `network`, when that network is dual-stack.
    pub fn addr6_on(&self, network: &str) -> Option<Ipv6Addr> {
        self.addrs6
            .iter()
            .find(|(n, _)| n == network)
            .map(|(_, a)| *a)
    }
}

/// The testbed's record of an instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub instance: String,
    pub nodes: Vec<NodeRec>,
    pub networks: Vec<NetRec>,
    pub services: Vec<SvcRec>,
    pub tasks: Vec<TaskRec>,
    pub next_veth: u32,
    /// The MTU new tasks' interfaces get ([`plan::TASK_MTU`] when unset).
    #[serde(default)]
    pub task_mtu: Option<u16>,
    /// Cluster mode: the etcd the nodes follow (`up --cluster`).
    #[serde(default)]
    pub etcd: Option<EtcdRec>,
    /// How the nodes' meshd reach their interfaces (`up --io`).
    #[serde(default)]
    pub io: plan::NodeIo,
    /// VXLAN over IPv6 (`up --underlay6`): every node's VTEP is its IPv6 address.
    #[serde(default)]
    pub underlay6: bool,
    /// Dual-stack overlays (`up --ipv6-overlay`): the networks the testbed creates get IPv6
    /// prefixes ([`Plan::ipv6_overlay`]).
    #[serde(default)]
    pub ipv6_overlay: bool,
}

/// The instance's etcd: its members in a namespace of their own on the management network
/// (10.99.0.0/24, a bridge every node has a kernel-held leg `mgmt0` on).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EtcdRec {
    pub ns: String,
    pub members: Vec<EtcdMember>,
}

/// One etcd member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdMember {
    pub name: String,
    pub addr: Ipv4Addr,
    pub pid: u32,
}

impl EtcdRec {
    /// `etcd://ADDR:2379,...`, as meshd's and meshctl's --cluster take it.
    pub fn endpoints(&self) -> String {
        let list: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}:{}", m.addr, plan::ETCD_CLIENT_PORT))
            .collect();
        format!("etcd://{}", list.join(","))
    }
}

/// What `testbed run` starts.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub name: String,
    pub replicas: u32,
    pub publish: Vec<PublishedPort>,
    /// User networks to attach (created on every node when missing).
    pub networks: Vec<String>,
    pub client_ip: ClientIpMode,
    /// Place tasks only on these nodes (round-robin over them).
    pub nodes: Vec<String>,
    /// More `meshctl service create` flags, such as `--health tcp` or `--endpoint-mode dnsrr`.
    pub create_args: Vec<String>,
    /// Create the networks this run creates encrypted (`--opt encrypted`).
    pub encrypted: bool,
    /// Create the networks this run creates IPv4 only, also on a mesh of dual-stack overlays
    /// ([`Plan::ipv6_overlay`]).
    pub ipv4_only: bool,
}

impl RunSpec {
    pub fn new(name: &str, replicas: u32) -> Self {
        RunSpec {
            name: name.to_string(),
            replicas,
            publish: Vec::new(),
            networks: Vec::new(),
            client_ip: ClientIpMode::Masquerade,
            nodes: Vec::new(),
            create_args: Vec::new(),
            encrypted: false,
            ipv4_only: false,
        }
    }
    /// Creates the networks this run creates IPv4 only (no `--ipv6`), on a mesh of dual-stack
    /// overlays too.
    pub fn ipv4_only(mut self) -> Self {
        self.ipv4_only = true;
        self
    }
    /// Creates the networks this run creates (`network`) encrypted.
    pub fn encrypted(mut self) -> Self {
        self.encrypted = true;
        self
    }
    /// Adds flags to `meshctl service create`: `.with_args(&["--health", "tcp"])`.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.create_args.extend(args.iter().map(|a| a.to_string()));
        self
    }
    /// Adds a published port in Docker's short form, `8080:80` or `5353:53/udp`.
    pub fn publish(mut self, spec: &str, mode: PublishMode) -> Result<Self> {
        self.publish.push(parse_publish(spec, mode)?);
        Ok(self)
    }
    pub fn network(mut self, net: &str) -> Self {
        self.networks.push(net.to_string());
        self
    }
    pub fn keep_client_ip(mut self) -> Self {
        self.client_ip = ClientIpMode::Keep;
        self
    }
    pub fn on(mut self, node: &str) -> Self {
        self.nodes.push(node.to_string());
        self
    }
}

/// Parses Docker's short publish form `PUBLISHED:TARGET[/tcp|/udp]`.
pub fn parse_publish(spec: &str, mode: PublishMode) -> Result<PublishedPort> {
    let bad = || {
        Error::msg(format!(
            "--publish {spec:?}: expected PUBLISHED:TARGET[/udp], like 8080:80 or 5353:53/udp"
        ))
    };
    let (ports, proto) = match spec.split_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some(_) => return Err(bad()),
        None => (spec, Protocol::Tcp),
    };
    let (p, t) = ports.split_once(':').ok_or_else(bad)?;
    let published: u16 = p.parse().map_err(|_| bad())?;
    let target: u16 = t.parse().map_err(|_| bad())?;
    if published == 0 || target == 0 {
        return Err(bad());
    }
    Ok(PublishedPort {
        protocol: proto,
        published,
        target,
        mode,
    })
}

/// `meshctl network create` of the testbed's network number `k`: `--subnet 10.0.k.0/24`, with
/// `--ipv6 --subnet fd00:10:<k>::/64` when `ipv6`, `--opt encrypted` when `encrypted`.
fn network_create_args(name: &str, k: u8, encrypted: bool, ipv6: bool) -> Vec<String> {
    let (a, len) = plan::subnet(k);
    let mut args: Vec<String> = vec![
        "network".into(),
        "create".into(),
        name.into(),
        "--subnet".into(),
        format!("{a}/{len}"),
    ];
    if ipv6 {
        let (a6, len6) = plan::subnet6(k);
        args.extend(["--ipv6".into(), "--subnet".into(), format!("{a6}/{len6}")]);
    }
    if encrypted {
        args.extend(["--opt".into(), "encrypted".into()]);
    }
    args
}

/// meshctl's long publish form.
fn publish_arg(p: &PublishedPort) -> String {
    let mode = match p.mode {
        PublishMode::Ingress => "ingress",
        PublishMode::Host => "host",
    };
    format!(
        "published={},target={},protocol={},mode={}",
        p.published, p.target, p.protocol, mode
    )
}

/// A running (or half-built) instance.
#[derive(Debug)]
pub struct Bed {
    pub plan: Plan,
    pub tools: Tools,
    pub rec: Record,
    /// Print each meshctl command and its answer, for people watching.
    pub verbose: bool,
    /// Daemons this process started, reaped when stopped.
    children: Vec<Child>,
}

impl Bed {
    /// Loads the record of an instance that is up.
    pub fn load(plan: Plan, tools: Tools) -> Result<Bed> {
        let path = plan.bed_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let left = sys::netns_with_prefix(&plan.prefix())?;
                let hint = if left.is_empty() {
                    String::new()
                } else {
                    format!(" ({} namespaces named {}* are left over: `testbed --instance {} down` removes them)", left.len(), plan.prefix(), plan.instance)
                };
                return Err(Error::msg(format!(
                    "instance {} is not up: start it with `testbed --instance {} up --nodes 3`{hint}",
                    plan.instance, plan.instance
                )));
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let rec: Record = serde_json::from_str(&text).map_err(|e| {
            Error::msg(format!(
                "{}: {e} (remove the instance with `testbed down`)",
                path.display()
            ))
        })?;
        Ok(Bed {
            plan,
            tools,
            rec,
            verbose: false,
            children: Vec::new(),
        })
    }

    /// Whether anything of the instance exists (its record or any namespace).
    pub fn exists(plan: &Plan) -> Result<bool> {
        Ok(plan.bed_file().exists() || !sys::netns_with_prefix(&plan.prefix())?.is_empty())
    }

    fn save(&self) -> Result<()> {
        let path = self.plan.bed_file();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.rec)
            .map_err(|e| Error::msg(format!("encoding the testbed record: {e}")))?;
        std::fs::write(&tmp, text)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Gives the tasks started from now on interfaces of MTU `mtu` (instead of the overlay's,
    /// [`Bed::task_mtu`]).
    pub fn set_task_mtu(&mut self, mtu: u16) -> Result<()> {
        self.rec.task_mtu = Some(mtu);
        self.save()
    }

    // ---- up -----------------------------------------------------------------------------

    /// Builds the underlay, the client and `nodes` nodes, starts meshd on each, and makes them
    /// peers with an ingress network. On failure everything made so far is removed.
    pub fn up(plan: Plan, tools: Tools, nodes: usize, verbose: bool) -> Result<Bed> {
        Self::up_with(plan, tools, nodes, verbose, 0)
    }

    /// [`Bed::up`] in cluster mode when `etcd_members` > 0: an etcd of that many members (1 or
    /// 3) on a management network, every meshd following it (`--cluster`), meshctl changing it.
    pub fn up_with(
        plan: Plan,
        tools: Tools,
        nodes: usize,
        verbose: bool,
        etcd_members: usize,
    ) -> Result<Bed> {
        if etcd_members > 5 {
            return Err(Error::msg(format!(
                "--etcd-members {etcd_members}: give 1, 3 or 5"
            )));
        }
        if !(1..=plan::MAX_NODES).contains(&nodes) {
            return Err(Error::msg(format!(
                "--nodes {nodes}: give 1 to {}",
                plan::MAX_NODES
            )));
        }
        if Bed::exists(&plan)? && !is_testbed(&plan) {
            return Err(Error::msg(format!(
                "namespaces named {}* exist and are not a testbed's (another tool made them): pick another instance with --instance",
                plan.prefix()
            )));
        }
        if Bed::exists(&plan)? {
            return Err(Error::msg(format!(
                "instance {0} is already up (or left over): see `testbed --instance {0} status`, or remove it with `testbed --instance {0} down`",
                plan.instance
            )));
        }
        let mut bed = Bed {
            plan,
            tools,
            rec: Record::default(),
            verbose,
            children: Vec::new(),
        };
        bed.rec.instance = bed.plan.instance.clone();
        bed.rec.io = bed.plan.io;
        bed.rec.underlay6 = bed.plan.underlay6;
        bed.rec.ipv6_overlay = bed.plan.ipv6_overlay;
        match bed.build(nodes, etcd_members) {
            Ok(()) => Ok(bed),
            Err(e) => {
                let logs = bed.node_log_tails();
                bed.down_now();
                Err(Error::msg(format!(
                    "{e}{logs}\n(everything `up` had made is removed again)"
                )))
            }
        }
    }

    fn build(&mut self, nodes: usize, etcd_members: usize) -> Result<()> {
        let p = self.plan.clone();
        let dir = p.run_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        // The underlay: a switch namespace with one bridge, and the outside client.
        let (sw, client) = (p.switch_ns(), p.client_ns());
        sys::netns_add(&sw)?;
        sys::ip_in(
            &sw,
            &["link", "add", "name", plan::SWITCH_DEV, "type", "bridge"],
        )?;
        sys::ip_in(&sw, &["link", "set", plan::SWITCH_DEV, "up"])?;
        sys::bridge_nf_off(&sw)?;
        sys::netns_add(&client)?;
        self.wire(&sw, "client", &client, "eth0")?;
        let caddr = format!("{}/{}", plan::CLIENT_ADDR, plan::UNDERLAY_PREFIX);
        sys::ip_in(&client, &["addr", "add", &caddr, "dev", "eth0"])?;
        // IPv6 on the client's eth0 only (`netns_add` turns it off everywhere): no router
        // solicitations, no duplicate address detection, so the address is usable at once.
        sys::exec_in(
            &client,
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.eth0.accept_dad=0",
                "net.ipv6.conf.eth0.router_solicitations=0",
                "net.ipv6.conf.eth0.disable_ipv6=0",
            ],
        )?;
        let caddr6 = format!("{}/{}", plan::CLIENT_ADDR6, plan::UNDERLAY6_PREFIX);
        sys::ip_in(
            &client,
            &["-6", "addr", "add", &caddr6, "dev", "eth0", "nodad"],
        )?;
        sys::ip_in(&client, &["link", "set", "eth0", "up"])?;

        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 1..=nodes {
            let ns = p.node_ns(i);
            sys::netns_add(&ns)?;
            self.wire(&sw, &plan::node_name(i), &ns, plan::UPLINK_DEV)?;
            sys::ip_in(
                &ns,
                &[
                    "link",
                    "set",
                    plan::UPLINK_DEV,
                    "address",
                    &plan::uplink_mac(i),
                ],
            )?;
            sys::ip_in(&ns, &["link", "set", plan::UPLINK_DEV, "up"])?;
            let mac = plan::tasks_bridge_mac(i);
            // Each task's port gets its own VLAN (`build_task`).
            sys::ip_in(
                &ns,
                &[
                    "link",
                    "add",
                    "name",
                    plan::TASKS_DEV,
                    "address",
                    &mac,
                    "type",
                    "bridge",
                ],
            )?;
            sys::bridge_nf_off(&ns)?;
            sys::ip_in(&ns, &["link", "set", plan::TASKS_DEV, "up"])?;
            sys::offloads_off(&ns, plan::TASKS_DEV)?;
            self.rec.nodes.push(NodeRec {
                name: plan::node_name(i),
                index: i,
                ns,
                addr: plan::node_addr(i),
                endpoint: plan::ingress_endpoint(i),
                socket: p.socket(i),
                pid: 0,
                core: (i - 1) % cpus,
                availability: Availability::Active,
            });
        }
        self.save()?;
        if etcd_members > 0 {
            self.start_etcd(etcd_members)?;
        }
        // One gossip key for the instance, as an operator gives every node the same file: the
        // nodes sign their health gossip and take only signed gossip.
        let key_file = p.run_dir().join("gossip.key");
        write_gossip_key(&key_file)?;
        // meshd on every node, all starting at once.
        for n in 0..self.rec.nodes.len() {
            self.spawn_meshd(n)?;
        }
        self.save()?;
        for n in 0..self.rec.nodes.len() {
            self.wait_socket(n)?;
        }
        if self.rec.etcd.is_some() {
            // Each meshd adds itself to the cluster's state.
            // Every node adds itself to the state, contending for the generation: a big mesh
            // takes longer.
            let nodes = u64::try_from(self.rec.nodes.len()).unwrap_or(u64::MAX);
            self.wait_ready(Duration::from_secs(20 + nodes))?;
        }
        // Peers: each meshd knows itself; tell every other one about it.
        for n in 0..self.rec.nodes.len() {
            if self.rec.etcd.is_some() {
                break;
            }
            let node = self.rec.nodes[n].clone();
            let others: Vec<PathBuf> = self
                .rec
                .nodes
                .iter()
                .filter(|o| o.name != node.name)
                .map(|o| o.socket.clone())
                .collect();
            if others.is_empty() {
                continue;
            }
            let mut args: Vec<String> = [
                "node",
                "add",
                &node.name,
                "--addr",
                &node.addr.to_string(),
                "--addr6",
                &node.addr6().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(self.vtep_args(&node));
            self.meshctl_on(&others, &args)?;
        }
        let subnet = format!("{}/{}", plan::subnet(0).0, plan::subnet(0).1);
        let mut args = vec![
            "network".to_string(),
            "create".into(),
            plan::INGRESS.into(),
            "--ingress".into(),
            "--subnet".into(),
            subnet,
        ];
        for n in &self.rec.nodes {
            args.push("--endpoint".into());
            args.push(format!("{}={}", n.name, n.endpoint));
        }
        self.meshctl(&args)?;
        self.rec.networks.push(NetRec {
            name: plan::INGRESS.into(),
            k: 0,
            next_host: plan::FIRST_TASK_HOST,
            encrypted: false,
            ipv6: false,
        });
        self.save()
    }

    /// A veth from the switch's bridge (end `sw_end`) into namespace `ns` (end `dev`), offloads
    /// off on both ends.
    fn wire(&self, sw: &str, sw_end: &str, ns: &str, dev: &str) -> Result<()> {
        sys::ip_in(
            sw,
            &[
                "link", "add", "name", sw_end, "type", "veth", "peer", "name", dev, "netns", ns,
            ],
        )?;
        sys::ip_in(
            sw,
            &["link", "set", sw_end, "master", plan::SWITCH_DEV, "up"],
        )?;
        sys::offloads_off(sw, sw_end)?;
        sys::offloads_off(ns, dev)
    }

    /// Node `n`'s VXLAN tunnel endpoint: its IPv6 address over an IPv6 underlay
    /// ([`Record::underlay6`]), else its IPv4 address (meshd's default).
    pub fn vtep(&self, n: &NodeRec) -> IpAddr {
        if self.rec.underlay6 {
            IpAddr::V6(n.addr6())
        } else {
            IpAddr::V4(n.addr)
        }
    }

    /// `--vtep IPV6` for node `n`'s meshd and its `meshctl node add` over an IPv6 underlay;
    /// nothing otherwise (the VTEP is then the node's `--addr`).
    fn vtep_args(&self, n: &NodeRec) -> Vec<String> {
        if self.rec.underlay6 {
            vec!["--vtep".into(), self.vtep(n).to_string()]
        } else {
            Vec::new()
        }
    }

    /// The MTU of new tasks' interfaces: [`Bed::set_task_mtu`]'s, else the overlay's on the
    /// 1500-byte underlay: [`plan::TASK_MTU`] (1450), 20 bytes less over an IPv6 underlay
    /// (1430), the seal's 44 less on an encrypted network (`sealed`).
    pub fn task_mtu(&self, sealed: bool) -> u16 {
        let mut mtu = plan::TASK_MTU;
        if self.rec.underlay6 {
            mtu -= ctl::VXLAN6_EXTRA;
        }
        if sealed {
            mtu -= ctl::SEAL_OVERHEAD;
        }
        self.rec.task_mtu.unwrap_or(mtu)
    }

    /// Starts node `n`'s meshd (0-based) and records its pid.
    fn spawn_meshd(&mut self, n: usize) -> Result<()> {
        let p = self.plan.clone();
        let node = self.rec.nodes[n].clone();
        let key_file = p.run_dir().join("gossip.key");
        let (uplink, tasks) = match self.rec.io {
            plan::NodeIo::Afpacket => (plan::UPLINK_DEV.to_string(), plan::TASKS_DEV.to_string()),
            plan::NodeIo::Dpdk => (
                format!("net_af_packet0,iface={}", plan::UPLINK_DEV),
                format!("net_af_packet1,iface={}", plan::TASKS_DEV),
            ),
        };
        let mut args: Vec<String> = [
            "--node",
            &node.name,
            "--addr",
            &node.addr.to_string(),
            "--addr6",
            &node.addr6().to_string(),
            "--uplink",
            &uplink,
            "--tasks",
            &tasks,
            "--socket",
            &node.socket.display().to_string(),
            "--state",
            &p.state_file(node.index).display().to_string(),
            "--flow-state",
            &p.flow_file(node.index).display().to_string(),
            "--cores",
            &node.core.to_string(),
            "--flows",
            "65536",
            "--flow-accounting",
            "--gossip-key-file",
            &key_file.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.vtep_args(&node));
        if self.rec.io == plan::NodeIo::Dpdk {
            args.extend([
                "--io".to_string(),
                "dpdk".into(),
                "--dpdk-args".into(),
                plan::DPDK_EAL_ARGS.into(),
            ]);
        }
        if let Some(e) = &self.rec.etcd {
            args.extend([
                "--cluster".to_string(),
                e.endpoints(),
                "--cluster-lease".into(),
                plan::CLUSTER_LEASE_SECS.to_string(),
            ]);
        }
        let child = sys::spawn_in(
            &node.ns,
            &self.tools.meshd,
            &args,
            &p.node_log(node.index),
            &[("NO_COLOR", "1")],
        )?;
        let pid = child.id();
        write_pid(&p.node_pidfile(node.index), pid)?;
        self.rec.nodes[n].pid = pid;
        self.children.push(child);
        Ok(())
    }

    /// `kill -9` of node `name`'s meshd (a crash); its tasks keep running.
    pub fn kill_meshd(&mut self, name: &str) -> Result<()> {
        self.signal_meshd(name, libc::SIGKILL)
    }

    /// SIGTERM to node `name`'s meshd (as `systemctl stop` sends), and waits until it has
    /// exited.
    pub fn stop_meshd(&mut self, name: &str) -> Result<()> {
        self.signal_meshd(name, libc::SIGTERM)
    }

    /// Sends `sig` to node `name`'s meshd and waits (up to 5 s) until it is gone.
    fn signal_meshd(&mut self, name: &str, sig: i32) -> Result<()> {
        let pid = self.node(name)?.pid;
        sys::signal(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(5);
        // Gone means reaped: a killed process's first thread shows as a zombie while the
        // others still exit holding its files (its control socket still takes connections).
        let ours = self.children.iter().position(|c| c.id() == pid);
        while Instant::now() < deadline {
            let gone = match ours {
                Some(i) => matches!(self.children[i].try_wait(), Ok(Some(_))),
                None => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            };
            if gone {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.reap();
        Ok(())
    }

    /// Starts node `name`'s meshd again (after [`Bed::kill_meshd`]) and waits for its socket.
    pub fn restart_meshd(&mut self, name: &str) -> Result<()> {
        let n = self
            .rec
            .nodes
            .iter()
            .position(|x| x.name == name)
            .ok_or_else(|| Error::msg(format!("no node {name}")))?;
        self.spawn_meshd(n)?;
        self.save()?;
        self.wait_socket(n)
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to node `name`'s meshd: a node frozen, then back.
    pub fn freeze_meshd(&self, name: &str, frozen: bool) -> Result<()> {
        let pid = self.node(name)?.pid;
        sys::signal(pid, if frozen { libc::SIGSTOP } else { libc::SIGCONT });
        Ok(())
    }

    /// Cuts node `name` off the management network (`true`: its leg there goes down, so its
    /// meshd cannot reach etcd) or puts it back; the underlay and its tasks are untouched.
    pub fn cut_off(&self, name: &str, cut: bool) -> Result<()> {
        let ns = self.node(name)?.ns.clone();
        sys::ip_in(
            &ns,
            &["link", "set", "mgmt0", if cut { "down" } else { "up" }],
        )?;
        Ok(())
    }

    /// Stops etcd member `k` (1-based) with SIGKILL.
    pub fn kill_etcd_member(&mut self, k: usize) -> Result<()> {
        let pid = self
            .rec
            .etcd
            .as_ref()
            .and_then(|e| e.members.get(k.wrapping_sub(1)))
            .map(|m| m.pid)
            .ok_or_else(|| Error::msg(format!("no etcd member {k}")))?;
        sys::signal(pid, libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while sys::alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.reap();
        Ok(())
    }

    /// Starts etcd member `k` (1-based) again, on its data.
    pub fn start_etcd_member(&mut self, k: usize) -> Result<()> {
        self.spawn_etcd_member(k.wrapping_sub(1))?;
        self.save()
    }

    fn spawn_etcd_member(&mut self, k: usize) -> Result<()> {
        let p = self.plan.clone();
        let Some(rec) = self.rec.etcd.clone() else {
            return Err(Error::msg("this instance runs without etcd"));
        };
        let m = rec
            .members
            .get(k)
            .cloned()
            .ok_or_else(|| Error::msg(format!("no etcd member {}", k + 1)))?;
        let cluster: Vec<String> = rec
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.addr, plan::ETCD_PEER_PORT))
            .collect();
        let etcd = crate::preflight::which("etcd").ok_or_else(|| {
            Error::msg("etcd is not installed: scripts/deps.sh installs it (apt-get install etcd-server etcd-client)")
        })?;
        let client = format!("http://{}:{}", m.addr, plan::ETCD_CLIENT_PORT);
        let peer = format!("http://{}:{}", m.addr, plan::ETCD_PEER_PORT);
        let data = p.run_dir().join(format!("etcd-{}", m.name));
        let args: Vec<String> = vec![
            "--name".into(),
            m.name.clone(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer,
            "--initial-cluster".into(),
            cluster.join(","),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            format!("meshd-{}", p.instance),
        ];
        let log = p.run_dir().join(format!("etcd-{}.log", m.name));
        let child = sys::spawn_in(&rec.ns, &etcd, &args, &log, &[])?;
        let pid = child.id();
        write_pid(&p.run_dir().join(format!("etcd-{}.pid", m.name)), pid)?;
        if let Some(e) = &mut self.rec.etcd {
            e.members[k].pid = pid;
        }
        self.children.push(child);
        Ok(())
    }

    /// Starts the instance's etcd: `members` members in namespace `<prefix>etcd` on the
    /// management bridge, every node given a leg on it; waits until etcd answers.
    fn start_etcd(&mut self, members: usize) -> Result<()> {
        let p = self.plan.clone();
        let ns = p.etcd_ns();
        sys::netns_add(&ns)?;
        sys::ip_in(&ns, &["link", "set", "lo", "up"])?;
        sys::ip_in(
            &ns,
            &["link", "add", "name", plan::MGMT_DEV, "type", "bridge"],
        )?;
        sys::ip_in(&ns, &["link", "set", plan::MGMT_DEV, "up"])?;
        sys::bridge_nf_off(&ns)?;
        let mut rec = EtcdRec {
            ns: ns.clone(),
            members: Vec::new(),
        };
        for k in 1..=members {
            let addr = plan::etcd_addr(k);
            rec.members.push(EtcdMember {
                name: format!("e{k}"),
                addr,
                pid: 0,
            });
            sys::ip_in(
                &ns,
                &["addr", "add", &format!("{addr}/24"), "dev", plan::MGMT_DEV],
            )?;
        }
        for node in self.rec.nodes.clone() {
            let end = format!("mgmt-{}", node.name);
            sys::ip_in(
                &ns,
                &[
                    "link", "add", "name", &end, "type", "veth", "peer", "name", "mgmt0", "netns",
                    &node.ns,
                ],
            )?;
            sys::ip_in(&ns, &["link", "set", &end, "master", plan::MGMT_DEV, "up"])?;
            let a = format!("{}/24", plan::mgmt_addr(node.index));
            sys::ip_in(&node.ns, &["addr", "add", &a, "dev", "mgmt0"])?;
            sys::ip_in(&node.ns, &["link", "set", "mgmt0", "up"])?;
            sys::ip_in(&node.ns, &["link", "set", "lo", "up"])?;
        }
        let members = rec.members.len();
        self.rec.etcd = Some(rec);
        for k in 0..members {
            self.spawn_etcd_member(k)?;
        }
        self.save()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.etcdctl(&["endpoint", "health"]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::msg(format!(
                        "etcd did not come up within 30 s: {e} (logs: {}/etcd-*.log)",
                        p.run_dir().display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Runs etcdctl (API v3) against the instance's etcd, inside its namespace.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let Some(e) = &self.rec.etcd else {
            return Err(Error::msg(
                "this instance runs without etcd (up --cluster starts one)",
            ));
        };
        let eps: Vec<String> = e
            .members
            .iter()
            .map(|m| format!("http://{}:{}", m.addr, plan::ETCD_CLIENT_PORT))
            .collect();
        let mut all = vec![format!("--endpoints={}", eps.join(","))];
        all.extend(args.iter().map(|a| a.to_string()));
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &e.ns, "etcdctl"])
            .args(&all)
            .env("ETCDCTL_API", "3")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                program: "etcdctl".into(),
                source,
                hint: "scripts/deps.sh installs it (apt-get install etcd-client)".into(),
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::msg(format!(
                "etcdctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Waits until every node's meshd holds its lease and runs the cluster's current state.
    pub fn wait_ready(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let ls = self.meshctl_quiet(&["--format", "json", "node", "ls"]);
            let ready = ls.as_ref().ok().and_then(|text| {
                let rows: Vec<serde_json::Value> = serde_json::from_str(text).ok()?;
                let up = rows
                    .iter()
                    .filter(|r| r["status"] == "ready" && r["revision"].is_i64())
                    .count();
                Some(up)
            });
            if ready == Some(self.rec.nodes.len()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::msg(format!(
                    "the nodes did not all register with etcd within {within:?}: {}",
                    match ls {
                        Ok(t) => t,
                        Err(e) => e.to_string(),
                    }
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_socket(&mut self, n: usize) -> Result<()> {
        let node = &self.rec.nodes[n];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&node.socket).is_ok() {
                return Ok(());
            }
            if !sys::alive(node.pid) {
                return Err(Error::msg(format!(
                    "meshd on {} exited at start (log: {})",
                    node.name,
                    self.plan.node_log(node.index).display()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::msg(format!(
                    "meshd on {} did not open its control socket {} within 20 s (log: {})",
                    node.name,
                    node.socket.display(),
                    self.plan.node_log(node.index).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of every node's meshd log, for an error message.
    fn node_log_tails(&self) -> String {
        let mut s = String::new();
        for n in &self.rec.nodes {
            let text = std::fs::read_to_string(self.plan.node_log(n.index)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                continue;
            }
            let _ = write!(
                s,
                "\nmeshd {} log ({}):",
                n.name,
                self.plan.node_log(n.index).display()
            );
            for l in &lines[lines.len().saturating_sub(6)..] {
                let _ = write!(s, "\n    {l}");
            }
        }
        s
    }

    // ---- meshctl ------------------------------------------------------------------------

    /// Every node's control socket.
    pub fn sockets(&self) -> Vec<PathBuf> {
        self.rec.nodes.iter().map(|n| n.socket.clone()).collect()
    }

    /// `MESHCTL_SOCKET=...` for every node, as a person would export it.
    pub fn socket_env(&self) -> String {
        self.sockets()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs meshctl with every node's socket (changes go to all of them, reads to n1).
    pub fn meshctl<S: AsRef<str>>(&self, args: &[S]) -> Result<String> {
        self.meshctl_on(&self.sockets(), args)
    }

    /// Runs meshctl against `sockets`; an error carries meshctl's message.
    pub fn meshctl_on<S: AsRef<str>>(&self, sockets: &[PathBuf], args: &[S]) -> Result<String> {
        self.meshctl_echo(sockets, args, self.verbose)
    }

    /// meshctl as this instance runs it: in cluster mode inside etcd's namespace (the
    /// management network) with `MESHCTL_CLUSTER`, else as is (the sockets are files).
    pub fn meshctl_command(&self) -> std::process::Command {
        match &self.rec.etcd {
            Some(e) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", &e.ns])
                    .arg(&self.tools.meshctl)
                    .env("MESHCTL_CLUSTER", e.endpoints());
                c
            }
            None => std::process::Command::new(&self.tools.meshctl),
        }
    }

    /// Runs meshctl against node `node`'s own socket (its view: observed task health, its
    /// counters), without cluster mode; echoed when the bed is verbose.
    pub fn meshctl_local<S: AsRef<str>>(&self, node: &str, args: &[S]) -> Result<String> {
        let sock = self.node(node)?.socket.display().to_string();
        let mut all = vec!["--socket".to_string(), sock];
        all.extend(args.iter().map(|a| a.as_ref().to_string()));
        let shown = sys::cmdline("meshctl", &all);
        if self.verbose {
            println!("$ {shown}");
        }
        let mut cmd = std::process::Command::new(&self.tools.meshctl);
        cmd.args(&all)
            .env_remove("MESHCTL_CLUSTER")
            .env_remove("MESHCTL_SOCKET");
        self.run_meshctl(cmd, shown, self.verbose)
    }

    /// Runs a meshctl command: its output (echoed indented when `echo`), or an error with
    /// `shown`, its exit status and what it said.
    fn run_meshctl(
        &self,
        mut cmd: std::process::Command,
        shown: String,
        echo: bool,
    ) -> Result<String> {
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                program: self.tools.meshctl.display().to_string(),
                source,
                hint: "build it with `cargo build`, or set MESHCTL_BIN".into(),
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if echo {
            for l in stdout.lines() {
                println!("  {l}");
            }
        }
        if !out.status.success() {
            return Err(Error::Command {
                cmdline: shown,
                status: out.status.code().map_or_else(
                    || "killed by a signal".into(),
                    |c| format!("exit status {c}"),
                ),
                stderr: if stderr.trim().is_empty() {
                    stdout
                } else {
                    stderr
                },
            });
        }
        Ok(stdout)
    }

    /// Runs meshctl for a read whose output the caller shows its own way.
    fn meshctl_quiet<S: AsRef<str>>(&self, args: &[S]) -> Result<String> {
        self.meshctl_echo(&self.sockets(), args, false)
    }

    fn meshctl_echo<S: AsRef<str>>(
        &self,
        sockets: &[PathBuf],
        args: &[S],
        echo: bool,
    ) -> Result<String> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let env = sockets
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        if echo {
            let who = if sockets.len() == self.rec.nodes.len() {
                String::new()
            } else {
                let names: Vec<&str> = self
                    .rec
                    .nodes
                    .iter()
                    .filter(|n| sockets.contains(&n.socket))
                    .map(|n| n.name.as_str())
                    .collect();
                format!("   # on {}", names.join(", "))
            };
            println!("$ {}{who}", sys::cmdline("meshctl", &args));
        }
        let mut cmd = self.meshctl_command();
        cmd.args(&args).env("MESHCTL_SOCKET", &env);
        let shown = format!("MESHCTL_SOCKET={env} {}", sys::cmdline("meshctl", &args));
        self.run_meshctl(cmd, shown, echo)
    }

    /// Asks node n1's meshd (through the control protocol) for a service as it knows it.
    pub fn service(&self, name: &str) -> Result<Service> {
        let socket = self
            .sockets()
            .into_iter()
            .next()
            .ok_or_else(|| Error::msg("the instance has no nodes"))?;
        let resp = ctl::client::request(
            &socket,
            &Command::Query(Query::ServiceInspect {
                name: name.to_string(),
            }),
            Duration::from_secs(10),
        )
        .map_err(|e| Error::msg(e.to_string()))?;
        let ok = resp
            .into_result()
            .map_err(|e| Error::msg(format!("meshd: {}", e.message)))?;
        serde_json::from_value(ok.result).map_err(|e| {
            Error::msg(format!(
                "meshd answered service inspect with something unreadable: {e}"
            ))
        })
    }

    /// The VIP of `service` on `network`, as meshd gave it.
    pub fn vip(&self, service: &str, network: &str) -> Result<Ipv4Addr> {
        let svc = self.service(service)?;
        svc.networks
            .iter()
            .find(|n| n.network == network)
            .and_then(|n| n.vip)
            .ok_or_else(|| Error::msg(format!("service {service} has no VIP on network {network}")))
    }

    // ---- lookups ------------------------------------------------------------------------

    pub fn node(&self, name: &str) -> Result<&NodeRec> {
        self.rec
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.rec.nodes.iter().map(|n| n.name.as_str()).collect();
                Error::msg(format!(
                    "no node {name:?} in instance {} (nodes: {})",
                    self.plan.instance,
                    names.join(", ")
                ))
            })
    }

    /// A node's underlay address and a port on it.
    pub fn node_sock(&self, node: &str, port: u16) -> Result<SocketAddr> {
        Ok(SocketAddr::from((self.node(node)?.addr, port)))
    }

    pub fn task(&self, name: &str) -> Result<&TaskRec> {
        self.rec
            .tasks
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::msg(format!("no task {name:?}")))
    }

    /// The tasks of a service, by slot.
    pub fn tasks_of(&self, service: &str) -> Vec<&TaskRec> {
        let mut v: Vec<&TaskRec> = self
            .rec
            .tasks
            .iter()
            .filter(|t| t.service == service)
            .collect();
        v.sort_by_key(|t| t.slot);
        v
    }

    /// The namespace of the outside client.
    pub fn client_ns(&self) -> String {
        self.plan.client_ns()
    }

    // ---- services and tasks -------------------------------------------------------------

    /// Creates the service's tasks (namespaces running whoami, placed over the nodes) and
    /// registers the service on every node.
    pub fn run(&mut self, spec: &RunSpec) -> Result<()> {
        plan::check_service_name(&spec.name)?;
        if self.rec.services.iter().any(|s| s.name == spec.name) {
            return Err(Error::msg(format!("service {} exists: change it with `testbed scale {}=N`, or remove it with `testbed rm {}`", spec.name, spec.name, spec.name)));
        }
        for n in &spec.nodes {
            self.node(n)?;
        }
        for net in &spec.networks {
            if net == plan::INGRESS {
                return Err(Error::msg("--network ingress: the ingress network carries published ports; publish a port with --publish instead"));
            }
            self.ensure_network(net, spec.encrypted, !spec.ipv4_only)?;
        }
        let svc = SvcRec {
            name: spec.name.clone(),
            networks: spec.networks.clone(),
            ports: spec.publish.clone(),
            client_ip: spec.client_ip,
            constraint: spec.nodes.clone(),
        };
        let mut made = Vec::new();
        let result = (|| -> Result<()> {
            for _ in 0..spec.replicas {
                let t = self.add_task(&svc)?;
                made.push(t);
            }
            let mut args: Vec<String> = vec![
                "service".into(),
                "create".into(),
                "--name".into(),
                spec.name.clone(),
            ];
            for p in &spec.publish {
                args.push("--publish".into());
                args.push(publish_arg(p));
            }
            for n in &spec.networks {
                args.push("--network".into());
                args.push(n.clone());
            }
            if spec.client_ip == ClientIpMode::Keep {
                args.push("--client-ip".into());
                args.push("keep".into());
            }
            for t in &made {
                args.push("--task".into());
                args.push(task_arg(t));
            }
            args.extend(spec.create_args.iter().cloned());
            self.meshctl(&args)?;
            Ok(())
        })();
        if let Err(e) = result {
            for t in &made {
                self.remove_task_ns(t);
            }
            self.rec.tasks.retain(|t| t.service != spec.name);
            let _ = self.save();
            return Err(e);
        }
        self.rec.services.push(svc);
        self.save()?;
        self.write_hosts();
        Ok(())
    }

    /// Creates a user network on every node when the testbed has not yet, `encrypted` with
    /// `--opt encrypted`, dual-stack (`--ipv6 --subnet` of [`plan::subnet6`]) when the mesh's
    /// overlays are ([`Record::ipv6_overlay`]) and `ipv6` allows it.
    fn ensure_network(&mut self, name: &str, encrypted: bool, ipv6: bool) -> Result<()> {
        if self.rec.networks.iter().any(|n| n.name == name) {
            return Ok(());
        }
        let k = (1..=250u8)
            .find(|k| !self.rec.networks.iter().any(|n| n.k == *k))
            .ok_or_else(|| Error::msg("no free 10.0.k.0/24 subnet left"))?;
        let ipv6 = ipv6 && self.rec.ipv6_overlay;
        self.meshctl(&network_create_args(name, k, encrypted, ipv6))?;
        self.rec.networks.push(NetRec {
            name: name.to_string(),
            k,
            next_host: plan::FIRST_TASK_HOST,
            encrypted,
            ipv6,
        });
        self.save()
    }

    /// Picks a node for a new task of `svc`: the allowed active node with the fewest tasks of
    /// the service, then the fewest tasks, then the lowest index (Swarm's spread).
    fn place(&self, svc: &SvcRec) -> Result<String> {
        let candidates: Vec<&NodeRec> = self
            .rec
            .nodes
            .iter()
            .filter(|n| n.availability == Availability::Active)
            .filter(|n| svc.constraint.is_empty() || svc.constraint.contains(&n.name))
            .collect();
        let count = |node: &str, service: Option<&str>| {
            self.rec
                .tasks
                .iter()
                .filter(|t| t.node == node && service.is_none_or(|s| t.service == s))
                .count()
        };
        candidates
            .iter()
            .min_by_key(|n| {
                (
                    count(&n.name, Some(&svc.name)),
                    count(&n.name, None),
                    n.index,
                )
            })
            .map(|n| n.name.clone())
            .ok_or_else(|| {
                Error::msg(format!(
                    "no active node to place a task of {} on (drained nodes take no new tasks)",
                    svc.name
                ))
            })
    }

    /// Makes the next task of `svc`: its namespace on a node's tasks bridge, its addresses, and
    /// whoami answering on every target port.
    fn add_task(&mut self, svc: &SvcRec) -> Result<TaskRec> {
        let node_name = self.place(svc)?;
        let node = self.node(&node_name)?.clone();
        // The lowest free slot, as Swarm reuses web.2 after `scale web=1` then `scale web=2`.
        let used: BTreeSet<u32> = self
            .rec
            .tasks
            .iter()
            .filter(|t| t.service == svc.name)
            .map(|t| t.slot)
            .collect();
        let slot = (1..).find(|s| !used.contains(s)).unwrap_or(1);
        let name = format!("{}.{slot}", svc.name);
        let mut nets: Vec<String> = Vec::new();
        if !svc.ports.is_empty() {
            nets.push(plan::INGRESS.to_string());
        }
        nets.extend(svc.networks.iter().cloned());
        if nets.is_empty() {
            return Err(Error::msg(format!(
                "service {}: a task needs a network: publish a port (--publish) or attach a network (--network appnet)",
                svc.name
            )));
        }
        let mut addrs = Vec::new();
        let mut addrs6 = Vec::new();
        for net in &nets {
            let Some(rec) = self.rec.networks.iter_mut().find(|n| &n.name == net) else {
                return Err(Error::msg(format!(
                    "network {net} was not created by the testbed"
                )));
            };
            if rec.next_host == 255 {
                return Err(Error::msg(format!(
                    "network {net} has no address left for a task"
                )));
            }
            let a = plan::host(rec.k, rec.next_host);
            addrs.push((net.clone(), a));
            if let Some(a6) = rec.twin(a) {
                addrs6.push((net.clone(), a6));
            }
            rec.next_host += 1;
        }
        let gw_k = self
            .rec
            .networks
            .iter()
            .find(|n| n.name == nets[0])
            .map_or(0, |n| n.k);
        let veth = format!("tk{}", self.rec.next_veth);
        self.rec.next_veth += 1;
        // The lowest VLAN no task of the node has (from 2: 1 is many switches' default).
        let vlans: BTreeSet<u16> = self
            .rec
            .tasks
            .iter()
            .filter(|t| t.node == node.name)
            .map(|t| t.vlan)
            .collect();
        let Some(vlan) = (2..=4094).find(|v| !vlans.contains(v)) else {
            return Err(Error::msg(format!(
                "node {} has no VLAN left for another task (4093 at most)",
                node.name
            )));
        };
        let task = TaskRec {
            name: name.clone(),
            service: svc.name.clone(),
            slot,
            node: node.name.clone(),
            ns: self.plan.task_ns(&name),
            veth,
            vlan,
            addrs,
            addrs6,
            pid: 0,
        };
        // Recorded before it exists, so `down` finds it whatever happens next.
        self.rec.tasks.push(task.clone());
        self.save()?;
        let pid = match self.build_task(&task, &node, plan::gateway(gw_k), svc) {
            Ok(pid) => pid,
            Err(e) => {
                self.remove_task_ns(&task);
                self.rec.tasks.retain(|t| t.name != task.name);
                let _ = self.save();
                return Err(e);
            }
        };
        let task = TaskRec { pid, ..task };
        if let Some(t) = self.rec.tasks.iter_mut().find(|t| t.name == task.name) {
            t.pid = pid;
        }
        self.save()?;
        Ok(task)
    }

    fn build_task(
        &mut self,
        t: &TaskRec,
        node: &NodeRec,
        gw: Ipv4Addr,
        svc: &SvcRec,
    ) -> Result<u32> {
        sys::netns_add(&t.ns)?;
        sys::ip_in(
            &node.ns,
            &[
                "link", "add", "name", &t.veth, "type", "veth", "peer", "name", "eth0", "netns",
                &t.ns,
            ],
        )?;
        sys::ip_in(
            &node.ns,
            &["link", "set", &t.veth, "master", plan::TASKS_DEV],
        )?;
        // The task's own VLAN: what it sends comes to meshd tagged with it, and it hears only
        // what meshd sends it on it; no task's port forwards to another's (port isolation).
        // What `bridge vlan add dev PORT vid V pvid untagged` does on a VLAN-filtering bridge,
        // which the test machines' kernels lack: tc programs on the port (port::taskvlan).
        sys::exec_in(
            &node.ns,
            "bridge",
            &["link", "set", "dev", &t.veth, "isolated", "on"],
        )?;
        let (veth, vlan) = (t.veth.clone(), t.vlan);
        sys::in_netns(&node.ns, move || {
            dataplane::port::taskvlan::attach(&veth, vlan)
        })?
        .map_err(|e| Error::msg(e.to_string()))?;
        sys::ip_in(&node.ns, &["link", "set", &t.veth, "up"])?;
        sys::offloads_off(&node.ns, &t.veth)?;
        for (_, a) in &t.addrs {
            sys::ip_in(&t.ns, &["addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
        }
        if !t.addrs6.is_empty() {
            // IPv6 on eth0 (`netns_add` turns it off everywhere), configured as the task's
            // IPv4 is: no router solicitations or advertisements taken, no duplicate address
            // detection, so each twin is usable at once; its /64 is on-link (meshd answers
            // Neighbor Discovery for the network's other twins).
            sys::exec_in(
                &t.ns,
                "sysctl",
                &[
                    "-qw",
                    "net.ipv6.conf.eth0.accept_dad=0",
                    "net.ipv6.conf.eth0.accept_ra=0",
                    "net.ipv6.conf.eth0.router_solicitations=0",
                    "net.ipv6.conf.eth0.disable_ipv6=0",
                ],
            )?;
            for (_, a6) in &t.addrs6 {
                let a6 = format!("{a6}/{}", plan::OVERLAY6_PREFIX);
                sys::ip_in(&t.ns, &["-6", "addr", "add", &a6, "dev", "eth0", "nodad"])?;
            }
        }
        // A task on an encrypted network gets its smaller MTU (the seal's 44 bytes less), one
        // over an IPv6 underlay 20 bytes less again.
        let sealed = svc.networks.iter().any(|n| {
            self.rec
                .networks
                .iter()
                .any(|r| r.name == *n && r.encrypted)
        });
        let mtu = self.task_mtu(sealed).to_string();
        sys::ip_in(&t.ns, &["link", "set", "eth0", "mtu", &mtu, "up"])?;
        sys::offloads_off(&t.ns, "eth0")?;
        sys::ip_in(&t.ns, &["route", "add", "default", "via", &gw.to_string()])?;
        self.start_whoami(t, svc)
    }

    /// Starts task `t`'s whoami and waits until it serves; its pid.
    fn start_whoami(&mut self, t: &TaskRec, svc: &SvcRec) -> Result<u32> {
        // whoami on every target port (and on 80, TCP and UDP, always).
        let mut http: BTreeSet<u16> = BTreeSet::from([80]);
        let mut udp: BTreeSet<u16> = BTreeSet::from([80]);
        for p in &svc.ports {
            match p.protocol {
                Protocol::Tcp => http.insert(p.target),
                Protocol::Udp => udp.insert(p.target),
            };
        }
        let ready = self.plan.task_ready(&t.name);
        let _ = std::fs::remove_file(&ready);
        let mut args = vec!["whoami".to_string(), "--name".into(), t.name.clone()];
        for p in &http {
            args.push("--http".into());
            args.push(p.to_string());
        }
        for p in &udp {
            args.push("--udp".into());
            args.push(p.to_string());
        }
        args.push("--ready".into());
        args.push(ready.display().to_string());
        let child = sys::spawn_in(
            &t.ns,
            &self.tools.testbed,
            &args,
            &self.plan.task_log(&t.name),
            &[],
        )?;
        let pid = child.id();
        self.children.push(child);
        write_pid(&self.plan.task_pidfile(&t.name), pid)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            if !sys::alive(pid) || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.plan.task_log(&t.name)).unwrap_or_default();
                return Err(Error::msg(format!(
                    "whoami of task {} did not start: {}",
                    t.name,
                    log.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(pid)
    }

    /// Stops a task's whoami and removes its namespace (its veth goes with it).
    fn remove_task_ns(&mut self, t: &TaskRec) {
        if t.pid != 0 {
            sys::stop_pid(t.pid, "whoami", Duration::from_secs(2));
        }
        sys::kill_netns_pids(&t.ns);
        let _ = sys::ip(&["netns", "del", &t.ns]);
        let _ = std::fs::remove_dir_all(self.plan.etc_netns(&t.ns));
        for p in [
            self.plan.task_pidfile(&t.name),
            self.plan.task_ready(&t.name),
        ] {
            let _ = std::fs::remove_file(p);
        }
        self.reap();
    }

    /// Scales a service: down through `meshctl service scale` (meshd removes the
    /// highest-numbered tasks and resets their connections), then their namespaces go; up by
    /// new tasks registered with `meshctl service update --task-add`.
    // Casts: a service's task count is small (the testbed has addresses for 155).
    #[allow(clippy::cast_possible_truncation)]
    pub fn scale(&mut self, service: &str, replicas: u32) -> Result<()> {
        let idx = self
            .rec
            .services
            .iter()
            .position(|s| s.name == service)
            .ok_or_else(|| Error::msg(format!("no service {service} (see `testbed status`)")))?;
        let current = self.tasks_of(service).len() as u32;
        if replicas < current {
            self.meshctl(&["service", "scale", &format!("{service}={replicas}")])?;
            let kept: BTreeSet<String> = self
                .service(service)?
                .tasks
                .into_iter()
                .map(|t| t.name)
                .collect();
            let gone: Vec<TaskRec> = self
                .rec
                .tasks
                .iter()
                .filter(|t| t.service == service && !kept.contains(&t.name))
                .cloned()
                .collect();
            for t in &gone {
                self.remove_task_ns(t);
            }
            self.rec
                .tasks
                .retain(|t| t.service != service || kept.contains(&t.name));
        } else if replicas > current {
            let svc = self.rec.services[idx].clone();
            let mut made = Vec::new();
            let mut result = Ok(());
            for _ in current..replicas {
                match self.add_task(&svc) {
                    Ok(t) => made.push(t),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_ok() {
                let mut args: Vec<String> = vec!["service".into(), "update".into()];
                for t in &made {
                    args.push("--task-add".into());
                    args.push(task_arg(t));
                }
                args.push(service.to_string());
                result = self.meshctl(&args).map(|_| ());
            }
            if let Err(e) = result {
                for t in &made {
                    self.remove_task_ns(t);
                    self.rec.tasks.retain(|x| x.name != t.name);
                }
                let _ = self.save();
                return Err(e);
            }
        }
        self.save()?;
        self.write_hosts();
        Ok(())
    }

    /// Stops task `task`'s server (whoami) but keeps its namespace and its registration in
    /// meshd: new connections to it are refused by its kernel, as when a container's process
    /// dies. The health-check tests use it.
    pub fn stop_task_server(&mut self, task: &str) -> Result<()> {
        let t = self.task(task)?.clone();
        if t.pid != 0 && !sys::stop_pid(t.pid, "whoami", Duration::from_secs(2)) {
            return Err(Error::msg(format!(
                "whoami of task {task} (pid {}) did not stop",
                t.pid
            )));
        }
        if let Some(r) = self.rec.tasks.iter_mut().find(|x| x.name == task) {
            r.pid = 0;
        }
        self.reap();
        self.save()
    }

    /// Starts task `task`'s server again after [`Bed::stop_task_server`].
    pub fn start_task_server(&mut self, task: &str) -> Result<()> {
        let t = self.task(task)?.clone();
        if t.pid != 0 && sys::alive(t.pid) {
            return Ok(());
        }
        let svc = self
            .rec
            .services
            .iter()
            .find(|s| s.name == t.service)
            .cloned()
            .ok_or_else(|| Error::msg(format!("no service {} for task {task}", t.service)))?;
        let pid = self.start_whoami(&t, &svc)?;
        if let Some(r) = self.rec.tasks.iter_mut().find(|x| x.name == task) {
            r.pid = pid;
        }
        self.save()
    }

    /// Removes a task from meshd but leaves its namespace and whoami running (what a crashed
    /// orchestrator would do; the tests use it to see meshd end the task's connections).
    pub fn deregister_task(&mut self, task: &str) -> Result<()> {
        let t = self.task(task)?.clone();
        self.meshctl(&["service", "update", "--task-rm", &t.name, &t.service])?;
        Ok(())
    }

    /// Removes a service from every node, then its tasks.
    pub fn rm(&mut self, service: &str) -> Result<()> {
        if !self.rec.services.iter().any(|s| s.name == service) {
            return Err(Error::msg(format!(
                "no service {service} (see `testbed status`)"
            )));
        }
        self.meshctl(&["service", "rm", service])?;
        let gone: Vec<TaskRec> = self
            .rec
            .tasks
            .iter()
            .filter(|t| t.service == service)
            .cloned()
            .collect();
        for t in &gone {
            self.remove_task_ns(t);
        }
        self.rec.tasks.retain(|t| t.service != service);
        self.rec.services.retain(|s| s.name != service);
        self.save()?;
        self.write_hosts();
        Ok(())
    }

    /// `meshctl node update --availability drain|active NODE` on every node.
    pub fn set_availability(&mut self, node: &str, a: Availability) -> Result<()> {
        self.node(node)?;
        let word = match a {
            Availability::Active => "active",
            Availability::Drain => "drain",
        };
        self.meshctl(&["node", "update", "--availability", word, node])?;
        if let Some(n) = self.rec.nodes.iter_mut().find(|n| n.name == node) {
            n.availability = a;
        }
        self.save()
    }

    /// Writes `/etc/netns/<task-ns>/hosts` and `resolv.conf` for every task (`ip netns exec`
    /// bind-mounts them over /etc): the task's own name, and meshd's embedded resolver as its
    /// name server, on the gateway of the task's first network other than ingress (the ingress
    /// network is not for discovery, as in Swarm). So `curl web` inside a task asks meshd.
    fn write_hosts(&self) {
        for t in &self.rec.tasks {
            let mut hosts = String::from("127.0.0.1\tlocalhost\n");
            if let Some((_, a)) = t.addrs.first() {
                let _ = writeln!(hosts, "{a}\t{}", t.name);
            }
            let resolver = t
                .addrs
                .iter()
                .filter(|(net, _)| net != "ingress")
                .find_map(|(net, _)| self.rec.networks.iter().find(|n| &n.name == net))
                .map(|n| plan::gateway(n.k));
            let dir = self.plan.etc_netns(&t.ns);
            let _ = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join("hosts"), hosts));
            if let Some(gw) = resolver {
                let conf = format!("# meshd's embedded resolver on this task's network (written by the testbed)\nnameserver {gw}\noptions timeout:1 attempts:2\n");
                let _ = std::fs::write(dir.join("resolv.conf"), conf);
            }
        }
    }

    // ---- down ---------------------------------------------------------------------------

    /// Removes everything of this instance; see [`down`].
    pub fn down_now(&mut self) -> Vec<String> {
        let r = down(&self.plan);
        self.reap();
        r
    }

    /// Waits for daemons this process started that have exited.
    fn reap(&mut self) {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    // ---- status -------------------------------------------------------------------------

    /// What is up, and how to poke it by hand.
    pub fn status(&self) -> String {
        let p = &self.plan;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Instance {}: {} nodes; sockets, state files and logs in {}",
            p.instance,
            self.rec.nodes.len(),
            p.run_dir().display()
        );
        let _ = writeln!(
            s,
            "\nUNDERLAY 192.168.100.0/24 and fd00:100::/64: switch namespace {} (bridge {})",
            p.switch_ns(),
            plan::SWITCH_DEV
        );
        let _ = writeln!(
            s,
            "  client  {:<18} {}/24 and {}/64 on eth0 (an outside host: its kernel holds the addresses)",
            p.client_ns(),
            plan::CLIENT_ADDR,
            plan::CLIENT_ADDR6
        );
        if self.rec.underlay6 {
            let _ = writeln!(
                s,
                "  VXLAN runs over IPv6: node i's VTEP is fd00:100::1i (meshd --vtep); tasks get MTU {}",
                self.task_mtu(false)
            );
        }
        if self.rec.ipv6_overlay {
            let _ = writeln!(
                s,
                "  Overlays are dual-stack: network 10.0.k.0/24 also has fd00:10:k::/64, each task its twin there (the IPv4 address in the last 32 bits; /64 on eth0)"
            );
        }
        if let Some(e) = &self.rec.etcd {
            let _ = writeln!(
                s,
                "\nCLUSTER: etcd {} in namespace {} (management network 10.99.0.0/24, each node's mgmt0 at 10.99.0.1X); every meshd runs --cluster, meshctl changes etcd",
                e.endpoints(),
                e.ns
            );
        }
        let _ = writeln!(
            s,
            "\nNODES (meshd is the node: the kernel holds no address on up0 or br-tasks; node i also\n\
             answers NDP and ping at fd00:100::1i, and refuses TCP/UDP there: published ports are IPv4 only)"
        );
        let _ = writeln!(
            s,
            "  {:<5} {:<18} {:<16} {:<12} {:<9} MESHD",
            "NODE", "NAMESPACE", "ADDRESS", "INGRESS EP", "AVAIL"
        );
        for n in &self.rec.nodes {
            let state = if sys::alive(n.pid) {
                "running"
            } else {
                "NOT RUNNING"
            };
            let avail = match n.availability {
                Availability::Active => "active",
                Availability::Drain => "drain",
            };
            let _ = writeln!(
                s,
                "  {:<5} {:<18} {:<16} {:<12} {:<9} pid {} {state}, core {}, log {}",
                n.name,
                n.ns,
                n.addr.to_string(),
                n.endpoint.to_string(),
                avail,
                n.pid,
                n.core,
                p.node_log(n.index).display()
            );
        }
        let _ = writeln!(s, "\nNETWORKS (meshctl network ls)");
        match self.meshctl_quiet(&["network", "ls"]) {
            Ok(t) => indent(&mut s, &t),
            Err(e) => {
                let _ = writeln!(s, "  (meshd n1 did not answer: {e})");
            }
        }
        let _ = writeln!(s, "\nSERVICES (meshctl service ls)");
        if let Ok(t) = self.meshctl_quiet(&["service", "ls"]) {
            indent(&mut s, &t);
        }
        for svc in &self.rec.services {
            if let Ok(svcm) = self.service(&svc.name) {
                let vips: Vec<String> = svcm
                    .networks
                    .iter()
                    .filter_map(|n| {
                        let v = n.vip?;
                        // On a dual-stack network, the VIP's IPv6 twin too.
                        let twin = self
                            .rec
                            .networks
                            .iter()
                            .find(|r| r.name == n.network)
                            .and_then(|r| r.twin(v))
                            .map_or(String::new(), |t| format!(" {}:{t}", n.network));
                        Some(format!("{}:{v}{twin}", n.network))
                    })
                    .collect();
                if !vips.is_empty() {
                    let _ = writeln!(s, "  {} VIP {}", svc.name, vips.join(" "));
                }
            }
        }
        let _ = writeln!(
            s,
            "\nTASKS (namespaces on the nodes' br-tasks, each running `testbed whoami`)"
        );
        let _ = writeln!(
            s,
            "  {:<12} {:<5} {:<22} {:<38} WHOAMI",
            "TASK", "NODE", "NAMESPACE", "ADDRESSES"
        );
        let mut tasks: Vec<&TaskRec> = self.rec.tasks.iter().collect();
        tasks.sort_by(|a, b| (&a.service, a.slot).cmp(&(&b.service, b.slot)));
        for t in tasks {
            let addrs: Vec<String> = t
                .addrs
                .iter()
                .map(|(n, a)| format!("{n}:{a}"))
                .chain(t.addrs6.iter().map(|(n, a)| format!("{n}:{a}")))
                .collect();
            let state = if sys::alive(t.pid) {
                "running"
            } else {
                "NOT RUNNING"
            };
            let _ = writeln!(
                s,
                "  {:<12} {:<5} {:<22} {:<38} pid {} {state}",
                t.name,
                t.node,
                t.ns,
                addrs.join(","),
                t.pid
            );
        }
        s.push_str(&self.howto());
        s
    }

    /// Commands to run one's own clients.
    pub fn howto(&self) -> String {
        let p = &self.plan;
        let c = p.client_ns();
        let n1 = self
            .rec
            .nodes
            .first()
            .map_or("192.168.100.11".to_string(), |n| n.addr.to_string());
        let mut s = String::new();
        let _ = writeln!(s, "\nPOKE IT BY HAND");
        let published: Vec<&PublishedPort> = self
            .rec
            .services
            .iter()
            .flat_map(|s| s.ports.iter())
            .collect();
        let tcp = published
            .iter()
            .find(|p| p.protocol == Protocol::Tcp)
            .map_or(8080, |p| p.published);
        let _ = writeln!(
            s,
            "  ip netns exec {c} curl http://{n1}:{tcp}/            # any node's address works"
        );
        if let Some(u) = published.iter().find(|p| p.protocol == Protocol::Udp) {
            let _ = writeln!(
                s,
                "  ip netns exec {c} {} udp {n1}:{} hello",
                self.tools.testbed.display(),
                u.published
            );
        }
        let _ = writeln!(s, "  ip netns exec {c} ping -c 2 {n1}");
        let _ = writeln!(s, "  ip netns exec {c} curl http://{n1}:9999/             # not published: refused by meshd");
        if let Some(t) = self
            .rec
            .tasks
            .iter()
            .find(|t| t.addrs.iter().any(|(n, _)| n != plan::INGRESS))
        {
            let net = t
                .addrs
                .iter()
                .find(|(n, _)| n != plan::INGRESS)
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            let other = self
                .rec
                .services
                .iter()
                .find(|s| s.networks.contains(&net) && s.name != t.service);
            let target = other.map_or(t.service.as_str(), |s| s.name.as_str());
            let _ = writeln!(
                s,
                "  ip netns exec {} curl http://{target}/         # by VIP, from inside task {}",
                t.ns, t.name
            );
        }
        let _ = writeln!(s, "  export MESHCTL_SOCKET={}", self.socket_env());
        let _ = writeln!(
            s,
            "  {} service ls; {} stats   # or: testbed ctl service ls",
            self.tools.meshctl.display(),
            self.tools.meshctl.display()
        );
        let _ = writeln!(s, "  testbed run api --replicas 2 --publish 9090:80 | testbed scale web=3 | testbed drain n2");
        let _ = writeln!(s, "  testbed --instance {} down                          # removes every meshd-{}-* namespace", p.instance, p.instance);
        s
    }

    /// Every node's counters (what of them is not zero, [`stats_digest`]) and the last lines
    /// of its log: for a failing test's report.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for n in &self.rec.nodes {
            let _ = writeln!(s, "---- {} ({}) meshctl stats, not zero", n.name, n.ns);
            let args = ["--format", "json", "stats"];
            match self.meshctl_echo(std::slice::from_ref(&n.socket), &args, false) {
                Ok(t) => match read_stats(&t) {
                    Ok(r) => indent(&mut s, &stats_digest(&r).join("\n")),
                    Err(e) => {
                        let _ = writeln!(s, "  unreadable ({e}); it begins:");
                        for l in t.lines().take(DIGEST_ITEMS) {
                            let _ = writeln!(s, "    {l}");
                        }
                    }
                },
                Err(e) => {
                    let _ = writeln!(s, "  {e}");
                }
            }
        }
        s.push_str(&self.node_log_tails());
        s
    }
}

/// `meshctl --format json stats` read back.
fn read_stats(text: &str) -> serde_json::Result<StatsReport> {
    serde_json::from_str(text)
}

/// The most entries one section of [`stats_digest`] shows, and how many go on one line.
const DIGEST_ITEMS: usize = 24;
const DIGEST_PER_LINE: usize = 8;

/// What of a node's `stats` answer helps read a failure, in a bounded number of lines: the
/// generation, then what is not zero of the totals over the workers (the plain counters in
/// their order; the drops and the frames handed to the host by reason, the most first; the
/// host side's counters; the DPDK devices' errors), then each service's traffic (at most
/// [`DIGEST_PER_LINE`] services) and the tasks that take no new connections. Each section
/// shows at most [`DIGEST_ITEMS`] entries and says how many more there are.
fn stats_digest(r: &StatsReport) -> Vec<String> {
    let mut out = vec![format!(
        "generation {}, {} worker(s), burst p99 {} ns, max {} ns",
        r.generation,
        r.workers.len(),
        r.burst_latency_ns.p99,
        r.burst_latency_ns.max
    )];
    let most_first = |m: &std::collections::BTreeMap<String, u64>| {
        let mut v: Vec<(String, u64)> = m
            .iter()
            .filter(|&(_, &n)| n != 0)
            .map(|(k, &n)| (k.clone(), n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    };
    let t = &r.total;
    digest_section(&mut out, "counters", &nonzero(t.counters.iter()), "none");
    digest_section(&mut out, "drops", &most_first(&t.drops), "none");
    digest_section(&mut out, "to_host", &most_first(&t.to_host), "");
    if let Some(h) = &r.host {
        digest_section(&mut out, "host", &nonzero(h.iter()), "");
    }
    if let Some(d) = &r.dpdk {
        let mut errors = vec![("mbufs_in_use".to_string(), d.mbufs_in_use)];
        for x in &d.devices {
            let port = &x.port;
            for (k, v) in [
                ("rx_missed", x.rx_missed),
                ("rx_errors", x.rx_errors),
                ("tx_errors", x.tx_errors),
                ("rx_nombuf", x.rx_nombuf),
            ] {
                if v != 0 {
                    errors.push((format!("{port}.{k}"), v));
                }
            }
            if !x.link_up {
                errors.push((format!("{port}.link_down"), 1));
            }
        }
        digest_section(&mut out, "dpdk", &errors, "");
    }
    let services: Vec<String> = r
        .services
        .iter()
        .map(|v| {
            format!(
                "{}: eligible {}/{}, packets {}, connections {}, dropped {}",
                v.name,
                v.eligible,
                v.tasks.len(),
                v.packets,
                v.connections,
                v.dropped
            )
        })
        .collect();
    for l in services.iter().take(DIGEST_PER_LINE) {
        out.push(format!("service {l}"));
    }
    if services.len() > DIGEST_PER_LINE {
        out.push(format!(
            "(+{} more services)",
            services.len() - DIGEST_PER_LINE
        ));
    }
    let idle: Vec<String> = r
        .services
        .iter()
        .flat_map(|v| &v.tasks)
        .filter(|x| !x.eligible)
        .map(|x| match x.health {
            Some(h) => format!("{} on {} ({})", x.name, x.node, h.as_str()),
            None => format!("{} on {}", x.name, x.node),
        })
        .collect();
    if !idle.is_empty() {
        let shown = idle.len().min(DIGEST_ITEMS);
        let mut line = format!("not eligible: {}", idle[..shown].join(", "));
        if idle.len() > shown {
            let _ = write!(line, " (+{} more)", idle.len() - shown);
        }
        out.push(line);
    }
    out
}

/// `label: name value  name value ...` over lines of [`DIGEST_PER_LINE`] pairs, at most
/// [`DIGEST_ITEMS`] of them; `label: {empty}` when there are none (nothing when `empty` is
/// "").
fn digest_section(out: &mut Vec<String>, label: &str, pairs: &[(String, u64)], empty: &str) {
    if pairs.is_empty() {
        if !empty.is_empty() {
            out.push(format!("{label}: {empty}"));
        }
        return;
    }
    let shown = &pairs[..pairs.len().min(DIGEST_ITEMS)];
    for (i, chunk) in shown.chunks(DIGEST_PER_LINE).enumerate() {
        let text: Vec<String> = chunk.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let head = if i == 0 {
            format!("{label}:")
        } else {
            " ".repeat(label.len() + 1)
        };
        out.push(format!("{head} {}", text.join("  ")));
    }
    if pairs.len() > shown.len() {
        if let Some(last) = out.last_mut() {
            let _ = write!(last, "  (+{} more)", pairs.len() - shown.len());
        }
    }
}

/// The counters of a set that are not zero, in the set's order.
fn nonzero<'a>(
    counters: impl Iterator<Item = (&'a str, ctl::counters::Kind, u64)>,
) -> Vec<(String, u64)> {
    counters
        .filter(|&(_, _, v)| v != 0)
        .map(|(k, _, v)| (k.to_string(), v))
        .collect()
}

fn indent(s: &mut String, text: &str) {
    for l in text.lines() {
        let _ = writeln!(s, "  {l}");
    }
}

fn task_arg(t: &TaskRec) -> String {
    let mut s = format!("name={},node={}", t.name, t.node);
    for (n, a) in &t.addrs {
        let _ = write!(s, ",addr={n}:{a}");
    }
    if t.vlan != 0 {
        let _ = write!(s, ",vlan={}", t.vlan);
    }
    s
}

/// A new random gossip key (`meshd --gossip-key-file`), readable by root only.
fn write_gossip_key(path: &Path) -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| Error::io("reading /dev/urandom".to_string(), e))?;
    let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn write_pid(path: &Path, pid: u32) -> Result<()> {
    std::fs::write(path, format!("{pid}\n"))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Removes everything instance `plan` made, whether or not its record survived: stops the
/// daemons named by its pid files, kills whatever else runs in its namespaces, deletes every
/// namespace named `meshd-<instance>-*`, its /etc/netns entries and its run directory. Returns
/// what it removed, one line each.
pub fn down(plan: &Plan) -> Vec<String> {
    let mut done = Vec::new();
    if !is_testbed(plan) {
        // Other tools of the workspace (dataplane's tests, bench) name their namespaces meshd-*
        // too: only an instance with the testbed's record or switch namespace is ours to remove.
        let theirs = sys::netns_with_prefix(&plan.prefix()).unwrap_or_default();
        if !theirs.is_empty() {
            done.push(format!(
                "left alone: {} (not a testbed instance: no {} and no namespace {})",
                theirs.join(", "),
                plan.bed_file().display(),
                plan.switch_ns()
            ));
        }
        return done;
    }
    let dir = plan.run_dir();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut pidfiles: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pid"))
            .collect();
        // Tasks first, then meshd (node pid files are n<i>.pid), etcd last.
        pidfiles.sort_by_key(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            (stem.starts_with("etcd-"), plan::node_index(stem).is_some())
        });
        for pf in pidfiles {
            let Some(pid) = std::fs::read_to_string(&pf)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let stem = pf
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_string();
            let expect = if plan::node_index(&stem).is_some() {
                "meshd"
            } else if stem.starts_with("etcd-") {
                "etcd"
            } else {
                "whoami"
            };
            if sys::stop_pid(pid, expect, Duration::from_secs(3)) {
                done.push(format!("stopped {expect} {stem} (pid {pid})"));
            }
        }
    }
    let mut spaces = sys::netns_with_prefix(&plan.prefix()).unwrap_or_default();
    // Tasks before nodes before the switch, so no veth is left dangling in between.
    spaces.sort_by_key(|ns| {
        let rest = &ns[plan.prefix().len()..];
        if rest == "sw" {
            2
        } else if plan::node_index(rest).is_some() || rest == "client" {
            1
        } else {
            0
        }
    });
    for ns in &spaces {
        sys::kill_netns_pids(ns);
    }
    for ns in &spaces {
        match sys::ip(&["netns", "del", ns]) {
            Ok(_) => done.push(format!("deleted namespace {ns}")),
            Err(e) => done.push(format!("could not delete namespace {ns}: {e}")),
        }
    }
    if let Ok(rd) = std::fs::read_dir("/etc/netns") {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(&plan.prefix()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if dir.exists() {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => done.push(format!("removed {}", dir.display())),
            Err(e) => done.push(format!("could not remove {}: {e}", dir.display())),
        }
    }
    done
}

/// Whether `plan` names a testbed instance: one with the testbed's record or its switch
/// namespace (`meshd-<instance>-sw`), which nothing else makes.
pub fn is_testbed(plan: &Plan) -> bool {
    plan.bed_file().exists() || Path::new("/run/netns").join(plan.switch_ns()).exists()
}

/// The testbed instances that have anything left (see [`is_testbed`]).
pub fn instances() -> Vec<String> {
    let mut v = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir("/run") {
        for e in rd.filter_map(|e| e.ok()) {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(i) = n.strip_prefix("meshd-") {
                if Plan::new(i).is_ok() && e.path().join("testbed.json").exists() {
                    v.insert(i.to_string());
                }
            }
        }
    }
    for ns in sys::netns_with_prefix("meshd-").unwrap_or_default() {
        if let Some((i, _)) = ns["meshd-".len()..].split_once('-') {
            if Plan::new(i).is_ok() {
                v.insert(i.to_string());
            }
        }
    }
    v.into_iter()
        .filter(|i| Plan::new(i).is_ok_and(|p| is_testbed(&p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs() {
        let p = parse_publish("8080:80", PublishMode::Ingress).unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        let p = parse_publish("5353:53/udp", PublishMode::Host).unwrap();
        assert_eq!((p.protocol, p.mode), (Protocol::Udp, PublishMode::Host));
        assert_eq!(
            publish_arg(&p),
            "published=5353,target=53,protocol=udp,mode=host"
        );
        for bad in ["8080", "8080:80/sctp", "x:80", "0:80", "8080:"] {
            assert!(parse_publish(bad, PublishMode::Ingress).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_specs_name_every_address() {
        let t = TaskRec {
            name: "web.1".into(),
            service: "web".into(),
            slot: 1,
            node: "n1".into(),
            ns: "meshd-tb-web.1".into(),
            veth: "tk0".into(),
            vlan: 2,
            addrs: vec![
                ("ingress".into(), Ipv4Addr::new(10, 0, 0, 100)),
                ("appnet".into(), Ipv4Addr::new(10, 0, 1, 100)),
            ],
            addrs6: vec![("appnet".into(), "fd00:10:1::a00:164".parse().unwrap())],
            pid: 0,
        };
        assert_eq!(
            task_arg(&t),
            "name=web.1,node=n1,addr=ingress:10.0.0.100,addr=appnet:10.0.1.100,vlan=2"
        );
    }

    #[test]
    fn dual_stack_networks_are_created_with_their_prefix_and_give_tasks_twins() {
        let args = |k, enc, v6| network_create_args("appnet", k, enc, v6).join(" ");
        assert_eq!(
            args(1, false, false),
            "network create appnet --subnet 10.0.1.0/24"
        );
        assert_eq!(
            args(1, false, true),
            "network create appnet --subnet 10.0.1.0/24 --ipv6 --subnet fd00:10:1::/64"
        );
        assert_eq!(
            args(3, true, true),
            "network create appnet --subnet 10.0.3.0/24 --ipv6 --subnet fd00:10:3::/64 --opt encrypted"
        );
        let mut net = NetRec {
            name: "appnet".into(),
            k: 1,
            next_host: plan::FIRST_TASK_HOST,
            encrypted: false,
            ipv6: true,
        };
        let a = plan::host(1, plan::FIRST_TASK_HOST);
        assert_eq!(net.twin(a), Some("fd00:10:1::a00:164".parse().unwrap()));
        assert_eq!(net.subnet6(), Some(plan::subnet6(1)));
        net.ipv6 = false;
        assert_eq!((net.twin(a), net.subnet6()), (None, None));
    }

    #[test]
    fn the_failure_dump_shows_what_is_not_zero_of_meshctl_stats() {
        // `meshctl --format json stats` of a node with one worker.
        let v = serde_json::json!({
            "node": "n1", "generation": 7,
            "workers": [{"rx": 10, "tx_tasks": 6,
                         "drops": {"no_route": 1, "bad_checksum": 4}}],
            "total": {"rx": 10, "tx_tasks": 6, "active_flows": 2,
                      "drops": {"no_route": 1, "bad_checksum": 4, "ttl": 0},
                      "to_host": 3, "to_host_by_reason": {"arp": 3}},
            "burst_latency_ns": {"count": 3, "p50": 900, "p99": 2000, "p999": 2000, "max": 2100},
            "services": [{"name": "web", "packets": 8, "bytes": 800, "connections": 2,
                          "dropped": 1, "eligible": 1,
                          "tasks": [{"name": "web.1", "node": "n2", "eligible": true,
                                     "health": "healthy", "packets": 8},
                                    {"name": "web.2", "node": "n3", "eligible": false,
                                     "health": "unhealthy"}]}],
            "host": {"frames": 3, "dns_queries": 5, "checks_failed": 1}
        });
        let r: StatsReport = serde_json::from_value(v).unwrap();
        // As meshctl prints it: the counter `to_host` and its breakdown by reason under
        // their own keys (they once shared one, and the counter was lost).
        let text = serde_json::to_string_pretty(&r).unwrap();
        assert_eq!(r.total.counters.to_host, 3);
        // Once in each report: the worker's and the total.
        assert_eq!(text.matches("\"to_host\"").count(), 2, "{text}");
        assert_eq!(read_stats(&text).unwrap(), r);
        assert_eq!(
            stats_digest(&r),
            [
                "generation 7, 1 worker(s), burst p99 2000 ns, max 2100 ns",
                "counters: rx 10  tx_tasks 6  to_host 3  active_flows 2",
                "drops: bad_checksum 4  no_route 1",
                "to_host: arp 3",
                "host: frames 3  dns_queries 5  checks_failed 1",
                "service web: eligible 1/2, packets 8, connections 2, dropped 1",
                "not eligible: web.2 on n3 (unhealthy)",
            ]
        );

        // A quiet node says so; a DPDK one shows its devices' errors.
        let v = serde_json::json!({
            "node": "n1", "generation": 1, "workers": [], "total": {},
            "burst_latency_ns": {}, "services": [],
            "dpdk": {"mbufs_in_use": 2048, "mbufs": 8191, "devices": [
                {"port": "uplink", "link_up": true, "rx_missed": 3},
                {"port": "tasks", "link_up": false}]}
        });
        let r: StatsReport = serde_json::from_value(v).unwrap();
        assert_eq!(
            stats_digest(&r),
            [
                "generation 1, 0 worker(s), burst p99 0 ns, max 0 ns",
                "counters: none",
                "drops: none",
                "dpdk: mbufs_in_use 2048  uplink.rx_missed 3  tasks.link_down 1",
            ]
        );

        // Bounded: 30 drop reasons show as the 24 largest, 8 to a line, and how many more;
        // 10 services as 8 and how many more.
        let mut r = StatsReport::default();
        for i in 0..30u64 {
            r.total.drops.insert(format!("reason{i:02}"), i + 1);
        }
        for i in 0..10 {
            r.services.push(ctl::proto::ServiceReport {
                name: format!("s{i}"),
                ..Default::default()
            });
        }
        let d = stats_digest(&r);
        let drops: Vec<&String> = d
            .iter()
            .skip_while(|l| !l.starts_with("drops:"))
            .take(3)
            .collect();
        assert!(
            drops[0].starts_with("drops: reason29 30  reason28 29  "),
            "{d:#?}"
        );
        assert!(drops[1].starts_with("       reason21 22  "), "{d:#?}");
        assert!(drops[2].ends_with("reason06 7  (+6 more)"), "{d:#?}");
        assert_eq!(d.iter().filter(|l| l.starts_with("service ")).count(), 8);
        assert_eq!(d.last().unwrap(), "(+2 more services)");
        assert_eq!(d.len(), 1 + 1 + 3 + 8 + 1, "{d:#?}");
    }

    #[test]
    fn a_record_without_the_dual_stack_fields_reads_as_ipv4_only() {
        // What an instance brought up before dual-stack overlays wrote.
        let text = r#"{"instance":"tb","nodes":[],"networks":[{"name":"appnet","k":1,"next_host":101}],
            "services":[],"tasks":[{"name":"web.1","service":"web","slot":1,"node":"n1",
            "ns":"meshd-tb-web.1","veth":"tk0","vlan":2,"addrs":[["appnet","10.0.1.100"]],"pid":7}],
            "next_veth":1}"#;
        let rec: Record = serde_json::from_str(text).unwrap();
        assert!(!rec.ipv6_overlay);
        assert!(!rec.networks[0].ipv6);
        assert!(rec.tasks[0].addrs6.is_empty());
        assert_eq!(rec.tasks[0].addr6_on("appnet"), None);
        // And one with them keeps them.
        let rec = Record {
            ipv6_overlay: true,
            ..rec
        };
        let back: Record = serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert!(back.ipv6_overlay);
    }
}
