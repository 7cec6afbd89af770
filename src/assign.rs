//! The hot path: `amba_assign`, `amba_expose`, and the pure `amba_bucket`.
//!
//! A returning user costs one indexed lookup (one SPI round trip on a plan prepared once
//! per backend); a new user costs that plus one insert. The experiment definition comes
//! from the per-backend cache, so no JSON is parsed here.

use crate::cache::{self, with_plan, Experiment};
use crate::errors::{raise_code, OrRaise};
use amba_core::{bucket, validate, ErrorCode};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::RefCell;

thread_local! {
    static FIND_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static FIND_FRESH_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static INSERT_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static EXPOSE_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

const FIND_SQL: &str =
    "SELECT variant FROM amba.assignments WHERE experiment_id = $1 AND user_id = $2";

/// Inserts only while the experiment is still at the revision the variant was computed
/// from: the KEY SHARE lock waits for a concurrent update (which holds FOR UPDATE) and
/// re-checks the revision, so an update removing a variant and a first assignment to it
/// never both succeed. The weight version is recorded for the SRM test.
const INSERT_SQL: &str = "INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version) \
     SELECT e.id, $2, $3, e.weight_version FROM amba.experiments e \
     WHERE e.id = $1 AND e.revision = $4 AND e.status = 'active' \
     FOR KEY SHARE \
     ON CONFLICT (experiment_id, user_id) DO NOTHING \
     RETURNING variant";

const EXPOSE_SQL: &str = "WITH assigned AS ( \
       SELECT variant FROM amba.assignments WHERE experiment_id = $1 AND user_id = $2), \
     exposed AS ( \
       INSERT INTO amba.exposures (experiment_id, user_id) \
       SELECT $1, $2 FROM assigned \
       ON CONFLICT (experiment_id, user_id) DO NOTHING) \
     SELECT variant FROM assigned";

fn check_inputs<'a>(experiment_key: Option<&'a str>, user_id: Option<&'a str>) -> (&'a str, &'a str) {
    validate::experiment_key(experiment_key).or_raise();
    validate::user_id(user_id).or_raise();
    (experiment_key.unwrap(), user_id.unwrap())
}

fn find_experiment(client: &SpiClient<'_>, key: &str) -> std::rc::Rc<Experiment> {
    cache::lookup(client, key).unwrap_or_else(|| {
        raise_code(ErrorCode::ExperimentNotFound, format!("experiment {key:?} does not exist"))
    })
}

fn stored_variant(client: &SpiClient<'_>, experiment_id: i64, user_id: &str, fresh: bool) -> Option<String> {
    // The fresh variant is prepared as mutating so SPI takes a new snapshot: it must see
    // an assignment a concurrent first call committed while we were inserting.
    let slot = if fresh { &FIND_FRESH_PLAN } else { &FIND_PLAN };
    with_plan(slot, client, FIND_SQL, &[pg_sys::INT8OID, pg_sys::TEXTOID], fresh, |plan| {
        let table = client
            .select(plan, Some(1), &[experiment_id.into(), user_id.into()])
            .expect("reading the assignment");
        if table.is_empty() {
            None
        } else {
            table.first().get::<String>(1).expect("reading the variant")
        }
    })
}

fn insert_assignment(client: &SpiClient<'_>, exp: &Experiment, user_id: &str, variant: &str) -> bool {
    let types = [pg_sys::INT8OID, pg_sys::TEXTOID, pg_sys::TEXTOID, pg_sys::INT8OID];
    with_plan(&INSERT_PLAN, client, INSERT_SQL, &types, true, |plan| {
        let table = client
            .select(plan, None, &[exp.id.into(), user_id.into(), variant.into(), exp.revision.into()])
            .expect("storing the assignment");
        !table.is_empty()
    })
}

/// The user's sticky variant: the stored one, or a new one from the bucket and the
/// current weights, stored before it is returned.
#[pg_extern(volatile, parallel_unsafe)]
fn amba_assign(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    pgrx::spi::Spi::connect_mut(|client| {
        let mut exp = find_experiment(client, key);
        if let Some(variant) = stored_variant(client, exp.id, user_id, false) {
            return variant;
        }
        let user_bucket = bucket::bucket(key, user_id);
        // Each retry follows a commit by someone else (a concurrent first call for this
        // user, or an update of the experiment). From the second retry on the definition
        // is read under a lock that holds updates off, so the next insert cannot lose.
        for attempt in 0..6 {
            if !exp.is_active() {
                raise_code(
                    ErrorCode::ExperimentInactive,
                    format!("experiment {key:?} is {}; new users cannot be assigned", exp.status),
                );
            }
            let index = bucket::pick(user_bucket, &exp.thresholds, &exp.weights)
                .expect("validated weights have a positive sum");
            let variant = &exp.variant_keys[index];
            if insert_assignment(client, &exp, user_id, variant) {
                return variant.clone();
            }
            if let Some(variant) = stored_variant(client, exp.id, user_id, true) {
                return variant;
            }
            let refreshed =
                if attempt == 0 { cache::reload(client, key) } else { cache::load_locked(client, key) };
            exp = refreshed.unwrap_or_else(|| {
                raise_code(ErrorCode::ExperimentNotFound, format!("experiment {key:?} does not exist"))
            });
        }
        panic!("could not assign user to experiment {key:?}: the experiment kept changing");
    })
}

/// Records that the user saw their variant (the first time is kept) and returns it.
#[pg_extern(volatile, parallel_unsafe)]
fn amba_expose(experiment_key: Option<&str>, user_id: Option<&str>) -> String {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    pgrx::spi::Spi::connect_mut(|client| {
        let exp = find_experiment(client, key);
        let types = [pg_sys::INT8OID, pg_sys::TEXTOID];
        let variant = with_plan(&EXPOSE_PLAN, client, EXPOSE_SQL, &types, true, |plan| {
            let table = client
                .select(plan, Some(1), &[exp.id.into(), user_id.into()])
                .expect("recording the exposure");
            if table.is_empty() {
                None
            } else {
                table.first().get::<String>(1).expect("reading the variant")
            }
        });
        variant.unwrap_or_else(|| {
            raise_code(
                ErrorCode::AssignmentRequired,
                format!("user has no assignment in experiment {key:?}; call amba_assign first"),
            )
        })
    })
}

/// The user's bucket in [0, 1): reproduces an assignment from the published rule.
#[pg_extern(immutable, parallel_safe)]
fn amba_bucket(experiment_key: Option<&str>, user_id: Option<&str>) -> f64 {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    bucket::bucket(key, user_id)
}
