//! Identities (CONTRACT 3d): after `amba_alias(anonymous_id, user_id)`, every function
//! called with the anonymous id acts on the user id. The mapping is read in the latest
//! snapshot, under the caller's shared user lock (see locks.rs), so an alias committed by
//! another session applies at once and a concurrent alias never leaves rows behind.

use crate::direct;
use crate::spi::run_fresh;
use pgrx::pg_sys;

const RESOLVE_SQL: &str = "SELECT a.user_id FROM amba.aliases a WHERE a.anonymous_id = $1";

/// The identity `user_id` acts as: the id it was aliased to, or itself.
pub fn resolve(user_id: &str) -> String {
    if let Some(t) = direct::tables().filter(|t| direct::direct_reads_allowed(&[t.aliases])) {
        let (_, target) = unsafe {
            direct::fetch_by_key(
                t.aliases,
                t.aliases_pkey,
                None,
                user_id,
                pg_sys::GetLatestSnapshot(),
                Some(t.alias_user_attnum),
            )
        };
        return target.unwrap_or_else(|| user_id.to_string());
    }
    run_fresh(RESOLVE_SQL, &[Some(user_id.to_string())], true)
        .first_column
        .into_iter()
        .flatten()
        .next()
        .unwrap_or_else(|| user_id.to_string())
}
