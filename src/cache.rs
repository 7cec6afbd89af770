//! Per-backend cache of experiment definitions, so the hot path finds an experiment by
//! key without a query. Invalidation follows Citus' metadata cache: a statement trigger
//! on `amba.experiments` calls `CacheInvalidateRelcacheByRelid` (see `amba._invalidate_relcache`),
//! PostgreSQL delivers that at commit to every backend, and our relcache callback marks the
//! cache stale; the next lookup (at the latest in the backend's next transaction) reloads.
//! Only definitions are held here: no per-user state.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Debug)]
pub struct Experiment {
    pub id: i64,
    pub status: String,
    pub variant_keys: Vec<String>,
    pub weights: Vec<f64>,
    /// Cumulative weight shares, precomputed once per definition.
    pub thresholds: Vec<f64>,
    /// Bumped by every update; assignment inserts only under the revision it computed with.
    pub revision: i64,
}

impl Experiment {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

thread_local! {
    static EXPERIMENTS: RefCell<HashMap<String, Rc<Experiment>>> = RefCell::new(HashMap::new());
    static STALE: Cell<bool> = const { Cell::new(false) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    static WATCHED_RELID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static LOAD_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static LOCK_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static TABLES: Cell<Option<Tables>> = const { Cell::new(None) };
}

/// Called by PostgreSQL while it processes invalidation messages: must not error or
/// allocate in PostgreSQL memory, so it only raises flags.
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let watched = WATCHED_RELID.with(Cell::get);
    if relid == pg_sys::InvalidOid || watched == pg_sys::InvalidOid || relid == watched {
        STALE.with(|s| s.set(true));
    }
    if let Some(t) = TABLES.with(Cell::get) {
        if relid == pg_sys::InvalidOid || relid == t.assignments || relid == t.exposures {
            TABLES.with(|c| c.set(None));
        }
    }
}

/// What the hot path needs to read assignments and exposures by primary key without SPI
/// (see `assign::pk_fetch`): the tables' and their primary keys' OIDs, resolved once per
/// backend and forgotten on any relcache invalidation of either table.
#[derive(Clone, Copy, Debug)]
pub struct Tables {
    pub assignments: pg_sys::Oid,
    pub assignments_pkey: pg_sys::Oid,
    /// Attribute number of `amba.assignments.variant`.
    pub variant_attnum: i16,
    pub exposures: pg_sys::Oid,
    pub exposures_pkey: pg_sys::Oid,
}

/// The OIDs of `amba.assignments`, `amba.exposures` and their primary keys; None when the
/// schema is not all there (the callers then take the SPI path, which reports it).
pub fn tables() -> Option<Tables> {
    ensure_callback();
    if let Some(t) = TABLES.with(Cell::get) {
        return Some(t);
    }
    let resolved = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"amba".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        let oid = |name: &std::ffi::CStr| pg_sys::get_relname_relid(name.as_ptr(), nsp);
        let (assignments, exposures) = (oid(c"assignments"), oid(c"exposures"));
        let (assignments_pkey, exposures_pkey) = (oid(c"assignments_pkey"), oid(c"exposures_pkey"));
        if [assignments, assignments_pkey, exposures, exposures_pkey].contains(&pg_sys::InvalidOid) {
            return None;
        }
        let variant_attnum = pg_sys::get_attnum(assignments, c"variant".as_ptr());
        if variant_attnum <= 0 {
            return None;
        }
        Tables { assignments, assignments_pkey, variant_attnum, exposures, exposures_pkey }
    };
    TABLES.with(|c| c.set(Some(resolved)));
    Some(resolved)
}

fn ensure_callback() {
    if !CALLBACK_REGISTERED.with(Cell::get) {
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
        }
        CALLBACK_REGISTERED.with(|c| c.set(true));
    }
}

const LOAD_SQL: &str = "SELECT id, status, variant_keys, weights, revision, \
     'amba.experiments'::regclass::oid \
     FROM amba.experiments WHERE key = $1";

/// The current definition under a KEY SHARE lock, which `amba_update_experiment`'s
/// FOR UPDATE waits for: what is read here stays current until the transaction ends.
const LOCK_SQL: &str = "SELECT id, status, variant_keys, weights, revision, \
     'amba.experiments'::regclass::oid \
     FROM amba.experiments WHERE key = $1 FOR KEY SHARE";

/// Runs a statement prepared once per backend and kept (SPI_keepplan).
pub fn with_plan<R>(
    slot: &'static std::thread::LocalKey<RefCell<Option<OwnedPreparedStatement>>>,
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
            *plan = Some(prepared.unwrap_or_else(|e| panic!("preparing {sql}: {e}")).keep());
        }
        run(plan.as_ref().expect("plan prepared above"))
    })
}

fn load(client: &SpiClient<'_>, key: &str) -> Option<Rc<Experiment>> {
    read_definition(client, key, false)
}

fn read_definition(client: &SpiClient<'_>, key: &str, locked: bool) -> Option<Rc<Experiment>> {
    let (slot, sql) = if locked { (&LOCK_PLAN, LOCK_SQL) } else { (&LOAD_PLAN, LOAD_SQL) };
    let row = with_plan(slot, client, sql, &[pg_sys::TEXTOID], locked, |plan| {
        let table = client.select(plan, Some(1), &[key.into()]).expect("loading the experiment");
        if table.is_empty() {
            return None;
        }
        let row = table.first();
        let id: i64 = row.get(1).expect("reading the experiment")?;
        let status: String = row.get(2).expect("reading the experiment")?;
        let variant_keys: Vec<String> = row.get(3).expect("reading the experiment")?;
        let weights: Vec<f64> = row.get(4).expect("reading the experiment")?;
        let revision: i64 = row.get(5).expect("reading the experiment")?;
        let relid: pg_sys::Oid = row.get(6).expect("reading the experiment")?;
        Some((id, status, variant_keys, weights, revision, relid))
    })?;
    let (id, status, variant_keys, weights, revision, relid) = row;
    WATCHED_RELID.with(|w| w.set(relid));
    let thresholds = amba_core::bucket::thresholds(&weights);
    Some(Rc::new(Experiment { id, status, variant_keys, weights, thresholds, revision }))
}

/// The experiment named `key`, from the cache when it is current.
pub fn lookup(client: &SpiClient<'_>, key: &str) -> Option<Rc<Experiment>> {
    ensure_callback();
    if STALE.with(|s| s.replace(false)) {
        EXPERIMENTS.with(|m| m.borrow_mut().clear());
    }
    if let Some(found) = EXPERIMENTS.with(|m| m.borrow().get(key).cloned()) {
        return Some(found);
    }
    let loaded = load(client, key)?;
    EXPERIMENTS.with(|m| m.borrow_mut().insert(key.to_string(), loaded.clone()));
    Some(loaded)
}

/// `lookup` for callers without an SPI connection: connects only to load a definition the
/// cache does not hold, so a cache hit costs no query at all.
pub fn find(key: &str) -> Option<Rc<Experiment>> {
    ensure_callback();
    if STALE.with(|s| s.replace(false)) {
        EXPERIMENTS.with(|m| m.borrow_mut().clear());
    }
    if let Some(found) = EXPERIMENTS.with(|m| m.borrow().get(key).cloned()) {
        return Some(found);
    }
    pgrx::spi::Spi::connect(|client| lookup(client, key))
}

/// Drops `key` from the cache and reads it again (after a lost race with an update).
pub fn reload(client: &SpiClient<'_>, key: &str) -> Option<Rc<Experiment>> {
    EXPERIMENTS.with(|m| m.borrow_mut().remove(key));
    lookup(client, key)
}

/// Reads the definition under a KEY SHARE lock held to the end of the transaction, so
/// no update can change it before this transaction's insert (for a new user who keeps
/// losing the race against a stream of updates). The cache entry is refreshed too.
pub fn load_locked(client: &SpiClient<'_>, key: &str) -> Option<Rc<Experiment>> {
    let loaded = read_definition(client, key, true);
    EXPERIMENTS.with(|m| match &loaded {
        Some(e) => m.borrow_mut().insert(key.to_string(), e.clone()),
        None => m.borrow_mut().remove(key),
    });
    loaded
}
