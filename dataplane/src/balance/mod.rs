//! Balancing: the compiled service table and the schedulers that pick a task for a new flow.
//!
//! Round-robin (the default) is strict rotation over a balancer's eligible backends, with the
//! rotation counter kept per worker ([`sched::Scheduler`]); Maglev is the alternative per service.

pub mod maglev;
pub mod sched;
pub mod table;

pub use sched::Scheduler;
pub use table::{AddrEntry, AddrKind, Backend, Balancer, BuildError, ServiceTable};
