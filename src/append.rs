//! Appending an event without SPI (the `amba_track` hot path): the table work of
//! `INSERT INTO amba.events ... VALUES (...)` — a row from the identity sequence, the heap
//! insert, every index entry — the way logical replication's apply worker inserts a row
//! (`ExecSimpleRelationInsert`), with no plan, portal or executor start-up.
//!
//! It is taken only where it does exactly what the INSERT would: `amba.events` has the
//! shape amba created (columns, NOT NULLs, identity, and amba's one CHECK, which `track`
//! has already enforced on the value), no trigger (a user's own, or Citus's), no
//! row-level security for the caller, who holds INSERT on it and may take values from its
//! sequence, in a read-write transaction. Any index a user adds is maintained, unique ones
//! checked, as the executor would. Otherwise `track` runs the INSERT through SPI, which
//! also raises any error the INSERT would.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// What a call needs to know about `amba.events`, learned once per relcache change of it.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Unknown,
    /// amba's own shape: rows can be appended directly; the identity sequence of event_id.
    Direct {
        events: pg_sys::Oid,
        sequence: pg_sys::Oid,
    },
    /// Anything else (a trigger, another CHECK, a changed column...): through SPI.
    Spi {
        events: pg_sys::Oid,
    },
}

thread_local! {
    static SHAPE: Cell<Shape> = const { Cell::new(Shape::Unknown) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Called while PostgreSQL processes invalidation messages: must not error or allocate.
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let events = match SHAPE.with(Cell::get) {
        Shape::Unknown => return,
        Shape::Direct { events, .. } | Shape::Spi { events } => events,
    };
    if relid == pg_sys::InvalidOid || relid == events {
        SHAPE.with(|s| s.set(Shape::Unknown));
    }
}

/// amba's CHECK on `properties`, as `pg_get_constraintdef` prints it.
const PROPERTIES_CHECK: &str =
    "CHECK (((properties IS NULL) OR (jsonb_typeof(properties) = 'object'::text)))";

/// The columns amba created: name, type, NOT NULL, identity ('a' = GENERATED ALWAYS).
const COLUMNS: [(&str, pg_sys::Oid, bool, u8); 5] = [
    ("event_id", pg_sys::INT8OID, true, b'a'),
    ("user_id", pg_sys::TEXTOID, true, 0),
    ("event", pg_sys::TEXTOID, true, 0),
    ("occurred_at", pg_sys::TIMESTAMPTZOID, true, 0),
    ("properties", pg_sys::JSONBOID, false, 0),
];

/// Whether the open relation `rel` has amba's shape (see the module comment), and if so
/// its identity sequence.
unsafe fn learn_shape(rel: pg_sys::Relation) -> Shape {
    unsafe {
        let events = (*rel).rd_id;
        let form = (*rel).rd_rel;
        let desc = (*rel).rd_att;
        let spi = Shape::Spi { events };
        if (*form).relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
            || !(*rel).trigdesc.is_null()
        {
            return spi;
        }
        if (*desc).natts != COLUMNS.len() as i32 {
            return spi;
        }
        for (i, (name, type_oid, not_null, identity)) in COLUMNS.iter().enumerate() {
            let att = (*desc).attrs.as_slice(COLUMNS.len())[i];
            let att_name = std::ffi::CStr::from_ptr(att.attname.data.as_ptr());
            if att.attisdropped
                || att_name.to_bytes() != name.as_bytes()
                || att.atttypid != *type_oid
                || att.attnotnull != *not_null
                || att.attidentity as u8 != *identity
                || att.attgenerated != 0
            {
                return spi;
            }
        }
        let checks: Option<Vec<Option<String>>> = Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1 AND contype = 'c'",
                    None,
                    &[events.into()],
                )
                .ok()?;
            Some(
                rows.map(|row| row.get::<String>(1).ok().flatten())
                    .collect(),
            )
        });
        if checks != Some(vec![Some(PROPERTIES_CHECK.to_string())]) {
            return spi;
        }
        let sequence = pg_sys::getIdentitySequence(events, 1, true);
        if sequence == pg_sys::InvalidOid {
            return spi;
        }
        Shape::Direct { events, sequence }
    }
}

/// Appends the event directly and returns true, or returns false (having done nothing)
/// when the INSERT must go through SPI. `events` is the OID of `amba.events`; the values
/// are the checked arguments of `amba_track`.
pub fn append_event(
    events: pg_sys::Oid,
    user_id: &str,
    event: &str,
    occurred_at: TimestampWithTimeZone,
    properties: Option<pg_sys::Datum>,
) -> bool {
    if !CALLBACK_REGISTERED.with(Cell::get) {
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0))
        };
        CALLBACK_REGISTERED.with(|c| c.set(true));
    }
    unsafe {
        if pg_sys::XactReadOnly || pg_sys::IsInParallelMode() {
            return false;
        }
        let user = pg_sys::GetUserId();
        let may = |relid, mode| {
            pg_sys::pg_class_aclcheck(relid, user, mode as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
        };
        if !may(events, pg_sys::ACL_INSERT)
            || pg_sys::check_enable_rls(events, pg_sys::InvalidOid, true)
                == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        {
            return false;
        }
        // Opening with the INSERT's lock processes pending invalidations: a change to the
        // table committed before this point has reset SHAPE by now.
        let rel = pg_sys::table_open(events, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let mut shape = SHAPE.with(Cell::get);
        let stale = match shape {
            Shape::Unknown => true,
            Shape::Direct { events: known, .. } | Shape::Spi { events: known } => known != events,
        };
        if stale {
            shape = learn_shape(rel);
            SHAPE.with(|s| s.set(shape));
        }
        let Shape::Direct { sequence, .. } = shape else {
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            return false;
        };
        // An identity column takes its value without a privilege on the sequence; nextval
        // here checks one, so without it the INSERT goes through SPI.
        if !may(sequence, pg_sys::ACL_USAGE) && !may(sequence, pg_sys::ACL_UPDATE) {
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            return false;
        }
        let event_id =
            pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[sequence.into_datum()])
                .expect("nextval of event_id");

        let estate = pg_sys::CreateExecutorState();
        let result_rel = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
            .cast::<pg_sys::ResultRelInfo>();
        pg_sys::InitResultRelInfo(result_rel, rel, 1, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(result_rel, false);
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        pg_sys::ExecClearTuple(slot);
        let values = std::slice::from_raw_parts_mut((*slot).tts_values, COLUMNS.len());
        let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, COLUMNS.len());
        values[0] = event_id.into_datum().expect("a bigint");
        values[1] = user_id.into_datum().expect("a text");
        values[2] = event.into_datum().expect("a text");
        values[3] = occurred_at.into_datum().expect("a timestamptz");
        nulls.fill(false);
        match properties {
            Some(datum) => values[4] = datum,
            None => nulls[4] = true,
        }
        pg_sys::ExecStoreVirtualTuple(slot);
        pg_sys::simple_table_tuple_insert(rel, slot);
        let recheck = pg_sys::ExecInsertIndexTuples(
            result_rel,
            slot,
            estate,
            false,
            false,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        // Deferred uniqueness would need the executor's after-trigger queue; a deferrable
        // constraint comes with a trigger, which sent this table down the SPI path.
        assert!(
            recheck.is_null(),
            "no index of amba.events defers its check"
        );
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::ExecCloseIndices(result_rel);
        pg_sys::FreeExecutorState(estate);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        // As SPI does after a write: later commands of this transaction see the row.
        pg_sys::CommandCounterIncrement();
        true
    }
}
