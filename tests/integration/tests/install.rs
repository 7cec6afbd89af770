//! Installing a new build while the server runs (issue 10): `scripts/pg.sh` replaces each
//! file with a rename, never by rewriting it in place, so a backend that has the library
//! mapped keeps running (writing into a mapped amba.so crashed live backends, and the
//! postmaster then restarted every session).

use amba_integration_tests::{connect, unique};
use std::os::unix::fs::MetadataExt;

fn library() -> String {
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_config")
        .arg("--pkglibdir")
        .output()
        .unwrap();
    format!("{}/amba.so", String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn reinstalling_replaces_the_library_by_rename_and_live_sessions_keep_working() {
    let mut live = connect();
    let key = unique("install");
    live.execute("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[&key]).unwrap();
    let before: String = live
        .query_one("SELECT amba_assign($1, 'u1')", &[&key])
        .unwrap()
        .get(0);
    let pid: i32 = live
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let inode_before = std::fs::metadata(library()).unwrap().ino();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg.sh");
    let status = std::process::Command::new("bash")
        .args([script, "place"])
        .status()
        .unwrap();
    assert!(status.success());

    assert_ne!(
        std::fs::metadata(library()).unwrap().ino(),
        inode_before,
        "amba.so was rewritten in place"
    );
    // The same backend, with the old library mapped, goes on serving.
    let again: String = live
        .query_one("SELECT amba_assign($1, 'u1')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(again, before);
    let v: String = live
        .query_one("SELECT amba_assign($1, 'u2')", &[&key])
        .unwrap()
        .get(0);
    assert!(["a", "b"].contains(&v.as_str()));
    assert_eq!(
        live.query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get::<_, i32>(0),
        pid
    );
    // New sessions load the new file.
    let fresh: String = connect()
        .query_one("SELECT amba_assign($1, 'u1')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(fresh, before);
}
