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

/// The exit code of a finished run: its verdict, as every report file tells it.
pub fn code_for_verdict(verdict: crate::report::model::Verdict) -> i32 {
    use crate::report::model::Verdict;
    match verdict {
        Verdict::Pass => SUCCESS,
        Verdict::Fail => GATE_FAILED,
        Verdict::NoVerdict => NO_VERDICT,
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
        if cause.downcast_ref::<crate::provision::ProvisionError>().is_some() {
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
}
