//! Inserting the hot path's rows without SPI: an event (`amba_track`) and a first
//! assignment (`amba_assign`, ON CONFLICT DO NOTHING). Each does the table work of the
//! INSERT — the heap insert, every index entry, the speculative-insertion protocol for
//! ON CONFLICT — the way logical replication's apply worker inserts a row
//! (`ExecSimpleRelationInsert`) and `ExecInsert` handles a conflict, with no plan, portal
//! or executor start-up. PostgreSQL reads a table's CHECK expressions from their stored
//! text on every INSERT; here they are already enforced on the values.
//!
//! It is taken only where it does exactly what the INSERT would:
//! - the table has the shape amba created (columns, NOT NULLs, identity, defaults, CHECKs,
//!   and for assignments no unique index but the primary key), learned once per relcache
//!   change of it, and no trigger fires on INSERT (a user's own, or Citus's);
//! - the caller holds INSERT on it, row-level security adds nothing for them (it does not apply, or their policies are
//!   the constant true, as amba's own roles' are: `access::row_security_lets_through`),
//!   and the transaction is read-write.
//!
//! Any index a user adds is maintained, unique ones checked, as the executor would.
//! Otherwise the caller runs the INSERT through SPI, which also raises any error the
//! INSERT would.

use super::access::{self, Command};
use super::catalog;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// A column as amba creates it: name, type, NOT NULL, identity ('a' = GENERATED ALWAYS).
type Column = (&'static str, pg_sys::Oid, bool, u8);

struct TableShape {
    columns: &'static [Column],
    /// Its CHECK constraints' expressions as `pg_get_expr` prints them, by name.
    checks: &'static [&'static str],
    /// Its column defaults as `column = expression`, by column number.
    defaults: &'static [&'static str],
    /// Whether a unique index besides the primary key sends it down the SPI path (for
    /// ON CONFLICT, whose arbiters the SQL infers from the unique indexes).
    only_primary_key_unique: bool,
    /// The commands whose policies the SQL statement is subject to (RETURNING reads).
    row_security: &'static [Command],
    /// Whether the INSERT may fire foreign-key checks (and no other trigger): they are
    /// queued and fired as the executor does (`Insert::row_inserted`, `Insert::finish`).
    foreign_key_checks: bool,
}

const EVENTS: TableShape = TableShape {
    columns: &[
        ("event_id", pg_sys::INT8OID, true, b'a'),
        ("user_id", pg_sys::TEXTOID, true, 0),
        ("event", pg_sys::TEXTOID, true, 0),
        ("occurred_at", pg_sys::TIMESTAMPTZOID, true, 0),
        ("properties", pg_sys::JSONBOID, false, 0),
    ],
    checks: &["((properties IS NULL) OR (jsonb_typeof(properties) = 'object'::text))"],
    defaults: &[],
    only_primary_key_unique: false,
    row_security: &[Command::Insert],
    foreign_key_checks: false,
};

const ASSIGNMENTS: TableShape = TableShape {
    columns: &[
        ("experiment_id", pg_sys::INT8OID, true, 0),
        ("user_id", pg_sys::TEXTOID, true, 0),
        ("variant", pg_sys::TEXTOID, true, 0),
        ("weight_version", pg_sys::INT4OID, true, 0),
        ("assigned_at", pg_sys::TIMESTAMPTZOID, true, 0),
    ],
    checks: &[],
    defaults: &["assigned_at = now()"],
    only_primary_key_unique: true,
    // INSERT ... RETURNING variant: the returned row must pass the SELECT policies too.
    row_security: &[Command::Insert, Command::Select],
    foreign_key_checks: false,
};

const EXPOSURES: TableShape = TableShape {
    columns: &[
        ("experiment_id", pg_sys::INT8OID, true, 0),
        ("user_id", pg_sys::TEXTOID, true, 0),
        ("exposed_at", pg_sys::TIMESTAMPTZOID, true, 0),
    ],
    checks: &[],
    defaults: &["exposed_at = now()"],
    only_primary_key_unique: true,
    // INSERT ... ON CONFLICT DO NOTHING, no RETURNING: the INSERT policies only.
    row_security: &[Command::Insert],
    // Its foreign key to amba.assignments.
    foreign_key_checks: true,
};

/// What a call needs to know about a table, learned once per relcache change of it.
#[derive(Clone, Copy, Debug)]
enum Learned {
    Unknown,
    /// amba's own shape: rows go in directly. `sequence`: the identity sequence, if any;
    /// `primary_key`: the primary key index (ON CONFLICT's arbiter).
    Direct {
        relid: pg_sys::Oid,
        sequence: pg_sys::Oid,
        primary_key: pg_sys::Oid,
    },
    /// Anything else (a trigger, another CHECK, a changed column...): through SPI.
    Spi {
        relid: pg_sys::Oid,
    },
}

impl Learned {
    fn relid(self) -> Option<pg_sys::Oid> {
        match self {
            Learned::Unknown => None,
            Learned::Direct { relid, .. } | Learned::Spi { relid } => Some(relid),
        }
    }
}

thread_local! {
    static EVENTS_LEARNED: Cell<Learned> = const { Cell::new(Learned::Unknown) };
    static ASSIGNMENTS_LEARNED: Cell<Learned> = const { Cell::new(Learned::Unknown) };
    static EXPOSURES_LEARNED: Cell<Learned> = const { Cell::new(Learned::Unknown) };
}

/// Forgets what was learned about `relid` (InvalidOid: about every table). Called from
/// amba's relcache callback (`invalidation.rs`), while PostgreSQL processes invalidation
/// messages: must not error or allocate.
pub fn forget(relid: pg_sys::Oid) {
    for cell in [&EVENTS_LEARNED, &ASSIGNMENTS_LEARNED, &EXPOSURES_LEARNED] {
        cell.with(|learned| {
            if relid == pg_sys::InvalidOid || learned.get().relid() == Some(relid) {
                learned.set(Learned::Unknown);
            }
        });
    }
}

/// An expression stored in the catalog (`nodeToString` form) as `pg_get_expr` prints it.
unsafe fn deparse(stored: *const std::ffi::c_char, relid: pg_sys::Oid) -> Option<String> {
    unsafe {
        let text = std::ffi::CStr::from_ptr(stored).to_str().ok()?;
        pgrx::direct_function_call::<String>(
            pg_sys::pg_get_expr,
            &[text.into_datum(), relid.into_datum()],
        )
    }
}

/// Whether every trigger of the table that fires on INSERT is a foreign key's check
/// (`RI_FKey_check_ins`, internal, AFTER ROW): what the executor queues for such an INSERT
/// and fires at the end of the statement, as `Insert::row_inserted` and `Insert::finish` do.
unsafe fn only_foreign_key_checks_on_insert(t: &pg_sys::TriggerDesc) -> bool {
    unsafe {
        let all = std::slice::from_raw_parts(t.triggers, t.numtriggers as usize);
        all.iter()
            .filter(|trigger| trigger.tgtype as u32 & pg_sys::TRIGGER_TYPE_INSERT != 0)
            .all(|trigger| {
                let kind = trigger.tgtype as u32;
                trigger.tgfoid == pg_sys::Oid::from(pg_sys::F_RI_FKEY_CHECK_INS)
                    && trigger.tgisinternal
                    && kind & pg_sys::TRIGGER_TYPE_ROW != 0
                    && kind & (pg_sys::TRIGGER_TYPE_BEFORE | pg_sys::TRIGGER_TYPE_INSTEAD) == 0
            })
    }
}

/// Whether the open relation `rel` has the shape `spec` describes (see the module comment).
unsafe fn learn(rel: pg_sys::Relation, spec: &TableShape) -> Learned {
    unsafe {
        let relid = (*rel).rd_id;
        let spi = Learned::Spi { relid };
        // A plain table: not a partition (whose constraint the executor checks), no rule
        // rewriting the INSERT.
        let form = &*(*rel).rd_rel;
        if form.relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
            || form.relispartition
            || !(*rel).rd_rules.is_null()
        {
            return spi;
        }
        let triggers = (*rel).trigdesc;
        if !triggers.is_null() {
            let t = &*triggers;
            let after_row = t.trig_insert_after_row
                && !(spec.foreign_key_checks && only_foreign_key_checks_on_insert(t));
            if t.trig_insert_before_row
                || after_row
                || t.trig_insert_instead_row
                || t.trig_insert_before_statement
                || t.trig_insert_after_statement
                || t.trig_insert_new_table
                || t.trig_truncate_before_statement
                || t.trig_truncate_after_statement
            {
                return spi;
            }
        }
        let desc = (*rel).rd_att;
        if (*desc).natts != spec.columns.len() as i32 {
            return spi;
        }
        let attrs = (*desc).attrs.as_slice(spec.columns.len());
        for (att, (name, type_oid, not_null, identity)) in attrs.iter().zip(spec.columns) {
            let att_name = std::ffi::CStr::from_ptr(att.attname.data.as_ptr());
            if att.attisdropped
                || att_name.to_bytes() != name.as_bytes()
                || att.atttypid != *type_oid
                || att.atttypmod != -1
                || att.attnotnull != *not_null
                || att.attidentity as u8 != *identity
                || att.attgenerated != 0
            {
                return spi;
            }
        }
        // CHECKs, defaults and indexes from the relation's relcache entry, as the executor
        // reads them (a catalog query would read them in an older snapshot).
        let constr = (*desc).constr;
        let (mut checks, mut defaults) = (Vec::new(), Vec::new());
        if !constr.is_null() {
            let constr = &*constr;
            for i in 0..constr.num_check as usize {
                let Some(check) = deparse((*constr.check.add(i)).ccbin, relid) else {
                    return spi;
                };
                checks.push(check);
            }
            for i in 0..constr.num_defval as usize {
                let default = &*constr.defval.add(i);
                let Some(expression) = deparse(default.adbin, relid) else {
                    return spi;
                };
                let Some(column) = spec.columns.get(default.adnum as usize - 1) else {
                    return spi;
                };
                defaults.push(format!("{} = {expression}", column.0));
            }
        }
        defaults.sort();
        if checks != spec.checks || defaults != spec.defaults {
            return spi;
        }
        let primary_key = pg_sys::RelationGetPrimaryKeyIndex(rel);
        let indexes = pg_sys::RelationGetIndexList(rel);
        let index_count = if indexes.is_null() {
            0
        } else {
            (*indexes).length as usize
        };
        for i in 0..index_count {
            let index_oid = (*(*indexes).elements.add(i)).oid_value;
            let index = pg_sys::index_open(index_oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let form = &*(*index).rd_index;
            let keys = form.indkey.values.as_slice(form.indnatts as usize).to_vec();
            let (unique, primary) = (form.indisunique, form.indisprimary);
            pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
            if spec.only_primary_key_unique && ((unique && !primary) || (primary && keys != [1, 2]))
            {
                return spi;
            }
        }
        pg_sys::list_free(indexes);
        if spec.only_primary_key_unique && primary_key == pg_sys::InvalidOid {
            return spi;
        }
        let sequence = match spec.columns.iter().position(|c| c.3 != 0) {
            Some(i) => match pg_sys::getIdentitySequence(relid, i as i16 + 1, true) {
                seq if seq == pg_sys::InvalidOid => return spi,
                seq => seq,
            },
            None => pg_sys::InvalidOid,
        };
        Learned::Direct {
            relid,
            sequence,
            primary_key,
        }
    }
}

unsafe extern "C-unwind" {
    /// sequence.c: the next value, without a privilege check when `check_permissions` is
    /// false, as an identity column takes it (`ExecEvalNextValueExpr`).
    #[link_name = "nextval_internal"]
    fn nextval_internal_unguarded(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// `nextval_internal`, with an error it raises turned into a Rust panic (as pgrx does for
/// its own bindings).
unsafe fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64 {
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            nextval_internal_unguarded(relid, check_permissions)
        })
    }
}

/// The table opened for a direct insert (with the INSERT's lock) and what was learned
/// about it (`Learned::Direct`); None (nothing held) when the INSERT must go through SPI.
unsafe fn open_for_insert(
    relid: pg_sys::Oid,
    generation: u64,
    spec: &TableShape,
    learned: &'static std::thread::LocalKey<Cell<Learned>>,
) -> Option<(pg_sys::Relation, Learned)> {
    unsafe {
        if pg_sys::XactReadOnly || pg_sys::IsInParallelMode() {
            return None;
        }
        // Opening with the INSERT's lock processes pending invalidations: a change to the
        // table committed before this point has reset what was learned by now, and the
        // privileges and policies below are the committed ones.
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let close = |rel| {
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            None
        };
        // The path was chosen on the catalog as it was before this lock: a change that
        // came in with it (a table swapped for a partitioned one) sends this call to SQL.
        if generation != catalog::generation() {
            return close(rel);
        }
        if !access::may(relid, pg_sys::ACL_INSERT)
            || !access::row_security_lets_through(rel, spec.row_security)
        {
            return close(rel);
        }
        let mut known = learned.with(Cell::get);
        if known.relid() != Some(relid) {
            known = learn(rel, spec);
            learned.with(|cell| cell.set(known));
        }
        match known {
            Learned::Direct { .. } => Some((rel, known)),
            _ => close(rel),
        }
    }
}

/// The executor state one insert needs, over an open table; freed by `finish`.
struct Insert {
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    result_rel: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    after_triggers: bool,
}

impl Insert {
    /// `values`: one per column, None for NULL. `speculative`: for ON CONFLICT.
    /// `after_triggers`: the table's foreign-key checks are queued (`row_inserted`) and
    /// fired by `finish`, in a query level of PostgreSQL's after-trigger queue of their own,
    /// as logical replication's apply worker does for its inserts.
    unsafe fn new(
        rel: pg_sys::Relation,
        values: &[Option<pg_sys::Datum>],
        speculative: bool,
        after_triggers: bool,
    ) -> Insert {
        unsafe {
            let estate = pg_sys::CreateExecutorState();
            // Everything below lives in the executor state's memory, freed with it.
            let caller_context = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
            let result_rel = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                .cast::<pg_sys::ResultRelInfo>();
            pg_sys::InitResultRelInfo(result_rel, rel, 1, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(result_rel, speculative);
            if after_triggers {
                // Where the queue's firing looks the table up (ExecGetTriggerResultRel).
                (*estate).es_opened_result_relations =
                    pg_sys::lappend((*estate).es_opened_result_relations, result_rel.cast());
                (*estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
                pg_sys::AfterTriggerBeginQuery();
            }
            let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
            pg_sys::MemoryContextSwitchTo(caller_context);
            pg_sys::ExecClearTuple(slot);
            let datums = std::slice::from_raw_parts_mut((*slot).tts_values, values.len());
            let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, values.len());
            for (i, value) in values.iter().enumerate() {
                datums[i] = value.unwrap_or(pg_sys::Datum::from(0));
                nulls[i] = value.is_none();
            }
            pg_sys::ExecStoreVirtualTuple(slot);
            Insert {
                rel,
                estate,
                result_rel,
                slot,
                after_triggers,
            }
        }
    }

    /// The AFTER ROW INSERT triggers for the row just stored, queued as ExecInsert queues
    /// them (`ExecARInsertTriggers`: each trigger's enabled state and
    /// session_replication_role apply); `finish` fires them.
    unsafe fn row_inserted(&self) {
        unsafe {
            if self.after_triggers {
                pg_sys::ExecARInsertTriggers(
                    self.estate,
                    self.result_rel,
                    self.slot,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
            }
        }
    }

    /// Index entries for the row just stored; `arbiters` as ExecInsert passes them.
    /// Returns whether a speculative insertion met a conflict.
    unsafe fn index_entries(&self, speculative: bool, arbiters: *mut pg_sys::List) -> bool {
        unsafe {
            let mut conflict = false;
            let conflict_ptr = if speculative {
                &mut conflict as *mut bool
            } else {
                std::ptr::null_mut()
            };
            let recheck = pg_sys::ExecInsertIndexTuples(
                self.result_rel,
                self.slot,
                self.estate,
                false,
                speculative,
                conflict_ptr,
                arbiters,
            );
            // Deferred uniqueness would need the executor's after-trigger queue; a
            // deferrable constraint comes with a trigger, which sent the table down the
            // SPI path.
            assert!(
                recheck.is_null() || speculative,
                "no index of the table defers its check"
            );
            pg_sys::list_free(recheck);
            conflict
        }
    }

    unsafe fn finish(self) {
        unsafe {
            if self.after_triggers {
                // Fires what `row_inserted` queued (a foreign key's check raises its error
                // here, as at the end of the INSERT), then frees the slots it made.
                pg_sys::AfterTriggerEndQuery(self.estate);
                pg_sys::ExecResetTupleTable((*self.estate).es_tupleTable, false);
            }
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::ExecCloseIndices(self.result_rel);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            // As SPI does after a write: later commands of this transaction see the row.
            pg_sys::CommandCounterIncrement();
        }
    }
}

/// `INSERT INTO amba.events (user_id, event, occurred_at, properties) VALUES (...)`,
/// done directly: true, or false (having done nothing) when it must go through SPI.
/// `events` is the OID of amba.events; the values are `amba_track`'s, checked.
pub fn append_event(
    events: pg_sys::Oid,
    generation: u64,
    user_id: &str,
    event: &str,
    occurred_at: TimestampWithTimeZone,
    properties: Option<pg_sys::Datum>,
) -> bool {
    unsafe {
        let Some((rel, Learned::Direct { sequence, .. })) =
            open_for_insert(events, generation, &EVENTS, &EVENTS_LEARNED)
        else {
            return false;
        };
        let event_id = nextval_internal(sequence, false);
        let values = [
            event_id.into_datum(),
            user_id.into_datum(),
            event.into_datum(),
            occurred_at.into_datum(),
            properties,
        ];
        let insert = Insert::new(rel, &values, false, false);
        pg_sys::simple_table_tuple_insert(rel, insert.slot);
        insert.index_entries(false, std::ptr::null_mut());
        insert.finish();
        true
    }
}

/// `INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version)
/// VALUES (...) ON CONFLICT (experiment_id, user_id) DO NOTHING`, done directly:
/// Some(true) when the row was inserted, Some(false) when one for the user existed (after
/// waiting for a concurrent inserter, as ON CONFLICT does), None (having done nothing)
/// when it must go through SPI.
pub fn assignment_if_absent(
    assignments: pg_sys::Oid,
    generation: u64,
    experiment_id: i64,
    user_id: &str,
    variant: &str,
    weight_version: i32,
    expect: Expect,
) -> Option<bool> {
    unsafe {
        // In REPEATABLE READ and SERIALIZABLE, a conflict with a row the transaction's
        // snapshot cannot see is a serialization failure (ExecCheckTIDVisible): SPI's.
        if pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 {
            return None;
        }
        let Some((rel, Learned::Direct { primary_key, .. })) =
            open_for_insert(assignments, generation, &ASSIGNMENTS, &ASSIGNMENTS_LEARNED)
        else {
            return None;
        };
        let now = TimestampWithTimeZone::try_from(pg_sys::GetCurrentTransactionStartTimestamp())
            .expect("now() is a valid timestamp");
        let values = [
            experiment_id.into_datum(),
            user_id.into_datum(),
            variant.into_datum(),
            weight_version.into_datum(),
            now.into_datum(),
        ];
        Some(insert_if_absent(rel, primary_key, &values, false, expect))
    }
}

/// `INSERT INTO amba.exposures (experiment_id, user_id) VALUES (...) ON CONFLICT
/// (experiment_id, user_id) DO NOTHING`, done directly, its foreign key checked by
/// PostgreSQL's own trigger: Some(true) when the row was inserted, Some(false) when the
/// user was exposed already, None (having done nothing) when it must go through SPI.
pub fn exposure_if_absent(
    exposures: pg_sys::Oid,
    generation: u64,
    experiment_id: i64,
    user_id: &str,
) -> Option<bool> {
    unsafe {
        if pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 {
            return None;
        }
        let (rel, primary_key) = open_exposures(exposures, generation)?;
        let values = exposure_values(experiment_id, user_id);
        Some(insert_if_absent(
            rel,
            primary_key,
            &values,
            true,
            Expect::Unknown,
        ))
    }
}

/// `INSERT INTO amba.exposures (experiment_id, user_id) VALUES (...)`, done directly, for
/// an assignment the transaction has just stored: a second row for it would be a unique
/// violation, raised by the index as the INSERT would. False (having done nothing) when it
/// must go through SPI.
pub fn new_exposure(
    exposures: pg_sys::Oid,
    generation: u64,
    experiment_id: i64,
    user_id: &str,
) -> bool {
    unsafe {
        let Some((rel, _)) = open_exposures(exposures, generation) else {
            return false;
        };
        let values = exposure_values(experiment_id, user_id);
        let insert = Insert::new(rel, &values, false, true);
        pg_sys::simple_table_tuple_insert(rel, insert.slot);
        insert.index_entries(false, std::ptr::null_mut());
        insert.row_inserted();
        insert.finish();
        true
    }
}

/// amba.exposures opened for a direct insert, with its primary key.
unsafe fn open_exposures(
    exposures: pg_sys::Oid,
    generation: u64,
) -> Option<(pg_sys::Relation, pg_sys::Oid)> {
    unsafe {
        match open_for_insert(exposures, generation, &EXPOSURES, &EXPOSURES_LEARNED)? {
            (rel, Learned::Direct { primary_key, .. }) => Some((rel, primary_key)),
            _ => None,
        }
    }
}

/// An exposure row as `DEFAULT now()` fills it.
fn exposure_values(experiment_id: i64, user_id: &str) -> [Option<pg_sys::Datum>; 3] {
    let now =
        TimestampWithTimeZone::try_from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() })
            .expect("now() is a valid timestamp");
    [
        experiment_id.into_datum(),
        user_id.into_datum(),
        now.into_datum(),
    ]
}

/// What the caller knows of the key before inserting.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Expect {
    /// The caller has just done the pre-check's own read and found no row: a read with a
    /// dirty snapshot that waited for any transaction inserting or deleting the key
    /// (`index_read::by_key_after_waiting`), with nothing that waits between it and this
    /// insertion. The first pass of the speculative insertion then skips the pre-check. A
    /// row that comes in after that read is still found by the index insertion, and the
    /// retry's pre-check waits for it, as in ExecInsert's own window between its pre-check
    /// and its insertion.
    Absent,
    /// Anything else: the pre-check runs first, as ExecInsert's does.
    Unknown,
}

/// The table work of `INSERT ... ON CONFLICT (primary key) DO NOTHING` for one row of
/// `values` into the open `rel` (closed here): true when inserted.
unsafe fn insert_if_absent(
    rel: pg_sys::Relation,
    primary_key: pg_sys::Oid,
    values: &[Option<pg_sys::Datum>],
    after_triggers: bool,
    expect: Expect,
) -> bool {
    unsafe {
        let insert = Insert::new(rel, values, true, after_triggers);
        let arbiters = pg_sys::lappend_oid(std::ptr::null_mut(), primary_key);
        // ExecInsert's protocol: check for a conflicting row first (waiting for its
        // inserter to finish, so a lost race writes nothing); insert speculatively; if a
        // concurrent insert slipped in between, take the row back and check again. After
        // the caller's own pre-check read (`Expect::Absent`) the first pass inserts at once:
        // the index insertion (UNIQUE_CHECK_PARTIAL, under the leaf page's lock) reports
        // every row that came in since, committed or not; the retry's pre-check then waits.
        // This needs the arbiter checked immediately: a deferrable primary key comes with
        // its recheck trigger, which sends the table to SPI (`learn`).
        let mut check_first = expect == Expect::Unknown;
        let inserted = loop {
            pgrx::check_for_interrupts!();
            let mut conflict_tid: pg_sys::ItemPointerData = std::mem::zeroed();
            if check_first
                && !pg_sys::ExecCheckIndexConstraints(
                    insert.result_rel,
                    insert.slot,
                    insert.estate,
                    &mut conflict_tid,
                    arbiters,
                )
            {
                break false;
            }
            check_first = true;
            let xid = pg_sys::GetCurrentTransactionId();
            let token = pg_sys::SpeculativeInsertionLockAcquire(xid);
            pg_sys::table_tuple_insert_speculative(
                rel,
                insert.slot,
                pg_sys::GetCurrentCommandId(true),
                0,
                std::ptr::null_mut(),
                token,
            );
            let conflict = insert.index_entries(true, arbiters);
            pg_sys::table_tuple_complete_speculative(rel, insert.slot, token, !conflict);
            pg_sys::SpeculativeInsertionLockRelease(xid);
            if !conflict {
                insert.row_inserted();
                break true;
            }
        };
        pg_sys::list_free(arbiters);
        insert.finish();
        inserted
    }
}
