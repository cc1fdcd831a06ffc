//! `meshctl conn ls` and `conn rm`: the connections meshd's workers hold, in `ipvsadm -Lnc`'s
//! and `conntrack -L`'s manner. Both go to every `--socket` (each node answers for its own
//! workers), with or without `--cluster`.

use clap::{Args, Subcommand};
use ctl::model::{ClientNet, Protocol};
use ctl::proto::{Command, ConnFilter, ConnList, ConnRemoved, ConnState, Query, Runtime};

use super::render::table;
use super::{CliError, Ctx, Format};

const LS_EXAMPLES: &str = "\
Examples:
  meshctl conn ls                                  every connection of the node (first 1000)
  meshctl conn ls --service web --state established
  meshctl conn ls --client 192.168.100.0/24 --format json
  meshctl --socket /run/n1.sock,/run/n2.sock conn ls --task web.1

Columns: PRO and the CLIENT as it sent its packets; VIRTUAL, the address it reached (a
published port of the node, or a service VIP); the SERVICE and TASK it is balanced to and the
task's DESTINATION; SOURCE, what the task sees as the client (the masquerade address, or the
client's own with --client-ip keep); STATE in IPVS's words (SYN_SENT, SYN_RECV, ESTABLISHED,
FIN_WAIT, CLOSE, UDP); IDLE since the last packet either way; EXPIRE, when it ends if nothing
more comes; IN and OUT, packets/bytes from the client and back to it (with meshd
--flow-accounting; `-` without). KIND is ingress (a
published port), vip (a task to a VIP) or return (--client-ip keep on the task's node).

Each worker walks its own flow table between bursts, a few thousand records at a time, so
listing never stops the traffic. Each row is whole; a connection made or ended while the walk
runs may or may not be listed. With --format json the answer is one object per node:
{\"node\", \"matched\", \"connections\": [...]}.";

const RM_EXAMPLES: &str = "\
Examples:
  meshctl conn rm --client 203.0.113.7             end one client's connections
  meshctl conn rm --task web.2 --state established
  meshctl conn rm --all                            end every connection of the node

The flows are removed at once; a TCP client gets a RST (as `ipvsadm --del-connection` or
`conntrack -D` would leave it to time out, meshd tells it). The next packet of an ended UDP
flow, or a retransmission, makes a new connection, balanced afresh. `meshctl stats` counts
them as `flows_removed`.";

#[derive(Debug, Subcommand)]
pub(super) enum ConnCmd {
    /// List the node's connections (as ipvsadm -Lnc, conntrack -L)
    #[command(after_help = LS_EXAMPLES)]
    Ls(LsArgs),
    /// End connections: their flows go, TCP clients get a RST
    #[command(after_help = RM_EXAMPLES)]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub(super) struct FilterArgs {
    /// Connections balanced to this service's tasks
    #[arg(long, value_name = "SERVICE")]
    service: Option<String>,
    /// Connections balanced to this task
    #[arg(long, value_name = "TASK")]
    task: Option<String>,
    /// Connections from this client address or prefix (203.0.113.7, 10.0.0.0/8,
    /// fd00:100::/64)
    #[arg(long, value_name = "IP[/LEN]", value_parser = parse_client)]
    client: Option<ClientNet>,
    /// Connections in these states (repeatable or comma-separated): none, syn_sent,
    /// syn_recv, established, fin_wait, close, udp
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_state)]
    state: Vec<ConnState>,
    /// Only TCP or only UDP connections
    #[arg(long, value_name = "tcp|udp", value_parser = parse_protocol)]
    protocol: Option<Protocol>,
}

impl FilterArgs {
    fn filter(self) -> ConnFilter {
        let mut state = self.state;
        state.sort_unstable();
        state.dedup();
        ConnFilter {
            service: self.service,
            task: self.task,
            client: self.client,
            state,
            protocol: self.protocol,
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct LsArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// List at most this many connections per node (1 to 100000); the count of all that
    /// match is shown below
    #[arg(long, default_value = "1000", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(ctl::proto::MAX_CONN_ROWS)))]
    limit: u32,
}

#[derive(Debug, Args)]
pub(super) struct RmArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// End every connection of the node (instead of a filter)
    #[arg(long, conflicts_with_all = ["service", "task", "client", "state", "protocol"])]
    all: bool,
}

fn parse_client(s: &str) -> Result<ClientNet, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(ClientNet::host(ip));
    }
    let n: ClientNet = s
        .parse()
        .map_err(|e: ctl::model::ParseNetError| format!("{e} (or a single address)"))?;
    if n.network() != n {
        return Err(format!(
            "{s}: has bits set past the prefix length (did you mean {}?)",
            n.network()
        ));
    }
    Ok(n)
}

fn parse_state(s: &str) -> Result<ConnState, String> {
    s.trim().parse()
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    super::spec::protocol("--protocol", s).map_err(|e| e.to_string())
}

pub(super) fn run(ctx: &Ctx, c: ConnCmd) -> Result<(), CliError> {
    match c {
        ConnCmd::Ls(a) => {
            let cmd = Command::Query(Query::ConnLs {
                filter: a.filter.filter(),
                limit: a.limit,
            });
            let lists: Vec<ConnList> = ctx.ask_each(&cmd)?;
            match ctx.format {
                Format::Json => super::print_json(&lists),
                Format::Table => super::out(&render_ls(&lists)),
            }
        }
        ConnCmd::Rm(a) => {
            let filter = a.filter.filter();
            if filter.is_empty() && !a.all {
                return Err(CliError::Msg(
                    "conn rm: say which connections (--service, --task, --client, --state, \
                     --protocol) or --all for every one"
                        .into(),
                ));
            }
            let cmd = Command::Runtime(Runtime::ConnRm { filter, all: a.all });
            let done: Vec<ConnRemoved> = ctx.ask_each(&cmd)?;
            match ctx.format {
                Format::Json => super::print_json(&done),
                Format::Table => super::out(&render_rm(&done)),
            }
        }
    }
}

/// `1.2K`, `3.4M`: bytes as `ipvsadm --stats` shows them.
fn si(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (d, u) in UNITS {
        if n >= d {
            // Casts: a display value; precision past three digits does not matter.
            #[allow(clippy::cast_precision_loss)]
            let x = n as f64 / d as f64;
            return format!("{x:.1}{u}");
        }
    }
    n.to_string()
}

/// `packets/bytes`, or `-` when meshd does not count them (no `--flow-accounting`).
fn counts(packets: Option<u64>, bytes: Option<u64>) -> String {
    match (packets, bytes) {
        (Some(p), Some(b)) => format!("{p}/{}", si(b)),
        _ => "-".into(),
    }
}

/// `850ms`, `12s`, `3m05s`, `2h14m`.
fn short(ms: u64) -> String {
    let s = ms / 1000;
    if s == 0 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    }
}

pub(super) fn render_ls(lists: &[ConnList]) -> String {
    let many = lists.len() > 1;
    let mut headers = vec![];
    if many {
        headers.push("NODE");
    }
    headers.extend([
        "PRO",
        "KIND",
        "CLIENT",
        "VIRTUAL",
        "SERVICE",
        "TASK",
        "DESTINATION",
        "SOURCE",
        "STATE",
        "IDLE",
        "EXPIRE",
        "IN",
        "OUT",
    ]);
    let mut rows = Vec::new();
    for l in lists {
        for c in &l.connections {
            let mut r = vec![];
            if many {
                r.push(l.node.clone());
            }
            r.extend([
                c.protocol.as_str().to_string(),
                format!("{:?}", c.kind).to_lowercase(),
                c.client.to_string(),
                c.service_addr.to_string(),
                c.service.clone().unwrap_or_else(|| "-".into()),
                c.task.clone().unwrap_or_else(|| "-".into()),
                c.task_addr.to_string(),
                c.source.to_string(),
                c.state.to_string(),
                short(c.idle_ms),
                short(c.expires_ms),
                counts(c.packets_in, c.bytes_in),
                counts(c.packets_out, c.bytes_out),
            ]);
            rows.push(r);
        }
    }
    let mut s = table(&headers, &rows);
    for l in lists {
        let shown = l.connections.len() as u64;
        let what = if many {
            format!("{}: ", l.node)
        } else {
            String::new()
        };
        if shown < l.matched {
            s.push_str(&format!(
                "{what}{shown} of {} connections shown (--limit, or narrow the filter)\n",
                l.matched
            ));
        } else {
            s.push_str(&format!(
                "{what}{} connection{}\n",
                l.matched,
                if l.matched == 1 { "" } else { "s" }
            ));
        }
    }
    s
}

pub(super) fn render_rm(done: &[ConnRemoved]) -> String {
    done.iter()
        .map(|d| {
            format!(
                "{}: {} connection{} ended, {} TCP client{} sent a RST\n",
                d.node,
                d.removed,
                if d.removed == 1 { "" } else { "s" },
                d.reset,
                if d.reset == 1 { "" } else { "s" },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctl::proto::{Conn, ConnKind};

    #[test]
    fn a_client_is_an_address_or_a_clean_prefix() {
        assert_eq!(parse_client("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_client("10.1.0.0/16").unwrap().prefix(), 16);
        let e = parse_client("10.1.2.3/16").unwrap_err();
        assert!(e.contains("did you mean 10.1.0.0/16"), "{e}");
        assert!(parse_client("web").is_err());
        assert!(parse_client("10.0.0.0/33").is_err());
        // IPv6 clients of published ports.
        assert_eq!(
            parse_client("fd00:100::100").unwrap().to_string(),
            "fd00:100::100/128"
        );
        assert_eq!(parse_client("fd00:100::/64").unwrap().prefix(), 64);
        let e = parse_client("fd00:100::1/64").unwrap_err();
        assert!(e.contains("did you mean fd00:100::/64"), "{e}");
        assert!(parse_client("fd00::/129").is_err());
        assert!(parse_client("fd00::zz/64").is_err());
    }

    #[test]
    fn states_read_as_ipvs_writes_them() {
        assert_eq!(parse_state("established").unwrap(), ConnState::Established);
        assert_eq!(parse_state("SYN-RECV").unwrap(), ConnState::SynRecv);
        let e = parse_state("open").unwrap_err();
        assert!(e.contains("ESTABLISHED"), "{e}");
    }

    #[test]
    fn the_listing_says_when_the_limit_cut_it() {
        let c = Conn {
            protocol: Protocol::Tcp,
            kind: ConnKind::Ingress,
            client: "192.168.100.1:40000".parse().unwrap(),
            service_addr: "192.168.100.11:8080".parse().unwrap(),
            service: Some("web".into()),
            task: Some("web.1".into()),
            task_addr: "10.0.0.5:80".parse().unwrap(),
            source: "10.0.0.2:1024".parse().unwrap(),
            state: ConnState::Established,
            idle_ms: 1500,
            expires_ms: 898_500,
            packets_in: Some(6),
            bytes_in: Some(420),
            packets_out: Some(5),
            bytes_out: Some(3 << 20),
            worker: 0,
        };
        let l = ConnList {
            node: "n1".into(),
            matched: 3,
            connections: vec![c],
        };
        let s = render_ls(std::slice::from_ref(&l));
        assert!(s.contains("ESTABLISHED"), "{s}");
        assert!(s.contains("14m58s"), "{s}");
        assert!(s.contains("5/3.0M"), "{s}");
        assert!(s.contains("1 of 3 connections shown"), "{s}");
        let mut uncounted = l.clone();
        uncounted.connections[0].packets_in = None;
        uncounted.connections[0].bytes_in = None;
        assert!(render_ls(&[uncounted]).contains(" - "), "no counts: a dash");
        let two = render_ls(&[
            l.clone(),
            ConnList {
                node: "n2".into(),
                ..l
            },
        ]);
        assert!(two.starts_with("NODE"), "{two}");
    }
}
