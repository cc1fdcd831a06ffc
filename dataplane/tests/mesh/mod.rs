//! A deterministic multi-node mesh in memory: several dataplane nodes, an underlay switch,
//! outside clients and fake tasks, all stepped by one clock. The pipeline tier of the tests
//! (DESIGN.md, "Tests in tiers"): meshd's own parts, not copies of them: each node runs
//! meshd's [`Worker`] loop (`poll_at`, with the mesh's clock) on in-memory ports, its
//! [`Controller`] (which compiles and publishes its tables) and its host stack.
//!
//! ```text
//!  client ──┐
//!  client ──┼────────────────────────┬────────────────────────┐  underlay switch
//!           │ uplink                 │ uplink                 │ uplink
//!      ┌────┴────┐              ┌────┴────┐              ┌────┴────┐
//!      │ node n1 │              │ node n2 │              │ node n3 │  meshd's Workers, one
//!      └────┬────┘              └────┬────┘              └────┬────┘  Shared (table, neighbours,
//!           │ tasks segment          │ tasks segment          │       rings), a Controller
//!         (no task)            web.1 ┘                  web.2 ┘
//! ```
//!
//! Clients and tasks are both [`SimHost`]s ([`HostKind::Client`], [`HostKind::Task`]).
//!
//! Every node's controller compiles its [`ServiceTable`] from the one shared [`State`] for its
//! own name, as meshctl would have every meshd do; [`Mesh::set_state`] has every controller
//! check and compile the new state (`Controller::prepare`) before any commits it
//! (`Controller::commit`, which persists it in a directory removed with the mesh), and the
//! tables are published for the workers' next step.
//! Hosts ([`SimHost`]) are small TCP/UDP stacks: an outside client on the underlay, or a task on
//! a node's tasks segment (created from the `State`, one interface per network address, MAC
//! `02:42:` + the address as Docker does). A task answers ARP for its addresses, routes
//! on-subnet destinations directly and others via its network's gateway, accepts TCP on its
//! service's target ports (and 80) and answers a request like `containous/whoami`
//! (`Hostname: web.1\nIP: 10.0.0.11\nRemoteAddr: 10.0.0.2:1024\n`), closes on FIN, resets
//! unknown segments as a kernel would, and echoes UDP datagrams prefixed with its name.
//!
//! Stepping: each [`Mesh::step`] runs one iteration of every worker's loop (a burst from each
//! port and from the handoff ring, housekeeping, the host stack's frames on worker 0, sending),
//! feeds the host stack what the workers queued for it, lets every host answer what reached
//! it, moves every frame sent to the next hop, and advances the clock by
//! [`SimConfig::step_ms`]. The dataplane reads no real clock and nothing spawns a thread, so a
//! run is the same every time.
//!
//! Each node runs its host stack ([`dataplane::host::HostStack`]) as meshd does: frames given
//! [`Verdict::Host`] reach it (and are kept in [`SimNode::host_frames`]), and what it sends goes
//! on the wire: RSTs and ICMP for the node's own addresses, the embedded DNS resolver on every
//! gateway ([`Mesh::dns`]), health checks of the node's tasks and the verdicts it tells its
//! peers. A changed health view goes to the node's controller (`Controller::set_health`),
//! which recompiles and publishes the table, as in meshd. Tasks answer HTTP requests with a status ([`Mesh::set_http_status`]), and can stop
//! serving ([`Mesh::set_serving`]: new connections refused) or fall silent
//! ([`Mesh::set_silent`]: no IP answered at all).
// A test harness: its counters, ids and lengths are small and known; each test crate uses
// part of it.
#![allow(clippy::cast_possible_truncation, dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ctl::model::{Ipv4Net, Protocol, State};

use dataplane::balance::ServiceTable;
use dataplane::buf::Pool;
use dataplane::buf::{PacketBuf, PortId};
use dataplane::control::store::StateStore;
use dataplane::control::{Controller, Persisted};
use dataplane::host::{dns, HostConfig, HostStack};
use dataplane::neigh::Neighbors;
use dataplane::pipeline::{Config, Pipeline};
use dataplane::port::fault::{FaultCounts, FaultInjector, Faults};
use dataplane::port::mem::{self, MemPort};
use dataplane::port::{Burst, Port, PortCounters, BURST};
use dataplane::shared::Shared;
use dataplane::stats::WorkerStats;
use dataplane::testkit::{self, tcp_flags::*, Mac, TcpSeen, UdpSeen};
use dataplane::worker::{Idle, Worker};

/// Frames each in-memory port queue holds (far more than a step moves).
const PORT_DEPTH: usize = 4096;
/// Buffers in each worker's pool (it makes RSTs, ICMP and fragments from them; what it sends
/// comes back to it).
const POOL: usize = 4 * BURST;

/// How a simulated mesh runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Workers (pipelines) per node; frames reaching a node are spread over them in turn, as
    /// RSS would, and [`Verdict::Handoff`] moves a frame to its owner.
    pub workers: u16,
    /// Flow-table capacity of each worker.
    pub flow_capacity: usize,
    /// Milliseconds the clock moves per step.
    pub step_ms: u64,
    /// Bound on the steps of one [`Mesh::run_until_idle`].
    pub max_steps: usize,
    /// How many times a host sends a segment or datagram before giving up.
    pub tries: u32,
    /// The wait before a retransmission (Linux's initial RTO is one second).
    pub rto_ms: u64,
    /// Run each node's host stack; without it, frames for it are only recorded.
    pub host_stack: bool,
    /// Faults on every worker's uplink (the underlay, as each node receives it): drops,
    /// duplicates, reordering, corruption ([`FaultInjector`], meshd's own port wrapper).
    pub uplink_faults: Option<Faults>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            workers: 1,
            flow_capacity: 4096,
            step_ms: 1,
            max_steps: 200_000,
            tries: 4,
            rto_ms: 1000,
            host_stack: true,
            uplink_faults: None,
        }
    }
}

/// Why the simulation could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// A node's controller refused the state (its answer's message).
    #[error("refused: {0}")]
    Refused(String),
    #[error("no host named {0:?} in the simulation")]
    UnknownHost(String),
    #[error("no node named {0:?} in the simulation")]
    UnknownNode(String),
    #[error("a host named {0:?} already exists")]
    DuplicateHost(String),
    #[error(
        "the simulation keeps its nodes: a new state must list the same nodes in the same order"
    )]
    NodesChanged,
    #[error("the mesh did not settle within {0} steps")]
    NotIdle(usize),
}

/// Why a client's exchange failed, in the words curl would use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurlError {
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("no route to host (no interface reaches the destination)")]
    NoRoute,
    #[error("connection refused (RST in answer to the SYN)")]
    Refused,
    #[error("connection timed out (no answer after {0} tries)")]
    Timeout(u32),
    #[error("connection reset by peer")]
    Reset,
    #[error("no response to the request")]
    NoResponse,
    #[error("the connection did not close cleanly")]
    NotClosed,
    #[error("unexpected response {0:?}")]
    BadResponse(String),
    #[error("no such open connection")]
    NoConnection,
}

/// What a task answered to an HTTP request, whoami-style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The `Hostname:` line: the task's name.
    pub task: String,
    /// The `IP:` line: the task address the connection reached.
    pub local_ip: Ipv4Addr,
    /// The `RemoteAddr:` line: the peer address the task saw.
    pub remote_addr: SocketAddrV4,
    pub body: String,
}

impl Reply {
    /// Reads a whoami-style body.
    pub fn parse(body: &str) -> Option<Reply> {
        let (mut task, mut ip, mut remote) = (None, None, None);
        for line in body.lines() {
            if let Some(v) = line.strip_prefix("Hostname: ") {
                task = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("IP: ") {
                ip = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("RemoteAddr: ") {
                remote = v.trim().parse().ok();
            }
        }
        Some(Reply {
            task: task?,
            local_ip: ip?,
            remote_addr: remote?,
            body: body.to_string(),
        })
    }
}

/// A task's echo of a UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpReply {
    /// The name the task prefixed the echo with.
    pub task: String,
    /// Where the reply came from, as the client saw it.
    pub from: SocketAddrV4,
    /// The echoed payload, prefix removed.
    pub payload: Vec<u8>,
}

/// Which L2 segment a host or port is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// The underlay: every node's uplink and the outside clients.
    Underlay,
    /// Node `i`'s tasks segment: its tasks port and its tasks.
    Tasks(usize),
}

/// What a host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// An outside host on the underlay.
    Client,
    /// A task on node `node` (index into [`Mesh::nodes`]).
    Task { node: usize },
}

/// One interface of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub subnet: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// The overlay network's name, or "underlay".
    pub network: String,
}

/// One TCP connection of a host, by its two ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
}

impl fmt::Display for ConnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.local, self.remote)
    }
}

/// A connection a host opened and keeps open (see [`Mesh::open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnId {
    pub host: String,
    pub key: ConnKey,
}

/// A host's TCP connection state (RFC 793 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpConnState {
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    LastAck,
    TimeWait,
    Closed,
    /// Ended by an acceptable RST from the peer.
    Reset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seg {
    flags: u8,
    seq: u32,
    ack: u32,
    payload: Vec<u8>,
}

impl Seg {
    fn new(flags: u8, seq: u32, ack: u32) -> Seg {
        Seg {
            flags,
            seq,
            ack,
            payload: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct TcpConn {
    state: TcpConnState,
    server: bool,
    iface: usize,
    snd_nxt: u32,
    rcv_nxt: u32,
    received: Vec<u8>,
    /// The last segment sent that the peer must answer, for retransmission.
    last: Option<Seg>,
}

/// `a` before `b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The whoami-style answer of task `name` on connection `key`; to an HTTP request, in an HTTP
/// response with status `status`.
fn whoami(name: &str, key: &ConnKey, request: &[u8], status: u16) -> Vec<u8> {
    let body = format!(
        "Hostname: {name}\nIP: {}\nRemoteAddr: {}\n",
        key.local.ip(),
        key.remote
    );
    if !request.starts_with(b"GET ") {
        return body.into_bytes();
    }
    let reason = if status < 400 { "OK" } else { "Error" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl TcpConn {
    /// Handles a segment of this connection; returns what to send and whether it was an
    /// unacceptable RST.
    fn on_segment(
        &mut self,
        s: &TcpSeen,
        me: &str,
        key: &ConnKey,
        status: u16,
    ) -> (Vec<Seg>, bool) {
        let mut tx = Vec::new();
        if s.flags & RST != 0 {
            //= https://www.rfc-editor.org/rfc/rfc5961#section-3.2
            //# If the RST bit is set and the sequence number exactly matches the next expected
            //# sequence number (RCV.NXT), then TCP MUST reset the connection.
            let ok = match self.state {
                TcpConnState::SynSent => s.flags & ACK != 0 && s.ack == self.snd_nxt,
                TcpConnState::Reset | TcpConnState::Closed => false,
                _ => s.seq == self.rcv_nxt,
            };
            if ok {
                self.state = TcpConnState::Reset;
            }
            return (tx, !ok);
        }
        match self.state {
            TcpConnState::Reset | TcpConnState::Closed => return (tx, false),
            TcpConnState::SynSent => {
                if s.has(SYN | ACK) && s.ack == self.snd_nxt {
                    self.rcv_nxt = s.seq.wrapping_add(1);
                    self.state = TcpConnState::Established;
                    tx.push(Seg::new(ACK, self.snd_nxt, self.rcv_nxt));
                }
                return (tx, false);
            }
            _ => {}
        }
        if s.flags & SYN != 0 {
            // A retransmitted SYN or SYN-ACK: our answer was lost.
            match (&self.last, self.state) {
                (Some(l), TcpConnState::SynReceived) => tx.push(l.clone()),
                _ => tx.push(Seg::new(ACK, self.snd_nxt, self.rcv_nxt)),
            }
            return (tx, false);
        }
        if s.flags & ACK != 0 && s.ack == self.snd_nxt {
            self.state = match self.state {
                TcpConnState::SynReceived => TcpConnState::Established,
                TcpConnState::FinWait1 => TcpConnState::FinWait2,
                TcpConnState::LastAck => TcpConnState::Closed,
                st => st,
            };
        }
        let fin = s.flags & FIN != 0;
        let len = s.payload.len() as u32 + u32::from(fin);
        if len == 0 {
            return (tx, false);
        }
        if s.seq != self.rcv_nxt {
            match (&self.last, self.server && seq_lt(s.seq, self.rcv_nxt)) {
                // A duplicate: the peer did not get our answer; send it again.
                (Some(l), true) => tx.push(l.clone()),
                _ => tx.push(Seg::new(ACK, self.snd_nxt, self.rcv_nxt)),
            }
            return (tx, false);
        }
        self.received.extend_from_slice(&s.payload);
        self.rcv_nxt = self.rcv_nxt.wrapping_add(len);
        if self.server {
            if !s.payload.is_empty() && self.state == TcpConnState::Established {
                let body = whoami(me, key, &s.payload, status);
                let seg = Seg {
                    flags: PSH | ACK,
                    seq: self.snd_nxt,
                    ack: self.rcv_nxt,
                    payload: body,
                };
                self.snd_nxt = self.snd_nxt.wrapping_add(seg.payload.len() as u32);
                self.last = Some(seg.clone());
                tx.push(seg);
            }
            if fin {
                if self.state == TcpConnState::Established {
                    let seg = Seg::new(FIN | ACK, self.snd_nxt, self.rcv_nxt);
                    self.snd_nxt = self.snd_nxt.wrapping_add(1);
                    self.state = TcpConnState::LastAck;
                    self.last = Some(seg.clone());
                    tx.push(seg);
                } else {
                    tx.push(Seg::new(ACK, self.snd_nxt, self.rcv_nxt));
                }
            }
        } else {
            if fin {
                self.state = match self.state {
                    TcpConnState::FinWait1 | TcpConnState::FinWait2 => TcpConnState::TimeWait,
                    TcpConnState::Established => TcpConnState::CloseWait,
                    st => st,
                };
            }
            tx.push(Seg::new(ACK, self.snd_nxt, self.rcv_nxt));
        }
        (tx, false)
    }
}

/// A simulated host: an outside client or a task.
#[derive(Debug)]
pub struct SimHost {
    name: String,
    kind: HostKind,
    service: Option<String>,
    link: Link,
    ifaces: Vec<Iface>,
    listen: Vec<u16>,
    arp: HashMap<Ipv4Addr, Mac>,
    /// Frames waiting for their next hop's MAC.
    waiting: Vec<(Ipv4Addr, Vec<u8>)>,
    conns: HashMap<ConnKey, TcpConn>,
    tcp_log: Vec<TcpSeen>,
    udp_log: Vec<UdpSeen>,
    udp_inbox: Vec<UdpSeen>,
    icmp_inbox: Vec<testkit::IcmpEchoSeen>,
    next_ping: u16,
    /// IPv4 frames still to lose on the way out (fault injection).
    lose_ip: usize,
    lost_ip: u64,
    bad_frames: u64,
    misdelivered: u64,
    unmatched: u64,
    bad_resets: u64,
    next_port: u16,
    next_iss: u32,
    inbox: VecDeque<Vec<u8>>,
    out: Vec<Vec<u8>>,
    /// Accepts new TCP connections (else refuses them, as with its server stopped).
    serving: bool,
    /// Answers no IPv4 at all (a hung host; ARP still answered).
    silent: bool,
    /// The status of its HTTP answers.
    http_status: u16,
    /// UDP ports it sent from as a client: what arrives there is an answer, not a request.
    client_ports: Vec<u16>,
}

impl SimHost {
    fn new(
        name: &str,
        kind: HostKind,
        service: Option<String>,
        link: Link,
        ifaces: Vec<Iface>,
        listen: Vec<u16>,
    ) -> Self {
        // A per-host initial sequence number, so hosts' segments are told apart in captures.
        let seed = name.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        SimHost {
            name: name.to_string(),
            kind,
            service,
            link,
            ifaces,
            listen,
            arp: HashMap::new(),
            waiting: Vec::new(),
            conns: HashMap::new(),
            tcp_log: Vec::new(),
            udp_log: Vec::new(),
            udp_inbox: Vec::new(),
            icmp_inbox: Vec::new(),
            next_ping: 0,
            lose_ip: 0,
            lost_ip: 0,
            bad_frames: 0,
            misdelivered: 0,
            unmatched: 0,
            bad_resets: 0,
            next_port: 40000,
            next_iss: seed,
            inbox: VecDeque::new(),
            out: Vec::new(),
            serving: true,
            silent: false,
            http_status: 200,
            client_ports: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn kind(&self) -> HostKind {
        self.kind
    }
    /// The service of a task.
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }
    pub fn link(&self) -> Link {
        self.link
    }
    pub fn ifaces(&self) -> &[Iface] {
        &self.ifaces
    }
    /// The first interface's address.
    pub fn addr(&self) -> Option<Ipv4Addr> {
        self.ifaces.first().map(|i| i.ip)
    }
    /// The address on overlay network `network`.
    pub fn addr_on(&self, network: &str) -> Option<Ipv4Addr> {
        self.ifaces
            .iter()
            .find(|i| i.network == network)
            .map(|i| i.ip)
    }
    /// Every TCP segment this host received (checksums verified), in order.
    pub fn tcp_log(&self) -> &[TcpSeen] {
        &self.tcp_log
    }
    /// Every UDP datagram this host received (checksums verified), in order.
    pub fn udp_log(&self) -> &[UdpSeen] {
        &self.udp_log
    }
    /// Frames sent to this host that failed a checksum or length check, or were of a kind no
    /// host expects. Zero in a healthy mesh.
    pub fn bad_frames(&self) -> u64 {
        self.bad_frames
    }
    /// IPv4 packets delivered to this host's MAC for an address it does not have.
    pub fn misdelivered(&self) -> u64 {
        self.misdelivered
    }
    /// TCP segments that matched no connection (answered with a RST, as a kernel does).
    pub fn unmatched(&self) -> u64 {
        self.unmatched
    }
    /// RSTs ignored because their sequence number was not acceptable (RFC 5961 §3.2).
    pub fn bad_resets(&self) -> u64 {
        self.bad_resets
    }
    /// IPv4 frames this host lost on purpose (see [`Mesh::lose_next`]).
    pub fn lost_on_purpose(&self) -> u64 {
        self.lost_ip
    }
    pub fn conn_state(&self, key: &ConnKey) -> Option<TcpConnState> {
        self.conns.get(key).map(|c| c.state)
    }
    /// Connections in any state other than closed, time-wait or reset.
    pub fn open_conns(&self) -> usize {
        self.conns
            .values()
            .filter(|c| {
                !matches!(
                    c.state,
                    TcpConnState::Closed | TcpConnState::TimeWait | TcpConnState::Reset
                )
            })
            .count()
    }

    fn owns_mac(&self, mac: &[u8]) -> bool {
        self.ifaces.iter().any(|i| i.mac[..] == *mac)
    }

    fn iface_with_ip(&self, ip: Ipv4Addr) -> Option<usize> {
        self.ifaces.iter().position(|i| i.ip == ip)
    }

    /// The interface a new conversation with `dst` leaves from: the one on its subnet, else the
    /// first with a gateway.
    fn route(&self, dst: Ipv4Addr) -> Option<usize> {
        self.ifaces
            .iter()
            .position(|i| i.subnet.contains(dst))
            .or_else(|| self.ifaces.iter().position(|i| i.gateway.is_some()))
    }

    fn next_hop(&self, iface: usize, dst: Ipv4Addr) -> Ipv4Addr {
        match self.ifaces.get(iface) {
            Some(i) if !i.subnet.contains(dst) => i.gateway.unwrap_or(dst),
            _ => dst,
        }
    }

    fn alloc_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p >= 60999 { 40000 } else { p + 1 };
        p
    }

    fn alloc_iss(&mut self) -> u32 {
        let iss = self.next_iss;
        self.next_iss = self.next_iss.wrapping_add(0x0001_0007);
        iss
    }

    /// Sends an IPv4 frame (destination MAC still to fill) from interface `iface` towards
    /// `dst`: at once when the next hop's MAC is known, else after an ARP exchange.
    fn emit_ip(&mut self, iface: usize, dst: Ipv4Addr, mut frame: Vec<u8>) {
        let hop = self.next_hop(iface, dst);
        if let Some(mac) = self.arp.get(&hop) {
            frame[0..6].copy_from_slice(mac);
            self.out.push(frame);
            return;
        }
        let Some(i) = self.ifaces.get(iface) else {
            return;
        };
        self.out.push(testkit::arp_request(i.mac, i.ip, hop));
        self.waiting.push((hop, frame));
    }

    fn send_seg(&mut self, key: &ConnKey, iface: usize, seg: &Seg) {
        let Some(i) = self.ifaces.get(iface) else {
            return;
        };
        let f = testkit::tcp_frame(
            i.mac,
            [0; 6],
            *key.local.ip(),
            key.local.port(),
            *key.remote.ip(),
            key.remote.port(),
            seg.flags,
            seg.seq,
            seg.ack,
            &seg.payload,
        );
        self.emit_ip(iface, *key.remote.ip(), f);
    }

    fn send_udp(&mut self, iface: usize, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        let Some(i) = self.ifaces.get(iface) else {
            return;
        };
        let f = testkit::udp_frame(
            i.mac,
            [0; 6],
            *from.ip(),
            from.port(),
            *to.ip(),
            to.port(),
            payload,
        );
        self.emit_ip(iface, *to.ip(), f);
    }

    /// Takes one frame off the wire.
    fn handle(&mut self, frame: &[u8]) {
        if let Some(a) = testkit::parse_arp(frame) {
            self.on_arp(a);
            return;
        }
        let Some((dst_mac, _, ethertype)) = testkit::eth(frame) else {
            self.bad_frames += 1;
            return;
        };
        if dst_mac[0] & 1 == 0 && !self.owns_mac(&dst_mac) {
            return;
        }
        if ethertype != 0x0800 {
            self.bad_frames += 1;
            return;
        }
        if self.silent {
            return;
        }
        if let Some(s) = testkit::parse_ipv4_tcp(frame) {
            let Some(iface) = self.iface_with_ip(s.dst) else {
                self.misdelivered += 1;
                return;
            };
            self.tcp_log.push(s.clone());
            self.on_tcp(iface, s);
        } else if let Some(u) = testkit::parse_ipv4_udp(frame) {
            let Some(iface) = self.iface_with_ip(u.dst) else {
                self.misdelivered += 1;
                return;
            };
            self.udp_log.push(u.clone());
            if matches!(self.kind, HostKind::Task { .. }) && !self.client_ports.contains(&u.dport) {
                let mut echo = format!("{}: ", self.name).into_bytes();
                echo.extend_from_slice(&u.payload);
                self.send_udp(
                    iface,
                    SocketAddrV4::new(u.dst, u.dport),
                    SocketAddrV4::new(u.src, u.sport),
                    &echo,
                );
            } else {
                self.udp_inbox.push(u);
            }
        } else if let Some(e) = testkit::parse_icmp_echo(frame) {
            let Some(iface) = self.iface_with_ip(e.dst) else {
                self.misdelivered += 1;
                return;
            };
            if e.reply {
                self.icmp_inbox.push(e);
            } else {
                let Some(i) = self.ifaces.get(iface) else {
                    return;
                };
                let f =
                    testkit::icmp_echo_reply(i.mac, [0; 6], e.dst, e.src, e.ident, e.seq, &e.data);
                self.emit_ip(iface, e.src, f);
            }
        } else {
            self.bad_frames += 1;
        }
    }

    fn on_arp(&mut self, a: testkit::ArpSeen) {
        let Some(iface) = self.iface_with_ip(a.target_ip) else {
            return;
        };
        if a.sender_ip.is_unspecified() {
            return;
        }
        self.arp.insert(a.sender_ip, a.sender_mac);
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].0 == a.sender_ip {
                let (_, mut f) = self.waiting.remove(i);
                f[0..6].copy_from_slice(&a.sender_mac);
                self.out.push(f);
            } else {
                i += 1;
            }
        }
        if a.request {
            if let Some(i) = self.ifaces.get(iface) {
                self.out
                    .push(testkit::arp_reply(i.mac, i.ip, a.sender_mac, a.sender_ip));
            }
        }
    }

    fn on_tcp(&mut self, iface: usize, s: TcpSeen) {
        let key = ConnKey {
            local: SocketAddrV4::new(s.dst, s.dport),
            remote: SocketAddrV4::new(s.src, s.sport),
        };
        let name = self.name.clone();
        let status = self.http_status;
        let tx = match self.conns.get_mut(&key) {
            Some(c) if c.state != TcpConnState::Closed || s.flags & SYN == 0 => {
                let (tx, bad_rst) = c.on_segment(&s, &name, &key, status);
                if bad_rst {
                    self.bad_resets += 1;
                }
                tx
            }
            _ => {
                if s.flags & RST != 0 {
                    return;
                }
                if s.flags & (SYN | ACK) == SYN && self.serving && self.listen.contains(&s.dport) {
                    let iss = self.alloc_iss();
                    let rcv = s.seq.wrapping_add(1);
                    let seg = Seg::new(SYN | ACK, iss, rcv);
                    let c = TcpConn {
                        state: TcpConnState::SynReceived,
                        server: true,
                        iface,
                        snd_nxt: iss.wrapping_add(1),
                        rcv_nxt: rcv,
                        received: Vec::new(),
                        last: Some(seg.clone()),
                    };
                    self.conns.insert(key, c);
                    vec![seg]
                } else {
                    self.unmatched += 1;
                    //= https://www.rfc-editor.org/rfc/rfc793#section-3.4
                    //# If the incoming segment has an ACK field, the reset takes its sequence
                    //# number from the ACK field of the segment, otherwise the reset has
                    //# sequence number zero and the ACK field is set to the sum of the sequence
                    //# number and segment length of the incoming segment.
                    if s.flags & ACK != 0 {
                        vec![Seg::new(RST, s.ack, 0)]
                    } else {
                        let len = s.payload.len() as u32
                            + u32::from(s.flags & SYN != 0)
                            + u32::from(s.flags & FIN != 0);
                        vec![Seg::new(RST | ACK, 0, s.seq.wrapping_add(len))]
                    }
                }
            }
        };
        for seg in &tx {
            self.send_seg(&key, iface, seg);
        }
    }

    // ---- what a client does --------------------------------------------------------------

    fn connect(&mut self, sport: Option<u16>, dst: SocketAddrV4) -> Option<ConnKey> {
        let iface = self.route(*dst.ip())?;
        let ip = self.ifaces.get(iface)?.ip;
        let sport = match sport {
            Some(p) => p,
            None => self.alloc_port(),
        };
        let key = ConnKey {
            local: SocketAddrV4::new(ip, sport),
            remote: dst,
        };
        let iss = self.alloc_iss();
        let seg = Seg::new(SYN, iss, 0);
        let c = TcpConn {
            state: TcpConnState::SynSent,
            server: false,
            iface,
            snd_nxt: iss.wrapping_add(1),
            rcv_nxt: 0,
            received: Vec::new(),
            last: Some(seg.clone()),
        };
        self.conns.insert(key, c);
        self.send_seg(&key, iface, &seg);
        Some(key)
    }

    fn retransmit(&mut self, key: &ConnKey) {
        let Some(c) = self.conns.get(key) else { return };
        if let Some(l) = c.last.clone() {
            let iface = c.iface;
            self.send_seg(key, iface, &l);
        }
    }

    fn send_data(&mut self, key: &ConnKey, data: &[u8]) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if !matches!(c.state, TcpConnState::Established | TcpConnState::CloseWait) {
            return false;
        }
        let seg = Seg {
            flags: PSH | ACK,
            seq: c.snd_nxt,
            ack: c.rcv_nxt,
            payload: data.to_vec(),
        };
        c.snd_nxt = c.snd_nxt.wrapping_add(data.len() as u32);
        c.last = Some(seg.clone());
        c.received.clear();
        let iface = c.iface;
        self.send_seg(key, iface, &seg);
        true
    }

    fn close(&mut self, key: &ConnKey) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        let next = match c.state {
            TcpConnState::Established => TcpConnState::FinWait1,
            TcpConnState::CloseWait => TcpConnState::LastAck,
            _ => return false,
        };
        let seg = Seg::new(FIN | ACK, c.snd_nxt, c.rcv_nxt);
        c.snd_nxt = c.snd_nxt.wrapping_add(1);
        c.state = next;
        c.last = Some(seg.clone());
        let iface = c.iface;
        self.send_seg(key, iface, &seg);
        true
    }

    fn udp_send(
        &mut self,
        sport: Option<u16>,
        dst: SocketAddrV4,
        payload: &[u8],
    ) -> Option<SocketAddrV4> {
        let iface = self.route(*dst.ip())?;
        let ip = self.ifaces.get(iface)?.ip;
        let sport = match sport {
            Some(p) => p,
            None => self.alloc_port(),
        };
        let local = SocketAddrV4::new(ip, sport);
        if !self.client_ports.contains(&sport) {
            self.client_ports.push(sport);
        }
        self.send_udp(iface, local, dst, payload);
        Some(local)
    }

    fn ping(&mut self, dst: Ipv4Addr, seq: u16) -> Option<u16> {
        let iface = self.route(dst)?;
        let i = self.ifaces.get(iface)?;
        let ident = 0x5100 | (self.next_iss as u16 & 0xff);
        let f = testkit::icmp_echo(i.mac, [0; 6], i.ip, dst, ident, seq, b"meshd-sim ping");
        self.emit_ip(iface, dst, f);
        Some(ident)
    }

    fn take_udp(&mut self, local: SocketAddrV4, from: SocketAddrV4) -> Option<UdpSeen> {
        let i = self.udp_inbox.iter().position(|u| {
            u.dst == *local.ip()
                && u.dport == local.port()
                && u.src == *from.ip()
                && u.sport == from.port()
        })?;
        Some(self.udp_inbox.remove(i))
    }
}

/// One worker of a node: meshd's own worker loop ([`Worker::poll_at`], with the mesh's clock)
/// over in-memory ports, whose other ends the mesh holds.
#[derive(Debug)]
struct SimWorker {
    worker: Worker,
    /// The far ends of the worker's uplink and tasks ports: frames reach the worker through
    /// them and what it sends comes out of them.
    uplink: MemPort,
    tasks: MemPort,
}

impl SimWorker {
    fn far_end(&self, port: PortId) -> &MemPort {
        match port {
            PortId::Uplink => &self.uplink,
            PortId::Tasks => &self.tasks,
        }
    }
}

/// Who put a frame on a link (it is not delivered back there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    Node(usize, PortId),
    Host(usize),
}

type Wire = Vec<(Link, Sender, Vec<u8>)>;

/// One dataplane node: meshd's workers sharing what a meshd's workers share ([`Shared`]: the
/// service table, the neighbour table, the handoff rings and the host queues), and its host
/// stack fed from the host queue as meshd's host thread is.
#[derive(Debug)]
pub struct SimNode {
    name: String,
    addr: Ipv4Addr,
    uplink_mac: Mac,
    tasks_mac: Mac,
    shared: Arc<Shared>,
    workers: Vec<SimWorker>,
    host: HostStack,
    /// meshd's controller for the node: it compiles and publishes the node's tables, from
    /// desired-state changes and from the host stack's health verdicts.
    ctl: Controller,
    host_frames: Vec<(PortId, Vec<u8>)>,
    rx_turn: usize,
}

fn link_of(node: usize, port: PortId) -> Link {
    match port {
        PortId::Uplink => Link::Underlay,
        PortId::Tasks => Link::Tasks(node),
    }
}

impl SimNode {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The underlay address (published ports answer here).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn uplink_mac(&self) -> Mac {
        self.uplink_mac
    }
    pub fn tasks_mac(&self) -> Mac {
        self.tasks_mac
    }
    /// The table the node's workers run.
    pub fn table(&self) -> Arc<ServiceTable> {
        self.shared.table.load_full()
    }
    pub fn neighbors(&self) -> &Arc<Neighbors> {
        &self.shared.neigh
    }
    pub fn workers(&self) -> usize {
        self.workers.len()
    }
    /// Worker `w`'s pipeline.
    pub fn pipeline(&self, w: usize) -> Option<&Pipeline> {
        self.workers.get(w).map(|x| &x.worker.pipeline)
    }
    /// Worker `w`'s counters.
    pub fn worker_stats(&self, w: usize) -> Option<&WorkerStats> {
        self.workers.get(w).map(|x| &x.worker.pipeline.stats)
    }
    /// The counters of all workers added up.
    pub fn stats(&self) -> WorkerStats {
        let mut s = WorkerStats::default();
        for w in &self.workers {
            s.add(&w.worker.pipeline.stats);
        }
        s
    }
    /// Frames the pipeline handed to the host stack, with the port they came in on.
    pub fn host_frames(&self) -> &[(PortId, Vec<u8>)] {
        &self.host_frames
    }
    /// RSTs the host stack sent.
    pub fn host_resets(&self) -> u64 {
        self.host.stats.rst_sent
    }
    /// The node's host stack (its counters, health verdicts).
    pub fn host(&self) -> &HostStack {
        &self.host
    }
    /// Frames moved from one worker to another ([`Verdict::Handoff`]).
    pub fn handoffs(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.worker.pipeline.stats.handoff_out)
            .sum()
    }

    /// A frame arrives on `port`: put on the next worker's port in turn.
    fn receive(&mut self, port: PortId, frame: &[u8]) {
        let n = self.workers.len().max(1);
        let w = self.rx_turn % n;
        self.rx_turn = self.rx_turn.wrapping_add(1);
        if let Some(wk) = self.workers.get(w) {
            // The far end's queue is deep enough for any test; a full one drops, as a NIC.
            let _ = wk.far_end(port).send(PacketBuf::from_frame(port, frame));
        }
    }

    /// One iteration of every worker's loop at `now` (`Worker::poll_at`: a burst from each
    /// port and the handoff ring, housekeeping, what the host stack sent on worker 0), then
    /// the host stack on what the workers gave it, as meshd's host thread. Frames sent go to
    /// `wire`.
    fn step(&mut self, idx: usize, now: u64, host_stack: bool, wire: &mut Wire) -> bool {
        let mut moved = false;
        for wk in &mut self.workers {
            moved |= wk.worker.poll_at(now);
            for port in [PortId::Uplink, PortId::Tasks] {
                while let Some(buf) = wk.far_end(port).recv() {
                    moved = true;
                    wire.push((
                        link_of(idx, port),
                        Sender::Node(idx, port),
                        buf.data().to_vec(),
                    ));
                    wk.worker.pool.put(buf);
                }
            }
        }
        let table = self.shared.table.load_full();
        while let Some(buf) = self.shared.to_host.pop() {
            moved = true;
            self.host_frames.push((buf.port, buf.data().to_vec()));
            if host_stack {
                self.host.input(&table, buf.port, buf.data(), now);
            }
            if let Some(wk) = self.workers.first_mut() {
                wk.worker.pool.put(buf);
            }
        }
        if host_stack {
            self.host.poll(&table, &self.shared.neigh, now);
            for (port, f) in self.host.take_output() {
                moved = true;
                // Sent by worker 0 on its next iteration, as meshd's host thread's frames are.
                let mut b = PacketBuf::from_frame(port, &f);
                if port == PortId::Tasks {
                    b.vlan = dataplane::host::tasks_frame_vlan(&self.shared.table.load(), &f);
                }
                let _ = self.shared.from_host.push(b);
            }
        }
        moved
    }
}

/// The MACs of node `i`: uplink and tasks port.
fn node_macs(i: usize) -> (Mac, Mac) {
    let (hi, lo) = ((i >> 8) as u8, i as u8);
    (
        [0x02, 0x4d, 0x55, 0x00, hi, lo],
        [0x02, 0x4d, 0x54, 0x00, hi, lo],
    )
}

/// A task interface's MAC: `02:42:` and the address, as Docker makes them.
fn task_mac(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A client's MAC: `02:cc:` and its address.
fn client_mac(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    [0x02, 0xcc, o[0], o[1], o[2], o[3]]
}

/// The task hosts `state` calls for.
fn task_hosts(state: &State) -> Vec<SimHost> {
    let mut out = Vec::new();
    for svc in &state.services {
        let mut listen: Vec<u16> = svc
            .ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .map(|p| p.target)
            .collect();
        listen.push(80);
        listen.sort_unstable();
        listen.dedup();
        for t in &svc.tasks {
            let Some(node) = state.nodes.iter().position(|n| n.name == t.node) else {
                continue;
            };
            let ifaces = t
                .addresses
                .iter()
                .filter_map(|a| {
                    let net = state.network(&a.network)?;
                    Some(Iface {
                        ip: a.addr,
                        mac: task_mac(a.addr),
                        subnet: net.subnet,
                        gateway: Some(net.gateway),
                        network: net.name.clone(),
                    })
                })
                .collect();
            out.push(SimHost::new(
                &t.name,
                HostKind::Task { node },
                Some(svc.name.clone()),
                Link::Tasks(node),
                ifaces,
                listen.clone(),
            ));
        }
    }
    out
}

/// A worker's uplink behind meshd's fault injector, its counts added up for the mesh.
#[derive(Debug)]
struct Faulty {
    port: FaultInjector<MemPort>,
    counts: Arc<Mutex<FaultCounts>>,
}

impl Port for Faulty {
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Burst) -> usize {
        let before = self.port.counts;
        let n = self.port.rx_burst(pool, out);
        let now = self.port.counts;
        if let Ok(mut c) = self.counts.lock() {
            c.dropped += now.dropped - before.dropped;
            c.duplicated += now.duplicated - before.duplicated;
            c.reordered += now.reordered - before.reordered;
            c.corrupted += now.corrupted - before.corrupted;
        }
        n
    }
    fn tx_burst(&mut self, frames: &mut Burst, pool: &mut Pool) -> usize {
        self.port.tx_burst(frames, pool)
    }
    fn counters(&mut self) -> PortCounters {
        self.port.counters()
    }
}

/// A controller's refusal, as the mesh reports it.
fn refused(r: ctl::proto::Response) -> SimError {
    SimError::Refused(format!("{r:?}"))
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The whole simulated mesh.
#[derive(Debug)]
pub struct Mesh {
    cfg: SimConfig,
    /// What the uplinks' fault injectors did, all nodes added up.
    faults: Arc<Mutex<FaultCounts>>,
    /// Where the nodes' controllers persist their state (removed with the mesh).
    dir: PathBuf,
    state: State,
    generation: u64,
    now: u64,
    nodes: Vec<SimNode>,
    hosts: Vec<SimHost>,
    lost: u64,
    steps: u64,
}

impl Mesh {
    /// A mesh of `state`'s nodes with one worker each, and `state`'s tasks.
    pub fn new(state: State) -> Result<Mesh, SimError> {
        Mesh::with_config(state, SimConfig::default())
    }

    pub fn with_config(state: State, cfg: SimConfig) -> Result<Mesh, SimError> {
        let workers = cfg.workers.max(1);
        let generation = 1;
        let faults = Arc::new(Mutex::new(FaultCounts::default()));
        static MESHES: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "meshd-mesh-{}-{}",
            std::process::id(),
            MESHES.fetch_add(1, Ordering::Relaxed)
        ));
        let mut nodes = Vec::with_capacity(state.nodes.len());
        for (i, n) in state.nodes.iter().enumerate() {
            let (uplink_mac, tasks_mac) = node_macs(i);
            // The controller builds the node's first table and publishes it.
            let shared = Shared::new(
                ServiceTable::empty(&n.name, n.addr),
                usize::from(workers),
                Arc::new(Neighbors::new(1024)),
            );
            let ctl = Controller::new(
                n.name.clone(),
                Persisted {
                    generation,
                    state: state.clone(),
                    revision: 0,
                },
                StateStore::new(dir.join(format!("{}.json", n.name))),
                shared.clone(),
            )
            .map_err(SimError::Refused)?;
            let sim_workers = (0..workers)
                .map(|w| {
                    let c = Config {
                        uplink_mac,
                        tasks_mac,
                        worker: w,
                        workers,
                        flow_capacity: cfg.flow_capacity,
                        ..Config::default()
                    };
                    let (up, uplink) = mem::link(PORT_DEPTH);
                    let up: Box<dyn Port + Send> = match cfg.uplink_faults {
                        Some(f) => Box::new(Faulty {
                            port: FaultInjector::new(
                                up,
                                Faults {
                                    seed: f.seed ^ ((i as u64) << 16 | u64::from(w)),
                                    ..f
                                },
                            ),
                            counts: faults.clone(),
                        }),
                        None => Box::new(up),
                    };
                    let (tk, tasks) = mem::link(PORT_DEPTH);
                    SimWorker {
                        worker: Worker::new(
                            usize::from(w),
                            c,
                            up,
                            Box::new(tk),
                            shared.clone(),
                            Idle::BusyPoll,
                            POOL,
                        ),
                        uplink,
                        tasks,
                    }
                })
                .collect();
            nodes.push(SimNode {
                name: n.name.clone(),
                addr: shared.table.load().node_addr,
                uplink_mac,
                tasks_mac,
                shared,
                workers: sim_workers,
                host: HostStack::new(HostConfig {
                    uplink_mac,
                    tasks_mac,
                    seed: 0x5eed_0000 + i as u64,
                    uplink_mtu: 1500,
                    gossip_keys: dataplane::host::gossip::Keyring::default(),
                }),
                ctl,
                host_frames: Vec::new(),
                rx_turn: 0,
            });
        }
        let mut mesh = Mesh {
            cfg,
            faults,
            dir,
            state,
            generation,
            now: 0,
            nodes,
            hosts: Vec::new(),
            lost: 0,
            steps: 0,
        };
        let hosts = task_hosts(&mesh.state);
        mesh.sync_tasks(hosts)?;
        Ok(mesh)
    }

    /// Refuses task hosts named like a client.
    fn no_client_named(&self, want: &[SimHost]) -> Result<(), SimError> {
        match want.iter().find(|w| {
            self.hosts
                .iter()
                .any(|h| h.name == w.name && h.kind == HostKind::Client)
        }) {
            Some(w) => Err(SimError::DuplicateHost(w.name.clone())),
            None => Ok(()),
        }
    }

    /// Replaces the task hosts with `want`, keeping (with their connections) those that did not
    /// change: a removed task's container is gone, a new task's container starts.
    fn sync_tasks(&mut self, want: Vec<SimHost>) -> Result<(), SimError> {
        self.no_client_named(&want)?;
        self.hosts.retain(|h| match h.kind {
            HostKind::Client => true,
            HostKind::Task { .. } => want.iter().any(|w| {
                w.name == h.name && w.link == h.link && w.ifaces == h.ifaces && w.listen == h.listen
            }),
        });
        for w in want {
            if !self.hosts.iter().any(|h| h.name == w.name) {
                self.hosts.push(w);
            }
        }
        Ok(())
    }

    /// Applies a new state on every node (each rebuilds its table with the next generation, as
    /// meshctl would have every meshd do) and starts or removes task hosts to match. An invalid
    /// state changes nothing.
    pub fn set_state(&mut self, state: State) -> Result<(), SimError> {
        if state.nodes.len() != self.nodes.len()
            || state
                .nodes
                .iter()
                .zip(&self.nodes)
                .any(|(a, b)| a.name != b.name)
        {
            return Err(SimError::NodesChanged);
        }
        let generation = self.generation + 1;
        // Every node's controller checks and compiles the state before any commits it.
        let tables = self
            .nodes
            .iter()
            .map(|n| n.ctl.prepare(&state).map_err(refused))
            .collect::<Result<Vec<_>, _>>()?;
        let want = task_hosts(&state);
        self.no_client_named(&want)?;
        for (n, t) in self.nodes.iter_mut().zip(tables) {
            n.ctl.commit(state.clone(), &t).map_err(refused)?;
            n.addr = t.node_addr;
            // Published without waiting: the workers pick it up on their next step.
            n.shared.table.store(Arc::new(t));
        }
        self.generation = generation;
        self.state = state;
        self.sync_tasks(want)
    }

    /// What the uplinks' fault injectors did ([`SimConfig::uplink_faults`]).
    pub fn fault_counts(&self) -> FaultCounts {
        self.faults.lock().map(|c| *c).unwrap_or_default()
    }

    pub fn state(&self) -> &State {
        &self.state
    }
    pub fn generation(&self) -> u64 {
        self.generation
    }
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }
    /// The simulation clock.
    pub fn now_ms(&self) -> u64 {
        self.now
    }
    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// Frames the switches had no port for.
    pub fn lost(&self) -> u64 {
        self.lost
    }
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }
    pub fn node(&self, name: &str) -> Option<&SimNode> {
        self.nodes.iter().find(|n| n.name == name)
    }
    /// A node's underlay address.
    pub fn node_addr(&self, name: &str) -> Option<Ipv4Addr> {
        self.node(name).map(|n| n.addr)
    }
    /// A node's counters, all workers added up.
    pub fn stats(&self, node: &str) -> Option<WorkerStats> {
        self.node(node).map(SimNode::stats)
    }
    /// Every node's counters added up.
    pub fn total_stats(&self) -> WorkerStats {
        let mut s = WorkerStats::default();
        for n in &self.nodes {
            s.add(&n.stats());
        }
        s
    }
    pub fn hosts(&self) -> &[SimHost] {
        &self.hosts
    }
    pub fn host(&self, name: &str) -> Option<&SimHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
    /// Frames hosts refused (bad checksum or length, unexpected kind) or got for an address
    /// they do not have, all hosts added up. Zero in a healthy mesh.
    pub fn bad_frames(&self) -> u64 {
        self.hosts
            .iter()
            .map(|h| h.bad_frames + h.misdelivered)
            .sum()
    }
    /// The state of a connection opened with [`Mesh::open`].
    pub fn conn_state(&self, conn: &ConnId) -> Option<TcpConnState> {
        self.host(&conn.host)?.conn_state(&conn.key)
    }

    fn host_idx(&self, name: &str) -> Result<usize, SimError> {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .ok_or_else(|| SimError::UnknownHost(name.to_string()))
    }

    /// Adds an outside host on the underlay (every address on-link).
    pub fn add_client(&mut self, name: &str, ip: Ipv4Addr) -> Result<(), SimError> {
        if self.hosts.iter().any(|h| h.name == name) {
            return Err(SimError::DuplicateHost(name.to_string()));
        }
        let iface = Iface {
            ip,
            mac: client_mac(ip),
            subnet: Ipv4Net {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
            },
            gateway: None,
            network: "underlay".to_string(),
        };
        self.hosts.push(SimHost::new(
            name,
            HostKind::Client,
            None,
            Link::Underlay,
            vec![iface],
            Vec::new(),
        ));
        Ok(())
    }

    /// Moves the clock (nothing else happens until the next step).
    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    /// One step: every worker processes one burst of what reached it and runs its housekeeping;
    /// every host answers what reached it; what was sent moves to the next hop; the clock
    /// moves by `step_ms`. Returns whether anything moved.
    pub fn step(&mut self) -> bool {
        let now = self.now;
        let host_stack = self.cfg.host_stack;
        let mut wire: Wire = Vec::new();
        let mut moved = false;
        for (i, node) in self.nodes.iter_mut().enumerate() {
            moved |= node.step(i, now, host_stack, &mut wire);
            // A changed health view goes to the node's controller, which recompiles and
            // publishes its table, as in meshd.
            if let Some(view) = node.host.take_view() {
                node.ctl.set_health(view);
            }
        }
        for (h, host) in self.hosts.iter_mut().enumerate() {
            while let Some(f) = host.inbox.pop_front() {
                moved = true;
                host.handle(&f);
            }
            for f in host.out.drain(..) {
                moved = true;
                if host.lose_ip > 0 && testkit::eth(&f).is_some_and(|e| e.2 == 0x0800) {
                    host.lose_ip -= 1;
                    host.lost_ip += 1;
                    continue;
                }
                wire.push((host.link, Sender::Host(h), f));
            }
        }
        for (link, from, f) in wire {
            self.deliver(link, from, &f);
        }
        self.now += self.cfg.step_ms;
        self.steps += 1;
        moved
    }

    /// Steps until nothing has moved for long enough that every worker's flow sweep has gone
    /// round its table once (so ended flows have sent their resets). Returns the steps taken.
    pub fn run_until_idle(&mut self) -> Result<usize, SimError> {
        let budget = Config::default().sweep_budget.max(1);
        let quiet_needed = self.cfg.flow_capacity.max(16).div_ceil(budget) + 2;
        let (mut quiet, mut steps) = (0, 0);
        while quiet < quiet_needed {
            if steps >= self.cfg.max_steps {
                return Err(SimError::NotIdle(steps));
            }
            if self.step() {
                quiet = 0;
            } else {
                quiet += 1;
            }
            steps += 1;
        }
        Ok(steps)
    }

    /// Puts a frame on the wire: delivered to every port of `link` whose MAC it is addressed
    /// to (or all of them for broadcast and multicast), except the sender's.
    fn deliver(&mut self, link: Link, from: Sender, frame: &[u8]) {
        let Some(dst) = frame.get(0..6) else {
            self.lost += 1;
            return;
        };
        let group = dst[0] & 1 != 0;
        let mut n = 0;
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let port = match link {
                Link::Underlay => PortId::Uplink,
                Link::Tasks(j) if j == i => PortId::Tasks,
                Link::Tasks(_) => continue,
            };
            if from == Sender::Node(i, port) {
                continue;
            }
            let mac = match port {
                PortId::Uplink => node.uplink_mac,
                PortId::Tasks => node.tasks_mac,
            };
            if group || *dst == mac {
                node.receive(port, frame);
                n += 1;
            }
        }
        for (h, host) in self.hosts.iter_mut().enumerate() {
            if host.link != link || from == Sender::Host(h) {
                continue;
            }
            if group || host.owns_mac(dst) {
                host.inbox.push_back(frame.to_vec());
                n += 1;
            }
        }
        if n == 0 {
            self.lost += 1;
        }
    }

    /// Sends a raw frame from host `host` onto its link (delivered at the next step).
    pub fn send_raw(&mut self, host: &str, frame: &[u8]) -> Result<(), SimError> {
        let h = self.host_idx(host)?;
        self.hosts[h].out.push(frame.to_vec());
        Ok(())
    }

    /// Makes `host` lose the next `n` IPv4 frames it sends (ARP still goes through): for
    /// checking that lost segments are sent again.
    pub fn lose_next(&mut self, host: &str, n: usize) -> Result<(), SimError> {
        let h = self.host_idx(host)?;
        self.hosts[h].lose_ip = n;
        Ok(())
    }

    /// Puts a frame straight into a node's port, bypassing the switch (as if the NIC
    /// received it whatever its destination MAC).
    pub fn inject(&mut self, node: &str, port: PortId, frame: &[u8]) -> Result<(), SimError> {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| SimError::UnknownNode(node.to_string()))?;
        n.receive(port, frame);
        Ok(())
    }

    // ---- clients ---------------------------------------------------------------------------

    /// Opens a TCP connection from `host` to `ip:port` and leaves it open; the SYN is sent again
    /// (after [`SimConfig::rto_ms`]) while unanswered, as a TCP stack does.
    pub fn open(&mut self, host: &str, ip: Ipv4Addr, port: u16) -> Result<ConnId, CurlError> {
        self.open_from(host, None, ip, port)
    }

    /// [`Mesh::open`] from a chosen source port.
    pub fn open_from(
        &mut self,
        host: &str,
        sport: Option<u16>,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<ConnId, CurlError> {
        let h = self.host_idx(host)?;
        let key = self.hosts[h]
            .connect(sport, SocketAddrV4::new(ip, port))
            .ok_or(CurlError::NoRoute)?;
        let tries = self.cfg.tries.max(1);
        for attempt in 1..=tries {
            self.run_until_idle()?;
            match self.hosts[h].conn_state(&key) {
                Some(TcpConnState::Established) => {
                    return Ok(ConnId {
                        host: host.to_string(),
                        key,
                    })
                }
                Some(TcpConnState::Reset) => return Err(CurlError::Refused),
                _ => {}
            }
            if attempt < tries {
                self.advance(self.cfg.rto_ms);
                self.hosts[h].retransmit(&key);
            }
        }
        Err(CurlError::Timeout(tries))
    }

    fn conn_error(&self, h: usize, key: &ConnKey) -> CurlError {
        match self.hosts[h].conn_state(key) {
            Some(TcpConnState::Reset) => CurlError::Reset,
            _ => CurlError::NoConnection,
        }
    }

    /// Sends an HTTP request on an open connection and reads the whoami-style answer.
    pub fn request(&mut self, conn: &ConnId) -> Result<Reply, CurlError> {
        let h = self.host_idx(&conn.host)?;
        let key = conn.key;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: meshd-sim\r\nAccept: */*\r\n\r\n",
            key.remote
        );
        if !self.hosts[h].send_data(&key, req.as_bytes()) {
            return Err(self.conn_error(h, &key));
        }
        let tries = self.cfg.tries.max(1);
        for attempt in 1..=tries {
            self.run_until_idle()?;
            let Some(c) = self.hosts[h].conns.get_mut(&key) else {
                return Err(CurlError::NoConnection);
            };
            if c.state == TcpConnState::Reset {
                return Err(CurlError::Reset);
            }
            if !c.received.is_empty() {
                let body = String::from_utf8_lossy(&std::mem::take(&mut c.received)).into_owned();
                return Reply::parse(&body).ok_or(CurlError::BadResponse(body));
            }
            if attempt < tries {
                self.advance(self.cfg.rto_ms);
                self.hosts[h].retransmit(&key);
            }
        }
        Err(CurlError::NoResponse)
    }

    /// Sends `data` on an open connection and reads until `done` says the answer is complete.
    pub fn exchange(
        &mut self,
        conn: &ConnId,
        data: &[u8],
        done: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>, CurlError> {
        let h = self.host_idx(&conn.host)?;
        let key = conn.key;
        if !self.hosts[h].send_data(&key, data) {
            return Err(self.conn_error(h, &key));
        }
        let tries = self.cfg.tries.max(1);
        for attempt in 1..=tries {
            self.run_until_idle()?;
            let Some(c) = self.hosts[h].conns.get_mut(&key) else {
                return Err(CurlError::NoConnection);
            };
            if done(&c.received) {
                return Ok(std::mem::take(&mut c.received));
            }
            if c.state == TcpConnState::Reset {
                return Err(CurlError::Reset);
            }
            if attempt < tries {
                self.advance(self.cfg.rto_ms);
                self.hosts[h].retransmit(&key);
            }
        }
        Err(CurlError::NoResponse)
    }

    /// Closes an open connection (FIN, the peer's FIN, the last ACK).
    pub fn close(&mut self, conn: &ConnId) -> Result<(), CurlError> {
        let h = self.host_idx(&conn.host)?;
        let key = conn.key;
        if !self.hosts[h].close(&key) {
            return Err(self.conn_error(h, &key));
        }
        let tries = self.cfg.tries.max(1);
        for attempt in 1..=tries {
            self.run_until_idle()?;
            match self.hosts[h].conn_state(&key) {
                Some(TcpConnState::TimeWait | TcpConnState::Closed) => return Ok(()),
                Some(TcpConnState::Reset) => return Err(CurlError::Reset),
                _ => {}
            }
            if attempt < tries {
                self.advance(self.cfg.rto_ms);
                self.hosts[h].retransmit(&key);
            }
        }
        Err(CurlError::NotClosed)
    }

    /// `curl http://ip:port/` from `host`: connect, request, answer, close.
    pub fn curl(&mut self, host: &str, ip: Ipv4Addr, port: u16) -> Result<Reply, CurlError> {
        self.curl_from(host, None, ip, port)
    }

    /// [`Mesh::curl`] from a chosen source port.
    pub fn curl_from(
        &mut self,
        host: &str,
        sport: Option<u16>,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<Reply, CurlError> {
        let conn = self.open_from(host, sport, ip, port)?;
        let reply = self.request(&conn)?;
        self.close(&conn)?;
        Ok(reply)
    }

    /// A task acting as a client (for example towards a service VIP).
    pub fn task_curl(&mut self, task: &str, ip: Ipv4Addr, port: u16) -> Result<Reply, CurlError> {
        self.curl(task, ip, port)
    }

    /// `ping ip` from `host`: an ICMP echo request, sent again while unanswered; returns the
    /// address the reply came from.
    pub fn ping(&mut self, host: &str, ip: Ipv4Addr) -> Result<Ipv4Addr, CurlError> {
        let h = self.host_idx(host)?;
        let seq = self.hosts[h].next_ping;
        self.hosts[h].next_ping = seq.wrapping_add(1);
        let tries = self.cfg.tries.max(1);
        for attempt in 1..=tries {
            let ident = self.hosts[h].ping(ip, seq).ok_or(CurlError::NoRoute)?;
            self.run_until_idle()?;
            let inbox = &mut self.hosts[h].icmp_inbox;
            if let Some(i) = inbox
                .iter()
                .position(|e| e.ident == ident && e.seq == seq && e.src == ip)
            {
                return Ok(inbox.remove(i).src);
            }
            if attempt < tries {
                self.advance(self.cfg.rto_ms);
            }
        }
        Err(CurlError::Timeout(tries))
    }

    /// `dig @server name type` from `host` over UDP: the answer, parsed.
    pub fn dns(
        &mut self,
        host: &str,
        server: Ipv4Addr,
        name: &str,
        qtype: u16,
    ) -> Result<dns::Parsed, CurlError> {
        let id = (self.steps as u16).wrapping_mul(31).wrapping_add(7);
        let q = dns::build_query(id, name, qtype, Some(1232));
        let answer = self
            .dns_raw(host, server, &q)?
            .ok_or(CurlError::NoResponse)?;
        let p = dns::parse_answer(&answer)
            .ok_or_else(|| CurlError::BadResponse(format!("{answer:02x?}")))?;
        if p.id != id {
            return Err(CurlError::BadResponse(format!(
                "answer to query {} for {id}",
                p.id
            )));
        }
        Ok(p)
    }

    /// Sends `msg` from `host` to `server:53` over UDP; the answer's bytes, or `None` when
    /// nothing came back after [`SimConfig::tries`] sends.
    pub fn dns_raw(
        &mut self,
        host: &str,
        server: Ipv4Addr,
        msg: &[u8],
    ) -> Result<Option<Vec<u8>>, CurlError> {
        let h = self.host_idx(host)?;
        let dst = SocketAddrV4::new(server, 53);
        let local = self.hosts[h]
            .udp_send(None, dst, msg)
            .ok_or(CurlError::NoRoute)?;
        let tries = self.cfg.tries.max(1);
        for attempt in 1..=tries {
            self.run_until_idle()?;
            if let Some(u) = self.hosts[h].take_udp(local, dst) {
                return Ok(Some(u.payload));
            }
            if attempt < tries {
                self.advance(self.cfg.rto_ms);
                self.hosts[h].udp_send(Some(local.port()), dst, msg);
            }
        }
        Ok(None)
    }

    /// `dig +tcp @server name type` from `host`: the query over TCP (a two-byte length first).
    pub fn dns_tcp(
        &mut self,
        host: &str,
        server: Ipv4Addr,
        name: &str,
        qtype: u16,
    ) -> Result<dns::Parsed, CurlError> {
        let conn = self.open(host, server, 53)?;
        let q = dns::build_query(0x7cb, name, qtype, None);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        let complete =
            |b: &[u8]| b.len() >= 2 && b.len() >= 2 + usize::from(u16::from_be_bytes([b[0], b[1]]));
        let got = self.exchange(&conn, &framed, complete)?;
        self.close(&conn)?;
        let len = usize::from(u16::from_be_bytes([got[0], got[1]]));
        dns::parse_answer(&got[2..2 + len])
            .ok_or_else(|| CurlError::BadResponse(format!("{got:02x?}")))
    }

    /// Gives node `node`'s resolver an upstream for names that are not the mesh's.
    pub fn set_dns_upstream(
        &mut self,
        node: &str,
        up: Box<dyn dataplane::host::Upstream>,
    ) -> Result<(), SimError> {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| SimError::UnknownNode(node.to_string()))?;
        n.host.set_upstream(up);
        Ok(())
    }

    /// Makes task `task` accept new TCP connections or refuse them (its server stopped).
    pub fn set_serving(&mut self, task: &str, serving: bool) -> Result<(), SimError> {
        let h = self.host_idx(task)?;
        self.hosts[h].serving = serving;
        Ok(())
    }

    /// Makes task `task` answer no IPv4 at all (hung), or answer again.
    pub fn set_silent(&mut self, task: &str, silent: bool) -> Result<(), SimError> {
        let h = self.host_idx(task)?;
        self.hosts[h].silent = silent;
        Ok(())
    }

    /// The status of task `task`'s HTTP answers.
    pub fn set_http_status(&mut self, task: &str, status: u16) -> Result<(), SimError> {
        let h = self.host_idx(task)?;
        self.hosts[h].http_status = status;
        Ok(())
    }

    /// Steps for `ms` milliseconds of simulated time (whatever moves).
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// Steps until `cond` holds or `ms` milliseconds passed; whether it held, and when.
    pub fn run_until(&mut self, ms: u64, mut cond: impl FnMut(&Mesh) -> bool) -> Option<u64> {
        let end = self.now + ms;
        while self.now < end {
            if cond(self) {
                return Some(self.now);
            }
            self.step();
        }
        cond(self).then_some(self.now)
    }

    /// Task `task`'s health as node `node` compiled it into its table (`None`: no check).
    pub fn health(&self, node: &str, task: &str) -> Option<ctl::model::Health> {
        let t = self.node(node)?.table();
        t.tasks.get(t.task_by_name(task)? as usize)?.health
    }

    /// Sends a UDP datagram from `host` to `ip:port` and waits for a task's echo (sent again
    /// while unanswered, as an application would).
    pub fn udp(
        &mut self,
        host: &str,
        ip: Ipv4Addr,
        port: u16,
        payload: &[u8],
    ) -> Result<UdpReply, CurlError> {
        self.udp_from(host, None, ip, port, payload)
    }

    /// [`Mesh::udp`] from a chosen source port (the same port is the same flow).
    pub fn udp_from(
        &mut self,
        host: &str,
        sport: Option<u16>,
        ip: Ipv4Addr,
        port: u16,
        payload: &[u8],
    ) -> Result<UdpReply, CurlError> {
        let h = self.host_idx(host)?;
        let dst = SocketAddrV4::new(ip, port);
        let local = self.hosts[h]
            .udp_send(sport, dst, payload)
            .ok_or(CurlError::NoRoute)?;
        let tries = self.cfg.tries.max(1);
        for attempt in 1..=tries {
            self.run_until_idle()?;
            if let Some(u) = self.hosts[h].take_udp(local, dst) {
                let text = String::from_utf8_lossy(&u.payload).into_owned();
                let Some((task, rest)) = text.split_once(": ") else {
                    return Err(CurlError::BadResponse(text));
                };
                return Ok(UdpReply {
                    task: task.to_string(),
                    from: SocketAddrV4::new(u.src, u.sport),
                    payload: rest.as_bytes().to_vec(),
                });
            }
            if attempt < tries {
                self.advance(self.cfg.rto_ms);
                self.hosts[h].udp_send(Some(local.port()), dst, payload);
            }
        }
        Err(CurlError::Timeout(tries))
    }
}

#[allow(unused_imports)]
pub use dataplane::testkit::{node, task, three_nodes};
