//! A DB admin's backup: pg_dump of a database using amba restores with every experiment,
//! assignment, exposure and event, and the restored database keeps assigning correctly.

use amba_integration_tests::database_url;
use std::process::Command;

fn with_db(url: &str, db: &str) -> String {
    let mut config: postgres::Config = url.parse().unwrap();
    config.dbname(db);
    let host = match &config.get_hosts()[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_string();
    format!("postgresql://{user}@{host}:{port}/{db}")
}

#[test]
fn dump_and_restore_keep_all_data() {
    let base = database_url();
    let suffix = std::process::id();
    let (source, target) = (
        format!("amba_backup_src_{suffix}"),
        format!("amba_backup_dst_{suffix}"),
    );
    let mut admin =
        postgres::Client::connect(&with_db(&base, "postgres"), postgres::NoTls).unwrap();
    for db in [&source, &target] {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
    }
    let source_url = with_db(&base, &source);
    let target_url = with_db(&base, &target);
    let mut src = postgres::Client::connect(&source_url, postgres::NoTls).unwrap();
    src.batch_execute(
        r#"CREATE EXTENSION amba;
           SELECT amba_create_experiment('b', '[{"key":"a","weight":1},{"key":"b","weight":1}]');
           SELECT amba_assign('b', 'u' || g), amba_expose('b', 'u' || g), amba_track('u' || g, 'buy')
             FROM generate_series(1, 50) g;
           SELECT amba_create_api_key('backup-key');"#,
    )
    .unwrap();
    let before: Vec<(String, String)> = src
        .query(
            "SELECT user_id, variant FROM amba.assignments ORDER BY user_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    let dump = Command::new("/usr/lib/postgresql/15/bin/pg_dump")
        .arg(&source_url)
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let restore = Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &target_url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&dump.stdout)?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );

    let mut dst = postgres::Client::connect(&target_url, postgres::NoTls).unwrap();
    let after: Vec<(String, String)> = dst
        .query(
            "SELECT user_id, variant FROM amba.assignments ORDER BY user_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(before, after);
    let counts: (i64, i64, i64, i64) = {
        let r = dst
            .query_one(
                "SELECT (SELECT count(*) FROM amba.exposures), (SELECT count(*) FROM amba.events),
                        (SELECT count(*) FROM amba.api_keys), (SELECT count(*) FROM amba.experiment_history)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(counts, (50, 50, 1, 1));
    // Sticky after restore, and new rows get fresh ids.
    let v: String = dst
        .query_one("SELECT amba_assign('b', 'u7')", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, before.iter().find(|(u, _)| u == "u7").unwrap().1);
    dst.batch_execute(r#"SELECT amba_create_experiment('b2', '[{"key":"a","weight":1},{"key":"b","weight":1}]'); SELECT amba_track('x', 'buy');"#)
        .unwrap();
    drop((src, dst));
    for db in [&source, &target] {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .unwrap();
    }
}
