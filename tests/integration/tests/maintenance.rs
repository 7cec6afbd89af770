//! What a DBA does to amba's tables — partitioning them, archiving rows into an inheritance
//! child, VACUUM FULL / CLUSTER, policies, audit hooks, triggers, constraints, columns,
//! indexes built concurrently, FORCE ROW LEVEL SECURITY, revoked privileges, logical
//! decoding, SERIALIZABLE, prepared transactions — and what amba must then do: exactly what
//! the plain SQL statements it stands for would do, in the backend that makes the change, in
//! a fresh backend, and in a backend that was warm before the change (one that had already
//! called assign/track; the change is made by another connection).
//!
//! After each action the storage is checked with amcheck (`bt_index_check(index, true)` on
//! every btree index of amba's tables, `verify_heapam` on each table) and the server must
//! not have crashed: the connection used is still alive, a sentinel connection opened at the
//! start of the test is still alive (a crashing backend makes the postmaster terminate every
//! backend) and `pg_postmaster_start_time()` did not change.
//!
//! Each test has a database of its own (`Db::with_amba`), starting with
//! `amba_create_experiment('e', a:1 / b:1)`. The tests of this file run one at a time (a
//! process-wide lock): a test that crashes the server must not make another fail, and after
//! a crash the next test waits until the server accepts connections again.
//!
//! Bugs caught (the issue's items):
//!   1. a partitioned amba.assignments / exposures / aliases crashed assign, expose, peek and
//!      track (SIGSEGV); `partitioned_*`, `a_backend_warm_before_*_partitioned_*`;
//!   2. a row moved into an inheritance child of amba.assignments was not seen, so the user
//!      got a second row and another variant; `sticky_assignment_*inheritance_child*`;
//!   3. the experiment cache kept (tid, xmin) across VACUUM FULL / CLUSTER: "could not read
//!      block", or another row on the cached tid served a stale definition;
//!      `*_after_vacuum_full_*`, `*_after_cluster_*`;
//!   4. a policy created by another session was ignored on a cache hit;
//!      `a_restrictive_policy_*`;
//!   5. first assignments and events bypassed the executor, so audit hooks (pgaudit) never
//!      saw them; `amba.direct_access`; `executor_hooks_*`, `pgaudit_*`, `direct_access_*`;
//!   6. a lost first-assignment race inserted and aborted a speculative tuple (a dead tuple
//!      and WAL) where ExecInsert checks first and waits; `a_lost_first_assignment_race_*`.

use amba_integration_tests::{batch_with_retry, database_url, Db};
use postgres::{Client, Config, NoTls};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const AB: &str = r#"[{"key":"a","weight":1},{"key":"b","weight":1}]"#;

// ---------------------------------------------------------------------------------------
// Fixture: one database per test, one test at a time, crash detection, storage checks.
// ---------------------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

fn config(db: &str, user: Option<&str>) -> Config {
    let mut config: Config = database_url().parse().expect("DATABASE_URL");
    config.dbname(db);
    if let Some(user) = user {
        config.user(user);
    }
    // Nothing in these tests may hang: a statement waits two minutes at most.
    config.options("-c statement_timeout=120s");
    config.connect_timeout(Duration::from_secs(30));
    config
}

fn open(db: &str, user: Option<&str>) -> Client {
    config(db, user)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {db} as {user:?}: {e}"))
}

/// Whether the server accepts connections (and is out of crash recovery) within `limit`.
fn server_ready_within(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let ready = config("postgres", None)
            .connect(NoTls)
            .ok()
            .and_then(|mut c| c.query_one("SELECT NOT pg_is_in_recovery()", &[]).ok())
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if ready {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Dropped first. After a failed test, gives the postmaster time to notice a crashed backend
/// (it then terminates every backend, the sentinel included), and waits for the restarted
/// server before the database is dropped and the next test starts.
struct ServerUp {
    sentinel: Client,
}

impl Drop for ServerUp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && self.sentinel.simple_query("SELECT 1").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if !server_ready_within(Duration::from_secs(180)) {
            eprintln!("the server did not accept connections again within 3 minutes");
        }
    }
}

/// The test's database, dropped without panicking (`Db`'s own drop panics when it cannot
/// connect, which aborts the whole run while a crashed server restarts).
struct OwnDb(std::mem::ManuallyDrop<Db>);

impl Drop for OwnDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.0 .0);
        for _ in 0..40 {
            if let Ok(mut c) = config("postgres", None).connect(NoTls) {
                if c.batch_execute(&sql).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("could not drop database {}", self.0 .0);
    }
}

/// Login roles a test created; dropped after its database.
struct Roles(Vec<String>);

impl Drop for Roles {
    fn drop(&mut self) {
        for role in &self.0 {
            if let Ok(mut c) = config("postgres", None).connect(NoTls) {
                let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS \"{role}\""));
            }
        }
    }
}

struct Fixture {
    server_up: ServerUp,
    db: OwnDb,
    roles: Roles,
    started: String,
    _serial: MutexGuard<'static, ()>,
}

impl Fixture {
    /// A database with amba and experiment 'e' (variants a:1, b:1).
    fn new(prefix: &str) -> Fixture {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        assert!(
            server_ready_within(Duration::from_secs(180)),
            "the server does not accept connections"
        );
        let db = Db::with_amba(prefix);
        open(&db.0, None)
            .execute(
                "SELECT amba_create_experiment('e', $1::text::jsonb)",
                &[&AB],
            )
            .unwrap();
        let mut sentinel = open("postgres", None);
        let started: String = sentinel
            .query_one("SELECT pg_postmaster_start_time()::text", &[])
            .unwrap()
            .get(0);
        Fixture {
            server_up: ServerUp { sentinel },
            db: OwnDb(std::mem::ManuallyDrop::new(db)),
            roles: Roles(Vec::new()),
            started,
            _serial: serial,
        }
    }

    /// The test's database.
    fn name(&self) -> String {
        self.db.0 .0.clone()
    }

    /// A new backend on the test's database, as the superuser.
    fn conn(&self) -> Client {
        open(&self.name(), None)
    }

    fn conn_as(&self, role: &str) -> Client {
        open(&self.name(), Some(role))
    }

    /// A login role of this test, a member of amba_admin when `admin`.
    fn login_role(&mut self, suffix: &str, admin: bool) -> String {
        let role = format!("{}_{suffix}", self.name());
        let membership = if admin { " IN ROLE amba_admin" } else { "" };
        batch_with_retry(
            &format!("CREATE ROLE \"{role}\" LOGIN{membership}"),
            "creating a login role",
        );
        self.roles.0.push(role.clone());
        role
    }

    /// No backend crashed, `used` is alive, and amcheck finds every index and table clean.
    fn healthy(&mut self, used: &mut Client, after: &str) {
        if let Err(e) = used.simple_query("SELECT 1") {
            panic!("after {after}: the connection used is dead (a backend crash?): {e}");
        }
        if let Err(e) = self.server_up.sentinel.simple_query("SELECT 1") {
            panic!(
                "after {after}: an unrelated connection was terminated: a backend crashed and \
                 the postmaster restarted the server ({e})"
            );
        }
        let now: String = self
            .server_up
            .sentinel
            .query_one("SELECT pg_postmaster_start_time()::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(now, self.started, "after {after}: the postmaster restarted");
        check_storage(&mut self.conn(), after);
    }
}

/// amcheck: every btree index of amba's tables holds every heap row (heapallindexed), and
/// verify_heapam finds nothing wrong with each table (and its TOAST).
fn check_storage(c: &mut Client, after: &str) {
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        .unwrap();
    let broken: Vec<String> = c
        .query(
            "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
              WHERE t.relnamespace = 'amba'::regnamespace AND NOT (i.indisvalid AND i.indisready AND i.indislive)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        broken.is_empty(),
        "after {after}: invalid indexes {broken:?}"
    );
    let indexes: Vec<String> = c
        .query(
            "SELECT ic.oid::regclass::text FROM pg_index i \
               JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid \
               JOIN pg_am am ON am.oid = ic.relam \
              WHERE t.relnamespace = 'amba'::regnamespace AND ic.relkind = 'i' AND am.amname = 'btree' \
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(indexes.len() >= 9, "amba's indexes: {indexes:?}");
    for index in &indexes {
        if let Err(e) = c.execute("SELECT bt_index_check($1::text::regclass, true)", &[index]) {
            panic!("after {after}: bt_index_check({index}, heapallindexed) failed: {e}");
        }
    }
    let tables: Vec<String> = c
        .query(
            "SELECT oid::regclass::text FROM pg_class \
              WHERE relnamespace = 'amba'::regnamespace AND relkind IN ('r', 'm') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in &tables {
        let problems: Vec<String> = c
            .query(
                "SELECT format('block %s offset %s attribute %s: %s', blkno, offnum, attnum, msg) \
                   FROM verify_heapam($1::text::regclass, check_toast => true)",
                &[table],
            )
            .unwrap_or_else(|e| panic!("after {after}: verify_heapam({table}) failed: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            problems.is_empty(),
            "after {after}: verify_heapam({table}):\n{}",
            problems.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Calls and small helpers
// ---------------------------------------------------------------------------------------

fn assign(c: &mut Client, key: &str, user: &str) -> Result<String, postgres::Error> {
    c.query_one("SELECT amba_assign($1, $2)", &[&key, &user])
        .map(|r| r.get(0))
}

fn expose(c: &mut Client, key: &str, user: &str) -> Result<String, postgres::Error> {
    c.query_one("SELECT amba_expose($1, $2)", &[&key, &user])
        .map(|r| r.get(0))
}

fn peek(c: &mut Client, key: &str, user: &str) -> Result<Option<String>, postgres::Error> {
    c.query_one("SELECT amba_peek($1, $2)", &[&key, &user])
        .map(|r| r.get(0))
}

fn track(c: &mut Client, user: &str, event: &str) -> Result<(), postgres::Error> {
    c.execute("SELECT amba_track($1, $2)", &[&user, &event])
        .map(|_| ())
}

fn track_with(
    c: &mut Client,
    user: &str,
    event: &str,
    properties: &str,
) -> Result<(), postgres::Error> {
    c.execute(
        "SELECT amba_track($1, $2, $3::text::jsonb)",
        &[&user, &event, &properties],
    )
    .map(|_| ())
}

fn alias(c: &mut Client, anonymous: &str, user: &str) {
    c.execute("SELECT amba_alias($1, $2)", &[&anonymous, &user])
        .unwrap();
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn assignment_rows(c: &mut Client, key: &str, user: &str) -> i64 {
    // Rows in inheritance children and partitions count too.
    c.query_one(
        "SELECT count(*) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id \
          WHERE e.key = $1 AND a.user_id = $2",
        &[&key, &user],
    )
    .unwrap()
    .get(0)
}

fn exposure_rows(c: &mut Client, key: &str, user: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM amba.exposures x JOIN amba.experiments e ON e.id = x.experiment_id \
          WHERE e.key = $1 AND x.user_id = $2",
        &[&key, &user],
    )
    .unwrap()
    .get(0)
}

fn event_rows(c: &mut Client, user: &str, event: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM amba.events WHERE user_id = $1 AND event = $2",
        &[&user, &event],
    )
    .unwrap()
    .get(0)
}

/// The SQLSTATE of an error and its message (a connection error has no SQLSTATE: then the
/// error itself, which makes the comparison fail with it in the message).
fn state<T: std::fmt::Debug>(result: Result<T, postgres::Error>) -> (String, String) {
    match result {
        Ok(v) => (format!("no error (returned {v:?})"), String::new()),
        Err(e) => match e.as_db_error() {
            Some(db) => (db.code().code().to_string(), db.message().to_string()),
            None => (format!("not a database error: {e}"), e.to_string()),
        },
    }
}

fn expect_state<T: std::fmt::Debug>(
    result: Result<T, postgres::Error>,
    sqlstate: &str,
    what: &str,
) -> String {
    let (code, message) = state(result);
    assert_eq!(code, sqlstate, "{what}: {message}");
    message
}

/// `unwrap` that says what a closed connection means here: the backend died (a crash makes
/// the postmaster terminate every backend and restart the server; see its log).
trait Must<T> {
    fn must(self) -> T;
}

impl<T> Must<T> for Result<T, postgres::Error> {
    #[track_caller]
    fn must(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) if e.is_closed() || e.as_db_error().is_none() => panic!(
                "the connection was closed: the backend died (server crash? every backend is \
                 terminated and the server restarts; see the server log): {e}"
            ),
            Err(e) => panic!("{e:?}"),
        }
    }
}

fn pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// Waits (bounded) until backend `pid` waits on a heavyweight lock; returns its wait event.
fn wait_until_lock_wait(
    observer: &mut Client,
    pid: i32,
    finished: impl Fn() -> bool,
) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = observer
            .query_one(
                "SELECT coalesce(wait_event_type, ''), coalesce(wait_event, '') FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap();
        let (kind, event): (String, String) = (row.get(0), row.get(1));
        if kind == "Lock" {
            return (kind, event);
        }
        assert!(
            !finished(),
            "backend {pid} returned without waiting for the uncommitted first assignment"
        );
        assert!(
            Instant::now() < deadline,
            "backend {pid} never waited on a lock (last wait: {kind}/{event})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The first user id `u0`, `u1`, ... whose variant in `key` is `variant` (amba_peek of a
/// user with nothing stored is the variant amba_assign would store: deterministic).
fn user_with_variant(c: &mut Client, key: &str, variant: &str) -> String {
    for i in 0..1000 {
        let user = format!("u{i}");
        if peek(c, key, &user).unwrap().as_deref() == Some(variant) {
            return user;
        }
    }
    panic!("no user among u0..u999 gets {variant}");
}

// ---------------------------------------------------------------------------------------
// 1. Partitioned tables (0.2.0: SIGSEGV, every backend terminated, the server restarts)
// ---------------------------------------------------------------------------------------

fn partitions(table: &str, key: &str, modulus: u32) -> String {
    let mut sql = format!(
        "CREATE TABLE amba.{table} (LIKE amba.{table}_old INCLUDING ALL) PARTITION BY HASH ({key});"
    );
    for r in 0..modulus {
        sql += &format!(
            "CREATE TABLE amba.{table}_p{r} PARTITION OF amba.{table} FOR VALUES WITH (MODULUS {modulus}, REMAINDER {r});"
        );
    }
    sql
}

/// amba.assignments becomes partitioned (the issue's statements), its rows moved, the
/// foreign keys of amba.exposures and amba.assignment_dimensions (0.3.0) pointed at the new
/// table.
fn partition_assignments(c: &mut Client, key: &str, modulus: u32) {
    c.batch_execute(&format!(
        "BEGIN;
         ALTER TABLE amba.exposures DROP CONSTRAINT exposures_experiment_id_user_id_fkey;
         ALTER TABLE amba.assignment_dimensions DROP CONSTRAINT assignment_dimensions_experiment_id_user_id_fkey;
         ALTER TABLE amba.assignments RENAME TO assignments_old;
         ALTER INDEX amba.assignments_pkey RENAME TO assignments_old_pkey;
         {}
         INSERT INTO amba.assignments SELECT * FROM amba.assignments_old;
         ALTER EXTENSION amba DROP TABLE amba.assignments_old;
         DROP TABLE amba.assignments_old;
         ALTER TABLE amba.exposures ADD CONSTRAINT exposures_experiment_id_user_id_fkey
           FOREIGN KEY (experiment_id, user_id) REFERENCES amba.assignments (experiment_id, user_id)
           ON DELETE CASCADE ON UPDATE CASCADE;
         ALTER TABLE amba.assignment_dimensions ADD CONSTRAINT assignment_dimensions_experiment_id_user_id_fkey
           FOREIGN KEY (experiment_id, user_id) REFERENCES amba.assignments (experiment_id, user_id)
           ON DELETE CASCADE ON UPDATE CASCADE;
         COMMIT;",
        partitions("assignments", key, modulus)
    ))
    .unwrap_or_else(|e| panic!("partitioning amba.assignments: {e}"));
}

fn partition_exposures(c: &mut Client, modulus: u32) {
    c.batch_execute(&format!(
        "BEGIN;
         ALTER TABLE amba.exposures RENAME TO exposures_old;
         ALTER INDEX amba.exposures_pkey RENAME TO exposures_old_pkey;
         {}
         INSERT INTO amba.exposures SELECT * FROM amba.exposures_old;
         ALTER EXTENSION amba DROP TABLE amba.exposures_old;
         DROP TABLE amba.exposures_old;
         ALTER TABLE amba.exposures ADD CONSTRAINT exposures_experiment_id_user_id_fkey
           FOREIGN KEY (experiment_id, user_id) REFERENCES amba.assignments (experiment_id, user_id)
           ON DELETE CASCADE ON UPDATE CASCADE;
         COMMIT;",
        partitions("exposures", "user_id", modulus)
    ))
    .unwrap_or_else(|e| panic!("partitioning amba.exposures: {e}"));
}

fn partition_aliases(c: &mut Client, modulus: u32) {
    c.batch_execute(&format!(
        "BEGIN;
         ALTER TABLE amba.aliases RENAME TO aliases_old;
         ALTER INDEX amba.aliases_pkey RENAME TO aliases_old_pkey;
         ALTER INDEX amba.aliases_user_id RENAME TO aliases_old_user_id;
         {}
         ALTER INDEX amba.aliases_user_id_idx RENAME TO aliases_user_id;
         INSERT INTO amba.aliases SELECT * FROM amba.aliases_old;
         ALTER EXTENSION amba DROP TABLE amba.aliases_old;
         DROP TABLE amba.aliases_old;
         COMMIT;",
        partitions("aliases", "anonymous_id", modulus)
    ))
    .unwrap_or_else(|e| panic!("partitioning amba.aliases: {e}"));
}

fn partition_events(c: &mut Client, modulus: u32) {
    c.batch_execute(&format!(
        "BEGIN;
         ALTER TABLE amba.events RENAME TO events_old;
         ALTER INDEX amba.events_pkey RENAME TO events_old_pkey;
         ALTER INDEX amba.events_event_user_time RENAME TO events_old_event_user_time;
         {}
         INSERT INTO amba.events OVERRIDING SYSTEM VALUE SELECT * FROM amba.events_old;
         SELECT setval(pg_get_serial_sequence('amba.events', 'event_id'),
                       (SELECT coalesce(max(event_id), 0) + 1 FROM amba.events), false);
         ALTER EXTENSION amba DROP TABLE amba.events_old;
         ALTER EXTENSION amba DROP SEQUENCE amba.events_event_id_seq;
         DROP TABLE amba.events_old;
         COMMIT;",
        partitions("events", "event_id", modulus)
    ))
    .unwrap_or_else(|e| panic!("partitioning amba.events: {e}"));
}

#[derive(Clone, Copy, Debug)]
enum Table {
    Assignments,
    Exposures,
    Aliases,
}

#[derive(Clone, Copy, Debug)]
enum Call {
    Assign,
    Expose,
    Peek,
    Track,
}

/// Item 1: `call`, in a backend started after `table` became partitioned (rows spread over
/// two partitions), does what the plain statements do on the partitioned table.
fn partitioned_case(table: Table, call: Call) {
    let mut fx = Fixture::new(&format!("mt_p_{table:?}_{call:?}").to_lowercase());
    let mut admin = fx.conn();
    // Before the change: an exposed assignment, an unexposed one, an alias, an event.
    let v_old = assign(&mut admin, "e", "old").must();
    expose(&mut admin, "e", "old").must();
    let v_x = assign(&mut admin, "e", "x").must();
    alias(&mut admin, "anon1", "member1");
    let v_member = assign(&mut admin, "e", "member1").must();
    track(&mut admin, "old", "before").must();
    match table {
        Table::Assignments => partition_assignments(&mut admin, "user_id", 2),
        Table::Exposures => partition_exposures(&mut admin, 2),
        Table::Aliases => partition_aliases(&mut admin, 2),
    }
    fx.healthy(&mut admin, &format!("partitioning amba.{table:?}"));

    let mut app = fx.conn(); // a backend that starts after the change
    let what = format!("{call:?} with amba.{table:?} partitioned");
    match call {
        Call::Assign => {
            assert_eq!(assign(&mut app, "e", "old").must(), v_old, "{what}: sticky");
            assert_eq!(assign(&mut app, "e", "x").must(), v_x, "{what}: sticky");
            assert_eq!(
                assign(&mut app, "e", "anon1").must(),
                v_member,
                "{what}: an alias acts as its user"
            );
            let first = assign(&mut app, "e", "new1").must();
            assert_eq!(assign(&mut app, "e", "new1").must(), first, "{what}");
            for user in ["old", "x", "member1", "new1"] {
                assert_eq!(assignment_rows(&mut app, "e", user), 1, "{what}: {user}");
            }
            assert_eq!(assignment_rows(&mut app, "e", "anon1"), 0, "{what}");
            assert_eq!(count(&mut app, "SELECT count(*) FROM amba.assignments"), 4);
            // 0.3.0: a first assignment that stores dimension values, on the SQL path.
            app.batch_execute(
                "SELECT amba_create_experiment('dims', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]',
                                               dimensions => ARRAY['country'])",
            )
            .unwrap();
            app.batch_execute("SELECT amba_assign('dims', 'new2', '{\"country\": \"DE\"}')")
                .unwrap();
            assert_eq!(
                count(&mut app, "SELECT count(*) FROM amba.assignment_dimensions d JOIN amba.assignments a USING (experiment_id, user_id)
                                  WHERE d.user_id = 'new2' AND d.dimension_values = '{\"country\": \"DE\"}'"),
                1,
                "{what}: the dimension values stored with the assignment"
            );
        }
        Call::Expose => {
            assert_eq!(expose(&mut app, "e", "old").must(), v_old, "{what}");
            assert_eq!(expose(&mut app, "e", "x").must(), v_x, "{what}");
            assert_eq!(
                expose(&mut app, "e", "anon1").must(),
                v_member,
                "{what}: an alias acts as its user"
            );
            for user in ["old", "x", "member1"] {
                assert_eq!(exposure_rows(&mut app, "e", user), 1, "{what}: {user}");
            }
            assert_eq!(count(&mut app, "SELECT count(*) FROM amba.exposures"), 3);
            let message = expect_state(
                expose(&mut app, "e", "nobody"),
                "P0002",
                &format!("{what}: an unassigned user"),
            );
            assert!(message.starts_with("ASSIGNMENT_REQUIRED"), "{message}");
        }
        Call::Peek => {
            assert_eq!(
                peek(&mut app, "e", "old").must().as_deref(),
                Some(v_old.as_str())
            );
            assert_eq!(
                peek(&mut app, "e", "x").must().as_deref(),
                Some(v_x.as_str())
            );
            assert_eq!(
                peek(&mut app, "e", "anon1").must().as_deref(),
                Some(v_member.as_str()),
                "{what}: an alias acts as its user"
            );
            let would = peek(&mut app, "e", "new2").must();
            assert!(
                matches!(would.as_deref(), Some("a" | "b")),
                "{what}: {would:?}"
            );
            assert_eq!(
                assignment_rows(&mut app, "e", "new2"),
                0,
                "{what}: peek writes nothing"
            );
        }
        Call::Track => {
            track(&mut app, "old", "after").must();
            track(&mut app, "anon1", "after").must();
            assert_eq!(event_rows(&mut app, "old", "after"), 1, "{what}");
            assert_eq!(
                event_rows(&mut app, "member1", "after"),
                1,
                "{what}: stored under the alias's user"
            );
            assert_eq!(event_rows(&mut app, "anon1", "after"), 0, "{what}");
            assert_eq!(count(&mut app, "SELECT count(*) FROM amba.events"), 3);
        }
    }
    fx.healthy(&mut app, &what);
}

#[test]
fn partitioned_assignments_assign() {
    partitioned_case(Table::Assignments, Call::Assign);
}

#[test]
fn partitioned_assignments_expose() {
    partitioned_case(Table::Assignments, Call::Expose);
}

#[test]
fn partitioned_assignments_peek() {
    partitioned_case(Table::Assignments, Call::Peek);
}

#[test]
fn partitioned_assignments_track() {
    partitioned_case(Table::Assignments, Call::Track);
}

#[test]
fn partitioned_exposures_assign() {
    partitioned_case(Table::Exposures, Call::Assign);
}

#[test]
fn partitioned_exposures_expose() {
    partitioned_case(Table::Exposures, Call::Expose);
}

#[test]
fn partitioned_exposures_peek() {
    partitioned_case(Table::Exposures, Call::Peek);
}

#[test]
fn partitioned_exposures_track() {
    partitioned_case(Table::Exposures, Call::Track);
}

#[test]
fn partitioned_aliases_assign() {
    partitioned_case(Table::Aliases, Call::Assign);
}

#[test]
fn partitioned_aliases_expose() {
    partitioned_case(Table::Aliases, Call::Expose);
}

#[test]
fn partitioned_aliases_peek() {
    partitioned_case(Table::Aliases, Call::Peek);
}

#[test]
fn partitioned_aliases_track() {
    partitioned_case(Table::Aliases, Call::Track);
}

/// Item 1, the issue's exact statements: the server must not crash on the first
/// amba_assign after amba.assignments becomes partitioned (0.2.0: SIGSEGV).
#[test]
fn partitioned_assignments_issue_reproducer_does_not_crash_the_server() {
    let mut fx = Fixture::new("mt_p_repro");
    let mut c = fx.conn();
    c.batch_execute(
        "BEGIN;
         ALTER TABLE amba.exposures DROP CONSTRAINT exposures_experiment_id_user_id_fkey;
         ALTER TABLE amba.assignments RENAME TO assignments_old;
         ALTER INDEX amba.assignments_pkey RENAME TO assignments_old_pkey;
         CREATE TABLE amba.assignments (LIKE amba.assignments_old INCLUDING ALL) PARTITION BY HASH (experiment_id);
         CREATE TABLE amba.assignments_p0 PARTITION OF amba.assignments FOR VALUES WITH (MODULUS 1, REMAINDER 0);
         COMMIT;",
    )
    .must();
    let variant = assign(&mut c, "e", "u1").must();
    assert_eq!(assign(&mut c, "e", "u1").must(), variant, "sticky");
    assert_eq!(assignment_rows(&mut c, "e", "u1"), 1);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM amba.assignments_p0 WHERE user_id = 'u1'"
        ),
        1,
        "stored in the partition"
    );
    assert_eq!(expose(&mut c, "e", "u1").must(), variant);
    assert_eq!(peek(&mut c, "e", "u1").must(), Some(variant));
    track(&mut c, "u1", "done").must();
    fx.healthy(&mut c, "amba_assign on a partitioned amba.assignments");
}

/// Item 1: a partitioned amba.events (0.2.0 handles it): events land in the partitions,
/// each once under its own identity value, from a warm and from a fresh backend.
#[test]
fn track_appends_to_a_partitioned_events_table() {
    let mut fx = Fixture::new("mt_p_events");
    let mut admin = fx.conn();
    alias(&mut admin, "anon1", "member1");
    let mut warm = fx.conn();
    track(&mut warm, "w", "before").must();
    assign(&mut warm, "e", "w").must();
    partition_events(&mut admin, 2);
    fx.healthy(&mut admin, "partitioning amba.events");

    for i in 0..10 {
        track_with(
            &mut warm,
            &format!("p{i}"),
            "after",
            &format!("{{\"i\": {i}}}"),
        )
        .must();
    }
    track(&mut warm, "anon1", "after").must();
    let mut fresh = fx.conn();
    track(&mut fresh, "fresh", "after").must();
    // The other calls still work.
    let v = assign(&mut fresh, "e", "w").must();
    assert_eq!(expose(&mut warm, "e", "w").must(), v);

    assert_eq!(count(&mut admin, "SELECT count(*) FROM amba.events"), 13);
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(DISTINCT event_id) FROM amba.events"
        ),
        13
    );
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM ONLY amba.events_p0")
            + count(&mut admin, "SELECT count(*) FROM ONLY amba.events_p1"),
        13
    );
    assert_eq!(
        event_rows(&mut admin, "member1", "after"),
        1,
        "the alias's user"
    );
    assert_eq!(event_rows(&mut admin, "anon1", "after"), 0);
    for i in 0..10 {
        let props: String = admin
            .query_one(
                "SELECT properties::text FROM amba.events WHERE user_id = $1",
                &[&format!("p{i}")],
            )
            .must()
            .get(0);
        assert_eq!(props, format!("{{\"i\": {i}}}"));
    }
    fx.healthy(&mut warm, "tracking into a partitioned amba.events");
}

/// Invalidation (item 1): a backend warm BEFORE `tables` become partitioned, one after the
/// other, by another session behaves correctly at its next calls (0.2.0: SIGSEGV).
fn warm_backend_then_partitioned(tables: &[&str]) {
    let mut fx = Fixture::new("mt_p_warm");
    let mut admin = fx.conn();
    alias(&mut admin, "anon1", "member1");
    let mut warm = fx.conn();
    let v1 = assign(&mut warm, "e", "w1").must();
    assert_eq!(expose(&mut warm, "e", "w1").must(), v1);
    assert_eq!(
        peek(&mut warm, "e", "w1").must().as_deref(),
        Some(v1.as_str())
    );
    track(&mut warm, "w1", "warm").must();
    let v_member = assign(&mut warm, "e", "anon1").must();

    for (step, table) in tables.iter().enumerate() {
        match *table {
            "assignments" => partition_assignments(&mut admin, "experiment_id", 1),
            "exposures" => partition_exposures(&mut admin, 2),
            _ => partition_aliases(&mut admin, 2),
        }
        let what = format!("the warm backend after amba.{table} became partitioned");
        assert_eq!(assign(&mut warm, "e", "w1").must(), v1, "{what}: sticky");
        assert_eq!(
            assign(&mut warm, "e", "anon1").must(),
            v_member,
            "{what}: alias"
        );
        let user = format!("n{step}");
        let v = assign(&mut warm, "e", &user).must();
        assert_eq!(assign(&mut warm, "e", &user).must(), v, "{what}");
        assert_eq!(assignment_rows(&mut admin, "e", &user), 1, "{what}");
        assert_eq!(expose(&mut warm, "e", &user).must(), v, "{what}");
        assert_eq!(expose(&mut warm, "e", "w1").must(), v1, "{what}");
        assert_eq!(exposure_rows(&mut admin, "e", &user), 1, "{what}");
        assert_eq!(
            peek(&mut warm, "e", &user).must(),
            Some(v.clone()),
            "{what}"
        );
        assert_eq!(
            peek(&mut warm, "e", "anon1").must(),
            Some(v_member.clone()),
            "{what}"
        );
        track(&mut warm, &user, "after").must();
        track(&mut warm, "anon1", &format!("after {table}")).must();
        assert_eq!(event_rows(&mut admin, &user, "after"), 1, "{what}");
        assert_eq!(
            event_rows(&mut admin, "member1", &format!("after {table}")),
            1,
            "{what}"
        );
        fx.healthy(&mut warm, &what);
    }
    assert_eq!(assignment_rows(&mut admin, "e", "w1"), 1);
    assert_eq!(assignment_rows(&mut admin, "e", "member1"), 1);
}

#[test]
fn a_backend_warm_before_amba_assignments_is_partitioned_behaves_correctly() {
    warm_backend_then_partitioned(&["assignments"]);
}

#[test]
fn a_backend_warm_before_amba_exposures_is_partitioned_behaves_correctly() {
    warm_backend_then_partitioned(&["exposures"]);
}

#[test]
fn a_backend_warm_before_amba_aliases_is_partitioned_behaves_correctly() {
    warm_backend_then_partitioned(&["aliases"]);
}

#[test]
fn a_backend_warm_before_all_three_tables_are_partitioned_behaves_correctly() {
    warm_backend_then_partitioned(&["assignments", "exposures", "aliases"]);
}

// ---------------------------------------------------------------------------------------
// 2. Inheritance child (0.2.0: a second row and another variant)
// ---------------------------------------------------------------------------------------

/// Item 2: the user's row moved into an inheritance child of amba.assignments is still
/// their assignment — a SELECT on amba.assignments sees it — so amba_assign returns its
/// variant after a re-weighting and never stores a second row, in the warm backend and in
/// a fresh one.
#[test]
fn sticky_assignment_is_kept_when_the_row_moves_to_an_inheritance_child() {
    let mut fx = Fixture::new("mt_inherit");
    let mut c = fx.conn();
    let user = user_with_variant(&mut c, "e", "b");
    assert_eq!(assign(&mut c, "e", &user).unwrap(), "b");
    c.batch_execute(&format!(
        "CREATE TABLE amba.assignments_archive () INHERITS (amba.assignments);
         WITH m AS (DELETE FROM ONLY amba.assignments WHERE user_id = '{user}' RETURNING *)
           INSERT INTO amba.assignments_archive SELECT * FROM m;
         SELECT amba_update_experiment('e', variants => '[{{\"key\":\"a\",\"weight\":1}},{{\"key\":\"b\",\"weight\":0}}]');"
    ))
    .unwrap();
    fx.healthy(&mut c, "moving the row into an inheritance child");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM ONLY amba.assignments_archive"),
        1
    );

    // The backend that made the change (warm on 'e').
    assert_eq!(
        assign(&mut c, "e", &user).unwrap(),
        "b",
        "the stored variant (the row is in the child)"
    );
    assert_eq!(assignment_rows(&mut c, "e", &user), 1, "no second row");
    assert_eq!(peek(&mut c, "e", &user).unwrap().as_deref(), Some("b"));
    // A fresh backend.
    let mut fresh = fx.conn();
    assert_eq!(assign(&mut fresh, "e", &user).unwrap(), "b");
    assert_eq!(peek(&mut fresh, "e", &user).unwrap().as_deref(), Some("b"));
    assert_eq!(assignment_rows(&mut fresh, "e", &user), 1, "no second row");
    // A new user gets 'a' now (b has weight 0), once.
    assert_eq!(assign(&mut fresh, "e", "newcomer").unwrap(), "a");
    assert_eq!(assign(&mut c, "e", "newcomer").unwrap(), "a");
    assert_eq!(assignment_rows(&mut fresh, "e", "newcomer"), 1);
    fx.healthy(&mut fresh, "assigning with an inheritance child");
}

// ---------------------------------------------------------------------------------------
// 3. VACUUM FULL / CLUSTER of amba.experiments (0.2.0: XX001, or a stale definition)
// ---------------------------------------------------------------------------------------

/// Item 3: backend A caches an experiment stored in a late block; B deletes the others and
/// rewrites the table; A's next call must work (0.2.0: "could not read block N", XX001).
fn warm_backend_survives_a_rewrite_of_experiments(rewrite: &str) {
    let mut fx = Fixture::new("mt_rewrite");
    let mut b = fx.conn();
    b.batch_execute(&format!(
        "SELECT count(amba_create_experiment('x' || i, '{AB}')) FROM generate_series(1, 300) i"
    ))
    .unwrap();
    let block: i32 = b
        .query_one(
            "SELECT (ctid::text::point)[0]::int FROM amba.experiments WHERE key = 'x300'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(block > 0, "x300 must be stored past the first block");
    let mut a = fx.conn();
    let v1 = assign(&mut a, "x300", "u1").unwrap(); // caches the row's tid
    b.batch_execute(
        "SELECT count(amba_delete_experiment('x' || i)) FROM generate_series(1, 299) i",
    )
    .unwrap();
    b.batch_execute(rewrite).unwrap();
    let blocks = count(
        &mut b,
        "SELECT pg_relation_size('amba.experiments') / current_setting('block_size')::bigint",
    );
    assert!(
        blocks <= block as i64,
        "the rewrite shrank the table ({blocks} blocks, x300 was in block {block})"
    );
    fx.healthy(&mut b, rewrite);

    let v2 = assign(&mut a, "x300", "u2")
        .unwrap_or_else(|e| panic!("the warm backend after `{rewrite}`: {e:?}"));
    assert!(v2 == "a" || v2 == "b");
    assert_eq!(assign(&mut a, "x300", "u1").unwrap(), v1, "sticky");
    assert_eq!(assign(&mut a, "x300", "u2").unwrap(), v2, "sticky");
    assert_eq!(expose(&mut a, "x300", "u2").unwrap(), v2);
    assert_eq!(peek(&mut a, "x300", "u1").unwrap(), Some(v1));
    assign(&mut a, "e", "u1").unwrap();
    assert_eq!(assignment_rows(&mut b, "x300", "u2"), 1);
    fx.healthy(
        &mut a,
        &format!("the warm backend's calls after `{rewrite}`"),
    );
}

#[test]
fn a_warm_backend_keeps_working_after_vacuum_full_of_experiments() {
    warm_backend_survives_a_rewrite_of_experiments("VACUUM FULL amba.experiments");
}

#[test]
fn a_warm_backend_keeps_working_after_cluster_of_experiments() {
    warm_backend_survives_a_rewrite_of_experiments(
        "CLUSTER amba.experiments USING experiments_pkey",
    );
}

/// Item 3: after the rewrite another experiment's row (same xmin: created in the same
/// transaction) lands on the tid backend A cached for 'g-paused', which B has paused
/// meanwhile. A must see the pause: EXPERIMENT_INACTIVE (55000) for a new user (0.2.0:
/// the stale, active definition, and the user is assigned).
fn warm_backend_sees_a_pause_when_another_row_lands_on_its_cached_tid(rewrite: &str) {
    let mut fx = Fixture::new("mt_stale");
    let mut b = fx.conn();
    // 'e' (the fixture's) is the first row; then 'g-paused', then 'f-other', in one
    // transaction: both have the same xmin. In physical order (VACUUM FULL) and in key order
    // (CLUSTER on the key) alike, 'f-other' moves to the tid 'g-paused' had.
    b.batch_execute(&format!(
        "BEGIN;
         SELECT amba_create_experiment('g-paused', '{AB}');
         SELECT amba_create_experiment('f-other', '{AB}');
         COMMIT;"
    ))
    .unwrap();
    let version = |c: &mut Client, key: &str| -> (String, String) {
        let row = c
            .query_one(
                "SELECT ctid::text, xmin::text FROM amba.experiments WHERE key = $1",
                &[&key],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (p_tid, p_xmin) = version(&mut b, "g-paused");
    let (_, q_xmin) = version(&mut b, "f-other");
    assert_eq!(p_xmin, q_xmin, "precondition: one transaction, one xmin");

    let mut a = fx.conn();
    let warm = assign(&mut a, "g-paused", "warm1").unwrap(); // caches (tid, xmin)
    b.batch_execute("SELECT amba_update_experiment('g-paused', status => 'paused')")
        .unwrap();
    b.batch_execute(rewrite).unwrap();
    assert_eq!(
        version(&mut b, "f-other"),
        (p_tid.clone(), p_xmin.clone()),
        "precondition: after `{rewrite}` 'f-other' is on the tid and xmin A cached for 'g-paused'"
    );
    fx.healthy(&mut b, rewrite);

    let message = expect_state(
        assign(&mut a, "g-paused", "new1"),
        "55000",
        &format!("a new user of the paused experiment, in the warm backend after `{rewrite}`"),
    );
    assert!(message.starts_with("EXPERIMENT_INACTIVE"), "{message}");
    assert_eq!(
        assignment_rows(&mut b, "g-paused", "new1"),
        0,
        "nobody new is assigned"
    );
    assert_eq!(
        peek(&mut a, "g-paused", "new1").unwrap(),
        None,
        "paused: nothing to peek"
    );
    assert_eq!(
        assign(&mut a, "g-paused", "warm1").unwrap(),
        warm,
        "a paused experiment still answers its assigned users"
    );
    let other = assign(&mut a, "f-other", "new1").unwrap();
    assert!(other == "a" || other == "b");
    // A fresh backend agrees.
    let mut fresh = fx.conn();
    expect_state(
        assign(&mut fresh, "g-paused", "new2"),
        "55000",
        "a fresh backend",
    );
    fx.healthy(
        &mut a,
        &format!("the warm backend's calls after `{rewrite}`"),
    );
}

#[test]
fn a_warm_backend_sees_a_pause_after_vacuum_full_moves_another_row_onto_its_cached_tid() {
    warm_backend_sees_a_pause_when_another_row_lands_on_its_cached_tid(
        "VACUUM FULL amba.experiments",
    );
}

#[test]
fn a_warm_backend_sees_a_pause_after_cluster_moves_another_row_onto_its_cached_tid() {
    warm_backend_sees_a_pause_when_another_row_lands_on_its_cached_tid(
        "CLUSTER amba.experiments USING experiments_key_key",
    );
}

// ---------------------------------------------------------------------------------------
// 4. Policies created by another session (0.2.0: ignored on a cache hit)
// ---------------------------------------------------------------------------------------

/// Item 4: a backend warm as a member of amba_admin must get EXPERIMENT_NOT_FOUND (P0002)
/// on assign, expose and peek once another session hides the experiment from amba_admin
/// with a restrictive policy, as a fresh backend does.
#[test]
fn a_restrictive_policy_hides_an_experiment_from_a_warm_amba_admin_backend() {
    let mut fx = Fixture::new("mt_policy");
    let member = fx.login_role("m", true);
    let mut admin = fx.conn();
    admin
        .execute(
            "SELECT amba_create_experiment('f', $1::text::jsonb)",
            &[&AB],
        )
        .unwrap();
    let mut warm = fx.conn_as(&member);
    let v = assign(&mut warm, "e", "w1").unwrap();
    assert_eq!(expose(&mut warm, "e", "w1").unwrap(), v);
    assert_eq!(peek(&mut warm, "e", "w1").unwrap(), Some(v.clone()));
    assign(&mut warm, "f", "w1").unwrap();
    track(&mut warm, "w1", "warm").unwrap();

    admin
        .batch_execute(
            "CREATE POLICY hide_e ON amba.experiments AS RESTRICTIVE FOR SELECT TO amba_admin USING (key <> 'e')",
        )
        .unwrap();
    let mut fresh = fx.conn_as(&member);
    for (who, c) in [
        ("a fresh backend", &mut fresh),
        ("the warm backend", &mut warm),
    ] {
        for (call, result) in [
            ("assign (returning user)", assign(c, "e", "w1").map(|_| ())),
            ("assign (new user)", assign(c, "e", "w2").map(|_| ())),
            ("expose", expose(c, "e", "w1").map(|_| ())),
            ("peek", peek(c, "e", "w1").map(|_| ())),
        ] {
            let message = expect_state(
                result,
                "P0002",
                &format!("{who}: {call} of a hidden experiment"),
            );
            assert!(
                message.starts_with("EXPERIMENT_NOT_FOUND"),
                "{who}: {call}: {message}"
            );
        }
        assign(c, "f", "w1").unwrap();
        track(c, "w1", "hidden").unwrap();
    }
    assert_eq!(assignment_rows(&mut admin, "e", "w2"), 0);
    admin
        .batch_execute("DROP POLICY hide_e ON amba.experiments")
        .unwrap();
    assert_eq!(assign(&mut warm, "e", "w1").unwrap(), v, "visible again");
    fx.healthy(&mut warm, "a restrictive policy on amba.experiments");
}

// ---------------------------------------------------------------------------------------
// 5. Audit hooks see the writes (0.2.0: inserted without the executor)
// ---------------------------------------------------------------------------------------

/// A connection whose notices are collected.
fn with_notices(fx: &Fixture) -> (Client, Arc<Mutex<Vec<String>>>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    let mut config = config(&fx.name(), None);
    config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    (config.connect(NoTls).unwrap(), notices)
}

/// auto_explain, loaded into the session, logs every plan the executor runs (nested ones
/// too) as a NOTICE to the client: an executor hook, as pgaudit's are.
const AUTO_EXPLAIN: &str = "LOAD 'auto_explain';
    SET auto_explain.log_min_duration = 0;
    SET auto_explain.log_nested_statements = on;
    SET auto_explain.log_level = notice;
    SET client_min_messages = notice;";

fn saw(notices: &Arc<Mutex<Vec<String>>>, needle: &str) -> bool {
    notices.lock().unwrap().iter().any(|n| n.contains(needle))
}

fn plans(notices: &Arc<Mutex<Vec<String>>>) -> String {
    notices.lock().unwrap().join("\n---\n")
}

/// Item 5: with an executor hook loaded (auto_explain here, pgaudit in production) a first
/// assignment, a first exposure and an event go through the executor, where the hook sees
/// them, as a plain INSERT does (0.2.0: the assignment and the event are not seen).
#[test]
fn executor_hooks_see_first_assignments_exposures_and_events() {
    let mut fx = Fixture::new("mt_hooks");
    let (mut c, notices) = with_notices(&fx);
    c.batch_execute(AUTO_EXPLAIN).unwrap();
    // The hook sees a plain INSERT (the reference).
    c.batch_execute(
        "INSERT INTO amba.events (user_id, event, occurred_at) VALUES ('plain', 'p', now())",
    )
    .unwrap();
    assert!(
        saw(&notices, "Insert on events"),
        "auto_explain works: {}",
        plans(&notices)
    );

    notices.lock().unwrap().clear();
    let v = assign(&mut c, "e", "hooked").unwrap();
    assert!(
        saw(&notices, "Insert on assignments"),
        "the executor hook never saw the first assignment; plans it saw:\n{}",
        plans(&notices)
    );
    notices.lock().unwrap().clear();
    assert_eq!(expose(&mut c, "e", "hooked").unwrap(), v);
    assert!(
        saw(&notices, "Insert on exposures"),
        "the executor hook never saw the first exposure; plans it saw:\n{}",
        plans(&notices)
    );
    notices.lock().unwrap().clear();
    track(&mut c, "hooked", "seen").unwrap();
    assert!(
        saw(&notices, "Insert on events"),
        "the executor hook never saw the event; plans it saw:\n{}",
        plans(&notices)
    );
    assert_eq!(assignment_rows(&mut c, "e", "hooked"), 1);
    assert_eq!(event_rows(&mut c, "hooked", "seen"), 1);
    fx.healthy(&mut c, "calls with an executor hook");
}

/// Item 5: a hook loaded into a backend that is already warm sees its next writes too.
#[test]
fn executor_hooks_loaded_into_a_warm_backend_see_its_next_writes() {
    let mut fx = Fixture::new("mt_hooks_warm");
    let (mut c, notices) = with_notices(&fx);
    assign(&mut c, "e", "before").unwrap();
    track(&mut c, "before", "warm").unwrap();
    c.batch_execute(AUTO_EXPLAIN).unwrap();
    notices.lock().unwrap().clear();
    assign(&mut c, "e", "after").unwrap();
    assert!(
        saw(&notices, "Insert on assignments"),
        "the hook loaded after warm-up never saw the first assignment:\n{}",
        plans(&notices)
    );
    notices.lock().unwrap().clear();
    track(&mut c, "after", "seen").unwrap();
    assert!(
        saw(&notices, "Insert on events"),
        "the hook loaded after warm-up never saw the event:\n{}",
        plans(&notices)
    );
    fx.healthy(&mut c, "calls after loading an executor hook");
}

/// Item 5: `amba.direct_access` (boolean, default on) exists; off routes everything through
/// the executor — reads as well as writes — and changes no answer (0.2.0: no such setting).
#[test]
fn direct_access_off_routes_everything_through_the_executor_and_answers_the_same() {
    let mut fx = Fixture::new("mt_direct_off");
    let mut on = fx.conn();
    assign(&mut on, "e", "load").unwrap(); // the library is loaded: its settings are defined
    let setting = on
        .query_opt(
            "SELECT vartype, boot_val, setting FROM pg_settings WHERE name = 'amba.direct_access'",
            &[],
        )
        .unwrap();
    let setting = setting.expect("the setting amba.direct_access is not defined (pg_settings)");
    assert_eq!(setting.get::<_, String>(0), "bool");
    assert_eq!(setting.get::<_, String>(1), "on", "default on");
    assert_eq!(setting.get::<_, String>(2), "on");

    let (mut off, notices) = with_notices(&fx);
    off.batch_execute("SET amba.direct_access = off").unwrap();
    let shown: String = off
        .query_one("SHOW amba.direct_access", &[])
        .unwrap()
        .get(0);
    assert_eq!(shown, "off");
    alias(&mut on, "anon1", "member1");
    // Same answers as with direct access on: the variant peek predicts, sticky, the alias.
    for i in 0..20 {
        let user = format!("d{i}");
        let predicted = peek(&mut on, "e", &user).unwrap();
        let v = assign(&mut off, "e", &user).unwrap();
        assert_eq!(Some(v.clone()), predicted, "{user}");
        assert_eq!(assign(&mut on, "e", &user).unwrap(), v, "{user}: sticky");
        assert_eq!(assign(&mut off, "e", &user).unwrap(), v, "{user}: sticky");
        assert_eq!(expose(&mut off, "e", &user).unwrap(), v);
        assert_eq!(peek(&mut off, "e", &user).unwrap(), Some(v.clone()));
        assert_eq!(assignment_rows(&mut on, "e", &user), 1);
    }
    let v_member = assign(&mut off, "e", "anon1").unwrap();
    assert_eq!(assign(&mut on, "e", "member1").unwrap(), v_member, "alias");
    // Writes counted for the tables within the transaction.
    let inserted = |c: &mut Client, table: &str| -> i64 {
        c.query_one(
            "SELECT n_tup_ins FROM pg_stat_xact_user_tables WHERE relid = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .get(0)
    };
    off.batch_execute("BEGIN").unwrap();
    // (The view also counts what earlier transactions of the backend have not yet
    // reported: the difference within this transaction is what it inserted.)
    let assignments_before = inserted(&mut off, "amba.assignments");
    let events_before = inserted(&mut off, "amba.events");
    assign(&mut off, "e", "counted").unwrap();
    track_with(&mut off, "anon1", "off", r#"{"k": 1}"#).unwrap();
    assert_eq!(
        inserted(&mut off, "amba.assignments") - assignments_before,
        1
    );
    assert_eq!(inserted(&mut off, "amba.events") - events_before, 1);
    off.batch_execute("COMMIT").unwrap();
    assert_eq!(event_rows(&mut on, "member1", "off"), 1);
    // Through the executor: with an executor hook the plans are seen, reads included.
    off.batch_execute(AUTO_EXPLAIN).unwrap();
    notices.lock().unwrap().clear();
    assign(&mut off, "e", "d0").unwrap();
    assert!(
        saw(&notices, " on assignments"),
        "direct_access = off: reading a stored assignment goes through the executor:\n{}",
        plans(&notices)
    );
    notices.lock().unwrap().clear();
    assign(&mut off, "e", "explained").unwrap();
    assert!(
        saw(&notices, "Insert on assignments"),
        "{}",
        plans(&notices)
    );
    notices.lock().unwrap().clear();
    track(&mut off, "explained", "e").unwrap();
    assert!(saw(&notices, "Insert on events"), "{}", plans(&notices));
    fx.healthy(&mut off, "calls with amba.direct_access = off");
}

/// A PostgreSQL cluster of the test's own, with `shared_preload_libraries` of its own (the
/// shared test cluster must not preload an auditing module: every call there would take
/// the SQL path, and the direct path would go untested). Stopped and removed on drop.
struct PrivateCluster {
    dir: String,
    port: u16,
}

impl PrivateCluster {
    const BIN: &'static str = "/usr/lib/postgresql/15/bin";

    fn as_postgres(args: &[&str]) {
        let status = std::process::Command::new("sudo")
            .arg("-u")
            .arg("postgres")
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("sudo");
        assert!(status.success(), "{args:?} failed");
    }

    fn start(preload: &str) -> PrivateCluster {
        let port = 28_870 + (std::process::id() % 100) as u16;
        let dir = format!("/var/tmp/amba-private-{}-{port}", std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
        let initdb = format!("{}/initdb", Self::BIN);
        Self::as_postgres(&[
            &initdb,
            "-D",
            &dir,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]);
        let conf = format!(
            "port = {port}\nlisten_addresses = 'localhost'\nunix_socket_directories = '/tmp'\n\
             shared_preload_libraries = '{preload}'\nshared_buffers = 32MB\n"
        );
        let mut existing = std::fs::read_to_string(format!("{dir}/postgresql.conf")).unwrap();
        existing.push_str(&conf);
        std::fs::write(format!("{dir}/postgresql.conf"), existing).unwrap();
        let pg_ctl = format!("{}/pg_ctl", Self::BIN);
        let log = format!("{dir}/server.log");
        Self::as_postgres(&[&pg_ctl, "-D", &dir, "-l", &log, "-w", "-t", "60", "start"]);
        PrivateCluster { dir, port }
    }

    fn client(&self) -> Client {
        Config::new()
            .host("localhost")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect(NoTls)
            .expect("connecting to the private cluster")
    }

    fn log(&self) -> String {
        format!("{}/server.log", self.dir)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let pg_ctl = format!("{}/pg_ctl", Self::BIN);
        let _ = std::process::Command::new("sudo")
            .args([
                "-u",
                "postgres",
                &pg_ctl,
                "-D",
                &self.dir,
                "-m",
                "immediate",
                "stop",
            ])
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Item 5, the real thing: with pgaudit (`pgaudit.log = 'write'`) a first assignment and an
/// event each produce an AUDIT line in the server log, as a plain INSERT does (0.2.0: the
/// plain INSERT is audited, the first assignment and the event are not). pgaudit must be
/// preloaded, so this runs on a cluster of its own.
#[test]
fn pgaudit_logs_first_assignments_and_events_as_it_logs_an_insert() {
    let cluster = PrivateCluster::start("pgaudit");
    let mut c = cluster.client();
    c.batch_execute(
        "CREATE EXTENSION amba;
         CREATE EXTENSION pgaudit;
         SET pgaudit.log = 'write';
         SET pgaudit.log_relation = on;
         SET pgaudit.log_parameter = on;",
    )
    .expect("pgaudit (Debian package postgresql-15-pgaudit, installed by scripts/setup.sh)");
    c.execute(
        "SELECT amba_create_experiment('e', $1::text::jsonb)",
        &[&AB],
    )
    .unwrap();
    let log = cluster.log();
    let marker = format!("{}", std::process::id());
    let plain = format!("plain-{marker}");
    let user = format!("audited-{marker}");
    c.execute(
        "INSERT INTO amba.events (user_id, event, occurred_at) VALUES ($1, 'plain', now())",
        &[&plain],
    )
    .unwrap();
    let v = assign(&mut c, "e", &user).unwrap();
    assert_eq!(assign(&mut c, "e", &user).unwrap(), v, "sticky");
    track(&mut c, &user, "audited").unwrap();
    let wanted = [
        (
            "amba.events",
            plain.as_str(),
            "the plain INSERT (the reference)",
        ),
        ("amba.assignments", user.as_str(), "the first assignment"),
        ("amba.events", user.as_str(), "the event"),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let bytes = std::fs::read(&log).unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let entries: Vec<&str> = text.split("AUDIT: ").skip(1).collect();
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|(table, marker, _)| {
                !entries
                    .iter()
                    .any(|e| e.contains("WRITE,INSERT") && e.contains(table) && e.contains(marker))
            })
            .map(|w| w.2)
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no AUDIT line for {missing:?}; the audit lines logged:\n{}",
            entries.join("\nAUDIT: ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------
// 6. A lost first-assignment race (0.2.0: a speculative tuple inserted and aborted)
// ---------------------------------------------------------------------------------------

/// Item 6: B's first assignment of a user whose first assignment A has not committed yet
/// waits for A (forced: B is seen waiting on a lock before A commits), returns A's variant,
/// and leaves no tuple behind: as ExecInsert, it checks for the conflict (and waits) before
/// inserting, so no speculative tuple is inserted and killed (0.2.0: one dead tuple, and
/// its WAL, per lost race).
#[test]
fn a_lost_first_assignment_race_waits_before_inserting_and_leaves_no_dead_tuple() {
    let mut fx = Fixture::new("mt_race");
    let mut admin = fx.conn();
    admin.batch_execute("CREATE EXTENSION pageinspect").unwrap();
    let mut a = fx.conn();
    a.batch_execute("BEGIN").unwrap();
    let va = assign(&mut a, "e", "racer").unwrap();
    let mut b = fx.conn();
    let b_pid = pid(&mut b);
    let done = Arc::new(AtomicBool::new(false));
    let done_b = done.clone();
    let racer = std::thread::spawn(move || {
        let result = assign(&mut b, "e", "racer");
        done_b.store(true, Ordering::SeqCst);
        (result, b)
    });
    let (kind, event) = wait_until_lock_wait(&mut admin, b_pid, || done.load(Ordering::SeqCst));
    eprintln!("B (pid {b_pid}) waits on {kind}/{event} while A's first assignment is uncommitted");
    assert_eq!(kind, "Lock");
    a.batch_execute("COMMIT").unwrap();
    let (result, mut b) = racer.join().unwrap();
    assert_eq!(result.unwrap(), va, "B returns the variant A stored");
    assert_eq!(assignment_rows(&mut admin, "e", "racer"), 1);

    // Every line pointer in use in amba.assignments is a live row.
    let items: Vec<String> = admin
        .query(
            "SELECT format('block %s lp %s flags %s xmin %s xmax %s infomask %s', b, lp, lp_flags, t_xmin, t_xmax, t_infomask) \
               FROM generate_series(0, (pg_relation_size('amba.assignments') / current_setting('block_size')::bigint)::int - 1) b, \
                    heap_page_items(get_raw_page('amba.assignments', b)) \
              WHERE lp_flags <> 0",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let live = count(&mut admin, "SELECT count(*) FROM amba.assignments");
    assert_eq!(
        items.len() as i64,
        live,
        "B's lost race left tuples behind (a speculative insertion killed?):\n{}",
        items.join("\n")
    );
    fx.healthy(&mut b, "a lost first-assignment race");
}

// ---------------------------------------------------------------------------------------
// DBA actions that must stay safe
// ---------------------------------------------------------------------------------------

/// User triggers (BEFORE and AFTER, row and statement) and foreign keys added to amba's
/// tables by another session apply at the warm backend's next calls, as to an INSERT.
#[test]
fn user_triggers_and_foreign_keys_on_amba_tables_apply_to_a_warm_backend() {
    let mut fx = Fixture::new("mt_triggers");
    let mut app = fx.conn();
    assign(&mut app, "e", "warm").unwrap();
    track(&mut app, "warm", "warm").unwrap();
    let mut admin = fx.conn();
    admin
        .batch_execute(
            "CREATE TABLE public.audit_log (tbl text, user_id text, level text);
             CREATE FUNCTION public.log_row() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN INSERT INTO public.audit_log VALUES (TG_TABLE_NAME, NEW.user_id, 'row'); RETURN NEW; END$$;
             CREATE FUNCTION public.log_statement() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN INSERT INTO public.audit_log VALUES (TG_TABLE_NAME, NULL, 'statement'); RETURN NULL; END$$;
             CREATE FUNCTION public.backdate() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN NEW.assigned_at := '2000-01-01 00:00:00+00'; RETURN NEW; END$$;
             CREATE TRIGGER log_assignment AFTER INSERT ON amba.assignments FOR EACH ROW EXECUTE FUNCTION public.log_row();
             CREATE TRIGGER log_exposure AFTER INSERT ON amba.exposures FOR EACH ROW EXECUTE FUNCTION public.log_row();
             CREATE TRIGGER log_event AFTER INSERT ON amba.events FOR EACH ROW EXECUTE FUNCTION public.log_row();
             CREATE TRIGGER log_events_statement AFTER INSERT ON amba.events FOR EACH STATEMENT EXECUTE FUNCTION public.log_statement();
             CREATE TRIGGER backdate BEFORE INSERT ON amba.assignments FOR EACH ROW EXECUTE FUNCTION public.backdate();
             CREATE TABLE public.known_users (user_id text COLLATE \"C\" PRIMARY KEY);
             INSERT INTO public.known_users VALUES ('warm'), ('t1');
             ALTER TABLE amba.events ADD CONSTRAINT events_known_user FOREIGN KEY (user_id) REFERENCES public.known_users;
             ALTER TABLE amba.assignments ADD CONSTRAINT assignments_experiment FOREIGN KEY (experiment_id) REFERENCES amba.experiments (id);
             CREATE TABLE public.notes (experiment_id bigint, user_id text COLLATE \"C\", note text,
               FOREIGN KEY (experiment_id, user_id) REFERENCES amba.assignments ON DELETE CASCADE);",
        )
        .unwrap();
    fx.healthy(&mut admin, "adding triggers and foreign keys");

    let v = assign(&mut app, "e", "t1").unwrap();
    assert_eq!(assign(&mut app, "e", "t1").unwrap(), v);
    assert_eq!(expose(&mut app, "e", "t1").unwrap(), v);
    assert_eq!(expose(&mut app, "e", "t1").unwrap(), v);
    track(&mut app, "t1", "ok").unwrap();
    let (code, _) = state(track(&mut app, "stranger", "no"));
    assert_eq!(
        code, "23503",
        "the events' foreign key to public.known_users"
    );
    let log: Vec<(String, Option<String>, String)> = admin
        .query(
            "SELECT tbl, user_id, level FROM public.audit_log ORDER BY tbl, level",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let t1 = Some("t1".to_string());
    assert_eq!(
        log,
        [
            ("assignments".to_string(), t1.clone(), "row".to_string()),
            ("events".to_string(), t1.clone(), "row".to_string()),
            ("events".to_string(), None, "statement".to_string()),
            ("exposures".to_string(), t1.clone(), "row".to_string()),
        ],
        "each trigger fired once, for the first assignment, exposure and the event"
    );
    let at: String = admin
        .query_one(
            "SELECT assigned_at::text FROM amba.assignments WHERE user_id = 't1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        at, "2000-01-01 00:00:00+00",
        "the BEFORE trigger's row is stored"
    );
    // The user table referencing amba.assignments.
    admin
        .execute(
            "INSERT INTO public.notes SELECT experiment_id, user_id, 'n' FROM amba.assignments WHERE user_id = 't1'",
            &[],
        )
        .unwrap();
    let mut fresh = fx.conn();
    assert_eq!(assign(&mut fresh, "e", "t1").unwrap(), v);
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM amba.events WHERE user_id = 'stranger'"
        ),
        0
    );
    fx.healthy(&mut app, "calls with user triggers and foreign keys");
}

/// CHECK (also NOT VALID) and NOT NULL constraints added by another session while the
/// backend is warm are enforced at its next call, with the INSERT's SQLSTATE.
#[test]
fn check_and_not_null_constraints_added_while_backends_are_warm_are_enforced() {
    let mut fx = Fixture::new("mt_checks");
    let mut app = fx.conn();
    assign(&mut app, "e", "c0").unwrap();
    track(&mut app, "c0", "warm").unwrap();
    let mut admin = fx.conn();
    admin
        .batch_execute(
            "ALTER TABLE amba.assignments ADD CONSTRAINT no_blocked CHECK (user_id NOT LIKE 'blocked%');
             ALTER TABLE amba.assignments ADD CONSTRAINT short_ids CHECK (length(user_id) < 20) NOT VALID;
             ALTER TABLE amba.events ADD CONSTRAINT no_bad CHECK (event <> 'bad');",
        )
        .unwrap();
    fx.healthy(&mut admin, "adding CHECK constraints");
    expect_state(
        assign(&mut app, "e", "blocked1"),
        "23514",
        "CHECK on assignments",
    );
    expect_state(
        assign(&mut app, "e", "a-rather-long-user-id"),
        "23514",
        "a NOT VALID CHECK applies to new rows",
    );
    expect_state(track(&mut app, "c0", "bad"), "23514", "CHECK on events");
    let v = assign(&mut app, "e", "c1").unwrap();
    track(&mut app, "c1", "good").unwrap();
    admin
        .batch_execute(
            "UPDATE amba.events SET properties = '{}' WHERE properties IS NULL;
             ALTER TABLE amba.events ALTER COLUMN properties SET NOT NULL;",
        )
        .unwrap();
    fx.healthy(&mut admin, "adding NOT NULL");
    expect_state(
        track(&mut app, "c1", "no properties"),
        "23502",
        "NOT NULL on events",
    );
    track_with(&mut app, "c1", "properties", "{}").unwrap();
    let mut fresh = fx.conn();
    expect_state(
        assign(&mut fresh, "e", "blocked2"),
        "23514",
        "a fresh backend",
    );
    expect_state(track(&mut fresh, "c1", "null"), "23502", "a fresh backend");
    admin
        .batch_execute(
            "ALTER TABLE amba.assignments DROP CONSTRAINT no_blocked;
             ALTER TABLE amba.events ALTER COLUMN properties DROP NOT NULL;",
        )
        .unwrap();
    assign(&mut app, "e", "blocked3").unwrap();
    track(&mut app, "c1", "null again").unwrap();
    assert_eq!(assign(&mut app, "e", "c1").unwrap(), v);
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM amba.assignments WHERE user_id IN ('blocked1', 'blocked2', 'a-rather-long-user-id')"),
        0
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM amba.events WHERE event IN ('bad', 'no properties', 'null')"
        ),
        0
    );
    fx.healthy(&mut app, "calls under added constraints");
}

/// Columns added (with defaults, volatile defaults that rewrite the table, generated and
/// identity columns) and dropped by another session: the warm backend's rows get what an
/// INSERT would give them, and its answers stay right.
#[test]
fn added_generated_and_dropped_columns_are_handled_by_a_warm_backend() {
    let mut fx = Fixture::new("mt_columns");
    let mut app = fx.conn();
    let v0 = assign(&mut app, "e", "k0").unwrap();
    track(&mut app, "k0", "warm").unwrap();
    let mut admin = fx.conn();
    admin
        .batch_execute(
            "ALTER TABLE amba.assignments
               ADD COLUMN source text NOT NULL DEFAULT 'amba',
               ADD COLUMN id_len int GENERATED ALWAYS AS (length(user_id)) STORED,
               ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY,
               ADD COLUMN noise float8 DEFAULT random();
             ALTER TABLE amba.events
               ADD COLUMN source text NOT NULL DEFAULT 'app',
               ADD COLUMN ev_len int GENERATED ALWAYS AS (length(event)) STORED;",
        )
        .unwrap();
    fx.healthy(&mut admin, "adding columns");
    let v1 = assign(&mut app, "e", "k1-long").unwrap();
    track(&mut app, "k1-long", "evt").unwrap();
    let row = admin
        .query_one(
            "SELECT variant, source, id_len, seq IS NOT NULL, noise IS NOT NULL FROM amba.assignments WHERE user_id = 'k1-long'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), v1);
    assert_eq!(row.get::<_, String>(1), "amba");
    assert_eq!(row.get::<_, i32>(2), 7);
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));
    let row = admin
        .query_one(
            "SELECT source, ev_len FROM amba.events WHERE user_id = 'k1-long'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app");
    assert_eq!(row.get::<_, i32>(1), 3);

    admin
        .batch_execute(
            "ALTER TABLE amba.assignments DROP COLUMN source, DROP COLUMN id_len;
             ALTER TABLE amba.events DROP COLUMN source;
             ALTER TABLE amba.assignments ADD COLUMN extra int;
             ALTER TABLE amba.assignments DROP COLUMN extra;",
        )
        .unwrap();
    fx.healthy(&mut admin, "dropping columns");
    let v2 = assign(&mut app, "e", "k2").unwrap();
    track(&mut app, "k2", "after drop").unwrap();
    assert_eq!(expose(&mut app, "e", "k2").unwrap(), v2);
    let mut fresh = fx.conn();
    for (user, v) in [("k0", &v0), ("k1-long", &v1), ("k2", &v2)] {
        assert_eq!(&assign(&mut app, "e", user).unwrap(), v, "{user}");
        assert_eq!(&assign(&mut fresh, "e", user).unwrap(), v, "{user}");
        assert_eq!(
            peek(&mut app, "e", user).unwrap().as_ref(),
            Some(v),
            "{user}"
        );
        let stored: String = admin
            .query_one(
                "SELECT variant FROM amba.assignments WHERE user_id = $1",
                &[&user],
            )
            .unwrap()
            .get(0);
        assert_eq!(&stored, v, "{user}");
        assert_eq!(assignment_rows(&mut admin, "e", user), 1);
    }
    let row = admin
        .query_one(
            "SELECT event, ev_len, occurred_at IS NOT NULL FROM amba.events WHERE user_id = 'k2'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "after drop");
    assert_eq!(row.get::<_, i32>(1), 10);
    assert!(row.get::<_, bool>(2));
    fx.healthy(&mut app, "calls after columns changed");
}

/// Partial, expression and unique indexes built (and an index rebuilt) CONCURRENTLY while
/// another connection keeps assigning, exposing and tracking hold every row
/// (heapallindexed) and answer as a sequential scan does.
#[test]
fn indexes_built_concurrently_while_another_connection_assigns_and_tracks_hold_every_row() {
    let mut fx = Fixture::new("mt_cic");
    let mut admin = fx.conn();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let db = fx.name();
    let (stop_w, calls_w) = (stop.clone(), calls.clone());
    let worker = std::thread::spawn(move || -> Result<u64, String> {
        let mut w = open(&db, None);
        let mut i = 0u64;
        while !stop_w.load(Ordering::SeqCst) {
            i += 1;
            let user = format!("cw{i}");
            let v = assign(&mut w, "e", &user).map_err(|e| format!("assign {user}: {e}"))?;
            if i % 3 == 0 {
                expose(&mut w, "e", &user).map_err(|e| format!("expose {user}: {e}"))?;
            }
            if i % 5 == 0 {
                let again = assign(&mut w, "e", &user).map_err(|e| e.to_string())?;
                if again != v {
                    return Err(format!("{user}: {v} then {again}"));
                }
            }
            track_with(&mut w, &user, "ev", &format!("{{\"n\": {i}}}"))
                .map_err(|e| format!("track {user}: {e}"))?;
            calls_w.store(i, Ordering::SeqCst);
        }
        Ok(i)
    });
    let wait_for = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while calls.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline && !worker.is_finished(),
                "the worker stopped making calls"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(50);
    let statements = [
        "CREATE INDEX CONCURRENTLY assignments_variant_a ON amba.assignments (user_id) WHERE variant = 'a'",
        "CREATE INDEX CONCURRENTLY assignments_md5 ON amba.assignments (md5(user_id))",
        "CREATE UNIQUE INDEX CONCURRENTLY assignments_user_experiment ON amba.assignments (user_id, experiment_id)",
        "CREATE INDEX CONCURRENTLY exposures_user ON amba.exposures (user_id) WHERE user_id LIKE 'cw%'",
        "CREATE INDEX CONCURRENTLY events_n ON amba.events (((properties->>'n')::int)) WHERE properties ? 'n'",
        "CREATE INDEX CONCURRENTLY events_lower_user ON amba.events (lower(user_id))",
        "CREATE UNIQUE INDEX CONCURRENTLY events_id_user ON amba.events (event_id, user_id)",
        "REINDEX INDEX CONCURRENTLY amba.assignments_pkey",
        "REINDEX TABLE CONCURRENTLY amba.events",
    ];
    for sql in statements {
        let before = calls.load(Ordering::SeqCst);
        admin
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        eprintln!(
            "{sql}: {} calls meanwhile",
            calls.load(Ordering::SeqCst) - before
        );
        wait_for(calls.load(Ordering::SeqCst) + 10);
    }
    stop.store(true, Ordering::SeqCst);
    let made = worker
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the worker failed: {e}"));
    eprintln!("{made} users assigned and tracked by the worker");

    fx.healthy(&mut admin, "indexes built concurrently under load");
    // Answers through the new indexes are a sequential scan's.
    let queries = [
        "SELECT count(*) FROM amba.assignments WHERE variant = 'a' AND user_id >= 'cw'",
        "SELECT count(*) FROM amba.assignments WHERE md5(user_id) IN (SELECT md5('cw' || g) FROM generate_series(1, 40) g)",
        "SELECT count(*) FROM amba.assignments WHERE user_id >= 'cw' AND experiment_id > 0",
        "SELECT count(*) FROM amba.exposures WHERE user_id LIKE 'cw%' AND user_id >= 'cw'",
        "SELECT count(*) FROM amba.events WHERE properties ? 'n' AND (properties->>'n')::int BETWEEN 1 AND 1000000",
        "SELECT count(*) FROM amba.events WHERE lower(user_id) >= 'cw'",
        "SELECT count(*) FROM amba.events WHERE event_id > 0 AND user_id >= 'cw'",
    ];
    for sql in queries {
        admin
            .batch_execute("SET enable_seqscan = on; SET enable_indexscan = off; SET enable_bitmapscan = off; SET enable_indexonlyscan = off")
            .unwrap();
        let by_seqscan = count(&mut admin, sql);
        admin
            .batch_execute("SET enable_seqscan = off; RESET enable_indexscan; RESET enable_bitmapscan; RESET enable_indexonlyscan")
            .unwrap();
        let by_index = count(&mut admin, sql);
        assert_eq!(by_index, by_seqscan, "{sql}");
    }
    admin.batch_execute("RESET enable_seqscan").unwrap();
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM amba.events WHERE user_id LIKE 'cw%'"
        ),
        made as i64
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM amba.assignments WHERE user_id LIKE 'cw%'"
        ),
        made as i64
    );
}

/// FORCE ROW LEVEL SECURITY, set by another session, makes the tables' owner (a member of
/// amba_admin) subject to the policies at its warm backend's next call.
#[test]
fn force_row_level_security_applies_to_the_owner_at_its_next_call() {
    let mut fx = Fixture::new("mt_force");
    let owner = fx.login_role("o", true);
    let mut admin = fx.conn();
    admin
        .batch_execute(&format!(
            "ALTER TABLE amba.assignments OWNER TO \"{owner}\";
             ALTER TABLE amba.events OWNER TO \"{owner}\";
             CREATE POLICY owner_no_x ON amba.assignments AS RESTRICTIVE FOR INSERT TO \"{owner}\" WITH CHECK (user_id NOT LIKE 'x%');
             CREATE POLICY owner_no_x ON amba.events AS RESTRICTIVE FOR INSERT TO \"{owner}\" WITH CHECK (user_id NOT LIKE 'x%');"
        ))
        .unwrap();
    let mut app = fx.conn_as(&owner);
    // The owner is not subject to row-level security yet.
    let vx = assign(&mut app, "e", "x1").unwrap();
    track(&mut app, "x1", "before").unwrap();
    admin
        .batch_execute(
            "ALTER TABLE amba.assignments FORCE ROW LEVEL SECURITY;
             ALTER TABLE amba.events FORCE ROW LEVEL SECURITY;",
        )
        .unwrap();
    fx.healthy(&mut admin, "FORCE ROW LEVEL SECURITY");
    let mut fresh = fx.conn_as(&owner);
    for (who, c) in [
        ("the warm backend", &mut app),
        ("a fresh backend", &mut fresh),
    ] {
        expect_state(
            assign(c, "e", "x2"),
            "42501",
            &format!("{who}: a first assignment the policy rejects"),
        );
        expect_state(
            track(c, "x1", "after"),
            "42501",
            &format!("{who}: an event the policy rejects"),
        );
        assert_eq!(
            assign(c, "e", "x1").unwrap(),
            vx,
            "{who}: a stored assignment is read"
        );
    }
    let v = assign(&mut app, "e", "y1").unwrap();
    track(&mut app, "y1", "after").unwrap();
    admin
        .batch_execute(
            "ALTER TABLE amba.assignments NO FORCE ROW LEVEL SECURITY;
             ALTER TABLE amba.events NO FORCE ROW LEVEL SECURITY;",
        )
        .unwrap();
    assign(&mut app, "e", "x3").unwrap();
    assert_eq!(assign(&mut app, "e", "y1").unwrap(), v);
    assert_eq!(assignment_rows(&mut admin, "e", "x2"), 0);
    assert_eq!(event_rows(&mut admin, "x1", "after"), 0);
    assert_eq!(event_rows(&mut admin, "y1", "after"), 1);
    fx.healthy(&mut app, "calls under FORCE ROW LEVEL SECURITY");
}

/// INSERT revoked from amba_admin by another session: the warm member's first assignment,
/// first exposure and event fail with 42501 as the INSERT would; a returning user (a
/// SELECT only) still gets their variant; granted again, everything works.
#[test]
fn revoked_insert_is_enforced_at_a_warm_backends_next_call() {
    let mut fx = Fixture::new("mt_revoke");
    let member = fx.login_role("m", true);
    let mut app = fx.conn_as(&member);
    let v1 = assign(&mut app, "e", "r1").unwrap();
    assert_eq!(expose(&mut app, "e", "r1").unwrap(), v1);
    let v3 = assign(&mut app, "e", "r3").unwrap();
    track(&mut app, "r1", "warm").unwrap();
    let mut admin = fx.conn();
    admin
        .batch_execute(
            "REVOKE INSERT ON amba.assignments, amba.exposures, amba.events FROM amba_admin",
        )
        .unwrap();
    fx.healthy(&mut admin, "REVOKE INSERT");
    let mut fresh = fx.conn_as(&member);
    for (who, c) in [
        ("the warm backend", &mut app),
        ("a fresh backend", &mut fresh),
    ] {
        assert_eq!(assign(c, "e", "r1").unwrap(), v1, "{who}: a returning user");
        expect_state(
            assign(c, "e", "r2"),
            "42501",
            &format!("{who}: a first assignment"),
        );
        expect_state(
            expose(c, "e", "r3"),
            "42501",
            &format!("{who}: a first exposure"),
        );
        expect_state(
            track(c, "r1", "revoked"),
            "42501",
            &format!("{who}: an event"),
        );
    }
    admin
        .batch_execute(
            "GRANT INSERT ON amba.assignments, amba.exposures, amba.events TO amba_admin",
        )
        .unwrap();
    let v2 = assign(&mut app, "e", "r2").unwrap();
    assert_eq!(expose(&mut app, "e", "r3").unwrap(), v3);
    track(&mut app, "r1", "granted").unwrap();
    assert_eq!(assignment_rows(&mut admin, "e", "r2"), 1);
    assert_eq!(assign(&mut fresh, "e", "r2").unwrap(), v2);
    assert_eq!(event_rows(&mut admin, "r1", "revoked"), 0);
    assert_eq!(event_rows(&mut admin, "r1", "granted"), 1);
    fx.healthy(&mut app, "calls after INSERT was revoked and granted again");
}

/// SERIALIZABLE: two transactions that each read what the other's amba call writes (write
/// skew) cannot both commit, as with the plain SELECT and INSERT.
#[test]
fn serializable_write_skew_through_amba_calls_is_a_serialization_failure() {
    let mut fx = Fixture::new("mt_ssi");
    for (round, reads) in ["peek", "select"].iter().enumerate() {
        let (u1, u2) = (format!("s1_{round}"), format!("s2_{round}"));
        let mut t1 = fx.conn();
        let mut t2 = fx.conn();
        let read = |c: &mut Client, other: &str| {
            if *reads == "peek" {
                peek(c, "e", other).map(|_| ())
            } else {
                c.query_one(
                    "SELECT count(*) FROM amba.assignments WHERE user_id IN ($1, $2)",
                    &[&u1, &u2],
                )
                .map(|_| ())
            }
        };
        t1.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .unwrap();
        t2.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .unwrap();
        read(&mut t1, &u2).unwrap();
        read(&mut t2, &u1).unwrap();
        let mut outcomes = Vec::new();
        for (c, user) in [(&mut t1, &u1), (&mut t2, &u2)] {
            outcomes.push(assign(c, "e", user).map(|_| ()));
        }
        for (i, c) in [&mut t1, &mut t2].into_iter().enumerate() {
            if outcomes[i].is_ok() {
                outcomes[i] = c.batch_execute("COMMIT");
            } else {
                c.batch_execute("ROLLBACK").unwrap();
            }
        }
        let states: Vec<String> = outcomes.into_iter().map(|o| state(o).0).collect();
        let failed = states.iter().filter(|s| s.as_str() == "40001").count();
        let committed = states.iter().filter(|s| s.starts_with("no error")).count();
        assert_eq!(
            (failed, committed),
            (1, 1),
            "reads by {reads}: one transaction commits, the other is a serialization failure: {states:?}"
        );
        assert_eq!(
            assignment_rows(&mut fx.conn(), "e", &u1) + assignment_rows(&mut fx.conn(), "e", &u2),
            1
        );
        fx.healthy(&mut t1, "SERIALIZABLE write skew");
    }
}

/// Logical decoding (test_decoding) sees the rows amba stores: assignment, exposure, event.
#[test]
fn logical_decoding_sees_the_assignment_exposure_and_event_rows() {
    let mut fx = Fixture::new("mt_decoding");
    let mut c = fx.conn();
    let level: String = c.query_one("SHOW wal_level", &[]).unwrap().get(0);
    assert_eq!(level, "logical", "needs wal_level = logical");
    let slot = format!("{}_slot", fx.name());
    struct DropSlot(String, String);
    impl Drop for DropSlot {
        fn drop(&mut self) {
            if let Ok(mut c) = config(&self.0, None).connect(NoTls) {
                let _ = c.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.1],
                );
            }
        }
    }
    let _drop_slot = DropSlot(fx.name(), slot.clone());
    c.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&slot],
    )
    .unwrap();
    let mut app = fx.conn();
    let v = assign(&mut app, "e", "dec1").unwrap();
    expose(&mut app, "e", "dec1").unwrap();
    track_with(&mut app, "dec1", "decoded", r#"{"k": "v"}"#).unwrap();
    let changes: Vec<String> = c
        .query(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)",
            &[&slot],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let has = |table: &str, parts: &[&str]| {
        changes.iter().any(|d| {
            d.starts_with(&format!("table amba.{table}: INSERT:"))
                && parts.iter().all(|p| d.contains(p))
        })
    };
    let variant = format!("variant[text]:'{v}'");
    assert!(
        has("assignments", &["user_id[text]:'dec1'", &variant]),
        "{changes:#?}"
    );
    assert!(has("exposures", &["user_id[text]:'dec1'"]), "{changes:#?}");
    assert!(
        has("events", &["user_id[text]:'dec1'", "event[text]:'decoded'"]),
        "{changes:#?}"
    );
    fx.healthy(&mut app, "logical decoding");
}

/// Prepared transactions: a first assignment (and an event) in a prepared transaction is
/// waited for by another first assignment of the user, which then returns the committed
/// variant (COMMIT PREPARED) or assigns its own (ROLLBACK PREPARED); one row either way.
#[test]
fn prepared_transactions_hold_first_assignments_until_they_end() {
    let mut fx = Fixture::new("mt_2pc");
    let mut admin = fx.conn();
    let max: String = admin
        .query_one("SHOW max_prepared_transactions", &[])
        .unwrap()
        .get(0);
    assert!(
        max.parse::<i32>().unwrap() > 0,
        "needs max_prepared_transactions > 0"
    );
    struct EndPrepared(String, String);
    impl Drop for EndPrepared {
        fn drop(&mut self) {
            if let Ok(mut c) = config(&self.0, None).connect(NoTls) {
                let left: i64 = c
                    .query_one(
                        "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
                        &[&self.1],
                    )
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                if left > 0 {
                    let _ = c.batch_execute(&format!("ROLLBACK PREPARED '{}'", self.1));
                }
            }
        }
    }
    let gid = format!("{}_gid", fx.name());
    let _end = EndPrepared(fx.name(), gid.clone());
    for commit in [true, false] {
        let user = format!("prep_{commit}");
        let mut p = fx.conn();
        p.batch_execute("BEGIN").unwrap();
        let v = assign(&mut p, "e", &user).unwrap();
        track(&mut p, &user, "prepared").unwrap();
        p.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
            .unwrap();
        let mut b = fx.conn();
        let b_pid = pid(&mut b);
        let done = Arc::new(AtomicBool::new(false));
        let done_b = done.clone();
        let user_b = user.clone();
        let waiter = std::thread::spawn(move || {
            let r = assign(&mut b, "e", &user_b);
            done_b.store(true, Ordering::SeqCst);
            (r, b)
        });
        wait_until_lock_wait(&mut admin, b_pid, || done.load(Ordering::SeqCst));
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        admin
            .batch_execute(&format!("{end} PREPARED '{gid}'"))
            .unwrap();
        let (r, mut b) = waiter.join().unwrap();
        // The variant is the user's bucket either way; what matters is one row, no error.
        assert_eq!(r.unwrap(), v, "{end} PREPARED");
        assert_eq!(assignment_rows(&mut admin, "e", &user), 1, "{end} PREPARED");
        assert_eq!(
            event_rows(&mut admin, &user, "prepared"),
            if commit { 1 } else { 0 },
            "{end} PREPARED"
        );
        fx.healthy(&mut b, &format!("{end} PREPARED"));
    }
}
