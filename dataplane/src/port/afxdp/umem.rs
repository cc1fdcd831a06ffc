//! The UMEM: the memory an AF_XDP socket's frames live in, shared with the kernel. Anonymous
//! memory of `frames` frames of [`FRAME_SIZE`] bytes, registered with `XDP_UMEM_REG`.

use std::os::fd::RawFd;

use super::{AfXdpError, Step, FRAME_SIZE};
use crate::port::sys::{setsockopt_level, Mapping};

/// Step 3: maps the UMEM and registers it with the socket `s`.
pub(super) fn register(step: Step, s: RawFd, frames: u32) -> Result<Mapping, AfXdpError> {
    let len = frames as usize * FRAME_SIZE as usize;
    let umem = Mapping::new(None, len, 0).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOMEM) => AfXdpError::Config(format!(
            "could not allocate {len} bytes of UMEM: lower frames"
        )),
        _ => step.io("mmap of the UMEM")(e),
    })?;
    let reg = libc::xdp_umem_reg {
        addr: umem.at(0) as u64,
        len: len as u64,
        chunk_size: FRAME_SIZE,
        headroom: 0,
        flags: 0,
        tx_metadata_len: 0,
    };
    setsockopt_level(s, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)
        .map_err(step.refused("XDP_UMEM_REG"))?;
    Ok(umem)
}
