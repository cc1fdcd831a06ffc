//! The cluster's desired state as keys of a distributed store (etcd; issue 14): one key per
//! object, so a change writes only what it changes, whatever the cluster's size.
//!
//! ```text
//! /meshd/v1/nodes/<node>              a Node, as JSON
//! /meshd/v1/networks/<network>        a Network (with an encrypted network's keys)
//! /meshd/v1/services/<service>        a Service without its tasks
//! /meshd/v1/tasks/<service>/<task>    one Task of the service
//! /meshd/v1/generation                the number of changes made (each change's guard)
//! /meshd/v1/members/<node>            a running meshd ([`Member`]), under its lease
//! /meshd/v1/status/<node>             what it has applied ([`Status`]), under its lease
//! ```
//!
//! [`to_keys`] lays a [`State`] out, [`from_keys`] reads one back (refusing, with the key
//! named, a value that does not parse or a key that does not belong), and [`diff`] gives the
//! puts and deletes that turn one state's keys into another's. Pure functions: the etcd client
//! (meshd's watcher, meshctl's transactions) uses them.

use std::collections::BTreeMap;

#[cfg(feature = "cluster")]
pub mod etcd;
#[cfg(feature = "cluster")]
pub mod follow;

use crate::apply::task_slot;
use crate::model::{Node, Service, State, Task};
use crate::Network;

/// The prefix of every key, with the layout's version: a layout that changes gets `v2`, and an
/// old reader sees nothing it misreads.
pub const PREFIX: &str = "/meshd/v1/";

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Node(String),
    Network(String),
    Service(String),
    Task { service: String, task: String },
}

impl Key {
    /// The key's path in the store.
    pub fn path(&self) -> String {
        match self {
            Key::Node(n) => format!("{PREFIX}nodes/{n}"),
            Key::Network(n) => format!("{PREFIX}networks/{n}"),
            Key::Service(s) => format!("{PREFIX}services/{s}"),
            Key::Task { service, task } => format!("{PREFIX}tasks/{service}/{task}"),
        }
    }

    /// The key at `path`, if it is one of the layout's.
    pub fn parse(path: &str) -> Option<Key> {
        let rest = path.strip_prefix(PREFIX)?;
        let (kind, name) = rest.split_once('/')?;
        let plain = |n: &str| (!n.is_empty() && !n.contains('/')).then(|| n.to_string());
        match kind {
            "nodes" => plain(name).map(Key::Node),
            "networks" => plain(name).map(Key::Network),
            "services" => plain(name).map(Key::Service),
            "tasks" => {
                let (service, task) = name.split_once('/')?;
                Some(Key::Task {
                    service: plain(service)?,
                    task: plain(task)?,
                })
            }
            _ => None,
        }
    }
}

/// Where a running meshd registers itself, under its lease: the key goes when the node stops
/// or loses etcd for longer than the lease (`node ls` then says Down).
pub fn member_path(node: &str) -> String {
    format!("{PREFIX}members/{node}")
}

/// Where a meshd says which revision it has applied, under its lease.
pub fn status_path(node: &str) -> String {
    format!("{PREFIX}status/{node}")
}

/// A running meshd, as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub addr: std::net::Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<std::net::IpAddr>,
    /// meshd's version.
    pub version: String,
    pub workers: usize,
}

/// What a meshd has applied: every change of the desired state up to `revision` runs on all
/// its workers. A revision it could not apply is named in `error` (it keeps the last good one).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub revision: i64,
    /// The node's table generation running that revision.
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Refusal>,
    /// Keys of the state it left out (a value that does not parse, a key outside the layout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// A revision a node refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    pub revision: i64,
    pub message: String,
}

/// What a key of the prefix is, for a reader of the whole prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An object of the desired state.
    Object(Key),
    Generation,
    Member(String),
    Status(String),
    /// A key under the prefix that is none of these.
    Unknown,
}

/// What `path` (a key under [`PREFIX`]) holds.
pub fn entry(path: &str) -> Entry {
    if let Some(k) = Key::parse(path) {
        return Entry::Object(k);
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Entry::Unknown;
    };
    if rest == "generation" {
        return Entry::Generation;
    }
    let plain = |n: &str| !n.is_empty() && !n.contains('/');
    match rest.split_once('/') {
        Some(("members", n)) if plain(n) => Entry::Member(n.to_string()),
        Some(("status", n)) if plain(n) => Entry::Status(n.to_string()),
        _ => Entry::Unknown,
    }
}

/// Why keys do not make a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: not a key of meshd's layout ({PREFIX}nodes|networks|services/NAME, {PREFIX}tasks/SERVICE/TASK)")]
    UnknownKey { path: String },
    #[error("{path}: the value does not parse: {reason}")]
    BadValue { path: String, reason: String },
    #[error("{path}: the value names {inner:?}, the key {outer:?}")]
    NameMismatch {
        path: String,
        outer: String,
        inner: String,
    },
    #[error("{path}: a task of service {service:?}, which has no key")]
    OrphanTask { path: String, service: String },
}

impl LayoutError {
    /// The key it is about.
    pub fn path(&self) -> &str {
        match self {
            LayoutError::UnknownKey { path }
            | LayoutError::BadValue { path, .. }
            | LayoutError::NameMismatch { path, .. }
            | LayoutError::OrphanTask { path, .. } => path,
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // The model's types serialize to JSON without fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

/// The keys of `state`, by path, with their JSON values.
pub fn to_keys(state: &State) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for n in &state.nodes {
        out.insert(Key::Node(n.name.clone()).path(), json(n));
    }
    for n in &state.networks {
        out.insert(Key::Network(n.name.clone()).path(), json(n));
    }
    for s in &state.services {
        out.insert(Key::Service(s.name.clone()).path(), json(&bare(s)));
        for t in &s.tasks {
            let k = Key::Task {
                service: s.name.clone(),
                task: t.name.clone(),
            };
            out.insert(k.path(), json(t));
        }
    }
    out
}

fn parse<T: serde::de::DeserializeOwned>(path: &str, v: &[u8]) -> Result<T, LayoutError> {
    serde_json::from_slice(v).map_err(|e| LayoutError::BadValue {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

fn same_name(path: &str, outer: &str, inner: &str) -> Result<(), LayoutError> {
    if outer == inner {
        Ok(())
    } else {
        Err(LayoutError::NameMismatch {
            path: path.to_string(),
            outer: outer.to_string(),
            inner: inner.to_string(),
        })
    }
}

/// The state the keys hold (any order): nodes, networks and services by name, each service's
/// tasks by slot number (web.2 before web.10). Fails on the first key that does not belong or
/// whose value does not parse, naming it.
pub fn from_keys<'a>(
    keys: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<State, LayoutError> {
    let (state, mut skipped) = read_keys(keys);
    match skipped.is_empty() {
        true => Ok(state),
        false => Err(skipped.swap_remove(0)),
    }
}

/// One key's value, parsed (and its name checked against the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Node(Node),
    Network(Network),
    Service(Service),
    Task { service: String, task: Task },
}

/// The object at `path`, or why it is not one.
pub fn parse_object(path: &str, value: &[u8]) -> Result<Object, LayoutError> {
    match Key::parse(path) {
        Some(Key::Node(name)) => {
            let n: Node = parse(path, value)?;
            same_name(path, &name, &n.name)?;
            Ok(Object::Node(n))
        }
        Some(Key::Network(name)) => {
            let n: Network = parse(path, value)?;
            same_name(path, &name, &n.name)?;
            Ok(Object::Network(n))
        }
        Some(Key::Service(name)) => {
            let s: Service = parse(path, value)?;
            same_name(path, &name, &s.name)?;
            Ok(Object::Service(s))
        }
        Some(Key::Task { service, task }) => {
            let t: Task = parse(path, value)?;
            same_name(path, &task, &t.name)?;
            Ok(Object::Task { service, task: t })
        }
        None => Err(LayoutError::UnknownKey {
            path: path.to_string(),
        }),
    }
}

/// The state the keys hold, leaving out each key that does not belong or whose value does not
/// parse (a value written by hand with etcdctl, or by a newer meshd): those come back, each
/// naming its key, for the reader to log and count; the rest of the state still applies.
pub fn read_keys<'a>(
    keys: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> (State, Vec<LayoutError>) {
    let parsed: Vec<(&str, Result<Object, LayoutError>)> = keys
        .into_iter()
        .map(|(p, v)| (p, parse_object(p, v)))
        .collect();
    assemble(parsed.iter().map(|(p, o)| (*p, o)))
}

/// The state parsed objects make (see [`read_keys`]): what did not parse is skipped, and so is
/// a task whose service has no key.
pub fn assemble<'a>(
    objects: impl IntoIterator<Item = (&'a str, &'a Result<Object, LayoutError>)>,
) -> (State, Vec<LayoutError>) {
    let mut skipped = Vec::new();
    let mut nodes: BTreeMap<&str, Node> = BTreeMap::new();
    let mut networks: BTreeMap<&str, Network> = BTreeMap::new();
    let mut services: BTreeMap<&str, Service> = BTreeMap::new();
    let mut tasks: Vec<(&str, &str, &Task)> = Vec::new();
    for (path, o) in objects {
        match o {
            Ok(Object::Node(n)) => {
                nodes.insert(&n.name, n.clone());
            }
            Ok(Object::Network(n)) => {
                networks.insert(&n.name, n.clone());
            }
            Ok(Object::Service(s)) => {
                services.insert(&s.name, s.clone());
            }
            Ok(Object::Task { service, task }) => tasks.push((path, service, task)),
            Err(e) => skipped.push(e.clone()),
        }
    }
    for (path, service, t) in tasks {
        match services.get_mut(service) {
            Some(s) => s.tasks.push(t.clone()),
            None => skipped.push(LayoutError::OrphanTask {
                path: path.to_string(),
                service: service.to_string(),
            }),
        }
    }
    for s in services.values_mut() {
        sort_tasks(s);
    }
    let state = State {
        nodes: nodes.into_values().collect(),
        networks: networks.into_values().collect(),
        services: services.into_values().collect(),
    };
    (state, skipped)
}

/// Orders a service's tasks by slot number, then name (a name that is not `<service>.<N>` is
/// the validator's to refuse, not ours).
fn sort_tasks(s: &mut Service) {
    let name = s.name.clone();
    s.tasks.sort_by(|a, b| {
        (task_slot(&name, &a.name), &a.name).cmp(&(task_slot(&name, &b.name), &b.name))
    });
}

/// Parsed objects by path, as a follower mirrors the store.
pub type Objects = BTreeMap<String, Result<Object, LayoutError>>;

/// Every object of one kind (`nodes`, `networks`) that parses, in name order.
fn every<T: Clone>(objects: &Objects, kind: &str, pick: impl Fn(&Object) -> Option<&T>) -> Vec<T> {
    under(objects, &format!("{PREFIX}{kind}/"))
        .filter_map(|(_, o)| o.as_ref().ok().and_then(&pick).cloned())
        .collect()
}

/// The objects under `prefix`, in path order.
pub(crate) fn under<'a>(
    objects: &'a Objects,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a Result<Object, LayoutError>)> + 'a {
    objects
        .range::<str, _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        ))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

/// Service `name` as `objects` hold it (its key and its tasks' keys, as [`assemble`] makes
/// it), or `None` when its key is missing or does not parse.
pub fn assemble_service(objects: &Objects, name: &str) -> Option<Service> {
    let Some(Ok(Object::Service(s))) = objects.get(&Key::Service(name.to_string()).path()) else {
        return None;
    };
    let mut s = s.clone();
    let prefix = format!("{PREFIX}tasks/{name}/");
    for (_, o) in under(objects, &prefix) {
        if let Ok(Object::Task { task, .. }) = o {
            s.tasks.push(task.clone());
        }
    }
    sort_tasks(&mut s);
    Some(s)
}

/// What changed in the desired state, as a follower hands it to meshd.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// The whole state (the first read, or a read after etcd compacted the changes missed).
    Full(State),
    /// Only what keys touched since the last state meshd took make.
    Part(Part),
}

/// Some objects of the state, as they are now.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// Every node, when a node changed.
    pub nodes: Option<Vec<Node>>,
    /// Every network, when a network changed.
    pub networks: Option<Vec<Network>>,
    /// Each service touched, as it is now (`None`: gone).
    pub services: BTreeMap<String, Option<Service>>,
}

impl Part {
    /// What `objects` hold for the keys at `touched`: the cost follows the keys, not the
    /// store.
    pub fn of(objects: &Objects, touched: &std::collections::BTreeSet<String>) -> Part {
        let mut part = Part::default();
        for path in touched {
            match Key::parse(path) {
                Some(Key::Node(_)) if part.nodes.is_none() => {
                    part.nodes = Some(every(objects, "nodes", |o| match o {
                        Object::Node(n) => Some(n),
                        _ => None,
                    }));
                }
                Some(Key::Network(_)) if part.networks.is_none() => {
                    part.networks = Some(every(objects, "networks", |o| match o {
                        Object::Network(n) => Some(n),
                        _ => None,
                    }));
                }
                Some(Key::Service(name) | Key::Task { service: name, .. })
                    if !part.services.contains_key(&name) =>
                {
                    let s = assemble_service(objects, &name);
                    part.services.insert(name, s);
                }
                _ => {}
            }
        }
        part
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_none() && self.networks.is_none() && self.services.is_empty()
    }

    /// Makes `state` hold these objects as they are now.
    pub fn apply_to(self, state: &mut State) {
        if let Some(nodes) = self.nodes {
            state.nodes = nodes;
        }
        if let Some(networks) = self.networks {
            state.networks = networks;
        }
        for (name, s) in self.services {
            state.put_service(&name, s);
        }
    }
}

/// One write of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// The puts (new or changed keys) and deletes (keys gone) that turn `old`'s keys into `new`'s,
/// puts then deletes, each in path order. Objects are compared as they are and only the
/// changed ones serialized: a change to a store of 100,000 tasks costs one task's JSON.
pub fn diff(old: &State, new: &State) -> Vec<Op> {
    let mut puts: Vec<Op> = Vec::new();
    let mut deletes: Vec<String> = Vec::new();
    fn by_name<T>(items: &[T], name: impl Fn(&T) -> &str) -> BTreeMap<&str, &T> {
        items.iter().map(|x| (name(x), x)).collect()
    }
    fn kind<T: serde::Serialize + PartialEq>(
        old: &BTreeMap<&str, &T>,
        new: &BTreeMap<&str, &T>,
        same: impl Fn(&T, &T) -> bool,
        body: impl Fn(&T) -> Vec<u8>,
        path: impl Fn(&str) -> String,
        puts: &mut Vec<Op>,
        deletes: &mut Vec<String>,
    ) {
        for (name, n) in new {
            if !old.get(name).is_some_and(|o| same(o, n)) {
                puts.push(Op::Put(path(name), body(n)));
            }
        }
        deletes.extend(
            old.keys()
                .filter(|k| !new.contains_key(*k))
                .map(|k| path(k)),
        );
    }
    kind(
        &by_name(&old.nodes, |n| &n.name),
        &by_name(&new.nodes, |n| &n.name),
        |a, b| a == b,
        json,
        |n| Key::Node(n.to_string()).path(),
        &mut puts,
        &mut deletes,
    );
    kind(
        &by_name(&old.networks, |n| &n.name),
        &by_name(&new.networks, |n| &n.name),
        |a, b| a == b,
        json,
        |n| Key::Network(n.to_string()).path(),
        &mut puts,
        &mut deletes,
    );
    let (os, ns) = (
        by_name(&old.services, |s| &s.name),
        by_name(&new.services, |s| &s.name),
    );
    kind(
        &os,
        &ns,
        |a, b| bare(a) == bare(b),
        |s| json(&bare(s)),
        |n| Key::Service(n.to_string()).path(),
        &mut puts,
        &mut deletes,
    );
    for (name, s) in &ns {
        let empty = Vec::new();
        let before = os.get(name).map_or(&empty, |o| &o.tasks);
        kind(
            &by_name(before, |t| &t.name),
            &by_name(&s.tasks, |t| &t.name),
            |a, b| a == b,
            json,
            |t| {
                Key::Task {
                    service: name.to_string(),
                    task: t.to_string(),
                }
                .path()
            },
            &mut puts,
            &mut deletes,
        );
    }
    for (name, s) in &os {
        if !ns.contains_key(name) {
            deletes.extend(s.tasks.iter().map(|t| {
                Key::Task {
                    service: name.to_string(),
                    task: t.name.clone(),
                }
                .path()
            }));
        }
    }
    puts.sort_by(|a, b| match (a, b) {
        (Op::Put(x, _), Op::Put(y, _)) => x.cmp(y),
        _ => std::cmp::Ordering::Equal,
    });
    deletes.sort();
    puts.extend(deletes.into_iter().map(Op::Delete));
    puts
}

/// `s` without its tasks, as its key holds it (every field named: a new field of `Service` does
/// not compile here until it is carried).
fn bare(s: &Service) -> Service {
    let Service {
        name,
        endpoint_mode,
        networks,
        ports,
        timeouts,
        client_ip,
        scheduler,
        affinity,
        health,
        outlier,
        tasks: _,
    } = s;
    Service {
        name: name.clone(),
        endpoint_mode: *endpoint_mode,
        networks: networks.clone(),
        ports: ports.clone(),
        timeouts: *timeouts,
        client_ip: *client_ip,
        scheduler: *scheduler,
        affinity: *affinity,
        health: health.clone(),
        outlier: *outlier,
        tasks: Vec::new(),
    }
}

/// `state` in the order [`from_keys`] gives back: nodes, networks and services by name, tasks
/// by slot.
pub fn canonical(state: &State) -> State {
    let keys = to_keys(state);
    from_keys(keys.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap_or_default()
}

// Casts: test addresses' last bytes, below 256.
#[allow(clippy::cast_possible_truncation)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Availability, Ipv4Net, ServiceNetwork, TaskAddress};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn task(name: &str, addr: Ipv4Addr) -> Task {
        Task {
            name: name.into(),
            node: "n1".into(),
            addresses: vec![TaskAddress {
                network: "appnet".into(),
                addr,
            }],
            state: Default::default(),
            weight: 1,
            vlan: None,
        }
    }

    fn state(nodes: usize, services: &[(&str, usize)]) -> State {
        let mut s = State::default();
        for i in 0..nodes {
            s.nodes.push(Node {
                name: format!("n{}", i + 1),
                addr: Ipv4Addr::new(192, 168, 1, 10 + i as u8),
                vtep: None,
                addr6: None,
                vtep_port: 4789,
                availability: Availability::Active,
            });
        }
        s.networks.push(Network {
            subnet6: None,
            name: "appnet".into(),
            vni: 4097,
            subnet: "10.0.1.0/24".parse::<Ipv4Net>().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            ingress: false,
            endpoints: Default::default(),
            mtu: None,
            encryption: None,
        });
        for (k, (name, n)) in services.iter().enumerate() {
            let mut svc = Service::new(name);
            svc.networks.push(ServiceNetwork {
                network: "appnet".into(),
                vip: None,
            });
            for slot in 1..=*n {
                svc.tasks.push(task(
                    &format!("{name}.{slot}"),
                    Ipv4Addr::new(10, 0, 1, (100 + 20 * k + slot) as u8),
                ));
            }
            s.services.push(svc);
        }
        s
    }

    #[test]
    fn a_services_scheduler_and_affinity_go_through_its_key() {
        let mut s = state(1, &[("web", 2)]);
        s.services[0].scheduler = crate::model::SchedulerKind::Wlc;
        s.services[0].affinity = Some(crate::model::Affinity::ClientIp { timeout_s: 600 });
        s.services[0].tasks[1].weight = 3;
        let keys = to_keys(&s);
        let back = from_keys(keys.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        assert_eq!(back, canonical(&s));
        assert_eq!(back.services[0].affinity, s.services[0].affinity);
        assert_eq!(back.services[0].scheduler, crate::model::SchedulerKind::Wlc);
        // A key written before affinity existed reads as affinity off.
        let web = String::from_utf8(keys["/meshd/v1/services/web"].clone()).unwrap();
        let old = web.replace(r#","affinity":{"client_ip":{"timeout_s":600}}"#, "");
        assert_ne!(old, web);
        let svc: Service = serde_json::from_str(&old).unwrap();
        assert_eq!(svc.affinity, None);
    }

    #[test]
    fn a_state_is_laid_out_one_key_per_object_and_read_back() {
        let s = state(3, &[("web", 12), ("api", 1)]);
        let keys = to_keys(&s);
        assert_eq!(keys.len(), 3 + 1 + 2 + 13);
        assert!(keys.contains_key("/meshd/v1/nodes/n2"));
        assert!(keys.contains_key("/meshd/v1/networks/appnet"));
        assert!(keys.contains_key("/meshd/v1/services/web"));
        assert!(keys.contains_key("/meshd/v1/tasks/web/web.12"));
        // A service's key does not carry its tasks: adding a task writes one small key.
        let web = String::from_utf8(keys["/meshd/v1/services/web"].clone()).unwrap();
        assert!(!web.contains("web.1"), "{web}");
        let back = from_keys(keys.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        assert_eq!(back, canonical(&s));
        // Tasks by slot: web.2 before web.10.
        let names: Vec<&str> = back.services[1]
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(&names[..3], ["web.1", "web.2", "web.3"]);
        assert_eq!(names[11], "web.12");
    }

    #[test]
    fn a_part_brings_a_state_to_what_all_the_keys_make() {
        // Key edits as a watch delivers them: puts of good and bad values, deletes, tasks
        // whose service goes and comes back. Applying `Part::of` the touched keys to the state
        // before must give what assembling every key gives.
        let svc = |s: usize| ["web", "api", "db"][s];
        let edits = prop_oneof![
            // A task key put (0) or deleted (1): as often as the two kinds were apart.
            2 => (0..3usize, 1..6usize, 0..2u8)
                .prop_map(move |(s, t, op)| (format!("tasks/{}/{}.{t}", svc(s), svc(s)), op)),
            1 => (0..3usize).prop_map(move |s| (format!("services/{}", svc(s)), 0u8)),
            1 => (0..3usize).prop_map(move |s| (format!("services/{}", svc(s)), 1u8)),
            1 => (0..3usize).prop_map(move |s| (format!("services/{}", svc(s)), 2u8)),
            1 => (1..4usize).prop_map(|n| (format!("nodes/n{n}"), 1u8)),
            1 => Just(("bogus/x".to_string(), 0u8)),
        ];
        proptest!(|(batches in proptest::collection::vec(proptest::collection::vec(edits, 1..6), 1..6))| {
            let full = state(3, &[("web", 12), ("api", 5), ("db", 5)]);
            let all = to_keys(&full);
            let mut objects: Objects = all.iter().map(|(k, v)| (k.clone(), parse_object(k, v))).collect();
            let (mut st, _) = assemble(objects.iter().map(|(k, v)| (k.as_str(), v)));
            for batch in batches {
                let mut touched = std::collections::BTreeSet::new();
                for (rel, how) in batch {
                    let path = format!("{PREFIX}{rel}");
                    match how {
                        // Put back its value as first laid out (or a junk one for a key of no object).
                        0 => {
                            let v = all.get(&path).cloned().unwrap_or_else(|| b"{}".to_vec());
                            objects.insert(path.clone(), parse_object(&path, &v));
                        }
                        1 => {
                            objects.remove(&path);
                        }
                        _ => {
                            objects.insert(path.clone(), parse_object(&path, b"{not json"));
                        }
                    }
                    touched.insert(path);
                }
                Part::of(&objects, &touched).apply_to(&mut st);
                let (want, _) = assemble(objects.iter().map(|(k, v)| (k.as_str(), v)));
                prop_assert_eq!(&st, &want);
            }
        });
    }

    #[test]
    fn a_change_writes_only_what_it_changes() {
        let a = state(3, &[("web", 200), ("api", 1)]);
        let mut b = a.clone();
        b.services[0]
            .tasks
            .push(task("web.201", Ipv4Addr::new(10, 0, 2, 1)));
        b.services[1].tasks.clear();
        let ops = diff(&a, &b);
        assert_eq!(
            ops.iter()
                .map(|o| match o {
                    Op::Put(k, _) => format!("put {k}"),
                    Op::Delete(k) => format!("delete {k}"),
                })
                .collect::<Vec<_>>(),
            vec![
                "put /meshd/v1/tasks/web/web.201".to_string(),
                "delete /meshd/v1/tasks/api/api.1".to_string(),
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn keys_that_do_not_belong_are_refused_by_name() {
        let s = state(1, &[("web", 1)]);
        let mut keys = to_keys(&s);
        let read = |k: &BTreeMap<String, Vec<u8>>| {
            from_keys(k.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap_err()
                .to_string()
        };
        let mut bad = keys.clone();
        bad.insert("/meshd/v1/nodes/n1".into(), b"{not json".to_vec());
        assert!(read(&bad).starts_with("/meshd/v1/nodes/n1: the value does not parse"));
        let mut bad = keys.clone();
        bad.insert("/meshd/v1/gadgets/x".into(), b"{}".to_vec());
        assert!(read(&bad).contains("not a key of meshd's layout"));
        let mut bad = keys.clone();
        let v = bad.remove("/meshd/v1/nodes/n1").unwrap();
        bad.insert("/meshd/v1/nodes/n9".into(), v);
        assert!(read(&bad).contains("the value names \"n1\", the key \"n9\""));
        keys.remove("/meshd/v1/services/web");
        assert!(read(&keys).contains("a task of service \"web\", which has no key"));
        for p in [
            "/meshd/v1/nodes/",
            "/meshd/v1/tasks/web",
            "/meshd/v1/nodes/a/b",
            "/other/v1/nodes/n1",
        ] {
            assert_eq!(Key::parse(p), None, "{p}");
        }
    }

    #[test]
    fn every_key_of_the_prefix_is_known_by_its_kind() {
        assert_eq!(
            entry("/meshd/v1/tasks/web/web.1"),
            Entry::Object(Key::Task {
                service: "web".into(),
                task: "web.1".into()
            })
        );
        assert_eq!(entry("/meshd/v1/generation"), Entry::Generation);
        assert_eq!(entry("/meshd/v1/members/n2"), Entry::Member("n2".into()));
        assert_eq!(entry("/meshd/v1/status/n2"), Entry::Status("n2".into()));
        for p in [
            "/meshd/v1/members/",
            "/meshd/v1/status/a/b",
            "/meshd/v1/x",
            "/meshd/v2/nodes/n1",
        ] {
            assert_eq!(entry(p), Entry::Unknown, "{p}");
        }
        assert_eq!(member_path("n1"), "/meshd/v1/members/n1");
        assert_eq!(status_path("n1"), "/meshd/v1/status/n1");
    }

    #[test]
    fn a_bad_key_is_left_out_and_the_rest_is_read() {
        let s = state(2, &[("web", 2), ("api", 1)]);
        let mut keys = to_keys(&s);
        keys.insert("/meshd/v1/nodes/n9".into(), b"{oops".to_vec());
        keys.remove("/meshd/v1/services/api");
        let (got, skipped) = read_keys(keys.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let named: Vec<&str> = skipped.iter().map(LayoutError::path).collect();
        assert_eq!(named, ["/meshd/v1/nodes/n9", "/meshd/v1/tasks/api/api.1"]);
        let mut want = canonical(&s);
        want.services.retain(|x| x.name != "api");
        assert_eq!(got, want);
    }

    proptest! {
        #[test]
        fn keys_round_trip_and_diffs_take_one_state_to_the_other(
            nodes in 1usize..5,
            a in proptest::collection::vec(0usize..6, 0..4),
            b in proptest::collection::vec(0usize..6, 0..4),
        ) {
            let names = ["web", "api", "db", "cache"];
            let sa: Vec<(&str, usize)> = a.iter().enumerate().map(|(i, n)| (names[i], *n)).collect();
            let sb: Vec<(&str, usize)> = b.iter().enumerate().map(|(i, n)| (names[i], *n)).collect();
            let (x, y) = (state(nodes, &sa), state(nodes.max(2) - 1, &sb));
            let keys = to_keys(&x);
            let back = from_keys(keys.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
            prop_assert_eq!(&back, &canonical(&x));
            // Applying the diff to x's keys gives y's.
            let mut k = to_keys(&x);
            for op in diff(&x, &y) {
                match op {
                    Op::Put(p, v) => { k.insert(p, v); }
                    Op::Delete(p) => { k.remove(&p); }
                }
            }
            prop_assert_eq!(k, to_keys(&y));
        }
    }
}
