//! What a command does to the state: pure functions, no I/O.
//!
//! [`apply`] turns the current [`State`] and a changing [`Command`] into the next state, or says
//! exactly why it cannot. It checks what only the command knows (the thing it names exists, the
//! thing it creates does not, a removed node runs no task, a new network's subnets have no host
//! bits, ...); whole-state rules (unique published ports and addresses, VIPs inside their
//! subnet, known nodes and networks) are [`crate::validate()`]'s, which the daemon runs on the
//! result. [`answer`] gives the result body of a response.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::model::{
    Affinity, AffinityMode, EndpointMode, Network, Node, Service, State, Task, MAX_NETWORK_KEYS,
};
use crate::proto::{
    Change, Command, ErrorBody, ErrorCode, NetworkUpdate, PortSpec, Query, ServiceUpdate,
};

/// What a command names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Network,
    Node,
    Service,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Network => "network",
            Kind::Node => "node",
            Kind::Service => "service",
        })
    }
}

/// Why a command cannot be applied. The message says what is wrong and, where it helps, what
/// to do; [`ApplyError::code`] classifies it for the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: Kind, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: Kind, name: String },
    #[error("service {service:?} has no affinity to time out: give --affinity client-ip with --affinity-timeout")]
    AffinityTimeoutWithoutAffinity { service: String },
    #[error("task {task:?} not found in service {service:?}")]
    TaskNotFound { service: String, task: String },
    #[error("task {task:?} already exists in service {service:?}")]
    TaskExists { service: String, task: String },
    #[error(
        "task name {task:?} does not fit service {service:?}: tasks are named {service}.1, \
         {service}.2, ... (the service name, a dot and a slot number from 1)"
    )]
    BadTaskName { service: String, task: String },
    #[error("published port {port} is not published by service {service:?}")]
    PortNotPublished { service: String, port: PortSpec },
    #[error("published port {port} is already published by service {service:?}")]
    PortAlreadyPublished { service: String, port: PortSpec },
    /// Another service holds the port: the error names the holder, not the service changed.
    #[error("published port {port} is already in use by service \"{holder}\"; pick another published port")]
    PortInUse { holder: String, port: PortSpec },
    #[error("service {service:?} is not attached to network {network:?}")]
    NetworkNotAttached { service: String, network: String },
    #[error("service {service:?} is already attached to network {network:?}")]
    NetworkAlreadyAttached { service: String, network: String },
    #[error("network {network:?} already has an endpoint for node {node:?}")]
    EndpointExists { network: String, node: String },
    #[error("node {node:?} still runs tasks {}; remove them first", .tasks.join(", "))]
    NodeInUse { node: String, tasks: Vec<String> },
    #[error(
        "network {network:?} is still used by services {}; remove them first",
        .services.join(", ")
    )]
    NetworkInUse {
        network: String,
        services: Vec<String>,
    },
    #[error(
        "service {service:?} has {current} tasks and cannot be scaled up to {requested}: meshd \
         does not start containers; add tasks with \
         `meshctl service update --task-add name={service}.{next},node=NODE,addr=NETWORK:IP {service}`"
    )]
    ScaleUp {
        service: String,
        current: usize,
        requested: u32,
        next: u32,
    },
    #[error("the update of task {task:?} changes nothing: give weight= and/or state=")]
    EmptyTaskUpdate { task: String },
    #[error(
        "network {network:?} is not encrypted: its keys cannot change (encryption is chosen at \
         creation: meshctl network create --opt encrypted)"
    )]
    NotEncrypted { network: String },
    #[error("network {network:?}: {problem}")]
    BadKeyUpdate { network: String, problem: String },
    /// A network created with a subnet that has host bits set (Docker's message).
    #[error("network {network:?}: {problem}")]
    BadSubnet { network: String, problem: String },
    #[error("cannot encode the result: {0}")]
    Encode(String),
}

impl ApplyError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApplyError::NotFound { .. }
            | ApplyError::TaskNotFound { .. }
            | ApplyError::PortNotPublished { .. }
            | ApplyError::NetworkNotAttached { .. } => ErrorCode::NotFound,
            ApplyError::AlreadyExists { .. }
            | ApplyError::TaskExists { .. }
            | ApplyError::PortAlreadyPublished { .. }
            | ApplyError::PortInUse { .. }
            | ApplyError::NetworkAlreadyAttached { .. }
            | ApplyError::EndpointExists { .. }
            | ApplyError::NodeInUse { .. }
            | ApplyError::NetworkInUse { .. } => ErrorCode::Conflict,
            ApplyError::BadTaskName { .. }
            | ApplyError::ScaleUp { .. }
            | ApplyError::EmptyTaskUpdate { .. }
            | ApplyError::AffinityTimeoutWithoutAffinity { .. }
            | ApplyError::NotEncrypted { .. }
            | ApplyError::BadKeyUpdate { .. }
            | ApplyError::BadSubnet { .. } => ErrorCode::Invalid,
            ApplyError::Encode(_) => ErrorCode::Internal,
        }
    }
}

impl From<ApplyError> for ErrorBody {
    fn from(e: ApplyError) -> Self {
        ErrorBody::new(e.code(), e.to_string())
    }
}

/// The slot number of a task named `<service>.<N>` (N ≥ 1, no leading zero), as Swarm numbers
/// replicas.
pub fn task_slot(service: &str, task: &str) -> Option<u32> {
    let n = task.strip_prefix(service)?.strip_prefix('.')?;
    if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The next state after a changing command, `None` for a command that only reads.
pub fn apply(state: &State, cmd: &Command) -> Result<Option<State>, ApplyError> {
    match cmd {
        Command::Query(_) | Command::Runtime(_) => Ok(None),
        Command::Change(c) => change(state, c).map(Some),
    }
}

/// The next state after `change`, or why it cannot be made.
pub fn change(state: &State, change: &Change) -> Result<State, ApplyError> {
    let mut s = state.clone();
    match change {
        Change::NetworkCreate { network } => {
            if s.network(&network.name).is_some() {
                return Err(exists(Kind::Network, &network.name));
            }
            // Here, not in `validate`: the networks a state holds already stay as they are.
            network
                .subnets_without_host_bits()
                .map_err(|e| ApplyError::BadSubnet {
                    network: network.name.clone(),
                    problem: e.to_string(),
                })?;
            s.networks.push(network.clone());
        }
        Change::NetworkRm { name } => {
            let idx = network_index(&s, name)?;
            let users: Vec<String> = s
                .services
                .iter()
                .filter(|svc| {
                    svc.networks.iter().any(|n| &n.network == name)
                        || svc.tasks.iter().any(|t| t.addr_on(name).is_some())
                })
                .map(|svc| svc.name.clone())
                .collect();
            if !users.is_empty() {
                return Err(ApplyError::NetworkInUse {
                    network: name.clone(),
                    services: users,
                });
            }
            s.networks.remove(idx);
        }
        Change::NetworkUpdate { name, update } => {
            let idx = network_index(&s, name)?;
            update_keys(&mut s.networks[idx], update)?;
        }
        Change::NodeAdd { node, endpoints } => {
            // Adding a node exactly as it is already known is a no-op, so one `meshctl node add`
            // can go to every daemon of a mesh, the node's own among them (each meshd knows
            // itself from its command line).
            let known = match s.node(&node.name) {
                Some(n)
                    if n.addr == node.addr
                        && n.vtep_addr() == node.vtep_addr()
                        && n.vtep_port == node.vtep_port =>
                {
                    true
                }
                Some(_) => return Err(exists(Kind::Node, &node.name)),
                None => false,
            };
            for (net_name, addr) in endpoints {
                let idx = network_index(&s, net_name)?;
                let net = &mut s.networks[idx];
                match net.endpoints.get(&node.name) {
                    Some(a) if a == addr => {}
                    Some(_) => {
                        return Err(ApplyError::EndpointExists {
                            network: net_name.clone(),
                            node: node.name.clone(),
                        })
                    }
                    None => {
                        net.endpoints.insert(node.name.clone(), *addr);
                    }
                }
            }
            if !known {
                s.nodes.push(node.clone());
            }
        }
        Change::NodeRm { name } => {
            let idx = node_index(&s, name)?;
            let tasks: Vec<String> = s
                .services
                .iter()
                .flat_map(|svc| svc.tasks.iter())
                .filter(|t| &t.node == name)
                .map(|t| t.name.clone())
                .collect();
            if !tasks.is_empty() {
                return Err(ApplyError::NodeInUse {
                    node: name.clone(),
                    tasks,
                });
            }
            s.nodes.remove(idx);
            for net in &mut s.networks {
                net.endpoints.remove(name);
            }
        }
        Change::NodeUpdate { name, availability } => {
            let idx = node_index(&s, name)?;
            s.nodes[idx].availability = *availability;
        }
        Change::ServiceCreate { service } => {
            if s.service(&service.name).is_some() {
                return Err(exists(Kind::Service, &service.name));
            }
            let mut ports: Vec<PortSpec> = Vec::new();
            for p in &service.ports {
                let spec = PortSpec::of(p);
                if ports.contains(&spec) {
                    return Err(ApplyError::PortAlreadyPublished {
                        service: service.name.clone(),
                        port: spec,
                    });
                }
                ports.push(spec);
            }
            let mut checked = Service {
                tasks: Vec::new(),
                ..service.clone()
            };
            for t in &service.tasks {
                add_task(&mut checked, t)?;
            }
            port_holders(&s, &checked)?;
            s.services.push(checked);
        }
        Change::ServiceUpdate { name, update } => {
            let svc = s
                .service_mut(name)
                .ok_or_else(|| not_found(Kind::Service, name))?;
            update_service(svc, update)?;
            if let Some(svc) = s.service(name) {
                port_holders(&s, svc)?;
            }
        }
        Change::ServiceScale { name, replicas } => {
            let svc = s
                .service_mut(name)
                .ok_or_else(|| not_found(Kind::Service, name))?;
            scale(svc, *replicas)?;
        }
        Change::ServiceRm { name } => {
            let idx = s
                .services
                .iter()
                .position(|svc| &svc.name == name)
                .ok_or_else(|| not_found(Kind::Service, name))?;
            s.services.remove(idx);
        }
    }
    Ok(s)
}

/// The result body of a successful response to `cmd`, read from `state` (for a changing
/// command, the new state):
///
/// | command | result |
/// |---|---|
/// | `network-create`, `network-inspect` | `Network` |
/// | `network-ls` | `[Network]` |
/// | `node-add`, `node-update` | `Node` |
/// | `node-ls` | `[Node]` |
/// | `service-create`, `-update`, `-scale`, `-inspect` | `Service` |
/// | `service-ls` | `[Service]` |
/// | `service-ps` | `[Task]` (the daemon adds each task's observed `status`: `[PsTask]`) |
/// | `state` | `State` |
/// | `network-update` | `Network` |
/// | `network-rm`, `node-rm`, `service-rm` | `null` |
/// | `stats` | `null` here: the daemon answers with its own counters |
///
/// Network keys are never in a result: answers carry their ids only.
pub fn answer(state: &State, cmd: &Command) -> Result<Value, ApplyError> {
    match cmd {
        Command::Query(q) => answer_query(state, q),
        Command::Change(c) => answer_change(state, c),
        // The daemon answers these from its workers.
        Command::Runtime(_) => Ok(Value::Null),
    }
}

/// The result body of a query (see [`answer`]).
pub fn answer_query(state: &State, q: &Query) -> Result<Value, ApplyError> {
    match q {
        // Network keys never leave the node: answers carry their ids only.
        Query::NetworkInspect { name } => to_value(&find_network(state, name)?.redacted()),
        Query::NetworkLs {} => to_value(&state.redacted().networks),
        Query::NodeLs {} => to_value(&state.nodes),
        Query::ServiceInspect { name } => to_value(find_service(state, name)?),
        Query::ServiceLs {} => to_value(&state.services),
        Query::ServicePs { name } => to_value(&find_service(state, name)?.tasks),
        Query::State {} => to_value(&state.redacted()),
        // The daemon answers these from its own counters and workers.
        Query::Stats {} | Query::ConnLs { .. } => Ok(Value::Null),
    }
}

/// The result body of a change, read from the new state (see [`answer`]).
pub fn answer_change(state: &State, c: &Change) -> Result<Value, ApplyError> {
    match c {
        Change::NetworkCreate { network } => {
            to_value(&find_network(state, &network.name)?.redacted())
        }
        Change::NetworkUpdate { name, .. } => to_value(&find_network(state, name)?.redacted()),
        Change::NodeAdd { node, .. } => to_value(find_node(state, &node.name)?),
        Change::NodeUpdate { name, .. } => to_value(find_node(state, name)?),
        Change::ServiceCreate { service } => to_value(find_service(state, &service.name)?),
        Change::ServiceUpdate { name, .. } | Change::ServiceScale { name, .. } => {
            to_value(find_service(state, name)?)
        }
        Change::NetworkRm { .. } | Change::NodeRm { .. } | Change::ServiceRm { .. } => {
            Ok(Value::Null)
        }
    }
}

/// Applies a key update to an encrypted network ([`NetworkUpdate`]).
fn update_keys(net: &mut Network, u: &NetworkUpdate) -> Result<(), ApplyError> {
    let name = net.name.clone();
    let bad = |problem: String| ApplyError::BadKeyUpdate {
        network: name.clone(),
        problem,
    };
    let Some(enc) = &mut net.encryption else {
        return Err(ApplyError::NotEncrypted { network: name });
    };
    if u.key_add.is_none() && u.key_primary.is_none() {
        return Err(bad(
            "the update changes nothing: give a key to add and/or the primary key".into(),
        ));
    }
    if let Some(k) = &u.key_add {
        if k.key.is_none() {
            return Err(bad(format!("key {} comes without its value", k.id)));
        }
        match enc.keys.iter().find(|e| e.id == k.id) {
            // The same key again (a retried rotation): nothing to do.
            Some(e) if e.key == k.key => {}
            Some(_) => return Err(bad(format!("it has a key {} already", k.id))),
            None => {
                if enc.keys.len() >= MAX_NETWORK_KEYS {
                    let primary = enc.primary;
                    if let Some(oldest) = enc
                        .keys
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.id != primary)
                        .min_by_key(|(_, e)| e.id)
                        .map(|(i, _)| i)
                    {
                        enc.keys.remove(oldest);
                    }
                }
                enc.keys.push(k.clone());
            }
        }
    }
    if let Some(id) = u.key_primary {
        if !enc.keys.iter().any(|e| e.id == id) {
            return Err(bad(format!(
                "it has no key {id} to seal with (add it to every node first)"
            )));
        }
        let previous = enc.primary;
        if id != previous {
            enc.keys.retain(|e| e.id >= previous.min(id));
            enc.primary = id;
        }
    }
    Ok(())
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, ApplyError> {
    serde_json::to_value(v).map_err(|e| ApplyError::Encode(e.to_string()))
}

fn not_found(kind: Kind, name: &str) -> ApplyError {
    ApplyError::NotFound {
        kind,
        name: name.to_string(),
    }
}

fn exists(kind: Kind, name: &str) -> ApplyError {
    ApplyError::AlreadyExists {
        kind,
        name: name.to_string(),
    }
}

fn find_network<'a>(s: &'a State, name: &str) -> Result<&'a Network, ApplyError> {
    s.network(name)
        .ok_or_else(|| not_found(Kind::Network, name))
}

fn find_node<'a>(s: &'a State, name: &str) -> Result<&'a Node, ApplyError> {
    s.node(name).ok_or_else(|| not_found(Kind::Node, name))
}

fn find_service<'a>(s: &'a State, name: &str) -> Result<&'a Service, ApplyError> {
    s.service(name)
        .ok_or_else(|| not_found(Kind::Service, name))
}

fn network_index(s: &State, name: &str) -> Result<usize, ApplyError> {
    s.networks
        .iter()
        .position(|n| n.name == name)
        .ok_or_else(|| not_found(Kind::Network, name))
}

fn node_index(s: &State, name: &str) -> Result<usize, ApplyError> {
    s.nodes
        .iter()
        .position(|n| n.name == name)
        .ok_or_else(|| not_found(Kind::Node, name))
}

fn add_task(svc: &mut Service, t: &Task) -> Result<(), ApplyError> {
    if task_slot(&svc.name, &t.name).is_none() {
        return Err(ApplyError::BadTaskName {
            service: svc.name.clone(),
            task: t.name.clone(),
        });
    }
    if svc.tasks.iter().any(|x| x.name == t.name) {
        return Err(ApplyError::TaskExists {
            service: svc.name.clone(),
            task: t.name.clone(),
        });
    }
    svc.tasks.push(t.clone());
    Ok(())
}

/// Refuses a published port of `changed` that another service of `s` already publishes, naming
/// that service (the whole-state validation cannot tell which of two services came first).
fn port_holders(s: &State, changed: &Service) -> Result<(), ApplyError> {
    for p in &changed.ports {
        let spec = PortSpec::of(p);
        if let Some(holder) = s
            .services
            .iter()
            .find(|o| o.name != changed.name && o.ports.iter().any(|q| PortSpec::of(q) == spec))
        {
            return Err(ApplyError::PortInUse {
                holder: holder.name.clone(),
                port: spec,
            });
        }
    }
    Ok(())
}

fn update_service(svc: &mut Service, u: &ServiceUpdate) -> Result<(), ApplyError> {
    for spec in &u.publish_rm {
        let before = svc.ports.len();
        svc.ports.retain(|p| !spec.matches(p));
        if svc.ports.len() == before {
            return Err(ApplyError::PortNotPublished {
                service: svc.name.clone(),
                port: *spec,
            });
        }
    }
    for p in &u.publish_add {
        let spec = PortSpec::of(p);
        if svc.ports.iter().any(|x| spec.matches(x)) {
            return Err(ApplyError::PortAlreadyPublished {
                service: svc.name.clone(),
                port: spec,
            });
        }
        svc.ports.push(*p);
    }
    for net in &u.network_rm {
        let before = svc.networks.len();
        svc.networks.retain(|n| &n.network != net);
        if svc.networks.len() == before {
            return Err(ApplyError::NetworkNotAttached {
                service: svc.name.clone(),
                network: net.clone(),
            });
        }
    }
    for net in &u.network_add {
        if svc.networks.iter().any(|n| n.network == net.network) {
            return Err(ApplyError::NetworkAlreadyAttached {
                service: svc.name.clone(),
                network: net.network.clone(),
            });
        }
        svc.networks.push(net.clone());
    }
    for name in &u.task_rm {
        let before = svc.tasks.len();
        svc.tasks.retain(|t| &t.name != name);
        if svc.tasks.len() == before {
            return Err(ApplyError::TaskNotFound {
                service: svc.name.clone(),
                task: name.clone(),
            });
        }
    }
    for t in &u.task_add {
        add_task(svc, t)?;
    }
    for tu in &u.task_update {
        if tu.weight.is_none() && tu.state.is_none() {
            return Err(ApplyError::EmptyTaskUpdate {
                task: tu.name.clone(),
            });
        }
        let service = svc.name.clone();
        let task = svc
            .tasks
            .iter_mut()
            .find(|t| t.name == tu.name)
            .ok_or_else(|| ApplyError::TaskNotFound {
                service,
                task: tu.name.clone(),
            })?;
        if let Some(w) = tu.weight {
            task.weight = w;
        }
        if let Some(st) = tu.state {
            task.state = st;
        }
    }
    if let Some(mode) = u.endpoint_mode {
        svc.endpoint_mode = mode;
        if mode == EndpointMode::Dnsrr {
            // Swarm releases the VIPs of a service that goes DNS round-robin.
            for n in &mut svc.networks {
                n.vip = None;
            }
        }
    }
    if let Some(c) = u.client_ip {
        svc.client_ip = c;
    }
    if let Some(o) = u.outlier {
        svc.outlier = o;
    }
    if let Some(k) = u.scheduler {
        svc.scheduler = k;
    }
    svc.affinity = affinity(&svc.name, svc.affinity, u.affinity, u.affinity_timeout_s)?;
    if u.no_health {
        svc.health = None;
    }
    if let Some(h) = &u.health {
        svc.health = Some(h.clone());
    }
    if let Some(t) = u.timeouts {
        if let Some(v) = t.tcp_established {
            svc.timeouts.tcp_established = v;
        }
        if let Some(v) = t.tcp_transitory {
            svc.timeouts.tcp_transitory = v;
        }
        if let Some(v) = t.udp {
            svc.timeouts.udp = v;
        }
    }
    Ok(())
}

/// The affinity an update's `--affinity` (`mode`) and `--affinity-timeout` (`timeout_s`) make
/// of `current`: turning it on keeps the timeout it had (else the default); a timeout alone
/// needs affinity on.
fn affinity(
    service: &str,
    current: Option<Affinity>,
    mode: Option<AffinityMode>,
    timeout_s: Option<u32>,
) -> Result<Option<Affinity>, ApplyError> {
    let keep = current.map_or(Affinity::DEFAULT_TIMEOUT_S, Affinity::timeout_s);
    match (mode, timeout_s, current) {
        (None, None, _) => Ok(current),
        (Some(AffinityMode::None), None, _) => Ok(None),
        (Some(AffinityMode::ClientIp), t, _) | (None, t @ Some(_), Some(_)) => {
            Ok(Some(Affinity::ClientIp {
                timeout_s: t.unwrap_or(keep),
            }))
        }
        (Some(AffinityMode::None), Some(_), _) | (None, Some(_), None) => {
            Err(ApplyError::AffinityTimeoutWithoutAffinity {
                service: service.to_string(),
            })
        }
    }
}

fn scale(svc: &mut Service, replicas: u32) -> Result<(), ApplyError> {
    let current = svc.tasks.len();
    let wanted = usize::try_from(replicas).unwrap_or(usize::MAX);
    if wanted > current {
        let next = svc
            .tasks
            .iter()
            .filter_map(|t| task_slot(&svc.name, &t.name))
            .max()
            .unwrap_or(0);
        return Err(ApplyError::ScaleUp {
            service: svc.name.clone(),
            current,
            requested: replicas,
            next: next.saturating_add(1),
        });
    }
    // Keep the `wanted` lowest slots; tasks whose name has no slot (from before names were
    // checked) sort last and go first.
    let mut order: Vec<(u32, usize)> = svc
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (task_slot(&svc.name, &t.name).unwrap_or(u32::MAX), i))
        .collect();
    order.sort_unstable();
    let mut keep = vec![false; current];
    for &(_, i) in order.iter().take(wanted) {
        keep[i] = true;
    }
    let mut i = 0;
    svc.tasks.retain(|_| {
        let k = keep[i];
        i += 1;
        k
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::*;
    use crate::proto::{TaskUpdate, TimeoutsUpdate};

    fn task(name: &str, node: &str, last: u8) -> Task {
        Task {
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
            state: TaskState::Running,
            weight: 1,
            vlan: None,
        }
    }

    fn port(published: u16, target: u16, protocol: Protocol) -> PublishedPort {
        PublishedPort {
            protocol,
            published,
            target,
            mode: PublishMode::Ingress,
        }
    }

    fn node(name: &str, last: u8) -> Node {
        Node {
            name: name.into(),
            addr: Ipv4Addr::new(192, 168, 1, last),
            vtep: None,
            addr6: None,
            vtep_port: VXLAN_PORT,
            availability: Availability::Active,
        }
    }

    fn sample() -> State {
        let ingress = Network {
            subnet6: None,
            name: "ingress".into(),
            vni: INGRESS_VNI,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            ingress: true,
            endpoints: BTreeMap::from([
                ("n1".to_string(), Ipv4Addr::new(10, 0, 0, 2)),
                ("n2".to_string(), Ipv4Addr::new(10, 0, 0, 3)),
            ]),
            mtu: None,
            encryption: None,
        };
        let app = Network {
            subnet6: None,
            name: "appnet".into(),
            vni: 4097,
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            ingress: false,
            endpoints: BTreeMap::new(),
            mtu: None,
            encryption: None,
        };
        let mut web = Service::new("web");
        web.networks.push(ServiceNetwork {
            network: "appnet".into(),
            vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
        });
        web.ports.push(port(8080, 80, Protocol::Tcp));
        web.tasks = vec![
            task("web.1", "n1", 11),
            task("web.2", "n2", 12),
            task("web.3", "n1", 13),
        ];
        State {
            nodes: vec![node("n1", 11), node("n2", 12)],
            networks: vec![ingress, app],
            services: vec![web],
        }
    }

    fn ok(s: &State, c: Command) -> State {
        let next = apply(s, &c).unwrap().unwrap();
        crate::validate(&next).unwrap();
        next
    }

    fn err(s: &State, c: Command) -> (ErrorCode, String) {
        let e = apply(s, &c).unwrap_err();
        (e.code(), e.to_string())
    }

    fn update(name: &str, update: ServiceUpdate) -> Command {
        Command::Change(Change::ServiceUpdate {
            name: name.into(),
            update,
        })
    }

    #[test]
    fn the_sample_is_valid() {
        crate::validate(&sample()).unwrap();
    }

    #[test]
    fn a_port_conflict_names_the_service_that_holds_the_port() {
        // "api" sorts and is listed before "web", which holds 8080: updating or creating api
        // with 8080 names web, whatever the order of the services.
        let mut s = sample();
        s.services.insert(0, Service::new("api"));
        let (code, msg) = err(
            &s,
            update(
                "api",
                ServiceUpdate {
                    publish_add: vec![port(8080, 80, Protocol::Tcp)],
                    ..ServiceUpdate::default()
                },
            ),
        );
        assert_eq!(code, ErrorCode::Conflict);
        assert_eq!(
            msg,
            "published port 8080/tcp is already in use by service \"web\"; pick another published port"
        );
        let mut other = Service::new("aaa");
        other.ports.push(port(8080, 80, Protocol::Tcp));
        let (code, msg) = err(
            &s,
            Command::Change(Change::ServiceCreate { service: other }),
        );
        assert_eq!(code, ErrorCode::Conflict);
        assert!(msg.contains("in use by service \"web\""), "{msg}");
        // The same port over the other protocol is free.
        ok(
            &s,
            update(
                "api",
                ServiceUpdate {
                    publish_add: vec![port(8080, 80, Protocol::Udp)],
                    ..ServiceUpdate::default()
                },
            ),
        );
    }

    #[test]
    fn reads_change_nothing() {
        let s = sample();
        for c in [
            Command::Query(Query::NetworkLs {}),
            Command::Query(Query::NetworkInspect {
                name: "appnet".into(),
            }),
            Command::Query(Query::NodeLs {}),
            Command::Query(Query::ServiceLs {}),
            Command::Query(Query::ServiceInspect { name: "web".into() }),
            Command::Query(Query::ServicePs { name: "web".into() }),
            Command::Query(Query::Stats {}),
            Command::Query(Query::State {}),
        ] {
            assert_eq!(apply(&s, &c).unwrap(), None, "{}", c.name());
        }
    }

    #[test]
    fn an_encrypted_networks_key_rotates_in_two_steps_and_answers_never_carry_keys() {
        let mut s = sample();
        let key = |id: u32, b: u8| crate::model::NetworkKey {
            id,
            key: Some(crate::model::Secret([b; 32])),
        };
        s.networks[1].encryption = Some(crate::model::Encryption::single(
            1,
            crate::model::Secret([1; 32]),
        ));
        let update = |u: NetworkUpdate| {
            Command::Change(Change::NetworkUpdate {
                name: "appnet".into(),
                update: u,
            })
        };
        let keys = |s: &State| {
            let e = s.networks[1].encryption.as_ref().unwrap();
            (e.primary, e.keys.iter().map(|k| k.id).collect::<Vec<_>>())
        };
        // Rotation: add (still sealing with 1), then seal with 2 (1 still accepted).
        let add2 = update(NetworkUpdate {
            key_add: Some(key(2, 2)),
            key_primary: None,
        });
        let s1 = apply(&s, &add2).unwrap().unwrap();
        assert_eq!(keys(&s1), (1, vec![1, 2]));
        // A retried step is harmless.
        assert_eq!(keys(&apply(&s1, &add2).unwrap().unwrap()), (1, vec![1, 2]));
        let use2 = update(NetworkUpdate {
            key_add: None,
            key_primary: Some(2),
        });
        let s2 = apply(&s1, &use2).unwrap().unwrap();
        assert_eq!(keys(&s2), (2, vec![1, 2]));
        // The next rotation drops key 1 once key 3 seals.
        let s3 = apply(
            &s2,
            &update(NetworkUpdate {
                key_add: Some(key(3, 3)),
                key_primary: None,
            }),
        )
        .unwrap()
        .unwrap();
        assert_eq!(keys(&s3), (2, vec![1, 2, 3]));
        let s4 = apply(
            &s3,
            &update(NetworkUpdate {
                key_add: None,
                key_primary: Some(3),
            }),
        )
        .unwrap()
        .unwrap();
        assert_eq!(keys(&s4), (3, vec![2, 3]));
        crate::validate(&s4).unwrap();
        // Refused: another key under a used id, a primary it does not have, a keyless key,
        // nothing to do, a network that is not encrypted.
        let refused = |s: &State, u: NetworkUpdate| apply(s, &update(u)).unwrap_err().to_string();
        assert!(refused(
            &s4,
            NetworkUpdate {
                key_add: Some(key(3, 9)),
                key_primary: None
            }
        )
        .contains("has a key 3 already"));
        assert!(refused(
            &s4,
            NetworkUpdate {
                key_add: None,
                key_primary: Some(7)
            }
        )
        .contains("has no key 7 to seal with"));
        assert!(refused(
            &s4,
            NetworkUpdate {
                key_add: Some(crate::model::NetworkKey { id: 8, key: None }),
                key_primary: None
            }
        )
        .contains("comes without its value"));
        assert!(refused(&s4, NetworkUpdate::default()).contains("changes nothing"));
        let e = apply(
            &sample(),
            &update(NetworkUpdate {
                key_add: None,
                key_primary: Some(1),
            }),
        )
        .unwrap_err();
        assert!(e.to_string().contains("is not encrypted"), "{e}");
        assert_eq!(e.code(), ErrorCode::Invalid);
        // Every answer leaves the keys out.
        for q in [
            Command::Query(Query::State {}),
            Command::Query(Query::NetworkLs {}),
            Command::Query(Query::NetworkInspect {
                name: "appnet".into(),
            }),
            use2,
        ] {
            let v = answer(&s4, &q).unwrap().to_string();
            assert!(
                v.contains("\"id\":3") && !v.contains("0303"),
                "{}: {v}",
                q.name()
            );
        }
    }

    #[test]
    fn network_create_and_rm() {
        let s = sample();
        let mut net = s.networks[1].clone();
        net.name = "backnet".into();
        net.vni = 4098;
        net.subnet = "10.0.2.0/24".parse().unwrap();
        net.gateway = Ipv4Addr::new(10, 0, 2, 1);
        let s2 = ok(
            &s,
            Command::Change(Change::NetworkCreate {
                network: net.clone(),
            }),
        );
        assert_eq!(s2.network("backnet"), Some(&net));

        // A subnet with host bits set is refused as Docker refuses it, either family.
        for (v4, v6, bad, should) in [
            (
                "10.0.2.0/24",
                Some("fd00:5::1/64"),
                "fd00:5::1/64",
                "fd00:5::/64",
            ),
            ("10.0.2.7/24", None, "10.0.2.7/24", "10.0.2.0/24"),
            (
                "10.0.2.7/24",
                Some("fd00:5::1/64"),
                "10.0.2.7/24",
                "10.0.2.0/24",
            ),
        ] {
            let mut bad_net = net.clone();
            bad_net.subnet = v4.parse().unwrap();
            bad_net.subnet6 = v6.map(|p| p.parse().unwrap());
            assert_eq!(
                err(
                    &s,
                    Command::Change(Change::NetworkCreate { network: bad_net })
                ),
                (
                    ErrorCode::Invalid,
                    format!(r#"network "backnet": invalid subnet {bad}: it should be {should}"#)
                )
            );
        }
        let mut dual = net.clone();
        dual.subnet6 = Some("fd00:5::/64".parse().unwrap());
        ok(&s, Command::Change(Change::NetworkCreate { network: dual }));
        let s3 = ok(
            &s2,
            Command::Change(Change::NetworkRm {
                name: "backnet".into(),
            }),
        );
        assert_eq!(s3, s);

        assert_eq!(
            err(
                &s,
                Command::Change(Change::NetworkCreate {
                    network: s.networks[1].clone()
                })
            ),
            (
                ErrorCode::Conflict,
                r#"network "appnet" already exists"#.into()
            )
        );
        assert_eq!(
            err(
                &s,
                Command::Change(Change::NetworkRm {
                    name: "nonet".into()
                })
            ),
            (ErrorCode::NotFound, r#"network "nonet" not found"#.into())
        );
        assert_eq!(
            err(
                &s,
                Command::Change(Change::NetworkRm {
                    name: "appnet".into()
                })
            ),
            (
                ErrorCode::Conflict,
                r#"network "appnet" is still used by services web; remove them first"#.into()
            )
        );
        // Task addresses count as use, even without attachment (the ingress network).
        assert!(err(
            &s,
            Command::Change(Change::NetworkRm {
                name: "ingress".into()
            })
        )
        .1
        .contains("still used by services web"));
    }

    #[test]
    fn node_add_rm_update() {
        let s = sample();
        let add = Command::Change(Change::NodeAdd {
            node: node("n3", 13),
            endpoints: BTreeMap::from([("ingress".to_string(), Ipv4Addr::new(10, 0, 0, 4))]),
        });
        let s2 = ok(&s, add.clone());
        assert_eq!(s2.node("n3"), Some(&node("n3", 13)));
        assert_eq!(
            s2.networks[0].endpoints.get("n3"),
            Some(&Ipv4Addr::new(10, 0, 0, 4))
        );
        let s3 = ok(&s2, Command::Change(Change::NodeRm { name: "n3".into() }));
        assert_eq!(s3, s, "the node's endpoints go with it");

        // The same node again is a no-op (meshctl sends `node add` to every daemon, the node's
        // own included); a different node under a known name is a conflict.
        assert_eq!(ok(&s2, add), s2);
        let moved = Command::Change(Change::NodeAdd {
            node: node("n3", 99),
            endpoints: BTreeMap::new(),
        });
        assert_eq!(
            err(&s2, moved),
            (ErrorCode::Conflict, r#"node "n3" already exists"#.into())
        );
        let bad_net = Command::Change(Change::NodeAdd {
            node: node("n3", 13),
            endpoints: BTreeMap::from([("nonet".to_string(), Ipv4Addr::new(10, 0, 0, 4))]),
        });
        assert_eq!(
            err(&s, bad_net),
            (ErrorCode::NotFound, r#"network "nonet" not found"#.into())
        );
        let mut stale = s.clone();
        stale.networks[0]
            .endpoints
            .insert("n3".into(), Ipv4Addr::new(10, 0, 0, 9));
        let again = Command::Change(Change::NodeAdd {
            node: node("n3", 13),
            endpoints: BTreeMap::from([("ingress".to_string(), Ipv4Addr::new(10, 0, 0, 4))]),
        });
        assert_eq!(
            err(&stale, again),
            (
                ErrorCode::Conflict,
                r#"network "ingress" already has an endpoint for node "n3""#.into()
            )
        );

        assert_eq!(
            err(&s, Command::Change(Change::NodeRm { name: "n1".into() })),
            (
                ErrorCode::Conflict,
                r#"node "n1" still runs tasks web.1, web.3; remove them first"#.into()
            )
        );
        assert_eq!(
            err(&s, Command::Change(Change::NodeRm { name: "n9".into() })).0,
            ErrorCode::NotFound
        );

        let drained = ok(
            &s,
            Command::Change(Change::NodeUpdate {
                name: "n2".into(),
                availability: Availability::Drain,
            }),
        );
        assert_eq!(
            drained.node("n2").unwrap().availability,
            Availability::Drain
        );
        assert_eq!(
            err(
                &s,
                Command::Change(Change::NodeUpdate {
                    name: "n9".into(),
                    availability: Availability::Drain
                })
            ),
            (ErrorCode::NotFound, r#"node "n9" not found"#.into())
        );
    }

    #[test]
    fn service_create_and_rm() {
        let s = sample();
        let mut api = Service::new("api");
        api.networks.push(ServiceNetwork {
            network: "appnet".into(),
            vip: Some(Ipv4Addr::new(10, 0, 1, 3)),
        });
        api.ports.push(port(9090, 90, Protocol::Tcp));
        api.tasks.push(task("api.1", "n2", 21));
        let s2 = ok(
            &s,
            Command::Change(Change::ServiceCreate {
                service: api.clone(),
            }),
        );
        assert_eq!(s2.service("api"), Some(&api));
        let s3 = ok(
            &s2,
            Command::Change(Change::ServiceRm { name: "api".into() }),
        );
        assert_eq!(s3, s);

        assert_eq!(
            err(
                &s,
                Command::Change(Change::ServiceCreate {
                    service: s.services[0].clone()
                })
            ),
            (
                ErrorCode::Conflict,
                r#"service "web" already exists"#.into()
            )
        );
        assert_eq!(
            err(
                &s,
                Command::Change(Change::ServiceRm {
                    name: "nope".into()
                })
            ),
            (ErrorCode::NotFound, r#"service "nope" not found"#.into())
        );
        let mut dup_task = api.clone();
        dup_task.tasks.push(task("api.1", "n1", 22));
        assert_eq!(
            err(
                &s,
                Command::Change(Change::ServiceCreate { service: dup_task })
            ),
            (
                ErrorCode::Conflict,
                r#"task "api.1" already exists in service "api""#.into()
            )
        );
        let mut bad_name = api.clone();
        bad_name.tasks[0].name = "web.7".into();
        let (code, msg) = err(
            &s,
            Command::Change(Change::ServiceCreate { service: bad_name }),
        );
        assert_eq!(code, ErrorCode::Invalid);
        assert!(
            msg.starts_with(
                r#"task name "web.7" does not fit service "api": tasks are named api.1, api.2"#
            ),
            "{msg}"
        );
        let mut dup_port = api;
        dup_port.ports.push(port(9090, 91, Protocol::Tcp));
        assert_eq!(
            err(
                &s,
                Command::Change(Change::ServiceCreate { service: dup_port })
            ),
            (
                ErrorCode::Conflict,
                r#"published port 9090/tcp is already published by service "api""#.into()
            )
        );
    }

    #[test]
    fn service_update_ports() {
        let s = sample();
        let s2 = ok(
            &s,
            update(
                "web",
                ServiceUpdate {
                    publish_add: vec![port(5353, 53, Protocol::Udp)],
                    ..Default::default()
                },
            ),
        );
        assert_eq!(
            s2.services[0].ports,
            vec![port(8080, 80, Protocol::Tcp), port(5353, 53, Protocol::Udp)]
        );
        let s3 = ok(
            &s2,
            update(
                "web",
                ServiceUpdate {
                    publish_rm: vec!["5353/udp".parse().unwrap()],
                    ..Default::default()
                },
            ),
        );
        assert_eq!(s3, s);
        // Replace a port in one update: rm runs before add.
        let s4 = ok(
            &s,
            update(
                "web",
                ServiceUpdate {
                    publish_rm: vec!["8080".parse().unwrap()],
                    publish_add: vec![port(8080, 81, Protocol::Tcp)],
                    ..Default::default()
                },
            ),
        );
        assert_eq!(s4.services[0].ports, vec![port(8080, 81, Protocol::Tcp)]);

        assert_eq!(
            err(
                &s,
                update(
                    "web",
                    ServiceUpdate {
                        publish_rm: vec!["8080/udp".parse().unwrap()],
                        ..Default::default()
                    }
                )
            ),
            (
                ErrorCode::NotFound,
                r#"published port 8080/udp is not published by service "web""#.into()
            )
        );
        assert_eq!(
            err(
                &s,
                update(
                    "web",
                    ServiceUpdate {
                        publish_add: vec![port(8080, 81, Protocol::Tcp)],
                        ..Default::default()
                    }
                )
            ),
            (
                ErrorCode::Conflict,
                r#"published port 8080/tcp is already published by service "web""#.into()
            )
        );
        assert_eq!(
            err(&s, update("nope", ServiceUpdate::default())),
            (ErrorCode::NotFound, r#"service "nope" not found"#.into())
        );
    }

    #[test]
    fn service_update_tasks() {
        let s = sample();
        let s2 = ok(
            &s,
            update(
                "web",
                ServiceUpdate {
                    task_rm: vec!["web.2".into()],
                    task_add: vec![task("web.4", "n2", 14)],
                    task_update: vec![
                        TaskUpdate {
                            name: "web.1".into(),
                            weight: Some(0),
                            state: None,
                        },
                        TaskUpdate {
                            name: "web.3".into(),
                            weight: None,
                            state: Some(TaskState::Draining),
                        },
                    ],
                    ..Default::default()
                },
            ),
        );
        let names: Vec<&str> = s2.services[0]
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["web.1", "web.3", "web.4"]);
        assert_eq!(s2.services[0].tasks[0].weight, 0);
        assert_eq!(s2.services[0].tasks[1].state, TaskState::Draining);

        assert_eq!(
            err(
                &s,
                update(
                    "web",
                    ServiceUpdate {
                        task_rm: vec!["web.9".into()],
                        ..Default::default()
                    }
                )
            ),
            (
                ErrorCode::NotFound,
                r#"task "web.9" not found in service "web""#.into()
            )
        );
        assert_eq!(
            err(
                &s,
                update(
                    "web",
                    ServiceUpdate {
                        task_add: vec![task("web.2", "n1", 20)],
                        ..Default::default()
                    }
                )
            ),
            (
                ErrorCode::Conflict,
                r#"task "web.2" already exists in service "web""#.into()
            )
        );
        assert_eq!(
            err(
                &s,
                update(
                    "web",
                    ServiceUpdate {
                        task_add: vec![task("web.x", "n1", 20)],
                        ..Default::default()
                    }
                )
            )
            .0,
            ErrorCode::Invalid
        );
        let none = TaskUpdate {
            name: "web.1".into(),
            weight: None,
            state: None,
        };
        assert_eq!(
            err(
                &s,
                update(
                    "web",
                    ServiceUpdate {
                        task_update: vec![none],
                        ..Default::default()
                    }
                )
            ),
            (
                ErrorCode::Invalid,
                r#"the update of task "web.1" changes nothing: give weight= and/or state="#.into()
            )
        );
        let missing = TaskUpdate {
            name: "web.9".into(),
            weight: Some(2),
            state: None,
        };
        assert_eq!(
            err(
                &s,
                update(
                    "web",
                    ServiceUpdate {
                        task_update: vec![missing],
                        ..Default::default()
                    }
                )
            )
            .1,
            r#"task "web.9" not found in service "web""#
        );
    }

    #[test]
    fn affinity_turns_on_keeps_its_timeout_and_turns_off() {
        let s = sample();
        let set = |s: &State, mode: Option<AffinityMode>, t: Option<u32>| {
            let c = update(
                "web",
                ServiceUpdate {
                    affinity: mode,
                    affinity_timeout_s: t,
                    ..Default::default()
                },
            );
            ok(s, c)
        };
        let aff = |s: &State| s.services[0].affinity;
        let on = set(&s, Some(AffinityMode::ClientIp), None);
        assert_eq!(
            aff(&on),
            Some(Affinity::ClientIp {
                timeout_s: Affinity::DEFAULT_TIMEOUT_S
            })
        );
        let ten = set(&on, None, Some(600));
        assert_eq!(aff(&ten), Some(Affinity::ClientIp { timeout_s: 600 }));
        // On again (or a scheduler change) keeps the timeout.
        assert_eq!(
            aff(&set(&ten, Some(AffinityMode::ClientIp), None)),
            aff(&ten)
        );
        assert_eq!(aff(&set(&ten, Some(AffinityMode::None), None)), None);
        let no = |s: &State, mode, t| {
            err(
                s,
                update(
                    "web",
                    ServiceUpdate {
                        affinity: mode,
                        affinity_timeout_s: t,
                        ..Default::default()
                    },
                ),
            )
        };
        let want = (
            ErrorCode::Invalid,
            r#"service "web" has no affinity to time out: give --affinity client-ip with --affinity-timeout"#.to_string(),
        );
        assert_eq!(no(&s, None, Some(60)), want);
        assert_eq!(no(&ten, Some(AffinityMode::None), Some(60)), want);
        // The state's own checks: a timeout of 0 or past a day.
        for (t, what) in [
            (0, "affinity timeout 0s is out of range"),
            (86_401, "(1s to 24h"),
        ] {
            let c = update(
                "web",
                ServiceUpdate {
                    affinity: Some(AffinityMode::ClientIp),
                    affinity_timeout_s: Some(t),
                    ..Default::default()
                },
            );
            let next = apply(&s, &c).unwrap().unwrap();
            let e = crate::validate(&next).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn service_update_networks_and_settings() {
        let s = sample();
        let s2 = ok(
            &s,
            update(
                "web",
                ServiceUpdate {
                    network_rm: vec!["appnet".into()],
                    network_add: vec![ServiceNetwork {
                        network: "appnet".into(),
                        vip: Some(Ipv4Addr::new(10, 0, 1, 9)),
                    }],
                    client_ip: Some(ClientIpMode::Keep),
                    scheduler: Some(SchedulerKind::Maglev),
                    timeouts: Some(TimeoutsUpdate {
                        udp: Some(120),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        );
        let web = &s2.services[0];
        assert_eq!(web.networks[0].vip, Some(Ipv4Addr::new(10, 0, 1, 9)));
        assert_eq!(web.client_ip, ClientIpMode::Keep);
        assert_eq!(web.scheduler, SchedulerKind::Maglev);
        assert_eq!(
            web.timeouts,
            Timeouts {
                udp: 120,
                ..Timeouts::default()
            }
        );

        let checked = ok(
            &s,
            update(
                "web",
                ServiceUpdate {
                    health: Some(HealthCheck {
                        interval_ms: 2000,
                        timeout_ms: 1000,
                        ..HealthCheck::default()
                    }),
                    ..Default::default()
                },
            ),
        );
        assert_eq!(
            checked.services[0].health.as_ref().map(|h| h.interval_ms),
            Some(2000)
        );
        let unchecked = ok(
            &checked,
            update(
                "web",
                ServiceUpdate {
                    no_health: true,
                    ..Default::default()
                },
            ),
        );
        assert_eq!(unchecked.services[0].health, None);

        // dnsrr cannot keep an ingress-mode publish (Docker refuses it too): unpublish it.
        let dnsrr = ok(
            &s,
            update(
                "web",
                ServiceUpdate {
                    endpoint_mode: Some(EndpointMode::Dnsrr),
                    publish_rm: vec![PortSpec {
                        published: 8080,
                        protocol: Protocol::Tcp,
                    }],
                    ..Default::default()
                },
            ),
        );
        assert_eq!(dnsrr.services[0].endpoint_mode, EndpointMode::Dnsrr);
        assert_eq!(
            dnsrr.services[0].networks[0].vip, None,
            "dnsrr releases the VIPs"
        );

        assert_eq!(
            err(
                &s,
                update(
                    "web",
                    ServiceUpdate {
                        network_rm: vec!["backnet".into()],
                        ..Default::default()
                    }
                )
            ),
            (
                ErrorCode::NotFound,
                r#"service "web" is not attached to network "backnet""#.into()
            )
        );
        let again = ServiceNetwork {
            network: "appnet".into(),
            vip: None,
        };
        assert_eq!(
            err(
                &s,
                update(
                    "web",
                    ServiceUpdate {
                        network_add: vec![again],
                        ..Default::default()
                    }
                )
            ),
            (
                ErrorCode::Conflict,
                r#"service "web" is already attached to network "appnet""#.into()
            )
        );
    }

    #[test]
    fn service_scale_removes_the_highest_slots() {
        let mut s = sample();
        // Out of order, and past 9 so that slots sort as numbers, not strings.
        s.services[0].tasks[2].name = "web.10".into();
        s.services[0].tasks.swap(0, 2);
        let s2 = ok(
            &s,
            Command::Change(Change::ServiceScale {
                name: "web".into(),
                replicas: 2,
            }),
        );
        let names: Vec<&str> = s2.services[0]
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["web.2", "web.1"]);
        let s3 = ok(
            &s,
            Command::Change(Change::ServiceScale {
                name: "web".into(),
                replicas: 0,
            }),
        );
        assert!(s3.services[0].tasks.is_empty());
        assert_eq!(
            ok(
                &s,
                Command::Change(Change::ServiceScale {
                    name: "web".into(),
                    replicas: 3
                })
            ),
            s
        );

        let (code, msg) = err(
            &s,
            Command::Change(Change::ServiceScale {
                name: "web".into(),
                replicas: 5,
            }),
        );
        assert_eq!(code, ErrorCode::Invalid);
        assert_eq!(
            msg,
            "service \"web\" has 3 tasks and cannot be scaled up to 5: meshd does not start containers; \
             add tasks with `meshctl service update --task-add name=web.11,node=NODE,addr=NETWORK:IP web`"
        );
        assert_eq!(
            err(
                &s,
                Command::Change(Change::ServiceScale {
                    name: "nope".into(),
                    replicas: 1
                })
            )
            .0,
            ErrorCode::NotFound
        );
    }

    #[test]
    fn task_slots() {
        assert_eq!(task_slot("web", "web.1"), Some(1));
        assert_eq!(task_slot("web", "web.12"), Some(12));
        assert_eq!(task_slot("my.web", "my.web.3"), Some(3));
        for bad in [
            "web", "web.", "web.0", "web.01", "web.x", "web.-1", "web.+1", "webs.1", "api.1",
            "web.1.2",
        ] {
            assert_eq!(task_slot("web", bad), None, "{bad}");
        }
    }

    #[test]
    fn answers() {
        let s = sample();
        assert_eq!(
            answer(
                &s,
                &Command::Query(Query::ServiceInspect { name: "web".into() })
            )
            .unwrap()["name"],
            "web"
        );
        assert_eq!(
            answer(&s, &Command::Query(Query::ServicePs { name: "web".into() }))
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            answer(&s, &Command::Query(Query::ServiceLs {}))
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            answer(&s, &Command::Query(Query::NetworkLs {}))
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            answer(&s, &Command::Query(Query::NodeLs {})).unwrap()[1]["name"],
            "n2"
        );
        assert_eq!(
            answer(
                &s,
                &Command::Query(Query::NetworkInspect {
                    name: "appnet".into()
                })
            )
            .unwrap()["vni"],
            4097
        );
        assert_eq!(
            answer(
                &s,
                &Command::Change(Change::ServiceRm { name: "web".into() })
            )
            .unwrap(),
            Value::Null
        );
        let st: State =
            serde_json::from_value(answer(&s, &Command::Query(Query::State {})).unwrap()).unwrap();
        assert_eq!(st, s);
        let e = answer(
            &s,
            &Command::Query(Query::ServiceInspect { name: "api".into() }),
        )
        .unwrap_err();
        assert_eq!(
            ErrorBody::from(e),
            ErrorBody::new(ErrorCode::NotFound, r#"service "api" not found"#)
        );
        // After a change, the answer is the changed object.
        let cmd = Command::Change(Change::ServiceScale {
            name: "web".into(),
            replicas: 1,
        });
        let next = apply(&s, &cmd).unwrap().unwrap();
        let svc: Service = serde_json::from_value(answer(&next, &cmd).unwrap()).unwrap();
        assert_eq!(svc.tasks.len(), 1);
    }
}
