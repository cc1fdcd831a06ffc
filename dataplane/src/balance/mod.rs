//! Balancing: the compiled service table and the schedulers that pick a task for a new flow.
//!
//! Each service picks its scheduler: strict rotation (`rr`, the default), smooth weighted
//! round-robin (`wrr`), least connections (`lc`, `wlc`) or Maglev, with source-IP affinity in
//! front of any of them; every worker keeps its own state ([`sched::Scheduler`]). See
//! docs/schedulers.md for what each promises.

pub mod maglev;
pub mod sched;
pub mod table;

pub use sched::Scheduler;
pub use table::{AddrEntry, AddrKind, Backend, Balancer, BuildError, ServiceTable};
