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
        let got = one::<pgrx::JsonB>("SELECT amba_get_experiment('checkout')").unwrap().0;
        assert_eq!(got, created);
        assert!(one::<pgrx::JsonB>("SELECT amba_get_experiment('nope')").is_none());
        create("second");
        assert_eq!(
            text("SELECT string_agg(e->>'key', ',') FROM amba_list_experiments() e"),
            "checkout,second"
        );
        let draft = one::<pgrx::JsonB>(&format!("SELECT amba_create_experiment('d', {AB}, status => 'draft')")).unwrap().0;
        assert_eq!(draft["status"], "draft");
    }

    #[pg_test]
    fn create_errors_leave_nothing_behind() {
        setup();
        create("taken");
        assert_err(&format!("SELECT amba_create_experiment('taken', {AB})"), "23505", "EXPERIMENT_EXISTS");
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
            assert_err(&format!("SELECT amba_create_experiment('new', {variants})"), "22023", "INVALID_ARGUMENT");
        }
        for key in ["NULL", "''", "'has space'", "'ü'", &format!("'{}'", "k".repeat(129))] {
            assert_err(&format!("SELECT amba_create_experiment({key}, {AB})"), "22023", "INVALID_ARGUMENT");
        }
        assert_err(&format!("SELECT amba_create_experiment('new', {AB}, status => 'running')"), "22023", "INVALID_ARGUMENT");
        assert_err(&format!("SELECT amba_create_experiment('new', {AB}, status => NULL)"), "22023", "INVALID_ARGUMENT");
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
            Spi::run(&format!("SELECT amba_update_experiment('sticky', {change})")).unwrap();
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
            Spi::run(&format!("SELECT amba_update_experiment('s', status => '{status}')")).unwrap();
            assert_err("SELECT amba_assign('s', 'new')", "55000", "EXPERIMENT_INACTIVE");
            assert!(err("SELECT amba_assign('s', 'new')").contains(status));
            assert_eq!(err("SELECT amba_assign('s', 'old')"), "ok");
            assert_eq!(err("SELECT amba_expose('s', 'old')"), "ok");
        }
        Spi::run("SELECT amba_update_experiment('s', status => 'active')").unwrap();
        assert_eq!(err("SELECT amba_assign('s', 'new')"), "ok");
    }

    #[pg_test]
    fn assignment_follows_the_published_bucketing() {
        setup();
        Spi::run(r#"SELECT amba_create_experiment('b', '[{"key":"a","weight":1},{"key":"b","weight":2},{"key":"c","weight":1}]')"#).unwrap();
        let mismatches = count(
            "SELECT count(*) FROM generate_series(1, 2000) g,
                    LATERAL (SELECT amba_bucket('b', 'user-' || g) AS x) b
              WHERE amba_assign('b', 'user-' || g) <>
                    CASE WHEN b.x < 0.25 THEN 'a' WHEN b.x < 0.75 THEN 'b' ELSE 'c' END",
        );
        assert_eq!(mismatches, 0);
        let bucket = one::<f64>("SELECT amba_bucket('exp', 'user')").unwrap();
        assert_eq!(bucket, amba_core::bucket::bucket("exp", "user"));
        assert_eq!(text("SELECT provolatile::text FROM pg_proc WHERE proname = 'amba_bucket'"), "i");
        // amba_bucket needs no experiment.
        assert!(one::<f64>("SELECT amba_bucket('never-created', 'x')").is_some());
    }

    #[pg_test]
    fn assign_and_expose_errors() {
        setup();
        create("e");
        assert_err("SELECT amba_assign('missing', 'u')", "P0002", "EXPERIMENT_NOT_FOUND");
        assert_err("SELECT amba_expose('missing', 'u')", "P0002", "EXPERIMENT_NOT_FOUND");
        assert_err("SELECT amba_expose('e', 'u')", "P0002", "ASSIGNMENT_REQUIRED");
        for user in ["NULL", "''", &format!("'{}'", "é".repeat(513))] {
            assert_err(&format!("SELECT amba_assign('e', {user})"), "22023", "INVALID_ARGUMENT");
            assert_err(&format!("SELECT amba_expose('e', {user})"), "22023", "INVALID_ARGUMENT");
            assert_err(&format!("SELECT amba_bucket('e', {user})"), "22023", "INVALID_ARGUMENT");
        }
        assert_err("SELECT amba_assign(NULL, 'u')", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_assign('bad key', 'u')", "22023", "INVALID_ARGUMENT");
        // 512 characters of any text, untrimmed, are a valid user id.
        assert_eq!(err(&format!("SELECT amba_assign('e', '{}')", "é".repeat(512))), "ok");
        assert_eq!(err("SELECT amba_assign('e', ' padded ')"), "ok");
        assert_eq!(count("SELECT count(*) FROM amba.assignments WHERE user_id = ' padded '"), 1);
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
        assert_eq!(count("SELECT count(*) FROM amba.exposures WHERE exposed_at = '2020-01-01'"), 1);
        Spi::run("SELECT amba_update_experiment('x', status => 'ended')").unwrap();
        assert_eq!(text("SELECT amba_expose('x', 'u')"), v);
    }

    #[pg_test]
    fn track_stores_events() {
        setup();
        assert_eq!(
            text("SELECT amba_track('u', 'purchase', '{\"amount\": 3}', '2024-05-01 10:00+00')::text"),
            "2024-05-01 10:00:00+00"
        );
        assert!(one::<bool>("SELECT amba_track('u', 'purchase') = now()").unwrap());
        assert_eq!(count("SELECT count(*) FROM amba.events WHERE user_id = 'u'"), 2);
        assert_err("SELECT amba_track('u', 'e', '[1]')", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_track('u', 'e', '\"s\"')", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_track('u', E'a\\nb')", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_track('u', '')", "22023", "INVALID_ARGUMENT");
        assert_err(&format!("SELECT amba_track('u', '{}')", "e".repeat(129)), "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_track('', 'e')", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_track(NULL, 'e')", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_track('u', 'e', NULL, 'infinity')", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_track('u', 'e', NULL, '-infinity')", "22023", "INVALID_ARGUMENT");
        assert_err(
            "SELECT amba_track('u', 'e', jsonb_build_object('big', repeat('x', 70000)))",
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_eq!(count("SELECT count(*) FROM amba.events"), 2);
        assert_eq!(err(&format!("SELECT amba_track('u', '{}', NULL)", "é".repeat(128))), "ok");
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
        Spi::run("SELECT amba_expose('r', u) FROM unnest(ARRAY['u1','u2','u4','u5','u6']) u").unwrap();
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
        assert_eq!(rows, "control t 3 2 1 0.5; treatment f 3 3 1 0.3333333333333333");
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
        assert_eq!(count("SELECT count(*) FROM amba_results('n', 'buy') WHERE is_control"), 1);
        assert_err("SELECT * FROM amba_results('missing', 'buy')", "P0002", "EXPERIMENT_NOT_FOUND");
        assert_err("SELECT * FROM amba_results('n', NULL)", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT * FROM amba_results('n', '')", "22023", "INVALID_ARGUMENT");
        for alpha in ["0", "1", "-0.1", "1.5", "'NaN'", "NULL", "'Infinity'"] {
            assert_err(&format!("SELECT * FROM amba_results('n', 'buy', {alpha})"), "22023", "INVALID_ARGUMENT");
        }
        assert_eq!(err("SELECT * FROM amba_results('n', 'buy', 0.01)"), "ok");
    }

    #[pg_test]
    fn results_statistics_match_the_core() {
        setup();
        create("z");
        Spi::run("SELECT amba_assign('z', 'u' || g), amba_expose('z', 'u' || g) FROM generate_series(1, 400) g").unwrap();
        Spi::run("SELECT amba_track('u' || g, 'buy') FROM generate_series(1, 400) g WHERE g % 3 = 0 OR (g % 5 = 0 AND amba_assign('z', 'u' || g) = 'treatment')").unwrap();
        let (nc, xc) = (count("SELECT exposed_count FROM amba_results('z','buy') WHERE is_control"), count("SELECT converted_count FROM amba_results('z','buy') WHERE is_control"));
        let (nt, xt) = (count("SELECT exposed_count FROM amba_results('z','buy') WHERE NOT is_control"), count("SELECT converted_count FROM amba_results('z','buy') WHERE NOT is_control"));
        let expected = amba_core::stats::z_test(
            amba_core::stats::Arm::new(nc as u64, xc as u64),
            amba_core::stats::Arm::new(nt as u64, xt as u64),
        )
        .unwrap();
        let z = one::<f64>("SELECT z_score FROM amba_results('z','buy') WHERE NOT is_control").unwrap();
        let p = one::<f64>("SELECT p_value FROM amba_results('z','buy') WHERE NOT is_control").unwrap();
        assert_eq!((z, p), (expected.z_score, expected.p_value));
        let srm = one::<f64>("SELECT srm_p_value FROM amba_results('z','buy') WHERE is_control").unwrap();
        assert!(srm > 0.0 && srm <= 1.0);
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
            err(r#"SELECT amba_update_experiment('u', '[{"key":"control","weight":1},{"key":"treatment","weight":1}]')"#),
            "ok"
        );
        // The control stays first.
        assert_err(
            r#"SELECT amba_update_experiment('u', '[{"key":"treatment","weight":1},{"key":"control","weight":1}]')"#,
            "22023",
            "INVALID_ARGUMENT",
        );
        assert_err("SELECT amba_update_experiment('u', status => 'bogus')", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_update_experiment('missing', status => 'paused')", "P0002", "EXPERIMENT_NOT_FOUND");
        // Every status to every other.
        for (from, to) in [("active", "ended"), ("ended", "active"), ("active", "draft"), ("draft", "paused"), ("paused", "ended"), ("ended", "draft"), ("draft", "active")] {
            assert_eq!(text("SELECT amba_get_experiment('u')->>'status'"), from);
            assert_eq!(text(&format!("SELECT amba_update_experiment('u', status => '{to}')->>'status'")), to);
        }
        let renamed = one::<pgrx::JsonB>("SELECT amba_update_experiment('u', name => 'N', description => 'D')").unwrap().0;
        assert_eq!((renamed["name"].as_str(), renamed["description"].as_str()), (Some("N"), Some("D")));
        // A status or name change keeps the weight version; weights did not change.
        assert_eq!(renamed["weight_version"], 3);
    }

    #[pg_test]
    fn delete_takes_assignments_and_exposures_but_not_events() {
        setup();
        create("d");
        Spi::run("SELECT amba_assign('d', 'u'), amba_expose('d', 'u'), amba_track('u', 'buy')").unwrap();
        assert!(one::<bool>("SELECT amba_delete_experiment('d')").unwrap());
        assert!(!one::<bool>("SELECT amba_delete_experiment('d')").unwrap());
        assert_eq!(count("SELECT count(*) FROM amba.assignments"), 0);
        assert_eq!(count("SELECT count(*) FROM amba.exposures"), 0);
        assert_eq!(count("SELECT count(*) FROM amba.weight_versions"), 0);
        assert_eq!(count("SELECT count(*) FROM amba.events"), 1);
        assert_err("SELECT amba_assign('d', 'u')", "P0002", "EXPERIMENT_NOT_FOUND");
        // The key can be used again.
        create("d");
        assert_err("SELECT amba_expose('d', 'u')", "P0002", "ASSIGNMENT_REQUIRED");
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
        assert_eq!(count("SELECT count(*) FROM amba_experiment_history('never-used')"), 0);
    }

    #[pg_test]
    fn api_keys_are_random_hashed_and_unique_by_name() {
        setup();
        let key = text("SELECT amba_create_api_key('web')");
        assert!(key.starts_with("amba_") && key.len() == 48, "{key}");
        assert!(key[5..].chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let other = text("SELECT amba_create_api_key('ops', 'admin')");
        assert_ne!(key, other);
        assert_eq!(count(&format!("SELECT count(*) FROM amba.api_keys WHERE key_hash = sha256('{key}'::bytea) AND kind = 'client'")), 1);
        assert_eq!(count(&format!("SELECT count(*) FROM amba.api_keys WHERE position('{key}' IN key_hash::text) > 0")), 0);
        assert_err("SELECT amba_create_api_key('web')", "23505", "API_KEY_EXISTS");
        assert_err("SELECT amba_create_api_key('x', 'root')", "22023", "INVALID_ARGUMENT");
        assert_err("SELECT amba_create_api_key(NULL)", "22023", "INVALID_ARGUMENT");
        assert!(one::<bool>("SELECT amba_revoke_api_key('web')").unwrap());
        assert!(!one::<bool>("SELECT amba_revoke_api_key('web')").unwrap());
        assert!(!one::<bool>("SELECT amba_revoke_api_key('nobody')").unwrap());
        assert_err("SELECT amba_create_api_key('web')", "23505", "API_KEY_EXISTS");
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
        // Recompute from each user's assignment-time weights.
        let observed_control = count("SELECT count(*) FROM amba.assignments WHERE variant = 'control'") as f64;
        let observed_treatment = 900.0 - observed_control;
        let expected = [150.0 + 75.0 + 225.0, 150.0 + 225.0 + 75.0];
        let want = amba_core::stats::srm_p_value(&[observed_control, observed_treatment], &expected).unwrap();
        let got = one::<f64>("SELECT srm_p_value FROM amba_results('srm', 'buy') LIMIT 1").unwrap();
        assert!((got - want).abs() <= 1e-12 * want.max(1e-300), "{got} vs {want}");
        assert_eq!(count("SELECT count(DISTINCT weight_version) FROM amba.assignments"), 3);
    }
}
