//! What a system spends: CPU time per delivered packet at one offered rate.
//!
//! The CPU time counted is that of every task the measurement involves, on every CPU: the bench
//! process's threads (the generator and the sink), the processes of the system under test (meshd,
//! a forwarder, testpmd) and the kernel's `ksoftirqd/N` threads. The kernel's own forwarding work
//! needs no process: a veth hands a frame on in the softirq of the thread that sent it (or in
//! `ksoftirqd` when the softirq overflows), and without `CONFIG_IRQ_TIME_ACCOUNTING` softirq time
//! is charged to the task it interrupts, so it is in one of those tasks' run time. Each task's
//! time is its scheduler run time (`/proc/<pid>/task/<tid>/schedstat`, nanoseconds, measured
//! rather than sampled on the tick), so other work on a shared machine (a compile on the other
//! core) does not count, as it would in the machine's busy time. That one is read too, as a
//! check: it says how much else ran during the step. It is the wall time of all CPUs less their
//! idle time from `/proc/stat` (measured on a tickless kernel), not `/proc/stat`'s user, system
//! and softirq columns: those are sampled on the tick, and work that wakes on a timer and sleeps
//! again before the next tick (the generator's batches, a worker's back-off) escapes them. Here a
//! thread waking every 100 µs showed 150–260 ms in those columns over 3 s, against 420 ms of run
//! time for all tasks and 500–600 ms of non-idle time.
//!
//! The same step on the bare path (the generator straight through the switch to the sink, no
//! node) gives the generator's and the sink's cost per packet, subtracted from each system's
//! in the same round: what is left is the system's own cost, the underlay hop from n1 to n2
//! included (the same bridge pass for every system).

use std::path::Path;
use std::time::Instant;

/// The scheduler run time of a task, in ns: the first field of `/proc/<pid>/task/<tid>/schedstat`
/// ("run time, wait time, time slices").
pub fn schedstat_run_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The idle time of all CPUs and their number, from `/proc/stat`: the first line (`cpu  user
/// nice system idle iowait irq softirq steal ...`, in clock ticks) gives idle + iowait, the
/// `cpuN` lines the CPUs online.
pub fn stat_idle_ticks(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let cpus = text
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some((v.get(3)? + v.get(4)?, u64::try_from(cpus).ok()?))
}

/// CPU ns per delivered packet; `None` when nothing was delivered.
pub fn per_packet_ns(cpu_ns: u64, delivered: u64) -> Option<f64> {
    (delivered > 0).then(|| cpu_ns as f64 / delivered as f64)
}

/// The system's own cost per packet: what the whole path spent per packet less what the bare
/// path (generator and sink alone) spent per packet at the same rate. Can come out slightly
/// negative when a system costs less than the noise.
pub fn own_ns(path_ns: f64, bare_ns: f64) -> f64 {
    path_ns - bare_ns
}

/// Counters read at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    /// Run time of the probed tasks, ns.
    pub tasks_ns: u64,
    /// Idle time of all CPUs (`/proc/stat`), ns.
    pub idle_ns: u64,
    /// CPUs online.
    pub cpus: u64,
    pub at: Instant,
}

/// CPU time spent between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSpent {
    /// By the probed tasks, ns.
    pub tasks_ns: u64,
    /// By the whole machine: wall time of every CPU less its idle time, ns.
    pub machine_ns: u64,
}

impl CpuSample {
    /// What was spent from `before` to `self`.
    pub fn since(&self, before: &CpuSample) -> CpuSpent {
        let wall = self.at.saturating_duration_since(before.at).as_nanos();
        let all = u64::try_from(wall)
            .unwrap_or(u64::MAX)
            .saturating_mul(self.cpus);
        CpuSpent {
            tasks_ns: self.tasks_ns.saturating_sub(before.tasks_ns),
            machine_ns: all.saturating_sub(self.idle_ns.saturating_sub(before.idle_ns)),
        }
    }
}

/// The tasks whose CPU time counts: this process's threads, the given processes' threads and
/// the kernel's softirq threads.
#[derive(Debug, Clone)]
pub struct CpuProbe {
    pids: Vec<u32>,
    ns_per_tick: u64,
}

impl CpuProbe {
    /// `pids`: the processes of the system under test (none for the bare path).
    pub fn new(pids: &[u32]) -> CpuProbe {
        let mut all = vec![std::process::id()];
        all.extend_from_slice(pids);
        all.extend(softirq_threads());
        CpuProbe {
            pids: all,
            ns_per_tick: 1_000_000_000 / crate::os::clock_ticks_per_sec(),
        }
    }

    /// Reads the counters now. A task that has gone counts nothing (its time is lost, so the
    /// probe reads processes that live through the step).
    pub fn read(&self) -> CpuSample {
        let tasks_ns = self.pids.iter().map(|p| process_run_ns(*p)).sum();
        let (idle, cpus) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| stat_idle_ticks(&s))
            .unwrap_or((0, 0));
        CpuSample {
            tasks_ns,
            idle_ns: idle * self.ns_per_tick,
            cpus,
            at: Instant::now(),
        }
    }
}

/// The run time of every thread of process `pid`, ns (0 if it is gone).
fn process_run_ns(pid: u32) -> u64 {
    let dir = format!("/proc/{pid}/task");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| schedstat_run_ns(&s))
        .sum()
}

/// The pids of the kernel's `ksoftirqd/N` threads.
fn softirq_threads() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_the_run_time() {
        assert_eq!(schedstat_run_ns("2237673 10450 17\n"), Some(2_237_673));
        assert_eq!(schedstat_run_ns("0 0 0"), Some(0));
        assert_eq!(schedstat_run_ns(""), None);
        assert_eq!(schedstat_run_ns("x 1 2"), None);
    }

    #[test]
    fn proc_stat_gives_idle_and_iowait_of_all_cpus() {
        let stat = "cpu  153947 5 10198 105810 732 7 73 66 11 0\n\
                    cpu0 74773 0 4716 55765 131 0 10 33 0 0\n\
                    cpu1 79173 0 5482 50044 600 0 62 33 0 0\n\
                    intr 1216437 0 0\n\
                    ctxt 123\n\
                    cpufreq 1\n";
        assert_eq!(stat_idle_ticks(stat), Some((105_810 + 732, 2)));
        // Older kernels print fewer columns; up to iowait is enough.
        assert_eq!(
            stat_idle_ticks("cpu  1 2 3 4 5\ncpu0 1 2 3 4 5\n"),
            Some((9, 1))
        );
        assert_eq!(stat_idle_ticks("cpu  1 2 3 4\n"), None);
        assert_eq!(
            stat_idle_ticks("cpu0 1 2 3 4 5 6 7\n"),
            None,
            "no total line"
        );
        assert_eq!(stat_idle_ticks("cpu  1 2 3 x 5 6 7\n"), None);
    }

    #[test]
    fn the_bare_path_is_subtracted_per_packet() {
        // 90 ms of CPU for 30 000 packets on the path, 30 ms for 30 000 on the bare path.
        let path = per_packet_ns(90_000_000, 30_000).unwrap();
        let bare = per_packet_ns(30_000_000, 30_000).unwrap();
        assert_eq!((path, bare), (3000.0, 1000.0));
        assert_eq!(own_ns(path, bare), 2000.0);
        // Per packet, not per run: a bare run that delivered more is scaled, not subtracted whole.
        let bare = per_packet_ns(60_000_000, 60_000).unwrap();
        assert_eq!(own_ns(path, bare), 2000.0);
        assert_eq!(per_packet_ns(5, 0), None);
    }

    #[test]
    fn the_machine_spent_its_wall_time_less_its_idle_time() {
        let t0 = Instant::now();
        let a = CpuSample {
            tasks_ns: 100,
            idle_ns: 5_000_000_000,
            cpus: 2,
            at: t0,
        };
        // One second on two CPUs, 1.5 s of it idle: 0.5 s busy, 150 ns of it the tasks'.
        let b = CpuSample {
            tasks_ns: 250,
            idle_ns: 6_500_000_000,
            cpus: 2,
            at: t0 + std::time::Duration::from_secs(1),
        };
        assert_eq!(
            b.since(&a),
            CpuSpent {
                tasks_ns: 150,
                machine_ns: 500_000_000
            }
        );
        // Counters that went backwards, or idle rounded up past the wall time, never wrap.
        let c = CpuSample {
            tasks_ns: 50,
            idle_ns: 8_000_000_000,
            ..b
        };
        assert_eq!(c.since(&a), CpuSpent::default());
    }
}
