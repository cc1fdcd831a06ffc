//! A meshd in cluster mode: registers itself under a lease, takes the desired state from etcd,
//! watches it, hands each new state to its [`Applier`] (meshd's controller) and says under its
//! lease which revision runs (the status key `meshctl` waits on).
//!
//! Fail static: while etcd cannot be reached the node keeps what it runs (the follower retries
//! with back-off and changes nothing). Back in touch, it watches from the revision after the
//! last it had, so it sees every change it missed; if etcd has compacted that history away it
//! reads everything again at the current revision, and what vanished meanwhile goes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, PutOptions, WatchOptions};

use super::etcd::{apply_change, connect, load, note_liveness, ClusterError, Tls};
use super::{assemble, entry, member_path, parse_object, status_path, Entry, LayoutError};
use super::{Delta, Key, Member, Object, Objects, Part, Refusal};
use super::{Status, PREFIX};
use crate::model::Node;
use crate::proto::Change;

/// What the follower drives: meshd's controller.
pub trait Applier {
    /// Makes the state (read at `revision`; `delta` is the whole of it, or what changed since
    /// the last state this applier took) run on every worker, `live` naming the nodes whose
    /// meshd holds a lease (the others' tasks take no new connections). Returns the table
    /// generation that runs it, or why this node refuses it (it keeps what it runs then, and
    /// the next delta carries this one's changes too).
    fn apply(
        &mut self,
        delta: Delta,
        revision: i64,
        live: &BTreeSet<String>,
    ) -> Result<u64, String>;
    /// Whether meshd is stopping (the follower then revokes its lease and returns).
    fn stopping(&self) -> bool;
}

/// How to follow.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// etcd's endpoints, as URLs ([`super::etcd::endpoints`]).
    pub endpoints: Vec<String>,
    pub tls: Tls,
    /// This node, as it adds itself to the desired state when it is not there yet.
    pub node: Node,
    pub member: Member,
    /// The lease's time to live: a node silent this long is Down.
    pub lease_ttl: Duration,
    /// How long one etcd call may take.
    pub timeout: Duration,
    /// The revision of the state meshd serves from its cache file at start (0: none).
    pub cached_revision: i64,
}

/// Why a session with etcd ended.
enum End {
    Stopped,
    /// The watch's start revision was compacted away: read everything again.
    Compacted(i64),
}

/// What the follower keeps across sessions.
#[derive(Default)]
struct Mirror {
    /// The desired state's keys, their values parsed (once, when they arrive), as of
    /// `revision`.
    objects: Objects,
    /// The keys touched since the applier last took a state (`None`: it must take the whole
    /// state, as at the first read).
    pending: Option<BTreeSet<String>>,
    /// The keys left out of the state, and why.
    skipped: BTreeMap<String, LayoutError>,
    members: BTreeMap<String, Member>,
    /// The last revision seen (0: nothing read yet).
    revision: i64,
    /// What the status key says now.
    status: Status,
}

/// Follows the cluster until the applier says meshd is stopping. Never returns an error: etcd
/// being away is a state to wait out (logged once per outage), not a failure.
pub fn follow(cfg: &FollowConfig, applier: &mut dyn Applier) {
    // One worker thread beside this one: the lease's keep-alive runs there, so an apply that
    // blocks this thread for long (a whole state compiled) never lets the lease lapse.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("meshd-etcd")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cluster: no runtime for the etcd client: {e}; this node keeps its last applied state");
            return;
        }
    };
    let mut mirror = Mirror::default();
    mirror.status.revision = cfg.cached_revision;
    let mut backoff = Duration::from_millis(250);
    let mut outage: Option<Instant> = None;
    let named = cfg.endpoints.join(",");
    while !applier.stopping() {
        match rt.block_on(session(cfg, applier, &mut mirror, &mut outage)) {
            Ok(End::Stopped) => return,
            Ok(End::Compacted(at)) => {
                tracing::warn!(
                    revision = mirror.revision,
                    compacted = at,
                    "cluster: etcd has compacted the changes since the last revision this node had; reading the whole state again"
                );
                // Read afresh: what vanished meanwhile goes with the old mirror.
                mirror.revision = 0;
                backoff = Duration::from_millis(250);
            }
            Err(e) => {
                match outage {
                    None => {
                        tracing::warn!(
                            "cluster: {e}; serving the last applied state (revision {}) until etcd at {named} answers again",
                            mirror.status.revision
                        );
                        outage = Some(Instant::now());
                    }
                    Some(since) => {
                        tracing::debug!("cluster: still no etcd after {:?}: {e}", since.elapsed())
                    }
                }
                let until = Instant::now() + backoff;
                while Instant::now() < until && !applier.stopping() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(4));
            }
        }
    }
}

/// One connection's life: register, catch up, watch until something ends it.
async fn session(
    cfg: &FollowConfig,
    applier: &mut dyn Applier,
    m: &mut Mirror,
    outage: &mut Option<Instant>,
) -> Result<End, ClusterError> {
    let mut client = connect(&cfg.endpoints, &cfg.tls, cfg.timeout).await?;
    if let Some(since) = outage.take() {
        tracing::info!(
            "cluster: etcd answers again after {:?}; catching up from revision {}",
            since.elapsed(),
            m.revision
        );
    }
    let ttl = i64::try_from(cfg.lease_ttl.as_secs().max(2)).unwrap_or(10);
    let lease = client.lease_grant(ttl, None).await?.id();
    let (mut keeper, mut alive) = client.lease_keep_alive(lease).await?;
    let beat = Duration::from_secs(u64::try_from(ttl / 3).unwrap_or(1).max(1));
    // Unanswered for half the lease's time: this node is cut off (it ends the session, and
    // its watch with it, before etcd calls it Down).
    let ttl_span = Duration::from_millis(u64::try_from(ttl).unwrap_or(10) * 500);
    // Ends when the lease is lost (etcd away, or the lease expired); the session then ends.
    let mut keeping = KeepAlive(tokio::spawn(async move {
        loop {
            tokio::time::sleep(beat).await;
            if let Err(e) = keeper.keep_alive().await {
                return ClusterError::from(e);
            }
            // A network cut answers nothing, rather than an error.
            let Ok(answer) = tokio::time::timeout(ttl_span, alive.message()).await else {
                return ClusterError::Etcd(format!(
                    "etcd has not answered this node's lease keep-alive for {:?}; its lease lapses soon",
                    ttl_span
                ));
            };
            match answer {
                Ok(Some(r)) if r.ttl() > 0 => {}
                Ok(_) => return ClusterError::Etcd("this node's lease expired (it was away longer than its time to live); registering again".into()),
                Err(e) => return ClusterError::from(e),
            }
        }
    }));
    let member = serde_json::to_vec(&cfg.member).unwrap_or_default();
    client
        .put(
            member_path(&cfg.node.name),
            member,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    if m.revision == 0 {
        let mut snap = load(&mut client).await?;
        if snap.state.node(&cfg.node.name).is_none() && add_self(&mut client, cfg).await? {
            snap = load(&mut client).await?;
        }
        m.objects = snap
            .raw
            .iter()
            .map(|(k, v)| (k.clone(), parse_object(k, v)))
            .collect();
        m.members = snap.members;
        m.revision = snap.revision;
        m.pending = None;
        apply(cfg, applier, m, &mut client, lease, None).await?;
    } else {
        // The status key went with the old lease: say again what runs.
        put_status(&mut client, &cfg.node.name, &m.status, lease).await?;
    }
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(m.revision + 1)
        .with_progress_notify();
    // A node back after a while catches up in one answer: allow more than gRPC's 4 MB.
    let mut watch = client
        .watch_client()
        .max_decoding_message_size(super::etcd::MAX_READ)
        .watch(PREFIX, Some(opts))
        .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // When nodes' comings and goings (and nothing else) wait to be applied.
    let mut live_due: Option<Instant> = None;
    loop {
        tokio::select! {
            msg = watch.message() => {
                let mut batch = Batch::default();
                let mut msg = msg;
                loop {
                    let Some(resp) = msg? else {
                        return Err(ClusterError::Etcd("the watch ended".into()));
                    };
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            return Ok(End::Compacted(resp.compact_revision()));
                        }
                        return Err(ClusterError::Etcd(format!("the watch was cancelled: {}", resp.cancel_reason())));
                    }
                    batch.take(m, &resp);
                    // A burst (an import, many writers) is applied once: take whatever
                    // else has arrived already, without waiting.
                    match tokio::time::timeout(Duration::ZERO, watch.message()).await {
                        Ok(next) => msg = next,
                        Err(_) => break,
                    }
                }
                for e in &batch.skipped {
                    tracing::warn!("cluster: skipped {e}");
                }
                if batch.changed && batch.only_members {
                    // Nodes registering, nothing else: wait a little for the others (a fleet
                    // restarting registers over seconds) and apply them together.
                    live_due.get_or_insert(Instant::now() + LIVE_SETTLE);
                } else if batch.changed {
                    live_due = None;
                    apply(cfg, applier, m, &mut client, lease, Some(&batch.touched)).await?;
                }
            }
            _ = tick.tick() => {
                if live_due.is_some_and(|due| Instant::now() >= due) {
                    live_due = None;
                    apply(cfg, applier, m, &mut client, lease, Some(&BTreeSet::new())).await?;
                }
                if applier.stopping() {
                    // Down at once rather than after the lease's time.
                    let _ = client.lease_revoke(lease).await;
                    return Ok(End::Stopped);
                }
                if keeping.0.is_finished() {
                    return Err(match (&mut keeping.0).await {
                        Ok(e) => e,
                        Err(e) => ClusterError::Etcd(format!("the lease's keep-alive stopped: {e}")),
                    });
                }
            }
        }
    }
}

/// The lease's keep-alive task, stopped with the session that started it.
struct KeepAlive(tokio::task::JoinHandle<ClusterError>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long nodes' registrations wait for more before they are applied (a node back takes
/// new connections this much later; a node gone is applied at once).
const LIVE_SETTLE: Duration = Duration::from_millis(500);

/// What watch responses taken together change.
struct Batch {
    changed: bool,
    /// Only members came (no object, no generation, no member gone).
    only_members: bool,
    touched: BTreeSet<String>,
    skipped: Vec<LayoutError>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            changed: false,
            only_members: true,
            touched: BTreeSet::new(),
            skipped: Vec::new(),
        }
    }
}

impl Batch {
    /// Files `resp`'s events into the mirror.
    fn take(&mut self, m: &mut Mirror, resp: &etcd_client::WatchResponse) {
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let path = String::from_utf8_lossy(kv.key()).into_owned();
            let put = ev.event_type() == EventType::Put;
            match entry(&path) {
                Entry::Object(_) | Entry::Unknown => {
                    if put {
                        m.objects
                            .insert(path.clone(), parse_object(&path, kv.value()));
                    } else {
                        m.objects.remove(&path);
                    }
                    self.touched.insert(path);
                    self.changed = true;
                    self.only_members = false;
                }
                Entry::Member(n) => {
                    if put {
                        note_liveness(
                            &path,
                            kv.value(),
                            &mut m.members,
                            &mut BTreeMap::new(),
                            &mut self.skipped,
                        );
                    } else {
                        m.members.remove(&n);
                        // A node gone is Down at once: its tasks leave rotation now.
                        self.only_members = false;
                    }
                    self.changed = true;
                }
                // Every change bumps the generation, also one that changes no object
                // (`scale web=1` of a service at 1): applying it says the change's revision
                // runs here, which meshctl waits for.
                Entry::Generation => {
                    self.changed = true;
                    self.only_members = false;
                }
                Entry::Status(_) => {}
            }
            m.revision = m.revision.max(kv.mod_revision());
        }
    }
}

/// Adds this node to the desired state (as `meshctl node add` would), as a meshd without
/// cluster mode adds itself to its state file. A state that refuses it as it is (the ingress
/// network wants an endpoint on every node) is said in the log with what to run.
/// Many nodes starting at once contend for the generation: a node that lost every try
/// returns the error, and the session is tried again after a back-off.
async fn add_self(client: &mut Client, cfg: &FollowConfig) -> Result<bool, ClusterError> {
    let change = Change::NodeAdd {
        node: cfg.node.clone(),
        endpoints: BTreeMap::new(),
    };
    match apply_change(client, &change).await {
        Ok(s) => {
            tracing::info!(
                node = %cfg.node.name,
                revision = s.revision,
                "cluster: added this node to the cluster state"
            );
            Ok(true)
        }
        Err(e @ ClusterError::Busy) => Err(e),
        Err(e) => {
            tracing::error!(
            "cluster: this node ({}) is not in the cluster state and cannot add itself: {e}; add it with `meshctl --cluster ... node add {} --addr {} --endpoint ingress=IP`",
            cfg.node.name,
            cfg.node.name,
            cfg.node.addr
            );
            Ok(false)
        }
    }
}

/// Hands the applier what changed (the whole state at a full read, `touched` = `None`) and
/// says the outcome under the lease.
async fn apply(
    cfg: &FollowConfig,
    applier: &mut dyn Applier,
    m: &mut Mirror,
    client: &mut Client,
    lease: i64,
    touched: Option<&BTreeSet<String>>,
) -> Result<(), ClusterError> {
    let delta = match (touched, m.pending.as_mut()) {
        (Some(touched), Some(pending)) => {
            pending.extend(touched.iter().cloned());
            // Each bad key is logged when a change touches it (a task whose service
            // vanished is the service key's doing).
            for e in recheck(&m.objects, &mut m.skipped, touched) {
                tracing::warn!("cluster: skipped {e}");
            }
            Delta::Part(Part::of(&m.objects, pending))
        }
        _ => {
            let (state, skipped) = assemble(m.objects.iter().map(|(k, v)| (k.as_str(), v)));
            for e in &skipped {
                tracing::warn!("cluster: skipped {e}");
            }
            m.skipped = skipped
                .into_iter()
                .map(|e| (e.path().to_string(), e))
                .collect();
            Delta::Full(state)
        }
    };
    let live: BTreeSet<String> = m.members.keys().cloned().collect();
    let t0 = Instant::now();
    let outcome = applier.apply(delta, m.revision, &live);
    let took_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
    match outcome {
        Ok(generation) => {
            m.pending = Some(BTreeSet::new());
            m.status = Status {
                revision: m.revision,
                generation,
                error: None,
                skipped: m.skipped.keys().cloned().collect(),
            };
            tracing::info!(
                revision = m.revision,
                generation,
                live = live.len(),
                took_us,
                "cluster: applied"
            );
        }
        Err(message) => {
            tracing::error!(
                revision = m.revision,
                "cluster: this node refuses the cluster state: {message}; it keeps running revision {}",
                m.status.revision
            );
            m.status.error = Some(Refusal {
                revision: m.revision,
                message,
            });
        }
    }
    put_status(client, &cfg.node.name, &m.status, lease).await
}

/// Brings `skipped` (the keys left out of the state) up to date for the keys at `touched`;
/// returns what is skipped among them now.
fn recheck(
    objects: &Objects,
    skipped: &mut BTreeMap<String, LayoutError>,
    touched: &BTreeSet<String>,
) -> Vec<LayoutError> {
    let has_service = |name: &str| {
        matches!(
            objects.get(&Key::Service(name.to_string()).path()),
            Some(Ok(Object::Service(_)))
        )
    };
    let mut fresh = Vec::new();
    let mut check = |path: &str, service: Option<&str>| {
        skipped.remove(path);
        let why = match (objects.get(path), service) {
            (Some(Err(e)), _) => Some(e.clone()),
            (Some(Ok(_)), Some(svc)) if !has_service(svc) => Some(LayoutError::OrphanTask {
                path: path.to_string(),
                service: svc.to_string(),
            }),
            _ => None,
        };
        if let Some(e) = why {
            fresh.push(e.clone());
            skipped.insert(path.to_string(), e);
        }
    };
    for path in touched {
        match Key::parse(path) {
            Some(Key::Task { service, .. }) => check(path, Some(&service)),
            Some(Key::Service(name)) => {
                check(path, None);
                // Its tasks are orphans while it has no key, and no longer once it has.
                let prefix = format!("{}tasks/{name}/", super::PREFIX);
                let tasks: Vec<String> = super::under(objects, &prefix)
                    .map(|(k, _)| k.clone())
                    .collect();
                for t in tasks {
                    check(&t, Some(&name));
                }
            }
            _ => check(path, None),
        }
    }
    fresh
}

async fn put_status(
    client: &mut Client,
    node: &str,
    status: &Status,
    lease: i64,
) -> Result<(), ClusterError> {
    let body = serde_json::to_vec(status).unwrap_or_default();
    client
        .put(
            status_path(node),
            body,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    Ok(())
}
