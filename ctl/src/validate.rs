//! Whole-state validation: everything that must hold before a [`State`] becomes a service table.
//!
//! The daemon runs this on every change; a state that fails it is refused and the previous one
//! stays in force. Messages name the object and say what to change.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::model::*;

/// Why a state cannot be used. The message is for the operator; [`ValidationError::code`]
/// classifies it for the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The state breaks a rule (the message says which and what to change).
    #[error("{0}")]
    Invalid(String),
    /// A published port is already taken by another service.
    #[error("published port {published}/{protocol} is already in use by service \"{service}\"; pick another published port")]
    PortInUse {
        published: u16,
        protocol: Protocol,
        service: String,
    },
}

impl ValidationError {
    /// The protocol's error code: a taken port is a conflict, anything else invalid.
    pub fn code(&self) -> crate::proto::ErrorCode {
        match self {
            ValidationError::Invalid(_) => crate::proto::ErrorCode::Invalid,
            ValidationError::PortInUse { .. } => crate::proto::ErrorCode::Conflict,
        }
    }
}

macro_rules! bail {
    ($($arg:tt)*) => { return Err(ValidationError::Invalid(format!($($arg)*))) };
}

/// What holds an overlay address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Gateway(String),
    Endpoint(String),
    Vip(String),
    Task(String),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Gateway(net) => write!(f, "the gateway of \"{net}\""),
            Owner::Endpoint(node) => write!(f, "the endpoint of node \"{node}\""),
            Owner::Vip(svc) => write!(f, "the VIP of service \"{svc}\""),
            Owner::Task(task) => write!(f, "task \"{task}\""),
        }
    }
}

/// What a valid state's objects hold that no other object may: overlay addresses, published
/// ports, task names, VLANs on a node, service names. Made by [`Claims::of`] (which checks a
/// whole state); then kept up to date a service at a time by [`Claims::replace`], which checks
/// only that service against the rest, so a change to one service of many costs that service.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    addrs: HashMap<(u32, Ipv4Addr), Owner>,
    ports: HashMap<(Protocol, u16), String>,
    tasks: HashSet<String>,
    vlans: HashMap<(String, u16), String>,
    services: HashSet<String>,
}

impl Claims {
    fn claim(
        &mut self,
        vni: u32,
        net: &str,
        addr: Ipv4Addr,
        who: Owner,
    ) -> Result<(), ValidationError> {
        if let Some(prev) = self.addrs.get(&(vni, addr)) {
            bail!("address {addr} on network \"{net}\" is used twice: by {prev} and by {who}");
        }
        self.addrs.insert((vni, addr), who);
        Ok(())
    }

    /// Checks the whole of `state` (as [`validate`]) and returns what its objects hold.
    pub fn of(state: &State) -> Result<Claims, ValidationError> {
        let mut claims = Claims::default();
        let scope = Scope::check(state, &mut claims)?;
        for svc in &state.services {
            claims.add_service(&scope, state, svc)?;
        }
        Ok(claims)
    }

    /// Services change: `old` (each as it was when claimed) are given back, then `new` (each
    /// as it is in `state`, whose nodes and networks must be those these claims were made
    /// with) checked against everything else and claimed, so one service may take what another
    /// gave up in the same change. On an error the claims are spoiled (partly claimed): make
    /// them again with [`Claims::of`] from the state still in force.
    pub fn replace<'a>(
        &mut self,
        state: &State,
        old: impl IntoIterator<Item = &'a Service>,
        new: impl IntoIterator<Item = &'a Service>,
    ) -> Result<(), ValidationError> {
        for s in old {
            self.release(state, s);
        }
        let scope = Scope::of(state);
        for s in new {
            self.add_service(&scope, state, s)?;
        }
        Ok(())
    }

    /// Gives back what service `svc` (valid when claimed) holds.
    fn release(&mut self, state: &State, svc: &Service) {
        self.services.remove(&svc.name);
        let vni = |net: &str| state.networks.iter().find(|n| n.name == net).map(|n| n.vni);
        for sn in &svc.networks {
            if let (Some(vip), Some(v)) = (sn.vip, vni(&sn.network)) {
                if self.addrs.get(&(v, vip)) == Some(&Owner::Vip(svc.name.clone())) {
                    self.addrs.remove(&(v, vip));
                }
            }
        }
        for p in &svc.ports {
            if self.ports.get(&(p.protocol, p.published)) == Some(&svc.name) {
                self.ports.remove(&(p.protocol, p.published));
            }
        }
        for t in &svc.tasks {
            self.tasks.remove(&t.name);
            if let Some(v) = t.vlan {
                let k = (t.node.clone(), v);
                if self.vlans.get(&k) == Some(&t.name) {
                    self.vlans.remove(&k);
                }
            }
            for a in &t.addresses {
                if let Some(v) = vni(&a.network) {
                    if matches!(self.addrs.get(&(v, a.addr)), Some(Owner::Task(n)) if *n == t.name)
                    {
                        self.addrs.remove(&(v, a.addr));
                    }
                }
            }
        }
    }
}

/// The nodes and networks of a state, by name: what a service is checked against.
struct Scope<'a> {
    node_names: HashSet<&'a str>,
    nets: HashMap<&'a str, &'a Network>,
    ingress: Option<&'a Network>,
}

/// Checks every network's MTU against a node's uplink MTU: a VXLAN-encapsulated packet of the
/// network's MTU must fit the uplink ([`VXLAN_OVERHEAD`] bytes more). The daemon runs this with
/// the MTU it read from its uplink interface; `meshctl` cannot, as each node has its own.
pub fn check_mtu(state: &State, uplink_mtu: u16) -> Result<(), ValidationError> {
    for net in &state.networks {
        let overhead = net.overhead(state.underlay6());
        let most = uplink_mtu.saturating_sub(overhead);
        let what = if net.encryption.is_some() {
            "VXLAN and its seal add"
        } else {
            "VXLAN adds"
        };
        if let Some(mtu) = net.mtu {
            if mtu > most {
                bail!(
                    "network \"{}\": MTU {mtu} does not fit this node's uplink (MTU {uplink_mtu}): \
                     {what} {overhead} bytes, so the largest MTU of this network here is {most}; \
                     give the network a smaller --opt mtu, or raise the uplink's MTU",
                    net.name
                );
            }
        }
    }
    Ok(())
}

/// An encrypted network's keys: one to [`MAX_NETWORK_KEYS`], each with its value and its own
/// id, the primary among them.
fn check_keys(net: &str, enc: &Encryption) -> Result<(), ValidationError> {
    if enc.keys.is_empty() || enc.keys.len() > MAX_NETWORK_KEYS {
        bail!(
            "network \"{net}\": an encrypted network has 1 to {MAX_NETWORK_KEYS} keys, not {}",
            enc.keys.len()
        );
    }
    let mut ids = BTreeSet::new();
    for k in &enc.keys {
        if k.key.is_none() {
            bail!("network \"{net}\": key {} has no value", k.id);
        }
        if !ids.insert(k.id) {
            bail!("network \"{net}\": key id {} is used twice", k.id);
        }
    }
    if !ids.contains(&enc.primary) {
        bail!(
            "network \"{net}\": the primary key {} is not one of its keys",
            enc.primary
        );
    }
    Ok(())
}

/// A node's IPv6 address must be one a client can reach: unicast, not loopback, not
/// link-local (a client would need the link's zone), not an IPv4-mapped address.
fn check_addr6(node: &str, what: &str, a: std::net::Ipv6Addr) -> Result<(), ValidationError> {
    let why = if a.is_unspecified() {
        "is the unspecified address"
    } else if a.is_loopback() {
        "is the loopback address"
    } else if a.is_multicast() {
        "is a multicast address"
    } else if a.segments()[0] & 0xffc0 == 0xfe80 {
        "is link-local (clients would need the link's zone); give a global or ULA (fd00::/8) one"
    } else if a.to_ipv4_mapped().is_some() {
        "is an IPv4-mapped address; give the IPv4 one as --addr"
    } else {
        return Ok(());
    };
    bail!("node \"{node}\": {what} {a} {why}")
}

/// The IPv6 ranges an overlay's prefix may not touch, and what they are: its addresses must be
/// unicast ones a task can send from and be sent to, meaning the same on every host. (A prefix
/// is at most /96, so one that holds `::` or `::1` holds all of `::/96`.)
const NOT_OVERLAY6: &[(Ipv6Net, &str)] = &[
    (
        Ipv6Net {
            addr: Ipv6Addr::UNSPECIFIED,
            prefix: 96,
        },
        "::/96 (the unspecified address ::, the loopback address ::1 and the IPv4-compatible \
         addresses RFC 4291 deprecates)",
    ),
    (
        Ipv6Net {
            addr: Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
            prefix: 96,
        },
        "the IPv4-mapped addresses ::ffff:0:0/96 (every host reads them as IPv4)",
    ),
    (
        Ipv6Net {
            addr: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
            prefix: 10,
        },
        "the link-local addresses fe80::/10 (they need the link's zone)",
    ),
    (
        Ipv6Net {
            addr: Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            prefix: 8,
        },
        "the multicast addresses ff00::/8",
    ),
];

/// A dual-stack network's IPv6 prefix must hold unicast addresses only: none of
/// [`NOT_OVERLAY6`].
fn check_subnet6(net: &str, p: Ipv6Net) -> Result<(), ValidationError> {
    if let Some((_, what)) = NOT_OVERLAY6.iter().find(|(r, _)| p.overlaps(r)) {
        bail!(
            "network \"{net}\": IPv6 subnet {p} is not unicast: it overlaps {what}; give a \
             global or unique local (fd00::/8) prefix, as in --ipv6 --subnet fd00:5::/64"
        );
    }
    Ok(())
}

fn check_name(kind: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("{kind} name {name:?} is not valid: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit");
    }
    Ok(())
}

/// The limits of a health check: what `--health-*` accepts.
pub const HEALTH_INTERVAL_MS: std::ops::RangeInclusive<u32> = 100..=3_600_000;
pub const HEALTH_RETRIES: std::ops::RangeInclusive<u32> = 1..=100;
/// The longest path an HTTP check may ask for.
pub const HEALTH_PATH_MAX: usize = 1024;

fn check_health(svc: &str, h: &HealthCheck) -> Result<(), ValidationError> {
    if !HEALTH_INTERVAL_MS.contains(&h.interval_ms) {
        bail!(
            "service \"{svc}\": health check interval {} ms is out of range (100 ms to 1 h)",
            h.interval_ms
        );
    }
    if h.timeout_ms < 10 || h.timeout_ms > h.interval_ms {
        bail!(
            "service \"{svc}\": health check timeout {} ms must be at least 10 ms and at most the interval ({} ms), so one check ends before the next starts",
            h.timeout_ms, h.interval_ms
        );
    }
    if !HEALTH_RETRIES.contains(&h.retries) {
        bail!(
            "service \"{svc}\": health check retries {} is out of range (1 to 100)",
            h.retries
        );
    }
    if h.port == Some(0) {
        bail!("service \"{svc}\": health check port 0 is not valid");
    }
    if h.test == HealthTest::Http {
        let p = &h.path;
        if !p.starts_with('/')
            || p.len() > HEALTH_PATH_MAX
            || !p.bytes().all(|b| b.is_ascii_graphic())
        {
            bail!(
                "service \"{svc}\": health check path {p:?} is not valid: it starts with '/' and has at most {HEALTH_PATH_MAX} printable characters, no spaces"
            );
        }
        if let Some(st) = h.status {
            if !(100..=599).contains(&st) {
                bail!("service \"{svc}\": expected HTTP status {st} is not a status (100 to 599)");
            }
        }
    }
    Ok(())
}

/// Checks a whole state.
pub fn validate(state: &State) -> Result<(), ValidationError> {
    Claims::of(state).map(|_| ())
}

impl<'a> Scope<'a> {
    /// The scope of `state`, whose nodes and networks were checked already.
    fn of(state: &'a State) -> Scope<'a> {
        Scope {
            node_names: state.nodes.iter().map(|n| n.name.as_str()).collect(),
            nets: state
                .networks
                .iter()
                .map(|n| (n.name.as_str(), n))
                .collect(),
            ingress: state.networks.iter().find(|n| n.ingress),
        }
    }

    /// Checks `state`'s nodes and networks, claiming the networks' addresses.
    fn check(state: &'a State, claims: &mut Claims) -> Result<Scope<'a>, ValidationError> {
        // Nodes.
        let mut node_names = BTreeSet::new();
        let mut node_addrs = BTreeMap::new();
        let mut node_addrs6 = BTreeMap::new();
        for n in &state.nodes {
            check_name("node", &n.name)?;
            if !node_names.insert(n.name.as_str()) {
                bail!("node \"{}\" is defined twice", n.name);
            }
            if let Some(other) = node_addrs.insert(n.addr, n.name.as_str()) {
                bail!(
                    "nodes \"{other}\" and \"{}\" have the same address {}",
                    n.name,
                    n.addr
                );
            }
            if let Some(a6) = n.addr6 {
                check_addr6(&n.name, "IPv6 address", a6)?;
                if let Some(other) = node_addrs6.insert(a6, n.name.as_str()) {
                    bail!(
                        "nodes \"{other}\" and \"{}\" have the same IPv6 address {a6}",
                        n.name
                    );
                }
            }
            if n.vtep_port == 0 {
                bail!(
                    "node \"{}\": VTEP port 0 is not valid (VXLAN uses {VXLAN_PORT})",
                    n.name
                );
            }
        }
        let mut vteps = BTreeMap::new();
        let mut keys = BTreeMap::new();
        let first6 = state.nodes.iter().find(|n| n.vtep6().is_some());
        for n in &state.nodes {
            if let Some(other) = vteps.insert((n.vtep_addr(), n.vtep_port), n.name.as_str()) {
                bail!(
                    "nodes \"{other}\" and \"{}\" have the same VTEP {}",
                    n.name,
                    std::net::SocketAddr::new(n.vtep_addr(), n.vtep_port)
                );
            }
            if let Some(v6) = n.vtep6() {
                check_addr6(&n.name, "IPv6 VTEP", v6)?;
                if let Some(other) = keys.insert(n.vtep_key(), n.name.as_str()) {
                    bail!(
                        "nodes \"{other}\" and \"{}\": their IPv6 VTEPs share meshd's 32-bit \
                         name for them ({}); give one of them another address",
                        n.name,
                        n.vtep_key()
                    );
                }
            } else if let Some(v6) = first6 {
                bail!(
                    "node \"{}\" has an IPv4 VTEP ({}) but node \"{}\" an IPv6 one ({}): the \
                     overlay runs over one underlay family; give every node an IPv6 VTEP \
                     (`--vtep IPV6`) or none",
                    n.name,
                    n.vtep_addr(),
                    v6.name,
                    v6.vtep_addr()
                );
            }
        }

        // Networks.
        let mut nets: BTreeMap<&str, &Network> = BTreeMap::new();
        let mut vnis = BTreeMap::new();
        let mut ingress: Option<&Network> = None;
        for net in &state.networks {
            check_name("network", &net.name)?;
            if nets.insert(net.name.as_str(), net).is_some() {
                bail!("network \"{}\" is defined twice", net.name);
            }
            if net.vni == 0 || net.vni >= 1 << 24 {
                bail!(
                    "network \"{}\": VNI {} is out of range (1 to 16777215)",
                    net.name,
                    net.vni
                );
            }
            if let Some(other) = vnis.insert(net.vni, net.name.as_str()) {
                bail!(
                    "networks \"{other}\" and \"{}\" have the same VNI {}",
                    net.name,
                    net.vni
                );
            }
            if net.subnet.prefix > 30 {
                bail!(
                    "network \"{}\": subnet {} is too small (at most /30)",
                    net.name,
                    net.subnet
                );
            }
            for other in &state.networks {
                if other.name != net.name && other.subnet.overlaps(&net.subnet) {
                    bail!(
                        "networks \"{}\" ({}) and \"{}\" ({}) overlap; give each its own subnet",
                        other.name,
                        other.subnet,
                        net.name,
                        net.subnet
                    );
                }
            }
            if let Some(p) = net.subnet6 {
                check_subnet6(&net.name, p)?;
                if net.ingress {
                    bail!(
                        "network \"{}\": the ingress network cannot be dual-stack (IPv6 subnet \
                         {p}): published ports reach the ingress network as IPv4; IPv6 clients \
                         are translated at the node (meshd --addr6). Create it without --ipv6",
                        net.name
                    );
                }
                for other in &state.networks {
                    if let Some(q) = other.subnet6 {
                        if other.name != net.name && q.overlaps(&p) {
                            bail!(
                                "networks \"{}\" ({q}) and \"{}\" ({p}) have overlapping IPv6 \
                                 subnets; give each its own",
                                other.name,
                                net.name
                            );
                        }
                    }
                }
                // An overlay prefix that holds a node's underlay address would make that
                // address a task's as well.
                for n in &state.nodes {
                    let underlay = [("IPv6 address", n.addr6), ("IPv6 VTEP", n.vtep6())];
                    for (what, a) in underlay {
                        if let Some(a) = a.filter(|a| p.contains(*a)) {
                            bail!(
                                "network \"{}\": IPv6 subnet {p} contains node \"{}\"'s {what} \
                                 {a}; overlay and underlay need prefixes of their own: give the \
                                 network another one",
                                net.name,
                                n.name
                            );
                        }
                    }
                }
            }
            if let Some(mtu) = net.mtu {
                if !(MIN_NETWORK_MTU..=MAX_NETWORK_MTU).contains(&mtu) {
                    bail!(
                        "network \"{}\": MTU {mtu} is out of range ({MIN_NETWORK_MTU} to {MAX_NETWORK_MTU})",
                        net.name
                    );
                }
            }
            if let Some(enc) = &net.encryption {
                check_keys(&net.name, enc)?;
            }
            if !net.subnet.is_host(net.gateway) {
                bail!(
                    "network \"{}\": gateway {} is not a host address of {}",
                    net.name,
                    net.gateway,
                    net.subnet
                );
            }
            claims.claim(
                net.vni,
                &net.name,
                net.gateway,
                Owner::Gateway(net.name.clone()),
            )?;
            if net.ingress {
                if let Some(first) = ingress {
                    bail!("networks \"{}\" and \"{}\" are both marked ingress; there is one ingress network", first.name, net.name);
                }
                ingress = Some(net);
            }
            for (node, addr) in &net.endpoints {
                if !node_names.contains(node.as_str()) {
                    bail!(
                        "network \"{}\" has an endpoint for unknown node \"{node}\"",
                        net.name
                    );
                }
                if !net.subnet.is_host(*addr) {
                    bail!(
                        "network \"{}\": endpoint {addr} of node \"{node}\" is outside {}",
                        net.name,
                        net.subnet
                    );
                }
                claims.claim(net.vni, &net.name, *addr, Owner::Endpoint(node.clone()))?;
            }
        }
        Ok(Scope {
            node_names: node_names.into_iter().collect(),
            nets: nets.into_iter().collect(),
            ingress,
        })
    }
}

impl Claims {
    /// Checks service `svc` of `state` against the rest and claims what it holds.
    fn add_service(
        &mut self,
        scope: &Scope,
        state: &State,
        svc: &Service,
    ) -> Result<(), ValidationError> {
        check_name("service", &svc.name)?;
        if !self.services.insert(svc.name.clone()) {
            bail!("service \"{}\" is defined twice", svc.name);
        }
        let mut attached = BTreeSet::new();
        for sn in &svc.networks {
            let Some(net) = scope.nets.get(sn.network.as_str()) else {
                bail!(
                    "service \"{}\" is attached to unknown network \"{}\"; create it first",
                    svc.name,
                    sn.network
                );
            };
            if !attached.insert(sn.network.as_str()) {
                bail!(
                    "service \"{}\" is attached to network \"{}\" twice",
                    svc.name,
                    sn.network
                );
            }
            match (svc.endpoint_mode, sn.vip) {
                (EndpointMode::Dnsrr, Some(vip)) => {
                    bail!(
                        "service \"{}\" is in endpoint mode dnsrr and cannot have the VIP {vip}",
                        svc.name
                    )
                }
                (EndpointMode::Vip, None) if !net.ingress => {
                    bail!(
                        "service \"{}\" needs a VIP on network \"{}\" (endpoint mode vip)",
                        svc.name,
                        sn.network
                    )
                }
                (_, Some(vip)) => {
                    if !net.subnet.is_host(vip) {
                        bail!(
                            "service \"{}\": VIP {vip} is outside the subnet {} of network \"{}\"",
                            svc.name,
                            net.subnet,
                            net.name
                        );
                    }
                    self.claim(net.vni, &net.name, vip, Owner::Vip(svc.name.clone()))?;
                }
                _ => {}
            }
        }
        let o = &svc.outlier;
        if !o.is_off()
            && (o.consecutive > 1000 || o.eject_ms < 100 || !(1..=100).contains(&o.max_percent))
        {
            bail!(
                "service \"{}\": outlier settings consecutive={} eject_ms={} max_percent={} are out of range (1-1000 failures, at least 100 ms, 1-100%)",
                svc.name,
                o.consecutive,
                o.eject_ms,
                o.max_percent
            );
        }
        if let Some(a) = svc.affinity {
            let t = a.timeout_s();
            if !(1..=crate::model::Affinity::MAX_TIMEOUT_S).contains(&t) {
                bail!(
                    "service \"{}\": affinity timeout {t}s is out of range (1s to 24h, as in --affinity-timeout 10m)",
                    svc.name
                );
            }
        }
        let has_ingress_ports = svc.ports.iter().any(|p| p.mode == PublishMode::Ingress);
        for p in &svc.ports {
            if p.published == 0 || p.target == 0 {
                bail!(
                    "service \"{}\": port 0 cannot be published or targeted",
                    svc.name
                );
            }
            if p.protocol == Protocol::Udp && p.published == HEALTH_GOSSIP_PORT {
                bail!(
                    "service \"{}\": UDP port {HEALTH_GOSSIP_PORT} is meshd's own (nodes tell each other their tasks' health on it); publish another port",
                    svc.name
                );
            }
            if p.protocol == Protocol::Udp {
                if let Some(n) = state.nodes.iter().find(|n| n.vtep_port == p.published) {
                    bail!(
                        "service \"{}\": UDP port {} is meshd's own (node \"{}\" receives the VXLAN overlay on it); publish another port",
                        svc.name,
                        p.published,
                        n.name
                    );
                }
            }
            if svc.endpoint_mode == EndpointMode::Dnsrr && p.mode == PublishMode::Ingress {
                // Docker's own words for the same refusal.
                bail!(
                    "service \"{}\": port published with ingress mode can't be used with dnsrr mode (publish it with mode=host, or use --endpoint-mode vip)",
                    svc.name
                );
            }
            if let Some(other) = self.ports.get(&(p.protocol, p.published)) {
                return Err(ValidationError::PortInUse {
                    published: p.published,
                    protocol: p.protocol,
                    service: other.clone(),
                });
            }
            self.ports
                .insert((p.protocol, p.published), svc.name.clone());
        }
        if has_ingress_ports {
            let Some(ing) = scope.ingress else {
                bail!("service \"{}\" publishes ports in ingress mode but there is no ingress network; create one with `meshctl network create --ingress`", svc.name);
            };
            for n in &state.nodes {
                if !ing.endpoints.contains_key(&n.name) {
                    bail!(
                        "node \"{}\" has no endpoint address on the ingress network \"{}\"; published ports need one per node",
                        n.name, ing.name
                    );
                }
            }
        }
        let t_timeouts = &svc.timeouts;
        if t_timeouts.tcp_established == 0 || t_timeouts.tcp_transitory == 0 || t_timeouts.udp == 0
        {
            bail!(
                "service \"{}\": idle timeouts must be at least 1 second",
                svc.name
            );
        }
        if t_timeouts.tcp_established > 86_400 * 7
            || t_timeouts.udp > 86_400 * 7
            || t_timeouts.tcp_transitory > 86_400 * 7
        {
            bail!(
                "service \"{}\": idle timeouts are at most 604800 seconds (7 days)",
                svc.name
            );
        }
        if let Some(h) = &svc.health {
            check_health(&svc.name, h)?;
        }
        for t in &svc.tasks {
            check_name("task", &t.name)?;
            if !self.tasks.insert(t.name.clone()) {
                bail!("task \"{}\" is defined twice", t.name);
            }
            if !scope.node_names.contains(t.node.as_str()) {
                bail!(
                    "task \"{}\" is placed on unknown node \"{}\"; add the node first",
                    t.name,
                    t.node
                );
            }
            if let Some(v) = t.vlan {
                if !(1..=4094).contains(&v) {
                    bail!("task \"{}\": VLAN {v} is not a VLAN id (1 to 4094)", t.name);
                }
                if let Some(other) = self.vlans.get(&(t.node.clone(), v)) {
                    bail!(
                        "task \"{}\": VLAN {v} on node \"{}\" is task \"{other}\"'s already; every task on a node needs its own",
                        t.name,
                        t.node
                    );
                }
                self.vlans.insert((t.node.clone(), v), t.name.clone());
            }
            let mut seen = BTreeSet::new();
            for a in &t.addresses {
                let Some(net) = scope.nets.get(a.network.as_str()) else {
                    bail!(
                        "task \"{}\" has an address on unknown network \"{}\"",
                        t.name,
                        a.network
                    );
                };
                if !net.ingress && !attached.contains(a.network.as_str()) {
                    bail!(
                        "task \"{}\" has an address on network \"{}\", which service \"{}\" is not attached to",
                        t.name, a.network, svc.name
                    );
                }
                if !seen.insert(a.network.as_str()) {
                    bail!(
                        "task \"{}\" has two addresses on network \"{}\"",
                        t.name,
                        a.network
                    );
                }
                if !net.subnet.is_host(a.addr) {
                    bail!(
                        "task \"{}\": address {} is outside the subnet {} of network \"{}\"",
                        t.name,
                        a.addr,
                        net.subnet,
                        net.name
                    );
                }
                self.claim(net.vni, &net.name, a.addr, Owner::Task(t.name.clone()))?;
            }
            if has_ingress_ports {
                if let Some(ing) = scope.ingress {
                    if t.addr_on(&ing.name).is_none() {
                        bail!(
                            "task \"{}\" has no address on the ingress network \"{}\"; service \"{}\" publishes ports and needs one",
                            t.name, ing.name, svc.name
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> State {
        let node = |name: &str, last: u8| Node {
            name: name.into(),
            addr: Ipv4Addr::new(192, 168, 1, last),
            vtep: None,
            addr6: None,
            vtep_port: VXLAN_PORT,
            availability: Availability::Active,
        };
        let mut ingress = Network {
            subnet6: None,
            name: "ingress".into(),
            vni: INGRESS_VNI,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            ingress: true,
            endpoints: BTreeMap::new(),
            mtu: None,
            encryption: None,
        };
        ingress
            .endpoints
            .insert("n1".into(), Ipv4Addr::new(10, 0, 0, 2));
        ingress
            .endpoints
            .insert("n2".into(), Ipv4Addr::new(10, 0, 0, 3));
        let app = Network {
            subnet6: None,
            name: "appnet".into(),
            vni: 4097,
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            ingress: false,
            endpoints: BTreeMap::new(),
            mtu: None,
            encryption: None,
        };
        let mut web = Service::new("web");
        web.networks.push(ServiceNetwork {
            network: "appnet".into(),
            vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
        });
        web.ports.push(PublishedPort {
            protocol: Protocol::Tcp,
            published: 8080,
            target: 80,
            mode: PublishMode::Ingress,
        });
        for (i, node) in [(1u8, "n1"), (2, "n2")] {
            web.tasks.push(Task {
                name: format!("web.{i}"),
                node: node.into(),
                addresses: vec![
                    TaskAddress {
                        network: "ingress".into(),
                        addr: Ipv4Addr::new(10, 0, 0, 10 + i),
                    },
                    TaskAddress {
                        network: "appnet".into(),
                        addr: Ipv4Addr::new(10, 0, 1, 10 + i),
                    },
                ],
                state: TaskState::Running,
                weight: 1,
                vlan: None,
            });
        }
        State {
            nodes: vec![node("n1", 11), node("n2", 12)],
            networks: vec![ingress, app],
            services: vec![web],
        }
    }

    fn err(s: &State) -> String {
        validate(s).unwrap_err().to_string()
    }

    #[test]
    fn the_sample_is_valid() {
        validate(&sample()).unwrap();
    }

    #[test]
    fn a_published_port_used_twice_is_refused() {
        let mut s = sample();
        let mut other = Service::new("api");
        other.ports.push(s.services[0].ports[0]);
        s.services.push(other);
        assert!(err(&s).contains("published port 8080/tcp is already in use by service \"web\""));
    }

    #[test]
    fn a_vip_outside_its_subnet_is_refused() {
        let mut s = sample();
        s.services[0].networks[0].vip = Some(Ipv4Addr::new(10, 0, 9, 2));
        assert!(err(&s).contains("VIP 10.0.9.2 is outside the subnet 10.0.1.0/24"));
    }

    #[test]
    fn two_tasks_of_a_node_never_share_a_vlan() {
        let mut s = sample();
        s.services[0].tasks[0].vlan = Some(5);
        s.services[0].tasks[1].vlan = Some(5);
        // On two nodes: fine.
        assert_ne!(s.services[0].tasks[0].node, s.services[0].tasks[1].node);
        validate(&s).unwrap();
        s.services[0].tasks[1].node = s.services[0].tasks[0].node.clone();
        let e = validate(&s).unwrap_err().to_string();
        assert!(e.contains("VLAN 5 on node") && e.contains("already"), "{e}");
        s.services[0].tasks[1].vlan = Some(4095);
        let e = validate(&s).unwrap_err().to_string();
        assert!(e.contains("VLAN 4095 is not a VLAN id"), "{e}");
    }

    #[test]
    fn a_task_on_an_unknown_node_or_network_is_refused() {
        let mut s = sample();
        s.services[0].tasks[0].node = "n9".into();
        assert!(err(&s).contains("unknown node \"n9\""));
        let mut s = sample();
        s.services[0].tasks[0].addresses[1].network = "nonet".into();
        assert!(err(&s).contains("unknown network \"nonet\""));
    }

    #[test]
    fn duplicate_addresses_are_refused() {
        let mut s = sample();
        s.services[0].tasks[1].addresses[1].addr = Ipv4Addr::new(10, 0, 1, 11);
        assert!(err(&s).contains("used twice"));
        let mut s = sample();
        s.services[0].tasks[1].addresses[1].addr = Ipv4Addr::new(10, 0, 1, 2);
        assert!(err(&s).contains("the VIP of service \"web\""));
    }

    #[test]
    fn a_nodes_ipv6_address_must_be_reachable_and_its_own() {
        let mut s = sample();
        s.nodes[0].addr6 = Some("fd00::11".parse().unwrap());
        s.nodes[1].addr6 = Some("fd00::12".parse().unwrap());
        validate(&s).unwrap();
        s.nodes[1].addr6 = s.nodes[0].addr6;
        assert!(
            err(&s).contains("have the same IPv6 address fd00::11"),
            "{}",
            err(&s)
        );
        for (a, why) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
            ("fe80::1", "link-local"),
            ("::ffff:192.168.1.11", "IPv4-mapped"),
        ] {
            s.nodes[1].addr6 = Some(a.parse().unwrap());
            let e = err(&s);
            assert!(
                e.contains(why) && e.contains(&format!("node \"{}\"", s.nodes[1].name)),
                "{a}: {e}"
            );
        }
    }

    #[test]
    fn overlapping_networks_and_bad_vnis_are_refused() {
        let mut s = sample();
        s.networks[1].subnet = "10.0.0.0/16".parse().unwrap();
        assert!(err(&s).contains("overlap"));
        let mut s = sample();
        s.networks[1].vni = INGRESS_VNI;
        assert!(err(&s).contains("same VNI"));
        let mut s = sample();
        s.networks[1].vni = 1 << 24;
        assert!(err(&s).contains("out of range"));
    }

    /// The sample with appnet dual-stack (fd00:1::/64) and the nodes on an IPv6 underlay
    /// (fd00:100::/64).
    fn dual_stack() -> State {
        let mut s = sample();
        s.networks[1].subnet6 = Some("fd00:1::/64".parse().unwrap());
        for (n, last) in s.nodes.iter_mut().zip([11u16, 12]) {
            n.addr6 = Some(std::net::Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, last));
            n.vtep = Some(std::net::Ipv6Addr::new(0xfd00, 0x101, 0, 0, 0, 0, 0, last).into());
        }
        s
    }

    #[test]
    fn a_dual_stack_network_is_valid() {
        let s = dual_stack();
        validate(&s).unwrap();
        // Two dual-stack networks of their own prefixes, one at /96.
        let mut two = s.clone();
        two.networks.push(Network {
            name: "backnet".into(),
            vni: 4098,
            subnet: "10.0.2.0/24".parse().unwrap(),
            subnet6: Some("fd00:2::/96".parse().unwrap()),
            gateway: Ipv4Addr::new(10, 0, 2, 1),
            ..s.networks[1].clone()
        });
        validate(&two).unwrap();
        assert_eq!(
            two.networks[1].addr6(Ipv4Addr::new(10, 0, 1, 11)),
            Some("fd00:1::a00:10b".parse().unwrap())
        );
    }

    #[test]
    fn a_subnet6_that_is_not_unicast_is_refused() {
        for (p, why) in [
            ("ff00::/8", "the multicast addresses ff00::/8"),
            ("ff05:1::/64", "the multicast addresses"),
            ("fe80::/64", "the link-local addresses fe80::/10"),
            ("febf:1::/64", "the link-local addresses"),
            (
                "::/96",
                "::/96 (the unspecified address ::, the loopback address ::1",
            ),
            ("::/0", "::/96 (the unspecified address ::"),
            ("::ffff:0:0/96", "the IPv4-mapped addresses ::ffff:0:0/96"),
        ] {
            let mut s = dual_stack();
            let net: Ipv6Net = p.parse().unwrap();
            s.networks[1].subnet6 = Some(net);
            let e = err(&s);
            // As Rust writes it (::ffff:0.0.0.0/96).
            assert!(
                e.contains(&format!(
                    "network \"appnet\": IPv6 subnet {net} is not unicast: it overlaps {why}"
                )),
                "{p}: {e}"
            );
            assert!(e.contains("--ipv6 --subnet fd00:5::/64"), "{p}: {e}");
        }
    }

    /// Host bits in a subnet are refused where a network is created ([`crate::apply::change`],
    /// meshctl), not here: a state that holds such a network already (made before that rule,
    /// read from a state file or etcd) stays valid, so a meshd still starts from it and a
    /// change to its services is not refused for it.
    #[test]
    fn a_network_with_host_bits_already_in_a_state_stays_valid() {
        let mut s = dual_stack();
        s.networks[1].subnet = "10.0.1.9/24".parse().unwrap();
        s.networks[1].subnet6 = Some("fd00:1::1/64".parse().unwrap());
        assert!(s.networks[1].subnets_without_host_bits().is_err());
        validate(&s).unwrap();
    }

    #[test]
    fn overlapping_subnet6s_are_refused_naming_both() {
        let mut s = dual_stack();
        s.networks.push(Network {
            name: "backnet".into(),
            vni: 4098,
            subnet: "10.0.2.0/24".parse().unwrap(),
            subnet6: Some("fd00:1::/96".parse().unwrap()),
            gateway: Ipv4Addr::new(10, 0, 2, 1),
            ..s.networks[1].clone()
        });
        let e = err(&s);
        assert!(
            e.contains(
                "networks \"backnet\" (fd00:1::/96) and \"appnet\" (fd00:1::/64) have \
                 overlapping IPv6 subnets; give each its own"
            ),
            "{e}"
        );
        // Once apart, fine.
        s.networks[2].subnet6 = Some("fd00:2::/64".parse().unwrap());
        validate(&s).unwrap();
    }

    #[test]
    fn the_ingress_network_is_never_dual_stack() {
        let mut s = dual_stack();
        s.networks[0].subnet6 = Some("fd00:0::/64".parse().unwrap());
        let e = err(&s);
        assert!(
            e.contains("network \"ingress\": the ingress network cannot be dual-stack (IPv6 subnet fd00::/64)"),
            "{e}"
        );
        assert!(
            e.contains("published ports reach the ingress network as IPv4; IPv6 clients are translated at the node (meshd --addr6)"),
            "{e}"
        );
    }

    #[test]
    fn a_subnet6_holding_a_nodes_underlay_address_is_refused_naming_both() {
        let mut s = dual_stack();
        s.networks[1].subnet6 = Some("fd00:100::/64".parse().unwrap());
        let e = err(&s);
        assert!(
            e.contains(
                "network \"appnet\": IPv6 subnet fd00:100::/64 contains node \"n1\"'s IPv6 \
                 address fd00:100::b"
            ),
            "{e}"
        );
        s.networks[1].subnet6 = Some("fd00:101::/64".parse().unwrap());
        let e = err(&s);
        assert!(
            e.contains(
                "network \"appnet\": IPv6 subnet fd00:101::/64 contains node \"n1\"'s IPv6 \
                 VTEP fd00:101::b"
            ),
            "{e}"
        );
        // A node's address in a wider prefix, on the second node only.
        let mut s = dual_stack();
        s.nodes[1].addr6 = Some("fd00:1::a00:10c".parse().unwrap());
        let e = err(&s);
        assert!(
            e.contains("contains node \"n2\"'s IPv6 address fd00:1::a00:10c"),
            "{e}"
        );
    }

    #[test]
    fn a_network_mtu_must_be_in_range_and_fit_the_uplink() {
        let mut s = sample();
        s.networks[1].mtu = Some(575);
        assert!(err(&s).contains("MTU 575 is out of range (576 to 65485)"));
        s.networks[1].mtu = Some(1400);
        validate(&s).unwrap();
        check_mtu(&s, 1500).unwrap();
        check_mtu(&s, 1450).unwrap();
        let e = check_mtu(&s, 1449).unwrap_err().to_string();
        assert!(e.contains("\"appnet\": MTU 1400 does not fit this node's uplink (MTU 1449)"));
        assert!(
            e.contains("VXLAN adds 50 bytes, so the largest MTU of this network here is 1399"),
            "{e}"
        );
        // Unset: the uplink's less 50, always fits.
        s.networks[1].mtu = None;
        check_mtu(&s, 600).unwrap();
        assert_eq!(s.networks[1].effective_mtu(1500, false), 1450);
        assert_eq!(s.networks[1].effective_mtu(9000, false), 8950);
        // Encrypted: the seal's 44 bytes more.
        s.networks[1].encryption = Some(one_key());
        assert_eq!(s.networks[1].effective_mtu(1500, false), 1406);
        s.networks[1].mtu = Some(1400);
        check_mtu(&s, 1494).unwrap();
        let e = check_mtu(&s, 1493).unwrap_err().to_string();
        assert!(
            e.contains(
                "VXLAN and its seal add 94 bytes, so the largest MTU of this network here is 1399"
            ),
            "{e}"
        );
    }

    /// VXLAN over IPv6: every node's VTEP IPv6 (a mix is refused, saying so), each a usable
    /// address, no two sharing meshd's name for them; the overlay's MTU 20 bytes less.
    #[test]
    fn an_ipv6_underlay_is_every_nodes_and_takes_20_bytes_more() {
        let v6 = |s: &str| Some(std::net::IpAddr::V6(s.parse().unwrap()));
        let mut s = sample();
        for (n, a) in s.nodes.iter_mut().zip(["fd00:100::11", "fd00:100::12"]) {
            n.vtep = v6(a);
        }
        validate(&s).unwrap();
        assert!(s.underlay6());
        assert_eq!(s.networks[1].effective_mtu(1500, s.underlay6()), 1430);
        let e = check_mtu(
            &State {
                networks: vec![Network {
                    mtu: Some(1450),
                    ..s.networks[1].clone()
                }],
                ..s.clone()
            },
            1500,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("VXLAN adds 70 bytes, so the largest MTU of this network here is 1430"),
            "{e}"
        );
        let mut mixed = s.clone();
        mixed.nodes[1].vtep = None;
        let e = err(&mixed);
        assert!(e.contains("node \"n2\" has an IPv4 VTEP (192.168.1.12) but node \"n1\" an IPv6 one (fd00:100::11)"), "{e}");
        assert!(e.contains("one underlay family"), "{e}");
        for (bad, why) in [
            ("fe80::1", "is link-local"),
            ("ff02::1", "is a multicast address"),
            ("::", "is the unspecified address"),
            ("::ffff:192.168.1.13", "is an IPv4-mapped address"),
        ] {
            let mut b = s.clone();
            b.nodes[1].vtep = v6(bad);
            let e = err(&b);
            assert!(
                e.contains(&format!("node \"n2\": IPv6 VTEP {bad} {why}")),
                "{bad}: {e}"
            );
        }
        let mut twice = s.clone();
        twice.nodes[1].vtep = v6("fd00:100::11");
        assert!(
            err(&twice).contains("same VTEP [fd00:100::11]:4789"),
            "{}",
            err(&twice)
        );
        // Two addresses whose 24-bit names meet (the first pair found).
        let mut seen = std::collections::HashMap::new();
        let (a, b) = (1u128..)
            .find_map(|i| {
                let a = std::net::Ipv6Addr::from(0xfd00_0100_u128 << 96 | i);
                seen.insert(crate::model::vtep6_key(a), a).map(|b| (a, b))
            })
            .unwrap();
        let mut clash = s.clone();
        clash.nodes[0].vtep = Some(a.into());
        clash.nodes[1].vtep = Some(b.into());
        assert!(
            err(&clash).contains("share meshd's 32-bit name"),
            "{}",
            err(&clash)
        );
    }

    fn one_key() -> Encryption {
        Encryption::single(1, Secret([7; 32]))
    }

    #[test]
    fn an_encrypted_networks_keys_are_checked() {
        let mut s = sample();
        s.networks[1].encryption = Some(one_key());
        validate(&s).unwrap();
        let with = |f: &dyn Fn(&mut Encryption)| {
            let mut s = s.clone();
            f(s.networks[1].encryption.as_mut().unwrap());
            err(&s)
        };
        assert!(with(&|e| e.keys.clear()).contains("1 to 3 keys, not 0"));
        assert!(with(&|e| {
            for (id, b) in [(2, 2u8), (3, 3), (4, 4)] {
                e.keys.push(NetworkKey {
                    id,
                    key: Some(Secret([b; 32])),
                });
            }
        })
        .contains("1 to 3 keys, not 4"));
        assert!(with(&|e| e.keys[0].key = None).contains("key 1 has no value"));
        assert!(with(&|e| e.keys.push(e.keys[0].clone())).contains("key id 1 is used twice"));
        assert!(with(&|e| e.primary = 2).contains("the primary key 2 is not one of its keys"));
        // What a daemon answers has the ids, not the keys.
        let r = s.redacted();
        let text = serde_json::to_string(&r).unwrap();
        assert!(r.networks[1].encryption.as_ref().unwrap().keys[0]
            .key
            .is_none());
        assert!(!text.contains("0707"), "{text}");
        assert!(serde_json::to_string(&s)
            .unwrap()
            .contains(&"07".repeat(32)));
    }

    #[test]
    fn health_checks_are_checked() {
        let mut s = sample();
        s.services[0].health = Some(HealthCheck {
            test: HealthTest::Http,
            path: "/healthz".into(),
            status: Some(200),
            interval_ms: 2000,
            timeout_ms: 1000,
            retries: 3,
            ..HealthCheck::default()
        });
        validate(&s).unwrap();
        let with = |f: &dyn Fn(&mut HealthCheck)| {
            let mut s = s.clone();
            f(s.services[0].health.as_mut().unwrap());
            err(&s)
        };
        assert!(with(&|h| h.interval_ms = 50).contains("interval 50 ms is out of range"));
        assert!(with(&|h| h.timeout_ms = 3000).contains("at most the interval"));
        assert!(with(&|h| h.timeout_ms = 1).contains("at least 10 ms"));
        assert!(with(&|h| h.retries = 0).contains("retries 0"));
        assert!(with(&|h| h.port = Some(0)).contains("port 0"));
        assert!(with(&|h| h.path = "healthz".into()).contains("starts with '/'"));
        assert!(with(&|h| h.path = "/a b".into()).contains("no spaces"));
        assert!(with(&|h| h.path = format!("/{}", "a".repeat(2000))).contains("path"));
        assert!(with(&|h| h.status = Some(700)).contains("status 700"));
        // A TCP check has no path to check.
        let mut tcp = s.clone();
        tcp.services[0].health = Some(HealthCheck {
            path: "nonsense".into(),
            ..HealthCheck::default()
        });
        validate(&tcp).unwrap();
    }

    #[test]
    fn the_gossip_port_cannot_be_published_over_udp() {
        let mut s = sample();
        s.services[0].ports.push(PublishedPort {
            protocol: Protocol::Udp,
            published: HEALTH_GOSSIP_PORT,
            target: 53,
            mode: PublishMode::Ingress,
        });
        assert!(err(&s).contains("UDP port 7946 is meshd's own"));
        s.services[0].ports[1].protocol = Protocol::Tcp;
        validate(&s).unwrap();
    }

    #[test]
    fn the_vxlan_port_cannot_be_published_over_udp() {
        let mut s = sample();
        let udp = |published| PublishedPort {
            protocol: Protocol::Udp,
            published,
            target: 53,
            mode: PublishMode::Ingress,
        };
        s.services[0].ports.push(udp(VXLAN_PORT));
        assert!(err(&s).contains(
            "UDP port 4789 is meshd's own (node \"n1\" receives the VXLAN overlay on it)"
        ));
        // A node's own VTEP port counts too, and TCP on those ports is fine.
        s.services[0].ports[1] = udp(4790);
        validate(&s).unwrap();
        s.nodes[1].vtep_port = 4790;
        assert!(err(&s).contains("UDP port 4790 is meshd's own (node \"n2\""));
        s.services[0].ports[1].protocol = Protocol::Tcp;
        validate(&s).unwrap();
    }

    #[test]
    fn outlier_settings_out_of_range_are_refused() {
        let mut s = sample();
        s.services[0].outlier.eject_ms = 5;
        assert!(err(&s).contains("outlier settings"));
        s.services[0].outlier = crate::model::Outlier::off();
        s.services[0].outlier.eject_ms = 5;
        assert!(validate(&s).is_ok(), "off: the rest does not matter");
        s.services[0].outlier = crate::model::Outlier {
            max_percent: 0,
            ..Default::default()
        };
        assert!(err(&s).contains("outlier settings"));
    }

    #[test]
    fn dnsrr_cannot_publish_in_ingress_mode() {
        let mut s = sample();
        s.services[0].endpoint_mode = EndpointMode::Dnsrr;
        for n in &mut s.services[0].networks {
            n.vip = None;
        }
        assert!(err(&s).contains("port published with ingress mode can't be used with dnsrr mode"));
        s.services[0].ports[0].mode = PublishMode::Host;
        validate(&s).unwrap();
    }

    #[test]
    fn published_ports_need_ingress_addresses() {
        let mut s = sample();
        s.services[0].tasks[0].addresses.remove(0);
        assert!(err(&s).contains("no address on the ingress network"));
        let mut s = sample();
        s.networks[0].endpoints.remove("n2");
        assert!(err(&s).contains("node \"n2\" has no endpoint"));
    }

    #[test]
    fn claims_kept_service_by_service_agree_with_checking_the_whole_state() {
        use proptest::prelude::*;
        // Changes to one or two services at a time that may clash with the others: a port, a
        // VIP, a task address, a task name, a VLAN taken twice.
        let change = (0..2usize, 0..6u8, 0..4u8);
        proptest!(|(changes in proptest::collection::vec(proptest::collection::vec(change, 1..3), 1..12))| {
            let mut state = sample();
            let mut api = Service::new("api");
            api.networks.push(ServiceNetwork { network: "appnet".into(), vip: Some(Ipv4Addr::new(10, 0, 1, 50)) });
            state.services.push(api);
            validate(&state).unwrap();
            let mut claims = Claims::of(&state).unwrap();
            for batch in changes {
                let mut next = state.clone();
                let mut names = BTreeSet::new();
                for (which, what, v) in batch {
                    let svc = &mut next.services[which];
                    names.insert(svc.name.clone());
                    match what {
                        0 => svc.ports.push(PublishedPort { protocol: Protocol::Tcp, published: 8080 + u16::from(v), target: 80, mode: PublishMode::Ingress }),
                        1 => svc.ports.clear(),
                        2 => svc.networks[0].vip = Some(Ipv4Addr::new(10, 0, 1, 2 + v)),
                        3 => {
                            let name = format!("{}.{}", svc.name, 7 + v);
                            let mut t = Task { name, node: "n1".into(), addresses: Vec::new(), state: Default::default(), weight: 1, vlan: None };
                            t.addresses.push(TaskAddress { network: "appnet".into(), addr: Ipv4Addr::new(10, 0, 1, 10 + v) });
                            t.addresses.push(TaskAddress { network: "ingress".into(), addr: Ipv4Addr::new(10, 0, 0, 40 + v) });
                            svc.tasks.push(t);
                        }
                        4 => { svc.tasks.pop(); }
                        _ => {
                            if let Some(t) = svc.tasks.last_mut() { t.vlan = Some(100 + u16::from(v)); }
                        }
                    }
                }
                let whole = validate(&next);
                let mut trial = claims.clone();
                let kept = trial.replace(
                    &next,
                    names.iter().filter_map(|n| state.service(n)),
                    names.iter().filter_map(|n| next.service(n)),
                );
                prop_assert_eq!(whole.is_ok(), kept.is_ok(), "whole: {:?} kept: {:?}", whole, kept);
                if whole.is_ok() {
                    state = next;
                    claims = trial;
                }
            }
        });
    }
}
