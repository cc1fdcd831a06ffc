//! A task's own VLAN on a Linux bridge that has no VLAN filtering: two tc programs on the
//! bridge's port towards the task (the host end of its veth), attached with tcx.
//!
//! - ingress (what the task sends): tagged with the port's VLAN, so meshd, on the bridge's
//!   own interface, knows which task a frame came from whatever addresses it claims; a frame
//!   that comes tagged already is dropped (a task does not choose its VLAN);
//! - egress (what reaches the task): only frames tagged with the port's VLAN pass, untagged;
//!   everything else is dropped (another task's broadcast, a frame meant for another VLAN).
//!
//! What a VLAN-filtering bridge does with `bridge vlan add dev PORT vid V pvid untagged`, for
//! kernels built without it (as this project's test machines are). The programs are held by
//! the interface (no file descriptor to keep) and go with it. Written out as instructions and
//! loaded with the bpf(2) system call, as the AF_XDP port's program is.

use std::io;
use std::os::fd::AsRawFd;

use crate::port::ebpf::{bpf, insn, load_program, BpfAttr, Insn, BPF_PROG_ATTACH};
use crate::port::sys;

// linux/bpf.h
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const FUNC_SKB_VLAN_PUSH: i32 = 18;
const FUNC_SKB_VLAN_POP: i32 = 19;
const FUNC_SKB_LOAD_BYTES: i32 = 26;
const TCX_PASS: i32 = 0;
const TCX_DROP: i32 = 2;
// Offsets in `struct __sk_buff`.
const SKB_PROTOCOL: i16 = 16;
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_VLAN_TCI: i16 = 24;

const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const AND64_K: u8 = 0x57;
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const TO_BE: u8 = 0xdc; // BPF_ALU | BPF_END | BPF_TO_BE
const JA: u8 = 0x05;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// 0x8100 (802.1Q) as a `__be16` read into a register on this machine.
fn tpid() -> i32 {
    i32::from(u16::from_ne_bytes(0x8100u16.to_be_bytes()))
}

/// What the task sends: `if skb has a tag, drop; bpf_skb_vlan_push(skb, 802.1Q, vlan)`.
fn tag_program(vlan: u16) -> [Insn; 10] {
    [
        insn(LDX_W, 2, 1, SKB_VLAN_PRESENT, 0), //  0: r2 = skb->vlan_present
        insn(JNE_K, 2, 0, 6, 0),                //  1: if r2 != 0 goto drop (8)
        insn(MOV64_K, 2, 0, 0, tpid()),         //  2: r2 = htons(ETH_P_8021Q)
        insn(MOV64_K, 3, 0, 0, i32::from(vlan)), // 3: r3 = vlan
        insn(CALL, 0, 0, 0, FUNC_SKB_VLAN_PUSH), // 4: r0 = bpf_skb_vlan_push(r1, r2, r3)
        insn(JNE_K, 0, 0, 2, 0),                //  5: if r0 != 0 goto drop (8)
        insn(MOV64_K, 0, 0, 0, TCX_PASS),       //  6: r0 = pass
        insn(EXIT, 0, 0, 0, 0),                 //  7: return
        insn(MOV64_K, 0, 0, 0, TCX_DROP),       //  8: drop: r0 = drop
        insn(EXIT, 0, 0, 0, 0),                 //  9: return
    ]
}

/// What reaches the task: its VLAN's frames, untagged; nothing else. The tag is in the
/// packet's metadata or still in its bytes (a frame meshd wrote to the bridge's interface).
fn untag_program(vlan: u16) -> [Insn; 24] {
    [
        insn(MOV64_X, 6, 1, 0, 0),                //  0: r6 = skb
        insn(LDX_W, 2, 6, SKB_VLAN_PRESENT, 0),   //  1: r2 = skb->vlan_present
        insn(JEQ_K, 2, 0, 2, 0),                  //  2: if r2 == 0 goto inline (5)
        insn(LDX_W, 2, 6, SKB_VLAN_TCI, 0),       //  3: r2 = skb->vlan_tci
        insn(JA, 0, 0, 11, 0),                    //  4: goto check (16)
        insn(LDX_W, 2, 6, SKB_PROTOCOL, 0),       //  5: inline: r2 = skb->protocol
        insn(JNE_K, 2, 0, 15, tpid()),            //  6: if r2 != 802.1Q goto drop (22)
        insn(MOV64_X, 1, 6, 0, 0),                //  7: r1 = skb
        insn(MOV64_K, 2, 0, 0, 14),               //  8: r2 = 14 (the tag's control information)
        insn(MOV64_X, 3, 10, 0, 0),               //  9: r3 = fp
        insn(ADD64_K, 3, 0, 0, -4),               // 10: r3 = fp - 4
        insn(MOV64_K, 4, 0, 0, 2),                // 11: r4 = 2
        insn(CALL, 0, 0, 0, FUNC_SKB_LOAD_BYTES), // 12: r0 = bpf_skb_load_bytes(r1..r4)
        insn(JNE_K, 0, 0, 8, 0),                  // 13: if r0 != 0 goto drop (22)
        insn(LDX_H, 2, 10, -4, 0),                // 14: r2 = *(u16 *)(fp - 4)
        insn(TO_BE, 2, 0, 0, 16),                 // 15: r2 = ntohs(r2)
        insn(AND64_K, 2, 0, 0, 0x0fff),           // 16: check: r2 &= VLAN id
        insn(JNE_K, 2, 0, 4, i32::from(vlan)),    // 17: if r2 != vlan goto drop (22)
        insn(MOV64_X, 1, 6, 0, 0),                // 18: r1 = skb
        insn(CALL, 0, 0, 0, FUNC_SKB_VLAN_POP),   // 19: r0 = bpf_skb_vlan_pop(r1)
        insn(JNE_K, 0, 0, 1, 0),                  // 20: if r0 != 0 goto drop (22)
        insn(EXIT, 0, 0, 0, 0),                   // 21: return pass (r0 == 0)
        insn(MOV64_K, 0, 0, 0, TCX_DROP),         // 22: drop: r0 = drop
        insn(EXIT, 0, 0, 0, 0),                   // 23: return
    ]
}

/// Why [`attach`] failed: the step, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("giving {ifname} its VLAN {vlan}: {step}: {source}")]
pub struct AttachError {
    pub ifname: String,
    pub vlan: u16,
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

/// Makes `ifname` (a bridge's port towards one task, in the caller's network namespace) the
/// task's own VLAN `vlan` (1 to 4094), as described in the module's text.
// Casts: descriptors, an interface index and instruction counts, far inside u32.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn attach(ifname: &str, vlan: u16) -> Result<(), AttachError> {
    let fail = |step: &'static str| {
        move |source: io::Error| AttachError {
            ifname: ifname.to_string(),
            vlan,
            step,
            source,
        }
    };
    if !(1..=4094).contains(&vlan) {
        return Err(fail("checking the VLAN")(io::Error::from(
            io::ErrorKind::InvalidInput,
        )));
    }
    let (_, ifindex) = sys::interface(ifname).map_err(|e| {
        fail("finding the interface")(io::Error::new(io::ErrorKind::NotFound, format!("{e:?}")))
    })?;
    let load =
        |insns: &[Insn], name: &[u8; 15]| load_program(BPF_PROG_TYPE_SCHED_CLS, insns, name, 0);
    let tag = load(&tag_program(vlan), b"meshd_vlan_tag\0")
        .map_err(fail("loading the tagging program (bpf BPF_PROG_LOAD)"))?;
    let untag = load(&untag_program(vlan), b"meshd_vlan_pop\0")
        .map_err(fail("loading the untagging program (bpf BPF_PROG_LOAD)"))?;
    for (prog, at, step) in [
        (
            &tag,
            BPF_TCX_INGRESS,
            "attaching at tcx ingress (bpf BPF_PROG_ATTACH)",
        ),
        (
            &untag,
            BPF_TCX_EGRESS,
            "attaching at tcx egress (bpf BPF_PROG_ATTACH)",
        ),
    ] {
        bpf(
            BPF_PROG_ATTACH,
            BpfAttr::new()
                .u32(0, ifindex)
                .u32(4, prog.as_raw_fd() as u32)
                .u32(8, at),
        )
        .map_err(fail(step))?;
    }
    Ok(())
}
