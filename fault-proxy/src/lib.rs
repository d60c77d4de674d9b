//! The harness's TCP fault proxy. Its own small crate so that the Docker backend's pod proxy,
//! which every byte of Debezium's and the sink's traffic crosses, is always a release build:
//! the measurement must not pay for a debug relay (a debug-built harness binary added about
//! 0.27 ms to every PostgreSQL round trip through the pod).

mod control;
mod link;

pub use control::{FaultBody, LinkSpec, ProxyServerError, serve};
pub use link::{FaultProxy, LinkFault, is_own_socket};
