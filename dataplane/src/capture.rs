//! `meshctl capture`: copies of what the workers receive and send, streamed to the asking
//! control connection (DPVS#203: "tcpdump cannot be used" on a bypass datapath).
//!
//! The asker compiles the filter (libpcap's `pcap_compile`, tcpdump's syntax), allocates every
//! record a worker may fill, and publishes a [`Session`] on the [`Board`]. Each worker looks at
//! the board's generation once per loop (one relaxed load: what capture costs when it is off)
//! and, when it changed, takes the session or lets it go. With a session, a worker runs the
//! filter over each frame it received (after taking off the tasks port's VLAN tag: before any
//! translation) and each it sends (after translation), and copies a matching frame into a free
//! record of its own lane: no lock, no allocation, no clock read (the time is the loop's). A
//! lane with no free record counts the frame as `missed`; the frame itself goes on.
//!
//! The asker drains the lanes every [`DRAIN_MS`], hands the records back, and writes the
//! copies to its connection as [`CaptureChunk`] lines until the count or the duration is
//! reached, the client hangs up, or meshd stops; then it takes the session off the board and
//! waits for every worker to let go of it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use crossbeam::queue::ArrayQueue;

use ctl::proto::{
    CaptureChunk, CaptureDirection, CapturePorts, CaptureSpec, CaptureStart, CaptureStop,
    CapturedFrame, ErrorCode, Response, CAPTURE_HEARTBEAT_MS, CAPTURE_MAX_SNAPLEN,
    CAPTURE_MIN_SNAPLEN,
};

use crate::buf::{PacketBuf, PortId};
use crate::shared::Shared;

/// Records per worker: what a worker can copy between two drains. With a drain every
/// [`DRAIN_MS`], a worker copies at most about 100 K frames a second; past that, matching
/// frames are counted as missed (and go on, uncopied).
pub const RECORDS: usize = 1024;

/// How often the asker drains the lanes.
pub const DRAIN_MS: u64 = 10;

/// Most frames one chunk line carries.
const CHUNK_FRAMES: usize = 512;

/// How long the asker waits for the workers to let go of a session it ended.
const RELEASE: Duration = Duration::from_secs(2);

/// A compiled capture filter: classic BPF from libpcap's compiler, run by libpcap's
/// interpreter (`pcap_offline_filter`), which reads the program and the frame and nothing
/// else.
pub struct Filter(pcap::BpfProgram);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.0.get_instructions().len())
            .finish()
    }
}

// SAFETY: a `BpfProgram` owns its instruction array (freed on drop, once); nothing else points
// into it. `pcap_offline_filter` only reads it, so sharing it between threads that only filter
// is sound, and moving it between threads moves sole ownership.
#[allow(unsafe_code)]
unsafe impl Send for Filter {}
// SAFETY: as above: `&Filter` only reaches `pcap_offline_filter`, which reads.
#[allow(unsafe_code)]
unsafe impl Sync for Filter {}

impl Filter {
    /// Compiles a tcpdump expression for Ethernet frames. The error is libpcap's own words.
    pub fn compile(expr: &str) -> Result<Filter, String> {
        let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).map_err(|e| e.to_string())?;
        match dead.compile(expr, true) {
            Ok(p) => Ok(Filter(p)),
            Err(pcap::Error::PcapError(msg)) => Err(msg),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether `frame` matches.
    #[inline]
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.0.filter(frame)
    }
}

/// One copied frame, in a buffer the asker allocated.
#[derive(Debug)]
struct Record {
    /// The worker clock's microseconds when its loop began.
    at_us: u64,
    len: u32,
    port: PortId,
    tx: bool,
    vlan: u16,
    data: Vec<u8>,
}

impl Record {
    fn new(snaplen: usize) -> Box<Record> {
        Box::new(Record {
            at_us: 0,
            len: 0,
            port: PortId::Uplink,
            tx: false,
            vlan: 0,
            data: Vec::with_capacity(snaplen),
        })
    }
}

/// One worker's share of a session.
#[derive(Debug)]
struct Lane {
    free: ArrayQueue<Box<Record>>,
    full: ArrayQueue<Box<Record>>,
    matched: AtomicU64,
    missed: AtomicU64,
    /// Unix microseconds at the worker clock's zero, set by the worker when it takes the
    /// session (0: not taken yet).
    base_us: AtomicU64,
}

/// One capture: what to copy and where to.
#[derive(Debug)]
pub struct Session {
    uplink: bool,
    tasks: bool,
    filter: Option<Filter>,
    snaplen: usize,
    lanes: Box<[Lane]>,
}

impl Session {
    /// A session for `workers` workers, its records allocated.
    pub fn new(
        ports: CapturePorts,
        filter: Option<Filter>,
        snaplen: usize,
        workers: usize,
    ) -> Self {
        let lanes = (0..workers)
            .map(|_| {
                let free = ArrayQueue::new(RECORDS);
                for _ in 0..RECORDS {
                    let _ = free.push(Record::new(snaplen));
                }
                Lane {
                    free,
                    full: ArrayQueue::new(RECORDS),
                    matched: AtomicU64::new(0),
                    missed: AtomicU64::new(0),
                    base_us: AtomicU64::new(0),
                }
            })
            .collect();
        Session {
            uplink: ports != CapturePorts::Tasks,
            tasks: ports != CapturePorts::Uplink,
            filter,
            snaplen,
            lanes,
        }
    }

    /// Worker `worker` took the session; `clock_us` is its clock's microseconds now.
    pub fn taken(&self, worker: usize, clock_us: u64) {
        if let Some(l) = self.lanes.get(worker) {
            let unix = unix_us().saturating_sub(clock_us).max(1);
            l.base_us.store(unix, Ordering::Relaxed);
        }
    }

    /// Offers the frames of `burst`, received on `port`, to worker `worker`'s lane.
    #[inline]
    pub fn received(&self, worker: usize, port: PortId, at_us: u64, burst: &[PacketBuf]) {
        if !self.wants(port) {
            return;
        }
        for b in burst {
            self.offer(worker, port, false, at_us, b);
        }
    }

    /// Offers one frame worker `worker` sends on `port`.
    #[inline]
    pub fn sent(&self, worker: usize, port: PortId, at_us: u64, b: &PacketBuf) {
        if self.wants(port) {
            self.offer(worker, port, true, at_us, b);
        }
    }

    #[inline]
    fn wants(&self, port: PortId) -> bool {
        match port {
            PortId::Uplink => self.uplink,
            PortId::Tasks => self.tasks,
        }
    }

    fn offer(&self, worker: usize, port: PortId, tx: bool, at_us: u64, b: &PacketBuf) {
        let frame = b.data();
        if let Some(f) = &self.filter {
            if !f.matches(frame) {
                return;
            }
        }
        let Some(lane) = self.lanes.get(worker) else {
            return;
        };
        lane.matched.fetch_add(1, Ordering::Relaxed);
        let Some(mut r) = lane.free.pop() else {
            lane.missed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        r.at_us = at_us;
        r.len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        r.port = port;
        r.tx = tx;
        // A buffer keeps the VLAN it came in on: only the tasks port's frames have one.
        r.vlan = if port == PortId::Tasks { b.vlan } else { 0 };
        r.data.clear();
        // Within the capacity the asker gave it: no allocation.
        r.data
            .extend_from_slice(&frame[..frame.len().min(self.snaplen)]);
        if let Err(r) = lane.full.push(r) {
            // Cannot happen (a lane's records are fewer than its full queue's room); counted,
            // and the record goes back, if it does.
            lane.missed.fetch_add(1, Ordering::Relaxed);
            let _ = lane.free.push(r);
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.lanes.iter().fold((0, 0), |(m, x), l| {
            (
                m + l.matched.load(Ordering::Relaxed),
                x + l.missed.load(Ordering::Relaxed),
            )
        })
    }

    /// Takes every copied frame off the lanes, as the protocol's frames (records go back to
    /// their lanes), in time order.
    fn drain(&self, out: &mut Vec<CapturedFrame>) {
        let start = out.len();
        for (w, l) in self.lanes.iter().enumerate() {
            let base = l.base_us.load(Ordering::Relaxed);
            while let Some(r) = l.full.pop() {
                out.push(CapturedFrame {
                    time_us: base + r.at_us,
                    worker: u16::try_from(w).unwrap_or(u16::MAX),
                    port: match r.port {
                        PortId::Uplink => CapturePorts::Uplink,
                        PortId::Tasks => CapturePorts::Tasks,
                    },
                    direction: if r.tx {
                        CaptureDirection::Tx
                    } else {
                        CaptureDirection::Rx
                    },
                    vlan: r.vlan,
                    len: r.len,
                    data: r.data.clone(),
                });
                let _ = l.free.push(r);
            }
        }
        out[start..].sort_by_key(|f| f.time_us);
    }
}

/// Where workers find the capture under way, if any.
#[derive(Debug, Default)]
pub struct Board {
    /// Moves each time a session is put up or taken down.
    pub generation: AtomicU64,
    session: ArcSwapOption<Session>,
    busy: AtomicBool,
}

impl Board {
    /// The session under way (for a worker whose generation is behind).
    pub fn current(&self) -> Option<Arc<Session>> {
        self.session.load_full()
    }

    fn put(&self, s: Option<Arc<Session>>) {
        self.session.store(s);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Unix microseconds now.
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Checks `spec` against this node and compiles its filter: the session's parts, or the
/// error line to answer.
pub fn prepare(shared: &Shared, spec: &CaptureSpec) -> Result<(Option<Filter>, usize), Response> {
    let table = shared.table.load();
    let me = table.node(table.local).name.clone();
    if let Some(n) = &spec.node {
        if !n.eq_ignore_ascii_case(&me) {
            return Err(Response::error(
                ErrorCode::NotFound,
                format!("this is node {me}, not {n}"),
            ));
        }
    }
    let snaplen = spec.snaplen.unwrap_or(CAPTURE_MAX_SNAPLEN);
    if !(CAPTURE_MIN_SNAPLEN..=CAPTURE_MAX_SNAPLEN).contains(&snaplen) {
        return Err(Response::error(
            ErrorCode::Invalid,
            format!(
                "snaplen {snaplen} is out of range: {CAPTURE_MIN_SNAPLEN} to {CAPTURE_MAX_SNAPLEN} bytes (meshd's frames are at most {CAPTURE_MAX_SNAPLEN})"
            ),
        ));
    }
    if spec.count == Some(0) || spec.duration_ms == Some(0) {
        return Err(Response::error(
            ErrorCode::Invalid,
            "count and duration must be at least 1 when given",
        ));
    }
    let filter = match spec.filter.trim() {
        "" => None,
        expr => Some(Filter::compile(expr).map_err(|e| {
            Response::error(
                ErrorCode::Invalid,
                format!(
                    "the capture filter {expr:?} does not parse: {e} (tcpdump's syntax, man pcap-filter)"
                ),
            )
        })?),
    };
    Ok((filter, snaplen as usize))
}

/// Runs the capture `spec` asks for and streams it to `out` (a control connection); returns
/// when it ended. Refusals are one error line.
pub fn serve(shared: &Shared, spec: &CaptureSpec, out: &mut impl Write) {
    let (filter, snaplen) = match prepare(shared, spec) {
        Ok(x) => x,
        Err(r) => {
            let _ = out.write_all(r.to_line().as_bytes());
            return;
        }
    };
    if shared.capture.busy.swap(true, Ordering::AcqRel) {
        let r = Response::error(
            ErrorCode::Busy,
            "a capture is running on this node already: one at a time (stop the other meshctl capture, or wait for it)",
        );
        let _ = out.write_all(r.to_line().as_bytes());
        return;
    }
    let workers = shared.bells.len();
    let session = Arc::new(Session::new(spec.ports, filter, snaplen, workers));
    let table = shared.table.load();
    let start = CaptureChunk {
        start: Some(CaptureStart {
            node: table.node(table.local).name.clone(),
            workers: u16::try_from(workers).unwrap_or(u16::MAX),
            snaplen: u32::try_from(snaplen).unwrap_or(CAPTURE_MAX_SNAPLEN),
            filter: spec.filter.clone(),
        }),
        ..CaptureChunk::default()
    };
    let generation = table.generation;
    drop(table);
    shared.capture.put(Some(session.clone()));
    ring(shared);
    let mut frames = Vec::new();
    let mut sent = 0u64;
    let stop = run(
        shared,
        spec,
        &session,
        generation,
        start,
        out,
        &mut frames,
        &mut sent,
    );
    shared.capture.put(None);
    ring(shared);
    // Until every worker let go (a stopped meshd's workers may not come back: bounded).
    let t0 = Instant::now();
    while Arc::strong_count(&session) > 1 && t0.elapsed() < RELEASE {
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Some(stop) = stop {
        // What the workers copied since the last drain, then the end.
        session.drain(&mut frames);
        let (matched, missed) = session.totals();
        let last = Last {
            generation,
            matched,
            missed,
            end: Some(stop),
            count: spec.count,
        };
        let _ = send(out, &last, frames, &mut sent);
    }
    shared.capture.busy.store(false, Ordering::Release);
}

fn ring(shared: &Shared) {
    for b in &shared.bells {
        b.ring();
    }
}

/// Streams chunks until the capture should end: why, or `None` when the client went away.
/// Frames drained but not sent yet are left in `frames`.
#[allow(clippy::too_many_arguments)]
fn run(
    shared: &Shared,
    spec: &CaptureSpec,
    session: &Session,
    generation: u64,
    start: CaptureChunk,
    out: &mut impl Write,
    frames: &mut Vec<CapturedFrame>,
    sent: &mut u64,
) -> Option<CaptureStop> {
    let line = Response::ok(generation, json(&start)?).to_line();
    if out.write_all(line.as_bytes()).is_err() {
        return None;
    }
    let until = spec
        .duration_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let heartbeat = Duration::from_millis(CAPTURE_HEARTBEAT_MS);
    let mut last = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(DRAIN_MS));
        if shared.stop.load(Ordering::Relaxed) {
            return Some(CaptureStop::Shutdown);
        }
        session.drain(frames);
        if spec.count.is_some_and(|c| *sent + frames.len() as u64 >= c) {
            return Some(CaptureStop::Count);
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            return Some(CaptureStop::Duration);
        }
        if !frames.is_empty() || last.elapsed() >= heartbeat {
            let (matched, missed) = session.totals();
            let now = Last {
                generation,
                matched,
                missed,
                end: None,
                count: spec.count,
            };
            if !send(out, &now, std::mem::take(frames), sent) {
                return None;
            }
            last = Instant::now();
        }
    }
}

/// What every chunk of one send carries besides frames.
struct Last {
    generation: u64,
    matched: u64,
    missed: u64,
    /// Set on the stream's last send.
    end: Option<CaptureStop>,
    count: Option<u64>,
}

fn json<T: serde::Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

/// Writes `frames` (cut to what the count leaves) in lines of at most [`CHUNK_FRAMES`], the
/// last with `how.end`. Whether the client took them.
fn send(out: &mut impl Write, how: &Last, mut frames: Vec<CapturedFrame>, sent: &mut u64) -> bool {
    if let Some(c) = how.count {
        let left = usize::try_from(c.saturating_sub(*sent)).unwrap_or(usize::MAX);
        frames.truncate(left);
    }
    let mut rest = frames.into_iter().peekable();
    loop {
        let batch: Vec<_> = rest.by_ref().take(CHUNK_FRAMES).collect();
        *sent += batch.len() as u64;
        let last = rest.peek().is_none();
        let chunk = CaptureChunk {
            start: None,
            frames: batch,
            matched: how.matched,
            missed: how.missed,
            end: if last { how.end } else { None },
        };
        let Some(v) = json(&chunk) else { return false };
        if out
            .write_all(Response::ok(how.generation, v).to_line().as_bytes())
            .is_err()
        {
            return false;
        }
        if last {
            return true;
        }
    }
}
