//! meshd's benchmarks: in-memory pipeline scenarios (shared by the `bench` command and the
//! criterion benches) and, in time, the packet generator and the side-by-side runs.

// A benchmark harness: a setup that cannot be built aborts the run with a message.
#![allow(clippy::expect_used, clippy::panic)]

pub mod scenarios;
