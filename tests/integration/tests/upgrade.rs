//! Version upgrades (SPEC §2 and §8): `ALTER EXTENSION amba UPDATE` from every released
//! version keeps all data and behaviour, and leaves the same schema as a fresh install.
//!
//! 0.1.0 is installed from its frozen install script (sql/amba--0.1.0.sql, exactly as
//! released) and filled the way 0.1.0 fills it: experiments, re-weighting, API keys and
//! history through its SQL functions; assignments, exposures and events as its hot path
//! wrote them, inserted so that each user holds a chosen variant at a chosen time. (0.1.0's
//! own functions keep working with this package installed, served by its own library
//! through the loader: tests/versions.rs.)

use amba_integration_tests::Db;
use postgres::Client;
use std::collections::BTreeSet;

/// Everything the extension creates, one line per fact, independent of creation order:
/// member objects, function definitions with owners and sorted ACLs, columns, constraints,
/// indexes, policies, table and schema ACLs, triggers, views, domains, dumped tables.
const CATALOG_SNAPSHOT: &str = r#"
WITH ext AS (SELECT oid, extconfig FROM pg_extension WHERE extname = 'amba'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
sorted_acl(oid, acl) AS (
    SELECT c.oid, coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(c.relacl) a), '')
      FROM pg_class c),
facts(line) AS (
    SELECT 'member ' || pg_describe_object(classid, objid, 0) FROM members
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text || ' owner=' || pg_get_userbyid(p.proowner)
           || ' acl=' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(p.proacl) a), '')
           || E'\n' || pg_get_functiondef(p.oid)
      FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
    UNION ALL
    SELECT 'column ' || a.attrelid::regclass::text || ' ' || a.attnum || ' ' || a.attname || ' '
           || format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
           || ' identity=' || a.attidentity::text || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
           || ' collation=' || coalesce((SELECT collname FROM pg_collation WHERE oid = a.attcollation), '')
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relnamespace IN ('amba'::regnamespace, 'amba_api'::regnamespace) AND a.attnum > 0
       AND NOT a.attisdropped AND c.relkind IN ('r', 'v')
    UNION ALL
    SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'amba'::regnamespace
    UNION ALL
    SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'amba'
    UNION ALL
    SELECT 'policy ' || tablename || ' ' || policyname || ' ' || cmd || ' ' || array_to_string(roles, ',')
           || ' using=' || coalesce(qual, '') || ' check=' || coalesce(with_check, '')
      FROM pg_policies WHERE schemaname = 'amba'
    UNION ALL
    SELECT 'table ' || c.oid::regclass::text || ' kind=' || c.relkind::text || ' owner=' || pg_get_userbyid(c.relowner)
           || ' rls=' || c.relrowsecurity || ' acl=' || s.acl
      FROM pg_class c JOIN sorted_acl s ON s.oid = c.oid
     WHERE c.relnamespace IN ('amba'::regnamespace, 'amba_api'::regnamespace) AND c.relkind IN ('r', 'v', 'S')
    UNION ALL
    SELECT 'schema ' || n.nspname || ' acl='
           || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(n.nspacl) a), '')
      FROM pg_namespace n WHERE n.nspname IN ('amba', 'amba_api')
    UNION ALL
    SELECT 'trigger ' || tgrelid::regclass::text || ' ' || pg_get_triggerdef(oid)
      FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'amba'::regnamespace)
    UNION ALL
    SELECT 'view ' || c.oid::regclass::text || E'\n' || pg_get_viewdef(c.oid)
      FROM pg_class c WHERE c.relnamespace = 'amba_api'::regnamespace AND c.relkind = 'v'
    UNION ALL
    SELECT 'type ' || t.oid::regtype::text || ' ' || format_type(t.typbasetype, t.typtypmod)
      FROM pg_type t WHERE t.typnamespace = 'amba_api'::regnamespace AND t.typtype = 'd'
    UNION ALL
    SELECT 'dumped ' || c::regclass::text FROM ext, unnest(ext.extconfig) c
    UNION ALL
    SELECT 'version ' || extversion FROM pg_extension WHERE extname = 'amba'
)
SELECT line FROM facts ORDER BY line
"#;

fn snapshot(client: &mut Client) -> BTreeSet<String> {
    client
        .query(CATALOG_SNAPSHOT, &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// Fills a 0.1.0 install the way 0.1.0 does.
fn fill_0_1_0(c: &mut Client) {
    c.batch_execute(
        r#"
        SELECT amba_create_experiment('checkout', '[{"key":"control","weight":1},{"key":"treatment","weight":1}]',
                                      'Checkout', 'One-page checkout');
        SELECT amba_update_experiment('checkout', '[{"key":"control","weight":3},{"key":"treatment","weight":1}]');
        SELECT amba_create_experiment('paused-one', '[{"key":"a","weight":1},{"key":"b","weight":1}]');
        SELECT amba_update_experiment('paused-one', status => 'paused');
        SELECT amba_create_experiment('gone', '[{"key":"a","weight":1},{"key":"b","weight":1}]');
        SELECT amba_delete_experiment('gone');
        SELECT amba_create_api_key('web', 'client');
        -- As 0.1.0's amba_assign / amba_expose / amba_track wrote them. u-sticky holds a
        -- variant its bucket would not give now: it must keep it.
        INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
        SELECT e.id, 'u' || i, CASE WHEN i % 4 = 0 THEN 'treatment' ELSE 'control' END,
               CASE WHEN i <= 50 THEN 1 ELSE 2 END, '2026-11-01 10:00+00'::timestamptz + i * interval '1 minute'
          FROM amba.experiments e, generate_series(1, 100) i WHERE e.key = 'checkout';
        INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
        SELECT experiment_id, user_id, assigned_at + interval '5 seconds' FROM amba.assignments WHERE user_id <> 'u7';
        INSERT INTO amba.events (user_id, event, occurred_at, properties)
        SELECT 'u' || i, 'purchase', '2026-11-02 10:00+00', jsonb_build_object('amount', i)
          FROM generate_series(1, 100) i WHERE i % 3 = 0;
        "#,
    )
    .unwrap();
}

const RESULTS: &str = "SELECT variant || ' ' || assigned_count || ' ' || exposed_count || ' ' || converted_count \
                       || ' ' || coalesce(p_value::text, 'null') || ' ' || coalesce(srm_p_value::text, 'null') \
                       FROM amba_results('checkout', 'purchase')";

fn texts(c: &mut Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[test]
fn update_from_0_1_0_keeps_data_and_equals_a_fresh_install() {
    let old = Db::new("amba_upgrade_from");
    let mut c = old.client();
    c.batch_execute("CREATE EXTENSION amba VERSION '0.1.0'")
        .unwrap();
    fill_0_1_0(&mut c);
    let counts = "SELECT (SELECT count(*) FROM amba.experiments) || ' ' || (SELECT count(*) FROM amba.assignments) \
                  || ' ' || (SELECT count(*) FROM amba.exposures) || ' ' || (SELECT count(*) FROM amba.events) \
                  || ' ' || (SELECT count(*) FROM amba.experiment_history) || ' ' || (SELECT count(*) FROM amba.api_keys) \
                  || ' ' || (SELECT count(*) FROM amba.weight_versions)";
    let before_counts = texts(&mut c, counts);
    let before_history = texts(&mut c, "SELECT action || ' ' || coalesce(after::text, before::text) FROM amba.experiment_history ORDER BY history_id");
    let before_assignments =
        texts(&mut c, "SELECT user_id || ' ' || variant || ' ' || weight_version || ' ' || assigned_at FROM amba.assignments ORDER BY user_id");

    c.batch_execute("ALTER EXTENSION amba UPDATE").unwrap();
    drop(c);
    let mut c = old.client();
    // Updated along every step to the version this package installs by default.
    let current = texts(
        &mut c,
        "SELECT default_version FROM pg_available_extensions WHERE name = 'amba'",
    );
    assert_eq!(
        texts(
            &mut c,
            "SELECT extversion FROM pg_extension WHERE extname = 'amba'"
        ),
        current
    );
    assert_eq!(texts(&mut c, counts), before_counts, "row counts changed");
    assert_eq!(texts(&mut c, "SELECT action || ' ' || coalesce(after::text, before::text) FROM amba.experiment_history ORDER BY history_id")
        .iter().map(|l| l.replace(r#", "bucketing_version": 1"#, "")).collect::<Vec<_>>(), before_history, "history changed");
    assert_eq!(
        texts(&mut c, "SELECT user_id || ' ' || variant || ' ' || weight_version || ' ' || assigned_at FROM amba.assignments ORDER BY user_id"),
        before_assignments
    );

    // Behaviour: every stored user keeps their variant; results count what 0.1.0 stored
    // (the same counts a hand count gives); new users are assigned; paused stays paused.
    let sticky: i64 = c
        .query_one(
            "SELECT count(*) FROM amba.assignments a WHERE amba_assign('checkout', a.user_id) = a.variant",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(sticky, 100);
    let results = texts(&mut c, RESULTS);
    let control: Vec<&str> = results[0].split(' ').collect();
    let treatment: Vec<&str> = results[1].split(' ').collect();
    // 25 treatment users (i % 4 = 0), 75 control; u7 (control) unexposed; converters i % 3 = 0.
    assert_eq!(
        &control[..4],
        [
            "control",
            "75",
            "74",
            &(1..=100)
                .filter(|i| i % 4 != 0 && i % 3 == 0 && *i != 7)
                .count()
                .to_string()
        ]
    );
    assert_eq!(
        &treatment[..4],
        [
            "treatment",
            "25",
            "25",
            &(1..=100)
                .filter(|i| i % 4 == 0 && i % 3 == 0)
                .count()
                .to_string()
        ]
    );
    let new_user: String = c
        .query_one("SELECT amba_assign('checkout', 'new-user')", &[])
        .unwrap()
        .get(0);
    assert!(["control", "treatment"].contains(&new_user.as_str()));
    let err = c
        .query_one("SELECT amba_assign('paused-one', 'someone')", &[])
        .unwrap_err();
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .starts_with("EXPERIMENT_INACTIVE:"));
    // 0.2.0 features on upgraded data.
    c.batch_execute("SELECT amba_set_override('checkout', 'qa', 'treatment')")
        .unwrap();
    let peek: Option<String> = c
        .query_one("SELECT amba_peek('checkout', 'u4')", &[])
        .unwrap()
        .get(0);
    assert_eq!(peek.as_deref(), Some("treatment"));
    let metric_rows = c
        .query(
            "SELECT * FROM amba_metric_results('checkout', 'purchase', 'amount')",
            &[],
        )
        .unwrap();
    assert_eq!(metric_rows.len(), 2);
    // The API key created under 0.1.0 still authenticates (its hash is unchanged).
    let keys: i64 = c
        .query_one(
            "SELECT count(*) FROM amba.api_keys WHERE name = 'web' AND revoked_at IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(keys, 1);
    // Append-only history after the update, too.
    c.batch_execute("SET ROLE amba_admin").unwrap();
    let err = c
        .execute("DELETE FROM amba.experiment_history", &[])
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    c.batch_execute("RESET ROLE").unwrap();

    // The schema equals a fresh 0.2.0 install.
    let fresh = Db::new("amba_upgrade_fresh");
    let mut f = fresh.client();
    f.batch_execute("CREATE EXTENSION amba").unwrap();
    let (upgraded, installed) = (snapshot(&mut c), snapshot(&mut f));
    let only_upgraded: Vec<_> = upgraded.difference(&installed).collect();
    let only_fresh: Vec<_> = installed.difference(&upgraded).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "schema after upgrade differs from a fresh install\n--- only after upgrade:\n{}\n--- only in a fresh install:\n{}",
        only_upgraded.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        only_fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    assert!(
        installed.len() > 200,
        "the snapshot sees too little: {}",
        installed.len()
    );
}

/// Fills a 0.2.0 install through 0.2.0's own functions (served by its library through the
/// loader): re-weighting, overrides, aliases, exposures, events with properties before and
/// after assignment (CUPED's pre-period), a paused experiment.
fn fill_0_2_0(c: &mut Client) {
    c.batch_execute(
        r#"
        SELECT amba_create_experiment('pricing', '[{"key":"control","weight":1},{"key":"cheap","weight":1},{"key":"dear","weight":1}]',
                                      'Pricing', 'Three prices');
        SELECT amba_track('p' || i, 'purchase', jsonb_build_object('amount', i % 17), clock_timestamp() - interval '3 days')
          FROM generate_series(1, 300) i WHERE i % 2 = 0;
        SELECT amba_assign('pricing', 'p' || i) FROM generate_series(1, 150) i;
        SELECT amba_update_experiment('pricing', '[{"key":"control","weight":2},{"key":"cheap","weight":1},{"key":"dear","weight":1}]');
        SELECT amba_assign('pricing', 'p' || i) FROM generate_series(151, 300) i;
        SELECT amba_expose('pricing', 'p' || i) FROM generate_series(1, 300) i WHERE i % 10 <> 0;
        SELECT amba_track('p' || i, 'purchase', jsonb_build_object('amount', (i * 7) % 23), clock_timestamp() + interval '1 second')
          FROM generate_series(1, 300) i WHERE i % 3 = 0;
        SELECT amba_set_override('pricing', 'qa-user', 'dear');
        SELECT amba_alias('anon-1', 'p5');
        SELECT amba_create_experiment('banner', '[{"key":"off","weight":1},{"key":"on","weight":1}]');
        SELECT amba_assign('banner', 'p' || i) FROM generate_series(1, 40) i;
        SELECT amba_update_experiment('banner', status => 'paused');
        "#,
    )
    .unwrap();
}

/// Every answer of the result functions, as JSON rows, for comparing before and after.
fn answers(c: &mut Client) -> Vec<serde_json::Value> {
    [
        "SELECT json_agg(r ORDER BY r.variant)::text FROM amba_results('pricing', 'purchase') r",
        "SELECT json_agg(r ORDER BY r.variant)::text FROM amba_metric_results('pricing', 'purchase', 'amount') r",
        "SELECT json_agg(r ORDER BY r.variant)::text FROM amba_metric_results('pricing', 'purchase', 'amount', cuped_days => 14) r",
        "SELECT json_agg(r ORDER BY r.day, r.variant)::text FROM amba_results_daily('pricing', 'purchase') r",
    ]
    .iter()
    .map(|sql| serde_json::from_str(&texts(c, sql)[0]).unwrap())
    .collect()
}

/// Equal JSON, numbers to 1e-12 relative (the statistics moved between modules in 0.3.0;
/// the formulas did not).
fn assert_same_answer(path: &str, before: &serde_json::Value, after: &serde_json::Value) {
    use serde_json::Value;
    match (before, after) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300),
                "{path}: {a} before the update, {b} after"
            );
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: row count");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same_answer(&format!("{path}[{i}]"), x, y);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            // 0.3.0 may add columns; every 0.2.0 column keeps its value.
            for (k, x) in a {
                assert_same_answer(&format!("{path}.{k}"), x, b.get(k).unwrap_or(&Value::Null));
            }
        }
        (a, b) => assert_eq!(a, b, "{path}"),
    }
}

#[test]
fn update_from_0_2_0_keeps_every_row_and_answer_and_0_3_0_features_work_on_old_experiments() {
    let db = Db::new("amba_upgrade_020");
    let mut c = db.client();
    c.batch_execute("CREATE EXTENSION amba VERSION '0.2.0'")
        .unwrap();
    fill_0_2_0(&mut c);
    let tables = [
        "experiments",
        "assignments",
        "exposures",
        "events",
        "experiment_history",
        "weight_versions",
        "overrides",
        "aliases",
    ];
    let rows = |c: &mut Client| -> Vec<String> {
        tables
            .iter()
            .map(|t| texts(c, &format!("SELECT '{t} ' || count(*) || ' ' || md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM amba.{t} x"))[0].clone())
            .collect()
    };
    let before_rows = rows(&mut c);
    let before_answers = answers(&mut c);
    let before_variants = texts(
        &mut c,
        "SELECT a.user_id || ' ' || a.variant FROM amba.assignments a ORDER BY 1",
    );

    c.batch_execute("ALTER EXTENSION amba UPDATE TO '0.3.0'")
        .unwrap();
    drop(c);
    let mut c = db.client();
    assert_eq!(
        texts(
            &mut c,
            "SELECT extversion FROM pg_extension WHERE extname = 'amba'"
        ),
        ["0.3.0"]
    );
    // Every row as it was (the experiments' new columns hold their defaults and are not
    // part of the 0.2.0 row text compared here: compared by count and the old columns).
    let after_rows = rows(&mut c);
    for (b, a) in before_rows.iter().zip(&after_rows) {
        if b.starts_with("experiments ") {
            assert_eq!(
                b.split(' ').nth(1),
                a.split(' ').nth(1),
                "experiments count"
            );
        } else {
            assert_eq!(b, a, "rows changed by the update");
        }
    }
    for (b, a) in answers(&mut c).iter().zip(&before_answers) {
        assert_same_answer("results", a, b);
    }
    // Sticky: every stored user gets the stored variant; the alias and override still apply.
    let sticky: i64 = c
        .query_one("SELECT count(*) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
                     WHERE e.key = 'pricing' AND amba_assign('pricing', a.user_id) <> a.variant", &[])
        .unwrap()
        .get(0);
    assert_eq!(sticky, 0);
    assert_eq!(
        texts(&mut c, "SELECT amba_assign('pricing', 'qa-user')"),
        ["dear"]
    );
    let p5 = before_variants
        .iter()
        .find(|l| l.starts_with("p5 "))
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        texts(&mut c, "SELECT amba_assign('pricing', 'anon-1')"),
        [p5]
    );
    assert!(c
        .query_one("SELECT amba_assign('banner', 'p999')", &[])
        .unwrap_err()
        .as_db_error()
        .unwrap()
        .message()
        .starts_with("EXPERIMENT_INACTIVE:"));

    // 0.3.0 on an experiment created under 0.2.0: its jsonb has the new keys at their
    // defaults; targeting, coverage and dimensions can be set and apply to new users only.
    let pricing: serde_json::Value =
        serde_json::from_str(&texts(&mut c, "SELECT amba_get_experiment('pricing')::text")[0])
            .unwrap();
    assert_eq!(pricing["coverage"], serde_json::json!(1));
    assert!(
        pricing["targeting"].is_null()
            && pricing["layer"].is_null()
            && pricing["holdout"].is_null()
    );
    c.batch_execute(
        r#"SELECT amba_update_experiment('pricing', targeting => '{"country": "DE"}', dimensions => ARRAY['country'])"#,
    )
    .unwrap();
    let new_user = |c: &mut Client, user: &str, country: &str| -> Option<String> {
        c.query_one(
            "SELECT amba_assign('pricing', $1, jsonb_build_object('country', $2::text))",
            &[&user, &country],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(
        new_user(&mut c, "new-fr", "FR"),
        None,
        "targeting applies to new users"
    );
    assert!(new_user(&mut c, "new-de", "DE").is_some());
    assert_eq!(
        new_user(&mut c, "p7", "FR").as_deref(),
        before_variants
            .iter()
            .find(|l| l.starts_with("p7 "))
            .unwrap()
            .split(' ')
            .nth(1),
        "an old user keeps the stored variant whatever the attributes"
    );
    assert_eq!(
        texts(
            &mut c,
            "SELECT count(*)::text FROM amba.assignment_dimensions"
        ),
        ["1"],
        "dimensions stored for the one new user only"
    );
    // A layer and a holdout created after the update work beside the old experiments.
    c.batch_execute(
        r#"SELECT amba_create_experiment('hold', '[{"key":"control","weight":1},{"key":"released","weight":9}]');
           SELECT amba_create_experiment('in-layer', '[{"key":"a","weight":1},{"key":"b","weight":1}]',
                                         layer => 'checkout', layer_share => 0.5, holdout => 'hold');"#,
    )
    .unwrap();
    let enrolled: i64 = c
        .query_one(
            "SELECT count(amba_assign('in-layer', 'n' || i)) FROM generate_series(1, 400) i",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        (100..=260).contains(&enrolled),
        "about 0.5 × 0.9 of 400 enrolled, got {enrolled}"
    );
}
