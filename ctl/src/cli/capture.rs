//! `meshctl capture`: what meshd's workers receive and send, written as a pcapng file that
//! tcpdump, tshark and Wireshark read (DPVS#203: "tcpdump cannot be used" on a bypass
//! datapath). Each node asked streams its copies on a connection of its own; meshctl merges
//! them into one file, one interface per node and port.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Args;
use ctl::client::{ClientError, Connection};
use ctl::proto::{
    CaptureChunk, CaptureDirection, CapturePorts, CaptureSpec, CaptureStart, CaptureStop,
    CapturedFrame, Command, ErrorCode, Response, Runtime, CAPTURE_HEARTBEAT_MS,
    CAPTURE_MAX_SNAPLEN, CAPTURE_MIN_SNAPLEN,
};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

use super::{spec, CliError, Ctx};

pub(super) const EXAMPLES: &str = "\
Examples:
  meshctl capture -w web.pcap --filter 'tcp port 8080' --count 100
  meshctl capture --port tasks --duration 10s -w tasks.pcap
  meshctl --socket /run/n1.sock,/run/n2.sock capture -w mesh.pcap --filter 'host 10.0.0.11'
  meshctl --socket /run/n1.sock,/run/n2.sock capture --node n2 -w n2.pcap
  meshctl capture -w - --filter icmp | tcpdump -n -r -
  tshark -r web.pcap -T fields -e frame.interface_name -e frame.comment

Every node named by --socket (or only --node's) copies what its workers receive, before any
translation, and what they send, after it: a published-port SYN appears twice, as the client
sent it (rx on the uplink) and as the task gets it (tx on the tasks port, to the task's address
from the masquerade address); VXLAN to a peer appears encapsulated. The file is pcapng: one
interface per node and port (n1:uplink, n1:tasks), each frame marked inbound or outbound and
with a comment (\"n1 uplink rx, before translation, worker 0\"). Frames of the tasks port are
written without its VLAN tag (the comment names the VLAN); --filter sees them the same way.

It ends after --count frames or --duration, or on Ctrl-C, and says how many frames it wrote and
how many it missed. Missed frames were not copied because a worker's capture ring was full (the
writer did not keep up); they went on through meshd like every other frame: capture never drops
or delays traffic, it costs the workers the filter and a copy per matching frame. One capture
at a time per node.";

#[derive(Debug, Args)]
pub(super) struct CaptureArgs {
    /// Where to write the capture (pcapng); - for standard output
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    file: PathBuf,
    /// Which ports to capture: all, uplink (clients and peers) or tasks (the local tasks)
    #[arg(long, default_value = "all", value_name = "all|uplink|tasks", value_parser = parse_ports)]
    port: CapturePorts,
    /// Only frames this libpcap expression matches (tcpdump's syntax, man pcap-filter)
    #[arg(long, value_name = "EXPR", default_value = "")]
    filter: String,
    /// Stop after this many frames (from all nodes together)
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop after this long (500ms, 10s, 2m)
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// Bytes kept of each frame (96 to 2048; whole frames by default)
    #[arg(short = 's', long, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(i64::from(CAPTURE_MIN_SNAPLEN)..=i64::from(CAPTURE_MAX_SNAPLEN)))]
    snaplen: Option<u32>,
    /// Capture on this node only: the --socket that is its meshd answers, the others are not
    /// asked to capture
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
}

fn parse_ports(s: &str) -> Result<CapturePorts, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "all" | "both" => Ok(CapturePorts::All),
        "uplink" => Ok(CapturePorts::Uplink),
        "tasks" => Ok(CapturePorts::Tasks),
        _ => Err(format!("{s:?}: expected all, uplink or tasks")),
    }
}

/// One node's stream: its connection's number, and what it sent.
enum Event {
    Chunk(usize, CaptureChunk),
    Failed(usize, String),
}

/// A node that started capturing.
struct Node {
    start: CaptureStart,
    matched: u64,
    missed: u64,
    written: u64,
    end: Option<CaptureStop>,
    failed: Option<String>,
}

pub(super) fn run(ctx: &Ctx, a: CaptureArgs) -> Result<(), CliError> {
    let duration_ms = match &a.duration {
        Some(d) => Some(u64::from(spec::duration_ms("--duration", d)?)),
        None => None,
    };
    let spec = CaptureSpec {
        node: a.node.clone(),
        ports: a.port,
        filter: a.filter.trim().to_string(),
        snaplen: a.snaplen,
        count: a.count,
        duration_ms,
    };
    // Start every node before writing a byte: a refusal (a filter that does not parse, a
    // capture already running) leaves no file behind.
    let mut conns = Vec::new();
    let mut elsewhere = Vec::new();
    for socket in &ctx.sockets {
        let mut c = Connection::connect(socket, ctx.timeout)?;
        let cmd = Command::Runtime(Runtime::Capture { spec: spec.clone() });
        match c.send(&cmd)? {
            Response::Ok(ok) => {
                let chunk: CaptureChunk = super::decode(socket, cmd.name(), ok.result)?;
                let Some(start) = chunk.start else {
                    return Err(CliError::Msg(format!(
                        "{}: meshd began the capture without saying so (are meshctl and meshd of the same release?)",
                        socket.display()
                    )));
                };
                conns.push((c, start));
            }
            Response::Err(e) if a.node.is_some() && e.code == ErrorCode::NotFound => {
                elsewhere.push(e.message);
            }
            Response::Err(e) => {
                return Err(CliError::Msg(format!(
                    "{}{}",
                    ctx.prefix(socket),
                    e.message
                )));
            }
        }
    }
    if conns.is_empty() {
        return Err(CliError::Msg(format!(
            "no --socket reaches node {}: {}",
            a.node.as_deref().unwrap_or("?"),
            elsewhere.join("; ")
        )));
    }
    let names: Vec<&str> = conns.iter().map(|(_, s)| s.node.as_str()).collect();
    eprintln!(
        "capturing on {} ({}); Ctrl-C to stop",
        names.join(", "),
        if spec.filter.is_empty() {
            "every frame".to_string()
        } else {
            format!("filter: {}", spec.filter)
        }
    );
    let to_stdout = a.file.as_os_str() == "-";
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        let f = std::fs::File::create(&a.file)
            .map_err(|e| CliError::Msg(format!("cannot create {}: {e}", a.file.display())))?;
        Box::new(f)
    };
    let mut out = PcapNgWriter::new(std::io::BufWriter::new(sink)).map_err(write_error)?;
    let mut nodes: Vec<Node> = Vec::new();
    for (_, start) in &conns {
        for port in ["uplink", "tasks"] {
            out.write_pcapng_block(interface(start, port))
                .map_err(write_error)?;
        }
        nodes.push(Node {
            start: start.clone(),
            matched: 0,
            missed: 0,
            written: 0,
            end: None,
            failed: None,
        });
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    // A node that sends nothing for this long (it sends at least every heartbeat) is lost.
    let patience = ctx
        .timeout
        .max(Duration::from_millis(CAPTURE_HEARTBEAT_MS * 10));
    std::thread::scope(|scope| -> Result<(), CliError> {
        for (i, (mut c, _)) in conns.into_iter().enumerate() {
            if let Ok(h) = c.handle() {
                handles.push(h);
            }
            let tx = tx.clone();
            scope.spawn(move || follow(i, &mut c, patience, &tx));
        }
        drop(tx);
        let progress = std::io::stderr().is_terminal();
        let mut last_progress = Instant::now();
        let mut stopping = false;
        let mut total = 0u64;
        let mut pending: Vec<(usize, CapturedFrame)> = Vec::new();
        loop {
            if interrupted.load(Ordering::Relaxed) && !stopping {
                // Closing the connections ends each node's capture; what they sent is kept.
                stopping = true;
                for h in &handles {
                    let _ = h.shutdown(std::net::Shutdown::Both);
                }
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Event::Chunk(i, chunk)) => {
                    for f in chunk.frames {
                        if a.count.is_some_and(|c| total >= c) {
                            break;
                        }
                        pending.push((i, f));
                        total += 1;
                    }
                    let n = &mut nodes[i];
                    n.matched = chunk.matched;
                    n.missed = chunk.missed;
                    if chunk.end.is_some() {
                        n.end = chunk.end;
                    }
                    if a.count.is_some_and(|c| total >= c) && !stopping {
                        // Enough from all nodes together: the others stop too.
                        stopping = true;
                        for h in &handles {
                            let _ = h.shutdown(std::net::Shutdown::Both);
                        }
                    }
                }
                Ok(Event::Failed(i, why)) => {
                    if !stopping {
                        nodes[i].failed = Some(why);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Frames older than the window are in: written in time order, every node's
            // interleaved.
            let ripe = unix_us().saturating_sub(MERGE_WINDOW_US);
            write_ripe(&mut out, &mut pending, &mut nodes, Some(ripe))?;
            if progress && last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                eprint!("\r{}", progress_line(&nodes, total));
            }
        }
        write_ripe(&mut out, &mut pending, &mut nodes, None)?;
        if progress {
            eprintln!();
        }
        Ok(())
    })?;
    out.get_mut()
        .flush()
        .map_err(|e| CliError::Msg(format!("cannot write the capture: {e}")))?;
    drop(out);
    let interrupted = interrupted.load(Ordering::Relaxed);
    let mut failed = false;
    for n in &nodes {
        let why = match (&n.failed, n.end) {
            (Some(e), _) => {
                failed = true;
                format!("lost: {e}")
            }
            (None, Some(CaptureStop::Count)) => "count reached".into(),
            (None, Some(CaptureStop::Duration)) => "duration reached".into(),
            (None, Some(CaptureStop::Shutdown)) => "meshd stopped".into(),
            (None, None) if interrupted => "interrupted".into(),
            (None, None) => "stopped: enough frames from all nodes".into(),
        };
        eprintln!(
            "{}: {} frames written, {} matched, {} missed ({why})",
            n.start.node, n.written, n.matched, n.missed
        );
    }
    if !to_stdout {
        eprintln!("wrote {}", a.file.display());
    }
    if failed {
        return Err(CliError::Reported);
    }
    Ok(())
}

/// How long meshctl holds frames before writing them, so that the nodes' streams (each a few
/// milliseconds behind its node) interleave in time order in the file.
const MERGE_WINDOW_US: u64 = 1_000_000;

/// Unix microseconds now.
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Writes the frames of `pending` seen before `until` (all of them with `None`), in time
/// order.
fn write_ripe<W: Write>(
    out: &mut PcapNgWriter<W>,
    pending: &mut Vec<(usize, CapturedFrame)>,
    nodes: &mut [Node],
    until: Option<u64>,
) -> Result<(), CliError> {
    if pending.is_empty() {
        return Ok(());
    }
    // Stable: one node's frames keep their order.
    pending.sort_by_key(|(_, f)| f.time_us);
    let n = match until {
        Some(t) => pending.partition_point(|(_, f)| f.time_us < t),
        None => pending.len(),
    };
    for (i, f) in pending.drain(..n) {
        out.write_pcapng_block(packet(&nodes[i].start.node, i, &f))
            .map_err(write_error)?;
        nodes[i].written += 1;
    }
    Ok(())
}

/// Reads node `i`'s stream until its last chunk, the connection closes, or an error.
fn follow(i: usize, c: &mut Connection, patience: Duration, tx: &mpsc::Sender<Event>) {
    if let Err(e) = c.set_timeout(patience) {
        let _ = tx.send(Event::Failed(i, e.to_string()));
        return;
    }
    loop {
        let got = match c.receive() {
            Ok(Response::Ok(ok)) => serde_json::from_value::<CaptureChunk>(ok.result)
                .map_err(|e| format!("an answer meshctl cannot read: {e}")),
            Ok(Response::Err(e)) => Err(e.message),
            Err(ClientError::Closed { .. }) => Err("meshd closed the capture early".into()),
            Err(e) => Err(e.to_string()),
        };
        match got {
            Ok(chunk) => {
                let last = chunk.end.is_some();
                if tx.send(Event::Chunk(i, chunk)).is_err() || last {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Event::Failed(i, e));
                return;
            }
        }
    }
}

fn write_error(e: pcap_file::PcapError) -> CliError {
    CliError::Msg(format!("cannot write the capture: {e}"))
}

fn progress_line(nodes: &[Node], total: u64) -> String {
    let missed: u64 = nodes.iter().map(|n| n.missed).sum();
    let per: Vec<String> = nodes
        .iter()
        .map(|n| format!("{} {}", n.start.node, n.written))
        .collect();
    format!("{total} frames ({}), {missed} missed", per.join(", "))
}

/// The pcapng interface of one node's port: named `n1:uplink`, nanosecond time stamps.
fn interface(start: &CaptureStart, port: &str) -> InterfaceDescriptionBlock<'static> {
    let what = match port {
        "uplink" => "the underlay NIC: clients and peer nodes",
        _ => "the local tasks' segment (frames shown without their VLAN tag)",
    };
    let mut options = vec![
        InterfaceDescriptionOption::IfName(Cow::Owned(format!("{}:{port}", start.node))),
        InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
            "meshd {} {port} port, {what}; inbound: received, before translation; outbound: sent, after translation",
            start.node
        ))),
        InterfaceDescriptionOption::IfTsResol(9),
    ];
    if !start.filter.is_empty() {
        // if_filter: a type byte (0: a libpcap filter string), then the string.
        let mut f = vec![0u8];
        f.extend_from_slice(start.filter.as_bytes());
        options.push(InterfaceDescriptionOption::IfFilter(Cow::Owned(f)));
    }
    InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: start.snaplen,
        options,
    }
}

/// A captured frame as a pcapng packet of node `i`'s interface for its port.
fn packet<'a>(node: &str, i: usize, f: &'a CapturedFrame) -> EnhancedPacketBlock<'a> {
    // The node's two interfaces: uplink, then tasks.
    let (port, port_name) = match f.port {
        CapturePorts::Tasks => (1, "tasks"),
        _ => (0, "uplink"),
    };
    let (flag, word, stage) = match f.direction {
        // epb_flags bits 0-1: 01 inbound, 10 outbound.
        CaptureDirection::Rx => (1u32, "rx", "before translation"),
        CaptureDirection::Tx => (2u32, "tx", "after translation"),
    };
    let vlan = if f.vlan != 0 {
        format!(", vlan {}", f.vlan)
    } else {
        String::new()
    };
    EnhancedPacketBlock {
        interface_id: u32::try_from(i * 2 + port).unwrap_or(u32::MAX),
        timestamp: Duration::from_micros(f.time_us),
        original_len: f.len,
        data: Cow::Borrowed(&f.data),
        options: vec![
            EnhancedPacketOption::Flags(flag),
            EnhancedPacketOption::Comment(Cow::Owned(format!(
                "{node} {port_name} {word}, {stage}, worker {}{vlan}",
                f.worker
            ))),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};

    #[test]
    fn frames_become_marked_pcapng_packets_of_their_node_and_port() {
        let start = CaptureStart {
            node: "n1".into(),
            workers: 2,
            snaplen: 2048,
            filter: "tcp".into(),
        };
        let frames = [
            CapturedFrame {
                time_us: 1_700_000_000_123_456,
                worker: 1,
                port: CapturePorts::Uplink,
                direction: CaptureDirection::Rx,
                vlan: 0,
                len: 60,
                data: vec![0xa5; 60],
            },
            CapturedFrame {
                time_us: 1_700_000_000_123_457,
                worker: 1,
                port: CapturePorts::Tasks,
                direction: CaptureDirection::Tx,
                vlan: 101,
                len: 1514,
                data: vec![0x5a; 96],
            },
        ];
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        for port in ["uplink", "tasks"] {
            w.write_pcapng_block(interface(&start, port)).unwrap();
        }
        for f in &frames {
            w.write_pcapng_block(packet("n1", 0, f)).unwrap();
        }
        let bytes = w.into_inner();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut names = Vec::new();
        let mut packets = Vec::new();
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(i) => {
                    assert!(i
                        .options
                        .contains(&InterfaceDescriptionOption::IfTsResol(9)));
                    names.extend(i.options.iter().filter_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    }));
                }
                Block::EnhancedPacket(p) => packets.push(p.into_owned()),
                _ => {}
            }
        }
        assert_eq!(names, ["n1:uplink", "n1:tasks"]);
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].interface_id, 0);
        assert_eq!(
            packets[0].timestamp,
            Duration::from_micros(1_700_000_000_123_456)
        );
        assert_eq!(packets[0].original_len, 60);
        assert_eq!(&packets[0].data[..], &[0xa5; 60][..]);
        assert!(packets[0].options.contains(&EnhancedPacketOption::Flags(1)));
        assert!(packets[0].options.contains(&EnhancedPacketOption::Comment(
            "n1 uplink rx, before translation, worker 1".into()
        )));
        assert_eq!(packets[1].interface_id, 1);
        assert_eq!(packets[1].original_len, 1514);
        assert_eq!(packets[1].data.len(), 96);
        assert!(packets[1].options.contains(&EnhancedPacketOption::Flags(2)));
        assert!(packets[1].options.contains(&EnhancedPacketOption::Comment(
            "n1 tasks tx, after translation, worker 1, vlan 101".into()
        )));
    }

    #[test]
    fn ports_parse_in_any_case_and_others_are_refused() {
        assert_eq!(parse_ports("Uplink").unwrap(), CapturePorts::Uplink);
        assert_eq!(parse_ports("tasks").unwrap(), CapturePorts::Tasks);
        assert_eq!(parse_ports("all").unwrap(), CapturePorts::All);
        assert!(parse_ports("eth0")
            .unwrap_err()
            .contains("all, uplink or tasks"));
    }
}
