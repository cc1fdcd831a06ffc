//! What meshctl prints: aligned tables like `docker service ls`, Docker-style progress, the
//! Docker-shaped `service inspect` JSON and key/value listings. Pure functions returning text.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use ctl::apply::task_slot;
use ctl::model::{
    Affinity, Availability, ClientIpMode, EndpointMode, HealthCheck, HealthTest, Network, Node,
    Protocol, PsTask, PublishMode, PublishedPort, SchedulerKind, Service, Task, TaskState,
};
use serde::Serialize;

/// Columns padded to their widest cell, three spaces apart, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(line, "{cell:<w$}   ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A port as `docker service ls` shows it: `*:8080->80/tcp`; host-mode ports as
/// `host:8080->80/tcp`.
pub fn port(p: &PublishedPort) -> String {
    let scope = match p.mode {
        PublishMode::Ingress => "*",
        PublishMode::Host => "host",
    };
    format!("{scope}:{}->{}/{}", p.published, p.target, p.protocol)
}

fn endpoint_mode(m: EndpointMode) -> &'static str {
    match m {
        EndpointMode::Vip => "vip",
        EndpointMode::Dnsrr => "dnsrr",
    }
}

fn state_word(s: TaskState) -> &'static str {
    match s {
        TaskState::Running => "running",
        TaskState::Unhealthy => "unhealthy",
        TaskState::Draining => "draining",
        TaskState::Shutdown => "shutdown",
        TaskState::Failed => "failed",
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Tasks in slot order (`web.2` before `web.10`), as Docker lists them.
pub fn sorted_tasks<'a>(service: &str, tasks: &'a [Task]) -> Vec<&'a Task> {
    let mut v: Vec<&Task> = tasks.iter().collect();
    v.sort_by(|a, b| {
        let ka = (task_slot(service, &a.name).unwrap_or(u32::MAX), &a.name);
        let kb = (task_slot(service, &b.name).unwrap_or(u32::MAX), &b.name);
        ka.cmp(&kb)
    });
    v
}

/// `service ls`: NAME, MODE (endpoint mode), TASKS running/total, PORTS.
pub fn service_ls(services: &[Service]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let running = s
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::Running)
                .count();
            vec![
                s.name.clone(),
                endpoint_mode(s.endpoint_mode).to_string(),
                format!("{running}/{}", s.tasks.len()),
                s.ports.iter().map(port).collect::<Vec<_>>().join(", "),
            ]
        })
        .collect();
    table(&["NAME", "MODE", "TASKS", "PORTS"], &rows)
}

/// Go's `units.HumanDuration`, which `docker service ps` uses: "Less than a second",
/// "5 seconds", "About a minute", "3 hours", ...
pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    if secs < 1 {
        return "Less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let minutes = secs / 60;
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    // Go rounds the hours: int(d.Hours() + 0.5).
    let hours = (ms + 1_800_000) / 3_600_000;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", ms / 3_600_000 / 24 / 365)
}

/// `docker service ps`'s CURRENT STATE: `Running 5 minutes ago`. Without a status (a daemon
/// that does not track it), the desired state.
pub fn current_state(t: &PsTask) -> String {
    match &t.status {
        Some(st) => format!(
            "{} {} ago",
            capitalized(st.state.as_str()),
            human_duration(st.age_ms)
        ),
        None => capitalized(state_word(t.task.state)),
    }
}

/// `service ps`: NAME, NODE, DESIRED STATE, CURRENT STATE, ADDRESSES, WEIGHT, ERROR; one
/// service's tasks after another's. The error says why a task is not running (a failing health
/// check and its last outcome). `networks` gives the IPv6 twins of addresses on dual-stack
/// networks, listed after their IPv4 addresses.
pub fn service_ps(services: &[(String, Vec<PsTask>)], networks: &[Network]) -> String {
    let mut rows = Vec::new();
    for (service, tasks) in services {
        let mut sorted: Vec<&PsTask> = tasks.iter().collect();
        sorted.sort_by(|a, b| {
            let ka = (
                task_slot(service, &a.task.name).unwrap_or(u32::MAX),
                &a.task.name,
            );
            let kb = (
                task_slot(service, &b.task.name).unwrap_or(u32::MAX),
                &b.task.name,
            );
            ka.cmp(&kb)
        });
        for pt in sorted {
            let t = &pt.task;
            // Each IPv6 twin after its IPv4 address, in the same NETWORK:IP form.
            let addrs: Vec<String> = t
                .addresses
                .iter()
                .flat_map(|a| {
                    let v4 = format!("{}:{}", a.network, a.addr);
                    let v6 =
                        twin(networks, &a.network, a.addr).map(|t| format!("{}:{t}", a.network));
                    std::iter::once(v4).chain(v6)
                })
                .collect();
            let error = match &pt.status {
                Some(st) if !st.error.is_empty() => st.error.clone(),
                _ => String::new(),
            };
            rows.push(vec![
                t.name.clone(),
                t.node.clone(),
                capitalized(state_word(t.state)),
                current_state(pt),
                addrs.join(","),
                t.weight.to_string(),
                error,
            ]);
        }
    }
    table(
        &[
            "NAME",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ADDRESSES",
            "WEIGHT",
            "ERROR",
        ],
        &rows,
    )
}

/// The IPv6 twin of `addr` on network `network`, when that network is known and dual-stack.
fn twin(networks: &[Network], network: &str, addr: Ipv4Addr) -> Option<Ipv6Addr> {
    networks.iter().find(|n| n.name == network)?.addr6(addr)
}

/// `network ls`: NAME, VNI, SUBNET, GATEWAY, SCOPE (ingress or overlay), ENDPOINTS. A
/// dual-stack network's SUBNET and GATEWAY cells give the IPv6 prefix and the gateway's twin
/// after the IPv4 ones (as `node ls` gives a node's addresses).
pub fn network_ls(networks: &[Network]) -> String {
    let rows: Vec<Vec<String>> = networks
        .iter()
        .map(|n| {
            let eps: Vec<String> = n
                .endpoints
                .iter()
                .map(|(node, ip)| format!("{node}={ip}"))
                .collect();
            let (subnet, gateway) = match (n.subnet6, n.addr6(n.gateway)) {
                (Some(p), Some(g)) => (format!("{}, {p}", n.subnet), format!("{}, {g}", n.gateway)),
                _ => (n.subnet.to_string(), n.gateway.to_string()),
            };
            vec![
                n.name.clone(),
                n.vni.to_string(),
                subnet,
                gateway,
                if n.ingress { "ingress" } else { "overlay" }.to_string(),
                eps.join(","),
            ]
        })
        .collect();
    table(
        &["NAME", "VNI", "SUBNET", "GATEWAY", "KIND", "ENDPOINTS"],
        &rows,
    )
}

/// One subnet of `IPAM.Config` in `docker network inspect`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct IpamConfig {
    subnet: String,
    gateway: String,
}

/// What `network inspect` adds to meshd's JSON of a network, in Docker's words:
/// `EnableIPv6`, and `IPAM.Config` with one entry per family (the IPv6 gateway is the
/// gateway's twin). meshd's own fields stay as they are, so scripts reading them go on working.
pub fn docker_network_fields(n: &Network) -> serde_json::Map<String, serde_json::Value> {
    let mut config = vec![IpamConfig {
        subnet: n.subnet.to_string(),
        gateway: n.gateway.to_string(),
    }];
    if let (Some(p), Some(g)) = (n.subnet6, n.addr6(n.gateway)) {
        config.push(IpamConfig {
            subnet: p.to_string(),
            gateway: g.to_string(),
        });
    }
    let mut m = serde_json::Map::new();
    m.insert("EnableIPv6".into(), n.subnet6.is_some().into());
    m.insert("IPAM".into(), serde_json::json!({ "Config": config }));
    m
}

/// A node's underlay addresses: IPv4, then IPv6 when it has one.
fn node_addresses(n: &Node) -> String {
    match n.addr6 {
        Some(a6) => format!("{}, {a6}", n.addr),
        None => n.addr.to_string(),
    }
}

/// `node ls`: NAME, ADDRESS, VTEP, AVAILABILITY.
pub fn node_ls(nodes: &[Node]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                node_addresses(n),
                std::net::SocketAddr::new(n.vtep_addr(), n.vtep_port).to_string(),
                match n.availability {
                    Availability::Active => "Active",
                    Availability::Drain => "Drain",
                }
                .to_string(),
            ]
        })
        .collect();
    table(&["NAME", "ADDRESS", "VTEP", "AVAILABILITY"], &rows)
}

/// `node ls` in cluster mode, as `docker node ls`: STATUS from the node's lease, the revision
/// its meshd runs.
#[cfg(feature = "cluster")]
pub(super) fn node_ls_cluster(rows: &[super::cluster::NodeRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let n = &r.node;
            vec![
                n.name.clone(),
                node_addresses(n),
                std::net::SocketAddr::new(n.vtep_addr(), n.vtep_port).to_string(),
                match r.status {
                    "ready" => "Ready",
                    _ => "Down",
                }
                .to_string(),
                match n.availability {
                    Availability::Active => "Active",
                    Availability::Drain => "Drain",
                }
                .to_string(),
                r.revision.map_or_else(|| "-".into(), |v| v.to_string()),
                r.version.clone().unwrap_or_else(|| "-".into()),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ADDRESS",
            "VTEP",
            "STATUS",
            "AVAILABILITY",
            "REVISION",
            "VERSION",
            "ERROR",
        ],
        &rows,
    )
}

/// Docker's convergence display, every bar full: meshd answers once every worker has the change.
pub fn progress(svc: &Service) -> String {
    let n = svc.tasks.len();
    let running = svc
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .count();
    let mut s = format!("overall progress: {running} out of {n} tasks\n");
    for (i, t) in sorted_tasks(&svc.name, &svc.tasks).iter().enumerate() {
        let _ = writeln!(
            s,
            "{}/{n}: {:<10}[{}>]",
            i + 1,
            state_word(t.state),
            "=".repeat(50)
        );
    }
    s
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerPort {
    protocol: Protocol,
    target_port: u16,
    published_port: u16,
    publish_mode: PublishMode,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerVip {
    #[serde(rename = "NetworkID")]
    network_id: String,
    addr: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointSpec {
    mode: EndpointMode,
    ports: Vec<DockerPort>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Endpoint {
    spec: EndpointSpec,
    ports: Vec<DockerPort>,
    #[serde(rename = "VirtualIPs")]
    virtual_ips: Vec<DockerVip>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Target {
    target: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TaskTemplate {
    #[serde(skip_serializing_if = "Option::is_none")]
    container_spec: Option<ContainerSpec>,
    networks: Vec<Target>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerSpec {
    healthcheck: DockerHealthcheck,
}

/// Docker's `Healthcheck`: the test as words, durations in nanoseconds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerHealthcheck {
    test: Vec<String>,
    interval: u64,
    timeout: u64,
    retries: u32,
}

fn docker_healthcheck(svc: &Service, h: &HealthCheck) -> DockerHealthcheck {
    let port = svc.health_port().unwrap_or(80).to_string();
    let test = match h.test {
        HealthTest::Tcp => vec!["TCP".to_string(), port],
        HealthTest::Http => {
            let mut v = vec!["HTTP".to_string(), port, "GET".into(), h.path.clone()];
            v.push(h.status.map_or_else(|| "2xx-3xx".into(), |s| s.to_string()));
            v
        }
    };
    DockerHealthcheck {
        test,
        interval: u64::from(h.interval_ms) * 1_000_000,
        timeout: u64::from(h.timeout_ms) * 1_000_000,
        retries: h.retries,
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerTimeouts {
    #[serde(rename = "TCPEstablished")]
    tcp_established: u32,
    #[serde(rename = "TCPTransitory")]
    tcp_transitory: u32,
    #[serde(rename = "UDP")]
    udp: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Spec {
    name: String,
    task_template: TaskTemplate,
    endpoint_spec: EndpointSpec,
    #[serde(rename = "ClientIP")]
    client_ip: ClientIpMode,
    scheduler: SchedulerKind,
    /// Source-IP affinity (meshd's own; absent when off).
    #[serde(skip_serializing_if = "Option::is_none")]
    affinity: Option<DockerAffinity>,
    idle_timeouts: DockerTimeouts,
    /// Passive health (meshd's own; absent when off).
    #[serde(skip_serializing_if = "Option::is_none")]
    outlier_detection: Option<DockerOutlier>,
}

/// Source-IP affinity: `{"Mode": "client-ip", "Timeout": "10m0s"}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerAffinity {
    mode: &'static str,
    timeout: String,
}

impl DockerAffinity {
    fn of(a: Affinity) -> Self {
        match a {
            Affinity::ClientIp { timeout_s } => DockerAffinity {
                mode: "client-ip",
                timeout: go_duration(timeout_s),
            },
        }
    }
}

/// Whole seconds as Go prints a `time.Duration`: `45s`, `10m0s`, `1h30m0s`.
fn go_duration(secs: u32) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// Passive health as Envoy names its outlier detection settings.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerOutlier {
    consecutive: u32,
    base_ejection_time: String,
    max_ejection_percent: u8,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerTask {
    name: String,
    node: String,
    state: TaskState,
    weight: u32,
    addresses: Vec<DockerVip>,
}

/// A service as `docker service inspect` shows one; fields in Docker's order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerService {
    #[serde(rename = "ID")]
    id: String,
    spec: Spec,
    endpoint: Endpoint,
    tasks: Vec<DockerTask>,
}

/// `ADDR/PREFIX` with the prefix of the network's subnet, as Docker writes VIPs; on a
/// dual-stack network, then the address's IPv6 twin with the IPv6 prefix's length.
fn with_prefix(networks: &[Network], network: &str, addr: Ipv4Addr) -> Vec<DockerVip> {
    let vip = |addr: String| DockerVip {
        network_id: network.to_string(),
        addr,
    };
    match networks.iter().find(|n| n.name == network) {
        Some(n) => std::iter::once(vip(format!("{addr}/{}", n.subnet.prefix)))
            .chain(
                n.subnet6
                    .map(|p| vip(format!("{}/{}", p.embed(addr), p.prefix))),
            )
            .collect(),
        None => vec![vip(addr.to_string())],
    }
}

/// `service inspect` in Docker's shape: `Spec`, `Endpoint.Spec.Ports`, `Endpoint.Ports`,
/// `Endpoint.VirtualIPs`, plus meshd's own `Tasks`. `networks` gives the subnets' prefixes; on a
/// dual-stack network a VIP's and a task's IPv6 twins follow their IPv4 entries.
pub fn docker_inspect(svc: &Service, networks: &[Network]) -> DockerService {
    let ports = || -> Vec<DockerPort> {
        svc.ports
            .iter()
            .map(|p| DockerPort {
                protocol: p.protocol,
                target_port: p.target,
                published_port: p.published,
                publish_mode: p.mode,
            })
            .collect()
    };
    DockerService {
        id: svc.name.clone(),
        spec: Spec {
            name: svc.name.clone(),
            task_template: TaskTemplate {
                container_spec: svc.health.as_ref().map(|h| ContainerSpec {
                    healthcheck: docker_healthcheck(svc, h),
                }),
                networks: svc
                    .networks
                    .iter()
                    .map(|n| Target {
                        target: n.network.clone(),
                    })
                    .collect(),
            },
            endpoint_spec: EndpointSpec {
                mode: svc.endpoint_mode,
                ports: ports(),
            },
            client_ip: svc.client_ip,
            scheduler: svc.scheduler,
            affinity: svc.affinity.map(DockerAffinity::of),
            outlier_detection: (!svc.outlier.is_off()).then(|| DockerOutlier {
                consecutive: svc.outlier.consecutive,
                base_ejection_time: format!("{}ms", svc.outlier.eject_ms),
                max_ejection_percent: svc.outlier.max_percent,
            }),
            idle_timeouts: DockerTimeouts {
                tcp_established: svc.timeouts.tcp_established,
                tcp_transitory: svc.timeouts.tcp_transitory,
                udp: svc.timeouts.udp,
            },
        },
        endpoint: Endpoint {
            spec: EndpointSpec {
                mode: svc.endpoint_mode,
                ports: ports(),
            },
            ports: ports(),
            virtual_ips: svc
                .networks
                .iter()
                .filter_map(|n| n.vip.map(|vip| with_prefix(networks, &n.network, vip)))
                .flatten()
                .collect(),
        },
        tasks: sorted_tasks(&svc.name, &svc.tasks)
            .into_iter()
            .map(|t| DockerTask {
                name: t.name.clone(),
                node: t.node.clone(),
                state: t.state,
                weight: t.weight,
                addresses: t
                    .addresses
                    .iter()
                    .flat_map(|a| with_prefix(networks, &a.network, a.addr))
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use ctl::model::*;
    use serde_json::json;

    use super::*;

    fn web() -> Service {
        let mut s = Service::new("web");
        s.networks.push(ServiceNetwork {
            network: "appnet".into(),
            vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
        });
        s.ports.push(PublishedPort {
            protocol: Protocol::Tcp,
            published: 8080,
            target: 80,
            mode: PublishMode::Ingress,
        });
        s.ports.push(PublishedPort {
            protocol: Protocol::Udp,
            published: 5353,
            target: 53,
            mode: PublishMode::Host,
        });
        for (name, node, last, state, weight) in [
            ("web.10", "n2", 20, TaskState::Draining, 0),
            ("web.1", "n1", 11, TaskState::Running, 1),
            ("web.2", "n2", 12, TaskState::Running, 1),
        ] {
            s.tasks.push(Task {
                name: name.into(),
                node: node.into(),
                addresses: vec![
                    TaskAddress {
                        network: "ingress".into(),
                        addr: Ipv4Addr::new(10, 0, 0, last),
                    },
                    TaskAddress {
                        network: "appnet".into(),
                        addr: Ipv4Addr::new(10, 0, 1, last),
                    },
                ],
                state,
                weight,
                vlan: None,
            });
        }
        s
    }

    fn appnet() -> Network {
        Network {
            subnet6: None,
            name: "appnet".into(),
            vni: 4097,
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            ingress: false,
            endpoints: BTreeMap::from([("n1".to_string(), Ipv4Addr::new(10, 0, 1, 250))]),
            mtu: None,
            encryption: None,
        }
    }

    #[test]
    fn tables_align_without_trailing_blanks() {
        let t = table(
            &["A", "LONGER"],
            &[vec!["xxxx".into(), "1".into()], vec!["y".into(), "".into()]],
        );
        assert_eq!(t, "A      LONGER\nxxxx   1\ny\n");
        assert_eq!(table(&["NAME", "MODE"], &[]), "NAME   MODE\n");
    }

    #[test]
    fn service_ls_looks_like_docker() {
        let mut api = Service::new("api");
        api.endpoint_mode = EndpointMode::Dnsrr;
        assert_eq!(
            service_ls(&[web(), api]),
            "NAME   MODE    TASKS   PORTS\n\
             web    vip     2/3     *:8080->80/tcp, host:5353->53/udp\n\
             api    dnsrr   0/0\n"
        );
    }

    fn ps(tasks: Vec<Task>) -> Vec<PsTask> {
        tasks
            .into_iter()
            .map(|task| PsTask { task, status: None })
            .collect()
    }

    #[test]
    fn service_ps_lists_tasks_in_slot_order() {
        assert_eq!(
            service_ps(&[("web".into(), ps(web().tasks))], &[appnet()]),
            "NAME     NODE   DESIRED STATE   CURRENT STATE   ADDRESSES                            WEIGHT   ERROR\n\
             web.1    n1     Running         Running         ingress:10.0.0.11,appnet:10.0.1.11   1\n\
             web.2    n2     Running         Running         ingress:10.0.0.12,appnet:10.0.1.12   1\n\
             web.10   n2     Draining        Draining        ingress:10.0.0.20,appnet:10.0.1.20   0\n"
        );
    }

    #[test]
    fn service_ps_shows_the_current_state_and_how_long_ago_like_docker() {
        let mut rows = ps(web().tasks);
        rows.retain(|r| r.task.name != "web.10");
        rows.sort_by(|a, b| a.task.name.cmp(&b.task.name));
        rows[0].status = Some(TaskStatus {
            state: CurrentState::Running,
            age_ms: 5 * 60_000 + 2000,
            since_unix_ms: 0,
            health: Some(Health::Healthy),
            failing_streak: 0,
            error: String::new(),
        });
        rows[1].status = Some(TaskStatus {
            state: CurrentState::Failed,
            age_ms: 3400,
            since_unix_ms: 0,
            health: Some(Health::Unhealthy),
            failing_streak: 3,
            error: "unhealthy: connection refused (3 checks in a row)".into(),
        });
        assert_eq!(
            service_ps(&[("web".into(), rows)], &[appnet()]),
            "NAME    NODE   DESIRED STATE   CURRENT STATE           ADDRESSES                            WEIGHT   ERROR\n\
             web.1   n1     Running         Running 5 minutes ago   ingress:10.0.0.11,appnet:10.0.1.11   1\n\
             web.2   n2     Running         Failed 3 seconds ago    ingress:10.0.0.12,appnet:10.0.1.12   1        unhealthy: connection refused (3 checks in a row)\n"
        );
    }

    #[test]
    fn durations_read_like_dockers() {
        for (ms, text) in [
            (0, "Less than a second"),
            (999, "Less than a second"),
            (1000, "1 second"),
            (59_999, "59 seconds"),
            (60_000, "About a minute"),
            (119_999, "About a minute"),
            (120_000, "2 minutes"),
            (3_599_999, "59 minutes"),
            (3_600_000, "About an hour"),
            (5_400_000, "2 hours"),
            (47 * 3_600_000, "47 hours"),
            (48 * 3_600_000, "2 days"),
            (14 * 24 * 3_600_000, "2 weeks"),
            (60 * 24 * 3_600_000, "2 months"),
            (800 * 24 * 3_600_000, "2 years"),
        ] {
            assert_eq!(human_duration(ms), text, "{ms} ms");
        }
    }

    /// appnet, dual-stack: fd00:1::/64 beside 10.0.1.0/24.
    fn appnet6() -> Network {
        Network {
            subnet6: Some("fd00:1::/64".parse().unwrap()),
            ..appnet()
        }
    }

    #[test]
    fn dual_stack_networks_show_their_prefix_and_gateway_twin() {
        let ingress = Network {
            name: "ingress".into(),
            vni: 4096,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            ingress: true,
            endpoints: BTreeMap::new(),
            ..appnet()
        };
        assert_eq!(
            network_ls(&[ingress.clone(), appnet6()]),
            "NAME      VNI    SUBNET                     GATEWAY                     KIND      ENDPOINTS\n\
             ingress   4096   10.0.0.0/24                10.0.0.1                    ingress\n\
             appnet    4097   10.0.1.0/24, fd00:1::/64   10.0.1.1, fd00:1::a00:101   overlay   n1=10.0.1.250\n"
        );
        assert_eq!(
            serde_json::Value::Object(docker_network_fields(&appnet6())),
            json!({
                "EnableIPv6": true,
                "IPAM": {"Config": [
                    {"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"},
                    {"Subnet": "fd00:1::/64", "Gateway": "fd00:1::a00:101"},
                ]},
            })
        );
        assert_eq!(
            serde_json::Value::Object(docker_network_fields(&ingress)),
            json!({
                "EnableIPv6": false,
                "IPAM": {"Config": [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]},
            })
        );
    }

    #[test]
    fn service_ps_and_inspect_show_the_ipv6_twins_on_dual_stack_networks() {
        let mut rows = ps(web().tasks);
        rows.retain(|r| r.task.name == "web.1");
        assert_eq!(
            service_ps(&[("web".into(), rows)], &[appnet6()]),
            "NAME    NODE   DESIRED STATE   CURRENT STATE   ADDRESSES                                                   WEIGHT   ERROR\n\
             web.1   n1     Running         Running         ingress:10.0.0.11,appnet:10.0.1.11,appnet:fd00:1::a00:10b   1\n"
        );
        let v = serde_json::to_value(docker_inspect(&web(), &[appnet6()])).unwrap();
        assert_eq!(
            v["Endpoint"]["VirtualIPs"],
            json!([
                {"NetworkID": "appnet", "Addr": "10.0.1.2/24"},
                {"NetworkID": "appnet", "Addr": "fd00:1::a00:102/64"},
            ])
        );
        assert_eq!(
            v["Tasks"][0]["Addresses"],
            json!([
                {"NetworkID": "ingress", "Addr": "10.0.0.11"},
                {"NetworkID": "appnet", "Addr": "10.0.1.11/24"},
                {"NetworkID": "appnet", "Addr": "fd00:1::a00:10b/64"},
            ])
        );
    }

    #[test]
    fn network_and_node_tables() {
        assert_eq!(
            network_ls(&[appnet()]),
            "NAME     VNI    SUBNET        GATEWAY    KIND      ENDPOINTS\n\
             appnet   4097   10.0.1.0/24   10.0.1.1   overlay   n1=10.0.1.250\n"
        );
        let n = Node {
            name: "n1".into(),
            addr: Ipv4Addr::new(192, 168, 1, 11),
            vtep: Some(Ipv4Addr::new(172, 16, 0, 11).into()),
            addr6: None,
            vtep_port: 4789,
            availability: Availability::Drain,
        };
        assert_eq!(
            node_ls(&[n]),
            "NAME   ADDRESS        VTEP               AVAILABILITY\n\
             n1     192.168.1.11   172.16.0.11:4789   Drain\n"
        );
    }

    #[test]
    fn progress_looks_like_docker() {
        let bar = "[==================================================>]";
        assert_eq!(
            progress(&web()),
            format!(
                "overall progress: 2 out of 3 tasks\n1/3: running   {bar}\n2/3: running   {bar}\n3/3: draining  {bar}\n"
            )
        );
        assert_eq!(
            progress(&Service::new("x")),
            "overall progress: 0 out of 0 tasks\n"
        );
    }

    #[test]
    fn inspect_has_dockers_endpoint() {
        let text = serde_json::to_string(&docker_inspect(&web(), &[appnet()])).unwrap();
        assert!(
            text.contains(r#""Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"},"#),
            "{text}"
        );
        assert!(
            text.contains(r#""VirtualIPs":[{"NetworkID":"appnet","Addr":"10.0.1.2/24"}]"#),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["Endpoint"]["Spec"]["Ports"], v["Endpoint"]["Ports"]);
        assert_eq!(v["Endpoint"]["Spec"]["Mode"], "vip");
        assert_eq!(v["Spec"]["Name"], "web");
        assert_eq!(v["Spec"]["TaskTemplate"]["Networks"][0]["Target"], "appnet");
        assert_eq!(v["Tasks"][0]["Name"], "web.1");
        // The ingress network is unknown here: addresses keep no prefix.
        assert_eq!(
            v["Tasks"][0]["Addresses"][0],
            json!({"NetworkID": "ingress", "Addr": "10.0.0.11"})
        );
        assert_eq!(v["Tasks"][0]["Addresses"][1]["Addr"], "10.0.1.11/24");
        assert!(v["Spec"]["TaskTemplate"].get("ContainerSpec").is_none());

        assert!(v["Spec"].get("Affinity").is_none());
        let mut sticky = web();
        sticky.scheduler = SchedulerKind::Wrr;
        sticky.affinity = Some(Affinity::ClientIp { timeout_s: 5400 });
        let v = serde_json::to_value(docker_inspect(&sticky, &[appnet()])).unwrap();
        assert_eq!(v["Spec"]["Scheduler"], "wrr");
        assert_eq!(
            v["Spec"]["Affinity"],
            json!({"Mode": "client-ip", "Timeout": "1h30m0s"})
        );
        assert_eq!(go_duration(45), "45s");
        assert_eq!(go_duration(600), "10m0s");

        let mut checked = web();
        checked.health = Some(HealthCheck {
            test: HealthTest::Http,
            path: "/healthz".into(),
            status: Some(200),
            interval_ms: 2000,
            timeout_ms: 1000,
            retries: 3,
            ..HealthCheck::default()
        });
        let v = serde_json::to_value(docker_inspect(&checked, &[appnet()])).unwrap();
        assert_eq!(
            v["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"],
            json!({"Test": ["HTTP", "80", "GET", "/healthz", "200"], "Interval": 2_000_000_000u64, "Timeout": 1_000_000_000u64, "Retries": 3})
        );
    }
}
