//! Fleet wire protocol (SPEC 3) between the agent in `citrusd` and the hub, `citrus-engine`.
//!
//! WebSocket, one JSON object per text frame, tagged by a snake_case `type` field. Every
//! engine command carries a string `id` and every reply repeats it. Engine frames enter
//! through [`parse_engine`], which also checks the fields that end up in commands
//! (domains, commit ids, keys).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::deploy::Phase;

/// Version of this protocol, sent as [`HEADER_PROTOCOL`].
pub const PROTOCOL_VERSION: u32 = 1;
/// Handshake header naming the kind of client; the agent sends [`CLIENT_TYPE_AGENT`].
pub const HEADER_CLIENT_TYPE: &str = "x-client-type";
/// Value of [`HEADER_CLIENT_TYPE`] for an agent.
pub const CLIENT_TYPE_AGENT: &str = "agent";
/// Handshake header carrying the agent's id.
pub const HEADER_AGENT_ID: &str = "x-agent-id";
/// Handshake header carrying the agent's key.
pub const HEADER_AGENT_KEY: &str = "x-agent-key";
/// Handshake header carrying [`PROTOCOL_VERSION`].
pub const HEADER_PROTOCOL: &str = "x-citrus-protocol";

/// Max frame size the agent accepts from the engine (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;

/// Progress of an operation started by an engine command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    Starting,
    Completed,
    Failed,
}

/// What a site operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteAction {
    Create,
    Delete,
}

/// What an app operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppAction {
    Start,
    Stop,
    Restart,
}

/// CPU usage: `load` in percent, `cores` the number of logical CPUs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuStatus {
    pub load: f64,
    pub cores: u32,
}

/// Memory in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStatus {
    pub total: u64,
    pub used: u64,
    pub free: u64,
}

/// One mounted filesystem, sizes in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub fs: String,
    pub size: u64,
    pub used: u64,
    pub available: u64,
}

/// The lifecycle state of one app instance (as the supervisor's [`crate::control::AppState`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    Starting,
    Online,
    Stopping,
    Stopped,
    Backoff,
    Errored,
}

/// How the previous run of an instance ended. `signal` is a name such as `"SIGKILL"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub at_ms: u64,
}

/// One app instance in [`HostStatus`]. The wire's own type, made from the control API's
/// [`crate::control::AppStatus`], so that a change to the control API cannot change this protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub instance: u32,
    pub pid: Option<u32>,
    pub state: AppState,
    pub restarts: u32,
    pub unstable_restarts: u32,
    pub memory_restarts: u32,
    pub uptime_ms: u64,
    pub memory_bytes: u64,
    pub cpu_percent: f64,
    pub last_exit: Option<LastExit>,
    /// The release `current` points at, for an app with `[deploy]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

impl From<crate::control::AppState> for AppState {
    fn from(state: crate::control::AppState) -> Self {
        use crate::control::AppState as Control;
        match state {
            Control::Starting => Self::Starting,
            Control::Online => Self::Online,
            Control::Stopping => Self::Stopping,
            Control::Stopped => Self::Stopped,
            Control::Backoff => Self::Backoff,
            Control::Errored => Self::Errored,
        }
    }
}

impl From<&crate::control::LastExit> for LastExit {
    fn from(e: &crate::control::LastExit) -> Self {
        LastExit {
            code: e.code,
            signal: e.signal.clone(),
            at_ms: e.at_ms,
        }
    }
}

impl From<&crate::control::AppStatus> for AppStatus {
    fn from(a: &crate::control::AppStatus) -> Self {
        AppStatus {
            name: a.name.clone(),
            instance: a.instance,
            pid: a.pid,
            state: a.state.into(),
            restarts: a.restarts,
            unstable_restarts: a.unstable_restarts,
            memory_restarts: a.memory_restarts,
            uptime_ms: a.uptime_ms,
            memory_bytes: a.memory_bytes,
            cpu_percent: a.cpu_percent,
            last_exit: a.last_exit.as_ref().map(LastExit::from),
            release: a.release.clone(),
        }
    }
}

/// The host snapshot sent in [`AgentMessage::StatusUpdate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    pub hostname: String,
    /// Host uptime in seconds.
    pub uptime: u64,
    /// Serialised as `null` when unknown.
    pub git_version: Option<String>,
    /// SHA-256 (64 lowercase hex) of the citrusd binary running; absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_sha256: Option<String>,
    pub cpu: CpuStatus,
    pub memory: MemoryStatus,
    pub disk: Vec<DiskStatus>,
    pub apps: Vec<AppStatus>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
}

/// A message from the agent to the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum AgentMessage {
    /// First message after connecting. `gitVersion` is serialised as `null` when unknown.
    AgentConnected {
        agent_id: String,
        version: String,
        git_version: Option<String>,
        /// SHA-256 (64 lowercase hex) of the citrusd binary running; absent from older agents.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary_sha256: Option<String>,
    },
    /// Periodic host and app status.
    StatusUpdate { status: HostStatus },
    /// Progress of a `create_site` / `delete_site` command.
    SiteOperation {
        id: String,
        operation: SiteAction,
        status: OperationStatus,
        domain: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Progress of a `rotate_key` command.
    KeyRotation {
        id: String,
        status: OperationStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Progress of an `update_agent` command.
    UpdateOperation {
        id: String,
        status: OperationStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        git_version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Progress of a `rollback_agent` command; `commitId` repeats the commit asked for (empty
    /// for a rollback to the previous binary).
    RollbackOperation {
        id: String,
        status: OperationStatus,
        #[serde(default)]
        commit_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        git_version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Progress of an `app_control` command.
    AppOperation {
        id: String,
        app: String,
        action: AppAction,
        status: OperationStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Progress of a `deploy_app` command, sent at every phase: `status` is `starting` until the
    /// deployment ends, then `completed`, or `failed` (with `phase` `failed` or `rolled_back`).
    DeployOperation {
        id: String,
        app: String,
        phase: Phase,
        status: OperationStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Something that happened on the host, not tied to a command.
    Event {
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        app: Option<String>,
        message: String,
    },
    /// Reply to an engine frame the agent could not use; `id` is that frame's id when readable.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        error: String,
    },
}

impl AgentMessage {
    /// The JSON text of this message, ready to send as a text frame.
    pub fn to_text(&self) -> String {
        // Every field is a string, number, enum or JSON value with string keys: cannot fail.
        serde_json::to_string(self).expect("AgentMessage serialises to JSON")
    }
}

/// A command from the engine to the agent. Build it from a frame with [`parse_engine`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum EngineMessage {
    /// Create a site; `options` is an engine-defined JSON object.
    CreateSite {
        id: String,
        domain: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        options: Option<Map<String, Value>>,
    },
    /// Delete a site.
    DeleteSite { id: String, domain: String },
    /// Replace the agent key.
    RotateKey { id: String, new_key: String },
    /// Update the agent: with `sha256`, install that release from the engine
    /// (`/releases/<sha256>`); without, move the git checkout to the newest commit.
    UpdateAgent {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    /// Roll the agent back: to a commit of the checkout, or without `commitId` to the previous
    /// binary (`citrusd.prev`).
    RollbackAgent {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit_id: Option<String>,
    },
    /// Start, stop or restart an app.
    AppControl {
        id: String,
        app: String,
        action: AppAction,
    },
    /// Deploy an app, optionally at a git ref (field `ref`).
    DeployApp {
        id: String,
        app: String,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        git_ref: Option<String>,
    },
}

impl EngineMessage {
    /// Every engine message type name, as in the `type` field.
    pub const TYPES: &'static [&'static str] = &[
        "create_site",
        "delete_site",
        "rotate_key",
        "update_agent",
        "rollback_agent",
        "app_control",
        "deploy_app",
    ];

    /// The command id, to repeat in the reply.
    pub fn id(&self) -> &str {
        match self {
            Self::CreateSite { id, .. }
            | Self::DeleteSite { id, .. }
            | Self::RotateKey { id, .. }
            | Self::UpdateAgent { id, .. }
            | Self::RollbackAgent { id, .. }
            | Self::AppControl { id, .. }
            | Self::DeployApp { id, .. } => id,
        }
    }

    /// The `type` field of this message.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::CreateSite { .. } => "create_site",
            Self::DeleteSite { .. } => "delete_site",
            Self::RotateKey { .. } => "rotate_key",
            Self::UpdateAgent { .. } => "update_agent",
            Self::RollbackAgent { .. } => "rollback_agent",
            Self::AppControl { .. } => "app_control",
            Self::DeployApp { .. } => "deploy_app",
        }
    }
}

/// Why an engine frame was refused. [`ProtocolError::reply`] is the message to send back.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON, not an object, or no string `type` field.
    #[error("malformed message: {detail}")]
    Malformed { id: Option<String>, detail: String },
    /// A `type` this agent does not know.
    #[error("unknown message type {ty:?}")]
    UnknownType { ty: String, id: Option<String> },
    /// A known type with a missing or wrong field.
    #[error("invalid {ty} message: {detail}")]
    Invalid {
        ty: String,
        id: Option<String>,
        detail: String,
    },
    /// A binary frame; messages are JSON text frames.
    #[error("binary frames are not accepted: messages are JSON text frames")]
    NotText,
    /// A frame over [`MAX_FRAME`].
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
}

impl ProtocolError {
    /// The offending message's `id`, when it could be read.
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Malformed { id, .. }
            | Self::UnknownType { id, .. }
            | Self::Invalid { id, .. } => id.as_deref(),
            Self::NotText | Self::TooLarge { .. } => None,
        }
    }

    /// The `error` message answering the refused frame.
    pub fn reply(&self) -> AgentMessage {
        AgentMessage::Error {
            id: self.id().map(str::to_owned),
            error: self.to_string(),
        }
    }
}

/// Parses an engine frame. The error says precisely what is wrong and carries the message's
/// `id` when one could be read, so the agent can answer with [`AgentMessage::Error`].
///
/// Beyond the shape, it refuses a `domain` that fails [`validate_domain`] (and stores it
/// lowercased), a `commitId` that fails [`validate_commit`] (lowercased), and a `newKey`
/// that is empty or not printable ASCII (it is sent back as a header). Unknown fields are
/// ignored. Frames over [`MAX_FRAME`] bytes are refused before parsing.
pub fn parse_engine(text: &str) -> Result<EngineMessage, ProtocolError> {
    if text.len() > MAX_FRAME {
        return Err(ProtocolError::TooLarge {
            len: text.len(),
            max: MAX_FRAME,
        });
    }
    let value: Value = serde_json::from_str(text).map_err(|e| ProtocolError::Malformed {
        id: None,
        detail: format!("not JSON: {e}"),
    })?;
    let Value::Object(object) = &value else {
        return Err(ProtocolError::Malformed {
            id: None,
            detail: "not a JSON object".into(),
        });
    };
    let id = object.get("id").and_then(Value::as_str).map(str::to_owned);
    let ty = match object.get("type") {
        Some(Value::String(ty)) => ty.clone(),
        Some(_) => {
            return Err(ProtocolError::Malformed {
                id,
                detail: "field `type` is not a string".into(),
            })
        }
        None => {
            return Err(ProtocolError::Malformed {
                id,
                detail: "missing field `type`".into(),
            })
        }
    };
    if !EngineMessage::TYPES.contains(&ty.as_str()) {
        return Err(ProtocolError::UnknownType { ty, id });
    }
    let invalid = |detail: String| ProtocolError::Invalid {
        ty: ty.clone(),
        id: id.clone(),
        detail,
    };
    let mut message: EngineMessage =
        serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    check_fields(&mut message).map_err(invalid)?;
    Ok(message)
}

/// Validates and normalises the fields of `message` that reach commands or headers.
fn check_fields(message: &mut EngineMessage) -> Result<(), String> {
    match message {
        EngineMessage::CreateSite { domain, .. } | EngineMessage::DeleteSite { domain, .. } => {
            *domain = validate_domain(domain).map_err(|e| format!("field `domain`: {e}"))?;
        }
        EngineMessage::RollbackAgent {
            commit_id: Some(commit_id),
            ..
        } => {
            *commit_id =
                validate_commit(commit_id).map_err(|e| format!("field `commitId`: {e}"))?;
        }
        EngineMessage::UpdateAgent {
            sha256: Some(sha256),
            ..
        } => {
            *sha256 = validate_sha256(sha256).map_err(|e| format!("field `sha256`: {e}"))?;
        }
        EngineMessage::RotateKey { new_key, .. } => {
            if new_key.is_empty() || !new_key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(
                    "field `newKey`: must be non-empty printable ASCII without spaces".into(),
                );
            }
        }
        EngineMessage::UpdateAgent { .. }
        | EngineMessage::RollbackAgent { .. }
        | EngineMessage::AppControl { .. }
        | EngineMessage::DeployApp { .. } => {}
    }
    Ok(())
}

/// A release's SHA-256: exactly 64 hex digits (any case). Returns it lowercased.
pub fn validate_sha256(sha256: &str) -> Result<String, String> {
    if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha256.to_ascii_lowercase())
    } else {
        Err(format!(
            "{:?} is not a SHA-256: give the 64 hex digits of a release (GET /admin/releases)",
            sha256.chars().take(80).collect::<String>()
        ))
    }
}

/// A domain as a DNS name: 1..=253 chars total, labels 1..=63 of [a-z0-9-] (ASCII,
/// case-insensitive; stored lowercase), not starting or ending with '-', at least two labels,
/// the last label not all-numeric; no trailing dot, no "..", no leading '-'.
/// Returns the normalised (lowercase) domain or a message saying what is wrong.
pub fn validate_domain(domain: &str) -> Result<String, String> {
    if domain.is_empty() {
        return Err("domain is empty".into());
    }
    if domain.len() > 253 {
        return Err(format!(
            "domain is {} bytes long, the limit is 253",
            domain.len()
        ));
    }
    if let Some(c) = domain
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "domain contains {c:?}: only letters, digits, '-' and '.' are allowed"
        ));
    }
    let domain = domain.to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err("domain has an empty label (leading or trailing '.', or \"..\")".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "domain label is {} chars long, the limit is 63",
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("domain label {label:?} starts or ends with '-'"));
        }
    }
    if labels.len() < 2 {
        return Err("domain needs at least two labels, as in example.com".into());
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("domain's last label is all digits (an IP address is not a domain)".into());
    }
    Ok(domain)
}

/// A git commit id: 7..=40 hex chars (lowercased). "HEAD~1", "--upload-pack=x", "main" are refused.
pub fn validate_commit(id: &str) -> Result<String, String> {
    if let Some(c) = id.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "commit id contains {c:?}: it must be 7 to 40 hex digits"
        ));
    }
    if !(7..=40).contains(&id.len()) {
        return Err(format!(
            "commit id is {} hex digits long, it must be 7 to 40",
            id.len()
        ));
    }
    Ok(id.to_ascii_lowercase())
}

/// The longest git ref a deployment accepts.
pub const MAX_REF_LEN: usize = 200;

/// A git ref to deploy (a branch, a tag or a commit id), as `deploy_app`, the control API and
/// `citrusctl deploy --ref` take it: 1..=200 characters of what git allows in a ref name, never
/// starting with `-` (an option to git), without `..`, `:`, `@{`, `\\`, whitespace or control
/// characters, and not ending in `/`, `.` or `.lock`. Returns it unchanged or what is wrong.
pub fn validate_git_ref(r: &str) -> Result<String, String> {
    let invalid = |why: &str| Err(format!("invalid ref {r:?}: {why}"));
    if r.is_empty() {
        return invalid("it is empty");
    }
    if r.len() > MAX_REF_LEN {
        return invalid(&format!(
            "it is {} bytes long, the limit is {MAX_REF_LEN}",
            r.len()
        ));
    }
    if r.starts_with('-') {
        return invalid("it cannot start with `-`");
    }
    if let Some(c) = r
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(*c))
    {
        return invalid(&format!("it contains {c:?}"));
    }
    for bad in ["..", "@{", "//", "/."] {
        if r.contains(bad) {
            return invalid(&format!("it contains {bad:?}"));
        }
    }
    if r.starts_with('/')
        || r.starts_with('.')
        || r.ends_with('/')
        || r.ends_with('.')
        || r.ends_with(".lock")
        || r == "@"
    {
        return invalid("it cannot start with `/` or `.`, or end with `/`, `.` or `.lock`");
    }
    Ok(r.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn git_refs() {
        for ok in [
            "main",
            "v1.2.3",
            "feature/x-y",
            "0123abc",
            "release_2026.12",
        ] {
            assert_eq!(validate_git_ref(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "-x",
            "--upload-pack=sh",
            "a..b",
            "a:b",
            "a b",
            "a\tb",
            "a\nb",
            "x/",
            "x.lock",
            "a@{1}",
            "/abs",
            ".hidden",
            "a\\b",
            "a~1",
            "a^",
            "a?",
            "a*",
            "a[",
            "@",
        ] {
            assert!(validate_git_ref(bad).is_err(), "{bad:?}");
        }
        assert!(validate_git_ref(&"a".repeat(201)).is_err());
    }

    fn to_value(message: &AgentMessage) -> Value {
        serde_json::from_str(&message.to_text()).unwrap()
    }

    fn check_agent(message: AgentMessage, expected: Value) {
        assert_eq!(to_value(&message), expected);
        // And the engine side reads it back unchanged.
        let back: AgentMessage = serde_json::from_value(expected).unwrap();
        assert_eq!(back, message);
    }

    #[test]
    fn agent_connected() {
        check_agent(
            AgentMessage::AgentConnected {
                agent_id: "a1".into(),
                version: "0.3.0".into(),
                git_version: Some("abc1234".into()),
                binary_sha256: Some("ab".repeat(32)),
            },
            json!({"type": "agent_connected", "agentId": "a1", "version": "0.3.0", "gitVersion": "abc1234", "binarySha256": "ab".repeat(32)}),
        );
        check_agent(
            AgentMessage::AgentConnected {
                agent_id: "a1".into(),
                version: "0.3.0".into(),
                git_version: None,
                binary_sha256: None,
            },
            json!({"type": "agent_connected", "agentId": "a1", "version": "0.3.0", "gitVersion": null}),
        );
    }

    /// The wire's app row, made from the control API's, against the literal text it is sent as.
    #[test]
    fn app_status_wire_literal() {
        use crate::control::{self, assert_json_literal};
        let supervisor = control::AppStatus {
            name: "web".into(),
            instance: 1,
            pid: Some(42),
            state: control::AppState::Backoff,
            restarts: 3,
            unstable_restarts: 2,
            memory_restarts: 1,
            uptime_ms: 5000,
            memory_bytes: 1_048_576,
            cpu_percent: 1.5,
            last_exit: Some(control::LastExit {
                code: None,
                signal: Some("SIGKILL".into()),
                at_ms: 1_699_999_999_000,
            }),
            release: Some("20261206-120000-abc1234".into()),
        };
        let literal = r#"{"name":"web","instance":1,"pid":42,"state":"backoff","restarts":3,"unstable_restarts":2,"memory_restarts":1,"uptime_ms":5000,"memory_bytes":1048576,"cpu_percent":1.5,"last_exit":{"code":null,"signal":"SIGKILL","at_ms":1699999999000},"release":"20261206-120000-abc1234"}"#;
        assert_json_literal(&AppStatus::from(&supervisor), literal);
        // Without a release the field is absent; every state keeps its name.
        let bare = r#"{"name":"web","instance":0,"pid":null,"state":"stopped","restarts":0,"unstable_restarts":0,"memory_restarts":0,"uptime_ms":0,"memory_bytes":0,"cpu_percent":0.0,"last_exit":null}"#;
        let wire = AppStatus::from(&control::AppStatus {
            instance: 0,
            pid: None,
            state: control::AppState::Stopped,
            restarts: 0,
            unstable_restarts: 0,
            memory_restarts: 0,
            uptime_ms: 0,
            memory_bytes: 0,
            cpu_percent: 0.0,
            last_exit: None,
            release: None,
            ..supervisor
        });
        assert_json_literal(&wire, bare);
        for (state, name) in [
            (control::AppState::Starting, "\"starting\""),
            (control::AppState::Online, "\"online\""),
            (control::AppState::Stopping, "\"stopping\""),
            (control::AppState::Stopped, "\"stopped\""),
            (control::AppState::Backoff, "\"backoff\""),
            (control::AppState::Errored, "\"errored\""),
        ] {
            assert_json_literal(&AppState::from(state), name);
        }
    }

    #[test]
    fn status_update() {
        // A full row as the supervisor reports it.
        let app_json = json!({
            "name": "web", "instance": 0, "pid": 42, "state": "online",
            "restarts": 1, "unstable_restarts": 0, "memory_restarts": 0,
            "uptime_ms": 5000, "memory_bytes": 1_048_576, "cpu_percent": 1.5,
            "last_exit": {"code": 1, "signal": null, "at_ms": 1_699_999_999_000u64}
        });
        let app: AppStatus = serde_json::from_value(app_json.clone()).unwrap();
        check_agent(
            AgentMessage::StatusUpdate {
                status: HostStatus {
                    hostname: "h1".into(),
                    uptime: 3600,
                    git_version: None,
                    binary_sha256: Some("cd".repeat(32)),
                    cpu: CpuStatus {
                        load: 12.5,
                        cores: 4,
                    },
                    memory: MemoryStatus {
                        total: 8_000,
                        used: 3_000,
                        free: 5_000,
                    },
                    disk: vec![DiskStatus {
                        fs: "/dev/sda1".into(),
                        size: 100,
                        used: 40,
                        available: 60,
                    }],
                    apps: vec![app],
                    timestamp: 1_700_000_000_000,
                },
            },
            json!({
                "type": "status_update",
                "status": {
                    "hostname": "h1",
                    "uptime": 3600,
                    "gitVersion": null,
                    "binarySha256": "cd".repeat(32),
                    "cpu": {"load": 12.5, "cores": 4},
                    "memory": {"total": 8000, "used": 3000, "free": 5000},
                    "disk": [{"fs": "/dev/sda1", "size": 100, "used": 40, "available": 60}],
                    "apps": [app_json],
                    "timestamp": 1_700_000_000_000u64
                }
            }),
        );
    }

    #[test]
    fn site_operation() {
        check_agent(
            AgentMessage::SiteOperation {
                id: "1".into(),
                operation: SiteAction::Create,
                status: OperationStatus::Starting,
                domain: "example.com".into(),
                output: None,
                error: None,
            },
            json!({"type": "site_operation", "id": "1", "operation": "create", "status": "starting", "domain": "example.com"}),
        );
        check_agent(
            AgentMessage::SiteOperation {
                id: "1".into(),
                operation: SiteAction::Delete,
                status: OperationStatus::Failed,
                domain: "example.com".into(),
                output: Some("log".into()),
                error: Some("boom".into()),
            },
            json!({"type": "site_operation", "id": "1", "operation": "delete", "status": "failed", "domain": "example.com", "output": "log", "error": "boom"}),
        );
    }

    #[test]
    fn key_rotation() {
        check_agent(
            AgentMessage::KeyRotation {
                id: "2".into(),
                status: OperationStatus::Completed,
                error: None,
            },
            json!({"type": "key_rotation", "id": "2", "status": "completed"}),
        );
        check_agent(
            AgentMessage::KeyRotation {
                id: "2".into(),
                status: OperationStatus::Failed,
                error: Some("disk full".into()),
            },
            json!({"type": "key_rotation", "id": "2", "status": "failed", "error": "disk full"}),
        );
    }

    #[test]
    fn update_operation() {
        check_agent(
            AgentMessage::UpdateOperation {
                id: "3".into(),
                status: OperationStatus::Completed,
                git_version: Some("def5678".into()),
                output: Some("ok".into()),
                error: None,
            },
            json!({"type": "update_operation", "id": "3", "status": "completed", "gitVersion": "def5678", "output": "ok"}),
        );
        check_agent(
            AgentMessage::UpdateOperation {
                id: "3".into(),
                status: OperationStatus::Starting,
                git_version: None,
                output: None,
                error: None,
            },
            json!({"type": "update_operation", "id": "3", "status": "starting"}),
        );
    }

    #[test]
    fn rollback_operation() {
        check_agent(
            AgentMessage::RollbackOperation {
                id: "4".into(),
                status: OperationStatus::Failed,
                commit_id: "abc1234".into(),
                git_version: None,
                output: Some("out".into()),
                error: Some("no such commit".into()),
            },
            json!({"type": "rollback_operation", "id": "4", "status": "failed", "commitId": "abc1234", "output": "out", "error": "no such commit"}),
        );
        check_agent(
            AgentMessage::RollbackOperation {
                id: "4".into(),
                status: OperationStatus::Completed,
                commit_id: "abc1234".into(),
                git_version: Some("abc1234".into()),
                output: None,
                error: None,
            },
            json!({"type": "rollback_operation", "id": "4", "status": "completed", "commitId": "abc1234", "gitVersion": "abc1234"}),
        );
    }

    #[test]
    fn app_operation() {
        check_agent(
            AgentMessage::AppOperation {
                id: "5".into(),
                app: "web".into(),
                action: AppAction::Restart,
                status: OperationStatus::Completed,
                output: None,
                error: None,
            },
            json!({"type": "app_operation", "id": "5", "app": "web", "action": "restart", "status": "completed"}),
        );
        check_agent(
            AgentMessage::AppOperation {
                id: "5".into(),
                app: "web".into(),
                action: AppAction::Stop,
                status: OperationStatus::Failed,
                output: Some("o".into()),
                error: Some("e".into()),
            },
            json!({"type": "app_operation", "id": "5", "app": "web", "action": "stop", "status": "failed", "output": "o", "error": "e"}),
        );
    }

    #[test]
    fn deploy_operation() {
        check_agent(
            AgentMessage::DeployOperation {
                id: "6".into(),
                app: "web".into(),
                phase: Phase::Building,
                status: OperationStatus::Starting,
                release_id: Some("20261206T042200123Z".into()),
                commit: None,
                output: None,
                error: None,
            },
            json!({"type": "deploy_operation", "id": "6", "app": "web", "phase": "building", "status": "starting", "releaseId": "20261206T042200123Z"}),
        );
        check_agent(
            AgentMessage::DeployOperation {
                id: "6".into(),
                app: "web".into(),
                phase: Phase::RolledBack,
                status: OperationStatus::Failed,
                release_id: Some("20261206T042200123Z".into()),
                commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
                output: Some("built".into()),
                error: Some("probe failed".into()),
            },
            json!({"type": "deploy_operation", "id": "6", "app": "web", "phase": "rolled_back", "status": "failed", "releaseId": "20261206T042200123Z", "commit": "0123456789abcdef0123456789abcdef01234567", "output": "built", "error": "probe failed"}),
        );
    }

    #[test]
    fn event() {
        check_agent(
            AgentMessage::Event {
                kind: "crash".into(),
                app: Some("web".into()),
                message: "exited with code 1".into(),
            },
            json!({"type": "event", "kind": "crash", "app": "web", "message": "exited with code 1"}),
        );
        check_agent(
            AgentMessage::Event {
                kind: "disk_low".into(),
                app: None,
                message: "/ at 95%".into(),
            },
            json!({"type": "event", "kind": "disk_low", "message": "/ at 95%"}),
        );
    }

    #[test]
    fn error_message() {
        check_agent(
            AgentMessage::Error {
                id: Some("7".into()),
                error: "bad".into(),
            },
            json!({"type": "error", "id": "7", "error": "bad"}),
        );
        check_agent(
            AgentMessage::Error {
                id: None,
                error: "bad".into(),
            },
            json!({"type": "error", "error": "bad"}),
        );
    }

    fn parse_ok(text: &str, expected: EngineMessage) {
        let message = parse_engine(text).unwrap();
        assert_eq!(message, expected);
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(message.type_name(), value["type"]);
        assert_eq!(message.id(), value["id"]);
    }

    #[test]
    fn parse_each_engine_message() {
        let mut options = Map::new();
        options.insert("php".into(), json!("8.3"));
        options.insert("ssl".into(), json!(true));
        parse_ok(
            r#"{"type":"create_site","id":"c1","domain":"Example.COM","options":{"php":"8.3","ssl":true}}"#,
            EngineMessage::CreateSite {
                id: "c1".into(),
                domain: "example.com".into(),
                options: Some(options),
            },
        );
        parse_ok(
            r#"{"type":"create_site","id":"c2","domain":"a.example.com"}"#,
            EngineMessage::CreateSite {
                id: "c2".into(),
                domain: "a.example.com".into(),
                options: None,
            },
        );
        parse_ok(
            r#"{"type":"delete_site","id":"d1","domain":"example.com"}"#,
            EngineMessage::DeleteSite {
                id: "d1".into(),
                domain: "example.com".into(),
            },
        );
        parse_ok(
            r#"{"type":"rotate_key","id":"k1","newKey":"s3cr3t-KEY"}"#,
            EngineMessage::RotateKey {
                id: "k1".into(),
                new_key: "s3cr3t-KEY".into(),
            },
        );
        parse_ok(
            r#"{"type":"update_agent","id":"u1"}"#,
            EngineMessage::UpdateAgent {
                id: "u1".into(),
                sha256: None,
            },
        );
        parse_ok(
            r#"{"type":"rollback_agent","id":"r1","commitId":"ABCDEF1"}"#,
            EngineMessage::RollbackAgent {
                id: "r1".into(),
                commit_id: Some("abcdef1".into()),
            },
        );
        parse_ok(
            r#"{"type":"rollback_agent","id":"r2"}"#,
            EngineMessage::RollbackAgent {
                id: "r2".into(),
                commit_id: None,
            },
        );
        let upper = "AB".repeat(32);
        parse_ok(
            &format!(r#"{{"type":"update_agent","id":"u3","sha256":"{upper}"}}"#),
            EngineMessage::UpdateAgent {
                id: "u3".into(),
                sha256: Some("ab".repeat(32)),
            },
        );
        for (word, action) in [
            ("start", AppAction::Start),
            ("stop", AppAction::Stop),
            ("restart", AppAction::Restart),
        ] {
            parse_ok(
                &format!(r#"{{"type":"app_control","id":"a1","app":"web","action":"{word}"}}"#),
                EngineMessage::AppControl {
                    id: "a1".into(),
                    app: "web".into(),
                    action,
                },
            );
        }
        parse_ok(
            r#"{"type":"deploy_app","id":"p1","app":"web","ref":"v1.2"}"#,
            EngineMessage::DeployApp {
                id: "p1".into(),
                app: "web".into(),
                git_ref: Some("v1.2".into()),
            },
        );
        parse_ok(
            r#"{"type":"deploy_app","id":"p2","app":"web"}"#,
            EngineMessage::DeployApp {
                id: "p2".into(),
                app: "web".into(),
                git_ref: None,
            },
        );
        // Unknown extra fields are ignored.
        parse_ok(
            r#"{"type":"update_agent","id":"u2","future":1}"#,
            EngineMessage::UpdateAgent {
                id: "u2".into(),
                sha256: None,
            },
        );
    }

    #[test]
    fn engine_message_serialises_as_spec() {
        let message = EngineMessage::DeployApp {
            id: "p".into(),
            app: "web".into(),
            git_ref: Some("main".into()),
        };
        assert_eq!(
            serde_json::to_value(&message).unwrap(),
            json!({"type": "deploy_app", "id": "p", "app": "web", "ref": "main"})
        );
        let message = EngineMessage::RotateKey {
            id: "k".into(),
            new_key: "n".into(),
        };
        assert_eq!(
            serde_json::to_value(&message).unwrap(),
            json!({"type": "rotate_key", "id": "k", "newKey": "n"})
        );
    }

    #[test]
    fn create_site_floats_survive_parse_and_serialise_exactly() {
        // Without serde_json's `float_roundtrip` the first came back as 1.0 and the second as
        // 9007199254740994.0.
        for written in [
            "0.9999999999999999",
            "9007199254740993.0",
            "0.30000000000000004",
            "1.7976931348623157e308",
            "5e-324",
        ] {
            let want: f64 = written.parse().unwrap();
            let frame = format!(
                r#"{{"type":"create_site","id":"f","domain":"a.com","options":{{"x":{written}}}}}"#
            );
            let mut text = frame;
            // Engine side and agent side: parse, serialise, parse again.
            for _ in 0..2 {
                let message = parse_engine(&text).unwrap();
                let EngineMessage::CreateSite { options, .. } = &message else {
                    panic!("{text}");
                };
                let got = options.as_ref().unwrap()["x"].as_f64().unwrap();
                assert_eq!(got.to_bits(), want.to_bits(), "{written} became {got}");
                text = serde_json::to_string(&message).unwrap();
            }
        }
    }

    fn reply_value(err: &ProtocolError) -> Value {
        to_value(&err.reply())
    }

    #[test]
    fn parse_not_json() {
        let err = parse_engine("not json").unwrap_err();
        assert!(
            matches!(err, ProtocolError::Malformed { id: None, .. }),
            "{err:?}"
        );
        assert_eq!(err.id(), None);
        let reply = reply_value(&err);
        assert_eq!(reply["type"], "error");
        assert!(reply.get("id").is_none());
        assert!(reply["error"].as_str().unwrap().contains("not JSON"));
    }

    #[test]
    fn parse_not_object() {
        for text in ["[1,2]", "\"create_site\"", "null", "42"] {
            let err = parse_engine(text).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Malformed { id: None, .. }),
                "{text}: {err:?}"
            );
        }
    }

    #[test]
    fn parse_unknown_type() {
        let err = parse_engine(r#"{"type":"launch_missiles","id":"7"}"#).unwrap_err();
        match &err {
            ProtocolError::UnknownType { ty, id } => {
                assert_eq!(ty, "launch_missiles");
                assert_eq!(id.as_deref(), Some("7"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.id(), Some("7"));
        let reply = reply_value(&err);
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["id"], "7");
        assert!(reply["error"].as_str().unwrap().contains("launch_missiles"));
        // Agent message types are not commands either.
        let err = parse_engine(r#"{"type":"status_update","id":"x"}"#).unwrap_err();
        assert!(matches!(err, ProtocolError::UnknownType { .. }));
    }

    #[test]
    fn parse_missing_field() {
        let err = parse_engine(r#"{"type":"create_site","id":"8"}"#).unwrap_err();
        match &err {
            ProtocolError::Invalid { ty, id, detail } => {
                assert_eq!(ty, "create_site");
                assert_eq!(id.as_deref(), Some("8"));
                assert!(detail.contains("domain"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let reply = reply_value(&err);
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["id"], "8");
        assert!(reply["error"].as_str().unwrap().contains("domain"));
    }

    #[test]
    fn parse_missing_type() {
        let err = parse_engine(r#"{"id":"9"}"#).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed { .. }), "{err:?}");
        assert_eq!(err.id(), Some("9"));
        assert!(err.to_string().contains("type"));
        let reply = reply_value(&err);
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["id"], "9");

        let err = parse_engine(r#"{"id":"10","type":5}"#).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed { .. }), "{err:?}");
        assert_eq!(err.id(), Some("10"));
    }

    #[test]
    fn parse_wrong_fields() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            (r#"{"type":"update_agent"}"#, None, "id"),
            (r#"{"type":"update_agent","id":5}"#, None, "string"),
            (
                r#"{"type":"app_control","id":"a","app":"web","action":"explode"}"#,
                Some("a"),
                "explode",
            ),
            (
                r#"{"type":"create_site","id":"b","domain":"x.com","options":[1]}"#,
                Some("b"),
                "map",
            ),
            (
                r#"{"type":"create_site","id":"c","domain":"a.com; touch /tmp/x"}"#,
                Some("c"),
                "domain",
            ),
            (
                r#"{"type":"delete_site","id":"d","domain":"-rf"}"#,
                Some("d"),
                "domain",
            ),
            (
                r#"{"type":"rollback_agent","id":"e","commitId":"--upload-pack=x"}"#,
                Some("e"),
                "commitId",
            ),
            (
                r#"{"type":"update_agent","id":"h","sha256":"../../etc/passwd"}"#,
                Some("h"),
                "sha256",
            ),
            (
                r#"{"type":"update_agent","id":"i","sha256":"abc"}"#,
                Some("i"),
                "64 hex digits",
            ),
            (
                r#"{"type":"rotate_key","id":"f","newKey":""}"#,
                Some("f"),
                "newKey",
            ),
            (
                r#"{"type":"rotate_key","id":"g","newKey":"a\r\nx-evil: 1"}"#,
                Some("g"),
                "newKey",
            ),
        ];
        for (text, want_id, needle) in cases {
            let err = parse_engine(text).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Invalid { .. }),
                "{text}: {err:?}"
            );
            assert_eq!(err.id(), *want_id, "{text}");
            assert!(err.to_string().contains(needle), "{text}: {err}");
            let reply = reply_value(&err);
            assert_eq!(reply["type"], "error");
            assert_eq!(reply.get("id").and_then(Value::as_str), *want_id);
        }
    }

    #[test]
    fn parse_too_large() {
        let text = format!(
            r#"{{"type":"update_agent","id":"{}"}}"#,
            "x".repeat(MAX_FRAME)
        );
        let err = parse_engine(&text).unwrap_err();
        assert!(
            matches!(err, ProtocolError::TooLarge { len, max } if len == text.len() && max == MAX_FRAME)
        );
        assert_eq!(err.id(), None);
        assert_eq!(reply_value(&err)["type"], "error");
    }

    #[test]
    fn not_text_reply() {
        let reply = reply_value(&ProtocolError::NotText);
        assert_eq!(reply["type"], "error");
        assert!(reply.get("id").is_none());
    }

    #[test]
    fn type_names_cover_types() {
        let samples = [
            EngineMessage::CreateSite {
                id: "1".into(),
                domain: "a.b".into(),
                options: None,
            },
            EngineMessage::DeleteSite {
                id: "1".into(),
                domain: "a.b".into(),
            },
            EngineMessage::RotateKey {
                id: "1".into(),
                new_key: "k".into(),
            },
            EngineMessage::UpdateAgent {
                id: "1".into(),
                sha256: Some("ab".repeat(32)),
            },
            EngineMessage::RollbackAgent {
                id: "1".into(),
                commit_id: Some("abcdef1".into()),
            },
            EngineMessage::AppControl {
                id: "1".into(),
                app: "w".into(),
                action: AppAction::Start,
            },
            EngineMessage::DeployApp {
                id: "1".into(),
                app: "w".into(),
                git_ref: None,
            },
        ];
        let names: Vec<&str> = samples.iter().map(EngineMessage::type_name).collect();
        assert_eq!(names, EngineMessage::TYPES);
        for message in &samples {
            assert_eq!(
                serde_json::to_value(message).unwrap()["type"],
                message.type_name()
            );
        }
    }

    #[test]
    fn constants() {
        assert_eq!(PROTOCOL_VERSION, 1);
        assert_eq!(HEADER_CLIENT_TYPE, "x-client-type");
        assert_eq!(CLIENT_TYPE_AGENT, "agent");
        assert_eq!(HEADER_AGENT_ID, "x-agent-id");
        assert_eq!(HEADER_AGENT_KEY, "x-agent-key");
        assert_eq!(HEADER_PROTOCOL, "x-citrus-protocol");
        assert_eq!(MAX_FRAME, 1_048_576);
    }

    #[test]
    fn domains_accepted() {
        let label63 = "a".repeat(63);
        let long = format!("{label63}.{label63}.{label63}.{}.com", "b".repeat(57));
        assert_eq!(long.len(), 253);
        let cases = [
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("a.b", "a.b"),
            ("sub-1.my-site.co.uk", "sub-1.my-site.co.uk"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("1.2.3.com", "1.2.3.com"),
            ("123.example.io", "123.example.io"),
            ("web.example.c0m", "web.example.c0m"),
        ];
        for (input, want) in cases {
            assert_eq!(validate_domain(input).as_deref(), Ok(want), "{input}");
        }
        let with63 = format!("{label63}.com");
        assert_eq!(validate_domain(&with63), Ok(with63.clone()));
        assert_eq!(validate_domain(&long), Ok(long.clone()));
    }

    #[test]
    fn domains_refused() {
        let too_long = format!("{}.com", "a".repeat(296));
        assert_eq!(too_long.len(), 300);
        let long_label = format!("{}.com", "a".repeat(64));
        let over253 = format!(
            "{}.{}.{}.{}.com",
            "a".repeat(63),
            "a".repeat(63),
            "a".repeat(63),
            "b".repeat(58)
        );
        assert_eq!(over253.len(), 254);
        let cases: &[(&str, &str)] = &[
            ("a.com; touch /tmp/x", "';'"),
            ("-rf", "'-'"),
            ("../x", "'/'"),
            ("", "empty"),
            (&too_long, "253"),
            (&over253, "253"),
            (&long_label, "63"),
            ("localhost", "two labels"),
            ("1.2.3.4", "digits"),
            ("example.com.", "empty label"),
            (".example.com", "empty label"),
            ("a..com", "empty label"),
            ("-a.com", "'-'"),
            ("a-.com", "'-'"),
            ("a.-com", "'-'"),
            ("under_score.com", "'_'"),
            ("sp ace.com", "' '"),
            ("*.example.com", "'*'"),
            ("b\u{fc}cher.de", "'ü'"),
            ("a.com\n", "'\\n'"),
            ("$(reboot).com", "'$'"),
            ("a.com/../../etc", "'/'"),
            ("a.123", "digits"),
            (".", "empty label"),
        ];
        for (input, needle) in cases {
            let err = validate_domain(input).unwrap_err();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }

    #[test]
    fn commits() {
        let ok = [
            ("abcdef1", "abcdef1"),
            ("ABCDEF1", "abcdef1"),
            (
                "0123456789abcdef0123456789abcdef01234567",
                "0123456789abcdef0123456789abcdef01234567",
            ),
        ];
        for (input, want) in ok {
            assert_eq!(validate_commit(input).as_deref(), Ok(want), "{input}");
        }
        let refused = [
            "HEAD~1",
            "--upload-pack=x",
            "main",
            "",
            "abcdef",
            "0123456789abcdef0123456789abcdef012345678",
            "abcdefg",
            "abc def1",
            "abcdef1; rm -rf /",
            "-abcdef1",
            "abcdef1\n",
        ];
        for input in refused {
            assert!(validate_commit(input).is_err(), "{input:?}");
        }
    }
}
