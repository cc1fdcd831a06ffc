//! Poll-mode workers: one per core, each with its own ports (one queue of each NIC), its own
//! pipeline and flow table. Workers share only lock-free things: the current service table
//! (swapped atomically), the neighbour table, per-worker handoff rings, the host-stack queues,
//! and their published counters.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balance::ServiceTable;
use crate::buf::{PacketBuf, Pool, PortId};
use crate::pipeline::{Config, Pipeline, Verdict, Verdicts};
use crate::port::{Burst, Port};
use crate::stats::DropReason;

pub use crate::shared::{new_histogram, PublishedStats, PublishedTasks, Shared, RING};

/// How a worker waits when there is nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Spin without pause (lowest latency, one core at 100%).
    BusyPoll,
    /// Spin a little, then sleep with exponential back-off up to `max`.
    Backoff { max: Duration },
}

/// Loops a backing-off worker spins with nothing to do before it sleeps, when a frame wakes it
/// (its ports have descriptors, and it has a bell). Few: it sleeps until the next frame comes,
/// so spinning longer only spends CPU between frames (64 loops cost meshd 20.9 µs of CPU a
/// packet at 30 kpps over veth, 4 loops 13.1 µs: `bench mesh`'s cost column).
const SPIN: u32 = 4;

/// Loops it spins when nothing but a timeout wakes it (DPDK's ports have no descriptor): the
/// next burst is often a few loops away, and a timed sleep would miss it by the timer's slack.
const SPIN_TIMED: u32 = 64;

/// The longest idle wait of a worker that cannot be woken (no bell, or a port without a
/// descriptor to wait on).
const UNBELLED_MAX: Duration = Duration::from_millis(5);

/// The longest idle wait of a worker whose port holds frames for another TX kick.
const UNSENT_MAX: Duration = Duration::from_millis(1);

/// A millisecond clock the worker loop reads once per iteration; the pipeline itself never
/// reads a clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Clock(Instant::now())
    }
    // Casts: milliseconds of a process's life fit u64 (584 million years).
    #[allow(clippy::cast_possible_truncation)]
    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }

    /// The clock's microseconds at `t` (to reuse one clock read; milliseconds are a
    /// thousandth of it).
    // Casts: microseconds of a process's life fit u64 (584 thousand years).
    #[allow(clippy::cast_possible_truncation)]
    pub fn us_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.0).as_micros() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A MAC as `02:42:0a:00:00:0b`.
fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// One worker: its pipeline, its two ports and a buffer pool.
pub struct Worker {
    pub id: usize,
    pub pipeline: Pipeline,
    pub uplink: Box<dyn Port + Send>,
    pub tasks: Box<dyn Port + Send>,
    pub pool: Pool,
    pool_size: usize,
    pub shared: Arc<Shared>,
    pub idle: Idle,
    pub clock: Clock,
    /// Burst processing times, nanoseconds.
    pub latency: hdrhistogram::Histogram<u64>,
    /// Bells to ring after this loop: the host thread's, and (a bit per worker) the workers
    /// frames were handed off to.
    ring_host: bool,
    ring_workers: u128,
    /// A `conn ls`/`conn rm` walk of the flow table under way ([`crate::conn`]).
    job: Option<Box<crate::conn::Job>>,
    /// A `meshctl capture` this worker copies frames for ([`crate::capture`]), and the board's
    /// generation it last looked at.
    capture: Option<Arc<crate::capture::Session>>,
    capture_generation: u64,
    /// The clock's microseconds at the start of this loop: a capture's time stamps.
    now_us: u64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("idle", &self.idle)
            .finish()
    }
}

/// Per-port output bursts of one loop iteration.
struct Out {
    uplink: Burst,
    tasks: Burst,
}

impl Worker {
    pub fn new(
        id: usize,
        cfg: Config,
        uplink: Box<dyn Port + Send>,
        tasks: Box<dyn Port + Send>,
        shared: Arc<Shared>,
        idle: Idle,
        pool_size: usize,
    ) -> Self {
        let pipeline = Pipeline::new(cfg, shared.neigh.clone());
        Self::with_pipeline(id, pipeline, uplink, tasks, shared, idle, pool_size)
    }

    /// A worker running `pipeline` (one over flows adopted at start, see
    /// [`Pipeline::with_flows`]); its clock starts now.
    pub fn with_pipeline(
        id: usize,
        pipeline: Pipeline,
        uplink: Box<dyn Port + Send>,
        tasks: Box<dyn Port + Send>,
        shared: Arc<Shared>,
        idle: Idle,
        pool_size: usize,
    ) -> Self {
        Worker {
            id,
            pipeline,
            uplink,
            tasks,
            pool: Pool::new(pool_size),
            pool_size,
            shared,
            idle,
            clock: Clock::new(),
            latency: new_histogram(),
            ring_host: false,
            ring_workers: 0,
            job: None,
            capture: None,
            capture_generation: 0,
            now_us: 0,
        }
    }

    /// Runs until `shared.stop` is set.
    pub fn run(&mut self) {
        let mut idle_for = 0u32;
        let mut last_publish = 0u64;
        let mut last_latency = 0u64;
        let mut last_tasks = 0u64;
        // The ports and the bell stay what they are for the worker's life.
        let woken = self.woken_by_frames();
        let spin = if woken { SPIN } else { SPIN_TIMED };
        while !self.shared.stop.load(Ordering::Relaxed) {
            let (busy, now) = self.poll_once();
            if now.wrapping_sub(last_publish) >= 10 {
                if let Some((ip, old, new)) = self.pipeline.take_mac_change() {
                    tracing::warn!(
                        worker = self.id,
                        address = %std::net::Ipv4Addr::from(ip),
                        old = %mac_text(old),
                        new = %mac_text(new),
                        "a neighbour's MAC changed (an ARP reply to meshd's request said so)"
                    );
                }
                self.refresh_port_counters();
                self.shared.stats[self.id].write(&self.pipeline.stats);
                self.rebalance_pool();
                last_publish = now;
            }
            if now.wrapping_sub(last_tasks) >= 250 {
                self.shared.task_stats[self.id].write(&self.pipeline.task_stats);
                last_tasks = now;
            }
            if now.wrapping_sub(last_latency) >= 1000 {
                if let Ok(mut h) = self.shared.latency[self.id].try_lock() {
                    let _ = h.add(&self.latency);
                    self.latency.reset();
                }
                last_latency = now;
            }
            if busy {
                idle_for = 0;
                continue;
            }
            idle_for = idle_for.saturating_add(1);
            match self.idle {
                Idle::BusyPoll => std::hint::spin_loop(),
                Idle::Backoff { max } => {
                    if idle_for < spin || self.pipeline.has_chores() || self.job.is_some() {
                        std::hint::spin_loop();
                    } else {
                        if idle_for == spin {
                            // Going to sleep: what the last frames counted is published now,
                            // not at the next wake.
                            self.publish_counters();
                        }
                        self.sleep(idle_for - spin, max, woken);
                    }
                }
            }
        }
        self.refresh_port_counters();
        self.publish_counters();
    }

    /// Publishes the worker's counters and per-task counters for the other threads.
    fn publish_counters(&self) {
        self.shared.stats[self.id].write(&self.pipeline.stats);
        self.shared.task_stats[self.id].write(&self.pipeline.task_stats);
    }

    /// Copies the ports' drop counters (totals since they opened) into the worker's counters,
    /// for publishing. A system call per AF_PACKET port: not for every loop.
    pub fn refresh_port_counters(&mut self) {
        let (u, t) = (self.uplink.counters(), self.tasks.counters());
        let s = &mut self.pipeline.stats;
        s.port_rx_dropped = u.rx_dropped + t.rx_dropped;
        s.port_rx_too_long = u.rx_too_long + t.rx_too_long;
        s.port_tx_full = u.tx_full + t.tx_full;
        s.port_tx_bad_len = u.tx_bad_len + t.tx_bad_len;
        s.port_tx_link_down = u.tx_link_down + t.tx_link_down;
        s.port_link_downs = u.link_downs + t.link_downs;
    }

    /// One iteration: receive a burst from each port and from the handoff ring, process, send;
    /// housekeeping. Returns whether any frame moved, and the clock's milliseconds it ran at.
    // Casts: nanoseconds of one burst fit u64 many times over.
    #[allow(clippy::cast_possible_truncation)]
    pub fn poll_once(&mut self) -> (bool, u64) {
        // One clock read per iteration: the pipeline's `now` and the burst timer's start.
        let start = Instant::now();
        // Milliseconds for the pipeline, microseconds for a capture's time stamps: one reading.
        self.now_us = self.clock.us_at(start);
        let now = self.now_us / 1000;
        let moved = self.poll_at(now);
        if moved {
            let ns = start.elapsed().as_nanos() as u64;
            let _ = self.latency.record(ns.max(1));
        }
        (moved, now)
    }

    /// One iteration at `now` (the clock's milliseconds) without reading a clock: what
    /// [`Worker::poll_once`] runs, and what the in-memory mesh of the tests drives with its own
    /// clock. Returns whether any frame moved.
    pub fn poll_at(&mut self, now: u64) -> bool {
        // A guard, not a clone of the Arc: no reference-count traffic shared between workers.
        let table = self.shared.table.load();
        let mut out = Out {
            uplink: Burst::new(),
            tasks: Burst::new(),
        };
        let mut moved = 0;
        let mut burst = Burst::new();
        let mut verdicts = Verdicts::new();
        // A capture put up or taken down: one relaxed load a loop while none is.
        let generation = self.shared.capture.generation.load(Ordering::Acquire);
        if generation != self.capture_generation {
            self.capture_generation = generation;
            self.capture = self.shared.capture.current();
            if let Some(c) = &self.capture {
                c.taken(self.id, self.now_us);
            }
        }

        for which in [PortId::Uplink, PortId::Tasks] {
            let port = match which {
                PortId::Uplink => &mut self.uplink,
                PortId::Tasks => &mut self.tasks,
            };
            port.rx_burst(&mut self.pool, &mut burst);
            for b in burst.iter_mut() {
                b.port = which;
            }
            if which == PortId::Tasks {
                // The tasks bridge tags each task's frames with its port's VLAN.
                for b in burst.iter_mut() {
                    b.untag();
                }
            }
            if let Some(c) = &self.capture {
                c.received(self.id, which, self.now_us, &burst);
            }
            moved += burst.len();
            self.run_burst(&table, now, &mut burst, &mut verdicts, &mut out);
        }
        while let Some(b) = self.shared.handoff[self.id].pop() {
            burst.push(b);
            if burst.is_full() {
                moved += burst.len();
                self.run_burst(&table, now, &mut burst, &mut verdicts, &mut out);
            }
        }
        moved += burst.len();
        self.run_burst(&table, now, &mut burst, &mut verdicts, &mut out);

        // Frames the host stack wants sent (worker 0 only, so they keep their order).
        if self.id == 0 {
            while let Some(b) = self.shared.from_host.pop() {
                let port = b.port;
                self.push_out(&mut out, port, b);
            }
        }
        // A chunk of a `conn` walk, before `maintain` sends the resets `conn rm` queued.
        let jobs = &self.shared.jobs[self.id];
        if self.job.is_none() {
            self.job = jobs.take();
        }
        if let Some(job) = self.job.as_mut() {
            if self.pipeline.serve(job, now) {
                if let Some(job) = self.job.take() {
                    jobs.finish(job);
                }
            }
        }
        let mut gen = Burst::new();
        self.pipeline
            .maintain(&table, now, &mut self.pool, &mut gen);
        for b in gen.drain(..) {
            let port = b.port;
            self.push_out(&mut out, port, b);
        }
        self.flush(&mut out);
        let passive = &mut self.pipeline.passive;
        for e in passive.events.drain(..) {
            if self.shared.seen[self.id].push(e).is_err() {
                passive.lost += 1;
            }
            self.ring_host = true;
        }
        self.pipeline.stats.passive_lost = passive.lost;
        self.shared.acks[self.id].store(table.generation, Ordering::Release);
        if self.ring_host {
            self.ring_host = false;
            self.shared.host_bell.ring();
        }
        while self.ring_workers != 0 {
            let w = self.ring_workers.trailing_zeros() as usize;
            self.ring_workers &= self.ring_workers - 1;
            if let Some(b) = self.shared.bells.get(w) {
                b.ring();
            }
        }
        moved > 0
    }

    /// Whether a frame wakes this worker from its sleep: its ports have descriptors to wait
    /// on and it has a bell (an eventfd) for everything else.
    fn woken_by_frames(&self) -> bool {
        self.shared.bells[self.id].works()
            && self.uplink.wait_fd().is_some()
            && self.tasks.wait_fd().is_some()
    }

    /// Waits for frames: in ppoll() on the ports' file descriptors and the worker's bell (a
    /// table published, frames handed to it or from the host stack) for up to `max` at once
    /// when both can wake it (`woken`, [`Worker::woken_by_frames`]), since a frame then ends
    /// the wait however long it is set (one system call per idle spell, not one per timeout).
    /// Otherwise with exponential back-off (1, 2, 4, ... µs): up to [`UNSENT_MAX`] while a
    /// port holds frames for another TX kick, up to [`UNBELLED_MAX`] without a bell (no
    /// eventfd) or a port descriptor (DPDK), in a sleep when there is no descriptor at all.
    // Casts: u64/u128 to usize or u64: lossless on the 64-bit targets meshd runs on.
    #[allow(clippy::cast_possible_truncation)]
    fn sleep(&self, step: u32, max: Duration, woken: bool) {
        let bell = &self.shared.bells[self.id];
        let port_fds = [self.uplink.wait_fd(), self.tasks.wait_fd()];
        let backoff = if self.uplink.unsent() || self.tasks.unsent() {
            // Frames wait for the next kick (a TX ring the kernel drains 32 at a time): soon,
            // but without spinning on a link that takes none.
            Some(max.min(UNSENT_MAX))
        } else if woken {
            None
        } else {
            Some(max.min(UNBELLED_MAX))
        };
        let us = match backoff {
            Some(most) => (1u64 << step.min(16)).min(most.as_micros() as u64).max(1),
            // Woken by what it waits for: the whole wait at once.
            None => (max.as_micros() as u64).max(1),
        };
        let fds: arrayvec::ArrayVec<std::os::fd::RawFd, 3> =
            port_fds.into_iter().chain([bell.fd()]).flatten().collect();
        bell.arm();
        // The last look, armed: work queued before the arm is seen here, work queued after it
        // rings.
        let waiting = !self.shared.handoff[self.id].is_empty()
            || self.shared.jobs[self.id].pending()
            || self.shared.capture.generation.load(Ordering::Acquire) != self.capture_generation
            || (self.id == 0 && !self.shared.from_host.is_empty())
            || self.shared.table.load().generation != self.pipeline.generation();
        if !waiting {
            if fds.is_empty() {
                std::thread::sleep(Duration::from_micros(us));
            } else {
                crate::port::sys::wait_readable(&fds, Duration::from_micros(us));
            }
        }
        bell.disarm();
    }

    /// Gives surplus buffers to the shared spare queue or takes some when short.
    fn rebalance_pool(&mut self) {
        while self.pool.available() > self.pool_size {
            let Some(b) = self.pool.get() else { break };
            if let Err(b) = self.shared.spare.push(b) {
                self.pool.put(b);
                break;
            }
        }
        while self.pool.available() < self.pool_size / 2 {
            let Some(b) = self.shared.spare.pop() else {
                break;
            };
            self.pool.put(b);
        }
    }

    /// Queues a frame to go out of `port` (always inlined: see [`Worker::dispatch`]).
    #[inline(always)]
    fn push_out(&mut self, out: &mut Out, port: PortId, mut b: PacketBuf) {
        if let Some(c) = &self.capture {
            c.sent(self.id, port, self.now_us, &b);
        }
        if port == PortId::Tasks && !b.tag() {
            self.pipeline.stats.drop(DropReason::NoHeadroom);
            self.pool.put(b);
            return;
        }
        let q = match port {
            PortId::Uplink => &mut out.uplink,
            PortId::Tasks => &mut out.tasks,
        };
        if q.is_full() {
            let (p, q) = match port {
                PortId::Uplink => (&mut self.uplink, &mut out.uplink),
                PortId::Tasks => (&mut self.tasks, &mut out.tasks),
            };
            p.tx_burst(q, &mut self.pool);
        }
        let q = match port {
            PortId::Uplink => &mut out.uplink,
            PortId::Tasks => &mut out.tasks,
        };
        q.push(b);
    }

    fn flush(&mut self, out: &mut Out) {
        if !out.uplink.is_empty() {
            self.uplink.tx_burst(&mut out.uplink, &mut self.pool);
        }
        if !out.tasks.is_empty() {
            self.tasks.tx_burst(&mut out.tasks, &mut self.pool);
        }
        self.uplink.flush();
        self.tasks.flush();
    }

    fn run_burst(
        &mut self,
        table: &ServiceTable,
        now: u64,
        burst: &mut Burst,
        verdicts: &mut Verdicts,
        out: &mut Out,
    ) {
        if burst.is_empty() {
            return;
        }
        self.pipeline.process(table, now, burst, verdicts);
        if !self.pipeline.has_extra() {
            for (b, v) in burst.drain(..).zip(verdicts.iter()) {
                self.dispatch(b, *v, out);
            }
            return;
        }
        // Fragments of too-big packets, and held fragments whose first fragment came: each
        // right after the frame it belongs with, so a packet's pieces leave in order.
        let mut extra = self.pipeline.take_extra().into_iter().peekable();
        for (i, (b, v)) in burst.drain(..).zip(verdicts.iter()).enumerate() {
            self.dispatch(b, *v, out);
            while let Some((b, v, _)) = extra.next_if(|e| usize::from(e.2) == i) {
                self.dispatch(b, v, out);
            }
        }
        for (b, v, _) in extra {
            self.dispatch(b, v, out);
        }
    }

    /// Sends, queues or frees one frame by its verdict. Always inlined, as is `push_out`: most
    /// frames are forwarded, and a frame passed down by value through calls is copied at each
    /// (stalls on the burst's freshly written buffers, in `perf`); the rarer verdicts have
    /// calls of their own.
    #[inline(always)]
    fn dispatch(&mut self, b: PacketBuf, v: Verdict, out: &mut Out) {
        match v {
            Verdict::Tx(port) => self.push_out(out, port, b),
            Verdict::Host(_) => self.give_host(b),
            Verdict::Handoff(w) => self.hand_off(b, w),
            Verdict::Drop(_) | Verdict::Consumed => self.pool.put(b),
        }
    }

    /// Queues a frame for the host stack.
    #[inline(never)]
    fn give_host(&mut self, b: PacketBuf) {
        // The host stack keeps frames beyond the burst: in heap buffers, not mbufs.
        let Some(b) = self.pool.keep(b) else {
            self.pipeline.stats.drop(DropReason::NoBuffer);
            return;
        };
        if let Err(b) = self.shared.to_host.push(b) {
            self.pipeline.stats.drop(DropReason::HostQueueFull);
            self.pool.put(b);
        }
        self.ring_host = true;
    }

    /// Hands a frame to worker `w`, the owner of its flow.
    #[inline(never)]
    fn hand_off(&mut self, b: PacketBuf, w: u16) {
        match self.shared.handoff.get(usize::from(w)) {
            Some(q) => {
                if let Err(b) = q.push(b) {
                    self.pipeline.stats.drop(DropReason::HandoffFull);
                    self.pool.put(b);
                }
                match 1u128.checked_shl(u32::from(w)) {
                    Some(bit) => self.ring_workers |= bit,
                    None => self.shared.bells[usize::from(w)].ring(),
                }
            }
            // Cannot happen while the pipeline and the worker agree on the worker count;
            // counted rather than lost silently if they ever do not.
            None => {
                self.pipeline.stats.drop(DropReason::HandoffFull);
                self.pool.put(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neigh::Neighbors;
    use crate::port::mem;

    #[test]
    fn port_drop_counters_reach_the_published_stats() {
        let table = ServiceTable::empty("n1", std::net::Ipv4Addr::new(10, 0, 0, 1));
        let shared = Shared::new(table, 1, Arc::new(Neighbors::new(16)));
        let (mut up, _up_peer) = mem::link(4);
        let (mut tasks, _tasks_peer) = mem::link(4);
        up.tx_full = 3;
        tasks.tx_full = 4;
        let mut w = Worker::new(
            0,
            Config::default(),
            Box::new(up),
            Box::new(tasks),
            shared.clone(),
            Idle::BusyPoll,
            16,
        );
        // The worker publishes on its own every ~10 ms and when it stops.
        shared.stop.store(true, Ordering::Relaxed);
        w.run();
        let (total, each) = shared.stats();
        assert_eq!(each[0].port_tx_full, 7);
        assert_eq!(total.port_tx_full, 7);
        assert_eq!(total.port_rx_dropped, 0);
    }

    #[test]
    fn full_queues_are_counted_by_their_reason() {
        use crate::buf::{PacketBuf, PortId};
        use crate::stats::DropReason;
        use crate::testkit;
        use std::net::Ipv4Addr as A;
        let table =
            ServiceTable::build(&crate::balance::table::tests::three_nodes(), "n1", 1).unwrap();
        let shared = Shared::new(table, 2, Arc::new(Neighbors::new(16)));
        // The host queue and worker 1's handoff ring are full.
        while shared.to_host.push(PacketBuf::new()).is_ok() {}
        while shared.handoff[1].push(PacketBuf::new()).is_ok() {}
        let (up, _up_peer) = mem::link(64);
        let (tasks, _tasks_peer) = mem::link(64);
        let cfg = Config {
            workers: 2,
            ..Config::default()
        };
        let mac = cfg.uplink_mac;
        let client = A::new(10, 9, 0, 9);
        let n1 = A::new(192, 168, 1, 11);
        // A ping of the node goes to the host side.
        let ping = testkit::icmp_echo([2; 6], mac, client, n1, 1, 1, b"x");
        assert!(up.inject(PacketBuf::from_frame(PortId::Uplink, &ping)));
        // A SYN whose flow worker 1 owns is handed to it.
        let sport = (1024u16..)
            .find(|&p| crate::flow::owner_of(u32::from(client), p, 2) == 1)
            .unwrap();
        let syn = testkit::tcp_frame(
            [2; 6],
            mac,
            client,
            sport,
            n1,
            8080,
            testkit::tcp_flags::SYN,
            1,
            0,
            b"",
        );
        assert!(up.inject(PacketBuf::from_frame(PortId::Uplink, &syn)));
        let mut w = Worker::new(
            0,
            cfg,
            Box::new(up),
            Box::new(tasks),
            shared.clone(),
            Idle::BusyPoll,
            16,
        );
        w.poll_once();
        let s = &w.pipeline.stats;
        assert_eq!(s.dropped(DropReason::HostQueueFull), 1);
        assert_eq!(s.dropped(DropReason::HandoffFull), 1);
    }
}
