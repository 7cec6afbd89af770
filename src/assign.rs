//! The hot path: `amba_assign`, `amba_expose`, `amba_track`, and the pure `amba_bucket`.
//!
//! A returning user costs one primary-key lookup, read straight from the index (`pk_fetch`,
//! no SPI) whenever that reads exactly what a SELECT would; a new user costs that plus one
//! insert (SPI, on a plan prepared once per backend). The experiment definition comes from
//! the per-backend cache, so no JSON is parsed here. See BENCHMARKS.md for the figures.

use crate::cache::{self, with_plan, Experiment};
use crate::errors::{raise_code, OrRaise};
use amba_core::{bucket, validate, ErrorCode};
use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::RefCell;

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

/// A first exposure, once `pk_fetch` has found the assignment and no exposure.
const INSERT_EXPOSURE_SQL: &str = "INSERT INTO amba.exposures (experiment_id, user_id) VALUES ($1, $2) \
     ON CONFLICT (experiment_id, user_id) DO NOTHING";

const TRACK_SQL: &str =
    "INSERT INTO amba.events (user_id, event, occurred_at, properties) VALUES ($1, $2, $3, $4)";

/// Reads the row with primary key (experiment_id, user_id) straight from the index, the way
/// PostgreSQL reads its own catalogs (a systable scan): no SPI connection, no plan, no
/// executor. Returns whether a row is visible in `snapshot` and, with `attnum`, that text
/// column of it. Only used where it reads exactly what the SELECT through SPI would (see
/// `direct_reads_allowed`); the relation stays locked (AccessShareLock) to the end of the
/// transaction, as the executor would leave it.
unsafe fn pk_fetch(
    table: pg_sys::Oid,
    index: pg_sys::Oid,
    experiment_id: i64,
    user_id: &str,
    snapshot: pg_sys::Snapshot,
    attnum: Option<i16>,
) -> (bool, Option<String>) {
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        // The btree is searched with the scan key's collation: it must be the index's.
        let irel = pg_sys::index_open(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let user_id_collation = *(*irel).rd_indcollation.add(1);
        pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        pg_sys::ScanKeyEntryInitialize(
            &mut keys[0],
            0,
            1,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::Oid::from(pg_sys::F_INT8EQ),
            pg_sys::Datum::from(experiment_id),
        );
        let user_id_text = user_id.into_datum().expect("a text datum");
        pg_sys::ScanKeyEntryInitialize(
            &mut keys[1],
            0,
            2,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::InvalidOid,
            user_id_collation,
            pg_sys::Oid::from(pg_sys::F_TEXTEQ),
            user_id_text,
        );
        let scan = pg_sys::systable_beginscan(rel, index, true, snapshot, 2, keys.as_mut_ptr());
        let tuple = pg_sys::systable_getnext(scan);
        let found = if tuple.is_null() {
            (false, None)
        } else if let Some(attnum) = attnum {
            let mut is_null = false;
            let datum = pg_sys::heap_getattr(tuple, attnum as i32, (*rel).rd_att, &mut is_null);
            (true, String::from_datum(datum, is_null))
        } else {
            (true, None)
        };
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        found
    }
}

/// Whether `pk_fetch` reads what a SELECT through SPI would: the transaction has written
/// nothing yet (so no earlier command of ours must first become visible, as SPI makes it by
/// bumping the command counter), the caller may read each table, and row-level security
/// does not apply to the caller (else the policies must filter, and SPI applies them).
/// Otherwise the callers take the SPI path, which also raises any permission error.
fn direct_reads_allowed(tables: &[pg_sys::Oid]) -> bool {
    unsafe {
        if pg_sys::GetCurrentTransactionIdIfAny() != pg_sys::InvalidTransactionId {
            return false;
        }
        let user = pg_sys::GetUserId();
        tables.iter().all(|&relid| {
            pg_sys::pg_class_aclcheck(relid, user, pg_sys::ACL_SELECT as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
                && pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true)
                    != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        })
    }
}

/// The stored variant read directly, in the statement's snapshot (what the read-only SPI
/// SELECT sees): Some(found) when the direct read applies, None when SPI must do it.
fn direct_stored_variant(experiment_id: i64, user_id: &str) -> Option<Option<String>> {
    let t = cache::tables()?;
    if !direct_reads_allowed(&[t.assignments]) || !unsafe { pg_sys::ActiveSnapshotSet() } {
        return None;
    }
    let (_, variant) = unsafe {
        pk_fetch(
            t.assignments,
            t.assignments_pkey,
            experiment_id,
            user_id,
            pg_sys::GetActiveSnapshot(),
            Some(t.variant_attnum),
        )
    };
    Some(variant)
}

fn check_inputs<'a>(experiment_key: Option<&'a str>, user_id: Option<&'a str>) -> (&'a str, &'a str) {
    validate::experiment_key(experiment_key).or_raise();
    validate::user_id(user_id).or_raise();
    (experiment_key.unwrap(), user_id.unwrap())
}

fn find_experiment(key: &str) -> std::rc::Rc<Experiment> {
    cache::find(key).unwrap_or_else(|| {
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
    let mut exp = find_experiment(key);
    let direct = direct_stored_variant(exp.id, user_id);
    if let Some(Some(variant)) = direct {
        return variant;
    }
    pgrx::spi::Spi::connect_mut(|client| {
        if direct.is_none() {
            if let Some(variant) = stored_variant(client, exp.id, user_id, false) {
                return variant;
            }
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
    let exp = find_experiment(key);
    let no_assignment = || -> ! {
        raise_code(
            ErrorCode::AssignmentRequired,
            format!("user has no assignment in experiment {key:?}; call amba_assign first"),
        )
    };
    if let Some(t) = cache::tables().filter(|t| direct_reads_allowed(&[t.assignments, t.exposures])) {
        // Read as the SPI statement below would: in a new snapshot (it must see an
        // assignment committed since this statement began).
        let (variant, exposed) = unsafe {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let snapshot = pg_sys::GetActiveSnapshot();
            let (_, variant) =
                pk_fetch(t.assignments, t.assignments_pkey, exp.id, user_id, snapshot, Some(t.variant_attnum));
            let exposed = variant.is_some()
                && pk_fetch(t.exposures, t.exposures_pkey, exp.id, user_id, snapshot, None).0;
            pg_sys::PopActiveSnapshot();
            (variant, exposed)
        };
        let Some(variant) = variant else { no_assignment() };
        if !exposed {
            // Only a first exposure writes; the foreign key still checks the assignment.
            pgrx::spi::Spi::connect_mut(|client| {
                let types = [pg_sys::INT8OID, pg_sys::TEXTOID];
                with_plan(&INSERT_EXPOSURE_PLAN, client, INSERT_EXPOSURE_SQL, &types, true, |plan| {
                    client.select(plan, None, &[exp.id.into(), user_id.into()]).expect("recording the exposure");
                });
            });
        }
        return variant;
    }
    pgrx::spi::Spi::connect_mut(|client| {
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
        variant.unwrap_or_else(|| no_assignment())
    })
}

/// A `jsonb` argument as PostgreSQL passes it. pgrx's `JsonB` would print it to text and
/// parse that into serde values on every call; `amba_track` only stores it.
pub struct JsonbDatum(pg_sys::Datum);

impl FromDatum for JsonbDatum {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        (!is_null).then_some(JsonbDatum(datum))
    }
}

impl IntoDatum for JsonbDatum {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for JsonbDatum {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

pgrx::impl_sql_translatable!(JsonbDatum, arg_only = "jsonb");

/// Appends one event and returns its `occurred_at` as stored (`now()` when NULL).
/// `properties`: a JSON object or NULL, at most 64 KiB as JSON text.
#[pg_extern(volatile, parallel_unsafe)]
fn amba_track(
    user_id: Option<&str>,
    event: Option<&str>,
    properties: default!(Option<JsonbDatum>, "NULL"),
    occurred_at: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> TimestampWithTimeZone {
    validate::user_id(user_id).or_raise();
    validate::event(event).or_raise();
    if let Some(JsonbDatum(datum)) = properties {
        let kind = unsafe { pgrx::direct_function_call::<String>(pg_sys::jsonb_typeof, &[Some(datum)]) }
            .expect("jsonb_typeof of a jsonb");
        if kind != "object" {
            raise_code(
                ErrorCode::InvalidArgument,
                format!("properties must be a JSON object or NULL, not {kind}"),
            );
        }
        // As octet_length(properties::text): the size of the JSON text.
        let text_len = unsafe {
            let text = pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(datum)])
                .expect("jsonb_out of a jsonb");
            let len = text.to_bytes().len();
            pg_sys::pfree(text.as_ptr().cast_mut().cast());
            len
        };
        if text_len > 65536 {
            raise_code(ErrorCode::InvalidArgument, "properties must be at most 64 KiB of JSON");
        }
    }
    // An event at ±infinity would count as a conversion for every user (or for none).
    if occurred_at.is_some_and(|at| !at.is_finite()) {
        raise_code(ErrorCode::InvalidArgument, "occurred_at must be a finite time or NULL");
    }
    let stored_at = occurred_at.unwrap_or_else(|| {
        TimestampWithTimeZone::try_from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() })
            .expect("now() is a valid timestamp")
    });
    pgrx::spi::Spi::connect_mut(|client| {
        let types = [pg_sys::TEXTOID, pg_sys::TEXTOID, pg_sys::TIMESTAMPTZOID, pg_sys::JSONBOID];
        with_plan(&TRACK_PLAN, client, TRACK_SQL, &types, true, |plan| {
            client
                .select(plan, None, &[user_id.into(), event.into(), stored_at.into(), properties.into()])
                .expect("storing the event");
        });
    });
    stored_at
}

/// The user's bucket in [0, 1): reproduces an assignment from the published rule.
#[pg_extern(immutable, parallel_safe)]
fn amba_bucket(experiment_key: Option<&str>, user_id: Option<&str>) -> f64 {
    let (key, user_id) = check_inputs(experiment_key, user_id);
    bucket::bucket(key, user_id)
}
