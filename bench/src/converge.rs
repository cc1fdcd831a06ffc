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
    /// Copy every node's log here (`<DIR>/cv<N>-<node>.log`) before the mesh is taken down.
    #[arg(long, value_name = "DIR")]
    pub logs: Option<std::path::PathBuf>,
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
    /// meshctl's transaction alone (etcd's commit, its fsync included).
    pub write_p50_ms: f64,
    pub write_p99_ms: f64,
    /// CPU time one update costs each node's meshd (user and system, over the update loop,
    /// less what the nodes spend idle in as long), and etcd.
    pub node_cpu_ms: f64,
    pub etcd_cpu_ms: f64,
    /// What one node's meshd spends with nothing to do (after the import, before the updates),
    /// in percent of a CPU: with dozens of nodes on two cores, this is what the others get.
    pub node_idle_pct: f64,
    /// The slowest updates, each with the node that confirmed it last and where that
    /// node's time went.
    pub slowest: Vec<Slow>,
}

/// One slow update, taken apart.
#[derive(Debug, Clone, Serialize)]
pub struct Slow {
    pub revision: i64,
    pub total_ms: f64,
    pub write_ms: f64,
    /// The node whose apply took longest for this revision, and its log's figures.
    pub node: String,
    pub apply_ms: f64,
    pub how: String,
    pub compile_ms: f64,
    pub publish_ms: f64,
    pub journal_ms: f64,
}

/// The services to import: `svc<i>` with `tasks` tasks spread over the nodes, on `appnet`.
fn workload(nodes: usize, services: usize, tasks: usize) -> (Network, Vec<Service>) {
    let subnet: Ipv4Net = "10.64.0.0/10".parse().unwrap_or_else(|_| unreachable!());
    let net = Network {
        subnet6: None,
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

/// Waits until every node has written its cache file after the last change that rewrites it
/// (a whole state, or more services than its journal takes: `how="whole"` or `services` over
/// 64 in its log's `cluster: adopted` lines).
fn wait_cached(bed: &Bed, within: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let behind = bed
            .rec
            .nodes
            .iter()
            .filter(|node| {
                let log =
                    std::fs::read_to_string(bed.plan.node_log(node.index)).unwrap_or_default();
                let mut due = false;
                for l in log.lines() {
                    if l.contains("cluster: adopted") {
                        let services = field(l, "services").and_then(|x| x.parse::<usize>().ok());
                        due |= field(l, "how") == Some("\"whole\"")
                            || services.is_some_and(|n| n > 64);
                    } else if l.contains("cluster: cached the state") {
                        due = false;
                    }
                }
                due
            })
            .count();
        if behind == 0 {
            return Ok(());
        }
        if t0.elapsed() > within {
            return Err(format!(
                "{behind} nodes had not written their cache after {within:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
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

/// What a node's log says about applying one revision.
#[derive(Debug, Clone, Default)]
struct Applied {
    node: String,
    revision: i64,
    /// `cluster: applied ... took_us`: the whole apply as the follower timed it.
    took_ms: f64,
    /// `cluster: adopted ...`: how, and the controller's parts of it.
    how: String,
    compile_ms: f64,
    publish_ms: f64,
    journal_ms: f64,
}

/// `name=value` in a log line (tracing's plain format).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split(' ').next()
}

fn field_ms(line: &str, name: &str) -> Option<f64> {
    // Microseconds, a few million at most: exact in f64.
    #[allow(clippy::cast_precision_loss)]
    field(line, name)?
        .parse::<u64>()
        .ok()
        .map(|us| us as f64 / 1e3)
}

/// Every node's applies of revision `from` on, from its log's `cluster: applied` and
/// `cluster: adopted` lines.
fn applies(bed: &Bed, from: i64) -> Vec<Applied> {
    let mut out = Vec::new();
    for node in &bed.rec.nodes {
        let Ok(log) = std::fs::read_to_string(bed.plan.node_log(node.index)) else {
            continue;
        };
        let mut by_rev: std::collections::BTreeMap<i64, Applied> = Default::default();
        for line in log.lines() {
            let Some(rev) = field(line, "revision").and_then(|r| r.parse::<i64>().ok()) else {
                continue;
            };
            if rev < from {
                continue;
            }
            let a = by_rev.entry(rev).or_insert_with(|| Applied {
                node: node.name.clone(),
                revision: rev,
                ..Applied::default()
            });
            if line.contains("cluster: applied") {
                a.took_ms = field_ms(line, "took_us").unwrap_or(0.0);
            } else if line.contains("cluster: adopted") {
                a.how = field(line, "how")
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_string();
                a.compile_ms = field_ms(line, "compile_us").unwrap_or(0.0);
                a.publish_ms = field_ms(line, "publish_us").unwrap_or(0.0);
                a.journal_ms = field_ms(line, "journal_us").unwrap_or(0.0);
            }
        }
        out.extend(by_rev.into_values().filter(|a| a.took_ms > 0.0));
    }
    out
}

/// The CPU time (user and system) process `pid` has used, in milliseconds; 0 when gone.
fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Clock ticks: 100 a second on Linux (USER_HZ).
    (ticks(11) + ticks(12)) * 10.0
}

/// The CPU time every node's meshd and every etcd member have used, in milliseconds.
fn cpu_of(pids: &[u32], etcd: &[u32]) -> (f64, f64) {
    (
        pids.iter().map(|&p| cpu_ms(p)).sum(),
        etcd.iter().map(|&p| cpu_ms(p)).sum(),
    )
}

/// Measures one cluster size.
fn one(n: usize, a: &ConvergeArgs, tools: Tools) -> Result<Row, String> {
    let plan = Plan::new(&format!("cv{n}")).map_err(|e| e.to_string())?;
    testbed::bed::down(&plan);
    eprintln!("converge: {n} nodes: starting meshd on each, and etcd ...");
    let mut bed = Bed::up_with(plan, tools, n, false, 1).map_err(|e| e.to_string())?;
    let result = measure(&mut bed, n, a);
    if let Some(dir) = &a.logs {
        let _ = std::fs::create_dir_all(dir);
        for node in &bed.rec.nodes {
            let to = dir.join(format!("cv{n}-{}.log", node.name));
            if let Err(e) = std::fs::copy(bed.plan.node_log(node.index), &to) {
                eprintln!("converge: cannot keep {}: {e}", to.display());
            }
        }
        for m in bed.rec.etcd.iter().flat_map(|e| &e.members) {
            let from = bed.plan.run_dir().join(format!("etcd-{}.log", m.name));
            let _ = std::fs::copy(from, dir.join(format!("cv{n}-etcd-{}.log", m.name)));
        }
    }
    bed.down_now();
    result
}

fn measure(bed: &mut Bed, n: usize, a: &ConvergeArgs) -> Result<Row, String> {
    let etcd = bed.rec.etcd.clone().ok_or("no etcd")?;
    let eps = vec![format!("http://{}:2379", etcd.members[0].addr)];
    let (net, services) = workload(n, a.services, a.tasks);
    let names: Vec<String> = bed.rec.nodes.iter().map(|x| x.name.clone()).collect();
    let pids: Vec<u32> = bed.rec.nodes.iter().map(|x| x.pid).collect();
    let etcd_pids: Vec<u32> = etcd.members.iter().map(|m| m.pid).collect();
    let nodes = &*bed;
    // The client runs in etcd's namespace (the management network is not the host's).
    let (import, samples, cpu) = testbed::sys::in_netns(&etcd.ns, || -> Result<_, String> {
        // Generous: 50 nodes starting on 2 cores keep etcd busy for a while.
        let mut e = Etcd::connect(&eps, Duration::from_secs(60)).map_err(|x| x.to_string())?;
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
        // Each node then rewrites its cache file (the import is no journal line): 100,000
        // tasks take a second of CPU per node, which is setup too.
        wait_cached(nodes, Duration::from_secs(600))?;
        // Each node's return (a lease again) is news to the others: let it settle, then
        // see what the nodes and etcd spend idle.
        std::thread::sleep(Duration::from_secs(3));
        let (q0, qe0, qt) = {
            let (a, b) = cpu_of(&pids, &etcd_pids);
            (a, b, Instant::now())
        };
        std::thread::sleep(Duration::from_secs(3));
        let (q1, qe1) = cpu_of(&pids, &etcd_pids);
        let quiet = qt.elapsed().as_secs_f64();
        let idle = ((q1 - q0) / quiet, (qe1 - qe0) / quiet);
        eprintln!(
            "converge: {n} nodes: imported and running everywhere in {:.1} s; timing {} updates ...",
            import.as_secs_f64(),
            a.updates
        );
        // (revision, write to every node's confirmation, the write alone), in ms.
        let mut samples = Vec::with_capacity(a.updates);
        let (c0, ce0, ct) = {
            let (a, b) = cpu_of(&pids, &etcd_pids);
            (a, b, Instant::now())
        };
        for u in 0..a.updates {
            let svc = format!("svc{}", u % a.services.max(1));
            let t0 = Instant::now();
            let snap = e
                .change(&Change::ServiceUpdate {
                    name: svc.clone(),
                    update: ServiceUpdate {
                        task_update: vec![TaskUpdate {
                            name: format!("{svc}.1"),
                            // A change every time: 1 → 2 on the first round of the
                            // services, back to 1 on the next.
                            weight: Some(if (u / a.services.max(1)).is_multiple_of(2) { 2 } else { 1 }),
                            state: None,
                        }],
                        ..ServiceUpdate::default()
                    },
                })
                .map_err(|x| x.to_string())?;
            let written = t0.elapsed();
            wait_all(&mut e, n, snap.revision, Duration::from_secs(120))?;
            samples.push((snap.revision, ms(t0.elapsed()), ms(written)));
        }
        let (c1, ce1) = cpu_of(&pids, &etcd_pids);
        let took = ct.elapsed().as_secs_f64();
        // Casts: a few dozen nodes and updates.
        #[allow(clippy::cast_precision_loss)]
        let per = (a.updates.max(1) as f64, n.max(1) as f64);
        let cpu = (
            ((c1 - c0) - idle.0 * took).max(0.0) / per.0 / per.1,
            ((ce1 - ce0) - idle.1 * took).max(0.0) / per.0,
        );
        // Milliseconds of CPU a second, per node: a tenth is a percent of a CPU.
        // Casts: a few dozen nodes.
        #[allow(clippy::cast_precision_loss)]
        let idle_pct = idle.0 / n.max(1) as f64 / 10.0;
        Ok((import, samples, (cpu.0, cpu.1, idle_pct)))
    })
    .map_err(|e| e.to_string())??;
    let first = samples.iter().map(|s| s.0).min().unwrap_or(i64::MAX);
    let applied = applies(bed, first);
    let mut apply_ms: Vec<f64> = applied.iter().map(|a| a.took_ms).collect();
    apply_ms.sort_by(f64::total_cmp);
    let mut by_total = samples.clone();
    by_total.sort_by(|x, y| y.1.total_cmp(&x.1));
    let slowest = by_total
        .iter()
        .take(3)
        .map(|&(revision, total_ms, write_ms)| {
            let last = applied
                .iter()
                .filter(|a| a.revision == revision)
                .max_by(|x, y| x.took_ms.total_cmp(&y.took_ms))
                .cloned()
                .unwrap_or_default();
            Slow {
                revision,
                total_ms,
                write_ms,
                node: last.node,
                apply_ms: last.took_ms,
                how: last.how,
                compile_ms: last.compile_ms,
                publish_ms: last.publish_ms,
                journal_ms: last.journal_ms,
            }
        })
        .collect();
    let mut writes: Vec<f64> = samples.iter().map(|s| s.2).collect();
    writes.sort_by(f64::total_cmp);
    // A node's restart: kill -9, then its socket answering from the cached state.
    let t0 = Instant::now();
    bed.kill_meshd("n1").map_err(|e| e.to_string())?;
    bed.restart_meshd("n1").map_err(|e| e.to_string())?;
    let restart = t0.elapsed();
    let mut samples: Vec<f64> = samples.iter().map(|s| s.1).collect();
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
        apply_p50_ms: percentile(&apply_ms, 50.0),
        apply_p99_ms: percentile(&apply_ms, 99.0),
        write_p50_ms: percentile(&writes, 50.0),
        write_p99_ms: percentile(&writes, 99.0),
        node_cpu_ms: cpu.0,
        etcd_cpu_ms: cpu.1,
        node_idle_pct: cpu.2,
        slowest,
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
                for w in &r.slowest {
                    eprintln!(
                        "converge: {n} nodes: a slow update: revision {} took {:.1} ms (the write {:.1} ms); \
                         {} applied it last in {:.1} ms ({}: compile {:.1} ms, workers {:.1} ms, journal {:.1} ms)",
                        w.revision, w.total_ms, w.write_ms, w.node, w.apply_ms, w.how,
                        w.compile_ms, w.publish_ms, w.journal_ms
                    );
                }
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
        "{:>5} {:>8} {:>7} {:>11} {:>9} {:>9} {:>9} {:>10} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9} {:>10}",
        "NODES",
        "SERVICES",
        "TASKS",
        "IMPORT",
        "P50",
        "P99",
        "MAX",
        "RESTART",
        "APPLY P50",
        "APPLY P99",
        "WRITE P50",
        "WRITE P99",
        "CPU/NODE",
        "CPU/ETCD",
        "IDLE/NODE"
    );
    for r in &rows {
        println!(
            "{:>5} {:>8} {:>7} {:>9.0}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>8.1}ms {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>7.1}ms {:>7.1}ms {:>9.2}%",
            r.nodes,
            r.services,
            r.tasks,
            r.import_ms,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.restart_ms,
            r.apply_p50_ms,
            r.apply_p99_ms,
            r.write_p50_ms,
            r.write_p99_ms,
            r.node_cpu_ms,
            r.etcd_cpu_ms,
            r.node_idle_pct
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
                addr6: None,
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
