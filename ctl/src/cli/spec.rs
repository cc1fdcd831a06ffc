//! Parsing of the compact specs meshctl takes on its command line, Docker-style:
//! `--publish published=8080,target=80,protocol=udp`, `--task name=web.1,node=n1,addr=appnet:10.0.1.5`,
//! `--network appnet:10.0.1.2`, `--endpoint n1=10.0.0.2`, `service scale web=2`.
//!
//! Every error names the flag, the offending part and what was expected.

use std::net::Ipv4Addr;

use ctl::model::{
    HealthCheck, HealthTest, Ipv4Net, Ipv6Net, Protocol, PublishMode, PublishedPort,
    ServiceNetwork, Task, TaskAddress, TaskState,
};
use ctl::proto::{PortSpec, TaskUpdate};

/// A spec that did not parse; the message is ready for `Error: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

macro_rules! fail {
    ($($arg:tt)*) => { return Err(SpecError(format!($($arg)*))) };
}

const PUBLISH_KEYS: &[&str] = &["published", "target", "protocol", "mode"];
const TASK_KEYS: &[&str] = &["name", "node", "addr", "weight", "state", "vlan"];
const TASK_UPDATE_KEYS: &[&str] = &["name", "weight", "state"];
const TASK_STATES: &str = "running, unhealthy, draining, shutdown, failed";

/// Splits `k=v,k=v` into pairs, refusing empty parts and keys outside `keys`.
fn pairs<'a>(
    flag: &str,
    spec: &'a str,
    keys: &[&str],
    example: &str,
) -> Result<Vec<(&'a str, &'a str)>, SpecError> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            fail!("{flag}: empty item in {spec:?} (expected KEY=VALUE items separated by commas, as in {example})");
        }
        let Some((k, v)) = part.split_once('=') else {
            fail!("{flag}: {part:?} is not KEY=VALUE (as in {example})");
        };
        let (k, v) = (k.trim(), v.trim());
        if !keys.contains(&k) {
            fail!("{flag}: unknown key '{k}' (expected {})", keys.join(", "));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// The single value of `key`, refusing repeats.
fn single<'a>(
    flag: &str,
    pairs: &[(&str, &'a str)],
    key: &str,
) -> Result<Option<&'a str>, SpecError> {
    let mut found = None;
    for &(k, v) in pairs {
        if k == key {
            if found.is_some() {
                fail!("{flag}: {key}= is given twice");
            }
            found = Some(v);
        }
    }
    Ok(found)
}

fn port(flag: &str, key: &str, v: &str) -> Result<u16, SpecError> {
    match v.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => fail!("{flag}: {key}={v} is not a port number (1-65535)"),
    }
}

pub(crate) fn protocol(flag: &str, v: &str) -> Result<Protocol, SpecError> {
    match v {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => fail!("{flag}: unknown protocol '{v}' (expected tcp or udp)"),
    }
}

fn publish_mode(flag: &str, v: &str) -> Result<PublishMode, SpecError> {
    match v {
        "ingress" => Ok(PublishMode::Ingress),
        "host" => Ok(PublishMode::Host),
        _ => fail!("{flag}: unknown mode '{v}' (expected ingress or host)"),
    }
}

fn task_state(flag: &str, v: &str) -> Result<TaskState, SpecError> {
    Ok(match v {
        "running" => TaskState::Running,
        "unhealthy" => TaskState::Unhealthy,
        "draining" => TaskState::Draining,
        "shutdown" => TaskState::Shutdown,
        "failed" => TaskState::Failed,
        _ => fail!("{flag}: unknown state '{v}' (expected {TASK_STATES})"),
    })
}

fn weight(flag: &str, v: &str) -> Result<u32, SpecError> {
    v.parse().map_err(|_| {
        SpecError(format!(
            "{flag}: weight={v} is not a whole number (0 takes the task out of rotation)"
        ))
    })
}

fn ipv4(flag: &str, what: &str, v: &str) -> Result<Ipv4Addr, SpecError> {
    v.parse()
        .map_err(|_| SpecError(format!("{flag}: {what} {v:?} is not an IPv4 address")))
}

/// `PUBLISHED:TARGET[/PROTOCOL]`, Docker's short form.
fn short_port(flag: &str, spec: &str) -> Result<(u16, Option<u16>, Protocol), SpecError> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, protocol(flag, proto)?),
        None => (spec, Protocol::Tcp),
    };
    match ports.split_once(':') {
        Some((p, t)) => Ok((
            port(flag, "published", p)?,
            Some(port(flag, "target", t)?),
            proto,
        )),
        None => Ok((port(flag, "published", ports)?, None, proto)),
    }
}

/// `--publish` / `--publish-add`: `published=8080,target=80[,protocol=tcp|udp][,mode=ingress|host]`
/// or Docker's short `8080:80[/udp]`.
pub fn publish(flag: &str, spec: &str) -> Result<PublishedPort, SpecError> {
    let example = "published=8080,target=80";
    if !spec.contains('=') {
        let (published, target, protocol) = short_port(flag, spec)?;
        let Some(target) = target else {
            fail!("{flag}: {spec:?} names one port; give the published and the target port, as in 8080:80 or {example}");
        };
        return Ok(PublishedPort {
            protocol,
            published,
            target,
            mode: PublishMode::Ingress,
        });
    }
    let kv = pairs(flag, spec, PUBLISH_KEYS, example)?;
    let Some(published) = single(flag, &kv, "published")? else {
        fail!("{flag}: missing published= (the port clients connect to on every node), as in {example}");
    };
    let Some(target) = single(flag, &kv, "target")? else {
        fail!("{flag}: missing target= (the port the tasks listen on), as in {example}");
    };
    Ok(PublishedPort {
        published: port(flag, "published", published)?,
        target: port(flag, "target", target)?,
        protocol: single(flag, &kv, "protocol")?
            .map(|v| protocol(flag, v))
            .transpose()?
            .unwrap_or_default(),
        mode: single(flag, &kv, "mode")?
            .map(|v| publish_mode(flag, v))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// `--publish-rm`: `8080`, `8080/udp`, `8080:80[/udp]` or `published=8080[,protocol=udp]` (a
/// target or mode, as Docker allows, is ignored: the published port and protocol name it).
pub fn publish_rm(flag: &str, spec: &str) -> Result<PortSpec, SpecError> {
    if !spec.contains('=') {
        let (published, _, protocol) = short_port(flag, spec)?;
        return Ok(PortSpec {
            published,
            protocol,
        });
    }
    let kv = pairs(flag, spec, PUBLISH_KEYS, "published=8080,protocol=udp")?;
    let Some(published) = single(flag, &kv, "published")? else {
        fail!("{flag}: missing published= (the published port to remove), as in 8080 or published=8080,protocol=udp");
    };
    Ok(PortSpec {
        published: port(flag, "published", published)?,
        protocol: single(flag, &kv, "protocol")?
            .map(|v| protocol(flag, v))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// `--task` / `--task-add`: `name=web.1,node=n1,addr=NETWORK:IP[,addr=...][,weight=1][,state=running][,vlan=101]`.
pub fn task(flag: &str, spec: &str) -> Result<Task, SpecError> {
    let example = "name=web.1,node=n1,addr=ingress:10.0.0.11,addr=appnet:10.0.1.11";
    let kv = pairs(flag, spec, TASK_KEYS, example)?;
    let Some(name) = single(flag, &kv, "name")? else {
        fail!("{flag}: missing name= (SERVICE.SLOT, like name=web.1), as in {example}");
    };
    let Some(node) = single(flag, &kv, "node")? else {
        fail!("{flag}: missing node= (the node the task runs on), as in {example}");
    };
    let mut addresses = Vec::new();
    for &(k, v) in &kv {
        if k != "addr" {
            continue;
        }
        let Some((network, ip)) = v.split_once(':') else {
            fail!("{flag}: addr={v} is not NETWORK:IP (as in addr=appnet:10.0.1.11)");
        };
        if network.is_empty() {
            fail!("{flag}: addr={v} has no network name (as in addr=appnet:10.0.1.11)");
        }
        addresses.push(TaskAddress {
            network: network.to_string(),
            addr: ipv4(flag, "address", ip)?,
        });
    }
    if addresses.is_empty() {
        fail!(
            "{flag}: give the task's address on each network with addr=NETWORK:IP, as in {example}"
        );
    }
    Ok(Task {
        name: name.to_string(),
        node: node.to_string(),
        addresses,
        state: single(flag, &kv, "state")?
            .map(|v| task_state(flag, v))
            .transpose()?
            .unwrap_or_default(),
        weight: single(flag, &kv, "weight")?
            .map(|v| weight(flag, v))
            .transpose()?
            .unwrap_or(1),
        vlan: single(flag, &kv, "vlan")?
            .map(|v| vlan(flag, v))
            .transpose()?,
    })
}

/// `vlan=N`: 1 to 4094 (0 and 4095 are reserved by 802.1Q).
fn vlan(flag: &str, v: &str) -> Result<u16, SpecError> {
    match v.parse::<u16>() {
        Ok(n) if (1..=4094).contains(&n) => Ok(n),
        _ => fail!("{flag}: vlan={v} is not a VLAN id: give 1 to 4094, the VLAN of the task's port on the node's tasks bridge"),
    }
}

/// `--task-update`: `name=web.1[,weight=0][,state=draining]`.
pub fn task_update(flag: &str, spec: &str) -> Result<TaskUpdate, SpecError> {
    let example = "name=web.1,weight=0";
    let kv = pairs(flag, spec, TASK_UPDATE_KEYS, example)?;
    let Some(name) = single(flag, &kv, "name")? else {
        fail!("{flag}: missing name= (the task to change), as in {example}");
    };
    let u = TaskUpdate {
        name: name.to_string(),
        weight: single(flag, &kv, "weight")?
            .map(|v| weight(flag, v))
            .transpose()?,
        state: single(flag, &kv, "state")?
            .map(|v| task_state(flag, v))
            .transpose()?,
    };
    if u.weight.is_none() && u.state.is_none() {
        fail!("{flag}: nothing to change for {name}: give weight= and/or state= (as in {example})");
    }
    Ok(u)
}

/// `--network` / `--network-add`: `NETWORK` or `NETWORK:VIP`.
pub fn service_network(flag: &str, spec: &str) -> Result<ServiceNetwork, SpecError> {
    let (network, vip) = match spec.split_once(':') {
        Some((n, v)) => (n, Some(ipv4(flag, "VIP", v)?)),
        None => (spec, None),
    };
    if network.is_empty() {
        fail!("{flag}: {spec:?} has no network name (expected NETWORK or NETWORK:VIP, as in appnet:10.0.1.2)");
    }
    Ok(ServiceNetwork {
        network: network.to_string(),
        vip,
    })
}

/// `--endpoint`: `NAME=IP` (a node's endpoint address on a network).
pub fn name_ip(flag: &str, spec: &str, example: &str) -> Result<(String, Ipv4Addr), SpecError> {
    let Some((name, ip)) = spec.split_once('=') else {
        fail!("{flag}: {spec:?} is not NAME=IP (as in {example})");
    };
    if name.is_empty() {
        fail!("{flag}: {spec:?} has no name before '=' (as in {example})");
    }
    Ok((name.to_string(), ipv4(flag, "address", ip)?))
}

/// `network create --subnet CIDR [--ipv6 --subnet CIDR6]`, in Docker's words: `--subnet` once
/// per family, the IPv4 one required (every overlay address is IPv4 first; its IPv6 twin comes
/// from the prefix), an IPv6 one only with `--ipv6` and `--ipv6` only with one (meshd assigns
/// no IPv6 prefix itself). A prefix longer than /96 is refused by [`Ipv6Net`]'s parser; one
/// with host bits set (`fd00:5::1/64`) in Docker's words ([`Ipv6Net::without_host_bits`]).
pub fn subnets(subnets: &[String], ipv6: bool) -> Result<(Ipv4Net, Option<Ipv6Net>), SpecError> {
    const EXAMPLE: &str = "--subnet 10.0.5.0/24 --ipv6 --subnet fd00:5::/64";
    let mut v4: Option<Ipv4Net> = None;
    let mut v6: Option<Ipv6Net> = None;
    for s in subnets {
        let s = s.trim();
        // The family by its spelling, so each parser's message speaks of the right one.
        if s.contains(':') {
            let n: Ipv6Net = s
                .parse()
                .and_then(Ipv6Net::without_host_bits)
                .map_err(|e| SpecError(format!("--subnet: {e}")))?;
            if let Some(first) = v6 {
                fail!("--subnet: {first} and {n} are both IPv6; a network has one subnet per family (as in {EXAMPLE})");
            }
            v6 = Some(n);
        } else {
            let n: Ipv4Net = s
                .parse()
                .and_then(Ipv4Net::without_host_bits)
                .map_err(|e| SpecError(format!("--subnet: {e}")))?;
            if let Some(first) = v4 {
                fail!("--subnet: {first} and {n} are both IPv4; a network has one subnet per family (as in {EXAMPLE})");
            }
            v4 = Some(n);
        }
    }
    let Some(v4) = v4 else {
        fail!("--subnet: a network needs an IPv4 subnet (tasks, VIPs and endpoints are IPv4 addresses; on a dual-stack network each has an IPv6 twin), as in {EXAMPLE}");
    };
    match (v6, ipv6) {
        (Some(n), false) => fail!(
            "--subnet {n} is IPv6: add --ipv6 to make the network dual-stack, as in {EXAMPLE}"
        ),
        (None, true) => fail!(
            "--ipv6 needs an IPv6 subnet beside the IPv4 one (meshd does not pick one): give it \
             with a second --subnet, as in {EXAMPLE}"
        ),
        _ => Ok((v4, v6)),
    }
}

/// `service scale`: `SERVICE=REPLICAS`.
pub fn scale(spec: &str) -> Result<(String, u32), SpecError> {
    let Some((name, n)) = spec.split_once('=') else {
        fail!("service scale: {spec:?} is not SERVICE=REPLICAS (as in web=2)");
    };
    if name.is_empty() {
        fail!("service scale: {spec:?} has no service name (as in web=2)");
    }
    let n = n.parse().map_err(|_| {
        SpecError(format!(
            "service scale: {n:?} is not a number of replicas (as in {name}=2)"
        ))
    })?;
    Ok((name.to_string(), n))
}

/// What `--health` says: the test, its port and, for HTTP, its path and expected status. The
/// timing comes from `--health-interval`, `--health-timeout` and `--health-retries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub test: HealthTest,
    pub port: Option<u16>,
    pub path: String,
    pub status: Option<u16>,
}

impl HealthSpec {
    /// Sets the test part of `h`, keeping its timing.
    pub fn apply_to(&self, h: &mut HealthCheck) {
        h.test = self.test;
        h.port = self.port;
        h.path = self.path.clone();
        h.status = self.status;
    }
}

/// `--outlier`: `none`, or `consecutive=N,eject=DURATION,max=P%` (any of them; the others
/// keep their defaults: 3, 10s, 50%).
pub fn outlier(flag: &str, spec: &str) -> Result<ctl::model::Outlier, SpecError> {
    let spec = spec.trim();
    if spec == "none" || spec == "off" {
        return Ok(ctl::model::Outlier::off());
    }
    let mut o = ctl::model::Outlier::default();
    for part in spec.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            fail!("{flag}: {part:?} is not KEY=VALUE (as in consecutive=3,eject=10s,max=50%, or none)")
        };
        match k.trim() {
            "consecutive" => {
                o.consecutive = match v.trim().parse::<u32>() {
                    Ok(n) if (1..=1000).contains(&n) => n,
                    _ => fail!("{flag}: consecutive={v} is not a count from 1 to 1000 (--outlier none turns it off)"),
                }
            }
            "eject" => {
                o.eject_ms = duration_ms(flag, v.trim())?;
                if o.eject_ms < 100 {
                    fail!("{flag}: eject={v} is shorter than 100ms");
                }
            }
            "max" => {
                o.max_percent = match v.trim().trim_end_matches('%').parse::<u8>() {
                    Ok(p) if (1..=100).contains(&p) => p,
                    _ => fail!("{flag}: max={v} is not a share from 1% to 100%"),
                }
            }
            other => fail!("{flag}: unknown setting {other:?} (consecutive, eject, max; or none)"),
        }
    }
    Ok(o)
}

/// `--health`: `tcp`, `tcp:PORT`, `http:/PATH`, `http:/PATH=STATUS` or `http:PORT/PATH[=STATUS]`.
/// Without a port the check uses the service's first published TCP target port (80 if none).
pub fn health(flag: &str, spec: &str) -> Result<HealthSpec, SpecError> {
    let example = "tcp, tcp:80, http:/healthz or http:8080/healthz=200";
    let (kind, rest) = match spec.split_once(':') {
        Some((k, r)) => (k, Some(r)),
        None => (spec, None),
    };
    match (kind, rest) {
        ("tcp", None) => Ok(HealthSpec {
            test: HealthTest::Tcp,
            port: None,
            path: "/".into(),
            status: None,
        }),
        ("tcp", Some(p)) => Ok(HealthSpec {
            test: HealthTest::Tcp,
            port: Some(port(flag, "port", p)?),
            path: "/".into(),
            status: None,
        }),
        ("http", Some(r)) => {
            let Some(slash) = r.find('/') else {
                fail!("{flag}: {spec:?} has no path: give http:/PATH (as in {example})");
            };
            let port_part = &r[..slash];
            let hport = if port_part.is_empty() {
                None
            } else {
                Some(port(flag, "port", port_part)?)
            };
            // `=NNN` at the end is the status; any other `=` belongs to the path (a query).
            let status_part = r[slash..]
                .rsplit_once('=')
                .filter(|(_, st)| st.len() == 3 && st.bytes().all(|b| b.is_ascii_digit()));
            let (path, status) = match status_part {
                Some((p, st)) => {
                    let Ok(code) = st.parse::<u16>() else {
                        fail!("{flag}: ={st} is not an HTTP status (as in http:/healthz=200)");
                    };
                    if !(100..=599).contains(&code) {
                        fail!("{flag}: ={st} is not an HTTP status (100 to 599)");
                    }
                    (p, Some(code))
                }
                None => (&r[slash..], None),
            };
            if !path.bytes().all(|b| b.is_ascii_graphic()) {
                fail!("{flag}: the path {path:?} has spaces or control characters");
            }
            Ok(HealthSpec {
                test: HealthTest::Http,
                port: hport,
                path: path.to_string(),
                status,
            })
        }
        ("http", None) => fail!("{flag}: {spec:?} has no path: give http:/PATH (as in {example})"),
        _ => fail!("{flag}: unknown check {spec:?} (expected {example})"),
    }
}

/// A duration as Docker writes them (`30s`, `1m30s`, `500ms`, `1.5s`, `2h`), in milliseconds.
// Casts: checked just above to lie within 1..=u32::MAX.
#[allow(clippy::cast_possible_truncation)]
pub fn duration_ms(flag: &str, spec: &str) -> Result<u32, SpecError> {
    let bad = || {
        SpecError(format!(
            "{flag}: {spec:?} is not a duration (as in 500ms, 2s, 1m30s)"
        ))
    };
    let mut rest = spec.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        rest = &rest[u..];
        total += value * scale;
    }
    if !total.is_finite() || total < 1.0 || total > f64::from(u32::MAX) {
        fail!("{flag}: {spec:?} is out of range (1ms to about 49 days)");
    }
    Ok(total.round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_specs() {
        let h = health("--health", "tcp").unwrap();
        assert_eq!((h.test, h.port), (HealthTest::Tcp, None));
        assert_eq!(health("--health", "tcp:8080").unwrap().port, Some(8080));
        let h = health("--health", "http:/healthz=200").unwrap();
        assert_eq!(
            h,
            HealthSpec {
                test: HealthTest::Http,
                port: None,
                path: "/healthz".into(),
                status: Some(200)
            }
        );
        let h = health("--health", "http:8080/a/b?x=1").unwrap();
        assert_eq!(
            (h.port, h.path.as_str(), h.status),
            (Some(8080), "/a/b?x=1", None)
        );
        assert!(e(health("--health", "http")).contains("no path"));
        assert!(e(health("--health", "http:80")).contains("no path"));
        assert!(e(health("--health", "http:/x=999")).contains("not an HTTP status"));
        assert!(e(health("--health", "grpc")).contains("unknown check"));
        assert!(e(health("--health", "tcp:0")).contains("not a port"));
    }

    #[test]
    fn outlier_specs() {
        use ctl::model::Outlier;
        assert_eq!(outlier("--outlier", "none").unwrap(), Outlier::off());
        let o = outlier("--outlier", "consecutive=5,eject=30s,max=20%").unwrap();
        assert_eq!((o.consecutive, o.eject_ms, o.max_percent), (5, 30_000, 20));
        let o = outlier("--outlier", "eject=1m").unwrap();
        assert_eq!((o.consecutive, o.eject_ms, o.max_percent), (3, 60_000, 50));
        assert!(e(outlier("--outlier", "consecutive=0")).contains("--outlier none"));
        assert!(e(outlier("--outlier", "max=0%")).contains("from 1% to 100%"));
        assert!(e(outlier("--outlier", "eject=10ms")).contains("shorter than 100ms"));
        assert!(e(outlier("--outlier", "interval=1s")).contains("unknown setting"));
        assert!(e(outlier("--outlier", "3")).contains("KEY=VALUE"));
    }

    #[test]
    fn durations_like_docker() {
        assert_eq!(duration_ms("--health-interval", "2s").unwrap(), 2000);
        assert_eq!(duration_ms("--health-interval", "500ms").unwrap(), 500);
        assert_eq!(duration_ms("--health-interval", "1m30s").unwrap(), 90_000);
        assert_eq!(duration_ms("--health-interval", "1.5s").unwrap(), 1500);
        assert_eq!(duration_ms("--health-interval", "1h").unwrap(), 3_600_000);
        for bad in ["", "2", "s", "2x", "-1s", "0s", "2000h"] {
            assert!(duration_ms("--health-interval", bad).is_err(), "{bad}");
        }
    }

    fn e<T: std::fmt::Debug>(r: Result<T, SpecError>) -> String {
        r.unwrap_err().0
    }

    #[test]
    fn subnets_one_per_family_and_ipv6_only_with_the_flag_as_in_docker() {
        let s = |v: &[&str], ipv6: bool| {
            subnets(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), ipv6)
        };
        let v4: Ipv4Net = "10.0.5.0/24".parse().unwrap();
        let v6: Ipv6Net = "fd00:5::/64".parse().unwrap();
        assert_eq!(s(&["10.0.5.0/24"], false).unwrap(), (v4, None));
        assert_eq!(
            s(&["10.0.5.0/24", "fd00:5::/64"], true).unwrap(),
            (v4, Some(v6))
        );
        // Either order, as Docker takes them.
        assert_eq!(
            s(&["fd00:5::/64", "10.0.5.0/24"], true).unwrap(),
            (v4, Some(v6))
        );
        assert_eq!(
            s(&["10.0.5.0/24", "fd00:5::/96"], true).unwrap().1,
            Some("fd00:5::/96".parse().unwrap())
        );

        let m = e(s(&["10.0.5.0/24", "fd00:5::/64"], false));
        assert!(m.contains("fd00:5::/64 is IPv6: add --ipv6"), "{m}");
        let m = e(s(&["10.0.5.0/24"], true));
        assert!(m.contains("--ipv6 needs an IPv6 subnet"), "{m}");
        assert!(
            m.contains("--subnet 10.0.5.0/24 --ipv6 --subnet fd00:5::/64"),
            "{m}"
        );
        let m = e(s(&["10.0.5.0/24", "10.0.6.0/24"], false));
        assert!(
            m.contains("10.0.5.0/24 and 10.0.6.0/24 are both IPv4"),
            "{m}"
        );
        let m = e(s(&["10.0.5.0/24", "fd00:5::/64", "fd00:6::/64"], true));
        assert!(
            m.contains("fd00:5::/64 and fd00:6::/64 are both IPv6"),
            "{m}"
        );
        let m = e(s(&["fd00:5::/64"], true));
        assert!(m.contains("a network needs an IPv4 subnet"), "{m}");
        let m = e(s(&["10.0.5.0/24", "fd00:5::/112"], true));
        assert!(m.contains("at most /96"), "{m}");
        assert!(m.starts_with("--subnet: "), "{m}");
        let m = e(s(&["10.0.5.0/24", "fd00:5::"], true));
        assert!(
            m.contains("expected ADDRESS/PREFIX, like fd00:1::/64"),
            "{m}"
        );
        let m = e(s(&["10.0.5/24"], false));
        assert!(m.contains("is not an IPv4 address"), "{m}");

        // Host bits set: refused in Docker's words, either family.
        assert_eq!(
            e(s(&["10.0.5.0/24", "fd00:5::1/64"], true)),
            "--subnet: invalid subnet fd00:5::1/64: it should be fd00:5::/64"
        );
        assert_eq!(
            e(s(&["10.0.5.1/24"], false)),
            "--subnet: invalid subnet 10.0.5.1/24: it should be 10.0.5.0/24"
        );
        assert_eq!(
            e(s(&["10.0.5.1/24", "fd00:5::/64"], true)),
            "--subnet: invalid subnet 10.0.5.1/24: it should be 10.0.5.0/24"
        );
    }

    #[test]
    fn publish_long_and_short() {
        let p = publish("--publish", "published=8080,target=80").unwrap();
        assert_eq!(
            p,
            PublishedPort {
                protocol: Protocol::Tcp,
                published: 8080,
                target: 80,
                mode: PublishMode::Ingress
            }
        );
        let p = publish(
            "--publish",
            "published=53, target=5353 ,protocol=udp,mode=host",
        )
        .unwrap();
        assert_eq!(
            p,
            PublishedPort {
                protocol: Protocol::Udp,
                published: 53,
                target: 5353,
                mode: PublishMode::Host
            }
        );
        assert_eq!(
            publish("-p", "8080:80").unwrap(),
            PublishedPort {
                protocol: Protocol::Tcp,
                published: 8080,
                target: 80,
                mode: PublishMode::Ingress
            }
        );
        assert_eq!(publish("-p", "53:53/udp").unwrap().protocol, Protocol::Udp);
    }

    #[test]
    fn publish_errors_say_what_to_write() {
        assert_eq!(
            e(publish("--publish", "published=8080,target=80,foo=1")),
            "--publish: unknown key 'foo' (expected published, target, protocol, mode)"
        );
        assert_eq!(
            e(publish("--publish", "published=8080")),
            "--publish: missing target= (the port the tasks listen on), as in published=8080,target=80"
        );
        assert!(e(publish("--publish", "target=80")).starts_with("--publish: missing published="));
        assert_eq!(
            e(publish("--publish-add", "published=http,target=80")),
            "--publish-add: published=http is not a port number (1-65535)"
        );
        assert_eq!(
            e(publish("--publish", "published=0,target=80")),
            "--publish: published=0 is not a port number (1-65535)"
        );
        assert_eq!(
            e(publish(
                "--publish",
                "published=8080,target=80,protocol=sctp"
            )),
            "--publish: unknown protocol 'sctp' (expected tcp or udp)"
        );
        assert_eq!(
            e(publish("--publish", "published=8080,target=80,mode=global")),
            "--publish: unknown mode 'global' (expected ingress or host)"
        );
        assert_eq!(
            e(publish(
                "--publish",
                "published=8080,published=8081,target=80"
            )),
            "--publish: published= is given twice"
        );
        assert!(e(publish("--publish", "published=8080,,target=80")).contains("empty item"));
        assert!(e(publish("--publish", "published=8080,target"))
            .contains("\"target\" is not KEY=VALUE"));
        assert!(e(publish("--publish", "8080")).contains("names one port"));
        assert!(e(publish("--publish", "8080:80/icmp")).contains("unknown protocol 'icmp'"));
    }

    #[test]
    fn publish_rm_forms() {
        let tcp = PortSpec {
            published: 8080,
            protocol: Protocol::Tcp,
        };
        let udp = PortSpec {
            published: 8080,
            protocol: Protocol::Udp,
        };
        assert_eq!(publish_rm("--publish-rm", "8080").unwrap(), tcp);
        assert_eq!(publish_rm("--publish-rm", "8080/udp").unwrap(), udp);
        assert_eq!(publish_rm("--publish-rm", "8080:80").unwrap(), tcp);
        assert_eq!(
            publish_rm("--publish-rm", "published=8080,protocol=udp").unwrap(),
            udp
        );
        assert_eq!(
            publish_rm("--publish-rm", "published=8080,target=80").unwrap(),
            tcp
        );
        assert_eq!(
            e(publish_rm("--publish-rm", "web")),
            "--publish-rm: published=web is not a port number (1-65535)"
        );
        assert!(e(publish_rm("--publish-rm", "protocol=udp")).contains("missing published="));
    }

    #[test]
    fn tasks() {
        let t = task(
            "--task",
            "name=web.1,node=n1,addr=ingress:10.0.0.5,addr=appnet:10.0.1.5,weight=3",
        )
        .unwrap();
        assert_eq!(t.name, "web.1");
        assert_eq!(t.node, "n1");
        assert_eq!(t.weight, 3);
        assert_eq!(t.state, TaskState::Running);
        assert_eq!(t.addr_on("ingress"), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(t.addr_on("appnet"), Some(Ipv4Addr::new(10, 0, 1, 5)));
        let t = task(
            "--task",
            "name=web.2,node=n2,addr=appnet:10.0.1.6,state=draining",
        )
        .unwrap();
        assert_eq!((t.weight, t.state), (1, TaskState::Draining));

        assert_eq!(
            e(task("--task", "name=web.1,node=n1,ip=10.0.0.5")),
            "--task: unknown key 'ip' (expected name, node, addr, weight, state, vlan)"
        );
        let t = task("--task", "name=web.3,node=n1,addr=appnet:10.0.1.7,vlan=101").unwrap();
        assert_eq!(t.vlan, Some(101));
        for bad in ["0", "4095", "x", "-1"] {
            assert!(
                e(task(
                    "--task",
                    &format!("name=web.1,node=n1,addr=appnet:10.0.1.5,vlan={bad}")
                ))
                .contains("is not a VLAN id: give 1 to 4094"),
                "vlan={bad}"
            );
        }
        assert!(
            e(task("--task", "node=n1,addr=appnet:10.0.1.5")).starts_with("--task: missing name=")
        );
        assert!(e(task("--task-add", "name=web.1,addr=appnet:10.0.1.5"))
            .starts_with("--task-add: missing node="));
        assert!(e(task("--task", "name=web.1,node=n1")).contains("addr=NETWORK:IP"));
        assert_eq!(
            e(task("--task", "name=web.1,node=n1,addr=10.0.1.5")),
            "--task: addr=10.0.1.5 is not NETWORK:IP (as in addr=appnet:10.0.1.11)"
        );
        assert_eq!(
            e(task("--task", "name=web.1,node=n1,addr=appnet:10.0.1.500")),
            "--task: address \"10.0.1.500\" is not an IPv4 address"
        );
        assert!(e(task(
            "--task",
            "name=web.1,node=n1,addr=appnet:10.0.1.5,weight=-1"
        ))
        .contains("weight=-1 is not a whole number"));
        assert_eq!(
            e(task(
                "--task",
                "name=web.1,node=n1,addr=appnet:10.0.1.5,state=up"
            )),
            "--task: unknown state 'up' (expected running, unhealthy, draining, shutdown, failed)"
        );
    }

    #[test]
    fn task_updates() {
        assert_eq!(
            task_update("--task-update", "name=web.1,weight=0").unwrap(),
            TaskUpdate {
                name: "web.1".into(),
                weight: Some(0),
                state: None
            }
        );
        assert_eq!(
            task_update("--task-update", "name=web.1,state=unhealthy")
                .unwrap()
                .state,
            Some(TaskState::Unhealthy)
        );
        assert_eq!(
            e(task_update("--task-update", "name=web.1")),
            "--task-update: nothing to change for web.1: give weight= and/or state= (as in name=web.1,weight=0)"
        );
        assert_eq!(
            e(task_update("--task-update", "name=web.1,node=n2")),
            "--task-update: unknown key 'node' (expected name, weight, state)"
        );
    }

    #[test]
    fn networks_endpoints_and_scale() {
        assert_eq!(
            service_network("--network", "appnet").unwrap(),
            ServiceNetwork {
                network: "appnet".into(),
                vip: None
            }
        );
        assert_eq!(
            service_network("--network", "appnet:10.0.1.2").unwrap().vip,
            Some(Ipv4Addr::new(10, 0, 1, 2))
        );
        assert_eq!(
            service_network("--network", "appnet:x").unwrap_err().0,
            "--network: VIP \"x\" is not an IPv4 address"
        );
        assert!(e(service_network("--network", ":10.0.1.2")).contains("no network name"));

        assert_eq!(
            name_ip("--endpoint", "n1=10.0.0.2", "n1=10.0.0.2").unwrap(),
            ("n1".to_string(), Ipv4Addr::new(10, 0, 0, 2))
        );
        assert_eq!(
            e(name_ip("--endpoint", "n1", "n1=10.0.0.2")),
            "--endpoint: \"n1\" is not NAME=IP (as in n1=10.0.0.2)"
        );

        assert_eq!(scale("web=3").unwrap(), ("web".to_string(), 3));
        assert_eq!(
            e(scale("web")),
            "service scale: \"web\" is not SERVICE=REPLICAS (as in web=2)"
        );
        assert_eq!(
            e(scale("web=two")),
            "service scale: \"two\" is not a number of replicas (as in web=2)"
        );
    }
}
