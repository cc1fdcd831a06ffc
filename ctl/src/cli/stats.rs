//! `meshctl stats`: the daemon's counters as tables.

use serde_json::Value;

use super::render::table;

fn n(v: &Value) -> String {
    v.as_u64()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

/// Renders the JSON of the daemon's `stats` answer.
pub fn render(s: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "node {}   generation {}\n\n",
        s["node"].as_str().unwrap_or("?"),
        n(&s["generation"])
    ));
    let cols = [
        "rx",
        "tx_uplink",
        "tx_tasks",
        "to_host",
        "handoff_out",
        "new_flows",
        "active_flows",
        "flows_expired",
        "flows_ended",
        "resets_sent",
    ];
    let heads = [
        "WORKER",
        "RX",
        "TX-UPLINK",
        "TX-TASKS",
        "TO-HOST",
        "HANDOFF",
        "NEW-FLOWS",
        "ACTIVE-FLOWS",
        "EXPIRED",
        "ENDED",
        "RESETS",
        "DROPS",
        "PORT-DROPS",
    ];
    let workers = s["workers"].as_array().cloned().unwrap_or_default();
    // Frames the ports lost before or after the pipeline (kernel ring full, too long, TX full).
    let port_drops = |w: &Value| {
        [
            "port_rx_dropped",
            "port_rx_too_long",
            "port_tx_full",
            "port_tx_bad_len",
        ]
        .iter()
        .filter_map(|k| w[*k].as_u64())
        .sum::<u64>()
    };
    let drops_of = |w: &Value| {
        w["drops"]
            .as_object()
            .map(|d| d.values().filter_map(Value::as_u64).sum::<u64>())
            .unwrap_or(0)
    };
    let mut rows: Vec<Vec<String>> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut r = vec![i.to_string()];
            r.extend(cols.iter().map(|c| n(&w[*c])));
            r.push(drops_of(w).to_string());
            r.push(port_drops(w).to_string());
            r
        })
        .collect();
    let total = &s["total"];
    let mut r = vec!["total".to_string()];
    r.extend(cols.iter().map(|c| n(&total[*c])));
    r.push(drops_of(total).to_string());
    r.push(port_drops(total).to_string());
    rows.push(r);
    out.push_str(&table(&heads, &rows));

    if let Some(d) = total["drops"].as_object().filter(|d| !d.is_empty()) {
        out.push('\n');
        let rows: Vec<Vec<String>> = d.iter().map(|(k, v)| vec![k.clone(), n(v)]).collect();
        out.push_str(&table(&["DROP REASON", "PACKETS"], &rows));
    }

    let lat = &s["burst_latency_ns"];
    out.push_str(&format!(
        "\nburst processing time (ns): p50 {}   p99 {}   p99.9 {}   max {}   ({} bursts)\n",
        n(&lat["p50"]),
        n(&lat["p99"]),
        n(&lat["p999"]),
        n(&lat["max"]),
        n(&lat["count"])
    ));

    let mut rows = Vec::new();
    for svc in s["services"].as_array().into_iter().flatten() {
        let name = svc["name"].as_str().unwrap_or("?");
        rows.push(vec![
            name.to_string(),
            "".into(),
            "".into(),
            n(&svc["packets"]),
            n(&svc["bytes"]),
            n(&svc["connections"]),
        ]);
        for t in svc["tasks"].as_array().into_iter().flatten() {
            rows.push(vec![
                String::new(),
                t["name"].as_str().unwrap_or("?").to_string(),
                t["node"].as_str().unwrap_or("?").to_string(),
                n(&t["packets"]),
                n(&t["bytes"]),
                n(&t["connections"]),
                t["health"].as_str().unwrap_or("").to_string(),
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
    if let Some(h) = s["host"].as_object() {
        // The host side: DNS, health checks, gossip, the node's own answers.
        let line = |keys: &[&str]| -> String {
            keys.iter()
                .map(|k| {
                    format!(
                        "{} {}",
                        k.replace('_', "-"),
                        n(h.get(*k).unwrap_or(&Value::Null))
                    )
                })
                .collect::<Vec<_>>()
                .join("   ")
        };
        out.push_str("\nhost: ");
        out.push_str(&line(&[
            "frames",
            "rst_sent",
            "unreachable_sent",
            "echo_replies",
        ]));
        out.push_str("\ndns: ");
        out.push_str(&line(&[
            "dns_queries",
            "dns_tcp_queries",
            "dns_noerror",
            "dns_nxdomain",
            "dns_formerr",
            "dns_truncated",
            "dns_dropped",
            "dns_forwarded",
        ]));
        out.push_str("\nhealth: ");
        out.push_str(&line(&[
            "checks_started",
            "checks_passed",
            "checks_failed",
            "health_changes",
            "gossip_sent",
            "gossip_received",
            "gossip_rejected",
        ]));
        out.push('\n');
    }
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
        let t = render(&v);
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
    }
}
