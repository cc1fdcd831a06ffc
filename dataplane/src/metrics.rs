//! Prometheus text exposition of the daemon's counters, on an optional HTTP address.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::control::Controller;
use crate::shared::Shared;

/// Renders the `stats` JSON of [`Controller::stats`] as Prometheus text format 0.0.4.
pub fn render(stats: &Value) -> String {
    let mut out = String::new();
    let node = stats["node"].as_str().unwrap_or("");
    if let Some(workers) = stats["workers"].as_array() {
        let mut names: Vec<&str> = Vec::new();
        if let Some(first) = workers.first().and_then(|w| w.as_object()) {
            names = first
                .keys()
                .filter(|k| *k != "drops")
                .map(|k| k.as_str())
                .collect();
        }
        for name in names {
            let kind = if name == "active_flows" {
                "gauge"
            } else {
                "counter"
            };
            let metric = if kind == "counter" {
                format!("meshd_{name}_total")
            } else {
                format!("meshd_{name}")
            };
            out.push_str(&format!("# TYPE {metric} {kind}\n"));
            for (i, w) in workers.iter().enumerate() {
                out.push_str(&format!(
                    "{metric}{{node=\"{node}\",worker=\"{i}\"}} {}\n",
                    w[name].as_u64().unwrap_or(0)
                ));
            }
        }
        out.push_str("# TYPE meshd_drops_total counter\n");
        for (i, w) in workers.iter().enumerate() {
            if let Some(d) = w["drops"].as_object() {
                for (reason, n) in d {
                    out.push_str(&format!(
                        "meshd_drops_total{{node=\"{node}\",worker=\"{i}\",reason=\"{reason}\"}} {}\n",
                        n.as_u64().unwrap_or(0)
                    ));
                }
            }
        }
    }
    if let Some(services) = stats["services"].as_array() {
        for (metric, field) in [
            ("meshd_task_packets_total", "packets"),
            ("meshd_task_bytes_total", "bytes"),
            ("meshd_task_connections_total", "connections"),
        ] {
            out.push_str(&format!("# TYPE {metric} counter\n"));
            for svc in services {
                let sname = svc["name"].as_str().unwrap_or("");
                for t in svc["tasks"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{metric}{{node=\"{node}\",service=\"{sname}\",task=\"{}\"}} {}\n",
                        t["name"].as_str().unwrap_or(""),
                        t[field].as_u64().unwrap_or(0)
                    ));
                }
            }
        }
    }
    let lat = &stats["burst_latency_ns"];
    out.push_str("# TYPE meshd_burst_latency_ns summary\n");
    for (q, k) in [("0.5", "p50"), ("0.99", "p99"), ("0.999", "p999")] {
        out.push_str(&format!(
            "meshd_burst_latency_ns{{node=\"{node}\",quantile=\"{q}\"}} {}\n",
            lat[k].as_u64().unwrap_or(0)
        ));
    }
    out.push_str(&format!(
        "meshd_burst_latency_ns_count{{node=\"{node}\"}} {}\n",
        lat["count"].as_u64().unwrap_or(0)
    ));
    // Health verdicts: 1 for the task's current health, per task with a check.
    if let Some(services) = stats["services"].as_array() {
        out.push_str("# TYPE meshd_task_health gauge\n");
        for svc in services {
            let sname = svc["name"].as_str().unwrap_or("");
            for t in svc["tasks"].as_array().into_iter().flatten() {
                let Some(h) = t["health"].as_str() else {
                    continue;
                };
                for state in ["starting", "healthy", "unhealthy"] {
                    out.push_str(&format!(
                        "meshd_task_health{{node=\"{node}\",service=\"{sname}\",task=\"{}\",health=\"{state}\"}} {}\n",
                        t["name"].as_str().unwrap_or(""),
                        u8::from(h == state)
                    ));
                }
            }
        }
    }
    // The host side's counters: DNS, health checks, gossip, the node's own answers.
    if let Some(host) = stats["host"].as_object() {
        for (name, v) in host {
            let metric = format!("meshd_host_{name}_total");
            out.push_str(&format!("# TYPE {metric} counter\n"));
            out.push_str(&format!(
                "{metric}{{node=\"{node}\"}} {}\n",
                v.as_u64().unwrap_or(0)
            ));
        }
    }
    out.push_str("# TYPE meshd_generation gauge\n");
    out.push_str(&format!(
        "meshd_generation{{node=\"{node}\"}} {}\n",
        stats["generation"].as_u64().unwrap_or(0)
    ));
    out
}

/// Serves `GET /metrics` until `shared.stop`.
pub fn serve(l: TcpListener, ctl: Arc<Mutex<Controller>>, shared: Arc<Shared>) {
    let _ = l.set_nonblocking(true);
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = l.accept() else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut first = String::new();
        let Ok(read) = s.try_clone() else { continue };
        let mut r = BufReader::new(read);
        if r.read_line(&mut first).is_err() {
            continue;
        }
        let body = if first.starts_with("GET /metrics") {
            match ctl.lock() {
                Ok(c) => Some(render(&c.stats())),
                Err(_) => None,
            }
        } else {
            None
        };
        let resp = match body {
            Some(b) => format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{b}", b.len()),
            None => "HTTP/1.0 404 Not Found\r\nContent-Length: 20\r\n\r\ntry GET /metrics ...".to_string(),
        };
        let _ = s.write_all(resp.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_drops() {
        let v = serde_json::json!({
            "node": "n1", "generation": 3,
            "workers": [{"rx": 5, "active_flows": 2, "drops": {"bad_ip_checksum": 1}}],
            "burst_latency_ns": {"count": 1, "p50": 100, "p99": 200, "p999": 300, "max": 300},
            "services": [{"name": "web", "tasks": [{"name": "web.1", "packets": 4, "bytes": 400, "connections": 1, "health": "unhealthy"}]}],
            "host": {"dns_queries": 7}
        });
        let t = render(&v);
        assert!(t.contains("meshd_rx_total{node=\"n1\",worker=\"0\"} 5"));
        assert!(t.contains("# TYPE meshd_active_flows gauge"));
        assert!(
            t.contains("meshd_drops_total{node=\"n1\",worker=\"0\",reason=\"bad_ip_checksum\"} 1")
        );
        assert!(t.contains("meshd_generation{node=\"n1\"} 3"));
        assert!(t.contains(
            "meshd_task_connections_total{node=\"n1\",service=\"web\",task=\"web.1\"} 1"
        ));
        assert!(t.contains(
            "meshd_task_health{node=\"n1\",service=\"web\",task=\"web.1\",health=\"unhealthy\"} 1"
        ));
        assert!(t.contains("meshd_host_dns_queries_total{node=\"n1\"} 7"));
    }
}
