//! `bench converge`: how long a change takes to run on every node of a cluster (issue 14).
//!
//! Starts N real meshd nodes in network namespaces following one etcd (the testbed in cluster
//! mode), imports S services of T tasks into the store, then times one-task updates from the
//! write (meshctl's transaction, done here through the same library) to every node's
//! confirmation (its status key at the change's revision), and a node's restart (kill -9, then
//! its control socket answering with the cached state). Needs root.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ctl::cluster::etcd::Etcd;
use ctl::model::{Ipv4Net, Network, Service, ServiceNetwork, State, Task, TaskAddress};
use ctl::proto::{Change, ServiceUpdate, TaskUpdate};
use serde::Serialize;
use testbed::{Bed, Plan, Tools};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvergeArgs {
    /// Cluster sizes to measure, one after the other (each its own mesh).
    #[arg(long, value_delimiter = ',', default_value = "5,20,50")]
    pub nodes: Vec<usize>,
    /// Services in the store.
    #[arg(long, default_value_t = 10_000)]
    pub services: usize,
    /// Tasks per service.
    #[arg(long, default_value_t = 10)]
    pub tasks: usize,
    /// One-task updates timed per cluster size.
    #[arg(long, default_value_t = 50)]
    pub updates: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One cluster size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub nodes: usize,
    pub services: usize,
    pub tasks: usize,
    /// From the import's last write to every node running it.
    pub import_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// kill -9 of a node's meshd to its socket answering (state from its cache file).
    pub restart_ms: f64,
    /// What applying one update took on a node (its log's `took_us`: the change checked,
    /// compiled and running on every worker), over every node and update.
    pub apply_p50_ms: f64,
    pub apply_p99_ms: f64,
}

/// The services to import: `svc<i>` with `tasks` tasks spread over the nodes, on `appnet`.
fn workload(nodes: usize, services: usize, tasks: usize) -> (Network, Vec<Service>) {
    let subnet: Ipv4Net = "10.64.0.0/10".parse().unwrap_or_else(|_| unreachable!());
    let net = Network {
        name: "appnet".into(),
        vni: 4097,
        subnet,
        gateway: Ipv4Addr::new(10, 64, 0, 1),
        ingress: false,
        endpoints: Default::default(),
        mtu: None,
        encryption: None,
    };
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 10));
    let mut next = 0u32;
    let mut addr = || {
        next += 1;
        Ipv4Addr::from(base + next)
    };
    let mut out = Vec::with_capacity(services);
    for i in 0..services {
        let mut s = Service::new(&format!("svc{i}"));
        s.networks.push(ServiceNetwork {
            network: "appnet".into(),
            vip: Some(addr()),
        });
        for k in 0..tasks {
            s.tasks.push(Task {
                name: format!("svc{i}.{}", k + 1),
                node: format!("n{}", (i * tasks + k) % nodes + 1),
                addresses: vec![TaskAddress {
                    network: "appnet".into(),
                    addr: addr(),
                }],
                state: Default::default(),
                weight: 1,
                vlan: None,
            });
        }
        out.push(s);
    }
    (net, out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Polls until every node's status says `revision` (or later); the time it took.
fn wait_all(
    e: &mut Etcd,
    nodes: usize,
    revision: i64,
    within: Duration,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    loop {
        let (_, status) = e.liveness().map_err(|x| x.to_string())?;
        let done = (1..=nodes)
            .filter(|i| {
                status
                    .get(&format!("n{i}"))
                    .is_some_and(|s| s.revision >= revision)
            })
            .count();
        if done == nodes {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > within {
            return Err(format!(
                "only {done}/{nodes} nodes ran revision {revision} after {within:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// Casts: a rank between 1 and the sample count (a few hundred at most).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = (p / 100.0 * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Each node's time to apply the changes from revision `from` on, from its log's
/// `cluster: applied ... took_us=N` lines, in milliseconds.
fn apply_times(bed: &Bed, from: i64) -> Vec<f64> {
    let field = |line: &str, name: &str| -> Option<i64> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let mut out = Vec::new();
    for node in &bed.rec.nodes {
        let Ok(log) = std::fs::read_to_string(bed.plan.node_log(node.index)) else {
            continue;
        };
        for line in log.lines().filter(|l| l.contains("cluster: applied")) {
            if let (Some(rev), Some(us)) = (field(line, "revision"), field(line, "took_us")) {
                if rev >= from {
                    // Microseconds, a few thousand at most: exact in f64.
                    #[allow(clippy::cast_precision_loss)]
                    out.push(us as f64 / 1e3);
                }
            }
        }
    }
    out
}

/// Measures one cluster size.
fn one(n: usize, a: &ConvergeArgs, tools: Tools) -> Result<Row, String> {
    let plan = Plan::new(&format!("cv{n}")).map_err(|e| e.to_string())?;
    testbed::bed::down(&plan);
    eprintln!("converge: {n} nodes: starting meshd on each, and etcd ...");
    let mut bed = Bed::up_with(plan, tools, n, false, 1).map_err(|e| e.to_string())?;
    let result = measure(&mut bed, n, a);
    bed.down_now();
    result
}

fn measure(bed: &mut Bed, n: usize, a: &ConvergeArgs) -> Result<Row, String> {
    let etcd = bed.rec.etcd.clone().ok_or("no etcd")?;
    let eps = vec![format!("http://{}:2379", etcd.members[0].addr)];
    let (net, services) = workload(n, a.services, a.tasks);
    let names: Vec<String> = bed.rec.nodes.iter().map(|x| x.name.clone()).collect();
    let nodes = &*bed;
    // The client runs in etcd's namespace (the management network is not the host's).
    let (import, mut samples, first) = testbed::sys::in_netns(&etcd.ns, || -> Result<_, String> {
        let mut e = Etcd::connect(&eps, Duration::from_secs(10)).map_err(|x| x.to_string())?;
        e.change(&Change::NetworkCreate { network: net })
            .map_err(|x| x.to_string())?;
        eprintln!(
            "converge: {n} nodes: importing {} services of {} tasks ...",
            a.services, a.tasks
        );
        let state = State {
            services,
            ..State::default()
        };
        // The nodes pause while the store fills: a bulk import of 100,000 keys is this
        // benchmark's setup, not what it measures, and 50 nodes following 1,000 import
        // transactions on 2 cores starve etcd. Back, each catches up once (its lease has
        // lapsed meanwhile: it registers again).
        for name in &names {
            nodes.freeze_meshd(name, true).map_err(|x| x.to_string())?;
        }
        let t0 = Instant::now();
        let rev = e.import(&state).map_err(|x| x.to_string());
        for name in &names {
            nodes.freeze_meshd(name, false).map_err(|x| x.to_string())?;
        }
        let rev = rev?;
        let import = wait_all(&mut e, n, rev, Duration::from_secs(600))? + t0.elapsed();
        // Each node's return (a lease again) is news to the others: let it settle.
        std::thread::sleep(Duration::from_secs(5));
        eprintln!(
            "converge: {n} nodes: imported and running everywhere in {:.1} s; timing {} updates ...",
            import.as_secs_f64(),
            a.updates
        );
        let mut samples = Vec::with_capacity(a.updates);
        let mut first = i64::MAX;
        for u in 0..a.updates {
            let svc = format!("svc{}", u % a.services.max(1));
            let t0 = Instant::now();
            let snap = e
                .change(&Change::ServiceUpdate {
                    name: svc.clone(),
                    update: ServiceUpdate {
                        task_update: vec![TaskUpdate {
                            name: format!("{svc}.1"),
                            weight: Some(if u % 2 == 0 { 2 } else { 1 }),
                            state: None,
                        }],
                        ..ServiceUpdate::default()
                    },
                })
                .map_err(|x| x.to_string())?;
            first = first.min(snap.revision);
            wait_all(&mut e, n, snap.revision, Duration::from_secs(120))?;
            samples.push(ms(t0.elapsed()));
        }
        Ok((import, samples, first))
    })
    .map_err(|e| e.to_string())??;
    let mut applies = apply_times(bed, first);
    applies.sort_by(f64::total_cmp);
    // A node's restart: kill -9, then its socket answering from the cached state.
    let t0 = Instant::now();
    bed.kill_meshd("n1").map_err(|e| e.to_string())?;
    bed.restart_meshd("n1").map_err(|e| e.to_string())?;
    let restart = t0.elapsed();
    samples.sort_by(f64::total_cmp);
    Ok(Row {
        nodes: n,
        services: a.services,
        tasks: a.services * a.tasks,
        import_ms: ms(import),
        p50_ms: percentile(&samples, 50.0),
        p99_ms: percentile(&samples, 99.0),
        max_ms: samples.last().copied().unwrap_or(0.0),
        restart_ms: ms(restart),
        apply_p50_ms: percentile(&applies, 50.0),
        apply_p99_ms: percentile(&applies, 99.0),
    })
}

/// Runs `bench converge`; the exit code.
pub fn main(a: &ConvergeArgs) -> i32 {
    if !testbed::sys::is_root() {
        eprintln!("bench converge: run as root (it builds network namespaces): sudo target/release/bench converge");
        return 1;
    }
    let tools = match Tools::find() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench converge: {e}");
            return 1;
        }
    };
    let mut rows = Vec::new();
    // The sizes measured before a failure are still printed.
    let mut failed = false;
    for &n in &a.nodes {
        match one(n, a, tools.clone()) {
            Ok(r) => {
                eprintln!("converge: {n} nodes: {r:?}");
                rows.push(r);
            }
            Err(e) => {
                eprintln!("bench converge: {n} nodes: {e}");
                failed = true;
                break;
            }
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return i32::from(failed);
    }
    println!(
        "{:>5} {:>8} {:>7} {:>11} {:>9} {:>9} {:>9} {:>10} {:>11} {:>11}",
        "NODES",
        "SERVICES",
        "TASKS",
        "IMPORT",
        "P50",
        "P99",
        "MAX",
        "RESTART",
        "APPLY P50",
        "APPLY P99"
    );
    for r in &rows {
        println!(
            "{:>5} {:>8} {:>7} {:>9.0}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>8.1}ms {:>9.2}ms {:>9.2}ms",
            r.nodes,
            r.services,
            r.tasks,
            r.import_ms,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.restart_ms,
            r.apply_p50_ms,
            r.apply_p99_ms
        );
    }
    i32::from(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_is_a_valid_state_and_percentiles_are_nearest_rank() {
        let (net, services) = workload(5, 200, 10);
        let mut s = State {
            networks: vec![net],
            services,
            ..State::default()
        };
        for i in 1..=5u8 {
            s.nodes.push(ctl::model::Node {
                name: format!("n{i}"),
                addr: Ipv4Addr::new(192, 168, 100, 10 + i),
                vtep: None,
                vtep_port: 4789,
                availability: ctl::model::Availability::Active,
            });
        }
        ctl::validate(&s).unwrap();
        assert_eq!(
            s.services.iter().map(|x| x.tasks.len()).sum::<usize>(),
            2000
        );
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v[..10], 99.0), 10.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
