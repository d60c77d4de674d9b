//! Kafka Connect's REST API, for the connector faults that can be done from outside a
//! stack: pause, resume, restart of the connector and of its task. The local stack's
//! Debezium launcher serves the same subset (`harness/launcher/README.md`).

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
    pub connector: State,
    #[serde(default)]
    pub tasks: Vec<TaskState>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct State {
    pub state: String,
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
