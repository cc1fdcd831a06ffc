//! End-to-end: cluster mode. Three meshd nodes follow a real etcd (Debian's, started by the
//! testbed on a management network) and meshctl changes etcd: every change is confirmed by every
//! node (`verify: ... on 3/3 nodes (revision R)`); concurrent writers lose nothing; a node whose
//! lease lapses (SIGSTOP) is Down and its tasks leave rotation on the others, and it catches up
//! when it is back, also across a compaction of the history it missed; a meshd killed during its
//! watch, or restarted while etcd is away, serves its last state at once; with etcd gone every
//! node keeps serving and meshctl says it cannot reach etcd; a 3-member etcd loses one member
//! without notice and, losing quorum, leaves meshctl saying it cannot write.
//!
//! Run as root from the workspace root: `sudo cargo test -p testbed --test cluster`
//! (scripts/deps.sh --bench installs etcd).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Mesh;
use ctl::model::PublishMode;
use testbed::{probe, RunSpec};

fn mesh(tag: &str, members: usize) -> Option<Mesh> {
    common::mesh_with("k", "cluster", tag, members, || {
        let missing = testbed::preflight::missing();
        assert!(missing.is_empty(), "missing programs: {missing:?}");
        assert!(
            testbed::preflight::on_path("etcd") && testbed::preflight::on_path("etcdctl"),
            "etcd is not installed: scripts/deps.sh --bench installs it (etcd-server, etcd-client)"
        );
    })
}

/// `meshctl --format json node ls`: status and revision by node name.
fn nodes(m: &Mesh) -> BTreeMap<String, (String, Option<i64>)> {
    try_nodes(m).unwrap()
}

fn try_nodes(m: &Mesh) -> Result<BTreeMap<String, (String, Option<i64>)>, String> {
    let out = m
        .meshctl(&["--format", "json", "node", "ls"])
        .map_err(|e| e.to_string())?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                (
                    r["status"].as_str().unwrap().to_string(),
                    r["revision"].as_i64(),
                ),
            )
        })
        .collect())
}

/// Waits until `pred` holds of `node ls`, or panics after `within` naming what it saw.
fn wait_nodes(
    m: &Mesh,
    within: Duration,
    what: &str,
    pred: impl Fn(&BTreeMap<String, (String, Option<i64>)>) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        // etcd coming back may not answer yet.
        let n = try_nodes(m);
        if n.as_ref().is_ok_and(&pred) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}: {n:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The revision etcd is at.
fn etcd_revision(m: &Mesh) -> i64 {
    let out = m
        .etcdctl(&["get", "/meshd/v1/generation", "-w", "json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

/// Which task answers `rounds` curls to node `node`'s port 8080 (`fail` for no answer).
fn answers(m: &Mesh, node: &str, rounds: usize) -> Vec<String> {
    let c = m.client_ns();
    let url = format!("http://{}:8080/", m.node(node).unwrap().addr);
    (0..rounds)
        .map(|_| {
            let r = probe::curl(&c, &url, Duration::from_secs(2), &[]).unwrap();
            r.whoami()
                .map(|w| w.hostname)
                .unwrap_or_else(|| format!("fail({})", r.code))
        })
        .collect()
}

fn web(m: &mut Mesh) {
    m.run(
        &RunSpec::new("web", 2)
            .publish("8080:80", PublishMode::Ingress)
            .unwrap()
            .on("n1")
            .on("n2"),
    )
    .unwrap();
}

#[test]
fn changes_converge_on_every_node_and_a_node_whose_lease_lapses_leaves_rotation() {
    let Some(mut m) = mesh("a", 1) else { return };
    web(&mut m);
    // Every node registered, runs the same revision; a change is confirmed by all three.
    let out = m
        .meshctl(&["service", "update", "--publish-add", "8081:80", "web"])
        .unwrap();
    assert!(
        out.contains("verify: Service converged on 3/3 nodes (revision "),
        "{out}"
    );
    let n = nodes(&m);
    assert!(n.values().all(|(s, _)| s == "ready"), "{n:?}");
    // Two operators at once, five changes each: none is lost.
    std::thread::scope(|s| {
        for k in 0..2 {
            let m = &m;
            s.spawn(move || {
                for j in 0..5 {
                    let port = format!("{}:80", 9000 + k * 10 + j);
                    m.meshctl(&[
                        "--detach",
                        "service",
                        "update",
                        "--publish-add",
                        &port,
                        "web",
                    ])
                    .unwrap();
                }
            });
        }
    });
    // Read from etcd, the truth the writers share: a node's socket may still be one detached
    // change behind.
    let out = m
        .meshctl(&["--format", "json", "service", "inspect", "web"])
        .unwrap();
    let svc: Vec<ctl::model::Service> = serde_json::from_str(&out).unwrap();
    assert_eq!(svc[0].ports.len(), 2 + 10, "{:?}", svc[0].ports);
    // Round-robin through every node over web.1 (n1) and web.2 (n2).
    for node in ["n1", "n3"] {
        let a = answers(&m, node, 4);
        assert!(
            a.contains(&"web.1".into()) && a.contains(&"web.2".into()),
            "{node}: {a:?}"
        );
    }
    // A value written by hand that does not parse: skipped and named, the rest applies.
    m.etcdctl(&["put", "/meshd/v1/services/broken", "{nope"])
        .unwrap();
    let out = m
        .meshctl(&["service", "update", "--publish-rm", "8081", "web"])
        .unwrap();
    assert!(out.contains("on 3/3 nodes"), "{out}");
    let log = std::fs::read_to_string(m.plan.node_log(1)).unwrap();
    assert!(
        log.contains("skipped /meshd/v1/services/broken: the value does not parse"),
        "{log}"
    );
    m.etcdctl(&["del", "/meshd/v1/services/broken"]).unwrap();

    // n2's meshd stops answering etcd (SIGSTOP): after its lease (4 s) it is Down, and the
    // other nodes send new connections to web.1 only.
    m.freeze_meshd("n2", true).unwrap();
    wait_nodes(&m, Duration::from_secs(10), "n2 Down", |n| {
        n["n2"].0 == "down"
    });
    for node in ["n1", "n3"] {
        let a = answers(&m, node, 6);
        assert!(a.iter().all(|x| x == "web.1"), "{node} with n2 down: {a:?}");
    }
    // A change now cannot converge: meshctl says which node and fails.
    let e = m
        .meshctl(&[
            "--timeout",
            "3",
            "service",
            "update",
            "--publish-add",
            "8082:80",
            "web",
        ])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("runs on 2/3 nodes") && e.contains("n2 is down"),
        "{e}"
    );
    // Back: n2 registers again, catches up, and takes its share again.
    m.freeze_meshd("n2", false).unwrap();
    let target = etcd_revision(&m);
    wait_nodes(
        &m,
        Duration::from_secs(15),
        "all ready at the last change",
        |n| {
            n.values()
                .all(|(s, r)| s == "ready" && r.is_some_and(|r| r >= target - 4))
        },
    );
    // A node's return is applied with the others' that come within half a second (a fleet
    // restarting registers together), so it takes connections again within a second.
    let deadline = Instant::now() + Duration::from_secs(2);
    let a = loop {
        let a = answers(&m, "n3", 4);
        if a.contains(&"web.2".into()) || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(a.contains(&"web.2".into()), "n2 back: {a:?}");
    assert_eq!(m.service("web").unwrap().ports.len(), 2 + 10);
}

#[test]
fn a_node_cut_off_catches_up_past_a_compaction_and_restarts_serve_without_etcd() {
    let Some(mut m) = mesh("b", 1) else { return };
    web(&mut m);
    // n3 cut off from etcd (its management link down) until its lease lapses, while web loses
    // web.2 and etcd compacts the history n3 missed; n3 keeps serving what it had meanwhile.
    m.cut_off("n3", true).unwrap();
    wait_nodes(&m, Duration::from_secs(10), "n3 Down", |n| {
        n["n3"].0 == "down"
    });
    let a = answers(&m, "n3", 4);
    assert!(
        a.contains(&"web.1".into()) && a.contains(&"web.2".into()),
        "n3 cut off keeps serving its last table: {a:?}"
    );
    m.meshctl(&["--detach", "service", "scale", "web=1"])
        .unwrap();
    let at = etcd_revision(&m);
    m.etcdctl(&["compact", &at.to_string()]).unwrap();
    m.cut_off("n3", false).unwrap();
    let sock = m.node("n3").unwrap().socket.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let svc: ctl::model::Service = {
            let out = std::process::Command::new(&m.tools.meshctl)
                .args([
                    "--socket", &sock, "--format", "json", "service", "inspect", "web",
                ])
                .env_remove("MESHCTL_CLUSTER")
                .output()
                .unwrap();
            let v: Vec<ctl::model::Service> = serde_json::from_slice(&out.stdout).unwrap();
            v.into_iter().next().unwrap()
        };
        if svc.tasks.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "n3 did not catch up: {svc:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(m.plan.node_log(3)).unwrap();
    assert!(
        log.contains("compacted"),
        "n3 read the whole state again: {log}"
    );
    let a = answers(&m, "n3", 4);
    assert!(
        a.iter().all(|x| x == "web.1"),
        "n3 after catching up: {a:?}"
    );

    // kill -9 of a meshd during its watch, and a restart: it serves and follows again.
    m.kill_meshd("n1").unwrap();
    m.restart_meshd("n1").unwrap();
    m.meshctl(&["service", "scale", "web=1"]).unwrap();
    let a = answers(&m, "n1", 2);
    assert!(a.iter().all(|x| x == "web.1"), "n1 restarted: {a:?}");

    // etcd gone: every node keeps serving; meshctl says it cannot reach etcd.
    m.kill_etcd_member(1).unwrap();
    for node in ["n1", "n2", "n3"] {
        let a = answers(&m, node, 2);
        assert!(a.iter().all(|x| x == "web.1"), "{node} without etcd: {a:?}");
    }
    let e = m.meshctl(&["service", "ls"]).unwrap_err().to_string();
    assert!(e.contains("cannot reach etcd"), "{e}");
    // A meshd restarted while etcd is away serves its cached state at once.
    m.kill_meshd("n2").unwrap();
    let t = Instant::now();
    m.restart_meshd("n2").unwrap();
    let a = answers(&m, "n2", 2);
    assert!(
        a.iter().all(|x| x == "web.1"),
        "n2 restarted without etcd: {a:?}"
    );
    eprintln!("n2 restarted without etcd and served in {:?}", t.elapsed());
    // etcd back: every node registers again.
    m.start_etcd_member(1).unwrap();
    wait_nodes(
        &m,
        Duration::from_secs(30),
        "all ready after etcd is back",
        |n| n.values().all(|(s, r)| s == "ready" && r.is_some()),
    );
    let out = m.meshctl(&["service", "scale", "web=1"]).unwrap();
    assert!(out.contains("on 3/3 nodes"), "{out}");
}

#[test]
fn three_etcd_members_lose_one_unnoticed_and_without_quorum_meshctl_cannot_write() {
    let Some(mut m) = mesh("c", 3) else { return };
    web(&mut m);
    m.kill_etcd_member(3).unwrap();
    let out = m
        .meshctl(&["service", "update", "--publish-add", "8081:80", "web"])
        .unwrap();
    assert!(
        out.contains("verify: Service converged on 3/3 nodes"),
        "{out}"
    );
    m.kill_etcd_member(2).unwrap();
    let e = m
        .meshctl(&[
            "--timeout",
            "5",
            "service",
            "update",
            "--publish-rm",
            "8081",
            "web",
        ])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("etcd cannot write now") || e.contains("cannot reach etcd"),
        "{e}"
    );
    // The data plane does not care.
    for node in ["n1", "n2", "n3"] {
        let a = answers(&m, node, 4);
        assert!(
            a.contains(&"web.1".into()) && a.contains(&"web.2".into()),
            "{node} without quorum: {a:?}"
        );
    }
}
