//! Installing a new build while the server runs (issue 10): `scripts/pg.sh` replaces each
//! file with a rename, never by rewriting it in place, so a backend that has the library
//! mapped keeps running (writing into a mapped amba.so crashed live backends, and the
//! postmaster then restarted every session). Every library of the package is replaced so:
//! the loader amba.so, this version's amba-<version>.so and earlier releases' (a live
//! session on a 0.1.0 database has the loader and amba-0.1.0.so mapped).

use amba_integration_tests::{connect, unique, Db};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

fn pkglibdir() -> String {
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_config")
        .arg("--pkglibdir")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn library() -> String {
    format!("{}/amba.so", pkglibdir())
}

/// amba.so and every amba-<version>.so, with their inodes.
fn libraries() -> BTreeMap<String, u64> {
    std::fs::read_dir(pkglibdir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let name = e.file_name().into_string().unwrap();
            name == "amba.so" || (name.starts_with("amba-") && name.ends_with(".so"))
        })
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect()
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
    // A session on a database still at 0.1.0, served through the loader by amba-0.1.0.so.
    let old_db = Db::new("amba_install_010");
    let mut old = old_db.client();
    old.batch_execute("CREATE EXTENSION amba VERSION '0.1.0'; \
         SELECT amba_create_experiment('old', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')")
        .unwrap();
    let old_before: String = old
        .query_one("SELECT amba_assign('old', 'u1')", &[])
        .unwrap()
        .get(0);
    let old_pid: i32 = old
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let libraries_before = libraries();
    assert!(
        libraries_before.contains_key("amba.so") && libraries_before.contains_key("amba-0.1.0.so"),
        "{libraries_before:?}"
    );

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
    let libraries_after = libraries();
    for (name, inode) in &libraries_before {
        assert_ne!(
            libraries_after.get(name),
            Some(inode),
            "{name} was rewritten in place"
        );
    }
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
    // The 0.1.0 session too, with the old loader and amba-0.1.0.so mapped.
    let old_again: String = old
        .query_one("SELECT amba_assign('old', 'u1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(old_again, old_before);
    let v: String = old
        .query_one("SELECT amba_expose('old', 'u1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, old_before);
    assert_eq!(
        old.query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get::<_, i32>(0),
        old_pid
    );
    // New sessions load the new files.
    let fresh: String = connect()
        .query_one("SELECT amba_assign($1, 'u1')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(fresh, before);
    let fresh_old: String = old_db
        .client()
        .query_one("SELECT amba_assign('old', 'u1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(fresh_old, old_before);
}
