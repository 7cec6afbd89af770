//! Which of amba's tables the direct path may touch, learned once per relcache change.
//!
//! The direct path reads a table through its primary key and inserts into it without the
//! executor. That is only what a SELECT or INSERT would do when the table is exactly what
//! amba created: a plain heap table (`relkind 'r'`), not a partition, with no inheritance
//! children, whose primary key is a valid btree on the columns amba declared, with the
//! default operator classes. Anything else — partitioned, an archive child, a rewritten
//! key — and `tables()` says no, and the caller takes the SQL path, where PostgreSQL's
//! executor handles it. Citus marks its tables with a TRUNCATE trigger: `Layout::Distributed`.

use pgrx::pg_sys;
use std::cell::Cell;
use std::ffi::CStr;

/// A table amba reads directly, with what the read needs.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    pub relid: pg_sys::Oid,
    pub primary_key: pg_sys::Oid,
    /// Attribute number of the text column a read returns (0: none).
    pub value_attnum: i16,
    /// `generation()` when this was learned: a direct call that finds it changed after
    /// locking its relations falls back to SQL.
    pub generation: u64,
}

/// The OIDs the direct path needs, checked together.
#[derive(Clone, Copy, Debug)]
pub struct Tables {
    pub experiments: pg_sys::Oid,
    pub overrides: pg_sys::Oid,
    /// `value_attnum` = `variant`.
    pub assignments: Table,
    pub exposures: Table,
    /// `value_attnum` = `user_id`.
    pub aliases: Table,
    pub events: pg_sys::Oid,
    pub generation: u64,
}

/// Where amba's rows live, as the catalog says.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// Plain tables of amba's own shape: direct reads and inserts may be used.
    Plain(Tables),
    /// On one node, but some table is not plain (partitioned, inherited, changed...).
    Altered,
    /// Distributed by Citus (SPEC §9): rows live in shards.
    Distributed,
    /// The schema is not all there (an old version mid-upgrade, a dropped table).
    Missing,
}

thread_local! {
    static LAYOUT: Cell<Option<Layout>> = const { Cell::new(None) };
    /// Bumped by every relcache invalidation that touches amba's tables: a direct call
    /// checks, after opening its relations, that what it decided on still stands.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
}

/// Forgets the layout when one of amba's tables (or every relation) changes. Called from
/// the relcache callback: must not error or allocate.
pub fn forget(relid: pg_sys::Oid) {
    let concerned = match LAYOUT.with(Cell::get) {
        None => false,
        Some(Layout::Plain(t)) => {
            relid == pg_sys::InvalidOid
                || [
                    t.experiments,
                    t.overrides,
                    t.assignments.relid,
                    t.exposures.relid,
                    t.aliases.relid,
                    t.events,
                    t.assignments.primary_key,
                    t.exposures.primary_key,
                    t.aliases.primary_key,
                ]
                .contains(&relid)
        }
        // Any relation may be the one that makes the layout plain again (a table renamed
        // back, a child dropped): learn again on the next call.
        Some(_) => true,
    };
    if concerned {
        LAYOUT.with(|c| c.set(None));
        GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
    }
}

pub fn generation() -> u64 {
    GENERATION.with(Cell::get)
}

/// The layout of amba's tables, as committed when invalidations were last processed.
pub fn layout() -> Layout {
    if let Some(layout) = LAYOUT.with(Cell::get) {
        return layout;
    }
    let generation = generation();
    let learned = unsafe { learn() };
    // An invalidation processed while learning (opening a relation can process them)
    // may have made what was learned stale: do not keep it.
    if generation == self::generation() {
        LAYOUT.with(|c| c.set(Some(learned)));
    }
    learned
}

unsafe fn learn() -> Layout {
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"amba".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return Layout::Missing;
        }
        let oid = |name: &CStr| pg_sys::get_relname_relid(name.as_ptr(), nsp);
        let names: [&CStr; 6] = [
            c"experiments",
            c"overrides",
            c"assignments",
            c"exposures",
            c"aliases",
            c"events",
        ];
        let oids: Vec<pg_sys::Oid> = names.iter().map(|n| oid(n)).collect();
        if oids.contains(&pg_sys::InvalidOid) {
            return Layout::Missing;
        }
        if [oids[0], oids[2], oids[3], oids[4]]
            .iter()
            .any(|&relid| has_truncate_trigger(relid))
        {
            return Layout::Distributed;
        }
        let text = pg_sys::TEXTOID;
        let int8 = pg_sys::INT8OID;
        let keyed = |relid, key: &[(&CStr, pg_sys::Oid)], value: Option<&CStr>| {
            checked_table(relid, key, value)
        };
        let (Some(assignments), Some(exposures), Some(aliases)) = (
            keyed(
                oids[2],
                &[(c"experiment_id", int8), (c"user_id", text)],
                Some(c"variant"),
            ),
            keyed(
                oids[3],
                &[(c"experiment_id", int8), (c"user_id", text)],
                None,
            ),
            keyed(oids[4], &[(c"anonymous_id", text)], Some(c"user_id")),
        ) else {
            return Layout::Altered;
        };
        if !is_plain(oids[0]) || !is_plain(oids[1]) || !is_plain(oids[5]) {
            return Layout::Altered;
        }
        Layout::Plain(Tables {
            experiments: oids[0],
            overrides: oids[1],
            assignments,
            exposures,
            aliases,
            events: oids[5],
            generation: generation(),
        })
    }
}

/// Whether a table has a TRUNCATE trigger: amba's tables have none of their own (their
/// foreign keys' triggers are row triggers), so one that does is a Citus table (Citus puts
/// a truncate trigger on the coordinator's, `amba_distribute` a marker on each worker's).
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

/// A plain heap table: `relkind 'r'`, not a partition, no inheritance children (a SELECT
/// on it would read them too), stored by the heap access method.
unsafe fn is_plain(relid: pg_sys::Oid) -> bool {
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return false;
        }
        let form = &*(*rel).rd_rel;
        let plain = form.relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
            && !form.relispartition
            && !form.relhassubclass
            && form.relam == pg_sys::Oid::from(pg_sys::HEAP_TABLE_AM_OID);
        pg_sys::RelationClose(rel);
        plain
    }
}

/// A plain table whose primary key is a valid, non-partial btree on exactly `key`
/// (name, type; default operator classes), with `value` (a text column) if given.
unsafe fn checked_table(
    relid: pg_sys::Oid,
    key: &[(&CStr, pg_sys::Oid)],
    value: Option<&CStr>,
) -> Option<Table> {
    unsafe {
        if !is_plain(relid) {
            return None;
        }
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return None;
        }
        let checked = (|| {
            let primary_key = pg_sys::RelationGetPrimaryKeyIndex(rel);
            if primary_key == pg_sys::InvalidOid {
                return None;
            }
            let desc = (*rel).rd_att;
            let column = |name: &CStr, type_oid: pg_sys::Oid| -> Option<i16> {
                let attnum = pg_sys::get_attnum(relid, name.as_ptr());
                if attnum <= 0 {
                    return None;
                }
                let att = &*(*desc).attrs.as_ptr().add(attnum as usize - 1);
                (att.atttypid == type_oid && !att.attisdropped).then_some(attnum)
            };
            let value_attnum = match value {
                Some(name) => column(name, pg_sys::TEXTOID)?,
                None => 0,
            };
            let index = pg_sys::RelationIdGetRelation(primary_key);
            if index.is_null() {
                return None;
            }
            let form = &*(*index).rd_index;
            let nkeys = form.indnatts as usize;
            let columns = form.indkey.values.as_slice(nkeys).to_vec();
            let mut ok = (*(*index).rd_rel).relam == pg_sys::Oid::from(pg_sys::BTREE_AM_OID)
                && form.indisunique
                && form.indisvalid
                && form.indisready
                && form.indislive
                && form.indimmediate
                && pg_sys::heap_attisnull(
                    (*index).rd_indextuple,
                    pg_sys::Anum_pg_index_indpred as i32,
                    std::ptr::null_mut(),
                )
                && pg_sys::heap_attisnull(
                    (*index).rd_indextuple,
                    pg_sys::Anum_pg_index_indexprs as i32,
                    std::ptr::null_mut(),
                )
                && nkeys == key.len()
                && form.indnkeyatts as usize == key.len();
            if ok {
                for (i, (name, type_oid)) in key.iter().enumerate() {
                    // The default btree operator class of the column's type: its family
                    // and input type (what the scan keys' equality procs belong to).
                    let class = pg_sys::GetDefaultOpClass(
                        *type_oid,
                        pg_sys::Oid::from(pg_sys::BTREE_AM_OID),
                    );
                    ok &= column(name, *type_oid) == Some(columns[i])
                        && class != pg_sys::InvalidOid
                        && *(*index).rd_opfamily.add(i) == pg_sys::get_opclass_family(class)
                        && *(*index).rd_opcintype.add(i) == *type_oid;
                }
            }
            pg_sys::RelationClose(index);
            ok.then_some(Table {
                relid,
                primary_key,
                value_attnum,
                generation: generation(),
            })
        })();
        pg_sys::RelationClose(rel);
        checked
    }
}
