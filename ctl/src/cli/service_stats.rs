//! `meshctl service stats`: each service's traffic per task, on every node, as `ipvsadm -Ln
//! --stats --rate` shows a virtual service's: the connections held now (IPVS's ActiveConn and
//! InActConn), and new connections, packets, bytes and drops per second and since meshd
//! started.

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
second for 64 K flows). DROPS is the frames of the task's flows the node dropped (a flow's
packet dropped on its way out is in PACKETS too) and its new connections refused after it was
picked; a row with TASK - holds the service's drops no task is blamed for: new connections
refused before a task was picked (no task may take it, a source over its new-flow rate).
Frames dropped before meshd knows their service are counted only by reason (meshctl stats).
CONN/S, PKT/S, BYTE/S and DROP/S are over --interval, read twice; 0 leaves the rates out. The
totals since meshd started are Prometheus' meshd_task_*_total and
meshd_service_dropped_total counters.";

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

/// One task's figures on one node; or, with no task, its service's drops no task is blamed
/// for.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct TaskRow {
    service: String,
    /// `None` (JSON null): the service's own row.
    task: Option<String>,
    /// Where the task runs.
    task_node: Option<String>,
    active: u64,
    inactive: u64,
    connections: u64,
    packets: u64,
    bytes: u64,
    dropped: u64,
    /// Over the interval; absent with `--interval 0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    conns_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    packets_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drops_per_s: Option<f64>,
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
    // By (service, task): connections, packets, bytes, drops; the task `None` is the service's
    // drops no task is blamed for.
    let mut prev: BTreeMap<(&str, Option<&str>), [u64; 4]> = BTreeMap::new();
    for s in before.map(|b| b.services.as_slice()).unwrap_or_default() {
        for t in &s.tasks {
            prev.insert(
                (&s.name, Some(&t.name)),
                [t.connections, t.packets, t.bytes, t.dropped],
            );
        }
        prev.insert((&s.name, None), [0, 0, 0, unblamed(s)]);
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
            let p = prev.get(&(s.name.as_str(), Some(t.name.as_str())));
            tasks.push(TaskRow {
                service: s.name.clone(),
                task: Some(t.name.clone()),
                task_node: Some(t.node.clone()),
                active: t.active_connections,
                inactive: t.inactive_connections,
                connections: t.connections,
                packets: t.packets,
                bytes: t.bytes,
                dropped: t.dropped,
                conns_per_s: rate(t.connections, p.map(|v| v[0])),
                packets_per_s: rate(t.packets, p.map(|v| v[1])),
                bytes_per_s: rate(t.bytes, p.map(|v| v[2])),
                drops_per_s: rate(t.dropped, p.map(|v| v[3])),
            });
        }
        let own = unblamed(s);
        if own > 0 {
            let p = prev.get(&(s.name.as_str(), None));
            tasks.push(TaskRow {
                service: s.name.clone(),
                dropped: own,
                drops_per_s: rate(own, p.map(|v| v[3])),
                ..TaskRow::default()
            });
        }
    }
    NodeRows {
        node: now.node.clone(),
        tasks,
    }
}

/// A service's drops that no task is blamed for: its total less its tasks'.
fn unblamed(s: &ctl::proto::ServiceReport) -> u64 {
    s.dropped
        .saturating_sub(s.tasks.iter().map(|t| t.dropped).sum::<u64>())
}

fn render(nodes: &[NodeRows]) -> String {
    let opt = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let name = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".to_string());
    let mut out = Vec::new();
    for n in nodes {
        for t in &n.tasks {
            // The service's own row has no connections, packets or bytes: '-'.
            let own = t.task.is_none();
            let count = |x: u64| if own { "-".to_string() } else { x.to_string() };
            let per_s = |x: Option<f64>| if own { "-".to_string() } else { opt(x) };
            out.push(vec![
                n.node.clone(),
                t.service.clone(),
                name(&t.task),
                name(&t.task_node),
                count(t.active),
                count(t.inactive),
                per_s(t.conns_per_s),
                per_s(t.packets_per_s),
                per_s(t.bytes_per_s),
                opt(t.drops_per_s),
                count(t.connections),
                count(t.packets),
                count(t.bytes),
                t.dropped.to_string(),
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
            "DROP/S",
            "CONNECTIONS",
            "PACKETS",
            "BYTES",
            "DROPS",
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
            "services": [{"name": "web", "dropped": conns / 10, "tasks": [
                {"name": "web.1", "node": "n2", "packets": packets, "bytes": packets * 100,
                 "connections": conns, "active_connections": 3, "inactive_connections": 1,
                 "dropped": conns / 10}]},
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
        assert_eq!((t.dropped, t.drops_per_s), (3, Some(1.0)));
        let s = render(&[r]);
        assert!(
            s.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "n1", "web", "web.1", "n2", "3", "1", "10.0", "200.0", "20000.0", "1.0", "30",
                    "1000", "100000", "3"
                ]),
            "{s}"
        );
        // Without a first read, no rates.
        let r = rows(&report(30, 1000), None, 0.0, &[]);
        assert_eq!(r.tasks.len(), 2);
        assert_eq!(r.tasks[0].conns_per_s, None);
        assert!(render(&[r]).contains(" - "));
    }

    /// A service's drops no task is blamed for (new connections refused before a task was
    /// picked) get a row of their own, TASK '-', with their rate; a service with none has no
    /// such row.
    #[test]
    fn drops_no_task_is_blamed_for_have_the_services_own_row() {
        let report = |own: u64, web1: u64| -> StatsReport {
            serde_json::from_value(serde_json::json!({
                "node": "n1",
                "services": [{"name": "web", "dropped": own + web1, "tasks": [
                    {"name": "web.1", "node": "n2", "packets": 10, "dropped": web1}]},
                    {"name": "api", "dropped": 0, "tasks": []}]
            }))
            .unwrap()
        };
        let r = rows(&report(12, 2), Some(&report(4, 1)), 2.0, &[]);
        assert_eq!(r.tasks.len(), 2, "web.1 and web's own row; api has nothing");
        let own = &r.tasks[1];
        assert_eq!(
            (own.task.as_deref(), own.task_node.as_deref()),
            (None, None)
        );
        assert_eq!((own.dropped, own.drops_per_s), (12, Some(4.0)));
        assert_eq!((r.tasks[0].dropped, r.tasks[0].drops_per_s), (2, Some(0.5)));
        let s = render(std::slice::from_ref(&r));
        assert!(
            s.lines()
                .next()
                .is_some_and(|h| h.contains("DROP/S") && h.ends_with("DROPS")),
            "{s}"
        );
        assert!(
            s.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["n1", "web", "-", "-", "-", "-", "-", "-", "-", "4.0", "-", "-", "-", "12"]),
            "{s}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["tasks"][1]["task"], serde_json::Value::Null);
        assert_eq!(json["tasks"][1]["dropped"], 12);
        assert_eq!(json["tasks"][0]["task"], "web.1");
        // Older meshd: no "dropped" at all parses as none, and no own row.
        let old: StatsReport = serde_json::from_value(serde_json::json!({
            "node": "n1", "services": [{"name": "web", "tasks": [{"name": "web.1"}]}]
        }))
        .unwrap();
        let r = rows(&old, None, 0.0, &[]);
        assert_eq!((r.tasks.len(), r.tasks[0].dropped), (1, 0));
    }
}
