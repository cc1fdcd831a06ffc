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
//! Swarm). A name that is not the mesh's is [`Resolution::NotOurs`] (forwarded upstream, or
//! NXDOMAIN).
//!
//! A names the IPv4 addresses above. AAAA names their IPv6 twins when the network the answer
//! comes from is dual-stack (`network create --ipv6`: each overlay address's twin is the
//! network's IPv6 prefix with the IPv4 address in its last 32 bits), with the same TTLs and in
//! the same shuffled order; on an IPv4-only network AAAA gets an empty NOERROR (the name
//! exists, with no record of that type), as does any other type. ANY gets the A records, then
//! on a dual-stack network the AAAA ones: both are the mesh's own, small, and a client asking
//! ANY wants whatever the name has (RFC 8482 would allow fewer, not more).

use std::net::{IpAddr, Ipv4Addr};

use ctl::model::EndpointMode;
use smoltcp::wire::Ipv4Address;

use super::dns::{Answer, Query, Rcode, CLASS_ANY, CLASS_IN, TYPE_A, TYPE_AAAA, TYPE_ANY};
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

/// What a name of the mesh stands for, to the asking task: IPv4 addresses (in answer order,
/// each with its TTL) on network `net`, the one the asker shares with the name.
#[derive(Debug)]
struct Found {
    net: NetIdx,
    addrs: Vec<(Ipv4Addr, u32)>,
}

impl Found {
    /// The A records.
    fn a(&self) -> impl Iterator<Item = Answer> + '_ {
        self.addrs.iter().map(|&(a, ttl)| Answer {
            addr: IpAddr::V4(a),
            ttl,
        })
    }

    /// The AAAA records: the addresses' IPv6 twins on a dual-stack network, in the same order
    /// and with the same TTLs; none on an IPv4-only one.
    fn aaaa<'a>(&'a self, t: &ServiceTable) -> impl Iterator<Item = Answer> + 'a {
        let prefix = t.subnet6(self.net);
        prefix.into_iter().flat_map(move |p| {
            self.addrs.iter().map(move |&(a, ttl)| Answer {
                addr: IpAddr::V6(p.embed(a)),
                ttl,
            })
        })
    }
}

/// The addresses on `net` of `tasks` that take new flows (eligible, on a node up).
fn task_addrs(t: &ServiceTable, tasks: &[TaskIdx], net: NetIdx) -> Vec<(Ipv4Addr, u32)> {
    tasks
        .iter()
        .filter(|&&ti| t.takes_new(ti))
        .filter_map(|&ti| t.task_addr_on(ti, net))
        .map(|a| (a, TASK_TTL))
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
    let Some(found) = lookup(t, &nets, &q.name, rng) else {
        return Resolution::NotOurs;
    };
    if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
        return Resolution::Answer {
            rcode: Rcode::Refused,
            answers: Vec::new(),
        };
    }
    // Any other type: the name exists, with no record of that type (NODATA); so is AAAA on
    // an IPv4-only network.
    let answers = match q.qtype {
        TYPE_A => found.a().collect(),
        TYPE_AAAA => found.aaaa(t).collect(),
        TYPE_ANY => found.a().chain(found.aaaa(t)).collect(),
        _ => Vec::new(),
    };
    Resolution::Answer {
        rcode: Rcode::NoError,
        answers,
    }
}

/// The addresses of `name` (lower case) for a task on `nets`, `None` when the name is not the
/// mesh's (for these networks).
fn lookup(t: &ServiceTable, nets: &[NetIdx], name: &str, rng: &mut Rng) -> Option<Found> {
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
                return Some(Found {
                    net,
                    addrs: vip.map(|a| vec![(a, VIP_TTL)]).unwrap_or_default(),
                });
            }
            let mut addrs = task_addrs(t, &svc.tasks, net);
            rng.shuffle(&mut addrs);
            return Some(Found { net, addrs });
        }
    }
    if tasks_of {
        return None;
    }
    let ti = t.task_by_name(name)?;
    let te = t.tasks.get(ti as usize)?;
    let &net = nets.iter().find(|n| t.task_addr_on(ti, **n).is_some())?;
    let addr = t.task_addr_on(ti, net)?;
    Some(Found {
        net,
        addrs: if te.alive {
            vec![(addr, TASK_TTL)]
        } else {
            Vec::new()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::table::HealthView;
    use crate::host::dns::{build_query, parse_query};
    use ctl::model::{Health, HealthCheck, Service, ServiceNetwork, State};
    use std::net::Ipv6Addr;

    /// `three_nodes` plus `api` (dnsrr) on appnet with two tasks, and `db` on its own network
    /// `backnet` with the task `tool.1` on appnet only; and the dual-stack network `dualnet`
    /// (10.0.5.0/24, fd00:5::/64) with `front` (VIP 10.0.5.2, tasks front.1 and front.2),
    /// `back6` (dnsrr, two tasks) and `cli`, whose task cli.1 is on appnet too.
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

        let mut dual = s.networks[1].clone();
        dual.name = "dualnet".into();
        dual.vni = 4099;
        dual.subnet = "10.0.5.0/24".parse().unwrap();
        dual.subnet6 = Some("fd00:5::/64".parse().unwrap());
        dual.gateway = Ipv4Addr::new(10, 0, 5, 1);
        s.networks.push(dual);
        let mut front = Service::new("front");
        front.networks.push(ServiceNetwork {
            network: "dualnet".into(),
            vip: Some(Ipv4Addr::new(10, 0, 5, 2)),
        });
        let mut back6 = Service::new("back6");
        back6.endpoint_mode = EndpointMode::Dnsrr;
        back6.networks.push(ServiceNetwork {
            network: "dualnet".into(),
            vip: None,
        });
        for i in 1..=2u8 {
            front.tasks.push(crate::testkit::task(
                &format!("front.{i}"),
                "n1",
                &[("dualnet", Ipv4Addr::new(10, 0, 5, 10 + i))],
            ));
            back6.tasks.push(crate::testkit::task(
                &format!("back6.{i}"),
                "n1",
                &[("dualnet", Ipv4Addr::new(10, 0, 5, 30 + i))],
            ));
        }
        let mut cli = Service::new("cli");
        for (net, vip) in [("appnet", 4), ("dualnet", 4)] {
            cli.networks.push(ServiceNetwork {
                network: net.into(),
                vip: Some(Ipv4Addr::new(
                    10,
                    0,
                    if net == "appnet" { 1 } else { 5 },
                    vip,
                )),
            });
        }
        cli.tasks.push(crate::testkit::task(
            "cli.1",
            "n1",
            &[
                ("dualnet", Ipv4Addr::new(10, 0, 5, 40)),
                ("appnet", Ipv4Addr::new(10, 0, 1, 40)),
            ],
        ));
        s.services.extend([front, back6, cli]);
        s
    }

    const TOOL: Ipv4Address = Ipv4Address::new(10, 0, 1, 20);
    /// cli.1 on dualnet (it is on appnet too, as 10.0.1.40).
    const CLI: Ipv4Address = Ipv4Address::new(10, 0, 5, 40);

    fn ask(t: &ServiceTable, from: Ipv4Address, name: &str, qtype: u16) -> Resolution {
        let msg = build_query(1, name, qtype, None);
        let q = parse_query(&msg).unwrap();
        let net = t.addr(from).map(|e| e.net).unwrap();
        resolve(t, from, net, &q, &mut Rng::new(7))
    }

    /// The answers' addresses, sorted; every one IPv4.
    fn addrs(r: &Resolution) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = answers(r)
            .iter()
            .map(|a| match a.addr {
                IpAddr::V4(a) => a,
                IpAddr::V6(a) => panic!("AAAA {a} in {r:?}"),
            })
            .collect();
        v.sort();
        v
    }

    /// The answers' addresses, sorted; every one IPv6.
    fn addrs6(r: &Resolution) -> Vec<Ipv6Addr> {
        let mut v: Vec<Ipv6Addr> = answers(r)
            .iter()
            .map(|a| match a.addr {
                IpAddr::V6(a) => a,
                IpAddr::V4(a) => panic!("A {a} in {r:?}"),
            })
            .collect();
        v.sort();
        v
    }

    /// The answers of a NOERROR resolution, in order.
    fn answers(r: &Resolution) -> Vec<Answer> {
        match r {
            Resolution::Answer {
                rcode: Rcode::NoError,
                answers,
            } => answers.clone(),
            other => panic!("not a NOERROR answer: {other:?}"),
        }
    }

    fn twin(last: u8) -> Ipv6Addr {
        "fd00:5::/64"
            .parse::<ctl::model::Ipv6Net>()
            .unwrap()
            .embed(Ipv4Addr::new(10, 0, 5, last))
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
                    addr: Ipv4Addr::new(10, 0, 1, 2).into(),
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
            answers(&ask(&t, TOOL, "web", TYPE_AAAA)),
            [],
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

    #[test]
    fn aaaa_on_a_dual_stack_network_names_the_ipv6_twins() {
        let t = ServiceTable::build(&state(), "n1", 1).unwrap();
        assert_eq!(twin(2), "fd00:5::a00:502".parse::<Ipv6Addr>().unwrap());
        // A service's VIP (endpoint mode vip), with the VIP's TTL.
        assert_eq!(
            ask(&t, CLI, "front", TYPE_AAAA),
            Resolution::Answer {
                rcode: Rcode::NoError,
                answers: vec![Answer {
                    addr: twin(2).into(),
                    ttl: VIP_TTL
                }]
            }
        );
        // A still names the IPv4 VIP.
        assert_eq!(
            addrs(&ask(&t, CLI, "front", TYPE_A)),
            [Ipv4Addr::new(10, 0, 5, 2)]
        );
        // tasks.SERVICE, dnsrr and a task by name: the tasks' twins, with the tasks' TTL.
        let tasks = ask(&t, CLI, "tasks.front", TYPE_AAAA);
        assert_eq!(addrs6(&tasks), [twin(11), twin(12)]);
        assert!(answers(&tasks).iter().all(|a| a.ttl == TASK_TTL));
        assert_eq!(
            addrs6(&ask(&t, CLI, "BACK6", TYPE_AAAA)),
            [twin(31), twin(32)],
            "dnsrr, any case"
        );
        assert_eq!(
            answers(&ask(&t, CLI, "front.2", TYPE_AAAA)),
            [Answer {
                addr: twin(12).into(),
                ttl: TASK_TTL
            }]
        );
        // Another type still has no record there.
        assert_eq!(addrs6(&ask(&t, CLI, "front", 15)), Vec::<Ipv6Addr>::new());
    }

    #[test]
    fn aaaa_on_an_ipv4_only_network_is_an_empty_noerror() {
        let t = ServiceTable::build(&state(), "n1", 1).unwrap();
        for name in ["web", "tasks.web", "api", "web.1"] {
            assert_eq!(
                answers(&ask(&t, TOOL, name, TYPE_AAAA)),
                [],
                "{name} from appnet"
            );
        }
        // The network the answer comes from counts: cli.1 asks through dualnet's resolver,
        // but web is on appnet (IPv4 only), which cli.1 shares with it.
        assert_eq!(answers(&ask(&t, CLI, "web", TYPE_AAAA)), []);
        assert_eq!(
            addrs(&ask(&t, CLI, "web", TYPE_A)),
            [Ipv4Addr::new(10, 0, 1, 2)]
        );
        // And cli.1 asking through appnet's resolver gets dualnet's services as ever.
        let cli_app = Ipv4Address::new(10, 0, 1, 40);
        assert_eq!(addrs6(&ask(&t, cli_app, "front", TYPE_AAAA)), [twin(2)]);
        // A name that is not the mesh's is still not ours, whatever the type.
        assert_eq!(ask(&t, CLI, "nosuch", TYPE_AAAA), Resolution::NotOurs);
        assert_eq!(ask(&t, CLI, "db", TYPE_AAAA), Resolution::NotOurs);
    }

    #[test]
    fn any_answers_both_families_on_a_dual_stack_network() {
        let t = ServiceTable::build(&state(), "n1", 1).unwrap();
        assert_eq!(
            answers(&ask(&t, CLI, "front", TYPE_ANY)),
            [
                Answer {
                    addr: Ipv4Addr::new(10, 0, 5, 2).into(),
                    ttl: VIP_TTL
                },
                Answer {
                    addr: twin(2).into(),
                    ttl: VIP_TTL
                },
            ]
        );
        let both = answers(&ask(&t, CLI, "tasks.front", TYPE_ANY));
        assert_eq!(both.len(), 4);
        // The A records first, then their twins in the same order.
        let (a, aaaa) = both.split_at(2);
        for (x, y) in a.iter().zip(aaaa) {
            let (IpAddr::V4(v4), IpAddr::V6(v6)) = (x.addr, y.addr) else {
                panic!("{both:?}")
            };
            assert_eq!(twin(v4.octets()[3]), v6);
        }
        // On an IPv4-only network, A records only.
        assert_eq!(
            addrs(&ask(&t, TOOL, "web", TYPE_ANY)),
            [Ipv4Addr::new(10, 0, 1, 2)]
        );
    }

    #[test]
    fn aaaa_gives_out_only_tasks_that_take_flows_shuffled_as_a_answers() {
        let mut s = state();
        let front = s.services.iter_mut().find(|x| x.name == "front").unwrap();
        front.tasks[0].weight = 0;
        for i in 3..=9u8 {
            front.tasks.push(crate::testkit::task(
                &format!("front.{i}"),
                "n1",
                &[("dualnet", Ipv4Addr::new(10, 0, 5, 10 + i))],
            ));
        }
        let t = ServiceTable::build(&s, "n1", 1).unwrap();
        let got = addrs6(&ask(&t, CLI, "tasks.front", TYPE_AAAA));
        assert_eq!(
            got,
            (12..=19).map(twin).collect::<Vec<_>>(),
            "weight 0 left out"
        );
        // The same random draws give the same order in both families.
        let dualnet = t.addr(CLI).map(|e| e.net).unwrap();
        let mut orders = std::collections::BTreeSet::new();
        // Odd seeds: Rng::new sets the lowest bit.
        for seed in (1..40).step_by(2) {
            let answer = |qtype| {
                let msg = build_query(1, "tasks.front", qtype, None);
                let q = parse_query(&msg).unwrap();
                answers(&resolve(&t, CLI, dualnet, &q, &mut Rng::new(seed)))
            };
            let (a, aaaa) = (answer(TYPE_A), answer(TYPE_AAAA));
            let twins: Vec<IpAddr> = a
                .iter()
                .map(|x| match x.addr {
                    IpAddr::V4(v4) => IpAddr::V6(twin(v4.octets()[3])),
                    IpAddr::V6(_) => panic!("{a:?}"),
                })
                .collect();
            assert_eq!(aaaa.iter().map(|x| x.addr).collect::<Vec<_>>(), twins);
            orders.insert(twins);
        }
        assert!(orders.len() > 10, "{} orders in 20 answers", orders.len());
    }
}
