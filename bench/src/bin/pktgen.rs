//! `pktgen`: a packet generator and sink for meshd's testbed. See `pktgen --help`.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::pktgen::{FrameSpec, Generator, Proto, Sink};
use bench::rxring::realtime_ns;
use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
EXAMPLES:
  # 64-byte UDP frames over 1024 flows at 200 kpps for 5 s, from eth0 of a namespace:
  ip netns exec meshd-bench-gen pktgen send --iface eth0 --dst-mac 02:62:00:00:01:00 \\
      --src-ip 192.168.100.100 --dst-ip 192.168.100.11 --dport 8080 --rate 200000 --duration 5

  # As fast as it can, 128-byte TCP ACK frames:
  pktgen send --iface eth0 --dst-mac 02:62:00:00:01:00 --dst-ip 192.168.100.11 --proto tcp --size 128

  # Forward up0 -> up0 to the next hop's MAC (a node that only moves frames):
  pktgen forward --in up0 --dst-mac 02:62:00:00:02:00

  # The same through meshd's AF_XDP port:
  pktgen forward --io afxdp --in up0 --dst-mac 02:62:00:00:02:00

  # Count what arrives on the sink side for 6 s (loss, reordering, one-way latency):
  ip netns exec meshd-bench-sink pktgen sink --iface eth0 --duration 6

  # DPDK memif (built with --features bench/dpdk): be the memif server on two sockets, wait for
  # the system under test to connect as client (meshd --io dpdk --uplink
  # net_memif0,role=client,socket=/run/pg/up.sock,socket-abstract=no ...), then send 64-byte
  # frames to its published port for 5 s as fast as they go, counting what comes back on both:
  pktgen memif --socket /run/pg/up.sock --socket /run/pg/tk.sock --dst-mac 02:00:00:00:00:01 \
      --dst-ip 192.168.100.11 --dport 8080 --duration 5

  # The other way round: meshd serves the sockets (role=server in its vdevs) and pktgen
  # connects; run it again after it stops and meshd takes the peer back without a restart:
  pktgen memif --client --socket /run/pg/up.sock --socket /run/pg/tk.sock \
      --dst-mac 02:00:00:00:00:01 --dst-ip 192.168.100.11 --dport 8080 --duration 5

Frames carry a sequence number and their send time (CLOCK_REALTIME), so a sink on the same
machine measures one-way latency. The sink counts only frames sent after it started.
The kernel's pktgen (/proc/net/pktgen) is not used: this one sends from an AF_PACKET TPACKET_V3
TX ring, which works on any Linux with no module to load.";

#[derive(Debug, Parser)]
#[command(name = "pktgen", version, about = "Packet generator and sink (AF_PACKET TPACKET_V3 rings)", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Send stamped UDP or TCP frames at a set rate or as fast as possible.
    Send {
        #[arg(long)]
        iface: String,
        #[command(flatten)]
        frames: FrameArgs,
    },
    /// Forward frames from one interface to another (or back out of the same one), optionally
    /// rewriting the MACs: the raw cost of meshd's AF_PACKET (or AF_XDP) I/O, without its
    /// pipeline. Runs until SIGINT/SIGTERM.
    Forward {
        /// meshd's port backend to forward with, as `meshd --io`: afpacket, or afxdp (an
        /// AF_XDP socket on queue 0 of each interface and its XDP program, detached on exit;
        /// in the default build).
        #[arg(long, value_enum, default_value_t = bench::pktgen::Io::Afpacket)]
        io: bench::pktgen::Io,
        #[arg(long = "in")]
        input: String,
        /// Default: back out of --in.
        #[arg(long = "out")]
        output: Option<String>,
        /// Rewrite the destination MAC to this (and the source MAC to the output's).
        #[arg(long, value_parser = parse_mac)]
        dst_mac: Option<[u8; 6]>,
    },
    /// DPDK memif generator and sink in one thread on one core: memif server on each
    /// --socket (the system under test connects as client), sends on the first (or --tx),
    /// counts stamped frames coming back on all (bare or in VXLAN), answers ARP on all.
    /// Needs a build with `--features bench/dpdk` and root.
    Memif(MemifArgs),
    /// Count stamped frames arriving on an interface: rate, reordering, one-way latency.
    Sink {
        #[arg(long)]
        iface: String,
        /// Seconds to listen.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))?;
    v.try_into()
        .map_err(|_| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))
}

fn parse_u8(s: &str) -> Result<u8, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u8::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a byte (0..255 or 0x00..0xff)"))
}

fn iface_mac(iface: &str) -> Result<[u8; 6], String> {
    let t = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .map_err(|_| format!("no interface {iface} here (see `ip link`)"))?;
    parse_mac(t.trim())
}

fn secs(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("{s}: not a duration in seconds"))
}

fn run(cli: Cli) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| e.to_string())?;
    }
    match cli.cmd {
        Cmd::Send { iface, frames } => {
            if std::path::Path::new("/proc/net/pktgen").exists() {
                eprintln!("pktgen: /proc/net/pktgen exists, but this tool always sends from its own AF_PACKET ring");
            }
            let mac = match frames.src_mac {
                Some(m) => m,
                None => iface_mac(&iface)?,
            };
            let spec = frames.spec(mac);
            let size = spec.size;
            let mut g = Generator::open(&iface, spec).map_err(|e| e.to_string())?;
            let sent = g.run(frames.rate(), secs(frames.duration)?, &stop);
            println!(
                "sent {} frames in {:.2} s: {:.1} kpps ({:.1} Mbit/s on the wire), TX ring full {} times",
                sent.frames,
                sent.secs,
                sent.pps() / 1e3,
                sent.pps() * (size as f64 + 20.0) * 8.0 / 1e6,
                sent.ring_full
            );
            Ok(())
        }
        Cmd::Forward {
            io,
            input,
            output,
            dst_mac,
        } => {
            let rewrite = match dst_mac {
                Some(d) => Some((d, iface_mac(output.as_deref().unwrap_or(&input))?)),
                None => None,
            };
            let f = bench::pktgen::forward(io, &input, output.as_deref(), rewrite, &stop)
                .map_err(|e| e.to_string())?;
            println!(
                "forwarded {} frames; RX ring dropped {}, TX ring full {}",
                f.frames, f.rx_dropped, f.tx_ring_full
            );
            Ok(())
        }
        Cmd::Memif(a) => memif(a, &stop),
        Cmd::Sink {
            iface,
            duration,
            json,
        } => {
            let mut sink = Sink::open(&iface).map_err(|e| e.to_string())?;
            sink.begin(realtime_ns());
            let t0 = Instant::now();
            let limit = secs(duration)?;
            while t0.elapsed() < limit && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sink.poll(10);
            }
            let got = sink.collect(Duration::from_millis(50), Duration::from_millis(500));
            let secs = t0.elapsed().as_secs_f64();
            let p = got.percentiles();
            if json {
                let v = serde_json::json!({
                    "frames": got.frames,
                    "secs": secs,
                    "pps": got.frames as f64 / secs,
                    "reordered": got.reordered,
                    "sink_dropped": got.sink_dropped,
                    "latency": p,
                });
                println!("{v}");
            } else {
                println!(
                    "received {} frames in {:.2} s ({:.1} kpps), {} reordered, sink ring dropped {}\nlatency µs: p50 {:.1}, p99 {:.1}, p99.9 {:.1}, max {:.1}",
                    got.frames,
                    secs,
                    got.frames as f64 / secs / 1e3,
                    got.reordered,
                    got.sink_dropped,
                    p.p50_us,
                    p.p99_us,
                    p.p999_us,
                    p.max_us
                );
            }
            Ok(())
        }
    }
}

/// What `send` and `memif` generate.
#[derive(Debug, clap::Args)]
struct FrameArgs {
    /// Destination MAC (the next hop: a node's uplink, or the system under test's interface).
    #[arg(long, value_parser = parse_mac)]
    dst_mac: [u8; 6],
    /// Source MAC (default: the interface's).
    #[arg(long, value_parser = parse_mac)]
    src_mac: Option<[u8; 6]>,
    #[arg(long, default_value = "192.168.100.100")]
    src_ip: Ipv4Addr,
    #[arg(long)]
    dst_ip: Ipv4Addr,
    /// First source port; flow i uses sport + i % N and source address src-ip + i / N, N
    /// being --flows-per-source.
    #[arg(long, default_value_t = 10_000)]
    sport: u16,
    /// Flows per source address (1 to 50000): with --flows 200000, 200 makes the flows come
    /// from 1,000 addresses.
    #[arg(long, default_value_t = bench::pktgen::FLOWS_PER_ADDR)]
    flows_per_source: u32,
    #[arg(long, default_value_t = 8080)]
    dport: u16,
    #[arg(long, value_enum, default_value_t = Proto::Udp)]
    proto: Proto,
    /// TCP flags byte (0x10 ACK, 0x02 SYN).
    #[arg(long, default_value = "0x10", value_parser = parse_u8)]
    tcp_flags: u8,
    /// Frame size on the wire, FCS included (64..1518); with memif's --vxlan-*, the frame
    /// inside VXLAN.
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 1024)]
    flows: u32,
    /// Frames per second; 0: as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
}

impl FrameArgs {
    /// The frames, from --src-mac or else `mac` (the interface's).
    fn spec(&self, mac: [u8; 6]) -> FrameSpec {
        FrameSpec {
            src_mac: self.src_mac.unwrap_or(mac),
            dst_mac: self.dst_mac,
            src_ip: self.src_ip,
            dst_ip: self.dst_ip,
            sport_base: self.sport,
            per_source: self.flows_per_source,
            dport: self.dport,
            proto: self.proto,
            size: self.size,
            flows: self.flows,
            tcp_flags: self.tcp_flags,
        }
    }

    /// --rate as the generators take it.
    fn rate(&self) -> Option<f64> {
        (self.rate > 0.0).then_some(self.rate)
    }
}

/// `pktgen memif`'s options.
#[derive(Debug, clap::Args)]
// Read only by the DPDK build's `memif`.
#[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
struct MemifArgs {
    /// A memif socket file to serve, or with --client to connect to (repeat for more
    /// interfaces: 0, 1, ...).
    #[arg(long = "socket", required = true)]
    sockets: Vec<std::path::PathBuf>,
    /// Connect to the sockets as the memif client instead of serving them: the system under
    /// test is the server (meshd with role=server in its --uplink/--tasks vdev) and must be
    /// running first. Stopping pktgen and running it again is then a peer restarting, which a
    /// memif server takes back without a restart of its own.
    #[arg(long)]
    client: bool,
    /// The interface to send on (index into --socket).
    #[arg(long, default_value_t = 0)]
    tx: usize,
    /// The core to run on.
    #[arg(long, default_value_t = 0)]
    core: usize,
    #[command(flatten)]
    frames: FrameArgs,
    /// Send the frames inside VXLAN from this VTEP address (a peer node) to --vxlan-dst.
    #[arg(long, requires = "vxlan_dst")]
    vxlan_src: Option<Ipv4Addr>,
    #[arg(long, requires = "vxlan_src")]
    vxlan_dst: Option<Ipv4Addr>,
    /// The outer destination MAC (default: --dst-mac); the inner one is then --dst-mac.
    #[arg(long, value_parser = parse_mac)]
    vxlan_dst_mac: Option<[u8; 6]>,
    #[arg(long, default_value_t = 4096)]
    vni: u32,
    /// Seconds to wait for the peer to connect.
    #[arg(long, default_value_t = 30.0)]
    wait: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[cfg(not(feature = "dpdk"))]
fn memif(_: MemifArgs, _: &AtomicBool) -> Result<(), String> {
    Err("this pktgen was built without DPDK: build it with `cargo build --release -p bench --features bench/dpdk` (needs libdpdk-dev and pkg-config)".into())
}

#[cfg(feature = "dpdk")]
fn memif(a: MemifArgs, stop: &AtomicBool) -> Result<(), String> {
    use bench::memif::{Frames, Memif, Role, Vxlan};
    if a.tx >= a.sockets.len() {
        return Err(format!(
            "--tx {}: there are {} --socket (0 to {})",
            a.tx,
            a.sockets.len(),
            a.sockets.len() - 1
        ));
    }
    // Everything checked before EAL starts: a bad option changes nothing.
    let (wait, duration) = (secs(a.wait)?, secs(a.frames.duration)?);
    let f = &a.frames;
    let mut frames = Frames {
        // The source MACs (but --src-mac) are the interface's, known once it exists.
        inner: f.spec([0; 6]),
        vxlan: a.vxlan_src.zip(a.vxlan_dst).map(|(src_ip, dst_ip)| Vxlan {
            src_mac: [0; 6],
            dst_mac: a.vxlan_dst_mac.unwrap_or(f.dst_mac),
            src_ip,
            dst_ip,
            vni: a.vni,
        }),
    };
    frames.inner.check().map_err(|e| e.to_string())?;
    let role = if a.client { Role::Client } else { Role::Server };
    let mut m = Memif::open(&a.sockets, role, a.core, 512).map_err(|e| e.to_string())?;
    let me = m.mac(a.tx);
    frames.inner.src_mac = f.src_mac.unwrap_or(me);
    if let Some(v) = frames.vxlan.as_mut() {
        v.src_mac = me;
    }
    eprintln!(
        "pktgen: memif {} on {} socket(s); waiting up to {} s for the peer",
        if a.client { "client" } else { "server" },
        a.sockets.len(),
        a.wait
    );
    m.wait_up(wait, stop).map_err(|e| e.to_string())?;
    let (sent, got) = m
        .run(
            &frames,
            a.tx,
            a.frames.rate(),
            duration,
            stop,
            Duration::from_millis(50),
        )
        .map_err(|e| e.to_string())?;
    let p = got.percentiles();
    let loss = sent.frames.saturating_sub(got.frames);
    if a.json {
        let v = serde_json::json!({
            "sent": sent,
            "received": got.frames,
            "lost": loss,
            "reordered": got.reordered,
            "latency": p,
            "chores": m.chores,
        });
        println!("{v}");
    } else {
        println!(
            "sent {} frames in {:.2} s ({:.1} kpps), received {} ({} lost, {} reordered), ARP answered {}\nlatency µs: p50 {:.1}, p99 {:.1}, p99.9 {:.1}, max {:.1}",
            sent.frames,
            sent.secs,
            sent.pps() / 1e3,
            got.frames,
            loss,
            got.reordered,
            m.chores.arp,
            p.p50_us,
            p.p99_us,
            p.p999_us,
            p.max_us
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pktgen: {e}");
            ExitCode::FAILURE
        }
    }
}
