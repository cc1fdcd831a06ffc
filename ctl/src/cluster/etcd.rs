//! The cluster's desired state in etcd (feature `cluster`): read it whole, and change it by one
//! transaction guarded by the generation it read, so two operators changing it at once never
//! lose one's change (the second is applied again to the new state, or refused).
//!
//! Blocking calls over the async `etcd-client` crate, on a runtime of their own (meshctl and
//! meshd's control thread are plain threads).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp, TxnOpResponse,
};

use super::{diff, entry, read_keys, Entry, LayoutError, Member, Op, Status, PREFIX};
use crate::apply::ApplyError;
use crate::model::State;
use crate::proto::Change;
use crate::validate::ValidationError;

/// The key counting the changes made: each transaction compares it with what it read and
/// bumps it. A prefix's revisions would not see a key deleted since the read; this does.
pub const GENERATION: &str = "/meshd/v1/generation";

/// The largest answer a read of the whole state may be (gRPC's default is 4 MB).
pub(crate) const MAX_READ: usize = 1 << 30;
/// How many times a change is applied again to a newer state before it gives up.
pub const TRIES: usize = 16;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach etcd at {endpoints}: {reason} (is etcd running there? `etcdctl --endpoints={endpoints} endpoint health` tells)")]
    Connect { endpoints: String, reason: String },
    #[error("{0}")]
    Endpoints(String),
    #[error("{0}")]
    Tls(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("etcd cannot write now: {reason} (a majority of its members must be up: `etcdctl endpoint status --cluster` shows them); nothing was changed")]
    NoQuorum { reason: String },
    #[error("the cluster state in etcd is unreadable: {0}")]
    Layout(#[from] LayoutError),
    #[error("{path}: the generation is not a number: {value:?}")]
    BadGeneration { path: String, value: String },
    #[error(transparent)]
    Refused(#[from] ApplyError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("the cluster state kept changing under this change ({TRIES} tries); try again")]
    Busy,
}

impl From<etcd_client::Error> for ClusterError {
    fn from(e: etcd_client::Error) -> Self {
        let text = e.to_string();
        // What etcd (and gRPC) say when the cluster has no leader: quorum lost, or the member
        // asked is cut off from the others.
        let lost = [
            "no leader",
            "request timed out",
            "leader changed",
            "Unavailable",
        ];
        if lost.iter().any(|w| text.contains(w)) {
            ClusterError::NoQuorum { reason: text }
        } else {
            ClusterError::Etcd(text)
        }
    }
}

/// TLS for etcd, as etcd deployments set it up: the CA that signed etcd's certificate and,
/// when etcd asks for client certificates, this client's certificate and key (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Tls {
    pub fn enabled(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    fn options(&self) -> Result<Option<TlsOptions>, ClusterError> {
        if !self.enabled() {
            return Ok(None);
        }
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| ClusterError::Tls(format!("--{flag} {}: {e}", p.display())))
        };
        let mut o = TlsOptions::new();
        if let Some(ca) = &self.cacert {
            o = o.ca_certificate(Certificate::from_pem(read("etcd-cacert", ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                o = o.identity(Identity::from_pem(read("etcd-cert", c)?, read("etcd-key", k)?));
            }
            (None, None) => {}
            _ => {
                return Err(ClusterError::Tls(
                    "--etcd-cert and --etcd-key go together: give both (the client certificate and its key) or neither".into(),
                ))
            }
        }
        Ok(Some(o))
    }
}

/// The endpoints of `spec`: `etcd://HOST:PORT[,HOST:PORT...]` (or bare `HOST:PORT`s, or
/// `http(s)://` URLs), as URLs with the scheme TLS asks for.
pub fn endpoints(spec: &str, tls: &Tls) -> Result<Vec<String>, ClusterError> {
    let scheme = if tls.enabled() { "https" } else { "http" };
    let rest = spec.strip_prefix("etcd://").unwrap_or(spec);
    let mut out = Vec::new();
    for item in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bare = item
            .strip_prefix("http://")
            .or_else(|| item.strip_prefix("https://"))
            .unwrap_or(item)
            .trim_end_matches('/');
        let ok = bare.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(ClusterError::Endpoints(format!(
                "--cluster {spec:?}: {item:?} is not HOST:PORT (for example etcd://10.0.0.1:2379,10.0.0.2:2379)"
            )));
        }
        if item.starts_with("http://") && tls.enabled() {
            return Err(ClusterError::Endpoints(format!(
                "--cluster {spec:?}: {item:?} says http, but TLS options are given: drop the scheme or the TLS options"
            )));
        }
        out.push(format!("{scheme}://{bare}"));
    }
    if out.is_empty() {
        return Err(ClusterError::Endpoints(format!(
            "--cluster {spec:?} names no endpoint: give etcd://HOST:PORT[,HOST:PORT...]"
        )));
    }
    Ok(out)
}

/// The running meshds by node name, and what each has applied.
pub type Liveness = (BTreeMap<String, Member>, BTreeMap<String, Status>);

/// The whole desired state as read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: State,
    /// Changes made so far ([`GENERATION`]; 0 before the first).
    pub generation: u64,
    /// etcd's revision of the read.
    pub revision: i64,
    /// Keys left out of `state`, each naming its key and why (a value written by hand, a key
    /// outside the layout).
    pub skipped: Vec<LayoutError>,
    /// The running meshds, by node name (their leases' keys).
    pub members: BTreeMap<String, Member>,
    /// What each running meshd has applied.
    pub status: BTreeMap<String, Status>,
    /// The keys and values `state` was read from, those skipped included (for a reader that
    /// follows changes key by key).
    pub raw: BTreeMap<String, Vec<u8>>,
}

/// A client of the cluster's etcd.
pub struct Etcd {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").finish_non_exhaustive()
    }
}

impl Etcd {
    /// Connects to etcd at `endpoints` (URLs from [`endpoints`]), giving up after `timeout`.
    pub fn connect(endpoints: &[String], timeout: Duration) -> Result<Etcd, ClusterError> {
        Self::connect_tls(endpoints, &Tls::default(), timeout)
    }

    /// [`Etcd::connect`] with TLS.
    pub fn connect_tls(
        endpoints: &[String],
        tls: &Tls,
        timeout: Duration,
    ) -> Result<Etcd, ClusterError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Etcd(e.to_string()))?;
        let client = rt.block_on(connect(endpoints, tls, timeout))?;
        Ok(Etcd { rt, client })
    }

    /// The desired state, whole, at one revision, with the members and their status. Keys
    /// that do not belong or do not parse are left out and named in `skipped`.
    pub fn load(&mut self) -> Result<Snapshot, ClusterError> {
        self.rt.block_on(load(&mut self.client))
    }

    /// Applies `change` to the state in etcd: read, apply, validate, then one transaction that
    /// writes only the keys that change and bumps the generation, if the generation is still
    /// the one read; else again on the newer state, up to [`TRIES`] times. A change that the
    /// state refuses (or that makes it invalid) leaves etcd untouched.
    pub fn change(&mut self, change: &Change) -> Result<Snapshot, ClusterError> {
        self.rt.block_on(apply_change(&mut self.client, change))
    }

    /// Writes every key of `state` (a bulk import into a store that does not hold those
    /// objects yet, such as a benchmark's 10,000 services), in transactions of at most 100
    /// keys, then bumps the generation once. Not one transaction: a reader may see part of the
    /// import until the last batch. Returns the revision of the last write.
    pub fn import(&mut self, state: &State) -> Result<i64, ClusterError> {
        self.rt.block_on(async {
            let keys: Vec<(String, Vec<u8>)> = super::to_keys(state).into_iter().collect();
            for chunk in keys.chunks(100) {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None))
                    .collect();
                self.client.txn(Txn::new().and_then(ops)).await?;
            }
            let snap = load(&mut self.client).await?;
            let resp = self
                .client
                .put(GENERATION, (snap.generation + 1).to_string(), None)
                .await?;
            Ok(resp.header().map_or(0, |h| h.revision()))
        })
    }

    /// The members and their status only (what `node ls` and convergence need), without
    /// reading the whole state.
    pub fn liveness(&mut self) -> Result<Liveness, ClusterError> {
        self.rt.block_on(async {
            let mut members = BTreeMap::new();
            let mut status = BTreeMap::new();
            for kind in ["members/", "status/"] {
                let resp = self
                    .client
                    .get(
                        format!("{PREFIX}{kind}"),
                        Some(GetOptions::new().with_prefix()),
                    )
                    .await?;
                for kv in resp.kvs() {
                    let path = String::from_utf8_lossy(kv.key()).into_owned();
                    note_liveness(
                        &path,
                        kv.value(),
                        &mut members,
                        &mut status,
                        &mut Vec::new(),
                    );
                }
            }
            Ok((members, status))
        })
    }
}

/// How often a connection to etcd is pinged: above etcd's minimum (5 s).
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Connects to the first endpoint (from a starting point that differs per process, so a fleet
/// spreads over the members) that answers a linearizable read: a member that is down, or cut
/// off from its quorum, is passed over. One endpoint per client: the client's own balancing
/// sends requests to a member that is down and fails them; a session that loses its member
/// connects again and finds another.
pub(crate) async fn connect(
    endpoints: &[String],
    tls: &Tls,
    timeout: Duration,
) -> Result<Client, ClusterError> {
    let named = endpoints.join(",");
    let tls = tls.options()?;
    let start = usize::try_from(std::process::id()).unwrap_or(0) % endpoints.len().max(1);
    let mut reasons = Vec::new();
    for k in 0..endpoints.len() {
        let ep = &endpoints[(start + k) % endpoints.len()];
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            // etcd refuses pings more often than every 5 s (its --grpc-keepalive-min-time):
            // it closes the connection of a client that sends them ("too many pings"), which
            // a busy benchmark met as a broken pipe in the middle of an import.
            .with_keep_alive(KEEPALIVE, timeout);
        if let Some(t) = &tls {
            opts = opts.with_tls(t.clone());
        }
        let tried = async {
            let mut c = Client::connect(std::slice::from_ref(ep), Some(opts)).await?;
            c.get(GENERATION, None).await?;
            Ok::<_, etcd_client::Error>(c)
        }
        .await;
        match tried {
            Ok(c) => return Ok(c),
            Err(e) => reasons.push(format!("{ep}: {}", brief(&e))),
        }
    }
    Err(ClusterError::Connect {
        endpoints: named,
        reason: reasons.join("; "),
    })
}

/// The gist of a client error: gRPC's transport errors nest the cause several levels deep.
fn brief(e: &etcd_client::Error) -> String {
    let text = e.to_string();
    for (needle, said) in [
        ("Connection refused", "connection refused"),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network unreachable"),
        ("no leader", "etcd has no leader (quorum lost?)"),
        ("deadline has elapsed", "timed out"),
        ("timed out", "timed out"),
        (
            "certificate",
            "TLS: the certificate was refused (check --etcd-cacert, --etcd-cert, --etcd-key)",
        ),
        (
            "InvalidCertificate",
            "TLS: the certificate was refused (check --etcd-cacert)",
        ),
        ("authentication", "authentication failed"),
    ] {
        if text.contains(needle) {
            return said.to_string();
        }
    }
    text
}

/// Files a member or status key's value; a value that does not parse goes to `skipped`.
pub(crate) fn note_liveness(
    path: &str,
    value: &[u8],
    members: &mut BTreeMap<String, Member>,
    status: &mut BTreeMap<String, Status>,
    skipped: &mut Vec<LayoutError>,
) {
    let bad = |e: serde_json::Error| LayoutError::BadValue {
        path: path.to_string(),
        reason: e.to_string(),
    };
    match entry(path) {
        Entry::Member(n) => match serde_json::from_slice(value) {
            Ok(m) => {
                members.insert(n, m);
            }
            Err(e) => skipped.push(bad(e)),
        },
        Entry::Status(n) => match serde_json::from_slice(value) {
            Ok(s) => {
                status.insert(n, s);
            }
            Err(e) => skipped.push(bad(e)),
        },
        _ => {}
    }
}

/// See [`Etcd::load`].
pub(crate) async fn load(client: &mut Client) -> Result<Snapshot, ClusterError> {
    // The whole store in one answer: 100,000 tasks are ~20 MB, past gRPC's default 4 MB.
    let resp = client
        .kv_client()
        .max_decoding_message_size(MAX_READ)
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    snapshot(revision, resp.kvs())
}

/// The keys a change needs when it needs fewer than all of them (each a key, or a prefix when
/// marked): the nodes, the networks, the generation, the service it changes with its tasks,
/// and every service's key (without their tasks) when it publishes a port, to check that no
/// other service holds it. Changes that add task or VIP addresses, or create services, read
/// everything: an address is checked against every task's.
fn scope(change: &Change) -> Option<Vec<(String, bool)>> {
    let (name, every_service) = match change {
        Change::ServiceUpdate { name, update }
            if update.task_add.is_empty()
                && update.network_add.is_empty()
                && update.endpoint_mode.is_none() =>
        {
            (name, !update.publish_add.is_empty())
        }
        Change::ServiceScale { name, .. } | Change::ServiceRm { name } => (name, false),
        _ => return None,
    };
    let services = if every_service {
        (format!("{PREFIX}services/"), true)
    } else {
        (super::Key::Service(name.clone()).path(), false)
    };
    Some(vec![
        (format!("{PREFIX}nodes/"), true),
        (format!("{PREFIX}networks/"), true),
        (GENERATION.to_string(), false),
        services,
        (format!("{PREFIX}tasks/{name}/"), true),
    ])
}

/// The keys `keys` names ([`scope`]), read together at one revision (one transaction).
async fn load_scope(
    client: &mut Client,
    keys: &[(String, bool)],
) -> Result<Snapshot, ClusterError> {
    let gets: Vec<TxnOp> = keys
        .iter()
        .map(|(k, prefix)| TxnOp::get(k.as_str(), prefix.then(|| GetOptions::new().with_prefix())))
        .collect();
    let resp = client.txn(Txn::new().and_then(gets)).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut kvs = Vec::new();
    for r in resp.op_responses() {
        if let TxnOpResponse::Get(g) = r {
            kvs.extend(g.kvs().iter().cloned());
        }
    }
    snapshot(revision, &kvs)
}

/// The snapshot keys read at `revision` make.
fn snapshot(revision: i64, kvs: &[etcd_client::KeyValue]) -> Result<Snapshot, ClusterError> {
    let mut generation = 0;
    let mut raw: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut skipped = Vec::new();
    let (mut members, mut status) = (BTreeMap::new(), BTreeMap::new());
    for kv in kvs {
        let path = String::from_utf8_lossy(kv.key()).into_owned();
        match entry(&path) {
            Entry::Generation => {
                let text = String::from_utf8_lossy(kv.value()).into_owned();
                generation = text
                    .trim()
                    .parse()
                    .map_err(|_| ClusterError::BadGeneration {
                        path: path.clone(),
                        value: text.clone(),
                    })?;
            }
            Entry::Member(_) | Entry::Status(_) => {
                note_liveness(&path, kv.value(), &mut members, &mut status, &mut skipped)
            }
            Entry::Object(_) | Entry::Unknown => {
                raw.insert(path, kv.value().to_vec());
            }
        }
    }
    let (state, mut bad) = read_keys(raw.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    skipped.append(&mut bad);
    Ok(Snapshot {
        state,
        generation,
        revision,
        skipped,
        members,
        status,
        raw,
    })
}

/// See [`Etcd::change`].
pub(crate) async fn apply_change(
    client: &mut Client,
    change: &Change,
) -> Result<Snapshot, ClusterError> {
    let scope = scope(change);
    for _ in 0..TRIES {
        // A change to one service reads that service, not the store: its cost follows the
        // change. The guard (the generation) is the same either way.
        let snap = match &scope {
            Some(keys) => load_scope(client, keys).await?,
            None => load(client).await?,
        };
        let next = crate::apply::change(&snap.state, change)?;
        crate::validate(&next)?;
        let mut ops: Vec<TxnOp> = diff(&snap.state, &next)
            .into_iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(k, v, None),
                Op::Delete(k) => TxnOp::delete(k, None),
            })
            .collect();
        let generation = snap.generation + 1;
        ops.push(TxnOp::put(GENERATION, generation.to_string(), None));
        let guard = if snap.generation == 0 {
            Compare::version(GENERATION, CompareOp::Equal, 0)
        } else {
            Compare::value(GENERATION, CompareOp::Equal, snap.generation.to_string())
        };
        let resp = client
            .txn(Txn::new().when(vec![guard]).and_then(ops))
            .await?;
        if resp.succeeded() {
            return Ok(Snapshot {
                state: next,
                generation,
                revision: resp.header().map_or(0, |h| h.revision()),
                ..snap
            });
        }
    }
    Err(ClusterError::Busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_as_operators_write_them() {
        let plain = Tls::default();
        assert_eq!(
            endpoints("etcd://10.0.0.1:2379,10.0.0.2:2379", &plain).unwrap(),
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(
            endpoints("http://h1:2379/, h2:2379", &plain).unwrap(),
            ["http://h1:2379", "http://h2:2379"]
        );
        let tls = Tls {
            cacert: Some("/ca.pem".into()),
            ..Tls::default()
        };
        assert_eq!(
            endpoints("etcd://h1:2379", &tls).unwrap(),
            ["https://h1:2379"]
        );
        for (bad, says) in [
            ("", "names no endpoint"),
            ("etcd://", "names no endpoint"),
            ("etcd://h1", "is not HOST:PORT"),
            ("etcd://h1:0", "is not HOST:PORT"),
            ("etcd://h1:http", "is not HOST:PORT"),
        ] {
            let e = endpoints(bad, &plain).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let e = endpoints("http://h1:2379", &tls).unwrap_err().to_string();
        assert!(e.contains("says http, but TLS options are given"), "{e}");
        let half = Tls {
            cert: Some("/c.pem".into()),
            ..Tls::default()
        };
        assert!(half
            .options()
            .unwrap_err()
            .to_string()
            .contains("go together"));
    }
}
