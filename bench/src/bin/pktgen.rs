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
        /// Destination MAC (the next hop: a node's uplink).
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
        /// Frame size on the wire, FCS included (64..1518).
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
        Cmd::Send {
            iface,
            dst_mac,
            src_mac,
            src_ip,
            dst_ip,
            sport,
            flows_per_source,
            dport,
            proto,
            tcp_flags,
            size,
            flows,
            rate,
            duration,
        } => {
            if std::path::Path::new("/proc/net/pktgen").exists() {
                eprintln!("pktgen: /proc/net/pktgen exists, but this tool always sends from its own AF_PACKET ring");
            }
            let src_mac = match src_mac {
                Some(m) => m,
                None => iface_mac(&iface)?,
            };
            let spec = FrameSpec {
                src_mac,
                dst_mac,
                src_ip,
                dst_ip,
                sport_base: sport,
                per_source: flows_per_source,
                dport,
                proto,
                size,
                flows,
                tcp_flags,
            };
            let mut g = Generator::open(&iface, spec).map_err(|e| e.to_string())?;
            let rate = (rate > 0.0).then_some(rate);
            let sent = g.run(rate, secs(duration)?, &stop);
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pktgen: {e}");
            ExitCode::FAILURE
        }
    }
}
