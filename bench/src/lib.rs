//! meshd's benchmarks: in-memory pipeline scenarios (shared by the `bench` command and the
//! criterion benches) and, in time, the packet generator and the side-by-side runs.

pub mod scenarios;
