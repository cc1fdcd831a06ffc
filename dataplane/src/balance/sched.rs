//! The scheduler: which task a new flow goes to. One per worker (its positions, weights and
//! counts are the worker's own: no sharing, no lock), over the balancers the compiled table
//! holds. Only a flow-table miss reaches it, as DPVS's `dp_vs_schedule` after `conn_lookup`.
//!
//! Per balancer ([`SchedulerKind`]):
//! - `rr`: strict rotation over the eligible backends (weights ignored, as IPVS's `rr`).
//! - `wrr`: nginx's smooth weighted round-robin (`ngx_http_upstream_get_peer`): at each pick
//!   every backend's `current` grows by its weight, the largest is picked and loses the total.
//!   With integer weights `wᵢ` summing to `W`, `currentᵢ = k·wᵢ − W·pᵢ(k)` after `k` picks
//!   (`pᵢ(k)` the backend's picks). The picked `current` is the largest after the weights were
//!   added, so positive, and stays above `−W` after losing `W`: no `current` ever reaches `−W`,
//!   so a backend is never a whole pick ahead of its share (`pᵢ(k) < k·wᵢ/W + 1`: no bursts).
//!   Hence after `W` picks every backend has at most, so exactly, `wᵢ`: the sequence repeats
//!   every `W` picks. Behind its share a backend can be by less than `n − 1` picks in theory;
//!   in random searches (up to 64 backends, weights to 1000) never by 1.5, and by little more
//!   than one with few backends (the property test holds it under 2). Over any window of `L`
//!   picks a backend has `L·wᵢ/W` to within one plus that lag.
//! - `lc` / `wlc`: least connections (per unit of weight for `wlc`: the smallest
//!   `activeᵢ/wᵢ`, compared as `aᵢ·wⱼ < aⱼ·wᵢ`), from the worker's own count of its live
//!   balanced flows per task ([`crate::flow::FlowTable::active`], kept where flows are made and
//!   end). Ties go to the first from a rotating start, so equal loads take turns. A pick goes
//!   only to a task at the least (weighted) count, so picks keep every task within one
//!   connection of any other (`(aᵢ − 1)/wᵢ ≤ aⱼ/wⱼ` for the task just picked); only closes
//!   spread them further, and the next picks fill the least loaded first. Each worker balances
//!   its own share of the flows, so with `W` workers per node and `N` nodes the totals a task
//!   gets from picks differ by at most `N·W` connections (weighted: per unit of weight).
//! - `maglev`: the balancer's Maglev table, by the flow's hash without the destination (alike
//!   on every node).
//!
//! Source-IP affinity ([`Balancer::affinity_ms`] > 0) is in front of any of them: a client's
//! first pick is its address's hash over the balancer's (weighted) Maglev table, the same on
//! every node and worker with nothing shared, and the worker remembers it ([`AffinityTable`])
//! until the client has opened no new flow for the timeout. While the task set stays, every pick is
//! that hash; when it changes, a remembered client keeps its task unless the task no longer
//! takes new flows (removed, weight 0, drained, unhealthy, ejected, on a node down), when it is
//! placed again by the hash.

use std::sync::Arc;

use ctl::model::SchedulerKind;

use super::table::{BalIdx, Balancer};
use super::{Backend, ServiceTable};
use crate::fastmap::mix64;

/// How many other slots of a Maglev table a pick tries when the slot's backend is on a node
/// down, before it walks the backends in order.
const MAGLEV_PROBES: u64 = 8;

/// Clients a worker's affinity table remembers (per worker, for all its balancers): 4-way
/// sets of 32-byte entries, 2 MiB, allocated when a table with affinity is first adopted.
pub const AFFINITY_ENTRIES: usize = 1 << 16;
const AFFINITY_WAYS: usize = 4;

/// What a new flow tells the scheduler.
#[derive(Debug, Clone, Copy)]
pub struct NewFlow {
    /// The flow's hash without its destination (alike on every node): Maglev's key.
    pub hash: u64,
    /// The client's address (host byte order): affinity's key.
    pub client: u32,
    /// The pipeline's clock, milliseconds (wrapping).
    pub now: u32,
}

/// Per-backend state of a `wrr`, `lc` or `wlc` balancer.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    /// Smooth weighted round-robin's `current`.
    current: i64,
    /// The backend's task counters slot: where its live flows are counted.
    slot: u16,
}

/// Where a balancer's cells are in [`Scheduler::cells`], and the backends they were made for
/// (a balancer whose backends did not change keeps its cells across tables).
#[derive(Debug, Clone, Default)]
struct Lane {
    start: usize,
    backends: Option<Arc<[Backend]>>,
}

/// A worker's scheduler: rotation positions, smooth weights and connection-count slots per
/// balancer, and the clients it remembers for affinity.
#[derive(Debug, Default)]
pub struct Scheduler {
    /// Round-robin position per balancer (also where `lc`/`wlc` start looking, for ties).
    rr: Vec<u32>,
    lanes: Vec<Lane>,
    cells: Vec<Cell>,
    /// The previous table's lanes and cells, kept to be refilled (no allocation once grown).
    spare: (Vec<Lane>, Vec<Cell>),
    affinity: Option<Box<AffinityTable>>,
    /// Clients placed by the hash but not remembered: their affinity set was full of clients
    /// seen within their timeout.
    pub affinity_full: u64,
    /// `lc`/`wlc` picks made by rotation instead (`wrr` for `wlc`): a backend's connections
    /// were not counted (its worker's task counters were full).
    pub uncounted: u64,
}

impl Scheduler {
    /// Sizes the per-balancer state for `table` (the rotation positions are kept across tables:
    /// a balancer keeps its index while the services before it do not change; a balancer whose
    /// backends are the same keeps its smooth weights). `slot` gives a task's counters slot
    /// (by uid). Allocates only when the table grew, and the affinity table when the first
    /// balancer with affinity comes.
    pub fn adopt(&mut self, table: &ServiceTable, mut slot: impl FnMut(u64) -> u16) {
        if self.rr.len() < table.balancers.len() {
            self.rr.resize(table.balancers.len(), 0);
        }
        let (mut lanes, mut cells) = std::mem::take(&mut self.spare);
        lanes.clear();
        cells.clear();
        for (i, b) in table.balancers.iter().enumerate() {
            if !matches!(
                b.scheduler,
                SchedulerKind::Wrr | SchedulerKind::Lc | SchedulerKind::Wlc
            ) || b.backends.is_empty()
            {
                lanes.push(Lane::default());
                continue;
            }
            let start = cells.len();
            let old = self.lanes.get(i).and_then(|l| {
                let same = l.backends.as_ref()?;
                Arc::ptr_eq(same, &b.backends).then_some(l.start)
            });
            for (k, be) in b.backends.iter().enumerate() {
                let current = old
                    .and_then(|o| self.cells.get(o + k))
                    .map_or(0, |c| c.current);
                cells.push(Cell {
                    current,
                    slot: slot(be.uid),
                });
            }
            lanes.push(Lane {
                start,
                backends: Some(Arc::clone(&b.backends)),
            });
        }
        self.spare = (
            std::mem::replace(&mut self.lanes, lanes),
            std::mem::replace(&mut self.cells, cells),
        );
        if self.affinity.is_none() && table.balancers.iter().any(|b| b.affinity_ms > 0) {
            self.affinity = Some(Box::new(AffinityTable::new(AFFINITY_ENTRIES)));
        }
    }

    /// Picks a backend of balancer `bal` for new flow `f`; `active` is the worker's count of
    /// live flows per task counters slot ([`crate::flow::FlowTable::active`]). `None` when the
    /// balancer has no eligible backend on a node up.
    #[inline]
    pub fn pick(
        &mut self,
        t: &ServiceTable,
        bal: BalIdx,
        f: NewFlow,
        active: &[u32],
    ) -> Option<Backend> {
        let b = t.balancer(bal);
        if b.backends.is_empty() {
            return None;
        }
        if b.affinity_ms > 0 {
            return self.sticky(t, bal, f);
        }
        match b.scheduler {
            SchedulerKind::Rr => self.rotate(t, bal),
            SchedulerKind::Maglev => match &b.maglev {
                Some(m) => {
                    let i = maglev_pick(t, b, m, f.hash)?;
                    b.backends.get(i).copied()
                }
                None => self.rotate(t, bal),
            },
            SchedulerKind::Wrr => self.smooth(t, bal),
            SchedulerKind::Lc => self.least(t, bal, active, false),
            SchedulerKind::Wlc => self.least(t, bal, active, true),
        }
    }

    /// Strict rotation; backends on a node down are passed over.
    #[inline]
    fn rotate(&mut self, t: &ServiceTable, bal: BalIdx) -> Option<Backend> {
        let b = t.balancer(bal);
        let n = b.backends.len();
        let pos = self.rr.get_mut(usize::from(bal))?;
        let start = (*pos as usize) % n.max(1);
        let (i, x) = if t.down.any() {
            (0..n)
                .map(|k| (start + k) % n)
                .find_map(|i| Some((i, up(t, b, i)?)))?
        } else {
            (start, *b.backends.get(start)?)
        };
        *pos = u32::try_from(i).unwrap_or(0).wrapping_add(1);
        Some(x)
    }

    /// This balancer's cells, when they were made for its backends.
    #[inline]
    fn cells_of(&mut self, b: &Balancer, bal: BalIdx) -> Option<&mut [Cell]> {
        let lane = self.lanes.get(usize::from(bal))?;
        let start = lane.start;
        if !lane
            .backends
            .as_ref()
            .is_some_and(|x| Arc::ptr_eq(x, &b.backends))
        {
            return None;
        }
        self.cells.get_mut(start..start + b.backends.len())
    }

    /// nginx's smooth weighted round-robin over the backends up; rotation when the balancer's
    /// cells are missing (a table not adopted: never in the pipeline).
    fn smooth(&mut self, t: &ServiceTable, bal: BalIdx) -> Option<Backend> {
        let b = t.balancer(bal);
        let any_down = t.down.any();
        let Some(cells) = self.cells_of(b, bal) else {
            return self.rotate(t, bal);
        };
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        let mut most = i64::MIN;
        for (i, (be, c)) in b.backends.iter().zip(cells.iter_mut()).enumerate() {
            if any_down && t.down.is_down(be.node) {
                continue;
            }
            let w = i64::from(be.weight);
            c.current += w;
            total += w;
            if c.current > most {
                most = c.current;
                best = Some(i);
            }
        }
        let i = best?;
        if let Some(c) = cells.get_mut(i) {
            c.current -= total;
        }
        b.backends.get(i).copied()
    }

    /// Least connections (per unit of weight when `weighted`) over the backends up, looking
    /// from the rotation position so ties take turns.
    fn least(
        &mut self,
        t: &ServiceTable,
        bal: BalIdx,
        active: &[u32],
        weighted: bool,
    ) -> Option<Backend> {
        let b = t.balancer(bal);
        let any_down = t.down.any();
        let n = b.backends.len();
        let start = self
            .rr
            .get(usize::from(bal))
            .map_or(0, |&p| p as usize % n.max(1));
        let Some(cells) = self.cells_of(b, bal) else {
            return self.rotate(t, bal);
        };
        // (index, active, weight) of the best so far.
        let mut best: Option<(usize, u64, u64)> = None;
        let mut uncounted = false;
        for k in 0..n {
            let i = (start + k) % n;
            let (Some(be), Some(c)) = (b.backends.get(i), cells.get(i)) else {
                continue;
            };
            if any_down && t.down.is_down(be.node) {
                continue;
            }
            let Some(&a) = active.get(usize::from(c.slot)) else {
                uncounted = true;
                break;
            };
            let (a, w) = (
                u64::from(a),
                if weighted { u64::from(be.weight) } else { 1 },
            );
            if best.is_none_or(|(_, ba, bw)| a * bw < ba * w) {
                best = Some((i, a, w));
            }
        }
        if uncounted {
            self.uncounted += 1;
            return if weighted {
                self.smooth(t, bal)
            } else {
                self.rotate(t, bal)
            };
        }
        let (i, _, _) = best?;
        if let Some(pos) = self.rr.get_mut(usize::from(bal)) {
            *pos = u32::try_from(i).unwrap_or(0).wrapping_add(1);
        }
        b.backends.get(i).copied()
    }

    /// Source-IP affinity: the task this worker remembers for the client, while it still takes
    /// new flows; else the client's hash over the Maglev table, remembered.
    fn sticky(&mut self, t: &ServiceTable, bal: BalIdx, f: NewFlow) -> Option<Backend> {
        let b = t.balancer(bal);
        let m = b.maglev.as_deref()?;
        let Some(mem) = self.affinity.as_deref_mut() else {
            // Never in the pipeline (adopting a table with affinity makes the table).
            let i = maglev_pick(t, b, m, client_hash(f.client))?;
            return b.backends.get(i).copied();
        };
        let (set, way) = mem.find(f.client, b.key, f.now);
        if let Some(e) = way.and_then(|w| mem.entry_mut(set, w)) {
            if let Some(i) = usable(t, b, e.uid, e.idx) {
                e.last = f.now;
                e.ttl = b.affinity_ms;
                e.idx = u32::try_from(i).unwrap_or(u32::MAX);
                return b.backends.get(i).copied();
            }
        }
        let i = maglev_pick(t, b, m, client_hash(f.client))?;
        let be = b.backends.get(i).copied()?;
        let e = Entry {
            client: f.client,
            last: f.now,
            ttl: b.affinity_ms,
            idx: u32::try_from(i).unwrap_or(u32::MAX),
            key: b.key,
            uid: be.uid,
        };
        if !mem.put(set, way, e) {
            self.affinity_full += 1;
        }
        Some(be)
    }
}

/// Backend `i` of `b`, when its node is up.
#[inline]
fn up(t: &ServiceTable, b: &Balancer, i: usize) -> Option<Backend> {
    b.backends
        .get(i)
        .copied()
        .filter(|x| !t.down.is_down(x.node))
}

/// The backend (index) Maglev table `m` gives `hash`. While some node is down its backends are
/// passed over: the flows of backends up stay where they were and those of a backend down go
/// to other slots of the table (`MAGLEV_PROBES` of them, from the hash), then to the first
/// backend up after it: every node with the same nodes down picks alike.
#[inline]
fn maglev_pick(
    t: &ServiceTable,
    b: &Balancer,
    m: &super::maglev::Maglev,
    hash: u64,
) -> Option<usize> {
    let first = usize::from(m.lookup(hash)?);
    if !t.down.any() {
        return Some(first);
    }
    maglev_pick_up(t, b, m, hash, first)
}

#[cold]
fn maglev_pick_up(
    t: &ServiceTable,
    b: &Balancer,
    m: &super::maglev::Maglev,
    hash: u64,
    first: usize,
) -> Option<usize> {
    let n = b.backends.len();
    if up(t, b, first).is_some() {
        return Some(first);
    }
    let probed = (1..=MAGLEV_PROBES)
        .filter_map(|k| m.lookup(mix64(hash ^ k)))
        .map(usize::from)
        .find(|&i| up(t, b, i).is_some());
    probed.or_else(|| {
        (1..n)
            .map(|k| (first + k) % n)
            .find(|&i| up(t, b, i).is_some())
    })
}

/// A client address's hash for affinity (alike on every node and worker).
#[inline]
fn client_hash(client: u32) -> u64 {
    mix64(u64::from(client) ^ 0xa5f1_7e3c_0000_0000)
}

/// Where the task `uid` is among `b`'s backends (`hint`: where it was), when it still takes
/// new flows there (a backend, on a node up).
#[inline]
fn usable(t: &ServiceTable, b: &Balancer, uid: u64, hint: u32) -> Option<usize> {
    let i = match b.backends.get(hint as usize) {
        Some(x) if x.uid == uid => hint as usize,
        // The backends changed: look for it (once: the entry keeps the new place).
        _ => b.backends.iter().position(|x| x.uid == uid)?,
    };
    up(t, b, i).map(|_| i)
}

/// One remembered client: 32 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    client: u32,
    /// When the client last opened a flow through it (the pipeline's clock).
    last: u32,
    /// Its balancer's timeout (ms) when made; 0: an empty entry.
    ttl: u32,
    /// Where its task was among the balancer's backends.
    idx: u32,
    /// The balancer ([`Balancer::key`]).
    key: u64,
    uid: u64,
}

impl Entry {
    fn live(&self, now: u32) -> bool {
        self.ttl > 0 && now.wrapping_sub(self.last) <= self.ttl
    }
}

/// A worker's affinity table: clients (with their balancer) to the task they were given, in
/// sets of [`AFFINITY_WAYS`]. Bounded: a set full of clients seen within their timeout takes
/// no more (the newcomer is placed by the hash, not remembered, and counted), rather than
/// forget a client that is still coming.
#[derive(Debug)]
pub struct AffinityTable {
    entries: Box<[Entry]>,
    /// Sets − 1 (a power of two).
    mask: usize,
}

impl AffinityTable {
    /// Room for `entries` clients (rounded up to whole sets of a power of two).
    pub fn new(entries: usize) -> Self {
        let sets = (entries / AFFINITY_WAYS).next_power_of_two().max(1);
        AffinityTable {
            entries: vec![Entry::default(); sets * AFFINITY_WAYS].into_boxed_slice(),
            mask: sets - 1,
        }
    }

    /// The set of (`client`, `key`), and the way holding it if live at `now`.
    // Casts: a hash folded to a set index: keeping the low bits is the point.
    #[allow(clippy::cast_possible_truncation)]
    #[inline]
    fn find(&self, client: u32, key: u64, now: u32) -> (usize, Option<usize>) {
        let set = (mix64(u64::from(client) ^ key) as usize) & self.mask;
        let way = self
            .ways(set)
            .iter()
            .position(|e| e.client == client && e.key == key && e.live(now));
        (set, way)
    }

    fn ways(&self, set: usize) -> &[Entry] {
        let at = set * AFFINITY_WAYS;
        self.entries.get(at..at + AFFINITY_WAYS).unwrap_or(&[])
    }

    fn entry_mut(&mut self, set: usize, way: usize) -> Option<&mut Entry> {
        self.entries.get_mut(set * AFFINITY_WAYS + way)
    }

    /// Stores `e` in `set`: over `way` (the client's own entry) when given, else in an empty
    /// way or one past its timeout. `false` when every way holds a live client.
    fn put(&mut self, set: usize, way: Option<usize>, e: Entry) -> bool {
        let at = set * AFFINITY_WAYS;
        let Some(ways) = self.entries.get_mut(at..at + AFFINITY_WAYS) else {
            return false;
        };
        let free = way.or_else(|| ways.iter().position(|x| !x.live(e.last)));
        match free.and_then(|w| ways.get_mut(w)) {
            Some(slot) => {
                *slot = e;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::net::Ipv4Addr;

    use ctl::model::{Affinity as ModelAffinity, SchedulerKind};
    use proptest::prelude::*;

    use super::*;
    use crate::testkit::{task, three_nodes};

    /// A pick with no client, clock or counts (rr, maglev).
    fn pick_h(s: &mut Scheduler, t: &ServiceTable, bal: BalIdx, hash: u64) -> Option<Backend> {
        let f = NewFlow {
            hash,
            client: 0,
            now: 0,
        };
        s.pick(t, bal, f, &[])
    }

    /// `web` with one task per weight (on n1, n2, n3 in turn), balanced by `scheduler`.
    fn weighted(weights: &[u32], scheduler: SchedulerKind) -> ctl::State {
        let mut s = three_nodes();
        let web = &mut s.services[0];
        web.scheduler = scheduler;
        web.tasks.clear();
        for (i, &w) in weights.iter().enumerate() {
            let node = ["n1", "n2", "n3"][i % 3];
            let a = u8::try_from(20 + i).unwrap();
            let mut t = task(
                &format!("web.{}", i + 1),
                node,
                &[
                    ("ingress", Ipv4Addr::new(10, 0, 0, a)),
                    ("appnet", Ipv4Addr::new(10, 0, 1, a)),
                ],
            );
            t.weight = w;
            web.tasks.push(t);
        }
        s
    }

    /// The published port's balancer.
    fn port(t: &ServiceTable) -> BalIdx {
        t.published(smoltcp::wire::IpProtocol::Tcp, 8080)
            .unwrap()
            .balancer
    }

    /// Counters slots as a worker's task counters hand them out: in order of first use.
    #[derive(Default)]
    struct Slots(HashMap<u64, u16>);

    impl Slots {
        fn of(&mut self, uid: u64) -> u16 {
            let n = u16::try_from(self.0.len()).unwrap();
            *self.0.entry(uid).or_insert(n)
        }
    }

    fn adopted(t: &ServiceTable, slots: &mut Slots) -> Scheduler {
        let mut s = Scheduler::default();
        s.adopt(t, |u| slots.of(u));
        s
    }

    /// Picks by smooth WRR: after any number of picks no task is a whole pick ahead of its
    /// exact share (proved, see the module) nor two behind (observed: under 1.1 in these
    /// ranges); exactly its share after each whole cycle; within three over any window.
    fn check_smooth(weights: &[u32], cycles: usize) -> Result<(), TestCaseError> {
        let t = ServiceTable::build(&weighted(weights, SchedulerKind::Wrr), "n1", 1).unwrap();
        let bal = port(&t);
        let mut s = adopted(&t, &mut Slots::default());
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let n = weights.len();
        let index: HashMap<u64, usize> = t
            .balancer(bal)
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.uid, i))
            .collect();
        let w: Vec<u64> = t
            .balancer(bal)
            .backends
            .iter()
            .map(|b| u64::from(b.weight))
            .collect();
        // picks[k][i]: picks of backend i among the first k.
        let mut picks = vec![vec![0u64; n]];
        for k in 1..=cycles * total as usize {
            let b = pick_h(&mut s, &t, bal, k as u64).unwrap();
            let mut row = picks[k - 1].clone();
            row[index[&b.uid]] += 1;
            let k = k as u64;
            for i in 0..n {
                // picks − k·w/W in (−2, 1), in integers.
                let (p, share) = (row[i] * total, k * w[i]);
                prop_assert!(p < share + total, "ahead: k={k} i={i} {row:?} {w:?}");
                prop_assert!(p + 2 * total > share, "behind: k={k} i={i} {row:?} {w:?}");
                if k.is_multiple_of(total) {
                    prop_assert_eq!(row[i] * total, share);
                }
            }
            picks.push(row);
        }
        let len = picks.len();
        for a in 0..len {
            for b in a + 1..len.min(a + 2 * total as usize) {
                for i in 0..n {
                    let got = (picks[b][i] - picks[a][i]) * total;
                    let share = (b - a) as u64 * w[i];
                    prop_assert!(got.abs_diff(share) < 3 * total, "window {a}..{b} i={i}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn wrr_gives_each_task_its_weight_interleaved_not_in_bursts() {
        // nginx's example: weights 5, 1, 1 go a a b a c a a.
        let t = ServiceTable::build(&weighted(&[5, 1, 1], SchedulerKind::Wrr), "n1", 1).unwrap();
        let bal = port(&t);
        let mut s = adopted(&t, &mut Slots::default());
        let names: Vec<String> = (0..14)
            .map(|h| {
                t.tasks[pick_h(&mut s, &t, bal, h).unwrap().task as usize]
                    .name
                    .to_string()
            })
            .collect();
        let a = |x: &str| x.trim_start_matches("web.").to_string();
        assert_eq!(
            names.iter().map(|x| a(x)).collect::<Vec<_>>().concat(),
            "11213111121311"
        );
        check_smooth(&[3, 1], 4).unwrap();
        // Behind by a whole pick, never ahead by one: 1, 1, 1, 6, 6.
        check_smooth(&[1, 1, 1, 6, 6], 2).unwrap();
        // rr ignores the weights (IPVS's rr): 5, 1, 1 alternate.
        let t = ServiceTable::build(&weighted(&[5, 1, 1], SchedulerKind::Rr), "n1", 1).unwrap();
        let mut s = adopted(&t, &mut Slots::default());
        let mut count: HashMap<u64, usize> = HashMap::new();
        for h in 0..30 {
            *count
                .entry(pick_h(&mut s, &t, port(&t), h).unwrap().uid)
                .or_default() += 1;
        }
        assert!(count.values().all(|&c| c == 10), "{count:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn wrr_is_never_a_pick_ahead_of_the_weights_and_exact_each_cycle(
            weights in proptest::collection::vec(1u32..21, 1..9),
            cycles in 1usize..4,
        ) {
            check_smooth(&weights, cycles)?;
        }
    }

    #[test]
    fn wrr_keeps_its_place_across_a_table_whose_balancer_did_not_change() {
        let state = weighted(&[2, 1], SchedulerKind::Wrr);
        let t = ServiceTable::build(&state, "n1", 1).unwrap();
        let bal = port(&t);
        let mut slots = Slots::default();
        let mut s = adopted(&t, &mut slots);
        let first = pick_h(&mut s, &t, bal, 0).unwrap();
        // A patch of another service keeps this balancer's backends: the next pick goes on.
        let mut next = state.clone();
        let mut other = ctl::model::Service::new("other");
        other.networks.push(ctl::model::ServiceNetwork {
            network: "appnet".into(),
            vip: Some(Ipv4Addr::new(10, 0, 1, 99)),
        });
        next.services.push(other);
        let t2 = t
            .patch(
                &next,
                &std::iter::once("other".to_string()).collect(),
                2,
                &Default::default(),
            )
            .unwrap();
        s.adopt(&t2, |u| slots.of(u));
        let second = pick_h(&mut s, &t2, bal, 0).unwrap();
        let third = pick_h(&mut s, &t2, bal, 0).unwrap();
        // 2, 1: a b a — the second pick is the light task, the third the heavy one again.
        assert_ne!(first.uid, second.uid);
        assert_eq!(first.uid, third.uid);
    }

    /// One step of a connection churn: open a connection from a client, or close the k-th open
    /// one.
    #[derive(Debug, Clone)]
    enum Step {
        Open,
        Close(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        proptest::collection::vec(
            prop_oneof![3 => Just(Step::Open), 2 => (0usize..1000).prop_map(Step::Close)],
            1..300,
        )
    }

    /// Runs `steps` through an lc or wlc scheduler, the active counts kept as the flow table
    /// keeps them; checks each pick went to a task at the least (weighted) count, so that
    /// after it `(a_i − 1)·w_j ≤ a_j·w_i` for every other task j.
    fn check_least(
        weights: &[u32],
        kind: SchedulerKind,
        steps: &[Step],
    ) -> Result<(), TestCaseError> {
        let t = ServiceTable::build(&weighted(weights, kind), "n1", 1).unwrap();
        let bal = port(&t);
        let mut slots = Slots::default();
        let mut s = adopted(&t, &mut slots);
        let backends = t.balancer(bal).backends.clone();
        let bslot: Vec<usize> = backends
            .iter()
            .map(|b| usize::from(slots.of(b.uid)))
            .collect();
        let mut active = vec![0u32; 64];
        let mut open: Vec<usize> = Vec::new();
        let w = |i: usize| {
            u64::from(if kind == SchedulerKind::Wlc {
                backends[i].weight
            } else {
                1
            })
        };
        for (n, step) in steps.iter().enumerate() {
            match *step {
                Step::Open => {
                    let f = NewFlow {
                        hash: n as u64,
                        client: 0,
                        now: 0,
                    };
                    let b = s.pick(&t, bal, f, &active).unwrap();
                    let i = backends.iter().position(|x| x.uid == b.uid).unwrap();
                    let slot = usize::from(slots.of(b.uid));
                    active[slot] += 1;
                    open.push(slot);
                    let a = |j: usize| u64::from(active[bslot[j]]);
                    for j in 0..backends.len() {
                        prop_assert!(
                            (a(i) - 1) * w(j) <= a(j) * w(i),
                            "picked {i} at {} over {j} at {} (weights {:?})",
                            a(i) - 1,
                            a(j),
                            weights
                        );
                    }
                }
                Step::Close(k) if !open.is_empty() => {
                    let slot = open.swap_remove(k % open.len());
                    active[slot] -= 1;
                }
                Step::Close(_) => {}
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn lc_never_picks_a_task_above_the_least_count_under_churn(
            n in 1usize..7,
            steps in steps(),
        ) {
            check_least(&vec![1; n], SchedulerKind::Lc, &steps)?;
        }

        #[test]
        fn wlc_never_picks_a_task_above_the_least_count_per_weight_under_churn(
            weights in proptest::collection::vec(1u32..9, 1..7),
            steps in steps(),
        ) {
            check_least(&weights, SchedulerKind::Wlc, &steps)?;
        }
    }

    #[test]
    fn lc_takes_turns_on_ties_and_fills_the_least_loaded_first() {
        let t = ServiceTable::build(&weighted(&[1, 1, 1], SchedulerKind::Lc), "n1", 1).unwrap();
        let bal = port(&t);
        let mut slots = Slots::default();
        let mut s = adopted(&t, &mut slots);
        let f = NewFlow {
            hash: 0,
            client: 0,
            now: 0,
        };
        // Nothing open anywhere: each pick goes to the next task, not all to the first.
        let idle = vec![0u32; 8];
        let p: Vec<u64> = (0..6)
            .map(|_| s.pick(&t, bal, f, &idle).unwrap().uid)
            .collect();
        assert_eq!(p[..3].iter().collect::<BTreeSet<_>>().len(), 3);
        assert_eq!(p[..3], p[3..]);
        // One task has 5 open, another 1: the idle one, then the one with 1, take the next.
        let b = &t.balancer(bal).backends;
        let mut active = vec![0u32; 8];
        active[usize::from(slots.of(b[0].uid))] = 5;
        active[usize::from(slots.of(b[1].uid))] = 1;
        assert_eq!(s.pick(&t, bal, f, &active).unwrap().uid, b[2].uid);
        active[usize::from(slots.of(b[2].uid))] = 1;
        let next = s.pick(&t, bal, f, &active).unwrap().uid;
        assert!(next == b[1].uid || next == b[2].uid);
        // wlc: 4 open at weight 4 is less loaded than 2 at weight 1.
        let t = ServiceTable::build(&weighted(&[4, 1], SchedulerKind::Wlc), "n1", 1).unwrap();
        let bal = port(&t);
        let mut slots = Slots::default();
        let mut s = adopted(&t, &mut slots);
        let b = t.balancer(bal).backends.clone();
        let mut active = vec![0u32; 8];
        active[usize::from(slots.of(b[0].uid))] = 4;
        active[usize::from(slots.of(b[1].uid))] = 2;
        assert_eq!(s.pick(&t, bal, f, &active).unwrap().uid, b[0].uid);
        // A task whose connections are not counted: rotation instead, counted.
        let mut s = Scheduler::default();
        s.adopt(&t, |_| u16::MAX);
        assert!(s.pick(&t, bal, f, &active).is_some());
        assert_eq!(s.uncounted, 1);
    }

    fn sticky(weights: &[u32], timeout_s: u32) -> ctl::State {
        let mut s = weighted(weights, SchedulerKind::Rr);
        s.services[0].affinity = Some(ModelAffinity::ClientIp { timeout_s });
        s
    }

    fn client_pick(s: &mut Scheduler, t: &ServiceTable, bal: BalIdx, client: u32, now: u32) -> u64 {
        // A different hash every time: only the client's address may decide.
        let f = NewFlow {
            hash: mix64(u64::from(now) ^ u64::from(client)),
            client,
            now,
        };
        s.pick(t, bal, f, &[]).unwrap().uid
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn affinity_keeps_a_client_on_its_task_on_every_worker_and_after_a_task_is_added(
            weights in proptest::collection::vec(1u32..4, 2..6),
            clients in proptest::collection::btree_set(any::<u32>(), 1..40),
        ) {
            let state = sticky(&weights, 60);
            // Two workers on two nodes: nothing shared.
            let t1 = ServiceTable::build(&state, "n1", 1).unwrap();
            let t2 = ServiceTable::build(&state, "n2", 1).unwrap();
            let bal = port(&t1);
            let (mut w1, mut w2) = (adopted(&t1, &mut Slots::default()), adopted(&t2, &mut Slots::default()));
            // A worker's clock only goes forward: every client's first connection, then each
            // one's next ones at later times (a client first seen at 0 after another seen at
            // 30,000 is a time that never comes, and its entry would take the other's place as
            // one long past).
            let mut seen = HashMap::new();
            for &c in &clients {
                seen.insert(c, client_pick(&mut w1, &t1, bal, c, 0));
            }
            for now in [1, 500, 30_000] {
                for &c in &clients {
                    prop_assert_eq!(client_pick(&mut w1, &t1, bal, c, now), seen[&c]);
                    prop_assert_eq!(client_pick(&mut w2, &t2, port(&t2), c, now), seen[&c]);
                }
            }
            // A task more: the clients seen keep their task until their timeout...
            let mut more = state.clone();
            let mut extra = task("web.9", "n3", &[("ingress", Ipv4Addr::new(10, 0, 0, 99)), ("appnet", Ipv4Addr::new(10, 0, 1, 99))]);
            extra.weight = 3;
            more.services[0].tasks.push(extra);
            let t3 = ServiceTable::build(&more, "n1", 2).unwrap();
            w1.adopt(&t3, |_| 0);
            let bal3 = port(&t3);
            for &c in &clients {
                prop_assert_eq!(client_pick(&mut w1, &t3, bal3, c, 60_000), seen[&c]);
            }
            // ... counted from their last new connection; once it passes, they are placed as a
            // worker that never saw them places them.
            let mut fresh = adopted(&t3, &mut Slots::default());
            for &c in &clients {
                let later = client_pick(&mut w1, &t3, bal3, c, 200_001);
                prop_assert_eq!(later, client_pick(&mut fresh, &t3, bal3, c, 200_001));
            }
        }
    }

    #[test]
    fn affinity_places_again_a_client_whose_task_stops_and_a_full_set_is_counted() {
        let state = sticky(&[1, 1, 1], 600);
        let t = ServiceTable::build(&state, "n1", 1).unwrap();
        let bal = port(&t);
        let mut s = adopted(&t, &mut Slots::default());
        let clients: Vec<u32> = (1..=50).collect();
        let before: Vec<u64> = clients
            .iter()
            .map(|&c| client_pick(&mut s, &t, bal, c, 0))
            .collect();
        // Every task gets clients.
        assert_eq!(before.iter().collect::<BTreeSet<_>>().len(), 3);
        // A task more (weight 3): a worker that never saw them would move some clients; this
        // one keeps every client it remembers where it was.
        let mut more = state.clone();
        let mut extra = task(
            "web.9",
            "n3",
            &[
                ("ingress", Ipv4Addr::new(10, 0, 0, 99)),
                ("appnet", Ipv4Addr::new(10, 0, 1, 99)),
            ],
        );
        extra.weight = 3;
        more.services[0].tasks.push(extra);
        let t4 = ServiceTable::build(&more, "n1", 2).unwrap();
        let mut fresh = adopted(&t4, &mut Slots::default());
        let moved = clients
            .iter()
            .zip(&before)
            .filter(|(&c, &was)| client_pick(&mut fresh, &t4, port(&t4), c, 5) != was)
            .count();
        assert!(moved > 0);
        let mut kept = adopted(&t, &mut Slots::default());
        for &c in &clients {
            client_pick(&mut kept, &t, bal, c, 0);
        }
        kept.adopt(&t4, |_| 0);
        for (&c, &was) in clients.iter().zip(&before) {
            assert_eq!(client_pick(&mut kept, &t4, port(&t4), c, 5), was);
        }
        // web.1 drained (weight 0): its clients move, the others stay.
        let mut drained = state.clone();
        drained.services[0].tasks[0].weight = 0;
        let gone = t.tasks[0].uid;
        let t2 = ServiceTable::build(&drained, "n1", 2).unwrap();
        s.adopt(&t2, |_| 0);
        for (&c, &was) in clients.iter().zip(&before) {
            let now = client_pick(&mut s, &t2, port(&t2), c, 10);
            if was == gone {
                assert_ne!(now, gone);
            } else {
                assert_eq!(now, was);
            }
        }
        // A node down: its task's clients move while it is down.
        let n3 = t2
            .balancer(port(&t2))
            .backends
            .iter()
            .find(|b| &*t2.node(b.node).name == "n3")
            .unwrap()
            .uid;
        t2.set_down(&down(&["n3"]));
        assert!(clients
            .iter()
            .all(|&c| client_pick(&mut s, &t2, port(&t2), c, 20) != n3));
        t2.set_down(&BTreeSet::new());
        // One set of four ways: the fifth client seen within the timeout is not remembered.
        let mut s = adopted(&t, &mut Slots::default());
        s.affinity = Some(Box::new(AffinityTable::new(4)));
        for c in 1..=4 {
            client_pick(&mut s, &t, bal, c, 0);
        }
        assert_eq!(s.affinity_full, 0);
        let fifth = client_pick(&mut s, &t, bal, 5, 0);
        assert_eq!(s.affinity_full, 1);
        // ... but placed by the hash all the same; after the others' timeout it finds room.
        assert_eq!(fifth, client_pick(&mut Scheduler::default(), &t, bal, 5, 0));
        client_pick(&mut s, &t, bal, 5, 600_001);
        assert_eq!(s.affinity_full, 1);
    }

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
        let mut s = adopted(&t, &mut Slots::default());
        let picks = |s: &mut Scheduler, n: usize| -> Vec<String> {
            (0..n)
                .map(|h| node_of(&t, pick_h(s, &t, bal, h as u64).unwrap()).to_string())
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
            *tasks
                .entry(pick_h(&mut s, &t, bal, h).unwrap().task)
                .or_default() += 1;
        }
        assert_eq!(tasks.len(), 4);
        assert!(tasks.values().all(|&c| c == 10), "{tasks:?}");
        // Every node down but n1 (this one)... then every node down: no task to take it.
        t.set_down(&down(&["n2", "n3"]));
        assert!(picks(&mut s, 10).iter().all(|n| n == "n1"));
        t.set_down(&down(&["n1", "n2", "n3"]));
        assert_eq!(pick_h(&mut s, &t, bal, 0), None);
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
            .map(|&h| pick_h(&mut s, &tables[0], bal, h).unwrap())
            .collect();
        for t in &tables {
            t.set_down(&down(&["n3"]));
        }
        let after: Vec<Vec<Backend>> = tables
            .iter()
            .map(|t| {
                hashes
                    .iter()
                    .map(|&h| pick_h(&mut s, t, bal, h).unwrap())
                    .collect()
            })
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
            .map(|&h| pick_h(&mut s, &tables[0], bal, h).unwrap().uid)
            .collect();
        assert_eq!(back, before.iter().map(|b| b.uid).collect::<Vec<_>>());
    }
}
