//! SPI helpers: statements prepared once per backend, planner settings scoped like a
//! function's SET clause, and statements run in the latest snapshot (the way PostgreSQL's
//! own foreign-key checks see rows committed after the transaction's snapshot).

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::RefCell;
use std::ffi::{CStr, CString};

/// A statement prepared once per backend and kept (SPI_keepplan).
pub type PlanSlot = std::thread::LocalKey<RefCell<Option<OwnedPreparedStatement>>>;

/// Runs a statement prepared once per backend. A `mutating` plan runs, in READ COMMITTED,
/// in a new snapshot per execution (it sees rows committed since the statement began).
pub fn with_plan<R>(
    slot: &'static PlanSlot,
    client: &SpiClient<'_>,
    sql: &str,
    arg_types: &[pg_sys::Oid],
    mutating: bool,
    run: impl FnOnce(&OwnedPreparedStatement) -> R,
) -> R {
    slot.with(|cell| {
        let mut plan = cell.borrow_mut();
        if plan.is_none() {
            let oids: Vec<PgOid> = arg_types.iter().map(|o| PgOid::from(*o)).collect();
            let prepared = if mutating {
                client.prepare_mut(sql, &oids)
            } else {
                client.prepare(sql, &oids)
            };
            *plan = Some(
                prepared
                    .unwrap_or_else(|e| panic!("preparing {sql}: {e}"))
                    .keep(),
            );
        }
        run(plan.as_ref().expect("plan prepared above"))
    })
}

/// Runs `f` with planner settings changed like a function's SET clause: saved before and
/// restored after (by PostgreSQL's abort processing on error).
pub fn with_settings<R>(settings: &[(&CStr, &CStr)], f: impl FnOnce() -> R) -> R {
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        let result = f();
        pg_sys::AtEOXact_GUC(true, level);
        result
    }
}

/// What `run_fresh` returns: rows processed, and the first column of each row as text.
pub struct FreshResult {
    pub processed: u64,
    pub first_column: Vec<Option<String>>,
}

/// Runs `query` (parameters `$1..$n`, all text) in the latest snapshot, as RI checks do:
/// it sees rows committed after this transaction's snapshot, also in REPEATABLE READ and
/// SERIALIZABLE. There, a modifying statement also cross-checks against the transaction
/// snapshot, so touching a row this transaction could not see fails cleanly with a
/// serialization failure (40001) instead of acting on data the transaction never saw.
pub fn run_fresh(query: &str, params: &[Option<String>], read_only: bool) -> FreshResult {
    let query_c = CString::new(query).expect("query without NUL");
    let c_params: Vec<Option<CString>> = params
        .iter()
        .map(|p| {
            p.as_ref()
                .map(|s| CString::new(s.as_str()).expect("parameter without NUL"))
        })
        .collect();
    Spi::connect_mut(|_client| unsafe {
        // Our own earlier writes must be visible to the latest snapshot too.
        if !read_only {
            pg_sys::CommandCounterIncrement();
        }
        let mut arg_types: Vec<pg_sys::Oid> = vec![pg_sys::TEXTOID; params.len()];
        let plan = pg_sys::SPI_prepare(
            query_c.as_ptr(),
            params.len() as i32,
            arg_types.as_mut_ptr(),
        );
        if plan.is_null() {
            let code = pg_sys::SPI_result;
            panic!("preparing {query}: SPI error {code}");
        }
        let mut values: Vec<pg_sys::Datum> = Vec::with_capacity(params.len());
        let mut nulls: Vec<std::ffi::c_char> = Vec::with_capacity(params.len() + 1);
        for p in &c_params {
            match p {
                Some(c) => {
                    values.push(pg_sys::Datum::from(pg_sys::cstring_to_text(c.as_ptr())));
                    nulls.push(b' ' as std::ffi::c_char);
                }
                None => {
                    values.push(pg_sys::Datum::from(0usize));
                    nulls.push(b'n' as std::ffi::c_char);
                }
            }
        }
        nulls.push(0);
        let latest = pg_sys::GetLatestSnapshot();
        let crosscheck =
            if !read_only && pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 {
                pg_sys::GetTransactionSnapshot()
            } else {
                std::ptr::null_mut()
            };
        let rc = pg_sys::SPI_execute_snapshot(
            plan,
            values.as_mut_ptr(),
            nulls.as_ptr(),
            latest,
            crosscheck,
            read_only,
            true,
            0,
        );
        if rc < 0 {
            panic!("running {query}: SPI error {rc}");
        }
        let processed = pg_sys::SPI_processed;
        let mut first_column = Vec::new();
        let table = pg_sys::SPI_tuptable;
        if !table.is_null() && !(*table).tupdesc.is_null() && (*(*table).tupdesc).natts >= 1 {
            for i in 0..processed as usize {
                let tuple = *(*table).vals.add(i);
                let value = pg_sys::SPI_getvalue(tuple, (*table).tupdesc, 1);
                first_column.push(if value.is_null() {
                    None
                } else {
                    Some(CStr::from_ptr(value).to_string_lossy().into_owned())
                });
            }
        }
        pg_sys::SPI_freeplan(plan);
        FreshResult {
            processed,
            first_column,
        }
    })
}
