//! Client setup and the retriable decision for MongoDB.

use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

use super::MongoConfig;
use crate::config::TargetConfig;

/// Server error codes worth retrying: elections, shutdowns, network, time limits, write
/// conflicts, and duplicate key (two upserts racing to create the same document: the
/// retry then matches it).
/// Infrastructure, not data, is also retried: Unauthorized (13) and AuthenticationFailed
/// (18) are fixed by an operator, after which the same write succeeds; a write-concern
/// failure (64, also what a write-concern error without a code is taken as) says the write
/// is not yet durable, never that the row is bad.
pub fn is_retriable_code(code: i32) -> bool {
    matches!(code, 6 | 7 | 13 | 18 | 50 | 64 | 89 | 91 | 112 | 189 | 262 | 9001 | 10107 | 11000 | 11600 | 11602 | 13435 | 13436)
}

pub fn is_retriable(e: &Error) -> bool {
    if e.contains_label("RetryableWriteError") || e.contains_label("TransientTransactionError") {
        return true;
    }
    match &*e.kind {
        ErrorKind::Io(_) | ErrorKind::ServerSelection { .. } | ErrorKind::ConnectionPoolCleared { .. } | ErrorKind::DnsResolve { .. } | ErrorKind::Shutdown => {
            true
        }
        ErrorKind::Authentication { .. } | ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::Command(c) => is_retriable_code(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => is_retriable_code(w.code),
        _ => false,
    }
}

pub async fn connect(target: &TargetConfig, settings: &MongoConfig) -> Result<Database, Error> {
    let mut options = ClientOptions::parse(&target.url).await?;
    if let (Some(password), Some(credential)) = (&target.password, options.credential.as_mut()) {
        credential.password = Some(password.expose().to_string());
    }
    options.server_selection_timeout = Some(settings.server_selection_timeout);
    options.connect_timeout = Some(settings.connect_timeout);
    options.app_name = Some("cdc-sink".into());
    Ok(Client::with_options(options)?.database(&settings.database))
}
