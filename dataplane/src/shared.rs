//! The hub every thread shares: the current service table (swapped atomically), the neighbour
//! table, per-worker handoff rings, the host-stack queues, and each worker's published counters.
//! Workers write it without locks; the control thread, the host thread and the metrics endpoint
//! read it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;

use crate::balance::ServiceTable;
use crate::bell::Bell;
use crate::buf::PacketBuf;
use crate::neigh::Neighbors;
use ctl::proto::{LatencyReport, ServiceReport, StatsReport, TaskReport};

use crate::host::HostShared;
use crate::stats::{WorkerStats, TASK_COLS};

/// Frames per handoff ring and host queue.
pub const RING: usize = 4096;

/// Passive health events a worker may have waiting for the host side.
const SEEN: usize = 1024;

/// What all workers and the control thread share.
#[derive(Debug)]
pub struct Shared {
    pub table: ArcSwap<ServiceTable>,
    pub neigh: Arc<Neighbors>,
    pub stop: AtomicBool,
    /// The table generation each worker last finished a loop with.
    pub acks: Vec<AtomicU64>,
    /// Frames for each worker from the others (flows it owns).
    pub handoff: Vec<ArrayQueue<PacketBuf>>,
    /// Per worker: what it saw of the tasks' answers to new connections, for the host side's
    /// passive health.
    pub seen: Vec<ArrayQueue<(u64, crate::pipeline::passive::Seen)>>,
    /// Frames for the host stack, and frames the host stack wants sent.
    pub to_host: ArrayQueue<PacketBuf>,
    pub from_host: ArrayQueue<PacketBuf>,
    /// Counters each worker publishes every few milliseconds.
    pub stats: Vec<PublishedStats>,
    /// Burst processing times (ns) each worker adds in about once a second. Workers only
    /// `try_lock` it, so they never wait.
    pub latency: Vec<std::sync::Mutex<hdrhistogram::Histogram<u64>>>,
    /// Per-task counters each worker publishes about every 250 ms.
    pub task_stats: Vec<PublishedTasks>,
    /// Buffers a worker has too many of (handoffs move buffers between workers' pools) for a
    /// worker that runs short.
    pub spare: ArrayQueue<PacketBuf>,
    /// Per worker: rung when a table is published, frames are handed off to it, or (worker 0)
    /// the host stack has frames to send, so an idle worker sleeps until then.
    pub bells: Vec<Bell>,
    /// Rung when a worker queues frames or passive-health events for the host thread.
    pub host_bell: Bell,
    /// With `--io dpdk`: reads the devices' own counters and the mbuf pools for `stats`.
    pub devices: std::sync::OnceLock<DeviceStats>,
    /// Per worker: a `conn ls` or `conn rm` walk of its flow table to do, and done.
    pub jobs: Vec<crate::conn::Slot>,
    /// The last walk's number; held by the asking thread for a whole walk (one at a time).
    /// Workers never take it.
    pub job_serial: std::sync::Mutex<u64>,
    /// A `meshctl capture` under way, for the workers to copy frames into.
    pub capture: crate::capture::Board,
}

/// Reads what the DPDK devices report, on the asking (control or metrics) thread.
pub struct DeviceStats(pub Box<dyn Fn() -> ctl::proto::DpdkReport + Send + Sync>);

impl std::fmt::Debug for DeviceStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceStats")
    }
}

impl Shared {
    pub fn new(table: ServiceTable, workers: usize, neigh: Arc<Neighbors>) -> Arc<Shared> {
        Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            neigh,
            stop: AtomicBool::new(false),
            acks: (0..workers).map(|_| AtomicU64::new(u64::MAX)).collect(),
            handoff: (0..workers).map(|_| ArrayQueue::new(RING)).collect(),
            seen: (0..workers).map(|_| ArrayQueue::new(SEEN)).collect(),
            to_host: ArrayQueue::new(RING),
            from_host: ArrayQueue::new(RING),
            stats: (0..workers).map(|_| PublishedStats::default()).collect(),
            latency: (0..workers)
                .map(|_| std::sync::Mutex::new(new_histogram()))
                .collect(),
            spare: ArrayQueue::new(RING * 2),
            task_stats: (0..workers)
                .map(|_| PublishedTasks::new(crate::pipeline::MAX_COUNTED_TASKS))
                .collect(),
            bells: (0..workers).map(|_| Bell::new()).collect(),
            host_bell: Bell::new(),
            devices: std::sync::OnceLock::new(),
            jobs: (0..workers).map(|_| crate::conn::Slot::default()).collect(),
            job_serial: std::sync::Mutex::new(0),
            capture: crate::capture::Board::default(),
        })
    }

    /// Publishes a new table; returns the one it replaced once every worker has picked the
    /// new one up (no worker holds the old one then), or `Err` with the workers that had not
    /// within `timeout`.
    pub fn publish(
        &self,
        table: ServiceTable,
        timeout: Duration,
    ) -> Result<Arc<ServiceTable>, Vec<usize>> {
        let generation = table.generation;
        let old = self.table.swap(Arc::new(table));
        for b in &self.bells {
            b.ring();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<usize> = self
                .acks
                .iter()
                .enumerate()
                .filter(|(_, a)| a.load(Ordering::Acquire) != generation)
                .map(|(i, _)| i)
                .collect();
            if behind.is_empty() {
                return Ok(old);
            }
            if Instant::now() >= deadline || self.stop.load(Ordering::Relaxed) {
                return Err(behind);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// The sum of every worker's last published counters, and each worker's.
    pub fn stats(&self) -> (WorkerStats, Vec<WorkerStats>) {
        let each: Vec<WorkerStats> = self.stats.iter().map(|p| p.read()).collect();
        let mut total = WorkerStats::default();
        for s in &each {
            total.add(s);
        }
        (total, each)
    }
}

/// A worker's counters mirrored into atomics for readers on other threads.
#[derive(Debug)]
pub struct PublishedStats {
    values: [AtomicU64; WorkerStats::LEN],
}

impl Default for PublishedStats {
    fn default() -> Self {
        PublishedStats {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl PublishedStats {
    pub(crate) fn write(&self, s: &WorkerStats) {
        for (slot, v) in self.values.iter().zip(s.to_array().iter()) {
            slot.store(*v, Ordering::Relaxed);
        }
    }

    pub fn read(&self) -> WorkerStats {
        let mut a = [0u64; WorkerStats::LEN];
        for (v, slot) in a.iter_mut().zip(self.values.iter()) {
            *v = slot.load(Ordering::Relaxed);
        }
        WorkerStats::from_array(&a)
    }
}

/// A worker's per-task counters mirrored into atomics: the uid, then
/// [`crate::stats::TaskCounters`]' columns.
#[derive(Debug)]
pub struct PublishedTasks {
    rows: Box<[[AtomicU64; 1 + TASK_COLS]]>,
    len: AtomicU64,
}

impl PublishedTasks {
    pub(crate) fn new(capacity: usize) -> Self {
        let rows = (0..capacity * 2)
            .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            .collect();
        PublishedTasks {
            rows,
            len: AtomicU64::new(0),
        }
    }

    pub(crate) fn write(&self, c: &crate::stats::TaskCounters) {
        let mut n = 0;
        for ((uid, v), row) in c.iter().zip(self.rows.iter()) {
            row[0].store(uid, Ordering::Relaxed);
            for (a, x) in row[1..].iter().zip(v) {
                a.store(x, Ordering::Relaxed);
            }
            n += 1;
        }
        self.len.store(n, Ordering::Release);
    }

    /// Every published row: (uid, [packets, bytes, connections, active, inactive, dropped]).
    pub fn read(&self) -> Vec<(u64, [u64; TASK_COLS])> {
        // At most the rows' length (the writer counts the rows it filled).
        let n = usize::try_from(self.len.load(Ordering::Acquire)).unwrap_or(usize::MAX);
        self.rows
            .iter()
            .take(n)
            .map(|r| {
                let mut v = [0u64; TASK_COLS];
                for (x, a) in v.iter_mut().zip(&r[1..]) {
                    *x = a.load(Ordering::Relaxed);
                }
                (r[0].load(Ordering::Relaxed), v)
            })
            .collect()
    }
}

/// 1 ns to 10 s at 3 significant digits: fixed size, allocated once.
pub fn new_histogram() -> hdrhistogram::Histogram<u64> {
    match hdrhistogram::Histogram::new_with_bounds(1, 10_000_000_000, 3) {
        Ok(h) => h,
        // The bounds above are valid constants; `new(3)` cannot fail either.
        Err(_) => hdrhistogram::Histogram::new(3).unwrap_or_else(|_| std::process::abort()),
    }
}

/// The `stats` answer, from what the workers and the host thread publish and the table the
/// workers run (its node name and generation). Takes no lock the workers or the control thread
/// hold for long: a scrape never waits behind a state change.
pub fn report(shared: &Shared, host: Option<&HostShared>, table: &ServiceTable) -> StatsReport {
    let (total, each) = shared.stats();
    let mut hist = new_histogram();
    for h in &shared.latency {
        if let Ok(h) = h.lock() {
            let _ = hist.add(&*h);
        }
    }
    // Per-task packets, bytes, connections and drops (and per-service drops no task is blamed
    // for, under the service's uid), summed over the workers.
    let mut per_uid: std::collections::HashMap<u64, [u64; TASK_COLS]> =
        std::collections::HashMap::new();
    for w in &shared.task_stats {
        for (uid, v) in w.read() {
            let e = per_uid.entry(uid).or_default();
            for (a, b) in e.iter_mut().zip(v) {
                *a += b;
            }
        }
    }
    let services = table
        .services
        .iter()
        .filter(|s| !s.removed)
        .map(|s| {
            let tasks: Vec<TaskReport> = s
                .tasks
                .iter()
                .filter_map(|&t| table.tasks.get(t as usize))
                .map(|te| {
                    let [packets, bytes, connections, active_connections, inactive_connections, dropped] =
                        per_uid.get(&te.uid).copied().unwrap_or_default();
                    TaskReport {
                        name: te.name.to_string(),
                        node: table
                            .nodes
                            .get(usize::from(te.node))
                            .map(|n| n.name.clone())
                            .unwrap_or_default(),
                        eligible: te.eligible && !table.down.is_down(te.node),
                        health: te.health,
                        packets,
                        bytes,
                        connections,
                        active_connections,
                        inactive_connections,
                        dropped,
                    }
                })
                .collect();
            let unblamed = per_uid
                .get(&s.uid)
                .map_or(0, |v| v[crate::stats::DROPPED]);
            ServiceReport {
                name: s.name.to_string(),
                packets: tasks.iter().map(|t| t.packets).sum(),
                bytes: tasks.iter().map(|t| t.bytes).sum(),
                connections: tasks.iter().map(|t| t.connections).sum(),
                active_connections: tasks.iter().map(|t| t.active_connections).sum(),
                inactive_connections: tasks.iter().map(|t| t.inactive_connections).sum(),
                dropped: unblamed + tasks.iter().map(|t| t.dropped).sum::<u64>(),
                eligible: tasks.iter().map(|t| u64::from(t.eligible)).sum(),
                tasks,
            }
        })
        .collect();
    StatsReport {
        node: table
            .nodes
            .get(usize::from(table.local))
            .map(|n| n.name.clone())
            .unwrap_or_default(),
        generation: table.generation,
        workers: each.iter().map(WorkerStats::report).collect(),
        total: total.report(),
        burst_latency_ns: LatencyReport {
            count: hist.len(),
            p50: hist.value_at_quantile(0.5),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        },
        services,
        host: host.and_then(|h| h.stats.lock().ok().map(|s| s.clone())),
        dpdk: shared.devices.get().map(|f| (f.0)()),
    }
}
