//! The declarations of `shim.c`: every DPDK call meshd makes goes through one of these. The
//! structures here are the shim's own (`meshd_*`), not DPDK's, so their layout does not follow
//! DPDK's releases; DPDK's objects stay opaque pointers.
#![allow(unsafe_code, missing_debug_implementations)]

use std::ffi::{c_char, c_int, c_uint};

/// `struct rte_mempool`, opaque.
#[repr(C)]
pub struct RteMempool {
    _private: [u8; 0],
}

/// `struct rte_mbuf`, opaque.
#[repr(C)]
pub struct RteMbuf {
    _private: [u8; 0],
}

/// `struct meshd_port_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PortInfo {
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    pub mtu: u16,
    pub rss: u8,
    pub mac: [u8; 6],
    pub driver: [c_char; 32],
}

/// `struct meshd_link`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Link {
    pub speed_mbps: u32,
    pub up: u8,
    pub full_duplex: u8,
}

/// `struct meshd_stats`: the PMD's port counters.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

/// `struct meshd_frame`: where a received frame is in its mbuf.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub room: *mut u8,
    pub cap: u16,
    pub off: u16,
    pub len: u16,
    pub segs: u16,
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            room: std::ptr::null_mut(),
            cap: 0,
            off: 0,
            len: 0,
            segs: 0,
        }
    }
}

extern "C" {
    pub fn meshd_errno() -> c_int;
    pub fn meshd_strerror(e: c_int) -> *const c_char;
    pub fn meshd_eal_init(argc: c_int, argv: *mut *mut c_char) -> c_int;
    pub fn meshd_thread_register() -> c_int;
    pub fn meshd_pool_create(name: *const c_char, n: c_uint, cache: c_uint) -> *mut RteMempool;
    pub fn meshd_pool_free(mp: *mut RteMempool);
    pub fn meshd_pool_in_use(mp: *const RteMempool) -> c_uint;
    pub fn meshd_port_by_name(name: *const c_char, port: *mut u16) -> c_int;
    pub fn meshd_port_count() -> u16;
    pub fn meshd_port_info(port: u16, out: *mut PortInfo) -> c_int;
    pub fn meshd_port_start(
        port: u16,
        queues: u16,
        rx_desc: u16,
        tx_desc: u16,
        mtu: u16,
        pools: *mut *mut RteMempool,
        stage: *mut c_int,
    ) -> c_int;
    pub fn meshd_port_close(port: u16);
    pub fn meshd_port_link(port: u16, out: *mut Link) -> c_int;
    pub fn meshd_port_stats(port: u16, out: *mut Stats) -> c_int;
    pub fn meshd_rx_frames(
        port: u16,
        queue: u16,
        pkts: *mut *mut RteMbuf,
        out: *mut Frame,
        n: u16,
    ) -> u16;
    pub fn meshd_tx_frames(
        port: u16,
        queue: u16,
        pkts: *mut *mut RteMbuf,
        off: *const u16,
        len: *const u16,
        n: u16,
    ) -> u16;
    pub fn meshd_alloc_bulk(mp: *mut RteMempool, m: *mut *mut RteMbuf, n: c_uint) -> c_int;
    pub fn meshd_free_bulk(m: *mut *mut RteMbuf, n: c_uint);
    pub fn meshd_mbuf_free(m: *mut RteMbuf);
    pub fn meshd_mbuf_put(m: *mut RteMbuf, len: u16, off: *mut u16) -> *mut u8;
}
