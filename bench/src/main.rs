//! `bench`: throughput of meshd's pipeline, measured in memory on one core.

use clap::{Parser, Subcommand};

use bench::scenarios::{Kind, Measured};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Measure meshd's packet pipeline",
    after_help = "EXAMPLES:\n  cargo run --release -p bench -- pipeline           # the table in the README\n  cargo run --release -p bench -- pipeline --json    # the same as JSON\n  cargo run --release -p bench -- pipeline --quick   # a few seconds, for CI\n  cargo run --release -p bench -- cache              # this core's real cache share"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Packets per second through the in-memory pipeline on one core: established ingress flows
    /// (1K, 64K, 1M flows), a new-flow storm, the VIP path and the decapsulation path. 64-byte
    /// frames, copied into the buffer per packet as a NIC ring would deliver them.
    Pipeline {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Small flow counts and few packets: checks the harness in seconds, numbers not comparable.
        #[arg(long)]
        quick: bool,
        /// Runs per scenario; the best is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Only this scenario (its whole name, e.g. "decapsulation"), or those whose name contains
        /// this (e.g. "ingress", "storm", "VIP", "sealed", "replies", "underlay").
        #[arg(long)]
        only: Option<String>,
        /// Only this flow count for the established ingress scenario.
        #[arg(long)]
        flows: Option<usize>,
        /// Keep the flow table in a flow-state file at this path, as meshd does by default
        /// (`--flow-state`, on tmpfs: /dev/shm/...), instead of on the heap: what keeping flows
        /// across restarts costs the fast path. The file is removed at the end.
        #[arg(long, value_name = "FILE")]
        flow_state: Option<std::path::PathBuf>,
        /// Count packets and bytes per flow, as meshd --flow-accounting does: what the
        /// counters cost the fast path.
        #[arg(long)]
        flow_accounting: bool,
    },
    /// What `meshctl capture` costs the worker that copies: a whole worker loop over in-memory
    /// ports (established ingress flows, 64-byte frames), with no capture, a capture whose
    /// filter matches nothing, one matching one flow, and one copying every frame, in turns.
    Capture {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Few packets: checks the harness in seconds, numbers not comparable.
        #[arg(long)]
        quick: bool,
        /// Rounds of the four modes; the best run of each is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Flows replayed.
        #[arg(long, default_value_t = 1024)]
        flows: usize,
    },
    /// Memory latency by working-set size (a random pointer chase, one 64-byte line a load):
    /// how much last-level cache one core really gets here. On a shared VM it is far less than
    /// lscpu says, and it decides how the flow-table scenarios above fare (docs/perf.md).
    Cache {
        /// Working-set sizes in MiB.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,6,8,12,16,32,64")]
        mib: Vec<usize>,
        /// Loads timed per size.
        #[arg(long, default_value_t = 20_000_000)]
        loads: usize,
    },
    /// meshd, the Linux kernel (nftables DNAT + VXLAN, Swarm's way) and the veth ceiling
    /// (dpdk-testpmd) side by side in network namespaces: zero-loss throughput, delivered rate
    /// at full load, latency percentiles, TCP connection rate. Needs root.
    #[command(after_help = bench::mesh::cli::EXAMPLES)]
    Mesh(Box<bench::mesh::cli::MeshArgs>),
    /// Cluster mode: N meshd nodes in namespaces following one etcd with S services of T tasks;
    /// times one-task updates from meshctl's write to every node's confirmation (p50/p99) and a
    /// node's restart. Needs root.
    #[command(
        after_help = "EXAMPLES:\n  sudo target/release/bench converge                       # 5, 20 and 50 nodes, 10,000 services of 10 tasks (~8 min)\n  sudo target/release/bench converge --nodes 5 --services 1000 --updates 20   # a minute"
    )]
    Converge(bench::converge::ConvergeArgs),
}

/// Prints `rows` as JSON (what `--json` asks), or fails the run.
fn print_json<T: serde::Serialize>(rows: &T) {
    match serde_json::to_string_pretty(rows) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args = Args::parse();
    match args.cmd {
        Cmd::Mesh(a) => std::process::exit(bench::mesh::cli::main(*a)),
        Cmd::Converge(a) => std::process::exit(bench::converge::main(&a)),
        Cmd::Capture {
            json,
            quick,
            rounds,
            flows,
        } => {
            let (packets, rounds) = if quick {
                (100_000, 1)
            } else {
                (5_000_000, rounds)
            };
            let rows = bench::capture::measure(flows, packets, rounds);
            if json {
                print_json(&rows);
            } else {
                println!(
                    "{:<26} {:>7} {:>8} {:>8} {:>10}",
                    "worker loop", "flows", "Mpps", "ns/pkt", "vs none"
                );
                for r in &rows {
                    println!(
                        "{:<26} {:>7} {:>8.2} {:>8.1} {:>9.2}x",
                        r.mode, r.flows, r.mpps, r.ns_per_packet, r.ratio
                    );
                }
            }
        }
        Cmd::Cache { mib, loads } => {
            println!("{:>10} {:>12}", "MiB", "ns/load");
            for m in mib {
                let ns = bench::cache::chase(m << 20, loads.max(1));
                println!("{m:>10} {ns:>12.1}");
            }
        }
        Cmd::Pipeline {
            json,
            quick,
            repeats,
            only,
            flows: only_flows,
            flow_state,
            flow_accounting,
        } => {
            let (packets, sizes, storm): (usize, [usize; 3], usize) = if quick {
                (200_000, [1 << 10, 1 << 12, 1 << 14], 100_000)
            } else {
                (20_000_000, [1 << 10, 1 << 16, 1 << 20], 2_000_000)
            };
            let mut rows: Vec<Measured> = Vec::new();
            let plan = [
                (Kind::Ingress, sizes[0]),
                (Kind::Ingress, sizes[1]),
                (Kind::Ingress, sizes[2]),
                (Kind::NewFlows, storm),
                (Kind::Vip, sizes[1].min(64_000)),
                (Kind::Decap, sizes[1]),
                (Kind::Replies, sizes[1]),
                (Kind::Fragments, sizes[1].min(1 << 16)),
                (Kind::SealedIngress, sizes[1]),
                (Kind::SealedDecap, sizes[1]),
                (Kind::IngressMtu, sizes[1]),
                (Kind::SealedIngressMtu, sizes[1]),
                (Kind::Ndp, sizes[0]),
                (Kind::Ingress6, sizes[1]),
                (Kind::Replies6, sizes[1]),
                (Kind::IngressUnderlay6, sizes[0]),
                (Kind::DecapUnderlay6, sizes[1]),
                (Kind::Vip6, sizes[1].min(64_000)),
                (Kind::VipDualMesh, sizes[1].min(64_000)),
                (Kind::Decap6, sizes[1]),
            ];
            // A scenario's whole name picks it alone; a part of one picks every scenario with
            // it in its name.
            let exact = only
                .as_ref()
                .is_some_and(|o| plan.iter().any(|(k, _)| k.name() == o.as_str()));
            for (kind, flows) in plan {
                if only.as_ref().is_some_and(|o| {
                    if exact {
                        kind.name() != o.as_str()
                    } else {
                        !kind.name().contains(o.as_str())
                    }
                }) {
                    continue;
                }
                if only_flows.is_some_and(|f| kind == Kind::Ingress && f != flows) {
                    continue;
                }
                if !json {
                    eprintln!("running {} with {} flows ...", kind.name(), flows);
                }
                rows.push(bench::scenarios::measure_kept(
                    kind,
                    flows,
                    packets,
                    repeats,
                    flow_state.as_deref(),
                    flow_accounting,
                ));
                if let Some(p) = &flow_state {
                    let _ = std::fs::remove_file(p);
                }
            }
            if json {
                print_json(&rows);
            } else {
                // As wide as the longest name shown (the IPv6 underlay's are longer than 30).
                let w = rows.iter().map(|r| r.scenario.len()).fold(30, usize::max);
                println!(
                    "{:<w$} {:>9} {:>10} {:>9} {:>10}",
                    "scenario", "flows", "Mpps", "ns/pkt", "forwarded"
                );
                for r in &rows {
                    println!(
                        "{:<w$} {:>9} {:>10.2} {:>9.1} {:>9.1}%",
                        r.scenario,
                        r.flows,
                        r.mpps,
                        r.ns_per_packet,
                        100.0 * r.forwarded as f64 / r.packets as f64
                    );
                }
            }
            if rows.iter().any(|r| r.forwarded < r.packets) {
                eprintln!("bench: some packets were not forwarded; the numbers above do not measure the intended path");
                std::process::exit(1);
            }
        }
    }
}
