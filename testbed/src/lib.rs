//! The testbed: a multi-node meshd mesh in network namespaces on one machine, the demo that
//! walks through Docker Swarm's routing mesh on it, and the library the end-to-end tests use.
//!
//! ```text
//!                          meshd-tb-sw (bridge br0, 192.168.100.0/24)
//!        ┌───────────────────────┬───────────────────────┬──────────────────────┐
//!   meshd-tb-client         meshd-tb-n1             meshd-tb-n2            meshd-tb-n3
//!   192.168.100.100         up0 ─ meshd ─ br-tasks  (same)                 (same)
//!   (curl, ping, udp)       192.168.100.11   │      192.168.100.12         192.168.100.13
//!                                      meshd-tb-web.1 (eth0 10.0.0.100, 10.0.1.100; whoami)
//! ```
//!
//! - [`bed`]: building, changing and removing an instance; [`plan`]: its names and addresses.
//! - [`whoami`]: the task server; [`probe`]: the clients.
//! - [`demo`]: `testbed demo`; [`preflight`]: root and the programs it needs.
#![deny(unsafe_code)]

pub mod bed;
pub mod demo;
pub mod error;
pub mod plan;
pub mod preflight;
pub mod probe;
pub mod sys;
pub mod whoami;

pub use bed::{Bed, RunSpec, Tools};
pub use error::{Error, Result};
pub use plan::Plan;
