//! The control plane: the Unix control socket, typed commands, the persisted state.
//!
//! Every request that changes state is applied to a copy of the state (`ctl::apply`), compiled
//! and validated into a new service table, persisted (temp file, fsync, rename), published to the
//! workers, and answered only once every worker has picked that generation up. A request that
//! fails any step changes nothing and gets an error that says what is wrong.
//!
//! The control thread owns the [`Controller`] ([`Controller::start`]); connection threads and the
//! host thread feed it [`ControlMsg`]s over a channel through a [`ControlHandle`] and never share
//! it. `stats` needs no controller: the handle answers it from the hub ([`crate::shared::report`])
//! on the asking thread, so it never waits behind a change waiting for the workers' acks.
//!
//! Health verdicts are runtime state layered over the desired state: the host thread sends a
//! changed view ([`ControlMsg::Health`]) to [`Controller::set_health`], which compiles and
//! publishes a new table generation without persisting anything. The controller also notes when each task's observed
//! state ([`ctl::model::CurrentState`]) changed, for `service ps`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};

use ctl::cluster::{Delta, Part};
use ctl::model::{CurrentState, Health, PsTask, TaskState, TaskStatus};
use ctl::proto::{self, Change, Command, ErrorCode, Query, Response, Runtime};
use ctl::validate::Claims;
use ctl::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::balance::table::{BuildError, HealthView, TaskEntry};
use crate::balance::ServiceTable;
use crate::host::HostShared;
use crate::shared::Shared;

pub mod store;
pub use store::StateStore;

/// How long a change may wait for the workers to pick it up.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the daemon persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub generation: u64,
    pub state: State,
    /// In cluster mode, the etcd revision `state` was read at (0 otherwise): the file is then
    /// the cache a restart serves from while etcd cannot be reached.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: i64,
}

fn is_zero(r: &i64) -> bool {
    *r == 0
}

/// [`Persisted`], borrowed: what the cache is written from without a copy of the state.
#[derive(Serialize)]
struct PersistedRef<'a> {
    generation: u64,
    state: &'a State,
    #[serde(skip_serializing_if = "is_zero")]
    revision: i64,
}

/// Cluster mode: a change to at most this many services goes to the cache's journal (one
/// line); a bigger one rewrites the cache file.
const JOURNAL_SERVICES: usize = 64;

/// Most services a change compiles into a patched table; more are compiled whole.
const PATCH_SERVICES: usize = 64;
/// The journal's size past which the next change rewrites the cache file (and empties it).
const JOURNAL_BYTES: usize = 4 << 20;

/// The control thread's state: the desired state, its generation, where it is persisted and
/// where tables are published.
#[derive(Debug)]
pub struct Controller {
    pub local: String,
    pub state: State,
    /// The generation of the last table published: a desired-state change or a health change.
    /// Desired-state changes persist it.
    pub generation: u64,
    pub store: StateStore,
    pub shared: Arc<Shared>,
    /// The health verdicts compiled into the current table (runtime, never persisted).
    pub health: HealthView,
    /// What the host thread shares: its counters and every checked task's health detail.
    pub host: Option<Arc<HostShared>>,
    /// How long a change waits for the workers to pick it up ([`ACK_TIMEOUT`]).
    pub ack_timeout: Duration,
    /// Each task's observed state and since when, by task name.
    since: HashMap<String, Since>,
    /// The uplink's MTU, when known: a network whose MTU does not fit it is refused.
    pub uplink_mtu: Option<u16>,
    /// In cluster mode, etcd's endpoints: the desired state comes from there only, and a
    /// change sent to the socket is refused with the way to make it.
    pub cluster: Option<String>,
    /// In cluster mode, the nodes whose meshd holds a lease (`None` until etcd has said): the
    /// tasks of the others take no new connections.
    pub live: Option<BTreeSet<String>>,
    /// The etcd revision the desired state was read at (cluster mode).
    pub revision: i64,
    /// Cluster mode: the state runs but is not in the cache yet (the file is rewritten once
    /// the change is answered).
    uncached: bool,
    /// Cluster mode: the bytes in the cache's journal (changes to a few services are appended
    /// there, each costing its size, not the state's).
    journaled: usize,
    /// Cluster mode: what the state's objects hold, kept up to date service by service so a
    /// change is checked in proportion to its size (`None`: made again at the next change).
    claims: Option<Claims>,
    /// The table before the one running, once no worker holds it, and the services changed
    /// since: the next patch is made on it in place rather than on a copy of the running one
    /// (a copy of a table of 100,000 tasks costs milliseconds; a patch of one service, micro).
    spare: Option<(Arc<ServiceTable>, BTreeSet<String>)>,
}

/// A table made from a change: how (see [`Controller::take_part`]), and the services a patch
/// changed.
type Taken = (ServiceTable, &'static str, Option<BTreeSet<String>>);

/// `d` in whole microseconds, for a log line.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// When a task entered its observed state.
#[derive(Debug, Clone, Copy)]
struct Since {
    state: CurrentState,
    at: Instant,
    unix_ms: u64,
}

impl Controller {
    /// Builds the table for the current state and publishes it (at start-up).
    pub fn new(
        local: String,
        persisted: Persisted,
        store: StateStore,
        shared: Arc<Shared>,
    ) -> Result<Self, String> {
        let table = ServiceTable::build(&persisted.state, &local, persisted.generation)
            .map_err(|e| e.to_string())?;
        let journaled = std::fs::metadata(store.journal_path())
            .map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX));
        let mut c = Controller {
            local,
            state: persisted.state,
            generation: persisted.generation,
            store,
            shared,
            health: HealthView::new(),
            host: None,
            ack_timeout: ACK_TIMEOUT,
            since: HashMap::new(),
            uplink_mtu: None,
            cluster: None,
            live: None,
            revision: persisted.revision,
            uncached: false,
            journaled,
            claims: None,
            spare: None,
        };
        c.observe(&table);
        c.shared.table.store(Arc::new(table));
        Ok(c)
    }

    /// Task `te`'s observed state, and since when: as noted before while it has not changed,
    /// else from `now` on.
    fn since(&self, te: &TaskEntry, now: Instant, unix_ms: u64) -> Since {
        let state = CurrentState::of(te.state, te.health);
        match self.since.get(&*te.name) {
            Some(prev) if prev.state == state => *prev,
            _ => Since {
                state,
                at: now,
                unix_ms,
            },
        }
    }

    /// Now, as an instant and as Unix milliseconds.
    fn now() -> (Instant, u64) {
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        (Instant::now(), unix_ms)
    }

    /// Notes the tasks whose observed state changed in `t` (and forgets removed tasks).
    fn observe(&mut self, t: &ServiceTable) {
        let (now, unix_ms) = Self::now();
        self.since = t
            .tasks
            .iter()
            .filter(|te| !te.removed)
            .map(|te| (te.name.to_string(), self.since(te, now, unix_ms)))
            .collect();
    }

    /// [`Controller::observe`] for the tasks of the services named `names` only (as they are
    /// in `t`), `gone` naming the tasks they had before.
    fn observe_services<'a>(
        &mut self,
        t: &ServiceTable,
        names: impl IntoIterator<Item = &'a String>,
        gone: impl IntoIterator<Item = &'a str>,
    ) {
        let (now, unix_ms) = Self::now();
        let fresh: Vec<(String, Since)> = names
            .into_iter()
            .filter_map(|name| t.service_by_name(name))
            .flat_map(|si| t.services[usize::from(si)].tasks.iter())
            .map(|&ti| {
                let te = &t.tasks[ti as usize];
                (te.name.to_string(), self.since(te, now, unix_ms))
            })
            .collect();
        for g in gone {
            self.since.remove(g);
        }
        self.since.extend(fresh);
    }

    /// Compiles the health verdicts `view` into a new table and publishes it (without waiting
    /// for the workers: nobody waits on it, and a verdict is not persisted). Only the services
    /// whose tasks' verdicts changed are compiled again. Returns whether it changed anything.
    pub fn set_health(&mut self, view: HealthView) -> bool {
        if view == self.health {
            return false;
        }
        let generation = self.generation + 1;
        let current = self.shared.table.load();
        let changed: HashSet<u64> = view
            .iter()
            .filter(|(u, h)| self.health.get(u) != Some(h))
            .map(|(u, _)| *u)
            .chain(
                self.health
                    .keys()
                    .filter(|u| !view.contains_key(u))
                    .copied(),
            )
            .collect();
        let names: BTreeSet<String> = current
            .tasks
            .iter()
            .filter(|te| !te.removed && changed.contains(&te.uid))
            .map(|te| current.services[usize::from(te.service)].name.to_string())
            .collect();
        drop(current);
        match self.patched(&names, generation, &view) {
            Ok((t, _)) => {
                self.health = view;
                self.generation = generation;
                self.observe_services(&t, &names, std::iter::empty());
                // Not waited for (nobody waits on a verdict): the table it replaces may still
                // be in a worker's hands, so it is not kept for the next patch.
                self.shared.table.store(Arc::new(t));
                true
            }
            Err(e) => {
                tracing::warn!("health change not applied: {e}");
                false
            }
        }
    }

    /// `service ps`: each task with its observed state, since when, and its health.
    fn ps(&self, svc: &ctl::Service) -> Vec<PsTask> {
        let table = self.shared.table.load();
        let board = self
            .host
            .as_ref()
            .and_then(|h| h.board.lock().ok().map(|b| b.clone()));
        let retries = svc.health.as_ref().map_or(0, |h| h.retries);
        svc.tasks
            .iter()
            .map(|t| {
                let te = table
                    .task_by_name(&t.name)
                    .and_then(|i| table.tasks.get(i as usize));
                let health = te.and_then(|x| x.health);
                let state = CurrentState::of(t.state, health);
                let detail = te.and_then(|x| board.as_ref()?.get(&x.uid).cloned());
                let (age_ms, since_unix_ms) = match self.since.get(&t.name) {
                    Some(s) if s.state == state => (
                        u64::try_from(s.at.elapsed().as_millis()).unwrap_or(u64::MAX),
                        s.unix_ms,
                    ),
                    _ => (0, 0),
                };
                let streak = detail.as_ref().map_or(0, |d| d.streak);
                let why = detail.as_ref().map(|d| d.error.clone()).unwrap_or_default();
                let error = match (t.state, health) {
                    (TaskState::Failed | TaskState::Unhealthy, _) => {
                        format!(
                            "desired state {} (set with --task-update)",
                            ts_word(t.state)
                        )
                    }
                    (TaskState::Running, Some(Health::Unhealthy)) => {
                        format!("unhealthy: {why} ({streak} checks failed in a row)")
                    }
                    (TaskState::Running, Some(Health::Starting)) if streak > 0 => {
                        format!("starting: {why} ({streak} of {retries} checks failed)")
                    }
                    (TaskState::Running, Some(Health::Starting | Health::Ejected)) => why,
                    _ => String::new(),
                };
                PsTask {
                    task: t.clone(),
                    status: Some(TaskStatus {
                        state,
                        age_ms,
                        since_unix_ms,
                        health,
                        failing_streak: streak,
                        error,
                    }),
                }
            })
            .collect()
    }

    /// Handles one request line; never panics, always answers.
    pub fn handle_line(&mut self, line: &[u8]) -> Response {
        let req = match proto::parse_request(line) {
            Ok(r) => r,
            Err(e) => return Response::Err(e),
        };
        self.handle(&req.command)
    }

    pub fn handle(&mut self, cmd: &Command) -> Response {
        if let Some(r) = crate::conn::answer(&self.shared, cmd) {
            return r;
        }
        match cmd {
            Command::Query(q) => self.query(q),
            Command::Change(c) => self.change(c),
            // Answered above, from the workers (`conn::answer`).
            Command::Runtime(r) => Response::error(
                ErrorCode::Internal,
                format!(
                    "{} is answered by the workers, not the control thread",
                    r.name()
                ),
            ),
        }
    }

    fn query(&self, q: &Query) -> Response {
        let g = self.generation;
        let not_found = |kind: &str, name: &str| {
            Response::error(ErrorCode::NotFound, format!("{kind} \"{name}\" not found"))
        };
        let val = |v: Result<Value, serde_json::Error>| match v {
            Ok(v) => Response::ok(g, v),
            Err(e) => Response::error(
                ErrorCode::Internal,
                format!("cannot encode the answer: {e}"),
            ),
        };
        // Network keys never leave the node: answers carry their ids only.
        match q {
            Query::NetworkLs {} => {
                let nets: Vec<ctl::Network> = self
                    .state
                    .networks
                    .iter()
                    .map(ctl::Network::redacted)
                    .collect();
                val(serde_json::to_value(&nets))
            }
            Query::NetworkInspect { name } => match self.state.network(name) {
                // With the MTU its tasks have on this node, set or derived from the uplink's.
                Some(n) => val(serde_json::to_value(n.redacted()).map(|mut v| {
                    if let (Some(m), Value::Object(o)) = (self.uplink_mtu, &mut v) {
                        o.insert(
                            "mtu".into(),
                            serde_json::json!(n.effective_mtu(m, self.state.underlay6())),
                        );
                    }
                    v
                })),
                None => not_found("network", name),
            },
            Query::NodeLs {} => val(serde_json::to_value(&self.state.nodes)),
            Query::ServiceLs {} => val(serde_json::to_value(&self.state.services)),
            Query::ServiceInspect { name } => match self.state.service(name) {
                Some(s) => val(serde_json::to_value(s)),
                None => not_found("service", name),
            },
            Query::ServicePs { name } => match self.state.service(name) {
                Some(s) => val(serde_json::to_value(self.ps(s))),
                None => not_found("service", name),
            },
            Query::State {} => val(serde_json::to_value(self.state.redacted())),
            Query::Stats {} => val(serde_json::to_value(self.stats())),
            // `handle` answers it from the workers (`conn::answer`) before this.
            Query::ConnLs { .. } => Response::error(
                ErrorCode::Internal,
                "conn-ls is answered by the workers, not the control thread",
            ),
        }
    }

    /// In cluster mode, the nodes other than this one whose meshd holds no lease: flagged down
    /// in the table (their tasks take no new connections; flows already running go on while
    /// they can), not drained in the desired state.
    fn down(&self, state: &State) -> BTreeSet<String> {
        let Some(live) = &self.live else {
            return BTreeSet::new();
        };
        state
            .nodes
            .iter()
            .filter(|n| n.name != self.local && !live.contains(&n.name))
            .map(|n| n.name.clone())
            .collect()
    }

    /// Cluster mode: makes the state `delta` gives (etcd's at `revision`, `live` the nodes
    /// holding a lease) the desired state and runs it on every worker; it is cached in the
    /// state file later ([`Controller::cache_due`]). Returns the table generation, or why this
    /// node refuses it (nothing changes then).
    pub fn adopt(
        &mut self,
        delta: Delta,
        revision: i64,
        live: BTreeSet<String>,
    ) -> Result<u64, String> {
        if self.live.as_ref() != Some(&live) {
            // Which nodes are up is no part of the desired state: flagged in the tables (the
            // one running and those sharing its flags), not compiled, whatever becomes of the
            // change that came with it.
            self.live = Some(live);
            let down = self.down(&self.state);
            if self.shared.table.load().set_down(&down) {
                tracing::info!(?down, revision, "cluster: the nodes down are now these");
            }
        }
        let small = match &delta {
            Delta::Part(p)
                if p.nodes.is_none()
                    && p.networks.is_none()
                    && p.services.len() <= JOURNAL_SERVICES =>
            {
                Some(p.clone())
            }
            _ => None,
        };
        let t0 = Instant::now();
        let services = match &delta {
            Delta::Full(s) => s.services.len(),
            Delta::Part(p) => p.services.len(),
        };
        let table = match delta {
            Delta::Full(state) => self.take_full(state).map(|t| Some((t, "whole", None))),
            Delta::Part(part) => self.take_part(part),
        };
        let compiled = t0.elapsed();
        let (table, how, patched) = match table {
            Ok(Some(t)) => t,
            Ok(None) => {
                // Nothing this node runs changed (a change that changed no object).
                self.revision = revision;
                return Ok(self.generation);
            }
            Err(refused) => return Err(refused),
        };
        self.generation = table.generation;
        self.revision = revision;
        // The workers first: the cache is for a restart without etcd, and a change is
        // confirmed once it runs, not once it is on disk (etcd holds it durably already).
        let t1 = Instant::now();
        self.spare = None;
        let ran = self.shared.publish(table, self.ack_timeout);
        let published = t1.elapsed();
        // The table replaced is the next patch's spare when this one was a patch of it.
        let ran = ran.map(|old| self.spare = patched.map(|names| (old, names)));
        self.journal(small);
        // Where a change's time goes, for `bench converge` and whoever wonders.
        tracing::info!(
            revision,
            generation = self.generation,
            how,
            services,
            compile_us = micros(compiled),
            publish_us = micros(published),
            journal_us = micros(t1.elapsed() - published),
            "cluster: adopted"
        );
        match ran {
            Ok(()) => Ok(self.generation),
            Err(behind) => Err(format!(
                "workers {behind:?} did not pick generation {} up within {:?}",
                self.generation, self.ack_timeout
            )),
        }
    }

    /// Cluster mode: keeps the cache up to date with the change just adopted: a small one is
    /// appended to the journal at once; anything else rewrites the file once answered.
    fn journal(&mut self, small: Option<Part>) {
        if self.uncached {
            return;
        }
        let Some(part) = small.filter(|_| self.journaled < JOURNAL_BYTES) else {
            self.uncached = true;
            return;
        };
        match self.store.append(self.revision, self.generation, &part) {
            Ok(n) => self.journaled += n,
            Err(e) => {
                tracing::warn!("cannot append to the cache's journal: {e}; rewriting the cache");
                self.uncached = true;
            }
        }
    }

    /// The running table patched for the services `names` (whose entries in `self.state`
    /// are new): on the spare, in place, when no worker holds it (`patch`), else on a copy
    /// (`copy`). Either way the spare is used up.
    fn patched(
        &mut self,
        names: &BTreeSet<String>,
        generation: u64,
        health: &HealthView,
    ) -> Result<(ServiceTable, &'static str), BuildError> {
        if let Some((old, behind)) = self.spare.take() {
            if let Ok(mut t) = Arc::try_unwrap(old) {
                let all: BTreeSet<String> = behind.union(names).cloned().collect();
                return t
                    .update(&self.state, &all, generation, health)
                    .map(|()| (t, "patch"));
            }
        }
        self.shared
            .table
            .load()
            .patch(&self.state, names, generation, health)
            .map(|t| (t, "copy"))
    }

    /// A whole state: checked and compiled whole.
    fn take_full(&mut self, state: State) -> Result<ServiceTable, String> {
        if let Some(mtu) = self.uplink_mtu {
            ctl::validate::check_mtu(&state, mtu).map_err(|e| e.to_string())?;
        }
        let claims = Claims::of(&state).map_err(|e| e.to_string())?;
        let down = self.down(&state);
        let table = ServiceTable::compile(
            &state,
            &self.local,
            self.generation + 1,
            &self.health,
            &down,
        )
        .map_err(|e| e.to_string())?;
        self.state = state;
        self.claims = Some(claims);
        self.observe(&table);
        Ok(table)
    }

    /// Some objects changed: when only services did, only they are checked (against what the
    /// others hold) and compiled again; a node or a network changing takes the whole path.
    /// Returns the table, how it was made (`whole`, `compile`: every service, as more than
    /// [`PATCH_SERVICES`] services changed; `patch`: the spare patched in place; `copy`: a copy
    /// patched), and for a patch the services it changed.
    fn take_part(&mut self, part: Part) -> Result<Option<Taken>, String> {
        if part.is_empty() {
            return Ok(None);
        }
        if part.nodes.is_some() || part.networks.is_some() {
            let mut next = self.state.clone();
            part.apply_to(&mut next);
            return self.take_full(next).map(|t| Some((t, "whole", None)));
        }
        if self.claims.is_none() {
            // The state in force is valid: its claims are made without fail.
            self.claims = Some(Claims::of(&self.state).map_err(|e| e.to_string())?);
        }
        let undo: Vec<(String, Option<ctl::Service>)> = part
            .services
            .into_iter()
            .map(|(name, s)| {
                let old = self.state.put_service(&name, s);
                (name, old)
            })
            .collect();
        let names: BTreeSet<String> = undo.iter().map(|(n, _)| n.clone()).collect();
        let checked = match self.claims.as_mut() {
            Some(claims) => claims.replace(
                &self.state,
                undo.iter().filter_map(|(_, old)| old.as_ref()),
                names.iter().filter_map(|n| self.state.service(n)),
            ),
            None => Ok(()),
        };
        // Many services at once (an import, a node back after a long pause) are compiled
        // whole: a patch costs per service what a whole compile costs per task.
        let whole = names.len() > PATCH_SERVICES;
        let table = checked.map_err(|e| e.to_string()).and_then(|()| {
            let generation = self.generation + 1;
            if whole {
                let down = self.down(&self.state);
                ServiceTable::compile(&self.state, &self.local, generation, &self.health, &down)
                    .map(|t| (t, "compile"))
            } else {
                let health = std::mem::take(&mut self.health);
                let t = self.patched(&names, generation, &health);
                self.health = health;
                t
            }
            .map_err(|e| e.to_string())
        });
        match table {
            Ok((t, how)) => {
                if whole {
                    self.observe(&t);
                } else {
                    let gone = undo
                        .iter()
                        .filter_map(|(_, old)| old.as_ref())
                        .flat_map(|s| s.tasks.iter().map(|t| t.name.as_str()));
                    self.observe_services(&t, &names, gone);
                }
                let patched = (!whole).then_some(names);
                Ok(Some((t, how, patched)))
            }
            Err(refused) => {
                for (name, old) in undo.into_iter().rev() {
                    self.state.put_service(&name, old);
                }
                // Spoiled by the refused change: made again from the state in force.
                self.claims = None;
                Err(refused)
            }
        }
    }

    /// Cluster mode: writes the state adopted last to the state file, the cache a restart
    /// serves from while etcd is away (the control loop calls it once the change is answered),
    /// and empties the journal.
    pub fn cache(&mut self) {
        if !std::mem::take(&mut self.uncached) {
            return;
        }
        self.journaled = 0;
        let persisted = PersistedRef {
            generation: self.generation,
            state: &self.state,
            revision: self.revision,
        };
        // Compact: it is a cache (etcd holds the state), read back as fast as it can be.
        let t0 = Instant::now();
        match self.store.save_compact(&persisted) {
            Ok(()) => tracing::info!(
                revision = self.revision,
                took_us = micros(t0.elapsed()),
                "cluster: cached the state in the state file"
            ),
            Err(e) => tracing::warn!("cannot cache the cluster state in the state file: {e}"),
        }
    }

    /// Cluster mode, once a change is answered: when there is no spare (the table running was
    /// compiled whole), a copy of the running table becomes it, so the next change is patched
    /// in place rather than waiting for that copy.
    pub fn keep_spare(&mut self) {
        if self.cluster.is_some() && self.spare.is_none() {
            let mut copy = (*self.shared.table.load_full()).clone();
            copy.make_room();
            self.spare = Some((Arc::new(copy), BTreeSet::new()));
        }
    }

    fn change(&mut self, c: &Change) -> Response {
        if let Some(endpoints) = &self.cluster {
            return Response::error(
                ErrorCode::Invalid,
                format!(
                    "node {} takes its state from the cluster (etcd at {endpoints}): make changes there, with `meshctl --cluster {endpoints} ...` (or MESHCTL_CLUSTER)",
                    self.local
                ),
            );
        }
        let next = match ctl::apply::change(&self.state, c) {
            Ok(s) => s,
            Err(e) => return Response::Err(e.into()),
        };
        let table = match self.prepare(&next) {
            Ok(t) => t,
            Err(refused) => return refused,
        };
        let generation = match self.commit(next, &table) {
            Ok(g) => g,
            Err(refused) => return refused,
        };
        let answer = ctl::apply::answer_change(&self.state, c).unwrap_or(Value::Null);
        self.spare = None;
        match self.shared.publish(table, self.ack_timeout) {
            Ok(_) => Response::ok(generation, answer),
            Err(behind) => Response::error(
                ErrorCode::Internal,
                format!("generation {generation} is persisted and published, but workers {behind:?} did not pick it up within {:?}", self.ack_timeout),
            ),
        }
    }

    /// The first half of a change: checks the next state against this node (the uplink's MTU)
    /// and compiles its table with the next generation and the current health view. Changes
    /// nothing; a refusal is the answer to send.
    pub fn prepare(&self, next: &State) -> Result<ServiceTable, Response> {
        if let Some(mtu) = self.uplink_mtu {
            if let Err(e) = ctl::validate::check_mtu(next, mtu) {
                return Err(Response::error(ErrorCode::Invalid, e.to_string()));
            }
        }
        ctl::validate(next)
            .map_err(BuildError::from)
            .and_then(|()| {
                let down = self.down(next);
                ServiceTable::compile(next, &self.local, self.generation + 1, &self.health, &down)
            })
            .map_err(|e| {
                let code = match &e {
                    BuildError::Invalid(v) => v.code(),
                    BuildError::UnknownLocalNode(_) | BuildError::TooMany { .. } => {
                        ErrorCode::Invalid
                    }
                };
                Response::error(code, e.to_string())
            })
    }

    /// The second half: persists `next` (the state `table` was prepared from) and makes it the
    /// controller's. The caller publishes the table (the control thread waits for the workers;
    /// the in-memory mesh of the tests steps them). Returns the new generation.
    pub fn commit(&mut self, next: State, table: &ServiceTable) -> Result<u64, Response> {
        let persisted = Persisted {
            generation: table.generation,
            state: next,
            revision: 0,
        };
        if let Err(e) = self.store.save(&persisted) {
            return Err(Response::error(
                ErrorCode::Internal,
                format!("cannot persist the state, nothing changed: {e}"),
            ));
        }
        self.state = persisted.state;
        self.generation = persisted.generation;
        self.observe(table);
        Ok(self.generation)
    }

    /// The `stats` answer (see [`crate::shared::report`]).
    pub fn stats(&self) -> ctl::proto::StatsReport {
        let table = self.shared.table.load();
        crate::shared::report(&self.shared, self.host.as_deref(), &table)
    }

    /// Runs the control thread: applies messages one at a time until `shared.stop` is set or
    /// every sender is gone.
    pub fn run(mut self, rx: Receiver<ControlMsg>) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(ControlMsg::Request(cmd, reply)) => {
                    // The asker may have given up; nothing to do then.
                    let _ = reply.send(self.handle(&cmd));
                }
                Ok(ControlMsg::Adopt {
                    delta,
                    revision,
                    live,
                    reply,
                }) => {
                    let _ = reply.send(self.adopt(delta, revision, live));
                    self.cache();
                    self.keep_spare();
                }
                Ok(ControlMsg::Health(view)) => {
                    if self.set_health(view) {
                        tracing::info!(
                            generation = self.generation,
                            "health changed: new table published"
                        );
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Starts the control thread with this controller; returns the handle that feeds it.
    pub fn start(self) -> std::io::Result<(ControlHandle, std::thread::JoinHandle<()>)> {
        let (tx, rx) = channel::unbounded();
        let handle = ControlHandle {
            tx,
            shared: self.shared.clone(),
            host: self.host.clone(),
        };
        let t = std::thread::Builder::new()
            .name("meshd-control".into())
            .spawn(move || self.run(rx))?;
        Ok((handle, t))
    }
}

/// What the control thread is fed.
#[derive(Debug)]
pub enum ControlMsg {
    /// A parsed request, and where its answer goes.
    Request(Box<Command>, Sender<Response>),
    /// The host thread's changed health verdicts.
    Health(HealthView),
    /// Cluster mode: etcd's state at a revision (whole, or what changed), for
    /// [`Controller::adopt`].
    Adopt {
        delta: Delta,
        revision: i64,
        live: BTreeSet<String>,
        reply: Sender<Result<u64, String>>,
    },
}

/// The way to the control thread, for connection threads and the host thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    tx: Sender<ControlMsg>,
    shared: Arc<Shared>,
    host: Option<Arc<HostShared>>,
}

impl ControlHandle {
    /// Handles one request line; never panics, always answers.
    pub fn handle_line(&self, line: &[u8]) -> Response {
        match proto::parse_request(line) {
            Ok(r) => self.request(r.command),
            Err(e) => Response::Err(e),
        }
    }

    /// Answers `stats` here, from the hub, and `conn-ls`/`conn-rm` from the workers
    /// ([`crate::conn`]); hands every other command to the control thread and waits for its
    /// answer.
    pub fn request(&self, cmd: Command) -> Response {
        if let Some(r) = crate::conn::answer(&self.shared, &cmd) {
            return r;
        }
        if let Command::Runtime(Runtime::Capture { .. }) = cmd {
            return Response::error(
                ErrorCode::BadRequest,
                "capture streams its answer: send it alone on a control connection of its own (meshctl capture does)",
            );
        }
        if let Command::Query(Query::Stats {}) = cmd {
            let table = self.shared.table.load();
            let report = crate::shared::report(&self.shared, self.host.as_deref(), &table);
            return match serde_json::to_value(report) {
                Ok(v) => Response::ok(table.generation, v),
                Err(e) => Response::error(
                    ErrorCode::Internal,
                    format!("cannot encode the answer: {e}"),
                ),
            };
        }
        let (reply, answer) = channel::bounded(1);
        if self
            .tx
            .send(ControlMsg::Request(Box::new(cmd), reply))
            .is_err()
        {
            return Response::error(ErrorCode::Internal, "meshd is stopping");
        }
        answer
            .recv()
            .unwrap_or_else(|_| Response::error(ErrorCode::Internal, "meshd is stopping"))
    }

    /// Cluster mode: hands the control thread etcd's state and waits until it runs on every
    /// worker (see [`Controller::adopt`]).
    pub fn adopt(
        &self,
        delta: Delta,
        revision: i64,
        live: BTreeSet<String>,
    ) -> Result<u64, String> {
        let (reply, answer) = channel::bounded(1);
        self.tx
            .send(ControlMsg::Adopt {
                delta,
                revision,
                live,
                reply,
            })
            .map_err(|_| "meshd is stopping".to_string())?;
        answer
            .recv()
            .unwrap_or_else(|_| Err("meshd is stopping".into()))
    }

    /// Hands the control thread changed health verdicts (never waits).
    pub fn health(&self, view: HealthView) {
        let _ = self.tx.send(ControlMsg::Health(view));
    }

    /// The hub the control thread publishes to.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

fn ts_word(s: TaskState) -> &'static str {
    match s {
        TaskState::Running => "running",
        TaskState::Unhealthy => "unhealthy",
        TaskState::Draining => "draining",
        TaskState::Shutdown => "shutdown",
        TaskState::Failed => "failed",
    }
}

/// The control socket server.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
}

impl Server {
    /// Binds `path` (mode 0600), replacing a stale socket file.
    pub fn bind(path: &Path) -> std::io::Result<(Server, UnixListener)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            // A live daemon answers; a stale file from a crash does not.
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use by a running meshd; stop it or pick another --socket",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let l = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok((
            Server {
                path: path.to_path_buf(),
            },
            l,
        ))
    }

    /// Serves connections until `shared.stop`; one thread per connection, requests applied one
    /// at a time.
    pub fn serve(listener: UnixListener, ctl: ControlHandle) {
        Self::serve_limited(listener, ctl, Limits::default());
    }

    /// [`Server::serve`] within `limits`: a connection over the caps gets one `busy` error
    /// line and is closed; a request not whole within `limits.request` gets a `timeout` line
    /// and its connection is closed; an answer the client does not read within `limits.write`
    /// closes it. The daemon goes on serving everyone else.
    pub fn serve_limited(listener: UnixListener, ctl: ControlHandle, limits: Limits) {
        let _ = listener.set_nonblocking(true);
        let open = Arc::new(std::sync::Mutex::new(HashMap::<i32, usize>::new()));
        while !ctl.shared.stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let client = peer_pid(&stream);
                    let admitted = open.lock().is_ok_and(|mut o| {
                        let total: usize = o.values().sum();
                        let mine = o.entry(client).or_insert(0);
                        if total >= limits.total || *mine >= limits.per_client {
                            return false;
                        }
                        *mine += 1;
                        true
                    });
                    if !admitted {
                        refuse(
                            stream,
                            &limits,
                            ErrorCode::Busy,
                            format!(
                                "too many control connections (at most {} in all, {} per client): try again when one closes",
                                limits.total, limits.per_client
                            ),
                        );
                        continue;
                    }
                    let ctl = ctl.clone();
                    let open = open.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("meshd-conn".into())
                            .spawn(move || {
                                serve_conn(stream, ctl, limits);
                                if let Ok(mut o) = open.lock() {
                                    if let Some(n) = o.get_mut(&client) {
                                        *n -= 1;
                                        if *n == 0 {
                                            o.remove(&client);
                                        }
                                    }
                                }
                            });
                    if spawned.is_err() {
                        tracing::warn!("control socket: no thread for a connection");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Until a client connects (or a look at the stop flag is due).
                    use std::os::fd::AsRawFd;
                    crate::port::sys::wait_readable(
                        &[listener.as_raw_fd()],
                        Duration::from_millis(100),
                    );
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// What one control socket tolerates of its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request line must arrive whole within this, counted from the connection's start or
    /// the previous answer (so also how long an idle connection stays open).
    pub request: Duration,
    /// An answer must be taken by the client within this.
    pub write: Duration,
    /// Connections open at once from one client process.
    pub per_client: usize,
    /// Connections open at once in all.
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request: Duration::from_secs(30),
            write: Duration::from_secs(5),
            per_client: 8,
            total: 64,
        }
    }
}

/// The process at the other end of `stream` (0 when the kernel does not say).
fn peer_pid(stream: &UnixStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    match crate::port::sys::getsockopt_level(
        stream.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_PEERCRED,
        &mut cred,
    ) {
        Ok(_) => cred.pid,
        Err(_) => 0,
    }
}

/// Answers `stream` with one error line (within the write deadline) and closes it.
fn refuse(mut stream: UnixStream, limits: &Limits, code: ErrorCode, msg: String) {
    let _ = stream.set_write_timeout(Some(limits.write));
    let _ = stream.write_all(Response::error(code, msg).to_line().as_bytes());
}

/// A connection's reads, each waiting at most until the current request's deadline: a client
/// that sends a byte now and then cannot hold its thread past it.
struct Deadlined {
    stream: UnixStream,
    until: Instant,
}

impl std::io::Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match self.stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                Err(std::io::ErrorKind::TimedOut.into())
            }
            r => r,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_conn(stream: UnixStream, ctl: ControlHandle, limits: Limits) {
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let _ = w.set_write_timeout(Some(limits.write));
    let mut r = BufReader::new(Deadlined {
        stream,
        until: Instant::now() + limits.request,
    });
    loop {
        let resp = match proto::read_line(&mut r, proto::MAX_REQUEST_BYTES) {
            Ok(None) => return,
            Ok(Some(line)) => match proto::parse_request(&line) {
                Ok(proto::Request {
                    command: Command::Runtime(Runtime::Capture { spec }),
                    ..
                }) => {
                    // A stream of its own until the capture ends; then the connection closes.
                    // Each line must be taken within the write deadline, as any answer.
                    crate::capture::serve(&ctl.shared, &spec, &mut w);
                    return;
                }
                Ok(r) => ctl.request(r.command),
                Err(e) => Response::Err(e),
            },
            Err(proto::FrameError::TooLarge { limit }) => {
                let resp = Response::error(
                    ErrorCode::TooLarge,
                    format!("request larger than {limit} bytes"),
                );
                let _ = w.write_all(resp.to_line().as_bytes());
                // The rest of the oversized line cannot be framed: close.
                return;
            }
            Err(proto::FrameError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                let resp = Response::error(
                    ErrorCode::Timeout,
                    format!(
                        "no whole request within {:?}: closing the connection",
                        limits.request
                    ),
                );
                let _ = w.write_all(resp.to_line().as_bytes());
                return;
            }
            Err(proto::FrameError::Io(_)) => return,
        };
        // A client that does not take its answer within the write deadline is dropped.
        if w.write_all(resp.to_line().as_bytes()).is_err() {
            return;
        }
        r.get_mut().until = Instant::now() + limits.request;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HealthDetail;
    use crate::neigh::Neighbors;
    use ctl::model::HealthCheck;

    /// A controller for node n2 of `three_nodes` with a health-checked `web`, no workers (so
    /// nothing waits for acknowledgements), and the directory of its state (removed when
    /// dropped: keep it as long as the controller).
    fn controller(tag: &str) -> (Controller, tempfile::TempDir) {
        let dir = tempfile::Builder::new()
            .prefix(&format!("meshd-ctl-health-{tag}-"))
            .tempdir()
            .unwrap();
        let mut state = crate::testkit::three_nodes();
        state.services[0].health = Some(HealthCheck {
            interval_ms: 1000,
            timeout_ms: 500,
            ..HealthCheck::default()
        });
        let shared = Shared::new(
            ServiceTable::empty("n2", std::net::Ipv4Addr::new(192, 168, 1, 12)),
            0,
            Arc::new(Neighbors::new(16)),
        );
        let persisted = Persisted {
            generation: 4,
            state,
            revision: 0,
        };
        let mut c = Controller::new(
            "n2".into(),
            persisted,
            StateStore::new(dir.path().join("state.json")),
            shared,
        )
        .unwrap();
        c.host = Some(Arc::new(HostShared::default()));
        (c, dir)
    }

    fn ps(c: &mut Controller) -> Vec<PsTask> {
        let Response::Ok(ok) = c.handle(&Command::Query(Query::ServicePs { name: "web".into() }))
        else {
            panic!()
        };
        serde_json::from_value(ok.result).unwrap()
    }

    #[test]
    fn in_cluster_mode_the_state_comes_from_etcd_and_nodes_without_a_lease_are_flagged_down() {
        let (mut c, _dir) = controller("cluster");
        c.cluster = Some("etcd://10.99.0.1:2379".into());
        // The socket takes no change: it says where changes go.
        let r = c.handle(&Command::Change(Change::ServiceScale {
            name: "web".into(),
            replicas: 0,
        }));
        let Response::Err(e) = r else { panic!("{r:?}") };
        assert!(
            e.message
                .contains("meshctl --cluster etcd://10.99.0.1:2379"),
            "{}",
            e.message
        );
        // etcd's state at revision 40, n3's meshd holding no lease: n3 is flagged down in the
        // table (its tasks take no new connections), not drained in the desired state; this
        // node (n2) is never down by it.
        let state = c.state.clone();
        let live: BTreeSet<String> = ["n1".to_string()].into();
        let g = c.adopt(Delta::Full(state.clone()), 40, live).unwrap();
        let t = c.shared.table.load();
        assert_eq!(t.generation, g);
        let down = |t: &ServiceTable| -> Vec<(String, bool, bool)> {
            (0u16..3)
                .map(|i| {
                    let n = t.node(i);
                    (n.name.clone(), n.drained, t.down.is_down(i))
                })
                .collect()
        };
        let named = |v: [(&str, bool, bool); 3]| v.map(|(n, a, b)| (n.to_string(), a, b));
        assert_eq!(
            down(&t),
            named([
                ("n1", false, false),
                ("n2", false, false),
                ("n3", false, true)
            ])
        );
        // n3's lease back, then lapsing again: flags flip in the running table, nothing is
        // compiled (the same generation: no table is published).
        let all: BTreeSet<String> = ["n1", "n2", "n3"].map(String::from).into();
        assert_eq!(c.adopt(Delta::Part(Part::default()), 41, all).unwrap(), g);
        let t = c.shared.table.load();
        assert_eq!(t.generation, g);
        assert!(!t.down.any());
        let live: BTreeSet<String> = ["n1".to_string()].into();
        assert_eq!(c.adopt(Delta::Part(Part::default()), 42, live).unwrap(), g);
        assert!(t.down.is_down(2) && !t.down.is_down(0));
        assert_eq!(c.revision, 42);
        assert_eq!(c.state, state);
        c.revision = 40;
        assert_eq!(c.revision, 40);
        // Cached with its revision, for a restart without etcd (once answered).
        c.cache();
        let cached = c.store.load().unwrap().unwrap();
        assert_eq!((cached.revision, cached.generation), (40, g));
        // A state this node cannot run is refused and changes nothing.
        let mut bad = state.clone();
        bad.nodes.retain(|n| n.name != "n2");
        bad.services.clear();
        let e = c.adopt(Delta::Full(bad), 43, BTreeSet::new()).unwrap_err();
        assert!(e.contains("n2"), "{e}");
        assert_eq!((c.revision, c.shared.table.load().generation), (40, g));
        // Which nodes hold a lease is a fact, not part of the change refused: n1 is down now.
        assert_eq!(c.live.as_ref().map(BTreeSet::len), Some(0));
        assert_eq!(
            down(&c.shared.table.load()),
            named([
                ("n1", false, true),
                ("n2", false, false),
                ("n3", false, true)
            ])
        );
    }

    #[test]
    fn an_encrypted_networks_keys_are_kept_in_the_state_file_and_never_answered() {
        let (mut c, _dir) = controller("keys");
        let secret = ctl::Secret([0x5a; 32]);
        let hex = "5a".repeat(32);
        let net = ctl::Network {
            subnet6: None,
            name: "vault".into(),
            vni: 5000,
            subnet: "10.0.9.0/24".parse().unwrap(),
            gateway: std::net::Ipv4Addr::new(10, 0, 9, 1),
            ingress: false,
            endpoints: Default::default(),
            mtu: None,
            encryption: Some(ctl::Encryption::single(1, secret)),
        };
        let mut answers = Vec::new();
        for cmd in [
            Command::Change(Change::NetworkCreate { network: net }),
            Command::Change(Change::NetworkUpdate {
                name: "vault".into(),
                update: ctl::proto::NetworkUpdate {
                    key_add: Some(ctl::NetworkKey {
                        id: 2,
                        key: Some(ctl::Secret([0x6b; 32])),
                    }),
                    key_primary: Some(2),
                },
            }),
            Command::Query(Query::NetworkLs {}),
            Command::Query(Query::NetworkInspect {
                name: "vault".into(),
            }),
            Command::Query(Query::State {}),
        ] {
            let r = c.handle(&cmd);
            let Response::Ok(ok) = r else {
                panic!("{}: {r:?}", cmd.name())
            };
            answers.push(ok.result.to_string());
        }
        for (i, a) in answers.iter().enumerate() {
            assert!(
                a.contains(if i == 0 {
                    "\"primary\":1"
                } else {
                    "\"primary\":2"
                }),
                "{a}"
            );
            assert!(!a.contains(&hex) && !a.contains(&"6b".repeat(32)), "{a}");
        }
        // The file has them (a restart seals with the same keys), for root only.
        let file = std::fs::read_to_string(c.store.path()).unwrap();
        assert!(file.contains(&hex) && file.contains(&"6b".repeat(32)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let t = c.shared.table.load_full();
        assert!(t.sealed);
        assert_eq!(t.networks.last().unwrap().mtu_on(1500), 1406);
    }

    /// A dual-stack network the state cannot take is refused with validation's message and
    /// changes nothing; one it can take reaches the table with its IPv6 prefix.
    #[test]
    fn a_refused_dual_stack_network_changes_nothing() {
        let (mut c, _dir) = controller("dual");
        let (state, generation) = (c.state.clone(), c.generation);
        let net = |subnet6: &str| ctl::Network {
            subnet6: Some(subnet6.parse().unwrap()),
            name: "dualnet".into(),
            vni: 4099,
            subnet: "10.0.5.0/24".parse().unwrap(),
            gateway: std::net::Ipv4Addr::new(10, 0, 5, 1),
            ingress: false,
            endpoints: Default::default(),
            mtu: None,
            encryption: None,
        };
        let r = c.handle(&Command::Change(Change::NetworkCreate {
            network: net("fe80::/64"),
        }));
        let Response::Err(e) = r else { panic!("{r:?}") };
        assert!(
            e.message
                .contains("network \"dualnet\": IPv6 subnet fe80::/64 is not unicast"),
            "{}",
            e.message
        );
        assert_eq!((&c.state, c.generation), (&state, generation));
        let t = c.shared.table.load_full();
        assert!((0..t.networks.len()).all(|i| t.subnet6(u16::try_from(i).unwrap()).is_none()));
        assert!(!t.dual_stack);

        let r = c.handle(&Command::Change(Change::NetworkCreate {
            network: net("fd00:5::/64"),
        }));
        assert!(matches!(r, Response::Ok(_)), "{r:?}");
        let t = c.shared.table.load_full();
        let dual = t.networks.iter().position(|n| n.name == "dualnet").unwrap();
        assert_eq!(
            t.subnet6(u16::try_from(dual).unwrap()),
            Some("fd00:5::/64".parse().unwrap())
        );
        assert!(t.dual_stack);
    }

    #[test]
    fn in_cluster_mode_a_change_to_one_service_is_checked_and_compiled_alone() {
        let (mut c, _dir) = controller("part");
        c.cluster = Some("etcd://10.99.0.1:2379".into());
        let live: BTreeSet<String> = ["n1", "n2", "n3"].map(String::from).into();
        let state = c.state.clone();
        let g = c
            .adopt(Delta::Full(state.clone()), 10, live.clone())
            .unwrap();
        c.cache(); // as the control loop does once it has answered
                   // web.1's weight goes to 0: only web is compiled again.
        let mut web = state.service("web").unwrap().clone();
        web.tasks[0].weight = 0;
        let part = |s: ctl::Service| Part {
            services: [(s.name.clone(), Some(s))].into(),
            ..Part::default()
        };
        let g2 = c
            .adopt(Delta::Part(part(web.clone())), 11, live.clone())
            .unwrap();
        assert_eq!(g2, g + 1);
        assert_eq!(c.state.service("web"), Some(&web));
        let shared = c.shared.clone();
        let weight = |name: &str| {
            let t = shared.table.load_full();
            t.task_by_name(name).map(|i| t.tasks[i as usize].weight)
        };
        assert_eq!((weight("web.1"), weight("web.2")), (Some(0), Some(1)));
        // The cache holds it at once: the file as the whole state was, and a journal line.
        let cached = c.store.load().unwrap().unwrap();
        assert_eq!((cached.revision, cached.generation), (11, g2));
        assert_eq!(cached.state.service("web"), Some(&web));
        assert!(c.store.journal_path().exists());
        // A new service publishing web's port is refused by name, and changes nothing.
        let mut api = ctl::Service::new("api");
        api.ports = web.ports.clone();
        let before = c.state.clone();
        let e = c
            .adopt(Delta::Part(part(api)), 12, live.clone())
            .unwrap_err();
        assert!(e.contains("already in use by service \"web\""), "{e}");
        assert_eq!(c.state, before);
        assert_eq!((c.revision, c.shared.table.load().generation), (11, g2));
        // Then a good change goes through (what the refusal spoiled is made again).
        let mut web2 = web.clone();
        web2.tasks[0].weight = 1;
        // The table before the running one waits for the next patch (the refusal left it).
        assert!(c.spare.as_ref().is_some_and(|(t, _)| t.generation == g));
        let g3 = c.adopt(Delta::Part(part(web2)), 13, live.clone()).unwrap();
        assert_eq!(g3, g2 + 1);
        // Made on it in place; the table it replaced is kept for the next.
        assert!(c
            .spare
            .as_ref()
            .is_some_and(|(t, names)| t.generation == g2 && names.contains("web")));
        assert_eq!((weight("web.1"), weight("web.2")), (Some(1), Some(1)));
        // A change that changed no object (a generation bump) compiles nothing.
        assert_eq!(c.adopt(Delta::Part(Part::default()), 14, live).unwrap(), g3);
        assert_eq!(c.revision, 14);
        // Removing web takes its port away.
        let gone = Part {
            services: [("web".to_string(), None)].into(),
            ..Part::default()
        };
        c.adopt(
            Delta::Part(gone),
            15,
            ["n1", "n2", "n3"].map(String::from).into(),
        )
        .unwrap();
        let t = c.shared.table.load_full();
        assert!(t.published(smoltcp::wire::IpProtocol::Tcp, 8080).is_none());
        assert!(t.service_by_name("web").is_none());
        // A restart reads the file and replays the journal; a last line cut short (a crash
        // while appending) is left out, what came before stands.
        let cached = c.store.load().unwrap().unwrap();
        assert_eq!(cached.revision, 15);
        assert!(cached.state.service("web").is_none());
        let journal = c.store.journal_path();
        let mut text = std::fs::read_to_string(&journal).unwrap();
        text.push_str("{\"revision\":16,\"generation\":");
        std::fs::write(&journal, text).unwrap();
        let cached = c.store.load().unwrap().unwrap();
        assert_eq!(cached.revision, 15);
        // A whole state rewrites the file and empties the journal.
        c.adopt(
            Delta::Full(before),
            17,
            ["n1", "n2", "n3"].map(String::from).into(),
        )
        .unwrap();
        c.cache();
        assert!(!journal.exists());
        assert_eq!(c.store.load().unwrap().unwrap().revision, 17);
    }

    #[test]
    fn health_changes_publish_a_generation_without_persisting() {
        let (mut c, _dir) = controller("gen");
        let t = c.shared.table.load_full();
        assert_eq!(t.generation, 4);
        assert!(t
            .tasks
            .iter()
            .all(|x| x.health == Some(Health::Starting) && !x.eligible));
        let view: HealthView = t.tasks.iter().map(|x| (x.uid, Health::Healthy)).collect();
        assert!(c.set_health(view.clone()));
        assert!(!c.set_health(view), "the same view changes nothing");
        let t = c.shared.table.load_full();
        assert_eq!((t.generation, c.generation), (5, 5));
        // The services whose verdicts changed were compiled again; their old entries stay
        // behind, removed.
        assert!(t.tasks.iter().filter(|x| !x.removed).all(|x| x.eligible));
        assert!(!c.store.path().exists(), "a verdict is not persisted");
        // A desired-state change keeps the verdicts.
        let r = c.handle(&Command::Change(Change::NodeUpdate {
            name: "n1".into(),
            availability: ctl::Availability::Drain,
        }));
        assert!(matches!(r, Response::Ok(_)), "{r:?}");
        let t = c.shared.table.load_full();
        assert_eq!(t.generation, 6);
        assert!(t
            .tasks
            .iter()
            .filter(|x| !x.removed)
            .all(|x| x.health == Some(Health::Healthy)));
    }

    #[test]
    fn service_ps_shows_the_current_state_since_when_and_why() {
        let (mut c, _dir) = controller("ps");
        let rows = ps(&mut c);
        let st = rows[0].status.clone().unwrap();
        assert_eq!(
            (st.state, st.health),
            (CurrentState::Starting, Some(Health::Starting))
        );
        std::thread::sleep(Duration::from_millis(20));
        let t = c.shared.table.load_full();
        let (u1, u2) = (t.tasks[0].uid, t.tasks[1].uid);
        c.set_health(HealthView::from([
            (u1, Health::Healthy),
            (u2, Health::Unhealthy),
        ]));
        if let Some(h) = &c.host {
            h.board.lock().unwrap().insert(
                u2,
                HealthDetail {
                    health: Health::Unhealthy,
                    streak: 3,
                    error: "connection refused".into(),
                    node: "n3".into(),
                },
            );
        }
        let rows = ps(&mut c);
        let (a, b) = (
            rows[0].status.clone().unwrap(),
            rows[1].status.clone().unwrap(),
        );
        assert_eq!((a.state, a.error.as_str()), (CurrentState::Running, ""));
        assert!(a.age_ms < 20, "the state changed just now: {} ms", a.age_ms);
        assert!(a.since_unix_ms > 0);
        assert_eq!(
            (b.state, b.health, b.failing_streak),
            (CurrentState::Failed, Some(Health::Unhealthy), 3)
        );
        assert_eq!(
            b.error,
            "unhealthy: connection refused (3 checks failed in a row)"
        );
        std::thread::sleep(Duration::from_millis(30));
        let again = ps(&mut c)[0].status.clone().unwrap();
        assert!(
            again.age_ms >= 30,
            "the same state ages: {} ms",
            again.age_ms
        );
    }
}
