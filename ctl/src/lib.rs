//! The meshd control protocol: the data model (nodes, networks, services, tasks) and the
//! request/response types spoken over the control socket. The daemon (`dataplane`) depends on
//! this crate so both sides share one definition.
#![forbid(unsafe_code)]

pub mod apply;
pub mod client;
pub mod cluster;
pub mod counters;
pub mod model;
pub mod proto;
pub mod validate;

pub use model::*;
pub use validate::{validate, ValidationError};
