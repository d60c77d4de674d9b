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
/// Interrupted (Ctrl-C); everything started was torn down.
pub const INTERRUPTED: i32 = 130;
