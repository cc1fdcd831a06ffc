//! The data model, in Docker Swarm's vocabulary (see DESIGN.md, "Data model").
//!
//! A [`State`] is the whole desired state of a mesh as one node's meshd knows it: the nodes
//! (peers), the overlay networks, the services with their published ports and tasks. The daemon
//! compiles it into an immutable service table; validation happens there, so a `State` may be
//! invalid until it is built.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The VNI Swarm gives its ingress network.
pub const INGRESS_VNI: u32 = 4096;
/// The IANA port of VXLAN (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;
/// The UDP port on which meshd daemons tell each other their local tasks' health verdicts
/// (from VTEP address to VTEP address). Swarm's gossip uses the same port; it cannot be
/// published over UDP.
pub const HEALTH_GOSSIP_PORT: u16 = 7946;

/// The whole desired state of a mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub services: Vec<Service>,
}

impl State {
    /// Whether the overlay runs over an IPv6 underlay: the nodes' VTEPs are IPv6 (all of
    /// them; validation refuses a mix).
    pub fn underlay6(&self) -> bool {
        self.nodes.iter().any(|n| n.vtep6().is_some())
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
    pub fn service_mut(&mut self, name: &str) -> Option<&mut Service> {
        self.services.iter_mut().find(|s| s.name == name)
    }
    /// Makes service `name` be `new` (`None`: gone); returns what it was. A new service goes
    /// where its name sorts among services sorted by name (as the cluster's state has them).
    pub fn put_service(&mut self, name: &str, new: Option<Service>) -> Option<Service> {
        match (self.services.iter().position(|s| s.name == name), new) {
            (Some(i), Some(new)) => Some(std::mem::replace(&mut self.services[i], new)),
            (Some(i), None) => Some(self.services.remove(i)),
            (None, Some(new)) => {
                let at = self.services.partition_point(|s| s.name.as_str() < name);
                self.services.insert(at, new);
                None
            }
            (None, None) => None,
        }
    }
}

/// Whether a node takes new connections for its tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Drain,
}

/// A node of the mesh: a peer meshd with its underlay address and VXLAN tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    /// The node's address on the underlay; published ports answer here.
    pub addr: Ipv4Addr,
    /// The VXLAN tunnel endpoint, IPv4 or IPv6 (VXLAN over an IPv6 underlay); the underlay
    /// address when absent. Every node's is of one family ([`State::underlay6`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<IpAddr>,
    /// The node's IPv6 address on the underlay, if it has one: meshd answers Neighbor
    /// Discovery and ping there; TCP and UDP are refused as closed ports (published ports
    /// answer on IPv4 only so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr6: Option<Ipv6Addr>,
    #[serde(default = "default_vxlan_port")]
    pub vtep_port: u16,
    #[serde(default)]
    pub availability: Availability,
}

fn default_vxlan_port() -> u16 {
    VXLAN_PORT
}

impl Node {
    pub fn vtep_addr(&self) -> IpAddr {
        self.vtep.unwrap_or(IpAddr::V4(self.addr))
    }

    /// The VTEP's IPv6 address when the node's underlay is IPv6.
    pub fn vtep6(&self) -> Option<Ipv6Addr> {
        match self.vtep_addr() {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }

    /// The 32-bit name of the node's VTEP inside meshd (flows, neighbours, the seal's
    /// associated data): its IPv4 address, or [`vtep6_key`] of its IPv6 address.
    pub fn vtep_key(&self) -> Ipv4Addr {
        match self.vtep_addr() {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => vtep6_key(a),
        }
    }
}

/// The 32-bit name of an IPv6 VTEP: an address of 0.0.0.0/8 ("this network", never a source or
/// destination on a wire, RFC 1122 §3.2.1.3) made of 24 bits of a fixed hash (FNV-1a, 64 bits,
/// folded) of the address, never 0.0.0.0. Every node computes the same name for a VTEP, so
/// the seal's associated data agrees; two nodes whose VTEPs share a name are refused
/// ([`crate::validate`]). Part of the flow file's format: never change it.
pub fn vtep6_key(a: Ipv6Addr) -> Ipv4Addr {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in a.octets() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Casts: the fold's low 24 bits.
    #[allow(clippy::cast_possible_truncation)]
    let k = ((h ^ (h >> 24) ^ (h >> 48)) & 0x00ff_ffff) as u32;
    Ipv4Addr::from(k.max(1))
}

/// An IPv4 prefix such as `10.0.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, ParseNetError> {
        if prefix > 32 {
            return Err(ParseNetError(format!(
                "{addr}/{prefix}: prefix length is at most 32"
            )));
        }
        Ok(Ipv4Net { addr, prefix })
    }
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
    /// Whether `ip` may be given to a host: inside, and neither the network nor the broadcast
    /// address (for prefixes shorter than /31).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && (self.prefix >= 31 || (ip != self.network() && ip != self.broadcast()))
    }
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let m = self.mask() & other.mask();
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
    /// The prefix with the bits past its length cleared: `10.0.1.0/24` for `10.0.1.5/24`.
    pub fn masked(&self) -> Ipv4Net {
        Ipv4Net {
            addr: self.network(),
            prefix: self.prefix,
        }
    }
    /// The prefix as a network's subnet, refused with Docker's message (`docker network
    /// create`, v25 on) when a bit past its length is set: `invalid subnet 10.0.1.5/24: it
    /// should be 10.0.1.0/24`. See [`Network::subnets_without_host_bits`].
    pub fn without_host_bits(self) -> Result<Ipv4Net, ParseNetError> {
        host_bits(self, self.masked())
    }
}

/// `net` if it is `masked` (no bit set past its length), else Docker's refusal.
fn host_bits<N: fmt::Display + PartialEq>(net: N, masked: N) -> Result<N, ParseNetError> {
    if net == masked {
        Ok(net)
    } else {
        Err(ParseNetError(format!(
            "invalid subnet {net}: it should be {masked}"
        )))
    }
}

/// Why a prefix did not parse (or, from `without_host_bits`, cannot be a network's subnet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseNetError(pub String);

impl fmt::Display for ParseNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ParseNetError {}

impl FromStr for Ipv4Net {
    type Err = ParseNetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').ok_or_else(|| {
            ParseNetError(format!("{s:?}: expected ADDRESS/PREFIX, like 10.0.1.0/24"))
        })?;
        let addr = a
            .parse::<Ipv4Addr>()
            .map_err(|_| ParseNetError(format!("{s:?}: {a:?} is not an IPv4 address")))?;
        let prefix = p
            .parse::<u8>()
            .map_err(|_| ParseNetError(format!("{s:?}: {p:?} is not a prefix length")))?;
        Ipv4Net::new(addr, prefix)
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = ParseNetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An overlay network's IPv6 prefix, such as `fd00:1::/64` (`network create --ipv6 --subnet`).
/// At most /96: a task's IPv6 address on the network is the prefix with its IPv4 address in
/// the last 32 bits ([`Ipv6Net::embed`], as RFC 6052 embeds IPv4 in IPv6), and so are the
/// VIPs', the gateway's and the endpoints', so an address of either family names the other and
/// nothing is allocated twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv6Net {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Ipv6Net {
    /// The longest prefix an overlay takes: 32 bits are left for the IPv4 address.
    pub const MAX_PREFIX: u8 = 96;

    pub fn new(addr: Ipv6Addr, prefix: u8) -> Result<Self, ParseNetError> {
        if prefix > Self::MAX_PREFIX {
            return Err(ParseNetError(format!(
                "{addr}/{prefix}: an overlay's IPv6 prefix is at most /96 (the last 32 bits \
                 hold each task's IPv4 address)"
            )));
        }
        Ok(Ipv6Net { addr, prefix })
    }
    pub fn mask(&self) -> u128 {
        ClientNet::mask6(self.prefix)
    }
    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr) & self.mask()
    }
    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        let m = self.mask() & other.mask();
        u128::from(self.addr) & m == u128::from(other.addr) & m
    }
    /// The prefix with the bits past its length cleared: `fd00:5::/64` for `fd00:5::1/64`.
    pub fn masked(&self) -> Ipv6Net {
        Ipv6Net {
            addr: self.network(),
            prefix: self.prefix,
        }
    }
    /// The prefix as a network's IPv6 subnet, refused with Docker's message when a bit past
    /// its length is set: `invalid subnet fd00:5::1/64: it should be fd00:5::/64`. See
    /// [`Network::subnets_without_host_bits`].
    pub fn without_host_bits(self) -> Result<Ipv6Net, ParseNetError> {
        host_bits(self, self.masked())
    }
    /// The IPv6 address of the overlay address `v4`: the prefix's first 96 bits, then `v4`.
    pub fn embed(&self, v4: Ipv4Addr) -> Ipv6Addr {
        Ipv6Addr::from((u128::from(self.addr) & !0xffff_ffff) | u128::from(u32::from(v4)))
    }
    /// The IPv4 address an address of this prefix embeds, if it is of this prefix.
    pub fn extract(&self, ip: Ipv6Addr) -> Option<Ipv4Addr> {
        let x = u128::from(ip);
        // Casts: the low 32 bits.
        #[allow(clippy::cast_possible_truncation)]
        let v4 = Ipv4Addr::from(x as u32);
        (x & !0xffff_ffff == u128::from(self.addr) & !0xffff_ffff && self.contains(ip))
            .then_some(v4)
    }
}

impl FromStr for Ipv6Net {
    type Err = ParseNetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').ok_or_else(|| {
            ParseNetError(format!("{s:?}: expected ADDRESS/PREFIX, like fd00:1::/64"))
        })?;
        let addr = a
            .parse::<Ipv6Addr>()
            .map_err(|_| ParseNetError(format!("{s:?}: {a:?} is not an IPv6 address")))?;
        let prefix = p
            .parse::<u8>()
            .map_err(|_| ParseNetError(format!("{s:?}: {p:?} is not a prefix length")))?;
        Ipv6Net::new(addr, prefix)
    }
}

impl TryFrom<String> for Ipv6Net {
    type Error = ParseNetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv6Net> for String {
    fn from(n: Ipv6Net) -> String {
        n.to_string()
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A client address prefix of either family, as `meshctl conn ls --client` takes it:
/// `203.0.113.0/24` or `fd00:100::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ClientNet {
    V4(Ipv4Net),
    V6 { addr: Ipv6Addr, prefix: u8 },
}

impl ClientNet {
    /// A single address: `/32` or `/128`.
    pub fn host(ip: std::net::IpAddr) -> ClientNet {
        match ip {
            std::net::IpAddr::V4(a) => ClientNet::V4(Ipv4Net {
                addr: a,
                prefix: 32,
            }),
            std::net::IpAddr::V6(a) => ClientNet::V6 {
                addr: a,
                prefix: 128,
            },
        }
    }

    pub fn prefix(&self) -> u8 {
        match self {
            ClientNet::V4(n) => n.prefix,
            ClientNet::V6 { prefix, .. } => *prefix,
        }
    }

    /// The mask of an IPv6 prefix of `prefix` bits.
    pub fn mask6(prefix: u8) -> u128 {
        match prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p.min(128))),
        }
    }

    /// The prefix with the bits past its length cleared.
    pub fn network(&self) -> ClientNet {
        match *self {
            ClientNet::V4(n) => ClientNet::V4(Ipv4Net {
                addr: n.network(),
                prefix: n.prefix,
            }),
            ClientNet::V6 { addr, prefix } => ClientNet::V6 {
                addr: Ipv6Addr::from(u128::from(addr) & Self::mask6(prefix)),
                prefix,
            },
        }
    }
}

impl FromStr for ClientNet {
    type Err = ParseNetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains(':') {
            return s.parse().map(ClientNet::V4);
        }
        let (a, p) = s.split_once('/').ok_or_else(|| {
            ParseNetError(format!(
                "{s:?}: expected ADDRESS/PREFIX, like fd00:100::/64"
            ))
        })?;
        let addr = a
            .parse::<Ipv6Addr>()
            .map_err(|_| ParseNetError(format!("{s:?}: {a:?} is not an IPv6 address")))?;
        let prefix = p
            .parse::<u8>()
            .ok()
            .filter(|&p| p <= 128)
            .ok_or_else(|| ParseNetError(format!("{s:?}: the prefix length is 0 to 128")))?;
        Ok(ClientNet::V6 { addr, prefix })
    }
}

impl TryFrom<String> for ClientNet {
    type Error = ParseNetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ClientNet> for String {
    fn from(n: ClientNet) -> String {
        n.to_string()
    }
}

impl fmt::Display for ClientNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientNet::V4(n) => n.fmt(f),
            ClientNet::V6 { addr, prefix } => write!(f, "{addr}/{prefix}"),
        }
    }
}

/// An overlay network: one VXLAN segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    /// Dual-stack (`network create --ipv6 --subnet fd00:1::/64`): the network's IPv6 prefix.
    /// Every overlay address of the network has an IPv6 twin in it ([`Ipv6Net::embed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// The gateway and embedded resolver address on this network.
    pub gateway: Ipv4Addr,
    /// Swarm's ingress network carries published-port traffic.
    #[serde(default)]
    pub ingress: bool,
    /// Each node's endpoint address on this network; the masquerade source of that node.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Ipv4Addr>,
    /// The largest IPv4 packet a task on this network may send or receive (its interface's
    /// MTU), as Docker's `com.docker.network.driver.mtu`. `None`: the node's uplink MTU less
    /// [`VXLAN_OVERHEAD`] (1450 on a 1500 underlay), as Swarm's overlays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Set for an encrypted overlay (Docker's `--opt encrypted`): the network's keys. Every
    /// VXLAN frame of the network is sealed (XChaCha20-Poly1305) with the primary key and
    /// opened with any of them; a frame that does not open is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

impl Network {
    /// Docker's rule (`docker network create`, v25 on) for a new network's subnets: no bit set
    /// past a prefix's length, as in `10.0.1.5/24` or `fd00:5::1/64`; the error is Docker's
    /// message for the first one that has. Checked where a network is created (meshctl's
    /// `network create`, and [`crate::apply::change`], which both the daemon's socket and
    /// `meshctl --cluster` run), not by [`crate::validate()`]: a network made before the rule,
    /// in a state file or in etcd, keeps working as it did, where refusing it there would
    /// refuse the whole state (every service with it), at a meshd's start too.
    pub fn subnets_without_host_bits(&self) -> Result<(), ParseNetError> {
        self.subnet.without_host_bits()?;
        if let Some(p) = self.subnet6 {
            p.without_host_bits()?;
        }
        Ok(())
    }

    /// The IPv6 twin of the network's overlay address `v4`, on a dual-stack network.
    pub fn addr6(&self, v4: Ipv4Addr) -> Option<Ipv6Addr> {
        self.subnet6.map(|p| p.embed(v4))
    }

    /// The MTU tasks on this network have on a node whose uplink MTU is `uplink_mtu`: the one
    /// set with `--opt mtu`, else the uplink's less [`Network::overhead`].
    /// On an IPv6 underlay (`underlay6`) VXLAN takes 20 bytes more.
    pub fn effective_mtu(&self, uplink_mtu: u16, underlay6: bool) -> u16 {
        self.mtu
            .unwrap_or_else(|| uplink_mtu.saturating_sub(self.overhead(underlay6)))
    }

    /// What the underlay carries besides a task's IPv4 packet ([`overlay_overhead`]).
    pub fn overhead(&self, underlay6: bool) -> u16 {
        overlay_overhead(self.encryption.is_some(), underlay6)
    }
}

/// What the underlay carries besides a task's IPv4 packet: [`VXLAN_OVERHEAD`] (and
/// [`VXLAN6_EXTRA`] more over an IPv6 underlay, `underlay6`), and [`SEAL_OVERHEAD`] more on
/// an encrypted network.
pub fn overlay_overhead(encrypted: bool, underlay6: bool) -> u16 {
    let vxlan = if underlay6 {
        VXLAN_OVERHEAD + VXLAN6_EXTRA
    } else {
        VXLAN_OVERHEAD
    };
    if encrypted {
        vxlan + SEAL_OVERHEAD
    } else {
        vxlan
    }
}

/// What VXLAN over IPv6 adds to [`VXLAN_OVERHEAD`]: an IPv6 header is 40 bytes, IPv4's 20.
pub const VXLAN6_EXTRA: u16 = 20;

/// What sealing adds to an encrypted network's VXLAN frame: the key's id (4 bytes), the nonce
/// (24) and the authentication tag (16).
pub const SEAL_OVERHEAD: u16 = 4 + 24 + 16;
/// The most keys an encrypted network holds at once: the one in use, the next one (being
/// distributed) and the last one (still accepted from nodes not yet switched).
pub const MAX_NETWORK_KEYS: usize = 3;

/// An encrypted network's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// The id of the key that seals what this node sends.
    pub primary: u32,
    /// Every key frames are accepted with (the primary among them), at most
    /// [`MAX_NETWORK_KEYS`].
    pub keys: Vec<NetworkKey>,
}

impl Encryption {
    /// One key, `key` with id `id`, that seals.
    pub fn single(id: u32, key: Secret) -> Encryption {
        Encryption {
            primary: id,
            keys: vec![NetworkKey { id, key: Some(key) }],
        }
    }
}

/// One key of an encrypted network.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkKey {
    /// Carried in every sealed frame, so the receiver knows which key opens it.
    pub id: u32,
    /// The 256-bit key. `None` in what a daemon answers (keys never leave the node's state
    /// file and the changes that set them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkKey").field("id", &self.id).finish()
    }
}

/// 32 secret bytes, written as 64 hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret(pub [u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// 32 bytes from the operating system's random source.
    pub fn random() -> Result<Secret, String> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| format!("no random key: {e}"))?;
        Ok(Secret(k))
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }
}

impl FromStr for Secret {
    type Err = &'static str;

    /// 64 hexadecimal digits (network keys, gossip key files).
    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        let b = text.as_bytes();
        if b.len() != 64 || !b.iter().all(u8::is_ascii_hexdigit) {
            return Err("a key is 64 hexadecimal digits");
        }
        let mut k = [0u8; 32];
        for (i, v) in k.iter_mut().enumerate() {
            let hex = std::str::from_utf8(&b[2 * i..2 * i + 2]).unwrap_or("00");
            *v = u8::from_str_radix(hex, 16).unwrap_or(0);
        }
        Ok(Secret(k))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl State {
    /// This state with every network key left out: what a daemon answers.
    pub fn redacted(&self) -> State {
        State {
            networks: self.networks.iter().map(Network::redacted).collect(),
            ..self.clone()
        }
    }
}

impl Network {
    /// This network with its keys left out (their ids stay): what a daemon answers.
    pub fn redacted(&self) -> Network {
        let mut n = self.clone();
        if let Some(e) = &mut n.encryption {
            for k in &mut e.keys {
                k.key = None;
            }
        }
        n
    }
}

/// What VXLAN adds to an inner IPv4 packet on the underlay: the inner Ethernet header (14),
/// VXLAN (8), UDP (8) and the outer IPv4 header (20). An overlay's MTU is the underlay's less this.
pub const VXLAN_OVERHEAD: u16 = 50;
/// The smallest network MTU accepted: every IPv4 host must take 576-byte datagrams (RFC 791).
pub const MIN_NETWORK_MTU: u16 = 576;
/// The largest network MTU accepted: an IPv4 packet's length field, less the encapsulation.
pub const MAX_NETWORK_MTU: u16 = u16::MAX - VXLAN_OVERHEAD;

/// How a service is reached inside the overlay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP per network, balanced by meshd.
    #[default]
    Vip,
    /// DNS round-robin: the name resolves to the task addresses.
    Dnsrr,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The IP protocol number (6, 17).
    pub fn ip_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a published port answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node, balanced over every task (the routing mesh).
    #[default]
    Ingress,
    /// Only on nodes running a task, served by that node's tasks.
    Host,
}

/// A published port, as Docker's `--publish published=8080,target=80,protocol=tcp,mode=ingress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    #[serde(default)]
    pub protocol: Protocol,
    pub published: u16,
    pub target: u16,
    #[serde(default)]
    pub mode: PublishMode,
}

/// What source address a task sees for published-port traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpMode {
    /// Swarm's behaviour: the source is the ingress node's endpoint address.
    #[default]
    Masquerade,
    /// The task sees the client's address; replies return through the ingress node's VTEP.
    Keep,
}

/// How new flows are spread over a service's tasks. As in IPVS, only the weighted ones (`wrr`,
/// `wlc`, `maglev`) read a task's weight beyond 0 (which always means "no new connections").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Strict rotation over eligible tasks (weights ignored).
    #[default]
    Rr,
    /// Weighted round-robin, smoothly interleaved (nginx's smooth weighted round-robin).
    Wrr,
    /// Least connections: the task with the fewest active connections on the worker picking.
    Lc,
    /// Weighted least connections: the fewest active connections per unit of weight.
    Wlc,
    /// Maglev consistent hashing (65537-slot table, weighted).
    Maglev,
}

impl SchedulerKind {
    /// Whether the scheduler reads task weights beyond "0: no new connections".
    pub fn weighted(self) -> bool {
        matches!(
            self,
            SchedulerKind::Wrr | SchedulerKind::Wlc | SchedulerKind::Maglev
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::Rr => "rr",
            SchedulerKind::Wrr => "wrr",
            SchedulerKind::Lc => "lc",
            SchedulerKind::Wlc => "wlc",
            SchedulerKind::Maglev => "maglev",
        }
    }
}

/// Which new connections of a service go where the same client's went before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Affinity {
    /// Source-IP affinity: a client (by address) keeps reaching one task. Its first task is a
    /// weighted consistent hash of its address (alike on every node and worker); each worker
    /// then remembers it for `timeout_s` seconds after the client's last new connection, so a
    /// task set that changes moves no client it remembers, unless that client's task stops
    /// taking connections.
    ClientIp { timeout_s: u32 },
}

impl Affinity {
    /// `--affinity-timeout` unless given: 5 minutes.
    pub const DEFAULT_TIMEOUT_S: u32 = 300;
    /// The longest `--affinity-timeout`: a day.
    pub const MAX_TIMEOUT_S: u32 = 86_400;

    pub fn timeout_s(self) -> u32 {
        match self {
            Affinity::ClientIp { timeout_s } => timeout_s,
        }
    }
}

/// `--affinity` of `service update`: turn it off or on (keeping the timeout when it was on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityMode {
    None,
    ClientIp,
}

/// Idle timeouts in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// An established TCP connection with no packets. IPVS cuts these after 900 s (moby#31208);
    /// meshd's default is two hours, like the kernel's TCP keepalive time.
    #[serde(default = "default_tcp_established")]
    pub tcp_established: u32,
    /// A TCP flow that is opening or closing.
    #[serde(default = "default_tcp_transitory")]
    pub tcp_transitory: u32,
    /// A UDP flow with no packets.
    #[serde(default = "default_udp")]
    pub udp: u32,
}

fn default_tcp_established() -> u32 {
    7200
}
fn default_tcp_transitory() -> u32 {
    60
}
fn default_udp() -> u32 {
    30
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: default_tcp_established(),
            tcp_transitory: default_tcp_transitory(),
            udp: default_udp(),
        }
    }
}

/// A service attached to an overlay network; `vip` is its virtual IP there (endpoint mode vip).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
}

/// A service: a name, its endpoint, its published ports and its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    #[serde(default)]
    pub networks: Vec<ServiceNetwork>,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub client_ip: ClientIpMode,
    #[serde(default)]
    pub scheduler: SchedulerKind,
    /// Source-IP affinity, when on (absent from older states: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How meshd checks that a task serves (Docker's HEALTHCHECK); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Passive health: when a node stops sending a task new connections after what it saw
    /// of the task's answers (on unless turned off, with the defaults when absent).
    #[serde(default, skip_serializing_if = "Outlier::is_default")]
    pub outlier: Outlier,
    #[serde(default)]
    pub tasks: Vec<Task>,
}

impl Service {
    pub fn new(name: &str) -> Self {
        Service {
            name: name.to_string(),
            endpoint_mode: EndpointMode::Vip,
            networks: Vec::new(),
            ports: Vec::new(),
            timeouts: Timeouts::default(),
            client_ip: ClientIpMode::Masquerade,
            scheduler: SchedulerKind::Rr,
            affinity: None,
            health: None,
            outlier: Outlier::default(),
            tasks: Vec::new(),
        }
    }

    /// The port a health check connects to: its own, else the target of the first TCP port the
    /// service publishes, else 80.
    pub fn health_port(&self) -> Option<u16> {
        let h = self.health.as_ref()?;
        Some(h.port.unwrap_or_else(|| {
            self.ports
                .iter()
                .find(|p| p.protocol == Protocol::Tcp)
                .map_or(80, |p| p.target)
        }))
    }
}

/// What a health check does. meshd runs it from the task's node over the overlay, so it is a
/// network probe rather than Docker's command in the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthTest {
    /// Connect: the check passes once the TCP handshake completes.
    #[default]
    Tcp,
    /// `GET path`: the check passes when the status is the expected one.
    Http,
}

/// A service's health check, like Docker's `--health-*` options: every `interval_ms` a check
/// that must pass within `timeout_ms`; `retries` failures in a row make a task unhealthy (no new
/// flows, its flows ended), one pass makes it healthy again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default)]
    pub test: HealthTest,
    /// The task port to check; see [`Service::health_port`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The path an `http` check asks for.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// The status an `http` check expects; any 2xx or 3xx when absent (like `curl -f`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default = "default_health_interval")]
    pub interval_ms: u32,
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: u32,
    #[serde(default = "default_health_retries")]
    pub retries: u32,
}

fn default_health_path() -> String {
    "/".to_string()
}
/// Docker's defaults: 30 s, 30 s, 3.
fn default_health_interval() -> u32 {
    30_000
}
fn default_health_timeout() -> u32 {
    30_000
}
fn default_health_retries() -> u32 {
    3
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            test: HealthTest::Tcp,
            port: None,
            path: default_health_path(),
            status: None,
            interval_ms: default_health_interval(),
            timeout_ms: default_health_timeout(),
            retries: default_health_retries(),
        }
    }
}

impl HealthCheck {
    /// Whether an HTTP status passes this check.
    pub fn status_ok(&self, status: u16) -> bool {
        match self.status {
            Some(s) => status == s,
            None => (200..400).contains(&status),
        }
    }
}

/// A task's lifecycle state, named as Swarm names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    Running,
    /// Failing its health check: no new flows, existing flows ended.
    Unhealthy,
    /// Going away: no new flows, existing flows kept until they end.
    Draining,
    Shutdown,
    Failed,
}

impl TaskState {
    /// Whether the task may keep the flows it has.
    pub fn keeps_flows(self) -> bool {
        matches!(self, TaskState::Running | TaskState::Draining)
    }
}

/// Passive health (outlier ejection, as Envoy's): a node that sees `consecutive` new
/// connections to a task fail in a row (its SYN answered by a RST, or never answered) sends it
/// no new connection for `eject_ms`, then tries it again; each ejection in a row lasts one
/// `eject_ms` longer (up to [`Outlier::MAX_EJECT_MS`]). At most `max_percent` of a service's
/// tasks (and at least one) are out at once, so a service-wide failure does not empty it.
/// Connections already running are left alone. `consecutive` 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    #[serde(default = "default_outlier_consecutive")]
    pub consecutive: u32,
    #[serde(default = "default_outlier_eject")]
    pub eject_ms: u32,
    #[serde(default = "default_outlier_max_percent")]
    pub max_percent: u8,
}

fn default_outlier_consecutive() -> u32 {
    3
}
fn default_outlier_eject() -> u32 {
    10_000
}
fn default_outlier_max_percent() -> u8 {
    50
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive: default_outlier_consecutive(),
            eject_ms: default_outlier_eject(),
            max_percent: default_outlier_max_percent(),
        }
    }
}

impl Outlier {
    /// The longest an ejection lasts, however often the task failed (Envoy's
    /// max_ejection_time default).
    pub const MAX_EJECT_MS: u32 = 300_000;

    /// Off: tasks are never ejected for what a node sees.
    pub fn off() -> Self {
        Outlier {
            consecutive: 0,
            ..Outlier::default()
        }
    }

    pub fn is_off(&self) -> bool {
        self.consecutive == 0
    }

    pub fn is_default(&self) -> bool {
        *self == Outlier::default()
    }

    /// How long the `n`th ejection in a row lasts (`n` from 1).
    pub fn eject_for(&self, n: u32) -> u32 {
        self.eject_ms
            .saturating_mul(n.max(1))
            .min(Self::MAX_EJECT_MS.max(self.eject_ms))
    }

    /// How many of `tasks` tasks may be out at once: `max_percent` of them, at least one.
    pub fn max_out(&self, tasks: usize) -> usize {
        (tasks * usize::from(self.max_percent) / 100).max(1)
    }
}

/// A health verdict: runtime state meshd layers over the desired state, never persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No check has passed yet (nor failed `retries` times): no new flows yet.
    #[default]
    Starting,
    Healthy,
    /// `retries` checks in a row failed: no new flows, existing flows ended.
    Unhealthy,
    /// This node saw its new connections fail ([`Outlier`]): no new flows from this node for
    /// a while, existing flows kept. A node's own verdict, never told to the others.
    Ejected,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Ejected => "ejected",
        }
    }
}

/// What a task is doing as meshd observes it, in Swarm's lifecycle words: the desired state
/// with the health verdict over it (`docker service ps`'s CURRENT STATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CurrentState {
    /// Registered with a health check that has not passed yet.
    Starting,
    Running,
    /// Taking no new flows, keeping its own (desired state `draining`).
    Draining,
    /// Set failed or unhealthy, or failing its health check.
    Failed,
    Shutdown,
}

impl CurrentState {
    /// The state of a task desired in `desired`, with health verdict `health` when its service
    /// has a check.
    pub fn of(desired: TaskState, health: Option<Health>) -> CurrentState {
        match (desired, health) {
            (TaskState::Shutdown, _) => CurrentState::Shutdown,
            (TaskState::Failed | TaskState::Unhealthy, _) => CurrentState::Failed,
            (TaskState::Draining, _) => CurrentState::Draining,
            (TaskState::Running, Some(Health::Starting)) => CurrentState::Starting,
            (TaskState::Running, Some(Health::Unhealthy)) => CurrentState::Failed,
            // Ejected on this node only: it runs (other nodes may send it connections).
            (TaskState::Running, Some(Health::Healthy | Health::Ejected) | None) => {
                CurrentState::Running
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CurrentState::Starting => "starting",
            CurrentState::Running => "running",
            CurrentState::Draining => "draining",
            CurrentState::Failed => "failed",
            CurrentState::Shutdown => "shutdown",
        }
    }
}

/// A task's observed state and since when; runtime, answered by `service-ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStatus {
    pub state: CurrentState,
    /// How long the task has been in `state`, in milliseconds, when meshd answered.
    pub age_ms: u64,
    /// When it entered `state`, in milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// The health verdict, for a service with a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Checks failed in a row.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failing_streak: u32,
    /// Why the task is not running, such as the last failed check's outcome.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A row of `service ps`: the task as desired, and its observed status when the daemon knows
/// it (`status` is absent in the answer of a daemon that does not track it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsTask {
    #[serde(flatten)]
    pub task: Task,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
}

/// A task's address on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAddress {
    pub network: String,
    pub addr: Ipv4Addr,
}

/// One backend of a service: `web.1` on some node, with an address on each network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub name: String,
    pub node: String,
    pub addresses: Vec<TaskAddress>,
    #[serde(default)]
    pub state: TaskState,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The VLAN (1 to 4094) of the task's own port on the node's tasks bridge: the bridge tags
    /// what the task sends with it, so meshd knows which task a frame came from whatever
    /// addresses the frame claims, and tasks reach each other only through meshd. Unique per
    /// node. A task without one shares the untagged segment with the other such tasks (and is
    /// only as isolated as they are trustworthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

fn default_weight() -> u32 {
    1
}

impl Task {
    pub fn addr_on(&self, network: &str) -> Option<Ipv4Addr> {
        self.addresses
            .iter()
            .find(|a| a.network == network)
            .map(|a| a.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of IPv6 VTEPs are part of the flow file and of the seal: they never change.
    #[test]
    fn an_ipv6_vteps_name_is_fixed_and_in_this_network() {
        let k = |a: &str| vtep6_key(a.parse().unwrap());
        assert_eq!(k("fd00:100::11"), Ipv4Addr::new(0, 135, 209, 5));
        assert_eq!(k("fd00:100::12"), Ipv4Addr::new(0, 132, 211, 80));
        assert_eq!(k("fd00:100::13"), Ipv4Addr::new(0, 133, 220, 227));
        let n = Node {
            name: "n1".into(),
            addr: Ipv4Addr::new(192, 168, 1, 11),
            vtep: Some("fd00:100::11".parse().unwrap()),
            addr6: None,
            vtep_port: VXLAN_PORT,
            availability: Availability::Active,
        };
        assert_eq!(n.vtep_key(), Ipv4Addr::new(0, 135, 209, 5));
        assert_eq!(n.vtep6(), Some("fd00:100::11".parse().unwrap()));
        let state = State {
            nodes: vec![n],
            ..State::default()
        };
        assert!(state.underlay6());
    }

    #[test]
    fn a_service_of_an_older_state_has_no_affinity_and_one_without_writes_none() {
        let old = r#"{"name":"web","scheduler":"rr","tasks":[]}"#;
        let svc: Service = serde_json::from_str(old).unwrap();
        assert_eq!((svc.scheduler, svc.affinity), (SchedulerKind::Rr, None));
        let text = serde_json::to_string(&svc).unwrap();
        assert!(!text.contains("affinity"), "{text}");
        let mut on = svc.clone();
        on.scheduler = SchedulerKind::Wlc;
        on.affinity = Some(Affinity::ClientIp { timeout_s: 600 });
        let text = serde_json::to_string(&on).unwrap();
        assert!(
            text.contains(r#""scheduler":"wlc","affinity":{"client_ip":{"timeout_s":600}}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Service>(&text).unwrap(), on);
        for k in ["rr", "wrr", "lc", "wlc", "maglev"] {
            let s: SchedulerKind = serde_json::from_str(&format!("\"{k}\"")).unwrap();
            assert_eq!(s.as_str(), k);
        }
    }

    #[test]
    fn prefixes_parse_and_print() {
        let n: Ipv4Net = "10.0.1.0/24".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.1.0/24");
        assert!(n.contains(Ipv4Addr::new(10, 0, 1, 200)));
        assert!(!n.contains(Ipv4Addr::new(10, 0, 2, 1)));
        assert!(!n.is_host(Ipv4Addr::new(10, 0, 1, 255)));
        assert!(!n.is_host(Ipv4Addr::new(10, 0, 1, 0)));
        assert!(n.overlaps(&"10.0.0.0/16".parse().unwrap()));
        assert!("10.0.1.0".parse::<Ipv4Net>().is_err());
        assert!("10.0.1.0/33".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn a_subnet_with_host_bits_is_refused_in_dockers_words() {
        // IPv4: (given, what Docker says it should be), or None when it is fine as given.
        for (given, should) in [
            ("10.0.1.0/24", None),
            ("10.0.1.5/24", Some("10.0.1.0/24")),
            ("10.0.1.255/24", Some("10.0.1.0/24")),
            ("10.0.1.5/32", None),
            ("10.0.1.4/30", None),
            ("10.0.1.6/30", Some("10.0.1.4/30")),
            ("0.0.0.0/0", None),
            ("10.0.0.1/0", Some("0.0.0.0/0")),
        ] {
            let n: Ipv4Net = given.parse().unwrap();
            match should {
                None => assert_eq!(n.without_host_bits(), Ok(n), "{given}"),
                Some(m) => {
                    assert_eq!(n.masked().to_string(), m, "{given}");
                    assert_eq!(
                        n.without_host_bits().unwrap_err().to_string(),
                        format!("invalid subnet {given}: it should be {m}")
                    );
                }
            }
        }
        // IPv6, up to /96 (the longest an overlay takes).
        for (given, should) in [
            ("fd00:5::/64", None),
            ("fd00:5::1/64", Some("fd00:5::/64")),
            ("fd00:5::1:0:0/64", Some("fd00:5::/64")),
            ("fd00:5:0:1::/48", Some("fd00:5::/48")),
            ("fd00:5::1:0:0/96", None),
            ("fd00:5::1:0:1/96", Some("fd00:5::1:0:0/96")),
            ("::/0", None),
            ("fd00::/0", Some("::/0")),
        ] {
            let n: Ipv6Net = given.parse().unwrap();
            match should {
                None => assert_eq!(n.without_host_bits(), Ok(n), "{given}"),
                Some(m) => {
                    assert_eq!(n.masked().to_string(), m, "{given}");
                    assert_eq!(
                        n.without_host_bits().unwrap_err().to_string(),
                        format!("invalid subnet {given}: it should be {m}")
                    );
                }
            }
        }
        // The example of the report, Docker's message word for word.
        let n: Ipv6Net = "fd00:5::1/64".parse().unwrap();
        assert_eq!(
            n.without_host_bits().unwrap_err().0,
            "invalid subnet fd00:5::1/64: it should be fd00:5::/64"
        );
        // A network: the IPv4 subnet first, then the IPv6 one.
        let mut net = Network {
            name: "appnet".into(),
            vni: 4097,
            subnet: "10.0.1.0/24".parse().unwrap(),
            subnet6: Some("fd00:5::/64".parse().unwrap()),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            ingress: false,
            endpoints: BTreeMap::new(),
            mtu: None,
            encryption: None,
        };
        assert_eq!(net.subnets_without_host_bits(), Ok(()));
        net.subnet6 = Some(n);
        assert_eq!(
            net.subnets_without_host_bits().unwrap_err().0,
            "invalid subnet fd00:5::1/64: it should be fd00:5::/64"
        );
        net.subnet = "10.0.1.1/24".parse().unwrap();
        assert_eq!(
            net.subnets_without_host_bits().unwrap_err().0,
            "invalid subnet 10.0.1.1/24: it should be 10.0.1.0/24"
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = State::default();
        s.nodes.push(Node {
            name: "n1".into(),
            addr: Ipv4Addr::new(192, 168, 1, 11),
            vtep: None,
            addr6: None,
            vtep_port: VXLAN_PORT,
            availability: Availability::Active,
        });
        let mut svc = Service::new("web");
        svc.ports.push(PublishedPort {
            protocol: Protocol::Tcp,
            published: 8080,
            target: 80,
            mode: PublishMode::Ingress,
        });
        s.services.push(svc);
        let j = serde_json::to_string(&s).unwrap();
        let back: State = serde_json::from_str(&j).unwrap();
        assert_eq!(s, back);
        assert!(serde_json::from_str::<State>(r#"{"nodes":[],"bogus":1}"#).is_err());
    }

    #[test]
    fn health_checks_default_like_docker_and_stay_out_of_old_json() {
        let mut svc = Service::new("web");
        let j = serde_json::to_string(&svc).unwrap();
        assert!(!j.contains("health"), "{j}");
        svc.health = Some(serde_json::from_str(r#"{"test":"http","path":"/healthz"}"#).unwrap());
        let h = svc.health.clone().unwrap();
        assert_eq!(
            (h.interval_ms, h.timeout_ms, h.retries),
            (30_000, 30_000, 3)
        );
        assert!(h.status_ok(200) && h.status_ok(302) && !h.status_ok(404));
        assert_eq!(svc.health_port(), Some(80));
        svc.ports.push(PublishedPort {
            protocol: Protocol::Tcp,
            published: 8080,
            target: 8000,
            mode: PublishMode::Ingress,
        });
        assert_eq!(svc.health_port(), Some(8000));
        let back: Service = serde_json::from_str(&serde_json::to_string(&svc).unwrap()).unwrap();
        assert_eq!(back, svc);
        assert!(serde_json::from_str::<HealthCheck>(r#"{"test":"grpc"}"#).is_err());
    }

    #[test]
    fn current_states_follow_swarm() {
        use CurrentState as C;
        assert_eq!(CurrentState::of(TaskState::Running, None), C::Running);
        assert_eq!(
            CurrentState::of(TaskState::Running, Some(Health::Starting)),
            C::Starting
        );
        assert_eq!(
            CurrentState::of(TaskState::Running, Some(Health::Unhealthy)),
            C::Failed
        );
        assert_eq!(
            CurrentState::of(TaskState::Running, Some(Health::Healthy)),
            C::Running
        );
        assert_eq!(
            CurrentState::of(TaskState::Shutdown, Some(Health::Healthy)),
            C::Shutdown
        );
        assert_eq!(CurrentState::of(TaskState::Draining, None), C::Draining);
    }

    #[test]
    fn ps_rows_are_tasks_with_a_status() {
        let t = Task {
            name: "web.1".into(),
            node: "n1".into(),
            addresses: vec![],
            state: TaskState::Running,
            weight: 1,
            vlan: None,
        };
        // A daemon that does not track status answers plain tasks; they still read.
        let plain: PsTask = serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
        assert_eq!(
            plain,
            PsTask {
                task: t.clone(),
                status: None
            }
        );
        let row = PsTask {
            task: t,
            status: Some(TaskStatus {
                state: CurrentState::Failed,
                age_ms: 3000,
                since_unix_ms: 1,
                health: Some(Health::Unhealthy),
                failing_streak: 3,
                error: "connection refused".into(),
            }),
        };
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["name"], "web.1");
        assert_eq!(v["status"]["state"], "failed");
        assert_eq!(serde_json::from_value::<PsTask>(v).unwrap(), row);
    }
}
