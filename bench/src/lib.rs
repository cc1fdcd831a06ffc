//! meshd's benchmarks: in-memory pipeline scenarios (shared by the `bench` command and the
//! criterion benches), the memory-latency probe ([`cache`]), the packet generator and sink ([`pktgen`], [`rxring`]) and the
//! side-by-side run of meshd, the kernel and the veth ceiling ([`mesh`]).

// A benchmark harness: a setup that cannot be built aborts the run with a message.
#![allow(clippy::expect_used, clippy::panic)]
// Unsafe only where a module says why (rxring: the ring and socket system calls; os: flock).
#![deny(unsafe_code)]

pub mod cache;
pub mod capture;
pub mod converge;
#[cfg(feature = "dpdk")]
pub mod memif;
pub mod mesh;
pub mod os;
pub mod pktgen;
pub mod rxring;
pub mod scenarios;
