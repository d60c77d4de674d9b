//! `fault-proxy`: the fault proxies of one service's links as their own process, for
//! the Docker backend, where the proxy runs in a small container whose network namespace the
//! service joins (a pod): the service reaches each upstream at `127.0.0.1:<port>`, the proxy
//! forwards to the upstream's name on the run's network, and the harness sets each link's
//! fault over HTTP:
//!
//! - `GET /links`: every link with its current fault;
//! - `PUT /links/{name}` with a [`FaultBody`]: set the link's fault;
//! - `POST /links/{name}/reset`: cut the link's open connections once.
//!
//! One fault vocabulary for every backend: the same [`LinkFault`] the local backend's
//! in-process proxies apply.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::link::{FaultProxy, LinkFault};

/// `NAME=LISTEN_PORT=UPSTREAM_HOST:PORT`, as given to `--link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub name: String,
    pub listen_port: u16,
    pub upstream: String,
}

impl std::str::FromStr for LinkSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("--link {s:?}: expected NAME=LISTEN_PORT=UPSTREAM_HOST:PORT");
        let mut parts = s.splitn(3, '=');
        let (Some(name), Some(port), Some(upstream)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
        let listen_port = port.parse().map_err(|_| bad())?;
        let valid_upstream = upstream.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if name.is_empty() || !valid_upstream {
            return Err(bad());
        }
        Ok(Self { name: name.to_string(), listen_port, upstream: upstream.to_string() })
    }
}

/// A link fault as JSON: `{"kind": "latency", "delay_ms": 200, "jitter_ms": 50}`,
/// `{"kind": "bandwidth", "bytes_per_sec": 65536}`, `{"kind": "blackhole"}`,
/// `{"kind": "down"}`, `{"kind": "healthy"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum FaultBody {
    Healthy,
    Latency {
        delay_ms: u64,
        #[serde(default)]
        jitter_ms: u64,
    },
    Bandwidth {
        bytes_per_sec: u64,
    },
    Blackhole,
    Down,
}

impl From<FaultBody> for LinkFault {
    fn from(body: FaultBody) -> Self {
        match body {
            FaultBody::Healthy => Self::Healthy,
            FaultBody::Latency { delay_ms, jitter_ms } => Self::Latency { delay: Duration::from_millis(delay_ms), jitter: Duration::from_millis(jitter_ms) },
            FaultBody::Bandwidth { bytes_per_sec } => Self::Bandwidth { bytes_per_sec },
            FaultBody::Blackhole => Self::Blackhole,
            FaultBody::Down => Self::Down,
        }
    }
}

impl From<LinkFault> for FaultBody {
    fn from(fault: LinkFault) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match fault {
            LinkFault::Healthy => Self::Healthy,
            LinkFault::Latency { delay, jitter } => Self::Latency { delay_ms: ms(delay), jitter_ms: ms(jitter) },
            LinkFault::Bandwidth { bytes_per_sec } => Self::Bandwidth { bytes_per_sec },
            LinkFault::Blackhole => Self::Blackhole,
            LinkFault::Down => Self::Down,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyServerError {
    #[error("two links named {0}")]
    DuplicateLink(String),
    #[error("link {name}: cannot listen on 127.0.0.1:{port}: {source}")]
    Listen { name: String, port: u16, source: std::io::Error },
    #[error("control API: cannot listen on {addr}: {source}")]
    Control { addr: SocketAddr, source: std::io::Error },
}

type Links = Arc<BTreeMap<String, FaultProxy>>;

/// Starts every link's proxy and serves the control API until `shutdown` resolves.
pub async fn serve(
    links: Vec<LinkSpec>,
    control: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyServerError> {
    let mut proxies = BTreeMap::new();
    for link in links {
        if proxies.contains_key(&link.name) {
            return Err(ProxyServerError::DuplicateLink(link.name));
        }
        // The service's own traffic is what the faults are for: nothing is exempt here.
        let proxy = FaultProxy::start(link.listen_port, link.upstream.clone(), false).await.map_err(|source| ProxyServerError::Listen {
            name: link.name.clone(),
            port: link.listen_port,
            source,
        })?;
        eprintln!("fault-proxy: link {} 127.0.0.1:{} -> {}", link.name, link.listen_port, link.upstream);
        proxies.insert(link.name, proxy);
    }
    let listener = tokio::net::TcpListener::bind(control).await.map_err(|source| ProxyServerError::Control { addr: control, source })?;
    eprintln!("fault-proxy: control API on {control}");
    axum::serve(listener, router(Arc::new(proxies)))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ProxyServerError::Control { addr: control, source })
}

fn router(links: Links) -> Router {
    Router::new().route("/links", get(list)).route("/links/{name}", axum::routing::put(set)).route("/links/{name}/reset", post(reset)).with_state(links)
}

async fn list(State(links): State<Links>) -> Json<BTreeMap<String, FaultBody>> {
    Json(links.iter().map(|(name, proxy)| (name.clone(), proxy.current().into())).collect())
}

async fn set(State(links): State<Links>, Path(name): Path<String>, Json(body): Json<FaultBody>) -> Result<Json<FaultBody>, (StatusCode, String)> {
    let proxy = links.get(&name).ok_or_else(|| (StatusCode::NOT_FOUND, format!("no link {name}")))?;
    proxy.set(body.into());
    Ok(Json(proxy.current().into()))
}

async fn reset(State(links): State<Links>, Path(name): Path<String>) -> Result<StatusCode, (StatusCode, String)> {
    let proxy = links.get(&name).ok_or_else(|| (StatusCode::NOT_FOUND, format!("no link {name}")))?;
    proxy.reset();
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_specs_parse_strictly() {
        let link: LinkSpec = "broker=19092=kafka:9092".parse().unwrap();
        assert_eq!(link, LinkSpec { name: "broker".into(), listen_port: 19092, upstream: "kafka:9092".into() });
        for bad in ["broker", "broker=x=kafka:9092", "broker=1=kafka", "=1=kafka:9092", "b=1=:9092", "b=1=kafka:port"] {
            assert!(bad.parse::<LinkSpec>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn fault_bodies_round_trip_to_link_faults() {
        for body in [
            FaultBody::Healthy,
            FaultBody::Latency { delay_ms: 200, jitter_ms: 50 },
            FaultBody::Bandwidth { bytes_per_sec: 65536 },
            FaultBody::Blackhole,
            FaultBody::Down,
        ] {
            assert_eq!(FaultBody::from(LinkFault::from(body)), body);
        }
        let parsed: FaultBody = serde_json::from_str(r#"{"kind": "latency", "delay_ms": 100}"#).unwrap();
        assert_eq!(parsed, FaultBody::Latency { delay_ms: 100, jitter_ms: 0 });
        assert!(serde_json::from_str::<FaultBody>(r#"{"kind": "latency", "delay": 100}"#).is_err(), "unknown fields are refused");
    }
}
