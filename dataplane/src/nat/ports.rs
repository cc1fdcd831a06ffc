//! Masquerade ports: each worker hands out ports from its own share of the port space
//! (`port % workers == worker`, above 1023), so the worker that owns a masqueraded flow is
//! computable from the reply's destination port alone ([`owner`]).

use crate::flow::{FlowKey, FlowTable};

/// A worker's masquerade port allocator.
#[derive(Debug)]
pub struct MasqPorts {
    worker: u32,
    workers: u32,
    /// Ports handed out so far (before the first wrap), per task counters slot.
    next_by_slot: Vec<u32>,
    /// The shared counter for tasks past their first wrap or without a slot.
    next: u32,
}

impl MasqPorts {
    pub fn new(worker: u16, workers: u16) -> Self {
        MasqPorts {
            worker: u32::from(worker),
            workers: u32::from(workers.max(1)),
            next_by_slot: vec![0; usize::from(u16::MAX)],
            next: 0,
        }
    }

    /// From now on, checks every port against the flow table before handing it out (as after
    /// a wrap): for a table adopted with flows that hold ports already.
    pub fn check_every_pick(&mut self) {
        self.next_by_slot.fill(u32::MAX);
    }

    /// A port on `ep` for a new flow of `proto` to `task:tport` (`v6`: between twins, whose
    /// flow keys are apart from IPv4's: [`FlowKey::in_family`]).
    ///
    /// Each task (by its counters' `slot`, stable for the task's life) hands out its ports in
    /// order; until its counter wraps, every port it gives is one no flow of that task can hold,
    /// so the new-flow path needs no lookup. After a wrap each candidate is checked against
    /// `flows`, as for tasks without a slot; `None` after 64 taken candidates.
    pub fn pick(
        &mut self,
        flows: &FlowTable,
        (proto, v6): (u8, bool),
        ep: u32,
        task: u32,
        tport: u16,
        slot: u16,
    ) -> Option<u16> {
        let (workers, worker) = (self.workers, self.worker);
        let span = (65536 - 1024) / workers;
        let to_port = |n: u32| u16::try_from(1024 + (n % span) * workers + worker).ok();
        if let Some(next) = self.next_by_slot.get_mut(usize::from(slot)) {
            if *next < span {
                let port = to_port(*next);
                *next += 1;
                return port;
            }
        }
        for _ in 0..64 {
            let n = self.next;
            self.next = self.next.wrapping_add(1);
            let port = to_port(n)?;
            if !flows.contains(&FlowKey::new(proto, task, tport, ep, port).in_family(v6)) {
                return Some(port);
            }
        }
        None
    }

    /// Steps the shared counter back by one (tests: to make the next pick meet a taken port).
    #[cfg(test)]
    pub(crate) fn rewind(&mut self) {
        self.next = self.next.wrapping_sub(1);
    }
}

/// The worker that owns masquerade port `port` (see [`MasqPorts`]).
#[inline]
pub fn owner(port: u16, workers: u16) -> u16 {
    let w = u32::from(port).saturating_sub(1024) % u32::from(workers.max(1));
    // Less than `workers`, a u16.
    u16::try_from(w).unwrap_or(0)
}
