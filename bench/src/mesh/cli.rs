//! The `bench mesh` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::topo::System;
use super::{MeshError, Options};
use crate::pktgen::Proto;

pub const EXAMPLES: &str = "\
EXAMPLES:
  sudo target/release/bench mesh                    # the full run (about 10 minutes)
  sudo target/release/bench mesh --docs docs        # ... and refresh docs/bench-mesh.md + .svg
  sudo target/release/bench mesh --quick            # a few seconds per system (CI)
  sudo target/release/bench mesh --systems meshd-1w,kernel --rounds 5 --loss 0
  sudo target/release/bench mesh --systems meshd-1w,kernel --cost-kpps 50 --cost-secs 5
                                                    # CPU per packet at 50 kpps
  sudo target/release/bench mesh --systems meshd-1w,meshd-afxdp,kernel,afpacket-fwd,afxdp-fwd
                                                    # AF_XDP (in the default build)
  target/release/bench mesh --render bench/out/mesh.json --docs docs   # redraw, no run
  sudo target/release/bench mesh --io memif --docs docs
                                # meshd vs dpdk-testpmd over DPDK memif (bench built with
                                # --features bench/dpdk): both paths, 64/1468 B, 1K/1M flows
  sudo target/release/bench mesh --io memif --size 64 --flows 1048576 --rounds 1
                                # ... one size and flow count (both paths): about a minute
  sudo target/release/bench mesh --io memif --size 64 --flows 1024 --latency-kpps 1900
                                # ... latency at the same offered rate for both systems

Writes bench/out/mesh.json, bench/out/mesh.md and bench/out/mesh.svg (see --out).
Namespaces are named meshd-bench-*, and removed at the end, on failure and on Ctrl-C.";

/// Options of `bench mesh`.
#[derive(Debug, Args)]
pub struct MeshArgs {
    /// A few seconds per system, one round: checks that the harness works (CI).
    #[arg(long)]
    pub quick: bool,
    /// veth: the namespace topology (meshd, the kernel, forwarders and testpmd over veths).
    /// memif: meshd and dpdk-testpmd io-forward over DPDK memif, the generator in this process
    /// (needs bench built with --features bench/dpdk); --systems, --tasks, --tcp-*, --rps do
    /// not apply: it runs the ingress and decap paths at 64 and 1468 B with 1K and 1M flows
    /// (--quick: 64 B, 1K flows), or at the one --size and --flows given, on the first two
    /// --cores.
    #[arg(long, value_enum, default_value_t = BenchIo::Veth)]
    pub io: BenchIo,
    /// Rounds; each runs every system once, in alternating order.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Systems, comma separated: meshd-1w, meshd-2w (meshd-Nw: N workers on AF_PACKET),
    /// meshd-afxdp (one worker on AF_XDP), kernel, afpacket-fwd, afxdp-fwd (`pktgen forward` on
    /// AF_PACKET or AF_XDP), testpmd. The AF_XDP ones are in the default set when bench is
    /// built with its default feature `afxdp`.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_SYSTEMS)]
    pub systems: Vec<String>,
    /// Frame size on the wire, FCS included [default: 64; --io memif: 64 and 1468, or this
    /// one size, 64 to 1468].
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, value_enum, default_value_t = Proto::Udp)]
    pub proto: Proto,
    /// Flows (distinct source ports) the generator cycles through [default: 1024; --io memif:
    /// 1024 and 1048576, or this one count, up to 1048576].
    #[arg(long)]
    pub flows: Option<u32>,
    /// Tasks of the service (all on the task node; the sink holds their addresses).
    #[arg(long, default_value_t = 2)]
    pub tasks: usize,
    /// Seconds per rate step.
    #[arg(long)]
    pub step: Option<f64>,
    /// Binary-search steps after the full-load step.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Loss threshold in percent for the zero-loss search (0 is RFC 2544's strict zero)
    /// [default: 0.1 over veth, 0.01 over memif: on a VM the generator's own scheduling
    /// hiccups lose a few frames of any system, testpmd's too].
    #[arg(long)]
    pub loss: Option<f64>,
    /// Seconds of the latency step.
    #[arg(long)]
    pub latency_secs: Option<f64>,
    /// --io memif: measure latency at this offered rate, in thousands of frames per second,
    /// for both systems (the same load on both) instead of at half each one's zero-loss rate
    /// (where the p99 target is set: a run with this shows the ratios but judges no target).
    #[arg(long, value_name = "KPPS")]
    pub latency_kpps: Option<f64>,
    /// Offered rate of the cost step, in thousands of frames per second: one every system
    /// sustains, so CPU per packet compares what they spend, not who gets the cores.
    #[arg(long, default_value_t = 30.0)]
    pub cost_kpps: f64,
    /// Seconds of the cost step (0: skip it, and the bare path).
    #[arg(long)]
    pub cost_secs: Option<f64>,
    /// Seconds of the TCP connection-rate run (0: skip it).
    #[arg(long)]
    pub tcp_secs: Option<f64>,
    /// TCP client threads.
    #[arg(long, default_value_t = 4)]
    pub tcp_threads: usize,
    /// Cores the systems' forwarding threads go on (meshd workers, testpmd lcores).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub cores: Vec<usize>,
    /// Steer each node's receive work to the node's core with RPS, as a NIC interrupt would
    /// (default: the sending thread does it, as a veth does; on a VM every RPS hand-off is an
    /// IPI, which costs more than the work it moves).
    #[arg(long)]
    pub rps: bool,
    /// Render mesh.md/.svg (and --docs) again from a mesh.json written earlier, without running.
    #[arg(long, value_name = "MESH_JSON")]
    pub render: Option<PathBuf>,
    /// Where mesh.json, mesh.md and mesh.svg go.
    #[arg(long, default_value = "bench/out")]
    pub out: PathBuf,
    /// Also write bench-mesh.md and bench-mesh.svg into this directory (e.g. docs).
    #[arg(long)]
    pub docs: Option<PathBuf>,
}

/// Where `bench mesh` runs its systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchIo {
    Veth,
    Memif,
}

/// The systems `bench mesh` runs by default: the AF_XDP ones when built with them.
pub const DEFAULT_SYSTEMS: &str = if cfg!(feature = "afxdp") {
    "meshd-1w,meshd-2w,meshd-afxdp,kernel,afpacket-fwd,afxdp-fwd,testpmd"
} else {
    "meshd-1w,meshd-2w,kernel,afpacket-fwd,testpmd"
};

const NO_AFXDP: &str =
    "bench was built without AF_XDP: build it with its default features (cargo build --release)";

fn parse_system(s: &str) -> Result<System, String> {
    let xdp = |sys: System| {
        if cfg!(feature = "afxdp") {
            Ok(sys)
        } else {
            Err(format!("--systems {}: {NO_AFXDP}", s.trim()))
        }
    };
    match s.trim() {
        "kernel" => Ok(System::Kernel),
        "testpmd" => Ok(System::Testpmd),
        "afpacket-fwd" => Ok(System::AfPacketFwd),
        "meshd-afxdp" => xdp(System::MeshdXdp),
        "afxdp-fwd" => xdp(System::AfXdpFwd),
        m => match m.strip_prefix("meshd-").and_then(|w| w.strip_suffix('w')).map(str::parse::<usize>) {
            Some(Ok(n)) if (1..=8).contains(&n) => Ok(System::Meshd { workers: n }),
            _ => Err(format!(
                "--systems: unknown system {m:?} (use meshd-1w, meshd-2w, meshd-afxdp, kernel, afpacket-fwd, afxdp-fwd, testpmd)"
            )),
        },
    }
}

impl MeshArgs {
    pub fn options(&self) -> Result<Options, String> {
        let systems = self
            .systems
            .iter()
            .map(|s| parse_system(s))
            .collect::<Result<Vec<_>, _>>()?;
        if systems.is_empty() {
            return Err("--systems: name at least one".into());
        }
        let loss = self.loss.unwrap_or(0.1);
        if !(0.0..100.0).contains(&loss) {
            return Err(format!("--loss {loss}: a percentage from 0 to under 100"));
        }
        if !(self.cost_kpps > 0.0 && self.cost_kpps <= 10_000.0) {
            return Err(format!(
                "--cost-kpps {}: a rate above 0 and at most 10000",
                self.cost_kpps
            ));
        }
        if self.tasks == 0 || self.tasks > 100 {
            return Err(format!("--tasks {}: 1 to 100", self.tasks));
        }
        let secs =
            |v: Option<f64>, quick: f64, full: f64, what: &str| -> Result<Duration, String> {
                let s = v.unwrap_or(if self.quick { quick } else { full });
                Duration::try_from_secs_f64(s)
                    .map_err(|_| format!("--{what} {s}: a number of seconds"))
            };
        let command = std::iter::once("bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Options {
            quick: self.quick,
            rounds: self.rounds.unwrap_or(if self.quick { 1 } else { 3 }).max(1),
            systems,
            size: self.size.unwrap_or(64),
            proto: self.proto,
            flows: self.flows.unwrap_or(1024),
            tasks: self.tasks,
            step: secs(self.step, 0.4, 2.0, "step")?,
            steps: self.steps.unwrap_or(if self.quick { 3 } else { 7 }),
            loss_pct: loss,
            latency: secs(self.latency_secs, 0.5, 4.0, "latency-secs")?,
            cost_pps: self.cost_kpps * 1e3,
            cost: secs(self.cost_secs, 1.0, 3.0, "cost-secs")?,
            tcp: secs(self.tcp_secs, 0.5, 4.0, "tcp-secs")?,
            tcp_threads: self.tcp_threads.max(1),
            cores: self.cores.clone(),
            rps: self.rps,
            out: self.out.clone(),
            docs: self.docs.clone(),
            command,
        })
    }

    /// The options of `--io memif`.
    #[cfg(feature = "dpdk")]
    pub fn memif_options(&self) -> Result<super::memif::MemifOptions, String> {
        use super::memif::PathKind;
        let o = self.options()?;
        let loss = self.loss.unwrap_or(0.01);
        let secs = |v: Option<f64>, quick: f64, full: f64| {
            Duration::from_secs_f64(v.unwrap_or(if self.quick { quick } else { full }))
        };
        if let Some(s) = self.size.filter(|s| !(64..=1468).contains(s)) {
            return Err(format!(
                "--size {s}: 64 to 1468 over memif (1468 B is 1518 B with VXLAN on the underlay, \
                 and memif takes no MTU above 1500)"
            ));
        }
        if let Some(f) = self.flows.filter(|f| !(1..=1 << 20).contains(f)) {
            return Err(format!("--flows {f}: 1 to 1048576 over memif"));
        }
        if let Some(k) = self.latency_kpps.filter(|k| !(1.0..=20_000.0).contains(k)) {
            return Err(format!(
                "--latency-kpps {k}: 1 to 20000 (thousands of frames per second)"
            ));
        }
        let gen_core = self.cores.first().copied().unwrap_or(0);
        Ok(super::memif::MemifOptions {
            quick: self.quick,
            rounds: o.rounds,
            paths: vec![PathKind::Ingress, PathKind::Decap],
            sizes: match self.size {
                Some(s) => vec![s],
                None if self.quick => vec![64],
                None => vec![64, 1468],
            },
            flows: match self.flows {
                Some(f) => vec![f],
                None if self.quick => vec![1024],
                None => vec![1024, 1 << 20],
            },
            step: secs(self.step, 0.3, 1.0),
            steps: self.steps.unwrap_or(if self.quick { 3 } else { 7 }),
            loss_pct: loss,
            latency: secs(self.latency_secs, 0.5, 2.0),
            latency_pps: self.latency_kpps.map(|k| k * 1e3),
            gen_core,
            sut_core: self.cores.get(1).copied().unwrap_or(gen_core),
            out: o.out,
            docs: o.docs,
            command: o.command,
        })
    }
}

/// `bench mesh --io memif`; the process exit code.
#[cfg(feature = "dpdk")]
fn main_memif(a: &MeshArgs) -> i32 {
    let o = match a.memif_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench mesh: {e}");
            return 2;
        }
    };
    if let Some(p) = &a.render {
        let r = super::memif::MemifReport::read(p).and_then(|r| r.write(&o.out, o.docs.as_deref()));
        return rendered("bench mesh --io memif --render", r);
    }
    let r = super::memif::run(&o).map(|r| r.markdown());
    finish(
        "bench mesh --io memif",
        r,
        &o.out,
        o.docs.as_deref(),
        "memif",
    )
}

#[cfg(not(feature = "dpdk"))]
fn main_memif(_: &MeshArgs) -> i32 {
    eprintln!("bench mesh --io memif: bench was built without DPDK: build it with `cargo build --release --workspace --features bench/dpdk` (needs libdpdk-dev and pkg-config; scripts/deps.sh --bench installs them)");
    2
}

/// Runs `bench mesh`; the process exit code.
pub fn main(a: MeshArgs) -> i32 {
    if a.io == BenchIo::Memif {
        return main_memif(&a);
    }
    if a.latency_kpps.is_some() {
        eprintln!(
            "bench mesh: --latency-kpps is for --io memif (over veth, latency is measured at half \
             each system's zero-loss rate)"
        );
        return 2;
    }
    let o = match a.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench mesh: {e}");
            return 2;
        }
    };
    if let Some(p) = &a.render {
        return rendered("bench mesh --render", super::render(p, &o));
    }
    if o.quick && !testbed::sys::is_root() {
        // As the namespace tests do: `./test` as a normal user skips what needs root.
        eprintln!("bench mesh --quick: skipped: needs root for network namespaces");
        return 0;
    }
    let r = super::run(&o).map(|r| r.markdown());
    finish("bench mesh", r, &o.out, o.docs.as_deref(), "mesh")
}

/// The exit code of a `--render`.
fn rendered(what: &str, r: Result<(), MeshError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{what}: {e}");
            1
        }
    }
}

/// Prints a run's table (`Ok`: its Markdown) and where `<stem>.json/.md/.svg` (and
/// `bench-<stem>.md/.svg` in `docs`) went; the exit code (130 when interrupted).
fn finish(
    what: &str,
    r: Result<String, MeshError>,
    out: &std::path::Path,
    docs: Option<&std::path::Path>,
    stem: &str,
) -> i32 {
    match r {
        Ok(markdown) => {
            println!("{markdown}");
            println!(
                "written: {}/{stem}.json, {stem}.md, {stem}.svg{}",
                out.display(),
                docs.map(|d| format!("; {}/bench-{stem}.md, bench-{stem}.svg", d.display()))
                    .unwrap_or_default()
            );
            0
        }
        Err(e @ MeshError::Interrupted) => {
            eprintln!("bench mesh: {e}");
            130
        }
        Err(e) => {
            eprintln!("{what}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systems_parse() {
        assert_eq!(parse_system("meshd-2w"), Ok(System::Meshd { workers: 2 }));
        assert_eq!(parse_system("kernel"), Ok(System::Kernel));
        assert!(parse_system("meshd-0w").is_err());
        assert!(parse_system("ovs").unwrap_err().contains("unknown system"));
        if cfg!(feature = "afxdp") {
            assert_eq!(parse_system("meshd-afxdp"), Ok(System::MeshdXdp));
            assert_eq!(parse_system("afxdp-fwd"), Ok(System::AfXdpFwd));
        } else {
            assert!(parse_system("meshd-afxdp")
                .unwrap_err()
                .contains("without AF_XDP"));
        }
    }

    /// `bench mesh` with `args`.
    fn mesh(args: &[&str]) -> MeshArgs {
        #[derive(Debug, clap::Parser)]
        struct Bench {
            #[command(flatten)]
            mesh: MeshArgs,
        }
        use clap::Parser;
        Bench::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .unwrap()
            .mesh
    }

    #[test]
    fn size_and_flows_default_to_64_bytes_and_1024_flows_over_veth() {
        let o = mesh(&[]).options().unwrap();
        assert_eq!((o.size, o.flows), (64, 1024));
        let o = mesh(&["--size", "1500", "--flows", "7"]).options().unwrap();
        assert_eq!((o.size, o.flows), (1500, 7));
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn memif_runs_every_cell_or_the_one_size_and_flow_count_given() {
        let o = mesh(&["--io", "memif"]).memif_options().unwrap();
        assert_eq!((o.sizes, o.flows), (vec![64, 1468], vec![1024, 1 << 20]));
        let o = mesh(&["--io", "memif", "--quick"]).memif_options().unwrap();
        assert_eq!((o.sizes, o.flows), (vec![64], vec![1024]));
        let o = mesh(&["--io", "memif", "--size", "1468", "--flows", "1048576"])
            .memif_options()
            .unwrap();
        assert_eq!((o.sizes, o.flows), (vec![1468], vec![1 << 20]));
        let o = mesh(&["--io", "memif", "--quick", "--flows", "1048576"])
            .memif_options()
            .unwrap();
        assert_eq!((o.sizes, o.flows), (vec![64], vec![1 << 20]));
        let e = mesh(&["--io", "memif", "--size", "1500"])
            .memif_options()
            .unwrap_err();
        assert!(e.contains("64 to 1468"), "{e}");
        let e = mesh(&["--io", "memif", "--flows", "0"])
            .memif_options()
            .unwrap_err();
        assert!(e.contains("1 to 1048576"), "{e}");
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn memif_measures_latency_at_half_the_zero_loss_rate_or_at_the_rate_given() {
        let o = mesh(&["--io", "memif"]).memif_options().unwrap();
        assert_eq!(o.latency_pps, None);
        let o = mesh(&["--io", "memif", "--latency-kpps", "1900"])
            .memif_options()
            .unwrap();
        assert_eq!(o.latency_pps, Some(1_900_000.0));
        for bad in ["0", "20001", "NaN"] {
            let e = mesh(&["--io", "memif", "--latency-kpps", bad])
                .memif_options()
                .unwrap_err();
            assert!(e.contains("1 to 20000"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_default_set_parses_and_has_af_xdp_exactly_when_built_with_it() {
        let all = DEFAULT_SYSTEMS
            .split(',')
            .map(parse_system)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(
            all.contains(&System::MeshdXdp) && all.contains(&System::AfXdpFwd),
            cfg!(feature = "afxdp")
        );
    }
}
