//! `fault-proxy` as a process, as the Docker backend's proxy container runs it: a
//! link forwards to its upstream, and the control API sets and reports the link's fault.

use std::time::Duration;


use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One round trip through the link, or why not (within 2 s).
async fn round_trip(port: u16) -> Result<(), String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf == b"ping" { Ok(()) } else { Err(format!("read back {buf:?}")) }
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.unwrap_or_else(|_| Err("timed out".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_process_forwards_and_takes_faults_over_http() -> anyhow::Result<()> {
    let upstream = echo_server().await;
    let (link_port, control_port) = (free_port()?, free_port()?);
    let _proxy = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_fault-proxy"))
            .args(["--link", &format!("echo={link_port}={upstream}"), "--control", &format!("127.0.0.1:{control_port}")])
            .spawn()?,
    );
    let control = format!("http://127.0.0.1:{control_port}");
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if http.get(format!("{control}/links")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(up, "the control API never answered");
    round_trip(link_port).await.map_err(anyhow::Error::msg)?;

    let set = |body: serde_json::Value| http.put(format!("{control}/links/echo")).json(&body).send();
    anyhow::ensure!(set(serde_json::json!({"kind": "down"})).await?.status().is_success());
    anyhow::ensure!(round_trip(link_port).await.is_err(), "a link that is down still answered");
    let links: serde_json::Value = http.get(format!("{control}/links")).send().await?.json().await?;
    anyhow::ensure!(links["echo"]["kind"] == "down", "reported {links}");

    anyhow::ensure!(set(serde_json::json!({"kind": "blackhole"})).await?.status().is_success());
    anyhow::ensure!(round_trip(link_port).await == Err("timed out".into()), "a blackholed link answered or failed fast");

    anyhow::ensure!(set(serde_json::json!({"kind": "healthy"})).await?.status().is_success());
    round_trip(link_port).await.map_err(anyhow::Error::msg)?;

    let unknown = http.put(format!("{control}/links/nope")).json(&serde_json::json!({"kind": "down"})).send().await?;
    anyhow::ensure!(unknown.status() == 404, "unknown link answered {}", unknown.status());
    let bad = set(serde_json::json!({"kind": "latency", "delay": 5})).await?;
    anyhow::ensure!(bad.status().is_client_error(), "a malformed fault was answered {}", bad.status());
    Ok(())
}
