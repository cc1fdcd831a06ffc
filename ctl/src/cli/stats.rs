//! `meshctl stats`: the daemon's [`StatsReport`] as tables.

use ctl::proto::{DpdkReport, HostCounters, StatsReport, WorkerReport};

use super::render::table;

/// One column of the worker table.
type Column = fn(&WorkerReport) -> u64;

/// The worker table's columns: heading and counter, then the drops and the port drops.
const COLUMNS: [(&str, Column); 12] = [
    ("RX", |w| w.counters.rx),
    ("TX-UPLINK", |w| w.counters.tx_uplink),
    ("TX-TASKS", |w| w.counters.tx_tasks),
    ("TO-HOST", |w| w.counters.to_host),
    ("HANDOFF", |w| w.counters.handoff_out),
    ("NEW-FLOWS", |w| w.counters.new_flows),
    ("ACTIVE-FLOWS", |w| w.counters.active_flows),
    ("EXPIRED", |w| w.counters.flows_expired),
    ("ENDED", |w| w.counters.flows_ended),
    ("RESETS", |w| w.counters.resets_sent),
    ("DROPS", WorkerReport::total_drops),
    // Frames the ports lost before or after the pipeline (kernel ring full, too long, TX full).
    ("PORT-DROPS", |w| w.counters.port_drops()),
];

/// `name value` pairs of host counters, each named by its field (`dns_queries` shows as
/// `dns-queries`).
macro_rules! host_line {
    ($h:expr; $($field:ident),* $(,)?) => {
        line(&[$((stringify!($field), $h.$field)),*])
    };
}

fn line(pairs: &[(&str, u64)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{} {v}", k.replace('_', "-")))
        .collect::<Vec<_>>()
        .join("   ")
}

/// Renders the daemon's `stats` answer.
pub fn render(s: &StatsReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "node {}   generation {}\n\n",
        s.node, s.generation
    ));
    let heads: Vec<&str> = std::iter::once("WORKER")
        .chain(COLUMNS.iter().map(|(h, _)| *h))
        .collect();
    let row = |label: String, w: &WorkerReport| -> Vec<String> {
        std::iter::once(label)
            .chain(COLUMNS.iter().map(|(_, f)| f(w).to_string()))
            .collect()
    };
    let mut rows: Vec<Vec<String>> = s
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| row(i.to_string(), w))
        .collect();
    rows.push(row("total".to_string(), &s.total));
    out.push_str(&table(&heads, &rows));

    if !s.total.drops.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .total
            .drops
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        out.push_str(&table(&["DROP REASON", "PACKETS"], &rows));
    }
    if !s.total.to_host.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .total
            .to_host
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        out.push_str(&table(&["TO-HOST REASON", "PACKETS"], &rows));
    }

    if let Some(d) = &s.dpdk {
        out.push_str(&dpdk(d));
    }

    let lat = &s.burst_latency_ns;
    out.push_str(&format!(
        "\nburst processing time (ns): p50 {}   p99 {}   p99.9 {}   max {}   ({} bursts)\n",
        lat.p50, lat.p99, lat.p999, lat.max, lat.count
    ));

    let mut rows = Vec::new();
    for svc in &s.services {
        rows.push(vec![
            svc.name.clone(),
            "".into(),
            "".into(),
            svc.packets.to_string(),
            svc.bytes.to_string(),
            svc.connections.to_string(),
        ]);
        for t in &svc.tasks {
            rows.push(vec![
                String::new(),
                t.name.clone(),
                t.node.clone(),
                t.packets.to_string(),
                t.bytes.to_string(),
                t.connections.to_string(),
                t.health.map_or("", |h| h.as_str()).to_string(),
            ]);
        }
    }
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "SERVICE",
                "TASK",
                "NODE",
                "PACKETS",
                "BYTES",
                "CONNECTIONS",
                "HEALTH",
            ],
            &rows,
        ));
    }
    if let Some(h) = &s.host {
        out.push_str(&host(h));
    }
    out
}

/// The DPDK devices as their drivers count (`meshd --io dpdk`), and the mbuf pools.
fn dpdk(d: &DpdkReport) -> String {
    let rows: Vec<Vec<String>> = d
        .devices
        .iter()
        .map(|x| {
            vec![
                x.port.clone(),
                x.name.clone(),
                x.driver.clone(),
                if x.link_up {
                    format!("up {} Mb/s", x.speed_mbps)
                } else {
                    "down".into()
                },
                x.rx_packets.to_string(),
                x.tx_packets.to_string(),
                x.rx_missed.to_string(),
                x.rx_errors.to_string(),
                x.tx_errors.to_string(),
                x.rx_nombuf.to_string(),
            ]
        })
        .collect();
    let mut out = String::from("\n");
    out.push_str(&table(
        &[
            "PORT",
            "DEVICE",
            "DRIVER",
            "LINK",
            "RX",
            "TX",
            "RX-MISSED",
            "RX-ERRORS",
            "TX-ERRORS",
            "RX-NOMBUF",
        ],
        &rows,
    ));
    out.push_str(&format!(
        "mbufs in use: {} of {} (the devices' RX rings hold most)\n",
        d.mbufs_in_use, d.mbufs
    ));
    out
}

/// The host side: its own answers, DNS, health checks and gossip.
fn host(h: &HostCounters) -> String {
    let mut out = String::from("\nhost: ");
    out.push_str(&host_line!(h; frames, rst_sent, unreachable_sent, echo_replies));
    out.push_str("\ndns: ");
    out.push_str(&host_line!(h;
        dns_queries,
        dns_tcp_queries,
        dns_noerror,
        dns_nxdomain,
        dns_formerr,
        dns_truncated,
        dns_dropped,
        dns_tcp_refused,
        dns_forwarded,
    ));
    out.push_str("\nhealth: ");
    out.push_str(&host_line!(h;
        checks_started,
        checks_passed,
        checks_failed,
        health_changes,
        gossip_sent,
        gossip_received,
        gossip_rejected,
        gossip_forged,
    ));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_workers_drops_latency_and_tasks() {
        let v = serde_json::json!({
            "node": "n1", "generation": 7,
            "workers": [{"rx": 10, "new_flows": 2, "drops": {"no_route": 1}}],
            "total": {"rx": 10, "new_flows": 2, "drops": {"no_route": 1}},
            "burst_latency_ns": {"count": 3, "p50": 900, "p99": 2000, "p999": 2000, "max": 2100},
            "services": [{"name": "web", "packets": 8, "bytes": 800, "connections": 2,
                          "tasks": [{"name": "web.1", "node": "n2", "packets": 8, "bytes": 800, "connections": 2, "health": "healthy"}]}],
            "host": {"dns_queries": 5, "checks_failed": 1}
        });
        let t = render(&serde_json::from_value(v).unwrap());
        assert!(t.contains("node n1   generation 7"), "{t}");
        assert!(t.contains("no_route"), "{t}");
        assert!(t.contains("p50 900"), "{t}");
        assert!(
            t.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["web.1", "n2", "8", "800", "2", "healthy"]),
            "{t}"
        );
        assert!(t.contains("dns-queries 5"), "{t}");
        assert!(t.contains("checks-failed 1"), "{t}");
        // No DPDK section on other ports.
        assert!(!t.contains("DEVICE"), "{t}");
    }

    #[test]
    fn renders_dpdk_devices_and_mbufs() {
        let v = serde_json::json!({
            "node": "n1", "generation": 1, "workers": [], "total": {},
            "burst_latency_ns": {}, "services": [],
            "dpdk": {"mbufs_in_use": 2048, "mbufs": 8191, "devices": [
                {"port": "uplink", "name": "net_memif0", "driver": "net_memif", "link_up": true,
                 "speed_mbps": 100000, "rx_packets": 9, "tx_packets": 8, "rx_missed": 3,
                 "rx_errors": 0, "tx_errors": 1, "rx_nombuf": 2},
                {"port": "tasks", "name": "net_memif1", "driver": "net_memif", "link_up": false}]}
        });
        let t = render(&serde_json::from_value(v).unwrap());
        let row = |first: &str| {
            t.lines()
                .find(|l| l.starts_with(first))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(
            row("uplink"),
            [
                "uplink",
                "net_memif0",
                "net_memif",
                "up",
                "100000",
                "Mb/s",
                "9",
                "8",
                "3",
                "0",
                "1",
                "2"
            ],
            "{t}"
        );
        assert_eq!(row("tasks")[3], "down", "{t}");
        assert!(t.contains("mbufs in use: 2048 of 8191"), "{t}");
    }
}
