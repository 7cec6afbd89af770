//! Direct reads: one row by its primary key, the way PostgreSQL reads its own catalogs (a
//! systable scan: the index, then the heap with the snapshot's visibility rules, predicate
//! locks included). Used only on a `catalog::Table` — a plain table whose primary key was
//! checked — and only when the relations opened here are still the ones checked (no
//! invalidation came in while locking them); otherwise `None` and the caller reads
//! through SQL.

use super::catalog::{self, Table};
use pgrx::pg_sys;
use pgrx::prelude::*;

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

/// What a primary-key read found.
pub struct Found {
    pub exists: bool,
    /// The table's value column (`Table::value_attnum`) of the row, when it exists.
    pub value: Option<String>,
}

/// Looks up one row of `table` by its primary key — (experiment_id, user_id) when
/// `experiment_id` is given, else (user_id) — in `snapshot`. None when the direct read
/// does not apply after all (the table changed while it was being locked). The table
/// stays locked (AccessShareLock) to the end of the transaction, as the executor leaves it.
pub fn by_key(
    table: Table,
    experiment_id: Option<i64>,
    user_id: &str,
    snapshot: pg_sys::Snapshot,
) -> Option<Found> {
    scan_by_key(table, experiment_id, user_id, snapshot, |_| ())
}

/// Who a dirty read must wait for before its answer holds.
struct Wait {
    xid: pg_sys::TransactionId,
    speculative_token: u32,
}

/// `by_key` for (experiment_id, user_id) as ON CONFLICT's pre-check reads the key
/// (`check_exclusion_or_unique_constraint` in CEOUC_WAIT mode): in a dirty snapshot, and
/// when the row found is being inserted or deleted by a transaction in progress, after
/// waiting for it (its speculative insertion, or its end), again. So the answer is what
/// committed (and this transaction's own rows), and a concurrent first assignment of the
/// key is waited for before inserting.
pub fn by_key_after_waiting(table: Table, experiment_id: i64, user_id: &str) -> Option<Found> {
    loop {
        pgrx::check_for_interrupts!();
        let mut dirty: pg_sys::SnapshotData = unsafe { std::mem::zeroed() };
        dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
        let snapshot: pg_sys::Snapshot = &mut dirty;
        let mut wait = None;
        let found = scan_by_key(table, Some(experiment_id), user_id, snapshot, |_| {
            // HeapTupleSatisfiesDirty leaves the inserting (xmin) or deleting (xmax)
            // transaction in progress in the snapshot, as the pre-check reads them.
            let (xmin, xmax, token) = unsafe {
                (
                    (*snapshot).xmin,
                    (*snapshot).xmax,
                    (*snapshot).speculativeToken,
                )
            };
            let xid = if xmin != pg_sys::InvalidTransactionId {
                xmin
            } else {
                xmax
            };
            if xid != pg_sys::InvalidTransactionId {
                wait = Some(Wait {
                    xid,
                    speculative_token: token,
                });
            }
        })?;
        match wait {
            None => return Some(found),
            Some(Wait {
                xid,
                speculative_token,
            }) => unsafe {
                if speculative_token != 0 {
                    pg_sys::SpeculativeInsertionWait(xid, speculative_token);
                } else {
                    pg_sys::XactLockTableWait(
                        xid,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        pg_sys::XLTW_Oper::XLTW_None,
                    );
                }
            },
        }
    }
}

/// The scan of `by_key`; `on_tuple` sees the tuple found, if any, before it is released.
fn scan_by_key(
    table: Table,
    experiment_id: Option<i64>,
    user_id: &str,
    snapshot: pg_sys::Snapshot,
    mut on_tuple: impl FnMut(pg_sys::HeapTuple),
) -> Option<Found> {
    unsafe {
        let rel = pg_sys::table_open(table.relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let irel = pg_sys::index_open(
            table.primary_key,
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
        );
        // Locking processes invalidations: a change committed meanwhile (a partitioned
        // table renamed into place, a child added) is known now.
        let form = &*(*rel).rd_rel;
        if table.generation != catalog::generation()
            || form.relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
            || form.relhassubclass
            || (*(*irel).rd_index).indrelid != table.relid
        {
            pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            return None;
        }
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
        let scan = pg_sys::systable_beginscan(
            rel,
            table.primary_key,
            true,
            snapshot,
            nkeys,
            keys.as_mut_ptr(),
        );
        let tuple = pg_sys::systable_getnext(scan);
        if !tuple.is_null() {
            on_tuple(tuple);
        }
        let found = if tuple.is_null() {
            Found {
                exists: false,
                value: None,
            }
        } else if table.value_attnum > 0 {
            let mut is_null = false;
            let datum = pg_sys::heap_getattr(
                tuple,
                table.value_attnum as i32,
                (*rel).rd_att,
                &mut is_null,
            );
            Found {
                exists: true,
                value: String::from_datum(datum, is_null),
            }
        } else {
            Found {
                exists: true,
                value: None,
            }
        };
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        Some(found)
    }
}

/// Where a row version was read from: the table's storage (its relfilenode: a rewrite by
/// VACUUM FULL, CLUSTER or pg_repack gives a new one), the tuple id, and the inserting
/// transaction (a line pointer reused by another row has another xmin).
#[derive(Clone, Copy, Debug)]
pub struct RowVersion {
    pub relfilenode: pg_sys::Oid,
    pub tid: pg_sys::ItemPointerData,
    pub xmin: pg_sys::TransactionId,
}

/// The relfilenode of `relid`, locked as a read locks it (a rewrite needs an
/// AccessExclusiveLock, so it cannot change until this transaction ends).
pub fn relfilenode(relid: pg_sys::Oid) -> pg_sys::Oid {
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let node = storage_of(rel);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        node
    }
}

/// The relation's relfilenode.
unsafe fn storage_of(rel: pg_sys::Relation) -> pg_sys::Oid {
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
    unsafe {
        (*rel).rd_node.relNode
    }
    #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
    unsafe {
        (*rel).rd_locator.relNumber
    }
}

/// Whether `version` is the version of its row that `snapshot` sees (visible, and not
/// replaced or deleted in that snapshot). False — never an error — when the table was
/// rewritten since, or the block is gone (a VACUUM truncated the table).
pub fn row_version_visible(
    relid: pg_sys::Oid,
    version: RowVersion,
    snapshot: pg_sys::Snapshot,
) -> bool {
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let block = pgrx::itemptr::item_pointer_get_block_number(&version.tid);
        let form = &*(*rel).rd_rel;
        let same_storage = form.relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
            && !form.relhassubclass
            && storage_of(rel) == version.relfilenode
            && block
                < pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
        let mut same = false;
        if same_storage {
            let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
            tuple.t_self = version.tid;
            let mut buffer: pg_sys::Buffer = 0;
            let visible = pg_sys::heap_fetch(rel, snapshot, &mut tuple, &mut buffer, false);
            same = visible && (*tuple.t_data).t_choice.t_heap.t_xmin == version.xmin;
            if visible {
                pg_sys::ReleaseBuffer(buffer);
            }
        }
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        same
    }
}
