//! `fault-proxy`: the fault proxies of one service's links as their own process, controlled
//! over HTTP (what the Docker backend's proxy container runs; see the `control` module).

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "TCP fault proxies of one service's links, controlled over HTTP")]
struct Args {
    /// `NAME=LISTEN_PORT=UPSTREAM_HOST:PORT`; the proxy listens on 127.0.0.1.
    #[arg(long = "link", required = true)]
    links: Vec<fault_proxy::LinkSpec>,
    /// Address of the control API.
    #[arg(long, default_value = "0.0.0.0:7070")]
    control: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    match fault_proxy::serve(args.links, args.control, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fault-proxy: {e}");
            exit_code(&e)
        }
    }
}

/// The one place an error becomes an exit code (README, Exit codes): the harness's
/// convention, 2 for what the caller got wrong (a duplicate link), 1 for the environment
/// (a port already taken).
fn exit_code(error: &fault_proxy::ProxyServerError) -> std::process::ExitCode {
    std::process::ExitCode::from(match error {
        fault_proxy::ProxyServerError::DuplicateLink(_) => 2,
        fault_proxy::ProxyServerError::Listen { .. } | fault_proxy::ProxyServerError::Control { .. } => 1,
    })
}
