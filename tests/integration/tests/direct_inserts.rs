//! `amba_track` appends an event, and `amba_assign` stores a first assignment, without SPI
//! when the table has amba's own shape (src/store/heap_insert.rs). These tests prove, at the SQL
//! level, that the rows are exactly what the INSERT stores, that every index holds them,
//! that a first assignment meeting a concurrent one waits for it and keeps whichever
//! committed (ON CONFLICT DO NOTHING), and that whatever the table gains — a trigger, a
//! constraint, an index, a column, a policy — or a caller lacks, is honoured as the INSERT
//! would honour it, also when another session changes the table between two calls of a
//! backend that has already inserted.

use amba_integration_tests::{heap_line_pointers, Db};
use postgres::Client;
use std::time::{Duration, Instant};

fn track(
    c: &mut Client,
    user: &str,
    event: &str,
    properties: Option<&str>,
) -> Result<(), postgres::Error> {
    c.execute(
        "SELECT amba_track($1, $2, $3::text::jsonb)",
        &[&user, &event, &properties],
    )
    .map(|_| ())
}

fn code(e: postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| panic!("not a database error: {e}"))
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn appended_rows_are_what_the_insert_stores_and_every_index_holds_them() {
    let db = Db::with_amba("append_rows");
    let mut c = db.client();
    c.batch_execute(
        "CREATE EXTENSION amcheck;
         -- indexes a user might add: partial, on an expression, unique on the identity
         CREATE INDEX events_big ON amba.events (occurred_at) WHERE properties ? 'big';
         CREATE INDEX events_lower_user ON amba.events (lower(user_id));
         CREATE UNIQUE INDEX events_id_again ON amba.events (event_id);",
    )
    .unwrap();
    let big = format!("{{\"big\": \"{}\"}}", "x".repeat(60_000)); // stored out of line (TOAST)
    let cases: Vec<(String, String, Option<String>, Option<&str>)> = vec![
        (
            "u1".into(),
            "purchase".into(),
            Some(r#"{"amount": 42}"#.into()),
            None,
        ),
        (
            "U2".into(),
            "signup".into(),
            None,
            Some("2026-01-02 03:04:05.678901+00"),
        ),
        ("ü3 ✓".into(), "purchase".into(), Some(big.clone()), None),
        (
            "u4".into(),
            "e".repeat(128),
            Some("{}".into()),
            Some("1999-12-31 23:59:59+00"),
        ),
    ];
    c.batch_execute("BEGIN").unwrap();
    let now: String = c.query_one("SELECT now()::text", &[]).unwrap().get(0);
    for (user, event, props, at) in &cases {
        c.execute(
            "SELECT amba_track($1, $2, $3::text::jsonb, $4::text::timestamptz)",
            &[user, event, props, at],
        )
        .unwrap();
    }
    c.batch_execute("COMMIT").unwrap();
    // A plain INSERT afterwards takes the next identity value.
    c.batch_execute(
        "INSERT INTO amba.events (user_id, event, occurred_at) VALUES ('raw', 'r', now())",
    )
    .unwrap();

    let rows = c
        .query(
            "SELECT event_id, user_id, event, occurred_at::text, properties::text FROM amba.events ORDER BY event_id",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 5);
    for (i, (user, event, props, at)) in cases.iter().enumerate() {
        let row = &rows[i];
        assert_eq!(
            row.get::<_, i64>(0),
            i as i64 + 1,
            "event_id from the identity sequence, in order"
        );
        assert_eq!(&row.get::<_, String>(1), user);
        assert_eq!(&row.get::<_, String>(2), event);
        let expected_at: String = match at {
            Some(at) => c
                .query_one("SELECT $1::text::timestamptz::text", &[at])
                .unwrap()
                .get(0),
            None => now.clone(),
        };
        assert_eq!(
            row.get::<_, String>(3),
            expected_at,
            "occurred_at: the given time, or the transaction's now()"
        );
        let expected_props: Option<String> = props.as_ref().map(|p| {
            c.query_one("SELECT $1::text::jsonb::text", &[p])
                .unwrap()
                .get(0)
        });
        assert_eq!(row.get::<_, Option<String>>(4), expected_props);
    }
    assert_eq!(rows[4].get::<_, i64>(0), 5);

    // Every heap row is in every btree (heapallindexed), and the indexes answer queries.
    let indexes: Vec<String> = c
        .query("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'amba.events'::regclass", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(indexes.len(), 5);
    for index in &indexes {
        c.execute(
            "SELECT bt_index_parent_check($1::text::regclass, true)",
            &[index],
        )
        .unwrap();
    }
    c.batch_execute("SET enable_seqscan = off").unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM amba.events WHERE properties ? 'big'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM amba.events WHERE lower(user_id) = 'u2'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM amba.events WHERE event = 'purchase' AND user_id = 'u1'"
        ),
        1
    );
    // A unique index the user added is checked: its violation is the INSERT's.
    c.batch_execute(
        "CREATE UNIQUE INDEX events_one_per_user_event ON amba.events (user_id, event)",
    )
    .unwrap();
    track(&mut c, "u5", "once", None).unwrap();
    assert_eq!(
        code(track(&mut c, "u5", "once", None).unwrap_err()),
        "23505"
    );
}

#[test]
fn what_another_session_adds_to_the_table_applies_to_the_next_call() {
    let db = Db::with_amba("append_ddl");
    let mut app = db.client(); // appends before and after each change
    let mut admin = db.client();
    track(&mut app, "a", "before", None).unwrap();

    // A trigger.
    admin
        .batch_execute(
            "CREATE TABLE public.seen (user_id text);
             CREATE FUNCTION public.log_event() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN INSERT INTO public.seen VALUES (NEW.user_id); RETURN NEW; END$$;
             CREATE TRIGGER log_event AFTER INSERT ON amba.events FOR EACH ROW EXECUTE FUNCTION public.log_event();",
        )
        .unwrap();
    track(&mut app, "b", "after trigger", None).unwrap();
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM public.seen WHERE user_id = 'b'"
        ),
        1
    );
    // A BEFORE trigger that rewrites the row.
    admin
        .batch_execute(
            "CREATE FUNCTION public.tag() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN NEW.event := NEW.event || ' (tagged)'; RETURN NEW; END$$;
             CREATE TRIGGER tag BEFORE INSERT ON amba.events FOR EACH ROW EXECUTE FUNCTION public.tag();",
        )
        .unwrap();
    track(&mut app, "c", "rewritten", None).unwrap();
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM amba.events WHERE event = 'rewritten (tagged)'"
        ),
        1
    );
    admin
        .batch_execute("DROP TRIGGER log_event ON amba.events; DROP TRIGGER tag ON amba.events")
        .unwrap();
    track(&mut app, "d", "untagged", None).unwrap();
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM amba.events WHERE user_id = 'd' AND event = 'untagged'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM public.seen WHERE user_id = 'c'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM public.seen WHERE user_id = 'd'"
        ),
        0,
        "the trigger is gone"
    );

    // Another CHECK constraint.
    admin
        .batch_execute(
            "ALTER TABLE amba.events ADD CONSTRAINT no_forbidden CHECK (event <> 'forbidden')",
        )
        .unwrap();
    assert_eq!(
        code(track(&mut app, "e", "forbidden", None).unwrap_err()),
        "23514"
    );
    admin
        .batch_execute("ALTER TABLE amba.events DROP CONSTRAINT no_forbidden")
        .unwrap();
    track(&mut app, "e", "forbidden", None).unwrap();

    // NOT NULL where amba allows NULL.
    admin
        .batch_execute(
            "UPDATE amba.events SET properties = '{}' WHERE properties IS NULL;
             ALTER TABLE amba.events ALTER COLUMN properties SET NOT NULL",
        )
        .unwrap();
    assert_eq!(
        code(track(&mut app, "f", "no properties", None).unwrap_err()),
        "23502"
    );
    track(&mut app, "f", "properties", Some("{}")).unwrap();
    admin
        .batch_execute("ALTER TABLE amba.events ALTER COLUMN properties DROP NOT NULL")
        .unwrap();

    // A column with a default.
    admin
        .batch_execute("ALTER TABLE amba.events ADD COLUMN source text NOT NULL DEFAULT 'app'")
        .unwrap();
    track(&mut app, "g", "with source", None).unwrap();
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM amba.events WHERE user_id = 'g' AND source = 'app'"
        ),
        1
    );
    admin
        .batch_execute("ALTER TABLE amba.events DROP COLUMN source")
        .unwrap();
    track(&mut app, "h", "dropped column", None).unwrap();

    // Every event is there once, under its own id.
    let users: Vec<String> = app
        .query("SELECT user_id FROM amba.events ORDER BY event_id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(users, ["a", "b", "c", "d", "e", "f", "g", "h"]);
}

#[test]
fn callers_get_the_insert_errors_and_policies() {
    let db = Db::with_amba("append_access");
    let mut c = db.client();
    let role = format!("{}_writer", db.0);
    c.batch_execute(&format!(
        "CREATE ROLE \"{role}\";
         GRANT USAGE ON SCHEMA amba TO \"{role}\";
         GRANT SELECT ON amba.aliases TO \"{role}\";
         GRANT EXECUTE ON FUNCTION amba_track(text, text, jsonb, timestamptz) TO \"{role}\";"
    ))
    .unwrap();
    let as_role = |c: &mut Client, sql: &str| {
        c.batch_execute(&format!("SET ROLE \"{role}\"; {sql}; RESET ROLE"))
    };

    // Without INSERT on amba.events: the INSERT's permission error.
    let e = as_role(&mut c, "SELECT amba_track('x', 'e')").unwrap_err();
    assert_eq!(code(e), "42501");
    c.batch_execute("RESET ROLE").unwrap();

    // INSERT without any privilege on the identity sequence is enough, as for the INSERT;
    // the role is subject to row-level security, and its policy's WITH CHECK applies.
    c.batch_execute(&format!(
        "GRANT INSERT ON amba.events TO \"{role}\";
         CREATE POLICY writer_ok ON amba.events FOR INSERT TO \"{role}\" WITH CHECK (user_id LIKE 'ok%');"
    ))
    .unwrap();
    as_role(&mut c, "SELECT amba_track('ok1', 'e')").unwrap();
    let e = as_role(&mut c, "SELECT amba_track('bad', 'e')").unwrap_err();
    assert_eq!(
        code(e),
        "42501",
        "new row violates row-level security policy"
    );
    c.batch_execute("RESET ROLE").unwrap();

    // Table owner (no row-level security for it) in a read-only transaction.
    c.batch_execute("BEGIN READ ONLY").unwrap();
    assert_eq!(code(track(&mut c, "ro", "e", None).unwrap_err()), "25006");
    c.batch_execute("ROLLBACK").unwrap();

    let users: Vec<String> = c
        .query("SELECT user_id FROM amba.events ORDER BY event_id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(users, ["ok1"]);
}

#[test]
fn appends_roll_back_with_their_transaction_and_are_seen_by_its_next_command() {
    let db = Db::with_amba("append_tx");
    let mut c = db.client();
    c.batch_execute("BEGIN").unwrap();
    track(&mut c, "gone", "e", None).unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM amba.events"),
        1,
        "seen by the transaction's next command"
    );
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM amba.events"), 0);

    c.batch_execute("BEGIN; SAVEPOINT s").unwrap();
    track(&mut c, "undone", "e", None).unwrap();
    c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    track(&mut c, "kept", "e", None).unwrap();
    c.batch_execute("COMMIT").unwrap();
    // Many in one statement: each its own row.
    c.batch_execute("SELECT amba_track('many' || g, 'bulk') FROM generate_series(1, 500) g")
        .unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM amba.events WHERE user_id = 'kept'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM amba.events WHERE user_id = 'undone'"
        ),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(DISTINCT user_id) FROM amba.events WHERE event = 'bulk'"
        ),
        500
    );
    assert_eq!(
        count(&mut c, "SELECT count(DISTINCT event_id) FROM amba.events"),
        501
    );
}

fn pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// Waits until backend `pid` waits for another transaction to end (a bounded poll).
fn wait_until_waiting_for_a_transaction(observer: &mut Client, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: bool = observer
            .query_one("SELECT coalesce(wait_event = 'transactionid', false) FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .unwrap()
            .get(0);
        if waiting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} never waited for the other transaction"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A forced race: `first_sql` runs in a transaction left open; `second_sql` (returning one
/// text) starts on another connection and is seen waiting for that transaction, which then
/// commits or rolls back. Returns what the second call returned.
fn second_call_waiting_for_first(
    db: &Db,
    observer: &mut Client,
    first_sql: &str,
    first_params: &[&(dyn postgres::types::ToSql + Sync)],
    second_sql: &'static str,
    commit: bool,
) -> String {
    let mut first = db.client();
    first.batch_execute("BEGIN").unwrap();
    first.execute(first_sql, first_params).unwrap();
    let mut second = db.client();
    let second_pid = pid(&mut second);
    let calling =
        std::thread::spawn(move || -> String { second.query_one(second_sql, &[]).unwrap().get(0) });
    wait_until_waiting_for_a_transaction(observer, second_pid);
    first
        .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
        .unwrap();
    calling.join().unwrap()
}

#[test]
fn a_first_assignment_meeting_an_uncommitted_one_waits_and_keeps_whichever_committed() {
    let db = Db::with_amba("append_conflict");
    let mut c = db.client();
    c.batch_execute("SELECT amba_create_experiment('race', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')")
        .unwrap();
    let eid: i64 = c
        .query_one("SELECT id FROM amba.experiments WHERE key = 'race'", &[])
        .unwrap()
        .get(0);
    // The variant amba_assign would pick for u, and the other one, which only a row stored
    // by someone else can give it.
    let own: String = c
        .query_one("SELECT amba_peek('race', 'u')", &[])
        .unwrap()
        .get(0);
    let other = if own == "a" { "b" } else { "a" };

    for commit in [true, false] {
        c.batch_execute("DELETE FROM amba.assignments").unwrap();
        let variant = second_call_waiting_for_first(
            &db,
            &mut c,
            "INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version) VALUES ($1, 'u', $2, 1)",
            &[&eid, &other],
            "SELECT amba_assign('race', 'u')",
            commit,
        );
        let stored: Vec<String> = c
            .query(
                "SELECT variant FROM amba.assignments WHERE experiment_id = $1 AND user_id = 'u'",
                &[&eid],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if commit {
            assert_eq!(variant, other, "the committed row is the user's assignment");
        } else {
            assert_eq!(
                variant, own,
                "the rolled-back row left room for the user's own"
            );
        }
        assert_eq!(stored, [variant], "one row, the one returned");
    }
}

/// A first exposure meeting an exposure another transaction has inserted meanwhile,
/// uncommitted, waits for that transaction (forced: seen waiting before it ends); after its
/// commit or its rollback, one row stays and the call returns the assigned variant. After
/// the commit the lost race left no tuple behind: as ExecInsert, the call checks for the
/// conflict (and waits) before inserting, so no speculative tuple is inserted and killed.
#[test]
fn a_first_exposure_meeting_an_uncommitted_one_waits_and_stores_one_row() {
    let db = Db::with_amba("expose_conflict");
    let mut c = db.client();
    c.batch_execute("CREATE EXTENSION pageinspect").unwrap();
    c.batch_execute("SELECT amba_create_experiment('race', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')")
        .unwrap();
    let variant: String = c
        .query_one("SELECT amba_assign('race', 'u')", &[])
        .unwrap()
        .get(0);
    for commit in [true, false] {
        c.batch_execute("DELETE FROM amba.exposures").unwrap();
        let exposed = second_call_waiting_for_first(
            &db,
            &mut c,
            "SELECT amba_expose('race', 'u')",
            &[],
            "SELECT amba_expose('race', 'u')",
            commit,
        );
        assert_eq!(exposed, variant, "the assigned variant");
        assert_eq!(
            count(
                &mut c,
                "SELECT count(*) FROM amba.exposures WHERE user_id = 'u'"
            ),
            1,
            "one exposure row (commit: {commit})"
        );
        if commit {
            // Every line pointer in use in amba.exposures is the one live row.
            let used = heap_line_pointers(&mut c, "amba.exposures", "true");
            assert_eq!(used, 1, "the lost race left a tuple behind");
        }
    }
}

#[test]
fn amba_roles_take_the_direct_path_and_every_other_policy_still_applies() {
    let db = Db::with_amba("append_policies");
    let mut c = db.client();
    let as_admin = |c: &mut Client, sql: &str| {
        c.batch_execute(&format!("SET ROLE amba_admin; {sql}; RESET ROLE"))
    };
    c.batch_execute("SELECT amba_alias('anon1', 'member1')")
        .unwrap();
    // amba_admin's own policies are USING (true) / WITH CHECK (true): the alias is read and
    // the event stored under the user id.
    as_admin(&mut c, "SELECT amba_track('anon1', 'first')").unwrap();
    // A restrictive policy hiding the alias from amba_admin: the lookup must not see it.
    c.batch_execute(
        "CREATE POLICY hide_anon1 ON amba.aliases AS RESTRICTIVE FOR SELECT TO amba_admin USING (anonymous_id <> 'anon1')",
    )
    .unwrap();
    as_admin(&mut c, "SELECT amba_track('anon1', 'second')").unwrap();
    // A restrictive policy on inserting events.
    c.batch_execute(
        "CREATE POLICY no_x ON amba.events AS RESTRICTIVE FOR INSERT TO amba_admin WITH CHECK (user_id <> 'x')",
    )
    .unwrap();
    let e = as_admin(&mut c, "SELECT amba_track('x', 'third')").unwrap_err();
    assert_eq!(
        code(e),
        "42501",
        "new row violates row-level security policy"
    );
    c.batch_execute("RESET ROLE").unwrap();
    as_admin(&mut c, "SELECT amba_track('y', 'fourth')").unwrap();
    // ... and on first assignments (checked on the row inserted).
    c.batch_execute(
        "SELECT amba_create_experiment('p', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]');
         CREATE POLICY not_z ON amba.assignments AS RESTRICTIVE FOR INSERT TO amba_admin WITH CHECK (user_id <> 'z')",
    )
    .unwrap();
    as_admin(&mut c, "SELECT amba_assign('p', 'w')").unwrap();
    let e = as_admin(&mut c, "SELECT amba_assign('p', 'z')").unwrap_err();
    assert_eq!(code(e), "42501");
    c.batch_execute("RESET ROLE").unwrap();

    let rows: Vec<(String, String)> = c
        .query(
            "SELECT user_id, event FROM amba.events ORDER BY event_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [("member1", "first"), ("anon1", "second"), ("y", "fourth")];
    assert_eq!(rows, expected.map(|(u, e)| (u.to_string(), e.to_string())));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM amba.assignments WHERE user_id IN ('w', 'z')"
        ),
        1
    );
}

#[test]
fn with_row_security_off_amba_roles_get_the_statement_error() {
    let db = Db::with_amba("append_rls_off");
    let mut c = db.client();
    c.batch_execute("SELECT amba_create_experiment('p', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')")
        .unwrap();
    // As for any statement that policies would filter: 42501, for reads and inserts alike.
    for call in [
        "SELECT amba_track('u', 'e')",
        "SELECT amba_assign('p', 'u')",
        "SELECT amba_peek('p', 'u')",
    ] {
        let e = c
            .batch_execute(&format!(
                "SET row_security = off; SET ROLE amba_admin; {call}"
            ))
            .unwrap_err();
        assert_eq!(code(e), "42501", "{call}");
        c.batch_execute("RESET ROLE; RESET row_security").unwrap();
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM amba.events")
            + count(&mut c, "SELECT count(*) FROM amba.assignments"),
        0
    );
}

#[test]
fn a_role_granted_to_the_caller_meanwhile_brings_its_policies_at_the_next_call() {
    let db = Db::with_amba("append_roles");
    let mut admin = db.client();
    let (member, group) = (format!("{}_m", db.0), format!("{}_g", db.0));
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{member}\" IN ROLE amba_admin;
             CREATE ROLE \"{group}\";
             CREATE POLICY not_x ON amba.events AS RESTRICTIVE FOR INSERT TO \"{group}\" WITH CHECK (user_id <> 'x');"
        ))
        .unwrap();
    let mut app = db.client();
    app.batch_execute(&format!("SET ROLE \"{member}\""))
        .unwrap();
    // amba_admin's policies only: the direct path, and 'x' is fine.
    track(&mut app, "x", "before", None).unwrap();
    // Another session makes the caller a member of the group the restrictive policy is for.
    admin
        .batch_execute(&format!("GRANT \"{group}\" TO \"{member}\""))
        .unwrap();
    assert_eq!(
        code(track(&mut app, "x", "granted", None).unwrap_err()),
        "42501"
    );
    track(&mut app, "y", "granted", None).unwrap();
    admin
        .batch_execute(&format!("REVOKE \"{group}\" FROM \"{member}\""))
        .unwrap();
    track(&mut app, "x", "revoked", None).unwrap();
    drop(app);
    let events: Vec<String> = admin
        .query("SELECT event FROM amba.events ORDER BY event_id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(events, ["before", "granted", "revoked"]);
    admin
        .batch_execute(&format!(
            "DROP POLICY not_x ON amba.events; DROP ROLE \"{member}\"; DROP ROLE \"{group}\""
        ))
        .unwrap();
}

#[test]
fn rules_type_modifiers_and_repeatable_read_are_honoured() {
    let db = Db::with_amba("append_more");
    let mut app = db.client();
    let mut admin = db.client();
    app.batch_execute("SELECT amba_create_experiment('rr', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')")
        .unwrap();
    track(&mut app, "u", "learned", None).unwrap();

    // A rule on INSERT.
    admin
        .batch_execute(
            "CREATE TABLE public.ruled (user_id text);
             CREATE RULE also_log AS ON INSERT TO amba.events DO ALSO INSERT INTO public.ruled VALUES (NEW.user_id)",
        )
        .unwrap();
    track(&mut app, "ruled", "e", None).unwrap();
    assert_eq!(
        count(
            &mut app,
            "SELECT count(*) FROM public.ruled WHERE user_id = 'ruled'"
        ),
        1
    );
    admin
        .batch_execute("DROP RULE also_log ON amba.events")
        .unwrap();

    // A type modifier: the INSERT rounds the time to the second.
    admin
        .batch_execute("ALTER TABLE amba.events ALTER COLUMN occurred_at TYPE timestamptz(0)")
        .unwrap();
    app.execute(
        "SELECT amba_track('t', 'rounded', NULL, '2026-01-01 00:00:00.6+00')",
        &[],
    )
    .unwrap();
    let at: String = app
        .query_one(
            "SELECT occurred_at::text FROM amba.events WHERE event = 'rounded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(at, "2026-01-01 00:00:01+00");
    admin
        .batch_execute("ALTER TABLE amba.events ALTER COLUMN occurred_at TYPE timestamptz")
        .unwrap();

    // In REPEATABLE READ, a CHECK committed after the transaction's snapshot (and after
    // this backend last learned the table) still applies: it is read from the table.
    app.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    admin
        .batch_execute(
            "ALTER TABLE amba.events ADD CONSTRAINT no_forbidden CHECK (event <> 'forbidden')",
        )
        .unwrap();
    assert_eq!(
        code(track(&mut app, "u", "forbidden", None).unwrap_err()),
        "23514"
    );
    app.batch_execute("ROLLBACK").unwrap();

    // In REPEATABLE READ, a first assignment meeting a row committed after the snapshot is
    // a serialization failure (retry the transaction), as for the INSERT.
    let eid: i64 = admin
        .query_one("SELECT id FROM amba.experiments WHERE key = 'rr'", &[])
        .unwrap()
        .get(0);
    app.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    admin
        .execute(
            "INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version) VALUES ($1, 'late', 'a', 1)",
            &[&eid],
        )
        .unwrap();
    let e = app
        .query_one("SELECT amba_assign('rr', 'late')", &[])
        .unwrap_err();
    assert_eq!(code(e), "40001");
    app.batch_execute("ROLLBACK").unwrap();
    let variant: String = app
        .query_one("SELECT amba_assign('rr', 'late')", &[])
        .unwrap()
        .get(0);
    assert_eq!(variant, "a", "after the retry, the committed row");
}
