//! The embedded resolver's answers, from the current service table: what Docker's embedded DNS
//! server answers inside a Swarm overlay. Pure: a table, who asks, a query, a random source.
//!
//! - `SERVICE` → the service's VIP on a network the asking task shares with it (endpoint mode
//!   vip), or the addresses of its tasks there (dnsrr);
//! - `tasks.SERVICE` → the addresses of its tasks there, shuffled per answer;
//! - `TASK` (such as `web.1`) → that task's address there.
//!
//! Only tasks that take new flows are given out (running, weight > 0, node active, healthy), so
//! a task scaled away or failing its health check leaves the answers at once. A task sees only
//! services on its own networks; the ingress network is not for service discovery (as in
//! Swarm). AAAA and other types for a known name get an empty NOERROR (the mesh is IPv4); a
//! name that is not the mesh's is [`Resolution::NotOurs`] (forwarded upstream, or NXDOMAIN).

use std::net::Ipv4Addr;

use ctl::model::EndpointMode;
use smoltcp::wire::Ipv4Address;

use super::dns::{Answer, Query, Rcode, CLASS_ANY, CLASS_IN, TYPE_A, TYPE_ANY};
use crate::balance::table::{AddrKind, NetIdx, ServiceTable, TaskIdx};

/// The TTL of a VIP: stable for the service's life (Swarm's resolver says 600 too).
pub const VIP_TTL: u32 = 600;
/// The TTL of task addresses: 0, so no cache outlives a scale-down or a failed health check.
pub const TASK_TTL: u32 = 0;

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Answer from the mesh (authoritative).
    Answer { rcode: Rcode, answers: Vec<Answer> },
    /// Not a name of the mesh: forward it, or NXDOMAIN.
    NotOurs,
}

/// A small, fast random source (xorshift64*), for shuffling answers.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Fisher–Yates.
    // Casts: a remainder below i + 1, a usize.
    #[allow(clippy::cast_possible_truncation)]
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The networks the task at `from` is on, `first` first, without the ingress network.
fn networks_of(t: &ServiceTable, from: Ipv4Address, first: NetIdx) -> Option<Vec<NetIdx>> {
    let e = t.addr(from)?;
    let AddrKind::Task { task, .. } = e.kind else {
        return None;
    };
    let te = t.tasks.get(task as usize)?;
    let mut nets: Vec<NetIdx> = Vec::with_capacity(te.addrs.len());
    if te.addrs.iter().any(|(n, _)| *n == first) {
        nets.push(first);
    }
    for (n, _) in te.addrs.iter() {
        if !nets.contains(n) {
            nets.push(*n);
        }
    }
    nets.retain(|n| !t.net(*n).ingress);
    Some(nets)
}

fn v4(a: Ipv4Address) -> Ipv4Addr {
    a
}

/// The addresses on `net` of `tasks` that take new flows (eligible, on a node up).
fn task_answers(t: &ServiceTable, tasks: &[TaskIdx], net: NetIdx) -> Vec<Answer> {
    tasks
        .iter()
        .filter(|&&ti| t.takes_new(ti))
        .filter_map(|&ti| t.task_addr_on(ti, net))
        .map(|a| Answer {
            addr: v4(a),
            ttl: TASK_TTL,
        })
        .collect()
}

/// Resolves `q`, asked by the task at `from` through the resolver of network `net`.
pub fn resolve(
    t: &ServiceTable,
    from: Ipv4Address,
    net: NetIdx,
    q: &Query<'_>,
    rng: &mut Rng,
) -> Resolution {
    let Some(nets) = networks_of(t, from, net) else {
        return Resolution::NotOurs;
    };
    if !q.plain {
        return Resolution::NotOurs;
    }
    let found = lookup(t, &nets, &q.name, rng);
    let Some(mut answers) = found else {
        return Resolution::NotOurs;
    };
    if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
        return Resolution::Answer {
            rcode: Rcode::Refused,
            answers: Vec::new(),
        };
    }
    if q.qtype != TYPE_A && q.qtype != TYPE_ANY {
        // The name exists, with no record of that type (AAAA: the mesh is IPv4 only).
        answers.clear();
    }
    Resolution::Answer {
        rcode: Rcode::NoError,
        answers,
    }
}

/// The records of `name` (lower case) for a task on `nets`, `None` when the name is not the
/// mesh's (for these networks).
fn lookup(t: &ServiceTable, nets: &[NetIdx], name: &str, rng: &mut Rng) -> Option<Vec<Answer>> {
    let (svc_name, tasks_of) = match name.strip_prefix("tasks.") {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    if let Some(si) = t.service_by_name(svc_name) {
        let svc = t.services.get(usize::from(si))?;
        // The first network the asker shares with the service.
        let shared = nets.iter().find(|n| {
            svc.networks.iter().any(|(sn, _)| sn == *n)
                || svc
                    .tasks
                    .iter()
                    .any(|&ti| t.task_addr_on(ti, **n).is_some())
        });
        if let Some(&net) = shared {
            if !tasks_of && svc.endpoint_mode == EndpointMode::Vip {
                let vip = svc
                    .networks
                    .iter()
                    .find(|(n, _)| *n == net)
                    .and_then(|(_, v)| *v);
                return Some(
                    vip.map(|a| {
                        vec![Answer {
                            addr: v4(a),
                            ttl: VIP_TTL,
                        }]
                    })
                    .unwrap_or_default(),
                );
            }
            let mut answers = task_answers(t, &svc.tasks, net);
            rng.shuffle(&mut answers);
            return Some(answers);
        }
    }
    if tasks_of {
        return None;
    }
    let ti = t.task_by_name(name)?;
    let te = t.tasks.get(ti as usize)?;
    let net = nets.iter().find(|n| t.task_addr_on(ti, **n).is_some())?;
    let addr = t.task_addr_on(ti, *net)?;
    Some(if te.alive {
        vec![Answer {
            addr: v4(addr),
            ttl: TASK_TTL,
        }]
    } else {
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::table::HealthView;
    use crate::host::dns::{build_query, parse_query, TYPE_AAAA};
    use ctl::model::{Health, HealthCheck, Service, ServiceNetwork, State};

    /// `three_nodes` plus `api` (dnsrr) on appnet with two tasks, and `db` on its own network
    /// `backnet` with the task `tool.1` on appnet only.
    fn state() -> State {
        let mut s = crate::testkit::three_nodes();
        let mut back = s.networks[1].clone();
        back.name = "backnet".into();
        back.vni = 4098;
        back.subnet = "10.0.2.0/24".parse().unwrap();
        back.gateway = Ipv4Addr::new(10, 0, 2, 1);
        s.networks.push(back);
        let mut api = Service::new("api");
        api.endpoint_mode = EndpointMode::Dnsrr;
        api.networks.push(ServiceNetwork {
            network: "appnet".into(),
            vip: None,
        });
        for i in 1..=2u8 {
            api.tasks.push(crate::testkit::task(
                &format!("api.{i}"),
                "n1",
                &[("appnet", Ipv4Addr::new(10, 0, 1, 30 + i))],
            ));
        }
        let mut db = Service::new("db");
        db.networks.push(ServiceNetwork {
            network: "backnet".into(),
            vip: Some(Ipv4Addr::new(10, 0, 2, 2)),
        });
        db.tasks.push(crate::testkit::task(
            "db.1",
            "n1",
            &[("backnet", Ipv4Addr::new(10, 0, 2, 10))],
        ));
        let mut tool = Service::new("tool");
        tool.networks.push(ServiceNetwork {
            network: "appnet".into(),
            vip: Some(Ipv4Addr::new(10, 0, 1, 3)),
        });
        tool.tasks.push(crate::testkit::task(
            "tool.1",
            "n1",
            &[("appnet", Ipv4Addr::new(10, 0, 1, 20))],
        ));
        s.services.extend([api, db, tool]);
        s
    }

    const TOOL: Ipv4Address = Ipv4Address::new(10, 0, 1, 20);

    fn ask(t: &ServiceTable, from: Ipv4Address, name: &str, qtype: u16) -> Resolution {
        let msg = build_query(1, name, qtype, None);
        let q = parse_query(&msg).unwrap();
        let net = t.addr(from).map(|e| e.net).unwrap();
        resolve(t, from, net, &q, &mut Rng::new(7))
    }

    fn addrs(r: &Resolution) -> Vec<Ipv4Addr> {
        match r {
            Resolution::Answer { answers, .. } => {
                let mut v: Vec<Ipv4Addr> = answers.iter().map(|a| a.addr).collect();
                v.sort();
                v
            }
            Resolution::NotOurs => panic!("not ours"),
        }
    }

    #[test]
    fn services_resolve_to_their_vip_or_their_tasks() {
        let t = ServiceTable::build(&state(), "n1", 1).unwrap();
        let r = ask(&t, TOOL, "web", TYPE_A);
        assert_eq!(
            r,
            Resolution::Answer {
                rcode: Rcode::NoError,
                answers: vec![Answer {
                    addr: Ipv4Addr::new(10, 0, 1, 2),
                    ttl: VIP_TTL
                }]
            }
        );
        assert_eq!(
            addrs(&ask(&t, TOOL, "tasks.web", TYPE_A)),
            [Ipv4Addr::new(10, 0, 1, 11), Ipv4Addr::new(10, 0, 1, 12)]
        );
        assert_eq!(
            addrs(&ask(&t, TOOL, "API", TYPE_A)),
            [Ipv4Addr::new(10, 0, 1, 31), Ipv4Addr::new(10, 0, 1, 32)],
            "dnsrr, any case"
        );
        assert_eq!(
            addrs(&ask(&t, TOOL, "web.2", TYPE_A)),
            [Ipv4Addr::new(10, 0, 1, 12)],
            "a task by name"
        );
        assert_eq!(
            addrs(&ask(&t, TOOL, "web", TYPE_AAAA)),
            Vec::<Ipv4Addr>::new(),
            "IPv4 only: empty NOERROR"
        );
        assert_eq!(addrs(&ask(&t, TOOL, "web", 16)), Vec::<Ipv4Addr>::new());
    }

    #[test]
    fn a_task_sees_only_services_on_its_networks() {
        let t = ServiceTable::build(&state(), "n1", 1).unwrap();
        assert_eq!(ask(&t, TOOL, "db", TYPE_A), Resolution::NotOurs);
        assert_eq!(ask(&t, TOOL, "tasks.db", TYPE_A), Resolution::NotOurs);
        assert_eq!(ask(&t, TOOL, "db.1", TYPE_A), Resolution::NotOurs);
        assert_eq!(ask(&t, TOOL, "nosuch", TYPE_A), Resolution::NotOurs);
        assert_eq!(ask(&t, TOOL, "tasks.nosuch", TYPE_A), Resolution::NotOurs);
        let db1 = Ipv4Address::new(10, 0, 2, 10);
        assert_eq!(
            addrs(&ask(&t, db1, "db", TYPE_A)),
            [Ipv4Addr::new(10, 0, 2, 2)]
        );
        assert_eq!(ask(&t, db1, "web", TYPE_A), Resolution::NotOurs);
        // Only from a task: the gateway's own address or a VIP asks nothing.
        let msg = build_query(1, "web", TYPE_A, None);
        let q = parse_query(&msg).unwrap();
        assert_eq!(
            resolve(&t, Ipv4Address::new(10, 0, 1, 2), 1, &q, &mut Rng::new(1)),
            Resolution::NotOurs
        );
    }

    #[test]
    fn the_ingress_network_is_not_for_discovery() {
        let t = ServiceTable::build(&state(), "n1", 1).unwrap();
        // web.1 asks through the ingress gateway: it sees appnet's services, as appnet addresses.
        let web1_ingress = Ipv4Address::new(10, 0, 0, 11);
        assert_eq!(
            addrs(&ask(&t, web1_ingress, "tool", TYPE_A)),
            [Ipv4Addr::new(10, 0, 1, 3)]
        );
        assert_eq!(
            addrs(&ask(&t, web1_ingress, "tasks.web", TYPE_A)),
            [Ipv4Addr::new(10, 0, 1, 11), Ipv4Addr::new(10, 0, 1, 12)]
        );
        let mut s = state();
        s.services[0].networks.clear();
        for task in &mut s.services[0].tasks {
            task.addresses.retain(|a| a.network == "ingress");
        }
        let t = ServiceTable::build(&s, "n1", 1).unwrap();
        assert_eq!(ask(&t, web1_ingress, "web", TYPE_A), Resolution::NotOurs);
    }

    #[test]
    fn tasks_that_take_no_flows_are_not_given_out() {
        let mut s = state();
        s.services[0].health = Some(HealthCheck::default());
        s.services[0].tasks[0].weight = 0;
        let t = ServiceTable::build(&s, "n1", 1).unwrap();
        assert_eq!(
            addrs(&ask(&t, TOOL, "tasks.web", TYPE_A)),
            Vec::<Ipv4Addr>::new(),
            "starting tasks are not given out"
        );
        let view: HealthView = t.tasks.iter().map(|x| (x.uid, Health::Healthy)).collect();
        let t = ServiceTable::build_with(&s, "n1", 2, &view).unwrap();
        assert_eq!(
            addrs(&ask(&t, TOOL, "tasks.web", TYPE_A)),
            [Ipv4Addr::new(10, 0, 1, 12)],
            "weight 0 is not given out"
        );
        // The VIP stays: it balances over whoever is eligible.
        assert_eq!(
            addrs(&ask(&t, TOOL, "web", TYPE_A)),
            [Ipv4Addr::new(10, 0, 1, 2)]
        );
    }

    #[test]
    fn answers_are_shuffled_per_answer() {
        let mut s = state();
        for i in 3..=9u8 {
            s.services[1].tasks.push(crate::testkit::task(
                &format!("api.{i}"),
                "n1",
                &[("appnet", Ipv4Addr::new(10, 0, 1, 30 + i))],
            ));
        }
        let t = ServiceTable::build(&s, "n1", 1).unwrap();
        let msg = build_query(1, "tasks.api", TYPE_A, None);
        let q = parse_query(&msg).unwrap();
        let mut rng = Rng::new(42);
        let mut orders = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let Resolution::Answer { answers, .. } = resolve(&t, TOOL, 1, &q, &mut rng) else {
                panic!()
            };
            assert_eq!(answers.len(), 9);
            orders.insert(answers.iter().map(|a| a.addr).collect::<Vec<_>>());
        }
        assert!(
            orders.len() > 10,
            "{} different orders in 20 answers",
            orders.len()
        );
    }
}
