//! Crash safety: the whole server is killed with SIGKILL (postmaster and every backend, as
//! a power cut would) during concurrent first assignments, restarted, and every assignment
//! whose call returned is there with the same variant, and stays sticky.
//! Runs against the local cluster of scripts/pg.sh (AMBA_PGDATA), which it restarts.

use amba_integration_tests::{connect, unique};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 8;

fn pgdata() -> String {
    std::env::var("AMBA_PGDATA").unwrap_or_else(|_| "/var/tmp/amba-pg".to_string())
}

fn postmaster_pid() -> i32 {
    let pidfile = std::fs::read_to_string(format!("{}/postmaster.pid", pgdata()))
        .expect("the cluster of scripts/pg.sh is running");
    pidfile.lines().next().unwrap().trim().parse().unwrap()
}

/// Every process whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: i32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == pid {
            found.push(child);
        }
    }
    found
}

fn kill9(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

fn start_cluster() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg.sh");
    let status = std::process::Command::new("bash")
        .args([script, "start"])
        .status()
        .unwrap();
    assert!(status.success(), "restarting the cluster");
}

#[test]
fn assignments_that_returned_survive_a_server_crash() {
    let key = unique("crash");
    connect()
        .execute("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1},{\"key\":\"c\",\"weight\":2}]')", &[&key])
        .unwrap();
    let returned: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let crashed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..CONNECTIONS {
        let (key, returned, crashed) = (key.clone(), returned.clone(), crashed.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = connect();
            c.batch_execute("SET synchronous_commit = on").unwrap();
            let stmt = c.prepare("SELECT amba_assign($1, $2)").unwrap();
            let mut failures = 0;
            for i in 0.. {
                let user = format!("crash-{t}-{i}");
                match c.query_one(&stmt, &[&key, &user]) {
                    Ok(row) => returned.lock().unwrap().push((user, row.get(0))),
                    Err(e) => {
                        assert!(
                            crashed.load(Ordering::SeqCst),
                            "failed before the crash: {e}"
                        );
                        failures += 1;
                        return failures;
                    }
                }
            }
            unreachable!()
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while returned.lock().unwrap().len() < 2000 {
        assert!(Instant::now() < deadline, "assignments too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The power cut: the postmaster and all its children at once.
    let postmaster = postmaster_pid();
    let backends = children(postmaster);
    assert!(!backends.is_empty());
    crashed.store(true, Ordering::SeqCst);
    kill9(postmaster);
    for pid in &backends {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    for t in threads {
        assert_eq!(t.join().unwrap(), 1, "every connection saw the crash once");
    }
    let returned = returned.lock().unwrap().clone();
    // Restart only once every process of the old server is gone (reaped), as after a reboot.
    let gone_by = Instant::now() + Duration::from_secs(60);
    while std::iter::once(&postmaster)
        .chain(&backends)
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(
            Instant::now() < gone_by,
            "the killed postmaster is still there"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start_cluster();

    let mut c = connect();
    let stored: std::collections::HashMap<String, String> = c
        .query(
            "SELECT a.user_id, a.variant FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1",
            &[&key],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut lost = Vec::new();
    for (user, variant) in &returned {
        if stored.get(user) != Some(variant) {
            lost.push(format!(
                "{user}: returned {variant}, stored {:?}",
                stored.get(user)
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} returned assignments lost or changed:\n{}",
        lost.len(),
        returned.len(),
        lost.join("\n")
    );
    // Sticky after recovery, for a sample of them.
    let stmt = c.prepare("SELECT amba_assign($1, $2)").unwrap();
    for (user, variant) in returned.iter().step_by(17) {
        let again: String = c.query_one(&stmt, &[&key, user]).unwrap().get(0);
        assert_eq!(&again, variant, "{user}");
    }
}
