//! Prometheus text exposition of the daemon's counters, on an optional HTTP address.
//!
//! It renders the same [`StatsReport`] as `meshctl stats`, built from the hub without the
//! controller, so a scrape never waits behind a state change.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ctl::model::Health;
use ctl::proto::{HostCounters, StatsReport, TaskReport, WorkerCounters};

use crate::host::HostShared;
use crate::shared::Shared;

/// Renders a [`StatsReport`] as Prometheus text format 0.0.4.
pub fn render(stats: &StatsReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, stats);
    out
}

fn write_report(out: &mut String, stats: &StatsReport) -> std::fmt::Result {
    let node = stats.node.as_str();
    let values: Vec<[u64; WorkerCounters::FIELDS]> = stats
        .workers
        .iter()
        .map(|w| w.counters.to_array())
        .collect();
    for (i, (name, kind)) in WorkerCounters::NAMES
        .iter()
        .zip(WorkerCounters::KINDS)
        .enumerate()
    {
        let metric = match kind {
            ctl::counters::Kind::Counter => format!("meshd_{name}_total"),
            ctl::counters::Kind::Gauge => format!("meshd_{name}"),
        };
        writeln!(out, "# TYPE {metric} {}", kind.as_str())?;
        for (w, v) in values.iter().enumerate() {
            writeln!(out, "{metric}{{node=\"{node}\",worker=\"{w}\"}} {}", v[i])?;
        }
    }
    writeln!(out, "# TYPE meshd_drops_total counter")?;
    for (i, w) in stats.workers.iter().enumerate() {
        for (reason, n) in &w.drops {
            writeln!(
                out,
                "meshd_drops_total{{node=\"{node}\",worker=\"{i}\",reason=\"{reason}\"}} {n}"
            )?;
        }
    }
    writeln!(out, "# TYPE meshd_to_host_by_reason_total counter")?;
    for (i, w) in stats.workers.iter().enumerate() {
        for (reason, n) in &w.to_host {
            writeln!(
                out,
                "meshd_to_host_by_reason_total{{node=\"{node}\",worker=\"{i}\",reason=\"{reason}\"}} {n}"
            )?;
        }
    }
    let task_metrics: [(&str, &str, TaskField); 6] = [
        ("meshd_task_packets_total", "counter", |t| t.packets),
        ("meshd_task_bytes_total", "counter", |t| t.bytes),
        ("meshd_task_connections_total", "counter", |t| t.connections),
        // Frames of the task's flows dropped (meshd_drops_total has them by reason).
        ("meshd_task_dropped_total", "counter", |t| t.dropped),
        // IPVS's ActiveConn and InActConn, as of the workers' last sweep.
        ("meshd_task_active_connections", "gauge", |t| {
            t.active_connections
        }),
        ("meshd_task_inactive_connections", "gauge", |t| {
            t.inactive_connections
        }),
    ];
    for (metric, kind, field) in task_metrics {
        writeln!(out, "# TYPE {metric} {kind}")?;
        for svc in &stats.services {
            for t in &svc.tasks {
                writeln!(
                    out,
                    "{metric}{{node=\"{node}\",service=\"{}\",task=\"{}\"}} {}",
                    svc.name,
                    t.name,
                    field(t)
                )?;
            }
        }
    }
    // A service's drops: its tasks', and new connections refused before a task was picked.
    writeln!(out, "# TYPE meshd_service_dropped_total counter")?;
    for svc in &stats.services {
        writeln!(
            out,
            "meshd_service_dropped_total{{node=\"{node}\",service=\"{}\"}} {}",
            svc.name, svc.dropped
        )?;
    }
    let lat = &stats.burst_latency_ns;
    writeln!(out, "# TYPE meshd_burst_latency_ns summary")?;
    for (q, v) in [("0.5", lat.p50), ("0.99", lat.p99), ("0.999", lat.p999)] {
        writeln!(
            out,
            "meshd_burst_latency_ns{{node=\"{node}\",quantile=\"{q}\"}} {v}"
        )?;
    }
    writeln!(
        out,
        "meshd_burst_latency_ns_count{{node=\"{node}\"}} {}",
        lat.count
    )?;
    // Health verdicts: 1 for the task's current health, per task with a check.
    writeln!(out, "# TYPE meshd_task_health gauge")?;
    for svc in &stats.services {
        for t in &svc.tasks {
            let Some(h) = t.health else { continue };
            for state in [Health::Starting, Health::Healthy, Health::Unhealthy] {
                writeln!(
                    out,
                    "meshd_task_health{{node=\"{node}\",service=\"{}\",task=\"{}\",health=\"{}\"}} {}",
                    svc.name,
                    t.name,
                    state.as_str(),
                    u8::from(h == state)
                )?;
            }
        }
    }
    // The host side's counters: DNS, health checks, gossip, the node's own answers.
    if let Some(host) = &stats.host {
        write_host(out, node, host)?;
    }
    if let Some(d) = &stats.dpdk {
        write_dpdk(out, node, d)?;
    }
    writeln!(out, "# TYPE meshd_generation gauge")?;
    writeln!(
        out,
        "meshd_generation{{node=\"{node}\"}} {}",
        stats.generation
    )
}

/// One of a task's counters.
type TaskField = fn(&TaskReport) -> u64;

fn write_host(out: &mut String, node: &str, host: &HostCounters) -> std::fmt::Result {
    for (name, kind, v) in host.iter() {
        let metric = format!("meshd_host_{name}_total");
        writeln!(out, "# TYPE {metric} {}", kind.as_str())?;
        writeln!(out, "{metric}{{node=\"{node}\"}} {v}")?;
    }
    Ok(())
}

/// One of a DPDK device's counters.
type DeviceField = fn(&ctl::proto::DeviceReport) -> u64;

/// The DPDK devices' link and counters (from their drivers) and the mbuf pools.
fn write_dpdk(out: &mut String, node: &str, d: &ctl::proto::DpdkReport) -> std::fmt::Result {
    let fields: [(&str, &str, DeviceField); 10] = [
        ("meshd_device_link_up", "gauge", |x| u64::from(x.link_up)),
        ("meshd_device_speed_mbps", "gauge", |x| {
            u64::from(x.speed_mbps)
        }),
        ("meshd_device_rx_packets_total", "counter", |x| x.rx_packets),
        ("meshd_device_tx_packets_total", "counter", |x| x.tx_packets),
        ("meshd_device_rx_bytes_total", "counter", |x| x.rx_bytes),
        ("meshd_device_tx_bytes_total", "counter", |x| x.tx_bytes),
        ("meshd_device_rx_missed_total", "counter", |x| x.rx_missed),
        ("meshd_device_rx_errors_total", "counter", |x| x.rx_errors),
        ("meshd_device_tx_errors_total", "counter", |x| x.tx_errors),
        ("meshd_device_rx_nombuf_total", "counter", |x| x.rx_nombuf),
    ];
    for (metric, kind, f) in fields {
        writeln!(out, "# TYPE {metric} {kind}")?;
        for x in &d.devices {
            writeln!(
                out,
                "{metric}{{node=\"{node}\",port=\"{}\",device=\"{}\",driver=\"{}\"}} {}",
                x.port,
                x.name,
                x.driver,
                f(x)
            )?;
        }
    }
    writeln!(out, "# TYPE meshd_dpdk_mbufs_in_use gauge")?;
    writeln!(
        out,
        "meshd_dpdk_mbufs_in_use{{node=\"{node}\"}} {}",
        d.mbufs_in_use
    )?;
    writeln!(out, "# TYPE meshd_dpdk_mbufs gauge")?;
    writeln!(out, "meshd_dpdk_mbufs{{node=\"{node}\"}} {}", d.mbufs)
}

/// Serves `GET /metrics` until `shared.stop`.
pub fn serve(l: TcpListener, shared: Arc<Shared>, host: Option<Arc<HostShared>>) {
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
        let resp = if first.starts_with("GET /metrics") {
            let table = shared.table.load();
            let b = render(&crate::shared::report(&shared, host.as_deref(), &table));
            format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{b}", b.len())
        } else {
            "HTTP/1.0 404 Not Found\r\nContent-Length: 20\r\n\r\ntry GET /metrics ...".to_string()
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
            "services": [{"name": "web", "dropped": 9, "tasks": [{"name": "web.1", "packets": 4, "bytes": 400, "connections": 1, "active_connections": 2, "inactive_connections": 3, "dropped": 5, "health": "unhealthy"}]}],
            "host": {"dns_queries": 7}
        });
        let t = render(&serde_json::from_value(v).unwrap());
        assert!(t.contains("meshd_rx_total{node=\"n1\",worker=\"0\"} 5"));
        assert!(t.contains("# TYPE meshd_active_flows gauge"));
        assert!(
            t.contains("meshd_drops_total{node=\"n1\",worker=\"0\",reason=\"bad_ip_checksum\"} 1")
        );
        assert!(t.contains("meshd_generation{node=\"n1\"} 3"));
        assert!(t.contains(
            "meshd_task_connections_total{node=\"n1\",service=\"web\",task=\"web.1\"} 1"
        ));
        assert!(t.contains("# TYPE meshd_task_active_connections gauge"));
        assert!(t.contains(
            "meshd_task_active_connections{node=\"n1\",service=\"web\",task=\"web.1\"} 2"
        ));
        assert!(t.contains(
            "meshd_task_inactive_connections{node=\"n1\",service=\"web\",task=\"web.1\"} 3"
        ));
        assert!(t.contains(
            "meshd_task_health{node=\"n1\",service=\"web\",task=\"web.1\",health=\"unhealthy\"} 1"
        ));
        assert!(t.contains("# TYPE meshd_task_dropped_total counter"));
        assert!(
            t.contains("meshd_task_dropped_total{node=\"n1\",service=\"web\",task=\"web.1\"} 5")
        );
        assert!(t.contains("# TYPE meshd_service_dropped_total counter"));
        assert!(t.contains("meshd_service_dropped_total{node=\"n1\",service=\"web\"} 9"));
        assert!(t.contains("meshd_host_dns_queries_total{node=\"n1\"} 7"));
        assert!(!t.contains("meshd_device_"), "no DPDK rows on other ports");
    }

    #[test]
    fn renders_dpdk_devices() {
        let v = serde_json::json!({
            "node": "n1", "generation": 1, "workers": [], "burst_latency_ns": {}, "services": [],
            "dpdk": {"mbufs_in_use": 1024, "mbufs": 8191, "devices": [
                {"port": "uplink", "name": "net_memif0", "driver": "net_memif", "link_up": true,
                 "rx_missed": 3, "rx_nombuf": 2}]}
        });
        let t = render(&serde_json::from_value(v).unwrap());
        let labels = "node=\"n1\",port=\"uplink\",device=\"net_memif0\",driver=\"net_memif\"";
        assert!(
            t.contains(&format!("meshd_device_link_up{{{labels}}} 1")),
            "{t}"
        );
        assert!(
            t.contains(&format!("meshd_device_rx_missed_total{{{labels}}} 3")),
            "{t}"
        );
        assert!(
            t.contains(&format!("meshd_device_rx_nombuf_total{{{labels}}} 2")),
            "{t}"
        );
        assert!(
            t.contains("meshd_dpdk_mbufs_in_use{node=\"n1\"} 1024"),
            "{t}"
        );
    }
}
