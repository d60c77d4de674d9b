//! The `sink` binary as the harness runs it: `sink --config <file>`, exit codes, readiness
//! and a graceful SIGTERM.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::orchestrator::local::process::free_port;
use harness::testing::{TestPostgres, run_dir};

use crate::common::TestBroker;

fn sink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sink"))
}

#[test]
fn config_errors_exit_with_2() {
    let dir = run_dir("sink-bin-config");
    let missing = sink().arg("--config").arg(dir.join("absent.toml")).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[kafka]\nbrokers = \"\"\ngroup_id = \"g\"\ntopics = []\ndlq_topic = \"cdc.dlq\"\n[target]\nkind = \"postgres\"\nurl = \"host=x password=y\"\n[http]\nlisten = \"nowhere\"\n").unwrap();
    let bad = sink().arg("--config").arg(&path).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("SINK__TARGET__PASSWORD") && stderr.contains("[http] listen"), "{stderr}");
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_becomes_ready_serves_metrics_and_stops_cleanly_on_sigterm() {
    let topics: Vec<String> = ["customer", "address", "orders", "order_item", "dlq"]
        .iter()
        .map(|t| if *t == "dlq" { "cdc.dlq".to_string() } else { format!("cdc.public.{t}") })
        .collect();
    let pg = TestPostgres::start("sink-bin-pg").await.unwrap();
    let kafka = TestBroker::start("sink-bin-broker", &topics).await.unwrap();
    let dir = run_dir("sink-bin");
    let port = free_port().unwrap();
    let e = &pg.endpoint;
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"sink-bin\"\ntopics = [{}]\ndlq_topic = \"cdc.dlq\"\n\n[target]\nkind = \"postgres\"\n\
         url = \"host={} port={} user={} dbname={}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
        kafka.bootstrap,
        topics[..4].iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", "),
        e.host,
        e.port,
        e.user,
        e.target_db
    );
    std::fs::write(dir.join("sink.toml"), config).unwrap();
    let mut child =
        sink().arg("--config").arg(dir.join("sink.toml")).env("SINK__TARGET__PASSWORD", e.password.expose()).stdout(Stdio::piped()).spawn().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = http_get(&addr, "/readyz") {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "sink exited before becoming ready");
        assert!(Instant::now() < deadline, "sink not ready in time: {:?}", http_get(&addr, "/readyz"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(http_get(&addr, "/healthz").map(|r| r.0), Some(200));
    let (code, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("sink_up{dependency=\"target\"} 1"), "{metrics}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "sink did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut logs = String::new();
    child.stdout.take().unwrap().read_to_string(&mut logs).unwrap();
    assert_eq!(status.code(), Some(0), "logs:\n{logs}");
    assert!(logs.contains("clean shutdown"), "{logs}");
    assert!(!logs.contains(e.password.expose()), "the password leaked into the logs");
}
