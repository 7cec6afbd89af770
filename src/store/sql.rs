//! The SQL path: each operation as a statement prepared once per backend and run through
//! SPI, so PostgreSQL's executor does everything it does for any statement (partitions,
//! inheritance, triggers, constraints, row-level security, audit and security hooks,
//! Citus's routing).

use crate::spi::{run_fresh, with_plan};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::RefCell;

thread_local! {
    static FIND_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static FIND_LATEST_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static INSERT_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static INSERT_EXPOSURE_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static TRACK_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static DIMENSIONS_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static SHARE_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static LOCAL_EXPERIMENTS: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

const FIND_SQL: &str =
    "SELECT variant FROM amba.assignments WHERE experiment_id = $1 AND user_id = $2";

/// The weight version is recorded for the SRM test. No foreign key to amba.experiments:
/// its check would lock the experiment's row for every first assignment.
const INSERT_SQL: &str =
    "INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (experiment_id, user_id) DO NOTHING RETURNING variant";

/// A first exposure (or none, when the user is exposed already).
const INSERT_EXPOSURE_SQL: &str =
    "INSERT INTO amba.exposures (experiment_id, user_id) VALUES ($1, $2) \
     ON CONFLICT (experiment_id, user_id) DO NOTHING";

const TRACK_SQL: &str =
    "INSERT INTO amba.events (user_id, event, occurred_at, properties) VALUES ($1, $2, $3, $4)";

const DIMENSIONS_SQL: &str =
    "INSERT INTO amba.assignment_dimensions (experiment_id, user_id, dimension_values) \
     VALUES ($1, $2, $3::text::jsonb) ON CONFLICT (experiment_id, user_id) DO NOTHING";

const ALIAS_SQL: &str = "SELECT a.user_id FROM amba.aliases a WHERE a.anonymous_id = $1";

const ID_TEXT: [pg_sys::Oid; 2] = [pg_sys::INT8OID, pg_sys::TEXTOID];

/// `latest`: the plan is prepared as mutating, so SPI takes a new snapshot for it: it sees
/// an assignment a concurrent first call committed while we were inserting.
pub fn stored_variant(experiment_id: i64, user_id: &str, latest: bool) -> Option<String> {
    let slot = if latest {
        &FIND_LATEST_PLAN
    } else {
        &FIND_PLAN
    };
    Spi::connect_mut(|client| {
        with_plan(slot, client, FIND_SQL, &ID_TEXT, latest, |plan| {
            let table = client
                .select(plan, None, &[experiment_id.into(), user_id.into()])
                .expect("reading the assignment");
            if table.is_empty() {
                None
            } else {
                table.first().get::<String>(1).expect("reading the variant")
            }
        })
    })
}

pub fn insert_assignment(
    experiment_id: i64,
    user_id: &str,
    variant: &str,
    weight_version: i32,
) -> bool {
    let types = [
        pg_sys::INT8OID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::INT4OID,
    ];
    Spi::connect_mut(|client| {
        with_plan(&INSERT_PLAN, client, INSERT_SQL, &types, true, |plan| {
            let args = [
                experiment_id.into(),
                user_id.into(),
                variant.into(),
                weight_version.into(),
            ];
            !client
                .select(plan, None, &args)
                .expect("storing the assignment")
                .is_empty()
        })
    })
}

/// The assignment's variant (in the latest snapshot), with its first exposure recorded.
/// Two statements, each of which Citus routes to the user's shard (one statement that
/// reads and inserts, a writable CTE, it would run across nodes with two-phase commit).
pub fn record_exposure(experiment_id: i64, user_id: &str) -> Option<String> {
    let variant = stored_variant(experiment_id, user_id, true)?;
    insert_exposure(experiment_id, user_id);
    Some(variant)
}

pub fn insert_exposure(experiment_id: i64, user_id: &str) {
    Spi::connect_mut(|client| {
        with_plan(
            &INSERT_EXPOSURE_PLAN,
            client,
            INSERT_EXPOSURE_SQL,
            &ID_TEXT,
            true,
            |plan| {
                client
                    .select(plan, None, &[experiment_id.into(), user_id.into()])
                    .expect("recording the exposure");
            },
        );
    })
}

pub fn append_event(
    user_id: &str,
    event: &str,
    occurred_at: TimestampWithTimeZone,
    properties: Option<pg_sys::Datum>,
) {
    let types = [
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::JSONBOID,
    ];
    Spi::connect_mut(|client| {
        with_plan(&TRACK_PLAN, client, TRACK_SQL, &types, true, |plan| {
            let args = [
                user_id.into(),
                event.into(),
                occurred_at.into(),
                properties.into(),
            ];
            client.select(plan, None, &args).expect("storing the event");
        });
    })
}

pub fn insert_dimensions(experiment_id: i64, user_id: &str, values: &str) {
    let types = [pg_sys::INT8OID, pg_sys::TEXTOID, pg_sys::TEXTOID];
    Spi::connect_mut(|client| {
        with_plan(
            &DIMENSIONS_PLAN,
            client,
            DIMENSIONS_SQL,
            &types,
            true,
            |plan| {
                client
                    .select(
                        plan,
                        None,
                        &[experiment_id.into(), user_id.into(), values.into()],
                    )
                    .expect("storing the assignment's dimensions");
            },
        );
    })
}

/// The id `user_id` is aliased to, read in the latest snapshot (as RI checks read).
pub fn alias_of(user_id: &str) -> Option<String> {
    run_fresh(ALIAS_SQL, &[Some(user_id.to_string())], true)
        .first_column
        .into_iter()
        .flatten()
        .next()
}

/// This node's placement of the reference table amba.experiments on Citus (SPEC §9), or
/// None when there is none here. Looked up once per backend.
fn local_experiments_placement() -> Option<String> {
    LOCAL_EXPERIMENTS.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| {
                Spi::connect(|client| {
                    let has_citus = client
                        .select("SELECT to_regclass('pg_catalog.pg_dist_shard') IS NOT NULL", None, &[])
                        .ok()
                        .and_then(|t| t.first().get::<bool>(1).ok().flatten())
                        .unwrap_or(false);
                    if !has_citus {
                        return None;
                    }
                    client
                        .select(
                            "SELECT 'amba.' || quote_ident('experiments_' || s.shardid) FROM pg_catalog.pg_dist_shard s \
                              WHERE s.logicalrelid = 'amba.experiments'::regclass",
                            None,
                            &[],
                        )
                        .ok()
                        .and_then(|t| if t.is_empty() { None } else { t.first().get::<String>(1).ok().flatten() })
                })
            })
            .clone()
    })
}

/// On Citus the experiment's advisory lock is per node, and a first assignment runs on the
/// worker that owns the user while a variant removal or delete runs on the coordinator.
/// There the first assignment also share-locks the experiment's row in this node's
/// placement of the reference table; the removal updates that row on every placement
/// before it looks for assignments (sql/api.sql), so the two never both commit.
pub fn share_lock_experiment_row(experiment_id: i64) {
    let Some(placement) = local_experiments_placement() else {
        return;
    };
    let sql = format!("SELECT 1 FROM {placement} e WHERE e.id = $1 FOR SHARE");
    Spi::connect_mut(|client| {
        with_plan(
            &SHARE_PLAN,
            client,
            &sql,
            &[pg_sys::INT8OID],
            true,
            |plan| {
                client
                    .select(plan, None, &[experiment_id.into()])
                    .expect("locking the experiment's row");
            },
        );
    })
}
