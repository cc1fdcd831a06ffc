//! The control plane: the Unix control socket, typed commands, the persisted state.
//!
//! Every request that changes state is applied to a copy of the state (`ctl::apply`), compiled
//! and validated into a new service table, persisted (temp file, fsync, rename), published to the
//! workers, and answered only once every worker has picked that generation up. A request that
//! fails any step changes nothing and gets an error that says what is wrong.

use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ctl::proto::{self, Command, ErrorCode, Response};
use ctl::State;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::balance::ServiceTable;
use crate::stats::DropReason;
use crate::worker::Shared;

pub mod store;
pub use store::StateStore;

/// How long a change may wait for the workers to pick it up.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the daemon persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub generation: u64,
    pub state: State,
}

/// The control thread's state: the desired state, its generation, where it is persisted and
/// where tables are published.
#[derive(Debug)]
pub struct Controller {
    pub local: String,
    pub state: State,
    pub generation: u64,
    pub store: StateStore,
    pub shared: Arc<Shared>,
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
        shared.table.store(Arc::new(table));
        Ok(Controller {
            local,
            state: persisted.state,
            generation: persisted.generation,
            store,
            shared,
        })
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
        if cmd.changes_state() {
            return self.change(cmd);
        }
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
        match cmd {
            Command::NetworkLs {} => val(serde_json::to_value(&self.state.networks)),
            Command::NetworkInspect { name } => match self.state.network(name) {
                Some(n) => val(serde_json::to_value(n)),
                None => not_found("network", name),
            },
            Command::NodeLs {} => val(serde_json::to_value(&self.state.nodes)),
            Command::ServiceLs {} => val(serde_json::to_value(&self.state.services)),
            Command::ServiceInspect { name } => match self.state.service(name) {
                Some(s) => val(serde_json::to_value(s)),
                None => not_found("service", name),
            },
            Command::ServicePs { name } => match self.state.service(name) {
                Some(s) => val(serde_json::to_value(&s.tasks)),
                None => not_found("service", name),
            },
            Command::State {} => val(serde_json::to_value(&self.state)),
            Command::Stats {} => Response::ok(g, self.stats()),
            _ => Response::error(
                ErrorCode::Internal,
                format!("command {} is not handled", cmd.name()),
            ),
        }
    }

    fn change(&mut self, cmd: &Command) -> Response {
        let next = match ctl::apply::apply(&self.state, cmd) {
            Ok(Some(s)) => s,
            Ok(None) => return Response::ok(self.generation, Value::Null),
            Err(e) => return Response::Err(e.into()),
        };
        let generation = self.generation + 1;
        let table = match ServiceTable::build(&next, &self.local, generation) {
            Ok(t) => t,
            Err(e) => {
                let code = if e.to_string().contains("already in use") {
                    ErrorCode::Conflict
                } else {
                    ErrorCode::Invalid
                };
                return Response::error(code, e.to_string());
            }
        };
        let persisted = Persisted {
            generation,
            state: next,
        };
        if let Err(e) = self.store.save(&persisted) {
            return Response::error(
                ErrorCode::Internal,
                format!("cannot persist the state, nothing changed: {e}"),
            );
        }
        self.state = persisted.state;
        self.generation = generation;
        let answer = ctl::apply::answer(&self.state, cmd).unwrap_or(Value::Null);
        match self.shared.publish(table, ACK_TIMEOUT) {
            Ok(()) => Response::ok(generation, answer),
            Err(behind) => Response::error(
                ErrorCode::Internal,
                format!("generation {generation} is persisted and published, but workers {behind:?} did not pick it up within {ACK_TIMEOUT:?}"),
            ),
        }
    }

    /// Counters as JSON: totals, per worker, per drop reason, burst latency percentiles.
    pub fn stats(&self) -> Value {
        let (total, each) = self.shared.stats();
        let encode = |s: &crate::stats::WorkerStats| {
            let a = s.to_array();
            let mut m = serde_json::Map::new();
            for (i, name) in crate::stats::WorkerStats::NAMES.iter().enumerate() {
                m.insert((*name).to_string(), json!(a[i]));
            }
            let mut drops = serde_json::Map::new();
            for r in DropReason::ALL {
                let n = s.dropped(r);
                if n > 0 {
                    drops.insert(r.name().to_string(), json!(n));
                }
            }
            m.insert("drops".into(), Value::Object(drops));
            Value::Object(m)
        };
        let mut hist = crate::worker::new_histogram();
        for h in &self.shared.latency {
            if let Ok(h) = h.lock() {
                let _ = hist.add(&*h);
            }
        }
        let table = self.shared.table.load();
        // Per-task packets, bytes and connections, summed over the workers.
        let mut per_uid: std::collections::HashMap<u64, [u64; 3]> =
            std::collections::HashMap::new();
        for w in &self.shared.task_stats {
            for (uid, v) in w.read() {
                let e = per_uid.entry(uid).or_default();
                for (a, b) in e.iter_mut().zip(v) {
                    *a += b;
                }
            }
        }
        let counters = |uid: u64| per_uid.get(&uid).copied().unwrap_or_default();
        let services: Vec<Value> = table
            .services
            .iter()
            .map(|s| {
                let mut sum = [0u64; 3];
                let tasks: Vec<Value> = s
                    .tasks
                    .iter()
                    .map(|&t| {
                        let te = &table.tasks[t as usize];
                        let c = counters(te.uid);
                        for (a, b) in sum.iter_mut().zip(c) {
                            *a += b;
                        }
                        json!({
                            "name": te.name,
                            "node": table.nodes.get(usize::from(te.node)).map(|n| n.name.as_str()).unwrap_or(""),
                            "eligible": te.eligible,
                            "packets": c[0], "bytes": c[1], "connections": c[2],
                        })
                    })
                    .collect();
                json!({
                    "name": s.name,
                    "packets": sum[0], "bytes": sum[1], "connections": sum[2],
                    "eligible": s.tasks.iter().filter(|&&t| table.tasks[t as usize].eligible).count(),
                    "tasks": tasks,
                })
            })
            .collect();
        json!({
            "node": self.local,
            "generation": self.generation,
            "workers": each.iter().map(encode).collect::<Vec<_>>(),
            "total": encode(&total),
            "burst_latency_ns": {
                "count": hist.len(),
                "p50": hist.value_at_quantile(0.5),
                "p99": hist.value_at_quantile(0.99),
                "p999": hist.value_at_quantile(0.999),
                "max": hist.max(),
            },
            "services": services,
        })
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
    pub fn serve(listener: UnixListener, ctl: Arc<Mutex<Controller>>, shared: Arc<Shared>) {
        let _ = listener.set_nonblocking(true);
        while !shared.stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let ctl = ctl.clone();
                    let _ = std::thread::Builder::new()
                        .name("meshd-conn".into())
                        .spawn(move || serve_conn(stream, ctl));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_conn(stream: UnixStream, ctl: Arc<Mutex<Controller>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    loop {
        let resp = match proto::read_line(&mut r, proto::MAX_REQUEST_BYTES) {
            Ok(None) => return,
            Ok(Some(line)) => match ctl.lock() {
                Ok(mut c) => c.handle_line(&line),
                Err(_) => Response::error(
                    ErrorCode::Internal,
                    "the control state is poisoned; restart meshd",
                ),
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
            Err(proto::FrameError::Io(_)) => return,
        };
        if w.write_all(resp.to_line().as_bytes()).is_err() {
            return;
        }
    }
}
