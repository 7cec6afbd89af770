//! Inputs at the limits through SQL (SPEC §3, §3d, §4, §5; issue 17 and related gaps).
//!
//! Every refusal is checked for its exact SQLSTATE and for a message that begins with the
//! contract code. A test does not stop at the first broken rule: it collects every
//! violation and fails once, listing them all (function, input, got, expected).
//!
//! Tests that count whole tables, draw many API keys or reuse fixed experiment keys work in
//! a database of their own, so they neither disturb nor are disturbed by the other tests.

use amba_integration_tests::{connect, connect_db, unique, Db};
use postgres::types::ToSql;
use postgres::{Client, Row};
use std::collections::{BTreeSet, HashSet};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A string of exactly `n` characters: `prefix` padded with `fill`.
fn pad(prefix: &str, fill: char, n: usize) -> String {
    let have = prefix.chars().count();
    assert!(have <= n, "prefix {prefix:?} longer than {n}");
    let mut s = prefix.to_string();
    s.extend(std::iter::repeat(fill).take(n - have));
    s
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        out.push_str(&format!("…({} chars)", s.chars().count()));
    }
    out
}

/// Runs calls against one session and collects contract violations instead of panicking.
struct Check {
    client: Client,
    reconnect: Box<dyn Fn() -> Client>,
    failures: Vec<String>,
}

impl Check {
    fn new(reconnect: impl Fn() -> Client + 'static) -> Check {
        Check {
            client: reconnect(),
            reconnect: Box::new(reconnect),
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, msg: String) {
        eprintln!("VIOLATION: {msg}");
        self.failures.push(msg);
    }

    fn run(&mut self, sql: &str, params: Params) -> Result<Vec<Row>, postgres::Error> {
        let out = self.client.query(sql, params);
        if self.client.is_closed() {
            self.failures
                .push(format!("{sql}: the session was lost (backend crash?)"));
            self.client = (self.reconnect)();
        }
        out
    }

    /// The call must fail with `state` and a message starting with `code:` (empty code:
    /// no contract code expected, only the SQLSTATE).
    fn refused(&mut self, what: &str, sql: &str, params: Params, state: &str, code: &str) {
        match self.run(sql, params) {
            Ok(rows) => {
                let got: Vec<String> = rows.iter().map(|r| format!("{r:?}")).take(2).collect();
                let got = rows
                    .first()
                    .and_then(|r| r.try_get::<_, Option<String>>(0).ok())
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_else(|| format!("{} row(s) {got:?}", rows.len()));
                self.fail(format!(
                    "{what}: accepted (returned {got}); expected {state} {code}"
                ));
            }
            Err(e) => match e.as_db_error() {
                Some(d) => {
                    let (s, m) = (d.code().code(), d.message());
                    let prefix_ok = code.is_empty() || m.starts_with(&format!("{code}:"));
                    if s != state || !prefix_ok {
                        self.fail(format!("{what}: got {s} {m:?}; expected {state} {code}"));
                    }
                }
                None => self.fail(format!(
                    "{what}: not a database error: {e}; expected {state} {code}"
                )),
            },
        }
    }

    /// The call must succeed; returns its rows.
    fn accepted(&mut self, what: &str, sql: &str, params: Params) -> Option<Vec<Row>> {
        match self.run(sql, params) {
            Ok(rows) => Some(rows),
            Err(e) => {
                let got = match e.as_db_error() {
                    Some(d) => format!("{} {:?}", d.code().code(), d.message()),
                    None => e.to_string(),
                };
                self.fail(format!("{what}: refused with {got}; expected success"));
                None
            }
        }
    }

    /// The call must succeed and return `expected` (as text) in its first row's column.
    fn returns(&mut self, what: &str, sql: &str, params: Params, expected: Option<&str>) {
        if let Some(rows) = self.accepted(what, sql, params) {
            let got = rows.first().map(|r| r.get::<_, Option<String>>(0));
            if got.as_ref().map(|g| g.as_deref()) != Some(expected) {
                self.fail(format!("{what}: returned {got:?}; expected {expected:?}"));
            }
        }
    }

    fn expect(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            let m = msg();
            self.fail(m);
        }
    }

    fn finish(self, test: &str) {
        assert!(
            self.failures.is_empty(),
            "{test}: {} contract violation(s):\n  - {}",
            self.failures.len(),
            self.failures.join("\n  - ")
        );
    }
}

const AB: &str = r#"[{"key":"a","weight":1},{"key":"b","weight":1}]"#;

fn create(c: &mut Client, key: &str, variants: &str) {
    c.query_one(
        "SELECT amba_create_experiment($1, $2::text::jsonb)",
        &[&key, &variants],
    )
    .unwrap_or_else(|e| panic!("create {key}: {e}"));
}

// ---------------------------------------------------------------------------------------
// amba_track: properties, event names, occurred_at
// ---------------------------------------------------------------------------------------

#[test]
fn track_properties_at_64_kib_and_only_objects_or_null() {
    let mut ck = Check::new(connect);
    let user = unique("props");
    let track = "SELECT amba_track($1, 'props_ev', $2::text::jsonb)::text";

    // Objects of exactly 65536 and 65537 bytes of JSON text (jsonb's canonical text), once
    // with ASCII and once with two-byte characters.
    for (fill, label) in [("x", "ascii"), ("é", "two-byte")] {
        for (extra, ok) in [(0i32, true), (1, false)] {
            let target = 65536 + extra;
            // '{"p": ""}' is 9 bytes; the fill makes up the rest.
            let room = target - 9;
            let fill_bytes = fill.len() as i32;
            let text = format!(
                "{{\"p\": \"{}{}\"}}",
                fill.repeat((room / fill_bytes) as usize),
                "y".repeat((room % fill_bytes) as usize)
            );
            let len: i32 = ck
                .client
                .query_one("SELECT octet_length($1::text::jsonb::text)", &[&text])
                .unwrap()
                .get(0);
            assert_eq!(
                len, target,
                "test setup: {label} properties of {target} bytes"
            );
            let what = format!("amba_track(properties = {label} object, octet_length(properties::text) = {target})");
            if ok {
                ck.accepted(&what, track, &[&user, &text]);
            } else {
                ck.refused(&what, track, &[&user, &text], "22023", "INVALID_ARGUMENT");
            }
        }
    }
    // Also the limit is on the whole object, not on one value: many keys.
    let many: String = ck
        .client
        .query_one(
            "SELECT (SELECT jsonb_object_agg('k' || i, repeat('z', 100)) FROM generate_series(1, 700) i)::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(many.len() > 65536);
    ck.refused(
        "amba_track(properties = object of 700 keys, > 64 KiB)",
        track,
        &[&user, &many],
        "22023",
        "INVALID_ARGUMENT",
    );

    for (json, label) in [
        ("5", "a JSON number"),
        ("0", "the JSON number 0"),
        ("\"text\"", "a JSON string"),
        ("\"\"", "an empty JSON string"),
        ("true", "JSON true"),
        ("false", "JSON false"),
        ("[]", "an empty JSON array"),
        ("[1, {\"a\": 2}]", "a JSON array"),
        ("null", "JSON null"),
    ] {
        ck.refused(
            &format!("amba_track(properties = {label}: {json})"),
            track,
            &[&user, &json],
            "22023",
            "INVALID_ARGUMENT",
        );
    }
    ck.accepted(
        "amba_track(properties = SQL NULL)",
        "SELECT amba_track($1, 'props_ev', NULL)::text",
        &[&user],
    );
    ck.accepted("amba_track(properties = {})", track, &[&user, &"{}"]);
    ck.accepted(
        "amba_track(properties = nested object)",
        track,
        &[&user, &r#"{"a": {"b": [1, null, "c"]}, "n": null}"#],
    );

    // Exactly the accepted calls were stored: two 64 KiB objects, NULL, {}, nested.
    let stored: i64 = ck
        .client
        .query_one(
            "SELECT count(*) FROM amba.events WHERE user_id = $1",
            &[&user],
        )
        .unwrap()
        .get(0);
    ck.expect(stored == 5, || format!("amba_track: {stored} events stored for the accepted calls; expected 5 (refused calls must store nothing)"));
    let nulls: i64 = ck
        .client
        .query_one(
            "SELECT count(*) FROM amba.events WHERE user_id = $1 AND properties IS NULL",
            &[&user],
        )
        .unwrap()
        .get(0);
    ck.expect(nulls == 1, || {
        format!(
            "amba_track(properties = SQL NULL): {nulls} events with NULL properties; expected 1"
        )
    });
    ck.finish("track_properties");
}

/// A mean guardrail on the `v` of `rev` events.
const MEAN_GUARDRAIL: &str =
    r#"[{"event": "rev", "value_property": "v", "kind": "mean", "bad": "decrease"}]"#;

/// `amba_check_guardrails()`'s rows as (experiment, lift and both bounds NULL, tripped).
fn guardrail_rows(c: &mut Client) -> Vec<(String, bool, bool)> {
    c.query(
        "SELECT experiment_key, lift IS NULL AND cs_low IS NULL AND cs_high IS NULL, tripped
           FROM amba_check_guardrails() ORDER BY experiment_key",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Property values amba_track accepts (any JSON number) but double precision cannot hold,
/// or whose squares overflow it: every statistic an analyst asks for is INVALID_ARGUMENT
/// naming the values (not a bare 22003); the guardrail check, which pg_cron runs over every
/// experiment at once, answers NULL (never trips) for that experiment alone and checks the
/// others; values within range compute again.
#[test]
fn values_beyond_double_precision_are_refused_by_results_and_isolated_by_guardrails() {
    let db = Db::with_amba("limits_huge");
    let mut c = db.client();
    let guardrails = MEAN_GUARDRAIL;
    let bandit = r#"{"event": "rev", "kind": "mean", "value_property": "v"}"#;
    c.batch_execute(&format!(
        "SELECT amba_create_experiment('huge', '{AB}', guardrails => '{guardrails}');
         SELECT amba_create_experiment('huge_bandit', '{AB}', bandit => '{bandit}');
         SELECT amba_create_experiment('calm', '{AB}', guardrails => '{guardrails}');
         SELECT amba_assign('calm', 'c' || g), amba_expose('calm', 'c' || g),
                amba_track('c' || g, 'rev', jsonb_build_object('v', g % 7))
           FROM generate_series(1, 40) g;"
    ))
    .unwrap();
    for (i, value) in ["1e200", "1e400", "-1e400", "5"].iter().enumerate() {
        let u = format!("u{i}");
        c.query_one(
            "SELECT amba_assign('huge', $1), amba_expose('huge', $1),
                    amba_assign('huge_bandit', $1), amba_expose('huge_bandit', $1)",
            &[&u],
        )
        .unwrap();
        if i == 0 {
            // One value whose square overflows: the sums of squares cannot be computed.
            c.query_one(
                "SELECT amba_track($1, 'rev', $2::text::jsonb)",
                &[&u, &format!("{{\"v\": {value}}}")],
            )
            .unwrap();
            for sql in [
                "SELECT * FROM amba_metric_results('huge', 'rev', 'v')",
                "SELECT * FROM amba_ratio_results('huge', 'rev', 'v', 'rev', NULL)",
                "SELECT * FROM amba_bandit_results('huge_bandit')",
            ] {
                let m = amba_integration_tests::invalid_argument(&mut c, sql, &[]);
                assert!(
                    m.contains("values") && m.contains("double precision"),
                    "{sql}: {m}"
                );
            }
            assert_eq!(
                guardrail_rows(&mut c),
                [
                    ("calm".to_string(), false, false),
                    ("huge".to_string(), true, false)
                ]
            );
            // The quantile needs no squares: it is computed.
            c.query(
                "SELECT * FROM amba_quantile_results('huge', 'rev', 'v', 0.5)",
                &[],
            )
            .unwrap();
            c.batch_execute("DELETE FROM amba.events WHERE user_id = 'u0'")
                .unwrap();
        } else {
            c.query_one(
                "SELECT amba_track($1, 'rev', $2::text::jsonb)",
                &[&u, &format!("{{\"v\": {value}}}")],
            )
            .unwrap();
        }
    }
    // Values beyond float8 itself (1e400): even reading them fails, in every statistic.
    for sql in [
        "SELECT * FROM amba_metric_results('huge', 'rev', 'v')",
        "SELECT * FROM amba_quantile_results('huge', 'rev', 'v', 0.5)",
        "SELECT * FROM amba_ratio_results('huge', 'rev', 'v', 'rev', NULL)",
        "SELECT * FROM amba_bandit_results('huge_bandit')",
    ] {
        let m = amba_integration_tests::invalid_argument(&mut c, sql, &[]);
        assert!(m.contains("double precision"), "{sql}: {m}");
    }
    assert_eq!(
        guardrail_rows(&mut c),
        [
            ("calm".to_string(), false, false),
            ("huge".to_string(), true, false)
        ]
    );
    // Within range again: computed.
    c.batch_execute("DELETE FROM amba.events WHERE abs((properties->>'v')::numeric) > 1e300")
        .unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM amba_metric_results('huge', 'rev', 'v') WHERE mean IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(n >= 1);
}

#[test]
fn track_event_names_and_occurred_at() {
    let mut ck = Check::new(connect);
    let user = unique("evname");
    let track = "SELECT amba_track($1, $2)::text";

    for (ev, label) in [
        ("buy\u{7f}".to_string(), "DEL U+007F"),
        ("buy\u{85}".to_string(), "NEL U+0085 (C1)"),
        ("buy\u{9b}".to_string(), "CSI U+009B (C1)"),
        ("\u{80}buy".to_string(), "U+0080 (C1)"),
        ("buy\u{9f}".to_string(), "U+009F (C1)"),
        ("buy\tnow".to_string(), "tab"),
        ("buy\n".to_string(), "newline"),
        ("buy\rnow".to_string(), "carriage return"),
        ("\u{1}buy".to_string(), "U+0001"),
        ("buy\u{1b}[0m".to_string(), "ESC U+001B"),
        (pad("é", '\u{85}', 5), "only C1 after é"),
        (String::new(), "empty"),
    ] {
        ck.refused(
            &format!("amba_track(event = {label}: {ev:?})"),
            track,
            &[&user, &ev],
            "22023",
            "INVALID_ARGUMENT",
        );
    }
    ck.refused(
        "amba_track(event = NULL)",
        "SELECT amba_track($1, NULL)::text",
        &[&user],
        "22023",
        "INVALID_ARGUMENT",
    );

    // Length counts characters, not bytes.
    for fill in ['e', 'é', '用', '😀'] {
        let ok = pad("ev", fill, 128);
        let too_long = pad("ev", fill, 129);
        ck.accepted(
            &format!(
                "amba_track(event = 128 characters of {fill:?}, {} bytes)",
                ok.len()
            ),
            track,
            &[&user, &ok],
        );
        ck.refused(
            &format!(
                "amba_track(event = 129 characters of {fill:?}, {} bytes)",
                too_long.len()
            ),
            track,
            &[&user, &too_long],
            "22023",
            "INVALID_ARGUMENT",
        );
    }
    // Not control characters: no-break space (first code point after C1), spaces, quotes.
    for ev in ["\u{a0}buy", "buy now", "\"; DROP TABLE x; --", "ü"] {
        ck.accepted(&format!("amba_track(event = {ev:?})"), track, &[&user, &ev]);
    }

    // occurred_at NULL means now; an explicit time is stored as given; ±infinity refused.
    let mut tx = ck.client.transaction().unwrap();
    let row = tx
        .query_one(
            "SELECT t >= now() AND t <= clock_timestamp(), t::text FROM (SELECT amba_track($1, 'at_ev', NULL, NULL) AS t) s",
            &[&user],
        )
        .unwrap();
    let (now_ok, got): (bool, String) = (row.get(0), row.get(1));
    tx.commit().unwrap();
    ck.expect(now_ok, || {
        format!("amba_track(occurred_at = NULL): returned {got}; expected now()")
    });
    let stored_now: bool = ck
        .client
        .query_one(
            "SELECT count(*) = 1 AND bool_and(occurred_at = $2::text::timestamptz) FROM amba.events WHERE user_id = $1 AND event = 'at_ev'",
            &[&user, &got],
        )
        .unwrap()
        .get(0);
    ck.expect(stored_now, || {
        "amba_track(occurred_at = NULL): stored time differs from the returned one".into()
    });
    ck.returns(
        "amba_track(occurred_at = 2020-01-02 03:04:05.123456+00)",
        "SELECT (amba_track($1, 'at_ev2', NULL, '2020-01-02 03:04:05.123456+00') = '2020-01-02 03:04:05.123456+00'::timestamptz)::text",
        &[&user],
        Some("true"),
    );
    for inf in ["infinity", "-infinity"] {
        ck.refused(
            &format!("amba_track(occurred_at = {inf})"),
            &format!("SELECT amba_track($1, 'at_ev3', NULL, '{inf}'::timestamptz)::text"),
            &[&user],
            "22023",
            "INVALID_ARGUMENT",
        );
    }
    let inf_stored: i64 = ck
        .client
        .query_one(
            "SELECT count(*) FROM amba.events WHERE user_id = $1 AND event = 'at_ev3'",
            &[&user],
        )
        .unwrap()
        .get(0);
    ck.expect(inf_stored == 0, || {
        format!("amba_track(occurred_at = ±infinity): {inf_stored} events stored; expected 0")
    });
    ck.finish("track_event_names_and_occurred_at");
}

// ---------------------------------------------------------------------------------------
// user_id: 1..512 characters on every function that takes one
// ---------------------------------------------------------------------------------------

#[test]
fn user_ids_of_512_characters_pass_and_513_fail_everywhere() {
    let mut ck = Check::new(connect);
    let key = unique("uid_limits");
    create(&mut ck.client, &key, AB);

    for fill in ['é', 'x', '用', '😀'] {
        let tag = unique("u");
        let u512 = pad(&tag, fill, 512);
        let u513 = pad(&tag, fill, 513);
        let other512 = pad(&format!("{tag}o"), fill, 512);
        let anon512 = pad(&format!("{tag}a"), fill, 512);
        let anon513 = pad(&format!("{tag}a"), fill, 513);
        let lbl = |n: usize| format!("user_id of {n} × {fill:?}");
        let k: &str = &key;

        // amba_peek first: the user is not assigned yet.
        ck.accepted(
            &format!("amba_peek(key, {})", lbl(512)),
            "SELECT amba_peek($1, $2)",
            &[&k, &u512],
        );
        ck.refused(
            &format!("amba_peek(key, {})", lbl(513)),
            "SELECT amba_peek($1, $2)",
            &[&k, &u513],
            "22023",
            "INVALID_ARGUMENT",
        );
        ck.accepted(
            &format!("amba_bucket(key, {})", lbl(512)),
            "SELECT amba_bucket($1, $2)",
            &[&k, &u512],
        );
        ck.refused(
            &format!("amba_bucket(key, {})", lbl(513)),
            "SELECT amba_bucket($1, $2)",
            &[&k, &u513],
            "22023",
            "INVALID_ARGUMENT",
        );
        ck.accepted(
            &format!("amba_assign(key, {})", lbl(512)),
            "SELECT amba_assign($1, $2)",
            &[&k, &u512],
        );
        ck.refused(
            &format!("amba_assign(key, {})", lbl(513)),
            "SELECT amba_assign($1, $2)",
            &[&k, &u513],
            "22023",
            "INVALID_ARGUMENT",
        );
        ck.accepted(
            &format!("amba_expose(key, {})", lbl(512)),
            "SELECT amba_expose($1, $2)",
            &[&k, &u512],
        );
        ck.refused(
            &format!("amba_expose(key, {})", lbl(513)),
            "SELECT amba_expose($1, $2)",
            &[&k, &u513],
            "22023",
            "INVALID_ARGUMENT",
        );
        ck.accepted(
            &format!("amba_track({}, 'ev')", lbl(512)),
            "SELECT amba_track($1, 'uid_ev')::text",
            &[&u512],
        );
        ck.refused(
            &format!("amba_track({}, 'ev')", lbl(513)),
            "SELECT amba_track($1, 'uid_ev')::text",
            &[&u513],
            "22023",
            "INVALID_ARGUMENT",
        );
        ck.accepted(
            &format!("amba_set_override(key, {}, 'b')", lbl(512)),
            "SELECT amba_set_override($1, $2, 'b')",
            &[&k, &other512],
        );
        ck.refused(
            &format!("amba_set_override(key, {}, 'b')", lbl(513)),
            "SELECT amba_set_override($1, $2, 'b')",
            &[&k, &u513],
            "22023",
            "INVALID_ARGUMENT",
        );
        ck.returns(
            &format!("amba_clear_override(key, {})", lbl(512)),
            "SELECT amba_clear_override($1, $2)::text",
            &[&k, &other512],
            Some("true"),
        );
        ck.refused(
            &format!("amba_clear_override(key, {})", lbl(513)),
            "SELECT amba_clear_override($1, $2)::text",
            &[&k, &u513],
            "22023",
            "INVALID_ARGUMENT",
        );
        ck.refused(
            &format!("amba_alias(anonymous_id = {}, user_id = 512)", lbl(513)),
            "SELECT amba_alias($1, $2)",
            &[&anon513, &other512],
            "22023",
            "INVALID_ARGUMENT",
        );
        ck.refused(
            &format!("amba_alias(anonymous_id = 512, user_id = {})", lbl(513)),
            "SELECT amba_alias($1, $2)",
            &[&anon512, &u513],
            "22023",
            "INVALID_ARGUMENT",
        );
        ck.accepted(
            &format!(
                "amba_alias(anonymous_id = {}, user_id = {})",
                lbl(512),
                lbl(512)
            ),
            "SELECT amba_alias($1, $2)",
            &[&anon512, &other512],
        );

        // Nothing was written for the refused 513-character id.
        let written: i64 = ck
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM amba.assignments WHERE user_id = $1)
                      + (SELECT count(*) FROM amba.events WHERE user_id = $1)
                      + (SELECT count(*) FROM amba.overrides WHERE user_id = $1)
                      + (SELECT count(*) FROM amba.aliases WHERE $1 IN (anonymous_id, user_id))",
                &[&u513],
            )
            .unwrap()
            .get(0);
        ck.expect(written == 0, || {
            format!("{}: {written} rows written for refused calls", lbl(513))
        });
    }

    // NULL and empty user ids, on every function and on both arguments of amba_alias.
    let ok_user = unique("uid_ok");
    let k: &str = &key;
    for (bad, label) in [(None, "NULL"), (Some(""), "empty")] {
        let calls: Vec<(String, &str, Vec<&(dyn ToSql + Sync)>)> = vec![
            (
                format!("amba_assign(key, {label})"),
                "SELECT amba_assign($1, $2::text)",
                vec![&k, &bad],
            ),
            (
                format!("amba_expose(key, {label})"),
                "SELECT amba_expose($1, $2::text)",
                vec![&k, &bad],
            ),
            (
                format!("amba_peek(key, {label})"),
                "SELECT amba_peek($1, $2::text)",
                vec![&k, &bad],
            ),
            (
                format!("amba_bucket(key, {label})"),
                "SELECT amba_bucket($1, $2::text)",
                vec![&k, &bad],
            ),
            (
                format!("amba_track({label}, 'ev')"),
                "SELECT amba_track($1::text, 'uid_ev')::text",
                vec![&bad],
            ),
            (
                format!("amba_set_override(key, {label}, 'a')"),
                "SELECT amba_set_override($1, $2::text, 'a')",
                vec![&k, &bad],
            ),
            (
                format!("amba_clear_override(key, {label})"),
                "SELECT amba_clear_override($1, $2::text)::text",
                vec![&k, &bad],
            ),
            (
                format!("amba_alias({label}, user)"),
                "SELECT amba_alias($1::text, $2)",
                vec![&bad, &ok_user],
            ),
            (
                format!("amba_alias(user, {label})"),
                "SELECT amba_alias($1, $2::text)",
                vec![&ok_user, &bad],
            ),
        ];
        for (what, sql, params) in calls {
            ck.refused(&what, sql, &params, "22023", "INVALID_ARGUMENT");
        }
    }
    // No trimming: a user id of spaces only is a valid, distinct user.
    ck.accepted(
        "amba_assign(key, ' ')",
        "SELECT amba_assign($1, ' ')",
        &[&k],
    );
    ck.accepted("amba_peek(key, '  ')", "SELECT amba_peek($1, '  ')", &[&k]);
    ck.finish("user_ids");
}

// ---------------------------------------------------------------------------------------
// Variants and weights
// ---------------------------------------------------------------------------------------

#[test]
fn variant_keys_and_weights_at_the_limits() {
    let mut ck = Check::new(connect);
    let create_sql = "SELECT amba_create_experiment($1, $2::text::jsonb)";
    let v64 = pad("Aa0_.:-", 'v', 64);
    let v65 = pad("Aa0_.:-", 'v', 65);

    let good: Vec<(String, String)> = vec![
        (format!(r#"[{{"key":"a","weight":1}},{{"key":"{v64}","weight":1}}]"#), "a 64-character variant key".into()),
        (format!(r#"[{{"key":"{v64}","weight":1}},{{"key":"b","weight":1}}]"#), "a 64-character control key".into()),
        (r#"[{"key":"a","weight":0},{"key":"b","weight":1}]"#.into(), "control weight 0".into()),
        (r#"[{"key":"a","weight":1},{"key":"b","weight":0}]"#.into(), "treatment weight 0".into()),
        (r#"[{"key":"a","weight":0},{"key":"b","weight":0},{"key":"c","weight":0.001}]"#.into(), "two of three weights 0".into()),
        (r#"[{"key":"a","weight":1.5e300},{"key":"b","weight":2.5}]"#.into(), "a weight of 1.5e300".into()),
        (r#"[{"key":"A","weight":1},{"key":"a","weight":1}]"#.into(), "keys differing in case".into()),
        (r#"[{"key":"_","weight":1},{"key":".","weight":1},{"key":":","weight":1},{"key":"-","weight":1},{"key":"9","weight":1}]"#.into(), "one-symbol keys".into()),
    ];
    for (variants, label) in &good {
        let key = unique("var_ok");
        if let Some(rows) = ck.accepted(
            &format!("amba_create_experiment(variants with {label})"),
            "SELECT amba_create_experiment($1, $2::text::jsonb)::text",
            &[&key, variants],
        ) {
            // Stored in order, with the weights given.
            let back: Option<String> = ck
                .client
                .query_one(
                    "SELECT (amba_get_experiment($1)->'variants') = (SELECT jsonb_agg(jsonb_build_object('key', v->>'key', 'weight', v->'weight')) FROM jsonb_array_elements($2::text::jsonb) v)",
                    &[&key, variants],
                )
                .ok()
                .map(|r| r.get::<_, Option<bool>>(0).map(|b| b.to_string()).unwrap_or_default());
            ck.expect(back.as_deref() == Some("true"), || {
                format!("amba_create_experiment(variants with {label}): the experiment does not list the variants as given ({:?})", rows.first().map(|r| r.get::<_, Option<String>>(0)))
            });
        }
    }

    let bad: Vec<(String, &str)> = vec![
        (
            format!(r#"[{{"key":"a","weight":1}},{{"key":"{v65}","weight":1}}]"#),
            "a 65-character variant key",
        ),
        (
            format!(r#"[{{"key":"{v65}","weight":1}},{{"key":"b","weight":1}}]"#),
            "a 65-character control key",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"","weight":1}]"#.into(),
            "an empty variant key",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"b c","weight":1}]"#.into(),
            "a variant key with a space",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"b/c","weight":1}]"#.into(),
            "a variant key with '/'",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"é","weight":1}]"#.into(),
            "a variant key 'é'",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"b\n","weight":1}]"#.into(),
            "a variant key with a newline",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":" b","weight":1}]"#.into(),
            "a variant key with a leading space",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"<b>","weight":1}]"#.into(),
            "a variant key with '<>'",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":1,"weight":1}]"#.into(),
            "a numeric variant key",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":null,"weight":1}]"#.into(),
            "a null variant key",
        ),
        (
            r#"[{"key":"a","weight":1},{"weight":1}]"#.into(),
            "a variant without key",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"a","weight":1}]"#.into(),
            "duplicate variant keys",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"b","weight":1},{"key":"a","weight":0}]"#.into(),
            "duplicate variant keys (third)",
        ),
        (r#"[{"key":"a","weight":1}]"#.into(), "one variant"),
        ("[]".into(), "no variants"),
        (
            r#"{"key":"a","weight":1}"#.into(),
            "an object instead of an array",
        ),
        (r#"["a","b"]"#.into(), "strings instead of objects"),
        ("null".into(), "JSON null"),
        (
            r#"[{"key":"a","weight":"1"},{"key":"b","weight":1}]"#.into(),
            "a string weight",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"b","weight":"50"}]"#.into(),
            "a string weight (treatment)",
        ),
        (
            r#"[{"key":"a","weight":true},{"key":"b","weight":1}]"#.into(),
            "a boolean weight",
        ),
        (
            r#"[{"key":"a","weight":null},{"key":"b","weight":1}]"#.into(),
            "a null weight",
        ),
        (
            r#"[{"key":"a","weight":[1]},{"key":"b","weight":1}]"#.into(),
            "an array weight",
        ),
        (
            r#"[{"key":"a","weight":{}},{"key":"b","weight":1}]"#.into(),
            "an object weight",
        ),
        (
            r#"[{"key":"a","weight":-1},{"key":"b","weight":1}]"#.into(),
            "a negative weight",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"b","weight":-0.0001}]"#.into(),
            "a small negative weight",
        ),
        (
            r#"[{"key":"a","weight":1e999},{"key":"b","weight":1}]"#.into(),
            "a weight of 1e999",
        ),
        (
            r#"[{"key":"a","weight":1},{"key":"b","weight":-1e999}]"#.into(),
            "a weight of -1e999",
        ),
        (
            r#"[{"key":"a","weight":0},{"key":"b","weight":0}]"#.into(),
            "all weights zero",
        ),
        (
            r#"[{"key":"a","weight":0},{"key":"b","weight":0},{"key":"c","weight":0}]"#.into(),
            "all three weights zero",
        ),
    ];
    for (variants, label) in &bad {
        let key = unique("var_bad");
        ck.refused(
            &format!(
                "amba_create_experiment(variants = {label}: {})",
                short(variants)
            ),
            create_sql,
            &[&key, variants],
            "22023",
            "INVALID_ARGUMENT",
        );
        let exists: bool = ck
            .client
            .query_one(
                "SELECT EXISTS (SELECT FROM amba.experiments WHERE key = $1)",
                &[&key],
            )
            .unwrap()
            .get(0);
        ck.expect(!exists, || {
            format!("amba_create_experiment(variants = {label}): the experiment was stored")
        });
    }
    ck.refused(
        "amba_create_experiment(variants = SQL NULL)",
        "SELECT amba_create_experiment($1, NULL)",
        &[&unique("var_bad")],
        "22023",
        "INVALID_ARGUMENT",
    );

    // The same rules on update, and the experiment is left as it was.
    let key = unique("var_upd");
    create(&mut ck.client, &key, AB);
    let before: String = ck
        .client
        .query_one("SELECT amba_get_experiment($1)::text", &[&key])
        .unwrap()
        .get(0);
    for (variants, label) in &bad {
        if *label == "JSON null" {
            continue; // a JSON null may well mean "leave the variants alone" on update
        }
        ck.refused(
            &format!(
                "amba_update_experiment(variants = {label}: {})",
                short(variants)
            ),
            "SELECT amba_update_experiment($1, $2::text::jsonb)",
            &[&key, variants],
            "22023",
            "INVALID_ARGUMENT",
        );
    }
    let after: String = ck
        .client
        .query_one("SELECT amba_get_experiment($1)::text", &[&key])
        .unwrap()
        .get(0);
    ck.expect(before == after, || {
        format!(
            "amba_update_experiment: refused updates changed the experiment: {before} -> {after}"
        )
    });
    ck.finish("variant_keys_and_weights");
}

// ---------------------------------------------------------------------------------------
// Experiment keys
// ---------------------------------------------------------------------------------------

#[test]
fn experiment_keys_bad_unknown_and_at_128() {
    let mut ck = Check::new(connect);
    let tag = unique("k");
    let k128 = pad(&tag, 'K', 128);
    let k129 = pad(&tag, 'K', 129);
    let k128b: String = pad(&format!("{tag}."), ':', 128);
    ck.accepted(
        "amba_create_experiment(128-character key)",
        "SELECT amba_create_experiment($1, $2::text::jsonb)",
        &[&k128, &AB],
    );
    ck.accepted(
        "amba_create_experiment(128-character key of '.' and ':')",
        "SELECT amba_create_experiment($1, $2::text::jsonb)",
        &[&k128b, &AB],
    );
    ck.returns(
        "amba_get_experiment(128-character key)->>'key'",
        "SELECT amba_get_experiment($1)->>'key'",
        &[&k128],
        Some(k128.as_str()),
    );
    ck.accepted(
        "amba_assign(128-character key, u)",
        "SELECT amba_assign($1, 'u')",
        &[&k128],
    );
    ck.refused(
        "amba_create_experiment(129-character key)",
        "SELECT amba_create_experiment($1, $2::text::jsonb)",
        &[&k129, &AB],
        "22023",
        "INVALID_ARGUMENT",
    );

    let bad_keys: Vec<(Option<String>, String)> = vec![
        (None, "NULL".into()),
        (Some(String::new()), "empty".into()),
        (Some("a b".into()), "'a b' (space)".into()),
        (Some(" ab".into()), "' ab' (leading space)".into()),
        (Some("ab ".into()), "'ab ' (trailing space)".into()),
        (Some("é".into()), "'é' (unicode)".into()),
        (Some("caf\u{e9}".into()), "'café' (unicode)".into()),
        (Some("ｋｅｙ".into()), "full-width letters".into()),
        (Some("a/b".into()), "'a/b'".into()),
        (Some("a\nb".into()), "'a\\nb'".into()),
        (Some("a'b".into()), "'a''b' (quote)".into()),
        (Some(k129.clone()), "129 characters".into()),
        (Some(pad("k", 'é', 128)), "128 characters, not ASCII".into()),
    ];
    // Functions that take an experiment key, with the rest of their arguments valid.
    let calls: Vec<(&str, &str)> = vec![
        ("amba_get_experiment", "SELECT amba_get_experiment($1::text)"),
        ("amba_delete_experiment", "SELECT amba_delete_experiment($1::text)::text"),
        ("amba_experiment_history", "SELECT count(*) FROM amba_experiment_history($1::text)"),
        ("amba_results", "SELECT count(*) FROM amba_results($1::text, 'buy')"),
        ("amba_metric_results", "SELECT count(*) FROM amba_metric_results($1::text, 'buy')"),
        ("amba_results_daily", "SELECT count(*) FROM amba_results_daily($1::text, 'buy')"),
        ("amba_assign", "SELECT amba_assign($1::text, 'u')"),
        ("amba_expose", "SELECT amba_expose($1::text, 'u')"),
        ("amba_peek", "SELECT amba_peek($1::text, 'u')"),
        ("amba_list_overrides", "SELECT count(*) FROM amba_list_overrides($1::text)"),
        // Beyond the issue's list: every other function taking an experiment key.
        ("amba_set_override", "SELECT amba_set_override($1::text, 'u', 'a')"),
        ("amba_clear_override", "SELECT amba_clear_override($1::text, 'u')::text"),
        ("amba_update_experiment", "SELECT amba_update_experiment($1::text, status => 'paused')"),
        ("amba_report", "SELECT amba_report($1::text, 'buy')"),
        ("amba_bucket", "SELECT amba_bucket($1::text, 'u')"),
        ("amba_create_experiment", "SELECT amba_create_experiment($1::text, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')"),
    ];
    for (bad, label) in &bad_keys {
        for (f, sql) in &calls {
            ck.refused(
                &format!("{f}(experiment_key = {label})"),
                sql,
                &[bad],
                "22023",
                "INVALID_ARGUMENT",
            );
        }
    }

    // Unknown but valid keys.
    let unknown = pad(&unique("nope"), 'z', 128);
    for (f, sql) in [
        ("amba_assign", "SELECT amba_assign($1, 'u')"),
        ("amba_expose", "SELECT amba_expose($1, 'u')"),
        ("amba_peek", "SELECT amba_peek($1, 'u')"),
        ("amba_results", "SELECT count(*) FROM amba_results($1, 'buy')"),
        ("amba_metric_results", "SELECT count(*) FROM amba_metric_results($1, 'buy')"),
        ("amba_results_daily", "SELECT count(*) FROM amba_results_daily($1, 'buy')"),
        ("amba_set_override", "SELECT amba_set_override($1, 'u', 'a')"),
        ("amba_clear_override", "SELECT amba_clear_override($1, 'u')::text"),
        ("amba_list_overrides", "SELECT count(*) FROM amba_list_overrides($1)"),
        ("amba_update_experiment (status)", "SELECT amba_update_experiment($1, status => 'paused')"),
        ("amba_update_experiment (variants)", "SELECT amba_update_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')"),
        ("amba_update_experiment (name only)", "SELECT amba_update_experiment($1, name => 'n')"),
        ("amba_report", "SELECT amba_report($1, 'buy')"),
    ] {
        ck.refused(&format!("{f}(unknown key)"), sql, &[&unknown], "P0002", "EXPERIMENT_NOT_FOUND");
    }
    ck.returns(
        "amba_get_experiment(unknown key)",
        "SELECT amba_get_experiment($1)::text",
        &[&unknown],
        None,
    );
    ck.returns(
        "amba_delete_experiment(unknown key)",
        "SELECT amba_delete_experiment($1)::text",
        &[&unknown],
        Some("false"),
    );
    ck.returns(
        "amba_experiment_history(unknown key)",
        "SELECT count(*)::text FROM amba_experiment_history($1)",
        &[&unknown],
        Some("0"),
    );
    // amba_bucket needs no experiment.
    ck.accepted(
        "amba_bucket(unknown key, u)",
        "SELECT amba_bucket($1, 'u')",
        &[&unknown],
    );
    // A deleted experiment is unknown too, its history stays.
    ck.returns(
        "amba_delete_experiment(128-character key)",
        "SELECT amba_delete_experiment($1)::text",
        &[&k128],
        Some("true"),
    );
    ck.refused(
        "amba_assign(deleted key)",
        "SELECT amba_assign($1, 'u')",
        &[&k128],
        "P0002",
        "EXPERIMENT_NOT_FOUND",
    );
    ck.returns(
        "amba_experiment_history(deleted key)",
        "SELECT string_agg(action, ',' ORDER BY changed_at) FROM amba_experiment_history($1)",
        &[&k128],
        Some("create,delete"),
    );
    ck.finish("experiment_keys");
}

// ---------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------

#[test]
fn api_key_names_and_kinds() {
    let mut ck = Check::new(connect);
    let create_sql = "SELECT amba_create_api_key($1::text, $2::text)";
    let client: Option<&str> = Some("client");
    for (name, label) in [(None::<&str>, "NULL"), (Some(""), "empty")] {
        ck.refused(
            &format!("amba_create_api_key(name = {label})"),
            create_sql,
            &[&name, &client],
            "22023",
            "INVALID_ARGUMENT",
        );
        ck.refused(
            &format!("amba_create_api_key(name = {label}) (default kind)"),
            "SELECT amba_create_api_key($1::text)",
            &[&name],
            "22023",
            "INVALID_ARGUMENT",
        );
    }
    for kind in [
        Some("root"),
        Some("Admin"),
        Some("CLIENT"),
        Some(" client"),
        Some("client "),
        Some(""),
        Some("analyst"),
        None,
    ] {
        let name = unique("kind");
        ck.refused(
            &format!("amba_create_api_key(kind = {kind:?})"),
            create_sql,
            &[&Some(name.as_str()), &kind],
            "22023",
            "INVALID_ARGUMENT",
        );
        let stored: bool = ck
            .client
            .query_one(
                "SELECT EXISTS (SELECT FROM amba.api_keys WHERE name = $1)",
                &[&name],
            )
            .unwrap()
            .get(0);
        ck.expect(!stored, || {
            format!("amba_create_api_key(kind = {kind:?}): a key was stored")
        });
    }
    for kind in ["client", "admin"] {
        let name = unique("dup");
        let n: Option<&str> = Some(&name);
        ck.accepted(
            &format!("amba_create_api_key(new name, {kind})"),
            create_sql,
            &[&n, &Some(kind)],
        );
        ck.refused(
            &format!("amba_create_api_key(taken name, {kind})"),
            create_sql,
            &[&n, &Some(kind)],
            "23505",
            "API_KEY_EXISTS",
        );
        ck.refused(
            &format!("amba_create_api_key(taken name, other kind than {kind})"),
            create_sql,
            &[&n, &Some(if kind == "client" { "admin" } else { "client" })],
            "23505",
            "API_KEY_EXISTS",
        );
        ck.returns(
            &format!("amba_revoke_api_key({kind} key)"),
            "SELECT amba_revoke_api_key($1)::text",
            &[&name],
            Some("true"),
        );
        ck.returns(
            &format!("amba_revoke_api_key(revoked {kind} key)"),
            "SELECT amba_revoke_api_key($1)::text",
            &[&name],
            Some("false"),
        );
        ck.refused(
            &format!("amba_create_api_key(revoked name, {kind})"),
            create_sql,
            &[&n, &Some(kind)],
            "23505",
            "API_KEY_EXISTS",
        );
    }
    ck.returns(
        "amba_revoke_api_key(unknown name)",
        "SELECT amba_revoke_api_key($1)::text",
        &[&unique("never")],
        Some("false"),
    );
    ck.finish("api_key_names_and_kinds");
}

#[test]
fn api_keys_are_random_hashed_and_never_stored_in_plaintext() {
    let db = Db::with_amba("amba_limits_keys");
    let mut c = db.client();
    let mut failures = Vec::new();
    let mut seen = HashSet::new();
    let mut symbols = BTreeSet::new();
    let mut bodies = Vec::new();
    let alphabet = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-';
    for i in 0..200 {
        let name = format!("k{i}");
        let kind = if i % 2 == 0 { "client" } else { "admin" };
        let key: String = c
            .query_one("SELECT amba_create_api_key($1, $2)", &[&name, &kind])
            .unwrap()
            .get(0);
        let body = key.strip_prefix("amba_").unwrap_or("");
        if !(key.starts_with("amba_") && body.chars().count() == 43 && body.chars().all(alphabet)) {
            failures.push(format!(
                "amba_create_api_key: {key:?} does not match ^amba_[A-Za-z0-9_-]{{43}}$"
            ));
        }
        if !seen.insert(key.clone()) {
            failures.push(format!("amba_create_api_key: {key:?} drawn twice"));
        }
        symbols.extend(body.chars());
        let row = c
            .query_one(
                "SELECT key_hash = sha256(convert_to($2, 'UTF8')), kind FROM amba.api_keys WHERE name = $1",
                &[&name, &key],
            )
            .unwrap();
        let (hash_ok, stored_kind): (bool, String) = (row.get(0), row.get(1));
        if !hash_ok {
            failures.push(format!(
                "amba.api_keys.key_hash of {name} is not sha256 of the plaintext"
            ));
        }
        if stored_kind != kind {
            failures.push(format!(
                "amba.api_keys.kind of {name} is {stored_kind}, expected {kind}"
            ));
        }
        bodies.push((name, key.clone(), body.to_string()));
    }
    if symbols.len() < 60 {
        failures.push(format!(
            "200 keys use only {} of the 64 symbols: {:?}",
            symbols.len(),
            symbols
        ));
    }
    // The plaintext (nor its random part, nor its hex) is nowhere in the table.
    let table_text: String = c
        .query_one("SELECT coalesce(string_agg(k::text || encode(k.key_hash, 'escape'), E'\\n'), '') FROM amba.api_keys k", &[])
        .unwrap()
        .get(0);
    for (name, key, body) in &bodies {
        if table_text.contains(key.as_str()) || table_text.contains(body.as_str()) {
            failures.push(format!(
                "the plaintext of {name} is stored in amba.api_keys"
            ));
        }
    }
    // Random bits: over all draws every position of the body varies (no fixed character),
    // and no two keys share a 16-character stretch at the same place.
    for pos in 0..42 {
        let distinct: HashSet<char> = bodies
            .iter()
            .filter_map(|(_, _, b)| b.chars().nth(pos))
            .collect();
        if distinct.len() < 30 {
            failures.push(format!(
                "position {pos} of the key body takes only {} values over 200 draws",
                distinct.len()
            ));
        }
    }
    let prefixes: HashSet<String> = bodies
        .iter()
        .map(|(_, _, b)| b.chars().take(16).collect())
        .collect();
    if prefixes.len() != bodies.len() {
        failures.push("two keys share their first 16 random characters".into());
    }
    drop(c);
    assert!(
        failures.is_empty(),
        "API key violations:\n  - {}",
        failures.join("\n  - ")
    );
}

// ---------------------------------------------------------------------------------------
// No partial data after a failed create or update
// ---------------------------------------------------------------------------------------

#[test]
fn failed_creates_and_updates_leave_nothing_behind() {
    let db = Db::with_amba("amba_limits_partial");
    let mut ck = Check::new({
        let name = db.0.clone();
        move || connect_db(&name)
    });
    let key = "partial";
    create(
        &mut ck.client,
        key,
        r#"[{"key":"a","weight":0},{"key":"b","weight":1},{"key":"c","weight":0}]"#,
    );
    let v: String = ck
        .client
        .query_one("SELECT amba_assign('partial', 'u1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "b");
    ck.client
        .execute("SELECT amba_update_experiment('partial', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1},{\"key\":\"c\",\"weight\":1},{\"key\":\"d\",\"weight\":1}]')", &[])
        .unwrap();
    // 'c' has an override (so it may not be removed either); 'd' has nothing.
    ck.client
        .execute("SELECT amba_set_override('partial', 'qa', 'c')", &[])
        .unwrap();
    create(&mut ck.client, "partial_other", AB);

    let snapshot = |c: &mut Client| -> (i64, i64, i64, i64, i64, String) {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM amba.experiments), (SELECT count(*) FROM amba.experiment_history),
                        (SELECT count(*) FROM amba.weight_versions), (SELECT count(*) FROM amba.assignments),
                        (SELECT count(*) FROM amba.overrides),
                        (SELECT string_agg(amba_get_experiment(key)::text, E'\\n' ORDER BY key) FROM amba.experiments)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
    };
    let before = snapshot(&mut ck.client);

    let abcd = |w: [&str; 4]| {
        format!(
            r#"[{{"key":"a","weight":{}}},{{"key":"b","weight":{}}},{{"key":"c","weight":{}}},{{"key":"d","weight":{}}}]"#,
            w[0], w[1], w[2], w[3]
        )
    };
    let upd =
        "SELECT amba_update_experiment($1::text, $2::text::jsonb, $3::text, $4::text, $5::text)";
    let none: Option<&str> = None;
    let failing: Vec<(String, Option<String>, Option<&str>, Option<&str>)> = vec![
        ("string weight".into(), Some(abcd(["1", "\"1\"", "1", "1"])), None, None),
        ("negative weight".into(), Some(abcd(["1", "-1", "1", "1"])), None, None),
        ("weight 1e999".into(), Some(abcd(["1e999", "1", "1", "1"])), None, None),
        ("null weight".into(), Some(abcd(["1", "1", "null", "1"])), None, None),
        ("boolean weight".into(), Some(abcd(["1", "1", "1", "false"])), None, None),
        ("all weights zero".into(), Some(abcd(["0", "0", "0", "0"])), None, None),
        ("bad weights with a new name".into(), Some(abcd(["1", "-1", "1", "1"])), None, Some("renamed")),
        ("removing assigned variant b".into(), Some(r#"[{"key":"a","weight":1},{"key":"c","weight":1},{"key":"d","weight":1}]"#.into()), None, None),
        ("removing assigned variant b while adding e".into(), Some(r#"[{"key":"a","weight":1},{"key":"c","weight":1},{"key":"d","weight":1},{"key":"e","weight":1}]"#.into()), None, None),
        ("removing variant c that has an override".into(), Some(r#"[{"key":"a","weight":1},{"key":"b","weight":1},{"key":"d","weight":1}]"#.into()), None, None),
        ("moving the control (b first)".into(), Some(r#"[{"key":"b","weight":1},{"key":"a","weight":1},{"key":"c","weight":1},{"key":"d","weight":1}]"#.into()), None, None),
        ("moving the control (a last)".into(), Some(r#"[{"key":"b","weight":1},{"key":"c","weight":1},{"key":"d","weight":1},{"key":"a","weight":1}]"#.into()), None, None),
        ("a new variant before the control".into(), Some(r#"[{"key":"z","weight":1},{"key":"a","weight":1},{"key":"b","weight":1},{"key":"c","weight":1},{"key":"d","weight":1}]"#.into()), None, None),
        ("bad status".into(), None, Some("archived"), None),
        ("empty status".into(), None, Some(""), None),
        ("status in capitals".into(), None, Some("PAUSED"), None),
        ("valid re-weighting with a bad status".into(), Some(abcd(["5", "1", "1", "1"])), Some("archived"), None),
        ("adding a variant with a bad status".into(), Some(r#"[{"key":"a","weight":1},{"key":"b","weight":1},{"key":"c","weight":1},{"key":"d","weight":1},{"key":"e","weight":1}]"#.into()), Some("stopped"), None),
        ("valid name with a bad status".into(), None, Some("bogus"), Some("new name")),
        ("duplicate variant keys".into(), Some(r#"[{"key":"a","weight":1},{"key":"b","weight":1},{"key":"c","weight":1},{"key":"d","weight":1},{"key":"d","weight":1}]"#.into()), None, None),
    ];
    for (label, variants, status, name) in &failing {
        ck.refused(
            &format!("amba_update_experiment({label})"),
            upd,
            &[&key, variants, status, name, &none],
            "22023",
            "INVALID_ARGUMENT",
        );
        let now = snapshot(&mut ck.client);
        ck.expect(now == before, || {
            format!(
                "amba_update_experiment({label}) left partial data: (experiments, history, weight_versions, assignments, overrides) {:?} -> {:?}{}",
                (before.0, before.1, before.2, before.3, before.4),
                (now.0, now.1, now.2, now.3, now.4),
                if now.5 != before.5 { format!("; experiment changed to {}", now.5) } else { String::new() }
            )
        });
    }

    let create_sql =
        "SELECT amba_create_experiment($1::text, $2::text::jsonb, $3::text, $4::text, $5::text)";
    let failing_creates: Vec<(&str, &str, String, Option<&str>, &str, &str)> = vec![
        (
            "bad weights",
            "partial_new",
            abcd(["1", "-1", "1", "1"]),
            None,
            "22023",
            "INVALID_ARGUMENT",
        ),
        (
            "bad status",
            "partial_new",
            AB.into(),
            Some("archived"),
            "22023",
            "INVALID_ARGUMENT",
        ),
        (
            "one variant",
            "partial_new",
            r#"[{"key":"a","weight":1}]"#.into(),
            None,
            "22023",
            "INVALID_ARGUMENT",
        ),
        (
            "duplicate variants",
            "partial_new",
            r#"[{"key":"a","weight":1},{"key":"a","weight":1}]"#.into(),
            None,
            "22023",
            "INVALID_ARGUMENT",
        ),
        (
            "a taken key",
            "partial",
            AB.into(),
            None,
            "23505",
            "EXPERIMENT_EXISTS",
        ),
        (
            "a taken key with bad weights",
            "partial",
            abcd(["1", "-1", "1", "1"]),
            None,
            "22023",
            "INVALID_ARGUMENT",
        ),
    ];
    for (label, k, variants, status, state, code) in &failing_creates {
        let st = status.unwrap_or("active");
        ck.refused(
            &format!("amba_create_experiment({label})"),
            create_sql,
            &[k, variants, &Some("n"), &Some("d"), &st],
            state,
            code,
        );
        let now = snapshot(&mut ck.client);
        ck.expect(now == before, || {
            format!(
                "amba_create_experiment({label}) left partial data: (experiments, history, weight_versions, assignments, overrides) {:?} -> {:?}",
                (before.0, before.1, before.2, before.3, before.4),
                (now.0, now.1, now.2, now.3, now.4)
            )
        });
    }
    // Bad status also refused at create with the default of everything else.
    ck.refused(
        "amba_create_experiment(status NULL)",
        "SELECT amba_create_experiment('partial_new2', $1::text::jsonb, status => NULL)",
        &[&AB],
        "22023",
        "INVALID_ARGUMENT",
    );
    let now = snapshot(&mut ck.client);
    ck.expect(
        now.0 == before.0 && now.1 == before.1 && now.2 == before.2,
        || "amba_create_experiment(status NULL) left partial data".into(),
    );
    // A valid update still works afterwards and is recorded once.
    ck.accepted(
        "amba_update_experiment(valid re-weighting)",
        upd,
        &[&key, &Some(abcd(["1", "0", "1", "1"])), &none, &none, &none],
    );
    let after = snapshot(&mut ck.client);
    ck.expect(after.1 == before.1 + 1, || {
        format!(
            "a valid re-weighting: history {} -> {}; expected +1",
            before.1, after.1
        )
    });
    drop(ck.client);
    ck.client = connect();
    ck.finish("failed_creates_and_updates");
}

// ---------------------------------------------------------------------------------------
// Roles calling the SQL functions directly
// ---------------------------------------------------------------------------------------

#[test]
fn amba_admin_can_call_every_public_function() {
    let mut ck = Check::new(|| {
        let mut c = connect();
        c.batch_execute("SET ROLE amba_admin").unwrap();
        c
    });
    let key = unique("admin_all");
    let k: &str = &key;
    let anon = unique("anon");
    let user = unique("person");
    let api_name = unique("admin_key");
    let bandit_key = unique("admin_bandit");
    let kb: &str = &bandit_key;
    let layer_name = unique("admin_layer");
    let layer: &str = &layer_name;
    let calls: Vec<(&str, &str, Vec<&(dyn ToSql + Sync)>)> = vec![
        ("amba_create_experiment", "SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]', 'n', 'd', 'active', \
          targeting => '{\"country\": {\"$in\": [\"DE\", \"FR\"]}}', coverage => 1, layer => $2, layer_share => 1, \
          guardrails => '[{\"event\": \"buy\", \"kind\": \"conversion\", \"bad\": \"decrease\"}]', dimensions => ARRAY['country'])", vec![&k, &layer]),
        ("amba_create_experiment", "SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]', \
          bandit => '{\"event\": \"buy\", \"kind\": \"conversion\", \"min_users\": 1}')", vec![&kb]),
        ("amba_update_experiment", "SELECT amba_update_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":2}]')", vec![&k]),
        ("amba_get_experiment", "SELECT amba_get_experiment($1)", vec![&k]),
        ("amba_list_experiments", "SELECT count(*) FROM amba_list_experiments()", vec![]),
        // Targeted on country: the user's attributes enrol them (share and coverage 1).
        ("amba_assign", "SELECT amba_assign($1, $2, '{\"country\": \"DE\"}')", vec![&k, &anon]),
        ("amba_expose", "SELECT amba_expose($1, $2)", vec![&k, &anon]),
        ("amba_track", "SELECT amba_track($1, 'buy', '{\"amount\": 3}')::text", vec![&anon]),
        ("amba_peek", "SELECT amba_peek($1, $2)", vec![&k, &user]),
        ("amba_bucket", "SELECT amba_bucket($1, $2)", vec![&k, &user]),
        ("amba_results", "SELECT count(*) FROM amba_results($1, 'buy')", vec![&k]),
        ("amba_metric_results", "SELECT count(*) FROM amba_metric_results($1, 'buy', 'amount')", vec![&k]),
        ("amba_results_daily", "SELECT count(*) FROM amba_results_daily($1, 'buy')", vec![&k]),
        ("amba_report", "SELECT length(amba_report($1, 'buy'))", vec![&k]),
        ("amba_set_override", "SELECT amba_set_override($1, 'qa-user', 'b')", vec![&k]),
        ("amba_list_overrides", "SELECT count(*) FROM amba_list_overrides($1)", vec![&k]),
        ("amba_clear_override", "SELECT amba_clear_override($1, 'qa-user')", vec![&k]),
        ("amba_alias", "SELECT amba_alias($1, $2)", vec![&anon, &user]),
        ("amba_experiment_history", "SELECT count(*) FROM amba_experiment_history($1)", vec![&k]),
        ("amba_create_api_key", "SELECT amba_create_api_key($1, 'client')", vec![&api_name]),
        ("amba_revoke_api_key", "SELECT amba_revoke_api_key($1)", vec![&api_name]),
        ("amba_eval_condition", "SELECT amba_eval_condition('{\"country\": \"DE\"}', '{\"country\": \"DE\"}')", vec![]),
        ("amba_layer_bucket", "SELECT amba_layer_bucket($1, $2)", vec![&layer, &user]),
        ("amba_list_layers", "SELECT count(*) FROM amba_list_layers()", vec![]),
        ("amba_check_guardrails", "SELECT count(*) FROM amba_check_guardrails($1)", vec![&k]),
        ("amba_ratio_results", "SELECT count(*) FROM amba_ratio_results($1, 'buy', 'amount', 'buy', NULL)", vec![&k]),
        ("amba_quantile_results", "SELECT count(*) FROM amba_quantile_results($1, 'buy', 'amount', 0.5)", vec![&k]),
        ("amba_results_by", "SELECT count(*) FROM amba_results_by($1, 'buy', 'country')", vec![&k]),
        ("amba_assign", "SELECT amba_assign($1, $2)", vec![&kb, &anon]),
        ("amba_expose", "SELECT amba_expose($1, $2)", vec![&kb, &anon]),
        ("amba_bandit_update", "SELECT amba_bandit_update($1)::text", vec![&kb]),
        ("amba_bandit_results", "SELECT count(*) FROM amba_bandit_results($1)", vec![&kb]),
        ("amba_delete_experiment", "SELECT amba_delete_experiment($1)", vec![&kb]),
        ("amba_delete_experiment", "SELECT amba_delete_experiment($1)", vec![&k]),
    ];
    let mut called = BTreeSet::new();
    for (f, sql, params) in &calls {
        called.insert(f.to_string());
        ck.accepted(&format!("as amba_admin: {f}"), sql, params);
    }
    // The list above covers every public function of the extension.
    let mut cat = connect();
    let public: BTreeSet<String> = cat
        .query(
            "SELECT DISTINCT p.proname::text FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'amba'
              WHERE p.pronamespace = e.extnamespace AND p.proname LIKE 'amba\\_%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // amba_distribute reshapes the tables for Citus: a DB admin's act, not amba_admin's.
    let not_admin: BTreeSet<String> = ["amba_distribute".to_string()].into();
    let missing: Vec<&String> = public
        .difference(&called)
        .filter(|f| !not_admin.contains(*f))
        .collect();
    assert!(missing.is_empty(), "test does not call {missing:?}");
    ck.finish("amba_admin");
    let mut admin = connect();
    admin.batch_execute("SET ROLE amba_admin").unwrap();
    let err = admin
        .query_one("SELECT amba_distribute()", &[])
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
}

#[test]
fn amba_analyst_reads_results_and_is_refused_every_write() {
    let mut setup = connect();
    let key = unique("analyst");
    create(&mut setup, &key, AB);
    let user = unique("an_user");
    setup
        .query_one("SELECT amba_assign($1, $2)", &[&key, &user])
        .unwrap();
    setup
        .query_one("SELECT amba_expose($1, $2)", &[&key, &user])
        .unwrap();
    setup
        .query_one("SELECT amba_track($1, 'buy')", &[&user])
        .unwrap();
    let api_name = unique("an_key");
    setup
        .query_one("SELECT amba_create_api_key($1)", &[&api_name])
        .unwrap();
    // A segmented experiment and a bandit, each with an exposed user.
    let seg_key = unique("analyst_seg");
    let bandit_key = unique("analyst_bandit");
    setup
        .batch_execute(&format!(
            "SELECT amba_create_experiment('{seg_key}', '{AB}', dimensions => ARRAY['country']);
             SELECT amba_create_experiment('{bandit_key}', '{AB}',
                 bandit => '{{\"event\": \"buy\", \"kind\": \"conversion\"}}');
             SELECT amba_assign('{seg_key}', '{user}', '{{\"country\": \"DE\"}}'),
                    amba_expose('{seg_key}', '{user}'),
                    amba_assign('{bandit_key}', '{user}'), amba_expose('{bandit_key}', '{user}');"
        ))
        .unwrap();

    let mut ck = Check::new(|| {
        let mut c = connect();
        c.batch_execute("SET ROLE amba_analyst").unwrap();
        c
    });
    let k: &str = &key;
    let u: &str = &user;
    let seg: &str = &seg_key;
    let band: &str = &bandit_key;
    let reads: Vec<(&str, &str, Vec<&(dyn ToSql + Sync)>)> = vec![
        (
            "amba_results",
            "SELECT count(*) FROM amba_results($1, 'buy')",
            vec![&k],
        ),
        (
            "amba_results (alpha)",
            "SELECT count(*) FROM amba_results($1, 'buy', 0.1)",
            vec![&k],
        ),
        (
            "amba_metric_results",
            "SELECT count(*) FROM amba_metric_results($1, 'buy')",
            vec![&k],
        ),
        (
            "amba_results_daily",
            "SELECT count(*) FROM amba_results_daily($1, 'buy')",
            vec![&k],
        ),
        (
            "amba_report",
            "SELECT length(amba_report($1, 'buy'))",
            vec![&k],
        ),
        (
            "amba_get_experiment",
            "SELECT amba_get_experiment($1)->>'key'",
            vec![&k],
        ),
        (
            "amba_list_experiments",
            "SELECT count(*) FROM amba_list_experiments()",
            vec![],
        ),
        ("amba_bucket", "SELECT amba_bucket($1, 'x')", vec![&k]),
        (
            "amba_layer_bucket",
            "SELECT amba_layer_bucket('some-layer', 'x')",
            vec![],
        ),
        (
            "amba_list_layers",
            "SELECT count(*) FROM amba_list_layers()",
            vec![],
        ),
        (
            "amba_eval_condition",
            "SELECT amba_eval_condition('{\"a\": 1}', '{\"a\": 1}')",
            vec![],
        ),
        (
            "amba_ratio_results",
            "SELECT count(*) FROM amba_ratio_results($1, 'buy', NULL, 'buy', NULL)",
            vec![&k],
        ),
        (
            "amba_quantile_results",
            "SELECT count(*) FROM amba_quantile_results($1, 'buy', 'amount', 0.9)",
            vec![&k],
        ),
        (
            "amba_experiment_history",
            "SELECT count(*) FROM amba_experiment_history($1)",
            vec![&k],
        ),
        (
            "amba_results_by",
            "SELECT count(*) FROM amba_results_by($1, 'buy', 'country')",
            vec![&seg],
        ),
        (
            "amba_bandit_results",
            "SELECT count(*) FROM amba_bandit_results($1)",
            vec![&band],
        ),
    ];
    for (f, sql, params) in &reads {
        ck.accepted(&format!("as amba_analyst: {f}"), sql, params);
    }
    ck.returns(
        "as amba_analyst: amba_results_by sees the stored dimension value",
        "SELECT string_agg(dimension_value, ',')::text FROM amba_results_by($1, 'buy', 'country') WHERE exposed_count > 0",
        &[&seg],
        Some("DE"),
    );
    ck.returns(
        "as amba_analyst: amba_bandit_results sees the exposure",
        "SELECT sum(exposed_count)::text FROM amba_bandit_results($1)",
        &[&band],
        Some("1"),
    );
    // Results as the analyst equal the owner's.
    ck.returns(
        "as amba_analyst: amba_results sees the data",
        "SELECT sum(exposed_count)::text FROM amba_results($1, 'buy')",
        &[&k],
        Some("1"),
    );
    ck.returns(
        "as amba_analyst: amba_get_experiment",
        "SELECT amba_get_experiment($1)->>'key'",
        &[&k],
        Some(k),
    );

    let writes: Vec<(&str, &str, Vec<&(dyn ToSql + Sync)>)> = vec![
        ("amba_create_experiment", "SELECT amba_create_experiment($1 || '_x', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", vec![&k]),
        ("amba_update_experiment", "SELECT amba_update_experiment($1, status => 'paused')", vec![&k]),
        ("amba_delete_experiment", "SELECT amba_delete_experiment($1)", vec![&k]),
        ("amba_create_api_key", "SELECT amba_create_api_key($1 || '_x')", vec![&k]),
        ("amba_revoke_api_key", "SELECT amba_revoke_api_key($1)", vec![&api_name as &(dyn ToSql + Sync)]),
        ("amba_assign", "SELECT amba_assign($1, 'analyst-new')", vec![&k]),
        ("amba_expose", "SELECT amba_expose($1, $2)", vec![&k, &u]),
        ("amba_track", "SELECT amba_track($1, 'buy')::text", vec![&u]),
        ("amba_peek", "SELECT amba_peek($1, $2)", vec![&k, &u]),
        ("amba_set_override", "SELECT amba_set_override($1, 'qa', 'a')", vec![&k]),
        ("amba_clear_override", "SELECT amba_clear_override($1, 'qa')", vec![&k]),
        ("amba_alias", "SELECT amba_alias($1 || '_anon', $1)", vec![&u]),
        ("amba_check_guardrails", "SELECT count(*) FROM amba_check_guardrails($1)", vec![&k]),
        ("amba_bandit_update", "SELECT amba_bandit_update($1)::text", vec![&k]),
        ("INSERT INTO amba.experiments", "INSERT INTO amba.experiments (key, variant_keys, weights) VALUES ($1 || '_y', '{a,b}', '{1,1}') RETURNING key", vec![&k]),
        ("UPDATE amba.experiments", "UPDATE amba.experiments SET status = 'paused' WHERE key = $1 RETURNING key", vec![&k]),
        ("DELETE FROM amba.experiments", "DELETE FROM amba.experiments WHERE key = $1 RETURNING key", vec![&k]),
        ("INSERT INTO amba.events", "INSERT INTO amba.events (user_id, event, occurred_at) VALUES ($1, 'buy', now()) RETURNING user_id", vec![&u]),
        ("DELETE FROM amba.assignments", "DELETE FROM amba.assignments WHERE user_id = $1 RETURNING user_id", vec![&u]),
    ];
    for (f, sql, params) in &writes {
        ck.refused(&format!("as amba_analyst: {f}"), sql, params, "42501", "");
    }
    // Nothing changed.
    let row = setup
        .query_one(
            "SELECT amba_get_experiment($1)->>'status', (SELECT count(*) FROM amba.events WHERE user_id = $2),
                    (SELECT revoked_at IS NULL FROM amba.api_keys WHERE name = $3)",
            &[&key, &user, &api_name],
        )
        .unwrap();
    let (status, events, active): (Option<String>, i64, bool) =
        (row.get(0), row.get(1), row.get(2));
    ck.expect(status.as_deref() == Some("active") && events == 1 && active, || {
        format!("analyst writes changed data: status {status:?}, events {events}, key active {active}")
    });
    ck.finish("amba_analyst");
}

// ---------------------------------------------------------------------------------------
// Bucketing vectors in SQL
// ---------------------------------------------------------------------------------------

fn vectors() -> Vec<serde_json::Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../core/tests/fixtures/bucket_vectors.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["vectors"].as_array().expect("vectors").clone()
}

fn bits(v: &serde_json::Value) -> f64 {
    f64::from_bits(
        v.as_str()
            .expect("bits as a decimal string")
            .parse::<u64>()
            .unwrap(),
    )
}

#[test]
fn bucket_vectors_hold_in_sql_and_assignments_follow_them() {
    let db = Db::with_amba("amba_limits_vectors");
    let mut ck = Check::new({
        let name = db.0.clone();
        move || connect_db(&name)
    });
    let vs = vectors();
    assert!(vs.len() >= 100, "{} vectors", vs.len());
    let non_ascii = vs
        .iter()
        .filter(|v| !v["user_id"].as_str().unwrap().is_ascii())
        .count();
    assert!(
        non_ascii >= 10,
        "the vectors carry only {non_ascii} non-ASCII user ids"
    );

    for (i, v) in vs.iter().enumerate() {
        let key = v["experiment_key"].as_str().unwrap();
        let user = v["user_id"].as_str().unwrap();
        let want_bucket = bits(&v["bucket_bits"]);
        // The vector is self-consistent: bucket = (h >> 11) / 2^53.
        let h: u64 = v["hash"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            ((h >> 11) as f64 / 9007199254740992.0).to_bits(),
            want_bucket.to_bits(),
            "vector {i}: hash and bucket_bits disagree"
        );
        let weights: Vec<f64> = v["weights_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(bits)
            .collect();
        let want = format!("v{}", v["variant_index"].as_u64().unwrap());
        let label = format!(
            "vector {i} ({}: key {}, user {})",
            v["note"].as_str().unwrap_or(""),
            short(key),
            short(&format!("{user:?}"))
        );

        match ck.run("SELECT amba_bucket($1, $2)", &[&key, &user]) {
            Ok(rows) => {
                let got: f64 = rows[0].get(0);
                ck.expect(got.to_bits() == want_bucket.to_bits(), || {
                    format!("amba_bucket, {label}: got {got:?}, expected {want_bucket:?}")
                });
            }
            Err(e) => ck.fail(format!("amba_bucket, {label}: {e}")),
        }

        // Weights written so that they parse back to exactly these doubles.
        let variants = serde_json::Value::Array(
            weights
                .iter()
                .enumerate()
                .map(|(j, w)| {
                    let num: serde_json::Value = serde_json::from_str(&format!("{w:?}")).unwrap();
                    serde_json::json!({"key": format!("v{j}"), "weight": num})
                })
                .collect(),
        )
        .to_string();
        let _ = ck.run("SELECT amba_delete_experiment($1)", &[&key]);
        let Some(rows) = ck.accepted(
            &format!("amba_create_experiment, {label}"),
            "SELECT amba_create_experiment($1, $2::text::jsonb)::text",
            &[&key, &variants],
        ) else {
            continue;
        };
        let exp: serde_json::Value = serde_json::from_str(&rows[0].get::<_, String>(0)).unwrap();
        ck.expect(exp["bucketing_version"] == serde_json::json!(1), || {
            format!(
                "amba_create_experiment, {label}: bucketing_version {}",
                exp["bucketing_version"]
            )
        });
        let stored: Vec<f64> = ck
            .client
            .query_one(
                "SELECT weights FROM amba.experiments WHERE key = $1",
                &[&key],
            )
            .unwrap()
            .get(0);
        ck.expect(stored.iter().map(|w| w.to_bits()).eq(weights.iter().map(|w| w.to_bits())), || {
            format!("amba_create_experiment, {label}: weights stored as {stored:?}, given {weights:?}")
        });
        ck.returns(
            &format!("amba_peek, {label}"),
            "SELECT amba_peek($1, $2)",
            &[&key, &user],
            Some(want.as_str()),
        );
        ck.returns(
            &format!("amba_assign, {label}"),
            "SELECT amba_assign($1, $2)",
            &[&key, &user],
            Some(want.as_str()),
        );
    }

    // Every experiment reports bucketing version 1, here and in the shared database.
    let mut shared = connect();
    for (c, wher) in [
        (&mut ck.client, "vectors database"),
        (&mut shared, "amba_test"),
    ] {
        let bad: Vec<String> = c
            .query(
                "SELECT e::text FROM amba_list_experiments() e WHERE (e->'bucketing_version') IS DISTINCT FROM '1'::jsonb",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !bad.is_empty() {
            ck.failures.push(format!(
                "{wher}: {} experiments without \"bucketing_version\": 1, e.g. {}",
                bad.len(),
                bad[0]
            ));
        }
    }
    let total: i64 = ck
        .client
        .query_one("SELECT count(*) FROM amba_list_experiments()", &[])
        .unwrap()
        .get(0);
    assert!(total > 0);
    drop(ck.client);
    ck.client = connect();
    ck.finish("bucket_vectors");
}

/// The checker itself: an accepted call where a refusal is expected, a wrong SQLSTATE and a
/// missing code prefix are all reported.
#[test]
fn harness_reports_every_kind_of_violation() {
    let mut ck = Check::new(connect);
    ck.refused(
        "probe accepted",
        "SELECT 'x'::text",
        &[],
        "22023",
        "INVALID_ARGUMENT",
    );
    ck.refused("probe wrong state", "SELECT 1/0", &[], "22023", "");
    ck.refused(
        "probe wrong code",
        "SELECT amba_assign('', 'u')",
        &[],
        "22023",
        "EXPERIMENT_NOT_FOUND",
    );
    ck.refused(
        "probe right",
        "SELECT amba_assign('', 'u')",
        &[],
        "22023",
        "INVALID_ARGUMENT",
    );
    ck.accepted("probe refused", "SELECT 1/0", &[]);
    ck.returns("probe wrong value", "SELECT 'a'::text", &[], Some("b"));
    assert_eq!(ck.failures.len(), 5, "{:?}", ck.failures);
}

/// At most 1,000 variants (every result, the report and the daily rows grow with them):
/// 1,000 are created, 1,001 are INVALID_ARGUMENT at create and update, nothing written.
/// The duplicate-key check stays linear: 1,000 keys are checked at once.
#[test]
fn at_most_a_thousand_variants() {
    let db = Db::with_amba("limits_variants");
    let mut c = db.client();
    let variants = |n: usize| {
        let v: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"key": format!("v{i}"), "weight": 1}))
            .collect();
        serde_json::Value::Array(v).to_string()
    };
    c.query_one(
        "SELECT amba_create_experiment('thousand', $1::text::jsonb)",
        &[&variants(1000)],
    )
    .unwrap();
    for sql in [
        "SELECT amba_create_experiment('too_many', $1::text::jsonb)",
        "SELECT amba_update_experiment('thousand', $1::text::jsonb)",
    ] {
        let m = amba_integration_tests::invalid_argument(&mut c, sql, &[&variants(1001)]);
        assert!(m.contains("at most 1000 variants"), "{sql}: {m}");
    }
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM amba.experiments WHERE key IN ('thousand', 'too_many')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let keys: i64 = c
        .query_one(
            "SELECT jsonb_array_length(amba_get_experiment('thousand')->'variants')::bigint",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(keys, 1000, "the update changed the variants");
}

/// One event whose value a mean guardrail cannot use (beyond ±1e100, or beyond double
/// precision) turns that experiment's guardrail rows NULL, never tripping, while every
/// other experiment is still checked (pg_cron checks them all in one call); a tiny value
/// (1e-200, whose square underflows) is read as the number it is. Each experiment has
/// forty users with spread values, so its rows are computed before the bad event.
#[test]
fn one_bad_value_cannot_stop_the_other_guardrails() {
    let db = Db::with_amba("limits_guard_isolation");
    let mut c = db.client();
    let guardrails = MEAN_GUARDRAIL;
    for key in ["harmed", "calm"] {
        c.batch_execute(&format!(
            "SELECT amba_create_experiment('{key}', '{AB}', guardrails => '{guardrails}');
             SELECT amba_assign('{key}', '{key}' || g), amba_expose('{key}', '{key}' || g),
                    amba_track('{key}' || g, 'rev', jsonb_build_object('v', g % 7))
               FROM generate_series(1, 40) g;"
        ))
        .unwrap();
    }
    let computed = vec![
        ("calm".to_string(), false, false),
        ("harmed".to_string(), false, false),
    ];
    assert_eq!(guardrail_rows(&mut c), computed, "before any bad value");
    c.query_one(
        "SELECT amba_track('harmed1', 'rev', '{\"v\": 1e-200}')",
        &[],
    )
    .unwrap();
    assert_eq!(guardrail_rows(&mut c), computed, "a tiny value");
    for bad in ["1e200", "-1e200", "1e400", "-1e400"] {
        c.query_one(
            "SELECT amba_track('harmed2', 'rev', $1::text::jsonb)",
            &[&format!("{{\"v\": {bad}}}")],
        )
        .unwrap();
        assert_eq!(
            guardrail_rows(&mut c),
            [
                ("calm".to_string(), false, false),
                ("harmed".to_string(), true, false)
            ],
            "a value of {bad}"
        );
        c.batch_execute(
            "DELETE FROM amba.events WHERE user_id = 'harmed2' AND properties->>'v' <> '2'",
        )
        .unwrap();
        assert_eq!(guardrail_rows(&mut c), computed, "{bad} removed");
    }
}
