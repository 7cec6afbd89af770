//! Long computations of the core (the bandit's integrals) call [`check`] as they go. The
//! extension installs PostgreSQL's CHECK_FOR_INTERRUPTS there, so a cancel, a
//! `statement_timeout` or a terminate ends them; elsewhere (the core's own tests) it does
//! nothing.

use std::sync::OnceLock;

static CHECK: OnceLock<fn()> = OnceLock::new();

/// Installs the check, once per process (later calls are ignored).
pub fn install(check: fn()) {
    let _ = CHECK.set(check);
}

/// Runs the installed check: it may not return (PostgreSQL raises the cancel as an ERROR).
#[inline]
pub fn check() {
    if let Some(check) = CHECK.get() {
        check();
    }
}
