//! The packet generator and sink behind the `pktgen` binary and `bench mesh`.
//!
//! - **Frames** ([`FrameSpec`]): Ethernet/IPv4 UDP or TCP of a set wire size (64 bytes by
//!   default, FCS included, so 60 bytes are written), over `flows` flows that differ in source
//!   port (and source address past 50 000 flows), with valid IPv4 and L4 checksums. Each frame
//!   carries a [`Stamp`]: a sequence number and the low 48 bits of its send time
//!   (`CLOCK_REALTIME`, ns). UDP: `magic(2) seq(4) time(6)` at the start of the payload. TCP (whose
//!   64-byte frame leaves 6 payload bytes): the sequence number in the TCP sequence field, the
//!   magic in the urgent pointer (URG is not set, so nothing reads it; NAT does not touch it) and
//!   the time in the payload.
//! - **Generator** ([`Generator`]): meshd's AF_PACKET port ([`AfPacketPort`]: a TPACKET_V3 TX
//!   ring, one `sendto` kick per batch, qdisc bypassed) at a set rate or as fast as it can.
//!   Paced in batches of at most 32 frames sent every `batch / rate` seconds (about 100 µs),
//!   sleeping in between (with a 1 ns timer slack) rather than spinning; a generator that
//!   was scheduled out catches up on at most 2 ms of its schedule, and always reports the rate it
//!   really sent.
//! - **Sink** ([`Sink`]): a TPACKET_V3 RX ring ([`crate::rxring::RxRing`]) that counts frames
//!   carrying a stamp, their reordering, and their one-way latency (kernel arrival time in the
//!   ring minus send time; both ends are on this machine and share the clock) into an
//!   HdrHistogram. Frames sent before the current window started are left out, so stragglers
//!   of an earlier trial do not count.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dataplane::buf::{Pool, PortId};
use dataplane::port::afpacket::{AfPacketConfig, AfPacketError, AfPacketPort};
use dataplane::port::{Burst, Port};
use dataplane::wire::checksum;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::rxring::{realtime_ns, RxRing};

/// Marks a frame as pktgen's ("ms").
pub const MAGIC: u16 = 0x6d73;
/// Flows per source address; past it the source address goes up by one.
pub const FLOWS_PER_ADDR: u32 = 50_000;
/// Smallest and largest wire sizes (FCS included).
pub const MIN_SIZE: usize = 64;
pub const MAX_SIZE: usize = 1518;
const FCS: usize = 4;
const ETH: usize = 14;
const IP: usize = 20;
const T48: u64 = (1 << 48) - 1;
/// How far behind its schedule a paced generator still catches up.
const CATCH_UP: Duration = Duration::from_millis(2);

/// The L4 protocol of generated frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Udp,
    Tcp,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    /// Flow i uses source port `sport_base + i % per_source`, from address
    /// `src_ip + i / per_source`.
    pub sport_base: u16,
    /// Flows per source address (at most [`FLOWS_PER_ADDR`], the default): 200 for 200,000
    /// flows from 1,000 addresses.
    pub per_source: u32,
    pub dport: u16,
    pub proto: Proto,
    /// Bytes on the wire, FCS included.
    pub size: usize,
    pub flows: u32,
    /// TCP flag bits (TCP frames only).
    pub tcp_flags: u8,
}

/// Why a [`FrameSpec`] cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("--size {0}: frames are {MIN_SIZE} to {MAX_SIZE} bytes on the wire (FCS included)")]
    Size(usize),
    #[error("--flows must be at least 1")]
    NoFlows,
    #[error("--flows-per-source {0}: 1 to {FLOWS_PER_ADDR}")]
    PerSource(u32),
    #[error("--flows {flows} with source port base {base}: the ports would pass 65535; lower --sport or --flows")]
    Ports { flows: u32, base: u16 },
}

impl FrameSpec {
    /// Checks sizes and flow counts.
    pub fn check(&self) -> Result<(), SpecError> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(SpecError::Size(self.size));
        }
        if self.flows == 0 {
            return Err(SpecError::NoFlows);
        }
        if self.per_source == 0 || self.per_source > FLOWS_PER_ADDR {
            return Err(SpecError::PerSource(self.per_source));
        }
        let per = self.flows.min(self.per_source);
        if u32::from(self.sport_base) + per > 65_536 {
            return Err(SpecError::Ports {
                flows: self.flows,
                base: self.sport_base,
            });
        }
        Ok(())
    }

    /// Bytes written per frame (the wire size less the FCS).
    pub fn frame_len(&self) -> usize {
        self.size - FCS
    }

    /// Writes frame `flow % flows` with `stamp` into `out` (at least [`Self::frame_len`] bytes)
    /// and returns its length; 0 when `out` is too short.
    // Casts: a generated frame is at most a buffer (2 KiB): its lengths fit u16.
    #[allow(clippy::cast_possible_truncation)]
    pub fn write(&self, out: &mut [u8], flow: u32, stamp: Stamp) -> usize {
        let len = self.frame_len();
        let Some(f) = out.get_mut(..len) else {
            return 0;
        };
        f.fill(0);
        let flow = flow % self.flows;
        let per = self.per_source.max(1);
        let src = u32::from(self.src_ip).wrapping_add(flow / per);
        let sport = self.sport_base.wrapping_add((flow % per) as u16);
        let dst = u32::from(self.dst_ip);
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_total = (len - ETH) as u16;
        let proto = match self.proto {
            Proto::Udp => 17u8,
            Proto::Tcp => 6u8,
        };
        {
            let ip = &mut f[ETH..ETH + IP];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
            // Don't fragment.
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&src.to_be_bytes());
            ip[16..20].copy_from_slice(&dst.to_be_bytes());
            let c = !checksum::fold64(checksum::sum(ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let l4_len = len - ETH - IP;
        let t48 = stamp.time_ns & T48;
        let l4 = &mut f[ETH + IP..];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&self.dport.to_be_bytes());
        let csum_at = match self.proto {
            Proto::Udp => {
                l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                l4[8..10].copy_from_slice(&MAGIC.to_be_bytes());
                l4[10..14].copy_from_slice(&stamp.seq.to_be_bytes());
                l4[14..20].copy_from_slice(&t48.to_be_bytes()[2..]);
                6
            }
            Proto::Tcp => {
                l4[4..8].copy_from_slice(&stamp.seq.to_be_bytes());
                l4[12] = 5 << 4;
                l4[13] = self.tcp_flags;
                l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
                l4[18..20].copy_from_slice(&MAGIC.to_be_bytes());
                l4[20..26].copy_from_slice(&t48.to_be_bytes()[2..]);
                16
            }
        };
        let pseudo = checksum::pseudo_v4(src, dst, proto, l4_len as u16);
        let mut c = !checksum::fold64(pseudo + checksum::sum(l4));
        if c == 0 && self.proto == Proto::Udp {
            // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
            c = 0xffff;
        }
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        len
    }
}

/// What a frame carries to be counted and timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u32,
    /// Send time, `CLOCK_REALTIME` ns (only the low 48 bits travel).
    pub time_ns: u64,
}

/// Reads the stamp of a pktgen frame (UDP or TCP over IPv4, as it arrives at the sink: the
/// addresses and ports may have been translated); `None` for any other frame. The time is the
/// low 48 bits only.
pub fn parse_stamp(f: &[u8]) -> Option<Stamp> {
    if f.len() < ETH + IP + 8 || f[12..14] != [0x08, 0x00] || f[ETH] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(f[ETH] & 0x0f) * 4;
    let l4 = f.get(ETH + ihl..)?;
    let be16 = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let t48 = |b: &[u8]| {
        let mut t = [0u8; 8];
        t[2..].copy_from_slice(b);
        u64::from_be_bytes(t)
    };
    match f[ETH + 9] {
        17 if l4.len() >= 20 && be16(l4, 8) == MAGIC => Some(Stamp {
            seq: u32::from_be_bytes([l4[10], l4[11], l4[12], l4[13]]),
            time_ns: t48(&l4[14..20]),
        }),
        6 if l4.len() >= 26 && be16(l4, 18) == MAGIC => Some(Stamp {
            seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
            time_ns: t48(&l4[20..26]),
        }),
        _ => None,
    }
}

/// One-way latency from a 48-bit send time and a full arrival time, in ns.
pub fn latency_ns(sent48: u64, arrived: u64) -> u64 {
    (arrived & T48).wrapping_sub(sent48) & T48
}

/// What one generator run sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sent {
    /// Frames placed on the TX ring and kicked.
    pub frames: u64,
    pub secs: f64,
    /// Frames not sent because the TX ring was full.
    pub ring_full: u64,
    /// Wall-clock start of the run (`CLOCK_REALTIME` ns): frames of this run were sent after it.
    pub start_ns: u64,
}

impl Sent {
    pub fn pps(&self) -> f64 {
        if self.secs > 0.0 {
            self.frames as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// A generator on one interface.
#[derive(Debug)]
pub struct Generator {
    port: AfPacketPort,
    pool: Pool,
    spec: FrameSpec,
    stamper: Stamper,
}

impl Generator {
    /// Opens the interface (in the calling thread's network namespace).
    pub fn open(ifname: &str, spec: FrameSpec) -> Result<Generator, GenError> {
        spec.check()?;
        let port = AfPacketPort::open(
            ifname,
            &AfPacketConfig {
                port: PortId::Uplink,
                // Only the TX ring matters; the RX ring is kept small.
                block_size: 1 << 16,
                block_count: 32,
                ..AfPacketConfig::default()
            },
        )?;
        Ok(Generator {
            port,
            pool: Pool::new(64),
            spec,
            stamper: Stamper::default(),
        })
    }

    pub fn spec(&self) -> &FrameSpec {
        &self.spec
    }

    /// Sends for `duration` at `rate` frames per second (`None`: as fast as it can), or until
    /// `stop` is set.
    // Casts: clamped to 1..=BURST right there.
    #[allow(clippy::cast_possible_truncation)]
    pub fn run(&mut self, rate: Option<f64>, duration: Duration, stop: &AtomicBool) -> Sent {
        let before = self.port.stats().tx_ring_full;
        // Batches about 100 µs apart (smooth enough, and long enough to sleep in between), at
        // most a burst.
        let batch = match rate {
            Some(r) => ((r * 100e-6).ceil() as usize).clamp(1, dataplane::port::BURST),
            None => dataplane::port::BURST,
        };
        crate::rxring::fine_timer_slack();
        let period = rate.map(|r| Duration::from_secs_f64(batch as f64 / r.max(1.0)));
        let start_ns = realtime_ns();
        let t0 = Instant::now();
        let mut next = t0;
        let mut frames = 0u64;
        let mut burst = Burst::new();
        loop {
            let now = Instant::now();
            if now.duration_since(t0) >= duration || stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(p) = period {
                if now < next {
                    // Sleep through most of the wait (the CPU is the system under test's),
                    // spin the last few microseconds.
                    let wait = next - now;
                    if wait > Duration::from_micros(25) {
                        std::thread::sleep(wait - Duration::from_micros(15));
                    } else {
                        std::hint::spin_loop();
                    }
                    continue;
                }
                // Behind (preempted): catch up batch after batch, but not by more than 2 ms
                // worth of frames, so a long stall does not turn into one huge burst. The rate
                // really sent is what is reported.
                next = if now.duration_since(next) > CATCH_UP {
                    now + p
                } else {
                    next + p
                };
            }
            let spec = &self.spec;
            self.stamper.fill(
                batch,
                spec.flows,
                realtime_ns(),
                &mut self.pool,
                &mut burst,
                |b, flow, stamp| spec.write(b, flow, stamp),
            );
            frames += self.port.tx_burst(&mut burst, &mut self.pool) as u64;
        }
        self.port.flush();
        let secs = t0.elapsed().as_secs_f64();
        Sent {
            frames,
            secs,
            ring_full: self.port.stats().tx_ring_full - before,
            start_ns,
        }
    }
}

/// What a forwarder moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Forwarded {
    pub frames: u64,
    pub rx_dropped: u64,
    pub tx_ring_full: u64,
}

/// The port backend of a forwarder, as `meshd --io` names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Io {
    /// meshd's AF_PACKET port (TPACKET_V2 rings).
    #[default]
    Afpacket,
    /// meshd's AF_XDP port (in the default build; not with `--no-default-features`).
    Afxdp,
}

/// Why a forwarder could not start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0}")]
    AfPacket(#[from] AfPacketError),
    #[cfg(feature = "afxdp")]
    #[error("{0}")]
    AfXdp(#[from] dataplane::port::afxdp::AfXdpError),
    #[error("pktgen was built without AF_XDP (--no-default-features): build it with its default features (cargo build --release)")]
    NoAfXdp,
}

/// A plain forwarder: frames from `input` out of `output` (the same interface when `output` is
/// `None`), with the destination and source MACs rewritten when `rewrite` is given (`(dst,
/// src)`). Same ports ([`Io`]: AF_PACKET or AF_XDP), ring geometry and idle policy as a meshd
/// worker (spin a little, then sleep in `poll` on the RX ring with a back-off up to 5 ms), and no
/// pipeline: the cost of moving frames through meshd's I/O alone. Runs until `stop` is set.
pub fn forward(
    io: Io,
    input: &str,
    output: Option<&str>,
    rewrite: Option<([u8; 6], [u8; 6])>,
    stop: &AtomicBool,
) -> Result<Forwarded, ForwardError> {
    match io {
        Io::Afpacket => {
            let cfg = AfPacketConfig {
                promiscuous: true,
                ..AfPacketConfig::default()
            };
            let rx = AfPacketPort::open(input, &cfg)?;
            let tx = output.map(|o| AfPacketPort::open(o, &cfg)).transpose()?;
            Ok(forward_on(rx, tx, rewrite, stop))
        }
        #[cfg(feature = "afxdp")]
        Io::Afxdp => {
            use dataplane::port::afxdp::{AfXdpConfig, AfXdpPort};
            let cfg = AfXdpConfig {
                promiscuous: true,
                ..AfXdpConfig::default()
            };
            let rx = AfXdpPort::open(input, &cfg)?;
            let tx = output.map(|o| AfXdpPort::open(o, &cfg)).transpose()?;
            Ok(forward_on(rx, tx, rewrite, stop))
        }
        #[cfg(not(feature = "afxdp"))]
        Io::Afxdp => Err(ForwardError::NoAfXdp),
    }
}

fn forward_on<P: Port>(
    mut rx: P,
    mut tx: Option<P>,
    rewrite: Option<([u8; 6], [u8; 6])>,
    stop: &AtomicBool,
) -> Forwarded {
    let mut pool = Pool::new(4096);
    let mut burst = Burst::new();
    let mut idle = 0u32;
    let mut frames = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = rx.rx_burst(&mut pool, &mut burst);
        if n == 0 {
            idle = idle.saturating_add(1);
            if idle < 64 {
                std::hint::spin_loop();
            } else {
                // The same idle back-off as meshd's workers: ppoll on the ring, up to ~1 ms.
                let us = 1u64 << (idle - 64).min(10);
                let fd = rx.wait_fd();
                dataplane::port::sys::wait_readable(fd.as_slice(), Duration::from_micros(us));
            }
            // AF_XDP sends at most 32 frames per kick: push out what the last burst left.
            match tx.as_mut() {
                Some(t) => t.flush(),
                None => rx.flush(),
            }
            continue;
        }
        idle = 0;
        if let Some((dst, src)) = rewrite {
            for b in burst.iter_mut() {
                let f = b.data_mut();
                if f.len() >= 12 {
                    f[0..6].copy_from_slice(&dst);
                    f[6..12].copy_from_slice(&src);
                }
            }
        }
        frames += match tx.as_mut() {
            Some(t) => t.tx_burst(&mut burst, &mut pool),
            None => rx.tx_burst(&mut burst, &mut pool),
        } as u64;
    }
    let rs = rx.counters();
    let ts = tx.as_mut().map_or(rs.tx_full, |t| t.counters().tx_full);
    Forwarded {
        frames,
        rx_dropped: rs.rx_dropped,
        tx_ring_full: ts,
    }
}

/// Why the generator could not start.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Port(#[from] AfPacketError),
}

/// What a sink counted in one window.
#[derive(Debug, Clone)]
pub struct Received {
    pub frames: u64,
    /// Frames that arrived after a frame with a higher sequence number.
    pub reordered: u64,
    /// Frames the sink's ring dropped (the sink was too slow: the numbers below undercount).
    pub sink_dropped: u64,
    /// One-way latency, ns.
    pub latency: Histogram<u64>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub samples: u64,
}

impl Received {
    pub fn percentiles(&self) -> Percentiles {
        let h = &self.latency;
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
            samples: h.len(),
        }
    }
}

/// The counts of one window: frames sent before `from_ns` are left out.
#[derive(Debug, Clone)]
pub struct Tally {
    pub from_ns: u64,
    last_seq: Option<u32>,
    pub got: Received,
}

impl Tally {
    pub fn new(from_ns: u64) -> Tally {
        Tally {
            from_ns,
            last_seq: None,
            got: Received {
                frames: 0,
                reordered: 0,
                sink_dropped: 0,
                latency: latency_histogram(),
            },
        }
    }

    /// Starts again from `from_ns`.
    pub fn reset(&mut self, from_ns: u64) {
        self.from_ns = from_ns;
        self.last_seq = None;
        self.got.frames = 0;
        self.got.reordered = 0;
        self.got.sink_dropped = 0;
        self.got.latency.reset();
    }

    /// Counts a frame stamped `s` that arrived at `arrived` (`CLOCK_REALTIME` ns).
    pub fn record(&mut self, s: Stamp, arrived: u64) {
        let lat = latency_ns(s.time_ns, arrived);
        if arrived.wrapping_sub(lat) < self.from_ns {
            return;
        }
        self.got.frames += 1;
        match self.last_seq {
            Some(l) if (s.seq.wrapping_sub(l) as i32) < 0 => self.got.reordered += 1,
            _ => self.last_seq = Some(s.seq),
        }
        let _ = self.got.latency.record(lat.max(1));
    }
}

/// Numbers the frames a generator sends: sequence and flow, both cycling.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamper {
    seq: u32,
    flow: u32,
}

impl Stamper {
    /// Appends up to `n` frames written by `write(buf, flow, stamp)` (0 < flows) to `burst`,
    /// stamped `time_ns`, with buffers from `pool`.
    pub fn fill(
        &mut self,
        n: usize,
        flows: u32,
        time_ns: u64,
        pool: &mut Pool,
        burst: &mut Burst,
        write: impl Fn(&mut [u8], u32, Stamp) -> usize,
    ) {
        for _ in 0..n.min(burst.remaining_capacity()) {
            let Some(mut b) = pool.get() else { break };
            let len = write(
                b.room_mut(),
                self.flow,
                Stamp {
                    seq: self.seq,
                    time_ns,
                },
            );
            b.set_len(len);
            self.seq = self.seq.wrapping_add(1);
            self.flow = (self.flow + 1) % flows.max(1);
            burst.push(b);
        }
    }
}

/// 1 ns to 60 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .or_else(|_| Histogram::new(3))
        .unwrap_or_else(|_| std::process::abort())
}

/// A sink on one interface.
#[derive(Debug)]
pub struct Sink {
    ring: RxRing,
    tally: Tally,
}

impl Sink {
    /// Opens the interface (in the calling thread's network namespace): 64 blocks of 256 KiB
    /// retired every 10 ms at the latest (timestamps come from the kernel, so the timer only
    /// decides how often the sink wakes). A sink that is not polled holds out for 640 ms at low
    /// rates (then every block is owned by user space, each holding what one timer period
    /// brought) and for about 116 000 frames of 64 bytes at high rates; past that the kernel
    /// drops and [`Received::sink_dropped`] says so.
    pub fn open(ifname: &str) -> std::io::Result<Sink> {
        Ok(Sink {
            ring: RxRing::open(ifname, 1 << 18, 64, 10)?,
            tally: Tally::new(0),
        })
    }

    /// Starts a new window: frames sent before `from_ns` (`CLOCK_REALTIME`) are not counted.
    pub fn begin(&mut self, from_ns: u64) {
        self.poll(0);
        let _ = self.ring.drops();
        self.tally.reset(from_ns);
    }

    /// Reads what has arrived, waiting up to `wait_ms` for a block when none is ready. Returns
    /// the number of frames seen (counted or not).
    pub fn poll(&mut self, wait_ms: i32) -> usize {
        let tally = &mut self.tally;
        let n = self.ring.drain(|f, arrived| {
            if let Some(s) = parse_stamp(f) {
                tally.record(s, arrived);
            }
        });
        if n == 0 && wait_ms > 0 {
            self.ring.wait(wait_ms.unsigned_abs());
        }
        n
    }

    /// Reads until nothing more arrives for `quiet` (at most `max`), and returns the window's
    /// counts.
    pub fn collect(&mut self, quiet: Duration, max: Duration) -> Received {
        let t0 = Instant::now();
        let mut last = Instant::now();
        while t0.elapsed() < max {
            if self.poll(2) > 0 {
                last = Instant::now();
            } else if last.elapsed() >= quiet {
                break;
            }
        }
        self.tally.got.sink_dropped += self.ring.drops().dropped;
        self.tally.got.clone()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use super::*;

    fn spec(proto: Proto, size: usize) -> FrameSpec {
        FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(192, 168, 100, 100),
            dst_ip: Ipv4Addr::new(192, 168, 100, 11),
            sport_base: 10_000,
            per_source: FLOWS_PER_ADDR,
            dport: 8080,
            proto,
            size,
            flows: 100_000,
            tcp_flags: 0x10,
        }
    }

    #[test]
    fn frames_parse_back_with_valid_checksums() {
        for (proto, size) in [
            (Proto::Udp, 64),
            (Proto::Tcp, 64),
            (Proto::Udp, 1518),
            (Proto::Tcp, 128),
        ] {
            let s = spec(proto, size);
            s.check().unwrap();
            let mut buf = [0xa5u8; 2048];
            let stamp = Stamp {
                seq: 0xdead_beef,
                time_ns: 0x1234_5678_9abc_def0,
            };
            let n = s.write(&mut buf, 50_007, stamp);
            assert_eq!(n, size - 4);
            let f = &buf[..n];
            let got = parse_stamp(f).unwrap();
            assert_eq!(got.seq, stamp.seq);
            assert_eq!(got.time_ns, stamp.time_ns & T48);
            // IPv4 header and L4 checksums verify.
            assert!(checksum::verify(0, &f[14..34]));
            let l4 = &f[34..];
            let pseudo = checksum::pseudo_v4(
                u32::from_be_bytes([f[26], f[27], f[28], f[29]]),
                u32::from_be_bytes([f[30], f[31], f[32], f[33]]),
                f[23],
                l4.len() as u16,
            );
            assert!(checksum::verify(pseudo, l4), "{proto:?} {size}");
            // Flow 50 007 is the 8th flow of the second source address.
            assert_eq!(&f[26..30], &[192, 168, 100, 101]);
            assert_eq!(u16::from_be_bytes([f[34], f[35]]), 10_007);
            if proto == Proto::Udp {
                assert_eq!(u16::from_be_bytes([f[38], f[39]]) as usize, n - 34);
            }
        }
    }

    #[test]
    fn smoltcp_agrees_with_the_frames() {
        use smoltcp::wire::{EthernetFrame, Ipv4Packet, UdpPacket};
        let s = spec(Proto::Udp, 64);
        let mut buf = [0u8; 128];
        let n = s.write(
            &mut buf,
            3,
            Stamp {
                seq: 7,
                time_ns: 99,
            },
        );
        let eth = EthernetFrame::new_checked(&buf[..n]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert_eq!(udp.src_port(), 10_003);
        assert_eq!(udp.dst_port(), 8080);
    }

    #[test]
    fn other_frames_carry_no_stamp() {
        assert_eq!(parse_stamp(&[]), None);
        assert_eq!(parse_stamp(&[0u8; 60]), None);
        let s = spec(Proto::Udp, 64);
        let mut buf = [0u8; 128];
        let n = s.write(&mut buf, 0, Stamp { seq: 1, time_ns: 2 });
        buf[42] ^= 1;
        assert_eq!(parse_stamp(&buf[..n]), None);
        // Truncated frames never panic.
        for cut in 0..n {
            let _ = parse_stamp(&buf[..cut]);
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        assert_eq!(spec(Proto::Udp, 63).check(), Err(SpecError::Size(63)));
        assert_eq!(spec(Proto::Udp, 1519).check(), Err(SpecError::Size(1519)));
        let mut s = spec(Proto::Udp, 64);
        s.flows = 0;
        assert_eq!(s.check(), Err(SpecError::NoFlows));
        s.flows = 60_000;
        s.sport_base = 20_000;
        assert!(matches!(s.check(), Err(SpecError::Ports { .. })));
    }

    /// The generator and the sink over a real veth: every frame sent is counted once, in
    /// order, with a plausible one-way latency; frames of an earlier window are not counted.
    #[test]
    fn frames_cross_a_veth_and_are_counted_and_timed() {
        use testbed::sys::{self as netns, Netns};
        if !netns::require_root("frames_cross_a_veth_and_are_counted_and_timed") {
            return;
        }
        let ns = Netns::new(&format!("pktgen-test-{}", std::process::id())).unwrap();
        ns.ip(&[
            "link", "add", "name", "a", "type", "veth", "peer", "name", "b",
        ])
        .unwrap();
        ns.ip(&["link", "set", "dev", "a", "up"]).unwrap();
        ns.ip(&["link", "set", "dev", "b", "up"]).unwrap();
        let _ = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        let name = ns.name.clone();
        std::thread::spawn(move || {
            netns::enter(&name).unwrap();
            let mut sink = Sink::open("b").unwrap();
            let mut g = Generator::open("a", spec(Proto::Udp, 64)).unwrap();
            let stop = AtomicBool::new(false);
            // The sink is polled only after each run: its ring holds the 300 ms (see `open`).
            // An earlier window's frames must not count in the next one.
            g.run(Some(5_000.0), Duration::from_millis(50), &stop);
            std::thread::sleep(Duration::from_millis(20));
            sink.begin(realtime_ns());
            let sent = g.run(Some(20_000.0), Duration::from_millis(300), &stop);
            let got = sink.collect(Duration::from_millis(100), Duration::from_secs(2));
            assert!(sent.frames > 4_000, "{sent:?}");
            assert!((sent.pps() - 20_000.0).abs() < 3_000.0, "{sent:?}");
            assert_eq!(got.frames, sent.frames);
            assert_eq!(got.reordered, 0);
            assert_eq!(got.sink_dropped, 0);
            let p = got.percentiles();
            assert_eq!(p.samples, sent.frames);
            assert!(p.p50_us > 0.0 && p.p50_us < 10_000.0, "{p:?}");
            // As fast as it can: the sink never counts more than was sent.
            sink.begin(realtime_ns());
            let sent = g.run(None, Duration::from_millis(200), &stop);
            let got = sink.collect(Duration::from_millis(100), Duration::from_secs(2));
            assert!(
                got.frames <= sent.frames && got.frames > 0,
                "{sent:?} {}",
                got.frames
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn latency_survives_the_48_bit_wrap() {
        let sent = (1u64 << 48) - 10;
        let arrived = (5u64 << 48) + 15;
        assert_eq!(latency_ns(sent & T48, arrived), 25);
        assert_eq!(latency_ns(100, 350), 250);
    }

    #[test]
    fn the_tally_leaves_out_frames_sent_before_it_and_counts_reordering() {
        let mut w = Tally::new(1_000_000);
        let t = |seq, time_ns| Stamp { seq, time_ns };
        w.record(t(1, 999_000), 1_500_000);
        assert_eq!(w.got.frames, 0);
        w.record(t(2, 1_100_000), 1_500_000);
        w.record(t(4, 1_200_000), 1_500_000);
        w.record(t(3, 1_300_000), 1_500_000);
        assert_eq!(w.got.frames, 3);
        assert_eq!(w.got.reordered, 1);
        assert_eq!(w.got.latency.len(), 3);
    }
}
