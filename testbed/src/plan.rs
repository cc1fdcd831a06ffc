//! Names and addresses of a testbed instance, in one place.
//!
//! Everything an instance makes is named `meshd-<instance>-...`, so two instances (the demo and
//! a test run) never touch each other's namespaces, and `testbed down` finds all of an
//! instance's leftovers by prefix even after a crash.
//!
//! ```text
//!   meshd-tb-sw       the underlay switch: bridge br0, one port per node, one for the client
//!   meshd-tb-client   an outside client, 192.168.100.100/24 and fd00:100::100/64 (a normal
//!                     host: the kernel has the IPs)
//!   meshd-tb-n1       node n1: uplink veth up0 and tasks bridge br-tasks, no IP on either,
//!                     meshd --node n1 --addr 192.168.100.11 --addr6 fd00:100::11 runs here
//!   meshd-tb-web.1    task web.1: veth eth0 on n1's br-tasks (its port there isolated and on the
//!                     task's own VLAN), an address on each of its networks
//! ```
//!
//! Overlay networks: ingress is 10.0.0.0/24, network number k (1, 2, ... in the order the
//! testbed creates them) 10.0.k.0/24. With dual-stack overlays ([`Plan::ipv6_overlay`], `up
//! --ipv6-overlay`) every network but ingress also has the IPv6 prefix fd00:10:<k>::/64
//! ([`subnet6`]; k written in decimal, so 10.0.12.0/24 goes with fd00:10:12::/64), and each
//! overlay address its twin there ([`twin`]: the prefix's first 96 bits, then the IPv4
//! address): task 10.0.1.100 is fd00:10:1::a00:164 on its eth0, with a /64.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The most nodes an instance has (node i is 192.168.100.(10+i), endpoint 10.0.0.(1+i)).
pub const MAX_NODES: usize = 50;
/// The outside client's address on the underlay.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 100);
/// The underlay prefix length.
pub const UNDERLAY_PREFIX: u8 = 24;
/// The outside client's IPv6 address on the underlay (a unique local address).
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x100);
/// The underlay's IPv6 prefix length.
pub const UNDERLAY6_PREFIX: u8 = 64;
/// The prefix length of a dual-stack network's IPv6 prefix ([`subnet6`]), and of the twin
/// each task has on its eth0: the whole /64 is on-link (meshd answers Neighbor Discovery for
/// every twin of the network).
pub const OVERLAY6_PREFIX: u8 = 64;
/// The ingress network, as Swarm makes it.
pub const INGRESS: &str = "ingress";
/// Task addresses on every network start here (below: gateway, node endpoints, VIPs).
pub const FIRST_TASK_HOST: u8 = 100;
/// The interface names inside a node's namespace.
pub const UPLINK_DEV: &str = "up0";
pub const TASKS_DEV: &str = "br-tasks";
/// The MTU tasks get: the underlay veths' 1500 less the 50 bytes of VXLAN, as Swarm gives every
/// container on an overlay network (`com.docker.network.driver.mtu`). A task at 1500 works too
/// (meshd clamps the TCP MSS and answers too-big packets with ICMP "fragmentation needed"), but
/// then its large UDP datagrams need fragmenting; `testbed up --task-mtu 1500` tries that.
/// Over an IPv6 underlay ([`Plan::underlay6`]) VXLAN takes 20 bytes more: 1430.
pub const TASK_MTU: u16 = 1450;
/// The switch's bridge.
pub const SWITCH_DEV: &str = "br0";
/// The management bridge (cluster mode), in the etcd namespace.
pub const MGMT_DEV: &str = "mgmt";
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// The lease of a testbed node: Down 4 s after its meshd stops answering etcd.
pub const CLUSTER_LEASE_SECS: u64 = 4;

/// The address of etcd member `k` (1-based) on the management network.
pub fn etcd_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, u8::try_from(k).unwrap_or(1))
}

/// Node `i`'s kernel-held address on the management network.
pub fn mgmt_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, u8::try_from(10 + i).unwrap_or(255))
}

/// The naming plan of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub instance: String,
    /// How the nodes' meshd reach their interfaces (`up --io`); kept in the instance's record.
    pub io: NodeIo,
    /// VXLAN over the underlay's IPv6 (`up --underlay6`): every node's VTEP is its IPv6 address
    /// ([`node_addr6`]), given to its meshd (`--vtep`) and to its peers (`node add --vtep`);
    /// kept in the instance's record.
    pub underlay6: bool,
    /// Dual-stack overlays (`up --ipv6-overlay`): every network the testbed creates (but
    /// ingress, and one a run asks to keep IPv4 only) gets the IPv6 prefix [`subnet6`]
    /// (`meshctl network create --ipv6 --subnet`), and each task on it its [`twin`] with a /64
    /// on eth0; kept in the instance's record.
    pub ipv6_overlay: bool,
}

/// How a node's meshd reaches its two interfaces.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeIo {
    /// meshd's AF_PACKET rings (its default).
    #[default]
    Afpacket,
    /// DPDK (`meshd --io dpdk`, a meshd built with --features dpdk): a `net_af_packet` virtual
    /// device on each interface, EAL without hugepages.
    Dpdk,
}

/// EAL's arguments for a testbed node: no hugepages, no PCI scan, 128 MiB (the mbuf pool
/// takes about 20).
pub const DPDK_EAL_ARGS: &str = "--no-huge -m 128 --no-pci";

impl Plan {
    /// A plan for `instance`: 1 to 10 lowercase letters and digits, starting with a letter.
    pub fn new(instance: &str) -> Result<Self> {
        let ok = !instance.is_empty()
            && instance.len() <= 10
            && instance.starts_with(|c: char| c.is_ascii_lowercase())
            && instance
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(Error::msg(format!(
                "instance {instance:?}: use 1 to 10 lowercase letters and digits, starting with a letter (like tb or demo2)"
            )));
        }
        Ok(Plan {
            instance: instance.to_string(),
            io: NodeIo::default(),
            underlay6: false,
            ipv6_overlay: false,
        })
    }

    /// Every namespace of the instance starts with this.
    pub fn prefix(&self) -> String {
        format!("meshd-{}-", self.instance)
    }
    /// The namespace of the instance's etcd (cluster mode).
    pub fn etcd_ns(&self) -> String {
        format!("{}etcd", self.prefix())
    }
    pub fn switch_ns(&self) -> String {
        format!("{}sw", self.prefix())
    }
    pub fn client_ns(&self) -> String {
        format!("{}client", self.prefix())
    }
    pub fn node_ns(&self, i: usize) -> String {
        format!("{}{}", self.prefix(), node_name(i))
    }
    pub fn task_ns(&self, task: &str) -> String {
        format!("{}{task}", self.prefix())
    }

    /// Sockets, state files, logs and pid files of the instance.
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/meshd-{}", self.instance))
    }
    pub fn socket(&self, i: usize) -> PathBuf {
        self.run_dir().join(format!("{}.sock", node_name(i)))
    }
    pub fn state_file(&self, i: usize) -> PathBuf {
        self.run_dir().join(format!("{}.json", node_name(i)))
    }
    /// Where node `i`'s meshd keeps its flows across restarts (`--flow-state`).
    pub fn flow_file(&self, i: usize) -> PathBuf {
        self.run_dir().join(format!("{}.flows", node_name(i)))
    }
    pub fn node_log(&self, i: usize) -> PathBuf {
        self.run_dir().join(format!("{}.log", node_name(i)))
    }
    pub fn node_pidfile(&self, i: usize) -> PathBuf {
        self.run_dir().join(format!("{}.pid", node_name(i)))
    }
    pub fn task_log(&self, task: &str) -> PathBuf {
        self.run_dir().join(format!("{task}.log"))
    }
    pub fn task_pidfile(&self, task: &str) -> PathBuf {
        self.run_dir().join(format!("{task}.pid"))
    }
    pub fn task_ready(&self, task: &str) -> PathBuf {
        self.run_dir().join(format!("{task}.ready"))
    }
    /// The testbed's own record of what it made.
    pub fn bed_file(&self) -> PathBuf {
        self.run_dir().join("testbed.json")
    }
    /// `ip netns exec` bind-mounts files from here over /etc (used for /etc/hosts).
    pub fn etc_netns(&self, ns: &str) -> PathBuf {
        PathBuf::from("/etc/netns").join(ns)
    }
}

/// `n1`, `n2`, ...
pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// The index of node `n3` (3), if the name is one of ours.
pub fn node_index(name: &str) -> Option<usize> {
    let i: usize = name.strip_prefix('n')?.parse().ok()?;
    (1..=MAX_NODES).contains(&i).then_some(i)
}

/// Node i's underlay address, where its published ports answer: 192.168.100.(10+i).
// Casts: a node index is below MAX_NODES (50).
#[allow(clippy::cast_possible_truncation)]
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, 10 + i as u8)
}

/// Node `i`'s IPv6 address on the underlay (1-based): `fd00:100::1<i>`, written as its IPv4
/// address ends (n1 is fd00:100::11).
pub fn node_addr6(i: usize) -> Ipv6Addr {
    let digits = u16::from_str_radix(&(10 + i).to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, digits)
}

/// The subnet of network number `k` (the ingress network is 0): 10.0.k.0/24.
pub fn subnet(k: u8) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 0, k, 0), 24)
}

/// The IPv6 prefix of dual-stack network `k` (see [`Plan::ipv6_overlay`]): fd00:10:<k>::/64,
/// k written in decimal as network k's IPv4 subnet 10.0.k.0/24 has it (network 12 is
/// fd00:10:12::/64).
pub fn subnet6(k: u8) -> (Ipv6Addr, u8) {
    let digits = u16::from_str_radix(&k.to_string(), 16).unwrap_or(0);
    (
        Ipv6Addr::new(0xfd00, 0x10, digits, 0, 0, 0, 0, 0),
        OVERLAY6_PREFIX,
    )
}

/// The IPv6 twin of overlay address `v4` of dual-stack network `k`: [`subnet6`]'s first 96
/// bits, then `v4` (meshd's `Ipv6Net::embed`). Task 10.0.1.3 is fd00:10:1::a00:103.
pub fn twin(k: u8, v4: Ipv4Addr) -> Ipv6Addr {
    let (prefix, _) = subnet6(k);
    Ipv6Addr::from((u128::from(prefix) & !0xffff_ffff) | u128::from(u32::from(v4)))
}

/// The gateway (and resolver) of network `k`: 10.0.k.1.
pub fn gateway(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, k, 1)
}

/// Node i's endpoint on the ingress network, its masquerade source: 10.0.0.(1+i).
// Casts: a node index is below MAX_NODES (50).
#[allow(clippy::cast_possible_truncation)]
pub fn ingress_endpoint(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 1 + i as u8)
}

/// Host number `h` of network `k`.
pub fn host(k: u8, h: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, k, h)
}

/// The MAC of node i's tasks bridge. A Linux bridge without a set address takes the lowest MAC
/// of its ports and changes it as tasks come and go; meshd reads the address once at start, so
/// the testbed pins it.
pub fn tasks_bridge_mac(i: usize) -> String {
    format!("02:6d:73:00:{:02x}:01", i)
}

/// The MAC of node i's uplink (fixed only so status output is stable).
pub fn uplink_mac(i: usize) -> String {
    format!("02:6d:73:00:{:02x}:00", i)
}

/// A service name: lowercase letters, digits and '-', starting with a letter, at most 20.
pub fn check_service_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "service name {name:?}: use up to 20 lowercase letters, digits and '-', starting with a letter (like web)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_instance() {
        let p = Plan::new("tb").unwrap();
        assert_eq!(p.node_ns(2), "meshd-tb-n2");
        assert_eq!(p.task_ns("web.1"), "meshd-tb-web.1");
        assert_eq!(p.switch_ns(), "meshd-tb-sw");
        assert_eq!(p.socket(1), PathBuf::from("/run/meshd-tb/n1.sock"));
        // One instance's prefix is never the prefix of another's names.
        assert!(!Plan::new("tb2")
            .unwrap()
            .node_ns(1)
            .starts_with(&p.prefix()));
        assert!(Plan::new("Tb").is_err());
        assert!(Plan::new("").is_err());
        assert!(Plan::new("a-b").is_err());
    }

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(node_addr(1), Ipv4Addr::new(192, 168, 100, 11));
        assert_eq!(ingress_endpoint(3), Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(gateway(1), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(node_index("n3"), Some(3));
        assert_eq!(node_index("n0"), None);
        assert_eq!(node_index("x3"), None);
        assert_eq!(tasks_bridge_mac(10), "02:6d:73:00:0a:01");
        assert!(check_service_name("web").is_ok());
        assert!(check_service_name("web.1").is_err());
    }

    #[test]
    fn dual_stack_networks_have_a_prefix_and_twins_as_meshd_embeds_them() {
        assert!(!Plan::new("tb").unwrap().ipv6_overlay, "off by default");
        let p = |k: u8| {
            let (a, len) = subnet6(k);
            format!("{a}/{len}")
        };
        assert_eq!(p(1), "fd00:10:1::/64");
        assert_eq!(p(12), "fd00:10:12::/64");
        assert_eq!(p(250), "fd00:10:250::/64");
        assert_eq!(
            twin(1, Ipv4Addr::new(10, 0, 1, 3)),
            "fd00:10:1::a00:103".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            twin(2, host(2, FIRST_TASK_HOST)),
            "fd00:10:2::a00:264".parse::<Ipv6Addr>().unwrap()
        );
        // meshd's own rule gives the same twin of every address of the network.
        for k in [1u8, 7, 12, 250] {
            let net: ctl::model::Ipv6Net = p(k).parse().unwrap();
            for v4 in [
                gateway(k),
                host(k, 2),
                host(k, FIRST_TASK_HOST),
                host(k, 254),
            ] {
                assert_eq!(twin(k, v4), net.embed(v4), "network {k}, {v4}");
                assert_eq!(net.extract(twin(k, v4)), Some(v4));
            }
        }
    }
}
