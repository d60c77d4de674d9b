//! Kafka Connect's REST API, the one client every backend uses: the connector's status and
//! source offsets (readiness, pre-flight), and the connector faults that can be done from
//! outside a stack (pause, resume, restart of the connector and of its task). The local
//! stack's Debezium launcher serves the same subset (`harness/launcher/README.md`).

use std::time::Duration;

use serde::Deserialize;

use crate::orchestrator::ConnectEndpoint;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Kafka Connect {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Kafka Connect {url}: HTTP {status}: {body}")]
    Refused { url: String, status: u16, body: String },
}

/// `GET /connectors/<name>/status`, as far as the harness reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectorStatus {
    #[serde(default)]
    pub connector: State,
    #[serde(default)]
    pub tasks: Vec<TaskState>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct State {
    pub state: String,
    #[serde(default)]
    pub trace: Option<String>,
}

impl Default for State {
    /// A status without its connector says nothing about it.
    fn default() -> Self {
        Self { state: "UNKNOWN".into(), trace: None }
    }
}

/// A connector's status, reduced to what readiness needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorHealth {
    Running,
    /// Not (yet) running: the connector's and tasks' states.
    Pending(String),
    /// A connector or task FAILED: its trace.
    Failed(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct TaskState {
    pub id: u32,
    pub state: String,
    #[serde(default)]
    pub trace: Option<String>,
}

impl ConnectorStatus {
    /// The connector and every task (at least one) run.
    pub fn running(&self) -> bool {
        self.connector.state == "RUNNING" && !self.tasks.is_empty() && self.tasks.iter().all(|t| t.state == "RUNNING")
    }

    /// Running, pending, or failed with the first lines of the failure's trace.
    pub fn health(&self) -> ConnectorHealth {
        let trace = |t: &Option<String>| t.as_deref().unwrap_or("no trace").lines().take(3).collect::<Vec<_>>().join(" | ");
        if self.connector.state == "FAILED" {
            return ConnectorHealth::Failed(format!("connector FAILED: {}", trace(&self.connector.trace)));
        }
        if let Some(task) = self.tasks.iter().find(|t| t.state == "FAILED") {
            return ConnectorHealth::Failed(format!("task FAILED: {}", trace(&task.trace)));
        }
        if self.running() {
            return ConnectorHealth::Running;
        }
        let states: Vec<&str> = self.tasks.iter().map(|t| t.state.as_str()).collect();
        ConnectorHealth::Pending(format!("connector {}, tasks [{}]", self.connector.state, states.join(", ")))
    }

    pub fn describe(&self) -> String {
        let tasks: Vec<String> = self.tasks.iter().map(|t| format!("task {} {}", t.id, t.state)).collect();
        let trace = self.tasks.iter().find_map(|t| t.trace.as_deref()).map(|t| format!(": {}", t.lines().next().unwrap_or_default())).unwrap_or_default();
        format!("connector {}, {}{trace}", self.connector.state, if tasks.is_empty() { "no task".into() } else { tasks.join(", ") })
    }
}

/// Why a request got no answer, with a hint where the cause is a certificate no root
/// vouches for (a private CA needs `[connect] ca`).
fn unreachable(e: &reqwest::Error) -> String {
    let text = crate::http::error_text(e);
    if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        format!("{text} (signed by a private CA? name it in the endpoints file's [connect] ca)")
    } else {
        text
    }
}

pub struct ConnectClient {
    endpoint: ConnectEndpoint,
    http: &'static reqwest::Client,
}

impl ConnectClient {
    pub fn new(endpoint: &ConnectEndpoint) -> Self {
        Self { endpoint: endpoint.clone(), http: crate::http::client() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/connectors/{}{path}", self.endpoint.url, self.endpoint.connector)
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: String) -> Result<String, ConnectError> {
        let response =
            request.timeout(Duration::from_secs(10)).send().await.map_err(|e| ConnectError::Unreachable { url: url.clone(), reason: unreachable(&e) })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ConnectError::Refused { url, status: status.as_u16(), body: body.chars().take(300).collect() });
        }
        Ok(body)
    }

    pub async fn status(&self) -> Result<ConnectorStatus, ConnectError> {
        let url = self.url("/status");
        let body = self.send(self.http.get(&url), url.clone()).await?;
        serde_json::from_str(&body).map_err(|e| ConnectError::Unreachable { url, reason: format!("not a connector status: {e}") })
    }

    /// Whether Debezium's initial snapshot is over, from `GET /connectors/<name>/offsets`
    /// (Connect exposes no snapshot metric); None: no source offset committed yet.
    pub async fn snapshot_finished(&self) -> Result<Option<bool>, ConnectError> {
        let url = self.url("/offsets");
        let body = self.send(self.http.get(&url), url.clone()).await?;
        let offsets: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| ConnectError::Unreachable { url, reason: format!("not connector offsets: {e}") })?;
        Ok(snapshot_finished(&offsets))
    }

    pub async fn pause(&self) -> Result<(), ConnectError> {
        let url = self.url("/pause");
        self.send(self.http.put(&url), url).await.map(drop)
    }

    pub async fn resume(&self) -> Result<(), ConnectError> {
        let url = self.url("/resume");
        self.send(self.http.put(&url), url).await.map(drop)
    }

    pub async fn restart(&self) -> Result<(), ConnectError> {
        let url = self.url("/restart");
        self.send(self.http.post(&url), url).await.map(drop)
    }

    pub async fn restart_task(&self, task: u32) -> Result<(), ConnectError> {
        let url = self.url(&format!("/tasks/{task}/restart"));
        self.send(self.http.post(&url), url).await.map(drop)
    }

    /// Whether the connector and its tasks run (false also when Connect does not answer).
    pub async fn is_running(&self) -> bool {
        self.status().await.is_ok_and(|s| s.running())
    }
}

/// During the snapshot the source offset carries `snapshot` (true / "INITIAL"); the last
/// snapshot record's offset also carries `last_snapshot_record: true`; streaming offsets
/// carry neither. None: no offset committed yet.
fn snapshot_finished(offsets: &serde_json::Value) -> Option<bool> {
    use serde_json::Value;
    let offset = offsets.get("offsets")?.as_array()?.iter().find_map(|o| o.get("offset"))?;
    let in_snapshot = match offset.get("snapshot") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.eq_ignore_ascii_case("false"),
        Some(_) => true,
    };
    let last = offset.get("last_snapshot_record").and_then(Value::as_bool).unwrap_or(false);
    Some(!in_snapshot || last)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn health(status: serde_json::Value) -> ConnectorHealth {
        serde_json::from_value::<ConnectorStatus>(status).expect("a connector status").health()
    }

    #[test]
    fn connector_status_is_read_strictly() {
        let running = json!({"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "RUNNING"}]});
        assert_eq!(health(running), ConnectorHealth::Running);
        let no_tasks = json!({"connector": {"state": "RUNNING"}, "tasks": []});
        assert!(matches!(health(no_tasks), ConnectorHealth::Pending(_)));
        let failed =
            json!({"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "FAILED", "trace": "org.postgresql.util.PSQLException: boom\n at x"}]});
        match health(failed) {
            ConnectorHealth::Failed(trace) => assert!(trace.contains("boom")),
            other => panic!("{other:?}"),
        }
        let connector_failed = json!({"connector": {"state": "FAILED", "trace": "no slot"}, "tasks": []});
        assert_eq!(health(connector_failed), ConnectorHealth::Failed("connector FAILED: no slot".into()));
        assert!(matches!(health(json!({})), ConnectorHealth::Pending(_)));
    }

    #[test]
    fn snapshot_progress_is_read_from_connect_offsets() {
        assert_eq!(snapshot_finished(&json!({"offsets": []})), None);
        let during = json!({"offsets": [{"partition": {"server": "cdc"}, "offset": {"lsn": 1, "snapshot": "INITIAL"}}]});
        assert_eq!(snapshot_finished(&during), Some(false));
        let during_bool = json!({"offsets": [{"partition": {"server": "cdc"}, "offset": {"lsn": 1, "snapshot": true}}]});
        assert_eq!(snapshot_finished(&during_bool), Some(false));
        let last = json!({"offsets": [{"partition": {"server": "cdc"}, "offset": {"lsn": 1, "snapshot": true, "last_snapshot_record": true}}]});
        assert_eq!(snapshot_finished(&last), Some(true));
        let streaming = json!({"offsets": [{"partition": {"server": "cdc"}, "offset": {"lsn": 9, "txId": 3}}]});
        assert_eq!(snapshot_finished(&streaming), Some(true));
    }
}
