//! `meshctl service stats`: each service's traffic per task, on every node, as `ipvsadm -Ln
//! --stats --rate` shows a virtual service's: the connections held now (IPVS's ActiveConn and
//! InActConn), and new connections, packets and bytes per second and since meshd started.

use std::collections::BTreeMap;
use std::time::Duration;

use ctl::proto::{Command, Query, StatsReport};
use serde::Serialize;

use super::render::table;
use super::{CliError, Ctx, Format};

pub(super) const HELP: &str = "\
Examples:
  meshctl service stats                  every service, every node named by --socket
  meshctl service stats web --interval 5
  meshctl service stats web --interval 0 --format json

Each node answers for the traffic it handled: a connection is counted by the node the client
reached (its published port or VIP), whichever node runs the task. ACTIVE is the established
TCP connections a task holds now, INACTIVE every other connection (half-open, closing, UDP),
as IPVS counts them; both are as of each worker's last sweep of its flow table (a quarter of a
second for 64 K flows). CONN/S, PKT/S and BYTE/S are over --interval, read twice; 0 leaves the
rates out. The totals since meshd started are Prometheus' meshd_task_*_total counters.";

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Services to show (all when none is named)
    #[arg(value_name = "SERVICE")]
    names: Vec<String>,
    /// Seconds between the two reads the rates are taken over; 0: no rates
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = parse_interval)]
    interval: f64,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=3600.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 3600")),
    }
}

/// One task's figures on one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct TaskRow {
    service: String,
    task: String,
    /// Where the task runs.
    task_node: String,
    active: u64,
    inactive: u64,
    connections: u64,
    packets: u64,
    bytes: u64,
    /// Over the interval; absent with `--interval 0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    conns_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    packets_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_per_s: Option<f64>,
}

/// One node's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct NodeRows {
    node: String,
    tasks: Vec<TaskRow>,
}

/// The rows of `now` for the services named (all when `names` is empty), with rates against
/// `before` over `secs`.
fn rows(now: &StatsReport, before: Option<&StatsReport>, secs: f64, names: &[String]) -> NodeRows {
    let mut prev: BTreeMap<(&str, &str), [u64; 3]> = BTreeMap::new();
    for s in before.map(|b| b.services.as_slice()).unwrap_or_default() {
        for t in &s.tasks {
            prev.insert((&s.name, &t.name), [t.connections, t.packets, t.bytes]);
        }
    }
    let rate = |new: u64, old: Option<u64>| -> Option<f64> {
        // Casts: display rates; a counter's precision past 2^53 does not matter here.
        #[allow(clippy::cast_precision_loss)]
        old.filter(|_| secs > 0.0)
            .map(|o| new.saturating_sub(o) as f64 / secs)
    };
    let mut tasks = Vec::new();
    for s in &now.services {
        if !names.is_empty() && !names.contains(&s.name) {
            continue;
        }
        for t in &s.tasks {
            let p = prev.get(&(s.name.as_str(), t.name.as_str()));
            tasks.push(TaskRow {
                service: s.name.clone(),
                task: t.name.clone(),
                task_node: t.node.clone(),
                active: t.active_connections,
                inactive: t.inactive_connections,
                connections: t.connections,
                packets: t.packets,
                bytes: t.bytes,
                conns_per_s: rate(t.connections, p.map(|v| v[0])),
                packets_per_s: rate(t.packets, p.map(|v| v[1])),
                bytes_per_s: rate(t.bytes, p.map(|v| v[2])),
            });
        }
    }
    NodeRows {
        node: now.node.clone(),
        tasks,
    }
}

fn render(nodes: &[NodeRows]) -> String {
    let opt = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let mut out = Vec::new();
    for n in nodes {
        for t in &n.tasks {
            out.push(vec![
                n.node.clone(),
                t.service.clone(),
                t.task.clone(),
                t.task_node.clone(),
                t.active.to_string(),
                t.inactive.to_string(),
                opt(t.conns_per_s),
                opt(t.packets_per_s),
                opt(t.bytes_per_s),
                t.connections.to_string(),
                t.packets.to_string(),
                t.bytes.to_string(),
            ]);
        }
    }
    table(
        &[
            "NODE",
            "SERVICE",
            "TASK",
            "TASK-NODE",
            "ACTIVE",
            "INACTIVE",
            "CONN/S",
            "PKT/S",
            "BYTE/S",
            "CONNECTIONS",
            "PACKETS",
            "BYTES",
        ],
        &out,
    )
}

pub(super) fn run(ctx: &Ctx, a: &Args) -> Result<(), CliError> {
    let cmd = Command::Query(Query::Stats {});
    let first: Vec<StatsReport> = ctx.ask_each(&cmd)?;
    for name in &a.names {
        if !first
            .iter()
            .any(|r| r.services.iter().any(|s| &s.name == name))
        {
            return Err(CliError::Msg(format!(
                "service {name:?} not found (meshctl service ls lists them)"
            )));
        }
    }
    let second: Option<Vec<StatsReport>> = if a.interval > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(a.interval));
        Some(ctx.ask_each(&cmd)?)
    } else {
        None
    };
    let nodes: Vec<NodeRows> = match &second {
        Some(now) => now
            .iter()
            .zip(&first)
            .map(|(n, b)| rows(n, Some(b), a.interval, &a.names))
            .collect(),
        None => first.iter().map(|n| rows(n, None, 0.0, &a.names)).collect(),
    };
    match ctx.format {
        Format::Json => super::print_json(&nodes),
        Format::Table => super::out(&render(&nodes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(conns: u64, packets: u64) -> StatsReport {
        serde_json::from_value(serde_json::json!({
            "node": "n1",
            "services": [{"name": "web", "tasks": [
                {"name": "web.1", "node": "n2", "packets": packets, "bytes": packets * 100,
                 "connections": conns, "active_connections": 3, "inactive_connections": 1}]},
                {"name": "api", "tasks": [{"name": "api.1", "node": "n1"}]}]
        }))
        .unwrap()
    }

    #[test]
    fn rates_are_the_difference_over_the_interval() {
        let r = rows(
            &report(30, 1000),
            Some(&report(10, 600)),
            2.0,
            &["web".into()],
        );
        assert_eq!(r.tasks.len(), 1, "only the service named");
        let t = &r.tasks[0];
        assert_eq!((t.active, t.inactive, t.connections), (3, 1, 30));
        assert_eq!(t.conns_per_s, Some(10.0));
        assert_eq!(t.packets_per_s, Some(200.0));
        assert_eq!(t.bytes_per_s, Some(20000.0));
        let s = render(&[r]);
        assert!(
            s.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "n1", "web", "web.1", "n2", "3", "1", "10.0", "200.0", "20000.0", "30", "1000",
                    "100000"
                ]),
            "{s}"
        );
        // Without a first read, no rates.
        let r = rows(&report(30, 1000), None, 0.0, &[]);
        assert_eq!(r.tasks.len(), 2);
        assert_eq!(r.tasks[0].conns_per_s, None);
        assert!(render(&[r]).contains(" - "));
    }
}
