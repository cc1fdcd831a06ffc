//! meshctl against a fake meshd: a thread on a temporary Unix socket that records each request
//! line and answers with a canned response chosen by the request's command.

// Test helpers outside `#[test]` functions: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use ctl::model::*;
use ctl::proto::{ErrorCode, Response};
use serde_json::{json, Value};

struct FakeDaemon {
    path: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeDaemon {
    /// Answers a request whose command is `answers[i].0` with `answers[i].1`.
    fn start(answers: Vec<(&'static str, Response)>) -> FakeDaemon {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "meshctl-it-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    seen.lock().unwrap().push(line.trim_end().to_string());
                    let req: Value = serde_json::from_str(&line).unwrap();
                    let cmd = req["command"].as_str().unwrap_or_default().to_string();
                    let resp = answers
                        .iter()
                        .find(|(c, _)| *c == cmd)
                        .map(|(_, r)| r.clone())
                        .unwrap_or_else(|| {
                            Response::error(
                                ErrorCode::BadRequest,
                                format!("fake: no answer for {cmd}"),
                            )
                        });
                    r.get_mut().write_all(resp.to_line().as_bytes()).unwrap();
                    line.clear();
                }
            }
        });
        FakeDaemon { path, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env_remove("MESHCTL_SOCKET")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn task(name: &str, node: &str, last: u8) -> Task {
    Task {
        name: name.into(),
        node: node.into(),
        addresses: vec![
            TaskAddress {
                network: "ingress".into(),
                addr: Ipv4Addr::new(10, 0, 0, last),
            },
            TaskAddress {
                network: "appnet".into(),
                addr: Ipv4Addr::new(10, 0, 1, last),
            },
        ],
        state: TaskState::Running,
        weight: 1,
        vlan: None,
    }
}

// Casts: test values are small and known.
#[allow(clippy::cast_possible_truncation)]
fn web(tasks: usize) -> Service {
    let mut s = Service::new("web");
    s.networks.push(ServiceNetwork {
        network: "appnet".into(),
        vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
    });
    s.ports.push(PublishedPort {
        protocol: Protocol::Tcp,
        published: 8080,
        target: 80,
        mode: PublishMode::Ingress,
    });
    s.tasks = (1..=tasks)
        .map(|i| {
            task(
                &format!("web.{i}"),
                if i % 2 == 1 { "n1" } else { "n2" },
                10 + i as u8,
            )
        })
        .collect();
    s
}

fn appnet() -> Network {
    Network {
        subnet6: None,
        name: "appnet".into(),
        vni: 4097,
        subnet: "10.0.1.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 0, 1, 1),
        ingress: false,
        endpoints: BTreeMap::new(),
        mtu: None,
        encryption: None,
    }
}

fn ok(generation: u64, v: impl serde::Serialize) -> Response {
    Response::ok(generation, serde_json::to_value(v).unwrap())
}

const BAR: &str = "[==================================================>]";

#[test]
fn scale_sends_one_request_and_prints_docker_progress() {
    let d = FakeDaemon::start(vec![("service-scale", ok(7, web(2)))]);
    let o = meshctl(&["--socket", &d.arg(), "service", "scale", "web=2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        d.requests(),
        [r#"{"version":1,"command":"service-scale","name":"web","replicas":2}"#]
    );
    assert_eq!(
        stdout(&o),
        format!(
            "web scaled to 2\noverall progress: 2 out of 2 tasks\n1/2: running   {BAR}\n2/2: running   {BAR}\n\
             verify: Service converged (generation 7)\n"
        )
    );
    assert_eq!(stderr(&o), "");
}

#[test]
fn service_ls_and_ps_print_tables_or_raw_json() {
    let d = FakeDaemon::start(vec![
        ("service-ls", ok(3, vec![web(2)])),
        ("service-ps", ok(3, web(2).tasks)),
        ("network-ls", ok(3, vec![appnet()])),
    ]);
    let o = meshctl(&["--socket", &d.arg(), "service", "ls"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "NAME   MODE   TASKS   PORTS\nweb    vip    2/2     *:8080->80/tcp\n"
    );

    let o = meshctl(&["--socket", &d.arg(), "service", "ps", "web"]);
    assert_eq!(
        stdout(&o),
        "NAME    NODE   DESIRED STATE   CURRENT STATE   ADDRESSES                            WEIGHT   ERROR\n\
         web.1   n1     Running         Running         ingress:10.0.0.11,appnet:10.0.1.11   1\n\
         web.2   n2     Running         Running         ingress:10.0.0.12,appnet:10.0.1.12   1\n"
    );

    let o = meshctl(&["--socket", &d.arg(), "--format", "json", "service", "ls"]);
    let v: Vec<Service> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v, vec![web(2)]);
    assert_eq!(
        d.requests(),
        [
            r#"{"version":1,"command":"service-ls"}"#,
            r#"{"version":1,"command":"service-ps","name":"web"}"#,
            r#"{"version":1,"command":"network-ls"}"#,
            r#"{"version":1,"command":"service-ls"}"#
        ]
    );
}

#[test]
fn service_inspect_shows_dockers_endpoint() {
    let d = FakeDaemon::start(vec![
        ("service-inspect", ok(4, web(1))),
        ("network-ls", ok(4, vec![appnet()])),
    ]);
    let o = meshctl(&["--socket", &d.arg(), "service", "inspect", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v[0]["Endpoint"]["Ports"],
        json!([{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}])
    );
    assert_eq!(
        v[0]["Endpoint"]["VirtualIPs"],
        json!([{"NetworkID": "appnet", "Addr": "10.0.1.2/24"}])
    );
    // Docker's field order, as the seed's `{{json .Endpoint.Spec.Ports}}` shows it.
    assert!(
        stdout(&o).contains("\"Protocol\": \"tcp\",\n          \"TargetPort\": 80,"),
        "{}",
        stdout(&o)
    );
}

/// appnet, dual-stack: fd00:1::/64 beside 10.0.1.0/24.
fn appnet6() -> Network {
    Network {
        subnet6: Some("fd00:1::/64".parse().unwrap()),
        ..appnet()
    }
}

#[test]
fn network_create_takes_dockers_ipv6_syntax() {
    let d = FakeDaemon::start(vec![
        ("state", ok(1, State::default())),
        ("network-create", ok(2, json!({}))),
    ]);
    let o = meshctl(&[
        "--socket",
        &d.arg(),
        "network",
        "create",
        "appnet",
        "--subnet",
        "10.0.1.0/24",
        "--ipv6",
        "--subnet",
        "fd00:1::/64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reqs = d.requests();
    let create: Value = serde_json::from_str(reqs.last().unwrap()).unwrap();
    assert_eq!(create["command"], "network-create");
    assert_eq!(create["network"]["subnet"], "10.0.1.0/24");
    assert_eq!(create["network"]["subnet6"], "fd00:1::/64");
    assert_eq!(create["network"]["gateway"], "10.0.1.1");

    // Without --ipv6, the request has no subnet6 at all (as before).
    let d = FakeDaemon::start(vec![
        ("state", ok(1, State::default())),
        ("network-create", ok(2, json!({}))),
    ]);
    let o = meshctl(&[
        "--socket",
        &d.arg(),
        "network",
        "create",
        "appnet",
        "--subnet",
        "10.0.1.0/24",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let create: Value = serde_json::from_str(d.requests().last().unwrap()).unwrap();
    assert!(create["network"].get("subnet6").is_none(), "{create}");

    // Refusals come before any request.
    for (args, msg) in [
        (
            &["--subnet", "10.0.1.0/24", "--ipv6"][..],
            "Error: --ipv6 needs an IPv6 subnet beside the IPv4 one (meshd does not pick one): \
             give it with a second --subnet, as in --subnet 10.0.5.0/24 --ipv6 --subnet fd00:5::/64\n",
        ),
        (
            &["--subnet", "10.0.1.0/24", "--subnet", "fd00:1::/64"][..],
            "Error: --subnet fd00:1::/64 is IPv6: add --ipv6 to make the network dual-stack, \
             as in --subnet 10.0.5.0/24 --ipv6 --subnet fd00:5::/64\n",
        ),
        (
            &["--subnet", "10.0.1.0/24", "--subnet", "10.0.2.0/24"][..],
            "Error: --subnet: 10.0.1.0/24 and 10.0.2.0/24 are both IPv4; a network has one \
             subnet per family (as in --subnet 10.0.5.0/24 --ipv6 --subnet fd00:5::/64)\n",
        ),
        (
            &["--ipv6", "--subnet", "10.0.1.0/24", "--subnet", "fd00:1::/112"][..],
            "Error: --subnet: fd00:1::/112: an overlay's IPv6 prefix is at most /96 (the last \
             32 bits hold each task's IPv4 address)\n",
        ),
        // Host bits set: Docker's words (v25 on), either family.
        (
            &["--subnet", "10.0.1.0/24", "--ipv6", "--subnet", "fd00:5::1/64"][..],
            "Error: --subnet: invalid subnet fd00:5::1/64: it should be fd00:5::/64\n",
        ),
        (
            &["--subnet", "10.0.1.5/24"][..],
            "Error: --subnet: invalid subnet 10.0.1.5/24: it should be 10.0.1.0/24\n",
        ),
    ] {
        let mut v = vec![
            "--socket",
            "/nonexistent/meshd.sock",
            "network",
            "create",
            "x",
        ];
        v.extend_from_slice(args);
        let o = meshctl(&v);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&o), msg, "{args:?}");
    }

    let o = meshctl(&["network", "create", "--help"]);
    assert!(
        stdout(&o).contains("--subnet 10.0.5.0/24 --ipv6 --subnet fd00:5::/64"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn network_inspect_adds_dockers_ipam_for_people_and_keeps_meshds_json() {
    let d = FakeDaemon::start(vec![
        ("network-inspect", ok(4, appnet6())),
        ("network-ls", ok(4, vec![appnet6()])),
    ]);
    let o = meshctl(&["--socket", &d.arg(), "network", "inspect", "appnet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    // meshd's fields stay (scripts read vni, mtu, subnet).
    assert_eq!(v[0]["vni"], 4097);
    assert_eq!(v[0]["subnet"], "10.0.1.0/24");
    assert_eq!(v[0]["subnet6"], "fd00:1::/64");
    assert_eq!(v[0]["EnableIPv6"], true);
    assert_eq!(
        v[0]["IPAM"]["Config"],
        json!([
            {"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"},
            {"Subnet": "fd00:1::/64", "Gateway": "fd00:1::a00:101"},
        ])
    );

    let o = meshctl(&[
        "--socket",
        &d.arg(),
        "--format",
        "json",
        "network",
        "inspect",
        "appnet",
    ]);
    let v: Vec<Network> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v, [appnet6()]);

    let o = meshctl(&["--socket", &d.arg(), "network", "ls"]);
    assert_eq!(
        stdout(&o),
        "NAME     VNI    SUBNET                     GATEWAY                     KIND      ENDPOINTS\n\
         appnet   4097   10.0.1.0/24, fd00:1::/64   10.0.1.1, fd00:1::a00:101   overlay\n"
    );
}

#[test]
fn service_inspect_and_ps_show_ipv6_twins_on_a_dual_stack_network() {
    let d = FakeDaemon::start(vec![
        ("service-inspect", ok(4, web(1))),
        ("service-ps", ok(4, web(1).tasks)),
        ("network-ls", ok(4, vec![appnet6()])),
    ]);
    let o = meshctl(&["--socket", &d.arg(), "service", "inspect", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v[0]["Endpoint"]["VirtualIPs"],
        json!([
            {"NetworkID": "appnet", "Addr": "10.0.1.2/24"},
            {"NetworkID": "appnet", "Addr": "fd00:1::a00:102/64"},
        ])
    );
    let o = meshctl(&["--socket", &d.arg(), "service", "ps", "web"]);
    assert!(
        stdout(&o).contains("ingress:10.0.0.11,appnet:10.0.1.11,appnet:fd00:1::a00:10b"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_refused_change_exits_non_zero_with_the_daemons_message() {
    let d = FakeDaemon::start(vec![(
        "service-update",
        Response::error(
            ErrorCode::NotFound,
            "published port 9090/tcp is not published by service \"web\"",
        ),
    )]);
    let o = meshctl(&[
        "--socket",
        &d.arg(),
        "service",
        "update",
        "--publish-rm",
        "9090",
        "web",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert_eq!(
        stderr(&o),
        "Error: published port 9090/tcp is not published by service \"web\"\n"
    );
    assert_eq!(
        d.requests(),
        [
            r#"{"version":1,"command":"service-update","name":"web","update":{"publish_rm":[{"published":9090,"protocol":"tcp"}]}}"#
        ]
    );
}

#[test]
fn a_change_goes_to_every_socket_and_is_reported_per_node() {
    let a = FakeDaemon::start(vec![("node-update", ok(5, json!({})))]);
    let b = FakeDaemon::start(vec![(
        "node-update",
        Response::error(ErrorCode::NotFound, "node \"n2\" not found"),
    )]);
    let c = FakeDaemon::start(vec![("node-update", ok(9, json!({})))]);
    let sockets = format!("{},{}", a.arg(), b.arg());
    let o = meshctl(&[
        "--socket",
        &sockets,
        "--socket",
        &c.arg(),
        "node",
        "update",
        "--availability",
        "drain",
        "n2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let line = r#"{"version":1,"command":"node-update","name":"n2","availability":"drain"}"#;
    for d in [&a, &b, &c] {
        assert_eq!(d.requests(), [line]);
    }
    assert_eq!(
        stdout(&o),
        format!(
            "n2\nverify: Node updated on {} (generation 5)\nverify: Node updated on {} (generation 9)\n",
            a.arg(),
            c.arg()
        )
    );
    assert_eq!(
        stderr(&o),
        format!("Error: {}: node \"n2\" not found\n", b.arg())
    );
}

#[test]
fn service_create_picks_a_free_vip() {
    let mut state = State::default();
    state.networks.push(appnet());
    let mut other = Service::new("api");
    other.networks.push(ServiceNetwork {
        network: "appnet".into(),
        vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
    });
    state.services.push(other);
    let d = FakeDaemon::start(vec![
        ("state", ok(2, &state)),
        ("service-create", ok(3, web(1))),
    ]);
    let o = meshctl(&[
        "--socket",
        &d.arg(),
        "service",
        "create",
        "--name",
        "web",
        "--publish",
        "published=8080,target=80",
        "--network",
        "appnet",
        "--task",
        "name=web.1,node=n1,addr=ingress:10.0.0.11,addr=appnet:10.0.1.3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reqs = d.requests();
    assert_eq!(reqs[0], r#"{"version":1,"command":"state"}"#);
    let create: Value = serde_json::from_str(&reqs[1]).unwrap();
    assert_eq!(create["command"], "service-create");
    // .1 is the gateway, .2 api's VIP, .3 the task's address.
    assert_eq!(
        create["service"]["networks"],
        json!([{"network": "appnet", "vip": "10.0.1.4"}])
    );
    assert_eq!(
        create["service"]["ports"],
        json!([{"protocol": "tcp", "published": 8080, "target": 80, "mode": "ingress"}])
    );
    assert_eq!(create["service"]["tasks"][0]["name"], "web.1");
    assert_eq!(
        stdout(&o),
        format!("web\noverall progress: 1 out of 1 tasks\n1/1: running   {BAR}\nverify: Service converged (generation 3)\n")
    );
}

#[test]
fn errors_before_any_request_say_what_to_fix() {
    let o = meshctl(&["--socket", "/nonexistent/meshd.sock", "service", "ls"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error: cannot reach meshd at /nonexistent/meshd.sock: No such file or directory \
         (is meshd running? --socket / MESHCTL_SOCKET picks the daemon)\n"
    );

    let o = meshctl(&[
        "--socket",
        "/nonexistent/meshd.sock",
        "service",
        "create",
        "--name",
        "web",
        "--publish",
        "published=8080,foo=1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error: --publish: unknown key 'foo' (expected published, target, protocol, mode)\n"
    );

    let o = meshctl(&["service", "scale"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with("Error: the following required arguments were not provided"),
        "{}",
        stderr(&o)
    );

    let o = meshctl(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("Examples:"));
}
