//! Flows that outlive the process: each worker's flow records live in a shared file mapping
//! (`--flow-state`, by default under `/dev/shm`), so a meshd that is killed or restarted and
//! started again with the same configuration adopts them, and established connections through
//! the node go on after the gap (as conntrack and IPVS keep theirs in the kernel, and Katran in
//! pinned BPF maps).
//!
//! The file is a 4 KiB header, then one region per worker of `capacity` records of
//! [`Flow`], 192 bytes each, written by the workers in place (no copy, no cost on the fast
//! path). Only the records are kept: the index of slots is rebuilt from their keys at start, and
//! so are the free list and the counters. The header names the layout (a version, the record's
//! size and a fingerprint of its fields' offsets), the worker count, the capacity and the node,
//! with a checksum over them; a file that does not match in every one is not adopted (one log
//! line says why) and is overwritten with empty tables.
//!
//! A record is checked before it is read as a flow: its bytes must be a valid [`Flow`] (every
//! enum tag and flag in range, through `bytemuck`'s checked casts), and a live record's
//! checksum deltas must be what its keys and rewrites give (a record half written when the
//! process died fails that). A record that fails is zeroed (an empty place) and counted.
//!
//! One meshd at a time: the file is locked (`flock`) while mapped; a second meshd for the same
//! file refuses to start. The lock goes with the process, even on `kill -9`.
#![allow(unsafe_code)]

use super::{Action, Flow};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

/// Bumped when a record's meaning changes without its layout changing.
pub const LAYOUT: u32 = 1;
const MAGIC: [u8; 8] = *b"MESHDFLW";
/// The header's room at the start of the file (the regions start page-aligned).
const HEADER: usize = 4096;
const RECORD: usize = std::mem::size_of::<Flow>();

/// What the header says. `pid` and `stopped` change while the file is in use and are not in the
/// checksum.
#[derive(Debug, Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(C)]
struct Header {
    magic: [u8; 8],
    layout: u32,
    record: u32,
    shape: u32,
    workers: u32,
    capacity: u64,
    addr: u32,
    name_len: u32,
    name: [u8; 64],
    checksum: u32,
    pid: u32,
    /// 1 once the meshd that used it stopped cleanly.
    stopped: u32,
    _pad: u32,
}

impl Header {
    fn new(node: &str, addr: u32, workers: u32, capacity: u64) -> Self {
        let mut name = [0u8; 64];
        let n = node.len().min(64);
        name[..n].copy_from_slice(&node.as_bytes()[..n]);
        let mut h = Header {
            magic: MAGIC,
            layout: LAYOUT,
            record: u32::try_from(RECORD).unwrap_or(u32::MAX),
            shape: shape(),
            workers,
            capacity,
            addr,
            name_len: u32::try_from(n).unwrap_or(0),
            name,
            checksum: 0,
            pid: std::process::id(),
            stopped: 0,
            _pad: 0,
        };
        h.checksum = h.sum();
        h
    }

    /// The CRC-32 of everything before the checksum.
    fn sum(&self) -> u32 {
        let bytes = bytemuck::bytes_of(self);
        crc32fast::hash(&bytes[..std::mem::offset_of!(Header, checksum)])
    }

    fn node(&self) -> String {
        let n = usize::try_from(self.name_len).unwrap_or(0).min(64);
        String::from_utf8_lossy(&self.name[..n]).into_owned()
    }

    /// Why a file with header `self` cannot be adopted by a meshd that would write `want`.
    fn mismatch(&self, want: &Header) -> Option<String> {
        if self.magic != MAGIC {
            return Some("it is not a meshd flow-state file".into());
        }
        if self.checksum != self.sum() {
            return Some("its header's checksum does not match (damaged)".into());
        }
        if (self.layout, self.record, self.shape) != (want.layout, want.record, want.shape) {
            return Some(format!(
                "it was written by a meshd with another flow layout (version {} of {}-byte \
                 records, shape {:08x}; this meshd writes version {} of {}-byte records, shape \
                 {:08x})",
                self.layout, self.record, self.shape, want.layout, want.record, want.shape
            ));
        }
        if self.workers != want.workers {
            return Some(format!(
                "it holds {} workers' flows and this meshd runs {} (each flow belongs to the \
                 worker its client hashes to)",
                self.workers, want.workers
            ));
        }
        if self.capacity != want.capacity {
            return Some(format!(
                "its tables hold {} flows per worker and this meshd's hold {} (--flows)",
                self.capacity, want.capacity
            ));
        }
        if (self.node(), self.addr) != (want.node(), want.addr) {
            return Some(format!(
                "it is node {:?} at {}'s, and this is {:?} at {}",
                self.node(),
                std::net::Ipv4Addr::from(self.addr),
                want.node(),
                std::net::Ipv4Addr::from(want.addr)
            ));
        }
        None
    }
}

/// A fingerprint of where [`Flow`]'s and [`Action`]'s fields are: a build that moves one
/// writes another shape, and its files are not adopted.
fn shape() -> u32 {
    use std::mem::{offset_of, size_of};
    let words: [usize; 27] = [
        size_of::<Flow>(),
        offset_of!(Flow, fwd_key),
        offset_of!(Flow, fwd),
        offset_of!(Flow, last_seen),
        offset_of!(Flow, client_ack),
        offset_of!(Flow, tcp),
        offset_of!(Flow, live),
        offset_of!(Flow, stats_slot),
        offset_of!(Flow, rev_key),
        offset_of!(Flow, rev),
        offset_of!(Flow, rev_seen),
        offset_of!(Flow, rev_stats_slot),
        offset_of!(Flow, kind),
        offset_of!(Flow, task_uid),
        offset_of!(Flow, timeouts),
        offset_of!(Flow, counts),
        offset_of!(Flow, client6_head),
        offset_of!(Flow, client6_tail),
        size_of::<Action>(),
        offset_of!(Action, src),
        offset_of!(Action, dst),
        offset_of!(Action, ip_delta),
        offset_of!(Action, l4_delta),
        offset_of!(Action, sport),
        offset_of!(Action, dport),
        offset_of!(Action, egress),
        size_of::<super::Egress>(),
    ];
    let mut h = crc32fast::Hasher::new();
    for w in words {
        h.update(&(w as u64).to_le_bytes());
    }
    h.finalize()
}

/// Why the flow-state file could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error(
        "--flow-state {path}: another meshd (pid {pid}) is running with this flow state; stop \
         it first (one meshd per node), or give this one another --flow-state"
    )]
    Busy { path: String, pid: u32 },
    #[error("--flow-state {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What was found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No file, or an empty one: tables start empty.
    Fresh,
    /// The previous meshd's flows, adopted: how many per worker, how many records were
    /// discarded, and whether it had stopped cleanly.
    Adopted {
        flows: Vec<usize>,
        discarded: usize,
        clean: bool,
    },
    /// A file that does not fit, and why: overwritten, tables start empty.
    Refused(String),
}

/// The mapped flow-state file of a node: hands each worker its region.
#[derive(Debug)]
pub struct FlowFile {
    path: PathBuf,
    /// Held for the lock.
    _file: File,
    map: Arc<memmap2::MmapMut>,
    base: NonNull<u8>,
    workers: usize,
    capacity: usize,
    /// Whether the regions were handed out (once: each backs one worker's table).
    handed: bool,
}

// SAFETY: `base` points into `map`, which this owns through the Arc; the regions it hands out
// are disjoint, one per worker.
unsafe impl Send for FlowFile {}

impl FlowFile {
    /// Opens (or creates) `path` for `workers` tables of `capacity` flows of node `node` at
    /// `addr`, locks it, and adopts what it holds if it fits.
    pub fn open(
        path: &Path,
        node: &str,
        addr: u32,
        workers: usize,
        capacity: usize,
    ) -> Result<(FlowFile, Found), KeepError> {
        let capacity = capacity.clamp(16, super::MAX_FLOWS);
        let io = |source: std::io::Error| KeepError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode_0600()
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut h = Header::zeroed_header();
                let _ = std::os::unix::fs::FileExt::read_exact_at(
                    &file,
                    bytemuck::bytes_of_mut(&mut h),
                    0,
                );
                return Err(KeepError::Busy {
                    path: path.display().to_string(),
                    pid: h.pid,
                });
            }
            return Err(io(e));
        }
        let want = Header::new(
            node,
            addr,
            u32::try_from(workers).unwrap_or(u32::MAX),
            capacity as u64,
        );
        let total = HEADER + workers * capacity * RECORD;
        let len = file.metadata().map_err(io)?.len();
        let mut old = Header::zeroed_header();
        let found = if len == 0 {
            Found::Fresh
        } else if len < std::mem::size_of::<Header>() as u64 {
            Found::Refused(format!("it is truncated ({len} bytes)"))
        } else {
            std::os::unix::fs::FileExt::read_exact_at(&file, bytemuck::bytes_of_mut(&mut old), 0)
                .map_err(io)?;
            match old.mismatch(&want) {
                Some(why) => Found::Refused(why),
                None if len != total as u64 => Found::Refused(format!(
                    "it is {len} bytes where its header says {total} (truncated or grown)"
                )),
                None => Found::Adopted {
                    flows: Vec::new(),
                    discarded: 0,
                    clean: old.stopped == 1,
                },
            }
        };
        if !matches!(found, Found::Adopted { .. }) {
            // Start empty: zeroes are empty places (a zeroed record is a valid, dead flow).
            file.set_len(0).map_err(io)?;
            file.set_len(total as u64).map_err(io)?;
        }
        // SAFETY: the file is ours (locked, mode 0600) and exactly `total` bytes long; the
        // mapping is shared so that what the workers write stays in the file.
        let mut map =
            unsafe { memmap2::MmapOptions::new().len(total).map_mut(&file) }.map_err(io)?;
        // Huge pages where the kernel gives them to shared memory (tmpfs: shmem_enabled
        // `advise` or `within_size`; hugetlbfs always): a million flows on 4 KiB pages cost a TLB
        // miss per packet. Refused quietly elsewhere.
        let _ = map.advise(memmap2::Advice::HugePage);
        map[..std::mem::size_of::<Header>()].copy_from_slice(bytemuck::bytes_of(&want));
        // Every page written once now, as a heap table is filled at start: a shared mapping's
        // page is mapped read-only until its first write, and that write faults (a new-flow
        // storm ran 7% slower taking those faults one page of 21 flows at a time).
        for page in map.chunks_mut(4096) {
            // SAFETY: a byte of the mapping, read and written back unchanged; nothing else uses
            // the file yet (it is locked and no worker has it).
            unsafe { std::ptr::write_volatile(page.as_mut_ptr(), page[0]) };
        }
        let base = NonNull::new(map.as_mut_ptr())
            .ok_or_else(|| io(std::io::ErrorKind::InvalidData.into()))?;
        let ff = FlowFile {
            path: path.to_owned(),
            _file: file,
            map: Arc::new(map),
            base,
            workers,
            capacity,
            handed: false,
        };
        let found = match found {
            Found::Adopted { clean, .. } => {
                let (flows, discarded): (Vec<usize>, Vec<usize>) =
                    (0..workers).map(|w| ff.check(w)).unzip();
                Found::Adopted {
                    flows,
                    discarded: discarded.iter().sum(),
                    clean,
                }
            }
            other => other,
        };
        Ok((ff, found))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Worker `w`'s region, from `HEADER + w * capacity` records on.
    fn region_ptr(&self, w: usize) -> *mut u8 {
        // SAFETY: within the mapping: w < workers and the file holds workers * capacity
        // records after the header.
        unsafe { self.base.as_ptr().add(HEADER + w * self.capacity * RECORD) }
    }

    /// Checks every record of worker `w`'s region; zeroes those that are not valid flows, or
    /// are live but inconsistent. Returns how many live ones it kept, and how many it zeroed.
    fn check(&self, w: usize) -> (usize, usize) {
        let p = self.region_ptr(w);
        let (mut live, mut discarded) = (0, 0);
        for i in 0..self.capacity {
            // SAFETY: record i of region w lies inside the mapping, which is initialized memory
            // (a file's bytes); reading it as bytes is valid whatever it holds. No reference to
            // it as a Flow exists yet.
            let bytes = unsafe { std::slice::from_raw_parts(p.add(i * RECORD), RECORD) };
            let ok = match bytemuck::checked::try_from_bytes::<Flow>(bytes) {
                Ok(f) if !f.live => true,
                Ok(f) if f.consistent() => {
                    live += 1;
                    true
                }
                _ => false,
            };
            if !ok {
                discarded += 1;
                // SAFETY: as above; zeroes are a valid, dead record.
                unsafe { std::ptr::write_bytes(p.add(i * RECORD), 0, RECORD) };
            }
        }
        (live, discarded)
    }

    /// Each worker's records, in worker order, to back its flow table (every record a valid
    /// flow: checked at open, or zeroes). Handed out once: later calls get none, so no two
    /// tables share a record.
    pub fn regions(&mut self) -> Vec<Arena> {
        if std::mem::replace(&mut self.handed, true) {
            return Vec::new();
        }
        (0..self.workers)
            .map(|w| Arena {
                // SAFETY: a pointer into the mapping, never null.
                ptr: unsafe { NonNull::new_unchecked(self.region_ptr(w).cast::<Flow>()) },
                len: self.capacity,
                owner: Owner::Mapped(self.map.clone()),
            })
            .collect()
    }

    /// Notes in the header that this meshd stopped cleanly (after its workers stopped).
    pub fn stopped(&self) {
        let off = std::mem::offset_of!(Header, stopped);
        // SAFETY: the header's `stopped` word, inside the mapping; the workers never write the
        // header.
        unsafe { self.base.as_ptr().add(off).cast::<u32>().write_unaligned(1) };
    }
}

impl Header {
    fn zeroed_header() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

/// `OpenOptions::mode(0o600)`, spelled so the call chain reads in order.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// Where a flow table's records are: on the heap, or in a region of a [`FlowFile`].
#[derive(Debug)]
enum Owner {
    Heap,
    /// Keeps the mapping alive.
    Mapped(#[allow(dead_code)] Arc<memmap2::MmapMut>),
}

/// A flow table's records: a fixed-length slice of [`Flow`] on the heap or in a shared mapping.
#[derive(Debug)]
pub struct Arena {
    ptr: NonNull<Flow>,
    len: usize,
    owner: Owner,
}

// SAFETY: an Arena is the only handle to its records (heap: its own allocation; mapped: a region
// no other Arena covers), so moving it to another thread moves all access with it.
unsafe impl Send for Arena {}

impl Arena {
    /// `n` copies of `value` on the heap (huge pages advised).
    pub fn heap(n: usize, value: Flow) -> Self {
        let b = crate::hugepage::vec_of(n, value).into_boxed_slice();
        let len = b.len();
        let ptr = NonNull::from(Box::leak(b)).cast::<Flow>();
        Arena {
            ptr,
            len,
            owner: Owner::Heap,
        }
    }
}

impl std::ops::Deref for Arena {
    type Target = [Flow];
    #[inline(always)]
    fn deref(&self) -> &[Flow] {
        // SAFETY: `len` records at `ptr`, all valid flows (a heap slice of them, or a mapped
        // region checked record by record before the Arena was made), owned by this Arena.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Arena {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [Flow] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if let Owner::Heap = self.owner {
            // SAFETY: `ptr`/`len` came from `Box::leak` of a boxed slice in `heap`, freed once.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // tests: small known values
mod tests {
    use super::super::{Egress, FlowKey, FlowKind, FlowTable};
    use super::*;
    use proptest::prelude::*;

    /// A fresh path under the temporary directory (removed by the caller's [`Scratch`]).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            Scratch(
                std::env::temp_dir()
                    .join(format!("meshd-keep-{}-{tag}-{n}.flows", std::process::id())),
            )
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// An ingress flow from client `i` to a task, masqueraded (as the pipeline makes them): TCP
    /// for even `i`, UDP for odd; an IPv6 client's for every third `i` (its address in the
    /// record, its replies converted).
    fn flow(i: u32) -> Flow {
        let proto = if i.is_multiple_of(2) { 6 } else { 17 };
        let k = FlowKey::new(proto, 0x0a00_0000 + i, 40000 + i as u16, 0xc0a8_0102, 8080);
        let r = FlowKey::new(proto, 0x0a00_0107, 80, 0x0a00_0102, 1024 + i as u16);
        let a = Action::new(
            &k,
            r.dst(),
            r.dport(),
            r.src(),
            80,
            Egress::Vxlan {
                vtep: 0xc0a8_0103,
                vni: 4097,
                port: 4789,
                sport: 50000,
            },
        );
        let b = Action::new(
            &r,
            k.dst(),
            k.dport(),
            k.src(),
            k.sport(),
            if i.is_multiple_of(3) {
                Egress::Uplink6 {
                    mac: [2, 0, 0, 0, 0, 9],
                }
            } else {
                Egress::Uplink {
                    mac: [2, 0, 0, 0, 0, 9],
                }
            },
        );
        let mut f = Flow::new(FlowKind::Ingress, [k, r], [a, b], 77, 3, [7200, 60, 30], 5);
        if i.is_multiple_of(3) {
            let mut c6 = [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            c6[12..].copy_from_slice(&i.to_be_bytes());
            c6[15] |= 1;
            f.set_client6(c6);
        }
        f
    }

    fn open(p: &Path, workers: usize, cap: usize) -> (FlowFile, Found) {
        FlowFile::open(p, "n1", 0xc0a8_0102, workers, cap).unwrap()
    }

    /// A table over `arena` holding flows 0..n (keep it alive to keep the records mapped until
    /// dropped).
    fn fill(arena: Arena, n: u32) -> FlowTable {
        let (mut t, dropped) = FlowTable::adopt(arena);
        assert_eq!(dropped, 0);
        for i in 0..n {
            t.insert(flow(i), 0).unwrap();
        }
        t
    }

    #[test]
    fn zeroes_are_a_valid_empty_place() {
        let f = bytemuck::checked::try_pod_read_unaligned::<Flow>(&[0u8; RECORD]).unwrap();
        assert!(!f.live);
    }

    #[test]
    fn a_restarted_meshd_adopts_every_flow_with_its_keys_and_rewrites() {
        let p = Scratch::new("adopt");
        let (mut ff, found) = open(&p.0, 2, 64);
        assert_eq!(found, Found::Fresh);
        let mut regions = ff.regions();
        let t1 = fill(regions.pop().unwrap(), 3);
        let t0 = fill(regions.pop().unwrap(), 10);
        let before: Vec<Flow> = t0.live_ids().map(|id| *t0.get(id)).collect();
        assert_eq!(before.iter().filter(|f| f.is_v6()).count(), 4);
        // A kill -9: nothing is written on the way out.
        drop((t0, t1, ff));

        let (mut ff, found) = open(&p.0, 2, 64);
        assert_eq!(
            found,
            Found::Adopted {
                flows: vec![10, 3],
                discarded: 0,
                clean: false
            }
        );
        let (mut t, _) = FlowTable::adopt(ff.regions().swap_remove(0));
        assert_eq!(t.len(), 10);
        for f in &before {
            for (k, dir) in f
                .keys()
                .into_iter()
                .zip([super::super::Dir::Fwd, super::super::Dir::Rev])
            {
                let (id, d) = t.lookup(&k, k.hash()).expect("adopted key");
                assert_eq!(d, dir);
                assert_eq!(t.get(id), f);
            }
        }
        // New flows take free places, never an adopted one.
        let id = t.insert(flow(100), 0).unwrap();
        assert!(!before.iter().any(|f| f.keys() == t.get(id).keys()));
        assert_eq!(t.len(), 11);
        ff.stopped();
        drop((t, ff));
        let (_, found) = open(&p.0, 2, 64);
        assert!(
            matches!(found, Found::Adopted { clean: true, .. }),
            "{found:?}"
        );
    }

    #[test]
    fn a_second_meshd_on_the_same_file_is_refused_while_the_first_runs() {
        let p = Scratch::new("busy");
        let (ff, _) = open(&p.0, 1, 16);
        let err = FlowFile::open(&p.0, "n1", 0xc0a8_0102, 1, 16).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, KeepError::Busy { pid, .. } if pid == std::process::id()),
            "{msg}"
        );
        assert!(msg.contains("another meshd"), "{msg}");
        drop(ff);
        FlowFile::open(&p.0, "n1", 0xc0a8_0102, 1, 16).unwrap();
    }

    /// A file that does not fit is refused with the reason, and the tables start empty.
    #[test]
    fn a_file_that_does_not_fit_is_refused_with_its_reason_and_tables_start_empty() {
        let refused = |edit: &dyn Fn(&Path), workers: usize, cap: usize, node: &str, want: &str| {
            let p = Scratch::new("refuse");
            let (mut ff, _) = open(&p.0, 2, 64);
            let t = fill(ff.regions().swap_remove(0), 5);
            drop((t, ff));
            edit(&p.0);
            let (mut ff, found) = FlowFile::open(&p.0, node, 0xc0a8_0102, workers, cap).unwrap();
            match &found {
                Found::Refused(why) => assert!(why.contains(want), "{why:?} lacks {want:?}"),
                other => panic!("{other:?}: adopted, wanted refused ({want})"),
            }
            assert!(FlowTable::adopt(ff.regions().swap_remove(0)).0.is_empty());
            let len = std::fs::metadata(&p.0).unwrap().len() as usize;
            assert_eq!(len, HEADER + workers * cap * RECORD);
        };
        let nothing = |_: &Path| {};
        let poke = |at: usize, bytes: &'static [u8]| {
            move |p: &Path| {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.write_all_at(bytes, at as u64).unwrap();
            }
        };
        refused(
            &nothing,
            1,
            64,
            "n1",
            "holds 2 workers' flows and this meshd runs 1",
        );
        refused(
            &nothing,
            2,
            128,
            "n1",
            "hold 64 flows per worker and this meshd's hold 128",
        );
        refused(&nothing, 2, 64, "n2", "node \"n1\"");
        refused(
            &poke(0, b"GARBAGE!"),
            2,
            64,
            "n1",
            "not a meshd flow-state file",
        );
        let layout = std::mem::offset_of!(Header, layout);
        // Another version, its checksum made to match: refused for the version.
        let other_version = move |p: &Path| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .unwrap();
            let mut h = Header::zeroed_header();
            f.read_exact_at(bytemuck::bytes_of_mut(&mut h), 0).unwrap();
            h.layout = LAYOUT + 1;
            h.checksum = h.sum();
            f.write_all_at(bytemuck::bytes_of(&h), 0).unwrap();
        };
        refused(
            &other_version,
            2,
            64,
            "n1",
            "another flow layout (version 2",
        );
        refused(&poke(layout, &[9]), 2, 64, "n1", "checksum does not match");
        let truncate = |p: &Path| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(HEADER as u64 + 100).unwrap();
        };
        refused(&truncate, 2, 64, "n1", "truncated or grown");
        let tiny = |p: &Path| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(10).unwrap();
        };
        refused(&tiny, 2, 64, "n1", "truncated (10 bytes)");
    }

    #[test]
    fn records_half_written_or_not_flows_are_zeroed_and_counted_the_rest_adopted() {
        use std::os::unix::fs::FileExt;
        let p = Scratch::new("torn");
        let (mut ff, _) = open(&p.0, 1, 16);
        let t = fill(ff.regions().swap_remove(0), 4);
        let ids: Vec<u32> = t.live_ids().collect();
        drop((t, ff));
        let f = std::fs::OpenOptions::new().write(true).open(&p.0).unwrap();
        let at = |id: u32, field: usize| (HEADER + id as usize * RECORD + field) as u64;
        // An enum tag out of range: not a flow at all.
        f.write_all_at(&[9], at(ids[0], std::mem::offset_of!(Flow, kind)))
            .unwrap();
        // A rewrite that its checksum delta does not match: half written.
        f.write_all_at(&[1, 2, 3, 4], at(ids[1], std::mem::offset_of!(Flow, fwd)))
            .unwrap();
        // A dead place with garbage in it is zeroed too (it is read as a flow by the sweep).
        f.write_all_at(&[7], at(15, std::mem::offset_of!(Flow, tcp)))
            .unwrap();
        let (mut ff, found) = open(&p.0, 1, 16);
        assert_eq!(
            found,
            Found::Adopted {
                flows: vec![2],
                discarded: 3,
                clean: false
            }
        );
        let (t, _) = FlowTable::adopt(ff.regions().swap_remove(0));
        assert_eq!(t.live_ids().collect::<Vec<_>>(), ids[2..].to_vec());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever bytes a file holds, opening it never panics, and what is adopted is whole.
        #[test]
        fn any_damage_is_refused_or_dropped_never_adopted_as_garbage(
            pokes in proptest::collection::vec((0usize..HEADER + 8 * RECORD, any::<u8>()), 1..40),
        ) {
            use std::os::unix::fs::FileExt;
            let p = Scratch::new("fuzz");
            let (mut ff, _) = open(&p.0, 1, 16);
            let t = fill(ff.regions().swap_remove(0), 8);
            drop((t, ff));
            let f = std::fs::OpenOptions::new().write(true).open(&p.0).unwrap();
            for (at, b) in &pokes {
                f.write_all_at(&[*b], *at as u64).unwrap();
            }
            let (mut ff, found) = open(&p.0, 1, 16);
            let (t, _) = FlowTable::adopt(ff.regions().swap_remove(0));
            match found {
                Found::Adopted { flows, .. } => prop_assert!(flows[0] <= 8),
                _ => prop_assert!(t.is_empty()),
            }
            for id in t.live_ids() {
                prop_assert!(t.get(id).consistent());
            }
        }
    }
}
