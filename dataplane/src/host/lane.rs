//! One overlay network's share of the host stack on this node: a smoltcp [`Interface`] holding
//! the network's gateway address (and on a dual-stack network its IPv6 twin), with the embedded
//! resolver's sockets (UDP 53, and TCP 53 for answers that do not fit, on both addresses) and
//! the health probes' TCP client sockets.
//!
//! The interface's device speaks IP (`Medium::Ip`): the lane strips the Ethernet header of
//! frames from local tasks (learning each task's MAC from them) and adds one to what smoltcp
//! sends, the task's MAC coming from those frames or from the neighbour table the pipeline
//! keeps. ARP for the gateway is the pipeline's job (it answers in place), so smoltcp never
//! needs to resolve anything itself, and never waits on its neighbour cache's one-second rate
//! limit. For a task that has not spoken yet (a first health check), the lane asks with an ARP
//! request of its own; the pipeline learns the answer and the packet goes out at the next poll.
//!
//! smoltcp answers what reaches the gateway and no socket wants: a TCP segment with a RST, a
//! UDP datagram with an ICMP port unreachable.
//!
//! Over IPv6 (a task asking the gateway's twin) the same: a task's twin names its IPv4 address
//! in its last 32 bits, so its MAC is learnt, looked up and asked for (ARP) by that address, and
//! its frames go out as IPv6. No Neighbor Discovery: the pipeline answers it for the twin.

use std::collections::{HashMap, VecDeque};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, HardwareAddress, IpAddress, IpCidr,
    IpEndpoint, IpListenEndpoint, Ipv4Address, Ipv4Packet, Ipv6Address, Ipv6Packet,
};

use super::health::{Outcome, Probe};
use crate::neigh::Neighbors;
use ctl::model::HealthTest;

const ETH: usize = 14;
/// TCP connections the resolver serves at once on one network.
const DNS_TCP_SOCKETS: usize = 16;
/// Of which one client address may hold at most this many (more are reset as they open).
const DNS_TCP_PER_CLIENT: usize = 2;
/// The largest DNS message over TCP (RFC 1035 §4.2.2: a two-byte length).
const DNS_TCP_MAX: usize = 65535;
/// Health probes' source ports: below 1024, where the pipeline never takes a masquerade port, so
/// a probe's reply can never be mistaken for a flow's.
const PROBE_PORTS: std::ops::Range<u16> = 600..1024;
/// How much of an HTTP answer a probe reads to find its status line.
const PROBE_READ_MAX: usize = 2048;
/// Packets waiting for a task's MAC are dropped after this long (TCP sends again).
const PENDING_MS: u64 = 2000;
/// An ARP request for the same address at most this often.
const ARP_EVERY_MS: u64 = 500;
/// An idle resolver TCP connection is closed after this long (RFC 7766 §6.2.3 suggests seconds),
/// and reset if it has not closed after twice as long. Also smoltcp's retransmission give-up.
const DNS_TCP_IDLE: Duration = Duration::from_secs(5);
const DNS_TCP_IDLE_MS: u64 = 5000;

/// A device over two queues of IP packets.
#[derive(Debug, Default)]
struct LaneDevice {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Rx(Vec<u8>);

#[derive(Debug)]
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}

impl Device for LaneDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        // The tasks' segment is plain Ethernet.
        c.max_transmission_unit = 1500;
        c
    }
}

/// How a DNS query reached the resolver, to send its answer the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Udp,
    Tcp(SocketHandle),
}

/// A DNS query for the resolver.
#[derive(Debug, Clone)]
pub struct DnsRequest {
    pub from: IpEndpoint,
    /// The address it was sent to (the gateway or its twin), which the answer comes from.
    pub to: IpAddress,
    pub via: Via,
    pub msg: Vec<u8>,
}

#[derive(Debug)]
struct ProbeConn {
    probe: Probe,
    handle: SocketHandle,
    established: bool,
    sent: bool,
    response: Vec<u8>,
}

#[derive(Debug, Default)]
struct DnsConn {
    buf: Vec<u8>,
    /// The client, from when the connection opened (`None` while listening): a task's IPv4
    /// address, also when it asks from its twin (its share is the task's, in both families).
    peer: Option<Ipv4Address>,
    /// When it opened, and when it last received a byte (ms).
    since: u64,
    last: u64,
}

/// What a poll of a lane produced besides frames.
#[derive(Debug, Default)]
pub struct LaneEvents {
    pub dns: Vec<DnsRequest>,
    /// Resolver TCP connections reset for their client's share.
    pub dns_tcp_refused: u64,
    pub outcomes: Vec<(u64, u32, Outcome)>,
}

/// One network's host-side interface.
pub struct Lane {
    pub vni: u32,
    pub gateway: Ipv4Address,
    pub prefix: u8,
    /// The gateway's IPv6 twin and the network's IPv6 prefix length, on a dual-stack network.
    pub gateway6: Option<(Ipv6Address, u8)>,
    tasks_mac: [u8; 6],
    iface: Interface,
    dev: LaneDevice,
    sockets: SocketSet<'static>,
    udp: SocketHandle,
    dns_tcp: Vec<(SocketHandle, DnsConn)>,
    probes: Vec<ProbeConn>,
    /// Aborted probe sockets, removed once their RST is out.
    closing: Vec<(SocketHandle, u64)>,
    macs: HashMap<Ipv4Address, [u8; 6]>,
    pending: Vec<(Ipv4Address, u64, Vec<u8>)>,
    arp_asked: HashMap<Ipv4Address, u64>,
    next_port: u16,
    /// Frames to send on the tasks port.
    pub out: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("vni", &self.vni)
            .field("gateway", &self.gateway)
            .field("probes", &self.probes.len())
            .finish()
    }
}

fn is_unicast(a: Ipv4Address) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast())
}

/// The resolver's port on every address of the lane (the gateway's, its twin's).
const DNS_PORT: IpListenEndpoint = IpListenEndpoint {
    addr: None,
    port: 53,
};

/// The IPv4 address twin `a` names in its last 32 bits (a task's key for its MAC), when `a` is
/// a twin on the network whose gateway's twin is `gateway6`: its first 96 bits are that one's.
pub(super) fn twin_of(gateway6: Option<(Ipv6Address, u8)>, a: Ipv6Address) -> Option<Ipv4Address> {
    let (g, _) = gateway6?;
    if (u128::from(a) ^ u128::from(g)) >> 32 != 0 {
        return None;
    }
    let o = a.octets();
    Some(Ipv4Address::new(o[12], o[13], o[14], o[15]))
}

fn udp_socket() -> udp::Socket<'static> {
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0; 64 * 1024]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0; 128 * 1024]);
    udp::Socket::new(rx, tx)
}

fn dns_tcp_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 4096]),
        tcp::SocketBuffer::new(vec![0; DNS_TCP_MAX + 2]),
    );
    s.set_timeout(Some(DNS_TCP_IDLE));
    s
}

impl Lane {
    /// A lane for the network with VNI `vni` whose gateway is `gateway/prefix` (and, on a
    /// dual-stack network, whose twin is `gateway6`); `None` when the gateway cannot be an
    /// interface address.
    // Casts: a remainder below the probe port range's width.
    #[allow(clippy::cast_possible_truncation)]
    pub fn new(
        vni: u32,
        gateway: Ipv4Address,
        prefix: u8,
        gateway6: Option<(Ipv6Address, u8)>,
        tasks_mac: [u8; 6],
        seed: u64,
        now: u64,
    ) -> Option<Lane> {
        if !is_unicast(gateway) || prefix > 32 {
            return None;
        }
        let mut dev = LaneDevice::default();
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = seed ^ u64::from(vni);
        let mut iface = Interface::new(cfg, &mut dev, Instant::from_millis(now as i64));
        let mut ok = true;
        if gateway6.is_some_and(|(a, len)| {
            len > 128 || a.is_unspecified() || a.is_multicast() || a.is_loopback()
        }) {
            return None;
        }
        iface.update_ip_addrs(|a| {
            ok = a
                .push(IpCidr::new(IpAddress::Ipv4(gateway), prefix))
                .is_ok()
                && gateway6
                    .is_none_or(|(g6, len)| a.push(IpCidr::new(IpAddress::Ipv6(g6), len)).is_ok());
        });
        if !ok {
            return None;
        }
        let mut sockets = SocketSet::new(Vec::new());
        let mut u = udp_socket();
        // Bound to the port alone: the interface holds only the gateway's addresses.
        u.bind(DNS_PORT).ok()?;
        let udp = sockets.add(u);
        let mut dns_tcp = Vec::new();
        for _ in 0..DNS_TCP_SOCKETS {
            dns_tcp.push((sockets.add(dns_tcp_socket()), DnsConn::default()));
        }
        let mut lane = Lane {
            vni,
            gateway,
            prefix,
            gateway6,
            tasks_mac,
            iface,
            dev,
            sockets,
            udp,
            dns_tcp,
            probes: Vec::new(),
            closing: Vec::new(),
            macs: HashMap::new(),
            pending: Vec::new(),
            arp_asked: HashMap::new(),
            next_port: PROBE_PORTS.start
                + (seed % u64::from(PROBE_PORTS.end - PROBE_PORTS.start)) as u16,
            out: Vec::new(),
        };
        lane.listen();
        Some(lane)
    }

    /// Resets the newest resolver connections of any client holding more than its share;
    /// returns how many.
    fn limit_dns_clients(&mut self) -> u64 {
        let mut open: Vec<(Ipv4Address, u64, SocketHandle)> = self
            .dns_tcp
            .iter()
            .filter_map(|(h, c)| Some((c.peer?, c.since, *h)))
            .collect();
        open.sort_unstable_by_key(|&(a, since, _)| (a, since));
        let (mut run, mut refused) = (0, 0);
        for i in 0..open.len() {
            run = if i > 0 && open[i].0 == open[i - 1].0 {
                run + 1
            } else {
                1
            };
            if run > DNS_TCP_PER_CLIENT {
                self.sockets.get_mut::<tcp::Socket>(open[i].2).abort();
                refused += 1;
            }
        }
        refused
    }

    /// Keeps every resolver TCP socket that is not serving listening; an aborted one once
    /// its RST is out (smoltcp forgets the connection when it sends it; listening before
    /// would forget it unsent).
    fn listen(&mut self) {
        for (h, conn) in &mut self.dns_tcp {
            let s = self.sockets.get_mut::<tcp::Socket>(*h);
            if s.state() == tcp::State::Closed && s.local_endpoint().is_none() {
                conn.buf.clear();
                let _ = s.listen(DNS_PORT);
            }
        }
    }

    /// A frame from a local task to the gateway or (IPv6) to its twin.
    pub fn input(&mut self, frame: &[u8]) {
        let (Some(eth), Some(ip)) = (frame.get(..ETH), frame.get(ETH..)) else {
            return;
        };
        let src = match frame.get(12..14) {
            Some([0x08, 0x00]) => Ipv4Packet::new_checked(ip).ok().map(|p| p.src_addr()),
            Some([0x86, 0xdd]) => Ipv6Packet::new_checked(ip)
                .ok()
                .and_then(|p| twin_of(self.gateway6, p.src_addr())),
            _ => None,
        };
        if let Some(src) = src {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&eth[6..12]);
            self.macs.insert(src, mac);
        }
        self.dev.rx.push_back(ip.to_vec());
    }

    /// Starts a probe from the gateway to `p.addr:p.port`.
    pub fn start_probe(&mut self, p: Probe, now: u64) -> Result<(), Outcome> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; PROBE_READ_MAX]),
            tcp::SocketBuffer::new(vec![0; 2048]),
        );
        s.set_nagle_enabled(false);
        let span = PROBE_PORTS.end - PROBE_PORTS.start;
        let mut port = None;
        for _ in 0..span {
            let cand = self.next_port;
            self.next_port = if cand + 1 >= PROBE_PORTS.end {
                PROBE_PORTS.start
            } else {
                cand + 1
            };
            if !self.port_busy(cand) {
                port = Some(cand);
                break;
            }
        }
        let Some(port) = port else {
            return Err(Outcome::Fail("no free source port for the check".into()));
        };
        let remote = IpEndpoint::new(IpAddress::Ipv4(p.addr), p.port);
        let local = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(self.gateway)),
            port,
        };
        if let Err(e) = s.connect(self.iface.context(), remote, local) {
            return Err(Outcome::Fail(format!("cannot connect: {e}")));
        }
        let handle = self.sockets.add(s);
        self.probes.push(ProbeConn {
            probe: p,
            handle,
            established: false,
            sent: false,
            response: Vec::new(),
        });
        let _ = now;
        Ok(())
    }

    fn port_busy(&self, port: u16) -> bool {
        let busy = |h: &SocketHandle| {
            self.sockets
                .get::<tcp::Socket>(*h)
                .local_endpoint()
                .is_some_and(|e| e.port == port)
        };
        self.probes.iter().any(|c| busy(&c.handle)) || self.closing.iter().any(|(h, _)| busy(h))
    }

    /// Aborts the probe `(uid, seq)` (timed out): a RST goes to the task.
    pub fn abort_probe(&mut self, uid: u64, seq: u32, now: u64) {
        if let Some(i) = self
            .probes
            .iter()
            .position(|c| c.probe.uid == uid && c.probe.seq == seq)
        {
            let c = self.probes.swap_remove(i);
            self.sockets.get_mut::<tcp::Socket>(c.handle).abort();
            self.closing.push((c.handle, now));
        }
    }

    /// Sends a DNS answer the way its query came.
    pub fn answer(&mut self, req: &DnsRequest, reply: &[u8]) -> bool {
        match req.via {
            Via::Udp => {
                let meta = udp::UdpMetadata {
                    endpoint: req.from,
                    local_address: Some(req.to),
                    meta: Default::default(),
                };
                self.sockets
                    .get_mut::<udp::Socket>(self.udp)
                    .send_slice(reply, meta)
                    .is_ok()
            }
            Via::Tcp(h) => {
                let Some((_, _)) = self.dns_tcp.iter().find(|(x, _)| *x == h) else {
                    return false;
                };
                let s = self.sockets.get_mut::<tcp::Socket>(h);
                let Ok(len) = u16::try_from(reply.len()) else {
                    return false;
                };
                if !s.may_send() || s.send_capacity() - s.send_queue() < reply.len() + 2 {
                    return false;
                }
                let a = s.send_slice(&len.to_be_bytes()).unwrap_or(0);
                let b = s.send_slice(reply).unwrap_or(0);
                a + b == reply.len() + 2
            }
        }
    }

    /// Runs the interface: takes what arrived, serves the sockets, and turns what smoltcp sent
    /// into frames in [`Lane::out`]. `neigh` is the pipeline's neighbour table.
    pub fn poll(&mut self, now: u64, neigh: &Neighbors) -> LaneEvents {
        let ts = Instant::from_millis(now as i64);
        self.iface.poll(ts, &mut self.dev, &mut self.sockets);
        let mut ev = LaneEvents::default();
        // UDP queries.
        let u = self.sockets.get_mut::<udp::Socket>(self.udp);
        while let Ok((data, meta)) = u.recv() {
            ev.dns.push(DnsRequest {
                from: meta.endpoint,
                to: meta.local_address.unwrap_or(IpAddress::Ipv4(self.gateway)),
                via: Via::Udp,
                msg: data.to_vec(),
            });
        }
        // TCP queries: two-byte length, then the message (RFC 1035 §4.2.2). Each connection
        // is closed when idle for DNS_TCP_IDLE, and a client over its share is reset.
        for (h, conn) in &mut self.dns_tcp {
            let s = self.sockets.get_mut::<tcp::Socket>(*h);
            match (s.state(), s.remote_endpoint()) {
                (tcp::State::Listen | tcp::State::Closed, _) | (_, None) => {
                    conn.peer = None;
                    continue;
                }
                (_, Some(ep)) if conn.peer.is_none() => {
                    let peer = match ep.addr {
                        IpAddress::Ipv4(a) => Some(a),
                        IpAddress::Ipv6(a) => twin_of(self.gateway6, a),
                    };
                    let Some(a) = peer else {
                        s.abort();
                        continue;
                    };
                    conn.peer = Some(a);
                    conn.since = now;
                    conn.last = now;
                }
                _ => {}
            }
            if s.can_recv() {
                conn.last = now;
            }
            let idle = now.saturating_sub(conn.last);
            if idle > 2 * DNS_TCP_IDLE_MS {
                s.abort();
                continue;
            }
            if idle > DNS_TCP_IDLE_MS {
                s.close();
            }
            while s.can_recv() {
                let room = (DNS_TCP_MAX + 2).saturating_sub(conn.buf.len());
                let got = s.recv(|b| {
                    let n = b.len().min(room);
                    (n, b[..n].to_vec())
                });
                match got {
                    Ok(b) if !b.is_empty() => conn.buf.extend_from_slice(&b),
                    _ => break,
                }
            }
            while conn.buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([conn.buf[0], conn.buf[1]]));
                if conn.buf.len() < 2 + len {
                    break;
                }
                let msg = conn.buf[2..2 + len].to_vec();
                conn.buf.drain(..2 + len);
                if let (Some(from), Some(to)) = (s.remote_endpoint(), s.local_endpoint()) {
                    ev.dns.push(DnsRequest {
                        from,
                        to: to.addr,
                        via: Via::Tcp(*h),
                        msg,
                    });
                }
            }
            if s.state() == tcp::State::CloseWait {
                s.close();
            }
        }
        ev.dns_tcp_refused = self.limit_dns_clients();
        // Probes.
        let mut done = Vec::new();
        for (i, c) in self.probes.iter_mut().enumerate() {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            let state = s.state();
            if matches!(state, tcp::State::Established | tcp::State::CloseWait) {
                c.established = true;
            }
            let outcome = match c.probe.test {
                HealthTest::Tcp if c.established => Some(Outcome::Pass),
                HealthTest::Http if c.established => {
                    if !c.sent && s.can_send() {
                        let req = format!(
                            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: meshd-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n",
                            c.probe.path, c.probe.addr, c.probe.port
                        );
                        c.sent = s.send_slice(req.as_bytes()).is_ok_and(|n| n == req.len());
                    }
                    while s.can_recv() && c.response.len() < PROBE_READ_MAX {
                        match s.recv(|b| (b.len(), b.to_vec())) {
                            Ok(b) if !b.is_empty() => c.response.extend_from_slice(&b),
                            _ => break,
                        }
                    }
                    http_outcome(&c.response, &c.probe, !s.may_recv())
                }
                _ => match state {
                    tcp::State::Closed | tcp::State::TimeWait => {
                        Some(Outcome::Fail("connection refused".into()))
                    }
                    _ => None,
                },
            };
            if let Some(o) = outcome {
                done.push((i, o));
            }
        }
        for (i, o) in done.into_iter().rev() {
            let c = self.probes.swap_remove(i);
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            if s.state() != tcp::State::Closed {
                s.abort();
            }
            self.closing.push((c.handle, now));
            ev.outcomes.push((c.probe.uid, c.probe.seq, o));
        }
        // Send what the sockets have now (answers, RSTs of finished probes and of refused
        // resolver connections), then tidy up.
        self.iface.poll(ts, &mut self.dev, &mut self.sockets);
        self.listen();
        let mut i = 0;
        while i < self.closing.len() {
            let (h, since) = self.closing[i];
            let s = self.sockets.get::<tcp::Socket>(h);
            if (s.state() == tcp::State::Closed && s.local_endpoint().is_none())
                || now.saturating_sub(since) > 5000
            {
                self.sockets.remove(h);
                self.closing.swap_remove(i);
            } else {
                i += 1;
            }
        }
        self.frame_out(now, neigh);
        ev
    }

    /// Re-runs the interface after answers were queued with [`Lane::answer`].
    pub fn flush(&mut self, now: u64, neigh: &Neighbors) {
        self.iface.poll(
            Instant::from_millis(now as i64),
            &mut self.dev,
            &mut self.sockets,
        );
        self.frame_out(now, neigh);
    }

    /// When smoltcp next wants to run (retransmissions, timeouts), in ms.
    pub fn poll_at(&mut self, now: u64) -> Option<u64> {
        let at = self
            .iface
            .poll_at(Instant::from_millis(now as i64), &self.sockets)?;
        Some(at.total_millis().max(0) as u64)
    }

    /// Puts an Ethernet header on each IP packet smoltcp sent: to a task of the network, by
    /// its IPv4 address or its twin's (whose last 32 bits are that address).
    fn frame_out(&mut self, now: u64, neigh: &Neighbors) {
        let mut packets: Vec<(Ipv4Address, u64, Vec<u8>)> = std::mem::take(&mut self.pending);
        let gateway6 = self.gateway6;
        for p in self.dev.tx.drain(..) {
            let dst = match p.first().map(|b| b >> 4) {
                Some(4) => Ipv4Packet::new_checked(&p[..]).ok().map(|ip| ip.dst_addr()),
                Some(6) => Ipv6Packet::new_checked(&p[..])
                    .ok()
                    .and_then(|ip| twin_of(gateway6, ip.dst_addr())),
                _ => None,
            };
            if let Some(dst) = dst {
                packets.push((dst, now, p));
            }
        }
        for (dst, since, p) in packets {
            let mac = self
                .macs
                .get(&dst)
                .copied()
                .or_else(|| neigh.get(u32::from_be_bytes(dst.octets())));
            match mac {
                Some(mac) => {
                    let mut f = Vec::with_capacity(ETH + p.len());
                    f.extend_from_slice(&mac);
                    f.extend_from_slice(&self.tasks_mac);
                    f.extend_from_slice(if p[0] >> 4 == 6 {
                        &[0x86, 0xdd]
                    } else {
                        &[0x08, 0x00]
                    });
                    f.extend_from_slice(&p);
                    self.out.push(f);
                }
                None if now.saturating_sub(since) < PENDING_MS => {
                    self.ask(dst, now);
                    self.pending.push((dst, since, p));
                }
                None => {}
            }
        }
    }

    /// An ARP request for `dst` from the gateway (the pipeline learns the answer).
    fn ask(&mut self, dst: Ipv4Address, now: u64) {
        if self
            .arp_asked
            .get(&dst)
            .is_some_and(|&t| now.saturating_sub(t) < ARP_EVERY_MS)
        {
            return;
        }
        self.arp_asked.insert(dst, now);
        let mut f = vec![0u8; ETH + 28];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&self.tasks_mac);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        let req = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(self.tasks_mac),
            source_protocol_addr: self.gateway,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: dst,
        };
        req.emit(&mut ArpPacket::new_unchecked(&mut f[ETH..]));
        self.out.push(f);
    }

    /// Probes under way.
    pub fn probes(&self) -> usize {
        self.probes.len()
    }
}

/// What an HTTP probe's answer so far says: the status line decides; a connection that ends
/// without one failed.
fn http_outcome(resp: &[u8], p: &Probe, ended: bool) -> Option<Outcome> {
    let line_end = resp
        .windows(2)
        .position(|w| w == b"\r\n")
        .or_else(|| resp.iter().position(|&b| b == b'\n'));
    let Some(end) = line_end else {
        if ended {
            return Some(Outcome::Fail(
                "the connection ended before an HTTP status line".into(),
            ));
        }
        if resp.len() >= PROBE_READ_MAX
            || (!resp.is_empty() && !b"HTTP/".starts_with(&resp[..resp.len().min(5)]))
        {
            return Some(Outcome::Fail("not an HTTP response".into()));
        }
        return None;
    };
    let line = String::from_utf8_lossy(&resp[..end]);
    let mut parts = line.split_ascii_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Some(Outcome::Fail("not an HTTP response".into()));
    };
    let Ok(status) = code.parse::<u16>() else {
        return Some(Outcome::Fail("not an HTTP response".into()));
    };
    if !version.starts_with("HTTP/") {
        return Some(Outcome::Fail("not an HTTP response".into()));
    }
    if p.status_ok(status) {
        Some(Outcome::Pass)
    } else {
        let want = p
            .check
            .status
            .map_or_else(|| "2xx or 3xx".to_string(), |s| s.to_string());
        Some(Outcome::Fail(format!(
            "HTTP status {status}, expected {want}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctl::model::HealthCheck;

    fn probe(status: Option<u16>) -> Probe {
        Probe {
            uid: 1,
            seq: 1,
            net: 0,
            addr: Ipv4Address::new(10, 0, 1, 11),
            port: 80,
            test: HealthTest::Http,
            path: "/healthz".into(),
            check: HealthCheck {
                test: HealthTest::Http,
                status,
                ..HealthCheck::default()
            },
            deadline: 1000,
        }
    }

    #[test]
    fn http_status_lines_decide() {
        let p = probe(None);
        assert_eq!(
            http_outcome(b"HTTP/1.1 200 OK\r\n", &p, false),
            Some(Outcome::Pass)
        );
        assert_eq!(
            http_outcome(b"HTTP/1.0 302 Found\r\n", &p, false),
            Some(Outcome::Pass)
        );
        assert_eq!(
            http_outcome(b"HTTP/1.1 503 Unavailable\r\n", &p, false),
            Some(Outcome::Fail("HTTP status 503, expected 2xx or 3xx".into()))
        );
        assert_eq!(
            http_outcome(b"HTTP/1.1 302 Found\r\n", &probe(Some(200)), false),
            Some(Outcome::Fail("HTTP status 302, expected 200".into()))
        );
        assert_eq!(
            http_outcome(b"HTTP/1.1 2", &p, false),
            None,
            "not all there yet"
        );
        assert_eq!(http_outcome(b"HTT", &p, false), None);
        assert!(matches!(
            http_outcome(b"HTT", &p, true),
            Some(Outcome::Fail(_))
        ));
        assert_eq!(
            http_outcome(b"SSH-2.0-OpenSSH", &p, false),
            Some(Outcome::Fail("not an HTTP response".into()))
        );
        assert_eq!(
            http_outcome(b"Hostname: web.1\n", &p, false),
            Some(Outcome::Fail("not an HTTP response".into()))
        );
        assert_eq!(
            http_outcome(b"", &p, true),
            Some(Outcome::Fail(
                "the connection ended before an HTTP status line".into()
            ))
        );
        assert_eq!(
            http_outcome(b"HTTP/1.1 abc\r\n", &p, false),
            Some(Outcome::Fail("not an HTTP response".into()))
        );
    }

    #[test]
    fn a_lane_needs_a_unicast_gateway() {
        let lane = |gw: Ipv4Address, gw6: Option<&str>| {
            let gw6 = gw6.map(|a| (a.parse::<Ipv6Address>().unwrap(), 64));
            Lane::new(4097, gw, 24, gw6, [2, 0, 0, 0, 0, 2], 1, 0).is_some()
        };
        let gw = Ipv4Address::new(10, 0, 1, 1);
        assert!(lane(gw, None));
        assert!(lane(gw, Some("fd00:10:1::a00:101")));
        assert!(!lane(Ipv4Address::new(224, 0, 0, 1), None));
        assert!(!lane(Ipv4Address::BROADCAST, None));
        assert!(!lane(gw, Some("ff02::a00:101")));
        assert!(!lane(gw, Some("::")));
    }

    #[test]
    fn only_twins_of_the_network_are_its_tasks() {
        let g6: Ipv6Address = "fd00:10:1::a00:101".parse().unwrap();
        let l = Lane::new(
            4097,
            Ipv4Address::new(10, 0, 1, 1),
            24,
            Some((g6, 64)),
            [2; 6],
            1,
            0,
        )
        .unwrap();
        let twin = |a: &str| twin_of(l.gateway6, a.parse().unwrap());
        assert_eq!(
            twin("fd00:10:1::a00:10b"),
            Some(Ipv4Address::new(10, 0, 1, 11))
        );
        assert_eq!(twin("fd00:10:2::a00:10b"), None);
        assert_eq!(twin("fd00:10:1::1:a00:10b"), None);
        assert_eq!(twin_of(None, "fd00:10:1::a00:10b".parse().unwrap()), None);
    }
}
