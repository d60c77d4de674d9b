//! A TCP fault proxy on one link: clients connect to the proxy, the proxy forwards to the
//! real service and applies the link's current fault (latency with jitter, bandwidth
//! limit, connection reset, blackhole, down). The local backend puts one on each link it
//! may break; the Docker backend does the same with `tc netem` and network disconnects.

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
    pub upstream: SocketAddr,
    fault: watch::Sender<LinkFault>,
    /// Bumped to cut every open connection (connection reset).
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(listen_port: u16, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", listen_port)).await?;
        let listen = listener.local_addr()?;
        let (fault, fault_rx) = watch::channel(LinkFault::Healthy);
        let (generation, generation_rx) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if *fault_rx.borrow() == LinkFault::Down {
                    drop(client);
                    continue;
                }
                let fault_rx = fault_rx.clone();
                let generation_rx = generation_rx.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
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
        let proxy = FaultProxy::start(0, upstream).await.unwrap();
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

    #[tokio::test]
    async fn reset_cuts_open_connections() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start(0, upstream).await.unwrap();
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
