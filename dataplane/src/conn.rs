//! `meshctl conn ls` and `conn rm`: the node's connections, read from the workers' own flow
//! tables without stopping them (as `ipvsadm -Lnc` and `conntrack -L` read the kernel's).
//!
//! Each worker owns its flow table and nobody else touches it. So the asking thread (a control
//! connection) does not read the tables: it hands every worker a [`Job`] through the worker's
//! [`Slot`] in [`crate::shared::Shared`] and rings its bell. Between bursts the worker walks
//! [`CHUNK`] records of its table for the job ([`crate::pipeline::Pipeline::serve`]), copying
//! the flows the job's [`Matcher`] matches into rows reserved by the asker (or ending them, for
//! `conn rm`), and hands the job back when its walk is through. The worker takes no lock and
//! allocates nothing; the fast path never sees a job.
//!
//! What a listing promises: each row is whole (its worker copied it between two bursts), and
//! every flow that lives through the whole walk is listed once. A flow made or ended during the
//! walk may or may not be (conntrack's listing of a live table is the same).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

use ctl::model::{ClientNet, Protocol};
use ctl::proto::{
    Command, Conn, ConnFilter, ConnKind, ConnList, ConnRemoved, ConnState, ErrorCode, Query,
    Response, Runtime,
};

use crate::balance::ServiceTable;
use crate::flow::{Flow, FlowKind, TcpState};
use crate::shared::Shared;

/// Flow records a worker walks for a job per loop: about 100 µs of a worker's time at most, so
/// the frames waiting behind it wait no longer than behind a few bursts.
pub const CHUNK: u32 = 4096;

/// How long an asker waits for every worker to finish its walk.
pub const WALK_TIMEOUT: Duration = Duration::from_secs(10);

/// Which flows a job means; built by the asker from a [`ConnFilter`] and the table.
/// A client prefix as the walk compares it: network and mask.
#[derive(Debug, Clone, Copy)]
enum ClientMatch {
    V4(u32, u32),
    V6(u128, u128),
}

#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// Flows of these tasks (sorted); any task when `None`.
    uids: Option<Vec<u64>>,
    /// Client prefix and mask, of IPv4 clients or of IPv6 ones.
    client: Option<ClientMatch>,
    /// Bit `i` set: state `ConnState::ALL[i]` matches; 0 matches every state.
    states: u8,
    /// IP protocol number.
    proto: Option<u8>,
}

impl Matcher {
    /// The matcher for `filter` on the node whose table is `t`; an error for a service or task
    /// the table does not have.
    pub fn new(filter: &ConnFilter, t: &ServiceTable) -> Result<Self, (ErrorCode, String)> {
        let missing = |kind: &str, name: &str| {
            (
                ErrorCode::NotFound,
                format!("{kind} {name:?} not found on node {}", t.node(t.local).name),
            )
        };
        let mut uids: Option<Vec<u64>> = None;
        if let Some(name) = &filter.service {
            let s = t
                .service_by_name(name)
                .and_then(|i| t.services.get(usize::from(i)))
                .ok_or_else(|| missing("service", name))?;
            let v = s
                .tasks
                .iter()
                .filter_map(|&i| t.tasks.get(i as usize))
                .map(|te| te.uid)
                .collect();
            uids = Some(v);
        }
        if let Some(name) = &filter.task {
            let uid = t
                .task_by_name(name)
                .and_then(|i| t.tasks.get(i as usize))
                .ok_or_else(|| missing("task", name))?
                .uid;
            // With a service too: its task, or none.
            uids = Some(match uids {
                Some(v) => v.into_iter().filter(|&u| u == uid).collect(),
                None => vec![uid],
            });
        }
        if let Some(v) = uids.as_mut() {
            v.sort_unstable();
        }
        Ok(Matcher {
            uids,
            client: filter.client.map(|n| match n {
                ClientNet::V4(n) => ClientMatch::V4(u32::from(n.addr) & n.mask(), n.mask()),
                ClientNet::V6 { addr, prefix } => {
                    let mask = ClientNet::mask6(prefix);
                    ClientMatch::V6(u128::from(addr) & mask, mask)
                }
            }),
            states: filter.state.iter().fold(0, |a, &s| a | state_bit(s)),
            proto: filter.protocol.map(Protocol::ip_number),
        })
    }

    /// Whether flow `f` is one the job means.
    pub fn matches(&self, f: &Flow) -> bool {
        let k = f.key(crate::flow::Dir::Fwd);
        if let Some(p) = self.proto {
            if k.proto() != p {
                return false;
            }
        }
        match self.client {
            // An IPv4 prefix never holds an IPv6 client (its key holds a stand-in address).
            Some(ClientMatch::V4(net, mask)) if f.is_v6() || k.src() & mask != net => {
                return false;
            }
            Some(ClientMatch::V6(net, mask))
                if !f.is_v6() || u128::from_be_bytes(f.client6()) & mask != net =>
            {
                return false;
            }
            _ => {}
        }
        if let Some(uids) = &self.uids {
            if uids.binary_search(&f.task_uid).is_err() {
                return false;
            }
        }
        self.states == 0 || self.states & state_bit(state_of(f)) != 0
    }
}

/// State `s`'s bit in [`Matcher::states`] (its place in the enum: seven states, eight bits).
fn state_bit(s: ConnState) -> u8 {
    1 << (s as u8)
}

/// A flow's state in IPVS's words.
pub fn state_of(f: &Flow) -> ConnState {
    if !f.is_tcp() {
        return ConnState::Udp;
    }
    match f.tcp {
        TcpState::None => ConnState::None,
        TcpState::SynSent => ConnState::SynSent,
        TcpState::SynReceived => ConnState::SynRecv,
        TcpState::Established => ConnState::Established,
        TcpState::Closing => ConnState::FinWait,
        TcpState::Closed => ConnState::Close,
    }
}

/// One matched flow, as its worker copied it.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub flow: Flow,
    pub idle_ms: u32,
    pub expires_ms: u64,
}

/// One worker's part of a `conn ls` or `conn rm`.
#[derive(Debug)]
pub struct Job {
    /// Which request it belongs to (a job left by an asker that gave up is told apart).
    serial: u64,
    pub(crate) matcher: Matcher,
    /// End the matched flows instead of listing them.
    pub(crate) remove: bool,
    /// The next flow record to look at.
    pub(crate) cursor: u32,
    /// Matched flows, up to the capacity the asker reserved.
    pub(crate) rows: Vec<Row>,
    pub(crate) matched: u64,
    pub(crate) removed: u64,
    pub(crate) reset: u64,
    /// Whether the worker counts packets and bytes per flow (`--flow-accounting`).
    pub(crate) accounting: bool,
}

impl Job {
    /// A job for `matcher` with room for `rows` rows (allocated here, on the asking thread).
    pub fn new(matcher: Matcher, remove: bool, rows: usize) -> Self {
        Job {
            serial: 0,
            matcher,
            remove,
            cursor: 0,
            rows: Vec::with_capacity(rows),
            matched: 0,
            removed: 0,
            reset: 0,
            accounting: false,
        }
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn matched(&self) -> u64 {
        self.matched
    }

    pub fn removed(&self) -> u64 {
        self.removed
    }
}

/// A worker's job slot: one job to do, one done.
#[derive(Debug)]
pub struct Slot {
    pub(crate) todo: ArrayQueue<Box<Job>>,
    pub(crate) done: ArrayQueue<Box<Job>>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            todo: ArrayQueue::new(1),
            done: ArrayQueue::new(1),
        }
    }
}

impl Slot {
    /// Whether a job waits for the worker.
    pub fn pending(&self) -> bool {
        !self.todo.is_empty()
    }

    /// The worker's side: the job to work on, if one was handed over.
    pub fn take(&self) -> Option<Box<Job>> {
        self.todo.pop()
    }

    /// The worker's side: hands a finished job back.
    pub fn finish(&self, job: Box<Job>) {
        // The asker empties `done` before handing a job over, so there is room; a job that
        // finds none belonged to an asker that gave up and is dropped.
        let _ = self.done.push(job);
    }
}

/// Hands each worker a job made by `make` and waits until every worker has walked its whole
/// table for it, for at most `timeout`. One request at a time (askers queue on a lock no worker
/// takes).
pub fn run(
    shared: &Shared,
    make: impl Fn() -> Job,
    timeout: Duration,
) -> Result<Vec<Box<Job>>, String> {
    let mut serial = shared
        .job_serial
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *serial += 1;
    let n = shared.jobs.len();
    for (w, slot) in shared.jobs.iter().enumerate() {
        while slot.done.pop().is_some() {}
        // A job an earlier asker left queued (it gave up) is replaced.
        while slot.todo.pop().is_some() {}
        let mut job = Box::new(make());
        job.serial = *serial;
        if slot.todo.push(job).is_err() {
            return Err(format!("worker {w}'s job slot is busy"));
        }
        if let Some(b) = shared.bells.get(w) {
            b.ring();
        }
    }
    let deadline = Instant::now() + timeout;
    let mut got: Vec<Option<Box<Job>>> = (0..n).map(|_| None).collect();
    loop {
        for (slot, g) in shared.jobs.iter().zip(got.iter_mut()) {
            if g.is_none() {
                if let Some(j) = slot.done.pop() {
                    if j.serial == *serial {
                        *g = Some(j);
                    }
                }
            }
        }
        if got.iter().all(Option::is_some) {
            return Ok(got.into_iter().flatten().collect());
        }
        let late: Vec<String> = got
            .iter()
            .enumerate()
            .filter(|(_, g)| g.is_none())
            .map(|(w, _)| w.to_string())
            .collect();
        if shared.stop.load(Ordering::Relaxed) {
            return Err("meshd is stopping".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "worker {} did not finish walking its flow table within {}s (is it stuck? \
                 `meshctl stats` shows whether its counters move)",
                late.join(", "),
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn sock(ip: u32, port: u16) -> std::net::SocketAddrV4 {
    std::net::SocketAddrV4::new(ip.into(), port)
}

fn sock6(ip: [u8; 16], port: u16) -> std::net::SocketAddr {
    std::net::SocketAddrV6::new(ip.into(), port, 0, 0).into()
}

/// A row as `conn ls` shows it, with names from table `t`; packets and bytes when its worker
/// counts them (`accounting`).
pub fn conn_of(t: &ServiceTable, worker: usize, r: &Row, accounting: bool) -> Conn {
    let count = |i: usize| accounting.then(|| r.flow.counts.get(i).copied().unwrap_or(0));
    let f = &r.flow;
    let [k, _] = f.keys();
    // A dual-stack task's connection to a VIP's twin: made between the IPv4 addresses of the
    // twins, shown by the twins themselves, which share the client's first 96 bits (one
    // network's, `Ipv6Net::embed`). An IPv6 client of a published port reaches it on the
    // node's IPv6 address and its task over IPv4.
    let twins = (f.kind == FlowKind::Vip && f.is_v6())
        .then(|| u128::from_be_bytes(f.client6()) & !0xffff_ffff);
    let inner = |ip: u32, port: u16| match twins {
        Some(p) => sock6((p | u128::from(ip)).to_be_bytes(), port),
        None => sock(ip, port).into(),
    };
    let task = t
        .task_by_uid(f.task_uid)
        .and_then(|i| t.tasks.get(i as usize));
    let service = task.and_then(|te| t.services.get(te.service as usize));
    Conn {
        protocol: if k.proto() == Protocol::Tcp.ip_number() {
            Protocol::Tcp
        } else {
            Protocol::Udp
        },
        kind: match f.kind {
            FlowKind::Ingress => ConnKind::Ingress,
            FlowKind::Vip => ConnKind::Vip,
            FlowKind::ReturnRoute => ConnKind::Return,
        },
        client: if f.is_v6() {
            sock6(f.client6(), k.sport())
        } else {
            sock(k.src(), k.sport()).into()
        },
        service_addr: if f.is_v6() && twins.is_none() {
            let me = t.node_addr6.map_or([0; 16], |a| a.octets());
            sock6(me, k.dport())
        } else {
            inner(k.dst(), k.dport())
        },
        service: service.map(|s| s.name.to_string()),
        task: task.map(|te| te.name.to_string()),
        task_addr: inner(f.fwd.dst, f.fwd.dport),
        source: inner(f.fwd.src, f.fwd.sport),
        state: state_of(f),
        idle_ms: u64::from(r.idle_ms),
        expires_ms: r.expires_ms,
        packets_in: count(0),
        bytes_in: count(1),
        packets_out: count(2),
        bytes_out: count(3),
        worker: u16::try_from(worker).unwrap_or(u16::MAX),
    }
}

/// Answers `conn-ls`: the first `limit` connections `filter` matches, over every worker.
pub fn list(
    shared: &Arc<Shared>,
    filter: &ConnFilter,
    limit: u32,
) -> Result<ConnList, (ErrorCode, String)> {
    if limit == 0 || limit > ctl::proto::MAX_CONN_ROWS {
        return Err((
            ErrorCode::BadRequest,
            format!(
                "limit {limit}: list 1 to {} connections at a time (narrow the filter for more)",
                ctl::proto::MAX_CONN_ROWS
            ),
        ));
    }
    // Names come from the table the walk started under (a task removed since keeps its name).
    let table = shared.table.load_full();
    let m = Matcher::new(filter, &table)?;
    let jobs = run(
        shared,
        || Job::new(m.clone(), false, limit as usize),
        WALK_TIMEOUT,
    )
    .map_err(|e| (ErrorCode::Internal, e))?;
    let connections = jobs
        .iter()
        .enumerate()
        .flat_map(|(w, j)| j.rows().iter().map(move |r| (w, j.accounting, r)))
        .take(limit as usize)
        .map(|(w, a, r)| conn_of(&table, w, r, a))
        .collect();
    Ok(ConnList {
        node: table.node(table.local).name.clone(),
        matched: jobs.iter().map(|j| j.matched()).sum(),
        connections,
    })
}

/// Answers `conn-rm`: ends the connections `filter` matches (every one with `all`).
pub fn remove(
    shared: &Arc<Shared>,
    filter: &ConnFilter,
    all: bool,
) -> Result<ConnRemoved, (ErrorCode, String)> {
    if filter.is_empty() && !all {
        return Err((
            ErrorCode::BadRequest,
            "conn rm needs a filter (a service, task, client, state or protocol), or `all` \
             to end every connection of the node"
                .into(),
        ));
    }
    if !filter.is_empty() && all {
        return Err((
            ErrorCode::BadRequest,
            "conn rm: `all` ends every connection; give it without a filter".into(),
        ));
    }
    let table = shared.table.load_full();
    let m = Matcher::new(filter, &table)?;
    let jobs = run(shared, || Job::new(m.clone(), true, 0), WALK_TIMEOUT)
        .map_err(|e| (ErrorCode::Internal, e))?;
    Ok(ConnRemoved {
        node: table.node(table.local).name.clone(),
        removed: jobs.iter().map(|j| j.removed()).sum(),
        reset: jobs.iter().map(|j| j.reset).sum(),
    })
}

/// Answers `conn-ls` and `conn-rm` from the workers; `None` for every other command. What the
/// control connections and the controller both call.
pub fn answer(shared: &Arc<Shared>, cmd: &Command) -> Option<Response> {
    let result = match cmd {
        Command::Query(Query::ConnLs { filter, limit }) => {
            list(shared, filter, *limit).and_then(|v| encode(&v))
        }
        Command::Runtime(Runtime::ConnRm { filter, all }) => {
            remove(shared, filter, *all).and_then(|v| encode(&v))
        }
        _ => return None,
    };
    let generation = shared.table.load().generation;
    Some(match result {
        Ok(v) => Response::ok(generation, v),
        Err((code, message)) => Response::error(code, message),
    })
}

/// A result body as JSON.
fn encode<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, (ErrorCode, String)> {
    serde_json::to_value(v).map_err(|e| {
        (
            ErrorCode::Internal,
            format!("cannot encode the answer: {e}"),
        )
    })
}
