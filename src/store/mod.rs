//! The one door to amba's tables on the hot path. `assign.rs` says what to read and
//! write; this module decides how, once per call (`Path::for_call`):
//!
//! - `Path::Direct`: a primary-key read straight from the index, an insert without the
//!   executor (`index_read.rs`, `heap_insert.rs`) — only on plain tables of amba's own
//!   shape, with no hook that must see the writes, for a caller whose privileges and
//!   row-level security make it exactly what the statement would do (`path.rs`,
//!   `catalog.rs`, `access.rs`). Each operation may still fall back to SQL.
//! - `Path::Sql`: statements prepared once per backend, run through SPI and PostgreSQL's
//!   executor (`sql.rs`): partitions, inheritance, triggers, policies, audit hooks and
//!   every other check apply as to any statement.
//! - `Path::Distributed`: SQL on Citus, plus the cross-node lock of a first assignment.
//!
//! Experiment definitions are cached per backend for the direct path (`experiments.rs`);
//! the invalidation callbacks that keep every cache honest are in `invalidation.rs`.

mod access;
mod catalog;
pub mod experiments;
mod heap_insert;
mod index_read;
pub mod invalidation;
mod path;
mod sql;

pub use experiments::Experiment;
pub use path::{define_settings, Path};

pub use heap_insert::Expect;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Which committed rows a read must see.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Seen {
    /// The statement's snapshot (what a SELECT in the calling statement sees).
    Statement,
    /// Also what committed since the statement began (after waiting for a concurrent
    /// writer, as ON CONFLICT and foreign-key checks do).
    Latest,
}

/// Whether a direct read of `tables` reads what the SELECT would: the transaction has
/// written nothing yet (so no earlier command of ours must first become visible, as SPI
/// makes it by bumping the command counter), there is a snapshot, and the caller may read
/// every row of each table.
fn direct_read_allowed(tables: &[pg_sys::Oid]) -> bool {
    unsafe {
        pg_sys::GetCurrentTransactionIdIfAny() == pg_sys::InvalidTransactionId
            && pg_sys::ActiveSnapshotSet()
            && access::readable(tables)
    }
}

/// The variant stored for `user_id` in the experiment, if any.
pub fn stored_variant(path: Path, experiment_id: i64, user_id: &str, seen: Seen) -> Option<String> {
    if let (Path::Direct(t), Seen::Statement) = (path, seen) {
        if direct_read_allowed(&[t.assignments.relid]) {
            let snapshot = unsafe { pg_sys::GetActiveSnapshot() };
            if let Some(found) =
                index_read::by_key(t.assignments, Some(experiment_id), user_id, snapshot)
            {
                return found.value;
            }
        }
    }
    sql::stored_variant(experiment_id, user_id, seen == Seen::Latest)
}

/// The variant stored for `user_id`, read as ON CONFLICT's pre-check reads the key: in a
/// dirty snapshot, after waiting for any transaction inserting or deleting its row, so a
/// committed row since the statement began is seen too. With `Expect::Absent` when that
/// read was direct and found nothing: an insert that follows at once may skip its own
/// pre-check. Elsewhere (SQL path, or the transaction has written: see
/// `direct_read_allowed`) the statement's snapshot, and `Expect::Unknown`.
pub fn stored_variant_after_waiting(
    path: Path,
    experiment_id: i64,
    user_id: &str,
) -> (Option<String>, Expect) {
    if let Path::Direct(t) = path {
        if direct_read_allowed(&[t.assignments.relid]) {
            if let Some(found) =
                index_read::by_key_after_waiting(t.assignments, experiment_id, user_id)
            {
                return if found.exists {
                    (found.value, Expect::Unknown)
                } else {
                    (None, Expect::Absent)
                };
            }
        }
    }
    (
        stored_variant(path, experiment_id, user_id, Seen::Statement),
        Expect::Unknown,
    )
}

/// Stores a first assignment (`ON CONFLICT DO NOTHING`): true when this call stored it,
/// false when a row for the user was there (possibly after waiting for its inserter).
pub fn insert_assignment(
    path: Path,
    exp: &Experiment,
    user_id: &str,
    variant: &str,
    expect: Expect,
) -> bool {
    if let Path::Direct(t) = path {
        if let Some(inserted) = heap_insert::assignment_if_absent(
            t.assignments.relid,
            t.generation,
            exp.id,
            user_id,
            variant,
            exp.weight_version,
            expect,
        ) {
            return inserted;
        }
    }
    sql::insert_assignment(exp.id, user_id, variant, exp.weight_version)
}

/// Stores the segment values of a first assignment just stored (SPEC §13): through SQL
/// always (only experiments with dimensions pay for it).
pub fn insert_dimensions(experiment_id: i64, user_id: &str, values: &serde_json::Value) {
    sql::insert_dimensions(experiment_id, user_id, &values.to_string())
}

/// Records the first exposure of `user_id`'s assignment and returns its variant; None
/// when the user has no assignment. Sees assignments committed since the statement began.
pub fn record_exposure(path: Path, experiment_id: i64, user_id: &str) -> Option<String> {
    if let Path::Direct(t) = path {
        if direct_read_allowed(&[t.assignments.relid, t.exposures.relid]) {
            if let Some((variant, exposed)) =
                unsafe { read_for_exposure(t, experiment_id, user_id) }
            {
                let variant = variant?;
                if !exposed {
                    // Only a first exposure writes; the foreign key still checks the
                    // assignment.
                    insert_exposure(path, experiment_id, user_id);
                }
                return Some(variant);
            }
        }
    }
    sql::record_exposure(experiment_id, user_id)
}

/// Records the first exposure of an assignment the caller knows is stored (ON CONFLICT
/// DO NOTHING: a second exposure changes nothing). The foreign key checks it is.
pub fn insert_exposure(path: Path, experiment_id: i64, user_id: &str) {
    if let Path::Direct(t) = path {
        if heap_insert::exposure_if_absent(t.exposures.relid, t.generation, experiment_id, user_id)
            .is_some()
        {
            return;
        }
    }
    sql::insert_exposure(experiment_id, user_id)
}

/// Records the exposure of an assignment this transaction has just stored, which nobody
/// can have exposed yet: a plain INSERT (its unique index would still refuse a second row).
pub fn insert_first_exposure(path: Path, experiment_id: i64, user_id: &str) {
    if let Path::Direct(t) = path {
        if heap_insert::new_exposure(t.exposures.relid, t.generation, experiment_id, user_id) {
            return;
        }
    }
    sql::insert_exposure(experiment_id, user_id)
}

/// The assignment's variant and whether it is exposed, read as the SQL statement would:
/// in a new snapshot (it must see an assignment committed since this statement began).
unsafe fn read_for_exposure(
    t: catalog::Tables,
    experiment_id: i64,
    user_id: &str,
) -> Option<(Option<String>, bool)> {
    unsafe {
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let snapshot = pg_sys::GetActiveSnapshot();
        let read = index_read::by_key(t.assignments, Some(experiment_id), user_id, snapshot)
            .and_then(|assignment| {
                if !assignment.exists {
                    return Some((None, false));
                }
                index_read::by_key(t.exposures, Some(experiment_id), user_id, snapshot)
                    .map(|exposure| (assignment.value, exposure.exists))
            });
        pg_sys::PopActiveSnapshot();
        read
    }
}

/// Appends one event.
pub fn append_event(
    path: Path,
    user_id: &str,
    event: &str,
    occurred_at: TimestampWithTimeZone,
    properties: Option<pg_sys::Datum>,
) {
    if let Path::Direct(t) = path {
        if heap_insert::append_event(
            t.events,
            t.generation,
            user_id,
            event,
            occurred_at,
            properties,
        ) {
            return;
        }
    }
    sql::append_event(user_id, event, occurred_at, properties)
}

/// The identity `user_id` acts as (SPEC §3d): the id it was aliased to, or itself.
/// Read in the latest snapshot: an alias committed by another session applies at once.
pub fn alias_of(path: Path, user_id: &str) -> String {
    if let Path::Direct(t) = path {
        if direct_read_allowed(&[t.aliases.relid]) {
            let snapshot = unsafe { pg_sys::GetLatestSnapshot() };
            if let Some(found) = index_read::by_key(t.aliases, None, user_id, snapshot) {
                return found.value.unwrap_or_else(|| user_id.to_string());
            }
        }
    }
    sql::alias_of(user_id).unwrap_or_else(|| user_id.to_string())
}

/// On Citus, the cross-node half of a first assignment's lock on its experiment (see
/// `sql::share_lock_experiment_row`); nothing elsewhere.
pub fn lock_experiment_across_nodes(path: Path, experiment_id: i64) {
    if path.is_distributed() {
        sql::share_lock_experiment_row(experiment_id);
    }
}

/// On Citus, a transaction that reads the distributed tables over many connections may not
/// then change a reference table (amba.experiments) that they point to. A function that
/// counts and then writes (a bandit update, a guardrail's pause) calls this first: one
/// connection per node for the rest of the transaction. Nothing elsewhere.
pub fn one_connection_per_node() {
    if Path::for_call().is_distributed() {
        Spi::run(
            "SELECT pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true)",
        )
        .expect("setting citus.multi_shard_modify_mode");
    }
}

/// Test support: the direct path's verdicts, for `#[pg_test]`s that show when it is taken.
#[cfg(any(test, feature = "pg_test"))]
pub mod probe {
    use super::*;

    /// The direct insert of an event, or false when it would go through SQL.
    pub fn direct_event(user_id: &str, event: &str, at: TimestampWithTimeZone) -> bool {
        match Path::for_call() {
            Path::Direct(t) => {
                heap_insert::append_event(t.events, t.generation, user_id, event, at, None)
            }
            _ => false,
        }
    }

    /// The direct first assignment: Some(inserted), or None when it would go through SQL.
    pub fn direct_assignment(experiment_id: i64, user_id: &str) -> Option<bool> {
        match Path::for_call() {
            Path::Direct(t) => heap_insert::assignment_if_absent(
                t.assignments.relid,
                t.generation,
                experiment_id,
                user_id,
                "a",
                1,
                Expect::Unknown,
            ),
            _ => None,
        }
    }

    /// The direct first exposure: Some(inserted), or None when it would go through SQL.
    pub fn direct_exposure(experiment_id: i64, user_id: &str) -> Option<bool> {
        match Path::for_call() {
            Path::Direct(t) => heap_insert::exposure_if_absent(
                t.exposures.relid,
                t.generation,
                experiment_id,
                user_id,
            ),
            _ => None,
        }
    }

    /// Which path a call would take now: "direct", "sql" or "distributed".
    pub fn path_name() -> &'static str {
        match Path::for_call() {
            Path::Direct(_) => "direct",
            Path::Sql => "sql",
            Path::Distributed => "distributed",
        }
    }
}
