//! `testbed demo`: the seed articles' walk through Swarm's routing mesh, on meshd, printed as a
//! person at the terminal would see it.

use std::time::Duration;

use ctl::model::{Availability, PublishMode};

use crate::bed::{Bed, RunSpec};
use crate::error::Result;
use crate::probe;

const CURL_TIME: Duration = Duration::from_secs(3);

fn section(n: u32, title: &str, seed: &str) {
    println!("\n=== {n}. {title}  ({seed})\n");
}

fn note(text: &str) {
    for l in text.lines() {
        println!("# {l}");
    }
}

fn shell(ns: &str, cmd: &str) {
    println!("[{ns}]$ {cmd}");
}

/// curl from the outside client to every node's `port`, `rounds` times, one line per answer.
fn curl_nodes(bed: &Bed, port: u16, rounds: usize) -> Result<()> {
    let c = bed.client_ns();
    for _ in 0..rounds {
        for n in &bed.rec.nodes {
            let url = format!("http://{}:{port}/", n.addr);
            let r = probe::curl(&c, &url, CURL_TIME, &[])?;
            println!("[{c}]$ curl {url:<28} -> {}", r.summary());
        }
    }
    Ok(())
}

/// Runs the walk on a fresh instance; leaves it up unless `down`.
pub fn run(mut bed: Bed, down: bool) -> Result<()> {
    bed.verbose = true;
    let c = bed.client_ns();
    let n = bed.rec.nodes.len();
    let last = bed
        .rec
        .nodes
        .last()
        .map(|x| x.name.clone())
        .unwrap_or_default();

    section(1, &format!("A mesh of {n} nodes"), "seed 000: a swarm");
    note(&format!(
        "Each node is a network namespace on one switch; meshd runs in it and IS the node: it answers\n\
         for 192.168.100.1X itself (ARP, ping, published ports) with no address in the kernel.\n\
         The outside client is {c} (192.168.100.100)."
    ));
    if let Some(e) = &bed.rec.etcd {
        note(&format!(
            "The mesh's state lives in etcd ({}, a real etcd on a management network, as Swarm keeps\n\
             its own in raft): every meshd runs with --cluster, registered under a lease, and follows\n\
             it; meshctl runs with MESHCTL_CLUSTER={} and writes etcd, then waits until\n\
             every node runs the change (`verify: ... on 3/3 nodes (revision R)`).",
            e.endpoints(),
            e.endpoints()
        ));
    }
    bed.meshctl(&["node", "ls"])?;
    if let Some(n1) = bed.rec.nodes.first() {
        let a6 = n1.addr6().to_string();
        shell(&c, &format!("ping -6 -c 2 {a6}"));
        let (_, out) = probe::ping(&c, &a6, 2)?;
        print!("{out}");
        note(
            "Each node also has an IPv6 address (meshd --addr6 fd00:100::1X): meshd answers Neighbor\n\
             Discovery and ping there, and published ports (step 3); VIPs and tasks are IPv4 only so far.",
        );
    }

    section(
        2,
        "docker service create --name web --publish 8080:80 --replicas 2",
        "seeds 000, 003",
    );
    println!("$ testbed run web --replicas 2 --publish 8080:80 --network appnet");
    bed.run(
        &RunSpec::new("web", 2)
            .publish("8080:80", PublishMode::Ingress)?
            .network("appnet"),
    )?;
    bed.meshctl(&["service", "ps", "web"])?;

    section(3, "curl every node's published port", "seeds 000, 003");
    let n1 = &bed.rec.nodes[0];
    let url = format!("http://{}:8080/", n1.addr);
    shell(&c, &format!("curl {url}"));
    print!("{}", body_or_error(&probe::curl(&c, &url, CURL_TIME, &[])?));
    curl_nodes(&bed, 8080, 2)?;
    note(&format!(
        "Every node answers on 8080, {last} too, which runs no task of web; new connections take\n\
         turns over web.1 and web.2. RemoteAddr is the ingress node's address on the ingress network\n\
         (Swarm masquerades; `--client-ip keep` shows the client's own address instead)."
    ));
    if let Some(nl) = bed.rec.nodes.last() {
        let url6 = format!("http://[{}]:8080/", nl.addr6());
        shell(&c, &format!("curl -6 {url6}"));
        print!(
            "{}",
            body_or_error(&probe::curl(&c, &url6, CURL_TIME, &["-6"])?)
        );
        note(
            "And over IPv6, on the node's --addr6: meshd turns the client's packets into IPv4 for the\n\
             task and the answers back into IPv6 (NAT64; the task sees the ingress endpoint).",
        );
    }

    section(4, "docker service scale web=1", "seed 000");
    println!("$ testbed scale web=1");
    bed.scale("web", 1)?;
    curl_nodes(&bed, 8080, 1)?;
    note("One task left, and every node still answers: the port lives on every node, not with the tasks.");

    section(5, "A client task reaches web by its VIP", "seed 004");
    println!("$ testbed scale web=2");
    bed.scale("web", 2)?;
    // On a node without a web task: meshd cannot yet balance a VIP connection to a task on the
    // client's own node (the task's reply bypasses meshd on the tasks bridge; see the ignored
    // end-to-end test `a_vip_connection_to_a_task_on_the_clients_own_node_works`).
    let free = bed
        .rec
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| !bed.rec.tasks.iter().any(|t| &t.node == n))
        .unwrap_or_else(|| last.clone());
    println!("$ testbed run client --network appnet --node {free}   # docker service create --name client --network mynet");
    bed.run(&RunSpec::new("client", 1).network("appnet").on(&free))?;
    let vip = bed.vip("web", "appnet")?;
    let ct = bed
        .tasks_of("client")
        .first()
        .map(|t| (t.ns.clone(), t.node.clone()))
        .unwrap_or_default();
    note(&format!(
        "web's VIP on appnet is {vip}; client.1 runs on {}. The name `web` is answered by meshd's\n\
         embedded resolver on appnet's gateway (the task's /etc/resolv.conf names it).",
        ct.1
    ));
    shell(&ct.0, "dig +short web tasks.web");
    match std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ct.0,
            "dig",
            "+short",
            "+time=2",
            "web",
            "tasks.web",
        ])
        .output()
    {
        Ok(o) => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Err(e) => println!("(dig: {e})"),
    }
    shell(&ct.0, "curl web");
    print!(
        "{}",
        body_or_error(&probe::curl(&ct.0, "http://web/", CURL_TIME, &[])?)
    );
    for _ in 0..3 {
        let r = probe::curl(&ct.0, "http://web/", CURL_TIME, &[])?;
        println!("[{}]$ curl web   -> {}", ct.0, r.summary());
    }
    shell(&ct.0, "ping -c 2 web");
    let (_, out) = probe::ping(&ct.0, "web", 2)?;
    print!("{}", out);
    note(
        "Connections to the VIP are balanced over web's tasks on every node; the VIP answers ping.",
    );

    section(6, "docker node update --availability drain n2", "seed 002");
    println!("$ testbed drain n2");
    bed.set_availability("n2", Availability::Drain)?;
    curl_nodes(&bed, 8080, 2)?;
    let on_n2: Vec<String> = bed
        .rec
        .tasks
        .iter()
        .filter(|t| t.node == "n2")
        .map(|t| t.name.clone())
        .collect();
    note(&format!(
        "n2's task ({}) takes no new connections; its open ones go on. (Swarm would also start a\n\
         replacement elsewhere; meshd routes, it does not schedule containers.)",
        on_n2.join(", ")
    ));

    section(7, "docker service update --publish-rm 8080 web", "seed 002");
    bed.meshctl(&["service", "update", "--publish-rm", "8080", "web"])?;
    for node in &bed.rec.nodes {
        let url = format!("http://{}:8080/", node.addr);
        let r = probe::curl(&c, &url, CURL_TIME, &[])?;
        println!("[{c}]$ curl {url:<28} -> {}", r.summary());
    }
    for node in &bed.rec.nodes {
        let to = std::net::SocketAddr::from((node.addr, 8080));
        let said = match probe::tcp_open(&c, to, CURL_TIME)? {
            Ok(_) => "connected".to_string(),
            Err(f) => f.to_string(),
        };
        println!("[{c}]$ connect({to}) -> {said}");
    }
    note("Every node refuses at once (a TCP RST from meshd), as a host with nothing listening would.");

    section(
        8,
        "HEALTHCHECK: a task whose server stops leaves rotation",
        "docker service create --health-cmd",
    );
    println!("$ testbed run api --replicas 2 --publish 9090:80 --health tcp --health-interval 500ms --health-retries 2");
    let api = RunSpec::new("api", 2)
        .publish("9090:80", PublishMode::Ingress)?
        .with_args(&[
            "--health",
            "tcp",
            "--health-interval",
            "500ms",
            "--health-retries",
            "2",
        ]);
    bed.run(&api)?;
    let victim = bed
        .tasks_of("api")
        .first()
        .map(|t| t.name.clone())
        .ok_or_else(|| crate::error::Error::msg("api has no task"))?;
    println!("$ kill the server of {victim}   # (testbed stops its whoami)");
    bed.stop_task_server(&victim)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let verbose = std::mem::replace(&mut bed.verbose, false);
    // Health is each node's observation: ask a node's own socket (etcd holds the desired state).
    let n1 = bed.rec.nodes[0].clone();
    let ps = loop {
        let ps = bed.meshctl_local(&n1.name, &["service", "ps", "api"])?;
        if ps.to_lowercase().contains("unhealthy") || std::time::Instant::now() > deadline {
            break ps;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    bed.verbose = verbose;
    println!(
        "$ meshctl --socket {} service ps api   # {}'s own view, with the tasks' health",
        n1.socket.display(),
        n1.name
    );
    for l in ps.lines() {
        println!("  {l}");
    }
    curl_nodes(&bed, 9090, 1)?;
    note(&format!(
        "Within interval x retries {victim} is unhealthy on every node and every connection goes\n\
         to the other task; it comes back once its server answers again."
    ));
    bed.start_task_server(&victim)?;

    if bed.rec.etcd.is_some() && bed.rec.nodes.len() >= 3 {
        section(
            9,
            "A node whose meshd stops answering: Down, its tasks leave rotation",
            "docker node ls",
        );
        let n3 = bed.rec.nodes[2].name.clone();
        let on_n3: Vec<String> = bed
            .tasks_of("api")
            .iter()
            .filter(|t| t.node == n3)
            .map(|t| t.name.clone())
            .collect();
        println!(
            "$ kill -STOP $(pidof meshd on {n3})   # frozen: its lease ({} s) lapses",
            crate::plan::CLUSTER_LEASE_SECS
        );
        bed.freeze_meshd(&n3, true)?;
        let verbose = std::mem::replace(&mut bed.verbose, false);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let ls = loop {
            let ls = bed.meshctl(&["node", "ls"])?;
            let down = ls
                .lines()
                .any(|l| l.starts_with(&format!("{n3} ")) && l.contains("Down"));
            if down || std::time::Instant::now() > deadline {
                break ls;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        bed.verbose = verbose;
        println!("$ meshctl node ls");
        for l in ls.lines() {
            println!("  {l}");
        }
        let n1 = &bed.rec.nodes[0];
        for _ in 0..4 {
            let url = format!("http://{}:9090/", n1.addr);
            let r = probe::curl(&c, &url, CURL_TIME, &[])?;
            println!("[{c}]$ curl {url:<28} -> {}", r.summary());
        }
        note(&format!(
            "{n3} is Down (no keep-alive reached etcd within its lease), so the other nodes send no new\n\
             connection to its tasks ({}); {n3} itself keeps forwarding on its last table (fail static).",
            on_n3.join(", ")
        ));
        println!("$ kill -CONT $(pidof meshd on {n3})");
        bed.freeze_meshd(&n3, false)?;
        bed.wait_ready(Duration::from_secs(20))?;
        bed.meshctl(&["node", "ls"])?;
        note(&format!(
            "{n3} registered again and caught up on what it missed."
        ));
    }

    if down {
        println!("\n$ testbed down");
        for l in bed.down_now() {
            println!("  {l}");
        }
        return Ok(());
    }
    println!("\n=== Putting the port back and n2 back to active, so you can poke the mesh\n");
    bed.meshctl(&[
        "service",
        "update",
        "--publish-add",
        "published=8080,target=80",
        "web",
    ])?;
    bed.set_availability("n2", Availability::Active)?;
    bed.verbose = false;
    println!("{}", bed.status());
    Ok(())
}

fn body_or_error(r: &probe::Curl) -> String {
    if r.ok() {
        r.body.clone()
    } else {
        r.stderr.clone()
    }
}
