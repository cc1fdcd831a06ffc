//! Passive health's judge (outlier ejection, [`ctl::model::Outlier`]): the workers' events
//! ([`crate::pipeline::passive::Seen`]) counted per task; a task that failed `consecutive` new
//! connections in a row takes none from this node for a while.

use std::collections::HashMap;

use ctl::model::Outlier;

use crate::pipeline::passive::Seen;

/// One task's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// Failures in a row since its last answer (or its last return).
    pub failures: u32,
    /// Ejections in a row (each lasts longer); back to 0 when it answers after a return.
    pub ejections: u32,
    /// Out until then (the host clock's ms), when ejected.
    pub until: Option<u64>,
}

/// What [`Outliers::saw`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// Nothing to change.
    Nothing,
    /// The task is out from now, for this many ms.
    Ejected(u32),
    /// It failed enough, but its service has as many tasks out as it may.
    Held,
}

/// Every task's record on this node.
#[derive(Debug, Default)]
pub struct Outliers {
    tasks: HashMap<u64, Track>,
}

impl Outliers {
    /// Counts `seen` for task `uid` under `policy`; `siblings` are the uids of its service's
    /// tasks (itself included), for the share that may be out at once.
    pub fn saw(
        &mut self,
        uid: u64,
        seen: Seen,
        now: u64,
        policy: &Outlier,
        siblings: &[u64],
    ) -> Judged {
        if policy.is_off() {
            self.tasks.remove(&uid);
            return Judged::Nothing;
        }
        if !seen.is_failure() {
            if let Some(t) = self.tasks.get_mut(&uid) {
                t.failures = 0;
                if t.until.is_none() {
                    // Answering again after a return: the next ejection starts short.
                    self.tasks.remove(&uid);
                }
            }
            return Judged::Nothing;
        }
        let t = self.tasks.entry(uid).or_insert(Track {
            failures: 0,
            ejections: 0,
            until: None,
        });
        if t.until.is_some() {
            // Connections opened before it went out, failing late: no news.
            return Judged::Nothing;
        }
        t.failures += 1;
        if t.failures < policy.consecutive {
            return Judged::Nothing;
        }
        // Only now (enough failures) the service's share out at once.
        let out = siblings
            .iter()
            .filter(|u| **u != uid && self.is_out(**u))
            .count();
        if out >= policy.max_out(siblings.len()) {
            return Judged::Held;
        }
        let Some(t) = self.tasks.get_mut(&uid) else {
            return Judged::Nothing;
        };
        t.ejections += 1;
        t.failures = 0;
        let ms = policy.eject_for(t.ejections);
        t.until = Some(now + u64::from(ms));
        Judged::Ejected(ms)
    }

    /// Forgets what `uid` did (its check passed); whether it was out.
    pub fn forgive(&mut self, uid: u64) -> bool {
        self.tasks.remove(&uid).is_some_and(|t| t.until.is_some())
    }

    pub fn is_out(&self, uid: u64) -> bool {
        self.tasks.get(&uid).is_some_and(|t| t.until.is_some())
    }

    /// Ends the ejections due by `now`; the tasks that are back.
    pub fn expire(&mut self, now: u64) -> Vec<u64> {
        let mut back = Vec::new();
        for (uid, t) in &mut self.tasks {
            if t.until.is_some_and(|u| u <= now) {
                t.until = None;
                t.failures = 0;
                back.push(*uid);
            }
        }
        back
    }

    /// When the next ejection ends.
    pub fn next_end(&self) -> Option<u64> {
        self.tasks.values().filter_map(|t| t.until).min()
    }

    /// The tasks out now.
    pub fn out(&self) -> impl Iterator<Item = u64> + '_ {
        self.tasks
            .iter()
            .filter(|(_, t)| t.until.is_some())
            .map(|(u, _)| *u)
    }

    /// Forgets the tasks `keep` says are gone.
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.tasks.retain(|u, _| keep(*u));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Outlier {
        Outlier {
            consecutive: 3,
            eject_ms: 10_000,
            max_percent: 50,
        }
    }

    #[test]
    fn consecutive_failures_eject_for_longer_each_time_and_an_answer_resets() {
        let mut o = Outliers::default();
        let p = policy();
        let sibs = [1, 2, 3, 4];
        assert_eq!(o.saw(1, Seen::Refused, 0, &p, &sibs), Judged::Nothing);
        assert_eq!(o.saw(1, Seen::Refused, 1, &p, &sibs), Judged::Nothing);
        // An answer between: the count starts again.
        assert_eq!(o.saw(1, Seen::Answered, 2, &p, &sibs), Judged::Nothing);
        assert_eq!(o.saw(1, Seen::Refused, 3, &p, &sibs), Judged::Nothing);
        assert_eq!(o.saw(1, Seen::Unanswered, 4, &p, &sibs), Judged::Nothing);
        assert_eq!(
            o.saw(1, Seen::Refused, 5, &p, &sibs),
            Judged::Ejected(10_000)
        );
        assert!(o.is_out(1));
        assert_eq!(o.next_end(), Some(10_005));
        // Late failures while out change nothing.
        assert_eq!(o.saw(1, Seen::Refused, 6, &p, &sibs), Judged::Nothing);
        assert!(o.expire(10_004).is_empty());
        assert_eq!(o.expire(10_005), [1]);
        assert!(!o.is_out(1));
        // Back, and failing again: out twice as long.
        for k in 0..2 {
            assert_eq!(
                o.saw(1, Seen::Refused, 20_000 + k, &p, &sibs),
                Judged::Nothing
            );
        }
        assert_eq!(
            o.saw(1, Seen::Refused, 20_002, &p, &sibs),
            Judged::Ejected(20_000)
        );
        o.expire(40_002);
        // Back and answering: the next ejection is short again.
        o.saw(1, Seen::Answered, 40_003, &p, &sibs);
        for k in 0..2 {
            o.saw(1, Seen::Refused, 50_000 + k, &p, &sibs);
        }
        assert_eq!(
            o.saw(1, Seen::Refused, 50_002, &p, &sibs),
            Judged::Ejected(10_000)
        );
    }

    #[test]
    fn never_more_than_the_share_of_a_service_out_and_off_means_off() {
        let mut o = Outliers::default();
        let p = policy();
        let sibs = [1, 2, 3, 4];
        let fail = |o: &mut Outliers, uid| {
            let mut last = Judged::Nothing;
            for _ in 0..3 {
                last = o.saw(uid, Seen::Refused, 0, &p, &sibs);
            }
            last
        };
        assert!(matches!(fail(&mut o, 1), Judged::Ejected(_)));
        assert!(matches!(fail(&mut o, 2), Judged::Ejected(_)));
        // Half of four are out: the third is held (and judged again at its next failure).
        assert_eq!(fail(&mut o, 3), Judged::Held);
        assert_eq!(o.saw(3, Seen::Refused, 0, &p, &sibs), Judged::Held);
        assert_eq!(o.out().count(), 2);
        // A service of one task may lose it (at least one may go).
        assert!(matches!(
            (0..3).fold(Judged::Nothing, |_, _| o.saw(9, Seen::Refused, 0, &p, &[9])),
            Judged::Ejected(_)
        ));
        // Off: nothing is counted, and what was is forgotten.
        let off = Outlier::off();
        for _ in 0..10 {
            assert_eq!(o.saw(4, Seen::Refused, 0, &off, &sibs), Judged::Nothing);
        }
        assert!(!o.is_out(4));
        o.retain(|u| u != 1);
        assert!(!o.is_out(1) && o.is_out(2));
        assert!(o.forgive(2) && !o.is_out(2));
        assert!(!o.forgive(2));
    }

    #[test]
    fn an_ejection_never_lasts_past_the_cap() {
        let p = Outlier {
            eject_ms: 200_000,
            ..policy()
        };
        assert_eq!(p.eject_for(1), 200_000);
        assert_eq!(p.eject_for(2), Outlier::MAX_EJECT_MS);
        assert_eq!(policy().eject_for(1000), Outlier::MAX_EJECT_MS);
        assert_eq!(policy().max_out(1), 1);
        assert_eq!(policy().max_out(10), 5);
    }
}
