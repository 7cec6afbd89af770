//! The counting engine the results functions share: the users every result counts
//! (`COUNTED_ASSIGNMENTS_FROM`/`_WHERE`: assigned, not overridden, SPEC §3d), running a
//! counting query over them in user-id slices with the plan that suits the experiment's
//! size (`run_counting`, `UserSlice`), the weight versions the SRM test needs
//! (`weight_versions`), and the checks every results function starts with
//! (`experiment_for_results`, `check_event`).

use crate::errors::{raise_code, OrRaise};
use crate::spi::{with_plan, with_settings};
use amba_core::srm::WeightVersion;
use amba_core::{validate, CoreError, ErrorCode};
use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    static VERSIONS_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static ESTIMATE_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// The users every result counts: assigned, and not overridden while the override exists.
pub const COUNTED_ASSIGNMENTS_FROM: &str = "amba.assignments a";
pub const COUNTED_ASSIGNMENTS_WHERE: &str = "a.experiment_id = $1 \
       AND NOT EXISTS (SELECT 1 FROM amba.overrides o \
                        WHERE o.experiment_id = a.experiment_id AND o.user_id = a.user_id)";

/// From this many assignments on (the planner's estimate) the counting runs as merge joins
/// over user-id slices, one slice per process; below it the planner chooses freely, as for
/// a hand-written query.
///
/// The three inputs come sorted by user from their indexes (assignments and exposures by
/// primary key, events by (event, user_id, occurred_at)), so merge joins can stream them;
/// since user ids compare bytewise (COLLATE "C") merging costs a memcmp per step. The
/// planner prefers hash joins, which build hash tables of every exposed and every
/// converting user and probe them once per assignment. Measured on the benchmark machine
/// (BENCHMARKS.md): the planner's own plans took 135-157 ms per 100k assignments at
/// 100k-250k, the merge plan 62-64 ms per 100k at 500k-1M.
pub const MERGE_FROM_ASSIGNMENTS: f64 = 20_000.0;

/// The planner's estimate of the experiment's assignments: its share among the most common
/// values of amba.assignments.experiment_id (pg_stats, kept by ANALYZE/autovacuum) times the
/// table's rows. 0 when the experiment is not among them or there are no statistics yet.
const ESTIMATE_SQL: &str =
    "SELECT (coalesce((SELECT m.f FROM unnest(s.most_common_vals::text::bigint[], \
       s.most_common_freqs) AS m(v, f) WHERE m.v = $1), 0) * c.reltuples)::float8 \
     FROM pg_catalog.pg_stats s, pg_catalog.pg_class c \
     WHERE s.schemaname = 'amba' AND s.tablename = 'assignments' AND s.attname = 'experiment_id' \
       AND c.oid = 'amba.assignments'::regclass";

fn estimated_assignments(client: &SpiClient<'_>, experiment_id: i64) -> f64 {
    with_plan(
        &ESTIMATE_PLAN,
        client,
        ESTIMATE_SQL,
        &[pg_sys::INT8OID],
        false,
        |plan| {
            let table = client
                .select(plan, Some(1), &[experiment_id.into()])
                .expect("reading statistics");
            if table.is_empty() {
                0.0
            } else {
                table.first().get::<f64>(1).ok().flatten().unwrap_or(0.0)
            }
        },
    )
}

/// What the slices are cut by (pg_stats, kept by ANALYZE/autovacuum): the equal-frequency
/// histograms of amba.assignments.user_id and amba.events.user_id (in the columns' "C"
/// order), and the events the query reads, `$1` the event names (the table's rows times the
/// names' frequencies among the most common values; 0 when not among them). A table with
/// inheritance children has two rows of statistics per column: the one over the whole tree
/// (what the counting query reads) is taken.
const SLICE_STATISTICS_SQL: &str = "SELECT \
       (SELECT s.histogram_bounds::text::text[] FROM pg_catalog.pg_stats s \
         WHERE s.schemaname = 'amba' AND s.tablename = 'assignments' AND s.attname = 'user_id' \
         ORDER BY s.inherited DESC LIMIT 1), \
       (SELECT s.histogram_bounds::text::text[] FROM pg_catalog.pg_stats s \
         WHERE s.schemaname = 'amba' AND s.tablename = 'events' AND s.attname = 'user_id' \
         ORDER BY s.inherited DESC LIMIT 1), \
       (SELECT (c.reltuples * coalesce((SELECT sum(m.f) FROM unnest(s.most_common_vals::text::text[], \
                 s.most_common_freqs) AS m(v, f) WHERE m.v = ANY ($1)), 0))::float8 \
          FROM pg_catalog.pg_class c, pg_catalog.pg_stats s \
         WHERE c.oid = 'amba.events'::regclass \
           AND s.schemaname = 'amba' AND s.tablename = 'events' AND s.attname = 'event' \
         ORDER BY s.inherited DESC LIMIT 1)";

/// The cost of an event to a slice, relative to an assignment (read from its index and
/// its row, merged with the exposures, grouped). Fitted to the two slices' times of
/// `amba_quantile_results` at 1M users (BENCHMARKS.md, 0.3.0 third pass): an event read
/// from the table (its properties) and sorted by user costs about 2; one read from the
/// (event, user_id, occurred_at) index alone about 1.
const EVENT_FROM_INDEX_COST: f64 = 1.0;
const EVENT_FROM_TABLE_COST: f64 = 2.0;

/// `slices - 1` user ids that cut the query's work into `slices` parts of about equal size
/// (`amba_core::slices::cut`): the experiment's assignments, and the events it reads. The
/// histograms cover every experiment and every event name, so a skewed experiment gets
/// uneven slices, never wrong ones. Strictly increasing; fewer when the statistics are
/// short or missing.
fn slice_bounds(
    client: &SpiClient<'_>,
    slices: usize,
    assignments: f64,
    events: &[&str],
    event_cost: f64,
) -> Vec<String> {
    let names: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    let table = client
        .select(SLICE_STATISTICS_SQL, Some(1), &[names.into()])
        .expect("reading statistics");
    let (assignment_ids, event_ids, event_rows) = if table.is_empty() {
        (Vec::new(), Vec::new(), 0.0)
    } else {
        let row = table.first();
        let ids = |i: usize| -> Vec<String> {
            row.get::<Vec<Option<String>>>(i)
                .ok()
                .flatten()
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect()
        };
        (
            ids(1),
            ids(2),
            row.get::<f64>(3).ok().flatten().unwrap_or(0.0),
        )
    };
    amba_core::slices::cut(
        &[
            amba_core::slices::Work {
                bounds: &assignment_ids,
                weight: assignments,
            },
            amba_core::slices::Work {
                bounds: &event_ids,
                weight: event_rows * event_cost,
            },
        ],
        slices,
    )
}

/// A slice of the user-id space in "C" order, `lower <= user_id < upper`: each bound a
/// statement parameter (`$n`), absent at the ends.
#[derive(Clone, Copy)]
pub struct UserSlice {
    lower: Option<usize>,
    upper: Option<usize>,
}

impl UserSlice {
    /// Every user.
    pub const ALL: UserSlice = UserSlice {
        lower: None,
        upper: None,
    };

    /// `column`'s restriction to the slice, as a conjunct to append (empty for ALL).
    pub fn filter(&self, column: &str) -> String {
        let mut sql = String::new();
        if let Some(n) = self.lower {
            sql.push_str(&format!(" AND {column} >= ${n} COLLATE \"C\""));
        }
        if let Some(n) = self.upper {
            sql.push_str(&format!(" AND {column} < ${n} COLLATE \"C\""));
        }
        sql
    }
}

/// How many slices the counting is cut into: the session's parallel workers per gather
/// (each worker takes a slice; the leader only gathers), or 1 for fewer than two. On Citus
/// (tables distributed, SPEC §9) 1: the shards are the slices there.
fn counting_slices() -> usize {
    if crate::store::Path::for_call().is_distributed() {
        return 1;
    }
    let workers: usize = unsafe {
        let value =
            pg_sys::GetConfigOption(c"max_parallel_workers_per_gather".as_ptr(), false, false);
        if value.is_null() {
            0
        } else {
            std::ffi::CStr::from_ptr(value)
                .to_str()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0)
        }
    };
    if workers < 2 {
        1
    } else {
        workers.min(16)
    }
}

/// How a counting query may be cut into user-id slices (`run_counting`).
#[derive(Clone, Copy)]
pub enum Slicing<'a> {
    /// Not at all: its rows do not add up across slices (a percentile over all users).
    Whole,
    /// Into slices of about equal work: the experiment's assignments, and the events of
    /// these names, read from the events' index only, or (`properties`) from the table.
    ByWork {
        events: &'a [&'a str],
        properties: bool,
    },
}

/// Runs a counting query over the experiment's assignments, built by `query` for a slice of
/// user ids, with the plan that suits its size (see MERGE_FROM_ASSIGNMENTS).
///
/// At scale the user ids are cut into one slice per parallel worker (`counting_slices`)
/// and the statement is the UNION ALL of the slices: a Parallel Append gives each worker a
/// whole slice, a chain of merge joins over index ranges (no slice is split between
/// processes, so none rescans another's inputs). The rows of all slices come back
/// together: `read` must add up rows with equal keys. With no workers available at run
/// time, the leader runs every slice itself. A query whose rows do not add up
/// across slices (a percentile over all users) passes `Slicing::Whole`.
///
/// Planned at every call (with this experiment's statistics), and run as SPI runs a
/// one-shot query: parallel workers allowed (a kept SPI plan never gets them).
/// A property value (or a sum of squares) beyond double precision is INVALID_ARGUMENT.
pub fn run_counting<'a, R>(
    client: &SpiClient<'_>,
    experiment_id: i64,
    query: impl Fn(UserSlice) -> String,
    slicing: Slicing<'_>,
    args: Vec<pgrx::datum::DatumWithOid<'a>>,
    read: impl FnOnce(pgrx::spi::SpiTupleTable) -> R,
) -> R {
    crate::errors::values_in_double_range("the events' values", || {
        run_counting_slices(client, experiment_id, query, slicing, args, read)
    })
}

fn run_counting_slices<'a, R>(
    client: &SpiClient<'_>,
    experiment_id: i64,
    query: impl Fn(UserSlice) -> String,
    slicing: Slicing<'_>,
    mut args: Vec<pgrx::datum::DatumWithOid<'a>>,
    read: impl FnOnce(pgrx::spi::SpiTupleTable) -> R,
) -> R {
    let assignments = estimated_assignments(client, experiment_id);
    if assignments < MERGE_FROM_ASSIGNMENTS {
        return read(
            client
                .select(query(UserSlice::ALL).as_str(), None, &args)
                .expect("counting"),
        );
    }
    let bounds = match (slicing, counting_slices()) {
        (Slicing::ByWork { events, properties }, slices) if slices > 1 => {
            let event_cost = if properties {
                EVENT_FROM_TABLE_COST
            } else {
                EVENT_FROM_INDEX_COST
            };
            slice_bounds(client, slices, assignments, events, event_cost)
        }
        _ => Vec::new(),
    };
    let first_bound = args.len() + 1;
    let slices: Vec<UserSlice> = (0..=bounds.len())
        .map(|i| UserSlice {
            lower: (i > 0).then(|| first_bound + i - 1),
            upper: (i < bounds.len()).then_some(first_bound + i),
        })
        .collect();
    let sql = slices
        .iter()
        .map(|s| format!("({})", query(*s)))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    args.extend(
        bounds
            .iter()
            .map(|b| pgrx::datum::DatumWithOid::from(b.as_str())),
    );
    // Merge joins only; the parallelism is the slices (Parallel Append of whole slices), so
    // no scan is split between processes; starting workers is cheap next to a slice. The
    // planner costs a Parallel Append of whole slices by its workers alone: so the workers
    // run the slices and the leader only gathers their rows.
    let settings: &[(&std::ffi::CStr, &std::ffi::CStr)] = &[
        (c"enable_hashjoin", c"off"),
        (c"enable_parallel_append", c"on"),
        (c"parallel_leader_participation", c"off"),
        (c"parallel_setup_cost", c"0"),
        (c"parallel_tuple_cost", c"0"),
        (c"min_parallel_table_scan_size", c"1TB"),
        (c"min_parallel_index_scan_size", c"1TB"),
    ];
    with_settings(settings, || {
        read(client.select(sql.as_str(), None, &args).expect("counting"))
    })
}

const VERSIONS_SQL: &str =
    "SELECT version, variant_keys, weights FROM amba.weight_versions WHERE experiment_id = $1";

pub fn weight_versions(client: &SpiClient<'_>, experiment_id: i64) -> Vec<WeightVersion> {
    with_plan(
        &VERSIONS_PLAN,
        client,
        VERSIONS_SQL,
        &[pg_sys::INT8OID],
        false,
        |plan| {
            client
                .select(plan, None, &[experiment_id.into()])
                .expect("reading weight versions")
                .map(|row| WeightVersion {
                    version: row.get(1).expect("version").expect("version"),
                    keys: row.get(2).expect("keys").expect("keys"),
                    weights: row.get(3).expect("weights").expect("weights"),
                })
                .collect()
        },
    )
}

/// The checks every results function starts with; returns the experiment as the
/// statement's snapshot sees it.
pub fn experiment_for_results(
    client: &SpiClient<'_>,
    experiment_key: Option<&str>,
) -> Rc<crate::store::Experiment> {
    validate::experiment_key(experiment_key).or_raise();
    let key = experiment_key.unwrap();
    let path = crate::store::Path::for_call();
    crate::store::experiments::lookup(client, path, key).unwrap_or_else(|| {
        raise_code(
            ErrorCode::ExperimentNotFound,
            format!("experiment {key:?} does not exist"),
        )
    })
}

/// An event name given as `what` (conversion_event, event): the event rules.
pub fn check_event<'a>(what: &str, event: Option<&'a str>) -> &'a str {
    validate::event(event)
        .map_err(|e| CoreError::invalid(e.detail.replacen("event", what, 1)))
        .or_raise();
    event.unwrap()
}
