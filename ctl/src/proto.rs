//! The control protocol between `meshctl` (or any client) and `meshd`.
//!
//! A Unix stream socket carries newline-delimited JSON: the client writes one [`Request`] on one
//! line, the daemon answers with one [`Response`] on one line, and the client may send the next
//! request on the same connection or close it.
//!
//! ```text
//! → {"version":1,"command":"service-scale","name":"web","replicas":1}
//! ← {"ok":true,"generation":7,"result":{"name":"web","endpoint_mode":"vip",...}}
//! → {"version":1,"command":"service-inspect","name":"api"}
//! ← {"ok":false,"error":{"code":"not-found","message":"service \"api\" not found"}}
//! ```
//!
//! The daemon side is, per line: [`read_line`] (bounded by [`MAX_REQUEST_BYTES`]),
//! [`parse_request`], then for a changing command [`crate::apply::apply`] and
//! [`crate::validate()`], and finally [`crate::apply::answer`] for the result body.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead};
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{
    Availability, ClientIpMode, EndpointMode, HealthCheck, Network, Node, Protocol, PublishedPort,
    SchedulerKind, Service, ServiceNetwork, Task, TaskState,
};

/// The protocol version this crate speaks. A daemon refuses any other with
/// [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line a daemon accepts, newline excluded. Longer ones are answered with
/// [`ErrorCode::TooLarge`].
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// One request: the protocol version and a command.
///
/// On the wire the command's fields sit next to `version`:
/// `{"version":1,"command":"node-update","name":"n2","availability":"drain"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    /// A request in this crate's protocol version.
    pub fn new(command: Command) -> Self {
        Request {
            version: PROTOCOL_VERSION,
            command,
        }
    }

    /// The request as one JSON line, newline included.
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        let mut s = serde_json::to_string(self)?;
        s.push('\n');
        Ok(s)
    }
}

/// Defines a command enum once: its variants (each `Variant { fields } = "wire-name",`), their
/// serde form (tagged by `command`, unknown fields refused), `NAMES` and `name()`.
macro_rules! commands {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident { $($body:tt)* } = $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "command", deny_unknown_fields)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $label)] $variant { $($body)* }, )*
        }

        impl $name {
            /// Every command's name on the wire.
            pub const NAMES: &'static [&'static str] = &[$($label),*];

            /// The command's name on the wire, such as `service-scale`.
            pub fn name(&self) -> &'static str {
                match self {
                    $( $name::$variant { .. } => $label, )*
                }
            }
        }
    };
}

/// What a client asks meshd to do: a [`Query`] reads, a [`Change`] changes the state. Names and
/// fields follow Docker's CLI.
///
/// On the wire both are one flat object tagged by `command`:
/// `{"command":"node-update","name":"n2","availability":"drain"}`.
// A command is built once per request and never stored in bulk: its size does not matter, and
// boxing the change would only make every call site longer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Query(Query),
    Change(Change),
    Runtime(Runtime),
}

commands! {
    /// A command that only reads: answered from the state (or the counters), changes nothing.
    pub enum Query {
        /// All networks. Result: `[Network]`.
        NetworkLs {} = "network-ls",
        /// One network. Result: `Network`.
        NetworkInspect { name: String } = "network-inspect",
        /// All nodes. Result: `[Node]`.
        NodeLs {} = "node-ls",
        /// All services. Result: `[Service]`.
        ServiceLs {} = "service-ls",
        /// One service. Result: `Service`.
        ServiceInspect { name: String } = "service-inspect",
        /// A service's tasks. Result: `[PsTask]`: each task with its observed `status` (current
        /// state, since when, health).
        ServicePs { name: String } = "service-ps",
        /// The daemon's counters. Result: [`StatsReport`].
        Stats {} = "stats",
        /// The whole desired state. Result: `State`.
        State {} = "state",
        /// The node's connections (its workers' flows) that `filter` matches, at most `limit`
        /// (1 to [`MAX_CONN_ROWS`]). Result: [`ConnList`].
        ConnLs {
            #[serde(default)]
            filter: ConnFilter,
            limit: u32,
        } = "conn-ls",
    }
}

commands! {
    /// A command that acts on the node's running dataplane, not on the desired state: nothing
    /// is persisted or published, no generation moves.
    pub enum Runtime {
        /// Ends the node's connections that `filter` matches (at least one criterion): their
        /// flows are removed and TCP clients get a RST. Result: [`ConnRemoved`].
        /// `all` must be set to end every connection (an empty filter alone is refused).
        ConnRm {
            #[serde(default)]
            filter: ConnFilter,
            #[serde(default)]
            all: bool,
        } = "conn-rm",
        /// Copies what the node's workers receive and send (see [`CaptureSpec`]). The answer is
        /// a stream on the connection: a [`CaptureChunk`] with `start` set, then chunks of
        /// frames (at least one every [`CAPTURE_HEARTBEAT_MS`]), the last with `end` set; the
        /// connection then closes. A client ends it early by closing the connection. One
        /// capture at a time per node: another is refused as `busy`.
        Capture {
            #[serde(default)]
            spec: CaptureSpec,
        } = "capture",
    }
}

commands! {
    /// A command that changes the state, and so bumps the generation once every worker has
    /// picked the change up.
    pub enum Change {
        /// Create an overlay network.
        NetworkCreate { network: Network } = "network-create",
        /// Remove a network no service uses.
        NetworkRm { name: String } = "network-rm",
        /// Change an encrypted network's keys; see [`NetworkUpdate`].
        NetworkUpdate { name: String, update: NetworkUpdate } = "network-update",
        /// Add a peer node. `endpoints` gives the node's endpoint address on some networks (network
        /// name → address), set in the same change: a node needs one on the ingress network as soon
        /// as a service publishes a port.
        NodeAdd {
            node: Node,
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            endpoints: BTreeMap<String, Ipv4Addr>,
        } = "node-add",
        /// Remove a node that runs no task; its network endpoints go with it.
        NodeRm { name: String } = "node-rm",
        /// Change a node's availability (`drain`: its tasks take no new connections).
        NodeUpdate {
            name: String,
            availability: Availability,
        } = "node-update",
        /// Create a service with its ports and tasks.
        ServiceCreate { service: Service } = "service-create",
        /// Change a service; see [`ServiceUpdate`].
        ServiceUpdate { name: String, update: ServiceUpdate } = "service-update",
        /// Scale a service down to `replicas` tasks by removing its highest-numbered ones. meshd
        /// does not start containers, so scaling up is refused: add tasks with `task_add`.
        ServiceScale { name: String, replicas: u32 } = "service-scale",
        /// Remove a service.
        ServiceRm { name: String } = "service-rm",
    }
}

impl Command {
    /// Whether the command changes the state (and so bumps the generation once every worker has
    /// picked the change up).
    pub fn changes_state(&self) -> bool {
        matches!(self, Command::Change(_))
    }

    /// The command's name on the wire, such as `service-scale`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Query(q) => q.name(),
            Command::Change(c) => c.name(),
            Command::Runtime(r) => r.name(),
        }
    }
}

impl From<Query> for Command {
    fn from(q: Query) -> Self {
        Command::Query(q)
    }
}

impl From<Runtime> for Command {
    fn from(r: Runtime) -> Self {
        Command::Runtime(r)
    }
}

impl From<Change> for Command {
    fn from(c: Change) -> Self {
        Command::Change(c)
    }
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Command::Query(q) => q.serialize(s),
            Command::Change(c) => c.serialize(s),
            Command::Runtime(r) => r.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Command {
    /// By the `command` tag: a query's name gives a [`Query`], a change's a [`Change`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = Value::deserialize(d)?;
        let name = match v.get("command") {
            Some(Value::String(n)) => n.as_str(),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "\"command\" must be a string such as \"service-ls\", not {other}"
                )))
            }
            None => return Err(D::Error::missing_field("command")),
        };
        if Query::NAMES.contains(&name) {
            Query::deserialize(v)
                .map(Command::Query)
                .map_err(D::Error::custom)
        } else if Change::NAMES.contains(&name) {
            Change::deserialize(v)
                .map(Command::Change)
                .map_err(D::Error::custom)
        } else if Runtime::NAMES.contains(&name) {
            Runtime::deserialize(v)
                .map(Command::Runtime)
                .map_err(D::Error::custom)
        } else {
            let all: Vec<&str> = Query::NAMES
                .iter()
                .chain(Change::NAMES)
                .chain(Runtime::NAMES)
                .copied()
                .collect();
            Err(D::Error::custom(format!(
                "unknown command `{name}`, expected one of {}",
                all.join(", ")
            )))
        }
    }
}

/// A published port as named by `--publish-rm`: the published port and its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub published: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl PortSpec {
    pub fn of(p: &PublishedPort) -> Self {
        PortSpec {
            published: p.published,
            protocol: p.protocol,
        }
    }

    pub fn matches(&self, p: &PublishedPort) -> bool {
        p.published == self.published && p.protocol == self.protocol
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.published, self.protocol)
    }
}

/// Why a `PORT[/PROTOCOL]` did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParsePortError(pub String);

impl FromStr for PortSpec {
    type Err = ParsePortError;
    /// `8080`, `8080/tcp` or `53/udp`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, Some(proto)),
            None => (s, None),
        };
        let published = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(ParsePortError(format!(
                    "{port:?} is not a port number (1-65535)"
                )))
            }
        };
        let protocol = match proto {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(other) => {
                return Err(ParsePortError(format!(
                    "unknown protocol {other:?} (expected tcp or udp)"
                )))
            }
        };
        Ok(PortSpec {
            published,
            protocol,
        })
    }
}

/// A change to one task: its weight (0 drains it) and/or its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskUpdate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TaskState>,
}

/// A change to some idle timeouts; absent ones keep their value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_transitory: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<u32>,
}

impl TimeoutsUpdate {
    pub fn is_empty(&self) -> bool {
        *self == TimeoutsUpdate::default()
    }
}

/// What `service update` changes, as Docker's `--publish-add`, `--publish-rm`, `--network-add`,
/// `--network-rm` and meshd's `--task-add`, `--task-rm`, `--task-update`.
///
/// A change of an encrypted network's keys: the one thing about a network that changes after
/// it is created (its subnet, VNI and encryption do not, as in Docker). A key rotation is two
/// updates sent to every node: first `key_add` (every node accepts the new key), then
/// `key_primary` (every node seals with it), so no node ever receives a frame sealed with a key
/// it does not have yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkUpdate {
    /// A key to accept from now on; when the network holds [`crate::model::MAX_NETWORK_KEYS`]
    /// already, the oldest that is not the primary is dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_add: Option<crate::model::NetworkKey>,
    /// The key to seal with from now on; the keys older than the primary it replaces are
    /// dropped (the replaced one is still accepted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_primary: Option<u32>,
}

/// It is applied in this order, so a port or task can be replaced in one update: `publish_rm`,
/// `publish_add`, `network_rm`, `network_add`, `task_rm`, `task_add`, `task_update`, then the
/// scalar settings. Switching to endpoint mode `dnsrr` drops the service's VIPs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceUpdate {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish_add: Vec<PublishedPort>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish_rm: Vec<PortSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_add: Vec<ServiceNetwork>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_rm: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub task_add: Vec<Task>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub task_rm: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub task_update: Vec<TaskUpdate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_mode: Option<EndpointMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<SchedulerKind>,
    /// Turns source-IP affinity on or off (`--affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<crate::model::AffinityMode>,
    /// Sets the affinity timeout (`--affinity-timeout`); affinity must be on, or turned on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_s: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsUpdate>,
    /// Replaces the health check (the whole of it: meshctl merges `--health-*` flags into the
    /// current one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Removes the health check (`--no-healthcheck`), before `health` is applied.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_health: bool,
    /// Replaces the passive health settings (`--outlier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<crate::model::Outlier>,
}

impl ServiceUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == ServiceUpdate::default()
    }
}

/// The kind of a failure, for programs; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The line is not JSON, not a request, or names an unknown command or field.
    BadRequest,
    /// The request's `version` is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The command names a network, node, service, task or port that does not exist.
    NotFound,
    /// The command would create something that exists, or remove something still in use.
    Conflict,
    /// The resulting state would be invalid (validation refused it).
    Invalid,
    /// The request line is longer than [`MAX_REQUEST_BYTES`].
    TooLarge,
    /// The daemon failed (persisting, publishing): the state is unchanged; see its log.
    Internal,
    /// Too many control connections are open (in all, or from this client process): try
    /// again when one closes.
    Busy,
    /// The request did not arrive whole within the daemon's deadline; the connection closes.
    Timeout,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Invalid => "invalid",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Internal => "internal",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed request: a code and a message that says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

/// A successful answer: the generation of the state it reflects and a result body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Success {
    /// For a changing command, the generation every worker has acknowledged; otherwise the
    /// generation that was read.
    pub generation: u64,
    /// The body; its shape depends on the command (see [`Command`] and
    /// [`crate::apply::answer`]). `null` when there is nothing to say.
    pub result: Value,
}

/// The answer to one request:
/// `{"ok":true,"generation":7,"result":...}` or
/// `{"ok":false,"error":{"code":"not-found","message":"service \"web\" not found"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireResponse", into = "WireResponse")]
pub enum Response {
    Ok(Success),
    Err(ErrorBody),
}

impl Response {
    pub fn ok(generation: u64, result: Value) -> Self {
        Response::Ok(Success { generation, result })
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Err(ErrorBody::new(code, message))
    }

    pub fn into_result(self) -> Result<Success, ErrorBody> {
        match self {
            Response::Ok(s) => Ok(s),
            Response::Err(e) => Err(e),
        }
    }

    /// The response as one JSON line, newline included. Serialising a `Value` cannot fail; were
    /// it to, the line is an `internal` error instead.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"ok":false,"error":{{"code":"internal","message":{}}}}}"#,
                Value::String(format!("cannot encode the response: {e}"))
            )
        });
        s.push('\n');
        s
    }
}

impl From<ErrorBody> for Response {
    fn from(e: ErrorBody) -> Self {
        Response::Err(e)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireResponse {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

impl TryFrom<WireResponse> for Response {
    type Error = String;
    fn try_from(w: WireResponse) -> Result<Self, String> {
        match (w.ok, w.generation, w.result, w.error) {
            (true, Some(generation), result, None) => Ok(Response::Ok(Success {
                generation,
                result: result.unwrap_or(Value::Null),
            })),
            (true, None, _, _) => Err("\"ok\":true without \"generation\"".into()),
            (true, _, _, Some(_)) => Err("\"ok\":true with an \"error\"".into()),
            (false, _, _, Some(error)) => Ok(Response::Err(error)),
            (false, _, _, None) => Err("\"ok\":false without \"error\"".into()),
        }
    }
}

impl From<Response> for WireResponse {
    fn from(r: Response) -> Self {
        match r {
            Response::Ok(s) => WireResponse {
                ok: true,
                generation: Some(s.generation),
                result: Some(s.result),
                error: None,
            },
            Response::Err(e) => WireResponse {
                ok: false,
                generation: None,
                result: None,
                error: Some(e),
            },
        }
    }
}

/// Why [`read_line`] returned no line.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The line was longer than the limit. It has been read up to its newline (or the end of the
    /// stream) and dropped, so the next line can be read.
    #[error("the line is longer than {limit} bytes")]
    TooLarge { limit: usize },
}

/// Reads one newline-terminated line of at most `limit` bytes (newline and a trailing `\r`
/// excluded) without ever holding more than `limit` bytes of it. `Ok(None)` at the end of the
/// stream; a last line without newline is returned as a line.
pub fn read_line<R: BufRead>(reader: &mut R, limit: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut line = Vec::new();
    let mut too_large = false;
    let mut seen_any = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        };
        if buf.is_empty() {
            if !seen_any {
                return Ok(None);
            }
            break;
        }
        seen_any = true;
        let (chunk, used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        if !too_large {
            // A `\r` before the newline may still be dropped, so allow one byte of slack.
            if line.len() + chunk.len() > limit.saturating_add(1) {
                too_large = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if done {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if too_large || line.len() > limit {
        return Err(FrameError::TooLarge { limit });
    }
    Ok(Some(line))
}

/// Parses one request line, checking the version before the command so that a client of
/// another version gets [`ErrorCode::UnsupportedVersion`] rather than a parse error.
pub fn parse_request(line: &[u8]) -> Result<Request, ErrorBody> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!(
                "the request is {} bytes; the limit is {MAX_REQUEST_BYTES}",
                line.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!("the request is not valid JSON: {e}"),
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            r#"a request is a JSON object such as {"version":1,"command":"service-ls"}"#,
        ));
    };
    match obj.get("version") {
        None => {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!(
                    r#"the request has no "version"; this meshd speaks version {PROTOCOL_VERSION}"#
                ),
            ))
        }
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) if v.as_u64().is_none() => {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!(r#""version" must be a number such as {PROTOCOL_VERSION}, not {v}"#),
            ))
        }
        Some(v) => {
            return Err(ErrorBody::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {v} is not supported; this meshd speaks version \
                     {PROTOCOL_VERSION} (use a meshctl of the same release as meshd)"
                ),
            ))
        }
    }
    serde_json::from_value(value)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("bad request: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The `stats` answer.

crate::counters! {
    /// One worker's plain counters (its drops by reason are beside them in [`WorkerReport`]).
    /// meshd's fast path increments these fields directly; see [`crate::counters`] to add one.
    pub struct WorkerCounters {
        rx: Counter,
        tx_uplink: Counter,
        tx_tasks: Counter,
        to_host: Counter,
        handoff_out: Counter,
        arp_replies: Counter,
        /// Neighbor Advertisements sent for the node's IPv6 address (`--addr6`).
        ndp_replies: Counter,
        new_flows: Counter,
        active_flows: Gauge,
        flows_expired: Counter,
        flows_evicted: Counter,
        flows_ended: Counter,
        resets_sent: Counter,
        /// Resets for ended flows that could not be sent: the reset queue was full, or the
        /// client's next hop was unknown.
        resets_unsent: Counter,
        /// SYNs and SYN-ACKs whose TCP MSS was lowered to what the overlay carries.
        mss_clamped: Counter,
        /// ICMP "fragmentation needed" answers sent for too-big packets with DF set, and ICMPv6
        /// "packet too big" to IPv6 clients (each such packet is also counted as a `too_big`
        /// drop).
        icmp_frag_needed: Counter,
        /// IPv4 fragments received (forwarded by their datagram's first fragment's flow).
        fragments_in: Counter,
        /// Fragments held because they came before their datagram's first fragment.
        fragments_held: Counter,
        /// Fragments made from too-big packets without DF (RFC 791).
        fragments_made: Counter,
        /// A peer's or a local task's MAC changed: an ARP reply to meshd's own request said so.
        neighbor_changes: Counter,
        /// Frames or ARP claiming a known address from another MAC, unasked: not believed (an
        /// ARP request goes out, rate-limited, and only its answer may change the entry).
        neighbor_conflicts: Counter,
        /// Frames the ports dropped below the pipeline, totals since they opened, refreshed by
        /// the worker about every 10 ms: the kernel found the RX ring full; a received frame did
        /// not fit a buffer; the TX ring was full; a frame to send had a bad length.
        port_rx_dropped: Counter,
        port_rx_too_long: Counter,
        port_tx_full: Counter,
        port_tx_bad_len: Counter,
        /// Frames a port did not send because its link was down (DPDK ports; the link as the
        /// worker last saw it, about every 10 ms), and the times a port's link was seen going
        /// down.
        port_tx_link_down: Counter,
        port_link_downs: Counter,
        /// New connections a task answered with a RST (nothing listening: passive health
        /// counts them against it).
        syn_refused: Counter,
        /// New connections whose SYN a task never answered (the half-open flow expired).
        syn_unanswered: Counter,
        /// Passive health events lost on the way to the host side (a full queue).
        passive_lost: Counter,
        /// New flows a task answered with an ICMP destination unreachable (port, protocol,
        /// host, or administratively prohibited): passive health counts them against it, and
        /// a UDP flow ends so the client's next datagram is balanced again.
        task_unreachable: Counter,
        /// ICMP errors from the uplink (a router on the way to a client: fragmentation needed,
        /// unreachable, time exceeded) about a published port's reply, sent on to the flow's
        /// task with the quote turned into what the task sent (path MTU discovery).
        icmp_to_task: Counter,
        /// Flows ended by `meshctl conn rm`.
        flows_removed: Counter,
        /// New clients of services with source-IP affinity placed by the hash but not
        /// remembered: the worker's affinity table had no room (every way of their set held a
        /// client seen within its timeout).
        affinity_full: Counter,
        /// Least-connections picks made by rotation instead: a task's connections were not
        /// counted (the worker's per-task counters were full).
        sched_uncounted: Counter,
    }
}

impl WorkerCounters {
    /// Frames the ports lost before or after the pipeline.
    pub fn port_drops(&self) -> u64 {
        self.port_rx_dropped
            + self.port_rx_too_long
            + self.port_tx_full
            + self.port_tx_bad_len
            + self.port_tx_link_down
    }
}

crate::counters! {
    /// The host side's counters: its answers, DNS, health checks, gossip.
    pub struct HostCounters {
        /// Frames handed to the host side.
        frames: Counter,
        /// Frames it had nothing to say to (not for the node, an ICMP error, a RST, ...).
        ignored: Counter,
        rst_sent: Counter,
        unreachable_sent: Counter,
        echo_replies: Counter,
        /// Fragmented datagrams for the host side put together (a large ping).
        reassembled: Counter,
        /// Fragments for the host side dropped: overlapping, malformed, or no room.
        fragments_dropped: Counter,
        dns_queries: Counter,
        /// Of which over TCP.
        dns_tcp_queries: Counter,
        dns_noerror: Counter,
        dns_nxdomain: Counter,
        dns_formerr: Counter,
        dns_notimp: Counter,
        dns_refused: Counter,
        dns_badvers: Counter,
        /// Answers that did not fit over UDP and went out truncated (TC).
        dns_truncated: Counter,
        /// Messages dropped without an answer (too short to have a header, or a response).
        dns_dropped: Counter,
        /// Resolver TCP connections reset because their client already held its share.
        dns_tcp_refused: Counter,
        dns_forwarded: Counter,
        dns_upstream_answers: Counter,
        dns_upstream_timeouts: Counter,
        /// Answers that could not be queued (a full socket buffer).
        dns_send_failed: Counter,
        checks_started: Counter,
        checks_passed: Counter,
        checks_failed: Counter,
        /// Times the combined health view changed (each a new table generation).
        health_changes: Counter,
        /// Tasks this node stopped sending new connections to for what it saw (passive health),
        /// and those it tried again once the ejection ended.
        outlier_ejections: Counter,
        outlier_returns: Counter,
        /// Ejections not made: the service had as many tasks out as it may.
        outlier_held: Counter,
        gossip_sent: Counter,
        gossip_received: Counter,
        /// Gossip from an unknown VTEP, under another node's name, or malformed.
        gossip_rejected: Counter,
        /// Gossip refused by its keyed MAC (`meshd --gossip-key-file`): none, a wrong one, an
        /// unknown key, or a datagram replayed (not newer than the last from its node, or more
        /// than a minute off the clock).
        gossip_forged: Counter,
    }
}

/// One worker's counters, or their sum: the plain counters and the frames dropped, by reason
/// (the reason's name; reasons with no drop are left out).
///
/// On the wire the plain counters sit next to `drops`: `{"rx":5,...,"drops":{"no_route":1}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    #[serde(flatten)]
    pub counters: WorkerCounters,
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
    /// Frames handed to the node's own stack, by reason (they add up to `to_host`). On the
    /// wire `to_host_by_reason`: the plain counter `to_host` sits in the same object.
    #[serde(default, rename = "to_host_by_reason")]
    pub to_host: BTreeMap<String, u64>,
}

impl WorkerReport {
    /// Frames dropped for any reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// Burst processing time percentiles in nanoseconds, over every worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyReport {
    /// Bursts measured.
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// Packets, bytes and connections (new flows) of one task, summed over the workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskReport {
    pub name: String,
    /// The node the task runs on.
    pub node: String,
    pub eligible: bool,
    /// The task's health verdict, when its service has a check.
    #[serde(default)]
    pub health: Option<crate::model::Health>,
    pub packets: u64,
    pub bytes: u64,
    /// New connections since meshd started.
    pub connections: u64,
    /// Flows held now: established TCP (IPVS's ActiveConn), and every other TCP state and UDP
    /// (InActConn); as of the workers' last sweep of their flow tables.
    pub active_connections: u64,
    pub inactive_connections: u64,
    /// Frames of the task's flows this node dropped (and new connections refused after the
    /// task was picked for them), since meshd started.
    pub dropped: u64,
}

/// One service's traffic: the sum over its tasks, and each task's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceReport {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
    pub active_connections: u64,
    pub inactive_connections: u64,
    /// Frames of the service this node dropped: its tasks' drops, and those of new
    /// connections refused before a task was picked (none could take it, or the source was
    /// over its new-flow rate), which no task is blamed for.
    pub dropped: u64,
    /// Tasks that take new connections.
    pub eligible: u64,
    pub tasks: Vec<TaskReport>,
}

/// The answer to [`Command::Stats`]: everything `meshctl stats` and Prometheus show, built by
/// meshd from the counters its threads publish (never behind a state change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsReport {
    pub node: String,
    /// The generation of the table the workers run.
    pub generation: u64,
    pub workers: Vec<WorkerReport>,
    /// The sum over the workers.
    pub total: WorkerReport,
    pub burst_latency_ns: LatencyReport,
    pub services: Vec<ServiceReport>,
    /// The host side's counters; absent when meshd runs no host thread.
    #[serde(default)]
    pub host: Option<HostCounters>,
    /// The DPDK devices and mbufs (`meshd --io dpdk`); absent on other ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpdk: Option<DpdkReport>,
}

/// What the DPDK poll-mode drivers report of a device, read when asked (not from the workers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceReport {
    /// `uplink` or `tasks`.
    pub port: String,
    /// The device's DPDK name (a vdev's name or a PCI address).
    pub name: String,
    pub driver: String,
    pub link_up: bool,
    pub speed_mbps: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Frames the device dropped because no RX descriptor was free (the workers fell behind).
    pub rx_missed: u64,
    /// Frames the device received in error (bad FCS, too long, ...).
    pub rx_errors: u64,
    /// Frames the device failed to send.
    pub tx_errors: u64,
    /// Frames dropped because the PMD found no mbuf to receive into.
    pub rx_nombuf: u64,
}

/// The DPDK devices and the workers' mbuf pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpdkReport {
    pub devices: Vec<DeviceReport>,
    /// Mbufs taken from the workers' pools: what the devices' RX rings hold, plus any in flight
    /// or leaked (meshd copies frames in and out within a burst, so this stays at what the
    /// rings hold).
    pub mbufs_in_use: u64,
    /// The pools' size.
    pub mbufs: u64,
}

// ---------------------------------------------------------------------------------------------
// Connections: `conn-ls` and `conn-rm`.

/// Most connections one `conn-ls` answer lists.
pub const MAX_CONN_ROWS: u32 = 100_000;

/// A connection's state, in IPVS's and conntrack's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnState {
    /// TCP, nothing seen yet that moves the state.
    None,
    /// The client's SYN went through.
    SynSent,
    /// The task answered with SYN-ACK.
    SynRecv,
    /// The handshake finished: an active connection, as IPVS counts them.
    Established,
    /// One side sent FIN.
    FinWait,
    /// Both sides sent FIN, or one sent RST.
    Close,
    /// A UDP flow (no states).
    Udp,
}

impl ConnState {
    pub const ALL: [ConnState; 7] = [
        ConnState::None,
        ConnState::SynSent,
        ConnState::SynRecv,
        ConnState::Established,
        ConnState::FinWait,
        ConnState::Close,
        ConnState::Udp,
    ];

    /// The name `conn ls` prints and `--state` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::None => "NONE",
            ConnState::SynSent => "SYN_SENT",
            ConnState::SynRecv => "SYN_RECV",
            ConnState::Established => "ESTABLISHED",
            ConnState::FinWait => "FIN_WAIT",
            ConnState::Close => "CLOSE",
            ConnState::Udp => "UDP",
        }
    }
}

impl fmt::Display for ConnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConnState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let up = s.to_ascii_uppercase().replace('-', "_");
        ConnState::ALL
            .into_iter()
            .find(|c| c.as_str() == up)
            .ok_or_else(|| {
                let all: Vec<&str> = ConnState::ALL.iter().map(|c| c.as_str()).collect();
                format!(
                    "{s:?} is not a connection state (one of {})",
                    all.join(", ")
                )
            })
    }
}

/// Which connections a `conn-ls` or `conn-rm` means: all criteria given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnFilter {
    /// Connections balanced to this service's tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Connections balanced to this task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Connections whose client address is in this prefix (`/32` or `/128` for one client);
    /// an IPv4 prefix never holds an IPv6 client, nor the other way round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<crate::model::ClientNet>,
    /// Connections in one of these states (any state when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<ConnState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

impl ConnFilter {
    /// Whether the filter names nothing (matches every connection).
    pub fn is_empty(&self) -> bool {
        *self == ConnFilter::default()
    }
}

/// What made a connection's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnKind {
    /// A client reached a published port of this node.
    Ingress,
    /// A local task reached a service VIP.
    Vip,
    /// On a task's node, with `--client-ip keep`: the way back to an outside client.
    Return,
}

/// One connection, as one worker's flow table holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conn {
    pub protocol: Protocol,
    pub kind: ConnKind,
    /// The client, as it sent its packets (an IPv6 client to a published port, or a task's
    /// connection to a VIP's IPv6 twin: its IPv6 address).
    pub client: std::net::SocketAddr,
    /// The address the client reached: the node's published port (on its IPv6 address for an
    /// IPv6 client) or a service VIP (its IPv6 twin when the client connected to that).
    pub service_addr: std::net::SocketAddr,
    /// The service and task it is balanced to (absent when the task is gone).
    pub service: Option<String>,
    pub task: Option<String>,
    /// The task's address and target port (its IPv6 twin for a connection to a VIP's twin;
    /// an IPv6 client of a published port reaches the task over IPv4).
    pub task_addr: std::net::SocketAddr,
    /// The source the task sees: the masquerade address and port, or the client's own (IPv6
    /// as `task_addr` is).
    pub source: std::net::SocketAddr,
    pub state: ConnState,
    /// Milliseconds since the last packet either way.
    pub idle_ms: u64,
    /// Milliseconds until it expires, idle (the timeout in force, less the idle time).
    pub expires_ms: u64,
    /// From the client towards the task; absent unless meshd counts them
    /// (`--flow-accounting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// From the task back to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// The worker whose flow table holds it.
    pub worker: u16,
}

/// At least this often a capture's stream sends a chunk, frames or none: the client knows
/// the node is there, and the node finds out soon when the client has gone.
pub const CAPTURE_HEARTBEAT_MS: u64 = 500;

/// The longest a captured frame's copy can be (the whole of meshd's largest frame).
pub const CAPTURE_MAX_SNAPLEN: u32 = 2048;

/// The shortest `snaplen` a capture takes: the Ethernet, IPv4 and TCP headers with options.
pub const CAPTURE_MIN_SNAPLEN: u32 = 96;

/// Which ports a capture copies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapturePorts {
    /// The uplink and the tasks port.
    #[default]
    All,
    /// The underlay NIC: clients and peer nodes' VXLAN.
    Uplink,
    /// The local tasks' segment.
    Tasks,
}

/// What `capture` copies, and until when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureSpec {
    /// The node that should answer: another node's daemon refuses (`not-found`), so a client
    /// can send to every socket it knows and hear from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub ports: CapturePorts,
    /// A libpcap filter expression (tcpdump's syntax, `man pcap-filter`) over the frames as
    /// the pipeline sees them (Ethernet, without the tasks port's VLAN tag). Empty: every
    /// frame.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub filter: String,
    /// Bytes kept of each frame ([`CAPTURE_MIN_SNAPLEN`] to [`CAPTURE_MAX_SNAPLEN`]; absent:
    /// whole frames).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snaplen: Option<u32>,
    /// Stop after this many frames (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Stop after this many milliseconds (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// Where a captured frame was seen: before the pipeline (received, before any translation)
/// or after it (sent, translated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureDirection {
    /// Received on the port, before translation.
    Rx,
    /// Sent on the port, after translation (or made by meshd: ARP, RSTs, ICMP).
    Tx,
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedFrame {
    /// Microseconds since the Unix epoch (the worker's loop time: frames of one burst share
    /// it).
    pub time_us: u64,
    pub worker: u16,
    /// `uplink` or `tasks`.
    pub port: CapturePorts,
    pub direction: CaptureDirection,
    /// The tasks port's VLAN the frame came in or goes out on (0: none); the copy is
    /// untagged.
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub vlan: u16,
    /// The frame's whole length (the copy may be shorter: `snaplen`).
    pub len: u32,
    /// The copy, in base64.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

/// Bytes as a base64 string in JSON.
mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// How a capture began: the first chunk of its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaptureStart {
    pub node: String,
    pub workers: u16,
    pub snaplen: u32,
    /// The filter, as given.
    pub filter: String,
}

/// Why a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureStop {
    /// `count` frames were captured.
    Count,
    /// `duration_ms` passed.
    Duration,
    /// meshd is stopping.
    Shutdown,
}

/// One line of a capture's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaptureChunk {
    /// On the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<CaptureStart>,
    /// Frames copied since the previous chunk, in time order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<CapturedFrame>,
    /// So far: frames the filter matched, on every worker.
    pub matched: u64,
    /// So far: matched frames not copied because the worker's capture ring was full (the
    /// client or the control thread did not keep up). The frames themselves went on.
    pub missed: u64,
    /// On the last chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<CaptureStop>,
}

/// The answer to `conn-ls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnList {
    pub node: String,
    /// Connections the filter matched on every worker (more than listed when `limit` cut).
    pub matched: u64,
    /// The first `limit` of them, by worker, then by place in its table.
    pub connections: Vec<Conn>,
}

/// The answer to `conn-rm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnRemoved {
    pub node: String,
    /// Connections ended (their flows removed).
    pub removed: u64,
    /// Of those, TCP connections whose client a RST was queued for (`resets_sent` and
    /// `resets_unsent` in `stats` say what became of them).
    pub reset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeSet;

    #[test]
    fn a_worker_report_keeps_its_to_host_counter_beside_the_breakdown() {
        let mut w = WorkerReport::default();
        w.counters.to_host = 5;
        w.to_host.insert("arp".into(), 2);
        w.to_host.insert("mesh_address".into(), 3);
        let text = serde_json::to_string(&w).unwrap();
        assert_eq!(text.matches("\"to_host\":").count(), 1, "{text}");
        assert!(text.contains("\"to_host\":5"), "{text}");
        assert!(
            text.contains("\"to_host_by_reason\":{\"arp\":2,\"mesh_address\":3}"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<WorkerReport>(&text).unwrap(), w);
    }

    #[test]
    fn requests_look_like_the_documentation() {
        let r = Request::new(Command::Change(Change::ServiceScale {
            name: "web".into(),
            replicas: 1,
        }));
        assert_eq!(
            r.to_line().unwrap(),
            "{\"version\":1,\"command\":\"service-scale\",\"name\":\"web\",\"replicas\":1}\n"
        );
        let r = Request::new(Command::Query(Query::ServiceLs {}));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"version":1,"command":"service-ls"}"#
        );
        let r = Request::new(Command::Change(Change::NodeUpdate {
            name: "n2".into(),
            availability: Availability::Drain,
        }));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"version":1,"command":"node-update","name":"n2","availability":"drain"}"#
        );
    }

    #[test]
    fn every_command_round_trips() {
        let svc = Service::new("web");
        let net = Network {
            subnet6: None,
            name: "appnet".into(),
            vni: 4097,
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            ingress: false,
            endpoints: BTreeMap::new(),
            mtu: None,
            encryption: None,
        };
        let node = Node {
            name: "n1".into(),
            addr: Ipv4Addr::new(192, 168, 1, 11),
            vtep: None,
            addr6: None,
            vtep_port: 4789,
            availability: Availability::Active,
        };
        let update = ServiceUpdate {
            publish_rm: vec!["8080/udp".parse().unwrap()],
            task_update: vec![TaskUpdate {
                name: "web.1".into(),
                weight: Some(0),
                state: None,
            }],
            timeouts: Some(TimeoutsUpdate {
                udp: Some(60),
                ..TimeoutsUpdate::default()
            }),
            health: Some(HealthCheck::default()),
            ..ServiceUpdate::default()
        };
        let all = vec![
            Command::Change(Change::NetworkCreate { network: net }),
            Command::Change(Change::NetworkRm {
                name: "appnet".into(),
            }),
            Command::Change(Change::NetworkUpdate {
                name: "appnet".into(),
                update: NetworkUpdate {
                    key_add: Some(crate::model::NetworkKey {
                        id: 2,
                        key: Some(crate::model::Secret([3; 32])),
                    }),
                    key_primary: Some(2),
                },
            }),
            Command::Query(Query::NetworkLs {}),
            Command::Query(Query::NetworkInspect {
                name: "appnet".into(),
            }),
            Command::Change(Change::NodeAdd {
                node,
                endpoints: BTreeMap::from([("ingress".into(), Ipv4Addr::new(10, 0, 0, 2))]),
            }),
            Command::Change(Change::NodeRm { name: "n1".into() }),
            Command::Change(Change::NodeUpdate {
                name: "n1".into(),
                availability: Availability::Drain,
            }),
            Command::Query(Query::NodeLs {}),
            Command::Change(Change::ServiceCreate { service: svc }),
            Command::Change(Change::ServiceUpdate {
                name: "web".into(),
                update,
            }),
            Command::Change(Change::ServiceScale {
                name: "web".into(),
                replicas: 3,
            }),
            Command::Change(Change::ServiceRm { name: "web".into() }),
            Command::Query(Query::ServiceLs {}),
            Command::Query(Query::ServiceInspect { name: "web".into() }),
            Command::Query(Query::ServicePs { name: "web".into() }),
            Command::Query(Query::Stats {}),
            Command::Query(Query::State {}),
            Command::Query(Query::ConnLs {
                filter: ConnFilter {
                    service: Some("web".into()),
                    client: Some("10.1.0.0/16".parse().unwrap()),
                    state: vec![ConnState::Established, ConnState::Udp],
                    ..ConnFilter::default()
                },
                limit: 10,
            }),
            Command::Runtime(Runtime::ConnRm {
                filter: ConnFilter {
                    task: Some("web.1".into()),
                    ..ConnFilter::default()
                },
                all: false,
            }),
            Command::Runtime(Runtime::Capture {
                spec: CaptureSpec {
                    node: Some("n1".into()),
                    ports: CapturePorts::Tasks,
                    filter: "tcp port 80".into(),
                    snaplen: Some(128),
                    count: Some(10),
                    duration_ms: Some(5000),
                },
            }),
        ];
        // Every command is here.
        let names: BTreeSet<&str> = all.iter().map(|c| c.name()).collect();
        let every: BTreeSet<&str> = Query::NAMES
            .iter()
            .chain(Runtime::NAMES)
            .chain(Change::NAMES)
            .copied()
            .collect();
        assert_eq!(names, every);
        for c in all {
            let line = Request::new(c.clone()).to_line().unwrap();
            assert!(
                line.contains(&format!("\"command\":\"{}\"", c.name())),
                "{line}"
            );
            let back = parse_request(line.trim_end().as_bytes()).unwrap();
            assert_eq!(back.command, c);
            let reads = matches!(
                c.name(),
                "network-ls"
                    | "network-inspect"
                    | "node-ls"
                    | "service-ls"
                    | "service-inspect"
                    | "service-ps"
                    | "stats"
                    | "state"
                    | "conn-ls"
                    // Act on the running dataplane: no state change, no generation.
                    | "conn-rm"
                    | "capture"
            );
            assert_eq!(c.changes_state(), !reads, "{}", c.name());
        }
    }

    #[test]
    fn bad_requests_get_typed_errors() {
        let code = |s: &str| parse_request(s.as_bytes()).unwrap_err().code;
        assert_eq!(code("{not json"), ErrorCode::BadRequest);
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"command":"service-ls"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"version":2,"command":"service-ls"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code(r#"{"version":"1","command":"service-ls"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"version":1,"command":"service-frobnicate"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"version":1}"#), ErrorCode::BadRequest);
        // Unknown fields are refused, for commands with and without fields.
        assert_eq!(
            code(r#"{"version":1,"command":"service-rm","name":"web","force":true}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"version":1,"command":"service-ls","filter":"x"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(
                r#"{"version":1,"command":"service-update","name":"web","update":{"replicas":3}}"#
            ),
            ErrorCode::BadRequest
        );
        let e = parse_request(br#"{"version":1,"command":"service-frobnicate"}"#).unwrap_err();
        assert!(e.message.contains("service-frobnicate"), "{}", e.message);
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(parse_request(&big).unwrap_err().code, ErrorCode::TooLarge);
    }

    #[test]
    fn responses_have_the_documented_shape() {
        let ok = Response::ok(7, json!({"name": "web"}));
        assert_eq!(
            ok.to_line(),
            "{\"ok\":true,\"generation\":7,\"result\":{\"name\":\"web\"}}\n"
        );
        let err = Response::error(ErrorCode::NotFound, "service \"web\" not found");
        assert_eq!(
            err.to_line(),
            "{\"ok\":false,\"error\":{\"code\":\"not-found\",\"message\":\"service \\\"web\\\" not found\"}}\n"
        );
        for r in [ok, err] {
            let back: Response = serde_json::from_str(r.to_line().trim_end()).unwrap();
            assert_eq!(back, r);
        }
        let null: Response = serde_json::from_str(r#"{"ok":true,"generation":1}"#).unwrap();
        assert_eq!(null, Response::ok(1, Value::Null));
        assert!(serde_json::from_str::<Response>(r#"{"ok":true}"#).is_err());
        assert!(serde_json::from_str::<Response>(r#"{"ok":false}"#).is_err());
        assert!(serde_json::from_str::<Response>(
            r#"{"ok":false,"error":{"code":"nope","message":""}}"#
        )
        .is_err());
        for (c, s) in [
            (ErrorCode::BadRequest, "bad-request"),
            (ErrorCode::UnsupportedVersion, "unsupported-version"),
            (ErrorCode::NotFound, "not-found"),
            (ErrorCode::Conflict, "conflict"),
            (ErrorCode::Invalid, "invalid"),
            (ErrorCode::TooLarge, "too-large"),
            (ErrorCode::Internal, "internal"),
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(s));
            assert_eq!(c.as_str(), s);
        }
    }

    #[test]
    fn port_specs_parse() {
        assert_eq!(
            "8080".parse::<PortSpec>().unwrap(),
            PortSpec {
                published: 8080,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!("53/udp".parse::<PortSpec>().unwrap().to_string(), "53/udp");
        assert!("0".parse::<PortSpec>().is_err());
        assert!("http".parse::<PortSpec>().is_err());
        assert!("53/sctp"
            .parse::<PortSpec>()
            .unwrap_err()
            .0
            .contains("sctp"));
    }

    #[test]
    fn lines_are_read_within_the_limit() {
        let mut r = io::Cursor::new(b"abc\r\n\nxyz".to_vec());
        assert_eq!(read_line(&mut r, 16).unwrap(), Some(b"abc".to_vec()));
        assert_eq!(read_line(&mut r, 16).unwrap(), Some(Vec::new()));
        assert_eq!(read_line(&mut r, 16).unwrap(), Some(b"xyz".to_vec()));
        assert_eq!(read_line(&mut r, 16).unwrap(), None);

        // An oversized line is skipped whole, and the next one is read; a small BufReader
        // capacity makes it arrive in pieces.
        let data = format!("{}\nok\n{}", "x".repeat(100), "y".repeat(17));
        let mut r = io::BufReader::with_capacity(7, io::Cursor::new(data.into_bytes()));
        assert!(matches!(
            read_line(&mut r, 16),
            Err(FrameError::TooLarge { limit: 16 })
        ));
        assert_eq!(read_line(&mut r, 16).unwrap(), Some(b"ok".to_vec()));
        assert!(matches!(
            read_line(&mut r, 16),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(read_line(&mut r, 16).unwrap(), None);
        // Exactly at the limit is fine, one more is not.
        let mut r = io::Cursor::new(b"0123456789abcdef\n0123456789abcdefg\n".to_vec());
        assert_eq!(read_line(&mut r, 16).unwrap().unwrap().len(), 16);
        assert!(read_line(&mut r, 16).is_err());
    }
}
