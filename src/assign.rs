//! The hot path: `amba_assign`, `amba_expose`, `amba_peek`, `amba_track`, and the pure
//! `amba_bucket`. This file holds the rules of SPEC §3 and §3d (see docs/SPEC.md):
//! override first, then the stored assignment (sticky), then status, then bucketing;
//! aliased ids act as their user. How rows are read and written — directly or through
//! SQL — is `store`'s business, decided once per call (`store::Path`).
//!
//! A first assignment holds its experiment's advisory lock in shared mode (`locks.rs`): no
//! row of `amba.experiments` is locked, so first assignments from many connections never
//! queue on one row, while a variant removal or delete (exclusive) waits for them.
//!
//! Each SQL function has a twin in schema `amba` (`amba._assign`, ...), which the HTTP
//! surface calls: only the extension can create functions there, so no look-alike placed
//! in the extension's schema can intercept a SECURITY DEFINER call (SPEC §8).

use crate::errors::{raise_code, raise_serialization_failure, OrRaise};
use crate::jsonb::JsonbDatum;
use crate::locks;
use crate::store::{self, experiments, Experiment, Path, Seen};
use amba_core::{bucket, validate, ErrorCode};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::rc::Rc;

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

fn inactive(key: &str, exp: &Experiment) -> ! {
    raise_code(
        ErrorCode::ExperimentInactive,
        format!(
            "experiment {key:?} is {}; new users cannot be assigned",
            exp.status
        ),
    )
}

/// The experiment as the statement's snapshot sees it, under the bucketing rule this
/// build implements.
fn find_experiment(path: Path, key: &str) -> Rc<Experiment> {
    let exp = experiments::find(path, key).unwrap_or_else(|| not_found(key));
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

fn assign(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    let path = Path::for_call();
    let exp = find_experiment(path, key);
    if let Some(variant) = override_for(&exp, user_id) {
        return variant;
    }
    if let Some(variant) = store::stored_variant(path, exp.id, user_id, Seen::Statement) {
        return variant;
    }
    if !exp.is_active() {
        // Nothing to write; the alias target may hold an assignment, though.
        let who = store::alias_of(path, user_id);
        if who != user_id {
            if let Some(variant) = store::stored_variant(path, exp.id, &who, Seen::Latest) {
                return variant;
            }
        }
        inactive(key, &exp);
    }
    // An alias committing meanwhile moves this id's rows: wait for it, then act as the
    // identity it leaves.
    locks::user(user_id, false);
    let who = store::alias_of(path, user_id);
    if who != user_id {
        if let Some(variant) = store::stored_variant(path, exp.id, &who, Seen::Latest) {
            return variant;
        }
    }
    first_assignment(path, key, exp, &who)
}

/// A first assignment of `who` (the identity, after aliases), under the experiment's
/// shared lock: no variant removal or delete can commit until this transaction ends, and
/// one committed before the lock was granted is seen in the latest snapshot.
fn first_assignment(path: Path, key: &str, mut exp: Rc<Experiment>, who: &str) -> String {
    locks::experiment_shared(exp.id);
    store::lock_experiment_across_nodes(path, exp.id);
    let user_bucket = bucket::bucket(key, who);
    for _ in 0..8 {
        if !exp.is_latest() {
            if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
                raise_serialization_failure(&format!(
                    "experiment {key:?} changed since this transaction's snapshot; retry the transaction"
                ));
            }
            exp = Spi::connect_mut(|client| experiments::reload_fresh(client, key))
                .unwrap_or_else(|| not_found(key));
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
        if store::insert_assignment(path, &exp, who, variant) {
            return variant.clone();
        }
        // A concurrent first call for this user committed first: return what it stored.
        if let Some(variant) = store::stored_variant(path, exp.id, who, Seen::Latest) {
            return variant;
        }
    }
    panic!("could not assign user to experiment {key:?}: the experiment kept changing");
}

fn expose(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    let path = Path::for_call();
    let exp = find_experiment(path, key);
    if let Some(variant) = override_for(&exp, user_id) {
        return variant;
    }
    // An alias committing meanwhile moves the assignment with its exposure: wait for it.
    locks::user(user_id, false);
    if let Some(variant) = store::record_exposure(path, exp.id, user_id) {
        return variant;
    }
    let who = store::alias_of(path, user_id);
    if who != user_id {
        if let Some(variant) = store::record_exposure(path, exp.id, &who) {
            return variant;
        }
    }
    raise_code(
        ErrorCode::AssignmentRequired,
        format!("user has no assignment in experiment {key:?}; call amba_assign first"),
    )
}

/// The variant without enrolling: override, stored assignment, the variant `amba_assign`
/// would store now (active experiments), else NULL. Writes nothing, takes no lock.
fn peek(experiment_key: Option<&str>, user_id: Option<&str>) -> Option<String> {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    let path = Path::for_call();
    let exp = find_experiment(path, key);
    if let Some(variant) = override_for(&exp, user_id) {
        return Some(variant);
    }
    let who = store::alias_of(path, user_id);
    let stored = store::stored_variant(path, exp.id, &who, Seen::Statement);
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
    let path = Path::for_call();
    // An event tracked while its id is being aliased lands under the user it moves to.
    locks::user(user_id, false);
    let who = store::alias_of(path, user_id);
    store::append_event(path, &who, event, stored_at, properties.map(|p| p.0));
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

/// The user's variant without enrolling them (SPEC §3d).
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
