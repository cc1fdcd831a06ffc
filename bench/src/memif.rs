//! pktgen's DPDK memif mode: generator and sink in one thread on one core, over DPDK's
//! `net_memif` (shared memory between processes, no kernel on the path), through meshd's own
//! DPDK port ([`DpdkPort`]).
//!
//! The generator is the memif **server** of every interface it has: it creates the socket files
//! and keeps them while the systems under test (meshd, dpdk-testpmd) connect as clients, one
//! after the other. Its thread:
//! - sends the frames of a [`Frames`] on one interface: pktgen's stamped frames ([`FrameSpec`]),
//!   bare or inside VXLAN (a peer node's traffic: outer source port from the flow, as a VTEP
//!   does), at a set rate (the schedule kept per burst, at most 2 ms of catching up) or as fast
//!   as the ring takes them;
//! - reads every interface between bursts: stamped frames (bare or in VXLAN) are counted, their
//!   reordering and their one-way latency (arrival time read once per received burst, minus the
//!   send time in the frame) recorded; ARP requests are answered with the interface's MAC (the
//!   generator plays every host behind the interface: clients, a peer node, the tasks);
//! - drains after the run until nothing arrives for a while.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::buf::{Pool, PortId};
use dataplane::port::dpdk::{self, Device, DeviceSpec, DpdkError, DpdkPort, MbufPool};
use dataplane::port::{Burst, Port, BURST};
use dataplane::wire::checksum;

use crate::pktgen::{parse_stamp, FrameSpec, Received, Sent, Stamp, Stamper, Tally};
use crate::rxring::realtime_ns;

/// How far behind its schedule a paced generator still catches up.
const CATCH_UP: Duration = Duration::from_millis(2);
/// VXLAN's encapsulation: outer Ethernet, IPv4, UDP and the VXLAN header.
pub const VXLAN_OVERHEAD: usize = 14 + 20 + 8 + 8;
const VXLAN_PORT: u16 = 4789;

/// The outer headers of a VXLAN-encapsulated frame (a peer node's VTEP sending).
#[derive(Debug, Clone, Copy)]
pub struct Vxlan {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub vni: u32,
}

/// What the generator sends: the stamped frame of a spec, bare or inside VXLAN.
#[derive(Debug, Clone)]
pub struct Frames {
    pub inner: FrameSpec,
    pub vxlan: Option<Vxlan>,
}

impl Frames {
    /// Bytes written per frame.
    pub fn len(&self) -> usize {
        self.inner.frame_len() + self.vxlan.map_or(0, |_| VXLAN_OVERHEAD)
    }

    /// Never empty (a frame is at least 60 bytes); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes frame `flow` with `stamp` into `out`; 0 when `out` is too short.
    // Casts: a frame is at most a buffer (2 KiB): its lengths fit u16.
    #[allow(clippy::cast_possible_truncation)]
    pub fn write(&self, out: &mut [u8], flow: u32, stamp: Stamp) -> usize {
        let Some(v) = self.vxlan else {
            return self.inner.write(out, flow, stamp);
        };
        let len = self.len();
        let Some(f) = out.get_mut(..len) else {
            return 0;
        };
        let (outer, inner) = f.split_at_mut(VXLAN_OVERHEAD);
        if self.inner.write(inner, flow, stamp) == 0 {
            return 0;
        }
        outer.fill(0);
        outer[0..6].copy_from_slice(&v.dst_mac);
        outer[6..12].copy_from_slice(&v.src_mac);
        outer[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut outer[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&v.src_ip.octets());
        ip[16..20].copy_from_slice(&v.dst_ip.octets());
        let c = !checksum::fold64(checksum::sum(ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let udp = &mut outer[34..42];
        // The source port carries the inner flow's entropy (RFC 7348 §5), from 49152 up.
        let sport = 49152 + (flow % self.inner.flows % 16384) as u16;
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&VXLAN_PORT.to_be_bytes());
        udp[4..6].copy_from_slice(&((len - 34) as u16).to_be_bytes());
        // UDP checksum 0: allowed for VXLAN over IPv4 (RFC 7348 §5).
        let vx = &mut outer[42..50];
        vx[0] = 0x08;
        vx[4..7].copy_from_slice(&v.vni.to_be_bytes()[1..]);
        len
    }
}

/// The stamp of a frame as it leaves a system: bare, or inside VXLAN (UDP to 4789 over IPv4).
pub fn parse_any(f: &[u8]) -> Option<Stamp> {
    parse_stamp(f).or_else(|| {
        let ip = f.get(14..34)?;
        let is_vxlan = f[12..14] == [0x08, 0x00]
            && ip[0] == 0x45
            && ip[9] == 17
            && f.get(36..38)? == VXLAN_PORT.to_be_bytes();
        if is_vxlan {
            parse_stamp(f.get(VXLAN_OVERHEAD..)?)
        } else {
            None
        }
    })
}

/// The ARP reply to `f` if it is an ARP request (for any address): `mac` answers it.
pub fn arp_reply(f: &[u8], mac: [u8; 6], out: &mut [u8]) -> Option<usize> {
    if f.len() < 42 || f[12..14] != [0x08, 0x06] || f[14..22] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return None;
    }
    let out = out.get_mut(..60)?;
    out.fill(0);
    // To the asker, from us.
    out[0..6].copy_from_slice(&f[22..28]);
    out[6..12].copy_from_slice(&mac);
    out[12..14].copy_from_slice(&[0x08, 0x06]);
    out[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    // Sender: us, with the address asked for; target: the asker.
    out[22..28].copy_from_slice(&mac);
    out[28..32].copy_from_slice(&f[38..42]);
    out[32..42].copy_from_slice(&f[22..32]);
    Some(60)
}

/// Why the memif generator could not start.
#[derive(Debug, thiserror::Error)]
pub enum MemifError {
    #[error("{0}")]
    Dpdk(#[from] DpdkError),
    #[error("{0}")]
    Spec(#[from] crate::pktgen::SpecError),
    #[error("memif socket {0}: {1}")]
    Socket(PathBuf, String),
    #[error("{0}")]
    Setup(String),
    #[error("no memif peer connected to {0} in {1:?}: is the system under test running with role=client on that socket?")]
    NoPeer(PathBuf, Duration),
    #[error("no memif server answered on {0} in {1:?}: is the system under test running with role=server on that socket?")]
    NoServer(PathBuf, Duration),
}

/// Which end of a memif socket a process is: the generator's ([`Memif::open`]) or a system
/// under test's (meshd's, testpmd's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It serves the socket and the peer connects. The benchmarks' generator is the server:
    /// a DPDK memif client connects only when its device starts, so the server must be there
    /// first.
    Server,
    /// It connects to a socket the peer serves: a generator that stops and starts again is
    /// then a peer restarting.
    Client,
}

impl Role {
    /// The vdev of memif interface `i` on `socket` at this end.
    pub fn vdev(self, i: usize, socket: &Path) -> String {
        let role = match self {
            Role::Server => "server",
            Role::Client => "client",
        };
        format!(
            "net_memif{i},role={role},socket={},socket-abstract=no",
            socket.display()
        )
    }
}

/// One memif interface of the generator.
#[derive(Debug)]
struct End {
    socket: PathBuf,
    dev: Device,
    port: DpdkPort,
}

/// Counts of the generator's own work besides the stamped frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Chores {
    /// ARP requests answered.
    pub arp: u64,
    /// Frames received that were neither stamped nor ARP.
    pub other: u64,
    /// Stamped frames received on each interface (in every window, and between them).
    pub stamped_on: [u64; MAX_ENDS],
}

/// Interfaces a generator serves at most.
pub const MAX_ENDS: usize = 4;

/// The generator and sink on its memif interfaces.
#[derive(Debug)]
pub struct Memif {
    role: Role,
    ends: Vec<End>,
    pool: Pool,
    mbufs: Arc<MbufPool>,
    stamper: Stamper,
    pub chores: Chores,
}

/// Readies a socket path for `role`: as the server, its directory made and a stale socket
/// file removed (a live one is another server's: refused); as the client, the server's
/// socket must be there.
fn prepare(s: &Path, role: Role) -> Result<(), MemifError> {
    let refuse = |why: &str| Err(MemifError::Socket(s.to_path_buf(), why.into()));
    match role {
        Role::Server => {
            if let Some(d) = s.parent() {
                std::fs::create_dir_all(d)
                    .map_err(|e| MemifError::Socket(s.to_path_buf(), e.to_string()))?;
            }
            // A socket someone answers on is another server's: not ours to take over.
            if std::os::unix::net::UnixStream::connect(s).is_ok() {
                return refuse("another memif server (a running pktgen or bench) listens on it: stop it or use another path");
            }
            match std::fs::remove_file(s) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => refuse(&e.to_string()),
            }
        }
        Role::Client => {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::metadata(s).is_ok_and(|m| m.file_type().is_socket()) {
                Ok(())
            } else {
                refuse("no socket: start the system under test with role=server on it first")
            }
        }
    }
}

impl Memif {
    /// Starts EAL in this process (once: `--no-huge`, `-l core`, no shared files) and a memif
    /// interface on each socket, frames on them marked `PortId::Uplink` for the first and
    /// `Tasks` for the others. As the server (a stale socket file is removed first; a live one
    /// is refused), or as the client of a server already there.
    pub fn open(
        sockets: &[PathBuf],
        role: Role,
        core: usize,
        memory_mb: u32,
    ) -> Result<Memif, MemifError> {
        if sockets.is_empty() || sockets.len() > MAX_ENDS {
            return Err(MemifError::Setup(format!(
                "{} memif sockets: 1 to {MAX_ENDS}",
                sockets.len()
            )));
        }
        for s in sockets {
            prepare(s, role)?;
        }
        let specs: Vec<DeviceSpec> = sockets
            .iter()
            .enumerate()
            .map(|(i, s)| DeviceSpec::parse(&role.vdev(i, s)))
            .collect::<Result<_, _>>()
            .map_err(MemifError::Setup)?;
        let user = vec![
            "--no-huge".to_string(),
            "-m".into(),
            memory_mb.to_string(),
            "--no-pci".into(),
            "--file-prefix".into(),
            format!("meshd-pktgen-{}", std::process::id()),
        ];
        let refs: Vec<&DeviceSpec> = specs.iter().collect();
        dpdk::init(&dpdk::eal_args(&user, core, &refs))?;
        // EAL gives the calling thread its affinity back: the generator pins itself, so it
        // never shares a core with the system under test.
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            return Err(MemifError::Setup(format!(
                "cannot pin the generator to core {core} (see nproc)"
            )));
        }
        dpdk::register_thread();
        let mbufs = Arc::new(MbufPool::new("pktgen")?);
        let mut ends = Vec::new();
        for (i, (spec, socket)) in specs.iter().zip(sockets).enumerate() {
            let dev = Device::start(spec, &[&mbufs], None)?;
            let id = if i == 0 {
                PortId::Uplink
            } else {
                PortId::Tasks
            };
            let port = DpdkPort::new(&dev, 0, id, mbufs.clone());
            ends.push(End {
                socket: socket.clone(),
                dev,
                port,
            });
        }
        Ok(Memif {
            role,
            ends,
            pool: Pool::new(1024),
            mbufs,
            stamper: Stamper::default(),
            chores: Chores::default(),
        })
    }

    /// Interface `i`'s MAC address.
    pub fn mac(&self, i: usize) -> [u8; 6] {
        self.ends[i].dev.mac
    }

    /// Whether every interface has a peer connected.
    pub fn up(&self) -> bool {
        self.ends.iter().all(|e| e.dev.link().up != 0)
    }

    /// Waits (answering ARP) until every interface has a peer, at most `limit`.
    pub fn wait_up(&mut self, limit: Duration, stop: &AtomicBool) -> Result<(), MemifError> {
        let t0 = Instant::now();
        while !self.up() {
            if t0.elapsed() >= limit || stop.load(Ordering::Relaxed) {
                let down = self.ends.iter().find(|e| e.dev.link().up == 0);
                let socket = down.map(|e| e.socket.clone()).unwrap_or_default();
                return Err(match self.role {
                    Role::Server => MemifError::NoPeer(socket, limit),
                    Role::Client => MemifError::NoServer(socket, limit),
                });
            }
            self.serve(&mut Tally::new(u64::MAX));
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Closes the last interface: its peer sees the link go down; the others go on as they
    /// were (their indices unchanged). `false` when there was none.
    pub fn close_last(&mut self) -> bool {
        self.ends.pop().is_some()
    }

    /// Mbufs of the generator's pool not given back (its RX rings' and in flight).
    pub fn mbufs_in_use(&self) -> u32 {
        self.mbufs.in_use()
    }

    /// Reads every interface once: stamped frames counted into `w`, ARP answered. Returns the
    /// frames seen.
    fn serve(&mut self, w: &mut Tally) -> usize {
        let mut seen = 0;
        let mut burst = Burst::new();
        for i in 0..self.ends.len() {
            let n = self.ends[i].port.rx_burst(&mut self.pool, &mut burst);
            if n == 0 {
                continue;
            }
            seen += n;
            let arrived = realtime_ns();
            let mac = self.ends[i].dev.mac;
            let mut replies = Burst::new();
            for b in burst.drain(..) {
                if let Some(s) = parse_any(b.data()) {
                    self.chores.stamped_on[i] += 1;
                    w.record(s, arrived);
                } else if let Some(mut r) = self.pool.get() {
                    match arp_reply(b.data(), mac, r.room_mut()) {
                        Some(len) => {
                            r.set_len(len);
                            self.chores.arp += 1;
                            replies.push(r);
                        }
                        None => {
                            self.chores.other += 1;
                            self.pool.put(r);
                        }
                    }
                }
                self.pool.put(b);
            }
            if !replies.is_empty() {
                self.ends[i].port.tx_burst(&mut replies, &mut self.pool);
            }
        }
        seen
    }

    /// Sends `frames` out of interface `tx` at `rate` frames/s (`None`: as fast as the ring
    /// takes them) for `duration` or until `stop`, counting what comes back on every
    /// interface; then reads until nothing arrives for `quiet` (at most `max_drain`).
    // Casts: a burst count (≤ 32) and frame counts well inside f64's integers.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    pub fn run(
        &mut self,
        frames: &Frames,
        tx: usize,
        rate: Option<f64>,
        duration: Duration,
        stop: &AtomicBool,
        quiet: Duration,
    ) -> Result<(Sent, Received), MemifError> {
        frames.inner.check()?;
        let start_ns = realtime_ns();
        let mut w = Tally::new(start_ns);
        let before = self.ends[tx].port.stats.tx_full + self.ends[tx].port.stats.tx_no_mbuf;
        let t0 = Instant::now();
        // The schedule: frames due by now, and where it started counting (moved forward when
        // the generator fell more than CATCH_UP behind).
        let mut base = t0;
        let mut base_sent = 0u64;
        let mut sent = 0u64;
        let mut burst = Burst::new();
        loop {
            let now = Instant::now();
            if now.duration_since(t0) >= duration || stop.load(Ordering::Relaxed) {
                break;
            }
            let want = match rate {
                Some(r) => {
                    let due = (now.duration_since(base).as_secs_f64() * r) as u64;
                    let behind = due.saturating_sub(sent - base_sent);
                    if behind as f64 > r * CATCH_UP.as_secs_f64() {
                        base = now;
                        base_sent = sent;
                        0
                    } else {
                        behind.min(BURST as u64) as usize
                    }
                }
                None => BURST,
            };
            if want > 0 {
                self.stamper.fill(
                    want,
                    frames.inner.flows,
                    realtime_ns(),
                    &mut self.pool,
                    &mut burst,
                    |b, flow, stamp| frames.write(b, flow, stamp),
                );
                sent += self.ends[tx].port.tx_burst(&mut burst, &mut self.pool) as u64;
            }
            self.serve(&mut w);
        }
        let secs = t0.elapsed().as_secs_f64();
        let after = self.ends[tx].port.stats.tx_full + self.ends[tx].port.stats.tx_no_mbuf;
        let t1 = Instant::now();
        let mut last = t1;
        while t1.elapsed() < quiet * 20 {
            if self.serve(&mut w) > 0 {
                last = Instant::now();
            } else if last.elapsed() >= quiet {
                break;
            }
        }
        Ok((
            Sent {
                frames: sent,
                secs,
                ring_full: after - before,
                start_ns,
            },
            w.got,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pktgen::Proto;

    fn inner() -> FrameSpec {
        FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 0, 0, 3),
            dst_ip: Ipv4Addr::new(10, 0, 0, 200),
            sport_base: 10_000,
            per_source: crate::pktgen::FLOWS_PER_ADDR,
            dport: 5201,
            proto: Proto::Udp,
            size: 64,
            flows: 1024,
            tcp_flags: 0,
        }
    }

    #[test]
    fn vxlan_frames_carry_the_stamp_inside_and_parse_back() {
        let f = Frames {
            inner: inner(),
            vxlan: Some(Vxlan {
                src_mac: [2, 0, 0, 0, 9, 1],
                dst_mac: [2, 0, 0, 0, 9, 2],
                src_ip: Ipv4Addr::new(192, 168, 100, 12),
                dst_ip: Ipv4Addr::new(192, 168, 100, 11),
                vni: 4096,
            }),
        };
        let mut out = [0u8; 256];
        let stamp = Stamp {
            seq: 7,
            time_ns: 0x1234_5678_9abc,
        };
        let n = f.write(&mut out, 5, stamp);
        assert_eq!(n, 60 + VXLAN_OVERHEAD);
        let fr = &out[..n];
        // Outer IPv4 header checksum is valid, UDP to 4789, VNI 4096, entropy port from the flow.
        assert_eq!(checksum::fold64(checksum::sum(&fr[14..34])), 0xffff);
        assert_eq!(&fr[36..38], &4789u16.to_be_bytes());
        assert_eq!(u16::from_be_bytes([fr[34], fr[35]]), 49152 + 5);
        assert_eq!(&fr[46..49], &[0x00, 0x10, 0x00]);
        assert_eq!(usize::from(u16::from_be_bytes([fr[16], fr[17]])), n - 14);
        assert_eq!(parse_any(fr), Some(stamp));
        // The inner frame is pktgen's plain frame.
        assert_eq!(parse_stamp(&fr[VXLAN_OVERHEAD..]), Some(stamp));
        assert_eq!(parse_stamp(fr), None);
        // Too little room: nothing written.
        assert_eq!(f.write(&mut out[..100], 5, stamp), 0);
    }

    #[test]
    fn arp_requests_get_our_mac_for_the_address_asked() {
        let mut req = [0u8; 60];
        req[0..6].copy_from_slice(&[0xff; 6]);
        req[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x11]);
        req[12..14].copy_from_slice(&[8, 6]);
        req[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        req[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 0x11]);
        req[28..32].copy_from_slice(&[192, 168, 100, 11]);
        req[38..42].copy_from_slice(&[192, 168, 100, 12]);
        let me = [2, 0, 0, 0, 0, 0x99];
        let mut out = [0u8; 64];
        assert_eq!(arp_reply(&req, me, &mut out), Some(60));
        assert_eq!(&out[0..6], &[2, 0, 0, 0, 0, 0x11]);
        assert_eq!(&out[20..22], &[0, 2]);
        assert_eq!(&out[22..28], &me);
        assert_eq!(&out[28..32], &[192, 168, 100, 12]);
        assert_eq!(&out[32..38], &[2, 0, 0, 0, 0, 0x11]);
        assert_eq!(&out[38..42], &[192, 168, 100, 11]);
        // A reply is not answered; nor is a short frame.
        let mut rep = req;
        rep[21] = 2;
        assert_eq!(arp_reply(&rep, me, &mut out), None);
        assert_eq!(arp_reply(&req[..30], me, &mut out), None);
    }
}
