//! `#[pg_test]` tests: every SQL function and error of the contract, in a real PostgreSQL.
//! Each test runs in its own transaction; `err(sql)` runs a statement in a
//! subtransaction and returns `SQLSTATE message` of its error, or "ok".
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    const AB: &str = r#"'[{"key":"control","weight":50},{"key":"treatment","weight":50}]'"#;

    fn setup() {
        Spi::run(
            "CREATE OR REPLACE FUNCTION pg_temp.err(statement text) RETURNS text
             LANGUAGE plpgsql AS $$
             BEGIN
                 EXECUTE statement;
                 RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN
                 RETURN SQLSTATE || ' ' || SQLERRM;
             END $$",
        )
        .unwrap();
    }

    fn one<T: IntoDatum + FromDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn text(sql: &str) -> String {
        one::<String>(sql).unwrap_or_else(|| panic!("{sql} returned NULL"))
    }

    fn count(sql: &str) -> i64 {
        one::<i64>(sql).unwrap()
    }

    fn err(statement: &str) -> String {
        let quoted = statement.replace('\'', "''");
        text(&format!("SELECT pg_temp.err('{quoted}')"))
    }

    fn assert_err(statement: &str, sqlstate: &str, code: &str) {
        let got = err(statement);
        assert!(
            got.starts_with(&format!("{sqlstate} {code}: ")),
            "{statement}\n  expected {sqlstate} {code}: …\n  got {got}"
        );
    }

    /// A test that changes amba's tables takes all of them first, without ever waiting
    /// while it holds some (NOWAIT, retried): tests run side by side, and a schema change
    /// that waited could close a deadlock with a test holding the tables in another order.
    fn take_amba_tables() {
        Spi::run(
            "DO $$
             DECLARE tables text := (SELECT string_agg(format('%I.%I', schemaname, tablename), ', ')
                                       FROM pg_tables WHERE schemaname = 'amba');
             BEGIN
                 LOOP
                     BEGIN
                         EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', tables);
                         RETURN;
                     EXCEPTION WHEN lock_not_available THEN
                         PERFORM pg_sleep(0.02);
                     END;
                 END LOOP;
             END $$",
        )
        .unwrap();
    }

    fn create(key: &str) {
        Spi::run(&format!("SELECT amba_create_experiment('{key}', {AB})")).unwrap();
    }

    #[pg_test]
    fn create_get_list() {
        setup();
        let created = one::<pgrx::JsonB>(&format!(
            "SELECT amba_create_experiment('checkout', {AB}, 'Checkout', 'Blue button')"
        ))
        .unwrap()
        .0;
        assert_eq!(created["key"], "checkout");
        assert_eq!(created["name"], "Checkout");
        assert_eq!(created["description"], "Blue button");
        assert_eq!(created["status"], "active");
        assert_eq!(created["variants"][0]["key"], "control");
        assert_eq!(created["variants"][1]["weight"], 50);
        assert!(created["created_at"].is_string() && created["updated_at"].is_string());
        let got = one::<pgrx::JsonB>("SELECT amba_get_experiment('checkout')")
            .unwrap()
            .0;
        assert_eq!(got, created);
        assert!(one::<pgrx::JsonB>("SELECT amba_get_experiment('nope')").is_none());
        create("second");
        assert_eq!(
            text("SELECT string_agg(e->>'key', ',') FROM amba_list_experiments() e"),
            "checkout,second"
        );
        let draft = one::<pgrx::JsonB>(&format!(
            "SELECT amba_create_experiment('d', {AB}, status => 'draft')"
        ))
        .unwrap()
        .0;
        assert_eq!(draft["status"], "draft");
    }

    #[pg_test]
    fn create_errors_leave_nothing_behind() {
        setup();
        create("taken");
        assert_err(
            &format!("SELECT amba_create_experiment('taken', {AB})"),
            "23505",
            "EXPERIMENT_EXISTS",
        );
        let bad_variants = [
            "NULL",
            r#"'{}'"#,
            r#"'[{"key":"a","weight":1}]'"#,
            r#"'[{"key":"a","weight":1},{"key":"a","weight":1}]'"#,
            r#"'[{"key":"a","weight":1},{"key":"b","weight":"1"}]'"#,
            r#"'[{"key":"a","weight":1},{"key":"b","weight":true}]'"#,
            r#"'[{"key":"a","weight":1},{"key":"b","weight":null}]'"#,
            r#"'[{"key":"a","weight":1},{"key":"b","weight":-1}]'"#,
            r#"'[{"key":"a","weight":0},{"key":"b","weight":0}]'"#,
            r#"'[{"key":"a","weight":1},{"key":"b","weight":1e999}]'"#,
            r#"'[{"key":"a","weight":1},{"key":"b c","weight":1}]'"#,
            r#"'[{"key":"","weight":1},{"key":"b","weight":1}]'"#,
        ];
        for variants in bad_variants {
            assert_err(
                &format!("SELECT amba_create_experiment('new', {variants})"),
                "22023",
                "INVALID_ARGUMENT",
            );
        }
        for key in [
            "NULL",
            "''",
            "'has space'",
            "'ü'",
            &format!("'{}'", "k".repeat(129)),
        ] {
            assert_err(
                &format!("SELECT amba_create_experiment({key}, {AB})"),
                "22023",
                "INVALID_ARGUMENT",
            );
        }
        assert_err(
            &format!("SELECT amba_create_experiment('new', {AB}, status => 'running')"),
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err(
            &format!("SELECT amba_create_experiment('new', {AB}, status => NULL)"),
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_eq!(count("SELECT count(*) FROM amba.experiments"), 1);
        assert_eq!(count("SELECT count(*) FROM amba.weight_versions"), 1);
        assert_eq!(count("SELECT count(*) FROM amba.experiment_history"), 1);
        // 128 characters and every allowed character are fine.
        create(&"k".repeat(128));
        create("Az09_.:-");
    }

    #[pg_test]
    fn assignment_is_sticky_through_reweighting_and_every_status() {
        setup();
        create("sticky");
        Spi::run("CREATE TEMP TABLE first AS SELECT 'u' || g AS u, amba_assign('sticky', 'u' || g) AS v FROM generate_series(1, 300) g").unwrap();
        let changes = [
            r#"variants => '[{"key":"control","weight":0},{"key":"treatment","weight":1}]'"#,
            r#"variants => '[{"key":"control","weight":1},{"key":"treatment","weight":0},{"key":"new","weight":5}]'"#,
            "status => 'paused'",
            "status => 'ended'",
            "status => 'draft'",
            "status => 'active'",
        ];
        for change in changes {
            Spi::run(&format!(
                "SELECT amba_update_experiment('sticky', {change})"
            ))
            .unwrap();
            assert_eq!(
                count("SELECT count(*) FROM first WHERE amba_assign('sticky', u) <> v"),
                0,
                "users moved after {change}"
            );
        }
        // Back to active with weights 1/0/5: new users never get the zero-weight variant.
        assert_eq!(
            count("SELECT count(*) FROM generate_series(1, 500) g WHERE amba_assign('sticky', 'n' || g) = 'treatment'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM amba.assignments"), 800);
    }

    #[pg_test]
    fn new_users_need_an_active_experiment() {
        setup();
        create("s");
        Spi::run("SELECT amba_assign('s', 'old')").unwrap();
        for status in ["paused", "ended", "draft"] {
            Spi::run(&format!(
                "SELECT amba_update_experiment('s', status => '{status}')"
            ))
            .unwrap();
            assert_err(
                "SELECT amba_assign('s', 'new')",
                "55000",
                "EXPERIMENT_INACTIVE",
            );
            assert!(err("SELECT amba_assign('s', 'new')").contains(status));
            assert_eq!(err("SELECT amba_assign('s', 'old')"), "ok");
            assert_eq!(err("SELECT amba_expose('s', 'old')"), "ok");
        }
        Spi::run("SELECT amba_update_experiment('s', status => 'active')").unwrap();
        assert_eq!(err("SELECT amba_assign('s', 'new')"), "ok");
    }

    /// Bucketing vectors computed with Python's `xxhash` (the C reference xxHash) by
    /// scripts/fixtures/bucket_vectors.py: inputs -> bucket (IEEE-754 bits) and variant.
    const BUCKET_VECTORS: &str = include_str!("../core/tests/fixtures/bucket_vectors.json");

    fn from_bits(v: &serde_json::Value) -> f64 {
        f64::from_bits(
            v.as_str()
                .expect("bits as a decimal string")
                .parse::<u64>()
                .expect("u64 bits"),
        )
    }

    #[pg_test]
    fn assignment_follows_the_published_bucketing() {
        setup();
        let doc: serde_json::Value = serde_json::from_str(BUCKET_VECTORS).unwrap();
        let vectors = doc["vectors"].as_array().unwrap();
        assert!(vectors.len() >= 200, "{} vectors", vectors.len());
        // amba_bucket needs no experiment (none exists yet) and gives the reference's bucket
        // to the bit.
        assert_eq!(count("SELECT count(*) FROM amba.experiments"), 0);
        for v in vectors {
            let (key, user) = (
                v["experiment_key"].as_str().unwrap(),
                v["user_id"].as_str().unwrap(),
            );
            let want = from_bits(&v["bucket_bits"]);
            let got = Spi::get_one_with_args::<f64>(
                "SELECT amba_bucket($1, $2)",
                &[key.into(), user.into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "amba_bucket({key:?}, {user:?}) = {got:?}; xxhash: {want:?} ({})",
                v["note"]
            );
        }
        // amba_assign picks the reference's variant for the vector's weights (zero weights,
        // thresholds equal to or one ulp from the bucket, fractional and huge weights).
        for v in vectors {
            let (key, user) = (
                v["experiment_key"].as_str().unwrap(),
                v["user_id"].as_str().unwrap(),
            );
            let weights: Vec<f64> = v["weights_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(from_bits)
                .collect();
            let variants: Vec<serde_json::Value> = weights
                .iter()
                .enumerate()
                .map(|(j, w)| serde_json::json!({"key": format!("v{j}"), "weight": w}))
                .collect();
            let variants = serde_json::Value::Array(variants).to_string();
            Spi::run_with_args("SELECT amba_delete_experiment($1)", &[key.into()]).unwrap();
            Spi::run_with_args(
                "SELECT amba_create_experiment($1, $2::jsonb)",
                &[key.into(), variants.as_str().into()],
            )
            .unwrap_or_else(|e| panic!("create {key:?} {variants}: {e}"));
            let stored: Vec<f64> = Spi::get_one_with_args::<Vec<f64>>(
                "SELECT weights FROM amba.experiments WHERE key = $1",
                &[key.into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(
                stored.iter().map(|w| w.to_bits()).collect::<Vec<_>>(),
                weights.iter().map(|w| w.to_bits()).collect::<Vec<_>>(),
                "{key:?}: weights {variants} not stored exactly"
            );
            let got = Spi::get_one_with_args::<String>(
                "SELECT amba_assign($1, $2)",
                &[key.into(), user.into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(
                got,
                format!("v{}", v["variant_index"]),
                "amba_assign({key:?}, {user:?}) with weights {variants} ({})",
                v["note"]
            );
        }
        assert_eq!(
            text("SELECT provolatile::text FROM pg_proc WHERE proname = 'amba_bucket'"),
            "i"
        );
    }

    #[pg_test]
    fn assign_and_expose_errors() {
        setup();
        create("e");
        assert_err(
            "SELECT amba_assign('missing', 'u')",
            "P0002",
            "EXPERIMENT_NOT_FOUND",
        );
        assert_err(
            "SELECT amba_expose('missing', 'u')",
            "P0002",
            "EXPERIMENT_NOT_FOUND",
        );
        assert_err(
            "SELECT amba_expose('e', 'u')",
            "P0002",
            "ASSIGNMENT_REQUIRED",
        );
        for user in ["NULL", "''", &format!("'{}'", "é".repeat(513))] {
            assert_err(
                &format!("SELECT amba_assign('e', {user})"),
                "22023",
                "INVALID_ARGUMENT",
            );
            assert_err(
                &format!("SELECT amba_expose('e', {user})"),
                "22023",
                "INVALID_ARGUMENT",
            );
            assert_err(
                &format!("SELECT amba_bucket('e', {user})"),
                "22023",
                "INVALID_ARGUMENT",
            );
        }
        assert_err("SELECT amba_assign(NULL, 'u')", "22023", "INVALID_ARGUMENT");
        assert_err(
            "SELECT amba_assign('bad key', 'u')",
            "22023",
            "INVALID_ARGUMENT",
        );
        // 512 characters of any text, untrimmed, are a valid user id.
        assert_eq!(
            err(&format!("SELECT amba_assign('e', '{}')", "é".repeat(512))),
            "ok"
        );
        assert_eq!(err("SELECT amba_assign('e', ' padded ')"), "ok");
        assert_eq!(
            count("SELECT count(*) FROM amba.assignments WHERE user_id = ' padded '"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM amba.exposures"), 0);
    }

    #[pg_test]
    fn exposure_keeps_the_first_time() {
        setup();
        create("x");
        let v = text("SELECT amba_assign('x', 'u')");
        assert_eq!(text("SELECT amba_expose('x', 'u')"), v);
        Spi::run("UPDATE amba.exposures SET exposed_at = '2020-01-01'").unwrap();
        assert_eq!(text("SELECT amba_expose('x', 'u')"), v);
        assert_eq!(
            count("SELECT count(*) FROM amba.exposures WHERE exposed_at = '2020-01-01'"),
            1
        );
        Spi::run("SELECT amba_update_experiment('x', status => 'ended')").unwrap();
        assert_eq!(text("SELECT amba_expose('x', 'u')"), v);
    }

    /// The hot path's inserts go direct (src/insert.rs) on the tables amba creates, and
    /// through SPI once a table gains what the direct insert would not honour.
    #[pg_test]
    fn hot_path_inserts_go_direct_only_on_amba_own_tables() {
        take_amba_tables();
        use crate::store::probe::{direct_assignment, direct_event};
        let now = TimestampWithTimeZone::try_from(unsafe {
            pgrx::pg_sys::GetCurrentTransactionStartTimestamp()
        })
        .unwrap();
        let append_event =
            |user: &str, event: &str, at, _props: Option<()>| direct_event(user, event, at);
        let assign = |user: &str| direct_assignment(999_999, user);
        assert!(append_event("u", "e", now, None));
        assert_eq!(assign("u"), Some(true));
        assert_eq!(
            assign("u"),
            Some(false),
            "the row is there: ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            count("SELECT count(*) FROM amba.assignments WHERE experiment_id = 999999"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM amba.events WHERE user_id = 'u'"),
            1
        );

        Spi::run(
            "CREATE FUNCTION pg_temp.noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
             CREATE TRIGGER noop BEFORE INSERT ON amba.events FOR EACH ROW EXECUTE FUNCTION pg_temp.noop();
             ALTER TABLE amba.assignments ADD CONSTRAINT no_x CHECK (variant <> 'x')",
        )
        .unwrap();
        assert!(!append_event("v", "e", now, None));
        assert_eq!(assign("v"), None);
        Spi::run(
            "DROP TRIGGER noop ON amba.events; ALTER TABLE amba.assignments DROP CONSTRAINT no_x",
        )
        .unwrap();
        assert!(append_event("v", "e", now, None));
        assert_eq!(assign("v"), Some(true));

        // amba_admin's policies are the constant true: still direct. A policy that is not
        // sends it through SPI.
        Spi::run("SET LOCAL ROLE amba_admin").unwrap();
        assert!(append_event("w", "e", now, None));
        assert_eq!(assign("w"), Some(true));
        Spi::run("RESET ROLE; CREATE POLICY w_only ON amba.events FOR INSERT TO amba_admin WITH CHECK (user_id = 'w'); SET LOCAL ROLE amba_admin").unwrap();
        assert!(!append_event("w", "e", now, None));
        Spi::run("RESET ROLE").unwrap();
    }

    /// A first exposure goes in directly with its foreign key checked by PostgreSQL's own
    /// trigger, queued and fired as the INSERT would; another trigger on the table sends it
    /// through SPI.
    #[pg_test]
    fn direct_exposures_keep_their_foreign_key_check() {
        take_amba_tables();
        use crate::store::probe::{direct_assignment, direct_exposure};
        assert_eq!(direct_assignment(777_777, "seen"), Some(true));
        assert_eq!(direct_exposure(777_777, "seen"), Some(true));
        assert_eq!(
            direct_exposure(777_777, "seen"),
            Some(false),
            "ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            count("SELECT count(*) FROM amba.exposures WHERE experiment_id = 777777"),
            1
        );
        Spi::run(
            "CREATE FUNCTION pg_temp.noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
             CREATE TRIGGER noop AFTER INSERT ON amba.exposures FOR EACH ROW EXECUTE FUNCTION pg_temp.noop()",
        )
        .unwrap();
        assert_eq!(direct_assignment(777_777, "other"), Some(true));
        assert_eq!(
            direct_exposure(777_777, "other"),
            None,
            "a user's trigger: SPI"
        );
        Spi::run("DROP TRIGGER noop ON amba.exposures").unwrap();
        assert_eq!(direct_exposure(777_777, "other"), Some(true));
    }

    /// A DBA who makes the foreign key deferred gets PostgreSQL's deferred check: queued by
    /// the direct insert, fired when the constraints are checked (here at SET CONSTRAINTS,
    /// else at commit), after the insert's own executor state is gone.
    #[pg_test(error = "the deferred check fired at SET CONSTRAINTS")]
    fn a_deferred_foreign_key_is_checked_at_the_end_of_the_transaction() {
        take_amba_tables();
        Spi::run(
            "ALTER TABLE amba.exposures ALTER CONSTRAINT exposures_experiment_id_user_id_fkey
                 DEFERRABLE INITIALLY DEFERRED",
        )
        .unwrap();
        assert_eq!(
            crate::store::probe::direct_exposure(777_779, "nobody"),
            Some(true),
            "deferred: no error yet"
        );
        assert_eq!(
            count("SELECT count(*) FROM amba.exposures WHERE experiment_id = 777779"),
            1
        );
        Spi::run(
            "DO $$ BEGIN SET CONSTRAINTS ALL IMMEDIATE;
             EXCEPTION WHEN foreign_key_violation THEN
               RAISE EXCEPTION 'the deferred check fired at SET CONSTRAINTS';
             END $$",
        )
        .unwrap();
    }

    #[pg_test(
        error = "insert or update on table \"exposures\" violates foreign key constraint \"exposures_experiment_id_user_id_fkey\""
    )]
    fn a_direct_exposure_without_assignment_fails_its_foreign_key() {
        take_amba_tables();
        crate::store::probe::direct_exposure(777_778, "nobody");
    }

    /// The path is chosen once per call from the catalog, the setting and the hooks:
    /// direct on the tables a fresh install creates (so the shapes in src/store match
    /// sql/bootstrap.sql: a changed column would fail here, not fall back silently), SQL
    /// once a table is not plain or when `amba.direct_access` is off.
    #[pg_test]
    fn path_is_direct_only_on_plain_tables_and_when_allowed() {
        take_amba_tables();
        use crate::store::probe::{direct_assignment, direct_event, path_name};
        let now = TimestampWithTimeZone::try_from(unsafe {
            pgrx::pg_sys::GetCurrentTransactionStartTimestamp()
        })
        .unwrap();
        assert_eq!(path_name(), "direct");
        assert!(direct_event("shape", "e", now), "events have amba's shape");
        assert_eq!(
            direct_assignment(424_242, "shape"),
            Some(true),
            "assignments have amba's shape"
        );

        Spi::run("SET LOCAL amba.direct_access = off").unwrap();
        assert_eq!(path_name(), "sql");
        Spi::run("SET LOCAL amba.direct_access = on").unwrap();
        assert_eq!(path_name(), "direct");

        // An inheritance child (archiving old rows): a SELECT on the parent reads it.
        Spi::run("CREATE TABLE amba.assignments_archive () INHERITS (amba.assignments)").unwrap();
        assert_eq!(path_name(), "sql");
        Spi::run("DROP TABLE amba.assignments_archive").unwrap();
        // relhassubclass stays set until VACUUM clears it: still SQL, never wrong.
        assert_eq!(path_name(), "sql");

        // A hook that must see writes (an auditing module's) sends every call to SQL.
        unsafe {
            pgrx::pg_sys::ExecutorCheckPerms_hook = Some(allow_all);
        }
        let with_hook = path_name();
        unsafe {
            pgrx::pg_sys::ExecutorCheckPerms_hook = None;
        }
        assert_eq!(with_hook, "sql");
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn allow_all(
        _range_table: *mut pgrx::pg_sys::List,
        _abort: bool,
    ) -> bool {
        true
    }

    /// A partitioned amba.assignments (a DB admin's ordinary maintenance) takes the SQL
    /// path, which the executor routes: no direct read of a partitioned table.
    #[pg_test]
    fn partitioned_assignments_go_through_sql() {
        take_amba_tables();
        setup();
        Spi::run(&format!("SELECT amba_create_experiment('p', {AB})")).unwrap();
        let before = text("SELECT amba_assign('p', 'u1')");
        Spi::run(
            "ALTER TABLE amba.exposures DROP CONSTRAINT exposures_experiment_id_user_id_fkey;
             ALTER TABLE amba.assignments RENAME TO assignments_old;
             ALTER INDEX amba.assignments_pkey RENAME TO assignments_old_pkey;
             CREATE TABLE amba.assignments (LIKE amba.assignments_old INCLUDING ALL) PARTITION BY HASH (experiment_id);
             CREATE TABLE amba.assignments_p0 PARTITION OF amba.assignments FOR VALUES WITH (MODULUS 1, REMAINDER 0);
             INSERT INTO amba.assignments SELECT * FROM amba.assignments_old;",
        )
        .unwrap();
        assert_eq!(crate::store::probe::path_name(), "sql");
        assert_eq!(text("SELECT amba_assign('p', 'u1')"), before, "sticky");
        let second = text("SELECT amba_assign('p', 'u2')");
        assert_eq!(text("SELECT amba_expose('p', 'u2')"), second);
        assert_eq!(text("SELECT amba_peek('p', 'u2')"), second);
        assert_eq!(
            count("SELECT count(*) FROM amba.assignments WHERE user_id IN ('u1', 'u2')"),
            2
        );
    }

    #[pg_test]
    fn track_stores_events() {
        setup();
        assert_eq!(
            text("SELECT amba_track('u', 'purchase', '{\"amount\": 3}', '2024-05-01 10:00+00')::text"),
            "2024-05-01 10:00:00+00"
        );
        assert!(one::<bool>("SELECT amba_track('u', 'purchase') = now()").unwrap());
        assert_eq!(
            count("SELECT count(*) FROM amba.events WHERE user_id = 'u'"),
            2
        );
        assert_err(
            "SELECT amba_track('u', 'e', '[1]')",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err(
            "SELECT amba_track('u', 'e', '\"s\"')",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err(
            "SELECT amba_track('u', E'a\\nb')",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err("SELECT amba_track('u', '')", "22023", "INVALID_ARGUMENT");
        assert_err(
            &format!("SELECT amba_track('u', '{}')", "e".repeat(129)),
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err("SELECT amba_track('', 'e')", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_track(NULL, 'e')", "22023", "INVALID_ARGUMENT");
        assert_err(
            "SELECT amba_track('u', 'e', NULL, 'infinity')",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err(
            "SELECT amba_track('u', 'e', NULL, '-infinity')",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err(
            "SELECT amba_track('u', 'e', jsonb_build_object('big', repeat('x', 70000)))",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_eq!(count("SELECT count(*) FROM amba.events"), 2);
        assert_eq!(
            err(&format!(
                "SELECT amba_track('u', '{}', NULL)",
                "é".repeat(128)
            )),
            "ok"
        );
    }

    #[pg_test]
    fn results_count_exposed_users_converted_after_assignment() {
        setup();
        create("r");
        // Six users: assigned via the hot path, then moved to known variants and times.
        Spi::run("SELECT amba_assign('r', 'u' || g) FROM generate_series(1, 6) g").unwrap();
        Spi::run(
            "UPDATE amba.assignments SET assigned_at = '2024-01-01',
                    variant = CASE WHEN user_id IN ('u1','u2','u3') THEN 'control' ELSE 'treatment' END",
        )
        .unwrap();
        Spi::run("SELECT amba_expose('r', u) FROM unnest(ARRAY['u1','u2','u4','u5','u6']) u")
            .unwrap();
        // u1 converts after assignment; u2 only before it; u3 converts but is not exposed;
        // u4 converts twice; u5 converts with another event.
        Spi::run(
            "SELECT amba_track('u1', 'buy', NULL, '2024-01-02');
             SELECT amba_track('u2', 'buy', NULL, '2023-12-31');
             SELECT amba_track('u3', 'buy', NULL, '2024-01-02');
             SELECT amba_track('u4', 'buy', NULL, '2024-01-01');
             SELECT amba_track('u4', 'buy', NULL, '2024-01-03');
             SELECT amba_track('u5', 'other', NULL, '2024-01-03');",
        )
        .unwrap();
        let rows = text(
            "SELECT string_agg(format('%s %s %s %s %s %s', variant, is_control, assigned_count,
                                      exposed_count, converted_count, conversion_rate), '; ')
               FROM amba_results('r', 'buy')",
        );
        assert_eq!(
            rows,
            "control t 3 2 1 0.5; treatment f 3 3 1 0.3333333333333333"
        );
        let names = text(
            "SELECT array_to_string(proargnames, ',') FROM pg_proc WHERE proname = 'amba_results'",
        );
        assert_eq!(
            names,
            "experiment_key,conversion_event,alpha,variant,is_control,assigned_count,exposed_count,\
             converted_count,conversion_rate,z_score,p_value,lift,lift_ci_low,lift_ci_high,\
             chance_to_win,p_value_holm,sequential_p_value,srm_p_value"
        );
    }

    /// One exposed user per variant, so each variant's converted_count (0 or 1) is one
    /// user's verdict, and each user has only the events named here: nothing else can make
    /// them count.
    #[pg_test]
    fn conversions_count_from_the_assignment_time_on() {
        setup();
        let cases = [
            // (variant = case, events of its only user relative to the assignment, counts?)
            ("only_at_assignment", vec!["0"], 1),
            ("only_1us_before", vec!["-1 microsecond"], 0),
            ("only_a_day_before", vec!["-1 day"], 0),
            ("only_1us_after", vec!["1 microsecond"], 1),
            ("before_and_at", vec!["-1 day", "0"], 1),
            ("other_event_at", vec![], 0),
        ];
        let variants: Vec<String> = cases
            .iter()
            .map(|(k, _, _)| format!(r#"{{"key":"{k}","weight":1}}"#))
            .collect();
        Spi::run(&format!(
            "SELECT amba_create_experiment('t', '[{}]')",
            variants.join(",")
        ))
        .unwrap();
        for (k, events, _) in &cases {
            let user = format!("user-{k}");
            Spi::run(&format!(
                "SELECT amba_assign('t', '{user}'), amba_expose('t', '{user}')"
            ))
            .unwrap();
            // Moved to its case's variant, assigned at a fixed time with microseconds.
            Spi::run(&format!(
                "UPDATE amba.assignments SET variant = '{k}', assigned_at = '2024-03-10 12:34:56.789012+00'
                  WHERE user_id = '{user}'"
            ))
            .unwrap();
            for offset in events {
                Spi::run(&format!(
                    "SELECT amba_track('{user}', 'buy', NULL, '2024-03-10 12:34:56.789012+00'::timestamptz + interval '{offset}')"
                ))
                .unwrap();
            }
            if events.is_empty() {
                Spi::run(&format!(
                    "SELECT amba_track('{user}', 'other', NULL, '2024-03-10 12:34:56.789012+00')"
                ))
                .unwrap();
            }
        }
        // The stored times are the ones meant (no rounding of the microseconds).
        assert_eq!(
            count("SELECT count(*) FROM amba.events e JOIN amba.assignments a USING (user_id) WHERE e.occurred_at = a.assigned_at"),
            3
        );
        for (k, _, converted) in &cases {
            let got = count(&format!(
                "SELECT converted_count FROM amba_results('t', 'buy') WHERE variant = '{k}' AND exposed_count = 1"
            ));
            assert_eq!(got, *converted, "{k}: converted_count");
        }
    }

    #[pg_test]
    fn results_null_cases_and_errors() {
        setup();
        create("n");
        // Nobody exposed: rates, tests and SRM are NULL.
        let nulls = count(
            "SELECT count(*) FROM amba_results('n', 'buy')
              WHERE conversion_rate IS NULL AND z_score IS NULL AND p_value IS NULL
                AND lift IS NULL AND chance_to_win IS NULL AND srm_p_value IS NULL",
        );
        assert_eq!(nulls, 2);
        assert_eq!(
            count("SELECT count(*) FROM amba_results('n', 'buy') WHERE is_control"),
            1
        );
        assert_err(
            "SELECT * FROM amba_results('missing', 'buy')",
            "P0002",
            "EXPERIMENT_NOT_FOUND",
        );
        assert_err(
            "SELECT * FROM amba_results('n', NULL)",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err(
            "SELECT * FROM amba_results('n', '')",
            "22023",
            "INVALID_ARGUMENT",
        );
        for alpha in ["0", "1", "-0.1", "1.5", "'NaN'", "NULL", "'Infinity'"] {
            assert_err(
                &format!("SELECT * FROM amba_results('n', 'buy', {alpha})"),
                "22023",
                "INVALID_ARGUMENT",
            );
        }
        assert_eq!(err("SELECT * FROM amba_results('n', 'buy', 0.01)"), "ok");
    }

    /// amba_results on data built to the counts of cases of
    /// core/tests/fixtures/gbstats_reference.json (scripts/fixtures/gbstats_reference.py:
    /// statsmodels proportions_ztest and multipletests, scipy, gbstats 0.8.0 TwoSidedTTest,
    /// EffectBayesianABTest, SequentialTwoSidedTTest and check_srm, or the contract formula
    /// with scipy where gbstats returns its default), every column to 1e-9 relative.
    const GBSTATS_REFERENCE: &str = include_str!("../core/tests/fixtures/gbstats_reference.json");

    fn assert_close(what: &str, got: &serde_json::Value, want: &serde_json::Value, scale: f64) {
        match (got.as_f64(), want.as_f64()) {
            (None, None) => assert!(got.is_null() && want.is_null(), "{what}: {got} vs {want}"),
            (Some(g), Some(w)) => {
                let tol = 1e-9 * w.abs().max(scale);
                assert!(
                    (g - w).abs() <= tol,
                    "{what}: amba {g:e}, reference {w:e} (difference {:e})",
                    (g - w).abs()
                );
            }
            _ => panic!("{what}: amba {got}, reference {want}"),
        }
    }

    /// Builds each named case of gbstats_reference.json and compares amba_results with it.
    /// (A test is one transaction, and every first assignment keeps a user advisory lock
    /// to its end: a few thousand users per test stay within the lock table.)
    fn results_match_reference_cases(chosen: &[&str]) {
        setup();
        let doc: serde_json::Value = serde_json::from_str(GBSTATS_REFERENCE).unwrap();
        for (c, name) in chosen.iter().enumerate() {
            let case = doc["experiments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == *name)
                .unwrap_or_else(|| panic!("{name} is not in gbstats_reference.json"));
            let key = format!("ref{c}");
            let alpha = case["alpha"].as_f64().unwrap();
            let arms: Vec<(i64, i64)> = case["arms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["exposed"].as_i64().unwrap(),
                        a["converted"].as_i64().unwrap(),
                    )
                })
                .collect();
            let groups = case["srm_groups"].as_array().unwrap();
            // The weight versions: created with the first, updated to each later one.
            let variants = |g: &serde_json::Value| -> String {
                let v: Vec<serde_json::Value> = g["weights"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(i, w)| serde_json::json!({"key": format!("v{i}"), "weight": w}))
                    .collect();
                serde_json::Value::Array(v).to_string()
            };
            Spi::run(&format!(
                "SELECT amba_create_experiment('{key}', '{}')",
                variants(&groups[0])
            ))
            .unwrap();
            for g in &groups[1..] {
                Spi::run(&format!(
                    "SELECT amba_update_experiment('{key}', '{}')",
                    variants(g)
                ))
                .unwrap();
            }
            assert_eq!(
                count(&format!(
                    "SELECT weight_version::bigint FROM amba.experiments WHERE key = '{key}'"
                )),
                groups.len() as i64
            );
            // Per arm: n exposed users of whom the first x convert, plus two users who are
            // assigned and convert but are never exposed (they count nowhere but assigned).
            let values: Vec<String> = arms
                .iter()
                .enumerate()
                .map(|(i, (n, x))| format!("({i}, {n}, {x})"))
                .collect();
            Spi::run(&format!(
                "CREATE TEMP TABLE plan AS
                 SELECT '{key}-' || i || '-' || j AS user_id, 'v' || i AS variant,
                        j <= n AS exposed, (j <= x OR j > n) AS converts, 1 AS version
                   FROM (VALUES {}) AS a(i, n, x), generate_series(1, n + 2) AS j",
                values.join(", ")
            ))
            .unwrap();
            // Exposed users in order, in blocks of each weight version's count.
            let mut bounds = Vec::new();
            let mut upto = 0;
            for (v, g) in groups.iter().enumerate() {
                upto += g["count"].as_i64().unwrap();
                bounds.push(format!("WHEN rn <= {upto} THEN {}", v + 1));
            }
            Spi::run(&format!(
                "UPDATE plan p SET version = CASE {} END
                   FROM (SELECT user_id, row_number() OVER (ORDER BY variant, user_id) AS rn FROM plan WHERE exposed) r
                  WHERE r.user_id = p.user_id",
                bounds.join(" ")
            ))
            .unwrap();
            Spi::run(&format!(
                "SELECT count(amba_assign('{key}', user_id)) FROM plan;
                 UPDATE amba.assignments a SET variant = p.variant, weight_version = p.version
                   FROM plan p, amba.experiments e
                  WHERE e.key = '{key}' AND a.experiment_id = e.id AND a.user_id = p.user_id;
                 SELECT count(amba_expose('{key}', user_id)) FROM plan WHERE exposed;
                 -- at now(), the assignment time: counts (at or after)
                 SELECT count(amba_track(user_id, 'buy')) FROM plan WHERE converts;
                 DROP TABLE plan;"
            ))
            .unwrap();
            let got = one::<pgrx::JsonB>(&format!(
                "SELECT jsonb_agg(to_jsonb(r) ORDER BY n) FROM amba_results('{key}', 'buy', {alpha:?}) WITH ORDINALITY AS r(variant, is_control,
                        assigned_count, exposed_count, converted_count, conversion_rate, z_score, p_value, lift, lift_ci_low,
                        lift_ci_high, chance_to_win, p_value_holm, sequential_p_value, srm_p_value, n)"
            ))
            .unwrap()
            .0;
            let got = got.as_array().unwrap();
            assert_eq!(got.len(), arms.len(), "{name}");
            for (i, ((n, x), row)) in arms.iter().zip(got).enumerate() {
                let want = &case["rows"][i];
                let what = |col: &str| format!("{name}: v{i}.{col}");
                assert_eq!(row["variant"], format!("v{i}"), "{name}");
                assert_eq!(row["is_control"], i == 0, "{name}");
                assert_eq!(row["assigned_count"], n + 2, "{}", what("assigned_count"));
                assert_eq!(row["exposed_count"], *n, "{}", what("exposed_count"));
                assert_eq!(row["converted_count"], *x, "{}", what("converted_count"));
                let half = match (want["lift_ci_low"].as_f64(), want["lift_ci_high"].as_f64()) {
                    (Some(lo), Some(hi)) => (hi - lo) / 2.0,
                    _ => 0.0,
                };
                for col in [
                    "conversion_rate",
                    "z_score",
                    "p_value",
                    "lift",
                    "chance_to_win",
                    "p_value_holm",
                    "sequential_p_value",
                ] {
                    assert_close(&what(col), &row[col], &want[col], 0.0);
                }
                // A bound near 0 has no relative precision: relative to the half-width too.
                for col in ["lift_ci_low", "lift_ci_high"] {
                    assert_close(&what(col), &row[col], &want[col], half);
                }
                assert_close(
                    &what("srm_p_value"),
                    &row["srm_p_value"],
                    &case["srm_p_value"],
                    0.0,
                );
            }
        }
    }

    #[pg_test]
    fn results_statistics_match_the_references() {
        results_match_reference_cases(&[
            "3 variants, alpha 0.1, #1 (300 users)",
            "4 variants, alpha 0.1, #2 (40 users)",
            "two users per arm, different",
            "small n (dof small, non-integer)",
            "small n, alpha 0.01",
            "treatment all converting",
            "one exposed user in a treatment",
            "SRM: weights 1:3",
        ]);
    }

    #[pg_test]
    fn results_holm_skips_null_rows_as_the_reference_does() {
        results_match_reference_cases(&["holm with a NULL row (m = 2 of 3)"]);
    }

    #[pg_test]
    fn results_srm_over_weight_versions_matches_the_reference() {
        results_match_reference_cases(&["re-weighted twice, same weights each time (= check_srm)"]);
    }

    #[pg_test]
    fn results_srm_leaves_out_a_variant_switched_off() {
        results_match_reference_cases(&["SRM: one variant switched off from the start"]);
    }

    #[pg_test]
    fn updates_reweight_add_and_guard_variants() {
        setup();
        create("u");
        Spi::run("SELECT amba_assign('u', 'u' || g) FROM generate_series(1, 50) g").unwrap();
        let added = one::<pgrx::JsonB>(
            r#"SELECT amba_update_experiment('u', '[{"key":"control","weight":1},{"key":"treatment","weight":1},{"key":"third","weight":0}]')"#,
        )
        .unwrap()
        .0;
        assert_eq!(added["variants"].as_array().unwrap().len(), 3);
        assert_eq!(added["weight_version"], 2);
        // Removing an assigned variant is refused; removing an unassigned one is fine.
        assert_err(
            r#"SELECT amba_update_experiment('u', '[{"key":"control","weight":1},{"key":"third","weight":1}]')"#,
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_eq!(
            err(
                r#"SELECT amba_update_experiment('u', '[{"key":"control","weight":1},{"key":"treatment","weight":1}]')"#
            ),
            "ok"
        );
        // The control stays first.
        assert_err(
            r#"SELECT amba_update_experiment('u', '[{"key":"treatment","weight":1},{"key":"control","weight":1}]')"#,
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err(
            "SELECT amba_update_experiment('u', status => 'bogus')",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err(
            "SELECT amba_update_experiment('missing', status => 'paused')",
            "P0002",
            "EXPERIMENT_NOT_FOUND",
        );
        // Every status to every other.
        for (from, to) in [
            ("active", "ended"),
            ("ended", "active"),
            ("active", "draft"),
            ("draft", "paused"),
            ("paused", "ended"),
            ("ended", "draft"),
            ("draft", "active"),
        ] {
            assert_eq!(text("SELECT amba_get_experiment('u')->>'status'"), from);
            assert_eq!(
                text(&format!(
                    "SELECT amba_update_experiment('u', status => '{to}')->>'status'"
                )),
                to
            );
        }
        let renamed = one::<pgrx::JsonB>(
            "SELECT amba_update_experiment('u', name => 'N', description => 'D')",
        )
        .unwrap()
        .0;
        assert_eq!(
            (renamed["name"].as_str(), renamed["description"].as_str()),
            (Some("N"), Some("D"))
        );
        // A status or name change keeps the weight version; weights did not change.
        assert_eq!(renamed["weight_version"], 3);
    }

    #[pg_test]
    fn delete_takes_assignments_and_exposures_but_not_events() {
        setup();
        create("d");
        Spi::run("SELECT amba_assign('d', 'u'), amba_expose('d', 'u'), amba_track('u', 'buy')")
            .unwrap();
        assert!(one::<bool>("SELECT amba_delete_experiment('d')").unwrap());
        assert!(!one::<bool>("SELECT amba_delete_experiment('d')").unwrap());
        assert_eq!(count("SELECT count(*) FROM amba.assignments"), 0);
        assert_eq!(count("SELECT count(*) FROM amba.exposures"), 0);
        assert_eq!(count("SELECT count(*) FROM amba.weight_versions"), 0);
        assert_eq!(count("SELECT count(*) FROM amba.events"), 1);
        assert_err(
            "SELECT amba_assign('d', 'u')",
            "P0002",
            "EXPERIMENT_NOT_FOUND",
        );
        // The key can be used again.
        create("d");
        assert_err(
            "SELECT amba_expose('d', 'u')",
            "P0002",
            "ASSIGNMENT_REQUIRED",
        );
    }

    #[pg_test]
    fn history_records_every_change() {
        setup();
        create("h");
        Spi::run("SELECT amba_update_experiment('h', status => 'paused')").unwrap();
        Spi::run("SELECT amba_delete_experiment('h')").unwrap();
        assert_eq!(
            text("SELECT string_agg(action, ',') FROM amba_experiment_history('h')"),
            "create,update,delete"
        );
        assert_eq!(
            count("SELECT count(*) FROM amba_experiment_history('h') WHERE action = 'create' AND before IS NULL AND after->>'status' = 'active'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM amba_experiment_history('h') WHERE action = 'update' AND before->>'status' = 'active' AND after->>'status' = 'paused'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM amba_experiment_history('h') WHERE action = 'delete' AND before->>'status' = 'paused' AND after IS NULL"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM amba_experiment_history('h') WHERE changed_by = session_user AND api_key_name IS NULL AND changed_at IS NOT NULL"),
            3
        );
        assert_eq!(
            count("SELECT count(*) FROM amba_experiment_history('never-used')"),
            0
        );
    }

    #[pg_test]
    fn api_keys_are_random_hashed_and_unique_by_name() {
        setup();
        let key = text("SELECT amba_create_api_key('web')");
        assert!(key.starts_with("amba_") && key.len() == 48, "{key}");
        assert!(key[5..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let other = text("SELECT amba_create_api_key('ops', 'admin')");
        assert_ne!(key, other);
        assert_eq!(count(&format!("SELECT count(*) FROM amba.api_keys WHERE key_hash = sha256('{key}'::bytea) AND kind = 'client'")), 1);
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM amba.api_keys WHERE position('{key}' IN key_hash::text) > 0"
            )),
            0
        );
        assert_err(
            "SELECT amba_create_api_key('web')",
            "23505",
            "API_KEY_EXISTS",
        );
        assert_err(
            "SELECT amba_create_api_key('x', 'root')",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err(
            "SELECT amba_create_api_key(NULL)",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert!(one::<bool>("SELECT amba_revoke_api_key('web')").unwrap());
        assert!(!one::<bool>("SELECT amba_revoke_api_key('web')").unwrap());
        assert!(!one::<bool>("SELECT amba_revoke_api_key('nobody')").unwrap());
        assert_err(
            "SELECT amba_create_api_key('web')",
            "23505",
            "API_KEY_EXISTS",
        );
    }

    #[pg_test]
    fn roles_and_row_level_security_exist() {
        assert_eq!(count("SELECT count(*) FROM pg_roles WHERE rolname IN ('amba_admin','amba_analyst','amba_client') AND NOT rolcanlogin"), 3);
        assert_eq!(
            count("SELECT count(*) FROM pg_class WHERE relnamespace = 'amba'::regnamespace AND relkind = 'r' AND NOT relrowsecurity"),
            0
        );
    }

    #[pg_test]
    fn srm_uses_the_weights_in_force_at_assignment() {
        setup();
        create("srm");
        Spi::run("SELECT amba_assign('srm', 'a' || g), amba_expose('srm', 'a' || g) FROM generate_series(1, 300) g").unwrap();
        Spi::run(r#"SELECT amba_update_experiment('srm', '[{"key":"control","weight":1},{"key":"treatment","weight":3}]')"#).unwrap();
        Spi::run("SELECT amba_assign('srm', 'b' || g), amba_expose('srm', 'b' || g) FROM generate_series(1, 300) g").unwrap();
        Spi::run(r#"SELECT amba_update_experiment('srm', '[{"key":"control","weight":3},{"key":"treatment","weight":1}]')"#).unwrap();
        Spi::run("SELECT amba_assign('srm', 'c' || g), amba_expose('srm', 'c' || g) FROM generate_series(1, 300) g").unwrap();
        // Independent reference, computed in Python: the users' variants by the published
        // bucketing with the `xxhash` package (a1..a300 at 1:1, b1..b300 at 1:3, c1..c300
        // at 3:1) give 484 control and 416 treatment; the expected counts from each user's
        // assignment-time weights are 150+75+225 = 450 and 150+225+75 = 450; X² =
        // 2 * 34² / 450 = 5.137777…, and scipy.stats.chi2.sf(X², 1) = 0.02341059616111667.
        // (Against the current weights 3:1 alone, 675/225, it would be p = 6.1e-49.)
        assert_eq!(
            count("SELECT count(*) FROM amba.assignments WHERE variant = 'control'"),
            484
        );
        assert_eq!(
            count("SELECT count(*) FROM amba.assignments WHERE variant = 'treatment'"),
            416
        );
        let want = 0.02341059616111667_f64;
        for (variant, got) in Spi::connect(|c| {
            c.select(
                "SELECT variant, srm_p_value FROM amba_results('srm', 'buy')",
                None,
                &[],
            )
            .unwrap()
            .map(|r| {
                (
                    r.get::<String>(1).unwrap().unwrap(),
                    r.get::<f64>(2).unwrap().unwrap(),
                )
            })
            .collect::<Vec<_>>()
        }) {
            assert!(
                (got - want).abs() <= 1e-9 * want,
                "{variant}: srm_p_value {got:e}, reference {want:e}"
            );
        }
        assert_eq!(
            count("SELECT count(DISTINCT weight_version) FROM amba.assignments"),
            3
        );
    }

    /// The columns a function returns (its RETURNS TABLE) as the catalog has them,
    /// "name type, …" in order.
    fn returned_columns(function: &str) -> String {
        text(&format!(
            "SELECT string_agg(a.arg_name || ' ' || format_type(a.arg_type, NULL), ', ' \
                               ORDER BY a.n) \
               FROM pg_proc p, \
                    unnest(p.proargnames, p.proallargtypes, p.proargmodes) \
                      WITH ORDINALITY AS a(arg_name, arg_type, arg_mode, n) \
              WHERE p.oid = '{function}'::regproc AND a.arg_mode = 't'"
        ))
    }

    /// `columns` as `returned_columns` spells them.
    fn column_list(columns: &[(&str, &str)]) -> String {
        columns
            .iter()
            .map(|(name, ty)| format!("{name} {ty}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The columns of each results function are declared once (`amba_core::columns`): the
    /// function pgrx declares, its twin in `amba` and the HTTP wrapper hand-written in
    /// sql/http.sql return exactly them, so none can drift from the others.
    #[pg_test]
    fn results_functions_return_the_declared_columns() {
        use amba_core::columns;
        let functions = [
            (
                "amba_results",
                "amba._results",
                "amba_api.experiments_results",
            ),
            (
                "amba_metric_results",
                "amba._metric_results",
                "amba_api.experiments_metric_results",
            ),
            (
                "amba_results_daily",
                "amba._results_daily",
                "amba_api.experiments_results_daily",
            ),
        ];
        assert_eq!(functions.len(), columns::RESULTS_FUNCTIONS.len());
        for (function, twin, http) in functions {
            let declared = columns::of(function).unwrap_or_else(|| panic!("{function}"));
            for f in [function, twin, http] {
                assert_eq!(
                    returned_columns(f),
                    column_list(declared),
                    "{f} returns the columns amba_core::columns declares for {function}"
                );
            }
        }
    }

    /// The report page reads amba._results and amba._results_daily with a column list of its
    /// own (`WITH ORDINALITY AS x(…)`): it names the declared columns, in order.
    #[pg_test]
    fn report_page_names_the_declared_columns() {
        use amba_core::columns::{DAILY_COLUMNS, RESULT_COLUMNS};
        let squeeze = |s: &str| s.split_whitespace().collect::<String>();
        let report = squeeze(include_str!("../sql/report.sql"));
        for (function, alias, columns) in [
            ("amba._results", "x", RESULT_COLUMNS),
            ("amba._results_daily", "d", DAILY_COLUMNS),
        ] {
            let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
            let read = format!(
                "{function}(experiment_key, conversion_event, alpha) \
                 WITH ORDINALITY AS {alias}({}, ord)",
                names.join(", ")
            );
            assert!(
                report.contains(&squeeze(&read)),
                "sql/report.sql reads {read}"
            );
        }
    }
}
