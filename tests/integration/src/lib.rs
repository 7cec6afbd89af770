//! Shared helpers for the integration tests: connecting to the server named by
//! `DATABASE_URL` (set by scripts/test.sh, which starts a cluster with amba installed).

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@localhost:28815/amba_test".to_string())
}

pub fn connect() -> postgres::Client {
    postgres::Client::connect(&database_url(), postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", database_url()))
}

/// Connects as another role of the same server (trust auth on the local test cluster).
pub fn connect_as(user: &str) -> postgres::Client {
    let mut config: postgres::Config = database_url().parse().expect("DATABASE_URL");
    config.user(user);
    config
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect as {user}: {e}"))
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs cluster-wide setup (roles) that another test binary may be running at the same
/// moment: a concurrent CREATE ROLE can fail once, so retry a few times.
pub fn batch_with_retry(sql: &str, what: &str) {
    for attempt in 0.. {
        match connect().batch_execute(sql) {
            Ok(()) => return,
            Err(e) if attempt < 10 => {
                eprintln!("retrying {what}: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100 * (attempt + 1)));
            }
            Err(e) => panic!("cannot run {what}: {e}"),
        }
    }
}

/// Connects to another database of the same server.
pub fn connect_db(db: &str) -> postgres::Client {
    let mut config: postgres::Config = database_url().parse().expect("DATABASE_URL");
    config.dbname(db);
    config
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {db}: {e}"))
}

/// A database of the test's own (for tests that plant objects, need a fresh install, or
/// count whole tables), dropped when the guard goes.
pub struct Db(pub String);

impl Db {
    /// An empty database.
    pub fn new(prefix: &str) -> Db {
        let name = unique(prefix);
        connect()
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap();
        Db(name)
    }

    /// A database with amba installed.
    pub fn with_amba(prefix: &str) -> Db {
        let db = Db::new(prefix);
        db.client().batch_execute("CREATE EXTENSION amba").unwrap();
        db
    }

    pub fn client(&self) -> postgres::Client {
        connect_db(&self.0)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = connect().batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.0
        ));
    }
}

/// The backend process id of a connection (for pg_stat_activity and pg_blocking_pids).
pub fn backend_pid(c: &mut postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// Waits until backend `pid` waits on a heavyweight lock held by backend `holder` (a bounded
/// poll of pg_stat_activity and pg_blocking_pids, seen from `observer`): proof that the
/// interleaving a test forces really happened. `running` tells whether the waiting call is
/// still in flight; a call that finished without ever waiting fails the test at once.
/// Returns the wait event (`advisory` for amba's user and experiment locks,
/// `transactionid` for a row another transaction has not committed yet).
pub fn wait_until_blocked_by(
    observer: &mut postgres::Client,
    pid: i32,
    holder: i32,
    what: &str,
    running: impl Fn() -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let row = observer
            .query_one(
                "SELECT coalesce(a.wait_event_type = 'Lock' AND $2 = ANY (pg_blocking_pids(a.pid)), false),
                        coalesce(a.wait_event, '')
                   FROM pg_stat_activity a WHERE a.pid = $1",
                &[&pid, &holder],
            )
            .unwrap();
        if row.get::<_, bool>(0) {
            return row.get(1);
        }
        assert!(
            running(),
            "{what}: finished without waiting for the other transaction (backend {holder})"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: backend {pid} never waited for backend {holder}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A committed fixture of tests/integration/fixtures, parsed.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The array a fixture holds here.
pub fn arr(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
}

/// The string a fixture holds here.
pub fn s(v: &serde_json::Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// The SQLSTATE of a database error.
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| panic!("not a database error: {e}"))
}

/// The message of a database error (the error itself otherwise).
pub fn db_message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// The string a fixture may hold here (null: None).
pub fn opt_s(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Runs `sql`, which must fail with INVALID_ARGUMENT (SQLSTATE 22023, message
/// "INVALID_ARGUMENT: ..."); returns the message.
pub fn invalid_argument(
    c: &mut postgres::Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> String {
    match c.query(sql, params) {
        Ok(rows) => panic!(
            "{sql}: succeeded ({} rows), expected INVALID_ARGUMENT",
            rows.len()
        ),
        Err(e) => {
            let message = db_message(&e);
            assert_eq!(sqlstate(&e), "22023", "{sql}: {e}");
            assert!(
                message.starts_with("INVALID_ARGUMENT:"),
                "{sql}: message {message:?} does not start with \"INVALID_ARGUMENT:\""
            );
            message
        }
    }
}

/// The id of the experiment named `key`.
pub fn experiment_id(c: &mut postgres::Client, key: &str) -> i64 {
    c.query_one("SELECT id FROM amba.experiments WHERE key = $1", &[&key])
        .unwrap_or_else(|e| panic!("experiment {key}: {e}"))
        .get(0)
}

/// `amba_get_experiment(key)` as JSON (null when there is none).
pub fn experiment_json(c: &mut postgres::Client, key: &str) -> serde_json::Value {
    let text: Option<String> = c
        .query_one("SELECT amba_get_experiment($1)::text", &[&key])
        .unwrap()
        .get(0);
    text.map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::Value::Null)
}

/// pg_cron, for the tests that schedule amba's functions for real.
pub mod cron {
    use super::connect_db;
    use std::time::Duration;

    /// A pg_cron job, unscheduled (and its run records removed) when the guard goes; with
    /// the time it was scheduled (the server's clock, which pg_cron's launcher runs by) and
    /// whether it was nudged since.
    pub struct CronJob(pub i64, std::time::SystemTime, Option<std::time::Instant>);

    impl CronJob {
        /// Schedules `command` every minute in database `db`.
        pub fn every_minute(
            pg: &mut postgres::Client,
            name: &str,
            command: &str,
            db: &str,
        ) -> CronJob {
            let row = pg
                .query_one(
                    "SELECT cron.schedule_in_database($1, '* * * * *', $2, $3), now()",
                    &[&name, &command, &db],
                )
                .unwrap_or_else(|e| panic!("scheduling {command:?} in {db}: {e}"));
            CronJob(row.get(0), row.get(1), None)
        }

        /// pg_cron can miss the invalidation of a job scheduled from another session: its
        /// launcher's job cache stays "valid" and the job never starts until cron.job changes
        /// again (citusdata/pg_cron#362, seen here once in CI). So once a minute boundary has
        /// passed (plus 3 s) with no run of the job, this alters it to the same schedule,
        /// which invalidates the cache again — at most once a minute — and says so on
        /// stderr. Call it from the wait loop.
        pub fn nudge_if_missed(&mut self, pg: &mut postgres::Client) {
            if self
                .2
                .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
            {
                return;
            }
            let missed: bool = pg
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM cron.job_run_details WHERE jobid = $1)
                        AND now() > date_trunc('minute', $2::timestamptz) + interval '1 minute 3 seconds'",
                    &[&self.0, &self.1],
                )
                .unwrap()
                .get(0);
            if missed {
                eprintln!("pg_cron job {} has not started a minute after it was scheduled: altering it to refresh pg_cron's job cache (pg_cron#362)", self.0);
                pg.execute(
                    "SELECT cron.alter_job($1, schedule => '* * * * *')",
                    &[&self.0],
                )
                .unwrap();
                self.2 = Some(std::time::Instant::now());
            }
        }
    }

    impl Drop for CronJob {
        fn drop(&mut self) {
            let mut pg = connect_db("postgres");
            if let Err(e) = pg.execute("SELECT cron.unschedule($1::bigint)", &[&self.0]) {
                eprintln!("cannot unschedule pg_cron job {}: {e}", self.0);
            }
            let _ = pg.execute(
                "DELETE FROM cron.job_run_details WHERE jobid = $1",
                &[&self.0],
            );
        }
    }

    /// A connection to pg_cron's database, with pg_cron preloaded and created there; fails
    /// (never skips) when the server does not preload it.
    pub fn ready() -> postgres::Client {
        let mut pg = connect_db("postgres");
        let preload: String = pg
            .query_one("SHOW shared_preload_libraries", &[])
            .unwrap()
            .get(0);
        assert!(
            preload
                .split(',')
                .any(|l| l.trim().trim_matches('"') == "pg_cron"),
            "pg_cron is not preloaded by this server (shared_preload_libraries = {preload:?}): \
             scripts/pg.sh start configures the test cluster with shared_preload_libraries = \
             'pg_cron' (restart it with that script), or set it and restart the server; this \
             test must run under pg_cron"
        );
        let cron_db: String = pg.query_one("SHOW cron.database_name", &[]).unwrap().get(0);
        assert_eq!(
            cron_db, "postgres",
            "pg_cron keeps its jobs in database {cron_db}"
        );
        for attempt in 0.. {
            match pg.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron") {
                Ok(()) => break,
                // another test creating it at the same moment
                Err(e) if attempt < 10 => {
                    eprintln!("retrying CREATE EXTENSION pg_cron: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("CREATE EXTENSION pg_cron in database postgres: {e}"),
            }
        }
        pg
    }
}

/// Line pointers in use in `table`'s heap (lp_flags <> 0) that satisfy `condition` (columns of
/// pageinspect's `heap_page_items`, e.g. `t_xmin = '0'`); needs `CREATE EXTENSION
/// pageinspect`. Shows tuples a statement cannot see: dead ones, and speculative insertions
/// taken back (`heap_abort_speculative` leaves xmin 0).
pub fn heap_line_pointers(c: &mut postgres::Client, table: &str, condition: &str) -> i64 {
    c.query_one(
        &format!(
            "SELECT count(*) FROM generate_series(0, (pg_relation_size($1::text::regclass) \
               / current_setting('block_size')::bigint)::int - 1) b, \
               heap_page_items(get_raw_page($1, b)) WHERE lp_flags <> 0 AND ({condition})"
        ),
        &[&table],
    )
    .unwrap()
    .get(0)
}
