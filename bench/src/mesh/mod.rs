//! `bench mesh`: meshd, the Linux kernel (Swarm's way) and the raw veth ceiling (testpmd), side
//! by side on the same namespace topology ([`topo`]), alternating and repeated.
//!
//! For each system in each round:
//! 1. the topology is built afresh and the system started on the two nodes;
//! 2. a warm-up at a low rate until frames reach the sink (ARP, flows), then every flow once;
//! 3. **full load**: the generator as fast as it can for one step: what it sent, what arrived;
//! 4. **zero-loss search** (RFC 2544 §26.1 style): a binary search on the offered rate between 0
//!    and the rate of step 3; a step passes when the loss is at most the threshold and the
//!    generator really sent at least 95% of the asked rate. The zero-loss rate is the highest
//!    rate *actually sent* by any step (step 3 included) whose loss was within the threshold;
//! 5. **latency**: one longer step at 50% of that rate; the sink's HdrHistogram of one-way
//!    latencies gives p50/p99/p99.9;
//! 6. **cost**: one step at a fixed offered rate every system sustains (`--cost-kpps`), with the
//!    CPU time spent meanwhile on all CPUs by the generator, the sink, the system and the
//!    kernel's softirq threads ([`cost`]);
//! 7. **TCP connection rate**: real handshakes from the generator's kernel to the published
//!    port, answered by whoami in the sink (not for testpmd, which does no NAT);
//! 8. the topology is removed.
//!
//! Each round also runs the cost step once on the bare path (the generator through the switch
//! straight to the sink, [`Topology::bare`]); each system's cost per packet less the bare path's
//! of the same round is the system's own.

pub mod cli;
pub mod cost;
#[cfg(feature = "dpdk")]
pub mod memif;
pub mod report;
pub mod tcp;
pub mod topo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::pktgen::{FrameSpec, Generator, Proto, Received, Sent, Sink};
use crate::rxring::realtime_ns;
use report::{BareRun, CostStep, Machine, Report, Run, Settings, Summary, Trial};
use topo::{Programs, System, Topology};

/// Why `bench mesh` stopped.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("bench mesh needs root (it builds network namespaces): run it with sudo")]
    NotRoot,
    #[error("setting up: {0}")]
    Setup(String),
    #[error("{0}")]
    Run(String),
    #[error("{0}")]
    Report(String),
    #[error("interrupted: the namespaces are removed")]
    Interrupted,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub rounds: usize,
    pub systems: Vec<System>,
    pub size: usize,
    pub proto: Proto,
    pub flows: u32,
    pub tasks: usize,
    pub step: Duration,
    pub steps: usize,
    /// Loss threshold in percent (0: RFC 2544's zero loss).
    pub loss_pct: f64,
    pub latency: Duration,
    /// The cost step's offered rate, frames per second.
    pub cost_pps: f64,
    /// The cost step's length (zero: no cost step).
    pub cost: Duration,
    pub tcp: Duration,
    pub tcp_threads: usize,
    pub cores: Vec<usize>,
    /// Steer each node's uplink receive work to the node's cores (RPS).
    pub rps: bool,
    pub out: PathBuf,
    /// Also write `bench-mesh.md` and `bench-mesh.svg` here (the README's copy).
    pub docs: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

/// The generator's thread, inside the generator namespace.
struct GenThread {
    tx: mpsc::Sender<(Option<f64>, Duration, mpsc::Sender<Sent>)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl GenThread {
    fn start(spec: FrameSpec, stop: Arc<AtomicBool>) -> Result<GenThread, MeshError> {
        let (tx, rx) = mpsc::channel::<(Option<f64>, Duration, mpsc::Sender<Sent>)>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("pktgen-tx".into())
            .spawn(move || {
                let g = testbed::sys::enter(topo::GEN_NS)
                    .map_err(|e| format!("entering {}: {e}", topo::GEN_NS))
                    .and_then(|()| Generator::open("eth0", spec).map_err(|e| e.to_string()));
                let mut g = match g {
                    Ok(g) => {
                        let _ = ready_tx.send(Ok(()));
                        g
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok((rate, dur, reply)) = rx.recv() {
                    let _ = reply.send(g.run(rate, dur, &stop));
                }
            })
            .map_err(|e| MeshError::Setup(format!("starting the generator thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(GenThread {
                tx,
                handle: Some(handle),
            }),
            Ok(Err(e)) => Err(MeshError::Setup(format!("generator: {e}"))),
            Err(_) => Err(MeshError::Setup("the generator thread died".into())),
        }
    }

    fn run(&self, rate: Option<f64>, dur: Duration) -> Result<Sent, MeshError> {
        let (rtx, rrx) = mpsc::channel();
        self.tx
            .send((rate, dur, rtx))
            .map_err(|_| MeshError::Run("the generator thread is gone".into()))?;
        rrx.recv()
            .map_err(|_| MeshError::Run("the generator thread is gone".into()))
    }
}

impl Drop for GenThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

enum SinkCmd {
    Begin(u64, mpsc::Sender<()>),
    Collect(mpsc::Sender<Received>),
}

/// The sink's thread, inside the sink namespace.
struct SinkThread {
    tx: mpsc::Sender<SinkCmd>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl SinkThread {
    fn start(quiet: Duration) -> Result<SinkThread, MeshError> {
        let (tx, rx) = mpsc::channel::<SinkCmd>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("pktgen-sink".into())
            .spawn(move || {
                let s = testbed::sys::enter(topo::SINK_NS)
                    .and_then(|()| Sink::open("eth0"))
                    .map_err(|e| format!("sink in {}: {e}", topo::SINK_NS));
                let mut sink = match s {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    match rx.try_recv() {
                        Ok(SinkCmd::Begin(from, ack)) => {
                            sink.begin(from);
                            let _ = ack.send(());
                        }
                        Ok(SinkCmd::Collect(reply)) => {
                            let _ = reply.send(sink.collect(quiet, Duration::from_secs(2)));
                        }
                        Err(mpsc::TryRecvError::Empty) => {
                            sink.poll(2);
                        }
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    }
                }
            })
            .map_err(|e| MeshError::Setup(format!("starting the sink thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(SinkThread {
                tx,
                handle: Some(handle),
            }),
            Ok(Err(e)) => Err(MeshError::Setup(e)),
            Err(_) => Err(MeshError::Setup("the sink thread died".into())),
        }
    }

    fn begin(&self, from: u64) -> Result<(), MeshError> {
        let (a, b) = mpsc::channel();
        self.tx
            .send(SinkCmd::Begin(from, a))
            .map_err(|_| MeshError::Run("the sink thread is gone".into()))?;
        b.recv()
            .map_err(|_| MeshError::Run("the sink thread is gone".into()))
    }

    fn collect(&self) -> Result<Received, MeshError> {
        let (a, b) = mpsc::channel();
        self.tx
            .send(SinkCmd::Collect(a))
            .map_err(|_| MeshError::Run("the sink thread is gone".into()))?;
        b.recv()
            .map_err(|_| MeshError::Run("the sink thread is gone".into()))
    }
}

impl Drop for SinkThread {
    fn drop(&mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The generator and sink of one system's run.
struct Rig {
    gen: GenThread,
    sink: SinkThread,
    loss_pct: f64,
}

impl Rig {
    /// One trial: open the sink's window, send, wait for the stragglers, count.
    fn trial(&self, rate: Option<f64>, dur: Duration) -> Result<(Trial, Received), MeshError> {
        // Frames sent from now on count; the generator's start is later still.
        self.sink.begin(realtime_ns())?;
        let sent = self.gen.run(rate, dur)?;
        let got = self.sink.collect()?;
        let received = got.frames.min(sent.frames);
        let loss_pct = if sent.frames > 0 {
            100.0 * (sent.frames - received) as f64 / sent.frames as f64
        } else {
            100.0
        };
        let loss_ok = sent.frames > 0 && loss_pct <= self.loss_pct;
        let passed = loss_ok && rate.is_none_or(|r| sent.pps() >= 0.95 * r);
        Ok((
            Trial {
                target_pps: rate,
                sent: sent.frames,
                received: got.frames,
                secs: sent.secs,
                sent_pps: sent.pps(),
                delivered_pps: got.frames as f64 / sent.secs.max(1e-9),
                loss_pct,
                reordered: got.reordered,
                sink_dropped: got.sink_dropped,
                loss_ok,
                passed,
            },
            got,
        ))
    }
}

impl Rig {
    /// Sends until frames reach the sink (ARP, meshd learning its neighbours, testpmd
    /// starting), at most 30 s.
    fn warm_up(&self, topo: &mut Topology, stop: &AtomicBool) -> Result<(), MeshError> {
        let t0 = std::time::Instant::now();
        loop {
            check(stop)?;
            topo.check_alive()?;
            let (t, _) = self.trial(Some(2000.0), Duration::from_millis(200))?;
            if t.received > 0 {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(MeshError::Run(
                    "no frame reached the sink in 30 s of warm-up".into(),
                ));
            }
        }
    }

    /// The cost step: one trial at `rate`, with the CPU time `probe` saw spent around it.
    fn cost_step(
        &self,
        probe: &cost::CpuProbe,
        rate: f64,
        dur: Duration,
    ) -> Result<CostStep, MeshError> {
        let before = probe.read();
        let (trial, _) = self.trial(Some(rate), dur)?;
        let spent = probe.read().since(&before);
        let step = CostStep {
            trial,
            cpu_ns: spent.tasks_ns,
            machine_busy_ns: spent.machine_ns,
        };
        eprintln!(
            "    cost at {:.0} kpps: {} ({:.1} ms of CPU for {} frames delivered, loss {:.3}%; the whole machine was busy {:.1} ms)",
            rate / 1e3,
            step.per_packet_ns()
                .map_or_else(|| "rate not sustained".into(), |c| format!("{c:.0} ns CPU per packet")),
            step.cpu_ns as f64 / 1e6,
            step.trial.received,
            step.trial.loss_pct,
            step.machine_busy_ns as f64 / 1e6,
        );
        Ok(step)
    }
}

fn check(stop: &AtomicBool) -> Result<(), MeshError> {
    if stop.load(Ordering::Relaxed) {
        Err(MeshError::Interrupted)
    } else {
        Ok(())
    }
}

fn say(t: &Trial) {
    let target = t
        .target_pps
        .map_or_else(|| "max".to_string(), |r| format!("{:.0}k", r / 1e3));
    eprintln!(
        "    {target:>6}: sent {:>7.1} kpps, delivered {:>7.1} kpps, loss {:>6.3}%{}{}",
        t.sent_pps / 1e3,
        t.delivered_pps / 1e3,
        t.loss_pct,
        if t.passed { "  pass" } else { "  fail" },
        if t.sink_dropped > 0 {
            format!(" (sink ring dropped {})", t.sink_dropped)
        } else {
            String::new()
        }
    );
}

impl Rig {
    /// The generator (sending to `dst_mac`) and the sink.
    fn start(o: &Options, dst_mac: [u8; 6], stop: &Arc<AtomicBool>) -> Result<Rig, MeshError> {
        let spec = FrameSpec {
            src_mac: topo::GEN_MAC,
            dst_mac,
            src_ip: topo::GEN_IP,
            dst_ip: topo::N1_IP,
            sport_base: 10_000,
            per_source: crate::pktgen::FLOWS_PER_ADDR,
            dport: topo::PUBLISHED,
            proto: o.proto,
            size: o.size,
            flows: o.flows,
            tcp_flags: 0x10,
        };
        Ok(Rig {
            gen: GenThread::start(spec, stop.clone())?,
            sink: SinkThread::start(Duration::from_millis(if o.quick { 60 } else { 150 }))?,
            loss_pct: o.loss_pct,
        })
    }
}

/// The bare path's cost step in one round: the same frames at the same rate, from the generator
/// through the switch to the sink's MAC, no node.
fn run_bare(round: usize, o: &Options, stop: &Arc<AtomicBool>) -> Result<BareRun, MeshError> {
    let mut topo = Topology::bare(o.tasks)?;
    let rig = Rig::start(o, topo::SINK_MAC, stop)?;
    let result = (|| {
        rig.warm_up(&mut topo, stop)?;
        check(stop)?;
        rig.cost_step(&cost::CpuProbe::new(&[]), o.cost_pps, o.cost)
    })();
    drop(rig);
    match result {
        Ok(step) => Ok(BareRun { round, step }),
        Err(MeshError::Interrupted) => Err(MeshError::Interrupted),
        Err(e) => Err(MeshError::Run(format!("bare path: {e}"))),
    }
}

/// One system, one round.
fn run_one(
    system: System,
    round: usize,
    o: &Options,
    p: &Programs,
    stop: &Arc<AtomicBool>,
) -> Result<Run, MeshError> {
    let mut topo = Topology::build(system, o.tasks)?;
    let with_tcp = !system.is_forwarder();
    if with_tcp {
        topo.start_whoami(p)?;
    }
    topo.start_system(p, o.tasks, &o.cores, o.rps)?;
    let rig = Rig::start(o, topo::N1_UP_MAC, stop)?;
    let result = measure(system, round, o, &rig, &mut topo, stop);
    drop(rig);
    match result {
        Ok(r) => Ok(r),
        Err(MeshError::Interrupted) => Err(MeshError::Interrupted),
        Err(e) => Err(MeshError::Run(format!(
            "{}: {e}{}",
            system.name(),
            topo.log_tails()
        ))),
    }
}

fn measure(
    system: System,
    round: usize,
    o: &Options,
    rig: &Rig,
    topo: &mut Topology,
    stop: &AtomicBool,
) -> Result<Run, MeshError> {
    rig.warm_up(topo, stop)?;
    // Every flow once, so the measurements see established flows.
    let per_flow = Duration::from_secs_f64((f64::from(o.flows) / 50_000.0).max(0.2));
    rig.trial(Some(50_000.0), per_flow)?;

    check(stop)?;
    let (full, _) = rig.trial(None, o.step)?;
    say(&full);
    let mut best = if full.loss_ok { full.sent_pps } else { 0.0 };
    let mut search = Vec::new();
    if !full.loss_ok {
        let (mut lo, mut hi) = (0.0f64, full.sent_pps);
        for _ in 0..o.steps {
            check(stop)?;
            topo.check_alive()?;
            let mid = (lo + hi) / 2.0;
            let (t, _) = rig.trial(Some(mid), o.step)?;
            say(&t);
            if t.loss_ok {
                best = best.max(t.sent_pps);
            }
            if t.passed {
                lo = mid;
            } else {
                hi = mid;
            }
            search.push(t);
        }
    }
    check(stop)?;
    let lat_rate = (best * 0.5).max(1000.0);
    let (lat_trial, got) = rig.trial(Some(lat_rate), o.latency)?;
    let latency = got.percentiles();
    eprintln!(
        "    latency at {:.0} kpps: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs (loss {:.3}%)",
        lat_rate / 1e3,
        latency.p50_us,
        latency.p99_us,
        latency.p999_us,
        lat_trial.loss_pct
    );
    let cost = if o.cost.is_zero() {
        None
    } else {
        check(stop)?;
        topo.check_alive()?;
        Some(rig.cost_step(&cost::CpuProbe::new(&topo.pids()), o.cost_pps, o.cost)?)
    };
    let tcp = if !system.is_forwarder() && !o.tcp.is_zero() {
        check(stop)?;
        let target = SocketAddr::from((topo::N1_IP, topo::PUBLISHED));
        let r = tcp::run(topo::GEN_NS, target, o.tcp_threads, o.tcp, stop)
            .map_err(|e| MeshError::Run(format!("TCP client: {e}")))?;
        eprintln!(
            "    TCP: {:.0} connections/s ({} completed, {} failed)",
            r.per_sec, r.completed, r.failed
        );
        if r.completed == 0 {
            return Err(MeshError::Run(format!(
                "no TCP connection through {target} completed ({} failed)",
                r.failed
            )));
        }
        Some(r)
    } else {
        None
    };
    topo.check_alive()?;
    let meshd_stats = if system.is_meshd() {
        topo.meshd_stats()
    } else {
        Vec::new()
    };
    Ok(Run {
        system: system.key(),
        name: system.name(),
        round,
        full_load: full,
        zero_loss_pps: best,
        search,
        latency_at_pps: lat_rate,
        latency,
        latency_trial: lat_trial,
        tcp,
        cost,
        meshd_stats,
    })
}

pub(crate) fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu_model,
        load_avg_at_start: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let t = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        t / 3600,
        t / 60 % 60
    )
}

/// Runs the whole comparison and writes the report.
pub fn run(o: &Options) -> Result<Report, MeshError> {
    if !testbed::sys::is_root() {
        return Err(MeshError::NotRoot);
    }
    // One run at a time: a second one would remove the first one's namespaces.
    let lock_path = std::path::Path::new("/run/meshd-bench.lock");
    let _lock = match crate::os::exclusive_lock(lock_path) {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Err(MeshError::Setup(format!(
                "another bench mesh is running (it holds {}); wait for it to finish",
                lock_path.display()
            )))
        }
        Err(e) => return Err(MeshError::Setup(format!("{}: {e}", lock_path.display()))),
    };
    let programs = Programs::find()?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| MeshError::Setup(format!("installing the signal handler: {e}")))?;
    }
    let mut notes = Vec::new();
    let mut systems = o.systems.clone();
    if systems.contains(&System::Testpmd) && programs.testpmd.is_none() {
        systems.retain(|s| *s != System::Testpmd);
        notes.push(
            "dpdk-testpmd is not installed (Debian package dpdk-dev): no ceiling measured."
                .to_string(),
        );
    }
    if !std::path::Path::new("/proc/net/pktgen").exists() {
        notes.push(
            "The kernel's pktgen module is not available here (/proc/net/pktgen is missing): frames come from pktgen's AF_PACKET TPACKET_V3 TX ring."
                .to_string(),
        );
    }
    let machine = machine();
    topo::remove_leftovers()?;
    let mut runs = Vec::new();
    let mut bare_path = Vec::new();
    let mut failure = None;
    'rounds: for round in 0..o.rounds {
        if !o.cost.is_zero() {
            eprintln!("round {}/{}: bare path (cost)", round + 1, o.rounds);
            match run_bare(round, o, &stop) {
                Ok(b) => bare_path.push(b),
                Err(MeshError::Interrupted) => {
                    let _ = topo::remove_leftovers();
                    return Err(MeshError::Interrupted);
                }
                Err(e) => {
                    failure = Some(e);
                    break 'rounds;
                }
            }
        }
        // Alternate the order too, so no system always runs first (or right after another).
        let order: Vec<System> = if round % 2 == 0 {
            systems.clone()
        } else {
            systems.iter().rev().copied().collect()
        };
        for s in order {
            eprintln!("round {}/{}: {}", round + 1, o.rounds, s.name());
            match run_one(s, round, o, &programs, &stop) {
                Ok(r) => runs.push(r),
                Err(MeshError::Interrupted) => {
                    let _ = topo::remove_leftovers();
                    return Err(MeshError::Interrupted);
                }
                // testpmd is an outside reference (DPDK from Debian): when it cannot run here,
                // say so and go on; any other system failing fails the run.
                Err(e) if s == System::Testpmd => {
                    eprintln!("    {e}");
                    notes.push(format!("testpmd failed in round {}: {e}", round + 1));
                }
                Err(e) => {
                    failure = Some(e);
                    break 'rounds;
                }
            }
        }
    }
    topo::remove_leftovers()?;
    if let Some(e) = failure {
        return Err(e);
    }
    let summaries: Vec<Summary> = systems
        .iter()
        .map(|s| {
            let rs: Vec<&Run> = runs.iter().filter(|r| r.system == s.key()).collect();
            Summary::of(&s.key(), &s.name(), &rs, &bare_path)
        })
        .collect();
    notes.push(format!(
        "Loss threshold {}%: a step passes with at most that share of frames lost and at least 95% of the asked rate really sent; the zero-loss rate is the highest rate really sent with loss within the threshold.",
        o.loss_pct
    ));
    notes.push("Latency is one-way, from the generator's send time (stamped in the frame) to the kernel's arrival stamp in the sink's ring; both ends share this machine's clock.".into());
    if o.rps {
        notes.push("--rps: each node's uplink steers its receive work to the node's core with RPS (n1 on the first of --cores, n2 on the second; meshd with 2 workers: both), as a NIC interrupt would.".into());
    } else {
        notes.push("No RPS: a veth hands a frame on in the softirq of the thread that sent it, so the kernel system's whole forwarding path runs on the generator's thread (it can never drop: it slows the generator down instead), and each meshd worker pays for the kernel path to the next node's ring when it sends.".into());
    }
    if o.systems.contains(&System::Testpmd) {
        notes.push("testpmd busy-polls (its forwarding lcores spin at 100%), so on a machine with no core to spare it competes with the generator and the sink for the CPU; the AF_PACKET forwarder (`pktgen forward`: meshd's ports and idle back-off, no pipeline) is the ceiling that fits such a machine.".into());
    }
    if o.systems
        .iter()
        .any(|s| matches!(s, System::MeshdXdp | System::AfXdpFwd))
    {
        notes.push("AF_XDP (meshd-afxdp, afxdp-fwd): one XDP socket on queue 0 of up0 and tk0 per node, fed by meshd's XDP program in native (veth driver) mode, in copy mode (veth has no zero-copy); frames are copied from the UMEM into meshd's buffers as on AF_PACKET, and sent with one sendto kick per 32 frames. One worker per node: a veth has one queue.".into());
    }
    if o.quick {
        notes.push("--quick: short steps and one round; checks the harness, the numbers are not comparable.".into());
    }
    let report = Report {
        command: o.command.clone(),
        date_utc: utc_now(),
        machine,
        settings: Settings {
            quick: o.quick,
            rounds: o.rounds,
            frame_bytes: o.size,
            protocol: format!("{:?}", o.proto).to_lowercase(),
            flows: o.flows,
            tasks: o.tasks,
            step_secs: o.step.as_secs_f64(),
            search_steps: o.steps,
            loss_threshold_pct: o.loss_pct,
            latency_secs: o.latency.as_secs_f64(),
            cost_pps: o.cost_pps,
            cost_secs: o.cost.as_secs_f64(),
            tcp_secs: o.tcp.as_secs_f64(),
            tcp_threads: o.tcp_threads,
            cores: o.cores.clone(),
            rps: o.rps,
        },
        ratios: report::ratios(&summaries),
        summaries,
        runs,
        bare_path,
        notes,
    };
    report.write(&o.out)?;
    if let Some(d) = &o.docs {
        write_docs(&report, d)?;
    }
    Ok(report)
}

/// Writes the report files (and the docs copy) again from a `mesh.json`.
pub fn render(json: &std::path::Path, o: &Options) -> Result<(), MeshError> {
    let text = std::fs::read_to_string(json)
        .map_err(|e| MeshError::Report(format!("reading {}: {e}", json.display())))?;
    let mut r: Report = serde_json::from_str(&text)
        .map_err(|e| MeshError::Report(format!("{}: {e}", json.display())))?;
    // Summaries and ratios again from the runs, so a newer bench summarises an older file
    // the way it would now.
    r.summaries = r
        .summaries
        .iter()
        .map(|s| {
            let rs: Vec<&Run> = r.runs.iter().filter(|x| x.system == s.system).collect();
            Summary::of(&s.system, &s.name, &rs, &r.bare_path)
        })
        .collect();
    r.ratios = report::ratios(&r.summaries);
    r.write(&o.out)?;
    if let Some(d) = &o.docs {
        write_docs(&r, d)?;
    }
    Ok(())
}

/// `docs/bench-mesh.md` and `docs/bench-mesh.svg`: the table, the chart, the command, and the
/// analysis kept in `bench/src/mesh/ANALYSIS.md`.
fn write_docs(r: &Report, dir: &std::path::Path) -> Result<(), MeshError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| MeshError::Report(format!("creating {}: {e}", dir.display())))?;
    r.chart(&dir.join("bench-mesh.svg"))?;
    let analysis = include_str!("ANALYSIS.md");
    let md = format!(
        "# meshd vs the Linux kernel vs the veth ceiling\n\n\
         Generated by `bench mesh` ({}). Reproduce (root, about 10 minutes):\n\n\
         ```sh\ncargo build --release\nsudo target/release/bench mesh --docs docs\n```\n\n\
         Exact command of this run: `{}`\n\n\
         ![bench mesh chart](bench-mesh.svg)\n\n{}\n{}",
        r.date_utc,
        r.command,
        r.markdown(),
        analysis
    );
    let p = dir.join("bench-mesh.md");
    std::fs::write(&p, md).map_err(|e| MeshError::Report(format!("writing {}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        let s = utc_now();
        assert!(
            s.len() == 20 && s.ends_with(" UTC") && s.starts_with("20"),
            "{s}"
        );
    }
}
