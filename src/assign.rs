//! The hot path: `amba_assign`, `amba_expose`, `amba_peek`, `amba_track`, and the pure
//! `amba_bucket`.
//!
//! A returning user costs one primary-key lookup, read straight from the index whenever
//! that reads exactly what a SELECT would (`direct.rs`); a new user costs that plus one
//! insert on a plan prepared once per backend, under the experiment's shared advisory lock
//! (`locks.rs`): no row of `amba.experiments` is locked, so first assignments from many
//! connections never queue on one row. The definition comes from the per-backend cache,
//! checked against each statement's snapshot (`cache.rs`). Overridden users get the
//! override and nothing is written for them; ids aliased to another act as that id.
//!
//! Each SQL function has a twin in schema `amba` (`amba._assign`, ...), which the HTTP
//! surface calls: only the extension can create functions there, so no look-alike placed
//! in the extension's schema can intercept a SECURITY DEFINER call (CONTRACT 8).

use crate::cache::{self, Experiment};
use crate::direct;
use crate::errors::{raise_code, raise_serialization_failure, OrRaise};
use crate::identity;
use crate::insert;
use crate::jsonb::JsonbDatum;
use crate::locks;
use crate::spi::with_plan;
use amba_core::{bucket, validate, ErrorCode};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    static FIND_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static FIND_FRESH_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static INSERT_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static EXPOSE_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static INSERT_EXPOSURE_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static TRACK_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

const FIND_SQL: &str =
    "SELECT variant FROM amba.assignments WHERE experiment_id = $1 AND user_id = $2";

/// The weight version is recorded for the SRM test. No foreign key to amba.experiments:
/// its check would lock the experiment's row for every first assignment.
const INSERT_SQL: &str =
    "INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (experiment_id, user_id) DO NOTHING RETURNING variant";

const EXPOSE_SQL: &str = "WITH assigned AS ( \
       SELECT variant FROM amba.assignments WHERE experiment_id = $1 AND user_id = $2), \
     exposed AS ( \
       INSERT INTO amba.exposures (experiment_id, user_id) \
       SELECT $1, $2 FROM assigned \
       ON CONFLICT (experiment_id, user_id) DO NOTHING) \
     SELECT variant FROM assigned";

/// A first exposure, once the direct read has found the assignment and no exposure.
const INSERT_EXPOSURE_SQL: &str =
    "INSERT INTO amba.exposures (experiment_id, user_id) VALUES ($1, $2) \
     ON CONFLICT (experiment_id, user_id) DO NOTHING";

const TRACK_SQL: &str =
    "INSERT INTO amba.events (user_id, event, occurred_at, properties) VALUES ($1, $2, $3, $4)";

fn check_inputs<'a>(
    experiment_key: Option<&'a str>,
    user_id: Option<&'a str>,
) -> (&'a str, &'a str) {
    validate::experiment_key(experiment_key).or_raise();
    validate::user_id(user_id).or_raise();
    (experiment_key.unwrap(), user_id.unwrap())
}

fn not_found(key: &str) -> ! {
    raise_code(
        ErrorCode::ExperimentNotFound,
        format!("experiment {key:?} does not exist"),
    )
}

fn find_experiment(key: &str) -> Rc<Experiment> {
    let exp = cache::find(key).unwrap_or_else(|| not_found(key));
    if exp.bucketing_version != bucket::BUCKETING_VERSION as i32 {
        raise_code(
            ErrorCode::InvalidArgument,
            format!(
                "experiment {key:?} uses bucketing version {}, this build implements version {}",
                exp.bucketing_version,
                bucket::BUCKETING_VERSION
            ),
        );
    }
    exp
}

/// The override of `user_id` (or of the user it is aliased to): one map lookup.
fn override_for(exp: &Experiment, user_id: &str) -> Option<String> {
    exp.overrides.get(user_id).cloned()
}

/// The stored variant read directly, in the statement's snapshot (what the read-only SPI
/// SELECT sees): Some(found) when the direct read applies, None when SPI must do it.
fn direct_stored_variant(experiment_id: i64, user_id: &str) -> Option<Option<String>> {
    let t = direct::tables()?;
    if !direct::direct_reads_allowed(&[t.assignments]) {
        return None;
    }
    let (_, variant) = unsafe {
        direct::fetch_by_key(
            t.assignments,
            t.assignments_pkey,
            Some(experiment_id),
            user_id,
            pg_sys::GetActiveSnapshot(),
            Some(t.variant_attnum),
        )
    };
    Some(variant)
}

fn stored_variant(
    client: &SpiClient<'_>,
    experiment_id: i64,
    user_id: &str,
    fresh: bool,
) -> Option<String> {
    // The fresh variant is prepared as mutating so SPI takes a new snapshot: it must see
    // an assignment a concurrent first call committed while we were inserting.
    let slot = if fresh { &FIND_FRESH_PLAN } else { &FIND_PLAN };
    with_plan(
        slot,
        client,
        FIND_SQL,
        &[pg_sys::INT8OID, pg_sys::TEXTOID],
        fresh,
        |plan| {
            let table = client
                .select(plan, None, &[experiment_id.into(), user_id.into()])
                .expect("reading the assignment");
            if table.is_empty() {
                None
            } else {
                table.first().get::<String>(1).expect("reading the variant")
            }
        },
    )
}

fn insert_assignment(
    client: &SpiClient<'_>,
    exp: &Experiment,
    user_id: &str,
    variant: &str,
) -> bool {
    let types = [
        pg_sys::INT8OID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::INT4OID,
    ];
    with_plan(&INSERT_PLAN, client, INSERT_SQL, &types, true, |plan| {
        let args = [
            exp.id.into(),
            user_id.into(),
            variant.into(),
            exp.weight_version.into(),
        ];
        !client
            .select(plan, None, &args)
            .expect("storing the assignment")
            .is_empty()
    })
}

fn inactive(key: &str, exp: &Experiment) -> ! {
    raise_code(
        ErrorCode::ExperimentInactive,
        format!(
            "experiment {key:?} is {}; new users cannot be assigned",
            exp.status
        ),
    )
}

/// A first assignment of `who` (the identity, after aliases), under the experiment's
/// shared lock: no variant removal or delete can commit until this transaction ends, and
/// one committed before the lock was granted is seen in the latest snapshot.
fn first_assignment(
    client: &SpiClient<'_>,
    key: &str,
    mut exp: Rc<Experiment>,
    who: &str,
) -> String {
    locks::experiment_shared(exp.id);
    distributed_share_lock(client, exp.id);
    let user_bucket = bucket::bucket(key, who);
    for _ in 0..8 {
        if !exp.is_latest() {
            if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
                raise_serialization_failure(&format!(
                    "experiment {key:?} changed since this transaction's snapshot; retry the transaction"
                ));
            }
            exp = cache::reload_fresh(client, key).unwrap_or_else(|| not_found(key));
            continue;
        }
        if let Some(variant) = exp.overrides.get(who) {
            return variant.clone();
        }
        if !exp.is_active() {
            inactive(key, &exp);
        }
        let index = bucket::pick(user_bucket, &exp.thresholds, &exp.weights)
            .expect("validated weights have a positive sum");
        let variant = &exp.variant_keys[index];
        let direct = direct::tables().and_then(|t| {
            insert::assignment_if_absent(t.assignments, exp.id, who, variant, exp.weight_version)
        });
        if direct.unwrap_or_else(|| insert_assignment(client, &exp, who, variant)) {
            return variant.clone();
        }
        // A concurrent first call for this user committed first: return what it stored.
        if let Some(variant) = stored_variant(client, exp.id, who, true) {
            return variant;
        }
    }
    panic!("could not assign user to experiment {key:?}: the experiment kept changing");
}

thread_local! {
    static SHARE_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static LOCAL_EXPERIMENTS: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// This node's placement of the reference table amba.experiments on Citus (CONTRACT 9), or
/// None on one node. Looked up once per backend.
fn local_experiments_placement(client: &SpiClient<'_>) -> Option<String> {
    LOCAL_EXPERIMENTS.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| {
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
            .clone()
    })
}

/// On Citus the experiment's advisory lock is per node, and a first assignment runs on the
/// worker that owns the user while a variant removal or delete runs on the coordinator.
/// There the first assignment also share-locks the experiment's row in this node's
/// placement of the reference table; the removal updates that row on every placement
/// before it looks for assignments (sql/api.sql), so the two never both commit.
fn distributed_share_lock(client: &SpiClient<'_>, experiment_id: i64) {
    if direct::tables().is_some() {
        return;
    }
    let Some(placement) = local_experiments_placement(client) else {
        return;
    };
    let sql = format!("SELECT 1 FROM {placement} e WHERE e.id = $1 FOR SHARE");
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
}

fn assign(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    let exp = find_experiment(key);
    if let Some(variant) = override_for(&exp, user_id) {
        return variant;
    }
    let direct = direct_stored_variant(exp.id, user_id);
    if let Some(Some(variant)) = direct {
        return variant;
    }
    Spi::connect_mut(|client| {
        if direct.is_none() {
            if let Some(variant) = stored_variant(client, exp.id, user_id, false) {
                return variant;
            }
        }
        if !exp.is_active() {
            // Nothing to write; the alias target may hold an assignment, though.
            let who = identity::resolve(user_id);
            if who != user_id {
                if let Some(variant) = stored_variant(client, exp.id, &who, true) {
                    return variant;
                }
            }
            inactive(key, &exp);
        }
        locks::user(user_id, false);
        let who = identity::resolve(user_id);
        if who != user_id {
            if let Some(variant) = stored_variant(client, exp.id, &who, true) {
                return variant;
            }
        }
        first_assignment(client, key, exp.clone(), &who)
    })
}

fn expose(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    let exp = find_experiment(key);
    if let Some(variant) = override_for(&exp, user_id) {
        return variant;
    }
    // An alias committing meanwhile moves the assignment with its exposure: wait for it.
    locks::user(user_id, false);
    if let Some(variant) = expose_as(&exp, user_id) {
        return variant;
    }
    let who = identity::resolve(user_id);
    if who != user_id {
        if let Some(variant) = expose_as(&exp, &who) {
            return variant;
        }
    }
    raise_code(
        ErrorCode::AssignmentRequired,
        format!("user has no assignment in experiment {key:?}; call amba_assign first"),
    )
}

/// Records the first exposure of `user_id`'s assignment; None when there is no assignment.
fn expose_as(exp: &Experiment, user_id: &str) -> Option<String> {
    if let Some(t) =
        direct::tables().filter(|t| direct::direct_reads_allowed(&[t.assignments, t.exposures]))
    {
        // Read as the SPI statement below would: in a new snapshot (it must see an
        // assignment committed since this statement began).
        let (variant, exposed) = unsafe {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let snapshot = pg_sys::GetActiveSnapshot();
            let (_, variant) = direct::fetch_by_key(
                t.assignments,
                t.assignments_pkey,
                Some(exp.id),
                user_id,
                snapshot,
                Some(t.variant_attnum),
            );
            let exposed = variant.is_some()
                && direct::fetch_by_key(
                    t.exposures,
                    t.exposures_pkey,
                    Some(exp.id),
                    user_id,
                    snapshot,
                    None,
                )
                .0;
            pg_sys::PopActiveSnapshot();
            (variant, exposed)
        };
        let variant = variant?;
        if !exposed {
            // Only a first exposure writes; the foreign key still checks the assignment.
            Spi::connect_mut(|client| {
                let types = [pg_sys::INT8OID, pg_sys::TEXTOID];
                with_plan(
                    &INSERT_EXPOSURE_PLAN,
                    client,
                    INSERT_EXPOSURE_SQL,
                    &types,
                    true,
                    |plan| {
                        client
                            .select(plan, None, &[exp.id.into(), user_id.into()])
                            .expect("recording the exposure");
                    },
                );
            });
        }
        return Some(variant);
    }
    Spi::connect_mut(|client| {
        let types = [pg_sys::INT8OID, pg_sys::TEXTOID];
        with_plan(&EXPOSE_PLAN, client, EXPOSE_SQL, &types, true, |plan| {
            let table = client
                .select(plan, None, &[exp.id.into(), user_id.into()])
                .expect("recording the exposure");
            if table.is_empty() {
                None
            } else {
                table.first().get::<String>(1).expect("reading the variant")
            }
        })
    })
}

/// The variant without enrolling: override, stored assignment, the variant `amba_assign`
/// would store now (active experiments), else NULL. Writes nothing, takes no lock.
fn peek(experiment_key: Option<&str>, user_id: Option<&str>) -> Option<String> {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    let exp = find_experiment(key);
    if let Some(variant) = override_for(&exp, user_id) {
        return Some(variant);
    }
    let who = identity::resolve(user_id);
    let stored = match direct_stored_variant(exp.id, &who) {
        Some(found) => found,
        None => Spi::connect(|client| stored_variant(client, exp.id, &who, false)),
    };
    if stored.is_some() || !exp.is_active() {
        return stored;
    }
    let index = bucket::pick(bucket::bucket(key, &who), &exp.thresholds, &exp.weights)?;
    Some(exp.variant_keys[index].clone())
}

fn track(
    user_id: Option<&str>,
    event: Option<&str>,
    properties: Option<JsonbDatum>,
    occurred_at: Option<TimestampWithTimeZone>,
) -> TimestampWithTimeZone {
    validate::user_id(user_id).or_raise();
    validate::event(event).or_raise();
    let (user_id, event) = (user_id.unwrap(), event.unwrap());
    if let Some(props) = &properties {
        let kind = props.kind();
        if kind != "object" {
            raise_code(
                ErrorCode::InvalidArgument,
                format!("properties must be a JSON object or NULL, not {kind}"),
            );
        }
        validate::properties_size(props.text_len()).or_raise();
    }
    // An event at ±infinity would count as a conversion for every user (or for none).
    if occurred_at.is_some_and(|at| !at.is_finite()) {
        raise_code(
            ErrorCode::InvalidArgument,
            "occurred_at must be a finite time or NULL",
        );
    }
    let stored_at = occurred_at.unwrap_or_else(|| {
        TimestampWithTimeZone::try_from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() })
            .expect("now() is a valid timestamp")
    });
    locks::user(user_id, false);
    let who = identity::resolve(user_id);
    let properties = properties.map(|p| p.0);
    if direct::tables()
        .is_some_and(|t| insert::append_event(t.events, &who, event, stored_at, properties))
    {
        return stored_at;
    }
    Spi::connect_mut(|client| {
        let types = [
            pg_sys::TEXTOID,
            pg_sys::TEXTOID,
            pg_sys::TIMESTAMPTZOID,
            pg_sys::JSONBOID,
        ];
        with_plan(&TRACK_PLAN, client, TRACK_SQL, &types, true, |plan| {
            let args = [
                who.as_str().into(),
                event.into(),
                stored_at.into(),
                properties.into(),
            ];
            client.select(plan, None, &args).expect("storing the event");
        });
    });
    stored_at
}

/// The user's sticky variant: the stored one, or a new one from the bucket and the
/// current weights, stored before it is returned.
#[pg_extern(volatile, parallel_unsafe)]
fn amba_assign(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
    assign(experiment_key, user_id)
}

/// Records that the user saw their variant (the first time is kept) and returns it.
#[pg_extern(volatile, parallel_unsafe)]
fn amba_expose(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
    expose(experiment_key, user_id)
}

/// The user's variant without enrolling them (CONTRACT 3d).
#[pg_extern(stable, parallel_unsafe)]
fn amba_peek(experiment_key: Option<&str>, user_id: Option<&str>) -> Option<String> {
    peek(experiment_key, user_id)
}

/// Appends one event and returns its `occurred_at` as stored (`now()` when NULL).
/// `properties`: a JSON object or NULL, at most 64 KiB as JSON text.
#[pg_extern(volatile, parallel_unsafe)]
fn amba_track(
    user_id: Option<&str>,
    event: Option<&str>,
    properties: default!(Option<JsonbDatum>, "NULL"),
    occurred_at: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> TimestampWithTimeZone {
    track(user_id, event, properties, occurred_at)
}

/// The user's bucket in [0, 1): reproduces an assignment from the published rule.
#[pg_extern(immutable, parallel_safe)]
fn amba_bucket(experiment_key: Option<&str>, user_id: Option<&str>) -> f64 {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    bucket::bucket(key, user_id)
}

/// The twins the HTTP surface calls (see the module comment).
#[pg_schema]
mod amba {
    use super::*;

    #[pg_extern(name = "_assign", volatile, parallel_unsafe)]
    fn assign_internal(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
        assign(experiment_key, user_id)
    }

    #[pg_extern(name = "_expose", volatile, parallel_unsafe)]
    fn expose_internal(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
        expose(experiment_key, user_id)
    }

    #[pg_extern(name = "_peek", stable, parallel_unsafe)]
    fn peek_internal(experiment_key: Option<&str>, user_id: Option<&str>) -> Option<String> {
        peek(experiment_key, user_id)
    }

    #[pg_extern(name = "_track", volatile, parallel_unsafe)]
    fn track_internal(
        user_id: Option<&str>,
        event: Option<&str>,
        properties: Option<JsonbDatum>,
        occurred_at: Option<TimestampWithTimeZone>,
    ) -> TimestampWithTimeZone {
        track(user_id, event, properties, occurred_at)
    }
}
