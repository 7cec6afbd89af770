//! The hot path: `amba_assign`, `amba_expose`, `amba_peek`, `amba_track`, and the pure
//! `amba_bucket`. This file holds the rules of SPEC §3, §3d and §10 (see docs/SPEC.md):
//! override first, then the stored assignment (sticky, whatever the attributes are now),
//! then status, then targeting and coverage (a user they leave out is not enrolled: NULL,
//! nothing written), then bucketing; aliased ids act as their user. How rows are read and written — directly or through
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
use crate::store::{self, experiments, Expect, Experiment, Path, Seen};
use amba_core::{bucket, validate, ErrorCode};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::OnceCell;
use std::rc::Rc;

/// The attributes the app passes about its user (SPEC §10): a JSON object, or NULL for
/// `{}`. Checked on every call, parsed only when a rule looks inside (a new user of a
/// targeted experiment).
struct Attributes {
    given: Option<JsonbDatum>,
    parsed: OnceCell<serde_json::Value>,
}

impl Attributes {
    fn new(given: Option<JsonbDatum>) -> Attributes {
        if let Some(attributes) = &given {
            let kind = attributes.kind();
            if kind != "object" {
                raise_code(
                    ErrorCode::InvalidArgument,
                    format!("attributes must be a JSON object or NULL, not {kind}"),
                );
            }
        }
        Attributes {
            given,
            parsed: OnceCell::new(),
        }
    }

    fn value(&self) -> &serde_json::Value {
        self.parsed.get_or_init(|| match &self.given {
            Some(attributes) => attributes.to_value("attributes"),
            None => serde_json::Value::Object(Default::default()),
        })
    }
}

/// Whether a user without an assignment (or override) may be enrolled now (SPEC §10,
/// §11): the targeting condition holds for their attributes, their layer bucket falls in
/// the experiment's range of its layer, and their coverage bucket — a hash independent of
/// the variant's — is below the coverage, so raising it adds users and removes nobody.
fn enrolled(key: &str, exp: &Experiment, who: &str, attributes: &Attributes) -> bool {
    if let Some(condition) = &exp.targeting {
        if !condition.eval(attributes.value()) {
            return false;
        }
    }
    if let Some(layer) = &exp.layer {
        let Some((start, end)) = layer.range else {
            return false;
        };
        let layer_bucket = bucket::layer_bucket(&layer.key, who);
        if !(start <= layer_bucket && layer_bucket < end) {
            return false;
        }
    }
    bucket::coverage_bucket(key, who) < exp.coverage
}

/// The values of the experiment's dimensions in the attributes (SPEC §13), read at their
/// dotted paths as conditions read them (array indexes and `length` included), as text: a
/// string as it is, any other JSON value as its JSON text; an absent or null one is left out.
fn dimension_values(exp: &Experiment, attributes: &Attributes) -> serde_json::Value {
    let mut values = serde_json::Map::new();
    for path in &exp.dimensions {
        match amba_core::condition::value_at_path(attributes.value(), path).as_ref() {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => {
                values.insert(path.clone(), serde_json::Value::String(s.clone()));
            }
            other => {
                values.insert(path.clone(), serde_json::Value::String(other.to_string()));
            }
        }
    }
    serde_json::Value::Object(values)
}

/// A user the experiment would enrol passes through its holdout first (SPEC §11): they
/// are assigned (sticky) and exposed there, and held out — not enrolled — when that gives
/// the holdout's control. A holdout that is not active holds no new user out.
fn released_by_holdout(path: Path, holdout_key: &str, who: &str, attributes: &Attributes) -> bool {
    let holdout = find_experiment(path, holdout_key);
    let control = &holdout.variant_keys[0];
    if let Some(variant) = override_for(&holdout, who) {
        return &variant != control;
    }
    // Read as the insertion's own pre-check reads the key (waiting for a concurrent first
    // assignment to the holdout), under the holdout's lock that the first assignment takes
    // anyway: nothing between this read and the insertion waits (but a changed definition,
    // which first_assignment reloads), so a user found absent is inserted without a second
    // pre-check, as ExecInsert inserts right after its own.
    locks::experiment_shared(holdout.id);
    let (stored, expect) = store::stored_variant_after_waiting(path, holdout.id, who);
    let variant = match stored {
        Some(variant) => {
            store::record_exposure(path, holdout.id, who);
            Some(variant)
        }
        None if !holdout.is_active() => None,
        None => match first_assignment(
            path,
            holdout_key,
            holdout.clone(),
            who,
            attributes,
            WhenInactive::NotEnrolled,
            expect,
        ) {
            Some(Assigned::Inserted(variant)) => {
                // The assignment is this transaction's own: nobody can have exposed it.
                store::insert_first_exposure(path, holdout.id, who);
                Some(variant)
            }
            Some(Assigned::Stored(variant)) => {
                store::insert_exposure(path, holdout.id, who);
                Some(variant)
            }
            Some(Assigned::Overridden(variant)) => return &variant != control,
            // The holdout as committed now does not enrol them (its targeting or
            // coverage; or it was paused while this call was on its way). A concurrent
            // call may still have stored them there since this statement began: read
            // in a new snapshot (and exposed), that assignment holds (sticky).
            None => store::record_exposure(path, holdout.id, who),
        },
    };
    variant.is_none_or(|v| &v != control)
}

/// `released_by_holdout` without writing: what the holdout holds for the user, or would.
fn peek_released_by_holdout(
    path: Path,
    holdout_key: &str,
    who: &str,
    attributes: &Attributes,
) -> bool {
    let holdout = find_experiment(path, holdout_key);
    let variant = override_for(&holdout, who)
        .or_else(|| store::stored_variant(path, holdout.id, who, Seen::Statement))
        .or_else(|| {
            if !holdout.is_active() || !enrolled(holdout_key, &holdout, who, attributes) {
                return None;
            }
            let index = bucket::pick(
                bucket::bucket(holdout_key, who),
                &holdout.thresholds,
                &holdout.weights,
            )?;
            Some(holdout.variant_keys[index].clone())
        });
    variant.is_none_or(|v| v != holdout.variant_keys[0])
}

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

fn assign(
    experiment_key: Option<&str>,
    user_id: Option<&str>,
    attributes: Option<JsonbDatum>,
) -> Option<String> {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    let attributes = Attributes::new(attributes);
    let path = Path::for_call();
    let exp = find_experiment(path, key);
    if let Some(variant) = override_for(&exp, user_id) {
        return Some(variant);
    }
    if let Some(variant) = store::stored_variant(path, exp.id, user_id, Seen::Statement) {
        return Some(variant);
    }
    if !exp.is_active() {
        // Nothing to write; the alias target may hold an assignment, though.
        let who = store::alias_of(path, user_id);
        if who != user_id {
            if let Some(variant) = store::stored_variant(path, exp.id, &who, Seen::Latest) {
                return Some(variant);
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
            return Some(variant);
        }
    }
    first_assignment(
        path,
        key,
        exp,
        &who,
        &attributes,
        WhenInactive::Raise,
        Expect::Unknown,
    )
    .map(Assigned::variant)
}

/// What a first assignment gave the user.
enum Assigned {
    /// Stored by this call.
    Inserted(String),
    /// Stored by a concurrent call that committed first.
    Stored(String),
    /// An override that came in while the experiment was re-read: nothing stored.
    Overridden(String),
}

impl Assigned {
    fn variant(self) -> String {
        match self {
            Assigned::Inserted(variant)
            | Assigned::Stored(variant)
            | Assigned::Overridden(variant) => variant,
        }
    }
}

/// What a first assignment does when the experiment turns out not to be active (a change
/// committed while the call was on its way).
#[derive(Clone, Copy, PartialEq)]
enum WhenInactive {
    /// `EXPERIMENT_INACTIVE`, as for any new user of an inactive experiment.
    Raise,
    /// Not enrolled (None): a holdout that is not active holds no new user out.
    NotEnrolled,
}

/// A first assignment of `who` (the identity, after aliases), under the experiment's
/// shared lock: no variant removal or delete can commit until this transaction ends, and
/// one committed before the lock was granted is seen in the latest snapshot. None when
/// the user is not enrolled. `expect`: what the caller's read of the key found (the first
/// insertion skips its pre-check after the pre-check's own read found nothing).
fn first_assignment(
    path: Path,
    key: &str,
    mut exp: Rc<Experiment>,
    who: &str,
    attributes: &Attributes,
    when_inactive: WhenInactive,
    mut expect: Expect,
) -> Option<Assigned> {
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
            // The reload took time: the caller's read no longer stands for the pre-check.
            expect = Expect::Unknown;
            continue;
        }
        if let Some(variant) = exp.overrides.get(who) {
            return Some(Assigned::Overridden(variant.clone()));
        }
        if !exp.is_active() {
            if when_inactive == WhenInactive::NotEnrolled {
                return None;
            }
            inactive(key, &exp);
        }
        if !enrolled(key, &exp, who, attributes) {
            return None;
        }
        if let Some(holdout) = &exp.holdout {
            if !released_by_holdout(path, holdout, who, attributes) {
                return None;
            }
        }
        let index = bucket::pick(user_bucket, &exp.thresholds, &exp.weights)
            .expect("validated weights have a positive sum");
        let variant = &exp.variant_keys[index];
        let inserted = store::insert_assignment(path, &exp, who, variant, expect);
        expect = Expect::Unknown;
        if inserted {
            if !exp.dimensions.is_empty() {
                store::insert_dimensions(exp.id, who, &dimension_values(&exp, attributes));
            }
            return Some(Assigned::Inserted(variant.clone()));
        }
        // A concurrent first call for this user committed first: return what it stored.
        if let Some(variant) = store::stored_variant(path, exp.id, who, Seen::Latest) {
            return Some(Assigned::Stored(variant));
        }
    }
    // Eight definitions committed while this call waited: ask the caller to retry, as
    // PostgreSQL asks when concurrent updates get in the way.
    raise_serialization_failure(&format!(
        "could not assign the user to experiment {key:?}: its definition kept changing; retry"
    ));
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
/// would store now (active experiments, for users targeting and coverage enrol), else
/// NULL. Writes nothing, takes no lock.
fn peek(
    experiment_key: Option<&str>,
    user_id: Option<&str>,
    attributes: Option<JsonbDatum>,
) -> Option<String> {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    let attributes = Attributes::new(attributes);
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
    if !enrolled(key, &exp, &who, &attributes) {
        return None;
    }
    if let Some(holdout) = &exp.holdout {
        if !peek_released_by_holdout(path, holdout, &who, &attributes) {
            return None;
        }
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
/// current weights, stored before it is returned; NULL for a user targeting or coverage
/// leaves out (nothing written).
#[pg_extern(volatile, parallel_unsafe)]
fn amba_assign(
    experiment_key: Option<&str>,
    user_id: Option<&str>,
    attributes: default!(Option<JsonbDatum>, "NULL"),
) -> Option<String> {
    assign(experiment_key, user_id, attributes)
}

/// Records that the user saw their variant (the first time is kept) and returns it.
#[pg_extern(volatile, parallel_unsafe)]
fn amba_expose(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
    expose(experiment_key, user_id)
}

/// The user's variant without enrolling them (SPEC §3d, §10).
#[pg_extern(stable, parallel_unsafe)]
fn amba_peek(
    experiment_key: Option<&str>,
    user_id: Option<&str>,
    attributes: default!(Option<JsonbDatum>, "NULL"),
) -> Option<String> {
    peek(experiment_key, user_id, attributes)
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

/// The user's bucket in a layer, [0, 1) (SPEC §11): they can be enrolled only in the
/// layer's experiment whose range holds it. Reproducible from the published rule.
#[pg_extern(immutable, parallel_safe)]
fn amba_layer_bucket(layer: Option<&str>, user_id: Option<&str>) -> f64 {
    validate::experiment_key(layer)
        .map_err(|e| amba_core::CoreError::invalid(e.detail.replacen("experiment_key", "layer", 1)))
        .or_raise();
    validate::user_id(user_id).or_raise();
    bucket::layer_bucket(layer.unwrap(), user_id.unwrap())
}

/// Whether `attributes` (a JSON object; NULL = `{}`) satisfy `condition` in GrowthBook's
/// condition language (SPEC §10); NULL or `{}` matches everyone. Pure: reads no table.
#[pg_extern(immutable, parallel_safe)]
fn amba_eval_condition(condition: Option<JsonbDatum>, attributes: Option<JsonbDatum>) -> bool {
    let attributes = match attributes {
        Some(given) => given.to_value("attributes"),
        None => serde_json::Value::Object(Default::default()),
    };
    amba_core::condition::check_attributes(&attributes).or_raise();
    match condition {
        // Answered as GrowthBook answers (an unknown operator never holds); an
        // experiment's targeting is checked strictly when written instead.
        Some(condition) => {
            amba_core::condition::eval_condition(&condition.to_value("condition"), &attributes)
                .or_raise()
        }
        None => true,
    }
}

/// The twins the HTTP surface calls (see the module comment).
#[pg_schema]
mod amba {
    use super::*;

    #[pg_extern(name = "_assign", volatile, parallel_unsafe)]
    fn assign_internal(
        experiment_key: Option<&str>,
        user_id: Option<&str>,
        attributes: Option<JsonbDatum>,
    ) -> Option<String> {
        assign(experiment_key, user_id, attributes)
    }

    #[pg_extern(name = "_expose", volatile, parallel_unsafe)]
    fn expose_internal(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
        expose(experiment_key, user_id)
    }

    #[pg_extern(name = "_peek", stable, parallel_unsafe)]
    fn peek_internal(
        experiment_key: Option<&str>,
        user_id: Option<&str>,
        attributes: Option<JsonbDatum>,
    ) -> Option<String> {
        peek(experiment_key, user_id, attributes)
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
