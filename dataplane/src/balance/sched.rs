//! The scheduler: which task a new flow goes to. One per worker (its round-robin positions are
//! the worker's own: no sharing), over the balancers the compiled table holds. Only a flow-table
//! miss reaches it, as DPVS's `dp_vs_schedule` after `conn_lookup`.

use ctl::model::SchedulerKind;

use super::{Backend, ServiceTable};
use crate::fastmap::mix64;

/// How many other slots of a Maglev table a pick tries when the slot's backend is on a node
/// down, before it walks the backends in order.
const MAGLEV_PROBES: u64 = 8;

/// A worker's scheduler: strict rotation per balancer, or the balancer's Maglev table.
#[derive(Debug, Default)]
pub struct Scheduler {
    /// Round-robin position per balancer.
    rr: Vec<u32>,
}

impl Scheduler {
    /// Sizes the round-robin positions for `table` (kept across tables: a balancer keeps its
    /// index while the services before it do not change). Allocates only when the table grew.
    pub fn adopt(&mut self, table: &ServiceTable) {
        if self.rr.len() < table.balancers.len() {
            self.rr.resize(table.balancers.len(), 0);
        }
    }

    /// Picks a backend of balancer `bal` for a new flow with hash `hash`; `None` when the
    /// balancer has no eligible backend on a node up.
    #[inline]
    pub fn pick(&mut self, t: &ServiceTable, bal: u16, hash: u64) -> Option<Backend> {
        let b = t.balancer(bal);
        if b.backends.is_empty() {
            return None;
        }
        if t.down.any() {
            return self.pick_up(t, bal, hash);
        }
        match (b.scheduler, &b.maglev) {
            (SchedulerKind::Maglev, Some(m)) => m
                .lookup(hash)
                .and_then(|i| b.backends.get(usize::from(i)).copied()),
            _ => {
                let pos = self.rr.get_mut(usize::from(bal))?;
                let i = (*pos as usize) % b.backends.len();
                *pos = u32::try_from(i).unwrap_or(0).wrapping_add(1);
                b.backends.get(i).copied()
            }
        }
    }

    /// [`Scheduler::pick`] while some node is down: its backends are passed over. Round-robin
    /// takes the next backend up; Maglev keeps the flows of backends up where they were and
    /// sends those of a backend down to other slots of its table (`MAGLEV_PROBES` of them,
    /// from the flow's hash), then to the first backend up after it: every node with the same
    /// nodes down picks alike.
    #[cold]
    fn pick_up(&mut self, t: &ServiceTable, bal: u16, hash: u64) -> Option<Backend> {
        let b = t.balancer(bal);
        let up = |i: usize| {
            b.backends
                .get(i)
                .copied()
                .filter(|x| !t.down.is_down(x.node))
        };
        let n = b.backends.len();
        match (b.scheduler, &b.maglev) {
            (SchedulerKind::Maglev, Some(m)) => {
                let first = usize::from(m.lookup(hash)?);
                if let Some(x) = up(first) {
                    return Some(x);
                }
                let probed = (1..=MAGLEV_PROBES)
                    .filter_map(|k| m.lookup(mix64(hash ^ k)))
                    .find_map(|i| up(usize::from(i)));
                probed.or_else(|| (1..n).find_map(|k| up((first + k) % n)))
            }
            _ => {
                let pos = self.rr.get_mut(usize::from(bal))?;
                let start = (*pos as usize) % n;
                let (i, x) = (0..n)
                    .map(|k| (start + k) % n)
                    .find_map(|i| Some((i, up(i)?)))?;
                *pos = u32::try_from(i).unwrap_or(0).wrapping_add(1);
                Some(x)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::net::Ipv4Addr;

    use ctl::model::SchedulerKind;

    use super::*;
    use crate::testkit::{task, three_nodes};

    /// `web` with six tasks, two per node, balanced by `scheduler`.
    fn six_tasks(scheduler: SchedulerKind) -> ctl::State {
        let mut s = three_nodes();
        let web = &mut s.services[0];
        web.scheduler = scheduler;
        web.tasks.clear();
        for i in 1..=6u8 {
            let node = ["n1", "n2", "n3"][usize::from(i - 1) % 3];
            web.tasks.push(task(
                &format!("web.{i}"),
                node,
                &[
                    ("ingress", Ipv4Addr::new(10, 0, 0, 10 + i)),
                    ("appnet", Ipv4Addr::new(10, 0, 1, 10 + i)),
                ],
            ));
        }
        s
    }

    fn down(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn node_of(t: &ServiceTable, b: Backend) -> &str {
        &t.node(b.node).name
    }

    #[test]
    fn round_robin_passes_over_the_tasks_of_nodes_down_and_takes_them_back() {
        let t = ServiceTable::build(&six_tasks(SchedulerKind::Rr), "n1", 1).unwrap();
        let bal = t
            .published(smoltcp::wire::IpProtocol::Tcp, 8080)
            .unwrap()
            .balancer;
        let mut s = Scheduler::default();
        s.adopt(&t);
        let picks = |s: &mut Scheduler, n: usize| -> Vec<String> {
            (0..n)
                .map(|h| node_of(&t, s.pick(&t, bal, h as u64).unwrap()).to_string())
                .collect()
        };
        assert_eq!(picks(&mut s, 6), ["n1", "n2", "n3", "n1", "n2", "n3"]);
        assert!(t.set_down(&down(&["n3"])));
        assert!(!t.set_down(&down(&["n3"])), "nothing changed");
        let p = picks(&mut s, 40);
        assert!(p.iter().all(|n| n != "n3"), "{p:?}");
        // Each task up still gets its share: the four alternate.
        let mut tasks: HashMap<u32, usize> = HashMap::new();
        for h in 0..40 {
            *tasks.entry(s.pick(&t, bal, h).unwrap().task).or_default() += 1;
        }
        assert_eq!(tasks.len(), 4);
        assert!(tasks.values().all(|&c| c == 10), "{tasks:?}");
        // Every node down but n1 (this one)... then every node down: no task to take it.
        t.set_down(&down(&["n2", "n3"]));
        assert!(picks(&mut s, 10).iter().all(|n| n == "n1"));
        t.set_down(&down(&["n1", "n2", "n3"]));
        assert_eq!(s.pick(&t, bal, 0), None);
        t.set_down(&BTreeSet::new());
        assert!(!t.down.any());
        let p = picks(&mut s, 6);
        assert_eq!(p.iter().filter(|n| *n == "n3").count(), 2, "{p:?}");
    }

    #[test]
    fn maglev_moves_only_the_flows_of_a_node_down_and_every_node_moves_them_alike() {
        let state = six_tasks(SchedulerKind::Maglev);
        // Two ingress nodes' tables: n1's and n2's.
        let tables = ["n1", "n2"].map(|n| ServiceTable::build(&state, n, 1).unwrap());
        let bal = tables[0]
            .published(smoltcp::wire::IpProtocol::Tcp, 8080)
            .unwrap()
            .balancer;
        let mut s = Scheduler::default();
        let hashes: Vec<u64> = (0..5000u64).map(crate::fastmap::mix64).collect();
        let before: Vec<Backend> = hashes
            .iter()
            .map(|&h| s.pick(&tables[0], bal, h).unwrap())
            .collect();
        for t in &tables {
            t.set_down(&down(&["n3"]));
        }
        let after: Vec<Vec<Backend>> = tables
            .iter()
            .map(|t| hashes.iter().map(|&h| s.pick(t, bal, h).unwrap()).collect())
            .collect();
        assert_eq!(
            after[0].iter().map(|b| b.uid).collect::<Vec<_>>(),
            after[1].iter().map(|b| b.uid).collect::<Vec<_>>(),
            "both nodes pick alike"
        );
        let mut moved_to: HashMap<u64, usize> = HashMap::new();
        for (b, a) in before.iter().zip(&after[0]) {
            assert_ne!(node_of(&tables[0], *a), "n3");
            if node_of(&tables[0], *b) == "n3" {
                *moved_to.entry(a.uid).or_default() += 1;
            } else {
                assert_eq!(a.uid, b.uid, "a flow of a node up stays where it was");
            }
        }
        // The flows of n3's two tasks spread over the four others, not onto one.
        assert_eq!(moved_to.len(), 4, "{moved_to:?}");
        let moved: usize = moved_to.values().sum();
        assert!(moved_to.values().all(|&c| c * 8 > moved), "{moved_to:?}");
        // Back up: every flow where it was.
        tables[0].set_down(&BTreeSet::new());
        let back: Vec<u64> = hashes
            .iter()
            .map(|&h| s.pick(&tables[0], bal, h).unwrap().uid)
            .collect();
        assert_eq!(back, before.iter().map(|b| b.uid).collect::<Vec<_>>());
    }
}
