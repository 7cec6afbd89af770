//! Which way a call reaches the tables, decided once per call.
//!
//! `Path::Direct` reads through the primary key and inserts without the executor. It is
//! taken only when that does exactly what the SQL statement would, all of:
//! - `amba.direct_access` is on (the default; a DB admin can turn it off per session,
//!   role, database or server);
//! - amba's tables are plain tables of amba's own shape (`catalog.rs`);
//! - no executor hook is installed that must see every write: an auditing or security
//!   module (pgaudit, sepgsql...) hooks the executor, and a direct insert never passes
//!   through it. Only `pg_stat_statements`' hooks are exempt: it counts statements, and
//!   the statement that called amba is still counted (`auto_explain` is not exempt: with
//!   `log_nested_statements` its users expect to see amba's inner statements);
//! - the transaction is READ COMMITTED (a conflict in REPEATABLE READ / SERIALIZABLE is a
//!   serialization failure the executor raises; SERIALIZABLE also needs its predicate
//!   locks) and not in parallel mode.
//!
//! Each operation re-checks what depends on the caller and the moment (privileges,
//! policies, whether the transaction has written yet) and falls back to SQL when needed.

use super::catalog::{self, Layout, Tables};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};

/// `amba.direct_access`: whether the hot path may read and insert without the executor.
pub static DIRECT_ACCESS: GucSetting<bool> = GucSetting::<bool>::new(true);

thread_local! {
    /// Whether this library defined `amba.direct_access` (another version's library, loaded
    /// earlier in the backend during an upgrade, may have: then it is read by name).
    static DEFINED_HERE: Cell<bool> = const { Cell::new(false) };
}

pub fn define_settings() {
    let existing = unsafe { pg_sys::GetConfigOption(c"amba.direct_access".as_ptr(), true, false) };
    if !existing.is_null() {
        return;
    }
    DEFINED_HERE.with(|d| d.set(true));
    GucRegistry::define_bool_guc(
        c"amba.direct_access",
        c"Lets amba's hot path read and insert its rows without the executor where that is equivalent.",
        c"Off: every read and write of amba_assign, amba_expose, amba_peek and amba_track goes through PostgreSQL's executor.",
        &DIRECT_ACCESS,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// How a call reaches amba's tables.
#[derive(Clone, Copy, Debug)]
pub enum Path {
    /// Plain tables, nothing that must see the writes: primary-key reads and inserts
    /// without the executor (each may still fall back to SQL).
    Direct(Tables),
    /// Through SPI, on statements prepared once per backend.
    Sql,
    /// Distributed by Citus (SPEC §9): SQL, which Citus routes, plus the cross-node
    /// locking of `sql::share_lock_experiment_row`.
    Distributed,
}

impl Path {
    /// The path for this call.
    pub fn for_call() -> Path {
        // Changes committed by other sessions (ALTER, a new child table, VACUUM FULL,
        // GRANT, CREATE POLICY) are seen before deciding.
        unsafe { pg_sys::AcceptInvalidationMessages() };
        match catalog::layout() {
            Layout::Distributed => Path::Distributed,
            Layout::Plain(tables) if direct_allowed() => Path::Direct(tables),
            _ => Path::Sql,
        }
    }

    pub fn is_distributed(self) -> bool {
        matches!(self, Path::Distributed)
    }
}

/// `amba.direct_access` as set now.
fn direct_access() -> bool {
    if DEFINED_HERE.with(Cell::get) {
        return DIRECT_ACCESS.get();
    }
    let value = unsafe { pg_sys::GetConfigOption(c"amba.direct_access".as_ptr(), true, false) };
    !value.is_null() && unsafe { CStr::from_ptr(value) }.to_bytes() == b"on"
}

fn direct_allowed() -> bool {
    unsafe {
        direct_access()
            && pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32
            && !pg_sys::IsInParallelMode()
            && no_hook_must_see_writes()
    }
}

/// The libraries whose executor hooks need not see amba's direct writes.
const EXEMPT: &[&str] = &["pg_stat_statements"];
/// Libraries known to install no executor hook (they may be preloaded beside exempt ones).
const HOOKLESS: &[&str] = &["amba", "pg_cron"];

thread_local! {
    /// The hooks last checked, and the verdict.
    static HOOK_VERDICT: Cell<Option<([usize; 5], bool)>> = const { Cell::new(None) };
}

fn no_hook_must_see_writes() -> bool {
    let hooks: [usize; 5] = unsafe {
        [
            pg_sys::ExecutorStart_hook.map_or(0, |f| f as usize),
            pg_sys::ExecutorRun_hook.map_or(0, |f| f as usize),
            pg_sys::ExecutorFinish_hook.map_or(0, |f| f as usize),
            pg_sys::ExecutorEnd_hook.map_or(0, |f| f as usize),
            pg_sys::ExecutorCheckPerms_hook.map_or(0, |f| f as usize),
        ]
    };
    if hooks == [0; 5] {
        return true;
    }
    if let Some((seen, verdict)) = HOOK_VERDICT.with(Cell::get) {
        if seen == hooks {
            return verdict;
        }
    }
    // A hook of an exempt library may call on to a hidden one (hooks chain): then every
    // preloaded library must be exempt or known to install none.
    let verdict = hooks
        .iter()
        .filter(|&&h| h != 0)
        .all(|&h| library_of(h).is_some_and(|lib| EXEMPT.contains(&lib.as_str())))
        && preloaded_libraries()
            .iter()
            .all(|lib| EXEMPT.contains(&lib.as_str()) || HOOKLESS.contains(&lib.as_str()));
    HOOK_VERDICT.with(|c| c.set(Some((hooks, verdict))));
    verdict
}

#[repr(C)]
struct DlInfo {
    dli_fname: *const c_char,
    dli_fbase: *mut c_void,
    dli_sname: *const c_char,
    dli_saddr: *mut c_void,
}

unsafe extern "C" {
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
}

/// The name of the shared library a function lives in (`pg_stat_statements` for
/// `.../pg_stat_statements.so`), None when unknown (the server binary itself counts as
/// unknown: a hook is never set by it).
fn library_of(address: usize) -> Option<String> {
    let mut info = DlInfo {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    if unsafe { dladdr(address as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    let path = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy();
    Some(library_name(&path))
}

fn library_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.strip_suffix(".so").unwrap_or(base).to_string()
}

/// The libraries of `shared_preload_libraries`, `session_preload_libraries` and
/// `local_preload_libraries`, by name.
fn preloaded_libraries() -> Vec<String> {
    let mut names = Vec::new();
    for setting in [
        c"shared_preload_libraries",
        c"session_preload_libraries",
        c"local_preload_libraries",
    ] {
        let value = unsafe { pg_sys::GetConfigOption(setting.as_ptr(), true, false) };
        if value.is_null() {
            continue;
        }
        let value = unsafe { CStr::from_ptr(value) }
            .to_string_lossy()
            .into_owned();
        names.extend(
            value
                .split(',')
                .map(|s| s.trim().trim_matches('"'))
                .filter(|s| !s.is_empty())
                .map(library_name),
        );
    }
    names
}

#[cfg(test)]
mod tests {
    #[test]
    fn library_names() {
        assert_eq!(
            super::library_name("/usr/lib/postgresql/15/lib/pgaudit.so"),
            "pgaudit"
        );
        assert_eq!(
            super::library_name("$libdir/pg_stat_statements"),
            "pg_stat_statements"
        );
    }
}
