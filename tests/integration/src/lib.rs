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
