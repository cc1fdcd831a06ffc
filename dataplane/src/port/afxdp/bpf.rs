//! The XDP side of an AF_XDP port, with the bpf(2) system call and nothing else (no libbpf):
//! an `XSKMAP` holding the socket at its queue's index, the 6-instruction program that redirects
//! each frame of the queue to it, and the BPF link attaching the program to the interface.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;

use super::XdpMode;
use crate::port::ebpf::{
    bpf, bpf_fd, insn, load_program, BpfAttr, Insn, BPF_LINK_CREATE, BPF_MAP_CREATE,
    BPF_MAP_UPDATE_ELEM,
};

// linux/bpf.h: the types and flags of the XDP side.
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const XDP_PASS: i32 = 2;
// linux/if_link.h
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The XDP program, for the XSKMAP `map_fd`:
///
/// ```c
/// return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
/// ```
///
/// A queue without a socket in the map passes its frames to the stack.
fn program(map_fd: RawFd) -> [Insn; 6] {
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const LD_DW: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW (two slots)
    const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    /// `offsetof(struct xdp_md, rx_queue_index)`: after data, data_end, data_meta,
    /// ingress_ifindex (all u32).
    const RX_QUEUE_INDEX: i16 = 16;
    [
        insn(LDX_W, 2, 1, RX_QUEUE_INDEX, 0), // r2 = ctx->rx_queue_index
        insn(LD_DW, 1, BPF_PSEUDO_MAP_FD, 0, map_fd), // r1 = &xsks
        insn(0, 0, 0, 0, 0),                  //   (upper half of the 64-bit load)
        insn(MOV64_K, 3, 0, 0, XDP_PASS),     // r3 = XDP_PASS
        insn(CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP), // r0 = bpf_redirect_map(r1, r2, r3)
        insn(EXIT, 0, 0, 0, 0),               // return r0
    ]
}

/// The program on the interface, with the map it reads. Fields drop in order: the link first,
/// which detaches the program.
#[derive(Debug)]
pub(super) struct Attachment {
    pub(super) link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
    /// Where the program runs (native or generic, never `Auto`).
    pub(super) mode: XdpMode,
}

/// A failed step of [`attach`]: what was being done, and the kernel's answer.
pub(super) type Failed = (&'static str, io::Error);

/// Puts the AF_XDP socket `socket` in a new XSKMAP at index `queue`, loads the program and
/// attaches it to `ifindex` in `mode` (`Auto`: native, generic when the driver has no XDP).
// Casts: a socket descriptor and an instruction count, far inside u32.
#[allow(clippy::cast_possible_truncation)]
pub(super) fn attach(
    socket: RawFd,
    queue: u32,
    ifindex: u32,
    mode: XdpMode,
) -> Result<Attachment, Failed> {
    // The XSKMAP: the socket at its queue's index.
    let map = bpf_fd(
        BPF_MAP_CREATE,
        BpfAttr::new()
            .u32(0, BPF_MAP_TYPE_XSKMAP)
            .u32(4, 4) // key_size
            .u32(8, 4) // value_size
            .u32(12, queue + 1) // max_entries
            .name(28, b"meshd_xsks\0\0\0\0\0"),
    )
    .map_err(|e| ("creating the XSKMAP (bpf BPF_MAP_CREATE)", e))?;
    let (key, value) = (queue, socket as u32);
    bpf(
        BPF_MAP_UPDATE_ELEM,
        BpfAttr::new()
            .u32(0, map.as_raw_fd() as u32)
            .u64(8, ptr::from_ref(&key) as u64)
            .u64(16, ptr::from_ref(&value) as u64),
    )
    .map_err(|e| ("putting the socket in the XSKMAP", e))?;

    let prog = load_program(
        BPF_PROG_TYPE_XDP,
        &program(map.as_raw_fd()),
        b"meshd_xsk\0\0\0\0\0\0",
        BPF_XDP,
    )
    .map_err(|e| ("loading the XDP program (bpf BPF_PROG_LOAD)", e))?;

    let link = |flags: u32| {
        bpf_fd(
            BPF_LINK_CREATE,
            BpfAttr::new()
                .u32(0, prog.as_raw_fd() as u32)
                .u32(4, ifindex)
                .u32(8, BPF_XDP)
                .u32(12, flags),
        )
        .map_err(|e| ("attaching the XDP program (bpf BPF_LINK_CREATE)", e))
    };
    let (link, mode) = match mode {
        XdpMode::Native => (link(XDP_FLAGS_DRV_MODE)?, XdpMode::Native),
        XdpMode::Generic => (link(XDP_FLAGS_SKB_MODE)?, XdpMode::Generic),
        XdpMode::Auto => match link(XDP_FLAGS_DRV_MODE) {
            Ok(l) => (l, XdpMode::Native),
            Err((_, e))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) =>
            {
                (link(XDP_FLAGS_SKB_MODE)?, XdpMode::Generic)
            }
            Err(f) => return Err(f),
        },
    };
    Ok(Attachment {
        link,
        _prog: prog,
        _map: map,
        mode,
    })
}
