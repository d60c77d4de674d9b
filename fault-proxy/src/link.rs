//! A TCP fault proxy on one link: clients connect to the proxy, the proxy forwards to the
//! real service and applies the link's current fault (latency with jitter, bandwidth
//! limit, connection reset, blackhole, down). The local backend puts one on each link it
//! may break; the Docker backend runs one per pod (the `fault-proxy` binary), controlled
//! over HTTP (`control.rs`).
//!
//! Connections made by the harness itself (its lag meter, broker health checks, poison
//! producer) are relayed untouched: a client reaches tansu only at the one address it
//! advertises (the proxy), and the harness measures lag at the broker, not through the
//! fault it injects. The proxy tells them apart by the client socket's owner: a socket of
//! this very process (`/proc/net/tcp` inode among `/proc/self/fd`).

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkFault {
    Healthy,
    /// Each chunk is delayed by `delay` ± `jitter` (order kept).
    Latency {
        delay: Duration,
        jitter: Duration,
    },
    /// Throughput capped at this many bytes per second in each direction.
    Bandwidth {
        bytes_per_sec: u64,
    },
    /// Connections stay open but nothing passes (timeouts, not errors).
    Blackhole,
    /// New connections are refused (closed at once) and open ones are cut.
    Down,
}

/// A running proxy: dropping it stops it and cuts its connections.
pub struct FaultProxy {
    pub listen: SocketAddr,
    /// `host:port`, resolved for every connection (a container's address can change when
    /// it restarts; its name does not).
    pub upstream: String,
    fault: watch::Sender<LinkFault>,
    /// Bumped to cut every open connection (connection reset).
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// `exempt_own`: relay this process's own connections untouched (see the module doc).
    pub async fn start(listen_port: u16, upstream: impl Into<String>, exempt_own: bool) -> std::io::Result<Self> {
        let upstream: String = upstream.into();
        let listener = TcpListener::bind(("127.0.0.1", listen_port)).await?;
        let listen = listener.local_addr()?;
        let (fault, fault_rx) = watch::channel(LinkFault::Healthy);
        let (generation, generation_rx) = watch::channel(0u64);
        let target = upstream.clone();
        let task = tokio::spawn(async move {
            let upstream = target;
            loop {
                let Ok((client, peer)) = listener.accept().await else { continue };
                let observer = exempt_own && is_own_socket(peer);
                if !observer && *fault_rx.borrow() == LinkFault::Down {
                    drop(client);
                    continue;
                }
                let (fault_rx, generation_rx) = (fault_rx.clone(), generation_rx.clone());
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream.as_str()).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    if observer {
                        // Never faulted, never cut: its own channels, held for the relay's life.
                        let (_healthy, healthy_rx) = watch::channel(LinkFault::Healthy);
                        let (_never, never_rx) = watch::channel(0u64);
                        relay(client, server, healthy_rx, never_rx).await;
                    } else {
                        relay(client, server, fault_rx, generation_rx).await;
                    }
                });
            }
        });
        Ok(Self { listen, upstream, fault, generation, task })
    }

    pub fn set(&self, fault: LinkFault) {
        let cut = fault == LinkFault::Down;
        self.fault.send_replace(fault);
        if cut {
            self.reset();
        }
    }

    /// Cuts every open connection once; new ones are accepted as usual.
    pub fn reset(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn current(&self) -> LinkFault {
        *self.fault.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset();
    }
}

/// Whether the client end `peer` of an accepted loopback connection is a socket of this
/// process (an IPv4 loopback client, as every client of the local stack is).
pub fn is_own_socket(peer: SocketAddr) -> bool {
    let SocketAddr::V4(peer) = peer else { return false };
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(peer.ip().octets()), peer.port());
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let Some(inode) = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str())).then(|| fields.get(9).map(|s| s.to_string())).flatten()
    }) else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy() == wanted)))
        .unwrap_or(false)
}

async fn relay(client: TcpStream, server: TcpStream, fault: watch::Receiver<LinkFault>, mut generation: watch::Receiver<u64>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let upstream = pump(client_read, server_write, fault.clone());
    let downstream = pump(server_read, client_write, fault);
    let start = *generation.borrow_and_update();
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        _ = async { while generation.changed().await.is_ok() { if *generation.borrow() != start { break; } } } => {}
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, mut fault: watch::Receiver<LinkFault>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A blackholed link reads nothing, so the sender's buffers fill and it stalls.
        while *fault.borrow() == LinkFault::Blackhole {
            if fault.changed().await.is_err() {
                return;
            }
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = *fault.borrow();
        match current {
            LinkFault::Latency { delay, jitter } => {
                let j = jitter.as_micros() as i64;
                let offset = if j > 0 { rand::rng().random_range(-j..=j) } else { 0 };
                let micros = (delay.as_micros() as i64 + offset).max(0) as u64;
                tokio::time::sleep(Duration::from_micros(micros)).await;
            }
            LinkFault::Bandwidth { bytes_per_sec } => {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / bytes_per_sec.max(1) as f64)).await;
            }
            LinkFault::Blackhole => {
                // Became a blackhole while reading: hold the chunk until the link heals.
                while *fault.borrow() == LinkFault::Blackhole {
                    if fault.changed().await.is_err() {
                        return;
                    }
                }
            }
            LinkFault::Healthy | LinkFault::Down => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Duration> {
        let mut s = TcpStream::connect(addr).await?;
        let started = std::time::Instant::now();
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn faults_change_what_passes_and_healing_restores_it() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start(0, upstream.to_string(), false).await.unwrap();
        assert!(round_trip(proxy.listen).await.unwrap() < Duration::from_millis(100));

        proxy.set(LinkFault::Latency { delay: Duration::from_millis(100), jitter: Duration::ZERO });
        // Both directions are delayed.
        assert!(round_trip(proxy.listen).await.unwrap() >= Duration::from_millis(200));

        proxy.set(LinkFault::Blackhole);
        let stalled = tokio::time::timeout(Duration::from_millis(300), round_trip(proxy.listen)).await;
        assert!(stalled.is_err(), "a blackhole stalls instead of answering");

        proxy.set(LinkFault::Down);
        let refused = round_trip(proxy.listen).await;
        assert!(refused.is_err(), "a down link closes connections");

        proxy.set(LinkFault::Healthy);
        assert!(round_trip(proxy.listen).await.unwrap() < Duration::from_millis(100));
    }

    /// The harness's own connections pass whatever the fault; another process's do not.
    #[tokio::test]
    async fn the_harness_own_connections_are_never_faulted() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start(0, upstream.to_string(), true).await.unwrap();
        proxy.set(LinkFault::Blackhole);
        let own = tokio::time::timeout(Duration::from_secs(2), round_trip(proxy.listen)).await;
        assert!(own.is_ok_and(|r| r.is_ok()), "this process's connection is relayed through a blackhole");
        // Another process (bash's /dev/tcp) gets the fault: the echo never comes back.
        let port = proxy.listen.port();
        let other = tokio::process::Command::new("bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; printf ping >&3; timeout 1 head -c 4 <&3")])
            .output()
            .await
            .unwrap();
        assert!(other.stdout.is_empty(), "another process's connection is blackholed: got {:?}", String::from_utf8_lossy(&other.stdout));
        proxy.set(LinkFault::Healthy);
        let healed = tokio::process::Command::new("bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; printf ping >&3; timeout 2 head -c 4 <&3")])
            .output()
            .await
            .unwrap();
        assert_eq!(healed.stdout, b"ping", "healed: it passes again");
    }

    #[tokio::test]
    async fn reset_cuts_open_connections() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start(0, upstream.to_string(), false).await.unwrap();
        let mut s = TcpStream::connect(proxy.listen).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        proxy.reset();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.write_all(b"y").await;
        let n = s.read(&mut b).await.unwrap_or(0);
        assert_eq!(n, 0, "the connection was cut");
    }
}
