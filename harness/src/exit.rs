//! Exit codes of the `harness` binary. They are part of its interface (CI gates depend on
//! them): never renumber, only add.

/// Everything ran and every gate passed.
pub const SUCCESS: i32 = 0;
/// An unexpected runtime error (a service failed, I/O error, ...).
pub const ERROR: i32 = 1;
/// Bad command line, bad scenario or config file, or a missing prerequisite that set-up
/// could not provide.
pub const USAGE: i32 = 2;
/// The run completed but a threshold failed or the target diverged from the source.
pub const GATE_FAILED: i32 = 3;
/// `harness diff` found a regression in a gated metric.
pub const REGRESSION: i32 = 4;
/// The run has no verdict: its load was not delivered, a fault did not inject, or the
/// evidence a verdict needs could not be read. Neither a pass nor a failed gate.
pub const NO_VERDICT: i32 = 5;
/// Interrupted (Ctrl-C); everything started was torn down.
pub const INTERRUPTED: i32 = 130;

/// What a command that ran to its end found; `code` is its exit code. Errors are not
/// outcomes: they map through `code_for`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything ran and every gate passed.
    Pass,
    /// A threshold failed or the target diverged (a run, `verify`, `bench verify`).
    GateFailed,
    /// `harness diff`: a gated metric regressed.
    Regression,
    /// A run without verdict, and why (printed with the outcome).
    NoVerdict { reasons: Vec<String> },
    /// `harness status`: a service is not healthy.
    Unhealthy,
    /// Ctrl-C; everything started was torn down.
    Interrupted,
}

impl Outcome {
    /// The outcome of a finished run: its verdict, as every report file tells it.
    pub fn of_run(report: &crate::report::model::Report) -> Self {
        Self::of_verdict(crate::report::verdict(report), &report.summary.no_verdict)
    }

    fn of_verdict(verdict: crate::report::model::Verdict, reasons: &[String]) -> Self {
        use crate::report::model::Verdict;
        match verdict {
            Verdict::Pass => Self::Pass,
            Verdict::Fail => Self::GateFailed,
            Verdict::NoVerdict => Self::NoVerdict { reasons: reasons.to_vec() },
        }
    }

    /// `GateFailed` unless `passed`.
    pub fn gate(passed: bool) -> Self {
        if passed { Self::Pass } else { Self::GateFailed }
    }

    pub fn code(&self) -> i32 {
        match self {
            Self::Pass => SUCCESS,
            Self::GateFailed => GATE_FAILED,
            Self::Regression => REGRESSION,
            Self::NoVerdict { .. } => NO_VERDICT,
            // The code `status` always had for a stack that is not healthy.
            Self::Unhealthy => ERROR,
            Self::Interrupted => INTERRUPTED,
        }
    }
}

/// The exit code of a finished run with this verdict.
pub fn code_for_verdict(verdict: crate::report::model::Verdict) -> i32 {
    Outcome::of_verdict(verdict, &[]).code()
}

/// The exit code of a command's result: its outcome's, or its error's.
pub fn code_for_result(result: &anyhow::Result<Outcome>) -> i32 {
    match result {
        Ok(outcome) => outcome.code(),
        Err(error) => code_for(error),
    }
}

/// The exit code of a command line clap refused (USAGE), or of `--help`/`--version` (SUCCESS).
pub fn code_for_parse(error: &clap::Error) -> i32 {
    if error.use_stderr() { USAGE } else { SUCCESS }
}

/// As a process exit code.
pub fn exit_code(code: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// What the user got wrong, found by a command rather than by clap: a scenario that does not
/// load, flags that do not go together, an unreadable input report. Exits USAGE.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UsageError(Box<dyn std::error::Error + Send + Sync>);

impl UsageError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

/// The exit code of a command that failed with `error`: the one place errors map to codes.
/// Set-up that could not provide a prerequisite (provisioning, a backend that is not
/// there) is a usage error, also inside a run; everything else is a runtime error.
pub fn code_for(error: &anyhow::Error) -> i32 {
    use crate::orchestrator::ServiceError;
    use crate::orchestrator::docker::{DockerError, images::ImageError};
    let image_usage =
        |e: &ImageError| matches!(e, ImageError::BaseUnavailable { .. } | ImageError::Provision(_) | ImageError::Docker(DockerError::Unreachable { .. }));
    let usage = |e: &ServiceError| match e {
        // An external stack that fails its pre-flight is a set-up problem of that stack.
        ServiceError::Provision(_) | ServiceError::BackendUnavailable(..) | ServiceError::Usage(_) | ServiceError::Unsupported { .. } | ServiceError::Preflight { .. } => true,
        ServiceError::Images(e) => image_usage(e),
        _ => false,
    };
    for cause in error.chain() {
        if cause.downcast_ref::<UsageError>().is_some() || cause.downcast_ref::<crate::provision::ProvisionError>().is_some() {
            return USAGE;
        }
        // Provisioning the Docker images: a missing daemon, root or debootstrap is set-up.
        if let Some(e) = cause.downcast_ref::<ImageError>() {
            return if image_usage(e) { USAGE } else { ERROR };
        }
        if let Some(DockerError::Unreachable { .. }) = cause.downcast_ref::<DockerError>() {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<ServiceError>() {
            return if usage(e) { USAGE } else { ERROR };
        }
        if let Some(crate::run::RunError::Stack(e)) = cause.downcast_ref::<crate::run::RunError>() {
            return if usage(e) { USAGE } else { ERROR };
        }
    }
    ERROR
}

/// `error` with its whole cause chain, `a: b: c`, as the binary prints it. A cause its
/// wrapper already quotes is not repeated; a PostgreSQL error shows the server's message,
/// SQLSTATE, detail and hint (its own `Display` is only "db error").
pub fn describe(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
            // A wrapper that quoted the short text (`pg_error_text`) gives way to the full one.
            let short = crate::orchestrator::pg_error_text(pg);
            if let Some(head) = parts.last().and_then(|last| last.strip_suffix(short.as_str())) {
                let head = head.trim_end_matches(": ").to_string();
                parts.pop();
                parts.extend((!head.is_empty()).then_some(head));
            }
            parts.push(postgres_text(pg));
            // Its own causes (the server's error, an I/O error) are in that text.
            break;
        }
        let text = cause.to_string();
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn postgres_text(error: &tokio_postgres::Error) -> String {
    let mut text = crate::orchestrator::pg_error_text(error);
    if let Some(db) = error.as_db_error() {
        text.push_str(&format!(" (SQLSTATE {})", db.code().code()));
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; DETAIL: {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; HINT: {hint}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::ServiceError;
    use crate::provision::ProvisionError;
    use crate::run::RunError;

    #[test]
    fn provisioning_errors_are_usage_errors_also_inside_a_run() {
        let provision = || ProvisionError::NotFound { what: "postgres", hint: "apt-get install postgresql-15".into() };
        assert_eq!(code_for(&anyhow::Error::new(provision())), USAGE);
        assert_eq!(code_for(&anyhow::Error::new(RunError::Stack(ServiceError::Provision(provision())))), USAGE);
        assert_eq!(code_for(&anyhow::Error::new(RunError::Stack(ServiceError::BackendUnavailable("docker", "no daemon".into())))), USAGE);
        assert_eq!(code_for(&anyhow::Error::new(ServiceError::Teardown { left: vec!["sink (pid 1)".into()] })), ERROR);
        use crate::orchestrator::docker::{DockerError, images::ImageError};
        let no_root = ImageError::BaseUnavailable { what: "root", hint: "sudo".into() };
        assert_eq!(code_for(&anyhow::Error::new(no_root)), USAGE);
        assert_eq!(code_for(&anyhow::Error::new(DockerError::Unreachable { reason: "no socket".into() })), USAGE);
        let failed = ImageError::Build { image: "cdc-harness/sink:x".into(), reason: "apt".into(), log: "/tmp/l".into() };
        assert_eq!(code_for(&anyhow::Error::new(failed)), ERROR);
        // Inside a run: a build that failed is a runtime error, a missing prerequisite set-up.
        let in_run = |e: ImageError| anyhow::Error::new(RunError::Stack(ServiceError::Images(e)));
        assert_eq!(code_for(&in_run(ImageError::Build { image: "i".into(), reason: "apt".into(), log: "/l".into() })), ERROR);
        assert_eq!(code_for(&in_run(ImageError::BaseUnavailable { what: "debootstrap", hint: "apt-get".into() })), USAGE);
        assert_eq!(code_for(&anyhow::Error::new(ServiceError::Usage("--images needs --backend docker".into()))), USAGE);
        let refused = ServiceError::Unsupported { backend: crate::orchestrator::BackendKind::External, reason: "kill on sink is refused".into() };
        assert_eq!(code_for(&anyhow::Error::new(RunError::Stack(refused))), USAGE);
        let preflight = ServiceError::Preflight { hop: "source", reason: "password authentication failed".into() };
        assert_eq!(code_for(&anyhow::Error::new(RunError::Stack(preflight))), USAGE);
        assert_eq!(code_for(&anyhow::anyhow!("anything else")), ERROR);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct Wrapper {
        message: String,
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    }

    fn wrap(message: &str, cause: impl std::error::Error + Send + Sync + 'static) -> Wrapper {
        Wrapper { message: message.into(), cause: Some(Box::new(cause)) }
    }

    #[test]
    fn an_error_prints_its_whole_chain_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(wrap("reading the report", io())).context("diff");
        assert_eq!(describe(&error), "diff: reading the report: no such file");
        // A wrapper whose message already quotes its cause does not repeat it.
        let quoting = anyhow::Error::new(wrap("reading the report: no such file", io()));
        assert_eq!(describe(&quoting), "reading the report: no such file");
        assert_eq!(describe(&anyhow::anyhow!("plain")), "plain");
    }

    #[test]
    fn usage_errors_found_by_a_command_exit_usage_and_print_as_they_are() {
        let error = anyhow::Error::new(UsageError::new("--reuse takes the stack of --run-dir"));
        assert_eq!(code_for(&error), USAGE);
        assert_eq!(describe(&error), "--reuse takes the stack of --run-dir");
        let wrapped = anyhow::Error::new(UsageError::new(wrap("scenario x", std::io::Error::other("gone"))));
        assert_eq!((code_for(&wrapped), describe(&wrapped)), (USAGE, "scenario x: gone".to_string()));
    }

    #[test]
    fn outcomes_keep_their_codes() {
        use crate::report::model::Verdict;
        let codes: Vec<i32> = [Outcome::Pass, Outcome::GateFailed, Outcome::Regression, Outcome::NoVerdict { reasons: vec![] }, Outcome::Unhealthy, Outcome::Interrupted]
            .iter()
            .map(Outcome::code)
            .collect();
        assert_eq!(codes, [0, 3, 4, 5, 1, 130]);
        assert_eq!([Verdict::Pass, Verdict::Fail, Verdict::NoVerdict].map(code_for_verdict), [0, 3, 5]);
        assert_eq!(code_for_result(&Ok(Outcome::gate(false))), GATE_FAILED);
        assert_eq!(code_for_result(&Err(anyhow::anyhow!("x"))), ERROR);
    }
}
