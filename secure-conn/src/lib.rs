//! Secure connections shared by the sink and the harness (see README "TLS").

pub mod kafka;
pub mod pg;
