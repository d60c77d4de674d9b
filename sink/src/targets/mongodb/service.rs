//! Client setup and the retriable decision for MongoDB.

use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

use super::MongoConfig;
use crate::config::TargetConfig;
use crate::targets::ErrorClass;

/// By server error code. The target's fault: Unauthorized (13) and AuthenticationFailed
/// (18), fixed by an operator, after which the same write succeeds. Transient: elections,
/// shutdowns, network, time limits, write conflicts, a write-concern failure (64: not yet
/// durable, never a bad row), and duplicate key (two upserts racing to create the same
/// document: the retry then matches it). Anything else is the row's.
pub fn class_of_code(code: i32) -> ErrorClass {
    match code {
        13 | 18 => ErrorClass::Target,
        6 | 7 | 50 | 64 | 89 | 91 | 112 | 189 | 262 | 9001 | 10107 | 11000 | 11600 | 11602 | 13435 | 13436 => ErrorClass::Transient,
        _ => ErrorClass::Record,
    }
}

pub fn class_of(e: &Error) -> ErrorClass {
    if e.contains_label("RetryableWriteError") || e.contains_label("TransientTransactionError") {
        return ErrorClass::Transient;
    }
    match &*e.kind {
        ErrorKind::Io(_) | ErrorKind::ServerSelection { .. } | ErrorKind::ConnectionPoolCleared { .. } | ErrorKind::DnsResolve { .. } | ErrorKind::Shutdown => {
            ErrorClass::Transient
        }
        // A write-concern error without a code is taken as 64.
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => ErrorClass::Transient,
        ErrorKind::Authentication { .. } => ErrorClass::Target,
        ErrorKind::Command(c) => class_of_code(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => class_of_code(w.code),
        _ => ErrorClass::Record,
    }
}

pub async fn connect(target: &TargetConfig, settings: &MongoConfig) -> Result<Database, Error> {
    let mut options = ClientOptions::parse(&target.url).await?;
    // The password applies to the URI's user, or to `[target] user` when the URI names
    // none (validated: one of them does).
    if let Some(password) = &target.password {
        let credential = options.credential.get_or_insert_with(Default::default);
        if credential.username.is_none() {
            credential.username.clone_from(&target.user);
        }
        credential.password = Some(password.expose().to_string());
    }
    options.server_selection_timeout = Some(settings.server_selection_timeout);
    options.connect_timeout = Some(settings.connect_timeout);
    options.app_name = Some("cdc-sink".into());
    Ok(Client::with_options(options)?.database(&settings.database))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_by_whom_they_are_about() {
        assert_eq!((class_of_code(13), class_of_code(18)), (ErrorClass::Target, ErrorClass::Target));
        assert_eq!((class_of_code(64), class_of_code(11000), class_of_code(91)), (ErrorClass::Transient, ErrorClass::Transient, ErrorClass::Transient));
        assert_eq!((class_of_code(2), class_of_code(121)), (ErrorClass::Record, ErrorClass::Record));
    }
}
