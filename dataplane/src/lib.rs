//! meshd's dataplane: a userspace routing mesh.
//!
//! The heart is [`pipeline`]: a pure function of a burst of frames, the current service table
//! ([`balance::ServiceTable`]), the worker's flow table and an explicit `now`. Ports
//! ([`port`]) only move bytes. See DESIGN.md for the whole picture.
#![deny(unsafe_code)]

pub mod balance;
pub mod bell;
pub mod buf;
pub mod capture;
pub mod conn;
pub mod control;
pub mod daemon;
pub mod fastmap;
pub mod flow;
/// The functions the fuzz targets run (`fuzz/`), with their seeds (the `testkit` feature).
#[cfg(feature = "testkit")]
pub mod fuzzing;
pub mod host;
pub mod hugepage;
pub mod metrics;
pub mod nat;
pub mod neigh;
pub mod overlay;
pub mod pipeline;
pub mod port;
mod prefetch;
pub mod shared;
pub mod stats;
/// Frame builders and parsers and example states for tests and benchmarks (the `testkit`
/// feature, which the shipped `meshd` does not enable). The in-memory multi-node mesh the
/// pipeline-tier tests run on is not here: it lives with them, in `tests/mesh/`.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod wire;
pub mod worker;
