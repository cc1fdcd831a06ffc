//! The scheduler: which task a new flow goes to. One per worker (its round-robin positions are
//! the worker's own: no sharing), over the balancers the compiled table holds. Only a flow-table
//! miss reaches it, as DPVS's `dp_vs_schedule` after `conn_lookup`.

use ctl::model::SchedulerKind;

use super::{Backend, ServiceTable};

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
    /// balancer has no eligible backend.
    #[inline]
    pub fn pick(&mut self, t: &ServiceTable, bal: u16, hash: u64) -> Option<Backend> {
        let b = t.balancer(bal);
        if b.backends.is_empty() {
            return None;
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
}
