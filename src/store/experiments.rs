//! Per-backend cache of experiment definitions, so the hot path finds an experiment by key
//! without a query. An entry remembers which row version it was read from: the table's
//! storage (relfilenode), the tuple id and the inserting transaction. Every lookup checks,
//! in the statement's own snapshot, that this version is still the visible one (a buffer
//! pin and a visibility test, no query). So each statement sees exactly the definition its
//! snapshot sees (SPEC §8), and a rewrite of the table (VACUUM FULL, CLUSTER,
//! pg_repack: a new relfilenode) can never hand back another row. On a hit the caller's
//! privileges and row-level security on the tables the definition was read from are
//! checked again, as the query would check them. Overrides of the experiment are held
//! with it (setting or clearing one updates the experiment row).

use super::access;
use super::catalog::{self, Layout};
use super::index_read::{self, RowVersion};
use super::path::Path;
use crate::errors::OrRaise;
use crate::spi::{run_fresh, with_plan};
use amba_core::condition::Condition;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// An experiment's place in its layer.
#[derive(Debug)]
pub struct Layer {
    pub key: String,
    /// `[start, end)` of the layer's unit interval.
    pub range: Option<(f64, f64)>,
}

#[derive(Debug)]
pub struct Experiment {
    pub id: i64,
    pub status: String,
    pub variant_keys: Vec<String>,
    pub weights: Vec<f64>,
    /// Cumulative weight shares, precomputed once per definition.
    pub thresholds: Vec<f64>,
    pub weight_version: i32,
    pub bucketing_version: i32,
    /// user id (and every anonymous id aliased to it) → variant, for the experiment's
    /// overrides (SPEC §3d).
    pub overrides: HashMap<String, String>,
    /// Who may be enrolled (SPEC §10): the condition, compiled once per definition (None:
    /// everyone), and the share of eligible users enrolled.
    pub targeting: Option<Condition>,
    pub coverage: f64,
    /// The experiment's layer and its range there (SPEC §11); the range is None while the
    /// experiment is ended.
    pub layer: Option<Layer>,
    /// The key of the holdout its users pass through first (SPEC §11).
    pub holdout: Option<String>,
    /// Attribute paths whose values are stored with each first assignment (SPEC §13).
    pub dimensions: Vec<String>,
    /// The row version this definition was read from; None when it cannot be checked
    /// directly (distributed or altered tables: checked through SQL).
    version: Option<RowVersion>,
    /// The row version as text, `(block,offset) xmin`, for the SQL check.
    version_text: String,
}

impl Experiment {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    /// Whether this is still the definition `snapshot` sees, read as the query would be
    /// allowed to read it.
    fn is_current_in(&self, snapshot: pg_sys::Snapshot) -> bool {
        let Layout::Plain(t) = catalog::layout() else {
            return false;
        };
        match self.version {
            Some(version) => {
                access::readable(&[t.experiments, t.overrides, t.aliases.relid])
                    && index_read::row_version_visible(t.experiments, version, snapshot)
            }
            None => false,
        }
    }

    /// Whether no change to the definition has committed since: checked in the latest
    /// snapshot, after the lock that holds off variant removals was taken.
    pub fn is_latest(&self) -> bool {
        if self.version.is_some() && self.is_current_in(unsafe { pg_sys::GetLatestSnapshot() }) {
            return true;
        }
        // The row version as committed now, through SQL (distributed or altered tables,
        // or a definition that changed).
        let now = run_fresh(LATEST_VERSION_SQL, &[Some(self.id.to_string())], true).first_column;
        now.first().cloned().flatten().as_deref() == Some(self.version_text.as_str())
    }
}

thread_local! {
    static EXPERIMENTS: RefCell<HashMap<String, Rc<Experiment>>> = RefCell::new(HashMap::new());
    static LOAD_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static LOAD_FRESH_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static VERSION_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// The overrides come keyed by every id that acts as the overridden user: the user id and
/// the anonymous ids aliased to it (amba_alias bumps the experiment's row when that set
/// changes), so the hot path finds an override with one map lookup.
const LOAD_SQL: &str = "WITH o AS ( \
       SELECT o.user_id AS id, o.variant FROM amba.overrides o \
        WHERE o.experiment_id = (SELECT id FROM amba.experiments WHERE key = $1) \
       UNION ALL \
       SELECT a.anonymous_id, o.variant FROM amba.overrides o JOIN amba.aliases a ON a.user_id = o.user_id \
        WHERE o.experiment_id = (SELECT id FROM amba.experiments WHERE key = $1)) \
     SELECT e.id, e.status, e.variant_keys, e.weights, e.weight_version, \
       e.bucketing_version, e.ctid::text, e.xmin::text, \
       ARRAY(SELECT o.id FROM o ORDER BY o.id), ARRAY(SELECT o.variant FROM o ORDER BY o.id), \
       e.targeting::text, e.coverage, \
       e.layer, e.layer_start, e.layer_share, \
       (SELECT h.key FROM amba.experiments h WHERE h.id = e.holdout_id), \
       e.dimensions \
     FROM amba.experiments e WHERE e.key = $1";

/// The experiment's row version, (tid, xmin), as text: compared when rows cannot be read
/// directly.
const LATEST_VERSION_SQL: &str =
    "SELECT e.ctid::text || ' ' || e.xmin::text FROM amba.experiments e WHERE e.id = $1::bigint";

fn parse_tid(text: &str) -> Option<pg_sys::ItemPointerData> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let (block, offset) = inner.split_once(',')?;
    let block: u32 = block.parse().ok()?;
    let offset: u16 = offset.parse().ok()?;
    let mut tid: pg_sys::ItemPointerData = unsafe { std::mem::zeroed() };
    pgrx::itemptr::item_pointer_set_all(&mut tid, block, offset);
    Some(tid)
}

/// Reads the definition through SPI: in the statement's snapshot, or (`fresh`, a plan
/// prepared as mutating) in a new one that sees what committed since the statement began.
fn load(client: &SpiClient<'_>, key: &str, fresh: bool) -> Option<Rc<Experiment>> {
    let slot = if fresh { &LOAD_FRESH_PLAN } else { &LOAD_PLAN };
    let loaded = with_plan(slot, client, LOAD_SQL, &[pg_sys::TEXTOID], fresh, |plan| {
        let table = client
            .select(plan, None, &[key.into()])
            .expect("loading the experiment");
        if table.is_empty() {
            return None;
        }
        let row = table.first();
        let get_err = "reading the experiment";
        let variant_keys: Vec<String> = row.get(3).expect(get_err)?;
        let weights: Vec<f64> = row.get(4).expect(get_err)?;
        let override_users: Vec<String> = row.get(9).expect(get_err).unwrap_or_default();
        let override_variants: Vec<String> = row.get(10).expect(get_err).unwrap_or_default();
        let tid_text: String = row.get(7).expect(get_err)?;
        let xmin_text: String = row.get(8).expect(get_err)?;
        // Checked when it was set; compiled here once per definition.
        let targeting_text: Option<String> = row.get(11).expect(get_err);
        let targeting = targeting_text.map(|text| {
            let value: serde_json::Value = serde_json::from_str(&text).expect("jsonb text is JSON");
            amba_core::condition::compile_named(&value, "targeting").or_raise()
        });
        // The SELECT holds amba.experiments locked: its storage cannot change before
        // this transaction ends, so the row came from the relfilenode read here.
        let version = match catalog::layout() {
            Layout::Plain(t) => Some(RowVersion {
                relfilenode: index_read::relfilenode(t.experiments),
                tid: parse_tid(&tid_text).expect("a tid"),
                xmin: xmin_text.parse::<u32>().expect("an xid").into(),
            }),
            _ => None,
        };
        Some(Experiment {
            id: row.get(1).expect(get_err)?,
            status: row.get(2).expect(get_err)?,
            thresholds: amba_core::bucket::thresholds(&weights),
            variant_keys,
            weights,
            weight_version: row.get(5).expect(get_err)?,
            bucketing_version: row.get::<i16>(6).expect(get_err)? as i32,
            overrides: override_users.into_iter().zip(override_variants).collect(),
            targeting,
            coverage: row.get(12).expect(get_err)?,
            layer: row.get::<String>(13).expect(get_err).map(|key| Layer {
                key,
                range: row
                    .get::<f64>(14)
                    .expect(get_err)
                    .zip(row.get::<f64>(15).expect(get_err))
                    .map(|(start, share)| (start, start + share)),
            }),
            holdout: row.get(16).expect(get_err),
            dimensions: row
                .get::<Vec<String>>(17)
                .expect(get_err)
                .unwrap_or_default(),
            version,
            version_text: format!("{tid_text} {xmin_text}"),
        })
    })?;
    let loaded = Rc::new(loaded);
    EXPERIMENTS.with(|m| m.borrow_mut().insert(key.to_string(), loaded.clone()));
    Some(loaded)
}

fn cached_current(key: &str) -> Option<Rc<Experiment>> {
    let cached = EXPERIMENTS.with(|m| m.borrow().get(key).cloned())?;
    if unsafe { pg_sys::ActiveSnapshotSet() }
        && cached.is_current_in(unsafe { pg_sys::GetActiveSnapshot() })
    {
        Some(cached)
    } else {
        EXPERIMENTS.with(|m| m.borrow_mut().remove(key));
        None
    }
}

/// The experiment named `key` as the statement's snapshot sees it. The cache serves the
/// direct path and Citus; on the SQL path every definition is read by the query.
pub fn lookup(client: &SpiClient<'_>, path: Path, key: &str) -> Option<Rc<Experiment>> {
    cached(path, key).or_else(|| load(client, key, false))
}

/// `lookup` for callers without an SPI connection: connects only to load a definition the
/// cache does not hold, so a cache hit costs no query at all.
pub fn find(path: Path, key: &str) -> Option<Rc<Experiment>> {
    cached(path, key).or_else(|| Spi::connect(|client| load(client, key, false)))
}

fn cached(path: Path, key: &str) -> Option<Rc<Experiment>> {
    match path {
        Path::Direct(_) => cached_current(key),
        Path::Distributed => cached_checked_by_sql(key),
        Path::Sql => None,
    }
}

/// On Citus (SPEC §9) a worker serves many delegated calls per backend: a definition is
/// kept there too, and a lookup checks its row version through SQL (one primary-key read
/// of this node's placement of the reference table) instead of reading the definition with
/// its overrides again. The caller's privileges and row-level security on the three tables
/// the definition was read from are checked again, as the query would check them.
fn cached_checked_by_sql(key: &str) -> Option<Rc<Experiment>> {
    let cached = EXPERIMENTS.with(|m| m.borrow().get(key).cloned())?;
    let tables = [c"experiments", c"overrides", c"aliases"].map(|name| unsafe {
        pg_sys::get_relname_relid(
            name.as_ptr(),
            pg_sys::get_namespace_oid(c"amba".as_ptr(), true),
        )
    });
    let current = !tables.contains(&pg_sys::InvalidOid)
        && access::readable(&tables)
        && Spi::connect(|client| {
            with_plan(
                &VERSION_PLAN,
                client,
                LATEST_VERSION_SQL,
                &[pg_sys::INT8OID],
                false,
                |plan| {
                    let table = client
                        .select(plan, Some(1), &[cached.id.into()])
                        .expect("reading the experiment's row version");
                    !table.is_empty()
                        && table.first().get::<String>(1).ok().flatten().as_deref()
                            == Some(cached.version_text.as_str())
                },
            )
        });
    if current {
        Some(cached)
    } else {
        EXPERIMENTS.with(|m| m.borrow_mut().remove(key));
        None
    }
}

/// The definition as committed now (after a change was seen by `is_latest`).
pub fn reload_fresh(client: &SpiClient<'_>, key: &str) -> Option<Rc<Experiment>> {
    EXPERIMENTS.with(|m| m.borrow_mut().remove(key));
    load(client, key, true)
}
