//! Health checks of this node's own tasks: which to run when, and the verdict, Docker's
//! HEALTHCHECK semantics with an explicit clock (no I/O, no sleeps; the host stack runs the
//! probes and reports their outcome).
//!
//! - The first check of a task runs as soon as the task is known, then one every `interval`
//!   from the start of the previous one; a check not passed within `timeout` failed.
//! - A pass makes the task healthy at once (and resets the failure streak); `retries` failures
//!   in a row make it unhealthy. Until either happens it is starting.
//!
//! So a task whose server stops is unhealthy at most `interval × retries` after the last check
//! it passed began, plus `timeout` when the server does not even refuse (a silent host).

use std::collections::HashMap;

use ctl::model::{Health, HealthCheck, HealthTest};
use smoltcp::wire::Ipv4Address;

use crate::balance::table::{NetIdx, ServiceTable};

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
}

/// One task's verdict and how it got there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub health: Health,
    /// Checks failed in a row.
    pub streak: u32,
    /// The last failure's reason (kept after a pass until the next failure, for `service ps`).
    pub last_error: String,
    /// When `health` last changed (ms, the host stack's clock).
    pub since: u64,
}

impl Verdict {
    pub fn new(now: u64) -> Self {
        Verdict {
            health: Health::Starting,
            streak: 0,
            last_error: String::new(),
            since: now,
        }
    }

    /// Records a check's outcome; returns whether the verdict changed.
    pub fn record(&mut self, outcome: Outcome, retries: u32, now: u64) -> bool {
        let before = self.health;
        match outcome {
            Outcome::Pass => {
                self.streak = 0;
                self.health = Health::Healthy;
            }
            Outcome::Fail(why) => {
                self.streak = self.streak.saturating_add(1);
                self.last_error = why;
                if self.streak >= retries.max(1) {
                    self.health = Health::Unhealthy;
                }
            }
        }
        if self.health != before {
            self.since = now;
        }
        self.health != before
    }
}

/// What a probe does: from the gateway of `net` to `addr:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub uid: u64,
    /// Tells this probe from an earlier one of the same task.
    pub seq: u32,
    pub net: NetIdx,
    pub addr: Ipv4Address,
    pub port: u16,
    pub test: HealthTest,
    pub path: String,
    pub check: HealthCheck,
    /// When it has failed if it has not passed.
    pub deadline: u64,
}

impl Probe {
    /// Whether an HTTP status passes.
    pub fn status_ok(&self, status: u16) -> bool {
        self.check.status_ok(status)
    }
}

/// A checked task.
#[derive(Debug, Clone)]
struct Tracked {
    name: String,
    net: NetIdx,
    addr: Ipv4Address,
    port: u16,
    check: HealthCheck,
    verdict: Verdict,
    next_at: u64,
    /// The probe under way: its sequence number and deadline.
    in_flight: Option<(u32, u64)>,
    seq: u32,
}

/// This node's health-checked tasks and their verdicts.
#[derive(Debug, Default)]
pub struct Monitor {
    tasks: HashMap<u64, Tracked>,
}

/// The network a task is checked on: its first one that is not the ingress network, else the
/// ingress network (the probe comes from that network's gateway, which this node owns).
fn check_net(t: &ServiceTable, addrs: &[(NetIdx, Ipv4Address)]) -> Option<(NetIdx, Ipv4Address)> {
    addrs
        .iter()
        .find(|(n, _)| !t.net(*n).ingress)
        .or_else(|| addrs.first())
        .copied()
}

impl Monitor {
    pub fn new() -> Self {
        Monitor::default()
    }

    /// Follows the table: starts tracking this node's tasks of services with a health check
    /// (their first check due at once), stops tracking the others, takes up changed settings.
    pub fn sync(&mut self, t: &ServiceTable, now: u64) {
        let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
        for te in &t.tasks {
            if te.removed || te.node != t.local {
                continue;
            }
            let Some(svc) = t.services.get(usize::from(te.service)) else {
                continue;
            };
            let Some(check) = &svc.health else { continue };
            let Some((net, addr)) = check_net(t, &te.addrs) else {
                continue;
            };
            seen.insert(te.uid);
            let port = svc.health_port;
            match self.tasks.get_mut(&te.uid) {
                Some(tr) => {
                    if tr.check != **check || tr.port != port || tr.net != net {
                        // A new check: its verdict stands until the new check says otherwise,
                        // and it runs at once.
                        tr.check = (**check).clone();
                        tr.port = port;
                        tr.net = net;
                        tr.next_at = now;
                        tr.in_flight = None;
                    }
                }
                None => {
                    self.tasks.insert(
                        te.uid,
                        Tracked {
                            name: te.name.to_string(),
                            net,
                            addr,
                            port,
                            check: (**check).clone(),
                            verdict: Verdict::new(now),
                            next_at: now,
                            in_flight: None,
                            seq: 0,
                        },
                    );
                }
            }
        }
        self.tasks.retain(|uid, _| seen.contains(uid));
    }

    /// The probes to start now; each is in flight until [`Monitor::finish`] or its deadline.
    pub fn due(&mut self, now: u64) -> Vec<Probe> {
        let mut out = Vec::new();
        for (uid, tr) in self.tasks.iter_mut() {
            if tr.in_flight.is_some() || now < tr.next_at {
                continue;
            }
            tr.seq = tr.seq.wrapping_add(1);
            let deadline = now + u64::from(tr.check.timeout_ms);
            tr.in_flight = Some((tr.seq, deadline));
            // The next check starts an interval after this one started, however this one ends.
            tr.next_at = now + u64::from(tr.check.interval_ms.max(1));
            out.push(Probe {
                uid: *uid,
                seq: tr.seq,
                net: tr.net,
                addr: tr.addr,
                port: tr.port,
                test: tr.check.test,
                path: tr.check.path.clone(),
                check: tr.check.clone(),
                deadline,
            });
        }
        out.sort_by_key(|p| p.uid);
        out
    }

    /// A probe's outcome; returns whether the task's verdict changed. Outcomes of probes that
    /// are no longer in flight (timed out, or of a task no longer tracked) are ignored.
    pub fn finish(&mut self, uid: u64, seq: u32, outcome: Outcome, now: u64) -> bool {
        let Some(tr) = self.tasks.get_mut(&uid) else {
            return false;
        };
        if tr.in_flight.map(|(s, _)| s) != Some(seq) {
            return false;
        }
        tr.in_flight = None;
        let retries = tr.check.retries;
        tr.verdict.record(outcome, retries, now)
    }

    /// Fails the probes past their deadline; returns them (to abort their connections), each
    /// with whether its task's verdict changed.
    pub fn expire(&mut self, now: u64) -> Vec<(u64, u32, bool)> {
        let mut gone = Vec::new();
        for (uid, tr) in self.tasks.iter_mut() {
            let Some((seq, deadline)) = tr.in_flight else {
                continue;
            };
            if now < deadline {
                continue;
            }
            tr.in_flight = None;
            let why = format!("no answer within {} ms", tr.check.timeout_ms);
            let changed = tr.verdict.record(Outcome::Fail(why), tr.check.retries, now);
            gone.push((*uid, seq, changed));
        }
        gone.sort_unstable();
        gone
    }

    /// When something is next due (a check to start or a deadline).
    pub fn next_wakeup(&self) -> Option<u64> {
        self.tasks
            .values()
            .map(|tr| tr.in_flight.map_or(tr.next_at, |(_, d)| d.min(tr.next_at)))
            .min()
    }

    /// Every tracked task's verdict.
    pub fn verdicts(&self) -> impl Iterator<Item = (u64, &Verdict)> + '_ {
        self.tasks.iter().map(|(uid, tr)| (*uid, &tr.verdict))
    }

    pub fn verdict(&self, uid: u64) -> Option<&Verdict> {
        self.tasks.get(&uid).map(|tr| &tr.verdict)
    }

    /// A tracked task's name.
    pub fn name(&self, uid: u64) -> Option<&str> {
        self.tasks.get(&uid).map(|tr| tr.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use super::*;
    use ctl::model::State;

    fn checked(interval_ms: u32, timeout_ms: u32, retries: u32) -> State {
        let mut s = crate::testkit::three_nodes();
        s.services[0].health = Some(HealthCheck {
            interval_ms,
            timeout_ms,
            retries,
            ..HealthCheck::default()
        });
        s
    }

    #[test]
    fn the_verdict_follows_docker() {
        let mut v = Verdict::new(0);
        assert_eq!(v.health, Health::Starting);
        assert!(!v.record(Outcome::Fail("refused".into()), 3, 10));
        assert!(!v.record(Outcome::Fail("refused".into()), 3, 20));
        assert_eq!((v.health, v.streak), (Health::Starting, 2));
        assert!(
            v.record(Outcome::Fail("refused".into()), 3, 30),
            "three in a row"
        );
        assert_eq!(
            (v.health, v.streak, v.since, v.last_error.as_str()),
            (Health::Unhealthy, 3, 30, "refused")
        );
        assert!(!v.record(Outcome::Fail("refused".into()), 3, 40));
        assert!(v.record(Outcome::Pass, 3, 50), "one pass is enough");
        assert_eq!((v.health, v.streak, v.since), (Health::Healthy, 0, 50));
        assert!(!v.record(Outcome::Fail("timeout".into()), 3, 60));
        assert!(!v.record(Outcome::Pass, 3, 70), "a pass resets the streak");
        assert!(!v.record(Outcome::Fail("timeout".into()), 3, 80));
        assert!(!v.record(Outcome::Fail("timeout".into()), 3, 90));
        assert_eq!(v.health, Health::Healthy);
    }

    #[test]
    fn only_this_nodes_tasks_of_checked_services_are_tracked() {
        let t = ServiceTable::build(&checked(1000, 500, 3), "n2", 1).unwrap();
        let mut m = Monitor::new();
        m.sync(&t, 0);
        assert_eq!(m.len(), 1, "web.1 runs on n2, web.2 on n3");
        let p = m.due(0);
        assert_eq!(p.len(), 1, "the first check runs at once");
        // Checked from appnet's gateway, on the first published target port.
        assert_eq!(
            (t.net(p[0].net).name.as_str(), p[0].addr, p[0].port),
            ("appnet", Ipv4Address::new(10, 0, 1, 11), 80)
        );
        let t1 = ServiceTable::build(&checked(1000, 500, 3), "n1", 1).unwrap();
        m.sync(&t1, 5);
        assert!(m.is_empty());
        let mut plain = crate::testkit::three_nodes();
        plain.services[0].health = None;
        let mut m = Monitor::new();
        m.sync(&ServiceTable::build(&plain, "n2", 1).unwrap(), 0);
        assert!(m.is_empty());
    }

    #[test]
    fn checks_run_every_interval_and_fail_at_their_deadline() {
        let t = ServiceTable::build(&checked(1000, 300, 2), "n2", 1).unwrap();
        let mut m = Monitor::new();
        m.sync(&t, 0);
        let p = m.due(0).remove(0);
        assert_eq!(p.deadline, 300);
        assert!(
            m.due(500).is_empty(),
            "one in flight, and not due before 1000"
        );
        assert!(m.finish(p.uid, p.seq, Outcome::Pass, 20));
        assert_eq!(m.verdict(p.uid).unwrap().health, Health::Healthy);
        assert_eq!(m.next_wakeup(), Some(1000));
        assert!(m.due(999).is_empty());
        let p2 = m.due(1000).remove(0);
        assert_eq!(m.next_wakeup(), Some(1300));
        assert_eq!(m.expire(1299), vec![]);
        assert_eq!(m.expire(1300), vec![(p2.uid, p2.seq, false)]);
        assert!(
            !m.finish(p2.uid, p2.seq, Outcome::Pass, 1301),
            "too late: already failed"
        );
        let p3 = m.due(2000).remove(0);
        let gone = m.expire(2300);
        assert_eq!(gone, vec![(p3.uid, p3.seq, true)], "two failures in a row");
        let v = m.verdict(p3.uid).unwrap();
        assert_eq!((v.health, v.streak, v.since), (Health::Unhealthy, 2, 2300));
        assert_eq!(v.last_error, "no answer within 300 ms");
        let p4 = m.due(3000).remove(0);
        assert!(m.finish(p4.uid, p4.seq, Outcome::Pass, 3001));
    }

    #[test]
    fn a_stopped_server_is_unhealthy_within_interval_times_retries() {
        // Refused checks end at once; whenever the server stops, the verdict comes at most
        // interval × retries after the last passing check began.
        let (interval, retries) = (1000u64, 3u32);
        for stop_at in [1, 250, 999, 1000, 1001, 1999] {
            let t = ServiceTable::build(&checked(interval as u32, 500, retries), "n2", 1).unwrap();
            let mut m = Monitor::new();
            m.sync(&t, 0);
            let mut last_pass_start = 0;
            let mut unhealthy_at = None;
            for now in 0..10_000u64 {
                for p in m.due(now) {
                    let outcome = if now < stop_at {
                        Outcome::Pass
                    } else {
                        Outcome::Fail("refused".into())
                    };
                    if outcome == Outcome::Pass {
                        last_pass_start = now;
                    }
                    if m.finish(p.uid, p.seq, outcome, now)
                        && m.verdict(p.uid).unwrap().health == Health::Unhealthy
                    {
                        unhealthy_at = Some(now);
                    }
                }
                if unhealthy_at.is_some() {
                    break;
                }
            }
            let at = unhealthy_at.unwrap();
            assert!(
                at - last_pass_start <= interval * u64::from(retries),
                "stop at {stop_at}: unhealthy at {at}"
            );
            assert!(
                at - stop_at <= interval * u64::from(retries),
                "stop at {stop_at}: unhealthy at {at}"
            );
        }
    }

    #[test]
    fn changed_settings_take_effect_at_once_and_keep_the_verdict() {
        let mut s = checked(10_000, 500, 3);
        let t = ServiceTable::build(&s, "n2", 1).unwrap();
        let mut m = Monitor::new();
        m.sync(&t, 0);
        let p = m.due(0).remove(0);
        m.finish(p.uid, p.seq, Outcome::Pass, 1);
        assert!(m.due(5000).is_empty());
        if let Some(h) = s.services[0].health.as_mut() {
            h.interval_ms = 1000;
        }
        m.sync(&ServiceTable::build(&s, "n2", 2).unwrap(), 5000);
        assert_eq!(m.verdict(p.uid).unwrap().health, Health::Healthy);
        assert_eq!(m.due(5000).len(), 1);
    }
}
