//! `meshctl --cluster`: reads and changes the cluster's state in etcd, and waits for every node
//! to run a change (the status each meshd keeps under its lease).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ctl::cluster::etcd::{self, Etcd, Tls};
use ctl::cluster::{Member, Status};
use ctl::model::{Node, State};
use ctl::proto::{Command, Query, Success};
use serde::Serialize;
use serde_json::{json, Value};

use super::{out, print_json, render, CliError, Format, Report};

/// A connection to the cluster's etcd.
pub(super) struct Cluster {
    etcd: Mutex<Etcd>,
    /// `--cluster` as given (for messages).
    pub spec: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("spec", &self.spec).finish()
    }
}

fn err(e: etcd::ClusterError) -> CliError {
    CliError::Msg(e.to_string())
}

impl Cluster {
    pub(super) fn connect(spec: &str, tls: &Tls, timeout: Duration) -> Result<Cluster, CliError> {
        let endpoints = etcd::endpoints(spec, tls).map_err(err)?;
        let e = Etcd::connect_tls(&endpoints, tls, timeout).map_err(err)?;
        Ok(Cluster {
            etcd: Mutex::new(e),
            spec: spec.to_string(),
        })
    }

    fn etcd(&self) -> MutexGuard<'_, Etcd> {
        self.etcd
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn load(&self) -> Result<etcd::Snapshot, CliError> {
        let snap = self.etcd().load().map_err(err)?;
        for e in &snap.skipped {
            eprintln!("Warning: skipped {e}");
        }
        Ok(snap)
    }

    /// The desired state as etcd has it (network keys redacted in answers by `answer`).
    pub(super) fn states(&self) -> Result<Vec<State>, CliError> {
        Ok(vec![self.load()?.state])
    }

    /// Answers a query from etcd's state, as a daemon would from its own.
    pub(super) fn read(&self, cmd: &Command) -> Result<Success, CliError> {
        if let Command::Query(Query::Stats {}) = cmd {
            return Err(CliError::Msg(format!(
                "stats counts one node's packets: ask that node's meshd over its socket (meshctl --socket PATH stats, without --cluster {})",
                self.spec
            )));
        }
        let snap = self.load()?;
        let result =
            ctl::apply::answer(&snap.state, cmd).map_err(|e| CliError::Msg(e.to_string()))?;
        Ok(Success {
            generation: snap.generation,
            result,
        })
    }

    /// `node ls`: every node of the state with its meshd's lease and applied revision.
    pub(super) fn node_ls(&self, format: Format) -> Result<(), CliError> {
        let snap = self.load()?;
        let rows: Vec<NodeRow> = snap
            .state
            .nodes
            .iter()
            .map(|n| NodeRow::of(n, &snap.members, &snap.status))
            .collect();
        match format {
            Format::Json => print_json(&rows),
            Format::Table => out(&render::node_ls_cluster(&rows)),
        }
    }

    /// Makes a change in one guarded transaction, then waits (unless `detach`) until every node
    /// of the new state runs it, with a progress line while it waits.
    pub(super) fn change(
        &self,
        cmd: &Command,
        report: &Report,
        format: Format,
        timeout: Duration,
        detach: bool,
    ) -> Result<(), CliError> {
        let Command::Change(change) = cmd else {
            return Err(CliError::Msg("not a change".into()));
        };
        let snap = self.etcd().change(change).map_err(err)?;
        let answer = ctl::apply::answer_change(&snap.state, change).unwrap_or(Value::Null);
        let expected: Vec<String> = snap.state.nodes.iter().map(|n| n.name.clone()).collect();
        let revision = snap.revision;
        if format == Format::Table {
            let mut text = format!("{}\n", report.header);
            if report.progress {
                if let Ok(svc) = serde_json::from_value::<ctl::Service>(answer.clone()) {
                    text.push_str(&render::progress(&svc));
                }
            }
            out(&text)?;
        }
        let verdict = if detach {
            None
        } else {
            Some(self.converge(&expected, revision, timeout, format == Format::Table)?)
        };
        match format {
            Format::Json => {
                let mut v = json!({"ok": true, "revision": revision, "generation": snap.generation, "result": answer});
                if let (Some(c), Value::Object(o)) = (&verdict, &mut v) {
                    o.insert("converged".into(), json!(c.ran));
                    o.insert("behind".into(), json!(c.behind));
                }
                print_json(&v)?;
            }
            Format::Table => match &verdict {
                None => out(&format!(
                    "verify: detached: written at revision {revision}; `meshctl node ls` shows each node's revision\n"
                ))?,
                Some(c) if c.behind.is_empty() => out(&format!(
                    "verify: {} on {}/{} nodes (revision {revision})\n",
                    report.verify,
                    c.ran.len(),
                    expected.len()
                ))?,
                Some(_) => {}
            },
        }
        match verdict {
            Some(c) if !c.behind.is_empty() => {
                eprintln!(
                    "Error: revision {revision} is written to etcd, but runs on {}/{} nodes after {}: {}",
                    c.ran.len(),
                    expected.len(),
                    render::human_duration(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
                    c.behind.join("; ")
                );
                Err(CliError::Reported)
            }
            _ => Ok(()),
        }
    }

    /// Waits until every node of `expected` runs `revision`, or `timeout`, or a node refuses it.
    fn converge(
        &self,
        expected: &[String],
        revision: i64,
        timeout: Duration,
        show: bool,
    ) -> Result<Convergence, CliError> {
        let start = Instant::now();
        let tty = show && std::io::stderr().is_terminal();
        let mut last_line = Instant::now();
        let mut last_text = String::new();
        loop {
            let (members, status) = self.etcd().liveness().map_err(err)?;
            let mut c = Convergence::default();
            let mut refused = false;
            for n in expected {
                let s = status.get(n);
                match (members.contains_key(n), s) {
                    (_, Some(s)) if s.revision >= revision => c.ran.push(n.clone()),
                    (_, Some(Status { error: Some(r), .. })) if r.revision >= revision => {
                        refused = true;
                        c.behind.push(format!("{n} refused it: {}", r.message));
                    }
                    (false, _) => c
                        .behind
                        .push(format!("{n} is down (no meshd holds its lease)")),
                    (true, Some(s)) => c
                        .behind
                        .push(format!("{n} is behind (runs revision {})", s.revision)),
                    (true, None) => c.behind.push(format!("{n} has not said what it runs yet")),
                }
            }
            if c.behind.is_empty() || refused || start.elapsed() >= timeout {
                if tty {
                    eprint!("\r\x1b[K");
                }
                return Ok(c);
            }
            let line = format!(
                "waiting: {}/{} nodes run revision {revision} ({})",
                c.ran.len(),
                expected.len(),
                c.behind.join("; ")
            );
            // A terminal's line is redrawn; a log gets a line when it changes, or every 5 s.
            let due = if tty {
                last_line.elapsed() >= Duration::from_millis(500)
            } else {
                line != last_text || last_line.elapsed() >= Duration::from_secs(5)
            };
            if show && start.elapsed() >= Duration::from_millis(500) && due {
                last_line = Instant::now();
                if tty {
                    eprint!("\r\x1b[K{line}");
                } else {
                    eprintln!("{line}");
                }
                last_text = line;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[derive(Debug, Default)]
struct Convergence {
    ran: Vec<String>,
    behind: Vec<String>,
}

/// A row of `node ls` in cluster mode.
#[derive(Debug, Clone, Serialize)]
pub(super) struct NodeRow {
    #[serde(flatten)]
    pub node: Node,
    /// `ready` while its meshd holds its lease, else `down`.
    pub status: &'static str,
    /// The revision it runs, as it last said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// A revision it refused, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NodeRow {
    fn of(n: &Node, members: &BTreeMap<String, Member>, status: &BTreeMap<String, Status>) -> Self {
        let m = members.get(&n.name);
        let s = status.get(&n.name);
        NodeRow {
            node: n.clone(),
            status: if m.is_some() { "ready" } else { "down" },
            revision: s.map(|s| s.revision),
            version: m.map(|m| m.version.clone()),
            workers: m.map(|m| m.workers),
            error: s
                .and_then(|s| s.error.as_ref())
                .map(|r| format!("revision {}: {}", r.revision, r.message)),
        }
    }
}
