//! Direct reads for the hot path, the way PostgreSQL reads its own catalogs (a systable
//! scan): no SPI connection, no plan, no executor. Each is used only where it reads
//! exactly what the equivalent SELECT would (see `direct_reads_allowed`).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// The OIDs the direct reads need, resolved once per backend and forgotten on any relcache
/// invalidation of one of the tables (ALTER, DROP, a new extension version...).
#[derive(Clone, Copy, Debug)]
pub struct Tables {
    pub experiments: pg_sys::Oid,
    pub assignments: pg_sys::Oid,
    pub assignments_pkey: pg_sys::Oid,
    /// Attribute number of `amba.assignments.variant`.
    pub variant_attnum: i16,
    pub exposures: pg_sys::Oid,
    pub exposures_pkey: pg_sys::Oid,
    pub aliases: pg_sys::Oid,
    pub events: pg_sys::Oid,
    pub aliases_pkey: pg_sys::Oid,
    /// Attribute number of `amba.aliases.user_id`.
    pub alias_user_attnum: i16,
}

thread_local! {
    static TABLES: Cell<Option<Tables>> = const { Cell::new(None) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// amba's one relcache callback (PostgreSQL has room for ten in all): forgets what the
/// direct paths learned about a table when it changes. Called while PostgreSQL processes
/// invalidation messages: must not error or allocate.
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    crate::insert::forget(relid);
    forget_verdicts(Some(relid));
    if let Some(t) = TABLES.with(Cell::get) {
        if relid == pg_sys::InvalidOid
            || [
                t.experiments,
                t.assignments,
                t.exposures,
                t.aliases,
                t.events,
            ]
            .contains(&relid)
        {
            TABLES.with(|c| c.set(None));
        }
    }
}

/// Whether a table has a TRUNCATE trigger: amba's tables have none of their own (their
/// foreign keys' triggers are row triggers), so one that does is a Citus table (Citus puts
/// a truncate trigger on the coordinator's, `amba_distribute` a marker on each worker's).
/// Its rows then live in shards, other relations than this one.
unsafe fn has_truncate_trigger(relid: pg_sys::Oid) -> bool {
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return true;
        }
        let triggers = (*rel).trigdesc;
        let has = !triggers.is_null()
            && ((*triggers).trig_truncate_before_statement
                || (*triggers).trig_truncate_after_statement);
        pg_sys::RelationClose(rel);
        has
    }
}

/// Registers amba's invalidation callbacks, once per backend.
pub fn register_callbacks() {
    if CALLBACK_REGISTERED.with(Cell::get) {
        return;
    }
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
        // Role memberships and role attributes (inheritance) decide which policies apply.
        for cache in [
            pg_sys::SysCacheIdentifier::AUTHMEMMEMROLE,
            pg_sys::SysCacheIdentifier::AUTHMEMROLEMEM,
            pg_sys::SysCacheIdentifier::AUTHOID,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(role_callback),
                pg_sys::Datum::from(0),
            );
        }
    }
    CALLBACK_REGISTERED.with(|c| c.set(true));
}

/// The OIDs of amba's tables; None when the schema is not all there, or when the tables are
/// distributed by Citus (CONTRACT 9: the rows are in shards, and reads go through SPI, which
/// Citus routes). The callers then take the SPI path.
pub fn tables() -> Option<Tables> {
    register_callbacks();
    if let Some(t) = TABLES.with(Cell::get) {
        return Some(t);
    }
    let resolved = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"amba".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        let oid = |name: &std::ffi::CStr| pg_sys::get_relname_relid(name.as_ptr(), nsp);
        let t = Tables {
            experiments: oid(c"experiments"),
            assignments: oid(c"assignments"),
            assignments_pkey: oid(c"assignments_pkey"),
            variant_attnum: 0,
            exposures: oid(c"exposures"),
            exposures_pkey: oid(c"exposures_pkey"),
            aliases: oid(c"aliases"),
            events: oid(c"events"),
            aliases_pkey: oid(c"aliases_pkey"),
            alias_user_attnum: 0,
        };
        let oids = [
            t.experiments,
            t.assignments,
            t.assignments_pkey,
            t.exposures,
            t.exposures_pkey,
            t.aliases,
            t.aliases_pkey,
            t.events,
        ];
        if oids.contains(&pg_sys::InvalidOid) {
            return None;
        }
        if [t.experiments, t.assignments, t.exposures, t.aliases]
            .iter()
            .any(|&relid| has_truncate_trigger(relid))
        {
            return None;
        }
        let variant_attnum = pg_sys::get_attnum(t.assignments, c"variant".as_ptr());
        let alias_user_attnum = pg_sys::get_attnum(t.aliases, c"user_id".as_ptr());
        if variant_attnum <= 0 || alias_user_attnum <= 0 {
            return None;
        }
        Tables {
            variant_attnum,
            alias_user_attnum,
            ..t
        }
    };
    TABLES.with(|c| c.set(Some(resolved)));
    Some(resolved)
}

/// A btree equality key on column `attno` of `index`, with the index's collation.
unsafe fn eq_key(
    key: &mut pg_sys::ScanKeyData,
    irel: pg_sys::Relation,
    attno: i16,
    proc_: u32,
    value: pg_sys::Datum,
) {
    unsafe {
        let collation = *(*irel).rd_indcollation.add(attno as usize - 1);
        pg_sys::ScanKeyEntryInitialize(
            key,
            0,
            attno,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::InvalidOid,
            collation,
            pg_sys::Oid::from(proc_),
            value,
        );
    }
}

/// Looks up one row by a unique index on (bigint, text) — `experiment_id` given — or on
/// (text) alone — `experiment_id` None. Returns whether a row is visible in `snapshot` and,
/// with `attnum`, that text column of it. The relation stays locked (AccessShareLock) to
/// the end of the transaction, as the executor would leave it.
pub unsafe fn fetch_by_key(
    table: pg_sys::Oid,
    index: pg_sys::Oid,
    experiment_id: Option<i64>,
    user_id: &str,
    snapshot: pg_sys::Snapshot,
    attnum: Option<i16>,
) -> (bool, Option<String>) {
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let irel = pg_sys::index_open(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        let user_id_text = user_id.into_datum().expect("a text datum");
        let nkeys = match experiment_id {
            Some(id) => {
                eq_key(
                    &mut keys[0],
                    irel,
                    1,
                    pg_sys::F_INT8EQ,
                    pg_sys::Datum::from(id),
                );
                eq_key(&mut keys[1], irel, 2, pg_sys::F_TEXTEQ, user_id_text);
                2
            }
            None => {
                eq_key(&mut keys[0], irel, 1, pg_sys::F_TEXTEQ, user_id_text);
                1
            }
        };
        pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
        let scan = pg_sys::systable_beginscan(rel, index, true, snapshot, nkeys, keys.as_mut_ptr());
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

/// Whether the row version at `tid`, inserted by `xmin`, is the version of its row that
/// `snapshot` sees (visible, and not yet replaced or deleted in that snapshot). This is
/// how a cached experiment definition is checked against each statement's snapshot.
pub unsafe fn row_version_visible(
    table: pg_sys::Oid,
    tid: pg_sys::ItemPointerData,
    xmin: u32,
    snapshot: pg_sys::Snapshot,
) -> bool {
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
        tuple.t_self = tid;
        let mut buffer: pg_sys::Buffer = 0;
        let visible = pg_sys::heap_fetch(rel, snapshot, &mut tuple, &mut buffer, false);
        // The line pointer may have been reused by another row since: the inserting
        // transaction tells them apart.
        let same =
            visible && (*tuple.t_data).t_choice.t_heap.t_xmin == pg_sys::TransactionId::from(xmin);
        if visible {
            pg_sys::ReleaseBuffer(buffer);
        }
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        same
    }
}

/// Whether the direct reads read what a SELECT through SPI would: the transaction has
/// written nothing yet (so no earlier command of ours must first become visible, as SPI
/// makes it by bumping the command counter), the caller may read each table, and
/// row-level security lets them read every row of it (see `policies_let_through`).
/// Otherwise the callers take the SPI path, which also raises any permission error.
pub fn direct_reads_allowed(tables: &[pg_sys::Oid]) -> bool {
    unsafe {
        if pg_sys::GetCurrentTransactionIdIfAny() != pg_sys::InvalidTransactionId {
            return false;
        }
        if !pg_sys::ActiveSnapshotSet() {
            return false;
        }
        // Privileges and policies committed before this point are the ones checked.
        pg_sys::AcceptInvalidationMessages();
        tables.iter().all(|&relid| {
            if !may(relid, pg_sys::ACL_SELECT) {
                return false;
            }
            if pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true)
                != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
            {
                return true;
            }
            // Policies apply: read them from the table, locked as the statement would.
            let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let allowed = row_security_lets_through(rel, &[Command::Select]);
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            allowed
        })
    }
}

/// Whether the current user holds `mode` (ACL_SELECT, ACL_INSERT...) on the table.
pub fn may(relid: pg_sys::Oid, mode: u32) -> bool {
    unsafe {
        pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), mode as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// The commands a direct path stands in for, as `pg_policy.polcmd` names them.
#[derive(Clone, Copy, PartialEq)]
pub enum Command {
    Select = b'r' as isize,
    Insert = b'a' as isize,
}

/// Whether row-level security lets the caller do each of `commands` on any row of `rel`:
/// it does not apply to them (owner, superuser, BYPASSRLS, or not enabled), or the
/// policies that apply are all the constant `true` and one of them is permissive (amba's
/// `USING (true)` / `WITH CHECK (true)` policies for its own roles). The planner would
/// then add nothing to the statement. `rel` is open with the statement's lock, so the
/// policies in its relcache entry are the committed ones.
pub unsafe fn row_security_lets_through(rel: pg_sys::Relation, commands: &[Command]) -> bool {
    unsafe {
        let relid = (*rel).rd_id;
        if pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true)
            != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        {
            return true;
        }
        // With row_security = off, a statement that policies would filter is an error,
        // which SPI raises.
        if !pg_sys::row_security {
            return false;
        }
        register_callbacks();
        let user = pg_sys::GetUserId();
        let mask = commands.iter().fold(0u8, |m, &c| m | c.bit());
        let known = VERDICTS.with(|v| {
            v.borrow()
                .iter()
                .find(|e| e.0 == relid && e.1 == user && e.2 == mask)
                .map(|e| e.3)
        });
        if let Some(passes) = known {
            return passes;
        }
        // Looking up role memberships may process invalidations: a verdict computed across
        // one is not kept.
        let generation = VERDICT_GENERATION.with(Cell::get);
        let passes = policies_let_through(rel, commands);
        if VERDICT_GENERATION.with(Cell::get) == generation {
            VERDICTS.with(|v| v.borrow_mut().push((relid, user, mask, passes)));
        }
        passes
    }
}

thread_local! {
    /// Verdicts of `policies_let_through`: (table, user, commands, verdict). A verdict
    /// depends on the table's policies (its relcache entry) and on the user's role
    /// memberships; a change to either clears it.
    static VERDICTS: std::cell::RefCell<Vec<(pg_sys::Oid, pg_sys::Oid, u8, bool)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static VERDICT_GENERATION: Cell<u64> = const { Cell::new(0) };
}

impl Command {
    fn bit(self) -> u8 {
        match self {
            Command::Select => 1,
            Command::Insert => 2,
        }
    }
}

/// Forgets the verdicts about `relid` (None or InvalidOid: all). Must not error or
/// allocate (called from invalidation callbacks).
fn forget_verdicts(relid: Option<pg_sys::Oid>) {
    VERDICT_GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
    VERDICTS.with(|v| {
        if let Ok(mut v) = v.try_borrow_mut() {
            match relid {
                Some(relid) if relid != pg_sys::InvalidOid => v.retain(|e| e.0 != relid),
                _ => v.clear(),
            }
        }
    });
}

unsafe extern "C-unwind" fn role_callback(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    forget_verdicts(None);
}

unsafe fn policies_let_through(rel: pg_sys::Relation, commands: &[Command]) -> bool {
    unsafe {
        let desc = (*rel).rd_rsdesc;
        if desc.is_null() {
            return false; // enabled without policies: no row at all
        }
        let user = pg_sys::GetUserId();
        let list = (*desc).policies;
        let policies: Vec<*const pg_sys::RowSecurityPolicy> = if list.is_null() {
            Vec::new()
        } else {
            (0..(*list).length as usize)
                .map(|i| (*(*list).elements.add(i)).ptr_value as *const pg_sys::RowSecurityPolicy)
                .collect()
        };
        commands.iter().all(|&command| {
            let mut permissive = false;
            for &ptr in &policies {
                let policy = &*ptr;
                let cmd = policy.polcmd as u8;
                if cmd != b'*' && cmd != command as u8 {
                    continue;
                }
                if !applies_to(policy.roles, user) {
                    continue;
                }
                // An INSERT checks WITH CHECK; a policy FOR ALL without one checks USING.
                let expression = match command {
                    Command::Select => policy.qual,
                    Command::Insert if policy.with_check_qual.is_null() && cmd == b'*' => {
                        policy.qual
                    }
                    Command::Insert => policy.with_check_qual,
                };
                if !is_constant_true(expression) {
                    return false;
                }
                permissive |= policy.permissive;
            }
            permissive
        })
    }
}

/// Whether a policy for `roles` applies to `user` (PUBLIC, or a role whose privileges the
/// user has: PostgreSQL's own rule, `check_role_for_policy`).
unsafe fn applies_to(roles: *mut pg_sys::ArrayType, user: pg_sys::Oid) -> bool {
    unsafe {
        let Some(roles) = std::ptr::NonNull::new(roles) else {
            return false;
        };
        let mut array = pgrx::array::RawArray::from_ptr(roles);
        array
            .data::<pg_sys::Oid>()
            .as_ref()
            .iter()
            .any(|&role| role == pg_sys::InvalidOid || pg_sys::has_privs_of_role(user, role))
    }
}

unsafe fn is_constant_true(expression: *mut pg_sys::Expr) -> bool {
    unsafe {
        if expression.is_null() || (*expression).type_ != pg_sys::NodeTag::T_Const {
            return false;
        }
        let constant = &*(expression as *const pg_sys::Const);
        constant.consttype == pg_sys::BOOLOID
            && !constant.constisnull
            && bool::from_datum(constant.constvalue, false) == Some(true)
    }
}
