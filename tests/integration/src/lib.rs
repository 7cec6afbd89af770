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
    config.connect(postgres::NoTls).unwrap_or_else(|e| panic!("cannot connect as {user}: {e}"))
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
