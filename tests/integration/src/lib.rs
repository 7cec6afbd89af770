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
