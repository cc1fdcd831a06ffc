//! The bpf(2) system call, as the ports use it (no libbpf): a `bpf_attr` built field by field,
//! and instructions written out by hand. Used by the AF_XDP port's XDP program and by the
//! tasks' VLAN programs ([`crate::port::taskvlan`]).
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;

// linux/bpf.h: the commands used.
pub(crate) const BPF_MAP_CREATE: libc::c_int = 0;
pub(crate) const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
pub(crate) const BPF_PROG_LOAD: libc::c_int = 5;
pub(crate) const BPF_PROG_ATTACH: libc::c_int = 8;
pub(crate) const BPF_LINK_CREATE: libc::c_int = 28;

/// A `bpf_attr` union, zeroed, with the fields of one command written at their offsets.
#[repr(C, align(8))]
pub(crate) struct BpfAttr([u8; 128]);

impl BpfAttr {
    pub(crate) fn new() -> BpfAttr {
        BpfAttr([0; 128])
    }
    pub(crate) fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    pub(crate) fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    pub(crate) fn name(&mut self, off: usize, name: &[u8; 15]) -> &mut Self {
        self.0[off..off + 15].copy_from_slice(name);
        self
    }
}

/// `bpf(cmd, attr)`: what the command returns.
// Casts: system-call constants and struct sizes, far inside the target type.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn bpf(cmd: libc::c_int, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a 128-byte, 8-byte aligned bpf_attr, zero beyond the fields `cmd`
    // reads; any pointers in it (instructions, license, key, value) point to memory that lives
    // across the call. The kernel reads at most the size given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            ptr::from_mut(attr),
            size_of::<BpfAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// `bpf(cmd, attr)` for a command that returns a new file descriptor.
pub(crate) fn bpf_fd(cmd: libc::c_int, attr: &mut BpfAttr) -> io::Result<OwnedFd> {
    let r = bpf(cmd, attr)?;
    let raw = RawFd::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: BPF_MAP_CREATE, BPF_PROG_LOAD and BPF_LINK_CREATE return a new file descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Insn {
    code: u8,
    /// `dst_reg:4, src_reg:4` bit-fields.
    regs: u8,
    off: i16,
    imm: i32,
}

pub(crate) const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    // C bit-fields fill from the low bits on little-endian targets, from the high bits on
    // big-endian ones.
    let regs = if cfg!(target_endian = "little") {
        dst | (src << 4)
    } else {
        (dst << 4) | src
    };
    Insn {
        code,
        regs,
        off,
        imm,
    }
}

/// Loads a program of type `prog_type` (`expected_attach_type` 0 when the type needs none)
/// under `name`, licensed as the project is (none of its helpers is GPL-only).
// Casts: instruction counts, far inside u32.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn load_program(
    prog_type: u32,
    insns: &[Insn],
    name: &[u8; 15],
    expected_attach_type: u32,
) -> io::Result<OwnedFd> {
    let license = b"Apache-2.0\0";
    bpf_fd(
        BPF_PROG_LOAD,
        BpfAttr::new()
            .u32(0, prog_type)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .name(48, name)
            .u32(68, expected_attach_type),
    )
}
