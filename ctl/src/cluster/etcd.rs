//! The cluster's desired state in etcd (feature `cluster`): read it whole, and change it by one
//! transaction guarded by the generation it read, so two operators changing it at once never
//! lose one's change (the second is applied again to the new state, or refused).
//!
//! Blocking calls over the async `etcd-client` crate, on a runtime of their own (meshctl and
//! meshd's control thread are plain threads).

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};

use super::{diff, from_keys, LayoutError, Op, PREFIX};
use crate::apply::ApplyError;
use crate::model::State;
use crate::proto::Change;
use crate::validate::ValidationError;

/// The key counting the changes made: each transaction compares it with what it read and
/// bumps it. A prefix's revisions would not see a key deleted since the read; this does.
pub const GENERATION: &str = "/meshd/v1/generation";
/// How many times a change is applied again to a newer state before it gives up.
pub const TRIES: usize = 16;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach etcd at {endpoints}: {reason} (is etcd running there? `etcdctl --endpoints={endpoints} endpoint health` tells)")]
    Connect { endpoints: String, reason: String },
    #[error("etcd: {0}")]
    Etcd(String),
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
        ClusterError::Etcd(e.to_string())
    }
}

/// The whole desired state as read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: State,
    /// Changes made so far ([`GENERATION`]; 0 before the first).
    pub generation: u64,
    /// etcd's revision of the read.
    pub revision: i64,
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
    /// Connects to etcd at `endpoints` (`HOST:PORT` or `http://HOST:PORT`), giving up after
    /// `timeout`.
    pub fn connect(endpoints: &[String], timeout: Duration) -> Result<Etcd, ClusterError> {
        let named = endpoints.join(",");
        let fail = |reason: String| ClusterError::Connect {
            endpoints: named.clone(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = rt
            .block_on(Client::connect(endpoints, Some(opts)))
            .map_err(|e| fail(e.to_string()))?;
        let mut e = Etcd { rt, client };
        // The connection is lazy: one read says now whether etcd answers.
        e.rt.block_on(e.client.get(GENERATION, None))
            .map_err(|err| fail(err.to_string()))?;
        Ok(e)
    }

    /// The desired state, whole, at one revision. Keys of the prefix that are not objects of
    /// the layout or the generation (members, status: later) are left for their readers.
    pub fn load(&mut self) -> Result<Snapshot, ClusterError> {
        let resp = self.rt.block_on(
            self.client
                .get(PREFIX, Some(GetOptions::new().with_prefix())),
        )?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut generation = 0;
        let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
        for kv in resp.kvs() {
            let path = String::from_utf8_lossy(kv.key()).into_owned();
            if path == GENERATION {
                let text = String::from_utf8_lossy(kv.value()).into_owned();
                generation = text
                    .trim()
                    .parse()
                    .map_err(|_| ClusterError::BadGeneration {
                        path: path.clone(),
                        value: text.clone(),
                    })?;
            } else if is_object(&path) {
                objects.push((path, kv.value().to_vec()));
            }
        }
        let state = from_keys(objects.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        Ok(Snapshot {
            state,
            generation,
            revision,
        })
    }

    /// Applies `change` to the state in etcd: read, apply, validate, then one transaction that
    /// writes only the keys that change and bumps the generation, if the generation is still
    /// the one read; else again on the newer state, up to [`TRIES`] times. A change that the
    /// state refuses (or that makes it invalid) leaves etcd untouched.
    pub fn change(&mut self, change: &Change) -> Result<Snapshot, ClusterError> {
        for _ in 0..TRIES {
            let snap = self.load()?;
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
            let resp = self
                .rt
                .block_on(self.client.txn(Txn::new().when(vec![guard]).and_then(ops)))?;
            if resp.succeeded() {
                return Ok(Snapshot {
                    state: next,
                    generation,
                    revision: resp.header().map_or(0, |h| h.revision()),
                });
            }
        }
        Err(ClusterError::Busy)
    }
}

/// Whether `path` is under one of the object kinds' prefixes (a key there that does not parse
/// is the layout's to refuse, by name).
fn is_object(path: &str) -> bool {
    ["nodes/", "networks/", "services/", "tasks/"]
        .iter()
        .any(|k| path.strip_prefix(PREFIX).is_some_and(|r| r.starts_with(k)))
}
